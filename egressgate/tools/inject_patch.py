"""What the injection webhook does to a Pod: settings, opt-in, and the JSONPatch (pure).

`egressgate inject` (tools/inject_server.py does the I/O) answers Kubernetes' AdmissionReview
for Pod CREATE. This module decides, from the review alone, whether and how to change the Pod:

* Opt-in (docs/kubernetes.md, "Inject with a label"). The API server tells the webhook nothing
  about the namespace's labels, so the MutatingWebhookConfiguration has one webhook entry per
  namespace mode, each selecting namespaces by their `egressgate.io/inject` label and calling its
  own path (`/mutate/explicit`, `/mutate/transparent`: that path IS the namespace's label), and a
  third entry for unlabelled namespaces that selects pods by their own label (`/mutate`). The
  mode is then the pod's `egressgate.io/inject` annotation, else its label, else the path's;
  `disabled` means no change.
* `explicit`: every container, init containers too, gets the proxy variables in both letter
  cases, NO_PROXY, ALL_PROXY when SOCKS is configured, all built by tools/proxy_env.py (the code
  of `egressgate env`), and JAVA_TOOL_OPTIONS with the proxy properties appended to any value it
  has. A variable the container already sets is left alone unless the pod's
  `egressgate.io/override-env` annotation names it (or says `true`); what was left alone is
  listed in the pod's `egressgate.io/skipped-env` annotation.
* `transparent`: the init container, sidecar and volumes of `k8s render --mode transparent`
  (tools/k8s_sidecar.py's `sidecar_spec`, one definition for both).
* Idempotent: the patch sets `egressgate.io/injected`; a pod that has it is not patched again.
* Never blocks: whatever cannot be understood is admitted unchanged with a warning
  (AdmissionResponse.warnings). `admission_response` raises only when the document is not an
  AdmissionReview with a request uid, which the server answers with 400 (failurePolicy decides).

No I/O: the settings come in as text (`parse_settings`), the review as a decoded JSON value.
"""

from __future__ import annotations

import base64
import json
import math
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

import yaml

from egressgate.tools import proxy_env
from egressgate.tools.k8s_render import DEFAULT_IMAGE
from egressgate.tools.k8s_sidecar import (
    CONFIG_VOLUME,
    INIT_CONTAINER_NAME,
    TMP_VOLUME,
    sidecar_spec,
)

INJECT_KEY = "egressgate.io/inject"  # namespace label, pod label or pod annotation
INJECTED_ANNOTATION = "egressgate.io/injected"  # the marker: the mode the pod was injected with
SKIPPED_ANNOTATION = "egressgate.io/skipped-env"
OVERRIDE_ANNOTATION = "egressgate.io/override-env"
EXPLICIT, TRANSPARENT, DISABLED = "explicit", "transparent", "disabled"
MODES = (EXPLICIT, TRANSPARENT)
MUTATE_PATH = "/mutate"  # + "/<mode>" for the namespace-label webhook entries
REVIEW_API_VERSION = "admission.k8s.io/v1"
DEFAULT_SIDECAR_CONFIG_MAP = "egressgate-sidecar-config"
# The JVM reads these; an existing JAVA_TOOL_OPTIONS that sets any of them is the app's own
# proxy configuration, left alone unless overridden.
_JAVA_PROXY_PROPERTIES = ("-Dhttp.proxy", "-Dhttps.proxy", "-DsocksProxy", "-Dhttp.nonProxyHosts")
_WARNING_PREFIX = "egressgate-inject: "
_CONTAINER_LISTS = ("initContainers", "containers")


class InjectConfigError(ValueError):
    """The webhook config cannot be used; `problems` lists every reason (one line each)."""

    def __init__(self, problems: Sequence[str]) -> None:
        self.problems = list(problems)
        super().__init__("\n".join(self.problems))


class BadReview(ValueError):
    """Not an AdmissionReview request this webhook can even answer (no uid to echo)."""


