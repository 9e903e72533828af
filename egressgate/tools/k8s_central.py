"""`egressgate k8s render --mode dns`: one central egressgate governs a namespace of apps that
ignore proxy variables, with no redirect rules and no NET_ADMIN in their pods.

The DNS guard answers allowed names with the proxy's own address (`dns_answer: proxy`, the
first `dns_proxy_addresses` entry, which becomes the Service's fixed clusterIP); the app connects
there on 80/443 believing it is the origin, and the Service maps both ports to the transparent
listener, which routes by SNI/Host. On top of the explicit render (tools/k8s_render.py):

  Service        clusterIP = dns_proxy_addresses[0]; ports 80 and 443 → transparent_listen,
                 53 UDP/TCP → dns_listen (besides the proxy port)
  Deployment     the container also exposes those ports
  NetworkPolicy  the proxy accepts them from the app; the app may reach ONLY the proxy's ports
                 (its DNS included: the cluster DNS is not reachable, so DNS cannot tunnel)
  PodTemplate    <name>-app-dns: the app side, `dnsPolicy: None` + `dnsConfig` pointing at the
                 Service; merge those two fields into the app's pod template
"""

from __future__ import annotations

import ipaddress
from typing import Any

from egressgate.config.model import Config, DnsAnswer
from egressgate.tools.k8s_render import (
    COMPONENT_CLIENT_POLICY,
    COMPONENT_LABEL,
    COMPONENT_PROXY,
    COMPONENT_PROXY_POLICY,
    DEFAULT_CLIENT_LABEL,
    Manifest,
    RenderError,
    RenderOptions,
    render,
)

TRANSPARENT_PORT_NAME = "transparent"
DNS_UDP_PORT_NAME = "dns-udp"
DNS_TCP_PORT_NAME = "dns-tcp"
APP_PLACEHOLDER_IMAGE = "your-app-image"  # the app's own container: only its dns fields matter
_WILDCARD = ("0.0.0.0", "::")


def render_central(config: Config, config_text: str, options: RenderOptions) -> list[Manifest]:
    """The explicit render plus the transparent and DNS listeners; RenderError if the config
    is not set up for `dns_answer: proxy`."""
    problems = _problems(config)
    if problems:
        raise RenderError(problems)
    objects = render(config, config_text, options)
    service_ip = config.dns.proxy_addresses[0]
    for obj in objects:
        component = obj["metadata"]["labels"].get(COMPONENT_LABEL)
        if obj["kind"] == "Service":
            _extend_service(obj, config, service_ip)
        elif obj["kind"] == "Deployment":
            _extend_container(obj["spec"]["template"]["spec"]["containers"][0], config)
        elif obj["kind"] == "NetworkPolicy" and component == COMPONENT_PROXY_POLICY:
            obj["spec"]["ingress"][0]["ports"] += _pod_ports(config)
        elif obj["kind"] == "NetworkPolicy" and component == COMPONENT_CLIENT_POLICY:
            only_proxy = obj["spec"]["egress"][0]
            only_proxy["ports"] += _pod_ports(config)
            obj["spec"]["egress"] = [only_proxy]  # no cluster DNS: the guard is the resolver
    objects.append(_app_dns(objects, options, service_ip))
    return objects


def _problems(config: Config) -> list[str]:
    problems: list[str] = []
    for key, address in (
        ("transparent_listen", config.transparent_listen),
        ("dns_listen", config.dns_listen),
    ):
        if address is None:
            problems.append(f"--mode dns needs {key} in the config (e.g. 0.0.0.0:3130 / :5353)")
        elif address.port == 0 or address.host not in _WILDCARD:
            problems.append(f"{key} {address}: the Service needs 0.0.0.0 or [::] and a fixed port")
        elif address.port < 1024:
            problems.append(
                f"{key} {address}: the container runs without capabilities; use a port of 1024 "
                "or more (the Service maps 80/443/53 to it)"
            )
    if config.dns.answer is not DnsAnswer.PROXY:
        problems.append("--mode dns needs dns_answer: proxy in the config")
    elif not config.dns.proxy_addresses:
        problems.append("--mode dns needs dns_proxy_addresses (the Service's clusterIP)")
    else:
        try:
            ipaddress.ip_address(config.dns.proxy_addresses[0])
        except ValueError:
            problems.append("dns_proxy_addresses[0] must be an IP address (the clusterIP)")
    return problems


def _pod_ports(config: Config) -> list[Manifest]:
    assert config.transparent_listen is not None
    assert config.dns_listen is not None
    dns = config.dns_listen.port
    return [
        {"protocol": "TCP", "port": config.transparent_listen.port},
        {"protocol": "UDP", "port": dns},
        {"protocol": "TCP", "port": dns},
    ]


def _extend_service(service: Manifest, config: Config, service_ip: str) -> None:
    spec: dict[str, Any] = service["spec"]
    spec["clusterIP"] = service_ip  # the address the DNS guard answers with
    spec["ports"] += [
        {"name": "http", "port": 80, "targetPort": TRANSPARENT_PORT_NAME, "protocol": "TCP"},
        {"name": "https", "port": 443, "targetPort": TRANSPARENT_PORT_NAME, "protocol": "TCP"},
        {"name": "dns-udp", "port": 53, "targetPort": DNS_UDP_PORT_NAME, "protocol": "UDP"},
        {"name": "dns-tcp", "port": 53, "targetPort": DNS_TCP_PORT_NAME, "protocol": "TCP"},
    ]


def _extend_container(container: Manifest, config: Config) -> None:
    assert config.transparent_listen is not None
    assert config.dns_listen is not None
    dns = config.dns_listen.port
    container["ports"] += [
        {
            "name": TRANSPARENT_PORT_NAME,
            "containerPort": config.transparent_listen.port,
            "protocol": "TCP",
        },
        {"name": DNS_UDP_PORT_NAME, "containerPort": dns, "protocol": "UDP"},
        {"name": DNS_TCP_PORT_NAME, "containerPort": dns, "protocol": "TCP"},
    ]


def _app_dns(objects: list[Manifest], options: RenderOptions, service_ip: str) -> Manifest:
    proxy = next(o for o in objects if o["kind"] == "Deployment")
    namespace = options.app_namespace or options.namespace
    labels = dict(options.app_labels) or {DEFAULT_CLIENT_LABEL: options.name}
    metadata = {
        "name": f"{options.name}-app-dns",
        "namespace": namespace,
        "labels": {**proxy["metadata"]["labels"], COMPONENT_LABEL: COMPONENT_PROXY + "-dns"},
    }
    return {
        "apiVersion": "v1",
        "kind": "PodTemplate",
        "metadata": metadata,
        "template": {
            "metadata": {"labels": labels},
            "spec": {
                "dnsPolicy": "None",
                "dnsConfig": {
                    "nameservers": [service_ip],
                    "searches": [
                        f"{namespace}.svc.cluster.local",
                        "svc.cluster.local",
                        "cluster.local",
                    ],
                    "options": [{"name": "ndots", "value": "2"}],
                },
                "containers": [{"name": "app", "image": APP_PLACEHOLDER_IMAGE}],
            },
        },
    }
