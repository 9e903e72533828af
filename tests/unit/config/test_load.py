"""load_config_text / load_config_file: YAML → Config, every issue at the right line:column.

Line and column numbers are 1-based and point at the offending node (the key for key problems,
the value for value problems), so that an editor can jump to them. Every issue in a file is
reported in one ConfigError, sorted by position.
"""

from __future__ import annotations

import os
import re
import textwrap
from pathlib import Path

import pytest
import trustme
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressgate.config.load import POLICY_KEYS, TOP_LEVEL_KEYS, load_config_file, load_config_text
from egressgate.config.model import (
    AuthConfig,
    ClientRule,
    Config,
    ListenAddress,
    Mode,
    NoSniAction,
    PolicyConfig,
    PortRange,
)
from egressgate.errors import ConfigError, ConfigIssue
from egressgate.policy.engine import PolicySet

Issue = tuple[int | None, int | None, str]


@pytest.fixture
def files(tmp_path: Path) -> Path:
    """A directory with the files configs refer to.

    The TLS material is real (the loader checks that it loads); the users file is a placeholder.
    """
    (tmp_path / "hosts").write_text("10.0.0.5 db.internal\n::1 local6\n")
    (tmp_path / "bad.hosts").write_text("# ok\n10.0.0.5 db.internal\nnot-an-ip name\n")
    ca = trustme.CA()
    leaf = ca.issue_cert("proxy.test")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    ca.cert_pem.write_to_path(str(tmp_path / "ca.pem"))
    ca.private_key_pem.write_to_path(str(tmp_path / "ca.key"))
    (tmp_path / "ca.key").chmod(0o600)  # the interception CA's key must be private
    (tmp_path / "gh-token").write_text("ghp_placeholder_token_value\n")
    (tmp_path / "users").write_text("placeholder\n")
    (tmp_path / "logs").mkdir()
    return tmp_path


def load(text: str, base_dir: Path | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), "test.yaml", str(base_dir or "/nonexistent"))


def issues(text: str, base_dir: Path | None = None) -> list[Issue]:
    """(line, column, message) of every issue, in the order the ConfigError lists them."""
    with pytest.raises(ConfigError) as caught:
        load(text, base_dir)
    return [(i.line, i.column, i.message) for i in caught.value.issues]


def only_issue(text: str, base_dir: Path | None = None) -> Issue:
    found = issues(text, base_dir)
    assert len(found) == 1, found
    return found[0]


# ---------------------------------------------------------------------------------------------
# Valid configs
# ---------------------------------------------------------------------------------------------

FULL_EXAMPLE = """\
# The example config of the README: every common key.
listen: 0.0.0.0:3128
admin_listen: 127.0.0.1:9090
allow:
  - api.stripe.com          # exactly this host
  - .example.com            # example.com and every subdomain
  - "*.cdn.example.net"     # subdomains only
  - 203.0.113.7             # an IP-literal destination
  - 198.51.100.0/24
connect_ports: [443, 8443, "9000-9100"]
http_ports: [80, 8080]
allow_private:
  - 10.20.0.0/16
  - fd00::/8
hosts_file: hosts
nameservers: [10.0.0.2, "10.0.0.3:5353", "2001:db8::53", "[2001:db8::54]:5353"]
access_log: logs/access.log
mode: report
"""


def test_full_example_config_loads(files: Path) -> None:
    config = load(FULL_EXAMPLE, files)
    assert config.source == "test.yaml"
    assert config.listen == ListenAddress("0.0.0.0", 3128)
    assert config.admin_listen == ListenAddress("127.0.0.1", 9090)
    assert config.hosts_file == str(files / "hosts")  # relative to the config's directory
    assert config.access_log == str(files / "logs" / "access.log")
    assert config.nameservers == (
        "10.0.0.2:53",
        "10.0.0.3:5353",
        "[2001:db8::53]:53",
        "[2001:db8::54]:5353",
    )
    assert config.policies == (
        PolicyConfig(
            "default",
            allow=(
                "api.stripe.com",
                ".example.com",
                "*.cdn.example.net",
                "203.0.113.7",
                "198.51.100.0/24",
            ),
            connect_ports=(PortRange(443, 443), PortRange(8443, 8443), PortRange(9000, 9100)),
            http_ports=(PortRange(80, 80), PortRange(8080, 8080)),
            allow_private=("10.20.0.0/16", "fd00::/8"),
            mode=Mode.REPORT,
        ),
    )
    PolicySet.compile(config)  # what loads, compiles


