#!/usr/bin/env python3
"""Soak: mixed traffic at a fixed moderate rate for N minutes; the proxy's RSS and fds stay flat.

Usage: soak.py [--minutes 10] [--rate 200] [--sample-s 30] [--warmup-s 120]
               [--json OUT] [--plot OUT.png] [--workers 1] [--keep-tmp]

Everything runs on loopback and is started here: an HTTP origin and a DNS server (a child
process: `soak.py --serve`), and `python -m egressgate run` from this checkout. The DNS server
answers A records for *.soak.test with a 2 s TTL (so names are resolved again all the time),
internal.soak.test with 127.0.0.9 (outside allow_private: refused as private-address, never
connected to) and NXDOMAIN for nx*.soak.test; denied names are refused before DNS.

Traffic, started at a fixed rate (one request every 1/rate s, at most 256 in flight), as
fractions of the requests: plain HTTP on a new connection (30 %), plain HTTP on one of 8
keep-alive connections (20 %), HTTP denied by policy (10 %), CONNECT + a request through the
tunnel (25 %), CONNECT denied (7 %), a private-address refusal (4 %), a CONNECT whose name does
not exist (4 %). Hosts vary over 500 names, so the proxy's bounded caches fill and turn over.
Every answer is checked (status, and the origin's body); anything else counts as an error.

Every --sample-s the traffic pauses: in-flight requests finish, the keep-alive connections
close, and 2.5 s later (pooled upstream connections idle out after 1 s here) the RSS and open
fds of the proxy's process tree are read: the "quiesced" sample, what the proxy holds when
nothing is going on (the values under load are recorded too). After --warmup-s, both quiesced
series must stay within 5 % (max/min - 1 <= 0.05), and no request may fail: the exit status
is 0 if so, 1 if not. Prints a table, writes JSON and a PNG (matplotlib, the `chart` extra;
skipped with a message if it is missing).
"""

from __future__ import annotations

import argparse
import asyncio
import contextlib
import json
import os
import random
import signal
import socket
import struct
import subprocess
import sys
import tempfile
import time
import urllib.request
from dataclasses import asdict, dataclass, field

HERE = os.path.dirname(os.path.abspath(__file__))
ROOT = os.path.dirname(HERE)
FLAT_LIMIT = 0.05
REQUEST_TIMEOUT_S = 10.0
MAX_IN_FLIGHT = 256
KEEPALIVE_CONNECTIONS = 8
KEEPALIVE_REQUESTS = 100  # a keep-alive client connection is replaced after this many requests
NAMES = 500
UPSTREAM_IDLE_S = 1
QUIESCE_S = 2.5  # > upstream_idle_s + the sweeper's 0.5 s period
DNS_TTL_S = 2
INTERNAL_ADDRESS = "127.0.0.9"
ORIGIN_BODY = b"soak origin\n"
# (kind, weight in percent)
MIX = (
    ("http", 30),
    ("http-keepalive", 20),
    ("http-denied", 10),
    ("connect", 25),
    ("connect-denied", 7),
    ("private-address", 4),
    ("nxdomain", 4),
)


# ---------------------------------------------------------------------------------------------
# The loopback servers (a child process): HTTP origin and DNS
# ---------------------------------------------------------------------------------------------


async def _origin_client(reader: asyncio.StreamReader, writer: asyncio.StreamWriter) -> None:
    """Answers every request with ORIGIN_BODY, keep-alive unless asked to close."""
    try:
        while True:
            head = await reader.readuntil(b"\r\n\r\n")
            close = b"connection: close" in head.lower()
            writer.write(
                b"HTTP/1.1 200 OK\r\nContent-Length: %d\r\n%s\r\n%s"
                % (len(ORIGIN_BODY), b"Connection: close\r\n" if close else b"", ORIGIN_BODY)
            )
            await writer.drain()
            if close:
                break
    except (asyncio.IncompleteReadError, asyncio.LimitOverrunError, ConnectionError):
        pass
    finally:
        writer.close()


class _Dns(asyncio.DatagramProtocol):
    """A tiny authoritative answerer for *.soak.test (A records only)."""

    def connection_made(self, transport: asyncio.BaseTransport) -> None:
        self.transport = transport

    def datagram_received(self, data: bytes, addr: tuple[str, int]) -> None:
        with contextlib.suppress(ValueError, IndexError, struct.error):
            self.transport.sendto(dns_answer(data), addr)  # type: ignore[attr-defined]


