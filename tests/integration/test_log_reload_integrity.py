"""Issue 19, items 3, 9 and 10, against the real proxy: access-log isolation across reloads,
reload integrity, and an access log whose reader stalls.

- Item 3: a reload to an access_log that cannot be opened (a directory; a FIFO nobody reads,
  which passes every check and fails only at open) used to close the old log first and then
  write records to its descriptor number, which a new client socket held: a bystander read
  other users' records, and SIGTERM never finished. Now the reload fails as a whole (event
  `reload-failed` naming the file and the reason), records keep going to the old log, a client
  gets only its own bytes, and SIGTERM exits 0 promptly. `check` refuses unwritable paths.
- Item 9: a non-UTF-8 users file killed the watcher; an empty or half-written file was applied;
  an allowlist emptied by a reload went unnoticed.
- Item 10: access-log writes blocked the event loop once a reader stopped reading.
"""

from __future__ import annotations

import ctypes
import hashlib
import json
import os
import select
import socket
import stat
import threading
import time
from collections.abc import Iterator
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helpers_ops import (
    loopback_policy,
    proxied_get,
    readyz,
    run_cli,
    scrape,
    wait_until,
)
from tests.support.clients import parse_response_head
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory
from tests.support.proxy import ProxyProcess, base_proxy_config

RELOAD_WAIT_S = 10.0  # the watcher polls once a second and wants two equal polls
HOSTS = ("stable.test", "second.test", "third.test", "fourth.test", "late.test")


@pytest.fixture
def web(origin_factory: OriginFactory, dns_server: DnsServer) -> Origin:
    origin = origin_factory("web")
    for name in HOSTS:
        dns_server.records[name] = ["127.0.0.1"]
    return origin


def config_for(
    dns_server: DnsServer, workdir: Path, web: Origin, allow: list[str], **keys: Any
) -> dict[str, Any]:
    """The base config with a loopback policy; `allow` is written last (see the truncation test)."""
    policy = loopback_policy(allow, http_ports=[web.port])
    allow_list = policy.pop("allow")
    config = {**base_proxy_config(dns_server.address, workdir), **policy, **keys}
    config.pop("allow", None)
    config["allow"] = allow_list
    return config


def start(config: dict[str, Any], workdir: Path) -> ProxyProcess:
    return ProxyProcess(config, workdir).start()


def records_in(path: Path) -> list[dict[str, Any]]:
    """Every complete line of an access-log file, parsed (a torn line fails the test)."""
    lines = path.read_bytes().split(b"\n")
    return [json.loads(line) for line in lines[:-1] if line.strip()]


