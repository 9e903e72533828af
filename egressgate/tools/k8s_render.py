"""Kubernetes manifests for an egressgate deployment, rendered from a validated config.

This module owns what `egressgate k8s render` prints: the proxy's ConfigMap, Deployment, Service,
PodDisruptionBudget and HorizontalPodAutoscaler, the two NetworkPolicies that make the proxy the
application's only way out (one for the app pods, one for the proxy pods), and the ConfigMap of
HTTP(S)_PROXY / NO_PROXY variables the app loads with `envFrom`. It also owns the in-container
paths (CONFIG_PATH, RUN_AS_ID) that the Dockerfile and docs/kubernetes.md must agree with.

Pure: `render(config, config_text, options)` turns inputs into a list of manifest dicts and
`to_yaml(objects)` turns those into a multi-document YAML stream. No cluster access, no file or
network I/O, and no import of egressgate.proxy / net / runtime (rendering runs on a workstation
or in CI, which need not have the proxy's native dependencies). Problems with the inputs raise
RenderError listing every problem; `advisories()` lists things that render fine but that the
operator should know (files the manifests do not ship, a default label to add to the app...).
"""

from __future__ import annotations

import hashlib
import ipaddress
import math
import os
import re
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, field, replace
from typing import Any

import yaml

from egressgate import __version__
from egressgate.config.model import Config, ListenAddress
from egressgate.names.patterns import parse_cidr
from egressgate.tools import proxy_env

Manifest = dict[str, Any]
IPNetwork = ipaddress.IPv4Network | ipaddress.IPv6Network

# -- paths and identities shared with the Dockerfile and the docs (tests check they agree) -------
CONFIG_DIR = "/etc/egressgate"
CONFIG_FILE_NAME = "egress.yaml"
CONFIG_PATH = f"{CONFIG_DIR}/{CONFIG_FILE_NAME}"
RUN_ARGS = ("run", "--config", CONFIG_PATH)
LIVE_CHECK_COMMAND = ("egressgate", "check", "--live", "--config", CONFIG_PATH)
RUN_AS_ID = 65532  # the conventional "nonroot" uid/gid of distroless-style images
DEFAULT_IMAGE = f"egressgate:{__version__}"
CONTAINER_NAME = "egressgate"

# -- network defaults ------------------------------------------------------------------------------
DEFAULT_CLUSTER_CIDRS = ("10.0.0.0/8", "172.16.0.0/12", "192.168.0.0/16")
# Link-local: cloud metadata endpoints (169.254.169.254) and node-local agents live here.
METADATA_CIDR = "169.254.0.0/16"
# IPv6 ranges that are never the public internet: unique-local (which holds AWS's metadata
# address fd00:ec2::254) and link-local.
IPV6_NON_PUBLIC = ("fc00::/7", "fe80::/10")
NAMESPACE_NAME_LABEL = "kubernetes.io/metadata.name"  # set by Kubernetes on every namespace
DEFAULT_DNS_NAMESPACE = "kube-system"
DEFAULT_DNS_LABELS: Mapping[str, str] = {"k8s-app": "kube-dns"}  # CoreDNS keeps this label too
DNS_PORT = 53

# -- labels and annotations ------------------------------------------------------------------------
NAME_LABEL = "app.kubernetes.io/name"
INSTANCE_LABEL = "app.kubernetes.io/instance"
COMPONENT_LABEL = "app.kubernetes.io/component"
MANAGED_BY_LABEL = "app.kubernetes.io/managed-by"
# sha256 of the config text: the same value as /readyz's "sha256" and the egressgate_config_info
# metric, so an operator can see which config a pod runs.
CONFIG_HASH_ANNOTATION = "egressgate.io/config-sha256"
# On the pod template only: covers the config AND the extra files of the ConfigMap (a hosts file
# change alone does not trigger a hot reload, so it must roll the pods).
FILES_HASH_ANNOTATION = "egressgate.io/files-sha256"
# Used as the app selector when no --app-label is given: teams add it to their pod template to
# opt in, and one selector then covers every app that uses this proxy.
DEFAULT_CLIENT_LABEL = "egressgate.io/client"

# Components, also the key to_yaml() uses to pick each document's explanatory comment.
COMPONENT_CONFIG = "config"
COMPONENT_PROXY = "proxy"
COMPONENT_PROXY_POLICY = "proxy-network-policy"
COMPONENT_CLIENT_POLICY = "client-network-policy"
COMPONENT_CLIENT_ENV = "client-env"
COMPONENT_VERIFY = "verify-job"  # k8s_verify_job: `verify --attack` as the app
COMPONENT_INJECT = "inject"  # the injection webhook (tools/k8s_inject.py)
COMPONENT_CLIENT_CA = "client-ca"

# -- TLS interception (docs/interception.md, "Kubernetes") ------------------------------------
# The CA key and the file secrets of set_headers live in this Secret (created by the operator,
# never rendered: manifests end up in git), projected next to the config in the proxy pods only.
INTERCEPT_SECRET_SUFFIX = "-intercept"
# Root-owned (the kubelet writes them) and readable by the pod's fsGroup only: what
# config/intercept_ca.py accepts for a key (PostgreSQL's rule), and nothing for others.
SECRET_FILE_MODE = 0o440
# Where apps mount the <name>-ca ConfigMap (the CA certificate, and the bundle with it).
APP_CA_DIR = "/etc/egressgate-ca"
APP_CA_CERT_NAME = "ca.crt"
APP_CA_BUNDLE_NAME = "bundle.pem"

# -- timing and sizing -----------------------------------------------------------------------------
# SIGKILL comes terminationGracePeriodSeconds after the preStop hook starts; the proxy needs the
# preStop sleep + shutdown_delay_s + drain_timeout_s, plus time to close what is left.
GRACE_MARGIN_S = 10
# While a deleted pod's endpoint is withdrawn, kube-proxy on every node keeps routing new
# connections to it for a few seconds. With the default limits.shutdown_delay_s of 0 the proxy
# closes its listeners at SIGTERM (connection refused), so SIGTERM waits behind a preStop sleep.
DEFAULT_PRESTOP_SLEEP_S = 5
DEFAULT_CPU_PER_WORKER_M = 100
DEFAULT_MEMORY_REQUEST_PER_WORKER_MI = 128
DEFAULT_MEMORY_LIMIT_PER_WORKER_MI = 256
DEFAULT_HPA_MAX = 10
DEFAULT_HPA_CPU_TARGET = 70
MIN_REPLICAS = 2

_DNS_LABEL = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?$")  # RFC 1123 label (namespaces)
_DNS_1035 = re.compile(r"^[a-z]([-a-z0-9]*[a-z0-9])?$")  # Service names must start with a letter
_LABEL_NAME = re.compile(r"^[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?$")
_LABEL_PREFIX = re.compile(r"^[a-z0-9]([-a-z0-9]*[a-z0-9])?(\.[a-z0-9]([-a-z0-9]*[a-z0-9])?)*$")
_QUANTITY = re.compile(r"^[+]?(\d+(\.\d*)?|\.\d+)(m|k|M|G|T|P|E|Ki|Mi|Gi|Ti|Pi|Ei|[eE][+-]?\d+)?$")
_WILDCARD_HOSTS = frozenset({"0.0.0.0", "::"})
_CONFIG_MAP_KEY = re.compile(r"^[-._a-zA-Z0-9]+$")


