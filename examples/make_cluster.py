"""Writes the bundled example cluster: `cluster.yaml` (as `kubectl get nodes,pods -A -o yaml`
prints it) and one dcgm-exporter dump per node under `metrics/`.

    python examples/make_cluster.py        # rewrite the files next to this script

The cluster is a snapshot taken at SNAPSHOT_TIME: GPU nodes of the shapes in
shared/reference/gpu/topologies.md, MIG nodes with different layouts, running pods placed with
plans, model caches and DCGM figures with some hot GPUs.
"""

from __future__ import annotations

import json
import uuid
from datetime import datetime, timedelta, timezone
from pathlib import Path

import yaml

HERE = Path(__file__).resolve().parent
SNAPSHOT_TIME = datetime(2026, 11, 20, 9, 30, 0, tzinfo=timezone.utc)
P = "gpu-extender.io"
SHARE = f"{P}/gpu-milli"  # GPU shares, advertised at 1000 per GPU by a sharing device plugin
GIB = 2**30

LLAMA_70B = "meta-llama/Llama-3.1-70B-Instruct"
LLAMA_8B = "meta-llama/Llama-3.1-8B-Instruct"
QWEN_7B = "Qwen/Qwen2.5-7B-Instruct"
BGE = "BAAI/bge-large-en-v1.5"
MODEL_BYTES = {LLAMA_70B: 141 * GIB, LLAMA_8B: 16 * GIB, QWEN_7B: 15 * GIB, BGE: 13 * GIB // 10}

H100 = ("NVIDIA H100 80GB HBM3", "NVIDIA-H100-80GB-HBM3", 81559, "hopper")
A100_80 = ("NVIDIA A100-SXM4-80GB", "NVIDIA-A100-SXM4-80GB", 81920, "ampere")
A100_40 = ("NVIDIA A100-SXM4-40GB", "NVIDIA-A100-SXM4-40GB", 40960, "ampere")
V100 = ("Tesla V100-SXM2-16GB", "Tesla-V100-SXM2-16GB", 16384, "volta")
L40S = ("NVIDIA L40S", "NVIDIA-L40S", 46068, "ada-lovelace")
T4 = ("Tesla T4", "Tesla-T4", 15360, "turing")


def ts(delta_s: float = 0) -> str:
    return (SNAPSHOT_TIME + timedelta(seconds=delta_s)).strftime("%Y-%m-%dT%H:%M:%SZ")


def gpu_uuid(node: str, index: int) -> str:
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"{node}.gpu{index}"))


def uid(kind: str, name: str) -> str:
    return str(uuid.uuid5(uuid.NAMESPACE_URL, f"{kind}/{name}"))


# --- topologies -------------------------------------------------------------------------------

def uniform(n: int, links: int) -> list[list[int]]:
    return [[0 if i == j else links for j in range(n)] for i in range(n)]


def numa_pcie(n: int, per_socket: int, same_switch: set[frozenset[int]] = frozenset()) -> list[list[int]]:
    """NVML common-ancestor levels: PXB within a switch, NODE within a socket, SYS across."""
    rows = []
    for i in range(n):
        row = []
        for j in range(n):
            if i == j:
                row.append(0)
            elif frozenset((i, j)) in same_switch:
                row.append(20)
            elif i // per_socket == j // per_socket:
                row.append(40)
            else:
                row.append(50)
        rows.append(row)
    return rows


DGX1V_LINKS = [
    [0, 1, 1, 2, 2, 0, 0, 0],
    [1, 0, 2, 1, 0, 2, 0, 0],
    [1, 2, 0, 2, 0, 0, 1, 0],
    [2, 1, 2, 0, 0, 0, 0, 1],
    [2, 0, 0, 0, 0, 1, 1, 2],
    [0, 2, 0, 0, 1, 0, 2, 1],
    [0, 0, 1, 0, 1, 2, 0, 2],
    [0, 0, 0, 1, 2, 1, 2, 0],
]
# PCIe-only 8-GPU server: PIX pairs (0,1) (4,5) (6,7), PXB within a socket, SYS across.
PCIE_ONLY = [
    [0, 10, 20, 20, 50, 50, 50, 50],
    [10, 0, 20, 20, 50, 50, 50, 50],
    [20, 20, 0, 20, 50, 50, 50, 50],
    [20, 20, 20, 0, 50, 50, 50, 50],
    [50, 50, 50, 50, 0, 10, 20, 20],
    [50, 50, 50, 50, 10, 0, 20, 20],
    [50, 50, 50, 50, 20, 20, 0, 10],
    [50, 50, 50, 50, 20, 20, 10, 0],
]


