"""Pod groups: every pod of a multi-node job inside one topology domain (an NVLink domain, a rack).

A group is the pods of one LeaderWorkerSet replica, one JobSet job, one PodGroup, ...
(`extender/group_identity.py` says how pods name theirs): `size` members, each asking for what
the member that opened the group asks for.

Domains. Topology levels are node labels, lowest first (`DEFAULT_LEVELS`). At level l a node's
domain is its value of label l; a node without the label is a domain of its own. Levels that no
candidate node carries are skipped, and when no node carries any, the cluster is one domain: it
says nothing about its topology, so no choice could keep a group closer.

Room. A node's room is the members that fit on it now: its free whole GPUs // GPUs per member,
on nodes where the member's own decision is feasible (a member asking for a share or MIG
instances counts one per such node). A domain's room is the sum over its nodes.

Choice, when the first member is filtered:

    level  = the lowest level with a domain whose room >= the members still to place
    domain = among those, the fullest: fewest free whole GPUs, then name

Best fit, so that whole domains stay free for the groups that need them. A latency-critical group
that fits no domain so may evict batch pods (the usual victim rules): the choice is made again
with room = (free whole GPUs + GPUs of evictable pods) // GPUs per member, and among the domains
that fit, the one with the most free GPUs (the fewest evictions). No domain at all: every node is
rejected, naming the group and the best domain at the lowest level.

Each member, afterwards (`apply`, after the pod's own decision on the node):

    required (default): infeasible outside the group's domain
    s = 1 on a node holding room for the group, IN_DOMAIN elsewhere in it, 0 outside (preferred)
    total' = (total + GROUP_WEIGHT * s) / (1 + GROUP_WEIGHT)

Holds. The room the rest of the group needs is planned member by member on the domain's nodes,
fullest node first (emptier nodes stay whole), each member's GPUs as the topology signal would
choose them (`plan_holds`); other pods see those GPUs as taken until the hold expires.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Iterable, Mapping, Sequence
from dataclasses import dataclass, replace

from scoring import fragmentation, topology
from scoring.model import ANNOTATION_PREFIX, MILLI_PER_GPU, GpuNode, Plan, PodRequest, ScoreBreakdown, SignalResult, Usage

CLIQUE = "nvidia.com/gpu.clique"  # GPU Feature Discovery: one value per NVLink (IMEX) domain
DEFAULT_LEVELS = (
    CLIQUE,
    "cloud.google.com/gce-topology-subblock",
    "cloud.google.com/gce-topology-block",
    "topology.k8s.aws/network-node-layer-3",
    "topology.kubernetes.io/zone",
)
REQUIRED, PREFERRED = "required", "preferred"
IN_DOMAIN = 0.5  # a domain node without held room: behind held room, ahead of any other node
GROUP_WEIGHT = 4.0
"""Against a total of 1: a node holding the group's room beats any other node of the domain
(the gap, 0.5 * 4 / 5 = 0.4, is more than the other signals move a total once divided by 5),
and the pod's own total still orders nodes within each kind."""
WHOLE_CLUSTER = "(cluster)"


@dataclass(frozen=True)
class Identity:
    """How pods name their group: the labels or annotations `keys`, all present, whose values
    name it; `size_key`, the one whose value is the group's size (none: counted from its pods)."""

    source: str
    keys: tuple[str, ...]
    size_key: str = ""


LWS = "leaderworkerset.sigs.k8s.io"
JOBSET = "jobset.sigs.k8s.io"
DEFAULT_IDENTITIES = (
    # one LeaderWorkerSet replica, the leader and its workers: group-key is the same on all of
    # them (group-index is not an index in LWS's hash mode); the size annotation counts the leader
    Identity("LeaderWorkerSet", (f"{LWS}/name", f"{LWS}/group-key"), f"{LWS}/size"),
    # one Job of a JobSet's replicated job; no pod key gives its pod count (the Job's
    # parallelism), so it is counted from the pods
    Identity("JobSet", (f"{JOBSET}/jobset-name", f"{JOBSET}/replicatedjob-name", f"{JOBSET}/job-index")),
    # scheduler-plugins coscheduling (current label, then the one before it); size: minMember
    # lives in the PodGroup object, so it is counted from the pods
    Identity("PodGroup", ("scheduling.x-k8s.io/pod-group",)),
    Identity("PodGroup", ("pod-group.scheduling.sigs.k8s.io",)),
    Identity("gpu-extender", (f"{ANNOTATION_PREFIX}/group",), f"{ANNOTATION_PREFIX}/group-size"),
)


