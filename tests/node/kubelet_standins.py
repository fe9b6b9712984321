"""The kubelet's side of its two gRPC APIs, for unit tests over real gRPC on unix sockets: the
device plugin Registration service (keeping every request) and the PodResources lister (answering
what it is given). tests/e2e runs the real kubelet."""

from __future__ import annotations

from concurrent.futures import ThreadPoolExecutor
from pathlib import Path

import grpc

from extender.node.kubeletapi.deviceplugin.v1beta1 import api_pb2 as plugin_api
from extender.node.kubeletapi.deviceplugin.v1beta1 import api_pb2_grpc as plugin_grpc
from extender.node.kubeletapi.podresources.v1 import api_pb2 as resources_api
from extender.node.kubeletapi.podresources.v1 import api_pb2_grpc as resources_grpc


class Registrations(plugin_grpc.RegistrationServicer):
    """Registration on <directory>/kubelet.sock."""

    def __init__(self, directory: Path):
        self.requests: list[plugin_api.RegisterRequest] = []
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        plugin_grpc.add_RegistrationServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{directory / 'kubelet.sock'}")
        self.server.start()

    def Register(self, request, context):  # noqa: N802
        self.requests.append(request)
        return plugin_api.Empty()


class Lister(resources_grpc.PodResourcesListerServicer):
    """PodResources on `socket`, answering List with `pods` (replace them at will)."""

    def __init__(self, socket: Path, pods: list[resources_api.PodResources]):
        self.pods = pods
        self.server = grpc.server(ThreadPoolExecutor(max_workers=2))
        resources_grpc.add_PodResourcesListerServicer_to_server(self, self.server)
        self.server.add_insecure_port(f"unix://{socket}")
        self.server.start()

    def List(self, request, context):  # noqa: N802
        return resources_api.ListPodResourcesResponse(pod_resources=self.pods)
