"""`verify --attack`'s NetworkPolicy check over a REAL HTTPS exchange: a stand-in API server on
loopback (TLS from the test CA, a bearer token, JSON lists as the API server serves them), and a
service-account directory in tmp_path as the kubelet mounts it.

It covers the plain-HTTPS client in egressgate/tools/pod_inspect.py end to end: the token is
sent, the CA verifies, a chunked body is decoded, the pod's own labels narrow the policies, and
403 / unreachable / no mount each give "not checked" with the reason.
"""

from __future__ import annotations

import json
import socket
import threading
from collections.abc import Iterator
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import pytest

from egressgate.tools import pod_inspect
from egressgate.tools.verify import Status
from tests.support.tlsca import HarnessCA

TOKEN = "test-token-123"
POLICIES = {
    "items": [
        {
            "metadata": {"name": "shop-egress"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "shop"}},
                "policyTypes": ["Egress"],
                "egress": [{"ports": [{"port": 3128}], "to": [{"podSelector": {}}]}],
            },
        },
        {
            "metadata": {"name": "debug-open"},
            "spec": {
                "podSelector": {"matchLabels": {"app": "debug"}},
                "policyTypes": ["Egress"],
                "egress": [{}],
            },
        },
    ]
}


class _Api(BaseHTTPRequestHandler):
    protocol_version = "HTTP/1.1"
    server: _Server

    def do_GET(self) -> None:
        self.server.seen.append((self.path, self.headers.get("Authorization")))
        if self.headers.get("Authorization") != f"Bearer {TOKEN}":
            self._send(401, {"kind": "Status"})
        elif self.path in self.server.forbidden:
            self._send(403, {"kind": "Status", "reason": "Forbidden"})
        elif self.path.endswith("/networkpolicies"):
            self._send(200, POLICIES, chunked=True)
        elif self.path.endswith("/pods/shop-7d9f"):
            self._send(200, {"metadata": {"labels": self.server.labels}})
        else:
            self._send(404, {"kind": "Status"})

    def _send(self, status: int, doc: Any, *, chunked: bool = False) -> None:
        body = json.dumps(doc).encode()
        self.send_response(status)
        self.send_header("Content-Type", "application/json")
        if chunked:  # the API server streams lists
            self.send_header("Transfer-Encoding", "chunked")
            self.end_headers()
            half = len(body) // 2
            for part in (body[:half], body[half:]):
                self.wfile.write(f"{len(part):x}\r\n".encode() + part + b"\r\n")
            self.wfile.write(b"0\r\n\r\n")
        else:
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)
        self.close_connection = True

    def log_message(self, format: str, *args: Any) -> None:
        pass


class _Server(ThreadingHTTPServer):
    daemon_threads = True
    seen: list[tuple[str, str | None]]
    forbidden: set[str]
    labels: dict[str, str]


@pytest.fixture
def api(test_ca: HarnessCA) -> Iterator[_Server]:
    server = _Server(("127.0.0.1", 0), _Api)
    server.seen, server.forbidden, server.labels = [], set(), {"app": "shop"}
    context = test_ca.server_context("127.0.0.1")
    server.socket = context.wrap_socket(server.socket, server_side=True)
    thread = threading.Thread(target=server.serve_forever, daemon=True)
    thread.start()
    yield server
    server.shutdown()
    server.server_close()
    thread.join(5)


@pytest.fixture
def mount(tmp_path: Path, test_ca: HarnessCA, monkeypatch: pytest.MonkeyPatch) -> Path:
    directory = tmp_path / "serviceaccount"
    directory.mkdir()
    (directory / "token").write_text(TOKEN + "\n")
    (directory / "namespace").write_text("shop")
    (directory / "ca.crt").write_bytes(test_ca.ca_pem_path.read_bytes())
    monkeypatch.setattr(pod_inspect, "SERVICE_ACCOUNT_DIR", directory)
    return directory


def _env(server: _Server) -> dict[str, str]:
    host, port = server.server_address[:2]
    return {
        "KUBERNETES_SERVICE_HOST": str(host),
        "KUBERNETES_SERVICE_PORT": str(port),
        "HOSTNAME": "shop-7d9f",
    }


def test_the_policies_selecting_this_pod_are_read_with_the_token(api: _Server, mount: Path) -> None:
    check = pod_inspect.read_network_policy(_env(api), 5.0)
    assert check.status is Status.PASS, check.detail
    assert check.detail == "policies selecting this pod: shop-egress; none allows every egress"
    assert api.seen == [
        ("/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies", f"Bearer {TOKEN}"),
        ("/api/v1/namespaces/shop/pods/shop-7d9f", f"Bearer {TOKEN}"),
    ]


def test_an_allow_all_rule_selecting_this_pod_fails(api: _Server, mount: Path) -> None:
    api.labels = {"app": "debug"}
    check = pod_inspect.read_network_policy(_env(api), 5.0)
    assert check.status is Status.FAIL
    assert check.detail.startswith("debug-open: egress rule 0 is `{}` (every destination, every")


def test_without_the_pod_labels_every_policy_counts(api: _Server, mount: Path) -> None:
    api.forbidden = {"/api/v1/namespaces/shop/pods/shop-7d9f"}
    check = pod_inspect.read_network_policy(_env(api), 5.0)
    assert check.status is Status.FAIL
    assert "this pod's labels are unknown: every policy counted" in check.detail


def test_not_checked_says_why(api: _Server, mount: Path, tmp_path: Path) -> None:
    api.forbidden = {"/apis/networking.k8s.io/v1/namespaces/shop/networkpolicies"}
    check = pod_inspect.read_network_policy(_env(api), 5.0)
    assert check.status is Status.SKIP
    assert check.detail.startswith("not checked: /apis/networking.k8s.io/v1/namespaces/shop/")
    assert "403 Forbidden: the service account may not read it" in check.detail

    with socket.socket() as closed:  # a port nothing listens on
        closed.bind(("127.0.0.1", 0))
        port = closed.getsockname()[1]
    env = {**_env(api), "KUBERNETES_SERVICE_PORT": str(port)}
    check = pod_inspect.read_network_policy(env, 2.0)
    assert check.status is Status.SKIP
    assert f"the API server 127.0.0.1:{port} did not answer" in check.detail

    (mount / "token").unlink()
    check = pod_inspect.read_network_policy(_env(api), 2.0)
    assert check.status is Status.SKIP
    assert "no service account token mounted" in check.detail
