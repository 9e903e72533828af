"""Hot reload: on SIGHUP or when the config file changes, load and compile the new config
aside, and swap it in only if it is valid. On failure: log, count, keep the old policy.

File watching polls `os.stat` of the configured path (following symlinks) once a second and
compares inode, size and mtime, then the content hash. That catches an edit in place, a rename
over the file, and the symlink swap by which Kubernetes updates a mounted ConfigMap
(`..data` → a new timestamped directory), with no inotify edge cases.

Integrity (issue 19, item 9), fail closed:
- a changed file is applied only once it is stable: the same stat and content hash on two
  consecutive polls, so an editor's non-atomic save (truncate, then write) is not applied
  half-written (SIGHUP is an explicit request and applies the file as it is);
- an empty file (nothing but blanks and comments) is refused on reload: at start it means the
  built-in defaults, mid-flight it is almost always a truncated write;
- a reload is atomic: the new generation and everything the process must open for it
  (`prepare`, e.g. a new access log) are ready before anything is replaced; any failure, of
  any exception type, keeps the old generation and is reported as `reload-failed`;
- the watcher survives any exception (reported once with its traceback, counted, retried on
  the next poll) and reports its health to `State` for /readyz.

Never on the event loop (issue 12, item 3): reading, validating and compiling a new generation
happens in a thread (`request_reload`), so a 100,000-entry allowlist that takes seconds to
compile does not pause traffic; the result is handed back to the loop, which prepares and swaps
it as above. One compile at a time: a reload requested meanwhile runs after it. While a compile
runs, the interpreter's thread switch interval is lowered (COMPILE_SWITCH_INTERVAL_S), so the
event loop waits at most that long for the GIL instead of the default 5 ms per wake-up.

Settings that only take effect at start (listeners, workers) are reported as needing a restart;
everything else applies to new requests at once. Requests in flight keep their Generation. The
comparison is with what the process is running on (the config it started with), not with the
previous generation: a `listen` change stays pending across later reloads until a restart, and
changing it back clears it (`restart_needed`, also in /readyz).
"""

from __future__ import annotations

import asyncio
import hashlib
import os
import sys
import threading
import traceback
from collections.abc import Callable
from typing import Any, Protocol

from egressgate.config.load import load_config_text
from egressgate.config.model import Config
from egressgate.errors import ConfigError, ConfigIssue
from egressgate.runtime.state import Generation, State, compile_generation

POLL_INTERVAL_S = 1.0
# The watcher counts as dead (readiness fails) when its last poll is older than this.
WATCHER_STALL_S = 5 * POLL_INTERVAL_S
RESTART_ONLY = (
    "listen",
    "admin_listen",
    "tls_listen",
    "transparent_listen",
    "dns_listen",
    "socks_listen",
    "workers",
)
# While a compile runs in its thread: how long the loop may wait for the GIL at most.
COMPILE_SWITCH_INTERVAL_S = 0.0005

# prepare(old, new) opens what the new generation needs and returns the step that installs it
# (which must not fail); it raises ConfigError (or anything) to refuse the reload.
Prepare = Callable[[Generation, Generation], Callable[[], None]]
Fingerprint = tuple[int, int, int]


class Report(Protocol):
    """Where process events go (observe.events.emit; runtime may not import observe)."""

    def __call__(self, event: str, *, level: str = "info", **fields: Any) -> None: ...


def _silent(event: str, *, level: str = "info", **fields: Any) -> None:
    """The default Report: nothing."""


def _start_only(config: Config) -> dict[str, object]:
    """The settings the running listeners and workers were made from."""
    return {name: getattr(config, name) for name in RESTART_ONLY}


def read_config(path: str) -> str:
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, None, None, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError([ConfigIssue(path, None, None, "not UTF-8 text")]) from exc


def is_empty_config(text: str) -> bool:
    """Nothing but blank lines and comments (YAML: no document at all)."""
    return all(not line.strip() or line.lstrip().startswith("#") for line in text.splitlines())


