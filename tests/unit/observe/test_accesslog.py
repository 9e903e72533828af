"""format_record: one valid JSON object per line, fields in record.FIELDS order.

Free-text fields (user, policy, method, host, address, rule, sni, detail) can carry anything a
client sends, so they must be escaped; client, decision, reason and kind are tokens the proxy
itself produces (an IP address and enum values).
"""

from __future__ import annotations

import json
import re
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.errors import Reason
from egressgate.observe.accesslog import _Clock, format_record
from egressgate.observe.record import FIELDS, AccessRecord

FREE_TEXT = ("user", "policy", "method", "host", "address", "rule", "sni", "detail")
START = 1_700_000_000.25  # 2023-11-14T22:13:20.250Z


def record(**overrides: Any) -> AccessRecord:
    values: dict[str, Any] = {
        "start": START,
        "client": "10.0.0.5",
        "method": "CONNECT",
        "kind": "tunnel",
        "host": "api.stripe.com",
        "port": 443,
        "user": None,
        "policy": "default",
        "address": "203.0.113.7",
        "decision": "allow",
        "reason": Reason.ALLOWED.value,
        "rule": "api.stripe.com",
        "status": 200,
        "bytes_up": 1234,
        "bytes_down": 56789,
        "duration_ms": 12.3456,
        "sni": "api.stripe.com",
        "detail": None,
    }
    values.update(overrides)
    return AccessRecord(**values)


def parse(line: str) -> list[tuple[str, Any]]:
    """The (key, value) pairs of a log line, in the order they were written."""
    assert line.endswith("\n")
    assert line.count("\n") == 1, "a record must be exactly one line"
    pairs: list[tuple[str, Any]] = json.loads(line, object_pairs_hook=list)
    return pairs


def test_every_field_is_written_in_fields_order() -> None:
    pairs = parse(format_record(record(), _Clock()))
    assert tuple(key for key, _ in pairs) == FIELDS


def test_values_are_written_with_their_json_types() -> None:
    values = dict(parse(format_record(record(), _Clock())))
    assert values == {
        "ts": "2023-11-14T22:13:20.250Z",
        "client": "10.0.0.5",
        "user": None,
        "policy": "default",
        "method": "CONNECT",
        "host": "api.stripe.com",
        "port": 443,
        "address": "203.0.113.7",
        "decision": "allow",
        "reason": "allowed",
        "rule": "api.stripe.com",
        "status": 200,
        "bytes_up": 1234,
        "bytes_down": 56789,
        "duration_ms": 12.346,  # three decimals
        "kind": "tunnel",
        "sni": "api.stripe.com",
        "detail": None,
    }


def test_missing_optional_values_are_null() -> None:
    bare = AccessRecord(START, "::1", "GET", "http")
    values = dict(parse(format_record(bare, _Clock())))
    assert all(values[name] is None for name in (*FREE_TEXT, "port") if name != "method")
    assert values["client"] == "::1"


@pytest.mark.parametrize(
    "hostile",
    [
        'evil"host',
        "back\\slash",
        "line\nbreak",
        "cr\rlf\r\n",
        "tab\there",
        "nul\x00byte",
        "\x1b[31mred\x1b[0m",
        "\x7f",
        '","status":200,"x":"',  # an attempt to inject JSON fields
        "\u2028\u2029",
        "caf\u00e9 \u65e5\u672c",
        "\ud800",  # a lone surrogate (from surrogateescape-decoded bytes)
        "",
    ],
)
@pytest.mark.parametrize("field", FREE_TEXT)
def test_hostile_strings_in_free_text_fields_round_trip(field: str, hostile: str) -> None:
    line = format_record(record(**{field: hostile}), _Clock())
    values = dict(parse(line))
    assert values[field] == hostile
    assert tuple(values) == FIELDS
    # What reaches the file is UTF-8 (unencodable surrogates replaced) and still valid JSON.
    written = line.encode("utf-8", "replace").decode("utf-8")
    assert tuple(dict(parse(written))) == FIELDS


@given(st.dictionaries(st.sampled_from(FREE_TEXT), st.one_of(st.none(), st.text())))
def test_any_free_text_values_give_one_valid_json_line(values: dict[str, str | None]) -> None:
    parsed = dict(parse(format_record(record(**values), _Clock())))
    for field, value in values.items():
        assert parsed[field] == value


@pytest.mark.parametrize(
    ("start", "text"),
    [
        (0.0, "1970-01-01T00:00:00.000Z"),
        (START, "2023-11-14T22:13:20.250Z"),
        (1_700_000_000.9999, "2023-11-14T22:13:20.999Z"),  # milliseconds truncate, never 1000
        (1_700_000_001.5, "2023-11-14T22:13:21.500Z"),
    ],
)
def test_timestamps_are_rfc3339_utc_with_milliseconds(start: float, text: str) -> None:
    assert _Clock().format(start) == text


def test_clock_reused_across_seconds_stays_correct() -> None:
    clock = _Clock()
    assert clock.format(START) == "2023-11-14T22:13:20.250Z"
    assert clock.format(START + 1) == "2023-11-14T22:13:21.250Z"
    assert clock.format(START) == "2023-11-14T22:13:20.250Z"


@given(st.floats(0, 4_000_000_000, allow_nan=False))
def test_timestamp_format_is_always_rfc3339(start: float) -> None:
    text = _Clock().format(start)
    assert re.fullmatch(r"\d{4}-\d\d-\d\dT\d\d:\d\d:\d\d\.\d{3}Z", text)
