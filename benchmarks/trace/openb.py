"""Readers for node and pod lists in the openb CSV columns (Alibaba cluster-trace-gpu-v2023).

Nodes: `sn,cpu_milli,memory_mib,gpu,model`. Pods: `name,cpu_milli,memory_mib,num_gpu,gpu_milli`
and optionally `gpu_spec,qos,pod_phase,creation_time,deletion_time,scheduled_time` (the published
`openb_pod_list_multigpu20.csv` has only the first five): a missing `gpu_spec` is "any model", a
missing `qos` is "" (batch), a missing `creation_time` is the row's position in the file. A bad row
raises TraceError with the file, line and reason on one line.
"""

from __future__ import annotations

import csv
from dataclasses import dataclass
from pathlib import Path

MILLI = 1000  # milli-GPU in one GPU

NODE_COLUMNS = ("sn", "cpu_milli", "memory_mib", "gpu", "model")
POD_COLUMNS = ("name", "cpu_milli", "memory_mib", "num_gpu", "gpu_milli")
LATENCY_CRITICAL_QOS = "LS"


class TraceError(ValueError):
    """A trace file that cannot be read: missing column or bad row."""


@dataclass(frozen=True)
class Node:
    name: str
    cpu_milli: int
    memory_mib: int
    gpus: int
    model: str  # GPU model, "" for a CPU-only node


@dataclass(frozen=True)
class Pod:
    name: str
    cpu_milli: int
    memory_mib: int
    num_gpu: int
    gpu_milli: int  # per GPU: 1000 for whole GPUs, 1..999 for a share of one GPU, 0 without GPU
    gpu_spec: frozenset[str]  # allowed GPU models, empty = any
    qos: str
    creation_time: int

    @property
    def total_gpu_milli(self) -> int:
        return self.num_gpu * self.gpu_milli

    @property
    def latency_critical(self) -> bool:
        return self.qos == LATENCY_CRITICAL_QOS


def _int(row: dict[str, str], column: str, where: str) -> int:
    text = (row.get(column) or "").strip()
    try:
        value = int(text)
    except ValueError:
        raise TraceError(f"{where}: {column} is {text!r}, not an integer") from None
    if value < 0:
        raise TraceError(f"{where}: {column} is {value}, negative")
    return value


def _rows(path: Path, columns: tuple[str, ...]):
    with path.open(newline="") as f:
        reader = csv.DictReader(f)
        missing = [c for c in columns if c not in (reader.fieldnames or ())]
        if missing:
            raise TraceError(f"{path}: missing column(s) {', '.join(missing)}")
        for row in reader:
            yield f"{path}:{reader.line_num}", row


def read_nodes(path: str | Path) -> list[Node]:
    nodes: list[Node] = []
    for where, row in _rows(Path(path), NODE_COLUMNS):
        name = (row["sn"] or "").strip()
        if not name:
            raise TraceError(f"{where}: sn is empty")
        gpus = _int(row, "gpu", where)
        model = (row["model"] or "").strip()
        if gpus and not model:
            raise TraceError(f"{where}: node {name} has {gpus} GPU(s) but no model")
        nodes.append(Node(name, _int(row, "cpu_milli", where), _int(row, "memory_mib", where),
                          gpus, model if gpus else ""))
    if not nodes:
        raise TraceError(f"{path}: no nodes")
    return nodes


def read_pods(path: str | Path) -> list[Pod]:
    pods: list[Pod] = []
    for where, row in _rows(Path(path), POD_COLUMNS):
        name = (row["name"] or "").strip()
        if not name:
            raise TraceError(f"{where}: name is empty")
        num_gpu = _int(row, "num_gpu", where)
        gpu_milli = _int(row, "gpu_milli", where)
        if gpu_milli > MILLI:
            raise TraceError(f"{where}: pod {name} gpu_milli {gpu_milli} is over {MILLI}")
        if num_gpu == 0 and gpu_milli:
            raise TraceError(f"{where}: pod {name} has gpu_milli {gpu_milli} but num_gpu 0")
        if num_gpu and not gpu_milli:
            raise TraceError(f"{where}: pod {name} has num_gpu {num_gpu} but gpu_milli 0")
        if num_gpu > 1 and gpu_milli < MILLI:
            raise TraceError(f"{where}: pod {name} shares a GPU ({gpu_milli} milli) "
                             f"but asks for {num_gpu} GPUs")
        spec = frozenset(m.strip() for m in (row.get("gpu_spec") or "").split("|") if m.strip())
        created = _int(row, "creation_time", where) if "creation_time" in row else len(pods)
        pods.append(Pod(name, _int(row, "cpu_milli", where), _int(row, "memory_mib", where),
                        num_gpu, gpu_milli, spec, (row.get("qos") or "").strip(), created))
    if not pods:
        raise TraceError(f"{path}: no pods")
    return pods
