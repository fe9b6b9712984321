"""A real etcd, kube-apiserver and kube-scheduler on loopback (built by scripts/build-control-plane),
the Helm chart installed with its default values (helm built by scripts/build-helm), and the
extender serving live under its own service account, with the arguments and the scheduler
configuration of the chart as installed.
No kubelets: pods are API objects, and a bound pod is what we test. When a test fails, the tail of
every component's log is attached to its report."""

from __future__ import annotations

import copy
import json
import os
import subprocess
import sys
import threading
import time
from collections.abc import Callable
from typing import TypeVar
from datetime import datetime, timezone
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import httpx
import pytest
import yaml
from kubernetes import client, config, dynamic

from tests.test_chart import CHART, helm
from tests.test_chart import NAMESPACE as CHART_NAMESPACE
from tests.test_chart import RELEASE as RELEASE_NAME
from tests.waiting import wait_for
from tests.webhook.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
MANIFESTS = ROOT / "manifests"
RECORDED = ROOT / "tests" / "webhook" / "recorded"
T = TypeVar("T")
DCGM_OPTIONS = ("--dcgm-", "--prometheus-url", "--metrics")
TOKEN = "e2e-admin-token"


def wait_until(check: Callable[[], T | None], what: str, seconds: float = 30) -> T:
    """Poll `check` until it returns something truthy, and return that."""
    deadline = time.monotonic() + seconds
    while not (value := check()):
        assert time.monotonic() < deadline, f"timed out waiting for {what}"
        time.sleep(0.2)
    return value



KUBERNETES = os.environ.get("GPU_EXTENDER_KUBERNETES", "")  # a release to test on (v1.35.4); default: go.mod's
RELEASE = KUBERNETES or next(line.split()[1] for line in (ROOT / "tests" / "e2e" / "go.mod").read_text().splitlines()
                             if line.split()[:1] == ["k8s.io/kubernetes"])


