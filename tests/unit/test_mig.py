"""MIG slice signal (scoring/mig.py), MIG resource names (scoring/model.py), catalog (scoring/mig_catalog.py).

Geometry facts (allowed starts, sizes, per-GPU limits) come from shared/reference/gpu/mig-profiles.json;
expected plans are derived from the best-fit rule of scoring/mig.py's docstring.
"""

from __future__ import annotations

from collections import Counter
from itertools import combinations

import pytest

from scoring import mig
from scoring.mig_catalog import catalog_key, profiles_for
from scoring.model import (
    GPU_RESOURCE,
    NEUTRAL,
    Gpu,
    GpuNode,
    MigInstance,
    MigSlot,
    MigStrategy,
    PodRequest,
    Usage,
    WorkloadClass,
    mig_profile,
    mig_resource,
)

H100 = "NVIDIA H100 80GB HBM3"
A100_40 = "NVIDIA A100-SXM4-40GB"
SIZE = {"1g.10gb": 1, "1g.10gb+me": 1, "1g.20gb": 2, "2g.20gb": 2, "3g.40gb": 4, "4g.40gb": 4, "7g.80gb": 8,
        "1g.5gb": 1}


def inst(gpu: int, profile: str, start: int, size: int | None = None) -> MigInstance:
    return MigInstance(gpu, profile, start, SIZE[profile] if size is None else size)


def seven_1g(gpu: int, profile: str = "1g.10gb") -> list[MigInstance]:
    return [inst(gpu, profile, s) for s in range(7)]


def mixed_node(
    layout=None,
    *,
    allocatable: dict[str, int] | None = None,
    held=(),
    unplanned: dict[str, int] | None = None,
    model: str = H100,
    gpu_count: int | None = None,
) -> GpuNode:
    """A mixed-strategy node. Allocatable defaults to the layout's instance counts; `held` are
    (gpu, profile, start) of instances in plans of placed pods."""
    layout = None if layout is None else tuple(layout)
    if allocatable is None:
        allocatable = dict(Counter(mig_resource(i.profile) for i in layout or ()))
    if gpu_count is None:
        gpu_count = 1 + max((i.gpu for i in layout or ()), default=0)
    gpus = tuple(Gpu(g, f"GPU-{g}", model, 81559, mig_enabled=True) for g in range(gpu_count))
    return GpuNode(
        name="mig-mixed",
        allocatable=allocatable,
        product=model,
        mig_strategy=MigStrategy.MIXED,
        gpu_count=gpu_count,
        gpus=gpus,
        mig_layout=layout,
        usage=Usage(mig=frozenset(MigSlot(*h) for h in held), unplanned=unplanned or {}),
    )


def single_node(layout=None, *, unplanned: int = 0, allocatable: int = 28, held=()) -> GpuNode:
    gpus = tuple(Gpu(g, f"GPU-{g}", A100_40, 40960, mig_enabled=True) for g in range(4))
    return GpuNode(
        name="mig-single",
        allocatable={GPU_RESOURCE: allocatable},
        product=A100_40,
        mig_strategy=MigStrategy.SINGLE,
        single_mig_profile="1g.5gb",
        gpu_count=4,
        gpus=gpus,
        mig_layout=None if layout is None else tuple(layout),
        usage=Usage(mig=frozenset(MigSlot(*h) for h in held),
                    unplanned={GPU_RESOURCE: unplanned} if unplanned else {}),
    )


def want(**profiles: int) -> PodRequest:
    """A pod asking for MIG instances; keyword names use `_` for `.` and `__me` for `+me`."""
    mig_request = {k.replace("__", "+").replace("_", "."): v for k, v in profiles.items()}
    return PodRequest("default", "p", WorkloadClass.BATCH, mig=mig_request)


def whole(gpus: int) -> PodRequest:
    return PodRequest("default", "p", WorkloadClass.BATCH, gpus=gpus)


def check_plan(node: GpuNode, result, request_counts: dict[str, int]) -> tuple[MigSlot, ...]:
    """Plan slots exist in the layout, are distinct, not held, and match the wanted counts."""
    assert result.feasible
    slots = result.plan.mig
    assert len(set(slots)) == len(slots)
    layout = {(i.gpu, i.profile, i.start) for i in node.mig_layout}
    held = {(s.gpu, s.start) for s in node.usage.mig}
    for slot in slots:
        assert (slot.gpu, slot.profile, slot.start) in layout, f"{slot} is not in the layout"
        assert (slot.gpu, slot.start) not in held, f"held instance {slot} planned"
    assert Counter(s.profile for s in slots) == Counter(request_counts)
    assert result.plan.gpus == ()
    return slots


