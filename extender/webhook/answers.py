"""What filter and prioritize answer, built from one request shape's per-node breakdowns.

At 5,000 candidate nodes a Python statement per candidate costs milliseconds, more than the latency
budget, so the request path works in C-speed passes (`map`, `compress`, `bytes.join`):

* each node's part of the answer is prepared when the node is scored: its FailedNodes entry,
  encoded, or its place among the feasible nodes ordered by total (`NodeAnswer`, `Answers.ranked`);
* the whole-cluster answers (every feasible node passes and is scored; every other node fails) are
  encoded once per Answers. A request whose candidates include every node the shape accepts and
  every node it rejects (the usual case: kube-scheduler sends all nodes its own filters passed)
  gets them after one look-up and one count per candidate. JSON maps and kube-scheduler's host
  list are unordered, so candidate order does not matter. Other requests take a pass per candidate.
* kube-scheduler then sends prioritize the very list filter answered with: a byte comparison with
  that list (`passed_back`) stands for the look-ups.

Prioritize follows `policy.scheduler_score`: the integer is non-decreasing in the total, so over
the feasible candidates sorted by total each integer 1..10 is one contiguous band, found by
bisection. Candidates that are not feasible get 0.

Best only (`best_only`, the default of `serve`): filter passes only the feasible candidates whose
integer is 10 and prioritize gives each candidate it is sent 10 (0 if not feasible). The pod lands
on one of the same nodes as when passing them all: kube-scheduler adds integer x weight x 10 to its
plugins' scores, and with the shipped weight (200) one point (2,000) outweighs every in-tree score
together (at most 1,600), so a node below 10 could never have won. Among the 10s the in-tree
plugins break the tie; those that normalise over the nodes they score may pick another of them than
with every feasible node passed. What changes is kube-scheduler's work: it scores a handful of
nodes instead of all, and the prioritize request and answer carry a handful of names. Nodes left
out are neither passed nor failed (kube-scheduler drops them); the band is empty only when no
candidate is feasible.

Candidate names are assumed distinct, as kube-scheduler sends them.
"""

from __future__ import annotations

from bisect import bisect_left, bisect_right, insort
from collections.abc import Mapping, Sequence
from dataclasses import dataclass, field
from itertools import compress, repeat
from operator import attrgetter, is_not, not_
from typing import Any

from extender.webhook import wire
from scoring import policy
from scoring.model import ScoreBreakdown

UNKNOWN_NODE = "gpu-extender: node unknown (not synced yet?)"


@dataclass(frozen=True, slots=True)
class NodeAnswer:
    """A node's breakdown for one shape, with its FailedNodes entry when it is rejected."""

    breakdown: ScoreBreakdown
    feasible: bool
    unresolvable: bool
    entry: bytes  # `"name":"gpu-extender: reason"`; empty when feasible

    @classmethod
    def of(cls, breakdown: ScoreBreakdown) -> NodeAnswer:
        if breakdown.feasible:
            return cls(breakdown, True, False, b"")
        entry = wire.failed_entry(breakdown.node, f"gpu-extender: {breakdown.summary}")
        return cls(breakdown, False, breakdown.unresolvable, entry)


_feasible = attrgetter("feasible")
_name_json = attrgetter("name_json")


@dataclass(frozen=True, slots=True)
class Ranked:
    """A feasible node in `Answers.ranked`, ordered by (total, name)."""

    total: float
    name: str
    name_json: bytes

    def __lt__(self, other: Ranked) -> bool:
        return (self.total, self.name) < (other.total, other.name)


@dataclass(frozen=True, slots=True)
class Answers:
    """One request shape's answers on the nodes scored so far. Never changed once built (a node
    change makes a new one with `updated`), so a request reads it without a lock."""

    records: dict[str, NodeAnswer]
    ranked: list[Ranked]  # the feasible nodes, ascending
    rejected: int  # how many records are not feasible
    _encoded: dict[tuple[str, bool], bytes] = field(default_factory=dict, compare=False)  # whole-cluster answers

    @classmethod
    def empty(cls) -> Answers:
        return cls({}, [], 0)

    @classmethod
    def of(cls, records: dict[str, NodeAnswer]) -> Answers:
        """Answers made of these records at once (one sort, no per-node insertion)."""
        ranked = sorted(Ranked(r.breakdown.total, name, wire.encode(name)) for name, r in records.items() if r.feasible)
        return cls(records, ranked, len(records) - len(ranked))

    def updated(self, changes: Mapping[str, ScoreBreakdown | None]) -> Answers:
        """A copy with these nodes' breakdowns replaced (None: the node is gone)."""
        if not changes:
            return self
        records, ranked, rejected = dict(self.records), list(self.ranked), self.rejected
        for name, breakdown in changes.items():
            old = records.pop(name, None)
            if old is not None:
                if old.feasible:
                    del ranked[bisect_left(ranked, Ranked(old.breakdown.total, name, b""))]
                else:
                    rejected -= 1
            if breakdown is None:
                continue
            record = records[breakdown.node] = NodeAnswer.of(breakdown)
            if record.feasible:
                insort(ranked, Ranked(breakdown.total, breakdown.node, wire.encode(breakdown.node)))
            else:
                rejected += 1
        return Answers(records, ranked, rejected)

    def covers(self, feasible: int, candidates: int) -> bool:
        """Whether candidates of which `feasible` are feasible include every scored node."""
        return feasible == len(self.ranked) and candidates - feasible == self.rejected

    def encoded(self, verb: str, best_only: bool) -> bytes:
        """The whole-cluster answer for "filter" (NodeNames form) or "prioritize", or for "passing"
        the NodeNames array of that filter answer, as its bytes; `best_only` as the server runs."""
        key = (verb, best_only)
        body = self._encoded.get(key)
        if body is None:
            passing = _best(self.ranked) if best_only else self.ranked
            if verb == "filter":
                body = _filter_result(self.records.values(), [r.name for r in passing], None)
            elif verb == "passing":
                body = b"[" + b",".join(map(_name_json, passing)) + b"]"
            elif best_only:
                body = wire.host_priorities([(10, list(map(_name_json, passing)))])
            else:
                body = _priorities(passing, [])
            self._encoded[key] = body
        return body


