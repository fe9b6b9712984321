"""A real kubelet (built by scripts/build-control-plane from the pinned k8s.io/kubernetes) on a
fake CRI runtime (tests/e2e/cmd/fake-cri) that records what each container was created with.

    node = KubeletNode(plane, "gpu-node-1", tmp_path / "gpu-node-1", labels={"pool": "a"})
    # a device plugin outside puts its socket into node.device_plugin_dir and registers with
    # node.device_plugin_dir / "kubelet.sock"; then:
    node.wait_allocatable("nvidia.com/gpu", 8)
    ...create a pod with spec.nodeName (or let kube-scheduler bind it); wait_running(...)
    node.containers_of(pod.metadata.uid)  # -> [{"container": ..., "envs": [...], "devices": [...]}]
    node.stop()

What runs, per node (all under `work`; logs kubelet.log and fake-cri.log, which the e2e conftest
attaches to a failed test):
- fake-cri on `work/cri.sock`: k8s.io/cri-client's fake runtime, network and runtime Ready, so
  the node gets Ready without CNI; appends one JSON line per CreateContainer to
  `work/containers.jsonl` (`recorded()`): time, container_id, pod_sandbox_id, pod_name,
  pod_namespace, pod_uid, container, attempt, image, envs [{key, value}], devices
  [{container_path, host_path, permissions}], mounts [{container_path, host_path, readonly}],
  cdi_devices [names], annotations.
- the kubelet, as cluster admin (the plane's kubeconfig), --root-dir `work/root`, registering
  Node `name` (labels `labels`), in a private mount namespace of its own (`unshare --mount
  --propagation private`) where:
  * `work/device-plugins` (`device_plugin_dir`) is bind-mounted on /var/lib/kubelet/device-plugins,
    the device-plugin directory every kubelet uses whatever its root dir: each node has its own,
    two nodes run side by side, and a device plugin running outside (in the test's mount
    namespace) serves its socket in `device_plugin_dir` and dials `device_plugin_dir/kubelet.sock`.
    The mount point /var/lib/kubelet/device-plugins is created on the host if missing (an empty
    directory, left there: another node, maybe of another test session, may be mounted on it).
    The kubelet removes every socket in that directory when it starts: a plugin must notice that
    kubelet.sock was created anew and register again.
  * a tmpfs is on /var/log (the kubelet makes /var/log/containers there; pod logs go to
    `work/pod-logs`), and files of `work/sysctl` are on the six /proc/sys files the kubelet wants
    set (vm.overcommit_memory, kernel.panic, ...), holding the values it wants, so it changes no
    host sysctl (protectKernelDefaults is on: were they not mounted, it would stop, not write).
  * the mounts it makes under its root dir (tmpfs of secret and projected volumes) live and die
    with that namespace: none are left on the host when it exits, even when killed.
- cgroup v1 here: failCgroupV1 false, cgroupDriver cgroupfs, cgroupsPerQOS false and no node
  allocatable enforcement: the kubelet makes no kubepods cgroups (stop() checks, and removes any).
- the kubelet's own HTTPS API (nothing here calls it): anonymous and webhook authentication off,
  authorization AlwaysAllow; it and healthz on free ports of 127.0.0.1; read-only port off; no
  static pods, swap allowed, image GC off, eviction thresholds at 0 (this disk is busy; nothing
  is evicted), node status every second.
- PodResources API v1 on `pod_resources_socket` (`work/root/pod-resources/kubelet.sock`).

Once Ready, the not-ready taint that the API server put on the new Node is removed (there is no
node lifecycle controller to do it), so kube-scheduler can place pods there.

Caveats of the fake runtime and of this cluster:
- Nothing runs. A container is Running from its start until the pod is deleted; init containers
  therefore never finish and a pod with one never gets past Init. Probes mean nothing here.
- A pod admitted before a device plugin has registered its resource gets no Allocate: the kubelet
  ignores extended resources its Node does not have (as for resources an extender manages), so
  the pod runs, with no devices and nothing recorded from a plugin. `wait_allocatable(resource,
  count)` first.
- Pods mounting the service account token need the kube-root-ca.crt ConfigMap in their
  namespace, which only kube-controller-manager makes: `publish_root_ca(namespace)` (or set
  automountServiceAccountToken: false).
- Started processes get SIGKILL if the thread that started them exits (setpriv --pdeathsig), so
  nothing outlives a crashed test run: create KubeletNodes from the test's main thread.
"""

from __future__ import annotations

import contextlib
import json
import shlex
import subprocess
import time
from pathlib import Path

