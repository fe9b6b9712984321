"""The agent over each reference machine of topologies.md: what it publishes, read back by the
extender's own reader (`extender.convert.gpu_node`), equals what `nvidia-smi topo -m` printed on
that machine. Where nvidia-smi prints NV#, it hides the PCIe level; those cells are stated per
machine from its PCIe layout."""

from __future__ import annotations

import json
import logging
from collections.abc import Callable
from datetime import datetime, timezone

import pytest

from extender import annotations as ann
from extender import convert
from extender.node import nvml
from extender.node.agent import Agent
from extender.node.inventory import inventory_annotations, scan
from scoring import mig_catalog
from scoring.config import PolicyConfig
from scoring.model import GpuNode, MigInstance
from tests.agent import machines
from tests.agent.fake_core import FakeCore
from tests.agent.fake_pynvml import FakePynvml

NOW = datetime(2026, 11, 20, 9, 30, tzinfo=timezone.utc)


def publish(fake: FakePynvml) -> GpuNode:
    """One agent cycle over the machine; the node it annotated, as the extender reads it."""
    core = FakeCore("gpu-node")
    agent = Agent("gpu-node", core, lambda: scan(None, lib=fake), interval=60, heartbeat_seconds=120)
    assert agent.cycle(NOW)
    assert fake.open == 0, "nvmlShutdown after every scan"
    node = convert.gpu_node(core.node(), [], NOW.timestamp(), PolicyConfig())
    assert not node.notes, node.notes  # nothing unreadable, nothing stale
    return node


def pcie(topo: machines.Topo, hidden: Callable[[int, int], int]) -> tuple[tuple[int, ...], ...]:
    return tuple(tuple(hidden(i, j) if level is None else level for j, level in enumerate(row))
                 for i, row in enumerate(topo.pcie))


def matrix(rows: list[list[int]]) -> tuple[tuple[int, ...], ...]:
    return tuple(map(tuple, rows))