class ControlPlane:
    def __init__(self, work: Path, api_args: tuple[str, ...] = ()):
        version = [KUBERNETES] if KUBERNETES else []
        built = subprocess.run([str(ROOT / "scripts" / "build-control-plane"), *version], capture_output=True, text=True)
        assert built.returncode == 0, built.stderr
        self.bin_dir = bin_dir = Path(built.stdout.strip().splitlines()[-1])
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
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{etcd_port}/health").status_code == 200, "etcd did not start", etcd, etcd_log)
        self._api_log = work / "kube-apiserver.log"
        self._api_cmd = [str(bin_dir / "kube-apiserver"), "--bind-address=127.0.0.1",
                         "--advertise-address=127.0.0.1", f"--secure-port={api_port}",
                         f"--etcd-servers=http://127.0.0.1:{etcd_port}",
                         "--service-account-issuer=https://kubernetes.default.svc",
                         "--service-account-key-file=sa.pub", "--service-account-signing-key-file=sa.key",
                         "--authorization-mode=RBAC", "--token-auth-file=tokens.csv",
                         f"--cert-dir={work / 'certs'}", "--service-cluster-ip-range=10.96.0.0/16",
                         "--etcd-compaction-interval=2s",  # little history: old watches meet 410 Gone
                         # no kubernetes Service endpoints: 1.37 refuses a loopback address for them
                         "--endpoint-reconciler-type=none",
                         *api_args]
        self.url = f"https://127.0.0.1:{api_port}"
        self._api = self._start_apiserver()
        self.ca = work / "certs" / "apiserver.crt"  # self-signed: the serving certificate and its CA
        self.kubeconfig = work / "kubeconfig"
        self.kubeconfig.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url, "certificate-authority": str(self.ca)}}],
            "users": [{"name": "admin", "user": {"token": TOKEN}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": "admin"}}],
        }))
        self.api = config.new_client_from_config(config_file=str(self.kubeconfig))
        self.core = client.CoreV1Api(self.api)
        self.version = client.VersionApi(self.api).get_code().git_version
        assert not KUBERNETES or self.version == KUBERNETES, f"asked for Kubernetes {KUBERNETES}, got {self.version}"
        self.helm_env = {**os.environ, "KUBECONFIG": str(self.kubeconfig),
                         **{f"HELM_{kind}_HOME": str(work / "helm" / kind.lower()) for kind in ("CACHE", "CONFIG", "DATA")}}
        installed = subprocess.run([helm(), "install", RELEASE_NAME, str(CHART), "--namespace", CHART_NAMESPACE],
                                   env=self.helm_env, capture_output=True, text=True, timeout=180)
        assert installed.returncode == 0, installed.stdout + installed.stderr

    def installed_extender_args(self) -> list[str]:
        """The gpu-extender container's `serve` arguments in the installed Deployment, but its port."""
        deployment = client.AppsV1Api(self.api).read_namespaced_deployment("gpu-scheduler", CHART_NAMESPACE)
        container = next(c for c in deployment.spec.template.spec.containers if c.name == "gpu-extender")
        assert container.args[0] == "serve", container.args
        return [a for a in container.args[1:] if not a.startswith(("--port", "--host"))]

    def installed_scheduler_config(self) -> str:
        return self.core.read_namespaced_config_map("gpu-scheduler-config", CHART_NAMESPACE).data["config.yaml"]

    def apply(self, path: Path, dry_run: bool = False) -> list[dict]:
        """Server-side apply of every document in a manifest file; the objects as the server has them.
        Fields the installed chart (Helm) manages are taken over: the file's values win."""
        resources = dynamic.DynamicClient(self.api).resources
        applied = []
        for doc in yaml.safe_load_all(path.read_text()):
            resource = resources.get(api_version=doc["apiVersion"], kind=doc["kind"])
            namespace = doc["metadata"].get("namespace")
            applied.append(resource.server_side_apply(
                body=doc, name=doc["metadata"]["name"], namespace=namespace, field_manager="e2e", force_conflicts=True,
                dry_run="All" if dry_run else None).to_dict())
        return applied

    def kubeconfig_for(self, service_account: str, namespace: str = "kube-system") -> Path:
        """A kubeconfig holding a fresh token of the service account (TokenRequest)."""
        token = self.core.create_namespaced_service_account_token(
            service_account, namespace, {"spec": {"expirationSeconds": 7200}}).status.token
        path = self.work / f"kubeconfig.{service_account}"
        path.write_text(yaml.safe_dump({
            "apiVersion": "v1", "kind": "Config", "current-context": "e2e",
            "clusters": [{"name": "e2e", "cluster": {"server": self.url, "certificate-authority": str(self.ca)}}],
            "users": [{"name": service_account, "user": {"token": token}}],
            "contexts": [{"name": "e2e", "context": {"cluster": "e2e", "user": service_account}}],
        }))
        return path

    def _start_apiserver(self) -> subprocess.Popen:
        api = self._start(self._api_cmd, self._api_log)
        headers = {"Authorization": f"Bearer {TOKEN}"}
        wait_for(lambda: httpx.get(f"{self.url}/readyz", headers=headers, verify=False).status_code == 200,
                 "kube-apiserver did not start", api, self._api_log)
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
        """Create a node from a snapshot item, agent heartbeat made current, Ready as a kubelet
        would report it (the API server's TaintNodesByCondition admission taints new nodes
        not-ready until then); status via its subresource."""
        meta = {k: v for k, v in obj["metadata"].items() if k in ("name", "labels", "annotations")}
        meta = copy.deepcopy(meta)
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        if "gpu-extender.io/heartbeat" in meta.get("annotations", {}):
            meta["annotations"]["gpu-extender.io/heartbeat"] = now
        self.core.create_node({"apiVersion": "v1", "kind": "Node", "metadata": meta})
        status = obj["status"]
        ready = {"type": "Ready", "status": "True", "reason": "KubeletReady", "lastHeartbeatTime": now,
                 "lastTransitionTime": now}
        self.core.patch_node_status(meta["name"], {"status": {"capacity": status["capacity"],
                                                              "allocatable": status["allocatable"],
                                                              "conditions": [ready]}})
        self.core.patch_node(meta["name"], {"spec": {"taints": None}})

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
    """`gpu-extender serve` in live mode, as the gpu-extender service account the chart installed,
    with the installed Deployment's arguments; `args`: more `serve` options (a DCGM source among
    them replaces the installed one)."""

    def __init__(self, plane: ControlPlane, log: Path, args: tuple[str, ...] = ()):
        self.port = free_port()
        installed = plane.installed_extender_args()
        if any(a.startswith(DCGM_OPTIONS) for a in args):
            installed = [a for a in installed if not a.startswith(DCGM_OPTIONS)]
        self.plane, self.log, self.args = plane, log, (*installed, *args)
        self.kubeconfig = plane.kubeconfig_for("gpu-extender")
        self.start()

    def start(self) -> None:
        exe = Path(sys.executable).with_name("gpu-extender")
        self.proc = subprocess.Popen([str(exe), "serve", "--kubeconfig", str(self.kubeconfig),
                                      "--port", str(self.port), *self.args],
                                     stdout=self.log.open("a"), stderr=subprocess.STDOUT)
        self.http = httpx.Client(base_url=f"http://127.0.0.1:{self.port}", timeout=30)
        wait_for(lambda: self.http.get("/readyz").status_code == 200, "gpu-extender did not start", self.proc, self.log)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)
        self.http.close()


