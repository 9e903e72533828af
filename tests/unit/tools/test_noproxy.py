"""egressgate.tools.noproxy: the measured runtime model, explain() and lint().

Three kinds of evidence that the model is right:
  * replay: every row of reference/noproxy/matrix.json whose outcome depends on the proxy
    variables (groups vars, form, noproxy, k8s, decide: all 1212 rows; none excluded) is fed
    to `explain_env` with the row's exact environment and target, and the model's verdict must
    equal the measured outcome. The rules are derived from some of those cells, so single-entry
    rows mostly confirm that the engine reads each rule the way the build script meant it; the
    multi-entry k8s rows, the variable-precedence rows and the proxy-URL rows are real checks.
  * differential: for the Python runtimes installed here at the measured versions (urllib,
    requests, pip's vendored requests, httpx, aiohttp trust_env), hypothesis-generated values
    and targets are decided by the libraries' own decision functions (no connection) and by the
    model, which must agree. Deliberately not generated, because not modelled: pip's quirks for
    a leading-dot entry with a port against the apex, and its case-sensitive plain-suffix test
    (the value is generated in lower case), and IPv4:port entries (every Python library treats
    them differently); the measured matrix has none of these.
  * tables of the README's headline findings, and hypothesis on arbitrary strings: never
    crash, always one verdict per runtime.
"""

from __future__ import annotations

import contextlib
import json
import os
import subprocess
import sys
import urllib.request
from collections.abc import Iterator
from pathlib import Path
from typing import Any
from urllib.parse import urlsplit

import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressgate.tools import noproxy
from egressgate.tools.noproxy import EntryKind, Severity, Verdict

ROOT = Path(__file__).resolve().parents[3]
MATRIX = ROOT / "reference" / "noproxy" / "matrix.json"
REPLAYED_GROUPS = ("vars", "form", "noproxy", "k8s", "decide")


def _matrix() -> dict[str, Any]:
    return dict(json.loads(MATRIX.read_text(encoding="utf-8")))


def _verdicts(value: str, target: str, **kw: Any) -> dict[str, noproxy.RuntimeVerdict]:
    return {v.runtime: v for v in noproxy.explain(value, target, **kw)}


# -- the data file --------------------------------------------------------------------------


def test_data_file_is_up_to_date_with_the_matrix() -> None:
    script = ROOT / "scripts" / "build_noproxy_data.py"
    result = subprocess.run(
        [sys.executable, str(script), "--check"], capture_output=True, text=True, timeout=60
    )
    assert result.returncode == 0, result.stderr


def test_data_keeps_versions_and_measurement_date() -> None:
    info = noproxy.matrix_info()
    meta = _matrix()["meta"]
    assert info.measured_at == meta["generated"]
    assert info.platform == meta["platform"]
    for rt in noproxy.runtimes():
        assert rt.version == meta["clients"][rt.client]


def test_every_matrix_client_is_a_runtime() -> None:
    clients = set(_matrix()["meta"]["clients"])
    assert {noproxy.runtime_for_client(c).client for c in clients} <= clients
    assert len(noproxy.runtimes()) == 17


@pytest.mark.parametrize(
    ("runtime_id", "reads_env"),
    [("java", False), ("aiohttp", False), ("node-fetch", False), ("node-fetch-env", False),
     ("curl", True), ("go", True), ("ruby", True)],
)  # fmt: skip
def test_runtimes_that_ignore_the_environment(runtime_id: str, reads_env: bool) -> None:
    assert noproxy.runtime(runtime_id).reads_env is reads_env


def test_unmeasured_rules_say_so() -> None:
    ruby = dict(noproxy.runtime("ruby").basis)
    assert ruby["dot_apex"].startswith("source")
    assert "decision-only" in ruby["cidr_inside"]
    assert "checked against httpx" in dict(noproxy.runtime("httpx").basis)["ipv6_cidr"]


# -- replay of the measured matrix --------------------------------------------------------------


def _target_for(row: dict[str, Any], hosts: dict[str, str]) -> noproxy.Target:
    url = row["target"].split(" ")[0]  # "http://example.test/ (-> 127.0.0.2)"
    host = urlsplit(url).hostname or ""
    addresses = [hosts[host]] if host in hosts else []
    if host == "localhost":
        addresses = ["127.0.0.1"]
    return noproxy.parse_target(url, addresses=addresses)


