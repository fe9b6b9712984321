"""The node agent (`gpu-extender agent`, a DaemonSet): this node's GPUs and model cache
(`extender.node.inventory`), published as the node annotations that `extender.convert` reads.

Published as compact JSON (formats in the README's "Data contracts"; names in
`extender.annotations`):
- gpu-topology: the GPUs by index (UUID, model, memory, MIG mode), NVLink link counts per pair
  (`extender.node.topology`) and NVML's PCIe common-ancestor level per pair;
- mig-layout: every GPU instance of every MIG-enabled GPU (profile; start and size in memory slices);
- model-cache: model id -> bytes on this node (`extender.node.model_cache`);
- heartbeat: the RFC 3339 time of the last report.

Every cycle scans, reads the Node and merge-patches only the annotations whose value changed,
together with a new heartbeat; with nothing changed, the heartbeat alone is renewed, at the last
cycle before it would be older than `heartbeat_seconds`. A cycle whose scan fails publishes
nothing, the heartbeat included, so the extender drops the old data after its
`agent.maxAgeSeconds` instead of reading a half inventory as a whole one.
"""

from __future__ import annotations

import json
import logging
import signal
import sys
import threading
from collections.abc import Callable
from datetime import datetime, timezone
from pathlib import Path

import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from extender import annotations as ann
from extender import convert
from extender.node import nvml
from extender.node.inventory import Scan, scan
from extender.node import container
from extender.node.admission import Admissions
from extender.node.devices import Catalog
from extender.node.kubelet import KubeletOptions, KubeletSide
from scoring.model import MILLI_PER_GPU
from extender.node.model_cache import CacheError

log = logging.getLogger("gpu_extender.agent")
FIELD_MANAGER = "gpu-extender-agent"
MERGE_PATCH = "application/merge-patch+json"
API_TIMEOUT = 30  # seconds per API call: a hung connection must not stop the heartbeat for good

EXIT_USAGE = 2  # bad arguments, or no credentials for the cluster
EXIT_NO_NVML = 3  # no NVIDIA driver or NVML library (or NVML refuses to start) at start-up
EXIT_FAILED = 4  # --once or --print: the scan or the publication failed


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- publishing ---------------------------------------------------------------------------------

class Agent:
    """Publishes one node's inventory through `core` (a CoreV1Api allowed to get and patch nodes).
    `on_scan` gets each successful scan, `on_labels` the Node's labels at each publication (the
    device plugin follows both, `extender.node.kubelet`)."""

    def __init__(self, node: str, core: client.CoreV1Api, scan: Callable[[], Scan], *,
                 interval: float, heartbeat_seconds: float,
                 on_scan: Callable[[Scan], None] = lambda _: None,
                 on_labels: Callable[[dict[str, str]], None] = lambda _: None):
        self.node = node
        self.core = core
        self.scan = scan
        self.interval = interval
        self.heartbeat_seconds = heartbeat_seconds
        self.on_scan, self.on_labels = on_scan, on_labels
        self._notes: tuple[str, ...] = ()

    def cycle(self, now: datetime | None = None) -> bool:
        """Scan and publish; False, with the reason logged, when either failed."""
        try:
            result = self.scan()
        except (nvml.NvmlUnavailable, nvml.ScanError, CacheError) as exc:
            log.error("node %s: scan failed, publishing nothing this cycle (the extender ignores data older "
                      "than its agent.maxAgeSeconds): %s", self.node, exc)
            return False
        return self.deliver(result, now)

    def deliver(self, result: Scan, now: datetime | None = None) -> bool:
        """Publish a scan; False, with the reason logged, when the API server refused or failed."""
        if result.notes != self._notes:
            for note in result.notes:
                log.info("node %s: %s", self.node, note)
            self._notes = result.notes
        self.on_scan(result)
        try:
            self.publish(result, now or datetime.now(timezone.utc))
        except ApiException as exc:
            log.error("node %s: cannot publish (%s %s), retrying next cycle", self.node, exc.status, exc.reason)
            return False
        except (urllib3.exceptions.HTTPError, OSError) as exc:
            log.error("node %s: cannot reach the API server (%s), retrying next cycle", self.node, exc)
            return False
        return True

    def publish(self, result: Scan, now: datetime) -> None:
        """Merge-patch the annotations whose value differs from the node's, with a new heartbeat,
        or the heartbeat alone when it is due; nothing else."""
        meta = self.core.read_node(self.node, _request_timeout=API_TIMEOUT).metadata
        self.on_labels(meta.labels or {})
        current = meta.annotations or {}
        changed = {key: value for key, value in result.annotations.items() if current.get(key) != value}
        beat = convert.heartbeat({"metadata": {"annotations": current}})
        due = beat is None or now.timestamp() - beat + self.interval > self.heartbeat_seconds
        if not changed and not due:
            log.debug("node %s: nothing changed and the heartbeat is not due", self.node)
            return
        self.patch(changed | {ann.HEARTBEAT: rfc3339(now)})
        if changed:
            log.info("node %s: published %s", self.node, ", ".join(sorted(changed)))
        else:
            log.debug("node %s: heartbeat renewed", self.node)

    def patch(self, annotations: dict[str, str | None]) -> None:
        """Merge-patch these annotations of the Node (None removes one); raises what the client raises."""
        self.core.patch_node(self.node, {"metadata": {"annotations": annotations}}, field_manager=FIELD_MANAGER,
                             _content_type=MERGE_PATCH, _request_timeout=API_TIMEOUT)

    def forget(self, key: str) -> None:
        """Remove one of our annotations from the Node, if it is there (logged, never raised)."""
        try:
            if key in (self.core.read_node(self.node, _request_timeout=API_TIMEOUT).metadata.annotations or {}):
                self.patch({key: None})
                log.info("node %s: removed %s", self.node, key)
        except (ApiException, urllib3.exceptions.HTTPError, OSError) as exc:
            log.error("node %s: cannot remove %s (%s)", self.node, key, exc)

    def run(self, stop: threading.Event) -> None:
        """A cycle every `interval` seconds until `stop` is set."""
        while not stop.wait(self.interval):
            self.cycle()


