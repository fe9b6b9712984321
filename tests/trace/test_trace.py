"""Trace replay: reader, constraints, inflation and each baseline's definition, on small CSVs."""

from __future__ import annotations

import random
from collections import Counter
from pathlib import Path

import pytest

from benchmarks.trace.baselines import (BestFitPolicy, Candidate, DotProdPolicy, FGDPolicy,
                                        GpuPackingPolicy, RandomPolicy, make_policy)
from benchmarks.trace.cluster import Cluster, PlacementError, state_fits
from benchmarks.trace.openb import MILLI, Node, Pod, TraceError, read_nodes, read_pods
from benchmarks.trace.inference import CATALOGUE, Catalogue, InferenceView, read_latencies
from benchmarks.trace.ours import OursPolicy
from benchmarks.trace.replay import replay, run
from benchmarks.trace.workload import inflate, typical_pods

NODE_HEAD = "sn,cpu_milli,memory_mib,gpu,model\n"
POD_HEAD = ("name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,pod_phase,creation_time,"
            "deletion_time,scheduled_time\n")


def write(tmp_path: Path, name: str, text: str) -> Path:
    path = tmp_path / name
    path.write_text(text)
    return path


def pod(name="p", cpu=1000, mem=1024, num=1, milli=1000, spec="", qos="LS", t=0) -> Pod:
    return Pod(name, cpu, mem, num, milli, frozenset(s for s in spec.split("|") if s), qos, t)


def candidates(cluster: Cluster, p: Pod) -> list[Candidate]:
    return [Candidate(s, list(m)) for s, m in cluster.groups.items() if state_fits(p, s)]


@pytest.mark.parametrize("row, reason", [
    ("p,1000,10,1,abc,,LS,Running,0,,", "gpu_milli is 'abc'"),
    ("p,1000,10,1,1200,,LS,Running,0,,", "over 1000"),
    ("p,1000,10,2,500,,LS,Running,0,,", "shares a GPU"),
    ("p,-5,10,0,0,,LS,Running,0,,", "negative"),
    ("p,1000,10,0,300,,LS,Running,0,,", "num_gpu 0"),
    (",1000,10,0,0,,LS,Running,0,,", "name is empty"),
])
def test_reader_rejects_bad_pod_rows_with_line(tmp_path, row, reason):
    path = write(tmp_path, "pods.csv", POD_HEAD + "ok,1,1,0,0,,BE,Running,0,,\n" + row + "\n")
    with pytest.raises(TraceError, match=rf"pods.csv:3: .*{reason}"):
        read_pods(path)


def test_reader_rejects_bad_nodes_and_missing_columns(tmp_path):
    with pytest.raises(TraceError, match="nodes.csv:2: node n has 2 GPU"):
        read_nodes(write(tmp_path, "nodes.csv", NODE_HEAD + "n,1000,10,2,\n"))
    with pytest.raises(TraceError, match="missing column.*model"):
        read_nodes(write(tmp_path, "n2.csv", "sn,cpu_milli,memory_mib,gpu\nn,1,1,0\n"))


def test_reader_reads_rows(tmp_path):
    [p] = read_pods(write(tmp_path, "p.csv", POD_HEAD + "a,2000,64,1,250,V100M16|V100M32,LS,"
                                                          "Running,7,,\n"))
    assert (p.cpu_milli, p.memory_mib, p.total_gpu_milli, p.latency_critical) == (2000, 64, 250, True)
    assert p.gpu_spec == {"V100M16", "V100M32"}
    [n] = read_nodes(write(tmp_path, "n.csv", NODE_HEAD + "n,8000,512,4,T4\n"))
    assert n == Node("n", 8000, 512, 4, "T4")


def test_reader_takes_the_five_column_lists(tmp_path):
    """openb_pod_list_multigpu20.csv has no gpu_spec, qos or creation_time: any model, batch,
    file order."""
    path = write(tmp_path, "p.csv", "name,cpu_milli,memory_mib,num_gpu,gpu_milli\n"
                                    "a,2000,64,2,1000\nb,1000,32,1,300\n")
    a, b = read_pods(path)
    assert (a.gpu_spec, a.qos, a.latency_critical, a.creation_time) == (frozenset(), "", False, 0)
    assert (b.total_gpu_milli, b.creation_time) == (300, 1)


