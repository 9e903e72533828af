"""egressgate.tools.learn: reading access logs, grouping, suggestions, output and the diff.

The central property: the proposal, pasted into a config, allows every logged request that was
let through and seen often enough (except refusals of internal addresses, which only
allow_private changes), never proposes a bare public suffix, and never proposes what it lists
as denied or suspicious.
"""

from __future__ import annotations

import ipaddress
import json
from collections.abc import Iterable
from pathlib import Path
from typing import Any

import pytest
import yaml
from hypothesis import given
from hypothesis import strategies as st

from egressgate.config.load import load_config_text
from egressgate.config.model import Config
from egressgate.names.hostname import normalize_host
from egressgate.names.patterns import DomainPattern, HostMatcher
from egressgate.tools.learn import (
    LogAccumulator,
    diff,
    learn,
    looks_sharded,
    parse_line,
    registrable_domain,
    render_json,
    render_yaml,
)

DATA = Path(__file__).resolve().parents[2] / "data" / "learn"


def line(host: str | None = "api.example.com", port: int | None = 443, method: str = "CONNECT",
         policy: str | None = "default", decision: str = "report",
         reason: str = "host-not-allowed", ts: str = "2025-03-01T10:00:00.000Z",
         address: str | None = None, **extra: Any) -> str:  # fmt: skip
    """One access-log line with every field egressgate writes."""
    record = {
        "ts": ts, "client": "10.0.0.7", "user": None, "policy": policy, "method": method,
        "host": host, "port": port, "address": address, "decision": decision, "reason": reason,
        "rule": None, "status": 200 if decision != "deny" else 403, "bytes_up": 10,
        "bytes_down": 20, "duration_ms": 1.5, "kind": "tunnel" if method == "CONNECT" else "http",
        "sni": None, "detail": None,
    }  # fmt: skip
    record.update(extra)
    return json.dumps(record)


def entries_of(text: str, policy: str = "default") -> list[str]:
    doc = yaml.safe_load(text)
    if policy == "default":
        return list(doc.get("allow") or [])
    return list(doc["policies"][policy].get("allow") or [])


# ---------------------------------------------------------------------------------------------
# Reading lines
# ---------------------------------------------------------------------------------------------


def test_parse_line_reads_every_field() -> None:
    record = parse_line(line(address="93.184.216.34", user="ci"))
    assert record is not None
    assert (record.host, record.port, record.method, record.policy) == (
        "api.example.com", 443, "CONNECT", "default",
    )  # fmt: skip
    assert record.ts.isoformat() == "2025-03-01T10:00:00+00:00"
    assert record.user == "ci"


@pytest.mark.parametrize(
    "text",
    [
        "not json",
        "[1, 2]",
        "{}",
        json.dumps({"ts": "2025-03-01T10:00:00Z", "host": "a.com"}),  # fields missing
        line(port="443"),  # type: ignore[arg-type]  # a string port, deliberately
        line(port=True),
        line(decision="maybe"),
        line(ts="yesterday"),
        line(ts=1700000000),  # type: ignore[arg-type]  # deliberately not a string
        line(host=7),  # type: ignore[arg-type]  # deliberately not a string
        line(client=None),
    ],
)
def test_parse_line_refuses_what_is_not_an_access_log_line(text: str) -> None:
    assert parse_line(text) is None


def test_timestamps_without_zone_are_utc_and_offsets_are_converted() -> None:
    a = parse_line(line(ts="2025-03-01T10:00:00"))
    b = parse_line(line(ts="2025-03-01T12:00:00+02:00"))
    assert a is not None
    assert b is not None
    assert a.ts == b.ts


def test_bad_lines_are_counted_and_located_not_fatal() -> None:
    accumulator = LogAccumulator()
    accumulator.feed([line(), "garbage", "", line(host=None, port=None), line(policy=None),
                      "{\"half\": "], source="access.log")  # fmt: skip
    result = accumulator.result()
    assert result.stats.lines == 5  # the empty line is not counted
    assert (result.stats.used, result.stats.malformed) == (1, 2)
    assert (result.stats.no_destination, result.stats.no_policy) == (1, 1)
    assert any("skipped 2 line(s) that are not access-log JSON" in w
               and "access.log:2" in w for w in result.warnings)  # fmt: skip
    assert any("no policy" in w and "access.log:5" in w for w in result.warnings)


