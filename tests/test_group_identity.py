"""Which group a pod belongs to (extender/group_identity.py) and the Workload API's gang sizes
(extender/workload_api.py), from objects shaped as each project writes them."""

from __future__ import annotations

import pytest

from extender import convert, group_identity, workload_api
from scoring.config import PolicyConfig
from scoring.groups import DEFAULT_IDENTITIES
from scoring.model import GroupRef
from tests.groups_cluster import jobset_job, lws_group, pod


def group(p: dict) -> GroupRef | None:
    return group_identity.group_of(p, DEFAULT_IDENTITIES)


def test_leaderworkerset_jobset_podgroup_and_our_own_keys_name_groups():
    leader, worker = lws_group("llm", 2, 4, 4)[:2]
    assert group(leader) == group(worker) == GroupRef("infer/llm/llm-key-2", 4)
    job = jobset_job("train", "workers", 1, 3, 8)
    assert {group(p) for p in job} == {GroupRef("train/train/workers/1", 0)}  # counted from its pods
    assert group(pod("pg", 1, {"scheduling.x-k8s.io/pod-group": "etl"})) == GroupRef("infer/etl", 0)
    ours = pod("own", 1, annotations={"gpu-extender.io/group": "g", "gpu-extender.io/group-size": "5"})
    assert group(ours) == GroupRef("infer/g", 5)
    assert group(pod("alone", 1)) is None


def test_the_workload_api_reference_names_the_group_and_its_gang():
    p = pod("w", 4)
    p["spec"]["schedulingGroup"] = {"podGroupName": "infer-pg"}  # 1.36 and later
    assert group(p) == GroupRef("infer/infer-pg", 0, gang="infer/infer-pg")
    p = pod("w", 4)
    p["spec"]["workloadRef"] = {"name": "wl", "podGroup": "workers", "podGroupReplicaKey": "r1"}  # 1.35
    assert group(p) == GroupRef("infer/wl/workers/r1", 0, gang="infer/wl/workers")
    slim = convert.slim_pod(p)  # the view keeps what names the group
    assert group(slim) == group(p)


def test_a_bad_size_is_a_clear_error_on_the_pod():
    bad = pod("own", 1, annotations={"gpu-extender.io/group": "g", "gpu-extender.io/group-size": "many"})
    with pytest.raises(convert.BadObject, match="gpu-extender.io/group-size='many' is not a group size"):
        convert.pod_request(bad, PolicyConfig())


def test_gang_min_counts_from_pod_groups_and_workloads():
    pod_group = {"apiVersion": "scheduling.k8s.io/v1alpha2", "kind": "PodGroup",
                 "metadata": {"name": "infer-pg", "namespace": "infer"},
                 "spec": {"schedulingPolicy": {"gang": {"minCount": 8}}}}
    assert workload_api.min_counts(pod_group) == {"infer/infer-pg": 8}
    basic = {**pod_group, "spec": {"schedulingPolicy": {"basic": {}}}}
    assert workload_api.min_counts(basic) == {}
    workload = {"apiVersion": "scheduling.k8s.io/v1alpha1", "kind": "Workload",
                "metadata": {"name": "wl", "namespace": "infer"},
                "spec": {"podGroups": [{"name": "workers", "policy": {"gang": {"minCount": 4}}},
                                       {"name": "driver", "policy": {"basic": {}}}]}}
    assert workload_api.min_counts(workload) == {"infer/wl/workers": 4}
