"""What the kubelet really allocated to each container, read from its PodResources API (v1 `List`
on `<kubelet root>/pod-resources/kubelet.sock`), and the allocations annotation built from it.

This works on every node, whichever device plugin serves the GPUs: NVIDIA's names whole GPUs and
MIG devices by UUID as ours does (`extender.node.devices`), and its `index` ID strategy by GPU
index. The annotation, `gpu-extender.io/allocations` on the Node, holds every pod with GPU
devices, in the plan's own form so that the extender can put one in place of the other:

    {"namespace/name": {"gpus": [indices], "mig": [{"gpu", "profile", "start"}],
                        "share": {"gpu", "milli"}, "unknown": {"resource": [device IDs]}}}

(keys left out when empty; `unknown`: IDs the node's inventory cannot place, e.g. a GPU removed
since). The extender counts a pod's devices from here instead of its plan once its node reports it
(the agent's heartbeat is fresh), and reports where the two differ.
"""

from __future__ import annotations

from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from pathlib import Path
from typing import Any

import grpc

from extender.node.devices import Catalog
from extender.node.kubeletapi.podresources.v1 import api_pb2, api_pb2_grpc
from scoring.model import GPU_RESOURCE, MILLI_PER_GPU

Held = dict[tuple[str, str], dict[str, list[str]]]  # (pod key, container) -> resource -> device IDs
TIMEOUT = 5.0  # seconds for one List: the kubelet answers from memory


class PodResourcesError(Exception):
    """The kubelet's PodResources API did not answer; the message says why."""


class PodResources:
    """A client of the kubelet's PodResources API on `socket`. Each `list` connects anew: a
    channel kept open would, after the kubelet restarts, wait out gRPC's reconnect back-off
    (growing to minutes) before it asks again; a unix socket connects in well under a millisecond."""

    def __init__(self, socket: Path):
        self.socket = socket

    def list(self, keep: Callable[[str], bool]) -> Held:
        """Every container's devices, by (namespace/name, container) and resource; only the
        resources for which `keep(resource)` holds, and only containers with some."""
        try:
            with grpc.insecure_channel(f"unix://{self.socket}") as channel:
                answer = api_pb2_grpc.PodResourcesListerStub(channel).List(api_pb2.ListPodResourcesRequest(),
                                                                           timeout=TIMEOUT)
        except grpc.RpcError as exc:
            raise PodResourcesError(f"PodResources List on {self.socket}: {exc.code().name}: {exc.details()}") from None
        held: Held = {}
        for pod in answer.pod_resources:
            for container in pod.containers:
                by: dict[str, list[str]] = defaultdict(list)
                for devices in container.devices:
                    if keep(devices.resource_name):
                        by[devices.resource_name].extend(devices.device_ids)
                if by:
                    held[(f"{pod.namespace}/{pod.name}", container.name)] = dict(by)
        return held


def allocations(held: Mapping[tuple[str, str], Mapping[str, Iterable[str]]], catalog: Catalog) -> dict[str, Any]:
    """The allocations annotation's content: each pod's devices in the plan's form."""
    by_pod: dict[str, dict[str, list[str]]] = defaultdict(lambda: defaultdict(list))
    for (pod, _), resources in held.items():
        for resource, ids in resources.items():
            by_pod[pod][resource].extend(ids)
    out: dict[str, Any] = {}
    for pod, resources in sorted(by_pod.items()):
        gpus: set[int] = set()
        mig: list[dict[str, Any]] = []
        shares: Counter[int] = Counter()
        unknown: dict[str, list[str]] = {}
        for resource, ids in sorted(resources.items()):
            for device_id in sorted(set(ids)):
                device = catalog.identify(resource, device_id)
                if device is None:
                    unknown.setdefault(resource, []).append(device_id)
                elif resource == catalog.share_resource:
                    shares[device.gpu] += 1
                elif device.mig is not None:
                    mig.append({"gpu": device.mig.gpu, "profile": device.mig.profile, "start": device.mig.start})
                elif resource == GPU_RESOURCE:
                    gpus.add(device.gpu)
        entry: dict[str, Any] = {}
        for gpu, units in list(shares.items()):
            if units >= MILLI_PER_GPU:  # a whole GPU's units (another scheduler's pod): held whole
                gpus.add(gpu)
                del shares[gpu]
        if gpus:
            entry["gpus"] = sorted(gpus)
        if mig:
            entry["mig"] = sorted(mig, key=lambda m: (m["gpu"], m["start"]))
        if shares:
            gpu, milli = max(shares.items(), key=lambda item: (item[1], -item[0]))
            entry["share"] = {"gpu": gpu, "milli": milli}
            for other, units in shares.items():
                if other != gpu:
                    unknown.setdefault(catalog.share_resource or "", []).append(f"{units} units on GPU {other}")
        if unknown:
            entry["unknown"] = unknown
        if entry:
            out[pod] = entry
    return out
