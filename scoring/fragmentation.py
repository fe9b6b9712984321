"""Fragmentation: how much of the expected workload a placement shuts out of a node.

After FGD (Weng et al., USENIX ATC '23, "fragmentation gradient descent"), with a second,
capacity-aware view added to FGD's. The target workload M is a distribution of pod shapes m:
k_m GPUs of g_m milli each (a share of one GPU when g_m < 1000), c_m milli-CPU, the GPU models
S_m it may run on (empty: any), with popularity p_m (sum 1). Each shape weighs

    w_m = p_m * (G / G(m)) / W     G: the cluster's GPUs; G(m): the GPUs of the nodes whose
                                   model is in S_m; W: the sum of p_m G / G(m), so that the
                                   w_m sum to 1 as the p_m do

so a shape that may use only a few of the cluster's GPUs weighs as much per GPU it may use as
any other does per GPU it may use: a node's free capacity is worth what the pods that can run
there can use, and the nodes of a scarce GPU model are kept for the pods that name it. With the
supply unknown w_m = p_m.
(Summing to 1 keeps each half of the loss below non-negative: unnormalised, a shape of a
model with two GPUs in the cluster weighed thousands and every node's loss went to 0.) A
node's GPU count is left out of G(m): fits_m already counts how many m-pods a node can take,
and weighing multi-GPU shapes up by it cost 0.3 point on the default openb list. So is its
CPU, for the same reason: fits_m counts a node's CPU, so the few nodes with CPU enough for a
big pod are kept for it in FGD's half. Weighed up by CPU as well, the 8-GPU pods of 120 cores
that only openb's 39 G3 nodes can hold got 17 times their popularity, and one-GPU pods failed
elsewhere while those nodes were kept: on the multi-GPU lists 1.5 to 2.4 times as many
latency-critical pods failed as without it, more than under FGD (benchmarks/README.md). The
extender knows no node CPU, so this is its G(m) too.
With the cluster's supply known, the
target workload also leaves out shapes no node could hold and adds a fading prior for pods of
a whole largest node (`target_workload`, `PRIOR_PODS`). A node n offers free milli
f_1..f_G on its GPUs, free CPU c(n) (unknown: no limit) and GPU model mu(n). How many m-pods n
could still take, m alone:

    fits_m(n) = 0                                                   if S_m and mu(n) not in S_m
              = min(floor(c(n) / c_m), sum_i floor(f_i / g_m))      share shape (g_m < 1000)
              = min(floor(c(n) / c_m), floor(#{i: f_i = 1000} / k_m))   whole GPUs

Two views of what n can still do for the workload:

    usable(n) = sum_{m: g_m < 1000} w_m * g_m * fits_m(n)   milli the share shapes could still
                                                             use: exact remainders, CPU-starved
    S(n)      = sum_m w_m * (sum_{i: f_i < g_m} f_i  if fits_m(n) > 0  else  sum_i f_i)
                                                        FGD's fragmentation: GPUs too small for m

usable(n) counts the share shapes only: what FGD's half cannot see is a remainder too small
for a second pod of the shape (700 milli free serves one 470-milli pod, not 1.5). For whole-GPU
shapes S(n) already counts a node that can no longer hold them, and counting them twice made
pods open idle 8-GPU nodes rather than fill used ones: with whole shapes in usable(n) Ours
fell 0.1 to 0.2 point behind FGD on lists where multi-GPU pods ask for 35 to 45% of the GPUs,
and ahead without them (benchmarks/README.md says which lists chose this).

Placing pod q (r_q milli in all) on GPUs P of n (n' = n with q on P) costs

    loss(q, n, P) = [usable(n) - usable(n')] + [S(n') - S(n) + r_q]      (each part >= 0)
    score         = 1 / (1 + loss / 1000)

The first part is the share capacity the pod removes, the second FGD's fragmentation gradient
(plus r_q, which is the same on every node): on the Alibaba openb trace either alone does worse
than FGD on some pod list, their sum better on all (benchmarks/README.md); with p_m in place
of w_m it fell behind FGD on lists where a third of the pods name their GPU model. One GPU of loss halves
the score. The GPUs: whole-GPU pods take free whole GPUs (which ones is topology's business); a
share pod takes the GPU with the least loss, ties to the fullest, then lowest index: the
signal's plan names it.

On a `GpuNode`, f_i counts the node's non-MIG GPUs: 1000 less the shares planned on it, 0 when
a plan holds it whole; whole GPUs held by pods without a plan are taken from the free ones, last
index first (shares without a plan are on no known GPU: the sharing signal guards them). c(n)
is `cpu_free_milli` (the extender leaves it unknown), c_m and the pod's CPU its `cpu_milli`.
The signal does not apply without a target workload or to MIG requests (MIG has its own fit).
Where it cannot measure the node (no GPU to share or take whole, as on a MIG single-strategy
node, whose `nvidia.com/gpu` are MIG instances; or the pod does not fit the free milli) it counts

    loss = 2 r_q        (all the pod takes is capacity the workload could use, plus the r_q term)

since, left out, the signal's weight would be left out too and such nodes would win.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scoring.model import (
    GPU_RESOURCE,
    MILLI_PER_GPU,
    GpuNode,
    GpuShare,
    MigStrategy,
    Plan,
    PodRequest,
    SignalResult,
)

MILLI = MILLI_PER_GPU
UNIT = 1000.0
"""Loss that halves the score: one GPU of the workload."""
MEMO_ENTRIES = 1 << 18
"""Measures and placements remembered per workload (about 0.4 kB each); full, the memo starts over."""
_MISSING = object()


PRIOR_PODS = 10
"""The prior: `prior(N)` pseudo-pods of one whole node of the cluster's largest size, added to
the N counted pods. With few pods counted the workload still holds large pods, so a whole idle
8-GPU node is worth keeping (50 pods counted: 3% of the workload). It fades as 1/N because
the pods counted are the evidence (1,000 pods: 0.01%): a constant 10 pseudo-pods, 0.12% of the
openb list, moved near-ties enough to cost a point on a trace list (benchmarks/README.md). It
adds to the counts of a workload that has such pods itself."""


def prior(counted: int) -> float:
    """The prior's pseudo-pods with `counted` pods counted: PRIOR_PODS^2 / (PRIOR_PODS + counted)."""
    return PRIOR_PODS * PRIOR_PODS / (PRIOR_PODS + counted)