class RenderError(ValueError):
    """The inputs cannot make a working deployment; `problems` lists every reason."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


@dataclass(frozen=True)
class RenderOptions:
    """Everything about the deployment that is not in the egressgate config itself.

    Resource fields left as None are derived from the config's `workers`; `cluster_cidrs` are
    added to DEFAULT_CLUSTER_CIDRS (they are excluded from the proxy's egress and put in
    NO_PROXY). Without `app_labels` the app selector is `egressgate.io/client=<name>`.
    """

    namespace: str = "egressgate"
    name: str = "egressgate"
    app_labels: Mapping[str, str] = field(default_factory=dict)
    app_namespace: str | None = None  # None: the app runs in `namespace`
    replicas: int = MIN_REPLICAS
    image: str = DEFAULT_IMAGE
    cluster_cidrs: Sequence[str] = ()
    no_proxy: Sequence[str] = ()  # more hosts/.suffixes/IPs the app reaches directly
    dns_namespace: str = DEFAULT_DNS_NAMESPACE
    dns_labels: Mapping[str, str] = field(default_factory=lambda: dict(DEFAULT_DNS_LABELS))
    dns_port: int = DNS_PORT
    # DNS servers that are not pods, e.g. NodeLocal DNSCache on 169.254.20.10: ipBlock peers.
    dns_cidrs: Sequence[str] = ()
    cpu_request: str | None = None
    cpu_limit: str | None = None  # none by default: CPU throttling adds latency to every request
    memory_request: str | None = None
    memory_limit: str | None = None
    prestop_sleep_s: int = DEFAULT_PRESTOP_SLEEP_S  # 0: no preStop hook (Kubernetes < 1.30)
    hpa: bool = True
    hpa_max_replicas: int = DEFAULT_HPA_MAX
    hpa_cpu_target_percent: int = DEFAULT_HPA_CPU_TARGET
    # Who may reach the admin port (metrics). None and empty: any pod in the cluster.
    metrics_namespace: str | None = None
    metrics_labels: Mapping[str, str] = field(default_factory=dict)
    service_metrics_port: bool = False  # also expose the admin port on the Service, as "metrics"
    # More files for the config ConfigMap, name → text, mounted next to egress.yaml (e.g. the
    # config's `hosts_file: hosts`). Never credentials: those belong in a Secret.
    extra_config_files: Mapping[str, str] = field(default_factory=dict)
    # The directory of the config file on this machine: files next to it are next to
    # egress.yaml in the pod (TLS interception places its CA key and secrets by it).
    config_dir: str | None = None
    # tls_intercept: the CA certificate for the apps' <name>-ca ConfigMap, and the public CA
    # bundle with it appended (for the variables that replace a runtime's store).
    ca_cert_pem: str | None = None
    ca_bundle_pem: str | None = None


@dataclass(frozen=True)
class _Plan:
    """The validated, derived facts every builder works from (so builders stay small)."""

    name: str
    namespace: str
    app_namespace: str
    image: str
    replicas: int
    selector: Mapping[str, str]
    app_labels: Mapping[str, str]
    proxy_ports: tuple[tuple[str, int], ...]  # (port name, number): plain, optional TLS, SOCKS
    admin_port: int | None  # None: no admin listener
    admin_reachable: bool  # bound to a wildcard: kubelet and Prometheus can reach it
    cluster_networks: tuple[IPNetwork, ...]
    nameservers: tuple[ListenAddress, ...]
    allow_private: tuple[IPNetwork, ...]
    resources: Mapping[str, Mapping[str, str]]
    client_env: Mapping[str, str]
    grace_period_s: int
    config_sha256: str
    files_sha256: str
    options: RenderOptions
    # TLS interception: the files projected from the <name>-intercept Secret (none: off).
    intercept_secret_files: tuple[str, ...] = ()


# ---------------------------------------------------------------------------------------------
# Public API
# ---------------------------------------------------------------------------------------------


def render(config: Config, config_text: str, options: RenderOptions) -> list[Manifest]:
    """The manifests for `config` (whose YAML source is `config_text`), in apply order.

    Raises RenderError when the config or options cannot work on Kubernetes (listening on
    loopback, fewer than 2 replicas, invalid names...).
    """
    plan = _plan(config, config_text, options)
    objects = [
        _config_map(plan, config_text),
        _service(plan),
        _deployment(plan),
        _pod_disruption_budget(plan),
    ]
    if options.hpa:
        objects.append(_autoscaler(plan))
    objects += [_proxy_network_policy(plan), _client_network_policy(plan), _client_env(plan)]
    if config.tls_intercept is not None:
        objects.append(_client_ca(plan))
    return objects


def proxy_url(config: Config, options: RenderOptions) -> str:
    """The in-cluster URL of the proxy Service, as the app's HTTP(S)_PROXY."""
    return f"http://{options.name}.{options.namespace}.svc.cluster.local:{config.listen.port}"


def client_env(config: Config, options: RenderOptions) -> dict[str, str]:
    """The variables an app needs to use the proxy: HTTP(S)_PROXY and NO_PROXY in both letter
    cases, ALL_PROXY (both cases) when `socks_listen` is set, and JAVA_TOOL_OPTIONS (the JVM
    ignores the variables).

    Built by `egressgate env`'s builder (tools/proxy_env.py), so both commands agree: NO_PROXY
    is localhost, 127.0.0.1, ::1, .svc, .cluster.local and the cluster CIDRs, spelled so that
    every measured runtime reads it alike.
    """
    return _proxy_env(config, options).as_dict(java=True)


def cluster_cidrs(options: RenderOptions) -> list[str]:
    """The cluster's ranges: DEFAULT_CLUSTER_CIDRS plus `options.cluster_cidrs`, deduplicated
    (NO_PROXY of the client env and of the injection webhook's config)."""
    return [str(network) for network in _cluster_networks(options.cluster_cidrs)]


def socks_url(config: Config, options: RenderOptions) -> str | None:
    """The in-cluster URL of the Service's SOCKS5 port (ALL_PROXY), when `socks_listen` is set:
    socks5h, so that names are resolved, and judged, by the proxy."""
    if config.socks_listen is None:
        return None
    host = f"{options.name}.{options.namespace}.svc.cluster.local"
    return f"socks5h://{host}:{config.socks_listen.port}"


def _proxy_env(config: Config, options: RenderOptions) -> proxy_env.ProxyEnv:
    env = proxy_env.build_env(proxy_url(config, options), options.no_proxy, cluster_cidrs(options))
    socks = socks_url(config, options)
    if socks is not None:
        # ALL_PROXY/all_proxy and the JVM's socksProxyHost pair, as `egressgate env --socks`
        # prints them: git, curl and the JVM reach non-HTTP destinations through the proxy too.
        env = env.with_socks(*proxy_env.parse_socks_url(socks))
    if config.tls_intercept is not None:
        name = APP_CA_BUNDLE_NAME if options.ca_bundle_pem else APP_CA_CERT_NAME
        ca = proxy_env.ca_trust(f"{APP_CA_DIR}/{name}")
        env = env.with_ca(replace(ca, cert_file=f"{APP_CA_DIR}/{APP_CA_CERT_NAME}"))
    return env


def render_problems(options: RenderOptions) -> list[str]:
    """What is wrong with `options` alone (names, labels, CIDRs, NO_PROXY extras, sizes)."""
    return [
        *_no_proxy_problems(options.no_proxy),
        *_option_problems(options),
        *_cidr_problems(options.cluster_cidrs, "cluster CIDR"),
    ]


