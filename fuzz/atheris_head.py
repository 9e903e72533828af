#!/usr/bin/env python3
"""Coverage-guided fuzz target for the request-head path (atheris, libFuzzer), run by hand.

Checks the same properties as tests/fuzz/test_fuzz_head_path.py and test_fuzz_connect_head.py
(tests/fuzz/headpath.py): the head path raises only its own errors, renders upstream heads that
re-parse to the same request, and the CONNECT fast path agrees with the full parser. The Python
modules of egressgate.http1 and egressgate.names are instrumented; httptools (llhttp, C) is not.

    pip install atheris            # 3.0.0 has a wheel for CPython 3.11 on x86-64 Linux
    mkdir -p /tmp/head-corpus
    python3 fuzz/atheris_head.py /tmp/head-corpus -max_total_time=600 -max_len=4096

A crash writes crash-<sha1> in the current directory; replay it with
`python3 fuzz/atheris_head.py crash-<sha1>`. The seeds of tests/fuzz/heads.py are added to an
empty corpus directory on the first run (-seed_corpus is not needed).
"""

from __future__ import annotations

import sys
from pathlib import Path

import atheris

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))

with atheris.instrument_imports(include=["egressgate.http1", "egressgate.names"]):
    from tests.fuzz.headpath import MAX_HEAD, MAX_LINE, check_bytes, check_connect_fast_path
    from tests.fuzz.heads import SEEDS


def test_one_input(data: bytes) -> None:
    check_bytes(data)
    check_connect_fast_path(data, MAX_LINE, MAX_HEAD)
    if len(data) > 2:  # limits near the input's own size, where counting errors show
        check_connect_fast_path(data, data[0] * 32 + 1, data[1] * 64 + 1)


def seed_corpus(argv: list[str]) -> None:
    """Write the seed heads into the corpus directory given on the command line, if empty."""
    dirs = [Path(a) for a in argv[1:] if not a.startswith("-") and Path(a).is_dir()]
    for corpus in dirs[:1]:
        if not any(corpus.iterdir()):
            for number, seed in enumerate(SEEDS):
                (corpus / f"seed-{number}").write_bytes(seed.replace(b"{port}", b"8080"))


def main() -> None:
    seed_corpus(sys.argv)
    atheris.Setup(sys.argv, test_one_input)
    atheris.Fuzz()


if __name__ == "__main__":
    main()
