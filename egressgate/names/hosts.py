"""hosts(5) parser: static name → addresses overrides. Pure: text in, mapping out.

Format: an IP address followed by one or more names, `#` starts a comment. Names are normalized
like destinations; an address may be listed for many names and a name under many addresses (all
are kept, in file order). Bad lines are reported with their line number, not skipped silently.
"""

from __future__ import annotations

import ipaddress
from dataclasses import dataclass

from egressgate.names.hostname import InvalidHost, IPAddress, normalize_name


@dataclass(frozen=True, slots=True)
class HostsLineError:
    line: int
    message: str


def parse_hosts(text: str) -> tuple[dict[str, tuple[IPAddress, ...]], list[HostsLineError]]:
    """Parse hosts-file text; returns (name → addresses, errors)."""
    table: dict[str, list[IPAddress]] = {}
    errors: list[HostsLineError] = []
    # Fix (unit tests, test_hosts.py): str.splitlines() also breaks at \f, \v, \x1c-\x1e, \x85,
    # U+2028 and U+2029, so one such character (in a comment, say) shifted every later line
    # number and could split a line in two. A hosts file's lines end at LF (or CRLF).
    for number, raw in enumerate(text.split("\n"), start=1):
        fields = raw.split("#", 1)[0].split()
        if not fields:
            continue
        if len(fields) < 2:
            errors.append(HostsLineError(number, "expected an address followed by names"))
            continue
        try:
            address = ipaddress.ip_address(fields[0].split("%", 1)[0])
        except ValueError:
            errors.append(HostsLineError(number, f"{fields[0]!r} is not an IP address"))
            continue
        for name in fields[1:]:
            try:
                table.setdefault(normalize_name(name), []).append(address)
            except InvalidHost as exc:
                errors.append(HostsLineError(number, str(exc)))
    return {name: tuple(addrs) for name, addrs in table.items()}, errors