@dataclass(frozen=True, slots=True)
class NodeKind:
    """Nodes alike for the target workload: GPU model, GPUs the signal measures (not MIG), CPU
    milli (None: unknown, no limit)."""

    model: str
    gpus: int
    cpu_milli: int | None = None

    def serves(self, shape: Shape) -> bool:
        """Whether the node has GPUs of a model `shape` may use (what G(m) counts)."""
        return bool(self.gpus) and (not shape.models or self.model in shape.models)

    def suits(self, shape: Shape) -> bool:
        """Whether the node's model and CPU suit a pod of `shape` (its GPU count aside)."""
        return self.serves(shape) and (self.cpu_milli is None or self.cpu_milli >= shape.cpu_milli)


@dataclass(frozen=True, slots=True)
class Supply:
    """What the cluster offers the target workload: how many nodes of each kind."""

    nodes: Mapping[NodeKind, int]

    def gpus(self, shape: Shape | None = None) -> int:
        """G(m): the GPUs of the nodes whose model `shape` may use (None: all GPUs)."""
        return sum(kind.gpus * n for kind, n in self.nodes.items() if shape is None or kind.serves(shape))

    def holds(self, shape: Shape) -> bool:
        """Whether some node could hold a pod of `shape` when empty."""
        return any(kind.suits(shape) and kind.gpus >= shape.gpus for kind in self.nodes)

    def largest(self) -> int:
        return max((kind.gpus for kind in self.nodes), default=0)


@dataclass(frozen=True, slots=True)
class FragmentationArgs:
    # The target workload keeps the most frequent shapes covering this share of the counted pods.
    # FGD keeps 95%; 98% also keeps rarer shapes that matter, such as 8-GPU pods (an idle 8-GPU
    # node then counts for them), while the long tail beyond changes the measures little and costs
    # time on every node (benchmarks/README.md).
    coverage: float = 0.98


@dataclass(frozen=True, slots=True)
class Shape:
    """A pod shape of the target workload: `gpus` GPUs of `milli` each (1..999: a share of one)."""

    gpus: int
    milli: int
    cpu_milli: int = 0
    models: frozenset[str] = frozenset()  # GPU models it may run on; empty = any

    @property
    def total(self) -> int:
        return self.gpus * self.milli


@dataclass(frozen=True, eq=False)
class Workload:
    """Target workload: shapes with popularity summing to 1. Compared and hashed by identity, so
    the memoised measures below key on it cheaply; build one per change of the counts."""

    shapes: tuple[tuple[Shape, float], ...]
    weights: tuple[float, ...] = ()
    """w_m per shape, in the order of `shapes` (empty: w_m = p_m)."""
    memo: dict[tuple, Any] = field(default_factory=dict, repr=False)
    """What was computed under this workload (`_measures`, `_place`): goes with it."""


def _remembered(workload: Workload, key: tuple, compute: Callable[[], Any]) -> Any:
    memo = workload.memo
    found = memo.get(key, _MISSING)
    if found is _MISSING:
        if len(memo) >= MEMO_ENTRIES:
            memo.clear()
        found = memo[key] = compute()
    return found


