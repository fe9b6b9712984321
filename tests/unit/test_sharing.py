"""GPU sharing (scoring/sharing.py) and how whole-GPU planning and policy see shares.

Expected GPUs and scores follow the rules of scoring/sharing.py's docstring: free(g) = 1000 -
shared(g) - U, best fit (least free, lowest index), score = 1 - (free(g) - m) / 1000.
"""

from __future__ import annotations

from dataclasses import replace

import pytest

from scoring import policy, sharing, topology
from scoring.config import PolicyConfig
from scoring.model import (
    GPU_RESOURCE,
    Gpu,
    GpuNode,
    GpuShare,
    MigSlot,
    MigStrategy,
    Plan,
    PodRequest,
    Usage,
    WorkloadClass,
)

SHARE = sharing.DEFAULT_RESOURCE
ARGS = sharing.SharingArgs()
CONFIG = PolicyConfig()
LC, BATCH = WorkloadClass.LATENCY_CRITICAL, WorkloadClass.BATCH
L40S = "NVIDIA L40S"


def node(
    n: int = 4,
    *,
    shared: dict[int, int] | None = None,
    whole: frozenset[int] = frozenset(),
    unplanned: dict[str, int] | None = None,
    mig: frozenset[int] = frozenset(),
    inventory: bool = True,
    nvlink: bool = True,
    allocatable: dict[str, int] | None = None,
    labels: dict[str, str] | None = None,
) -> GpuNode:
    """n GPUs, those in `mig` MIG-enabled; `shared`: GPU -> milli of planned shares; `whole`:
    GPUs planned whole; the node advertises 1000 milli and one nvidia.com/gpu per non-MIG GPU."""
    plain = n - len(mig)
    return GpuNode(
        name="node",
        allocatable={GPU_RESOURCE: plain, SHARE: 1000 * plain} if allocatable is None else allocatable,
        product=L40S,
        mig_strategy=MigStrategy.MIXED if mig else MigStrategy.NONE,
        gpu_count=n,
        gpus=tuple(Gpu(i, f"GPU-{i}", L40S, 46068, mig_enabled=i in mig) for i in range(n)) if inventory else (),
        nvlink=tuple(tuple(0 if i == j else 4 for j in range(n)) for i in range(n)) if inventory and nvlink else None,
        labels=labels or {},
        usage=Usage(gpus=whole, unplanned=unplanned or {}, shared=shared or {}),
    )


def share_pod(milli: int, cls: WorkloadClass = BATCH) -> PodRequest:
    return PodRequest("ns", "share", cls, gpu_milli=milli)


def whole_pod(gpus: int, cls: WorkloadClass = BATCH) -> PodRequest:
    return PodRequest("ns", "whole", cls, gpus=gpus)


def planned(n: GpuNode, milli: int) -> GpuShare | None:
    return sharing.evaluate(n, share_pod(milli), ARGS).plan.share


# --- the request -------------------------------------------------------------------------------


@pytest.mark.parametrize("milli", [-1, 1000, 2500])
def test_a_share_is_less_than_one_gpu(milli):
    with pytest.raises(ValueError, match="1..999"):
        share_pod(milli)


def test_a_share_pod_asks_for_nothing_else():
    with pytest.raises(ValueError, match="no whole GPUs or MIG"):
        PodRequest("ns", "p", BATCH, gpus=1, gpu_milli=300)
    with pytest.raises(ValueError, match="no whole GPUs or MIG"):
        PodRequest("ns", "p", BATCH, mig={"1g.10gb": 1}, gpu_milli=300)


def test_plans_merge_their_share_and_name_the_gpus_they_touch():
    merged = Plan(gpus=(1,)).merged(Plan(share=GpuShare(3, 250)))
    assert merged == Plan(gpus=(1,), share=GpuShare(3, 250))
    assert Plan(share=GpuShare(3, 250)).merged(Plan()).share == GpuShare(3, 250)
    assert Plan(gpus=(1,), mig=(MigSlot(2, "1g.10gb", 0),), share=GpuShare(3, 250)).physical_gpus == {1, 2, 3}


# --- which GPU ---------------------------------------------------------------------------------


def test_not_applicable_to_pods_without_a_share():
    result = sharing.evaluate(node(), whole_pod(1), ARGS)
    assert result.feasible and not result.applicable and result.plan == Plan()


