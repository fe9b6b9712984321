"""Live DCGM through the real control plane: exporter discovery as the extender's service account,
and kube-scheduler placing latency-critical pods by utilization that a real Prometheus reports,
until that data goes stale."""

from __future__ import annotations

import json
import re
import time

import pytest
from kubernetes import client

from extender import kube
from extender.dcgm.discovery import Endpoint, PodEndpoints, ServiceEndpoints
from tests.dcgm.harness import Exporter, Prometheus, busy_text, dated
from tests.e2e.conftest import Extender, Stack, nvlink_node, wait_bound, wait_until

NAMESPACE = "gpu-operator"
SERVICE = "nvidia-dcgm-exporter"
TTL = 5


def endpoint_slice(name: str, service: str, endpoints: list[tuple[str, str, bool]], port: int = 9400) -> dict:
    return {"apiVersion": "discovery.k8s.io/v1", "kind": "EndpointSlice",
            "metadata": {"name": name, "namespace": NAMESPACE, "labels": {"kubernetes.io/service-name": service}},
            "addressType": "IPv4", "ports": [{"name": "gpu-metrics", "port": port, "protocol": "TCP"}],
            "endpoints": [{"addresses": [address], "nodeName": node, "conditions": {"ready": ready}}
                          for address, node, ready in endpoints]}


def exporter_pod(plane, name: str, node: str, labels: dict[str, str], ip: str | None) -> None:
    """A dcgm-exporter pod on `node`; with `ip`, Running with that pod IP (as its kubelet would say)."""
    plane.core.create_namespaced_pod(NAMESPACE, {
        "apiVersion": "v1", "kind": "Pod", "metadata": {"name": name, "labels": labels},
        "spec": {"nodeName": node, "containers": [{"name": "exporter", "image": "nvcr.io/nvidia/k8s/dcgm-exporter"}]}})
    if ip:
        plane.core.patch_namespaced_pod_status(name, NAMESPACE, {"status": {"phase": "Running", "podIP": ip,
                                                                            "podIPs": [{"ip": ip}]}})


def test_exporters_are_discovered_as_the_extenders_service_account(plane):
    plane.namespace(NAMESPACE)
    discovery = client.DiscoveryV1Api(plane.api)
    discovery.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice("dcgm-1", SERVICE, [
        ("10.1.0.5", "gpu-a", True), ("10.1.0.6", "gpu-b", False)]))
    discovery.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice("dcgm-2", SERVICE, [
        ("10.1.0.7", "gpu-c", True)]))
    discovery.create_namespaced_endpoint_slice(NAMESPACE, endpoint_slice("other", "node-exporter", [
        ("10.1.0.8", "gpu-a", True)]))
    exporter_pod(plane, "dcgm-a", "gpu-a", {"app": "nvidia-dcgm-exporter"}, "10.1.0.5")
    exporter_pod(plane, "dcgm-pending", "gpu-b", {"app": "nvidia-dcgm-exporter"}, None)
    exporter_pod(plane, "node-exporter-a", "gpu-a", {"app": "node-exporter"}, "10.1.0.8")
    api = kube.api_client(plane.kubeconfig_for("gpu-extender"))
    by_service = ServiceEndpoints(api, NAMESPACE, SERVICE, 9400)()
    assert sorted(by_service, key=lambda e: e.url) == [Endpoint("gpu-a", "http://10.1.0.5:9400/metrics"),
                                                       Endpoint("gpu-c", "http://10.1.0.7:9400/metrics")]
    assert PodEndpoints(api, NAMESPACE, "app=nvidia-dcgm-exporter", 9400)() == [
        Endpoint("gpu-a", "http://10.1.0.5:9400/metrics")]


def test_serve_scrapes_the_exporter_pods_it_finds(plane, tmp_path):
    """`serve --dcgm-pod-selector`: pods found as the extender, read, scored; then one fails.
    (EndpointSlices may not hold loopback addresses, pods may: the stand-in listens on loopback.)"""
    exporter = Exporter(busy_text("gpu-scrape", 8, 0.9))
    plane.node(nvlink_node("gpu-scrape", "dcgm"))
    plane.namespace(NAMESPACE)
    exporter_pod(plane, "dcgm-scrape", "gpu-scrape", {"app": "dcgm-e2e-scrape"}, "127.0.0.1")
    extender = Extender(plane, tmp_path / "serve.log", (
        "--dcgm-pod-selector", "app=dcgm-e2e-scrape", "--dcgm-namespace", NAMESPACE,
        "--dcgm-port", str(exporter.port), "--dcgm-interval", "1", "--dcgm-timeout", "1"))
    try:
        wait_until(lambda: metric(extender, "gpu_extender_dcgm_fresh_gpus") == 8, "the scraped GPUs")
        probe = latency_critical_pod("probe")
        probe["metadata"]["uid"] = "probe-uid"
        extender.http.post("/filter", json={"Pod": probe, "Nodes": None, "NodeNames": ["gpu-scrape"]})
        (node,) = extender.http.get("/explain/inference/probe").json()["nodes"]
        assert node["signals"]["utilization"] == pytest.approx(0.1)  # 90 % busy
        exporter.stop()
        wait_until(lambda: metric(extender, "gpu_extender_dcgm_failures_total", '{reason="down"}') >= 1,
                   "the failed scrape to be counted")
        log = (tmp_path / "serve.log").read_text()
        assert len(re.findall(r"DCGM dcgm-exporter on gpu-scrape \(http://127\.0\.0\.1:\d+/metrics\): down", log)) == 1
    finally:
        extender.kill()
        exporter.stop()