@dataclass(frozen=True)
class GroupArgs:
    """`groups` in the policy config."""

    mode: str = REQUIRED
    hold_seconds: float = 300.0
    levels: tuple[str, ...] = DEFAULT_LEVELS
    identities: tuple[Identity, ...] = DEFAULT_IDENTITIES


@dataclass(frozen=True)
class Domain:
    """One domain: the nodes whose label `key` is `value` (`key` empty: the whole cluster;
    `value` a node name with `own`: a node without the label, a domain of its own)."""

    key: str
    value: str
    own: bool = False

    def __str__(self) -> str:
        if not self.key:
            return "the whole cluster"
        if self.own:
            return f"node {self.value} (no {self.key} label)"
        return f"{self.key}={self.value}"

    def holds(self, node: GpuNode) -> bool:
        if not self.key:
            return True
        if self.own:
            return node.name == self.value and self.key not in node.labels
        return node.labels.get(self.key) == self.value


CLUSTER = Domain("", WHOLE_CLUSTER)


def domain_of(node: GpuNode, key: str) -> Domain:
    """The node's domain at the level labelled `key` (empty: the whole cluster)."""
    if not key:
        return CLUSTER
    value = node.labels.get(key)
    return Domain(key, value) if value else Domain(key, node.name, own=True)


def present_levels(nodes: Iterable[GpuNode], levels: Sequence[str]) -> tuple[str, ...]:
    """The levels some node carries, lowest first; the whole cluster ("") when none does."""
    nodes = list(nodes)
    found = tuple(key for key in levels if any(key in n.labels for n in nodes))
    return found or ("",)


def free_gpus(node: GpuNode) -> tuple[int, ...]:
    """The node's whole GPUs that nothing holds, by index."""
    indices, free = fragmentation.node_free(node)
    return tuple(i for i, left in zip(indices, free) if left == MILLI_PER_GPU)


def room(free: int, request: PodRequest) -> int:
    """Members of the request's shape that fit in `free` whole GPUs of a node where the member
    is feasible."""
    return free // request.gpus if request.gpus else 1


@dataclass(frozen=True)
class Shortfall:
    """No domain holds the group: the best one at the lowest level, and its room."""

    needed: int
    level: str
    best: Domain | None
    best_room: int
    unresolvable: bool = False  # evicting pods would not make room either

    def reason(self, group: str, request: PodRequest) -> str:
        what = f"{request.gpus} GPUs" if request.gpus else "its GPU share or MIG instances"
        where = f"one {self.level} domain" if self.level else "the cluster"
        best = f"the best ({self.best}) has room for {self.best_room}" if self.best else "no node has room"
        return f"group {group} needs {self.needed} pods × {what} in {where}; {best}"


def choose(feasible: Sequence[GpuNode], request: PodRequest, needed: int,
           levels: Sequence[str], reclaim: Mapping[str, int] | None = None) -> Domain | Shortfall:
    """The domain for a group whose `needed` members are still to place, among the nodes where
    a member is feasible; with `reclaim` (node -> GPUs of pods the member may evict; its nodes
    count too), the latency-critical second choice (see the module docstring)."""
    keys = present_levels(feasible, levels)
    frees = [len(free_gpus(n)) for n in feasible]
    rooms = [room(f + (reclaim.get(n.name, 0) if reclaim else 0), request) for n, f in zip(feasible, frees)]
    first: Shortfall | None = None
    for key in keys:
        totals: dict[Domain, int] = defaultdict(int)
        free: dict[Domain, int] = defaultdict(int)
        for node, fits, count in zip(feasible, rooms, frees):
            domain = domain_of(node, key)
            totals[domain] += fits
            free[domain] += count
        fitting = [d for d, r in totals.items() if r >= needed]
        if fitting:
            fewest_evictions = -1 if reclaim else 1
            return min(fitting, key=lambda d: (fewest_evictions * free[d], d.key, d.value))
        if first is None:
            best = max(totals, key=lambda d: (totals[d], d.value), default=None)
            first = Shortfall(needed, key, best, totals[best] if best else 0)
    assert first is not None
    return first