def load_generation(path: str, number: int, *, reloading: bool = False) -> Generation:
    """Read, validate and compile the config at `path`; raises ConfigError.

    With `reloading`, an empty file is refused rather than read as the built-in defaults."""
    text = read_config(path)
    if reloading and is_empty_config(text):
        raise ConfigError(
            [
                ConfigIssue(
                    path,
                    None,
                    None,
                    "the file is empty: refused on reload (a truncated write?); "
                    "the running policy stays; restart to run on the built-in defaults",
                )
            ]
        )
    config = load_config_text(text, path, base_dir=os.path.dirname(os.path.abspath(path)))
    return compile_generation(config, text, number)


def _unexpected(path: str, exc: BaseException) -> ConfigError:
    return ConfigError(
        [ConfigIssue(path, None, None, f"unexpected error: {type(exc).__name__}: {exc}")]
    )


class StableFileWatch:
    """Notices that a file changed, once the change is stable (see the module doc).

    Shared by the proxy's Reloader and the injection webhook (tools/inject_server.py), so that
    both follow edits, renames and Kubernetes' ConfigMap symlink swap the same way. `poll()`
    returns True exactly once per stable change; `rebase()` forgets any change seen so far (the
    caller has just read the file)."""

    __slots__ = ("_fingerprint", "_path", "_pending")

    def __init__(self, path: str) -> None:
        self._path = path
        self._fingerprint = self._stat()
        # A change seen on the last poll and not applied yet: (stat, sha256 of the bytes).
        self._pending: tuple[Fingerprint, str | None] | None = None

    def _stat(self) -> Fingerprint | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def _digest(self) -> str | None:
        try:
            with open(self._path, "rb") as handle:
                return hashlib.sha256(handle.read()).hexdigest()
        except OSError:
            return None

    def rebase(self) -> None:
        """Forget what was seen: the caller has just read the file as it is now."""
        self._fingerprint = self._stat()
        self._pending = None

    def poll(self) -> bool:
        """True when the file changed and two consecutive polls found the very same file."""
        fingerprint = self._stat()
        if fingerprint is None or fingerprint == self._fingerprint:
            self._pending = None
            return False
        candidate = (fingerprint, self._digest())
        if candidate != self._pending:
            # Changed since the last poll: the writer may not be done. Apply only when the
            # next poll finds the very same file (a non-atomic save is never applied half-way).
            self._pending = candidate
            return False
        self._pending = None
        self._fingerprint = fingerprint
        return True