class KeepAliveClient:
    """One kept-alive client connection to the proxy, plain HTTP, raw bytes."""

    def __init__(self, proxy: tuple[str, int], timeout_s: float = 5.0) -> None:
        self.sock = socket.create_connection(proxy, timeout=timeout_s)
        self.timeout_s = timeout_s
        self._data = b""

    def get(self, url: str) -> tuple[int, bytes]:
        authority = url.split("://", 1)[1].split("/", 1)[0]
        self.sock.sendall(f"GET {url} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode())
        deadline = time.monotonic() + self.timeout_s
        while b"\r\n\r\n" not in self._data:
            self._recv(deadline)
        end = self._data.index(b"\r\n\r\n") + 4
        head = parse_response_head(self._data[:end])
        length = int(head.header("content-length") or "0")
        while len(self._data) < end + length:
            self._recv(deadline)
        body = self._data[end : end + length]
        self._data = self._data[end + length :]
        return head.status, body

    def _recv(self, deadline: float) -> None:
        self.sock.settimeout(max(deadline - time.monotonic(), 0.01))
        chunk = self.sock.recv(65536)
        if not chunk:
            raise AssertionError(f"connection closed mid-response: {self._data[:300]!r}")
        self._data += chunk

    def unsolicited(self, wait_s: float) -> bytes:
        """Whatever arrives in `wait_s` beyond the responses read (must be nothing)."""
        extra, deadline = self._data, time.monotonic() + wait_s
        self._data = b""
        for _ in range(1000):
            remaining = deadline - time.monotonic()
            if remaining <= 0:
                break
            self.sock.settimeout(remaining)
            try:
                chunk = self.sock.recv(65536)
            except TimeoutError:
                break
            if not chunk:
                break
            extra += chunk
        return extra

    def close(self) -> None:
        self.sock.close()


# ---------------------------------------------------------------------------------------------
# Item 3: access records never reach another client's socket
# ---------------------------------------------------------------------------------------------


def _assert_reload_to_unopenable_log_keeps_everything(
    proxy: ProxyProcess, web: Origin, old_log: Path, bad_config: dict[str, Any], expect: str
) -> None:
    address = proxy.proxy_address
    assert proxied_get(address, web.url("/?before", "stable.test")).status == 200
    wait_until(lambda: len(records_in(old_log)) == 1, 5, "the first record")

    mark = proxy.reload(bad_config)
    event = proxy.wait_for_event("reload-failed", RELOAD_WAIT_S, after=mark)
    assert event["kept_generation"] == 1
    assert any(str(bad_config["access_log"]) in e and expect in e for e in event["errors"]), event
    assert not proxy.events("reloaded")

    # Clients connecting after the reload: fresh descriptors, some of them the number the old
    # code had closed. Each gets its own response and nothing else, across log flushes.
    clients = [KeepAliveClient(address) for _ in range(4)]
    try:
        for n, client in enumerate(clients):
            status, body = client.get(web.url(f"/?after={n}", "stable.test"))
            assert status == 200, body
        time.sleep(0.6)  # > FLUSH_INTERVAL_S: the records above have been written by now
        for client in clients:
            assert client.get(web.url("/?again", "stable.test"))[0] == 200
        for client in clients:
            extra = client.unsolicited(0.5)
            assert extra == b"", f"a client received bytes it did not ask for: {extra[:300]!r}"
    finally:
        for client in clients:
            client.close()
    wait_until(lambda: len(records_in(old_log)) == 9, 5, "all records in the old access log")
    status, body = readyz(proxy)
    assert (status, body["generation"], body["config_watcher"]) == (200, 1, "ok")

    started = time.monotonic()
    assert proxy.terminate(timeout=10) == 0
    assert time.monotonic() - started < 5, "SIGTERM must end promptly"
    errors = [e["event"] for e in proxy.json_events() if e.get("level") == "error"]
    assert errors == ["reload-failed"], proxy.describe()


def test_reload_to_a_directory_access_log_fails_and_leaks_no_record(
    dns_server: DnsServer, web: Origin, tmp_path: Path
) -> None:
    workdir = tmp_path / "proxy"
    config = config_for(dns_server, workdir, web, ["stable.test"])
    proxy = start(config, workdir)
    try:
        log_dir = tmp_path / "logs-dir"
        log_dir.mkdir()
        bad = {**config, "access_log": str(log_dir)}
        _assert_reload_to_unopenable_log_keeps_everything(
            proxy, web, workdir / "access.log", bad, "is a directory"
        )
    finally:
        proxy.close()


def test_reload_to_an_access_log_that_fails_only_at_open_keeps_the_old_log(
    dns_server: DnsServer, web: Origin, tmp_path: Path
) -> None:
    """A FIFO nobody reads passes every check (it exists and is writable) and fails at open
    (ENXIO): the path where the proxy itself must open before it closes."""
    workdir = tmp_path / "proxy"
    config = config_for(dns_server, workdir, web, ["stable.test"])
    proxy = start(config, workdir)
    try:
        fifo = tmp_path / "nobody-reads"
        os.mkfifo(fifo)
        bad = {**config, "access_log": str(fifo)}
        _assert_reload_to_unopenable_log_keeps_everything(
            proxy, web, workdir / "access.log", bad, "cannot open for writing"
        )
    finally:
        proxy.close()


def _unwritable_targets(tmp_path: Path) -> dict[str, tuple[Path, str]]:
    a_file = tmp_path / "a-file"
    a_file.write_text("x")
    a_dir = tmp_path / "a-dir"
    a_dir.mkdir()
    cases = {
        "directory": (a_dir, "is a directory"),
        "missing-parent": (tmp_path / "nowhere" / "access.log", "directory does not exist"),
        "parent-is-a-file": (a_file / "access.log", "not a directory"),
    }
    if os.geteuid() != 0:  # as root, permissions do not bind
        locked = tmp_path / "locked"
        locked.mkdir(mode=0o555)
        cases["read-only-dir"] = (locked / "access.log", "not writable")
    return cases


def test_check_refuses_an_access_log_that_cannot_be_written(tmp_path: Path) -> None:
    for name, (target, message) in _unwritable_targets(tmp_path).items():
        config = tmp_path / f"{name}.yaml"
        config.write_text(
            yaml.safe_dump({"allow": ["a.test"], "access_log": str(target)}, sort_keys=False)
        )
        line = 1 + config.read_text().splitlines().index(f"access_log: {target}")
        result = run_cli(["check", "--config", str(config)])
        assert result.exit_code == 1, (name, result)
        expected = f"{config}:{line}:13: access_log {target}: {message}"
        assert any(e.startswith(expected) for e in result.stderr_lines), (name, result.stderr)
    ok = tmp_path / "ok.yaml"
    ok.write_text(yaml.safe_dump({"allow": ["a.test"], "access_log": str(tmp_path / "new.log")}))
    assert run_cli(["check", "--config", str(ok)]).exit_code == 0


# ---------------------------------------------------------------------------------------------
# Item 9: reload integrity
# ---------------------------------------------------------------------------------------------


def _write_atomically(path: Path, data: bytes) -> None:
    tmp = path.with_name(path.name + ".tmp")
    tmp.write_bytes(data)
    os.replace(tmp, path)


def test_a_non_utf8_users_file_fails_one_reload_and_the_watcher_applies_the_fix(
    dns_server: DnsServer, web: Origin, tmp_path: Path
) -> None:
    workdir = tmp_path / "proxy"
    users = tmp_path / "users"
    users.write_text("alice:secret\n")
    config = config_for(dns_server, workdir, web, ["stable.test"], auth={"users_file": str(users)})
    proxy = start(config, workdir)
    try:
        _write_atomically(users, b"alice:s\xffcret\n")
        mark = len(proxy.json_events())
        proxy.write_config({**config, "allow": ["stable.test", "second.test"]})  # the watcher
        failed = proxy.wait_for_event("reload-failed", RELOAD_WAIT_S, after=mark)
        assert any(str(users) in e and "not UTF-8" in e for e in failed["errors"]), failed
        status, body = readyz(proxy)
        assert (status, body["generation"], body["config_watcher"]) == (200, 1, "ok")

        users.write_text("alice:secret\n")
        mark = len(proxy.json_events())
        proxy.write_config({**config, "allow": ["stable.test", "third.test"]})
        applied = proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)
        assert applied["generation"] == 2
        assert scrape(proxy).value("egressgate_reload_watcher_errors_total") == 0
    finally:
        proxy.close()


