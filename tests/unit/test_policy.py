"""Policy: classification, batch headroom, allocation preference and the scheduler's integers."""

from __future__ import annotations

from dataclasses import replace
from types import MappingProxyType

import pytest

from scoring import fragmentation, policy
from scoring.config import ClassifyArgs, HeadroomArgs, PolicyConfig, Weights
from scoring.model import (
    GPU_RESOURCE,
    Gpu,
    GpuNode,
    MigStrategy,
    Plan,
    PodRequest,
    ScoreBreakdown,
    Usage,
    WorkloadClass,
    mig_resource,
)

LC, BATCH = WorkloadClass.LATENCY_CRITICAL, WorkloadClass.BATCH
CONFIG = PolicyConfig()
NOW = 1_700_000_000.0
INFERENCE = {"gpu-extender.io/pool": "inference"}


# --- classify ----------------------------------------------------------------------------------


@pytest.mark.parametrize(
    ("annotation", "priority", "priority_class", "expected"),
    [
        ("batch", 10**9, "gpu-latency-critical", BATCH),
        ("latency-critical", 0, None, LC),
        ("latency-critical", None, "something-else", LC),
        ("batch", None, None, BATCH),
    ],
)
def test_annotation_wins(annotation, priority, priority_class, expected):
    assert policy.classify(annotation, priority, priority_class, CONFIG) is expected


@pytest.mark.parametrize("annotation", ["urgent", "Batch", "latency_critical"])
def test_bad_annotation_raises_value_error_naming_the_choices(annotation):
    with pytest.raises(ValueError) as info:
        policy.classify(annotation, 10**9, None, CONFIG)
    message = str(info.value)
    assert annotation in message
    assert "latency-critical" in message and "batch" in message


def test_priority_at_or_above_the_threshold_is_latency_critical():
    threshold = CONFIG.classify.priority_threshold
    assert policy.classify(None, threshold, None, CONFIG) is LC
    assert policy.classify(None, threshold + 1, None, CONFIG) is LC
    assert policy.classify(None, threshold - 1, None, CONFIG) is BATCH
    assert policy.classify(None, 0, None, CONFIG) is BATCH


def test_threshold_comes_from_the_config():
    config = replace(CONFIG, classify=ClassifyArgs(priority_threshold=10))
    assert policy.classify(None, 10, None, config) is LC
    assert policy.classify(None, 9, None, config) is BATCH


def test_priority_class_names_decide_only_without_a_priority():
    listed = CONFIG.classify.latency_critical_priority_classes[0]
    low = CONFIG.classify.priority_threshold - 1
    assert policy.classify(None, None, listed, CONFIG) is LC
    assert policy.classify(None, None, "not-listed", CONFIG) is BATCH
    assert policy.classify(None, None, None, CONFIG) is BATCH
    # A resolved priority decides, even when the PriorityClass is on the list.
    assert policy.classify(None, low, listed, CONFIG) is BATCH


def test_priority_class_list_comes_from_the_config():
    config = replace(CONFIG, classify=ClassifyArgs(latency_critical_priority_classes=("serving",)))
    assert policy.classify(None, None, "serving", config) is LC
    assert policy.classify(None, None, "gpu-latency-critical", config) is BATCH


# --- helpers for evaluate ----------------------------------------------------------------------


def plain_node(name: str, held: int = 0, *, total: int = 8, labels=None) -> GpuNode:
    """A node with only allocatable whole GPUs (no agent data): signals other than allocation are equal."""
    return GpuNode(
        name,
        allocatable={GPU_RESOURCE: total},
        gpu_count=total,
        labels=labels or {},
        usage=Usage(gpus=frozenset(range(held))),
    )


def nvlinked_node(name: str, held: int = 0, *, total: int = 8) -> GpuNode:
    """A fully NVLinked board with inventory, `held` of its GPUs taken by planned pods."""
    gpus = tuple(Gpu(i, f"GPU-{name}-{i}", "NVIDIA H100 80GB HBM3", 81_559) for i in range(total))
    nvlink = tuple(tuple(0 if i == j else 18 for j in range(total)) for i in range(total))
    pcie = tuple(tuple(0 if i == j else 50 for j in range(total)) for i in range(total))
    return GpuNode(
        name,
        allocatable={GPU_RESOURCE: total},
        product="NVIDIA H100 80GB HBM3",
        gpu_count=total,
        gpus=gpus,
        nvlink=nvlink,
        pcie=pcie,
        usage=Usage(gpus=frozenset(range(total - held, total))),
    )


def request(cls: WorkloadClass, gpus: int = 1, **kw) -> PodRequest:
    return PodRequest("ns", "pod", cls, gpus=gpus, **kw)


def decide(nodes, req, config=CONFIG, samples=None) -> dict[str, ScoreBreakdown]:
    return {d.node: d for d in policy.evaluate(nodes, req, samples or {}, NOW, config)}


