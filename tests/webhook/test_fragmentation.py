"""The fragmentation signal over the wire: the target workload comes from the served cluster's pods.

Two clusters with the same nodes in the same state: "packed" (4 GPUs, 0 and 1 held) and "roomy"
(4 GPUs, 0 held). Where the cluster's pods are mostly 2-GPU pods, a 1-GPU batch pod goes to
roomy (on packed it would break up the last free pair); where they are 1-GPU pods, it costs the
workload the same on both, and packing puts it on packed (by a point: the totals are close).
"""

from __future__ import annotations

import json

import pytest
import yaml

from tests.webhook.conftest import Server

SHARE = "gpu-extender.io/gpu-milli"


def node(name: str, allocatable: dict[str, str]) -> dict:
    return {"kind": "Node", "metadata": {"name": name, "labels": {}}, "status": {"allocatable": allocatable}}


def pod(name: str, limits: dict[str, str], node_name: str | None = None, plan: dict | None = None) -> dict:
    notes = {"gpu-extender.io/class": "batch"}
    if plan is not None:
        notes["gpu-extender.io/plan"] = json.dumps({"node": node_name, "gpus": [], "mig": [], **plan})
    spec: dict = {"containers": [{"name": "c", "resources": {"limits": limits}}]}
    if node_name:
        spec["nodeName"] = node_name
    return {"kind": "Pod", "metadata": {"name": name, "namespace": "frag", "uid": f"uid-{name}", "annotations": notes},
            "spec": spec, "status": {"phase": "Running" if node_name else "Pending"}}


def gpus(n: int) -> dict[str, str]:
    return {"nvidia.com/gpu": str(n)}


def serve(tmp_path_factory, name: str, items: list[dict]) -> Server:
    tmp = tmp_path_factory.mktemp(name)
    cluster = tmp / "cluster.yaml"
    cluster.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    return Server(cluster, tmp / "serve.log", "--all-feasible")  # the whole ranking on the wire


WHOLE = [node("packed", gpus(4)), node("roomy", gpus(4))]


@pytest.fixture(scope="module")
def pairs_server(tmp_path_factory) -> Server:
    """Mostly 2-GPU and 500-milli pods, bound and pending. "shared" (2 GPUs, the only node with
    GPU shares) holds 300 on GPU 0 and 500 on GPU 1."""
    items = WHOLE + [
        node("shared", {**gpus(2), SHARE: "2000"}),
        pod("pair-0", gpus(2), "packed", {"gpus": [0, 1]}),
        pod("single-0", gpus(1), "roomy", {"gpus": [0]}),
        pod("share-300", {SHARE: "300"}, "shared", {"share": {"gpu": 0, "milli": 300}}),
        pod("share-500", {SHARE: "500"}, "shared", {"share": {"gpu": 1, "milli": 500}}),
    ]
    items += [pod(f"pair-queued-{i}", gpus(2)) for i in range(6)]
    items += [pod(f"half-queued-{i}", {SHARE: "500"}) for i in range(6)]
    server = serve(tmp_path_factory, "pairs", items)
    yield server
    server.stop()


@pytest.fixture(scope="module")
def singles_server(tmp_path_factory) -> Server:
    """The same nodes in the same state, held and wanted by 1-GPU pods only."""
    items = WHOLE + [
        pod("single-0", gpus(1), "packed", {"gpus": [0]}),
        pod("single-1", gpus(1), "packed", {"gpus": [1]}),
        pod("single-2", gpus(1), "roomy", {"gpus": [0]}),
    ]
    items += [pod(f"single-queued-{i}", gpus(1)) for i in range(6)]
    server = serve(tmp_path_factory, "singles", items)
    yield server
    server.stop()


def placed(server: Server, name: str, limits: dict[str, str], nodes: list[str]) -> tuple[dict[str, int], dict]:
    """Prioritize's scores for the nodes filter passes, and /explain's best node."""
    request = {"Pod": pod(name, limits), "Nodes": None, "NodeNames": nodes}
    passed = server.post("filter", request).json()["NodeNames"]
    scores = server.post("prioritize", {**request, "NodeNames": passed}).json()
    explained = server.client.get(f"/explain/frag/{name}").json()
    return {s["Host"]: s["Score"] for s in scores}, explained["nodes"][0]


def test_a_one_gpu_pod_keeps_the_last_free_pair_for_the_pairs_the_cluster_runs(pairs_server):
    scores, best = placed(pairs_server, "finetune", gpus(1), ["packed", "roomy", "shared"])
    assert scores == {"packed": 1, "roomy": 10}  # "shared" has no whole GPU left
    assert best["node"] == "roomy" and best["signals"]["fragmentation"] < 1.0
    assert "fragmentation: takes" in best["reason"] and "allocated after (pack)" in best["reason"]


def test_a_one_gpu_pod_packs_where_the_cluster_runs_single_gpu_pods(singles_server):
    scores, best = placed(singles_server, "finetune", gpus(1), ["packed", "roomy"])
    # Fragmentation cannot tell them apart: packing decides, without stretching the difference.
    assert scores == {"packed": 10, "roomy": 9}
    assert best["node"] == "packed" and "fragmentation: takes" in best["reason"]


def test_a_share_goes_where_it_leaves_room_for_the_shares_the_cluster_runs(pairs_server):
    """Best fit would put 200 on GPU 1 (500 free), leaving 300 there, which no 500-milli pod can
    use; on GPU 0 (700 free) it leaves 500, one more 500-milli pod's room."""
    scores, best = placed(pairs_server, "notebook", {SHARE: "200"}, ["packed", "roomy", "shared"])
    assert scores == {"shared": 10}
    assert best["node"] == "shared" and best["plan"]["share"] == {"gpu": 0, "milli": 200}
    assert 0 < best["signals"]["fragmentation"] < 1.0 and "fragmentation: takes" in best["reason"]
