"""The real kube-scheduler, configured by the shipped manifests, places pods through the extender.

Between kube-scheduler and the extender sits a recording proxy (plain HTTP on loopback), so the
request bodies kube-scheduler really sends are kept: compared with the fixtures under
tests/webhook/recorded/ (rewritten with RECORD_SCHEDULER_REQUESTS=1), which the contract tests
replay against the server.
"""

from __future__ import annotations

import json
import subprocess
import sys
import time
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.e2e.conftest import EXAMPLE, MANIFESTS, ROOT, Stack, planned_event, wait_bound, wait_until

PODS = sorted((ROOT / "examples" / "pods").glob("*.yaml"))
SHARE = "gpu-extender.io/gpu-milli"


@pytest.fixture(scope="module")
def scheduled(tmp_path_factory):
    """The example cluster in a stack of its own, the extender behind a recorder."""
    stack = Stack(tmp_path_factory.mktemp("scheduled"), record=True)
    try:
        for item in EXAMPLE:
            if item["kind"] == "Node":
                stack.plane.node(item)
        for item in EXAMPLE:
            if item["kind"] == "Pod" and item["spec"].get("nodeName"):
                stack.plane.pod(item)  # pods the example shows queued would be scheduled here, changing it
        yield stack.plane, stack.extender, stack.recorder
    finally:
        stack.stop()


def ranked_first(pod_file: Path) -> str:
    """What `gpu-extender score` ranks first on the bundled example (no DCGM data, as live)."""
    exe = Path(sys.executable).with_name("gpu-extender")
    out = subprocess.run([str(exe), "score", "--pod", str(pod_file), "--cluster", str(ROOT / "examples" / "cluster.yaml"),
                          "--output", "json"], capture_output=True, text=True, check=True).stdout
    return json.loads(out)["nodes"][0]["node"]


def delete_and_wait(core: client.CoreV1Api, name: str, namespace: str) -> None:
    core.delete_namespaced_pod(name, namespace, grace_period_seconds=0)

    def gone() -> bool:
        try:
            core.read_namespaced_pod(name, namespace)
        except client.exceptions.ApiException as exc:
            return exc.status == 404
        return False

    wait_until(gone, f"{namespace}/{name} to be deleted")
    time.sleep(1)  # the extender's watch sees the deletion


@pytest.mark.parametrize("pod_file", PODS, ids=[p.stem for p in PODS])
def test_examples_land_where_score_ranks_first(scheduled, pod_file):
    plane, _, _ = scheduled
    expected = ranked_first(pod_file)
    manifest = yaml.safe_load(pod_file.read_text())
    manifest["metadata"]["name"] += "-e2e"
    created = plane.pod(manifest)
    bound = wait_bound(plane.core, created.metadata.name, created.metadata.namespace)
    try:
        assert bound.spec.node_name == expected
        plan = json.loads(bound.metadata.annotations["gpu-extender.io/plan"])
        assert plan["node"] == expected
        assert "gpu-extender.io/score" in bound.metadata.annotations
        assert expected in planned_event(plane.core, created).message
    finally:
        delete_and_wait(plane.core, created.metadata.name, created.metadata.namespace)


def test_a_4_gpu_latency_critical_pod_gets_the_cache_node_and_nvlink_gpus(scheduled):
    plane, _, _ = scheduled
    manifest = yaml.safe_load((ROOT / "examples" / "pods" / "llama70b-tp4-latency-critical.yaml").read_text())
    created = plane.pod(manifest)
    bound = wait_bound(plane.core, created.metadata.name, created.metadata.namespace)
    try:
        assert bound.spec.node_name == "h100-inf-01"  # the node that caches the model
        plan = json.loads(bound.metadata.annotations["gpu-extender.io/plan"])
        assert plan["gpus"] == [4, 5, 6, 7]  # one NVLink clique, the other four GPUs being taken
        score = json.loads(bound.metadata.annotations["gpu-extender.io/score"])
        assert score["signals"]["topology"] == 1.0
        event = planned_event(plane.core, created)
        assert "NVLink" in event.message and "cached" in event.message
    finally:
        delete_and_wait(plane.core, created.metadata.name, created.metadata.namespace)


def test_recorded_requests_match_what_kube_scheduler_sends(scheduled):
    """The bodies kube-scheduler sent in this run have the shape of the committed fixtures."""
    _, _, recorder = scheduled
    recorder.check(["filter", "prioritize", "bind"])


