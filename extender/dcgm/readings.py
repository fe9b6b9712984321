"""DCGM figures -> per-GPU samples, from dcgm-exporter text (a scrape or a saved dump) or from the
result of a Prometheus instant query.

Both sources become rows (metric, labels, value, time) and go through one aggregation, so a GPU
reads the same whichever way its figures arrived. Rules:
- A GPU is named by its `UUID` label (`uuid` in dcgm-exporter 1.x and in some relabelled
  setups); rows without one are skipped. Its node is the `Hostname` label (`hostname` since
  dcgm-exporter renamed it), kept for log lines only. Pod attribution labels (`pod`/`namespace`/
  `container`, or the old `pod_name`/`pod_namespace`/`container_name`) are not needed and ignored.
- Metrics read: DCGM_FI_DEV_GPU_UTIL (%), DCGM_FI_PROF_GR_ENGINE_ACTIVE (ratio),
  DCGM_FI_DEV_FB_USED / DCGM_FI_DEV_FB_FREE (MiB); dcgm-exporter 1.x's `dcgm_gpu_utilization`,
  `dcgm_fb_used`, `dcgm_fb_free` are read as the first, third and fourth.
- On MIG-enabled GPUs dcgm-exporter reports one row per GPU instance (`GPU_I_PROFILE`,
  `GPU_I_ID`) and no GPU_UTIL; the GPU's utilization is then the graphics-engine activity of its
  instances weighted by their compute slices (`3g.40gb` = 3 of 7), its framebuffer the sum over
  its instances. A whole GPU without GPU_UTIL uses its graphics-engine activity.
- The same series given twice (two Prometheus jobs scraping one exporter) counts once: the newer
  row wins. Rows whose value is not a finite number are skipped.
- A GPU's sample time is the newest time among its rows; rows without one get `default_time`.
"""

from __future__ import annotations

import math
import os
from collections import defaultdict
from collections.abc import Collection, Iterable, Mapping
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

from prometheus_client.parser import text_string_to_metric_families

from scoring.mig_catalog import COMPUTE_SLICES, compute_slices
from scoring import utilization
from scoring.model import GpuSample, node_sample_key

GPU_UTIL = "DCGM_FI_DEV_GPU_UTIL"
GR_ENGINE_ACTIVE = "DCGM_FI_PROF_GR_ENGINE_ACTIVE"
FB_USED = "DCGM_FI_DEV_FB_USED"
FB_FREE = "DCGM_FI_DEV_FB_FREE"
LEGACY_NAMES = {"dcgm_gpu_utilization": GPU_UTIL, "dcgm_fb_used": FB_USED, "dcgm_fb_free": FB_FREE}
"""dcgm-exporter 1.x metric names -> today's."""
METRIC_NAMES = (GPU_UTIL, GR_ENGINE_ACTIVE, FB_USED, FB_FREE, *LEGACY_NAMES)
"""Every metric name read, as exposed (for selecting them in Prometheus)."""
_CANONICAL = {name: LEGACY_NAMES.get(name, name) for name in METRIC_NAMES}
TIME_LABEL = "gpu_extender_metric"
"""The label that carries a series' metric name through `timestamp()` (which drops `__name__`)."""


class MetricsError(ValueError):
    """Text or a query result that is not what dcgm-exporter or Prometheus produce."""


@dataclass(frozen=True, slots=True)
class Row:
    """One reading of one metric: its exposed name, labels, value and time (None: not given)."""

    metric: str
    labels: Mapping[str, str]
    value: float
    at: float | None


@dataclass(frozen=True)
class Reading:
    """Samples by GPU UUID, and the exporter's Hostname label by GPU UUID where it was given."""

    samples: dict[str, GpuSample] = field(default_factory=dict)
    hosts: dict[str, str] = field(default_factory=dict)


def parse(text: str, default_time: float) -> dict[str, GpuSample]:
    """Samples by GPU UUID from dcgm-exporter text. Rows without a timestamp are dated `default_time`."""
    return read_text(text, default_time).samples


def read_text(text: str, default_time: float) -> Reading:
    """A Reading of dcgm-exporter text; raises MetricsError when it is not Prometheus text."""
    rows = (Row(s.name, s.labels, s.value, s.timestamp)
            for family in text_string_to_metric_families(text) for s in family.samples if s.name in _CANONICAL)
    try:
        return aggregate(rows, default_time)  # streamed: a dump of 50 MB is never held as rows
    except ValueError as exc:
        raise MetricsError(f"not Prometheus text: {exc}") from None


