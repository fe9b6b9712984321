"""The extender against a real kube-apiserver: watch, bind, restart, concurrent binds."""

from __future__ import annotations

import copy
import json
from concurrent.futures import ThreadPoolExecutor

import pytest
import yaml

from tests.e2e.conftest import EXAMPLE, ROOT, TOKEN, Extender, planned_event

PLAN = "gpu-extender.io/plan"
SHARE = "gpu-extender.io/gpu-milli"
TP4 = yaml.safe_load((ROOT / "examples" / "pods" / "llama70b-tp4-latency-critical.yaml").read_text())


@pytest.fixture(scope="module")
def cluster(plane, tmp_path_factory):
    """The bundled example cluster, loaded into the API server; the extender serving it."""
    for item in EXAMPLE:
        if item["kind"] == "Node":
            plane.node(item)
    for item in EXAMPLE:
        if item["kind"] == "Pod":
            plane.pod(item)
    extender = Extender(plane, tmp_path_factory.mktemp("extender") / "serve.log")
    yield plane, extender
    extender.kill()


def bind(extender: Extender, pod, node: str) -> str:
    return extender.http.post("/bind", json={"PodName": pod.metadata.name, "PodNamespace": pod.metadata.namespace,
                                             "PodUID": pod.metadata.uid, "Node": node}).json()["Error"]


def test_filter_prioritize_bind_and_restart(cluster):
    plane, extender = cluster
    created = plane.pod(TP4)
    names = [n["metadata"]["name"] for n in EXAMPLE if n["kind"] == "Node"]
    pod = plane.core.api_client.sanitize_for_serialization(created)
    kept = extender.http.post("/filter", json={"Pod": pod, "Nodes": None, "NodeNames": names}).json()["NodeNames"]
    scores = extender.http.post("/prioritize", json={"Pod": pod, "Nodes": None, "NodeNames": kept}).json()
    best = max(scores, key=lambda s: s["Score"])["Host"]
    assert best == "h100-inf-01"  # the node that caches the model, as `gpu-extender score` ranks it
    assert bind(extender, created, best) == ""
    bound = plane.core.read_namespaced_pod(created.metadata.name, created.metadata.namespace)
    assert bound.spec.node_name == best
    plan = json.loads(bound.metadata.annotations[PLAN])
    assert plan["node"] == best and plan["gpus"] == [4, 5, 6, 7] and len(plan["uuids"]) == 4
    assert json.loads(bound.metadata.annotations["gpu-extender.io/score"])["signals"]["topology"] == 1.0
    assert best in planned_event(plane.core, created).message
    assert bind(extender, created, best) == ""  # binding again to the same node is a success
    # A restarted extender knows the plan from the pod: the node has no 4 free GPUs left.
    extender.kill()
    extender.start()
    again = copy.deepcopy(pod)
    again["metadata"]["name"] = "llama70b-chat-1"
    answer = extender.http.post("/filter", json={"Pod": again, "Nodes": None,
                                                 "NodeNames": ["h100-inf-01", "h100-inf-02"]}).json()
    assert answer["NodeNames"] == ["h100-inf-02"] and "h100-inf-01" in answer["FailedNodes"]
    log = extender.log.read_text()
    assert "bound inference/llama70b-chat-0 to h100-inf-01" in log and TOKEN not in log  # no credentials logged


def share_pod_body(name: str, milli: int) -> dict:
    body = copy.deepcopy(TP4)
    body["metadata"] = {"name": name, "namespace": "race"}
    body["spec"]["containers"][0]["resources"]["limits"] = {SHARE: str(milli)}
    return body


def test_concurrent_binds_never_hand_out_a_device_twice(cluster):
    plane, extender = cluster
    pods = []
    for i in range(100):
        whole = copy.deepcopy(TP4)
        whole["metadata"] = {"name": f"race-gpu-{i}", "namespace": "race"}
        whole["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/gpu": "1"}
        mig = copy.deepcopy(whole)
        mig["metadata"]["name"] = f"race-mig-{i}"
        mig["spec"]["containers"][0]["resources"]["limits"] = {"nvidia.com/mig-1g.10gb": "1"}
        share = share_pod_body(f"race-share-{i}", 300)
        pods += [(plane.pod(whole), "a100-nv4-01"), (plane.pod(mig), "h100-mig-01"), (plane.pod(share), "l40s-pcie-01")]
    with ThreadPoolExecutor(32) as pool:
        errors = list(pool.map(lambda job: bind(extender, *job), pods))
    won = [pod for (pod, _), error in zip(pods, errors) if error == ""]
    # a100-nv4-01 has 4 free GPUs; h100-mig-01 has 3 idle 1g.10gb instances (GPU0@6, GPU1@6, GPU2@1);
    # l40s-pcie-01 has 4 free GPUs (1, 3, 5, 7), each with room for three 300-milli shares.
    assert sum(1 for p in won if p.metadata.name.startswith("race-gpu")) == 4
    assert sum(1 for p in won if p.metadata.name.startswith("race-mig")) == 3
    assert sum(1 for p in won if p.metadata.name.startswith("race-share")) == 12
    assert all("no longer fits" in e for e in errors if e)
    held_gpus, held_slots, shared = [], [], {}
    for pod in plane.core.list_pod_for_all_namespaces().items:
        plan = json.loads((pod.metadata.annotations or {}).get(PLAN, "null") or "null")
        if plan and pod.spec.node_name == "a100-nv4-01":
            held_gpus += plan["gpus"]
        if plan and pod.spec.node_name == "h100-mig-01":
            held_slots += [(s["gpu"], s["start"]) for s in plan["mig"]]
        if plan and pod.spec.node_name == "l40s-pcie-01" and "share" in plan:
            shared[plan["share"]["gpu"]] = shared.get(plan["share"]["gpu"], 0) + plan["share"]["milli"]
    assert len(held_gpus) == len(set(held_gpus)) == 4
    assert len(held_slots) == len(set(held_slots))
    assert {(0, 6), (1, 6), (2, 1)} <= set(held_slots)
    assert shared == {1: 900, 3: 900, 5: 900, 7: 900}  # never more than 1000 on one GPU, none on a whole one
    # A restarted extender rebuilds the shares from the plan annotations: 100 milli fit beside them, 200 not.
    extender.kill()
    extender.start()
    names = ["l40s-pcie-01"]
    for milli, fits in ((100, True), (200, False)):
        probe = plane.core.api_client.sanitize_for_serialization(plane.pod(share_pod_body(f"probe-{milli}", milli)))
        answer = extender.http.post("/filter", json={"Pod": probe, "Nodes": None, "NodeNames": names}).json()
        assert (answer["NodeNames"] == names) is fits, answer
        if not fits:
            assert answer["FailedNodes"] == {"l40s-pcie-01": "gpu-extender: no GPU with enough free share"}
