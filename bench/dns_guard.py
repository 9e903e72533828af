#!/usr/bin/env python3
"""The DNS guard's speed: cached allowed-name queries/s on one core, and the latency it adds.

Starts, all on loopback:
  - an upstream authoritative server (tests/support/dns.py, in a process of its own, so that
    it never waits for this one's GIL) with `cached.bench.test` and a wildcard
    `*.miss.bench.test`, pinned to the client's CPU (the client waits while it answers);
  - the real proxy (`python -m egressgate run`) with `dns_listen`, pinned to one CPU;
  - dnsmasq forwarding to the same upstream, pinned to the same CPU, if it is installed;
and measures, from a client pinned to another CPU:
  - qps: queries/s for the cached allowed name, `--window` queries outstanding, `--seconds` long
    (every query has its own ID, so nothing but the cache makes it cheap);
  - p50/p99 of one query at a time, INTERLEAVED: query i goes to the upstream directly, then to
    the guard, then to dnsmasq, each a new name under the wildcard (so every one is forwarded),
    before query i+1 does; the same for the cached name. Interleaving makes the three see the
    same moments of a busy machine, so their difference is the servers', not the load's.
"added p99" is a server's uncached p99 minus the upstream's own, from the same interleaved run.
On a busy machine wall-clock latency is mostly run-queue waiting, so the server's own CPU time
per query (utime + stime from /proc/PID/stat, over each phase) is reported as well: that is
what the code costs.

With `--before DIR` (a checkout of an earlier egressgate, e.g. `git worktree add DIR REV`), that
version runs too, as "before", pinned to the same CPU and interleaved with the others: a change
is then judged against the old code under the very same load.

Usage: bench/dns_guard.py [--seconds 5] [--window 64] [--samples 2000] [--json OUT] [--before DIR]
Run from the repository root (it imports tests.support.dns). Needs dnspython, dnslib.
"""

from __future__ import annotations

import argparse
import json
import os
import shutil
import socket
import subprocess
import sys
import tempfile
import time
from pathlib import Path
from typing import Any

import dns.message

sys.path.insert(0, str(Path(__file__).resolve().parents[1]))
from tests.support.proxy import ProxyProcess

CACHED = "cached.bench.test"
MISS_SUFFIX = "miss.bench.test"
RECV_TIMEOUT_S = 2.0


def query_bytes(name: str, qid: int = 0) -> bytes:
    query = dns.message.make_query(name, "A")
    query.id = qid
    return query.to_wire()


def throughput(address: tuple[str, int], seconds: float, window: int) -> dict[str, float]:
    """Queries/s for the cached name with `window` queries outstanding (IDs vary per query)."""
    template = bytearray(query_bytes(CACHED))
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(address)
    sock.settimeout(RECV_TIMEOUT_S)
    sent = answered = lost = 0

    def send() -> None:
        nonlocal sent
        sent += 1
        template[0:2] = (sent & 0xFFFF).to_bytes(2, "big")
        sock.send(template)

    for _ in range(window):
        send()
    started = time.perf_counter()
    deadline = started + seconds
    while True:
        try:
            sock.recv(4096)
            answered += 1
        except (TimeoutError, ConnectionRefusedError):
            lost += 1  # a dropped datagram: keep the window full
        if time.perf_counter() >= deadline:
            break
        send()
    elapsed = time.perf_counter() - started
    sock.close()
    return {"qps": answered / elapsed, "lost": float(lost)}


