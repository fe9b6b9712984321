"""Churn through the real kube-scheduler: pods created and deleted for a set time.

    python benchmarks/churn.py [--minutes 10] [--nodes 100] [--rate 8] [--seed 1]

One control plane (the e2e suite's: etcd, kube-apiserver, built by scripts/build-control-plane),
NODES 8-GPU nodes with the agent's NVLink topology, advertising GPU shares too, the extender
(live mode, its own service account) and kube-scheduler with the shipped configuration. For MINUTES, RATE pods a second are
created (seeded mix: 1-, 2- and 4-GPU pods and 300/500-milli shares; a third latency-critical),
each deleted a random 20-60 s after it was bound, as a Job's or a server's pods come and go.

Reports, and writes with the machine and date to benchmarks/results/churn.json:
* cycles: pods created, bound, never bound (the run should stay below capacity) and deleted;
* time to bind, p50/p99/max: from the create call to the watch seeing the pod's node;
* bind failures by reason, from the extender's log ("bind ... failed: <reason>", names and
  figures left out): "is not in the cluster view" is the watch lagging behind kube-scheduler,
  "no longer fits" a pod that took the devices between this pod's filter and its bind;
* the extender's RSS every 10 s, and its slope (MiB per minute, least squares) over the second
  half of the run: the first half is warm-up, in which the bounded caches fill (the last 2,000
  filtered pods take 250 s at 8 pods/s);
* consistency: every 30 s, the bound pods' plans never hold a GPU twice (whole GPUs, shares over
  1000 milli, a share beside a whole-GPU plan); at the end, all pods deleted, every node again
  fits an 8-GPU pod at the extender (nothing held after its pod is gone).
"""

from __future__ import annotations

import argparse
import contextlib
import heapq
import json
import random
import re
import statistics
import sys
import tempfile
import threading
import time
from collections import Counter, defaultdict
from datetime import datetime, timezone
from pathlib import Path


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from tests.e2e.conftest import ControlPlane, Extender, Scheduler, nvlink_node  # noqa: E402
from podwatch import watch_pods  # noqa: E402
from machine import machine  # noqa: E402
from webhook_latency import percentile  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "churn.json"
NAMESPACE = "churn"
SHARE = "gpu-extender.io/gpu-milli"
MIX = ((("nvidia.com/gpu", "1"), 50), (("nvidia.com/gpu", "2"), 10), (("nvidia.com/gpu", "4"), 5),
       ((SHARE, "300"), 20), ((SHARE, "500"), 15))
"""(resource, amount) and weight of each pod kind."""
LIFETIME = (20.0, 60.0)  # seconds a pod lives after it is bound
FAILED_BIND = re.compile(r"bind \S+ to \S+ failed: (.*)")


def pod(name: str, kind: tuple[str, str], latency_critical: bool) -> dict:
    klass = "latency-critical" if latency_critical else "batch"
    return {"metadata": {"name": name, "annotations": {"gpu-extender.io/class": klass}},
            "spec": {"schedulerName": "gpu-scheduler", "priorityClassName": f"gpu-{klass}",
                     "containers": [{"name": "c", "image": "busybox", "resources": {"limits": {kind[0]: kind[1]}}}]}}


class Watch:
    """The namespace's pods as a watch delivers them: when each was first seen bound, and the
    live pods (name -> object)."""

    def __init__(self, plane: ControlPlane):
        self.bound_at: dict[str, float] = {}
        self.live: dict[str, dict] = {}
        self.lock = threading.Lock()
        self.stop = threading.Event()
        watch_pods(plane.core, NAMESPACE, self._seen, self.stop)

    def _seen(self, kind: str, pod: dict) -> None:
        name = pod["metadata"]["name"]
        with self.lock:
            if kind == "DELETED":
                self.live.pop(name, None)
                return
            self.live[name] = pod
            if pod["spec"].get("nodeName") and name not in self.bound_at:
                self.bound_at[name] = time.monotonic()


def reason(message: str) -> str:
    """A bind failure's reason without the pod, node and figures, so that like ones count together."""
    message = message.removeprefix("gpu-extender: ")
    return re.sub(r"\d+", "N", re.sub(r"node-\d+", "NODE", re.sub(r"\S+/p-\d+", "POD", message)))


def double_held(pods: list[dict]) -> list[str]:
    """Devices two live pods' plans hold at once (see the module docstring)."""
    whole: dict[tuple[str, int], str] = {}
    shares: dict[tuple[str, int], int] = defaultdict(int)
    problems = []
    for obj in pods:
        raw = (obj["metadata"].get("annotations") or {}).get("gpu-extender.io/plan")
        if not raw or obj["metadata"].get("deletionTimestamp"):
            continue
        plan, name = json.loads(raw), obj["metadata"]["name"]
        for gpu in plan["gpus"]:
            key = (plan["node"], gpu)
            if key in whole:
                problems.append(f"GPU {gpu} of {plan['node']}: {whole[key]} and {name}")
            whole[key] = name
        if plan.get("share"):
            shares[(plan["node"], plan["share"]["gpu"])] += plan["share"]["milli"]
    for key, milli in shares.items():
        if milli > 1000:
            problems.append(f"GPU {key[1]} of {key[0]}: shares of {milli} milli")
        if key in whole:
            problems.append(f"GPU {key[1]} of {key[0]}: a share beside {whole[key]}")
    return problems


