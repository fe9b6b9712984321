"""Synthetic clusters made of the bundled example's node shapes, for benchmarks.

`build(n_nodes, pods_per_node)` copies the example's GPU nodes round-robin under new names (new GPU
UUIDs), copies the pods bound to each original onto its copy, and tops every node up with small
non-GPU pods (daemons, sidecars) to `pods_per_node`. DCGM dumps are copied with the new UUIDs.
"""

from __future__ import annotations

import copy
import json
import re
import uuid
from pathlib import Path

import yaml

EXAMPLES = Path(__file__).resolve().parent.parent / "examples"
TOPOLOGY = "gpu-extender.io/gpu-topology"
PLAN = "gpu-extender.io/plan"


def _new_uuid(node: str, index: int) -> str:
    return "GPU-" + str(uuid.uuid5(uuid.NAMESPACE_DNS, f"bench.{node}.gpu{index}"))


def build(n_nodes: int, pods_per_node: int, out: Path) -> tuple[Path, list[Path], list[str]]:
    """Writes cluster.json and metrics/all.prom under `out`; returns them and the node names."""
    items = yaml.load((EXAMPLES / "cluster.yaml").read_text(), Loader=yaml.CSafeLoader)["items"]
    shapes = [i for i in items if i["kind"] == "Node" and "nvidia.com/gpu.count" in i["metadata"]["labels"]]
    pods_by_node: dict[str, list[dict]] = {}
    for pod in (i for i in items if i["kind"] == "Pod"):
        if pod["spec"].get("nodeName"):
            pods_by_node.setdefault(pod["spec"]["nodeName"], []).append(pod)
    dumps = {p.stem: p.read_text() for p in (EXAMPLES / "metrics").glob("*.prom")}
    nodes, pods, names = [], [], []
    metrics_dir = out / "metrics"
    metrics_dir.mkdir(parents=True, exist_ok=True)
    chunks: list[str] = []
    for i in range(n_nodes):
        shape = shapes[i % len(shapes)]
        original = shape["metadata"]["name"]
        name = f"{original}-{i:05d}"
        node = copy.deepcopy(shape)
        node["metadata"]["name"] = name
        node["metadata"]["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/node/{name}"))
        node["metadata"]["labels"]["kubernetes.io/hostname"] = name
        dump = dumps.get(original)
        if TOPOLOGY in node["metadata"]["annotations"]:
            topology = json.loads(node["metadata"]["annotations"][TOPOLOGY])
            for gpu in topology["gpus"]:
                new = _new_uuid(name, gpu["index"])
                if dump:
                    dump = dump.replace(gpu["uuid"], new)
                gpu["uuid"] = new
            node["metadata"]["annotations"][TOPOLOGY] = json.dumps(topology, separators=(",", ":"))
        if dump:
            chunks.append(re.sub(r'Hostname="[^"]+"', f'Hostname="{name}"', dump))
        nodes.append(node)
        names.append(name)
        mine = []
        for pod in pods_by_node.get(original, []):
            copy_ = copy.deepcopy(pod)
            copy_["metadata"]["name"] = f"{pod['metadata']['name']}-{i:05d}"
            copy_["metadata"]["uid"] = str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/pod/{name}/{len(mine)}"))
            copy_["spec"]["nodeName"] = name
            if PLAN in copy_["metadata"]["annotations"]:
                plan = json.loads(copy_["metadata"]["annotations"][PLAN])
                plan["node"] = name
                copy_["metadata"]["annotations"][PLAN] = json.dumps(plan, separators=(",", ":"))
            mine.append(copy_)
        while len(mine) < pods_per_node:
            mine.append({
                "apiVersion": "v1", "kind": "Pod",
                "metadata": {"name": f"node-exporter-{i:05d}-{len(mine)}", "namespace": "monitoring",
                             "uid": str(uuid.uuid5(uuid.NAMESPACE_URL, f"bench/pod/{name}/{len(mine)}"))},
                "spec": {"nodeName": name, "containers": [{"name": "c", "image": "prom/node-exporter:v1.8.2",
                                                            "resources": {"requests": {"cpu": "50m"}}}]},
                "status": {"phase": "Running"},
            })
        pods.extend(mine)
    cluster = out / "cluster.json"  # what `kubectl get nodes,pods -A -o json` prints
    cluster.write_text(json.dumps({"apiVersion": "v1", "kind": "List", "items": nodes + pods}))
    dump_path = metrics_dir / "all.prom"
    dump_path.write_text("".join(chunks))
    return cluster, [dump_path], names