def target_workload(counts: Mapping[Shape, int], coverage: float = 1.0,
                    supply: Supply | None = None) -> Workload:
    """FGD's target workload: the most frequent shapes (ties: larger first), taken until they
    cover `coverage` of the counted pods, then those that ask for GPUs, popularity renormalised
    over them. Non-positive counts are left out. With the cluster's `supply`: shapes no node
    could hold are left out too (they would shape everyone's placement and never run), the
    prior (`PRIOR_PODS`) is added, and the shapes get their weights w_m."""
    counts = {s: n for s, n in counts.items() if n > 0 and (supply is None or supply.holds(s))}
    largest = supply.largest() if supply else 0
    if largest > 1:
        whole = Shape(largest, MILLI)
        counts[whole] = counts.get(whole, 0) + prior(sum(counts.values()))
    ranked = sorted(counts.items(),
                    key=lambda sn: (-sn[1], -sn[0].gpus, -sn[0].milli, -sn[0].cpu_milli,
                                    sorted(sn[0].models)))
    pods = sum(n for _, n in ranked)
    chosen: list[tuple[Shape, int]] = []
    covered = 0
    for shape, n in ranked:
        if covered >= coverage * pods:
            break
        covered += n
        if shape.total:
            chosen.append((shape, n))
    kept = sum(n for _, n in chosen)
    shapes = tuple((s, n / kept) for s, n in chosen)
    return Workload(shapes, shape_weights(shapes, supply) if supply else ())


def shape_weights(shapes: Iterable[tuple[Shape, float]], supply: Supply) -> tuple[float, ...]:
    """w_m = p_m (G / G(m)) / W per shape (see the module docstring)."""
    total = supply.gpus()
    raw = []
    for shape, p in shapes:
        eligible = supply.gpus(shape)
        raw.append(p * total / eligible if eligible > 0 else 0.0)
    norm = sum(raw)
    return tuple(w / norm for w in raw) if norm > 0 else tuple(raw)


