"""Decider: a pod's breakdown on each candidate node, kept between requests until a node changes.

A breakdown depends on the pod's request shape, the node's model, the DCGM samples, the time at
which the node's freshest sample ages past the TTL, and the model's spread. For each request shape
the Decider keeps the Answers it computed (extender/answers.py); nodes ClusterView reports rebuilt
(`changes_since`) are scored again, and every node when the samples or the spread change or a
sample ages out. A request then costs C-speed look-ups per candidate; only changed nodes are scored.

Memory stays bounded at any cluster size: at most SHAPE_NODES_KEPT breakdowns over all shapes
(the least recently used shape goes first; 50,000 is ten shapes at 5,000 nodes). The last
decisions are kept for /explain, each with references to its candidates' breakdowns (mostly shared
with the Answers), up to EXPLAINED_NODES references in all (40 pods at 5,000 nodes).
"""

from __future__ import annotations

import threading
from itertools import repeat
from operator import is_not
from collections import OrderedDict
from collections.abc import Mapping, Sequence
from dataclasses import dataclass
from typing import Any

from extender import convert
from extender.answers import Answers, NodeAnswer
from extender.cluster import ClusterView
from extender.report import report
from scoring import policy
from scoring.locality import ModelSpread
from scoring.model import GpuNode, GpuSample, PodRequest, ScoreBreakdown

SHAPES_KEPT = 256
SHAPE_NODES_KEPT = 50_000  # breakdowns kept over all shapes: about 1.2 kB each
EXPLAINED_PODS = 2048
EXPLAINED_NODES = 200_000


@dataclass(frozen=True)
class Decision:
    request: PodRequest
    records: Sequence[NodeAnswer | None]  # the candidates' answers, in order; None: unknown to the view
    unknown: tuple[str, ...]  # the candidates unknown to the view

    @property
    def breakdowns(self) -> dict[str, ScoreBreakdown]:
        return {r.breakdown.node: r.breakdown for r in self.records if r is not None}


@dataclass
class _ShapeCache:
    seq: int = 0
    samples_revision: int = -1
    spread: ModelSpread | None = None
    until: float = float("inf")
    answers: Answers = Answers.empty()


class Decider:
    def __init__(self, view: ClusterView):
        self.view = view
        self._shapes: OrderedDict[tuple, _ShapeCache] = OrderedDict()
        self._explained: OrderedDict[str, Decision] = OrderedDict()
        self._explained_nodes = 0
        self._lock = threading.Lock()

    def request(self, pod: Mapping[str, Any]) -> PodRequest:
        return convert.pod_request(pod, self.view.config)

    def decide(
        self, pod: Mapping[str, Any], names: Sequence[str], sent: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Decision:
        return self.answer(self.request(pod), names, sent)[0]

    def answers(self, request: PodRequest) -> Answers:
        """The request shape's Answers, brought up to date (nodes changed since are scored again)."""
        with self._lock:
            return self._refreshed(request, ())[1]

    def answer(
        self, request: PodRequest, names: Sequence[str], sent: Mapping[str, Mapping[str, Any]] | None = None
    ) -> tuple[Decision, Answers]:
        """Breakdowns for `names`, and the shape's Answers (with the nodes from `sent`). `sent`
        holds Node objects from the request (nodeCacheCapable false); they are used only for nodes
        the view does not know yet."""
        view = self.view
        with self._lock:
            now, answers, records = self._refreshed(request, names)
        if sent and _missing(records):
            spread = view.model_spread(request)
            answers = answers.updated({
                name: policy.score_node(convert.gpu_node(sent[name], [], now, view.config), request, spread,
                                        view.samples, now, view.config)
                for name, r in zip(names, records) if r is None and name in sent
            })
            records = list(map(answers.records.get, names))
        unknown = tuple(name for name, r in zip(names, records) if r is None) if _missing(records) else ()
        return Decision(request, records, unknown), answers

    def _refreshed(
        self, request: PodRequest, names: Sequence[str]
    ) -> tuple[float, Answers, list[NodeAnswer | None]]:
        """(now, the shape's Answers, the answers for `names`): nodes changed since the last request
        are scored again, and so are `names` the view knows but the shape has not scored yet.
        Called with the lock held."""
        view = self.view
        spread = view.model_spread(request)
        shape = (
            request.workload_class, request.gpus, tuple(sorted(request.mig.items())),
            request.model, request.model_size, request.model_required,
        )
        now = view.now()
        samples, samples_revision = view.samples, view.samples_revision
        cache = self._shape(shape)
        seq, changed = view.changes_since(cache.seq)
        answers = cache.answers
        if (changed is None or cache.samples_revision != samples_revision or cache.spread != spread
                or now >= cache.until):
            answers, changed, cache.until = Answers.empty(), [], float("inf")
        cache.seq, cache.samples_revision, cache.spread = seq, samples_revision, spread

        def score(name: str) -> ScoreBreakdown | None:
            node = view.node(name)
            if node is None:
                return None
            cache.until = min(cache.until, _fresh_until(node, samples, view.config.utilization.ttl_seconds, now))
            return policy.score_node(node, request, spread, samples, now, view.config)

        answers = answers.updated({name: score(name) for name in changed})
        records = list(map(answers.records.get, names))
        if _missing(records):
            answers = answers.updated({
                name: breakdown for name, r in zip(names, records) if r is None and (breakdown := score(name))
            })
            records = list(map(answers.records.get, names))
        grown = len(answers.records) > len(cache.answers.records)
        cache.answers = answers
        if grown:
            self._trim()
        return now, answers, records

    def _shape(self, shape: tuple) -> _ShapeCache:
        cache = self._shapes.get(shape)
        if cache is None:
            cache = self._shapes[shape] = _ShapeCache()
        self._shapes.move_to_end(shape)
        return cache

    def _trim(self) -> None:
        """Drop the least recently used shapes beyond SHAPES_KEPT or SHAPE_NODES_KEPT breakdowns."""
        kept = sum(len(c.answers.records) for c in self._shapes.values())
        while len(self._shapes) > 1 and (len(self._shapes) > SHAPES_KEPT or kept > SHAPE_NODES_KEPT):
            _, dropped = self._shapes.popitem(last=False)
            kept -= len(dropped.answers.records)

    def remember(self, decision: Decision) -> None:
        """Keep the pod's latest decision for /explain (rendered only when asked for)."""
        key = decision.request.key
        with self._lock:
            previous = self._explained.pop(key, None)
            if previous is not None:
                self._explained_nodes -= len(previous.records)
            self._explained[key] = decision
            self._explained_nodes += len(decision.records)
            while len(self._explained) > 1 and (
                    len(self._explained) > EXPLAINED_PODS or self._explained_nodes > EXPLAINED_NODES):
                _, dropped = self._explained.popitem(last=False)
                self._explained_nodes -= len(dropped.records)

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


def _missing(records: Sequence[NodeAnswer | None]) -> bool:
    """Whether any candidate has no answer (one C-speed pass: identity tests, no look-ups)."""
    return not all(map(is_not, records, repeat(None)))


def _fresh_until(node: GpuNode, samples: Mapping[str, GpuSample], ttl: float, now: float) -> float:
    """When the first of the node's fresh DCGM samples ages past the TTL (its score changes then)."""
    times = [s.at + ttl for gpu in node.gpus if (s := samples.get(gpu.uuid)) is not None and s.at + ttl >= now]
    return min(times, default=float("inf"))
