"""Per-client policies (issue 6) on the real proxy: by source address, by proxy user, report mode.

Clients bind their sockets to 127.0.0.2 / 127.0.0.3 (curl `--interface`, requests with
urllib3's `source_address`, plain sockets' `source_address`); rules pick a named policy per
client, first match wins, anything else gets `default_policy`. Proxy users come from a users
file or an environment variable; their passwords must never show up in the proxy's output, nor
reach the destination.
"""

from __future__ import annotations

import base64
import signal
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import pytest
import requests
import requests.adapters

from tests.integration.helpers_ops import (
    EchoTunnel,
    loopback_policy,
    payload,
    proxied_get,
    proxy_text_output,
    scrape,
    wait_for_metric,
)
from tests.support.clients import curl, requests_session
from tests.support.dns import DnsServer
from tests.support.origin import Origin, OriginFactory, RawOrigin, RawOriginFactory, sha256_hex
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA

CLIENT_A = "127.0.0.2"
CLIENT_B = "127.0.0.3"
STRANGER = "127.0.0.4"

ALICE_PASSWORD = "Tr0ub4dor&3-alice"
BOB_PASSWORD = "correct horse battery staple"
CAROL_PASSWORD = "c4rol:with-a-colon"
WRONG_PASSWORD = "not-the-password-9731"


@dataclass
class Sites:
    web: Origin  # plain HTTP, answers for a.test, b.test, c.test
    tls_web: Origin  # HTTPS, certificate for a.test and b.test
    echo: RawOrigin  # raw echo, for tunnels
    test_ca: HarnessCA

    def policy(self, allow: list[str], **extra: Any) -> dict[str, Any]:
        return loopback_policy(
            allow,
            http_ports=[self.web.port],
            connect_ports=[self.echo.port, self.tls_web.port],
            **extra,
        )


@pytest.fixture
def sites(
    dns_server: DnsServer,
    origin_factory: OriginFactory,
    raw_origin_factory: RawOriginFactory,
    test_ca: HarnessCA,
) -> Sites:
    for name in ("a.test", "b.test", "c.test"):
        dns_server.records[name] = ["127.0.0.1"]
    return Sites(
        origin_factory("web"),
        origin_factory("tls-web", tls=test_ca, cert_names=["a.test", "b.test"]),
        raw_origin_factory("echo", mode="echo"),
        test_ca,
    )


def basic(user: str, password: str) -> tuple[str, str]:
    token = base64.b64encode(f"{user}:{password}".encode()).decode()
    return ("Proxy-Authorization", f"Basic {token}")


class SourceAddressAdapter(requests.adapters.HTTPAdapter):
    """A requests adapter whose connections (also to the proxy) leave from `source`.

    (httpx cannot do this: its HTTPTransport drops `local_address` when a proxy is set.)"""

    def __init__(self, source: str) -> None:
        self._source = (source, 0)
        super().__init__()

    def init_poolmanager(self, *args: Any, **kwargs: Any) -> None:
        kwargs["source_address"] = self._source
        super().init_poolmanager(*args, **kwargs)

    def proxy_manager_for(self, proxy: str, **kwargs: Any) -> Any:
        kwargs["source_address"] = self._source
        return super().proxy_manager_for(proxy, **kwargs)


def requests_get(proxy: ProxyProcess, url: str, *, source: str) -> requests.Response:
    """A GET with requests through the proxy, from local address `source`."""
    with requests_session(proxy.proxy_url) as session:
        session.mount("http://", SourceAddressAdapter(source))
        session.mount("https://", SourceAddressAdapter(source))
        return session.get(url, timeout=10)


def records_by(proxy: ProxyProcess, count: int, key: Callable[[dict[str, Any]], Any]) -> set[Any]:
    return {key(r) for r in proxy.wait_for_records(count)}


# ---------------------------------------------------------------------------------------------
# By source address
# ---------------------------------------------------------------------------------------------