def fits(shape: Shape, model: str, cpu_milli: int | None, free: Iterable[int]) -> int:
    """fits_m(n): how many pods of `shape` the free resources could still take."""
    if not shape.total or (shape.models and model not in shape.models):
        return 0
    if shape.milli < MILLI:
        slots = sum(f // shape.milli for f in free)
    else:
        slots = sum(1 for f in free if f >= MILLI) // shape.gpus
    if cpu_milli is not None and shape.cpu_milli > 0:
        slots = min(slots, cpu_milli // shape.cpu_milli)
    return slots


def _measures(workload: Workload, model: str, cpu_milli: int | None, free: tuple[int, ...]
              ) -> tuple[float, float]:
    """(usable(n), S(n)) for free milli `free` sorted in decreasing order, memoised."""
    return _remembered(workload, ("measures", model, cpu_milli, free),
                       lambda: _compute_measures(workload, model, cpu_milli, free))


def _compute_measures(workload: Workload, model: str, cpu_milli: int | None, free: tuple[int, ...]
                      ) -> tuple[float, float]:
    usable_ = stranded_ = 0.0
    for (shape, p), w in zip(workload.shapes, workload.weights or (p for _, p in workload.shapes)):
        n = fits(shape, model, cpu_milli, free)
        if shape.milli < MILLI:
            usable_ += w * shape.milli * n
        stranded_ += w * (sum(f for f in free if f < shape.milli) if n else sum(free))
    return usable_, stranded_


def usable(workload: Workload, model: str, cpu_milli: int | None, free: tuple[int, ...]) -> float:
    """usable(n): the milli the workload's share shapes could still use on the node."""
    return _measures(workload, model, cpu_milli, tuple(sorted(free, reverse=True)))[0]


def stranded(workload: Workload, model: str, cpu_milli: int | None, free: tuple[int, ...]) -> float:
    """S(n): FGD's fragmentation, free milli on GPUs too small for a shape that fits, all free
    milli for one that does not."""
    return _measures(workload, model, cpu_milli, tuple(sorted(free, reverse=True)))[1]


def score(loss: float) -> float:
    return 1.0 / (1.0 + max(loss, 0.0) / UNIT)


@dataclass(frozen=True, slots=True)
class Placement:
    """The GPUs (indices into `free`) a pod would take, and the usable capacity it removes."""

    gpus: tuple[int, ...]
    loss: float


def place(workload: Workload, model: str, cpu_milli: int | None, free: tuple[int, ...],
          gpus: int, milli: int, pod_cpu_milli: int = 0) -> Placement | None:
    """The least-loss placement of a pod of `gpus` x `milli` (and `pod_cpu_milli`) on a node with
    free milli `free` per GPU (by index), or None when it does not fit. Memoised per distinct
    free multiset; indices are mapped back to this node's order."""
    order = tuple(sorted(range(len(free)), key=lambda i: (-free[i], i)))
    ranked = tuple(free[i] for i in order)
    best = _place(workload, model, cpu_milli, ranked, gpus, milli, pod_cpu_milli)
    if best is None:
        return None
    positions, loss = best
    return Placement(tuple(sorted(order[p] for p in positions)), loss)


def _place(workload: Workload, model: str, cpu_milli: int | None, ranked: tuple[int, ...],
           gpus: int, milli: int, pod_cpu_milli: int) -> tuple[tuple[int, ...], float] | None:
    """As `place`, for free milli sorted in decreasing order; positions into `ranked`."""
    return _remembered(workload, ("place", model, cpu_milli, ranked, gpus, milli, pod_cpu_milli),
                       lambda: _compute_place(workload, model, cpu_milli, ranked, gpus, milli, pod_cpu_milli))


def _compute_place(workload: Workload, model: str, cpu_milli: int | None, ranked: tuple[int, ...],
                   gpus: int, milli: int, pod_cpu_milli: int) -> tuple[tuple[int, ...], float] | None:
    if cpu_milli is not None and pod_cpu_milli > cpu_milli:
        return None
    cpu_after = None if cpu_milli is None else cpu_milli - pod_cpu_milli
    before = _measures(workload, model, cpu_milli, ranked)
    request = gpus * milli

    def loss(after: tuple[int, ...]) -> float:
        usable_, stranded_ = _measures(workload, model, cpu_after, after)
        return (before[0] - usable_) + (stranded_ - before[1] + request)

    if gpus == 0:
        return (), loss(ranked)
    if milli >= MILLI:
        whole = [p for p, f in enumerate(ranked) if f >= MILLI]
        if len(whole) < gpus:
            return None
        taken = tuple(whole[-gpus:])  # the same free milli: any whole GPUs do
        return taken, loss(_take(ranked, taken, milli))
    first: dict[int, int] = {}  # free milli -> its first position: the lowest GPU index with it
    for p, f in enumerate(ranked):
        if f >= milli:
            first.setdefault(f, p)
    best: tuple[tuple[int, ...], float] | None = None
    for f in sorted(first):  # fullest fitting GPU first: it wins ties
        p = first[f]
        cost = loss(_take(ranked, (p,), milli))
        if best is None or cost < best[1] - 1e-9:
            best = ((p,), cost)
    return best


def _take(ranked: tuple[int, ...], positions: tuple[int, ...], milli: int) -> tuple[int, ...]:
    after = list(ranked)
    for p in positions:
        after[p] -= milli
    return tuple(sorted(after, reverse=True))


def evaluate(node: GpuNode, request: PodRequest, workload: Workload | None) -> SignalResult:
    if workload is None or not workload.shapes:
        return SignalResult.not_applicable("no target workload")
    if any(request.mig.values()):
        return SignalResult.not_applicable("MIG request")
    indices, free = node_free(node)
    if not indices:
        return _unmeasured(request, "no whole GPUs to fragment")
    gpus, milli = (1, request.gpu_milli) if request.gpu_milli else (request.gpus, MILLI)
    placed = place(workload, node.product, node.cpu_free_milli, free, gpus, milli,
                   request.cpu_milli)
    if placed is None:
        return _unmeasured(request, "does not fit the free GPU milli")
    plan = Plan(share=GpuShare(indices[placed.gpus[0]], milli)) if request.gpu_milli else Plan()
    reason = f"takes {placed.loss / MILLI:.2f} GPU of what the workload could use here"
    return SignalResult(True, score(placed.loss), reason, plan)


def _unmeasured(request: PodRequest, why: str) -> SignalResult:
    """loss = 2 r_q on a node the signal cannot measure (see the module docstring)."""
    loss = 2 * (request.gpus * MILLI + request.gpu_milli)
    reason = f"{why}: counted as taking {loss / MILLI:.2f} GPU of what the workload could use"
    return SignalResult(True, score(loss), reason)


def node_free(node: GpuNode) -> tuple[tuple[int, ...], tuple[int, ...]]:
    """The node's non-MIG GPU indices and the free milli of each (see the module docstring)."""
    if node.mig_strategy is MigStrategy.SINGLE:
        return (), ()
    if node.gpus:
        indices = tuple(g.index for g in node.gpus if not g.mig_enabled)
    else:
        indices = tuple(range(node.gpu_count or node.allocatable.get(GPU_RESOURCE, 0)))
    usage = node.usage
    free = [0 if i in usage.gpus else MILLI - usage.shared.get(i, 0) for i in indices]
    unplanned = usage.unplanned.get(GPU_RESOURCE, 0)
    for p in range(len(free) - 1, -1, -1):
        if unplanned <= 0:
            break
        if free[p] == MILLI:
            free[p] = 0
            unplanned -= 1
    return indices, tuple(free)
