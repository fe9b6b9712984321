"""DCGM figures from dcgm-exporter text (a scrape or a saved dump) -> per-GPU samples.

Reads the Prometheus text format with `prometheus_client`'s parser. Accepts both spellings of
the labels dcgm-exporter has used (`UUID`/`uuid`, `Hostname`/`hostname`). On MIG-enabled GPUs
dcgm-exporter reports one row per GPU instance (`GPU_I_PROFILE`, `GPU_I_ID`) and no GPU_UTIL; a
GPU's utilization is then the graphics-engine activity of its instances weighted by their
compute slices (`3g.40gb` = 3 of 7).
"""

from __future__ import annotations

import os
from collections import defaultdict
from pathlib import Path

from prometheus_client.parser import text_string_to_metric_families

from scoring.mig_catalog import COMPUTE_SLICES, compute_slices
from scoring.model import GpuSample

GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
_WANTED = (GPU_UTIL, GR_ENGINE_ACTIVE, FB_USED, FB_FREE)


class MetricsError(ValueError):
    """Text that is not dcgm-exporter output."""


def parse(text: str, default_time: float) -> dict[str, GpuSample]:
    """Samples by GPU UUID. Rows without a timestamp are dated `default_time`."""
    rows: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    engine: dict[str, float] = defaultdict(float)
    times: dict[str, float] = {}
    try:
        for family in text_string_to_metric_families(text):
            for sample in family.samples:
                if sample.name not in _WANTED:
                    continue
                labels = sample.labels
                uuid = labels.get("UUID") or labels.get("uuid")
                if not uuid:
                    continue
                times[uuid] = max(times.get(uuid, 0.0), sample.timestamp or default_time)
                profile = labels.get("GPU_I_PROFILE")
                if sample.name == GR_ENGINE_ACTIVE and profile:
                    engine[uuid] += sample.value * compute_slices(profile) / COMPUTE_SLICES
                elif sample.name == GR_ENGINE_ACTIVE:
                    engine[uuid] = max(engine[uuid], sample.value)
                else:
                    rows[uuid][sample.name] += sample.value
    except ValueError as exc:
        raise MetricsError(f"not Prometheus text: {exc}") from None
    samples = {}
    for uuid in times:
        row = rows[uuid]
        util = row[GPU_UTIL] / 100.0 if GPU_UTIL in row else engine.get(uuid, 0.0)
        samples[uuid] = GpuSample(
            util=min(1.0, max(0.0, util)),
            fb_used_mib=row.get(FB_USED, 0.0),
            fb_free_mib=row.get(FB_FREE, 0.0),
            at=times[uuid],
        )
    return samples


def load_dump(path: Path) -> dict[str, GpuSample]:
    """Samples from a saved dcgm-exporter dump; rows without a timestamp get the file's mtime."""
    try:
        text = path.read_text()
        mtime = os.stat(path).st_mtime
    except OSError as exc:
        raise MetricsError(f"cannot read metrics file {path}: {exc.strerror}") from None
    try:
        return parse(text, mtime)
    except MetricsError as exc:
        raise MetricsError(f"metrics file {path}: {exc}") from None

