"""Users-file secrets (policy/credentials.py): formats, verification, bounded verdict caches."""

from __future__ import annotations

import hashlib

import argon2
import bcrypt
import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.policy import credentials as creds
from egressgate.policy.credentials import Credentials, Scheme, parse_secret, verify_secret

BCRYPT = bcrypt.hashpw(b"pw", bcrypt.gensalt(rounds=4)).decode()
ARGON2 = argon2.PasswordHasher(time_cost=1, memory_cost=8192, parallelism=1).hash("pw")


@pytest.mark.parametrize(
    ("text", "scheme"),
    [
        (BCRYPT, Scheme.BCRYPT),
        (ARGON2, Scheme.ARGON2),
        ("{SHA256}" + hashlib.sha256(b"pw").hexdigest(), Scheme.SHA256),
        ("pw", Scheme.PLAIN),
    ],
    # Fixed ids: the hashes are salted at random, and pytest-xdist needs every worker to
    # collect the same test ids.
    ids=["bcrypt", "argon2", "sha256", "plain"],
)
def test_each_format_is_recognised_and_verifies(text: str, scheme: Scheme) -> None:
    secret = parse_secret(text)
    assert secret.scheme is scheme
    assert verify_secret(secret, b"pw")
    assert not verify_secret(secret, b"pW")
    assert not verify_secret(secret, b"")


@pytest.mark.parametrize("text", ["$2b$12$short", "$2b$", "$argon2id$v=19$nonsense"])
def test_a_malformed_hash_is_an_error_not_a_password(text: str) -> None:
    with pytest.raises(ValueError, match="hash"):
        parse_secret(text)


@given(st.text(min_size=1, max_size=80))
def test_any_text_parses_or_is_refused_with_a_value_error(text: str) -> None:
    try:
        secret = parse_secret(text)
    except ValueError:
        return
    assert secret.scheme in set(Scheme)


def test_weak_users_and_unknown_users() -> None:
    users = Credentials({"a": parse_secret("pw"), "b": parse_secret(BCRYPT)})
    assert users.weak_users == ["a"]
    assert users.is_slow("b")
    assert users.is_slow("nobody")  # checked at the cost of the real (slow) secrets
    assert not users.verify("nobody", b"pw")
    assert users.verify("b", b"pw")


def test_verdict_caches_are_bounded_and_hold_no_password(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setattr(creds, "MAX_GOOD_VERDICTS", 3)
    monkeypatch.setattr(creds, "MAX_BAD_VERDICTS", 3)
    users = Credentials({"a": parse_secret("pw")})
    for n in range(10):
        users.remember("a", f"pw{n}".encode(), n % 2 == 0)
    assert len(users._good) == 3
    assert len(users._bad) == 3
    assert all(b"pw" not in key for key in [*users._good, *users._bad])
    assert users.lookup("a", b"pw8") is True
    assert users.lookup("a", b"pw9") is False
    assert users.lookup("a", b"pw0") is None  # evicted
