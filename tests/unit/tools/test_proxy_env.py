"""egressgate.tools.proxy_env: proxy URL validation, NO_PROXY composition, Java, rendering.

The central property: the NO_PROXY that build_env() writes means the same in every measured
runtime that reads the variables — checked through the measured model (egressgate.tools.noproxy)
for loopback, the cluster suffixes, every extra host and suffix, and every address of a small
CIDR, on table rows and on hypothesis-generated extras. The accepted exception is `::1`
(urllib and undici need `[::1]`, which would break httpx; global-agent fails on IPv6 URLs).
"""

from __future__ import annotations

import ipaddress
import json
import re
import shlex
from collections.abc import Sequence

import pytest
import yaml
from hypothesis import given, settings
from hypothesis import strategies as st

from egressgate.tools import noproxy
from egressgate.tools.noproxy import Severity, Verdict
from egressgate.tools.proxy_env import (
    CA_ADDING_VARIABLES,
    CA_REPLACING_VARIABLES,
    DEFAULT_NO_PROXY,
    ProxyEnvError,
    ProxyUrlError,
    build_env,
    ca_trust,
    lint_env,
    parse_proxy_url,
    render,
)

PROXY = "http://egress.example:3128"


def _verdicts(value: str, target: str) -> dict[str, Verdict]:
    return {
        v.runtime: v.verdict
        for v in noproxy.explain(value, target)
        if v.verdict is not Verdict.IGNORES_ENV
    }


def _all_direct(value: str, target: str) -> list[str]:
    """Runtimes that do NOT go direct for target (empty = every runtime agrees)."""
    return [rt for rt, v in _verdicts(value, target).items() if v is not Verdict.DIRECT]


# -- proxy URL ------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("url", "normalised"),
    [
        ("http://egress.example:3128", "http://egress.example:3128"),
        ("HTTP://Egress.Example:3128/", "http://egress.example:3128"),
        ("http://127.0.0.1:3128", "http://127.0.0.1:3128"),
        ("http://[fd00::1]:3128", "http://[fd00::1]:3128"),
        ("http://user:pa%40ss@egress:3128", "http://user:pa%40ss@egress:3128"),
        ("https://egress:3129", "https://egress:3129"),
    ],
)
def test_parse_proxy_url_accepts(url: str, normalised: str) -> None:
    proxy, _ = parse_proxy_url(url)
    assert proxy.url == normalised


@pytest.mark.parametrize(
    ("url", "message"),
    [
        ("127.0.0.1:3128", "has no scheme: write http://127.0.0.1:3128"),
        ("socks5://127.0.0.1:1080", "scheme 'socks5' is not supported"),
        ("http://egress", "has no port"),
        ("http://egress:0", "port out of range"),
        ("http://egress:70000", "invalid port"),
        ("http://:3128", "has no host"),
        ("http://egress:3128/path", "must not have a path"),
        ("http://egress:3128?x=1", "must not have a path, query or fragment"),
        ("http://u:p@ss@egress:3128", "must be percent-encoded"),
        ("http://u:p ss@egress:3128", "contains spaces"),
        ("http://eg!ress:3128", "invalid host"),
        ("", "empty"),
    ],
)
def test_parse_proxy_url_rejects(url: str, message: str) -> None:
    with pytest.raises(ProxyUrlError, match=re.escape(message)) as info:
        parse_proxy_url(url)
    assert "\n" not in str(info.value)


def test_https_proxy_warns_with_measured_runtimes() -> None:
    _, warnings = parse_proxy_url("https://egress:3129")
    (warning,) = warnings
    assert "aiohttp-trust-env: silently connect directly" in warning
    assert "urllib: speak plain HTTP" in warning
    assert "global-agent: fail" in warning
    assert "curl, git, pip, requests, httpx, go, undici, axios: open TLS" in warning


