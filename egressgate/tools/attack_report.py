"""`egressgate verify --attack`: the run, and its three outputs (a table, JSON, SARIF 2.1.0).

`run_attack(options, env)` plans and runs the probes (attack_probes) and inspects the pod
(pod_inspect); the report's exit status is 0 only when every probe that ran was stopped by an
intended layer and no pod check failed. The renderers are pure.
"""

from __future__ import annotations

import json
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from egressgate import __version__
from egressgate.tools import attack_plan, pod_inspect, verify
from egressgate.tools.attack import CATALOGUE, Finding, Status
from egressgate.tools.attack_plan import AttackOptions
from egressgate.tools.verify import Check
from egressgate.tools.verify import Status as CheckStatus

SARIF_VERSION = "2.1.0"
SARIF_SCHEMA = "https://json.schemastore.org/sarif-2.1.0.json"
TOOL_NAME = "egressgate verify --attack"


@dataclass(frozen=True, slots=True)
class AttackReport:
    findings: tuple[Finding, ...]
    pod: tuple[Check, ...]

    @property
    def failed(self) -> bool:
        bad = (Status.THROUGH, Status.UNCLEAR)
        return any(f.status in bad for f in self.findings) or any(
            c.status is CheckStatus.FAIL for c in self.pod
        )

    @property
    def exit_status(self) -> int:
        return 1 if self.failed else 0

    def count(self, status: Status) -> int:
        return sum(1 for f in self.findings if f.status is status)


def run_attack(
    options: AttackOptions, env: Mapping[str, str], *, inspect_pod: bool = True, api: bool = True
) -> AttackReport:
    pod_v6 = pod_inspect.global_ipv6_addresses()
    targets = attack_plan.build_targets(options, env, pod_v6)
    findings = attack_plan.run_planned(attack_plan.plan(options, targets), options.parallel)
    pod = pod_inspect.inspect(env, options.timeout_s, api=api) if inspect_pod else []
    return AttackReport(tuple(findings), tuple(pod))


# -- text --------------------------------------------------------------------------------------

_MARKS = {
    True: {Status.STOPPED: "✓", Status.THROUGH: "✗", Status.UNCLEAR: "?", Status.SKIPPED: "\u2013"},
    False: {Status.STOPPED: "+", Status.THROUGH: "x", Status.UNCLEAR: "?", Status.SKIPPED: "-"},
}
_VERDICT_WORDS = {
    Status.STOPPED: "stopped",
    Status.THROUGH: "THROUGH",
    Status.UNCLEAR: "unclear",
    Status.SKIPPED: "skipped",
}


def render_text(report: AttackReport, *, unicode: bool = True) -> str:
    """A table (verdict, probe, stopped by, target) with each probe's explanation under it."""
    marks = _MARKS[unicode]
    rows = [
        (
            f"{marks[f.status]} {_VERDICT_WORDS[f.status]}",
            f.probe.id,
            str(f.layer) if f.layer is not None else "",
            "|".join(sorted(str(layer) for layer in f.probe.intended)),
            f.target,
        )
        for f in report.findings
    ]
    header = ("  verdict", "probe", "stopped by", "should be", "target")
    widths = [max(len(r[i]) for r in [header, *rows]) for i in range(len(header))]
    lines = ["Bypass probes (each must be stopped by a layer its `should be` column names)"]
    lines.append(_row(header, widths))
    for row, finding in zip(rows, report.findings, strict=True):
        lines.append(_row(row, widths))
        lines.append(f"      {finding.explanation}")
        if finding.fix is not None:
            lines.append(f"      fix: {finding.fix}")
    if report.pod:
        lines.append("Pod")
        check_marks = verify.MARKS[unicode]
        lines += [f"  {check_marks[c.status]} {c.title}: {c.detail}" for c in report.pod]
    lines.append(_summary(report))
    return "\n".join(lines) + "\n"


def _row(cells: Sequence[str], widths: Sequence[int]) -> str:
    return "  " + "  ".join(c.ljust(w) for c, w in zip(cells, widths, strict=True)).rstrip()


def _summary(report: AttackReport) -> str:
    counts = ", ".join(
        f"{report.count(s)} {word}"
        for s, word in (
            (Status.STOPPED, "stopped by the intended layer"),
            (Status.THROUGH, "got THROUGH"),
            (Status.UNCLEAR, "unclear"),
            (Status.SKIPPED, "skipped"),
        )
        if report.count(s)
    )
    pod_failed = sum(1 for c in report.pod if c.status is CheckStatus.FAIL)
    pod = f"; pod: {pod_failed} failed check(s)" if pod_failed else ""
    verdict = "FAILED" if report.failed else "OK"
    return f"{verdict}: {len(report.findings)} probes: {counts}{pod}"


