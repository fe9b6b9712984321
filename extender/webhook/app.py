"""The webhook kube-scheduler calls: thin routes that decode, ask the Decider, encode.

Every verb answers HTTP 200: a body kube-scheduler cannot have meant gets a clear `Error` (filter,
bind), an empty answer (prioritize, preempt: their types have no error field) and a log line.
"""

from __future__ import annotations

import logging
import threading
import time
from collections import OrderedDict
from collections.abc import Callable, Iterable
from typing import Any, Protocol

from fastapi import FastAPI, Request, Response
from starlette.concurrency import run_in_threadpool
from prometheus_client import CONTENT_TYPE_LATEST, CollectorRegistry, Counter, Gauge, Histogram, generate_latest
from prometheus_client.core import CounterMetricFamily
from prometheus_client.registry import Collector

from extender import convert, group_identity
from extender.webhook import wire
from extender.webhook.answers import Answers, filter_answer, passed_back, prioritize_answer
from extender.cluster import ClusterView
from extender.webhook.decisions import Decider, Decision
from extender.webhook.preemption import victims_for
from scoring.model import PodRequest, ScoreBreakdown, node_sample_key

log = logging.getLogger("gpu_extender")
JSON = "application/json"


class BindError(RuntimeError):
    """The API server refused or failed a binding."""


class Binder(Protocol):
    def bind(self, pod: dict, node: str, plan: dict[str, Any], breakdown: ScoreBreakdown, why: str) -> None:
        """Write the plan (annotation form) onto the pod, create the Binding and an Event saying
        `why` (the devices bound and the reason); raise BindError on failure."""


class SnapshotBinder:
    """Used when serving a snapshot file: there is no API server to bind with."""

    def bind(self, pod: dict, node: str, plan: dict[str, Any], breakdown: ScoreBreakdown, why: str) -> None:
        raise BindError("serving a snapshot file (--cluster): binding needs a live cluster")


class Metrics:
    """The webhook's metrics, plus `collectors` from elsewhere (the DCGM refresh's)."""

    def __init__(self, view: ClusterView, decider: Decider, collectors: Iterable[Collector] = ()):
        self.registry = CollectorRegistry()
        self.latency = Histogram(
            "gpu_extender_request_seconds", "Time to answer kube-scheduler, by verb.", ["verb"],
            buckets=(0.0005, 0.001, 0.002, 0.005, 0.01, 0.025, 0.05, 0.1, 0.25, 1.0), registry=self.registry,
        )
        self.decisions = Counter(
            "gpu_extender_decisions_total", "Filter decisions by workload class and outcome.",
            ["workload_class", "outcome"], registry=self.registry,
        )
        self.bind_failures = Counter("gpu_extender_bind_failures_total", "Binds that failed.", registry=self.registry)
        self.bad_requests = Counter(
            "gpu_extender_bad_requests_total", "Requests that could not be understood, by verb.", ["verb"],
            registry=self.registry,
        )
        self.unsynced = Counter(
            "gpu_extender_unsynced_answers_total",
            "Requests answered with an error because the cluster view had not synced yet, by verb.", ["verb"],
            registry=self.registry,
        )
        assumed = Gauge("gpu_extender_assumed_plans", "Plans assumed at bind, not yet seen bound.",
                        registry=self.registry)
        assumed.set_function(view.assumed_count)
        age = Gauge("gpu_extender_dcgm_data_age_seconds", "Age of the newest DCGM sample (-1: none).",
                    registry=self.registry)
        age.set_function(lambda: view.now() - max((s.at for s in view.samples.values()), default=view.now() + 1))
        fresh = Gauge("gpu_extender_dcgm_fresh_gpus", "GPUs whose DCGM sample is within utilization.ttlSeconds.",
                      registry=self.registry)
        fresh.set_function(lambda: _fresh_gpus(view))
        outdated = Gauge("gpu_extender_outdated_shapes",
                         "Pod shapes answering from older DCGM samples or target workload until rescored.",
                         registry=self.registry)
        outdated.set_function(decider.outdated)
        mismatched = Gauge("gpu_extender_allocation_mismatched_pods",
                           "Pods whose devices, as the kubelet reports them, differ from their plan.",
                           registry=self.registry)
        mismatched.set_function(view.mismatch_count)
        held = Gauge("gpu_extender_held_gpus", "GPUs held for the members still to come of pod groups.",
                     registry=self.registry)
        held.set_function(lambda: sum(len(g) for nodes in view.held_room().values() for g in nodes.values()))
        waiting = Gauge("gpu_extender_groups_holding", "Pod groups holding room for members still to come.",
                        registry=self.registry)
        waiting.set_function(lambda: len(view.held_room()))
        self.registry.register(_MismatchesSeen(view))
        for collector in collectors:
            self.registry.register(collector)