DOCS = Path(__file__).resolve().parents[3] / "docs" / "configuration.md"


def _documented_example() -> str:
    """The complete commented example of docs/configuration.md (its first yaml block)."""
    if not DOCS.is_file():
        pytest.skip("docs/configuration.md is not in this checkout")
    match = re.search(r"```yaml\n(# /etc/egressgate/egress.yaml.*?)```", DOCS.read_text(), re.S)
    assert match, "docs/configuration.md lost its complete example"
    return match.group(1)


def test_the_documented_complete_example_loads_and_compiles(files: Path) -> None:
    # Its absolute paths (auth users, TLS material) point into the test's own directory.
    text = re.sub(r"/etc/egressgate-(?:auth|tls|ca)/|/run/secrets/", "", _documented_example())
    text = text.replace("tls.crt", "cert.pem").replace("tls.key", "key.pem")
    text = text.replace("ca.crt", "ca.pem")
    config = load_config_text(text, "egress.yaml", str(files))
    assert {p.name for p in config.policies} >= {"default", "ci"}
    assert config.clients
    PolicySet.compile(config)


def test_empty_file_gives_the_defaults() -> None:
    config = load("")
    assert config == Config(source="test.yaml")
    assert config.listen == ListenAddress("0.0.0.0", 3128)
    assert config.admin_listen == ListenAddress("0.0.0.0", 9090)
    policy = config.policy("default")
    assert policy.connect_ports == (PortRange(443, 443),)
    assert policy.http_ports == (PortRange(80, 80),)
    assert policy.mode is Mode.ENFORCE
    assert policy.allow == ()


def test_comment_only_file_gives_the_defaults() -> None:
    assert load("# nothing here\n") == Config(source="test.yaml")


def test_omitted_keys_keep_their_defaults() -> None:
    config = load("allow: [example.com]\n")
    policy = config.policy("default")
    assert policy.allow == ("example.com",)
    assert policy.connect_ports == (PortRange(443, 443),)
    assert policy.http_ports == (PortRange(80, 80),)
    assert config.admin_listen == ListenAddress("0.0.0.0", 9090)
    assert policy.mode is Mode.ENFORCE


@pytest.mark.parametrize("spelling", ["null", "~", ""])
def test_admin_listen_null_disables_the_admin_listener(spelling: str) -> None:
    assert load(f"admin_listen: {spelling}\n").admin_listen is None


def test_a_single_value_is_a_list_of_one() -> None:
    config = load("allow: example.com\nconnect_ports: 443\n")
    assert config.policy("default").allow == ("example.com",)
    assert config.policy("default").connect_ports == (PortRange(443, 443),)


def test_empty_list_value_is_an_empty_list() -> None:
    assert load("allow: []\n").policy("default").allow == ()
    assert load("allow:\n").policy("default").allow == ()


def test_named_policies_clients_and_auth(files: Path) -> None:
    config = load(
        """\
        policies:
          default:
            allow: [.example.com]
          ci:
            allow: ["*"]
            mode: report
            connect_ports: ["1-65535"]
            tunnels_without_sni: deny
            sni_check: false
        default_policy: ci
        auth:
          users_file: users
          realm: corp
        clients:
          - source: [10.0.0.0/8, "fd00::/8"]
            policy: default
          - user: [alice, bob]
            policy: ci
        """,
        files,
    )
    assert [p.name for p in config.policies] == ["default", "ci"]
    ci = config.policy("ci")
    assert ci.mode is Mode.REPORT
    assert ci.tunnels_without_sni is NoSniAction.DENY
    assert ci.sni_check is False
    assert ci.connect_ports == (PortRange(1, 65535),)
    assert config.default_policy == "ci"
    assert config.auth == AuthConfig(str(files / "users"), None, "corp")
    assert config.clients == (
        ClientRule("default", ("10.0.0.0/8", "fd00::/8"), line=15),
        ClientRule("ci", (), ("alice", "bob"), line=17),
    )
    PolicySet.compile(config)


def test_tls_listen_with_client_ca_allows_tls_name_rules(files: Path) -> None:
    config = load(
        """\
        tls_listen:
          listen: "[::]:3129"
          cert_file: cert.pem
          key_file: key.pem
          client_ca_file: ca.pem
          require_client_cert: true
        clients:
          - tls_name: Billing.Example
            policy: default
        """,
        files,
    )
    assert config.tls_listen is not None
    assert config.tls_listen.listen == ListenAddress("::", 3129)
    assert config.tls_listen.client_ca_file == str(files / "ca.pem")
    assert config.clients[0].tls_names == ("billing.example",)  # lowercased