def plan_holds(nodes: Sequence[GpuNode], request: PodRequest, count: int) -> dict[str, tuple[int, ...]]:
    """Whole GPUs to hold for `count` more members on the domain's `nodes` (as the group sees
    them: its own holds left out), fullest node first; fewer when fewer fit. Members that ask
    for no whole GPUs hold nothing (their room is counted, not held)."""
    held: dict[str, tuple[int, ...]] = {}
    if not request.gpus or count <= 0:
        return held
    for node in sorted(nodes, key=lambda n: (len(free_gpus(n)), n.name)):
        taken: list[int] = []
        while count > 0 and len(free_gpus(node)) >= request.gpus:
            result = topology.evaluate(node, request)
            gpus = result.plan.gpus if result.feasible and result.plan.gpus else free_gpus(node)[:request.gpus]
            taken += gpus
            node = replace(node, usage=replace(node.usage, gpus=node.usage.gpus | frozenset(gpus)))
            count -= 1
        if taken:
            held[node.name] = tuple(sorted(taken))
        if count <= 0:
            break
    return held


def with_holds(node: GpuNode, gpus: Iterable[int]) -> GpuNode:
    """The node with `gpus` held (counted as taken)."""
    gpus = frozenset(gpus)
    if not gpus:
        return node
    usage = node.usage
    return replace(node, usage=Usage(usage.gpus | gpus, usage.mig, usage.unplanned, usage.shared))


@dataclass(frozen=True)
class Placement:
    """Where a group's members go: its domain and the nodes holding room for it."""

    group: str
    domain: Domain
    held: frozenset[str]
    mode: str = REQUIRED


def evaluate(node: GpuNode, placement: Placement) -> SignalResult:
    """The group signal for one member on one node (see the module docstring)."""
    if placement.domain.holds(node):
        if node.name in placement.held:
            return SignalResult(True, 1.0, f"room held for group {placement.group} in {placement.domain}")
        return SignalResult(True, IN_DOMAIN, f"in the domain of group {placement.group} ({placement.domain})")
    if placement.mode == REQUIRED:
        return outside(placement.domain)
    return SignalResult(True, 0.0, f"outside the group's domain {placement.domain}")


def outside(domain: Domain) -> SignalResult:
    """A node outside the domain of a group in required mode. It names the level, not the domain
    or the group, so one rejection per node and level serves every group (/explain shows the
    group's domain beside it)."""
    reason = f"outside the pod group's {domain.key or 'domain'}"
    return SignalResult.reject(f"{reason} (another {domain.key} domain)" if domain.key else reason, reason,
                               unresolvable=True)


def apply(breakdown: ScoreBreakdown, node: GpuNode, placement: Placement) -> ScoreBreakdown:
    """The member's decision on the node with the group signal added."""
    signal = evaluate(node, placement)
    signals = {**breakdown.signals, "group": signal}
    if not breakdown.feasible:
        return replace(breakdown, signals=signals)
    if not signal.feasible:
        return replace(breakdown, feasible=False, unresolvable=signal.unresolvable, total=0.0, signals=signals,
                       plan=Plan(), reason=signal.reason, summary=signal.summary)
    total = round((breakdown.total + GROUP_WEIGHT * signal.score) / (1 + GROUP_WEIGHT), 6)
    return replace(breakdown, total=total, signals=signals, reason=f"group: {signal.reason}; {breakdown.reason}")


def shortfall(breakdown: ScoreBreakdown, reason: str, unresolvable: bool) -> ScoreBreakdown:
    """A member's decision on a node when no domain holds its group."""
    return replace(breakdown, feasible=False, unresolvable=unresolvable, total=0.0, plan=Plan(),
                   reason=reason, summary=reason)


def by_domain(nodes: Iterable[GpuNode], key: str) -> Mapping[Domain, list[GpuNode]]:
    """The nodes grouped by their domain at the level labelled `key`."""
    out: dict[Domain, list[GpuNode]] = defaultdict(list)
    for node in nodes:
        out[domain_of(node, key)].append(node)
    return out
