#!/usr/bin/env python3
"""The injection webhook's answer time: AdmissionReview latency at a fixed rate, one core.

Usage: webhook.py [--rate 200] [--seconds 20] [--warmup-s 2] [--connections 4]
                  [--target-p99-ms 5] [--cpu N] [--json OUT]

Starts `python -m egressgate inject` from this checkout on loopback, pinned to one CPU (--cpu,
default the last one; the client runs on the others when there are any), with a serving pair
made by tools/k8s_certs.py, and calls it the way the API server does: TLS (the client trusts the
generated CA and checks the Service's name), HTTP/1.1 keep-alive connections from a small pool
(--connections), one AdmissionReview per request, the next request only after the answer on
that connection. Open loop: request i is due at start + i/rate whatever happened before; when
no connection is free it waits for one, and its latency counts from when it was due (no
coordinated omission). Requests rotate over the pod shapes of tests/support/admission.py (a
Deployment's pod, several containers, init containers, existing env and JAVA_TOOL_OPTIONS,
envFrom, no env), all injected in explicit mode; every answer is checked (200, allowed, the
uid, a patch).

Prints p50/p90/p99/max after --warmup-s, and the webhook's CPU time per review (from
/proc/PID/stat: unlike the latencies, it hardly depends on how busy the machine is); exit
status 0 if p99 <= --target-p99-ms and no request failed, 1 if the target is missed, 2 on
errors.
"""

from __future__ import annotations

import argparse
import asyncio
import json
import os
import ssl
import subprocess
import sys
import tempfile
import time
from pathlib import Path

HERE = Path(__file__).resolve().parent
ROOT = HERE.parent
sys.path.insert(0, str(ROOT))

from egressgate.tools import k8s_certs  # noqa: E402
from tests.support.admission import pod_shapes, review  # noqa: E402

SERVICE = "egressgate-inject.egressgate.svc"
START_TIMEOUT_S = 20.0
REQUEST_TIMEOUT_S = 5.0
CONFIG = """\
proxy: http://egressgate.egressgate.svc.cluster.local:3128
cluster_cidrs: [10.0.0.0/8, 172.16.0.0/12, 192.168.0.0/16]
"""


def start_webhook(workdir: Path, cpu: int | None) -> tuple[subprocess.Popen[bytes], int]:
    certs = k8s_certs.generate(k8s_certs.service_names("egressgate-inject", "egressgate"))
    (workdir / "ca.crt").write_bytes(certs.ca_pem)
    (workdir / "tls.crt").write_bytes(certs.cert_pem)
    (workdir / "tls.key").write_bytes(certs.key_pem)
    (workdir / "inject.yaml").write_text(CONFIG)
    argv = [
        sys.executable, "-m", "egressgate", "inject", "--config", str(workdir / "inject.yaml"),
        "--listen", "127.0.0.1:0", "--tls-cert", str(workdir / "tls.crt"),
        "--tls-key", str(workdir / "tls.key"),
    ]  # fmt: skip
    if cpu is not None:
        argv = ["taskset", "-c", str(cpu), *argv]
    env = {k: v for k, v in os.environ.items() if not k.lower().endswith("_proxy")}
    # Events go to a file, never a pipe nobody reads (the webhook logs every injection).
    log = (workdir / "webhook.log").open("wb")
    proc = subprocess.Popen(argv, cwd=ROOT, env=env, stderr=log)
    deadline = time.monotonic() + START_TIMEOUT_S
    while time.monotonic() < deadline and proc.poll() is None:
        for line in (workdir / "webhook.log").read_bytes().splitlines():
            event = json.loads(line) if line.startswith(b"{") else {}
            if event.get("event") == "listening":
                return proc, int(event["webhook"].rpartition(":")[2])
        time.sleep(0.05)
    proc.kill()
    tail = (workdir / "webhook.log").read_text(errors="replace")[-2000:]
    raise SystemExit(f"the webhook did not start: {tail}")


