"""`egressgate verify --attack`, part two: what the pod it runs in looks like.

Four questions, each answered as a verify.Check (pass / fail / warn / skip with the reason):

* `pod.host-network`: does this pod share the node's network namespace (hostNetwork: true)?
  NetworkPolicies do not apply to such pods. Judged from the interfaces the namespace holds: a
  pod has lo and eth0 (and the kernel's fallback tunnel devices); a node has its NICs, the
  CNI's bridges and host-side veths. A heuristic, and the text says so.
* `pod.mesh`: is a service-mesh sidecar in the pod (Istio's 15001/15006/15000 listeners,
  Linkerd's 4140/4143, their variables)? It changes what the NetworkPolicy sees.
* `pod.runtimes`: for every HTTP runtime found in the image (python, node, java, curl, wget,
  git, ruby, a Go binary as PID 1), is it configured to use the proxy?
* `pod.network-policy`: does a NetworkPolicy selecting this pod allow every egress
  (`egress: - {}`, or 0.0.0.0/0 without ports)? Read from the API server with the pod's service
  account, when one is mounted and allowed to list NetworkPolicies; otherwise "not checked" and
  why. Plain HTTPS with the token and CA of the mount: no Kubernetes client library.

The analysis functions are pure (`host_network_check(interfaces)`, `mesh_check(env, ports)`,
`runtime_check(found, env)`, `network_policy_check(policies, labels)`); the readers of /proc,
PATH and the API are small and bounded.
"""

from __future__ import annotations

import ipaddress
import json
import os
import re
import shutil
import socket
import ssl
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass
from pathlib import Path
from typing import Any
from urllib.parse import quote

from egressgate.tools import noproxy
from egressgate.tools.verify import Check, Deadline, Status, format_hostport

# -- host network ------------------------------------------------------------------------------

# Devices the kernel creates in EVERY network namespace when their module is loaded: proof of
# nothing.
_FALLBACK_DEVICES = frozenset(
    {"lo", "tunl0", "sit0", "ip6tnl0", "gre0", "gretap0", "erspan0", "ip_vti0", "ip6_vti0",
     "ip6gre0", "ip6erspan0"}
)  # fmt: skip
# Devices that live on a node, not in a pod: CNI bridges and tunnels, host-side veths, kube-proxy
# IPVS, physical NIC names (predictable naming).
_NODE_DEVICE = re.compile(
    r"^(docker\d+|cni\d+|cbr\d+|flannel\.\d+|cali[0-9a-f]{6,}|vxlan\.calico|cilium_\w+|lxc\w+"
    r"|kube-ipvs\d+|kube-bridge|weave|ovn-k8s-\w+|br-int|genev_sys_\w+|veth\w+|nodelocaldns"
    r"|en[ops]\w+|wl\w+|eno\d+|ens\d+)$"
)


# Recent kernels give the initial network namespace a fixed inode number, PROC_NET_INIT_INO
# (0xEFFFFFF9, next to the other PROC_*_INIT_INO constants; observed on 6.18); older ones
# allocate it like any other, which proves nothing, so the interface names decide.
INIT_NETNS = f"net:[{0xEFFFFFF9}]"


def host_network_check(interfaces: Sequence[str], netns_inode: str | None = None) -> Check:
    """Judge this namespace: its inode (when it is the kernel's fixed one for the initial
    namespace), else its interface names."""
    title = "own network namespace (not hostNetwork)"
    named = [name for name in interfaces if name not in _FALLBACK_DEVICES]
    node_like = sorted(name for name in named if _NODE_DEVICE.match(name))
    data: dict[str, Any] = {"interfaces": sorted(interfaces)}
    if netns_inode is not None:
        data["netns"] = netns_inode
    if netns_inode == INIT_NETNS:
        detail = (
            f"this is the node's initial network namespace ({netns_inode}, the number the kernel "
            "gives only to it): hostNetwork: true. NetworkPolicies do not apply to host-network "
            "pods: nothing but the node's own firewall restricts their egress. Run the app "
            "without hostNetwork"
        )
        return Check("pod.host-network", title, Status.FAIL, detail, data=data)
    if node_like:
        detail = (
            f"this looks like the NODE's network namespace (hostNetwork: true): it holds "
            f"{', '.join(node_like[:6])}, which only a node has. NetworkPolicies do not apply to "
            "host-network pods: nothing but the node's own firewall restricts their egress. Run "
            "the app without hostNetwork"
        )
        return Check("pod.host-network", title, Status.FAIL, detail, data=data)
    detail = (
        f"interfaces {', '.join(sorted(named)) or 'lo only'}: a pod's own namespace (judged from "
        "the interface names: a node would show its NICs, CNI bridges and veths)"
    )
    return Check("pod.host-network", title, Status.PASS, detail, data=data)


