"""Prometheus metrics: every metric name is defined here.

The data path only bumps plain integers in dicts (no locks, no label lookups per request); a
custom collector turns them into Prometheus metric families at scrape time through the standard
`prometheus_client` exposition. State is a JSON-able snapshot so that the metrics of several
worker processes can be summed (see runtime/workers.py).
"""

from __future__ import annotations

import bisect
import platform
from collections.abc import Iterable, Iterator
from typing import Any

from prometheus_client import ProcessCollector
from prometheus_client.core import (
    CounterMetricFamily,
    GaugeMetricFamily,
    HistogramMetricFamily,
    Metric,
)
from prometheus_client.registry import Collector

from egressgate import __version__
from egressgate.errors import ProxyFailure

PREFIX = "egressgate"
DNS_BUCKETS_S = (0.001, 0.0025, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 0.5, 1.0, 2.5, 5.0)

REQUESTS = f"{PREFIX}_requests"
BYTES = f"{PREFIX}_bytes"
ACTIVE_CONNECTIONS = f"{PREFIX}_active_connections"
ACTIVE_TUNNELS = f"{PREFIX}_active_tunnels"
UPSTREAM_ERRORS = f"{PREFIX}_upstream_errors"
DNS_LOOKUP = f"{PREFIX}_dns_lookup_seconds"
DNS_QUERIES = f"{PREFIX}_dns_queries"
RELOADS = f"{PREFIX}_reloads"
CONFIG_GENERATION = f"{PREFIX}_config_generation"
CONFIG_INFO = f"{PREFIX}_config_info"
ACCESS_LOG_ERRORS = f"{PREFIX}_access_log_errors"
INTERNAL_ERRORS = f"{PREFIX}_internal_errors"
LOG_DROPPED = f"{PREFIX}_log_dropped"
RELOAD_WATCHER_ERRORS = f"{PREFIX}_reload_watcher_errors"
CONNECTIONS_REJECTED = f"{PREFIX}_connections_rejected"
REVOKED = f"{PREFIX}_revoked"
WORKERS = f"{PREFIX}_workers"
ACCEPT_PAUSES = f"{PREFIX}_accept_pauses"
TLS_HANDSHAKE_FAILURES = f"{PREFIX}_tls_handshake_failures"
AUTH_FAILURES = f"{PREFIX}_auth_failures"
BUILD_INFO = f"{PREFIX}_build_info"
# `process_*` (CPU seconds, resident memory, open fds, start time) come from prometheus_client's
# ProcessCollector, for the process that serves /metrics (the supervisor when workers > 1).


class Metrics:
    """Counters of one process. Cheap to bump; exported by MetricsCollector."""

    def __init__(self) -> None:
        self.requests: dict[tuple[str, str, str, str], int] = {}
        self.bytes_up: dict[str, int] = {}
        self.bytes_down: dict[str, int] = {}
        self.upstream_errors: dict[str, int] = {}
        self.reloads: dict[str, int] = {"success": 0, "failure": 0}
        self.dns_counts: dict[str, list[int]] = {}
        self.dns_sums: dict[str, float] = {}
        self.dns_queries: dict[tuple[str, str], int] = {}  # the DNS guard: (decision, reason)
        self.access_log_errors = 0
        self.internal_errors = 0  # unexpected exceptions caught by proxy/failsafe.py
        self.log_dropped = 0  # access records dropped: the log writer was too far behind
        self.reload_watcher_errors = 0  # unexpected exceptions in the config-file watcher
        self.connections_rejected = 0
        self.revoked: dict[str, int] = {}  # by kind: tunnels and requests ended by a reload
        self.accept_pauses = 0  # accept loop paused on EMFILE/ENFILE (proxy/acceptor.py)
        self.tls_handshake_failures: dict[str, int] = {}  # by cause
        self.auth_failures = 0
        self.active_connections = 0
        self.active_tunnels = 0
        self.config_generation = 0
        self.config_hash = ""
        self.config_source = ""

    def count_request(
        self, kind: str, decision: str, reason: str, policy: str, bytes_up: int, bytes_down: int
    ) -> None:
        key = (kind, decision, reason, policy)
        self.requests[key] = self.requests.get(key, 0) + 1
        if bytes_up:
            self.bytes_up[kind] = self.bytes_up.get(kind, 0) + bytes_up
        if bytes_down:
            self.bytes_down[kind] = self.bytes_down.get(kind, 0) + bytes_down

    def count_dns_query(self, decision: str, reason: str) -> None:
        key = (decision, reason)
        self.dns_queries[key] = self.dns_queries.get(key, 0) + 1

    def count_upstream_error(self, reason: str) -> None:
        self.upstream_errors[reason] = self.upstream_errors.get(reason, 0) + 1

    def count_upstream_failure(self, error: ProxyFailure) -> None:
        """One failed connect attempt (net/connect.py's strategy reports each)."""
        self.count_upstream_error(error.reason.value)

    def observe_dns(self, seconds: float, result: str) -> None:
        counts = self.dns_counts.get(result)
        if counts is None:
            counts = self.dns_counts[result] = [0] * (len(DNS_BUCKETS_S) + 1)
            self.dns_sums[result] = 0.0
        counts[bisect.bisect_left(DNS_BUCKETS_S, seconds)] += 1
        self.dns_sums[result] += seconds

    def snapshot(self) -> dict[str, Any]:
        """A JSON-able copy of every value (for aggregation across worker processes)."""
        # Fix (unit tests, test_metrics.py): the dicts and bucket lists were the live ones, so a
        # "snapshot" kept changing as requests were counted (and a caller could corrupt them).
        return {
            "requests": [[*k, v] for k, v in self.requests.items()],
            "bytes_up": dict(self.bytes_up),
            "bytes_down": dict(self.bytes_down),
            "upstream_errors": dict(self.upstream_errors),
            "reloads": dict(self.reloads),
            "dns_counts": {result: list(counts) for result, counts in self.dns_counts.items()},
            "dns_sums": dict(self.dns_sums),
            "dns_queries": [[*k, v] for k, v in self.dns_queries.items()],
            "access_log_errors": self.access_log_errors,
            "internal_errors": self.internal_errors,
            "log_dropped": self.log_dropped,
            "reload_watcher_errors": self.reload_watcher_errors,
            "connections_rejected": self.connections_rejected,
            "revoked": dict(self.revoked),
            "accept_pauses": self.accept_pauses,
            "tls_handshake_failures": dict(self.tls_handshake_failures),
            "auth_failures": self.auth_failures,
            "active_connections": self.active_connections,
            "active_tunnels": self.active_tunnels,
            "config_generation": self.config_generation,
            "config_hash": self.config_hash,
            "config_source": self.config_source,
        }


