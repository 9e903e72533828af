"""normalize_host(): one canonical form for every destination the proxy is asked for.

Pure. A destination is either a hostname (lowercase, ASCII/punycode, no trailing dot) or an IP
address. IP literals are recognised in every spelling a client library or `inet_aton` accepts —
dotted, decimal (2130706433), hex (0x7f000001), octal (0177.0.0.1), short (127.1), bracketed
IPv6, IPv4-mapped IPv6 — so that no spelling can smuggle an address past a hostname rule.
Following the WHATWG URL standard, a name whose last label is numeric *is* an IPv4 attempt: if it
does not parse as one, it is invalid rather than a hostname.
"""

from __future__ import annotations

import functools
import ipaddress
import re

import idna

from egressgate.names.tuple_memo import TupleMemo
from egressgate.values import immutable

IPAddress = ipaddress.IPv4Address | ipaddress.IPv6Address

MAX_NAME_LENGTH = 253
MAX_LABEL_LENGTH = 63
# Letters, digits, hyphen; underscore too, because real service names (_dmarc, SRV-style) use it.
_LABEL = re.compile(r"^[a-z0-9_](?:[a-z0-9_-]{0,61}[a-z0-9_])?$")
_NUMERIC_LABEL = re.compile(r"^(?:0x[0-9a-f]*|[0-9]+)$")


@functools.lru_cache(maxsize=8192)
def address_text(address: IPAddress) -> str:
    """str(address), memoized: ipaddress formats in pure Python on every call."""
    return str(address)


# Per tuple, by identity (address_text's lru_cache hashes each ip_address: Python code).
_TEXTS: TupleMemo[tuple[IPAddress, ...], tuple[str, ...]] = TupleMemo(
    lambda addresses: tuple(address_text(a) for a in addresses)
)


def address_texts(addresses: tuple[IPAddress, ...]) -> tuple[str, ...]:
    """address_text of each address, memoized per tuple (see names/tuple_memo.py)."""
    return _TEXTS.get(addresses)


class InvalidHost(ValueError):
    """The text is neither a valid hostname nor an IP literal."""


@immutable
class Host:
    """A normalized destination: exactly one of `name` and `address` is set."""

    name: str | None
    address: IPAddress | None

    @property
    def text(self) -> str:
        """The canonical spelling, for logs and matching."""
        if self.address is not None:
            return str(self.address)
        assert self.name is not None
        return self.name


def normalize_host(raw: str) -> Host:
    """Normalize a destination host as it appears in a URL authority or CONNECT target."""
    text = raw.strip()
    if text.startswith("[") and text.endswith("]"):
        return Host(None, _parse_ipv6(text[1:-1]))
    if ":" in text:
        return Host(None, _parse_ipv6(text))
    if not text.isascii():
        # Fix: WHATWG host parsing runs domain-to-ASCII BEFORE the ends-in-a-number check, and
        # UTS #46 maps fullwidth digits and ideographic full stops to ASCII, so
        # "\uff11\uff12\uff17\u3002\uff10\u3002\uff10\u3002\uff11" IS 127.0.0.1. Checking
        # the raw text let such a spelling pass as a *hostname* (matched by `*`, not refused as
        # an IP literal).
        text = _idna_map(text)
    text = text.lower()
    if text.endswith("."):
        text = text[:-1]
    if not text:
        raise InvalidHost("empty host")
    if _ends_in_number(text):
        return Host(None, parse_ipv4_any(text))
    return Host(_to_ascii(text), None)


def normalize_name(raw: str) -> str:
    """Normalize a hostname (not an IP literal): lowercase, punycode, no trailing dot."""
    host = normalize_host(raw)
    if host.name is None:
        raise InvalidHost(f"{raw!r} is an IP address, not a hostname")
    return host.name


def _parse_ipv6(text: str) -> IPAddress:
    if "%" in text:
        raise InvalidHost(f"{text!r}: IPv6 zone identifiers are not accepted")
    try:
        address = ipaddress.IPv6Address(text)
    except ValueError as exc:
        raise InvalidHost(f"{text!r} is not a valid IPv6 address") from exc
    # An IPv4-mapped address reaches the IPv4 host: judge it as that host.
    return address.ipv4_mapped or address


def _ends_in_number(text: str) -> bool:
    return _NUMERIC_LABEL.fullmatch(text.rsplit(".", 1)[-1]) is not None


def parse_ipv4_any(text: str) -> ipaddress.IPv4Address:
    """Parse an IPv4 address the way inet_aton(3) and the WHATWG URL parser do.

    1 to 4 parts separated by dots; each part decimal, hex (0x) or octal (leading 0); the last
    part fills all remaining bytes (so 127.1 is 127.0.0.1 and 2130706433 is 127.0.0.1).
    """
    parts = text.split(".")
    if len(parts) > 4 or any(p == "" for p in parts):
        raise InvalidHost(f"{text!r} looks like an IPv4 address but is not one")
    numbers = [_ipv4_part(p, text) for p in parts]
    *leading, last = numbers
    if any(n > 255 for n in leading) or last >= 256 ** (5 - len(numbers)):
        raise InvalidHost(f"{text!r}: IPv4 address part out of range")
    value = 0
    for n in leading:
        value = value * 256 + n
    value = value * 256 ** (5 - len(numbers)) + last
    return ipaddress.IPv4Address(value)


def _ipv4_part(part: str, text: str) -> int:
    # Fix: int() also accepts "+1", "1_0", " 1", "1\n" and non-ASCII digits ("\u0661"); neither
    # inet_aton(3) nor WHATWG does, so each part must be ASCII decimal, octal or 0x-hex.
    if _NUMERIC_LABEL.fullmatch(part) is None:
        raise InvalidHost(f"{text!r} looks like an IPv4 address but is not one")
    try:
        if part.startswith("0x"):
            return int(part[2:] or "0", 16)
        if len(part) > 1 and part.startswith("0"):
            return int(part, 8)
        return int(part, 10)
    except ValueError as exc:
        raise InvalidHost(f"{text!r} looks like an IPv4 address but is not one") from exc


def _idna_map(text: str) -> str:
    """UTS #46 mapping + punycode of a non-ASCII name (a trailing dot is kept)."""
    try:
        return idna.encode(text, uts46=True).decode("ascii")
    except idna.IDNAError as exc:
        raise InvalidHost(f"{text!r} is not a valid internationalised name: {exc}") from exc


def _to_ascii(text: str) -> str:
    if len(text) > MAX_NAME_LENGTH:
        raise InvalidHost(f"host name longer than {MAX_NAME_LENGTH} characters")
    for label in text.split("."):
        # Fix: fullmatch, not match: `$` also matches before a trailing "\n", which let
        # "a\n.com" through as a hostname.
        if _LABEL.fullmatch(label) is None:
            raise InvalidHost(f"{text!r}: invalid label {label!r}")
    return text
