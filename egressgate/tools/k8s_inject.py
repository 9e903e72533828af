"""`egressgate k8s render --inject`: the objects that run the Pod injection webhook.

Rendered into the proxy's namespace (docs/kubernetes.md, "Inject with a label"):

  ConfigMap    <name>-inject-config: inject.yaml, the webhook's config (tools/inject_patch.py),
               built from the same inputs as the proxy's <name>-client-env ConfigMap, so that an
               injected pod gets exactly the variables `k8s render` and `egressgate env` give
  Deployment   <name>-inject: `egressgate inject`, hardened like the proxy, no API access
  Service      <name>-inject: 443 → the webhook's HTTPS port
  PodDisruptionBudget, NetworkPolicy (in: the HTTPS port only; out: nothing)
  MutatingWebhookConfiguration <name>-inject: three webhook entries (inject_patch's docstring
               explains why three): namespaces labelled explicit, namespaces labelled
               transparent, and pods labelled in unlabelled namespaces. kube-system,
               kube-public, kube-node-lease and the webhook's own namespace are never selected
               (the webhook must not depend on itself), pods labelled disabled are never sent.
  cert-manager Issuer + Certificate (default), the CA injected by cert-manager's cainjector;
               or, with a CA bundle from `egressgate k8s certs`, caBundle filled in and no
               cert-manager objects (the Secret comes from `k8s certs`).

No RBAC: the webhook reads nothing from the API server (the review carries the pod), so its
pods do not even mount a service account token. Pure, like k8s_render.
"""

from __future__ import annotations

from collections.abc import Sequence
from dataclasses import dataclass
from typing import Any

import yaml

from egressgate.config.model import Config
from egressgate.tools import k8s_certs
from egressgate.tools.inject_patch import (
    DISABLED,
    EXPLICIT,
    INJECT_KEY,
    MUTATE_PATH,
    TRANSPARENT,
)
from egressgate.tools.k8s_render import (
    COMPONENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    NAMESPACE_NAME_LABEL,
    RUN_AS_ID,
    Manifest,
    RenderError,
    RenderOptions,
    cluster_cidrs,
    container_security_context,
    proxy_url,
    socks_url,
)

COMPONENT_INJECT = "inject"
INJECT_CONFIG_DIR = "/etc/egressgate-inject"
INJECT_CONFIG_FILE = "inject.yaml"
TLS_DIR = f"{INJECT_CONFIG_DIR}/tls"
WEBHOOK_PORT = 8443
DEFAULT_TIMEOUT_S = 5  # the API server waits at most this per pod (its default is 10, max 30)
FAILURE_POLICIES = ("Ignore", "Fail")
SYSTEM_NAMESPACES = ("kube-system", "kube-public", "kube-node-lease")
CERT_MANAGER_CA_ANNOTATION = "cert-manager.io/inject-ca-from"
# The webhook serves about 200 reviews/s per core (docs/performance.md); small requests.
CPU_REQUEST = "50m"
MEMORY_REQUEST = "64Mi"
MEMORY_LIMIT = "192Mi"


@dataclass(frozen=True)
class InjectOptions:
    """How the webhook is installed (the rest comes from RenderOptions and the config)."""

    failure_policy: str = "Ignore"
    timeout_s: int = DEFAULT_TIMEOUT_S
    ca_bundle: str | None = None  # base64 PEM (k8s certs); None: cert-manager objects
    sidecar_admin_port: int | None = None  # transparent mode: the sidecar config's admin port


def names(options: RenderOptions) -> dict[str, str]:
    base = f"{options.name}-inject"
    return {
        "base": base,
        "config": f"{base}-config",
        "tls": f"{base}-tls",
        "issuer": f"{base}-selfsigned",
    }


def webhook_config_text(config: Config, options: RenderOptions, inject: InjectOptions) -> str:
    """inject.yaml: the same proxy URL, NO_PROXY inputs and SOCKS URL as `k8s render`'s
    client-env ConfigMap, and the transparent sidecar of `k8s render --mode transparent`."""
    doc: dict[str, Any] = {
        "proxy": proxy_url(config, options),
        "socks": None,
        "no_proxy": list(options.no_proxy),
        "cluster_cidrs": cluster_cidrs(options),
        "java": True,
        "transparent": {
            "image": options.image,
            "config_map": f"{options.name}-sidecar-config",
            "admin_port": inject.sidecar_admin_port,
        },
    }
    if config.socks_listen is not None:
        doc["socks"] = socks_url(config, options)
    header = (
        "# egressgate inject config (docs/configuration.md, 'The injection webhook').\n"
        "# Edits reload within seconds; an invalid edit is refused and the old config stays.\n"
    )
    return header + yaml.safe_dump(doc, sort_keys=False, default_flow_style=False)


