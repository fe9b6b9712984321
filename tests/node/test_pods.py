"""The pods of a node as admission sees them (extender/node/pods.py): which plans the node cannot
follow and the one Event each such pod gets while it waits, and a fresh list that never revives
a pod the watch saw go."""

from __future__ import annotations

import json

from extender import annotations as ann
from extender.node import nvml
from extender.node.devices import Catalog
from extender.node.pods import NodePods, pod_on_node
from tests.agent import machines

CATALOG = Catalog(nvml.read_inventory(machines.hgx_h100(mig={0: [("3g.40gb", 0)]})), "gpu-extender.io/gpu-milli")
GPU = [machines.uuid("h100", i) for i in range(8)]


def pod(name: str, plan: dict | str | None, limits: dict, **status) -> dict:
    notes = {} if plan is None else {ann.PLAN: plan if isinstance(plan, str) else json.dumps(plan)}
    return {"metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}", "annotations": notes,
                         "creationTimestamp": "2026-12-05T00:00:00Z"},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {"limits": limits}}]},
            "status": status}


def event(p: dict) -> tuple[str, str]:
    _, reason, message = pod_on_node(p, "n1", CATALOG)
    return reason, message


def test_plans_the_node_cannot_follow_and_why():
    gpu = {"nvidia.com/gpu": "1"}
    assert event(pod("ok", {"node": "n1", "gpus": [3], "uuids": [GPU[3]]}, gpu)) == ("", "")
    assert event(pod("none", None, gpu))[0] == "GPUPlanMissing"
    assert event(pod("garbled", "{", gpu))[0] == "GPUPlanUnreadable"
    assert event(pod("elsewhere", {"node": "n2", "gpus": [3]}, gpu))[0] == "GPUPlanUnreadable"
    for plan, says in (({"node": "n1", "gpus": [9]}, "GPU 9"),
                       ({"node": "n1", "gpus": [0]}, "GPU 0"),  # in MIG mode
                       ({"node": "n1", "gpus": [3], "uuids": ["GPU-old"]}, "GPU-old"),
                       ({"node": "n1", "share": {"gpu": 2, "milli": 100, "gpuUuid": "GPU-old"}}, "GPU-old"),
                       ({"node": "n1", "mig": [{"gpu": 0, "profile": "3g.40gb", "start": 4}]}, "slice 4")):
        reason, message = event(pod("stale", plan, gpu))
        assert reason == "GPUPlanStale" and says in message, (plan, message)
    assert event(pod("cpu", None, {"cpu": "1"})) == ("", "")  # asks for nothing of ours


def test_one_event_per_waiting_pod_none_for_pods_already_running_and_no_revival_by_a_stale_list():
    reports, published = [], []
    pods = NodePods("n1", CATALOG, published.append, lambda p, reason, _: reports.append((p["metadata"]["name"], reason)))
    gpu = {"nvidia.com/gpu": "1"}
    running = pod("running", None, gpu, startTime="2026-12-05T00:00:01Z")
    waiting = pod("waiting", None, gpu)
    pods.replace([running, waiting])
    pods.event("MODIFIED", waiting)
    assert reports == [("waiting", "GPUPlanMissing")]
    assert {p.key: p.admitted for p in published[-1]} == {"ns/running": True, "ns/waiting": False}
    pods.event("DELETED", waiting)
    pods.merge([running, waiting, pod("late", None, gpu)])  # a list taken before the deletion
    assert sorted(p.key for p in published[-1]) == ["ns/late", "ns/running"]
    pods.active = False
    pods.event("ADDED", pod("after", None, gpu))
    assert sorted(p.key for p in published[-1]) == ["ns/late", "ns/running"]  # a replaced one stays silent
