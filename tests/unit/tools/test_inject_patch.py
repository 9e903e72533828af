"""The injection webhook's decisions (tools/inject_patch.py), on Pods as controllers create them.

Every patch is applied with a real JSON Patch library (jsonpatch, RFC 6902); the webhook's
integration test (tests/integration/test_inject_webhook.py) does the same over HTTPS and
validates the result with kubernetes-validate --strict.
"""

from __future__ import annotations

import base64
import copy
import json
from typing import Any

import jsonpatch
import pytest
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from egressgate.tools import inject_patch, proxy_env
from egressgate.tools.inject_patch import (
    INJECTED_ANNOTATION,
    OVERRIDE_ANNOTATION,
    SKIPPED_ANNOTATION,
    BadReview,
    InjectConfigError,
    decide,
    parse_settings,
)
from egressgate.tools.k8s_sidecar import sidecar_spec
from tests.support.admission import container, deployment_pod, pod_shapes, review

PROXY = "http://egressgate.egressgate.svc.cluster.local:3128"
SOCKS = "socks5h://egressgate.egressgate.svc.cluster.local:1080"
CONFIG = f"""\
proxy: {PROXY}
socks: {SOCKS}
cluster_cidrs: [10.96.0.0/12, 10.244.0.0/16]
no_proxy: [10.0.0.1]
transparent:
  image: registry.example/egressgate:1
  config_map: egressgate-sidecar-config
  admin_port: 9090
"""
SETTINGS = parse_settings(CONFIG)
EXPECTED = (
    proxy_env.build_env(PROXY, ["10.0.0.1"], ["10.96.0.0/12", "10.244.0.0/16"])
    .with_socks(proxy_env.parse_socks_url(SOCKS)[0])
    .as_dict()
)


def _apply(pod: dict[str, Any], mode: str | None = "explicit") -> tuple[dict[str, Any], Any]:
    decision = decide(copy.deepcopy(pod), mode, SETTINGS)
    patched = jsonpatch.apply_patch(pod, decision.patch) if decision.patch else pod
    return patched, decision


def _env(c: dict[str, Any]) -> dict[str, Any]:
    return {e["name"]: e.get("value", e.get("valueFrom")) for e in c.get("env", [])}


def _all_containers(pod: dict[str, Any]) -> list[dict[str, Any]]:
    return [*pod["spec"].get("initContainers", []), *pod["spec"]["containers"]]


# -- settings ---------------------------------------------------------------------------------


def test_no_proxy_and_java_are_exactly_what_egressgate_env_builds() -> None:
    assert dict(SETTINGS.variables) | {"JAVA_TOOL_OPTIONS": SETTINGS.java_options} == EXPECTED
    assert "ALL_PROXY" in EXPECTED
    assert "all_proxy" in EXPECTED


def test_every_config_problem_is_listed_at_once() -> None:
    text = (
        "proxy: egressgate:3128\nsurprise: 1\nlimits: {max_body_bytes: -1, nope: 2}\n"
        "transparent: {image: 'a b', admin_port: 70000}\njava: maybe\n"
    )
    with pytest.raises(InjectConfigError) as info:
        parse_settings(text, "inject.yaml")
    problems = "\n".join(info.value.problems)
    for expected in (
        "unknown key 'surprise'",
        "has no scheme",
        "limits.max_body_bytes",
        "limits: unknown key 'nope'",
        "transparent.image",
        "transparent.admin_port",
        "java: true or false",
    ):
        assert expected in problems
    with pytest.raises(InjectConfigError, match="required"):
        parse_settings("socks: null\n")
    with pytest.raises(InjectConfigError, match="not valid YAML"):
        parse_settings("proxy: [\n")


def test_a_dollar_in_the_proxy_url_is_escaped_for_kubernetes_expansion() -> None:
    settings = parse_settings("proxy: http://u$er:pa$s@egressgate:3128\n")
    assert dict(settings.variables)["HTTP_PROXY"] == "http://u$$er:pa$$s@egressgate:3128"


# -- explicit ---------------------------------------------------------------------------------


