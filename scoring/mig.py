"""MIG slice availability: can the node give the pod its MIG instances, and which ones.

Feasibility, per requested profile P (mixed strategy: `nvidia.com/mig-<P>`; single strategy:
`nvidia.com/gpu` on a node whose GPUs are all cut into one profile):

    free(P) = allocatable(P) - planned instances of P held - unplanned pods' requests of P
    feasible  iff  free(P) >= wanted(P) for every P

When the agent's MIG layout is known and legal, each wanted instance is planned on an idle
instance of P, chosen by fragmentation-aware best fit. For a GPU g let L(g) be the memory slices
of the largest profile still creatable on g, counting only instances held by pods as occupied
(idle instances can be re-cut). Taking an instance of P (size s) on g costs

    loss = max(0, L_before(g) - max(L_after(g), s))

i.e. how much the largest creatable profile shrinks beyond what the pod itself needs. The
candidate with the least loss wins; ties go to the smaller loss of large-profile capacity, then
to the fuller GPU, then to the lowest GPU index and start. The signal's score is

    score = max(0, 1 - sum(loss) / 8)

With no (legal) layout the plan names no instance and the score is neutral (0.5).
"""

from __future__ import annotations

from collections import Counter
from functools import lru_cache
from collections.abc import Mapping

from scoring.mig_catalog import COMPUTE_SLICES, MAX_INSTANCES, MEMORY_SLICES, Profile, profiles_for
from scoring.model import (
    GPU_RESOURCE,
    NEUTRAL,
    GpuNode,
    MigInstance,
    MigSlot,
    MigStrategy,
    Plan,
    PodRequest,
    SignalResult,
    mig_resource,
)


def wanted(node: GpuNode, request: PodRequest) -> dict[str, int]:
    """MIG instances the pod wants on this node, by profile."""
    wants = Counter(request.mig)
    if node.mig_strategy is MigStrategy.SINGLE and request.gpus:
        wants[node.single_mig_profile or ""] += request.gpus
    return dict(wants)


def resource_for(node: GpuNode, profile: str) -> str:
    if node.mig_strategy is MigStrategy.SINGLE and profile == (node.single_mig_profile or ""):
        return GPU_RESOURCE
    return mig_resource(profile)


def held(node: GpuNode, profile: str) -> int:
    planned = sum(1 for slot in node.usage.mig if slot.profile == profile)
    return planned + node.usage.unplanned.get(resource_for(node, profile), 0)


def evaluate(node: GpuNode, request: PodRequest) -> SignalResult:
    wants = wanted(node, request)
    if not wants:
        return SignalResult.not_applicable("no MIG request")
    for profile, count in sorted(wants.items()):
        label = profile or "MIG device"
        allocatable = node.allocatable.get(resource_for(node, profile), 0)
        if allocatable == 0:
            return SignalResult.reject(f"node offers no {label}", f"no {label} on node", unresolvable=True)
        free = allocatable - held(node, profile)
        if free < count:
            return SignalResult.reject(
                f"needs {count}x {label}, {max(free, 0)} of {allocatable} free",
                f"not enough free {label}",
                unresolvable=allocatable < count,
            )
    if node.mig_layout is None:
        return SignalResult(True, NEUTRAL, f"{_summary(wants)} free by allocatable; MIG layout unknown")
    models = tuple(sorted({(i.gpu, g.model if (g := node.gpu(i.gpu)) else node.product) for i in node.mig_layout}))
    busy = frozenset((slot.gpu, slot.start) for slot in node.usage.mig)
    planned = _plan(node.mig_layout, models, busy, tuple(sorted(wants.items())))
    if isinstance(planned, str):
        return SignalResult(True, NEUTRAL, f"{_summary(wants)} free by allocatable; {planned}")
    slots, score, notes = planned
    unplanned = sum(node.usage.unplanned.get(resource_for(node, p), 0) for p in wants)
    if unplanned:
        notes += f"; {unplanned} held by pods without a plan, so the plan is tentative"
    return SignalResult(True, score, notes, Plan(mig=slots))


@lru_cache(maxsize=65_536)
def _plan(
    layout: tuple[MigInstance, ...],
    models: tuple[tuple[int, str], ...],
    busy: frozenset[tuple[int, int]],
    wants: tuple[tuple[str, int], ...],
) -> tuple[tuple[MigSlot, ...], float, str] | str:
    """Best-fit slots, score and reason, or why the layout cannot be used. A pure function of its
    arguments, memoised: nodes with the same layout and the same instances held share the answer."""
    gpus = _layout(layout, dict(models), busy)
    if isinstance(gpus, str):
        return gpus
    return _best_fit(dict(wants), gpus)


