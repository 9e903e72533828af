"""`egressgate check` (issue 4): validate a config file, and `--live` probe a running proxy.

The CLI runs as a real subprocess; `--live` probes a real proxy process: healthy, dead (nothing
listening), hung (SIGSTOPped: the kernel still accepts the TCP connection, nobody answers),
draining, and without an admin listener (the proxy port's own GET /healthz).
"""

from __future__ import annotations

import os
import signal
from collections.abc import Iterator
from contextlib import contextmanager
from pathlib import Path
from typing import Any

import pytest
import yaml

from tests.integration.helpers_ops import (
    CliResult,
    EchoTunnel,
    closed_port,
    loopback_policy,
    readyz,
    run_cli,
    wait_until,
)
from tests.support.origin import RawOriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess
from tests.support.tlsca import HarnessCA

GOOD = """\
listen: 127.0.0.1:3128
admin_listen: null
policies:
  team-a:
    allow: [api.example.com, .example.org]
  team-b:
    allow: [pypi.org]
    mode: report
default_policy: team-a
clients:
  - source: 10.1.0.0/16
    policy: team-b
"""

BAD = """\
listen: 127.0.0.1:3128
allwo: [api.example.com]
connect_ports:
  - 99999
mode: audit
"""


def check(*args: str, timeout: float = 30.0) -> CliResult:
    return run_cli(["check", *args], timeout=timeout)


def live_config(proxy: ProxyProcess) -> Path:
    """The proxy's own config with the ports it actually bound (it was started on port 0)."""
    config: dict[str, Any] = dict(proxy.config)
    host, port = proxy.proxy_address
    config["listen"] = f"{host}:{port}"
    admin = proxy.admin_address
    config["admin_listen"] = f"{admin[0]}:{admin[1]}" if admin is not None else None
    path = proxy.workdir / "check.yaml"
    path.write_text(yaml.safe_dump(config, sort_keys=False), encoding="utf-8")
    return path


@contextmanager
def stopped(proxy: ProxyProcess) -> Iterator[None]:
    """SIGSTOP the proxy for the block; SIGCONT it afterwards whatever happens."""
    os.kill(proxy.pid, signal.SIGSTOP)
    try:
        yield
    finally:
        os.kill(proxy.pid, signal.SIGCONT)


# ---------------------------------------------------------------------------------------------
# Validation
# ---------------------------------------------------------------------------------------------


def test_check_valid_config_exits_0_and_summarises_it(tmp_path: Path) -> None:
    path = tmp_path / "good.yaml"
    path.write_text(GOOD, encoding="utf-8")
    result = check("--config", str(path))
    assert result.exit_code == 0, result
    assert result.stdout.strip() == f"{path}: valid (3 policies, 3 allow entries)"
    assert result.stderr == ""


