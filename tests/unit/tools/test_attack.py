"""`verify --attack`, the pure parts: observation → verdict, the catalogue, the QUIC datagram,
DNS wire helpers, the pod inspection's judgements, and the SARIF 2.1.0 rendering (validated
against a subset of the OASIS schema written out below, with jsonschema)."""

from __future__ import annotations

import json
import struct
from typing import Any

import jsonschema
import pytest
from hypothesis import given
from hypothesis import strategies as st

from egressgate.tools import attack_plan, attack_probes
from egressgate.tools.attack import (
    BY_ID,
    CATALOGUE,
    Finding,
    Layer,
    Observation,
    Outcome,
    Status,
    judge,
    layer_of,
    skipped,
)
from egressgate.tools.attack_report import AttackReport, render_json, render_sarif, render_text
from egressgate.tools.pod_inspect import (
    Runtime,
    host_network_check,
    mesh_check,
    network_policy_check,
    runtime_check,
)
from egressgate.tools.verify import Check
from egressgate.tools.verify import Status as CheckStatus

# -- the verdict -------------------------------------------------------------------------------

ISSUE_PROBES = {
    # every probe the issue lists, by the id that covers it
    "direct.tcp-https",
    "direct.tcp-other-port",
    "direct.ipv6",
    "udp.quic",
    "dns.udp-outside",
    "dns.tcp-outside",
    "dns.dot-outside",
    "dns.doh-direct",
    "dns.doh-via-proxy",
    "proxy.connect-ip-literal",
    "proxy.http-ip-literal",
    "proxy.sni-mismatch",
    "proxy.host-mismatch",
    "metadata.proxy-v4",
    "metadata.proxy-v4-mapped",
    "metadata.proxy-nat64",
    "metadata.direct-v4",
    "metadata.direct-v4-mapped",
    "metadata.direct-nat64",
    "proxy.self",
    "proxy.admin",
    "proxy.http-denied",
    "proxy.keepalive-denied",
}


def test_the_catalogue_covers_the_issue_and_every_probe_has_a_fix() -> None:
    assert set(BY_ID) >= ISSUE_PROBES
    assert len(BY_ID) == len(CATALOGUE)
    for spec in CATALOGUE:
        assert spec.intended, spec.id
        assert Layer.NONE not in spec.intended
        assert Layer.UNKNOWN not in spec.intended
        assert spec.fix
        assert spec.tries
        assert spec.title


def obs(outcome: Outcome, **kw: Any) -> Observation:
    return Observation(outcome, "FACTS.", **kw)


@pytest.mark.parametrize(
    ("observation", "layer"),
    [
        (obs(Outcome.HTTP, http_status=403, reason="host-not-allowed"), Layer.PROXY),
        (obs(Outcome.HTTP, http_status=400, reason="bad-request"), Layer.PROXY),
        (obs(Outcome.HTTP, http_status=407, reason="proxy-auth-required"), Layer.UNKNOWN),
        (obs(Outcome.HTTP, http_status=504, reason="upstream-timeout"), Layer.UNKNOWN),
        (obs(Outcome.HTTP, http_status=200, reason="report-only"), Layer.NONE),  # report mode
        (obs(Outcome.HTTP, http_status=403), Layer.NONE),  # the origin's own 403
        (obs(Outcome.HTTP, http_status=200), Layer.NONE),
        (obs(Outcome.TUNNEL, http_status=200), Layer.NONE),
        (obs(Outcome.TLS_DENIED), Layer.PROXY),
        (obs(Outcome.TLS_OK), Layer.NONE),
        (obs(Outcome.TLS_FAILED), Layer.UNKNOWN),
        (obs(Outcome.TIMEOUT), Layer.NETWORK),
        (obs(Outcome.UNREACHABLE), Layer.NETWORK),
        (obs(Outcome.BLOCKED_LOCAL), Layer.NETWORK),
        (obs(Outcome.REFUSED), Layer.UNKNOWN),  # an RST: a reject rule or a closed port
        (obs(Outcome.CONNECTED), Layer.NONE),
        (obs(Outcome.SILENT), Layer.UNKNOWN),
        (obs(Outcome.RESET), Layer.UNKNOWN),
        (obs(Outcome.UDP_REPLY), Layer.NONE),
        (obs(Outcome.UDP_PORT_UNREACHABLE), Layer.UNKNOWN),
        (obs(Outcome.DNS_ANSWER, rcode="NOERROR", answers=1), Layer.NONE),
        (obs(Outcome.DNS_ANSWER, rcode="NOERROR", answers=0), Layer.NONE),
        (obs(Outcome.DNS_ANSWER, rcode="NXDOMAIN"), Layer.DNS_GUARD),
        (obs(Outcome.DNS_ANSWER, rcode="REFUSED"), Layer.DNS_GUARD),
        (obs(Outcome.DNS_ANSWER, rcode="SERVFAIL"), Layer.UNKNOWN),
        (obs(Outcome.NAME_REFUSED), Layer.DNS_GUARD),
        (obs(Outcome.NAME_FAILED), Layer.UNKNOWN),
        (obs(Outcome.NOT_EXERCISED, http_status=403, reason="private-address"), Layer.UNKNOWN),
        (obs(Outcome.ERROR), Layer.UNKNOWN),
    ],
)
def test_each_outcome_names_its_layer(observation: Observation, layer: Layer) -> None:
    assert layer_of(observation)[0] is layer


