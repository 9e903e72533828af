"""Network-namespace plumbing for the e2e recipe test: namespaces, veth wiring, nftables, and
processes started inside namespaces — all created by the test and all removed by `Lab.close()`.

    with Lab() as lab:                                  # unique name prefix per run
        app, proxy = lab.namespace("app"), lab.namespace("proxy")
        lab.link(app, "eth0", "198.18.1.2/24", proxy, "app0", "198.18.1.1/24")
        app.route("198.18.2.0/24", via="198.18.1.2")
        app.nft(egress_ruleset(...))                    # the NetworkPolicy, as nftables
        result = app.run(["curl", ...], env=...)        # a client inside the namespace
        service = lab.spawn(internet, [...])            # a long-running process, killed at close

Nothing here routes outside the namespaces: there is no default route and no NAT; links exist
only between the namespaces a Lab created. The test process itself never opens a socket into a
namespace (its loopback guard would refuse): every packet is sent by a subprocess started with
`ip netns exec`. Processes are started in their own session and killed by process group; any
process still inside a Lab namespace at close (they can only be ours) is killed too.
"""

from __future__ import annotations

import contextlib
import functools
import json
import os
import secrets
import shutil
import signal
import subprocess
import sys
import tempfile
import threading
import time
from collections.abc import Callable, Mapping, Sequence
from pathlib import Path
from typing import IO, Any

from tests.support.proxy import REPO_ROOT, clean_env

NETNS_ETC = Path("/etc/netns")  # `ip netns exec NS` bind-mounts /etc/netns/NS/* over /etc/*
COMMAND_TIMEOUT = 20.0


class NetnsError(RuntimeError):
    """An `ip`/`nft` command failed (the message has its stderr)."""


def _check(argv: Sequence[str], *, stdin: str | None = None) -> str:
    """Run a setup command (not inside a namespace); NetnsError with its stderr on failure."""
    result = subprocess.run(
        list(argv),
        input=stdin,
        capture_output=True,
        text=True,
        timeout=COMMAND_TIMEOUT,
        check=False,
    )
    if result.returncode != 0:
        raise NetnsError(f"{' '.join(argv)} → exit {result.returncode}: {result.stderr.strip()}")
    return result.stdout


@functools.cache
def unavailable() -> str | None:
    """Why the e2e tests cannot run here (None if they can). Probed once per session: creates a
    namespace with a veth pair and an nftables table, and removes it."""
    if os.geteuid() != 0:
        return "e2e tests need root (network namespaces, veth, nftables)"
    for tool in ("ip", "nft", "curl"):
        if shutil.which(tool) is None:
            return f"e2e tests need `{tool}` on PATH"
    name = f"egtprobe{os.getpid()}{secrets.token_hex(2)}"
    try:
        _check(["ip", "netns", "add", name])
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"cannot create a network namespace: {exc}"
    try:
        _check(["ip", "-n", name, "link", "add", "p0", "type", "veth", "peer", "name", "p1"])
        _check(["ip", "netns", "exec", name, "nft", "-f", "-"], stdin="table inet probe {}\n")
    except (NetnsError, OSError, subprocess.SubprocessError) as exc:
        return f"network namespaces work but veth/nftables do not: {exc}"
    finally:
        with contextlib.suppress(NetnsError, OSError, subprocess.SubprocessError):
            _check(["ip", "netns", "del", name])
    return None


def egress_ruleset(
    table: str, proxy: tuple[str, int], dns: str, *, allow_loopback: bool = True
) -> str:
    """The app's egress rule as the rendered NetworkPolicy expresses it, in nftables: everything
    dropped except the proxy's IP:port and DNS (UDP and TCP 53) to the cluster's DNS server.
    Replaces the table atomically (create-if-missing, delete, define) when applied again."""
    proxy_ip, proxy_port = proxy
    lines = [
        f"table inet {table}",
        f"delete table inet {table}",
        f"table inet {table} {{",
        "  chain output {",
        "    type filter hook output priority filter; policy drop;",
        '    oifname "lo" accept' if allow_loopback else "",
        "    ct state established,related accept",
        f"    ip daddr {proxy_ip} tcp dport {proxy_port} accept",
        f"    ip daddr {dns} udp dport 53 accept",
        f"    ip daddr {dns} tcp dport 53 accept",
        "  }",
        "}",
    ]
    return "\n".join(line for line in lines if line) + "\n"