class Scheduler:
    """kube-scheduler with the KubeSchedulerConfiguration the chart installed, only the extender's
    URL and the kubeconfig path changed; as the gpu-scheduler service account."""

    def __init__(self, plane: ControlPlane, extender_port: int, log: Path,
                 edit: Callable[[dict], None] | None = None):
        shipped = plane.installed_scheduler_config()
        kubeconfig = str(plane.kubeconfig_for("gpu-scheduler"))
        config_ = yaml.safe_load(shipped)
        config_["clientConnection"]["kubeconfig"] = kubeconfig
        config_["extenders"][0]["urlPrefix"] = f"http://127.0.0.1:{extender_port}"
        if edit:
            edit(config_)  # benchmarks: variations of the shipped configuration
        path = plane.work / f"{log.stem}-config.yaml"
        path.write_text(yaml.safe_dump(config_))
        self.port = free_port()
        self.proc = plane._start([str(plane.bin_dir / "kube-scheduler"), f"--config={path}",
                                  f"--secure-port={self.port}", "--bind-address=127.0.0.1", "--v=2"], log)
        self.log = log
        wait_for(lambda: httpx.get(f"https://127.0.0.1:{self.port}/healthz", verify=False).text == "ok",
                 "kube-scheduler did not start", self.proc, log)

    def kill(self) -> None:
        self.proc.kill()
        self.proc.wait(timeout=10)


class Recorder:
    """Sits between kube-scheduler and the extender, forwards every call and keeps the last body of
    each verb: the requests kube-scheduler really sends, for tests/webhook/recorded/."""

    def __init__(self, target: str):
        self.bodies: dict[str, bytes] = {}
        recorder = self

        class Handler(BaseHTTPRequestHandler):
            def do_POST(self):  # noqa: N802 (http.server's name)
                body = self.rfile.read(int(self.headers["Content-Length"]))
                recorder.bodies[self.path.strip("/")] = body
                answer = httpx.post(f"{target}{self.path}", content=body,
                                    headers={"Content-Type": "application/json"}, timeout=30)
                self.send_response(answer.status_code)
                self.send_header("Content-Type", "application/json")
                self.send_header("Content-Length", str(len(answer.content)))
                self.end_headers()
                self.wfile.write(answer.content)

            def log_message(self, *args):
                pass

        self.server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def check(self, verbs: list[str]) -> None:
        """These verbs were called, with bodies shaped like the committed fixtures (which
        RECORD_SCHEDULER_REQUESTS=1 rewrites from this run). Of a Pod, only the fields the
        extender reads count: each Kubernetes release defaults a few others of its own."""
        assert set(verbs) <= set(self.bodies)
        for verb in verbs:
            body = json.loads(self.bodies[verb])
            if os.environ.get("RECORD_SCHEDULER_REQUESTS"):
                save_recorded(f"{verb}-request.json", body)
            committed = json.loads((RECORDED / f"{verb}-request.json").read_text())
            assert _shape(body) == _shape(committed), verb


def save_recorded(name: str, data: object) -> None:
    RECORDED.mkdir(parents=True, exist_ok=True)
    (RECORDED / name).write_text(json.dumps(data, indent=2) + "\n")


POD_READ = {"metadata": {"name", "namespace", "uid"},
            "spec": {"containers", "nodeName", "priority", "priorityClassName", "nodeSelector", "affinity"},
            "status": {"phase"}}  # what extender/convert.py reads of the Pod that kube-scheduler sends


