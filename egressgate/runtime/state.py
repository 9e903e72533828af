"""What the proxy runs with right now: the compiled policy of the current config generation.

A request reads `State.current` once and keeps that Generation until it ends; a reload builds a
new Generation aside and replaces it by one assignment (atomic on one event loop, no locks), so
in-flight requests and open tunnels finish under the policy they started with.

Readiness also covers the config-file watcher (issue 19, item 9): a proxy whose watcher has
died or keeps failing would silently keep an old policy while every edit of the file is
ignored, so /readyz says so (`not_ready_reason`) instead of staying green.
"""

from __future__ import annotations

import hashlib
import os
import time
from dataclasses import dataclass

from egressgate.config.model import AuthConfig, Config
from egressgate.errors import ConfigError, ConfigIssue
from egressgate.policy.credentials import Credentials, StoredSecret, parse_secret
from egressgate.policy.engine import PolicySet


@dataclass(frozen=True, slots=True)
class Generation:
    """One loaded config: its model, compiled policy, credentials, number and content hash."""

    config: Config
    policies: PolicySet
    credentials: Credentials  # proxy users, their stored secrets and verdict caches
    number: int
    sha256: str


def load_credentials(auth: AuthConfig | None) -> Credentials:
    """`user:secret` lines from the users file or environment variable (secret formats:
    policy/credentials.py); raises ConfigError listing every bad line."""
    if auth is None:
        return Credentials({})
    if auth.users_file is not None:
        where = auth.users_file
        text = _read_users_file(where)
    else:
        assert auth.users_env is not None
        text = os.environ.get(auth.users_env, "")
        where = f"${auth.users_env}"
        if not text:
            raise ConfigError(
                [
                    ConfigIssue(
                        where,
                        None,
                        None,
                        "environment variable is empty or unset (expected user:password lines)",
                    )
                ]
            )
    users: dict[str, StoredSecret] = {}
    issues: list[ConfigIssue] = []
    for number, line in enumerate(text.splitlines(), start=1):
        line = line.strip()
        if not line or line.startswith("#"):
            continue
        user, sep, password = line.partition(":")
        if not sep or not user or not password:
            issues.append(ConfigIssue(where, number, None, "expected user:password"))
            continue
        try:
            users[user] = parse_secret(password)
        except ValueError as exc:
            issues.append(ConfigIssue(where, number, None, f"user {user!r}: {exc}"))
    if issues:
        raise ConfigError(issues)
    return Credentials(users)


def _read_users_file(path: str) -> str:
    """The users file as text; ConfigError (not OSError / UnicodeDecodeError) if unreadable.

    A non-UTF-8 users file used to raise UnicodeDecodeError, which killed the reload watcher
    (issue 19, item 9)."""
    try:
        with open(path, encoding="utf-8") as handle:
            return handle.read()
    except OSError as exc:
        raise ConfigError([ConfigIssue(path, None, None, f"cannot read: {exc.strerror}")]) from exc
    except UnicodeDecodeError as exc:
        raise ConfigError(
            [ConfigIssue(path, None, None, f"not UTF-8 text (byte {exc.start})")]
        ) from exc


def compile_generation(config: Config, text: str, number: int) -> Generation:
    """Compile `config` (whose file content is `text`) into a Generation; raises ConfigError."""
    return Generation(
        config=config,
        policies=PolicySet.compile(config),
        credentials=load_credentials(config.auth),
        number=number,
        sha256=hashlib.sha256(text.encode()).hexdigest(),
    )


class State:
    """The process-wide holder of the current Generation and the lifecycle flags."""

    def __init__(self, generation: Generation) -> None:
        self.current = generation
        self.draining = False
        self.accepting = False
        # The config-file watcher, if there is one: when its last poll ended (monotonic), how
        # old that may get before it counts as dead, and the error of its last poll, if any.
        self.watcher_stall_s: float | None = None
        self.watcher_heartbeat = 0.0
        self.watcher_error: str | None = None

    def watch_started(self, stall_s: float) -> None:
        """A watcher now polls at least every `stall_s` seconds (or it is dead)."""
        self.watcher_stall_s = stall_s
        self.watcher_heartbeat = time.monotonic()

    def watch_polled(self, error: str | None) -> None:
        """One poll ended: cleanly (None) or with an unexpected error (its text)."""
        self.watcher_heartbeat = time.monotonic()
        self.watcher_error = error

    def watch_stopped(self) -> None:
        self.watcher_stall_s = None

    def watcher_problem(self, now: float | None = None) -> str | None:
        """Why the config watcher cannot be trusted to apply the next edit, or None."""
        if self.watcher_stall_s is None:
            return None
        if self.watcher_error is not None:
            return f"config watcher failing: {self.watcher_error}"
        age_s = (time.monotonic() if now is None else now) - self.watcher_heartbeat
        if age_s > self.watcher_stall_s:
            return f"config watcher dead: last poll {age_s:.1f}s ago"
        return None

    def not_ready_reason(self) -> str | None:
        """None when ready; otherwise why not (for /readyz)."""
        if self.draining:
            return "draining"
        if not self.accepting:
            return "not accepting connections"
        return self.watcher_problem()

    @property
    def ready(self) -> bool:
        return self.not_ready_reason() is None

    @property
    def closing(self) -> bool:
        """Draining with the listeners closed: new connections and keep-alive end now.

        Between SIGTERM and that point (limits.shutdown_delay_s) the proxy is unready but
        still serves everyone, because load balancers keep routing to it for a while."""
        return self.draining and not self.accepting