def test_percent_encoded_credentials_warn_about_axios_and_global_agent() -> None:
    _, warnings = parse_proxy_url("http://u:p%40ss@egress:3128")
    assert any("axios, global-agent send them still encoded" in w for w in warnings)
    assert any("Authenticator" in w for w in warnings)
    _, plain = parse_proxy_url("http://u:secret@egress:3128")
    assert not any("percent" in w for w in plain)


# -- NO_PROXY composition ---------------------------------------------------------------------


def test_default_value_is_the_measured_portable_one() -> None:
    env = build_env(PROXY)
    assert env.no_proxy == "localhost,127.0.0.1,::1,.svc,.cluster.local"
    assert env.entries == DEFAULT_NO_PROXY
    assert env.warnings == ()


def test_both_letter_cases_hold_the_same_value_without_spaces() -> None:
    env = build_env(PROXY, ["a.example, b.example"], ["10.0.0.0/30"])
    values = env.as_dict(java=False)
    assert set(values) == {"HTTP_PROXY", "HTTPS_PROXY", "NO_PROXY", "http_proxy", "https_proxy",
                           "no_proxy"}  # fmt: skip
    assert values["NO_PROXY"] == values["no_proxy"]
    assert values["HTTP_PROXY"] == values["https_proxy"] == PROXY
    assert " " not in values["NO_PROXY"]


@pytest.mark.parametrize(
    ("extra", "entries", "warning"),
    [
        ("api.example.com", ["api.example.com"], None),
        ("API.Example.com", ["api.example.com"], None),
        (".corp.example", ["corp.example", ".corp.example"], None),
        ("*.corp.example", ["corp.example", ".corp.example"], None),
        ("db.internal:5432", ["db.internal"], "port dropped"),
        ("*.corp.example:443", ["corp.example", ".corp.example"], "port dropped"),
        ("10.96.0.1", ["10.96.0.1"], None),
        ("[fd00::10]", ["fd00::10"], None),
        ("fd00::10", ["fd00::10"], None),
        ("https://api.example.com/v1", ["api.example.com"], "only its host"),
        ("*", [], "`*` dropped"),
        ("10.0.0.0/31", ["10.0.0.0/31", "10.0.0.0", "10.0.0.1"], None),
        ("10.0.0.1/30", ["10.0.0.0/30", "10.0.0.0", "10.0.0.1", "10.0.0.2", "10.0.0.3"],
         "host bits set"),
    ],
)  # fmt: skip
def test_extras_are_normalised(extra: str, entries: list[str], warning: str | None) -> None:
    env = build_env(PROXY, [extra])
    assert list(env.entries[len(DEFAULT_NO_PROXY) :]) == entries
    if warning is None:
        assert env.warnings == ()
    else:
        assert any(warning in w for w in env.warnings), env.warnings


@pytest.mark.parametrize("extra", ["foo bar!", "a/b/c", "[zz]", "http:///nohost", "10.0.0.0/40"])
def test_unusable_extras_are_refused(extra: str) -> None:
    with pytest.raises(ProxyEnvError):
        build_env(PROXY, [extra])


def test_small_cidr_is_kept_and_expanded() -> None:
    env = build_env(PROXY, cluster_cidrs=["10.96.0.0/28"])
    entries = env.entries
    assert "10.96.0.0/28" in entries
    assert {f"10.96.0.{i}" for i in range(16)} <= set(entries)
    assert env.warnings == ()


def test_large_cidr_is_kept_with_a_warning_naming_runtimes() -> None:
    env = build_env(PROXY, cluster_cidrs=["10.244.0.0/16"])
    assert "10.244.0.0/16" in env.entries
    assert "10.244.0.1" not in env.entries
    (warning,) = env.warnings
    for runtime_id in ("wget", "urllib", "aiohttp-trust-env", "undici", "global-agent", "httpx"):
        assert runtime_id in warning


def test_ipv6_cidrs_never_reach_no_proxy() -> None:
    small = build_env(PROXY, cluster_cidrs=["fd00:10::/126"])
    assert [e for e in small.entries if "/" in e] == []
    assert {"fd00:10::", "fd00:10::1", "fd00:10::2", "fd00:10::3"} <= set(small.entries)
    large = build_env(PROXY, cluster_cidrs=["fd00:10::/64"])
    assert not any(e.startswith("fd00:10") for e in large.entries)
    assert any("left out of NO_PROXY" in w and "httpx" in w for w in large.warnings)


