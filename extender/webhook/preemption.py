"""Preemption: which of kube-scheduler's candidate victims on a node make room for the pod.

A pod group's member makes room only inside its group's domain (`scoring/groups.py`), and the
room held for other groups stays taken. Victims must be pods the preemptor may evict (`scoring.policy.may_evict`: latency-critical pods
evict batch pods only; batch pods never evict latency-critical ones). On each node the acceptable
candidates are added lowest priority first until the pod fits; then each chosen victim, highest
priority first, is put back if the pod still fits without evicting it. A node where no acceptable
set makes room is dropped.
"""

from __future__ import annotations

from collections.abc import Mapping, Sequence
from typing import Any

from extender import convert
from extender.cluster import ClusterView
from scoring import policy
from scoring.model import PodRequest


def victims_for(
    view: ClusterView, request: PodRequest, candidates: Mapping[str, Sequence[str]]
) -> dict[str, list[str]]:
    """Node -> victim pod UIDs (subset of `candidates`), for nodes where the pod can fit."""
    config = view.config
    spread = view.model_spread(request)
    group = request.group.name if request.group else None
    domain = view.group_domain(group) if group else None
    if domain is not None:  # a group member makes room inside its group's domain only
        inside = view.domain_nodes(domain)
        candidates = {node: uids for node, uids in candidates.items() if node in inside}
    chosen: dict[str, list[str]] = {}
    for node_name, uids in candidates.items():
        pods = {uid: pod for uid in uids if (pod := view.pod(uid)) is not None}
        acceptable = sorted(
            (uid for uid, pod in pods.items() if _evictable(request, pod, config)),
            key=lambda uid: (_priority(pods[uid]), uid),
        )

        def fits(evicted: list[str]) -> bool:
            node = view.node_without(node_name, evicted, group)
            if node is None:
                return False
            return policy.score_node(node, request, spread, view.samples, view.now(), config).feasible

        victims: list[str] = []
        if not fits(victims):
            for uid in acceptable:
                victims.append(uid)
                if fits(victims):
                    break
            else:
                continue
        for uid in sorted(victims, key=lambda u: -_priority(pods[u])):
            rest = [v for v in victims if v != uid]
            if fits(rest):
                victims = rest
        chosen[node_name] = sorted(victims, key=lambda u: -_priority(pods[u]))
    return chosen


def _evictable(request: PodRequest, pod: Mapping[str, Any], config) -> bool:
    if _priority(pod) >= request.priority:
        return False  # kube-scheduler's rule too: only lower-priority pods are victims
    try:
        victim_class = convert.workload_class_of(pod, config)
    except convert.BadObject:
        return False
    return policy.may_evict(request.workload_class, victim_class)


def _priority(pod: Mapping[str, Any]) -> int:
    return int((pod.get("spec") or {}).get("priority") or 0)
