"""One scan of this node: its NVML inventory and model cache, and the inventory annotations
(gpu-topology, mig-layout, model-cache) encoded as published."""

from __future__ import annotations

import json
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extender import annotations as ann
from extender.node import nvml
from extender.node.model_cache import scan_model_cache
from extender.node.topology import nvlink_matrix
from scoring import mig_catalog


@dataclass(frozen=True)
class Scan:
    """One scan's inventory annotations (all but the heartbeat), encoded as published, the
    decisions behind them worth a log line, and the hardware they were read from."""

    annotations: dict[str, str]
    notes: tuple[str, ...]
    hardware: nvml.Inventory | None = None


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
                tuple(notes), hardware)


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
