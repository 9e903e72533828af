"""egressgate.tools.verify, the pure parts: environment analysis, URL and response parsing, the
classification of answers and socket errors, and the rendered checklist. Tables, no sockets (the
network checks run against a real proxy in tests/integration/test_cli_verify.py and, with a real
NetworkPolicy-like firewall, in tests/e2e/test_recipe_netns.py).
"""

from __future__ import annotations

import errno
import json
import socket
import ssl
from collections.abc import Mapping

import pytest

from egressgate.tools import verify
from egressgate.tools.verify import (
    Check,
    ErrorKind,
    Options,
    Report,
    ResponseHead,
    Status,
    check_environment,
    classify_allowed,
    classify_denied,
    classify_error,
    parse_response_head,
)

PROXY = "http://egressgate.egress.svc.cluster.local:3128"
NO_PROXY = "localhost,127.0.0.1,::1,.svc,.cluster.local"
# What `egressgate env --proxy PROXY` prints: every variable in both cases, identical.
RECIPE = {
    "HTTP_PROXY": PROXY,
    "HTTPS_PROXY": PROXY,
    "NO_PROXY": NO_PROXY,
    "http_proxy": PROXY,
    "https_proxy": PROXY,
    "no_proxy": NO_PROXY,
}


def _env(**changes: str | None) -> dict[str, str]:
    """RECIPE with variables replaced (a value) or removed (None)."""
    env = dict(RECIPE)
    for name, value in changes.items():
        if value is None:
            env.pop(name, None)
        else:
            env[name] = value
    return env


def _by_name(checks: list[Check], name: str) -> Check:
    (found,) = [c for c in checks if c.name == name]
    return found


def _urls(*texts: str) -> list[verify.Url]:
    return [verify.parse_url(t) for t in texts]


# -- (a) the environment ------------------------------------------------------------------------


def test_the_recipe_environment_passes_every_check() -> None:
    checks = check_environment(RECIPE, _urls("https://api.example.com/", "http://example.org/"))
    assert [(c.name, c.status) for c in checks] == [
        ("env.HTTP_PROXY", Status.PASS),
        ("env.HTTPS_PROXY", Status.PASS),
        ("env.NO_PROXY", Status.PASS),
        ("env.proxy-url", Status.PASS),
        ("env.no-proxy", Status.PASS),
        ("env.proxy-host", Status.PASS),
        ("env.routing", Status.PASS),
    ]
    assert _by_name(checks, "env.proxy-url").detail == (
        "http://egressgate.egress.svc.cluster.local:3128 "
        "(host egressgate.egress.svc.cluster.local, port 3128)"
    )
    assert "is in NO_PROXY: fine" in _by_name(checks, "env.proxy-host").detail


@pytest.mark.parametrize(
    ("changes", "name", "detail"),
    [
        pytest.param(
            {"HTTP_PROXY": None},
            "env.HTTP_PROXY",
            "only http_proxy is set (HTTP_PROXY is not): not seen by global-agent, which read "
            "only HTTP_PROXY; set both, identical",
            id="lowercase-only",
        ),
        pytest.param(
            {"http_proxy": None},
            "env.HTTP_PROXY",
            "only HTTP_PROXY is set (http_proxy is not): not seen by curl, wget, git, which read "
            "only http_proxy; set both, identical",
            id="uppercase-only",
        ),
        pytest.param(
            {"HTTP_PROXY": "", "http_proxy": ""},
            "env.HTTP_PROXY",
            "neither HTTP_PROXY nor http_proxy is set: every runtime connects directly, which "
            "the NetworkPolicy blocks",
            id="empty-is-unset",
        ),
        pytest.param(
            {"HTTPS_PROXY": None, "https_proxy": None},
            "env.HTTPS_PROXY",
            "neither HTTPS_PROXY nor https_proxy is set",
            id="https-unset",
        ),
        pytest.param(
            {"NO_PROXY": None, "no_proxy": None},
            "env.NO_PROXY",
            "neither NO_PROXY nor no_proxy is set: in-cluster and localhost requests go to the "
            "proxy, which refuses them",
            id="no-proxy-unset",
        ),
        pytest.param(
            {"NO_PROXY": "localhost"},
            "env.NO_PROXY",
            "NO_PROXY and no_proxy differ, so runtimes disagree: NO_PROXY wins in go, "
            "global-agent; no_proxy wins in curl, wget, git, pip, urllib, requests, httpx, "
            "aiohttp-trust-env, undici, axios, ruby; make them identical",
            id="cases-differ",
        ),
    ],
)
def test_variable_problems_fail_with_the_runtimes_named(
    changes: Mapping[str, str | None], name: str, detail: str
) -> None:
    check = _by_name(check_environment(_env(**changes)), name)
    assert check.status is Status.FAIL
    assert check.detail.startswith(detail), check.detail


