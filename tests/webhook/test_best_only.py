"""`serve` as shipped passes kube-scheduler only the nodes of the top score: exactly those that
score 10 when every feasible node is passed, so that kube-scheduler picks among the same nodes."""

from __future__ import annotations

from pathlib import Path

import pytest
import yaml

from tests.webhook.conftest import ROOT
from tests.webhook.test_recorded import recorded

NODES = [i["metadata"]["name"] for i in yaml.safe_load((ROOT / "examples" / "cluster.yaml").read_text())["items"]
         if i["kind"] == "Node"]
PODS = sorted((ROOT / "examples" / "pods").glob("*.yaml"))


def request_for(path: Path) -> dict:
    return {"Pod": yaml.safe_load(path.read_text()), "Nodes": None, "NodeNames": NODES}


@pytest.mark.parametrize("request_body", [request_for(p) for p in PODS] + [recorded("filter")],
                         ids=[p.stem for p in PODS] + ["recorded"])
def test_best_only_passes_exactly_the_nodes_that_would_score_ten(example_server, best_server, request_body):
    every = example_server.post("filter", request_body).json()
    scores = {p["Host"]: p["Score"] for p in example_server.post(
        "prioritize", {**request_body, "NodeNames": every["NodeNames"]}).json()}
    best = best_server.post("filter", request_body).json()
    assert sorted(best["NodeNames"]) == sorted(n for n, score in scores.items() if score == 10)
    assert best["NodeNames"] or not every["NodeNames"]  # never empty while a node fits
    assert best["FailedNodes"] == every["FailedNodes"]
    assert best["FailedAndUnresolvableNodes"] == every["FailedAndUnresolvableNodes"]
    # kube-scheduler then sends prioritize those; they tie, and its own plugins break the tie.
    tied = best_server.post("prioritize", {**request_body, "NodeNames": best["NodeNames"]}).json()
    assert tied == [{"Host": n, "Score": 10} for n in best["NodeNames"]]


def test_the_recorded_pod_is_bound_among_the_best(best_server):
    best = best_server.post("filter", recorded("filter")).json()
    assert recorded("bind")["Node"] in best["NodeNames"]
