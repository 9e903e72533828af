"""SOCKS5 with the tools the listener exists for: `git clone` over HTTPS with
`ALL_PROXY=socks5h://…`, and OpenSSH through `ProxyCommand nc -X 5`.

Everything runs on loopback: a git repository served over TLS by a small static file server
(git's "dumb" HTTP protocol) on 127.0.0.5, and an `sshd` the test starts on 127.0.0.4 with a
host key and a client key made in the test's tmp dir. Names (git.test, ssh.test) resolve through
the test DNS server at the proxy. Each tool missing from the machine skips its test with the
package to install (scripts/test.sh installs them: git, openssh-server, netcat-openbsd).
"""

from __future__ import annotations

import functools
import http.server
import os
import pwd
import shutil
import socket
import subprocess
import sys
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from tests.integration.helpers_core import free_port, start_proxy, wait_record
from tests.support.dns import DnsServer
from tests.support.proxy import ProxyFactory, ProxyProcess, clean_env
from tests.support.tlsca import HarnessCA

GIT_HOST = "127.0.0.5"
SSH_HOST = "127.0.0.4"
SSHD = "/usr/sbin/sshd"


def need(tool: str, package: str) -> str:
    path = shutil.which(tool) or (tool if os.path.exists(tool) else None)
    if path is None:
        pytest.skip(
            f"{tool} is not installed (Debian package {package}; scripts/test.sh installs it)"
        )
    return path


# ---------------------------------------------------------------------------------------------
# git clone over HTTPS through SOCKS5
# ---------------------------------------------------------------------------------------------


class _QuietHandler(http.server.SimpleHTTPRequestHandler):
    def log_message(self, format: str, *args: object) -> None:
        pass


class TlsFileServer:
    """A static HTTPS file server (threads) for git's dumb HTTP protocol."""

    def __init__(self, root: Path, ca: HarnessCA, host: str, names: list[str]) -> None:
        handler = functools.partial(_QuietHandler, directory=str(root))
        self.httpd = http.server.ThreadingHTTPServer((host, 0), handler)
        context = ca.server_context(*names)
        self.httpd.socket = context.wrap_socket(self.httpd.socket, server_side=True)
        self.port = self.httpd.server_address[1]
        self.thread = threading.Thread(target=self.httpd.serve_forever, daemon=True)
        self.thread.start()

    def close(self) -> None:
        self.httpd.shutdown()
        self.httpd.server_close()
        self.thread.join(5)


def run(
    argv: list[str], env: dict[str, str], cwd: Path | None = None, timeout: float = 60
) -> subprocess.CompletedProcess[str]:
    return subprocess.run(
        argv, env=env, cwd=cwd, capture_output=True, text=True, timeout=timeout, check=False
    )


@pytest.fixture
def git_server(
    tmp_path: Path, test_ca: HarnessCA, dns_server: DnsServer
) -> Iterator[TlsFileServer]:
    git = need("git", "git")
    env = clean_env({"HOME": str(tmp_path), "GIT_CONFIG_NOSYSTEM": "1"})
    work = tmp_path / "work"
    work.mkdir()
    for argv in (
        [git, "init", "-q", "-b", "main"],
        [
            git,
            "-c",
            "user.name=t",
            "-c",
            "user.email=t@test",
            "commit",
            "-q",
            "--allow-empty",
            "-m",
            "first",
        ],
    ):
        done = run(argv, env, cwd=work)
        assert done.returncode == 0, done.stderr
    (work / "README").write_text("through socks\n")
    for argv in (
        [git, "add", "README"],
        [git, "-c", "user.name=t", "-c", "user.email=t@test", "commit", "-q", "-m", "readme"],
    ):
        assert run(argv, env, cwd=work).returncode == 0
    served = tmp_path / "served"
    served.mkdir()
    done = run([git, "clone", "-q", "--bare", str(work), str(served / "repo.git")], env)
    assert done.returncode == 0, done.stderr
    done = run([git, "update-server-info"], env, cwd=served / "repo.git")
    assert done.returncode == 0, done.stderr
    server = TlsFileServer(served, test_ca, GIT_HOST, ["git.test"])
    dns_server.records["git.test"] = [GIT_HOST]
    try:
        yield server
    finally:
        server.close()