def test_limits_override_single_fields() -> None:
    config = load("limits:\n  max_header_bytes: 4096\n  header_timeout_s: 2.5\n")
    assert config.limits.max_header_bytes == 4096
    assert config.limits.header_timeout_s == 2.5
    assert config.limits.max_connections == 10_000  # untouched


def test_load_config_file_resolves_paths_next_to_the_file(files: Path) -> None:
    path = files / "egressgate.yaml"
    path.write_text("hosts_file: hosts\n")
    config = load_config_file(str(path))
    assert config.hosts_file == str(files / "hosts")
    assert config.source == str(path)


def test_load_config_file_reports_unreadable_and_non_utf8_files(tmp_path: Path) -> None:
    with pytest.raises(ConfigError, match="cannot read"):
        load_config_file(str(tmp_path / "missing.yaml"))
    binary = tmp_path / "binary.yaml"
    binary.write_bytes(b"allow: [\xff\xfe]\n")
    with pytest.raises(ConfigError, match="UTF-8"):
        load_config_file(str(binary))


# ---------------------------------------------------------------------------------------------
# Every error kind, at the right line and column
# ---------------------------------------------------------------------------------------------


def test_unknown_key_is_reported_at_the_key() -> None:
    line, column, message = only_issue("listen: 0.0.0.0:3128\nalow: [example.com]\n")
    assert (line, column) == (2, 1)
    assert "unknown key 'alow'" in message


def test_unknown_key_inside_a_policy_is_reported_at_that_key() -> None:
    assert only_issue("policies:\n  ci:\n    listen: 0.0.0.0:1\n")[:2] == (3, 5)


@pytest.mark.parametrize(
    ("text", "position", "message"),
    [
        ("workers: many\n", (1, 10), "whole number"),
        ("workers: 0\n", (1, 10), "from 1 to 256"),
        ("workers: true\n", (1, 10), "whole number"),  # a bool is not a number
        ("forwarded_for: 1\n", (1, 16), "true or false"),
        ("reload_revokes: yes please\n", (1, 17), "true or false"),
        ("allow: {a: 1}\n", (1, 8), "must be a list"),
        ("allow: [1.5]\n", (1, 9), "expected a string"),
        ("allow: [true]\n", (1, 9), "expected a string"),
        ("mode: [enforce]\n", (1, 7), "single value"),
        ("listen: 3128\n", (1, 9), "host:port"),
        ("limits: [1]\n", (1, 9), "mapping"),
        ("limits:\n  header_timeout_s: 0\n", (2, 21), "positive"),
        ("limits:\n  header_timeout_s: .nan\n", (2, 21), "positive"),
        ("limits:\n  header_timeout_s: .inf\n", (2, 21), "positive"),
        ("limits:\n  shutdown_delay_s: -1\n", (2, 21), "≥ 0"),
        ("limits:\n  max_connections: 1.5\n", (2, 20), "whole number"),
        ("clients: {}\n", (1, 10), "must be a list"),
        ("clients: [1]\n", (1, 11), "mapping"),
        ("policies: []\n", (1, 11), "mapping"),
        ("policies:\n  ci: null\n", (2, 7), "mapping"),
        ("default_policy: 1\n", (1, 17), "non-empty string"),
        ("- a\n- b\n", (1, 1), "the config must be a mapping"),
    ],
)
def test_wrong_type_is_reported_at_the_value(
    text: str, position: tuple[int, int], message: str
) -> None:
    line, column, found = only_issue(text)
    assert (line, column) == position
    assert message in found


def test_duplicate_key_is_reported_at_the_second_occurrence() -> None:
    line, column, message = only_issue("mode: enforce\nallow: []\nmode: report\n")
    assert (line, column) == (3, 1)
    assert "duplicate key 'mode'" in message


def test_duplicate_key_inside_a_nested_mapping() -> None:
    assert only_issue("limits:\n  max_connections: 5\n  max_connections: 6\n")[:2] == (3, 3)


def test_bad_allow_pattern_is_reported_at_the_entry() -> None:
    line, column, message = only_issue("allow:\n  - api.example.com\n  - foo*.bar\n")
    assert (line, column) == (3, 5)
    assert "foo*.bar" in message


@pytest.mark.parametrize("entry", ["*.", "..x", "a..b", "x.09", "1.2.3.4.5", "10.0.0.0/33"])
def test_every_invalid_pattern_kind_is_a_config_issue(entry: str) -> None:
    assert only_issue(f'allow: ["{entry}"]\n')[:2] == (1, 9)


