"""The real-kubelet harness (tests/e2e/kubelet.py) against the session's control plane: a kubelet
on the recording fake runtime registers its Node Ready and untainted, runs pods bound to it (and
finishes their deletion), records what each container was created with, keeps its device-plugin
directory, mounts and sysctls to itself, and two of them run side by side. These tests never
skip: a kubelet that cannot run here fails them, with its log."""

from __future__ import annotations

import os
import socket
import stat
import subprocess
import time
from pathlib import Path

import pytest
from kubernetes import client

from tests.e2e.conftest import wait_until
from tests.e2e.kubelet import KERNEL_TUNABLES, KubeletNode, wait_running


@pytest.fixture
def start_node(plane, tmp_path_factory):
    """start_node(name, **kwargs) -> a KubeletNode Ready on `plane`; all stopped afterwards."""
    started: list[KubeletNode] = []

    def start(name: str, **kwargs) -> KubeletNode:
        node = KubeletNode(plane, name, tmp_path_factory.mktemp(name), **kwargs)
        started.append(node)
        return node

    yield start
    for node in started:
        node.stop()


def answers(path: Path) -> bool:
    """A unix socket that something listens on."""
    if not stat.S_ISSOCK(path.lstat().st_mode):
        return False
    with socket.socket(socket.AF_UNIX) as s:
        s.connect(str(path))
    return True


def in_kubelet_namespace(node: KubeletNode, *cmd: str) -> str:
    """Run `cmd` in the kubelet's mount namespace; its stdout."""
    return subprocess.run(["nsenter", "-t", str(node.kubelet.pid), "-m", *cmd], check=True,
                          capture_output=True, text=True).stdout


def mounts_under(path: Path, mountinfo: str) -> list[str]:
    return [line.split()[4] for line in mountinfo.splitlines() if line.split()[4].startswith(str(path))]


def bound_pod(plane, namespace: str, name: str, node: str, env: dict[str, str] | None = None) -> client.V1Pod:
    plane.namespace(namespace)
    return plane.core.create_namespaced_pod(namespace, {
        "metadata": {"name": name},
        "spec": {"nodeName": node, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "registry.example/app:1",
                                 "env": [{"name": k, "value": v} for k, v in (env or {}).items()]}]}})


def test_node_registers_ready_untainted_with_its_own_device_plugin_dir(plane, start_node):
    sysctls = {key: Path("/proc/sys", key).read_text() for key in KERNEL_TUNABLES}
    node = start_node("kubelet-ready", labels={"example.com/pool": "kubelet"})

    obj = node.node()
    assert any(c.type == "Ready" and c.status == "True" for c in obj.status.conditions)
    assert not obj.spec.taints  # the not-ready taint of registration is gone: kube-scheduler may bind here
    assert obj.metadata.labels["kubernetes.io/hostname"] == "kubelet-ready"
    assert obj.metadata.labels["example.com/pool"] == "kubelet"
    assert int(obj.status.allocatable["pods"]) > 0
    assert obj.status.node_info.kubelet_version == "v1.36.3"
    assert obj.status.node_info.container_runtime_version.startswith("fakeRuntime://")

    # The kubelet's registration socket is in device_plugin_dir, and that directory is what the
    # kubelet sees as /var/lib/kubelet/device-plugins (where it dials the plugins' endpoints).
    registration = node.device_plugin_dir / "kubelet.sock"
    assert answers(registration)
    inside = in_kubelet_namespace(node, "stat", "-c", "%d:%i", "/var/lib/kubelet/device-plugins/kubelet.sock")
    assert inside.strip() == f"{registration.stat().st_dev}:{registration.stat().st_ino}"
    assert answers(node.pod_resources_socket)
    assert node.pod_resources_socket == node.root_dir / "pod-resources" / "kubelet.sock"

    # It changed no sysctl of the host (it met its own copies, mounted in its namespace).
    assert {key: Path("/proc/sys", key).read_text() for key in KERNEL_TUNABLES} == sysctls
    assert in_kubelet_namespace(node, "cat", "/proc/sys/vm/overcommit_memory").strip() == "1"

    assert node.wait_allocatable("example.com/none", 0)  # absent counts as 0
    with pytest.raises(AssertionError, match="example.com/none is 0, not 1"):
        node.wait_allocatable("example.com/none", 1, seconds=0.5)

    node.stop()
    assert node.leftovers == []  # no mount under its work dir, no kubepods cgroup
    assert node.kubelet.returncode is not None and node.fake_cri.returncode is not None
    with pytest.raises(client.exceptions.ApiException) as gone:
        node.node()
    assert gone.value.status == 404


