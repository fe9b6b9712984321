"""Pod groups: multi-node groups on a GB200-style cluster under four policies, and the filter
latency of a group member in the real webhook.

    python -m benchmarks.groups [--domains 8] [--h100-nodes 16] [--seeds 5]
                                [--latency-nodes 5000] [--latency-members 200] [--no-latency]

Cluster: `--domains` NVL72 domains of 18 GB200 nodes x 4 GPUs (nvidia.com/gpu.clique=nvl<d>) and
`--h100-nodes` 8-GPU H100 nodes in one block (cloud.google.com/gce-topology-block=h100-block, no
clique label). A node's domain, for the figures: its clique, else its block, else the node.

Workload (seeded; the same arrivals and lifetimes for every policy). Jobs arrive one by one:
  20%  inference group, latency-critical: 2..8 members of 4 GPUs
  10%  training group, batch: 4..16 members of 4 GPUs, or (probability 0.25) every member of
       8 GPUs: only the H100 nodes fit those
  70%  single pod, batch: 1..4 GPUs
(sizes uniform). A group's members arrive one after the other; after each member but the last,
a single pod arrives with probability 0.5, so other pods compete for a group's room while it is
placed. One arrival step is one pod; each pod is tried once (no retry). Arrivals stop at the end
of the job with which the GPUs requested by all arrived pods reach 130% of capacity; figures are
taken there and where they first reach 100% (as in the openb replay). A job leaves L steps after
its first pod, freeing its GPUs: L uniform in [0.5, 1.5] x N100 (N100: pods arrived at 100%), so
live jobs ask for about 88% of capacity at 100% arrived and 98% at 130%.

Policies (ties: the first node in a seeded node order, the same for every policy):
  spread          the node with the most free GPUs (kube-scheduler's LeastAllocated); no groups
  ours-no-groups  the highest `scoring.policy.score_node` total, default PolicyConfig, each pod
                  alone; target workload: `fragmentation.target_workload` of the seed's pod
                  shapes (all its arrivals counted) with the cluster's supply
  ours-groups     the same, plus the extender's group logic: at the first member `groups.choose`
                  among the nodes where it is feasible (needed = size), a Shortfall rejecting the
                  group whole; members infeasible outside the domain and scored with
                  `groups.apply`; room for the members still to arrive held (`plan_holds`,
                  planned again after each member), taken for other pods (`with_holds`) until
                  the group's last member has arrived (no expiry)
  kai-style       at the first member, among the domains (clique, else block, else the node)
                  whose room sum(free GPUs // member GPUs) holds the group, the one with the
                  fewest free GPUs; none: anywhere if the cluster has the room, else rejected
                  whole; members bin-pack (fewest free GPUs first) inside it, no holds; singles
                  bin-pack anywhere

Figures, over the groups whose members have all arrived (median of seeds):
  in one domain %  = groups whole and in one domain / groups whole (every member placed)
  whole in one %   = groups whole and in one domain / groups arrived
  partly placed    = groups with some but not all members placed
  rejected whole   = groups with no member placed
  allocation %     = GPUs of live placed pods / capacity (held room not counted)
"""

from __future__ import annotations

import argparse
import heapq
import json
import random
import statistics
import sys
import time
from collections import Counter, defaultdict
from dataclasses import dataclass, replace
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

from scoring import fragmentation, groups, locality, policy
from scoring.config import PolicyConfig
from scoring.groups import CLIQUE, LWS, Domain, Placement, Shortfall
from scoring.model import GpuNode, PodRequest, ScoreBreakdown, Usage, WorkloadClass

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT / "benchmarks"))
from machine import machine  # noqa: E402
from webhook_latency import percentile  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "groups.json"
BLOCK = "cloud.google.com/gce-topology-block"
MIX = {"inference": 0.2, "training": 0.1, "single": 0.7}
INTERLEAVE, TRAIN_8GPU, POINTS = 0.5, 0.25, (1.0, 1.3)
FIGURES = ("groups", "in_one_domain_pct", "whole_in_one_pct", "partly_placed", "rejected_whole",
           "failed_singles", "allocation_pct")
