"""Property tests: `policy.evaluate` over generated nodes and pods keeps its invariants."""

from __future__ import annotations

from dataclasses import replace

from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from scoring import policy
from scoring.config import PolicyConfig
from scoring.mig_catalog import COMPUTE_SLICES, MAX_INSTANCES, profiles_for
from scoring.model import (
    GPU_RESOURCE,
    Gpu,
    GpuNode,
    GpuSample,
    MigInstance,
    MigSlot,
    MigStrategy,
    PodRequest,
    Usage,
    WorkloadClass,
    mig_resource,
)
from scoring.topology import PCIE_LEVELS

PRODUCT = "NVIDIA H100 80GB HBM3"
CATALOG = profiles_for(PRODUCT)
assert CATALOG is not None
PROFILES = sorted(CATALOG)
# Every legal (profile, start) placement of a GPU instance on one H100 80GB.
PLACEMENTS = [(p.name, start) for p in CATALOG.values() for start in p.starts]
MODELS = ("llama-70b", "mistral-7b")
NOW = 1_700_000_000.0
CONFIG = PolicyConfig()
SETTINGS = settings(max_examples=200, deadline=None, suppress_health_check=[HealthCheck.too_slow])


def legal_layout(gpu: int, picks: list[tuple[str, int]]) -> list[MigInstance]:
    """Instances from `picks`, keeping each one that still fits beside those kept before it."""
    kept: list[MigInstance] = []
    used: set[int] = set()
    compute = 0
    for name, start in picks:
        profile = CATALOG[name]
        span = set(range(start, start + profile.mem_slices))
        if (
            span & used
            or compute + profile.compute > COMPUTE_SLICES
            or len(kept) >= MAX_INSTANCES
            or sum(1 for inst in kept if inst.profile == name) >= profile.max_count
        ):
            continue
        kept.append(MigInstance(gpu, name, start, profile.mem_slices))
        used |= span
        compute += profile.compute
    return kept


@st.composite
def symmetric(draw, n: int, values) -> tuple[tuple[int, ...], ...]:
    matrix = [[0] * n for _ in range(n)]
    for i in range(n):
        for j in range(i + 1, n):
            matrix[i][j] = matrix[j][i] = draw(values)
    return tuple(tuple(row) for row in matrix)


