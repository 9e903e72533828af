"""The TLS-interception commands as a user runs them, each a real subprocess (issue 16):
`ca init`, `env --ca`, `check` (what it shows, and the CA key it refuses), `run` refusing a
CA key others can read, and `k8s render` (the key in the proxy's Secret only, the certificate
for the apps; valid for `kubernetes-validate --strict`). No secret value in any output.
"""

from __future__ import annotations

import json
import os
import shlex
import stat
import subprocess
import sys
import textwrap
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import yaml

from tests.integration.helpers_ops import CliResult, run_cli
from tests.support.proxy import REPO_ROOT, clean_env

TOKEN = "ghp_cliTestSecretToken0123456789"
ENV_TOKEN = "envTestSecretToken9876543210"
K8S_VERSION = kubernetes_validate.latest_version()


def _mode(path: Path) -> int:
    return stat.S_IMODE(path.stat().st_mode)


def _ca_init(out: Path, *args: str, umask: int = 0o022) -> CliResult:
    """`egressgate ca init` with a chosen umask (run_cli keeps the test's)."""
    argv = [sys.executable, "-m", "egressgate", "ca", "init", "--out", str(out), *args]
    done = subprocess.run(
        argv,
        cwd=REPO_ROOT,
        env=clean_env(),
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
        umask=umask,
    )
    return CliResult(argv, done.returncode, done.stdout, done.stderr, 0.0)


@pytest.fixture(scope="module")
def ca_dir(tmp_path_factory: pytest.TempPathFactory) -> Path:
    """A CA made by `egressgate ca init`, next to a config that uses it."""
    out = tmp_path_factory.mktemp("ca") / "conf"
    result = _ca_init(out, "--name-constraint", "api.github.com", "--name-constraint", ".pypi.org")
    assert result.exit_code == 0, result.stderr
    (out / "gh-token").write_text(TOKEN + "\n")
    (out / "egress.yaml").write_text(
        textwrap.dedent(
            """\
            listen: 0.0.0.0:3128
            admin_listen: 0.0.0.0:9090
            tls_intercept: {ca_cert_file: ca.crt, ca_key_file: ca.key}
            allow: [.github.com, pypi.org]
            intercept:
              - host: api.github.com
                rules:
                  - {methods: [GET, HEAD], paths: ["/repos/our-org/*"]}
                  - {paths: [/socket], websocket: true}
                set_headers: {Authorization: "Bearer file:gh-token", X-Key: "env:EG_CLI_TOKEN"}
              - host: pypi.org
                rules: [{methods: [GET, HEAD]}]
            """
        )
    )
    return out


def _no_secret(*texts: str) -> None:
    for text in texts:
        assert TOKEN not in text
        assert ENV_TOKEN not in text
        assert "PRIVATE KEY" not in text


# ---------------------------------------------------------------------------------------------
# ca init
# ---------------------------------------------------------------------------------------------


def test_ca_init_writes_the_files_and_says_how_to_trust_them(ca_dir: Path) -> None:
    assert _mode(ca_dir / "ca.key") == 0o600
    assert _mode(ca_dir / "ca.crt") == 0o644
    assert (ca_dir / "bundle.pem").read_bytes().endswith((ca_dir / "ca.crt").read_bytes())
    assert b"BEGIN PRIVATE KEY" in (ca_dir / "ca.key").read_bytes()


@pytest.mark.parametrize("umask", [0o000, 0o022, 0o077])
def test_ca_init_key_is_0600_whatever_the_umask(tmp_path: Path, umask: int) -> None:
    result = _ca_init(tmp_path / "ca", "--no-bundle", umask=umask)
    assert result.exit_code == 0, result.stderr
    assert _mode(tmp_path / "ca" / "ca.key") == 0o600
    assert sorted(os.listdir(tmp_path / "ca")) == ["ca.crt", "ca.key"]
    for needle in (
        "update-ca-certificates",
        "REQUESTS_CA_BUNDLE=",
        "SSL_CERT_FILE=",
        "NODE_EXTRA_CA_CERTS=",
        "GIT_SSL_CAINFO=",
        "PIP_CERT=",
        "keytool -importcert",
        "no system CA bundle found",
    ):
        assert needle in result.stdout, needle
    _no_secret(result.stdout, result.stderr)


def test_ca_init_refuses_to_overwrite(tmp_path: Path) -> None:
    assert _ca_init(tmp_path, "--no-bundle").exit_code == 0
    before = {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)}
    again = _ca_init(tmp_path)
    assert again.exit_code == 1
    assert "refusing to overwrite" in again.stderr
    assert again.stdout == ""
    assert {name: (tmp_path / name).read_bytes() for name in os.listdir(tmp_path)} == before