def dns_answer(query: bytes) -> bytes:
    qid, flags = struct.unpack("!HH", query[:4])
    pos, labels = 12, []
    while query[pos]:
        labels.append(query[pos + 1 : pos + 1 + query[pos]].decode("ascii").lower())
        pos += 1 + query[pos]
    question_end = pos + 5
    qtype = struct.unpack("!H", query[pos + 1 : pos + 3])[0]
    name = ".".join(labels)
    rcode, address = 0, None
    if not name.endswith(".soak.test") or name.startswith("nx"):
        rcode = 3  # NXDOMAIN
    elif qtype == 1:
        address = INTERNAL_ADDRESS if name == "internal.soak.test" else "127.0.0.1"
    header = struct.pack(
        "!HHHHHH", qid, 0x8400 | (flags & 0x0100) | rcode, 1, int(bool(address)), 0, 0
    )
    answer = b""
    if address:
        answer = struct.pack("!HHHIH", 0xC00C, 1, 1, DNS_TTL_S, 4) + socket.inet_aton(address)
    return header + query[12:question_end] + answer


async def serve() -> None:
    """Start both servers on 127.0.0.1:0, print their ports as one JSON line, run forever."""
    server = await asyncio.start_server(_origin_client, "127.0.0.1", 0, backlog=1024)
    loop = asyncio.get_running_loop()
    transport, _ = await loop.create_datagram_endpoint(_Dns, local_addr=("127.0.0.1", 0))
    ports = {
        "http": server.sockets[0].getsockname()[1],
        "dns": transport.get_extra_info("sockname")[1],
    }
    print(json.dumps(ports), flush=True)
    await asyncio.Event().wait()


# ---------------------------------------------------------------------------------------------
# Processes
# ---------------------------------------------------------------------------------------------


def free_port() -> int:
    with socket.socket() as sock:
        sock.bind(("127.0.0.1", 0))
        port: int = sock.getsockname()[1]
        return port


def process_tree(pid: int) -> list[int]:
    children: dict[int, list[int]] = {}
    for entry in os.listdir("/proc"):
        if entry.isdigit():
            with contextlib.suppress(OSError, IndexError, ValueError):
                with open(f"/proc/{entry}/stat") as handle:
                    ppid = int(handle.read().rsplit(")", 1)[1].split()[1])
                children.setdefault(ppid, []).append(int(entry))
    out, todo = [], [pid]
    while todo:
        current = todo.pop()
        out.append(current)
        todo.extend(children.get(current, []))
    return out


def rss_and_fds(pid: int) -> tuple[int, int]:
    """RSS (KiB) and open file descriptors of the process tree of `pid`."""
    rss = fds = 0
    for member in process_tree(pid):
        with contextlib.suppress(OSError):
            with open(f"/proc/{member}/status") as handle:
                rss += next(int(line.split()[1]) for line in handle if line.startswith("VmRSS:"))
            fds += len(os.listdir(f"/proc/{member}/fd"))
    return rss, fds


@dataclass
class Rig:
    tmp: str
    servers: subprocess.Popen[str]
    proxy: subprocess.Popen[bytes]
    origin_port: int
    proxy_port: int
    admin_port: int

    def stop(self) -> None:
        for process in (self.proxy, self.servers):
            if process.poll() is None:
                process.send_signal(signal.SIGTERM)
                try:
                    process.wait(timeout=15)
                except subprocess.TimeoutExpired:
                    process.kill()
                    process.wait(timeout=5)


