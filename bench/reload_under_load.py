#!/usr/bin/env python3
"""Does a large reload pause traffic? (issue 12, item 3)

Starts a small keep-alive origin and egressgate (both subprocesses, loopback only), drives
`--connections` keep-alive clients through the proxy at full speed from a separate load process,
and after `--warmup-s` sends SIGHUP with a config whose allowlist has `--entries` entries
(default 100,000). Every request is timed; a request that fails or takes longer than
`--timeout-s` counts as failed / timed out.

Reported (text, and JSON with --json): requests and p50/p99/max latency in the steady window
before the reload and in the reload window (SIGHUP until 1 s after the `reloaded` event), the
failed and timed-out requests in each, how long the reload took, and the verdict against the
target: zero failed or timed-out requests, reload-window p99 within 2x the steady p99.

Usage: bench/reload_under_load.py [--entries 100000] [--connections 32] [--warmup-s 5]
                                  [--after-s 5] [--timeout-s 2] [--json OUT]
Run from the repository root. Standard library plus egressgate's own dependencies.
"""

from __future__ import annotations

import argparse
import json
import os
import signal
import subprocess
import sys
import tempfile
import textwrap
import threading
import time
from pathlib import Path
from typing import Any

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent

ORIGIN = textwrap.dedent(
    """
    import asyncio, sys
    BODY = b"ok\\n"
    RESPONSE = (b"HTTP/1.1 200 OK\\r\\nContent-Length: %d\\r\\nContent-Type: text/plain\\r\\n\\r\\n"
                % len(BODY)) + BODY
    async def handle(reader, writer):
        try:
            while True:
                head = await reader.readuntil(b"\\r\\n\\r\\n")
                writer.write(RESPONSE)
                await writer.drain()
        except Exception:
            writer.close()
    async def main():
        server = await asyncio.start_server(handle, "127.0.0.1", 0)
        print(server.sockets[0].getsockname()[1], flush=True)
        await server.serve_forever()
    asyncio.run(main())
    """
)

LOAD = textwrap.dedent(
    """
    import asyncio, json, sys, threading, time
    proxy_port, url, connections, seconds, timeout_s = (
        int(sys.argv[1]), sys.argv[2], int(sys.argv[3]), float(sys.argv[4]), float(sys.argv[5]))
    authority = url.split("://", 1)[1].split("/", 1)[0]
    REQUEST = f"GET {url} HTTP/1.1\\r\\nHost: {authority}\\r\\n\\r\\n".encode()
    results = []  # (start, latency_s or -1 failed, -2 timed out)
    async def client(deadline):
        reader = writer = None
        while time.time() < deadline and not stop.is_set():
            start = time.time()
            try:
                if writer is None:
                    reader, writer = await asyncio.open_connection("127.0.0.1", proxy_port)
                writer.write(REQUEST)
                head = await asyncio.wait_for(reader.readuntil(b"\\r\\n\\r\\n"), timeout_s)
                length = int(head.lower().split(b"content-length:", 1)[1].split(b"\\r\\n", 1)[0])
                await asyncio.wait_for(reader.readexactly(length), timeout_s)
                ok = head.startswith(b"HTTP/1.1 200")
                results.append((start, time.time() - start if ok else -1.0))
            except asyncio.TimeoutError:
                results.append((start, -2.0))
                writer.close(); writer = None
            except Exception:
                results.append((start, -1.0))
                if writer is not None:
                    writer.close()
                writer = None
                await asyncio.sleep(0.01)
    stop = threading.Event()  # set when stdin closes: the bench is done
    threading.Thread(target=lambda: (sys.stdin.read(), stop.set()), daemon=True).start()
    async def main():
        deadline = time.time() + seconds
        await asyncio.gather(*(client(deadline) for _ in range(connections)))
    asyncio.run(main())
    json.dump(results, sys.stdout)
    """
)


def config_text(origin_port: int, hosts_file: Path, access_log: Path, entries: int) -> str:
    allow = ["origin.bench"] + [f"host{n}.example-{n % 997}.test" for n in range(entries - 1)]
    lines = [
        "listen: 127.0.0.1:0",
        "admin_listen: null",
        f"hosts_file: {hosts_file}",
        f"access_log: {access_log}",
        "allow_private: [127.0.0.0/8]",
        f"http_ports: ['{origin_port}']",
        "allow:",
        *(f"- {entry}" for entry in allow),
    ]
    return "\n".join(lines) + "\n"


def percentile(values: list[float], q: float) -> float:
    if not values:
        return float("nan")
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, int(q * len(ordered)))]


def summarize(results: list[tuple[float, float]], start: float, end: float) -> dict[str, Any]:
    window = [latency for t, latency in results if start <= t < end]
    ok = [latency for latency in window if latency >= 0]
    return {
        "requests": len(window),
        "failed": sum(1 for latency in window if latency == -1.0),
        "timed_out": sum(1 for latency in window if latency == -2.0),
        "p50_ms": round(percentile(ok, 0.50) * 1000, 3),
        "p99_ms": round(percentile(ok, 0.99) * 1000, 3),
        "max_ms": round(max(ok, default=float("nan")) * 1000, 3),
    }


