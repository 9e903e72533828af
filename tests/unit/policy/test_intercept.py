"""policy/intercept.py: which host is intercepted, and which requests inside it may go.

Judged as the data path asks: method, the request-target exactly as the client sent it, and
whether it is a WebSocket upgrade. The hidden-path tricks of issue 16 each have a row; none of
them gets past `/repos/our-org/*`.
"""

from __future__ import annotations

import textwrap

import pytest
import trustme
from hypothesis import given
from hypothesis import strategies as st

from egressgate.config.load import load_config_text
from egressgate.errors import Reason
from egressgate.names.hostname import normalize_host
from egressgate.policy.engine import PolicySet
from egressgate.policy.intercept import NO_INTERCEPT, CompiledIntercept, InterceptHost

TOKEN = "ghp_S3cretTokenValue0123456789"
PYPI_TOKEN = "pypi-AgEIcHlwaS5vcmcCJDAwMDAw"

CONFIG = """\
tls_intercept: {ca_cert_file: ca.crt, ca_key_file: ca.key}
policies:
  ci:
    allow: [.github.com, pypi.org, .example.net]
    intercept:
      - host: api.github.com
        rules:
          - {methods: [GET, HEAD], paths: ["/repos/our-org/*"]}
          - {methods: [POST], paths: ["/repos/our-org/*/issues", /graphql]}
          - {paths: [/socket], websocket: true}
        set_headers: {Authorization: "Bearer file:gh-token"}
      - host: .github.com
        rules: [{methods: [GET]}]
      - host: "*.api.github.com"
        rules: [{paths: [/x]}]
      - host: pypi.org
        rules: [{methods: [GET, HEAD]}]
        set_headers: {Authorization: "Basic env:EG_PYPI_TOKEN"}
  audit:
    mode: report
    allow: [api.github.com]
    intercept:
      - host: api.github.com
        rules: [{methods: [GET], paths: [/ok]}]
"""


@pytest.fixture(scope="module")
def policies(tmp_path_factory: pytest.TempPathFactory) -> PolicySet:
    base = tmp_path_factory.mktemp("intercept")
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(base / "ca.crt"))
    ca.private_key_pem.write_to_path(str(base / "ca.key"))
    (base / "ca.key").chmod(0o600)
    (base / "gh-token").write_text(TOKEN + "\n")
    with pytest.MonkeyPatch.context() as patch:
        patch.setenv("EG_PYPI_TOKEN", PYPI_TOKEN)
        config = load_config_text(textwrap.dedent(CONFIG), "test.yaml", str(base))
    return PolicySet.compile(config)


def _host(policies: PolicySet, name: str, policy: str = "ci") -> InterceptHost:
    found = policies.policies[policy].intercept.for_host(normalize_host(name))
    assert found is not None
    return found


@pytest.fixture(scope="module")
def github(policies: PolicySet) -> InterceptHost:
    return _host(policies, "api.github.com")


# ---------------------------------------------------------------------------------------------
# for_host: the most specific entry, names only
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "pattern"),
    [
        ("api.github.com", "api.github.com"),
        ("API.GitHub.com.", "api.github.com"),
        ("github.com", ".github.com"),
        ("uploads.github.com", ".github.com"),
        ("x.api.github.com", "*.api.github.com"),
        ("pypi.org", "pypi.org"),
        ("files.pythonhosted.org", None),
        ("www.example.net", None),  # allowed, not intercepted: a plain tunnel
        ("github.com.evil.net", None),
        ("127.0.0.1", None),
    ],
)
def test_for_host(policies: PolicySet, name: str, pattern: str | None) -> None:
    found = policies.policies["ci"].intercept.for_host(normalize_host(name))
    assert (found.pattern if found is not None else None) == pattern


def test_policies_without_intercept_share_the_empty_one(policies: PolicySet) -> None:
    default = policies.policies["default"].intercept
    assert default is NO_INTERCEPT
    assert not default
    assert default.for_host(normalize_host("api.github.com")) is None
    assert policies.policies["ci"].intercept


# ---------------------------------------------------------------------------------------------
# judge: methods, paths, first match wins
# ---------------------------------------------------------------------------------------------

ALLOWED = [
    # method, target as sent, normalized path, target forwarded, rule
    ("GET", "/repos/our-org/x", "/repos/our-org/x", "/repos/our-org/x", 1),
    ("HEAD", "/repos/our-org/x/y?ref=main", "/repos/our-org/x/y", "/repos/our-org/x/y?ref=main", 1),
    ("GET", "/repos/%6Fur-org/x", "/repos/our-org/x", "/repos/our-org/x", 1),
    ("GET", "/repos/other-org/../our-org/x", "/repos/our-org/x", "/repos/our-org/x", 1),
    ("POST", "/repos/our-org/r/issues", "/repos/our-org/r/issues", "/repos/our-org/r/issues", 2),
    ("POST", "/graphql?q=1", "/graphql", "/graphql?q=1", 2),
    ("GET", "/socket", "/socket", "/socket", 3),
    ("DELETE", "/socket", "/socket", "/socket", 3),  # rule 3 names no methods: any
]


