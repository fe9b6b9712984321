"""The only module that calls NVML (`pynvml`, from nvidia-ml-py): this node's GPUs, their MIG
devices and how they are wired, as plain data, and whether each GPU is still healthy. Interpreting
the links (who is NVLinked to whom) is `extender.node.topology`'s.

`read_inventory()` opens NVML, reads everything and closes it again, so every scan sees the driver
as it is now (a reset GPU or a reloaded driver does not leave stale handles behind).

NVML answers that mean "not there" rather than "failed", and so are not errors:
- `nvmlDeviceGetNvLinkState`: NOT_SUPPORTED (the GPU has no NVLink) or INVALID_ARGUMENT (no link
  with that number): the link does not exist.
- `nvmlDeviceGetNvLinkRemoteDeviceType`: NOT_SUPPORTED or FUNCTION_NOT_FOUND (older drivers):
  the far end's type is unknown. `nvmlDeviceGetNvLinkRemotePciInfo`: NOT_SUPPORTED: so is its address.
- `nvmlDeviceGetMigMode`: NOT_SUPPORTED: the GPU cannot do MIG, so MIG is off.
- `nvmlDeviceGetGpuInstanceProfileInfo`: NOT_SUPPORTED or INVALID_ARGUMENT: the GPU does not offer
  that GPU-instance profile.
- `nvmlDeviceGetP2PStatus`: NOT_SUPPORTED: no peer-to-peer over NVLink between the two.
- `nvmlDeviceGetMigDeviceHandleByIndex`: NOT_FOUND: no MIG device in that slot.
Any other error stops the scan with `ScanError`: a half-read inventory is never returned.
"""

from __future__ import annotations

import ctypes
import logging
import time
from collections.abc import Callable
from dataclasses import dataclass, replace
from enum import Enum
from typing import Any

import pynvml

log = logging.getLogger("gpu_extender.nvml")
MIB = 2**20
MIG_MONITOR_HINT = "listing MIG instances needs the MIG monitor capability (NVIDIA_MIG_MONITOR_DEVICES=all)"
Matrix = tuple[tuple[int, ...], ...]


class NvmlUnavailable(Exception):
    """NVML cannot start: no NVIDIA driver or library on this node, or the driver refuses us."""


class ScanError(Exception):
    """An NVML call failed in the middle of a scan; the message names the call and the GPU."""


class RemoteKind(str, Enum):
    """What is at the far end of an NVLink (nvmlDeviceGetNvLinkRemoteDeviceType)."""

    GPU = "gpu"
    SWITCH = "switch"
    OTHER = "other"  # an IBM NPU (a POWER9 CPU's NVLink port)
    UNKNOWN = "unknown"  # the driver does not say


@dataclass(frozen=True, slots=True)
class Link:
    """One active NVLink of a GPU. `remote_bus_id` is the far end's PCI address as
    `domain:bus:device` in lower-case hex (`00000000:18:00`), or "" when NVML gives none."""

    link: int
    remote_kind: RemoteKind
    remote_bus_id: str


@dataclass(frozen=True, slots=True)
class GpuInstance:
    """A MIG GPU instance: its profile name as NVML gives it, less the "MIG " prefix (`3g.40gb`),
    its placement in memory slices, and the UUIDs (`MIG-…`) of the MIG devices (one per compute
    instance) that a container can be given."""

    profile: str
    start: int
    size: int
    device_uuids: tuple[str, ...] = ()


@dataclass(frozen=True, slots=True)
class Device:
    index: int
    uuid: str
    name: str  # nvmlDeviceGetName, e.g. "NVIDIA H100 80GB HBM3"
    memory_mib: int
    bus_id: str  # as Link.remote_bus_id
    mig_enabled: bool  # the current MIG mode (a pending change needs a GPU reset first)
    links: tuple[Link, ...]
    instances: tuple[GpuInstance, ...]  # sorted by start; empty unless mig_enabled


@dataclass(frozen=True, slots=True)
class Inventory:
    """Everything one scan read. `pcie[i][j]` is nvmlDeviceGetTopologyCommonAncestor's level for
    GPUs i and j (0 on the diagonal); `p2p_nvlink[i][j]` says whether peer-to-peer over NVLink
    is OK in both directions (False on the diagonal)."""

    devices: tuple[Device, ...]
    pcie: Matrix
    p2p_nvlink: tuple[tuple[bool, ...], ...]


