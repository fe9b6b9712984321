"""benchmarks/null_extender, the throughput benchmark's floor: built with the machine's Go, it keeps
every node kube-scheduler sent and scores each 10 (recorded kube-scheduler bodies)."""

from __future__ import annotations

import json
import sys
from pathlib import Path

import httpx
import pytest

ROOT = Path(__file__).resolve().parents[2]
RECORDED = ROOT / "tests" / "webhook" / "recorded"
sys.path.insert(0, str(ROOT / "benchmarks"))
from scheduler_throughput import start_null_extender  # noqa: E402


@pytest.fixture(scope="module")
def url(tmp_path_factory):
    proc, port = start_null_extender(tmp_path_factory.mktemp("null-extender") / "log")
    yield f"http://127.0.0.1:{port}"
    proc.kill()
    proc.wait()


def test_filter_keeps_every_node_and_prioritize_scores_each_ten(url):
    body = (RECORDED / "filter-request.json").read_bytes()
    names = json.loads(body)["NodeNames"]
    filtered = httpx.post(f"{url}/filter", content=body).json()
    assert filtered["NodeNames"] == names and not filtered["FailedNodes"]
    body = (RECORDED / "prioritize-request.json").read_bytes()
    scores = httpx.post(f"{url}/prioritize", content=body).json()
    assert scores == [{"Host": name, "Score": 10} for name in json.loads(body)["NodeNames"]]


def test_a_malformed_body_is_refused(url):
    answer = httpx.post(f"{url}/filter", content=b"{not json")
    assert answer.status_code == 400
