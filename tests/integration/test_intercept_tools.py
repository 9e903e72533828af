"""TLS interception with real tools: `git clone` over HTTPS and `pip download` from an index.

Both servers are the ones tests/integration/test_clients.py uses (git http-backend behind a
small HTTP server, a PEP 503 "simple" index), here served over TLS with certificates from the
session's test CA, which the proxy trusts as `upstream_ca_file`. git and pip trust only the
interception CA (`GIT_SSL_CAINFO`, `pip --cert`), exactly as a CI job would. One proxy and both
servers for the module.
"""

from __future__ import annotations

import hashlib
import http.server
import shutil
import socket
import ssl
import sys
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest

from tests.integration.test_clients import (
    AppServer,
    build_wheel,
    git_backend,
    run_tool,
    tool_env,
)
from tests.support.dns import DnsServer
from tests.support.proxy import ProxyProcess, base_proxy_config
from tests.support.tlsca import HarnessCA

GIT_TOKEN = "tok-git-51c8e0a7d3b9"
pytestmark = pytest.mark.skipif(shutil.which("git") is None, reason="git is not installed")


@dataclass
class Tools:
    proxy: ProxyProcess
    git: AppServer
    index: AppServer
    icpt_ca: HarnessCA
    head: str  # the commit of allowed.git's main
    env: dict[str, str]
    tmp: Path
    seen_tokens: list[str | None]


def _tls(server: AppServer, ca: HarnessCA, name: str) -> None:
    """Serve `server` over TLS from now on (its accept loop picks up the wrapped socket)."""
    context = ca.server_context(name)
    server.server.socket = context.wrap_socket(server.server.socket, server_side=True)


@pytest.fixture(scope="module")
def tools(test_ca: HarnessCA, tmp_path_factory: pytest.TempPathFactory) -> Iterator[Tools]:
    tmp = tmp_path_factory.mktemp("intercept-tools")
    icpt_ca = HarnessCA(tmp / "icpt-ca", name="egressgate interception CA")
    key = icpt_ca.directory / "ca.key"
    icpt_ca.ca.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    env = tool_env(tmp, {"GIT_AUTHOR_NAME": "t", "GIT_AUTHOR_EMAIL": "t@example.invalid"})
    env |= {"GIT_COMMITTER_NAME": "t", "GIT_COMMITTER_EMAIL": "t@example.invalid"}
    root = tmp / "served"
    root.mkdir()
    work = tmp / "work"
    for argv in (
        ["git", "init", "-q", "-b", "main", str(work)],
        ["git", "-C", str(work), "commit", "-q", "--allow-empty", "-m", "first"],
        ["git", "clone", "-q", "--bare", str(work), str(root / "allowed.git")],
        ["git", "clone", "-q", "--bare", str(work), str(root / "private.git")],
    ):
        done = run_tool(argv, env, tmp)
        assert done.returncode == 0, done.stderr
    head = run_tool(["git", "-C", str(work), "rev-parse", "HEAD"], env, tmp).stdout.strip()
    seen_tokens: list[str | None] = []
    backend = git_backend(root)

    def git_handler(request: http.server.BaseHTTPRequestHandler, body: bytes) -> Any:
        seen_tokens.append(request.headers.get("X-Git-Token"))
        return backend(request, body)

    wheel_name, wheel = build_wheel("egicptpkg", "1.0")
    digest = hashlib.sha256(wheel).hexdigest()
    pages = {
        "/simple/egicptpkg/": (
            f'<html><body><a href="/files/{wheel_name}#sha256={digest}">{wheel_name}</a>'
            "</body></html>"
        ).encode(),
        f"/files/{wheel_name}": wheel,
    }

    def index_handler(request: http.server.BaseHTTPRequestHandler, body: bytes) -> Any:
        page = pages.get(request.path.split("?", 1)[0])
        if page is None:
            return 404, {"Content-Type": "text/plain"}, b"not found\n"
        kind = "application/octet-stream" if page is wheel else "text/html"
        return 200, {"Content-Type": kind}, page

    git, index = AppServer(git_handler), AppServer(index_handler)
    try:
        _tls(git, test_ca, "git.test")
        _tls(index, test_ca, "pypi.test")
        with DnsServer() as dns:
            dns.set("git.test", ["127.0.0.1"])
            dns.set("pypi.test", ["127.0.0.1"])
            config = base_proxy_config(dns.address, tmp)
            config.update(
                {
                    "allow": ["git.test", "pypi.test"],
                    "allow_private": ["127.0.0.0/8"],
                    "connect_ports": [str(git.port), str(index.port)],
                    "tls_intercept": {
                        "ca_cert_file": str(icpt_ca.ca_pem_path),
                        "ca_key_file": str(key),
                        "upstream_ca_file": str(test_ca.ca_pem_path),
                    },
                    "intercept": [
                        {
                            "host": "git.test",
                            "rules": [
                                # read-only access to one repository: clone and fetch
                                {"methods": ["GET"], "paths": ["/allowed.git/info/refs"]},
                                {"methods": ["POST"], "paths": ["/allowed.git/git-upload-pack"]},
                            ],
                            "set_headers": {"X-Git-Token": "env:EG_GIT_TOKEN"},
                        },
                        {"host": "pypi.test", "rules": [{"methods": ["GET", "HEAD"]}]},
                    ],
                }
            )
            proxy = ProxyProcess(config, tmp / "proxy", env={"EG_GIT_TOKEN": GIT_TOKEN})
            proxy.start()
            try:
                yield Tools(proxy, git, index, icpt_ca, head, env, tmp, seen_tokens)
            finally:
                proxy.close()
    finally:
        git.close()
        index.close()