class _MismatchesSeen(Collector):
    """gpu_extender_allocation_mismatches_total: counted by the view from its first read-back on."""

    def __init__(self, view: ClusterView):
        self.view = view

    def collect(self) -> Iterable[CounterMetricFamily]:
        yield CounterMetricFamily("gpu_extender_allocation_mismatches",
                                  "Pods found holding other devices than planned (each reported once).",
                                  value=self.view.mismatches_reported)


def _fresh_gpus(view: ClusterView) -> int:
    """GPUs with a fresh sample (node-level samples, for nodes without inventory, are not GPUs)."""
    now, ttl, node_level = view.now(), view.config.utilization.ttl_seconds, node_sample_key("")
    return sum(1 for key, sample in view.samples.items() if now - sample.at <= ttl and not key.startswith(node_level))


def create_app(view: ClusterView, binder: Binder, collectors: Iterable[Collector] = (),
               best_only: bool = True) -> FastAPI:
    """The webhook. `best_only`: filter passes only the feasible nodes of the top score
    (extender/webhook/answers.py says why the pod still lands among the same nodes); false: every feasible
    node."""
    app = FastAPI(title="gpu-extender", docs_url=None, redoc_url=None, openapi_url=None)
    decider = Decider(view, background=True)
    metrics = Metrics(view, decider, collectors)
    bind_lock = threading.Lock()
    filtered = FilteredPods(group_identity.keys_read(view.config.groups.identities))
    app.state.decider = decider

    def timed(verb: str, handler: Callable[[bytes], bytes], blocking: bool = False) -> Callable:
        """The route for a verb. `blocking` handlers (those that call the API server) run in a
        worker thread so that filter and prioritize for the next pod are not held up."""

        async def route(request: Request) -> Response:
            started = time.perf_counter()
            try:
                payload = await request.body()
                if not view.synced:  # nodes listed but not yet their pods: every GPU would look free
                    metrics.unsynced.labels(verb).inc()
                    log.warning("%s: %s", verb, NOT_SYNCED)
                    body = _failure(verb, f"gpu-extender: {NOT_SYNCED}")
                else:
                    body = await run_in_threadpool(handler, payload) if blocking else handler(payload)
            except (wire.WireError, convert.BadObject) as exc:
                metrics.bad_requests.labels(verb).inc()
                log.warning("%s: %s", verb, exc)
                body = _failure(verb, f"gpu-extender: {exc}")
            except Exception as exc:  # the scheduler must get an answer it can log, never a 500
                log.exception("%s: internal error", verb)
                metrics.bad_requests.labels(verb).inc()
                body = _failure(verb, f"gpu-extender: internal error: {type(exc).__name__}: {exc}")
            elapsed = time.perf_counter() - started
            metrics.latency.labels(verb).observe(elapsed)
            return Response(body, media_type=JSON, headers={"Server-Timing": f"app;dur={elapsed * 1000:.3f}"})

        return route

    def decided(
        args: wire.ExtenderArgs, request: PodRequest
    ) -> tuple[list[str], dict[str, dict] | None, Decision, Answers]:
        names, sent = _candidates(args)
        decision, answers = decider.answer(request, names, sent)
        decider.remember(decision)
        return names, sent, decision, answers

    def filter_(body: bytes) -> bytes:
        args = wire.decode(body, wire.ExtenderArgs)
        names, sent, decision, answers = decided(args, decider.request(args.Pod))
        filtered.add(args.Pod)
        answer, feasible, passed = filter_answer(answers, names, decision.records, decision.unknown, sent, best_only)
        request = decision.request
        metrics.decisions.labels(request.workload_class.value, "feasible" if feasible else "unschedulable").inc()
        log.info("filter %s (%s): %d of %d nodes fit, %d passed%s", request.key, request.workload_class.value,
                 feasible, len(names), passed, " (the best score)" if best_only else "")
        return answer

    def prioritize(body: bytes) -> bytes:
        args = wire.decode(body, wire.PrioritizeArgs)
        request = decider.request(args.Pod)
        # the whole-cluster shortcut holds a shape's own answers; a group member's are its group's
        if (args.Nodes is None and request.group is None
                and (answer := passed_back(decider.answers(request), bytes(args.NodeNames), best_only))):
            return answer
        names, _, decision, answers = decided(args.args(), request)
        return prioritize_answer(answers, names, decision.records, decision.unknown, best_only)

    def bind(body: bytes) -> bytes:
        args = wire.decode(body, wire.ExtenderBindingArgs)
        error = _bind(view, decider, binder, bind_lock, args, filtered)
        if error:
            metrics.bind_failures.inc()
            log.warning("bind %s/%s to %s failed: %s", args.PodNamespace, args.PodName, args.Node, error)
        return wire.encode(wire.ExtenderBindingResult(Error=error))

    def preempt(body: bytes) -> bytes:
        args = wire.decode(body, wire.ExtenderPreemptionArgs)
        request = decider.request(args.Pod)
        candidates: dict[str, list[str]] = {}
        for node, meta in (args.NodeNameToMetaVictims or {}).items():
            candidates[node] = [p.UID for p in (meta.Pods if meta and meta.Pods else [])]
        for node, victims in (args.NodeNameToVictims or {}).items():
            pods = victims.Pods if victims and victims.Pods else []
            candidates[node] = [(p.get("metadata") or {}).get("uid", "") for p in pods]
        chosen = victims_for(view, request, candidates)
        log.info("preempt %s: %d of %d nodes can make room", request.key, len(chosen), len(candidates))
        return wire.encode(wire.ExtenderPreemptionResult({
            node: wire.MetaVictims([wire.MetaPod(uid) for uid in uids], 0) for node, uids in chosen.items()
        }))

    for verb, handler in (("filter", filter_), ("prioritize", prioritize), ("preempt", preempt)):
        app.add_api_route(f"/{verb}", timed(verb, handler), methods=["POST"])
    app.add_api_route("/bind", timed("bind", bind, blocking=True), methods=["POST"])

    @app.get("/healthz")
    async def healthz() -> Response:
        return Response("ok", media_type="text/plain")

    @app.get("/readyz")
    async def readyz() -> Response:
        if view.synced:
            return Response("ok", media_type="text/plain")
        return Response("cluster view not synced yet", status_code=503, media_type="text/plain")

    @app.get("/metrics")
    async def metrics_route() -> Response:
        return Response(generate_latest(metrics.registry), media_type=CONTENT_TYPE_LATEST)

    @app.get("/explain/{namespace}/{name}")
    async def explain(namespace: str, name: str) -> Response:
        doc = decider.explain(namespace, name)
        if doc is None:
            return Response(wire.encode({"error": f"no decision recorded for {namespace}/{name}"}),
                            status_code=404, media_type=JSON)
        return Response(wire.encode(doc), media_type=JSON)

    return app


