"""Fragmentation: capacity per shape, the measure, the loss of a placement and the GPU it picks."""

from __future__ import annotations

import pytest
from hypothesis import given
from hypothesis import strategies as st

from scoring import fragmentation as fr
from scoring.fragmentation import Shape, Workload
from scoring.model import GPU_RESOURCE, GpuNode, GpuShare, MigStrategy, PodRequest, Usage, WorkloadClass

HALF = Shape(1, 500)
ONE = Shape(1, 1000)
EIGHT = Shape(8, 1000)


def workload(*shapes: tuple[Shape, float]) -> Workload:
    return Workload(tuple(shapes))


def loss(w: Workload, free: tuple[int, ...], gpus: int, milli: int, *, cpu: int | None = None,
         pod_cpu: int = 0, model: str = "T4") -> float:
    placed = fr.place(w, model, cpu, free, gpus, milli, pod_cpu)
    assert placed is not None
    return placed.loss


# --- fits and the measure ----------------------------------------------------------------------


def test_fits_counts_share_slots_whole_sets_cpu_and_models():
    free = (1000, 1000, 1000, 700, 200)
    assert fr.fits(HALF, "T4", None, free) == 2 + 2 + 2 + 1
    assert fr.fits(Shape(2, 1000), "T4", None, free) == 1
    assert fr.fits(Shape(1, 300, cpu_milli=4000), "T4", 9000, free) == 2  # CPU-starved
    assert fr.fits(Shape(1, 1000, models=frozenset({"V100M16"})), "T4", None, free) == 0
    assert fr.fits(Shape(0, 0), "T4", None, free) == 0


def test_usable_is_the_milli_the_share_shapes_could_still_use():
    w = workload((HALF, 0.5), (EIGHT, 0.5))
    # 8 GPUs free: sixteen half-GPU pods; the 8-GPU shape is FGD's half's business
    assert fr.usable(w, "G2", None, (1000,) * 8) == pytest.approx(0.5 * 500 * 16)
    # 700 + 200 free: one half-GPU pod, its 200 remainder and the 200 GPU serve none
    assert fr.usable(w, "G2", None, (700, 200)) == pytest.approx(0.5 * 500)
    assert fr.usable(workload((EIGHT, 1.0)), "G2", None, (1000,) * 8) == 0


def test_empty_workload_costs_only_the_request_everywhere_and_counts_all_free_milli():
    empty = workload()
    assert 1300 - fr.usable(empty, "T4", None, (1000, 300)) == 1300
    assert fr.stranded(empty, "T4", None, (1000, 300)) == 0
    assert loss(empty, (1000, 300), 1, 200) == loss(empty, (1000, 1000, 1000), 1, 200) == 200
    assert fr.score(0) == 1.0


# --- loss of a placement -----------------------------------------------------------------------


def test_taking_a_gpu_from_an_idle_eight_gpu_node_costs_the_eight_gpu_shape():
    w = workload((ONE, 0.9), (EIGHT, 0.1))
    idle, busy = (1000,) * 8, (1000, 1000, 1000, 0, 0, 0, 0, 0)
    # FGD's half: the 8-GPU shape that did not fit strands 100 less on the busy node, it no
    # longer fits the idle one and strands 700 there; plus the request on both
    assert loss(w, busy, 1, 1000) == pytest.approx(-0.1 * 1000 + 1000)
    assert loss(w, idle, 1, 1000) == pytest.approx(0.1 * 7000 + 1000)
    assert fr.score(loss(w, busy, 1, 1000)) > fr.score(loss(w, idle, 1, 1000))


def test_a_share_that_uses_a_remainder_nobody_else_can_use_is_free():
    w = workload((HALF, 1.0))
    assert loss(w, (1000, 300), 1, 300) == 0  # the 300 could hold no half-GPU pod
    placed = fr.place(w, "T4", None, (1000, 300), 1, 300)
    assert placed == fr.Placement((1,), 0.0)


