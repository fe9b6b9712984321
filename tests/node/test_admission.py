"""Which pod the kubelet is admitting, and which devices it gets (extender/node/admission.py).

`Kubelet` below plays the kubelet's device manager as its source does it (pkg/kubelet/cm/
devicemanager, v1.36, no NUMA topology): per container and resource, available = healthy minus
allocated; GetPreferredAllocation over those; the preferred devices that are available if there are
enough, otherwise the rest in map order (here: at random); then Allocate. Pods arrive in batches,
each admitted oldest first. The end-to-end tests run the same scheme against the real kubelet."""

from __future__ import annotations

import random
from dataclasses import dataclass, field

from hypothesis import given, settings
from hypothesis import strategies as st

from extender.node import nvml
from extender.node.admission import Admissions, Container, PodOnNode, Refused, Request
from extender.node.devices import Catalog
from scoring.model import GPU_RESOURCE, GpuShare, MigSlot, Plan, mig_resource
from tests.agent import machines
from tests.agent.fake_pynvml import mig_uuid

SHARE = "gpu-extender.io/gpu-milli"
MIG = {0: [("3g.40gb", 0), ("3g.40gb", 4)], 1: [("1g.10gb", s) for s in range(7)]}
CATALOG = Catalog(nvml.read_inventory(machines.hgx_h100(mig=MIG)), SHARE)
WHOLE = range(2, 8)  # GPUs 0 and 1 are in MIG mode


@dataclass
class Kubelet:
    admissions: Admissions
    rng: random.Random
    allocated: dict[str, set[str]] = field(default_factory=dict)
    got: dict[str, dict[str, list[str]]] = field(default_factory=dict)  # pod -> resource -> devices

    def admit(self, pod: PodOnNode) -> str | None:
        """Admit one pod; the error that rejects it, if any (its devices are released then)."""
        mine: dict[str, list[str]] = {}
        for container in pod.containers:
            for resource, n in sorted(container.wants.items()):
                held = self.allocated.setdefault(resource, set())
                available = set(CATALOG.ids(resource)) - held
                if len(available) < n:
                    return self._reject(mine, f"{resource}: {n} wanted, {len(available)} available")
                choice = self.admissions.prefer(Request(resource, frozenset(available), (), n), 0.0)
                preferred = set(choice.ids) & available
                devices = sorted(preferred)[:n]
                rest = sorted(available - preferred)
                self.rng.shuffle(rest)
                devices += rest[: n - len(devices)]
                try:
                    self.admissions.allocate(resource, devices, 0.0)
                except Refused as exc:
                    return self._reject(mine, str(exc))
                held.update(devices)
                mine.setdefault(resource, []).extend(devices)
        self.got[pod.key] = mine
        return None

    def _reject(self, mine: dict[str, list[str]], why: str) -> str:
        for resource, devices in mine.items():
            self.allocated[resource] -= set(devices)
        return why


def pod(key: str, created: int, plan: Plan, wants: dict[str, int]) -> PodOnNode:
    return PodOnNode(key, f"uid-{key}", f"2026-12-05T00:{created // 60:02d}:{created % 60:02d}Z",
                     (Container("main", wants),), plan)


def whole_pod(key: str, created: int, gpus: tuple[int, ...]) -> PodOnNode:
    return pod(key, created, Plan(gpus=gpus), {GPU_RESOURCE: len(gpus)})


def uuids(*gpus: int) -> list[str]:
    return [machines.uuid("h100", g) for g in gpus]