def test_a_variable_missing_in_one_case_fails_even_when_no_measured_runtime_cares() -> None:
    # https_proxy: every measured reader of HTTPS_PROXY also reads https_proxy; the recipe still
    # wants both, because tools outside the measured set differ.
    check = _by_name(check_environment(_env(HTTPS_PROXY=None)), "env.HTTPS_PROXY")
    assert check.status is Status.FAIL
    assert "only https_proxy is set" in check.detail


@pytest.mark.parametrize(
    ("proxy", "status", "detail"),
    [
        ("http://10.96.0.10:3128", Status.PASS, "http://10.96.0.10:3128 (host 10.96.0.10, port"),
        ("http://[fd00::1]:3128", Status.PASS, "http://[fd00::1]:3128 (host fd00::1, port 3128)"),
        ("10.96.0.10:3128", Status.FAIL, "has no scheme"),
        ("https://10.96.0.10:3128", Status.FAIL, "an https:// proxy URL means TLS to the proxy"),
        ("socks5://10.96.0.10:1080", Status.FAIL, "scheme 'socks5' is not supported"),
        ("http://10.96.0.10", Status.FAIL, "has no port"),
        ("http://10.96.0.10:3128/path", Status.FAIL, "must not have a path"),
        ("http://u:p%40ss@10.96.0.10:3128", Status.WARN, "percent-encoding"),
    ],
)
def test_proxy_url_rules(proxy: str, status: Status, detail: str) -> None:
    env = _env(HTTP_PROXY=proxy, http_proxy=proxy, HTTPS_PROXY=proxy, https_proxy=proxy)
    check = _by_name(check_environment(env), "env.proxy-url")
    assert check.status is status, check.detail
    assert detail in check.detail
    assert "p%40ss" not in check.detail  # credentials are never printed


@pytest.mark.parametrize(
    ("value", "status", "details"),
    [
        (NO_PROXY, Status.PASS, ["go direct in every runtime measured"]),
        (
            "localhost,127.0.0.1,.cluster.local",
            Status.WARN,
            [
                "http://my-service.my-namespace.svc/ goes to the proxy in every runtime that "
                "reads the variables (13 measured) (add `.svc`)"
            ],
        ),
        (
            "localhost,.svc,.cluster.local",
            Status.WARN,
            ["http://127.0.0.1/ goes to the proxy in", "global-agent (add `127.0.0.1`)"],
        ),
        (
            "127.0.0.1,*.svc,*.cluster.local",
            Status.WARN,
            ["http://localhost/ goes to the proxy in", "(add `.svc`)", "`*.svc`"],
        ),
        ("*", Status.FAIL, ["NO_PROXY=* sends every request directly"]),
    ],
)
def test_no_proxy_coverage(value: str, status: Status, details: list[str]) -> None:
    check = _by_name(check_environment(_env(NO_PROXY=value, no_proxy=value)), "env.no-proxy")
    assert check.status is status, check.detail
    for text in details:
        assert text in check.detail


def test_no_proxy_coverage_names_the_misrouting_runtimes_per_entry() -> None:
    check = _by_name(
        check_environment(_env(NO_PROXY="localhost,127.0.0.1", no_proxy="localhost,127.0.0.1")),
        "env.no-proxy",
    )
    misrouted = check.data["misrouted"]
    assert set(misrouted) == {".svc", ".cluster.local"}
    assert "curl" in misrouted[".svc"]
    assert "go" in misrouted[".cluster.local"]


def test_the_proxy_host_outside_no_proxy_is_explained_not_failed() -> None:
    proxy = "http://203.0.113.7:3128"
    env = _env(HTTP_PROXY=proxy, http_proxy=proxy, HTTPS_PROXY=proxy, https_proxy=proxy)
    check = _by_name(check_environment(env), "env.proxy-host")
    assert check.status is Status.PASS
    assert check.detail.startswith(
        "203.0.113.7 is not in NO_PROXY: fine for proxying (NO_PROXY never applies to the "
        "connection to the proxy)"
    )
    assert "add `203.0.113.7` if the app calls the proxy's own endpoints" in check.detail


