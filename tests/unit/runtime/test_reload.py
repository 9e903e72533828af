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
import itertools
import os
import threading
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


async def _until(predicate: Any, what: str, timeout_s: float = 5.0) -> None:
    for _ in range(int(timeout_s / 0.02)):
        if predicate():
            return
        await asyncio.sleep(0.02)
    raise AssertionError(f"timed out waiting for {what}")


def test_the_watcher_survives_any_exception_and_readiness_says_so(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    monkeypatch.setattr(reload_module, "POLL_INTERVAL_S", 0.05)

    async def scenario() -> None:
        path, state, rec, reloader = make(tmp_path)
        real_digest = reload_module.StableFileWatch._digest
        failures = iter([True])

        def flaky_digest(watch: Any) -> str | None:  # a bug the watcher did not foresee, once
            if next(failures, False):
                raise RuntimeError("bug in the watcher")
            return real_digest(watch)

        # The file watch (shared with the injection webhook) is where the digest is taken.
        monkeypatch.setattr(reload_module.StableFileWatch, "_digest", flaky_digest)
        state.accepting = True
        reloader.start_watching()
        assert state.ready
        path.write_text(CONFIG.replace("a.test", "b.test"))
        await _until(lambda: rec.watcher_errors, "the watcher error")
        assert rec.watcher_errors == 1
        assert not state.ready
        reason = state.not_ready_reason()
        assert reason is not None
        assert "config watcher failing: RuntimeError: bug in the watcher" in reason
        (event,) = [fields for name, fields in rec.events if name == "reload-watcher-error"]
        assert "Traceback" in event["traceback"]
        # It keeps polling: the edit is applied, and readiness recovers.
        await _until(lambda: rec.successes == [2], "the reload")
        assert state.ready
        assert any(name == "reload-watcher-recovered" for name, _ in rec.events)
        reloader.stop()

    asyncio.run(scenario())


def test_a_half_written_file_waits_for_a_second_equal_poll(tmp_path: Path) -> None:
    async def scenario() -> None:
        path, _state, rec, reloader = make(tmp_path)
        path.write_text(CONFIG.replace("allow: [a.test]", "allow: [a.te"))
        reloader._check_file()  # first sight of the change: not applied
        path.write_text(CONFIG.replace("a.test", "a.test, b.test"))
        os.utime(path, ns=(time.time_ns(), time.time_ns() + 1_000_000))
        reloader._check_file()  # changed again: still waiting
        await asyncio.sleep(0.2)
        assert rec.successes == []
        assert rec.failures == []
        reloader._check_file()  # the same twice: applied
        await _until(lambda: rec.successes, "the reload")
        reloader._check_file()
        await asyncio.sleep(0.2)
        assert rec.successes == [2]
        assert rec.failures == []

    asyncio.run(scenario())


def test_request_reload_compiles_off_the_loop_one_at_a_time(
    tmp_path: Path, monkeypatch: pytest.MonkeyPatch
) -> None:
    """Issue 12, item 3: a slow compile must not pause the event loop; requests made during a
    compile are coalesced into one more reload after it; a failed compile keeps the old one."""
    real_load = reload_module.load_generation
    compiles: list[str] = []

    def slow_load(path: str, number: int, *, reloading: bool = False) -> Generation:
        compiles.append(threading.current_thread().name)
        time.sleep(0.4)  # a 100,000-entry allowlist, in miniature
        return real_load(path, number, reloading=reloading)

    monkeypatch.setattr(reload_module, "load_generation", slow_load)

    async def scenario() -> None:
        path, state, rec, reloader = make(tmp_path)
        path.write_text(CONFIG.replace("a.test", "b.test"))
        ticks: list[float] = []

        async def ticker() -> None:
            for _ in range(100):
                ticks.append(time.monotonic())
                await asyncio.sleep(0.01)

        ticking = asyncio.create_task(ticker())
        reloader.request_reload("SIGHUP")
        reloader.request_reload("SIGHUP")  # during the compile: one more after it
        reloader.request_reload("file-change")
        await _until(lambda: rec.successes == [2, 3], "two reloads")
        await ticking
        gaps = [b - a for a, b in itertools.pairwise(ticks)]
        assert max(gaps) < 0.2, f"the loop paused for {max(gaps):.3f}s"
        assert compiles == ["egressgate-reload", "egressgate-reload"]
        assert state.current.number == 3

        path.write_text("allow: [\n")  # a failed compile keeps generation 3
        reloader.request_reload("SIGHUP")
        await _until(lambda: rec.failures, "the failure")
        assert "YAML syntax" in str(rec.failures[0].issues[0])
        assert state.current.number == 3

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