def render_inject(config: Config, options: RenderOptions, inject: InjectOptions) -> list[Manifest]:
    """The webhook's objects, in apply order; RenderError lists every problem."""
    problems = _problems(inject)
    if problems:
        raise RenderError(problems)
    n = names(options)
    objects = [
        _config_map(options, n, webhook_config_text(config, options, inject)),
        _deployment(options, n),
        _service(options, n),
        _pdb(options, n),
        _network_policy(options, n),
    ]
    if inject.ca_bundle is None:
        objects += _cert_manager(options, n)
    objects.append(_webhook_configuration(options, n, inject))
    return objects


def _problems(inject: InjectOptions) -> list[str]:
    problems = []
    if inject.failure_policy not in FAILURE_POLICIES:
        problems.append(f"failure policy {inject.failure_policy!r}: Ignore or Fail")
    if not 1 <= inject.timeout_s <= 30:
        problems.append(f"webhook timeout {inject.timeout_s}s: 1 to 30 seconds")
    port = inject.sidecar_admin_port
    if port is not None and not 0 < port < 65536:
        problems.append(f"sidecar admin port {port} is not a port number")
    return problems


def _metadata(options: RenderOptions, name: str, namespace: bool = True) -> Manifest:
    meta: Manifest = {"name": name}
    if namespace:
        meta["namespace"] = options.namespace
    meta["labels"] = {**_selector(options), MANAGED_BY_LABEL: "egressgate-k8s-render"}
    return meta


def _selector(options: RenderOptions) -> dict[str, str]:
    return {
        NAME_LABEL: "egressgate",
        INSTANCE_LABEL: options.name,
        COMPONENT_LABEL: COMPONENT_INJECT,
    }


def _config_map(options: RenderOptions, n: dict[str, str], text: str) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(options, n["config"]),
        "data": {INJECT_CONFIG_FILE: text},
    }


def _deployment(options: RenderOptions, n: dict[str, str]) -> Manifest:
    probe = {
        "httpGet": {"path": "/healthz", "port": "https", "scheme": "HTTPS"},
        "periodSeconds": 10,
        "timeoutSeconds": 2,
        "failureThreshold": 3,
    }
    container = {
        "name": "inject",
        "image": options.image,
        "args": [
            "inject",
            "--config",
            f"{INJECT_CONFIG_DIR}/config/{INJECT_CONFIG_FILE}",
            "--listen",
            f"0.0.0.0:{WEBHOOK_PORT}",
            "--tls-cert",
            f"{TLS_DIR}/tls.crt",
            "--tls-key",
            f"{TLS_DIR}/tls.key",
        ],
        "ports": [{"name": "https", "containerPort": WEBHOOK_PORT, "protocol": "TCP"}],
        "readinessProbe": {**probe, "periodSeconds": 5},
        "livenessProbe": probe,
        "resources": {
            "requests": {"cpu": CPU_REQUEST, "memory": MEMORY_REQUEST},
            "limits": {"memory": MEMORY_LIMIT},
        },
        "securityContext": container_security_context(),
        "volumeMounts": [
            # Directory mounts (never subPath): the kubelet's symlink swap is what reloads.
            {"name": "config", "mountPath": f"{INJECT_CONFIG_DIR}/config", "readOnly": True},
            {"name": "tls", "mountPath": TLS_DIR, "readOnly": True},
        ],
    }
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(options, n["base"]),
        "spec": {
            "replicas": options.replicas,
            "selector": {"matchLabels": _selector(options)},
            "strategy": {
                "type": "RollingUpdate",
                "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
            },
            "template": {
                "metadata": {"labels": _selector(options)},
                "spec": {
                    "automountServiceAccountToken": False,  # it never calls the API server
                    "enableServiceLinks": False,
                    "securityContext": {"runAsNonRoot": True, "runAsUser": RUN_AS_ID},
                    "topologySpreadConstraints": [
                        {
                            "maxSkew": 1,
                            "topologyKey": "kubernetes.io/hostname",
                            "whenUnsatisfiable": "ScheduleAnyway",
                            "labelSelector": {"matchLabels": _selector(options)},
                        }
                    ],
                    "containers": [container],
                    "volumes": [
                        {"name": "config", "configMap": {"name": n["config"]}},
                        {"name": "tls", "secret": {"secretName": n["tls"]}},
                    ],
                },
            },
        },
    }


