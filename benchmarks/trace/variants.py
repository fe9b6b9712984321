"""Variant pod lists built from one openb list, for the four families of the public variants.

Each variant changes one thing about the base list (seeded, so a name and seed give the same
list every time). Percentages are of the list's GPU request (milli) unless said otherwise:

    share<X>     GPU-sharing pods make X% of the GPU request. Below X: one-GPU whole pods, drawn
                 at random, become share pods with a gpu_milli drawn from the list's share pods.
                 Above X: share pods become one-GPU whole pods.
    multigpu<X>  Multi-GPU pods make X% of the GPU request: copies of the list's multi-GPU pods,
                 drawn at random, are appended (as the public multigpu lists add pods).
    spec<X>      X% of the GPU pods (by count) name their GPU model (gpu_spec). A pod's model
                 is drawn weighted by the GPUs of each model whose nodes can hold the pod (GPU
                 count and CPU); when the drawn model has a sibling of the same family in the
                 cluster (V100M16 and V100M32), half of such pods accept both ("V100M16|V100M32"),
                 as a pod with a node-affinity `In` list does.
    specu<X>     as spec<X>, but the model drawn uniformly among those whose nodes can hold the
                 pod: scarce models are asked for far beyond their share of the GPUs (a stress
                 case; the weighting the trace's own gpu_spec follows is not public).
    cpu<X>       CPU-only pods are X% of their number in the base list: removed at random
                 (X < 100) or copies appended (X > 100).

Run `python -m benchmarks.trace.variants --nodes N.csv --pods BASE.csv --out DIR share20 spec33`
to write DIR/<base>_<variant>.csv. The trace and lists built from it stay outside the repository.
"""

from __future__ import annotations

import argparse
import random
import re
from collections.abc import Sequence
from dataclasses import replace
from pathlib import Path

from .openb import MILLI, Node, Pod, read_nodes, read_pods

FAMILIES = ("share", "multigpu", "spec", "specu", "cpu")
SIBLING_SHARE = 0.5
"""Of the pods whose model has a sibling in the cluster, the share that accepts both."""


def _is_share(p: Pod) -> bool:
    return p.num_gpu == 1 and 0 < p.gpu_milli < MILLI


def _share_of(pods: Sequence[Pod], which) -> float:
    total = sum(p.total_gpu_milli for p in pods)
    return sum(p.total_gpu_milli for p in pods if which(p)) / total


def parse(variant: str) -> tuple[str, int]:
    """('share', 60) from 'share60'; ValueError for anything else."""
    m = re.fullmatch(r"([a-z]+)(\d+)", variant)
    if not m or m.group(1) not in FAMILIES:
        raise ValueError(f"variant {variant!r} is not one of {', '.join(f + '<pct>' for f in FAMILIES)}")
    return m.group(1), int(m.group(2))


def build(nodes: Sequence[Node], pods: Sequence[Pod], variant: str, seed: int = 0) -> list[Pod]:
    family, pct = parse(variant)
    rng = random.Random(f"{variant}-{seed}")
    if family.startswith("spec"):
        return _spec(list(nodes), list(pods), pct / 100, rng, uniform=family == "specu")
    return {"share": _share, "multigpu": _multigpu, "cpu": _cpu}[family](list(nodes), list(pods), pct / 100, rng)


def _share(nodes: list[Node], pods: list[Pod], target: float, rng: random.Random) -> list[Pod]:
    out = list(pods)
    sizes = [p.gpu_milli for p in pods if _is_share(p)]
    raise_ = _share_of(out, _is_share) < target
    order = [i for i, p in enumerate(out) if (p.num_gpu == 1 and p.gpu_milli == MILLI) == raise_
             and (raise_ or _is_share(p))]
    rng.shuffle(order)
    for i in order:
        if (_share_of(out, _is_share) >= target) == raise_:
            break
        out[i] = replace(out[i], gpu_milli=rng.choice(sizes) if raise_ else MILLI)
    return out


