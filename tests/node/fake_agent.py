"""`gpu-extender agent` on a reference machine's fake NVML, as a process of its own (the e2e tests
and the kubelet benchmark kill and restart it like a DaemonSet pod):

    python -m tests.node.fake_agent MACHINE [agent options...]

MACHINE is a function of tests/agent/machines.py, optionally with MIG instances:
`hgx_h100`, `hgx_h100:0=3g.40gb@0+3g.40gb@4` (GPU 0 in MIG mode with two 3g.40gb instances).
`AgentProcess` starts it for a KubeletNode (tests/e2e/kubelet.py)."""

from __future__ import annotations

import signal
import subprocess
import sys
from pathlib import Path

from tests.agent import machines

ROOT = Path(__file__).resolve().parents[2]


def machine(spec: str):
    name, _, mig_spec = spec.partition(":")
    mig: dict[int, list[tuple[str, int]]] = {}
    for gpu in filter(None, mig_spec.split(",")):
        index, _, instances = gpu.partition("=")
        mig[int(index)] = [(p, int(start)) for p, _, start in (i.partition("@") for i in instances.split("+"))]
    build = getattr(machines, name)
    return build(mig=mig) if mig else build()


class AgentProcess:
    """The agent for one KubeletNode (`node`), with `kubeconfig` (the agent's service account),
    scanning every 2 s and reading back every 0.5 s; `args`: more agent options. Log: agent.log
    in the node's work directory."""

    def __init__(self, node, kubeconfig: Path, *args: str, machine_spec: str = "hgx_h100"):
        self.node, self.kubeconfig, self.args, self.machine = node, kubeconfig, args, machine_spec
        self.log = node.work / "agent.log"
        self.start()

    def start(self) -> None:
        self.proc = subprocess.Popen(
            [sys.executable, "-m", "tests.node.fake_agent", self.machine, "--node-name", self.node.name,
             "--kubeconfig", str(self.kubeconfig), "--device-plugin-dir", str(self.node.device_plugin_dir),
             "--pod-resources-socket", str(self.node.pod_resources_socket), "--interval", "2",
             "--heartbeat-seconds", "10", "--read-back-interval", "0.5", "--health-interval", "1", *self.args],
            cwd=ROOT, stdout=self.log.open("a"), stderr=subprocess.STDOUT)

    def kill(self) -> None:
        self.proc.send_signal(signal.SIGKILL)
        self.proc.wait(timeout=10)

    def stop(self) -> None:
        if self.proc.poll() is None:
            self.proc.terminate()
            self.proc.wait(timeout=30)


def main() -> None:
    from extender.cli import app
    from extender.node import nvml

    nvml.pynvml = machine(sys.argv[1])
    app(["agent", *sys.argv[2:]], prog_name="gpu-extender")


if __name__ == "__main__":
    main()
