"""A small GB200-style cluster for the pod-group tests: NVLink domains of 4-GPU nodes, each
domain's nodes labelled with one nvidia.com/gpu.clique, and LeaderWorkerSet / JobSet pods."""

from __future__ import annotations

from typing import Any

CLIQUE = "nvidia.com/gpu.clique"
LWS = "leaderworkerset.sigs.k8s.io"
JOBSET = "jobset.sigs.k8s.io"


def node(name: str, clique: str | None, gpus: int = 4, product: str = "NVIDIA-GB200") -> dict[str, Any]:
    labels = {"nvidia.com/gpu.product": product, "nvidia.com/gpu.count": str(gpus)}
    if clique:
        labels[CLIQUE] = clique
    return {"apiVersion": "v1", "kind": "Node", "metadata": {"name": name, "labels": labels},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}}}


def domains(sizes: dict[str, int], gpus: int = 4) -> list[dict[str, Any]]:
    """`sizes`: clique -> nodes; node names are <clique>-<i>."""
    return [node(f"{clique}-{i}", clique, gpus) for clique, count in sizes.items() for i in range(count)]


def pod(name: str, gpus: int, labels: dict[str, str] | None = None, annotations: dict[str, str] | None = None,
        node_name: str | None = None, namespace: str = "infer", priority: int | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"schedulerName": "gpu-scheduler", "containers": [
        {"name": "main", "image": "registry.invalid/none", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
    if node_name:
        spec["nodeName"] = node_name
    if priority is not None:
        spec["priority"] = priority
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": namespace, "uid": f"uid-{namespace}-{name}",
                         "labels": labels or {}, "annotations": annotations or {}},
            "spec": spec, "status": {"phase": "Running" if node_name else "Pending"}}


def lws_group(set_name: str, index: int, size: int, gpus: int) -> list[dict[str, Any]]:
    """The pods of one LeaderWorkerSet replica, as LWS labels them (leader first)."""
    labels = {f"{LWS}/name": set_name, f"{LWS}/group-index": str(index), f"{LWS}/group-key": f"{set_name}-key-{index}"}
    notes = {f"{LWS}/size": str(size)}
    return [pod(f"{set_name}-{index}" + (f"-{w}" if w else ""), gpus, labels | {f"{LWS}/worker-index": str(w)}, notes)
            for w in range(size)]


def jobset_job(jobset: str, replicated: str, job: int, pods: int, gpus: int) -> list[dict[str, Any]]:
    """The pods of one Job of a JobSet, as JobSet labels them (no key gives their count)."""
    labels = {f"{JOBSET}/jobset-name": jobset, f"{JOBSET}/replicatedjob-name": replicated,
              f"{JOBSET}/job-index": str(job)}
    return [pod(f"{jobset}-{replicated}-{job}-{i}", gpus, labels, namespace="train") for i in range(pods)]
