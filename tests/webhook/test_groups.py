"""Pod groups through the webhook (filter, bind, /explain) on a cluster view: each group in one
NVLink domain, the rest of its room held from other pods until the hold runs out, and every
choice found again from the pods by a restarted extender."""

from __future__ import annotations

import json

from fastapi.testclient import TestClient
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.cluster import ClusterView
from extender.webhook.app import create_app
from scoring.config import PolicyConfig, parse
from tests.groups_cluster import CLIQUE, domains, jobset_job, lws_group, pod

SIZES = {"a": 4, "b": 6, "c": 8}


class Recording:
    def __init__(self):
        self.bound: dict[str, tuple[str, dict]] = {}

    def bind(self, pod: dict, node: str, plan: dict, breakdown, why: str) -> None:
        self.bound[pod["metadata"]["name"]] = (node, plan)


class Cluster:
    """A view with a clock the test moves, the webhook on it, and the pods bound so far."""

    def __init__(self, nodes: list[dict], pods: list[dict], config: PolicyConfig = PolicyConfig()):
        self.time = [1000.0]
        self.nodes = nodes
        self.view = ClusterView(config, clock=lambda: self.time[0])
        self.view.replace_all(nodes, pods)
        self.view.synced = True
        self.binder = Recording()
        self.client = TestClient(create_app(self.view, self.binder))
        self.names = [n["metadata"]["name"] for n in nodes]

    def filter(self, p: dict) -> dict:
        return self.client.post("/filter", json={"Pod": p, "Nodes": None, "NodeNames": self.names}).json()

    def schedule(self, p: dict) -> str | None:
        """Filter, then bind to the first node passed (as kube-scheduler would among equals);
        the watch then shows the pod bound with its plan. None when no node passes."""
        passed = self.filter(p)["NodeNames"]
        if not passed:
            return None
        meta = p["metadata"]
        answer = self.client.post("/bind", json={"PodName": meta["name"], "PodNamespace": meta["namespace"],
                                                 "PodUID": meta["uid"], "Node": passed[0]}).json()
        assert not answer["Error"], answer
        node, plan = self.binder.bound[meta["name"]]
        bound = json.loads(json.dumps(p))
        bound["spec"]["nodeName"] = node
        bound["metadata"]["annotations"]["gpu-extender.io/plan"] = json.dumps(plan)
        bound["status"]["phase"] = "Running"
        self.view.upsert_pod(bound)
        return node

    def clique_of(self, node: str) -> str:
        return next(n["metadata"]["labels"][CLIQUE] for n in self.nodes if n["metadata"]["name"] == node)


def test_a_leaderworkerset_group_lands_whole_in_the_fullest_domain_that_fits():
    filler = [pod("filler-b0", 4, node_name="b-0"), pod("filler-b1", 4, node_name="b-1")]
    group = lws_group("llm", 0, 4, 4)
    cluster = Cluster(domains({"a": 5, "b": 6, "c": 8}), filler + group)
    nodes = [cluster.schedule(p) for p in group]
    assert {cluster.clique_of(n) for n in nodes} == {"b"}  # b: 4 free nodes, exactly the group; a 5, c 8
    assert len(set(nodes)) == 4
    written = cluster.binder.bound["llm-0"][1]["group"]
    assert written["domain"] == {"key": CLIQUE, "value": "b"} and written["size"] == 4
    assert cluster.view.held_room() == {}  # whole: nothing held any more


def test_a_jobset_job_is_counted_from_its_pods_and_kept_in_one_domain():
    job = jobset_job("train", "workers", 0, 6, 4)
    cluster = Cluster(domains(SIZES), job)
    nodes = [cluster.schedule(p) for p in job]
    assert {cluster.clique_of(n) for n in nodes} == {"b"}  # six 4-GPU pods: b (6 nodes) is the fullest that fits


def test_a_group_that_fits_no_domain_stays_pending_with_the_group_and_the_best_domain_named():
    group = lws_group("deepseek", 0, 9, 4)
    cluster = Cluster(domains(SIZES), group)
    answer = cluster.filter(group[0])
    assert answer["NodeNames"] == []
    reasons = set((answer.get("FailedAndUnresolvableNodes") or {}).values()) | set(answer["FailedNodes"].values())
    assert reasons == {f"gpu-extender: group infer/deepseek/deepseek-key-0 needs 9 pods × 4 GPUs in one {CLIQUE} "
                       f"domain; the best ({CLIQUE}=c) has room for 8"}


def test_a_batch_burst_while_a_group_is_half_placed_does_not_take_its_room():
    group = lws_group("llm", 0, 6, 4)
    cluster = Cluster(domains(SIZES), group)
    first = [cluster.schedule(p) for p in group[:3]]
    assert {cluster.clique_of(n) for n in first} == {"b"}
    held = cluster.view.held_room()["infer/llm/llm-key-0"]
    assert sum(len(g) for g in held.values()) == 12  # three more members of 4 GPUs
    burst = [pod(f"batch-{i}", 1, namespace="batch") for i in range(40)]
    landed = [cluster.schedule(p) for p in burst]
    assert all(n is not None for n in landed)
    assert not set(landed) & set(held)  # nothing of the burst on a node holding the group's room
    rest = [cluster.schedule(p) for p in group[3:]]
    assert {cluster.clique_of(n) for n in rest} == {"b"}