def start_rig(workers: int) -> Rig:
    tmp = tempfile.mkdtemp(prefix="egressgate-soak-")
    servers = subprocess.Popen(
        [sys.executable, os.path.abspath(__file__), "--serve"],
        stdout=subprocess.PIPE, stdin=subprocess.DEVNULL, text=True, start_new_session=True,
    )  # fmt: skip
    assert servers.stdout is not None
    ports = json.loads(servers.stdout.readline())
    proxy_port, admin_port = free_port(), free_port()
    config = os.path.join(tmp, "soak.yaml")
    with open(config, "w") as handle:
        handle.write(
            f"listen: 127.0.0.1:{proxy_port}\n"
            f"admin_listen: 127.0.0.1:{admin_port}\n"
            'allow: [".soak.test"]\n'
            f"connect_ports: [{ports['http']}]\n"
            f"http_ports: [{ports['http']}]\n"
            'allow_private: ["127.0.0.1/32"]\n'
            f'nameservers: ["127.0.0.1:{ports["dns"]}"]\n'
            f"access_log: {tmp}/access.log\n"
            # Idle pooled upstream connections close after 1 s, so that a quiesced sample (taken
            # QUIESCE_S after the traffic stops) counts no pool left-overs: any fd more is a leak.
            # The keep-alive clients send back to back, so the pool is still used under load.
            f"limits: {{upstream_idle_s: {UPSTREAM_IDLE_S}}}\n"
            f"workers: {workers}\n"
        )
    log = open(os.path.join(tmp, "proxy.stderr"), "wb")  # noqa: SIM115 (the child keeps it)
    proxy = subprocess.Popen(
        [sys.executable, "-m", "egressgate", "run", "--config", config],
        cwd=ROOT, env={**os.environ, "PYTHONPATH": ROOT}, stdout=log, stderr=log,
        stdin=subprocess.DEVNULL, start_new_session=True,
    )  # fmt: skip
    log.close()
    rig = Rig(tmp, servers, proxy, ports["http"], proxy_port, admin_port)
    deadline = time.monotonic() + 30
    while time.monotonic() < deadline:
        if proxy.poll() is not None:
            rig.stop()
            sys.exit(f"soak: the proxy exited ({proxy.returncode}); see {tmp}/proxy.stderr")
        with contextlib.suppress(OSError):
            url = f"http://127.0.0.1:{admin_port}/readyz"
            with urllib.request.urlopen(url, timeout=2) as answer:
                if answer.status == 200:
                    return rig
        time.sleep(0.2)
    rig.stop()
    sys.exit(f"soak: the proxy did not become ready in 30 s; see {tmp}/proxy.stderr")


# ---------------------------------------------------------------------------------------------
# Traffic
# ---------------------------------------------------------------------------------------------


class Unexpected(Exception):
    """An answer other than the one this kind of request must get."""


async def read_response(reader: asyncio.StreamReader) -> tuple[int, bytes]:
    head = await reader.readuntil(b"\r\n\r\n")
    status = int(head[9:12])
    length = 0
    for line in head.split(b"\r\n")[1:]:
        name, _, value = line.partition(b":")
        if name.strip().lower() == b"content-length":
            length = int(value)
    body = await reader.readexactly(length) if length else b""
    return status, body


def expect(status: int, body: bytes, want: int, what: str) -> None:
    if status != want or (want == 200 and body != ORIGIN_BODY):
        raise Unexpected(f"{what}: {status} {body[:80]!r}")


@dataclass
class KeepAlive:
    reader: asyncio.StreamReader | None = None
    writer: asyncio.StreamWriter | None = None
    used: int = 0
    lock: asyncio.Lock = field(default_factory=asyncio.Lock)

    def close(self) -> None:
        if self.writer is not None:
            self.writer.close()
        self.reader = self.writer = None
        self.used = 0


@dataclass
class Interval:
    requests: int = 0
    errors: int = 0
    overload: int = 0
    latencies_ms: list[float] = field(default_factory=list)
    kinds: dict[str, int] = field(default_factory=dict)
    first_errors: list[str] = field(default_factory=list)


