"""load_config_text: `tls_intercept` and the per-policy `intercept` key (docs/interception.md).

Every mistake is an issue at file:line:column, all of them in one ConfigError; no message ever
contains a secret's value, not even when the secret is what is wrong.
"""

from __future__ import annotations

import os
import textwrap
from pathlib import Path

import pytest
import trustme

from egressgate.config.load import load_config_text
from egressgate.config.model import (
    Config,
    InterceptConfig,
    InterceptRuleConfig,
    Secret,
    TlsInterceptConfig,
)
from egressgate.errors import ConfigError
from egressgate.policy.engine import PolicySet

TOKEN = "ghp_S3cretTokenValue0123456789"  # what must never appear in an error
Issue = tuple[int | None, int | None, str]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    ca = trustme.CA()
    ca.cert_pem.write_to_path(str(tmp_path / "ca.crt"))
    key = tmp_path / "ca.key"
    ca.private_key_pem.write_to_path(str(key))
    key.chmod(0o600)
    (tmp_path / "gh-token").write_text(TOKEN + "\n")
    (tmp_path / "gh-token").chmod(0o600)
    other = trustme.CA()
    other.cert_pem.write_to_path(str(tmp_path / "other.crt"))
    leaf = ca.issue_cert("proxy.test")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "leaf.crt"))
    return tmp_path


HEAD = """\
tls_intercept: {ca_cert_file: ca.crt, ca_key_file: ca.key}
"""

EXAMPLE = (
    HEAD
    + """\
policies:
  ci:
    allow: [.github.com, pypi.org]
    intercept:
      - host: api.github.com
        rules:                      # first match wins
          - {methods: [GET, HEAD], paths: ["/repos/our-org/*"]}
          - methods: [POST]
            paths: [/repos/our-org/*/issues, /graphql]
          - {paths: [/socket], websocket: true}
        set_headers: {Authorization: "Bearer file:gh-token", X-Token: "env:EG_TEST_TOKEN"}
      - host: pypi.org
        rules: [{methods: [GET, HEAD]}]
"""
)


def load(text: str, base: Path) -> Config:
    return load_config_text(textwrap.dedent(text), "test.yaml", str(base))


def issues(text: str, base: Path) -> list[Issue]:
    with pytest.raises(ConfigError) as caught:
        load(text, base)
    found = [(i.line, i.column, i.message) for i in caught.value.issues]
    assert TOKEN not in str(caught.value)
    return found


def only_issue(text: str, base: Path) -> Issue:
    found = issues(text, base)
    assert len(found) == 1, found
    return found[0]