import httpx
import yaml
from kubernetes import client
from kubernetes.utils.quantity import parse_quantity

from tests.waiting import wait_for
from tests.webhook.conftest import free_port

DEVICE_PLUGIN_PATH = "/var/lib/kubelet/device-plugins"  # k8s.io/kubelet/pkg/apis/deviceplugin/v1beta1
# The values the kubelet sets (component-helpers/node/util/sysctl), so it finds them set.
KERNEL_TUNABLES = {"vm/overcommit_memory": 1, "vm/panic_on_oom": 0, "kernel/panic": 10,
                   "kernel/panic_on_oops": 1, "kernel/keys/root_maxkeys": 1000000,
                   "kernel/keys/root_maxbytes": 25000000}
CGROUP_ROOT = Path("/sys/fs/cgroup")


class KubeletNode:
    """A Node served by a real kubelet on the recording fake runtime (see the module docstring).

    `plane`: the e2e ControlPlane; `name`: the Node's name; `work`: a directory of its own (made
    if missing); `labels`: more Node labels (--node-labels); `ready_seconds`: how long start-up
    may take. Started and Ready when the constructor returns; `stop()` when done."""

    def __init__(self, plane, name: str, work: Path, labels: dict[str, str] | None = None,
                 ready_seconds: float = 120):
        self.plane, self.name = plane, name
        self.work = work = Path(work).resolve()
        self.root_dir = work / "root"
        self.device_plugin_dir = work / "device-plugins"
        self.pod_resources_socket = self.root_dir / "pod-resources" / "kubelet.sock"
        self.record_file = work / "containers.jsonl"
        self.cri_socket = work / "cri.sock"
        self.kubelet_log, self.cri_log = work / "kubelet.log", work / "fake-cri.log"
        self.labels = dict(labels or {})
        self.ready_seconds = ready_seconds
        self.kubelet: subprocess.Popen | None = None
        self.fake_cri: subprocess.Popen | None = None
        for exe in ("kubelet", "fake-cri"):
            assert (plane.bin_dir / exe).is_file(), \
                f"{plane.bin_dir / exe} is missing: scripts/build-control-plane builds it (see its output)"
        for sock in (self.cri_socket, self.pod_resources_socket, self.device_plugin_dir / "kubelet.sock"):
            assert len(str(sock)) < 100, f"{sock}: too long for a unix socket path; use a shorter work dir"
        for d in (self.root_dir, self.device_plugin_dir, work / "pod-logs", work / "volume-plugins",
                  work / "sysctl", work / "cwd"):
            d.mkdir(parents=True, exist_ok=True)
        self.record_file.touch()
        self._cgroups_before = _kubepods_cgroups()
        try:
            self._start_fake_cri()
            self._write_config()
            self.start_kubelet()
        except BaseException:
            with contextlib.suppress(Exception):  # the start-up error is the one to see
                self.stop()
            raise

    # --- processes ----------------------------------------------------------------------------

    def _popen(self, cmd: list[str], log: Path) -> subprocess.Popen:
        # setpriv: SIGKILL when the starting thread (the test run) dies, so nothing is left behind.
        with log.open("a") as out:
            # An empty working directory: what the kubelet removes by relative paths stays there.
            return subprocess.Popen(["setpriv", "--pdeathsig", "KILL", "--", *cmd], cwd=self.work / "cwd",
                                    stdout=out, stderr=subprocess.STDOUT)

    def _start_fake_cri(self) -> None:
        self.fake_cri = self._popen([str(self.plane.bin_dir / "fake-cri"), f"-endpoint=unix://{self.cri_socket}",
                                     f"-record={self.record_file}", f"-fs-dir={self.work}"], self.cri_log)
        wait_for(self.cri_socket.exists, "fake-cri did not start", self.fake_cri, self.cri_log, 30)

    def _write_config(self) -> None:
        self.port, self.healthz_port = free_port(), free_port()
        endpoint = f"unix://{self.cri_socket}"
        config = {
            "apiVersion": "kubelet.config.k8s.io/v1beta1", "kind": "KubeletConfiguration",
            # cgroup v1 on this machine; the fake runtime makes no cgroups, and neither should we.
            "failCgroupV1": False, "cgroupDriver": "cgroupfs", "cgroupsPerQOS": False,
            "enforceNodeAllocatable": [],
            "containerRuntimeEndpoint": endpoint, "imageServiceEndpoint": endpoint,
            "address": "127.0.0.1", "port": self.port, "readOnlyPort": 0,
            "healthzBindAddress": "127.0.0.1", "healthzPort": self.healthz_port,
            "authentication": {"anonymous": {"enabled": False}, "webhook": {"enabled": False}},
            "authorization": {"mode": "AlwaysAllow"},
            "failSwapOn": False, "protectKernelDefaults": True,
            "imageGCHighThresholdPercent": 100, "imageGCLowThresholdPercent": 99,
            "evictionHard": {"memory.available": "0%", "nodefs.available": "0%", "nodefs.inodesFree": "0%",
                             "imagefs.available": "0%", "imagefs.inodesFree": "0%"},
            "nodeStatusUpdateFrequency": "1s", "nodeStatusReportFrequency": "10s", "syncFrequency": "10s",
            "podLogsDir": str(self.work / "pod-logs"), "volumePluginDir": str(self.work / "volume-plugins"),
            "serializeImagePulls": False,
        }
        self.config_file = self.work / "kubelet-config.yaml"
        self.config_file.write_text(yaml.safe_dump(config))
        for key, value in KERNEL_TUNABLES.items():
            (self.work / "sysctl" / key.replace("/", ".")).write_text(f"{value}\n")

    def start_kubelet(self) -> None:
        """Start the kubelet (in its own mount namespace) and wait until its Node is Ready."""
        Path(DEVICE_PLUGIN_PATH).mkdir(parents=True, exist_ok=True)  # the mount point, on the host
        mounts = [f"mount --bind {shlex.quote(str(self.device_plugin_dir))} {DEVICE_PLUGIN_PATH}",
                  "mount -t tmpfs -o mode=0755 tmpfs /var/log"]
        mounts += [f"mount --bind {shlex.quote(str(self.work / 'sysctl' / key.replace('/', '.')))} /proc/sys/{key}"
                   for key in KERNEL_TUNABLES]
        kubelet = [str(self.plane.bin_dir / "kubelet"), f"--config={self.config_file}",
                   f"--kubeconfig={self.plane.kubeconfig}", f"--root-dir={self.root_dir}",
                   f"--cert-dir={self.root_dir / 'pki'}", f"--hostname-override={self.name}", "--v=2"]
        if self.labels:
            kubelet.append("--node-labels=" + ",".join(f"{k}={v}" for k, v in sorted(self.labels.items())))
        script = " && ".join([*mounts, "exec " + shlex.join(kubelet)])
        self.started = time.monotonic()
        # unshare execs sh, which execs the kubelet: self.kubelet.pid is the kubelet's.
        self.kubelet = self._popen(["unshare", "--mount", "--propagation", "private", "sh", "-ec", script],
                                   self.kubelet_log)
        wait_for(lambda: httpx.get(f"http://127.0.0.1:{self.healthz_port}/healthz").text == "ok",
                 "kubelet did not start (healthz)", self.kubelet, self.kubelet_log, self.ready_seconds)
        wait_for(self._ready, f"kubelet did not get Node {self.name} Ready", self.kubelet, self.kubelet_log,
                 self.ready_seconds)
        self.ready_after = time.monotonic() - self.started
        # The API server tainted the new Node not-ready; no node lifecycle controller lifts it here.
        taints = [t for t in (self.node().spec.taints or [])
                  if t.key not in ("node.kubernetes.io/not-ready", "node.kubernetes.io/unreachable")]
        self.plane.core.patch_node(self.name, {"spec": {"taints": taints or None}})

    def _ready(self) -> bool:
        try:
            node = self.node()
        except client.exceptions.ApiException as exc:
            if exc.status == 404:
                return False
            raise
        return any(c.type == "Ready" and c.status == "True" for c in node.status.conditions or [])

    def restart_kubelet(self) -> None:
        """Stop the kubelet and start it again (same root dir, same fake runtime and its containers);
        device plugins must register again."""
        self._stop_kubelet()
        self.start_kubelet()

    def _stop_kubelet(self) -> None:
        _terminate(self.kubelet, 30)

    def stop(self, delete_node: bool = True) -> None:
        """Stop the kubelet, then fake-cri; check that no mount under `work` and no kubepods cgroup
        is left (removing any: `leftovers` says what was found). The Node object is deleted unless
        `delete_node` is false: with no node lifecycle controller it would stay Ready for good.
        Pods bound to it stay as they are."""
        self._stop_kubelet()
        _terminate(self.fake_cri, 10)
        self.leftovers = self._clean_up()
        if delete_node:
            try:
                self.plane.core.delete_node(self.name)
            except client.exceptions.ApiException as exc:
                if exc.status != 404:
                    raise

    def _clean_up(self) -> list[str]:
        """What the kubelet left behind and what was done about it (empty when nothing)."""
        left = []
        for mount in reversed(_mounts_under(self.work)):  # none expected: they were in its namespace
            subprocess.run(["umount", "-l", mount], check=False)
            left.append(f"unmounted {mount}")
        for cgroup in sorted(_kubepods_cgroups() - self._cgroups_before, key=lambda p: -len(p.parts)):
            try:
                cgroup.rmdir()
                left.append(f"removed cgroup {cgroup}")
            except OSError as exc:
                left.append(f"cannot remove cgroup {cgroup}: {exc}")
        return left

    # --- what tests read ----------------------------------------------------------------------

    def node(self) -> client.V1Node:
        return self.plane.core.read_node(self.name)

    def wait_allocatable(self, resource: str, count: int, seconds: float = 60) -> client.V1Node:
        """Wait until the Node's allocatable has exactly `count` of `resource` (absent counts as 0),
        e.g. until a device plugin's nvidia.com/gpu has registered and reported its healthy devices
        (then pods asking for it get Allocate); the Node."""
        deadline = time.monotonic() + seconds
        while True:
            node = self.node()
            have = int(parse_quantity((node.status.allocatable or {}).get(resource, "0")))  # 7000 reads "7k"
            if have == count:
                return node
            assert self.kubelet and self.kubelet.poll() is None, f"kubelet exited:\n{_tail(self.kubelet_log)}"
            assert time.monotonic() < deadline, \
                f"{self.name}: allocatable {resource} is {have}, not {count}, after {seconds}s"
            time.sleep(0.2)

    def recorded(self) -> list[dict]:
        """Every CreateContainer the fake runtime got, in order (see the module docstring)."""
        text = self.record_file.read_text()
        lines = text.splitlines() if text.endswith("\n") else text.splitlines()[:-1]  # a line being written
        return [json.loads(line) for line in lines if line]

    def containers_of(self, pod_uid: str) -> list[dict]:
        """The recorded CreateContainer requests of one pod (by metadata.uid)."""
        return [r for r in self.recorded() if r["pod_uid"] == pod_uid]

    def publish_root_ca(self, namespace: str) -> None:
        """The kube-root-ca.crt ConfigMap (the API server's CA) in `namespace` (made, with its default
        ServiceAccount, if missing), as kube-controller-manager would publish it: pods mounting a
        service account token need it."""
        self.plane.namespace(namespace)
        body = {"metadata": {"name": "kube-root-ca.crt"}, "data": {"ca.crt": Path(self.plane.ca).read_text()}}
        try:
            self.plane.core.create_namespaced_config_map(namespace, body)
        except client.exceptions.ApiException as exc:
            if exc.status != 409:
                raise