@pytest.mark.parametrize(("method", "target", "path", "forward", "rule"), ALLOWED)
def test_allowed(
    github: InterceptHost, method: str, target: str, path: str, forward: str, rule: int
) -> None:
    judgement = github.judge(method, target)
    assert judgement.allowed
    assert judgement.reason is Reason.ALLOWED
    assert judgement.path == path
    assert judgement.target == forward
    assert judgement.rule == f"intercept[api.github.com] rule {rule} (line {7 + rule})"


HIDDEN_PATHS = [
    # the tricks of issue 16: each either normalizes to a path the rule refuses, or is refused
    ("/repos/our-org/../other-org", Reason.RULE_NOT_MATCHED),
    ("/repos/our-org/../other-org/x", Reason.RULE_NOT_MATCHED),
    ("/repos/our-org/%2e%2e/other-org/x", Reason.RULE_NOT_MATCHED),
    ("/repos/our-org/%2E%2E/other-org/x", Reason.RULE_NOT_MATCHED),
    ("/repos/our-org/.%2E/other-org/x", Reason.RULE_NOT_MATCHED),
    ("/repos/our-org//../other-org/x", Reason.PATH_AMBIGUOUS),
    ("//repos/our-org/x", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org/..;/other-org/x", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org;x/../../other-org/x", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org/x%2F..%2F..%2Fother-org", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org/x%2f..%2f..%2fother-org", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org/x\\..\\..\\other-org", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org/x%5C..%5C..%5Cother-org", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org/%252e%252e/other-org", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org/x%00", Reason.PATH_AMBIGUOUS),
    ("/repos/our-org/../../..", Reason.PATH_AMBIGUOUS),
    ("https://api.github.com/repos/other-org/x", Reason.PATH_AMBIGUOUS),  # absolute-form
    ("https://api.github.com/repos/our-org/x", Reason.PATH_AMBIGUOUS),  # also when it'd match
    ("http://evil.example/repos/our-org/x", Reason.PATH_AMBIGUOUS),
    ("/REPOS/our-org/x", Reason.RULE_NOT_MATCHED),  # paths are case-sensitive
    ("/repos/our-org", Reason.RULE_NOT_MATCHED),  # /* is below the directory
    ("/repos/our-org-evil/x", Reason.RULE_NOT_MATCHED),
]


@pytest.mark.parametrize(("target", "reason"), HIDDEN_PATHS)
def test_hidden_paths_do_not_escape(github: InterceptHost, target: str, reason: Reason) -> None:
    judgement = github.judge("GET", target)
    assert not judgement.allowed
    assert judgement.reason is reason
    assert judgement.detail
    if reason is Reason.RULE_NOT_MATCHED:
        assert judgement.rule == "intercept[api.github.com] (line 6)"
        assert "no rule of intercept[api.github.com]" in judgement.detail


def test_the_query_is_not_judged(github: InterceptHost) -> None:
    judgement = github.judge("GET", "/repos/our-org/x?path=/../../other-org;%2F")
    assert judgement.allowed
    assert judgement.target == "/repos/our-org/x?path=/../../other-org;%2F"


@pytest.mark.parametrize(
    ("method", "target"),
    [
        ("POST", "/repos/our-org/x"),  # rule 1 is GET/HEAD, rule 2 is .../issues
        ("PUT", "/repos/our-org/r/issues"),
        ("get", "/repos/our-org/x"),  # methods are case-sensitive
        ("POST", "/graphql/x"),
        ("GET", "/"),
    ],
)
def test_methods_hold(github: InterceptHost, method: str, target: str) -> None:
    judgement = github.judge(method, target)
    assert (judgement.allowed, judgement.reason) == (False, Reason.RULE_NOT_MATCHED)


def test_first_match_wins(policies: PolicySet) -> None:
    """Rule 3 (any method on /socket) is reached only after rules 1 and 2 did not match."""
    github = _host(policies, "api.github.com")
    assert github.judge("GET", "/socket").rule is not None
    assert "rule 3" in (github.judge("GET", "/socket").rule or "")
    assert "rule 1" in (github.judge("GET", "/repos/our-org/socket").rule or "")


def test_websocket_needs_a_rule_that_says_so(github: InterceptHost) -> None:
    assert github.judge("GET", "/socket", websocket=True).allowed
    refused = github.judge("GET", "/repos/our-org/x", websocket=True)
    assert (refused.allowed, refused.reason) == (False, Reason.RULE_NOT_MATCHED)
    assert "WebSocket upgrade" in refused.detail