@pytest.mark.parametrize("shape", sorted(pod_shapes()))
def test_every_container_gets_the_variables_or_keeps_its_own(shape: str) -> None:
    pod = pod_shapes()[shape]
    patched, decision = _apply(pod)
    assert decision.warnings == []
    assert patched["metadata"]["annotations"][INJECTED_ANNOTATION] == "explicit"
    for c in _all_containers(patched):
        env = _env(c)
        for name, value in EXPECTED.items():
            assert name in env or name == "http_proxy", (shape, c["name"], name)
            if name not in ("JAVA_TOOL_OPTIONS", "HTTP_PROXY", "http_proxy"):
                assert env[name] == value
    assert pod == pod_shapes()[shape]  # the input is never modified


def test_a_pod_with_init_and_several_containers_gets_them_all() -> None:
    pod = deployment_pod(
        containers=[container("web"), container("sidecar")],
        init_containers=[container("migrate"), container("warm")],
    )
    patched, _ = _apply(pod)
    assert [c["name"] for c in _all_containers(patched)] == ["migrate", "warm", "web", "sidecar"]
    assert all(_env(c)["HTTPS_PROXY"] == PROXY for c in _all_containers(patched))


def test_existing_variables_are_left_alone_and_listed() -> None:
    patched, decision = _apply(pod_shapes()["existing-env-and-java"])
    (api,) = patched["spec"]["containers"]
    env = _env(api)
    assert env["HTTP_PROXY"] == "http://team-proxy.example:8080"
    assert "http_proxy" not in env  # never two values for one setting (runtimes would disagree)
    assert env["HTTPS_PROXY"] == env["https_proxy"] == PROXY
    assert env["LOG_LEVEL"] == "debug"
    # Appended, never replaced: the JVM flags the app had come first.
    assert env["JAVA_TOOL_OPTIONS"] == "-Xmx512m -XX:+UseG1GC " + EXPECTED["JAVA_TOOL_OPTIONS"]
    assert patched["metadata"]["annotations"][SKIPPED_ANNOTATION] == "api: HTTP_PROXY, http_proxy"
    assert decision.skipped == "api: HTTP_PROXY, http_proxy"


def test_the_override_annotation_replaces_what_it_names_in_both_cases() -> None:
    pod = pod_shapes()["existing-env-and-java"]
    pod["metadata"]["annotations"] = {OVERRIDE_ANNOTATION: "http_proxy"}
    patched, _ = _apply(pod)
    env = _env(patched["spec"]["containers"][0])
    assert env["HTTP_PROXY"] == env["http_proxy"] == PROXY
    assert SKIPPED_ANNOTATION not in patched["metadata"]["annotations"]


def test_java_options_with_their_own_proxy_are_kept_unless_overridden() -> None:
    own = "-Dhttps.proxyHost=corp-proxy -Dhttps.proxyPort=8080"
    pod = deployment_pod(
        containers=[container("jvm", env=[{"name": "JAVA_TOOL_OPTIONS", "value": own}])]
    )
    patched, decision = _apply(pod)
    assert _env(patched["spec"]["containers"][0])["JAVA_TOOL_OPTIONS"] == own
    assert "JAVA_TOOL_OPTIONS (has proxy properties)" in decision.skipped
    pod["metadata"]["annotations"] = {OVERRIDE_ANNOTATION: "true"}
    patched, _ = _apply(pod)
    value = _env(patched["spec"]["containers"][0])["JAVA_TOOL_OPTIONS"]
    assert value == f"{own} {EXPECTED['JAVA_TOOL_OPTIONS']}"  # ours last: the JVM's last -D wins


def test_java_options_from_a_reference_cannot_be_appended_to_and_say_so() -> None:
    patched, decision = _apply(pod_shapes()["java-from-secret"])
    env = _env(patched["spec"]["containers"][0])
    assert env["JAVA_TOOL_OPTIONS"] == {"configMapKeyRef": {"name": "jvm", "key": "opts"}}
    assert decision.skipped == "jvm: JAVA_TOOL_OPTIONS (valueFrom)"


def test_env_from_is_kept_and_the_injected_values_win_over_it() -> None:
    patched, _ = _apply(pod_shapes()["env-from"])
    (worker,) = patched["spec"]["containers"]
    assert worker["envFrom"] == pod_shapes()["env-from"]["spec"]["containers"][0]["envFrom"]
    assert _env(worker)["NO_PROXY"] == EXPECTED["NO_PROXY"]


# -- opt-in, idempotence, refusals --------------------------------------------------------------