@st.composite
def nodes(draw, name: str, favour: str | None = None) -> GpuNode:
    """A node of 1..8 H100s; `favour` makes placements of that MIG profile likelier in its layout."""
    n = draw(st.sampled_from((8, 8, 4)) | st.integers(1, 8))
    with_mig = draw(st.sampled_from((True, True, True, False) if favour else (True, False)))
    mig_gpus = draw(st.sets(st.integers(0, n - 1), min_size=1, max_size=n)) if with_mig else set()
    gpus = tuple(Gpu(i, f"GPU-{name}-{i}", PRODUCT, 81_559, mig_enabled=i in mig_gpus) for i in range(n))

    layout: list[MigInstance] = []
    placements = PLACEMENTS + [p for p in PLACEMENTS if p[0] == favour] * 3
    for g in sorted(mig_gpus):
        picks = draw(st.lists(st.sampled_from(placements), max_size=10))
        layout += legal_layout(g, picks)

    whole = [i for i in range(n) if i not in mig_gpus]
    held_gpus = draw(st.sets(st.sampled_from(whole), max_size=len(whole) // 2 + 1)) if whole else set()
    held_mig = draw(st.sets(st.sampled_from(layout), max_size=len(layout) // 2 + 1)) if layout else set()
    unplanned_gpus = draw(st.integers(0, len(whole) - len(held_gpus)) | st.just(0))

    allocatable = {GPU_RESOURCE: len(whole)} if whole else {}
    for inst in layout:
        resource = mig_resource(inst.profile)
        allocatable[resource] = allocatable.get(resource, 0) + 1

    nvlink = pcie = None
    if draw(st.integers(0, 4)) > 0:  # mostly with the agent's topology
        nvlink = draw(symmetric(n, st.sampled_from((0, 0, 1, 2, 4, 6, 12, 18))))
        if draw(st.integers(0, 4)) > 0:
            pcie = draw(symmetric(n, st.sampled_from(PCIE_LEVELS[1:])))

    cache = {}
    for model in MODELS:
        if draw(st.booleans()):
            cache[model] = draw(st.integers(1, 200)) * 2**30
    labels = {"gpu-extender.io/pool": "inference"} if draw(st.booleans()) else {}

    return GpuNode(
        name,
        allocatable=allocatable,
        product=PRODUCT,
        mig_strategy=MigStrategy.MIXED if mig_gpus else MigStrategy.NONE,
        gpu_count=n,
        gpus=gpus,
        nvlink=nvlink,
        pcie=pcie,
        mig_layout=tuple(layout) if mig_gpus else None,
        model_cache=cache,
        labels=labels,
        usage=Usage(
            gpus=frozenset(held_gpus),
            mig=frozenset(MigSlot(i.gpu, i.profile, i.start) for i in held_mig),
            unplanned={GPU_RESOURCE: unplanned_gpus} if unplanned_gpus else {},
        ),
    )


@st.composite
def clusters(draw, favour: str | None = None) -> list[GpuNode]:
    count = draw(st.integers(1, 5))
    return [draw(nodes(f"node-{i}", favour)) for i in range(count)]


@st.composite
def requests(draw) -> PodRequest:
    cls = draw(st.sampled_from(list(WorkloadClass)))
    model = draw(st.none() | st.sampled_from(MODELS))
    common = dict(
        model=model,
        model_size=draw(st.none() | st.integers(1, 200).map(lambda g: g * 2**30)) if model else None,
        model_required=draw(st.sampled_from((False, False, False, True))) if model else False,
    )
    if draw(st.booleans()):
        # Any count from 1 to 8, with the common ones drawn more often.
        gpus = draw(st.sampled_from((1, 1, 2, 2, 4)) | st.integers(1, 8))
        return PodRequest("ns", "pod", cls, gpus=gpus, **common)
    profile = draw(st.sampled_from(PROFILES))
    return PodRequest("ns", "pod", cls, mig={profile: draw(st.integers(1, 2))}, **common)


@st.composite
def sample_sets(draw, cluster: list[GpuNode]) -> dict[str, GpuSample]:
    samples = {}
    for node in cluster:
        for gpu in node.gpus:
            if draw(st.booleans()):
                used = draw(st.floats(0, 81_559))
                samples[gpu.uuid] = GpuSample(
                    util=draw(st.floats(0, 1)),
                    fb_used_mib=used,
                    fb_free_mib=81_559 - used,
                    at=NOW - draw(st.floats(0, 300)),
                )
    return samples


@st.composite
def scenarios(draw):
    request = draw(requests())
    cluster = draw(clusters(next(iter(request.mig), None)))
    return cluster, request, draw(sample_sets(cluster))


def run(scenario):
    cluster, request, samples = scenario
    decisions = policy.evaluate(cluster, request, samples, NOW, CONFIG)
    assert sorted(d.node for d in decisions) == sorted(n.name for n in cluster)
    return {n.name: n for n in cluster}, request, decisions


@SETTINGS
@given(scenarios())
def test_scores_are_integers_from_0_to_10(scenario):
    _, _, decisions = run(scenario)
    for d in decisions:
        assert type(d.score) is int
        assert 0 <= d.score <= 10
        if d.feasible:
            assert d.score >= 1
    if any(d.feasible for d in decisions):
        assert max(d.score for d in decisions) == 10


@SETTINGS
@given(scenarios())
def test_no_infeasible_node_ranks_or_scores_above_a_feasible_one(scenario):
    _, _, decisions = run(scenario)
    feasible = [i for i, d in enumerate(decisions) if d.feasible]
    infeasible = [i for i, d in enumerate(decisions) if not d.feasible]
    if feasible and infeasible:
        assert max(feasible) < min(infeasible)
        assert max(decisions[i].score for i in infeasible) < min(decisions[i].score for i in feasible)
    scores = [d.score for d in decisions]
    assert scores == sorted(scores, reverse=True)


@SETTINGS
@given(scenarios())
def test_total_is_within_0_and_1(scenario):
    _, _, decisions = run(scenario)
    for d in decisions:
        assert 0.0 <= d.total <= 1.0


@SETTINGS
@given(scenarios())
def test_feasible_whole_gpu_plans_use_only_free_non_mig_gpus(scenario):
    by_name, request, decisions = run(scenario)
    for d in decisions:
        if not d.feasible:
            continue
        node = by_name[d.node]
        planned = d.plan.gpus
        assert len(set(planned)) == len(planned)
        assert not set(planned) & node.usage.gpus
        for index in planned:
            gpu = node.gpu(index)
            assert gpu is not None
            assert not gpu.mig_enabled
        topology_known = node.nvlink is not None and bool(node.gpus)
        if request.gpus and topology_known:
            assert len(planned) == request.gpus
        if not request.gpus:
            assert planned == ()


@SETTINGS
@given(scenarios())
def test_feasible_mig_plans_use_idle_instances_of_the_requested_profile(scenario):
    by_name, request, decisions = run(scenario)
    for d in decisions:
        if not d.feasible:
            continue
        node = by_name[d.node]
        slots = d.plan.mig
        assert len(set(slots)) == len(slots)
        layout = {(i.gpu, i.start): i for i in node.mig_layout or ()}
        held = {(s.gpu, s.start) for s in node.usage.mig}
        for slot in slots:
            assert slot.profile in request.mig
            assert (slot.gpu, slot.start) in layout
            assert layout[(slot.gpu, slot.start)].profile == slot.profile
            assert (slot.gpu, slot.start) not in held
            assert slot not in node.usage.mig
        if request.mig:
            # The layout is legal and every allocatable instance is in it: each wanted one is planned.
            assert len(slots) == sum(request.mig.values())
        else:
            assert slots == ()


# --- GPU sharing: pods placed one after another ------------------------------------------------

SHARE = "gpu-extender.io/gpu-milli"


@st.composite
def share_nodes(draw) -> GpuNode:
    """A node of 1..8 GPUs, some MIG-enabled, advertising a nvidia.com/gpu and 1000 milli per
    other GPU; with or without the agent's inventory and NVLink matrix; maybe share milli held
    by pods without a plan."""
    n = draw(st.integers(1, 8))
    mig_gpus = draw(st.sets(st.integers(0, n - 1), max_size=n - 1))
    whole = n - len(mig_gpus)
    inventory = draw(st.booleans())
    gpus = tuple(Gpu(i, f"GPU-{i}", PRODUCT, 81_559, mig_enabled=i in mig_gpus) for i in range(n))
    nvlink = draw(symmetric(n, st.sampled_from((0, 4, 18)))) if inventory and draw(st.booleans()) else None
    unplanned = draw(st.sampled_from((0, 0, 150, 600)))
    return GpuNode(
        "node",
        allocatable={GPU_RESOURCE: whole, SHARE: 1000 * whole},
        product=PRODUCT,
        mig_strategy=MigStrategy.MIXED if mig_gpus else MigStrategy.NONE,
        gpu_count=n,
        gpus=gpus if inventory else (),
        nvlink=nvlink,
        usage=Usage(unplanned={SHARE: unplanned} if unplanned else {}),
    )


pod_sequences = st.lists(
    st.one_of(st.integers(1, 999).map(lambda m: ("share", m)), st.integers(1, 3).map(lambda k: ("whole", k))),
    min_size=1, max_size=40,
)


def placed(node: GpuNode, plan, kind: str, amount: int) -> GpuNode:
    """The node once a pod with `plan` holds its devices (a whole-GPU plan without indices, as
    without topology data, counts without a plan, as convert does)."""
    usage = node.usage
    if kind == "share":
        shared = dict(usage.shared)
        shared[plan.share.gpu] = shared.get(plan.share.gpu, 0) + plan.share.milli
        return replace(node, usage=replace(usage, shared=shared))
    if plan.gpus:
        return replace(node, usage=replace(usage, gpus=usage.gpus | set(plan.gpus)))
    unplanned = {**usage.unplanned, GPU_RESOURCE: usage.unplanned.get(GPU_RESOURCE, 0) + amount}
    return replace(node, usage=replace(usage, unplanned=unplanned))


@SETTINGS
@given(share_nodes(), pod_sequences, st.sampled_from(list(WorkloadClass)))
def test_no_gpu_holds_more_than_1000_milli_and_never_a_share_beside_a_whole_pod(node, pods, cls):
    mig_gpus = {g.index for g in node.gpus if g.mig_enabled} if node.gpus else set()
    whole_gpus = node.allocatable[GPU_RESOURCE]
    unplanned_share = node.usage.unplanned.get(SHARE, 0)
    for i, (kind, amount) in enumerate(pods):
        request = (PodRequest("ns", f"p{i}", cls, gpu_milli=amount) if kind == "share"
                   else PodRequest("ns", f"p{i}", cls, gpus=amount))
        decision = policy.score_node(node, request, None, {}, NOW, CONFIG)
        if not decision.feasible:
            continue
        if kind == "share":
            assert decision.plan.share is not None and decision.plan.share.milli == amount
            assert decision.plan.gpus == ()
        else:
            assert decision.plan.share is None
        node = placed(node, decision.plan, kind, amount)
        usage = node.usage
        # No GPU over 1000 thousandths, counting the share pods without a plan on every one.
        assert all(milli + unplanned_share <= 1000 for milli in usage.shared.values())
        # Whole and share never on one GPU, nor a share on a MIG GPU.
        assert not set(usage.shared) & usage.gpus
        assert not set(usage.shared) & mig_gpus
        # Whole GPUs held, with or without a plan, and shared GPUs fit in the node's whole GPUs.
        held_whole = len(usage.gpus) + usage.unplanned.get(GPU_RESOURCE, 0)
        assert held_whole + len(usage.shared) <= whole_gpus
