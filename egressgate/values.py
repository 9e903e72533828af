"""`@immutable`: an immutable record type that is cheap to build.

The data path builds several small records per request (a parsed head, a target, a decision,
an admission step). `@dataclass(frozen=True, slots=True)` makes each field assignment in
`__init__` an `object.__setattr__` call: building a four-field value cost ~1.1 us against
~0.3 us for a plain slots dataclass, several microseconds per request in all (docs/performance.md,
"Plain HTTP after the admission refactor").

`@immutable` is a slots dataclass with a generated `__hash__`, declared to type checkers (PEP 681
`dataclass_transform`) as frozen: mypy rejects any assignment to a field, which is where the
immutability is enforced. At run time nothing stops an assignment; nothing in egressgate makes
one (mypy is part of CI), and `dataclasses.replace` makes modified copies as for any dataclass.
"""

from __future__ import annotations

from dataclasses import dataclass
from typing import TypeVar, dataclass_transform

T = TypeVar("T")


@dataclass_transform(frozen_default=True)
def immutable(cls: type[T]) -> type[T]:
    """Make `cls` an immutable-by-contract slots dataclass (equality and hash by fields)."""
    return dataclass(slots=True, unsafe_hash=True)(cls)
