"""From Binding to container created, through a real kubelet, with our device plugin and with a
stand-in plugin, in one run.

    python benchmarks/kubelet_admission.py [--pods 100] [--rounds 2] [--milli 50]

One control plane with kube-scheduler and the extender (the e2e suite's `Stack`, shipped
configuration) and two real kubelets on the recording fake runtime (tests/e2e/kubelet.py), each
an 8x H100 on the fake NVML:

* `ours`: the agent with its device plugin (admission by plan, tests/node/fake_agent.py);
* `stand-in`: a plugin that knows no plan and serves the same share units, preferring the last
  ones free (tests/node/standin_plugin.py), with the agent reading back only.

Each round creates PODS share pods (`--milli` thousandths each) pinned to one node, all at once,
for each node in turn (the order alternates between rounds), and deletes them afterwards. A
pod's time is from the moment a watch in this process sees it bound to the moment the fake
runtime recorded its CreateContainer (both this machine's clock). Prints p50/p90/p99/max per
plugin, the time until the last container, and the ratio of p50s (ours / stand-in), and writes
them with the machine and date to benchmarks/results/kubelet_admission.json.
"""

from __future__ import annotations

import argparse
import json
import statistics
import sys
import tempfile
import threading
import time
from concurrent.futures import ThreadPoolExecutor
from datetime import datetime, timezone
from pathlib import Path

ROOT = Path(__file__).resolve().parent.parent
sys.path.insert(0, str(ROOT))
sys.path.insert(0, str(ROOT / "benchmarks"))
from kubernetes import watch  # noqa: E402

from extender import annotations as ann  # noqa: E402
from tests.agent import machines  # noqa: E402
from tests.e2e.conftest import MANIFESTS, Stack  # noqa: E402
from tests.e2e.kubelet import KubeletNode  # noqa: E402
from tests.node.fake_agent import AgentProcess  # noqa: E402
from tests.node.standin_plugin import StandIn  # noqa: E402
from machine import machine  # noqa: E402
from webhook_latency import percentile  # noqa: E402

RESULTS = ROOT / "benchmarks" / "results" / "kubelet_admission.json"
SHARE = "gpu-extender.io/gpu-milli"
NAMESPACE = "bench"
GFD = {"nvidia.com/gpu.present": "true", "nvidia.com/gpu.product": "NVIDIA-H100-80GB-HBM3",
       "nvidia.com/gpu.count": "8", "nvidia.com/mig.strategy": "none"}
UUIDS = [machines.uuid("h100", i) for i in range(8)]


class BindTimes:
    """When this process first saw each pod of the namespace bound (a watch)."""

    def __init__(self, stack: Stack):
        self.at: dict[str, float] = {}
        self.core = stack.plane.core
        self.stop = threading.Event()
        threading.Thread(target=self._run, daemon=True).start()

    def _run(self) -> None:
        while not self.stop.is_set():
            for event in watch.Watch().stream(self.core.list_namespaced_pod, NAMESPACE, timeout_seconds=30):
                pod = event["object"]
                if pod.spec.node_name and pod.metadata.uid not in self.at:
                    self.at[pod.metadata.uid] = time.time()


def created_at(record: dict) -> float:
    """The recorder's RFC 3339 time with nanoseconds, as seconds since the epoch."""
    stamp = record["time"].rstrip("Z")
    whole, _, fraction = stamp.partition(".")
    return datetime.fromisoformat(whole).replace(tzinfo=timezone.utc).timestamp() + float(f"0.{fraction or 0}")


def run_round(stack: Stack, node: KubeletNode, times: BindTimes, count: int, milli: int,
              tag: str) -> tuple[list[float], float]:
    """`count` share pods on `node`, all created at once: seconds from bound to container created,
    per pod, and from the first pod bound to the last container created."""
    def create(i: int):
        return stack.plane.core.create_namespaced_pod(NAMESPACE, {
            "metadata": {"name": f"{tag}-{i:03d}"},
            "spec": {"schedulerName": "gpu-scheduler", "priorityClassName": "gpu-batch",
                     "nodeSelector": {"kubernetes.io/hostname": node.name}, "terminationGracePeriodSeconds": 0,
                     "automountServiceAccountToken": False,
                     "containers": [{"name": "c", "image": "registry.example/app:1",
                                     "resources": {"limits": {SHARE: str(milli)}}}]}})

    with ThreadPoolExecutor(max_workers=16) as pool:
        pods = list(pool.map(create, range(count)))
    uids = {p.metadata.uid for p in pods}
    deadline = time.monotonic() + 300
    while True:
        records = {r["pod_uid"]: r for r in node.recorded() if r["pod_uid"] in uids}
        if len(records) == count and uids <= set(times.at):
            break
        if time.monotonic() > deadline:
            raise RuntimeError(f"{tag}: {len(records)} of {count} containers created after 300 s")
        time.sleep(0.2)
    for p in pods:
        stack.plane.core.delete_namespaced_pod(p.metadata.name, NAMESPACE, grace_period_seconds=0)
    while any(p.metadata.uid in uids for p in stack.plane.core.list_namespaced_pod(NAMESPACE).items):
        time.sleep(0.2)
    created = {u: created_at(records[u]) for u in uids}
    return [created[u] - times.at[u] for u in uids], max(created.values()) - min(times.at[u] for u in uids)


