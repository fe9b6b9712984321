"""Names and encodings of the annotations and labels gpu-extender reads and writes.

All share one prefix, `scoring.model.ANNOTATION_PREFIX`. The README's "Data contracts" section
documents each one; this module is the only place that spells them.
"""

from __future__ import annotations

from typing import Any

from scoring.model import ANNOTATION_PREFIX, MILLI_PER_GPU, SIGNALS, GpuNode, GpuShare, MigSlot, Plan, ScoreBreakdown

PREFIX = f"{ANNOTATION_PREFIX}/"
# Pod, set by the user
CLASS = f"{ANNOTATION_PREFIX}/class"  # latency-critical | batch
MODEL = f"{ANNOTATION_PREFIX}/model"  # model id, matched against node model caches
MODEL_SIZE = f"{ANNOTATION_PREFIX}/model-size"  # bytes, a Kubernetes quantity (e.g. 16Gi)
MODEL_LOCALITY = f"{ANNOTATION_PREFIX}/model-locality"  # preferred (default) | required
# Pod, written when the pod is bound
PLAN = f"{ANNOTATION_PREFIX}/plan"
SCORE = f"{ANNOTATION_PREFIX}/score"  # the score breakdown behind the plan
# Node, written by the node agent
TOPOLOGY = f"{ANNOTATION_PREFIX}/gpu-topology"
MIG_LAYOUT = f"{ANNOTATION_PREFIX}/mig-layout"
MODEL_CACHE = f"{ANNOTATION_PREFIX}/model-cache"
HEARTBEAT = f"{ANNOTATION_PREFIX}/heartbeat"
ALLOCATIONS = f"{ANNOTATION_PREFIX}/allocations"  # the devices the kubelet really allocated, per pod
# Node label, set by the cluster's admin: the node agent serves its device plugin here
DEVICE_PLUGIN_LABEL = f"{ANNOTATION_PREFIX}/device-plugin"  # "true"


def plan_to_dict(plan: Plan, node: GpuNode) -> dict[str, Any]:
    """A plan as JSON-ready data, with GPU UUIDs where the node's inventory is known."""
    uuids = {gpu.index: gpu.uuid for gpu in node.gpus}
    data: dict[str, Any] = {"node": node.name, "gpus": list(plan.gpus)}
    if uuids and plan.gpus:
        data["uuids"] = [uuids.get(i, "") for i in plan.gpus]
    data["mig"] = [
        {"gpu": slot.gpu, "profile": slot.profile, "start": slot.start}
        | ({"gpuUuid": uuids[slot.gpu]} if slot.gpu in uuids else {})
        for slot in plan.mig
    ]
    if plan.share is not None:
        share = plan.share
        data["share"] = {"gpu": share.gpu, "milli": share.milli} | (
            {"gpuUuid": uuids[share.gpu]} if share.gpu in uuids else {}
        )
    return data


def score_to_dict(breakdown: ScoreBreakdown) -> dict[str, Any]:
    """The score annotation: the breakdown behind a plan."""
    return {
        "node": breakdown.node,
        "total": breakdown.total,
        "signals": {name: round(r.score, 4) for name in SIGNALS if (r := breakdown.signals.get(name))},
        "reason": breakdown.reason,
    }


def plan_from_dict(data: Any) -> tuple[str, Plan]:
    """(node name, plan) from a plan annotation's data; raises ValueError when malformed."""
    if not isinstance(data, dict) or not isinstance(data.get("node"), str):
        raise ValueError("plan must be an object with a string 'node'")
    gpus = data.get("gpus", [])
    mig = data.get("mig", [])
    if not isinstance(gpus, list) or not all(isinstance(g, int) for g in gpus):
        raise ValueError("plan 'gpus' must be a list of GPU indices")
    if not isinstance(mig, list):
        raise ValueError("plan 'mig' must be a list")
    slots = []
    for item in mig:
        try:
            slots.append(MigSlot(int(item["gpu"]), str(item["profile"]), int(item["start"])))
        except (KeyError, TypeError, ValueError) as exc:
            raise ValueError(f"plan 'mig' entry {item!r} lacks gpu/profile/start") from exc
    return data["node"], Plan(tuple(gpus), tuple(slots), _share(data.get("share")))


def _share(data: Any) -> GpuShare | None:
    if data is None:
        return None
    gpu, milli = (data.get("gpu"), data.get("milli")) if isinstance(data, dict) else (None, None)
    if type(gpu) is not int or type(milli) is not int or not 0 < milli < MILLI_PER_GPU:
        raise ValueError(f"plan 'share' {data!r} must be {{'gpu': index, 'milli': 1..{MILLI_PER_GPU - 1}}}")
    return GpuShare(gpu, milli)