def test_ca_init_usage_errors(tmp_path: Path) -> None:
    result = _ca_init(tmp_path / "x", "--name-constraint", "*")
    assert result.exit_code == 2
    assert "--name-constraint" in result.stderr
    assert not (tmp_path / "x").exists()
    result = run_cli(["ca"])
    assert result.exit_code == 2


# ---------------------------------------------------------------------------------------------
# check and run
# ---------------------------------------------------------------------------------------------


def test_check_shows_intercept_hosts_and_rules_never_secrets(ca_dir: Path) -> None:
    result = run_cli(
        ["check", "--config", str(ca_dir / "egress.yaml")], env={"EG_CLI_TOKEN": ENV_TOKEN}
    )
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert f"tls_intercept: CA {ca_dir / 'ca.crt'}, key {ca_dir / 'ca.key'}" in out
    assert "policy 'default' intercepts api.github.com (line 6):" in out
    assert "rule 1: GET,HEAD /repos/our-org/* (line 8)" in out
    assert "rule 2: any method /socket, WebSocket upgrades too (line 9)" in out
    assert "sets Authorization: Bearer <secret from file:gh-token>" in out
    assert "sets X-Key: <secret from env:EG_CLI_TOKEN>" in out
    assert "policy 'default' intercepts pypi.org (line 11):" in out
    _no_secret(result.stdout, result.stderr)


def test_check_names_the_variable_a_secret_is_missing_from(ca_dir: Path) -> None:
    result = run_cli(["check", "--config", str(ca_dir / "egress.yaml")])
    assert result.exit_code == 1
    assert "EG_CLI_TOKEN is unset or empty" in result.stderr
    assert f"{ca_dir / 'egress.yaml'}:10:" in result.stderr  # the line of set_headers


@pytest.mark.parametrize("command", ["check", "run"])
def test_a_ca_key_others_can_read_refuses_check_and_start(
    ca_dir: Path, tmp_path: Path, command: str
) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("ca.crt", "ca.key", "gh-token", "egress.yaml"):
        (conf / name).write_bytes((ca_dir / name).read_bytes())
    key = conf / "ca.key"
    key.chmod(0o604)
    config = conf / "egress.yaml"
    config.write_text(config.read_text().replace("listen: 0.0.0.0:3128", "listen: 127.0.0.1:0"))
    result = run_cli([command, "--config", str(config)], env={"EG_CLI_TOKEN": ENV_TOKEN})
    assert result.exit_code != 0
    assert f"the CA key file {key} is accessible by group or others (mode 0604)" in (result.stderr)
    assert f"{config}:3:" in result.stderr
    _no_secret(result.stdout, result.stderr)


# ---------------------------------------------------------------------------------------------
# env --ca
# ---------------------------------------------------------------------------------------------

CA_VARIABLES = (
    "SSL_CERT_FILE",
    "REQUESTS_CA_BUNDLE",
    "CURL_CA_BUNDLE",
    "GIT_SSL_CAINFO",
    "PIP_CERT",
    "NODE_EXTRA_CA_CERTS",
)


def test_env_ca_in_a_shell(ca_dir: Path) -> None:
    bundle = ca_dir / "bundle.pem"
    result = run_cli(["env", "--proxy", "http://127.0.0.1:3128", "--ca", str(bundle)])
    assert result.exit_code == 0, result.stderr
    script = result.stdout + "".join(f'echo "{v}=${v}"\n' for v in CA_VARIABLES)
    shell = subprocess.run(
        ["bash", "-c", script], capture_output=True, text=True, timeout=30, check=True
    )
    assert shell.stdout.splitlines() == [f"{v}={bundle}" for v in CA_VARIABLES]
    assert "HTTPS_PROXY=" in result.stdout
    assert f"keytool -importcert -noprompt -alias egressgate -file {ca_dir / 'ca.crt'}" in (
        result.stderr
    )
    assert "warning" not in result.stderr


@pytest.mark.parametrize("fmt", ["shell", "dotenv", "k8s", "docker", "env-file", "json"])
def test_env_ca_alone_in_every_format(ca_dir: Path, fmt: str) -> None:
    bundle = str(ca_dir / "bundle.pem")
    result = run_cli(["env", "--ca", bundle, "--format", fmt])
    assert result.exit_code == 0, result.stderr
    out = result.stdout
    assert "HTTP_PROXY" not in out
    if fmt == "json":
        doc = json.loads(out)
        assert doc["variables"] == dict.fromkeys(CA_VARIABLES, bundle)
        assert doc["ca"]["file"] == bundle
        assert "keytool" in doc["ca"]["java_truststore"]
    elif fmt == "k8s":
        env = yaml.safe_load(out)["env"]
        assert [(e["name"], e["value"]) for e in env] == [(v, bundle) for v in CA_VARIABLES]
    elif fmt == "docker":
        assert shlex.split(out) == [x for v in CA_VARIABLES for x in ("-e", f"{v}={bundle}")]
    else:
        for variable in CA_VARIABLES:
            assert f"{variable}=" in out
            assert bundle in out