def parse_label(text: str) -> tuple[str, str]:
    """`key=value` → (key, value), checked against Kubernetes label syntax; ValueError if not."""
    key, sep, value = text.partition("=")
    if not sep:
        raise ValueError(f"{text!r}: expected key=value, like app=my-app")
    problems = _label_problems({key: value}, "label")
    if problems:
        raise ValueError(problems[0])
    return key, value


def advisories(config: Config, options: RenderOptions) -> list[str]:
    """Things that render but need the operator's attention; one sentence each.

    Expects inputs that render() accepts.
    """
    notes: list[str] = []
    if not options.app_labels:
        notes.append(
            f"no --app-label given: the app selector is {DEFAULT_CLIENT_LABEL}={options.name}; "
            "add that label to your app's pod template (spec.template.metadata.labels)"
        )
    shipped_elsewhere = _referenced_files(config, options.extra_config_files)
    if shipped_elsewhere:
        notes.append(
            "the config refers to files the rendered manifests do not ship ("
            + ", ".join(shipped_elsewhere)
            + "): put them in a Secret or ConfigMap and mount them where the config says"
        )
    if config.auth is not None and config.auth.users_env:
        notes.append(
            f"auth.users_env: add the variable {config.auth.users_env} to the egressgate "
            "container from a Secret (env.valueFrom.secretKeyRef)"
        )
    if config.access_log != "-":
        # Not only when outside /tmp: the loader resolved the path on this machine, and a log
        # in the pod's /tmp (an emptyDir) is lost with the pod and never collected.
        notes.append(
            f"access_log {config.access_log!r}: in the pod the root filesystem is read-only "
            "and /tmp is a scratch emptyDir; log to stdout ('-') so the cluster collects it"
        )
    if config.listen.port < 1024:
        notes.append(
            f"listen port {config.listen.port} is below 1024: a non-root container with every "
            "capability dropped may not bind it; prefer 3128"
        )
    if options.prestop_sleep_s == 0:
        notes.append(
            "no preStop sleep: for a few seconds after a pod is deleted, nodes still route new "
            "connections to it, and a draining proxy refuses them (503 shutting-down)"
        )
    if config.admin_listen is None:
        notes.append(
            "admin_listen is off: probes are exec probes (a Python start each period) and "
            "there are no metrics to scrape"
        )
    elif _is_loopback(config.admin_listen.host):
        notes.append(
            f"admin_listen {config.admin_listen} is loopback-only: probes are exec probes and "
            "Prometheus cannot scrape it; bind 0.0.0.0 for httpGet probes and metrics"
        )
    notes += _intercept_advisories(config, options)
    notes += [f"client env: {warning}" for warning in _proxy_env(config, options).warnings]
    return notes


def _intercept_advisories(config: Config, options: RenderOptions) -> list[str]:
    """What TLS interception needs by hand: the Secret, secrets from variables or elsewhere,
    and the app's CA mount."""
    tls = config.tls_intercept
    if tls is None:
        return []
    secret = f"{options.name}{INTERCEPT_SECRET_SUFFIX}"
    files = " ".join(
        f"--from-file={name}={path}" for name, path in _intercept_secret_paths(config, options)
    )
    notes = [
        f"tls_intercept: create the Secret {secret} before applying (it is never rendered: "
        f"manifests end up in git): kubectl -n {options.namespace} create secret generic "
        f"{secret} {files}",
        f"tls_intercept: in the app's pod, mount the ConfigMap {options.name}-ca at "
        f"{APP_CA_DIR} (volumes: [{{name: egressgate-ca, configMap: {{name: "
        f"{options.name}-ca}}}}], volumeMounts: [{{name: egressgate-ca, mountPath: "
        f"{APP_CA_DIR}, readOnly: true}}]): the client env's CA variables point there",
    ]
    if not options.ca_bundle_pem:
        notes.append(
            "tls_intercept: no system CA bundle here, so the app's CA variables point at the "
            "CA certificate alone: hosts that are tunnelled, not intercepted, will fail to "
            "verify in runtimes whose variable replaces their store; install the CA in the "
            "app image's system store instead"
        )
    notes += _secret_advisories(config, secret)
    if tls.upstream_ca_file and os.path.dirname(tls.upstream_ca_file) != options.config_dir:
        notes.append(
            f"tls_intercept.upstream_ca_file {tls.upstream_ca_file}: mount it at that path, or "
            "put it next to the config (it then goes into the ConfigMap)"
        )
    return notes


def _secret_advisories(config: Config, secret: str) -> list[str]:
    """set_headers secrets the Secret `secret` does not carry: variables, files elsewhere."""
    notes: list[str] = []
    for policy in config.policies:
        for entry in policy.intercept:
            for header in entry.set_headers:
                kind, _, where = header.secret.source.partition(":")
                what = f"set_headers {header.name} of {entry.host}"
                if kind == "env":
                    notes.append(
                        f"{what}: add the variable {where} to the egressgate container from a "
                        "Secret (env.valueFrom.secretKeyRef)"
                    )
                elif "/" in where:
                    notes.append(
                        f"{what}: mount the secret file at {where} in the egressgate container "
                        f"(or put it next to the config, where it goes into {secret})"
                    )
    return notes


def _intercept_secret_paths(config: Config, options: RenderOptions) -> list[tuple[str, str]]:
    """(name in the Secret, file on this machine): the CA key, and each `file:` secret written
    as a bare name next to the config (in the pod: next to egress.yaml)."""
    tls = config.tls_intercept
    if tls is None or options.config_dir is None:
        return []
    pairs = {os.path.basename(tls.ca_key_file): tls.ca_key_file}
    for policy in config.policies:
        for entry in policy.intercept:
            for header in entry.set_headers:
                kind, _, where = header.secret.source.partition(":")
                if kind == "file" and "/" not in where:
                    pairs.setdefault(where, os.path.join(options.config_dir, where))
    return list(pairs.items())


# ---------------------------------------------------------------------------------------------
# Validation and derivation
# ---------------------------------------------------------------------------------------------


def _plan(config: Config, config_text: str, options: RenderOptions) -> _Plan:
    problems = [
        *_no_proxy_problems(options.no_proxy),
        *_option_problems(options),
        *_listener_problems(config),
        *_cidr_problems(options.cluster_cidrs, "cluster CIDR"),
        *_cidr_problems(options.dns_cidrs, "DNS CIDR"),
        *_intercept_problems(config, options),
    ]
    app_labels = dict(options.app_labels) or {DEFAULT_CLIENT_LABEL: options.name}
    selector = {NAME_LABEL: "egressgate", INSTANCE_LABEL: options.name}
    app_namespace = options.app_namespace or options.namespace
    if app_namespace == options.namespace and _selects(app_labels, _pod_labels(selector)):
        problems.append(
            f"the app labels {_format_labels(app_labels)} also select the proxy pods: the app "
            "NetworkPolicy would confine the proxy too; use labels only the app carries"
        )
    if problems:
        raise RenderError(problems)
    admin = config.admin_listen
    return _Plan(
        name=options.name,
        namespace=options.namespace,
        app_namespace=app_namespace,
        image=options.image,
        replicas=options.replicas,
        selector=selector,
        app_labels=app_labels,
        proxy_ports=_proxy_ports(config),
        admin_port=None if admin is None else admin.port,
        admin_reachable=admin is not None and admin.host in _WILDCARD_HOSTS,
        cluster_networks=_cluster_networks(options.cluster_cidrs),
        nameservers=tuple(ListenAddress.parse(ns) for ns in config.nameservers),
        allow_private=_allow_private(config),
        resources=_resources(config.workers, options),
        client_env=client_env(config, options),
        grace_period_s=_grace_period(config, options.prestop_sleep_s),
        config_sha256=hashlib.sha256(config_text.encode("utf-8")).hexdigest(),
        files_sha256=_files_sha256(config_text, options.extra_config_files),
        options=options,
        intercept_secret_files=tuple(n for n, _ in _intercept_secret_paths(config, options)),
    )


