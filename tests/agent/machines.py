"""The reference machines of shared/reference/gpu/topologies.md as fake NVML machines, and what
`nvidia-smi topo -m` printed on them (copied from that file: the expected results).

The machines are described by their hardware (PCI addresses, which NVLink goes where, the PCIe
tree), never by a link-count matrix, so a test compares what the agent derives from the wiring
with what nvidia-smi printed on the real machine.
"""

from __future__ import annotations

import re
from dataclasses import dataclass

from tests.agent.fake_pynvml import GPU, SWITCH, UNTYPED, FakeGpu, FakeLink, FakePynvml

H100 = ("NVIDIA H100 80GB HBM3", 81559)
A100_40 = ("NVIDIA A100-SXM4-40GB", 40960)
V100 = ("Tesla V100-SXM2-16GB", 16160)
L40S = ("NVIDIA L40S", 46068)
LEVELS = {"PIX": 10, "PXB": 20, "PHB": 30, "NODE": 40, "SYS": 50}


def uuid(machine: str, index: int) -> str:
    return f"GPU-{machine}-{index:04d}-0000-0000-000000000000"


@dataclass(frozen=True)
class Topo:
    """A `nvidia-smi topo -m` GPU matrix: NVLink counts (0 where no NV#) and PCIe levels (None
    where nvidia-smi printed NV#, which hides the PCIe path)."""

    nvlink: list[list[int]]
    pcie: list[list[int | None]]


def parse_topo(text: str) -> Topo:
    rows = [line.split() for line in text.strip().splitlines()[1:] if re.match(r"GPU\d+\*?\s", line)]
    n = len(rows)
    nvlink = [[0] * n for _ in range(n)]
    pcie: list[list[int | None]] = [[0] * n for _ in range(n)]
    for i, row in enumerate(rows):
        for j, cell in enumerate(row[1:n + 1]):
            if cell == "X":
                continue
            if match := re.fullmatch(r"NV(\d+)", cell):
                nvlink[i][j], pcie[i][j] = int(match.group(1)), None
            else:
                pcie[i][j] = LEVELS[cell]
    return Topo(nvlink, pcie)


# --- 8x H100 SXM with NVSwitch (topologies.md section 2) -----------------------------------------

HGX_H100_TOPO = """
        GPU0    GPU1    GPU2    GPU3    GPU4    GPU5    GPU6    GPU7    CPU Affinity    NUMA Affinity
GPU0     X      NV18    NV18    NV18    NV18    NV18    NV18    NV18    0-51,104-155    0
GPU1    NV18     X      NV18    NV18    NV18    NV18    NV18    NV18    0-51,104-155    0
GPU2    NV18    NV18     X      NV18    NV18    NV18    NV18    NV18    0-51,104-155    0
GPU3    NV18    NV18    NV18     X      NV18    NV18    NV18    NV18    0-51,104-155    0
GPU4    NV18    NV18    NV18    NV18     X      NV18    NV18    NV18    52-103,156-207  1
GPU5    NV18    NV18    NV18    NV18    NV18     X      NV18    NV18    52-103,156-207  1
GPU6    NV18    NV18    NV18    NV18    NV18    NV18     X      NV18    52-103,156-207  1
GPU7    NV18    NV18    NV18    NV18    NV18    NV18    NV18     X      52-103,156-207  1
"""
HGX_H100_BUSES = (0x18, 0x2A, 0x3A, 0x5D, 0x9A, 0xAB, 0xBA, 0xDB)
# An HGX H100 baseboard: four NVSwitch chips; each GPU's 18 links go 5, 4, 4 and 5 to them.
HGX_H100_SWITCHES = ((0x05, 5), (0x06, 4), (0x07, 4), (0x08, 5))


def hgx_h100(mig: dict[int, list[tuple[str, int]]] | None = None) -> FakePynvml:
    """Each GPU behind its own PCIe switch and root port; GPUs 0-3 on CPU 0, 4-7 on CPU 1.
    `mig`: GPU index -> its GPU instances (profile, start); those GPUs have MIG enabled."""
    mig = mig or {}
    gpus = [
        FakeGpu(H100[0], uuid("h100", i), bus, H100[1], (f"cpu{i // 4}", f"rp{i}", f"sw{i}"),
                links=[FakeLink(SWITCH, switch) for switch, count in HGX_H100_SWITCHES for _ in range(count)],
                mig=i in mig, instances=mig.get(i, []))
        for i, bus in enumerate(HGX_H100_BUSES)
    ]
    return FakePynvml(gpus)


