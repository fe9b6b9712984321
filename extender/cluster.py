"""ClusterView: nodes, the pods bound to them, plans being bound, and the DCGM samples.

Fed by a snapshot file or by Kubernetes watches. A node's scoring model (`GpuNode`) is rebuilt
when the node, a pod on it or an assumed plan changes, or when its agent data ages out, never per
request; each rebuild is logged (`changes_since`) so cached decisions know which nodes are stale.
The shapes of the GPU pods held (bound or pending) are counted as pods come and go, and the
fragmentation signal's target workload is published from them (`target`, extender/shapes.py).
"""

from __future__ import annotations

import copy
import json
import threading
import time
from collections import Counter, defaultdict
from collections.abc import Callable, Iterable, Mapping
from dataclasses import replace
from functools import partial
from pathlib import Path
from typing import Any

from extender import annotations as ann
from extender import convert, group_identity, snapshot
from extender.dcgm import readings
from extender.annotations import plan_to_dict
from extender.groups import GroupBook, Released
from extender.shapes import ShapeCounts, Target
from scoring import fragmentation, groups, policy
from scoring.config import PolicyConfig
from scoring.groups import Domain, Placement, Shortfall
from scoring.locality import ModelSpread
from scoring.model import GpuNode, GpuSample, Plan, PodRequest, WorkloadClass

Obj = Mapping[str, Any]
CHANGES_KEPT = 100_000


def slim(kind: str, obj: Obj, config: PolicyConfig) -> Obj | None:
    """What the view keeps of a listed Node or Pod: every node, pods asking for GPUs or a GPU share
    only, both slimmed."""
    share_resource = config.sharing.resource
    if kind == "Node":
        return convert.slim_node(obj, share_resource)
    if not convert.asks_for_gpus(obj, share_resource):
        return None
    return convert.slim_pod(obj, group_identity.keys_read(config.groups.identities))


def pod_key(pod: Obj) -> str:
    meta = pod.get("metadata") or {}
    return meta.get("uid") or f"{meta.get('namespace', 'default')}/{meta.get('name')}"


