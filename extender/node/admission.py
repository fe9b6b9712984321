"""Which pod the kubelet is admitting, and which devices its container gets.

The kubelet's device-plugin calls name no pod. GetPreferredAllocation says only: a resource, the
devices still available, the ones that must be included and how many. The kubelet admits pods
one at a time, oldest first (it sorts each batch of new pods by creation time), and in a pod the
containers in order (init containers first), one resource at a time. So the pod being admitted is
taken to be

    the oldest pod bound to this node and not yet started whose next container still without
    devices of the resource asks for exactly that many, and whose plan's devices for it are all
    still available

(creation times have whole seconds: pods of one second go in the order the agent's watch saw them
bound, which is how the kubelet's own watch delivers them; its sort is not stable for batches of
more than 12, so that is a best guess).

No lock is held in bind and nothing waits: the plan is on the pod when the kubelet sees it (the
Binding carries it). When the kubelet meets two pods of one shape in another order than their
creation (one came in a later batch), the two swap plans; the node's devices in use are still the
union of the plans, and what the kubelet really allocated is read back (`extender.node.
podresources`) and published, so the extender's view follows the node, not the plan. A pod whose
plan cannot be used (none, unreadable, another node's, a device the node no longer has) gets devices
of the node's own choosing: best fit for a share, lowest-indexed free GPUs otherwise.

Safety does not depend on guessing right. The kubelet never gives one device ID twice within a
resource; across resources this module keeps one physical GPU from being both: a GPU held whole is
never offered as shares, a GPU holding a share never whole, and `allocate` refuses both (the
kubelet then fails the pod's admission with the reason), as it refuses a device the node does not
have or a share spread over two GPUs.
"""

from __future__ import annotations

import threading
from collections import Counter, defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass

from extender.node.devices import SHARE_SEPARATOR, Catalog, Device
from scoring.model import GPU_RESOURCE, MigSlot, Plan, mig_resource

RECORD_MARGIN = 5.0  # seconds an Allocate is trusted over a PodResources answer that began before it
PICK_TTL = 120.0  # seconds a GetPreferredAllocation answer waits for its Allocate


@dataclass(frozen=True, slots=True)
class Container:
    name: str
    wants: Mapping[str, int]  # resource -> devices


@dataclass(frozen=True, slots=True)
class PodOnNode:
    """A pod bound to this node, as admission needs it. `plan` is None when it cannot be used;
    `problem` then says why (empty for a pod that asks for none of our resources)."""

    key: str  # namespace/name, as the kubelet's PodResources API names pods
    uid: str
    created: str  # RFC 3339: sorts in time order, to the second
    containers: tuple[Container, ...]  # the kubelet's order: init containers, then containers
    plan: Plan | None
    problem: str = ""
    seen: int = 0  # the order this node's watch saw pods bound, for pods of one creation second
    admitted: bool = False  # the kubelet started it (status.startTime) or it is being deleted
    since: float = 0.0  # when this node first saw this UID (clock): older reports of its name are another pod's


@dataclass(frozen=True, slots=True)
class Request:
    """One container's GetPreferredAllocation."""

    resource: str
    available: frozenset[str]
    must_include: tuple[str, ...]
    size: int


@dataclass(frozen=True, slots=True)
class Choice:
    ids: tuple[str, ...]  # empty: no preference (the kubelet picks; Allocate still checks)
    pod: str | None  # the pod the devices were planned for, None when no plan matched
    container: str | None
    reason: str


class Refused(Exception):
    """Allocate cannot hand these devices out; the message says why (the kubelet shows it)."""


@dataclass(frozen=True, slots=True)
class _Allocation:
    """One Allocate this plugin answered: when, what, and for which pod's container when a
    preferred allocation had named them (None: the kubelet chose, or no plan matched)."""

    at: float
    resource: str
    ids: frozenset[str]
    pod: str | None
    container: str | None


Held = dict[tuple[str, str], dict[str, frozenset[str]]]  # (pod key, container) -> resource -> devices


