"""The node agent against a real kube-apiserver, as the gpu-extender-agent service account of
manifests/agent.yaml (NVML answered by the fake of tests/agent): it publishes what the extender
reads, leaves the Node alone when nothing changed, publishes a changed model cache, renews the
heartbeat, and may do nothing but get and patch nodes."""

from __future__ import annotations

import json
import threading
import time
from collections.abc import Iterator
from datetime import datetime, timedelta, timezone
from pathlib import Path

import pynvml
import pytest
from kubernetes import client
from typer.testing import CliRunner

from extender import annotations as ann
from extender import convert, kube
from extender.node.agent import Agent, rfc3339
from extender.node.inventory import scan
from extender.cli import app
from scoring.config import PolicyConfig
from tests.agent import machines
from tests.e2e.conftest import MANIFESTS, ControlPlane, wait_until

INVENTORY = (ann.TOPOLOGY, ann.MIG_LAYOUT, ann.MODEL_CACHE)


CREATED: list[str] = []


@pytest.fixture(scope="module")
def agent_identity(plane: ControlPlane) -> Iterator[tuple[Path, client.CoreV1Api]]:
    """manifests/agent.yaml applied; a kubeconfig of the agent's service account and a client.
    The nodes the tests create are deleted afterwards: the control plane is shared."""
    plane.apply(MANIFESTS / "agent.yaml")
    kubeconfig = plane.kubeconfig_for("gpu-extender-agent")
    yield kubeconfig, client.CoreV1Api(kube.api_client(kubeconfig))
    for name in CREATED:
        plane.core.delete_node(name)


def gpu_node(plane: ControlPlane, name: str) -> None:
    plane.core.create_node({"metadata": {"name": name, "labels": {"nvidia.com/gpu.present": "true"},
                                         "annotations": {"example.com/keep": "me"}}})
    CREATED.append(name)


def node_json(plane: ControlPlane, name: str) -> dict:
    return json.loads(plane.core.read_node(name, _preload_content=False).data)


def test_publishes_what_the_extender_reads_and_patches_only_changes(plane, agent_identity, tmp_path):
    _, core = agent_identity
    gpu_node(plane, "agent-dgx1v")
    cache = tmp_path / "models"
    (cache / "gpt2").mkdir(parents=True)
    (cache / "gpt2" / "model.safetensors").write_bytes(b"\0" * 1000)
    agent = Agent("agent-dgx1v", core, lambda: scan(cache, lib=machines.dgx1v()), interval=60, heartbeat_seconds=120)
    t0 = datetime.now(timezone.utc)

    assert agent.cycle(t0)
    first = node_json(plane, "agent-dgx1v")
    read = convert.gpu_node(first, [], time.time(), PolicyConfig())
    assert read.notes == ()
    assert read.nvlink == tuple(map(tuple, machines.parse_topo(machines.DGX1V_TOPO).nvlink))
    assert read.model_cache == {"gpt2": 1000} and len(read.gpus) == 8
    assert first["metadata"]["annotations"]["example.com/keep"] == "me"

    assert agent.cycle(t0 + timedelta(seconds=10))  # nothing changed, heartbeat fresh: no write
    assert node_json(plane, "agent-dgx1v")["metadata"]["resourceVersion"] == first["metadata"]["resourceVersion"]

    (cache / "gpt2" / "tokenizer.json").write_bytes(b"\0" * 24)
    assert agent.cycle(t0 + timedelta(seconds=20))
    changed = node_json(plane, "agent-dgx1v")
    notes = changed["metadata"]["annotations"]
    assert json.loads(notes[ann.MODEL_CACHE]) == {"gpt2": 1024}
    assert notes[ann.TOPOLOGY] == first["metadata"]["annotations"][ann.TOPOLOGY]
    assert notes[ann.HEARTBEAT] == rfc3339(t0 + timedelta(seconds=20))

    assert agent.cycle(t0 + timedelta(seconds=90))  # 90 + 70 s > 120 s since the last report: renew
    renewed = node_json(plane, "agent-dgx1v")["metadata"]["annotations"]
    assert renewed[ann.HEARTBEAT] == rfc3339(t0 + timedelta(seconds=90))
    assert {k: renewed[k] for k in INVENTORY} == {k: notes[k] for k in INVENTORY}