def _agrees(rt: noproxy.Runtime, outcome: str, verdict: noproxy.RuntimeVerdict) -> bool:
    if outcome == "direct":
        return verdict.verdict is (Verdict.DIRECT if rt.reads_env else Verdict.IGNORES_ENV)
    if outcome == "error":
        return verdict.verdict is Verdict.ERROR
    if verdict.verdict is not Verdict.PROXY:
        return False
    if outcome in ("proxy(lower)", "proxy(upper)"):
        assert verdict.proxy_variable is not None
        return verdict.proxy_variable.islower() == (outcome == "proxy(lower)")
    return True


@pytest.mark.parametrize("group", REPLAYED_GROUPS)
def test_model_reproduces_every_measured_row(group: str) -> None:
    doc = _matrix()
    rows = [r for r in doc["results"] if r["group"] == group]
    assert rows
    mismatches = []
    for row in rows:
        rt = noproxy.runtime_for_client(row["client"])
        target = _target_for(row, doc["meta"]["hosts"])
        (verdict,) = noproxy.explain_env(row["env"], target, only=[rt.id])
        if not _agrees(rt, row["outcome"], verdict):
            mismatches.append(
                f"{row['case']!r} {row['target']} {row['client']}: measured {row['outcome']}, "
                f"model {verdict.verdict} ({verdict.reason})"
            )
    assert not mismatches, "\n".join(mismatches)


def test_replay_covers_the_whole_matrix() -> None:
    groups = {r["group"] for r in _matrix()["results"]}
    assert groups == set(REPLAYED_GROUPS)


# -- headline findings, table-driven -------------------------------------------------------------

K8S = "localhost,127.0.0.1,::1,.svc,.cluster.local,10.244.0.0/16"


@pytest.mark.parametrize(
    ("value", "target", "expected"),
    [
        # leading-dot cluster suffixes: direct in every runtime that reads the variables
        (K8S, "kubernetes.default.svc", {"curl": "direct", "undici": "direct", "go": "direct"}),
        (K8S, "api.ns.svc.cluster.local", {"axios": "direct", "global-agent": "direct"}),
        # without the dot the Node libraries match exactly and proxy service traffic
        ("svc", "kubernetes.default.svc", {"curl": "direct", "undici": "proxy", "axios": "proxy"}),
        # short names are never covered
        (K8S, "kubernetes.default", {"curl": "proxy", "go": "proxy", "requests": "proxy"}),
        # CIDRs: honoured, ignored, truncated (httpx)
        (K8S, "10.244.3.4", {"curl": "direct", "requests": "direct", "wget": "proxy",
                             "urllib": "proxy", "undici": "proxy", "httpx": "proxy"}),
        ("10.0.0.0/8", "10.0.0.0", {"httpx": "direct", "wget": "proxy"}),
        # *.domain: only Go and the Node libraries
        ("*.example.test", "sub.example.test", {"go": "direct", "undici": "direct",
                                                "curl": "proxy", "requests": "proxy"}),
        ("*.example.test", "example.test", {"go": "proxy", "undici": "proxy"}),
        # leading dot and the apex
        (".example.test", "example.test", {"curl": "direct", "wget": "proxy", "httpx": "proxy",
                                           "go": "proxy", "global-agent": "direct"}),
        # pip's plain suffix
        ("example.test", "notexample.test", {"pip": "direct", "requests": "proxy"}),
        # `*` alone, and mixed
        ("*", "example.test", {"curl": "direct", "wget": "proxy", "ruby": "proxy"}),
        ("localhost,*", "example.test", {"curl": "proxy", "httpx": "direct", "go": "direct"}),
        # IPv6 spellings
        ("::1", "[::1]", {"curl": "direct", "urllib": "proxy", "undici": "proxy",
                          "global-agent": "error", "go": "direct"}),
        ("[::1]", "[::1]", {"curl": "proxy", "urllib": "direct", "httpx": "error"}),
        ("[::1]", "example.test", {"httpx": "error", "curl": "proxy"}),
        ("fd00::/8", "example.test", {"httpx": "error", "curl": "proxy"}),
        # host:port
        ("example.test:8080", "example.test:8080", {"curl": "proxy", "requests": "direct",
                                                    "go": "direct"}),
        ("example.test:80", "example.test", {"go": "direct", "requests": "proxy",
                                             "global-agent": "proxy"}),
        # spaces
        (" example.test ,other.test", "example.test", {"wget": "proxy", "curl": "direct"}),
        # localhost and 127.0.0.1 are different hosts (except axios and the built-ins)
        ("localhost", "127.0.0.1", {"curl": "proxy", "axios": "direct", "go": "direct"}),
        ("", "localhost", {"curl": "proxy", "go": "direct", "ruby": "direct"}),
        # environment ignored altogether
        ("", "example.test", {"java": "ignores env", "aiohttp": "ignores env",
                              "node-fetch": "ignores env"}),
    ],
)  # fmt: skip
def test_explain_headline_findings(value: str, target: str, expected: dict[str, str]) -> None:
    verdicts = _verdicts(value, target)
    got = {rt: str(verdicts[rt].verdict) for rt in expected}
    assert got == expected


