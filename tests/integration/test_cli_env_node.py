"""`egressgate env --format systemd | docker-daemon`: the proxy for a node's container runtime and
kubelet. The output is parsed back the way systemd and dockerd read it, and the drop-in is
checked by `systemd-analyze verify` (when installed) attached to a throw-away unit.
"""

from __future__ import annotations

import json
import os
import re
import shutil
import subprocess
from pathlib import Path

import pytest

from egressgate.tools.proxy_env import build_env
from tests.integration.test_cli_k8s import _egressgate

PROXY = "http://10.0.0.5:3128"
ARGS = (
    "--proxy", PROXY, "--cluster-cidr", "10.96.0.0/12", "--cluster-cidr", "10.244.0.0/16",
    "--no-proxy", "10.0.0.0/24", "registry.corp.example",
)  # fmt: skip
_ENVIRONMENT = re.compile(r'^Environment="((?:[^"\\]|\\.)*)"$')


def _systemd_unquote(text: str) -> str:
    return re.sub(r"\\(.)", r"\1", text).replace("%%", "%")


def _parse_drop_in(text: str) -> dict[str, str]:
    lines = [line for line in text.splitlines() if line and not line.startswith("#")]
    assert lines[0] == "[Service]"
    out = {}
    for line in lines[1:]:
        match = _ENVIRONMENT.match(line)
        assert match, line
        name, _, value = _systemd_unquote(match.group(1)).partition("=")
        out[name] = value
    return out


def test_the_systemd_drop_in_carries_what_egressgate_env_builds() -> None:
    done = _egressgate("env", "--format", "systemd", *ARGS)
    assert done.returncode == 0, done.stderr
    expected = build_env(
        PROXY, ["10.0.0.0/24", "registry.corp.example"], ["10.96.0.0/12", "10.244.0.0/16"]
    )
    assert _parse_drop_in(done.stdout) == dict(expected.variables)
    assert "JAVA_TOOL_OPTIONS" not in done.stdout  # no JVM in a container runtime
    assert "registry.corp.example" in expected.no_proxy
    assert "etcd and the API server off the proxy" in done.stdout


def test_percent_and_quotes_are_escaped_for_systemd() -> None:
    proxy = "http://svc:p%40ss@10.0.0.5:3128"
    done = _egressgate("env", "--format", "systemd", "--proxy", proxy)
    assert done.returncode == 0, done.stderr
    assert 'Environment="HTTP_PROXY=http://svc:p%%40ss@10.0.0.5:3128"' in done.stdout
    assert _parse_drop_in(done.stdout)["HTTP_PROXY"] == proxy


def test_the_docker_daemon_block_is_the_proxies_of_daemon_json() -> None:
    done = _egressgate("env", "--format", "docker-daemon", *ARGS)
    assert done.returncode == 0, done.stderr
    doc = json.loads(done.stdout)
    expected = build_env(
        PROXY, ["10.0.0.0/24", "registry.corp.example"], ["10.96.0.0/12", "10.244.0.0/16"]
    )
    assert doc == {
        "proxies": {"http-proxy": PROXY, "https-proxy": PROXY, "no-proxy": expected.no_proxy}
    }


@pytest.mark.skipif(shutil.which("systemd-analyze") is None, reason="systemd-analyze not installed")
def test_systemd_analyze_verify_accepts_the_drop_in(tmp_path: Path) -> None:
    done = _egressgate(
        "env", "--format", "systemd", *ARGS, "--proxy", "http://svc:p%40ss@10.0.0.5:3128"
    )
    assert done.returncode == 0, done.stderr
    unit = tmp_path / f"egressgate-test-{os.getpid()}.service"
    unit.write_text("[Unit]\nDescription=drop-in carrier\n[Service]\nExecStart=/bin/true\n")
    drop_ins = tmp_path / f"{unit.name}.d"
    drop_ins.mkdir()
    (drop_ins / "http-proxy.conf").write_text(done.stdout)
    verify = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    # verify warns (exit 0) about lines it ignores: any mention of the drop-in is a problem.
    assert verify.returncode == 0, verify.stderr
    assert "http-proxy.conf" not in verify.stderr + verify.stdout
    # And systemd really read it: a broken line in the same file is reported.
    (drop_ins / "http-proxy.conf").write_text(done.stdout + 'Environment="A=%z"\n')
    broken = subprocess.run(
        ["systemd-analyze", "verify", str(unit)],
        env={**os.environ, "SYSTEMD_UNIT_PATH": f"{tmp_path}:"},
        capture_output=True, text=True, timeout=30, check=False,
    )  # fmt: skip
    assert "http-proxy.conf" in broken.stderr