@pytest.fixture(autouse=True)
def _token_env(monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EG_TEST_TOKEN", "env-" + TOKEN)


def test_the_issue_example_loads(files: Path) -> None:
    config = load(EXAMPLE, files)
    assert config.tls_intercept == TlsInterceptConfig(
        str(files / "ca.crt"), str(files / "ca.key"), None
    )
    ci = config.policy("ci")
    github, pypi = ci.intercept
    assert github.host == "api.github.com"
    assert github.line == 6
    assert github.rules == (
        InterceptRuleConfig(("GET", "HEAD"), ("/repos/our-org/*",), False, line=8),
        InterceptRuleConfig(("POST",), ("/repos/our-org/*/issues", "/graphql"), False, line=9),
        InterceptRuleConfig((), ("/socket",), True, line=11),
    )
    auth, token = github.set_headers
    assert (auth.name, auth.prefix) == ("Authorization", "Bearer ")
    assert auth.secret.reveal() == TOKEN.encode()  # trailing newline of the file dropped
    assert auth.secret.source == "file:gh-token"
    assert (token.name, token.prefix, token.secret.reveal()) == (
        "X-Token",
        "",
        b"env-" + TOKEN.encode(),
    )
    assert pypi == InterceptConfig(
        "pypi.org", (InterceptRuleConfig(("GET", "HEAD"), line=14),), line=13
    )
    assert config.policy("default").intercept == ()
    assert TOKEN not in repr(config)
    assert TOKEN not in str(config)


def test_top_level_intercept_belongs_to_the_default_policy(files: Path) -> None:
    config = load(
        HEAD
        + """\
        allow: [api.github.com]
        intercept:
          - {host: api.github.com, rules: [{}]}
        """.replace("        ", ""),
        files,
    )
    (entry,) = config.policy("default").intercept
    assert entry.rules == (InterceptRuleConfig(line=4),)


def test_upstream_ca_file_and_null(files: Path) -> None:
    text = "tls_intercept: {ca_cert_file: ca.crt, ca_key_file: ca.key, upstream_ca_file: %s}\n"
    config = load(text % "other.crt", files)
    assert config.tls_intercept is not None
    assert config.tls_intercept.upstream_ca_file == str(files / "other.crt")
    config = load(text % "null", files)
    assert config.tls_intercept is not None
    assert config.tls_intercept.upstream_ca_file is None
    assert load("tls_intercept: null\n", files).tls_intercept is None


def test_secret_is_never_in_repr_and_compares_by_value() -> None:
    a = Secret("env:X", b"abcdefgh12")
    assert repr(a) == "Secret('env:X')" == str(a)
    assert a == Secret("env:X", b"abcdefgh12")
    assert a != Secret("env:X", b"abcdefgh13")
    with pytest.raises(TypeError):
        __import__("pickle").dumps(a)


# ---------------------------------------------------------------------------------------------
# Errors, each located
# ---------------------------------------------------------------------------------------------


def _policy(body: str) -> str:
    """`body` as the intercept list of a policy allowing .github.com, under HEAD."""
    return HEAD + "allow: [.github.com]\nintercept:\n" + textwrap.indent(body, "  ")


@pytest.mark.parametrize(
    ("body", "expected"),
    [
        # unknown keys and wrong types
        ("- {host: api.github.com, rules: [{}], extra: 1}\n", (4, 41, "unknown key 'extra'")),
        ("- {host: api.github.com, rules: [{method: [GET]}]}\n", (4, 37, "unknown key 'method'")),
        ("- {rules: [{}]}\n", (4, 5, "needs 'host'")),
        ("- {host: api.github.com}\n", (4, 5, "needs 'rules'")),
        ("- {host: api.github.com, rules: []}\n", (4, 35, "non-empty list")),
        ("- {host: api.github.com, rules: {}}\n", (4, 35, "non-empty list")),
        ("- {host: api.github.com, rules: [{websocket: yes please}]}\n", (4, 48, "true or false")),
        ("- {host: [a], rules: [{}]}\n", (4, 12, "single value")),
        ("- api.github.com\n", (4, 5, "must be a mapping")),
        # hosts
        ("- {host: '*', rules: [{}]}\n", (4, 12, "'*' is refused")),
        ("- {host: 10.0.0.0/8, rules: [{}]}\n", (4, 12, "is an address")),
        ("- {host: 'a b', rules: [{}]}\n", (4, 12, "intercept host")),
        ("- {host: example.org, rules: [{}]}\n", (4, 5, "not allowed by policy 'default'")),
        # methods
        ("- {host: api.github.com, rules: [{methods: [get]}]}\n", (4, 47, "write 'GET'")),
        ("- {host: api.github.com, rules: [{methods: ['G T']}]}\n", (4, 47, "not an HTTP method")),
        ("- {host: api.github.com, rules: [{methods: [CONNECT]}]}\n", (4, 47, "CONNECT")),
        ("- {host: api.github.com, rules: [{methods: []}]}\n", (4, 46, "methods is empty")),
        (
            "- {host: api.github.com, rules: [{methods: [POST], websocket: true}]}\n",
            (4, 65, "needs GET"),
        ),
        # paths
        ("- {host: api.github.com, rules: [{paths: [repos]}]}\n", (4, 45, "starts with '/'")),
        ("- {host: api.github.com, rules: [{paths: ['/a/../b']}]}\n", (4, 45, "normal form")),
        ("- {host: api.github.com, rules: [{paths: ['/a//b']}]}\n", (4, 45, "empty path segment")),
        ("- {host: api.github.com, rules: [{paths: ['/a;b']}]}\n", (4, 45, "';'")),
        ("- {host: api.github.com, rules: [{paths: ['/a/**']}]}\n", (4, 45, "'**'")),
        ("- {host: api.github.com, rules: [{paths: ['/a?b']}]}\n", (4, 45, "not the query")),
        # set_headers
        (
            "- {host: api.github.com, rules: [{}], set_headers: {Auth: 'token123456'}}\n",
            (4, 61, "comes from a secret"),
        ),
        (
            "- {host: api.github.com, rules: [{}], set_headers: {Host: 'env:EG_TEST_TOKEN'}}\n",
            (4, 55, "frames the message"),
        ),
        (
            "- {host: api.github.com, rules: [{}], set_headers: {Proxy-X: 'env:EG_TEST_TOKEN'}}\n",
            (4, 55, "frames the message"),
        ),
        (
            "- {host: api.github.com, rules: [{}], set_headers: {'A B': 'env:EG_TEST_TOKEN'}}\n",
            (4, 55, "not a header name"),
        ),
        (
            "- {host: api.github.com, rules: [{}], set_headers: {A: 'env:EG_UNSET_VAR_X'}}\n",
            (4, 58, "EG_UNSET_VAR_X is unset or empty"),
        ),
        (
            "- {host: api.github.com, rules: [{}], set_headers: {A: 'file:nope'}}\n",
            (4, 58, "cannot read the secret file"),
        ),
        (
            "- {host: api.github.com, rules: [{}], set_headers: {A: 'env:'}}\n",
            (4, 58, "names no env"),
        ),
        (
            "- {host: api.github.com, rules: [{}], set_headers: [a]}\n",
            (4, 54, "must be a mapping"),
        ),
    ],
)
def test_intercept_errors(files: Path, body: str, expected: Issue) -> None:
    line, column, text = only_issue(_policy(body), files)
    assert (line, column) == expected[:2], (line, column, text)
    assert expected[2] in text


def test_duplicate_hosts_and_headers(files: Path) -> None:
    found = issues(
        _policy(
            "- {host: api.github.com, rules: [{}]}\n"
            "- {host: API.github.com., rules: [{}]}\n"
            "- {host: x.github.com, rules: [{}], set_headers: "
            "{A: 'env:EG_TEST_TOKEN', a: 'env:EG_TEST_TOKEN'}}\n"
        ),
        files,
    )
    assert [(line, text.split(":")[0]) for line, _, text in found] == [
        (5, "intercept"),
        (6, "set_headers"),
    ]
    assert "listed twice" in found[0][2]
    assert "set twice" in found[1][2]


def test_intercept_needs_tls_intercept(files: Path) -> None:
    line, column, text = only_issue(
        "allow: [api.github.com]\nintercept: [{host: api.github.com, rules: [{}]}]\n", files
    )
    assert (line, column) == (2, 12)
    assert "needs tls_intercept" in text


def test_named_policy_host_must_be_allowed(files: Path) -> None:
    line, column, text = only_issue(
        HEAD
        + "policies:\n  ci:\n    allow: [api.github.com]\n    intercept:\n"
        + "      - {host: .github.com, rules: [{}]}\n",
        files,
    )
    assert (line, column) == (6, 9)
    assert "'.github.com' is not allowed by policy 'ci'" in text


@pytest.mark.parametrize(
    ("allow", "host", "ok"),
    [
        ("api.github.com", "api.github.com", True),
        (".github.com", "api.github.com", True),
        (".github.com", ".github.com", True),
        (".github.com", "'*.github.com'", True),
        (".github.com", ".api.github.com", True),
        ("'*.github.com'", "api.github.com", True),
        ("'*.github.com'", "'*.github.com'", True),
        ("'*.github.com'", ".github.com", False),  # the apex is not allowed
        ("api.github.com", ".github.com", False),
        ("api.github.com", "'*.github.com'", False),
        ("'*'", ".github.com", True),
        ("github.com", "api.github.com", False),
    ],
)
def test_intercept_host_coverage(files: Path, allow: str, host: str, ok: bool) -> None:
    text = HEAD + f"allow: [{allow}]\nintercept: [{{host: {host}, rules: [{{}}]}}]\n"
    if ok:
        load(text, files)
    else:
        assert "is not allowed by policy" in only_issue(text, files)[2]


# ---------------------------------------------------------------------------------------------
# tls_intercept
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        ("tls_intercept: {ca_cert_file: ca.crt}\n", (1, 16, "needs 'ca_key_file'")),
        ("tls_intercept: {ca_key_file: ca.key}\n", (1, 16, "needs 'ca_cert_file'")),
        (
            "tls_intercept: {ca_cert_file: ca.crt, ca_key_file: ca.key, x: 1}\n",
            (1, 60, "unknown key 'x'"),
        ),
        ("tls_intercept: [a]\n", (1, 16, "must be a mapping")),
        ("tls_intercept: {ca_cert_file: nope.crt, ca_key_file: ca.key}\n", (1, 31, "not found")),
        (
            "tls_intercept: {ca_cert_file: leaf.crt, ca_key_file: ca.key}\n",
            (1, 31, "not a CA certificate"),
        ),
        (
            "tls_intercept: {ca_cert_file: other.crt, ca_key_file: ca.key}\n",
            (1, 55, "does not belong"),
        ),
        ("tls_intercept: {ca_cert_file: ca.crt, ca_key_file: ca.crt}\n", (1, 52, "not a PEM")),
        (
            "tls_intercept: {ca_cert_file: ca.crt, ca_key_file: ca.key, "
            "upstream_ca_file: ca.key}\n",
            (1, 78, "cannot load upstream_ca_file"),
        ),
    ],
)
def test_tls_intercept_errors(files: Path, text: str, expected: Issue) -> None:
    if "ca_key_file: ca.crt" in text:
        (files / "ca.crt").chmod(0o600)
    line, column, message = only_issue(text, files)
    assert (line, column) == expected[:2], (line, column, message)
    assert expected[2] in message