def test_policy_filter() -> None:
    result = learn([line(policy="ci"), line(host="b.example.org")], policy="ci")
    assert [p.policy for p in result.proposals] == ["ci"]
    assert result.stats.filtered == 1


# ---------------------------------------------------------------------------------------------
# Grouping and suggestions
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("name", "domain", "private"),
    [
        ("api.example.com", "example.com", None),
        ("a.b.example.co.uk", "example.co.uk", None),
        ("foo.github.io", "foo.github.io", "github.io"),
        ("github.io", None, "github.io"),
        ("com", None, None),
        ("bucket.s3.amazonaws.com", "bucket.s3.amazonaws.com", "s3.amazonaws.com"),
        ("xn--80ak6aa92e.com", "xn--80ak6aa92e.com", None),
    ],
)
def test_registrable_domain_uses_the_public_suffix_list(name: str, domain: str | None,
                                                        private: str | None) -> None:  # fmt: skip
    assert registrable_domain(name) == (domain, private)


@pytest.mark.parametrize(
    ("hosts", "expected"),
    [
        (["api.stripe.com"], ["api.stripe.com"]),
        (["api.stripe.com", "files.stripe.com"], ["api.stripe.com", "files.stripe.com"]),
        (["a.example.com", "b.example.com", "c.example.com"], [".example.com"]),
        (["edge-07.example.net", "edge-12.example.net"], [".example.net"]),  # shards
        (["cdn.example.org"], [".example.org"]),  # a CDN host: its siblings will follow
        (["d3f2a9c8b7e6f5a4.example-cdn.com"], [".example-cdn.com"]),  # hash-like label
        # cloudfront.net is a public suffix (PSL private section): never .cloudfront.net
        (["d3f2a9c8b7e6f5a4.cloudfront.net"], ["d3f2a9c8b7e6f5a4.cloudfront.net"]),
        (["example.com"], ["example.com"]),  # the apex alone stays exact
        (["foo.github.io"], ["foo.github.io"]),
        (["a.foo.github.io", "b.foo.github.io", "c.foo.github.io"], [".foo.github.io"]),
        (["github.io"], ["github.io"]),  # a public suffix: exact only, never .github.io
        (["93.184.216.34"], ["93.184.216.34"]),
        (["2606:4700::6810:1"], ["2606:4700::6810:1"]),
    ],
)
def test_suggestions(hosts: list[str], expected: list[str]) -> None:
    result = learn([line(host=h) for h in hosts])
    (proposal,) = result.proposals
    assert sorted(proposal.allow) == sorted(expected)
    load_config_text(render_yaml(result), "<proposal>")


def test_looks_sharded() -> None:
    assert looks_sharded(["a1.example.com", "a2.example.com"], "example.com") is not None
    assert looks_sharded(["static.example.com"], "example.com") == "static.example.com"
    assert looks_sharded(["api.example.com", "www.example.com"], "example.com") is None
    assert looks_sharded(["api2.example.com"], "example.com") is None


def test_private_suffix_is_explained_in_the_comment() -> None:
    text = render_yaml(learn([line(host="foo.github.io")]))
    assert "under github.io, a shared suffix (PSL private section)" in text


def test_ip_literals_are_explicit_with_a_warning() -> None:
    result = learn([line(host="93.184.216.34", reason="ip-literal-not-allowed")] * 2)
    assert result.proposals[0].allow == ("93.184.216.34",)
    assert any("93.184.216.34 was asked for by IP address" in w for w in result.warnings)
    assert "# WARNING: IP literal, 2 requests" in render_yaml(result)


def test_private_address_refusals_are_listed_apart() -> None:
    result = learn([
        line(host="db.internal.example", decision="deny", reason="private-address",
             address="10.1.2.3"),
        line(host="api.stripe.com"),
    ])  # fmt: skip
    (proposal,) = result.proposals
    assert proposal.allow == ("api.stripe.com",)
    (private,) = proposal.private
    assert (private.host, private.addresses, private.requests) == (
        "db.internal.example", ("10.1.2.3",), 1,
    )  # fmt: skip
    text = render_yaml(result)
    assert "# still refused: db.internal.example resolved to internal address(es) 10.1.2.3" in text
    assert "allow_private" in text