def test_an_nvml_failure_midway_leaves_the_node_untouched(plane, agent_identity):
    _, core = agent_identity
    gpu_node(plane, "agent-broken")
    fake = machines.hgx_h100()
    agent = Agent("agent-broken", core, lambda: scan(None, lib=fake), interval=60, heartbeat_seconds=120)
    assert agent.cycle()
    before = node_json(plane, "agent-broken")
    fake.fail = {"nvmlDeviceGetNvLinkRemotePciInfo": (fake.calls["nvmlDeviceGetNvLinkRemotePciInfo"] + 70,
                                                    pynvml.NVML_ERROR_GPU_IS_LOST)}
    assert not agent.cycle(datetime.now(timezone.utc) + timedelta(hours=1))  # heartbeat long due
    after = node_json(plane, "agent-broken")
    assert after["metadata"]["resourceVersion"] == before["metadata"]["resourceVersion"]


def test_the_running_loop_renews_the_heartbeat(plane, agent_identity):
    _, core = agent_identity
    gpu_node(plane, "agent-loop")
    agent = Agent("agent-loop", core, lambda: scan(None, lib=machines.pcie_only()), interval=0.2,
                  heartbeat_seconds=1)
    stop = threading.Event()
    runner = threading.Thread(target=agent.run, args=(stop,), daemon=True)
    runner.start()
    try:
        def annotations() -> dict:
            return node_json(plane, "agent-loop")["metadata"].get("annotations") or {}

        first = wait_until(lambda: annotations().get(ann.HEARTBEAT), "the first report", 10)
        topology = annotations()[ann.TOPOLOGY]
        wait_until(lambda: annotations()[ann.HEARTBEAT] != first, "a renewed heartbeat", 10)
        assert annotations()[ann.TOPOLOGY] == topology
    finally:
        stop.set()
        runner.join(timeout=5)
    assert not runner.is_alive()


def test_the_cli_publishes_once_as_the_agent_service_account(plane, agent_identity, monkeypatch):
    kubeconfig, _ = agent_identity
    gpu_node(plane, "agent-cli")
    monkeypatch.setattr("extender.node.nvml.pynvml", machines.hgx_h100(mig={0: [("7g.80gb", 0)]}))
    result = CliRunner().invoke(app, ["agent", "--once", "--node-name", "agent-cli", "--kubeconfig", str(kubeconfig)])
    assert result.exit_code == 0, result.output
    read = convert.gpu_node(node_json(plane, "agent-cli"), [], time.time(), PolicyConfig())
    assert [(m.gpu, m.profile, m.start, m.size) for m in read.mig_layout] == [(0, "7g.80gb", 0, 8)]
    assert read.nvlink[1][7] == 18 and read.nvlink[0][1] == 0

    result = CliRunner().invoke(app, ["agent", "--once", "--node-name", "no-such-node", "--kubeconfig",
                                      str(kubeconfig)])
    assert result.exit_code == 4


@pytest.mark.parametrize("verb, resource, subresource, allowed", [
    ("get", "nodes", "", True), ("patch", "nodes", "", True),
    ("update", "nodes", "", False), ("list", "nodes", "", False), ("watch", "nodes", "", False),
    ("delete", "nodes", "", False), ("create", "nodes", "", False), ("patch", "nodes", "status", False),
    ("get", "pods", "", True), ("list", "pods", "", True), ("watch", "pods", "", True),
    ("create", "events", "", True),
    ("get", "secrets", "", False), ("list", "secrets", "", False), ("delete", "pods", "", False),
    ("create", "pods", "", False), ("patch", "pods", "", False), ("update", "pods", "", False),
    ("patch", "pods", "status", False), ("create", "pods", "binding", False), ("create", "pods", "eviction", False),
    ("get", "configmaps", "", False), ("patch", "events", "", False), ("delete", "events", "", False),
])
def test_the_agent_service_account_may_patch_nodes_read_pods_and_post_events_and_nothing_more(
        plane, agent_identity, verb, resource, subresource, allowed):
    review = client.AuthorizationV1Api(plane.api).create_subject_access_review({
        "apiVersion": "authorization.k8s.io/v1", "kind": "SubjectAccessReview",
        "spec": {"user": "system:serviceaccount:kube-system:gpu-extender-agent",
                 "groups": ["system:serviceaccounts", "system:serviceaccounts:kube-system", "system:authenticated"],
                 "resourceAttributes": {"verb": verb, "resource": resource, "subresource": subresource,
                                        "namespace": "" if resource == "nodes" else "default"}}})
    assert review.status.allowed is allowed