class Admissions:
    """The admission state of one node; every method is safe to call from gRPC threads.

    What is held comes from two places: the kubelet's last PodResources answer (`observe`) and the
    Allocates answered since shortly before that answer was asked for (the kubelet records an
    allocation as Allocate returns, so a later answer has it, or the pod is gone)."""

    def __init__(self, catalog: Catalog):
        self._lock = threading.Lock()
        self.catalog = catalog
        self._slots = _slot_ids(catalog)
        self._pods: list[PodOnNode] = []
        self._reported: Held = {}
        self._reported_at = float("-inf")  # when the last PodResources answer was asked for
        self._allocated: list[_Allocation] = []
        self._picks: dict[tuple[str, frozenset[str]], tuple[str, str, float]] = {}  # -> (pod, container, at)

    # --- inputs ---------------------------------------------------------------------------

    def set_catalog(self, catalog: Catalog) -> None:
        with self._lock:
            self.catalog = catalog
            self._slots = _slot_ids(catalog)

    def set_pods(self, pods: Iterable[PodOnNode]) -> None:
        """The pods bound to this node and not finished, oldest first."""
        ordered = sorted(pods, key=lambda p: (p.created, p.seen, p.key))
        with self._lock:
            self._pods = ordered

    def observe(self, held: Mapping[tuple[str, str], Mapping[str, Iterable[str]]], started: float) -> None:
        """What the kubelet reported as allocated, per (pod key, container) and resource, in a
        PodResources answer asked for at `started`."""
        with self._lock:
            self._reported = {key: {r: frozenset(ids) for r, ids in by.items() if ids} for key, by in held.items()}
            self._reported_at = started
            self._allocated = [a for a in self._allocated if a.at >= started - RECORD_MARGIN]
            self._picks = {k: v for k, v in self._picks.items() if v[2] >= started - PICK_TTL}

    # --- the kubelet's calls --------------------------------------------------------------

    def prefer(self, request: Request, now: float) -> Choice:
        """GetPreferredAllocation for one container: the planned devices of the pod being admitted,
        else the node's own choice."""
        with self._lock:
            whole, shared = self._physical()
            for pod in self._pods:
                if pod.plan is None or pod.admitted:
                    continue
                container = self._next_container(pod, request.resource)
                if container is None or container.wants[request.resource] != request.size:
                    continue
                ids = self._planned(pod, request, whole, shared)
                if ids is None:
                    continue
                self._picks[(request.resource, frozenset(ids))] = (pod.key, container.name, now)
                return Choice(ids, pod.key, container.name,
                              f"the plan of {pod.key} (container {container.name}), the oldest pod waiting "
                              f"for {request.size} {request.resource}")
            return self._fallback(request, whole, shared)

    def allocate(self, resource: str, ids: list[str], now: float) -> list[Device]:
        """Allocate for one container: the devices behind `ids`, recorded as held; Refused when
        one is unknown, a share spans two GPUs, or a GPU is already held through the other resource."""
        with self._lock:
            devices = []
            for device_id in ids:
                device = self.catalog.device(resource, device_id)
                if device is None:
                    raise Refused(f"{device_id} is not a {resource} device of this node")
                devices.append(device)
            whole, shared = self._physical()
            if resource == self.catalog.share_resource:
                gpus = sorted({d.gpu for d in devices})
                if len(gpus) > 1:
                    raise Refused(f"a GPU share comes from one GPU; these units are on GPUs {gpus}")
                if gpus and gpus[0] in whole:
                    raise Refused(f"GPU {gpus[0]} ({devices[0].gpu_uuid}) is held whole by another container")
            elif resource == GPU_RESOURCE:
                if busy := sorted({d.gpu for d in devices} & shared):
                    raise Refused(f"GPU {busy[0]} holds shares of other containers")
            key = frozenset(ids)
            pod, container, _ = self._picks.pop((resource, key), (None, None, 0.0))
            self._allocated.append(_Allocation(now, resource, key, pod, container))
            return devices

    # --- reads ----------------------------------------------------------------------------

    def held(self) -> Held:
        """Devices by (pod key, container) and resource, as far as this node knows now."""
        with self._lock:
            held: Held = {key: dict(by) for key, by in self._reported.items()}
            for a in self._allocated:
                if a.pod is not None and a.container is not None:
                    held.setdefault((a.pod, a.container), {})[a.resource] = a.ids
            return held

    # --- internals (lock held) --------------------------------------------------------------

    def _physical(self) -> tuple[set[int], set[int]]:
        """GPU indices held whole, and GPU indices holding shares."""
        whole: set[int] = set()
        shared: set[int] = set()
        catalog = self.catalog
        held = [(r, ids) for by in self._reported.values() for r, ids in by.items()]
        held += [(a.resource, a.ids) for a in self._allocated]
        for resource, ids in held:
            if resource == GPU_RESOURCE:
                whole.update(d.gpu for i in ids if (d := catalog.device(resource, i)) is not None)
            elif resource == catalog.share_resource:  # a thousand units a GPU: by their GPU's UUID
                uuids = {i.rpartition(SHARE_SEPARATOR)[0] for i in ids}
                shared.update(catalog.whole[u].index for u in uuids if u in catalog.whole)
        return whole, shared

    def _waiting_plans(self) -> list[Plan]:
        """Plans of pods the kubelet has yet to admit."""
        return [pod.plan for pod in self._pods if pod.plan is not None and not pod.admitted
                and any(self._next_container(pod, r) for c in pod.containers for r in c.wants)]

    def _done(self, pod: PodOnNode) -> dict[str, dict[str, frozenset[str]]]:
        """Container name -> resource -> devices it already has (what the kubelet reported of its
        name before this node saw its UID was another pod's)."""
        done: dict[str, dict[str, frozenset[str]]] = defaultdict(dict)
        if self._reported_at >= pod.since:
            for (key, container), by in self._reported.items():
                if key == pod.key:
                    done[container].update(by)
        for a in self._allocated:
            if a.pod == pod.key and a.container is not None and a.at >= pod.since:
                done[a.container][a.resource] = a.ids
        return done

    def _next_container(self, pod: PodOnNode, resource: str) -> Container | None:
        done = self._done(pod)
        return next((c for c in pod.containers
                     if c.wants.get(resource, 0) > 0 and resource not in done.get(c.name, {})), None)

    def _planned(self, pod: PodOnNode, request: Request, whole: set[int], shared: set[int]) -> tuple[str, ...] | None:
        """The pod's planned devices for its next container, when all are available now."""
        assert pod.plan is not None
        plan, catalog, resource = pod.plan, self.catalog, request.resource
        mine = {i for by in self._done(pod).values() for i in by.get(resource, ())}
        offered = request.available | set(request.must_include)
        if resource == catalog.share_resource:
            if plan.share is None or plan.share.gpu in whole or _share_gpu(catalog, request) not in (None, plan.share.gpu):
                return None
            gpu = catalog.by_index.get(plan.share.gpu)
            prefix = f"{gpu.uuid}{SHARE_SEPARATOR}" if gpu is not None else "\0"
            units = list(request.must_include) + sorted(
                i for i in offered if i.startswith(prefix) and i not in request.must_include)
            return tuple(units[: request.size]) if len(units) >= request.size else None
        if resource == GPU_RESOURCE:
            if set(plan.gpus) & shared:
                return None
            wanted = [device.uuid for i in plan.gpus if (device := catalog.by_index.get(i)) is not None]
        else:
            wanted = [self._slots[slot] for slot in plan.mig
                      if mig_resource(slot.profile) == resource and slot in self._slots]
        wanted = [i for i in wanted if i not in mine]
        ids = list(request.must_include) + [i for i in wanted if i not in request.must_include]
        if len(ids) < request.size or not set(ids[: request.size]) <= offered:
            return None
        return tuple(ids[: request.size])

    def _fallback(self, request: Request, whole: set[int], shared: set[int]) -> Choice:
        """No planned pod matches: the node's own choice among the available devices, keeping off
        what the plans of pods still waiting name where it can."""
        catalog, resource = self.catalog, request.resource
        devices = [d for i in request.available if (d := catalog.device(resource, i)) is not None]
        why = f"no planned pod waits for {request.size} {resource} with its devices free: "
        waiting = self._waiting_plans()
        if resource == catalog.share_resource:
            by_gpu: dict[int, list[str]] = defaultdict(list)
            reused = _share_gpu(catalog, request)  # units the kubelet reuses pin the share to their GPU
            for device in devices:
                if device.gpu not in whole and reused in (None, device.gpu) and device.id not in request.must_include:
                    by_gpu[device.gpu].append(device.id)
            if reused is not None:
                by_gpu[reused] = list(request.must_include) + sorted(by_gpu[reused])
            planned: Counter[int] = Counter()
            for plan in waiting:
                if plan.share is not None:
                    planned[plan.share.gpu] += plan.share.milli
            fits = [(len(ids) - planned[gpu] < request.size, len(ids), gpu) for gpu, ids in by_gpu.items()
                    if len(ids) >= request.size]
            if not fits:
                return Choice((), None, None, why + "no single GPU has that many free units")
            _, _, gpu = min(fits)  # best fit among the GPUs whose waiting plans leave room, lowest index on ties
            units = by_gpu[gpu] if gpu == reused else sorted(by_gpu[gpu])
            return Choice(tuple(units[: request.size]), None, None, why + f"best fit, GPU {gpu}")
        claimed = {i for plan in waiting for i in plan.gpus} | {self._slots.get(s) for plan in waiting for s in plan.mig}
        free = sorted((d for d in devices if resource != GPU_RESOURCE or d.gpu not in shared),
                      key=lambda d: ((d.id if d.mig else d.gpu) in claimed, d.gpu, d.mig.start if d.mig else 0, d.id))
        ids = list(request.must_include) + [d.id for d in free if d.id not in request.must_include]
        if len(ids) < request.size:
            return Choice((), None, None, why + "not enough devices free of other containers")
        return Choice(tuple(ids[: request.size]), None, None, why + "lowest-indexed free devices")


def _share_gpu(catalog: Catalog, request: Request) -> int | None:
    """The GPU of the share units the kubelet must include (reused from an init container)."""
    for device_id in request.must_include:
        if (device := catalog.device(request.resource, device_id)) is not None:
            return device.gpu
    return None


def _slot_ids(catalog: Catalog) -> dict[MigSlot, str]:
    return {device.mig: device.id for device in catalog.mig.values() if device.mig is not None}