def test_min_requests_keeps_rare_hosts_out() -> None:
    lines = [line(host="api.stripe.com")] * 3 + [line(host="once.example.org")]
    result = learn(lines, min_requests=2)
    (proposal,) = result.proposals
    assert proposal.allow == ("api.stripe.com",)
    assert [u.host for u in proposal.rare] == ["once.example.org"]
    assert "not proposed, seen 1 time(s) (< --min-requests 2): once.example.org" in render_yaml(
        result, 2
    )


def test_counts_first_and_last_seen_and_ports() -> None:
    lines = [
        line(host="api.stripe.com", ts="2025-03-02T00:00:00Z"),
        line(host="api.stripe.com", ts="2025-03-01T00:00:00Z", port=8443),
        line(host="api.stripe.com", ts="2025-03-03T00:00:00Z", method="GET", port=80,
             decision="allow", reason="allowed"),
    ]  # fmt: skip
    (proposal,) = learn(lines).proposals
    (group,) = proposal.groups
    (usage,) = group.hosts
    assert usage.requests == 3
    assert (usage.first_seen.day, usage.last_seen.day) == (1, 3)
    assert (usage.connect_ports, usage.http_ports) == ((443, 8443), (80,))
    assert dict(usage.decisions) == {"allow": 1, "report": 2}
    assert proposal.connect_ports == (443, 8443)  # 8443 is not a default CONNECT port
    assert proposal.http_ports is None  # 80 is the default


def test_ports_are_judged_against_the_current_config() -> None:
    config = load_config_text("connect_ports: [443, 8443]\n")
    result = LogAccumulator()
    result.feed([line(port=8443)])
    assert result.result(config=config).proposals[0].connect_ports is None


def test_sni_refusals_are_warned_about() -> None:
    result = learn([line(host="a.example.com", reason="sni-mismatch", decision="deny",
                         sni="evil.example.net")])  # fmt: skip
    assert any("presented TLS server name evil.example.net" in w for w in result.warnings)


def test_sni_naming_the_connect_host_is_not_fronting() -> None:
    # What a report-mode proxy with an empty allowlist logged before the fix (issue 12): the
    # SNI check re-judged the same unlisted name and logged sni-not-allowed.
    lines = [
        line(host="pypi.org", reason="sni-not-allowed", sni="pypi.org"),
        line(host="pypi.org", reason="sni-not-allowed", sni="PyPI.org."),
        line(host="files.example.org", reason="host-not-allowed", sni="files.example.org"),
    ]
    result = learn(lines)
    assert not any("TLS server name" in w for w in result.warnings), result.warnings
    assert sorted(result.proposals[0].allow) == ["files.example.org", "pypi.org"]


def test_sni_differing_from_the_connect_host_is_still_warned_about() -> None:
    result = learn([line(host="pypi.org", reason="sni-not-allowed", sni="evil.example.net")])
    (warning,) = [w for w in result.warnings if "TLS server name" in w]
    assert "1 tunnel(s) to pypi.org presented TLS server name evil.example.net" in warning


def test_private_address_refusal_names_the_address_logged_in_address() -> None:
    lines = [line(host="intranet.example", decision="deny", reason="private-address",
                  address="10.4.5.6", detail="resolves to 10.4.5.6 (private), which is not in "
                  "allow_private")]  # fmt: skip
    text = render_yaml(learn(lines))
    assert "# still refused: intranet.example resolved to internal address(es) 10.4.5.6 " in text


def test_private_address_refusal_of_an_older_proxy_reads_the_address_from_detail() -> None:
    # Up to 0.1.0 the proxy left `address` null on a private-address refusal.
    lines = [line(host="intranet.example", decision="deny", reason="private-address",
                  detail="resolves to fd00::5 (unique-local), which is not in allow_private"),
             line(host="metadata.example", decision="deny", reason="private-address")]  # fmt: skip
    text = render_yaml(learn(lines))
    assert "# still refused: intranet.example resolved to internal address(es) fd00::5 " in text
    assert "metadata.example resolved to internal address(es) (not logged) " in text
    assert "?" not in text


# ---------------------------------------------------------------------------------------------
# Output
# ---------------------------------------------------------------------------------------------


