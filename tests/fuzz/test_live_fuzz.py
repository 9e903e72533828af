"""Live fuzz: random and mutated request heads against a running proxy (issue 12, item 6).

A real proxy (allow fuzz.test → a loopback origin, header_timeout_s 1) gets LIVE_CASES inputs
(300 by default; EGRESSGATE_FUZZ=deep: 3000), each on its own connection, from a seeded
generator (tests/fuzz/heads.py; EGRESSGATE_FUZZ_SEED replays a run): mutations of valid GET /
POST / CONNECT / Upgrade / pipelined heads (byte flips, header duplication, CL/TE combinations,
overlong lines, NULs, bare CR/LF, obs-fold, huge numbers, odd methods, versions and targets,
truncation) and random bytes.

Every input must end in one of these, within its bound:
- an HTTP status line: a refusal (4xx/5xx) or service (1xx-3xx: the origin answered, 200 for a
  CONNECT, 100 Continue);
- for an input whose first request head is complete but whose declared body is not all there,
  no answer yet (the proxy is rightly waiting for the body; the next test input is unaffected).
The proxy's own parser (http1/parser.py, sans-IO) is the oracle for "complete head, pending
body"; an incomplete head must get 408 after header_timeout_s. A silent close, or silence for a
complete head or a malformed one, is a failure. Afterwards: the process still runs, its stderr
has no traceback ("Traceback", "Task exception was never retrieved", "Exception in callback"),
and a normal request and a CONNECT tunnel still succeed.
"""

from __future__ import annotations

import random
import socket
import time
from collections import Counter
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass

from egressgate.errors import ProtocolError
from egressgate.http1.events import RequestHead, TunnelStart
from egressgate.http1.parser import RequestParser
from egressgate.http1.semantics import request_framing
from tests.fuzz.budget import LIVE_CASES, LIVE_SEED
from tests.fuzz.heads import mutated_head
from tests.integration.helpers_core import start_proxy
from tests.support.clients import curl, open_connect_tunnel
from tests.support.dns import DnsServer
from tests.support.origin import OriginFactory
from tests.support.proxy import ProxyFactory, ProxyProcess

HEADER_TIMEOUT_S = 1.0
CASE_DEADLINE_S = HEADER_TIMEOUT_S + 4.0  # the sweeper runs twice a second; a busy machine
PARALLEL = 8
LIMITS = {"header_timeout_s": HEADER_TIMEOUT_S, "max_request_line_bytes": 8192,
          "max_header_bytes": 32768}  # fmt: skip
CRASH_MARKERS = ("Traceback", "Task exception was never retrieved", "Exception in callback")


@dataclass(frozen=True, slots=True)
class Case:
    index: int
    data: bytes
    mutations: tuple[str, ...]


@dataclass(frozen=True, slots=True)
class Outcome:
    case: Case
    status: int | None  # None: no status line
    ending: str  # "answered", "closed", "reset", "silent"
    elapsed_s: float


def cases(port: int) -> list[Case]:
    rng = random.Random(LIVE_SEED)
    out = []
    for index in range(LIVE_CASES):
        if rng.random() < 0.1:
            data = bytes(rng.randrange(256) for _ in range(rng.randint(1, 200)))
            out.append(Case(index, data, ("random",)))
        else:
            data, mutations = mutated_head(rng, port)
            out.append(Case(index, data, mutations))
    return out


def run_case(proxy: tuple[str, int], case: Case) -> Outcome:
    """Send the input (without half-closing: a client that stops talking), read the status."""
    start = time.monotonic()
    buffer = b""
    ending = "silent"
    with socket.create_connection(proxy, timeout=CASE_DEADLINE_S) as sock:
        try:
            sock.sendall(case.data)
        except OSError:
            pass  # refused while we were still sending: the answer may be there to read
        while time.monotonic() - start < CASE_DEADLINE_S:
            sock.settimeout(max(0.05, CASE_DEADLINE_S - (time.monotonic() - start)))
            try:
                chunk = sock.recv(65536)
            except TimeoutError:
                break
            except ConnectionResetError:
                ending = "reset"
                break
            if not chunk:
                ending = "closed"
                break
            buffer += chunk
            if b"\r\n" in buffer:
                ending = "answered"
                break
    status = None
    first = buffer.split(b"\r\n", 1)[0]
    if first.startswith(b"HTTP/1.") and len(first) >= 12 and first[9:12].isdigit():
        status = int(first[9:12])
    return Outcome(case, status, ending, time.monotonic() - start)


