"""ClusterView: the nodes, their pods and the DCGM samples the scorer reads."""

from __future__ import annotations

import time
from collections import defaultdict
from collections.abc import Iterable, Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from extender import convert, dcgm, snapshot
from scoring.config import PolicyConfig
from scoring.model import GpuNode, GpuSample


@dataclass(frozen=True)
class ClusterView:
    """A consistent view of the cluster at time `as_of` (seconds since the epoch)."""

    nodes: tuple[GpuNode, ...]
    samples: Mapping[str, GpuSample]
    as_of: float

    @classmethod
    def from_objects(
        cls,
        nodes: Iterable[Mapping[str, Any]],
        pods: Iterable[Mapping[str, Any]],
        samples: Mapping[str, GpuSample],
        config: PolicyConfig,
        as_of: float,
    ) -> ClusterView:
        by_node: dict[str, list[Mapping[str, Any]]] = defaultdict(list)
        for pod in pods:
            node_name = (pod.get("spec") or {}).get("nodeName")
            if node_name:
                by_node[node_name].append(pod)
        built = tuple(
            convert.gpu_node(node, by_node[(node.get("metadata") or {}).get("name", "")], as_of, config)
            for node in nodes
        )
        return cls(built, dict(samples), as_of)

    @classmethod
    def from_snapshot(cls, path: Path, metrics: Iterable[Path], config: PolicyConfig) -> ClusterView:
        """A snapshot file plus dcgm-exporter dumps, judged as of their newest timestamp.

        Agent heartbeats and DCGM samples are aged against the newest time found in the files
        (the moment the snapshot was taken), not against the clock of the machine reading it.
        """
        nodes, pods = snapshot.load_snapshot(path)
        samples: dict[str, GpuSample] = {}
        for dump in metrics:
            samples.update(dcgm.load_dump(dump))
        times = [t for t in (convert.heartbeat(n) for n in nodes) if t is not None]
        times += [s.at for s in samples.values()]
        as_of = max(times) if times else time.time()
        return cls.from_objects(nodes, pods, samples, config, as_of)
