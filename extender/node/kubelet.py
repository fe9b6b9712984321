"""What the agent does with the kubelet: serve the device plugin where the node opts in, and read
back what the kubelet really allocated, on every node.

- **Device plugin** (`deviceplugin.py`), on when `--device-plugin on`, or with `auto` (the default)
  while the Node carries the label `gpu-extender.io/device-plugin=true` (read every scan cycle;
  removing the label stops the servers). It watches the pods bound to this node (`pods.py`) to
  know their plans, and checks GPU health every `health_interval` seconds (`nvml.HealthMonitor`,
  with Xid events in a thread of their own).
- **Read-back** (`podresources.py`), every `read_back_interval` seconds: the kubelet's
  PodResources `List`, fed to admission (what is held, by whom) and published as the Node's
  `gpu-extender.io/allocations` annotation when it changed. While the kubelet's socket does not
  answer, the annotation is removed, so the extender counts the plans instead of a stale record.
"""

from __future__ import annotations

import json
import logging
import threading
import time
from collections.abc import Callable
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from kubernetes import client

from extender import annotations as ann
from extender import convert
from extender.kube import EventPoster, ListWatch
from extender.node import nvml, podresources
from extender.node.admission import Admissions
from extender.node.deviceplugin import DevicePlugin, Options
from extender.node.devices import Catalog
from extender.node.inventory import Scan
from extender.node.pods import NodePods

log = logging.getLogger("gpu_extender.agent")
PLUGIN_LABEL = ann.DEVICE_PLUGIN_LABEL
TICK = 1.0  # seconds between checks that the kubelet still knows our servers
UNKNOWN = object()  # what an earlier run left on the Node: written over by the first read-back, whatever it is
RELIST_TIMEOUT = 2.0  # seconds an admission may wait for a fresh list of the node's pods


@dataclass(frozen=True)
class KubeletOptions:
    device_plugin: str = "auto"  # on | off | auto (the node label decides)
    device_plugin_dir: Path = Path("/var/lib/kubelet/device-plugins")
    pod_resources_socket: Path = Path("/var/lib/kubelet/pod-resources/kubelet.sock")
    share_resource: str | None = "gpu-extender.io/gpu-milli"  # None: GPUs are not shared
    plugin: Options = Options()
    health_interval: float = 5.0
    read_back_interval: float = 2.0


