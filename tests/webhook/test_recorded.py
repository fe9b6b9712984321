"""Requests as kube-scheduler sent them in an e2e run (tests/webhook/recorded/, kept current by
tests/e2e/test_scheduler.py), replayed against the server on the same example cluster."""

from __future__ import annotations

import json
from pathlib import Path

from tests.webhook.test_contract import check_filter

RECORDED = Path(__file__).resolve().parent / "recorded"


def recorded(verb: str) -> dict:
    return json.loads((RECORDED / f"{verb}-request.json").read_text())


def test_recorded_filter_is_understood(example_server):
    request = recorded("filter")
    assert request["Nodes"] is None and request["NodeNames"]  # nodeCacheCapable: true, as shipped
    answer = example_server.post("filter", request).json()
    check_filter(request, answer)  # every candidate passes or fails with a reason, nothing else
    assert "h100-inf-01" in answer["NodeNames"]  # the pod went there in the recorded run


def test_recorded_prioritize_ranks_the_node_the_pod_was_bound_to_first(example_server):
    request = recorded("prioritize")
    answer = example_server.post("prioritize", request).json()
    assert sorted(p["Host"] for p in answer) == sorted(request["NodeNames"])
    best = max(answer, key=lambda p: p["Score"])
    assert best["Score"] == 10 and best["Host"] == recorded("bind")["Node"]


def test_recorded_bind_without_a_live_cluster_is_a_clear_error(example_server):
    answer = example_server.post("bind", recorded("bind")).json()
    assert set(answer) == {"Error"} and "not in the cluster view" in answer["Error"]