# ---------------------------------------------------------------------------------------------
# Resource names and the catalog
# ---------------------------------------------------------------------------------------------


def test_me_profile_maps_to_dotted_resource_and_back():
    assert mig_resource("1g.10gb+me") == "nvidia.com/mig-1g.10gb.me"
    assert mig_profile("nvidia.com/mig-1g.10gb.me") == "1g.10gb+me"


@pytest.mark.parametrize("product", [H100, A100_40, "NVIDIA-H200"])
def test_every_catalog_profile_round_trips_through_its_resource_name(product):
    for profile in profiles_for(product):
        resource = mig_resource(profile)
        assert resource.startswith("nvidia.com/mig-")
        assert "+" not in resource
        assert mig_profile(resource) == profile


def test_plain_profiles_keep_their_dots():
    assert mig_resource("3g.40gb") == "nvidia.com/mig-3g.40gb"
    assert mig_profile("nvidia.com/mig-1g.10gb") == "1g.10gb"
    assert mig_profile("nvidia.com/mig-7g.141gb") == "7g.141gb"


def test_non_mig_resources_have_no_profile():
    assert mig_profile(GPU_RESOURCE) is None
    assert mig_profile("cpu") is None


@pytest.mark.parametrize(
    ("product", "key"),
    [
        ("NVIDIA-A100-SXM4-80GB", "A100-80GB"),
        ("NVIDIA A100-SXM4-40GB", "A100-40GB"),
        ("NVIDIA H100 80GB HBM3", "H100-80GB"),
        ("NVIDIA-H200", "H200-141GB"),
        ("Tesla-T4", None),
    ],
)
def test_catalog_key(product, key):
    assert catalog_key(product) == key


def test_unknown_product_has_no_profiles():
    assert profiles_for("Tesla-T4") is None


@pytest.mark.parametrize(
    ("product", "profile", "size", "starts", "max_count"),
    [
        # mig-profiles.json: placements by nvidia-smi profile id and per-GPU maxima.
        (H100, "1g.10gb", 1, (0, 1, 2, 3, 4, 5, 6), 7),
        (H100, "1g.10gb+me", 1, (0, 1, 2, 3, 4, 5, 6), 1),
        (H100, "1g.20gb", 2, (0, 2, 4, 6), 4),
        (H100, "2g.20gb", 2, (0, 2, 4), 3),
        (H100, "3g.40gb", 4, (0, 4), 2),
        (H100, "4g.40gb", 4, (0,), 1),
        (H100, "7g.80gb", 8, (0,), 1),
        (A100_40, "1g.5gb", 1, (0, 1, 2, 3, 4, 5, 6), 7),
        (A100_40, "1g.10gb", 2, (0, 2, 4, 6), 4),
        (A100_40, "3g.20gb", 4, (0, 4), 2),
        ("NVIDIA-A100-SXM4-80GB", "2g.20gb", 2, (0, 2, 4), 3),
        ("NVIDIA-H200", "3g.71gb", 4, (0, 4), 2),
    ],
)
def test_catalog_geometry_matches_the_reference(product, profile, size, starts, max_count):
    entry = profiles_for(product)[profile]
    assert entry.mem_slices == size
    assert tuple(entry.starts) == starts
    assert entry.max_count == max_count


# ---------------------------------------------------------------------------------------------
# Count-based feasibility (mixed strategy)
# ---------------------------------------------------------------------------------------------


def test_pod_without_mig_request_is_not_applicable():
    result = mig.evaluate(mixed_node(seven_1g(0)), whole(1))
    assert result.feasible and not result.applicable


def test_mixed_request_matches_the_profile_resource():
    node = mixed_node(allocatable={"nvidia.com/mig-1g.10gb": 2})
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert result.feasible
    assert result.applicable


