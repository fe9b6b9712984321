"""Kubernetes objects (as plain dicts, the way the API serves them) -> the scoring model.

The only place that knows where things live in a Node or Pod. Snapshot files and, later, the
live watch feed it the same dicts.
"""

from __future__ import annotations

import json
from collections import Counter
from collections.abc import Iterable, Mapping
from dataclasses import replace
from datetime import datetime, timezone
from typing import Any

from kubernetes.utils.quantity import parse_quantity

from extender import annotations as ann
from extender import group_identity
from scoring import policy
from scoring.config import PolicyConfig
from scoring.fragmentation import Shape
from scoring.groups import DEFAULT_IDENTITIES
from scoring.model import (
    GPU_RESOURCE,
    GroupRef,
    MILLI_PER_GPU,
    Gpu,
    GpuNode,
    MigInstance,
    MigSlot,
    MigStrategy,
    Plan,
    PodRequest,
    Usage,
    WorkloadClass,
    mig_profile,
    mig_resource,
)

GFD_PRODUCT = "nvidia.com/gpu.product"
GFD_COUNT = "nvidia.com/gpu.count"
GFD_MIG_STRATEGY = "nvidia.com/mig.strategy"
FINISHED_PHASES = ("Succeeded", "Failed")
Matrix = tuple[tuple[int, ...], ...]
DEFAULT_GROUP_KEYS = group_identity.keys_read(DEFAULT_IDENTITIES)
_MATRICES: dict[Matrix, Matrix] = {}  # one shared copy per distinct matrix: nodes of a shape repeat it


class BadObject(ValueError):
    """A Kubernetes object that cannot be used; the message says which and why."""


def name_of(obj: Mapping[str, Any]) -> str:
    meta = obj.get("metadata") or {}
    namespace = meta.get("namespace")
    return f"{namespace}/{meta.get('name')}" if namespace else str(meta.get("name"))


def is_gpu_resource(resource: str, share_resource: str) -> bool:
    """`nvidia.com/gpu`, a MIG resource `nvidia.com/mig-*` or the GPU-share resource."""
    return resource == GPU_RESOURCE or resource == share_resource or mig_profile(resource) is not None


def gpu_resources(pod: Mapping[str, Any], share_resource: str) -> dict[str, int]:
    """The pod's effective GPU requests (`nvidia.com/gpu`, `nvidia.com/mig-*`, the GPU-share
    resource `share_resource` in thousandths of a GPU), by resource.

    As the scheduler counts them: max(sum over containers, max over init containers), requests
    defaulting to limits (the API server does that for extended resources).
    """
    spec = pod.get("spec") or {}
    total: Counter[str] = Counter()
    for container in spec.get("containers") or []:
        total.update(container_gpus(container, pod, share_resource))
    for container in spec.get("initContainers") or []:
        for resource, n in container_gpus(container, pod, share_resource).items():
            total[resource] = max(total[resource], n)
    return {r: n for r, n in total.items() if n > 0}


def asks_for_gpus(pod: Mapping[str, Any], share_resource: str) -> bool:
    """Whether the pod requests GPUs or a GPU share, or says so in a way that cannot be read (kept,
    so that the node's notes can say why it is not counted)."""
    try:
        return bool(gpu_resources(pod, share_resource))
    except BadObject:
        return True


def container_gpus(container: Mapping[str, Any], pod: Mapping[str, Any], share_resource: str) -> dict[str, int]:
    """One container's GPU requests by resource (requests, else limits); BadObject when unreadable."""
    resources = container.get("resources") or {}
    merged = {**(resources.get("limits") or {}), **(resources.get("requests") or {})}
    out = {}
    for resource, quantity in merged.items():
        if is_gpu_resource(resource, share_resource):
            try:
                value = parse_quantity(quantity)
            except ValueError as exc:
                raise BadObject(f"pod {name_of(pod)}: {resource}={quantity!r} is not a quantity") from exc
            if value != int(value) or value < 0:
                raise BadObject(f"pod {name_of(pod)}: {resource}={quantity!r} must be a whole number")
            out[resource] = int(value)
    return out