def read_inventory(lib: Any = None) -> Inventory:
    """Scan this node's GPUs through `lib` (default: the `pynvml` module).

    Raises NvmlUnavailable when NVML cannot be initialised and ScanError when a call fails later.
    """
    nv = pynvml if lib is None else lib
    try:
        nv.nvmlInit()
    except nv.NVMLError as exc:
        if exc.value in (nv.NVML_ERROR_LIBRARY_NOT_FOUND, nv.NVML_ERROR_DRIVER_NOT_LOADED):
            raise NvmlUnavailable(f"no NVIDIA driver on this node (NVML: {exc})") from None
        raise NvmlUnavailable(f"NVML cannot start: {exc}") from None
    try:
        return _Reader(nv).inventory()
    finally:
        try:
            nv.nvmlShutdown()
        except nv.NVMLError as exc:
            log.warning("nvmlShutdown failed: %s", exc)


def _bus_id(info: Any) -> str:
    """A PCI address from an nvmlPciInfo_t's numeric fields; "" for the all-zero address that
    NVML reports when it cannot see the device (NVSwitches inside a VM)."""
    if not (info.domain or info.bus or info.device):
        return ""
    return f"{info.domain:08x}:{info.bus:02x}:{info.device:02x}"


class _Reader:
    def __init__(self, nv: Any):
        self.nv = nv

    def call(self, fn: Callable[..., Any], *args: Any, what: str, absent: tuple[int, ...] = (),
             denied_hint: str = "") -> Any:
        """fn(*args); None when NVML answers one of the `absent` codes; ScanError otherwise
        (with `denied_hint` added when NVML says NO_PERMISSION)."""
        try:
            return fn(*args)
        except self.nv.NVMLError as exc:
            if exc.value in absent:
                return None
            hint = f"; {denied_hint}" if denied_hint and exc.value == self.nv.NVML_ERROR_NO_PERMISSION else ""
            raise ScanError(f"{fn.__name__} ({what}): {exc}{hint}") from None

    def inventory(self) -> Inventory:
        nv = self.nv
        count = self.call(nv.nvmlDeviceGetCount, what="GPU count")
        handles = [self.call(nv.nvmlDeviceGetHandleByIndex, i, what=f"GPU {i}") for i in range(count)]
        devices = tuple(self.device(i, handle) for i, handle in enumerate(handles))
        pcie = [[0] * count for _ in range(count)]
        for i in range(count):
            for j in range(i + 1, count):
                level = self.call(nv.nvmlDeviceGetTopologyCommonAncestor, handles[i], handles[j],
                                  what=f"GPUs {i} and {j}")
                pcie[i][j] = pcie[j][i] = int(level)
        ok = [[i != j and self.p2p_nvlink(handles, i, j) for j in range(count)] for i in range(count)]
        p2p = tuple(tuple(ok[i][j] and ok[j][i] for j in range(count)) for i in range(count))
        return Inventory(devices, tuple(map(tuple, pcie)), p2p)

    def p2p_nvlink(self, handles: list[Any], i: int, j: int) -> bool:
        nv = self.nv
        status = self.call(nv.nvmlDeviceGetP2PStatus, handles[i], handles[j], nv.NVML_P2P_CAPS_INDEX_NVLINK,
                           what=f"GPU {i} to GPU {j}", absent=(nv.NVML_ERROR_NOT_SUPPORTED,))
        return status == nv.NVML_P2P_STATUS_OK

    def device(self, index: int, handle: Any) -> Device:
        nv = self.nv
        what = f"GPU {index}"
        mode = self.call(nv.nvmlDeviceGetMigMode, handle, what=what, absent=(nv.NVML_ERROR_NOT_SUPPORTED,))
        mig_enabled = mode is not None and mode[0] == nv.NVML_DEVICE_MIG_ENABLE
        if mode is not None and mode[0] != mode[1]:
            log.info("GPU %d: MIG mode change pending until the GPU is reset; reporting the current mode", index)
        return Device(
            index=index,
            uuid=self.call(nv.nvmlDeviceGetUUID, handle, what=what),
            name=self.call(nv.nvmlDeviceGetName, handle, what=what),
            memory_mib=self.call(nv.nvmlDeviceGetMemoryInfo, handle, what=what).total // MIB,
            bus_id=_bus_id(self.call(nv.nvmlDeviceGetPciInfo, handle, what=what)),
            mig_enabled=mig_enabled,
            links=self.links(index, handle),
            instances=self.instances(index, handle) if mig_enabled else (),
        )

    def links(self, index: int, handle: Any) -> tuple[Link, ...]:
        nv = self.nv
        kinds = {nv.NVML_NVLINK_DEVICE_TYPE_GPU: RemoteKind.GPU, nv.NVML_NVLINK_DEVICE_TYPE_SWITCH: RemoteKind.SWITCH,
                 nv.NVML_NVLINK_DEVICE_TYPE_IBMNPU: RemoteKind.OTHER}
        links = []
        for link in range(nv.NVML_NVLINK_MAX_LINKS):
            what = f"GPU {index} NVLink {link}"
            state = self.call(nv.nvmlDeviceGetNvLinkState, handle, link, what=what,
                              absent=(nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_INVALID_ARGUMENT))
            if state != nv.NVML_FEATURE_ENABLED:
                continue  # no such link, or it is down
            pci = self.call(nv.nvmlDeviceGetNvLinkRemotePciInfo, handle, link, what=what,
                            absent=(nv.NVML_ERROR_NOT_SUPPORTED,))
            kind = self.call(nv.nvmlDeviceGetNvLinkRemoteDeviceType, handle, link, what=what,
                             absent=(nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_FUNCTION_NOT_FOUND))
            links.append(Link(link, kinds.get(kind, RemoteKind.UNKNOWN), _bus_id(pci) if pci is not None else ""))
        return tuple(links)

    def instances(self, index: int, handle: Any) -> tuple[GpuInstance, ...]:
        """Every GPU instance, found profile by profile (nvmlDeviceGetGpuInstances wants the
        profile's id and an array as long as the profile's instance limit)."""
        nv = self.nv
        what = f"GPU {index} MIG"
        seen: set[int] = set()
        found: dict[int, GpuInstance] = {}  # GPU-instance id -> instance
        for profile in range(nv.NVML_GPU_INSTANCE_PROFILE_COUNT):
            info = self.call(nv.nvmlDeviceGetGpuInstanceProfileInfo, handle, profile, what=what,
                             absent=(nv.NVML_ERROR_NOT_SUPPORTED, nv.NVML_ERROR_INVALID_ARGUMENT))
            if info is None or info.id in seen or info.instanceCount == 0:
                continue
            seen.add(info.id)
            name = str(info.name).removeprefix("MIG ").strip()
            if not name:
                raise ScanError(f"{what}: GPU-instance profile {info.id} has no name (driver too old?)")
            handles = (nv.c_nvmlGpuInstance_t * info.instanceCount)()
            count = ctypes.c_uint(0)
            self.call(nv.nvmlDeviceGetGpuInstances, handle, info.id, handles, ctypes.byref(count),
                      what=f"{what} profile {name}", denied_hint=MIG_MONITOR_HINT)
            for instance in handles[: count.value]:
                info = self.call(nv.nvmlGpuInstanceGetInfo, instance, what=f"{what} profile {name}")
                found[int(info.id)] = GpuInstance(name, int(info.placement.start), int(info.placement.size))
        devices = self.mig_devices(index, handle)
        return tuple(sorted((replace(gi, device_uuids=devices.get(gid, ())) for gid, gi in found.items()),
                            key=lambda gi: gi.start))

    def mig_devices(self, index: int, handle: Any) -> dict[int, tuple[str, ...]]:
        """GPU-instance id -> UUIDs of its MIG devices, in NVML's slot order."""
        nv = self.nv
        what = f"GPU {index} MIG devices"
        devices: dict[int, tuple[str, ...]] = {}
        for slot in range(self.call(nv.nvmlDeviceGetMaxMigDeviceCount, handle, what=what)):
            mig = self.call(nv.nvmlDeviceGetMigDeviceHandleByIndex, handle, slot, what=f"{what} slot {slot}",
                            absent=(nv.NVML_ERROR_NOT_FOUND,), denied_hint=MIG_MONITOR_HINT)
            if mig is None:
                continue
            instance = self.call(nv.nvmlDeviceGetGpuInstanceId, mig, what=f"{what} slot {slot}")
            uuid = self.call(nv.nvmlDeviceGetUUID, mig, what=f"{what} slot {slot}")
            devices[int(instance)] = devices.get(int(instance), ()) + (uuid,)
        return devices