def _intercept_problems(config: Config, options: RenderOptions) -> list[str]:
    """tls_intercept's files must sit next to the config: the certificate goes into the
    ConfigMap, the key into the Secret projected beside it (the config names them relatively,
    so they resolve the same in the pod)."""
    tls = config.tls_intercept
    if tls is None:
        return []
    layout = (
        "write them as names next to the config (ca_cert_file: ca.crt, ca_key_file: ca.key, as "
        "`egressgate ca init --out <config dir>` makes them)"
    )
    problems: list[str] = []
    if options.config_dir is None:
        return [f"tls_intercept needs a config file whose directory holds the CA files; {layout}"]
    for key, path in (("ca_cert_file", tls.ca_cert_file), ("ca_key_file", tls.ca_key_file)):
        if os.path.dirname(path) != options.config_dir:
            problems.append(f"tls_intercept.{key} {path} is not next to the config: {layout}")
    if os.path.basename(tls.ca_cert_file) not in options.extra_config_files:
        problems.append(f"tls_intercept: the ConfigMap does not carry {tls.ca_cert_file}")
    if os.path.basename(tls.ca_key_file) in options.extra_config_files:
        problems.append(f"tls_intercept.ca_key_file {tls.ca_key_file} would go into a ConfigMap")
    if options.ca_cert_pem is None:
        problems.append("tls_intercept: the CA certificate's text is needed for the apps")
    return problems


def _option_problems(options: RenderOptions) -> list[str]:
    problems: list[str] = []
    if options.replicas < MIN_REPLICAS:
        problems.append(
            f"replicas must be at least {MIN_REPLICAS} (got {options.replicas}): with one "
            "replica every node drain, rollout or crash cuts the app off from the internet"
        )
    if not (_DNS_1035.match(options.name) and len(options.name) <= 40):
        problems.append(
            f"name {options.name!r}: use lowercase letters, digits and '-', starting with a "
            "letter, at most 40 characters (it names a Service and, with suffixes, other objects)"
        )
    for what, value in (
        ("namespace", options.namespace),
        ("app namespace", options.app_namespace),
        ("DNS namespace", options.dns_namespace),
        ("metrics namespace", options.metrics_namespace),
    ):
        if value is not None and not (_DNS_LABEL.match(value) and len(value) <= 63):
            problems.append(f"{what} {value!r} is not a valid namespace name")
    problems += _label_problems(options.app_labels, "app label")
    problems += _label_problems(options.dns_labels, "DNS label")
    problems += _label_problems(options.metrics_labels, "metrics label")
    if not options.dns_labels:
        problems.append("give at least one DNS pod label (the default is k8s-app=kube-dns)")
    if not 0 <= options.prestop_sleep_s <= 300:
        problems.append(f"preStop sleep {options.prestop_sleep_s}s: give 0 to 300 seconds")
    if not 1 <= options.dns_port <= 65535:
        problems.append(f"DNS port {options.dns_port} is not a port number")
    if not options.image.strip() or any(c.isspace() for c in options.image):
        problems.append(f"image {options.image!r} is not an image reference")
    problems += _extra_file_problems(options.extra_config_files)
    problems += _quantity_problems(options)
    problems += _autoscaler_problems(options)
    return problems


def _label_problems(labels: Mapping[str, str], what: str) -> list[str]:
    problems: list[str] = []
    for key, value in labels.items():
        prefix, slash, name = key.rpartition("/")
        key_ok = (
            _LABEL_NAME.match(name)
            and len(name) <= 63
            and (not slash or (_LABEL_PREFIX.match(prefix) and len(prefix) <= 253))
        )
        if not key_ok:
            problems.append(f"{what} key {key!r} is not a valid Kubernetes label key")
        if value and not (_LABEL_NAME.match(value) and len(value) <= 63):
            problems.append(
                f"{what} {key}={value!r}: values are at most 63 letters, digits, '-', '_' "
                "or '.', starting and ending with a letter or digit"
            )
    return problems


def _extra_file_problems(files: Mapping[str, str]) -> list[str]:
    return [
        f"extra config file {name!r}: a ConfigMap key is letters, digits, '-', '_', '.' and "
        f"must not be {CONFIG_FILE_NAME}"
        for name in files
        if not _CONFIG_MAP_KEY.match(name) or name in (CONFIG_FILE_NAME, ".", "..")
    ]


def _quantity_problems(options: RenderOptions) -> list[str]:
    quantities = {
        "CPU request": options.cpu_request,
        "CPU limit": options.cpu_limit,
        "memory request": options.memory_request,
        "memory limit": options.memory_limit,
    }
    return [
        f"{what} {value!r} is not a Kubernetes quantity (like 250m, 1, 256Mi)"
        for what, value in quantities.items()
        if value is not None and not _QUANTITY.match(value)
    ]


def _autoscaler_problems(options: RenderOptions) -> list[str]:
    if not options.hpa:
        return []
    problems: list[str] = []
    if options.hpa_max_replicas < options.replicas:
        problems.append(
            f"HPA maximum {options.hpa_max_replicas} is below the replica count "
            f"{options.replicas} (the HPA minimum)"
        )
    if options.hpa_cpu_target_percent < 1:
        problems.append("HPA CPU target must be a percentage ≥ 1 of the CPU request")
    return problems


def _listener_problems(config: Config) -> list[str]:
    """Listeners a Service or a probe could never reach from outside the pod."""
    problems: list[str] = []
    listeners = [("listen", config.listen)]
    if config.tls_listen is not None:
        listeners.append(("tls_listen.listen", config.tls_listen.listen))
    if config.socks_listen is not None:
        listeners.append(("socks_listen", config.socks_listen))
    for key, address in listeners:
        if address.port == 0:
            problems.append(f"{key} {address}: a Service needs a fixed port, not 0")
        if address.host not in _WILDCARD_HOSTS:
            problems.append(
                f"{key} {address}: in a pod the proxy must listen on every interface "
                f"(0.0.0.0:{address.port} or [::]:{address.port}); the Service reaches the "
                "pod's address, never its loopback or a fixed IP"
            )
    admin = config.admin_listen
    if admin is not None and admin.port == 0:
        problems.append(f"admin_listen {admin}: probes need a fixed port, not 0")
    if admin is not None and admin.host not in _WILDCARD_HOSTS and not _is_loopback(admin.host):
        problems.append(
            f"admin_listen {admin}: bind 0.0.0.0 (probes reach the pod address) or 127.0.0.1 "
            "(exec probes), not a fixed address the pod will not have"
        )
    return problems


def _no_proxy_problems(extra: Sequence[str]) -> list[str]:
    problems: list[str] = []
    for item in extra:
        try:
            proxy_env.normalise_extra(item)
        except (proxy_env.ProxyEnvError, ValueError) as exc:
            problems.append(f"no-proxy entry {item!r}: {exc}")
    return problems