def pod_request(pod: Mapping[str, Any], config: PolicyConfig) -> PodRequest:
    """The GPU request of a pod; raises BadObject when it asks for no GPU or is malformed."""
    try:
        return _pod_request(pod, config)
    except (AttributeError, TypeError, KeyError, ValueError) as exc:
        if isinstance(exc, BadObject):
            raise
        raise BadObject(f"pod {_safe_name(pod)} is malformed ({type(exc).__name__}: {exc})") from None


def _safe_name(pod: Any) -> str:
    try:
        return name_of(pod)
    except (AttributeError, TypeError):
        return "<unnamed>"


def _pod_request(pod: Mapping[str, Any], config: PolicyConfig) -> PodRequest:
    if not isinstance(pod, Mapping) or pod.get("kind", "Pod") != "Pod":
        kind = pod.get("kind") if isinstance(pod, Mapping) else type(pod).__name__
        raise BadObject(f"expected a Pod, got {kind}")
    meta = pod.get("metadata") or {}
    if not meta.get("name"):
        raise BadObject("pod has no metadata.name")
    share = config.sharing.resource
    resources = gpu_resources(pod, share)
    if not resources:
        raise BadObject(f"pod {name_of(pod)} requests no nvidia.com/gpu, nvidia.com/mig-* or {share} resource")
    milli = resources.get(share, 0)
    if milli >= MILLI_PER_GPU:
        raise BadObject(
            f"pod {name_of(pod)}: {share}={milli} is not a share of one GPU (1..{MILLI_PER_GPU - 1}); "
            f"ask for {GPU_RESOURCE} for whole GPUs"
        )
    if milli and len(resources) > 1:
        raise BadObject(f"pod {name_of(pod)}: a pod with {share} asks for no other GPU resource")
    notes = meta.get("annotations") or {}
    spec = pod.get("spec") or {}
    workload_class = workload_class_of(pod, config)
    locality_mode = notes.get(ann.MODEL_LOCALITY, "preferred")
    if locality_mode not in ("preferred", "required"):
        raise BadObject(f"pod {name_of(pod)}: {ann.MODEL_LOCALITY} must be preferred or required")
    return PodRequest(
        namespace=meta.get("namespace") or "default",
        name=meta["name"],
        uid=meta.get("uid", ""),
        workload_class=workload_class,
        gpus=resources.get(GPU_RESOURCE, 0),
        mig={profile: n for r, n in resources.items() if (profile := mig_profile(r)) is not None},
        gpu_milli=milli,
        model=notes.get(ann.MODEL) or None,
        model_size=_model_size(pod, notes.get(ann.MODEL_SIZE)),
        model_required=locality_mode == "required",
        priority=int(spec.get("priority") or 0),
        group=_group(pod, config),
    )


def _group(pod: Mapping[str, Any], config: PolicyConfig) -> GroupRef | None:
    try:
        return group_identity.group_of(pod, config.groups.identities)
    except ValueError as exc:
        raise BadObject(f"pod {name_of(pod)}: {exc}") from None


def workload_class_of(pod: Mapping[str, Any], config: PolicyConfig) -> WorkloadClass:
    notes = (pod.get("metadata") or {}).get("annotations") or {}
    spec = pod.get("spec") or {}
    try:
        return policy.classify(notes.get(ann.CLASS), spec.get("priority"), spec.get("priorityClassName"), config)
    except ValueError as exc:
        raise BadObject(f"pod {name_of(pod)}: {ann.CLASS}: {exc}") from None


def _model_size(pod: Mapping[str, Any], value: str | None) -> int | None:
    if not value:
        return None
    try:
        size = int(parse_quantity(value))
    except ValueError:
        raise BadObject(f"pod {name_of(pod)}: {ann.MODEL_SIZE}={value!r} is not a quantity") from None
    return size if size > 0 else None


