"""A stand-in for the `pynvml` module that answers from a described machine.

Only the calls into libnvidia-ml are replaced. Constants, error classes and ctypes structures are
the real module's, and answers come back the way the real bindings return them: strings for
names and UUIDs, `nvmlPciInfo_t` / `c_nvmlMemory_t` / profile- and instance-info structures,
GPU-instance handles written into the caller's ctypes array and the count through its `byref`.
Errors are raised as the real bindings raise them (`NVMLError(code)` becomes the matching
`NVMLError_*` subclass). Any function the fake does not model raises AttributeError, so the agent
cannot rely on a call that the tests never answer; calls before `nvmlInit` fail as they do in NVML.
"""

from __future__ import annotations

import ctypes
import threading
from collections import Counter
from dataclasses import dataclass, field

import pynvml

GPU = pynvml.NVML_NVLINK_DEVICE_TYPE_GPU
SWITCH = pynvml.NVML_NVLINK_DEVICE_TYPE_SWITCH
UNTYPED = pynvml.NVML_NVLINK_DEVICE_TYPE_UNKNOWN

# GPU-instance profiles of the A100/H100 family: (NVML profile constant, profile id that NVML and
# `nvidia-smi mig -lgip` report, instance limit) and each product's names for them
# (shared/reference/gpu/mig-profiles.json; the enum -> id pairs as `nvidia-smi mig -lgip` lists them).
_PROFILES = (
    (pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE, 19, 7),
    (pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV1, 20, 1),
    (pynvml.NVML_GPU_INSTANCE_PROFILE_1_SLICE_REV2, 15, 4),
    (pynvml.NVML_GPU_INSTANCE_PROFILE_2_SLICE, 14, 3),
    (pynvml.NVML_GPU_INSTANCE_PROFILE_3_SLICE, 9, 2),
    (pynvml.NVML_GPU_INSTANCE_PROFILE_4_SLICE, 5, 1),
    (pynvml.NVML_GPU_INSTANCE_PROFILE_7_SLICE, 0, 1),
)
_MEMORY_SLICES = {19: 1, 20: 1, 15: 2, 14: 2, 9: 4, 5: 4, 0: 8}
PROFILE_NAMES = {
    "H100 80GB": ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    "A100-SXM4-80GB": ("1g.10gb", "1g.10gb+me", "1g.20gb", "2g.20gb", "3g.40gb", "4g.40gb", "7g.80gb"),
    "A100-SXM4-40GB": ("1g.5gb", "1g.5gb+me", "1g.10gb", "2g.10gb", "3g.20gb", "4g.20gb", "7g.40gb"),
}


@dataclass
class FakeLink:
    """One NVLink: the type NVML reports for the far end and the far end's PCI bus number
    (domain 0, device 0; 0 when NVML cannot see it)."""

    kind: int
    remote_bus: int
    active: bool = True


@dataclass
class FakeGpu:
    name: str
    uuid: str
    bus: int
    memory_mib: int
    pcie_path: tuple[str, ...]  # CPU socket, host bridge, then PCIe switches from the root down
    links: list[FakeLink] = field(default_factory=list)  # by link number; empty: the GPU has no NVLink
    mig: bool | None = None  # None: not MIG-capable
    instances: list[tuple[str, int]] = field(default_factory=list)  # (profile name, start slice)


def _error(code: int) -> pynvml.NVMLError:
    return pynvml.NVMLError(code)


def mig_uuid(gpu_uuid: str, start: int) -> str:
    """The fake UUID of the MIG device in the GPU instance at `start`."""
    return f"MIG-{gpu_uuid.removeprefix('GPU-')}-{start}"


def _instance_address(gpu: int, start: int) -> int:
    """A fake, non-null opaque GPU-instance handle; its low byte is the instance id."""
    return 0x1000 * (gpu + 1) + 0x10 * start + 1


def _pci(bus: int) -> pynvml.nvmlPciInfo_t:
    info = pynvml.nvmlPciInfo_t()
    info.domain, info.bus, info.device = 0, bus, 0
    info.busId = b"%08X:%02X:00.0" % (0, bus)
    info.busIdLegacy = b"%04X:%02X:00.0" % (0, bus)
    return info


