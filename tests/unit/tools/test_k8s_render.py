"""egressgate.tools.k8s_render: every object is valid Kubernetes (strict OpenAPI schemas, offline,
via kubernetes_validate) and does what the recipe needs.

The NetworkPolicies are checked by EVALUATING them: a small model of NetworkPolicy semantics
(`_allows`) answers "may this pod open this connection?" for the destinations that matter (the
proxy, DNS, the internet, metadata, other pods), so a policy that is well-formed but too wide or
too narrow fails here.
"""

from __future__ import annotations

import hashlib
import ipaddress
import subprocess
import sys
import textwrap
from collections.abc import Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import kubernetes_validate
import pytest
import trustme
import yaml

from egressgate.config.default import BUILTIN_DEFAULT_YAML, builtin_default
from egressgate.config.load import load_config_text
from egressgate.config.model import Config
from egressgate.tools import ca, k8s_render, proxy_env
from egressgate.tools.k8s_render import (
    CONFIG_DIR,
    CONFIG_FILE_NAME,
    CONFIG_PATH,
    LIVE_CHECK_COMMAND,
    RUN_AS_ID,
    RenderError,
    RenderOptions,
    advisories,
    render,
    to_yaml,
)

# The oldest Kubernetes we claim (the preStop sleep action is on by default from 1.30) and the
# newest schemas the installed kubernetes_validate ships.
K8S_VERSIONS = ("1.30", kubernetes_validate.latest_version())

APP = {"app": "my-app"}
PROXY_NS = "egressgate"


# ---------------------------------------------------------------------------------------------
# helpers
# ---------------------------------------------------------------------------------------------


def _config(text: str, base_dir: Path | None = None) -> Config:
    return load_config_text(textwrap.dedent(text), "egress.yaml", str(base_dir or "."))


def _render(
    text: str = BUILTIN_DEFAULT_YAML, base_dir: Path | None = None, **options: Any
) -> list[dict[str, Any]]:
    options.setdefault("app_labels", APP)
    text = textwrap.dedent(text)
    return render(_config(text, base_dir), text, RenderOptions(**options))


def _one(objects: list[dict[str, Any]], kind: str, component: str | None = None) -> dict[str, Any]:
    found = [
        o
        for o in objects
        if o["kind"] == kind
        and (component is None or o["metadata"]["labels"][k8s_render.COMPONENT_LABEL] == component)
    ]
    assert len(found) == 1, f"expected one {kind}/{component}, got {len(found)}"
    return found[0]


def _deployment(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objects, "Deployment")


def _container(objects: list[dict[str, Any]]) -> dict[str, Any]:
    containers = _deployment(objects)["spec"]["template"]["spec"]["containers"]
    assert len(containers) == 1
    return containers[0]


def _pod_labels(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(_deployment(objects)["spec"]["template"]["metadata"]["labels"])


def _named_port(container: dict[str, Any], name: str) -> int:
    ports = {p["name"]: p["containerPort"] for p in container["ports"]}
    return int(ports[name])


def _app_policy(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objects, "NetworkPolicy", k8s_render.COMPONENT_CLIENT_POLICY)


def _proxy_policy(objects: list[dict[str, Any]]) -> dict[str, Any]:
    return _one(objects, "NetworkPolicy", k8s_render.COMPONENT_PROXY_POLICY)


def _client_env(objects: list[dict[str, Any]]) -> dict[str, str]:
    return dict(_one(objects, "ConfigMap", k8s_render.COMPONENT_CLIENT_ENV)["data"])


# ---------------------------------------------------------------------------------------------
# A model of NetworkPolicy semantics (networking.k8s.io/v1), enough for these policies
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True)
class Endpoint:
    """A pod (namespace + labels; its IP is a pod IP) or an address outside the cluster."""

    namespace: str | None = None
    labels: Mapping[str, str] = field(default_factory=dict)
    ip: str | None = None

    @property
    def is_pod(self) -> bool:
        return self.namespace is not None


def _pod(namespace: str, **labels: str) -> Endpoint:
    return Endpoint(namespace, labels)


def _host(ip: str) -> Endpoint:
    return Endpoint(ip=ip)


DNS_POD = _pod("kube-system", **{"k8s-app": "kube-dns"})
PROXY_POD = _pod(
    PROXY_NS,
    **{
        "app.kubernetes.io/name": "egressgate",
        "app.kubernetes.io/instance": "egressgate",
        "app.kubernetes.io/component": "proxy",
    },
)
APP_POD = _pod(PROXY_NS, **APP)


