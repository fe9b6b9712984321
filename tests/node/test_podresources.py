"""Reading back what the kubelet allocated: the PodResources v1 List over real gRPC (a kubelet's
PodResourcesLister stand-in here; the real kubelet in tests/e2e/test_device_plugin.py), and the
allocations annotation built from it, for our plugin's IDs and NVIDIA's."""

from __future__ import annotations

import pytest

from extender import convert
from extender.node import nvml
from extender.node.devices import Catalog
from extender.node.kubeletapi.podresources.v1 import api_pb2 as api
from extender.node.podresources import PodResources, PodResourcesError, allocations
from tests.agent import machines
from tests.agent.fake_pynvml import mig_uuid
from tests.node.kubelet_standins import Lister

SHARE = "gpu-extender.io/gpu-milli"
CATALOG = Catalog(nvml.read_inventory(machines.hgx_h100(mig={0: [("3g.40gb", 0), ("3g.40gb", 4)]})), SHARE)
GPU = [machines.uuid("h100", i) for i in range(8)]


def container(name: str, **devices: list[str]) -> api.ContainerResources:
    resources = {"gpu": "nvidia.com/gpu", "share": SHARE, "mig": "nvidia.com/mig-3g.40gb", "cpu": "example.com/fpga"}
    return api.ContainerResources(name=name, devices=[
        api.ContainerDevices(resource_name=resources[kind], device_ids=ids) for kind, ids in devices.items()])


@pytest.fixture
def kubelet(tmp_path):
    def serve(pods: list[api.PodResources]) -> PodResources:
        listers.append(Lister(tmp_path / "kubelet.sock", pods))
        return PodResources(tmp_path / "kubelet.sock")

    listers: list[Lister] = []
    yield serve
    for lister in listers:
        lister.server.stop(0)


def gpu_resources(resource: str) -> bool:
    return convert.is_gpu_resource(resource, SHARE)


def test_each_pod_s_devices_in_the_plan_s_form(kubelet):
    reader = kubelet([
        api.PodResources(name="tp4", namespace="infer", containers=[
            container("server", gpu=GPU[4:6]), container("sidecar", gpu=GPU[6:8], cpu=["fpga0"])]),
        api.PodResources(name="nb", namespace="lab", containers=[
            container("nb", share=[f"{GPU[3]}::{k:03d}" for k in range(250)])]),
        api.PodResources(name="embed", namespace="infer", containers=[container("e", mig=[mig_uuid(GPU[0], 4)])]),
        api.PodResources(name="web", namespace="default", containers=[container("web")]),
    ])
    held = reader.list(gpu_resources)
    assert held[("infer/tp4", "sidecar")] == {"nvidia.com/gpu": GPU[6:8]}  # the FPGA is not ours to read
    assert ("default/web", "web") not in held
    assert allocations(held, CATALOG) == {
        "infer/tp4": {"gpus": [4, 5, 6, 7]},
        "lab/nb": {"share": {"gpu": 3, "milli": 250}},
        "infer/embed": {"mig": [{"gpu": 0, "profile": "3g.40gb", "start": 4}]},
    }


def test_a_whole_gpu_of_share_units_counts_as_the_gpu_held_whole(kubelet):
    reader = kubelet([api.PodResources(name="big", namespace="ns", containers=[
        container("c", share=[f"{GPU[5]}::{k:03d}" for k in range(1000)])])])
    assert allocations(reader.list(gpu_resources), CATALOG) == {"ns/big": {"gpus": [5]}}


def test_nvidia_s_index_ids_and_ids_the_node_cannot_place(kubelet):
    reader = kubelet([api.PodResources(name="job", namespace="batch", containers=[container("c", gpu=["2", "3", "GPU-gone"])])])
    assert allocations(reader.list(gpu_resources), CATALOG) == {
        "batch/job": {"gpus": [2, 3], "unknown": {"nvidia.com/gpu": ["GPU-gone"]}}}


def test_a_kubelet_that_does_not_answer_is_a_clear_error(tmp_path):
    reader = PodResources(tmp_path / "absent.sock")
    with pytest.raises(PodResourcesError, match="absent.sock: UNAVAILABLE"):
        reader.list(gpu_resources)