def test_already_injected_pods_are_not_patched_again() -> None:
    patched, _ = _apply(deployment_pod())
    again = decide(patched, "explicit", SETTINGS)
    assert again.patch == []
    assert again.warnings == []


@pytest.mark.parametrize(
    ("namespace", "labels", "annotations", "expected"),
    [
        ("explicit", {}, {}, "explicit"),
        ("explicit", {}, {"egressgate.io/inject": "disabled"}, None),
        ("explicit", {"egressgate.io/inject": "disabled"}, {}, None),
        ("explicit", {}, {"egressgate.io/inject": "transparent"}, "transparent"),
        ("transparent", {}, {"egressgate.io/inject": "explicit"}, "explicit"),
        (None, {"egressgate.io/inject": "explicit"}, {}, "explicit"),
        (None, {"egressgate.io/inject": "explicit"}, {"egressgate.io/inject": "disabled"}, None),
        (None, {}, {}, None),
    ],
)
def test_the_pod_annotation_overrides_its_label_which_overrides_the_namespace(
    namespace: str | None, labels: dict[str, str], annotations: dict[str, str], expected: str | None
) -> None:
    pod = deployment_pod(labels=labels, annotations=annotations)
    decision = decide(pod, namespace, SETTINGS)
    assert decision.mode == expected
    assert bool(decision.patch) is (expected is not None)
    assert decision.warnings == []


GARBAGE: list[Any] = [
    None,
    [],
    "pod",
    {"metadata": "x", "spec": {"containers": []}},
    {"metadata": {"annotations": {"a": 1}}, "spec": {}},
    {"metadata": {}, "spec": {"containers": "web"}},
    {"metadata": {}, "spec": {"containers": [{"name": "a", "env": {"HTTP_PROXY": "x"}}]}},
    {"metadata": {}, "spec": {"containers": [{"name": "a", "env": [{"value": "no name"}]}]}},
    {"metadata": {}, "spec": {"containers": []}},
    {"metadata": {}},
]


@pytest.mark.parametrize("pod", GARBAGE)
def test_what_cannot_be_understood_is_admitted_unchanged_with_a_warning(pod: Any) -> None:
    decision = decide(pod, "explicit", SETTINGS)
    assert decision.patch == []
    assert len(decision.warnings) == 1
    assert decision.warnings[0].startswith("egressgate-inject: pod left unchanged")


def test_an_unknown_mode_is_a_warning_not_a_guess() -> None:
    decision = decide(deployment_pod(annotations={"egressgate.io/inject": "yes"}), None, SETTINGS)
    assert decision.patch == []
    assert "'yes' is not one of explicit, transparent, disabled" in decision.warnings[0]


# -- transparent --------------------------------------------------------------------------------


def test_transparent_adds_the_sidecar_of_k8s_render_mode_transparent() -> None:
    pod = deployment_pod(init_containers=[container("migrate")])
    patched, decision = _apply(pod, "transparent")
    assert decision.mode == "transparent"
    parts = sidecar_spec(
        "registry.example/egressgate:1",
        "registry.example/egressgate:1",
        "egressgate-sidecar-config",
        9090,
    )
    spec = patched["spec"]
    assert spec["initContainers"] == [*parts["initContainers"], container("migrate")]
    assert spec["containers"][1:] == parts["containers"]
    assert spec["volumes"] == parts["volumes"]
    assert "env" not in spec["containers"][0]  # no proxy variables: the redirect does it


def test_transparent_refuses_name_clashes_and_a_missing_configuration() -> None:
    pod = deployment_pod(containers=[container("egressgate")])
    decision = decide(pod, "transparent", SETTINGS)
    assert decision.patch == []
    assert "already has a container or volume named egressgate" in decision.warnings[0]
    bare = parse_settings(f"proxy: {PROXY}\n")
    decision = decide(deployment_pod(), "transparent", bare)
    assert "transparent mode is not configured" in decision.warnings[0]


# -- the envelope -------------------------------------------------------------------------------


def test_the_response_echoes_the_uid_and_carries_a_base64_json_patch() -> None:
    doc = review(deployment_pod())
    request = inject_patch.read_request(doc)
    decision = inject_patch.decide_request(request, "explicit", SETTINGS)
    answer = inject_patch.admission_response(request, decision)
    response = answer["response"]
    assert answer["apiVersion"] == "admission.k8s.io/v1"
    assert response["uid"] == doc["request"]["uid"]
    assert response["allowed"] is True
    assert response["patchType"] == "JSONPatch"
    assert json.loads(base64.b64decode(response["patch"])) == decision.patch