def test_yaml_for_several_policies_is_a_valid_config() -> None:
    lines = [line(host="api.stripe.com"), line(host="pypi.org", policy="ci"),
             line(host="files.pythonhosted.org", policy="ci", method="GET", port=80)]  # fmt: skip
    text = render_yaml(learn(lines))
    config = load_config_text(text, "<proposal>")
    assert config.policy("default").allow == ("api.stripe.com",)
    assert set(config.policy("ci").allow) == {"pypi.org", "files.pythonhosted.org"}
    assert text.startswith("# Proposed by `egressgate learn` from 3 logged requests")


def test_json_output() -> None:
    result = learn([line(host="a.example.com"), line(host="93.184.216.34")])
    doc = json.loads(render_json(result))
    policy = doc["policies"]["default"]
    assert policy["allow"] == ["a.example.com", "93.184.216.34"]
    assert policy["domains"][0]["hosts"][0]["host"] == "a.example.com"
    assert policy["ip_literals"][0]["requests"] == 1
    assert doc["stats"]["used"] == 2


# ---------------------------------------------------------------------------------------------
# Diff against a config
# ---------------------------------------------------------------------------------------------

CURRENT = """\
allow: [api.stripe.com, old.example.org]
connect_ports: [443]
policies:
  ci:
    allow: [.pypi.org]
  idle:
    allow: [nothing.example]
"""


def _diff_fixture() -> tuple[Config, Any]:
    config = load_config_text(CURRENT)
    lines = [
        line(host="api.stripe.com", decision="allow", reason="allowed"),
        line(host="api.stripe.com", port=8443, reason="port-not-allowed"),
        line(host="hooks.slack.com"),
        line(host="hooks.slack.com"),
        line(host="pypi.org", policy="ci", decision="allow", reason="allowed"),
    ]
    return config, learn(lines, config=config)


def test_diff_add_unused_and_would_refuse() -> None:
    config, result = _diff_fixture()
    diffs = {d.policy: d for d in diff(result, config)}
    default = diffs["default"]
    assert default.add == ("hooks.slack.com",)
    assert default.unused == ("old.example.org",)
    refused = {(r.host, r.port, r.reason, r.requests) for r in default.would_refuse}
    assert refused == {("api.stripe.com", 8443, "port-not-allowed", 1),
                       ("hooks.slack.com", 443, "host-not-allowed", 2)}  # fmt: skip
    assert diffs["ci"].add == ()
    assert diffs["ci"].would_refuse == ()
    assert not diffs["idle"].seen_in_logs
    assert diffs["idle"].unused == ("nothing.example",)
    text = render_yaml(result, diffs=diff(result, config))
    assert "#   would now be refused: hooks.slack.com:443 (CONNECT, host-not-allowed, 2 requests)" \
        in text  # fmt: skip
    load_config_text(text, "<proposal with diff comments>")
    assert json.loads(render_json(result, diff(result, config)))["diff"]["default"]["add"] == [
        "hooks.slack.com"
    ]


def test_diff_agrees_with_the_policy_engine() -> None:
    engine = pytest.importorskip(
        "egressgate.policy.engine", reason="the policy engine (PolicySet) is not written yet"
    )
    from egressgate.policy.decision import ClientIdentity, Target, Verdict

    config, result = _diff_fixture()
    policies = engine.PolicySet.compile(config)
    refused = {(r.host, r.port, r.connect) for d in diff(result, config) for r in d.would_refuse}
    for proposal in result.proposals:
        for group in proposal.groups:
            for usage in group.hosts:
                for port, connect, _ in usage.port_requests:
                    policy = policies.policies[proposal.policy]
                    decision = policy.decide(Target(normalize_host(usage.host), port, connect))
                    assert (decision.verdict is not Verdict.ALLOW) == (
                        (usage.host, port, connect) in refused
                    ), (usage.host, port)
    del ClientIdentity


# ---------------------------------------------------------------------------------------------
# Properties over generated logs
# ---------------------------------------------------------------------------------------------

_labels = st.from_regex(r"[a-z]([a-z0-9-]{0,6}[a-z0-9])?", fullmatch=True)
_suffixes = st.sampled_from(["com", "co.uk", "github.io", "s3.amazonaws.com", "net", "de",
                             "internal", "blogspot.com"])  # fmt: skip
_names = st.builds(lambda labels, suffix: ".".join([*labels, suffix]),
                   st.lists(_labels, min_size=0, max_size=3), _suffixes)  # fmt: skip
