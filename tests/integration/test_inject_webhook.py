"""`egressgate inject` as a cluster runs it: installed from what `k8s certs` and `k8s render
--inject` print, called over TLS the way the API server calls it.

One webhook process for the module: its TLS pair is the Secret `egressgate k8s certs` prints,
its config is the ConfigMap `k8s render --inject` prints, and the client trusts only the
rendered webhook configuration's caBundle and checks the Service's DNS name, on keep-alive
connections. Every returned JSONPatch is applied with jsonpatch (RFC 6902) and the resulting Pod
validated with kubernetes-validate --strict; the injected variables must equal the
<name>-client-env ConfigMap of `k8s render` (the code of `egressgate env`).
"""

from __future__ import annotations

import base64
import copy
import http.client
import json
import socket
import ssl
import time
from collections.abc import Iterator
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import jsonpatch
import kubernetes_validate
import pytest
import yaml

from tests.integration.test_cli_k8s import K8S_VERSION, _documents, _egressgate, _validate_all
from tests.support.admission import container, deployment_pod, pod_shapes, review
from tests.support.proxy import ProxyProcess

PROXY_CONFIG = """\
listen: 0.0.0.0:3128
socks_listen: 0.0.0.0:1080
admin_listen: 0.0.0.0:9090
allow: [api.example.com]
"""
LIMITS = {"header_timeout_s": 1.0, "max_body_bytes": 256 * 1024, "max_connections": 6}


@dataclass
class Installed:
    rendered: list[dict[str, Any]]
    client_env: dict[str, str]
    ca_pem: str
    server_name: str
    webhook: ProxyProcess
    workdir: Path

    @property
    def address(self) -> tuple[str, int]:
        found = self.webhook.listening_address("webhook")
        assert found is not None
        return found

    def connect(self, ca_pem: str | None = None) -> http.client.HTTPSConnection:
        """A keep-alive connection that trusts only the caBundle and checks the Service name."""
        context = ssl.create_default_context(cadata=ca_pem or self.ca_pem)
        conn = http.client.HTTPSConnection(self.server_name, self.address[1], timeout=5)
        raw = socket.create_connection(self.address, timeout=5)
        conn.sock = context.wrap_socket(raw, server_hostname=self.server_name)
        return conn


def _by_kind(docs: list[dict[str, Any]], kind: str) -> dict[str, Any]:
    (doc,) = [d for d in docs if d["kind"] == kind]
    return doc


@pytest.fixture(scope="module")
def installed(tmp_path_factory: pytest.TempPathFactory) -> Iterator[Installed]:
    workdir = tmp_path_factory.mktemp("inject")
    config = workdir / "egress.yaml"
    config.write_text(PROXY_CONFIG)
    ca_file = workdir / "ca.crt"
    certs = _egressgate("k8s", "certs", "--ca-out", str(ca_file))
    assert certs.returncode == 0, certs.stderr
    (secret,) = _documents(certs.stdout)
    common = ("-c", str(config), "--cluster-cidr", "10.244.0.0/16", "--no-proxy", "10.0.0.1")
    render = _egressgate("k8s", "render", *common, "--inject", "--ca-bundle", str(ca_file))
    assert render.returncode == 0, render.stderr
    rendered = [secret, *_documents(render.stdout)]
    proxy = _egressgate("k8s", "render", *common, "--app-label", "app=web")
    assert proxy.returncode == 0, proxy.stderr
    client_env = next(
        d["data"] for d in _documents(proxy.stdout) if d["metadata"]["name"].endswith("client-env")
    )
    webhook_config = yaml.safe_load(_by_kind(rendered, "ConfigMap")["data"]["inject.yaml"])
    # What `egressgate env` prints for the same inputs: the injected values must be exactly it.
    cidrs = [arg for cidr in webhook_config["cluster_cidrs"] for arg in ("--cluster-cidr", cidr)]
    env = _egressgate(
        "env", "--format", "json", "--proxy", webhook_config["proxy"],
        "--socks", webhook_config["socks"], "--no-proxy", "10.0.0.1", *cidrs,
    )  # fmt: skip
    assert env.returncode == 0, env.stderr
    env_doc = json.loads(env.stdout)
    expected = {**env_doc["variables"], "JAVA_TOOL_OPTIONS": env_doc["java"]["JAVA_TOOL_OPTIONS"]}
    # k8s render's client-env ConfigMap agrees on everything it carries (it has no SOCKS).
    assert {k: v for k, v in expected.items() if k in client_env and "JAVA" not in k} == {
        k: v for k, v in client_env.items() if "JAVA" not in k
    }
    for name in ("tls.crt", "tls.key"):
        (workdir / name).write_bytes(base64.b64decode(secret["data"][name]))
    webhook_config["limits"] = LIMITS
    entry = _by_kind(rendered, "MutatingWebhookConfiguration")["webhooks"][0]
    service = entry["clientConfig"]["service"]
    process = ProxyProcess(
        webhook_config,
        workdir / "webhook",
        subcommand=(
            "inject",
            "--listen",
            "127.0.0.1:0",
            "--tls-cert",
            str(workdir / "tls.crt"),
            "--tls-key",
            str(workdir / "tls.key"),
        ),
    )
    with process.start():
        yield Installed(
            rendered=rendered,
            client_env=expected,
            ca_pem=base64.b64decode(entry["clientConfig"]["caBundle"]).decode(),
            server_name=f"{service['name']}.{service['namespace']}.svc",
            webhook=process,
            workdir=workdir,
        )


