"""Policy: the workload class of a pod, and the signals combined into one decision per node.

Class: the pod's class annotation if set; else `latency-critical` when its priority is at least
`classification.priorityThreshold` (or, with no priority resolved, when its PriorityClass is one of
`classification.latencyCriticalPriorityClasses`); else `batch`.

Per node, with w the class's weights and A the signals that apply to the pod:

    allocation = GPU capacity held after placing the pod / node GPU capacity
    alloc_term = 1 - allocation  (latency-critical: spread)   |   allocation  (batch: pack)
    total      = (sum_{s in A} w_s * score_s + w_alloc * alloc_term) / (sum_{s in A} w_s + w_alloc)

The signals include fragmentation (`scoring/fragmentation.py`) when the caller passes a target
workload (the shapes of the cluster's GPU pods): its weight is large for both classes, so the
node that shuts the least of the workload out wins and the other signals mostly break
near-ties (a node it cannot measure, such as a MIG single-strategy node, counts as loss = 2 r_q:
see its docstring). A share goes on the GPU the fragmentation signal plans (the least loss, then
the fullest, then the lowest index).

Latency-critical pods are placed fragmentation-aware too (they are most pods in a serving
cluster) and by default neither spread nor pack (their allocation weight is 0): what spreading
stood in for, GPUs with headroom, the utilization signal measures from DCGM, and the model cache
the locality signal.

The memory signal (`scoring/memory.py`) only rejects: a plan whose devices cannot hold the
pod's model.

GPU capacity is counted in GPUs; a MIG instance counts as its share of memory slices (1g.10gb on
an H100 = 1/8), a GPU share as its thousandths (300 milli = 0.3). A node is feasible when every
signal is; batch pods are also rejected on nodes matching `headroom.nodeSelector` when they would
leave less than `headroom.fraction` of the node's capacity free: that headroom is kept for
latency-critical pods.

Preemption: `may_evict` says which classes a pod may evict (never a latency-critical pod);
victims are chosen lowest priority first, then pruned to the fewest that still make room.

The scheduler's integer: infeasible nodes get 0; the best feasible node 10, the others at most
9 and one point less per ninth of the range of feasible totals, a range of at least
`MIN_SPAN`: totals closer than the signals can tell apart are not stretched over the whole
1..10, yet the best still stands alone (with `serve --best-only`, only it passes filter).
"""

from __future__ import annotations

from collections.abc import Iterable, Mapping, Sequence
from dataclasses import replace

from scoring import fragmentation, locality, memory, mig, sharing, topology, utilization
from scoring.config import PolicyConfig
from scoring.mig_catalog import COMPUTE_SLICES, MEMORY_SLICES, compute_slices, profiles_for
from scoring.model import (
    GPU_RESOURCE,
    MILLI_PER_GPU,
    GpuNode,
    GpuSample,
    MigStrategy,
    Plan,
    PodRequest,
    ScoreBreakdown,
    SignalResult,
    WorkloadClass,
    mig_profile,
)


def classify(
    class_annotation: str | None, priority: int | None, priority_class: str | None, config: PolicyConfig
) -> WorkloadClass:
    """Workload class; raises ValueError for an annotation that names no class."""
    if class_annotation:
        try:
            return WorkloadClass(class_annotation)
        except ValueError:
            choices = ", ".join(c.value for c in WorkloadClass)
            raise ValueError(f"class {class_annotation!r} is not one of: {choices}") from None
    if priority is not None:
        if priority >= config.classify.priority_threshold:
            return WorkloadClass.LATENCY_CRITICAL
        return WorkloadClass.BATCH
    if priority_class in config.classify.latency_critical_priority_classes:
        return WorkloadClass.LATENCY_CRITICAL
    return WorkloadClass.BATCH


def may_evict(preemptor: WorkloadClass, victim: WorkloadClass) -> bool:
    """Latency-critical pods may evict batch pods; batch pods may evict batch pods only;
    no pod ever evicts a latency-critical one."""
    return victim is WorkloadClass.BATCH


