"""NVLink adjacency: which GPUs of this node are NVLinked to which, and how wide, from the links
NVML reports (`extender.node.nvml`). Published in the gpu-topology annotation's `nvlink` matrix."""

from __future__ import annotations

import networkx as nx

from extender.node import nvml


def nvlink_matrix(inventory: nvml.Inventory) -> tuple[nvml.Matrix, list[str]]:
    """NVLink link counts between every pair of GPUs, as `nvidia-smi topo -m` prints them (NV#).

    - Direct links (the far end is a GPU of this node, found by PCI address): the number of
      active links between the two, as both ends report it (the smaller count).
    - NVSwitch links: GPUs that reach the same switch fabric (switches joined through the GPUs
      they share; one fabric on HGX/DGX boards) are pairwise connected with the smaller of their
      switch-link counts: all-pairs NV18 on 8x H100, NV12 on 8x A100. A link of unknown type
      whose far end is not a GPU of this node counts as a switch link (older drivers cannot type
      links); without an address (NVSwitches that a VM cannot see) it reaches one unseen
      node-wide fabric, as NCCL assumes. Links to anything else are ignored.
    - A pair with a MIG-enabled GPU has 0: GPU instances do no peer-to-peer (`nvidia-smi mig -lgip`
      says P2P: No for every profile).
    - A pair has 0 unless NVML reports peer-to-peer over NVLink OK both ways: links that are up
      but unusable (an NVSwitch system whose fabric manager is down) do not help a multi-GPU pod.
    Returns the matrix and, for the log, which pairs the last two rules zeroed and which links
    were ignored.
    """
    devices = inventory.devices
    n = len(devices)
    by_bus = {d.bus_id: d.index for d in devices if d.bus_id}
    direct = [[0] * n for _ in range(n)]
    switch_links = [0] * n
    fabric = nx.Graph()  # GPUs and the switches their links reach ("" for the unseen ones)
    notes: list[str] = []
    for device in devices:
        for link in device.links:
            peer = by_bus.get(link.remote_bus_id)
            if peer is not None and link.remote_kind in (nvml.RemoteKind.GPU, nvml.RemoteKind.UNKNOWN):
                direct[device.index][peer] += 1
            elif link.remote_kind in (nvml.RemoteKind.SWITCH, nvml.RemoteKind.UNKNOWN):
                switch_links[device.index] += 1
                fabric.add_edge(("gpu", device.index), ("switch", link.remote_bus_id))
            else:
                notes.append(f"GPU {device.index} NVLink {link.link} leads to {link.remote_kind.value} device "
                             f"{link.remote_bus_id or '(no address)'}, not a GPU of this node: ignored")
    on_fabric = {index: number for number, component in enumerate(nx.connected_components(fabric))
                 for kind, index in component if kind == "gpu"}
    mig_pairs, no_p2p = [], []
    matrix = []
    for i in range(n):
        row = []
        for j in range(n):
            links = 0
            if i != j:
                links = min(direct[i][j], direct[j][i])
                if i in on_fabric and on_fabric[i] == on_fabric.get(j):
                    links += min(switch_links[i], switch_links[j])
            if links and (devices[i].mig_enabled or devices[j].mig_enabled):
                mig_pairs.append((i, j))
                links = 0
            elif links and not inventory.p2p_nvlink[i][j]:
                no_p2p.append((i, j))
                links = 0
            row.append(links)
        matrix.append(tuple(row))
    if mig_pairs:
        notes.append(f"NVLink not counted between GPUs {_pairs(mig_pairs)}: MIG-enabled GPUs do no peer-to-peer")
    if no_p2p:
        notes.append(f"NVLink not counted between GPUs {_pairs(no_p2p)}: NVML reports no peer-to-peer over NVLink "
                     "(on NVSwitch systems: is the fabric manager running?)")
    return tuple(matrix), notes


def _pairs(pairs: list[tuple[int, int]]) -> str:
    return ", ".join(f"{i}-{j}" for i, j in pairs if i < j)