def test_env_ca_warns_about_a_lone_certificate(ca_dir: Path) -> None:
    result = run_cli(["env", "--ca", str(ca_dir / "ca.crt")])
    assert result.exit_code == 0
    assert "holds one certificate" in result.stderr
    assert "would fail to verify" in result.stderr


def test_env_ca_refuses_a_file_without_certificate(ca_dir: Path) -> None:
    result = run_cli(["env", "--ca", str(ca_dir / "egress.yaml")])
    assert result.exit_code == 2
    assert "holds no PEM certificate" in result.stderr
    assert result.stdout == ""


def test_env_ca_path_inside_a_container_is_taken_as_given() -> None:
    result = run_cli(["env", "--ca", "/etc/egressgate-ca/bundle.pem", "--format", "dotenv"])
    assert result.exit_code == 0, result.stderr
    assert "SSL_CERT_FILE=/etc/egressgate-ca/bundle.pem" in result.stdout
    assert "-file /etc/egressgate-ca/ca.crt" in result.stderr


# ---------------------------------------------------------------------------------------------
# k8s render
# ---------------------------------------------------------------------------------------------


def _render(config: Path, *args: str) -> tuple[int, list[dict[str, Any]], str, str]:
    result = run_cli(
        ["k8s", "render", "--config", str(config), "--app-label", "app=ci", *args],
        env={"EG_CLI_TOKEN": ENV_TOKEN},
        timeout=60,
    )
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.exit_code == 0 else []
    return result.exit_code, docs, result.stdout, result.stderr


def _find(docs: list[dict[str, Any]], kind: str, name: str) -> dict[str, Any]:
    (found,) = [d for d in docs if d["kind"] == kind and d["metadata"]["name"] == name]
    return found


def test_k8s_render_keeps_the_key_in_the_proxys_secret(ca_dir: Path) -> None:
    code, docs, stdout, stderr = _render(ca_dir / "egress.yaml", "--app-namespace", "shop")
    assert code == 0, stderr
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    _no_secret(stdout, stderr)
    assert not [d for d in docs if d["kind"] == "Secret"]  # never rendered: it holds the key

    config_map = _find(docs, "ConfigMap", "egressgate-config")
    assert set(config_map["data"]) == {"egress.yaml", "ca.crt"}
    assert config_map["data"]["ca.crt"] == (ca_dir / "ca.crt").read_text()

    pod = _find(docs, "Deployment", "egressgate")["spec"]["template"]["spec"]
    assert pod["securityContext"]["fsGroup"] == 65532
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    config_source, secret_source = volume["projected"]["sources"]
    assert config_source == {"configMap": {"name": "egressgate-config"}}
    assert secret_source["secret"]["name"] == "egressgate-intercept"
    assert secret_source["secret"]["items"] == [
        {"key": "ca.key", "path": "ca.key", "mode": 0o440},
        {"key": "gh-token", "path": "gh-token", "mode": 0o440},
    ]
    (container,) = pod["containers"]
    assert {"name": "config", "mountPath": "/etc/egressgate", "readOnly": True} in container[
        "volumeMounts"
    ]

    app_ca = _find(docs, "ConfigMap", "egressgate-ca")
    assert app_ca["metadata"]["namespace"] == "shop"
    assert app_ca["data"]["ca.crt"] == (ca_dir / "ca.crt").read_text()
    assert app_ca["data"]["bundle.pem"].endswith((ca_dir / "ca.crt").read_text())
    client_env = _find(docs, "ConfigMap", "egressgate-client-env")["data"]
    for variable in CA_VARIABLES:
        assert client_env[variable] == "/etc/egressgate-ca/bundle.pem"
    for doc in docs:  # the key is mounted in the proxy only, in no ConfigMap
        assert "ca.key" not in doc.get("data", {})

    assert (
        "kubectl -n egressgate create secret generic egressgate-intercept "
        f"--from-file=ca.key={ca_dir / 'ca.key'} --from-file=gh-token={ca_dir / 'gh-token'}"
    ) in stderr
    assert "add the variable EG_CLI_TOKEN to the egressgate container" in stderr
    assert "mount the ConfigMap egressgate-ca at /etc/egressgate-ca" in stderr


