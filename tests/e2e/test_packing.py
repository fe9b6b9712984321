"""A burst of one-GPU batch pods packs through the real kube-scheduler and the shipped config,
so that a whole 8-GPU node is left for the 8-GPU pod that follows.

Before the burst the cluster runs two 2-GPU pods and holds a pending 16-GPU pod that no node
can take: with few pods counted, the target workload alone would rather keep pairs of free GPUs
than a whole node, and the pod that fits nowhere must not shape the placement."""

from __future__ import annotations

import json
from collections import Counter

import pytest

from tests.e2e.conftest import Stack, nvlink_node, wait_bound, wait_until

NODES = 8
BURST = 50


def gpu_pod(name: str, gpus: int) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "burst", "annotations": {"gpu-extender.io/class": "batch"}},
            "spec": {"schedulerName": "gpu-scheduler", "priorityClassName": "gpu-batch",
                     "containers": [{"name": "main", "image": "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
                                     "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("packing"))
    try:
        for i in range(NODES):
            stack.plane.node(nvlink_node(f"gpu-{i}", "burst"))
        yield stack
    finally:
        stack.stop()


def test_fifty_one_gpu_batch_pods_pack_and_an_8_gpu_pod_still_fits(stack):
    plane = stack.plane
    for i in range(2):
        plane.pod(gpu_pod(f"two-{i}", 2))
        wait_bound(plane.core, f"two-{i}", "burst")
    plane.pod(gpu_pod("sixteen", 16))  # fits no node: stays pending
    for i in range(BURST):  # created at once, as a Job's pods are
        plane.pod(gpu_pod(f"one-{i}", 1))

    def all_bound() -> list | None:
        pods = [p for p in plane.core.list_namespaced_pod("burst").items if p.metadata.name.startswith("one-")]
        return pods if len(pods) == BURST and all(p.spec.node_name for p in pods) else None

    pods = wait_until(all_bound, f"{BURST} one-GPU pods to be bound", 120)
    used = Counter()
    for pod in plane.core.list_namespaced_pod("burst").items:
        if pod.spec.node_name:
            used[pod.spec.node_name] += int(pod.spec.containers[0].resources.limits["nvidia.com/gpu"])
    # 54 GPUs on 8-GPU nodes: six full nodes and one with six; the eighth left whole.
    partly = {node: n for node, n in used.items() if n < 8}
    assert len(partly) <= 1, f"GPUs used per node: {dict(used)}"
    assert len(used) == 7, f"GPUs used per node: {dict(used)}"
    for pod in pods:  # no GPU planned twice
        plan = json.loads(pod.metadata.annotations["gpu-extender.io/plan"])
        assert len(plan["gpus"]) == 1
    planned = Counter((p.spec.node_name, json.loads(p.metadata.annotations["gpu-extender.io/plan"])["gpus"][0])
                      for p in pods)
    assert max(planned.values()) == 1

    big = plane.pod(gpu_pod("eight", 8))
    bound = wait_bound(plane.core, big.metadata.name, "burst")
    assert bound.spec.node_name not in used