def _selector_matches(selector: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    assert set(selector) <= {"matchLabels"}, f"model does not know {set(selector)}"
    return all(labels.get(k) == v for k, v in selector.get("matchLabels", {}).items())


def _peer_matches(peer: Mapping[str, Any], policy_namespace: str, target: Endpoint) -> bool:
    if "ipBlock" in peer:
        assert set(peer) == {"ipBlock"}, "ipBlock cannot be combined with selectors"
        # ipBlock on pod IPs is implementation-defined; the recipe never relies on it.
        if target.is_pod or target.ip is None:
            return False
        address = ipaddress.ip_address(target.ip)
        block = peer["ipBlock"]
        inside = address in ipaddress.ip_network(block["cidr"])
        excepted = any(address in ipaddress.ip_network(e) for e in block.get("except", []))
        return inside and not excepted
    assert {"podSelector", "namespaceSelector"} & set(peer), f"empty peer {peer}"
    if not target.is_pod:
        return False
    namespace_labels = {k8s_render.NAMESPACE_NAME_LABEL: target.namespace or ""}
    if "namespaceSelector" in peer:
        namespace_ok = _selector_matches(peer["namespaceSelector"], namespace_labels)
    else:
        namespace_ok = target.namespace == policy_namespace
    pod_ok = "podSelector" not in peer or _selector_matches(peer["podSelector"], target.labels)
    return namespace_ok and pod_ok


def _port_matches(ports: list[Mapping[str, Any]] | None, port: int, protocol: str) -> bool:
    if not ports:
        return True
    for entry in ports:
        assert isinstance(entry.get("port", 0), int), "named ports are not portable in policies"
        low = entry.get("port")
        high = entry.get("endPort", low)
        if entry.get("protocol", "TCP") == protocol and (low is None or low <= port <= high):
            return True
    return False


def _allows(
    policy: dict[str, Any],
    direction: str,
    peer: Endpoint,
    port: int,
    protocol: str = "TCP",
) -> bool:
    """Whether `policy` lets its selected pods talk to/from `peer` (direction Egress/Ingress).

    Only meaningful for pods the policy selects (assert that separately); a policy without
    `direction` in policyTypes does not restrict that direction.
    """
    spec = policy["spec"]
    if direction not in spec["policyTypes"]:
        return True
    key, peers_key = ("egress", "to") if direction == "Egress" else ("ingress", "from")
    namespace = policy["metadata"]["namespace"]
    for rule in spec.get(key, []):
        peers = rule.get(peers_key)
        peer_ok = not peers or any(_peer_matches(p, namespace, peer) for p in peers)
        if peer_ok and _port_matches(rule.get("ports"), port, protocol):
            return True
    return False


def _selects(policy: dict[str, Any], pod: Endpoint) -> bool:
    return pod.namespace == policy["metadata"]["namespace"] and _selector_matches(
        policy["spec"]["podSelector"], pod.labels
    )


# ---------------------------------------------------------------------------------------------
# Schema validation: every object, for a spread of configs and options
# ---------------------------------------------------------------------------------------------

SCENARIOS: dict[str, tuple[str, dict[str, Any]]] = {
    "built-in default": (BUILTIN_DEFAULT_YAML, {}),
    "custom ports": ("listen: 0.0.0.0:8080\nadmin_listen: 0.0.0.0:9191\n", {}),
    "admin off": ("admin_listen: null\n", {}),
    "socks listener": ("socks_listen: 0.0.0.0:1080\n", {}),
    "admin on loopback": ("admin_listen: 127.0.0.1:9090\n", {}),
    "ipv6 wildcard, workers": ("listen: '[::]:3128'\nworkers: 4\n", {}),
    "other app namespace, no hpa": ("", {"app_namespace": "shop", "hpa": False, "replicas": 3}),
    "every option": (
        "nameservers: [10.0.0.10, '[fd00::53]:5353']\nallow_private: [10.20.0.0/16]\n"
        "limits: {drain_timeout_s: 40, shutdown_delay_s: 5}\n",
        {
            "namespace": "egress",
            "name": "gate",
            "app_labels": {"app.kubernetes.io/name": "shop", "tier": "web"},
            "app_namespace": "shop",
            "replicas": 4,
            "image": "registry.example/egressgate@sha256:" + "a" * 64,
            "cluster_cidrs": ("100.64.0.0/10", "fd12:3456::/48"),
            "no_proxy": ("kubernetes.default", "10.96.0.1"),
            "dns_namespace": "openshift-dns",
            "dns_labels": {"dns.operator.openshift.io/daemonset-dns": "default"},
            "dns_port": 5353,
            "dns_cidrs": ("169.254.20.10/32",),
            "cpu_request": "500m",
            "cpu_limit": "2",
            "memory_request": "256Mi",
            "memory_limit": "1Gi",
            "prestop_sleep_s": 15,
            "hpa_max_replicas": 20,
            "hpa_cpu_target_percent": 60,
            "metrics_namespace": "monitoring",
            "metrics_labels": {"app.kubernetes.io/name": "prometheus"},
            "service_metrics_port": True,
        },
    ),
}


@pytest.mark.parametrize("version", K8S_VERSIONS)
@pytest.mark.parametrize("scenario", sorted(SCENARIOS))
def test_every_object_validates_against_the_strict_schema(scenario: str, version: str) -> None:
    text, options = SCENARIOS[scenario]
    objects = _render(text, **options)
    for obj in objects:
        try:
            kubernetes_validate.validate(obj, version, strict=True)
        except kubernetes_validate.ValidationError as exc:
            path = ".".join(str(p) for p in exc.path)
            pytest.fail(f"{obj['kind']}/{obj['metadata']['name']} at {path}: {exc.message}")


def test_the_strict_schema_really_rejects_unknown_fields() -> None:
    """Guards the test above: if strict mode stopped being strict, it would prove nothing."""
    service = _one(_render(), "Service")
    service["spec"]["typo"] = 1
    with pytest.raises(kubernetes_validate.ValidationError):
        kubernetes_validate.validate(service, K8S_VERSIONS[-1], strict=True)


def test_the_expected_objects_in_apply_order() -> None:
    kinds = [(o["kind"], o["metadata"]["namespace"]) for o in _render(app_namespace="shop")]
    assert kinds == [
        ("ConfigMap", PROXY_NS),
        ("Service", PROXY_NS),
        ("Deployment", PROXY_NS),
        ("PodDisruptionBudget", PROXY_NS),
        ("HorizontalPodAutoscaler", PROXY_NS),
        ("NetworkPolicy", PROXY_NS),
        # What belongs to the app lives in the app's namespace: a NetworkPolicy only selects
        # pods of its own namespace, and envFrom only reads ConfigMaps of the pod's namespace.
        ("NetworkPolicy", "shop"),
        ("ConfigMap", "shop"),
    ]


# ---------------------------------------------------------------------------------------------
# The application's NetworkPolicy
# ---------------------------------------------------------------------------------------------


def test_app_policy_selects_exactly_the_app_labels() -> None:
    policy = _app_policy(_render(app_labels={"app": "my-app", "tier": "web"}))
    assert policy["spec"]["podSelector"] == {"matchLabels": {"app": "my-app", "tier": "web"}}
    assert policy["spec"]["policyTypes"] == ["Egress"]  # the app's ingress is not our business
    assert "ingress" not in policy["spec"]
    assert _selects(policy, _pod(PROXY_NS, app="my-app", tier="web", extra="x"))
    assert not _selects(policy, _pod(PROXY_NS, app="my-app"))
    assert not _selects(policy, PROXY_POD)


def test_app_may_reach_only_the_proxy_port_and_dns() -> None:
    objects = _render()
    policy = _app_policy(objects)
    proxy_pod = _pod(PROXY_NS, **_pod_labels(objects))
    allowed = [
        (proxy_pod, 3128, "TCP"),
        (DNS_POD, 53, "UDP"),
        (DNS_POD, 53, "TCP"),
    ]
    refused = [
        (proxy_pod, 9090, "TCP"),  # not the admin port
        (proxy_pod, 3128, "UDP"),
        (DNS_POD, 443, "TCP"),
        (_pod("kube-system", app="other"), 53, "UDP"),  # not any kube-system pod
        (_pod("elsewhere", **{"k8s-app": "kube-dns"}), 53, "UDP"),  # not that label anywhere
        (_pod("elsewhere", **_pod_labels(objects)), 3128, "TCP"),  # not a look-alike proxy
        (_pod(PROXY_NS, app="db"), 5432, "TCP"),  # no other pod
        (_host("1.1.1.1"), 443, "TCP"),  # no way around the proxy
        (_host("169.254.169.254"), 80, "TCP"),
        (_host("2606:4700::1111"), 443, "TCP"),
        (_host("8.8.8.8"), 53, "UDP"),  # no DNS except the cluster's
    ]
    for peer, port, protocol in allowed:
        assert _allows(policy, "Egress", peer, port, protocol), (peer, port, protocol)
    for peer, port, protocol in refused:
        assert not _allows(policy, "Egress", peer, port, protocol), (peer, port, protocol)
    # And exactly two rules, so nothing else hides in a rule this test does not probe.
    assert len(policy["spec"]["egress"]) == 2


def test_app_in_another_namespace_reaches_the_proxy_namespace_only() -> None:
    objects = _render(app_namespace="shop")
    policy = _app_policy(objects)
    assert policy["metadata"]["namespace"] == "shop"
    proxy_labels = _pod_labels(objects)
    assert _allows(policy, "Egress", _pod(PROXY_NS, **proxy_labels), 3128)
    assert not _allows(policy, "Egress", _pod("shop", **proxy_labels), 3128)
    # namespaceSelector and podSelector are ANDed in one peer, not two ORed peers.
    assert not _allows(policy, "Egress", _pod(PROXY_NS, app="anything"), 3128)


def test_dns_port_and_node_local_dns_are_configurable() -> None:
    policy = _app_policy(
        _render(
            dns_namespace="openshift-dns",
            dns_labels={"dns.operator.openshift.io/daemonset-dns": "default"},
            dns_port=5353,
            dns_cidrs=("169.254.20.10/32",),
        )
    )
    dns = _pod("openshift-dns", **{"dns.operator.openshift.io/daemonset-dns": "default"})
    assert _allows(policy, "Egress", dns, 5353, "UDP")
    assert _allows(policy, "Egress", dns, 5353, "TCP")
    assert not _allows(policy, "Egress", DNS_POD, 53, "UDP")
    assert _allows(policy, "Egress", _host("169.254.20.10"), 5353, "UDP")
    assert not _allows(policy, "Egress", _host("169.254.169.254"), 80)


# ---------------------------------------------------------------------------------------------
# The proxy's NetworkPolicy
# ---------------------------------------------------------------------------------------------


def test_proxy_policy_selects_the_proxy_pods_only() -> None:
    objects = _render()
    policy = _proxy_policy(objects)
    assert _selects(policy, _pod(PROXY_NS, **_pod_labels(objects)))
    assert not _selects(policy, APP_POD)
    assert policy["spec"]["policyTypes"] == ["Ingress", "Egress"]


def test_proxy_admits_only_the_app_on_the_proxy_port() -> None:
    policy = _proxy_policy(_render())
    assert _allows(policy, "Ingress", APP_POD, 3128)
    assert not _allows(policy, "Ingress", _pod(PROXY_NS, app="other"), 3128)
    assert not _allows(policy, "Ingress", _pod("shop", **APP), 3128)  # same label, other ns
    assert not _allows(policy, "Ingress", _host("203.0.113.9"), 3128)
    assert not _allows(policy, "Ingress", APP_POD, 3129)


def test_proxy_admits_the_app_from_its_own_namespace() -> None:
    policy = _proxy_policy(_render(app_namespace="shop"))
    assert _allows(policy, "Ingress", _pod("shop", **APP), 3128)
    assert not _allows(policy, "Ingress", _pod(PROXY_NS, **APP), 3128)
    assert not _allows(policy, "Ingress", _pod("shop", app="other"), 3128)


def test_admin_port_open_in_cluster_or_to_a_chosen_scraper() -> None:
    anyone = _proxy_policy(_render())
    assert _allows(anyone, "Ingress", _pod("monitoring", app="prometheus"), 9090)
    assert not _allows(anyone, "Ingress", _host("203.0.113.9"), 9090)
    only = _proxy_policy(
        _render(metrics_namespace="monitoring", metrics_labels={"app": "prometheus"})
    )
    assert _allows(only, "Ingress", _pod("monitoring", app="prometheus"), 9090)
    assert not _allows(only, "Ingress", _pod("monitoring", app="grafana"), 9090)
    assert not _allows(only, "Ingress", _pod("default", app="prometheus"), 9090)


@pytest.mark.parametrize(
    ("ip", "allowed"),
    [
        ("1.1.1.1", True),
        ("140.82.112.3", True),
        ("2606:4700::1111", True),
        ("10.1.2.3", False),
        ("172.20.0.1", False),
        ("192.168.1.1", False),
        ("169.254.169.254", False),  # cloud metadata
        ("169.254.20.10", False),  # node-local agents
        ("fd00:ec2::254", False),  # AWS metadata over IPv6 (unique-local)
        ("fe80::1", False),
        ("100.64.0.1", False),  # added with cluster_cidrs below
        ("fd12:3456::1", False),  # an IPv6 cluster range, added below
    ],
)
def test_proxy_egress_is_the_internet_minus_cluster_and_metadata(ip: str, allowed: bool) -> None:
    policy = _proxy_policy(_render(cluster_cidrs=("100.64.0.0/10", "fd12:3456::/48")))
    assert _allows(policy, "Egress", _host(ip), 443) is allowed


def test_proxy_egress_includes_dns_but_not_other_pods() -> None:
    objects = _render()
    policy = _proxy_policy(objects)
    assert _allows(policy, "Egress", DNS_POD, 53, "UDP")
    assert _allows(policy, "Egress", DNS_POD, 53, "TCP")
    assert not _allows(policy, "Egress", _pod("default", app="db"), 5432)
    assert not _allows(policy, "Egress", APP_POD, 8080)


def test_proxy_egress_holes_come_only_from_the_config() -> None:
    text = "nameservers: [10.0.0.10]\nallow_private: [10.20.0.0/16]\n"
    policy = _proxy_policy(_render(text))
    assert _allows(policy, "Egress", _host("10.0.0.10"), 53, "UDP")
    assert _allows(policy, "Egress", _host("10.0.0.10"), 53, "TCP")
    assert not _allows(policy, "Egress", _host("10.0.0.10"), 443)
    assert _allows(policy, "Egress", _host("10.20.5.5"), 5432)
    assert not _allows(policy, "Egress", _host("10.30.0.1"), 443)


# ---------------------------------------------------------------------------------------------
# Service, Deployment, probes, ports
# ---------------------------------------------------------------------------------------------


def test_service_is_cluster_ip_on_the_proxy_port_only() -> None:
    objects = _render("listen: 0.0.0.0:8080\n")
    service = _one(objects, "Service")
    assert service["spec"]["type"] == "ClusterIP"
    assert [(p["name"], p["port"]) for p in service["spec"]["ports"]] == [("proxy", 8080)]
    assert all("nodePort" not in p for p in service["spec"]["ports"])
    assert _selector_matches({"matchLabels": service["spec"]["selector"]}, _pod_labels(objects))
    container = _container(objects)
    for port in service["spec"]["ports"]:
        assert _named_port(container, port["targetPort"]) == port["port"]


def test_service_metrics_port_is_optional() -> None:
    service = _one(_render(service_metrics_port=True), "Service")
    assert [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]] == [
        ("proxy", 3128, "proxy"),
        ("metrics", 9090, "admin"),
    ]