def _cidr_problems(cidrs: Iterable[str], what: str) -> list[str]:
    problems: list[str] = []
    for text in cidrs:
        try:
            network = parse_cidr(text)
        except ValueError as exc:
            problems.append(f"{what} {exc}")
            continue
        if network.prefixlen == 0:
            # ipBlock.except must lie strictly inside 0.0.0.0/0 (or ::/0), and a DNS rule to
            # everything would be an internet rule.
            problems.append(f"{what} {text!r} covers every address; give the actual range")
    return problems


def _is_loopback(host: str) -> bool:
    if host == "localhost":
        return True
    try:
        return ipaddress.ip_address(host).is_loopback
    except ValueError:
        return False


def _pod_labels(selector: Mapping[str, str]) -> dict[str, str]:
    return {**selector, COMPONENT_LABEL: COMPONENT_PROXY}


def _selects(selector: Mapping[str, str], labels: Mapping[str, str]) -> bool:
    return all(labels.get(key) == value for key, value in selector.items())


def _format_labels(labels: Mapping[str, str]) -> str:
    return ",".join(f"{key}={value}" for key, value in labels.items())


def _proxy_ports(config: Config) -> tuple[tuple[str, int], ...]:
    ports = [("proxy", config.listen.port)]
    if config.tls_listen is not None:
        ports.append(("proxy-tls", config.tls_listen.listen.port))
    if config.socks_listen is not None:
        # The Service, the container and both NetworkPolicies use this list: SOCKS clients
        # are the proxy's clients (the same app pods), on one more port.
        ports.append(("socks", config.socks_listen.port))
    return tuple(ports)


def _cluster_networks(extra: Iterable[str]) -> tuple[IPNetwork, ...]:
    """DEFAULT_CLUSTER_CIDRS plus `extra`, normalised and without duplicates, in order."""
    seen: dict[IPNetwork, None] = {}
    for text in (*DEFAULT_CLUSTER_CIDRS, *extra):
        seen.setdefault(parse_cidr(text), None)
    return tuple(seen)


def _allow_private(config: Config) -> tuple[IPNetwork, ...]:
    seen: dict[IPNetwork, None] = {}
    for policy in config.policies:
        for text in policy.allow_private:
            seen.setdefault(parse_cidr(text), None)
    return tuple(seen)


def _referenced_files(config: Config, shipped: Mapping[str, str]) -> list[str]:
    files: list[str] = []
    hosts = config.hosts_file
    if hosts and hosts.rpartition("/")[2] not in shipped:
        files.append(f"hosts_file {hosts}")
    if config.auth is not None and config.auth.users_file:
        files.append(f"auth.users_file {config.auth.users_file}")
    if config.tls_listen is not None:
        tls = config.tls_listen
        files += [f"tls_listen.cert_file {tls.cert_file}", f"tls_listen.key_file {tls.key_file}"]
        if tls.client_ca_file:
            files.append(f"tls_listen.client_ca_file {tls.client_ca_file}")
    return files


def _resources(workers: int, options: RenderOptions) -> dict[str, dict[str, str]]:
    """Requests scale with the worker processes; the HPA's CPU target is a share of the request."""
    requests = {
        "cpu": options.cpu_request or f"{DEFAULT_CPU_PER_WORKER_M * workers}m",
        "memory": options.memory_request or f"{DEFAULT_MEMORY_REQUEST_PER_WORKER_MI * workers}Mi",
    }
    limits = {"memory": options.memory_limit or f"{DEFAULT_MEMORY_LIMIT_PER_WORKER_MI * workers}Mi"}
    if options.cpu_limit is not None:
        limits["cpu"] = options.cpu_limit
    return {"requests": requests, "limits": limits}


def _files_sha256(config_text: str, extra: Mapping[str, str]) -> str:
    digest = hashlib.sha256()
    for name, text in [(CONFIG_FILE_NAME, config_text), *sorted(extra.items())]:
        # Length-prefixed, so that moving bytes between name and content changes the hash.
        for part in (name.encode(), text.encode("utf-8")):
            digest.update(len(part).to_bytes(8, "big") + part)
    return digest.hexdigest()


def _grace_period(config: Config, prestop_sleep_s: int) -> int:
    limits = config.limits
    drain = math.ceil(limits.shutdown_delay_s + limits.drain_timeout_s)
    return prestop_sleep_s + drain + GRACE_MARGIN_S


# ---------------------------------------------------------------------------------------------
# Object builders
# ---------------------------------------------------------------------------------------------


def _metadata(plan: _Plan, name: str, component: str, namespace: str | None = None) -> Manifest:
    return {
        "name": name,
        "namespace": namespace or plan.namespace,
        "labels": {
            **plan.selector,
            COMPONENT_LABEL: component,
            MANAGED_BY_LABEL: "egressgate-k8s-render",
        },
    }


def _config_map(plan: _Plan, config_text: str) -> Manifest:
    metadata = _metadata(plan, f"{plan.name}-config", COMPONENT_CONFIG)
    metadata["annotations"] = {CONFIG_HASH_ANNOTATION: plan.config_sha256}
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": metadata,
        "data": {CONFIG_FILE_NAME: config_text, **plan.options.extra_config_files},
    }


def _service(plan: _Plan) -> Manifest:
    ports = [
        {"name": name, "port": number, "targetPort": name, "protocol": "TCP"}
        for name, number in plan.proxy_ports
    ]
    if plan.options.service_metrics_port and plan.admin_reachable and plan.admin_port:
        ports.append(
            {"name": "metrics", "port": plan.admin_port, "targetPort": "admin", "protocol": "TCP"}
        )
    return {
        "apiVersion": "v1",
        "kind": "Service",
        "metadata": _metadata(plan, plan.name, COMPONENT_PROXY),
        # ClusterIP only: the proxy must never be reachable from outside the cluster.
        "spec": {"type": "ClusterIP", "selector": dict(plan.selector), "ports": ports},
    }


def _deployment(plan: _Plan) -> Manifest:
    spec: Manifest = {
        "selector": {"matchLabels": dict(plan.selector)},
        # A surge pod becomes ready before an old one drains: capacity never dips in a rollout.
        "strategy": {
            "type": "RollingUpdate",
            "rollingUpdate": {"maxSurge": 1, "maxUnavailable": 0},
        },
        "template": {
            "metadata": {
                "labels": _pod_labels(plan.selector),
                "annotations": _pod_annotations(plan),
            },
            "spec": _pod_spec(plan),
        },
    }
    if not plan.options.hpa:
        # With an HPA, spec.replicas is left out: every `kubectl apply` would otherwise reset
        # the HPA's count to this number (the Kubernetes HPA docs recommend removing it).
        spec = {"replicas": plan.replicas, **spec}
    return {
        "apiVersion": "apps/v1",
        "kind": "Deployment",
        "metadata": _metadata(plan, plan.name, COMPONENT_PROXY),
        "spec": spec,
    }


def _pod_annotations(plan: _Plan) -> dict[str, str]:
    # The config hash changes the pod template when the config changes, so `kubectl apply`
    # rolls the pods; hot reload alone would also pick the change up, within about a minute.
    annotations = {
        CONFIG_HASH_ANNOTATION: plan.config_sha256,
        FILES_HASH_ANNOTATION: plan.files_sha256,
    }
    if plan.admin_reachable and plan.admin_port:
        annotations |= {
            "prometheus.io/scrape": "true",
            "prometheus.io/port": str(plan.admin_port),
            "prometheus.io/path": "/metrics",
        }
    return annotations