def slim_pod(pod: Mapping[str, Any], group_keys: frozenset[str] = DEFAULT_GROUP_KEYS) -> dict[str, Any]:
    """The parts of a Pod that gpu-extender reads, to keep tens of thousands of them in memory
    (of its labels, those among `group_keys`: the keys that name its group)."""
    meta = pod.get("metadata") or {}
    spec = pod.get("spec") or {}
    notes = meta.get("annotations") or {}
    ours = {k: v for k, v in notes.items() if k.startswith(ann.PREFIX) or k in group_keys} \
        if isinstance(notes, dict) else {}
    labels = meta.get("labels")
    kept = {k: v for k, v in labels.items() if k in group_keys} if isinstance(labels, dict) else {}
    slim_spec = {k: spec[k] for k in ("nodeName", "priority", "priorityClassName", "schedulerName",
                                      group_identity.SCHEDULING_GROUP, group_identity.WORKLOAD_REF) if k in spec}
    selector = spec.get("nodeSelector")
    if isinstance(selector, dict) and GFD_PRODUCT in selector:
        slim_spec["nodeSelector"] = {GFD_PRODUCT: selector[GFD_PRODUCT]}
    allowed = _affinity_products(spec.get("affinity"))
    if allowed is not None:  # kept as one term naming the products: all that gpu_models reads
        slim_spec["affinity"] = {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {
            "nodeSelectorTerms": [{"matchExpressions": [
                {"key": GFD_PRODUCT, "operator": "In", "values": sorted(allowed)}]}]}}}
    for key in ("containers", "initContainers"):
        if spec.get(key):
            slim_spec[key] = [
                {"name": c.get("name"), "resources": c.get("resources") or {}} for c in spec[key] if isinstance(c, dict)
            ]
    return {
        "kind": "Pod",
        "metadata": {k: meta[k] for k in ("name", "namespace", "uid") if k in meta} | {"annotations": ours}
        | ({"labels": kept} if kept else {}),
        "spec": slim_spec,
        "status": {"phase": (pod.get("status") or {}).get("phase")},
    }


def shape(pod: Mapping[str, Any], share_resource: str) -> Shape | None:
    """The pod's shape in the fragmentation signal's target workload: its whole `nvidia.com/gpu`
    (1000 milli each) or one GPU's share in `share_resource`; the GPU models it may run on
    (`gpu_models`). CPU is left at 0: the extender knows no node's free CPU, so it would only
    split the counts. None for a pod that counts in no shape: finished, unreadable, asking for
    MIG instances only, a share that is no share (1000 or more, or beside other GPU
    resources), or selecting MIG products only (single strategy: its `nvidia.com/gpu` are MIG
    instances)."""
    if (pod.get("status") or {}).get("phase") in FINISHED_PHASES:
        return None
    try:
        resources = gpu_resources(pod, share_resource)
    except BadObject:
        return None
    gpus, milli = resources.get(GPU_RESOURCE, 0), resources.get(share_resource, 0)
    if milli and (milli >= MILLI_PER_GPU or len(resources) > 1):
        return None
    if not gpus and not milli:
        return None
    models = gpu_models(pod)
    if models is None:
        return None
    return Shape(1, milli, 0, models) if milli else Shape(gpus, MILLI_PER_GPU, 0, models)


def gpu_models(pod: Mapping[str, Any]) -> frozenset[str] | None:
    """The GPU products (`nvidia.com/gpu.product`) the pod may run on, from its nodeSelector and
    its required node affinity (terms are ORed: products are named only if every term names
    them with `In`); empty: any. None when it selects MIG products only (single strategy)."""
    spec = pod.get("spec") or {}
    selector = spec.get("nodeSelector")
    named = str(selector.get(GFD_PRODUCT) or "") if isinstance(selector, Mapping) else ""
    chosen = {named} if named else None
    allowed = _affinity_products(spec.get("affinity"))
    if allowed is not None:
        chosen = allowed if chosen is None else chosen & allowed
    if chosen is None:
        return frozenset()
    whole = frozenset(p for p in chosen if "-MIG-" not in p)
    return whole or None


