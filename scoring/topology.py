"""NVLink topology: for a k-GPU pod, the best set of k free whole GPUs on the node.

Free GPUs are the node's non-MIG GPUs (MIG instances have no peer-to-peer) that no plan holds,
whole or in part: a GPU that a share holds is not free (`scoring.sharing.taken_by_shares`).
Candidate sets are ranked by, best first:

1. every pair joined by NVLink (an NVLink clique: an NVSwitch domain, or a fully meshed board);
2. bottleneck NVLink links (fewest links over the set's pairs);
3. worst PCIe common-ancestor level over the set's pairs (PIX before PXB, PHB, NODE, SYS);
4. total NVLink links in the set;
5. what the choice leaves for the next pod: largest NVLink clique among the remaining free GPUs,
   their NVLink links, then their pairs at each PCIe level (best level first);
6. lowest GPU indices.

Score of the chosen set S (k >= 2):

    clique:      0.7 + 0.3 * min_links(S) / max_links(node)
    otherwise:   0.1 + 0.3 * pcie_quality(worst pair without NVLink) + 0.2 * linked_pairs / pairs

with pcie_quality = 1.0 (same board, PIX), 0.75 (PXB), 0.5 (PHB), 0.25 (NODE), 0.0 (SYS). Any clique
scores at least 0.7, any other set below 0.6. For k = 1 a GPU is still planned (by rule 5) but the
signal does not apply to the score. Without the agent's topology the count of free GPUs decides
feasibility and the score is neutral. On single-strategy MIG nodes `nvidia.com/gpu` means MIG
devices, which have no peer-to-peer: a pod asking for several of them scores 0 here.
"""

from __future__ import annotations

from itertools import combinations
from functools import lru_cache
from math import comb

import networkx as nx

from scoring.model import GPU_RESOURCE, NEUTRAL, GpuNode, MigStrategy, Plan, PodRequest, SignalResult
from scoring.sharing import SharingArgs, taken_by_shares

Matrix = tuple[tuple[int, ...], ...]
PCIE_LEVELS = (0, 10, 20, 30, 40, 50)  # NVML: internal, PIX, PXB, PHB, NODE, SYS
_PCIE_NAMES = {0: "same board", 10: "PIX", 20: "PXB", 30: "PHB", 40: "NODE", 50: "SYS"}
MAX_CANDIDATE_SETS = 20_000


def pcie_quality(level: int) -> float:
    return {0: 1.0, 10: 1.0, 20: 0.75, 30: 0.5, 40: 0.25}.get(level, 0.0)


def whole_gpus(node: GpuNode, request: PodRequest) -> int:
    """Whole GPUs the pod wants on this node (on single-strategy MIG nodes `nvidia.com/gpu` is MIG)."""
    return 0 if node.mig_strategy is MigStrategy.SINGLE else request.gpus


def evaluate(node: GpuNode, request: PodRequest, sharing: SharingArgs = SharingArgs()) -> SignalResult:
    k = whole_gpus(node, request)
    if k == 0:
        if node.mig_strategy is MigStrategy.SINGLE and request.gpus > 1:
            return SignalResult(True, 0.0, f"{request.gpus} MIG devices: MIG has no peer-to-peer")
        return SignalResult.not_applicable("no whole-GPU request")
    allocatable = node.allocatable.get(GPU_RESOURCE, 0)
    if allocatable == 0:
        return SignalResult.reject(
            f"node offers no whole GPUs ({GPU_RESOURCE})", "no whole GPUs on node", unresolvable=True
        )
    unplanned = node.usage.unplanned.get(GPU_RESOURCE, 0)
    shared, unplanned_shared = taken_by_shares(node, sharing)
    shared_count = len(shared - node.usage.gpus) + unplanned_shared
    free_count = allocatable - len(node.usage.gpus) - unplanned - shared_count
    if free_count < k:
        return SignalResult.reject(
            f"needs {k} GPUs, {max(free_count, 0)} of {allocatable} free"
            + (f" ({shared_count} shared)" if shared_count else ""),
            "not enough free GPUs",
            unresolvable=allocatable < k,
        )
    if node.nvlink is None or not node.gpus:
        return _neutral(k, "no topology data; free by allocatable")
    taken = node.usage.gpus | shared
    free = [g.index for g in node.gpus if not g.mig_enabled and g.index not in taken]
    if len(free) < k:
        return _neutral(k, "topology data disagrees with allocatable; free by allocatable")
    choice = _choose(node.nvlink, node.pcie, tuple(free), k)
    if choice is None:
        return _neutral(k, f"too many GPU sets to compare ({len(free)} free)")
    chosen, score, reason = choice
    unknown = unplanned + unplanned_shared
    tentative = f"; {unknown} held by pods without a plan, so the plan is tentative" if unknown else ""
    plan = Plan(gpus=chosen)
    if k == 1:
        return SignalResult(True, NEUTRAL, f"GPU {chosen[0]}{tentative}", plan, applicable=False)
    return SignalResult(True, score, reason + tentative, plan)