def latencies(address: tuple[str, int], names: list[str]) -> dict[str, float]:
    """p50/p99 (ms) of one query at a time."""
    sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
    sock.connect(address)
    sock.settimeout(RECV_TIMEOUT_S)
    samples: list[float] = []
    for index, name in enumerate(names):
        wire = query_bytes(name, index & 0xFFFF)
        started = time.perf_counter()
        sock.send(wire)
        try:
            sock.recv(4096)
        except (TimeoutError, ConnectionRefusedError):
            continue  # lost, or nobody listening yet (ICMP port unreachable)
        samples.append((time.perf_counter() - started) * 1000.0)
    sock.close()
    samples.sort()
    if not samples:
        return {"p50_ms": float("nan"), "p99_ms": float("nan"), "n": 0.0}
    return {
        "p50_ms": samples[len(samples) // 2],
        "p99_ms": samples[min(len(samples) - 1, int(len(samples) * 0.99))],
        "n": float(len(samples)),
    }


def cpu_s(pid: int) -> float:
    """User + system CPU seconds used so far by process `pid` (Linux /proc)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rsplit(")", 1)[1].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def free_port() -> int:
    with socket.socket(socket.AF_INET, socket.SOCK_DGRAM) as sock:
        sock.bind(("127.0.0.1", 0))
        return int(sock.getsockname()[1])


UPSTREAM_SCRIPT = """
import sys, json
from tests.support.dns import DnsServer
records = json.loads(sys.argv[1])
with DnsServer(records, ttl=300) as server:
    print(server.port, flush=True)
    sys.stdin.read()  # until the bench closes our stdin
"""


def start_upstream(records: dict[str, list[str]], cpu: int) -> tuple[subprocess.Popen[str], int]:
    """The test DNS server in a child process pinned to `cpu`; its port."""
    proc = subprocess.Popen(
        ["taskset", "-c", str(cpu), sys.executable, "-c", UPSTREAM_SCRIPT, json.dumps(records)],
        cwd=Path(__file__).resolve().parents[1],
        stdin=subprocess.PIPE,
        stdout=subprocess.PIPE,
        text=True,
    )
    assert proc.stdout is not None
    return proc, int(proc.stdout.readline())


def start_dnsmasq(upstream_port: int, cpu: int) -> tuple[subprocess.Popen[bytes], int] | None:
    binary = shutil.which("dnsmasq")
    if binary is None:
        return None
    port = free_port()
    command = [
        "taskset",
        "-c",
        str(cpu),
        binary,
        "--conf-file=/dev/null",
        "--no-resolv",
        "--no-hosts",
        f"--server=127.0.0.1#{upstream_port}",
        f"--port={port}",
        "--listen-address=127.0.0.1",
        "--bind-interfaces",
        "--no-daemon",
        "--cache-size=10000",
    ]
    proc = subprocess.Popen(command, stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    for _ in range(50):  # bounded wait for its first answer
        if proc.poll() is not None:
            return None
        if latencies(("127.0.0.1", port), [CACHED])["n"]:
            return proc, port
        time.sleep(0.1)
    proc.kill()
    return None


def interleaved(
    targets: dict[str, tuple[str, int]], pids: dict[str, int], names: list[str], cached: bool
) -> dict[str, dict[str, float]]:
    """p50/p99 (ms) per target, query i sent to every target in turn before query i+1; with
    each server's CPU time per query over the phase."""
    socks = {}
    for label, address in targets.items():
        sock = socket.socket(socket.AF_INET, socket.SOCK_DGRAM)
        sock.connect(address)
        sock.settimeout(RECV_TIMEOUT_S)
        socks[label] = sock
    samples: dict[str, list[float]] = {label: [] for label in targets}
    before = {label: cpu_s(pid) for label, pid in pids.items()}
    for index, name in enumerate(names):
        for label, sock in socks.items():
            wire = query_bytes(name if cached else f"{label}-{name}", index & 0xFFFF)
            started = time.perf_counter()
            sock.send(wire)
            try:
                sock.recv(4096)
            except (TimeoutError, ConnectionRefusedError):
                continue  # lost
            samples[label].append((time.perf_counter() - started) * 1000.0)
    results: dict[str, dict[str, float]] = {}
    for label, sock in socks.items():
        sock.close()
        got = sorted(samples[label])
        results[label] = {
            "p50_ms": got[len(got) // 2] if got else float("nan"),
            "p99_ms": got[min(len(got) - 1, int(len(got) * 0.99))] if got else float("nan"),
            "n": float(len(got)),
        }
        if label in pids:
            used = cpu_s(pids[label]) - before[label]
            results[label]["cpu_us_per_query"] = used / max(len(got), 1) * 1e6
    return results


def start_before(args: argparse.Namespace, config: dict[str, Any], workdir: Path) -> ProxyProcess:
    """The proxy of the checkout `args.before`, with the same config (its own access log)."""
    workdir.mkdir()
    source = str(Path(args.before).resolve())
    boot = (
        f"import sys, runpy; sys.path.insert(0, {source!r}); "
        "runpy.run_module('egressgate', run_name='__main__', alter_sys=True)"
    )
    command = ["taskset", "-c", str(args.server_cpu), sys.executable, "-c", boot]
    config = {**config, "access_log": str(workdir / "access.log")}
    return ProxyProcess(config, workdir, command=command).start()


def rate(address: tuple[str, int], pid: int, args: argparse.Namespace) -> dict[str, float]:
    before = cpu_s(pid)
    result = throughput(address, args.seconds, args.window)
    answered = result["qps"] * args.seconds
    result["cpu_us_per_query"] = (cpu_s(pid) - before) / max(answered, 1) * 1e6
    return result


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--seconds", type=float, default=5.0)
    parser.add_argument("--window", type=int, default=64)
    parser.add_argument("--samples", type=int, default=2000)
    parser.add_argument("--server-cpu", type=int, default=0)
    parser.add_argument("--client-cpu", type=int, default=1)
    parser.add_argument("--json", metavar="OUT")
    parser.add_argument("--before", metavar="DIR", help="an earlier checkout to run side by side")
    args = parser.parse_args()
    os.sched_setaffinity(0, {args.client_cpu})
    results: dict[str, Any] = {"cpus": os.cpu_count(), "load_before": os.getloadavg()}
    records = {CACHED: ["93.184.216.34"], f"*.{MISS_SUFFIX}": ["93.184.216.35"]}
    upstream, upstream_port = start_upstream(records, args.client_cpu)
    try:
        run(args, results, upstream_port)
    finally:
        assert upstream.stdin is not None
        upstream.stdin.close()
        upstream.wait(10)
    report(args, results)
    return 0


def run(args: argparse.Namespace, results: dict[str, Any], upstream_port: int) -> None:
    with tempfile.TemporaryDirectory() as tmp:
        upstream = ("127.0.0.1", upstream_port)
        config = {
            "listen": "127.0.0.1:0",
            "admin_listen": None,
            "dns_listen": "127.0.0.1:0",
            "nameservers": [f"127.0.0.1:{upstream_port}"],
            "access_log": str(Path(tmp) / "access.log"),
            "allow": [CACHED, f".{MISS_SUFFIX}"],
        }
        command = ["taskset", "-c", str(args.server_cpu), sys.executable, "-m", "egressgate"]
        with ProxyProcess(config, Path(tmp), command=command) as proxy:
            address = proxy.dns_address
            assert address is not None
            targets = {"upstream": upstream, "egressgate": address}
            pids = {"egressgate": proxy.pid}
            before = None
            if args.before:
                before = start_before(args, config, Path(tmp) / "before")
                assert before.dns_address is not None
                targets["before"] = before.dns_address
                pids["before"] = before.pid
            dnsmasq = start_dnsmasq(upstream_port, args.server_cpu)
            if dnsmasq is not None:
                targets["dnsmasq"] = ("127.0.0.1", dnsmasq[1])
                pids["dnsmasq"] = dnsmasq[0].pid
            try:
                warm = [f"warm{i}.{MISS_SUFFIX}" for i in range(200)]
                interleaved(targets, pids, warm, cached=False)
                interleaved(targets, pids, [CACHED] * 200, cached=True)
                stamp = time.strftime("%H%M%S")
                names = [f"n{i}-{stamp}.{MISS_SUFFIX}" for i in range(args.samples)]
                uncached = interleaved(targets, pids, names, cached=False)
                cached = interleaved(targets, pids, [CACHED] * args.samples, cached=True)
                results["upstream"] = {"uncached": uncached["upstream"]}
                for label in pids:
                    results[label] = {
                        "cached": cached[label],
                        "uncached": uncached[label],
                        **rate(targets[label], pids[label], args),
                    }
            finally:
                if dnsmasq is not None:
                    dnsmasq[0].kill()
                    dnsmasq[0].wait(10)
                if before is not None:
                    before.close()
    results["load_after"] = os.getloadavg()
    results["interleaved"] = True


def report(args: argparse.Namespace, results: dict[str, Any]) -> None:
    up_p99 = results["upstream"]["uncached"]["p99_ms"]
    for name in ("egressgate", "before", "dnsmasq"):
        if name in results:
            result = results[name]
            result["added_p99_ms"] = result["uncached"]["p99_ms"] - up_p99
            print(
                f"{name:10s} cached {result['qps']:8.0f} q/s; p50/p99 ms: "
                f"cached {result['cached']['p50_ms']:.3f}/{result['cached']['p99_ms']:.3f}, "
                f"uncached {result['uncached']['p50_ms']:.3f}/{result['uncached']['p99_ms']:.3f} "
                f"(p99 +{result['added_p99_ms']:.3f} over upstream); CPU per query "
                f"{result['cpu_us_per_query']:.1f} us cached, "
                f"{result['uncached']['cpu_us_per_query']:.1f} us uncached"
            )
    upstream = results["upstream"]["uncached"]
    print(
        f"upstream   direct p50/p99 ms: {upstream['p50_ms']:.3f}/{up_p99:.3f}; "
        f"load average before {results['load_before'][0]:.1f}, after {results['load_after'][0]:.1f}"
    )
    if args.json:
        Path(args.json).write_text(json.dumps(results, indent=2), encoding="utf-8")


if __name__ == "__main__":
    sys.exit(main())
