"""Scheduling throughput with the real kube-scheduler, with and without the extender.

    python benchmarks/scheduler_throughput.py [--nodes 1000] [--pods 3000] [--qps N]

One control plane (the e2e suite's: etcd, kube-apiserver, shipped manifests; built by
scripts/build-control-plane), NODES 8-GPU nodes with the agent's NVLink topology, and twice PODS
one-GPU batch pods, created while no scheduler runs and then scheduled by:

* `plain`: kube-scheduler with the shipped configuration less the extender (profile
  `plain-scheduler`; in-tree NodeResourcesFit counts nvidia.com/gpu, DefaultBinder binds);
* `null-extender`: the shipped configuration calling benchmarks/null_extender (Go, built with the
  machine's Go into the cache) for filter and prioritize, which passes every node and scores each
  10; DefaultBinder binds. What an HTTP extender that passes every node costs kube-scheduler,
  before the extender's own work (gpu-extender passes only its best nodes: see the README).
* `gpu-scheduler`: the shipped configuration, the extender (live mode, its own service account)
  filtering, prioritizing and binding every pod.

`--qps` sets kube-scheduler's client QPS (burst twice that) in both runs; without it the shipped
configuration's default (50) applies, which caps the plain run's bindings.

Pods/s is PODS over the time from the scheduler's start to the last pod bound (start-up, about a
second, included in each; bound pods are counted from a watch). Prints all three, the ratios to
`plain`, the CPU seconds etcd, kube-apiserver, kube-scheduler and the extender used in each run,
and writes them with the machine and date to benchmarks/results/scheduler_throughput.json. Only
`gpu-scheduler` holds the leader-election lease (the others run without election): a second
scheduler taking over a killed one's lease would wait out its duration.
"""

from __future__ import annotations

import argparse
import contextlib
import hashlib
import json
import os
import re
import subprocess
import sys
import tempfile
import threading
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
from prometheus_client.parser import text_string_to_metric_families


ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from tests.e2e.conftest import ControlPlane, Extender, Scheduler, free_port, nvlink_node  # noqa: E402
from tests.waiting import wait_for  # noqa: E402
from podwatch import watch_pods  # noqa: E402
from machine import machine  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "scheduler_throughput.json"
NAMESPACE = "bench"
KUBERNETES = re.compile(r"k8s\.io/kubernetes (v[0-9.]+)")