def read_interfaces() -> list[str]:
    """The interface names of this network namespace (/proc/net/dev)."""
    try:
        lines = Path("/proc/net/dev").read_text().splitlines()[2:]
    except OSError:
        return []
    return [line.split(":", 1)[0].strip() for line in lines if ":" in line]


def netns_inode() -> str | None:
    try:
        return os.readlink("/proc/self/ns/net")
    except OSError:
        return None


def global_ipv6_addresses() -> list[str]:
    """The namespace's global-scope IPv6 addresses (/proc/net/if_inet6), loopback excluded."""
    try:
        lines = Path("/proc/net/if_inet6").read_text().splitlines()
    except OSError:
        return []
    found: list[str] = []
    for line in lines:
        fields = line.split()
        if len(fields) < 6 or fields[3] != "00" or fields[5] == "lo":
            continue
        hexa = fields[0]
        groups = [hexa[i : i + 4] for i in range(0, 32, 4)]
        found.append(str(ipaddress.IPv6Address(":".join(groups))))
    return found


# -- mesh sidecar ------------------------------------------------------------------------------

MESH_PORTS: Mapping[int, str] = {
    15001: "Istio outbound capture (envoy)",
    15006: "Istio inbound capture (envoy)",
    15000: "envoy admin",
    15090: "Istio envoy metrics",
    4140: "Linkerd outbound proxy",
    4143: "Linkerd inbound proxy",
    4191: "Linkerd proxy admin",
}
_MESH_ENV = re.compile(r"^(ISTIO_\w+|LINKERD2?_\w+|ENVOY_\w+|KUMA_\w+|CONSUL_\w+)$")


def mesh_check(env: Mapping[str, str], listening: Iterable[int]) -> Check:
    title = "service-mesh sidecar"
    ports = sorted(p for p in set(listening) if p in MESH_PORTS)
    variables = sorted(name for name in env if _MESH_ENV.match(name))
    if not ports and not variables:
        detail = "none: no mesh listener (15001/15006/15000, 4140/4143) and no mesh variable"
        return Check("pod.mesh", title, Status.PASS, detail)
    seen = [f"{port} ({MESH_PORTS[port]})" for port in ports] + variables[:5]
    detail = (
        f"a mesh sidecar is in this pod ({', '.join(seen)}): its iptables rules capture outbound "
        "connections, so the NetworkPolicy sees the sidecar's connections and the probes above "
        "went through it; make sure the mesh does not allow passthrough to external hosts "
        "(Istio: outboundTrafficPolicy REGISTRY_ONLY) and that egressgate stays the only way out"
    )
    return Check("pod.mesh", title, Status.WARN, detail, data={"ports": ports})


def listening_tcp_ports() -> set[int]:
    """TCP ports in LISTEN state in this namespace (/proc/net/tcp and tcp6)."""
    ports: set[int] = set()
    for name in ("/proc/net/tcp", "/proc/net/tcp6"):
        try:
            lines = Path(name).read_text().splitlines()[1:]
        except OSError:
            continue
        for line in lines:
            fields = line.split()
            if len(fields) > 3 and fields[3] == "0A":  # TCP_LISTEN
                ports.add(int(fields[1].rsplit(":", 1)[1], 16))
    return ports


# -- runtimes and their proxy settings ---------------------------------------------------------

