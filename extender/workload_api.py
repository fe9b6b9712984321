"""The Workload API's group sizes (scheduling.k8s.io, feature gate GenericWorkload): the gang
`minCount` of each pod group, where the API server serves it, kept current by a watch.

- 1.36 and later: PodGroup objects (v1alpha2, v1beta1 from 1.37), `spec.schedulingPolicy.gang.minCount`;
  a pod names one in `spec.schedulingGroup.podGroupName` (same namespace).
- 1.35: Workload objects (v1alpha1), `spec.podGroups[].policy.gang.minCount`; a pod names one
  in `spec.workloadRef` (Workload name and pod group).
The keys are the `GroupRef.gang` that extender/group_identity.py gives those pods.
"""

from __future__ import annotations

import logging
from collections.abc import Callable, Mapping
from functools import partial
from typing import Any

from kubernetes import client

log = logging.getLogger("gpu_extender")
GROUP = "scheduling.k8s.io"
KINDS = ("podgroups", "workloads")  # preferred first: 1.36 and later serve PodGroup objects


def served(api: client.ApiClient) -> tuple[str, str] | None:
    """(version, plural) of the pod-group kind the API server serves, or None."""
    try:
        groups = client.ApisApi(api).get_api_versions().groups or []
    except Exception as exc:  # discovery failing leaves sizes counted from pods, as without the API
        log.warning("Workload API discovery failed (%s): group sizes are counted from their pods", exc)
        return None
    found = next((g for g in groups if g.name == GROUP), None)
    if found is None:
        return None
    versions = [found.preferred_version.version] + [v.version for v in found.versions]
    for plural in KINDS:
        for version in dict.fromkeys(versions):
            try:
                resources = client.CustomObjectsApi(api).get_api_resources(GROUP, version).resources
            except Exception:
                continue
            if any(r.name == plural for r in resources or ()):
                return version, plural
    return None


def list_call(api: client.ApiClient, version: str, plural: str) -> Callable[..., Any]:
    return partial(client.CustomObjectsApi(api).list_cluster_custom_object, GROUP, version, plural)


def min_counts(obj: Mapping[str, Any]) -> dict[str, int]:
    """Gang key -> minCount for one PodGroup or Workload object (empty for a basic policy)."""
    meta = obj.get("metadata") or {}
    namespace, name = meta.get("namespace") or "default", meta.get("name") or ""
    spec = obj.get("spec") or {}
    if obj.get("kind") == "Workload" or "podGroups" in spec:
        return {f"{namespace}/{name}/{group.get('name')}": count for group in spec.get("podGroups") or ()
                if isinstance(group, Mapping) and (count := _gang((group.get("policy") or {}).get("gang")))}
    count = _gang((spec.get("schedulingPolicy") or {}).get("gang"))
    return {f"{namespace}/{name}": count} if count else {}


def _gang(gang: Any) -> int:
    if not isinstance(gang, Mapping):
        return 0
    count = gang.get("minCount")
    return count if isinstance(count, int) and count > 0 else 0
