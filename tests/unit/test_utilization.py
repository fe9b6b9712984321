"""Live utilization from DCGM samples: load, freshness, the plan term and missing inventory."""

from __future__ import annotations

import pytest

from scoring import utilization
from scoring.model import GPU_RESOURCE, NEUTRAL, Gpu, GpuNode, GpuSample, MigSlot, Plan
from scoring.utilization import UtilizationArgs

NOW = 1_700_000_000.0
ARGS = UtilizationArgs()
FB_TOTAL = 81_920.0


def gpu_node(name: str = "n", count: int = 4) -> GpuNode:
    gpus = tuple(Gpu(i, f"GPU-{name}-{i}", "NVIDIA H100 80GB HBM3", int(FB_TOTAL)) for i in range(count))
    return GpuNode(name, allocatable={GPU_RESOURCE: count}, gpu_count=count, gpus=gpus)


def sample(util: float = 0.0, fb_used: float = 0.0, *, age: float = 0.0) -> GpuSample:
    return GpuSample(util=util, fb_used_mib=fb_used, fb_free_mib=FB_TOTAL - fb_used, at=NOW - age)


def all_gpus(node: GpuNode, s: GpuSample) -> dict[str, GpuSample]:
    return {g.uuid: s for g in node.gpus}


def score(node, samples, plan=Plan(), now=NOW, args=ARGS) -> float:
    result = utilization.evaluate(node, plan, samples, now, args)
    assert result.feasible
    assert 0.0 <= result.score <= 1.0
    return result.score


def test_hot_node_scores_below_a_cool_node():
    hot, cool = gpu_node("hot"), gpu_node("cool")
    assert score(hot, all_gpus(hot, sample(0.9))) < score(cool, all_gpus(cool, sample(0.1)))


def test_hotter_plan_gpu_lowers_the_score_monotonically():
    n = gpu_node()
    values = [score(n, all_gpus(n, sample(u)), Plan(gpus=(0,))) for u in (0.0, 0.3, 0.6, 1.0)]
    assert values == sorted(values, reverse=True)
    assert len(set(values)) == len(values)


def test_idle_node_scores_one_and_saturated_node_zero():
    n = gpu_node()
    assert score(n, all_gpus(n, sample(0.0))) == pytest.approx(1.0)
    assert score(n, all_gpus(n, sample(1.0))) == pytest.approx(0.0)


def test_missing_data_is_neutral():
    n = gpu_node()
    result = utilization.evaluate(n, Plan(gpus=(0,)), {}, NOW, ARGS)
    assert result.feasible
    assert result.score == NEUTRAL


def test_samples_for_other_gpus_are_ignored():
    n, other = gpu_node("n"), gpu_node("other")
    assert score(n, all_gpus(other, sample(1.0)), Plan(gpus=(0,))) == NEUTRAL


@pytest.mark.parametrize("util", [0.0, 0.5, 1.0])
def test_samples_older_than_the_ttl_are_neutral_like_missing_data(util):
    n = gpu_node()
    stale = all_gpus(n, sample(util, age=ARGS.ttl_seconds + 1))
    missing = utilization.evaluate(n, Plan(gpus=(0,)), {}, NOW, ARGS)
    old = utilization.evaluate(n, Plan(gpus=(0,)), stale, NOW, ARGS)
    assert old.feasible and old.applicable == missing.applicable
    assert old.score == NEUTRAL == missing.score


def test_ttl_comes_from_the_args_and_is_measured_at_now():
    n = gpu_node()
    samples = all_gpus(n, sample(0.9, age=60))
    assert score(n, samples, args=UtilizationArgs(ttl_seconds=30)) == NEUTRAL
    assert score(n, samples, args=UtilizationArgs(ttl_seconds=120)) < NEUTRAL
    # The same sample read earlier is still fresh under the shorter ttl.
    assert score(n, samples, now=NOW - 40, args=UtilizationArgs(ttl_seconds=30)) < NEUTRAL


