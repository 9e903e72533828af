"""TupleMemo: computed once per tuple object, never confused by a recycled id, bounded."""

from __future__ import annotations

from egressgate.names.tuple_memo import TupleMemo


def test_computes_once_per_tuple_object_and_again_for_an_equal_new_tuple() -> None:
    calls: list[tuple[int, ...]] = []

    def total(key: tuple[int, ...]) -> int:
        calls.append(key)
        return sum(key)

    memo: TupleMemo[tuple[int, ...], int] = TupleMemo(total)
    kept = tuple(range(3))
    assert memo.get(kept) == 3
    assert memo.get(kept) == 3
    assert len(calls) == 1
    assert memo.get(tuple(range(3))) == 3  # equal content, another object: computed again
    assert len(calls) == 2


def test_tuples_dropped_at_once_get_their_own_answers() -> None:
    memo: TupleMemo[tuple[int, ...], int] = TupleMemo(sum)
    for index in range(500):  # their ids are likely recycled by the next iteration's tuple
        fresh = tuple(range(index % 7))
        assert memo.get(fresh) == sum(range(index % 7))
        del fresh


def test_the_memo_stays_bounded() -> None:
    memo: TupleMemo[tuple[int, ...], int] = TupleMemo(sum, limit=10)
    kept = [tuple(range(n)) for n in range(100)]
    for key in kept:
        memo.get(key)
    assert len(memo._entries) <= 10
