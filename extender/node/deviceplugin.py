"""The device plugin: the kubelet's device plugin API v1beta1 over gRPC (stubs generated from
k8s.io/kubelet's .proto into `extender.node.kubeletapi`), one server per resource.

For each resource the node has (`devices.Catalog`), a gRPC server listens on the unix socket
`<device-plugin dir>/gpu-extender-<resource>.sock` and is registered with the kubelet through the
kubelet's `kubelet.sock` in the same directory. Each server answers:
- GetDevicePluginOptions: GetPreferredAllocation is available, PreStartContainer is not needed;
- ListAndWatch: the resource's devices, each Healthy unless its GPU is in the last health check's
  sick list, sent again whenever the inventory or the health changes;
- GetPreferredAllocation: the devices `admission.Admissions.prefer` chooses (the plan of the pod
  being admitted), logged with the reason;
- Allocate: `admission.Admissions.allocate`, answered with `container.for_devices`; a refusal is
  a FAILED_PRECONDITION whose message the kubelet puts into the pod's admission failure.

The kubelet deletes every socket in its directory when it starts again. `sync()`, called every
second, notices (`kubelet.sock` is a new file, or one of our sockets is gone), serves anew and
registers again; the kubelet's checkpoint keeps the allocations it made across restarts of
either side, and no device it holds for a container is offered to another.
"""

from __future__ import annotations

import logging
import os
import threading
import time
from collections.abc import Callable, Iterator
from concurrent.futures import ThreadPoolExecutor
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import grpc

from extender.node import container
from extender.node.admission import Admissions, Refused, Request
from extender.node.devices import Catalog
from extender.node.kubeletapi.deviceplugin.v1beta1 import api_pb2 as api
from extender.node.kubeletapi.deviceplugin.v1beta1 import api_pb2_grpc as api_grpc

log = logging.getLogger("gpu_extender.deviceplugin")
API_VERSION = "v1beta1"
KUBELET_SOCKET = "kubelet.sock"
HEALTHY, UNHEALTHY = "Healthy", "Unhealthy"
WORKERS = 4  # per resource: one ListAndWatch stream and the kubelet's calls, which come one at a time
REGISTER_TIMEOUT = 10.0
WATCH_WAKE = 1.0  # seconds between checks that a ListAndWatch stream is still wanted
SOCKET_PATH_MAX = 108  # sizeof(sockaddr_un.sun_path) on Linux, the terminating NUL included


@dataclass(frozen=True)
class Options:
    """What each container's answer carries beyond the devices (see `extender.node.container`)."""

    cdi: bool = False
    mps_pipe_directory: str | None = None


def socket_name(resource: str) -> str:
    return "gpu-extender-" + resource.replace("/", "_") + ".sock"


