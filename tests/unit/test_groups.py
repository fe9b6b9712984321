"""Pod groups, the pure part (scoring/groups.py): the domain a group gets, the room held for the
rest of it, and what a member's decision becomes on each node."""

from __future__ import annotations

from hypothesis import given, settings
from hypothesis import strategies as st

from scoring import groups
from scoring.groups import CLIQUE, REQUIRED, PREFERRED, Domain, Placement, Shortfall
from scoring.model import GPU_RESOURCE, GpuNode, Plan, PodRequest, ScoreBreakdown, Usage, WorkloadClass, GroupRef

ZONE = "topology.kubernetes.io/zone"
LEVELS = (CLIQUE, ZONE)


def node(name: str, gpus: int = 4, used: int = 0, **labels: str) -> GpuNode:
    return GpuNode(name, allocatable={GPU_RESOURCE: gpus}, gpu_count=gpus, usage=Usage(gpus=frozenset(range(used))),
                   labels={k.replace("_", "."): v for k, v in labels.items()})


def clique(name: str, value: str, used: int = 0, zone: str = "z1") -> GpuNode:
    return GpuNode(name, allocatable={GPU_RESOURCE: 4}, gpu_count=4, usage=Usage(gpus=frozenset(range(used))),
                   labels={CLIQUE: value, ZONE: zone})


def member(gpus: int = 4, size: int = 4) -> PodRequest:
    return PodRequest("infer", "m-0", WorkloadClass.BATCH, gpus=gpus, group=GroupRef("infer/g", size))


def test_the_fullest_domain_that_fits_is_chosen_so_whole_domains_stay_free():
    nodes = [clique(f"a{i}", "a") for i in range(6)] + [clique(f"b{i}", "b", used=4 if i < 2 else 0) for i in range(6)]
    # a: 6 free nodes; b: 4 free nodes of 6. Four 4-GPU members fit both; b is fuller.
    assert groups.choose(nodes, member(), 4, LEVELS) == Domain(CLIQUE, "b")
    # Five fit only a.
    assert groups.choose(nodes, member(), 5, LEVELS) == Domain(CLIQUE, "a")


def test_the_lowest_level_that_fits_wins_over_a_fuller_higher_one():
    nodes = [clique("a0", "a", zone="z1"), clique("a1", "a", zone="z1"), clique("b0", "b", used=2, zone="z1")]
    assert groups.choose(nodes, member(2), 4, LEVELS) == Domain(CLIQUE, "a")
    # Five members of 2 GPUs fit no clique (a: room for 4, b: 1), but zone z1 (5).
    assert groups.choose(nodes, member(2), 5, LEVELS) == Domain(ZONE, "z1")


def test_no_domain_names_the_group_and_the_best_domain_at_the_lowest_level():
    nodes = [clique(f"a{i}", "a") for i in range(5)] + [clique(f"b{i}", "b") for i in range(3)]
    found = groups.choose(nodes, member(4, 8), 8, (CLIQUE,))
    assert isinstance(found, Shortfall)
    assert found.reason("infer/deepseek-0", member(4, 8)) == (
        f"group infer/deepseek-0 needs 8 pods × 4 GPUs in one {CLIQUE} domain; the best ({CLIQUE}=a) has room for 5")


def test_a_node_without_the_label_is_a_domain_of_its_own_and_a_cluster_without_labels_is_one():
    lone = node("lone", gpus=8)
    nodes = [clique("a0", "a"), lone]
    assert groups.choose(nodes, member(4), 2, (CLIQUE,)) == Domain(CLIQUE, "lone", own=True)
    plain = [node(f"n{i}") for i in range(3)]
    assert groups.choose(plain, member(4), 3, LEVELS) == groups.CLUSTER
    assert groups.CLUSTER.holds(plain[0])


def test_holds_take_the_fullest_nodes_first_and_never_more_than_is_free():
    nodes = [node("empty"), node("half", used=2), node("full", used=4)]
    held = groups.plan_holds(nodes, member(2), 2)
    assert held == {"half": (2, 3), "empty": (0, 1)}
    assert groups.plan_holds(nodes, member(2), 10) == {"half": (2, 3), "empty": (0, 1, 2, 3)}
    assert groups.plan_holds(nodes, member(2), 0) == {}


def test_a_member_goes_to_held_room_first_and_never_outside_its_domain_when_required():
    inside, held, outside = clique("a0", "a"), clique("a1", "a"), clique("b0", "b")
    placement = Placement("infer/g", Domain(CLIQUE, "a"), frozenset({"a1"}), REQUIRED)
    mine = ScoreBreakdown("x", True, False, 0.9, {}, Plan(gpus=(0,)), "best by itself")
    worse = ScoreBreakdown("x", True, False, 0.2, {}, Plan(gpus=(0,)), "worse by itself")
    a0, a1 = groups.apply(mine, inside, placement), groups.apply(worse, held, placement)
    assert a1.total > a0.total  # held room wins over a better node without it
    b0 = groups.apply(mine, outside, placement)
    assert not b0.feasible and b0.unresolvable and b0.reason.startswith(f"outside the pod group's {CLIQUE}")
    preferred = groups.apply(mine, outside, Placement("infer/g", Domain(CLIQUE, "a"), frozenset(), PREFERRED))
    assert preferred.feasible and preferred.total < a0.total


@settings(max_examples=60, deadline=None)
@given(
    st.lists(st.tuples(st.integers(1, 6), st.lists(st.integers(0, 4), min_size=6, max_size=6)), min_size=1, max_size=4),
    st.sampled_from([1, 2, 4]), st.integers(1, 12),
)
def test_the_chosen_domain_holds_the_whole_group_and_holds_stay_within_free_gpus(domains, gpus, size):
    nodes = [clique(f"d{d}-{i}", f"d{d}", used=used[i]) for d, (count, used) in enumerate(domains) for i in range(count)]
    request = member(gpus, size)
    chosen = groups.choose(nodes, request, size, (CLIQUE,))
    fits = {d: sum((4 - n.usage.gpus.__len__()) // gpus for n in nodes if n.labels[CLIQUE] == d.value)
            for d in {Domain(CLIQUE, n.labels[CLIQUE]) for n in nodes}}
    if isinstance(chosen, Shortfall):
        assert all(room < size for room in fits.values())
        assert chosen.best_room == max(fits.values())
        return
    assert fits[chosen] >= size
    inside = [n for n in nodes if chosen.holds(n)]
    held = groups.plan_holds(inside, request, size)
    assert sum(len(g) for g in held.values()) == size * gpus
    for n in inside:
        assert not set(held.get(n.name, ())) & n.usage.gpus  # nothing held twice
    # the best fit: no fitting domain has fewer free GPUs
    free = {d: sum(4 - len(n.usage.gpus) for n in nodes if d.holds(n)) for d in fits}
    assert all(free[chosen] <= free[d] for d, room in fits.items() if room >= size)
