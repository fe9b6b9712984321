"""GroupBook: each pod group's domain, its placed members and the room held for the rest.

The ClusterView keeps one and calls it under its lock. Choices are made by `scoring.groups`;
this module remembers them, and so that nothing lives only in memory, every member's plan
annotation carries its group's domain and hold deadline (`annotation`): a restarted extender
rebuilds each group, its members and its holds from the pods (`note_pod`).

A group's size is the larger of its declared size and the pods of it the view holds. Its
holds cover the members still to place. They are planned again whenever a member is placed or
leaves, or a node comes, goes or changes its domain labels or GPU allocatable (at start-up the
pods may be listed before the nodes). They are released when the group is whole or when
`hold_until` passes (each placement moves it to `groups.holdSeconds` from then). After release
the domain still binds the group's later members (in required mode); only the room is no longer
kept from other pods.
"""

from __future__ import annotations

from collections import defaultdict
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field
from typing import Any

from scoring import groups
from scoring.groups import Domain, GroupArgs, Placement
from scoring.model import GpuNode, GroupRef, PodRequest

NodesFor = Callable[[str, Domain], list[GpuNode]]  # (group, domain) -> its nodes, as the group sees them


@dataclass
class Record:
    name: str
    member: PodRequest  # the shape the rest of the group is held for (the opener's)
    domain: Domain
    hold_until: float
    declared: int
    placed: dict[str, str] = field(default_factory=dict)  # pod key -> node
    held: dict[str, tuple[int, ...]] = field(default_factory=dict)  # node -> GPUs held
    released: bool = False


@dataclass(frozen=True)
class Released:
    """A hold that ran out: the group, its domain and how many members were still missing."""

    name: str
    domain: Domain
    missing: int
    size: int
    pods: tuple[str, ...]  # the group's pods (keys), to tell


