"""Proxy-Authorization: Basic — parse, verify, back off, or refuse with 407.

Two stages, so that neither a slow hash nor a failure delay ever blocks the event loop:

1. `AuthGate.hold()` runs when a request head is complete, before its exchange starts. It
   verifies credentials that are not yet known: bcrypt/argon2 on a worker thread
   (`loop.run_in_executor`), the fast schemes inline, and records the verdict in the
   generation's `Credentials`. A failure is counted (`egressgate_auth_failures_total`) and
   puts the client address on the back-off table: its failed attempts are answered one per
   `limits.auth_failure_delay_s` (each failure takes the next slot, parallel connections
   included), and while it has slots pending even its correct attempts wait for the current
   one, so an answer's timing does not tell a right guess from a wrong one. A client whose
   queue would exceed MAX_BACKOFF_SLOTS slots is refused at once without verification.
   The waits are loop timers (call_later), never sleeps.
2. `authenticate()` runs inside the exchange, synchronously: it reads the verdict stage 1
   recorded (or verifies a fast scheme directly) and returns the user or raises Refused(407).

Credentials are never logged: only the user name reaches the access log, and only after it was
verified. An unknown user is verified against a secret of the same cost as the real ones.
"""

from __future__ import annotations

import asyncio
import base64
import binascii
import time
from collections import OrderedDict
from collections.abc import Callable

from egressgate.errors import Reason, Refused
from egressgate.http1.events import Header
from egressgate.observe.events import emit
from egressgate.observe.metrics import Metrics
from egressgate.policy.credentials import Credentials
from egressgate.values import immutable

# Back-off table: at most this many client addresses, each forgotten this long after its
# last pending slot; a client may have at most MAX_BACKOFF_SLOTS failures waiting.
MAX_BACKOFF_CLIENTS = 4096
BACKOFF_MEMORY_S = 300.0
MAX_BACKOFF_SLOTS = 30

# Resume callback of a held request: None → go on (stage 2 reads the verdict); a Refused →
# answer it without going further.
Resume = Callable[[Refused | None], None]


@immutable
class Login:
    """Credentials a client presented, not yet verified: from a Proxy-Authorization header, or
    an RFC 1929 SOCKS5 username/password sub-negotiation. `problem`: why they are unusable
    (malformed header, unsupported scheme); verification then refuses with that text."""

    user: str
    password: str
    problem: str = ""


def login_from_headers(headers: list[Header]) -> Login | None:
    """The Basic credentials of a Proxy-Authorization header, None when there is none."""
    value = None
    for lname, _, header_value in headers:
        if lname == b"proxy-authorization":
            value = header_value
            break
    if value is None:
        return None
    scheme, _, token = value.strip().partition(b" ")
    if scheme.lower() != b"basic":
        return Login("", "", "only Basic proxy authentication is supported")
    try:
        decoded = base64.b64decode(token.strip(), validate=True).decode("utf-8")
    except (binascii.Error, UnicodeDecodeError):
        return Login("", "", "malformed Proxy-Authorization")
    user, sep, password = decoded.partition(":")
    if not sep:
        return Login("", "", _WRONG)
    return Login(user, password)


_WRONG = "wrong proxy user name or password"


def verify(login: Login | None, credentials: Credentials) -> str | None:
    """The verified user, None when no credentials were presented (or none are configured);
    Refused(407) when they are wrong or unusable (stage 2, see the module doc)."""
    if not credentials or login is None:
        return None
    if login.problem:
        raise Refused(Reason.AUTH_REQUIRED, login.problem)
    user, password = login.user, login.password.encode()
    verdict = credentials.lookup(user, password)
    if verdict is None:
        if credentials.is_slow(user):
            # Stage 1 always records a verdict first; without one, fail closed rather than
            # run a slow hash on the event loop.
            raise Refused(Reason.AUTH_REQUIRED, "credentials not verified yet; retry")
        verdict = credentials.verify(user, password)
    if not verdict:
        raise Refused(Reason.AUTH_REQUIRED, _WRONG)
    return user