class FakePynvml:
    """The `pynvml` module as seen on one machine.

    `init_error`: the NVML error code nvmlInit fails with (no driver: NVML_ERROR_LIBRARY_NOT_FOUND).
    `fail`: function name -> (calls that succeed first, error code of the next one).
    `p2p`: what nvmlDeviceGetP2PStatus reports over NVLink for every pair: None derives it from
    the machine, False is an NVSwitch system whose fabric manager is down (links up, no P2P),
    True a driver that reports OK whatever the wiring.

    Health: GPUs whose index is in `lost` answer NVML_ERROR_GPU_IS_LOST to every device call
    (fallen off the bus); `xid(index, code)` queues a critical-Xid event, delivered by
    nvmlEventSetWait to event sets that GPU is registered with. MIG devices (one per GPU
    instance, slot = its place in the GPU's instance list) have handles `(gpu, slot)` and UUIDs
    `MIG-<GPU UUID less its prefix>-<start slice>`.
    """

    def __init__(self, gpus: list[FakeGpu], *, init_error: int | None = None,
                 fail: dict[str, tuple[int, int]] | None = None, p2p: bool | None = None):
        self.gpus = gpus
        self.init_error = init_error
        self.fail = dict(fail or {})
        self.p2p = p2p
        self.calls: Counter[str] = Counter()
        self.open = 0  # nvmlInit minus nvmlShutdown
        self._instances: dict[int, tuple[int, int, int]] = {}  # handle address -> (profile id, start, size)
        self.lost: set[int] = set()
        self._xids: list[tuple[int, int]] = []  # (GPU index, Xid) not yet delivered
        self._registered: set[int] = set()  # GPUs registered for Xid events
        self._xid_lock = threading.Condition()

    def __getattr__(self, name: str):
        if name.startswith(("NVML_", "NVMLError", "c_nvml", "nvmlPciInfo", "nvmlEventType")):
            return getattr(pynvml, name)
        raise AttributeError(f"the fake pynvml does not model {name}")

    def _enter(self, name: str, needs_init: bool = True) -> None:
        self.calls[name] += 1
        if needs_init and self.open <= 0:
            raise _error(pynvml.NVML_ERROR_UNINITIALIZED)
        if name in self.fail:
            ok, code = self.fail[name]
            if self.calls[name] > ok:
                raise _error(code)

    def _gpu(self, handle) -> FakeGpu:
        """The GPU of a handle: an index, a MIG device's (index, slot), or the device pointer of
        an event (index + 1)."""
        if isinstance(handle, tuple):
            index = handle[0]
        elif isinstance(handle, int):
            index = handle
        else:
            index = ctypes.cast(handle, ctypes.c_void_p).value - 1
        if index in self.lost:
            raise _error(pynvml.NVML_ERROR_GPU_IS_LOST)
        return self.gpus[index]

    def xid(self, index: int, code: int) -> None:
        """Queue a critical-Xid event on GPU `index`."""
        with self._xid_lock:
            self._xids.append((index, code))
            self._xid_lock.notify_all()

    # --- library ---

    def nvmlInit(self) -> None:
        self._enter("nvmlInit", needs_init=False)
        if self.init_error is not None:
            raise _error(self.init_error)
        self.open += 1

    def nvmlShutdown(self) -> None:
        self._enter("nvmlShutdown")
        self.open -= 1

    # --- devices ---

    def nvmlDeviceGetCount(self) -> int:
        self._enter("nvmlDeviceGetCount")
        return len(self.gpus)

    def nvmlDeviceGetHandleByIndex(self, index: int) -> int:
        self._enter("nvmlDeviceGetHandleByIndex")
        if not 0 <= index < len(self.gpus):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return index

    def nvmlDeviceGetHandleByUUID(self, uuid: str | bytes) -> int:
        self._enter("nvmlDeviceGetHandleByUUID")
        uuid = uuid.decode() if isinstance(uuid, bytes) else uuid
        for index, gpu in enumerate(self.gpus):
            if gpu.uuid == uuid:
                self._gpu(index)
                return index
        raise _error(pynvml.NVML_ERROR_NOT_FOUND)

    def nvmlDeviceGetUUID(self, handle: int | tuple[int, int]) -> str:
        self._enter("nvmlDeviceGetUUID")
        gpu = self._gpu(handle)
        if isinstance(handle, tuple):
            return mig_uuid(gpu.uuid, gpu.instances[handle[1]][1])
        return gpu.uuid

    def nvmlDeviceGetName(self, handle: int) -> str:
        self._enter("nvmlDeviceGetName")
        return self._gpu(handle).name

    def nvmlDeviceGetMemoryInfo(self, handle: int) -> pynvml.c_nvmlMemory_t:
        self._enter("nvmlDeviceGetMemoryInfo")
        total = self._gpu(handle).memory_mib * 2**20
        return pynvml.c_nvmlMemory_t(total=total, free=total, used=0)

    def nvmlDeviceGetPciInfo(self, handle: int) -> pynvml.nvmlPciInfo_t:
        self._enter("nvmlDeviceGetPciInfo")
        return _pci(self._gpu(handle).bus)

    def nvmlDeviceGetMigMode(self, handle: int) -> list[int]:
        self._enter("nvmlDeviceGetMigMode")
        mig = self._gpu(handle).mig
        if mig is None:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        mode = pynvml.NVML_DEVICE_MIG_ENABLE if mig else pynvml.NVML_DEVICE_MIG_DISABLE
        return [mode, mode]

    # --- topology ---

    def nvmlDeviceGetTopologyCommonAncestor(self, a: int, b: int) -> int:
        """From the PCIe paths: another socket SYS, another host bridge NODE, no shared switch PHB,
        the same parent switch PIX, a shared switch further up PXB."""
        self._enter("nvmlDeviceGetTopologyCommonAncestor")
        pa, pb = self._gpu(a).pcie_path, self._gpu(b).pcie_path
        if pa[0] != pb[0]:
            return pynvml.NVML_TOPOLOGY_SYSTEM
        if pa[1] != pb[1]:
            return pynvml.NVML_TOPOLOGY_NODE
        if len(pa) < 3 or len(pb) < 3 or pa[2] != pb[2]:
            return pynvml.NVML_TOPOLOGY_HOSTBRIDGE
        return pynvml.NVML_TOPOLOGY_SINGLE if pa[-1] == pb[-1] else pynvml.NVML_TOPOLOGY_MULTIPLE

    def _link(self, handle: int, link: int) -> FakeLink:
        links = self._gpu(handle).links
        if not links:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        if not 0 <= link < len(links):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return links[link]

    def nvmlDeviceGetNvLinkState(self, handle: int, link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkState")
        return pynvml.NVML_FEATURE_ENABLED if self._link(handle, link).active else pynvml.NVML_FEATURE_DISABLED

    def nvmlDeviceGetNvLinkRemotePciInfo(self, handle: int, link: int) -> pynvml.nvmlPciInfo_t:
        self._enter("nvmlDeviceGetNvLinkRemotePciInfo")
        return _pci(self._link(handle, link).remote_bus)

    def nvmlDeviceGetNvLinkRemoteDeviceType(self, handle: int, link: int) -> int:
        self._enter("nvmlDeviceGetNvLinkRemoteDeviceType")
        return self._link(handle, link).kind

    def nvmlDeviceGetP2PStatus(self, a: int, b: int, index: int) -> int:
        """Over NVLink: OK when an active link joins the two (directly, or through a switch both
        reach) and neither is MIG-enabled; or as `p2p` says."""
        self._enter("nvmlDeviceGetP2PStatus")
        if index != pynvml.NVML_P2P_CAPS_INDEX_NVLINK:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if self.p2p is not None:
            return pynvml.NVML_P2P_STATUS_OK if self.p2p else pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
        ga, gb = self._gpu(a), self._gpu(b)
        if ga.mig or gb.mig:
            return pynvml.NVML_P2P_STATUS_NOT_SUPPORTED
        if any(link.active and link.kind == GPU and link.remote_bus == gb.bus for link in ga.links):
            return pynvml.NVML_P2P_STATUS_OK

        def switches(gpu: FakeGpu) -> set[int]:
            return {link.remote_bus for link in gpu.links if link.active and link.kind != GPU}

        if switches(ga) & switches(gb):
            return pynvml.NVML_P2P_STATUS_OK
        return pynvml.NVML_P2P_STATUS_NOT_SUPPORTED

    # --- MIG ---

    def _profiles(self, gpu: FakeGpu) -> list[tuple[int, int, int, str]]:
        names = next((names for product, names in PROFILE_NAMES.items() if product in gpu.name), None)
        if gpu.mig is None or names is None:
            return []
        return [(enum, pid, limit, name) for (enum, pid, limit), name in zip(_PROFILES, names)]

    def nvmlDeviceGetGpuInstanceProfileInfo(self, handle: int, profile: int, version: int = 2):
        self._enter("nvmlDeviceGetGpuInstanceProfileInfo")
        if not 0 <= profile < pynvml.NVML_GPU_INSTANCE_PROFILE_COUNT:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        gpu = self._gpu(handle)
        for enum, pid, limit, name in self._profiles(gpu):
            if enum == profile:
                info = pynvml.c_nvmlGpuInstanceProfileInfo_v2_t()
                info.id, info.instanceCount, info.sliceCount = pid, limit, int(name.split("g.")[0])
                info.name = f"MIG {name}".encode()
                return info
        raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)

    def nvmlDeviceGetGpuInstances(self, handle: int, profile_id: int, instances, count_ref) -> int:
        self._enter("nvmlDeviceGetGpuInstances")
        gpu = self._gpu(handle)
        if not gpu.mig:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        names = {pid: name for _, pid, _, name in self._profiles(gpu)}
        found = [start for name, start in gpu.instances if name == names.get(profile_id)]
        if len(found) > len(instances):
            raise _error(pynvml.NVML_ERROR_INSUFFICIENT_SIZE)
        for slot, start in enumerate(found):
            address = _instance_address(handle, start)
            self._instances[address] = (profile_id, start, _MEMORY_SLICES[profile_id])
            instances[slot] = ctypes.cast(ctypes.c_void_p(address), pynvml.c_nvmlGpuInstance_t)
        count_ref._obj.value = len(found)
        return pynvml.NVML_SUCCESS

    def nvmlDeviceGetMaxMigDeviceCount(self, handle: int) -> int:
        self._enter("nvmlDeviceGetMaxMigDeviceCount")
        return 7 if self._gpu(handle).mig else 0

    def nvmlDeviceGetMigDeviceHandleByIndex(self, handle: int, slot: int) -> tuple[int, int]:
        self._enter("nvmlDeviceGetMigDeviceHandleByIndex")
        gpu = self._gpu(handle)
        if not gpu.mig or slot >= 7:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        if slot >= len(gpu.instances):
            raise _error(pynvml.NVML_ERROR_NOT_FOUND)
        return (handle, slot)

    def nvmlDeviceGetGpuInstanceId(self, handle: tuple[int, int]) -> int:
        """The GPU-instance id nvmlGpuInstanceGetInfo reports for the instance the MIG device is in."""
        self._enter("nvmlDeviceGetGpuInstanceId")
        gpu = self._gpu(handle)
        if not isinstance(handle, tuple):
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        return _instance_address(handle[0], gpu.instances[handle[1]][1]) & 0xFF

    # --- events ---

    def nvmlEventSetCreate(self) -> str:
        self._enter("nvmlEventSetCreate")
        return "event-set"

    def nvmlEventSetFree(self, event_set: str) -> None:
        self._enter("nvmlEventSetFree")

    def nvmlDeviceRegisterEvents(self, handle: int, types: int, event_set: str) -> None:
        self._enter("nvmlDeviceRegisterEvents")
        self._gpu(handle)
        if types & ~pynvml.nvmlEventTypeXidCriticalError:
            raise _error(pynvml.NVML_ERROR_NOT_SUPPORTED)
        self._registered.add(handle)

    def nvmlEventSetWait(self, event_set: str, timeout_ms: int) -> pynvml.c_nvmlEventData_t:
        self._enter("nvmlEventSetWait")
        with self._xid_lock:
            ready = self._xid_lock.wait_for(
                lambda: any(i in self._registered for i, _ in self._xids), timeout_ms / 1000)
            if not ready:
                raise _error(pynvml.NVML_ERROR_TIMEOUT)
            index, code = next(e for e in self._xids if e[0] in self._registered)
            self._xids.remove((index, code))
        data = pynvml.c_nvmlEventData_t()
        data.device = ctypes.cast(ctypes.c_void_p(index + 1), pynvml.c_nvmlDevice_t)
        data.eventType, data.eventData = pynvml.nvmlEventTypeXidCriticalError, code
        return data

    def nvmlGpuInstanceGetInfo(self, instance) -> pynvml.c_nvmlGpuInstanceInfo_t:
        self._enter("nvmlGpuInstanceGetInfo")
        address = ctypes.cast(instance, ctypes.c_void_p).value
        if address not in self._instances:
            raise _error(pynvml.NVML_ERROR_INVALID_ARGUMENT)
        profile_id, start, size = self._instances[address]
        info = pynvml.c_nvmlGpuInstanceInfo_t()
        info.id, info.profileId = address & 0xFF, profile_id
        info.placement.start, info.placement.size = start, size
        return info