def test_explain_names_the_entry_and_rule() -> None:
    verdicts = _verdicts("foo.test,.svc", "api.ns.svc")
    assert verdicts["curl"].entry == ".svc"
    assert verdicts["curl"].rule == "dot_subdomain"
    assert "`.svc` matched" in verdicts["curl"].reason


def test_explain_says_why_an_entry_was_not_understood() -> None:
    verdicts = _verdicts("*.corp.example", "db.corp.example")
    assert verdicts["curl"].verdict is Verdict.PROXY
    assert "`*.` literally" in verdicts["curl"].reason
    assert "`.corp.example`" in verdicts["curl"].reason
    cidr = _verdicts("10.0.0.0/8", "10.1.2.3")
    assert "ignores CIDR" in cidr["wget"].reason
    assert "first address 10.0.0.0" in cidr["httpx"].reason


def test_star_wording_for_runtimes_that_ignore_it_and_those_that_need_it_alone() -> None:
    # Issue 18: wget and Ruby ignore `*` even as the whole value; they were said to honour it
    # "only when it is the whole value" while it was the whole value.
    alone = _verdicts("*", "api.example.com")
    for runtime in ("wget", "ruby"):
        assert alone[runtime].verdict is Verdict.PROXY
        assert "`*`: ignores `*`" in alone[runtime].reason
        assert "whole value" not in alone[runtime].reason
    assert alone["curl"].verdict is Verdict.DIRECT
    mixed = _verdicts("a.test,*", "api.example.com")
    assert "honours `*` only when it is the whole value" in mixed["curl"].reason
    assert "`*`: ignores `*`" in mixed["wget"].reason


def test_ruby_resolves_names() -> None:
    by_name = _verdicts("10.0.0.0/8", "db.internal", addresses=["10.1.2.3"])
    assert by_name["ruby"].verdict is Verdict.DIRECT
    assert by_name["curl"].verdict is Verdict.PROXY
    loop = _verdicts("", "db.internal", addresses=["127.0.0.2"])
    assert loop["ruby"].verdict is Verdict.DIRECT
    unknown = _verdicts("", "db.internal")
    assert any("resolves the name" in c for c in unknown["ruby"].caveats)


def test_unmeasured_rules_are_flagged_as_caveats() -> None:
    verdicts = _verdicts(".svc", "a.svc")
    assert any("not measured" in c for c in verdicts["ruby"].caveats)
    assert not verdicts["curl"].caveats


def test_explain_port_argument_and_scheme() -> None:
    verdicts = _verdicts("example.test:8443", "example.test", port=8443, scheme="https")
    assert verdicts["go"].verdict is Verdict.DIRECT
    assert verdicts["curl"].verdict is Verdict.PROXY
    https = _verdicts("example.test:443", "https://example.test/")
    assert https["go"].verdict is Verdict.DIRECT
    assert https["requests"].verdict is Verdict.PROXY


# -- environments ---------------------------------------------------------------------------


def test_explain_env_reads_the_variable_names_each_runtime_reads() -> None:
    env = {"HTTP_PROXY": "http://p:1", "NO_PROXY": "example.test"}
    verdicts = {v.runtime: v for v in noproxy.explain_env(env, "http://example.test/")}
    assert verdicts["curl"].verdict is Verdict.DIRECT  # ignores HTTP_PROXY: no proxy at all
    assert "no proxy variable" in verdicts["curl"].reason
    assert verdicts["go"].verdict is Verdict.DIRECT
    assert verdicts["go"].no_proxy_variable == "NO_PROXY"
    only_lower = {
        "http_proxy": "http://p:1",
        "HTTP_PROXY": "http://p:1",
        "no_proxy": "example.test",
    }
    verdicts = {v.runtime: v for v in noproxy.explain_env(only_lower, "http://example.test/")}
    assert verdicts["global-agent"].verdict is Verdict.PROXY  # reads only NO_PROXY