def test_an_empty_config_file_is_refused_on_reload_and_the_old_policy_stays(
    dns_server: DnsServer, web: Origin, tmp_path: Path
) -> None:
    workdir = tmp_path / "proxy"
    config = config_for(dns_server, workdir, web, ["stable.test"])
    proxy = start(config, workdir)
    try:
        address = proxy.proxy_address
        for content in (b"", b"\n# only a comment\n"):
            mark = len(proxy.json_events())
            _write_atomically(proxy.config_path, content)
            failed = proxy.wait_for_event("reload-failed", RELOAD_WAIT_S, after=mark)
            assert any("empty" in e for e in failed["errors"]), failed
            assert failed["kept_generation"] == 1
            assert proxied_get(address, web.url("/", "stable.test")).status == 200
        # An explicit SIGHUP is refused the same way.
        mark = proxy.reload()
        proxy.wait_for_event("reload-failed", RELOAD_WAIT_S, after=mark)
        assert not proxy.events("reloaded")
        assert readyz(proxy)[1]["generation"] == 1
    finally:
        proxy.close()


IN_OPEN = 0x20


@pytest.fixture
def inotify() -> Iterator[Any]:
    """`wait_open(path, timeout_s)`: block until some process opens `path` (Linux inotify),
    so that a test knows the proxy's watcher has read a file as it is now."""
    libc = ctypes.CDLL(None, use_errno=True)
    fd = libc.inotify_init1(os.O_NONBLOCK | os.O_CLOEXEC)
    if fd < 0:
        pytest.skip("inotify is not available")

    def wait_open(path: Path, timeout_s: float) -> None:
        wd = libc.inotify_add_watch(fd, str(path).encode(), IN_OPEN)
        assert wd >= 0, os.strerror(ctypes.get_errno())
        try:
            readable, _, _ = select.select([fd], [], [], timeout_s)
            assert readable, f"nobody opened {path} within {timeout_s}s"
            os.read(fd, 65536)
        finally:
            libc.inotify_rm_watch(fd, wd)
            while select.select([fd], [], [], 0)[0]:
                os.read(fd, 65536)

    try:
        yield wait_open
    finally:
        os.close(fd)


