"""What a container is told about the devices it was allocated: the environment, CDI device names
and mounts of one Allocate answer.

Whole GPUs and MIG devices: `NVIDIA_VISIBLE_DEVICES` lists their UUIDs, in the order allocated;
the NVIDIA container toolkit reads it and puts exactly those devices into the container. With CDI
on (`cdi`), the same devices are also named as CDI devices `nvidia.com/gpu=<UUID>`, the names
`nvidia-ctk cdi generate --device-name-strategy=uuid` writes, for runtimes that inject devices
through CDI.

A GPU share: the one GPU's UUID as above, and the share's limits
- in the form CUDA MPS clients honour: `CUDA_MPS_ACTIVE_THREAD_PERCENTAGE` (the share's
  thousandths / 10, at least 1) and `CUDA_MPS_PINNED_DEVICE_MEM_LIMIT` (`0=<MiB>M`: device 0 is
  the one GPU the container sees); with `mps_pipe_directory` set, that host directory is mounted
  at the same path and `CUDA_MPS_PIPE_DIRECTORY` names it, so the client finds the node's MPS
  control daemon;
- as plain figures an application can read: `GPU_EXTENDER_GPU_MILLI`, `GPU_EXTENDER_GPU_MEMORY_BYTES`
  (the share of the GPU's memory) and `GPU_EXTENDER_GPU_UUID`.
Only the choice of GPU is enforced by the node. The caps hold only where an MPS control daemon runs
on the node and the container reaches it; without one they are figures, not limits.
"""

from __future__ import annotations

from dataclasses import dataclass

from extender.node.devices import Device
from scoring.model import MILLI_PER_GPU

MIB = 2**20
CDI_KIND = "nvidia.com/gpu"


@dataclass(frozen=True)
class ContainerDevices:
    envs: dict[str, str]
    cdi_devices: tuple[str, ...] = ()
    mounts: tuple[tuple[str, str], ...] = ()  # (host path, container path), read-only


def for_devices(devices: list[Device], *, share: bool, cdi: bool, mps_pipe_directory: str | None) -> ContainerDevices:
    """The Allocate answer for one container's devices of one resource (`share`: the GPU-share
    resource, all of one GPU)."""
    if not share:
        uuids = [d.id for d in devices]
        return ContainerDevices({"NVIDIA_VISIBLE_DEVICES": ",".join(uuids)},
                                tuple(f"{CDI_KIND}={u}" for u in uuids) if cdi else ())
    gpu = devices[0]
    milli = len(devices)
    memory = gpu.memory_mib * MIB * milli // MILLI_PER_GPU
    envs = {
        "NVIDIA_VISIBLE_DEVICES": gpu.gpu_uuid,
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": str(max(1, milli // 10)),
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory // MIB}M",
        "GPU_EXTENDER_GPU_UUID": gpu.gpu_uuid,
        "GPU_EXTENDER_GPU_MILLI": str(milli),
        "GPU_EXTENDER_GPU_MEMORY_BYTES": str(memory),
    }
    mounts: tuple[tuple[str, str], ...] = ()
    if mps_pipe_directory:
        envs["CUDA_MPS_PIPE_DIRECTORY"] = mps_pipe_directory
        mounts = ((mps_pipe_directory, mps_pipe_directory),)
    return ContainerDevices(envs, (f"{CDI_KIND}={gpu.gpu_uuid}",) if cdi else (), mounts)