def test_ambiguity_matters_only_to_a_rule_with_paths(policies: PolicySet) -> None:
    """pypi.org's only rule names no paths: the path's spelling decides nothing there, and the
    client's own target goes upstream untouched."""
    pypi = _host(policies, "pypi.org")
    judgement = pypi.judge("GET", "/simple/a;b//c%2Fd")
    assert judgement.allowed
    assert judgement.target == "/simple/a;b//c%2Fd"
    assert not pypi.judge("POST", "/simple/x").allowed
    # ...but absolute-form is refused even there (its authority would be a second host name)
    assert pypi.judge("GET", "https://pypi.org/simple/").reason is Reason.PATH_AMBIGUOUS


def test_ambiguous_path_is_refused_at_the_first_rule_with_paths(github: InterceptHost) -> None:
    judgement = github.judge("GET", "/a//b")
    assert (judgement.allowed, judgement.reason) == (False, Reason.PATH_AMBIGUOUS)
    assert judgement.rule == "intercept[api.github.com] rule 1 (line 8)"
    assert "empty path segment" in judgement.detail
    # rules 1 and 2 are skipped on their methods; rule 3 (any method) has paths
    assert github.judge("PUT", "/a//b").reason is Reason.PATH_AMBIGUOUS  # rule 3 has paths


def test_report_mode_lets_refusals_through_with_their_reason(policies: PolicySet) -> None:
    audit = _host(policies, "api.github.com", "audit")
    assert audit.judge("GET", "/ok").reason is Reason.ALLOWED
    judgement = audit.judge("DELETE", "/other")
    assert (judgement.allowed, judgement.reason) == (True, Reason.RULE_NOT_MATCHED)
    judgement = audit.judge("GET", "/a//b")
    assert (judgement.allowed, judgement.reason) == (True, Reason.PATH_AMBIGUOUS)
    assert judgement.target == "/a//b"


# ---------------------------------------------------------------------------------------------
# Secrets
# ---------------------------------------------------------------------------------------------


def test_set_headers_are_resolved_lowercase_with_their_prefix(policies: PolicySet) -> None:
    github = _host(policies, "api.github.com")
    assert github.set_headers == ((b"authorization", b"Bearer " + TOKEN.encode()),)
    assert github.secrets == (TOKEN.encode(),)
    pypi = _host(policies, "pypi.org")
    assert pypi.set_headers == ((b"authorization", b"Basic " + PYPI_TOKEN.encode()),)
    assert _host(policies, "uploads.github.com").set_headers == ()


def test_all_secrets_name_their_host(policies: PolicySet) -> None:
    ci = policies.policies["ci"].intercept
    assert [(s, h.pattern) for s, h in ci.all_secrets] == [
        (TOKEN.encode(), "api.github.com"),
        (PYPI_TOKEN.encode(), "pypi.org"),
    ]
    assert policies.all_secrets == ci.all_secrets


def test_secret_leak(policies: PolicySet) -> None:
    github = _host(policies, "api.github.com")
    body = b"token=" + TOKEN.encode() + b"&x=1"
    assert policies.secret_leak(body) == "intercept[api.github.com] (line 6)"
    assert policies.secret_leak(body, own=github.secrets) is None
    assert policies.secret_leak(bytearray(PYPI_TOKEN.encode()), own=github.secrets) == (
        "intercept[pypi.org] (line 16)"
    )
    assert policies.secret_leak(b"GET / HTTP/1.1\r\nHost: x\r\n\r\n") is None
    assert policies.secret_leak(TOKEN.encode()[:-1]) is None  # a prefix is not the secret


def test_no_secret_in_any_repr(policies: PolicySet) -> None:
    for policy in policies.policies.values():
        for text in (repr(policy.intercept), repr(policy.config), str(policy.config)):
            assert TOKEN not in text
            assert PYPI_TOKEN not in text
        for host in policy.intercept.hosts:
            assert TOKEN not in repr(host)


def test_empty_policy_set_has_no_secrets() -> None:
    policies = PolicySet.compile(load_config_text("allow: [a.example]\n"))
    assert policies.all_secrets == ()
    assert policies.secret_leak(b"anything") is None


# ---------------------------------------------------------------------------------------------
# Properties
# ---------------------------------------------------------------------------------------------

segments = st.sampled_from(
    ["our-org", "other-org", "..", ".", "%2e%2e", "%2E", "x", "", ";", "%2f", "\\", "%41", "*"]
)


@given(st.lists(segments, max_size=8), st.sampled_from(["", "?a=../b", "?"]))
def test_whatever_is_allowed_is_under_the_rule(
    github: InterceptHost, parts: list[str], query: str
) -> None:
    judgement = github.judge("GET", "/repos/our-org/" + "/".join(parts) + query)
    if judgement.allowed:
        assert judgement.path.startswith("/repos/our-org/")
        assert judgement.target.startswith(judgement.path)
        assert judgement.target == judgement.path + query


def test_compiled_intercept_without_entries() -> None:
    empty = CompiledIntercept()
    assert not empty
    assert empty.all_secrets == ()
    assert empty.for_host(normalize_host("a.example")) is None
