"""Model-cache locality: how much of the pod's model is already on the node's SSD.

    fraction = min(1, cached_bytes(node, model) / model_size)
    spread   = nodes holding the model / GPU nodes                   (ImageLocality's scaling)
    score    = fraction * (spread_floor + (1 - spread_floor) * spread)

`model_size` is the size the pod states, else the largest copy cached anywhere in the cluster.
The spread factor keeps one node that alone holds a hot model from winning every pod by a wide
margin (the "node heating" ImageLocality guards against); `spread_floor` keeps the signal from
vanishing in large clusters. A pod that asks for locality as `required` is rejected (and
preemption cannot help) on nodes with less than `required_fraction` of its model.
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass

from scoring.model import GpuNode, PodRequest, SignalResult


@dataclass(frozen=True, slots=True)
class LocalityArgs:
    spread_floor: float = 0.5
    required_fraction: float = 1.0


@dataclass(frozen=True, slots=True)
class ModelSpread:
    """Cluster-wide facts about one model, computed once per pod."""

    size: int
    nodes_with: int
    gpu_nodes: int


def model_spread(nodes: Iterable[GpuNode], model: str, stated_size: int | None) -> ModelSpread:
    gpu_nodes = with_model = largest = 0
    for node in nodes:
        if not node.allocatable and not node.gpus:
            continue
        gpu_nodes += 1
        cached = node.model_cache.get(model, 0)
        if cached > 0:
            with_model += 1
            largest = max(largest, cached)
    return ModelSpread(stated_size or largest, with_model, gpu_nodes)


def evaluate(node: GpuNode, request: PodRequest, spread: ModelSpread, args: LocalityArgs) -> SignalResult:
    if not request.model:
        return SignalResult.not_applicable("pod names no model")
    cached = node.model_cache.get(request.model, 0)
    fraction = min(1.0, cached / spread.size) if spread.size > 0 else 0.0
    if request.model_required and fraction < args.required_fraction:
        return SignalResult.reject(
            f"model {request.model} required, {fraction:.0%} cached here",
            "required model not cached",
            unresolvable=True,
        )
    share = spread.nodes_with / spread.gpu_nodes if spread.gpu_nodes else 0.0
    score = fraction * (args.spread_floor + (1.0 - args.spread_floor) * share)
    if cached == 0:
        reason = f"model {request.model} not cached"
    else:
        reason = (
            f"{fraction:.0%} of {request.model} cached ({_gib(cached)}); "
            f"on {spread.nodes_with}/{spread.gpu_nodes} GPU nodes"
        )
    return SignalResult(True, score, reason)


def _gib(n: int) -> str:
    return f"{n / 2**30:.1f} GiB"