def test_k8s_render_needs_no_secret_where_it_runs(ca_dir: Path) -> None:
    """The manifests never carry a secret, so rendering reads none: the variable may be unset
    on the workstation or in CI."""
    result = run_cli(
        ["k8s", "render", "--config", str(ca_dir / "egress.yaml"), "--app-label", "app=ci"],
        timeout=60,
    )
    assert result.exit_code == 0, result.stderr
    assert "add the variable EG_CLI_TOKEN to the egressgate container" in result.stderr
    _no_secret(result.stdout, result.stderr)


def test_k8s_render_without_interception_is_unchanged(tmp_path: Path) -> None:
    config = tmp_path / "egress.yaml"
    config.write_text("listen: 0.0.0.0:3128\nallow: [api.github.com]\n")
    code, docs, _, stderr = _render(config)
    assert code == 0, stderr
    pod = _find(docs, "Deployment", "egressgate")["spec"]["template"]["spec"]
    assert "fsGroup" not in pod["securityContext"]
    assert {"name": "config", "configMap": {"name": "egressgate-config"}} in pod["volumes"]
    assert not [d for d in docs if d["metadata"]["name"] == "egressgate-ca"]
    assert "SSL_CERT_FILE" not in _find(docs, "ConfigMap", "egressgate-client-env")["data"]


def test_k8s_render_refuses_a_key_that_is_not_next_to_the_config(
    ca_dir: Path, tmp_path: Path
) -> None:
    elsewhere = tmp_path / "keys"
    elsewhere.mkdir()
    (elsewhere / "ca.key").write_bytes((ca_dir / "ca.key").read_bytes())
    (elsewhere / "ca.key").chmod(0o600)
    conf = tmp_path / "conf"
    conf.mkdir()
    (conf / "ca.crt").write_bytes((ca_dir / "ca.crt").read_bytes())
    config = conf / "egress.yaml"
    config.write_text(
        "listen: 0.0.0.0:3128\n"
        f"tls_intercept: {{ca_cert_file: ca.crt, ca_key_file: {elsewhere / 'ca.key'}}}\n"
        "allow: [api.github.com]\n"
        "intercept: [{host: api.github.com, rules: [{}]}]\n"
    )
    code, _, stdout, stderr = _render(config)
    assert code == 2
    assert stdout == ""
    assert f"tls_intercept.ca_key_file {elsewhere / 'ca.key'} is not next to the config" in stderr


def test_k8s_render_transparent_mode_says_interception_is_not_rendered_there(
    ca_dir: Path, tmp_path: Path
) -> None:
    config = tmp_path / "egress.yaml"
    text = (ca_dir / "egress.yaml").read_text().replace("listen: 0.0.0.0:3128", "")
    text = text.replace("ca.crt", str(ca_dir / "ca.crt")).replace("ca.key", str(ca_dir / "ca.key"))
    text = text.replace("file:gh-token", f"file:{ca_dir / 'gh-token'}")
    config.write_text(text + "transparent_listen: 127.0.0.1:3130\n")
    code, _, _, stderr = _render(config, "--mode", "transparent")
    assert code == 2
    assert "tls_intercept is not rendered for --mode transparent yet" in stderr


def test_k8s_render_dns_mode_carries_interception_too(ca_dir: Path, tmp_path: Path) -> None:
    conf = tmp_path / "conf"
    conf.mkdir()
    for name in ("ca.crt", "ca.key", "gh-token"):
        (conf / name).write_bytes((ca_dir / name).read_bytes())
    (conf / "ca.key").chmod(0o600)
    (conf / "egress.yaml").write_text(
        (ca_dir / "egress.yaml").read_text()
        + "transparent_listen: 0.0.0.0:3130\ndns_listen: 0.0.0.0:5353\n"
        + "dns_answer: proxy\ndns_proxy_addresses: [10.96.100.53]\n"
    )
    code, docs, stdout, stderr = _render(conf / "egress.yaml", "--mode", "dns")
    assert code == 0, stderr
    for doc in docs:
        kubernetes_validate.validate(doc, K8S_VERSION, strict=True)
    _no_secret(stdout, stderr)
    pod = _find(docs, "Deployment", "egressgate")["spec"]["template"]["spec"]
    (volume,) = [v for v in pod["volumes"] if v["name"] == "config"]
    assert volume["projected"]["sources"][1]["secret"]["name"] == "egressgate-intercept"
    assert _find(docs, "ConfigMap", "egressgate-ca")["data"]["ca.crt"]
