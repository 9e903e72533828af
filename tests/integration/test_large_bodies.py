"""Large bodies (64 MiB) both ways, over plain HTTP and CONNECT (plain and TLS inside the
tunnel), checked by sha256 on both ends; and half-closed tunnels in both directions.

Bodies are the deterministic pattern of tests/support/origin.py: the origin hashes what it
receives and the client what it downloads; neither end holds a whole body in memory.
"""

from __future__ import annotations

import concurrent.futures
import hashlib
import socket
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path

import pytest

from tests.integration.helpers_core import (
    ports_of,
    read_until_close,
    start_proxy,
    write_file,
)
from tests.support.clients import curl, open_connect_tunnel
from tests.support.dns import DnsServer
from tests.support.origin import (
    Origin,
    OriginFactory,
    RawOriginFactory,
    iter_pattern,
    pattern_sha256,
)
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA

SIZE = 64 * 1024 * 1024
UPLOAD_SEED = 21
DOWNLOAD_SEED = 22
TIMEOUT = 60.0


@pytest.fixture(scope="module")
def upload_file(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Path]:
    path = write_file(
        tmp_path_factory.mktemp("large") / "upload.bin",
        iter_pattern(SIZE, UPLOAD_SEED, chunk_size=1 << 20),
    )
    yield path
    path.unlink()


@dataclass
class Env:
    proxy: ProxyProcess
    plain: Origin
    tls: Origin
    ca: HarnessCA


@pytest.fixture
def env(
    proxy_factory: ProxyFactory,
    origin_factory: OriginFactory,
    dns_server: DnsServer,
    test_ca: HarnessCA,
) -> Env:
    plain = origin_factory("plain", host="127.0.0.1")
    tls = origin_factory("tls", host="127.0.0.2", tls=test_ca, cert_names=["big-tls.test"])
    dns_server.records["big.test"] = [plain.host]
    dns_server.records["big-tls.test"] = [tls.host]
    proxy = start_proxy(
        proxy_factory, allow=["big.test", "big-tls.test"], ports=ports_of(plain, tls)
    )
    return Env(proxy, plain, tls, test_ca)


def assert_download(env: Env, url: str, *args: str) -> None:
    result = curl(
        [*args, f"{url}/bytes/{SIZE}?seed={DOWNLOAD_SEED}"],
        proxy=env.proxy.proxy_url,
        cacert=env.ca.ca_pem_path,
        timeout=TIMEOUT,
        max_body=0,
    )
    assert result.exit_code == 0, result.stderr
    assert result.status == 200
    assert result.body_length == SIZE
    assert result.body_sha256 == pattern_sha256(SIZE, DOWNLOAD_SEED)


def assert_upload(env: Env, origin: Origin, url: str, upload: Path, *args: str) -> None:
    result = curl(
        [*args, "--data-binary", f"@{upload}", f"{url}/upload"],
        proxy=env.proxy.proxy_url,
        cacert=env.ca.ca_pem_path,
        timeout=TIMEOUT,
    )
    assert result.exit_code == 0, result.stderr
    expected = pattern_sha256(SIZE, UPLOAD_SEED)
    assert result.json() == {"length": SIZE, "sha256": expected}
    (record,) = origin.request_records("/upload")
    assert (record.body_length, record.body_sha256, record.body_complete) == (SIZE, expected, True)


def test_64mib_download_over_plain_http_is_byte_exact(env: Env) -> None:
    assert_download(env, f"http://big.test:{env.plain.port}")
    record = env.proxy.wait_for_records(1)[0]
    assert (record["kind"], record["status"], record["bytes_down"]) == ("http", 200, SIZE)


def test_64mib_upload_over_plain_http_is_byte_exact(env: Env, upload_file: Path) -> None:
    assert_upload(env, env.plain, f"http://big.test:{env.plain.port}", upload_file)
    record = env.proxy.wait_for_records(1)[0]
    assert (record["kind"], record["bytes_up"]) == ("http", SIZE)


def test_64mib_chunked_upload_over_plain_http_is_byte_exact(env: Env, upload_file: Path) -> None:
    assert_upload(
        env,
        env.plain,
        f"http://big.test:{env.plain.port}",
        upload_file,
        "-H",
        "Transfer-Encoding: chunked",
    )
    assert env.plain.request_records("/upload")[0].chunked


def test_64mib_download_through_a_plain_connect_tunnel_is_byte_exact(env: Env) -> None:
    assert_download(env, f"http://big.test:{env.plain.port}", "--proxytunnel")
    record = env.proxy.wait_for_records(1)[0]
    assert record["kind"] == "tunnel"
    assert record["bytes_down"] > SIZE  # the body plus the response head


def test_64mib_upload_through_a_plain_connect_tunnel_is_byte_exact(
    env: Env, upload_file: Path
) -> None:
    assert_upload(env, env.plain, f"http://big.test:{env.plain.port}", upload_file, "--proxytunnel")
    record = env.proxy.wait_for_records(1)[0]
    assert record["kind"] == "tunnel"
    assert record["bytes_up"] > SIZE


def test_64mib_download_through_a_tls_tunnel_is_byte_exact(env: Env) -> None:
    assert_download(env, f"https://big-tls.test:{env.tls.port}")
    record = env.proxy.wait_for_records(1)[0]
    assert (record["kind"], record["sni"]) == ("tunnel", "big-tls.test")
    assert record["bytes_down"] > SIZE


