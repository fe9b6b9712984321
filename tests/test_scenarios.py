"""Ranking scenarios on the bundled example cluster (examples/), through the snapshot loader."""

from __future__ import annotations

import re
from pathlib import Path

import pytest

from extender import convert, snapshot
from extender.cluster import ClusterView
from scoring import policy
from scoring.config import PolicyConfig
from scoring.model import NEUTRAL, MigSlot, ScoreBreakdown

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIG = PolicyConfig()


def view(metrics_dir: Path = EXAMPLES / "metrics") -> ClusterView:
    return ClusterView.from_snapshot(EXAMPLES / "cluster.yaml", sorted(metrics_dir.glob("*.prom")), CONFIG)


class Decisions(dict[str, ScoreBreakdown]):
    """Decisions by node name, remembering the ranking order."""

    def __init__(self, ranked: list[ScoreBreakdown]):
        super().__init__((d.node, d) for d in ranked)
        self.order = [d.node for d in ranked]

    def ranks_above(self, better: str, worse: str) -> bool:
        return self[better].feasible and self.order.index(better) < self.order.index(worse)


def decide(pod_file: str, cluster: ClusterView | None = None) -> Decisions:
    cluster = cluster or view()
    request = convert.pod_request(snapshot.read_document(EXAMPLES / "pods" / pod_file), CONFIG)
    return Decisions(policy.evaluate(cluster.nodes(), request, cluster.samples, cluster.now(), CONFIG,
                                     cluster.target.workload))


TP4 = "llama70b-tp4-latency-critical.yaml"


def test_tp4_prefers_nvlink_gpus_over_gpus_split_across_pcie():
    d = decide(TP4)
    # a100-nv4-01: 4 free GPUs on an NV4 board; l40s-pcie-01: 4 free GPUs on two sockets, PCIe only.
    assert d["a100-nv4-01"].plan.gpus == (0, 1, 2, 3)
    assert sorted(d["l40s-pcie-01"].plan.gpus) == [1, 3, 5, 7]
    assert d["l40s-pcie-01"].feasible
    assert d.ranks_above("a100-nv4-01", "l40s-pcie-01")
    assert d["a100-nv4-01"].total > d["l40s-pcie-01"].total
    # Four of the DGX-1V's V100s cannot hold the 70B model's weights (141 GB at 16 bits).
    assert not d["v100-dgx1-01"].feasible and d["v100-dgx1-01"].unresolvable
    assert "does not fit" in d["v100-dgx1-01"].reason


def test_latency_critical_pod_prefers_node_with_its_model_cached():
    d = decide(TP4)
    cached, uncached = d["h100-inf-01"], d["h100-inf-02"]
    # Otherwise equal: same hardware, pods and DCGM figures.
    for signal in ("mig", "topology", "utilization"):
        assert cached.signals[signal].score == pytest.approx(uncached.signals[signal].score)
    assert cached.signals["locality"].score > uncached.signals["locality"].score
    assert d.ranks_above("h100-inf-01", "h100-inf-02")
    assert d.order[0] == "h100-inf-01"


def test_batch_pod_goes_where_it_costs_the_workload_least_then_packs():
    """The example's pods are mostly 1-GPU ones, some 2-GPU: a 1-GPU pod costs least on
    t4-legacy-01, whose last free GPU no 2-GPU pod could use; nodes where it costs the same are
    ranked by packing."""
    cluster = view()
    d = decide("finetune-1gpu-batch.yaml", cluster)
    nodes = {n.name: n for n in cluster.nodes()}
    feasible = [name for name in d.order if d[name].feasible]
    assert feasible[0] == "t4-legacy-01"  # 3 of its 4 GPUs are taken
    fragmentation = {name: round(d[name].signals["fragmentation"].score, 9) for name in feasible}
    assert list(fragmentation.values()) == sorted(fragmentation.values(), reverse=True)
    after = {n: (policy.held_units(nodes[n]) + 1) / policy.capacity_units(nodes[n]) for n in feasible}
    for better, worse in zip(feasible, feasible[1:]):
        if fragmentation[better] == fragmentation[worse]:
            assert after[better] >= after[worse]


def test_latency_critical_pod_avoids_hot_gpus_when_an_equal_cool_node_exists():
    d = decide(TP4)
    cool, hot = d["h100-inf-02"], d["h100-inf-03"]
    for signal in ("mig", "topology", "locality"):
        assert cool.signals[signal].score == pytest.approx(hot.signals[signal].score)
    assert hot.signals["utilization"].score < cool.signals["utilization"].score
    assert d.ranks_above("h100-inf-02", "h100-inf-03")


def aged_metrics(tmp_path: Path, nodes: set[str], seconds: int) -> Path:
    """Copies of the example dumps with the given nodes' samples dated `seconds` earlier."""
    tmp_path.mkdir(parents=True)
    for dump in (EXAMPLES / "metrics").glob("*.prom"):
        text = dump.read_text()
        if dump.stem in nodes:
            text = re.sub(r" (\d{13})$", lambda m: f" {int(m.group(1)) - seconds * 1000}", text, flags=re.M)
        (tmp_path / dump.name).write_text(text)
    return tmp_path


def test_utilization_older_than_ttl_is_ignored(tmp_path: Path):
    older = CONFIG.utilization.ttl_seconds + 60
    stale = decide(TP4, view(aged_metrics(tmp_path / "one", {"h100-inf-03"}, older)))
    hot = stale["h100-inf-03"].signals["utilization"]
    assert hot.score == NEUTRAL and "old" in hot.reason
    # Stale data counts exactly as no data at all (t4-legacy-01 has no DCGM inventory).
    assert hot.score == stale["t4-legacy-01"].signals["utilization"].score
    # With both twins' data stale, the 95% figures no longer separate them.
    both = decide(TP4, view(aged_metrics(tmp_path / "both", {"h100-inf-02", "h100-inf-03"}, older)))
    assert both["h100-inf-02"].total == pytest.approx(both["h100-inf-03"].total)
    assert both["h100-inf-02"].score == both["h100-inf-03"].score
    # Just inside the TTL the data still counts.
    inside = int(CONFIG.utilization.ttl_seconds) - 30
    recent = decide(TP4, view(aged_metrics(tmp_path / "recent", {"h100-inf-03"}, inside)))
    assert recent["h100-inf-03"].signals["utilization"].score < recent["h100-inf-02"].signals["utilization"].score


def test_small_mig_pod_keeps_a_larger_profile_creatable():
    d = decide("embed-mig-latency-critical.yaml")
    node = d["h100-mig-01"]
    # Idle 1g.10gb instances exist on GPU 0 (slice 6), GPU 1 (slice 6) and GPU 2 (slice 1). Only on
    # GPU 2 does taking one leave a 3g.40gb creatable (slices 4-7); first fit would take GPU 0.
    assert node.plan.mig == (MigSlot(2, "1g.10gb", 1),)
    assert "3g.40gb" in node.signals["mig"].reason
    assert node.signals["mig"].score == 1.0


def test_eight_gpu_batch_job_fits_only_the_free_nvswitch_node():
    d = decide("pretrain-8gpu-batch.yaml")
    assert d.order[0] == "h100-train-01"
    assert d["h100-train-01"].plan.gpus == tuple(range(8))
    assert not d["h100-inf-01"].feasible and not d["h100-inf-01"].unresolvable
    assert not d["cpu-01"].feasible and d["cpu-01"].unresolvable
