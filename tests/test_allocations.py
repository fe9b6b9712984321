"""The view counts what the kubelet really allocated (the agent's allocations annotation) instead
of the plan, reports each pod whose devices differ from its plan once, and goes back to the plans
when the agent's data ages out."""

from __future__ import annotations

import json
from datetime import datetime, timezone

from extender import annotations as ann
from extender.cluster import ClusterView
from scoring.config import PolicyConfig

BEAT = datetime(2027, 1, 15, 8, 0, tzinfo=timezone.utc)
CONFIG = PolicyConfig()


def node(allocations: dict | None, fresh: bool = True) -> dict:
    beat = BEAT if fresh else BEAT.replace(year=2020)
    notes = {ann.HEARTBEAT: beat.strftime("%Y-%m-%dT%H:%M:%SZ"),
             ann.TOPOLOGY: json.dumps({
                 "gpus": [{"index": i, "uuid": f"GPU-{i}", "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559,
                           "migEnabled": False} for i in range(8)],
                 "nvlink": [[0 if i == j else 18 for j in range(8)] for i in range(8)],
                 "pcie": [[0] * 8 for _ in range(8)]})}
    if allocations is not None:
        notes[ann.ALLOCATIONS] = json.dumps(allocations)
    return {"kind": "Node", "metadata": {"name": "n1", "labels": {}, "annotations": notes},
            "status": {"allocatable": {"nvidia.com/gpu": "8", "gpu-extender.io/gpu-milli": "8000"}}}


def pod(name: str, gpus: list[int]) -> dict:
    return {"kind": "Pod",
            "metadata": {"name": name, "namespace": "ns", "uid": f"uid-{name}",
                         "annotations": {ann.PLAN: json.dumps({"node": "n1", "gpus": gpus})}},
            "spec": {"nodeName": "n1", "containers": [{"name": "c", "resources": {
                "limits": {"nvidia.com/gpu": str(len(gpus))}}}]},
            "status": {"phase": "Running"}}


def view_of(allocations: dict | None, fresh: bool = True) -> tuple[ClusterView, list]:
    view = ClusterView(CONFIG, clock=lambda: BEAT.timestamp() + 10)
    reported: list = []
    view.mismatch_listeners.append(lambda p, n, what: reported.append((p["metadata"]["name"], n, what)))
    view.replace_all([node(allocations, fresh)], [pod("tp4", [4, 5, 6, 7]), pod("one", [0])])
    return view, reported


def test_without_a_read_back_the_plans_count():
    view, reported = view_of(None)
    assert view.node("n1").usage.gpus == {0, 4, 5, 6, 7}
    assert reported == [] and view.mismatch_count() == 0


def test_the_kubelet_s_devices_replace_the_plan_and_the_difference_is_reported_once():
    view, reported = view_of({"ns/tp4": {"gpus": [0, 1, 2, 3]}, "ns/one": {"gpus": [0]}})
    assert view.node("n1").usage.gpus == {0, 1, 2, 3}
    assert reported == [("tp4", "n1", "planned GPUs 4,5,6,7, the kubelet allocated GPUs 0,1,2,3")]
    view.upsert_pod(pod("tp4", [4, 5, 6, 7]) | {"status": {"phase": "Running", "podIP": "10.0.0.1"}})
    assert len(reported) == 1 and view.mismatch_count() == 1 and view.mismatches_reported == 1
    view.remove_pod("uid-tp4")
    assert view.mismatch_count() == 0


def test_a_pod_the_kubelet_has_not_admitted_yet_counts_by_its_plan():
    view, reported = view_of({"ns/one": {"gpus": [3]}})
    assert view.node("n1").usage.gpus == {3, 4, 5, 6, 7}
    assert [r[0] for r in reported] == ["one"]


def test_a_stale_read_back_is_ignored():
    view, reported = view_of({"ns/tp4": {"gpus": [0, 1, 2, 3]}}, fresh=False)
    assert reported == [] and view.node("n1").usage.gpus == {0, 4, 5, 6, 7}


def test_an_entry_that_cannot_be_read_leaves_that_pod_to_its_plan_only():
    view, _ = view_of({"ns/tp4": {"gpus": [1, 2, 3, 5]}, "ns/one": {"share": {"gpu": 0, "milli": 5000}}})
    assert view.node("n1").usage.gpus == {0, 1, 2, 3, 5}  # one's plan (GPU 0) and tp4's read-back


def test_a_mismatch_that_goes_away_leaves_the_gauge_and_is_not_reported_again():
    view, reported = view_of({"ns/tp4": {"gpus": [0, 1, 2, 3]}})
    assert view.mismatch_count() == 1
    view.upsert_node(node({"ns/tp4": {"gpus": [4, 5, 6, 7]}}))  # the record now agrees with the plan
    assert view.mismatch_count() == 0
    view.upsert_node(node({"ns/tp4": {"gpus": [0, 1, 2, 3]}}))
    assert view.mismatch_count() == 1 and len(reported) == 1 and view.mismatches_reported == 1