def _git(tools: Tools, *args: str) -> Any:
    env = tools.env | {"GIT_SSL_CAINFO": str(tools.icpt_ca.ca_pem_path)}
    argv = ["git", "-c", f"http.proxy={tools.proxy.proxy_url}", *args]
    return run_tool(argv, env, tools.tmp)


def test_git_clone_of_the_allowed_repository_works_with_the_injected_token(tools: Tools) -> None:
    url = f"https://git.test:{tools.git.port}/allowed.git"
    clone = tools.tmp / "clone-allowed"
    done = _git(tools, "clone", "-q", url, str(clone))
    assert done.returncode == 0, done.stderr
    head = run_tool(["git", "-C", str(clone), "rev-parse", "HEAD"], tools.env, tools.tmp)
    assert head.stdout.strip() == tools.head
    assert tools.seen_tokens
    assert set(tools.seen_tokens) == {GIT_TOKEN}
    records = tools.proxy.wait_for_records(2, predicate=lambda r: r["kind"] == "intercept")
    assert {r["method"] for r in records} >= {"GET", "POST"}
    log = tools.proxy.access_log_path.read_text()
    assert GIT_TOKEN not in log
    assert GIT_TOKEN not in "\n".join(tools.proxy.stderr_lines)


def test_git_clone_of_another_repository_is_refused_by_the_rules(tools: Tools) -> None:
    url = f"https://git.test:{tools.git.port}/private.git"
    done = _git(tools, "clone", "-q", url, str(tools.tmp / "clone-private"))
    assert done.returncode != 0
    assert "403" in done.stderr
    record = tools.proxy.wait_for_records(
        1, predicate=lambda r: r["kind"] == "intercept" and r["reason"] == "rule-not-matched"
    )[-1]
    assert record["path"] == "/private.git/info/refs"


def test_git_push_is_refused_by_the_rules(tools: Tools) -> None:
    clone = tools.tmp / "clone-push"
    url = f"https://git.test:{tools.git.port}/allowed.git"
    assert _git(tools, "clone", "-q", url, str(clone)).returncode == 0
    run_tool(
        ["git", "-C", str(clone), "commit", "-q", "--allow-empty", "-m", "x"], tools.env, tools.tmp
    )
    done = _git(tools, "-C", str(clone), "push", "-q", "origin", "main")
    assert done.returncode != 0
    assert "403" in done.stderr


def test_pip_download_from_an_intercepted_index(tools: Tools) -> None:
    dest = tools.tmp / "downloads"
    argv = [
        sys.executable,
        "-m",
        "pip",
        "download",
        "--no-deps",
        "--no-cache-dir",
        "--disable-pip-version-check",
        "--index-url",
        f"https://pypi.test:{tools.index.port}/simple/",
        "--cert",
        str(tools.icpt_ca.ca_pem_path),
        "--proxy",
        tools.proxy.proxy_url,
        "--dest",
        str(dest),
        "egicptpkg",
    ]
    # requests prefers REQUESTS_CA_BUNDLE / CURL_CA_BUNDLE from the environment to pip's --cert
    env = {k: v for k, v in tools.env.items() if k not in ("REQUESTS_CA_BUNDLE", "CURL_CA_BUNDLE")}
    env["PIP_CERT"] = str(tools.icpt_ca.ca_pem_path)
    done = run_tool(argv, env, tools.tmp)
    assert done.returncode == 0, f"pip failed:\n{done.stdout}\n{done.stderr}"
    assert (dest / "egicptpkg-1.0-py3-none-any.whl").exists()
    records = tools.proxy.wait_for_records(
        2, predicate=lambda r: r["kind"] == "intercept" and r["host"] == "pypi.test"
    )
    assert {r["path"] for r in records} >= {
        "/simple/egicptpkg/",
        "/files/egicptpkg-1.0-py3-none-any.whl",
    }


def test_the_index_really_needs_the_interception_ca(tools: Tools) -> None:
    """Sanity: the index's own certificate is not what pip saw (pip trusts only the
    interception CA, and the index's certificate comes from the test CA)."""
    context = tools.icpt_ca.client_context()
    with (
        socket.create_connection(("127.0.0.1", tools.index.port), timeout=10) as raw,
        pytest.raises(ssl.SSLCertVerificationError),
    ):
        context.wrap_socket(raw, server_hostname="pypi.test")