ROOT = os.geteuid() == 0
OTHER_UID = 65534  # nobody: as root, the tests give the key to another owner with it


@pytest.mark.parametrize(
    ("mode", "root_owned", "refused"),
    [
        (0o600, False, False),
        (0o400, False, False),
        (0o640, False, True),  # group-readable, owned by a user: refused
        (0o604, False, True),
        (0o644, False, True),
        (0o660, False, True),
        (0o620, False, True),
        (0o700 | 0o004, False, True),
        (0o640, True, False),  # root-owned, group-readable (ssl-cert, Kubernetes fsGroup)
        (0o440, True, False),
        (0o660, True, True),  # group write: never
        (0o650, True, True),
        (0o644, True, True),  # others: never
        (0o604, True, True),
        (0o601, True, True),
    ],
)
def test_ca_key_readable_by_others_is_refused(
    files: Path, mode: int, root_owned: bool, refused: bool
) -> None:
    key = files / "ca.key"
    if root_owned != ROOT:
        if not ROOT:
            pytest.skip("only root can give the key to root")
        os.chown(key, OTHER_UID, -1)
    os.chmod(key, mode)
    if not refused:
        load(HEAD, files)
        return
    line, column, message = only_issue(HEAD, files)
    assert (line, column) == (1, 52)
    assert str(key) in message
    assert f"mode {mode:04o}" in message
    assert "chmod 600" in message