@pytest.mark.parametrize(("listen", "admin"), [(3128, 9090), (8080, 9191)])
def test_ports_and_probes_follow_the_config(listen: int, admin: int) -> None:
    objects = _render(f"listen: 0.0.0.0:{listen}\nadmin_listen: 0.0.0.0:{admin}\n")
    container = _container(objects)
    assert _named_port(container, "proxy") == listen
    assert _named_port(container, "admin") == admin
    live, ready = container["livenessProbe"], container["readinessProbe"]
    assert live["httpGet"]["path"] == "/healthz"
    assert ready["httpGet"]["path"] == "/readyz"
    assert _named_port(container, live["httpGet"]["port"]) == admin
    assert _named_port(container, ready["httpGet"]["port"]) == admin
    annotations = _deployment(objects)["spec"]["template"]["metadata"]["annotations"]
    assert annotations["prometheus.io/scrape"] == "true"
    assert annotations["prometheus.io/port"] == str(admin)
    assert _allows(_proxy_policy(objects), "Ingress", APP_POD, listen)
    assert _allows(_app_policy(objects), "Egress", _pod(PROXY_NS, **_pod_labels(objects)), listen)
    assert _client_env(objects)["HTTPS_PROXY"].endswith(f".svc.cluster.local:{listen}")


