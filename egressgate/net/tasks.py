"""spawn(): start a background task that is named and strongly referenced until it ends.

asyncio keeps only weak references to tasks; a task nobody holds can be garbage-collected
mid-flight. Bare `asyncio.create_task` is banned by ruff (TID251) in favour of this helper.
"""

from __future__ import annotations

import asyncio
from collections.abc import Coroutine
from typing import Any

_running: set[asyncio.Task[Any]] = set()


def spawn(coro: Coroutine[Any, Any, Any], name: str) -> asyncio.Task[Any]:
    """Run `coro` as a task named `name`, keeping a reference until it finishes."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running.add(task)
    task.add_done_callback(_running.discard)
    return task