def test_hgx_h100_nvswitch_is_all_pairs_nv18():
    node = publish(machines.hgx_h100())
    topo = machines.parse_topo(machines.HGX_H100_TOPO)
    assert node.nvlink == matrix(topo.nvlink)
    assert all(node.nvlink[i][j] == 18 for i in range(8) for j in range(8) if i != j)
    # each GPU on its own root port: NODE within a CPU (NUMA affinity 0 or 1), SYS across
    assert node.pcie == pcie(topo, lambda i, j: 40 if i // 4 == j // 4 else 50)
    assert [(g.index, g.uuid, g.model, g.memory_mib, g.mig_enabled) for g in node.gpus] == [
        (i, machines.uuid("h100", i), "NVIDIA H100 80GB HBM3", 81559, False) for i in range(8)]
    assert node.mig_layout == ()


def test_h100_vm_with_switches_it_cannot_see_is_still_nv18():
    node = publish(machines.h100_vm())
    topo = machines.parse_topo(machines.H100_VM_TOPO)
    assert node.nvlink == matrix(topo.nvlink)
    assert node.pcie == pcie(topo, lambda i, j: 30)  # a VM flattens PCIe: PHB everywhere (NICs say so)


def test_hgx_a100_4_gpu_is_all_pairs_nv4():
    node = publish(machines.hgx_a100_4())
    topo = machines.parse_topo(machines.HGX_A100_4_TOPO)
    assert node.nvlink == matrix(topo.nvlink)
    assert all(node.nvlink[i][j] == 4 for i in range(4) for j in range(4) if i != j)
    # GPUs 0-1 and 2-3 share their NIC's switch tree (PXB), NUMA nodes 2 and 6 are SYS apart
    assert node.pcie == pcie(topo, lambda i, j: 20 if i // 2 == j // 2 else 50)


def test_dgx1v_hybrid_cube_mesh_counts_links_per_peer():
    node = publish(machines.dgx1v())
    topo = machines.parse_topo(machines.DGX1V_TOPO)
    assert node.nvlink == matrix(topo.nvlink)
    assert all(sum(row) == 6 for row in node.nvlink)  # V100: 6 NVLink2 links each
    assert node.nvlink[0][5] == node.nvlink[1][4] == 0
    # two GPUs per PCIe switch (PIX), two switches per CPU (NODE), SYS across CPUs
    assert node.pcie == pcie(topo, lambda i, j: 10 if i // 2 == j // 2 else 40 if i // 4 == j // 4 else 50)


def test_pcie_only_server_has_no_nvlink_and_nvidia_smis_pcie_levels():
    node = publish(machines.pcie_only())
    topo = machines.parse_topo(machines.PCIE_ONLY_TOPO)
    assert node.nvlink == matrix(topo.nvlink) == tuple((0,) * 8 for _ in range(8))
    assert all(level is not None for row in topo.pcie for level in row)
    assert node.pcie == pcie(topo, lambda i, j: pytest.fail("no NV# cells here"))


def test_a_link_that_is_down_is_not_counted_and_both_ends_must_agree():
    fake = machines.dgx1v()
    to_gpu3 = [link for link in fake.gpus[0].links if link.remote_bus == machines.DGX1V_BUSES[3]]
    assert len(to_gpu3) == 2
    to_gpu3[0].active = False
    node = publish(fake)
    expected = machines.parse_topo(machines.DGX1V_TOPO).nvlink
    expected[0][3] = expected[3][0] = 1
    assert node.nvlink == matrix(expected)


def test_no_peer_to_peer_over_nvlink_means_no_links(caplog):
    caplog.set_level(logging.INFO, logger="gpu_extender.agent")
    fake = machines.hgx_h100()
    fake.p2p = False  # the NVSwitch fabric manager is down
    node = publish(fake)
    assert node.nvlink == tuple((0,) * 8 for _ in range(8))
    assert "fabric manager" in caplog.text and "0-1, 0-2" in caplog.text


H100_MIG = {
    0: [("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)],
    1: [("4g.40gb", 0), ("1g.20gb", 4), ("1g.10gb+me", 6)],
    2: [],  # MIG enabled, no instances yet
}


def test_h100_mig_layout_with_mixed_instances():
    node = publish(machines.hgx_h100(mig=H100_MIG))
    assert set(node.mig_layout) == {
        MigInstance(0, "3g.40gb", 0, 4), MigInstance(0, "2g.20gb", 4, 2), MigInstance(0, "1g.10gb", 6, 1),
        MigInstance(1, "4g.40gb", 0, 4), MigInstance(1, "1g.20gb", 4, 2), MigInstance(1, "1g.10gb+me", 6, 1),
    }
    assert len(node.mig_layout) == 6
    profiles = mig_catalog.profiles_for("NVIDIA H100 80GB HBM3")
    for instance in node.mig_layout:  # the scheduler can plan with every one of them
        assert instance.start in profiles[instance.profile].starts
        assert instance.size == profiles[instance.profile].mem_slices
    assert [g.mig_enabled for g in node.gpus] == [True, True, True, False, False, False, False, False]
    # MIG instances do no peer-to-peer: no NVLink to or from GPUs 0-2, NV18 among the rest
    assert node.nvlink == tuple(
        tuple(18 if i != j and i > 2 and j > 2 else 0 for j in range(8)) for i in range(8))


def test_mig_enabled_gpus_get_no_nvlink_even_when_the_driver_reports_p2p():
    fake = machines.hgx_h100(mig={5: [("7g.80gb", 0)]})
    fake.p2p = True
    node = publish(fake)
    assert node.nvlink == tuple(tuple(18 if i != j and 5 not in (i, j) else 0 for j in range(8)) for i in range(8))


def test_gpus_on_separate_switch_fabrics_are_not_linked_to_each_other():
    fake = machines.hgx_h100()
    fake.p2p = True  # only the wiring keeps the two fabrics apart
    for gpu in fake.gpus[4:]:  # GPUs 4-7 on a second set of four switches
        for link in gpu.links:
            link.remote_bus += 0x10
    node = publish(fake)
    assert node.nvlink == tuple(tuple(18 if i != j and i // 4 == j // 4 else 0 for j in range(8)) for i in range(8))


def test_a100_40gb_mig_profiles_keep_their_own_names():
    node = publish(machines.hgx_a100_4(mig={3: [("3g.20gb", 0), ("2g.10gb", 4), ("1g.5gb", 6)]}))
    assert node.mig_layout == (
        MigInstance(3, "3g.20gb", 0, 4), MigInstance(3, "2g.10gb", 4, 2), MigInstance(3, "1g.5gb", 6, 1))
    assert node.nvlink == tuple(tuple(4 if i != j and 3 not in (i, j) else 0 for j in range(4)) for i in range(4))


def test_the_published_annotations_are_compact_json():
    core = FakeCore("gpu-node")
    assert Agent("gpu-node", core, lambda: scan(None, lib=machines.pcie_only()), interval=60,
                 heartbeat_seconds=120).cycle(NOW)
    value = core.annotations[ann.TOPOLOGY]
    assert value == json.dumps(json.loads(value), separators=(",", ":"))  # no whitespace
    assert [gpu["index"] for gpu in json.loads(value)["gpus"]] == list(range(8))
    assert core.annotations[ann.MIG_LAYOUT] == "[]" and core.annotations[ann.MODEL_CACHE] == "{}"
    assert core.annotations[ann.HEARTBEAT] == "2026-11-20T09:30:00Z"


def test_mig_instances_the_extender_cannot_plan_with_are_noted():
    def gpu(index: int, name: str, profile: str) -> nvml.Device:
        return nvml.Device(index, f"GPU-{index}", name, 81559, f"00000000:{index + 1:02x}:00", True, (),
                           (nvml.GpuInstance(profile, 0, 1),))

    hardware = nvml.Inventory((gpu(0, "NVIDIA H100 80GB HBM3", "1g.10gb"), gpu(1, "NVIDIA H100 80GB HBM3", "1g.11gb"),
                               gpu(2, "NVIDIA GH200 480GB", "1g.12gb")),
                              tuple((0, 50, 50) for _ in range(3)), tuple((False,) * 3 for _ in range(3)))
    assert inventory_annotations(hardware, {}).notes == (
        "GPU 1: MIG profile 1g.11gb not in the extender's catalog for NVIDIA H100 80GB HBM3",
        "GPU 2 (NVIDIA GH200 480GB): MIG geometry unknown to the extender's catalog",
    )
