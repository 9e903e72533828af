"""Proxy users and their stored secrets: parse the users file's secret column, verify a
presented password against it, and remember recent verdicts.

Secret formats (the text after the first `:` of a users-file line):

  $2b$12$…            bcrypt (also $2a$, $2y$), checked with the `bcrypt` package
  $argon2id$v=19$…    argon2 (also argon2i/argon2d), checked with `argon2-cffi`
  {SHA256}<64 hex>    unsalted SHA-256 of the password: accepted, reported as weak
  anything else       the password in clear text: accepted, reported as weak

Text that starts like a bcrypt or argon2 hash but does not parse is refused (a botched hash
must not silently become a clear-text password).

bcrypt and argon2 are slow by design (tens to hundreds of ms), so verification is split: the
proxy verifies a miss on a worker thread (`verify_slow`, pure CPU, touches no shared state)
and records the verdict on the event loop (`remember`); requests then read `lookup`. Verdicts
are keyed by an HMAC (a per-generation random key) of user and password, so the caches never
hold a password. Both caches are bounded; bad verdicts expire. No I/O, no logging, no asyncio here.
"""

from __future__ import annotations

import hashlib
import hmac
import os
import re
import time
from collections import OrderedDict
from dataclasses import dataclass
from enum import StrEnum

import argon2
import bcrypt

# Verdict caches of one generation (entries, seconds): bounded whatever clients send.
MAX_GOOD_VERDICTS = 4096
MAX_BAD_VERDICTS = 4096
BAD_VERDICT_TTL_S = 120.0

_BCRYPT = re.compile(r"^\$2[aby]\$\d\d\$[./A-Za-z0-9]{53}$")
_SHA256 = re.compile(r"^\{SHA256\}([0-9a-fA-F]{64})$")
_ARGON2 = argon2.PasswordHasher()


class Scheme(StrEnum):
    PLAIN = "plain"
    SHA256 = "sha256"
    BCRYPT = "bcrypt"
    ARGON2 = "argon2"


WEAK_SCHEMES = frozenset({Scheme.PLAIN, Scheme.SHA256})
SLOW_SCHEMES = frozenset({Scheme.BCRYPT, Scheme.ARGON2})


@dataclass(frozen=True, slots=True)
class StoredSecret:
    """A user's secret: for plain and sha256 the SHA-256 digest, else the encoded hash."""

    scheme: Scheme
    value: bytes


def parse_secret(text: str) -> StoredSecret:
    """The stored secret written in a users file; ValueError (for the operator) if a hash
    is malformed."""
    if text.startswith("$2"):
        if not _BCRYPT.match(text):
            raise ValueError("looks like a bcrypt hash ($2b$…) but is not a valid one")
        return StoredSecret(Scheme.BCRYPT, text.encode("ascii"))
    if text.startswith("$argon2"):
        try:
            argon2.extract_parameters(text)
        except (argon2.exceptions.InvalidHashError, ValueError):
            raise ValueError(
                "looks like an argon2 hash ($argon2id$…) but is not a valid one"
            ) from None
        return StoredSecret(Scheme.ARGON2, text.encode("ascii"))
    match = _SHA256.match(text)
    if match:
        return StoredSecret(Scheme.SHA256, bytes.fromhex(match.group(1)))
    return StoredSecret(Scheme.PLAIN, hashlib.sha256(text.encode()).digest())


def verify_secret(secret: StoredSecret, password: bytes) -> bool:
    """Does `password` match `secret`? Constant-time for the fast schemes; slow for bcrypt
    and argon2 (call those off the event loop)."""
    if secret.scheme is Scheme.BCRYPT:
        try:
            return bcrypt.checkpw(password, secret.value)
        except ValueError:
            return False
    if secret.scheme is Scheme.ARGON2:
        try:
            return _ARGON2.verify(secret.value, password)
        except argon2.exceptions.Argon2Error:
            return False
    return hmac.compare_digest(hashlib.sha256(password).digest(), secret.value)


def hash_password(password: str, scheme: Scheme = Scheme.BCRYPT) -> str:
    """A new salted hash for a users file (`egressgate hash-password`)."""
    if scheme is Scheme.ARGON2:
        return _ARGON2.hash(password)
    if scheme is Scheme.BCRYPT:
        return bcrypt.hashpw(password.encode(), bcrypt.gensalt()).decode("ascii")
    raise ValueError(f"{scheme} is not a salted hash: use bcrypt or argon2")


_DUMMY = StoredSecret(Scheme.PLAIN, hashlib.sha256(b"egressgate-no-such-user").digest())


class Credentials:
    """The proxy users of one config generation, with the verdict caches (module doc)."""

    __slots__ = ("_bad", "_dummy", "_good", "_key", "users")

    def __init__(self, users: dict[str, StoredSecret]) -> None:
        self.users = users
        self._key = os.urandom(32)
        self._good: OrderedDict[bytes, str] = OrderedDict()
        self._bad: OrderedDict[bytes, float] = OrderedDict()  # key → expiry (monotonic)
        # An unknown user is checked against a secret of the same cost as the real ones, so
        # the answer time does not tell which user names exist.
        slow = [s for s in users.values() if s.scheme in SLOW_SCHEMES]
        self._dummy = slow[0] if slow else _DUMMY

    def __bool__(self) -> bool:
        return bool(self.users)

    def __len__(self) -> int:
        return len(self.users)

    def __contains__(self, user: object) -> bool:
        return user in self.users

    @property
    def weak_users(self) -> list[str]:
        """Users whose secret is clear text or unsalted SHA-256."""
        return [u for u, s in self.users.items() if s.scheme in WEAK_SCHEMES]

    def _cache_key(self, user: str, password: bytes) -> bytes:
        message = user.encode() + b"\0" + password
        return hmac.new(self._key, message, hashlib.sha256).digest()

    def is_slow(self, user: str) -> bool:
        return self.users.get(user, self._dummy).scheme in SLOW_SCHEMES

    def lookup(self, user: str, password: bytes) -> bool | None:
        """The remembered verdict for these credentials, None if unknown."""
        key = self._cache_key(user, password)
        if key in self._good:
            self._good.move_to_end(key)
            return True
        expiry = self._bad.get(key)
        if expiry is not None:
            if expiry > time.monotonic():
                return False
            del self._bad[key]
        return None

    def verify(self, user: str, password: bytes) -> bool:
        """Verify against the stored secret (or the dummy, for an unknown user). Slow for
        bcrypt/argon2; safe on a worker thread: reads only immutable data."""
        secret = self.users.get(user)
        ok = verify_secret(secret or self._dummy, password)
        return ok and secret is not None

    def remember(self, user: str, password: bytes, ok: bool) -> None:
        """Record a verdict (on the event loop thread)."""
        key = self._cache_key(user, password)
        if ok:
            self._good[key] = user
            self._good.move_to_end(key)
            if len(self._good) > MAX_GOOD_VERDICTS:
                self._good.popitem(last=False)
        else:
            self._bad[key] = time.monotonic() + BAD_VERDICT_TTL_S
            self._bad.move_to_end(key)
            if len(self._bad) > MAX_BAD_VERDICTS:
                self._bad.popitem(last=False)
