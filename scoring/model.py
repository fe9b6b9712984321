"""Plain data the scoring functions read. Built from Kubernetes objects by `extender`, never here."""

from __future__ import annotations

from dataclasses import dataclass, field
from enum import Enum
from typing import Mapping

ANNOTATION_PREFIX = "gpu-extender.io"
"""The one prefix of every annotation and label gpu-extender reads or writes (see the README)."""
GPU_RESOURCE = "nvidia.com/gpu"
MIG_RESOURCE_PREFIX = "nvidia.com/mig-"
NEUTRAL = 0.5
"""Score of a signal that has no data or does not apply: it neither helps nor hurts a node."""



def mig_resource(profile: str) -> str:
    """Extended-resource name of a MIG profile under the mixed strategy (`+` becomes `.`)."""
    return MIG_RESOURCE_PREFIX + profile.replace("+", ".")


def mig_profile(resource: str) -> str | None:
    """The MIG profile an extended resource names (`nvidia.com/mig-1g.10gb.me` -> `1g.10gb+me`)."""
    if not resource.startswith(MIG_RESOURCE_PREFIX):
        return None
    profile = resource[len(MIG_RESOURCE_PREFIX):]
    head, _, tail = profile.rpartition(".")
    return f"{head}+{tail}" if head and tail.isalpha() else profile


class WorkloadClass(str, Enum):
    LATENCY_CRITICAL = "latency-critical"
    BATCH = "batch"


class MigStrategy(str, Enum):
    NONE = "none"
    SINGLE = "single"
    MIXED = "mixed"


@dataclass(frozen=True, slots=True)
class Gpu:
    index: int
    uuid: str
    model: str
    memory_mib: int
    mig_enabled: bool = False


@dataclass(frozen=True, slots=True)
class MigInstance:
    """A GPU instance that exists on a MIG-enabled GPU: `size` memory slices from `start`."""

    gpu: int
    profile: str
    start: int
    size: int


@dataclass(frozen=True, slots=True)
class MigSlot:
    """One MIG instance of a plan, named by its GPU and placement."""

    gpu: int
    profile: str
    start: int


@dataclass(frozen=True, slots=True)
class GpuShare:
    """A share of one whole GPU: `milli` thousandths of GPU `gpu`."""

    gpu: int
    milli: int


@dataclass(frozen=True, slots=True)
class Plan:
    """The devices a pod would get on a node: whole GPU indices, MIG instances, a GPU share."""

    gpus: tuple[int, ...] = ()
    mig: tuple[MigSlot, ...] = ()
    share: GpuShare | None = None

    def merged(self, other: Plan) -> Plan:
        """Both plans' devices; a pod holds at most one share, so at most one plan has one."""
        return Plan(self.gpus + other.gpus, self.mig + other.mig, self.share or other.share)

    @property
    def physical_gpus(self) -> frozenset[int]:
        """Indices of the GPUs the plan touches: whole, parents of MIG instances, shared."""
        shared = () if self.share is None else (self.share.gpu,)
        return frozenset((*self.gpus, *(slot.gpu for slot in self.mig), *shared))


@dataclass(frozen=True, slots=True)
class Usage:
    """What pods on a node already hold.

    `gpus` and `mig` are the devices named in the plans of pods placed by us, `shared` the
    thousandths of each GPU that planned GPU shares hold; `unplanned` counts, per extended
    resource, what pods without a plan hold (we cannot tell which device): whole GPUs and MIG
    instances in devices, the GPU-share resource in thousandths of a GPU.
    """

    gpus: frozenset[int] = frozenset()
    mig: frozenset[MigSlot] = frozenset()
    unplanned: Mapping[str, int] = field(default_factory=dict)  # resource name -> count
    shared: Mapping[int, int] = field(default_factory=dict)  # GPU index -> milli held by shares


@dataclass(frozen=True, slots=True)
class GpuNode:
    """A node as the scorer sees it.

    `gpus`, `nvlink`, `pcie` and `mig_layout` come from the node agent and are empty/None when
    its data is missing or too old; `allocatable` (GPU resources only) always comes from the
    node's status. `nvlink[i][j]` is the number of NVLink links between GPU i and j (0: none);
    `pcie[i][j]` the NVML common-ancestor level (0 same board, 10 PIX .. 50 SYS).
    """

    name: str
    allocatable: Mapping[str, int] = field(default_factory=dict)
    product: str = ""
    mig_strategy: MigStrategy = MigStrategy.NONE
    single_mig_profile: str | None = None
    gpu_count: int = 0
    gpus: tuple[Gpu, ...] = ()
    nvlink: tuple[tuple[int, ...], ...] | None = None
    pcie: tuple[tuple[int, ...], ...] | None = None
    mig_layout: tuple[MigInstance, ...] | None = None
    model_cache: Mapping[str, int] = field(default_factory=dict)
    labels: Mapping[str, str] = field(default_factory=dict)
    usage: Usage = field(default_factory=Usage)
    notes: tuple[str, ...] = ()
    cpu_free_milli: int | None = None  # CPU not requested by pods, when known (fragmentation)

    def gpu(self, index: int) -> Gpu | None:
        for gpu in self.gpus:
            if gpu.index == index:
                return gpu
        return None