# --- nodes ------------------------------------------------------------------------------------

def node(
    name: str,
    gpu: tuple[str, str, int, str] | None,
    count: int = 0,
    *,
    allocatable: dict[str, int] | None = None,
    nvlink: list[list[int]] | None = None,
    pcie: list[list[int]] | None = None,
    mig_gpus: tuple[int, ...] = (),
    layout: list[tuple[int, str, int, int]] | None = None,
    strategy: str = "none",
    product_suffix: str = "",
    cache: dict[str, int] | None = None,
    pool: str | None = None,
    agent: bool = True,
    heartbeat_age_s: float = 15,
) -> dict:
    labels = {
        "kubernetes.io/arch": "amd64",
        "kubernetes.io/hostname": name,
        "kubernetes.io/os": "linux",
        "node.kubernetes.io/instance-type": "bare-metal",
    }
    annotations = {
        "node.alpha.kubernetes.io/ttl": "0",
        "volumes.kubernetes.io/controller-managed-attach-detach": "true",
    }
    resources = {"cpu": "126", "memory": "1031182716Ki", "pods": "110", "ephemeral-storage": "3456757092478"}
    if gpu is not None:
        model, product, memory, family = gpu
        labels |= {
            "feature.node.kubernetes.io/pci-10de.present": "true",
            "nvidia.com/cuda.driver-version.full": "550.127.05",
            "nvidia.com/cuda.runtime-version.full": "12.4",
            "nvidia.com/gpu.count": str(count),
            "nvidia.com/gpu.family": family,
            "nvidia.com/gpu.memory": str(memory),
            "nvidia.com/gpu.present": "true",
            "nvidia.com/gpu.product": product + product_suffix,
            "nvidia.com/mig.capable": str(family in ("ampere", "hopper")).lower(),
            "nvidia.com/mig.strategy": strategy,
        }
        for resource, n in (allocatable or {"nvidia.com/gpu": count}).items():
            resources[resource] = str(n)
        if pool:
            labels[f"{P}/pool"] = pool
        if agent:
            topology = {
                "gpus": [
                    {
                        "index": i,
                        "uuid": gpu_uuid(name, i),
                        "model": model,
                        "memoryMiB": memory,
                        "migEnabled": i in mig_gpus,
                    }
                    for i in range(count)
                ],
                "nvlink": nvlink or uniform(count, 0),
                "pcie": pcie or numa_pcie(count, max(count // 2, 1)),
            }
            annotations[f"{P}/gpu-topology"] = json.dumps(topology, separators=(",", ":"))
            if layout is not None:
                annotations[f"{P}/mig-layout"] = json.dumps(
                    [{"gpu": g, "profile": p, "start": s, "size": z} for g, p, s, z in layout],
                    separators=(",", ":"),
                )
            annotations[f"{P}/model-cache"] = json.dumps(cache or {}, separators=(",", ":"))
            annotations[f"{P}/heartbeat"] = ts(-heartbeat_age_s)
    return {
        "apiVersion": "v1",
        "kind": "Node",
        "metadata": {
            "annotations": annotations,
            "creationTimestamp": "2026-03-02T09:12:44Z",
            "labels": labels,
            "name": name,
            "resourceVersion": str(4_800_000 + len(name)),
            "uid": uid("node", name),
        },
        "spec": {"podCIDR": "10.244.0.0/24", "providerID": f"baremetal://{name}"},
        "status": {
            "allocatable": dict(resources),
            "capacity": dict(resources),
            "conditions": [
                {
                    "lastHeartbeatTime": ts(-8),
                    "lastTransitionTime": "2026-11-02T07:00:00Z",
                    "message": "kubelet is posting ready status",
                    "reason": "KubeletReady",
                    "status": "True",
                    "type": "Ready",
                }
            ],
            "nodeInfo": {
                "architecture": "amd64",
                "containerRuntimeVersion": "containerd://1.7.22",
                "kernelVersion": "6.8.0-45-generic",
                "kubeletVersion": "v1.34.2",
                "operatingSystem": "linux",
                "osImage": "Ubuntu 24.04.1 LTS",
            },
        },
    }


def mig_layout(per_gpu: dict[int, list[tuple[str, int]]], sizes: dict[str, int]) -> list[tuple[int, str, int, int]]:
    return [(g, p, s, sizes[p]) for g, items in per_gpu.items() for p, s in items]


SIZES_80 = {"1g.10gb": 1, "1g.20gb": 2, "2g.20gb": 2, "3g.40gb": 4, "4g.40gb": 4, "7g.80gb": 8}
SIZES_40 = {"1g.5gb": 1, "2g.10gb": 2, "3g.20gb": 4, "7g.40gb": 8}

A100_MIG_LAYOUT = {
    4: [("1g.10gb", s) for s in range(7)],
    5: [("3g.40gb", 0), ("3g.40gb", 4)],
    6: [("2g.20gb", 0), ("2g.20gb", 2), ("2g.20gb", 4), ("1g.10gb", 6)],
    7: [("4g.40gb", 0), ("1g.10gb", 4), ("1g.10gb", 5), ("1g.10gb", 6)],
}
H100_MIG_LAYOUT = {
    0: [("1g.10gb", s) for s in range(7)],
    1: [("3g.40gb", 0), ("2g.20gb", 4), ("1g.10gb", 6)],
    2: [("1g.10gb", 0), ("1g.10gb", 1), ("2g.20gb", 2), ("3g.40gb", 4)],
    3: [("7g.80gb", 0)],
}
SINGLE_LAYOUT = {g: [("1g.5gb", s) for s in range(7)] for g in range(4)}

NODES = [
    node("h100-train-01", H100, 8, nvlink=uniform(8, 18), pool="training", cache={LLAMA_8B: MODEL_BYTES[LLAMA_8B]}),
    node("h100-inf-01", H100, 8, nvlink=uniform(8, 18), pool="inference",
         cache={LLAMA_70B: MODEL_BYTES[LLAMA_70B], QWEN_7B: MODEL_BYTES[QWEN_7B]}),
    node("h100-inf-02", H100, 8, nvlink=uniform(8, 18), pool="inference", cache={QWEN_7B: MODEL_BYTES[QWEN_7B]}),
    node("h100-inf-03", H100, 8, nvlink=uniform(8, 18), pool="inference", cache={QWEN_7B: MODEL_BYTES[QWEN_7B]}),
    node("a100-nv4-01", A100_40, 4, nvlink=uniform(4, 4),
         pcie=numa_pcie(4, 2, {frozenset((0, 1)), frozenset((2, 3))}), cache={LLAMA_8B: 9 * GIB}),
    node("v100-dgx1-01", V100, 8, nvlink=DGX1V_LINKS,
         pcie=numa_pcie(8, 4, {frozenset((0, 1)), frozenset((2, 3)), frozenset((4, 5)), frozenset((6, 7))})),
    node("a100-mig-01", A100_80, 8, strategy="mixed", nvlink=uniform(8, 12), mig_gpus=(4, 5, 6, 7),
         allocatable={"nvidia.com/gpu": 4, "nvidia.com/mig-1g.10gb": 11, "nvidia.com/mig-2g.20gb": 3,
                      "nvidia.com/mig-3g.40gb": 2, "nvidia.com/mig-4g.40gb": 1},
         layout=mig_layout(A100_MIG_LAYOUT, SIZES_80), pool="inference", cache={BGE: MODEL_BYTES[BGE]}),
    node("h100-mig-01", H100, 4, strategy="mixed", nvlink=uniform(4, 18), mig_gpus=(0, 1, 2, 3),
         allocatable={"nvidia.com/mig-1g.10gb": 10, "nvidia.com/mig-2g.20gb": 2,
                      "nvidia.com/mig-3g.40gb": 2, "nvidia.com/mig-7g.80gb": 1},
         layout=mig_layout(H100_MIG_LAYOUT, SIZES_80), pool="inference", cache={BGE: MODEL_BYTES[BGE]}),
    node("a100-single-01", A100_40, 4, strategy="single", product_suffix="-MIG-1g.5gb", nvlink=uniform(4, 4),
         mig_gpus=(0, 1, 2, 3), allocatable={"nvidia.com/gpu": 28}, layout=mig_layout(SINGLE_LAYOUT, SIZES_40)),
    node("l40s-pcie-01", L40S, 8, pcie=PCIE_ONLY, allocatable={"nvidia.com/gpu": 8, SHARE: 8000},
         cache={QWEN_7B: MODEL_BYTES[QWEN_7B]}),
    node("t4-legacy-01", T4, 4, allocatable={"nvidia.com/gpu": 4, SHARE: 4000}, agent=False),
    node("cpu-01", None),
]


# --- pods -------------------------------------------------------------------------------------

def pod(
    namespace: str,
    name: str,
    node_name: str | None,
    resources: dict[str, int],
    *,
    workload: str,
    plan: dict | None = None,
    model: str | None = None,
    image: str = "nvcr.io/nvidia/pytorch:24.05-py3",
) -> dict:
    annotations = {f"{P}/class": workload}
    if model:
        annotations[f"{P}/model"] = model
    if plan is not None:
        annotations[f"{P}/plan"] = json.dumps({"node": node_name, **plan}, separators=(",", ":"))
    limits = {"cpu": "8", "memory": "64Gi", **{r: str(n) for r, n in resources.items()}}
    latency = workload == "latency-critical"
    spec = {
        "containers": [
            {
                "name": "main",
                "image": image,
                "resources": {"limits": limits, "requests": dict(limits)},
            }
        ],
        "priority": 1_000_000 if latency else 1_000,
        "priorityClassName": "gpu-latency-critical" if latency else "gpu-batch",
        "restartPolicy": "Always" if latency else "Never",
        "schedulerName": "gpu-scheduler",
    }
    if node_name:
        spec["nodeName"] = node_name
    return {
        "apiVersion": "v1",
        "kind": "Pod",
        "metadata": {
            "annotations": annotations,
            "creationTimestamp": ts(-3600),
            "labels": {"app.kubernetes.io/name": name.rsplit("-", 1)[0]},
            "name": name,
            "namespace": namespace,
            "resourceVersion": str(5_100_000 + len(name)),
            "uid": uid("pod", f"{namespace}/{name}"),
        },
        "spec": spec,
        "status": {"phase": "Running" if node_name else "Pending", "qosClass": "Guaranteed"},
    }


GPU = "nvidia.com/gpu"


def mig(profile: str) -> str:
    return f"nvidia.com/mig-{profile}"


def slot(gpu: int, profile: str, start: int) -> dict:
    return {"gpu": gpu, "profile": profile, "start": start}


VLLM = "vllm/vllm-openai:v0.6.3"
PODS = [
    # Inference nodes: four single-GPU chat replicas each on GPUs 0-3.
    *(
        pod("inference", f"qwen-chat-{n}-{g}", f"h100-inf-0{n}", {GPU: 1}, workload="latency-critical",
            plan={"gpus": [g]}, model=QWEN_7B, image=VLLM)
        for n in (1, 2, 3) for g in range(4)
    ),
    pod("research", "resnet-ablation-0", "v100-dgx1-01", {GPU: 2}, workload="batch", plan={"gpus": [4, 5]}),
    pod("research", "bert-sweep-0", "a100-mig-01", {GPU: 2}, workload="batch", plan={"gpus": [0, 1]}),
    *(
        pod("batch", f"nightly-eval-{s}", "a100-mig-01", {mig("1g.10gb"): 1}, workload="batch",
            plan={"mig": [slot(4, "1g.10gb", s)]})
        for s in range(3)
    ),
    pod("inference", "embed-bge-0", "a100-mig-01", {mig("3g.40gb"): 1}, workload="latency-critical",
        plan={"mig": [slot(5, "3g.40gb", 0)]}, model=BGE, image=VLLM),
    *(
        pod("inference", f"embed-small-{s}", "h100-mig-01", {mig("1g.10gb"): 1}, workload="latency-critical",
            plan={"mig": [slot(0, "1g.10gb", s)]}, model=BGE, image=VLLM)
        for s in range(6)
    ),
    pod("inference", "rerank-0", "h100-mig-01", {mig("3g.40gb"): 1}, workload="latency-critical",
        plan={"mig": [slot(1, "3g.40gb", 0)]}, image=VLLM),
    pod("batch", "tokenize-0", "h100-mig-01", {mig("2g.20gb"): 1}, workload="batch",
        plan={"mig": [slot(1, "2g.20gb", 4)]}),
    pod("batch", "tokenize-1", "h100-mig-01", {mig("1g.10gb"): 1}, workload="batch",
        plan={"mig": [slot(2, "1g.10gb", 0)]}),
    *(
        pod("batch", f"notebook-{s}", "a100-single-01", {GPU: 1}, workload="batch",
            plan={"mig": [slot(0, "1g.5gb", s)]})
        for s in range(4)
    ),
    *(
        pod("research", f"sd-render-{g}", "l40s-pcie-01", {GPU: 1}, workload="batch", plan={"gpus": [g]})
        for g in (0, 2, 4, 6)
    ),
    # Placed by the default scheduler before gpu-extender: no plan, so the GPUs are unknown.
    *(pod("legacy", f"ocr-worker-{n}", "t4-legacy-01", {GPU: 1}, workload="batch") for n in range(3)),
    pod("kube-system", "coredns-7db6d8ff4d-x2l9q", "cpu-01", {}, workload="batch",
        image="registry.k8s.io/coredns/coredns:v1.11.3"),
    pod("research", "llama-pretrain-queued-0", None, {GPU: 8}, workload="batch"),
]


# --- DCGM -------------------------------------------------------------------------------------

def dcgm_dump(n: dict, busy: dict[int, tuple[float, float]], mig_busy: dict[tuple[int, int], float]) -> str:
    """dcgm-exporter text for one node. busy: gpu -> (util 0..1, fb used fraction)."""
    name = n["metadata"]["name"]
    topo = json.loads(n["metadata"]["annotations"][f"{P}/gpu-topology"])
    layout = json.loads(n["metadata"]["annotations"].get(f"{P}/mig-layout", "[]"))
    stamp = int((SNAPSHOT_TIME - timedelta(seconds=5)).timestamp() * 1000)
    rows: dict[str, list[str]] = {
        "DCGM_FI_DEV_GPU_UTIL": [], "DCGM_FI_DEV_FB_USED": [], "DCGM_FI_DEV_FB_FREE": [],
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": [],
    }
    for g in topo["gpus"]:
        i = g["index"]
        base = (
            f'gpu="{i}",UUID="{g["uuid"]}",pci_bus_id="00000000:{0x18 + 0x10 * i:02X}:00.0",'
            f'device="nvidia{i}",modelName="{g["model"]}"'
        )
        tail = f'Hostname="{name}",DCGM_FI_DRIVER_VERSION="550.127.05"'
        total = g["memoryMiB"]
        if g["migEnabled"]:
            for inst in (x for x in layout if x["gpu"] == i):
                gi = inst["start"] + 1
                labels = f'{base},GPU_I_PROFILE="{inst["profile"]}",GPU_I_ID="{gi}",{tail}'
                activity = mig_busy.get((i, inst["start"]), 0.0)
                share = total * inst["size"] // 8
                used = int(share * (0.8 if activity else 0.0)) + 13
                rows["DCGM_FI_PROF_GR_ENGINE_ACTIVE"].append(f"{{{labels}}} {activity:.6f} {stamp}")
                rows["DCGM_FI_DEV_FB_USED"].append(f"{{{labels}}} {used} {stamp}")
                rows["DCGM_FI_DEV_FB_FREE"].append(f"{{{labels}}} {share - used} {stamp}")
            continue
        util, fb = busy.get(i, (0.0, 0.0))
        labels = f"{base},{tail}"
        used = int(total * fb)
        rows["DCGM_FI_DEV_GPU_UTIL"].append(f"{{{labels}}} {round(util * 100)} {stamp}")
        rows["DCGM_FI_PROF_GR_ENGINE_ACTIVE"].append(f"{{{labels}}} {util:.6f} {stamp}")
        rows["DCGM_FI_DEV_FB_USED"].append(f"{{{labels}}} {used} {stamp}")
        rows["DCGM_FI_DEV_FB_FREE"].append(f"{{{labels}}} {total - used} {stamp}")
    help_text = {
        "DCGM_FI_DEV_GPU_UTIL": "GPU utilization (in %).",
        "DCGM_FI_DEV_FB_USED": "Framebuffer memory used (in MiB).",
        "DCGM_FI_DEV_FB_FREE": "Framebuffer memory free (in MiB).",
        "DCGM_FI_PROF_GR_ENGINE_ACTIVE": "Ratio of time the graphics engine is active.",
    }
    lines = [f"# dcgm-exporter scrape of {name}, saved with sample timestamps (ms)"]
    for metric, samples in rows.items():
        if samples:
            lines += [f"# HELP {metric} {help_text[metric]}", f"# TYPE {metric} gauge"]
            lines += [metric + s for s in samples]
    return "\n".join(lines) + "\n"


SERVING = (0.35, 0.30)
HOT = (0.95, 0.92)
DCGM = {
    "h100-train-01": ({}, {}),
    "h100-inf-01": ({g: SERVING for g in range(4)}, {}),
    "h100-inf-02": ({g: SERVING for g in range(4)}, {}),
    "h100-inf-03": ({g: HOT for g in range(4)}, {}),
    "a100-nv4-01": ({}, {}),
    "v100-dgx1-01": ({4: (0.82, 0.7), 5: (0.80, 0.7)}, {}),
    "a100-mig-01": ({0: (0.7, 0.6), 1: (0.7, 0.6)}, {(4, 0): 0.6, (4, 1): 0.5, (4, 2): 0.4, (5, 0): 0.3}),
    "h100-mig-01": ({}, {**{(0, s): 0.25 for s in range(6)}, (1, 0): 0.45, (1, 4): 0.7, (2, 0): 0.6}),
    "a100-single-01": ({}, {(0, s): 0.5 for s in range(4)}),
    "l40s-pcie-01": ({g: (0.6, 0.5) for g in (0, 2, 4, 6)}, {}),
}


def main() -> None:
    by_name = {n["metadata"]["name"]: n for n in NODES}
    snapshot = {"apiVersion": "v1", "items": [*NODES, *PODS], "kind": "List", "metadata": {"resourceVersion": ""}}
    header = (
        "# Bundled example cluster for `gpu-extender score` (written by examples/make_cluster.py).\n"
        f"# The shape of `kubectl get nodes,pods -A -o yaml`, taken at {ts()}.\n"
    )
    (HERE / "cluster.yaml").write_text(header + yaml.safe_dump(snapshot, sort_keys=False, width=120))
    metrics_dir = HERE / "metrics"
    metrics_dir.mkdir(exist_ok=True)
    for name, (busy, mig_busy) in DCGM.items():
        (metrics_dir / f"{name}.prom").write_text(dcgm_dump(by_name[name], busy, mig_busy))


if __name__ == "__main__":
    main()
