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
class Plan:
    """The devices a pod would get on a node: whole GPU indices and MIG instances."""

    gpus: tuple[int, ...] = ()
    mig: tuple[MigSlot, ...] = ()

    def merged(self, other: Plan) -> Plan:
        return Plan(self.gpus + other.gpus, self.mig + other.mig)


@dataclass(frozen=True, slots=True)
class Usage:
    """What pods on a node already hold.

    `gpus` and `mig` are the devices named in the plans of pods placed by us; `unplanned`
    counts, per extended resource, what pods without a plan hold (we cannot tell which device).
    """

    gpus: frozenset[int] = frozenset()
    mig: frozenset[MigSlot] = frozenset()
    unplanned: Mapping[str, int] = field(default_factory=dict)  # resource name -> count


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

    def gpu(self, index: int) -> Gpu | None:
        for gpu in self.gpus:
            if gpu.index == index:
                return gpu
        return None


@dataclass(frozen=True, slots=True)
class PodRequest:
    """The GPU part of a pod: whole GPUs, MIG instances by profile, class and model."""

    namespace: str
    name: str
    workload_class: WorkloadClass
    gpus: int = 0
    mig: Mapping[str, int] = field(default_factory=dict)  # profile -> count (mixed strategy)
    model: str | None = None
    model_size: int | None = None  # bytes, when the pod states it
    model_required: bool = False
    priority: int = 0
    uid: str = ""

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


SIGNALS = ("mig", "topology", "locality", "utilization")


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
