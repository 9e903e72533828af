"""What the proxy runs with right now: the compiled policy of the current config generation.

A request reads `State.current` once and keeps that Generation until it ends; a reload builds a
new Generation aside and replaces it by one assignment (atomic on one event loop, no locks), so
in-flight requests and open tunnels finish under the policy they started with.
"""

from __future__ import annotations

import hashlib
import os
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
        with open(auth.users_file, encoding="utf-8") as handle:
            text = handle.read()
        where = auth.users_file
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

    @property
    def ready(self) -> bool:
        return self.accepting and not self.draining

    @property
    def closing(self) -> bool:
        """Draining with the listeners closed: new connections and keep-alive end now.

        Between SIGTERM and that point (limits.shutdown_delay_s) the proxy is unready but
        still serves everyone, because load balancers keep routing to it for a while."""
        return self.draining and not self.accepting