def test_check_invalid_config_exits_1_listing_every_error_with_its_line(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text(BAD, encoding="utf-8")
    result = check("--config", str(path))
    assert result.exit_code == 1, result
    assert result.stdout == ""
    lines = result.stderr_lines
    assert lines[-1] == "egressgate check: 3 error(s)"
    errors = lines[:-1]
    assert len(errors) == 3, lines
    assert errors[0].startswith(f"{path}:2:1: unknown key 'allwo'")
    assert errors[1].startswith(f"{path}:4:5: ")
    assert "99999" in errors[1]
    assert errors[2].startswith(f"{path}:5:7: mode must be one of: enforce, report")


def test_check_yaml_syntax_error_exits_1_with_the_line(tmp_path: Path) -> None:
    path = tmp_path / "broken.yaml"
    path.write_text("listen: 127.0.0.1:3128\nallow: [a.test]]\n", encoding="utf-8")
    result = check("--config", str(path))
    assert result.exit_code == 1, result
    assert result.stderr_lines[0].startswith(f"{path}:2:")
    assert "YAML syntax" in result.stderr_lines[0]


def test_check_missing_file_exits_1_and_says_so(tmp_path: Path) -> None:
    path = tmp_path / "absent.yaml"
    result = check("--config", str(path))
    assert result.exit_code == 1, result
    assert result.stderr_lines[0].startswith(f"{path}: cannot read")


def test_check_reads_the_users_file_the_way_run_does(tmp_path: Path) -> None:
    users = tmp_path / "users.txt"
    users.write_text("# ops\nalice:s3cret\nbob-without-a-password\n", encoding="utf-8")
    path = tmp_path / "auth.yaml"
    path.write_text(
        "listen: 127.0.0.1:3128\nadmin_listen: null\nauth: {users_file: users.txt}\n"
        "policies: {p: {allow: [a.test]}}\nclients: [{user: alice, policy: p}]\n",
        encoding="utf-8",
    )
    result = check("--config", str(path))
    assert result.exit_code == 1, result
    assert result.stderr_lines == [
        f"{users}:3: expected user:password",
        "egressgate check: 1 error(s)",
    ]
    assert "s3cret" not in result.stderr + result.stdout
    # `run` refuses the same file, and says the same.
    run = run_cli(["run", "--config", str(path)], timeout=30)
    assert run.exit_code == 2
    assert f"{users}:3: expected user:password" in run.stderr

    users.write_text("alice:s3cret\n", encoding="utf-8")
    assert check("--config", str(path)).exit_code == 0


def test_check_refuses_tls_listener_material_that_does_not_load(
    tmp_path: Path, test_ca: HarnessCA
) -> None:
    cert = test_ca.server_cert("127.0.0.1")
    other = test_ca.server_cert("127.0.0.1")
    garbage = tmp_path / "garbage.pem"
    garbage.write_text("not a certificate\n", encoding="utf-8")

    def config(cert_file: Path, key_file: Path, ca: Path) -> Path:
        path = tmp_path / "tls.yaml"
        path.write_text(
            "listen: 127.0.0.1:3128\nadmin_listen: null\n"
            f"tls_listen: {{listen: '127.0.0.1:3129', cert_file: '{cert_file}', "
            f"key_file: '{key_file}', client_ca_file: '{ca}'}}\n",
            encoding="utf-8",
        )
        return path

    good = check("--config", str(config(cert.chain_path, cert.key_path, test_ca.ca_pem_path)))
    assert good.exit_code == 0, good
    for cert_file, key_file, ca, what in (
        (garbage, cert.key_path, test_ca.ca_pem_path, "cert_file"),
        (cert.chain_path, other.key_path, test_ca.ca_pem_path, "cert_file"),  # wrong key
        (cert.chain_path, cert.key_path, garbage, "client_ca_file"),
    ):
        path = config(cert_file, key_file, ca)
        result = check("--config", str(path))
        assert result.exit_code == 1, result
        (line, summary) = result.stderr_lines
        # Located at the offending key (line 3 holds the whole flow mapping).
        assert line.startswith(f"{path}:3:"), line
        assert f"cannot load {what}" in line, line
        assert summary == "egressgate check: 1 error(s)"


# ---------------------------------------------------------------------------------------------
# --live
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("admin", [True, False], ids=["admin-readyz", "proxy-port-healthz"])
def test_check_live_against_a_running_proxy_exits_0(
    proxy_factory: ProxyFactory, admin: bool
) -> None:
    keys: dict[str, Any] = {} if admin else {"admin_listen": None}
    proxy = proxy_factory(**keys)
    assert (proxy.admin_address is not None) == admin
    result = check("--live", "--config", str(live_config(proxy)))
    assert result.exit_code == 0, result
    assert result.stdout.strip() == "egressgate check: healthy"
    assert result.stderr == ""
    if admin:
        only_proxy = check("--live", "--proxy-only", "--config", str(live_config(proxy)))
        assert only_proxy.exit_code == 0, only_proxy
    # A probe is not traffic: nothing in the access log.
    assert proxy.access_records() == []


def test_check_live_with_nothing_listening_exits_1_with_one_clear_line(tmp_path: Path) -> None:
    port, admin_port = closed_port(), closed_port()
    path = tmp_path / "dead.yaml"
    path.write_text(
        f"listen: 127.0.0.1:{port}\nadmin_listen: 127.0.0.1:{admin_port}\n", encoding="utf-8"
    )
    result = check("--live", "--timeout", "2", "--config", str(path))
    assert result.exit_code == 1, result
    assert result.stdout == ""
    assert result.stderr_lines == [
        f"egressgate check: UNHEALTHY: admin listener 127.0.0.1:{admin_port} refused the "
        "connection (not running?)"
    ]


@pytest.mark.parametrize("admin", [True, False], ids=["admin-readyz", "proxy-port-healthz"])
def test_check_live_against_a_hung_proxy_fails_within_its_timeout(
    proxy_factory: ProxyFactory, admin: bool
) -> None:
    keys: dict[str, Any] = {} if admin else {"admin_listen": None}
    proxy = proxy_factory(**keys)
    path = live_config(proxy)
    with stopped(proxy):
        result = check("--live", "--timeout", "1", "--config", str(path), timeout=20.0)
    assert result.exit_code == 1, result
    # One probe, bounded by --timeout 1 (plus the interpreter's start-up).
    assert result.seconds < 5.0, f"check took {result.seconds:.1f}s with --timeout 1"
    (line,) = result.stderr_lines
    which = "admin" if admin else "proxy"
    assert line.startswith(f"egressgate check: UNHEALTHY: {which} listener 127.0.0.1:")
    assert "did not answer within 1s (hung?)" in line
    # SIGCONT: it is alive and well again.
    assert check("--live", "--config", str(path)).exit_code == 0


def test_check_live_reports_a_draining_proxy_as_unhealthy(
    proxy_factory: ProxyFactory, raw_origin_factory: RawOriginFactory
) -> None:
    echo = raw_origin_factory("echo", mode="echo")
    proxy = proxy_factory(
        loopback_policy(["127.0.0.1"], connect_ports=[echo.port]),
        limits={"drain_timeout_s": 20.0},
    )
    path = live_config(proxy)
    with EchoTunnel(proxy.proxy_address, echo.address) as tunnel:  # keeps the proxy draining
        assert tunnel.status == 200
        proxy.signal(signal.SIGTERM)
        wait_until(lambda: readyz(proxy)[0] == 503, 2.0, "/readyz 503")
        result = check("--live", "--config", str(path))
        assert result.exit_code == 1, result
        (line,) = result.stderr_lines
        assert line.startswith("egressgate check: UNHEALTHY: admin listener 127.0.0.1:")
        assert "answered 503 to /readyz" in line
    assert proxy.wait_exit(10.0) == 0
