"""Metrics, merge() across worker snapshots, and the Prometheus exposition of MetricsCollector.

The exposition is checked by parsing it back with prometheus_client's own text parser.
"""

from __future__ import annotations

import json
from collections.abc import Callable
from typing import Any

import pytest
from hypothesis import given
from hypothesis import strategies as st
from prometheus_client.exposition import generate_latest
from prometheus_client.parser import text_string_to_metric_families
from prometheus_client.registry import CollectorRegistry

from egressgate.observe.metrics import (
    DNS_BUCKETS_S,
    Metrics,
    MetricsCollector,
    merge,
)

Samples = dict[tuple[str, tuple[tuple[str, str], ...]], float]


def exposition(source: Callable[[], dict[str, Any]]) -> Samples:
    """Every sample of the scrape: (name, sorted labels) → value."""
    registry = CollectorRegistry()
    registry.register(MetricsCollector(source))
    text = generate_latest(registry).decode("utf-8")
    samples: Samples = {}
    for family in text_string_to_metric_families(text):
        for sample in family.samples:
            key = (sample.name, tuple(sorted(sample.labels.items())))
            assert key not in samples, f"duplicate sample {key}"
            samples[key] = sample.value
    return samples


def busy_metrics() -> Metrics:
    metrics = Metrics()
    metrics.count_request("http", "allow", "allowed", "default", 100, 2000)
    metrics.count_request("http", "allow", "allowed", "default", 1, 2)
    metrics.count_request("tunnel", "deny", "host-not-allowed", "ci", 0, 0)
    metrics.count_upstream_error("upstream-refused")
    metrics.observe_dns(0.003, "ok")
    metrics.observe_dns(7.0, "timeout")
    metrics.reloads["success"] += 1
    metrics.access_log_errors = 2
    metrics.connections_rejected = 3
    metrics.active_connections = 4
    metrics.active_tunnels = 1
    metrics.config_generation = 2
    metrics.config_hash = "abc123"
    metrics.config_source = "/etc/egressgate.yaml"
    return metrics


# ---------------------------------------------------------------------------------------------
# Counting and snapshots
# ---------------------------------------------------------------------------------------------


def test_count_request_counts_by_label_set_and_sums_bytes_by_kind() -> None:
    metrics = busy_metrics()
    assert metrics.requests == {
        ("http", "allow", "allowed", "default"): 2,
        ("tunnel", "deny", "host-not-allowed", "ci"): 1,
    }
    assert metrics.bytes_up == {"http": 101}
    assert metrics.bytes_down == {"http": 2002}


@pytest.mark.parametrize(
    ("seconds", "bucket"),
    [
        (0.0, 0),
        (0.001, 0),  # Prometheus buckets are "less than or equal": the bound itself is inside
        (0.0010001, 1),
        (0.0025, 1),
        (5.0, len(DNS_BUCKETS_S) - 1),
        (5.0001, len(DNS_BUCKETS_S)),  # only +Inf
    ],
)
def test_dns_observation_lands_in_the_first_bucket_whose_bound_is_not_below_it(
    seconds: float, bucket: int
) -> None:
    metrics = Metrics()
    metrics.observe_dns(seconds, "ok")
    expected = [0] * (len(DNS_BUCKETS_S) + 1)
    expected[bucket] = 1
    assert metrics.dns_counts["ok"] == expected
    assert metrics.dns_sums["ok"] == seconds


def test_snapshot_is_json_able() -> None:
    snapshot = busy_metrics().snapshot()
    assert json.loads(json.dumps(snapshot)) == snapshot


def test_snapshot_is_a_copy_that_later_counting_does_not_change() -> None:
    metrics = busy_metrics()
    snapshot = metrics.snapshot()
    frozen = json.dumps(snapshot, sort_keys=True)
    metrics.count_request("http", "allow", "allowed", "default", 5, 5)
    metrics.count_upstream_error("upstream-refused")
    metrics.observe_dns(0.003, "ok")
    metrics.reloads["failure"] += 1
    assert json.dumps(snapshot, sort_keys=True) == frozen


# ---------------------------------------------------------------------------------------------
# merge
# ---------------------------------------------------------------------------------------------


def test_merge_sums_counters_and_gauges() -> None:
    first, second = busy_metrics(), busy_metrics()
    second.count_request("tunnel", "allow", "allowed", "ci", 10, 20)
    second.config_generation = 3
    second.config_hash = "def456"
    total = merge([first.snapshot(), second.snapshot()])
    assert sorted(map(tuple, total["requests"])) == [
        ("http", "allow", "allowed", "default", 4),
        ("tunnel", "allow", "allowed", "ci", 1),
        ("tunnel", "deny", "host-not-allowed", "ci", 2),
    ]
    assert total["bytes_up"] == {"http": 202, "tunnel": 10}
    assert total["bytes_down"] == {"http": 4004, "tunnel": 20}
    assert total["upstream_errors"] == {"upstream-refused": 2}
    assert total["reloads"] == {"success": 2, "failure": 0}
    assert total["dns_counts"]["ok"] == [2 * c for c in first.dns_counts["ok"]]
    assert total["dns_sums"] == {"ok": 0.006, "timeout": 14.0}
    assert (total["access_log_errors"], total["connections_rejected"]) == (4, 6)
    assert (total["active_connections"], total["active_tunnels"]) == (8, 2)
    # config info comes from the newest generation, not a sum
    assert (total["config_generation"], total["config_hash"]) == (3, "def456")


