"""`egressgate run` imports what the proxy needs and nothing else (cli/main.py `requested`).

Registering a subcommand imports its tooling; building the whole command tree for `run` cost
~100 ms of start-up and ~12 MB of RSS for the proxy's whole life (52 -> 40 MB idle, measured),
a per-pod cost for sidecars. `cryptography` is needed only with `tls_intercept`
(config/intercept_ca.py, proxy/intercept.py import it where a CA is read).

Each check runs in a fresh interpreter: this test process has imported everything already.
"""

from __future__ import annotations

import json
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

from egressgate.cli.main import SUBCOMMAND_MODULES, requested

PROBE = textwrap.dedent(
    """
    import json, sys
    from egressgate.cli.main import build_parser, requested
    from egressgate.config.load import load_config_file
    import egressgate.proxy.process, egressgate.proxy.server
    argv = sys.argv[1:]
    build_parser(requested(argv)).parse_args(argv)
    load_config_file(argv[-1])
    print(json.dumps({
        "tools": sorted(m for m in sys.modules if m.startswith("egressgate.tools")),
        "cryptography": "cryptography" in sys.modules,
    }))
    """
)


def _imported_by(argv: list[str]) -> dict[str, object]:
    done = subprocess.run(
        [sys.executable, "-c", PROBE, *argv], capture_output=True, text=True, timeout=60
    )
    assert done.returncode == 0, done.stderr
    result: dict[str, object] = json.loads(done.stdout.strip().splitlines()[-1])
    return result


def test_run_imports_no_tooling_and_no_cryptography(tmp_path: Path) -> None:
    config = tmp_path / "egressgate.yaml"
    config.write_text('listen: "127.0.0.1:0"\nallow: [".example.com"]\n', encoding="utf-8")
    imported = _imported_by(["run", "--config", str(config)])
    assert imported == {"tools": [], "cryptography": False}


@pytest.mark.parametrize(
    ("argv", "expected"),
    [
        ([], None),
        (["--help"], None),
        (["--version"], None),
        (["run", "--config", "x"], "run"),
        (["import-squid", "squid.conf"], "import_squid"),
        (["hash-password"], "hash_password"),
        (["bogus"], None),  # the whole tree: argparse lists every command in its error
        (["-h", "run"], None),
    ],
)
def test_only_the_named_subcommand_is_built(argv: list[str], expected: str | None) -> None:
    assert requested(argv) == expected
    assert expected is None or expected in SUBCOMMAND_MODULES