def test_cpu_starvation_counts():
    w = workload((Shape(1, 1000, cpu_milli=8000), 1.0))
    # a CPU-only pod taking the CPU that two free GPUs needed strands both for FGD's half
    assert loss(w, (1000, 1000), 0, 0, cpu=16000, pod_cpu=16000) == pytest.approx(2000)
    # for a share shape also the two 500-milli slots the CPU left room for
    share = workload((Shape(1, 500, cpu_milli=8000), 1.0))
    assert loss(share, (1000, 1000), 0, 0, cpu=16000, pod_cpu=16000) == pytest.approx(2 * 500 + 2000)
    assert loss(w, (1000, 1000), 0, 0, cpu=40000, pod_cpu=16000) == 0
    assert fr.place(w, "T4", 1000, (1000,), 1, 1000, pod_cpu_milli=2000) is None


def test_share_pod_picks_least_loss_then_fullest_gpu_and_maps_indices_back():
    w = workload((Shape(1, 300), 1.0))
    # a 100 share on GPU 0 (600 -> 500) loses a 300-slot; on GPU 1 (1000 -> 900) it loses none;
    # neither strands anything for FGD (the request, 100, is the same on both)
    assert fr.place(w, "T4", None, (600, 1000), 1, 100) == fr.Placement((1,), 100.0)
    # ties (no loss on the partial GPUs for an 800 workload): the fullest fitting GPU
    w = workload((Shape(1, 800), 1.0))
    assert fr.place(w, "T4", None, (700, 300, 500, 1000), 1, 250).gpus == (1,)


def test_no_fit_is_none():
    w = workload((ONE, 1.0))
    assert fr.place(w, "T4", None, (1000, 400), 2, 1000) is None
    assert fr.place(w, "T4", None, (300, 400), 1, 500) is None


frees = st.lists(st.integers(0, 1000), min_size=1, max_size=8).map(tuple)
shapes = st.one_of(
    st.builds(Shape, st.just(1), st.integers(1, 999), st.sampled_from([0, 2000, 8000])),
    st.builds(Shape, st.sampled_from([1, 2, 4, 8]), st.just(1000), st.sampled_from([0, 4000, 16000])),
)
workloads = st.lists(st.tuples(shapes, st.floats(0.01, 1.0)), min_size=1, max_size=6).map(
    lambda items: Workload(tuple((s, p / sum(q for _, q in items)) for s, p in items)))
cpus = st.one_of(st.none(), st.integers(0, 64000))


@given(workloads, frees, shapes, cpus)
def test_loss_is_never_negative_and_the_measure_never_exceeds_the_free_milli(w, free, pod, cpu):
    assert -1e-6 <= sum(free) - fr.usable(w, "T4", cpu, free) <= sum(free) + 1e-6  # sums of floats
    assert -1e-6 <= fr.stranded(w, "T4", cpu, free) <= sum(free) + 1e-6
    placed = fr.place(w, "T4", cpu, free, pod.gpus, pod.milli, pod.cpu_milli)
    if placed is not None:
        assert placed.loss >= -1e-9
        assert 0 < fr.score(placed.loss) <= 1
        assert len(placed.gpus) == pod.gpus
        assert all(free[g] >= pod.milli for g in placed.gpus)


def loss_on(w: Workload, free: tuple[int, ...], gpu: int, milli: int) -> float:
    after = list(free)
    after[gpu] -= milli
    after = tuple(after)
    return (fr.usable(w, "T4", None, free) - fr.usable(w, "T4", None, after)
            + fr.stranded(w, "T4", None, after) - fr.stranded(w, "T4", None, free) + milli)


@given(workloads, frees, st.integers(1, 999), st.integers(1, 1000))
def test_filling_a_gpu_exactly_never_scores_below_leaving_an_unusable_remainder(w, free, milli, extra):
    """A share pod on a GPU with exactly its milli free vs on a GPU where it leaves a remainder
    smaller than any share shape of the workload (and that is not a whole free GPU)."""
    smallest = min((s.milli for s, _ in w.shapes if s.milli < 1000), default=1000)
    remainder = min(extra, smallest - 1, 999 - milli)
    if remainder < 1:
        return
    exact = loss_on(w, free + (milli,), len(free), milli)
    loose = loss_on(w, free + (milli + remainder,), len(free), milli)
    assert fr.score(exact) >= fr.score(loose) - 1e-9  # float sums


