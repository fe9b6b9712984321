"""Placement policies: the FGD paper's peers and FGD itself, as defined by its public simulator.

A policy sees the pod and the feasible node states and returns the chosen node and GPUs
(`Policy.choose`). The baselines are `ScoringPolicy`s: an integer score per node state (higher
is better, as kube-scheduler's 0..100 scores, truncated the same way), the winner drawn
uniformly at random among the nodes with the highest score (kube-scheduler's selectHost), then
`pick_gpus` chooses the GPUs on the winner. Another policy (e.g. the project's `scoring/`) is
one more subclass, or any object with `name` and `choose`.

Notation: for node n and pod p, cpu_left(n), gpu_left(n) = free milli-GPU summed over GPUs,
req_cpu(p), req_gpu(p) = num_gpu x gpu_milli; MAX_CPU = 128000 milli-CPU, MAX_GPU = 8000
milli-GPU (the simulator's normalisation constants).
"""

from __future__ import annotations

import math
import random
from collections.abc import Sequence
from typing import NamedTuple, Protocol

from .cluster import Cluster, NodeState
from .openb import MILLI, Pod
from .workload import PodShape

MAX_CPU = 128_000
MAX_GPU = 8_000
MAX_SCORE = 100


class Candidate(NamedTuple):
    """A feasible node state and the nodes in it (all interchangeable)."""

    state: NodeState
    nodes: Sequence[int]


class Policy(Protocol):
    name: str

    def choose(self, pod: Pod, candidates: Sequence[Candidate], cluster: Cluster,
               rng: random.Random) -> tuple[int, tuple[int, ...]]:
        """The node and GPU indices for pod; candidates is non-empty and all fit."""
        ...


def best_fit_gpus(pod: Pod, gpu_left: list[int]) -> tuple[int, ...]:
    """Share pod: the fitting GPU with the least free milli (lowest index on ties).
    Whole-GPU pod: the first num_gpu fully free GPUs by index."""
    if not pod.num_gpu:
        return ()
    if pod.gpu_milli < MILLI:
        fitting = [g for g, left in enumerate(gpu_left) if left >= pod.gpu_milli]
        return (min(fitting, key=lambda g: (gpu_left[g], g)),)
    return tuple(g for g, left in enumerate(gpu_left) if left == MILLI)[:pod.num_gpu]


class ScoringPolicy:
    """Highest integer score wins; then pick_gpus. Ties go to the node first in `node_rank`
    when the replay sets one (the public simulator prefixes node names with a seeded random
    permutation and its scheduler takes the first best node), else are drawn uniformly."""

    name = "scoring"
    node_rank: list[int] | None = None

    def score(self, pod: Pod, state: NodeState) -> int:
        raise NotImplementedError

    def pick_gpus(self, pod: Pod, gpu_left: list[int], cpu_left: int, model: str,
                  rng: random.Random) -> tuple[int, ...]:
        return best_fit_gpus(pod, gpu_left)

    def choose(self, pod: Pod, candidates: Sequence[Candidate], cluster: Cluster,
               rng: random.Random) -> tuple[int, tuple[int, ...]]:
        best = -math.inf
        winners: list[Candidate] = []
        for c in candidates:
            s = self.score(pod, c.state)
            if s > best:
                best, winners = s, [c]
            elif s == best:
                winners.append(c)
        rank = self.node_rank
        if rank is not None:
            node = min((n for c in winners for n in c.nodes), key=rank.__getitem__)
        else:
            k = rng.randrange(sum(len(c.nodes) for c in winners))
            for c in winners:
                if k < len(c.nodes):
                    node = c.nodes[k]
                    break
                k -= len(c.nodes)
        gpus = self.pick_gpus(pod, cluster.gpu_left(node), cluster.cpu_left(node),
                              cluster.nodes[node].model, rng)
        return node, gpus