# -- JSON --------------------------------------------------------------------------------------


def render_json(report: AttackReport) -> str:
    doc = {
        "ok": not report.failed,
        "exit_status": report.exit_status,
        "counts": {str(s): report.count(s) for s in Status},
        "probes": [f.to_dict() for f in report.findings],
        "pod": [c.to_dict() for c in report.pod],
    }
    return json.dumps(doc, indent=2)


# -- SARIF 2.1.0 -------------------------------------------------------------------------------

# How a verdict maps to SARIF's result.kind and result.level (SARIF 2.1.0, 3.27.9 and 3.27.10):
# only `fail` results carry a level other than "none".
_PROBE_SARIF = {
    Status.STOPPED: ("pass", "none"),
    Status.THROUGH: ("fail", "error"),
    Status.UNCLEAR: ("fail", "warning"),
    Status.SKIPPED: ("notApplicable", "none"),
}
_CHECK_SARIF = {
    CheckStatus.PASS: ("pass", "none"),
    CheckStatus.FAIL: ("fail", "error"),
    CheckStatus.WARN: ("fail", "warning"),
    CheckStatus.SKIP: ("notApplicable", "none"),
}
_POD_RULES = (
    ("pod.host-network", "The pod has its own network namespace (hostNetwork is off)"),
    ("pod.mesh", "No service-mesh sidecar changes the egress path unnoticed"),
    ("pod.runtimes", "Every HTTP runtime in the image is configured for the proxy"),
    ("pod.network-policy", "No NetworkPolicy allows every egress"),
)


def _rules() -> list[dict[str, Any]]:
    rules: list[dict[str, Any]] = [
        {
            "id": spec.id,
            "name": spec.id.replace(".", "-"),
            "shortDescription": {"text": spec.title},
            "fullDescription": {
                "text": f"{spec.tries}. Should be stopped by {spec.intended_text}."
            },
            "help": {"text": f"When it gets through: {spec.fix} (docs/verify.md, the catalogue)"},
            "defaultConfiguration": {"level": "error"},
            "properties": {"intended": sorted(str(layer) for layer in spec.intended)},
        }
        for spec in CATALOGUE
    ]
    rules += [
        {
            "id": rule_id,
            "name": rule_id.replace(".", "-"),
            "shortDescription": {"text": text},
            "defaultConfiguration": {"level": "error"},
        }
        for rule_id, text in _POD_RULES
    ]
    return rules


def _location(target: str) -> list[dict[str, Any]]:
    if not target:
        return []
    return [{"logicalLocations": [{"name": target, "kind": "resource"}]}]


def render_sarif(report: AttackReport) -> str:
    """One SARIF 2.1.0 log with one run: a rule per probe and pod check, a result per verdict."""
    rules = _rules()
    index = {rule["id"]: i for i, rule in enumerate(rules)}
    results: list[dict[str, Any]] = []
    for finding in report.findings:
        kind, level = _PROBE_SARIF[finding.status]
        text = finding.explanation + (f" Fix: {finding.fix}" if finding.fix else "")
        properties = {
            k: v
            for k, v in finding.to_dict().items()
            if k not in ("probe", "title", "explanation", "fix")
        }
        result: dict[str, Any] = {
            "ruleId": finding.probe.id,
            "ruleIndex": index[finding.probe.id],
            "kind": kind,
            "level": level,
            "message": {"text": text},
            "properties": properties,
        }
        locations = _location(finding.target)
        if locations:
            result["locations"] = locations
        results.append(result)
    for check in report.pod:
        kind, level = _CHECK_SARIF[check.status]
        results.append(
            {
                "ruleId": check.name,
                "ruleIndex": index[check.name],
                "kind": kind,
                "level": level,
                "message": {"text": f"{check.title}: {check.detail}"},
            }
        )
    log = {
        "$schema": SARIF_SCHEMA,
        "version": SARIF_VERSION,
        "runs": [
            {
                "tool": {
                    "driver": {
                        "name": TOOL_NAME,
                        "version": __version__,
                        "rules": rules,
                    }
                },
                "invocations": [{"executionSuccessful": True, "exitCode": report.exit_status}],
                "results": results,
            }
        ],
    }
    return json.dumps(log, indent=2)
