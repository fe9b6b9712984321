"""Decider: a pod's breakdown on each candidate node, kept between requests until a node changes.

A breakdown depends on the pod's request shape, the node's model, the DCGM samples, the time at
which the node's freshest sample ages past the TTL, the model's spread and the target workload of
the fragmentation signal (ClusterView's `target`). For each request shape the Decider keeps the
Answers it computed (extender/webhook/answers.py); nodes ClusterView reports rebuilt (`changes_since`) are
scored again, and every node when the samples, the target workload's revision or the spread change
or a sample ages out. A request then costs C-speed look-ups per candidate; only changed nodes are
scored. In the server, scoring every node again (hundreds of milliseconds at 5,000 nodes, at each
DCGM refresh or new target workload) is left to a background thread: requests meanwhile answer
from the previous samples for the nodes that did not change otherwise, and score the nodes that
did with the target workload the rest of the shape's answers were scored with. The thread does
not wait for a request to find a shape outdated: it looks every POLL_SECONDS (new samples, a new
target workload, a sample aged past the TTL) and rescores what it finds, so a request after a
change meets answers that already know it, but for the rescoring's own time.

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
from collections.abc import Callable, Mapping, Sequence
from dataclasses import dataclass, replace
from typing import Any

from extender import convert
from extender.webhook.answers import Answers, NodeAnswer
from extender.webhook.members import Members
from extender.cluster import ClusterView
from extender.annotations import plan_to_dict
from extender.report import report
from extender.shapes import Target
from scoring import fragmentation, policy
from scoring.locality import ModelSpread
from scoring.model import GpuNode, GpuSample, Plan, PodRequest, ScoreBreakdown

SHAPES_KEPT = 256
SHAPE_NODES_KEPT = 50_000  # breakdowns kept over all shapes: about 1.2 kB each
EXPLAINED_PODS = 2048
EXPLAINED_NODES = 200_000
POLL_SECONDS = 0.1
UNSCORED = Target(-1, fragmentation.Workload(()))  # a shape's target before it is first scored


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
    request: PodRequest
    seq: int = 0
    samples_revision: int = -1
    target: Target = UNSCORED
    spread: ModelSpread | None = None
    until: float = float("inf")
    answers: Answers = Answers.empty()

    def outdated(self, samples_revision: int, target: Target, now: float) -> bool:
        """Whether every node must be scored again: newer samples or target workload, or a sample
        aged past the TTL."""
        return (self.samples_revision != samples_revision or self.target.revision != target.revision
                or now >= self.until)


class Decider:
    """With `background`, a shape whose every node must be scored again (new DCGM samples, a sample
    aged past the TTL, a new target workload, a new model spread) keeps answering from its current
    Answers, with nodes changed since scored on the spot, while a background thread scores all of
    its nodes and then swaps the result in. Without it (tests, the dry run) the request that finds
    out does the work."""

    def __init__(self, view: ClusterView, background: bool = False):
        self.view = view
        self._shapes: OrderedDict[tuple, _ShapeCache] = OrderedDict()
        self._explained: OrderedDict[str, Decision] = OrderedDict()
        self._explained_nodes = 0
        self._bound: OrderedDict[str, dict[str, Any]] = OrderedDict()  # pod -> what bind wrote, for /explain
        self._lock = threading.Lock()
        self._due: dict[tuple, None] = {}  # shapes waiting for the background rescoring, in order
        self._wake = threading.Condition(self._lock)
        self._busy = False
        self._background = background
        self._members = Members(view)
        if background:
            threading.Thread(target=self._rescore_due, name="rescore", daemon=True).start()

    def request(self, pod: Mapping[str, Any]) -> PodRequest:
        return convert.pod_request(pod, self.view.config)

    def decide(
        self, pod: Mapping[str, Any], names: Sequence[str], sent: Mapping[str, Mapping[str, Any]] | None = None
    ) -> Decision:
        return self.answer(self.request(pod), names, sent)[0]

    def decide_request(self, request: PodRequest, names: Sequence[str]) -> Decision:
        return self.answer(request, names)[0]

    def answers(self, request: PodRequest) -> Answers:
        """The request shape's Answers, brought up to date (nodes changed since are scored again)."""
        with self._lock:
            return self._refreshed(request, ())[1]

    def answer(
        self, request: PodRequest, names: Sequence[str], sent: Mapping[str, Mapping[str, Any]] | None = None
    ) -> tuple[Decision, Answers]:
        """Breakdowns for `names`, and the shape's Answers (with the nodes from `sent`). `sent`
        holds Node objects from the request (nodeCacheCapable false); they are used only for nodes
        the view does not know yet. A pod group's member gets its own decisions, then its group's
        (extender/webhook/members.py)."""
        if request.group is not None:
            alone, _ = self.answer(replace(request, group=None), names, sent)
            records, answers = self._members.answer(request, list(names), list(alone.records))
            return Decision(request, records, alone.unknown), answers
        view = self.view
        with self._lock:
            now, answers, records = self._refreshed(request, names)
        if sent and _missing(records):
            spread = view.model_spread(request)
            answers = answers.updated({
                name: policy.score_node(convert.gpu_node(sent[name], [], now, view.config), request, spread,
                                        view.samples, now, view.config, view.target.workload)
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
        When every node must be scored again, that is done here, or queued for the background
        thread if there is one and the shape has answers to go on with. Called with the lock held."""
        view = self.view
        spread = view.model_spread(request)
        shape = (
            request.workload_class, request.gpus, tuple(sorted(request.mig.items())), request.gpu_milli,
            request.model, request.model_size, request.model_required,
        )
        now, target = view.now(), view.target
        cache = self._shape(shape, request)
        seq, changed = view.changes_since(cache.seq)
        answers = cache.answers
        everything = cache.outdated(view.samples_revision, target, now) or cache.spread != spread
        if changed is None or (everything and not (self._background and answers.records)):
            answers, changed, cache.until = Answers.empty(), [], float("inf")
            cache.samples_revision, cache.target, cache.spread = view.samples_revision, target, spread
        elif everything:
            self._due[shape] = None
            self._wake.notify_all()
        cache.seq = seq
        score = self._scorer(cache, spread, now)
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

    def _scorer(self, cache: _ShapeCache, spread: ModelSpread, now: float) -> Callable[[str], ScoreBreakdown | None]:
        """Scores a node by name for the cache's shape, with the cache's target workload; lowers
        `cache.until` to when its freshest DCGM sample ages past the TTL."""
        view, request, samples, workload = self.view, cache.request, self.view.samples, cache.target.workload

        def score(name: str) -> ScoreBreakdown | None:
            node = view.node(name)
            if node is None:
                return None
            cache.until = min(cache.until, _fresh_until(node, samples, view.config.utilization.ttl_seconds, now))
            return policy.score_node(node, request, spread, samples, now, view.config, workload)

        return score

    def _rescore_due(self) -> None:
        """The background thread: scores every node of a queued shape without holding the lock,
        then, under it, scores the nodes that changed meanwhile and swaps the result in."""
        view = self.view
        while True:
            with self._lock:
                self._busy = False
                self._wake.notify_all()
                while not self._due:
                    view.expire_holds()
                    self._due.update(dict.fromkeys(self._outdated()))
                    if not self._due:
                        self._wake.wait(POLL_SECONDS)
                shape = next(iter(self._due))
                del self._due[shape]
                cache = self._shapes.get(shape)
                if cache is None:
                    continue
                self._busy = True
                start, _ = view.changes_since(cache.seq)
                names, revision, target = list(cache.answers.records), view.samples_revision, view.target
            fresh = _ShapeCache(cache.request, seq=start, samples_revision=revision, target=target)
            fresh.spread, now = view.model_spread(cache.request), view.now()
            score = self._scorer(fresh, fresh.spread, now)
            answers = Answers.empty().updated({name: score(name) for name in names})
            with self._lock:
                if self._shapes.get(shape) is not cache:
                    continue  # dropped meanwhile
                seq, changed = view.changes_since(start)
                if changed is None or view.samples_revision != revision or view.target is not target:
                    self._due[shape] = None  # too much happened meanwhile: once more
                    continue
                fresh.answers = answers.updated({name: score(name) for name in changed})
                fresh.seq = seq
                self._shapes[shape] = fresh

    def _outdated(self) -> list[tuple]:
        """The shapes with answers that are outdated (`_ShapeCache.outdated`). Called with the lock held."""
        view = self.view
        now, revision, target = view.now(), view.samples_revision, view.target
        return [shape for shape, cache in self._shapes.items()
                if cache.answers.records and cache.outdated(revision, target, now)]

    def outdated(self) -> int:
        """Shapes answering from outdated samples or target workload, or being rescored."""
        with self._lock:
            return len(set(self._outdated()) | set(self._due)) + self._busy

    def settled(self, timeout: float = 30.0) -> bool:
        """Whether the background thread has nothing left to do (waits up to `timeout` seconds)."""
        with self._lock:
            return self._wake.wait_for(lambda: not self._due and not self._busy, timeout)

    def _shape(self, shape: tuple, request: PodRequest) -> _ShapeCache:
        cache = self._shapes.get(shape)
        if cache is None:
            cache = self._shapes[shape] = _ShapeCache(request)
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

    def bound(self, key: str, plan: dict[str, Any], breakdown: ScoreBreakdown) -> Plan | None:
        """Record what bind wrote for the pod `key` (the plan in its annotation form); returns the
        plan filter had for that node when bind's differs (other pods took its devices between
        the two), else None."""
        with self._lock:
            decision = self._explained.get(key)
            earlier = decision.breakdowns.get(breakdown.node) if decision is not None else None
            changed = earlier is not None and earlier.feasible and earlier.plan != breakdown.plan
            entry = {"node": breakdown.node, "plan": plan, "total": round(breakdown.total, 4),
                     "reason": breakdown.reason}
            if changed:
                assert earlier is not None
                node = self.view.node(breakdown.node)
                entry["filterTimePlan"] = plan_to_dict(earlier.plan, node) if node else {}
            self._bound.pop(key, None)
            self._bound[key] = entry
            while len(self._bound) > EXPLAINED_PODS:
                self._bound.popitem(last=False)
            return earlier.plan if changed and earlier is not None else None

    def explain(self, namespace: str, name: str) -> dict[str, Any] | None:
        """The pod's last filter-time ranking and, once bound, what bind wrote (`bound`, with the
        filter-time plan for that node beside it when the two differ)."""
        key = f"{namespace}/{name}"
        with self._lock:
            decision = self._explained.get(key)
            bound = self._bound.get(key)
        if decision is None:
            return None
        ranked = policy.rank(decision.breakdowns.values())
        nodes = {d.node: node for d in ranked if (node := self.view.node(d.node)) is not None}
        doc = report(decision.request, ranked, nodes)
        doc["unknownNodes"] = list(decision.unknown)
        group = decision.request.group
        if group is not None:
            doc["group"] = self.view.group_status(group.name) or {"name": group.name, "domain": None}
        if bound is not None:
            doc["bound"] = bound
        return doc


def _missing(records: Sequence[NodeAnswer | None]) -> bool:
    """Whether any candidate has no answer (one C-speed pass: identity tests, no look-ups)."""
    return not all(map(is_not, records, repeat(None)))


def _fresh_until(node: GpuNode, samples: Mapping[str, GpuSample], ttl: float, now: float) -> float:
    """When the first of the node's fresh DCGM samples ages past the TTL (its score changes then)."""
    times = [s.at + ttl for gpu in node.gpus if (s := samples.get(gpu.uuid)) is not None and s.at + ttl >= now]
    return min(times, default=float("inf"))