@lru_cache(maxsize=65_536)
def _choose(nvlink: Matrix, pcie: Matrix | None, free: tuple[int, ...], k: int) -> tuple[tuple[int, ...], float, str] | None:
    """Best set, its score and reason. A pure function of its arguments, memoised: nodes of one
    hardware shape with the same free GPUs share the answer."""
    node = GpuNode(name="", nvlink=nvlink, pcie=pcie)
    chosen = best_set(node, list(free), k)
    if chosen is None:
        return None
    if k == 1:
        return chosen, NEUTRAL, ""
    score, reason = _score(node, chosen)
    return chosen, score, reason


def _neutral(k: int, reason: str) -> SignalResult:
    return SignalResult(True, NEUTRAL, reason, applicable=k > 1)


def link_graph(node: GpuNode, gpus: list[int]) -> nx.Graph:
    """NVLink graph over `gpus`: an edge per pair with at least one link, weighted by links."""
    graph = nx.Graph()
    graph.add_nodes_from(gpus)
    matrix = node.nvlink or ()
    for a, b in combinations(gpus, 2):
        links = matrix[a][b]
        if links > 0:
            graph.add_edge(a, b, links=links)
    return graph


def best_set(node: GpuNode, free: list[int], k: int) -> tuple[int, ...] | None:
    """The best k-subset of `free` by the ranking in the module docstring (None if too many)."""
    graph = link_graph(node, free)
    candidates: set[tuple[int, ...]] = set()
    if k > 1:
        for clique in nx.find_cliques(graph):
            if len(clique) >= k:
                candidates.update(combinations(sorted(clique), k))
    if not candidates:
        if comb(len(free), k) > MAX_CANDIDATE_SETS:
            return None
        candidates = set(combinations(sorted(free), k))
    return max(candidates, key=lambda s: _rank(node, graph, free, s))


def _rank(node: GpuNode, graph: nx.Graph, free: list[int], chosen: tuple[int, ...]) -> tuple:
    pairs = list(combinations(chosen, 2))
    links = [graph.edges[p]["links"] if graph.has_edge(*p) else 0 for p in pairs]
    is_clique = all(links)
    bottleneck = min(links) if links else 0
    worst_pcie = max((_pcie(node, *p) for p in pairs), default=0)
    rest = [g for g in free if g not in chosen]
    rest_graph = graph.subgraph(rest)
    rest_clique = max((len(c) for c in nx.find_cliques(rest_graph)), default=0)
    rest_links = sum(d["links"] for _, _, d in rest_graph.edges(data=True))
    rest_pcie = tuple(
        sum(1 for p in combinations(rest, 2) if _pcie(node, *p) == level) for level in PCIE_LEVELS
    )
    return (
        is_clique, bottleneck, -worst_pcie, sum(links),
        rest_clique, rest_links, rest_pcie, tuple(-g for g in chosen),
    )


def _score(node: GpuNode, chosen: tuple[int, ...]) -> tuple[float, str]:
    matrix = node.nvlink or ()
    pairs = list(combinations(chosen, 2))
    links = [matrix[a][b] for a, b in pairs]
    gpus = ",".join(map(str, chosen))
    if all(links):
        max_links = max(max(row) for row in matrix)
        score = 0.7 + 0.3 * min(links) / max_links
        return score, f"GPUs {gpus} all NVLink-connected (bottleneck NV{min(links)})"
    worst = max(_pcie(node, a, b) for (a, b), n in zip(pairs, links) if n == 0)
    linked = sum(1 for n in links if n) / len(pairs)
    score = 0.1 + 0.3 * pcie_quality(worst) + 0.2 * linked
    return score, (
        f"GPUs {gpus}: {sum(1 for n in links if n)}/{len(pairs)} pairs on NVLink, "
        f"worst path {_PCIE_NAMES.get(worst, worst)}"
    )


def _pcie(node: GpuNode, a: int, b: int) -> int:
    return node.pcie[a][b] if node.pcie is not None else 50
