"""egressgate.tools.squid_import: reading squid.conf, the reference evaluator, the translation.

The central property: for every request, egressgate's PolicySet on the imported config decides
like Squid's http_access rules (name-level: DNS and the private-address check are outside the
comparison). It is checked on table rows and on hypothesis-generated clients, methods, hosts and
ports drawn around every boundary the config mentions. Every squid.conf used here is also run
through `squid -k parse` when Squid is installed, so the inputs are real Squid configs.
"""

from __future__ import annotations

import ipaddress
import shutil
import subprocess
from collections.abc import Callable, Iterable
from pathlib import Path
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.config.load import load_config_text
from egressgate.config.model import PortRange
from egressgate.names.addresses import AddressClass, classify_address
from egressgate.names.hostname import normalize_host
from egressgate.tools.squid_import import (
    INTERNAL_RANGES,
    DiskFiles,
    ImportResult,
    SquidConfig,
    SquidImportError,
    import_squid,
    parse_squid_config,
    squid_decision,
    translate_regex,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "squid"
DEBIAN_ROOT = DATA / "debian-root"
INCLUDE_LINE = next(  # `include /etc/squid/conf.d/*.conf` in debian-default.conf
    number
    for number, text in enumerate(
        (DATA / "debian-default.conf").read_text(errors="replace").splitlines(), start=1
    )
    if text.startswith("include ")
)
SQUID = shutil.which("squid") or ("/usr/sbin/squid" if Path("/usr/sbin/squid").exists() else None)

Decide = Callable[[str, str, str, int], bool]

# ---------------------------------------------------------------------------------------------
# Helpers
# ---------------------------------------------------------------------------------------------


def _files(path: Path, root: Path | None = None) -> DiskFiles:
    return DiskFiles(str(path.parent), str(root) if root else None)


def load(name: str, root: Path | None = None) -> tuple[SquidConfig, ImportResult]:
    path = DATA / name
    text = path.read_text(encoding="utf-8", errors="replace")
    conf = parse_squid_config(text, str(path), _files(path, root))
    return conf, import_squid(text, str(path), _files(path, root))


def write(tmp_path: Path, text: str, name: str = "squid.conf") -> Path:
    path = tmp_path / name
    path.write_text(text, encoding="utf-8")
    return path


def import_text(tmp_path: Path, text: str) -> tuple[SquidConfig, ImportResult]:
    path = write(tmp_path, text)
    conf = parse_squid_config(text, str(path), _files(path))
    return conf, import_squid(text, str(path), _files(path))


def refusal(tmp_path: Path, text: str) -> str:
    path = write(tmp_path, text)
    with pytest.raises(SquidImportError) as info:
        import_squid(text, str(path), _files(path))
    return "\n".join(str(i) for i in info.value.issues)


def egressgate_decider(result: ImportResult) -> Decide:
    """(client, method, host, port) → does the PolicySet of the imported config allow it?"""
    engine = pytest.importorskip(
        "egressgate.policy.engine", reason="the policy engine (PolicySet) is not written yet"
    )
    from egressgate.policy.decision import ClientIdentity, Target, Verdict

    config = load_config_text(result.yaml_text, "<imported>", base_dir=str(DATA))
    policies = engine.PolicySet.compile(config)

    def decide(client: str, method: str, host: str, port: int) -> bool:
        target = Target(normalize_host(host), port, method == "CONNECT")
        identity = ClientIdentity(ipaddress.ip_address(client))
        return bool(policies.decide(identity, target).verdict is Verdict.ALLOW)

    return decide


def assert_same(conf: SquidConfig, egress: Decide, client: str, method: str, host: str,
                port: int) -> None:  # fmt: skip
    """Equal for names; for IP literals egressgate may only be stricter (Squid would also try
    reverse DNS on them for dstdomain ACLs without -n, which egressgate never does)."""
    squid = squid_decision(conf, client, method, host, port) == "allow"
    ours = egress(client, method, host, port)
    request = f"{client} {method} {host}:{port}"
    if normalize_host(host).address is None:
        assert ours == squid, f"{request}: squid {squid}, egressgate {ours}"
    else:
        assert squid or not ours, f"{request}: egressgate allows what Squid refuses"


def interesting_hosts(conf: SquidConfig) -> list[str]:
    """Every listed name, names just above/below/beside it, unlisted names, public IPs."""
    out = {"example.net", "unlisted.test-unlisted", "93.184.216.34", "93.184.216.35", "8.8.8.8",
           "2606:4700:4700::1111", "2606:4700:4700::1112", "2606:4700::6810:1"}  # fmt: skip
    for acl in conf.acls.values():
        for entry in acl.domains:
            if entry.network is not None:
                out.add(str(entry.network.network_address))
                continue
            name = entry.name
            parent = name.partition(".")[2]
            out.update({name, f"a.{name}", f"x.y.{name}", f"bad{name}", f"{name}.evil.net"})
            if parent:
                out.update({parent, f"other.{parent}"})
    return sorted(h for h in out if _valid(h))


def _valid(host: str) -> bool:
    try:
        normalized = normalize_host(host)
    except ValueError:
        return False
    return normalized.address is None or classify_address(normalized.address) is AddressClass.PUBLIC


def interesting_ports(conf: SquidConfig) -> list[int]:
    out = {1, 80, 443, 8443, 65535}
    for acl in conf.acls.values():
        for r in acl.ports:
            out.update({r.low - 1, r.low, r.high, r.high + 1})
    return sorted(p for p in out if 1 <= p <= 65535)


def interesting_clients(conf: SquidConfig) -> list[str]:
    out = {"127.0.0.1", "::1", "8.8.8.8", "10.0.0.1", "2001:db8::1"}
    for acl in conf.acls.values():
        if acl.kind != "src":
            continue
        for net in acl.networks:
            first, last = int(net.network_address), int(net.broadcast_address)
            top = 2**32 - 1 if net.version == 4 else 2**128 - 1
            for value in (first - 1, first, last, last + 1):
                if 0 <= value <= top:
                    out.add(str(ipaddress.ip_address(value) if net.version == 4
                                else ipaddress.IPv6Address(value)))  # fmt: skip
    return sorted(out)


def methods(conf: SquidConfig) -> list[str]:
    named = {m for acl in conf.acls.values() for m in acl.methods}
    return sorted(named | {"CONNECT", "GET", "POST", "PUT"})


def exhaustive_check(conf: SquidConfig, result: ImportResult) -> int:
    """Every combination of the interesting values; returns how many were compared."""
    egress = egressgate_decider(result)
    count = 0
    for client in interesting_clients(conf):
        for method in methods(conf):
            for host in interesting_hosts(conf):
                for port in interesting_ports(conf):
                    assert_same(conf, egress, client, method, host, port)
                    count += 1
    return count


def requests_for(conf: SquidConfig) -> st.SearchStrategy[tuple[str, str, str, int]]:
    """Hypothesis: boundary values of the config mixed with arbitrary ones."""
    label = st.from_regex(r"[a-z0-9]([a-z0-9-]{0,8}[a-z0-9])?", fullmatch=True).filter(
        lambda s: not s.isdigit()
    )
    listed = st.sampled_from(interesting_hosts(conf))
    prefixed = st.builds(lambda a, h: f"{a}.{h}", label, listed)
    free = st.builds(lambda a, b: f"{a}.{b}", label, st.sampled_from(["com", "net", "io", "org"]))
    hosts = st.one_of(listed, prefixed, free).filter(_valid)
    ports = st.one_of(st.sampled_from(interesting_ports(conf)), st.integers(1, 65535))
    v4 = st.integers(0, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
    v6 = st.integers(0, 2**128 - 1).map(lambda n: str(ipaddress.IPv6Address(n)))
    clients = st.one_of(st.sampled_from(interesting_clients(conf)), v4, v6)
    return st.tuples(clients, st.sampled_from(methods(conf)), hosts, ports)


# ---------------------------------------------------------------------------------------------
# The configs under test: every one is a real Squid config
# ---------------------------------------------------------------------------------------------

CONF_FILES = sorted(p.name for p in DATA.glob("*.conf"))


@pytest.mark.skipif(SQUID is None, reason="squid is not installed")
@pytest.mark.parametrize("name", CONF_FILES)
def test_data_files_are_valid_squid_configs(name: str) -> None:
    completed = subprocess.run(
        [str(SQUID), "-k", "parse", "-f", name],
        cwd=DATA, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# The allowlist recipe
# ---------------------------------------------------------------------------------------------


def test_recipe_translates_to_one_policy() -> None:
    _, result = load("allowlist-recipe.conf")
    assert result.document["allow"] == ["api.stripe.com", ".example.com"]
    assert result.document["connect_ports"] == [443]
    assert result.document["http_ports"] == [80, 443]  # Safe_ports: plain HTTP to 443 is allowed
    assert result.document["listen"] == "0.0.0.0:3128"
    assert "clients" not in result.document
    assert result.yaml_text.startswith("# Generated by `egressgate import-squid` from ")
    assert str(DATA / "allowlist-recipe.conf") in result.yaml_text.splitlines()[0]
    load_config_text(result.yaml_text, "<imported>")


def test_recipe_notes_name_lines_and_reasons() -> None:
    _, result = load("allowlist-recipe.conf")
    notes = [str(n) for n in result.notes]
    assert any(n.endswith(":16: coredump_dir: not carried over: egressgate has no spool or "
                          "core-dump directory") for n in notes)  # fmt: skip
    assert any(":17: refresh_pattern: not carried over: egressgate does not cache" in n
               for n in notes)  # fmt: skip
    assert any("private" in n or "internal addresses" in n for n in notes)


RECIPE_ROWS = [
    # client, method, host, port, Squid's answer
    ("10.0.0.1", "CONNECT", "api.stripe.com", 443, "allow"),
    ("10.0.0.1", "CONNECT", "api.stripe.com", 8443, "deny"),  # deny CONNECT !SSL_ports
    ("10.0.0.1", "CONNECT", "stripe.com", 443, "deny"),  # exact entry
    ("10.0.0.1", "CONNECT", "x.api.stripe.com", 443, "deny"),
    ("10.0.0.1", "CONNECT", "example.com", 443, "allow"),  # .example.com covers the apex
    ("10.0.0.1", "CONNECT", "a.b.example.com", 443, "allow"),
    ("10.0.0.1", "CONNECT", "badexample.com", 443, "deny"),  # label boundary
    ("10.0.0.1", "CONNECT", "example.com.evil.net", 443, "deny"),
    ("10.0.0.1", "GET", "www.example.com", 80, "allow"),
    ("10.0.0.1", "GET", "www.example.com", 443, "allow"),  # 443 is a Safe_port
    ("10.0.0.1", "GET", "www.example.com", 8080, "deny"),  # deny !Safe_ports
    ("10.0.0.1", "POST", "API.STRIPE.COM", 80, "allow"),  # Squid lowercases host names
    ("2001:db8::1", "CONNECT", "example.com", 443, "allow"),
    ("10.0.0.1", "CONNECT", "93.184.216.34", 443, "deny"),
]


@pytest.mark.parametrize(("client", "method", "host", "port", "expected"), RECIPE_ROWS)
def test_recipe_table(client: str, method: str, host: str, port: int, expected: str) -> None:
    conf, result = load("allowlist-recipe.conf")
    assert squid_decision(conf, client, method, host, port) == expected
    egress = egressgate_decider(result)
    assert egress(client, method, host, port) == (expected == "allow")


def test_recipe_exhaustive() -> None:
    conf, result = load("allowlist-recipe.conf")
    assert exhaustive_check(conf, result) > 500


# ---------------------------------------------------------------------------------------------
# Debian's default squid.conf
# ---------------------------------------------------------------------------------------------


def test_debian_default_is_localhost_only() -> None:
    _, result = load("debian-default.conf", DEBIAN_ROOT)
    doc = result.document
    assert doc["allow"] == []  # everyone but localhost: deny all
    assert doc["clients"] == [{"policy": "localhost", "source": ["127.0.0.1/32", "::1/128"]}]
    localhost = doc["policies"]["localhost"]  # type: ignore[index]
    assert localhost["allow"] == ["*", "0.0.0.0/0", "::/0"]
    assert localhost["connect_ports"] == [443]
    assert localhost["http_ports"] == [21, 70, 80, 210, 280, 443, 488, 591, 777, "1025-65535"]
    load_config_text(result.yaml_text, "<imported>")


def test_debian_default_notes() -> None:
    _, result = load("debian-default.conf", DEBIAN_ROOT)
    notes = [str(n) for n in result.notes]
    # The included conf.d file is read (under --root) and its directive reported by its path.
    assert any("conf.d/debian.conf:" in n and "logfile_rotate" in n for n in notes)
    assert any("acl manager" in n and "never matches" in n for n in notes)
    assert any("acl localnet: not used by http_access" in n for n in notes)
    assert any("http_access deny manager: never decides" in n for n in notes)


def test_debian_default_exhaustive() -> None:
    conf, result = load("debian-default.conf", DEBIAN_ROOT)
    assert exhaustive_check(conf, result) > 1000


def test_include_that_matches_nothing_is_refused(tmp_path: Path) -> None:
    text = (DATA / "debian-default.conf").read_text(encoding="utf-8", errors="replace")
    path = write(tmp_path, text)
    with pytest.raises(SquidImportError) as info:
        import_squid(text, str(path), DiskFiles(str(tmp_path), str(tmp_path / "empty-root")))
    (issue,) = info.value.issues
    assert issue.where is not None
    assert issue.where.line == INCLUDE_LINE
    assert "include /etc/squid/conf.d/*.conf: no file matches" in issue.message


# ---------------------------------------------------------------------------------------------
# Per-group policies, negations, a dstdomain list file, regexes
# ---------------------------------------------------------------------------------------------


def test_per_group_policies() -> None:
    _, result = load("per-group.conf")
    doc = result.document
    policies = doc["policies"]
    assert isinstance(policies, dict)
    assert policies["ci"]["allow"] == ["files.pythonhosted.org", ".npmjs.org", ".pypi.org"]
    # The list file: its entries, comments skipped, the trailing words Squid ignores ignored.
    assert policies["app"]["allow"] == ["api.stripe.com", "hooks.slack.com", ".sendgrid.net"]
    assert policies["app"]["http_ports"] == [80, 443, "8080-8081"]
    assert policies["quarantine+app"] == {"allow": []}
    # Everyone else gets the docs allowlist (`allow !ci !app docs`).
    assert doc["allow"] == ["docs.python.org", ".readthedocs.io"]
    # First match wins: the quarantined host's rule comes first, so app's can stay wide.
    assert doc["clients"] == [
        {"policy": "quarantine+app", "source": ["10.30.9.9/32"]},
        {"policy": "app", "source": ["10.30.0.0/16", "fd00:30::/64"]},
        {"policy": "ci", "source": ["10.20.0.0/16"]},
    ]
    assert doc["listen"] == "127.0.0.1:3128"
    assert doc["hosts_file"] == str(DATA / "hosts")
    assert doc["nameservers"] == ["127.0.0.53", "::1"]
    load_config_text(result.yaml_text, "<imported>")


def test_per_group_notes() -> None:
    _, result = load("per-group.conf")
    notes = [str(n) for n in result.notes]
    assert any(":27: http_port 3129: not carried over" in n for n in notes)
    assert any(":30: cache: not carried over" in n for n in notes)
    assert any(":31: access_log: not carried over" in n for n in notes)
    assert any(":12: acl office: not used by http_access" in n for n in notes)


def test_per_group_exhaustive() -> None:
    conf, result = load("per-group.conf")
    assert exhaustive_check(conf, result) > 1000


def test_regex_translation_file() -> None:
    _, result = load("regex.conf")
    assert result.document["allow"] == [
        "api.stripe.com", ".example.com", "*.cdn.example.net", "example.org", "www.example.org",
    ]  # fmt: skip
    conf, _ = load("regex.conf")
    assert exhaustive_check(conf, result) > 200


@pytest.mark.parametrize(
    ("pattern", "ignore_case", "entries"),
    [
        (r"(^|\.)example\.com$", False, [".example.com"]),
        (r"^api\.example\.com$", False, ["api.example.com"]),
        (r"\.example\.com$", False, ["*.example.com"]),
        (r".*\.example\.com$", False, ["*.example.com"]),
        (r"^(.*\.)?example\.com$", False, [".example.com"]),
        (r"^a\.com$|^b\.com$", False, ["a.com", "b.com"]),
        (r"^API\.Example\.COM$", True, ["api.example.com"]),
    ],
)
def test_translate_regex(pattern: str, ignore_case: bool, entries: list[str]) -> None:
    assert [e.text for e in translate_regex(pattern, ignore_case)] == entries


@pytest.mark.parametrize(
    ("pattern", "why"),
    [
        (r"example\.com$", "not anchored at the start"),
        (r"^example\.com", "not anchored with $"),
        (r"^api.example\.com$", "unescaped '.'"),
        (r"^ads[0-9]+\.example\.com$", "regular-expression features"),
        (r"^API\.example\.com$", "upper-case"),
        (r"^10\.0\.0\.1$", "IP address"),
    ],
)
def test_translate_regex_refuses(pattern: str, why: str) -> None:
    with pytest.raises(ValueError, match=why.replace("$", r"\$").replace(".", r"\.")):
        translate_regex(pattern, ignore_case=False)


@given(label=st.from_regex(r"[a-z][a-z0-9-]{0,10}", fullmatch=True),
       prefix=st.sampled_from(["", "a.", "x.y."]))  # fmt: skip
def test_translated_regexes_match_like_the_regex(label: str, prefix: str) -> None:
    """The translation of each accepted form matches exactly what Python's re matches."""
    import re

    from egressgate.names.patterns import HostMatcher

    for pattern in (r"(^|\.)example\.com$", r"\.example\.com$", r"^example\.com$"):
        matcher = HostMatcher(list(translate_regex(pattern, False)))
        for host in (f"{prefix}{label}.example.com", f"{prefix}example.com",
                     f"{prefix}{label}example.com"):  # fmt: skip
            assert (re.search(pattern, host) is not None) == (
                matcher.match_name(host) is not None
            ), (pattern, host)


# ---------------------------------------------------------------------------------------------
# Tricky orderings and refusals
# ---------------------------------------------------------------------------------------------


def test_subdomain_carve_out_is_refused() -> None:
    path = DATA / "subdomain-carve-out.conf"
    with pytest.raises(SquidImportError) as info:
        import_squid(path.read_text(), str(path), _files(path))
    text = str(info.value)
    assert "subdomain-carve-out.conf:5" in text
    assert "subdomain-carve-out.conf:6" in text
    assert "internal.example.com" in text
    assert "no deny entries" in text


def test_untranslatable_regex_is_refused_with_its_line() -> None:
    path = DATA / "untranslatable-regex.conf"
    with pytest.raises(SquidImportError) as info:
        import_squid(path.read_text(), str(path), _files(path))
    (issue,) = info.value.issues
    assert issue.where is not None
    assert issue.where.line == 2
    assert "ads[0-9]+" in issue.message
    assert "regular-expression features" in issue.message


SHADOWED_DENY = """\
acl allowed dstdomain .example.com
acl internal dstdomain .internal.example.com
http_access allow allowed
http_access deny internal
http_access deny all
http_port 3128
"""

DOMAIN_DENY_BEFORE_SUBDOMAIN_ALLOW = """\
acl blocked dstdomain .example.com
acl api dstdomain api.example.com
acl other dstdomain .example.org
http_access deny blocked
http_access allow api
http_access allow other
http_access deny all
http_port 3128
"""

NEGATION = """\
acl SSL_ports port 443
acl Safe_ports port 80 443
acl corp src 10.0.0.0/8
acl contractors src 10.99.0.0/16
acl github dstdomain .github.com .githubusercontent.com
acl stripe dstdomain api.stripe.com
http_access deny !Safe_ports
http_access deny CONNECT !SSL_ports
http_access allow corp !contractors github
http_access allow corp !contractors stripe
http_access allow contractors !stripe github
http_access deny all
http_port 3128
"""

CONNECT_ONLY = """\
acl SSL_ports port 443 8443
acl CONNECT method CONNECT
acl allowed dstdomain .example.com
http_access deny !CONNECT
http_access deny !SSL_ports
http_access allow allowed
http_access deny all
http_port 3128
"""

ALLOW_ALL_FOR_LAN = """\
acl lan src 192.168.0.0/16
http_access deny to_localhost
http_access allow lan
http_access deny all
http_port 3128
"""

IP_ENTRIES = """\
acl apis dstdomain -n api.example.com 93.184.216.34 2606:4700::6810:1
http_access allow apis
http_access deny all
http_port 3128
"""

NO_RULES = """\
acl allowed dstdomain .example.com
http_port 3128
"""

TRANSLATABLE = {
    "shadowed-deny": SHADOWED_DENY,
    "domain-deny-before-subdomain-allow": DOMAIN_DENY_BEFORE_SUBDOMAIN_ALLOW,
    "negation": NEGATION,
    "connect-only": CONNECT_ONLY,
    "allow-all-for-lan": ALLOW_ALL_FOR_LAN,
    "ip-entries": IP_ENTRIES,
    "no-rules": NO_RULES,
}


@pytest.mark.parametrize("name", sorted(TRANSLATABLE))
def test_translatable_orderings_decide_the_same(tmp_path: Path, name: str) -> None:
    conf, result = import_text(tmp_path, TRANSLATABLE[name])
    load_config_text(result.yaml_text, "<imported>")
    assert exhaustive_check(conf, result) > 100


def test_shadowed_deny_is_noted(tmp_path: Path) -> None:
    _, result = import_text(tmp_path, SHADOWED_DENY)
    assert result.document["allow"] == [".example.com"]
    assert any(n.where is not None and n.where.line == 4 and "never decides" in n.message
               for n in result.notes)  # fmt: skip


def test_domain_deny_wins_over_later_subdomain_allow(tmp_path: Path) -> None:
    _, result = import_text(tmp_path, DOMAIN_DENY_BEFORE_SUBDOMAIN_ALLOW)
    assert result.document["allow"] == [".example.org"]


def test_negation_groups(tmp_path: Path) -> None:
    _, result = import_text(tmp_path, NEGATION)
    doc = result.document
    policies = doc["policies"]
    assert isinstance(policies, dict)
    assert doc["allow"] == []
    clients = doc["clients"]
    assert isinstance(clients, list)
    # Contractors first (first match wins), so corp's rule can name all of 10.0.0.0/8.
    assert [c["source"] for c in clients] == [["10.99.0.0/16"], ["10.0.0.0/8"]]
    contractors, corp = (policies[c["policy"]]["allow"] for c in clients)
    assert contractors == [".github.com", ".githubusercontent.com"]
    assert corp == ["api.stripe.com", ".github.com", ".githubusercontent.com"]


def test_connect_only(tmp_path: Path) -> None:
    _, result = import_text(tmp_path, CONNECT_ONLY)
    assert result.document["connect_ports"] == [443, 8443]
    assert result.document["http_ports"] == []


def test_allow_all_for_lan_with_deny_to_localhost(tmp_path: Path) -> None:
    _, result = import_text(tmp_path, ALLOW_ALL_FOR_LAN)
    policies = result.document["policies"]
    assert isinstance(policies, dict)
    assert policies["lan"]["allow"] == ["*", "0.0.0.0/0", "::/0"]
    assert result.document["allow"] == []


def test_ip_entries_with_n_are_exact(tmp_path: Path) -> None:
    _, result = import_text(tmp_path, IP_ENTRIES)
    assert result.document["allow"] == ["api.example.com", "93.184.216.34", "2606:4700::6810:1"]
    assert not any("reverse DNS" in n.message for n in result.notes)


def test_no_rules_denies_everything(tmp_path: Path) -> None:
    _, result = import_text(tmp_path, NO_RULES)
    assert result.document["allow"] == []
    assert any("no http_access rules" in n.message for n in result.notes)


@pytest.mark.parametrize(
    ("text", "expected"),
    [
        pytest.param(
            "acl bad dstdomain .ads.example.com\nhttp_access deny bad\nhttp_port 3128\n",
            ["allows names under no listed domain", "cannot allow every name except some"],
            id="deny-only-config-default-allows-the-rest",
        ),
        pytest.param(
            "acl ssl port 443\nacl special port 8443\nacl a dstdomain a.example.com\n"
            "acl b dstdomain b.example.com\nhttp_access allow a ssl\nhttp_access allow b special\n"
            "http_access deny all\nhttp_port 3128\n",
            ["same ports for every destination", ":5", ":6"],
            id="ports-differ-per-destination",
        ),
        pytest.param(
            "acl get method GET\nacl a dstdomain a.example.com\nhttp_access allow get a\n"
            "http_access deny all\nhttp_port 3128\n",
            ["not by HTTP method", ":3"],
            id="rules-by-http-method",
        ),
        pytest.param(
            "acl CONNECT method CONNECT\nacl secure dstdomain secure.example.com\n"
            "acl plain dstdomain plain.example.com\nhttp_access allow CONNECT secure\n"
            "http_access allow !CONNECT plain\nhttp_access deny all\nhttp_port 3128\n",
            ["one allow list for both"],
            id="different-hosts-for-connect-and-http",
        ),
        pytest.param(
            "acl paths url_regex ^http://example\\.com/public/\nhttp_access allow paths\n"
            "http_access deny all\nhttp_port 3128\n",
            [":1: acl paths url_regex decides on URLs and paths"],
            id="url-regex",
        ),
        pytest.param(
            "acl users proxy_auth REQUIRED\nhttp_access allow users\nhttp_access deny all\n",
            ["proxy_auth decides on proxy user names"],
            id="proxy-auth",
        ),
        pytest.param(
            "acl dns dst 8.8.8.8/32\nacl lan src 10.0.0.0/8\nhttp_access deny dns\n"
            "http_access allow lan\nhttp_access deny all\n",
            ["dst 8.8.8.8/32", "public resolved addresses"],
            id="dst-on-public-addresses",
        ),
        pytest.param(
            "acl wild dstdomain *.example.com\nhttp_access allow wild\nhttp_access deny all\n",
            [":1: acl wild dstdomain", "no wildcards"],
            id="dstdomain-wildcard",
        ),
        pytest.param(
            "acl a dstdomain .example.com\nhttp_access allow a undefined_acl\n",
            [":2:", "acl undefined_acl is not defined"],
            id="undefined-acl",
        ),
        pytest.param(
            'acl a dstdomain "missing-list.txt"\nhttp_access allow a\nhttp_access deny all\n',
            [":1:", "cannot read ACL values from missing-list.txt"],
            id="missing-list-file",
        ),
        pytest.param(
            "if ${process_number} = 1\nhttp_port 3128\nendif\n",
            [":1: conditional configuration"],
            id="conditionals",
        ),
    ],
)
def test_refusals(tmp_path: Path, text: str, expected: list[str]) -> None:
    message = refusal(tmp_path, text)
    for part in expected:
        assert part in message, message


@pytest.mark.skipif(SQUID is None, reason="squid is not installed")
@pytest.mark.parametrize("name", sorted(TRANSLATABLE))
def test_inline_configs_are_valid_squid_configs(tmp_path: Path, name: str) -> None:
    path = write(tmp_path, TRANSLATABLE[name])
    completed = subprocess.run(
        [str(SQUID), "-k", "parse", "-f", str(path)],
        cwd=tmp_path, capture_output=True, text=True, timeout=60, check=False,
    )  # fmt: skip
    assert completed.returncode == 0, completed.stderr[-2000:]


# ---------------------------------------------------------------------------------------------
# Hypothesis: many requests against both deciders
# ---------------------------------------------------------------------------------------------

HYPOTHESIS_CONFIGS: dict[str, tuple[SquidConfig, ImportResult]] = {}


def _cached(name: str) -> tuple[SquidConfig, ImportResult]:
    if name not in HYPOTHESIS_CONFIGS:
        root = DEBIAN_ROOT if name == "debian-default.conf" else None
        HYPOTHESIS_CONFIGS[name] = load(name, root)
    return HYPOTHESIS_CONFIGS[name]


def _property(name: str) -> Callable[..., Any]:
    conf, result = _cached(name)

    @given(request=requests_for(conf))
    def check(request: tuple[str, str, str, int]) -> None:
        assert_same(conf, egressgate_decider(result), *request)

    return check


TRANSLATED_FILES = ["allowlist-recipe.conf", "debian-default.conf", "per-group.conf", "regex.conf"]


@pytest.mark.parametrize("name", TRANSLATED_FILES)
def test_hypothesis_requests_decide_the_same(name: str) -> None:
    _property(name)()


@given(
    rules=st.lists(
        st.tuples(
            st.sampled_from(["allow", "deny"]),
            st.lists(st.tuples(st.booleans(), st.sampled_from(["lan", "ops", "dom", "sub",
                                                               "ssl", "CONNECT", "all"])),
                     min_size=1, max_size=3),
        ),
        max_size=5,
    )
)  # fmt: skip
def test_generated_rule_lists_are_translated_exactly_or_refused(
    rules: list[tuple[str, list[tuple[bool, str]]]],
) -> None:
    """Random http_access lists over a fixed set of ACLs: either the import is refused, or
    it decides like Squid on every interesting request."""
    acls = (
        "acl lan src 10.0.0.0/8\nacl ops src 10.1.0.0/16 2001:db8::/32\n"
        "acl dom dstdomain .example.com api.stripe.com\nacl sub dstdomain a.example.com\n"
        "acl ssl port 443 8000-8999\n"
    )
    lines = [f"http_access {action} " + " ".join(("!" if neg else "") + acl for neg, acl in terms)
             for action, terms in rules]  # fmt: skip
    text = acls + "\n".join(lines) + "\nhttp_port 3128\n"
    conf = parse_squid_config(text, "generated.conf", DiskFiles("/nonexistent"))
    try:
        result = import_squid(text, "generated.conf", DiskFiles("/nonexistent"))
    except SquidImportError as exc:
        issues = exc.issues
    else:
        issues = ()
    if issues:
        assert all(i.where is not None and i.where.line > 0 for i in issues), issues
        return
    load_config_text(result.yaml_text, "<imported>")
    egress = egressgate_decider(result)
    for client in ("10.2.3.4", "10.1.2.3", "192.0.2.1", "2001:db8::5"):
        for method in ("CONNECT", "GET"):
            for host in ("example.com", "a.example.com", "b.example.com", "api.stripe.com",
                         "other.net", "93.184.216.34"):  # fmt: skip
                for port in (80, 443, 8080, 8443):
                    assert_same(conf, egress, client, method, host, port)


# ---------------------------------------------------------------------------------------------
# Reading details
# ---------------------------------------------------------------------------------------------


def test_reading_continuations_comments_and_file_lists(tmp_path: Path) -> None:
    (tmp_path / "list.txt").write_text("# a comment\n\n.example.com\napi.stripe.com extra\n")
    text = (
        'acl a dstdomain \\\n   "list.txt" # trailing comment\n'
        "http_access allow a\nhttp_access deny all\n"
    )
    conf, result = import_text(tmp_path, text)
    assert conf.acls["a"].values == (".example.com", "api.stripe.com")
    assert result.document["allow"] == ["api.stripe.com", ".example.com"]


def test_src_ranges_and_netmasks(tmp_path: Path) -> None:
    text = (
        "acl r src 0.0.0.1-0.255.255.255 10.0.0.0/255.0.0.0\nacl d dstdomain .example.com\n"
        "http_access allow r d\nhttp_access deny all\n"
    )
    conf, result = import_text(tmp_path, text)
    networks = conf.acls["r"].networks
    assert ipaddress.ip_network("10.0.0.0/8") in networks
    assert ipaddress.ip_address("0.0.0.1") in networks[0]
    assert exhaustive_check(conf, result) > 50


def test_internal_ranges_agree_with_the_address_classifier() -> None:
    """`dst` ACLs are accepted only inside INTERNAL_RANGES because egressgate refuses those
    addresses after DNS anyway; that holds only if the classifier calls all of them internal."""
    for network in INTERNAL_RANGES:
        for address in (network.network_address, network.broadcast_address,
                        network.network_address + network.num_addresses // 2):  # fmt: skip
            assert classify_address(address) is not AddressClass.PUBLIC, address


def test_port_ranges_are_merged_in_output() -> None:
    _, result = load("debian-default.conf", DEBIAN_ROOT)
    text = result.yaml_text
    assert '"1025-65535"' in text
    assert PortRange.parse("1025-65535").high == 65535


def _all_hosts(values: Iterable[str]) -> list[str]:
    return [v for v in values if _valid(v)]