# ---------------------------------------------------------------------------------------------
# Settings (the webhook's config file; docs/configuration.md, "The injection webhook")
# ---------------------------------------------------------------------------------------------


@dataclass(frozen=True, slots=True)
class InjectLimits:
    """Bounds of the webhook server; read for every new request, so they reload too."""

    max_body_bytes: int = 4 * 1024 * 1024  # a Pod is at most ~1.5 MB in etcd; room to spare
    header_timeout_s: float = 10.0  # the whole request head, once its first byte arrived
    body_timeout_s: float = 10.0
    idle_timeout_s: float = 120.0  # a keep-alive connection with no request (the API server's
    # idle connections are closed after 90 s on its side)
    max_connections: int = 256


@dataclass(frozen=True, slots=True)
class TransparentSettings:
    image: str = DEFAULT_IMAGE
    init_image: str | None = None  # None: `image` (it must contain nft)
    config_map: str = DEFAULT_SIDECAR_CONFIG_MAP
    admin_port: int | None = None  # the sidecar config's admin_listen port: HTTP probes


@dataclass(frozen=True, slots=True)
class InjectSettings:
    """The parsed config plus what every request needs, computed once per (re)load."""

    env: proxy_env.ProxyEnv
    java: bool
    transparent: TransparentSettings | None
    limits: InjectLimits
    # (name, value) in injection order, values escaped for Kubernetes' $(VAR) expansion.
    variables: tuple[tuple[str, str], ...] = ()
    java_options: str = ""
    warnings: tuple[str, ...] = field(default=())


_TOP_KEYS = ("proxy", "socks", "no_proxy", "cluster_cidrs", "java", "transparent", "limits")
_TRANSPARENT_KEYS = ("image", "init_image", "config_map", "admin_port")


def parse_settings(text: str, source: str = "<inject config>") -> InjectSettings:
    """The webhook config (YAML) → InjectSettings; InjectConfigError lists every problem."""
    try:
        doc = yaml.safe_load(text)
    except yaml.YAMLError as exc:
        raise InjectConfigError([f"{source}: not valid YAML: {exc}"]) from None
    if not isinstance(doc, dict):
        raise InjectConfigError([f"{source}: expected a mapping with at least `proxy:`"])
    problems = [f"{source}: unknown key {key!r}" for key in doc if key not in _TOP_KEYS]
    proxy_text = doc.get("proxy")
    if not isinstance(proxy_text, str):
        problems.append(f"{source}: proxy: required, the proxy URL (http://HOST:PORT)")
    no_proxy = _string_list(doc, "no_proxy", source, problems)
    cidrs = _string_list(doc, "cluster_cidrs", source, problems)
    java = doc.get("java", True)
    if not isinstance(java, bool):
        problems.append(f"{source}: java: true or false")
    transparent = _transparent(doc.get("transparent"), source, problems)
    limits = _limits(doc.get("limits"), source, problems)
    env: proxy_env.ProxyEnv | None = None
    if isinstance(proxy_text, str):
        env = _env(proxy_text, doc.get("socks"), no_proxy, cidrs, source, problems)
    if problems or env is None:
        raise InjectConfigError(problems)
    return _settings(env, bool(java), transparent, limits)


def _settings(
    env: proxy_env.ProxyEnv,
    java: bool,
    transparent: TransparentSettings | None,
    limits: InjectLimits,
) -> InjectSettings:
    return InjectSettings(
        env=env,
        java=java,
        transparent=transparent,
        limits=limits,
        variables=tuple((name, _k8s_escape(value)) for name, value in env.variables),
        java_options=_k8s_escape(env.java.tool_options) if java else "",
        warnings=env.warnings,
    )