def test_explain_env_cgi_and_proxy_url_forms() -> None:
    cgi = {"HTTP_PROXY": "http://p:1", "REQUEST_METHOD": "GET"}
    verdicts = {v.runtime: v for v in noproxy.explain_env(cgi, "http://example.test/")}
    assert verdicts["go"].verdict is Verdict.ERROR
    assert verdicts["requests"].verdict is Verdict.DIRECT
    assert verdicts["undici"].verdict is Verdict.PROXY
    https = noproxy.proxy_env_for("", proxy="https://p:1")
    verdicts = {v.runtime: v for v in noproxy.explain_env(https, "http://example.test/")}
    assert verdicts["aiohttp-trust-env"].verdict is Verdict.DIRECT
    assert verdicts["global-agent"].verdict is Verdict.ERROR
    assert verdicts["curl"].verdict is Verdict.PROXY


# -- targets and entries ------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "host", "port", "scheme"),
    [
        ("example.test", "example.test", None, "http"),
        ("Example.TEST:8080", "example.test", 8080, "http"),
        ("[::1]:443", "::1", 443, "http"),
        ("::1", "::1", None, "http"),
        ("[fd00::0001]", "fd00::1", None, "http"),
        ("https://api.example.test/path", "api.example.test", None, "https"),
        ("http://10.0.0.1:81/", "10.0.0.1", 81, "http"),
    ],
)
def test_parse_target(text: str, host: str, port: int | None, scheme: str) -> None:
    target = noproxy.parse_target(text)
    assert (target.host, target.port, target.scheme) == (host, port, scheme)


@pytest.mark.parametrize("text", ["", "host:port", "a:1:2x", "ftp://x/", "host:99999"])
def test_parse_target_rejects(text: str) -> None:
    with pytest.raises(ValueError):
        noproxy.parse_target(text)


@pytest.mark.parametrize(
    ("raw", "kind", "host", "port"),
    [
        ("*", EntryKind.STAR, "", None),
        ("Example.com", EntryKind.NAME, "example.com", None),
        (".svc", EntryKind.DOTTED, "svc", None),
        ("*.svc", EntryKind.WILDCARD, "svc", None),
        ("svc:8080", EntryKind.NAME, "svc", 8080),
        ("10.0.0.1", EntryKind.IPV4, "10.0.0.1", None),
        ("10.0.0.1:80", EntryKind.IPV4, "10.0.0.1", 80),
        ("10.0.0.0/8", EntryKind.CIDR4, "10.0.0.0", None),
        ("::1", EntryKind.IPV6, "::1", None),
        ("[::1]", EntryKind.IPV6_BRACKETED, "::1", None),
        ("[::1]:80", EntryKind.IPV6_BRACKETED, "::1", 80),
        ("fd00::/8", EntryKind.CIDR6, "fd00::", None),
        ("http://x", EntryKind.URL, "http://x", None),
        ("foo*.com", EntryKind.GLOB, "foo*.com", None),
        ("a b", EntryKind.UNTRIMMED, "a b", None),
        ("10.0.0.0/33", EntryKind.INVALID, "10.0.0.0/33", None),
    ],
)
def test_parse_entry(raw: str, kind: EntryKind, host: str, port: int | None) -> None:
    entry = noproxy.parse_entry(raw)
    assert (entry.kind, entry.host, entry.port) == (kind, host, port)


def test_split_value_per_runtime() -> None:
    value = " a ,b, c d"
    assert noproxy.split_value(value) == ["a", "b", "c d"]
    wget = noproxy.runtime("wget").no_proxy
    curl = noproxy.runtime("curl").no_proxy
    assert noproxy.split_value(value, wget) == [" a ", "b", "c d"]
    assert noproxy.split_value(value, curl) == ["a", "b", "c", "d"]


# -- lint -----------------------------------------------------------------------------------


def _codes(value: str) -> dict[str, Severity]:
    return {f.code: f.severity for f in noproxy.lint(value)}


