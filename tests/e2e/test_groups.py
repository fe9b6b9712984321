"""Pod groups through the real kube-scheduler and the shipped configuration: plain pods with
LeaderWorkerSet and JobSet labels (no controllers needed), or in a Workload API gang, on nodes labelled as NVLink
domains.
Each group lands in one domain; a group that fits none stays pending with the reason; a batch
burst while a group is half placed does not take its room; and an extender killed mid-group
still ends with the group in one domain."""

from __future__ import annotations

import time
from collections.abc import Callable

import pytest
from kubernetes import dynamic

from tests.e2e.conftest import RELEASE, Stack, nvlink_node, wait_bound, wait_until
from tests.groups_cluster import CLIQUE, JOBSET, LWS

NAMESPACE = "groups"


def domain_nodes(stack: Stack, pool: str, sizes: dict[str, int]) -> None:
    """8-GPU NVLink nodes in `pool`, labelled as NVLink domains (clique -> node count)."""
    for clique, count in sizes.items():
        for i in range(count):
            item = nvlink_node(f"{pool}-{clique}-{i}", pool)
            item["metadata"]["labels"][CLIQUE] = f"{pool}.{clique}"
            stack.plane.node(item)


def gpu_pod(name: str, gpus: int, pool: str, labels: dict | None = None, annotations: dict | None = None) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": labels or {},
                         "annotations": {"gpu-extender.io/class": "batch", **(annotations or {})}},
            "spec": {"schedulerName": "gpu-scheduler", "priorityClassName": "gpu-batch", "nodeSelector": {"pool": pool},
                     "containers": [{"name": "main", "image": "busybox",
                                     "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}}


def lws_member(set_name: str, worker: int, size: int, gpus: int, pool: str) -> dict:
    labels = {f"{LWS}/name": set_name, f"{LWS}/group-index": "0", f"{LWS}/group-key": f"{set_name}-0",
              f"{LWS}/worker-index": str(worker)}
    return gpu_pod(f"{set_name}-0" + (f"-{worker}" if worker else ""), gpus, pool, labels, {f"{LWS}/size": str(size)})


def clique_of(stack: Stack, node: str) -> str:
    return stack.plane.core.read_node(node).metadata.labels[CLIQUE]


def cliques(stack: Stack, names: list[str], seconds: float = 90) -> set[str]:
    return {clique_of(stack, wait_bound(stack.plane.core, n, NAMESPACE, seconds).spec.node_name) for n in names}


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("groups"))
    yield stack
    stack.stop()


def test_a_leaderworkerset_group_and_a_jobset_job_each_land_in_one_domain(stack):
    domain_nodes(stack, "one", {"a": 3, "b": 4, "c": 5})
    lws = [lws_member("llm", w, 3, 8, "one") for w in range(3)]
    job = [gpu_pod(f"train-w-0-{i}", 8, "one", {f"{JOBSET}/jobset-name": "train",
                                                f"{JOBSET}/replicatedjob-name": "w", f"{JOBSET}/job-index": "0"})
           for i in range(4)]
    for pod in lws + job:  # created at once, as their controllers would
        stack.plane.pod(pod)
    assert cliques(stack, [p["metadata"]["name"] for p in lws]) == {"one.a"}  # the fullest that fits: 3 nodes
    assert cliques(stack, [p["metadata"]["name"] for p in job]) == {"one.b"}


def test_a_group_that_fits_no_domain_stays_pending_with_the_group_and_the_best_domain_named(stack):
    domain_nodes(stack, "two", {"a": 2, "b": 3})
    for w in range(4):
        stack.plane.pod(lws_member("big", w, 4, 8, "two"))
    reason = (f"group {NAMESPACE}/big/big-0 needs 4 pods × 8 GPUs in one {CLIQUE} domain; "
              f"the best ({CLIQUE}=two.b) has room for 3")

    def told() -> str | None:
        events = stack.plane.core.list_namespaced_event(NAMESPACE).items
        return next((e.message for e in events if e.involved_object.name == "big-0"
                     and e.reason == "FailedScheduling" and reason in (e.message or "")), None)

    wait_until(told, f"a FailedScheduling event saying: {reason}", 60)
    assert not stack.plane.core.read_namespaced_pod("big-0", NAMESPACE).spec.node_name


def test_a_batch_burst_while_a_group_is_half_placed_does_not_take_its_room(stack):
    domain_nodes(stack, "three", {"a": 3, "b": 2})
    stack.plane.pod(lws_member("half", 0, 3, 8, "three"))  # the leader first; its workers come later
    leader = wait_bound(stack.plane.core, "half-0", NAMESPACE)
    domain = clique_of(stack, leader.spec.node_name)
    burst = [gpu_pod(f"burst-{i}", 1, "three") for i in range(16)]  # as many GPUs as b has
    for pod in burst:
        stack.plane.pod(pod)
    for pod in burst:
        bound = wait_bound(stack.plane.core, pod["metadata"]["name"], NAMESPACE)
        assert clique_of(stack, bound.spec.node_name) != domain, "a burst pod took the group's held room"
    for w in (1, 2):
        stack.plane.pod(lws_member("half", w, 3, 8, "three"))
    assert cliques(stack, ["half-0", "half-0-1", "half-0-2"]) == {domain}


def test_an_extender_killed_mid_group_still_ends_with_the_group_in_one_domain(stack):
    domain_nodes(stack, "four", {"a": 4, "b": 4})
    stack.plane.pod(lws_member("restart", 0, 4, 8, "four"))
    leader = wait_bound(stack.plane.core, "restart-0", NAMESPACE)
    domain = clique_of(stack, leader.spec.node_name)
    stack.extender.kill()
    for i in range(12):  # queued first, and more than the other domain holds: they would take the room
        stack.plane.pod(gpu_pod(f"during-{i}", 4, "four"))  # were it not held again after the restart
    for w in (1, 2, 3):
        stack.plane.pod(lws_member("restart", w, 4, 8, "four"))
    time.sleep(2)
    stack.extender.start()
    assert cliques(stack, ["restart-0", "restart-0-1", "restart-0-2", "restart-0-3"], 120) == {domain}
    def during_bound() -> int:
        return sum(1 for p in stack.plane.core.list_namespaced_pod(NAMESPACE).items
                   if p.metadata.name.startswith("during-") and p.spec.node_name)

    wait_until(lambda: during_bound() >= 8 or None, "8 batch pods bound in the other domain", 90)
    time.sleep(3)
    assert during_bound() == 8  # the other domain's 32 GPUs; the rest wait


def _workload_api(release: str) -> tuple[tuple[str, ...], Callable[[str, int], dict], Callable[[str], dict]]:
    """For the release under test: the API server flags that serve the Workload API, a gang
    object of a minCount, and the pod spec part that names it."""
    minor = int(release.split(".")[1])
    if minor == 35:
        return (("--feature-gates=GenericWorkload=true", "--runtime-config=scheduling.k8s.io/v1alpha1=true"),
                lambda name, count: {"apiVersion": "scheduling.k8s.io/v1alpha1", "kind": "Workload",
                                     "metadata": {"name": name, "namespace": NAMESPACE},
                                     "spec": {"podGroups": [{"name": "workers",
                                                             "policy": {"gang": {"minCount": count}}}]}},
                lambda name: {"workloadRef": {"name": name, "podGroup": "workers"}})
    version = "v1alpha2" if minor == 36 else "v1beta1"
    return (("--feature-gates=GenericWorkload=true", f"--runtime-config=scheduling.k8s.io/{version}=true"),
            lambda name, count: {"apiVersion": f"scheduling.k8s.io/{version}", "kind": "PodGroup",
                                 "metadata": {"name": name, "namespace": NAMESPACE},
                                 "spec": {"schedulingPolicy": {"gang": {"minCount": count}}}},
            lambda name: {"schedulingGroup": {"podGroupName": name}})


@pytest.fixture(scope="module")
def workload_stack(tmp_path_factory):
    flags, gang, ref = _workload_api(RELEASE)
    stack = Stack(tmp_path_factory.mktemp("workload-api"), api_args=flags)
    yield stack, gang, ref
    stack.stop()


def test_a_workload_api_gang_s_min_count_holds_room_for_members_not_created_yet(workload_stack):
    stack, gang, ref = workload_stack
    plane = stack.plane
    domain_nodes(stack, "five", {"a": 3, "b": 3})
    plane.namespace(NAMESPACE)
    dynamic.DynamicClient(plane.api).resources.get(api_version=gang("x", 1)["apiVersion"],
                                                   kind=gang("x", 1)["kind"]).create(gang("infer", 3), namespace=NAMESPACE)
    pods = dynamic.DynamicClient(plane.api).resources.get(api_version="v1", kind="Pod")  # the typed client
    first = gpu_pod("infer-0", 8, "five")  # knows no workloadRef (1.35)
    first["spec"] |= ref("infer")
    pods.create(first, namespace=NAMESPACE)
    leader = wait_bound(plane.core, "infer-0", NAMESPACE)
    spec = pods.get(name="infer-0", namespace=NAMESPACE).to_dict()["spec"]
    assert set(ref("x")) <= set(spec), "the API server dropped the reference"
    domain = clique_of(stack, leader.spec.node_name)
    batch = [gpu_pod(f"fill-{i}", 8, "five") for i in range(4)]
    for pod in batch:  # one more than the other domain holds
        plane.pod(pod)
    wait_until(lambda: sum(bool(plane.core.read_namespaced_pod(p["metadata"]["name"], NAMESPACE).spec.node_name)
                           for p in batch) >= 3, "three batch pods bound", 60)
    time.sleep(3)
    placed = [plane.core.read_namespaced_pod(p["metadata"]["name"], NAMESPACE).spec.node_name for p in batch]
    assert sum(map(bool, placed)) == 3, placed  # the fourth waits: the gang's room is held (minCount 3)
    assert domain not in {clique_of(stack, n) for n in placed if n}
    for i in (1, 2):
        member = gpu_pod(f"infer-{i}", 8, "five")
        member["spec"] |= ref("infer")
        pods.create(member, namespace=NAMESPACE)
    assert cliques(stack, ["infer-0", "infer-1", "infer-2"]) == {domain}