def _post(conn: http.client.HTTPSConnection, path: str, body: bytes) -> tuple[int, bytes]:
    conn.request("POST", path, body=body, headers={"Content-Type": "application/json"})
    response = conn.getresponse()
    return response.status, response.read()


def _admit(
    conn: http.client.HTTPSConnection, pod: Any, path: str = "/mutate/explicit"
) -> tuple[dict[str, Any], Any]:
    """(the AdmissionResponse, the pod after its patch)."""
    doc = review(pod)
    status, body = _post(conn, path, json.dumps(doc).encode())
    assert status == 200, body
    answer = json.loads(body)
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert answer["kind"] == "AdmissionReview"
    response = answer["response"]
    assert response["uid"] == doc["request"]["uid"]
    assert response["allowed"] is True
    if "patch" not in response:
        return response, pod
    assert response["patchType"] == "JSONPatch"
    patch = json.loads(base64.b64decode(response["patch"]))
    return response, jsonpatch.apply_patch(copy.deepcopy(pod), patch)


def _env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value") for e in c.get("env", [])}


# -- the rendered installation ------------------------------------------------------------------


def test_the_rendered_installation_validates_and_selects_only_labelled_workloads(
    installed: Installed,
) -> None:
    _validate_all(installed.rendered)
    kinds = [d["kind"] for d in installed.rendered]
    assert kinds == [
        "Secret",
        "ConfigMap",
        "Deployment",
        "Service",
        "PodDisruptionBudget",
        "NetworkPolicy",
        "MutatingWebhookConfiguration",
    ]  # no RBAC, no cert-manager objects with --ca-bundle
    hooks = _by_kind(installed.rendered, "MutatingWebhookConfiguration")["webhooks"]
    assert [h["clientConfig"]["service"]["path"] for h in hooks] == [
        "/mutate/explicit",
        "/mutate/transparent",
        "/mutate",
    ]
    for hook in hooks:
        assert hook["sideEffects"] == "None"
        assert hook["failurePolicy"] == "Ignore"
        assert hook["reinvocationPolicy"] == "Never"
        assert hook["timeoutSeconds"] == 5
        assert hook["rules"][0]["operations"] == ["CREATE"]
        excluded = hook["namespaceSelector"]["matchExpressions"][1]
        assert excluded["operator"] == "NotIn"
        assert {"kube-system", "egressgate"} <= set(excluded["values"])
    assert hooks[0]["namespaceSelector"]["matchExpressions"][0]["values"] == ["explicit"]
    assert hooks[0]["objectSelector"]["matchExpressions"][0]["operator"] == "NotIn"
    assert hooks[2]["namespaceSelector"]["matchExpressions"][0]["operator"] == "DoesNotExist"
    pod_spec = _by_kind(installed.rendered, "Deployment")["spec"]["template"]["spec"]
    assert pod_spec["automountServiceAccountToken"] is False
    assert (
        pod_spec["volumes"][1]["secret"]["secretName"] == installed.rendered[0]["metadata"]["name"]
    )


def test_without_a_ca_bundle_cert_manager_issues_the_certificate(tmp_path: Path) -> None:
    config = tmp_path / "egress.yaml"
    config.write_text(PROXY_CONFIG)
    done = _egressgate(
        "k8s", "render", "-c", str(config), "--inject", "--inject-failure-policy", "Fail"
    )
    assert done.returncode == 0, done.stderr
    docs = _documents(done.stdout)
    crds = [d for d in docs if d["apiVersion"].startswith("cert-manager.io/")]
    # kubernetes-validate ships no cert-manager schemas: the built-in kinds are validated, the
    # two cert-manager objects checked against what cert-manager's cainjector needs.
    _validate_all([d for d in docs if d not in crds])
    issuer, certificate = crds
    assert issuer["kind"] == "Issuer"
    assert issuer["spec"] == {"selfSigned": {}}
    assert certificate["kind"] == "Certificate"
    assert certificate["spec"]["issuerRef"]["name"] == issuer["metadata"]["name"]
    assert "egressgate-inject.egressgate.svc" in certificate["spec"]["dnsNames"]
    hooks = _by_kind(docs, "MutatingWebhookConfiguration")
    assert hooks["metadata"]["annotations"] == {
        "cert-manager.io/inject-ca-from": "egressgate/egressgate-inject"
    }
    assert all("caBundle" not in h["clientConfig"] for h in hooks["webhooks"])
    assert {h["failurePolicy"] for h in hooks["webhooks"]} == {"Fail"}
    secret = _by_kind(docs, "Deployment")["spec"]["template"]["spec"]["volumes"][1]
    assert secret["secret"]["secretName"] == certificate["spec"]["secretName"]