def test_sample_exactly_ttl_old_is_still_used():
    n = gpu_node()
    samples = all_gpus(n, sample(0.9, age=ARGS.ttl_seconds))
    assert score(n, samples) < NEUTRAL


def test_stale_samples_are_left_out_of_the_mean():
    n = gpu_node(count=2)
    fresh_only = {n.gpus[0].uuid: sample(0.2)}
    with_stale = {n.gpus[0].uuid: sample(0.2), n.gpus[1].uuid: sample(1.0, age=ARGS.ttl_seconds * 10)}
    assert score(n, with_stale) == pytest.approx(score(n, fresh_only))


def test_framebuffer_use_counts_as_load():
    n = gpu_node()
    idle = score(n, all_gpus(n, sample(0.0, fb_used=0.0)))
    full_memory = score(n, all_gpus(n, sample(0.0, fb_used=0.9 * FB_TOTAL)))
    assert full_memory < idle


def test_load_is_the_larger_of_compute_and_framebuffer():
    n = gpu_node()
    by_util = score(n, all_gpus(n, sample(0.8, fb_used=0.0)))
    by_memory = score(n, all_gpus(n, sample(0.0, fb_used=0.8 * FB_TOTAL)))
    both = score(n, all_gpus(n, sample(0.8, fb_used=0.3 * FB_TOTAL)))
    assert by_memory == pytest.approx(by_util)
    assert both == pytest.approx(by_util)


def test_zero_framebuffer_figures_do_not_break_the_load():
    n = gpu_node()
    samples = all_gpus(n, GpuSample(util=0.4, fb_used_mib=0.0, fb_free_mib=0.0, at=NOW))
    assert score(n, samples) == pytest.approx(score(n, all_gpus(n, sample(0.4))))


def test_planned_gpus_matter():
    n = gpu_node(count=2)
    samples = {n.gpus[0].uuid: sample(0.9), n.gpus[1].uuid: sample(0.0)}
    on_busy = score(n, samples, Plan(gpus=(0,)))
    on_idle = score(n, samples, Plan(gpus=(1,)))
    no_plan = score(n, samples)
    assert on_idle > no_plan > on_busy


def test_plan_term_is_weighed_with_the_node_term():
    n = gpu_node(count=2)
    samples = {n.gpus[0].uuid: sample(1.0), n.gpus[1].uuid: sample(0.0)}
    # Plan on the idle GPU of a half-busy node: between the idle GPU alone (1) and the node alone (0.5).
    s = score(n, samples, Plan(gpus=(1,)))
    assert 0.5 < s < 1.0


def test_planned_mig_instance_counts_its_parent_gpu():
    n = gpu_node(count=2)
    samples = {n.gpus[0].uuid: sample(0.9), n.gpus[1].uuid: sample(0.0)}
    on_busy_mig = score(n, samples, Plan(mig=(MigSlot(0, "1g.10gb", 3),)))
    on_idle_mig = score(n, samples, Plan(mig=(MigSlot(1, "1g.10gb", 3),)))
    assert on_busy_mig == pytest.approx(score(n, samples, Plan(gpus=(0,))))
    assert on_idle_mig == pytest.approx(score(n, samples, Plan(gpus=(1,))))
    assert on_idle_mig > on_busy_mig


def test_planned_gpu_without_fresh_data_falls_back_to_the_node_term():
    n = gpu_node(count=2)
    samples = {n.gpus[0].uuid: sample(0.6), n.gpus[1].uuid: sample(0.0, age=ARGS.ttl_seconds + 5)}
    assert score(n, samples, Plan(gpus=(1,))) == pytest.approx(score(n, samples))


def test_node_without_gpu_inventory_is_neutral():
    bare = GpuNode("bare", allocatable={GPU_RESOURCE: 4}, gpu_count=4)
    inventoried = gpu_node("bare")
    samples = all_gpus(inventoried, sample(1.0))  # data exists, but cannot be matched to a device
    result = utilization.evaluate(bare, Plan(gpus=(0,)), samples, NOW, ARGS)
    assert result.feasible
    assert result.score == NEUTRAL