def _env(
    proxy_text: str,
    socks: object,
    no_proxy: list[str],
    cidrs: list[str],
    source: str,
    problems: list[str],
) -> proxy_env.ProxyEnv | None:
    try:
        env = proxy_env.build_env(proxy_text, no_proxy, cidrs)
        if socks is not None:
            if not isinstance(socks, str):
                problems.append(f"{source}: socks: a URL (socks5h://HOST:PORT) or null")
                return None
            url, warnings = proxy_env.parse_socks_url(socks)
            env = env.with_socks(url, warnings)
    except proxy_env.ProxyEnvError as exc:
        problems.append(f"{source}: {exc}")
        return None
    return env


def _string_list(doc: Mapping[str, Any], key: str, source: str, problems: list[str]) -> list[str]:
    value = doc.get(key)
    if value is None:
        return []
    if not isinstance(value, list) or not all(isinstance(item, str) for item in value):
        problems.append(f"{source}: {key}: a list of strings")
        return []
    return list(value)


def _transparent(value: object, source: str, problems: list[str]) -> TransparentSettings | None:
    if value is None:
        return None
    if not isinstance(value, dict):
        problems.append(f"{source}: transparent: a mapping (image, init_image, config_map, ...)")
        return None
    problems += [
        f"{source}: transparent: unknown key {key!r}"
        for key in value
        if key not in _TRANSPARENT_KEYS
    ]
    defaults = TransparentSettings()
    image = value.get("image", defaults.image)
    init_image = value.get("init_image")
    config_map = value.get("config_map", defaults.config_map)
    admin_port = value.get("admin_port")
    for key, text in (("image", image), ("init_image", init_image), ("config_map", config_map)):
        if text is None and key == "init_image":
            continue
        if not isinstance(text, str) or not text or any(c.isspace() for c in text):
            problems.append(f"{source}: transparent.{key}: a non-empty string without spaces")
    if admin_port is not None and (
        isinstance(admin_port, bool)
        or not isinstance(admin_port, int)
        or not 0 < admin_port < 65536
    ):
        problems.append(f"{source}: transparent.admin_port: a port number or null")
    return TransparentSettings(image, init_image, config_map, admin_port)


def _limits(value: object, source: str, problems: list[str]) -> InjectLimits:
    defaults = InjectLimits()
    if value is None:
        return defaults
    if not isinstance(value, dict):
        problems.append(f"{source}: limits: a mapping")
        return defaults
    out: dict[str, Any] = {}
    for key, raw in value.items():
        default = getattr(defaults, str(key), None)
        if default is None or str(key).startswith("_"):
            problems.append(f"{source}: limits: unknown key {key!r}")
            continue
        integer = isinstance(default, int)
        ok_type = isinstance(raw, int) if integer else isinstance(raw, int | float)
        if isinstance(raw, bool) or not ok_type or not math.isfinite(raw) or raw <= 0:
            kind = "a positive integer" if integer else "a positive number of seconds"
            problems.append(f"{source}: limits.{key}: {kind}")
            continue
        out[str(key)] = raw
    return InjectLimits(**out)


def _k8s_escape(value: str) -> str:
    # Kubernetes expands $(VAR) in env values; $$ is its escape for a literal $.
    return value.replace("$", "$$")


# ---------------------------------------------------------------------------------------------
# The decision
# ---------------------------------------------------------------------------------------------


class _Unparseable(Exception):
    """The pod has a shape this webhook does not understand: admit unchanged, warn."""


@dataclass(frozen=True, slots=True)
class Decision:
    """What to do with one pod: `patch` (JSON Patch operations, empty: no change)."""

    mode: str | None  # the mode applied, or None
    patch: list[dict[str, Any]]
    warnings: list[str]
    skipped: str = ""  # the skipped-env annotation's value, if any
    why: str = ""  # for the log: why nothing was done


def mode_for_path(path: str) -> str | bool | None:
    """The namespace's mode a request path stands for: a mode, None (pod label only), or False
    for a path this webhook does not serve."""
    if path == MUTATE_PATH:
        return None
    prefix, _, mode = path.rpartition("/")
    if prefix == MUTATE_PATH and mode in MODES:
        return mode
    return False


