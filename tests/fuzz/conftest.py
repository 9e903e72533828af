"""tests/fuzz: deep runs (EGRESSGATE_FUZZ=deep) get an hour per test instead of the suite's
per-test timeout."""

from __future__ import annotations

import pytest

from tests.fuzz.budget import DEEP

DEEP_TIMEOUT_S = 3600


def pytest_collection_modifyitems(items: list[pytest.Item]) -> None:
    if not DEEP:
        return
    for item in items:
        if "tests/fuzz/" in item.nodeid.replace("\\", "/"):
            item.add_marker(pytest.mark.timeout(DEEP_TIMEOUT_S))