class ClusterView:
    def __init__(self, config: PolicyConfig, clock: Callable[[], float] = time.time):
        self.config = config
        self.now = clock
        self._lock = threading.RLock()
        self._raw_nodes: dict[str, Obj] = {}
        self._pods: dict[str, Obj] = {}
        self._pods_on: dict[str, dict[str, Obj]] = defaultdict(dict)
        self._assumed: dict[str, tuple[str, Obj]] = {}
        # name -> (node, the agent data expiry it was built with; node_without may renew a base first)
        self._built: dict[str, tuple[GpuNode, float]] = {}
        self._plain: dict[str, GpuNode] = {}  # name -> node without group holds
        self._groups = GroupBook(config.groups)
        self._group_keys = group_identity.keys_read(config.groups.identities)
        self._replan_due: dict[str, bool] = {}  # group -> holds to plan again; True: move its deadline too
        self._domains: dict[Domain, frozenset[str]] = {}  # domain -> its nodes; cleared when nodes change
        self.hold_listeners: list[Callable[[Released, Obj | None], None]] = []  # (hold released, a pod of it)
        self._bases: dict[str, tuple[GpuNode, float]] = {}  # name -> (node without pods, agent data expiry)
        self._actual: dict[str, dict[str, Plan]] = {}  # node -> pod -> devices the kubelet really allocated
        self._mismatched: dict[str, tuple[str, str]] = {}  # pod (namespace/name) -> (node, how it differs)
        self.mismatch_listeners: list[Callable[[Obj, str, str], None]] = []  # (pod, node, what differs)
        self.mismatches_reported = 0
        self._reported_mismatch: set[str] = set()  # pods (namespace/name) reported, while they live
        self._next_expiry = float("inf")
        self._changes: list[str] = []  # names of rebuilt nodes, oldest first
        self._changes_base = 0  # sequence number of _changes[0]
        self._models: dict[str, dict[str, int]] = defaultdict(dict)  # model -> node -> bytes cached
        self._gpu_nodes: set[str] = set()
        self._supply: dict[str, fragmentation.NodeKind] = {}  # node -> its kind, for the target workload
        self._supply_moved = False
        self._shapes = ShapeCounts(config.fragmentation.coverage)
        self.samples: Mapping[str, GpuSample] = {}
        self.samples_revision = 0
        self.synced = False

    # --- sources ---------------------------------------------------------------------------

    @classmethod
    def from_objects(
        cls,
        nodes: Iterable[Obj],
        pods: Iterable[Obj],
        samples: Mapping[str, GpuSample],
        config: PolicyConfig,
        as_of: float,
    ) -> ClusterView:
        view = cls(config, clock=lambda: as_of)
        view.replace_all(nodes, pods)
        view.set_samples(samples)
        return view

    @classmethod
    def from_snapshot(cls, path: Path, metrics: Iterable[Path], config: PolicyConfig) -> ClusterView:
        """A snapshot file plus dcgm-exporter dumps, judged as of their newest timestamp.

        Agent heartbeats and DCGM samples are aged against the newest time found in the files
        (the moment the snapshot was taken), not against the clock of the machine reading it.
        """
        nodes, pods = snapshot.load_snapshot(path, partial(slim, config=config))
        samples: dict[str, GpuSample] = {}
        for dump in metrics:
            samples.update(readings.load_dump(dump))
        times = [t for t in (convert.heartbeat(n) for n in nodes) if t is not None]
        times += [s.at for s in samples.values()]
        return cls.from_objects(nodes, pods, samples, config, max(times) if times else time.time())

    def replace_all(self, nodes: Iterable[Obj], pods: Iterable[Obj]) -> None:
        """Start over from full lists (a snapshot)."""
        with self._lock:
            self._rebuild_all(self._set_nodes(nodes) | self._set_pods(pods))
            self._publish()
            self.synced = True

    def replace_nodes(self, nodes: Iterable[Obj]) -> None:
        """All nodes, from a (re-)list."""
        with self._lock:
            self._rebuild_all(self._set_nodes(nodes))
            self._replan_groups()
            self._publish()

    def replace_pods(self, pods: Iterable[Obj]) -> None:
        """All pods, from a (re-)list."""
        with self._lock:
            self._rebuild_all(self._set_pods(pods))
            self._publish()

    def _set_nodes(self, nodes: Iterable[Obj]) -> set[str]:
        old = set(self._raw_nodes)
        share = self.config.sharing.resource
        self._bases.clear()
        self._actual.clear()
        self._raw_nodes = {(n.get("metadata") or {}).get("name", ""): convert.slim_node(n, share) for n in nodes}
        self._domains.clear()
        return old | set(self._raw_nodes)

    def _set_pods(self, pods: Iterable[Obj]) -> set[str]:
        touched = set(self._pods_on)
        self._pods.clear()
        self._pods_on.clear()
        self._shapes.clear()
        touched |= {n for held in self._groups.held().values() for n in held}
        counts = self._groups.min_counts
        self._groups = GroupBook(self.config.groups)
        self._groups.min_counts = counts
        for pod in pods:
            touched |= self._store_pod(pod)
        alive = {convert.name_of(p) for p in self._pods.values()}
        self._mismatched = {k: v for k, v in self._mismatched.items() if k in alive}
        self._reported_mismatch &= alive
        return touched

    def _rebuild_all(self, names: set[str]) -> None:
        for name in names:
            self._rebuild(name)

    def upsert_node(self, node: Obj) -> None:
        name = (node.get("metadata") or {}).get("name", "")
        with self._lock:
            old = self._raw_nodes.get(name)
            new = self._raw_nodes[name] = convert.slim_node(node, self.config.sharing.resource)
            relevelled = old is None or self._relevelled(old, new)
            if relevelled:
                self._domains.clear()
            self._bases.pop(name, None)
            self._rebuild(name)
            if relevelled or old["status"] != new["status"]:  # its domain or its GPUs: holds may move
                self._replan_groups()
            self._publish()

    def remove_node(self, name: str) -> None:
        with self._lock:
            known = self._raw_nodes.pop(name, None) is not None
            self._domains.clear()
            self._bases.pop(name, None)
            self._actual.pop(name, None)
            self._rebuild(name)
            if known:  # a node the view never had held nothing
                self._replan_groups()
            self._publish()

    def upsert_pod(self, pod: Obj) -> None:
        with self._lock:
            for name in self._drop_pod(pod_key(pod)) | self._store_pod(pod):
                self._rebuild(name)
            self._publish()

    def remove_pod(self, key: str) -> None:
        with self._lock:
            if (old := self._pods.get(key)) is not None:
                self._mismatched.pop(convert.name_of(old), None)
                self._reported_mismatch.discard(convert.name_of(old))
            self._note_group_dropped(key)
            for name in self._drop_pod(key):
                self._rebuild(name)
            self._publish()

    def _relevelled(self, old: Obj, new: Obj) -> bool:
        """Whether a node's domain labels changed, the only labels domains read: the topology
        levels, and the keys of domains in use (a group bound under an earlier levels setting).
        Not every label: GPU feature discovery rewrites a timestamp label every minute."""
        before, after = old["metadata"]["labels"], new["metadata"]["labels"]
        keys = {*self.config.groups.levels, *(d.key for d in self._domains), *self._groups.domain_keys()}
        return any(before.get(key) != after.get(key) for key in keys)

    def _replan_groups(self) -> None:
        """A node came, went, or changed its domain labels or GPU allocatable: every open group's
        holds are planned again (at start-up the pods may be listed before their nodes)."""
        for name in self._groups.open_groups():
            self._replan_due.setdefault(name, False)

    def _publish(self) -> None:
        """Plan the holds of the groups due (members moved, or nodes did), then publish the
        target workload if it moved, with the supply of the nodes as built now."""
        while self._replan_due:
            name, placed = self._replan_due.popitem()
            for node in self._groups.replan(name, self._group_nodes, self.now(), placed):
                self._rebuild(node)
        if self._supply_moved:
            self._shapes.set_supply(fragmentation.Supply(Counter(self._supply.values())))
            self._supply_moved = False
        self._shapes.publish()

    def set_min_counts(self, counts: Mapping[str, int], replace_all: bool = False, gone: Iterable[str] = ()) -> None:
        """Workload API gang sizes (extender/workload_api.py): `counts` added (all of them with
        `replace_all`), `gone` removed; the holds of the groups they size are planned again."""
        with self._lock:
            book = self._groups.min_counts
            before = dict(book)
            if replace_all:
                book.clear()
            for gang in gone:
                book.pop(gang, None)
            book.update(counts)
            moved = {g for g in set(before) | set(book) if before.get(g) != book.get(g)}
            for name in self._groups.groups_of_gangs(moved):
                self._replan_due.setdefault(name, False)
            self._publish()

    def set_samples(self, samples: Mapping[str, GpuSample]) -> None:
        with self._lock:
            self.samples = dict(samples)
            self.samples_revision += 1

    # --- plans being bound -----------------------------------------------------------------

    def assume(self, pod: Obj, node_name: str, plan: Plan, request: PodRequest | None = None) -> dict[str, Any]:
        """Count `plan` as held on `node_name` until the watch shows the pod bound (or `forget`);
        returns the plan in its annotation form (with its group's domain, for a group member)."""
        with self._lock:
            entry = self._built.get(node_name)
            written = plan_to_dict(plan, entry[0]) if entry else {"node": node_name}
            group = request.group if request is not None else None
            if group is not None and (noted := self._groups.annotation(group.name, self.now())) is not None:
                written["group"] = noted
            held = copy.deepcopy(dict(pod))
            held.setdefault("spec", {})["nodeName"] = node_name
            held.setdefault("metadata", {}).setdefault("annotations", {})[ann.PLAN] = json.dumps(written)
            key = pod_key(pod)
            self._assumed[key] = (node_name, held)
            self._note_group(key, held)
            self._rebuild(node_name)
            self._publish()
            return written

    def forget(self, pod: Obj) -> None:
        with self._lock:
            key = pod_key(pod)
            assumed = self._assumed.pop(key, None)
            if assumed:
                self._rebuild(assumed[0])
                self._note_group_dropped(key)
                if key in self._pods:
                    self._note_group(key, self._pods[key])
                self._publish()

    def assumed_count(self) -> int:
        return len(self._assumed)

    # --- reads -----------------------------------------------------------------------------

    def node(self, name: str) -> GpuNode | None:
        with self._lock:
            entry = self._built.get(name)
            return entry[0] if entry else None

    # --- pod groups (scoring/groups.py, extender/groups.py) ----------------------------------

    def group_placement(self, request: PodRequest, feasible: list[str], resolvable: list[str] = ()
                        ) -> tuple[Placement | Shortfall, frozenset[str]]:
        """Where the group of `request` goes: its recorded domain, or the domain chosen now among
        the `feasible` nodes (those where the member fits; for a latency-critical member that fits
        no domain so, also the `resolvable` ones, counting the GPUs of pods it may evict); and the
        nodes holding its room."""
        group = request.group
        assert group is not None
        with self._lock:
            self._expire_holds()
            placement = self._groups.placement(group.name)
            if placement is None:
                size = self._groups.size(group.name, group.size)
                nodes = [entry[0] for name in feasible if (entry := self._built.get(name))]
                chosen = groups.choose(nodes, request, size, self.config.groups.levels)
                if isinstance(chosen, Shortfall) and request.workload_class is WorkloadClass.LATENCY_CRITICAL:
                    reclaim = {name: self._evictable_gpus(name, request) for name in resolvable}
                    more = [entry[0] for name, gpus in reclaim.items() if gpus and (entry := self._built.get(name))]
                    second = groups.choose(nodes + more, request, size, self.config.groups.levels, reclaim)
                    chosen = second if isinstance(second, Domain) else replace(chosen, unresolvable=True)
                if isinstance(chosen, Shortfall):
                    return chosen, frozenset()
                self._groups.open(group, request, chosen, self.now())
                self._replan_due[group.name] = False
                self._publish()
                placement = self._groups.placement(group.name)
                assert placement is not None
            return placement, placement.held

    def domain_nodes(self, domain: Domain) -> frozenset[str]:
        """The names of the nodes in `domain`."""
        with self._lock:
            found = self._domains.get(domain)
            if found is None:
                found = self._domains[domain] = frozenset(n for n, node in self._plain.items() if domain.holds(node))
            return found

    def _evictable_gpus(self, name: str, request: PodRequest) -> int:
        """Whole GPUs held on the node by pods `request` may evict (lower priority, a class it may
        evict: extender/webhook/preemption.py's rules)."""
        total = 0
        for pod in self._holders(name, set()):
            if int((pod.get("spec") or {}).get("priority") or 0) >= request.priority:
                continue
            try:
                held = convert.pod_request(pod, self.config)
            except convert.BadObject:
                continue
            if policy.may_evict(request.workload_class, held.workload_class):
                total += held.gpus
        return total

    def group_domain(self, name: str) -> Domain | None:
        """The domain recorded for the group, if any."""
        with self._lock:
            placement = self._groups.placement(name)
            return placement.domain if placement else None

    def node_for_group(self, name: str, group: str) -> GpuNode | None:
        """The node as a member of `group` sees it: the room held for its group is free."""
        with self._lock:
            plain = self._plain.get(name)
            return groups.with_holds(plain, self._groups.held_on(name, but=group)) if plain else None

    def held_room(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Group -> node -> GPUs held for its members still to come."""
        with self._lock:
            return self._groups.held()

    def group_status(self, name: str) -> dict[str, Any] | None:
        """The group's domain, members and held room, for /explain and the dry run."""
        with self._lock:
            return self._groups.status(name, self.now())

    def _group_nodes(self, group: str, domain: Domain) -> list[GpuNode]:
        return [groups.with_holds(node, self._groups.held_on(name, but=group))
                for name, node in self._plain.items() if domain.holds(node)]

    def _note_group(self, key: str, pod: Obj) -> None:
        """Tell the group book about a stored or assumed pod of a group."""
        try:
            if group_identity.group_of(pod, self.config.groups.identities) is None:
                return
            request = convert.pod_request(pod, self.config)
        except (ValueError, convert.BadObject):
            return
        assert request.group is not None
        node = (pod.get("spec") or {}).get("nodeName") if convert.holds_resources(pod) else None
        if node is None and key in self._assumed:
            node, pod = self._assumed[key]
        written = None
        if node:
            try:
                written = json.loads(((pod.get("metadata") or {}).get("annotations") or {}).get(ann.PLAN) or "{}")
            except ValueError:
                written = None
            written = written.get("group") if isinstance(written, dict) else None
        if self._groups.note_pod(key, request.group, node, written, request):
            # bind wrote the deadline it moved to (assumed pods carry it too); a listed pod that
            # carries one brings it back, so only a member placed without one moves it now
            name = request.group.name
            self._replan_due[name] = self._replan_due.get(name, False) or (bool(node) and written is None)

    def _note_group_dropped(self, key: str) -> None:
        group, released = self._groups.drop_pod(key)
        for node in released:
            self._rebuild(node)
        if group is not None:
            self._replan_due.setdefault(group, False)

    def expire_holds(self) -> None:
        """Release the holds whose time ran out, and tell the listeners (once per hold). The
        webhook's background thread calls it (extender/webhook/decisions.py), and a group's own
        request: never the request path of other pods."""
        with self._lock:
            self._expire_holds()

    def _expire_holds(self) -> None:
        if self.now() < self._groups.next_deadline():
            return
        released, touched = self._groups.expire(self.now())
        for node in touched:
            self._rebuild(node)
        for hold in released:
            pod = next((self._pods.get(k) or self._assumed.get(k, ("", None))[1] for k in hold.pods), None)
            for listener in self.hold_listeners:
                listener(hold, pod)

    def nodes(self) -> list[GpuNode]:
        with self._lock:
            return [entry[0] for entry in self._built.values()]

    def changes_since(self, seq: int) -> tuple[int, list[str] | None]:
        """(current sequence, names of nodes rebuilt since `seq`), after rebuilding nodes whose
        agent data has aged out. None instead of names when `seq` is older than the log."""
        with self._lock:
            if self.now() >= self._next_expiry:
                self._expire()
            end = self._changes_base + len(self._changes)
            if seq < self._changes_base:
                return end, None
            return end, self._changes[seq - self._changes_base:]

    def node_without(self, name: str, pod_keys: Iterable[str], group: str | None = None) -> GpuNode | None:
        """The node as it would be with the given pods gone (for preemption); the room held for
        pod groups stays taken, but for `group`'s own."""
        with self._lock:
            if name not in self._raw_nodes:
                return None
            base, _ = self._base(name, self.now())
            node = convert.with_usage(base, self._holders(name, set(pod_keys)), self.config.sharing.resource,
                                      self._actual.get(name))
            return groups.with_holds(node, self._groups.held_on(name, but=group))

    def pod(self, key: str) -> Obj | None:
        return self._pods.get(key)

    @property
    def target(self) -> Target:
        """The published target workload of the fragmentation signal and its revision."""
        return self._shapes.target

    # --- internals -------------------------------------------------------------------------

    def model_spread(self, request: PodRequest) -> ModelSpread:
        """Cluster-wide facts about the pod's model for the locality signal, from the maintained
        index (all zero for a pod that names no model)."""
        if not request.model:
            return ModelSpread(0, 0, 0)
        stated_size = request.model_size
        with self._lock:
            holders = self._models.get(request.model, {})
            largest = max(holders.values(), default=0)
            return ModelSpread(stated_size or largest, len(holders), len(self._gpu_nodes))

    def _expire(self) -> None:
        now = self.now()
        for name in [n for n, (_, expires) in self._built.items() if expires <= now]:
            self._rebuild(name)
        self._next_expiry = min((expires for _, expires in self._built.values()), default=float("inf"))

    def _rebuild(self, name: str) -> GpuNode | None:
        old = self._built.pop(name, None)
        if old is not None:
            for model in old[0].model_cache:
                self._models[model].pop(name, None)
        self._gpu_nodes.discard(name)
        self._changes.append(name)
        if len(self._changes) > CHANGES_KEPT:
            drop = len(self._changes) // 2
            del self._changes[:drop]
            self._changes_base += drop
        if name not in self._raw_nodes:
            self._plain.pop(name, None)
            self._note_supply(name, None)
            return None
        base, expires = self._base(name, self.now())
        holders = self._holders(name, set())
        actual = self._actual.get(name)
        plain = self._plain[name] = convert.with_usage(base, holders, self.config.sharing.resource, actual)
        node = groups.with_holds(plain, self._groups.held_on(name))
        self._note_mismatches(name, holders, actual or {})
        self._built[name] = (node, expires)
        self._next_expiry = min(self._next_expiry, expires)
        for model, size in node.model_cache.items():
            if size > 0:
                self._models[model][name] = size
        if node.allocatable or node.gpus:
            self._gpu_nodes.add(name)
        self._note_supply(name, node)
        return node

    def _note_supply(self, name: str, node: GpuNode | None) -> None:
        """Keep the node's part of the supply; a change is published with the next workload."""
        count = len(fragmentation.node_free(node)[0]) if node is not None else 0
        entry = fragmentation.NodeKind(node.product, count) if count else None
        if self._supply.get(name) != entry:
            if entry is None:
                del self._supply[name]
            else:
                self._supply[name] = entry
            self._supply_moved = True

    def _base(self, name: str, now: float) -> tuple[GpuNode, float]:
        """The node without its pods and when its agent data ages out, converted again only after
        the node changed or that moment passed (a pod event changes the usage, not the node)."""
        cached = self._bases.get(name)
        if cached is not None and now < cached[1]:
            return cached
        raw = self._raw_nodes[name]
        base = convert.node_base(raw, now, self.config)
        self._actual[name] = convert.allocations(raw, now, self.config)
        beat = convert.heartbeat(raw)
        expires = beat + self.config.agent.max_age_seconds if beat is not None else float("inf")
        if expires <= now:
            expires = float("inf")  # already degraded: nothing more to age out
        self._bases[name] = (base, expires)
        return base, expires

    def mismatch_count(self) -> int:
        """Pods whose devices, as the kubelet reports them, differ from their plan."""
        return len(self._mismatched)

    def _note_mismatches(self, node: str, holders: list[Obj], actual: Mapping[str, Plan]) -> None:
        """Keep the pods on `node` whose devices differ from their plan now, and tell the
        listeners about each one the first time (a pod is reported once while it lives)."""
        found = convert.mismatches(node, holders, actual) if actual else {}
        for key in [k for k, (where, _) in self._mismatched.items() if where == node and k not in found]:
            del self._mismatched[key]
        for key, message in found.items():
            new = key not in self._reported_mismatch
            self._mismatched[key] = (node, message)
            if new:
                self._reported_mismatch.add(key)
                self.mismatches_reported += 1
                pod = next(p for p in holders if convert.name_of(p) == key)
                for listener in self.mismatch_listeners:
                    listener(pod, node, message)

    def _holders(self, name: str, excluded: set[str]) -> list[Obj]:
        """Pods bound to the node plus plans assumed onto it, less `excluded` keys."""
        on_node = self._pods_on.get(name, {})
        pods = [pod for key, pod in on_node.items() if key not in excluded]
        pods += [
            held for key, (where, held) in self._assumed.items()
            if where == name and key not in on_node and key not in excluded
        ]
        return pods

    def _store_pod(self, pod: Obj) -> set[str]:
        """Record a pod that asks for GPUs (no other pod matters here) and count its shape; returns
        the nodes whose model it changes."""
        if not convert.asks_for_gpus(pod, self.config.sharing.resource):
            return set()
        key = pod_key(pod)
        pod = self._pods[key] = convert.slim_pod(pod, self._group_keys)
        self._shapes.add(key, convert.shape(pod, self.config.sharing.resource))
        self._note_group(key, pod)
        touched = set()
        node_name = (pod.get("spec") or {}).get("nodeName")
        if node_name and convert.holds_resources(pod):
            self._pods_on[node_name][key] = pod
            touched.add(node_name)
            assumed = self._assumed.pop(key, None)
            if assumed is not None:
                touched.add(assumed[0])
        return touched

    def _drop_pod(self, key: str) -> set[str]:
        self._shapes.remove(key)
        old = self._pods.pop(key, None)
        if old is None:
            return set()
        node_name = (old.get("spec") or {}).get("nodeName")
        if node_name and self._pods_on.get(node_name, {}).pop(key, None) is not None:
            return {node_name}
        return set()