def read_query_results(values: Any, times: Any) -> Reading:
    """A Reading of two Prometheus instant-query results (`data` of /api/v1/query, evaluated at
    the same instant): the metrics themselves, and their sample times (`timestamp(<metric>)`)
    with the metric's name in TIME_LABEL. A series is dated by its matching time series (an
    instant query's own value time is the evaluation time, not when the exporter was read); a
    series without one is skipped."""
    times_by_series: dict[tuple[str, frozenset], float] = {}
    for metric, value in _vector(times, "timestamp query"):
        name = metric.pop(TIME_LABEL, "")
        times_by_series[(name, frozenset(metric.items()))] = value
    rows = []
    for metric, value in _vector(values, "metrics query"):
        name = metric.pop("__name__", "")
        at = times_by_series.get((name, frozenset(metric.items())))
        if name in _CANONICAL and at is not None:
            rows.append(Row(name, metric, value, at))
    return aggregate(rows, default_time=0.0)



def _vector(data: Any, what: str) -> list[tuple[dict[str, str], float]]:
    """(labels, value) of an instant vector; raises MetricsError for anything else."""
    if not isinstance(data, Mapping) or data.get("resultType") != "vector" or not isinstance(data.get("result"), list):
        raise MetricsError(f"{what}: not an instant vector result")
    series = []
    for item in data["result"]:
        try:
            metric, (_, text) = item["metric"], item["value"]
            series.append((dict(metric), float(text)))
        except (KeyError, TypeError, ValueError):
            raise MetricsError(f"{what}: malformed series {str(item)[:200]}") from None
    return series


def aggregate(rows: Iterable[Row], default_time: float) -> Reading:
    """Samples by GPU UUID from rows (the rules are in the module docstring)."""
    # (uuid, GPU instance, metric) -> (time, value, MIG profile) of the newest row: only what the
    # figures need is kept, not the rows' label maps
    latest: dict[tuple[str, str, str], tuple[float, float, str]] = {}
    hosts: dict[str, str] = {}
    for row in rows:
        labels = row.labels
        uuid = labels.get("UUID") or labels.get("uuid")
        if not uuid or not math.isfinite(row.value):
            continue
        at = row.at or default_time
        key = (uuid, labels.get("GPU_I_ID", ""), _CANONICAL[row.metric])
        if key not in latest or at >= latest[key][0]:
            latest[key] = (at, row.value, labels.get("GPU_I_PROFILE", ""))
        host = labels.get("Hostname") or labels.get("hostname")
        if host:
            hosts[uuid] = host
    figures: dict[str, dict[str, float]] = defaultdict(lambda: defaultdict(float))
    engine: dict[str, float] = defaultdict(float)
    times: dict[str, float] = {}
    for (uuid, _, metric), (at, value, profile) in latest.items():
        times[uuid] = max(times.get(uuid, 0.0), at)
        if metric == GR_ENGINE_ACTIVE and profile:
            engine[uuid] += value * compute_slices(profile) / COMPUTE_SLICES
        elif metric == GR_ENGINE_ACTIVE:
            engine[uuid] = max(engine[uuid], value)
        else:
            figures[uuid][metric] += value
    samples = {}
    for uuid, at in times.items():
        row_figures = figures[uuid]
        util = row_figures[GPU_UTIL] / 100.0 if GPU_UTIL in row_figures else engine.get(uuid, 0.0)
        samples[uuid] = GpuSample(
            util=min(1.0, max(0.0, util)),
            fb_used_mib=row_figures.get(FB_USED, 0.0),
            fb_free_mib=row_figures.get(FB_FREE, 0.0),
            at=at,
        )
    return Reading(samples, hosts)


def node_samples(samples: Mapping[str, GpuSample], owners: Mapping[str, str],
                 nodes: Collection[str]) -> dict[str, GpuSample]:
    """Node-level samples (`node_sample_key`) for the `nodes` that own GPUs in `owners` (GPU
    UUID -> node name): util is the mean load of the node's GPUs, dated by the oldest of them
    (the node is no fresher than its stalest GPU); framebuffer figures are folded into util."""
    loads: dict[str, list[tuple[float, float]]] = defaultdict(list)
    for uuid, node in owners.items():
        sample = samples.get(uuid)
        if sample is not None and node in nodes:
            loads[node].append((utilization.load(sample), sample.at))
    return {node_sample_key(node): GpuSample(sum(u for u, _ in figures) / len(figures), 0.0, 0.0,
                                             min(at for _, at in figures))
            for node, figures in loads.items()}


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