def _service(options: RenderOptions, n: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(options, n["base"]),
        "spec": {
            "type": "ClusterIP",
            "selector": _selector(options),
            "ports": [{"name": "https", "port": 443, "targetPort": "https", "protocol": "TCP"}],
        },
    }


def _pdb(options: RenderOptions, n: dict[str, str]) -> Manifest:
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(options, n["base"]),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": _selector(options)}},
    }


def _network_policy(options: RenderOptions, n: dict[str, str]) -> Manifest:
    # In: the API server, whose address (often the host network) no selector names, so any
    # source, but only the HTTPS port. Out: nothing at all.
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(options, n["base"]),
        "spec": {
            "podSelector": {"matchLabels": _selector(options)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": [{"ports": [{"protocol": "TCP", "port": WEBHOOK_PORT}]}],
            "egress": [],
        },
    }


def _cert_manager(options: RenderOptions, n: dict[str, str]) -> list[Manifest]:
    return [
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Issuer",
            "metadata": _metadata(options, n["issuer"]),
            "spec": {"selfSigned": {}},
        },
        {
            "apiVersion": "cert-manager.io/v1",
            "kind": "Certificate",
            "metadata": _metadata(options, n["base"]),
            "spec": {
                "secretName": n["tls"],
                "dnsNames": k8s_certs.service_names(n["base"], options.namespace),
                "privateKey": {"algorithm": "ECDSA", "size": 256, "rotationPolicy": "Always"},
                "issuerRef": {"name": n["issuer"], "kind": "Issuer", "group": "cert-manager.io"},
            },
        },
    ]


def _webhook_configuration(
    options: RenderOptions, n: dict[str, str], inject: InjectOptions
) -> Manifest:
    metadata = _metadata(options, n["base"], namespace=False)
    if inject.ca_bundle is None:
        metadata["annotations"] = {CERT_MANAGER_CA_ANNOTATION: f"{options.namespace}/{n['base']}"}
    excluded = {
        "key": NAMESPACE_NAME_LABEL,
        "operator": "NotIn",
        "values": sorted({*SYSTEM_NAMESPACES, options.namespace}),
    }
    entries = [
        (
            f"{mode}.{n['base']}.egressgate.io",
            f"{MUTATE_PATH}/{mode}",
            [{"key": INJECT_KEY, "operator": "In", "values": [mode]}, excluded],
            [{"key": INJECT_KEY, "operator": "NotIn", "values": [DISABLED]}],
        )
        for mode in (EXPLICIT, TRANSPARENT)
    ]
    entries.append(
        (
            f"pod.{n['base']}.egressgate.io",
            MUTATE_PATH,
            [{"key": INJECT_KEY, "operator": "DoesNotExist"}, excluded],
            [{"key": INJECT_KEY, "operator": "In", "values": [EXPLICIT, TRANSPARENT]}],
        )
    )
    return {
        "apiVersion": "admissionregistration.k8s.io/v1",
        "kind": "MutatingWebhookConfiguration",
        "metadata": metadata,
        "webhooks": [
            _webhook(options, n, inject, name, path, namespaces, objects)
            for name, path, namespaces, objects in entries
        ],
    }


def _webhook(
    options: RenderOptions,
    n: dict[str, str],
    inject: InjectOptions,
    name: str,
    path: str,
    namespaces: Sequence[Manifest],
    objects: Sequence[Manifest],
) -> Manifest:
    client: Manifest = {
        "service": {"namespace": options.namespace, "name": n["base"], "path": path, "port": 443}
    }
    if inject.ca_bundle is not None:
        client["caBundle"] = inject.ca_bundle
    return {
        "name": name,
        "admissionReviewVersions": ["v1"],
        "clientConfig": client,
        "rules": [
            {
                "operations": ["CREATE"],
                "apiGroups": [""],
                "apiVersions": ["v1"],
                "resources": ["pods"],
                "scope": "Namespaced",
            }
        ],
        "namespaceSelector": {"matchExpressions": list(namespaces)},
        "objectSelector": {"matchExpressions": list(objects)},
        "matchPolicy": "Equivalent",
        "sideEffects": "None",
        "timeoutSeconds": inject.timeout_s,
        "failurePolicy": inject.failure_policy,
        # The injected marker makes a second call a no-op, so asking for one would only add
        # latency; pods changed by later webhooks keep what this one added.
        "reinvocationPolicy": "Never",
    }
