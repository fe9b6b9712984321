"""A real `gpu-extender serve` process on loopback, for contract tests over real HTTP."""

from __future__ import annotations

import json
import socket
import ssl
import subprocess
import sys
from pathlib import Path

import httpx
import pytest
import yaml

from tests.waiting import wait_for

ROOT = Path(__file__).resolve().parents[2]
GOLDEN = ROOT.parent / "shared" / "reference" / "extender-api" / "golden"


def golden(name: str) -> dict:
    path = GOLDEN / name
    assert path.is_file(), f"missing reference payload {path} (the shared/ folder beside the clone)"
    return json.loads(path.read_text())


def free_port() -> int:
    with socket.socket() as s:
        s.bind(("127.0.0.1", 0))
        return s.getsockname()[1]


class Server:
    def __init__(self, cluster: Path, log: Path, *extra: str, tls: ssl.SSLContext | None = None):
        self.port = free_port()
        self.url = f"{'https' if tls else 'http'}://127.0.0.1:{self.port}"
        exe = Path(sys.executable).with_name("gpu-extender")
        self.log = log
        self.proc = subprocess.Popen(
            [str(exe), "serve", "--cluster", str(cluster), "--port", str(self.port), *extra],
            stdout=log.open("w"), stderr=subprocess.STDOUT,
        )
        self.client = httpx.Client(base_url=self.url, timeout=10, verify=tls or True)
        wait_for(lambda: self.client.get("/readyz").status_code == 200, "gpu-extender serve did not start",
                 self.proc, log, 60)

    def post(self, verb: str, body: bytes | dict | list) -> httpx.Response:
        content = body if isinstance(body, bytes) else json.dumps(body).encode()
        return self.client.post(f"/{verb}", content=content, headers={"Content-Type": "application/json"})

    def stop(self) -> None:
        self.client.close()
        self.proc.terminate()
        self.proc.wait(timeout=10)


@pytest.fixture(scope="session")
def golden_server(tmp_path_factory) -> Server:
    """Serves a cluster made of the golden payloads' own nodes and victim pods."""
    tmp = tmp_path_factory.mktemp("golden")
    nodes = golden("filter-request.nodecache-false.json")["Nodes"]["items"]
    victims = golden("preempt-request.nodecache-false.json")["NodeNameToVictims"]
    pods = [pod for entry in victims.values() for pod in entry["Pods"]]
    pods.append(golden("filter-request.nodecache-true.json")["Pod"])
    cluster = tmp / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List",
                                       "items": [{"kind": "Node", **n} for n in nodes] +
                                                [{"kind": "Pod", **p} for p in pods]}))
    server = Server(cluster, tmp / "serve.log")
    yield server
    server.stop()


def _example(tmp: Path, *extra: str) -> Server:
    metrics = [arg for dump in sorted((ROOT / "examples" / "metrics").glob("*.prom"))
               for arg in ("--metrics", str(dump))]
    return Server(ROOT / "examples" / "cluster.yaml", tmp / "serve.log", *metrics, *extra)


@pytest.fixture(scope="session")
def example_server(tmp_path_factory) -> Server:
    """Serves the bundled example cluster with its DCGM dumps; filter passes every feasible node
    (`--all-feasible`), so that the whole ranking shows on the wire."""
    server = _example(tmp_path_factory.mktemp("example"), "--all-feasible")
    yield server
    server.stop()


@pytest.fixture(scope="session")
def best_server(tmp_path_factory) -> Server:
    """The same as `example_server`, as `serve` runs by default: filter passes the best only."""
    server = _example(tmp_path_factory.mktemp("example-best"))
    yield server
    server.stop()