# --- batch headroom ----------------------------------------------------------------------------


def test_batch_pod_leaving_less_than_the_headroom_is_rejected_on_inference_nodes():
    nodes = [plain_node("inf", held=5, labels=INFERENCE)]
    d = decide(nodes, request(BATCH, gpus=2))["inf"]  # would leave 1 of 8 free (12.5% < 25%)
    assert not d.feasible
    assert d.score == 0
    assert "reserved" in d.reason


def test_latency_critical_pod_may_use_the_headroom():
    nodes = [plain_node("inf", held=5, labels=INFERENCE)]
    d = decide(nodes, request(LC, gpus=2))["inf"]
    assert d.feasible
    assert d.score == 10


def test_batch_pod_leaving_exactly_the_headroom_is_accepted():
    nodes = [plain_node("inf", held=5, labels=INFERENCE)]
    assert decide(nodes, request(BATCH, gpus=1))["inf"].feasible  # leaves 2 of 8 = 25%


def test_headroom_applies_only_to_nodes_matching_the_selector():
    nodes = [
        plain_node("inf", held=5, labels=INFERENCE),
        plain_node("train", held=5, labels={"gpu-extender.io/pool": "training"}),
        plain_node("unlabelled", held=5),
    ]
    d = decide(nodes, request(BATCH, gpus=2))
    assert not d["inf"].feasible
    assert d["train"].feasible
    assert d["unlabelled"].feasible


def test_headroom_selector_and_fraction_come_from_the_config():
    config = replace(CONFIG, headroom=HeadroomArgs(node_selector=MappingProxyType({"tier": "gold"}), fraction=0.5))
    nodes = [
        plain_node("gold", held=2, labels={"tier": "gold"}),
        plain_node("inf", held=2, labels=INFERENCE),
    ]
    d = decide(nodes, request(BATCH, gpus=3), config)  # leaves 3 of 8 < 50%
    assert not d["gold"].feasible
    assert d["inf"].feasible
    assert decide(nodes, request(BATCH, gpus=2), config)["gold"].feasible  # leaves 4 of 8


def test_batch_pod_larger_than_the_unreserved_capacity_is_unresolvable():
    nodes = [plain_node("empty", labels=INFERENCE), plain_node("busy", held=5, labels=INFERENCE)]
    d = decide(nodes, request(BATCH, gpus=8))
    assert not d["empty"].feasible and d["empty"].unresolvable  # no preemption frees the reserve
    d = decide(nodes, request(BATCH, gpus=2))
    assert not d["busy"].feasible and not d["busy"].unresolvable  # preempting would make room


def test_headroom_counts_mig_instances_by_their_memory_share():
    # Two H100s: one whole GPU (held), one cut into 7x 1g.10gb; each instance is 1/8 of a GPU.
    def mig_node(held_instances: int) -> GpuNode:
        return GpuNode(
            "n",
            allocatable={GPU_RESOURCE: 1, mig_resource("1g.10gb"): 7},
            product="NVIDIA H100 80GB HBM3",
            mig_strategy=MigStrategy.MIXED,
            gpu_count=2,
            labels=INFERENCE,
            usage=Usage(unplanned={GPU_RESOURCE: 1, mig_resource("1g.10gb"): held_instances}),
        )

    req = request(BATCH, gpus=0, mig={"1g.10gb": 1})
    # 0.5 GPU reserved: 3 held + 1 leaves 2 - 1 - 4/8 = 0.5 free (kept); 4 held + 1 leaves 0.375.
    assert decide([mig_node(3)], req)["n"].feasible
    assert not decide([mig_node(4)], req)["n"].feasible
    assert decide([mig_node(4)], replace(req, workload_class=LC))["n"].feasible


def test_headroom_selector_must_match_every_label():
    selector = MappingProxyType({"pool": "inference", "zone": "a"})
    config = replace(CONFIG, headroom=HeadroomArgs(node_selector=selector))
    nodes = [
        plain_node("both", held=5, labels={"pool": "inference", "zone": "a"}),
        plain_node("one", held=5, labels={"pool": "inference", "zone": "b"}),
    ]
    d = decide(nodes, request(BATCH, gpus=2), config)
    assert not d["both"].feasible
    assert d["one"].feasible


# --- allocation preference ---------------------------------------------------------------------


