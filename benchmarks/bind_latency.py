"""Bind latency of the live extender against a real API server, and the same at another revision
of the code, in one run.

    python benchmarks/bind_latency.py [--nodes 160] [--binds 200] [--rounds 3] [--compare REF]

One control plane (the e2e suite's, shipped RBAC), NODES 8-GPU nodes with the agent's NVLink
topology, one-GPU batch pods created without a scheduler. Each round starts `gpu-extender serve`
live (as its service account) at this checkout and at REF (a git worktree of it, run with this
checkout's virtualenv), in alternating order, and for BINDS pods each: filter over every node, then bind to the
node filter put first; the time of the bind request is measured at the client (HTTP over
loopback: the extender's re-check, the assumed plan, the annotated Binding through the API server).
Prints p50/p99 per revision and the ratio of the p50s, and writes them with the machine and date
to benchmarks/results/bind_latency.json. Without --compare only this checkout runs.
"""

from __future__ import annotations

import argparse
import json
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from tests.e2e.conftest import ControlPlane, nvlink_node  # noqa: E402
from tests.waiting import wait_for  # noqa: E402
from tests.webhook.conftest import free_port  # noqa: E402
from machine import machine  # noqa: E402
from webhook_latency import percentile  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "bind_latency.json"
NAMESPACE = "bind"
SERVE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from extender.cli import app; app()"


def serve(plane: ControlPlane, source: Path, log: Path) -> tuple[subprocess.Popen, httpx.Client]:
    """`gpu-extender serve` from the code in `source`, live, until it answers /readyz."""
    port = free_port()
    proc = subprocess.Popen([sys.executable, "-c", SERVE, str(source), "serve", "--kubeconfig",
                             str(plane.kubeconfig_for("gpu-extender")), "--port", str(port), "--log-level", "warning"],
                            stdout=log.open("a"), stderr=subprocess.STDOUT)
    http = httpx.Client(base_url=f"http://127.0.0.1:{port}", timeout=30)
    wait_for(lambda: http.get("/readyz").status_code == 200, "gpu-extender did not start", proc, log)
    return proc, http


def binds(plane: ControlPlane, http: httpx.Client, names: list[str], node_names: list[str]) -> list[float]:
    """Filter, then a timed bind, for each pod; seconds per bind."""
    took = []
    for name in names:
        pod = plane.core.read_namespaced_pod(name, NAMESPACE)
        body = plane.core.api_client.sanitize_for_serialization(pod)
        passed = http.post("/filter", json={"Pod": body, "Nodes": None, "NodeNames": node_names}).json()["NodeNames"]
        started = time.perf_counter()
        answer = http.post("/bind", json={"PodName": name, "PodNamespace": NAMESPACE,
                                          "PodUID": pod.metadata.uid, "Node": passed[0]}).json()
        took.append(time.perf_counter() - started)
        assert not answer.get("Error"), answer
    return took


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--nodes", type=int, default=160)
    parser.add_argument("--binds", type=int, default=200, help="binds per revision and round")
    parser.add_argument("--rounds", type=int, default=3)
    parser.add_argument("--compare", help="a git revision to measure in the same run (a worktree of it)")
    args = parser.parse_args()
    revisions = 2 if args.compare else 1
    assert args.binds * args.rounds * revisions <= args.nodes * 8, "every pod needs a free GPU: more --nodes"
    with tempfile.TemporaryDirectory(prefix="bind-bench-") as tmp:
        work = Path(tmp)
        sources = {"this checkout": ROOT}
        if args.compare:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", str(work / "compare"), args.compare],
                           check=True, capture_output=True)
            sources[args.compare] = work / "compare"
        plane = ControlPlane(work)
        try:
            plane.namespace(NAMESPACE)
            for i in range(args.nodes):
                plane.node(nvlink_node(f"bind-node-{i:04d}", "batch"))
            node_names = [f"bind-node-{i:04d}" for i in range(args.nodes)]
            total = args.binds * args.rounds * len(sources)
            for i in range(total):
                plane.core.create_namespaced_pod(NAMESPACE, {
                    "metadata": {"name": f"bind-{i:05d}"},
                    "spec": {"schedulerName": "gpu-scheduler", "priorityClassName": "gpu-batch",
                             "containers": [{"name": "c", "image": "busybox",
                                             "resources": {"limits": {"nvidia.com/gpu": "1"}}}]}})
            times: dict[str, list[float]] = {name: [] for name in sources}
            next_pod = 0
            for round_ in range(args.rounds):
                order = list(sources.items())
                for name, source in order if round_ % 2 == 0 else reversed(order):
                    proc, http = serve(plane, source, work / f"serve-{round_}.log")
                    try:
                        names = [f"bind-{i:05d}" for i in range(next_pod, next_pod + args.binds)]
                        next_pod += args.binds
                        took = binds(plane, http, names, node_names)
                    finally:
                        proc.kill()
                        proc.wait(timeout=10)
                        http.close()
                    times[name] += took
                    print(f"round {round_ + 1} {name}: p50 {percentile(took, 0.5) * 1000:.2f} ms, "
                          f"p99 {percentile(took, 0.99) * 1000:.2f} ms", flush=True)
        finally:
            plane.stop()
            if args.compare:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", str(work / "compare")],
                               check=False, capture_output=True)
    head = subprocess.run(["git", "-C", str(ROOT), "rev-parse", "--short", "HEAD"], capture_output=True,
                          text=True).stdout.strip()
    report = {"machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
              "head": head, "nodes": args.nodes, "binds_per_round": args.binds, "rounds": args.rounds,
              "revisions": {name: {"binds": len(t), "p50_ms": round(percentile(t, 0.5) * 1000, 2),
                                   "p99_ms": round(percentile(t, 0.99) * 1000, 2)} for name, t in times.items()}}
    if args.compare:
        report["p50_ratio_this_to_compare"] = round(
            report["revisions"]["this checkout"]["p50_ms"] / report["revisions"][args.compare]["p50_ms"], 3)
    print(json.dumps(report, indent=2))
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