class Namespace:
    """One network namespace the Lab created."""

    def __init__(self, lab: Lab, role: str, name: str) -> None:
        self.lab = lab
        self.role = role
        self.name = name

    def __repr__(self) -> str:
        return f"Namespace({self.role}: {self.name})"

    def exec_prefix(self) -> list[str]:
        return ["ip", "netns", "exec", self.name]

    def ip(self, *args: str) -> str:
        return _check(["ip", "-n", self.name, *args])

    def sysctl(self, key: str, value: str) -> None:
        _check([*self.exec_prefix(), "sysctl", "-qw", f"{key}={value}"])

    def route(self, prefix: str, *, via: str) -> None:
        self.ip("route", "add", prefix, "via", via)

    def nft(self, ruleset: str) -> None:
        _check([*self.exec_prefix(), "nft", "-f", "-"], stdin=ruleset)

    def nft_delete_table(self, table: str) -> None:
        _check([*self.exec_prefix(), "nft", "delete", "table", "inet", table])

    def write_etc(self, filename: str, text: str) -> Path:
        """A file `ip netns exec` shows as /etc/FILENAME inside this namespace (resolv.conf)."""
        directory = NETNS_ETC / self.name
        directory.mkdir(parents=True, exist_ok=True)
        path = directory / filename
        path.write_text(text)
        return path

    def run(
        self,
        argv: Sequence[str],
        *,
        env: Mapping[str, str] | None = None,
        timeout: float = 30.0,
        stdin: str | None = None,
    ) -> subprocess.CompletedProcess[str]:
        """Run a client inside the namespace to completion (bounded); never raises on exit code.
        Its own session, so that a timeout kills everything it started."""
        proc = subprocess.Popen(
            [*self.exec_prefix(), *argv],
            cwd=REPO_ROOT,
            env=dict(env) if env is not None else None,
            stdin=subprocess.PIPE if stdin is not None else subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        try:
            out, err = proc.communicate(stdin, timeout=timeout)
        except subprocess.TimeoutExpired:
            _kill_group(proc)
            out, err = proc.communicate()
            raise NetnsError(
                f"{argv} in {self.name} did not finish in {timeout}s\n{out}\n{err}"
            ) from None
        return subprocess.CompletedProcess(proc.args, proc.returncode, out, err)


def _kill_group(proc: subprocess.Popen[Any]) -> None:
    if proc.poll() is None:
        # Not reaped yet, so the pid (= its process group id) cannot have been reused.
        with contextlib.suppress(ProcessLookupError, PermissionError):
            os.killpg(proc.pid, signal.SIGKILL)
    with contextlib.suppress(subprocess.TimeoutExpired):
        proc.wait(10)


class Service:
    """A long-running process in a namespace whose stdout is JSON lines (kept in `events`)."""

    def __init__(self, namespace: Namespace, argv: Sequence[str], env: Mapping[str, str]) -> None:
        self.namespace = namespace
        self.proc = subprocess.Popen(
            [*namespace.exec_prefix(), *argv],
            cwd=REPO_ROOT,
            env=dict(env),
            stdin=subprocess.DEVNULL,
            stdout=subprocess.PIPE,
            stderr=subprocess.PIPE,
            text=True,
            start_new_session=True,
        )
        self._cond = threading.Condition()
        self.events: list[dict[str, Any]] = []
        self.stderr: list[str] = []
        assert self.proc.stdout is not None
        assert self.proc.stderr is not None
        self._threads = [
            threading.Thread(target=self._read, args=(self.proc.stdout, True), daemon=True),
            threading.Thread(target=self._read, args=(self.proc.stderr, False), daemon=True),
        ]
        for thread in self._threads:
            thread.start()

    def _read(self, stream: IO[str], parse: bool) -> None:
        with contextlib.suppress(OSError, ValueError):
            for line in stream:
                with self._cond:
                    if parse and line.startswith("{"):
                        with contextlib.suppress(ValueError):
                            self.events.append(json.loads(line))
                    else:
                        self.stderr.append(line.rstrip("\n"))
                    self._cond.notify_all()

    def wait_for(
        self, predicate: Callable[[dict[str, Any]], bool], timeout: float = 15.0
    ) -> dict[str, Any]:
        """The first event matching `predicate` (bounded wait; the process must stay alive)."""
        deadline = time.monotonic() + timeout
        with self._cond:
            while True:
                for event in self.events:
                    if predicate(event):
                        return event
                if self.proc.poll() is not None or time.monotonic() >= deadline:
                    raise NetnsError(
                        f"{self.proc.args} did not report the expected event "
                        f"(exit {self.proc.poll()}):\n" + "\n".join(self.stderr[-40:])
                    )
                self._cond.wait(0.1)

    def snapshot(self) -> list[dict[str, Any]]:
        with self._cond:
            return list(self.events)

    def close(self) -> None:
        _kill_group(self.proc)
        for thread in self._threads:
            thread.join(5)
        for stream in (self.proc.stdout, self.proc.stderr):
            if stream is not None:
                with contextlib.suppress(OSError):
                    stream.close()


class Lab:
    """The namespaces, links and processes of one test run; `close()` removes all of them."""

    def __init__(self, prefix: str | None = None) -> None:
        self.prefix = prefix or f"egt{os.getpid() % 100000}{secrets.token_hex(2)}"
        self.namespaces: list[Namespace] = []
        self.services: list[Service] = []
        self._cleanups: list[Callable[[], None]] = []

    def __enter__(self) -> Lab:
        return self

    def __exit__(self, *exc: object) -> None:
        self.close()

    def namespace(self, role: str) -> Namespace:
        """Create the namespace PREFIX-ROLE with loopback up."""
        ns = Namespace(self, role, f"{self.prefix}-{role}")
        _check(["ip", "netns", "add", ns.name])
        self.namespaces.append(ns)  # registered before anything else can fail
        ns.ip("link", "set", "lo", "up")
        return ns

    def link(
        self, a: Namespace, a_dev: str, a_addr: str, b: Namespace, b_dev: str, b_addr: str
    ) -> None:
        """A veth pair created directly inside `a` with its peer in `b` (so nothing ever appears
        in the host's namespace), addressed and up. Deleting a namespace deletes its veths."""
        a.ip("link", "add", a_dev, "type", "veth", "peer", "name", b_dev, "netns", b.name)
        for ns, dev, addr in ((a, a_dev, a_addr), (b, b_dev, b_addr)):
            ns.ip("addr", "add", addr, "dev", dev)
            ns.ip("link", "set", dev, "up")

    def spawn(self, namespace: Namespace, argv: Sequence[str], env: Mapping[str, str]) -> Service:
        service = Service(namespace, argv, env)
        self.services.append(service)
        return service

    def on_close(self, cleanup: Callable[[], None]) -> None:
        """Run `cleanup` at close, before the namespaces are deleted (e.g. stop a proxy)."""
        self._cleanups.append(cleanup)

    def close(self) -> None:
        """Kill every process, delete every namespace and its /etc/netns directory. Idempotent,
        and keeps going past errors so that one failure does not leak the rest."""
        errors: list[str] = []
        for cleanup in reversed(self._cleanups):
            try:
                cleanup()
            except Exception as exc:
                errors.append(f"cleanup {cleanup!r}: {exc}")
        self._cleanups.clear()
        for service in reversed(self.services):
            service.close()
        self.services.clear()
        for ns in reversed(self.namespaces):
            errors += _remove_namespace(ns)
        self.namespaces.clear()
        if errors:
            raise NetnsError("lab cleanup: " + "; ".join(errors))


def start_internet(lab: Lab, ns: Namespace, spec: Mapping[str, Any], workdir: Path) -> Service:
    """tests/e2e/internet.py in `ns` with this SPEC (written to workdir), once it is ready."""
    path = workdir / "internet.json"
    path.write_text(json.dumps(spec))
    argv = [sys.executable, "-m", "tests.e2e.internet", str(path)]
    service = lab.spawn(ns, argv, clean_env({"PYTHONUNBUFFERED": "1"}))
    service.wait_for(lambda e: e.get("event") == "ready")
    return service


def shared_workdir(lab: Lab, prefix: str) -> Path:
    """A directory another UID (the sidecar's `nobody`) can read (config) and write (access log)
    in, removed at close."""
    path = Path(tempfile.mkdtemp(prefix=prefix))
    path.chmod(0o755)
    lab.on_close(lambda: shutil.rmtree(path, ignore_errors=True))
    return path


def egressgate_as(ns: Namespace, uid: int) -> list[str]:
    """The command that runs `python -m egressgate` in `ns` as `uid`, as in a pod. Only for the
    tests: the interpreter and its packages may live under a 0700 home (pyenv under /root), so
    the UID keeps the one capability to read them. It changes nothing on the network path (the
    redirect rules match on the UID)."""
    setpriv = ["setpriv", f"--reuid={uid}", f"--regid={uid}", "--clear-groups"]
    setpriv += ["--inh-caps=+dac_read_search", "--ambient-caps=+dac_read_search"]
    return [*ns.exec_prefix(), *setpriv, sys.executable, "-m", "egressgate"]


def _remove_namespace(ns: Namespace) -> list[str]:
    errors: list[str] = []
    # Whatever still runs inside a namespace this Lab created was started by this Lab.
    try:
        pids = _check(["ip", "netns", "pids", ns.name]).split()
    except NetnsError as exc:
        pids = []
        errors.append(str(exc))
    for pid in pids:
        with contextlib.suppress(ProcessLookupError, ValueError, PermissionError):
            os.kill(int(pid), signal.SIGKILL)
    try:
        _check(["ip", "netns", "del", ns.name])
    except NetnsError as exc:
        errors.append(str(exc))
    shutil.rmtree(NETNS_ETC / ns.name, ignore_errors=True)
    return errors


def existing_namespaces(prefix: str) -> list[str]:
    """Names of namespaces starting with `prefix` (to prove that cleanup removed them)."""
    out = _check(["ip", "netns", "list"])
    return [line.split()[0] for line in out.splitlines() if line.startswith(prefix)]
