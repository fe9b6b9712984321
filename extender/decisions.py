"""Decider: a pod's breakdown on each candidate node, kept between requests until a node changes.

A breakdown depends on the pod's request shape, the node's model, the DCGM samples, the time at
which the node's freshest sample ages past the TTL, and the model's spread. For each request shape
the Decider keeps the breakdowns it computed and drops those of nodes ClusterView reports rebuilt
(`changes_since`), and all of them when the samples or the spread change or a sample ages out. The
request path is then one dictionary look-up per candidate node; only changed nodes are scored.
"""

from __future__ import annotations

import threading
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from typing import Any

from extender import convert
from extender.cluster import ClusterView
from extender.report import report
from scoring import policy
from scoring.locality import ModelSpread
from scoring.model import GpuNode, GpuSample, PodRequest, ScoreBreakdown

SHAPES_KEPT = 256
EXPLAINED_KEPT = 2048


@dataclass(frozen=True)
class Decision:
    request: PodRequest
    breakdowns: dict[str, ScoreBreakdown]  # candidate name -> breakdown, in candidate order
    unknown: tuple[str, ...]  # candidates the view does not know


@dataclass
class _ShapeCache:
    seq: int = 0
    samples_revision: int = -1
    spread: ModelSpread | None = None
    until: float = float("inf")
    results: dict[str, ScoreBreakdown] = field(default_factory=dict)


class Decider:
    def __init__(self, view: ClusterView):
        self.view = view
        self._shapes: OrderedDict[tuple, _ShapeCache] = OrderedDict()
        self._explained: OrderedDict[str, Decision] = OrderedDict()
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
        spread = view.model_spread(request)
        shape = (
            request.workload_class, request.gpus, tuple(sorted(request.mig.items())),
            request.model, request.model_size, request.model_required,
        )
        with self._lock:
            now = view.now()
            samples, samples_revision = view.samples, view.samples_revision
            cache = self._shape(shape)
            seq, changed = view.changes_since(cache.seq)
            if (changed is None or cache.samples_revision != samples_revision or cache.spread != spread
                    or now >= cache.until):
                cache.results.clear()
                cache.until = float("inf")
            else:
                for name in changed:
                    cache.results.pop(name, None)
            cache.seq, cache.samples_revision, cache.spread = seq, samples_revision, spread
            results = cache.results
            breakdowns: dict[str, ScoreBreakdown] = {}
            unknown = []
            for name in names:
                breakdown = results.get(name)
                if breakdown is None:
                    node = view.node(name)
                    if node is None:
                        if sent and name in sent:
                            node = convert.gpu_node(sent[name], [], now, config)
                            breakdowns[name] = policy.score_node(node, request, spread, samples, now, config)
                        else:
                            unknown.append(name)
                        continue
                    breakdown = results[name] = policy.score_node(node, request, spread, samples, now, config)
                    cache.until = min(cache.until, _fresh_until(node, samples, config.utilization.ttl_seconds, now))
                breakdowns[name] = breakdown
        return Decision(request, breakdowns, tuple(unknown))

    def _shape(self, shape: tuple) -> _ShapeCache:
        cache = self._shapes.get(shape)
        if cache is None:
            cache = self._shapes[shape] = _ShapeCache()
            if len(self._shapes) > SHAPES_KEPT:
                self._shapes.popitem(last=False)
        else:
            self._shapes.move_to_end(shape)
        return cache

    def remember(self, decision: Decision) -> None:
        """Keep the pod's latest decision for /explain (rendered only when asked for)."""
        key = decision.request.key
        with self._lock:
            self._explained[key] = decision
            self._explained.move_to_end(key)
            if len(self._explained) > EXPLAINED_KEPT:
                self._explained.popitem(last=False)

    def explain(self, namespace: str, name: str) -> dict[str, Any] | None:
        with self._lock:
            decision = self._explained.get(f"{namespace}/{name}")
        if decision is None:
            return None
        ranked = policy.rank(decision.breakdowns.values())
        nodes = {d.node: node for d in ranked if (node := self.view.node(d.node)) is not None}
        doc = report(decision.request, ranked, nodes)
        doc["unknownNodes"] = list(decision.unknown)
        return doc


def _fresh_until(node: GpuNode, samples: Mapping[str, GpuSample], ttl: float, now: float) -> float:
    """When the first of the node's fresh DCGM samples ages past the TTL (its score changes then)."""
    times = [s.at + ttl for gpu in node.gpus if (s := samples.get(gpu.uuid)) is not None and s.at + ttl >= now]
    return min(times, default=float("inf"))
