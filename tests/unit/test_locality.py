"""Model-cache locality: cached fraction, cluster spread, required locality and model size."""

from __future__ import annotations

import pytest

from scoring import locality
from scoring.locality import LocalityArgs, ModelSpread
from scoring.model import GPU_RESOURCE, NEUTRAL, GpuNode, PodRequest, WorkloadClass

MODEL = "llama-70b"
GIB = 2**30


def node(name: str, cached: int = 0, *, gpus: int = 8, model: str = MODEL) -> GpuNode:
    cache = {model: cached} if cached else {}
    allocatable = {GPU_RESOURCE: gpus} if gpus else {}
    return GpuNode(name, allocatable=allocatable, model_cache=cache)


def pod(model: str | None = MODEL, *, size: int | None = None, required: bool = False) -> PodRequest:
    return PodRequest(
        "ns", "pod", WorkloadClass.LATENCY_CRITICAL, gpus=1,
        model=model, model_size=size, model_required=required,
    )


def scores(nodes: list[GpuNode], request: PodRequest, args: LocalityArgs = LocalityArgs()) -> dict[str, float]:
    spread = locality.model_spread(nodes, request.model or "", request.model_size)
    results = {n.name: locality.evaluate(n, request, spread, args) for n in nodes}
    assert all(r.feasible for r in results.values())
    return {name: r.score for name, r in results.items()}


# --- fraction cached ---------------------------------------------------------------------------


@pytest.mark.parametrize("fraction", [0.25, 0.5, 0.75])
def test_partial_cache_scores_in_proportion_to_the_cached_fraction(fraction):
    size = 100 * GIB
    nodes = [node("full", size), node("partial", int(size * fraction))]
    s = scores(nodes, pod(size=size))
    assert s["full"] > 0
    assert s["partial"] == pytest.approx(fraction * s["full"])


def test_fully_cached_model_on_every_node_scores_one():
    nodes = [node("a", 10 * GIB), node("b", 10 * GIB)]
    s = scores(nodes, pod(size=10 * GIB))
    assert s == {"a": pytest.approx(1.0), "b": pytest.approx(1.0)}


def test_cached_bytes_beyond_the_model_size_do_not_raise_the_fraction_above_one():
    size = 10 * GIB
    nodes = [node("exact", size), node("bigger", 3 * size)]
    s = scores(nodes, pod(size=size))
    assert s["bigger"] == pytest.approx(s["exact"])
    assert s["bigger"] <= 1.0


def test_node_without_the_model_scores_zero_but_stays_feasible():
    nodes = [node("has", 10 * GIB), node("hasnt")]
    spread = locality.model_spread(nodes, MODEL, None)
    result = locality.evaluate(nodes[1], pod(), spread, LocalityArgs())
    assert result.feasible and result.applicable
    assert result.score == 0.0


def test_other_models_in_the_cache_do_not_count():
    nodes = [node("mine", 10 * GIB), node("other", 10 * GIB, model="mistral-7b")]
    s = scores(nodes, pod())
    assert s["other"] == 0.0
    assert s["mine"] > 0.0


# --- spread factor -----------------------------------------------------------------------------


def test_model_on_more_nodes_scores_higher_on_a_caching_node():
    size = 10 * GIB
    rare = [node("n0", size), node("n1"), node("n2"), node("n3")]
    common = [node("n0", size), node("n1", size), node("n2", size), node("n3")]
    assert scores(common, pod())["n0"] > scores(rare, pod())["n0"]


def test_spread_factor_follows_the_share_of_gpu_nodes_holding_the_model():
    size = 10 * GIB
    args = LocalityArgs(spread_floor=0.0)
    nodes = [node("n0", size), node("n1"), node("n2"), node("n3")]
    # With no floor, a full copy on 1 of 4 GPU nodes scores the share itself.
    assert scores(nodes, pod(), args)["n0"] == pytest.approx(0.25)


@pytest.mark.parametrize("floor", [0.0, 0.2, 0.5, 0.9])
def test_spread_floor_bounds_the_score_of_a_full_copy_from_below(floor):
    size = 10 * GIB
    nodes = [node("only", size)] + [node(f"empty{i}") for i in range(99)]
    s = scores(nodes, pod(), LocalityArgs(spread_floor=floor))["only"]
    assert s >= floor - 1e-12
    assert s < floor + 0.05  # 1 node of 100: barely above the floor


def test_spread_floor_one_ignores_spread():
    size = 10 * GIB
    args = LocalityArgs(spread_floor=1.0)
    rare = [node("n0", size), node("n1"), node("n2")]
    common = [node("n0", size), node("n1", size), node("n2", size)]
    assert scores(rare, pod(), args)["n0"] == pytest.approx(1.0)
    assert scores(common, pod(), args)["n0"] == pytest.approx(1.0)


def test_higher_floor_raises_the_score_of_a_rare_model():
    size = 10 * GIB
    nodes = [node("n0", size), node("n1"), node("n2"), node("n3")]
    low = scores(nodes, pod(), LocalityArgs(spread_floor=0.1))["n0"]
    high = scores(nodes, pod(), LocalityArgs(spread_floor=0.8))["n0"]
    assert high > low