# --- the command --------------------------------------------------------------------------------

def main(*, node: str | None, kubeconfig: Path | None, cache_dir: Path | None, interval: float,
         heartbeat_seconds: float, once: bool, print_only: bool, kubelet: KubeletOptions | None = None) -> int:
    """`gpu-extender agent`; returns the exit status (0, or one of the EXIT_* codes). `kubelet`:
    the device plugin and the read-back of allocations (None: neither)."""
    if print_only:
        return _print_inventory(cache_dir)
    if not node:
        return _error("--node-name (or NODE_NAME) is required to publish", EXIT_USAGE)
    try:
        first: Scan | None = scan(cache_dir)
    except nvml.NvmlUnavailable as exc:
        return _error(str(exc), EXIT_NO_NVML)
    except (nvml.ScanError, CacheError) as exc:
        if once:
            return _error(f"scan failed: {exc}", EXIT_FAILED)
        log.error("node %s: first scan failed, retrying every %gs: %s", node, interval, exc)
        first = None
    from extender.kube import api_client

    try:
        core = client.CoreV1Api(api_client(kubeconfig))
    except (ConfigException, OSError, ValueError) as exc:  # kubeconfig missing or unreadable, not in a cluster
        return _error(f"cannot reach the cluster: {exc}", EXIT_USAGE)
    agent = Agent(node, core, lambda: scan(cache_dir), interval=interval, heartbeat_seconds=heartbeat_seconds)
    side = None
    if kubelet is None:
        agent.forget(ann.ALLOCATIONS)  # an earlier run's read-back: the extender would trust it
    elif not once:
        side = KubeletSide(node, core, kubelet, agent.patch)
        agent.on_scan, agent.on_labels = side.set_scan, side.set_labels
    delivered = first is not None and agent.deliver(first)
    if once:
        return 0 if delivered else EXIT_FAILED
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("node %s: scanning every %gs, heartbeat at least every %gs", node, interval, heartbeat_seconds)
    serving = threading.Thread(target=side.run, args=(stop,), name="kubelet", daemon=True) if side else None
    if serving is not None:
        serving.start()
    agent.run(stop)
    if serving is not None:
        serving.join(timeout=30)  # the device plugin's sockets removed, its servers stopped
    return 0


def _print_inventory(cache_dir: Path | None) -> int:
    """--print: the inventory annotations' content as one JSON object; no API server involved."""
    try:
        result = scan(cache_dir)
    except nvml.NvmlUnavailable as exc:
        return _error(str(exc), EXIT_NO_NVML)
    except (nvml.ScanError, CacheError) as exc:
        return _error(f"scan failed: {exc}", EXIT_FAILED)
    printed = {key: json.loads(value) for key, value in result.annotations.items()}
    sys.stdout.write(json.dumps(printed, indent=2, sort_keys=True) + "\n")
    return 0


def print_devices(options: KubeletOptions, lib: object = None) -> int:
    """--print-devices: per resource, the devices the plugin would advertise (with their health
    now) and the Allocate answer for the first device (a share: a quarter GPU), from NVML alone."""
    try:
        hardware = nvml.read_inventory(lib)
        monitor = nvml.HealthMonitor([d.uuid for d in hardware.devices], lib)
        notes = monitor.open()
        try:
            sick = monitor.check()
        finally:
            monitor.close()
    except nvml.NvmlUnavailable as exc:
        return _error(str(exc), EXIT_NO_NVML)
    except nvml.ScanError as exc:
        return _error(f"scan failed: {exc}", EXIT_FAILED)
    catalog = Catalog(hardware, options.share_resource)
    printed: dict[str, object] = {"notes": [*catalog.notes, *notes], "unhealthy": sick, "resources": {}}
    for resource in catalog.resources():
        ids = list(catalog.ids(resource))
        first = ids[: MILLI_PER_GPU // 4] if resource == options.share_resource else ids[:1]
        devices = Admissions(catalog).allocate(resource, first, 0.0)
        answer = container.for_devices(devices, share=resource == options.share_resource, cdi=options.plugin.cdi,
                                       mps_pipe_directory=options.plugin.mps_pipe_directory)
        printed["resources"][resource] = {  # type: ignore[index]
            "devices": len(ids), "first": ids[:3],
            "allocate": {"devices": len(first), "envs": answer.envs, "cdiDevices": list(answer.cdi_devices)},
        }
    sys.stdout.write(json.dumps(printed, indent=2, sort_keys=True) + "\n")
    return 0


def _error(message: str, status: int) -> int:
    print(f"gpu-extender agent: {message}", file=sys.stderr)
    return status
