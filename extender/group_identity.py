"""Which pod group a pod belongs to, from what clusters already set on its pods.

The identities of `groups.identities` (defaults in `scoring/groups.py`: LeaderWorkerSet, JobSet,
the scheduler-plugins PodGroup label, our own `gpu-extender.io/group`) are tried in order; the
first whose keys are all set (as labels or annotations) names the group. Then Kubernetes' Workload
API (feature gate GenericWorkload): `spec.schedulingGroup.podGroupName` from 1.36 on,
`spec.workloadRef` (Workload, pod group, replica key) in 1.35. A group's size is its size key's
value where there is one, else 0: counted from the group's pods the cluster view holds, or for
the Workload API its gang's minCount (`gang`: extender/workload_api.py watches those objects).
A scheduler-plugins PodGroup's minMember lives in an object the extender does not watch.
"""

from __future__ import annotations

from collections.abc import Mapping
from typing import Any

from scoring.groups import Identity
from scoring.model import GroupRef

SCHEDULING_GROUP = "schedulingGroup"  # Pod spec field of the Workload API from Kubernetes 1.36
WORKLOAD_REF = "workloadRef"  # its 1.35 form


def keys_read(identities: tuple[Identity, ...]) -> frozenset[str]:
    """Every label or annotation key the identities read: what a slimmed pod must keep."""
    return frozenset(k for i in identities for k in (*i.keys, i.size_key) if k)


def group_of(pod: Mapping[str, Any], identities: tuple[Identity, ...]) -> GroupRef | None:
    """The pod's group, or None; raises ValueError for a size that is not a positive integer."""
    meta = pod.get("metadata") or {}
    labels, notes = meta.get("labels") or {}, meta.get("annotations") or {}
    namespace = meta.get("namespace") or "default"
    for identity in identities:
        values = [labels.get(k) or notes.get(k) for k in identity.keys]
        if all(values):
            name = "/".join((namespace, *map(str, values)))
            value = labels.get(identity.size_key) or notes.get(identity.size_key) if identity.size_key else None
            return GroupRef(name, _size(identity.size_key, value))
    spec = pod.get("spec") or {}
    group = spec.get(SCHEDULING_GROUP)
    if isinstance(group, Mapping) and group.get("podGroupName"):
        name = f"{namespace}/{group['podGroupName']}"
        return GroupRef(name, 0, gang=name)
    ref = spec.get(WORKLOAD_REF)
    if isinstance(ref, Mapping) and ref.get("name"):
        parts = [str(ref[k]) for k in ("name", "podGroup", "podGroupReplicaKey") if ref.get(k)]
        return GroupRef("/".join((namespace, *parts)), 0, gang="/".join((namespace, *parts[:2])))
    return None


def _size(key: str, value: Any) -> int:
    if value is None:
        return 0
    try:
        size = int(str(value))
    except ValueError:
        size = 0
    if size < 1:
        raise ValueError(f"{key}={value!r} is not a group size (a positive integer)")
    return size
