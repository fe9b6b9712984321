"""The node carries out the plan, against a real kubelet (tests/e2e/kubelet.py): pods go through
the real kube-scheduler and the extender (shipped configuration) to a kubelet whose node runs the
agent with its device plugin (`gpu-extender agent` on the fake NVML of an 8x H100 with GPU 0 in
MIG mode, a process of its own, as the agent's service account), and the fake runtime records
what each container was created with. Also: a burst of 20 pods, a node that keeps another device
plugin (read-back only), restarts of the agent and of the kubelet, and plans the node cannot
follow."""

from __future__ import annotations

import json
from collections import Counter
from concurrent.futures import ThreadPoolExecutor

import grpc
import httpx
import pytest
from kubernetes import client
from prometheus_client.parser import text_string_to_metric_families

from extender import annotations as ann
from extender import convert
from extender.node import nvml
from extender.node.devices import Catalog
from extender.node.kubeletapi.podresources.v1 import api_pb2 as podresources_api
from extender.node.kubeletapi.podresources.v1 import api_pb2_grpc as podresources_grpc
from extender.node.podresources import PodResources, allocations
from tests.agent import machines
from tests.agent.fake_pynvml import mig_uuid
from tests.e2e.conftest import MANIFESTS, Stack, wait_until
from tests.e2e.kubelet import KubeletNode, wait_running
from tests.node import fake_agent
from tests.node.fake_agent import AgentProcess
from tests.node.standin_plugin import StandIn

MACHINE = "hgx_h100:0=3g.40gb@0+3g.40gb@4"  # GPU 0 in MIG mode: 7 whole GPUs, two 3g.40gb
SHARE = "gpu-extender.io/gpu-milli"
MIG = "nvidia.com/mig-3g.40gb"
NS = "dp"
GPU = [machines.uuid("h100", i) for i in range(8)]
CATALOG = Catalog(nvml.read_inventory(fake_agent.machine(MACHINE)), SHARE)
GFD = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
       "nvidia.com/gpu.count": "8", "nvidia.com/mig.strategy": "mixed"}


def agent(stack: Stack, node: KubeletNode, *args: str, machine: str = MACHINE) -> AgentProcess:
    return AgentProcess(node, stack.plane.kubeconfig_for("gpu-extender-agent"), *args, machine_spec=machine)


@pytest.fixture(scope="module")
def stack(tmp_path_factory):
    stack = Stack(tmp_path_factory.mktemp("dp"))
    stack.plane.apply(MANIFESTS / "agent.yaml")
    stack.plane.namespace(NS)
    yield stack
    stack.stop()


@pytest.fixture
def plugin_node(stack, tmp_path_factory):
    """plugin_node(name) -> (a KubeletNode that opted into our device plugin, its agent), every
    resource registered; all stopped afterwards."""
    started = []

    def start(name: str) -> tuple[KubeletNode, AgentProcess]:
        node = KubeletNode(stack.plane, name, tmp_path_factory.mktemp(name),
                           labels={**GFD, ann.DEVICE_PLUGIN_LABEL: "true"})
        started_agent = agent(stack, node, "--cdi")
        started.append((node, started_agent))
        node.wait_allocatable("nvidia.com/gpu", 7)
        node.wait_allocatable(MIG, 2)
        node.wait_allocatable(SHARE, 7000)
        wait_until(lambda: ann.TOPOLOGY in (node.node().metadata.annotations or {}), "the agent's inventory")
        return node, started_agent

    yield start
    for node, running in started:
        running.stop()
        node.stop()


def pod(name: str, node: str, limits: dict[str, int], latency_critical: bool = False,
        notes: dict[str, str] | None = None, scheduled: bool = True) -> dict:
    """A pod for kube-scheduler (pinned to `node` by its hostname label), or bound to `node` by
    hand (`scheduled=False`: no scheduler, no plan unless `notes` has one)."""
    spec: dict = {"terminationGracePeriodSeconds": 1, "automountServiceAccountToken": False,
                  "containers": [{"name": "main", "image": "registry.example/app:1",
                                  "resources": {"limits": {k: str(v) for k, v in limits.items()}}}]}
    if scheduled:
        spec |= {"schedulerName": "gpu-scheduler", "nodeSelector": {"kubernetes.io/hostname": node},
                 "priorityClassName": "gpu-latency-critical" if latency_critical else "gpu-batch"}
    else:
        spec["nodeName"] = node
    return {"metadata": {"name": name, "namespace": NS, "annotations": notes or {}}, "spec": spec}