NOT_SYNCED = "cluster view not synced yet (listing nodes and pods): retry in a moment"
"""Every verb's answer until both lists are in: kube-scheduler logs it and retries the pod."""


def _failure(verb: str, message: str) -> bytes:
    """The answer for a request that could not be handled: an Error where the type has one."""
    if verb == "filter":
        return wire.encode(wire.ExtenderFilterResult(Error=message))
    if verb == "bind":
        return wire.encode(wire.ExtenderBindingResult(Error=message))
    if verb == "prioritize":
        return wire.encode([])
    return wire.encode(wire.ExtenderPreemptionResult())


def _candidates(args: wire.ExtenderArgs) -> tuple[list[str], dict[str, dict] | None]:
    if args.NodeNames is not None:
        return args.NodeNames, None
    if args.Nodes is None:
        raise wire.WireError("ExtenderArgs: neither Nodes nor NodeNames is set")
    items = args.Nodes.get("items") or []
    sent = {(n.get("metadata") or {}).get("name", ""): n for n in items if isinstance(n, dict)}
    return list(sent), sent


class FilteredPods:
    """The pods filter was last asked about, by UID (at most KEPT): kube-scheduler binds a pod
    right after filtering it, sometimes before the extender's pod watch has brought it."""

    KEPT = 2_000  # kube-scheduler binds within seconds of filter; far more than it binds at once

    def __init__(self, group_keys: frozenset[str] = convert.DEFAULT_GROUP_KEYS) -> None:
        self.group_keys = group_keys
        self._pods: OrderedDict[str, dict[str, Any]] = OrderedDict()
        self._lock = threading.Lock()

    def add(self, pod: dict[str, Any]) -> None:
        """Keep the decoded pod itself (filter's hot path: no copy); bind slims it if it needs it."""
        uid = (pod.get("metadata") or {}).get("uid")
        if not uid:
            return
        with self._lock:
            self._pods[uid] = pod
            self._pods.move_to_end(uid)
            while len(self._pods) > self.KEPT:
                self._pods.popitem(last=False)

    def get(self, uid: str) -> dict[str, Any] | None:
        with self._lock:
            pod = self._pods.get(uid)
        return convert.slim_pod(pod, self.group_keys) if pod is not None else None