class Stderr:
    """Collects the proxy's stderr JSON events in a thread."""

    def __init__(self, stream: Any) -> None:
        self.events: list[tuple[float, dict[str, Any]]] = []
        self._cond = threading.Condition()
        threading.Thread(target=self._read, args=(stream,), daemon=True).start()

    def _read(self, stream: Any) -> None:
        for raw in stream:
            try:
                event = json.loads(raw)
            except ValueError:
                continue
            with self._cond:
                self.events.append((time.time(), event))
                self._cond.notify_all()

    def wait(self, name: str, timeout_s: float, after: int = 0) -> tuple[float, dict[str, Any]]:
        deadline = time.monotonic() + timeout_s
        with self._cond:
            while True:
                for at, event in self.events[after:]:
                    if event.get("event") == name:
                        return at, event
                remaining = deadline - time.monotonic()
                if remaining <= 0:
                    raise SystemExit(f"no {name!r} event within {timeout_s}s: {self.events[-5:]}")
                self._cond.wait(remaining)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--entries", type=int, default=100_000)
    parser.add_argument("--connections", type=int, default=32)
    parser.add_argument("--warmup-s", type=float, default=5.0)
    parser.add_argument("--after-s", type=float, default=5.0)
    parser.add_argument("--timeout-s", type=float, default=2.0)
    parser.add_argument("--reload-wait-s", type=float, default=120.0)
    parser.add_argument("--json", metavar="OUT")
    args = parser.parse_args()

    work = Path(tempfile.mkdtemp(prefix="egressgate-reload-bench-"))
    procs: list[subprocess.Popen[Any]] = []
    try:
        origin = subprocess.Popen([sys.executable, "-c", ORIGIN], stdout=subprocess.PIPE, text=True)
        procs.append(origin)
        assert origin.stdout is not None
        origin_port = int(origin.stdout.readline())
        hosts = work / "hosts"
        hosts.write_text("127.0.0.1 origin.bench\n")
        config = work / "egress.yaml"
        small = config_text(origin_port, hosts, work / "access.log", 1)
        config.write_text(small)
        proxy = subprocess.Popen(
            [sys.executable, "-m", "egressgate", "run", "--config", str(config)],
            cwd=ROOT,
            stdin=subprocess.DEVNULL,
            stdout=subprocess.DEVNULL,
            stderr=subprocess.PIPE,
            text=True,
        )
        procs.append(proxy)
        events = Stderr(proxy.stderr)
        _, listening = events.wait("listening", 20)
        proxy_port = int(str(listening["proxy"]).rsplit(":", 1)[1])

        big = config_text(origin_port, hosts, work / "access.log", args.entries)
        run_s = args.warmup_s + args.reload_wait_s + args.after_s
        load = subprocess.Popen(
            [
                sys.executable,
                "-c",
                LOAD,
                str(proxy_port),
                f"http://origin.bench:{origin_port}/",
                str(args.connections),
                str(run_s),
                str(args.timeout_s),
            ],
            stdin=subprocess.PIPE,
            stdout=subprocess.PIPE,
            text=True,
        )
        procs.append(load)
        load_started = time.time()
        time.sleep(args.warmup_s)
        tmp = work / "egress.yaml.new"
        tmp.write_text(big)
        os.replace(tmp, config)
        mark = len(events.events)
        sighup_at = time.time()
        proxy.send_signal(signal.SIGHUP)
        reloaded_at, reloaded = events.wait("reloaded", args.reload_wait_s, after=mark)
        window_end = reloaded_at + 1.0
        time.sleep(args.after_s)
        out, _ = load.communicate(input="", timeout=run_s + 60)  # stdin closed: stop
        results = [tuple(pair) for pair in json.loads(out)]
        steady = summarize(results, load_started + 1.0, sighup_at)  # (first second: warm-up)
        during = summarize(results, sighup_at, window_end)
        report = {
            "entries": args.entries,
            "connections": args.connections,
            "reload_s": round(reloaded_at - sighup_at, 3),
            "generation": reloaded.get("generation"),
            "steady": steady,
            "reload_window": during,
            "target_met": during["failed"] == 0
            and during["timed_out"] == 0
            and during["p99_ms"] <= 2 * steady["p99_ms"],
        }
        print(json.dumps(report, indent=2))
        if args.json:
            Path(args.json).write_text(json.dumps(report, indent=2) + "\n")
        return 0 if report["target_met"] else 1
    finally:
        for proc in reversed(procs):
            if proc.poll() is None:
                proc.terminate()
                try:
                    proc.wait(10)
                except subprocess.TimeoutExpired:
                    proc.kill()
                    proc.wait(10)


if __name__ == "__main__":
    sys.exit(main())