def evaluate(
    nodes: Sequence[GpuNode],
    request: PodRequest,
    samples: Mapping[str, GpuSample],
    now: float,
    config: PolicyConfig,
    workload: fragmentation.Workload | None = None,
) -> list[ScoreBreakdown]:
    """Every node's decision for the pod, best first (feasible first, then by score).
    `workload`: the target workload of the fragmentation signal (None: the signal is off)."""
    spread = locality.model_spread(nodes, request.model or "", request.model_size)
    decisions = [score_node(node, request, spread, samples, now, config, workload) for node in nodes]
    return rank(decisions)


def score_node(
    node: GpuNode,
    request: PodRequest,
    spread: locality.ModelSpread,
    samples: Mapping[str, GpuSample],
    now: float,
    config: PolicyConfig,
    workload: fragmentation.Workload | None = None,
) -> ScoreBreakdown:
    if not node.allocatable and not node.gpus:
        return _rejected(node, {}, "node has no NVIDIA GPUs", "no NVIDIA GPUs", unresolvable=True)
    frag = fragmentation.evaluate(node, request, workload)
    signals: dict[str, SignalResult] = {
        "mig": mig.evaluate(node, request),
        "topology": topology.evaluate(node, request, config.sharing),
        "sharing": sharing.evaluate(node, request, config.sharing, _share_choice(frag)),
        "fragmentation": frag,
        "locality": locality.evaluate(node, request, spread, config.locality),
    }
    plan = signals["mig"].plan.merged(signals["topology"].plan).merged(signals["sharing"].plan)
    signals["utilization"] = utilization.evaluate(node, plan, samples, now, config.utilization)
    signals["memory"] = memory.evaluate(node, request, plan, spread.size if spread else request.model_size or 0)
    failed = [s for s in signals.values() if not s.feasible]
    if failed:
        reason = "; ".join(s.reason for s in failed)
        summary = "; ".join(s.summary or s.reason for s in failed)
        return _rejected(node, signals, reason, summary, unresolvable=any(s.unresolvable for s in failed))

    capacity = capacity_units(node, config.sharing)
    held = held_units(node, config.sharing)
    wanted = request_units(node, request)
    if request.workload_class is WorkloadClass.BATCH and _matches(node, config.headroom.node_selector):
        reserved = config.headroom.fraction * capacity
        if capacity - held - wanted < reserved - 1e-9:
            reason = (
                f"batch pod would leave {max(capacity - held - wanted, 0):g} of {capacity:g} GPUs free; "
                f"{reserved:g} reserved for latency-critical pods"
            )
            summary = "GPUs reserved for latency-critical pods"
            return _rejected(node, signals, reason, summary, unresolvable=wanted > capacity - reserved + 1e-9)

    allocation = min(1.0, (held + wanted) / capacity) if capacity else 1.0
    weights = config.weights[request.workload_class]
    if request.workload_class is WorkloadClass.LATENCY_CRITICAL:
        alloc_term, alloc_reason = 1.0 - allocation, f"{allocation:.0%} allocated after (spread)"
    else:
        alloc_term, alloc_reason = allocation, f"{allocation:.0%} allocated after (pack)"
    num = weights.allocation * alloc_term
    den = weights.allocation
    for name, result in signals.items():
        if result.applicable:
            num += getattr(weights, name) * result.score
            den += getattr(weights, name)
    total = round(num / den, 6) if den else 0.0  # rounded: float noise must not reorder nodes
    reasons = [f"{name}: {s.reason}" for name, s in signals.items() if s.applicable]
    reasons.append(alloc_reason)
    return ScoreBreakdown(node.name, True, False, total, signals, plan, "; ".join(reasons))


def scheduler_scores(decisions: Iterable[ScoreBreakdown]) -> dict[str, int]:
    """The scheduler's 0..10 integer per node (see the module docstring)."""
    decisions = list(decisions)
    totals = [d.total for d in decisions if d.feasible]
    low, high = min(totals, default=0.0), max(totals, default=0.0)
    return {d.node: scheduler_score(d.total, low, high) if d.feasible else 0 for d in decisions}


MIN_SPAN = 0.03
"""The least range of totals scaled onto 1..10. A total is mostly the fragmentation score
1 / (1 + loss / 1000 milli): 0.03 is about a tenth of a GPU of loss where most placements sit
(one to two GPUs), finer than the target workload, estimated from counted pods, can tell."""


