"""`egressgate k8s render --verify-job`: a Job that runs `egressgate verify --attack` as the app.

Rendered in the app's namespace, next to the explicit-mode manifests:

  ServiceAccount  <name>-verify: the Job's identity, token mounted (the pod inspection reads the
                  namespace's NetworkPolicies with it)
  Role            <name>-verify: get/list networkpolicies, get pods (its own labels), nothing else
  RoleBinding     <name>-verify
  Job             <name>-verify: one pod carrying the APP's labels, so the app's NetworkPolicy
                  selects it exactly as it selects the app, with the app's proxy variables
                  (envFrom <name>-client-env); it runs the probe catalogue once (backoffLimit 0)
                  and its exit status is the verdict: `kubectl wait --for=condition=complete`.

The pod is never Ready (a readiness probe on a port nothing listens on): a Service that selects
the app's labels must not send it traffic. The API server is usually NOT reachable from it —
the app's NetworkPolicy allows only the proxy and DNS — and the pod check then says "not
checked" and why; allow the Job egress to the API server to have the policies read.

Pure: inputs → manifest dicts, like k8s_render.
"""

from __future__ import annotations

import ipaddress
from collections.abc import Sequence
from dataclasses import dataclass

from egressgate.config.model import Config
from egressgate.tools import verify
from egressgate.tools.k8s_render import (
    COMPONENT_LABEL,
    COMPONENT_VERIFY,
    DEFAULT_CLIENT_LABEL,
    INSTANCE_LABEL,
    MANAGED_BY_LABEL,
    NAME_LABEL,
    Manifest,
    RenderError,
    RenderOptions,
    container_security_context,
)

JOB_DEADLINE_S = 300  # the whole run; a probe wave takes one --timeout
JOB_TTL_S = 24 * 3600  # finished Jobs (and their logs) are kept a day
# Readiness on a port nothing listens on: the pod is never Ready, so it never becomes an endpoint
# of a Service that selects the app's labels.
NEVER_READY_PORT = 1


@dataclass(frozen=True)
class VerifyJobOptions:
    """What the Job attacks: URLs and names the operator chose (verify --attack's targets)."""

    allowed: Sequence[str] = ()
    denied: Sequence[str] = ()
    outside_resolver: str | None = None
    doh_name: str | None = None
    timeout_s: float = verify.DEFAULT_TIMEOUT_S


def problems(job: VerifyJobOptions) -> list[str]:
    found: list[str] = []
    if not job.allowed or not job.denied:
        found.append("--verify-job needs --verify-allowed URL and --verify-denied URL")
    for url in [*job.allowed, *job.denied]:
        try:
            verify.parse_url(url)
        except ValueError as exc:
            found.append(f"--verify-allowed/--verify-denied: {exc}")
    if job.outside_resolver is not None:
        try:
            ipaddress.ip_address(job.outside_resolver)
        except ValueError:
            found.append(f"--verify-outside-resolver {job.outside_resolver!r}: not an IP address")
    return found


def render_verify_job(
    config: Config, options: RenderOptions, job: VerifyJobOptions
) -> list[Manifest]:
    """The ServiceAccount, Role, RoleBinding and Job; RenderError lists every problem."""
    found = problems(job)
    if found:
        raise RenderError(found)
    namespace = options.app_namespace or options.namespace
    name = f"{options.name}-verify"
    return [
        {
            "apiVersion": "v1",
            "kind": "ServiceAccount",
            "metadata": _metadata(options, name, namespace),
            "automountServiceAccountToken": True,
        },
        _role(options, name, namespace),
        {
            "apiVersion": "rbac.authorization.k8s.io/v1",
            "kind": "RoleBinding",
            "metadata": _metadata(options, name, namespace),
            "roleRef": {"apiGroup": "rbac.authorization.k8s.io", "kind": "Role", "name": name},
            "subjects": [{"kind": "ServiceAccount", "name": name, "namespace": namespace}],
        },
        _job(config, options, job, name, namespace),
    ]


def _metadata(options: RenderOptions, name: str, namespace: str) -> Manifest:
    return {
        "name": name,
        "namespace": namespace,
        "labels": {
            NAME_LABEL: "egressgate",
            INSTANCE_LABEL: options.name,
            COMPONENT_LABEL: COMPONENT_VERIFY,
            MANAGED_BY_LABEL: "egressgate-k8s-render",
        },
    }


def _role(options: RenderOptions, name: str, namespace: str) -> Manifest:
    return {
        "apiVersion": "rbac.authorization.k8s.io/v1",
        "kind": "Role",
        "metadata": _metadata(options, name, namespace),
        "rules": [
            {
                "apiGroups": ["networking.k8s.io"],
                "resources": ["networkpolicies"],
                "verbs": ["get", "list"],
            },
            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get"]},
        ],
    }


def verify_args(config: Config, job: VerifyJobOptions) -> list[str]:
    """The container's arguments (the image's ENTRYPOINT is `egressgate`)."""
    args = ["verify", "--attack", "--timeout", f"{job.timeout_s:g}"]
    for url in job.allowed:
        args += ["--allowed", url]
    for url in job.denied:
        args += ["--denied", url]
    if job.outside_resolver is not None:
        args += ["--outside-resolver", job.outside_resolver]
    if job.doh_name is not None:
        args += ["--doh-name", job.doh_name]
    admin = config.admin_listen.port if config.admin_listen is not None else 0
    return [*args, "--admin-port", str(admin)]


def _job(
    config: Config, options: RenderOptions, job: VerifyJobOptions, name: str, namespace: str
) -> Manifest:
    app_labels = dict(options.app_labels) or {DEFAULT_CLIENT_LABEL: options.name}
    container = {
        "name": "verify",
        "image": options.image,
        "args": verify_args(config, job),
        "envFrom": [{"configMapRef": {"name": f"{options.name}-client-env"}}],
        "readinessProbe": {"tcpSocket": {"port": NEVER_READY_PORT}, "periodSeconds": 60},
        "resources": {
            "requests": {"cpu": "50m", "memory": "64Mi"},
            "limits": {"memory": "128Mi"},
        },
        "securityContext": container_security_context(),
    }
    return {
        "apiVersion": "batch/v1",
        "kind": "Job",
        "metadata": _metadata(options, name, namespace),
        "spec": {
            "backoffLimit": 0,
            "activeDeadlineSeconds": JOB_DEADLINE_S,
            "ttlSecondsAfterFinished": JOB_TTL_S,
            "template": {
                "metadata": {
                    # The app's labels win: the app's NetworkPolicy must select this pod.
                    "labels": {COMPONENT_LABEL: COMPONENT_VERIFY, **app_labels},
                },
                "spec": {
                    "serviceAccountName": name,
                    "automountServiceAccountToken": True,
                    "restartPolicy": "Never",
                    "containers": [container],
                },
            },
        },
    }