@pytest.mark.parametrize("admin", ["null", "127.0.0.1:9090"])
def test_exec_probes_when_the_kubelet_cannot_reach_an_admin_listener(admin: str) -> None:
    objects = _render(f"admin_listen: {admin}\n")
    container = _container(objects)
    for probe in ("livenessProbe", "readinessProbe"):
        assert "httpGet" not in container[probe]
        assert container[probe]["exec"]["command"] == list(LIVE_CHECK_COMMAND)
    assert LIVE_CHECK_COMMAND == ("egressgate", "check", "--live", "--config", CONFIG_PATH)
    assert [p["name"] for p in container["ports"]] == ["proxy"]
    annotations = _deployment(objects)["spec"]["template"]["metadata"]["annotations"]
    assert "prometheus.io/scrape" not in annotations
    ingress = _proxy_policy(objects)["spec"]["ingress"]
    assert len(ingress) == 1  # the app on the proxy port; no admin port to open


def test_tls_listener_is_a_second_proxy_port(tmp_path: Path) -> None:
    # Real material: the config loader checks that the pair loads.
    leaf = trustme.CA().issue_cert("proxy.test")
    leaf.cert_chain_pems[0].write_to_path(str(tmp_path / "cert.pem"))
    leaf.private_key_pem.write_to_path(str(tmp_path / "key.pem"))
    text = "tls_listen: {listen: '0.0.0.0:3129', cert_file: cert.pem, key_file: key.pem}\n"
    objects = _render(text, base_dir=tmp_path)
    assert _named_port(_container(objects), "proxy-tls") == 3129
    service_ports = [p["port"] for p in _one(objects, "Service")["spec"]["ports"]]
    assert service_ports == [3128, 3129]
    assert _allows(_proxy_policy(objects), "Ingress", APP_POD, 3129)
    proxy_pod = _pod(PROXY_NS, **_pod_labels(objects))
    assert _allows(_app_policy(objects), "Egress", proxy_pod, 3129)
    notes = advisories(_config(text, tmp_path), RenderOptions(app_labels=APP))
    assert any("cert_file" in note and "Secret" in note for note in notes)