def test_place_refuses_every_violation():
    c = Cluster([Node("a", 4000, 10000, 2, "T4")])
    with pytest.raises(PlacementError):
        c.place(pod(cpu=5000), 0, (0,))
    with pytest.raises(PlacementError):
        c.place(pod(mem=10001), 0, (0,))
    with pytest.raises(PlacementError):
        c.place(pod(spec="V100M16"), 0, (0,))
    with pytest.raises(PlacementError):
        c.place(pod(num=2), 0, (0, 0))
    c.place(pod(milli=600), 0, (0,))
    with pytest.raises(PlacementError):
        c.place(pod(milli=500), 0, (0,))
    c.place(pod(milli=500), 0, (1,))
    assert c.gpu_left(0) == [400, 500] and c.allocated_gpu_milli == 1100


def random_workload(n: int, rng: random.Random) -> list[Pod]:
    shapes = [(0, 0), (1, 1000), (1, 300), (1, 650), (2, 1000), (4, 1000), (8, 1000)]
    out = []
    for i in range(n):
        num, milli = rng.choice(shapes)
        spec = rng.choice(["", "", "", "V100M16", "T4|A10"]) if num else ""
        out.append(pod(f"p{i:04d}", rng.randrange(500, 30000), rng.randrange(100, 60000), num,
                       milli, spec, rng.choice(["LS", "BE"]), rng.randrange(10**6)))
    return out


NODES = [Node(f"n{i}", c, m, g, model) for i, (c, m, g, model) in enumerate(
    [(32000, 131072, 4, "V100M16")] * 3 + [(96000, 393216, 8, "G2")] * 3 + [(104000, 524288, 2, "T4")]
    * 4 + [(16000, 65536, 1, "A10")] * 2 + [(32000, 65536, 0, "")] * 2)]


@pytest.mark.parametrize("name", ["Random", "DotProd", "GpuPacking", "BestFit", "FGD", "Ours"])
@pytest.mark.parametrize("ties", ["rank", "random"])
def test_replay_respects_every_constraint(name, ties):
    pods = random_workload(300, random.Random(7))
    arrivals = inflate(pods, Cluster(NODES).capacity_gpu_milli, 3)
    seen: list[tuple] = []

    def check(cluster: Cluster, p: Pod, node: int, gpus: tuple[int, ...]) -> None:
        n = cluster.nodes[node]
        assert cluster.cpu_left(node) >= 0 and cluster.memory_left(node) >= 0
        assert all(0 <= left <= MILLI for left in cluster.gpu_left(node))
        assert not p.num_gpu or not p.gpu_spec or n.model in p.gpu_spec
        assert len(set(gpus)) == len(gpus) == p.num_gpu
        if p.gpu_milli < MILLI:
            assert len(gpus) == p.num_gpu <= 1
        seen.append((p.name, node, gpus))

    policy = OursPolicy(pods) if name == "Ours" else make_policy(name, typical_pods(pods))
    result = run(NODES, arrivals, policy, 3, ties=ties, on_place=check)
    failed = result.failed_latency_critical + result.failed_batch
    assert result.placed == len(seen) and result.placed + failed == len(arrivals)
    assert failed > 0  # the workload is 130% of capacity
    # rebuilding the cluster from the placements gives the same allocation and never overflows
    c = Cluster(NODES)
    by_name = {p.name: p for p in arrivals}
    for pod_name, node, gpus in seen:
        c.place(by_name[pod_name], node, gpus)
    assert 100 * c.allocated_gpu_milli / c.capacity_gpu_milli == pytest.approx(
        result.allocation[130])


def test_pod_that_fits_nowhere_fails_and_is_not_placed():
    big = pod("big", num=8)
    result = run([Node("a", 64000, 1024, 4, "T4")], [pod("small"), big], BestFitPolicy(), 1)
    assert (result.placed, result.failed_latency_critical) == (1, 1)
    assert result.allocation[100] == pytest.approx(25.0)
    assert result.failed_latency_critical_at_100 == 1  # its arrival reaches 100%


def test_latency_critical_failures_are_also_counted_until_100_percent_arrived():
    four, late = pod("four", num=4), pod("late")  # four fills the node: 100% arrived
    result = run([Node("a", 64000, 1024, 4, "T4")], [four, late], BestFitPolicy(), 1)
    assert (result.failed_latency_critical, result.failed_latency_critical_at_100) == (1, 0)


