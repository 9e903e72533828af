"""`egressgate k8s render --mode transparent`: what one pod needs to run egressgate as a sidecar.

For apps that ignore proxy variables (docs/transparent.md). Rendered in the app's namespace:

  ConfigMap    <name>-sidecar-config: the config, verbatim, and redirect.nft, the nftables
               script of egressgate/tools/redirect.py (the same text the end-to-end test applies)
  PodTemplate  <name>-sidecar: the two containers to merge into the app's pod template:
               an init container (NET_ADMIN, runs `nft -f redirect.nft`: TCP 80/443 of every
               UID but the sidecar's to `transparent_listen`, UDP/TCP 53 to `dns_listen`,
               everything else dropped, UDP 443 included) and the egressgate container (UID
               RUN_AS_ID, the one UID the rules let out)
  NetworkPolicy <name>-sidecar-egress: the app pods may send only DNS to the cluster DNS and
               TCP on the redirected ports to the internet. A NetworkPolicy selects pods, not
               containers: that the traffic comes from the sidecar is enforced by the nftables
               rules inside the pod, not by the NetworkPolicy.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

from egressgate.config.model import Config
from egressgate.tools.k8s_render import (
    CONFIG_DIR,
    CONFIG_FILE_NAME,
    CONTAINER_NAME,
    DEFAULT_CLIENT_LABEL,
    DEFAULT_CLUSTER_CIDRS,
    IPV6_NON_PUBLIC,
    MANAGED_BY_LABEL,
    METADATA_CIDR,
    NAMESPACE_NAME_LABEL,
    RUN_ARGS,
    RUN_AS_ID,
    Manifest,
    RenderError,
    RenderOptions,
    container_security_context,
)
from egressgate.tools.redirect import DEFAULT_TCP_PORTS, nft_script

REDIRECT_FILE_NAME = "redirect.nft"
INIT_CONTAINER_NAME = "egressgate-redirect"
COMPONENT_SIDECAR = "sidecar"
# An idle sidecar with a small config measured 33 MB RSS at start, 40 MB warm (docs/transparent.md).
SIDECAR_MEMORY_REQUEST = "64Mi"
SIDECAR_MEMORY_LIMIT = "256Mi"
SIDECAR_CPU_REQUEST = "50m"
CONFIG_VOLUME = "egressgate-config"
TMP_VOLUME = "egressgate-tmp"


def render_sidecar(
    config: Config,
    config_text: str,
    options: RenderOptions,
    init_image: str | None = None,
    tcp_ports: Sequence[int] = DEFAULT_TCP_PORTS,
) -> list[Manifest]:
    """The sidecar's objects; RenderError lists every reason the config cannot work so."""
    problems = _problems(config, tcp_ports)
    if problems:
        raise RenderError(problems)
    transparent = config.transparent_listen
    assert transparent is not None
    dns_port = config.dns_listen.port if config.dns_listen is not None else None
    script = nft_script(RUN_AS_ID, transparent.port, dns_port, tcp_ports)
    namespace = options.app_namespace or options.namespace
    labels = dict(options.app_labels) or {DEFAULT_CLIENT_LABEL: options.name}
    return [
        _config_map(options, namespace, config_text, script),
        _pod_template(config, options, namespace, init_image or options.image),
        _network_policy(options, namespace, labels, tcp_ports),
    ]


def _problems(config: Config, tcp_ports: Sequence[int]) -> list[str]:
    problems: list[str] = []
    if config.transparent_listen is None:
        problems.append(
            "--mode transparent needs transparent_listen in the config (e.g. 127.0.0.1:3130)"
        )
    for key, address in (
        ("transparent_listen", config.transparent_listen),
        ("dns_listen", config.dns_listen),
    ):
        if address is None:
            continue
        if address.port == 0:
            problems.append(f"{key} {address}: the redirect rules need a fixed port, not 0")
        if address.host not in ("127.0.0.1", "localhost"):
            problems.append(
                f"{key} {address}: in a sidecar bind 127.0.0.1 (REDIRECT delivers there, and "
                "a UDP socket on the wildcard answers redirected DNS from the wrong address)"
            )
    if config.tls_intercept is not None:
        problems.append(
            "tls_intercept is not rendered for --mode transparent yet (the CA key's Secret and "
            "the app's CA mount): use --mode explicit or --mode dns"
        )
    if any(not 0 < port < 65536 for port in tcp_ports):
        problems.append(f"--redirect-port: invalid port in {list(tcp_ports)}")
    return problems


def _metadata(options: RenderOptions, name: str, namespace: str) -> Manifest:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {
            "app.kubernetes.io/name": "egressgate",
            "app.kubernetes.io/instance": options.name,
            "app.kubernetes.io/component": COMPONENT_SIDECAR,
            MANAGED_BY_LABEL: "egressgate-k8s-render",
        },
    }


