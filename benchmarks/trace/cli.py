"""Command line: replay the policies over a node and a pod CSV, write allocation.csv,
allocation.png, a results JSON, and print the ratio at 100% arrived workload."""

from __future__ import annotations

import argparse
import json
import sys
import time
from datetime import datetime, timezone
from statistics import median
from pathlib import Path

from ..machine import machine
from .inference import read_latencies
from .openb import TraceError, read_nodes, read_pods
from .replay import MAX_ARRIVED_PCT, POLICIES, median_curves, replay

PUBLISHED_100 = {"Random": 86.2, "DotProd": 90.6, "GpuPacking": 91.8, "BestFit": 92.9, "FGD": 95.2}
PUBLISHED_LIST = "openb_pod_list_default"  # the published figures are for this list
RESULTS = Path(__file__).resolve().parent.parent / "results"


def write_csv(path: Path, curves: dict[str, list[float]]) -> None:
    lines = ["policy,arrived_pct,allocation_pct"]
    for policy, curve in curves.items():
        lines += [f"{policy},{p},{curve[p]:.3f}" for p in range(MAX_ARRIVED_PCT + 1)]
    path.write_text("\n".join(lines) + "\n")


def write_png(path: Path, curves: dict[str, list[float]], title: str) -> None:
    try:
        import matplotlib
        matplotlib.use("Agg")
        import matplotlib.pyplot as plt
    except ImportError:
        raise SystemExit("allocation.png needs matplotlib (pip install matplotlib), "
                         "or pass --no-plot") from None
    fig, ax = plt.subplots(figsize=(6, 4))
    xs = range(MAX_ARRIVED_PCT + 1)
    for policy, curve in curves.items():
        ax.plot(xs, curve, label=policy)
    ax.plot(xs, xs, color="grey", linestyle=":", linewidth=0.8)
    ax.set(xlabel="arrived workload (% of GPU capacity)", ylabel="GPU allocation ratio (%)",
           xlim=(0, MAX_ARRIVED_PCT), ylim=(0, 100), title=title)
    ax.legend()
    fig.tight_layout()
    fig.savefig(path, dpi=120)


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.trace", description=__doc__)
    ap.add_argument("--nodes", required=True, type=Path, help="node CSV (openb columns)")
    ap.add_argument("--pods", required=True, type=Path, help="pod CSV (openb columns)")
    ap.add_argument("--seeds", type=int, default=10, help="seeds 42..42+N-1 (default 10)")
    ap.add_argument("--policies", nargs="+", default=list(POLICIES), choices=POLICIES)
    ap.add_argument("--order", choices=("shuffle", "creation"), default="shuffle",
                    help="arrival order of the original pods (default shuffle, as the "
                         "published runs; creation = creation_time order)")
    ap.add_argument("--ties", choices=("rank", "random"), default="rank",
                    help="among best-scored nodes: first in a seeded node order (default, as "
                         "the simulator) or uniformly random")
    ap.add_argument("--ratio", type=float, default=1.3, help="inflation target (default 1.3)")
    ap.add_argument("--out", type=Path, default=Path("trace-out"), help="output folder")
    ap.add_argument("--results", type=Path, default=None,
                    help="results JSON (default benchmarks/results/trace_<pods>.json)")
    ap.add_argument("--no-plot", action="store_true", help="skip allocation.png")
    ap.add_argument("--processes", type=int, default=None, help="worker processes")
    ap.add_argument("--inference", type=Path, default=None, metavar="LATENCIES_CSV",
                    help="also report the inference view (model-cache hits of latency-critical "
                         "pods), drawing cold starts from this GenAI latency CSV "
                         "(basemodel_update_latency_anon.csv)")
    a = ap.parse_args(argv)
    try:
        nodes, pods = read_nodes(a.nodes), read_pods(a.pods)
        latencies = None if a.inference is None else read_latencies(a.inference)
    except (OSError, TraceError, ValueError) as e:
        print(f"error: {e}", file=sys.stderr)
        return 2
    seeds = list(range(42, 42 + a.seeds))
    start = time.perf_counter()
    results = replay(nodes, pods, a.policies, seeds, order=a.order, ties=a.ties, ratio=a.ratio,
                     processes=a.processes, latencies=latencies)
    elapsed = time.perf_counter() - start
    curves = median_curves(results)
    a.out.mkdir(parents=True, exist_ok=True)
    write_csv(a.out / "allocation.csv", curves)
    print(f"{len(nodes)} nodes, {len(pods)} pods, {len(seeds)} seeds, {elapsed:.0f} s")
    view = latencies is not None
    print(f"{'policy':<12}{'alloc@100%':>11}{'published':>11}{'delta':>8}{'run s':>8}"
          + (f"{'cache hits':>12}{'saved s':>10}" if view else ""))
    table = []
    for policy, curve in curves.items():
        runs = [r for r in results if r.policy == policy]
        pub = PUBLISHED_100.get(policy) if a.pods.stem == PUBLISHED_LIST else None
        delta = None if pub is None else round(curve[100] - pub, 2)
        row = {"policy": policy, "allocation_at_100": round(curve[100], 2),
               "allocation_at_130": round(curve[130], 2), "published_at_100": pub,
               "delta": delta,
               "failed_latency_critical_median": median(r.failed_latency_critical for r in runs),
               "failed_batch_median": median(r.failed_batch for r in runs),
               "run_seconds_median": round(median(r.seconds for r in runs), 1),
               "run_seconds_total": round(sum(r.seconds for r in runs), 1)}
        line = (f"{policy:<12}{curve[100]:>11.2f}{'' if pub is None else pub:>11}"
                f"{'' if delta is None else f'{delta:+.2f}':>8}{row['run_seconds_median']:>8}")
        if view:
            row["model_cache_hit_pct_median"] = round(median(
                100 * r.model_hits / r.model_pods if r.model_pods else 0.0 for r in runs), 2)
            row["cold_start_seconds_saved_median"] = round(median(r.saved_seconds for r in runs))
            row["latency_critical_gpu_pods_placed_median"] = median(r.model_pods for r in runs)
            line += (f"{row['model_cache_hit_pct_median']:>11.1f}%"
                     f"{row['cold_start_seconds_saved_median']:>10}")
        table.append(row)
        print(line)
    doc = {"benchmark": "trace_replay", "nodes_csv": a.nodes.name, "pods_csv": a.pods.name,
           "nodes": len(nodes), "pods": len(pods), "seeds": seeds, "order": a.order,
           "ties": a.ties, "inflation_ratio": a.ratio, "seconds": round(elapsed, 1),
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "machine": machine(),
           "results": table}
    results_path = a.results or RESULTS / f"trace_{a.pods.stem}.json"
    results_path.parent.mkdir(parents=True, exist_ok=True)
    results_path.write_text(json.dumps(doc, indent=2) + "\n")
    if not a.no_plot:
        write_png(a.out / "allocation.png", curves, f"{a.pods.stem} on {a.nodes.stem}")
    return 0