def metric(extender: Extender, name: str, labels: str = "") -> float:
    text = extender.http.get("/metrics").text
    match = re.search(rf"^{re.escape(name + labels)} (\S+)$", text, re.MULTILINE)
    return float(match.group(1)) if match else float("nan")


def latency_critical_pod(name: str) -> dict:
    return {"apiVersion": "v1", "kind": "Pod",
            "metadata": {"name": name, "namespace": "inference",
                         "annotations": {"gpu-extender.io/class": "latency-critical"}},
            "spec": {"schedulerName": "gpu-scheduler", "priorityClassName": "gpu-latency-critical",
                     "containers": [{"name": "server", "image": "vllm/vllm-openai:v0.6.3",
                                     "resources": {"limits": {"nvidia.com/gpu": 1}}}]}}


@pytest.fixture(scope="module")
def hot_and_warm(tmp_path_factory):
    """Two equal 8-GPU nodes, each running one pod: gpu-hot's GPUs all busy, gpu-warm's 70 % busy, both reported through
    a real Prometheus; the extender reads it every second and trusts samples for TTL seconds.
    gpu-hot's exporter dates its rows; `freeze()` stops the clock of those dates."""
    work = tmp_path_factory.mktemp("dcgm-e2e")
    frozen: list[float] = []
    hot = Exporter(lambda _: dated(busy_text("gpu-hot", 8, 1.0), frozen[0] if frozen else time.time()))
    warm = Exporter(busy_text("gpu-warm", 8, 0.7))
    prometheus = stack = None
    try:
        prometheus = Prometheus(work / "prometheus", [hot.target, warm.target])
        policy = work / "policy.yaml"
        policy.write_text(f"utilization:\n  ttlSeconds: {TTL}\n")
        stack = Stack(work, extender_args=("--prometheus-url", prometheus.url, "--dcgm-interval", "1",
                                           "--dcgm-timeout", "2", "--config", str(policy)))
        for name in ("gpu-hot", "gpu-warm"):
            stack.plane.node(nvlink_node(name, "dcgm"))
            # A pod on each, so neither is a whole idle node the fragmentation signal would keep
            # whole: between equal nodes, the utilization signal decides.
            occupant = latency_critical_pod(f"occupant-{name}")
            occupant["spec"]["nodeName"] = name
            stack.plane.pod(occupant)
        yield stack, (lambda: frozen.append(time.time()))
    finally:
        if stack is not None:
            stack.stop()
        if prometheus is not None:
            prometheus.stop()
        hot.stop()
        warm.stop()


def utilization_signal(pod: client.V1Pod) -> float:
    return json.loads(pod.metadata.annotations["gpu-extender.io/score"])["signals"]["utilization"]


def test_a_hot_gpu_steers_a_latency_critical_pod_away_until_its_data_turns_stale(hot_and_warm):
    stack, freeze = hot_and_warm
    plane, extender = stack.plane, stack.extender
    wait_until(lambda: metric(extender, "gpu_extender_dcgm_fresh_gpus") == 16, "both nodes' DCGM data via Prometheus")
    plane.pod(latency_critical_pod("chat-0"))
    first = wait_bound(plane.core, "chat-0", "inference")
    assert first.spec.node_name == "gpu-warm"  # the hot node's GPUs are all busy
    assert utilization_signal(first) == pytest.approx(0.3)

    freeze()  # gpu-hot's exporter keeps answering, with figures that no longer move on
    wait_until(lambda: metric(extender, "gpu_extender_dcgm_fresh_gpus") == 8, "gpu-hot's data to age past the TTL",
               seconds=TTL + 15)
    wait_until(lambda: metric(extender, "gpu_extender_outdated_shapes") == 0, "the decisions to be rescored")
    plane.pod(latency_critical_pod("chat-1"))
    second = wait_bound(plane.core, "chat-1", "inference")
    # Stale means neutral (0.5), better than gpu-warm's fresh 70 %: the pod goes to gpu-hot. Were the
    # hot figures still trusted, gpu-warm would win again, despite holding chat-0.
    assert second.spec.node_name == "gpu-hot"
    assert utilization_signal(second) == 0.5
    explained = extender.http.get("/explain/inference/chat-1").json()
    signals = {n["node"]: n["signals"]["utilization"] for n in explained["nodes"]}
    assert signals == {"gpu-hot": 0.5, "gpu-warm": pytest.approx(0.3)}
    assert metric(extender, "gpu_extender_dcgm_failures_total", '{reason="down"}') == 0
    assert metric(extender, "gpu_extender_dcgm_sources", '{state="ok"}') == 1
