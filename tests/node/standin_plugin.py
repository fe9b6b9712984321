"""A device plugin that is not ours, for nodes that keep another plugin: it advertises one
resource with the device IDs it is given (`nvidia.com/gpu` by UUID, as NVIDIA's does; or share
units, as a sharing plugin would) and prefers the last ones available, knowing nothing of any
plan. Served in the calling process over real gRPC."""

from __future__ import annotations

import time
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from extender.node.kubeletapi.deviceplugin.v1beta1 import api_pb2 as api
from extender.node.kubeletapi.deviceplugin.v1beta1 import api_pb2_grpc as api_grpc

class StandIn(api_grpc.DevicePluginServicer):
    def __init__(self, directory: Path, resource: str, ids: list[str]):
        self.directory, self.resource, self.uuids = directory, resource, ids
        self.socket = directory / f"standin-{resource.replace('/', '_')}.sock"
        self.server = grpc.server(ThreadPoolExecutor(max_workers=4))
        api_grpc.add_DevicePluginServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{self.socket}")
        self.server.start()
        with grpc.insecure_channel(f"unix://{directory / 'kubelet.sock'}") as channel:
            api_grpc.RegistrationStub(channel).Register(api.RegisterRequest(
                version="v1beta1", endpoint=self.socket.name, resource_name=resource,
                options=api.DevicePluginOptions(get_preferred_allocation_available=True)), timeout=10)

    def stop(self) -> None:
        self.server.stop(0).wait()

    def GetDevicePluginOptions(self, request, context):  # noqa: N802
        return api.DevicePluginOptions(get_preferred_allocation_available=True)

    def ListAndWatch(self, request, context):  # noqa: N802
        yield api.ListAndWatchResponse(devices=[api.Device(ID=u, health="Healthy") for u in self.uuids])
        while context.is_active():  # the devices never change
            time.sleep(1)

    def GetPreferredAllocation(self, request, context):  # noqa: N802
        order = {u: i for i, u in enumerate(self.uuids)}
        return api.PreferredAllocationResponse(container_responses=[
            api.ContainerPreferredAllocationResponse(deviceIDs=sorted(
                r.available_deviceIDs, key=order.get, reverse=True)[: r.allocation_size])
            for r in request.container_requests])

    def Allocate(self, request, context):  # noqa: N802
        return api.AllocateResponse(container_responses=[
            api.ContainerAllocateResponse(envs={"NVIDIA_VISIBLE_DEVICES": ",".join(r.devices_ids)})
            for r in request.container_requests])