def decide(pod: object, namespace_mode: str | None, settings: InjectSettings) -> Decision:
    """The decision for `pod` (request.object) in a namespace labelled `namespace_mode`."""
    try:
        return _decide(pod, namespace_mode, settings)
    except _Unparseable as exc:
        return Decision(None, [], [f"{_WARNING_PREFIX}pod left unchanged: {exc}"], why=str(exc))
    except Exception as exc:  # a bug here must not block a deployment: admit and say so
        text = f"internal error ({type(exc).__name__}); pod left unchanged"
        return Decision(None, [], [_WARNING_PREFIX + text], why=text)


def _mapping(value: object, where: str) -> dict[str, Any]:
    if value is None:
        return {}
    if not isinstance(value, dict):
        raise _Unparseable(f"{where} is not an object")
    return value


def _string_map(value: object, where: str) -> dict[str, str]:
    mapping = _mapping(value, where)
    if not all(isinstance(k, str) and isinstance(v, str) for k, v in mapping.items()):
        raise _Unparseable(f"{where} must map strings to strings")
    return mapping


def _decide(pod: object, namespace_mode: str | None, settings: InjectSettings) -> Decision:
    if not isinstance(pod, dict):
        raise _Unparseable("the request's object is not a Pod object")
    metadata = _mapping(pod.get("metadata"), "metadata")
    annotations = _string_map(metadata.get("annotations"), "metadata.annotations")
    labels = _string_map(metadata.get("labels"), "metadata.labels")
    if INJECTED_ANNOTATION in annotations:
        return Decision(None, [], [], why="already injected")
    mode = annotations.get(INJECT_KEY) or labels.get(INJECT_KEY) or namespace_mode
    if mode is None or mode == DISABLED:
        return Decision(None, [], [], why="not opted in" if mode is None else "disabled")
    if mode not in MODES:
        warning = f"{INJECT_KEY}={mode!r} is not one of explicit, transparent, disabled"
        return Decision(None, [], [f"{_WARNING_PREFIX}pod left unchanged: {warning}"], why=warning)
    spec = pod.get("spec")
    if not isinstance(spec, dict):
        raise _Unparseable("spec is not an object")
    if mode == TRANSPARENT:
        patch, skipped = _transparent_patch(spec, settings), ""
    else:
        overrides = _overrides(annotations.get(OVERRIDE_ANNOTATION, ""))
        patch, skipped = _explicit_patch(spec, settings, overrides)
    marks = {INJECTED_ANNOTATION: mode}
    if skipped:
        marks[SKIPPED_ANNOTATION] = skipped
    patch += _annotation_ops(pod.get("metadata"), marks)
    return Decision(mode, patch, [], skipped=skipped)


_ALL = "*"


def _overrides(text: str) -> frozenset[str]:
    """The override annotation, as lowercase names (a name covers both letter cases), or
    {"*"} for `true`/`all`/`*` (every variable)."""
    if text.strip().lower() in ("true", "all", _ALL):
        return frozenset({_ALL})
    return frozenset(name.strip().lower() for name in text.split(",") if name.strip())


def _annotation_ops(metadata: object, marks: Mapping[str, str]) -> list[dict[str, Any]]:
    if not isinstance(metadata, dict):  # absent or null (the API server always sends one)
        return [{"op": "add", "path": "/metadata", "value": {"annotations": dict(marks)}}]
    if metadata.get("annotations") is None:
        return [{"op": "add", "path": "/metadata/annotations", "value": dict(marks)}]
    return [
        {"op": "add", "path": f"/metadata/annotations/{_pointer(key)}", "value": value}
        for key, value in marks.items()
    ]


def _pointer(token: str) -> str:
    """One RFC 6901 reference token: `~` and `/` escaped."""
    return token.replace("~", "~0").replace("/", "~1")