class DevicePlugin:
    """Every resource's server, their registration, and what ListAndWatch streams send."""

    def __init__(self, directory: Path, catalog: Catalog, admissions: Admissions, options: Options = Options(),
                 clock: Callable[[], float] = time.monotonic, refresh: Callable[[], None] | None = None):
        self.directory = directory
        self.refresh = refresh  # re-reads the node's pods when no planned pod matches (the kubelet saw it first)
        self.catalog = catalog
        self.admissions = admissions
        self.options = options
        self.clock = clock
        self._cond = threading.Condition()
        self._version = 0  # bumped whenever the devices or their health change
        self._sick: dict[str, str] = {}  # GPU UUID -> why
        self._servers: dict[str, grpc.Server] = {}
        self._kubelet: tuple[int, int] | None = None  # (inode, mtime) of the kubelet.sock served for
        self._registered: set[str] = set()
        self._stopped = False

    # --- life cycle ---------------------------------------------------------------------------

    def sync(self) -> None:
        """Serve every resource of the catalog, and register each one this kubelet does not have:
        at start, after the kubelet restarted (its socket is a new file) or removed our socket.
        A resource the kubelet refuses is tried again at the next sync; the others go on."""
        kubelet = _identity(self.directory / KUBELET_SOCKET)
        if kubelet is None:
            if self._kubelet is not None:
                log.warning("the kubelet's %s is gone: waiting for the kubelet", self.directory / KUBELET_SOCKET)
                self._kubelet = None
                self._registered.clear()
            return
        if self._kubelet is not None and kubelet != self._kubelet:
            log.info("the kubelet started again: serving and registering every resource anew")
        if kubelet != self._kubelet:
            self._registered.clear()
            for resource in list(self._servers):
                self._stop_server(resource)
        self._kubelet = kubelet
        wanted = set(self.catalog.resources())
        for resource in set(self._servers) - wanted:
            self._stop_server(resource)
            self._registered.discard(resource)
        for resource in sorted(wanted):
            if resource in self._servers and not (self.directory / socket_name(resource)).exists():
                self._stop_server(resource)  # the kubelet removed it
                self._registered.discard(resource)
            if resource not in self._servers:
                self._serve(resource)
            if resource not in self._registered:
                try:
                    self._register(resource)
                except grpc.RpcError as exc:
                    log.error("registering %s with the kubelet failed (%s: %s); retrying", resource,
                              exc.code().name, exc.details())
                    continue
                self._registered.add(resource)

    def stop(self) -> None:
        with self._cond:
            self._stopped = True
            self._cond.notify_all()
        for resource in list(self._servers):
            self._stop_server(resource)

    def set_catalog(self, catalog: Catalog) -> None:
        """A new inventory (admission learns it from the caller): new resources are served at the
        next sync, gone ones stop."""
        with self._cond:
            self.catalog = catalog
            self._version += 1
            self._cond.notify_all()

    def set_health(self, sick: dict[str, str]) -> None:
        """GPU UUID -> why, for the GPUs now unhealthy."""
        with self._cond:
            if sick == self._sick:
                return
            for uuid in sorted(set(sick) - set(self._sick)):
                log.warning("GPU %s unhealthy: %s; its devices are reported Unhealthy", uuid, sick[uuid])
            for uuid in sorted(set(self._sick) - set(sick)):
                log.info("GPU %s healthy again", uuid)
            self._sick = dict(sick)
            self._version += 1
            self._cond.notify_all()

    # --- what the servers answer ----------------------------------------------------------------

    def devices(self, resource: str) -> list[api.Device]:
        with self._cond:
            catalog, sick = self.catalog, self._sick
        out = []
        for device_id in catalog.ids(resource):
            device = catalog.device(resource, device_id)
            health = UNHEALTHY if device is None or device.gpu_uuid in sick else HEALTHY
            out.append(api.Device(ID=device_id, health=health))
        return out

    def watch(self, resource: str, active: Callable[[], bool]) -> Iterator[api.ListAndWatchResponse]:
        """The device list now, then again after each change, while `active()` and not stopped."""
        seen = -1
        while True:
            with self._cond:
                self._cond.wait_for(lambda: self._version != seen or self._stopped, timeout=WATCH_WAKE)
                if self._stopped or not active():
                    return
                if self._version == seen:
                    continue
                seen = self._version
            yield api.ListAndWatchResponse(devices=self.devices(resource))

    def prefer(self, resource: str, request: Any) -> api.ContainerPreferredAllocationResponse:
        asked = Request(resource, frozenset(request.available_deviceIDs), tuple(request.must_include_deviceIDs),
                        int(request.allocation_size))
        choice = self.admissions.prefer(asked, self.clock())
        if choice.pod is None and self.refresh is not None:
            self.refresh()
            choice = self.admissions.prefer(asked, self.clock())
        log.info("%s x%d: preferring %s: %s", resource, request.allocation_size, _short(choice.ids), choice.reason)
        return api.ContainerPreferredAllocationResponse(deviceIDs=list(choice.ids))

    def allocate(self, resource: str, request: Any) -> api.ContainerAllocateResponse:
        """Raises Refused."""
        devices = self.admissions.allocate(resource, list(request.devices_ids), self.clock())
        devices.sort(key=lambda d: (d.gpu, d.mig.start if d.mig else 0, d.id))  # CUDA's order: the GPUs' own
        answer = container.for_devices(devices, share=resource == self.catalog.share_resource, cdi=self.options.cdi,
                                       mps_pipe_directory=self.options.mps_pipe_directory)
        log.info("%s: allocated %s", resource, _short([d.id for d in devices]))
        return api.ContainerAllocateResponse(
            envs=answer.envs,
            cdi_devices=[api.CDIDevice(name=name) for name in answer.cdi_devices],
            mounts=[api.Mount(host_path=host, container_path=inside, read_only=True) for host, inside in answer.mounts],
        )

    # --- internals ------------------------------------------------------------------------------

    def _serve(self, resource: str) -> None:
        path = self.directory / socket_name(resource)
        if len(str(path).encode()) >= SOCKET_PATH_MAX:
            raise ValueError(f"{path}: a unix socket path has at most {SOCKET_PATH_MAX - 1} bytes; "
                             "use a shorter --device-plugin-dir")
        path.unlink(missing_ok=True)
        server = grpc.server(ThreadPoolExecutor(max_workers=WORKERS, thread_name_prefix=f"plugin-{resource}"))
        api_grpc.add_DevicePluginServicer_to_server(_Servicer(self, resource), server)
        server.add_insecure_port(f"unix://{path}")
        server.start()
        self._servers[resource] = server
        log.info("serving %s on %s", resource, path)

    def _stop_server(self, resource: str) -> None:
        server = self._servers.pop(resource, None)
        if server is not None:
            server.stop(grace=1).wait()
            (self.directory / socket_name(resource)).unlink(missing_ok=True)

    def _register(self, resource: str) -> None:
        with grpc.insecure_channel(f"unix://{self.directory / KUBELET_SOCKET}") as channel:
            api_grpc.RegistrationStub(channel).Register(api.RegisterRequest(
                version=API_VERSION, endpoint=socket_name(resource), resource_name=resource,
                options=api.DevicePluginOptions(get_preferred_allocation_available=True)), timeout=REGISTER_TIMEOUT)
        log.info("registered %s with the kubelet", resource)


