"""The agent's work with the kubelet (extender/node/kubelet.py), one tick at a time: the device
plugin follows the node label in auto mode, the read-back publishes the allocations annotation
when it changes and removes it while the kubelet's PodResources API does not answer."""

from __future__ import annotations

import json
import tempfile
from pathlib import Path

import pytest

from extender import annotations as ann
from extender.node import nvml
from extender.node.deviceplugin import socket_name
from extender.node.kubelet import KubeletOptions, KubeletSide
from extender.node.kubeletapi.podresources.v1 import api_pb2 as api
from tests.agent import machines
from tests.agent.fake_core import FakeCore
from tests.node.kubelet_standins import Lister, Registrations

GPU = [machines.uuid("h100", i) for i in range(8)]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


@pytest.fixture
def side():
    with tempfile.TemporaryDirectory(prefix="side-") as tmp:  # unix socket paths are short
        yield from _side(Path(tmp))


def _side(tmp_path: Path):
    fake = machines.hgx_h100()
    (tmp_path / "plugins").mkdir()
    kubelet = Registrations(tmp_path / "plugins")
    core = FakeCore("n1")
    clock = Clock()
    options = KubeletOptions(device_plugin_dir=tmp_path / "plugins", pod_resources_socket=tmp_path / "pr.sock")
    patch = lambda notes: core.patch_node("n1", {"metadata": {"annotations": notes}},  # noqa: E731
                                          _content_type="application/merge-patch+json")
    side = KubeletSide("n1", core, options, patch, lib=fake, clock=clock)
    side.set_inventory(nvml.read_inventory(fake))
    yield side, core, kubelet, clock, tmp_path
    side.shutdown()
    kubelet.server.stop(0)


def test_auto_mode_serves_the_plugin_while_the_node_has_the_label(side):
    kubelet_side, _, kubelet, clock, tmp_path = side
    kubelet_side.tick()
    assert kubelet_side.plugin is None and kubelet.requests == []
    kubelet_side.set_labels({ann.DEVICE_PLUGIN_LABEL: "true"})
    clock.now += 1
    kubelet_side.tick()
    assert sorted(r.resource_name for r in kubelet.requests) == ["gpu-extender.io/gpu-milli", "nvidia.com/gpu"]
    assert (tmp_path / "plugins" / socket_name("nvidia.com/gpu")).is_socket()
    kubelet_side.set_labels({})
    clock.now += 1
    kubelet_side.tick()
    assert kubelet_side.plugin is None and not (tmp_path / "plugins" / socket_name("nvidia.com/gpu")).exists()


def test_the_read_back_is_published_when_it_changes_and_removed_while_the_kubelet_is_away(side):
    kubelet_side, core, _, clock, tmp_path = side
    kubelet_side.tick()  # no PodResources socket yet: nothing to publish
    assert core.patches == []
    pods = [api.PodResources(name="tp2", namespace="ns", containers=[api.ContainerResources(name="c", devices=[
        api.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=GPU[2:4])])])]
    lister = Lister(tmp_path / "pr.sock", pods)
    try:
        clock.now += 2
        kubelet_side.tick()
        assert json.loads(core.annotations[ann.ALLOCATIONS]) == {"ns/tp2": {"gpus": [2, 3]}}
        clock.now += 2
        kubelet_side.tick()
        assert len(core.patches) == 1  # unchanged: not written again
    finally:
        lister.server.stop(0).wait()
    clock.now += 2
    kubelet_side.tick()
    assert ann.ALLOCATIONS not in core.annotations  # the extender counts the plans again