def scheduler_score(total: float, low: float, high: float) -> int:
    """A feasible node's integer: 10 - round(9 (high - total) / max(high - low, MIN_SPAN)) over
    the feasible candidates' totals low..high, and at most 9 below the best: a near-tie is
    still decided our way (packing, for batch pods), only not stretched. Non-decreasing in
    `total`; the best gets 10."""
    if total >= high:
        return 10
    return min(9, 10 - round((high - total) * 9 / max(high - low, MIN_SPAN)))


def rank(decisions: Iterable[ScoreBreakdown]) -> list[ScoreBreakdown]:
    """The decisions with their integers, best first."""
    decisions = list(decisions)
    scores = scheduler_scores(decisions)
    scored = [replace(d, score=scores[d.node]) for d in decisions]
    return sorted(scored, key=lambda d: (not d.feasible, -d.score, -d.total, d.node))


def capacity_units(node: GpuNode, shares: sharing.SharingArgs = sharing.SharingArgs()) -> float:
    """The node's GPU capacity in GPUs (shares split the whole GPUs, they add none)."""
    if node.gpu_count:
        return float(node.gpu_count)
    if node.gpus:
        return float(len(node.gpus))
    whole = 0 if node.mig_strategy is MigStrategy.SINGLE else max(
        node.allocatable.get(GPU_RESOURCE, 0), node.allocatable.get(shares.resource, 0) // MILLI_PER_GPU
    )
    return whole + sum(
        count * _mig_units(node, profile) for profile, count in _by_profile(node, node.allocatable).items()
    )


def held_units(node: GpuNode, shares: sharing.SharingArgs = sharing.SharingArgs()) -> float:
    usage = node.usage
    units = sum(_mig_units(node, slot.profile) for slot in usage.mig)
    units += sum(count * _mig_units(node, p) for p, count in _by_profile(node, node.usage.unplanned).items())
    units += (sum(usage.shared.values()) + usage.unplanned.get(shares.resource, 0)) / MILLI_PER_GPU
    if node.mig_strategy is not MigStrategy.SINGLE:
        units += len(usage.gpus) + usage.unplanned.get(GPU_RESOURCE, 0)
    return units


def request_units(node: GpuNode, request: PodRequest) -> float:
    wants = mig.wanted(node, request)
    return topology.whole_gpus(node, request) + request.gpu_milli / MILLI_PER_GPU + sum(
        count * _mig_units(node, profile) for profile, count in wants.items()
    )


def _mig_units(node: GpuNode, profile: str) -> float:
    catalog = profiles_for(node.product) or {}
    if profile in catalog:
        return catalog[profile].mem_slices / MEMORY_SLICES
    return compute_slices(profile) / COMPUTE_SLICES


def _by_profile(node: GpuNode, resources: Mapping[str, int]) -> dict[str, int]:
    """Counts of MIG resources (allocatable or held) keyed by profile."""
    counts = {}
    for resource, n in resources.items():
        profile = mig_profile(resource)
        if profile is not None:
            counts[profile] = n
    if node.mig_strategy is MigStrategy.SINGLE:
        counts[node.single_mig_profile or ""] = resources.get(GPU_RESOURCE, 0)
    return counts


def _share_choice(frag: SignalResult) -> sharing.GpuChoice:
    """The GPU for a share: the one the fragmentation signal planned while it fits, else best fit."""
    planned = frag.plan.share
    if planned is None:
        return sharing.best_fit

    def choose(free: Mapping[int, int], milli: int) -> int:
        if free.get(planned.gpu, 0) >= milli:
            return planned.gpu
        return sharing.best_fit(free, milli)

    return choose


def _matches(node: GpuNode, selector: Mapping[str, str]) -> bool:
    return bool(selector) and all(node.labels.get(k) == v for k, v in selector.items())


def _rejected(
    node: GpuNode, signals: Mapping[str, SignalResult], reason: str, summary: str, *, unresolvable: bool
) -> ScoreBreakdown:
    return ScoreBreakdown(node.name, False, unresolvable, 0.0, dict(signals), Plan(), reason, summary=summary)