def test_free_is_allocatable_minus_planned_minus_unplanned():
    # 4 allocatable, 1 in a placed pod's plan, 2 held by pods without a plan: 1 free.
    node = mixed_node(
        allocatable={"nvidia.com/mig-1g.10gb": 4},
        held=[(0, "1g.10gb", 0)],
        unplanned={"nvidia.com/mig-1g.10gb": 2},
    )
    assert mig.evaluate(node, want(**{"1g_10gb": 1})).feasible
    result = mig.evaluate(node, want(**{"1g_10gb": 2}))
    assert not result.feasible
    assert not result.unresolvable  # preempting the holders would free them


def test_planned_holds_alone_reduce_free():
    held = [(0, "1g.10gb", s) for s in range(3)]
    node = mixed_node(allocatable={"nvidia.com/mig-1g.10gb": 4}, held=held)
    assert mig.evaluate(node, want(**{"1g_10gb": 1})).feasible
    assert not mig.evaluate(node, want(**{"1g_10gb": 2})).feasible


def test_unplanned_holds_alone_reduce_free():
    node = mixed_node(allocatable={"nvidia.com/mig-1g.10gb": 4}, unplanned={"nvidia.com/mig-1g.10gb": 4})
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert not result.feasible and not result.unresolvable


def test_holds_of_other_profiles_do_not_count():
    node = mixed_node(
        allocatable={"nvidia.com/mig-1g.10gb": 2, "nvidia.com/mig-3g.40gb": 2},
        held=[(0, "3g.40gb", 0), (1, "3g.40gb", 0)],
        unplanned={"nvidia.com/mig-3g.40gb": 5, GPU_RESOURCE: 3},
    )
    assert mig.evaluate(node, want(**{"1g_10gb": 2})).feasible


def test_more_than_allocatable_is_unresolvable():
    node = mixed_node(allocatable={"nvidia.com/mig-1g.10gb": 3})
    result = mig.evaluate(node, want(**{"1g_10gb": 4}))
    assert not result.feasible
    assert result.unresolvable


def test_profile_the_node_does_not_offer_is_unresolvable():
    node = mixed_node(allocatable={"nvidia.com/mig-3g.40gb": 2})
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert not result.feasible
    assert result.unresolvable
    assert "node offers no 1g.10gb" in result.reason


def test_every_profile_of_a_multi_profile_request_must_be_free():
    node = mixed_node(allocatable={"nvidia.com/mig-1g.10gb": 4, "nvidia.com/mig-3g.40gb": 1},
                      held=[(0, "3g.40gb", 0)])
    result = mig.evaluate(node, want(**{"1g_10gb": 1, "3g_40gb": 1}))
    assert not result.feasible and not result.unresolvable
    assert mig.evaluate(node, want(**{"1g_10gb": 1})).feasible


def test_me_profile_request_uses_the_dotted_resource():
    assert mig.evaluate(mixed_node(allocatable={"nvidia.com/mig-1g.10gb.me": 1}),
                        want(**{"1g_10gb__me": 1})).feasible
    # The plain 1g.10gb resource does not satisfy a +me request.
    result = mig.evaluate(mixed_node(allocatable={"nvidia.com/mig-1g.10gb": 7}), want(**{"1g_10gb__me": 1}))
    assert not result.feasible and result.unresolvable


def test_unknown_layout_is_feasible_neutral_and_plans_nothing():
    node = mixed_node(None, allocatable={"nvidia.com/mig-1g.10gb": 3})
    result = mig.evaluate(node, want(**{"1g_10gb": 2}))
    assert result.feasible
    assert result.score == NEUTRAL
    assert result.plan.mig == ()


# ---------------------------------------------------------------------------------------------
# Planning on a known layout
# ---------------------------------------------------------------------------------------------


@pytest.mark.parametrize("idle_start", range(7))
def test_plan_uses_the_one_idle_instance(idle_start):
    held = [(0, "1g.10gb", s) for s in range(7) if s != idle_start]
    node = mixed_node(seven_1g(0), held=held)
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    (slot,) = check_plan(node, result, {"1g.10gb": 1})
    assert slot == MigSlot(0, "1g.10gb", idle_start)


def test_plan_never_uses_held_instances_across_gpus():
    layout = seven_1g(0) + seven_1g(1) + seven_1g(2)
    held = [(g, "1g.10gb", s) for g in range(3) for s in range(7) if (g + s) % 2 == 0]
    node = mixed_node(layout, held=held)
    free = 21 - len(held)
    for count in range(1, free + 1):
        check_plan(node, mig.evaluate(node, want(**{"1g_10gb": count})), {"1g.10gb": count})


