"""ClusterView's incremental updates and the Decider's cache stay equal to a fresh evaluation."""

from __future__ import annotations

import contextlib
import copy
import json
import threading
import time
from collections.abc import Iterator
from pathlib import Path

import pytest

from extender import annotations as ann
from extender import convert, snapshot
from extender.cluster import ClusterView
from extender.webhook import decisions
from extender.webhook.decisions import Decider
from scoring import policy
from scoring.config import PolicyConfig
from scoring.model import GpuSample, Plan

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
CONFIG = PolicyConfig()
TP4 = snapshot.read_document(EXAMPLES / "pods" / "llama70b-tp4-latency-critical.yaml")


@pytest.fixture()
def view() -> ClusterView:
    return ClusterView.from_snapshot(EXAMPLES / "cluster.yaml", sorted((EXAMPLES / "metrics").glob("*.prom")), CONFIG)


def fresh(view: ClusterView, pod: dict) -> dict[str, tuple[bool, float]]:
    """What a from-scratch evaluation says, to compare the cached answers with."""
    request = Decider(view).request(pod)
    decisions = policy.evaluate(view.nodes(), request, view.samples, view.now(), CONFIG, view.target.workload)
    return {d.node: (d.feasible, d.total) for d in decisions}


def cached(decider: Decider, view: ClusterView, pod: dict) -> dict[str, tuple[bool, float]]:
    decision = decider.decide(pod, [n.name for n in view.nodes()])
    return {name: (d.feasible, d.total) for name, d in decision.breakdowns.items()}


@contextlib.contextmanager
def rescoring_held() -> Iterator[threading.Event]:
    """The background thread's scoring waits until the yielded event is set."""
    release = threading.Event()
    scoring = policy.score_node

    def slow(*args, **kwargs):
        if threading.current_thread().name == "rescore":
            release.wait(10)
        return scoring(*args, **kwargs)

    with pytest.MonkeyPatch.context() as patch:
        patch.setattr(policy, "score_node", slow)
        yield release


def bound_pod(name: str, node: str, gpus: int, plan: dict | None = None) -> dict:
    notes = {ann.PLAN: json.dumps({"node": node, **plan})} if plan else {}
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "t", "uid": f"uid-{name}", "annotations": notes},
            "spec": {"nodeName": node, "containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]},
            "status": {"phase": "Running"}}


def test_cached_decisions_follow_watch_events(view):
    decider = Decider(view)
    assert cached(decider, view, TP4) == fresh(view, TP4)
    # A pod takes 3 of a100-nv4-01's 4 GPUs: the 4-GPU pod no longer fits there.
    view.upsert_pod(bound_pod("squatter", "a100-nv4-01", 3, {"gpus": [0, 1, 2]}))
    after = cached(decider, view, TP4)
    assert after == fresh(view, TP4) and after["a100-nv4-01"][0] is False
    view.remove_pod("uid-squatter")
    assert cached(decider, view, TP4) == fresh(view, TP4)
    assert cached(decider, view, TP4)["a100-nv4-01"][0] is True
    # The model shows up in another node's cache: spread and locality change everywhere.
    node = copy.deepcopy(next(i for i in snapshot.load_snapshot(EXAMPLES / "cluster.yaml")[0]
                              if i["metadata"]["name"] == "h100-inf-02"))
    node["metadata"]["annotations"][ann.MODEL_CACHE] = json.dumps({TP4["metadata"]["annotations"][ann.MODEL]: 141 * 2**30})
    view.upsert_node(node)
    assert cached(decider, view, TP4) == fresh(view, TP4)
    # New DCGM figures: h100-train-01 turns hot.
    hot = {gpu.uuid: GpuSample(0.97, 70000, 10000, view.now()) for gpu in view.node("h100-train-01").gpus}
    view.set_samples({**view.samples, **hot})
    assert cached(decider, view, TP4) == fresh(view, TP4)
    view.remove_node("h100-train-01")
    assert "h100-train-01" not in fresh(view, TP4)
    assert decider.decide(TP4, ["h100-train-01"]).unknown == ("h100-train-01",)


def test_new_samples_are_scored_in_the_background_while_bound_devices_count_at_once(view):
    """With a background thread, new DCGM samples do not make a request score every node: it
    answers from what it has (the hot node still looks cool) until the thread swaps the rescored
    answers in; a device taken meanwhile counts at once, and in the end all equals a fresh
    evaluation."""
    decider = Decider(view, background=True)
    before = cached(decider, view, TP4)
    assert before == fresh(view, TP4)
    with rescoring_held() as release:
        hot = {gpu.uuid: GpuSample(0.97, 70000, 10000, view.now()) for gpu in view.node("h100-inf-02").gpus}
        view.set_samples({**view.samples, **hot})
        waiting = cached(decider, view, TP4)
        assert waiting["h100-inf-02"] == before["h100-inf-02"]  # the old score, until the swap
        taken = bound_pod("squatter", "a100-nv4-01", 3, {"gpus": [0, 1, 2]})
        view.upsert_pod(taken)
        assert cached(decider, view, TP4)["a100-nv4-01"][0] is False  # counted at once
        release.set()
        assert decider.settled()
    after = cached(decider, view, TP4)
    assert after == fresh(view, TP4)
    hot_node = decider.decide(TP4, ["h100-inf-02"]).breakdowns["h100-inf-02"]
    assert hot_node.signals["utilization"].score < 0.1  # the hot node's new samples are scored
    assert after["a100-nv4-01"][0] is False


