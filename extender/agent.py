"""The node agent (`gpu-extender agent`, a DaemonSet): this node's GPUs (read through
`extender.nvml`) and model cache, published as the node annotations that `extender.convert` reads.

Published as compact JSON (formats in the README's "Data contracts"; names in
`extender.annotations`):
- gpu-topology: the GPUs by index (UUID, model, memory, MIG mode), NVLink link counts per pair
  (`nvlink_matrix`) and NVML's PCIe common-ancestor level per pair;
- mig-layout: every GPU instance of every MIG-enabled GPU (profile; start and size in memory slices);
- model-cache: model id -> bytes on this node (`scan_model_cache`);
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
import os
import signal
import sys
import threading
from collections.abc import Callable, Iterator
from dataclasses import dataclass
from datetime import datetime, timezone
from pathlib import Path
from typing import Any

import networkx as nx
import urllib3
from kubernetes import client
from kubernetes.client.exceptions import ApiException
from kubernetes.config.config_exception import ConfigException

from extender import annotations as ann
from extender import convert, nvml
from scoring import mig_catalog

log = logging.getLogger("gpu_extender.agent")
FIELD_MANAGER = "gpu-extender-agent"
MERGE_PATCH = "application/merge-patch+json"
API_TIMEOUT = 30  # seconds per API call: a hung connection must not stop the heartbeat for good
MANIFEST = "models.json"
HF_MODEL_PREFIX = "models--"
HF_OTHER_PREFIXES = ("datasets--", "spaces--")

EXIT_USAGE = 2  # bad arguments, or no credentials for the cluster
EXIT_NO_NVML = 3  # no NVIDIA driver or NVML library (or NVML refuses to start) at start-up
EXIT_FAILED = 4  # --once or --print: the scan or the publication failed


class CacheError(Exception):
    """The model-cache directory cannot be read as a whole (its listing or its manifest)."""


@dataclass(frozen=True)
class Scan:
    """One scan's inventory annotations (all but the heartbeat), encoded as published, and the
    decisions behind them worth a log line."""

    annotations: dict[str, str]
    notes: tuple[str, ...]


# --- NVLink adjacency ---------------------------------------------------------------------------

def nvlink_matrix(inventory: nvml.Inventory) -> tuple[nvml.Matrix, list[str]]:
    """NVLink link counts between every pair of GPUs, as `nvidia-smi topo -m` prints them (NV#).

    - Direct links (the far end is a GPU of this node, found by PCI address): the number of
      active links between the two, as both ends report it (the smaller count).
    - NVSwitch links: GPUs that reach the same switch fabric (switches joined through the GPUs
      they share; one fabric on HGX/DGX boards) are pairwise connected with the smaller of their
      switch-link counts: all-pairs NV18 on 8x H100, NV12 on 8x A100. A link of unknown type
      whose far end is not a GPU of this node counts as a switch link (older drivers cannot type
      links); without an address (NVSwitches that a VM cannot see) it reaches one unseen
      node-wide fabric, as NCCL assumes. Links to anything else are ignored.
    - A pair with a MIG-enabled GPU has 0: GPU instances do no peer-to-peer (`nvidia-smi mig -lgip`
      says P2P: No for every profile).
    - A pair has 0 unless NVML reports peer-to-peer over NVLink OK both ways: links that are up
      but unusable (an NVSwitch system whose fabric manager is down) do not help a multi-GPU pod.
    Returns the matrix and, for the log, which pairs the last two rules zeroed and which links
    were ignored.
    """
    devices = inventory.devices
    n = len(devices)
    by_bus = {d.bus_id: d.index for d in devices if d.bus_id}
    direct = [[0] * n for _ in range(n)]
    switch_links = [0] * n
    fabric = nx.Graph()  # GPUs and the switches their links reach ("" for the unseen ones)
    notes: list[str] = []
    for device in devices:
        for link in device.links:
            peer = by_bus.get(link.remote_bus_id)
            if peer is not None and link.remote_kind in (nvml.RemoteKind.GPU, nvml.RemoteKind.UNKNOWN):
                direct[device.index][peer] += 1
            elif link.remote_kind in (nvml.RemoteKind.SWITCH, nvml.RemoteKind.UNKNOWN):
                switch_links[device.index] += 1
                fabric.add_edge(("gpu", device.index), ("switch", link.remote_bus_id))
            else:
                notes.append(f"GPU {device.index} NVLink {link.link} leads to {link.remote_kind.value} device "
                             f"{link.remote_bus_id or '(no address)'}, not a GPU of this node: ignored")
    on_fabric = {index: number for number, component in enumerate(nx.connected_components(fabric))
                 for kind, index in component if kind == "gpu"}
    mig_pairs, no_p2p = [], []
    matrix = []
    for i in range(n):
        row = []
        for j in range(n):
            links = 0
            if i != j:
                links = min(direct[i][j], direct[j][i])
                if i in on_fabric and on_fabric[i] == on_fabric.get(j):
                    links += min(switch_links[i], switch_links[j])
            if links and (devices[i].mig_enabled or devices[j].mig_enabled):
                mig_pairs.append((i, j))
                links = 0
            elif links and not inventory.p2p_nvlink[i][j]:
                no_p2p.append((i, j))
                links = 0
            row.append(links)
        matrix.append(tuple(row))
    if mig_pairs:
        notes.append(f"NVLink not counted between GPUs {_pairs(mig_pairs)}: MIG-enabled GPUs do no peer-to-peer")
    if no_p2p:
        notes.append(f"NVLink not counted between GPUs {_pairs(no_p2p)}: NVML reports no peer-to-peer over NVLink "
                     "(on NVSwitch systems: is the fabric manager running?)")
    return tuple(matrix), notes


def _pairs(pairs: list[tuple[int, int]]) -> str:
    return ", ".join(f"{i}-{j}" for i, j in pairs if i < j)


# --- model cache --------------------------------------------------------------------------------

def scan_model_cache(root: Path) -> dict[str, int]:
    """Model id -> bytes cached under `root`.

    With a `models.json` in `root` (a JSON object `{"model id": bytes}`), that file alone says
    what is cached; entries whose value is not a non-negative integer are skipped with a log
    line. Otherwise every folder in `root` is read:
    - `models--ORG--NAME` (a Hugging Face hub cache) is model `ORG/NAME`;
    - `datasets--*`, `spaces--*`, hidden entries, plain files and symlinks are not models;
    - a folder with files of its own is the model the folder names (`gpt2`);
    - a folder with only folders in it is an organisation, each subfolder the model `ORG/NAME`
      (`meta-llama/Llama-3.1-8B-Instruct`, as `huggingface-cli download --local-dir` lays it out).
    A model's bytes are the sizes of the regular files under its folder, symlinks not followed
    (a hub cache's snapshots link to its blobs, which count once). Models of 0 bytes are left
    out; a model found twice counts its larger copy. A folder that cannot be read is skipped
    with a log line, never counted in part. A missing `root` is an empty cache; a `root` that
    cannot be listed, or a manifest that cannot be read, is a CacheError.
    """
    manifest = root / MANIFEST
    if manifest.exists():
        return _read_manifest(manifest)
    try:
        entries = _entries(root)
    except FileNotFoundError:
        log.warning("model cache %s does not exist: reporting no cached models", root)
        return {}
    except OSError as exc:
        raise CacheError(f"cannot list the model cache {root}: {exc}") from None
    cache: dict[str, int] = {}
    for model, path in _models(entries):
        try:
            size = _tree_bytes(path)
        except OSError as exc:
            log.warning("model cache: %s (%s) cannot be read, skipped: %s", path, model, exc)
            continue
        if size:
            cache[model] = max(size, cache.get(model, 0))
    return cache


def _read_manifest(manifest: Path) -> dict[str, int]:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"cannot read the model-cache manifest {manifest}: {exc}") from None
    if not isinstance(data, dict):
        raise CacheError(f"{manifest} must be a JSON object of model id -> bytes")
    cache = {}
    for model, size in data.items():
        if not model or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            log.warning("%s: entry %r: %r is not a byte count, skipped", manifest, model, size)
        elif size:
            cache[model] = size
    return cache


def _entries(path: str | Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _is_model_dir(entry: os.DirEntry[str]) -> bool:
    return (not entry.name.startswith((".", *HF_OTHER_PREFIXES))) and entry.is_dir(follow_symlinks=False)


def _models(entries: list[os.DirEntry[str]]) -> Iterator[tuple[str, str]]:
    """(model id, folder) for each model folder among a cache's top-level entries."""
    for entry in filter(_is_model_dir, entries):
        if entry.name.startswith(HF_MODEL_PREFIX):
            yield entry.name.removeprefix(HF_MODEL_PREFIX).replace("--", "/"), entry.path
            continue
        try:
            children = _entries(entry.path)
        except OSError as exc:
            log.warning("model cache: %s cannot be read, skipped: %s", entry.path, exc)
            continue
        if any(child.is_file(follow_symlinks=False) for child in children):
            yield entry.name, entry.path
        else:
            for child in filter(_is_model_dir, children):
                yield f"{entry.name}/{child.name}", child.path


def _tree_bytes(path: str) -> int:
    total = 0
    folders = [path]
    while folders:
        for entry in _entries(folders.pop()):
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total


# --- annotations --------------------------------------------------------------------------------

def scan(cache_dir: Path | None, lib: Any = None) -> Scan:
    """Read NVML (through `lib`, default `pynvml`) and the model cache (none without `cache_dir`).
    Raises nvml.NvmlUnavailable, nvml.ScanError or CacheError."""
    hardware = nvml.read_inventory(lib)
    cache = scan_model_cache(cache_dir) if cache_dir is not None else {}
    return inventory_annotations(hardware, cache)


def inventory_annotations(hardware: nvml.Inventory, cache: dict[str, int]) -> Scan:
    """The gpu-topology, mig-layout and model-cache annotations, encoded as published."""
    nvlink, notes = nvlink_matrix(hardware)
    topology = {
        "gpus": [{"index": d.index, "uuid": d.uuid, "model": d.name, "memoryMiB": d.memory_mib,
                  "migEnabled": d.mig_enabled} for d in hardware.devices],
        "nvlink": nvlink,
        "pcie": hardware.pcie,
    }
    layout = [{"gpu": d.index, "profile": gi.profile, "start": gi.start, "size": gi.size}
              for d in hardware.devices for gi in d.instances]
    notes += _catalog_notes(hardware)
    return Scan({ann.TOPOLOGY: _encode(topology), ann.MIG_LAYOUT: _encode(layout), ann.MODEL_CACHE: _encode(cache)},
                tuple(notes))


def _catalog_notes(hardware: nvml.Inventory) -> list[str]:
    """MIG instances the extender cannot plan with: its catalog lacks the GPU or the profile."""
    notes = []
    for device in hardware.devices:
        if not device.instances:
            continue
        profiles = mig_catalog.profiles_for(device.name)
        if profiles is None:
            notes.append(f"GPU {device.index} ({device.name}): MIG geometry unknown to the extender's catalog")
            continue
        notes += [f"GPU {device.index}: MIG profile {gi.profile} not in the extender's catalog for {device.name}"
                  for gi in device.instances if gi.profile not in profiles]
    return notes


def _encode(value: Any) -> str:
    return json.dumps(value, separators=(",", ":"), sort_keys=True)


def rfc3339(moment: datetime) -> str:
    return moment.astimezone(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")


# --- publishing ---------------------------------------------------------------------------------

class Agent:
    """Publishes one node's inventory through `core` (a CoreV1Api allowed to get and patch nodes)."""

    def __init__(self, node: str, core: client.CoreV1Api, scan: Callable[[], Scan], *,
                 interval: float, heartbeat_seconds: float):
        self.node = node
        self.core = core
        self.scan = scan
        self.interval = interval
        self.heartbeat_seconds = heartbeat_seconds
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
        current = self.core.read_node(self.node, _request_timeout=API_TIMEOUT).metadata.annotations or {}
        changed = {key: value for key, value in result.annotations.items() if current.get(key) != value}
        beat = convert.heartbeat({"metadata": {"annotations": current}})
        due = beat is None or now.timestamp() - beat + self.interval > self.heartbeat_seconds
        if not changed and not due:
            log.debug("node %s: nothing changed and the heartbeat is not due", self.node)
            return
        patch = changed | {ann.HEARTBEAT: rfc3339(now)}
        self.core.patch_node(self.node, {"metadata": {"annotations": patch}}, field_manager=FIELD_MANAGER,
                             _content_type=MERGE_PATCH, _request_timeout=API_TIMEOUT)
        if changed:
            log.info("node %s: published %s", self.node, ", ".join(sorted(changed)))
        else:
            log.debug("node %s: heartbeat renewed", self.node)

    def run(self, stop: threading.Event) -> None:
        """A cycle every `interval` seconds until `stop` is set."""
        while not stop.wait(self.interval):
            self.cycle()


# --- the command --------------------------------------------------------------------------------

def main(*, node: str | None, kubeconfig: Path | None, cache_dir: Path | None, interval: float,
         heartbeat_seconds: float, once: bool, print_only: bool) -> int:
    """`gpu-extender agent`; returns the exit status (0, or one of the EXIT_* codes)."""
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
    delivered = first is not None and agent.deliver(first)
    if once:
        return 0 if delivered else EXIT_FAILED
    stop = threading.Event()
    for signum in (signal.SIGTERM, signal.SIGINT):
        signal.signal(signum, lambda *_: stop.set())
    log.info("node %s: scanning every %gs, heartbeat at least every %gs", node, interval, heartbeat_seconds)
    agent.run(stop)
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


def _error(message: str, status: int) -> int:
    print(f"gpu-extender agent: {message}", file=sys.stderr)
    return status
