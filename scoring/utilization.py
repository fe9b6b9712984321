"""Live utilization: prefer nodes and GPUs with headroom, from DCGM figures.

For each GPU with a sample no older than `ttl_seconds` at `now`:

    load(g) = max(util(g), fb_used(g) / (fb_used(g) + fb_free(g)))

With P the planned GPUs (for MIG, their parent GPUs; for a share, its GPU) and N all GPUs of the node, both restricted
to GPUs with fresh samples:

    score = 1 - (load(P) + load(N)) / 2     when P and N have data (means over the sets)
    score = 1 - load(N)                     when only N has data
    score = 0.5                             when nothing fresh is known: neutral, never an error

A node without GPU inventory (no agent) cannot match samples to GPUs by UUID; it reads its
node-level sample (`node_sample_key`: the mean load of the GPUs its dcgm-exporter reports,
matched to the node by discovery or the exporter's Hostname label): score = 1 - that load.

The node term keeps latency-critical pods away from busy neighbours even when their own GPUs are
idle; the plan term away from GPUs that are busy although no pod is known to hold them.
"""

from __future__ import annotations

from collections.abc import Mapping
from dataclasses import dataclass

from scoring.model import NEUTRAL, GpuNode, GpuSample, Plan, SignalResult, node_sample_key


@dataclass(frozen=True, slots=True)
class UtilizationArgs:
    ttl_seconds: float = 90.0


def load(sample: GpuSample) -> float:
    fb_total = sample.fb_used_mib + sample.fb_free_mib
    fb = sample.fb_used_mib / fb_total if fb_total > 0 else 0.0
    return min(1.0, max(sample.util, fb, 0.0))


def evaluate(
    node: GpuNode,
    plan: Plan,
    samples: Mapping[str, GpuSample],
    now: float,
    args: UtilizationArgs,
) -> SignalResult:
    if not node.gpus:
        return _node_level(samples.get(node_sample_key(node.name)), now, args)
    fresh: dict[int, float] = {}
    stale_age = 0.0
    for gpu in node.gpus:
        sample = samples.get(gpu.uuid)
        if sample is None:
            continue
        age = now - sample.at
        if age > args.ttl_seconds:
            stale_age = max(stale_age, age)
            continue
        fresh[gpu.index] = load(sample)
    if not fresh:
        if stale_age:
            return SignalResult(
                True, NEUTRAL, f"DCGM data {stale_age:.0f}s old (ttl {args.ttl_seconds:.0f}s): neutral"
            )
        return SignalResult(True, NEUTRAL, "no DCGM data: neutral")
    node_load = sum(fresh.values()) / len(fresh)
    planned = plan.physical_gpus & fresh.keys()
    if planned:
        plan_load = sum(fresh[g] for g in planned) / len(planned)
        score = 1.0 - (plan_load + node_load) / 2
        reason = f"planned GPUs {plan_load:.0%} busy, node {node_load:.0%}"
    else:
        score = 1.0 - node_load
        reason = f"node GPUs {node_load:.0%} busy"
    return SignalResult(True, score, reason)


def _node_level(sample: GpuSample | None, now: float, args: UtilizationArgs) -> SignalResult:
    """A node without GPU inventory, from its node-level sample."""
    if sample is None:
        return SignalResult(True, NEUTRAL, "no GPU inventory, and no DCGM data matched to the node: neutral")
    age = now - sample.at
    if age > args.ttl_seconds:
        return SignalResult(True, NEUTRAL, f"DCGM data {age:.0f}s old (ttl {args.ttl_seconds:.0f}s): neutral")
    busy = load(sample)
    return SignalResult(True, 1.0 - busy, f"node GPUs {busy:.0%} busy (DCGM by node: no GPU inventory)")