def test_expand_limit_is_256_addresses() -> None:
    assert "10.1.0.255" in build_env(PROXY, cluster_cidrs=["10.1.0.0/24"]).entries
    assert "10.1.0.1" not in build_env(PROXY, cluster_cidrs=["10.1.0.0/23"]).entries


# -- the value means the same everywhere ----------------------------------------------------------


@pytest.mark.parametrize(
    "target",
    [
        "localhost", "127.0.0.1", "kubernetes.default.svc", "api.ns.svc.cluster.local",
        "corp.example", "db.corp.example", "a.b.corp.example", "api.example.com",
        "10.96.0.1", "10.96.0.7", "10.96.0.15", "https://db.corp.example:8443/",
    ],
)  # fmt: skip
def test_generated_value_goes_direct_in_every_runtime(target: str) -> None:
    env = build_env(PROXY, [".corp.example", "api.example.com"], ["10.96.0.0/28"])
    assert _all_direct(env.no_proxy, target) == []


@pytest.mark.parametrize("target", ["example.com", "corp.example.org", "10.96.0.16", "8.8.8.8"])
def test_generated_value_proxies_everything_else_everywhere(target: str) -> None:
    env = build_env(PROXY, [".corp.example", "api.example.com"], ["10.96.0.0/28"])
    verdicts = _verdicts(env.no_proxy, target)
    assert set(verdicts.values()) == {Verdict.PROXY}, verdicts


def test_plain_extra_is_one_host() -> None:
    value = build_env(PROXY, ["api.example.com"]).no_proxy
    verdicts = _verdicts(value, "v2.api.example.com")
    exact_only = {rt for rt, v in verdicts.items() if v is Verdict.PROXY}
    assert exact_only == {"undici", "axios", "global-agent"}


def test_ipv6_loopback_is_the_accepted_exception() -> None:
    verdicts = _verdicts(build_env(PROXY).no_proxy, "[::1]")
    not_direct = {rt for rt, v in verdicts.items() if v is not Verdict.DIRECT}
    assert not_direct == {"urllib", "undici", "global-agent"}


def test_generated_value_lints_without_errors() -> None:
    env = build_env(PROXY, [".corp.example", "db:5432", "fd00::1"], ["10.0.0.0/8", "fd00::/64"])
    assert not noproxy.has_errors(noproxy.lint(env.no_proxy))


_LABEL = st.from_regex(r"[a-z][a-z0-9]{0,6}", fullmatch=True)
_DOMAIN = st.lists(_LABEL, min_size=2, max_size=4).map(".".join)
_EXTRA = st.one_of(
    _DOMAIN,
    _DOMAIN.map(lambda d: "." + d),
    _DOMAIN.map(lambda d: "*." + d),
    st.tuples(_DOMAIN, st.integers(1, 65535)).map(lambda t: f"{t[0]}:{t[1]}"),
    st.ip_addresses(v=4).map(str),
)
_CIDR = st.tuples(st.ip_addresses(v=4), st.integers(20, 32)).map(
    lambda t: str(ipaddress.ip_network(f"{t[0]}/{t[1]}", strict=False))
)


# Each example explains up to ~20 targets against a value of up to ~500 entries: capped so that
# the deep profile stays within the per-test timeout.
@settings(max_examples=min(settings.default.max_examples, 300), deadline=None)
@given(extras=st.lists(_EXTRA, max_size=4), cidrs=st.lists(_CIDR, max_size=2))
def test_every_extra_and_small_cidr_address_is_direct_everywhere(
    extras: Sequence[str], cidrs: Sequence[str]
) -> None:
    env = build_env(PROXY, extras, cidrs)
    assert not noproxy.has_errors(noproxy.lint(env.no_proxy))
    targets = [e.split(":")[0].lstrip("*.") for e in extras]
    # A suffix covers its subdomains everywhere; a plain name is one host (in the Node
    # libraries only that host: see test_plain_extra_is_one_host).
    targets += ["sub." + e.split(":")[0].lstrip("*.") for e in extras if e.startswith((".", "*"))]
    for cidr in cidrs:
        network = ipaddress.ip_network(cidr)
        if network.num_addresses <= 256:
            targets += [str(network[0]), str(network[-1])]
    for target in targets:
        assert _all_direct(env.no_proxy, target) == [], target