Spot = tuple[str, tuple[int, ...]]  # a node and the GPUs taken there


@dataclass(frozen=True)
class Job:
    id: int
    kind: str  # inference | training | single
    size: int  # pods
    gpus: int  # per pod

    @property
    def group(self) -> bool:
        return self.kind != "single"

    def request(self, member: int) -> PodRequest:
        lc = WorkloadClass.LATENCY_CRITICAL if self.kind == "inference" else WorkloadClass.BATCH
        return PodRequest("bench", f"job{self.id}-{member}", lc, gpus=self.gpus)


def cluster(domains: int, h100: int) -> list[GpuNode]:
    def node(name: str, gpus: int, product: str, labels: dict[str, str]) -> GpuNode:
        return GpuNode(name, {"nvidia.com/gpu": gpus}, product, gpu_count=gpus, labels=labels)
    return ([node(f"nvl{d}-{i}", 4, "NVIDIA-GB200", {CLIQUE: f"nvl{d}"}) for d in range(domains) for i in range(18)]
            + [node(f"h100-{i}", 8, "NVIDIA-H100-80GB-HBM3", {BLOCK: "h100-block"}) for i in range(h100)])


def domain_of(node: GpuNode) -> str:
    return node.labels.get(CLIQUE) or node.labels.get(BLOCK) or node.name