# Executable → the measured runtimes (tools/noproxy.py) it stands for.
_EXECUTABLES: Mapping[str, tuple[str, ...]] = {
    "curl": ("curl",),
    "wget": ("wget",),
    "git": ("git",),
    "python3": ("urllib", "requests", "httpx"),
    "ruby": ("ruby",),
}
_JAVA_PROPERTIES = re.compile(r"-D(https?\.proxyHost|java\.net\.useSystemProxies)=")
_GO_BUILDINFO = b"\xff Go buildinf:"
GO_SCAN_LIMIT_BYTES = 64 * 1024 * 1024  # how much of PID 1's binary is searched for Go's marker


@dataclass(frozen=True, slots=True)
class Runtime:
    name: str  # python3, node, java, go, curl, ...
    where: str  # the path it was found at


def find_runtimes() -> list[Runtime]:
    """The HTTP runtimes this image contains (on PATH), and a Go binary running as PID 1."""
    found = []
    for name in ("python3", "node", "java", "curl", "wget", "git", "ruby"):
        path = shutil.which(name)
        if path is not None:
            found.append(Runtime(name, path))
    if _is_go_binary("/proc/1/exe"):
        found.append(Runtime("go", os.path.realpath("/proc/1/exe")))
    return found


def _is_go_binary(path: str) -> bool:
    try:
        with open(path, "rb") as handle:
            read = 0
            tail = b""
            while read < GO_SCAN_LIMIT_BYTES:
                chunk = handle.read(1 << 20)
                if not chunk:
                    return False
                if _GO_BUILDINFO in tail + chunk:
                    return True
                tail = chunk[-len(_GO_BUILDINFO) :]
                read += len(chunk)
    except OSError:
        return False
    return False


def _set(env: Mapping[str, str], names: Iterable[str]) -> str | None:
    return next((name for name in names if env.get(name)), None)


def runtime_check(found: Sequence[Runtime], env: Mapping[str, str]) -> Check:
    """Does every runtime found read a proxy setting that is set?"""
    title = "proxy settings for every runtime in the image"
    if not found:
        return Check("pod.runtimes", title, Status.SKIP, "no known HTTP runtime found on PATH")
    any_proxy = _set(env, ("HTTPS_PROXY", "https_proxy", "HTTP_PROXY", "http_proxy"))
    if any_proxy is None:
        names = ", ".join(r.name for r in found)
        detail = (
            f"found {names}; no proxy variable is set: fine in transparent mode (the redirect "
            "catches them), otherwise none of them uses the proxy"
        )
        return Check("pod.runtimes", title, Status.SKIP, detail)
    notes: list[str] = []
    problems: list[str] = []
    for runtime in found:
        ok, text = _runtime_note(runtime, env)
        (notes if ok else problems).append(f"{runtime.name} ({runtime.where}): {text}")
    data = {"runtimes": [r.name for r in found]}
    if problems:
        return Check("pod.runtimes", title, Status.WARN, "; ".join(problems + notes), data=data)
    return Check("pod.runtimes", title, Status.PASS, "; ".join(notes), data=data)


def _runtime_note(runtime: Runtime, env: Mapping[str, str]) -> tuple[bool, str]:
    if runtime.name == "java":
        options = " ".join(env.get(n, "") for n in ("JAVA_TOOL_OPTIONS", "JDK_JAVA_OPTIONS"))
        if _JAVA_PROPERTIES.search(options):
            return True, "JAVA_TOOL_OPTIONS/JDK_JAVA_OPTIONS set the proxy properties"
        return False, (
            "the JVM ignores HTTP(S)_PROXY: set -Dhttps.proxyHost/-Dhttps.proxyPort (and http.*) "
            "in JAVA_TOOL_OPTIONS (`egressgate env --format jvm`)"
        )
    if runtime.name == "node":
        if env.get("NODE_USE_ENV_PROXY") == "1":
            return True, "NODE_USE_ENV_PROXY=1: fetch and http use the variables (Node >= 24)"
        if _set(env, ("GLOBAL_AGENT_HTTP_PROXY",)):
            return True, "GLOBAL_AGENT_HTTP_PROXY is set (global-agent)"
        return False, (
            "Node's fetch and http ignore HTTP(S)_PROXY unless NODE_USE_ENV_PROXY=1 (Node >= 24) "
            "or the app uses a proxy agent"
        )
    ids = _EXECUTABLES.get(runtime.name, (runtime.name,))
    readers = {rt.id: rt for rt in noproxy.env_readers()}
    missing = []
    for runtime_id in ids:
        rt = readers.get(runtime_id)
        if rt is None or rt.variables is None:
            continue
        read = rt.variables.https + (
            rt.variables.http if rt.variables.https_falls_back_to_http else ()
        )
        if _set(env, read) is None:
            missing.append(f"{runtime_id} reads only {'/'.join(read)}")
    if missing:
        return False, "; ".join(missing) + ", none set"
    return True, "reads a proxy variable that is set"


