"""The replay driver: one (policy, seed) run places pods one by one and records the GPU
allocation ratio at each arrived-workload percentage; `replay` runs every policy over every
seed (in parallel processes) and takes the median per percentage.

Arrived workload after k pods = GPU milli requested by the first k pods (placed or not) /
cluster GPU capacity; allocation ratio = GPU milli held by placed pods / capacity (both in %).
The value at p% is the one right after the pod whose arrival reaches p%.
"""

from __future__ import annotations

import multiprocessing
import random
import statistics
import time
from collections.abc import Callable
from dataclasses import dataclass
from typing import Literal

from .baselines import BASELINES, Candidate, Policy, ScoringPolicy, make_policy
from .cluster import Cluster, state_fits
from .inference import InferenceView
from .openb import Node, Pod
from .ours import OursPolicy
from .workload import Order, inflate, typical_pods

MAX_ARRIVED_PCT = 130
POLICIES = (*BASELINES, "Ours")
Ties = Literal["rank", "random"]  # among best-scored nodes: first in a seeded node order, or random


@dataclass
class RunResult:
    policy: str
    seed: int
    allocation: list[float]  # index p: allocation ratio (%) at p% arrived, p = 0..130
    placed: int
    failed_latency_critical: int  # over the whole run (to 130% arrived)
    failed_batch: int
    model_pods: int = 0  # inference view: latency-critical GPU pods placed
    model_hits: int = 0  # ... of which on a node caching their model
    saved_seconds: float = 0.0  # ... and the cold-start seconds that saved
    seconds: float = 0.0  # the run's own time (CPU-bound: one process per run)
    failed_latency_critical_at_100: int = 0  # ... until 100% arrived, where allocation is compared


def run(nodes: list[Node], arrivals: list[Pod], policy: Policy, seed: int, *,
        ties: Ties = "rank", on_place: Callable[[Cluster, Pod, int, tuple[int, ...]], None] | None = None,
        inference: InferenceView | None = None) -> RunResult:
    """Replay arrivals on a fresh cluster; each pod is placed once (policy's choice) or fails.
    With `inference`, placements are tallied there (and our policy sees the model caches)."""
    cluster = Cluster(nodes)
    cap = cluster.capacity_gpu_milli
    rng = random.Random(f"schedule-{seed}-{policy.name}")
    if isinstance(policy, ScoringPolicy):
        policy.node_rank = random.Random(f"nodes-{seed}").sample(range(len(nodes)), len(nodes)) \
            if ties == "rank" else None
    if isinstance(policy, OursPolicy):
        policy.inference = inference
    curve = [0.0] * (MAX_ARRIVED_PCT + 1)
    next_pct, arrived, placed, failed_ls, failed_batch = 1, 0, 0, 0, 0
    failed_ls_at_100 = 0
    for pod in arrivals:
        candidates = [Candidate(state, list(members)) for state, members in cluster.groups.items()
                      if state_fits(pod, state)]
        if candidates:
            node, gpus = policy.choose(pod, candidates, cluster, rng)
            cluster.place(pod, node, gpus)
            placed += 1
            if on_place:
                on_place(cluster, pod, node, gpus)
            if inference:
                inference.record(pod, node)
        elif pod.latency_critical:
            failed_ls += 1
        else:
            failed_batch += 1
        arrived += pod.total_gpu_milli
        while next_pct <= MAX_ARRIVED_PCT and arrived * 100 >= next_pct * cap:
            curve[next_pct] = 100 * cluster.allocated_gpu_milli / cap
            if next_pct == 100:
                failed_ls_at_100 = failed_ls
            next_pct += 1
    for p in range(next_pct, MAX_ARRIVED_PCT + 1):
        curve[p] = 100 * cluster.allocated_gpu_milli / cap
    if next_pct <= 100:  # the arrivals never reached 100%: like the curve, the end counts
        failed_ls_at_100 = failed_ls
    tally = (inference.placed, inference.hits, inference.saved_seconds) if inference else ()
    return RunResult(policy.name, seed, curve, placed, failed_ls, failed_batch, *tally,
                     failed_latency_critical_at_100=failed_ls_at_100)


_shared: dict = {}


def _init(nodes: list[Node], pods: list[Pod], order: Order, ties: Ties, ratio: float,
          extra: dict[str, Callable[[], Policy]], latencies: list[float] | None) -> None:
    _shared.update(nodes=nodes, pods=pods, order=order, ties=ties, ratio=ratio, extra=extra,
                   latencies=latencies,
                   typical=typical_pods(pods),
                   capacity=Cluster(nodes).capacity_gpu_milli)


def _job(task: tuple[str, int]) -> RunResult:
    name, seed = task
    s = _shared
    arrivals = inflate(s["pods"], s["capacity"], seed, ratio=s["ratio"], order=s["order"])
    if name in s["extra"]:
        policy = s["extra"][name]()
    elif name == "Ours":
        policy = OursPolicy(s["pods"], nodes=s["nodes"])
    else:
        policy = make_policy(name, s["typical"])
    inference = None if s["latencies"] is None else InferenceView.build(
        arrivals, len(s["nodes"]), s["latencies"], seed)
    start = time.perf_counter()
    result = run(s["nodes"], arrivals, policy, seed, ties=s["ties"], inference=inference)
    result.seconds = time.perf_counter() - start
    return result


def replay(nodes: list[Node], pods: list[Pod], policies: list[str], seeds: list[int], *,
           order: Order = "shuffle", ties: Ties = "rank", ratio: float = 1.3,
           processes: int | None = None,
           extra: dict[str, Callable[[], Policy]] | None = None,
           latencies: list[float] | None = None) -> list[RunResult]:
    """All (policy, seed) runs. `extra` maps more policy names to picklable factories; with
    `latencies` (cold-start seconds to draw from) every run also keeps the inference view."""
    tasks = [(p, s) for p in policies for s in seeds]
    args = (nodes, pods, order, ties, ratio, extra or {}, latencies)
    processes = processes or min(len(tasks), multiprocessing.cpu_count())
    if processes <= 1:
        _init(*args)
        return [_job(t) for t in tasks]
    with multiprocessing.get_context("fork").Pool(processes, _init, args) as pool:
        return pool.map(_job, tasks, chunksize=1)


def median_curves(results: list[RunResult]) -> dict[str, list[float]]:
    by_policy: dict[str, list[list[float]]] = {}
    for r in results:
        by_policy.setdefault(r.policy, []).append(r.allocation)
    return {p: [statistics.median(c[i] for c in curves) for i in range(MAX_ARRIVED_PCT + 1)]
            for p, curves in by_policy.items()}
