"""GPU shares over the wire: filter's two kinds of rejection, prioritize, explain, bad requests."""

from __future__ import annotations

import json

import pytest
import yaml

from tests.webhook.conftest import Server
from tests.webhook.test_contract import check_filter

SHARE = "gpu-extender.io/gpu-milli"
BEAT = "2026-11-20T09:30:00Z"


def node(name: str, allocatable: dict[str, str]) -> dict:
    topology = {"gpus": [{"index": i, "uuid": f"GPU-{name}-{i}", "model": "NVIDIA L40S", "memoryMiB": 46068}
                         for i in range(2)],
                "nvlink": [[0, 0], [0, 0]], "pcie": [[0, 40], [40, 0]]}
    return {"kind": "Node", "metadata": {"name": name, "labels": {"nvidia.com/gpu.count": "2"},
                                         "annotations": {"gpu-extender.io/gpu-topology": json.dumps(topology),
                                                         "gpu-extender.io/heartbeat": BEAT}},
            "status": {"allocatable": allocatable}}


def pod(name: str, limits: dict[str, str], node_name: str | None = None, share: dict | None = None) -> dict:
    notes = {"gpu-extender.io/class": "batch"}
    if share:
        notes["gpu-extender.io/plan"] = json.dumps({"node": node_name, "gpus": [], "mig": [], "share": share})
    spec = {"containers": [{"name": "c", "resources": {"limits": limits, "requests": limits}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "shares", "uid": f"uid-{name}",
                                        "annotations": notes},
            "spec": spec, "status": {"phase": "Running" if node_name else "Pending"}}


@pytest.fixture(scope="module")
def share_server(tmp_path_factory) -> Server:
    """share-open: GPU 0 holds 700 of a planned share, GPU 1 nothing; share-full: both GPUs hold
    900; whole-only: GPUs but no share resource."""
    tmp = tmp_path_factory.mktemp("shares")
    shares = {"nvidia.com/gpu": "2", SHARE: "2000"}
    items = [
        node("share-open", shares), node("share-full", shares), node("whole-only", {"nvidia.com/gpu": "2"}),
        pod("held-0", {SHARE: "700"}, "share-open", {"gpu": 0, "milli": 700}),
        pod("full-0", {SHARE: "900"}, "share-full", {"gpu": 0, "milli": 900}),
        pod("full-1", {SHARE: "900"}, "share-full", {"gpu": 1, "milli": 900}),
    ]
    cluster = tmp / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    server = Server(cluster, tmp / "serve.log", "--all-feasible")  # the whole ranking on the wire
    yield server
    server.stop()


NODES = ["share-open", "share-full", "whole-only"]


def test_filter_tells_held_capacity_from_a_node_that_never_fits(share_server):
    request = {"Pod": pod("want-300", {SHARE: "300"}), "Nodes": None, "NodeNames": NODES}
    answer = share_server.post("filter", request).json()
    check_filter(request, answer)
    assert answer["NodeNames"] == ["share-open"]
    assert answer["FailedNodes"] == {"share-full": "gpu-extender: no GPU with enough free share"}
    assert answer["FailedAndUnresolvableNodes"] == {"whole-only": "gpu-extender: no GPU shares on node"}
    scores = share_server.post("prioritize", {**request, "NodeNames": answer["NodeNames"]}).json()
    assert scores == [{"Host": "share-open", "Score": 10}]
    explained = share_server.client.get("/explain/shares/want-300").json()
    best = explained["nodes"][0]
    assert best["node"] == "share-open" and best["signals"]["sharing"] == 1.0  # fills GPU 0 exactly
    assert best["plan"]["share"] == {"gpu": 0, "milli": 300, "gpuUuid": "GPU-share-open-0"}
    assert best["plan"]["gpus"] == [] and best["plan"]["mig"] == []


def test_a_small_share_still_fits_beside_the_full_ones(share_server):
    answer = share_server.post("filter", {"Pod": pod("want-100", {SHARE: "100"}), "Nodes": None,
                                          "NodeNames": NODES}).json()
    assert sorted(answer["NodeNames"]) == ["share-full", "share-open"]


def test_whole_gpu_pods_get_no_gpu_that_holds_a_share(share_server):
    answer = share_server.post("filter", {"Pod": pod("want-2", {"nvidia.com/gpu": "2"}), "Nodes": None,
                                          "NodeNames": NODES}).json()
    assert answer["NodeNames"] == ["whole-only"]
    assert set(answer["FailedNodes"]) == {"share-open", "share-full"}


@pytest.mark.parametrize(("limits", "says"), [
    ({SHARE: "1000"}, "is not a share of one GPU"),
    ({SHARE: "200", "nvidia.com/gpu": "1"}, "asks for no other GPU resource"),
])
def test_requests_that_are_not_a_share_are_clear_errors(share_server, limits, says):
    answer = share_server.post("filter", {"Pod": pod("bad", limits), "Nodes": None, "NodeNames": NODES}).json()
    assert answer["Error"].startswith("gpu-extender: ") and says in answer["Error"]
    assert share_server.post("prioritize", {"Pod": pod("bad", limits), "Nodes": None, "NodeNames": NODES}).json() == []