def filter_answer(
    answers: Answers, names: Sequence[str], records: Sequence[NodeAnswer | None], unknown: Sequence[str],
    sent: Mapping[str, Any] | None, best_only: bool,
) -> tuple[bytes, int, int]:
    """The ExtenderFilterResult, how many nodes are feasible and how many of them pass (all of
    them, or with `best_only` those scoring 10). `records` are the candidates' answers in
    candidate order, None for the `unknown` ones (not in the view). With `sent` (nodeCacheCapable
    false) the passing nodes go back as Node objects, else as names."""
    if unknown:
        known = list(map(is_not, records, repeat(None)))
        names, records = list(compress(names, known)), list(compress(records, known))
    flags = list(map(_feasible, records))
    feasible = sum(flags)
    if sent is None and not unknown and answers.covers(feasible, len(records)):
        passed = len(_best(answers.ranked)) if best_only else feasible
        return answers.encoded("filter", best_only), feasible, passed
    if best_only and feasible:
        best = {r.name for r in _best(_ranked_among(answers, names))}
        passing = [name for name in names if name in best]
    else:
        passing = list(compress(names, flags))
    rejected = [r for r in records if not r.feasible]
    nodes = {"metadata": {}, "items": [sent[n] for n in passing]} if sent is not None else None
    body = _filter_result(rejected, None if sent is not None else passing, nodes, unknown)
    return body, feasible, len(passing)


def passed_back(answers: Answers, node_names: bytes, best_only: bool) -> bytes | None:
    """The whole-cluster HostPriorityList when a prioritize request's NodeNames (its JSON bytes)
    are exactly the NodeNames of the whole-cluster filter answer, else None.

    kube-scheduler sends prioritize the nodes a filtering extender kept, in the order it answered,
    so after a whole-cluster filter answer this one byte comparison replaces a look-up per node.
    """
    if node_names == answers.encoded("passing", best_only):
        return answers.encoded("prioritize", best_only)
    return None


def prioritize_answer(
    answers: Answers, names: Sequence[str], records: Sequence[NodeAnswer | None], unknown: Sequence[str],
    best_only: bool,
) -> bytes:
    """The HostPriorityList for the candidates `names` (`records`, `unknown` as for filter_answer);
    with `best_only` 10 for each feasible candidate (filter passed only the best)."""
    if best_only:
        feasible = [r is not None and r.feasible for r in records]
        return wire.host_priorities([(0, [wire.encode(n) for n, ok in zip(names, feasible) if not ok]),
                                     (10, [wire.encode(n) for n, ok in zip(names, feasible) if ok])])
    if not unknown:
        flags = list(map(_feasible, records))
        if sum(flags) == len(answers.ranked):  # every feasible node is a candidate
            zeros = list(compress(names, map(not_, flags)))
            if not zeros:
                return answers.encoded("prioritize", False)
            return _priorities(answers.ranked, zeros)
    ranked = _ranked_among(answers, names)
    feasible = {r.name for r in ranked}
    return _priorities(ranked, [n for n in names if n not in feasible])


def _ranked_among(answers: Answers, names: Sequence[str]) -> list[Ranked]:
    """The feasible nodes among `names`, ascending."""
    candidates = set(names)
    return [r for r in answers.ranked if r.name in candidates]


def _best(ranked: list[Ranked]) -> list[Ranked]:
    """The tail of `ranked` (ascending) whose integer over all of `ranked` is 10."""
    if not ranked:
        return ranked
    low, high = ranked[0].total, ranked[-1].total
    return ranked[bisect_left(ranked, 10, key=lambda entry: policy.scheduler_score(entry.total, low, high)):]


def _filter_result(
    rejected: Any, passing: list[str] | None, nodes: dict | None, unknown: Sequence[str] = ()
) -> bytes:
    failed = [r.entry for r in rejected if not r.feasible and not r.unresolvable]
    failed += [wire.failed_entry(name, UNKNOWN_NODE) for name in unknown]
    unresolvable = [r.entry for r in rejected if r.unresolvable]
    return wire.filter_result(nodes, passing, failed, unresolvable)


def _priorities(ranked: Sequence[Ranked], zeros: Sequence[str]) -> bytes:
    bands: list[tuple[int, list[bytes]]] = [(0, [wire.encode(n) for n in zeros])]
    if ranked:
        low, high = ranked[0].total, ranked[-1].total

        def score(entry: Ranked) -> int:
            return policy.scheduler_score(entry.total, low, high)

        start = 0
        for value in range(1, 11):
            end = bisect_right(ranked, value, lo=start, key=score)
            bands.append((value, list(map(_name_json, ranked[start:end]))))
            start = end
    return wire.host_priorities(bands)