@given(st.sampled_from(CATALOGUE), st.sampled_from(list(Outcome)), st.integers(100, 599))
def test_the_verdict_follows_the_layer(spec: Any, outcome: Outcome, status: int) -> None:
    observation = Observation(outcome, "F.", http_status=status, reason="host-not-allowed")
    finding = judge(spec, "T", observation)
    layer = layer_of(observation)[0]
    assert finding.layer is layer
    if layer is Layer.NONE:
        assert finding.status is Status.THROUGH
        assert finding.explanation.startswith("NOTHING stopped it: ")
        assert finding.fix == spec.fix
    elif layer in spec.intended:
        assert finding.status is Status.STOPPED
        assert finding.fix is None
    else:
        assert finding.status is Status.UNCLEAR  # never claimed as stopped
        assert finding.fix == spec.fix
    assert finding.explanation.endswith("F.")


def test_explanations_say_which_layer_and_admit_ambiguity() -> None:
    direct = BY_ID["direct.tcp-other-port"]
    stopped = judge(direct, "1.2.3.4:8443", obs(Outcome.TIMEOUT))
    assert stopped.explanation.startswith("stopped by the network rules: no answer")
    refused = judge(direct, "1.2.3.4:8443", obs(Outcome.REFUSED))
    assert refused.status is Status.UNCLEAR
    assert refused.explanation.startswith("stopped, layer unknown: connection refused")
    # Stopped, but by a layer the probe does not count on: not proven either.
    proxy_probe = BY_ID["proxy.http-denied"]
    network = judge(proxy_probe, "http://d/", obs(Outcome.TIMEOUT))
    assert network.status is Status.UNCLEAR
    assert network.explanation.startswith(
        "stopped by the network rules, but the proxy should have: "
    )
    refusal = judge(
        proxy_probe, "http://d/", obs(Outcome.HTTP, http_status=403, reason="host-not-allowed")
    )
    assert refusal.explanation.startswith(
        "stopped by the proxy: 403 host-not-allowed (the destination host is not on the allowlist)"
    )
    assert refusal.to_dict()["reason"] == "host-not-allowed"


# -- probe payloads ----------------------------------------------------------------------------


@given(st.binary(min_size=1, max_size=20), st.binary(min_size=0, max_size=20))
def test_the_quic_datagram_is_an_initial_with_a_reserved_version(dcid: bytes, scid: bytes) -> None:
    datagram = attack_probes.quic_initial(dcid, scid)
    assert len(datagram) == attack_probes.QUIC_DATAGRAM_BYTES
    assert datagram[0] & 0xF0 == 0xC0  # long header, fixed bit, type Initial
    (version,) = struct.unpack("!I", datagram[1:5])
    assert version & 0x0F0F0F0F == 0x0A0A0A0A  # RFC 9000 15: reserved for negotiation
    assert datagram[5] == len(dcid)
    assert datagram[6 : 6 + len(dcid)] == dcid
    at = 6 + len(dcid)
    assert datagram[at] == len(scid)
    at += 1 + len(scid)
    assert datagram[at] == 0  # no token
    (length,) = struct.unpack("!H", datagram[at + 1 : at + 3])
    assert length & 0xC000 == 0x4000
    assert length & 0x3FFF == len(datagram) - at - 3
    assert datagram[at + 3 :] == bytes(len(datagram) - at - 3)  # padding only: no payload