def create(stack: Stack, *pods: dict) -> list[client.V1Pod]:
    with ThreadPoolExecutor(max_workers=len(pods)) as pool:  # all at once
        created = list(pool.map(lambda p: stack.plane.core.create_namespaced_pod(NS, p), pods))
    return [wait_running(stack.plane.core, p.metadata.name, NS, 120) for p in created]


def envs(node: KubeletNode, pod: client.V1Pod) -> dict[str, str]:
    (record,) = wait_until(lambda: node.containers_of(pod.metadata.uid), f"{pod.metadata.name}'s container")
    return {e["key"]: e["value"] for e in record["envs"]}


def plan(pod: client.V1Pod) -> dict:
    return json.loads(pod.metadata.annotations[ann.PLAN])


def published(node: KubeletNode) -> dict:
    return json.loads((node.node().metadata.annotations or {}).get(ann.ALLOCATIONS, "{}"))


def read_back(node: KubeletNode) -> dict:
    """What the kubelet's PodResources API says now, in the allocations annotation's form."""
    held = PodResources(node.pod_resources_socket).list(lambda r: convert.is_gpu_resource(r, SHARE))
    return allocations(held, CATALOG)


def kubelet_allocatable(node: KubeletNode) -> dict[str, int]:
    """Devices the kubelet itself holds allocatable now, by resource (PodResources
    GetAllocatableResources): a resource whose plugin has not registered has none."""
    try:
        with grpc.insecure_channel(f"unix://{node.pod_resources_socket}") as channel:
            answer = podresources_grpc.PodResourcesListerStub(channel).GetAllocatableResources(
                podresources_api.AllocatableResourcesRequest(), timeout=5)
    except grpc.RpcError:
        return {}  # not serving yet
    counts: Counter[str] = Counter()
    for devices in answer.devices:
        counts[devices.resource_name] += len(devices.device_ids)
    return dict(counts)


def mismatch_metrics(stack: Stack) -> tuple[float, float]:
    """The extender's (gpu_extender_allocation_mismatches_total, gpu_extender_allocation_mismatched_pods)."""
    families = {f.name: f for f in text_string_to_metric_families(
        httpx.get(f"http://127.0.0.1:{stack.extender.port}/metrics").text)}
    return (families["gpu_extender_allocation_mismatches"].samples[0].value,
            families["gpu_extender_allocation_mismatched_pods"].samples[0].value)


def events(stack: Stack, pod: client.V1Pod, reason: str) -> list[client.CoreV1Event]:
    return [e for e in stack.plane.core.list_namespaced_event(NS).items
            if e.involved_object.uid == pod.metadata.uid and e.reason == reason]