@given(extras=st.lists(st.text(max_size=20), max_size=3), cidrs=st.lists(st.text(max_size=20)))
def test_arbitrary_input_builds_or_raises_proxy_env_error(
    extras: Sequence[str], cidrs: Sequence[str]
) -> None:
    try:
        env = build_env(PROXY, extras, cidrs)
    except ProxyEnvError:
        return
    assert " " not in env.no_proxy


@given(url=st.text(max_size=40))
def test_arbitrary_proxy_url_validates_or_raises(url: str) -> None:
    try:
        proxy, _ = parse_proxy_url(url)
    except ProxyUrlError as exc:
        error = str(exc)
    else:
        assert proxy.scheme in ("http", "https")
        assert 0 < proxy.port < 65536
        return
    assert "\n" not in error


# -- Java --------------------------------------------------------------------------------------


def test_java_properties_and_tool_options() -> None:
    env = build_env(PROXY, [".corp.example", "[fd00::5]"], ["10.96.0.0/12", "10.1.2.0/30"])
    props = dict(env.java.properties)
    assert props["http.proxyHost"] == props["https.proxyHost"] == "egress.example"
    assert props["http.proxyPort"] == props["https.proxyPort"] == "3128"
    hosts = props["http.nonProxyHosts"].split("|")
    assert hosts[:5] == ["localhost", "127.0.0.1", "[::1]", "*.svc", "*.cluster.local"]
    assert {"corp.example", "*.corp.example", "[fd00::5]"} <= set(hosts)
    assert {f"10.{i}.*" for i in range(96, 112)} <= set(hosts)  # /12 as 16 octet globs
    assert {"10.1.2.0", "10.1.2.3"} <= set(hosts)
    assert not any("/" in h for h in hosts)
    options = env.java.tool_options.split(" ")
    assert options[0] == "-Dhttp.proxyHost=egress.example"
    assert options[-1].startswith("-Dhttp.nonProxyHosts=localhost|")


def test_overly_broad_cidrs_are_refused() -> None:
    with pytest.raises(ProxyEnvError, match="too broad"):
        build_env(PROXY, cluster_cidrs=["0.0.0.0/0"])
    env = build_env(PROXY, cluster_cidrs=["10.0.0.0/8"])
    assert "10.*" in dict(env.java.properties)["http.nonProxyHosts"].split("|")


# -- rendering ----------------------------------------------------------------------------------


def _sample():  # type: ignore[no-untyped-def]
    return build_env("http://u:p%40ss@egress:3128", [".corp.example"], ["10.0.0.0/30"])


def test_render_shell_round_trips_through_shlex() -> None:
    env = _sample()
    lines = render(env, "shell").splitlines()
    parsed = dict(shlex.split(line)[1].split("=", 1) for line in lines)
    assert parsed == env.as_dict()
    assert all(line.startswith("export ") for line in lines)


def test_render_dotenv_quotes_only_when_needed() -> None:
    text = render(_sample(), "dotenv")
    assert "NO_PROXY=localhost,127.0.0.1,::1," in text
    assert "JAVA_TOOL_OPTIONS='-Dhttp.proxyHost=egress " in text


def test_render_env_file_is_literal() -> None:
    env = _sample()
    lines = render(env, "env-file").splitlines()
    assert dict(line.split("=", 1) for line in lines) == env.as_dict()