class GroupBook:
    def __init__(self, args: GroupArgs):
        self.args = args
        self.records: dict[str, Record] = {}
        self._pods: dict[str, set[str]] = defaultdict(set)  # group -> pod keys the view holds
        self._group_of: dict[str, str] = {}  # pod key -> group
        self._declared: dict[str, int] = {}
        self._on_node: dict[str, dict[str, tuple[int, ...]]] = defaultdict(dict)  # node -> group -> GPUs
        self.min_counts: dict[str, int] = {}  # Workload API gang -> minCount
        self._gang_of: dict[str, str] = {}  # group -> its Workload API gang

    # --- what the view tells it ------------------------------------------------------------

    def note_pod(self, key: str, ref: GroupRef, node: str | None,
                 written: Mapping[str, Any] | None, member: PodRequest) -> bool:
        """A pod of a group stored or assumed, on `node` if placed (`written`: its plan
        annotation's group part, if any); returns whether the group's holds must be planned again."""
        self._pods[ref.name].add(key)
        self._group_of[key] = ref.name
        if ref.gang:
            self._gang_of[ref.name] = ref.gang
        if ref.size:
            self._declared[ref.name] = max(self._declared.get(ref.name, 0), ref.size)
        record = self.records.get(ref.name)
        if record is None and node and written is not None:
            domain = _domain(written.get("domain"))
            if domain is None:
                return False
            record = self.records[ref.name] = Record(ref.name, member, domain, _float(written.get("holdUntil")),
                                                      ref.size)
        if record is None:
            return False
        if not node:
            return record.placed.pop(key, None) is not None
        if record.placed.get(key) == node:
            return False
        record.placed[key] = node
        if written is not None:
            record.hold_until = max(record.hold_until, _float(written.get("holdUntil")))
        return True

    def drop_pod(self, key: str) -> tuple[str | None, set[str]]:
        """A pod gone: (its group if that must be planned again, the nodes whose holds went with
        the group when it was the group's last pod)."""
        name = self._group_of.pop(key, None)
        if name is None:
            return None, set()
        self._pods[name].discard(key)
        record = self.records.get(name)
        if record is None:
            return None, set()
        record.placed.pop(key, None)
        if self._pods[name]:
            return name, set()
        del self._pods[name]
        self._declared.pop(name, None)
        self._gang_of.pop(name, None)
        del self.records[name]
        return None, self._set_held(record, {})

    def open(self, ref: GroupRef, member: PodRequest, domain: Domain, now: float) -> Record:
        """The domain chosen for a group when its first member is filtered."""
        record = self.records[ref.name] = Record(ref.name, member, domain, now + self.args.hold_seconds, ref.size)
        return record

    # --- reads -----------------------------------------------------------------------------

    def size(self, name: str, declared: int = 0) -> int:
        gang = self.min_counts.get(self._gang_of.get(name, ""), 0)
        return max(declared, gang, self._declared.get(name, 0), len(self._pods.get(name, ())))

    def groups_of_gangs(self, gangs: set[str]) -> list[str]:
        """The groups sized by these gangs (whose holds a new minCount changes)."""
        return [name for name, gang in self._gang_of.items() if gang in gangs and name in self.records]

    def domain_keys(self) -> set[str]:
        """The label keys of the groups' domains."""
        return {record.domain.key for record in self.records.values()}

    def open_groups(self) -> list[str]:
        """The groups whose hold was not released (a whole group's holds nothing)."""
        return [name for name, record in self.records.items() if not record.released]

    def missing(self, record: Record) -> int:
        return max(0, self.size(record.name, record.declared) - len(record.placed))

    def placement(self, name: str) -> Placement | None:
        record = self.records.get(name)
        if record is None:
            return None
        return Placement(name, record.domain, frozenset(record.held), self.args.mode)

    def held_on(self, node: str, but: str | None = None) -> frozenset[int]:
        """GPUs held on `node` for any group other than `but`."""
        on = self._on_node.get(node)
        if not on:
            return frozenset()
        return frozenset(g for name, gpus in on.items() if name != but for g in gpus)

    def annotation(self, name: str, now: float) -> dict[str, Any] | None:
        """The group part of a member's plan annotation, written at bind."""
        record = self.records.get(name)
        if record is None:
            return None
        d = record.domain
        until = now + self.args.hold_seconds if not record.released else record.hold_until
        return {"name": name, "size": self.size(name, record.declared),
                "domain": {"key": d.key, "value": d.value} | ({"own": True} if d.own else {}),
                "holdUntil": round(until, 3)}

    def status(self, name: str, now: float) -> dict[str, Any] | None:
        record = self.records.get(name)
        if record is None:
            return None
        size = self.size(name, record.declared)
        return {"name": name, "size": size, "placed": dict(sorted(record.placed.items())),
                "missing": self.missing(record), "domain": str(record.domain),
                "held": {node: list(gpus) for node, gpus in sorted(record.held.items())},
                "holdSecondsLeft": max(0.0, round(record.hold_until - now, 1)) if not record.released else 0.0,
                "released": record.released}

    def held(self) -> dict[str, dict[str, tuple[int, ...]]]:
        """Group -> node -> GPUs held, for /explain and metrics."""
        return {r.name: dict(r.held) for r in self.records.values() if r.held}

    # --- planning --------------------------------------------------------------------------

    def replan(self, name: str, nodes_for: NodesFor, now: float, placed_now: bool) -> set[str]:
        """Plan the group's holds again; `placed_now`: a member was just placed, so the deadline
        moves. Returns the nodes whose holds changed."""
        record = self.records.get(name)
        if record is None:
            return set()
        if placed_now and not record.released:
            record.hold_until = max(record.hold_until, now + self.args.hold_seconds)
        missing = self.missing(record)
        if record.released or missing == 0:
            return self._set_held(record, {})
        return self._set_held(record, groups.plan_holds(nodes_for(name, record.domain), record.member, missing))

    def _set_held(self, record: Record, held: dict[str, tuple[int, ...]]) -> set[str]:
        """Replace the record's holds; returns the nodes whose holds changed."""
        old = record.held
        for node in old:
            self._on_node[node].pop(record.name, None)
            if not self._on_node[node]:
                del self._on_node[node]
        for node, gpus in held.items():
            self._on_node[node][record.name] = gpus
        record.held = held
        return {n for n in set(old) | set(held) if old.get(n) != held.get(n)}

    def expire(self, now: float) -> tuple[list[Released], set[str]]:
        """Release the holds whose deadline passed; (what was released, the nodes it touched)."""
        released, touched = [], set()
        for record in self.records.values():
            if record.released or now < record.hold_until:
                continue
            record.released = True
            missing = self.missing(record)
            if missing:
                released.append(Released(record.name, record.domain, missing, self.size(record.name, record.declared),
                                         tuple(sorted(self._pods.get(record.name, ())))))
            touched |= self._set_held(record, {})
        return released, touched

    def next_deadline(self) -> float:
        return min((r.hold_until for r in self.records.values() if not r.released), default=float("inf"))


def _domain(data: Any) -> Domain | None:
    if not isinstance(data, Mapping) or not isinstance(data.get("value"), str):
        return None
    key = data.get("key", "")
    return Domain(key if isinstance(key, str) else "", data["value"], bool(data.get("own")))


def _float(value: Any) -> float:
    try:
        return float(value)
    except (TypeError, ValueError):
        return 0.0
