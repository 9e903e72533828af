"""parse_hosts: hosts(5) text → name → addresses, with bad lines reported by line number.

hosts(5): "IP_address canonical_hostname [aliases...]"; "Text from a '#' character until the end
of the line is a comment, and is ignored."
"""

from __future__ import annotations

import ipaddress

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.names.hosts import HostsLineError, parse_hosts


def _ip(text: str) -> ipaddress.IPv4Address | ipaddress.IPv6Address:
    return ipaddress.ip_address(text)


def test_comments_blank_lines_and_trailing_comments_are_ignored() -> None:
    table, errors = parse_hosts(
        "# a full-line comment\n\n   \n10.0.0.1 db.internal  # trailing comment\n#10.0.0.2 off\n"
    )
    assert table == {"db.internal": (_ip("10.0.0.1"),)}
    assert errors == []


def test_one_address_with_several_names() -> None:
    table, errors = parse_hosts("10.0.0.1\tdb.internal  db  Replica.Internal.\n")
    assert table == {
        "db.internal": (_ip("10.0.0.1"),),
        "db": (_ip("10.0.0.1"),),
        "replica.internal": (_ip("10.0.0.1"),),  # names are normalized like destinations
    }
    assert errors == []


def test_a_name_under_several_addresses_keeps_all_in_file_order() -> None:
    table, _ = parse_hosts("10.0.0.2 svc\n::1 svc\n10.0.0.1 svc\n")
    assert table == {"svc": (_ip("10.0.0.2"), _ip("::1"), _ip("10.0.0.1"))}


def test_ipv6_addresses_and_zone_ids() -> None:
    table, errors = parse_hosts("::1 localhost6\nfe80::1%eth0 router\n2001:db8::5 v6.test\n")
    assert table == {
        "localhost6": (_ip("::1"),),
        "router": (_ip("fe80::1"),),  # the zone is dropped; the address is kept
        "v6.test": (_ip("2001:db8::5"),),
    }
    assert errors == []


def test_crlf_line_endings() -> None:
    table, errors = parse_hosts("10.0.0.1 a\r\n10.0.0.2 b\r\n")
    assert table == {"a": (_ip("10.0.0.1"),), "b": (_ip("10.0.0.2"),)}
    assert errors == []


def test_empty_text_is_an_empty_table() -> None:
    assert parse_hosts("") == ({}, [])


def test_invalid_lines_are_reported_with_their_line_numbers() -> None:
    text = (
        "# header\n"  # 1
        "10.0.0.1 good.internal\n"  # 2
        "10.0.0.2\n"  # 3: no name
        "db.internal 10.0.0.3\n"  # 4: name first
        "10.0.0.4 bad..name fine.internal\n"  # 5: one bad name, one good
        "10.0.0.5 127.0.0.1\n"  # 6: an IP literal is not a name
        "10.1 short.form\n"  # 7: hosts(5) addresses are plain (no inet_aton short form)
        "\n"  # 8
        "10.0.0.6 last.internal\n"  # 9
    )
    table, errors = parse_hosts(text)
    assert [e.line for e in errors] == [3, 4, 5, 6, 7]
    assert table == {
        "good.internal": (_ip("10.0.0.1"),),
        "fine.internal": (_ip("10.0.0.4"),),
        "last.internal": (_ip("10.0.0.6"),),
    }
    assert "expected an address" in errors[0].message
    assert "'db.internal' is not an IP address" in errors[1].message
    assert "bad..name" in errors[2].message


@pytest.mark.parametrize("separator", ["\f", "\v", "\x1c", "\x85", "\u2028", "\u2029"])
def test_only_newlines_end_lines_for_line_numbers(separator: str) -> None:
    # str.splitlines() would also break at these; a line number must match the file's lines.
    text = f"# odd{separator}character in a comment\nbad line\n"
    _, errors = parse_hosts(text)
    assert errors == [HostsLineError(2, "'bad' is not an IP address")]


@given(st.text(max_size=200))
def test_parse_hosts_never_raises_and_reports_lines_within_the_text(text: str) -> None:
    table, errors = parse_hosts(text)
    line_count = text.count("\n") + 1
    assert all(1 <= e.line <= line_count for e in errors)
    assert all(addresses for addresses in table.values())
