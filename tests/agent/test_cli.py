"""`gpu-extender agent` through its real entry point: exit statuses, --once --print."""

from __future__ import annotations

import ctypes.util
import json
import os
import subprocess
import sys
from datetime import datetime, timezone
from pathlib import Path

import pynvml
import pytest
import typer
import urllib3
from typer.testing import CliRunner

from extender import annotations as ann
from extender import convert
from extender.cli import app
from scoring.config import PolicyConfig
from tests.agent import machines

runner = CliRunner()


@pytest.fixture
def no_api_server(monkeypatch):
    """Fail the test on any attempt to build an API client or open an HTTP connection."""
    def refuse(*args, **kwargs):
        raise AssertionError("the agent contacted the API server")

    monkeypatch.setattr("extender.kube.api_client", refuse)
    monkeypatch.setattr(urllib3.connectionpool.HTTPConnectionPool, "urlopen", refuse)


def use(monkeypatch, fake) -> None:
    monkeypatch.setattr("extender.node.nvml.pynvml", fake)


def test_once_print_prints_the_inventory_and_never_calls_the_api_server(monkeypatch, no_api_server, tmp_path):
    use(monkeypatch, machines.dgx1v())
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "model.safetensors").write_bytes(b"\0" * 64)
    result = runner.invoke(app, ["agent", "--once", "--print", "--node-name", "gpu-node", "--kubeconfig",
                                 str(tmp_path / "absent"), "--model-cache-dir", str(tmp_path)])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert set(printed) == {ann.TOPOLOGY, ann.MIG_LAYOUT, ann.MODEL_CACHE}
    assert printed[ann.MODEL_CACHE] == {"gpt2": 64} and printed[ann.MIG_LAYOUT] == []
    node = {"metadata": {"name": "gpu-node", "annotations": {
        **{key: json.dumps(value) for key, value in printed.items()}, ann.HEARTBEAT: "2026-11-20T09:30:00Z"}}}
    as_of = datetime(2026, 11, 20, 9, 31, tzinfo=timezone.utc).timestamp()
    read = convert.gpu_node(node, [], as_of, PolicyConfig())
    assert read.nvlink == tuple(map(tuple, machines.parse_topo(machines.DGX1V_TOPO).nvlink))


@pytest.mark.parametrize("code, says", [
    (pynvml.NVML_ERROR_LIBRARY_NOT_FOUND, "no NVIDIA driver"),
    (pynvml.NVML_ERROR_DRIVER_NOT_LOADED, "no NVIDIA driver"),
    (pynvml.NVML_ERROR_NO_PERMISSION, "NVML cannot start"),
])
@pytest.mark.parametrize("args", [["--once", "--print"], ["--once", "--node-name", "n1"], ["--node-name", "n1"]])
def test_without_nvml_it_says_so_in_one_line_and_exits_3(monkeypatch, no_api_server, code, says, args):
    fake = machines.pcie_only()
    fake.init_error = code
    use(monkeypatch, fake)
    result = runner.invoke(app, ["agent", *args])
    assert result.exit_code == 3
    assert result.stdout == ""
    assert len(result.stderr.splitlines()) == 1 and says in result.stderr


@pytest.mark.skipif(ctypes.util.find_library("nvidia-ml") is not None, reason="this machine has an NVIDIA driver")
def test_the_real_pynvml_on_a_machine_without_a_driver():
    exe = Path(sys.executable).with_name("gpu-extender")
    done = subprocess.run([str(exe), "agent", "--once", "--print"], capture_output=True, text=True, timeout=60,
                          env={**os.environ, "NODE_NAME": "n1"})
    assert done.returncode == 3
    assert done.stdout == "" and done.stderr.splitlines() == [
        "gpu-extender agent: no NVIDIA driver on this node (NVML: NVML Shared Library Not Found)"]


def test_a_scan_that_fails_midway_prints_nothing_and_exits_4(monkeypatch, no_api_server):
    fake = machines.hgx_h100()
    fake.fail = {"nvmlDeviceGetNvLinkRemoteDeviceType": (20, pynvml.NVML_ERROR_UNKNOWN)}
    use(monkeypatch, fake)
    result = runner.invoke(app, ["agent", "--once", "--print"])
    assert result.exit_code == 4
    assert result.stdout == "" and "nvmlDeviceGetNvLinkRemoteDeviceType" in result.stderr


def test_publishing_needs_a_node_name(monkeypatch, no_api_server):
    monkeypatch.delenv("NODE_NAME", raising=False)
    use(monkeypatch, machines.pcie_only())
    result = runner.invoke(app, ["agent", "--once"])
    assert result.exit_code == 2 and "--node-name" in result.stderr


def test_the_default_heartbeat_stays_well_inside_the_extenders_max_age():
    params = {p.name: p.default for p in typer.main.get_command(app).commands["agent"].params}
    # the heartbeat is renewed within heartbeat-seconds, late by at most one scan interval
    assert params["heartbeat_seconds"] + params["interval"] <= PolicyConfig().agent.max_age_seconds / 2


def test_publishing_without_credentials_says_so_and_exits_2(monkeypatch, tmp_path):
    monkeypatch.delenv("KUBERNETES_SERVICE_HOST", raising=False)
    use(monkeypatch, machines.pcie_only())
    result = runner.invoke(app, ["agent", "--once", "--node-name", "n1", "--kubeconfig", str(tmp_path / "absent")])
    assert result.exit_code == 2
    assert len(result.stderr.splitlines()) == 1 and "cannot reach the cluster" in result.stderr


def test_print_devices_shows_what_the_plugin_advertises_and_an_allocate_answer(monkeypatch, no_api_server):
    fake = machines.hgx_h100(mig={0: [("3g.40gb", 0), ("3g.40gb", 4)]})
    # The scan reads each GPU's memory once, the health check once more: GPUs 5-7 fail the second.
    fake.fail["nvmlDeviceGetMemoryInfo"] = (8 + 5, pynvml.NVML_ERROR_GPU_IS_LOST)
    use(monkeypatch, fake)
    result = runner.invoke(app, ["agent", "--print-devices", "--cdi"])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    assert printed["unhealthy"] == {machines.uuid("h100", i): "NVML cannot read it (GPU is lost)" for i in (5, 6, 7)}
    resources = printed["resources"]
    assert {r: resources[r]["devices"] for r in resources} == {
        "gpu-extender.io/gpu-milli": 7000, "nvidia.com/gpu": 7, "nvidia.com/mig-3g.40gb": 2}
    share = resources["gpu-extender.io/gpu-milli"]["allocate"]
    assert share["devices"] == 250 and share["envs"]["CUDA_MPS_ACTIVE_THREAD_PERCENTAGE"] == "25"
    assert resources["nvidia.com/gpu"]["allocate"]["cdiDevices"] == [f"nvidia.com/gpu={machines.uuid('h100', 1)}"]


def test_the_device_plugin_needs_the_read_back(monkeypatch, no_api_server):
    use(monkeypatch, machines.pcie_only())
    result = runner.invoke(app, ["agent", "--node-name", "n", "--no-read-back"])
    assert result.exit_code == 2 and "--no-read-back needs --device-plugin off" in result.output