# --- the signal on a GpuNode -------------------------------------------------------------------


def request(gpus=0, milli=0, cpu=0, mig=None) -> PodRequest:
    return PodRequest("ns", "p", WorkloadClass.BATCH, gpus=gpus, gpu_milli=milli, mig=mig or {},
                      cpu_milli=cpu)


def test_node_free_reads_plans_shares_and_unplanned_gpus():
    node = GpuNode("n", allocatable={GPU_RESOURCE: 4}, gpu_count=4,
                   usage=Usage(gpus=frozenset({0}), shared={1: 300}, unplanned={GPU_RESOURCE: 1}))
    assert fr.node_free(node) == ((0, 1, 2, 3), (0, 700, 1000, 0))


def test_signal_plans_the_share_and_scores_the_loss():
    w = workload((HALF, 1.0))
    node = GpuNode("n", allocatable={GPU_RESOURCE: 2}, gpu_count=2, usage=Usage(shared={1: 700}))
    result = fr.evaluate(node, request(milli=300), w)
    assert result.applicable and result.score == 1.0
    assert result.plan.share == GpuShare(1, 300)
    whole = fr.evaluate(node, request(gpus=1), w)  # both half-GPU slots of GPU 0 lost, + 1000
    assert whole.score == pytest.approx(fr.score(1000 + 1000)) and whole.plan.share is None


def test_signal_does_not_apply_without_workload_or_to_mig_and_counts_2r_where_it_cannot_measure():
    node = GpuNode("n", allocatable={GPU_RESOURCE: 2}, gpu_count=2)
    w = workload((ONE, 1.0))
    assert not fr.evaluate(node, request(gpus=1), None).applicable
    assert not fr.evaluate(node, request(gpus=1), workload()).applicable
    assert not fr.evaluate(node, request(mig={"1g.10gb": 1}), w).applicable
    single = GpuNode("m", allocatable={GPU_RESOURCE: 7}, mig_strategy=MigStrategy.SINGLE)
    counted = fr.evaluate(single, request(gpus=1), w)
    assert counted.applicable and counted.score == fr.score(2 * 1000)


def test_target_workload_keeps_the_most_frequent_shapes_then_those_with_gpus():
    # 200 pods: 95% are covered by the CPU-only shape, ONE and HALF
    counts = {ONE: 60, HALF: 30, EIGHT: 9, Shape(2, 1000): 1, Shape(0, 0): 100}
    w = fr.target_workload(counts, coverage=0.95)
    assert [s for s, _ in w.shapes] == [ONE, HALF]
    assert [p for _, p in w.shapes] == pytest.approx([60 / 90, 30 / 90])
    assert len(fr.target_workload(counts).shapes) == 4
    assert fr.target_workload({Shape(0, 0): 5}).shapes == ()


# --- the cluster's supply: weights, shapes no node holds, the prior ------------------------------

SUPPLY = fr.Supply({fr.NodeKind("T4", 4): 2, fr.NodeKind("G2", 8): 9})  # 8 T4s, 72 G2s


def test_a_shape_weighs_its_popularity_per_gpu_it_may_use():
    t4_only, any_model = Shape(2, 1000, models=frozenset({"T4"})), ONE
    w = fr.target_workload({t4_only: 100, any_model: 900}, supply=SUPPLY)
    weights = dict(zip((s for s, _ in w.shapes), w.weights))
    popularity = dict(w.shapes)
    # Per GPU it may use, the T4 shape weighs as the other (only 8 of the 80 GPUs are T4s) ...
    assert weights[t4_only] / weights[any_model] == pytest.approx(popularity[t4_only] * 10 / popularity[any_model])
    assert sum(weights.values()) == pytest.approx(1.0)  # ... and the weights sum to 1
    # So an unconstrained pod keeps off the scarce T4 node: the last pair of GPUs there is what
    # a T4 pod needs (on the G2 node, where T4 pods never fit, it strands nothing new).
    pair = (1000, 1000)
    assert fr.place(w, "T4", None, pair, 1, 1000).loss > fr.place(w, "G2", None, pair, 1, 1000).loss
    # Without the supply the constrained shape weighs only its popularity: the T4 node costs
    # a fifth of a GPU more, not a whole one.
    plain = fr.target_workload({t4_only: 100, any_model: 900})
    assert plain.weights == ()

    def gap(workload: Workload) -> float:
        return fr.place(workload, "T4", None, pair, 1, 1000).loss - fr.place(workload, "G2", None, pair, 1, 1000).loss

    assert gap(plain) == pytest.approx(200) and gap(w) > 1000


