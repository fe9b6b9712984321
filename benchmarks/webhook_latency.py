"""Webhook latency: the real `gpu-extender serve` on one core, real HTTP over loopback.

    python benchmarks/webhook_latency.py [--nodes 500 5000] [--requests 1000] [--compare REV]

For each cluster size it builds a synthetic cluster (benchmarks/synthetic.py: the example's node
shapes, 10 pods per node), starts the server pinned to CPU 0 (the client runs on the other CPUs),
and sends filter then prioritize for the example pods in turn with every node as a candidate
(nodeCacheCapable true); prioritize gets the nodes filter passed, as from kube-scheduler. Each
size runs twice, the server passing the best nodes only (`serve --best-only`, the default) and
every node that fits (`--all-feasible`). The first request of each pod shape is reported apart
("cold": every node scored); later ones reuse per-node results until a node changes ("warm").
Prints p50/p99 of filter, prioritize and filter+prioritize as the client sees them (request
encoding and response decoding included), filter+prioritize inside the server (its Server-Timing
header), requests per second and the server's RSS, and writes them with the machine and date to
benchmarks/results/webhook_latency.json. With `--compare REV` the server of that git revision (a
worktree of it) runs each case too, right after this checkout's, on the same synthetic cluster,
and the p99 ratios (this / REV) are printed: the machines are noisy, so only same-run ratios
compare.
"""

from __future__ import annotations

import argparse
import gc
import json
import os
import socket
import statistics
import subprocess
import sys
import tempfile
import time
from datetime import datetime, timezone
from pathlib import Path

import http.client

import msgspec
import yaml

sys.path.insert(0, str(Path(__file__).resolve().parent))
import synthetic  # noqa: E402
from machine import machine  # noqa: E402

ROOT = Path(__file__).resolve().parent.parent
RESULTS = ROOT / "benchmarks" / "results" / "webhook_latency.json"


def percentile(values: list[float], q: float) -> float:
    ordered = sorted(values)
    return ordered[min(len(ordered) - 1, round(q * (len(ordered) - 1)))]


def rss_mb(pid: int) -> float:
    for line in Path(f"/proc/{pid}/status").read_text().splitlines():
        if line.startswith("VmRSS:"):
            return int(line.split()[1]) / 1024
    return float("nan")


class FilterPassed(msgspec.Struct):
    """The part of a filter answer the next request needs (the rest is parsed, not kept)."""

    NodeNames: list[str]


SERVE = "import sys; sys.path.insert(0, sys.argv.pop(1)); from extender.cli import app; app()"
"""`gpu-extender serve` from the code in the folder given as first argument."""


