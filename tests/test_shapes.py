"""The target workload from the cluster's pod shapes (extender/shapes.py, ClusterView.target)."""

from __future__ import annotations

from dataclasses import replace
from pathlib import Path

from extender.cluster import ClusterView
from extender.shapes import TOLERANCE, ShapeCounts, moved
from scoring.config import PolicyConfig
from scoring.fragmentation import FragmentationArgs, Shape, Workload, prior

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
ONE, TWO, EIGHT, SHARE = Shape(1, 1000), Shape(2, 1000), Shape(8, 1000), Shape(1, 300)


def popularity(workload: Workload) -> dict[Shape, float]:
    return {shape: round(p, 6) for shape, p in workload.shapes}


def test_counts_follow_pods_added_and_removed():
    counts = ShapeCounts(coverage=1.0)
    for i in range(6):
        counts.add(f"one-{i}", ONE)
    counts.add("two", TWO)
    counts.add("mig-only", None)  # in no shape: not counted
    counts.add("share", SHARE)
    assert counts.publish()
    assert popularity(counts.target.workload) == {ONE: 0.75, TWO: 0.125, SHARE: 0.125}
    counts.remove("two")
    counts.remove("mig-only")
    counts.remove("never-added")
    assert counts.publish()  # TWO is gone: the set of shapes changed
    assert popularity(counts.target.workload) == {ONE: round(6 / 7, 6), SHARE: round(1 / 7, 6)}
    counts.clear()
    assert counts.publish() and counts.target.workload.shapes == ()
    assert counts.target.revision == 3


def test_a_new_workload_is_published_only_when_it_moves_beyond_the_tolerance():
    counts = ShapeCounts(coverage=1.0)
    for i in range(90):
        counts.add(f"one-{i}", ONE)
    for i in range(10):
        counts.add(f"two-{i}", TWO)
    assert counts.publish()
    published = counts.target
    assert popularity(published.workload) == {ONE: 0.9, TWO: 0.1}
    # One more 2-GPU pod at a time: 11/101, 12/102 stay within 0.02 of the published 0.1 ...
    for i in (10, 11):
        counts.add(f"two-{i}", TWO)
        assert not counts.publish() and counts.target is published
    # ... the drift adds up against the published workload: 13/103 is 0.0262 away.
    counts.add("two-12", TWO)
    assert counts.publish()
    assert counts.target.revision == published.revision + 1
    assert popularity(counts.target.workload) == {ONE: round(90 / 103, 6), TWO: round(13 / 103, 6)}
    assert counts.target.workload is not published.workload  # a new object: new memoisation keys


def test_moved_compares_the_shapes_and_each_popularity():
    base = Workload(((ONE, 0.9), (TWO, 0.1)))
    assert not moved(base, Workload(((ONE, 0.9 - TOLERANCE / 2), (TWO, 0.1 + TOLERANCE / 2))))
    assert moved(base, Workload(((ONE, 0.87), (TWO, 0.13))))
    assert moved(base, Workload(((ONE, 0.9), (EIGHT, 0.1))))  # same popularity, another shape
    assert moved(base, Workload(((ONE, 1.0),)))
    assert moved(Workload(()), base) and not moved(Workload(()), Workload(()))


def expected(counts: dict[Shape, int]) -> dict[Shape, float]:
    """Popularity with the prior for the example cluster's largest nodes (8 GPUs) added."""
    with_prior = dict(counts)
    with_prior[EIGHT] = with_prior.get(EIGHT, 0) + prior(sum(counts.values()))
    total = sum(with_prior.values())
    return {shape: round(n / total, 6) for shape, n in with_prior.items()}


def test_the_view_counts_bound_and_pending_gpu_pods_and_republishes_on_a_real_change():
    config = replace(PolicyConfig(), fragmentation=FragmentationArgs(coverage=1.0))
    view = ClusterView.from_snapshot(EXAMPLES / "cluster.yaml", [], config)
    # 23 bound 1-GPU pods, 2 bound 2-GPU pods, 1 pending 8-GPU pod (MIG pods and coredns in no
    # shape), and the prior for the cluster's 8-GPU nodes.
    first = view.target
    assert first.revision == 1
    assert popularity(first.workload) == expected({ONE: 23, TWO: 2, EIGHT: 1})
    # Another pending 1-GPU pod moves no shape by more than the tolerance: nothing is published.
    view.upsert_pod(gpu_pod("extra-0", 1))
    assert view.target is first
    # Pending 8-GPU pods: the shape moves beyond the tolerance and the workload is published.
    for i in range(3):
        view.upsert_pod(gpu_pod(f"big-{i}", 8))
    assert view.target.revision > first.revision
    assert popularity(view.target.workload) == expected({ONE: 24, TWO: 2, EIGHT: 4})
    # A pod no node of the cluster could hold (16 GPUs) stays out of the workload.
    view.upsert_pod(gpu_pod("huge", 16))
    assert Shape(16, 1000) not in popularity(view.target.workload)
    # Pods that finish leave their shape.
    for i in range(3):
        view.upsert_pod(gpu_pod(f"big-{i}", 8, phase="Succeeded"))
    assert popularity(view.target.workload) == expected({ONE: 24, TWO: 2, EIGHT: 1})
    revision = view.target.revision
    view.remove_pod("uid-extra-0")
    assert view.target.revision == revision  # within the tolerance
    # Re-listing the same pods counts them afresh: the same workload, nothing published.
    view.replace_pods([view.pod(key) for key in list(view._pods)])
    assert view.target.revision == revision


def gpu_pod(name: str, gpus: int, phase: str = "Pending") -> dict:
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "t", "uid": f"uid-{name}"},
            "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": phase}}