def workload(seed: int, capacity: int) -> tuple[list[tuple[Job, int]], list[int], dict[int, int]]:
    """(arrivals as (job, member), the step of each point of POINTS, job id -> step it leaves)."""
    rng = random.Random(seed)
    jobs: list[Job] = []
    arrivals: list[tuple[Job, int]] = []
    marks: list[int] = []

    def new(kind: str) -> Job:
        size, gpus = {"inference": lambda: (rng.randint(2, 8), 4),
                      "training": lambda: (rng.randint(4, 16), 8 if rng.random() < TRAIN_8GPU else 4),
                      "single": lambda: (1, rng.randint(1, 4))}[kind]()
        jobs.append(Job(len(jobs), kind, size, gpus))
        return jobs[-1]

    while len(marks) < len(POINTS):
        job = new(rng.choices(list(MIX), list(MIX.values()))[0])
        for member in range(job.size):
            arrivals.append((job, member))
            if job.group and member < job.size - 1 and rng.random() < INTERLEAVE:
                arrivals.append((new("single"), 0))
        asked = sum(j.size * j.gpus for j in jobs)
        while len(marks) < len(POINTS) and asked >= POINTS[len(marks)] * capacity:
            marks.append(len(arrivals))
    first: dict[int, int] = {}
    for step, (job, _) in enumerate(arrivals):
        first.setdefault(job.id, step)
    return arrivals, marks, {j: s + rng.randint(marks[0] // 2, 3 * marks[0] // 2) for j, s in first.items()}


class State:
    """The nodes with the GPUs their pods take, and each job's pods."""

    def __init__(self, nodes: list[GpuNode], order: list[str]):
        self.nodes = {n.name: n for n in nodes}
        self.order = order  # the seeded node order ties go by
        self.pods: dict[int, list[Spot]] = defaultdict(list)
        self.used = 0

    def free(self, name: str) -> int:
        return self.nodes[name].gpu_count - len(self.nodes[name].usage.gpus)

    def take(self, job: int, spot: Spot, sign: int = 1) -> None:
        name, gpus = spot
        usage = self.nodes[name].usage.gpus
        self.nodes[name] = replace(self.nodes[name], usage=Usage(usage | set(gpus) if sign > 0 else usage - set(gpus)))
        self.used += sign * len(gpus)
        if sign > 0:
            self.pods[job].append(spot)

    def leave(self, job: int) -> None:
        for spot in self.pods.pop(job, []):
            self.take(job, spot, -1)


def best(values: list[tuple[float, str]], state: State, gpus: int) -> Spot | None:
    """The node of the highest value, ties to the first (`values` in the seeded node order), and
    its first free GPUs."""
    top: tuple[float, str] | None = None
    for value, name in values:
        if top is None or value > top[0]:
            top = (value, name)
    return (top[1], groups.free_gpus(state.nodes[top[1]])[:gpus]) if top else None


class Spread:
    name = "spread"

    def start(self, state: State, job: Job, request: PodRequest) -> bool:
        """A group's first member arrives; False: the group is rejected whole."""
        return True

    def place(self, state: State, job: Job, member: int, request: PodRequest) -> Spot | None:
        return best([(state.free(n), n) for n in state.order if state.free(n) >= job.gpus], state, job.gpus)

    def placed(self, state: State, job: Job, member: int, request: PodRequest) -> None:
        """A pod of `job` has been placed (the state has it)."""

    def end(self, job: Job) -> None:
        """The group's last member has arrived."""


class KaiStyle(Spread):
    name = "kai-style"

    def __init__(self) -> None:
        self.domain: dict[int, str | None] = {}  # None: anywhere

    def start(self, state: State, job: Job, request: PodRequest) -> bool:
        room: Counter[str] = Counter()
        free: Counter[str] = Counter()
        for name, node in state.nodes.items():
            room[domain_of(node)] += state.free(name) // job.gpus
            free[domain_of(node)] += state.free(name)
        fitting = [d for d in room if room[d] >= job.size]
        self.domain[job.id] = min(fitting, key=lambda d: (free[d], d)) if fitting else None
        return bool(fitting) or sum(room.values()) >= job.size

    def place(self, state: State, job: Job, member: int, request: PodRequest) -> Spot | None:
        domain = self.domain.get(job.id)
        return best([(-state.free(n), n) for n in state.order if state.free(n) >= job.gpus
                     and (domain is None or domain_of(state.nodes[n]) == domain)], state, job.gpus)

    def end(self, job: Job) -> None:
        self.domain.pop(job.id, None)


class Ours(Spread):
    """The production per-pod scoring, each pod alone, memoised per node state and pod shape."""

    name = "ours-no-groups"

    def __init__(self, target: fragmentation.Workload):
        self.target, self.config = target, PolicyConfig()
        self.spread = locality.model_spread([], "", None)
        self.memo: dict[tuple, ScoreBreakdown] = {}

    def decision(self, node: GpuNode, request: PodRequest) -> ScoreBreakdown:
        """The pod's own decision (memoised: the breakdown may name another node of that state)."""
        key = (node.product, node.gpu_count, node.usage.gpus, request.workload_class, request.gpus)
        if key not in self.memo:
            self.memo[key] = policy.score_node(node, request, self.spread, {}, 0.0, self.config, self.target)
        return self.memo[key]

    def seen(self, state: State, name: str, but: int | None = None) -> GpuNode:
        return state.nodes[name]

    def place(self, state: State, job: Job, member: int, request: PodRequest) -> Spot | None:
        return self.pick(state, [(self.decision(self.seen(state, n), request), n) for n in state.order], job.gpus)

    @staticmethod
    def pick(state: State, scored: list[tuple[ScoreBreakdown, str]], gpus: int) -> Spot | None:
        spot = best([(d.total, n) for d, n in scored if d.feasible], state, gpus)
        plan = next(d.plan.gpus for d, n in scored if n == spot[0]) if spot else ()
        return (spot[0], plan or spot[1]) if spot else None


class OursGroups(Ours):
    name = "ours-groups"

    def __init__(self, target: fragmentation.Workload):
        super().__init__(target)
        self.domain: dict[int, Domain] = {}
        self.holds: dict[int, dict[str, tuple[int, ...]]] = {}

    def seen(self, state: State, name: str, but: int | None = None) -> GpuNode:
        """The node with the room held for every group but `but` taken."""
        held = [g for job, room in self.holds.items() if job != but for g in room.get(name, ())]
        return groups.with_holds(state.nodes[name], held)

    def start(self, state: State, job: Job, request: PodRequest) -> bool:
        feasible = [node for n in state.order if self.decision(node := self.seen(state, n), request).feasible]
        chosen = groups.choose(feasible, request, job.size, groups.DEFAULT_LEVELS)
        if isinstance(chosen, Shortfall):
            return False
        self.domain[job.id] = chosen
        self.replan(state, job, request, job.size)
        return True

    def replan(self, state: State, job: Job, request: PodRequest, missing: int) -> None:
        inside = [self.seen(state, n, but=job.id) for n in state.order if self.domain[job.id].holds(state.nodes[n])]
        self.holds[job.id] = groups.plan_holds(inside, request, missing)

    def place(self, state: State, job: Job, member: int, request: PodRequest) -> Spot | None:
        if not job.group:
            return super().place(state, job, member, request)
        domain = self.domain[job.id]
        where = Placement(str(job.id), domain, frozenset(self.holds[job.id]))
        inside = [(self.seen(state, n, but=job.id), n) for n in state.order if domain.holds(state.nodes[n])]
        return self.pick(state, [(groups.apply(self.decision(node, request), node, where), n) for node, n in inside],
                         job.gpus)

    def placed(self, state: State, job: Job, member: int, request: PodRequest) -> None:
        if job.group:  # as the extender: planned again once a member is placed
            self.replan(state, job, request, job.size - member - 1)

    def end(self, job: Job) -> None:
        self.domain.pop(job.id, None)
        self.holds.pop(job.id, None)


def simulate(chosen: Spread, nodes: list[GpuNode], order: list[str], arrivals: list[tuple[Job, int]],
             marks: list[int], leaves: dict[int, int]) -> list[dict[str, float]]:
    """The figures at each mark (see the module docstring)."""
    state, capacity = State(nodes, order), sum(n.gpu_count for n in nodes)
    placed: dict[int, list[str]] = defaultdict(list)
    departures: list[tuple[int, int]] = []
    arrived: list[Job] = []
    rejected: set[int] = set()
    figures, failed_singles = [], 0
    for step, (job, member) in enumerate(arrivals + [(Job(-1, "end", 0, 0), 0)]):
        if step in marks:
            whole = [j for j in arrived if len(placed[j.id]) == j.size]
            one = sum(len({domain_of(state.nodes[n]) for n in placed[j.id]}) == 1 for j in whole)
            figures.append({"groups": len(arrived), "in_one_domain_pct": 100 * one / max(len(whole), 1),
                            "whole_in_one_pct": 100 * one / max(len(arrived), 1),
                            "partly_placed": sum(0 < len(placed[j.id]) < j.size for j in arrived),
                            "rejected_whole": sum(not placed[j.id] for j in arrived),
                            "failed_singles": failed_singles, "allocation_pct": 100 * state.used / capacity})
        while departures and departures[0][0] <= step:
            state.leave(heapq.heappop(departures)[1])
        if job.id < 0:
            break
        request = job.request(member)
        if member == 0:
            heapq.heappush(departures, (leaves[job.id], job.id))
            if job.group and not chosen.start(state, job, request):
                rejected.add(job.id)
        spot = None if job.id in rejected else chosen.place(state, job, member, request)
        if spot is not None:
            state.take(job.id, spot)
            chosen.placed(state, job, member, request)
            placed[job.id].append(spot[0])
        failed_singles += spot is None and not job.group
        if job.group and member == job.size - 1:
            chosen.end(job)
            arrived.append(job)
    return figures


def placement(domains: int, h100: int, seeds: list[int]) -> dict[str, Any]:
    """Every policy on every seed: the median figures at each point, and run times."""
    nodes = cluster(domains, h100)
    capacity = sum(n.gpu_count for n in nodes)
    supply = fragmentation.Supply(Counter(fragmentation.NodeKind(n.product, n.gpu_count) for n in nodes))
    runs: dict[str, list[list[dict[str, float]]]] = defaultdict(list)
    seconds: dict[str, list[float]] = defaultdict(list)
    pods = []
    for seed in seeds:
        arrivals, marks, leaves = workload(seed, capacity)
        pods.append(len(arrivals))
        order = [n.name for n in nodes]
        random.Random(seed).shuffle(order)
        shapes = Counter(fragmentation.Shape(job.gpus, fragmentation.MILLI) for job, _ in arrivals)
        target = fragmentation.target_workload(shapes, PolicyConfig().fragmentation.coverage, supply)
        for chosen in (Spread(), Ours(target), OursGroups(target), KaiStyle()):
            started = time.perf_counter()
            runs[chosen.name].append(simulate(chosen, nodes, order, arrivals, marks, leaves))
            seconds[chosen.name].append(time.perf_counter() - started)
    table = {name: {f"{100 * p:.0f}%": {k: round(statistics.median(r[i][k] for r in rs), 2) for k in FIGURES}
                    for i, p in enumerate(POINTS)} | {"run_s_median": round(statistics.median(seconds[name]), 3)}
             for name, rs in runs.items()}
    return {"nodes": len(nodes), "gpus": capacity, "pods_median": statistics.median(pods), "policies": table,
            "per_seed": {name: {f"{100 * p:.0f}%": [r[i] for r in rs] for i, p in enumerate(POINTS)}
                         for name, rs in runs.items()}}


# --- latency: a member's filter in the real webhook ---------------------------------------------


class Recording:
    """A binder that binds nothing: it keeps what the webhook would have written."""

    def __init__(self) -> None:
        self.bound: dict[str, tuple[str, dict]] = {}

    def bind(self, pod: dict, node: str, plan: dict, breakdown: ScoreBreakdown, why: str) -> None:
        self.bound[pod["metadata"]["uid"]] = (node, plan)


def pod_object(name: str, gpus: int, labels: dict[str, str] | None = None, notes: dict[str, str] | None = None,
               node: str | None = None) -> dict[str, Any]:
    spec: dict[str, Any] = {"schedulerName": "gpu-scheduler", "nodeName": node, "containers": [
        {"name": "main", "image": "none", "resources": {"limits": {"nvidia.com/gpu": str(gpus)}}}]}
    return {"apiVersion": "v1", "kind": "Pod", "spec": {k: v for k, v in spec.items() if v},
            "status": {"phase": "Running" if node else "Pending"},
            "metadata": {"name": name, "namespace": "bench", "uid": f"uid-{name}", "labels": labels or {},
                         "annotations": {"gpu-extender.io/class": "latency-critical"} | (notes or {})}}


def latency(n_nodes: int, n_members: int, size: int, seed: int) -> dict[str, Any]:
    """`Decider.decide` for LeaderWorkerSet members and, alternating, plain pods of the same shape
    (4 GPUs, latency-critical); each bound through /bind, then shown bound to the view."""
    from fastapi.testclient import TestClient

    from extender.cluster import ClusterView
    from extender.webhook.app import create_app

    rng = random.Random(seed)
    labels = {"nvidia.com/gpu.product": "NVIDIA-GB200"}
    nodes = [{"apiVersion": "v1", "kind": "Node", "status": {"allocatable": {"nvidia.com/gpu": "4"}},
              "metadata": {"name": f"nvl{d}-{i}", "labels": labels | {CLIQUE: f"nvl{d}"}}}
             for d in range(max(n_nodes // 18, 1)) for i in range(18)]
    names = [n["metadata"]["name"] for n in nodes]
    running = [pod_object(f"run-{i}", rng.randint(1, 4), node=n) for i, n in enumerate(names) if rng.random() < 0.5]
    started = time.perf_counter()
    view = ClusterView.from_objects(nodes, running, {}, PolicyConfig(), 1000.0)
    binder = Recording()
    app = create_app(view, binder)
    client, decider, load_s = TestClient(app), app.state.decider, time.perf_counter() - started
    unplaced = []

    def schedule(pod: dict[str, Any]) -> float:
        view.upsert_pod(pod)  # as the watch shows it, pending
        t0 = time.perf_counter()
        decision = decider.decide(pod, names)
        took = time.perf_counter() - t0
        chosen = policy.rank(decision.breakdowns.values())[0]
        meta = pod["metadata"]
        if not chosen.feasible:
            unplaced.append(f"{meta['name']}: {chosen.reason}")
            return took
        answer = client.post("/bind", json={"PodName": meta["name"], "PodNamespace": meta["namespace"],
                                            "PodUID": meta["uid"], "Node": chosen.node}).json()
        assert not answer["Error"], answer
        node, plan = binder.bound[meta["uid"]]
        bound = json.loads(json.dumps(pod)) | {"status": {"phase": "Running"}}
        bound["spec"]["nodeName"] = node
        bound["metadata"]["annotations"]["gpu-extender.io/plan"] = json.dumps(plan)
        view.upsert_pod(bound)
        return took

    cold = schedule(pod_object("warm-up", 4))  # the shape's first request scores every node
    first, later, plain = [], [], []
    for g in range(n_members // size):
        labels = {f"{LWS}/name": f"lws{g}", f"{LWS}/group-key": f"lws{g}-key", f"{LWS}/group-index": "0"}
        group = [pod_object(f"lws{g}-{w}", 4, labels | {f"{LWS}/worker-index": str(w)}, {f"{LWS}/size": str(size)})
                 for w in range(size)]
        for pod in group:  # LWS creates the replica's pods at once
            view.upsert_pod(pod)
        for w, pod in enumerate(group):
            (later if w else first).append(schedule(pod))
            plain.append(schedule(pod_object(f"plain-{g}-{w}", 4)))
    members = first + later
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {"nodes": len(nodes), "running_pods": len(running), "group_size": size, "member_filters": len(members),
            "plain_filters": len(plain), "view_and_app_s": round(load_s, 1), "cold_filter_ms": ms(cold),
            "member_p50_ms": ms(statistics.median(members)), "member_p99_ms": ms(percentile(members, 0.99)),
            "first_member_p50_ms": ms(statistics.median(first)), "first_member_max_ms": ms(max(first)),
            "later_member_p50_ms": ms(statistics.median(later)), "later_member_p99_ms": ms(percentile(later, 0.99)),
            "plain_p50_ms": ms(statistics.median(plain)), "plain_p99_ms": ms(percentile(plain, 0.99)),
            "p99_member_over_plain": round(percentile(members, 0.99) / percentile(plain, 0.99), 2),
            "unplaced": unplaced}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--domains", type=int, default=8)
    parser.add_argument("--h100-nodes", type=int, default=16)
    parser.add_argument("--seeds", type=int, default=5, help="seeds 42, 43, ...")
    parser.add_argument("--latency-nodes", type=int, default=5000)
    parser.add_argument("--latency-members", type=int, default=200)
    parser.add_argument("--no-latency", action="store_true")
    args = parser.parse_args()
    started, seeds = time.perf_counter(), list(range(42, 42 + args.seeds))
    placed = placement(args.domains, args.h100_nodes, seeds)
    print(f"{placed['nodes']} nodes, {placed['gpus']} GPUs, median {placed['pods_median']} pods, "
          f"median of {len(seeds)} seeds\n| policy | arrived | groups | in one domain % | whole in one % "
          "| partly placed | rejected whole | failed singles | allocation % | run s |\n" + "|---" * 10 + "|")
    for name, row in placed["policies"].items():
        for point in (f"{100 * p:.0f}%" for p in POINTS):
            print(f"| {name} | {point} | " + " | ".join(f"{row[point][k]:g}" for k in FIGURES)
                  + f" | {row['run_s_median']} |")
    doc: dict[str, Any] = {
        "benchmark": "groups", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "machine": machine(),
        "parameters": {"domains": args.domains, "h100_nodes": args.h100_nodes, "seeds": seeds, "mix": MIX,
                       "interleave": INTERLEAVE, "training_8gpu": TRAIN_8GPU, "points": POINTS},
        "placement": placed}
    if not args.no_latency:
        t = doc["latency"] = latency(args.latency_nodes, args.latency_members, 8, seeds[0])
        print(f"filter (Decider.decide), {t['nodes']} nodes: member p50 {t['member_p50_ms']} ms, p99 "
              f"{t['member_p99_ms']} ms (first members p50 {t['first_member_p50_ms']}, max {t['first_member_max_ms']}; "
              f"later members p50 {t['later_member_p50_ms']}, p99 {t['later_member_p99_ms']}); "
              f"plain pod p50 {t['plain_p50_ms']}, p99 {t['plain_p99_ms']} ms; p99 member / plain "
              f"{t['p99_member_over_plain']}; {len(t['unplaced'])} pods found no node")
    doc["run_s"] = round(time.perf_counter() - started, 1)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"{doc['run_s']} s; written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