def _config_map(options: RenderOptions, namespace: str, text: str, script: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(options, f"{options.name}-sidecar-config", namespace),
        "data": {CONFIG_FILE_NAME: text, REDIRECT_FILE_NAME: script},
    }


def _pod_template(
    config: Config, options: RenderOptions, namespace: str, init_image: str
) -> Manifest:
    admin = config.admin_listen
    spec = sidecar_spec(
        options.image,
        init_image,
        f"{options.name}-sidecar-config",
        None if admin is None else admin.port,
    )
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": _metadata(options, f"{options.name}-sidecar", namespace),
        "template": {
            "metadata": {"labels": {"egressgate.io/sidecar": options.name}},
            "spec": spec,
        },
    }


def sidecar_spec(
    image: str, init_image: str, config_map: str, admin_port: int | None
) -> dict[str, list[Manifest]]:
    """What a pod needs to run behind its own sidecar: `initContainers` (the nftables redirect),
    `containers` (egressgate) and `volumes` (the sidecar ConfigMap `config_map`, which holds the
    config and redirect.nft, and a scratch /tmp). One definition for `k8s render --mode
    transparent` (the PodTemplate) and the injection webhook (tools/inject_patch.py)."""
    mount = {"name": CONFIG_VOLUME, "mountPath": CONFIG_DIR, "readOnly": True}
    init = {
        "name": INIT_CONTAINER_NAME,
        "image": init_image,
        "command": ["nft", "-f", f"{CONFIG_DIR}/{REDIRECT_FILE_NAME}"],
        "securityContext": {
            # nft needs root and NET_ADMIN in the pod's network namespace, nothing else.
            "runAsUser": 0,
            "runAsNonRoot": False,
            "allowPrivilegeEscalation": False,
            "readOnlyRootFilesystem": True,
            "capabilities": {"drop": ["ALL"], "add": ["NET_ADMIN"]},
        },
        "volumeMounts": [mount],
    }
    sidecar: Manifest = {
        "name": CONTAINER_NAME,
        "image": image,
        "args": list(RUN_ARGS),
        "resources": {
            "requests": {"cpu": SIDECAR_CPU_REQUEST, "memory": SIDECAR_MEMORY_REQUEST},
            "limits": {"memory": SIDECAR_MEMORY_LIMIT},
        },
        # runAsUser RUN_AS_ID: the one UID the redirect rules exempt; it must be exactly this.
        "securityContext": container_security_context(),
        "volumeMounts": [dict(mount), {"name": TMP_VOLUME, "mountPath": "/tmp"}],
        **_probes(admin_port),
    }
    return {
        "initContainers": [init],
        "containers": [sidecar],
        "volumes": [
            {"name": CONFIG_VOLUME, "configMap": {"name": config_map}},
            {"name": TMP_VOLUME, "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }


def _probes(admin_port: int | None) -> Manifest:
    if not admin_port:
        return {}
    probe: dict[str, Any] = {"periodSeconds": 10, "timeoutSeconds": 2, "failureThreshold": 3}
    return {
        "readinessProbe": {"httpGet": {"path": "/readyz", "port": admin_port}, **probe},
        "livenessProbe": {"httpGet": {"path": "/healthz", "port": admin_port}, **probe},
    }


def _network_policy(
    options: RenderOptions, namespace: str, labels: dict[str, str], tcp_ports: Sequence[int]
) -> Manifest:
    cluster = [*DEFAULT_CLUSTER_CIDRS, *options.cluster_cidrs]
    v4_except = [c for c in cluster if ":" not in c] + [METADATA_CIDR]
    v6_except = [*IPV6_NON_PUBLIC, *(c for c in cluster if ":" in c)]
    dns_peer = {
        "namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: options.dns_namespace}},
        "podSelector": {"matchLabels": dict(options.dns_labels)},
    }
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(options, f"{options.name}-sidecar-egress", namespace),
        "spec": {
            "podSelector": {"matchLabels": labels},
            "policyTypes": ["Egress"],
            "egress": [
                {
                    "to": [dns_peer],
                    "ports": [
                        {"protocol": "UDP", "port": options.dns_port},
                        {"protocol": "TCP", "port": options.dns_port},
                    ],
                },
                {
                    "to": [
                        {
                            "ipBlock": {
                                "cidr": "0.0.0.0/0",
                                "except": list(dict.fromkeys(v4_except)),
                            }
                        },
                        {"ipBlock": {"cidr": "::/0", "except": list(dict.fromkeys(v6_except))}},
                    ],
                    "ports": [{"protocol": "TCP", "port": port} for port in tcp_ports],
                },
            ],
        },
    }
