"""format_record: one valid JSON object per line, fields in record.FIELDS order.

Free-text fields (user, policy, method, host, address, rule, sni, detail) can carry anything a
client sends, so they must be escaped; client, decision, reason and kind are tokens the proxy
itself produces (an IP address and enum values).
"""

from __future__ import annotations

import asyncio
import json
import os
import re
import time
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.errors import Reason
from egressgate.observe.accesslog import AccessLog, _Clock, format_record
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
        "original_dst": None,
        "path": None,
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
        "original_dst": None,
        "path": None,
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


# ---------------------------------------------------------------------------------------------
# AccessLog: the writer thread, its bound, and descriptor ownership (issue 19, items 3 and 10)
# ---------------------------------------------------------------------------------------------


def _drain_pipe(fd: int) -> bytes:
    data = bytearray()
    while True:
        try:
            chunk = os.read(fd, 1 << 16)
        except BlockingIOError:
            return bytes(data)
        if not chunk:
            return bytes(data)
        data += chunk


def test_a_stalled_pipe_reader_drops_whole_batches_and_never_blocks(tmp_path: Path) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)
    drops: list[int] = []
    backlog: list[tuple[bool, int]] = []

    async def scenario() -> AccessLog:
        log = AccessLog(
            str(fifo),
            max_pending_bytes=32 * 1024,
            on_drop=drops.append,
            on_backlog=lambda dropping, n: backlog.append((dropping, n)),
        )
        started = time.monotonic()
        for n in range(5000):  # ~2 MB of lines into a 64 KiB pipe nobody reads
            log.write(record(detail=f"n={n}"))
            if n % 100 == 0:
                log.flush()
        assert time.monotonic() - started < 5, "writing must never wait for the reader"
        log.flush()
        return log

    log = asyncio.run(scenario())
    assert sum(drops) > 0
    assert backlog[0] == (True, drops[0])
    data = _drain_pipe(reader)
    for _ in range(200):  # the writer thread fills the pipe again as it is emptied
        time.sleep(0.01)
        more = _drain_pipe(reader)
        data += more
        if not more and log.pending_bytes == 0:
            break
    lines = data.split(b"\n")
    assert lines[-1] == b""
    written = [json.loads(line) for line in lines[:-1]]  # never a torn line
    assert len(written) + sum(drops) == 5000
    assert log.close(timeout_s=5)
    os.close(reader)


def test_close_gives_up_on_a_stuck_writer_without_closing_its_descriptor(tmp_path: Path) -> None:
    fifo = tmp_path / "log.fifo"
    os.mkfifo(fifo)
    reader = os.open(fifo, os.O_RDONLY | os.O_NONBLOCK)

    async def scenario() -> AccessLog:
        log = AccessLog(str(fifo), max_pending_bytes=1 << 20)
        for _n in range(2000):
            log.write(record(detail="x" * 200))
        log.flush()
        return log

    log = asyncio.run(scenario())
    started = time.monotonic()
    assert log.close(timeout_s=0.3) is False  # blocked on the full pipe
    assert time.monotonic() - started < 2
    fd = log._fd
    os.fstat(fd)  # still open: nobody else can be handed this number while the thread writes
    for _ in range(500):  # a reader turns up: the writer finishes and closes its fd
        _drain_pipe(reader)
        if not log.pending_bytes:
            break
        time.sleep(0.01)
    assert log.pending_bytes == 0
    assert log.close(timeout_s=5)
    os.close(reader)


@pytest.mark.parametrize("kind", ["directory", "fifo-without-reader", "missing-dir"])
def test_a_target_that_cannot_be_opened_raises_at_construction(tmp_path: Path, kind: str) -> None:
    target = tmp_path / "target"
    if kind == "directory":
        target.mkdir()
    elif kind == "fifo-without-reader":
        os.mkfifo(target)  # must fail at once (ENXIO), never hang in open()
    else:
        target = tmp_path / "missing" / "access.log"
    with pytest.raises(OSError):
        AccessLog(str(target))


def test_reopen_switches_files_between_batches(tmp_path: Path) -> None:
    path = tmp_path / "access.log"
    rotated = tmp_path / "access.log.1"

    async def scenario() -> None:
        log = AccessLog(str(path))
        log.write(record(detail="one"))
        log.flush()
        for _ in range(200):
            if path.exists() and path.read_bytes().endswith(b"\n"):
                break
            await asyncio.sleep(0.01)
        os.rename(path, rotated)
        log.write(record(detail="two"))
        log.reopen()  # "two" still goes to the old (rotated) file, then the new one is used
        log.write(record(detail="three"))
        assert log.close(timeout_s=5)

    asyncio.run(scenario())
    assert [json.loads(x)["detail"] for x in rotated.read_text().splitlines()] == ["one", "two"]
    assert [json.loads(x)["detail"] for x in path.read_text().splitlines()] == ["three"]


# ---- the rendered-segment memo (format_record renders repeating field runs once)

_EVERY_FIELD_VALUE: dict[str, Any] = {
    "client": "10.0.0.9",
    "user": "alice",
    "policy": "payments",
    "method": "GET",
    "host": "other.example",
    "port": 8443,
    "address": "203.0.113.8",
    "decision": "deny",
    "reason": Reason.HOST_NOT_ALLOWED.value,
    "rule": "*.example",
    "status": 403,
    "bytes_up": 1,
    "bytes_down": 2,
    "kind": "http",
    "sni": "other.example",
    "detail": "why",
    "original_dst": "198.51.100.1:443",
    "path": "/v1",
}


@pytest.mark.parametrize("field", sorted(_EVERY_FIELD_VALUE))
def test_a_record_differing_in_one_field_is_never_rendered_from_anothers_memo(field: str) -> None:
    clock = _Clock()
    first = dict(parse(format_record(record(), clock)))
    second = dict(parse(format_record(record(**{field: _EVERY_FIELD_VALUE[field]}), clock)))
    assert second[field] == _EVERY_FIELD_VALUE[field]
    assert {k for k in FIELDS if first[k] != second[k]} == {field}
    assert dict(parse(format_record(record(), clock))) == first  # and back


def test_the_memo_is_bounded_and_long_values_are_not_kept() -> None:
    from egressgate.observe import accesslog

    clock = _Clock()
    for index in range(accesslog._MAX_SEGMENTS + 50):
        line = format_record(record(host=f"h{index}.example"), clock)
        assert dict(parse(line))["host"] == f"h{index}.example"
        assert len(accesslog._SEGMENTS) <= accesslog._MAX_SEGMENTS
    long_host = "x" * 600 + ".example"
    assert dict(parse(format_record(record(host=long_host), clock)))["host"] == long_host
    assert all(long_host not in segment for segment in accesslog._SEGMENTS.values())


def test_the_millisecond_timestamp_memo_follows_time() -> None:
    clock = _Clock()
    assert clock.format(START) == "2023-11-14T22:13:20.250Z"
    assert clock.format(START) == "2023-11-14T22:13:20.250Z"
    assert clock.format(START + 0.001) == "2023-11-14T22:13:20.251Z"
    assert clock.format(START + 0.75) == "2023-11-14T22:13:21.000Z"
    assert clock.format(START - 86400) == "2023-11-13T22:13:20.250Z"
