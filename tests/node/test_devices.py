"""What the device plugin advertises on the reference machines, and what each ID stands for,
including the IDs another device plugin gives (read back from the kubelet)."""

from __future__ import annotations

from extender.node import nvml
from extender.node.devices import Catalog, share_id
from scoring.model import MigSlot
from tests.agent import machines
from tests.agent.fake_pynvml import mig_uuid

SHARE = "gpu-extender.io/gpu-milli"


def catalog(fake, share: str | None = SHARE) -> Catalog:
    return Catalog(nvml.read_inventory(fake), share)


def test_whole_gpus_mig_devices_and_shares_of_a_mixed_h100_node():
    fake = machines.hgx_h100(mig={0: [("3g.40gb", 0), ("3g.40gb", 4)], 1: [("1g.10gb+me", 0), ("2g.20gb", 2)]})
    cat = catalog(fake)
    assert cat.resources() == ["gpu-extender.io/gpu-milli", "nvidia.com/gpu", "nvidia.com/mig-1g.10gb.me",
                               "nvidia.com/mig-2g.20gb", "nvidia.com/mig-3g.40gb"]
    whole = [machines.uuid("h100", i) for i in range(2, 8)]
    assert list(cat.ids("nvidia.com/gpu")) == whole
    shares = list(cat.ids(SHARE))
    assert len(shares) == 6000 and shares[0] == share_id(whole[0], 0) == f"{whole[0]}::000"
    assert list(cat.ids("nvidia.com/mig-3g.40gb")) == [mig_uuid(machines.uuid("h100", 0), 0),
                                                     mig_uuid(machines.uuid("h100", 0), 4)]
    mig = cat.device("nvidia.com/mig-2g.20gb", mig_uuid(machines.uuid("h100", 1), 2))
    assert mig is not None and mig.mig == MigSlot(1, "2g.20gb", 2) and mig.gpu_uuid == machines.uuid("h100", 1)
    assert cat.gpu_uuids() == [machines.uuid("h100", i) for i in range(8)]


def test_an_id_stands_for_its_own_resource_only():
    cat = catalog(machines.hgx_h100(mig={0: [("7g.80gb", 0)]}))
    gpu3 = machines.uuid("h100", 3)
    assert cat.device("nvidia.com/gpu", gpu3).gpu == 3
    assert cat.device(SHARE, f"{gpu3}::999").gpu == 3
    for resource, device_id in [(SHARE, gpu3), (SHARE, f"{gpu3}::1000"), (SHARE, f"{gpu3}::x"),
                                ("nvidia.com/gpu", machines.uuid("h100", 0)),  # in MIG mode: no whole GPU
                                ("nvidia.com/mig-3g.40gb", mig_uuid(machines.uuid("h100", 0), 0)),  # a 7g
                                ("nvidia.com/gpu", "GPU-elsewhere")]:
        assert cat.device(resource, device_id) is None, (resource, device_id)


def test_ids_of_nvidia_s_plugin_read_back_index_strategy_time_slicing_and_single_strategy():
    cat = catalog(machines.hgx_h100(mig={0: [("7g.80gb", 0)]}))
    assert cat.identify("nvidia.com/gpu", "5").gpu == 5
    assert cat.identify("nvidia.com/gpu", "0") is None  # GPU 0 is in MIG mode
    assert cat.identify("nvidia.com/gpu", f"{machines.uuid('h100', 6)}::3").gpu == 6  # a time-slicing replica
    single = cat.identify("nvidia.com/gpu", mig_uuid(machines.uuid("h100", 0), 0))
    assert single is not None and single.mig == MigSlot(0, "7g.80gb", 0)


def test_no_shares_when_sharing_is_off_and_no_gpu_resources_on_an_all_mig_node():
    assert "gpu-extender.io/gpu-milli" not in catalog(machines.pcie_only(), None).resources()
    cat = catalog(machines.hgx_a100_4(mig={i: [("3g.20gb", 0)] for i in range(4)}))
    assert cat.resources() == ["nvidia.com/mig-3g.20gb"]