def test_model_spread_counts_only_gpu_nodes_and_nodes_with_the_model():
    size = 10 * GIB
    nodes = [
        node("gpu-with", size),
        node("gpu-without"),
        node("cpu-with", size, gpus=0),  # no GPUs: not a GPU node at all
        node("gpu-other", size, model="other"),
    ]
    spread = locality.model_spread(nodes, MODEL, None)
    assert spread.gpu_nodes == 3
    assert spread.nodes_with == 1


def test_node_without_gpus_does_not_dilute_the_spread():
    size = 10 * GIB
    gpu_only = [node("n0", size), node("n1")]
    with_cpu = gpu_only + [node("cpu", gpus=0)]
    assert scores(with_cpu, pod())["n0"] == pytest.approx(scores(gpu_only, pod())["n0"])


# --- not applicable ----------------------------------------------------------------------------


@pytest.mark.parametrize("model", [None, ""])
def test_pod_without_a_model_makes_the_signal_not_applicable(model):
    nodes = [node("n0", 10 * GIB), node("n1")]
    request = pod(model)
    spread = locality.model_spread(nodes, request.model or "", None)
    for n in nodes:
        result = locality.evaluate(n, request, spread, LocalityArgs())
        assert result.feasible
        assert not result.applicable
        assert result.score == NEUTRAL


def test_pod_without_a_model_is_not_rejected_even_when_locality_is_required():
    nodes = [node("n0")]
    request = pod(None, required=True)
    result = locality.evaluate(nodes[0], request, locality.model_spread(nodes, "", None), LocalityArgs())
    assert result.feasible and not result.applicable


# --- required locality -------------------------------------------------------------------------


def test_required_model_rejects_a_node_without_a_full_copy_as_unresolvable():
    size = 10 * GIB
    nodes = [node("full", size), node("half", size // 2), node("none")]
    request = pod(size=size, required=True)
    spread = locality.model_spread(nodes, MODEL, size)
    results = {n.name: locality.evaluate(n, request, spread, LocalityArgs()) for n in nodes}
    assert results["full"].feasible
    for name in ("half", "none"):
        assert not results[name].feasible
        assert results[name].unresolvable
        assert MODEL in results[name].reason


@pytest.mark.parametrize(("cached_fraction", "feasible"), [(0.4, False), (0.5, True), (0.6, True), (1.0, True)])
def test_required_fraction_is_the_threshold(cached_fraction, feasible):
    size = 100 * GIB
    args = LocalityArgs(required_fraction=0.5)
    target = node("target", int(size * cached_fraction))
    nodes = [target, node("full", size)]
    request = pod(size=size, required=True)
    result = locality.evaluate(target, request, locality.model_spread(nodes, MODEL, size), args)
    assert result.feasible is feasible
    if not feasible:
        assert result.unresolvable


def test_model_not_required_never_rejects():
    nodes = [node("full", 10 * GIB), node("none")]
    request = pod(required=False)
    spread = locality.model_spread(nodes, MODEL, None)
    assert all(locality.evaluate(n, request, spread, LocalityArgs()).feasible for n in nodes)


def test_required_model_cached_nowhere_rejects_every_node():
    nodes = [node("a"), node("b")]
    request = pod(required=True)
    spread = locality.model_spread(nodes, MODEL, None)
    for n in nodes:
        result = locality.evaluate(n, request, spread, LocalityArgs())
        assert not result.feasible and result.unresolvable


# --- model size --------------------------------------------------------------------------------


def test_model_size_is_the_size_the_pod_states():
    nodes = [node("a", 30 * GIB), node("b", 60 * GIB)]
    spread = locality.model_spread(nodes, MODEL, 120 * GIB)
    assert spread.size == 120 * GIB
    s = scores(nodes, pod(size=120 * GIB))
    # Neither node holds the whole stated model: both are partial, in proportion.
    assert s["b"] == pytest.approx(2 * s["a"])
    assert s["b"] < scores(nodes, pod(size=60 * GIB))["b"]


def test_model_size_defaults_to_the_largest_cached_copy():
    nodes = [node("a", 30 * GIB), node("b", 60 * GIB), node("c")]
    spread = locality.model_spread(nodes, MODEL, None)
    assert spread.size == 60 * GIB
    s = scores(nodes, pod())
    assert s["a"] == pytest.approx(0.5 * s["b"])
    # Without a stated size, the largest copy counts as complete.
    assert s["b"] == pytest.approx(scores(nodes, pod(size=60 * GIB))["b"])


def test_largest_copy_ignores_other_models():
    nodes = [node("a", 30 * GIB), node("b", 500 * GIB, model="other")]
    assert locality.model_spread(nodes, MODEL, None).size == 30 * GIB


def test_evaluate_uses_the_spread_it_is_given():
    n = node("n", 50 * GIB)
    request = pod()
    whole = locality.evaluate(n, request, ModelSpread(size=50 * GIB, nodes_with=1, gpu_nodes=1), LocalityArgs())
    half = locality.evaluate(n, request, ModelSpread(size=100 * GIB, nodes_with=1, gpu_nodes=1), LocalityArgs())
    assert half.score == pytest.approx(whole.score / 2)