def waits_for_a_body(data: bytes) -> bool:
    """The oracle: the first request head is complete and fine, and its body is not all here."""
    parser = RequestParser(LIMITS["max_request_line_bytes"], LIMITS["max_header_bytes"])
    try:
        events = parser.feed(data)
        heads = [e for e in events if isinstance(e, RequestHead)]
        if not heads or heads[0].method == b"CONNECT":
            return False
        framing = request_framing(heads[0])
    except ProtocolError:
        return False
    if any(isinstance(e, TunnelStart) for e in events):
        return False
    ended = sum(1 for e in events if not isinstance(e, RequestHead | bytes | TunnelStart))
    return framing.has_body and ended == 0


def refuses_the_first_request(data: bytes) -> bool:
    """The oracle: the proxy's parser raises before the first head is complete. Fed byte by
    byte over the first 4 KiB, so that a good first head is seen before a bad second one."""
    parser = RequestParser(LIMITS["max_request_line_bytes"], LIMITS["max_header_bytes"])
    pieces = [data[i : i + 1] for i in range(min(len(data), 4096))]
    pieces += [data[i : i + 4096] for i in range(4096, len(data), 4096)]
    try:
        for piece in pieces:
            if parser.feed(piece):
                return False  # a head (or more) came out first
    except ProtocolError:
        return True
    return False


def acceptable(outcome: Outcome) -> bool:
    if outcome.status is not None:
        if refuses_the_first_request(outcome.case.data):
            return 400 <= outcome.status <= 499  # never served what the parser refuses
        return 100 <= outcome.status <= 599
    return outcome.ending == "silent" and waits_for_a_body(outcome.case.data)


def describe(outcomes: list[Outcome], proxy: ProxyProcess) -> str:
    lines = [f"seed {LIVE_SEED}, {len(outcomes)} cases"]
    lines.extend(
        f"  case {o.case.index} {o.case.mutations}: status {o.status}, {o.ending} after "
        f"{o.elapsed_s:.1f}s; input {o.case.data[:300]!r}"
        for o in outcomes[:20]
    )
    return "\n".join(lines) + "\n" + proxy.describe(60)


def test_random_and_mutated_heads_all_get_an_answer_and_the_proxy_keeps_serving(
    origin_factory: OriginFactory, dns_server: DnsServer, proxy_factory: ProxyFactory
) -> None:
    origin = origin_factory("fuzz")
    dns_server.records["fuzz.test"] = [origin.host]
    proxy = start_proxy(proxy_factory, allow=["fuzz.test"], ports=[origin.port], limits=LIMITS)
    with ThreadPoolExecutor(PARALLEL) as pool:
        outcomes = list(pool.map(lambda c: run_case(proxy.proxy_address, c), cases(origin.port)))

    bad = [o for o in outcomes if not acceptable(o)]
    assert not bad, "inputs without a proper answer:\n" + describe(bad, proxy)
    assert proxy.returncode is None, proxy.describe()
    crashes = [line for line in proxy.stderr_lines if any(m in line for m in CRASH_MARKERS)]
    assert not crashes, "the proxy logged a traceback:\n" + proxy.describe(200)

    normal = curl([origin.url("/", "fuzz.test")], proxy=proxy.proxy_url)
    assert (normal.status, normal.body) == (200, b"hello from fuzz"), normal.stderr
    with open_connect_tunnel(proxy.proxy_address, origin.authority("fuzz.test")) as tunnel:
        assert tunnel.status == 200
        tunnel.sock.sendall(b"GET / HTTP/1.1\r\nHost: fuzz.test\r\nConnection: close\r\n\r\n")
        assert tunnel.sock.recv(65536).startswith(b"HTTP/1.1 200")

    refused_by_model = sum(refuses_the_first_request(o.case.data) for o in outcomes)
    assert refused_by_model > len(outcomes) // 10, "the generator no longer makes bad heads"
    statuses = Counter(o.status for o in outcomes)
    print(f"live fuzz, seed {LIVE_SEED}: statuses {sorted(statuses.items(), key=str)}")