class Traffic:
    def __init__(self, proxy_port: int, origin_port: int, rate: float, seed: int) -> None:
        self.proxy = ("127.0.0.1", proxy_port)
        self.origin_port = origin_port
        self.rate = rate
        self.rng = random.Random(seed)
        self.kinds = [kind for kind, weight in MIX for _ in range(weight)]
        self.pool = [KeepAlive() for _ in range(KEEPALIVE_CONNECTIONS)]
        self.tasks: set[asyncio.Task[None]] = set()
        self.interval = Interval()
        self.paused = False

    def name(self, prefix: str = "www") -> str:
        return f"{prefix}{self.rng.randrange(NAMES)}.soak.test"

    async def run_for(self, seconds: float) -> None:
        """Start requests at the fixed rate for `seconds` (bounded in-flight count)."""
        period = 1.0 / self.rate
        start = time.monotonic()
        next_at = start
        while (now := time.monotonic()) < start + seconds:
            if now < next_at:
                await asyncio.sleep(next_at - now)
                continue
            next_at += period
            if len(self.tasks) >= MAX_IN_FLIGHT:
                self.interval.overload += 1
                continue
            # self.tasks keeps the reference that spawn() would (bench/ does not import the
            # proxy's package).
            task = asyncio.get_running_loop().create_task(self.one(self.rng.choice(self.kinds)))
            self.tasks.add(task)
            task.add_done_callback(self.tasks.discard)

    async def quiesce(self) -> None:
        """Let in-flight requests finish (bounded) and close the keep-alive connections."""
        if self.tasks:
            await asyncio.wait(set(self.tasks), timeout=REQUEST_TIMEOUT_S + 5)
        for connection in self.pool:
            async with connection.lock:
                connection.close()

    async def one(self, kind: str) -> None:
        start = time.monotonic()
        interval = self.interval
        try:
            await asyncio.wait_for(getattr(self, "_" + kind.replace("-", "_"))(), REQUEST_TIMEOUT_S)
        except (Unexpected, OSError, TimeoutError, asyncio.IncompleteReadError,
                asyncio.LimitOverrunError, ValueError) as exc:  # fmt: skip
            interval.errors += 1
            if len(interval.first_errors) < 5:
                interval.first_errors.append(f"{kind}: {type(exc).__name__}: {exc}")
        interval.requests += 1
        interval.kinds[kind] = interval.kinds.get(kind, 0) + 1
        interval.latencies_ms.append((time.monotonic() - start) * 1000.0)

    async def _exchange(self, request: bytes) -> tuple[int, bytes]:
        reader, writer = await asyncio.open_connection(*self.proxy)
        try:
            writer.write(request)
            return await read_response(reader)
        finally:
            writer.close()

    def _get(self, host: str, close: bool = True) -> bytes:
        authority = f"{host}:{self.origin_port}"
        return (
            f"GET http://{authority}/soak HTTP/1.1\r\nHost: {authority}\r\n"
            + ("Connection: close\r\n" if close else "")
            + "\r\n"
        ).encode()

    async def _http(self) -> None:
        expect(*await self._exchange(self._get(self.name())), 200, "http")

    async def _http_keepalive(self) -> None:
        connection = self.rng.choice(self.pool)
        if connection.lock.locked():
            await self._http()  # that connection is busy: this request takes a new one
            return
        async with connection.lock:
            if connection.writer is None or connection.used >= KEEPALIVE_REQUESTS:
                connection.close()
                connection.reader, connection.writer = await asyncio.open_connection(*self.proxy)
            assert connection.reader is not None
            connection.used += 1
            try:
                connection.writer.write(self._get(self.name(), close=False))
                expect(*await read_response(connection.reader), 200, "http-keepalive")
            except BaseException:
                connection.close()
                raise

    async def _http_denied(self) -> None:
        request = self._get(f"denied{self.rng.randrange(NAMES)}.example.test")
        expect(*await self._exchange(request), 403, "http-denied")

    async def _private_address(self) -> None:
        expect(*await self._exchange(self._get("internal.soak.test")), 403, "private-address")

    def _connect_head(self, host: str) -> bytes:
        authority = f"{host}:{self.origin_port}"
        return f"CONNECT {authority} HTTP/1.1\r\nHost: {authority}\r\n\r\n".encode()

    async def _connect(self) -> None:
        host = self.name()
        reader, writer = await asyncio.open_connection(*self.proxy)
        try:
            writer.write(self._connect_head(host))
            head = await reader.readuntil(b"\r\n\r\n")
            if head[9:12] != b"200":
                raise Unexpected(f"connect: {head[:80]!r}")
            writer.write(
                b"GET /soak HTTP/1.1\r\nHost: %b\r\nConnection: close\r\n\r\n" % host.encode()
            )
            expect(*await read_response(reader), 200, "connect")
        finally:
            writer.close()

    async def _connect_denied(self) -> None:
        request = self._connect_head(f"denied{self.rng.randrange(NAMES)}.example.test")
        expect(*await self._exchange(request), 403, "connect-denied")

    async def _nxdomain(self) -> None:
        expect(*await self._exchange(self._connect_head(self.name("nx"))), 502, "nxdomain")