def _multigpu(nodes: list[Node], pods: list[Pod], target: float, rng: random.Random) -> list[Pod]:
    out = list(pods)
    multi = sorted((p for p in pods if p.num_gpu > 1), key=lambda p: p.name)
    n = 0
    while _share_of(out, lambda p: p.num_gpu > 1) < target:
        drawn = rng.choice(multi)
        out.append(replace(drawn, name=f"{drawn.name}-multi-{n}"))
        n += 1
    return out


def _family(model: str) -> str:
    """V100M16 and V100M32 are one family (the memory size is the suffix)."""
    return re.sub(r"M\d+$", "", model)


def _spec(nodes: list[Node], pods: list[Pod], target: float, rng: random.Random, uniform: bool) -> list[Pod]:
    out = list(pods)
    gpu_pods = [i for i, p in enumerate(out) if p.num_gpu]
    models = sorted({n.model for n in nodes if n.gpus})
    for i in rng.sample(gpu_pods, round(target * len(gpu_pods))):
        p = out[i]
        weights = [sum(n.gpus for n in nodes if n.model == m and n.gpus >= p.num_gpu
                       and n.cpu_milli >= p.cpu_milli and n.memory_mib >= p.memory_mib)
                   for m in models]
        if not any(weights):
            continue
        if uniform:
            weights = [1 if w else 0 for w in weights]
        model = rng.choices(models, weights)[0]
        siblings = {m for m in models if _family(m) == _family(model)}
        spec = siblings if len(siblings) > 1 and rng.random() < SIBLING_SHARE else {model}
        out[i] = replace(p, gpu_spec=frozenset(spec))
    return out


def _cpu(nodes: list[Node], pods: list[Pod], target: float, rng: random.Random) -> list[Pod]:
    cpu = [i for i, p in enumerate(pods) if not p.num_gpu]
    want = round(target * len(cpu))
    if want <= len(cpu):
        dropped = set(rng.sample(cpu, len(cpu) - want))
        return [p for i, p in enumerate(pods) if i not in dropped]
    out = list(pods)
    for n in range(want - len(cpu)):
        drawn = pods[rng.choice(cpu)]
        out.append(replace(drawn, name=f"{drawn.name}-cpu-{n}"))
    return out


def write(path: Path, pods: Sequence[Pod]) -> None:
    lines = ["name,cpu_milli,memory_mib,num_gpu,gpu_milli,gpu_spec,qos,creation_time"]
    lines += [f"{p.name},{p.cpu_milli},{p.memory_mib},{p.num_gpu},{p.gpu_milli},"
              f"{'|'.join(sorted(p.gpu_spec))},{p.qos},{p.creation_time}" for p in pods]
    path.write_text("\n".join(lines) + "\n")


def main(argv: list[str] | None = None) -> int:
    ap = argparse.ArgumentParser(prog="python -m benchmarks.trace.variants", description=__doc__,
                                 formatter_class=argparse.RawDescriptionHelpFormatter)
    ap.add_argument("--nodes", required=True, type=Path, help="node CSV (openb columns)")
    ap.add_argument("--pods", required=True, type=Path, help="base pod CSV (openb columns)")
    ap.add_argument("--out", required=True, type=Path, help="folder for the variant CSVs")
    ap.add_argument("--seed", type=int, default=0, help="recipe seed (default 0)")
    ap.add_argument("variants", nargs="+", help="e.g. share60 multigpu40 spec33 cpu200")
    a = ap.parse_args(argv)
    for v in a.variants:
        parse(v)
    nodes, pods = read_nodes(a.nodes), read_pods(a.pods)
    a.out.mkdir(parents=True, exist_ok=True)
    for v in a.variants:
        built = build(nodes, pods, v, a.seed)
        path = a.out / f"{a.pods.stem}_{v}.csv"
        write(path, built)
        spec = sum(1 for p in built if p.gpu_spec) / max(1, sum(1 for p in built if p.num_gpu))
        print(f"{path}: {len(built)} pods; share {_share_of(built, _is_share):.1%}, "
              f"multi-GPU {_share_of(built, lambda p: p.num_gpu > 1):.1%} of GPU request; "
              f"{spec:.1%} of GPU pods name a model; "
              f"{sum(1 for p in built if not p.num_gpu)} CPU-only pods")
    return 0


if __name__ == "__main__":
    raise SystemExit(main())