def pods(plane: ControlPlane, count: int, scheduler_name: str) -> None:
    for i in range(count):
        plane.core.create_namespaced_pod(NAMESPACE, {
            "metadata": {"name": f"{scheduler_name}-{i:05d}"},
            "spec": {"schedulerName": scheduler_name, "priorityClassName": "gpu-batch",
                     "containers": [{"name": "c", "image": "busybox",
                                     "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})


class BoundCounter:
    """Counts the namespace's pods that have a node, from a watch."""

    def __init__(self, plane: ControlPlane):
        self.bound: set[str] = set()
        self.stop = threading.Event()
        watch_pods(plane.core, NAMESPACE, self._seen, self.stop)

    def _seen(self, kind: str, pod: dict) -> None:
        if pod["spec"].get("nodeName"):
            self.bound.add(pod["metadata"]["name"])


def null_extender() -> Path:
    """benchmarks/null_extender built with the machine's Go into the cache (GPU_EXTENDER_CACHE, as
    the control plane), keyed by its source; built again only when that changes."""
    source = ROOT / "benchmarks" / "null_extender"
    key = hashlib.sha256(b"".join((source / name).read_bytes() for name in ("go.mod", "main.go"))).hexdigest()[:16]
    cache = (os.environ.get("GPU_EXTENDER_CACHE")
             or Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "gpu-extender")
    exe = Path(cache) / f"null-extender-{key}"
    if not exe.exists():
        subprocess.run(["go", "build", "-o", str(exe), "."], cwd=source, check=True)
    return exe


def start_null_extender(log: Path) -> tuple[subprocess.Popen, int]:
    """The null extender on a free loopback port, once it answers, and that port; output in `log`."""
    port = free_port()
    proc = subprocess.Popen([str(null_extender()), f"127.0.0.1:{port}"], stdout=log.open("w"),
                            stderr=subprocess.STDOUT)
    wait_for(lambda: httpx.post(f"http://127.0.0.1:{port}/filter", content=b"{}").status_code == 200,
             "null-extender did not start", proc, log)
    return proc, port


def cpu_seconds(procs: dict[str, subprocess.Popen]) -> dict[str, float]:
    """User + system CPU seconds each process has used so far."""
    ticks = os.sysconf("SC_CLK_TCK")
    used = {}
    for name, proc in procs.items():
        fields = Path(f"/proc/{proc.pid}/stat").read_text().rsplit(")", 1)[1].split()
        used[name] = (int(fields[11]) + int(fields[12])) / ticks
    return used


def timed(plane: ControlPlane, count: int, start, procs: dict[str, subprocess.Popen]
          ) -> tuple[float, Scheduler, dict[str, float]]:
    """Seconds from starting the scheduler to `count` pods bound, and the CPU seconds each process
    (`procs` and the scheduler) used meanwhile; fails after 60 s without progress."""
    counter = BoundCounter(plane)
    before = cpu_seconds(procs)
    started = progress = time.monotonic()
    scheduler = start()
    done = 0
    while done < count:
        time.sleep(0.1)
        if len(counter.bound) > done:
            done, progress = len(counter.bound), time.monotonic()
        elif time.monotonic() - progress > 60:
            scheduler.kill()
            tail = "\n".join(scheduler.log.read_text().splitlines()[-5:])
            raise RuntimeError(f"stuck at {done} of {count} pods bound; scheduler log ends:\n{tail}")
    elapsed = time.monotonic() - started
    after = cpu_seconds(procs | {"kube-scheduler": scheduler.proc})
    counter.stop.set()
    return elapsed, scheduler, {name: round(after[name] - before.get(name, 0.0), 1) for name in after}


def extender_seconds(metrics: str) -> dict[str, float]:
    """Total time the extender spent answering, per verb (its request-latency histogram)."""
    totals = {}
    for family in text_string_to_metric_families(metrics):
        if family.name == "gpu_extender_request_seconds":
            for sample in family.samples:
                if sample.name.endswith("_sum"):
                    totals[sample.labels["verb"]] = sample.value
    return totals


def with_qps(qps: int | None, then=None):
    def edit(config: dict) -> None:
        if qps:
            config["clientConnection"].update(qps=qps, burst=2 * qps)
        if then:
            then(config)
    return edit


def _without_extender(config: dict) -> None:
    del config["extenders"]
    config["profiles"][0]["schedulerName"] = "plain-scheduler"
    config["leaderElection"]["leaderElect"] = False  # alone, and RBAC allows only the gpu-scheduler lease


def _null_extender(config: dict) -> None:
    for verb in ("bindVerb", "preemptVerb"):
        del config["extenders"][0][verb]
    config["leaderElection"]["leaderElect"] = False


def clear(plane: ControlPlane) -> None:
    plane.core.delete_collection_namespaced_pod(NAMESPACE, grace_period_seconds=0)
    while plane.core.list_namespaced_pod(NAMESPACE, limit=1).items:
        time.sleep(0.5)


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, default=1000)
    parser.add_argument("--pods", type=int, default=3000)
    parser.add_argument("--qps", type=int, default=None)
    args = parser.parse_args()
    work = Path(tempfile.mkdtemp(prefix="scheduler-throughput-"))
    with contextlib.ExitStack() as running:  # whatever was started stops, also when a run fails
        plane = ControlPlane(work)
        running.callback(plane.stop)
        plane.namespace(NAMESPACE)
        for i in range(args.nodes):
            plane.node(nvlink_node(f"node-{i:04d}", "bench"))
        print(f"{args.nodes} nodes created", flush=True)

        procs = {"etcd": plane.procs[0], "kube-apiserver": plane._api}
        pods(plane, args.pods, "plain-scheduler")
        plain_s, scheduler, plain_cpu = timed(plane, args.pods, lambda: Scheduler(
            plane, 0, work / "plain-scheduler.log", edit=with_qps(args.qps, _without_extender)), procs)
        scheduler.kill()
        clear(plane)
        print(f"plain: {args.pods} pods in {plain_s:.1f} s; CPU seconds: {plain_cpu}", flush=True)

        null, port = start_null_extender(work / "null-extender-server.log")
        running.callback(null.kill)
        pods(plane, args.pods, "gpu-scheduler")
        null_s, scheduler, null_cpu = timed(plane, args.pods, lambda: Scheduler(
            plane, port, work / "null-extender.log", edit=with_qps(args.qps, _null_extender)),
            procs | {"null-extender": null})
        scheduler.kill()
        null.kill()
        null.wait()
        clear(plane)
        print(f"null-extender: {args.pods} pods in {null_s:.1f} s; CPU seconds: {null_cpu}", flush=True)

        extender = Extender(plane, work / "extender.log")
        running.callback(extender.kill)
        pods(plane, args.pods, "gpu-scheduler")
        gpu_s, scheduler, gpu_cpu = timed(plane, args.pods, lambda: Scheduler(
            plane, extender.port, work / "gpu-scheduler.log", edit=with_qps(args.qps)),
            procs | {"gpu-extender": extender.proc})
        scheduler.kill()
        server_s = extender_seconds(extender.http.get("/metrics").text)
        extender.kill()
        print(f"gpu-scheduler: {args.pods} pods in {gpu_s:.1f} s; CPU seconds: {gpu_cpu}; inside the extender, "
              "per verb: " + ", ".join(f"{verb} {total:.1f} s" for verb, total in server_s.items()), flush=True)
    row = {
        "nodes": args.nodes, "pods": args.pods, "qps": args.qps or 50,
        "plain_pods_per_s": round(args.pods / plain_s, 1), "extender_pods_per_s": round(args.pods / gpu_s, 1),
        "ratio": round(plain_s / gpu_s, 3),
        "null_extender_pods_per_s": round(args.pods / null_s, 1), "null_extender_ratio": round(plain_s / null_s, 3),
        "extender_seconds_by_verb": {verb: round(total, 2) for verb, total in server_s.items()},
        "cpu_seconds": {"plain": plain_cpu, "null-extender": null_cpu, "gpu-scheduler": gpu_cpu},
    }
    print(json.dumps(row))
    print(f"pods/s: plain {row['plain_pods_per_s']}, null-extender {row['null_extender_pods_per_s']} "
          f"(ratio {row['null_extender_ratio']}), gpu-extender {row['extender_pods_per_s']} (ratio {row['ratio']})")
    row |= {"date": datetime.now(timezone.utc).isoformat(timespec="seconds"), "machine": machine(),
            "kubernetes": KUBERNETES.search((ROOT / "tests" / "e2e" / "go.mod").read_text())[1]}
    same = ("nodes", "pods", "qps")
    rows = json.loads(RESULTS.read_text())["results"] if RESULTS.exists() else []
    rows = [r for r in rows if any(r.get(k) != row[k] for k in same)] + [row]
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    RESULTS.write_text(json.dumps({"benchmark": "scheduler_throughput", "results": rows}, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