_ips = st.integers(1, 2**32 - 1).map(lambda n: str(ipaddress.IPv4Address(n)))
_records = st.tuples(
    st.one_of(_names, _ips),
    st.sampled_from(["default", "ci", "web"]),
    st.sampled_from([("CONNECT", 443), ("CONNECT", 8443), ("GET", 80), ("GET", 8080)]),
    st.sampled_from(["report", "allow", "deny"]),
)


def _allowed(config: Config, policy: str, host: str, port: int, connect: bool) -> bool:
    current = config.policy(policy)
    matcher = HostMatcher([DomainPattern.parse(e) for e in current.allow])
    normalized = normalize_host(host)
    if normalized.address is not None:
        matched = matcher.match_address(normalized.address)
    else:
        assert normalized.name is not None
        matched = matcher.match_name(normalized.name)
    ports = current.connect_ports if connect else current.http_ports
    return matched is not None and any(port in r for r in ports)


@given(records=st.lists(_records, min_size=1, max_size=40))
def test_proposal_allows_everything_seen_and_no_public_suffix(
    records: list[tuple[str, str, tuple[str, int], str]],
) -> None:
    lines = [line(host=h, policy=p, method=m, port=port, decision=d,
                  reason="allowed" if d == "allow" else "host-not-allowed")
             for h, p, (m, port), d in records]  # fmt: skip
    result = learn(lines)
    text = render_yaml(result)
    config = load_config_text(text, "<proposal>")
    flagged = {
        (p.policy, f.usage.host): f for p in result.proposals for f in (*p.denied, *p.suspicious)
    }
    for host, policy, (method, port), decision in records:
        if (policy, host) in flagged:  # listed for the reviewer, never proposed (issue 18)
            assert host not in config.policy(policy).allow, (host, policy)
            continue
        assert decision != "deny" or any(
            h == host and p == policy and d != "deny" for h, p, _, d in records
        ), (host, policy)
        assert _allowed(config, policy, host, port, method == "CONNECT"), (host, policy, port)
    for proposal in result.proposals:
        for entry in proposal.allow:
            if entry.startswith("."):
                domain, _ = registrable_domain(entry[1:])
                assert domain is not None, f"{entry} is a public suffix"
    assert json.loads(render_json(result))["stats"]["used"] == len(records)


@given(garbage=st.lists(st.text(max_size=30), max_size=20),
       good=st.lists(_names, min_size=1, max_size=5))  # fmt: skip
def test_garbage_never_crashes(garbage: list[str], good: list[str]) -> None:
    lines: Iterable[str] = [*garbage, *(line(host=h) for h in good)]
    result = learn(lines)
    assert result.stats.used == len(good)
    assert result.stats.malformed == sum(1 for g in garbage if g.strip())


def test_synthetic_log_file() -> None:
    """The report-mode log shipped in tests/data/learn (also used by the CLI tests)."""
    with open(DATA / "report-mode.log", encoding="utf-8") as handle:
        accumulator = LogAccumulator()
        accumulator.feed(handle, source="report-mode.log")
    result = accumulator.result()
    assert result.stats.malformed == 1
    by_policy = {p.policy: p for p in result.proposals}
    assert set(by_policy["default"].allow) == {".example.com", "api.stripe.com", "93.184.216.34"}
    assert by_policy["default"].connect_ports == (443, 8443)
    assert set(by_policy["ci"].allow) == {"pypi.org", "files.pythonhosted.org"}
    assert [r.host for r in by_policy["default"].private] == ["metadata.internal.example"]
    load_config_text(render_yaml(result), "<proposal>")


# ---------------------------------------------------------------------------------------------
# Denied and suspicious destinations (issue 18)
# ---------------------------------------------------------------------------------------------

ENFORCE_LOG = [
    line(host="registry.npmjs.org", decision="allow", reason="allowed"),
    line(host="169.254.169.254", method="GET", port=80, decision="deny",
         reason="ip-literal-not-allowed"),
    line(host="registry.npmjs.org.evil.net", decision="deny", reason="host-not-allowed"),
    line(host="other.example.net", decision="deny", reason="host-not-allowed"),
    line(host="10.0.0.5", method="GET", port=80, decision="report",
         reason="ip-literal-not-allowed"),
]  # fmt: skip


