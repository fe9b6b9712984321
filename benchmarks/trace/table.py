"""The replay table over many pod lists: FGD and Ours in the same run, per list.

    python -m benchmarks.trace.table --nodes NODES.csv --pods DEFAULT.csv [more public lists]
        [--tune share60 ...] [--report share20 ...] [--seeds 10] [--work DIR]

Builds the variant lists (`benchmarks/trace/variants.py`) from the first `--pods` list: the
`--tune` variants with recipe seed 1, the `--report` variants with recipe seed 2, into `--work`
(outside the repository). Every list given or built is replayed with FGD and Ours over the same
seeds; the table shows allocation at 100% and 130% arrived, the gain of Ours over FGD, and the
median latency-critical pods each failed until 100% arrived and over the whole run. Settings
are chosen on the `tune` lists and the public ones; the `report` lists are for reporting only.
Writes `benchmarks/results/trace_table.json` with the machine and the date.
"""

from __future__ import annotations

import argparse
import json
import time
from datetime import datetime, timezone
from pathlib import Path
from statistics import mean, median

from ..machine import machine
from .cli import RESULTS
from .openb import read_nodes, read_pods
from .replay import median_curves, replay
from .variants import build, write

TUNE = ("share60", "multigpu35", "multigpu40", "multigpu45", "spec20", "spec30", "specu20", "cpu200")
REPORT = ("share20", "share80", "multigpu30", "multigpu50", "spec10", "spec25", "spec33",
          "specu25", "cpu50", "cpu250")
POLICIES = ["FGD", "Ours"]


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.trace.table", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", required=True, type=Path)
    ap.add_argument("--pods", required=True, type=Path, nargs="+", help="public pod lists; "
                    "the first is the base of the variants")
    ap.add_argument("--tune", nargs="*", default=list(TUNE))
    ap.add_argument("--report", nargs="*", default=list(REPORT))
    ap.add_argument("--seeds", type=int, default=10)
    ap.add_argument("--work", type=Path, default=Path.home() / ".cache" / "gpu-extender" / "variants")
    ap.add_argument("--results", type=Path, default=RESULTS / "trace_table.json")
    a = ap.parse_args(argv)
    nodes = read_nodes(a.nodes)
    base = read_pods(a.pods[0])
    lists: list[tuple[str, str, Path]] = [("public", p.stem, p) for p in a.pods]
    for role, seed, variants in (("tune", 1, a.tune), ("report", 2, a.report)):
        for v in variants:
            path = a.work / role / f"{a.pods[0].stem}_{v}.csv"
            path.parent.mkdir(parents=True, exist_ok=True)
            write(path, build(nodes, base, v, seed))
            lists.append((role, v, path))
    seeds = list(range(42, 42 + a.seeds))
    rows = []
    print("| list | role | FGD @100% | Ours @100% | gain | FGD @130% | Ours @130% "
          "| failed LC pods to 100%, FGD / Ours | to 130% |")
    print("|---|---|---|---|---|---|---|---|---|")
    start = time.perf_counter()
    for role, name, path in lists:
        results = replay(nodes, read_pods(path), POLICIES, seeds)
        curves = median_curves(results)
        lc = {p: median(r.failed_latency_critical for r in results if r.policy == p) for p in POLICIES}
        lc100 = {p: median(r.failed_latency_critical_at_100 for r in results if r.policy == p)
                 for p in POLICIES}
        row = {"list": name, "role": role, "fgd_100": round(curves["FGD"][100], 2),
               "ours_100": round(curves["Ours"][100], 2),
               "gain_100": round(curves["Ours"][100] - curves["FGD"][100], 2),
               "fgd_130": round(curves["FGD"][130], 2), "ours_130": round(curves["Ours"][130], 2),
               "failed_lc_fgd": lc["FGD"], "failed_lc_ours": lc["Ours"],
               "failed_lc_fgd_100": lc100["FGD"], "failed_lc_ours_100": lc100["Ours"]}
        rows.append(row)
        print(f"| {name} | {role} | {row['fgd_100']:.2f} | {row['ours_100']:.2f} | "
              f"{row['gain_100']:+.2f} | {row['fgd_130']:.2f} | {row['ours_130']:.2f} | "
              f"{lc100['FGD']:g} / {lc100['Ours']:g} | {lc['FGD']:g} / {lc['Ours']:g} |", flush=True)
    gains = [r["gain_100"] for r in rows]
    worst = min(rows, key=lambda r: r["gain_100"])
    print(f"mean gain {mean(gains):+.2f} over {len(rows)} lists; worst {worst['list']} "
          f"{worst['gain_100']:+.2f}; behind FGD on {sum(g < 0 for g in gains)}; more failed "
          f"latency-critical pods than FGD on {_more_lc(rows, '_100')} to 100% arrived, "
          f"{_more_lc(rows, '')} to 130%")
    doc = {"benchmark": "trace_table", "nodes_csv": a.nodes.name, "seeds": seeds,
           "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
           "seconds": round(time.perf_counter() - start, 1),
           "machine": machine(),
           "mean_gain_100": round(mean(gains), 3), "rows": rows}
    a.results.parent.mkdir(parents=True, exist_ok=True)
    a.results.write_text(json.dumps(doc, indent=2) + "\n")
    return 0


def _more_lc(rows: list[dict], at: str) -> int:
    """On how many lists Ours failed more latency-critical pods than FGD (`at`: '_100' or '')."""
    return sum(r[f"failed_lc_ours{at}"] > r[f"failed_lc_fgd{at}"] for r in rows)


if __name__ == "__main__":
    raise SystemExit(main())