def test_merge_of_nothing_is_an_empty_snapshot() -> None:
    assert merge([]) == Metrics().snapshot()


def test_merge_does_not_modify_its_inputs() -> None:
    snapshot = busy_metrics().snapshot()
    frozen = json.dumps(snapshot, sort_keys=True)
    merge([snapshot, snapshot])
    assert json.dumps(snapshot, sort_keys=True) == frozen


_LABEL = st.sampled_from(["http", "tunnel", "allow", "deny", "default", "ci"])


@st.composite
def snapshots(draw: st.DrawFn) -> dict[str, Any]:
    metrics = Metrics()
    for _ in range(draw(st.integers(0, 5))):
        kind, decision, reason, policy = (draw(_LABEL) for _ in range(4))
        up, down = draw(st.integers(0, 10**6)), draw(st.integers(0, 10**6))
        metrics.count_request(kind, decision, reason, policy, up, down)
    for _ in range(draw(st.integers(0, 3))):
        # powers of two and small integers: their float sums do not depend on the order
        seconds = draw(st.sampled_from([2.0**-10, 2.0**-6, 3.0, 9.0]))
        metrics.observe_dns(seconds, draw(_LABEL))
    metrics.active_connections = draw(st.integers(0, 100))
    return metrics.snapshot()


def _canonical(snapshot: dict[str, Any]) -> str:
    return json.dumps({**snapshot, "requests": sorted(snapshot["requests"])}, sort_keys=True)


@given(st.lists(snapshots(), max_size=4), st.lists(snapshots(), max_size=4))
def test_merging_in_groups_equals_merging_all_at_once(
    left: list[dict[str, Any]], right: list[dict[str, Any]]
) -> None:
    assert _canonical(merge([merge(left), merge(right)])) == _canonical(merge(left + right))


# ---------------------------------------------------------------------------------------------
# Prometheus exposition
# ---------------------------------------------------------------------------------------------


def test_collector_output_parses_with_the_prometheus_parser() -> None:
    samples = exposition(busy_metrics().snapshot)
    requests = (
        ("decision", "allow"),
        ("kind", "http"),
        ("policy", "default"),
        ("reason", "allowed"),
    )
    assert samples[("egressgate_requests_total", requests)] == 2
    assert samples[("egressgate_bytes_total", (("direction", "up"), ("kind", "http")))] == 101
    assert samples[("egressgate_bytes_total", (("direction", "down"), ("kind", "http")))] == 2002
    assert samples[("egressgate_active_connections", ())] == 4
    assert samples[("egressgate_active_tunnels", ())] == 1
    assert samples[("egressgate_upstream_errors_total", (("reason", "upstream-refused"),))] == 1
    assert samples[("egressgate_reloads_total", (("result", "success"),))] == 1
    assert samples[("egressgate_config_generation", ())] == 2
    info = (("sha256", "abc123"), ("source", "/etc/egressgate.yaml"))
    assert samples[("egressgate_config_info", info)] == 1
    assert samples[("egressgate_access_log_errors_total", ())] == 2
    assert samples[("egressgate_connections_rejected_total", ())] == 3
    assert not any(name == "egressgate_workers" for name, _ in samples)


def test_dns_histogram_buckets_are_cumulative_with_count_and_sum() -> None:
    samples = exposition(busy_metrics().snapshot)
    ok = (("result", "ok"),)
    buckets = {
        labels: value
        for (name, labels), value in samples.items()
        if name == "egressgate_dns_lookup_seconds_bucket" and ("result", "ok") in labels
    }
    assert buckets[(("le", "0.001"), ("result", "ok"))] == 0
    assert buckets[(("le", "0.005"), ("result", "ok"))] == 1
    assert buckets[(("le", "+Inf"), ("result", "ok"))] == 1
    assert len(buckets) == len(DNS_BUCKETS_S) + 1
    assert samples[("egressgate_dns_lookup_seconds_count", ok)] == 1
    assert samples[("egressgate_dns_lookup_seconds_sum", ok)] == pytest.approx(0.003)
    timeout = (("result", "timeout"),)
    assert samples[("egressgate_dns_lookup_seconds_bucket", (("le", "5.0"), *timeout))] == 0
    assert samples[("egressgate_dns_lookup_seconds_bucket", (("le", "+Inf"), *timeout))] == 1


def test_merged_snapshot_with_workers_exposes_the_worker_gauge() -> None:
    total = merge([busy_metrics().snapshot(), busy_metrics().snapshot()])
    total["workers"] = 2
    samples = exposition(lambda: total)
    assert samples[("egressgate_workers", ())] == 2
    assert samples[("egressgate_active_connections", ())] == 8


def test_hostile_label_values_survive_the_exposition() -> None:
    metrics = Metrics()
    policy = 'we"ird\\po\nlicy'
    metrics.count_request("http", "deny", "no-policy", policy, 0, 0)
    metrics.config_source = 'C:\\configs\\"egress".yaml'
    samples = exposition(metrics.snapshot)
    labels = (("decision", "deny"), ("kind", "http"), ("policy", policy), ("reason", "no-policy"))
    assert samples[("egressgate_requests_total", labels)] == 1
    info = (("sha256", ""), ("source", 'C:\\configs\\"egress".yaml'))
    assert samples[("egressgate_config_info", info)] == 1


def test_empty_metrics_expose_zeroes() -> None:
    samples = exposition(Metrics().snapshot)
    assert samples[("egressgate_active_connections", ())] == 0
    assert samples[("egressgate_reloads_total", (("result", "failure"),))] == 0
