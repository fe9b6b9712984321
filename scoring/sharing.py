"""GPU sharing: which GPU of the node gets a pod's share of one GPU, and how tightly it packs.

A share pod asks for m thousandths of one GPU (1 <= m <= 999) through the extended resource
`sharing.resource`, which the node advertises at 1000 per shareable GPU, as a sharing device plugin
does. The shareable GPUs are the node's whole GPUs: in the agent's inventory those that are not
MIG-enabled; without the inventory 0..n-1, n = allocatable(resource) / 1000. A GPU that a plan holds
whole is not shareable. With shared(g) the thousandths that planned shares hold on g and U those of
share pods without a plan (their GPU is unknown, so they are counted on every GPU):

    free(g)   = 1000 - shared(g) - U
    feasible  iff  free(g) >= m for some shareable g  and  allocatable - sum_g shared(g) - U >= m

A GPU no share holds may be one of the k whole GPUs that pods without a plan hold: such fresh GPUs
are used only when more than k of them are left (the plan is then tentative). Among the GPUs with
free(g) >= m a `GpuChoice` rule picks one; the default, `best_fit`, takes the least free(g), lowest
index on ties, so shares fill GPUs already shared and leave whole GPUs to whole-GPU pods. The
signal's score is the chosen GPU's use once the pod is on it:

    score = 1 - (free(g) - m) / 1000        (1: the share fills g; m / 1000 on an unshared GPU)

Whole-GPU pods see the other side (`taken_by_shares`): a GPU that any planned share holds is not
free, and U thousandths without a plan take ceil(U / 1000) GPUs, the fewest they can be on.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from dataclasses import dataclass

from scoring.model import (
    ANNOTATION_PREFIX,
    GPU_RESOURCE,
    MILLI_PER_GPU,
    GpuNode,
    GpuShare,
    Plan,
    PodRequest,
    SignalResult,
)

DEFAULT_RESOURCE = f"{ANNOTATION_PREFIX}/gpu-milli"

GpuChoice = Callable[[Mapping[int, int], int], int]
"""A rule choosing the GPU for a share: (free thousandths per shareable GPU, fitting or not;
thousandths wanted) -> the index of a GPU whose free thousandths are at least those wanted."""


@dataclass(frozen=True, slots=True)
class SharingArgs:
    resource: str = DEFAULT_RESOURCE


def best_fit(free: Mapping[int, int], milli: int) -> int:
    """The fitting GPU with the least free thousandths, the lowest index on ties."""
    return min((g for g, left in free.items() if left >= milli), key=lambda g: (free[g], g))


def shareable_gpus(node: GpuNode, args: SharingArgs) -> tuple[int, ...]:
    """Indices of the node's whole GPUs (held or not)."""
    if node.gpus:
        return tuple(gpu.index for gpu in node.gpus if not gpu.mig_enabled)
    return tuple(range(node.allocatable.get(args.resource, 0) // MILLI_PER_GPU))


def taken_by_shares(node: GpuNode, args: SharingArgs) -> tuple[frozenset[int], int]:
    """For whole-GPU pods: the GPUs that planned shares hold, and how many more GPUs the share
    thousandths of pods without a plan take (ceil(U / 1000))."""
    planned = frozenset(g for g, milli in node.usage.shared.items() if milli > 0)
    unplanned = node.usage.unplanned.get(args.resource, 0)
    return planned, -(-unplanned // MILLI_PER_GPU)


def free_milli(node: GpuNode, args: SharingArgs) -> dict[int, int]:
    """free(g) of each shareable GPU that no plan holds whole; fresh GPUs are left out when pods
    without a plan may hold all of them whole."""
    usage = node.usage
    unplanned = usage.unplanned.get(args.resource, 0)
    free = {
        g: MILLI_PER_GPU - usage.shared.get(g, 0) - unplanned
        for g in shareable_gpus(node, args) if g not in usage.gpus
    }
    fresh = [g for g in free if not usage.shared.get(g)]
    if len(fresh) <= usage.unplanned.get(GPU_RESOURCE, 0):
        for g in fresh:
            del free[g]
    return free


def evaluate(node: GpuNode, request: PodRequest, args: SharingArgs, choose: GpuChoice = best_fit) -> SignalResult:
    milli = request.gpu_milli
    if not milli:
        return SignalResult.not_applicable("no GPU share request")
    allocatable = node.allocatable.get(args.resource, 0)
    if allocatable == 0:
        return SignalResult.reject(
            f"node offers no GPU shares ({args.resource})", "no GPU shares on node", unresolvable=True
        )
    if not shareable_gpus(node, args):
        return SignalResult.reject(
            "node has no whole GPU to share (all MIG-enabled)", "no shareable GPU on node", unresolvable=True
        )
    usage = node.usage
    unplanned = usage.unplanned.get(args.resource, 0)
    left = allocatable - sum(usage.shared.values()) - unplanned
    free = free_milli(node, args)
    most = max(free.values(), default=0)
    if most < milli or left < milli:
        return SignalResult.reject(
            f"needs {milli}/{MILLI_PER_GPU} of a GPU, at most {max(min(most, left), 0)} free on one GPU",
            "no GPU with enough free share",
            unresolvable=allocatable < milli,
        )
    chosen = choose(free, milli)
    score = 1.0 - (free[chosen] - milli) / MILLI_PER_GPU
    reason = f"{milli}/{MILLI_PER_GPU} of GPU {chosen} ({free[chosen]} free there)"
    if unplanned:
        reason += f"; {unplanned}/{MILLI_PER_GPU} held by share pods without a plan, counted on every GPU"
    if usage.unplanned.get(GPU_RESOURCE, 0) and not usage.shared.get(chosen):
        reason += "; whole GPUs held by pods without a plan, so the plan is tentative"
    return SignalResult(True, score, reason, Plan(share=GpuShare(chosen, milli)))
