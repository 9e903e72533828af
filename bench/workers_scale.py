#!/usr/bin/env python3
"""How egressgate's throughput grows from 1 to N workers, on this machine.

Runs `bench/run --targets egressgate --shared-cpus` once per worker count (no pinning: the
proxy's workers, nginx and the load generators share every core, as they would on a node
where the proxy is not alone) and prints each figure with its ratio to the 1-worker run.

Usage: workers_scale.py [--workers 1,2] [--quick] [--json OUT]
Standard library only; needs what bench/run needs (see README.md).
"""

from __future__ import annotations

import argparse
import json
import os
import subprocess
import sys
import tempfile

HERE = os.path.dirname(os.path.abspath(__file__))
KEYS = [
    ("http_rps", "http req/s"),
    ("http_p99_ms", "http p99 ms"),
    ("connect_rate", "CONNECT tunnels/s"),
    ("tunnel_mbps_1", "tunnel MB/s x1"),
    ("tunnel_mbps_8", "tunnel MB/s x8"),
]


def run_once(workers: int, quick: bool, out: str) -> dict:
    cmd = [
        sys.executable,
        os.path.join(HERE, "run"),
        "--targets",
        "egressgate",
        "--shared-cpus",
        "--idle-tunnels",
        "0",
        "--egressgate-workers",
        str(workers),
        "--json",
        out,
    ]
    if quick:
        cmd.append("--quick")
    print(f"== workers: {workers}: {' '.join(cmd)}", file=sys.stderr, flush=True)
    result = subprocess.run(cmd)
    if result.returncode != 0 or not os.path.exists(out):
        sys.exit(
            f"workers_scale: bench/run with workers={workers} failed (exit "
            f"{result.returncode}); its messages are above"
        )
    with open(out) as f:
        doc = json.load(f)
    if "skipped" in doc["targets"].get("egressgate", {}):
        sys.exit(
            f"workers_scale: egressgate was skipped with workers={workers}: "
            f"{doc['targets']['egressgate']['skipped']}"
        )
    return doc


def main() -> int:
    ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    ap.add_argument("--workers", default="1,2", help="comma-separated worker counts (default 1,2)")
    ap.add_argument("--quick", action="store_true", help="bench/run --quick")
    ap.add_argument("--json", metavar="OUT", help="write every run's figures as JSON to OUT")
    args = ap.parse_args()
    counts = [int(w) for w in args.workers.split(",") if w.strip()]
    runs: dict[int, dict] = {}
    with tempfile.TemporaryDirectory(prefix="eg-workers-") as tmp:
        for workers in counts:
            runs[workers] = run_once(workers, args.quick, os.path.join(tmp, f"w{workers}.json"))
    base = runs[counts[0]]["targets"]["egressgate"]
    print(f"\negressgate, shared CPUs ({os.cpu_count()} cores), ratio to {counts[0]} worker(s)")
    print("metric".ljust(20) + "".join(f"{f'workers={w}':>22}" for w in counts))
    for key, label in KEYS:
        row = label.ljust(20)
        for workers in counts:
            value = runs[workers]["targets"]["egressgate"].get(key)
            ref = base.get(key)
            if not isinstance(value, (int, float)):
                row += f"{'n/a':>22}"
                continue
            ratio = f" ({value / ref:.2f}x)" if isinstance(ref, (int, float)) and ref else ""
            row += f"{value:>14.1f}{ratio:>8}"
        print(row)
    if args.json:
        with open(args.json, "w") as f:
            json.dump({str(w): r for w, r in runs.items()}, f, indent=2)
    return 0


if __name__ == "__main__":
    sys.exit(main())
