"""NVLink/PCIe topology signal (scoring/topology.py) on hand-built nodes.

The machines are the reference topologies of shared/reference/gpu/topologies.md. Expected plans are
derived from the link matrices (which pairs have NVLink, which PCIe level joins them), not copied
from the implementation's output.
"""

from __future__ import annotations

from itertools import combinations

import pytest

from scoring import topology
from scoring.model import (
    GPU_RESOURCE,
    NEUTRAL,
    Gpu,
    GpuNode,
    MigStrategy,
    PodRequest,
    Usage,
    WorkloadClass,
)

PIX, PXB, PHB, NODE, SYS = 10, 20, 30, 40, 50

# ---------------------------------------------------------------------------------------------
# Reference machines
# ---------------------------------------------------------------------------------------------


def uniform(n: int, value: int) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(0 if i == j else value for j in range(n)) for i in range(n))


def by_socket(n: int, per_socket: int, inside: int, across: int = SYS) -> tuple[tuple[int, ...], ...]:
    """PCIe levels: `inside` between GPUs of the same socket, `across` between sockets."""
    return tuple(
        tuple(0 if i == j else inside if i // per_socket == j // per_socket else across for j in range(n))
        for i in range(n)
    )


# Section 2: 8x H100 SXM, NVSwitch, every pair NV18; GPUs 0-3 on NUMA 0, 4-7 on NUMA 1.
H100_NVLINK = uniform(8, 18)
H100_PCIE = by_socket(8, 4, NODE)

# Section 4: HGX A100 4-GPU board, every pair NV4 (no NVSwitch); GPUs 0-1 on NUMA 2, 2-3 on NUMA 6.
A100_NV4_NVLINK = uniform(4, 4)
A100_NV4_PCIE = by_socket(4, 2, NODE)

# Section 5: DGX-1V hybrid cube-mesh (verbatim "Expected NVLink adjacency").
DGX1V_NVLINK = (
    (0, 1, 1, 2, 2, 0, 0, 0),
    (1, 0, 2, 1, 0, 2, 0, 0),
    (1, 2, 0, 2, 0, 0, 1, 0),
    (2, 1, 2, 0, 0, 0, 0, 1),
    (2, 0, 0, 0, 0, 1, 1, 2),
    (0, 2, 0, 0, 1, 0, 2, 1),
    (0, 0, 1, 0, 1, 2, 0, 2),
    (0, 0, 0, 1, 2, 1, 2, 0),
)
# GPU0-3 on CPU 0-11, GPU4-7 on CPU 12-23; the non-NVLink pairs print SYS.
DGX1V_PCIE = by_socket(8, 4, NODE)

# Section 6: PCIe-only 8-GPU server (no NVLink at all).
PCIE_ONLY_NVLINK = uniform(8, 0)
PCIE_ONLY_PCIE = (
    (0, PIX, PXB, PXB, SYS, SYS, SYS, SYS),
    (PIX, 0, PXB, PXB, SYS, SYS, SYS, SYS),
    (PXB, PXB, 0, PXB, SYS, SYS, SYS, SYS),
    (PXB, PXB, PXB, 0, SYS, SYS, SYS, SYS),
    (SYS, SYS, SYS, SYS, 0, PIX, PXB, PXB),
    (SYS, SYS, SYS, SYS, PIX, 0, PXB, PXB),
    (SYS, SYS, SYS, SYS, PXB, PXB, 0, PIX),
    (SYS, SYS, SYS, SYS, PXB, PXB, PIX, 0),
)
PCIE_ONLY_SOCKETS = (frozenset({0, 1, 2, 3}), frozenset({4, 5, 6, 7}))


def make_node(
    nvlink,
    pcie=None,
    *,
    held=(),
    mig=(),
    unplanned: int = 0,
    allocatable: int | None = None,
    model: str = "NVIDIA H100 80GB HBM3",
    name: str = "n1",
) -> GpuNode:
    """A whole-GPU node from link matrices. `held`: GPUs in plans of placed pods; `mig`: MIG-enabled."""
    count = len(nvlink)
    gpus = tuple(Gpu(i, f"GPU-{i}", model, 81559, mig_enabled=i in mig) for i in range(count))
    if allocatable is None:
        allocatable = count - len(mig)
    return GpuNode(
        name=name,
        allocatable={GPU_RESOURCE: allocatable},
        product=model,
        gpu_count=count,
        gpus=gpus,
        nvlink=nvlink,
        pcie=pcie,
        usage=Usage(gpus=frozenset(held), unplanned={GPU_RESOURCE: unplanned} if unplanned else {}),
    )


def pod(gpus: int) -> PodRequest:
    return PodRequest("default", f"pod-{gpus}", WorkloadClass.LATENCY_CRITICAL, gpus=gpus)


def h100(**kw) -> GpuNode:
    return make_node(H100_NVLINK, H100_PCIE, **kw)


def a100_nv4(**kw) -> GpuNode:
    return make_node(A100_NV4_NVLINK, A100_NV4_PCIE, model="NVIDIA A100-SXM4-40GB", **kw)


def dgx1v(**kw) -> GpuNode:
    return make_node(DGX1V_NVLINK, DGX1V_PCIE, model="Tesla V100-SXM2-16GB", **kw)


def pcie_only(**kw) -> GpuNode:
    return make_node(PCIE_ONLY_NVLINK, PCIE_ONLY_PCIE, model="NVIDIA L40S", **kw)


# Independent views of a set, computed from the matrices.


def is_clique(nvlink, gpus) -> bool:
    return all(nvlink[a][b] > 0 for a, b in combinations(gpus, 2))


def bottleneck(nvlink, gpus) -> int:
    return min(nvlink[a][b] for a, b in combinations(gpus, 2))


def worst_pcie(pcie, gpus) -> int:
    return max(pcie[a][b] for a, b in combinations(gpus, 2))


def check_plan(node: GpuNode, result, k: int) -> tuple[int, ...]:
    """The plan names k distinct GPUs that exist, are not MIG-enabled and are not held."""
    plan = result.plan.gpus
    assert result.feasible
    assert len(plan) == k and len(set(plan)) == k
    for index in plan:
        gpu = node.gpu(index)
        assert gpu is not None, f"GPU {index} does not exist"
        assert not gpu.mig_enabled, f"MIG-enabled GPU {index} planned"
        assert index not in node.usage.gpus, f"held GPU {index} planned"
    return plan


# ---------------------------------------------------------------------------------------------
# 8x H100 NVSwitch
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("k", [2, 4, 8])
def test_h100_nvswitch_any_set_is_a_full_bandwidth_clique(k):
    node = h100()
    result = topology.evaluate(node, pod(k))
    plan = check_plan(node, result, k)
    assert result.applicable
    assert is_clique(H100_NVLINK, plan)
    # Bottleneck NV18 on a node whose best link is NV18: the top of the clique range.
    assert result.score == pytest.approx(1.0)


def test_h100_nvswitch_small_pod_stays_within_one_numa_domain():
    node = h100()
    plan = check_plan(node, topology.evaluate(node, pod(2)), 2)
    assert worst_pcie(H100_PCIE, plan) == NODE


def test_h100_nvswitch_pcie_locality_breaks_the_tie_between_equal_nvlink_sets():
    # GPUs 0-2 held: the free GPUs are 3 (socket 0) and 4-7 (socket 1); all pairs are NV18, so the
    # only set of 4 that avoids a cross-socket hop is {4,5,6,7}.
    node = h100(held={0, 1, 2})
    plan = check_plan(node, topology.evaluate(node, pod(4)), 4)
    assert set(plan) == {4, 5, 6, 7}


# ---------------------------------------------------------------------------------------------
# HGX A100 4-GPU, NV4 point-to-point
# ---------------------------------------------------------------------------------------------


def test_a100_nv4_board_four_gpu_pod_gets_the_whole_board():
    node = a100_nv4()
    result = topology.evaluate(node, pod(4))
    assert set(check_plan(node, result, 4)) == {0, 1, 2, 3}
    assert result.score == pytest.approx(1.0)  # bottleneck NV4 == the node's best link


def test_a100_nv4_board_with_one_gpu_held():
    node = a100_nv4(held={2})
    result = topology.evaluate(node, pod(3))
    assert set(check_plan(node, result, 3)) == {0, 1, 3}
    assert result.score >= 0.7


def test_a100_nv4_board_two_gpu_pod_prefers_the_pair_on_one_socket():
    node = a100_nv4()
    plan = check_plan(node, topology.evaluate(node, pod(2)), 2)
    assert worst_pcie(A100_NV4_PCIE, plan) == NODE


# ---------------------------------------------------------------------------------------------
# DGX-1V hybrid cube-mesh
# ---------------------------------------------------------------------------------------------


def test_dgx1v_reference_matrix_is_well_formed():
    # Guards the fixture itself: symmetric, zero diagonal, 6 NVLink2 links per V100.
    for i in range(8):
        assert DGX1V_NVLINK[i][i] == 0
        assert sum(DGX1V_NVLINK[i]) == 6
        for j in range(8):
            assert DGX1V_NVLINK[i][j] == DGX1V_NVLINK[j][i]


def test_dgx1v_four_gpu_pod_gets_a_fully_nvlinked_quad():
    node = dgx1v()
    result = topology.evaluate(node, pod(4))
    plan = check_plan(node, result, 4)
    assert set(plan) in ({0, 1, 2, 3}, {4, 5, 6, 7})
    assert is_clique(DGX1V_NVLINK, plan)
    assert result.score >= 0.7


def test_dgx1v_never_plans_a_set_with_a_non_nvlink_pair_when_a_quad_is_free():
    # {0,1,4,5} looks attractive (0-4 and 1-5 are NV2) but 1-4 and 0-5 have no NVLink.
    node = dgx1v()
    plan = check_plan(node, topology.evaluate(node, pod(4)), 4)
    assert all(DGX1V_NVLINK[a][b] > 0 for a, b in combinations(plan, 2))
    assert set(plan) != {0, 1, 4, 5}


def test_dgx1v_with_gpus_4_and_5_held_four_gpu_pod_gets_0_1_2_3():
    node = dgx1v(held={4, 5})
    result = topology.evaluate(node, pod(4))
    assert set(check_plan(node, result, 4)) == {0, 1, 2, 3}
    assert result.score >= 0.7


@pytest.mark.parametrize("held", [{0}, {1}, {2}, {3}, {0, 3}])
def test_dgx1v_falls_back_to_the_untouched_quad(held):
    node = dgx1v(held=held)
    plan = check_plan(node, topology.evaluate(node, pod(4)), 4)
    assert set(plan) == {4, 5, 6, 7}


def test_dgx1v_two_gpu_pod_gets_a_double_link_pair():
    node = dgx1v()
    result = topology.evaluate(node, pod(2))
    a, b = check_plan(node, result, 2)
    assert DGX1V_NVLINK[a][b] == 2
    assert result.score == pytest.approx(1.0)


def test_dgx1v_higher_bottleneck_scores_higher():
    # Free GPUs {0,1,6}: the only NVLink pair is 0-1, with a single link (NV1).
    nv1 = topology.evaluate(dgx1v(held={2, 3, 4, 5, 7}), pod(2))
    nv2 = topology.evaluate(dgx1v(), pod(2))
    a, b = nv1.plan.gpus
    assert DGX1V_NVLINK[a][b] == 1
    assert 0.7 <= nv1.score < nv2.score


def test_dgx1v_without_a_free_quad_the_split_set_scores_below_cliques():
    # 0 and 4 held: no 4-clique is left among {1,2,3,5,6,7}.
    node = dgx1v(held={0, 4})
    result = topology.evaluate(node, pod(4))
    plan = check_plan(node, result, 4)
    assert not is_clique(DGX1V_NVLINK, plan)
    assert result.score < 0.6


def test_best_set_on_dgx1v_subset_picks_a_double_link_pair():
    # Among {0,1,4,5}: 0-1 and 4-5 are NV1, 0-4 and 1-5 NV2, 0-5 and 1-4 none.
    chosen = topology.best_set(dgx1v(), [0, 1, 4, 5], 2)
    assert chosen is not None
    assert set(chosen) in ({0, 4}, {1, 5})


def _subsets(items, max_size):
    for size in range(max_size + 1):
        yield from combinations(items, size)


@pytest.mark.parametrize("k", [2, 3, 4, 5])
@pytest.mark.parametrize("make", [dgx1v, pcie_only, h100], ids=["dgx1v", "pcie", "h100"])
def test_plan_is_optimal_over_every_held_set(make, k):
    """Exhaustive: for every set of held GPUs, check ranking rules 1-3 by brute force."""
    for held in _subsets(range(8), 8):
        node = make(held=set(held))
        nvlink, pcie = node.nvlink, node.pcie
        free = [g for g in range(8) if g not in held]
        if len(free) < k:
            continue
        result = topology.evaluate(node, pod(k))
        plan = check_plan(node, result, k)
        sets = list(combinations(free, k))
        cliques = [s for s in sets if is_clique(nvlink, s)]
        if cliques:
            assert is_clique(nvlink, plan), (held, plan)
            best = max(bottleneck(nvlink, s) for s in cliques)
            assert bottleneck(nvlink, plan) == best, (held, plan)
            tied = [s for s in cliques if bottleneck(nvlink, s) == best]
            assert worst_pcie(pcie, plan) == min(worst_pcie(pcie, s) for s in tied), (held, plan)
            assert result.score >= 0.7
        else:
            assert worst_pcie(pcie, plan) == min(worst_pcie(pcie, s) for s in sets), (held, plan)
            assert result.score < 0.6, (held, plan, result.score)


# ---------------------------------------------------------------------------------------------
# PCIe-only server
# ---------------------------------------------------------------------------------------------


def test_pcie_only_two_gpu_pod_gets_a_pix_pair():
    node = pcie_only()
    result = topology.evaluate(node, pod(2))
    a, b = check_plan(node, result, 2)
    assert PCIE_ONLY_PCIE[a][b] == PIX
    assert result.applicable
    assert result.score < 0.6  # no NVLink: never in the clique range


@pytest.mark.parametrize("held", [set(), {0}, {0, 4}, {1, 6}])
def test_pcie_only_two_gpu_pod_gets_a_free_pix_pair(held):
    node = pcie_only(held=held)
    a, b = check_plan(node, topology.evaluate(node, pod(2)), 2)
    assert PCIE_ONLY_PCIE[a][b] == PIX


def test_pcie_only_four_gpu_pod_stays_within_one_socket():
    node = pcie_only()
    result = topology.evaluate(node, pod(4))
    plan = check_plan(node, result, 4)
    assert set(plan) in PCIE_ONLY_SOCKETS
    assert worst_pcie(PCIE_ONLY_PCIE, plan) == PXB


def test_pcie_only_four_gpu_pod_uses_the_socket_that_still_has_four_free():
    node = pcie_only(held={2})
    plan = check_plan(node, topology.evaluate(node, pod(4)), 4)
    assert set(plan) == {4, 5, 6, 7}


def test_pcie_only_single_gpu_keeps_the_pix_pairs_intact():
    node = pcie_only(held={1})
    result = topology.evaluate(node, pod(1))
    (chosen,) = check_plan(node, result, 1)
    assert not result.applicable
    rest = {g for g in range(8) if g != chosen and g not in node.usage.gpus}
    # Both untouched PIX pairs stay available to the next 2-GPU pod.
    assert {4, 5} <= rest and {6, 7} <= rest
    # And the GPU comes from the socket that is already broken (GPU 1 is held).
    assert chosen in {0, 2, 3}


@pytest.mark.parametrize(("held", "partner"), [(0, 1), (1, 0), (4, 5), (5, 4), (6, 7), (7, 6)])
def test_pcie_only_single_gpu_takes_the_partner_of_a_held_pix_gpu(held, partner):
    node = pcie_only(held={held})
    (chosen,) = check_plan(node, topology.evaluate(node, pod(1)), 1)
    assert chosen == partner  # the only choice that leaves every other PIX pair whole


def test_pcie_set_with_pix_beats_set_with_sys_in_score():
    node = pcie_only()
    same_board = topology.evaluate(node, pod(2))
    # Force a cross-socket pair: only GPUs 0 and 4 are free.
    split = topology.evaluate(pcie_only(held={1, 2, 3, 5, 6, 7}), pod(2))
    assert set(split.plan.gpus) == {0, 4}
    assert split.score < same_board.score < 0.6


# ---------------------------------------------------------------------------------------------
# Which GPUs may be planned
# ---------------------------------------------------------------------------------------------


def test_mig_enabled_gpus_are_never_planned():
    node = h100(mig={0, 1, 2, 3})
    result = topology.evaluate(node, pod(4))
    assert set(check_plan(node, result, 4)) == {4, 5, 6, 7}


@pytest.mark.parametrize("k", [1, 2, 3])
def test_mig_enabled_gpus_are_never_planned_for_any_size(k):
    node = dgx1v(mig={0, 3, 5, 6})
    result = topology.evaluate(node, pod(k))
    assert not set(check_plan(node, result, k)) & {0, 3, 5, 6}


def test_when_only_mig_gpus_would_fill_the_request_nothing_is_planned():
    # Allocatable claims 4 whole GPUs but only 3 non-MIG GPUs exist in the agent's data.
    node = h100(mig={0, 1, 2, 3, 4}, allocatable=4)
    result = topology.evaluate(node, pod(4))
    assert result.feasible
    assert result.score == NEUTRAL
    assert result.plan.gpus == ()


@pytest.mark.parametrize("held", [{0}, {3, 4}, {0, 2, 5}, {1, 3, 5, 7}, {0, 1, 2, 3, 4, 5}])
@pytest.mark.parametrize("make", [h100, dgx1v, pcie_only], ids=["h100", "dgx1v", "pcie"])
def test_held_gpus_are_never_planned(make, held):
    node = make(held=held)
    free = 8 - len(held)
    for k in range(1, free + 1):
        check_plan(node, topology.evaluate(node, pod(k)), k)


def test_held_gpus_are_never_planned_by_best_set():
    node = h100(held={0, 1})
    chosen = topology.best_set(node, [2, 3, 4, 5, 6, 7], 3)
    assert chosen is not None and not set(chosen) & {0, 1}


# ---------------------------------------------------------------------------------------------
# Score ranges
# ---------------------------------------------------------------------------------------------

CASES = [
    (h100, 2, set()), (h100, 8, set()), (h100, 3, {0, 5}),
    (a100_nv4, 2, set()), (a100_nv4, 4, set()),
    (dgx1v, 2, set()), (dgx1v, 3, set()), (dgx1v, 4, set()), (dgx1v, 4, {0, 4}), (dgx1v, 5, set()),
    (dgx1v, 8, set()), (dgx1v, 2, {0, 2, 3, 4, 7}),
    (pcie_only, 2, set()), (pcie_only, 4, set()), (pcie_only, 8, set()),
]


@pytest.mark.parametrize(("make", "k", "held"), CASES)
def test_clique_sets_score_at_least_0_7_and_others_below_0_6(make, k, held):
    node = make(held=held)
    result = topology.evaluate(node, pod(k))
    plan = check_plan(node, result, k)
    assert 0.0 <= result.score <= 1.0
    if is_clique(node.nvlink, plan):
        assert result.score >= 0.7
    else:
        assert result.score < 0.6


def test_nvlink_set_outranks_a_pcie_split_set():
    nvlink = topology.evaluate(a100_nv4(), pod(4))
    split = topology.evaluate(pcie_only(), pod(4))
    cube_split = topology.evaluate(dgx1v(held={0, 4}), pod(4))
    assert nvlink.score > split.score
    assert nvlink.score > cube_split.score
    assert topology.evaluate(dgx1v(), pod(4)).score > cube_split.score


def test_nvlink_pair_beats_a_pix_pair_on_the_same_node():
    # GPUs 0-1 share a PCIe switch but have no NVLink; GPUs 2-3 are NVLinked across sockets.
    nvlink = ((0, 0, 0, 0), (0, 0, 0, 0), (0, 0, 0, 4), (0, 0, 4, 0))
    pcie = ((0, PIX, SYS, SYS), (PIX, 0, SYS, SYS), (SYS, SYS, 0, SYS), (SYS, SYS, SYS, 0))
    node = make_node(nvlink, pcie)
    result = topology.evaluate(node, pod(2))
    assert set(check_plan(node, result, 2)) == {2, 3}
    assert result.score >= 0.7


# ---------------------------------------------------------------------------------------------
# Count-based feasibility and missing data
# ---------------------------------------------------------------------------------------------


def test_too_few_free_gpus_is_rejected_but_resolvable():
    node = h100(held={0, 1, 2, 3, 4, 5})
    result = topology.evaluate(node, pod(4))
    assert not result.feasible
    assert not result.unresolvable
    assert result.plan.gpus == ()


def test_more_gpus_than_the_node_has_is_unresolvable():
    result = topology.evaluate(a100_nv4(), pod(8))
    assert not result.feasible
    assert result.unresolvable


def test_asking_for_every_gpu_while_some_are_held_is_resolvable():
    node = a100_nv4(held={1})
    result = topology.evaluate(node, pod(4))
    assert not result.feasible
    assert not result.unresolvable  # preempting the holder frees the whole board


def test_exactly_enough_free_gpus_is_feasible():
    node = h100(held={0, 1, 2, 3})
    assert set(check_plan(node, topology.evaluate(node, pod(4)), 4)) == {4, 5, 6, 7}


def test_pods_without_a_plan_count_against_free_gpus():
    node = h100(unplanned=5)
    rejected = topology.evaluate(node, pod(4))
    assert not rejected.feasible and not rejected.unresolvable
    assert topology.evaluate(node, pod(3)).feasible


def test_unplanned_and_planned_usage_add_up():
    node = h100(held={0, 1}, unplanned=3)  # 8 - 2 - 3 = 3 free
    assert topology.evaluate(node, pod(3)).feasible
    result = topology.evaluate(node, pod(4))
    assert not result.feasible and not result.unresolvable


def test_node_without_whole_gpus_is_unresolvable():
    node = GpuNode(name="n", allocatable={"nvidia.com/mig-1g.10gb": 7})
    result = topology.evaluate(node, pod(1))
    assert not result.feasible and result.unresolvable


def test_node_without_topology_data_is_neutral_and_feasible_by_allocatable():
    node = GpuNode(name="n", allocatable={GPU_RESOURCE: 4}, gpu_count=4)
    result = topology.evaluate(node, pod(2))
    assert result.feasible
    assert result.score == NEUTRAL
    assert result.plan.gpus == ()


def test_node_with_gpus_but_nvlink_none_is_neutral():
    node = make_node(H100_NVLINK, H100_PCIE)
    node = GpuNode(name=node.name, allocatable=node.allocatable, gpu_count=8, gpus=node.gpus, nvlink=None)
    result = topology.evaluate(node, pod(4))
    assert result.feasible and result.score == NEUTRAL and result.plan.gpus == ()


def test_node_without_topology_data_still_rejects_by_count():
    node = GpuNode(name="n", allocatable={GPU_RESOURCE: 4}, usage=Usage(unplanned={GPU_RESOURCE: 3}))
    result = topology.evaluate(node, pod(2))
    assert not result.feasible and not result.unresolvable
    assert topology.evaluate(GpuNode(name="n", allocatable={GPU_RESOURCE: 4}), pod(5)).unresolvable


def test_too_many_sets_to_compare_is_neutral_not_a_crash():
    node = make_node(uniform(24, 0), uniform(24, SYS))
    assert topology.best_set(node, list(range(24)), 6) is None
    result = topology.evaluate(node, pod(6))
    assert result.feasible and result.score == NEUTRAL and result.plan.gpus == ()


# ---------------------------------------------------------------------------------------------
# Single-GPU pods and single-strategy MIG nodes
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("make", [h100, a100_nv4, dgx1v, pcie_only], ids=["h100", "a100", "dgx1v", "pcie"])
def test_single_gpu_pod_is_not_applicable_but_still_planned(make):
    node = make(held={0})
    result = topology.evaluate(node, pod(1))
    assert not result.applicable
    assert result.score == NEUTRAL
    check_plan(node, result, 1)


def test_single_gpu_on_dgx1v_keeps_a_quad_whole():
    # GPU 0 held: a single GPU taken from {1,2,3} leaves {4,5,6,7} as a 4-clique.
    node = dgx1v(held={0})
    (chosen,) = check_plan(node, topology.evaluate(node, pod(1)), 1)
    assert chosen in {1, 2, 3}


def test_single_gpu_on_dgx1v_with_gpu_4_held_keeps_0_1_2_3_whole():
    node = dgx1v(held={4})
    (chosen,) = check_plan(node, topology.evaluate(node, pod(1)), 1)
    assert chosen in {5, 6, 7}


def test_h100_two_gpu_pod_takes_gpus_from_the_socket_already_in_use():
    # GPU 4 held: a pair from {5,6,7} keeps socket 0 (GPUs 0-3) whole for a 4-GPU pod.
    node = h100(held={4})
    plan = check_plan(node, topology.evaluate(node, pod(2)), 2)
    assert set(plan) <= {5, 6, 7}
    assert set(topology.evaluate(h100(held={4, *plan}), pod(4)).plan.gpus) == {0, 1, 2, 3}


def single_mig_node() -> GpuNode:
    gpus = tuple(Gpu(i, f"GPU-{i}", "NVIDIA A100-SXM4-40GB", 40960, mig_enabled=True) for i in range(4))
    return GpuNode(
        name="mig-single",
        allocatable={GPU_RESOURCE: 28},
        product="NVIDIA A100-SXM4-40GB",
        mig_strategy=MigStrategy.SINGLE,
        single_mig_profile="1g.5gb",
        gpu_count=4,
        gpus=gpus,
        nvlink=uniform(4, 12),
        pcie=uniform(4, NODE),
    )


def test_single_strategy_mig_node_one_device_is_not_applicable():
    result = topology.evaluate(single_mig_node(), pod(1))
    assert result.feasible
    assert not result.applicable
    assert result.plan.gpus == ()


def test_single_strategy_mig_node_several_devices_score_zero():
    result = topology.evaluate(single_mig_node(), pod(2))
    assert result.feasible  # MIG capacity is the MIG signal's business
    assert result.applicable
    assert result.score == 0.0
    assert result.plan.gpus == ()
