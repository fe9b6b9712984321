"""The project's production policy (`scoring.policy`) as a replay policy ("Ours").

Each node state becomes a `GpuNode` (cached per state): GPU model as `product`, its GPUs with
whole GPUs held in `usage.gpus` and GPU shares in `usage.shared`, every GPU shareable (1000 milli
each of the sharing resource), free CPU in `cpu_free_milli`. Each pod becomes a `PodRequest`:
`LS` pods latency-critical, every other QoS batch; `num_gpu` whole GPUs or a `gpu_milli` share;
its CPU request. The target workload is the pod list's shape counts (the information FGD gets
too), as the extender would count the shapes of the GPU pods in its cluster view, weighted by
the GPUs of the models each shape may use, as the extender weighs them; the nodes' CPU only
leaves out the shapes no node could hold (the extender knows no node CPU).
`scoring.policy.score_node` scores every candidate state once per pod shape (memoised); the
highest total wins, ties to the first node in the seeded node order (as for the baselines). The
plan's GPU share names the GPU; whole GPUs are the first free ones by index (openb has no NVLink
data, so every set of free whole GPUs is as good as another).

With the inference view (`inference`), a latency-critical pod also names its model: the nodes of
a state that cache it are scored as a `GpuNode` with the model in `model_cache` and the model's
cluster spread, the others without, so the production locality signal decides as in a cluster.
"""

from __future__ import annotations

import random
from collections import Counter
from collections.abc import Sequence

from scoring import fragmentation, policy
from scoring.config import PolicyConfig
from scoring.locality import ModelSpread
from scoring.model import GPU_RESOURCE, GpuNode, PodRequest, Usage, WorkloadClass

from .baselines import Candidate, ScoringPolicy, best_fit_gpus
from .cluster import Cluster, NodeState
from .inference import InferenceView
from .openb import MILLI, Node, Pod

NO_MODEL = ModelSpread(0, 0, 0)
MODEL = "model"  # the pod's model under one name: only whether a node caches it matters


def request_for(pod: Pod, model_size: int | None = None) -> PodRequest:
    cls = WorkloadClass.LATENCY_CRITICAL if pod.latency_critical else WorkloadClass.BATCH
    share = pod.gpu_milli if pod.num_gpu == 1 and pod.gpu_milli < MILLI else 0
    return PodRequest("openb", pod.name, cls, gpus=0 if share else pod.num_gpu, gpu_milli=share,
                      model=MODEL if model_size else None, model_size=model_size,
                      cpu_milli=pod.cpu_milli)


def node_for(state: NodeState, share_resource: str, cached: int = 0) -> GpuNode:
    """The state as the scorer sees a node: GPU i has state.gpu_left[i] milli free, every GPU
    may be shared (a sharing device plugin advertises 1000 per GPU); `cached` bytes of the
    pod's model on its SSD."""
    held = frozenset(i for i, left in enumerate(state.gpu_left) if left == 0)
    shared = {i: MILLI - left for i, left in enumerate(state.gpu_left) if 0 < left < MILLI}
    allocatable = {GPU_RESOURCE: state.gpu_count, share_resource: state.gpu_count * MILLI}
    return GpuNode("state", allocatable=allocatable, product=state.model,
                   gpu_count=state.gpu_count, usage=Usage(gpus=held, shared=shared),
                   model_cache={MODEL: cached} if cached else {}, cpu_free_milli=state.cpu_left)


def workload_of(pods: Sequence[Pod], coverage: float, nodes: Sequence[Node] = ()
                ) -> fragmentation.Workload:
    """The pod list's target workload; `nodes` give the GPUs per model its weights need."""
    counts = Counter(fragmentation.Shape(1 if 0 < p.gpu_milli < MILLI else p.num_gpu, p.gpu_milli,
                                         p.cpu_milli, p.gpu_spec)
                     for p in pods)
    return fragmentation.target_workload(counts, coverage, supply_of(nodes) if nodes else None)


def supply_of(nodes: Sequence[Node]) -> fragmentation.Supply:
    return fragmentation.Supply(Counter(fragmentation.NodeKind(n.model, n.gpus, n.cpu_milli)
                                        for n in nodes if n.gpus))