class _Gpu:
    """A MIG-enabled GPU during planning: its catalog, idle and busy instances."""

    def __init__(self, index: int, catalog: Mapping[str, Profile]):
        self.index = index
        self.catalog = catalog
        self.order = sorted(catalog.values(), key=lambda p: (-p.mem_slices, -p.compute, p.name))
        self.busy: list[MigInstance] = []
        self.idle: list[MigInstance] = []

    def creatable(self, profile: Profile, busy: list[MigInstance]) -> int:
        used = {s for inst in busy for s in range(inst.start, inst.start + inst.size)}
        compute = sum(self.catalog[inst.profile].compute for inst in busy)
        limit = min(
            profile.max_count - sum(1 for inst in busy if inst.profile == profile.name),
            (COMPUTE_SLICES - compute) // profile.compute,
            MAX_INSTANCES - len(busy),
        )
        count = 0
        for start in profile.starts:
            if count >= limit:
                break
            span = range(start, start + profile.mem_slices)
            if used.isdisjoint(span):
                used.update(span)
                count += 1
        return count

    def capacity(self, busy: list[MigInstance]) -> tuple[int, ...]:
        return tuple(self.creatable(p, busy) for p in self.order)

    def largest(self, busy: list[MigInstance]) -> Profile | None:
        return next((p for p in self.order if self.creatable(p, busy) > 0), None)


def _layout(
    layout: tuple[MigInstance, ...], models: Mapping[int, str], busy: frozenset[tuple[int, int]]
) -> dict[int, _Gpu] | str:
    """The MIG GPUs with idle/busy instances, or why the layout cannot be used."""
    gpus: dict[int, _Gpu] = {}
    for inst in layout:
        catalog = profiles_for(models[inst.gpu])
        if catalog is None:
            return f"no MIG geometry known for {models[inst.gpu] or 'this GPU'}"
        profile = catalog.get(inst.profile)
        if profile is None or inst.start not in profile.starts or inst.size != profile.mem_slices:
            return f"layout has an illegal instance {inst.profile}@{inst.start} on GPU {inst.gpu}"
        gpus.setdefault(inst.gpu, _Gpu(inst.gpu, catalog))
    for gpu in gpus.values():
        instances = [inst for inst in layout if inst.gpu == gpu.index]
        slices = [s for inst in instances for s in range(inst.start, inst.start + inst.size)]
        compute = sum(gpu.catalog[inst.profile].compute for inst in instances)
        if len(slices) != len(set(slices)) or compute > COMPUTE_SLICES or len(instances) > MAX_INSTANCES:
            return f"layout of GPU {gpu.index} has overlapping or too many instances"
    for inst in layout:
        target = gpus[inst.gpu].busy if (inst.gpu, inst.start) in busy else gpus[inst.gpu].idle
        target.append(inst)
    return gpus


def _best_fit(wants: Mapping[str, int], gpus: dict[int, _Gpu]) -> tuple[tuple[MigSlot, ...], float, str] | str:
    slots: list[MigSlot] = []
    notes: list[str] = []
    total_loss = 0
    # Largest profiles first: they have the fewest legal places.
    for profile_name in sorted(wants, key=lambda p: -_size(gpus, p)):
        for _ in range(wants[profile_name]):
            choice = _cheapest(gpus, profile_name)
            if choice is None:
                return f"layout shows too few idle {profile_name}"
            loss, gpu, inst = choice
            total_loss += loss
            gpu.idle.remove(inst)
            gpu.busy.append(inst)
            largest = gpu.largest(gpu.busy)
            slots.append(MigSlot(inst.gpu, inst.profile, inst.start))
            notes.append(
                f"{inst.profile} on GPU {inst.gpu} slice {inst.start} "
                f"(still creatable there: {largest.name if largest else 'nothing'})"
            )
    return tuple(slots), max(0.0, 1.0 - total_loss / MEMORY_SLICES), "; ".join(notes)


def _cheapest(gpus: dict[int, _Gpu], profile_name: str) -> tuple[int, _Gpu, MigInstance] | None:
    best = None
    for gpu in gpus.values():
        candidates = [inst for inst in gpu.idle if inst.profile == profile_name]
        if not candidates:
            continue
        before = gpu.largest(gpu.busy)
        before_size = before.mem_slices if before else 0
        before_cap = gpu.capacity(gpu.busy)
        busy_slices = sum(inst.size for inst in gpu.busy)
        for inst in candidates:
            after_busy = gpu.busy + [inst]
            after = gpu.largest(after_busy)
            after_size = after.mem_slices if after else 0
            loss = max(0, before_size - max(after_size, inst.size))
            cap_loss = tuple(b - a for b, a in zip(before_cap, gpu.capacity(after_busy)))
            key = (loss, cap_loss, -busy_slices, gpu.index, inst.start)
            if best is None or key < best[0]:
                best = (key, loss, gpu, inst)
    return None if best is None else best[1:]


def _size(gpus: dict[int, _Gpu], profile_name: str) -> int:
    for gpu in gpus.values():
        if profile_name in gpu.catalog:
            return gpu.catalog[profile_name].mem_slices
    return 0


def _summary(wants: Mapping[str, int]) -> str:
    return ", ".join(f"{n}x {p or 'MIG device'}" for p, n in sorted(wants.items()))