def summary(seconds: list[float], spans: list[float]) -> dict:
    ms = [s * 1000 for s in seconds]
    return {"pods": len(ms), "p50_ms": round(percentile(ms, 0.5), 1), "p90_ms": round(percentile(ms, 0.9), 1),
            "p99_ms": round(percentile(ms, 0.99), 1), "max_ms": round(max(ms), 1),
            "mean_ms": round(statistics.fmean(ms), 1),
            "first_bound_to_last_container_s": [round(s, 2) for s in spans]}


def main() -> None:
    parser = argparse.ArgumentParser(description=__doc__.split("\n")[0])
    parser.add_argument("--pods", type=int, default=100)
    parser.add_argument("--rounds", type=int, default=2)
    parser.add_argument("--milli", type=int, default=50, help="thousandths of a GPU per pod")
    args = parser.parse_args()
    assert args.pods * args.milli <= 8000, "the pods must fit the node's 8 GPUs"
    started = time.time()
    with tempfile.TemporaryDirectory(prefix="kubelet-bench-", dir="/tmp") as tmp:
        work = Path(tmp)
        (work / "stack").mkdir()
        stack = Stack(work / "stack")
        nodes: list[KubeletNode] = []
        helpers: list = []
        try:
            stack.plane.apply(MANIFESTS / "agent.yaml")
            stack.plane.namespace(NAMESPACE)
            kubeconfig = stack.plane.kubeconfig_for("gpu-extender-agent")
            ours = KubeletNode(stack.plane, "bench-ours", work / "ours", labels={**GFD, ann.DEVICE_PLUGIN_LABEL: "true"})
            nodes.append(ours)
            helpers.append(AgentProcess(ours, kubeconfig))
            standin = KubeletNode(stack.plane, "bench-standin", work / "standin", labels=GFD)
            nodes.append(standin)
            helpers.append(AgentProcess(standin, kubeconfig, "--device-plugin", "off"))
            units = [f"{u}::{k:03d}" for u in UUIDS for k in range(1000)]
            helpers.append(StandIn(standin.device_plugin_dir, SHARE, units))
            for node in nodes:
                node.wait_allocatable(SHARE, 8000)
            times = BindTimes(stack)
            results: dict[str, list[float]] = {"ours": [], "stand-in": []}
            spans: dict[str, list[float]] = {"ours": [], "stand-in": []}
            for round_ in range(args.rounds):
                order = [("ours", ours), ("stand-in", standin)]
                for name, node in order if round_ % 2 == 0 else reversed(order):
                    took, span = run_round(stack, node, times, args.pods, args.milli,
                                           f"{name.replace('-', '')}-{round_}")
                    results[name] += took
                    spans[name].append(span)
                    print(f"round {round_ + 1} {name}: p50 {percentile(took, 0.5) * 1000:.0f} ms, max "
                          f"{max(took) * 1000:.0f} ms, all {args.pods} in {span:.2f} s", flush=True)
            times.stop.set()
        finally:
            for helper in reversed(helpers):
                helper.stop()
            for node in nodes:
                node.stop()
            stack.stop()
    report = {
        "machine": machine(), "date": datetime.now(timezone.utc).isoformat(timespec="seconds"),
        "kubernetes": "v1.36.3", "pods_per_round": args.pods, "rounds": args.rounds, "milli": args.milli,
        "ours": summary(results["ours"], spans["ours"]), "stand-in": summary(results["stand-in"], spans["stand-in"]),
        "run_seconds": round(time.time() - started, 1),
    }
    report["p50_ratio_ours_to_standin"] = round(report["ours"]["p50_ms"] / report["stand-in"]["p50_ms"], 2)
    print(json.dumps(report, indent=2))
    RESULTS.write_text(json.dumps(report, indent=2) + "\n")


if __name__ == "__main__":
    main()