def _bind(view: ClusterView, decider: Decider, binder: Binder, lock: threading.Lock,
          args: wire.ExtenderBindingArgs, filtered: FilteredPods) -> str:
    pod = view.pod(args.PodUID) or view.pod(f"{args.PodNamespace}/{args.PodName}") or filtered.get(args.PodUID)
    if pod is None:
        return (f"gpu-extender: pod {args.PodNamespace}/{args.PodName} ({args.PodUID}) is not in the cluster view "
                "and was not filtered here")
    if (pod.get("spec") or {}).get("nodeName") == args.Node:
        return ""  # already bound there: binding again would fail, the outcome is the same
    with lock:
        try:
            decision = decider.decide(pod, [args.Node])
        except convert.BadObject as exc:
            return f"gpu-extender: {exc}"
        breakdown = decision.breakdowns.get(args.Node)
        if breakdown is None or not breakdown.feasible:
            reason = breakdown.reason if breakdown else "node unknown to gpu-extender"
            return f"gpu-extender: {args.Node} no longer fits {args.PodNamespace}/{args.PodName}: {reason}"
        plan = view.assume(pod, args.Node, breakdown.plan, decision.request)
        earlier = decider.bound(decision.request.key, plan, breakdown)
    why = convert.describe(breakdown.plan)
    if earlier is not None:
        why += f" (filter had planned {convert.describe(earlier)}; other pods took those first)"
    why += f": {breakdown.reason}"
    try:
        binder.bind(dict(pod), args.Node, plan, breakdown, why)
    except BindError as exc:
        view.forget(pod)
        return f"gpu-extender: {exc}"
    log.info("bound %s/%s to %s: %s", args.PodNamespace, args.PodName, args.Node, why)
    return ""