def test_inflation_reaches_target_and_is_reproducible_per_seed():
    pods = [pod(f"p{i:02d}", num=1 + i % 2, milli=1000, t=(7 * i) % 30) for i in range(20)]
    pods += [pod(f"s{i:02d}", milli=250, t=i) for i in range(10)] + [pod("cpu", num=0, milli=0)]
    cap = Cluster(NODES).capacity_gpu_milli
    assert sum(p.total_gpu_milli for p in pods) < cap
    a, b, c = inflate(pods, cap, 5), inflate(pods, cap, 5), inflate(pods, cap, 6)
    total = sum(p.total_gpu_milli for p in a)
    assert total >= 1.3 * cap and total - max(p.total_gpu_milli for p in a) < 1.3 * cap
    assert a == b and a != c
    creation = inflate(pods, cap, 5, order="creation")
    originals = [p for p in creation if "-tuned-" not in p.name]
    assert [p.creation_time for p in originals] == sorted(p.creation_time for p in pods)
    assert set(originals) <= set(pods) and len(originals) == len(pods)


def test_inflation_cuts_a_workload_above_target():
    pods = [pod(f"p{i}", num=4) for i in range(10)]  # 40 GPUs asked of 4
    out = inflate(pods, 4 * MILLI, 1)
    assert sum(p.total_gpu_milli for p in out) <= 1.3 * 4 * MILLI and len(out) == 1


def two_node_cluster(left_a: list[int], left_b: list[int], cpu_a=64000, cpu_b=64000) -> Cluster:
    c = Cluster([Node("a", cpu_a, 10**6, len(left_a), "T4"), Node("b", cpu_b, 10**6, len(left_b), "T4")])
    for node, lefts in ((0, left_a), (1, left_b)):
        for g, left in enumerate(lefts):
            if left < MILLI:
                c.place(pod(f"fill{node}{g}", cpu=0, mem=0, milli=MILLI - left), node, (g,))
    return c


def choose(policy, c: Cluster, p: Pod, seed=0):
    return policy.choose(p, candidates(c, p), c, random.Random(seed))


def test_bestfit_picks_least_leftover():
    c = two_node_cluster([1000, 1000], [1000, 400])
    assert choose(BestFitPolicy(), c, pod(milli=300))[0] == 1
    assert choose(BestFitPolicy(), c, pod(milli=300))[1] == (1,)  # best-fit GPU too


def test_gpupacking_prefers_partially_used_gpus_then_used_nodes():
    c = two_node_cluster([1000, 1000], [1000, 600])
    assert choose(GpuPackingPolicy(), c, pod(milli=500)) == (1, (1,))
    c = two_node_cluster([1000, 1000], [1000, 100])
    assert choose(GpuPackingPolicy(), c, pod(milli=500))[0] == 1  # a used node before an idle one
    p = GpuPackingPolicy()
    assert p.score(pod(milli=500), c.state(1)) == 49 and p.score(pod(milli=500), c.state(0)) == 31


def test_dotprod_picks_smallest_dot_product():
    c = two_node_cluster([1000, 1000], [1000, 1000], cpu_a=128000, cpu_b=8000)
    assert choose(DotProdPolicy(), c, pod(cpu=64000, mem=0, num=0, milli=0))[0] == 0  # tie-free
    c = two_node_cluster([1000, 1000], [1000, 1000], cpu_a=128000, cpu_b=70000)
    assert choose(DotProdPolicy(), c, pod(cpu=64000, mem=0, num=0, milli=0))[0] == 1


def test_random_spreads_over_feasible_nodes_only():
    c = two_node_cluster([1000], [1000], cpu_b=100)
    picks = {choose(RandomPolicy(), c, pod(), seed)[0] for seed in range(20)}
    assert picks == {0}
    c = two_node_cluster([1000], [1000])
    assert {choose(RandomPolicy(), c, pod(), seed)[0] for seed in range(40)} == {0, 1}


def test_fgd_avoids_creating_fragments():
    # target workload: half-GPU pods. Putting a 0.3 share on the 0.5-free GPU leaves 0.2 that no
    # typical pod can use; on an idle GPU it leaves 0.7, still usable.
    typical = typical_pods([pod(f"t{i}", cpu=1000, milli=500) for i in range(10)])
    fgd = FGDPolicy(typical)
    c = two_node_cluster([1000, 1000], [500, 0])
    assert fgd.frag("T4", 64000, (500, 0)) == 0 and fgd.frag("T4", 64000, (200, 0)) == 200
    assert choose(fgd, c, pod(milli=300))[0] == 0
    assert fgd.score(pod(milli=300), c.state(0)) > fgd.score(pod(milli=300), c.state(1))


