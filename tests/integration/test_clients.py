"""Real client programs and libraries through the proxy: requests, httpx, urllib, pip and git.

pip talks to a tiny PEP 503 "simple" index and git to `git http-backend`, both served on
loopback by servers started here and reached through the proxy by names that the test DNS
server maps to 127.0.0.1. pip and git are run with every configuration file and proxy variable
of the machine ignored, so that they can reach nothing but the proxy.
"""

from __future__ import annotations

import base64
import contextlib
import hashlib
import http.server
import io
import os
import shutil
import ssl
import subprocess
import sys
import threading
import urllib.error
import urllib.request
import zipfile
from collections.abc import Callable, Iterator, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import httpx
import pytest
import requests

from tests.integration.helpers_core import ports_of, start_proxy, wait_record
from tests.support.clients import requests_session
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, pattern_bytes, pattern_sha256, sha256_hex
from tests.support.proxy import ProxyFactory, ProxyProcess, clean_env
from tests.support.tlsca import HarnessCA

CLIENT_TIMEOUT = 60.0


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
    tls = origin_factory("tls", host="127.0.0.2", tls=test_ca, cert_names=["secure.test"])
    dns_server.records["plain.test"] = [plain.host]
    dns_server.records["secure.test"] = [tls.host]
    dns_server.records["denied.test"] = ["127.0.0.3"]  # nothing there; never asked anyway
    proxy = start_proxy(
        proxy_factory, allow=["plain.test", "secure.test"], ports=ports_of(plain, tls)
    )
    return Env(proxy, plain, tls, test_ca)


# ---------------------------------------------------------------------------------------------
# Python HTTP libraries
# ---------------------------------------------------------------------------------------------


def test_requests_through_the_proxy_plain_and_https(env: Env) -> None:
    payload = pattern_bytes(250_000, 3)
    with requests_session(env.proxy.proxy_url, env.ca.ca_pem_path) as session:
        got = session.get(f"http://plain.test:{env.plain.port}/bytes/250000?seed=3", timeout=10)
        assert sha256_hex(got.content) == sha256_hex(payload)
        assert got.headers["Via"] == "1.1 egressgate"
        posted = session.post(
            f"http://plain.test:{env.plain.port}/upload", data=payload, timeout=10
        )
        assert posted.json() == {"length": len(payload), "sha256": sha256_hex(payload)}
        secure = session.get(f"https://secure.test:{env.tls.port}/", timeout=10)
        assert secure.text == "hello from tls"
        put = session.put(f"https://secure.test:{env.tls.port}/upload", data=payload, timeout=10)
        assert put.json()["sha256"] == sha256_hex(payload)
        refused = session.get(f"http://denied.test:{env.plain.port}/", timeout=10)
        assert refused.status_code == 403
        assert refused.headers["X-Egressgate-Reason"] == "host-not-allowed"
        with pytest.raises(requests.exceptions.ProxyError):
            session.get(f"https://denied.test:{env.tls.port}/", timeout=10)
    # (The https tunnel is logged when it closes, which these live response objects delay.)
    refusal = wait_record(env.proxy, method="CONNECT", host="denied.test")
    assert (refusal["reason"], refusal["status"]) == ("host-not-allowed", 403)


def test_httpx_through_the_proxy_plain_and_https(env: Env) -> None:
    context = ssl.create_default_context(cafile=str(env.ca.ca_pem_path))
    with httpx.Client(
        proxy=env.proxy.proxy_url, verify=context, trust_env=False, timeout=10
    ) as client:
        got = client.get(f"http://plain.test:{env.plain.port}/chunked/100000?seed=2")
        assert sha256_hex(got.content) == pattern_sha256(100_000, 2)
        secure = client.get(f"https://secure.test:{env.tls.port}/bytes/100000?seed=2")
        assert sha256_hex(secure.content) == pattern_sha256(100_000, 2)
        posted = client.post(f"https://secure.test:{env.tls.port}/upload", content=b"x" * 5000)
        assert posted.json()["length"] == 5000
        refused = client.get(f"http://denied.test:{env.plain.port}/")
        assert (refused.status_code, refused.headers["X-Egressgate-Reason"]) == (
            403,
            "host-not-allowed",
        )
        with pytest.raises(httpx.ProxyError):
            client.get(f"https://denied.test:{env.tls.port}/")