# -- NetworkPolicy -----------------------------------------------------------------------------

SERVICE_ACCOUNT_DIR = Path("/var/run/secrets/kubernetes.io/serviceaccount")
MAX_API_BYTES = 4 * 1024 * 1024


def network_policy_check(
    policies: Sequence[Mapping[str, Any]], labels: Mapping[str, str] | None, namespace: str
) -> Check:
    """Judge the namespace's NetworkPolicies for the pod with `labels` (None: unknown)."""
    title = "NetworkPolicy egress"
    selecting = [p for p in policies if labels is None or _selects(p, labels)]
    restricting = [p for p in selecting if _restricts_egress(p)]
    scope = "policies selecting this pod" if labels is not None else "policies in the namespace"
    unknown = "" if labels is not None else " (this pod's labels are unknown: every policy counted)"
    if not restricting:
        detail = (
            f"no NetworkPolicy restricts egress in {namespace}{unknown}: every destination is "
            "reachable unless something else filters"
        )
        return Check("pod.network-policy", title, Status.FAIL, detail)
    open_rules = [f"{_name(p)}: {text}" for p in restricting for text in _allow_all_rules(p)]
    names = ", ".join(_name(p) for p in restricting)
    if open_rules:
        detail = (
            f"{'; '.join(open_rules)}: NetworkPolicies add up, so this pod may reach ANY "
            f"destination{unknown}. Remove the rule"
        )
        return Check("pod.network-policy", title, Status.FAIL, detail)
    detail = f"{scope}{unknown}: {names}; none allows every egress"
    return Check("pod.network-policy", title, Status.PASS, detail)


def _name(policy: Mapping[str, Any]) -> str:
    return str(policy.get("metadata", {}).get("name", "?"))


def _restricts_egress(policy: Mapping[str, Any]) -> bool:
    spec = policy.get("spec", {}) or {}
    types = spec.get("policyTypes")
    if types is None:
        return "egress" in spec
    return "Egress" in types


def _allow_all_rules(policy: Mapping[str, Any]) -> list[str]:
    found = []
    for index, rule in enumerate((policy.get("spec", {}) or {}).get("egress") or []):
        rule = rule or {}
        to, ports = rule.get("to"), rule.get("ports")
        if not to and not ports:
            found.append(f"egress rule {index} is `{{}}` (every destination, every port)")
            continue
        if ports:
            continue
        for peer in to or []:
            block = (peer or {}).get("ipBlock") or {}
            if block.get("cidr") in ("0.0.0.0/0", "::/0") and not block.get("except"):
                found.append(f"egress rule {index} allows {block['cidr']} on every port")
    return found


