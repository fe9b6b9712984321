"""extender/kube.py against a real kube-apiserver: the Watcher (paged lists, watch events, 410 Gone)
and the KubeBinder's use of its connections."""

from __future__ import annotations

import logging
import threading

import pytest

from extender import kube
from extender.cluster import ClusterView
from scoring.config import PolicyConfig
from scoring.model import Plan, ScoreBreakdown
from tests.e2e.conftest import ControlPlane, wait_until

NAMESPACE = "watch"


def gpu_node(name: str) -> dict:
    return {"kind": "Node", "metadata": {"name": name, "labels": {"nvidia.com/gpu.count": "8"}},
            "status": {"capacity": {"nvidia.com/gpu": "8"}, "allocatable": {"nvidia.com/gpu": "8"}}}


def pod(name: str, gpus: int, node: str) -> dict:
    resources = {"limits": {"nvidia.com/gpu": str(gpus)}} if gpus else {"requests": {"cpu": "10m"}}
    return {"kind": "Pod", "metadata": {"name": name, "namespace": NAMESPACE},
            "spec": {"nodeName": node, "containers": [{"name": "c", "image": "busybox", "resources": resources}]}}


@pytest.fixture(scope="module")
def watched(plane):
    """Five GPU nodes with a GPU pod and a CPU pod each, watched through pages of two objects."""
    uids = {}
    for i in range(5):
        plane.node(gpu_node(f"watch-node-{i}"))
        for name, gpus in ((f"gpu-{i}", 1), (f"cpu-{i}", 0)):
            uids[name] = plane.pod(pod(name, gpus, f"watch-node-{i}")).metadata.uid
    view = ClusterView(PolicyConfig())
    watcher = kube.Watcher(plane.core.api_client, view, page_size=2)
    watcher.start()
    wait_until(lambda: view.synced, "the first list")
    yield plane, view, uids
    watcher.stop.set()


def test_paged_list_keeps_every_node_and_only_gpu_pods(watched):
    plane, view, uids = watched
    for i in range(5):
        node = view.node(f"watch-node-{i}")
        assert node is not None and node.allocatable["nvidia.com/gpu"] == 8
        assert node.usage.unplanned == {"nvidia.com/gpu": 1}  # its GPU pod, counted
        assert view.pod(uids[f"gpu-{i}"]) is not None
        assert view.pod(uids[f"cpu-{i}"]) is None  # pods without GPUs are not kept


def test_watch_events_update_the_view(watched):
    plane, view, _ = watched
    plane.pod(pod("gpu-late", 2, "watch-node-0"))
    wait_until(lambda: view.node("watch-node-0").usage.unplanned == {"nvidia.com/gpu": 3}, "the new pod")
    plane.core.delete_namespaced_pod("gpu-late", NAMESPACE, grace_period_seconds=0)
    wait_until(lambda: view.node("watch-node-0").usage.unplanned == {"nvidia.com/gpu": 1}, "the deletion")


def test_after_an_api_server_restart_old_watches_meet_410_and_the_view_recovers(tmp_path, caplog):
    """A restarted kube-apiserver starts its watch cache over: a watch from a resourceVersion
    older than that is answered 410 Gone. The watch returns (to re-list) instead of failing
    into backoff, and a Watcher running through the restart sees what changed after it."""
    plane = ControlPlane(tmp_path)
    try:
        plane.node(gpu_node("restart-node"))
        view = ClusterView(PolicyConfig())
        watcher = kube.Watcher(plane.core.api_client, view)
        watcher.start()
        wait_until(lambda: view.synced, "the first list")
        old = plane.core.list_pod_for_all_namespaces(limit=1).metadata.resource_version
        plane.pod(pod("before-restart", 1, "restart-node"))
        plane.restart_apiserver()
        plane.pod(pod("after-restart", 2, "restart-node"))
        wait_until(lambda: view.node("restart-node").usage.unplanned == {"nvidia.com/gpu": 3}, "both pods", 60)

        done = threading.Event()

        def expired_watch():
            watcher.pods._watch(old)
            done.set()

        with caplog.at_level(logging.INFO, logger="gpu_extender.kube"):
            threading.Thread(target=expired_watch, daemon=True).start()
            assert done.wait(30), "the watch did not return on 410 Gone"
        assert f"resourceVersion {old} expired (410 Gone)" in caplog.text
        watcher.stop.set()
    finally:
        plane.stop()


def test_the_binder_keeps_its_connections_for_the_next_binding(plane):
    """Bindings and Events reuse pooled connections: a new TLS connection per call costs the API
    server and the extender more CPU than the call itself."""
    plane.node(gpu_node("bind-node"))
    unbound = pod("to-bind-0", 1, "")
    del unbound["spec"]["nodeName"]
    created = []
    for i in range(20):
        unbound["metadata"]["name"] = f"to-bind-{i}"
        created.append(plane.core.api_client.sanitize_for_serialization(plane.pod(unbound)))
    api = kube.api_client(plane.kubeconfig)
    binder = kube.KubeBinder(api)
    for obj in created:
        binder.bind(obj, "bind-node", {"node": "bind-node", "gpus": [0], "mig": []},
                    ScoreBreakdown("bind-node", True, False, 1.0, {}, Plan((0,)), "fits"), "GPU 0: fits")

    def events_posted() -> bool:
        events = plane.core.list_namespaced_event(NAMESPACE, field_selector="reason=GPUPlanned").items
        return len(events) == len(created)

    wait_until(events_posted, "an Event for every binding")
    bound = [p for p in plane.core.list_namespaced_pod(NAMESPACE).items if p.metadata.name.startswith("to-bind-")]
    assert len(bound) == 20 and all(p.spec.node_name == "bind-node" for p in bound)
    opened = sum(pool.num_connections for pool in api.rest_client.pool_manager.pools._container.values())
    assert opened <= 2  # one for the bindings, one for the Event thread