class Reloader:
    """Owns reloading for one process."""

    def __init__(
        self,
        state: State,
        path: str,
        on_success: Callable[[Generation, Generation, list[str]], None],
        on_failure: Callable[[ConfigError], None],
        *,
        prepare: Prepare | None = None,
        on_watcher_error: Callable[[], None] | None = None,
        report: Report = _silent,
    ) -> None:
        self._state = state
        self._path = path
        self._on_success = on_success
        self._on_failure = on_failure
        self._prepare = prepare
        self._on_watcher_error = on_watcher_error
        self._report = report
        self._watch = StableFileWatch(path)
        self._last_error: str | None = None  # the watcher's last unexpected error, reported once
        self._task: asyncio.TimerHandle | None = None
        # Fix (issue 18): compared with the previous generation, a comment-only edit after a
        # `listen` change reported nothing pending, and changing it back reported a restart.
        self._running = _start_only(state.current.config)
        self.restart_needed: list[str] = []  # settings whose new value waits for a restart
        self._compiling = False  # a compile thread is running
        self._queued: str | None = None  # the trigger of a reload requested meanwhile
        self._stopped = False

    def start_watching(self) -> None:
        self._state.watch_started(WATCHER_STALL_S)
        self._schedule()

    def _schedule(self) -> None:
        self._task = asyncio.get_running_loop().call_later(POLL_INTERVAL_S, self._poll)

    def stop(self) -> None:
        self._stopped = True
        self._state.watch_stopped()
        if self._task is not None:
            self._task.cancel()
            self._task = None

    def _poll(self) -> None:
        """One poll; whatever happens, the next one is scheduled."""
        try:
            self._check_file()
        except Exception as exc:  # the watcher must outlive any bug
            self._watcher_failed(exc)
        else:
            if self._last_error is not None:
                self._report(
                    "reload-watcher-recovered", level="warning", previous_error=self._last_error
                )
                self._last_error = None
            self._state.watch_polled(None)
        finally:
            self._schedule()

    def _watcher_failed(self, exc: Exception) -> None:
        text = f"{type(exc).__name__}: {exc}"
        if self._on_watcher_error is not None:
            self._on_watcher_error()
        self._state.watch_polled(text)
        if text != self._last_error:  # the traceback once per distinct error, not every second
            self._last_error = text
            self._report(
                "reload-watcher-error",
                level="error",
                error=text,
                traceback=traceback.format_exc(),
                note="the watcher keeps polling; /readyz is not ready until a poll succeeds",
            )

    def _check_file(self) -> None:
        if not self._watch.poll():
            return
        try:
            text: str | None = read_config(self._path)
        except ConfigError:
            text = None
        if text is None or hashlib.sha256(text.encode()).hexdigest() != self._state.current.sha256:
            self.request_reload("file-change")

    # ---- compiling off the loop
    def request_reload(self, trigger: str) -> None:
        """Compile the file in a thread, then apply it on the loop (see the module doc)."""
        if self._stopped:
            return
        if self._compiling:
            self._queued = trigger
            return
        self._compiling = True
        old = self._state.current
        self._watch.rebase()
        loop = asyncio.get_running_loop()
        threading.Thread(
            target=self._compile_in_thread,
            args=(loop, trigger, old),
            name="egressgate-reload",
            daemon=True,  # a compile in progress never holds up the exit
        ).start()

    def _compile_in_thread(
        self, loop: asyncio.AbstractEventLoop, trigger: str, old: Generation
    ) -> None:
        previous_s = sys.getswitchinterval()
        sys.setswitchinterval(COMPILE_SWITCH_INTERVAL_S)
        result: Generation | Exception
        try:
            result = load_generation(self._path, old.number + 1, reloading=True)
        except Exception as exc:  # handed to the loop, which reports it
            result = exc
        finally:
            sys.setswitchinterval(previous_s)
        try:
            loop.call_soon_threadsafe(self._compiled, trigger, old, result)
        except RuntimeError:  # the loop has closed: the process is exiting
            pass

    def _compiled(self, trigger: str, old: Generation, result: Generation | Exception) -> None:
        """On the loop: apply what the thread compiled, then any reload requested meanwhile."""
        self._compiling = False
        try:
            if self._stopped:
                return
            if self._state.current is not old:  # compiled against an older generation
                self._queued = self._queued or trigger
            else:
                self._apply(trigger, old, result)
        except Exception:  # a bug after the swap: report it, keep reloading
            self._report(
                "reload-error", level="error", trigger=trigger, traceback=traceback.format_exc()
            )
        finally:
            if self._queued is not None and not self._stopped:
                queued, self._queued = self._queued, None
                self.request_reload(queued)

    # ---- applying
    def reload(self, trigger: str) -> bool:
        """Load, prepare and swap on the calling thread, all or nothing; True if the new config
        is now in force. (The proxy uses `request_reload`, which compiles off the loop.)"""
        old = self._state.current
        self._watch.rebase()
        result: Generation | Exception
        try:
            result = load_generation(self._path, old.number + 1, reloading=True)
        except Exception as exc:
            result = exc
        return self._apply(trigger, old, result)

    def _apply(self, trigger: str, old: Generation, result: Generation | Exception) -> bool:
        """Prepare and swap a compiled generation (or report why there is none)."""
        try:
            if isinstance(result, Exception):
                raise result
            new = result
            install = self._prepare(old, new) if self._prepare is not None else None
        except ConfigError as exc:
            self._on_failure(exc)
            return False
        except Exception as exc:  # fail closed: keep the old generation
            self._report(
                "reload-error", level="error", trigger=trigger, traceback=traceback.format_exc()
            )
            self._on_failure(_unexpected(self._path, exc))
            return False
        restart_needed = [
            name for name, value in _start_only(new.config).items() if value != self._running[name]
        ]
        self.restart_needed = restart_needed
        self._state.current = new
        if install is not None:
            install()
        self._on_success(old, new, restart_needed)
        return True
