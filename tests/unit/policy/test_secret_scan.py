"""policy/secret_scan.py: leak scanning and redaction over arbitrarily split streams."""

from __future__ import annotations

import pytest
from hypothesis import given, settings
from hypothesis import strategies as st

from egressgate.policy.secret_scan import LeakScan, Redactor, SecretFinder

SECRETS = (b"ghp_SECRETTOKEN123", b"tok-abc")


def _splits(data: bytes, cuts: list[int]) -> list[bytes]:
    points = sorted({c % (len(data) + 1) for c in cuts})
    out, last = [], 0
    for point in points:
        out.append(data[last:point])
        last = point
    out.append(data[last:])
    return out


def test_finder_needs_a_secret() -> None:
    with pytest.raises(ValueError):
        SecretFinder([b""])


def test_mask_keeps_the_length_and_counts() -> None:
    finder = SecretFinder(SECRETS)
    masked, count = finder.mask(b"a ghp_SECRETTOKEN123 b tok-abc")
    assert masked == b"a " + b"*" * 18 + b" b " + b"*" * 7
    assert count == 2


@settings(max_examples=300, deadline=None)
@given(
    prefix=st.binary(max_size=40),
    suffix=st.binary(max_size=40),
    secret=st.sampled_from(SECRETS),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_a_split_secret_is_never_released(
    prefix: bytes, suffix: bytes, secret: bytes, cuts: list[int]
) -> None:
    """However the body is split, LeakScan stops before any byte of the secret goes out."""
    data = prefix + secret + suffix
    scan = LeakScan(SecretFinder(SECRETS))
    released = b""
    for piece in _splits(data, cuts):
        out = scan.feed(piece)
        if out is None:
            break
        released += out
    else:
        released += scan.flush()
        raise AssertionError(f"secret not found in {data!r}")
    first = data.find(secret)
    first_other = min((i for i in (data.find(s) for s in SECRETS) if i >= 0), default=first)
    assert len(released) <= min(first, first_other)


@settings(max_examples=300, deadline=None)
@given(
    body=st.binary(max_size=120),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_clean_bodies_pass_unchanged(body: bytes, cuts: list[int]) -> None:
    finder = SecretFinder(SECRETS)
    if finder.search(body):
        return
    scan, redactor = LeakScan(finder), Redactor(finder)
    passed, redacted = b"", b""
    for piece in _splits(body, cuts):
        out = scan.feed(piece)
        assert out is not None
        passed += out
        redacted += redactor.feed(piece)
    assert passed + scan.flush() == body
    assert redacted + redactor.flush() == body
    assert redactor.found == 0


@settings(max_examples=300, deadline=None)
@given(
    parts=st.lists(st.one_of(st.binary(max_size=20), st.sampled_from(SECRETS)), max_size=6),
    cuts=st.lists(st.integers(min_value=0, max_value=200), max_size=8),
)
def test_redaction_is_split_independent(parts: list[bytes], cuts: list[int]) -> None:
    """The redacted stream equals masking the whole body at once, whatever the chunking."""
    finder = SecretFinder(SECRETS)
    body = b"".join(parts)
    redactor = Redactor(finder)
    out = b"".join(redactor.feed(piece) for piece in _splits(body, cuts)) + redactor.flush()
    whole, count = finder.mask(body)
    assert out == whole
    assert len(out) == len(body)
    assert redactor.found == count
    assert not finder.search(out)