def test_dns_wire_helpers_round_trip_and_refuse_foreign_replies() -> None:
    import dns.message
    import dns.rcode

    wire = attack_probes.dns_query("denied.example", 0x1234)
    query = dns.message.from_wire(wire)
    reply = dns.message.make_response(query)
    reply.set_rcode(dns.rcode.NXDOMAIN)
    assert attack_probes.parse_dns_reply(reply.to_wire(), 0x1234) == ("NXDOMAIN", 0)
    with pytest.raises(ValueError, match="another query"):
        attack_probes.parse_dns_reply(reply.to_wire(), 0x4321)
    with pytest.raises(ValueError, match="not a DNS reply"):
        attack_probes.parse_dns_reply(b"\x00\x01", 1)


@given(st.binary(max_size=600), st.integers(0, 0xFFFF))
def test_any_datagram_is_a_reply_or_a_value_error(wire: bytes, query_id: int) -> None:
    """Whatever comes back from the network is judged or refused, never crashes a probe."""
    try:
        rcode, answers = attack_probes.parse_dns_reply(wire, query_id)
    except ValueError:
        return
    assert isinstance(rcode, str)
    assert answers >= 0


def test_outcomes_of_socket_errors() -> None:
    assert attack_probes.outcome_of_error(TimeoutError()) is Outcome.TIMEOUT
    assert attack_probes.outcome_of_error(ConnectionRefusedError()) is Outcome.REFUSED
    assert attack_probes.outcome_of_error(OSError(113, "no route")) is Outcome.UNREACHABLE
    assert attack_probes.outcome_of_error(OSError(1, "EPERM")) is Outcome.BLOCKED_LOCAL
    assert attack_probes.outcome_of_error(ConnectionResetError()) is Outcome.RESET


def test_no_probe_picks_an_address_of_its_own() -> None:
    """With nothing named, every probe but the metadata ones is skipped with a reason."""
    targets = attack_plan.build_targets(attack_plan.AttackOptions(), {}, [])
    planned = attack_plan.plan(attack_plan.AttackOptions(), targets)
    runnable = {p.spec.id: p.target for p in planned if p.run is not None}
    assert runnable == {
        "metadata.direct-v4": "169.254.169.254:80",
        "metadata.direct-v4-mapped": "[::ffff:169.254.169.254]:80",
        "metadata.direct-nat64": "[64:ff9b::a9fe:a9fe]:80",
    }
    assert all(p.why_not for p in planned if p.run is None)
    skipping = attack_plan.AttackOptions(skip=("metadata",))
    assert not [p for p in attack_plan.plan(skipping, targets) if p.run is not None]


# -- pod inspection ----------------------------------------------------------------------------


def test_host_network_is_judged_from_the_interfaces() -> None:
    pod = host_network_check(["lo", "eth0", "tunl0", "sit0"])
    assert pod.status is CheckStatus.PASS
    assert "interfaces eth0" in pod.detail
    node = host_network_check(["lo", "ens5", "cni0", "veth1a2b3c", "cali0123456789a", "eth0"])
    assert node.status is CheckStatus.FAIL
    assert "hostNetwork: true" in node.detail
    assert "NetworkPolicies do not apply" in node.detail
    init = host_network_check(["lo", "eth0"], "net:[4026531833]")  # PROC_NET_INIT_INO
    assert init.status is CheckStatus.FAIL
    assert "the node's initial network namespace" in init.detail
    assert host_network_check(["lo", "eth0"], "net:[4026532307]").status is CheckStatus.PASS


def test_a_mesh_sidecar_is_seen_by_its_listeners_or_variables() -> None:
    assert mesh_check({}, {8080, 22}).status is CheckStatus.PASS
    istio = mesh_check({}, {15001, 15006, 8080})
    assert istio.status is CheckStatus.WARN
    assert "15001 (Istio outbound capture (envoy))" in istio.detail
    assert mesh_check({"LINKERD2_PROXY_LOG": "warn"}, ()).status is CheckStatus.WARN


PROXY_VARS = {"HTTPS_PROXY": "http://p:3128", "https_proxy": "http://p:3128"}