class RandomPolicy(ScoringPolicy):
    """Random: a node drawn uniformly among the feasible ones (whatever the tie rule); a share
    pod goes on a GPU drawn uniformly among those with enough free milli, a whole-GPU pod on the
    first fully free GPUs."""

    name = "Random"

    def score(self, pod: Pod, state: NodeState) -> int:
        return 0

    def choose(self, pod: Pod, candidates: Sequence[Candidate], cluster: Cluster,
               rng: random.Random) -> tuple[int, tuple[int, ...]]:
        nodes = [n for c in candidates for n in c.nodes]
        node = nodes[rng.randrange(len(nodes))]
        return node, self.pick_gpus(pod, cluster.gpu_left(node), cluster.cpu_left(node),
                                    cluster.nodes[node].model, rng)

    def pick_gpus(self, pod: Pod, gpu_left: list[int], cpu_left: int, model: str,
                  rng: random.Random) -> tuple[int, ...]:
        if pod.num_gpu == 1 and pod.gpu_milli < MILLI:
            return (rng.choice([g for g, left in enumerate(gpu_left) if left >= pod.gpu_milli]),)
        return best_fit_gpus(pod, gpu_left)


class BestFitPolicy(ScoringPolicy):
    """BestFit: score = int(100 x (1 - [0.5 (cpu_left - req_cpu) / MAX_CPU
    + 0.5 (gpu_left - req_gpu) / MAX_GPU])): least weighted leftover wins. Best-fit GPUs."""

    name = "BestFit"

    def score(self, pod: Pod, state: NodeState) -> int:
        leftover = (0.5 * (state.cpu_left - pod.cpu_milli) / MAX_CPU
                    + 0.5 * (state.gpu_left_total - pod.total_gpu_milli) / MAX_GPU)
        return int((1.0 - leftover) * MAX_SCORE)


class DotProdPolicy(ScoringPolicy):
    """DotProd (Tetris-style, merged GPU dimension, normalised by the max node spec):
    d = (cpu_left / MAX_CPU)(req_cpu / MAX_CPU) + (gpu_left / MAX_GPU)(req_gpu / MAX_GPU),
    score = int(100 x (1 - d / 2)): the smallest dot product wins. Best-fit GPUs."""

    name = "DotProd"

    def score(self, pod: Pod, state: NodeState) -> int:
        d = (state.cpu_left / MAX_CPU * pod.cpu_milli / MAX_CPU
             + state.gpu_left_total / MAX_GPU * pod.total_gpu_milli / MAX_GPU)
        return int(MAX_SCORE * (1.0 - d / 2))