def test_shapes_no_node_could_hold_stay_out_of_the_workload():
    sixteen, t4_eight = Shape(16, 1000), Shape(8, 1000, models=frozenset({"T4"}))
    w = fr.target_workload({ONE: 50, sixteen: 20, t4_eight: 20}, supply=SUPPLY)
    assert {s for s, _ in w.shapes} == {ONE, EIGHT}  # EIGHT: the prior for the largest nodes
    assert not SUPPLY.holds(sixteen) and not SUPPLY.holds(t4_eight) and SUPPLY.holds(EIGHT)


def test_the_prior_keeps_large_pods_in_a_young_workload_and_fades_as_pods_are_counted():
    young = dict(fr.target_workload({ONE: 50}, supply=SUPPLY).shapes)
    assert young[EIGHT] == pytest.approx(fr.prior(50) / (50 + fr.prior(50)))
    assert young[EIGHT] > 0.03  # an idle 8-GPU node is worth keeping ...
    idle, six_used = (1000,) * 8, (1000, 1000) + (0,) * 6
    w = fr.target_workload({ONE: 50, Shape(2, 1000): 4}, supply=SUPPLY)
    # ... more than a pair of free GPUs: a one-GPU pod goes to the node already in use.
    assert fr.place(w, "G2", None, six_used, 1, 1000).loss < fr.place(w, "G2", None, idle, 1, 1000).loss
    old = dict(fr.target_workload({ONE: 10_000}, supply=SUPPLY).shapes)
    assert old[EIGHT] < 1e-5  # the workload has spoken: no 8-GPU pods
    # Pods of the shape add to the prior rather than standing beside it.
    assert dict(fr.target_workload({ONE: 50, EIGHT: 5}, supply=SUPPLY).shapes)[EIGHT] == pytest.approx(
        (5 + fr.prior(55)) / (55 + fr.prior(55)))
    assert fr.target_workload({ONE: 50}).shapes == ((ONE, 1.0),)  # no supply, no prior


def test_nodes_only_some_shapes_fit_by_cpu_are_kept_for_them_by_fit_not_by_weight():
    """8-GPU pods of 120 cores fit only the few 128-core nodes: FGD's half keeps those for them
    (an idle G3 node loses its slot for the big pod), but the shape is not weighed up for it:
    G(m) counts GPU models only, so the big pods' few nodes do not crowd out everyone else."""
    supply = fr.Supply({fr.NodeKind("G2", 8, 96_000): 50, fr.NodeKind("G3", 8, 128_000): 5})
    big, one = Shape(8, 1000, 120_000), Shape(1, 1000, 8_000)
    assert supply.gpus(big) == supply.gpus(one) == 440
    assert supply.holds(big) and not supply.holds(Shape(8, 1000, 130_000)) and not supply.holds(Shape(16, 1000))
    w = fr.target_workload({one: 95, big: 5}, supply=supply)
    weights = dict(zip((s for s, _ in w.shapes), w.weights))
    assert weights[big] / weights[one] == pytest.approx(5 / 95)
    idle = (1000,) * 8
    on_g3 = fr.place(w, "G3", 128_000, idle, 1, 1000, 8_000).loss
    on_g2 = fr.place(w, "G2", 96_000, idle, 1, 1000, 8_000).loss
    # On G3 the big pod's slot goes (7 GPUs stranded for it); on G2 it never had one (one GPU
    # fewer of its stranded 8): 8 GPUs of its weight apart, and G2 wins.
    assert on_g3 - on_g2 == pytest.approx(8 * 1000 * weights[big])