def _pod_spec(plan: _Plan) -> Manifest:
    security: Manifest = {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "seccompProfile": {"type": "RuntimeDefault"},
    }
    if plan.intercept_secret_files:
        # The Secret's files are root-owned; fsGroup makes them readable by the proxy's group
        # (mode 0440), and by nobody else.
        security["fsGroup"] = RUN_AS_ID
    return {
        "automountServiceAccountToken": False,  # the proxy never talks to the API server
        "enableServiceLinks": False,  # no *_SERVICE_HOST variables from every Service
        "terminationGracePeriodSeconds": plan.grace_period_s,
        "securityContext": security,
        "topologySpreadConstraints": _spread(plan),
        "affinity": _anti_affinity(plan),
        "containers": [_container(plan)],
        "volumes": [
            # A directory mount: the kubelet swaps the `..data` symlink when the ConfigMap
            # changes, which hot reload watches. A subPath mount would never be updated.
            _config_volume(plan),
            {"name": "tmp", "emptyDir": {"sizeLimit": "64Mi"}},
        ],
    }


def _config_volume(plan: _Plan) -> Manifest:
    config_map = {"name": f"{plan.name}-config"}
    if not plan.intercept_secret_files:
        return {"name": "config", "configMap": config_map}
    # TLS interception: the CA key (and file secrets) join the config's directory from the
    # Secret, in this pod only; a projected volume is updated in place like a ConfigMap one.
    items = [
        {"key": name, "path": name, "mode": SECRET_FILE_MODE}
        for name in plan.intercept_secret_files
    ]
    secret = {"name": f"{plan.name}{INTERCEPT_SECRET_SUFFIX}", "items": items}
    return {
        "name": "config",
        "projected": {"sources": [{"configMap": config_map}, {"secret": secret}]},
    }


def _spread(plan: _Plan) -> list[Manifest]:
    # ScheduleAnyway: spreading is a preference; a small cluster must still run both replicas.
    return [
        {
            "maxSkew": 1,
            "topologyKey": key,
            "whenUnsatisfiable": "ScheduleAnyway",
            "labelSelector": {"matchLabels": dict(plan.selector)},
        }
        for key in ("kubernetes.io/hostname", "topology.kubernetes.io/zone")
    ]


def _anti_affinity(plan: _Plan) -> Manifest:
    term = {
        "labelSelector": {"matchLabels": dict(plan.selector)},
        "topologyKey": "kubernetes.io/hostname",
    }
    return {
        "podAntiAffinity": {
            "preferredDuringSchedulingIgnoredDuringExecution": [
                {"weight": 100, "podAffinityTerm": term}
            ]
        }
    }


def _container(plan: _Plan) -> Manifest:
    ports = [
        {"name": name, "containerPort": number, "protocol": "TCP"}
        for name, number in plan.proxy_ports
    ]
    if plan.admin_reachable and plan.admin_port:
        ports.append({"name": "admin", "containerPort": plan.admin_port, "protocol": "TCP"})
    return {
        "name": CONTAINER_NAME,
        "image": plan.image,
        "args": list(RUN_ARGS),  # the image's ENTRYPOINT is ["egressgate"]
        "ports": ports,
        **_probes(plan),
        **_lifecycle(plan),
        "resources": {key: dict(value) for key, value in plan.resources.items()},
        "securityContext": container_security_context(),
        "volumeMounts": [
            {"name": "config", "mountPath": CONFIG_DIR, "readOnly": True},
            {"name": "tmp", "mountPath": "/tmp"},
        ],
    }


def container_security_context() -> Manifest:
    """The hardened securityContext of every egressgate container (the proxy, the sidecar and
    the injection webhook): non-root as RUN_AS_ID, no privilege escalation, read-only root
    filesystem, no capabilities, the runtime's seccomp profile. A new dict per call."""
    return {
        "runAsNonRoot": True,
        "runAsUser": RUN_AS_ID,
        "runAsGroup": RUN_AS_ID,
        "allowPrivilegeEscalation": False,
        "readOnlyRootFilesystem": True,
        "capabilities": {"drop": ["ALL"]},
        "seccompProfile": {"type": "RuntimeDefault"},
    }


def _probes(plan: _Plan) -> Manifest:
    """httpGet on the admin port when the kubelet can reach it; else `egressgate check --live`."""
    if plan.admin_reachable:
        return {
            "livenessProbe": {
                "httpGet": {"path": "/healthz", "port": "admin"},
                "periodSeconds": 10,
                "timeoutSeconds": 2,
                "failureThreshold": 3,
            },
            "readinessProbe": {
                "httpGet": {"path": "/readyz", "port": "admin"},
                "periodSeconds": 5,
                "timeoutSeconds": 2,
                "failureThreshold": 2,
            },
        }
    # Each exec probe starts a Python interpreter: longer periods and timeouts.
    command = list(LIVE_CHECK_COMMAND)
    return {
        "livenessProbe": {
            "exec": {"command": command},
            "periodSeconds": 20,
            "timeoutSeconds": 5,
            "failureThreshold": 3,
        },
        "readinessProbe": {
            "exec": {"command": command},
            "periodSeconds": 10,
            "timeoutSeconds": 5,
            "failureThreshold": 2,
        },
    }


def _lifecycle(plan: _Plan) -> Manifest:
    seconds = plan.options.prestop_sleep_s
    if seconds == 0:
        return {}
    # The kubelet's own sleep action (Kubernetes >= 1.30): no `sleep` binary needed in the image.
    return {"lifecycle": {"preStop": {"sleep": {"seconds": seconds}}}}


def _pod_disruption_budget(plan: _Plan) -> Manifest:
    # maxUnavailable (not minAvailable): node drains proceed one pod at a time at any scale.
    return {
        "apiVersion": "policy/v1",
        "kind": "PodDisruptionBudget",
        "metadata": _metadata(plan, plan.name, COMPONENT_PROXY),
        "spec": {"maxUnavailable": 1, "selector": {"matchLabels": dict(plan.selector)}},
    }


def _autoscaler(plan: _Plan) -> Manifest:
    options = plan.options
    return {
        "apiVersion": "autoscaling/v2",
        "kind": "HorizontalPodAutoscaler",
        "metadata": _metadata(plan, plan.name, COMPONENT_PROXY),
        "spec": {
            "scaleTargetRef": {"apiVersion": "apps/v1", "kind": "Deployment", "name": plan.name},
            "minReplicas": plan.replicas,
            "maxReplicas": options.hpa_max_replicas,
            "metrics": [
                {
                    "type": "Resource",
                    "resource": {
                        "name": "cpu",
                        "target": {
                            "type": "Utilization",
                            "averageUtilization": options.hpa_cpu_target_percent,
                        },
                    },
                }
            ],
            # Each removed pod cuts the tunnels it still holds after drain_timeout_s: remove
            # at most one a minute, after five minutes of lower load.
            "behavior": {
                "scaleDown": {
                    "stabilizationWindowSeconds": 300,
                    "policies": [{"type": "Pods", "value": 1, "periodSeconds": 60}],
                }
            },
        },
    }


# -- NetworkPolicies ----------------------------------------------------------------------------