class GpuPackingPolicy(ScoringPolicy):
    """GpuPacking, from high to low preference (pods without GPU score 0 everywhere):
    1. only partially used GPUs needed: max(100 - (sum over used GPUs of
       floor(100 x free_milli / 1000)) // 10, 50);
    2. some fully free GPUs needed on a node already in use: max(50 - free GPUs used, 33);
    3. an idle node: max(33 - its GPU count, its GPU count).
    GPUs are taken least-free first. Best-fit GPUs."""

    name = "GpuPacking"

    def score(self, pod: Pod, state: NodeState) -> int:
        if not pod.total_gpu_milli:
            return 0
        free_gpus = sum(1 for left in state.gpu_left if left == MILLI)
        if free_gpus == state.gpu_count:
            return max(MAX_SCORE // 3 - free_gpus, free_gpus)
        used: list[int] = []
        for left in reversed(state.gpu_left):  # ascending free milli
            if len(used) == pod.num_gpu:
                break
            if left >= pod.gpu_milli:
                used.append(left)
        whole_used = sum(1 for left in used if left == MILLI)
        if whole_used:
            return max(MAX_SCORE // 2 - whole_used, MAX_SCORE // 3)
        return max(MAX_SCORE - sum(left * 100 // MILLI for left in used) // 10, MAX_SCORE // 2)


def _sigmoid(x: float) -> float:
    return 1.0 / (1.0 + math.exp(-x))


class FGDPolicy(ScoringPolicy):
    """FGD (fragmentation gradient descent). A node's fragmentation against the target workload
    M = {(m, p_m)} (typical pod shapes and their frequencies) is
      F(n) = sum_m p_m x frag_m(n), where frag_m(n) = free milli on GPUs with less than
      gpu_milli(m) free if m fits n by GPUs and CPU (and may use n's model), else all of n's free
      GPU milli (also for pods without GPU).
    score = int(100 x sigmoid((F(n) - F(n + pod)) / 1000)): the smallest growth wins. A share
    pod is tried on each GPU that fits, the best kept (lowest index on ties); whole-GPU pods take
    the first fully free GPUs."""

    name = "FGD"

    def __init__(self, typical: list[tuple[PodShape, float]]) -> None:
        self.typical = typical
        self._frag: dict[tuple[str, int, tuple[int, ...]], float] = {}
        self._score: dict[tuple, int] = {}

    def frag(self, model: str, cpu_left: int, gpu_left: tuple[int, ...]) -> float:
        key = (model, cpu_left, gpu_left)
        cached = self._frag.get(key)
        if cached is not None:
            return cached
        total = sum(gpu_left)
        f = 0.0
        if total:
            for m, p in self.typical:
                if (m.gpu_milli and cpu_left >= m.cpu_milli
                        and (not m.gpu_spec or model in m.gpu_spec)
                        and sum(1 for left in gpu_left if left >= m.gpu_milli) >= m.num_gpu):
                    f += p * sum(left for left in gpu_left if left < m.gpu_milli)
                else:
                    f += p * total
        self._frag[key] = f
        return f

    def _after(self, pod: Pod, state: NodeState, taken: tuple[int, ...]) -> float:
        """F of the state once pod takes GPUs at positions `taken` of state.gpu_left."""
        left = list(state.gpu_left)
        for i in taken:
            left[i] -= pod.gpu_milli
        return self.frag(state.model, state.cpu_left - pod.cpu_milli,
                         tuple(sorted(left, reverse=True)))

    def _gain_score(self, before: float, after: float) -> int:
        return int(_sigmoid((before - after) / 1000) * MAX_SCORE)

    def _share_scores(self, pod: Pod, model: str, cpu_left: int, gpu_left: tuple[int, ...]
                      ) -> dict[int, int]:
        """Score of putting a share pod on a GPU with each distinct fitting free milli."""
        state = NodeState(model, 0, 0, len(gpu_left), cpu_left, 0, gpu_left)
        before = self.frag(model, cpu_left, gpu_left)
        out: dict[int, int] = {}
        for i, left in enumerate(gpu_left):
            if left >= pod.gpu_milli and left not in out:
                out[left] = self._gain_score(before, self._after(pod, state, (i,)))
        return out

    def score(self, pod: Pod, state: NodeState) -> int:
        key = (pod.cpu_milli, pod.gpu_milli, pod.num_gpu, state.model, state.cpu_left,
               state.gpu_left)
        cached = self._score.get(key)
        if cached is not None:
            return cached
        if pod.num_gpu == 1 and pod.gpu_milli < MILLI:
            s = max(self._share_scores(pod, state.model, state.cpu_left, state.gpu_left).values())
        else:
            taken = tuple(i for i, left in enumerate(state.gpu_left) if left == MILLI
                          )[:pod.num_gpu]
            before = self.frag(state.model, state.cpu_left, state.gpu_left)
            s = self._gain_score(before, self._after(pod, state, taken))
        self._score[key] = s
        return s

    def pick_gpus(self, pod: Pod, gpu_left: list[int], cpu_left: int, model: str,
                  rng: random.Random) -> tuple[int, ...]:
        if pod.num_gpu == 1 and pod.gpu_milli < MILLI:
            scores = self._share_scores(pod, model, cpu_left, tuple(sorted(gpu_left, reverse=True)))
            best = max(scores.values())
            return (next(g for g, left in enumerate(gpu_left)
                         if left >= pod.gpu_milli and scores[left] == best),)
        return best_fit_gpus(pod, gpu_left)


BASELINES = ("Random", "DotProd", "GpuPacking", "BestFit", "FGD")


def make_policy(name: str, typical: list[tuple[PodShape, float]]) -> ScoringPolicy:
    policies = {"Random": RandomPolicy, "DotProd": DotProdPolicy, "GpuPacking": GpuPackingPolicy,
                "BestFit": BestFitPolicy}
    if name == "FGD":
        return FGDPolicy(typical)
    if name not in policies:
        raise ValueError(f"unknown policy {name!r}; known: {', '.join(BASELINES)}")
    return policies[name]()