def merge(snapshots: Iterable[dict[str, Any]]) -> dict[str, Any]:
    """Sum counters and gauges of several snapshots; config info from the newest generation."""
    total: dict[str, Any] = Metrics().snapshot()
    requests: dict[tuple[str, ...], int] = {}
    dns_queries: dict[tuple[str, ...], int] = {}
    for snap in snapshots:
        for *key, value in snap["requests"]:
            requests[tuple(key)] = requests.get(tuple(key), 0) + value
        for *key, value in snap.get("dns_queries", ()):
            dns_queries[tuple(key)] = dns_queries.get(tuple(key), 0) + value
        for name in (
            "bytes_up",
            "bytes_down",
            "upstream_errors",
            "reloads",
            "dns_sums",
            "revoked",
            "tls_handshake_failures",
        ):
            for key, value in snap.get(name, {}).items():
                total[name][key] = total[name].get(key, 0) + value
        for result, counts in snap["dns_counts"].items():
            mine = total["dns_counts"].setdefault(result, [0] * len(counts))
            total["dns_counts"][result] = [a + b for a, b in zip(mine, counts, strict=True)]
        for name in (
            "access_log_errors",
            "internal_errors",
            "log_dropped",
            "reload_watcher_errors",
            "connections_rejected",
            "accept_pauses",
            "auth_failures",
            "active_connections",
            "active_tunnels",
        ):
            total[name] += snap.get(name, 0)
        if snap["config_generation"] >= total["config_generation"]:
            for name in ("config_generation", "config_hash", "config_source"):
                total[name] = snap[name]
    total["requests"] = [[*k, v] for k, v in requests.items()]
    total["dns_queries"] = [[*k, v] for k, v in dns_queries.items()]
    return total


class MetricsCollector(Collector):
    """Exposes a snapshot source (one process, or the merged workers) to prometheus_client."""

    def __init__(self, source: Any) -> None:
        self._source = source  # callable returning a snapshot dict
        self._process = ProcessCollector(registry=None)  # read at scrape time, not registered
        self._build = _build_info()

    def collect(self) -> Iterator[Metric]:
        snap: dict[str, Any] = self._source()
        yield from _families(snap)
        yield self._build
        yield from self._process.collect()


def _build_info() -> Metric:
    info = GaugeMetricFamily(
        BUILD_INFO, "The running egressgate (value always 1)", labels=["version", "python"]
    )
    info.add_metric([__version__, platform.python_version()], 1)
    return info