# --- 4 GPUs of an NVSwitch H100 system inside a VM (section 3) -------------------------------------

H100_VM_TOPO = """
        GPU0    GPU1    GPU2    GPU3    NIC0    NIC1    NIC2    NIC3    NIC4    NIC5    NIC6    NIC7    CPU Affinity    NUMA Affinity   GPU NUMA ID
GPU0     X      NV18    NV18    NV18    PHB     PHB     PHB     PHB     PHB     PHB     PHB     PHB     0-79    0               N/A
GPU1    NV18     X      NV18    NV18    PHB     PHB     PHB     PHB     PHB     PHB     PHB     PHB     0-79    0               N/A
GPU2    NV18    NV18     X      NV18    PHB     PHB     PHB     PHB     PHB     PHB     PHB     PHB     0-79    0               N/A
GPU3    NV18    NV18    NV18     X      PHB     PHB     PHB     PHB     PHB     PHB     PHB     PHB     0-79    0               N/A
"""


def h100_vm() -> FakePynvml:
    """The VM sees neither the switches (untyped far ends without an address) nor the real PCIe
    tree: every GPU hangs off the one emulated host bridge."""
    gpus = [
        FakeGpu(H100[0], uuid("h100vm", i), 0x10 + i, H100[1], ("cpu0", "hb0"),
                links=[FakeLink(UNTYPED, 0) for _ in range(18)], mig=False)
        for i in range(4)
    ]
    return FakePynvml(gpus)



def h100_single_vm() -> FakePynvml:
    """The cloud VM with one H100 that ran the agent for real (tests/agent/real/): no NVLink
    through the VM (NVML answers "Not Supported" for link 0), MIG disabled."""
    return FakePynvml([FakeGpu(H100[0], uuid("h100single", 0), 0x06, H100[1], ("cpu0", "hb0"), mig=False)])

# --- HGX A100 4-GPU, direct NVLink (section 4) ------------------------------------------------------

HGX_A100_4_TOPO = """
        GPU0    GPU1    GPU2    GPU3    NIC0    NIC1    CPU Affinity    NUMA Affinity   GPU NUMA ID
GPU0     X      NV4     NV4     NV4     PXB     SYS     32-47   2               N/A
GPU1    NV4      X      NV4     NV4     PXB     SYS     32-47   2               N/A
GPU2    NV4     NV4      X      NV4     SYS     PXB     96-111  6               N/A
GPU3    NV4     NV4     NV4      X      SYS     PXB     96-111  6               N/A
"""
HGX_A100_4_BUSES = (0x07, 0x0F, 0x47, 0x4E)


def hgx_a100_4(mig: dict[int, list[tuple[str, int]]] | None = None) -> FakePynvml:
    """12 links per GPU, 4 to each peer (links 0-3 to the first peer by index, 4-7 the second,
    8-11 the third). GPUs 0 and 1 share a NIC's PCIe switch tree under NUMA node 2, GPUs 2 and 3
    under NUMA node 6 (nvidia-smi: the NIC is PXB to both GPUs of its pair)."""
    mig = mig or {}
    gpus = []
    for i, bus in enumerate(HGX_A100_4_BUSES):
        peers = [HGX_A100_4_BUSES[j] for j in range(4) if j != i]
        gpus.append(FakeGpu(
            A100_40[0], uuid("a100", i), bus, A100_40[1], (f"numa{2 if i < 2 else 6}", f"rp{i // 2}", f"tree{i // 2}", f"sw{i}"),
            links=[FakeLink(GPU, peer) for peer in peers for _ in range(4)],
            mig=i in mig, instances=mig.get(i, [])))
    return FakePynvml(gpus)


# --- DGX-1V hybrid cube-mesh (section 5) --------------------------------------------------------------

