"""`python -m egressgate k8s render` as a user runs it: a subprocess whose stdout is piped to
`kubectl apply -f -`, so stdout must be nothing but valid manifests, and errors go to stderr with
exit status 2. Offline: the schemas come with kubernetes_validate.
"""

from __future__ import annotations

import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from egressgate.config.default import BUILTIN_DEFAULT_YAML

REPO_ROOT = Path(__file__).resolve().parents[2]
K8S_VERSION = kubernetes_validate.latest_version()


def _egressgate(*args: str) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        [sys.executable, "-m", "egressgate", *args],
        cwd=REPO_ROOT,
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )


def _documents(stdout: str) -> list[dict[str, Any]]:
    return [doc for doc in yaml.safe_load_all(stdout) if doc is not None]


def _validate_all(documents: list[dict[str, Any]]) -> None:
    for doc in documents:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)


@pytest.fixture
def config_file(tmp_path: Path) -> Path:
    path = tmp_path / "egress.yaml"
    path.write_text(
        textwrap.dedent(
            """\
            # the team's egress allowlist
            listen: 0.0.0.0:3128
            admin_listen: 0.0.0.0:9090
            allow:
              - api.github.com
              - .stripe.com
            limits:
              drain_timeout_s: 30
              shutdown_delay_s: 5
            """
        )
    )
    return path


def test_render_pipes_valid_manifests(config_file: Path) -> None:
    result = _egressgate(
        "k8s",
        "render",
        "--config",
        str(config_file),
        "--namespace",
        "egress",
        "--app-label",
        "app=my-app",
        "--app-namespace",
        "shop",
        "--replicas",
        "3",
        "--image",
        "registry.example/egressgate:1.2.3",
        "--cluster-cidr",
        "100.64.0.0/10",
    )
    assert result.returncode == 0, result.stderr
    assert "Traceback" not in result.stderr
    documents = _documents(result.stdout)
    _validate_all(documents)
    kinds = sorted(doc["kind"] for doc in documents)
    assert kinds == sorted(
        [
            "ConfigMap",
            "ConfigMap",
            "Deployment",
            "HorizontalPodAutoscaler",
            "NetworkPolicy",
            "NetworkPolicy",
            "PodDisruptionBudget",
            "Service",
        ]
    )
    by_name = {(d["kind"], d["metadata"]["name"]): d for d in documents}
    config_map = by_name[("ConfigMap", "egressgate-config")]
    assert config_map["data"]["egress.yaml"] == config_file.read_text()
    deployment = by_name[("Deployment", "egressgate")]
    container = deployment["spec"]["template"]["spec"]["containers"][0]
    assert container["image"] == "registry.example/egressgate:1.2.3"
    assert deployment["spec"]["template"]["spec"]["terminationGracePeriodSeconds"] >= 35
    assert by_name[("HorizontalPodAutoscaler", "egressgate")]["spec"]["minReplicas"] == 3
    client_env = by_name[("ConfigMap", "egressgate-client-env")]
    assert client_env["metadata"]["namespace"] == "shop"
    assert client_env["data"]["HTTPS_PROXY"] == "http://egressgate.egress.svc.cluster.local:3128"
    assert "100.64.0.0/10" in client_env["data"]["NO_PROXY"].split(",")
    proxy_policy = by_name[("NetworkPolicy", "egressgate-proxy")]
    excluded = proxy_policy["spec"]["egress"][-1]["to"][0]["ipBlock"]["except"]
    assert {"100.64.0.0/10", "169.254.0.0/16"} <= set(excluded)


def test_without_config_renders_the_builtin_default() -> None:
    result = _egressgate("k8s", "render", "--app-label", "app=my-app")
    assert result.returncode == 0, result.stderr
    documents = _documents(result.stdout)
    _validate_all(documents)
    config_map = next(d for d in documents if d["metadata"]["name"] == "egressgate-config")
    assert config_map["data"]["egress.yaml"] == BUILTIN_DEFAULT_YAML


def test_notes_go_to_stderr_not_into_the_manifests() -> None:
    result = _egressgate("k8s", "render")  # no --app-label: the opt-in label is used
    assert result.returncode == 0, result.stderr
    assert "egressgate.io/client=egressgate" in result.stderr
    assert "note:" not in result.stdout
    _validate_all(_documents(result.stdout))


def test_invalid_config_lists_every_issue_and_exits_2(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("listen: nowhere\nworkers: 0\nbogus: 1\n")
    result = _egressgate("k8s", "render", "--config", str(path), "--app-label", "app=x")
    assert result.returncode == 2
    assert result.stdout == ""
    issue_lines = [line for line in result.stderr.splitlines() if line.startswith(str(path))]
    assert len(issue_lines) == 3, result.stderr
    assert f"{path}:1:" in result.stderr  # file:line:col
    assert f"{path}:3:1: unknown key 'bogus'" in result.stderr


def test_hosts_file_next_to_the_config_ships_with_it(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("10.1.2.3 billing.internal\n")
    (tmp_path / "egress.yaml").write_text("hosts_file: hosts\nallow: [billing.internal]\n")
    result = _egressgate("k8s", "render", "-c", str(tmp_path / "egress.yaml"), "--app-label", "a=b")
    assert result.returncode == 0, result.stderr
    documents = _documents(result.stdout)
    _validate_all(documents)
    config_map = next(d for d in documents if d["metadata"]["name"] == "egressgate-config")
    assert config_map["data"]["hosts"] == "10.1.2.3 billing.internal\n"
    assert "hosts_file" not in result.stderr  # nothing left to mount by hand


def test_unreadable_config_exits_2(tmp_path: Path) -> None:
    result = _egressgate("k8s", "render", "--config", str(tmp_path / "missing.yaml"))
    assert result.returncode == 2
    assert "cannot read" in result.stderr


@pytest.mark.parametrize(
    ("args", "message"),
    [
        (["--replicas", "1"], "at least 2"),
        (["--app-label", "app"], "key=value"),
        (["--cluster-cidr", "not-a-cidr"], "CIDR"),
    ],
)
def test_bad_options_exit_2_with_a_reason(args: list[str], message: str) -> None:
    result = _egressgate("k8s", "render", *args)
    assert result.returncode == 2
    assert result.stdout == ""
    assert message in result.stderr


def test_help_has_an_example() -> None:
    result = _egressgate("k8s", "render", "--help")
    assert result.returncode == 0
    assert "kubectl apply -f -" in result.stdout
    assert "--app-label" in result.stdout
    bare = _egressgate("k8s")
    assert bare.returncode == 2
    assert "render" in bare.stderr
