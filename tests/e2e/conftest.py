"""A real etcd and kube-apiserver on loopback (built by scripts/build-control-plane), and the
extender serving them live. No kubelets: pods are API objects, and a bound pod is what we test."""

from __future__ import annotations

import copy
import socket
import subprocess
import sys
import time
from datetime import datetime, timezone
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client, config

ROOT = Path(__file__).resolve().parents[2]
TOKEN = "e2e-admin-token"


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


def wait_for(check, what: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what} did not start:\n{log.read_text()[-4000:]}")
        time.sleep(0.2)


class ControlPlane:
    def __init__(self, work: Path):
        built = subprocess.run([str(ROOT / "scripts" / "build-control-plane")], capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        bin_dir = Path(built.stdout.strip().splitlines()[-1])
        self.work = work
        subprocess.run(["openssl", "genrsa", "-out", "sa.key", "2048"], cwd=work, check=True, capture_output=True)
        subprocess.run(["openssl", "rsa", "-in", "sa.key", "-pubout", "-out", "sa.pub"], cwd=work, check=True,
                       capture_output=True)
        (work / "tokens.csv").write_text(f"{TOKEN},admin,admin,system:masters\n")
        etcd_port, peer_port, api_port = free_port(), free_port(), free_port()
        self.procs: list[subprocess.Popen] = []
        etcd_log = work / "etcd.log"
        etcd = self._start([str(bin_dir / "etcd"), "--data-dir", str(work / "etcd"),
                            "--listen-client-urls", f"http://127.0.0.1:{etcd_port}",
                            "--advertise-client-urls", f"http://127.0.0.1:{etcd_port}",
                            "--listen-peer-urls", f"http://127.0.0.1:{peer_port}",
                            "--initial-advertise-peer-urls", f"http://127.0.0.1:{peer_port}",
                            "--initial-cluster", f"default=http://127.0.0.1:{peer_port}"], etcd_log)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{etcd_port}/health").status_code == 200, "etcd", etcd, etcd_log)
        self._api_log = work / "kube-apiserver.log"
        self._api_cmd = [str(bin_dir / "kube-apiserver"), "--bind-address=127.0.0.1",
                         "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                         f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                         "--service-account-issuer=https://kubernetes.default.svc",
                         "--service-account-key-file=sa.pub", "--service-account-signing-key-file=sa.key",
                         "--authorization-mode=RBAC", "--token-auth-file=tokens.csv",
                         f"--cert-dir={work / 'certs'}", "--service-cluster-ip-range=10.96.0.0/16",
                         "--etcd-compaction-interval=2s"]  # little history: old watches meet 410 Gone
        self.url = f"https://127.0.0.1:{api_port}"
        self._api = self._start_apiserver()
        self.kubeconfig = work / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url, "insecure-skip-tls-verify": True}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        }))
        api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(api)
        for name, value in (("gpu-latency-critical", 1_000_000), ("gpu-batch", 1_000)):
            client.SchedulingV1Api(api).create_priority_class(
                {"apiVersion": "scheduling.k8s.io/v1", "kind": "PriorityClass", "metadata": {"name": name},
                 "value": value})

    def _start_apiserver(self) -> subprocess.Popen:
        api = self._start(self._api_cmd, self._api_log)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: httpx.get(f"{self.url}/readyz", headers=headers, verify=False).status_code == 200,
                 "kube-apiserver", api, self._api_log)
        return api

    def restart_apiserver(self) -> None:
        """Kill kube-apiserver and start it again on the same etcd: its watch cache starts over."""
        self._api.kill()
        self._api.wait(timeout=30)
        self.procs.remove(self._api)
        self._api = self._start_apiserver()

    def _start(self, cmd: list[str], log: Path) -> subprocess.Popen:
        proc = subprocess.Popen(cmd, cwd=self.work, stdout=log.open("a"), stderr=subprocess.STDOUT)
        self.procs.append(proc)
        return proc

    def stop(self) -> None:
        """Stop in reverse order (kube-apiserver needs etcd while it shuts down)."""
        for proc in reversed(self.procs):
            proc.terminate()
            try:
                proc.wait(timeout=30)
            except subprocess.TimeoutExpired:
                proc.kill()
                proc.wait(timeout=10)

    # --- objects ---------------------------------------------------------------------------

    def namespace(self, name: str) -> None:
        for create in (lambda: self.core.create_namespace({"metadata": {"name": name}}),
                       lambda: self.core.create_namespaced_service_account(name, {"metadata": {"name": "default"}})):
            try:
                create()
            except client.exceptions.ApiException as exc:
                if exc.status != 409:
                    raise

    def node(self, obj: dict) -> None:
        """Create a node from a snapshot item, agent heartbeat made current; status via its subresource."""
        meta = {k: v for k, v in obj["metadata"].items() if k in ("name", "labels", "annotations")}
        meta = copy.deepcopy(meta)
        if "gpu-extender.io/heartbeat" in meta.get("annotations", {}):
            meta["annotations"]["gpu-extender.io/heartbeat"] = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": meta})
        status = obj["status"]
        self.core.patch_node_status(meta["name"], {"status": {"capacity": status["capacity"],
                                                              "allocatable": status["allocatable"]}})

    def pod(self, obj: dict) -> client.V1Pod:
        body = copy.deepcopy({k: v for k, v in obj.items() if k != "status"})
        body["metadata"] = {k: v for k, v in obj["metadata"].items() if k in ("name", "namespace", "labels", "annotations")}
        body["spec"].pop("priority", None)  # the admission controller sets it from priorityClassName
        for container in body["spec"]["containers"]:
            resources = container.get("resources") or {}
            for kind in ("limits", "requests"):
                if kind in resources:
                    resources[kind] = {k: str(v) for k, v in resources[kind].items()}
        self.namespace(body["metadata"]["namespace"])
        return self.core.create_namespaced_pod(body["metadata"]["namespace"], body)


class Extender:
    def __init__(self, plane: ControlPlane, log: Path):
        self.port = free_port()
        self.plane, self.log = plane, log
        self.start()

    def start(self) -> None:
        exe = Path(sys.executable).with_name("gpu-extender")
        self.proc = subprocess.Popen([str(exe), "serve", "--kubeconfig", str(self.plane.kubeconfig),
                                      "--port", str(self.port)], stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        wait_for(lambda: self.http.get("/readyz").status_code == 200, "gpu-extender", self.proc, self.log)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.http.close()


@pytest.fixture(scope="session")
def plane(tmp_path_factory) -> ControlPlane:
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    yield plane
    plane.stop()


EXAMPLE = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())["items"]