def _affinity_products(affinity: Any) -> set[str] | None:
    """The products the required node affinity allows (None: any)."""
    try:
        terms = affinity["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    except (KeyError, TypeError):
        return None
    if not isinstance(terms, list) or not terms:
        return None
    allowed: set[str] = set()
    for term in terms:
        values = None
        for expr in (term or {}).get("matchExpressions") or () if isinstance(term, Mapping) else ():
            if isinstance(expr, Mapping) and expr.get("key") == GFD_PRODUCT and expr.get("operator") == "In":
                these = {str(v) for v in expr.get("values") or ()}
                values = these if values is None else values & these
        if values is None:
            return None  # this term lets the pod run on any product
        allowed |= values
    return allowed


def slim_node(node: Mapping[str, Any], share_resource: str) -> dict[str, Any]:
    """The parts of a Node that gpu-extender reads."""
    meta = node.get("metadata") or {}
    allocatable = (node.get("status") or {}).get("allocatable") or {}
    return {
        "kind": "Node",
        "metadata": {"name": meta.get("name"), "labels": meta.get("labels") or {},
                     "annotations": {k: v for k, v in (meta.get("annotations") or {}).items()
                                     if k.startswith(ann.PREFIX)}},
        "status": {"allocatable": {k: v for k, v in allocatable.items() if is_gpu_resource(k, share_resource)}},
    }


def holds_resources(pod: Mapping[str, Any]) -> bool:
    """Bound and not finished: the pod's devices are taken."""
    return bool((pod.get("spec") or {}).get("nodeName")) and (
        (pod.get("status") or {}).get("phase") not in FINISHED_PHASES
    )


def heartbeat(node: Mapping[str, Any]) -> float | None:
    """The agent's last heartbeat (seconds since the epoch), or None."""
    value = ((node.get("metadata") or {}).get("annotations") or {}).get(ann.HEARTBEAT)
    if not value:
        return None
    try:
        return datetime.fromisoformat(value.replace("Z", "+00:00")).timestamp()
    except ValueError:
        return None


def gpu_node(
    node: Mapping[str, Any], pods: Iterable[Mapping[str, Any]], as_of: float, config: PolicyConfig
) -> GpuNode:
    """A node and the pods bound to it, as the scorer sees them at time `as_of`."""
    return with_usage(node_base(node, as_of, config), pods, config.sharing.resource)


def node_base(node: Mapping[str, Any], as_of: float, config: PolicyConfig) -> GpuNode:
    """A node without its pods at time `as_of`: what it has, from its labels, allocatable and
    agent annotations. It depends on the time only through whether the agent data is older than
    agent.maxAgeSeconds, so it holds until the node changes or its heartbeat ages past that."""
    meta = node.get("metadata") or {}
    name = meta.get("name") or ""
    labels = meta.get("labels") or {}
    notes_in = meta.get("annotations") or {}
    allocatable = {}
    share = config.sharing.resource
    for resource, quantity in ((node.get("status") or {}).get("allocatable") or {}).items():
        if is_gpu_resource(resource, share):
            try:
                allocatable[resource] = int(parse_quantity(quantity))
            except ValueError:
                continue
    product = labels.get(GFD_PRODUCT, "")
    base_product, _, single_profile = product.partition("-MIG-")
    try:
        strategy = MigStrategy(labels.get(GFD_MIG_STRATEGY, "none"))
    except ValueError:
        strategy = MigStrategy.NONE
    notes: list[str] = []
    agent = _agent_data(notes_in, as_of, config, notes)
    gpus, nvlink, pcie, layout, cache = agent
    if strategy is MigStrategy.SINGLE and not single_profile and layout:
        single_profile = layout[0].profile
    try:
        gpu_count = int(labels.get(GFD_COUNT, "0"))
    except ValueError:
        gpu_count = 0
    return GpuNode(
        name=name,
        allocatable=allocatable,
        product=base_product,
        mig_strategy=strategy,
        single_mig_profile=single_profile or None,
        gpu_count=gpu_count,
        gpus=gpus,
        nvlink=nvlink,
        pcie=pcie,
        mig_layout=layout,
        model_cache=cache,
        labels=dict(labels),
        notes=tuple(notes),
    )


_Agent = tuple[
    tuple[Gpu, ...], Matrix | None, Matrix | None, tuple[MigInstance, ...] | None, dict[str, int]
]


def _agent_data(notes_in: Mapping[str, str], as_of: float, config: PolicyConfig, notes: list[str]) -> _Agent:
    """What the node agent published, if fresh; degradations are appended to `notes`."""
    beat = heartbeat({"metadata": {"annotations": notes_in}})
    empty: _Agent = ((), None, None, None, {})
    if beat is None:
        notes.append("no agent heartbeat: using allocatable only")
        return empty
    if as_of - beat > config.agent.max_age_seconds:
        at = datetime.fromtimestamp(beat, timezone.utc).isoformat(timespec="seconds")
        notes.append(f"agent data older than {config.agent.max_age_seconds:g}s (last heartbeat {at}): "
                     "using allocatable only")
        return empty
    gpus, nvlink, pcie = (), None, None
    layout = None
    cache: dict[str, int] = {}
    if ann.TOPOLOGY in notes_in:
        try:
            gpus, nvlink, pcie = _topology(json.loads(notes_in[ann.TOPOLOGY]))
        except (ValueError, TypeError, KeyError) as exc:
            notes.append(f"{ann.TOPOLOGY} unreadable ({exc}): ignored")
    if ann.MIG_LAYOUT in notes_in:
        try:
            layout = tuple(
                MigInstance(int(i["gpu"]), str(i["profile"]), int(i["start"]), int(i["size"]))
                for i in json.loads(notes_in[ann.MIG_LAYOUT])
            )
        except (ValueError, TypeError, KeyError) as exc:
            notes.append(f"{ann.MIG_LAYOUT} unreadable ({exc}): ignored")
    if ann.MODEL_CACHE in notes_in:
        try:
            raw = json.loads(notes_in[ann.MODEL_CACHE])
            cache = {str(model): int(size) for model, size in raw.items()}
        except (ValueError, TypeError, AttributeError) as exc:
            notes.append(f"{ann.MODEL_CACHE} unreadable ({exc}): ignored")
    return gpus, nvlink, pcie, layout, cache


def _topology(data: Mapping[str, Any]) -> tuple[tuple[Gpu, ...], Matrix, Matrix]:
    gpus = tuple(
        Gpu(
            index=int(g["index"]),
            uuid=str(g["uuid"]),
            model=str(g.get("model", "")),
            memory_mib=int(g.get("memoryMiB", 0)),
            mig_enabled=bool(g.get("migEnabled", False)),
        )
        for g in data["gpus"]
    )
    if sorted(g.index for g in gpus) != list(range(len(gpus))):
        raise ValueError("GPU indices must be 0..n-1")
    matrices = []
    for key in ("nvlink", "pcie"):
        matrix = tuple(tuple(int(v) for v in row) for row in data[key])
        if len(matrix) != len(gpus) or any(len(row) != len(gpus) for row in matrix):
            raise ValueError(f"{key} must be a {len(gpus)}x{len(gpus)} matrix")
        matrices.append(_MATRICES.setdefault(matrix, matrix))
    return gpus, matrices[0], matrices[1]


def allocations(node: Mapping[str, Any], as_of: float, config: PolicyConfig) -> dict[str, Plan]:
    """What the kubelet really allocated to each pod (namespace/name) on the node, as the agent read
    it back (`gpu-extender.io/allocations`, extender/node/podresources.py); empty when the agent's
    data is missing, older than agent.maxAgeSeconds or unreadable (the plans count then)."""
    meta = node.get("metadata") or {}
    value = (meta.get("annotations") or {}).get(ann.ALLOCATIONS)
    beat = heartbeat(node)
    if not value or beat is None or as_of - beat > config.agent.max_age_seconds:
        return {}
    try:
        data = json.loads(value)
    except ValueError:
        return {}
    found = {}
    for pod, entry in data.items() if isinstance(data, dict) else ():
        try:  # an entry that cannot be read leaves that pod to its plan, not the whole node
            found[str(pod)] = ann.plan_from_dict({**entry, "node": meta.get("name")})[1]
        except (ValueError, TypeError):
            continue
    return found


def with_usage(node: GpuNode, pods: Iterable[Mapping[str, Any]], share_resource: str,
               actual: Mapping[str, Plan] | None = None) -> GpuNode:
    """`node` (a `node_base`) with what `pods`, bound or assumed onto it, hold: the devices the
    kubelet really allocated to a pod where `actual` (namespace/name -> devices) has it, else its
    plan."""
    held_gpus: set[int] = set()
    held_mig: set[MigSlot] = set()
    shared: Counter[int] = Counter()
    unplanned: Counter[str] = Counter()
    notes = list(node.notes)
    single = node.mig_strategy is MigStrategy.SINGLE
    for pod in pods:
        if not holds_resources(pod):
            continue
        try:
            resources = gpu_resources(pod, share_resource)
        except BadObject as exc:
            notes.append(f"{exc}: not counted")
            continue
        if not resources:
            continue
        plan = actual.get(name_of(pod)) if actual else None
        if plan is None:
            plan = _plan_of(pod, node.name, notes)
        planned: Counter[str] = Counter()
        if plan is not None:
            held_gpus.update(plan.gpus)
            held_mig.update(plan.mig)
            planned[GPU_RESOURCE] += len(plan.gpus)
            for slot in plan.mig:
                is_single = single and slot.profile == node.single_mig_profile
                planned[GPU_RESOURCE if is_single else mig_resource(slot.profile)] += 1
            if plan.share is not None:
                shared[plan.share.gpu] += plan.share.milli
                planned[share_resource] += plan.share.milli
        for resource, n in resources.items():
            if n > planned[resource]:
                unplanned[resource] += n - planned[resource]
    usage = Usage(frozenset(held_gpus), frozenset(held_mig), dict(unplanned), dict(shared))
    return replace(node, usage=usage, notes=tuple(notes))


def mismatches(node_name: str, pods: Iterable[Mapping[str, Any]], actual: Mapping[str, Plan]) -> dict[str, str]:
    """Pod (namespace/name) -> what differs, for each pod whose plan for this node names other
    devices than the kubelet really allocated."""
    found = {}
    for pod in pods:
        key = name_of(pod)
        got = actual.get(key)
        planned = _plan_of(pod, node_name, []) if got is not None else None
        if planned is None or got is None or _devices(planned) == _devices(got):
            continue
        found[key] = f"planned {describe(planned)}, the kubelet allocated {describe(got)}"
    return found


def _devices(plan: Plan) -> tuple[frozenset[int], frozenset[MigSlot], tuple[int, int] | None]:
    share = (plan.share.gpu, plan.share.milli) if plan.share else None
    return frozenset(plan.gpus), frozenset(plan.mig), share


def describe(plan: Plan) -> str:
    """A plan's devices in words: `GPUs 4,5,6,7`, `MIG 3g.40gb on GPU 0 at slice 4`, `250/1000 of GPU 1`."""
    parts = [f"GPU{'s' if len(plan.gpus) > 1 else ''} {','.join(map(str, sorted(plan.gpus)))}"] if plan.gpus else []
    parts += [f"MIG {s.profile} on GPU {s.gpu} at slice {s.start}" for s in sorted(plan.mig, key=lambda s: (s.gpu, s.start))]
    if plan.share is not None:
        parts.append(f"{plan.share.milli}/{MILLI_PER_GPU} of GPU {plan.share.gpu}")
    return ", ".join(parts) or "no GPU devices"


def _plan_of(pod: Mapping[str, Any], node_name: str, notes: list[str]) -> Plan | None:
    value = ((pod.get("metadata") or {}).get("annotations") or {}).get(ann.PLAN)
    if not value:
        return None
    try:
        planned_node, plan = ann.plan_from_dict(json.loads(value))
    except ValueError as exc:
        notes.append(f"pod {name_of(pod)}: {ann.PLAN} unreadable ({exc}): counted without a plan")
        return None
    return plan if planned_node == node_name else None
