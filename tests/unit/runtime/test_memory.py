"""freeze_long_lived: what is alive is exempt from collection, and the next call frees the
cycles that died in between (the old generation after a reload)."""

from __future__ import annotations

import gc
import weakref

from egressgate.runtime.memory import freeze_long_lived


class _Node:
    def __init__(self) -> None:
        self.peer: _Node | None = None


def _cycle() -> tuple[_Node, weakref.ref[_Node]]:
    a, b = _Node(), _Node()
    a.peer, b.peer = b, a
    return a, weakref.ref(a)


def test_frozen_objects_wait_for_the_next_call_to_be_collected() -> None:
    try:
        head, alive = _cycle()
        freeze_long_lived()
        assert gc.get_freeze_count() > 0
        del head  # the cycle is garbage now, but frozen
        gc.collect()
        assert alive() is not None, "a frozen cycle must not be examined by collections"
        freeze_long_lived()  # as after a reload
        assert alive() is None, "the next call must free cycles that died meanwhile"
    finally:
        gc.unfreeze()