def _shape(value, depth: int = 0, key: str = ""):
    """Keys and value types down to three levels (values and list lengths left out)."""
    if key == "Pod" and isinstance(value, dict):
        return {part: {k: _shape(v, depth + 2) for k, v in (value.get(part) or {}).items() if k in kept}
                for part, kept in POD_READ.items()}
    if isinstance(value, dict) and depth < 3:
        return {k: _shape(v, depth + 1, k) for k, v in value.items() if k not in ("annotations", "labels")}
    if isinstance(value, list):
        return ["list"]
    return type(value).__name__


class Stack:
    """A control plane of its own with the extender (as gpu-extender) and kube-scheduler (shipped
    configuration); with `record`, kube-scheduler calls the extender through a Recorder;
    `extender_args`: more `serve` options for the extender."""

    def __init__(self, work: Path, record: bool = False, extender_args: tuple[str, ...] = (),
                 api_args: tuple[str, ...] = ()):
        self.plane = ControlPlane(work, api_args)
        try:
            self.extender = Extender(self.plane, work / "extender.log", extender_args)
            self.recorder = Recorder(f"http://127.0.0.1:{self.extender.port}") if record else None
            port = self.recorder.port if self.recorder else self.extender.port
            self.scheduler = Scheduler(self.plane, port, work / "kube-scheduler.log")
        except BaseException:
            self.plane.stop()
            raise

    def stop(self) -> None:
        self.scheduler.kill()
        self.extender.kill()
        if self.recorder:
            self.recorder.server.shutdown()
        self.plane.stop()


class Kubelet:
    """What a kubelet does that the tests need: finish graceful deletions (preemption victims)."""

    def __init__(self, core: client.CoreV1Api):
        self.core, self.stop = core, threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.wait(0.2):
            for pod in self.core.list_pod_for_all_namespaces().items:
                if pod.metadata.deletion_timestamp:
                    try:
                        self.core.delete_namespaced_pod(pod.metadata.name, pod.metadata.namespace,
                                                        grace_period_seconds=0)
                    except client.exceptions.ApiException:
                        pass  # gone already


def wait_bound(core: client.CoreV1Api, name: str, namespace: str, seconds: float = 60) -> client.V1Pod:
    def bound() -> client.V1Pod | None:
        pod = core.read_namespaced_pod(name, namespace)
        return pod if pod.spec.node_name else None

    return wait_until(bound, f"{namespace}/{name} to be bound (kube-scheduler's log says why not)", seconds)


def planned_event(core: client.CoreV1Api, pod: client.V1Pod) -> client.CoreV1Event:
    """The extender's GPUPlanned Event on the pod (posted just after the Binding)."""
    return wait_until(lambda: next((
        e for e in core.list_namespaced_event(pod.metadata.namespace).items
        if e.involved_object.uid == pod.metadata.uid and e.reason == "GPUPlanned"), None),
        f"a GPUPlanned event on {pod.metadata.name}", 10)


@pytest.hookimpl(hookwrapper=True)
def pytest_runtest_makereport(item, call):
    """On a failed e2e test, attach the last lines of every component log under its temp dirs."""
    outcome = yield
    report = outcome.get_result()
    if report.failed and "tests/e2e" in str(item.fspath):
        base = item.config._tmp_path_factory.getbasetemp()
        for log in sorted(base.rglob("*.log")):
            lines = log.read_text(errors="replace").splitlines()[-40:]
            report.sections.append((f"log {log.relative_to(base)}", "\n".join(lines)))


@pytest.fixture(scope="session")
def plane(tmp_path_factory) -> ControlPlane:
    plane = ControlPlane(tmp_path_factory.mktemp("control-plane"))
    yield plane
    plane.stop()


EXAMPLE = yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())["items"]


def nvlink_node(name: str, pool: str) -> dict:
    """An 8-GPU NVLink node with the agent's topology (GPU indices in plans), in a pool."""
    item = copy.deepcopy(next(i for i in EXAMPLE if i["kind"] == "Node" and i["metadata"]["name"] == "h100-train-01"))
    item["metadata"]["name"] = name
    item["metadata"]["labels"] = {**item["metadata"]["labels"], "kubernetes.io/hostname": name, "pool": pool}
    topology = json.loads(item["metadata"]["annotations"]["gpu-extender.io/gpu-topology"])
    for gpu in topology["gpus"]:
        gpu["uuid"] = f"GPU-{name}-{gpu['index']}"
    item["metadata"]["annotations"]["gpu-extender.io/gpu-topology"] = json.dumps(topology)
    return item
