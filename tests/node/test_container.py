"""What a container is told about its devices (the Allocate answer's environment, CDI names, mounts)."""

from __future__ import annotations

from extender.node.container import for_devices
from extender.node.devices import Device, share_id
from scoring.model import MigSlot

GPU = "GPU-aaaa"
MEMORY_MIB = 81559


def whole(i: int) -> Device:
    return Device(f"GPU-{i}", "nvidia.com/gpu", i, f"GPU-{i}", MEMORY_MIB)


def test_whole_gpus_are_named_by_uuid_in_allocation_order_and_as_cdi_devices_when_asked():
    devices = [whole(5), whole(4)]
    plain = for_devices(devices, share=False, cdi=False, mps_pipe_directory=None)
    assert plain.envs == {"NVIDIA_VISIBLE_DEVICES": "GPU-5,GPU-4"} and plain.cdi_devices == ()
    with_cdi = for_devices(devices, share=False, cdi=True, mps_pipe_directory=None)
    assert with_cdi.cdi_devices == ("nvidia.com/gpu=GPU-5", "nvidia.com/gpu=GPU-4")


def test_a_mig_device_is_named_by_its_own_uuid():
    mig = Device("MIG-1234", "nvidia.com/mig-3g.40gb", 0, GPU, MEMORY_MIB, MigSlot(0, "3g.40gb", 4))
    assert for_devices([mig], share=False, cdi=True, mps_pipe_directory=None).envs == {"NVIDIA_VISIBLE_DEVICES": "MIG-1234"}


def test_a_share_gets_its_gpu_and_its_limits_in_mps_form_and_as_plain_figures():
    units = [Device(share_id(GPU, k), "gpu-extender.io/gpu-milli", 2, GPU, MEMORY_MIB) for k in range(250)]
    answer = for_devices(units, share=True, cdi=False, mps_pipe_directory=None)
    memory = MEMORY_MIB * 2**20 // 4
    assert answer.envs == {
        "NVIDIA_VISIBLE_DEVICES": GPU,
        "CUDA_MPS_ACTIVE_THREAD_PERCENTAGE": "25",
        "CUDA_MPS_PINNED_DEVICE_MEM_LIMIT": f"0={memory // 2**20}M",
        "GPU_EXTENDER_GPU_UUID": GPU,
        "GPU_EXTENDER_GPU_MILLI": "250",
        "GPU_EXTENDER_GPU_MEMORY_BYTES": str(memory),
    }
    assert answer.mounts == ()


def test_a_tiny_share_still_gets_one_percent_and_the_mps_pipe_when_the_node_runs_mps():
    units = [Device(share_id(GPU, 0), "gpu-extender.io/gpu-milli", 0, GPU, MEMORY_MIB)]
    answer = for_devices(units, share=True, cdi=True, mps_pipe_directory="/run/nvidia/mps")
    assert answer.envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "1"
    assert answer.envs["CUDA_MPS_PIPE_DIRECTORY"] == "/run/nvidia/mps"
    assert answer.mounts == (("/run/nvidia/mps", "/run/nvidia/mps"),)
    assert answer.cdi_devices == (f"nvidia.com/gpu={GPU}",)
