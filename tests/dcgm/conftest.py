"""Fixtures of the DCGM tests: GPU nodes in a ClusterView, and a fleet of dcgm-exporter stand-ins
with a real Prometheus scraping them (tests/dcgm/harness.py)."""

from __future__ import annotations

import json
import time
from dataclasses import dataclass
from datetime import datetime, timezone

import pytest
from prometheus_client import CollectorRegistry

from extender import annotations as ann
from extender.cluster import ClusterView
from extender.dcgm.refresh import DcgmMetrics
from scoring import utilization
from scoring.config import PolicyConfig
from scoring.model import Plan, SignalResult
from scoring.utilization import UtilizationArgs
from tests.dcgm.harness import Exporter, Prometheus, dated, node_text, node_uuid

STALE_BY = 60.0  # seconds: how old node-stale's frozen rows are when the fleet starts


def gpu_node(name: str, gpus: int = 4) -> dict:
    """A Node with `gpus` whole GPUs named as the stand-in exporters name them, agent data current."""
    topology = {"gpus": [{"index": i, "uuid": node_uuid(name, i), "model": "NVIDIA H100 80GB HBM3",
                          "memoryMiB": 81559, "migEnabled": False} for i in range(gpus)],
                "nvlink": [[0] * gpus for _ in range(gpus)], "pcie": [[50] * gpus for _ in range(gpus)]}
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {"apiVersion": "v1", "kind": "Node",
            "metadata": {"name": name, "labels": {"nvidia.com/gpu.count": str(gpus)},
                         "annotations": {ann.TOPOLOGY: json.dumps(topology), ann.HEARTBEAT: now}},
            "status": {"allocatable": {"nvidia.com/gpu": str(gpus)}, "capacity": {"nvidia.com/gpu": str(gpus)}}}


def gpu_view(*names: str, ttl: float = 90.0) -> ClusterView:
    view = ClusterView(PolicyConfig(utilization=UtilizationArgs(ttl)))
    view.replace_all([gpu_node(name) for name in names], [])
    return view


def utilization_of(view: ClusterView, name: str, now: float | None = None) -> SignalResult:
    """The utilization signal of node `name` as the view would score it (at `now`)."""
    node = view.node(name)
    assert node is not None and node.gpus, f"{name} has no GPU inventory in the view"
    return utilization.evaluate(node, Plan(), view.samples, view.now() if now is None else now,
                                view.config.utilization)


class Counted:
    """DcgmMetrics registered on a registry of their own, read back by name."""

    def __init__(self) -> None:
        self.metrics = DcgmMetrics()
        self.registry = CollectorRegistry()
        for collector in self.metrics.collectors():
            self.registry.register(collector)

    def failures(self, reason: str) -> float:
        return self.registry.get_sample_value("gpu_extender_dcgm_failures_total", {"reason": reason}) or 0.0


@dataclass
class Fleet:
    exporters: dict[str, Exporter]
    prometheus: Prometheus
    started: float


@pytest.fixture(scope="session")
def fleet(tmp_path_factory) -> Fleet:
    """Stand-ins for six nodes' exporters, every one a Prometheus target: node-a (the reference
    sample), node-b (the same with `uuid`/`hostname` labels), node-slow (answers after 10 s),
    node-garbage (an HTML page), node-down (refuses connections), node-stale (rows dated STALE_BY
    seconds before the fleet started), node-gone (normal, until a test stops it)."""
    started = time.time()
    exporters = {
        "node-a": Exporter(node_text("node-a")),
        "node-b": Exporter(node_text("node-b", lowercase=True)),
        "node-slow": Exporter(node_text("node-slow"), delay=10),
        "node-garbage": Exporter(node_text("node-garbage"), garbage=True),
        "node-down": Exporter(node_text("node-down")),
        "node-stale": Exporter(dated(node_text("node-stale"), started - STALE_BY)),
        "node-gone": Exporter(node_text("node-gone")),
    }
    exporters["node-down"].stop()
    prometheus = None
    try:
        prometheus = Prometheus(tmp_path_factory.mktemp("prometheus"), [e.target for e in exporters.values()])
        prometheus.wait_up([exporters[name].target for name in ("node-a", "node-b", "node-stale", "node-gone")])
        yield Fleet(exporters, prometheus, started)
    finally:
        if prometheus is not None:
            prometheus.stop()
        for exporter in exporters.values():
            exporter.stop()