class KubeletSide:
    """The device plugin and the read-back of one node; `publish(annotations)` merge-patches the
    Node (None removes a key)."""

    def __init__(self, node: str, core: client.CoreV1Api, options: KubeletOptions,
                 publish: Callable[[dict[str, str | None]], None], lib: Any = None,
                 clock: Callable[[], float] = time.monotonic):
        self.node, self.core, self.options, self.publish, self.lib, self.clock = node, core, options, publish, lib, clock
        self.catalog: Catalog | None = None
        self._hardware: nvml.Inventory | None = None  # what the catalog was made from
        self.admissions: Admissions | None = None
        self.plugin: DevicePlugin | None = None
        self._pods: NodePods | None = None
        self._pod_watch: ListWatch | None = None
        self._health: nvml.HealthMonitor | None = None
        self._health_stop = threading.Event()
        self._published: str | None | object = UNKNOWN  # the allocations annotation as last published
        self._observed = False  # a PodResources answer came: the plugin knows what the kubelet holds
        self._told_waiting = False
        self._read_back_failing = False
        self._next_health = self._next_read = 0.0  # when each is due (clock seconds)
        self._want_plugin = options.device_plugin == "on"
        self._lock = threading.RLock()
        self._reader = podresources.PodResources(options.pod_resources_socket)
        self._events = EventPoster(core, "gpu-extender-agent", host=node)

    # --- inputs from the scan cycle -----------------------------------------------------------

    def set_scan(self, result: Scan) -> None:
        if result.hardware is not None:
            self.set_inventory(result.hardware)

    def set_inventory(self, hardware: nvml.Inventory) -> None:
        """The latest scan: a changed inventory is advertised anew."""
        with self._lock:
            if hardware == self._hardware:
                return
            self._hardware = hardware
            catalog = Catalog(hardware, self.options.share_resource)
            for note in catalog.notes:
                log.info("node %s: %s", self.node, note)
            first = self.catalog is None
            self.catalog = catalog
            if self.admissions is None:
                self.admissions = Admissions(catalog)
            self.admissions.set_catalog(catalog)
            if self.plugin is not None:
                self.plugin.set_catalog(catalog)
                self._start_health(catalog)
            if self._pods is not None:
                self._pods.set_catalog(catalog)
            if not first:
                log.info("node %s: inventory changed: %s", self.node, ", ".join(catalog.resources()) or "no GPUs")

    def set_labels(self, labels: dict[str, str]) -> None:
        """The Node's labels as of the last scan cycle (the `auto` mode follows PLUGIN_LABEL)."""
        if self.options.device_plugin == "auto":
            want = labels.get(PLUGIN_LABEL) == "true"
            if want != self._want_plugin:
                log.info("node %s: label %s=%s: device plugin %s", self.node, PLUGIN_LABEL,
                         labels.get(PLUGIN_LABEL, "(none)"), "on" if want else "off")
            self._want_plugin = want

    # --- the loop -----------------------------------------------------------------------------

    def run(self, stop: threading.Event) -> None:
        """`tick` every TICK seconds until `stop`; then the plugin's servers stop. A tick that fails
        (a socket path the kernel refuses, say) is logged and tried again, never the end of it."""
        failing = ""
        while not stop.is_set():
            try:
                self.tick()
                failing = ""
            except Exception as exc:
                if str(exc) != failing:
                    log.exception("node %s: the device plugin or read-back failed; trying again every %gs",
                                  self.node, TICK)
                    failing = str(exc)
            stop.wait(TICK)
        self.shutdown()

    def tick(self) -> None:
        """Read-back when due; the plugin started (once a read-back told what the kubelet holds),
        stopped or registered again as needed; health when due."""
        now = self.clock()
        if self.catalog is None:
            return
        if now >= self._next_read:
            self.read_back()
            self._next_read = now + self.options.read_back_interval
        with self._lock:
            self._plugin_on_or_off()
            if self.plugin is None:
                return
            self.plugin.sync()
            if now >= self._next_health:
                if self._health is None:  # NVML refused at the start: try again
                    self._start_health(self.catalog)
                if self._health is not None:
                    self.plugin.set_health(self._health.check())
                self._next_health = now + self.options.health_interval

    def read_back(self) -> None:
        """One PodResources List: admission learns what is held; the annotation follows."""
        catalog, admissions = self.catalog, self.admissions
        assert catalog is not None and admissions is not None
        started = self.clock()
        share = catalog.share_resource or ""
        try:
            held = self._reader.list(lambda resource: convert.is_gpu_resource(resource, share))
        except podresources.PodResourcesError as exc:
            if not self._read_back_failing:
                log.warning("node %s: cannot read back allocations (%s): the extender counts plans until it answers",
                            self.node, exc)
                self._read_back_failing = True
            self._publish_allocations(None)
            return
        if self._read_back_failing:
            log.info("node %s: the kubelet's PodResources API answers again", self.node)
            self._read_back_failing = False
        admissions.observe(held, started)
        self._observed = True
        self._publish_allocations(json.dumps(podresources.allocations(held, catalog), separators=(",", ":"),
                                             sort_keys=True))

    def shutdown(self) -> None:
        with self._lock:
            self._stop_plugin()

    # --- internals ------------------------------------------------------------------------------

    def _publish_allocations(self, value: str | None) -> None:
        if value == self._published:
            return
        try:
            self.publish({ann.ALLOCATIONS: value})
        except Exception as exc:  # the API server may be away: try again next round
            log.error("node %s: cannot publish allocations: %s", self.node, exc)
            return
        self._published = value

    def _plugin_on_or_off(self) -> None:
        if self._want_plugin and self.plugin is None:
            if self._observed:
                self._start_plugin()
            elif not self._told_waiting:
                log.warning("node %s: the device plugin waits for the kubelet's PodResources API (%s): it must know "
                            "what the kubelet holds before it hands out devices", self.node,
                            self.options.pod_resources_socket)
                self._told_waiting = True
        elif not self._want_plugin and self.plugin is not None:
            self._stop_plugin()

    def _start_plugin(self) -> None:
        catalog, admissions = self.catalog, self.admissions
        assert catalog is not None and admissions is not None
        log.info("node %s: device plugin on: %s in %s", self.node, ", ".join(catalog.resources()) or "no resources",
                 self.options.device_plugin_dir)
        self.plugin = DevicePlugin(self.options.device_plugin_dir, catalog, admissions, self.options.plugin, self.clock,
                                   self._relist_pods)
        self._pods = NodePods(self.node, catalog, admissions.set_pods, self._report, self.clock)
        self._pod_watch = ListWatch(f"pods on {self.node}", self.core.list_pod_for_all_namespaces,
                                    self._pods.replace, self._pods.event, field_selector=f"spec.nodeName={self.node}")
        self._pod_watch.start()
        self._start_health(catalog)

    def _stop_plugin(self) -> None:
        if self.plugin is None:
            return
        log.info("node %s: device plugin off", self.node)
        if self._pod_watch is not None:
            self._pod_watch.stop.set()  # its open watch ends by itself; what it still delivers is ignored
        if self._pods is not None:
            self._pods.active = False
        self._stop_health()
        self.plugin.stop()
        self.plugin, self._pods, self._pod_watch = None, None, None

    def _relist_pods(self) -> None:
        """The pods of this node from a fresh list (at most RELIST_TIMEOUT): the kubelet may admit a
        pod before the watch brings it here."""
        pods, watch = self._pods, self._pod_watch
        if pods is None or watch is None:
            return
        try:
            pods.merge(watch.list(timeout=RELIST_TIMEOUT)[0])
        except Exception as exc:  # the API server may be away: admit with what the watch has
            log.warning("node %s: cannot list its pods (%s): admitting with what the watch has", self.node, exc)

    def _start_health(self, catalog: Catalog) -> None:
        self._stop_health()
        monitor = nvml.HealthMonitor(catalog.gpu_uuids(), self.lib)
        try:
            for note in monitor.open():
                log.info("node %s: %s", self.node, note)
        except nvml.NvmlUnavailable as exc:
            log.error("node %s: no health checks: %s", self.node, exc)
            return
        self._health, self._health_stop = monitor, threading.Event()
        threading.Thread(target=self._watch_xids, args=(monitor, self._health_stop), name="xid", daemon=True).start()

    def _stop_health(self) -> None:
        """No more checks; the Xid thread closes NVML when its wait returns."""
        self._health = None
        self._health_stop.set()

    def _watch_xids(self, monitor: nvml.HealthMonitor, stop: threading.Event) -> None:
        while not stop.is_set():
            line = monitor.wait_xid(1000)
            if line:
                log.warning("node %s: %s", self.node, line)
        monitor.close()

    def _report(self, pod: dict[str, Any], reason: str, message: str) -> None:
        meta = pod.get("metadata") or {}
        self._events.post(meta.get("namespace") or "default", str(meta.get("name")), meta.get("uid"), reason,
                          f"gpu-extender device plugin on {self.node}: {message}", kind="Warning")