def _peer(namespace: str | None, labels: Mapping[str, str]) -> Manifest:
    """Pods with `labels` in `namespace` (None: the policy's own namespace).

    Both selectors sit in ONE peer, which ANDs them; two list items would OR them and admit
    every pod of the namespace.
    """
    peer: Manifest = {"podSelector": {"matchLabels": dict(labels)}}
    if namespace is not None:
        peer = {"namespaceSelector": {"matchLabels": {NAMESPACE_NAME_LABEL: namespace}}, **peer}
    return peer


def _dns_rule(plan: _Plan) -> Manifest:
    options = plan.options
    node_local = [{"ipBlock": {"cidr": str(parse_cidr(text))}} for text in options.dns_cidrs]
    # Both protocols: answers over 512 bytes (many A/AAAA records) are retried over TCP.
    return {
        "to": [_peer(options.dns_namespace, options.dns_labels), *node_local],
        "ports": [
            {"protocol": "UDP", "port": options.dns_port},
            {"protocol": "TCP", "port": options.dns_port},
        ],
    }


def _proxy_port_list(plan: _Plan) -> list[Manifest]:
    # NetworkPolicy sees connections after the Service's DNAT: the pod port, which the Service
    # maps one to one.
    return [{"protocol": "TCP", "port": number} for _, number in plan.proxy_ports]


def _client_network_policy(plan: _Plan) -> Manifest:
    """The app pods may open connections only to the proxy and to cluster DNS."""
    proxy_namespace = None if plan.app_namespace == plan.namespace else plan.namespace
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(
            plan, f"{plan.name}-client-egress", COMPONENT_CLIENT_POLICY, plan.app_namespace
        ),
        "spec": {
            "podSelector": {"matchLabels": dict(plan.app_labels)},
            "policyTypes": ["Egress"],
            "egress": [
                {"to": [_peer(proxy_namespace, plan.selector)], "ports": _proxy_port_list(plan)},
                _dns_rule(plan),
            ],
        },
    }


def _proxy_network_policy(plan: _Plan) -> Manifest:
    """The proxy pods: in from the app (and metrics scrapers); out to DNS and the internet."""
    app_namespace = None if plan.app_namespace == plan.namespace else plan.app_namespace
    ingress = [{"from": [_peer(app_namespace, plan.app_labels)], "ports": _proxy_port_list(plan)}]
    if plan.admin_reachable and plan.admin_port:
        ingress.append(
            {"from": [_metrics_peer(plan)], "ports": [{"protocol": "TCP", "port": plan.admin_port}]}
        )
    return {
        "apiVersion": "networking.k8s.io/v1",
        "kind": "NetworkPolicy",
        "metadata": _metadata(plan, f"{plan.name}-proxy", COMPONENT_PROXY_POLICY),
        "spec": {
            "podSelector": {"matchLabels": dict(plan.selector)},
            "policyTypes": ["Ingress", "Egress"],
            "ingress": ingress,
            "egress": [_dns_rule(plan), *_configured_egress(plan), _internet_rule(plan)],
        },
    }


def _metrics_peer(plan: _Plan) -> Manifest:
    # Kubelet probes come from the node, which most CNIs exempt from NetworkPolicy; this peer is
    # for Prometheus. Default: any pod in any namespace (the admin port is read-only).
    options = plan.options
    namespaces: Manifest = (
        {"matchLabels": {NAMESPACE_NAME_LABEL: options.metrics_namespace}}
        if options.metrics_namespace
        else {}
    )
    return {
        "namespaceSelector": namespaces,
        "podSelector": {"matchLabels": dict(options.metrics_labels)}
        if options.metrics_labels
        else {},
    }


def _configured_egress(plan: _Plan) -> list[Manifest]:
    """Holes the config itself asks for in the internal ranges the internet rule excludes."""
    rules: list[Manifest] = []
    for server in plan.nameservers:
        host = ipaddress.ip_address(server.host)
        rules.append(
            {
                "to": [{"ipBlock": {"cidr": str(ipaddress.ip_network(host))}}],
                "ports": [
                    {"protocol": "UDP", "port": server.port},
                    {"protocol": "TCP", "port": server.port},
                ],
            }
        )
    if plan.allow_private:
        # The config's allow_private lets the proxy reach these internal networks on purpose.
        rules.append({"to": [{"ipBlock": {"cidr": str(net)}} for net in plan.allow_private]})
    return rules


def _internet_rule(plan: _Plan) -> Manifest:
    v4_except = [str(n) for n in plan.cluster_networks if n.version == 4] + [METADATA_CIDR]
    v6_except = [*IPV6_NON_PUBLIC, *(str(n) for n in plan.cluster_networks if n.version == 6)]
    return {
        "to": [
            {"ipBlock": {"cidr": "0.0.0.0/0", "except": _dedupe(v4_except)}},
            {"ipBlock": {"cidr": "::/0", "except": _dedupe(v6_except)}},
        ]
    }


def _dedupe(items: Iterable[str]) -> list[str]:
    return list(dict.fromkeys(items))


def _client_env(plan: _Plan) -> Manifest:
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(
            plan, f"{plan.name}-client-env", COMPONENT_CLIENT_ENV, plan.app_namespace
        ),
        "data": dict(plan.client_env),
    }


def _client_ca(plan: _Plan) -> Manifest:
    """The interception CA for the apps (certificates only, never the key)."""
    options = plan.options
    data = {APP_CA_CERT_NAME: options.ca_cert_pem or ""}
    if options.ca_bundle_pem:
        data[APP_CA_BUNDLE_NAME] = options.ca_bundle_pem
    return {
        "apiVersion": "v1",
        "kind": "ConfigMap",
        "metadata": _metadata(plan, f"{plan.name}-ca", COMPONENT_CLIENT_CA, plan.app_namespace),
        "data": data,
    }


# ---------------------------------------------------------------------------------------------
# YAML
# ---------------------------------------------------------------------------------------------


class _Dumper(yaml.SafeDumper):
    """Block style, keys in insertion order, no &anchors for shared dicts, | for multi-line."""

    def ignore_aliases(self, data: Any) -> bool:
        return True

    def increase_indent(self, flow: bool = False, indentless: bool = False) -> None:
        # Indent list items under their key, as kubectl and most manifests do.
        super().increase_indent(flow, False)


def _represent_str(dumper: yaml.SafeDumper, value: str) -> yaml.ScalarNode:
    # PyYAML falls back to a quoted style by itself when a literal block cannot round-trip.
    style = "|" if "\n" in value else None
    return dumper.represent_scalar("tag:yaml.org,2002:str", value, style=style)


_Dumper.add_representer(str, _represent_str)
_NO_WRAP = 1 << 16

_HEADER = """\
# Kubernetes manifests for egressgate {version}, rendered by `egressgate k8s render`.
# Apply: egressgate k8s render ... | kubectl apply -f -   (the namespaces must exist)
# Guide: docs/kubernetes.md. Every document below says what it is for.
"""