def test_render_docker_flags() -> None:
    env = _sample()
    words = shlex.split(render(env, "docker"))
    assert words[::2] == ["-e"] * len(env.as_dict())
    assert dict(w.split("=", 1) for w in words[1::2]) == env.as_dict()


def test_render_k8s_is_a_container_env_list() -> None:
    env = _sample()
    doc = yaml.safe_load(render(env, "k8s"))
    assert doc["env"] == [{"name": k, "value": v} for k, v in env.as_dict().items()]
    assert all(isinstance(item["value"], str) for item in doc["env"])


def test_render_k8s_escapes_dollar_signs() -> None:
    env = build_env("http://u:pa$(X)@egress:3128")
    doc = yaml.safe_load(render(env, "k8s"))
    assert doc["env"][0]["value"] == "http://u:pa$$(X)@egress:3128"


def test_render_json_carries_warnings_and_provenance() -> None:
    env = build_env(PROXY, cluster_cidrs=["10.0.0.0/8"])
    doc = json.loads(render(env, "json"))
    assert doc["variables"]["NO_PROXY"] == env.no_proxy
    assert doc["warnings"] == list(env.warnings)
    assert doc["warnings"]
    assert doc["measured"]["at"] == noproxy.matrix_info().measured_at
    assert doc["java"]["JAVA_TOOL_OPTIONS"] == env.java.tool_options


def test_render_without_java() -> None:
    env = _sample()
    assert "JAVA_TOOL_OPTIONS" not in render(env, "shell", java=False)
    assert "java" not in json.loads(render(env, "json", java=False))


def test_render_unknown_format() -> None:
    with pytest.raises(ValueError, match="unknown format"):
        render(_sample(), "toml")


# -- lint_env ---------------------------------------------------------------------------------


def _codes(env: dict[str, str]) -> set[str]:
    return {f.code for f in lint_env(env)}


def test_lint_env_of_generated_variables_has_no_error() -> None:
    findings = lint_env(build_env(PROXY).as_dict())
    assert not noproxy.has_errors(findings)


@pytest.mark.parametrize(
    ("env", "code", "runtime"),
    [
        ({"HTTP_PROXY": PROXY, "HTTPS_PROXY": PROXY}, "case-missing", "curl"),
        ({"http_proxy": PROXY, "https_proxy": PROXY}, "case-missing", "global-agent"),
        ({"http_proxy": PROXY, "HTTP_PROXY": PROXY, "https_proxy": PROXY, "HTTPS_PROXY": PROXY,
          "NO_PROXY": "localhost"}, "case-missing", "wget"),
    ],
)  # fmt: skip
def test_lint_env_letter_case(env: dict[str, str], code: str, runtime: str) -> None:
    findings = [f for f in lint_env(env) if f.code == code]
    assert any(runtime in f.runtimes for f in findings), findings


def test_lint_env_mismatch_missing_https_and_bad_url() -> None:
    assert "case-mismatch" in _codes({"no_proxy": "a", "NO_PROXY": "b"})
    assert "https-missing" in _codes({"http_proxy": PROXY, "HTTP_PROXY": PROXY})
    assert "proxy-url" in _codes({"http_proxy": "egress:3128"})


def test_lint_env_without_any_proxy_variable_says_no_proxy_is_set() -> None:
    # Issue 18: this used to warn "no-loopback: loopback traffic is sent to the proxy".
    findings = lint_env({"PATH": "/usr/bin"})
    assert [(f.severity, f.code) for f in findings] == [(Severity.INFO, "no-proxy-set")]
    assert "no proxy variable is set" in findings[0].message


def test_lint_env_without_proxy_still_judges_a_no_proxy_value() -> None:
    codes = [f.code for f in lint_env({"NO_PROXY": "localhost,*.corp.example"})]
    assert {"wildcard", "no-proxy-set"} <= set(codes)