def test_a_hold_runs_out_then_other_pods_may_use_the_room_and_listeners_hear_once():
    config = parse({"groups": {"holdSeconds": 60}})
    group = lws_group("llm", 0, 3, 4)
    cluster = Cluster(domains({"a": 3}), group, config)
    heard = []
    cluster.view.hold_listeners.append(lambda hold, p: heard.append((hold.name, hold.missing, p["metadata"]["name"])))
    cluster.schedule(group[0])
    assert cluster.view.held_room()
    other = pod("other", 4, namespace="batch")
    assert cluster.filter(other)["NodeNames"] == []  # every free GPU is held
    cluster.time[0] += 61
    cluster.view.expire_holds()
    assert heard and heard[0][:2] == ("infer/llm/llm-key-0", 2) and len(heard) == 1
    cluster.view.expire_holds()
    assert len(heard) == 1
    assert cluster.view.held_room() == {}
    assert cluster.filter(other)["NodeNames"]  # the room is free now
    explain = cluster.client.get("/explain/infer/llm-0").json()
    assert explain["group"]["released"] and explain["group"]["missing"] == 2


def test_a_restarted_extender_finds_the_domain_and_the_holds_again_from_the_pods():
    group = lws_group("llm", 0, 5, 4)
    cluster = Cluster(domains(SIZES), group)
    for p in group[:2]:
        cluster.schedule(p)
    before = cluster.view.held_room()
    pods = [cluster.view.pod(f"uid-infer-{p['metadata']['name']}") for p in group]
    restarted = Cluster(domains(SIZES), pods)
    restarted.time[0] = cluster.time[0]
    status = restarted.view.group_status("infer/llm/llm-key-0")
    assert status["domain"] == f"{CLIQUE}=b" and status["missing"] == 3
    assert {n: sorted(g) for n, g in restarted.view.held_room()["infer/llm/llm-key-0"].items()} == \
        {n: sorted(g) for n, g in before["infer/llm/llm-key-0"].items()}
    rest = [restarted.schedule(p) for p in group[2:]]
    assert {restarted.clique_of(n) for n in rest} == {"b"}


def test_a_restarted_extender_holds_the_room_again_when_its_pods_are_listed_before_its_nodes():
    """The two lists race at start-up: holds planned while the view has no nodes yet must be
    planned again when the nodes come, or the first batch pods take the group's room."""
    group = lws_group("llm", 0, 5, 4)
    cluster = Cluster(domains(SIZES), group)
    for p in group[:2]:
        cluster.schedule(p)
    before = cluster.view.held_room()["infer/llm/llm-key-0"]
    pods = [cluster.view.pod(f"uid-infer-{p['metadata']['name']}") for p in group]
    view = ClusterView(PolicyConfig(), clock=lambda: cluster.time[0])
    view.replace_pods(pods)
    assert view.held_room() == {}  # nowhere to hold yet
    view.replace_nodes(domains(SIZES))
    assert {n: sorted(g) for n, g in view.held_room()["infer/llm/llm-key-0"].items()} == \
        {n: sorted(g) for n, g in before.items()}
    watched = ClusterView(PolicyConfig(), clock=lambda: cluster.time[0])
    watched.replace_pods(pods)
    for item in domains(SIZES):  # or one by one, as watch events
        watched.upsert_node(item)
    assert watched.held_room() == view.held_room()


def test_holds_leave_a_node_that_leaves_the_domain_and_ignore_other_label_changes(monkeypatch):
    group = lws_group("llm", 0, 5, 4)
    cluster = Cluster(domains(SIZES), group)
    for p in group[:2]:
        cluster.schedule(p)
    held = cluster.view.held_room()["infer/llm/llm-key-0"]
    moved = next(n for n in cluster.nodes if n["metadata"]["name"] in held)
    planned = []
    book = cluster.view._groups
    monkeypatch.setattr(book, "replan", lambda *a, _o=book.replan: planned.append(a[0]) or _o(*a))
    stamped = json.loads(json.dumps(moved))
    stamped["metadata"]["labels"]["nvidia.com/gfd.timestamp"] = "1733400000"  # GFD rewrites it every minute
    cluster.view.upsert_node(stamped)
    assert planned == []
    relabelled = json.loads(json.dumps(stamped))  # each watch event is a new object
    relabelled["metadata"]["labels"][CLIQUE] = "elsewhere"
    cluster.view.upsert_node(relabelled)
    assert planned == ["infer/llm/llm-key-0"]
    after = cluster.view.held_room()["infer/llm/llm-key-0"]
    assert moved["metadata"]["name"] not in after and len(after) == len(held)