def test_urllib_through_the_proxy_plain_and_https(env: Env) -> None:
    context = ssl.create_default_context(cafile=str(env.ca.ca_pem_path))
    opener = urllib.request.build_opener(
        urllib.request.ProxyHandler({"http": env.proxy.proxy_url, "https": env.proxy.proxy_url}),
        urllib.request.HTTPSHandler(context=context),
    )
    with opener.open(f"http://plain.test:{env.plain.port}/", timeout=10) as response:
        assert response.read() == b"hello from plain"
    with opener.open(f"https://secure.test:{env.tls.port}/", timeout=10) as response:
        assert response.read() == b"hello from tls"
    with pytest.raises(urllib.error.HTTPError) as refused:
        opener.open(f"http://denied.test:{env.plain.port}/", timeout=10)
    assert refused.value.code == 403
    refused.value.close()


# ---------------------------------------------------------------------------------------------
# A small threaded HTTP server for pip's index and git's http-backend
# ---------------------------------------------------------------------------------------------

Handler = Callable[[http.server.BaseHTTPRequestHandler, bytes], tuple[int, dict[str, str], bytes]]


@dataclass
class AppServer:
    """A loopback HTTP/1.1 server whose responses come from `handler(request, body)`."""

    handler: Handler
    requests: list[tuple[str, str]] = field(default_factory=list)

    def __post_init__(self) -> None:
        app = self

        class _Request(http.server.BaseHTTPRequestHandler):
            protocol_version = "HTTP/1.1"
            # TCP_NODELAY: the head and the body are two writes, and on a kept-alive connection
            # Nagle held the body until the client's delayed ACK (~40 ms per response).
            disable_nagle_algorithm = True

            def _serve(self) -> None:
                length = int(self.headers.get("Content-Length") or 0)
                body = self.rfile.read(length) if length else b""
                app.requests.append((self.command, self.path))
                status, headers, payload = app.handler(self, body)
                self.send_response(status)
                for name, value in headers.items():
                    self.send_header(name, value)
                self.send_header("Content-Length", str(len(payload)))
                self.end_headers()
                self.wfile.write(payload)

            do_GET = do_POST = do_HEAD = _serve

            def log_message(self, format: str, *args: Any) -> None:
                pass

        self.server = http.server.ThreadingHTTPServer(("127.0.0.1", 0), _Request)
        self.server.daemon_threads = True
        self.port: int = self.server.server_address[1]
        self._thread = threading.Thread(target=self.server.serve_forever, daemon=True)
        self._thread.start()

    def close(self) -> None:
        self.server.shutdown()
        self.server.server_close()
        self._thread.join(5.0)


@contextlib.contextmanager
def app_server(handler: Handler) -> Iterator[AppServer]:
    server = AppServer(handler)
    try:
        yield server
    finally:
        server.close()


def tool_env(tmp: Path, extra: Mapping[str, str] | None = None) -> dict[str, str]:
    """An environment for pip/git: no *_proxy variable, no user or system configuration."""
    home = tmp / "home"
    home.mkdir(exist_ok=True)
    env = clean_env(
        {
            "HOME": str(home),
            "XDG_CONFIG_HOME": str(home / ".config"),
            "PIP_CONFIG_FILE": os.devnull,
            "PIP_NO_INPUT": "1",
            "PIP_DISABLE_PIP_VERSION_CHECK": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_CONFIG_GLOBAL": os.devnull,
            "GIT_TERMINAL_PROMPT": "0",
        }
    )
    env = {k: v for k, v in env.items() if not k.startswith(("PIP_INDEX", "PIP_EXTRA", "PIP_FIND"))}
    env.update(extra or {})
    return env


