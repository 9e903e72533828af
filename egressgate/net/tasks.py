"""spawn(): start a background task that is named, strongly referenced until it ends, and whose
exception is always retrieved.

asyncio keeps only weak references to tasks; a task nobody holds can be garbage-collected
mid-flight. Bare `asyncio.create_task` is banned by ruff (TID251) in favour of this helper.

A task that ends with an exception hands it to its `on_error` (the owning exchange answers its
client: proxy/failsafe.py), or to the process-wide `unhandled` sink the server installs; never
to asyncio's "Task exception was never retrieved", which leaves the client hanging.
"""

from __future__ import annotations

import asyncio
from collections.abc import Callable, Coroutine
from typing import Any

ErrorSink = Callable[[BaseException], object]

_running: dict[asyncio.Task[Any], ErrorSink | None] = {}


def _report(exc: BaseException, name: str) -> None:
    asyncio.get_running_loop().call_exception_handler(
        {"message": f"egressgate: task {name} failed", "exception": exc}
    )


# Where the exception of a task without its own `on_error` goes (server.py sets it to count
# and report it through proxy/failsafe.py); the loop's exception handler by default.
unhandled: Callable[[BaseException, str], object] = _report


def spawn(
    coro: Coroutine[Any, Any, Any], name: str, on_error: ErrorSink | None = None
) -> asyncio.Task[Any]:
    """Run `coro` as a task named `name`, keeping a reference until it finishes; an exception
    it ends with goes to `on_error` (else to `unhandled`)."""
    task = asyncio.get_running_loop().create_task(coro, name=name)
    _running[task] = on_error
    task.add_done_callback(_finished)
    return task


def _finished(task: asyncio.Task[Any]) -> None:
    on_error = _running.pop(task, None)
    if task.cancelled():
        return
    exc = task.exception()  # retrieved: asyncio will not complain about it
    if exc is None:
        return
    try:
        if on_error is not None:
            on_error(exc)
            return
    except Exception as second:  # the handler itself failed: report both, never lose one
        unhandled(second, task.get_name())
    unhandled(exc, task.get_name())