def git_clone(
    proxy_url: str, server: TlsFileServer, ca: HarnessCA, tmp: Path, into: str
) -> subprocess.CompletedProcess[str]:
    env = clean_env(
        {
            "HOME": str(tmp),
            "GIT_CONFIG_NOSYSTEM": "1",
            "GIT_SSL_CAINFO": str(ca.ca_pem_path),
            "GIT_TERMINAL_PROMPT": "0",
            "ALL_PROXY": proxy_url,
        }
    )
    url = f"https://git.test:{server.port}/repo.git"
    return run(["git", "clone", "-q", url, str(tmp / into)], env)


def test_git_clone_over_https_with_all_proxy_socks5h(
    git_server: TlsFileServer, proxy_factory: ProxyFactory, test_ca: HarnessCA, tmp_path: Path
) -> None:
    proxy = start_proxy(
        proxy_factory, allow=["git.test"], ports=[git_server.port], socks_listen="127.0.0.1:0"
    )
    done = git_clone(proxy.socks_url, git_server, test_ca, tmp_path, "clone")
    assert done.returncode == 0, done.stderr
    assert (tmp_path / "clone" / "README").read_text() == "through socks\n"
    records = proxy.wait_for_records(1, predicate=lambda r: r["kind"] == "socks")
    assert all(r["host"] == "git.test" and r["decision"] == "allow" for r in records), records
    assert all(r["sni"] == "git.test" for r in records)


def test_git_clone_of_a_name_not_on_the_allowlist_fails(
    git_server: TlsFileServer, proxy_factory: ProxyFactory, test_ca: HarnessCA, tmp_path: Path
) -> None:
    proxy = start_proxy(
        proxy_factory, allow=["other.test"], ports=[git_server.port], socks_listen="127.0.0.1:0"
    )
    done = git_clone(proxy.socks_url, git_server, test_ca, tmp_path, "clone")
    assert done.returncode != 0
    assert not (tmp_path / "clone" / "README").exists()
    wait_record(proxy, kind="socks", host="git.test", reason="host-not-allowed")


# ---------------------------------------------------------------------------------------------
# SSH through SOCKS5: ProxyCommand nc -X 5
# ---------------------------------------------------------------------------------------------