@pytest.mark.parametrize("make", [plain_node, nvlinked_node])
@pytest.mark.parametrize("gpus", [1, 2])
@pytest.mark.parametrize("workload_class, winner, loser", [
    (BATCH, "fuller", "emptier"),  # batch packs onto the more allocated node
    (LC, "emptier", "fuller"),  # latency-critical, given an allocation weight, spreads
])
def test_batch_packs_and_latency_critical_spreads(make, gpus, workload_class, winner, loser):
    weights = dict(CONFIG.weights)
    weights[LC] = replace(weights[LC], allocation=1)
    config = replace(CONFIG, weights=MappingProxyType(weights))
    nodes = [make("emptier", held=1), make("fuller", held=5)]
    d = decide(nodes, request(workload_class, gpus=gpus), config)
    assert d[winner].feasible and d[loser].feasible
    assert d[winner].total > d[loser].total
    assert d[winner].score == 10
    assert d[loser].score < 10
    assert [x.node for x in policy.evaluate(nodes, request(workload_class, gpus=gpus), {}, NOW, config)][0] == winner


@pytest.mark.parametrize("gpus", [1, 2])
def test_latency_critical_neither_packs_nor_spreads_by_default(gpus):
    """Spreading was a stand-in for headroom, which the utilization signal measures; without
    DCGM data two nodes that differ only in allocation are equal for a latency-critical pod."""
    nodes = [plain_node("emptier", held=1), plain_node("fuller", held=5)]
    d = decide(nodes, request(LC, gpus=gpus))
    assert d["emptier"].total == d["fuller"].total


def test_fragmentation_outweighs_packing_for_batch_pods():
    """Target workload: mostly 1-GPU pods, some 4-GPU ones. On the node with 4 GPUs free a 1-GPU
    pod shuts out a 4-GPU pod; on the one with 7 free it does not. Packing alone would pick the
    fuller node."""
    workload = fragmentation.target_workload({fragmentation.Shape(4, 1000): 1, fragmentation.Shape(1, 1000): 9})
    nodes = [plain_node("packed", held=4), plain_node("roomy", held=1)]
    ranked = policy.evaluate(nodes, request(BATCH, gpus=1), {}, NOW, CONFIG, workload)
    assert [d.node for d in ranked] == ["roomy", "packed"]
    assert ranked[0].signals["fragmentation"].score > ranked[1].signals["fragmentation"].score
    assert [d.node for d in policy.evaluate(nodes, request(BATCH, gpus=1), {}, NOW, CONFIG)][0] == "packed"


def test_a_node_the_fragmentation_signal_cannot_measure_counts_twice_the_request():
    """On a MIG single-strategy node a whole-GPU pod takes MIG instances, which the signal does
    not measure: left out there, the heaviest weight would be left out and the node would win."""
    workload = fragmentation.target_workload({fragmentation.Shape(1, 1000): 1})
    single = GpuNode("single", allocatable={GPU_RESOURCE: 7}, product="NVIDIA-A100-SXM4-80GB",
                     mig_strategy=MigStrategy.SINGLE, single_mig_profile="1g.10gb")
    nodes = [single, plain_node("whole", held=4)]
    d = {b.node: b for b in policy.evaluate(nodes, request(BATCH), {}, NOW, CONFIG, workload)}
    measured, counted = d["whole"].signals["fragmentation"], d["single"].signals["fragmentation"]
    assert measured.score == pytest.approx(1 / 2)  # loss: the request, nothing stranded
    assert counted.applicable and counted.score == pytest.approx(1 / 3)  # 2 r_q: never better
    assert "no whole GPUs to fragment" in counted.reason
    assert not decide(nodes, request(BATCH))["single"].signals["fragmentation"].applicable
    assert not policy.evaluate(nodes, request(BATCH, gpus=0, mig={"1g.10gb": 1}), {}, NOW, CONFIG,
                               workload)[0].signals["fragmentation"].applicable


def test_a_share_goes_on_the_lowest_index_gpu_of_those_with_the_free_milli_fragmentation_plans():
    workload = fragmentation.target_workload({fragmentation.Shape(1, 1000): 3, fragmentation.Shape(1, 300): 1})
    shares = {GPU_RESOURCE: 4, "gpu-extender.io/gpu-milli": 4000}
    fresh = GpuNode("fresh", allocatable=shares, gpu_count=4)
    used = GpuNode("used", allocatable=shares, gpu_count=4, usage=Usage(shared={2: 700}))
    share = PodRequest("ns", "pod", BATCH, gpu_milli=300)
    d = {b.node: b for b in policy.evaluate([fresh, used], share, {}, NOW, CONFIG, workload)}
    assert d["fresh"].plan.share.gpu == 0  # four equal GPUs: the same loss on each
    assert d["used"].plan.share.gpu == 2  # fills GPU 2 exactly, costing no whole GPU