def test_gpu_shares_pack_three_to_a_gpu_through_kube_scheduler(scheduled):
    """Four 300-milli pods on l40s-pcie-01 (GPUs 1, 3, 5, 7 free): best fit puts the first three
    on GPU 1 and the fourth, which no longer fits there, on GPU 3."""
    plane, _, _ = scheduled
    l40s = next(i for i in EXAMPLE if i["kind"] == "Node" and i["metadata"]["name"] == "l40s-pcie-01")
    topology = json.loads(l40s["metadata"]["annotations"]["gpu-extender.io/gpu-topology"])
    uuids = {gpu["index"]: gpu["uuid"] for gpu in topology["gpus"]}
    created = []
    try:
        for i in range(4):
            pod = {"apiVersion": "v1", "kind": "Pod",
                   "metadata": {"name": f"share-{i}", "namespace": "shares",
                                "annotations": {"gpu-extender.io/class": "batch"}},
                   "spec": {"schedulerName": "gpu-scheduler", "priorityClassName": "gpu-batch",
                            "nodeSelector": {"kubernetes.io/hostname": "l40s-pcie-01"},
                            "containers": [{"name": "main", "image": "pytorch/pytorch:2.4.0-cuda12.1-cudnn9-runtime",
                                            "resources": {"limits": {SHARE: "300"}}}]}}
            created.append(plane.pod(pod))
            wait_bound(plane.core, f"share-{i}", "shares")
        shares, per_gpu = [], {}
        for pod in created:
            bound = plane.core.read_namespaced_pod(pod.metadata.name, "shares")
            assert bound.spec.node_name == "l40s-pcie-01"
            plan = json.loads(bound.metadata.annotations["gpu-extender.io/plan"])
            assert plan["node"] == "l40s-pcie-01" and plan["gpus"] == [] and plan["mig"] == []
            share = plan["share"]
            assert share["gpuUuid"] == uuids[share["gpu"]]
            shares.append((share["gpu"], share["milli"]))
            per_gpu[share["gpu"]] = per_gpu.get(share["gpu"], 0) + share["milli"]
            score = json.loads(bound.metadata.annotations["gpu-extender.io/score"])
            assert "sharing" in score["signals"]
        assert shares == [(1, 300), (1, 300), (1, 300), (3, 300)]
        assert all(milli <= 1000 for milli in per_gpu.values())
        assert "of GPU 1" in planned_event(plane.core, created[2]).message
    finally:
        for pod in created:
            delete_and_wait(plane.core, pod.metadata.name, "shares")


def test_every_manifest_passes_a_server_side_dry_run(plane):
    files = sorted(MANIFESTS.glob("*.yaml"))
    assert {f.name for f in files} >= {"priorityclasses.yaml", "rbac.yaml", "scheduler-config.yaml",
                                       "gpu-scheduler.yaml", "workloads.yaml"}
    for path in files:
        applied = plane.apply(path, dry_run=True)
        assert applied and all(obj["metadata"]["name"] for obj in applied), path.name


@pytest.mark.parametrize("verb, resource, subresource, allowed", [
    ("list", "nodes", "", True), ("watch", "nodes", "", True), ("list", "pods", "", True),
    ("watch", "pods", "", True), ("create", "pods", "binding", True),
    ("create", "events", "", True),
    ("patch", "pods", "", False), ("update", "pods", "", False), ("get", "secrets", "", False), ("list", "secrets", "", False), ("delete", "pods", "", False),
    ("create", "pods", "", False), ("update", "nodes", "", False), ("patch", "nodes", "", False),
    ("create", "pods", "eviction", False), ("get", "configmaps", "", False),
    ("list", "endpointslices.discovery.k8s.io", "", True), ("watch", "endpointslices.discovery.k8s.io", "", False),
    ("create", "endpointslices.discovery.k8s.io", "", False),
    ("watch", "podgroups.scheduling.k8s.io", "", True), ("create", "podgroups.scheduling.k8s.io", "", False),
])
def test_the_extender_service_account_can_do_what_it_needs_and_nothing_more(
        plane, verb, resource, subresource, allowed):
    resource, _, group = resource.partition(".")  # resource.group, as kubectl writes it
    review = client.AuthorizationV1Api(plane.api).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:kube-system:gpu-extender",
                 "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
                 "resourceAttributes": {"verb": verb, "group": group, "resource": resource,
                                        "subresource": subresource, "namespace": "default"}}})
    assert review.status.allowed is allowed


def test_the_scheduler_config_manages_every_mig_resource_we_know():
    from scoring.mig_catalog import _CATALOG
    from scoring.model import mig_resource

    shipped = yaml.safe_load(yaml.safe_load((MANIFESTS / "scheduler-config.yaml").read_text())["data"]["config.yaml"])
    (extender,) = shipped["extenders"]
    managed = {r["name"] for r in extender["managedResources"]}
    known = {mig_resource(p.name) for profiles in _CATALOG.values() for p in profiles}
    assert managed == {"nvidia.com/gpu", SHARE} | known
    assert not any(r["ignoredByScheduler"] for r in extender["managedResources"])  # nodes advertise them all
    assert extender["nodeCacheCapable"] is True and extender["urlPrefix"].startswith("http://127.0.0.1:")
    assert shipped["profiles"][0]["percentageOfNodesToScore"] == 100
