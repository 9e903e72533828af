#!/usr/bin/env python3
"""Micro-benchmark: allowlist matching cost does not depend on the number of entries.

Builds policies with 10 and 100,000 allowlist entries (a mix of exact names, `.domain` and
`*.sub` entries) and times `CompiledPolicy.decide` for hosts that match (deep and shallow) and
hosts that do not. Reports ns per decision. This is a benchmark, not a test: run it by hand,
`python bench/matcher_scale.py`, and read the ratios (docs/performance.md).
"""

from __future__ import annotations

import random
import sys
import timeit

from egressgate.config.model import PolicyConfig
from egressgate.names.hostname import normalize_host
from egressgate.policy.decision import Target
from egressgate.policy.engine import CompiledPolicy


def entries(count: int, rng: random.Random) -> list[str]:
    out = []
    for i in range(count):
        kind = i % 3
        name = f"svc{i}-{rng.randrange(10**6)}.example{i % 97}.com"
        out.append(name if kind == 0 else f".{name}" if kind == 1 else f"*.{name}")
    out.append(".allowed.test")
    return out


def main() -> int:
    rng = random.Random(7)
    hosts = {
        "match-shallow": "allowed.test",
        "match-deep": "a.b.c.d.allowed.test",
        "miss": "nothing.here.invalid",
    }
    print(f"{'entries':>8}  " + "  ".join(f"{k:>14}" for k in hosts))
    results: dict[int, list[float]] = {}
    for count in (10, 100_000):
        policy = CompiledPolicy(PolicyConfig("bench", allow=tuple(entries(count, rng))))
        row = []
        for host in hosts.values():
            target = Target(normalize_host(host), 443, connect=True)
            loops = 200_000
            seconds = min(
                timeit.repeat(lambda t=target, p=policy: p.decide(t), number=loops, repeat=5)
            )
            row.append(seconds / loops * 1e9)
        results[count] = row
        print(f"{count:>8}  " + "  ".join(f"{ns:>11.0f} ns" for ns in row))
    ratios = [b / a for a, b in zip(results[10], results[100_000], strict=True)]
    print("ratio 100k/10: " + "  ".join(f"{r:.2f}x" for r in ratios))
    return 0


if __name__ == "__main__":
    sys.exit(main())