def test_bad_cidr_in_allow_private_is_reported_at_the_entry() -> None:
    line, column, message = only_issue("allow_private:\n  - 10.0.0.0/8\n  - 10.0.0.0/33\n")
    assert (line, column) == (3, 5)
    assert "CIDR" in message


def test_bad_ports_and_ranges_are_each_reported_at_their_entry() -> None:
    found = issues('connect_ports: [443, 0, "9-3", 70000, https, "1-"]\n')
    assert [(line, col) for line, col, _ in found] == [(1, 22), (1, 25), (1, 32), (1, 39), (1, 46)]
    assert all("port" in message for _, _, message in found)


def test_listen_ipv6_without_brackets_is_refused() -> None:
    line, column, message = only_issue("listen: ::1:3128\n")
    assert (line, column) == (1, 9)
    assert "brackets" in message


def test_admin_listen_bad_address_is_refused() -> None:
    assert only_issue("admin_listen: 0.0.0.0:99999\n")[:2] == (1, 15)


@pytest.mark.parametrize(
    ("entry", "message"),
    [
        ("dns.google", "a nameserver is an IP address"),
        ("1.1.1.1:0", "must not be 0"),
        ("1.1.1.1:x", "port"),
        ("[::1]", "[::]:3128"),
    ],
)
def test_bad_nameserver_is_reported_at_the_entry(entry: str, message: str) -> None:
    line, column, found = only_issue(f'nameservers: [1.1.1.1, "{entry}"]\n')
    assert (line, column) == (1, 24)
    assert message in found


def test_unknown_mode_is_refused_with_the_choices() -> None:
    line, column, message = only_issue("mode: audit\n")
    assert (line, column) == (1, 7)
    assert "enforce, report" in message


def test_unknown_tunnels_without_sni_action_is_refused() -> None:
    assert "allow, deny" in only_issue("tunnels_without_sni: maybe\n")[2]


def test_missing_hosts_file_is_reported_at_the_value() -> None:
    line, column, message = only_issue("hosts_file: nope.hosts\n", Path("/nonexistent"))
    assert (line, column) == (1, 13)
    assert "file not found" in message


def test_hosts_file_with_a_bad_line_names_the_hosts_line(files: Path) -> None:
    line, column, message = only_issue("hosts_file: bad.hosts\n", files)
    assert (line, column) == (1, 13)
    assert "line 3" in message
    assert "not-an-ip" in message


def test_access_log_in_a_missing_directory_is_refused() -> None:
    assert "does not exist" in only_issue("access_log: /nonexistent/dir/access.log\n")[2]


def test_access_log_that_cannot_be_opened_for_appending_is_refused(tmp_path: Path) -> None:
    """Issue 19, item 3: `check` (and a reload) accepted an access_log the proxy cannot open."""
    (tmp_path / "a-dir").mkdir()
    (tmp_path / "a-file").write_text("x")
    os.symlink(tmp_path / "gone" / "x.log", tmp_path / "dangling")
    cases = {
        "a-dir": "is a directory",
        "a-file/access.log": "not a directory",
        "nowhere/access.log": "directory does not exist",
        "dangling": "directory does not exist",
    }
    for value, message in cases.items():
        line, column, text = only_issue(f"access_log: {value}\n", tmp_path)
        assert (line, column) == (1, 13)
        assert text.startswith(f"access_log {tmp_path / value}: {message}"), text
    # Creatable, and existing and writable, are fine.
    assert load("access_log: new.log\n", tmp_path).access_log == str(tmp_path / "new.log")
    assert load("access_log: a-file\n", tmp_path).access_log == str(tmp_path / "a-file")


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("allow: [a\n", (2, 1)),  # unclosed flow sequence: found at the end of the stream
        ("listen: 0.0.0.0:3128\n  bad: indent\n", (2, 6)),
        ('mode: "enforce\n', (2, 1)),
        ("allow:\n\t- a\n", (2, 1)),  # a tab cannot start a token
        ("allow: [a]]\n", (1, 11)),
        ("@x: 1\n", (1, 1)),  # '@' is reserved
        ("a: 1\n---\nb: 2\n", (2, 1)),  # one document only
    ],
)
def test_yaml_syntax_error_is_one_located_issue(text: str, position: tuple[int, int]) -> None:
    line, column, message = only_issue(text)
    assert (line, column) == position
    assert message.startswith("YAML syntax")