def test_the_background_thread_finds_new_samples_without_waiting_for_a_request(view):
    """No request in between: the thread finds the shape outdated by itself, so the first request
    after new samples already answers from them."""
    decider = Decider(view, background=True)
    cached(decider, view, TP4)
    assert decider.outdated() == 0
    hot = {gpu.uuid: GpuSample(0.97, 70000, 10000, view.now()) for gpu in view.node("h100-inf-02").gpus}
    view.set_samples({**view.samples, **hot})
    deadline = time.monotonic() + 10
    while decider.outdated() and time.monotonic() < deadline:
        time.sleep(0.01)
    assert decider.outdated() == 0
    hot_node = decider.decide(TP4, ["h100-inf-02"]).breakdowns["h100-inf-02"]
    assert hot_node.signals["utilization"].score < 0.1


def pending_pod(name: str, gpus: int) -> dict:
    pod = bound_pod(name, "", gpus)
    del pod["spec"]["nodeName"]
    pod["status"]["phase"] = "Pending"
    return pod


@pytest.mark.parametrize("background", [False, True])
def test_a_new_target_workload_rescores_every_node(view, background):
    """Pending pods rebuild no node, but four 8-GPU ones change the target workload: the next
    revision makes the Decider score every node again (in the server, in the background, the
    previous answers serving meanwhile); a 1-GPU pod then keeps off the idle 8-GPU node."""
    finetune = snapshot.read_document(EXAMPLES / "pods" / "finetune-1gpu-batch.yaml")
    decider = Decider(view, background=background)
    before = cached(decider, view, finetune)
    assert before == fresh(view, finetune)
    revision, seq = view.target.revision, view.changes_since(0)[0]
    with rescoring_held() as release:
        for i in range(4):
            view.upsert_pod(pending_pod(f"pretrain-{i}", 8))
        assert view.target.revision > revision
        assert view.changes_since(seq)[1] == []  # no node rebuilt to go by
        if background:
            assert cached(decider, view, finetune) == before  # until the swap
        release.set()
        assert decider.settled()
    after = cached(decider, view, finetune)
    assert after == fresh(view, finetune) != before
    assert after["h100-train-01"][1] < before["h100-train-01"][1]  # it would take an 8-GPU pod's room


def test_assumed_plans_hold_devices_until_the_pod_is_seen_or_forgotten(view):
    decider = Decider(view)
    pod = bound_pod("tp4", "a100-nv4-01", 4)
    del pod["spec"]["nodeName"]
    view.assume(pod, "a100-nv4-01", Plan(gpus=(0, 1, 2, 3)))
    assert view.assumed_count() == 1
    assert view.node("a100-nv4-01").usage.gpus == frozenset({0, 1, 2, 3})
    assert cached(decider, view, TP4)["a100-nv4-01"][0] is False
    view.forget(pod)
    assert view.assumed_count() == 0 and not view.node("a100-nv4-01").usage.gpus
    # Assumed, then the watch delivers the bound pod with its plan: one holder, not two.
    view.assume(pod, "a100-nv4-01", Plan(gpus=(0, 1, 2, 3)))
    view.upsert_pod(bound_pod("tp4", "a100-nv4-01", 4, {"gpus": [0, 1, 2, 3]}))
    assert view.assumed_count() == 0
    node = view.node("a100-nv4-01")
    assert node.usage.gpus == frozenset({0, 1, 2, 3}) and not node.usage.unplanned


def clocked_view() -> tuple[ClusterView, list[float], float, list[dict], list[dict]]:
    """The example cluster on a clock the test moves (`now[0]`), set to its newest heartbeat; with
    that heartbeat and the nodes and pods it was made of."""
    nodes, pods = snapshot.load_snapshot(EXAMPLES / "cluster.yaml")
    beat = max(t for n in nodes if (t := convert.heartbeat(n)))
    now = [beat]
    view = ClusterView(CONFIG, clock=lambda: now[0])
    view.replace_all(nodes, pods)
    return view, now, beat, nodes, pods


def test_agent_data_ages_out_without_any_event():
    view, now, beat, _, _ = clocked_view()
    decider = Decider(view)
    assert view.node("a100-nv4-01").gpus
    assert cached(decider, view, TP4)["a100-nv4-01"][1] > 0
    now[0] = beat + CONFIG.agent.max_age_seconds + 60
    decision = decider.decide(TP4, ["a100-nv4-01"])
    assert not view.node("a100-nv4-01").gpus  # degraded to allocatable
    assert "no topology data" in decision.breakdowns["a100-nv4-01"].signals["topology"].reason