def run_tool(
    argv: list[str], env: Mapping[str, str], cwd: Path
) -> subprocess.CompletedProcess[str]:
    try:
        return subprocess.run(
            argv,
            env=dict(env),
            cwd=cwd,
            stdin=subprocess.DEVNULL,
            capture_output=True,
            text=True,
            timeout=CLIENT_TIMEOUT,
            check=False,
        )
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"{argv[0]} did not finish within {CLIENT_TIMEOUT}s: {exc}")


# ---------------------------------------------------------------------------------------------
# pip
# ---------------------------------------------------------------------------------------------


def build_wheel(name: str, version: str) -> tuple[str, bytes]:
    """A minimal pure-Python wheel: (file name, bytes)."""
    dist_info = f"{name}-{version}.dist-info"
    files = {
        f"{name}/__init__.py": f"VERSION = {version!r}\n".encode(),
        f"{dist_info}/METADATA": (
            f"Metadata-Version: 2.1\nName: {name}\nVersion: {version}\n"
            "Summary: egressgate test package\n"
        ).encode(),
        f"{dist_info}/WHEEL": (
            b"Wheel-Version: 1.0\nGenerator: egressgate-tests\nRoot-Is-Purelib: true\n"
            b"Tag: py3-none-any\n"
        ),
    }
    record_lines = []
    for path, data in files.items():
        digest = base64.urlsafe_b64encode(hashlib.sha256(data).digest()).rstrip(b"=").decode()
        record_lines.append(f"{path},sha256={digest},{len(data)}")
    record_lines.append(f"{dist_info}/RECORD,,")
    files[f"{dist_info}/RECORD"] = ("\n".join(record_lines) + "\n").encode()
    buffer = io.BytesIO()
    with zipfile.ZipFile(buffer, "w", zipfile.ZIP_DEFLATED) as archive:
        for path, data in files.items():
            archive.writestr(path, data)
    return f"{name}-{version}-py3-none-any.whl", buffer.getvalue()


