"""manifests/agent.yaml holds together: the DaemonSet runs the command with flags it accepts, as the
service account whose role allows exactly what the agent does. (tests/e2e applies it to a real
API server.)"""

from __future__ import annotations

from pathlib import Path

import yaml
from typer.testing import CliRunner

from extender.cli import app
from scoring.config import PolicyConfig
from tests.agent import machines

DOCS = {doc["kind"]: doc for doc in yaml.safe_load_all(
    (Path(__file__).resolve().parents[2] / "manifests" / "agent.yaml").read_text())}
POD = DOCS["DaemonSet"]["spec"]["template"]["spec"]
(CONTAINER,) = POD["containers"]


def test_the_service_account_may_patch_nodes_read_pods_and_post_events_only():
    account = DOCS["ServiceAccount"]["metadata"]
    assert (account["name"], account["namespace"]) == ("gpu-extender-agent", "kube-system")
    assert DOCS["ClusterRole"]["rules"] == [{"apiGroups": [""], "resources": ["nodes"], "verbs": ["get", "patch"]},
                                            {"apiGroups": [""], "resources": ["pods"], "verbs": ["get", "list", "watch"]},
                                            {"apiGroups": [""], "resources": ["events"], "verbs": ["create"]}]
    binding = DOCS["ClusterRoleBinding"]
    assert binding["roleRef"]["name"] == DOCS["ClusterRole"]["metadata"]["name"]
    assert binding["subjects"] == [{"kind": "ServiceAccount", **account}]
    assert POD["serviceAccountName"] == account["name"]


def test_the_daemonset_runs_on_gpu_nodes_with_its_node_name_the_cache_and_the_kubelet_sockets():
    terms = POD["affinity"]["nodeAffinity"]["requiredDuringSchedulingIgnoredDuringExecution"]["nodeSelectorTerms"]
    assert terms == [{"matchExpressions": [{"key": "nvidia.com/gpu.present", "operator": "In", "values": ["true"]}]}]
    env = {e["name"]: e for e in CONTAINER["env"]}
    assert env["NODE_NAME"]["valueFrom"] == {"fieldRef": {"fieldPath": "spec.nodeName"}}
    mounts = {m["name"]: m for m in CONTAINER["volumeMounts"]}
    volumes = {v["name"]: v["hostPath"]["path"] for v in POD["volumes"]}
    assert mounts["model-cache"]["readOnly"] is True
    assert f"--model-cache-dir={mounts['model-cache']['mountPath']}" in CONTAINER["args"]
    for name, flag in (("device-plugins", "--device-plugin-dir"), ("pod-resources", "--pod-resources-socket")):
        assert volumes[name] == mounts[name]["mountPath"]  # the kubelet's own paths, unchanged inside
        assert any(a.startswith(f"{flag}={volumes[name]}") for a in CONTAINER["args"])
    assert CONTAINER["securityContext"]["readOnlyRootFilesystem"]
    assert CONTAINER["securityContext"]["capabilities"] == {"drop": ["ALL"], "add": ["SYS_ADMIN"]}
    assert "nvidia.com/gpu" not in CONTAINER["resources"].get("limits", {})  # takes no GPU from workloads


def test_the_daemonset_flags_are_accepted_and_keep_the_heartbeat_fresh(monkeypatch):
    args = CONTAINER["args"]
    flags = dict(arg.removeprefix("--").split("=", 1) for arg in args[1:])
    assert float(flags["heartbeat-seconds"]) + float(flags["interval"]) <= PolicyConfig().agent.max_age_seconds / 2
    monkeypatch.setattr("extender.node.nvml.pynvml", machines.pcie_only())
    result = CliRunner().invoke(app, [*args, "--print"])
    assert args[0] == "agent" and result.exit_code == 0, result.output