def test_a_restart_keeps_the_hold_s_written_deadline():
    """The deadline is what bind wrote: a restart is no placement, so it must not move it (an
    extender restarting every few minutes would otherwise hold the room for ever)."""
    group = lws_group("llm", 0, 5, 4)
    cluster = Cluster(domains(SIZES), group)
    for p in group[:2]:
        cluster.schedule(p)
    hold = PolicyConfig().groups.hold_seconds
    pods = [cluster.view.pod(f"uid-infer-{p['metadata']['name']}") for p in group]
    restarted = Cluster(domains(SIZES), [])
    restarted.time[0] = cluster.time[0] + hold / 2
    restarted.view.replace_all(domains(SIZES), pods)
    assert restarted.view.held_room()
    restarted.time[0] = cluster.time[0] + hold + 1
    restarted.view.expire_holds()
    assert restarted.view.held_room() == {}
    assert restarted.view.group_status("infer/llm/llm-key-0")["released"]


@settings(max_examples=25, deadline=None)
@given(st.lists(st.tuples(st.sampled_from(["group", "single", "delete"]), st.integers(1, 6), st.sampled_from([1, 2, 4])),
                min_size=1, max_size=14))
def test_members_never_end_in_two_domains_and_held_room_is_never_planned_twice(steps):
    cluster = Cluster(domains({"a": 3, "b": 4, "c": 5}), [])
    groups: list[list[dict]] = []
    singles: list[dict] = []
    for i, (kind, size, gpus) in enumerate(steps):
        if kind == "group":
            members = lws_group(f"g{i}", 0, size, gpus)
            for p in members:
                cluster.view.upsert_pod(p)
            groups.append(members)
            for p in members[: size // 2 + 1]:
                cluster.schedule(p)
        elif kind == "single":
            p = pod(f"s{i}", gpus, namespace="batch")
            cluster.view.upsert_pod(p)
            cluster.schedule(p)
            singles.append(p)
        elif singles:
            gone = singles.pop(0)
            cluster.view.remove_pod(gone["metadata"]["uid"])
        held = cluster.view.held_room()
        for node in cluster.names:
            mine = [gpu for room in held.values() for gpu in room.get(node, ())]
            assert len(mine) == len(set(mine)), f"a GPU of {node} held twice"
            built = cluster.view.node(node)
            used = built.usage.unplanned.get("nvidia.com/gpu", 0) + len(built.usage.gpus)
            assert used <= 4, f"{node}: more GPUs held or used than it has"
    for members in groups:
        for p in members:
            cluster.schedule(p)
        placed = {cluster.clique_of(cluster.binder.bound[p["metadata"]["name"]][0])
                  for p in members if p["metadata"]["name"] in cluster.binder.bound}
        assert len(placed) <= 1, f"group {members[0]['metadata']['name']} in {placed}"


def test_a_latency_critical_group_makes_room_by_evicting_batch_pods_inside_one_domain_only():
    nodes = domains({"a": 2, "b": 3, "c": 4})
    batch = [pod(f"batch-{n['metadata']['name']}", 4, node_name=n["metadata"]["name"], namespace="batch",
                 priority=0) for n in nodes]
    group = lws_group("chat", 0, 3, 4)
    for p in group:
        p["spec"]["priority"] = 1_000_000  # the shipped gpu-latency-critical class
    cluster = Cluster(nodes, batch + group)
    answer = cluster.filter(group[0])
    assert answer["NodeNames"] == []
    assert set(answer["FailedNodes"]) == {f"b-{i}" for i in range(3)}  # resolvable: evicting makes room
    assert cluster.view.group_status("infer/chat/chat-key-0")["domain"] == f"{CLIQUE}=b"  # fits 3, fewest evictions
    offered = {n["metadata"]["name"]: {"Pods": [{"UID": f"uid-batch-batch-{n['metadata']['name']}"}]} for n in nodes}
    chosen = cluster.client.post("/preempt", json={"Pod": group[0], "NodeNameToMetaVictims": offered}).json()
    assert set(chosen["NodeNameToMetaVictims"]) == {"b-0", "b-1", "b-2"}
    # A batch group in the same place is told that nothing fits, for good.
    batch_group = lws_group("etl", 0, 3, 4)
    answer = cluster.filter(batch_group[0])
    assert set(answer["FailedAndUnresolvableNodes"]) == set(cluster.names)


def test_a_node_relabelled_into_another_domain_moves_there():
    from scoring.groups import Domain

    nodes = domains({"a": 2, "b": 2})
    cluster = Cluster(nodes, [])
    assert cluster.view.domain_nodes(Domain(CLIQUE, "a")) == {"a-0", "a-1"}
    moved = json.loads(json.dumps(nodes[0]))
    moved["metadata"].setdefault("annotations", {})["gpu-extender.io/heartbeat"] = "2026-12-05T00:00:00Z"
    cluster.view.upsert_node(moved)  # a heartbeat: same domains
    assert cluster.view.domain_nodes(Domain(CLIQUE, "a")) == {"a-0", "a-1"}
    moved = json.loads(json.dumps(moved))  # a new object, as each watch event brings
    moved["metadata"]["labels"][CLIQUE] = "b"
    cluster.view.upsert_node(moved)
    assert cluster.view.domain_nodes(Domain(CLIQUE, "a")) == {"a-1"}
    assert cluster.view.domain_nodes(Domain(CLIQUE, "b")) == {"a-0", "b-0", "b-1"}