def test_the_oldest_waiting_pod_of_the_shape_gets_its_plan():
    admissions = Admissions(CATALOG)
    admissions.set_pods([whole_pod("ns/young", 5, (6, 7)), whole_pod("ns/old", 1, (4, 5)),
                         whole_pod("ns/one", 0, (2,))])
    choice = admissions.prefer(Request(GPU_RESOURCE, frozenset(CATALOG.ids(GPU_RESOURCE)), (), 2), 0.0)
    assert choice.ids == tuple(uuids(4, 5)) and choice.pod == "ns/old"
    admissions.allocate(GPU_RESOURCE, list(choice.ids), 0.0)
    left = frozenset(CATALOG.ids(GPU_RESOURCE)) - set(choice.ids)
    choice = admissions.prefer(Request(GPU_RESOURCE, left, (), 2), 0.0)
    assert choice.ids == tuple(uuids(6, 7)) and choice.pod == "ns/young"


def test_a_pod_whose_planned_devices_are_taken_is_passed_over():
    admissions = Admissions(CATALOG)
    admissions.set_pods([whole_pod("ns/a", 1, (4,)), whole_pod("ns/b", 2, (5,))])
    available = frozenset(CATALOG.ids(GPU_RESOURCE)) - set(uuids(4))
    choice = admissions.prefer(Request(GPU_RESOURCE, available, (), 1), 0.0)
    assert choice.pod == "ns/b" and choice.ids == tuple(uuids(5))


def test_mig_and_share_plans_are_followed():
    admissions = Admissions(CATALOG)
    admissions.set_pods([
        pod("ns/mig", 1, Plan(mig=(MigSlot(0, "3g.40gb", 4),)), {mig_resource("3g.40gb"): 1}),
        pod("ns/share", 2, Plan(share=GpuShare(3, 300)), {SHARE: 300}),
    ])
    mig = admissions.prefer(Request(mig_resource("3g.40gb"), frozenset(CATALOG.ids(mig_resource("3g.40gb"))), (), 1), 0)
    assert mig.ids == (mig_uuid(machines.uuid("h100", 0), 4),) and mig.pod == "ns/mig"
    share = admissions.prefer(Request(SHARE, frozenset(CATALOG.ids(SHARE)), (), 300), 0.0)
    assert share.pod == "ns/share" and {CATALOG.device(SHARE, i).gpu for i in share.ids} == {3}
    assert len(share.ids) == 300


def test_a_pod_without_a_plan_gets_the_best_fit_share_and_the_lowest_free_whole_gpus():
    admissions = Admissions(CATALOG)
    units = list(CATALOG.ids(SHARE))
    on_gpu = {g: [i for i in units if CATALOG.device(SHARE, i).gpu == g] for g in WHOLE}
    admissions.allocate(SHARE, on_gpu[5][:600], 0.0)  # GPU 5 holds 600: the fullest that fits 300
    admissions.allocate(GPU_RESOURCE, uuids(2), 0.0)  # GPU 2 is held whole
    available = frozenset(units) - set(on_gpu[5][:600]) - set(on_gpu[2])
    choice = admissions.prefer(Request(SHARE, available, (), 300), 0.0)
    assert choice.pod is None and {CATALOG.device(SHARE, i).gpu for i in choice.ids} == {5}
    free = frozenset(CATALOG.ids(GPU_RESOURCE)) - set(uuids(2))
    choice = admissions.prefer(Request(GPU_RESOURCE, free, (), 2), 0.0)
    assert choice.ids == tuple(uuids(3, 4))  # GPU 5 holds shares: never whole


def test_allocate_never_hands_one_gpu_out_both_whole_and_shared():
    admissions = Admissions(CATALOG)
    admissions.allocate(GPU_RESOURCE, uuids(3), 0.0)
    try:
        admissions.allocate(SHARE, [f"{uuids(3)[0]}::{k:03d}" for k in range(10)], 0.0)
        raise AssertionError("a share of a GPU held whole was handed out")
    except Refused as exc:
        assert "held whole" in str(exc)
    admissions.allocate(SHARE, [f"{uuids(4)[0]}::{k:03d}" for k in range(10)], 0.0)
    for bad in (uuids(4), [f"{uuids(5)[0]}::000", f"{uuids(6)[0]}::000"], ["GPU-gone"]):
        resource = GPU_RESOURCE if len(bad) == 1 and "::" not in bad[0] else SHARE
        try:
            admissions.allocate(resource, bad, 0.0)
            raise AssertionError(f"allocated {bad}")
        except Refused:
            pass