class Sshd:
    """An OpenSSH server on SSH_HOST, key authentication only, for the user running the tests."""

    def __init__(self, tmp: Path) -> None:
        sshd = need(SSHD, "openssh-server")
        keygen = need("ssh-keygen", "openssh-client")
        self.dir = tmp / "sshd"
        self.dir.mkdir()
        self.host_key = self.dir / "host_ed25519"
        self.client_key = self.dir / "client_ed25519"
        for key in (self.host_key, self.client_key):
            done = run([keygen, "-q", "-t", "ed25519", "-N", "", "-f", str(key)], clean_env())
            assert done.returncode == 0, done.stderr
        authorized = self.dir / "authorized_keys"
        authorized.write_bytes(self.client_key.with_suffix(".pub").read_bytes())
        authorized.chmod(0o600)
        Path("/run/sshd").mkdir(exist_ok=True)  # privilege separation directory
        self.port = free_port(SSH_HOST)
        config = self.dir / "sshd_config"
        config.write_text(
            "\n".join(
                [
                    f"ListenAddress {SSH_HOST}:{self.port}",
                    f"HostKey {self.host_key}",
                    f"PidFile {self.dir / 'sshd.pid'}",
                    f"AuthorizedKeysFile {authorized}",
                    "PasswordAuthentication no",
                    "KbdInteractiveAuthentication no",
                    "PermitRootLogin prohibit-password",
                    "UsePAM no",
                    "StrictModes no",
                    "",
                ]
            )
        )
        self.proc = subprocess.Popen(
            [sshd, "-D", "-e", "-f", str(config)],
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            start_new_session=True,
        )
        self._wait_listening()

    def _wait_listening(self) -> None:
        deadline = time.monotonic() + 10
        while time.monotonic() < deadline:
            if self.proc.poll() is not None:
                raise AssertionError(
                    f"sshd exited: {self.proc.stderr.read() if self.proc.stderr else ''}"
                )
            try:
                with socket.create_connection((SSH_HOST, self.port), timeout=1):
                    return
            except OSError:
                time.sleep(0.05)
        raise AssertionError("sshd did not listen within 10 s")

    def close(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(5)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(5)
        if self.proc.stderr is not None:
            self.proc.stderr.close()


@pytest.fixture
def sshd(tmp_path: Path, dns_server: DnsServer) -> Iterator[Sshd]:
    server = Sshd(tmp_path)
    dns_server.records["ssh.test"] = [SSH_HOST]
    try:
        yield server
    finally:
        server.close()


def ssh_via_socks(proxy: ProxyProcess, server: Sshd, user: str) -> subprocess.CompletedProcess[str]:
    nc = need("nc", "netcat-openbsd")
    ssh = need("ssh", "openssh-client")
    host, port = proxy.socks_address
    argv = [
        ssh,
        "-F", "/dev/null",
        "-o", f"ProxyCommand={nc} -X 5 -x {host}:{port} %h %p",
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-o", "ConnectTimeout=20",
        "-i", str(server.client_key),
        "-p", str(server.port),
        f"{user}@ssh.test",
        "echo", "hello-over-socks",
    ]  # fmt: skip
    return run(argv, clean_env({"HOME": str(server.dir)}), timeout=60)


def test_ssh_through_socks5_with_nc_proxycommand(sshd: Sshd, proxy_factory: ProxyFactory) -> None:
    proxy = start_proxy(
        proxy_factory, allow=["ssh.test"], ports=[sshd.port], socks_listen="127.0.0.1:0"
    )
    user = (
        os.environ.get("USER")
        or subprocess.run(["id", "-un"], capture_output=True, text=True, check=True).stdout.strip()
    )
    done = ssh_via_socks(proxy, sshd, user)
    assert done.returncode == 0, done.stderr
    assert done.stdout.strip() == "hello-over-socks"
    record = wait_record(proxy, kind="socks", host="ssh.test")
    assert record["decision"] == "allow"
    assert record["address"] == SSH_HOST
    assert record["sni"] is None  # SSH is not TLS: tunnels_without_sni (allow) let it through
    assert record["bytes_up"] > 0
    assert record["bytes_down"] > 0


def test_ssh_to_a_port_the_policy_does_not_allow_is_refused(
    sshd: Sshd, proxy_factory: ProxyFactory
) -> None:
    proxy = start_proxy(
        proxy_factory,
        allow=["ssh.test"],
        ports=[443],  # ssh.test is allowed, but only on 443
        socks_listen="127.0.0.1:0",
    )
    done = ssh_via_socks(proxy, sshd, "root")
    assert done.returncode != 0
    record = wait_record(proxy, kind="socks", host="ssh.test")
    assert record["reason"] == "port-not-allowed"
    assert record["port"] == sshd.port


def test_ssh_to_a_name_not_allowed_is_refused(sshd: Sshd, proxy_factory: ProxyFactory) -> None:
    proxy = start_proxy(
        proxy_factory, allow=["git.test"], ports=[sshd.port], socks_listen="127.0.0.1:0"
    )
    done = ssh_via_socks(proxy, sshd, "root")
    assert done.returncode != 0
    wait_record(proxy, kind="socks", host="ssh.test", reason="host-not-allowed")


def test_the_ssh_config_from_egressgate_env_reaches_sshd(
    sshd: Sshd, proxy_factory: ProxyFactory
) -> None:
    """`egressgate env --socks … --format ssh-config`, pasted as is, is a working ssh config."""
    proxy = start_proxy(
        proxy_factory, allow=["ssh.test"], ports=[sshd.port], socks_listen="127.0.0.1:0"
    )
    need("nc", "netcat-openbsd")
    done = run(
        [
            sys.executable,
            "-m",
            "egressgate",
            "env",
            "--socks",
            proxy.socks_url,
            "--format",
            "ssh-config",
        ],
        clean_env(),
    )
    assert done.returncode == 0, done.stderr
    config = sshd.dir / "ssh_config"
    config.write_text(done.stdout)
    argv = [
        need("ssh", "openssh-client"),
        "-F", str(config),
        "-o", "BatchMode=yes",
        "-o", "StrictHostKeyChecking=no",
        "-o", "UserKnownHostsFile=/dev/null",
        "-i", str(sshd.client_key),
        "-p", str(sshd.port),
        f"{current_user()}@ssh.test",
        "echo", "configured",
    ]  # fmt: skip
    result = run(argv, clean_env({"HOME": str(sshd.dir)}))
    assert result.returncode == 0, result.stderr
    assert result.stdout.strip() == "configured"
    wait_record(proxy, kind="socks", host="ssh.test", decision="allow")


def current_user() -> str:
    return pwd.getpwuid(os.getuid()).pw_name
