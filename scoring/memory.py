"""Memory fit: a pod whose model cannot fit in the memory of the devices planned for it is
infeasible on that plan.

    needed  = the model's size: `gpu-extender.io/model-size`, else the largest cached copy
    offered = sum over the plan's devices of their memory:
                whole GPU        its memory (agent inventory, else GFD's `nvidia.com/gpu.memory`)
                MIG instance     the memory its profile names (1g.5gb: 5 GB)
                share of a GPU   milli / 1000 of that GPU's memory
    feasible  iff  needed <= offered

Only the weights are counted: a model that fits may still need more for its KV cache, but one
that does not fit cannot run. With no model size, or a device whose memory is unknown, the
signal has nothing to say. A rejection is unresolvable: evicting pods frees no device memory.
"""

from __future__ import annotations

import re

from scoring import mig, topology
from scoring.model import MILLI_PER_GPU, GpuNode, Plan, PodRequest, SignalResult

GFD_MEMORY = "nvidia.com/gpu.memory"  # MiB per GPU, as GPU Feature Discovery labels a node
MIB = 1 << 20
GB = 10**9  # MIG profile names count memory in GB; rounding down is the safe side here
_PROFILE_MEMORY = re.compile(r"\d+g\.(\d+)gb")


def evaluate(node: GpuNode, request: PodRequest, plan: Plan, model_size: int) -> SignalResult:
    if not model_size:
        return SignalResult.not_applicable("model size unknown")
    offered = planned_memory(node, request, plan)
    if offered is None:
        return SignalResult.not_applicable("memory of the planned devices unknown")
    if model_size > offered:
        reason = (f"model of {model_size / GB:.1f} GB does not fit the {offered / GB:.1f} GB "
                  f"of the planned devices")
        return SignalResult.reject(reason, "model does not fit the GPU memory", unresolvable=True)
    return SignalResult.not_applicable(f"model of {model_size / GB:.1f} GB fits {offered / GB:.1f} GB")


def planned_memory(node: GpuNode, request: PodRequest, plan: Plan) -> int | None:
    """Bytes of memory on the plan's devices, or None where one is unknown."""
    total = 0
    whole = topology.whole_gpus(node, request)
    indices: list[int | None] = list(plan.gpus[:whole])
    indices += [None] * (whole - len(indices))  # no inventory: the node's label says
    if request.gpu_milli:
        indices.append(plan.share.gpu if plan.share else None)
    for i, index in enumerate(indices):
        memory = gpu_memory(node, index)
        if memory is None:
            return None
        total += memory * request.gpu_milli // MILLI_PER_GPU if i == whole else memory
    for profile, count in mig.wanted(node, request).items():
        match = _PROFILE_MEMORY.fullmatch(profile)
        if match is None:
            return None
        total += count * int(match.group(1)) * GB
    return total


def gpu_memory(node: GpuNode, index: int | None) -> int | None:
    """Bytes of one GPU: GPU `index` from the inventory, else the node's GFD label."""
    gpu = node.gpu(index) if index is not None else None
    if gpu is not None and gpu.memory_mib:
        return gpu.memory_mib * MIB
    label = node.labels.get(GFD_MEMORY, "")
    return int(label) * MIB if label.isdigit() and int(label) > 0 else None
