#!/usr/bin/env python3
"""Chart the side-by-side benchmark: each target's ratio to Squid, per metric, from one run.

    python bench/chart.py RESULT.json [-o docs/performance.png]

RESULT.json is the `--json` output of bench/run (or ../shared/bench/run). Ratios are taken
within that one run (the machine is noisy; absolute figures across runs are not comparable).
For "lower is better" metrics the ratio is inverted (squid / target) so that, on every bar,
above 1.0 means better than Squid. Needs matplotlib (`pip install -e '.[chart]'`).
"""

from __future__ import annotations

import argparse
import json
import sys
from typing import Any

LABELS = {
    "http_rps": "HTTP req/s",
    "http_p50_ms": "HTTP p50",
    "http_p99_ms": "HTTP p99",
    "connect_rate": "CONNECT rate",
    "connect_p50_ms": "CONNECT p50",
    "connect_p99_ms": "CONNECT p99",
    "tunnel_mbps_1": "tunnel MB/s x1",
    "tunnel_mbps_8": "tunnel MB/s x8",
    "idle_kib_per_tunnel": "idle KiB/tunnel",
}


def ratios(result: dict[str, Any]) -> tuple[list[str], dict[str, list[float | None]]]:
    metrics = [m for m in result["metrics"] if m["key"] in LABELS]
    squid = result["targets"].get("squid", {})
    series: dict[str, list[float | None]] = {}
    for name, target in result["targets"].items():
        if name == "squid" or target.get("skipped"):
            continue
        row: list[float | None] = []
        for metric in metrics:
            mine, base = target.get(metric["key"]), squid.get(metric["key"])
            if not mine or not base:
                row.append(None)
            else:
                row.append(mine / base if metric["higher_is_better"] else base / mine)
        series[name] = row
    return [LABELS[m["key"]] for m in metrics], series


def main() -> int:
    parser = argparse.ArgumentParser(
        description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter
    )
    parser.add_argument("result", help="bench --json output")
    parser.add_argument("-o", "--output", default="docs/performance.png")
    args = parser.parse_args()
    with open(args.result, encoding="utf-8") as handle:
        result = json.load(handle)
    labels, series = ratios(result)
    if not series:
        print("no target besides squid in this result", file=sys.stderr)
        return 1
    import matplotlib

    matplotlib.use("Agg")
    import matplotlib.pyplot as plt

    fig, ax = plt.subplots(figsize=(11, 4.8), dpi=110)
    width = 0.8 / len(series)
    for i, (name, row) in enumerate(series.items()):
        xs = [j + i * width - 0.4 + width / 2 for j in range(len(labels))]
        # No bar for a metric the target has no figure for (NaN is not drawn); its "n/a"
        # label sits on the Squid line instead of a fake bar at the bottom of the log scale.
        values = [v if v is not None else float("nan") for v in row]
        bars = ax.bar(xs, values, width, label=name)
        for bar, value in zip(bars, row, strict=True):
            text = "n/a" if value is None else f"{value:.2f}x"
            ax.annotate(
                text,
                (bar.get_x() + bar.get_width() / 2, 1.0 if value is None else bar.get_height()),
                ha="center",
                va="bottom",
                fontsize=7,
            )
    ax.axhline(1.0, color="black", linewidth=1, linestyle="--", label="squid = 1.0")
    ax.set_xticks(range(len(labels)), labels, rotation=20, ha="right")
    ax.set_yscale("log", base=2)  # 0.5x and 2x sit equally far from 1x
    ax.set_ylabel("ratio to Squid, log scale (above 1 = better)")
    meta = result.get("meta", {})
    ax.set_title(
        f"egressgate vs Squid and peers, one run on {meta.get('when', '?')} "
        f"({meta.get('cpus', '?')} CPUs, {'quick' if meta.get('quick') else 'full'})",
        fontsize=10,
    )
    ax.legend(fontsize=8)
    fig.tight_layout()
    fig.savefig(args.output)
    print(f"wrote {args.output}")
    return 0


if __name__ == "__main__":
    sys.exit(main())