def test_runtimes_are_checked_for_their_own_proxy_settings() -> None:
    found = [Runtime("curl", "/usr/bin/curl"), Runtime("java", "/usr/bin/java")]
    check = runtime_check(found, PROXY_VARS)
    assert check.status is CheckStatus.WARN
    assert "java (/usr/bin/java): the JVM ignores HTTP(S)_PROXY" in check.detail
    jvm = {**PROXY_VARS, "JAVA_TOOL_OPTIONS": "-Dhttps.proxyHost=p -Dhttps.proxyPort=3128"}
    assert runtime_check(found, jvm).status is CheckStatus.PASS
    node = runtime_check([Runtime("node", "/usr/bin/node")], PROXY_VARS)
    assert node.status is CheckStatus.WARN
    assert "NODE_USE_ENV_PROXY=1" in node.detail
    go = runtime_check([Runtime("go", "/app/server")], {"https_proxy": "http://p:3128"})
    assert go.status is CheckStatus.PASS  # Go reads both cases
    assert runtime_check(found, {}).status is CheckStatus.SKIP
    assert runtime_check([], PROXY_VARS).status is CheckStatus.SKIP


def _policy(name: str, selector: dict[str, Any], egress: list[Any] | None) -> dict[str, Any]:
    spec: dict[str, Any] = {"podSelector": selector, "policyTypes": ["Egress"]}
    if egress is not None:
        spec["egress"] = egress
    return {"metadata": {"name": name}, "spec": spec}


PROXY_ONLY = [{"to": [{"podSelector": {"matchLabels": {"app": "egressgate"}}}],
               "ports": [{"port": 3128, "protocol": "TCP"}]}]  # fmt: skip


def test_network_policy_egress_allow_all_is_found() -> None:
    labels = {"app": "shop"}
    tight = _policy("shop-egress", {"matchLabels": {"app": "shop"}}, PROXY_ONLY)
    assert network_policy_check([tight], labels, "shop").status is CheckStatus.PASS
    wide = _policy("debug", {}, [{}])  # `egress: - {}` for every pod of the namespace
    check = network_policy_check([tight, wide], labels, "shop")
    assert check.status is CheckStatus.FAIL
    assert "debug: egress rule 0 is `{}`" in check.detail
    cidr = _policy(
        "any", {"matchLabels": {"app": "shop"}}, [{"to": [{"ipBlock": {"cidr": "0.0.0.0/0"}}]}]
    )
    assert "allows 0.0.0.0/0 on every port" in network_policy_check([cidr], labels, "s").detail
    other = _policy("other", {"matchLabels": {"app": "other"}}, [{}])
    assert network_policy_check([tight, other], labels, "shop").status is CheckStatus.PASS
    none = network_policy_check([other], labels, "shop")
    assert none.status is CheckStatus.FAIL
    assert "no NetworkPolicy restricts egress" in none.detail
    unknown = network_policy_check([tight, other], None, "shop")
    assert unknown.status is CheckStatus.FAIL
    assert "labels are unknown" in unknown.detail
    expr = _policy(
        "expr",
        {"matchExpressions": [{"key": "app", "operator": "In", "values": ["shop"]}]},
        [{}],
    )
    assert network_policy_check([expr], labels, "shop").status is CheckStatus.FAIL


# -- SARIF -------------------------------------------------------------------------------------