def test_source_cidr_rules_give_each_client_address_its_own_policy(
    sites: Sites, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(
        policies={"team-a": sites.policy(["a.test"]), "team-b": sites.policy(["b.test"])},
        clients=[
            {"source": f"{CLIENT_A}/32", "policy": "team-a"},
            {"source": [f"{CLIENT_B}/32", "10.0.0.0/8"], "policy": "team-b"},
        ],
    )
    web = sites.web
    # Client A with curl --interface.
    own = curl(["--interface", CLIENT_A, web.url("/", "a.test")], proxy=proxy.proxy_address)
    assert (own.exit_code, own.status, own.text) == (0, 200, "hello from web")
    other = curl(["--interface", CLIENT_A, web.url("/", "b.test")], proxy=proxy.proxy_address)
    assert other.status == 403
    assert other.header("x-egressgate-reason") == "host-not-allowed"
    assert other.header("x-egressgate-policy") == "team-a"
    # Client B with Python requests bound to its address.
    own_b = requests_get(proxy, web.url("/", "b.test"), source=CLIENT_B)
    assert (own_b.status_code, own_b.text) == (200, "hello from web")
    other_b = requests_get(proxy, web.url("/", "a.test"), source=CLIENT_B)
    assert other_b.status_code == 403
    assert other_b.headers["x-egressgate-policy"] == "team-b"
    # Tunnels follow the same rules.
    data = payload(4096, seed=1)
    with EchoTunnel(proxy.proxy_address, sites.echo.authority("a.test"), source=CLIENT_A) as t:
        assert t.status == 200
        assert t.roundtrip(data) == data
    with EchoTunnel(proxy.proxy_address, sites.echo.authority("a.test"), source=CLIENT_B) as t:
        assert t.status == 403
        assert t.head.header("x-egressgate-policy") == "team-b"

    # The access log and the metrics name the client's policy.
    seen = records_by(proxy, 6, lambda r: (r["client"], r["policy"], r["kind"], r["decision"]))
    assert seen == {
        (CLIENT_A, "team-a", "http", "allow"),
        (CLIENT_A, "team-a", "http", "deny"),
        (CLIENT_A, "team-a", "tunnel", "allow"),
        (CLIENT_B, "team-b", "http", "allow"),
        (CLIENT_B, "team-b", "http", "deny"),
        (CLIENT_B, "team-b", "tunnel", "deny"),
    }
    snapshot = wait_for_metric(proxy, "egressgate_requests_total", 6)
    assert snapshot.value("egressgate_requests_total", policy="team-a", decision="allow") == 2
    assert snapshot.value("egressgate_requests_total", policy="team-a", decision="deny") == 1
    assert snapshot.value("egressgate_requests_total", policy="team-b", decision="allow") == 1
    assert snapshot.value("egressgate_requests_total", policy="team-b", decision="deny") == 2
    assert snapshot.value("egressgate_requests_total", policy="default") == 0


def test_first_matching_rule_wins(sites: Sites, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(
        policies={"narrow": sites.policy(["a.test"]), "wide": sites.policy(["a.test", "b.test"])},
        clients=[
            {"source": f"{CLIENT_A}/32", "policy": "narrow"},
            {"source": "127.0.0.0/8", "policy": "wide"},
        ],
    )
    narrow = proxied_get(proxy.proxy_address, sites.web.url("/", "b.test"), source=CLIENT_A)
    assert (narrow.status, narrow.header("x-egressgate-policy")) == (403, "narrow")
    wide = proxied_get(proxy.proxy_address, sites.web.url("/", "b.test"), source=CLIENT_B)
    assert wide.status == 200


@pytest.mark.parametrize("default_policy", [None, "team-b"], ids=["built-in", "configured"])
def test_clients_matching_no_rule_get_the_default_policy(
    sites: Sites, proxy_factory: ProxyFactory, default_policy: str | None
) -> None:
    keys: dict[str, Any] = {
        "policies": {"team-a": sites.policy(["a.test"]), "team-b": sites.policy(["b.test"])},
        "clients": [{"source": f"{CLIENT_A}/32", "policy": "team-a"}],
    }
    if default_policy is not None:
        keys["default_policy"] = default_policy
    proxy = proxy_factory(**keys)
    for source in (STRANGER, "127.0.0.1"):
        a = proxied_get(proxy.proxy_address, sites.web.url("/", "a.test"), source=source)
        b = proxied_get(proxy.proxy_address, sites.web.url("/", "b.test"), source=source)
        if default_policy is None:
            # The top-level `allow: []` is the default policy: nothing is allowed.
            assert (a.status, a.header("x-egressgate-policy")) == (403, "default")
            assert (b.status, b.header("x-egressgate-policy")) == (403, "default")
        else:
            assert (a.status, a.header("x-egressgate-policy")) == (403, "team-b")
            assert b.status == 200
    policies = records_by(proxy, 4, lambda r: r["policy"])
    assert policies == {default_policy or "default"}


# ---------------------------------------------------------------------------------------------
# Proxy users
# ---------------------------------------------------------------------------------------------


@pytest.fixture
def users_proxy(sites: Sites, proxy_factory: ProxyFactory, tmp_path: Path) -> ProxyProcess:
    users = tmp_path / "users.txt"
    users.write_text(
        f"# proxy users\nalice:{ALICE_PASSWORD}\n\nbob:{BOB_PASSWORD}\n", encoding="utf-8"
    )
    return proxy_factory(
        auth={"users_file": str(users)},
        policies={"alice-p": sites.policy(["a.test"]), "bob-p": sites.policy(["b.test"])},
        clients=[
            {"user": "alice", "policy": "alice-p"},
            {"user": ["bob"], "policy": "bob-p"},
        ],
    )


def assert_407(response_status: int, header: Callable[[str], str | None]) -> None:
    assert response_status == 407
    assert header("proxy-authenticate") == 'Basic realm="egressgate"'
    assert header("x-egressgate-reason") == "proxy-auth-required"


def test_missing_credentials_get_407_with_proxy_authenticate_when_user_rules_exist(
    sites: Sites, users_proxy: ProxyProcess
) -> None:
    response = proxied_get(users_proxy.proxy_address, sites.web.url("/", "a.test"))
    assert_407(response.status, response.header)
    with EchoTunnel(users_proxy.proxy_address, sites.echo.authority("a.test")) as tunnel:
        assert_407(tunnel.status, tunnel.head.header)
    assert sites.web.request_records() == []
    sites.echo.assert_untouched()
    records = users_proxy.wait_for_records(2)
    assert {(r["status"], r["reason"], r["user"]) for r in records} == {
        (407, "proxy-auth-required", None)
    }


@pytest.mark.parametrize(
    "credentials",
    [
        basic("alice", WRONG_PASSWORD),
        basic("mallory", ALICE_PASSWORD),
        basic("alice", ""),
        ("Proxy-Authorization", "Bearer " + ALICE_PASSWORD),
        ("Proxy-Authorization", "Basic !!not-base64!!"),
    ],
    ids=["wrong-password", "unknown-user", "empty-password", "not-basic", "malformed"],
)
def test_wrong_or_malformed_credentials_get_407(
    sites: Sites, users_proxy: ProxyProcess, credentials: tuple[str, str]
) -> None:
    response = proxied_get(
        users_proxy.proxy_address, sites.web.url("/", "a.test"), headers=[credentials]
    )
    assert_407(response.status, response.header)
    with EchoTunnel(
        users_proxy.proxy_address, sites.echo.authority("a.test"), headers=[credentials]
    ) as tunnel:
        assert_407(tunnel.status, tunnel.head.header)
    assert sites.web.request_records() == []
    records = users_proxy.wait_for_records(2)
    assert {r["user"] for r in records} == {None}
    assert ALICE_PASSWORD not in proxy_text_output(users_proxy)


def test_valid_credentials_select_the_users_policy_and_the_password_never_leaks(
    sites: Sites, users_proxy: ProxyProcess
) -> None:
    proxy = users_proxy
    alice, bob = basic("alice", ALICE_PASSWORD), basic("bob", BOB_PASSWORD)
    web = sites.web
    ok = proxied_get(proxy.proxy_address, web.url("/echo-headers", "a.test"), headers=[alice])
    assert ok.status == 200
    refused = proxied_get(proxy.proxy_address, web.url("/", "b.test"), headers=[alice])
    assert (refused.status, refused.header("x-egressgate-policy")) == (403, "alice-p")
    assert proxied_get(proxy.proxy_address, web.url("/", "b.test"), headers=[bob]).status == 200
    wrong = proxied_get(
        proxy.proxy_address, web.url("/", "a.test"), headers=[basic("bob", WRONG_PASSWORD)]
    )
    assert wrong.status == 407
    data = payload(2048, seed=2)
    with EchoTunnel(proxy.proxy_address, sites.echo.authority("a.test"), headers=[alice]) as t:
        assert t.status == 200
        assert t.roundtrip(data) == data

    # The destination never sees the proxy credentials.
    for record in web.request_records():
        assert record.header("proxy-authorization") is None, record
    assert b"Proxy-Authorization" not in ok.body
    (tunnelled,) = sites.echo.wait_for_closed(1)
    assert (tunnelled.bytes_received, tunnelled.sha256) == (len(data), sha256_hex(data))

    records = proxy.wait_for_records(5)
    seen = {(r["user"], r["policy"], r["host"], r["status"]) for r in records}
    assert seen == {
        ("alice", "alice-p", "a.test", 200),
        ("alice", "alice-p", "b.test", 403),
        ("bob", "bob-p", "b.test", 200),
        (None, None, "a.test", 407),
    }
    output = proxy_text_output(proxy)
    for secret in (ALICE_PASSWORD, BOB_PASSWORD, WRONG_PASSWORD):
        assert secret not in output
        for user in ("alice", "bob"):
            assert basic(user, secret)[1].split()[1] not in output


def test_curl_proxy_user_and_proxy_anyauth_work_for_http_and_https(
    sites: Sites, users_proxy: ProxyProcess
) -> None:
    proxy = users_proxy
    plain = curl(
        ["-U", f"alice:{ALICE_PASSWORD}", sites.web.url("/", "a.test")], proxy=proxy.proxy_address
    )
    assert (plain.exit_code, plain.status) == (0, 200)
    # --proxy-anyauth: curl asks without credentials, learns Basic from the 407, retries.
    anyauth = curl(
        ["--proxy-anyauth", "-U", f"bob:{BOB_PASSWORD}", sites.web.url("/", "b.test")],
        proxy=proxy.proxy_address,
    )
    assert (anyauth.exit_code, anyauth.status) == (0, 200)
    assert [r.status for r in anyauth.responses] == [407, 200]
    # HTTPS through a CONNECT tunnel, credentials on the CONNECT.
    https = curl(
        ["-U", f"alice:{ALICE_PASSWORD}", sites.tls_web.url("/", "a.test")],
        proxy=proxy.proxy_address,
        cacert=sites.test_ca.ca_pem_path,
    )
    assert (https.exit_code, https.connect_status, https.status) == (0, 200, 200)
    assert https.text == "hello from tls-web"

    records = proxy.wait_for_records(4)
    assert [(r["user"], r["status"]) for r in records] == [
        ("alice", 200),
        (None, 407),
        ("bob", 200),
        ("alice", 200),
    ]
    assert records[-1]["kind"] == "tunnel"
    output = proxy_text_output(proxy)
    assert ALICE_PASSWORD not in output
    assert BOB_PASSWORD not in output


def test_users_from_an_environment_variable(sites: Sites, proxy_factory: ProxyFactory) -> None:
    proxy = proxy_factory(
        auth={"users_env": "EGRESSGATE_TEST_USERS", "realm": "corp egress"},
        policies={"carol-p": sites.policy(["c.test"])},
        clients=[{"user": "carol", "policy": "carol-p"}],
        env={"EGRESSGATE_TEST_USERS": f"carol:{CAROL_PASSWORD}\n"},
    )
    ok = curl(
        ["--proxy-user", f"carol:{CAROL_PASSWORD}", sites.web.url("/", "c.test")],
        proxy=proxy.proxy_address,
    )
    assert (ok.exit_code, ok.status) == (0, 200)
    anonymous = proxied_get(proxy.proxy_address, sites.web.url("/", "c.test"))
    assert anonymous.status == 407
    assert anonymous.header("proxy-authenticate") == 'Basic realm="corp egress"'
    wrong = proxied_get(
        proxy.proxy_address, sites.web.url("/", "c.test"), headers=[basic("carol", "c4rol")]
    )
    assert wrong.status == 407
    records = proxy.wait_for_records(3)
    assert [(r["user"], r["policy"], r["status"]) for r in records] == [
        ("carol", "carol-p", 200),
        (None, None, 407),
        (None, None, 407),
    ]
    assert CAROL_PASSWORD not in proxy_text_output(proxy)


# ---------------------------------------------------------------------------------------------
# Report mode, per policy
# ---------------------------------------------------------------------------------------------


def test_report_mode_policy_lets_refusals_through_and_logs_and_counts_them(
    sites: Sites, proxy_factory: ProxyFactory
) -> None:
    proxy = proxy_factory(
        policies={
            "audit": sites.policy(["a.test"], mode="report"),
            "strict": sites.policy(["a.test"]),
        },
        clients=[
            {"source": f"{CLIENT_A}/32", "policy": "audit"},
            {"source": f"{CLIENT_B}/32", "policy": "strict"},
        ],
    )
    web = sites.web
    reported = proxied_get(proxy.proxy_address, web.url("/", "b.test"), source=CLIENT_A)
    assert (reported.status, reported.body) == (200, b"hello from web")
    assert reported.header("x-egressgate-reason") is None
    assert web.request_records(path="/")[0].header("host") == f"b.test:{web.port}"
    allowed = proxied_get(proxy.proxy_address, web.url("/", "a.test"), source=CLIENT_A)
    assert allowed.status == 200
    data = payload(3000, seed=4)
    with EchoTunnel(proxy.proxy_address, sites.echo.authority("b.test"), source=CLIENT_A) as t:
        assert t.status == 200
        assert t.roundtrip(data) == data
    enforced = proxied_get(proxy.proxy_address, web.url("/", "b.test"), source=CLIENT_B)
    assert (enforced.status, enforced.header("x-egressgate-policy")) == (403, "strict")

    records = proxy.wait_for_records(4)
    by_key = {(r["client"], r["kind"], r["host"]): r for r in records}
    http_report = by_key[(CLIENT_A, "http", "b.test")]
    assert (http_report["decision"], http_report["reason"], http_report["policy"]) == (
        "report",
        "host-not-allowed",
        "audit",
    )
    assert http_report["status"] == 200
    assert "b.test" in (http_report["detail"] or "")
    tunnel_report = by_key[(CLIENT_A, "tunnel", "b.test")]
    assert (tunnel_report["decision"], tunnel_report["reason"]) == ("report", "host-not-allowed")
    assert tunnel_report["bytes_up"] == tunnel_report["bytes_down"] == len(data)
    assert by_key[(CLIENT_A, "http", "a.test")]["decision"] == "allow"
    assert by_key[(CLIENT_B, "http", "b.test")]["decision"] == "deny"

    snapshot = wait_for_metric(proxy, "egressgate_requests_total", 4)
    counted = "egressgate_requests_total"
    would_refuse = {"reason": "host-not-allowed"}
    assert snapshot.value(counted, decision="report", policy="audit", **would_refuse) == 2
    assert snapshot.value(counted, kind="http", decision="report", policy="audit") == 1
    assert snapshot.value(counted, decision="allow", policy="audit") == 1
    assert snapshot.value(counted, decision="deny", policy="strict", **would_refuse) == 1
    assert scrape(proxy).value(counted, decision="deny", policy="audit") == 0


def test_rotated_password_in_the_users_file_applies_after_sighup(
    sites: Sites, users_proxy: ProxyProcess, tmp_path: Path
) -> None:
    proxy = users_proxy
    url = sites.web.url("/", "a.test")
    old, new = basic("alice", ALICE_PASSWORD), basic("alice", "rotated-" + ALICE_PASSWORD)
    assert proxied_get(proxy.proxy_address, url, headers=[old]).status == 200
    users = tmp_path / "users.txt"
    users.write_text(f"alice:rotated-{ALICE_PASSWORD}\nbob:{BOB_PASSWORD}\n", encoding="utf-8")
    mark = len(proxy.json_events())
    proxy.signal(signal.SIGHUP)  # the users file is not watched: SIGHUP re-reads it
    event = proxy.wait_for_event("reloaded", 10, after=mark)
    assert event["generation"] == 2
    assert proxied_get(proxy.proxy_address, url, headers=[old]).status == 407
    assert proxied_get(proxy.proxy_address, url, headers=[new]).status == 200
    assert "rotated-" + ALICE_PASSWORD not in proxy_text_output(proxy)


def test_source_rules_and_user_rules_together_ask_only_unmatched_anonymous_clients_to_log_in(
    sites: Sites, proxy_factory: ProxyFactory, tmp_path: Path
) -> None:
    users = tmp_path / "users.txt"
    users.write_text(f"alice:{ALICE_PASSWORD}\n", encoding="utf-8")
    proxy = proxy_factory(
        auth={"users_file": str(users)},
        policies={
            "trusted-host": sites.policy(["b.test"]),
            "alice-p": sites.policy(["a.test"]),
            "alice-on-a": sites.policy(["c.test"]),
        },
        clients=[
            {"source": f"{CLIENT_A}/32", "user": "alice", "policy": "alice-on-a"},  # both
            {"source": f"{CLIENT_A}/32", "policy": "trusted-host"},
            {"user": "alice", "policy": "alice-p"},
        ],
    )
    web, alice = sites.web, basic("alice", ALICE_PASSWORD)
    # Anonymous from the trusted address: its source rule applies, no 407.
    trusted = proxied_get(proxy.proxy_address, web.url("/", "b.test"), source=CLIENT_A)
    assert trusted.status == 200
    # Alice from that address: the rule naming both matches first.
    both = proxied_get(
        proxy.proxy_address, web.url("/", "c.test"), source=CLIENT_A, headers=[alice]
    )
    assert both.status == 200
    # Anonymous from elsewhere: asked to log in; alice from elsewhere: her own policy.
    anonymous = proxied_get(proxy.proxy_address, web.url("/", "a.test"), source=CLIENT_B)
    assert anonymous.status == 407
    logged_in = proxied_get(
        proxy.proxy_address, web.url("/", "a.test"), source=CLIENT_B, headers=[alice]
    )
    assert logged_in.status == 200
    records = proxy.wait_for_records(4)
    assert [(r["client"], r["user"], r["policy"], r["status"]) for r in records] == [
        (CLIENT_A, None, "trusted-host", 200),
        (CLIENT_A, "alice", "alice-on-a", 200),
        (CLIENT_B, None, None, 407),
        (CLIENT_B, "alice", "alice-p", 200),
    ]