def test_a_half_written_config_is_not_applied_only_the_completed_one(
    dns_server: DnsServer, web: Origin, tmp_path: Path, inotify: Any
) -> None:
    """An editor's non-atomic save: the file is truncated and written in two steps. The proxy
    reads it between the two (inotify tells the test so); only the complete file is applied."""
    workdir = tmp_path / "proxy"
    config = config_for(dns_server, workdir, web, ["stable.test"])
    proxy = start(config, workdir)
    try:
        full = yaml.safe_dump(
            {**config, "allow": ["stable.test", "second.test", "third.test", "fourth.test"]},
            sort_keys=False,
        )
        cut = full.index("- third.test")  # valid YAML on its own: a shorter allowlist
        partial, rest = full[:cut], full[cut:]
        yaml.safe_load(partial)
        mark = len(proxy.json_events())
        with proxy.config_path.open("r+", encoding="utf-8") as handle:
            handle.seek(0)
            handle.truncate()
            handle.write(partial)
            handle.flush()
            inotify(proxy.config_path, RELOAD_WAIT_S)  # the watcher read the partial file
            time.sleep(0.3)  # an old-style watcher has applied it by now; ours waits a poll
            handle.write(rest)
        applied = proxy.wait_for_event("reloaded", RELOAD_WAIT_S, after=mark)
        time.sleep(2.5)  # two more polls: nothing else may be applied
        reloads = [e for e in proxy.json_events()[mark:] if e.get("event") == "reloaded"]
        assert reloads == [applied], reloads
        assert applied["generation"] == 2
        assert applied["sha256"] == hashlib.sha256(full.encode()).hexdigest()
        address = proxy.proxy_address
        assert proxied_get(address, web.url("/", "fourth.test")).status == 200
    finally:
        proxy.close()


def test_a_reload_that_empties_an_allowlist_warns(
    dns_server: DnsServer, web: Origin, tmp_path: Path
) -> None:
    workdir = tmp_path / "proxy"
    config = config_for(dns_server, workdir, web, ["stable.test", "second.test"])
    proxy = start(config, workdir)
    try:
        mark = proxy.reload({**config, "allow": []}, wait_for="reloaded", timeout=RELOAD_WAIT_S)
        event = proxy.wait_for_event("allowlist-emptied", 5, after=mark)
        assert event["level"] == "warning"
        assert event["policies"] == ["default"]
        assert event["previous_entries"] == {"default": 2}
    finally:
        proxy.close()