# A subset of the OASIS SARIF 2.1.0 schema (sarif-schema-2.1.0.json, errata01): the objects this
# renderer emits, with their required properties, enums and additionalProperties: false.
_MESSAGE = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"text": {"type": "string"}, "id": {"type": "string"}},
    "anyOf": [{"required": ["text"]}, {"required": ["id"]}],
}
_MULTIFORMAT = {
    "type": "object",
    "additionalProperties": False,
    "properties": {"text": {"type": "string"}, "markdown": {"type": "string"}},
    "required": ["text"],
}
SARIF_SUBSET: dict[str, Any] = {
    "$schema": "http://json-schema.org/draft-04/schema#",
    "type": "object",
    "additionalProperties": False,
    "required": ["version", "runs"],
    "properties": {
        "$schema": {"type": "string"},
        "version": {"enum": ["2.1.0"]},
        "runs": {"type": "array", "items": {"$ref": "#/definitions/run"}},
    },
    "definitions": {
        "run": {
            "type": "object",
            "additionalProperties": False,
            "required": ["tool"],
            "properties": {
                "tool": {
                    "type": "object",
                    "additionalProperties": False,
                    "required": ["driver"],
                    "properties": {"driver": {"$ref": "#/definitions/toolComponent"}},
                },
                "invocations": {"type": "array", "items": {"$ref": "#/definitions/invocation"}},
                "results": {"type": "array", "items": {"$ref": "#/definitions/result"}},
            },
        },
        "toolComponent": {
            "type": "object",
            "additionalProperties": False,
            "required": ["name"],
            "properties": {
                "name": {"type": "string"},
                "version": {"type": "string"},
                "rules": {
                    "type": "array",
                    "uniqueItems": True,
                    "items": {"$ref": "#/definitions/reportingDescriptor"},
                },
            },
        },
        "reportingDescriptor": {
            "type": "object",
            "additionalProperties": False,
            "required": ["id"],
            "properties": {
                "id": {"type": "string"},
                "name": {"type": "string"},
                "shortDescription": _MULTIFORMAT,
                "fullDescription": _MULTIFORMAT,
                "help": _MULTIFORMAT,
                "defaultConfiguration": {
                    "type": "object",
                    "additionalProperties": False,
                    "properties": {"level": {"enum": ["none", "note", "warning", "error"]}},
                },
                "properties": {"type": "object"},
            },
        },
        "invocation": {
            "type": "object",
            "additionalProperties": False,
            "required": ["executionSuccessful"],
            "properties": {
                "executionSuccessful": {"type": "boolean"},
                "exitCode": {"type": "integer"},
            },
        },
        "result": {
            "type": "object",
            "additionalProperties": False,
            "required": ["message"],
            "properties": {
                "ruleId": {"type": "string"},
                "ruleIndex": {"type": "integer", "minimum": -1},
                "kind": {
                    "enum": ["notApplicable", "pass", "fail", "review", "open", "informational"]
                },
                "level": {"enum": ["none", "note", "warning", "error"]},
                "message": _MESSAGE,
                "locations": {
                    "type": "array",
                    "items": {
                        "type": "object",
                        "additionalProperties": False,
                        "properties": {
                            "logicalLocations": {
                                "type": "array",
                                "items": {
                                    "type": "object",
                                    "additionalProperties": False,
                                    "properties": {
                                        "name": {"type": "string"},
                                        "kind": {"type": "string"},
                                    },
                                },
                            }
                        },
                    },
                },
                "properties": {"type": "object"},
            },
        },
    },
}


def validate_sarif(log: dict[str, Any]) -> None:
    """Schema subset, plus the rules the schema cannot say: SARIF 3.27.9/3.27.10 (a result whose
    kind is not "fail" has level "none"), ruleIndex points at the rule with that id."""
    jsonschema.validate(log, SARIF_SUBSET)
    for run in log["runs"]:
        rules = run["tool"]["driver"]["rules"]
        for result in run["results"]:
            assert rules[result["ruleIndex"]]["id"] == result["ruleId"]
            if result["kind"] != "fail":
                assert result["level"] == "none", result


def _report() -> AttackReport:
    through = judge(BY_ID["udp.quic"], "udp:1.2.3.4:443", obs(Outcome.UDP_REPLY))
    stopped = judge(BY_ID["direct.tcp-https"], "1.2.3.4:443", obs(Outcome.TIMEOUT))
    unclear = judge(BY_ID["direct.tcp-other-port"], "1.2.3.4:8443", obs(Outcome.REFUSED))
    skip = skipped(BY_ID["dns.doh-direct"], "no --doh-name given")
    pod = (
        Check("pod.host-network", "own netns", CheckStatus.PASS, "lo, eth0"),
        Check("pod.network-policy", "NetworkPolicy egress", CheckStatus.SKIP, "not checked"),
    )
    return AttackReport((through, stopped, unclear, skip), pod)