def test_container_and_pod_are_hardened() -> None:
    objects = _render()
    pod = _deployment(objects)["spec"]["template"]["spec"]
    container = _container(objects)
    security = container["securityContext"]
    assert security["runAsNonRoot"] is True
    assert security["runAsUser"] == RUN_AS_ID == 65532
    assert security["readOnlyRootFilesystem"] is True
    assert security["allowPrivilegeEscalation"] is False
    assert security["capabilities"] == {"drop": ["ALL"]}
    assert security["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["securityContext"]["runAsNonRoot"] is True
    assert pod["securityContext"]["seccompProfile"] == {"type": "RuntimeDefault"}
    assert pod["automountServiceAccountToken"] is False
    assert "hostNetwork" not in pod
    # /tmp is the only writable path.
    mounts = {m["mountPath"]: m for m in container["volumeMounts"]}
    assert set(mounts) == {CONFIG_DIR, "/tmp"}
    assert mounts[CONFIG_DIR]["readOnly"] is True
    volumes = {v["name"]: v for v in pod["volumes"]}
    assert "emptyDir" in volumes[mounts["/tmp"]["name"]]


def test_config_is_mounted_as_a_directory_at_the_documented_path() -> None:
    objects = _render()
    config_map = _one(objects, "ConfigMap", k8s_render.COMPONENT_CONFIG)
    container = _container(objects)
    pod = _deployment(objects)["spec"]["template"]["spec"]
    mount = next(m for m in container["volumeMounts"] if m["mountPath"] == CONFIG_DIR)
    # subPath mounts never see ConfigMap updates, which would defeat hot reload.
    assert "subPath" not in mount
    assert all("subPath" not in m for m in container["volumeMounts"])
    volume = next(v for v in pod["volumes"] if v["name"] == mount["name"])
    assert volume["configMap"]["name"] == config_map["metadata"]["name"]
    assert f"{CONFIG_DIR}/{CONFIG_FILE_NAME}" == CONFIG_PATH == "/etc/egressgate/egress.yaml"
    assert CONFIG_FILE_NAME in config_map["data"]
    assert container["args"] == ["run", "--config", CONFIG_PATH]


def test_config_map_is_verbatim_and_its_hash_rolls_the_pods() -> None:
    text = "# a comment the operator wrote\nallow: [api.example.com]   \nworkers: 2\n"
    objects = _render(text)
    config_map = _one(objects, "ConfigMap", k8s_render.COMPONENT_CONFIG)
    assert config_map["data"][CONFIG_FILE_NAME] == text
    digest = hashlib.sha256(text.encode()).hexdigest()
    assert config_map["metadata"]["annotations"][k8s_render.CONFIG_HASH_ANNOTATION] == digest
    template = _deployment(objects)["spec"]["template"]["metadata"]["annotations"]
    assert template[k8s_render.CONFIG_HASH_ANNOTATION] == digest
    other = _deployment(_render(text + "mode: report\n"))["spec"]["template"]["metadata"]
    assert other["annotations"][k8s_render.CONFIG_HASH_ANNOTATION] != digest


def test_config_hash_is_the_one_the_proxy_reports() -> None:
    """The annotation equals /readyz's sha256 (runtime/state.py hashes the config text)."""
    from egressgate.runtime.state import compile_generation

    text = "allow: [api.example.com]\n"
    config_map = _one(_render(text), "ConfigMap", k8s_render.COMPONENT_CONFIG)
    generation = compile_generation(_config(text), text, 1)
    assert config_map["metadata"]["annotations"][k8s_render.CONFIG_HASH_ANNOTATION] == (
        generation.sha256
    )


def test_extra_files_ship_in_the_config_map_and_roll_the_pods(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("10.0.0.1 internal.example\n")
    text = "hosts_file: hosts\n"
    files = {"hosts": "10.0.0.1 internal.example\n"}
    objects = _render(text, base_dir=tmp_path, extra_config_files=files)
    config_map = _one(objects, "ConfigMap", k8s_render.COMPONENT_CONFIG)
    assert config_map["data"] == {CONFIG_FILE_NAME: text, "hosts": files["hosts"]}
    template = _deployment(objects)["spec"]["template"]["metadata"]["annotations"]
    changed = _render(text, base_dir=tmp_path, extra_config_files={"hosts": "10.0.0.2 x\n"})
    changed_template = _deployment(changed)["spec"]["template"]["metadata"]["annotations"]
    # The config did not change, the hosts file did: the config hash stays, the pods roll.
    hash_key, files_key = k8s_render.CONFIG_HASH_ANNOTATION, k8s_render.FILES_HASH_ANNOTATION
    assert changed_template[hash_key] == template[hash_key]
    assert changed_template[files_key] != template[files_key]
    notes = advisories(_config(text, tmp_path), RenderOptions(app_labels=APP))
    assert any("hosts_file" in note for note in notes)
    shipped = RenderOptions(app_labels=APP, extra_config_files=files)
    assert not any("hosts_file" in note for note in advisories(_config(text, tmp_path), shipped))


def test_grace_period_covers_prestop_shutdown_delay_and_drain() -> None:
    margin = k8s_render.GRACE_MARGIN_S
    default = _deployment(_render())["spec"]["template"]["spec"]
    assert default["terminationGracePeriodSeconds"] == 5 + 25 + margin
    assert default["containers"][0]["lifecycle"] == {"preStop": {"sleep": {"seconds": 5}}}
    text = "limits: {drain_timeout_s: 40.5, shutdown_delay_s: 5}\n"
    pod = _deployment(_render(text, prestop_sleep_s=10))["spec"]["template"]["spec"]
    assert pod["terminationGracePeriodSeconds"] == 10 + 46 + margin
    none = _deployment(_render(prestop_sleep_s=0))["spec"]["template"]["spec"]
    assert "lifecycle" not in none["containers"][0]
    assert none["terminationGracePeriodSeconds"] == 25 + margin


def test_replicas_spread_across_nodes_and_zones() -> None:
    objects = _render()
    labels = _pod_labels(objects)
    pod = _deployment(objects)["spec"]["template"]["spec"]
    keys = {c["topologyKey"] for c in pod["topologySpreadConstraints"]}
    assert keys == {"kubernetes.io/hostname", "topology.kubernetes.io/zone"}
    for constraint in pod["topologySpreadConstraints"]:
        assert _selector_matches(constraint["labelSelector"], labels)
    preferred = pod["affinity"]["podAntiAffinity"][
        "preferredDuringSchedulingIgnoredDuringExecution"
    ]
    term = preferred[0]["podAffinityTerm"]
    assert term["topologyKey"] == "kubernetes.io/hostname"
    assert _selector_matches(term["labelSelector"], labels)
    deployment = _deployment(objects)
    assert _selector_matches(deployment["spec"]["selector"], labels)
    pdb = _one(objects, "PodDisruptionBudget")
    assert _selector_matches(pdb["spec"]["selector"], labels)
    assert pdb["spec"] == {**pdb["spec"], "maxUnavailable": 1}


def test_autoscaler_owns_the_replica_count() -> None:
    objects = _render(replicas=3, hpa_max_replicas=12, hpa_cpu_target_percent=65)
    hpa = _one(objects, "HorizontalPodAutoscaler")
    assert hpa["apiVersion"] == "autoscaling/v2"
    assert hpa["spec"]["scaleTargetRef"] == {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "name": _deployment(objects)["metadata"]["name"],
    }
    assert (hpa["spec"]["minReplicas"], hpa["spec"]["maxReplicas"]) == (3, 12)
    target = hpa["spec"]["metrics"][0]["resource"]
    assert target == {"name": "cpu", "target": {"type": "Utilization", "averageUtilization": 65}}
    # Left out so that a re-apply does not reset what the HPA scaled to.
    assert "replicas" not in _deployment(objects)["spec"]
    fixed = _render(replicas=3, hpa=False)
    assert _deployment(fixed)["spec"]["replicas"] == 3
    assert not [o for o in fixed if o["kind"] == "HorizontalPodAutoscaler"]


def test_resources_scale_with_workers_unless_given() -> None:
    resources = _container(_render("workers: 4\n"))["resources"]
    assert resources == {
        "requests": {"cpu": "400m", "memory": "512Mi"},
        "limits": {"memory": "1024Mi"},
    }
    given = _container(_render(cpu_request="1", cpu_limit="2", memory_limit="1Gi"))["resources"]
    assert given["requests"]["cpu"] == "1"
    assert given["limits"] == {"cpu": "2", "memory": "1Gi"}


# ---------------------------------------------------------------------------------------------
# The client environment
# ---------------------------------------------------------------------------------------------


def test_client_env_has_both_letter_cases_and_the_service_url() -> None:
    env = _client_env(_render(app_namespace="shop", cluster_cidrs=("100.64.0.0/10",)))
    url = "http://egressgate.egressgate.svc.cluster.local:3128"
    for name in ("HTTP_PROXY", "HTTPS_PROXY", "http_proxy", "https_proxy"):
        assert env[name] == url
    assert env["NO_PROXY"] == env["no_proxy"]
    entries = env["NO_PROXY"].split(",")
    assert entries[:5] == ["localhost", "127.0.0.1", "::1", ".svc", ".cluster.local"]
    for cidr in (*k8s_render.DEFAULT_CLUSTER_CIDRS, "100.64.0.0/10"):
        assert cidr in entries
    assert "-Dhttps.proxyPort=3128" in env["JAVA_TOOL_OPTIONS"]


def test_client_env_is_what_egressgate_env_prints() -> None:
    options = RenderOptions(app_labels=APP, cluster_cidrs=("10.96.0.0/12",), no_proxy=(".corp",))
    env = k8s_render.client_env(builtin_default(), options)
    expected = proxy_env.build_env(
        "http://egressgate.egressgate.svc.cluster.local:3128",
        [".corp"],
        [*k8s_render.DEFAULT_CLUSTER_CIDRS, "10.96.0.0/12"],
    )
    assert env == expected.as_dict(java=True)


# ---------------------------------------------------------------------------------------------
# Refusals
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("replicas", [0, 1])
def test_fewer_than_two_replicas_are_refused(replicas: int) -> None:
    with pytest.raises(RenderError, match="at least 2"):
        _render(replicas=replicas)


@pytest.mark.parametrize(
    ("text", "options", "match"),
    [
        ("listen: 127.0.0.1:3128\n", {}, "every interface"),
        ("listen: 10.0.0.5:3128\n", {}, "every interface"),
        ("listen: 0.0.0.0:0\n", {}, "fixed port"),
        ("admin_listen: 0.0.0.0:0\n", {}, "fixed port"),
        ("admin_listen: 10.1.1.1:9090\n", {}, "admin_listen"),
        ("", {"name": "Egress"}, "name"),
        ("", {"namespace": "no_underscores"}, "namespace"),
        ("", {"app_labels": {"app": "bad value"}}, "app label"),
        ("", {"app_labels": {"app.kubernetes.io/name": "egressgate"}}, "select the proxy pods"),
        ("", {"cluster_cidrs": ("0.0.0.0/0",)}, "every address"),
        ("", {"cluster_cidrs": ("10.0.0.0/33",)}, "CIDR"),
        ("", {"memory_limit": "lots"}, "quantity"),
        ("", {"hpa_max_replicas": 1}, "HPA maximum"),
        ("", {"dns_labels": {}}, "DNS pod label"),
        ("", {"image": "has space"}, "image"),
        ("", {"no_proxy": ("bad entry!",)}, "no-proxy"),
        ("", {"prestop_sleep_s": -1}, "preStop"),
        ("", {"extra_config_files": {CONFIG_FILE_NAME: "x"}}, "extra config file"),
        ("", {"extra_config_files": {"sub/hosts": "x"}}, "extra config file"),
    ],
)
def test_unworkable_inputs_are_refused_with_a_reason(
    text: str, options: dict[str, Any], match: str
) -> None:
    with pytest.raises(RenderError, match=match):
        _render(text, **options)


def test_every_problem_is_reported_at_once() -> None:
    with pytest.raises(RenderError) as caught:
        _render("listen: 127.0.0.1:3128\n", replicas=1, name="X")
    assert len(caught.value.problems) == 3


def test_app_labels_may_equal_proxy_labels_in_another_namespace() -> None:
    # Only the same namespace makes a collision: policies select within their namespace.
    labels = {"app.kubernetes.io/name": "egressgate"}
    _render(app_labels=labels, app_namespace="shop")


def test_parse_label() -> None:
    assert k8s_render.parse_label("app=my-app") == ("app", "my-app")
    assert k8s_render.parse_label("example.com/team=") == ("example.com/team", "")
    for bad in ("app", "=x", "a b=c", "app=-x", "UPPER.example/x=y"):
        with pytest.raises(ValueError, match=r"label|key=value"):
            k8s_render.parse_label(bad)


# ---------------------------------------------------------------------------------------------
# Advisories and YAML
# ---------------------------------------------------------------------------------------------


def test_default_app_label_is_an_opt_in_label_and_says_so() -> None:
    options = RenderOptions()
    objects = render(builtin_default(), BUILTIN_DEFAULT_YAML, options)
    expected = {k8s_render.DEFAULT_CLIENT_LABEL: "egressgate"}
    assert _app_policy(objects)["spec"]["podSelector"]["matchLabels"] == expected
    notes = advisories(builtin_default(), options)
    assert any(k8s_render.DEFAULT_CLIENT_LABEL in note for note in notes)


def test_advisories_name_what_needs_doing_by_hand(tmp_path: Path) -> None:
    (tmp_path / "hosts").write_text("10.0.0.1 internal.example\n")
    (tmp_path / "logs").mkdir()
    text = "hosts_file: hosts\naccess_log: logs/access.log\nauth: {users_env: PROXY_USERS}\n"
    notes = advisories(_config(text, tmp_path), RenderOptions(app_labels=APP))
    joined = "\n".join(notes)
    assert "hosts_file" in joined
    assert "PROXY_USERS" in joined
    assert "read-only" in joined
    assert "preStop" not in joined
    no_prestop = advisories(builtin_default(), RenderOptions(app_labels=APP, prestop_sleep_s=0))
    assert any("preStop" in note for note in no_prestop)


def test_yaml_stream_round_trips_with_comments() -> None:
    text = "# tabs\tand trailing spaces   \nallow:\n  - api.example.com\n"
    objects = _render(text, app_namespace="shop")
    stream = to_yaml(objects)
    assert stream.startswith("# Kubernetes manifests for egressgate")
    assert list(yaml.safe_load_all(stream)) == objects
    documents = stream.split("\n---\n")[1:]
    assert len(documents) == len(objects)
    for document in documents:
        assert document.startswith("# "), document[:80]
    assert "subPath" in stream  # the Deployment's comment explains the directory mount
    assert "envFrom:" in stream  # the client env comment shows how to load it
    # No YAML anchors/aliases for the label dicts the objects share.
    assert "&id" not in stream
    assert "*id" not in stream


def test_pasteable_env_comment_is_valid_yaml() -> None:
    stream = to_yaml(_render())
    last = stream.split("\n---\n")[-1]
    comment = [line[2:] for line in last.splitlines() if line.startswith("#   ")]
    start = comment.index("  env:")
    env = yaml.safe_load("\n".join(comment[start:]))["env"]
    assert {e["name"]: e["value"] for e in env} == _client_env(_render())


def test_renderer_imports_nothing_of_the_proxy() -> None:
    code = (
        "import sys, egressgate.tools.k8s_render, egressgate.cli.k8s\n"
        "bad = [m for m in sys.modules if m.split('.')[:2] in "
        "(['egressgate','proxy'], ['egressgate','net'], ['egressgate','runtime'])]\n"
        "print(','.join(bad))\n"
    )
    out = subprocess.run(
        [sys.executable, "-c", code], capture_output=True, text=True, check=True, timeout=60
    )
    assert out.stdout.strip() == ""


def test_socks_listen_is_a_service_port_and_the_policies_admit_it() -> None:
    objects = _render("socks_listen: 0.0.0.0:1080\n")
    service = _one(objects, "Service")
    ports = [(p["name"], p["port"], p["targetPort"]) for p in service["spec"]["ports"]]
    assert ports == [("proxy", 3128, "proxy"), ("socks", 1080, "socks")]
    assert _named_port(_container(objects), "socks") == 1080
    proxy_pod = _pod(PROXY_NS, **_pod_labels(objects))
    app_policy = _app_policy(objects)
    assert _allows(app_policy, "Egress", proxy_pod, 1080, "TCP")
    assert not _allows(app_policy, "Egress", proxy_pod, 1080, "UDP")  # no UDP ASSOCIATE
    proxy_policy = _proxy_policy(objects)
    assert _allows(proxy_policy, "Ingress", APP_POD, 1080)
    assert not _allows(proxy_policy, "Ingress", _pod(PROXY_NS, app="other"), 1080)
    # the apps' env points ALL_PROXY (both cases) and the JVM's SOCKS pair at that port
    env = _client_env(objects)
    url = "socks5h://egressgate.egressgate.svc.cluster.local:1080"
    assert env["ALL_PROXY"] == env["all_proxy"] == url, env
    assert "-DsocksProxyHost=egressgate.egressgate.svc.cluster.local" in env["JAVA_TOOL_OPTIONS"]
    assert "-DsocksProxyPort=1080" in env["JAVA_TOOL_OPTIONS"]
    # without socks_listen, nothing is opened for it, and no app is sent to it
    plain = _render()
    assert not _allows(_proxy_policy(plain), "Ingress", APP_POD, 1080)
    assert [p["name"] for p in _one(plain, "Service")["spec"]["ports"]] == ["proxy"]
    assert not {"ALL_PROXY", "all_proxy"} & set(_client_env(plain))
    assert "socksProxyHost" not in _client_env(plain)["JAVA_TOOL_OPTIONS"]


@pytest.mark.parametrize(
    ("text", "problem"),
    [
        ("socks_listen: 127.0.0.1:1080\n", "every interface"),
        ("socks_listen: 0.0.0.0:0\n", "fixed port"),
    ],
)
def test_socks_listen_must_be_reachable_from_the_service(text: str, problem: str) -> None:
    with pytest.raises(RenderError) as failure:
        _render(text)
    assert problem in str(failure.value)
    assert "socks_listen" in str(failure.value)


# ---------------------------------------------------------------------------------------------
# TLS interception (issue 16): the key only in the proxy's Secret, the certificate for the apps
# ---------------------------------------------------------------------------------------------


def _intercept_config(base: Path, key_dir: Path | None = None) -> Config:
    cert, key = ca.make_ca(["example.test"])
    ca.write_ca(str(base), cert, key, None)
    if key_dir is not None:
        key_dir.mkdir()
        (base / "ca.key").rename(key_dir / "ca.key")
    key_path = "ca.key" if key_dir is None else str(key_dir / "ca.key")
    text = (
        "listen: 0.0.0.0:3128\n"
        f"tls_intercept: {{ca_cert_file: ca.crt, ca_key_file: {key_path}}}\n"
        "allow: [api.example.test]\n"
        "intercept: [{host: api.example.test, rules: [{}], "
        "set_headers: {A: 'file:/run/secrets/token'}}]\n"
    )
    return load_config_text(text, "egress.yaml", str(base), secrets=False)


def test_interception_layout_problems(tmp_path: Path) -> None:
    config = _intercept_config(tmp_path / "a", key_dir=tmp_path / "keys")
    with pytest.raises(RenderError) as caught:
        k8s_render.render(config, "", RenderOptions(config_dir=str(tmp_path / "a")))
    problems = "\n".join(caught.value.problems)
    assert f"tls_intercept.ca_key_file {tmp_path / 'keys' / 'ca.key'} is not next to" in problems
    assert "the ConfigMap does not carry" in problems
    assert "the CA certificate's text is needed" in problems
    with pytest.raises(RenderError, match="needs a config file"):
        k8s_render.render(config, "", RenderOptions())


def test_interception_objects_and_advisories(tmp_path: Path) -> None:
    config = _intercept_config(tmp_path)
    cert = (tmp_path / "ca.crt").read_text()
    options = RenderOptions(
        config_dir=str(tmp_path), extra_config_files={"ca.crt": cert}, ca_cert_pem=cert
    )
    objects = k8s_render.render(config, "text", options)
    (client_ca,) = [o for o in objects if o["metadata"]["name"] == "egressgate-ca"]
    assert client_ca["data"] == {"ca.crt": cert}  # no bundle here: the certificate alone
    (client_env,) = [o for o in objects if o["metadata"]["name"] == "egressgate-client-env"]
    env = client_env["data"]
    assert env["SSL_CERT_FILE"] == "/etc/egressgate-ca/ca.crt"
    notes = "\n".join(k8s_render.advisories(config, options))
    assert "no system CA bundle here" in notes
    assert "mount the secret file at /run/secrets/token" in notes
    assert f"--from-file=ca.key={tmp_path / 'ca.key'}" in notes