def test_routing_warns_when_no_proxy_sends_a_tested_url_around_the_proxy() -> None:
    value = NO_PROXY + ",.example.com"
    env = _env(NO_PROXY=value, no_proxy=value)
    urls = _urls("https://api.example.com/", "http://www.example.com/", "https://github.com/")
    check = _by_name(check_environment(env, urls), "env.routing")
    assert check.status is Status.WARN
    assert check.detail.startswith(
        "https://api.example.com/, http://www.example.com/ go DIRECT, not via the proxy, in "
        "every runtime that reads the variables"
    )
    assert "github.com" not in check.detail
    assert _by_name(check_environment(env), "env.routing").status is Status.SKIP


def test_lowercase_only_variables_send_urls_direct_in_the_runtimes_that_miss_them() -> None:
    env = {k: v for k, v in RECIPE.items() if k.islower()}
    check = _by_name(check_environment(env, _urls("https://api.github.com/")), "env.routing")
    assert check.status is Status.WARN
    assert "go DIRECT, not via the proxy, in global-agent" in check.detail


def test_with_proxy_override_and_no_variables_the_environment_is_skipped() -> None:
    (check,) = check_environment({"PATH": "/bin"}, proxy_override="http://10.0.0.1:3128")
    assert (check.name, check.status) == ("env", Status.SKIP)
    assert "debug container" in check.detail
    assert len(check_environment(RECIPE, proxy_override="http://10.0.0.1:3128")) == 7


# -- values -------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("http://a.test/", ("http", "a.test", 80, "/", "a.test")),
        ("https://A.test:8443/x?y=1", ("https", "a.test", 8443, "/x?y=1", "a.test:8443")),
        ("https://[2001:db8::1]/", ("https", "2001:db8::1", 443, "/", "[2001:db8::1]")),
        ("http://a.test:80", ("http", "a.test", 80, "/", "a.test")),
        ("http://u:p@a.test/x#frag", ("http", "a.test", 80, "/x", "a.test")),
        ("https://bücher.test/ä ö", ("https", "xn--bcher-kva.test", 443, "/%C3%A4%20%C3%B6", "")),
    ],
)
def test_parse_url(text: str, expected: tuple[str, str, int, str, str]) -> None:
    url = verify.parse_url(text)
    scheme, host, port, path, host_header = expected
    assert (url.scheme, url.host, url.port, url.path) == (scheme, host, port, path)
    assert url.host_header == (host_header or host)
    assert url.absolute == f"{scheme}://{host_header or host}{path}"


@pytest.mark.parametrize(
    ("text", "message"),
    [
        ("ftp://a.test/", "http:// or https://"),
        ("a.test", "http:// or https://"),
        ("http://", "no host"),
    ],
)
def test_parse_url_refuses(text: str, message: str) -> None:
    with pytest.raises(ValueError, match=message):
        verify.parse_url(text)


@pytest.mark.parametrize(
    ("text", "expected"),
    [("203.0.113.5:443", ("203.0.113.5", 443)), ("[2001:db8::1]:80", ("2001:db8::1", 80))],
)
def test_parse_hostport(text: str, expected: tuple[str, int]) -> None:
    assert verify.parse_hostport(text) == expected


@pytest.mark.parametrize("text", ["a.test", "2001:db8::1:80", "a.test:0", "a.test:x", ":443"])
def test_parse_hostport_refuses(text: str) -> None:
    with pytest.raises(ValueError, match=r"HOST:PORT|brackets|port must"):
        verify.parse_hostport(text)


def test_proxy_endpoint_credentials_are_decoded_sent_and_never_displayed() -> None:
    endpoint = verify.parse_proxy_url("http://app%2D1:s3cret@10.0.0.1:3128")
    assert (endpoint.username, endpoint.password) == ("app-1", "s3cret")
    assert endpoint.authorization() == "Basic YXBwLTE6czNjcmV0"
    assert endpoint.display == "http://***@10.0.0.1:3128"
    assert verify.parse_proxy_url("http://10.0.0.1:3128").authorization() is None


