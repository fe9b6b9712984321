"""The extender wire contract over real HTTP, against the reference payloads."""

from __future__ import annotations

import json

import pytest
import yaml
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from tests.webhook.conftest import ROOT, golden

FILTER_KEYS = {"Nodes", "NodeNames", "FailedNodes", "FailedAndUnresolvableNodes", "Error"}


def names_of(request: dict) -> list[str]:
    if request["NodeNames"] is not None:
        return request["NodeNames"]
    return [n["metadata"]["name"] for n in request["Nodes"]["items"]]


def check_filter(request: dict, answer: dict) -> None:
    assert set(answer) == FILTER_KEYS
    assert answer["Error"] == ""
    sent = names_of(request)
    kept = answer["NodeNames"] if request["NodeNames"] is not None else [
        n["metadata"]["name"] for n in answer["Nodes"]["items"]]
    assert set(kept) <= set(sent)
    rejected = set(answer["FailedNodes"]) | set(answer["FailedAndUnresolvableNodes"])
    assert set(kept) | rejected == set(sent) and not set(kept) & rejected
    assert all(isinstance(v, str) and v for v in {**answer["FailedNodes"], **answer["FailedAndUnresolvableNodes"]}.values())


@pytest.mark.parametrize("mode", ["nodecache-true", "nodecache-false"])
def test_filter_golden(golden_server, mode):
    request = golden(f"filter-request.{mode}.json")
    response = golden_server.post("filter", request)
    assert response.status_code == 200
    answer = response.json()
    check_filter(request, answer)
    if mode == "nodecache-true":
        assert answer["Nodes"] is None and answer["NodeNames"] is not None
    else:
        # nodeCacheCapable false: the answer must carry Node objects, exactly as they were sent.
        assert answer["NodeNames"] is None
        sent = {n["metadata"]["name"]: n for n in request["Nodes"]["items"]}
        for node in answer["Nodes"]["items"]:
            assert node == sent[node["metadata"]["name"]]
    # The reference pod wants 1 GPU and one 1g.10gb slice; both empty nodes have them.
    assert sorted(answer["NodeNames"] or [n["metadata"]["name"] for n in answer["Nodes"]["items"]]) == [
        "gpu-a100-0", "gpu-a100-1"]


@pytest.mark.parametrize("mode", ["nodecache-true", "nodecache-false"])
def test_prioritize_golden(golden_server, mode):
    request = golden(f"prioritize-request.{mode}.json")
    response = golden_server.post("prioritize", request)
    assert response.status_code == 200
    answer = response.json()
    reference = golden("prioritize-response.json")
    assert isinstance(answer, list) and isinstance(reference, list)
    assert [set(item) for item in answer] == [set(reference[0])] * len(answer)
    # Every candidate once; kube-scheduler reads the list into a map, so order does not matter.
    assert sorted(item["Host"] for item in answer) == sorted(names_of(request))
    assert all(type(item["Score"]) is int and 0 <= item["Score"] <= 10 for item in answer)
    assert b"." not in response.content.split(b'"Score":')[1][:3]  # integers, never 8.0


def test_bind_golden_without_api_server_is_a_clear_error(golden_server):
    response = golden_server.post("bind", golden("bind-request.json"))
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == set(golden("bind-response.error.json")) == {"Error"}
    assert "live cluster" in answer["Error"]


@pytest.mark.parametrize("mode", ["nodecache-true", "nodecache-false"])
def test_preempt_golden(golden_server, mode):
    request = golden(f"preempt-request.{mode}.json")
    response = golden_server.post("preempt", request)
    assert response.status_code == 200
    answer = response.json()
    assert set(answer) == set(golden("preempt-response.json")) == {"NodeNameToMetaVictims"}
    if mode == "nodecache-true":
        candidates = {n: {p["UID"] for p in v["Pods"]} for n, v in request["NodeNameToMetaVictims"].items()}
    else:
        candidates = {n: {p["metadata"]["uid"] for p in v["Pods"]} for n, v in request["NodeNameToVictims"].items()}
    for node, victims in answer["NodeNameToMetaVictims"].items():
        assert set(victims) == {"Pods", "NumPDBViolations"}
        assert {p["UID"] for p in victims["Pods"]} <= candidates[node]
        assert type(victims["NumPDBViolations"]) is int


VERBS = ["filter", "prioritize", "bind", "preempt"]


def assert_clear_rejection(verb: str, response) -> None:
    assert response.status_code == 200
    answer = response.json()
    if verb in ("filter", "bind"):
        assert answer["Error"].startswith("gpu-extender: ")
    elif verb == "prioritize":
        assert answer == []
    else:
        assert answer == {"NodeNameToMetaVictims": {}}


@pytest.mark.parametrize("verb", VERBS)
@pytest.mark.parametrize("body", [b"", b"{", b"null", b"[]", b'{"Pod": 3}', b"\xff\xfe", b'{"Pod": {}, "NodeNames": 7}'])
def test_malformed_bodies_get_a_clear_answer(golden_server, verb, body):
    assert_clear_rejection(verb, golden_server.post(verb, body))