def _families(snap: dict[str, Any]) -> Iterator[Metric]:
    requests = CounterMetricFamily(
        REQUESTS,
        "Requests and tunnels by kind, decision, reason and deciding policy",
        labels=["kind", "decision", "reason", "policy"],
    )
    for kind, decision, reason, policy, value in snap["requests"]:
        requests.add_metric([kind, decision, reason, policy], value)
    yield requests
    relayed = CounterMetricFamily(
        BYTES, "Bytes relayed; up = client to destination", labels=["direction", "kind"]
    )
    for direction in ("up", "down"):
        for kind, value in snap[f"bytes_{direction}"].items():
            relayed.add_metric([direction, kind], value)
    yield relayed
    yield GaugeMetricFamily(
        ACTIVE_CONNECTIONS, "Open client connections", value=snap["active_connections"]
    )
    yield GaugeMetricFamily(ACTIVE_TUNNELS, "Open CONNECT tunnels", value=snap["active_tunnels"])
    errors = CounterMetricFamily(
        UPSTREAM_ERRORS, "Failures reaching destinations, by kind", labels=["reason"]
    )
    for reason, value in snap["upstream_errors"].items():
        errors.add_metric([reason], value)
    yield errors
    yield _dns_histogram(snap)
    queries = CounterMetricFamily(
        DNS_QUERIES,
        "Queries answered by the DNS guard (dns_listen), by decision and reason",
        labels=["decision", "reason"],
    )
    for decision, reason, value in snap.get("dns_queries", ()):
        queries.add_metric([decision, reason], value)
    yield queries
    reloads = CounterMetricFamily(RELOADS, "Config reloads by result", labels=["result"])
    for result, value in snap["reloads"].items():
        reloads.add_metric([result], value)
    yield reloads
    yield GaugeMetricFamily(
        CONFIG_GENERATION,
        "Generation of the policy in force (1 = start)",
        value=snap["config_generation"],
    )
    info = GaugeMetricFamily(
        CONFIG_INFO, "The config in force (value always 1)", labels=["sha256", "source"]
    )
    info.add_metric([snap["config_hash"], snap["config_source"]], 1)
    yield info
    yield CounterMetricFamily(
        INTERNAL_ERRORS,
        "Unexpected exceptions in a connection's work (each answered 502 or cut, and logged)",
        value=snap.get("internal_errors", 0),
    )
    yield CounterMetricFamily(
        ACCESS_LOG_ERRORS,
        "Access-log batches that could not be written",
        value=snap["access_log_errors"],
    )
    yield CounterMetricFamily(
        LOG_DROPPED,
        "Access-log records dropped because the log writer was too far behind "
        "(limits.access_log_buffer_bytes)",
        value=snap["log_dropped"],
    )
    yield CounterMetricFamily(
        RELOAD_WATCHER_ERRORS,
        "Unexpected errors in the config-file watcher (it keeps polling)",
        value=snap["reload_watcher_errors"],
    )
    yield CounterMetricFamily(
        CONNECTIONS_REJECTED,
        "Connections refused at max_connections",
        value=snap["connections_rejected"],
    )
    yield CounterMetricFamily(
        ACCEPT_PAUSES,
        "Times the accept loop paused because the process was out of file descriptors",
        value=snap.get("accept_pauses", 0),
    )
    handshakes = CounterMetricFamily(
        TLS_HANDSHAKE_FAILURES,
        "TLS-listener connections that never completed a handshake, by cause",
        labels=["cause"],
    )
    for cause, value in snap.get("tls_handshake_failures", {}).items():
        handshakes.add_metric([cause], value)
    yield handshakes
    yield CounterMetricFamily(
        AUTH_FAILURES,
        "Proxy-Authorization attempts refused (wrong user or password, malformed)",
        value=snap.get("auth_failures", 0),
    )
    revoked = CounterMetricFamily(
        REVOKED,
        "Tunnels and requests ended because a reload denied their destination",
        labels=["kind"],
    )
    for kind, value in snap.get("revoked", {}).items():
        revoked.add_metric([kind], value)
    yield revoked
    if "workers" in snap:
        yield GaugeMetricFamily(WORKERS, "Worker processes reporting", value=snap["workers"])


def _dns_histogram(snap: dict[str, Any]) -> Metric:
    histogram = HistogramMetricFamily(
        DNS_LOOKUP, "DNS lookup latency (cache misses only)", labels=["result"]
    )
    for result, counts in snap["dns_counts"].items():
        cumulative, buckets = 0, []
        for bound, count in zip((*DNS_BUCKETS_S, float("inf")), counts, strict=True):
            cumulative += count
            buckets.append(("+Inf" if bound == float("inf") else str(bound), cumulative))
        histogram.add_metric([result], buckets, sum_value=snap["dns_sums"][result])
    return histogram