class _Servicer(api_grpc.DevicePluginServicer):
    """One resource's DevicePlugin service; everything is the plugin's."""

    def __init__(self, plugin: DevicePlugin, resource: str):
        self.plugin, self.resource = plugin, resource

    def GetDevicePluginOptions(self, request: Any, context: grpc.ServicerContext) -> api.DevicePluginOptions:  # noqa: N802
        return api.DevicePluginOptions(get_preferred_allocation_available=True)

    def ListAndWatch(self, request: Any, context: grpc.ServicerContext) -> Iterator[api.ListAndWatchResponse]:  # noqa: N802
        return self.plugin.watch(self.resource, context.is_active)

    def GetPreferredAllocation(self, request: Any, context: grpc.ServicerContext) -> api.PreferredAllocationResponse:  # noqa: N802
        return api.PreferredAllocationResponse(
            container_responses=[self.plugin.prefer(self.resource, r) for r in request.container_requests])

    def Allocate(self, request: Any, context: grpc.ServicerContext) -> api.AllocateResponse:  # noqa: N802
        try:
            return api.AllocateResponse(
                container_responses=[self.plugin.allocate(self.resource, r) for r in request.container_requests])
        except Refused as exc:
            log.error("%s: refusing Allocate(%s): %s", self.resource,
                      _short([i for r in request.container_requests for i in r.devices_ids]), exc)
            context.abort(grpc.StatusCode.FAILED_PRECONDITION, f"gpu-extender device plugin: {exc}")

    def PreStartContainer(self, request: Any, context: grpc.ServicerContext) -> api.PreStartContainerResponse:  # noqa: N802
        return api.PreStartContainerResponse()


def _identity(path: Path) -> tuple[int, int] | None:
    try:
        stat = os.stat(path)
    except FileNotFoundError:
        return None
    return stat.st_ino, stat.st_mtime_ns


def _short(ids: Any) -> str:
    """Device IDs for a log line: a share's thousand units as their GPU and count."""
    ids = list(ids)
    if not ids:
        return "nothing (the kubelet chooses)"
    gpus = sorted({i.split("::")[0] for i in ids})
    if len(gpus) < len(ids):
        return ", ".join(f"{sum(1 for i in ids if i.startswith(g))} units of {g}" for g in gpus)
    return ", ".join(ids)