def test_signals_that_do_not_apply_leave_the_total_unchanged():
    # A pod naming no model: the locality weight must not matter.
    nodes = [plain_node("a", held=1), plain_node("b", held=4)]
    heavy = dict(CONFIG.weights)
    heavy[BATCH] = Weights(mig=2, topology=2, sharing=2, locality=100, utilization=0, allocation=3)
    none_ = dict(CONFIG.weights)
    none_[BATCH] = Weights(mig=2, topology=2, sharing=2, locality=0, utilization=0, allocation=3)
    req = request(BATCH)
    a = decide(nodes, req, replace(CONFIG, weights=MappingProxyType(heavy)))
    b = decide(nodes, req, replace(CONFIG, weights=MappingProxyType(none_)))
    for name in ("a", "b"):
        assert a[name].total == pytest.approx(b[name].total)


def test_node_without_gpus_is_rejected_as_unresolvable():
    d = decide([GpuNode("cpu"), plain_node("gpu")], request(LC))
    assert not d["cpu"].feasible and d["cpu"].unresolvable and d["cpu"].score == 0
    assert d["gpu"].feasible and d["gpu"].score == 10


def test_plan_reported_for_a_feasible_node_uses_free_gpus():
    n = nvlinked_node("n", held=3)
    d = decide([n], request(LC, gpus=4))["n"]
    assert d.feasible
    assert len(d.plan.gpus) == 4
    assert not set(d.plan.gpus) & n.usage.gpus


# --- rank --------------------------------------------------------------------------------------


def breakdown(name: str, total: float, feasible: bool = True) -> ScoreBreakdown:
    return ScoreBreakdown(name, feasible, False, total, {}, Plan(), "")


def test_rank_gives_zero_to_infeasible_and_one_to_ten_to_feasible_nodes():
    ranked = policy.rank([
        breakdown("low", 0.2), breakdown("mid", 0.5), breakdown("high", 0.9),
        breakdown("bad", 0.0, feasible=False), breakdown("bad-but-high-total", 0.99, feasible=False),
    ])
    scores = {d.node: d.score for d in ranked}
    assert scores["bad"] == 0 and scores["bad-but-high-total"] == 0
    assert scores["high"] == 10
    assert scores["low"] == 1
    assert 1 <= scores["mid"] <= 10
    assert scores["low"] < scores["mid"] < scores["high"]
    assert all(isinstance(s, int) for s in scores.values())


def test_rank_sorts_feasible_first_then_best_first():
    ranked = policy.rank([
        breakdown("bad", 0.99, feasible=False), breakdown("low", 0.1),
        breakdown("high", 0.8), breakdown("mid", 0.4),
    ])
    assert [d.node for d in ranked] == ["high", "mid", "low", "bad"]


def test_rank_scores_are_monotonic_in_total():
    totals = [0.05 * i for i in range(21)]
    ranked = policy.rank([breakdown(f"n{i:02d}", t) for i, t in enumerate(totals)])
    by_total = sorted(ranked, key=lambda d: d.total)
    scores = [d.score for d in by_total]
    assert scores == sorted(scores)
    assert scores[0] == 1 and scores[-1] == 10


def test_rank_gives_ten_to_all_when_feasible_totals_are_equal():
    ranked = policy.rank([breakdown("a", 0.4), breakdown("b", 0.4), breakdown("c", 0.0, feasible=False)])
    assert {d.node: d.score for d in ranked} == {"a": 10, "b": 10, "c": 0}


def test_rank_single_feasible_node_gets_ten():
    ranked = policy.rank([breakdown("only", 0.01), breakdown("x", 0.0, feasible=False)])
    assert ranked[0].node == "only" and ranked[0].score == 10


def test_rank_with_no_feasible_node_gives_all_zero():
    ranked = policy.rank([breakdown("a", 0.0, feasible=False), breakdown("b", 0.0, feasible=False)])
    assert [d.score for d in ranked] == [0, 0]


def test_rank_of_nothing_is_empty():
    assert policy.rank([]) == []


def test_totals_closer_than_the_signals_resolve_are_not_stretched_over_the_scale():
    # Fragmentation scores of 0.3289 and 0.3203 (a tenth of a GPU of loss apart) used to map to
    # 10 and 1; now the best gets 10 and the other stays near it.
    close = policy.scheduler_scores([breakdown("a", 0.3289), breakdown("b", 0.3203)])
    assert close == {"a": 10, "b": 7}
    # Totals as far apart as MIN_SPAN or more are scaled over the whole 1..10, as before.
    far = policy.scheduler_scores([breakdown("a", 0.9), breakdown("b", 0.5), breakdown("c", 0.75)])
    assert far == {"a": 10, "b": 1, "c": 7}
    assert policy.scheduler_scores([breakdown("a", 0.5), breakdown("b", 0.5)]) == {"a": 10, "b": 10}
    # A node a hair below the best is still below it: the near-tie is decided, not stretched.
    assert policy.scheduler_scores([breakdown("a", 0.5), breakdown("b", 0.4999)]) == {"a": 10, "b": 9}
    assert policy.scheduler_scores([breakdown("a", 0.5), breakdown("b", 0.0, feasible=False)]) == {"a": 10, "b": 0}
