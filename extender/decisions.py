"""Decider: a pod's breakdown on each candidate node, cached between watch events.

A breakdown depends on the pod's request shape, the node's model (its revision in ClusterView),
the DCGM samples (their revision, and the moment the node's freshest sample ages past the TTL)
and the model's spread. Filter and prioritize for the same pod, and later pods of the same shape,
recompute only nodes that changed: the request path stays O(candidate nodes) dictionary look-ups.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extender import convert
from extender.cluster import ClusterView
from extender.report import report
from scoring import policy
from scoring.locality import ModelSpread
from scoring.model import GpuNode, PodRequest, ScoreBreakdown

SHAPES_KEPT = 256
EXPLAINED_KEPT = 2048


@dataclass(frozen=True)
class Decision:
    request: PodRequest
    breakdowns: dict[str, ScoreBreakdown]  # candidate name -> breakdown, in candidate order
    unknown: tuple[str, ...]  # candidates the view does not know


class Decider:
    def __init__(self, view: ClusterView):
        self.view = view
        self._cache: OrderedDict[tuple, dict[str, tuple[tuple, ScoreBreakdown]]] = OrderedDict()
        self._explained: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def request(self, pod: Mapping[str, Any]) -> PodRequest:
        return convert.pod_request(pod, self.view.config)

    def decide(
        self, pod: Mapping[str, Any], names: Sequence[str], sent: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Decision:
        """Breakdowns for `names`. `sent` holds Node objects from the request (nodeCacheCapable
        false); they are used only for nodes the view does not know yet."""
        request = self.request(pod)
        view = self.view
        config = view.config
        now = view.now()
        spread = view.model_spread(request.model, request.model_size) if request.model else ModelSpread(0, 0, 0)
        shape = (
            request.workload_class, request.gpus, tuple(sorted(request.mig.items())),
            request.model, request.model_size, request.model_required,
        )
        with self._lock:
            cached = self._cache.get(shape)
            if cached is None:
                cached = self._cache[shape] = {}
                if len(self._cache) > SHAPES_KEPT:
                    self._cache.popitem(last=False)
            else:
                self._cache.move_to_end(shape)
        samples, samples_rev = view.samples, view.samples_revision
        breakdowns: dict[str, ScoreBreakdown] = {}
        unknown = []
        for name in names:
            entry = view.node(name)
            if entry is None:
                if sent and name in sent:
                    node = convert.gpu_node(sent[name], [], now, config)
                    breakdowns[name] = policy.score_node(node, request, spread, samples, now, config)
                else:
                    unknown.append(name)
                continue
            node, revision = entry
            hit = cached.get(name)
            if hit is not None:
                key, breakdown = hit
                if key[0] == revision and key[1] == samples_rev and key[2] == spread and now < key[3]:
                    breakdowns[name] = breakdown
                    continue
            breakdown = policy.score_node(node, request, spread, samples, now, config)
            cached[name] = ((revision, samples_rev, spread, _fresh_until(node, samples, config.utilization.ttl_seconds, now)), breakdown)
            breakdowns[name] = breakdown
        return Decision(request, breakdowns, tuple(unknown))

    def remember(self, decision: Decision, ranked: Sequence[ScoreBreakdown]) -> None:
        """Keep the pod's latest decision for /explain."""
        nodes = {}
        for d in ranked:
            entry = self.view.node(d.node)
            if entry is not None:
                nodes[d.node] = entry[0]
        doc = report(decision.request, ranked, nodes)
        doc["unknownNodes"] = list(decision.unknown)
        with self._lock:
            self._explained[decision.request.key] = doc
            self._explained.move_to_end(decision.request.key)
            if len(self._explained) > EXPLAINED_KEPT:
                self._explained.popitem(last=False)

    def explain(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            return self._explained.get(f"{namespace}/{name}")


def _fresh_until(node: GpuNode, samples: Mapping, ttl: float, now: float) -> float:
    """When the first of the node's fresh DCGM samples ages past the TTL (its score changes then)."""
    times = [s.at + ttl for gpu in node.gpus if (s := samples.get(gpu.uuid)) is not None and s.at + ttl >= now]
    return min(times, default=float("inf"))