def test_best_fit_takes_the_fullest_gpu_that_still_fits():
    n = node(shared={0: 800, 1: 600, 2: 300})
    assert planned(n, 200) == GpuShare(0, 200)  # exactly fills GPU 0
    assert planned(n, 300) == GpuShare(1, 300)  # GPU 0 has only 200 left
    assert planned(n, 500) == GpuShare(2, 500)
    assert planned(n, 800) == GpuShare(3, 800)  # only the unshared GPU has 800


def test_ties_go_to_the_lowest_index():
    assert planned(node(shared={1: 500, 3: 500}), 100) == GpuShare(1, 100)
    assert planned(node(), 100) == GpuShare(0, 100)


def test_score_is_the_use_of_the_chosen_gpu_once_the_pod_is_on_it():
    n = node(shared={0: 700})
    assert sharing.evaluate(n, share_pod(300), ARGS).score == pytest.approx(1.0)
    assert sharing.evaluate(n, share_pod(100), ARGS).score == pytest.approx(0.8)
    assert sharing.evaluate(node(), share_pod(250), ARGS).score == pytest.approx(0.25)


def test_another_choice_rule_can_be_plugged_in():
    def emptiest(free, milli):
        return max((g for g, left in free.items() if left >= milli), key=lambda g: (free[g], -g))

    n = node(shared={0: 800, 1: 600})
    result = sharing.evaluate(n, share_pod(100), ARGS, choose=emptiest)
    assert result.plan.share == GpuShare(2, 100)
    assert result.score == pytest.approx(0.1)


def test_gpus_held_whole_or_mig_enabled_are_never_shared():
    n = node(whole=frozenset({0, 1}), mig=frozenset({2}))
    assert planned(n, 100) == GpuShare(3, 100)
    assert sharing.free_milli(n, ARGS) == {3: 1000}


def test_share_milli_without_a_plan_count_against_every_gpu():
    n = node(2, shared={0: 500}, unplanned={SHARE: 300})
    assert sharing.free_milli(n, ARGS) == {0: 200, 1: 700}
    assert planned(n, 200) == GpuShare(0, 200)
    assert planned(n, 700) == GpuShare(1, 700)
    result = sharing.evaluate(n, share_pod(701), ARGS)
    assert not result.feasible and not result.unresolvable


def test_unshared_gpus_are_used_only_when_whole_gpus_without_a_plan_cannot_hold_them_all():
    # 4 GPUs, GPU 0 shared, 3 held whole by pods without a plan: GPUs 1-3 may all be theirs.
    n = node(shared={0: 500}, unplanned={GPU_RESOURCE: 3}, allocatable={GPU_RESOURCE: 4, SHARE: 4000})
    assert sharing.free_milli(n, ARGS) == {0: 500}
    assert planned(n, 500) == GpuShare(0, 500)
    assert not sharing.evaluate(n, share_pod(600), ARGS).feasible
    # Two held without a plan: one of GPUs 1-3 is free, but which is unknown.
    n = node(shared={0: 500}, unplanned={GPU_RESOURCE: 2})
    result = sharing.evaluate(n, share_pod(600), ARGS)
    assert result.plan.share == GpuShare(1, 600) and "tentative" in result.reason


def test_without_the_inventory_gpus_are_numbered_from_the_allocatable_shares():
    n = node(3, inventory=False, shared={0: 900})
    assert sharing.shareable_gpus(n, ARGS) == (0, 1, 2)
    assert planned(n, 100) == GpuShare(0, 100)
    assert planned(n, 200) == GpuShare(1, 200)


def test_the_node_total_is_checked_as_kube_scheduler_counts_it():
    # Four GPUs in the inventory, shares advertised on one: 1000 in all.
    n = node(shared={0: 600}, allocatable={GPU_RESOURCE: 4, SHARE: 1000})
    assert planned(n, 400) == GpuShare(0, 400)
    assert not sharing.evaluate(n, share_pod(401), ARGS).feasible


def test_no_room_is_resolvable_no_share_resource_or_only_mig_gpus_is_not():
    full = sharing.evaluate(node(2, shared={0: 900}, whole=frozenset({1})), share_pod(200), ARGS)
    assert not full.feasible and not full.unresolvable and full.summary == "no GPU with enough free share"
    no_resource = sharing.evaluate(node(allocatable={GPU_RESOURCE: 4}), share_pod(200), ARGS)
    assert no_resource.unresolvable and SHARE in no_resource.reason
    all_mig = sharing.evaluate(node(2, mig=frozenset({0, 1}), allocatable={SHARE: 2000}), share_pod(200), ARGS)
    assert all_mig.unresolvable and "MIG" in all_mig.reason


