"""Through the real kube-scheduler: preemption by class, and an extender killed mid-burst."""

from __future__ import annotations

import json
import os
import time
from collections import Counter

import pytest
from kubernetes import client

from tests.e2e.conftest import Kubelet, Stack, nvlink_node, save_recorded, wait_bound, wait_until

NAMESPACE = "e2e"


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("preemption-restart"), record=True)
    kubelet = Kubelet(stack.plane.core)
    stack.plane.namespace(NAMESPACE)
    client.SchedulingV1Api(stack.plane.api).create_priority_class({
        "apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": "e2e-urgent-batch"},
        "value": 2_000_000})  # above gpu-latency-critical, may preempt: only our class rule stops it
    yield stack
    kubelet.stop.set()
    stack.stop()


def gpu_pod(name: str, gpus: int, pool: str, priority_class: str, annotations: dict | None = None) -> dict:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE, "annotations": annotations or {}},
            "spec": {"schedulerName": "gpu-scheduler", "priorityClassName": priority_class,
                     "nodeSelector": {"pool": pool},
                     "containers": [{"name": "c", "image": "busybox",
                                     "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}


def snapshot(plane, node: str) -> dict:
    """The node and the pods bound to it, as `kubectl get -o json` prints them."""
    pods = plane.core.list_pod_for_all_namespaces(field_selector=f"spec.nodeName={node}").items
    items = [plane.core.read_node(node), *pods]
    for item, kind in zip(items, ["Node"] + ["Pod"] * len(pods)):
        item.api_version, item.kind, item.metadata.managed_fields = "v1", kind, None
    return {"apiVersion": "v1", "kind": "List", "items": plane.api.sanitize_for_serialization(items)}


def pods_named(core: client.CoreV1Api, prefix: str) -> list[client.V1Pod]:
    return [p for p in core.list_namespaced_pod(NAMESPACE).items if p.metadata.name.startswith(prefix)]


def test_latency_critical_pods_evict_batch_pods_and_batch_pods_never_evict_them(stack):
    plane = stack.plane
    plane.node(nvlink_node("preempt-0", "preempt"))
    for i in range(8):
        plane.pod(gpu_pod(f"batch-{i}", 1, "preempt", "gpu-batch"))
    for i in range(8):
        wait_bound(plane.core, f"batch-{i}", NAMESPACE)
    seen = snapshot(plane, "preempt-0")  # what kube-scheduler sees when it calls preempt

    plane.pod(gpu_pod("inference", 2, "preempt", "gpu-latency-critical"))
    bound = wait_bound(plane.core, "inference", NAMESPACE, seconds=90)
    assert bound.spec.node_name == "preempt-0"
    left = pods_named(plane.core, "batch-")
    assert len(left) == 6  # exactly the two GPUs it needed were freed
    held = [g for p in left + [bound] for g in json.loads(p.metadata.annotations["gpu-extender.io/plan"])["gpus"]]
    assert sorted(held) == list(range(8))  # the new plan uses the victims' GPUs, nothing twice

    log = stack.extender.log.read_text()
    assert f"preempt {NAMESPACE}/inference: 1 of 1 nodes can make room" in log
    stack.recorder.check(["preempt"])
    if os.environ.get("RECORD_SCHEDULER_REQUESTS"):
        save_recorded("preempt-cluster.json", seen)  # replayed with preempt-request.json

    # A pod of the batch class never evicts the latency-critical one. Its priority is higher, so
    # kube-scheduler's own dry run offers every pod on the node as victims; the extender refuses.
    plane.pod(gpu_pod("urgent-batch", 8, "preempt", "e2e-urgent-batch", {"gpu-extender.io/class": "batch"}))
    refused = f"preempt {NAMESPACE}/urgent-batch: 0 of 1 nodes can make room"
    wait_until(lambda: refused in stack.extender.log.read_text(), "the extender to refuse preempting for urgent-batch")
    time.sleep(2)
    assert not plane.core.read_namespaced_pod("urgent-batch", NAMESPACE).spec.node_name
    assert plane.core.read_namespaced_pod("inference", NAMESPACE).metadata.deletion_timestamp is None
    assert len(pods_named(plane.core, "batch-")) == 6


def test_an_extender_killed_while_200_pods_are_scheduled_binds_them_all_afterwards(stack):
    plane, extender = stack.plane, stack.extender
    for i in range(30):
        plane.node(nvlink_node(f"burst-{i:02d}", "burst"))
    for i in range(200):
        plane.pod(gpu_pod(f"burst-{i:03d}", 1, "burst", "gpu-batch"))
        if i == 60:
            extender.kill()  # while kube-scheduler is busy with the first ones
    time.sleep(3)
    extender.start()

    def all_bound() -> list[client.V1Pod] | None:
        pods = pods_named(plane.core, "burst-")
        return pods if all(p.spec.node_name for p in pods) else None

    pods = wait_until(all_bound, "every burst pod to be bound", 240)
    assert len(pods) == 200
    devices = Counter()
    for pod in pods:
        plan = json.loads(pod.metadata.annotations["gpu-extender.io/plan"])
        assert plan["node"] == pod.spec.node_name
        devices.update((plan["node"], gpu) for gpu in plan["gpus"])
    assert sum(devices.values()) == 200 and max(devices.values()) == 1  # no GPU handed out twice
