"""A pod group member's answer: its own decision on each node, then its group's domain and the
room held for it (`scoring/groups.py`, `extender/groups.py`).

The member's own decisions come from the shape's cached Answers, as for any pod of its shape:
there the room held for its group counts as taken, so the nodes holding it are scored again as
the group sees them. Nodes outside the domain (required mode) get one cached rejection per node
and topology level, shared by every group: a member of a group in one NVLink domain of a
5,000-node cluster costs a look-up per node outside it, and a scoring only of the nodes inside.
"""

from __future__ import annotations

from collections import OrderedDict
from dataclasses import replace

from extender.cluster import ClusterView
from extender.webhook.answers import Answers, NodeAnswer
from scoring import groups, policy
from scoring.groups import REQUIRED, Domain, Shortfall
from scoring.model import Plan, PodRequest, ScoreBreakdown, WorkloadClass

OUTSIDE_KEPT = 100_000  # cached rejections (node, level): 20 levels at 5,000 nodes


class Members:
    def __init__(self, view: ClusterView):
        self.view = view
        self._outside: OrderedDict[tuple[str, str], NodeAnswer] = OrderedDict()

    def answer(self, request: PodRequest, names: list[str], records: list[NodeAnswer | None]
               ) -> tuple[list[NodeAnswer | None], Answers]:
        """The member's answers for the candidates `names`, whose own answers are `records`."""
        view, group = self.view, request.group
        assert group is not None
        feasible = [r.breakdown.node for r in records if r is not None and r.feasible]
        resolvable = [r.breakdown.node for r in records if r is not None and not r.feasible and not r.unresolvable]
        placement, held = view.group_placement(request, feasible, resolvable)
        out: dict[str, NodeAnswer] = {}
        if isinstance(placement, Shortfall):
            reason = placement.reason(group.name, request)
            for name, r in zip(names, records):
                if r is not None:
                    out[name] = NodeAnswer.of(groups.shortfall(r.breakdown, reason, unresolvable=placement.unresolvable
                                                               or request.workload_class is WorkloadClass.BATCH))
            return [out.get(n) for n in names], Answers.of(out)
        inside = view.domain_nodes(placement.domain)
        alone = replace(request, group=None)
        now, spread = view.now(), view.model_spread(alone)
        for name, r in zip(names, records):
            if r is None:
                continue
            if name not in inside and placement.mode == REQUIRED:
                out[name] = self._outside_answer(name, placement.domain)
                continue
            breakdown, node = r.breakdown, view.node(name)
            if name in held:
                node = view.node_for_group(name, group.name)
                if node is not None:
                    breakdown = policy.score_node(node, alone, spread, view.samples, now, view.config,
                                                  view.target.workload)
            if node is not None:
                out[name] = NodeAnswer.of(groups.apply(breakdown, node, placement))
        return [out.get(n) for n in names], Answers.of(out)

    def _outside_answer(self, name: str, domain: Domain) -> NodeAnswer:
        """The rejection of a node outside the group's domain (cached: it names no group)."""
        key = (name, domain.key)
        found = self._outside.get(key)
        if found is None:
            signal = groups.outside(domain)
            breakdown = ScoreBreakdown(name, False, True, 0.0, {"group": signal}, Plan(), signal.reason,
                                       summary=signal.summary)
            found = self._outside[key] = NodeAnswer.of(breakdown)
            while len(self._outside) > OUTSIDE_KEPT:
                self._outside.popitem(last=False)
        return found
