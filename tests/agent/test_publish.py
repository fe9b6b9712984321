"""What the agent patches and when: only changed annotations, the heartbeat when due, nothing at
all after a failed scan."""

from __future__ import annotations

import json
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pynvml
import pytest

from extender import annotations as ann
from extender import convert
from extender.node.agent import Agent
from extender.node.inventory import scan
from extender.node.nvml import ScanError, read_inventory
from scoring.config import PolicyConfig
from tests.agent import machines
from tests.agent.fake_core import FakeCore
from tests.agent.fake_pynvml import FakePynvml

T0 = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)
INVENTORY = {ann.TOPOLOGY, ann.MIG_LAYOUT, ann.MODEL_CACHE}


def at(seconds: float) -> datetime:
    return T0 + timedelta(seconds=seconds)


def make_agent(core: FakeCore, fake: FakePynvml, cache: Path | None = None) -> Agent:
    return Agent(core.name, core, lambda: scan(cache, lib=fake), interval=60, heartbeat_seconds=120)


def test_patches_only_what_changed_and_renews_the_heartbeat_before_it_is_due(tmp_path: Path):
    (tmp_path / "gpt2").mkdir()
    (tmp_path / "gpt2" / "model.safetensors").write_bytes(b"\0" * 100)
    core = FakeCore("n1", {"kubernetes.io/hostname": "n1", ann.CLASS: "unrelated"})
    agent = make_agent(core, machines.hgx_a100_4(), tmp_path)

    assert agent.cycle(at(0))
    assert set(core.patches[-1]) == INVENTORY | {ann.HEARTBEAT}
    assert core.annotations["kubernetes.io/hostname"] == "n1"  # others' annotations untouched
    assert json.loads(core.annotations[ann.MODEL_CACHE]) == {"gpt2": 100}

    assert agent.cycle(at(30))  # nothing changed, heartbeat 30 s old: no call at all
    assert len(core.patches) == 1
    assert agent.cycle(at(59))  # 59 + 60 < 120: the next cycle is still in time
    assert len(core.patches) == 1
    assert agent.cycle(at(61))  # waiting a cycle more would let it pass 120 s
    assert core.patches[-1] == {ann.HEARTBEAT: "2026-11-20T09:31:01Z"}

    (tmp_path / "gpt2" / "tokenizer.json").write_bytes(b"\0" * 11)
    assert agent.cycle(at(70))
    assert core.patches[-1] == {ann.MODEL_CACHE: '{"gpt2":111}', ann.HEARTBEAT: "2026-11-20T09:31:10Z"}
    assert len(core.patches) == 3


def test_annotations_changed_by_someone_else_are_put_back():
    core = FakeCore("n1")
    agent = make_agent(core, machines.dgx1v())
    agent.cycle(at(0))
    published = dict(core.annotations)
    core.annotations[ann.TOPOLOGY] = '{"gpus":[]}'
    del core.annotations[ann.MIG_LAYOUT]
    assert agent.cycle(at(10))
    assert set(core.patches[-1]) == {ann.TOPOLOGY, ann.MIG_LAYOUT, ann.HEARTBEAT}
    assert {k: core.annotations[k] for k in INVENTORY} == {k: published[k] for k in INVENTORY}


@pytest.mark.parametrize("call, after", [
    ("nvmlDeviceGetCount", 0),
    ("nvmlDeviceGetUUID", 5),
    ("nvmlDeviceGetNvLinkRemotePciInfo", 40),
    ("nvmlDeviceGetTopologyCommonAncestor", 20),
    ("nvmlDeviceGetP2PStatus", 30),
])
def test_an_nvml_error_midway_publishes_nothing(call, after, caplog):
    good = FakeCore("n1")
    make_agent(good, machines.dgx1v()).cycle(at(0))
    fake = machines.dgx1v()
    fake.fail = {call: (after, pynvml.NVML_ERROR_GPU_IS_LOST)}
    core = FakeCore("n1", good.annotations)
    assert not make_agent(core, fake).cycle(at(500))  # the heartbeat is long due, yet nothing is sent
    assert core.patches == [] and core.annotations == good.annotations
    assert fake.open == 0, "NVML is shut down after a failed scan too"
    assert call in caplog.text and "GPU is lost" in caplog.text and "publishing nothing" in caplog.text
    # so the extender, at its default agent.maxAgeSeconds, soon stops trusting the old data
    later = at(PolicyConfig().agent.max_age_seconds + 1).timestamp()
    assert convert.gpu_node(core.node(), [], later, PolicyConfig()).nvlink is None


def test_mig_instances_that_may_not_be_listed_fail_the_scan_with_a_hint():
    fake = machines.hgx_h100(mig={0: [("7g.80gb", 0)]})
    fake.fail = {"nvmlDeviceGetGpuInstances": (0, pynvml.NVML_ERROR_NO_PERMISSION)}
    with pytest.raises(ScanError, match="NVIDIA_MIG_MONITOR_DEVICES=all"):
        read_inventory(fake)


def test_a_bad_manifest_publishes_nothing(tmp_path: Path):
    (tmp_path / "models.json").write_text("[1, 2]")
    core = FakeCore("n1")
    assert not make_agent(core, machines.pcie_only(), tmp_path).cycle(at(0))
    assert core.patches == []


def test_an_api_server_that_fails_is_logged_and_retried(caplog):
    core = FakeCore("n1")
    core.down = True
    agent = make_agent(core, machines.pcie_only())
    assert not agent.cycle(at(0))
    assert "503" in caplog.text
    core.down = False
    assert agent.cycle(at(60))
    assert set(core.patches[-1]) == INVENTORY | {ann.HEARTBEAT}


def test_decisions_are_logged_when_they_change(caplog):
    fake = machines.hgx_h100()
    fake.p2p = False
    agent = make_agent(FakeCore("n1"), fake)
    with caplog.at_level("INFO", logger="gpu_extender.agent"):
        agent.cycle(at(0))
        agent.cycle(at(60))
    assert caplog.text.count("fabric manager") == 1