def test_readyz_reports_the_config_watcher(
    dns_server: DnsServer, web: Origin, tmp_path: Path
) -> None:
    workdir = tmp_path / "proxy"
    proxy = start(config_for(dns_server, workdir, web, ["stable.test"]), workdir)
    try:
        status, body = readyz(proxy)
        assert status == 200
        assert body["ready"] is True
        assert body["config_watcher"] == "ok"
        assert body["reason"] is None
    finally:
        proxy.close()


# ---------------------------------------------------------------------------------------------
# Item 10: a stalled access-log reader never stalls traffic
# ---------------------------------------------------------------------------------------------


class FifoReader:
    """The read end of a FIFO, read on demand (a log reader that can stall and resume)."""

    def __init__(self, path: Path) -> None:
        os.mkfifo(path)
        self.fd = os.open(path, os.O_RDONLY | os.O_NONBLOCK)
        self.data = bytearray()
        self._stop = threading.Event()
        self._thread: threading.Thread | None = None

    def resume(self) -> None:
        self._stop.clear()
        self._thread = threading.Thread(target=self._run, daemon=True)
        self._thread.start()

    def stall(self) -> None:
        self._stop.set()
        if self._thread is not None:
            self._thread.join(5)

    def _run(self) -> None:
        while not self._stop.is_set():
            if not select.select([self.fd], [], [], 0.05)[0]:
                continue
            try:
                chunk = os.read(self.fd, 1 << 16)
            except BlockingIOError:
                continue
            if not chunk:
                return
            self.data += chunk

    def records(self) -> list[dict[str, Any]]:
        lines = bytes(self.data).split(b"\n")
        return [json.loads(line) for line in lines[:-1]]  # a torn line fails here

    def close(self) -> None:
        self.stall()
        os.close(self.fd)


def test_a_stalled_log_reader_never_stalls_traffic_and_drops_are_counted(
    dns_server: DnsServer, web: Origin, tmp_path: Path
) -> None:
    workdir = tmp_path / "proxy"
    reader = FifoReader(tmp_path / "log.fifo")
    config = config_for(
        dns_server,
        workdir,
        web,
        list(HOSTS),
        access_log=str(tmp_path / "log.fifo"),
        limits={"access_log_buffer_bytes": 65536},
    )
    proxy = start(config, workdir)
    try:
        assert stat.S_ISFIFO(os.stat(tmp_path / "log.fifo").st_mode)
        client = KeepAliveClient(proxy.proxy_address, timeout_s=5.0)
        started = time.monotonic()
        for n in range(1200):  # the old code froze after about 185
            status, _ = client.get(web.url(f"/?stalled={n}", "stable.test"))
            assert status == 200
        elapsed_s = time.monotonic() - started
        assert elapsed_s < 60, elapsed_s
        dropped = scrape(proxy).value("egressgate_log_dropped_total")
        assert dropped > 0
        assert proxy.wait_for_event("access-log-dropping", 5)["level"] == "warning"

        reader.resume()
        time.sleep(0.5)  # the writer drains its backlog into the reader
        for n in range(20):
            assert client.get(web.url(f"/?late={n}", "late.test"))[0] == 200
        wait_until(
            lambda: sum(r["host"] == "late.test" for r in reader.records()) == 20,
            10,
            "the records written after the reader resumed",
        )
        records = reader.records()  # every line whole JSON
        dropped = scrape(proxy).value("egressgate_log_dropped_total")
        assert len(records) + dropped == 1220, (len(records), dropped)
        proxy.wait_for_event("access-log-recovered", 5)

        # Stalled again at exit: SIGTERM still ends promptly, with 0.
        reader.stall()
        for n in range(400):
            assert client.get(web.url(f"/?end={n}", "stable.test"))[0] == 200
        client.close()
        started = time.monotonic()
        assert proxy.terminate(timeout=15) == 0
        assert time.monotonic() - started < 10
    finally:
        proxy.close()
        reader.close()