def test_pod_without_gpu_request_is_an_error(golden_server):
    request = golden("filter-request.nodecache-true.json")
    for container in request["Pod"]["spec"]["containers"]:
        container["resources"] = {"limits": {"cpu": "1"}}
    answer = golden_server.post("filter", request).json()
    assert "requests no nvidia.com/gpu" in answer["Error"]


json_values = st.recursive(
    st.none() | st.booleans() | st.integers() | st.floats(allow_nan=False) | st.text(max_size=8),
    lambda children: st.lists(children, max_size=4) | st.dictionaries(st.text(max_size=8), children, max_size=4),
    max_leaves=20,
)
pod_like = st.fixed_dictionaries({}, optional={
    "metadata": st.dictionaries(st.sampled_from(["name", "namespace", "uid", "annotations"]), json_values),
    "spec": st.dictionaries(st.sampled_from(["containers", "priority", "initContainers"]), json_values),
})
args_like = st.fixed_dictionaries({}, optional={
    "Pod": pod_like | json_values, "NodeNames": st.lists(st.text(max_size=8)) | json_values,
    "Nodes": json_values, "PodName": json_values, "PodNamespace": json_values, "PodUID": json_values,
    "Node": json_values, "NodeNameToMetaVictims": json_values, "NodeNameToVictims": json_values,
})


@settings(max_examples=400, deadline=None, suppress_health_check=[HealthCheck.function_scoped_fixture])
@given(verb=st.sampled_from(VERBS), body=args_like)
def test_fuzzed_bodies_never_fail_the_server(golden_server, verb, body):
    response = golden_server.post(verb, json.dumps(body).encode())
    assert response.status_code == 200
    assert "internal error" not in response.text  # every bad input is recognised as such
    assert golden_server.client.get("/healthz").status_code == 200


def test_example_cluster_ranking_over_http(example_server):
    items = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())["items"]
    nodes = [n["metadata"]["name"] for n in items if n["kind"] == "Node"]
    pod = yaml.safe_load((ROOT / "examples" / "pods" / "llama70b-tp4-latency-critical.yaml").read_text())
    filtered = example_server.post("filter", {"Pod": pod, "Nodes": None, "NodeNames": nodes}).json()
    assert "h100-inf-01" in filtered["NodeNames"] and "l40s-pcie-01" in filtered["NodeNames"]
    assert "cpu-01" in filtered["FailedAndUnresolvableNodes"]
    assert "a100-mig-01" in filtered["FailedNodes"]  # capacity held by other pods: preemption could help
    # Four 16 GB T4s cannot hold the 70B model's weights: no eviction would help.
    assert "model does not fit the GPU memory" in filtered["FailedAndUnresolvableNodes"]["t4-legacy-01"]
    scores = {p["Host"]: p["Score"] for p in example_server.post(
        "prioritize", {"Pod": pod, "Nodes": None, "NodeNames": filtered["NodeNames"]}).json()}
    assert scores["h100-inf-01"] == 10 and max(scores, key=scores.get) == "h100-inf-01"
    assert scores["l40s-pcie-01"] <= scores["a100-nv4-01"]  # totals 0.003 apart: not stretched
    explained = example_server.client.get("/explain/inference/llama70b-chat-0")
    assert explained.status_code == 200
    doc = explained.json()
    assert doc["class"] == "latency-critical" and doc["nodes"][0]["node"] == "h100-inf-01"
    assert {n["node"] for n in doc["nodes"]} == set(filtered["NodeNames"])
    unknown = example_server.post("filter", {"Pod": pod, "Nodes": None, "NodeNames": ["ghost-01"]}).json()
    assert unknown["NodeNames"] == [] and "unknown" in unknown["FailedNodes"]["ghost-01"]
    # Rejections carry short messages without per-node figures, so the scheduler's event groups them.
    assert filtered["FailedNodes"]["a100-mig-01"] == "gpu-extender: not enough free GPUs"
    assert filtered["FailedAndUnresolvableNodes"]["cpu-01"] == "gpu-extender: no NVIDIA GPUs"
    assert example_server.client.get("/explain/inference/llama70b-chat-0").json()["unknownNodes"] == ["ghost-01"]
    assert example_server.client.get("/explain/nobody/nothing").status_code == 404


def test_health_readiness_and_metrics(example_server):
    assert example_server.client.get("/healthz").text == "ok"
    assert example_server.client.get("/readyz").status_code == 200
    text = example_server.client.get("/metrics").text
    for name in ("gpu_extender_request_seconds", "gpu_extender_decisions_total", "gpu_extender_bind_failures_total",
                 "gpu_extender_assumed_plans", "gpu_extender_dcgm_data_age_seconds"):
        assert name in text