def test_the_resource_name_comes_from_the_arguments():
    other = sharing.SharingArgs("example.com/vgpu")
    n = node(allocatable={GPU_RESOURCE: 4, "example.com/vgpu": 4000}, unplanned={"example.com/vgpu": 300})
    assert sharing.evaluate(n, share_pod(800), other).plan.share is None  # 700 free at most
    assert sharing.evaluate(n, share_pod(700), other).plan.share == GpuShare(0, 700)
    assert sharing.evaluate(n, share_pod(700), ARGS).unresolvable  # the node offers no gpu-milli


# --- whole GPUs and shares ---------------------------------------------------------------------


def test_whole_gpu_pods_never_get_a_shared_gpu():
    n = node(shared={1: 100, 2: 999})
    result = topology.evaluate(n, whole_pod(2), ARGS)
    assert result.feasible and set(result.plan.gpus) == {0, 3}
    rejected = topology.evaluate(n, whole_pod(3), ARGS)
    assert not rejected.feasible and not rejected.unresolvable and "2 shared" in rejected.reason


def test_whole_gpu_count_without_topology_leaves_out_shared_gpus():
    n = node(inventory=False, shared={0: 300})
    assert topology.evaluate(n, whole_pod(3), ARGS).feasible
    assert not topology.evaluate(n, whole_pod(4), ARGS).feasible


def test_share_milli_without_a_plan_take_the_fewest_gpus_they_fit_on():
    assert sharing.taken_by_shares(node(unplanned={SHARE: 1500}), ARGS) == (frozenset(), 2)
    n = node(shared={0: 100}, unplanned={SHARE: 1001})
    assert sharing.taken_by_shares(n, ARGS) == (frozenset({0}), 2)
    assert topology.evaluate(n, whole_pod(1), ARGS).feasible
    assert not topology.evaluate(n, whole_pod(2), ARGS).feasible


# --- policy ------------------------------------------------------------------------------------


def test_policy_plans_the_share_and_reports_the_signal():
    decision = policy.score_node(node(shared={2: 500}), share_pod(500), None, {}, 0.0, CONFIG)
    assert decision.feasible and decision.plan == Plan(share=GpuShare(2, 500))
    assert decision.signals["sharing"].score == pytest.approx(1.0)
    assert "sharing: 500/1000 of GPU 2" in decision.reason


def test_policy_counts_shares_in_thousandths_of_a_gpu():
    n = node(shared={0: 500, 1: 250}, whole=frozenset({2}), unplanned={SHARE: 250})
    assert policy.held_units(n, ARGS) == pytest.approx(2.0)
    assert policy.request_units(n, share_pod(300)) == pytest.approx(0.3)
    assert policy.capacity_units(n, ARGS) == 4
    bare = GpuNode("bare", allocatable={SHARE: 3000})
    assert policy.capacity_units(bare, ARGS) == 3


def test_batch_shares_respect_the_headroom_kept_for_latency_critical_pods():
    # 4 GPUs, a quarter kept free on inference nodes: 2.9 GPUs held, so 0.1 more is the most.
    n = node(shared={0: 900}, whole=frozenset({1, 2}), labels={"gpu-extender.io/pool": "inference"})
    assert policy.score_node(n, share_pod(100), None, {}, 0.0, CONFIG).feasible
    assert not policy.score_node(n, share_pod(200), None, {}, 0.0, CONFIG).feasible
    assert policy.score_node(n, share_pod(200, LC), None, {}, 0.0, CONFIG).feasible


def test_batch_shares_pack_onto_the_fuller_node():
    sparse, packed = node(), node(shared={1: 400}, whole=frozenset({0}))
    nodes = [replace(sparse, name="sparse"), replace(packed, name="packed")]
    decisions = {d.node: d for d in policy.evaluate(nodes, share_pod(300), {}, 0.0, CONFIG)}
    assert decisions["packed"].score == 10 and decisions["sparse"].score < 10
    assert decisions["packed"].plan.share == GpuShare(1, 300)