def test_ties_rank_prefers_the_same_node():
    c = two_node_cluster([1000, 1000], [1000, 1000])
    fgd = BestFitPolicy()
    fgd.node_rank = [1, 0]
    assert all(choose(fgd, c, pod(), s)[0] == 1 for s in range(10))


def test_replay_median_over_seeds_runs_in_processes():
    pods = random_workload(120, random.Random(2))
    results = replay(NODES, pods, ["BestFit", "Random"], [1, 2], processes=2)
    assert sorted((r.policy, r.seed) for r in results) == [("BestFit", 1), ("BestFit", 2),
                                                            ("Random", 1), ("Random", 2)]
    assert all(len(r.allocation) == 131 and r.allocation[0] == 0 for r in results)


def test_ours_keeps_idle_eight_gpu_nodes_for_eight_gpu_pods():
    """The production policy, fed the trace's shapes: a one-GPU pod of either class goes on the
    half-used 8-GPU node, not on the idle one an 8-GPU pod still fits."""
    workload = [pod(f"w{i}", num=1) for i in range(20)] + [pod(f"e{i}", cpu=64000, num=8)
                                                           for i in range(2)]
    c = Cluster([Node("idle", 96000, 10**6, 8, "G2"), Node("half", 96000, 10**6, 8, "G2")])
    for g in range(4):
        c.place(pod(f"fill{g}", cpu=0, mem=0), 1, (g,))
    ours = OursPolicy(workload)
    for qos in ("LS", "BE"):
        assert choose(ours, c, pod(qos=qos, cpu=8000)) == (1, (4,))


def test_ours_puts_a_share_where_it_fills_a_remainder():
    workload = [pod(f"h{i}", milli=500) for i in range(10)]
    c = two_node_cluster([1000, 1000], [1000, 300])
    for qos in ("LS", "BE"):
        assert choose(OursPolicy(workload), c, pod(qos=qos, milli=300)) == (1, (1,))


def test_inference_view_is_seeded_and_gives_models_to_latency_critical_gpu_pods():
    arrivals = [pod(f"l{i}", qos="LS") for i in range(200)] + [pod("b", qos="BE"),
                                                             pod("c", qos="LS", num=0, milli=0)]
    a = InferenceView.build(arrivals, 4, [10.0, 30.0], 1)
    assert a.models == InferenceView.build(arrivals, 4, [10.0, 30.0], 1).models
    assert a.models != InferenceView.build(arrivals, 4, [10.0, 30.0], 2).models
    assert set(a.models) == {f"l{i}" for i in range(200)}
    assert set(a.load_seconds.values()) <= {10.0, 30.0}
    top = Catalogue.zipf().names[0]
    assert Counter(a.models.values())[top] > 200 * 3 / CATALOGUE  # Zipf: the head is popular
    assert all(len(cache) >= 1 for cache in a.caches)
    assert sum(a.holders.values()) == sum(len(cache) for cache in a.caches)


def test_inference_view_counts_hits_and_caches_what_was_loaded():
    view = InferenceView(Catalogue.zipf(), {"a": "m", "b": "m"}, {"a": 10.0, "b": 30.0},
                         [set(), set()])
    view.record(pod("a"), 1)
    assert (view.placed, view.hits, view.caches[1], view.holders) == (1, 0, {"m"}, {"m": 1})
    view.record(pod("b"), 1)
    view.record(pod("batch"), 0)  # no model
    assert (view.placed, view.hits, view.saved_seconds, view.hit_share) == (2, 1, 30.0, 0.5)


def test_read_latencies_in_seconds(tmp_path):
    path = write(tmp_path, "l.csv", "timestamp_anon,value,container_ip\n1,22700.0,x\n2,1500,y\n")
    assert read_latencies(path) == [22.7, 1.5]


def test_ours_prefers_the_node_caching_the_model_when_placement_is_otherwise_equal():
    c = two_node_cluster([1000, 1000], [1000, 1000])
    arrivals = [pod("lc", qos="LS")]
    view = InferenceView.build(arrivals, 2, [20.0], 3)
    model = view.models["lc"]
    view.caches = [set(), {model}]
    view.holders = {model: 1}
    for rank in ([0, 1], [1, 0]):
        ours = OursPolicy(arrivals)
        ours.inference, ours.node_rank = view, rank
        assert choose(ours, c, arrivals[0])[0] == 1