def test_which_proxy_and_which_direct_target() -> None:
    env = _env(http_proxy="http://lower:1", HTTP_PROXY="http://upper:2", https_proxy=None)
    assert verify.proxy_for("http", env, None) == "http://lower:1"  # curl/Python order
    assert verify.proxy_for("https", env, None) == PROXY  # HTTPS_PROXY when https_proxy unset
    assert verify.proxy_for("https", env, "http://p:3") == "http://p:3"
    assert verify.proxy_for("http", {}, None) is None
    urls = _urls("https://api.test:8443/", "http://other.test/")
    assert verify.direct_target(Options(), urls) == ("api.test", 8443)
    assert verify.direct_target(Options(direct="[::1]:9"), urls) == ("::1", 9)
    assert verify.direct_target(Options(), []) is None


# -- responses ----------------------------------------------------------------------------------

REFUSAL = (
    b"HTTP/1.1 403 Forbidden\r\nContent-Type: text/plain; charset=utf-8\r\nContent-Length: 10\r\n"
    b"X-Egressgate-Reason: host-not-allowed\r\nX-Egressgate-Policy: default\r\n"
    b"Connection: close"
)


def test_parse_response_head() -> None:
    head = parse_response_head(REFUSAL)
    assert (head.status, head.phrase, head.reason_code) == (403, "Forbidden", "host-not-allowed")
    assert head.header("x-egressgate-policy") == "default"
    assert parse_response_head(b"HTTP/1.0 200\r\n").phrase == ""
    for bad in (b"SSH-2.0-OpenSSH_9.2", b"HTTP/1.1 abc OK", b""):
        with pytest.raises(ValueError, match="not an HTTP response"):
            parse_response_head(bad)


def _head(status: int, *headers: tuple[str, str], body: bytes = b"") -> ResponseHead:
    return ResponseHead(status, {200: "OK", 403: "Forbidden"}.get(status, "X"), headers, body)


REASON = ("X-Egressgate-Reason", "host-not-allowed")
POLICY = ("X-Egressgate-Policy", "default")
BODY = b"egressgate: 403 host-not-allowed\nhost: a.test\ndetail: a.test is not on the allowlist\n"


@pytest.mark.parametrize(
    ("head", "tunnel", "status", "detail"),
    [
        (_head(200), False, Status.PASS, "200 OK in 12 ms through the proxy"),
        (_head(301), False, Status.PASS, "301 X in 12 ms through the proxy"),
        (
            _head(404),
            False,
            Status.PASS,
            "the proxy forwarded it; the origin itself answered 404 X in 12 ms",
        ),
        (
            _head(500),
            True,
            Status.PASS,
            "tunnel opened and TLS verified; the origin itself answered 500",
        ),
        (
            _head(403, REASON, POLICY, body=BODY),
            False,
            Status.FAIL,
            "refused by the proxy: 403 host-not-allowed (policy default): a.test is not on the "
            "allowlist",
        ),
        (
            _head(502, ("X-Egressgate-Reason", "dns-nxdomain")),
            False,
            Status.FAIL,
            "allowed, but the proxy could not get an answer: 502 dns-nxdomain: ",
        ),
        (
            _head(407, ("X-Egressgate-Reason", "proxy-auth-required")),
            False,
            Status.FAIL,
            "the proxy wants credentials (407)",
        ),
    ],
)
def test_classify_allowed(head: ResponseHead, tunnel: bool, status: Status, detail: str) -> None:
    got_status, got_detail = classify_allowed(head, 12.3, tunnel=tunnel)
    assert got_status is status
    assert got_detail.startswith(detail), got_detail


@pytest.mark.parametrize(
    ("head", "tunnel", "status", "detail"),
    [
        (
            _head(403, REASON, POLICY),
            False,
            Status.PASS,
            "refused by the proxy: 403 host-not-allowed (policy default): the destination host "
            "is not on the allowlist",
        ),
        (
            _head(403, ("X-Egressgate-Reason", "future-reason")),
            True,
            Status.PASS,
            "refused by the proxy: 403 future-reason: unknown reason code",
        ),
        (
            _head(403),
            False,
            Status.FAIL,
            "403 without X-Egressgate-Reason: the ORIGIN refused it, not the proxy — the proxy "
            "let the request through",
        ),
        (_head(200), True, Status.FAIL, "the proxy opened a tunnel to it (200)"),
        (
            _head(200),
            False,
            Status.FAIL,
            "the proxy let it through: the origin answered 200 OK (is the policy in report mode",
        ),
        (
            _head(504, ("X-Egressgate-Reason", "upstream-timeout")),
            False,
            Status.FAIL,
            "not refused by policy: the proxy allowed it and then failed: 504 upstream-timeout",
        ),
        (
            _head(407, ("X-Egressgate-Reason", "proxy-auth-required")),
            False,
            Status.FAIL,
            "the proxy wants credentials (407) before it decides",
        ),
    ],
)
def test_classify_denied(head: ResponseHead, tunnel: bool, status: Status, detail: str) -> None:
    got_status, got_detail = classify_denied(head, tunnel=tunnel)
    assert got_status is status
    assert got_detail.startswith(detail), got_detail