def test_what_the_kubelet_reports_replaces_the_records_once_it_covers_them():
    admissions = Admissions(CATALOG)
    admissions.set_pods([whole_pod("ns/a", 1, (4,))])
    choice = admissions.prefer(Request(GPU_RESOURCE, frozenset(CATALOG.ids(GPU_RESOURCE)), (), 1), 10.0)
    admissions.allocate(GPU_RESOURCE, list(choice.ids), 10.0)
    assert admissions.held() == {("ns/a", "main"): {GPU_RESOURCE: frozenset(uuids(4))}}
    admissions.observe({}, started=11.0)  # began just after Allocate: the record stays until shown
    assert ("ns/a", "main") in admissions.held()
    admissions.observe({("ns/a", "main"): {GPU_RESOURCE: uuids(4)}}, started=30.0)
    admissions.observe({}, started=60.0)  # the pod is gone: so are its devices
    assert admissions.held() == {}


@st.composite
def bursts(draw):
    """Pods with plans that never name a device twice, created in some order, arriving at the
    kubelet in batches in some other order."""
    free = list(WHOLE)
    draw(st.randoms()).shuffle(free)
    share_room = {g: 1000 for g in WHOLE}
    pods = []
    migs = [MigSlot(0, "3g.40gb", 0), MigSlot(0, "3g.40gb", 4)] + [MigSlot(1, "1g.10gb", s) for s in range(7)]
    for n in range(draw(st.integers(1, 20))):
        kind = draw(st.sampled_from(["whole", "mig", "share"]))
        if kind == "whole" and free:
            k = draw(st.sampled_from([k for k in (1, 2, 4) if k <= len(free)]))
            gpus, free = tuple(free[:k]), free[k:]
            for g in gpus:
                share_room[g] = 0
            pods.append(pod(f"ns/p{n}", 0, Plan(gpus=gpus), {GPU_RESOURCE: k}))
        elif kind == "mig" and migs:
            slot = migs.pop(draw(st.integers(0, len(migs) - 1)))
            pods.append(pod(f"ns/p{n}", 0, Plan(mig=(slot,)), {mig_resource(slot.profile): 1}))
        elif kind == "share":
            milli = draw(st.sampled_from([100, 250, 300, 500]))
            room = [g for g in WHOLE if share_room[g] >= milli]
            if not room:
                continue
            gpu = draw(st.sampled_from(room))
            share_room[gpu] -= milli
            if gpu in free:
                free.remove(gpu)
            pods.append(pod(f"ns/p{n}", 0, Plan(share=GpuShare(gpu, milli)), {SHARE: milli}))
    created = draw(st.permutations(range(len(pods))))
    pods = [PodOnNode(p.key, p.uid, f"2026-12-05T00:00:{c:02d}Z", p.containers, p.plan) for p, c in zip(pods, created)]
    arrival = draw(st.permutations(pods))
    cuts = sorted(draw(st.lists(st.integers(0, len(pods)), max_size=4)))
    batches = [list(arrival[a:b]) for a, b in zip([0, *cuts], [*cuts, len(pods)])]
    return pods, batches, draw(st.randoms())


