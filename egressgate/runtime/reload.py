"""Hot reload: on SIGHUP or when the config file changes, load and compile the new config
aside, and swap it in only if it is valid. On failure: log, count, keep the old policy.

File watching polls `os.stat` of the configured path (following symlinks) once a second and
compares inode, size and mtime, then the content hash. That catches an edit in place, a rename
over the file, and the symlink swap by which Kubernetes updates a mounted ConfigMap
(`..data` → a new timestamped directory), with no inotify edge cases.

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
from collections.abc import Callable

from egressgate.config.load import load_config_text
from egressgate.config.model import Config
from egressgate.errors import ConfigError, ConfigIssue
from egressgate.runtime.state import Generation, State, compile_generation

POLL_INTERVAL_S = 1.0
RESTART_ONLY = ("listen", "admin_listen", "tls_listen", "workers")


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


def load_generation(path: str, number: int) -> Generation:
    """Read, validate and compile the config at `path`; raises ConfigError."""
    text = read_config(path)
    config = load_config_text(text, path, base_dir=os.path.dirname(os.path.abspath(path)))
    return compile_generation(config, text, number)


class Reloader:
    """Owns reloading for one process."""

    def __init__(
        self,
        state: State,
        path: str,
        on_success: Callable[[Generation, Generation, list[str]], None],
        on_failure: Callable[[ConfigError], None],
    ) -> None:
        self._state = state
        self._path = path
        self._on_success = on_success
        self._on_failure = on_failure
        self._fingerprint = self._stat()
        self._task: asyncio.TimerHandle | None = None
        # Fix (issue 18): compared with the previous generation, a comment-only edit after a
        # `listen` change reported nothing pending, and changing it back reported a restart.
        self._running = _start_only(state.current.config)
        self.restart_needed: list[str] = []  # settings whose new value waits for a restart

    def _stat(self) -> tuple[int, int, int] | None:
        try:
            st = os.stat(self._path)
        except OSError:
            return None
        return st.st_ino, st.st_size, st.st_mtime_ns

    def start_watching(self) -> None:
        self._task = asyncio.get_running_loop().call_later(POLL_INTERVAL_S, self._poll)

    def stop(self) -> None:
        if self._task is not None:
            self._task.cancel()

    def _poll(self) -> None:
        fingerprint = self._stat()
        if fingerprint is not None and fingerprint != self._fingerprint:
            self._fingerprint = fingerprint
            try:
                text = read_config(self._path)
            except ConfigError:
                text = None
            if (
                text is None
                or hashlib.sha256(text.encode()).hexdigest() != self._state.current.sha256
            ):
                self.reload("file-change")
        self.start_watching()

    def reload(self, trigger: str) -> bool:
        """Load and swap; True if the new config is now in force."""
        old = self._state.current
        self._fingerprint = self._stat()
        try:
            new = load_generation(self._path, old.number + 1)
        except ConfigError as exc:
            self._on_failure(exc)
            return False
        restart_needed = [
            name for name, value in _start_only(new.config).items() if value != self._running[name]
        ]
        self.restart_needed = restart_needed
        self._state.current = new
        self._on_success(old, new, restart_needed)
        return True
