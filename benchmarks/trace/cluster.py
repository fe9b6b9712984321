"""The replay's cluster state: per node CPU milli, memory MiB, GPU model and per-GPU free milli.

Nodes in the same state (same capacities, model, free CPU, free memory and multiset of free
GPU milli) are interchangeable for every node-local policy, so the cluster keeps them grouped:
a pod is scored once per distinct state, not once per node. `place` is the only mutation and
checks every constraint, so no replay can put a node over capacity.
"""

from __future__ import annotations

from typing import NamedTuple

from .openb import MILLI, Node, Pod


class PlacementError(RuntimeError):
    """A placement that breaks a constraint (a policy bug, never a pod that merely fails)."""


class NodeState(NamedTuple):
    """What a policy may see of a node. gpu_left is sorted in decreasing order."""

    model: str
    cpu_capacity: int
    memory_capacity: int
    gpu_count: int
    cpu_left: int
    memory_left: int
    gpu_left: tuple[int, ...]

    @property
    def gpu_left_total(self) -> int:
        return sum(self.gpu_left)


def model_allowed(pod: Pod, model: str) -> bool:
    """gpu_spec honoured: a GPU pod with a non-empty gpu_spec only goes on one of those models."""
    return not pod.gpu_spec or model in pod.gpu_spec


def state_fits(pod: Pod, state: NodeState) -> bool:
    """CPU and memory left, model allowed, and num_gpu GPUs each with gpu_milli free."""
    if state.cpu_left < pod.cpu_milli or state.memory_left < pod.memory_mib:
        return False
    if not pod.num_gpu:
        return True
    return (state.gpu_count >= pod.num_gpu and model_allowed(pod, state.model)
            and state.gpu_left[pod.num_gpu - 1] >= pod.gpu_milli)


class Cluster:
    def __init__(self, nodes: list[Node]) -> None:
        self.nodes = nodes
        self.capacity_gpu_milli = sum(n.gpus for n in nodes) * MILLI
        self.allocated_gpu_milli = 0
        self._cpu_left = [n.cpu_milli for n in nodes]
        self._memory_left = [n.memory_mib for n in nodes]
        self._gpu_left = [[MILLI] * n.gpus for n in nodes]
        self._state: list[NodeState] = []
        self.groups: dict[NodeState, dict[int, None]] = {}
        for i in range(len(nodes)):
            self._state.append(self._compute_state(i))
            self.groups.setdefault(self._state[i], {})[i] = None

    def _compute_state(self, i: int) -> NodeState:
        n = self.nodes[i]
        return NodeState(n.model, n.cpu_milli, n.memory_mib, n.gpus, self._cpu_left[i],
                         self._memory_left[i], tuple(sorted(self._gpu_left[i], reverse=True)))

    def state(self, node: int) -> NodeState:
        return self._state[node]

    def gpu_left(self, node: int) -> list[int]:
        """Free milli of each GPU of the node, by GPU index (a copy)."""
        return list(self._gpu_left[node])

    def cpu_left(self, node: int) -> int:
        return self._cpu_left[node]

    def memory_left(self, node: int) -> int:
        return self._memory_left[node]

    def fits(self, pod: Pod, node: int) -> bool:
        return state_fits(pod, self._state[node])

    def place(self, pod: Pod, node: int, gpus: tuple[int, ...]) -> None:
        """Bind pod to node on the given GPU indices, or raise PlacementError."""
        name = self.nodes[node].name
        if not self.fits(pod, node):
            raise PlacementError(f"pod {pod.name} does not fit node {name}")
        if len(gpus) != pod.num_gpu or len(set(gpus)) != len(gpus):
            raise PlacementError(f"pod {pod.name} needs {pod.num_gpu} distinct GPU(s), got {gpus}")
        left = self._gpu_left[node]
        for g in gpus:
            if not 0 <= g < len(left) or left[g] < pod.gpu_milli:
                raise PlacementError(f"pod {pod.name}: GPU {g} of node {name} lacks "
                                     f"{pod.gpu_milli} milli")
        for g in gpus:
            left[g] -= pod.gpu_milli
        self._cpu_left[node] -= pod.cpu_milli
        self._memory_left[node] -= pod.memory_mib
        self.allocated_gpu_milli += pod.total_gpu_milli
        old = self._state[node]
        del self.groups[old][node]
        if not self.groups[old]:
            del self.groups[old]
        new = self._compute_state(node)
        self._state[node] = new
        self.groups.setdefault(new, {})[node] = None
