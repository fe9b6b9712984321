"""The Helm chart against the real API server: what `helm template` renders, with the default values
and with every optional part on, passes a server-side dry run; `helm install`, `helm upgrade` and
`helm uninstall` of a release (everything on) create, change and delete its objects. No kubelets:
the pods never run, the objects are what is tested."""

from __future__ import annotations

import os
import subprocess
from pathlib import Path

import pytest
import yaml
from kubernetes import client

from tests.e2e.conftest import ControlPlane
from tests.test_chart import ALL_ON, CHART, NAMESPACE, RELEASE, helm, render

ALL_ON_NAMESPACE = "gpu-extender-all-on"


def dry_run(plane: ControlPlane, text: str, path: Path) -> list[dict]:
    path.write_text(text)
    applied = plane.apply(path, dry_run=True)
    assert applied and all(obj["metadata"]["name"] for obj in applied)
    return applied


def test_the_default_rendering_passes_a_server_side_dry_run(plane, tmp_path):
    text = render()
    applied = dry_run(plane, text, tmp_path / "default.yaml")
    assert {(o["kind"], o["metadata"]["name"]) for o in applied} == {
        (d["kind"], d["metadata"]["name"]) for d in yaml.safe_load_all(text) if d}
    assert {o["kind"] for o in applied} >= {"PriorityClass", "ServiceAccount", "Secret", "ClusterRole",
                                             "ClusterRoleBinding", "Role", "RoleBinding", "ConfigMap",
                                             "Deployment", "DaemonSet"}


def test_the_all_on_rendering_passes_a_server_side_dry_run(plane, tmp_path):
    plane.namespace(ALL_ON_NAMESPACE)
    applied = dry_run(plane, render("-f", str(ALL_ON), namespace=ALL_ON_NAMESPACE), tmp_path / "all-on.yaml")
    names = {(o["kind"], o["metadata"]["name"]) for o in applied}
    assert {("ConfigMap", "gpu-extender-all-on-policy"), ("Deployment", "gpu-scheduler-all-on"),
            ("DaemonSet", "gpu-extender-all-on-agent")} <= names


@pytest.fixture
def helm_env(plane, tmp_path) -> dict[str, str]:
    """helm talking to the e2e API server as admin, its own cache and config in tmp_path."""
    return {**os.environ, "KUBECONFIG": str(plane.kubeconfig), "HELM_CACHE_HOME": str(tmp_path / "cache"),
            "HELM_CONFIG_HOME": str(tmp_path / "config"), "HELM_DATA_HOME": str(tmp_path / "data")}


def run_helm(env: dict[str, str], *args: str) -> str:
    result = subprocess.run([helm(), *args], capture_output=True, text=True, env=env, timeout=180)
    assert result.returncode == 0, result.stdout + result.stderr
    return result.stdout


def test_helm_installs_upgrades_and_uninstalls_a_release(plane, helm_env):
    """A second release beside the shipped manifests (applied by the control plane, without Helm's
    ownership): its own names from the all-on values, the PriorityClasses left to the first."""
    namespace, release = "gpu-extender-helm", "gx"
    plane.namespace(namespace)
    common = ("--namespace", namespace, "-f", str(ALL_ON), "--set", "priorityClasses.create=false")
    run_helm(helm_env, "install", release, str(CHART), *common)
    apps, core = client.AppsV1Api(plane.api), plane.core
    try:
        deployment = apps.read_namespaced_deployment("gpu-scheduler-all-on", namespace)
        assert [c.name for c in deployment.spec.template.spec.containers] == ["kube-scheduler", "gpu-extender"]
        assert apps.read_namespaced_daemon_set("gpu-extender-all-on-agent", namespace)
        config = yaml.safe_load(core.read_namespaced_config_map("gpu-scheduler-all-on-config", namespace)
                                .data["config.yaml"])
        assert config["extenders"][0]["weight"] == 150
        assert core.read_namespaced_secret("gpu-extender-all-on-token", namespace).type == \
            "kubernetes.io/service-account-token"
        checksum = deployment.spec.template.metadata.annotations["checksum/config"]

        run_helm(helm_env, "upgrade", release, str(CHART), *common, "--set", "scheduler.extenderWeight=120",
                 "--set-json", 'policy={"utilization": {"ttlSeconds": 90}}')
        config = yaml.safe_load(core.read_namespaced_config_map("gpu-scheduler-all-on-config", namespace)
                                .data["config.yaml"])
        assert config["extenders"][0]["weight"] == 120
        policy = core.read_namespaced_config_map("gpu-extender-all-on-policy", namespace).data["policy.yaml"]
        assert yaml.safe_load(policy) == {"utilization": {"ttlSeconds": 90}}
        upgraded = apps.read_namespaced_deployment("gpu-scheduler-all-on", namespace)
        assert upgraded.spec.template.metadata.annotations["checksum/config"] != checksum  # a new rollout
        assert "deployed" in run_helm(helm_env, "status", release, "--namespace", namespace)
    finally:
        run_helm(helm_env, "uninstall", release, "--namespace", namespace, "--wait")
    with pytest.raises(client.exceptions.ApiException) as gone:
        apps.read_namespaced_deployment("gpu-scheduler-all-on", namespace)
    assert gone.value.status == 404
    with pytest.raises(client.exceptions.ApiException) as gone:
        client.RbacAuthorizationV1Api(plane.api).read_cluster_role("gpu-extender-all-on")
    assert gone.value.status == 404
