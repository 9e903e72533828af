"""The DNS guard's config keys: defaults, values, and file:line:col errors for bad ones."""

from __future__ import annotations

import subprocess
import sys
from pathlib import Path

import pytest

from egressgate.config.load import load_config_text
from egressgate.config.model import DnsAnswer, DnsRefusal, ListenAddress
from egressgate.errors import ConfigError


def test_defaults_and_values() -> None:
    config = load_config_text("allow: [a.test]\n")
    assert config.dns_listen is None
    assert config.dns.passthrough == (".cluster.local",)
    assert config.dns.refusal is DnsRefusal.NXDOMAIN
    assert config.dns.answer is DnsAnswer.FORWARD
    config = load_config_text(
        "dns_listen: 0.0.0.0:53\n"
        "dns_passthrough: [.cluster.local, .in-addr.arpa]\n"
        "dns_refusal: refused\n"
        "dns_answer: proxy\n"
        "dns_proxy_addresses: [10.0.0.5, 'fd00::5']\n"
        "dns_proxy_ttl_s: 10\n"
        "limits: {dns_tcp_idle_s: 2, dns_max_inflight: 9, dns_cache_entries: 100}\n"
    )
    assert config.dns_listen == ListenAddress("0.0.0.0", 53)
    assert config.dns.passthrough == (".cluster.local", ".in-addr.arpa")
    assert config.dns.refusal is DnsRefusal.REFUSED
    assert config.dns.proxy_addresses == ("10.0.0.5", "fd00::5")
    assert (config.limits.dns_tcp_idle_s, config.limits.dns_max_inflight) == (2.0, 9)


@pytest.mark.parametrize(
    ("text", "where", "message"),
    [
        ("dns_listen: nowhere\n", "1:13", "expected host:port"),
        ("dns_refusal: servfail\n", "1:14", "dns_refusal must be one of: nxdomain, refused"),
        ("dns_answer: magic\n", "1:13", "dns_answer must be one of: forward, proxy"),
        ("dns_answer: proxy\n", "1:13", "needs dns_proxy_addresses"),
        ("dns_proxy_addresses: [10.0.0.0/8]\n", "1:23", "expected an IP address"),
        ("dns_passthrough: ['bad name!']\n", "1:19", "dns_passthrough:"),
        ("dns_passthrough: [10.0.0.0/8]\n", "1:19", "list domain names"),
        ("dns_proxy_ttl_s: 0\n", "1:18", "dns_proxy_ttl_s: expected a whole number"),
        ("limits:\n  dns_cache_max_ttl_s: -1\n", "2:24", "limits.dns_cache_max_ttl_s"),
        (
            "limits:\n  dns_cache_min_ttl_s: 50\n  dns_cache_max_ttl_s: 5\n",
            "2:3",
            "dns_cache_min_ttl_s (50) is larger",
        ),
        ("dns_listen: 127.0.0.1:0\nworkers: 2\n", "1:13", "needs a fixed port"),
        (
            "dns_listen: 127.0.0.1:5353\nnameservers: [127.0.0.1:5353]\n",
            "2:14",
            "queries would loop",
        ),
    ],
)
def test_errors_are_located(text: str, where: str, message: str) -> None:
    with pytest.raises(ConfigError) as exc:
        load_config_text(text, "c.yaml")
    rendered = [str(issue) for issue in exc.value.issues]
    assert any(r.startswith(f"c.yaml:{where}:") and message in r for r in rendered), rendered


def test_check_command_reports_them(tmp_path: Path) -> None:
    path = tmp_path / "bad.yaml"
    path.write_text("allow: [a.test]\ndns_listen: 127.0.0.1:5353\ndns_refusal: drop\n")
    result = subprocess.run(
        [sys.executable, "-m", "egressgate", "check", "--config", str(path)],
        capture_output=True,
        text=True,
        timeout=60,
        check=False,
    )
    assert result.returncode != 0
    assert f"{path}:3:14: dns_refusal must be one of: nxdomain, refused" in (
        result.stdout + result.stderr
    )
