"""`egressgate k8s render --verify-job`: the Job that runs `verify --attack` as the app.

Every object validates with kubernetes-validate --strict (offline schemas). The Job's pod carries
the app's labels, so the rendered client NetworkPolicy selects it exactly as it selects the app,
and loads the app's proxy variables from the rendered client-env ConfigMap.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from egressgate.tools.k8s_render import RUN_AS_ID
from tests.integration.test_cli_k8s import _egressgate, _validate_all

CONFIG = """\
listen: 0.0.0.0:3128
admin_listen: 0.0.0.0:9090
allow: [api.example.com]
"""
JOB_ARGS = ["--verify-job", "--verify-allowed", "https://api.example.com/"]
JOB_ARGS += ["--verify-denied", "https://example.org/", "--verify-outside-resolver", "9.9.9.9"]
JOB_ARGS += ["--verify-doh-name", "dns.google"]


@pytest.fixture
def config(tmp_path: Path) -> Path:
    path = tmp_path / "egress.yaml"
    path.write_text(CONFIG)
    return path


def _render(*args: str) -> tuple[int, list[dict[str, Any]], str]:
    result = _egressgate("k8s", "render", *args)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.returncode == 0 else []
    return result.returncode, docs, result.stderr


def test_the_verify_job_validates_and_runs_as_the_app(config: Path) -> None:
    code, docs, stderr = _render(
        "-c", str(config), "--app-label", "app=shop", "--app-namespace", "shop", *JOB_ARGS
    )
    assert code == 0, stderr
    _validate_all(docs)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    job = by_kind[("Job", "egressgate-verify")]
    assert job["metadata"]["namespace"] == "shop"
    policy = by_kind[("NetworkPolicy", "egressgate-client-egress")]
    pod = job["spec"]["template"]
    selector = policy["spec"]["podSelector"]["matchLabels"]
    assert selector.items() <= pod["metadata"]["labels"].items()  # the app's policy applies
    assert job["spec"]["backoffLimit"] == 0
    (container,) = pod["spec"]["containers"]
    assert container["args"] == [
        "verify",
        "--attack",
        "--timeout",
        "3",
        "--allowed",
        "https://api.example.com/",
        "--denied",
        "https://example.org/",
        "--outside-resolver",
        "9.9.9.9",
        "--doh-name",
        "dns.google",
        "--admin-port",
        "9090",
    ]
    env_map = by_kind[("ConfigMap", "egressgate-client-env")]
    assert env_map["metadata"]["namespace"] == "shop"
    assert container["envFrom"] == [{"configMapRef": {"name": "egressgate-client-env"}}]
    assert container["securityContext"]["runAsUser"] == RUN_AS_ID
    assert container["readinessProbe"]["tcpSocket"]["port"] == 1  # never an endpoint
    account = by_kind[("ServiceAccount", "egressgate-verify")]
    assert pod["spec"]["serviceAccountName"] == account["metadata"]["name"]
    role = by_kind[("Role", "egressgate-verify")]
    assert {tuple(r["resources"]) for r in role["rules"]} == {("networkpolicies",), ("pods",)}
    assert all(set(r["verbs"]) <= {"get", "list"} for r in role["rules"])
    binding = by_kind[("RoleBinding", "egressgate-verify")]
    assert binding["subjects"] == [
        {"kind": "ServiceAccount", "name": "egressgate-verify", "namespace": "shop"}
    ]


def test_without_the_flag_there_is_no_job(config: Path) -> None:
    code, docs, _ = _render("-c", str(config))
    assert code == 0
    assert "Job" not in {d["kind"] for d in docs}


def test_the_job_needs_targets_and_explicit_mode(config: Path, tmp_path: Path) -> None:
    code, _, stderr = _render("-c", str(config), "--verify-job")
    assert code == 2
    assert "--verify-job needs --verify-allowed URL and --verify-denied URL" in stderr
    code, _, stderr = _render(
        "-c", str(config), *JOB_ARGS[:-2], "--verify-outside-resolver", "resolver.example"
    )
    assert code == 2
    assert "--verify-outside-resolver 'resolver.example': not an IP address" in stderr
    sidecar = tmp_path / "sidecar.yaml"
    sidecar.write_text("listen: 127.0.0.1:3128\ntransparent_listen: 127.0.0.1:3130\n")
    code, _, stderr = _render("-c", str(sidecar), "--mode", "transparent", *JOB_ARGS)
    assert code == 2
    assert "--verify-job is for --mode explicit" in stderr
    code, _, stderr = _render("-c", str(config), "--inject", *JOB_ARGS)
    assert code == 2, "the Job must not be silently dropped from an --inject render"
    assert "run them as two renders" in stderr
