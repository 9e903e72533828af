"""AdmissionReview documents as the API server sends them for Pods that controllers create.

`deployment_pod(...)` is a Pod as the ReplicaSet controller writes it from a Deployment's
template, after the API server's defaulting: `generateName` and no `name`, the namespace only in
the request, an ownerReference to the ReplicaSet, `pod-template-hash`, every defaulted field
(imagePullPolicy, terminationMessagePath, dnsPolicy, ...). `review(pod)` wraps it in the
AdmissionReview v1 request of a CREATE. Used by the webhook's unit and integration tests and by
bench/webhook.py.
"""

from __future__ import annotations

import copy
import itertools
from typing import Any

_UIDS = itertools.count(1)


def container(name: str, image: str = "registry.example/app:1.4.2", **extra: Any) -> dict[str, Any]:
    """A container as defaulting leaves it."""
    return {
        "name": name,
        "image": image,
        "imagePullPolicy": "IfNotPresent",
        "resources": {},
        "terminationMessagePath": "/dev/termination-log",
        "terminationMessagePolicy": "File",
        **extra,
    }


def deployment_pod(
    app: str = "web",
    containers: list[dict[str, Any]] | None = None,
    init_containers: list[dict[str, Any]] | None = None,
    labels: dict[str, str] | None = None,
    annotations: dict[str, str] | None = None,
) -> dict[str, Any]:
    """A Pod of Deployment `app` as its ReplicaSet creates it."""
    template_hash = "7d4b9c5f8"
    metadata: dict[str, Any] = {
        "generateName": f"{app}-{template_hash}-",
        "labels": {"app": app, "pod-template-hash": template_hash, **(labels or {})},
        "ownerReferences": [
            {
                "apiVersion": "apps/v1",
                "kind": "ReplicaSet",
                "name": f"{app}-{template_hash}",
                "uid": "0b6f2a1e-6f0d-4d2b-9a57-3c1f7a0e9b11",
                "controller": True,
                "blockOwnerDeletion": True,
            }
        ],
    }
    if annotations:
        metadata["annotations"] = dict(annotations)
    spec: dict[str, Any] = {
        "containers": containers if containers is not None else [container(app)],
        "restartPolicy": "Always",
        "terminationGracePeriodSeconds": 30,
        "dnsPolicy": "ClusterFirst",
        "serviceAccountName": "default",
        "securityContext": {},
        "schedulerName": "default-scheduler",
        "enableServiceLinks": True,
        "preemptionPolicy": "PreemptLowerPriority",
        "priority": 0,
        "tolerations": [
            {
                "key": "node.kubernetes.io/not-ready",
                "operator": "Exists",
                "effect": "NoExecute",
                "tolerationSeconds": 300,
            }
        ],
    }
    if init_containers is not None:
        spec["initContainers"] = init_containers
    return {"apiVersion": "v1", "kind": "Pod", "metadata": metadata, "spec": spec}


def review(pod: Any, namespace: str = "shop", operation: str = "CREATE") -> dict[str, Any]:
    """The AdmissionReview v1 request the API server sends for `pod`."""
    return {
        "apiVersion": "admission.k8s.io/v1",
        "kind": "AdmissionReview",
        "request": {
            "uid": f"705ab4f5-6393-11e8-b7cc-{next(_UIDS):012x}",
            "kind": {"group": "", "version": "v1", "kind": "Pod"},
            "resource": {"group": "", "version": "v1", "resource": "pods"},
            "requestKind": {"group": "", "version": "v1", "kind": "Pod"},
            "requestResource": {"group": "", "version": "v1", "resource": "pods"},
            "namespace": namespace,
            "operation": operation,
            "userInfo": {
                "username": "system:serviceaccount:kube-system:replicaset-controller",
                "uid": "5c2a0f35-3f5e-4f2e-9e1a-0d7f5c8a1b22",
                "groups": ["system:serviceaccounts", "system:authenticated"],
            },
            "object": copy.deepcopy(pod),
            "oldObject": None,
            "dryRun": False,
            "options": {"apiVersion": "meta.k8s.io/v1", "kind": "CreateOptions"},
        },
    }


def pod_shapes() -> dict[str, dict[str, Any]]:
    """The Pods the webhook must handle (issue 15): name → Pod."""
    java = container(
        "api",
        env=[
            {"name": "JAVA_TOOL_OPTIONS", "value": "-Xmx512m -XX:+UseG1GC"},
            {"name": "HTTP_PROXY", "value": "http://team-proxy.example:8080"},
            {"name": "LOG_LEVEL", "value": "debug"},
        ],
    )
    env_from = container(
        "worker",
        envFrom=[{"configMapRef": {"name": "worker-settings"}}, {"secretRef": {"name": "db"}}],
    )
    return {
        "deployment": deployment_pod(),
        "multi-container": deployment_pod(
            containers=[container("web"), container("metrics", "registry.example/exporter:2")]
        ),
        "init-containers": deployment_pod(
            init_containers=[container("migrate", "registry.example/migrate:1")]
        ),
        "existing-env-and-java": deployment_pod(containers=[java]),
        "java-from-secret": deployment_pod(
            containers=[
                container(
                    "jvm",
                    env=[
                        {
                            "name": "JAVA_TOOL_OPTIONS",
                            "valueFrom": {"configMapKeyRef": {"name": "jvm", "key": "opts"}},
                        }
                    ],
                )
            ]
        ),
        "env-from": deployment_pod(containers=[env_from]),
        "no-env": deployment_pod(containers=[container("bare")]),
    }
