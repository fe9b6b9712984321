"""The device plugin over real gRPC on unix sockets: registration with a kubelet's Registration
service (a recording stand-in here; tests/e2e/test_device_plugin.py uses the real kubelet),
ListAndWatch with health, GetPreferredAllocation and Allocate, a kubelet restart. And GPU health
from NVML reads and Xid events (the fake NVML of the reference machines)."""

from __future__ import annotations

import tempfile
import threading
from pathlib import Path

import grpc
import pynvml
import pytest

from extender.node import nvml
from extender.node.admission import Admissions, Container, PodOnNode
from extender.node.devices import Catalog
from extender.node.deviceplugin import DevicePlugin, Options, socket_name
from extender.node.kubeletapi.deviceplugin.v1beta1 import api_pb2 as api
from extender.node.kubeletapi.deviceplugin.v1beta1 import api_pb2_grpc as api_grpc
from scoring.model import GPU_RESOURCE, GpuShare, Plan
from tests.agent import machines
from tests.node.kubelet_standins import Registrations

SHARE = "gpu-extender.io/gpu-milli"


@pytest.fixture
def node():
    # A short directory of its own: a unix socket path may not exceed 107 bytes, and pytest's
    # tmp_path (/tmp/pytest-of-USER/pytest-NNN/<test name>_0/) plus the socket names can.
    with tempfile.TemporaryDirectory(prefix="dp-") as short:
        directory = Path(short)
        fake = machines.hgx_h100(mig={0: [("3g.40gb", 0), ("3g.40gb", 4)]})
        catalog = Catalog(nvml.read_inventory(fake), SHARE)
        kubelet = Registrations(directory)
        plugin = DevicePlugin(directory, catalog, Admissions(catalog), Options(cdi=True))
        plugin.sync()
        yield directory, plugin, kubelet, fake
        plugin.stop()
        kubelet.server.stop(0)


def stub(directory: Path, resource: str) -> api_grpc.DevicePluginStub:
    return api_grpc.DevicePluginStub(grpc.insecure_channel(f"unix://{directory / socket_name(resource)}"))


def test_every_resource_is_served_and_registered_with_preferred_allocation(node):
    directory, _, kubelet, _ = node
    assert sorted(r.resource_name for r in kubelet.requests) == [SHARE, GPU_RESOURCE, "nvidia.com/mig-3g.40gb"]
    for request in kubelet.requests:
        assert request.version == "v1beta1" and request.options.get_preferred_allocation_available
        assert (directory / request.endpoint).is_socket()
        options = stub(directory, request.resource_name).GetDevicePluginOptions(api.Empty(), timeout=5)
        assert options.get_preferred_allocation_available and not options.pre_start_required


def test_list_and_watch_sends_the_devices_and_again_when_a_gpu_falls_sick_and_recovers(node):
    directory, plugin, _, _ = node
    stream = stub(directory, SHARE).ListAndWatch(api.Empty(), timeout=30)
    first = next(stream)
    assert len(first.devices) == 7000 and {d.health for d in first.devices} == {"Healthy"}
    sick = machines.uuid("h100", 3)
    plugin.set_health({sick: "NVML cannot read it"})
    second = next(stream)
    unhealthy = {d.ID.split("::")[0] for d in second.devices if d.health == "Unhealthy"}
    assert unhealthy == {sick} and sum(d.health == "Unhealthy" for d in second.devices) == 1000
    plugin.set_health({})
    assert {d.health for d in next(stream).devices} == {"Healthy"}
    stream.cancel()


def test_preferred_allocation_and_allocate_give_the_planned_gpus_with_their_environment(node):
    directory, plugin, _, _ = node
    plugin.admissions.set_pods([PodOnNode("ns/tp4", "u1", "2026-12-05T00:00:00Z",
                                          (Container("server", {GPU_RESOURCE: 4}),), Plan(gpus=(4, 5, 6, 7)))])
    gpus = stub(directory, GPU_RESOURCE)
    available = [machines.uuid("h100", i) for i in range(2, 8)]
    preferred = gpus.GetPreferredAllocation(api.PreferredAllocationRequest(container_requests=[
        api.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=4)]), timeout=5)
    ids = list(preferred.container_responses[0].deviceIDs)
    assert ids == [machines.uuid("h100", i) for i in (4, 5, 6, 7)]
    answer = gpus.Allocate(api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=ids)]),
                           timeout=5).container_responses[0]
    assert answer.envs["NVIDIA_VISIBLE_DEVICES"] == ",".join(ids)
    assert [d.name for d in answer.cdi_devices] == [f"nvidia.com/gpu={i}" for i in ids]


def test_allocate_refuses_a_share_of_a_gpu_held_whole_with_a_reason_the_kubelet_shows(node):
    directory, plugin, _, _ = node
    gpu = machines.uuid("h100", 2)
    stub(directory, GPU_RESOURCE).Allocate(api.AllocateRequest(
        container_requests=[api.ContainerAllocateRequest(devices_ids=[gpu])]), timeout=5)
    with pytest.raises(grpc.RpcError) as refused:
        stub(directory, SHARE).Allocate(api.AllocateRequest(container_requests=[
            api.ContainerAllocateRequest(devices_ids=[f"{gpu}::{k:03d}" for k in range(100)])]), timeout=5)
    assert refused.value.code() == grpc.StatusCode.FAILED_PRECONDITION
    assert "GPU 2" in refused.value.details() and "held whole" in refused.value.details()