def test_keeping_a_3g_creatable_beats_blocking_every_3g_and_4g():
    # GPU 0: slice 0 busy; its idle 1g sits at slice 4, so taking it blocks 3g@4 (and 4g@0 is
    # already blocked): the largest creatable profile drops from 4 slices to 2.
    # GPU 1: slice 0 busy; its idle 1g sits at slice 1, so 3g.40gb@4 stays creatable.
    layout = [inst(0, "1g.10gb", 0), inst(0, "1g.10gb", 4), inst(1, "1g.10gb", 0), inst(1, "1g.10gb", 1)]
    node = mixed_node(layout, held=[(0, "1g.10gb", 0), (1, "1g.10gb", 0)])
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert check_plan(node, result, {"1g.10gb": 1}) == (MigSlot(1, "1g.10gb", 1),)
    assert result.score == pytest.approx(1.0)  # nothing lost beyond the pod's own slice


def test_blocking_the_largest_profile_lowers_the_score():
    # Only GPU 0's bad choice is left: 4 -> 2 slices, loss 2 of 8 slices.
    layout = [inst(0, "1g.10gb", 0), inst(0, "1g.10gb", 4)]
    node = mixed_node(layout, held=[(0, "1g.10gb", 0)])
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert check_plan(node, result, {"1g.10gb": 1}) == (MigSlot(0, "1g.10gb", 4),)
    assert result.score == pytest.approx(1 - 2 / 8)


def test_idle_1g_on_a_partly_busy_gpu_beats_one_on_a_fully_idle_gpu():
    # GPU 0: 7x 1g.10gb all idle (a 7g could still be cut there). GPU 1: 7x 1g.10gb with slices
    # 0-2 busy; taking slice 3 there leaves 3g.40gb@4 creatable, so nothing is lost.
    layout = seven_1g(0) + seven_1g(1)
    node = mixed_node(layout, held=[(1, "1g.10gb", s) for s in (0, 1, 2)])
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert check_plan(node, result, {"1g.10gb": 1}) == (MigSlot(1, "1g.10gb", 3),)
    assert result.score == pytest.approx(1.0)


def test_taking_a_1g_from_a_fully_idle_gpu_costs_the_7g():
    node = mixed_node(seven_1g(0))
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    (slot,) = check_plan(node, result, {"1g.10gb": 1})
    # 7g (8 slices) can no longer be created; the best that remains is a 4-slice profile.
    assert result.score == pytest.approx(1 - 4 / 8)
    # Every start costs the 7g, so large-profile capacity decides: slices 0-3 would also block
    # 4g.40gb (start 0 only), slices 4 and 5 a 2g.20gb (starts 0, 2, 4); slice 6 blocks neither.
    assert slot == MigSlot(0, "1g.10gb", 6)


@pytest.mark.parametrize(
    ("layout", "held", "profile"),
    [
        ([inst(0, "7g.80gb", 0)], [], "7g.80gb"),
        ([inst(0, "3g.40gb", 0), inst(0, "3g.40gb", 4)], [(0, "3g.40gb", 0)], "3g.40gb"),
    ],
    ids=["7g-on-idle-gpu", "3g-next-to-busy-3g"],
)
def test_taking_the_largest_creatable_shape_costs_nothing(layout, held, profile):
    # The largest creatable profile shrinks only by what the pod itself needs: no loss.
    node = mixed_node(layout, held=held)
    result = mig.evaluate(node, PodRequest("d", "p", WorkloadClass.BATCH, mig={profile: 1}))
    check_plan(node, result, {profile: 1})
    assert result.score == pytest.approx(1.0)


def test_equal_losses_go_to_the_fuller_gpu():
    # Both candidates keep 3g.40gb@4 creatable and cost one 1g.10gb of capacity; GPU 1 is fuller.
    layout = [inst(0, "1g.10gb", 0), inst(0, "1g.10gb", 1)] + [inst(1, "1g.10gb", s) for s in range(4)]
    node = mixed_node(layout, held=[(0, "1g.10gb", 0), (1, "1g.10gb", 0), (1, "1g.10gb", 1),
                                    (1, "1g.10gb", 2)])
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert check_plan(node, result, {"1g.10gb": 1}) == (MigSlot(1, "1g.10gb", 3),)