def wait_running(core: client.CoreV1Api, name: str, namespace: str, seconds: float = 60) -> client.V1Pod:
    """Wait until the pod is Running (its status as the kubelet reports it); the pod."""
    deadline = time.monotonic() + seconds
    while True:
        pod = core.read_namespaced_pod(name, namespace)
        if pod.status.phase == "Running":
            return pod
        assert pod.status.phase not in ("Failed", "Succeeded") and time.monotonic() < deadline, \
            f"{namespace}/{name} is {pod.status.phase}, not Running: {pod.status}"
        time.sleep(0.2)


def _terminate(proc: subprocess.Popen | None, seconds: float) -> None:
    """SIGTERM, and SIGKILL after `seconds`, unless it has exited already."""
    if proc is None or proc.poll() is not None:
        return
    proc.terminate()
    try:
        proc.wait(timeout=seconds)
    except subprocess.TimeoutExpired:
        proc.kill()
        proc.wait(timeout=10)


def _mounts_under(path: Path) -> list[str]:
    """Mount points at or under `path` in this (the test's) mount namespace, in mount order."""
    found = []
    for line in Path("/proc/self/mountinfo").read_text().splitlines():
        point = line.split()[4].replace("\\040", " ")
        if point == str(path) or point.startswith(f"{path}/"):
            found.append(point)
    return found


def _kubepods_cgroups() -> set[Path]:
    """kubepods* cgroup directories (and below) of every cgroup v1 hierarchy."""
    found = set()
    for hierarchy in CGROUP_ROOT.iterdir() if CGROUP_ROOT.is_dir() else ():
        for top in hierarchy.glob("kubepods*"):
            if top.is_dir():
                found.add(top)
                found.update(p for p in top.rglob("*") if p.is_dir())
    return found


def _tail(log: Path, chars: int = 4000) -> str:
    return log.read_text(errors="replace")[-chars:]
