"""The FGD paper's workload: arrival order, inflation to a target share of GPU capacity, and the
target workload's distribution of pod shapes (FGD's "typical pods").

Following the public simulator (hkust-adsl/kubernetes-scheduler-simulator, workload tuning):
the original pods arrive first, in creation_time order (ties by name) or, with order="shuffle",
in a seeded random order (the simulator's --shuffle-pod, used by its published run scripts);
then pods drawn uniformly with replacement from the original list (sorted by name) are appended
until the requested GPU milli reaches `ratio` x cluster GPU capacity. A pod requests
num_gpu x gpu_milli milli-GPU (a share pod 1..999, a k-GPU pod k x 1000). A list already above
the target is cut down by removing random pods, as the simulator does.
"""

from __future__ import annotations

import random
from collections import Counter
from dataclasses import replace
from typing import Literal, NamedTuple

from .openb import Pod

Order = Literal["creation", "shuffle"]
INFLATION_RATIO = 1.3
TYPICAL_POPULARITY = 0.95  # FGD's target workload: the most frequent shapes covering 95% of pods


def arrival_order(pods: list[Pod], order: Order, rng: random.Random) -> list[Pod]:
    if order == "creation":
        return sorted(pods, key=lambda p: (p.creation_time, p.name))
    if order == "shuffle":
        shuffled = sorted(pods, key=lambda p: p.name)
        rng.shuffle(shuffled)
        return shuffled
    raise ValueError(f"unknown arrival order {order!r} (creation or shuffle)")


def inflate(pods: list[Pod], capacity_gpu_milli: int, seed: int, *, ratio: float = INFLATION_RATIO,
            order: Order = "creation") -> list[Pod]:
    """The arrival sequence for one seed: ordered original pods, then resampled ones."""
    if capacity_gpu_milli <= 0:
        raise ValueError("the cluster has no GPU capacity")
    if not any(p.total_gpu_milli for p in pods):
        raise ValueError("no pod requests a GPU: the workload cannot be inflated")
    rng = random.Random(seed)
    target = ratio * capacity_gpu_milli
    arrivals = arrival_order(pods, order, rng)
    total = sum(p.total_gpu_milli for p in arrivals)
    if total > target:
        while total > target:
            total -= arrivals.pop(rng.randrange(len(arrivals))).total_gpu_milli
        return arrivals
    pool = sorted(pods, key=lambda p: p.name)
    i = 0
    while total < target:
        drawn = pool[rng.randrange(len(pool))]
        arrivals.append(replace(drawn, name=f"{drawn.name}-tuned-{i}"))
        total += drawn.total_gpu_milli
        i += 1
    return arrivals


class PodShape(NamedTuple):
    cpu_milli: int
    gpu_milli: int
    num_gpu: int
    gpu_spec: frozenset[str]


def shape(pod: Pod) -> PodShape:
    return PodShape(pod.cpu_milli, pod.gpu_milli, pod.num_gpu, pod.gpu_spec)


def typical_pods(pods: list[Pod], popularity: float = TYPICAL_POPULARITY
                 ) -> list[tuple[PodShape, float]]:
    """FGD's target workload: (shape, probability) for the most frequent shapes, taken in
    decreasing count until they cover `popularity` of the pods, renormalised to sum to 1."""
    counts = Counter(shape(p) for p in pods)
    ranked = sorted(counts.items(), key=lambda kv: (-kv[1], tuple(-x for x in kv[0][:3]),
                                                     sorted(kv[0].gpu_spec)))
    chosen: list[tuple[PodShape, int]] = []
    covered = 0
    for s, n in ranked:
        if covered >= popularity * len(pods):
            break
        chosen.append((s, n))
        covered += n
    return [(s, n / covered) for s, n in chosen]
