"""What this node's device plugin advertises to the kubelet, from one NVML inventory, and which
physical GPU each kubelet device ID stands for.

| resource                   | one device per                           | device ID               |
|----------------------------|------------------------------------------|-------------------------|
| `nvidia.com/gpu`           | GPU not in MIG mode                      | the GPU's UUID (`GPU-…`) |
| `nvidia.com/mig-<profile>` | MIG device of a GPU instance (mixed)     | its UUID (`MIG-…`)       |
| the GPU-share resource     | thousandth of a GPU not in MIG mode      | `<GPU UUID>::<000..999>` |

IDs are what NVIDIA's device plugin uses for the first two (its default `uuid` ID strategy), so
the actual allocations that the kubelet reports read the same on nodes that keep NVIDIA's plugin;
an ID with a `::<n>` suffix on `nvidia.com/gpu` (NVIDIA's time-slicing replicas) names its GPU.
A GPU instance with more than one compute instance is not advertised: the extender plans whole
GPU instances only.
"""

from __future__ import annotations

from collections.abc import Iterator
from dataclasses import dataclass

from extender.node import nvml
from scoring.model import GPU_RESOURCE, MILLI_PER_GPU, MigSlot, mig_profile, mig_resource

SHARE_SEPARATOR = "::"


@dataclass(frozen=True, slots=True)
class Device:
    """One kubelet device: the physical GPU behind it and, for a MIG device, its instance."""

    id: str
    resource: str
    gpu: int
    gpu_uuid: str
    memory_mib: int  # of the physical GPU
    mig: MigSlot | None = None


class Catalog:
    """The devices of one inventory, by resource. `share_resource` None: GPUs are not shared."""

    def __init__(self, inventory: nvml.Inventory, share_resource: str | None):
        self.share_resource = share_resource
        self.whole = {d.uuid: d for d in inventory.devices if not d.mig_enabled}
        self.by_index = {d.index: d for d in inventory.devices}
        self.mig: dict[str, Device] = {}
        self.notes: list[str] = []
        for device in inventory.devices:
            for gi in device.instances:
                if len(gi.device_uuids) != 1:
                    self.notes.append(f"GPU {device.index} MIG {gi.profile} at slice {gi.start}: "
                                      f"{len(gi.device_uuids)} MIG devices, not advertised (one per GPU instance needed)")
                    continue
                uuid = gi.device_uuids[0]
                self.mig[uuid] = Device(uuid, mig_resource(gi.profile), device.index, device.uuid, device.memory_mib,
                                        MigSlot(device.index, gi.profile, gi.start))
        # Every advertised device by resource and ID, made once: the kubelet's calls name
        # thousands of share units, each looked up several times.
        self._devices: dict[str, dict[str, Device]] = {}
        for mig in self.mig.values():
            self._devices.setdefault(mig.resource, {})[mig.id] = mig
        for gpu in self.whole.values():
            self._devices.setdefault(GPU_RESOURCE, {})[gpu.uuid] = Device(gpu.uuid, GPU_RESOURCE, gpu.index, gpu.uuid,
                                                                          gpu.memory_mib)
            if share_resource:
                units = self._devices.setdefault(share_resource, {})
                for k in range(MILLI_PER_GPU):
                    unit = share_id(gpu.uuid, k)
                    units[unit] = Device(unit, share_resource, gpu.index, gpu.uuid, gpu.memory_mib)

    def resources(self) -> list[str]:
        """Every resource with at least one device, sorted."""
        names = {d.resource for d in self.mig.values()}
        if self.whole:
            names.add(GPU_RESOURCE)
            if self.share_resource:
                names.add(self.share_resource)
        return sorted(names)

    def ids(self, resource: str) -> Iterator[str]:
        """The device IDs of `resource`, GPUs by index."""
        whole = sorted(self.whole.values(), key=lambda d: d.index)
        if resource == GPU_RESOURCE:
            yield from (d.uuid for d in whole)
        elif resource == self.share_resource:
            for d in whole:
                yield from (share_id(d.uuid, k) for k in range(MILLI_PER_GPU))
        else:
            yield from sorted(uuid for uuid, d in self.mig.items() if d.resource == resource)

    def device(self, resource: str, device_id: str) -> Device | None:
        """What `device_id` of `resource` stands for; None when this node has no such device."""
        return self._devices.get(resource, {}).get(device_id)

    def identify(self, resource: str, device_id: str) -> Device | None:
        """`device` for an ID another device plugin may have given: also a GPU by its index
        (NVIDIA's `index` ID strategy) or as a time-slicing replica `<UUID>::<n>`, and a MIG
        device as `nvidia.com/gpu` (its single strategy)."""
        device = self.device(resource, device_id)
        if device is not None or resource != GPU_RESOURCE:
            return device
        if device_id in self.mig:
            return self.mig[device_id]
        gpu = self.by_index.get(int(device_id)) if device_id.isdigit() else self.whole.get(
            device_id.partition(SHARE_SEPARATOR)[0])
        if gpu is not None and not gpu.mig_enabled:
            return Device(device_id, resource, gpu.index, gpu.uuid, gpu.memory_mib)
        return None

    def gpu_uuids(self) -> list[str]:
        """The physical GPUs behind every advertised device, by index (for health checks)."""
        return [self.by_index[i].uuid for i in sorted(self.by_index)]

    def is_ours(self, resource: str) -> bool:
        """Whether the plugin serves `resource` (it may have no device on this node)."""
        return resource in (GPU_RESOURCE, self.share_resource) or mig_profile(resource) is not None


def share_id(gpu_uuid: str, unit: int) -> str:
    return f"{gpu_uuid}{SHARE_SEPARATOR}{unit:03d}"