def test_enforce_mode_refusals_are_listed_as_denied_with_their_reason_not_proposed() -> None:
    (proposal,) = learn(ENFORCE_LOG).proposals
    assert proposal.allow == ("registry.npmjs.org",)
    assert [(f.usage.host, f.usage.reasons) for f in proposal.denied] == [
        ("other.example.net", (("host-not-allowed", 1),)),
    ]


def test_metadata_internal_and_look_alike_destinations_are_suspicious() -> None:
    (proposal,) = learn(ENFORCE_LOG).proposals
    why = {f.usage.host: f.why for f in proposal.suspicious}
    assert why == {
        "169.254.169.254": "a cloud instance-metadata address",
        "10.0.0.5": "an internal address (private)",  # let through in report mode: still flagged
        "registry.npmjs.org.evil.net": (
            "contains the name registry.npmjs.org without being under it (a look-alike)"
        ),
    }


def test_output_order_proposed_then_denied_then_suspicious() -> None:
    text = render_yaml(learn(ENFORCE_LOG))
    allow = text.index("- registry.npmjs.org")
    denied = text.index("# DENIED, not proposed")
    suspicious = text.index("# SUSPICIOUS, never proposed")
    assert allow < denied < suspicious
    assert (
        "#   other.example.net (CONNECT 443): refused in enforce mode; 1 request (deny 1: "
        "host-not-allowed 1)" in text
    )
    assert "#   169.254.169.254 (http 80): a cloud instance-metadata address" in text
    assert entries_of(text) == ["registry.npmjs.org"]  # the YAML itself proposes nothing else
    doc = json.loads(render_json(learn(ENFORCE_LOG)))["policies"]["default"]
    assert [d["host"] for d in doc["denied"]] == ["other.example.net"]
    assert {d["host"] for d in doc["suspicious"]} == {
        "169.254.169.254", "10.0.0.5", "registry.npmjs.org.evil.net",
    }  # fmt: skip


def test_a_look_alike_of_a_configured_entry_is_suspicious() -> None:
    config = load_config_text("allow: [.pythonhosted.org]\n")
    accumulator = LogAccumulator()
    accumulator.feed([line(host="files.pythonhosted.org.attacker.example")])
    (proposal,) = accumulator.result(config=config).proposals
    assert proposal.allow == ()
    assert "contains the name pythonhosted.org" in proposal.suspicious[0].why


def test_a_subdomain_of_an_allowed_name_is_not_a_look_alike() -> None:
    lines = [line(host="registry.npmjs.org"), line(host="cdn.registry.npmjs.org")]
    (proposal,) = learn(lines).proposals
    assert proposal.suspicious == ()
    assert set(proposal.allow) >= {"registry.npmjs.org"}


def _dns_line(host: str, reason: str, decision: str, detail: str | None = None) -> str:
    return json.dumps(
        {
            "ts": "2026-12-04T14:21:17.104Z",
            "client": "10.0.0.7",
            "user": None,
            "policy": "default",
            "method": "A",
            "host": host,
            "port": None,
            "address": None,
            "decision": decision,
            "reason": reason,
            "rule": None,
            "status": 3,
            "bytes_up": 30,
            "bytes_down": 30,
            "duration_ms": 0.1,
            "kind": "dns",
            "sni": None,
            "detail": detail,
        }
    )


def test_dns_guard_lines_count_the_names_asked_for() -> None:
    lines = [
        _dns_line("api.github.com", "host-not-allowed", "report"),
        _dns_line("api.github.com", "host-not-allowed", "report"),
        _dns_line("wanted.example.com", "host-not-allowed", "deny"),
        _dns_line("x.ns.svc.cluster.local", "allowed", "allow", "dns_passthrough"),
        _dns_line("allowed.test", "dns-query-type-refused", "deny"),
    ]
    result = learn(lines)
    (proposal,) = result.proposals
    assert proposal.allow == ("api.github.com",)  # looked up in report mode: proposed
    usage = proposal.groups[0].hosts[0]
    assert (usage.requests, usage.dns_queries, usage.connect_ports) == (2, 2, ())
    assert [f.usage.host for f in proposal.denied] == ["wanted.example.com"]  # like a request
    assert result.stats.used == 3
    text = render_yaml(result)
    assert "- api.github.com  # DNS 2" in text
    assert "wanted.example.com (DNS 1): refused in enforce mode" in text