# ---------------------------------------------------------------------------------------------
# Samples, verdict, output
# ---------------------------------------------------------------------------------------------


@dataclass
class Sample:
    t_s: float
    rss_kib: int
    fds: int
    rss_load_kib: int | None
    fds_load: int | None
    requests: int
    rate_rps: float
    errors: int
    overload: int
    p50_ms: float | None
    p99_ms: float | None
    first_errors: list[str]


def percentile(values: list[float], fraction: float) -> float | None:
    if not values:
        return None
    ordered = sorted(values)
    return round(ordered[min(len(ordered) - 1, int(fraction * len(ordered)))], 2)


def spread(values: list[int]) -> float:
    """max/min - 1: how far the series moved (0.03 = within 3 %)."""
    return max(values) / min(values) - 1.0 if values and min(values) > 0 else float("inf")


async def soak(args: argparse.Namespace, rig: Rig) -> list[Sample]:
    traffic = Traffic(rig.proxy_port, rig.origin_port, args.rate, args.seed)
    rss, fds = rss_and_fds(rig.proxy.pid)
    samples = [Sample(0.0, rss, fds, None, None, 0, 0.0, 0, 0, None, None, [])]
    print_row(samples[0])
    start = time.monotonic()
    duration = args.minutes * 60.0
    while (elapsed := time.monotonic() - start) < duration - 1:
        period = min(args.sample_s, duration - elapsed)
        ran_from = time.monotonic()
        await traffic.run_for(period)
        load_rss, load_fds = rss_and_fds(rig.proxy.pid)
        ran_s = time.monotonic() - ran_from
        await traffic.quiesce()
        await asyncio.sleep(QUIESCE_S)
        rss, fds = rss_and_fds(rig.proxy.pid)
        interval, traffic.interval = traffic.interval, Interval()
        sample = Sample(
            round(time.monotonic() - start, 1), rss, fds, load_rss, load_fds,
            interval.requests, round(interval.requests / ran_s, 1), interval.errors,
            interval.overload, percentile(interval.latencies_ms, 0.5),
            percentile(interval.latencies_ms, 0.99), interval.first_errors,
        )  # fmt: skip
        samples.append(sample)
        print_row(sample)
        if rig.proxy.poll() is not None:
            print(f"soak: the proxy exited ({rig.proxy.returncode})", file=sys.stderr)
            break
    return samples


HEADER = (
    f"{'t_s':>7} {'rss_MiB':>8} {'fds':>5} {'rss_load':>8} {'fds_load':>8} {'requests':>8} "
    f"{'req/s':>7} {'errors':>6} {'p50_ms':>7} {'p99_ms':>7}"
)


def print_row(s: Sample) -> None:
    if s.t_s == 0.0:
        print(HEADER, flush=True)
    load_rss = f"{s.rss_load_kib / 1024:.1f}" if s.rss_load_kib else "-"
    print(
        f"{s.t_s:>7.1f} {s.rss_kib / 1024:>8.1f} {s.fds:>5} {load_rss:>8} "
        f"{s.fds_load if s.fds_load is not None else '-':>8} {s.requests:>8} {s.rate_rps:>7.1f} "
        f"{s.errors:>6} {s.p50_ms if s.p50_ms is not None else '-':>7} "
        f"{s.p99_ms if s.p99_ms is not None else '-':>7}",
        flush=True,
    )
    for error in s.first_errors:
        print(f"        error: {error}", flush=True)


def verdict(samples: list[Sample], warmup_s: float) -> dict[str, object]:
    steady = [s for s in samples if s.t_s >= warmup_s]
    rss_spread = spread([s.rss_kib for s in steady])
    fds_spread = spread([s.fds for s in steady])
    errors = sum(s.errors for s in samples)
    return {
        "steady_samples": len(steady),
        "rss_spread": round(rss_spread, 4),
        "fds_spread": round(fds_spread, 4),
        "rss_flat": rss_spread <= FLAT_LIMIT,
        "fds_flat": fds_spread <= FLAT_LIMIT,
        "requests": sum(s.requests for s in samples),
        "errors": errors,
        "overload": sum(s.overload for s in samples),
        "ok": len(steady) >= 2
        and rss_spread <= FLAT_LIMIT
        and fds_spread <= FLAT_LIMIT
        and errors == 0,
    }


