"""The pods bound to this node, as device admission needs them (`admission.PodOnNode`), and an
Event on each pod whose plan the node cannot follow.

A pod that asks for a resource the device plugin serves has no usable plan when:
- it carries no `gpu-extender.io/plan` (bound by another scheduler, or by hand): `GPUPlanMissing`;
- its plan cannot be read, or is for another node: `GPUPlanUnreadable`;
- its plan names a device this node does not have (an index past its GPUs, a GPU whose UUID
  changed, a MIG instance not in its layout, a share on a MIG-enabled GPU): `GPUPlanStale`.
Each such pod waiting for admission gets one Warning Event saying so (one per agent run: a
restarted agent reports again the pods still waiting); the device plugin gives it devices of the
node's own choosing (`admission`), never a device another container holds.
"""

from __future__ import annotations

import json
import logging
import threading
import time
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
GONE_KEPT = 10_000  # deleted UIDs remembered, so that a list taken before their deletion cannot revive them


def pod_on_node(pod: Obj, node: str, catalog: Catalog, seen: int = 0,
                since: float = 0.0) -> tuple[PodOnNode, str, str]:
    """The pod as admission sees it (`seen`: its place in the order this node saw pods bound;
    `since`: when, by the agent's clock), and (reason, message) of the Event its plan deserves,
    or ("", "") when it needs none."""
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
    admitted = bool((pod.get("status") or {}).get("startTime") or meta.get("deletionTimestamp"))
    on_node = PodOnNode(key, str(meta.get("uid") or ""), str(meta.get("creationTimestamp") or ""), containers,
                        plan, message, seen, admitted, since)
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
    """What in the plan this node no longer has ("" when it has everything): a GPU index past its
    GPUs or in the wrong MIG mode, a GPU whose UUID is not the one planned, a MIG instance not in
    its layout."""
    uuids = data.get("uuids") if isinstance(data.get("uuids"), list) else []
    named = list(zip(plan.gpus, uuids))
    named += [(item.get("gpu"), item.get("gpuUuid")) for item in data.get("mig") or [] if isinstance(item, dict)]
    share = data.get("share")
    if isinstance(share, dict):
        named.append((share.get("gpu"), share.get("gpuUuid")))
    for index, uuid in named:
        gpu = catalog.by_index.get(index) if isinstance(index, int) else None
        if uuid and gpu is not None and uuid != gpu.uuid:
            return f"GPU {index} as {uuid}, but this node's GPU {index} is {gpu.uuid}"
    for index in plan.gpus:
        gpu = catalog.by_index.get(index)
        if gpu is None or gpu.mig_enabled:
            return f"GPU {index}, which this node does not have as a whole GPU"
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
    per pod (by UID) that waits for admission with a plan the node cannot follow. Set `active`
    false to silence one that is being replaced (its watch may deliver a last event)."""

    def __init__(self, node: str, catalog: Catalog, on_change: Callable[[list[PodOnNode]], None], report: Report,
                 clock: Callable[[], float] = time.monotonic):
        self.node, self.catalog = node, catalog
        self.on_change, self.report, self.clock = on_change, report, clock
        self.active = True
        self._pods: dict[str, Obj] = {}  # uid -> pod
        self._seen: dict[str, tuple[int, float]] = {}  # uid -> (order first seen, when)
        self._count = 0
        self._gone: dict[str, None] = {}  # UIDs deleted or finished, newest last (a fresh list may lag)
        self._reported: set[str] = set()
        self._lock = threading.Lock()  # the watch and an admission's fresh list both write

    def set_catalog(self, catalog: Catalog) -> None:
        with self._lock:
            self.catalog = catalog
            self._publish()

    def replace(self, pods: list[Obj]) -> None:
        """A whole list, from the watch (which then goes on from it)."""
        with self._lock:
            self._pods = {}
            self._add(pods)
            self._seen = {uid: seen for uid, seen in self._seen.items() if uid in self._pods}
            self._reported &= set(self._pods)
            self._publish()

    def merge(self, pods: list[Obj]) -> None:
        """A list taken outside the watch (an admission it has not caught up with): only pods the
        watch has not brought are added; it stays the source of what changed since."""
        with self._lock:
            self._add([p for p in pods if _uid(p) not in self._pods])
            self._publish()

    def event(self, kind: str, pod: Obj) -> None:
        uid = _uid(pod)
        with self._lock:
            if kind == "DELETED" or (pod.get("status") or {}).get("phase") in convert.FINISHED_PHASES:
                self._pods.pop(uid, None)
                self._seen.pop(uid, None)
                self._reported.discard(uid)
                self._gone[uid] = None
                while len(self._gone) > GONE_KEPT:
                    del self._gone[next(iter(self._gone))]
            else:
                self._add([pod])
            self._publish()

    def _add(self, pods: list[Obj]) -> None:
        for pod in pods:
            uid = _uid(pod)
            if uid in self._gone or (pod.get("status") or {}).get("phase") in convert.FINISHED_PHASES:
                continue
            self._pods[uid] = pod
            if uid not in self._seen:
                self._seen[uid] = (self._count, self.clock())
                self._count += 1

    def _publish(self) -> None:
        if not self.active:
            return
        pods = []
        for uid, pod in list(self._pods.items()):
            seen, since = self._seen[uid]
            on_node, reason, message = pod_on_node(pod, self.node, self.catalog, seen, since)
            pods.append(on_node)
            if reason and not on_node.admitted and uid not in self._reported:
                self._reported.add(uid)
                log.warning("pod %s: %s", on_node.key, message)
                self.report(pod, reason, message)
        self.on_change(pods)


def _uid(pod: Obj) -> str:
    return str((pod.get("metadata") or {}).get("uid"))
