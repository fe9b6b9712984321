"""The agent's work with the kubelet (extender/node/kubelet.py), one tick at a time: the device
plugin follows the node label in auto mode, once a read-back has told what the kubelet holds; the
read-back writes the allocations annotation when it changes, over whatever an earlier run left,
and removes it while the kubelet's PodResources API does not answer."""

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
TP2 = [api.PodResources(name="tp2", namespace="ns", containers=[api.ContainerResources(name="c", devices=[
    api.ContainerDevices(resource_name="nvidia.com/gpu", device_ids=GPU[2:4])])])]


class Clock:
    def __init__(self):
        self.now = 0.0

    def __call__(self) -> float:
        return self.now


class Node:
    """A KubeletSide on a fake 8x H100 with the kubelet's two services as stand-ins; `later()`
    moves the clock past every interval."""

    def __init__(self, tmp: Path):
        self.tmp, self.fake, self.clock = tmp, machines.hgx_h100(), Clock()
        (tmp / "plugins").mkdir()
        self.kubelet = Registrations(tmp / "plugins")
        self.lister: Lister | None = None
        self.core = FakeCore("n1", {ann.ALLOCATIONS: '{"ns/old": {"gpus": [0]}}'})  # an earlier run's
        options = KubeletOptions(device_plugin_dir=tmp / "plugins", pod_resources_socket=tmp / "pr.sock")
        self.side = KubeletSide("n1", self.core, options, self.patch, lib=self.fake, clock=self.clock)
        self.side.set_inventory(nvml.read_inventory(self.fake))

    def patch(self, notes: dict) -> None:
        self.core.patch_node("n1", {"metadata": {"annotations": notes}}, _content_type="application/merge-patch+json")

    def serve_pod_resources(self, pods: list) -> None:
        self.lister = Lister(self.tmp / "pr.sock", pods)

    def stop_pod_resources(self) -> None:
        self.lister.server.stop(0).wait()
        self.lister = None

    def later(self) -> None:
        self.clock.now += 10
        self.side.tick()


@pytest.fixture
def node():
    with tempfile.TemporaryDirectory(prefix="side-") as tmp:  # unix socket paths are short
        node = Node(Path(tmp))
        yield node
        node.side.shutdown()
        node.kubelet.server.stop(0)
        if node.lister:
            node.stop_pod_resources()


def test_auto_mode_serves_the_plugin_while_labelled_once_it_knows_what_the_kubelet_holds(node):
    socket = node.tmp / "plugins" / socket_name("nvidia.com/gpu")
    node.side.set_labels({ann.DEVICE_PLUGIN_LABEL: "true"})
    node.later()
    assert node.side.plugin is None and node.kubelet.requests == []  # no read-back yet: it waits
    node.serve_pod_resources(TP2)
    node.later()
    assert sorted(r.resource_name for r in node.kubelet.requests) == ["gpu-extender.io/gpu-milli", "nvidia.com/gpu"]
    assert socket.is_socket()
    assert node.side.admissions.held() == {("ns/tp2", "c"): {"nvidia.com/gpu": frozenset(GPU[2:4])}}
    node.side.set_labels({})
    node.later()
    assert node.side.plugin is None and not socket.exists()


def test_a_changed_inventory_reaches_admission_while_the_plugin_is_off(node):
    mig = machines.hgx_h100(mig={0: [("3g.40gb", 0)]})
    node.side.set_inventory(nvml.read_inventory(mig))
    assert node.side.admissions.catalog is node.side.catalog
    assert "nvidia.com/mig-3g.40gb" in node.side.admissions.catalog.resources()


def test_the_read_back_is_written_when_it_changes_and_removed_while_the_kubelet_is_away(node):
    node.later()  # no PodResources yet: an earlier run's record must not stand
    assert node.core.patches == [{ann.ALLOCATIONS: None}] and ann.ALLOCATIONS not in node.core.annotations
    node.serve_pod_resources(TP2)
    node.later()
    assert json.loads(node.core.annotations[ann.ALLOCATIONS]) == {"ns/tp2": {"gpus": [2, 3]}}
    node.later()
    assert len(node.core.patches) == 2  # unchanged: not written again
    node.stop_pod_resources()
    node.later()
    assert ann.ALLOCATIONS not in node.core.annotations  # the extender counts the plans again
