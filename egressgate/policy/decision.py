"""The values policy answers with: who asks (ClientIdentity), for what (Target), and the verdict.

Frozen values, no behaviour. A Decision always carries a Reason, also when it allows, so that
the access log and metrics can say why every request went the way it did.
"""

from __future__ import annotations

from enum import StrEnum

from egressgate.errors import Reason
from egressgate.names.hostname import Host, IPAddress
from egressgate.values import immutable


class Verdict(StrEnum):
    ALLOW = "allow"
    DENY = "deny"
    REPORT = "report"  # allowed only because the policy is in report mode


@immutable
class ClientIdentity:
    """What the proxy knows about the client: its address, proxy user, TLS certificate names."""

    address: IPAddress
    user: str | None = None
    tls_names: tuple[str, ...] = ()


@immutable
class Target:
    """The destination asked for: normalized host, port, and whether it is a CONNECT tunnel."""

    host: Host
    port: int
    connect: bool


@immutable
class Decision:
    """The answer for one request. `reason` is ALLOWED, or the refusal (also in report mode)."""

    verdict: Verdict
    reason: Reason
    policy: str
    rule: str | None = None
    detail: str = ""

    @property
    def allowed(self) -> bool:
        return self.verdict is not Verdict.DENY