def test_second_instance_goes_next_to_the_first():
    # Two fully idle GPUs: both 1g instances should land on one GPU, leaving the other whole.
    node = mixed_node(seven_1g(0) + seven_1g(1))
    result = mig.evaluate(node, want(**{"1g_10gb": 2}))
    slots = check_plan(node, result, {"1g.10gb": 2})
    assert len({s.gpu for s in slots}) == 1


def test_large_profile_is_planned_on_an_idle_instance():
    layout = [inst(0, "3g.40gb", 0), inst(0, "3g.40gb", 4), inst(1, "3g.40gb", 0), inst(1, "3g.40gb", 4)]
    node = mixed_node(layout, held=[(0, "3g.40gb", 0), (1, "3g.40gb", 4)])
    slots = check_plan(node, mig.evaluate(node, want(**{"3g_40gb": 2})), {"3g.40gb": 2})
    assert set(slots) == {MigSlot(0, "3g.40gb", 4), MigSlot(1, "3g.40gb", 0)}


def test_multi_profile_request_plans_every_profile():
    layout = [inst(0, "3g.40gb", 0), inst(0, "1g.10gb", 4), inst(0, "1g.10gb", 5), inst(0, "1g.10gb", 6),
              inst(1, "4g.40gb", 0), inst(1, "3g.40gb", 4)]
    node = mixed_node(layout, held=[(0, "1g.10gb", 5)])
    result = mig.evaluate(node, want(**{"3g_40gb": 2, "1g_10gb": 2}))
    check_plan(node, result, {"3g.40gb": 2, "1g.10gb": 2})
    assert 0.0 <= result.score <= 1.0


def test_me_profile_is_planned_on_its_instance():
    layout = [inst(0, "1g.10gb+me", 2), inst(0, "1g.10gb", 0), inst(0, "1g.10gb", 1)]
    node = mixed_node(layout)
    assert node.allocatable["nvidia.com/mig-1g.10gb.me"] == 1
    slots = check_plan(node, mig.evaluate(node, want(**{"1g_10gb__me": 1})), {"1g.10gb+me": 1})
    assert slots == (MigSlot(0, "1g.10gb+me", 2),)


def test_too_few_idle_instances_in_the_layout_is_neutral():
    # Allocatable says 3 free but the layout shows only 1 idle instance.
    node = mixed_node([inst(0, "1g.10gb", 0), inst(0, "1g.10gb", 1)], held=[(0, "1g.10gb", 0)],
                      allocatable={"nvidia.com/mig-1g.10gb": 4})
    result = mig.evaluate(node, want(**{"1g_10gb": 2}))
    assert result.feasible and result.score == NEUTRAL and result.plan.mig == ()


@pytest.mark.parametrize(
    "bad",
    [
        MigInstance(0, "3g.40gb", 2, 4),   # 3g starts only at 0 or 4
        MigInstance(0, "4g.40gb", 4, 4),   # 4g starts only at 0
        MigInstance(0, "2g.20gb", 6, 2),   # 2g starts at 0, 2, 4
        MigInstance(0, "1g.10gb", 7, 1),   # 1g starts at 0..6
        MigInstance(0, "1g.10gb", 3, 2),   # wrong size
        MigInstance(0, "3g.40gb", 4, 3),   # wrong size
        MigInstance(0, "5g.50gb", 0, 4),   # no such profile on H100
    ],
    ids=["3g@2", "4g@4", "2g@6", "1g@7", "1g-size2", "3g-size3", "unknown"],
)
def test_illegal_layout_instance_falls_back_to_neutral_count_based(bad):
    layout = seven_1g(1) + [bad]
    node = mixed_node(layout, allocatable={"nvidia.com/mig-1g.10gb": 7})
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert result.feasible
    assert result.score == NEUTRAL
    assert result.plan.mig == ()
    # Still count-based: asking for more than allocatable is rejected.
    assert not mig.evaluate(node, want(**{"1g_10gb": 8})).feasible


