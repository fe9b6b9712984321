"""Preemption over HTTP on the bundled example: who may evict whom, and how few."""

from __future__ import annotations

import copy

import pytest
import yaml

from tests.webhook.conftest import ROOT

ITEMS = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())["items"]
PODS = {p["metadata"]["name"]: p for p in ITEMS if p["kind"] == "Pod"}
TP4 = yaml.safe_load((ROOT / "examples" / "pods" / "llama70b-tp4-latency-critical.yaml").read_text())


def uid(name: str) -> str:
    return PODS[name]["metadata"]["uid"]


def on_node(node: str) -> list[str]:
    return [uid(n) for n, p in PODS.items() if p["spec"].get("nodeName") == node]


def preemptor(gpus: int, workload: str, priority: int) -> dict:
    pod = copy.deepcopy(TP4)
    pod["metadata"]["annotations"]["gpu-extender.io/class"] = workload
    pod["metadata"]["annotations"].pop("gpu-extender.io/model")  # victims, not memory fit, are tested here
    pod["spec"]["containers"][0]["resources"]["limits"]["nvidia.com/gpu"] = gpus
    pod["spec"]["priority"] = priority
    return pod


def preempt(server, pod: dict, nodes: list[str]) -> dict:
    request = {"Pod": pod, "NodeNameToVictims": None,
               "NodeNameToMetaVictims": {n: {"Pods": [{"UID": u} for u in on_node(n)], "NumPDBViolations": 0}
                                         for n in nodes}}
    response = server.post("preempt", request)
    assert response.status_code == 200
    return {n: [p["UID"] for p in v["Pods"]] for n, v in response.json()["NodeNameToMetaVictims"].items()}


def test_latency_critical_pod_evicts_batch_pods_only(example_server):
    # 8 GPUs wanted: l40s-pcie-01 has 4 batch pods on 4 GPUs, h100-inf-01 4 latency-critical ones.
    chosen = preempt(example_server, preemptor(8, "latency-critical", 1_000_000), ["l40s-pcie-01", "h100-inf-01"])
    assert "h100-inf-01" not in chosen  # its pods are latency-critical: never victims
    assert sorted(chosen["l40s-pcie-01"]) == sorted(on_node("l40s-pcie-01"))


def test_fewest_victims(example_server):
    # 7 GPUs wanted on the DGX-1V, where one 2-GPU batch pod holds GPUs 4 and 5 (6 free): evict just it.
    chosen = preempt(example_server, preemptor(7, "latency-critical", 1_000_000), ["v100-dgx1-01", "l40s-pcie-01"])
    assert chosen["v100-dgx1-01"] == [uid("resnet-ablation-0")]
    # 7 of 8 GPUs on the L40S server: 4 are free, so 3 of its 4 one-GPU batch pods must go, not all 4.
    assert len(chosen["l40s-pcie-01"]) == 3 and set(chosen["l40s-pcie-01"]) <= set(on_node("l40s-pcie-01"))


def test_batch_pod_never_evicts_latency_critical(example_server):
    chosen = preempt(example_server, preemptor(8, "batch", 500_000), ["h100-inf-01", "l40s-pcie-01"])
    assert "h100-inf-01" not in chosen
    assert sorted(chosen["l40s-pcie-01"]) == sorted(on_node("l40s-pcie-01"))


@pytest.mark.parametrize("priority", [1_000, 10])
def test_equal_or_higher_priority_pods_are_not_victims(example_server, priority):
    # The batch pods on the L40S server have priority 1000.
    chosen = preempt(example_server, preemptor(8, "batch", priority), ["l40s-pcie-01"])
    assert chosen == {}
