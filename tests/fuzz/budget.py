"""How hard the fuzz tests try: small by default (CI stays fast), deep when asked.

`EGRESSGATE_FUZZ=deep` (or the suite-wide `HYPOTHESIS_PROFILE=deep`) multiplies the examples of
every property in tests/fuzz/ and the live fuzz's case count. `EGRESSGATE_FUZZ_SEED` picks the
live fuzz's seed (default 12, so a CI failure replays by hand with the same inputs).
"""

from __future__ import annotations

import os

from hypothesis import HealthCheck, settings

DEEP = os.environ.get("EGRESSGATE_FUZZ") == "deep" or os.environ.get("HYPOTHESIS_PROFILE") == "deep"
LIVE_SEED = int(os.environ.get("EGRESSGATE_FUZZ_SEED", "12"))
LIVE_CASES = int(os.environ.get("EGRESSGATE_FUZZ_CASES", "3000" if DEEP else "300"))


def fuzz_settings(fast: int, deep: int) -> settings:
    """Hypothesis settings for one fuzz property: `fast` examples in CI, `deep` on request."""
    return settings(
        max_examples=deep if DEEP else fast,
        deadline=None,
        suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much],
    )