def test_ca_key_through_a_symlink_is_judged_by_its_target(files: Path) -> None:
    """A Kubernetes Secret volume links each key to the real file; the real mode counts."""
    (files / "real").mkdir()
    os.rename(files / "ca.key", files / "real" / "ca.key")
    os.symlink(files / "real" / "ca.key", files / "ca.key")
    load(HEAD, files)
    os.chmod(files / "real" / "ca.key", 0o604)
    assert "mode 0604" in only_issue(HEAD, files)[2]


# ---------------------------------------------------------------------------------------------
# Secrets: located errors that never show the value
# ---------------------------------------------------------------------------------------------


def _with_secret(source: str) -> str:
    return _policy(f"- {{host: api.github.com, rules: [{{}}], set_headers: {{A: '{source}'}}}}\n")


@pytest.mark.parametrize(
    ("content", "why"),
    [
        (TOKEN + "\r\nsecond-line-" + TOKEN, "line break"),
        (TOKEN + "\x00", "control character"),
        ("caf\u00e9-" + TOKEN, "non-ASCII"),
        ("short", "shorter than 8 bytes"),
        ("", "shorter than 8 bytes"),
        ("   \n", "shorter than 8 bytes"),
        (TOKEN * 2000, "larger than 16384 bytes"),
    ],
)
def test_bad_secret_file_content(files: Path, content: str, why: str) -> None:
    (files / "bad-secret").write_bytes(content.encode())
    line, column, message = only_issue(_with_secret("file:bad-secret"), files)
    assert (line, column) == (4, 58)
    assert why in message
    assert str(files / "bad-secret") in message
    assert "ghp_" not in message