def authenticate(headers: list[Header], credentials: Credentials) -> str | None:
    """The verified user, None when no credentials were sent; Refused(407) when they are wrong."""
    if not credentials:
        return None
    return verify(login_from_headers(headers), credentials)


class AuthGate:
    """Stage 1 (module doc): verification off the loop and the per-client failure back-off."""

    def __init__(self, metrics: Metrics) -> None:
        self.metrics = metrics
        self._slots: OrderedDict[str, float] = OrderedDict()  # client → last slot (monotonic)

    def hold(
        self,
        headers: list[Header],
        credentials: Credentials,
        client: str,
        delay_s: float,
        resume: Resume,
    ) -> bool:
        """False: go on now. True: the request waits; `resume` is called later on the loop."""
        if not credentials:
            return False
        return self.hold_login(login_from_headers(headers), credentials, client, delay_s, resume)

    def hold_login(
        self,
        login: Login | None,
        credentials: Credentials,
        client: str,
        delay_s: float,
        resume: Resume,
    ) -> bool:
        """`hold()` for credentials already parsed (an RFC 1929 SOCKS5 sub-negotiation)."""
        if not credentials or login is None or login.problem:
            return False  # nothing to verify; stage 2 refuses an unusable login
        user, password = login.user, login.password.encode()
        verdict = credentials.lookup(user, password)
        if verdict is None and not credentials.is_slow(user):
            verdict = credentials.verify(user, password)
            if not verdict:
                credentials.remember(user, password, False)
        if verdict is None:
            self._verify_off_loop(credentials, user, password, client, delay_s, resume)
            return True
        return self._conclude(verdict, client, delay_s, resume)

    def _verify_off_loop(
        self,
        credentials: Credentials,
        user: str,
        password: bytes,
        client: str,
        delay_s: float,
        resume: Resume,
    ) -> None:
        loop = asyncio.get_running_loop()
        future = loop.run_in_executor(None, credentials.verify, user, password)

        def verified(done: asyncio.Future[bool]) -> None:
            try:
                ok = done.result()
            except Exception as exc:  # a broken hash library: fail closed, say so
                emit("auth-verify-failed", level="error", error=repr(exc))
                ok = False
            credentials.remember(user, password, ok)
            if not self._conclude(ok, client, delay_s, resume):
                resume(None)

        future.add_done_callback(verified)

    def _conclude(self, ok: bool, client: str, delay_s: float, resume: Resume) -> bool:
        """Apply the back-off to a known verdict; True if `resume` was scheduled."""
        now = time.monotonic()
        slot = self._slots.get(client, 0.0)
        if ok:
            if slot <= now:
                return False
            _call_at(slot - now, resume, None)  # wait for the client's pending failures
            return True
        self.metrics.auth_failures += 1
        start = max(now, slot)
        if start - now >= MAX_BACKOFF_SLOTS * delay_s:
            refused = Refused(
                Reason.AUTH_REQUIRED, "too many failed proxy logins from this address; retry later"
            )
            _call_at(0.0, resume, refused)
            return True
        slot = start + delay_s
        self._note(client, slot, now)
        _call_at(slot - now, resume, None)
        return True

    def _note(self, client: str, slot: float, now: float) -> None:
        slots = self._slots
        slots[client] = slot
        slots.move_to_end(client)
        if len(slots) > MAX_BACKOFF_CLIENTS:
            # Oldest first: forget expired entries, then (a flood of addresses) the oldest.
            for old, last in list(slots.items()):
                if len(slots) <= MAX_BACKOFF_CLIENTS and last + BACKOFF_MEMORY_S > now:
                    break
                del slots[old]


def _call_at(delay_s: float, resume: Resume, refused: Refused | None) -> None:
    asyncio.get_running_loop().call_later(delay_s, resume, refused)