def test_deeply_nested_yaml_is_a_config_error() -> None:
    assert "nested too deeply" in only_issue("allow: " + "[" * 600 + "]" * 600)[2]


@pytest.mark.parametrize(
    ("text", "position"),
    [
        ("listen: !foo x\n", (1, 9)),  # an unknown local tag
        ("listen: !!python/object:os.system x\n", (1, 9)),  # never constructed
        ("workers: !!int x\n", (1, 10)),
        ("workers: !!float abc\n", (1, 10)),
        ("forwarded_for: !!bool maybe\n", (1, 16)),
        ("access_log: !!timestamp 2001-99-99\n", (1, 13)),
        ("<<: {listen: '0.0.0.0:1'}\n", (1, 1)),  # merge keys are not supported
        ("!!int x: 1\n", (1, 1)),  # a key that cannot be read
    ],
)
def test_explicit_tags_that_cannot_be_constructed_are_issues(
    text: str, position: tuple[int, int]
) -> None:
    assert only_issue(text)[:2] == position


def test_clients_rule_naming_an_unknown_policy_is_reported_at_the_name() -> None:
    line, column, message = only_issue("clients:\n  - source: 10.0.0.0/8\n    policy: nope\n")
    assert (line, column) == (3, 13)
    assert "unknown policy 'nope'" in message


def test_clients_rule_without_criteria_is_reported_at_the_rule() -> None:
    line, column, message = only_issue("clients:\n  - policy: default\n")
    assert (line, column) == (2, 5)
    assert "at least one of source, user, tls_name" in message


def test_clients_rule_without_policy_is_refused() -> None:
    assert "needs 'policy'" in only_issue("clients:\n  - source: 10.0.0.0/8\n")[2]


def test_clients_rule_with_a_bad_source_cidr_is_reported_at_the_cidr() -> None:
    text = "clients:\n  - policy: default\n    source: [10.0.0.0/8, 10.0.0.0/99]\n"
    assert only_issue(text)[:2] == (3, 26)


def test_user_rules_without_auth_are_refused_at_clients() -> None:
    line, column, message = only_issue("clients:\n  - user: bob\n    policy: default\n")
    assert (line, column) == (2, 5)  # the rule naming `user`, not the `clients` list
    assert "no `auth` section" in message


def test_auth_without_a_source_of_passwords_is_refused() -> None:
    assert "users_file or users_env" in only_issue("auth:\n  realm: corp\n")[2]


def test_tls_name_rules_without_tls_listen_client_ca_are_refused(files: Path) -> None:
    without_listener = "clients:\n  - tls_name: svc\n    policy: default\n"
    line, column, message = only_issue(without_listener, files)
    assert (line, column) == (2, 5)  # the rule naming `tls_name`
    assert "client_ca_file" in message
    without_ca = (
        "tls_listen:\n  listen: 127.0.0.1:3129\n  cert_file: cert.pem\n  key_file: key.pem\n"
        + without_listener
    )
    assert only_issue(without_ca, files)[:2] == (6, 5)


def test_require_client_cert_without_client_ca_is_refused(files: Path) -> None:
    text = (
        "tls_listen:\n  listen: 127.0.0.1:3129\n  cert_file: cert.pem\n  key_file: key.pem\n"
        "  require_client_cert: true\n"
    )
    assert "client_ca_file" in only_issue(text, files)[2]


def test_default_policy_naming_an_unknown_policy_is_refused() -> None:
    line, column, message = only_issue("policies:\n  ci: {}\ndefault_policy: nope\n")
    assert (line, column) == (3, 17)
    assert "defined: ci, default" in message


def test_policy_default_defined_twice_is_refused() -> None:
    line, column, message = only_issue(
        "allow: [a.example]\npolicies:\n  default:\n    allow: [b.example]\n"
    )
    assert (line, column) == (4, 5)
    assert "defined twice" in message


def test_default_policy_under_policies_alone_is_fine() -> None:
    config = load("policies:\n  default:\n    allow: [b.example]\n")
    assert config.policy("default").allow == ("b.example",)


# ---------------------------------------------------------------------------------------------
# All issues at once
# ---------------------------------------------------------------------------------------------


def test_every_issue_is_reported_at_once_sorted_by_line() -> None:
    text = """\
        listen: "[::1]"
        allow:
          - good.example
          - foo*.bar
        mode: audit
        connect_ports: [443, 0]
        nameservers: [dns.google]
        """
    found = issues(text)
    assert [(line, column) for line, column, _ in found] == [
        (1, 9),
        (4, 5),
        (5, 7),
        (6, 22),
        (7, 15),
    ]