DGX1V_TOPO = """
        GPU0    GPU1    GPU2    GPU3    GPU4    GPU5    GPU6    GPU7    mlx5_0  CPU Affinity
GPU0     X      NV1     NV1     NV2     NV2     SYS     SYS     SYS     NODE    0-11,24-35
GPU1    NV1      X      NV2     NV1     SYS     NV2     SYS     SYS     NODE    0-11,24-35
GPU2    NV1     NV2      X      NV2     SYS     SYS     NV1     SYS     PIX     0-11,24-35
GPU3    NV2     NV1     NV2      X      SYS     SYS     SYS     NV1     PIX     0-11,24-35
GPU4    NV2     SYS     SYS     SYS      X      NV1     NV1     NV2     SYS     12-23,36-47
GPU5    SYS     NV2     SYS     SYS     NV1      X      NV2     NV1     SYS     12-23,36-47
GPU6    SYS     SYS     NV1     SYS     NV1     NV2      X      NV2     SYS     12-23,36-47
GPU7    SYS     SYS     SYS     NV1     NV2     NV1     NV2      X      SYS     12-23,36-47
"""
DGX1V_BUSES = (0x06, 0x07, 0x0A, 0x0B, 0x85, 0x86, 0x89, 0x8A)
# The hybrid cube-mesh cabling: (GPU, GPU, bonded links); each V100 has 6 NVLink2 links.
DGX1V_CABLES = (
    (0, 1, 1), (0, 2, 1), (0, 3, 2), (1, 2, 2), (1, 3, 1), (2, 3, 2),
    (4, 5, 1), (4, 6, 1), (4, 7, 2), (5, 6, 2), (5, 7, 1), (6, 7, 2),
    (0, 4, 2), (1, 5, 2), (2, 6, 1), (3, 7, 1),
)


def dgx1v() -> FakePynvml:
    """Links numbered in cabling order on each GPU. PCIe: two GPUs per PCIe switch, two switches
    per CPU, each switch on its own root port (mlx5_0 is PIX to GPUs 2-3, NODE to GPUs 0-1)."""
    links: list[list[FakeLink]] = [[] for _ in DGX1V_BUSES]
    for a, b, count in DGX1V_CABLES:
        links[a] += [FakeLink(GPU, DGX1V_BUSES[b]) for _ in range(count)]
        links[b] += [FakeLink(GPU, DGX1V_BUSES[a]) for _ in range(count)]
    gpus = [
        FakeGpu(V100[0], uuid("v100", i), bus, V100[1], (f"cpu{i // 4}", f"rp{i // 2}", f"sw{i // 2}"),
                links=links[i])
        for i, bus in enumerate(DGX1V_BUSES)
    ]
    return FakePynvml(gpus)


# --- PCIe-only 8-GPU server (section 6) ---------------------------------------------------------------

PCIE_ONLY_TOPO = """
        GPU0    GPU1    GPU2    GPU3    GPU4    GPU5    GPU6    GPU7    CPU Affinity    NUMA Affinity   GPU NUMA ID
GPU0     X      PIX     PXB     PXB     SYS     SYS     SYS     SYS     0-95            N/A             N/A
GPU1    PIX      X      PXB     PXB     SYS     SYS     SYS     SYS     0-95            N/A             N/A
GPU2    PXB     PXB      X      PXB     SYS     SYS     SYS     SYS     0-95            N/A             N/A
GPU3    PXB     PXB     PXB      X      SYS     SYS     SYS     SYS     0-95            N/A             N/A
GPU4    SYS     SYS     SYS     SYS      X      PIX     PXB     PXB     0-95            N/A             N/A
GPU5    SYS     SYS     SYS     SYS     PIX      X      PXB     PXB     0-95            N/A             N/A
GPU6*   SYS     SYS     SYS     SYS     PXB     PXB      X      PIX     0-95            N/A             N/A
GPU7*   SYS     SYS     SYS     SYS     PXB     PXB     PIX      X      0-95            N/A             N/A
"""
# Leaf PCIe switch of each GPU under its socket's top switch: GPUs 0+1, 4+5 and 6+7 share one.
PCIE_ONLY_LEAVES = ("a01", "a01", "a2", "a3", "b45", "b45", "b67", "b67")


def pcie_only() -> FakePynvml:
    gpus = [
        FakeGpu(L40S[0], uuid("l40s", i), 0x20 + 0x10 * i, L40S[1], (f"cpu{i // 4}", f"rp{i // 4}", f"top{i // 4}", leaf))
        for i, leaf in enumerate(PCIE_ONLY_LEAVES)
    ]
    return FakePynvml(gpus)
