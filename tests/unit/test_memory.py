"""Memory fit: the model against the memory of the planned devices (scoring/memory.py)."""

from __future__ import annotations

from scoring import memory, policy
from scoring.config import PolicyConfig
from scoring.model import GPU_RESOURCE, Gpu, GpuNode, GpuShare, MigStrategy, Plan, PodRequest, WorkloadClass

GB = 10**9
LLAMA_70B = 141 * GB  # 70.6 billion parameters at 16 bits
H100 = tuple(Gpu(i, f"GPU-{i}", "NVIDIA H100 80GB HBM3", 81559) for i in range(8))


def pod(**wants) -> PodRequest:
    return PodRequest("ns", "p", WorkloadClass.LATENCY_CRITICAL, model="llama-70b", **wants)


def test_whole_gpus_offer_their_inventory_memory():
    node = GpuNode("h100", allocatable={GPU_RESOURCE: 8}, gpus=H100)
    two, one = memory.evaluate(node, pod(gpus=2), Plan(gpus=(0, 1)), LLAMA_70B), \
        memory.evaluate(node, pod(gpus=1), Plan(gpus=(0,)), LLAMA_70B)
    assert two.feasible and not two.applicable and "fits 171.0 GB" in two.reason
    assert not one.feasible and one.unresolvable
    assert one.reason == "model of 141.0 GB does not fit the 85.5 GB of the planned devices"


def test_without_inventory_the_gfd_label_gives_the_memory_and_without_either_nothing_is_said():
    labelled = GpuNode("t4", allocatable={GPU_RESOURCE: 4}, labels={"nvidia.com/gpu.memory": "15360"})
    assert not memory.evaluate(labelled, pod(gpus=4), Plan(), LLAMA_70B).feasible  # 4 x 15 GiB
    assert memory.evaluate(labelled, pod(gpus=4), Plan(), 16 * GB).feasible
    bare = GpuNode("bare", allocatable={GPU_RESOURCE: 4})
    unknown = memory.evaluate(bare, pod(gpus=4), Plan(), LLAMA_70B)
    assert unknown.feasible and "unknown" in unknown.reason
    assert memory.evaluate(labelled, pod(gpus=4), Plan(), 0).reason == "model size unknown"


def test_mig_instances_offer_what_their_profile_names_and_a_share_its_part_of_the_gpu():
    mixed = GpuNode("a100", allocatable={"nvidia.com/mig-1g.5gb": 7}, gpus=H100[:1])
    assert not memory.evaluate(mixed, pod(mig={"1g.5gb": 4}), Plan(), LLAMA_70B).feasible
    assert memory.evaluate(mixed, pod(mig={"1g.5gb": 4}), Plan(), 19 * GB).feasible
    single = GpuNode("single", allocatable={GPU_RESOURCE: 7}, mig_strategy=MigStrategy.SINGLE,
                     single_mig_profile="3g.40gb")
    assert memory.planned_memory(single, pod(gpus=2), Plan()) == 80 * GB
    node = GpuNode("h100", allocatable={GPU_RESOURCE: 8}, gpus=H100)
    assert memory.planned_memory(node, pod(gpu_milli=250), Plan(share=GpuShare(3, 250))) == 81559 * 2**20 // 4


def test_the_policy_rejects_a_70b_model_on_four_small_mig_instances():
    mixed = GpuNode("a100-mig", allocatable={"nvidia.com/mig-1g.5gb": 7}, product="NVIDIA-A100-SXM4-40GB",
                    mig_strategy=MigStrategy.MIXED)
    request = pod(mig={"1g.5gb": 4}, model_size=LLAMA_70B)
    (decision,) = policy.evaluate([mixed], request, {}, 0.0, PolicyConfig())
    assert not decision.feasible and decision.unresolvable
    assert "does not fit the 20.0 GB" in decision.reason