@pytest.mark.parametrize(
    ("value", "expected"),
    [
        ("*.corp.example", {"wildcard": Severity.ERROR}),
        ("example.test:8080", {"host-port": Severity.ERROR}),
        (" example.test", {"whitespace": Severity.ERROR}),
        ("a.test, b.test", {"whitespace": Severity.WARNING}),
        ("[::1]", {"ipv6-brackets": Severity.ERROR}),
        ("fd00::/64", {"ipv6-cidr": Severity.ERROR}),
        ("10.0.0.0/8", {"cidr": Severity.WARNING}),
        ("svc,cluster.local", {"suffix-without-dot": Severity.ERROR}),
        ("localhost", {"loopback-pair": Severity.WARNING}),
        ("127.0.0.1", {"loopback-pair": Severity.WARNING}),
        ("example.test", {"no-loopback": Severity.WARNING, "plain-name": Severity.INFO,
                          "plain-suffix": Severity.INFO}),
        (".example.test", {"dot-apex": Severity.INFO}),
        ("localhost,127.0.0.1,.svc", {"short-names": Severity.INFO,
                                      "no-ipv6-loopback": Severity.INFO}),
        ("*", {"star": Severity.ERROR}),
        ("localhost,*", {"star-mixed": Severity.ERROR}),
        ("http://x.test", {"url": Severity.ERROR}),
        ("foo*.test", {"glob": Severity.ERROR}),
    ],
)  # fmt: skip
def test_lint_findings(value: str, expected: dict[str, Severity]) -> None:
    codes = _codes(value)
    for code, severity in expected.items():
        assert codes.get(code) == severity, (code, codes)


def test_lint_names_runtimes_and_fix() -> None:
    (finding,) = [f for f in noproxy.lint("*.corp.example") if f.code == "wildcard"]
    assert "curl" in finding.runtimes
    assert "go" not in finding.runtimes
    assert finding.fix == "write `.corp.example` (understood everywhere)"
    assert finding.to_dict()["severity"] == "error"


def test_lint_of_the_recommended_value_has_no_error() -> None:
    findings = noproxy.lint(K8S)
    assert not noproxy.has_errors(findings)
    assert {f.code for f in findings} == {"cidr", "ipv6", "short-names"}


def test_lint_cidr_with_listed_addresses_is_quiet() -> None:
    listed = ",".join(["localhost,127.0.0.1,::1,10.0.0.0/30"] + [f"10.0.0.{i}" for i in range(4)])
    assert "cidr" not in _codes(listed)


# -- adversarial input ------------------------------------------------------------------------

_ALPHABET = st.sampled_from([*"ab.*:,/[] \t01-%_", "::1", "10.0.0.0/8", "[::1]", "é"])
_adversarial = st.lists(_ALPHABET, max_size=25).map("".join)
_any_text = st.text(max_size=40)


@given(value=st.one_of(_adversarial, _any_text), host=st.sampled_from(
    ["a", "a.b", "127.0.0.1", "::1", "localhost", "10.0.0.5", "fd00::1", "xn--e1a.b"]))  # fmt: skip
def test_explain_never_crashes_and_covers_every_runtime(value: str, host: str) -> None:
    verdicts = noproxy.explain(value, host)
    assert [v.runtime for v in verdicts] == [rt.id for rt in noproxy.runtimes()]
    for v in verdicts:
        assert isinstance(v.verdict, Verdict)
        assert v.reason


@given(value=st.one_of(_adversarial, _any_text))
def test_lint_never_crashes(value: str) -> None:
    for finding in noproxy.lint(value):
        assert finding.message
        assert finding.fix
        assert isinstance(finding.severity, Severity)


# -- differential check against the installed Python clients --------------------------------------

_LABELS = st.sampled_from(["example", "sub", "notexample", "test", "svc", "a"])
_NAMES = st.lists(_LABELS, min_size=1, max_size=3).map(".".join)
_IPV4 = st.sampled_from(["10.0.0.1", "10.0.0.0", "10.1.2.3", "192.168.1.5"])
_IPV6 = st.sampled_from(["fd00::1", "fd00::2", "2001:db8::5"])
_PORTS = st.sampled_from([None, 80, 443, 8080])