def test_the_containers_get_exactly_the_planned_gpus_mig_instance_and_shares(stack, plugin_node):
    node, _ = plugin_node("dp-plan")
    tp4, embed, train = create(
        stack, pod("tp4", node.name, {"nvidia.com/gpu": 4}, latency_critical=True),
        pod("embed", node.name, {MIG: 1}, latency_critical=True), pod("train", node.name, {"nvidia.com/gpu": 2}))
    shares = create(stack, *(pod(f"nb-{i}", node.name, {SHARE: 300}) for i in range(3)))  # one GPU is left

    assert envs(node, tp4)["NVIDIA_VISIBLE_DEVICES"].split(",") == plan(tp4)["uuids"]
    (record,) = node.containers_of(tp4.metadata.uid)
    assert record["cdi_devices"] == [f"nvidia.com/gpu={u}" for u in plan(tp4)["uuids"]]

    (slot,) = plan(embed)["mig"]
    assert envs(node, embed)["NVIDIA_VISIBLE_DEVICES"] == mig_uuid(GPU[slot["gpu"]], slot["start"])

    assert envs(node, train)["NVIDIA_VISIBLE_DEVICES"].split(",") == plan(train)["uuids"]
    gpus = {plan(p)["share"]["gpuUuid"] for p in shares}
    assert len(gpus) == 1 and not gpus & {*plan(tp4)["uuids"], *plan(train)["uuids"]}
    for share in shares:
        got = envs(node, share)
        assert got["NVIDIA_VISIBLE_DEVICES"] == got["GPU_EXTENDER_GPU_UUID"] == plan(share)["share"]["gpuUuid"]
        assert got["GPU_EXTENDER_GPU_MILLI"] == "300" and got["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "30"
        assert int(got["GPU_EXTENDER_GPU_MEMORY_BYTES"]) == 81559 * 2**20 * 300 // 1000

    expected = read_back(node)
    assert expected[f"{NS}/tp4"] == {"gpus": plan(tp4)["gpus"]}
    wait_until(lambda: published(node) == expected, "the agent to publish what the kubelet allocated")
    assert all(not events(stack, p, "GPUAllocationMismatch") for p in (tp4, embed, train, *shares))


def test_a_burst_of_20_pods_gets_devices_of_their_shapes_and_none_twice(stack, plugin_node):
    node, _ = plugin_node("dp-burst")
    shapes = [{"nvidia.com/gpu": 1}] * 3 + [{"nvidia.com/gpu": 2}] + [{MIG: 1}] * 2 + [{SHARE: 125}] * 14
    pods = create(stack, *(pod(f"burst-{i}", node.name, limits) for i, limits in enumerate(shapes)))
    whole: list[str] = []
    mig: list[str] = []
    shared: Counter[str] = Counter()
    for created, limits in zip(pods, shapes):
        got = envs(node, created)
        devices = got["NVIDIA_VISIBLE_DEVICES"].split(",")
        if "nvidia.com/gpu" in limits:
            assert len(devices) == limits["nvidia.com/gpu"] and all(d in GPU for d in devices)
            whole += devices
        elif MIG in limits:
            assert len(devices) == 1 and devices[0].startswith("MIG-")
            mig += devices
        else:
            assert got["GPU_EXTENDER_GPU_MILLI"] == "125" and len(devices) == 1
            shared[devices[0]] += 125
    assert len(whole) == len(set(whole)) == 5 and len(mig) == len(set(mig)) == 2
    assert not set(whole) & set(shared) and all(milli <= 1000 for milli in shared.values())
    expected = read_back(node)
    assert len(expected) == 20
    wait_until(lambda: published(node) == expected, "the agent to publish what the kubelet allocated")


def test_after_agent_and_kubelet_restarts_allocations_survive_and_nothing_is_handed_out_twice(stack, plugin_node):
    node, node_agent = plugin_node("dp-restart")
    first = create(stack, pod("before-a", node.name, {"nvidia.com/gpu": 2}), pod("before-b", node.name, {SHARE: 500}))
    held = read_back(node)

    node_agent.kill()  # the DaemonSet pod dies; the kubelet keeps its checkpoint
    wait_until(lambda: int(node.node().status.allocatable.get("nvidia.com/gpu", 0)) == 0,
               "the kubelet to see the plugin gone", 60)
    node_agent.start()
    node.wait_allocatable("nvidia.com/gpu", 7)
    assert read_back(node) == held
    middle = create(stack, pod("after-agent", node.name, {"nvidia.com/gpu": 3}))

    node.restart_kubelet()  # removes every socket in its directory: the plugin registers again
    # The Node's status still shows what the kubelet reported before it restarted: ask the kubelet.
    wait_until(lambda: kubelet_allocatable(node) == {"nvidia.com/gpu": 7, SHARE: 7000, MIG: 2},
               "the plugin to register with the restarted kubelet", 60)
    last = create(stack, pod("after-kubelet", node.name, {"nvidia.com/gpu": 1}), pod("after-kubelet-share", node.name, {SHARE: 500}))

    whole = [d for p in (first[0], *middle, last[0]) for d in envs(node, p)["NVIDIA_VISIBLE_DEVICES"].split(",")]
    assert len(whole) == len(set(whole)) == 6  # the seventh whole GPU holds the two shares
    share_gpus = {envs(node, p)["NVIDIA_VISIBLE_DEVICES"] for p in (first[1], last[1])}
    assert not share_gpus & set(whole)
    for p in (*first, *middle, *last):
        assert stack.plane.core.read_namespaced_pod(p.metadata.name, NS).status.phase == "Running"
    now = read_back(node)
    assert all(now[key] == devices for key, devices in held.items())  # the first pods kept their devices


def test_plans_the_node_cannot_follow_get_an_event_and_free_devices(stack, plugin_node):
    node, _ = plugin_node("dp-bad")
    missing, garbled, stale = create(
        stack,
        pod("no-plan", node.name, {"nvidia.com/gpu": 1}, scheduled=False),
        pod("garbled", node.name, {"nvidia.com/gpu": 1}, scheduled=False, notes={ann.PLAN: "{not json"}),
        pod("stale", node.name, {"nvidia.com/gpu": 1}, scheduled=False,
            notes={ann.PLAN: json.dumps({"node": node.name, "gpus": [3], "uuids": ["GPU-replaced"]})}))
    for created, reason, says in ((missing, "GPUPlanMissing", "bound by default-scheduler"),
                                  (garbled, "GPUPlanUnreadable", "cannot be read"),
                                  (stale, "GPUPlanStale", "GPU-replaced")):
        (event,) = wait_until(lambda: events(stack, created, reason), f"a {reason} event")
        assert event.type == "Warning" and says in event.message and event.source.component == "gpu-extender-agent"
    gpus = [envs(node, p)["NVIDIA_VISIBLE_DEVICES"] for p in (missing, garbled, stale)]
    assert len(set(gpus)) == 3 and set(gpus) <= set(GPU[1:])


def test_a_node_with_another_device_plugin_is_read_back_and_the_view_corrects_itself(stack, tmp_path_factory):
    node = KubeletNode(stack.plane, "standin", tmp_path_factory.mktemp("standin"), labels=GFD)
    reading = agent(stack, node, "--device-plugin", "off", machine="hgx_h100")
    standin = None
    try:
        standin = StandIn(node.device_plugin_dir, "nvidia.com/gpu", GPU)
        node.wait_allocatable("nvidia.com/gpu", 8)
        wait_until(lambda: ann.TOPOLOGY in (node.node().metadata.annotations or {}), "the agent's inventory")
        before = mismatch_metrics(stack)
        (first,) = create(stack, pod("first", node.name, {"nvidia.com/gpu": 1}))
        planned = plan(first)["gpus"]
        assert planned != [7], "the stand-in gives GPU 7 first: the test needs a plan that differs"
        assert envs(node, first)["NVIDIA_VISIBLE_DEVICES"] == GPU[7]

        (event,) = wait_until(lambda: events(stack, first, "GPUAllocationMismatch"), "the mismatch event")
        assert event.type == "Warning" and f"planned GPU {planned[0]}, the kubelet allocated GPU 7" in event.message
        after = mismatch_metrics(stack)
        assert (after[0] - before[0], after[1] - before[1]) == (1, 1)  # reported once, one pod now

        # Seven GPUs are free: the view must know which. Still counting the first pod's plan, it
        # would plan GPU 7, which the first pod really holds, and leave its planned GPU out.
        (second,) = create(stack, pod("second", node.name, {"nvidia.com/gpu": 7}))
        assert plan(second)["gpus"] == list(range(7))
        assert sorted(envs(node, second)["NVIDIA_VISIBLE_DEVICES"].split(",")) == GPU[:7]
        assert not events(stack, second, "GPUAllocationMismatch")
    finally:
        if standin:
            standin.stop()
        reading.stop()
        node.stop()
