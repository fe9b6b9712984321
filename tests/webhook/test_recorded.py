"""Requests as kube-scheduler sent them in e2e runs (tests/webhook/recorded/, kept current by
tests/e2e/), replayed against the server: filter, prioritize and bind on the example cluster they
were sent for, preempt on the node and pods as they were when it was sent."""

from __future__ import annotations

import json
from pathlib import Path

from tests.webhook.conftest import Server
from tests.webhook.test_contract import check_filter

RECORDED = Path(__file__).resolve().parent / "recorded"


def recorded(verb: str) -> dict:
    return json.loads((RECORDED / f"{verb}-request.json").read_text())


def test_recorded_filter_is_understood(example_server):
    request = recorded("filter")
    assert request["Nodes"] is None and request["NodeNames"]  # nodeCacheCapable: true, as shipped
    answer = example_server.post("filter", request).json()
    check_filter(request, answer)  # every candidate passes or fails with a reason, nothing else
    assert "h100-inf-01" in answer["NodeNames"]  # the pod went there in the recorded run


def test_recorded_prioritize_ranks_the_node_the_pod_was_bound_to_first(example_server):
    request = recorded("prioritize")
    answer = example_server.post("prioritize", request).json()
    assert sorted(p["Host"] for p in answer) == sorted(request["NodeNames"])
    best = max(answer, key=lambda p: p["Score"])
    assert best["Score"] == 10 and best["Host"] == recorded("bind")["Node"]


def test_recorded_bind_without_a_live_cluster_is_a_clear_error(example_server):
    example_server.post("filter", recorded("filter"))  # as kube-scheduler does first: bind knows the pod
    answer = example_server.post("bind", recorded("bind")).json()
    assert set(answer) == {"Error"} and "binding needs a live cluster" in answer["Error"]


PREEMPT_CLUSTER = RECORDED / "preempt-cluster.json"  # the node and its pods as they were at that call


def test_recorded_preempt_gets_the_batch_victims_kube_scheduler_offered(tmp_path):
    request = recorded("preempt")
    offered = {node: {p["UID"] for p in victims["Pods"]} for node, victims in request["NodeNameToMetaVictims"].items()}
    assert request["NodeNameToVictims"] is None and offered  # nodeCacheCapable: UIDs only
    server = Server(PREEMPT_CLUSTER, tmp_path / "serve.log")
    try:
        answer = server.post("preempt", request).json()
    finally:
        server.stop()
    chosen = {node: {p["UID"] for p in victims["Pods"]} for node, victims in answer["NodeNameToMetaVictims"].items()}
    assert chosen == offered  # the latency-critical pod needs both GPUs the two batch pods hold


def test_recorded_preempt_never_offers_latency_critical_victims(tmp_path):
    """The same call on the same cluster, but with the offered victims latency-critical: refused."""
    request = recorded("preempt")
    offered = {p["UID"] for victims in request["NodeNameToMetaVictims"].values() for p in victims["Pods"]}
    cluster = json.loads(PREEMPT_CLUSTER.read_text())
    for item in cluster["items"]:
        if item["metadata"].get("uid") in offered:
            item["metadata"].setdefault("annotations", {})["gpu-extender.io/class"] = "latency-critical"
    changed = tmp_path / "cluster.json"
    changed.write_text(json.dumps(cluster))
    server = Server(changed, tmp_path / "serve.log")
    try:
        answer = server.post("preempt", request).json()
    finally:
        server.stop()
    assert answer == {"NodeNameToMetaVictims": {}}