def test_issues_out_of_file_order_are_sorted() -> None:
    # The builder checks keys in its own order; the report is in file order.
    text = "nameservers: [dns.google]\nmode: audit\nlisten: '::1:1'\nbogus: 1\n"
    assert [line for line, _, _ in issues(text)] == [1, 2, 3, 4]


def test_config_error_message_lists_file_line_and_column() -> None:
    with pytest.raises(ConfigError) as caught:
        load_config_text("mode: audit\nbogus: 1\n", "/etc/egressgate.yaml")
    lines = str(caught.value).splitlines()
    assert lines[0].startswith("/etc/egressgate.yaml:1:7: mode must be one of")
    assert lines[1].startswith("/etc/egressgate.yaml:2:1: unknown key 'bogus'")


def test_config_issue_str_without_position() -> None:
    assert str(ConfigIssue("f.yaml", None, None, "m")) == "f.yaml: m"
    assert str(ConfigIssue("f.yaml", 3, None, "m")) == "f.yaml:3: m"


# ---------------------------------------------------------------------------------------------
# Property: arbitrary YAML-ish text raises ConfigError or loads (and then compiles)
# ---------------------------------------------------------------------------------------------

_WORDS = [
    *TOP_LEVEL_KEYS,
    *POLICY_KEYS,
    "default",
    "ci",
    "policy",
    "source",
    "user",
    "tls_name",
    "users_env",
    "realm",
    "max_connections",
    "header_timeout_s",
    "enforce",
    "report",
    "allow",
    "deny",
    "example.com",
    ".example.com",
    "*.example.com",
    "*",
    "foo*.bar",
    "10.0.0.0/8",
    "10.0.0.0/33",
    "::1",
    "[::1]:53",
    "0.0.0.0:3128",
    "443",
    "1-65535",
    "0",
    "-1",
    "1e400",
    ".nan",
    ".inf",
    "null",
    "~",
    "true",
    "yes",
    "<<",
    "&a",
    "*a",
    "!!int",
    "!!str",
    "!!binary",
    "!!set",
    "!!python/object:os.system",
    "!foo",
    "'quoted'",
    '"esc\\u00e9"',
    "\t",
]
_TOKEN = st.one_of(st.sampled_from(_WORDS), st.text(alphabet="ab1.:-*[]{},#&!|>'\" ", max_size=6))


def _flow(children: st.SearchStrategy[str]) -> st.SearchStrategy[str]:
    return st.one_of(
        st.lists(children, max_size=4).map(lambda items: "[" + ", ".join(items) + "]"),
        st.lists(st.tuples(_TOKEN, children), max_size=3).map(
            lambda pairs: "{" + ", ".join(f"{k}: {v}" for k, v in pairs) + "}"
        ),
    )


_VALUE = st.recursive(_TOKEN, _flow, max_leaves=12)


@st.composite
def _yamlish(draw: st.DrawFn) -> str:
    lines = []
    for _ in range(draw(st.integers(0, 8))):
        indent = " " * draw(st.sampled_from([0, 0, 0, 2, 4]))
        key = draw(_TOKEN)
        if draw(st.booleans()):
            lines.append(f"{indent}{key}: {draw(_VALUE)}")
        else:
            lines.append(f"{indent}{key}:")
            lines.extend(f"{indent}  - {draw(_VALUE)}" for _ in range(draw(st.integers(0, 3))))
    return "\n".join(lines) + "\n"


@settings(suppress_health_check=[HealthCheck.too_slow, HealthCheck.filter_too_much])
@given(st.one_of(_yamlish(), st.text(max_size=200)))
def test_arbitrary_yamlish_text_raises_only_config_error(text: str) -> None:
    found: list[ConfigIssue] = []
    try:
        config = load_config_text(text, "fuzz.yaml", "/nonexistent-egressgate-base")
    except ConfigError as error:
        found = error.issues
    else:
        PolicySet.compile(config)  # a config that loads must compile
        return
    assert found
    assert all(isinstance(i, ConfigIssue) for i in found)
    positions = [(i.line or 0, i.column or 0) for i in found]
    assert positions == sorted(positions)


def test_reload_revokes_is_on_by_default_and_can_be_turned_off() -> None:
    assert load_config_text("allow: []\n", "t.yaml").reload_revokes is True
    assert load_config_text("reload_revokes: false\n", "t.yaml").reload_revokes is False