def test_requests_other_than_pod_create_are_left_alone() -> None:
    doc = review(deployment_pod(), operation="UPDATE")
    decision = inject_patch.decide_request(doc["request"], "explicit", SETTINGS)
    assert decision.patch == []
    assert "only Pod CREATE" in decision.warnings[0]


@pytest.mark.parametrize(
    "doc",
    [
        [],
        {"apiVersion": "admission.k8s.io/v1beta1", "kind": "AdmissionReview", "request": {}},
        {"apiVersion": "admission.k8s.io/v1", "kind": "AdmissionReview", "request": {"uid": 7}},
    ],
)
def test_documents_without_a_request_uid_are_bad_reviews(doc: Any) -> None:
    with pytest.raises(BadReview):
        inject_patch.read_request(doc)


def test_paths() -> None:
    assert inject_patch.mode_for_path("/mutate") is None
    assert inject_patch.mode_for_path("/mutate/explicit") == "explicit"
    assert inject_patch.mode_for_path("/mutate/transparent") == "transparent"
    assert inject_patch.mode_for_path("/mutate/disabled") is False
    assert inject_patch.mode_for_path("/other") is False


# -- property: anything pod-ish never crashes the builder and its patch always applies -----------

_json = st.recursive(
    st.none() | st.booleans() | st.integers() | st.text(max_size=8),
    lambda inner: (
        st.lists(inner, max_size=3) | st.dictionaries(st.text(max_size=6), inner, max_size=3)
    ),
    max_leaves=12,
)
_names = st.sampled_from(
    ["HTTP_PROXY", "http_proxy", "NO_PROXY", "JAVA_TOOL_OPTIONS", "ALL_PROXY", "X", "egressgate"]
)
_env_entry = st.one_of(
    st.fixed_dictionaries({"name": _names, "value": st.text(max_size=20)}),
    st.fixed_dictionaries({"name": _names, "valueFrom": _json}),
    st.fixed_dictionaries({"name": _names}),
    _json,
)
_container = st.fixed_dictionaries(
    {"name": st.one_of(_names, st.text(max_size=5))},
    optional={"env": st.one_of(st.lists(_env_entry, max_size=4), _json), "envFrom": _json},
)
_inject_values = st.sampled_from(["explicit", "transparent", "disabled", "", "bogus"])
_string_map = st.dictionaries(
    st.sampled_from(["egressgate.io/inject", INJECTED_ANNOTATION, OVERRIDE_ANNOTATION, "a/b~c"]),
    st.one_of(_inject_values, st.sampled_from(["true", "HTTP_PROXY,NO_PROXY"])),
    max_size=3,
)
_metadata = st.one_of(
    st.fixed_dictionaries({}, optional={"annotations": _string_map, "labels": _string_map}),
    _json,
)
_spec = st.fixed_dictionaries(
    {"containers": st.one_of(st.lists(_container, max_size=3), _json)},
    optional={
        "initContainers": st.one_of(st.lists(_container, max_size=2), _json),
        "volumes": st.one_of(
            st.lists(st.fixed_dictionaries({"name": st.text(max_size=20)}), max_size=2), _json
        ),
    },
)
# Mostly pods (metadata and spec each present, absent, null or junk), sometimes any JSON at all.
_pod = st.one_of(
    st.fixed_dictionaries({"spec": _spec}, optional={"metadata": _metadata}),
    st.fixed_dictionaries({}, optional={"metadata": _metadata, "spec": st.one_of(_spec, _json)}),
    _json,
)


@settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])
@given(pod=_pod, mode=st.sampled_from([None, "explicit", "transparent"]))
def test_any_pod_like_json_never_crashes_and_the_patch_always_applies(pod: Any, mode: Any) -> None:
    decision = decide(pod, mode, SETTINGS)
    assert not any("internal error" in w for w in decision.warnings), decision.warnings
    if decision.patch:
        patched = jsonpatch.apply_patch(pod, decision.patch)
        assert patched["metadata"]["annotations"][INJECTED_ANNOTATION] == decision.mode
        assert decide(patched, mode, SETTINGS).patch == []  # idempotent