_COMMENTS: dict[tuple[str, str], str] = {
    ("ConfigMap", COMPONENT_CONFIG): """\
The egressgate config, verbatim. Edits reach running pods within about a minute (the kubelet
updates the mounted directory; egressgate hot-reloads, and keeps the old policy if the new one
is invalid). Re-rendering also changes the Deployment's config hash, which rolls the pods.""",
    ("Service", COMPONENT_PROXY): """\
ClusterIP only: apps reach the proxy at <name>.<namespace>.svc.cluster.local; nothing outside the
cluster can. The admin port is not part of the Service (probes and Prometheus use the pod).""",
    ("Deployment", COMPONENT_PROXY): """\
The proxy pods: non-root, read-only root filesystem, no capabilities, spread across nodes.
- Config: the ConfigMap is mounted as a DIRECTORY at {config_dir}. Do not switch to a subPath
  mount: subPath mounts are never updated, so hot reload would never see a change.
- Probes: httpGet /healthz (liveness) and /readyz (readiness) on the admin port. Without a
  reachable admin listener (admin_listen null or loopback) they are exec probes:
    {check}
- Shutdown: a preStop sleep keeps the proxy serving while the pod leaves the Service's
  endpoints everywhere (nodes route to it for a few seconds more). Then SIGTERM: /readyz fails,
  the proxy serves on for limits.shutdown_delay_s, closes its listeners (new connections are
  refused), and open requests and tunnels drain for limits.drain_timeout_s.
  terminationGracePeriodSeconds = preStop + both + a margin.
- Replicas: the HorizontalPodAutoscaler owns the count (spec.replicas is left out so that a
  re-apply does not reset it); with --no-hpa the count is fixed here.""",
    ("PodDisruptionBudget", COMPONENT_PROXY): """\
Node drains and cluster upgrades evict at most one proxy pod at a time.""",
    ("HorizontalPodAutoscaler", COMPONENT_PROXY): """\
Scales on CPU (a share of the CPU request); scales down slowly because each removed pod ends the
tunnels it still holds once its drain time is over.""",
    ("NetworkPolicy", COMPONENT_PROXY_POLICY): """\
The proxy pods: in, only from the app pods on the proxy port (and the admin port for metrics);
out, DNS and the internet, but not the cluster's own ranges nor link-local/metadata addresses:
an allowlisted name that resolves to an internal address still cannot reach it.""",
    ("Job", COMPONENT_VERIFY): """\
`egressgate verify --attack` once, AS THE APP: the pod carries the app's labels (so the app's
NetworkPolicy applies to it) and the app's proxy variables. Its exit status is the verdict:
  kubectl -n <namespace> wait --for=condition=complete job/<name> --timeout=5m
  kubectl -n <namespace> logs job/<name>
Re-run: delete the Job and apply again. The pod is never Ready, so no Service sends it traffic.""",
    ("Role", COMPONENT_VERIFY): """\
Lets the verify Job read this namespace's NetworkPolicies (to find `egress: - {{}}`) and its own
pod's labels. Nothing else; remove it (and the binding) to skip that check.""",
    ("ConfigMap", COMPONENT_CLIENT_CA): f"""\
TLS interception: the CA that signs the intercepted hosts' certificates, for the app to trust
(certificates only; the key stays in the proxy's Secret). Mount it in the app's pod at
{APP_CA_DIR} (a directory mount: it follows CA rotations); the client env's SSL_CERT_FILE,
REQUESTS_CA_BUNDLE, CURL_CA_BUNDLE, GIT_SSL_CAINFO, PIP_CERT and NODE_EXTRA_CA_CERTS point there.
{APP_CA_BUNDLE_NAME} is the public CAs plus this one: those variables replace a runtime's store.""",
    ("NetworkPolicy", COMPONENT_CLIENT_POLICY): """\
The app pods: out, ONLY to the proxy and to cluster DNS (without DNS the app cannot even resolve
the proxy's name). Everything else, including connections that ignore HTTP(S)_PROXY, is dropped.
NetworkPolicies add up: to let the app reach an in-cluster service directly, add a policy that
allows it.""",
    ("ConfigMap", COMPONENT_INJECT): """\
The injection webhook's config (docs/configuration.md, "The injection webhook"): the proxy URL,
NO_PROXY inputs and sidecar image it injects. Edits reload within seconds; an invalid edit is
refused and the running config stays.""",
    ("Deployment", COMPONENT_INJECT): """\
`egressgate inject`: the admission webhook. No service account token (it reads nothing from the
API server: the review carries the pod), non-root, read-only root filesystem. The TLS Secret is
mounted as a directory, so a renewed certificate is picked up without a restart.""",
    ("Service", COMPONENT_INJECT): """\
The address the API server calls (clientConfig.service); 443 to the webhook's HTTPS port.""",
    ("NetworkPolicy", COMPONENT_INJECT): """\
The webhook pods: in, the HTTPS port only (from any source: the API server often runs on the host
network, which no selector names); out, nothing at all.""",
    ("Certificate", COMPONENT_INJECT): """\
The serving certificate, issued by cert-manager (renewed in place; the webhook reloads it). Without
cert-manager, use `egressgate k8s certs` and `--ca-bundle` instead (docs/kubernetes.md).""",
    ("MutatingWebhookConfiguration", COMPONENT_INJECT): """\
Which pods the API server sends to the webhook. Three entries, because the webhook learns a
namespace's label only from which entry called it: namespaces labelled egressgate.io/inject=
explicit, namespaces labelled transparent, and pods labelled explicit/transparent in namespaces
without the label. kube-system, kube-public, kube-node-lease and the webhook's own namespace are
never selected; pods labelled egressgate.io/inject=disabled are never sent.
failurePolicy Ignore (default): if the webhook is down or slow, pods start UNCHANGED, without
the proxy settings (a webhook failure never stops a deployment). Fail: such pods are refused
until the webhook answers (no pod ever starts without its settings, but an outage of the webhook
blocks every rollout in the labelled namespaces).""",
}


def to_yaml(objects: Sequence[Manifest]) -> str:
    """A multi-document YAML stream for `kubectl apply -f -`, each document with its comment."""
    parts = [_HEADER.format(version=__version__)]
    for obj in objects:
        comment = _comment_for(obj)
        # No folding: a long value (JAVA_TOOL_OPTIONS) stays on one line, as people grep it.
        body = yaml.dump(obj, Dumper=_Dumper, sort_keys=False, width=_NO_WRAP)
        parts.append("---\n" + _as_comment(comment) + body)
    return "".join(parts)


def _comment_for(obj: Manifest) -> str:
    component = obj.get("metadata", {}).get("labels", {}).get(COMPONENT_LABEL, "")
    if obj.get("kind") == "ConfigMap" and component == COMPONENT_CLIENT_ENV:
        return _client_env_comment(obj)
    template = _COMMENTS.get((str(obj.get("kind")), component), "")
    return template.format(config_dir=CONFIG_DIR, check=" ".join(LIVE_CHECK_COMMAND))


def _client_env_comment(obj: Manifest) -> str:
    name = obj["metadata"]["name"]
    lines = [
        "What the app needs to use the proxy. Load it in the app's container:",
        "  envFrom:",
        "    - configMapRef:",
        f"        name: {name}",
        "or paste these entries into the container's env (values that the app sets itself in",
        "env win over envFrom: if it sets JAVA_TOOL_OPTIONS, append these -D options to it):",
    ]
    entries = {"env": [{"name": key, "value": value} for key, value in obj["data"].items()]}
    dumped = yaml.dump(entries, Dumper=_Dumper, sort_keys=False, width=_NO_WRAP)
    return "\n".join(lines + ["  " + line for line in dumped.splitlines()])


def _as_comment(text: str) -> str:
    if not text:
        return ""
    return "".join(f"# {line}".rstrip() + "\n" for line in text.splitlines())