# --- health -------------------------------------------------------------------------------------

# Xids that an application causes (a bad kernel, a page fault, a context torn down) and that leave
# the GPU usable for the next container; every other Xid NVML reports as critical marks the GPU
# unhealthy. NVIDIA's own device plugin skips the same six by default.
APPLICATION_XIDS = frozenset({13, 31, 43, 45, 68, 109})
XID_QUIET_SECONDS = 300.0  # a GPU stays unhealthy this long after its last fatal Xid, then NVML decides


class HealthMonitor:
    """Which GPUs (by UUID) are unhealthy, and why.

    A GPU is unhealthy while NVML cannot read it (its handle by UUID or its memory figures fail:
    fallen off the bus, lost, driver gone) and for `xid_quiet` seconds after NVML reported a
    critical Xid on it that is not in APPLICATION_XIDS. It is healthy again when both have
    passed. NVML stays open from `open()` to `close()`; `check()` and `wait_xid()` may run in
    different threads (NVML is thread-safe).
    """

    def __init__(self, uuids: list[str], lib: Any = None, *, xid_quiet: float = XID_QUIET_SECONDS,
                 clock: Callable[[], float] | None = None):
        self.nv = pynvml if lib is None else lib
        self.uuids = list(uuids)
        self.xid_quiet = xid_quiet
        self.clock = clock or time.monotonic
        self._xids: dict[str, tuple[int, float]] = {}  # uuid -> (last fatal Xid, when)
        self._events: Any = None

    def open(self) -> list[str]:
        """Start NVML and listen for Xid events; returns notes for the log (GPUs without Xid events).
        Raises NvmlUnavailable when NVML cannot start."""
        nv = self.nv
        try:
            nv.nvmlInit()
        except nv.NVMLError as exc:
            raise NvmlUnavailable(f"NVML cannot start: {exc}") from None
        notes = []
        try:
            self._events = nv.nvmlEventSetCreate()
        except nv.NVMLError as exc:
            return [f"no NVML event set ({exc}): health from NVML reads only, no Xid events"]
        for uuid in self.uuids:
            try:
                handle = nv.nvmlDeviceGetHandleByUUID(uuid)
                nv.nvmlDeviceRegisterEvents(handle, nv.nvmlEventTypeXidCriticalError, self._events)
            except nv.NVMLError as exc:
                notes.append(f"GPU {uuid}: no Xid events ({exc}); health from NVML reads only")
        return notes

    def close(self) -> None:
        nv = self.nv
        try:
            if self._events is not None:
                nv.nvmlEventSetFree(self._events)
            nv.nvmlShutdown()
        except nv.NVMLError as exc:
            log.warning("closing NVML: %s", exc)
        self._events = None

    def wait_xid(self, timeout_ms: int) -> str | None:
        """Wait up to `timeout_ms` for one Xid event; returns a line for the log when one came.
        Without an event set, or when the wait fails, it sleeps the timeout out: a loop around it
        never spins."""
        nv = self.nv
        if self._events is None:
            time.sleep(timeout_ms / 1000)
            return None
        try:
            data = nv.nvmlEventSetWait(self._events, timeout_ms)
        except nv.NVMLError as exc:
            if exc.value != nv.NVML_ERROR_TIMEOUT:
                time.sleep(timeout_ms / 1000)
                return f"waiting for Xid events failed: {exc}"
            return None
        xid = int(data.eventData)
        try:
            uuid = nv.nvmlDeviceGetUUID(data.device)
        except nv.NVMLError as exc:
            return f"Xid {xid} on a GPU NVML cannot name ({exc})"
        if xid in APPLICATION_XIDS:
            return f"GPU {uuid}: Xid {xid} (caused by an application; the GPU stays healthy)"
        self._xids[uuid] = (xid, self.clock())
        return f"GPU {uuid}: fatal Xid {xid}: unhealthy for at least {self.xid_quiet:g}s"

    def check(self) -> dict[str, str]:
        """UUID -> why, for each unhealthy GPU."""
        nv = self.nv
        now = self.clock()
        sick = {}
        for uuid in self.uuids:
            try:
                nv.nvmlDeviceGetMemoryInfo(nv.nvmlDeviceGetHandleByUUID(uuid))
            except nv.NVMLError as exc:
                sick[uuid] = f"NVML cannot read it ({exc})"
                continue
            xid = self._xids.get(uuid)
            if xid is not None and now - xid[1] < self.xid_quiet:
                sick[uuid] = f"fatal Xid {xid[0]} {now - xid[1]:.0f}s ago"
        return sick