def _maybe_port(names: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    ports = st.sampled_from(["", ":80", ":8080"])
    return st.tuples(names, ports).map("".join)


_ENTRY = st.one_of(
    _maybe_port(_NAMES),
    _NAMES.map(lambda n: "." + n),  # no port: pip's leading-dot + port quirk is not modelled
    _NAMES.map(lambda n: "*." + n),
    _IPV4,
    st.sampled_from(["10.0.0.0/8", "10.0.0.0/24", "10.1.2.0/24", "10.0.0.1/32"]),
    _IPV6,
    _IPV6.map(lambda a: f"[{a}]"),
    st.sampled_from(["*", "localhost"]),
)
_VALUE = st.tuples(st.lists(_ENTRY, max_size=4), st.sampled_from([",", ", "])).map(
    lambda t: t[1].join(t[0])
)
_TARGET_HOST = st.one_of(_NAMES, _IPV4, _IPV6, st.just("localhost"))


@contextlib.contextmanager
def _no_proxy_env(value: str) -> Iterator[None]:
    names = ("no_proxy", "NO_PROXY", "http_proxy", "https_proxy", "HTTP_PROXY", "HTTPS_PROXY")
    saved = {k: os.environ.get(k) for k in names}
    os.environ.update(noproxy.proxy_env_for(value, proxy="http://127.0.0.1:9"))
    try:
        yield
    finally:
        for key, old in saved.items():
            if old is None:
                os.environ.pop(key, None)
            else:
                os.environ[key] = old


def _real_decision(runtime_id: str, url: str) -> str:
    """What the installed library decides for `url` under the current environment."""
    if runtime_id == "urllib":
        host = urllib.request.Request(url).host
        return "direct" if urllib.request.proxy_bypass(host) else "proxy"
    if runtime_id in ("requests", "pip"):
        if runtime_id == "pip":
            from pip._vendor.requests import utils
        else:
            from requests import utils
        return "direct" if utils.should_bypass_proxies(url, None) else "proxy"
    if runtime_id == "httpx":
        return _httpx_decision(url)
    return _aiohttp_decision(url)


def _httpx_decision(url: str) -> str:
    """httpx.Client's own routing (_get_proxy_map + URLPattern, as Client.__init__ and
    _transport_for_url use them), without building the SSL contexts a real Client needs."""
    httpx = pytest.importorskip("httpx")
    from httpx._utils import URLPattern

    try:
        proxy_map = httpx.Client._get_proxy_map(None, None, True)  # type: ignore[arg-type]
        mounts = [(URLPattern(key), proxy) for key, proxy in proxy_map.items()]
        patterns = sorted(mounts, key=lambda mount: mount[0])  # as Client.__init__ sorts them
    except httpx.InvalidURL:
        return "error"
    for pattern, proxy in patterns:
        if pattern.matches(httpx.URL(url)):
            return "direct" if proxy is None else "proxy"
    return "direct"


def _aiohttp_decision(url: str) -> str:
    helpers = pytest.importorskip("aiohttp.helpers")
    yarl = pytest.importorskip("yarl")
    try:
        helpers.get_env_proxy_for_url(yarl.URL(url))
    except LookupError:
        return "direct"
    return "proxy"


def _installed_version(runtime_id: str) -> str | None:
    """The installed version of a Python runtime, in the matrix's spelling."""
    if runtime_id == "urllib":
        return ".".join(map(str, sys.version_info[:3]))
    module = {"requests": "requests", "pip": "pip", "httpx": "httpx"}.get(runtime_id, "aiohttp")
    try:
        return str(__import__(module).__version__)
    except ImportError:
        return None


def _same_version(runtime_id: str) -> bool:
    # urllib: the same Python minor version is enough; the libraries: exactly the same version.
    parts = 2 if runtime_id == "urllib" else 3
    installed = (_installed_version(runtime_id) or "").split(".")[:parts]
    return installed == noproxy.runtime(runtime_id).version.split(".")[:parts]


# Only clients installed at the measured version are compared: another version may differ.
_DIFFERENTIAL = tuple(
    rt for rt in ("urllib", "requests", "pip", "httpx", "aiohttp-trust-env") if _same_version(rt)
)


@settings(
    max_examples=max(300, settings.default.max_examples),
    suppress_health_check=[HealthCheck.too_slow],
    deadline=None,
)
@given(value=_VALUE, host=_TARGET_HOST, port=_PORTS)
def test_model_agrees_with_installed_python_clients(
    value: str, host: str, port: int | None
) -> None:
    if not _DIFFERENTIAL:
        pytest.skip("none of the measured Python clients is installed at its measured version")
    target = noproxy.make_target(host, port)
    env = noproxy.proxy_env_for(value)
    model = {
        v.runtime: str(v.verdict) for v in noproxy.explain_env(env, target, only=_DIFFERENTIAL)
    }
    with _no_proxy_env(value):
        real = {rt: _real_decision(rt, target.url) for rt in _DIFFERENTIAL}
    assert model == real, (value, target.url)


def test_differential_check_compares_at_least_urllib() -> None:
    if not _same_version("urllib"):
        pytest.skip("not the measured Python minor version")
    assert "urllib" in _DIFFERENTIAL