def test_64mib_upload_through_a_tls_tunnel_is_byte_exact(env: Env, upload_file: Path) -> None:
    assert_upload(env, env.tls, f"https://big-tls.test:{env.tls.port}", upload_file)
    (record,) = env.tls.request_records("/upload")
    assert record.tls
    assert record.sni == "big-tls.test"


# ---------------------------------------------------------------------------------------------
# Half-close through a tunnel
# ---------------------------------------------------------------------------------------------


def test_client_half_close_reaches_the_origin_which_still_sends_everything(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    # The origin sends 64 MiB as soon as the tunnel is up; the client sends a few bytes and
    # shuts down its write side at once, long before the origin is done.
    serve = raw_origin_factory("serve", mode="serve", serve_bytes=SIZE, seed=DOWNLOAD_SEED)
    dns_server.records["raw.test"] = [serve.host]
    proxy = start_proxy(proxy_factory, allow=["raw.test"], ports=ports_of(serve))
    with open_connect_tunnel(proxy.proxy_address, f"raw.test:{serve.port}") as tunnel:
        assert tunnel.status == 200
        tunnel.sock.sendall(b"hello, then EOF")
        tunnel.sock.shutdown(socket.SHUT_WR)
        digest = hashlib.sha256(tunnel.leftover)
        received = len(tunnel.leftover)
        tunnel.sock.settimeout(TIMEOUT)
        for _ in range(1 << 30):  # bounded by EOF or the socket timeout
            chunk = tunnel.sock.recv(1 << 20)
            if not chunk:
                break
            digest.update(chunk)
            received += len(chunk)
    assert (received, digest.hexdigest()) == (SIZE, pattern_sha256(SIZE, DOWNLOAD_SEED))
    (conn,) = serve.wait_for_closed(1, timeout=10)
    assert conn.eof_received
    assert conn.head == b"hello, then EOF"
    assert conn.bytes_sent == SIZE
    record = proxy.wait_for_records(1)[0]
    assert (record["bytes_up"], record["bytes_down"]) == (len(b"hello, then EOF"), SIZE)


def test_origin_half_close_reaches_the_client_which_still_sends_everything(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    # The origin sends 1 MiB and shuts down its write side; the client reads to that EOF and
    # only then sends 64 MiB, which must all arrive.
    served = 1024 * 1024
    serve = raw_origin_factory("serve", mode="serve", serve_bytes=served, seed=3)
    dns_server.records["raw.test"] = [serve.host]
    proxy = start_proxy(proxy_factory, allow=["raw.test"], ports=ports_of(serve))
    first = b"client speaks first"
    expected = hashlib.sha256(first)
    for chunk in iter_pattern(SIZE, UPLOAD_SEED, chunk_size=1 << 20):
        expected.update(chunk)
    with open_connect_tunnel(proxy.proxy_address, f"raw.test:{serve.port}") as tunnel:
        assert tunnel.status == 200
        tunnel.sock.sendall(first)
        down = read_until_close(tunnel.sock, TIMEOUT)
        assert down.closed, "the origin's EOF did not reach the client"
        data = tunnel.leftover + down.data
        assert hashlib.sha256(data).hexdigest() == pattern_sha256(served, 3)
        tunnel.sock.settimeout(TIMEOUT)
        for chunk in iter_pattern(SIZE, UPLOAD_SEED, chunk_size=1 << 20):
            tunnel.sock.sendall(chunk)
        tunnel.sock.shutdown(socket.SHUT_WR)
        assert read_until_close(tunnel.sock, TIMEOUT).data == b""
    (conn,) = serve.wait_for_closed(1, timeout=TIMEOUT)
    assert conn.eof_received
    assert (conn.bytes_received, conn.sha256) == (len(first) + SIZE, expected.hexdigest())
    record = proxy.wait_for_records(1)[0]
    assert (record["bytes_up"], record["bytes_down"]) == (len(first) + SIZE, served)


def test_echo_through_a_tunnel_with_concurrent_directions_is_byte_exact(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory, dns_server: DnsServer
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    dns_server.records["raw.test"] = [echo.host]
    proxy = start_proxy(proxy_factory, allow=["raw.test"], ports=ports_of(echo))
    size = 16 * 1024 * 1024
    with open_connect_tunnel(proxy.proxy_address, f"raw.test:{echo.port}") as tunnel:
        assert tunnel.status == 200
        sock = tunnel.sock
        sock.settimeout(TIMEOUT)

        def send_all() -> None:
            for chunk in iter_pattern(size, 5, chunk_size=1 << 20):
                sock.sendall(chunk)
            sock.shutdown(socket.SHUT_WR)

        with concurrent.futures.ThreadPoolExecutor(1) as pool:
            sending = pool.submit(send_all)
            echoed = read_until_close(sock, TIMEOUT)
            sending.result(TIMEOUT)
    assert echoed.closed
    assert (len(echoed.data), hashlib.sha256(echoed.data).hexdigest()) == (
        size,
        pattern_sha256(size, 5),
    )
    (conn,) = echo.wait_for_closed(1)
    assert conn.eof_received
    assert conn.sha256 == pattern_sha256(size, 5)