@pytest.mark.parametrize(
    ("layout", "request_counts"),
    [
        ([inst(0, "1g.10gb", 0), inst(0, "1g.10gb", 0)], {"1g.10gb": 2}),      # the same slice twice
        ([inst(0, "3g.40gb", 0), inst(0, "4g.40gb", 0)], {"3g.40gb": 1, "4g.40gb": 1}),
        ([inst(0, "2g.20gb", 2), inst(0, "1g.10gb", 3)], {"2g.20gb": 1, "1g.10gb": 1}),
    ],
    ids=["duplicate-1g@0", "3g@0+4g@0", "2g@2+1g@3"],
)
def test_overlapping_layout_is_not_legal_and_falls_back_to_neutral(layout, request_counts):
    # Each instance is legal on its own, but instances on one GPU may not share memory slices
    # (mig_catalog: "instances may not overlap"). Such a layout cannot exist on a GPU, so it is
    # not a legal layout: no instance may be planned from it, and certainly not two instances
    # that occupy the same slices.
    node = mixed_node(layout)
    result = mig.evaluate(node, PodRequest("d", "p", WorkloadClass.BATCH, mig=request_counts))
    assert result.feasible
    assert result.plan.mig == (), f"planned from an overlapping layout: {result.plan.mig}"
    assert result.score == NEUTRAL


def test_layout_of_an_unknown_gpu_model_is_neutral():
    node = mixed_node(seven_1g(0), model="Tesla-T4")
    result = mig.evaluate(node, want(**{"1g_10gb": 1}))
    assert result.feasible and result.score == NEUTRAL and result.plan.mig == ()


def test_layout_geometry_follows_the_gpu_model():
    # 1g.10gb is one memory slice on H100 but two on A100-40GB: a 2-slice instance at slice 2 is
    # legal there and the same instance is illegal on an H100.
    layout = [MigInstance(0, "1g.10gb", 2, 2)]
    a100 = mixed_node(layout, model=A100_40)
    slots = check_plan(a100, mig.evaluate(a100, want(**{"1g_10gb": 1})), {"1g.10gb": 1})
    assert slots == (MigSlot(0, "1g.10gb", 2),)
    h100 = mixed_node(layout, model=H100)
    assert mig.evaluate(h100, want(**{"1g_10gb": 1})).plan.mig == ()


# ---------------------------------------------------------------------------------------------
# Single strategy
# ---------------------------------------------------------------------------------------------


def single_layout():
    return [i for g in range(4) for i in seven_1g(g, "1g.5gb")]


def test_single_strategy_plans_profile_slots_for_whole_gpu_requests():
    node = single_node(single_layout())
    result = mig.evaluate(node, whole(2))
    slots = check_plan(node, result, {"1g.5gb": 2})
    assert all(s.profile == "1g.5gb" for s in slots)
    assert len({s.gpu for s in slots}) == 1  # packed onto one GPU, three stay whole
    assert result.applicable


def test_single_strategy_counts_against_nvidia_com_gpu():
    node = single_node(single_layout(), unplanned=27)
    result = mig.evaluate(node, whole(2))
    assert not result.feasible and not result.unresolvable
    assert mig.evaluate(single_node(single_layout()), whole(29)).unresolvable


def test_single_strategy_without_layout_is_neutral():
    result = mig.evaluate(single_node(None), whole(3))
    assert result.feasible and result.score == NEUTRAL and result.plan.mig == ()


def test_single_strategy_holds_are_respected():
    held = [(g, "1g.5gb", s) for g in range(4) for s in range(7) if (g, s) != (2, 5)]
    node = single_node(single_layout(), held=held)
    result = mig.evaluate(node, whole(1))
    assert check_plan(node, result, {"1g.5gb": 1}) == (MigSlot(2, "1g.5gb", 5),)
    assert not mig.evaluate(node, whole(2)).feasible


def test_planned_instances_never_overlap():
    layout = [inst(0, "3g.40gb", 0), inst(0, "2g.20gb", 4), inst(0, "1g.10gb", 6),
              inst(1, "1g.20gb", 0), inst(1, "1g.20gb", 2), inst(1, "3g.40gb", 4)]
    node = mixed_node(layout)
    for profiles in ({"1g.20gb": 2}, {"3g.40gb": 2}, {"2g.20gb": 1, "1g.10gb": 1, "1g.20gb": 1}):
        result = mig.evaluate(node, PodRequest("d", "p", WorkloadClass.BATCH, mig=profiles))
        slots = check_plan(node, result, profiles)
        for a, b in combinations(slots, 2):
            if a.gpu == b.gpu:
                assert not set(range(a.start, a.start + SIZE[a.profile])) & set(
                    range(b.start, b.start + SIZE[b.profile]))