def test_nodes_equal_a_fresh_conversion_through_pod_events_and_aging():
    """The view converts a node's labels and agent annotations once and reuses them for pod events;
    what it holds stays what converting node and pods again gives, also once the agent data has
    aged out between two pod events."""
    view, now, beat, nodes, pods = clocked_view()
    # A node whose agent published a model cache but no GPU topology: its data ages out too.
    cache_only = copy.deepcopy(next(n for n in nodes if n["metadata"]["name"] == "a100-nv4-01"))
    cache_only["metadata"]["name"] = "cache-only-01"
    del cache_only["metadata"]["annotations"][ann.TOPOLOGY]
    nodes.append(cache_only)
    view.upsert_node(cache_only)
    assert view.node("cache-only-01").model_cache and not view.node("cache-only-01").gpus

    def converted(name: str):
        node = next(n for n in nodes if n["metadata"]["name"] == name)
        on = [p for p in pods if (p.get("spec") or {}).get("nodeName") == name and convert.holds_resources(p)]
        return convert.gpu_node(node, on, now[0], CONFIG)

    aged = beat + CONFIG.agent.max_age_seconds + 60
    for i, when in enumerate((beat, beat + 1, aged, aged + 1000)):
        now[0] = when
        for name in ("a100-nv4-01", "cache-only-01"):
            pod = bound_pod(f"{name}-p{i}", name, 1, {"gpus": [i]})
            pods.append(pod)
            view.upsert_pod(pod)
            assert view.node(name) == converted(name), (name, i)
        assert view.node("a100-nv4-01").usage.gpus == frozenset(range(i + 1))
    # the last two events came after the agent data aged out
    assert not view.node("a100-nv4-01").gpus and not view.node("cache-only-01").model_cache


def test_shapes_beyond_the_memory_budget_are_dropped_least_recent_first(view, monkeypatch):
    nodes = len(view.nodes())
    monkeypatch.setattr(decisions, "SHAPE_NODES_KEPT", 2 * nodes)  # room for two shapes
    decider = Decider(view)
    pods = [snapshot.read_document(EXAMPLES / "pods" / f) for f in (
        "llama70b-tp4-latency-critical.yaml", "embed-mig-latency-critical.yaml", "pretrain-8gpu-batch.yaml")]
    for pod in pods:
        assert cached(decider, view, pod) == fresh(view, pod)
    kept = [shape[1:3] for shape in decider._shapes]
    assert len(kept) == 2 and (4, ()) not in kept  # the TP4 shape, least recently used, went first
    assert cached(decider, view, pods[0]) == fresh(view, pods[0])  # and is scored again when asked


def test_explained_decisions_stay_within_their_budget(view, monkeypatch):
    names = [n.name for n in view.nodes()]
    monkeypatch.setattr(decisions, "EXPLAINED_NODES", 3 * len(names))
    decider = Decider(view)
    for i in range(5):
        pod = copy.deepcopy(TP4)
        pod["metadata"]["name"] = f"tp4-{i}"
        decider.remember(decider.decide(pod, names))
    assert [decider.explain("inference", f"tp4-{i}") is not None for i in range(5)] == [False, False, True, True, True]


def share_pod(name: str, milli: int, node: str | None = None, plan: dict | None = None) -> dict:
    pod = bound_pod(name, node or "", 1, plan)
    pod["spec"]["containers"][0]["resources"] = {"limits": {"gpu-extender.io/gpu-milli": str(milli)}}
    if node is None:
        del pod["spec"]["nodeName"]
    return pod


def test_assumed_shares_fill_a_gpu_and_the_cache_tells_share_sizes_apart(view):
    """l40s-pcie-01 has GPUs 1, 3, 5, 7 free: assumed 300-milli shares go three to a GPU, and a
    400-milli pod (another request shape) no longer fits on a GPU holding 900."""
    decider = Decider(view)
    small, large = share_pod("probe-small", 100), share_pod("probe-large", 400)
    planned = []
    for i in range(12):
        pod = share_pod(f"s{i}", 300)
        decision = decider.decide(pod, ["l40s-pcie-01"]).breakdowns["l40s-pcie-01"]
        assert decision.feasible and decision.plan.share is not None
        written = view.assume(pod, "l40s-pcie-01", decision.plan)
        planned.append((written["share"]["gpu"], written["share"]["milli"]))
    assert planned == [(g, 300) for g in (1, 1, 1, 3, 3, 3, 5, 5, 5, 7, 7, 7)]
    assert dict(view.node("l40s-pcie-01").usage.shared) == {1: 900, 3: 900, 5: 900, 7: 900}
    assert cached(decider, view, small)["l40s-pcie-01"][0] is True
    assert cached(decider, view, large)["l40s-pcie-01"][0] is False
    assert cached(decider, view, large) == fresh(view, large)
    # Whole-GPU pods see no free GPU there any more.
    assert cached(decider, view, TP4)["l40s-pcie-01"][0] is False
    view.forget(share_pod("s11", 300))
    assert dict(view.node("l40s-pcie-01").usage.shared) == {1: 900, 3: 900, 5: 900, 7: 600}
    assert cached(decider, view, large)["l40s-pcie-01"][0] is True