@settings(max_examples=300, deadline=None)
@given(bursts())
def test_a_burst_admits_every_pod_with_devices_of_its_shape_and_the_union_of_the_plans(burst):
    pods, batches, rng = burst
    admissions = Admissions(CATALOG)
    admissions.set_pods(pods)  # the agent saw every pod bound before the kubelet admitted any
    kubelet = Kubelet(admissions, rng)
    for batch in batches:
        for p in sorted(batch, key=lambda p: (p.created, p.key)):
            assert kubelet.admit(p) is None, p
    whole: set[int] = set()
    shares: dict[int, int] = {}
    mig: set[str] = set()
    for p in pods:
        got = kubelet.got[p.key]
        assert {r: len(ids) for r, ids in got.items()} == dict(p.containers[0].wants)  # its own shape
        for resource, ids in got.items():
            gpus = {CATALOG.device(resource, i).gpu for i in ids}
            if resource == SHARE:
                assert len(gpus) == 1  # a share sits on one GPU
                (gpu,) = gpus
                shares[gpu] = shares.get(gpu, 0) + len(ids)
            elif resource == GPU_RESOURCE:
                assert not gpus & whole
                whole |= gpus
            else:
                mig |= set(ids)
    assert not whole & set(shares)  # never one GPU both whole and shared
    planned_whole = {g for p in pods for g in p.plan.gpus}
    planned_shares: dict[int, int] = {}
    for p in pods:
        if p.plan.share:
            planned_shares[p.plan.share.gpu] = planned_shares.get(p.plan.share.gpu, 0) + p.plan.share.milli
    planned_mig = {CATALOG_SLOTS[s] for p in pods for s in p.plan.mig}
    assert (whole, shares, mig) == (planned_whole, planned_shares, planned_mig)  # the union of the plans


CATALOG_SLOTS = {d.mig: d.id for d in CATALOG.mig.values()}


def test_a_pod_the_kubelet_started_or_is_deleting_is_never_taken_for_the_one_being_admitted():
    """PodResources does not list regular init containers: a running pod whose init container
    asked for devices would look as if it still waited."""
    running = PodOnNode("ns/running", "u1", "2026-12-05T00:00:00Z",
                        (Container("init", {GPU_RESOURCE: 1}), Container("main", {GPU_RESOURCE: 1})),
                        Plan(gpus=(4,)), admitted=True)
    admissions = Admissions(CATALOG)
    admissions.set_pods([running, whole_pod("ns/new", 5, (5,))])
    choice = admissions.prefer(Request(GPU_RESOURCE, frozenset(CATALOG.ids(GPU_RESOURCE)), (), 1), 0.0)
    assert choice.pod == "ns/new" and choice.ids == tuple(uuids(5))


def test_what_the_kubelet_said_of_a_name_before_this_uid_was_seen_belongs_to_an_earlier_pod():
    admissions = Admissions(CATALOG)
    admissions.observe({("ns/web-0", "main"): {GPU_RESOURCE: uuids(3)}}, started=10.0)  # the old web-0
    again = PodOnNode("ns/web-0", "new-uid", "2026-12-05T00:00:00Z", (Container("main", {GPU_RESOURCE: 1}),),
                      Plan(gpus=(6,)), since=11.0)
    admissions.set_pods([again])
    choice = admissions.prefer(Request(GPU_RESOURCE, frozenset(CATALOG.ids(GPU_RESOURCE)) - set(uuids(3)), (), 1), 12)
    assert choice.pod == "ns/web-0" and choice.ids == tuple(uuids(6))


def test_share_units_the_kubelet_reuses_keep_the_share_on_their_gpu():
    units = {g: [i for i in CATALOG.ids(SHARE) if CATALOG.device(SHARE, i).gpu == g] for g in WHOLE}
    reused = tuple(units[4][:100])
    admissions = Admissions(CATALOG)
    admissions.set_pods([pod("ns/waiting", 1, Plan(share=GpuShare(2, 500)), {SHARE: 500})])
    available = frozenset(CATALOG.ids(SHARE)) - set(reused)
    choice = admissions.prefer(Request(SHARE, available, reused, 300), 0.0)  # no plan: the fallback
    assert choice.ids[:100] == reused and len(choice.ids) == 300
    assert {CATALOG.device(SHARE, i).gpu for i in choice.ids} == {4}
    admissions.allocate(SHARE, list(choice.ids), 0.0)  # one GPU: accepted