def plot(samples: list[Sample], warmup_s: float, path: str, title: str) -> None:
    try:
        import matplotlib  # optional: the chart extra

        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        print(
            "soak: matplotlib is not installed (pip install -e '.[chart]'): no plot",
            file=sys.stderr,
        )
        return
    minutes = [s.t_s / 60 for s in samples]
    fig, (top, bottom) = plt.subplots(2, 1, figsize=(8, 6), sharex=True)
    steady = [s for s in samples if s.t_s >= warmup_s]
    for axis, values, load, label in (
        (top, [s.rss_kib / 1024 for s in samples], [s.rss_load_kib for s in samples], "RSS (MiB)"),
        (bottom, [s.fds for s in samples], [s.fds_load for s in samples], "open fds"),
    ):
        axis.plot(minutes, values, "o-", label="quiesced sample")
        scale = 1024 if label.startswith("RSS") else 1
        points = [(m, v / scale) for m, v in zip(minutes, load, strict=True) if v is not None]
        if points:
            axis.plot(*zip(*points, strict=True), "x:", color="grey", label="under load")
        if steady:
            base = min(values[samples.index(s)] for s in steady)
            axis.axhspan(base, base * (1 + FLAT_LIMIT), color="green", alpha=0.12,
                         label="+5 % of the steady minimum")  # fmt: skip
        axis.axvline(warmup_s / 60, color="orange", linestyle="--", label="end of warm-up")
        axis.set_ylabel(label)
        axis.set_ylim(bottom=0)
        axis.grid(alpha=0.3)
    top.legend(fontsize=8, loc="lower right")
    bottom.set_xlabel("minutes")
    fig.suptitle(title, fontsize=10)
    fig.tight_layout()
    fig.savefig(path, dpi=100)
    print(f"soak: plot written to {path}", file=sys.stderr)


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.split("\n\n")[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--rate", type=float, default=200.0, help="requests started per second")
    parser.add_argument("--sample-s", type=float, default=30.0)
    parser.add_argument("--warmup-s", type=float, default=120.0)
    parser.add_argument("--workers", type=int, default=1)
    parser.add_argument("--seed", type=int, default=1)
    parser.add_argument("--json", help="write samples and verdict here")
    parser.add_argument("--plot", help="write a PNG plot here")
    parser.add_argument("--keep-tmp", action="store_true", help="keep the config and logs")
    parser.add_argument("--serve", action="store_true", help=argparse.SUPPRESS)
    args = parser.parse_args()
    if args.serve:
        asyncio.run(serve())
        return 0
    rig = start_rig(args.workers)
    try:
        samples = asyncio.run(soak(args, rig))
    finally:
        rig.stop()
        if not args.keep_tmp:
            for name in os.listdir(rig.tmp):
                os.unlink(os.path.join(rig.tmp, name))
            os.rmdir(rig.tmp)
        else:
            print(f"soak: kept {rig.tmp}", file=sys.stderr)
    result = verdict(samples, args.warmup_s)
    print(
        f"after warm-up ({args.warmup_s:g} s): RSS spread {result['rss_spread']:.1%}, fds spread "
        f"{result['fds_spread']:.1%} (limit {FLAT_LIMIT:.0%}); {result['requests']} requests, "
        f"{result['errors']} errors, {result['overload']} not started (in-flight cap): "
        + ("PASS" if result["ok"] else "FAIL")
    )
    when = time.strftime("%Y-%m-%d %H:%M UTC", time.gmtime())
    settings = {"minutes": args.minutes, "rate": args.rate, "sample_s": args.sample_s,
                "warmup_s": args.warmup_s, "workers": args.workers, "seed": args.seed}  # fmt: skip
    if args.json:
        with open(args.json, "w") as handle:
            doc = {"when": when, "settings": settings, "verdict": result,
                   "samples": [asdict(s) for s in samples]}  # fmt: skip
            json.dump(doc, handle, indent=2)
    if args.plot:
        title = (
            f"egressgate soak {when}: {args.rate:g} req/s mixed, {args.minutes:g} min; "
            f"RSS {result['rss_spread']:.1%}, fds {result['fds_spread']:.1%} after warm-up"
        )
        plot(samples, args.warmup_s, args.plot, title)
    return 0 if result["ok"] else 1


if __name__ == "__main__":
    sys.exit(main())
