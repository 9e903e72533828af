"""Reloader and readiness (issue 19, item 9), on a real event loop and real files.

- a reload is all or nothing: a failing `prepare` (of any exception type) keeps the old
  generation and reports a failure; nothing is installed;
- the watcher survives any exception, reports it once, counts it, marks readiness failing,
  and recovers on the next clean poll;
- readiness fails for a watcher whose last poll is too old (dead), or while draining;
- an empty file is refused on reload only.
"""

from __future__ import annotations

import asyncio
import os
import time
from pathlib import Path
from typing import Any

import pytest

from egressgate.errors import ConfigError
from egressgate.runtime import reload as reload_module
from egressgate.runtime.reload import Reloader, is_empty_config, load_generation
from egressgate.runtime.state import Generation, State

CONFIG = "listen: 127.0.0.1:0\nadmin_listen: null\nallow: [a.test]\n"


class Recorder:
    def __init__(self) -> None:
        self.successes: list[int] = []
        self.failures: list[ConfigError] = []
        self.events: list[tuple[str, dict[str, Any]]] = []
        self.watcher_errors = 0

    def success(self, old: Generation, new: Generation, restart: list[str]) -> None:
        self.successes.append(new.number)

    def failure(self, error: ConfigError) -> None:
        self.failures.append(error)

    def report(self, event: str, *, level: str = "info", **fields: Any) -> None:
        self.events.append((event, {"level": level, **fields}))

    def watcher_error(self) -> None:
        self.watcher_errors += 1


def make(tmp_path: Path, **kwargs: Any) -> tuple[Path, State, Recorder, Reloader]:
    path = tmp_path / "egress.yaml"
    path.write_text(CONFIG)
    state = State(load_generation(str(path), 1))
    rec = Recorder()
    reloader = Reloader(
        state,
        str(path),
        kwargs.pop("on_success", rec.success),
        rec.failure,
        on_watcher_error=rec.watcher_error,
        report=rec.report,
        **kwargs,
    )
    return path, state, rec, reloader


def test_a_failing_prepare_keeps_the_old_generation(tmp_path: Path) -> None:
    installed: list[int] = []

    def prepare(old: Generation, new: Generation) -> Any:
        raise RuntimeError("cannot open")  # not a ConfigError: still a clean failure

    path, state, rec, reloader = make(tmp_path, prepare=prepare)
    old = state.current
    path.write_text(CONFIG.replace("a.test", "b.test"))
    assert reloader.reload("SIGHUP") is False
    assert state.current is old
    assert rec.successes == []
    assert installed == []
    (failure,) = rec.failures
    assert "unexpected error: RuntimeError: cannot open" in str(failure.issues[0])
    assert rec.events[0][0] == "reload-error"


def test_prepare_installs_only_after_the_swap(tmp_path: Path) -> None:
    seen: list[int] = []

    def prepare(old: Generation, new: Generation) -> Any:
        assert state.current is old
        return lambda: seen.append(state.current.number)

    path, state, rec, reloader = make(tmp_path, prepare=prepare)
    path.write_text(CONFIG.replace("a.test", "b.test"))
    assert reloader.reload("SIGHUP") is True
    assert seen == [2]
    assert rec.successes == [2]


@pytest.mark.parametrize("text", ["", "\n\n", "# all commented out\n  # indented\n"])
def test_an_empty_file_is_refused_on_reload_but_not_at_start(tmp_path: Path, text: str) -> None:
    assert is_empty_config(text)
    path, state, rec, reloader = make(tmp_path)
    path.write_text(text)
    assert reloader.reload("SIGHUP") is False
    assert "empty" in str(rec.failures[0].issues[0])
    assert state.current.number == 1
    # At start, an empty file still means the built-in defaults (documented behaviour).
    assert load_generation(str(path), 1).config.policies[0].allow == ()


def test_a_non_utf8_users_file_is_a_config_error(tmp_path: Path) -> None:
    users = tmp_path / "users"
    users.write_bytes(b"alice:s\xffcret\n")
    path, _state, rec, reloader = make(tmp_path)
    path.write_text(CONFIG + f"auth: {{users_file: {users}}}\n")
    assert reloader.reload("SIGHUP") is False
    assert "not UTF-8" in str(rec.failures[0].issues[0])


def test_the_watcher_survives_any_exception_and_readiness_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload_module, "POLL_INTERVAL_S", 0.05)
    calls: list[int] = []

    def flaky_success(old: Generation, new: Generation, restart: list[str]) -> None:
        calls.append(new.number)
        if len(calls) == 1:
            raise RuntimeError("bug in the success handler")

    async def scenario() -> None:
        path, state, rec, reloader = make(tmp_path, on_success=flaky_success)
        state.accepting = True
        reloader.start_watching()
        assert state.ready
        path.write_text(CONFIG.replace("a.test", "b.test"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if rec.watcher_errors:
                break
        assert rec.watcher_errors == 1
        assert not state.ready
        reason = state.not_ready_reason()
        assert reason is not None
        assert "config watcher failing" in reason
        assert "RuntimeError: bug in the success handler" in reason
        (event,) = [fields for name, fields in rec.events if name == "reload-watcher-error"]
        assert "Traceback" in event["traceback"]
        # It keeps polling: the next edit is applied, and readiness recovers.
        await asyncio.sleep(0.1)
        assert state.ready
        path.write_text(CONFIG.replace("a.test", "c.test"))
        for _ in range(100):
            await asyncio.sleep(0.02)
            if len(calls) == 2:
                break
        assert calls == [2, 3]
        assert state.ready
        reloader.stop()

    asyncio.run(scenario())


def test_a_half_written_file_waits_for_a_second_equal_poll(tmp_path: Path) -> None:
    async def scenario() -> None:
        path, _state, rec, reloader = make(tmp_path)
        path.write_text(CONFIG.replace("allow: [a.test]", "allow: [a.te"))
        reloader._check_file()  # first sight of the change: not applied
        assert rec.successes == []
        assert rec.failures == []
        path.write_text(CONFIG.replace("a.test", "a.test, b.test"))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        reloader._check_file()  # changed again: still waiting
        assert rec.successes == []
        assert rec.failures == []
        reloader._check_file()  # the same twice: applied
        assert rec.successes == [2]
        reloader._check_file()
        assert rec.successes == [2]

    asyncio.run(scenario())


def test_readiness_fails_for_a_dead_watcher_and_while_draining(tmp_path: Path) -> None:
    _path, state, _rec, _reloader = make(tmp_path)
    state.accepting = True
    assert state.not_ready_reason() is None  # no watcher at all: nothing to report
    state.watch_started(5.0)
    assert state.ready
    now = time.monotonic()
    assert state.watcher_problem(now + 4.0) is None
    problem = state.watcher_problem(now + 6.0)
    assert problem is not None
    assert problem.startswith("config watcher dead")
    state.watch_polled(None)
    assert state.ready
    state.watch_stopped()
    state.draining = True
    assert state.not_ready_reason() == "draining"