def test_bad_secret_env_content(files: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    monkeypatch.setenv("EG_TEST_BAD", TOKEN + "\nx")
    message = only_issue(_with_secret("Bearer env:EG_TEST_BAD"), files)[2]
    assert "environment variable EG_TEST_BAD" in message
    assert "line break" in message


def test_unreadable_secret_file(files: Path) -> None:
    if os.geteuid() == 0:
        pytest.skip("root reads any file; a directory stands in for an unreadable file below")
    (files / "gh-token").chmod(0)
    assert "cannot read the secret file" in only_issue(_with_secret("file:gh-token"), files)[2]


def test_secret_file_that_is_a_directory(files: Path) -> None:
    (files / "secretdir").mkdir()
    message = only_issue(_with_secret("file:secretdir"), files)[2]
    assert "cannot read the secret file" in message
    assert "Is a directory" in message


def test_every_issue_is_reported_at_once(files: Path) -> None:
    found = issues(
        HEAD
        + "allow: [.github.com]\nintercept:\n"
        + "  - {host: api.github.com, rules: [{methods: [get], paths: [x]}]}\n"
        + "  - {host: example.org, rules: [{}], set_headers: {A: 'env:EG_UNSET_VAR_X'}}\n",
        files,
    )
    assert [line for line, _, _ in found] == [4, 4, 5]


def test_describing_a_config_without_its_secrets(files: Path) -> None:
    """`k8s render` loads with secrets=False: nothing is read (the variable may be unset, the
    file absent), the rest is validated as usual, and such a config cannot be compiled."""
    text = _with_secret("Bearer env:EG_UNSET_VAR_X")
    config = load_config_text(textwrap.dedent(text), "test.yaml", str(files), secrets=False)
    (header,) = config.policy("default").intercept[0].set_headers
    assert (header.prefix, header.secret.source, header.secret.reveal()) == (
        "Bearer ",
        "env:EG_UNSET_VAR_X",
        b"",
    )
    with pytest.raises(ValueError, match="compiled from a config without secrets"):
        PolicySet.compile(config)
    with pytest.raises(ConfigError, match="names no file"):
        load_config_text(_with_secret("file:"), "test.yaml", str(files), secrets=False)
