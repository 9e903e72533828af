"""`egressgate k8s render --mode transparent`: the sidecar, its init container and policy.

Every object validates with kubernetes-validate --strict (offline schemas); the init container's
nftables script is exactly egressgate/tools/redirect.py's, the one the namespace end-to-end test
(tests/e2e/test_transparent_netns.py) applies, for the sidecar's own UID.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import pytest
import yaml

from egressgate.tools.k8s_render import RUN_AS_ID
from egressgate.tools.redirect import nft_script
from tests.integration.test_cli_k8s import _egressgate, _validate_all

SIDECAR_CONFIG = """\
listen: 127.0.0.1:3128
admin_listen: 127.0.0.1:9090
transparent_listen: 127.0.0.1:3130
dns_listen: 127.0.0.1:5353
allow: [api.example.com]
"""


def _render(config: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    result = _egressgate("k8s", "render", "--mode", "transparent", "-c", str(config), *args)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.returncode == 0 else []
    return result.returncode, docs, result.stderr


@pytest.fixture
def sidecar_config(tmp_path: Path) -> Path:
    path = tmp_path / "egress.yaml"
    path.write_text(SIDECAR_CONFIG)
    return path


def test_sidecar_objects_validate_and_carry_the_shared_redirect_script(
    sidecar_config: Path,
) -> None:
    code, docs, stderr = _render(
        sidecar_config, "--app-label", "app=shop", "--app-namespace", "shop"
    )
    assert code == 0, stderr
    _validate_all(docs)
    kinds = [d["kind"] for d in docs]
    assert kinds == ["ConfigMap", "PodTemplate", "NetworkPolicy"]
    config_map, template, policy = docs
    assert config_map["data"]["egress.yaml"] == SIDECAR_CONFIG
    assert config_map["data"]["redirect.nft"] == nft_script(RUN_AS_ID, 3130, 5353)
    spec = template["template"]["spec"]
    (init,) = spec["initContainers"]
    assert init["securityContext"]["capabilities"]["add"] == ["NET_ADMIN"]
    assert init["command"][:2] == ["nft", "-f"]
    (sidecar,) = spec["containers"]
    assert sidecar["securityContext"]["runAsUser"] == RUN_AS_ID
    assert {d["metadata"]["namespace"] for d in docs} == {"shop"}
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "shop"}}
    ports = [p["port"] for p in policy["spec"]["egress"][1]["ports"]]
    assert ports == [80, 443]


def test_redirect_ports_are_configurable(sidecar_config: Path) -> None:
    code, docs, stderr = _render(
        sidecar_config, "--redirect-port", "443", "--redirect-port", "8443"
    )
    assert code == 0, stderr
    _validate_all(docs)
    assert "tcp dport { 443, 8443 } redirect to :3130" in docs[0]["data"]["redirect.nft"]


def test_listeners_on_the_wildcard_or_missing_are_refused(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(
        "transparent_listen: 0.0.0.0:3130\ndns_listen: 0.0.0.0:5353\nallow: [a.example]\n"
    )
    code, _, stderr = _render(path)
    assert code == 2
    assert "transparent_listen 0.0.0.0:3130: in a sidecar bind 127.0.0.1" in stderr
    assert "dns_listen 0.0.0.0:5353" in stderr
    path.write_text("allow: [a.example]\n")
    code, _, stderr = _render(path)
    assert code == 2
    assert "needs transparent_listen" in stderr


CENTRAL_CONFIG = """\
listen: 0.0.0.0:3128
admin_listen: 0.0.0.0:9090
transparent_listen: 0.0.0.0:3130
dns_listen: 0.0.0.0:5353
dns_answer: proxy
dns_proxy_addresses: [10.96.100.53]
allow: [api.example.com]
"""


def _render_dns(config: Path, *args: str) -> tuple[int, list[dict[str, Any]], str]:
    result = _egressgate("k8s", "render", "--mode", "dns", "-c", str(config), *args)
    docs = [d for d in yaml.safe_load_all(result.stdout) if d] if result.returncode == 0 else []
    return result.returncode, docs, result.stderr


def test_central_dns_mode_validates_and_routes_80_443_53_to_the_listeners(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text(CENTRAL_CONFIG)
    code, docs, stderr = _render_dns(path, "--app-label", "app=shop", "--app-namespace", "shop")
    assert code == 0, stderr
    _validate_all(docs)
    by_kind = {(d["kind"], d["metadata"]["name"]): d for d in docs}
    service = by_kind["Service", "egressgate"]
    assert service["spec"]["clusterIP"] == "10.96.100.53"
    ports = {(p["port"], p["protocol"]): p["targetPort"] for p in service["spec"]["ports"]}
    assert ports[80, "TCP"] == ports[443, "TCP"] == "transparent"
    assert ports[53, "UDP"] == "dns-udp"
    client = by_kind["NetworkPolicy", "egressgate-client-egress"]
    (only,) = client["spec"]["egress"]  # the proxy only: no cluster DNS, no internet
    assert {(p["port"], p["protocol"]) for p in only["ports"]} >= {(3130, "TCP"), (5353, "UDP")}
    app = by_kind["PodTemplate", "egressgate-app-dns"]
    spec = app["template"]["spec"]
    assert spec["dnsPolicy"] == "None"
    assert spec["dnsConfig"]["nameservers"] == ["10.96.100.53"]
    assert app["metadata"]["namespace"] == "shop"


def test_central_dns_mode_needs_dns_answer_proxy_and_the_listeners(tmp_path: Path) -> None:
    path = tmp_path / "egress.yaml"
    path.write_text("listen: 0.0.0.0:3128\nallow: [a.example]\n")
    code, _, stderr = _render_dns(path)
    assert code == 2
    assert "needs transparent_listen" in stderr
    assert "needs dns_listen" in stderr
    assert "needs dns_answer: proxy" in stderr