MILLI_PER_GPU = 1000
"""A GPU share is counted in thousandths of one GPU (milli), as a sharing device plugin advertises."""


@dataclass(frozen=True, slots=True)
class GroupRef:
    """The pod group a pod belongs to (`scoring/groups.py`): `name` is unique in the cluster
    (namespace first), `size` the members it has in all, leader included."""

    name: str
    size: int
    gang: str = ""  # Workload API: the pod group whose minCount sizes it (extender/workload_api.py)


@dataclass(frozen=True, slots=True)
class PodRequest:
    """The GPU part of a pod: whole GPUs, MIG instances by profile, a GPU share, class and model.

    `gpu_milli` is a share of ONE GPU in thousandths, 1..999 (0: no share). A share is never
    1000 or more (that is a whole GPU: ask for `nvidia.com/gpu`) and never comes with whole GPUs
    or MIG instances in the same pod; both raise ValueError.
    """

    namespace: str
    name: str
    workload_class: WorkloadClass
    gpus: int = 0
    mig: Mapping[str, int] = field(default_factory=dict)  # profile -> count (mixed strategy)
    gpu_milli: int = 0
    model: str | None = None
    model_size: int | None = None  # bytes, when the pod states it
    model_required: bool = False
    priority: int = 0
    uid: str = ""
    cpu_milli: int = 0  # the pod's CPU request (fragmentation: CPU-starved GPUs)
    group: GroupRef | None = None

    def __post_init__(self) -> None:
        if not 0 <= self.gpu_milli < MILLI_PER_GPU:
            raise ValueError(
                f"a GPU share is 1..{MILLI_PER_GPU - 1} thousandths of one GPU, not {self.gpu_milli}"
            )
        if self.gpu_milli and (self.gpus or any(self.mig.values())):
            raise ValueError("a pod with a GPU share asks for no whole GPUs or MIG instances besides")

    @property
    def key(self) -> str:
        return f"{self.namespace}/{self.name}"


@dataclass(frozen=True, slots=True)
class GpuSample:
    """Live figures for one physical GPU at time `at` (seconds since the epoch).

    `util` is 0..1: DCGM_FI_DEV_GPU_UTIL/100, or on MIG GPUs the graphics-engine activity of its
    instances weighted by their compute slices. Framebuffer figures are in MiB.
    """

    util: float
    fb_used_mib: float
    fb_free_mib: float
    at: float


def node_sample_key(node: str) -> str:
    """The key, among samples by GPU UUID, of a node's node-level sample: the mean load of the
    GPUs DCGM reports for the node, for nodes whose GPUs we have no inventory of."""
    return f"node/{node}"


@dataclass(frozen=True, slots=True)
class SignalResult:
    """What one signal says about one node for one pod.

    `applicable` is False when the signal has nothing to say for this pod (a one-GPU pod and
    NVLink, a pod without a model and the cache); policy then leaves it out of the weighted mean.
    `unresolvable` marks a rejection that preemption cannot fix; `summary` is its short form without
    per-node figures, so that the scheduler's "0/N nodes are available" message groups nodes.
    """

    feasible: bool
    score: float
    reason: str
    plan: Plan = Plan()
    applicable: bool = True
    unresolvable: bool = False
    summary: str = ""

    @staticmethod
    def not_applicable(reason: str) -> SignalResult:
        return SignalResult(True, NEUTRAL, reason, applicable=False)

    @staticmethod
    def reject(reason: str, summary: str, *, unresolvable: bool = False) -> SignalResult:
        return SignalResult(False, 0.0, reason, unresolvable=unresolvable, summary=summary)


SIGNALS = ("mig", "topology", "sharing", "locality", "utilization", "fragmentation")


@dataclass(frozen=True, slots=True)
class ScoreBreakdown:
    """The decision for one node: per-signal results, combined score and the scheduler's integer."""

    node: str
    feasible: bool
    unresolvable: bool
    total: float
    signals: Mapping[str, SignalResult]
    plan: Plan
    reason: str
    score: int = 0
    summary: str = ""  # rejections: the reason without per-node figures