@pytest.mark.parametrize(
    ("exc", "kind", "text"),
    [
        (ConnectionRefusedError(errno.ECONNREFUSED, "refused"), ErrorKind.REFUSED, "refused"),
        (TimeoutError("timed out"), ErrorKind.TIMEOUT, "timed out after 2.5 s"),
        (OSError(errno.EHOSTUNREACH, "x"), ErrorKind.UNREACHABLE, "host unreachable"),
        (OSError(errno.ENETUNREACH, "x"), ErrorKind.UNREACHABLE, "network unreachable"),
        (OSError(errno.EPERM, "x"), ErrorKind.BLOCKED, "blocked by a firewall rule"),
        (ConnectionResetError(errno.ECONNRESET, "x"), ErrorKind.RESET, "reset"),
        (socket.gaierror(socket.EAI_NONAME, "Name or service not known"), ErrorKind.DNS, "lookup"),
        (ssl.SSLError(1, "bad"), ErrorKind.TLS, "TLS failed"),
        (ValueError("odd"), ErrorKind.OTHER, "ValueError: odd"),
    ],
)
def test_classify_error(exc: BaseException, kind: ErrorKind, text: str) -> None:
    got_kind, got_text = classify_error(exc, 2.5)
    assert got_kind is kind
    assert text in got_text


# -- output -------------------------------------------------------------------------------------


def _report() -> Report:
    return Report(
        (
            Check("env.HTTP_PROXY", "HTTP_PROXY / http_proxy", Status.PASS, "identical"),
            Check("env.no-proxy", "NO_PROXY covers", Status.WARN, "add `.svc`"),
            Check("proxy.reachable", "proxy reachable", Status.PASS, "200", "10.0.0.1:3128"),
            Check("allowed", "allowed", Status.SKIP, "no proxy", "https://a.test/"),
            Check("denied", "denied", Status.PASS, "403", "http://d.test/", {"reason": "x"}),
            Check("bypass", "direct", Status.FAIL, "not restricted", "1.2.3.4:443"),
        )
    )


def test_render_text_groups_marks_and_summary() -> None:
    text = verify.render_text(_report())
    assert text.splitlines() == [
        "Environment (the app's proxy variables)",
        "  ✓ HTTP_PROXY / http_proxy: identical",
        "  ! NO_PROXY covers: add `.svc`",
        "Proxy",
        "  ✓ proxy reachable: 200",
        "Allowed URLs (must work through the proxy)",
        "  \u2013 https://a.test/: no proxy",  # en dash
        "Denied URLs (must be refused by the proxy)",
        "  ✓ http://d.test/: 403",
        "Bypass (a direct connection must fail)",
        "  ✗ direct to 1.2.3.4:443: not restricted",
        "FAILED: 6 checks: 3 passed, 1 failed, 1 warnings, 1 skipped",
    ]
    ascii_text = verify.render_text(_report(), unicode=False)
    ascii_text.encode("ascii")
    assert "  x direct to 1.2.3.4:443" in ascii_text


def test_render_json_and_exit_status() -> None:
    report = _report()
    doc = json.loads(verify.render_json(report))
    assert (doc["ok"], doc["exit_status"], report.exit_status) == (False, 1, 1)
    assert doc["counts"] == {"pass": 3, "fail": 1, "warn": 1, "skip": 1}
    assert doc["checks"][4] == {
        "name": "denied",
        "status": "pass",
        "title": "denied",
        "detail": "403",
        "target": "http://d.test/",
        "reason": "x",
    }
    passing = Report(tuple(c for c in report.checks if c.status is not Status.FAIL))
    assert (passing.exit_status, passing.failed) == (0, False)
    assert verify.render_text(passing).splitlines()[-1] == (
        "OK: 5 checks: 3 passed, 1 warnings, 1 skipped"
    )