def test_an_unusable_config_or_certificate_stops_the_start_with_every_problem(
    installed: Installed, tmp_path: Path
) -> None:
    config = tmp_path / "inject.yaml"
    config.write_text("proxy: egressgate:3128\nlimits: {max_connections: 0}\nsurprise: 1\n")
    tls = (
        "--tls-cert",
        str(installed.workdir / "tls.crt"),
        "--tls-key",
        str(installed.workdir / "tls.key"),
    )
    done = _egressgate("inject", "--config", str(config), "--listen", "127.0.0.1:0", *tls)
    assert done.returncode == 2
    for problem in ("has no scheme", "limits.max_connections", "unknown key 'surprise'"):
        assert problem in done.stderr
    config.write_text("proxy: http://egressgate:3128\n")
    bad_key = ("--tls-cert", str(installed.workdir / "tls.crt"), "--tls-key", str(config))
    done = _egressgate("inject", "--config", str(config), "--listen", "127.0.0.1:0", *bad_key)
    assert done.returncode == 2
    assert done.stderr.startswith("egressgate inject: ")


# -- pods as controllers create them, over HTTPS --------------------------------------------------


def test_each_pod_shape_is_injected_and_still_a_valid_pod(installed: Installed) -> None:
    conn = installed.connect()
    shapes = pod_shapes()
    for name, pod in shapes.items():
        response, patched = _admit(conn, pod)
        assert "warnings" not in response, (name, response)
        kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
        assert patched["metadata"]["annotations"]["egressgate.io/injected"] == "explicit"
        containers = [*patched["spec"].get("initContainers", []), *patched["spec"]["containers"]]
        for c in containers:
            env = _env(c)
            for variable, value in installed.client_env.items():
                kept = ("HTTP_PROXY", "http_proxy", "JAVA_TOOL_OPTIONS")
                if variable in kept and name.startswith("existing"):
                    continue
                if variable == "JAVA_TOOL_OPTIONS" and name == "java-from-secret":
                    continue
                assert env[variable] == value, (name, c["name"], variable)
    _, patched = _admit(conn, shapes["existing-env-and-java"])
    env = _env(patched["spec"]["containers"][0])
    assert env["HTTP_PROXY"] == "http://team-proxy.example:8080"
    assert env["JAVA_TOOL_OPTIONS"].startswith("-Xmx512m -XX:+UseG1GC -Dhttp.proxyHost=")
    assert "http_proxy" not in env  # the pair stays as the app set it
    skipped = patched["metadata"]["annotations"]["egressgate.io/skipped-env"]
    assert skipped == "api: HTTP_PROXY, http_proxy"
    conn.close()


def test_injected_opted_out_and_unlabelled_pods_come_back_unchanged(installed: Installed) -> None:
    conn = installed.connect()
    _, injected = _admit(conn, deployment_pod())
    for pod, path in (
        (injected, "/mutate/explicit"),
        (deployment_pod(annotations={"egressgate.io/inject": "disabled"}), "/mutate/explicit"),
        (deployment_pod(), "/mutate"),  # no label in an unlabelled namespace
    ):
        response, after = _admit(conn, pod, path)
        assert after == pod
        assert "patch" not in response
        assert "warnings" not in response
    conn.close()


def test_a_pod_label_opts_in_and_transparent_gets_the_sidecar(installed: Installed) -> None:
    conn = installed.connect()
    _, patched = _admit(
        conn, deployment_pod(labels={"egressgate.io/inject": "explicit"}), "/mutate"
    )
    assert (
        _env(patched["spec"]["containers"][0])["HTTPS_PROXY"] == installed.client_env["HTTPS_PROXY"]
    )
    pod = deployment_pod(init_containers=[container("migrate")])
    _, patched = _admit(conn, pod, "/mutate/transparent")
    kubernetes_validate.validate(patched, K8S_VERSION, strict=True)
    spec = patched["spec"]
    assert [c["name"] for c in spec["initContainers"]] == ["egressgate-redirect", "migrate"]
    assert [c["name"] for c in spec["containers"]] == ["web", "egressgate"]
    assert spec["volumes"][0]["configMap"]["name"] == "egressgate-sidecar-config"
    conn.close()