def run(n_nodes: int, requests: int, work: Path, all_feasible: bool, source: Path = ROOT) -> dict:
    cluster, metrics, names = synthetic.build(n_nodes, 10, work)
    pods = [yaml.safe_load(p.read_text()) for p in sorted((ROOT / "examples" / "pods").glob("*.yaml"))]
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        port = s.getsockname()[1]
    cmd = [sys.executable, "-c", SERVE, str(source), "serve", "--cluster", str(cluster), "--port", str(port),
           "--log-level", "warning", "--all-feasible" if all_feasible else "--best-only"]
    for dump in metrics:
        cmd += ["--metrics", str(dump)]
    started = time.monotonic()
    server = subprocess.Popen(["taskset", "-c", "0", *cmd], stdout=subprocess.DEVNULL, stderr=subprocess.PIPE)
    if os.cpu_count() and os.cpu_count() > 1:
        os.sched_setaffinity(0, set(range(1, os.cpu_count())))
    deadline = time.monotonic() + 600
    while True:
        try:
            probe = http.client.HTTPConnection("127.0.0.1", port, timeout=5)
            probe.request("GET", "/readyz")
            if probe.getresponse().status == 200:
                break
        except OSError:
            if server.poll() is not None or time.monotonic() > deadline:
                raise RuntimeError(server.stderr.read().decode()) from None
        time.sleep(0.2)
    load_s = time.monotonic() - started
    connection = http.client.HTTPConnection("127.0.0.1", port, timeout=30)
    headers = {"Content-Type": "application/json"}

    def post(verb: str, body: bytes) -> tuple[bytes, float]:
        connection.request("POST", f"/{verb}", body=body, headers=headers)
        response = connection.getresponse()
        data = response.read()
        assert response.status == 200, data
        return data, float(response.headers["Server-Timing"].split("dur=")[1]) / 1000

    encode = msgspec.json.encode
    passed = msgspec.json.Decoder(FilterPassed).decode
    bodies = [encode({"Pod": pod, "Nodes": None, "NodeNames": names}) for pod in pods]
    cold: list[float] = []
    filt: list[float] = []
    prio: list[float] = []
    total: list[float] = []
    server_total: list[float] = []
    gc.collect()
    gc.disable()  # the load generator's own collections must not show up as server latency
    wall = time.perf_counter()
    for i in range(requests + len(bodies)):
        t0 = time.perf_counter()
        answer, f_server = post("filter", bodies[i % len(bodies)])
        t1 = time.perf_counter()
        kept = passed(answer).NodeNames
        _, p_server = post("prioritize", encode({"Pod": pods[i % len(pods)], "Nodes": None, "NodeNames": kept}))
        t2 = time.perf_counter()
        if i < len(bodies):
            cold.append(t2 - t0)
            continue
        filt.append(t1 - t0)
        prio.append(t2 - t1)
        total.append(t2 - t0)
        server_total.append(f_server + p_server)
    wall = time.perf_counter() - wall
    gc.enable()
    rss = rss_mb(server.pid)
    server.terminate()
    server.wait(timeout=10)
    ms = lambda v: round(v * 1000, 2)  # noqa: E731
    return {
        "nodes": n_nodes, "pods": n_nodes * 10, "filter_passes": "all feasible" if all_feasible else "best only",
        "requests": requests, "startup_s": round(load_s, 1),
        "filter_p50_ms": ms(statistics.median(filt)), "filter_p99_ms": ms(percentile(filt, 0.99)),
        "prioritize_p50_ms": ms(statistics.median(prio)), "prioritize_p99_ms": ms(percentile(prio, 0.99)),
        "filter_prioritize_p50_ms": ms(statistics.median(total)),
        "filter_prioritize_p99_ms": ms(percentile(total, 0.99)),
        "server_filter_prioritize_p50_ms": ms(statistics.median(server_total)),
        "server_filter_prioritize_p99_ms": ms(percentile(server_total, 0.99)),
        "cold_filter_prioritize_max_ms": ms(max(cold)),
        "requests_per_s": round(2 * (requests + len(bodies)) / wall, 1), "rss_mb": round(rss, 1),
    }


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--nodes", type=int, nargs="+", default=[500, 5000])
    parser.add_argument("--requests", type=int, default=1000)
    parser.add_argument("--compare", help="a git revision to measure in the same run (a worktree of it)")
    args = parser.parse_args()
    rows, compared = [], []
    with tempfile.TemporaryDirectory() as tmp:
        if args.compare:
            subprocess.run(["git", "-C", str(ROOT), "worktree", "add", "--detach", f"{tmp}/compare", args.compare],
                           check=True, capture_output=True)
        try:
            for n in args.nodes:
                for all_feasible in (False, True):
                    row = run(n, args.requests, Path(tmp) / f"{n}-{all_feasible}", all_feasible)
                    rows.append(row)
                    print(json.dumps(row), flush=True)
                    if args.compare:
                        other = run(n, args.requests, Path(tmp) / f"{n}-{all_feasible}-compare", all_feasible,
                                    Path(tmp) / "compare")
                        compared.append(other | {"revision": args.compare})
                        ratio = row["filter_prioritize_p99_ms"] / other["filter_prioritize_p99_ms"]
                        print(f"{args.compare}: {json.dumps(other)}\n"
                              f"p99 filter+prioritize, this / {args.compare}: {ratio:.2f}", flush=True)
        finally:
            if args.compare:
                subprocess.run(["git", "-C", str(ROOT), "worktree", "remove", "--force", f"{tmp}/compare"],
                               check=False, capture_output=True)
    RESULTS.parent.mkdir(parents=True, exist_ok=True)
    doc = {"benchmark": "webhook_latency", "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(), "server_cpu": "pinned to CPU 0", "results": rows}
    if args.compare:
        doc["compared"] = compared
    RESULTS.write_text(json.dumps(doc, indent=2) + "\n")
    print(f"written to {RESULTS.relative_to(ROOT)}")


if __name__ == "__main__":
    main()
