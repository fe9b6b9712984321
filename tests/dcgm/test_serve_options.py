"""`gpu-extender serve`'s DCGM options: conflicting or malformed ones stop it with one line."""

from __future__ import annotations

import pytest
from typer.testing import CliRunner

from extender.cli import app
from tests.dcgm.harness import ROOT

CLUSTER = str(ROOT / "examples" / "cluster.yaml")
DUMP = str(next((ROOT / "examples" / "metrics").glob("*.prom")))


@pytest.mark.parametrize("args, message", [
    (["--dcgm-service", "gpu-operator/nvidia-dcgm-exporter", "--prometheus-url", "http://prometheus:9090"],
     "--dcgm-service and --prometheus-url exclude each other"),
    (["--dcgm-service", "a/b", "--dcgm-pod-selector", "app=x", "--prometheus-url", "http://p:9090"],
     "--dcgm-service, --dcgm-pod-selector and --prometheus-url exclude each other"),
    (["--dcgm-service", "nvidia-dcgm-exporter"], "expected NAMESPACE/NAME"),
    (["--prometheus-url", "prometheus:9090"], "expected an http:// or https:// URL"),
    (["--prometheus-url", "http://p:9090", "--dcgm-timeout", "0"], "must be more than 0 seconds"),
    (["--dcgm-pod-selector", "app=x", "--dcgm-concurrency", "0"], "--dcgm-concurrency must be at least 1"),
    (["--dcgm-service", "a/b", "--dcgm-port", "70000"], "--dcgm-port 70000"),
    (["--cluster", CLUSTER, "--prometheus-url", "http://p:9090"], "live DCGM sources need a live cluster"),
    (["--metrics", DUMP, "--dcgm-service", "a/b"], "--metrics dumps and a live DCGM source exclude each other"),
])
def test_bad_dcgm_options_exit_2_with_one_line(args, message):
    result = CliRunner().invoke(app, ["serve", *args])
    assert result.exit_code == 2, result.output
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-extender: error:") and message in lines[0], lines
