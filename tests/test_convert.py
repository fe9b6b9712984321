"""Kubernetes objects -> scoring model (extender/convert.py)."""

from __future__ import annotations

import json
from datetime import datetime, timezone

import pytest

from extender import annotations as ann
from extender import convert
from scoring.config import PolicyConfig
from scoring.fragmentation import Shape
from scoring.model import GpuShare, MigSlot, MigStrategy, Plan, WorkloadClass
from scoring.sharing import SharingArgs

CONFIG = PolicyConfig()
SHARE = "gpu-extender.io/gpu-milli"
NOW = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc).timestamp()


def pod(limits=None, requests=None, init=None, annotations=None, node=None, phase="Running", **spec):
    containers = [{"name": "c", "resources": {k: v for k, v in (("limits", limits), ("requests", requests)) if v}}]
    body = {"containers": containers, **spec}
    if init:
        body["initContainers"] = [{"name": "i", "resources": {"limits": init}}]
    if node:
        body["nodeName"] = node
    return {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns", "annotations": annotations or {}},
            "spec": body, "status": {"phase": phase}}


def node(allocatable, labels=None, annotations=None, name="n1"):
    return {"kind": "Node", "metadata": {"name": name, "labels": labels or {}, "annotations": annotations or {}},
            "status": {"allocatable": allocatable}}