class OursPolicy(ScoringPolicy):
    name = "Ours"
    inference: InferenceView | None = None

    def __init__(self, pods: Sequence[Pod], config: PolicyConfig = PolicyConfig(),
                 nodes: Sequence[Node] = ()) -> None:
        self.config = config
        self.workload = workload_of(pods, config.fragmentation.coverage, nodes)
        self._nodes: dict[tuple, GpuNode] = {}
        self._decisions: dict[tuple, tuple[float, tuple[int, ...]]] = {}

    def decide(self, pod: Pod, state: NodeState, model_size: int | None = None,
               spread: ModelSpread | None = None) -> tuple[float, tuple[int, ...]]:
        """(total, the planned share's GPU as a position in state.gpu_left, if any) for pod on
        state; with `spread`, on a node that caches the pod's model of `model_size` bytes."""
        key = (pod.cpu_milli, pod.num_gpu, pod.gpu_milli, pod.latency_critical, state,
               model_size, spread)
        found = self._decisions.get(key)
        if found is not None:
            return found
        cached = model_size if spread is not None and model_size else 0
        node = self._nodes.get((state, cached))
        if node is None:
            node = self._nodes[state, cached] = node_for(state, self.config.sharing.resource, cached)
        d = policy.score_node(node, request_for(pod, model_size), spread or NO_MODEL, {}, 0.0,
                              self.config, self.workload)
        if not d.feasible:
            raise AssertionError(f"production policy rejects a state that fits: {d.reason}")
        share = () if d.plan.share is None else (d.plan.share.gpu,)
        self._decisions[key] = found = (d.total, share)
        return found

    def choose(self, pod: Pod, candidates: Sequence[Candidate], cluster: Cluster,
               rng: random.Random) -> tuple[int, tuple[int, ...]]:
        best = -1.0
        winners: list[int] = []
        for total, nodes in self._options(pod, candidates, cluster):
            if total > best:
                best, winners = total, list(nodes)
            elif total == best:
                winners.extend(nodes)
        rank = self.node_rank
        node = min(winners, key=rank.__getitem__) if rank is not None else rng.choice(winners)
        state = cluster.state(node)
        left = cluster.gpu_left(node)
        share = self._share_position(pod, node, cluster)
        if share:
            milli = state.gpu_left[share[0]]
            return node, (next(g for g, free in enumerate(left) if free == milli),)
        return node, best_fit_gpus(pod, left)

    def _model(self, pod: Pod, cluster: Cluster) -> tuple[str | None, int | None, ModelSpread | None]:
        """The pod's model, its size and its spread over the GPU nodes (None without one)."""
        view = self.inference
        model = view.models.get(pod.name) if view is not None else None
        if model is None:
            return None, None, None
        size = view.catalogue.sizes[model]
        gpu_nodes = sum(1 for n in cluster.nodes if n.gpus)
        return model, size, ModelSpread(size, view.holders.get(model, 0), gpu_nodes)

    def _options(self, pod: Pod, candidates: Sequence[Candidate], cluster: Cluster):
        """(total, nodes) per candidate state, split by whether a node caches the pod's model."""
        model, size, spread = self._model(pod, cluster)
        for c in candidates:
            if model is None:
                yield self.decide(pod, c.state)[0], c.nodes
                continue
            caches = self.inference.caches
            warm = [n for n in c.nodes if model in caches[n]]
            cold = [n for n in c.nodes if model not in caches[n]] if warm else c.nodes
            if warm:
                yield self.decide(pod, c.state, size, spread)[0], warm
            if cold:
                yield self.decide(pod, c.state, size)[0], cold

    def _share_position(self, pod: Pod, node: int, cluster: Cluster) -> tuple[int, ...]:
        """The planned share's GPU (position in the node's state) for pod on the chosen node."""
        model, size, spread = self._model(pod, cluster)
        warm = model is not None and model in self.inference.caches[node]
        return self.decide(pod, cluster.state(node), size, spread if warm else None)[1]