def _containers(spec: Mapping[str, Any], key: str) -> list[dict[str, Any]]:
    containers = spec.get(key)
    if containers is None:
        return []
    if not isinstance(containers, list) or not all(isinstance(c, dict) for c in containers):
        raise _Unparseable(f"spec.{key} is not a list of containers")
    return containers


# -- explicit ---------------------------------------------------------------------------------


def _explicit_patch(
    spec: Mapping[str, Any], settings: InjectSettings, overrides: frozenset[str]
) -> tuple[list[dict[str, Any]], str]:
    patch: list[dict[str, Any]] = []
    skipped_by_container: list[str] = []
    if not _containers(spec, "containers"):
        raise _Unparseable("spec.containers is empty")
    for key in _CONTAINER_LISTS:
        for index, container in enumerate(_containers(spec, key)):
            base = f"/spec/{key}/{index}/env"
            ops, skipped = _container_env(container, base, settings, overrides)
            patch += ops
            if skipped:
                name = container.get("name")
                label = name if isinstance(name, str) else f"{key}[{index}]"
                skipped_by_container.append(f"{label}: {', '.join(skipped)}")
    return patch, "; ".join(skipped_by_container)


def _container_env(
    container: Mapping[str, Any],
    base: str,
    settings: InjectSettings,
    overrides: frozenset[str],
) -> tuple[list[dict[str, Any]], list[str]]:
    env = container.get("env")
    if env is None:
        env = []
    if not isinstance(env, list) or not all(
        isinstance(e, dict) and isinstance(e.get("name"), str) for e in env
    ):
        raise _Unparseable(f"{base[1:].replace('/', '.')} is not a list of named variables")
    existing = {entry["name"]: index for index, entry in enumerate(env)}
    # A variable the container sets in one letter case keeps the other case unset too: two
    # values for one setting make runtimes disagree (proxy_env's case-mismatch finding).
    present = {name.lower() for name in existing}
    added: list[dict[str, Any]] = []
    ops: list[dict[str, Any]] = []
    skipped: list[str] = []
    wanted = list(settings.variables)
    if settings.java_options:
        wanted.append(("JAVA_TOOL_OPTIONS", settings.java_options))
    for name, value in wanted:
        override = _ALL in overrides or name.lower() in overrides
        index = existing.get(name)
        if index is None:
            if name.lower() in present and not override:
                skipped.append(name)
            else:
                added.append({"name": name, "value": value})
            continue
        op, why = _existing(env[index], f"{base}/{index}", name, value, override)
        if op is not None:
            ops.append(op)
        if why:
            skipped.append(why)
    if added:
        if container.get("env") is None:
            ops.append({"op": "add", "path": base, "value": added})
        else:
            ops += [{"op": "add", "path": f"{base}/-", "value": entry} for entry in added]
    return ops, skipped


def _existing(
    entry: Mapping[str, Any], path: str, name: str, value: str, override: bool
) -> tuple[dict[str, Any] | None, str]:
    """The operation for a variable the container already sets, and why it is skipped (if)."""
    if name != "JAVA_TOOL_OPTIONS":
        if override:
            return {"op": "replace", "path": path, "value": {"name": name, "value": value}}, ""
        return None, name
    if "valueFrom" in entry:
        # The value is only known on the node: nothing to append to.
        return None, f"{name} (valueFrom)"
    current = entry.get("value", "")
    if not isinstance(current, str):
        raise _Unparseable(f"{name} has a value that is not a string")
    if not override and any(prop in current for prop in _JAVA_PROXY_PROPERTIES):
        return None, f"{name} (has proxy properties)"
    combined = f"{current} {value}" if current.strip() else value
    return {"op": "replace", "path": path, "value": {"name": name, "value": combined}}, ""


# -- transparent ------------------------------------------------------------------------------