def test_sarif_rendering_is_valid_and_maps_each_verdict() -> None:
    report = _report()
    log = json.loads(render_sarif(report))
    validate_sarif(log)
    (run,) = log["runs"]
    assert run["invocations"] == [{"executionSuccessful": True, "exitCode": 1}]
    kinds = [(r["ruleId"], r["kind"], r["level"]) for r in run["results"]]
    assert kinds == [
        ("udp.quic", "fail", "error"),
        ("direct.tcp-https", "pass", "none"),
        ("direct.tcp-other-port", "fail", "warning"),
        ("dns.doh-direct", "notApplicable", "none"),
        ("pod.host-network", "pass", "none"),
        ("pod.network-policy", "notApplicable", "none"),
    ]
    quic = run["results"][0]
    assert quic["message"]["text"].startswith("NOTHING stopped it: a reply came back. FACTS. Fix: ")
    assert quic["properties"]["layer"] == "nothing"
    assert quic["locations"] == [
        {"logicalLocations": [{"name": "udp:1.2.3.4:443", "kind": "resource"}]}
    ]
    assert "locations" not in run["results"][3]  # skipped before it had a target
    rule_ids = [r["id"] for r in run["tool"]["driver"]["rules"]]
    assert rule_ids[: len(CATALOGUE)] == [s.id for s in CATALOGUE]


def test_the_invalid_sarif_is_refused_by_the_subset() -> None:
    log = json.loads(render_sarif(_report()))
    log["runs"][0]["results"][0]["level"] = "fatal"
    with pytest.raises(jsonschema.ValidationError):
        validate_sarif(log)


def test_text_and_json_agree_on_the_verdicts() -> None:
    report = _report()
    assert report.exit_status == 1
    text = render_text(report, unicode=False)
    lines = text.splitlines()
    assert lines[1].split() == ["verdict", "probe", "stopped", "by", "should", "be", "target"]
    assert lines[2].split() == ["x", "THROUGH", "udp.quic", "nothing", "network", "udp:1.2.3.4:443"]
    assert lines[5].split()[3:5] == ["network", "network|proxy"]
    assert lines[4].startswith("      fix: UDP 443 leaves the pod")
    assert lines[-1] == (
        "FAILED: 4 probes: 1 stopped by the intended layer, 1 got THROUGH, 1 unclear, 1 skipped"
    )
    doc = json.loads(render_json(report))
    assert doc["counts"] == {"stopped": 1, "through": 1, "unclear": 1, "skipped": 1}
    assert [p["status"] for p in doc["probes"]] == ["through", "stopped", "unclear", "skipped"]
    assert doc["probes"][2]["fix"].startswith("a port outside the redirected ones")
    ok = AttackReport(report.findings[1:2] + report.findings[3:], report.pod)
    assert ok.exit_status == 0
    assert render_text(ok).splitlines()[-1].startswith("OK: 2 probes")


def test_a_finding_json_has_its_observation() -> None:
    finding: Finding = judge(
        BY_ID["proxy.self"],
        "10.0.0.1:3128",
        Observation(Outcome.HTTP, "F.", http_status=403, reason="ip-literal-not-allowed"),
    )
    data = finding.to_dict()
    assert data["outcome"] == "http"
    assert data["http_status"] == 403
    assert data["layer"] == "proxy"
    assert data["intended"] == ["proxy"]
    assert "fix" not in data


def test_docs_list_every_probe_with_its_text() -> None:
    """docs/verify.md's catalogue is the catalogue: one row per probe, its own words."""
    from pathlib import Path

    doc = (Path(__file__).resolve().parents[3] / "docs" / "verify.md").read_text()
    for spec in CATALOGUE:
        rows = [line for line in doc.splitlines() if line.startswith(f"| `{spec.id}` |")]
        assert len(rows) == 1, spec.id
        assert spec.tries in rows[0], spec.id
        assert spec.fix in rows[0], spec.id


def test_a_probe_that_crashes_is_reported_unclear_and_the_others_still_run() -> None:
    def crash() -> Observation:
        raise ValueError("boom")

    def fine() -> Observation:
        return Observation(Outcome.TIMEOUT, "F.")

    planned = [
        attack_plan.Planned(BY_ID["udp.quic"], "udp:x", run=crash),
        attack_plan.Planned(BY_ID["direct.tcp-https"], "x:443", run=fine),
    ]
    crashed, ok = attack_plan.run_planned(planned, 2)
    assert crashed.status is Status.UNCLEAR
    assert crashed.explanation.endswith("the probe failed: ValueError: boom.")
    assert ok.status is Status.STOPPED