def agent(gpus=2, age=10.0, **extra):
    topology = {
        "gpus": [{"index": i, "uuid": f"GPU-{i}", "model": "NVIDIA H100 80GB HBM3", "memoryMiB": 81559}
                 for i in range(gpus)],
        "nvlink": [[0 if i == j else 18 for j in range(gpus)] for i in range(gpus)],
        "pcie": [[0 if i == j else 40 for j in range(gpus)] for i in range(gpus)],
    }
    beat = datetime.fromtimestamp(NOW - age, timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {ann.TOPOLOGY: json.dumps(topology), ann.HEARTBEAT: beat, **extra}


def test_gpu_requests_default_from_limits_and_init_containers_take_the_max():
    assert convert.gpu_resources(pod(limits={"nvidia.com/gpu": "2", "cpu": "4"}), SHARE) == {"nvidia.com/gpu": 2}
    assert convert.gpu_resources(pod(requests={"nvidia.com/mig-1g.10gb": "1"}), SHARE) == {
        "nvidia.com/mig-1g.10gb": 1
    }
    assert convert.gpu_resources(pod(limits={"nvidia.com/gpu": "1"}, init={"nvidia.com/gpu": "3"}), SHARE) == {
        "nvidia.com/gpu": 3
    }
    assert convert.gpu_resources(pod(limits={SHARE: "300", "example.com/other": "2"}), SHARE) == {SHARE: 300}
    with pytest.raises(convert.BadObject, match="whole number"):
        convert.gpu_resources(pod(limits={"nvidia.com/gpu": "500m"}), SHARE)


def test_pod_request_reads_class_model_and_mig_profiles():
    request = convert.pod_request(
        pod(limits={"nvidia.com/mig-1g.10gb.me": "1", "nvidia.com/gpu": "1"},
            annotations={ann.CLASS: "latency-critical", ann.MODEL: "m", ann.MODEL_SIZE: "16Gi",
                         ann.MODEL_LOCALITY: "required"}),
        CONFIG,
    )
    assert request.workload_class is WorkloadClass.LATENCY_CRITICAL
    assert request.gpus == 1 and dict(request.mig) == {"1g.10gb+me": 1}
    assert (request.model, request.model_size, request.model_required) == ("m", 16 * 2**30, True)
    by_priority = convert.pod_request(pod(limits={"nvidia.com/gpu": "1"}, priority=2_000_000), CONFIG)
    assert by_priority.workload_class is WorkloadClass.LATENCY_CRITICAL
    by_class = convert.pod_request(pod(limits={"nvidia.com/gpu": "1"}, priorityClassName="gpu-latency-critical"),
                                   CONFIG)
    assert by_class.workload_class is WorkloadClass.LATENCY_CRITICAL
    assert convert.pod_request(pod(limits={"nvidia.com/gpu": "1"}), CONFIG).workload_class is WorkloadClass.BATCH


@pytest.mark.parametrize(
    ("obj", "message"),
    [
        (pod(limits={"cpu": "1"}), "requests no nvidia.com/gpu"),
        (pod(limits={"nvidia.com/gpu": "1"}, annotations={ann.CLASS: "urgent"}), "is not one of"),
        (pod(limits={"nvidia.com/gpu": "1"}, annotations={ann.MODEL_LOCALITY: "maybe"}), "preferred or required"),
        (pod(limits={"nvidia.com/gpu": "1"}, annotations={ann.MODEL_SIZE: "lots"}), "not a quantity"),
        ({"kind": "Node", "metadata": {"name": "x"}}, "expected a Pod"),
    ],
)
def test_bad_pods_are_named_errors(obj, message):
    with pytest.raises(convert.BadObject, match=message):
        convert.pod_request(obj, CONFIG)


def test_usage_from_plans_and_unplanned_pods():
    plan = json.dumps({"node": "n1", "gpus": [1]})
    pods = [
        pod(limits={"nvidia.com/gpu": "1"}, node="n1", annotations={ann.PLAN: plan}),
        pod(limits={"nvidia.com/gpu": "1"}, node="n1"),  # placed without a plan
        pod(limits={"nvidia.com/gpu": "1"}, node="n1", phase="Succeeded"),  # finished: holds nothing
        pod(limits={"nvidia.com/gpu": "1"}, node="n1",
            annotations={ann.PLAN: json.dumps({"node": "other", "gpus": [0]})}),  # stale plan
        pod(limits={"nvidia.com/gpu": "1"}, node="n1", annotations={ann.PLAN: "{not json"}),
    ]
    gpu_node = convert.gpu_node(node({"nvidia.com/gpu": "2"}, annotations=agent()), pods, NOW, CONFIG)
    assert gpu_node.usage.gpus == frozenset({1})
    assert gpu_node.usage.unplanned == {"nvidia.com/gpu": 3}
    assert any("unreadable" in n for n in gpu_node.notes)


def test_mig_layout_single_strategy_and_planned_slots():
    layout = json.dumps([{"gpu": 0, "profile": "1g.5gb", "start": s, "size": 1} for s in range(7)])
    labels = {"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb", "nvidia.com/mig.strategy": "single",
              "nvidia.com/gpu.count": "1"}
    plan = json.dumps({"node": "n1", "mig": [{"gpu": 0, "profile": "1g.5gb", "start": 3}]})
    gpu_node = convert.gpu_node(
        node({"nvidia.com/gpu": "7"}, labels, agent(gpus=1, **{ann.MIG_LAYOUT: layout})),
        [pod(limits={"nvidia.com/gpu": "1"}, node="n1", annotations={ann.PLAN: plan})], NOW, CONFIG,
    )
    assert gpu_node.mig_strategy is MigStrategy.SINGLE and gpu_node.single_mig_profile == "1g.5gb"
    assert gpu_node.product == "NVIDIA-A100-SXM4-40GB" and gpu_node.gpu_count == 1
    assert len(gpu_node.mig_layout) == 7
    assert gpu_node.usage.mig == frozenset({MigSlot(0, "1g.5gb", 3)})
    assert not gpu_node.usage.unplanned


def test_old_or_broken_agent_data_degrades_to_allocatable():
    stale = convert.gpu_node(node({"nvidia.com/gpu": "2"}, annotations=agent(age=3600)), [], NOW, CONFIG)
    assert stale.gpus == () and stale.nvlink is None and "old" in stale.notes[0]
    missing = convert.gpu_node(node({"nvidia.com/gpu": "2"}), [], NOW, CONFIG)
    assert missing.gpus == () and "no agent heartbeat" in missing.notes[0]
    broken = agent(**{ann.MODEL_CACHE: "[1,2]"})
    broken[ann.TOPOLOGY] = json.dumps({"gpus": [{"index": 0, "uuid": "GPU-0"}], "nvlink": [[0, 1]], "pcie": [[0]]})
    degraded = convert.gpu_node(node({"nvidia.com/gpu": "1"}, annotations=broken), [], NOW, CONFIG)
    assert degraded.gpus == () and degraded.model_cache == {}
    assert any(ann.TOPOLOGY in n for n in degraded.notes) and any(ann.MODEL_CACHE in n for n in degraded.notes)
    fresh = convert.gpu_node(node({"nvidia.com/gpu": "2"}, annotations=agent()), [], NOW, CONFIG)
    assert [g.uuid for g in fresh.gpus] == ["GPU-0", "GPU-1"] and fresh.nvlink[0][1] == 18


def test_only_gpu_resources_are_kept_from_allocatable():
    gpu_node = convert.gpu_node(node({"cpu": "64", "nvidia.com/gpu": "8", "nvidia.com/mig-3g.40gb": "2"}),
                                [], NOW, CONFIG)
    assert dict(gpu_node.allocatable) == {"nvidia.com/gpu": 8, "nvidia.com/mig-3g.40gb": 2}


# --- GPU shares --------------------------------------------------------------------------------


def test_a_share_pod_request_reads_its_thousandths():
    request = convert.pod_request(pod(limits={SHARE: "300"}), CONFIG)
    assert request.gpu_milli == 300 and request.gpus == 0 and not request.mig
    two = {"kind": "Pod", "metadata": {"name": "p", "namespace": "ns"},
           "spec": {"containers": [{"name": "a", "resources": {"limits": {SHARE: "200"}}},
                                   {"name": "b", "resources": {"requests": {SHARE: "300"}}}]}}
    assert convert.pod_request(two, CONFIG).gpu_milli == 500  # one share of one GPU per pod, as counted


@pytest.mark.parametrize(
    ("limits", "message"),
    [
        ({SHARE: "1000"}, "not a share of one GPU"),
        ({SHARE: "2500"}, "not a share of one GPU"),
        ({SHARE: "300", "nvidia.com/gpu": "1"}, "asks for no other GPU resource"),
        ({SHARE: "300", "nvidia.com/mig-1g.10gb": "1"}, "asks for no other GPU resource"),
        ({SHARE: "0.5"}, "whole number"),
    ],
)
def test_bad_share_requests_are_named_errors(limits, message):
    with pytest.raises(convert.BadObject, match=message):
        convert.pod_request(pod(limits=limits), CONFIG)


def test_a_renamed_share_resource_is_read_and_the_default_one_ignored():
    renamed = PolicyConfig(sharing=SharingArgs("example.com/vgpu"))
    assert convert.pod_request(pod(limits={"example.com/vgpu": "250"}), renamed).gpu_milli == 250
    with pytest.raises(convert.BadObject, match="requests no nvidia.com/gpu, nvidia.com/mig-\\* or example.com/vgpu"):
        convert.pod_request(pod(limits={SHARE: "250"}), renamed)
    n = convert.gpu_node(node({"example.com/vgpu": "2000", SHARE: "2000"}), [], NOW, renamed)
    assert dict(n.allocatable) == {"example.com/vgpu": 2000}


def test_usage_from_share_plans_and_share_pods_without_one():
    def share(milli: str, plan: dict | None = None, node_name: str = "n1"):
        notes = {ann.PLAN: json.dumps({"node": node_name, **plan})} if plan else {}
        return pod(limits={SHARE: milli}, node="n1", annotations=notes)

    pods = [
        share("300", {"share": {"gpu": 1, "milli": 300}}),
        share("200", {"share": {"gpu": 1, "milli": 200}}),
        share("400", {"share": {"gpu": 0, "milli": 400}}),
        share("100"),  # placed without a plan
        share("50", {"share": {"gpu": 0, "milli": 50}}, node_name="other"),  # stale plan: GPU unknown
        pod(limits={SHARE: "500"}, node="n1", phase="Succeeded",
            annotations={ann.PLAN: json.dumps({"node": "n1", "share": {"gpu": 0, "milli": 500}})}),
    ]
    gpu_node = convert.gpu_node(node({"nvidia.com/gpu": "2", SHARE: "2000"}, annotations=agent()), pods, NOW, CONFIG)
    assert dict(gpu_node.allocatable) == {"nvidia.com/gpu": 2, SHARE: 2000}
    assert dict(gpu_node.usage.shared) == {0: 400, 1: 500}
    assert gpu_node.usage.unplanned == {SHARE: 150}
    assert not gpu_node.usage.gpus


def test_share_plans_round_trip_through_the_annotation():
    gpu_node = convert.gpu_node(node({SHARE: "2000"}, annotations=agent()), [], NOW, CONFIG)
    plan = Plan(share=GpuShare(1, 250))
    data = ann.plan_to_dict(plan, gpu_node)
    assert data == {"node": "n1", "gpus": [], "mig": [], "share": {"gpu": 1, "milli": 250, "gpuUuid": "GPU-1"}}
    assert ann.plan_from_dict(json.loads(json.dumps(data))) == ("n1", plan)
    assert "share" not in ann.plan_to_dict(Plan(gpus=(0,)), gpu_node)
    for bad in ({"gpu": 0, "milli": 1000}, {"gpu": 0}, {"gpu": "0", "milli": 5}, [0, 5], {"gpu": True, "milli": 5}):
        with pytest.raises(ValueError, match="share"):
            ann.plan_from_dict({"node": "n1", "share": bad})


def test_slim_objects_keep_what_shares_need():
    kept = convert.slim_node(node({"cpu": "8", SHARE: "8000", "example.com/x": "1"}), SHARE)
    assert kept["status"]["allocatable"] == {SHARE: "8000"}
    assert convert.asks_for_gpus(pod(limits={SHARE: "10"}), SHARE)
    assert not convert.asks_for_gpus(pod(limits={SHARE: "10"}), "example.com/vgpu")


def test_pod_shapes_for_the_target_workload():
    h100 = {"nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3"}
    assert convert.shape(pod(limits={"nvidia.com/gpu": "2"}), SHARE) == Shape(2, 1000)
    assert convert.shape(pod(limits={SHARE: "300"}, phase="Pending"), SHARE) == Shape(1, 300)
    assert convert.shape(pod(limits={"nvidia.com/gpu": "1"}, nodeSelector=h100), SHARE) == Shape(
        1, 1000, models=frozenset({"NVIDIA-H100-80GB-HBM3"}))
    # A slimmed pod keeps the product it selects, and nothing else of its nodeSelector.
    slim = convert.slim_pod(pod(limits={SHARE: "500"}, nodeSelector={**h100, "zone": "a"}))
    assert slim["spec"]["nodeSelector"] == h100
    assert convert.shape(slim, SHARE) == Shape(1, 500, models=frozenset({"NVIDIA-H100-80GB-HBM3"}))


@pytest.mark.parametrize("obj", [
    pod(limits={"nvidia.com/mig-1g.10gb": "1"}),  # MIG only
    pod(limits={"nvidia.com/gpu": "1"}, phase="Succeeded"),  # finished
    pod(limits={"nvidia.com/gpu": "1"}, nodeSelector={"nvidia.com/gpu.product": "NVIDIA-A100-SXM4-40GB-MIG-1g.5gb"}),
    pod(limits={SHARE: "1000"}),  # no share
    pod(limits={SHARE: "300", "nvidia.com/gpu": "1"}),  # no share
    pod(limits={"nvidia.com/gpu": "lots"}),  # unreadable
    pod(limits={"cpu": "4"}),  # no GPU
])
def test_pods_in_no_shape(obj):
    assert convert.shape(obj, SHARE) is None


def test_gpu_models_from_the_node_selector_and_the_required_node_affinity():
    def affinity(*terms):
        return {"nodeAffinity": {"requiredDuringSchedulingIgnoredDuringExecution": {"nodeSelectorTerms": list(terms)}}}

    def product_in(*values, operator="In"):
        return {"matchExpressions": [{"key": "nvidia.com/gpu.product", "operator": operator, "values": list(values)}]}

    v100s = affinity(product_in("Tesla-V100-SXM2-16GB", "Tesla-V100-SXM2-32GB"))
    one_gpu = {"nvidia.com/gpu": "1"}
    assert convert.shape(pod(limits=one_gpu, affinity=v100s), SHARE).models == {
        "Tesla-V100-SXM2-16GB", "Tesla-V100-SXM2-32GB"}
    # Terms are ORed: a term that does not name products lets the pod run on any.
    zone = {"matchExpressions": [{"key": "zone", "operator": "In", "values": ["a"]}]}
    assert convert.gpu_models(pod(affinity=affinity(product_in("A"), zone))) == frozenset()
    assert convert.gpu_models(pod(affinity=affinity(product_in("A"), product_in("B")))) == {"A", "B"}
    assert convert.gpu_models(pod(affinity=affinity(product_in("A", operator="NotIn")))) == frozenset()
    # With a nodeSelector too, both must hold.
    both = pod(nodeSelector={"nvidia.com/gpu.product": "A"}, affinity=affinity(product_in("A", "B")))
    assert convert.gpu_models(both) == {"A"}
    assert convert.gpu_models(pod(affinity=affinity(product_in("A-MIG-1g.5gb")))) is None
    # The slimmed pod keeps what gpu_models reads.
    assert convert.shape(convert.slim_pod(pod(limits=one_gpu, affinity=v100s)), SHARE).models == {
        "Tesla-V100-SXM2-16GB", "Tesla-V100-SXM2-32GB"}