def test_pip_downloads_a_package_from_an_index_through_the_proxy(
    proxy_factory: ProxyFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    wheel_name, wheel = build_wheel("egtinypkg", "1.0")
    digest = hashlib.sha256(wheel).hexdigest()
    pages = {
        "/simple/": b'<html><body><a href="/simple/egtinypkg/">egtinypkg</a></body></html>',
        "/simple/egtinypkg/": (
            f'<html><body><a href="/files/{wheel_name}#sha256={digest}">{wheel_name}</a>'
            "</body></html>"
        ).encode(),
        f"/files/{wheel_name}": wheel,
    }

    def index(
        request: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        del body
        page = pages.get(request.path.split("?", 1)[0])
        if page is None:
            return 404, {"Content-Type": "text/plain"}, b"not found\n"
        kind = "application/octet-stream" if page is wheel else "text/html"
        return 200, {"Content-Type": kind}, page

    with app_server(index) as server:
        dns_server.records["pypi.test"] = ["127.0.0.1"]
        proxy = start_proxy(proxy_factory, allow=["pypi.test"], ports=[server.port])
        dest = tmp_path / "downloads"
        argv = [
            sys.executable,
            "-m",
            "pip",
            "download",
            "--no-deps",
            "--no-cache-dir",
            "--disable-pip-version-check",
            "--index-url",
            f"http://pypi.test:{server.port}/simple/",
            "--trusted-host",
            f"pypi.test:{server.port}",
            "--proxy",
            proxy.proxy_url,
            "--dest",
            str(dest),
            "egtinypkg",
        ]
        done = run_tool(argv, tool_env(tmp_path), tmp_path)
        assert done.returncode == 0, f"pip failed:\n{done.stdout}\n{done.stderr}"
        assert (dest / wheel_name).read_bytes() == wheel
        assert ("GET", f"/files/{wheel_name}") in server.requests
        records = proxy.wait_for_records(2)
        assert {r["host"] for r in records} == {"pypi.test"}
        assert all(r["decision"] == "allow" for r in records)


# ---------------------------------------------------------------------------------------------
# git
# ---------------------------------------------------------------------------------------------


def git_backend(root: Path) -> Handler:
    """A CGI bridge to `git http-backend` serving the repositories under `root`."""

    def handle(
        request: http.server.BaseHTTPRequestHandler, body: bytes
    ) -> tuple[int, dict[str, str], bytes]:
        path, _, query = request.path.partition("?")
        cgi_env = {
            "PATH": os.environ.get("PATH", "/usr/bin:/bin"),
            "GIT_PROJECT_ROOT": str(root),
            "GIT_HTTP_EXPORT_ALL": "1",
            "GIT_CONFIG_NOSYSTEM": "1",
            "HOME": str(root),
            "PATH_INFO": path,
            "QUERY_STRING": query,
            "REQUEST_METHOD": request.command,
            "CONTENT_TYPE": request.headers.get("Content-Type", ""),
            "CONTENT_LENGTH": str(len(body)),
            "REMOTE_ADDR": request.client_address[0],
            "GIT_PROTOCOL": request.headers.get("Git-Protocol", ""),
            "HTTP_CONTENT_ENCODING": request.headers.get("Content-Encoding", ""),
        }
        done = subprocess.run(
            ["git", "http-backend"], input=body, env=cgi_env, capture_output=True, timeout=30
        )
        output = done.stdout.replace(b"\r\n", b"\n")
        head, _, payload = output.partition(b"\n\n")
        status, headers = 200, {}
        for line in head.decode("latin-1").split("\n"):
            name, _, value = line.partition(":")
            if name.lower() == "status":
                status = int(value.split()[0])
            elif name:
                headers[name] = value.strip()
        return status, headers, payload

    return handle


@pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")
def test_git_ls_remote_and_clone_over_http_through_the_proxy(
    proxy_factory: ProxyFactory, dns_server: DnsServer, tmp_path: Path
) -> None:
    env = tool_env(tmp_path, {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"})
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    work = tmp_path / "work"
    root = tmp_path / "served"
    root.mkdir()
    for argv in (
        ["git", "init", "-q", "-b", "main", str(work)],
        ["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "first"],
        ["git", "clone", "-q", "--bare", str(work), str(root / "repo.git")],
    ):
        done = run_tool(argv, env, tmp_path)
        assert done.returncode == 0, done.stderr
    head = run_tool(["git", "-C", str(work), "rev-parse", "HEAD"], env, tmp_path).stdout.strip()
    with app_server(git_backend(root)) as server:
        dns_server.records["git.test"] = ["127.0.0.1"]
        proxy = start_proxy(proxy_factory, allow=["git.test"], ports=[server.port])
        url = f"http://git.test:{server.port}/repo.git"
        proxied = ["git", "-c", f"http.proxy={proxy.proxy_url}"]
        listed = run_tool([*proxied, "ls-remote", url], env, tmp_path)
        assert listed.returncode == 0, listed.stderr
        assert f"{head}\trefs/heads/main" in listed.stdout
        cloned = run_tool([*proxied, "clone", "-q", url, str(tmp_path / "clone")], env, tmp_path)
        assert cloned.returncode == 0, cloned.stderr
        log = run_tool(["git", "-C", str(tmp_path / "clone"), "rev-parse", "HEAD"], env, tmp_path)
        assert log.stdout.strip() == head
        records = proxy.wait_for_records(2)
        assert {r["host"] for r in records} == {"git.test"}
        assert any(r["method"] == "POST" for r in records)