def rss_mib(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    raise RuntimeError(f"no VmRSS for {pid}")


def slope(points: list[tuple[float, float]]) -> float:
    """Least-squares slope of (seconds, MiB), in MiB per minute."""
    xs, ys = [x for x, _ in points], [y for _, y in points]
    mx, my = statistics.fmean(xs), statistics.fmean(ys)
    den = sum((x - mx) ** 2 for x in xs)
    return 60 * sum((x - mx) * (y - my) for x, y in points) / den if den else 0.0


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--minutes", type=float, default=10.0)
    parser.add_argument("--nodes", type=int, default=100)
    parser.add_argument("--rate", type=float, default=8.0, help="pods created per second")
    parser.add_argument("--seed", type=int, default=1)
    args = parser.parse_args()
    rng = random.Random(args.seed)
    work = Path(tempfile.mkdtemp(prefix="churn-"))
    created_at: dict[str, float] = {}
    deaths: list[tuple[float, str]] = []  # (when, pod) heap
    deleted = 0
    scheduled: set[str] = set()  # bound pods whose deletion is planned
    rss: list[tuple[float, float]] = []
    problems: list[str] = []
    with contextlib.ExitStack() as running:
        plane = ControlPlane(work)
        running.callback(plane.stop)
        plane.namespace(NAMESPACE)
        for i in range(args.nodes):
            node = nvlink_node(f"node-{i:03d}", "churn")
            for kind in ("capacity", "allocatable"):  # shares: 1000 milli per GPU, as a sharing plugin advertises
                node["status"][kind] = {**node["status"][kind], SHARE: "8000"}
            plane.node(node)
        extender = Extender(plane, work / "extender.log")
        running.callback(extender.kill)
        scheduler = Scheduler(plane, extender.port, work / "kube-scheduler.log")
        running.callback(scheduler.kill)
        watch = Watch(plane)
        print(f"{args.nodes} nodes; churning for {args.minutes:g} min at {args.rate:g} pods/s", flush=True)
        start = time.monotonic()
        end = start + 60 * args.minutes
        next_create, next_rss, next_check, n = start, start, start + 30, 0
        kinds, weights = zip(*MIX)
        while (now := time.monotonic()) < end:
            if now >= next_create:
                name = f"p-{n:06d}"
                created_at[name] = time.monotonic()
                plane.core.create_namespaced_pod(NAMESPACE, pod(name, rng.choices(kinds, weights)[0], rng.random() < 1 / 3))
                n += 1
                next_create += 1 / args.rate
            with watch.lock:
                newly = [p for p in watch.bound_at if p not in scheduled]
            for name in newly:
                scheduled.add(name)
                heapq.heappush(deaths, (watch.bound_at[name] + rng.uniform(*LIFETIME), name))
            while deaths and deaths[0][0] <= now:
                _, name = heapq.heappop(deaths)
                plane.core.delete_namespaced_pod(name, NAMESPACE, grace_period_seconds=0)
                deleted += 1
            if now >= next_rss:
                rss.append((now - start, rss_mib(extender.proc.pid)))
                next_rss += 10
            if now >= next_check:
                with watch.lock:
                    live = list(watch.live.values())
                problems += double_held(live)
                next_check += 30
                print(f"{(now - start) / 60:4.1f} min: {n} created, {len(watch.bound_at)} bound, {deleted} deleted, "
                      f"extender RSS {rss[-1][1]:.0f} MiB", flush=True)
            time.sleep(0.005)
        # Drain: every pod deleted, then nothing may be held anywhere.
        time.sleep(5)
        plane.core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
        while plane.core.list_namespaced_pod(NAMESPACE, limit=1).items:
            time.sleep(0.5)
        time.sleep(3)  # the extender's watch sees the deletions
        probe = {"Pod": {"metadata": {"name": "probe", "namespace": NAMESPACE, "uid": "probe"},
                         "spec": {"containers": [{"name": "c", "resources": {"limits": {"nvidia.com/gpu": "8"}}}]}},
                 "NodeNames": [f"node-{i:03d}" for i in range(args.nodes)]}
        answer = extender.http.post("/filter", json=probe).json()
        held_after = sorted(answer.get("FailedNodes") or {}) + sorted(answer.get("FailedAndUnresolvableNodes") or {})
        failures = Counter(reason(m[1]) for line in (work / "extender.log").read_text().splitlines()
                           if (m := FAILED_BIND.search(line)))
        watch.stop.set()
    waits = [watch.bound_at[p] - created_at[p] for p in watch.bound_at if p in created_at]
    warm = [(t, m) for t, m in rss if t >= 60 * args.minutes / 2]
    row = {
        "minutes": args.minutes, "nodes": args.nodes, "rate": args.rate, "seed": args.seed,
        "created": n, "bound": len(waits), "never_bound": n - len(waits), "deleted_during_run": deleted,
        "time_to_bind_ms": {"p50": round(1000 * percentile(waits, 0.5), 1),
                            "p99": round(1000 * percentile(waits, 0.99), 1),
                            "max": round(1000 * max(waits), 1)},
        "bind_failures": dict(failures),
        "rss_mib": {"first": round(rss[0][1], 1), "after_warm_up": round(warm[0][1], 1),
                    "last": round(rss[-1][1], 1), "slope_mib_per_min_after_warm_up": round(slope(warm), 3),
                    "every_10_s": [round(m, 1) for _, m in rss]},
        "double_held": problems[:20], "held_after_pods_gone": held_after,
    }
    print(json.dumps(row, indent=2))
    row |= {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine()}
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "churn", "results": [row]}, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
