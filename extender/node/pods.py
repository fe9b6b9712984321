"""The pods bound to this node, as device admission needs them (`admission.PodOnNode`), and an
Event on each pod whose plan the node cannot follow.

A pod that asks for a resource the device plugin serves has no usable plan when:
- it carries no `gpu-extender.io/plan` (bound by another scheduler, or by hand): `GPUPlanMissing`;
- its plan cannot be read, or is for another node: `GPUPlanUnreadable`;
- its plan names a device this node does not have (an index past its GPUs, a GPU whose UUID
  changed, a MIG instance not in its layout, a share on a MIG-enabled GPU): `GPUPlanStale`.
Each such pod gets one Warning Event saying so; the device plugin gives it devices of the node's
own choosing (`admission`), never a device another container holds.
"""

from __future__ import annotations

import json
import logging
import threading
from collections.abc import Callable, Mapping
from typing import Any

from extender import annotations as ann
from extender import convert
from extender.node.admission import Container, PodOnNode
from extender.node.devices import Catalog
from scoring.model import Plan

log = logging.getLogger("gpu_extender.agent")
Obj = Mapping[str, Any]
Report = Callable[[Obj, str, str], None]  # (pod, reason, message)


def pod_on_node(pod: Obj, node: str, catalog: Catalog, seen: int = 0) -> tuple[PodOnNode, str, str]:
    """The pod as admission sees it (`seen`: when this node first saw it bound, in watch order),
    and (reason, message) of the Event its plan deserves, or ("", "") when it needs none."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    share = catalog.share_resource or ""
    containers = tuple(
        Container(str(c.get("name")), {r: n for r, n in _wants(c, pod, share).items() if catalog.is_ours(r)})
        for key in ("initContainers", "containers") for c in spec.get(key) or [] if isinstance(c, dict)
    )
    key = f"{meta.get('namespace') or 'default'}/{meta.get('name')}"
    reason, message, plan = "", "", None
    if any(c.wants for c in containers):
        plan, reason, message = _usable_plan(meta.get("annotations") or {}, node, catalog, spec)
    on_node = PodOnNode(key, str(meta.get("uid") or ""), str(meta.get("creationTimestamp") or ""), containers,
                        plan, message, seen)
    return on_node, reason, message


def _wants(container: Obj, pod: Obj, share: str) -> dict[str, int]:
    try:
        return convert.container_gpus(container, pod, share)
    except convert.BadObject:
        return {}


def _usable_plan(notes: Obj, node: str, catalog: Catalog, spec: Obj) -> tuple[Plan | None, str, str]:
    value = notes.get(ann.PLAN)
    chosen = "the node gives it devices of its own choosing"
    if not value:
        scheduler = spec.get("schedulerName") or "default-scheduler"
        return None, "GPUPlanMissing", (f"no {ann.PLAN} on the pod (bound by {scheduler}, not through gpu-extender): "
                                        f"{chosen}")
    try:
        data = json.loads(value)
        planned_node, plan = ann.plan_from_dict(data)
    except ValueError as exc:
        return None, "GPUPlanUnreadable", f"{ann.PLAN} cannot be read ({exc}): {chosen}"
    if planned_node != node:
        return None, "GPUPlanUnreadable", f"{ann.PLAN} is for node {planned_node}, not {node}: {chosen}"
    if problem := stale(plan, data, catalog):
        return None, "GPUPlanStale", f"{ann.PLAN} names {problem}: {chosen}"
    return plan, "", ""


def stale(plan: Plan, data: Obj, catalog: Catalog) -> str:
    """What in the plan this node no longer has ("" when it has everything)."""
    uuids = data.get("uuids") if isinstance(data.get("uuids"), list) else []
    for position, index in enumerate(plan.gpus):
        gpu = catalog.by_index.get(index)
        if gpu is None or gpu.mig_enabled:
            return f"GPU {index}, which this node does not have as a whole GPU"
        if position < len(uuids) and uuids[position] and uuids[position] != gpu.uuid:
            return f"GPU {index} as {uuids[position]}, but this node's GPU {index} is {gpu.uuid}"
    slots = {device.mig for device in catalog.mig.values()}
    for slot in plan.mig:
        if slot not in slots:
            return f"MIG {slot.profile} at slice {slot.start} of GPU {slot.gpu}, not in this node's MIG layout"
    if plan.share is not None:
        gpu = catalog.by_index.get(plan.share.gpu)
        if gpu is None or gpu.mig_enabled or not catalog.share_resource:
            return f"a share of GPU {plan.share.gpu}, which this node does not share"
    return ""


class NodePods:
    """The pods of one node, kept from a watch (`kube.ListWatch` with a field selector), turned
    into `PodOnNode`s for admission on every change. `report(pod, reason, message)` is called once
    per pod (by UID) whose plan the node cannot follow."""

    def __init__(self, node: str, catalog: Catalog, on_change: Callable[[list[PodOnNode]], None], report: Report):
        self.node, self.catalog = node, catalog
        self.on_change, self.report = on_change, report
        self._pods: dict[str, Obj] = {}  # uid -> pod
        self._seen: dict[str, int] = {}  # uid -> when first seen, in watch order
        self._reported: set[str] = set()
        self._lock = threading.Lock()  # the watch and an admission's fresh list both write

    def set_catalog(self, catalog: Catalog) -> None:
        with self._lock:
            self.catalog = catalog
            self._publish()

    def replace(self, pods: list[Obj]) -> None:
        with self._lock:
            self._pods = {str((p.get("metadata") or {}).get("uid")): p for p in pods}
            for uid in self._pods:
                self._seen.setdefault(uid, len(self._seen))
            self._seen = {uid: n for uid, n in self._seen.items() if uid in self._pods}
            self._reported &= set(self._pods)
            self._publish()

    def event(self, kind: str, pod: Obj) -> None:
        uid = str((pod.get("metadata") or {}).get("uid"))
        with self._lock:
            if kind == "DELETED" or (pod.get("status") or {}).get("phase") in convert.FINISHED_PHASES:
                self._pods.pop(uid, None)
                self._seen.pop(uid, None)
                self._reported.discard(uid)
            else:
                self._pods[uid] = pod
                self._seen.setdefault(uid, max(self._seen.values(), default=-1) + 1)
            self._publish()

    def _publish(self) -> None:
        admitted = []
        for uid, pod in list(self._pods.items()):
            if (pod.get("status") or {}).get("phase") in convert.FINISHED_PHASES:
                continue
            on_node, reason, message = pod_on_node(pod, self.node, self.catalog, self._seen.get(uid, 0))
            admitted.append(on_node)
            if reason and uid not in self._reported:
                self._reported.add(uid)
                log.warning("pod %s: %s", on_node.key, message)
                self.report(pod, reason, message)
        self.on_change(admitted)