class Connection:
    """One keep-alive TLS connection, one request at a time."""

    def __init__(self, reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
        self.reader = reader
        self.writer = writer

    async def call(self, body: bytes) -> dict[str, object]:
        self.writer.write(
            b"POST /mutate/explicit?timeout=5s HTTP/1.1\r\nHost: %s\r\n"
            b"Content-Type: application/json\r\nAccept: application/json\r\n"
            b"Content-Length: %d\r\n\r\n%s" % (SERVICE.encode(), len(body), body)
        )
        head = await self.reader.readuntil(b"\r\n\r\n")
        status = head.split(b" ", 2)[1]
        length = 0
        for line in head.split(b"\r\n"):
            if line.lower().startswith(b"content-length:"):
                length = int(line.split(b":", 1)[1])
        answer = await self.reader.readexactly(length)
        if status != b"200":
            raise RuntimeError(f"status {status!r}: {answer[:200]!r}")
        return json.loads(answer)  # type: ignore[no-any-return]


async def run_load(args: argparse.Namespace, port: int, ca: Path) -> dict[str, object]:
    context = ssl.create_default_context(cafile=str(ca))
    pool: asyncio.Queue[Connection] = asyncio.Queue()
    for _ in range(args.connections):
        reader, writer = await asyncio.open_connection(
            "127.0.0.1", port, ssl=context, server_hostname=SERVICE
        )
        pool.put_nowait(Connection(reader, writer))
    shapes = list(pod_shapes().values())
    bodies = [(doc["request"]["uid"], json.dumps(doc).encode()) for doc in map(review, shapes)]
    latencies_s: list[tuple[float, float]] = []  # (due, latency)
    errors: list[str] = []
    total = int(args.rate * args.seconds)
    start = time.perf_counter() + 0.2

    async def one(index: int, due: float) -> None:
        uid, body = bodies[index % len(bodies)]
        connection = await pool.get()
        try:
            answer = await asyncio.wait_for(connection.call(body), REQUEST_TIMEOUT_S)
            response = answer["response"]
            assert isinstance(response, dict)
            if response.get("uid") != uid or response.get("allowed") is not True:
                errors.append(f"bad answer: {str(response)[:200]}")
            elif "patch" not in response:
                errors.append(f"no patch: {response.get('warnings')}")
            latencies_s.append((due - start, time.perf_counter() - due))
        except Exception as exc:
            errors.append(f"{type(exc).__name__}: {exc}")
        finally:
            pool.put_nowait(connection)

    tasks = []
    for index in range(total):
        due = start + index / args.rate
        delay = due - time.perf_counter()
        if delay > 0:
            await asyncio.sleep(delay)
        tasks.append(asyncio.ensure_future(one(index, due)))  # noqa: TID251 (bench: no egressgate.net)
    await asyncio.gather(*tasks)
    while not pool.empty():
        pool.get_nowait().writer.close()
    measured = sorted(lat for due, lat in latencies_s if due >= args.warmup_s)
    return {"requests": total, "errors": errors, "measured": measured}


def cpu_seconds(pid: int) -> float:
    """User + system CPU time of a process so far (/proc/PID/stat, fields 14 and 15)."""
    fields = Path(f"/proc/{pid}/stat").read_text().rpartition(")")[2].split()
    return (int(fields[11]) + int(fields[12])) / os.sysconf("SC_CLK_TCK")


def percentile(values: list[float], fraction: float) -> float:
    if not values:
        return float("nan")
    return values[min(len(values) - 1, int(fraction * len(values)))]


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--rate", type=float, default=200.0, help="requests per second")
    parser.add_argument("--seconds", type=float, default=20.0, help="length of the run")
    parser.add_argument("--warmup-s", type=float, default=2.0, help="not counted")
    parser.add_argument("--connections", type=int, default=4, help="keep-alive pool size")
    parser.add_argument("--target-p99-ms", type=float, default=5.0)
    parser.add_argument("--cpu", type=int, default=None, help="CPU for the webhook")
    parser.add_argument("--json", metavar="OUT", help="write the figures as JSON")
    args = parser.parse_args()
    cpus = sorted(os.sched_getaffinity(0))
    cpu = args.cpu if args.cpu is not None else cpus[-1]
    if len(cpus) > 1:
        os.sched_setaffinity(0, [c for c in cpus if c != cpu])  # the client off its core
    with tempfile.TemporaryDirectory(prefix="egressgate-webhook-bench-") as tmp:
        workdir = Path(tmp)
        proc, port = start_webhook(workdir, cpu if args.cpu is not None or len(cpus) > 1 else None)
        try:
            cpu_before_s = cpu_seconds(proc.pid)
            result = asyncio.run(run_load(args, port, workdir / "ca.crt"))
            cpu_used_s = cpu_seconds(proc.pid) - cpu_before_s
        finally:
            proc.terminate()
            proc.wait(10)
    measured: list[float] = result["measured"]  # type: ignore[assignment]
    errors: list[str] = result["errors"]  # type: ignore[assignment]
    figures = {
        "rate": args.rate,
        "seconds": args.seconds,
        "connections": args.connections,
        "webhook_cpu": cpu,
        "requests": result["requests"],
        "measured": len(measured),
        "errors": len(errors),
        "p50_ms": round(percentile(measured, 0.50) * 1000, 3),
        "p90_ms": round(percentile(measured, 0.90) * 1000, 3),
        "p99_ms": round(percentile(measured, 0.99) * 1000, 3),
        "max_ms": round((measured[-1] if measured else float("nan")) * 1000, 3),
        "target_p99_ms": args.target_p99_ms,
        # What the webhook itself spends per review (TLS included): unlike the latencies, this
        # does not depend on how busy the machine is.
        "webhook_cpu_ms_per_request": round(cpu_used_s * 1000 / max(1, int(result["requests"])), 3),
    }
    print(
        f"webhook: {figures['measured']} AdmissionReviews measured at {args.rate:g}/s over "
        f"{args.connections} keep-alive TLS connections, webhook on CPU {cpu}\n"
        f"  p50 {figures['p50_ms']} ms  p90 {figures['p90_ms']} ms  p99 {figures['p99_ms']} ms"
        f"  max {figures['max_ms']} ms  errors {len(errors)}\n"
        f"  webhook CPU per review {figures['webhook_cpu_ms_per_request']} ms"
    )
    for error in errors[:5]:
        print(f"  error: {error}")
    if args.json:
        Path(args.json).write_text(json.dumps(figures, indent=2) + "\n")
    if errors:
        return 2
    return 0 if figures["p99_ms"] <= args.target_p99_ms else 1


if __name__ == "__main__":
    sys.exit(main())