def test_garbage_is_admitted_with_a_warning_or_answered_400(installed: Installed) -> None:
    conn = installed.connect()
    response, _ = _admit(conn, {"metadata": {}, "spec": {"containers": "web"}})
    assert "patch" not in response
    assert response["warnings"][0].startswith("egressgate-inject: pod left unchanged")
    for body in (b"{not json", b"[]", json.dumps({"kind": "AdmissionReview"}).encode()):
        status, _ = _post(conn, "/mutate/explicit", body)
        assert status == 400
    status, _ = _post(conn, "/nowhere", b"{}")
    assert status == 404
    conn.request("GET", "/healthz")
    reply = conn.getresponse()
    assert (reply.status, reply.read()) == (200, b"ok\n")
    conn.close()


# -- bounds -------------------------------------------------------------------------------------


def _raw(installed: Installed) -> ssl.SSLSocket:
    context = ssl.create_default_context(cadata=installed.ca_pem)
    raw = socket.create_connection(installed.address, timeout=5)
    return context.wrap_socket(raw, server_hostname=installed.server_name)


def _read_all(sock: ssl.SSLSocket) -> bytes:
    data = b""
    while chunk := sock.recv(65536):
        data += chunk
    return data


def test_oversized_chunked_and_slow_requests_are_cut_off(installed: Installed) -> None:
    size = LIMITS["max_body_bytes"] + 1
    with _raw(installed) as big:
        big.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nContent-Length: %d\r\n\r\n" % size)
        assert _read_all(big).startswith(b"HTTP/1.1 413 ")  # before the body, then closed
    with _raw(installed) as chunked:
        chunked.sendall(b"POST /mutate HTTP/1.1\r\nHost: x\r\nTransfer-Encoding: chunked\r\n\r\n")
        assert _read_all(chunked).startswith(b"HTTP/1.1 411 ")
    with _raw(installed) as slow:
        start = time.monotonic()
        slow.sendall(b"POST /mutate HTTP/1.1\r\n")  # and never the rest of the head
        assert _read_all(slow) == b""
        assert time.monotonic() - start < 4 * LIMITS["header_timeout_s"]


def test_connections_beyond_the_limit_are_closed_at_once(installed: Installed) -> None:
    held = [_raw(installed) for _ in range(int(LIMITS["max_connections"]))]
    try:
        with _raw(installed) as extra:  # the handshake completes; then the server closes it
            extra.settimeout(3)
            assert _read_all(extra) == b""
    finally:
        for sock in held:
            sock.close()
    time.sleep(0.2)  # let the server see the closes
    conn = installed.connect()
    assert _admit(conn, deployment_pod())[0]["allowed"] is True
    conn.close()


# -- hot reload (last: it changes the module's webhook) -----------------------------------------


def test_config_and_certificate_changes_reload_without_a_restart(installed: Installed) -> None:
    process = installed.webhook
    conn = installed.connect()
    new = dict(process.config, proxy="http://egress-v2.egressgate.svc.cluster.local:3128")
    mark = len(process.json_events())
    process.write_config(new)  # no signal: the file watch notices it
    process.wait_for_event("reloaded", 10, after=mark)
    _, patched = _admit(conn, deployment_pod())  # the same keep-alive connection
    assert _env(patched["spec"]["containers"][0])["HTTP_PROXY"] == new["proxy"]
    mark = process.reload(dict(new, proxy="no-scheme:3128"))  # SIGHUP: no wait for the poll
    failed = process.wait_for_event("reload-failed", 10, after=mark)
    assert "no scheme" in " ".join(failed["problems"])
    _, patched = _admit(conn, deployment_pod())
    assert _env(patched["spec"]["containers"][0])["HTTP_PROXY"] == new["proxy"]  # kept
    conn.close()
    # A renewed serving pair (as cert-manager renews it in place): new handshakes use it.
    ca_file = installed.workdir / "ca-2.crt"
    certs = _egressgate("k8s", "certs", "--ca-out", str(ca_file))
    (secret,) = _documents(certs.stdout)
    mark = len(process.json_events())
    for name in ("tls.key", "tls.crt"):
        target = installed.workdir / name
        target.with_suffix(".new").write_bytes(base64.b64decode(secret["data"][name]))
        target.with_suffix(".new").replace(target)
    process.wait_for_event("certificate-reloaded", 10, after=mark)
    conn = installed.connect(ca_file.read_text())
    assert _admit(conn, deployment_pod())[0]["allowed"] is True
    conn.close()
    with pytest.raises(ssl.SSLCertVerificationError):
        installed.connect()  # the old CA no longer verifies the webhook
