"""Request rules of intercepted hosts: which host is intercepted, and may this request go?

Pure and synchronous; compiled once per config generation from `PolicyConfig.intercept`, nothing
re-parsed per request. The data path (proxy/intercept.py) asks, per policy:

1. `policy.intercept.for_host(host)` on CONNECT (or a transparent connection): the InterceptHost
   whose TLS is terminated, or None: the tunnel stays a plain tunnel, untouched. O(labels of
   the host), by the allowlist's HostMatcher: the most specific entry wins (`api.github.com`
   before `*.github.com` before `.github.com`).
2. `intercept_host.judge(method, target, websocket)` per request inside: first rule that matches
   wins; none → `rule-not-matched`. A rule's paths match the NORMALIZED path
   (names/paths.py); a path that cannot be normalized unambiguously is refused
   (`path-ambiguous`) as soon as a rule with paths has to look at it: a host whose rules never
   name paths (a read-only package index: `methods: [GET, HEAD]`) does not care about its
   spelling. A WebSocket upgrade matches only a rule with `websocket: true`.
3. `intercept_host.set_headers` replace the client's headers of the same names; the secrets in
   them (`secrets`, and `PolicySet.secret_leak` over every policy) are what the leak checks
   look for on every leg the proxy can read.

In report mode a refusal is logged with its reason but the request goes through (allowed=True,
reason ≠ ALLOWED), as for hosts. Secrets live in `bytes` here and nowhere else: no repr, log
line or metric label built by this module contains one.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from egressgate.config.model import InterceptConfig, InterceptRuleConfig
from egressgate.errors import Reason
from egressgate.names.hostname import Host
from egressgate.names.paths import (
    PathAmbiguous,
    PathPattern,
    compile_paths,
    normalize_path,
    normalize_request_path,
    split_target,
)
from egressgate.names.patterns import DomainPattern, HostMatcher

__all__ = [
    "CompiledIntercept",
    "InterceptHost",
    "PathAmbiguous",
    "RuleJudgement",
    "normalize_request_path",
]


@dataclass(frozen=True, slots=True)
class RuleJudgement:
    """The answer for one request inside an intercepted tunnel.

    `allowed` False: refuse with `reason`. `allowed` True with reason ALLOWED: forward; with any
    other reason: report mode let a refusal through (log the reason). `target` is what to send
    upstream: the normalized path plus the client's query, so the origin sees exactly the path
    that was judged (the client's own target when its path was never judged).
    """

    allowed: bool
    reason: Reason
    rule: str | None  # "intercept[api.github.com] rule 1 (line 12)", for the log
    path: str  # the normalized path (the client's, when it could not be normalized)
    target: str
    detail: str = ""


class _Rule:
    """One compiled rule."""

    __slots__ = ("label", "methods", "paths", "websocket")

    def __init__(self, config: InterceptRuleConfig, label: str) -> None:
        self.methods = frozenset(config.methods) if config.methods else None
        self.paths: re.Pattern[str] | None = compile_paths(
            tuple(PathPattern.parse(p) for p in config.paths)
        )
        self.websocket = config.websocket
        self.label = label


def _where(line: int | None) -> str:
    return f" (line {line})" if line is not None else ""


class InterceptHost:
    """One `intercept` entry, compiled: its rules, the headers it sets and their secrets."""

    __slots__ = ("_report", "_rules", "label", "pattern", "secrets", "set_headers")

    def __init__(self, config: InterceptConfig, report: bool = False) -> None:
        self.pattern = config.host
        self.label = f"intercept[{config.host}]{_where(config.line)}"
        self._rules = tuple(
            _Rule(rule, f"intercept[{config.host}] rule {index}{_where(rule.line)}")
            for index, rule in enumerate(config.rules, start=1)
        )
        # Resolved at compile: (lower-case name, prefix + secret), each replacing the client's.
        self.set_headers: tuple[tuple[bytes, bytes], ...] = tuple(
            (h.name.lower().encode("ascii"), h.prefix.encode("ascii") + h.secret.reveal())
            for h in config.set_headers
        )
        self.secrets: tuple[bytes, ...] = tuple(
            dict.fromkeys(h.secret.reveal() for h in config.set_headers)
        )
        if any(not secret for secret in self.secrets):
            # load_config_text(secrets=False) (k8s render) leaves them empty: never for traffic.
            raise ValueError(f"intercept[{config.host}]: compiled from a config without secrets")
        self._report = report

    def __repr__(self) -> str:
        return f"InterceptHost({self.pattern!r}, rules={len(self._rules)})"

    def judge(self, method: str, target: str, websocket: bool = False) -> RuleJudgement:
        """May this request (method, request-target as sent, upgrade or not) go upstream?"""
        try:
            path, query = split_target(target)
        except PathAmbiguous as exc:
            return self._refuse(Reason.PATH_AMBIGUOUS, self.label, target, target, str(exc))
        normalized: str | None
        try:
            normalized = normalize_path(path)
        except PathAmbiguous as exc:
            normalized, problem = None, str(exc)
        for rule in self._rules:
            if websocket and not rule.websocket:
                continue
            if rule.methods is not None and method not in rule.methods:
                continue
            if rule.paths is not None:
                if normalized is None:
                    return self._refuse(Reason.PATH_AMBIGUOUS, rule.label, path, target, problem)
                if rule.paths.fullmatch(normalized) is None:
                    continue
            if normalized is None:
                return RuleJudgement(True, Reason.ALLOWED, rule.label, path, target)
            return RuleJudgement(True, Reason.ALLOWED, rule.label, normalized, normalized + query)
        shown = path if normalized is None else normalized
        forward = target if normalized is None else normalized + query
        what = "WebSocket upgrade" if websocket else method
        return self._refuse(
            Reason.RULE_NOT_MATCHED,
            self.label,
            shown,
            forward,
            f"no rule of {self.label} allows {what} {shown}",
        )

    def _refuse(
        self, reason: Reason, rule: str, path: str, target: str, detail: str
    ) -> RuleJudgement:
        return RuleJudgement(self._report, reason, rule, path, target, detail)


class CompiledIntercept:
    """The intercepted hosts of one policy. Falsy (and `for_host` always None) when none."""

    __slots__ = ("_by_text", "_matcher", "all_secrets", "hosts")

    def __init__(self, entries: tuple[InterceptConfig, ...] = (), report: bool = False) -> None:
        self.hosts = tuple(InterceptHost(entry, report) for entry in entries)
        self._by_text = {host.pattern: host for host in self.hosts}
        self._matcher = HostMatcher([DomainPattern.parse(entry.host) for entry in entries])
        # (secret, the host it belongs to): a secret in a request to any other host is a leak.
        self.all_secrets: tuple[tuple[bytes, InterceptHost], ...] = tuple(
            (secret, host) for host in self.hosts for secret in host.secrets
        )

    def __bool__(self) -> bool:
        return bool(self.hosts)

    def __repr__(self) -> str:
        return f"CompiledIntercept({[h.pattern for h in self.hosts]!r})"

    def for_host(self, host: Host) -> InterceptHost | None:
        """The InterceptHost for this destination, or None (a plain tunnel). Names only."""
        if not self.hosts or host.name is None:
            return None
        text = self._matcher.match_name(host.name)
        return None if text is None else self._by_text[text]


NO_INTERCEPT = CompiledIntercept()


def secret_leak(
    secrets: tuple[tuple[bytes, InterceptHost], ...],
    data: bytes | bytearray,
    own: tuple[bytes, ...] = (),
) -> str | None:
    """The label of the host whose secret `data` carries, unless that secret is in `own` (the
    secrets of the host the data is going to); None when it carries none. Never the secret."""
    for secret, owner in secrets:
        if secret not in own and secret in data:
            return owner.label
    return None