def _transparent_patch(spec: Mapping[str, Any], settings: InjectSettings) -> list[dict[str, Any]]:
    sidecar = settings.transparent
    if sidecar is None:
        raise _Unparseable("transparent mode is not configured in the webhook's config")
    parts = sidecar_spec(
        sidecar.image, sidecar.init_image or sidecar.image, sidecar.config_map, sidecar.admin_port
    )
    containers = _containers(spec, "containers")
    if not containers:
        raise _Unparseable("spec.containers is empty")
    names = {c.get("name") for key in _CONTAINER_LISTS for c in _containers(spec, key)}
    names = {name for name in names if isinstance(name, str)}
    volumes = spec.get("volumes")
    if volumes is not None and (
        not isinstance(volumes, list) or not all(isinstance(v, dict) for v in volumes)
    ):
        raise _Unparseable("spec.volumes is not a list of volumes")
    volume_names = {v.get("name") for v in volumes or [] if isinstance(v.get("name"), str)}
    clash = sorted(
        str(n)
        for n in (names & {INIT_CONTAINER_NAME, parts["containers"][0]["name"]})
        | (volume_names & {CONFIG_VOLUME, TMP_VOLUME})
    )
    if clash:
        raise _Unparseable(f"it already has a container or volume named {', '.join(clash)}")
    ops: list[dict[str, Any]] = []
    # The redirect runs first, so that no process of the pod (init containers included) has a
    # moment of unfiltered egress; init containers that need the network then fail closed.
    if spec.get("initContainers") is None:
        ops.append({"op": "add", "path": "/spec/initContainers", "value": parts["initContainers"]})
    else:
        ops.append(
            {"op": "add", "path": "/spec/initContainers/0", "value": parts["initContainers"][0]}
        )
    ops += [{"op": "add", "path": "/spec/containers/-", "value": c} for c in parts["containers"]]
    if volumes is None:
        ops.append({"op": "add", "path": "/spec/volumes", "value": parts["volumes"]})
    else:
        ops += [{"op": "add", "path": "/spec/volumes/-", "value": v} for v in parts["volumes"]]
    return ops


# ---------------------------------------------------------------------------------------------
# The AdmissionReview envelope
# ---------------------------------------------------------------------------------------------


def read_request(review: object) -> dict[str, Any]:
    """The review's `request` with a string uid; BadReview when there is none to answer."""
    if not isinstance(review, dict):
        raise BadReview("the body is not a JSON object")
    if review.get("apiVersion") != REVIEW_API_VERSION or review.get("kind") != "AdmissionReview":
        raise BadReview(f"not an AdmissionReview {REVIEW_API_VERSION}")
    request = review.get("request")
    if not isinstance(request, dict) or not isinstance(request.get("uid"), str):
        raise BadReview("the AdmissionReview has no request.uid")
    return request


def decide_request(
    request: Mapping[str, Any], namespace_mode: str | None, settings: InjectSettings
) -> Decision:
    """The decision for one AdmissionReview request (a Pod CREATE; anything else: no change)."""
    resource = request.get("resource")
    is_pod = isinstance(resource, dict) and resource.get("resource") == "pods"
    if not is_pod or request.get("subResource") or request.get("operation") != "CREATE":
        warning = f"{_WARNING_PREFIX}only Pod CREATE is handled; request left unchanged"
        return Decision(None, [], [warning], why="not a Pod CREATE")
    return decide(request.get("object"), namespace_mode, settings)


def admission_response(request: Mapping[str, Any], decision: Decision) -> dict[str, Any]:
    """The AdmissionReview answer: always allowed, with the patch (if any) and warnings."""
    response: dict[str, Any] = {"uid": request["uid"], "allowed": True}
    if decision.patch:
        response["patchType"] = "JSONPatch"
        data = json.dumps(decision.patch, separators=(",", ":")).encode()
        response["patch"] = base64.b64encode(data).decode("ascii")
    if decision.warnings:
        response["warnings"] = decision.warnings
    return {"apiVersion": REVIEW_API_VERSION, "kind": "AdmissionReview", "response": response}