def test_a_share_pod_gets_its_planned_gpu_and_limits(node):
    directory, plugin, _, _ = node
    plugin.admissions.set_pods([PodOnNode("ns/nb", "u2", "2026-12-05T00:00:00Z",
                                          (Container("nb", {SHARE: 250}),), Plan(share=GpuShare(6, 250)))])
    shares = stub(directory, SHARE)
    available = [d.ID for d in next(shares.ListAndWatch(api.Empty(), timeout=10)).devices]
    ids = shares.GetPreferredAllocation(api.PreferredAllocationRequest(container_requests=[
        api.ContainerPreferredAllocationRequest(available_deviceIDs=available, allocation_size=250)]),
        timeout=5).container_responses[0].deviceIDs
    envs = shares.Allocate(api.AllocateRequest(container_requests=[api.ContainerAllocateRequest(devices_ids=ids)]),
                           timeout=5).container_responses[0].envs
    assert envs["NVIDIA_VISIBLE_DEVICES"] == machines.uuid("h100", 6)
    assert envs["GPU_EXTENDER_GPU_MILLI"] == "250" and envs["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"


def test_a_restarted_kubelet_gets_every_resource_registered_again(node):
    directory, plugin, kubelet, _ = node
    kubelet.server.stop(0).wait()
    for socket in directory.iterdir():  # what the kubelet does when it starts
        socket.unlink()
    again = Registrations(directory)
    try:
        plugin.sync()
        assert sorted(r.resource_name for r in again.requests) == [SHARE, GPU_RESOURCE, "nvidia.com/mig-3g.40gb"]
        assert stub(directory, GPU_RESOURCE).GetDevicePluginOptions(api.Empty(), timeout=5)
        plugin.sync()
        assert len(again.requests) == 3  # nothing changed: nothing registered twice
    finally:
        again.server.stop(0)


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


def test_health_follows_nvml_reads_and_fatal_xids_but_not_application_xids():
    fake = machines.hgx_h100()
    clock = Clock()
    uuids = [machines.uuid("h100", i) for i in range(8)]
    monitor = nvml.HealthMonitor(uuids, fake, xid_quiet=300, clock=clock)
    assert monitor.open() == []
    try:
        assert monitor.check() == {}
        fake.lost.add(2)
        assert set(monitor.check()) == {uuids[2]} and "GPU_IS_LOST" in monitor.check()[uuids[2]].upper().replace(" ", "_")
        fake.lost.clear()
        assert monitor.check() == {}
        fake.xid(5, 13)  # a graphics engine exception: the application's fault
        assert "stays healthy" in monitor.wait_xid(1000)
        fake.xid(5, 79)  # fallen off the bus
        assert "fatal Xid 79" in monitor.wait_xid(1000)
        assert set(monitor.check()) == {uuids[5]}
        clock.now = 299
        assert set(monitor.check()) == {uuids[5]}
        clock.now = 301
        assert monitor.check() == {}
        assert monitor.wait_xid(10) is None  # nothing queued: the wait times out quietly
    finally:
        monitor.close()
    assert fake.open == 0


def test_a_gpu_without_xid_events_is_still_checked_by_reads():
    fake = machines.hgx_h100()
    fake.fail["nvmlDeviceRegisterEvents"] = (3, pynvml.NVML_ERROR_NOT_SUPPORTED)
    monitor = nvml.HealthMonitor([machines.uuid("h100", i) for i in range(8)], fake)
    notes = monitor.open()
    assert len(notes) == 5 and "no Xid events" in notes[0]
    fake.lost.add(7)
    assert set(monitor.check()) == {machines.uuid("h100", 7)}
    monitor.close()


def test_the_stream_ends_when_the_plugin_stops(node):
    directory, plugin, _, _ = node
    stream = stub(directory, GPU_RESOURCE).ListAndWatch(api.Empty(), timeout=30)
    next(stream)
    done = threading.Event()

    def drain():
        for _ in stream:
            pass
        done.set()

    threading.Thread(target=drain, daemon=True).start()
    plugin.stop()
    assert done.wait(10), "the ListAndWatch stream did not end"
    assert not (directory / socket_name(GPU_RESOURCE)).exists()


def test_a_directory_too_deep_for_a_unix_socket_is_named_in_the_error(tmp_path):
    deep = tmp_path / ("d" * 60)
    deep.mkdir()
    kubelet = Registrations(tmp_path)  # its socket is short enough; ours would not be
    (deep / "kubelet.sock").symlink_to(tmp_path / "kubelet.sock")
    catalog = Catalog(nvml.read_inventory(machines.hgx_h100()), SHARE)
    plugin = DevicePlugin(deep, catalog, Admissions(catalog))
    try:
        with pytest.raises(ValueError, match="use a shorter --device-plugin-dir"):
            plugin.sync()
    finally:
        plugin.stop()
        kubelet.server.stop(0)