# ---- SOCKS5 (egressgate env --socks)
def test_socks_adds_all_proxy_in_both_cases_and_the_jvm_pair() -> None:
    from egressgate.tools.proxy_env import parse_socks_url

    socks, warnings = parse_socks_url("socks5h://EG.internal:1080")
    assert warnings == []
    env = build_env("http://eg.internal:3128").with_socks(socks)
    values = env.as_dict()
    assert values["ALL_PROXY"] == values["all_proxy"] == "socks5h://eg.internal:1080"
    assert values["HTTPS_PROXY"] == "http://eg.internal:3128"
    assert "-DsocksProxyHost=eg.internal -DsocksProxyPort=1080" in values["JAVA_TOOL_OPTIONS"]
    assert "ALL_PROXY" not in build_env("http://eg.internal:3128").as_dict()


def test_socks_url_rules() -> None:
    from egressgate.tools.proxy_env import ProxyUrlError, parse_socks_url

    for bad in ("socks4://eg:1080", "http://eg:1080", "socks5h://eg", "socks5h://eg:1080/x"):
        with pytest.raises(ProxyUrlError):
            parse_socks_url(bad)
    _, warnings = parse_socks_url("socks5://eg:1080")
    assert any("socks5h" in w for w in warnings)
    _, warnings = parse_socks_url("socks5h://u:p@eg:1080")
    assert any("clear text" in w for w in warnings)


def test_ssh_config_block() -> None:
    from egressgate.tools.proxy_env import parse_socks_url, render, ssh_config

    socks, _ = parse_socks_url("socks5h://10.0.0.7:1080")
    assert ssh_config(socks) == "Host *\n    ProxyCommand nc -X 5 -x 10.0.0.7:1080 %h %p\n"
    env = build_env("http://eg:3128").with_socks(socks)
    assert render(env, "ssh-config") == ssh_config(socks)


def test_all_proxy_readers_come_from_the_measurements() -> None:
    from egressgate.tools import noproxy

    readers = noproxy.all_proxy_readers()
    assert "curl" in readers.reads
    assert "git" in readers.reads
    assert "java" in readers.no_env
    assert "wget" in readers.ignores
    ids = {rt.id for rt in noproxy.runtimes()}
    assert set(readers.reads) | set(readers.ignores) | set(readers.no_env) == ids


# ---------------------------------------------------------------------------------------------
# --ca: the interception CA's variables (issue 16)
# ---------------------------------------------------------------------------------------------


def test_ca_trust_variables_and_keytool() -> None:
    bundle = b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n" * 2
    trust = ca_trust("/etc/egressgate-ca/bundle.pem", bundle)
    names = [name for name, _ in trust.variables]
    assert names == [*CA_REPLACING_VARIABLES, *CA_ADDING_VARIABLES]
    assert {value for _, value in trust.variables} == {"/etc/egressgate-ca/bundle.pem"}
    assert trust.warnings == ()
    assert "-file /etc/egressgate-ca/ca.crt " in trust.keytool  # the CA alone, not the bundle


def test_ca_trust_warns_about_one_certificate_and_refuses_none() -> None:
    one = ca_trust("/x/ca.crt", b"-----BEGIN CERTIFICATE-----\nA\n-----END CERTIFICATE-----\n")
    assert len(one.warnings) == 1
    assert "-file /x/ca.crt " in one.keytool
    with pytest.raises(ProxyEnvError, match="no PEM certificate"):
        ca_trust("/x/egress.yaml", b"allow: []\n")
    with pytest.raises(ProxyEnvError, match="path of a PEM file"):
        ca_trust(" ")
    assert ca_trust("/unknown/here.pem").warnings == ()  # not readable here: taken as given


def test_env_with_ca_renders_the_variables_after_the_proxy_ones() -> None:
    env = build_env("http://127.0.0.1:3128").with_ca(ca_trust("/ca/bundle.pem"))
    text = render(env, "dotenv", java=False)
    lines = text.splitlines()
    assert lines[0].startswith("HTTP_PROXY=")
    assert lines[-1] == "NODE_EXTRA_CA_CERTS=/ca/bundle.pem"
    assert "SSL_CERT_FILE=/ca/bundle.pem" in lines
