"""What bind does with what filter saw: kube-scheduler binds a pod right after filtering it,
sometimes before the extender's pod watch has brought it (bind uses the pod filter was asked
about); and when other pods took the filter-time plan's devices first, /explain and the GPUPlanned
Event show the plan bound, with filter's beside it."""

from __future__ import annotations

import copy
from pathlib import Path

import yaml
from fastapi.testclient import TestClient

from extender.cluster import ClusterView
from extender.webhook.app import create_app
from scoring.config import PolicyConfig

ROOT = Path(__file__).resolve().parents[2]
POD = yaml.safe_load((ROOT / "examples" / "pods" / "finetune-1gpu-batch.yaml").read_text())


class Recording:
    def __init__(self):
        self.bound: list[tuple[str, str, dict]] = []
        self.whys: list[str] = []  # what the GPUPlanned Event would say after "placed the pod on NODE with"

    def bind(self, pod: dict, node: str, plan: dict, breakdown, why: str) -> None:
        self.bound.append((pod["metadata"]["name"], node, plan))
        self.whys.append(why)


def test_a_pod_the_watch_has_not_brought_binds_from_what_filter_was_sent():
    view = ClusterView.from_snapshot(ROOT / "examples" / "cluster.yaml", [], PolicyConfig())
    binder = Recording()
    client = TestClient(create_app(view, binder))
    pod = copy.deepcopy(POD)
    pod["metadata"]["uid"] = "uid-not-watched-yet"
    assert view.pod("uid-not-watched-yet") is None
    nodes = [n.name for n in view.nodes()]
    passed = client.post("/filter", json={"Pod": pod, "Nodes": None, "NodeNames": nodes}).json()["NodeNames"]
    answer = client.post("/bind", json={"PodName": pod["metadata"]["name"], "PodNamespace": pod["metadata"]["namespace"],
                                        "PodUID": "uid-not-watched-yet", "Node": passed[0]}).json()
    assert not answer.get("Error"), answer
    assert [(name, node) for name, node, _ in binder.bound] == [(pod["metadata"]["name"], passed[0])]
    assert view.assumed_count() == 1  # the next pod's filter sees its devices taken


def test_a_pod_neither_watched_nor_filtered_is_a_clear_error():
    view = ClusterView.from_snapshot(ROOT / "examples" / "cluster.yaml", [], PolicyConfig())
    client = TestClient(create_app(view, Recording()))
    answer = client.post("/bind", json={"PodName": "ghost", "PodNamespace": "ns", "PodUID": "u", "Node": "x"}).json()
    assert "not in the cluster view and was not filtered here" in answer["Error"]


def test_explain_and_the_event_show_the_plan_bound_beside_filter_s_when_other_pods_took_it():
    """Two pods filtered before either binds get the same best GPU; the second binds elsewhere."""
    view = ClusterView.from_snapshot(ROOT / "examples" / "cluster.yaml", [], PolicyConfig())
    binder = Recording()
    client = TestClient(create_app(view, binder))
    pods = []
    for i in range(2):
        pod = copy.deepcopy(POD)
        pod["metadata"] |= {"name": f"finetune-{i}", "uid": f"uid-{i}"}
        pods.append(pod)
    node = "h100-train-01"
    for pod in pods:
        client.post("/filter", json={"Pod": pod, "Nodes": None, "NodeNames": [node]})
    for pod in pods:
        assert not client.post("/bind", json={"PodName": pod["metadata"]["name"], "PodUID": pod["metadata"]["uid"],
                                              "PodNamespace": pod["metadata"]["namespace"], "Node": node}).json().get("Error")
    first, second = (client.get(f"/explain/{p['metadata']['namespace']}/{p['metadata']['name']}").json() for p in pods)
    filtered = next(n["plan"] for n in second["nodes"] if n["node"] == node)
    assert "filterTimePlan" not in first["bound"]
    assert second["bound"]["plan"]["gpus"] != filtered["gpus"]
    assert second["bound"]["filterTimePlan"]["gpus"] == filtered["gpus"] == first["bound"]["plan"]["gpus"]
    why = binder.whys[1]
    assert why.startswith(f"GPU {second['bound']['plan']['gpus'][0]} (filter had planned GPU {filtered['gpus'][0]};")