def _selects(policy: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    selector = (policy.get("spec", {}) or {}).get("podSelector") or {}
    for key, value in (selector.get("matchLabels") or {}).items():
        if labels.get(key) != value:
            return False
    return all(_expression(e, labels) for e in selector.get("matchExpressions") or [])


def _expression(expression: Mapping[str, Any], labels: Mapping[str, str]) -> bool:
    key, operator = expression.get("key", ""), expression.get("operator", "")
    values = expression.get("values") or []
    if operator == "In":
        return labels.get(key) in values
    if operator == "NotIn":
        return labels.get(key) not in values
    if operator == "Exists":
        return key in labels
    if operator == "DoesNotExist":
        return key not in labels
    return False


class ApiUnavailable(Exception):
    """Why the NetworkPolicies could not be read (the message is shown as 'not checked: ...')."""


def _api_get(path: str, env: Mapping[str, str], timeout_s: float) -> Any:
    """GET an API path with the service account's token; the parsed JSON, or ApiUnavailable."""
    host, port = env.get("KUBERNETES_SERVICE_HOST"), env.get("KUBERNETES_SERVICE_PORT", "443")
    token_file = SERVICE_ACCOUNT_DIR / "token"
    if not host or not token_file.is_file():
        raise ApiUnavailable(
            "no service account token mounted (automountServiceAccountToken: false), or not in "
            "Kubernetes"
        )
    token = token_file.read_text().strip()
    context = ssl.create_default_context(cafile=str(SERVICE_ACCOUNT_DIR / "ca.crt"))
    request = (
        f"GET {path} HTTP/1.1\r\nHost: {format_hostport(host, int(port))}\r\n"
        f"Authorization: Bearer {token}\r\nAccept: application/json\r\nConnection: close\r\n\r\n"
    ).encode()
    deadline = Deadline(timeout_s)  # the whole exchange, not each read
    try:
        with (
            socket.create_connection((host, int(port)), timeout=deadline.left()) as raw,
            context.wrap_socket(raw, server_hostname=host) as tls,
        ):
            tls.sendall(request)
            data = b""
            while len(data) <= MAX_API_BYTES:
                tls.settimeout(deadline.left())
                chunk = tls.recv(65536)
                if not chunk:
                    break
                data += chunk
    except (OSError, ValueError) as exc:
        raise ApiUnavailable(
            f"the API server {host}:{port} did not answer ({exc}); an egress policy that blocks "
            "it is doing its job"
        ) from None
    head, _, body = data.partition(b"\r\n\r\n")
    status_line = head.split(b"\r\n", 1)[0].decode("latin-1")
    if " 200 " not in status_line + " ":
        raise ApiUnavailable(
            f"{path}: {status_line}: the service account may not read it (grant get/list on "
            "networkpolicies and get on pods; `k8s render --verify-job` does)"
        )
    if b"chunked" in head.lower():
        body = _unchunk(body)
    return json.loads(body)


def _unchunk(body: bytes) -> bytes:
    out, rest = b"", body
    while rest:
        size_line, _, rest = rest.partition(b"\r\n")
        size = int(size_line.split(b";")[0] or b"0", 16)
        if size == 0:
            break
        out, rest = out + rest[:size], rest[size + 2 :]
    return out


def read_network_policy(env: Mapping[str, str], timeout_s: float) -> Check:
    title = "NetworkPolicy egress"
    try:
        namespace = (SERVICE_ACCOUNT_DIR / "namespace").read_text().strip()
    except OSError:
        namespace = ""
    try:
        if not namespace:
            raise ApiUnavailable("no service account namespace file")
        listing = _api_get(
            f"/apis/networking.k8s.io/v1/namespaces/{quote(namespace)}/networkpolicies",
            env,
            timeout_s,
        )
    except (ApiUnavailable, OSError, ValueError) as exc:
        return Check("pod.network-policy", title, Status.SKIP, f"not checked: {exc}")
    labels: dict[str, str] | None = None
    pod = env.get("HOSTNAME") or socket.gethostname()
    try:
        pod_doc = _api_get(
            f"/api/v1/namespaces/{quote(namespace)}/pods/{quote(pod)}", env, timeout_s
        )
        labels = dict(pod_doc.get("metadata", {}).get("labels") or {})
    except (ApiUnavailable, OSError, ValueError):
        labels = None
    return network_policy_check(listing.get("items") or [], labels, namespace)


# -- all of it ---------------------------------------------------------------------------------


def inspect(env: Mapping[str, str], timeout_s: float, *, api: bool) -> list[Check]:
    checks = [
        host_network_check(read_interfaces(), netns_inode()),
        mesh_check(env, listening_tcp_ports()),
        runtime_check(find_runtimes(), env),
    ]
    if api:
        checks.append(read_network_policy(env, timeout_s))
    else:
        checks.append(
            Check(
                "pod.network-policy",
                "NetworkPolicy egress",
                Status.SKIP,
                "not checked: --no-api",
            )
        )
    return checks