def test_bound_pod_runs_and_its_container_is_recorded(plane, start_node):
    node = start_node("kubelet-pods")
    node.publish_root_ca("kubelet-pods")  # the service account token volume needs it
    pod = bound_pod(plane, "kubelet-pods", "app", "kubelet-pods", env={"GREETING": "hello", "EMPTY": ""})

    running = wait_running(plane.core, "app", "kubelet-pods")
    assert running.status.container_statuses[0].state.running
    [created] = node.containers_of(pod.metadata.uid)
    assert (created["pod_name"], created["pod_namespace"], created["container"]) == ("app", "kubelet-pods", "main")
    assert created["pod_sandbox_id"] and created["container_id"] and created["time"].endswith("Z")
    assert {"key": "GREETING", "value": "hello"} in created["envs"]
    assert {"key": "EMPTY", "value": ""} in created["envs"]
    assert created["devices"] == [] and created["cdi_devices"] == []  # nothing allocated to a plain pod
    token = next(m for m in created["mounts"] if m["container_path"] == "/var/run/secrets/kubernetes.io/serviceaccount")
    assert token["readonly"] and token["host_path"].startswith(f"{node.root_dir}/pods/{pod.metadata.uid}/")
    assert created in node.recorded()

    # The token volume's tmpfs is mounted in the kubelet's namespace only, never on the host.
    assert token["host_path"] in mounts_under(node.work, in_kubelet_namespace(node, "cat", "/proc/self/mountinfo"))
    assert mounts_under(node.work, Path("/proc/self/mountinfo").read_text()) == []

    # A real kubelet finishes a graceful deletion: the pod goes away, and removing its
    # container's logs (by the log path the runtime reports) removes nothing of the harness.
    files = sorted(p.name for p in node.work.iterdir())
    plane.core.delete_namespaced_pod("app", "kubelet-pods")
    wait_until(lambda: not [p for p in plane.core.list_namespaced_pod("kubelet-pods").items
                            if p.metadata.uid == pod.metadata.uid], "the kubelet to finish deleting the pod", 60)
    wait_until(lambda: not node.containers_of(pod.metadata.uid) or not any(
        (node.root_dir / "pods" / pod.metadata.uid).glob("*")), "the kubelet to clean up the pod", 60)
    assert sorted(p.name for p in node.work.iterdir()) == files

    node.stop()
    assert node.leftovers == []
    assert mounts_under(node.work, Path("/proc/self/mountinfo").read_text()) == []


def test_pod_admitted_before_its_device_plugin_runs_without_devices(plane, start_node):
    """Why device-plugin tests wait_allocatable first: the kubelet admits a pod asking for an
    extended resource its Node does not have (extender-managed resources work that way) and
    calls no plugin for it."""
    node = start_node("kubelet-early")
    node.publish_root_ca("kubelet-early")
    pod = plane.core.create_namespaced_pod("kubelet-early", {
        "metadata": {"name": "early"},
        "spec": {"nodeName": node.name, "terminationGracePeriodSeconds": 1,
                 "containers": [{"name": "main", "image": "registry.example/app:1",
                                 "resources": {"limits": {"example.com/dev": "1"}}}]}})
    wait_running(plane.core, "early", "kubelet-early")
    [created] = node.containers_of(pod.metadata.uid)
    assert created["devices"] == [] and created["cdi_devices"] == []
    plane.core.delete_namespaced_pod("early", "kubelet-early")
    wait_until(lambda: not plane.core.list_namespaced_pod("kubelet-early").items, "the pod to go", 60)


def test_two_kubelets_at_once(plane, start_node):
    first, second = start_node("kubelet-one"), start_node("kubelet-two")
    ready = {n.metadata.name for n in plane.core.list_node().items
             if any(c.type == "Ready" and c.status == "True" for c in n.status.conditions or [])}
    assert {"kubelet-one", "kubelet-two"} <= ready
    assert first.device_plugin_dir != second.device_plugin_dir
    assert answers(first.device_plugin_dir / "kubelet.sock") and answers(second.device_plugin_dir / "kubelet.sock")
    for node in (first, second):
        (node.device_plugin_dir / f"marker-{node.name}").touch()
    for node, other in ((first, second), (second, first)):  # each kubelet sees its own at the fixed path
        seen = in_kubelet_namespace(node, "ls", "/var/lib/kubelet/device-plugins").split()
        assert f"marker-{node.name}" in seen and f"marker-{other.name}" not in seen

    pods = {node.name: bound_pod(plane, "kubelet-two", f"on-{node.name}", node.name, env={"NODE": node.name})
            for node in (first, second)}
    for node in (first, second):
        node.publish_root_ca("kubelet-two")
    for node in (first, second):
        wait_running(plane.core, f"on-{node.name}", "kubelet-two")
    for node, other in ((first, second), (second, first)):
        [created] = node.containers_of(pods[node.name].metadata.uid)
        assert {"key": "NODE", "value": node.name} in created["envs"]
        assert node.containers_of(pods[other.name].metadata.uid) == []
    for node in (first, second):
        plane.core.delete_namespaced_pod(f"on-{node.name}", "kubelet-two")
    wait_until(lambda: not plane.core.list_namespaced_pod("kubelet-two").items, "the kubelets to delete the pods", 60)


def test_restarted_kubelet_keeps_its_pods(plane, start_node):
    node = start_node("kubelet-restart")
    pod = bound_pod(plane, "kubelet-restart", "app", "kubelet-restart")
    node.publish_root_ca("kubelet-restart")
    wait_running(plane.core, "app", "kubelet-restart")
    stale = node.device_plugin_dir / "stale-plugin.sock"  # a socket nothing listens on any more
    with socket.socket(socket.AF_UNIX) as s:
        s.bind(str(stale))

    node.restart_kubelet()
    # The new kubelet removes the sockets there and serves a new kubelet.sock: plugins register again.
    # Its device manager starts after the Node is Ready, a moment later on a loaded machine.
    wait_until(lambda: not stale.exists() and answers(node.device_plugin_dir / "kubelet.sock") or None,
               "the restarted kubelet to clear its device-plugin dir and serve kubelet.sock", 30)
    time.sleep(2)  # a few PLEG relists and status syncs of the new kubelet
    assert plane.core.read_namespaced_pod("app", "kubelet-restart").status.phase == "Running"
    assert len(node.containers_of(pod.metadata.uid)) == 1  # the running container was kept, not re-created
    plane.core.delete_namespaced_pod("app", "kubelet-restart")
    wait_until(lambda: not plane.core.list_namespaced_pod("kubelet-restart").items, "the pod to go", 60)
    assert os.path.exists(node.pod_resources_socket)
