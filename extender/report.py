"""A pod's decision as JSON-ready data: the dry run's output and the webhook's /explain answer."""

from __future__ import annotations

from collections.abc import Iterable, Mapping
from typing import Any

from extender.annotations import plan_to_dict
from scoring.model import SIGNALS, GpuNode, PodRequest, ScoreBreakdown


def report(request: PodRequest, decisions: Iterable[ScoreBreakdown], nodes: Mapping[str, GpuNode]) -> dict[str, Any]:
    return {
        "pod": request.key,
        "class": request.workload_class.value,
        "nodes": [
            {
                "node": d.node,
                "feasible": d.feasible,
                "score": d.score,
                "signals": {name: round(_signal(d, name), 4) for name in SIGNALS}
                | ({"group": round(_signal(d, "group"), 4)} if request.group is not None else {}),
                "plan": plan_to_dict(d.plan, nodes[d.node]) if d.feasible and d.node in nodes else {},
                "reason": d.reason,
            }
            for d in decisions
        ],
    }


def _signal(decision: ScoreBreakdown, name: str) -> float:
    result = decision.signals.get(name)
    return result.score if result is not None else 0.0
