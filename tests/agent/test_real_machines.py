"""What the agent printed on real GPU machines (tests/agent/real/) against the fake machine
modelled on each, and the extender reading those annotations back."""

from __future__ import annotations

import json
from datetime import datetime, timezone
from pathlib import Path

from typer.testing import CliRunner

from extender import annotations as ann
from extender import convert
from extender.cli import app
from scoring.config import PolicyConfig
from tests.agent import machines

REAL = Path(__file__).parent / "real"
runner = CliRunner()


def cache_like_the_real_run(root: Path) -> Path:
    blobs = root / "models--meta-llama--Llama-3.1-8B" / "blobs"
    blobs.mkdir(parents=True)
    (blobs / "a").write_bytes(b"\0" * (4 << 20))
    (root / "sdxl-base").mkdir()
    (root / "sdxl-base" / "unet.safetensors").write_bytes(b"\0" * (2 << 20))
    return root


def test_the_fake_single_h100_vm_prints_what_the_real_one_did(monkeypatch, tmp_path):
    real = json.loads((REAL / "h100-vm-agent-print.json").read_text())
    monkeypatch.setattr("extender.node.nvml.pynvml", machines.h100_single_vm())
    result = runner.invoke(app, ["agent", "--once", "--print", "--model-cache-dir",
                                 str(cache_like_the_real_run(tmp_path))])
    assert result.exit_code == 0, result.output
    printed = json.loads(result.stdout)
    for gpu in (*printed[ann.TOPOLOGY]["gpus"], *real[ann.TOPOLOGY]["gpus"]):
        assert gpu.pop("uuid").startswith("GPU-")
    assert printed == real


def test_the_extender_reads_the_real_h100_inventory():
    real = json.loads((REAL / "h100-vm-agent-print.json").read_text())
    node = {"metadata": {"name": "h100-vm", "annotations": {
        **{key: json.dumps(value) for key, value in real.items()}, ann.HEARTBEAT: "2026-11-23T10:59:00Z"}},
        "status": {"allocatable": {"nvidia.com/gpu": "1"}}}
    as_of = datetime(2026, 11, 23, 11, 0, tzinfo=timezone.utc).timestamp()
    read = convert.gpu_node(node, [], as_of, PolicyConfig())
    assert [(g.index, g.uuid, g.model, g.memory_mib, g.mig_enabled) for g in read.gpus] == [
        (0, "GPU-ddcfa932-2616-cecb-a95e-350855afb5ab", "NVIDIA H100 80GB HBM3", 81559, False)]
    assert read.nvlink == ((0,),)
    assert dict(read.model_cache) == {"meta-llama/Llama-3.1-8B": 4 << 20, "sdxl-base": 2 << 20}
