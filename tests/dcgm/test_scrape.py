"""Scrape mode: every exporter read over HTTP in the background, and what each fault leaves
behind: those GPUs neutral, a counted failure, a log line, nothing raised, other nodes unaffected."""

from __future__ import annotations

import logging
import threading
import time

import pytest
import yaml
from fastapi.testclient import TestClient

from extender.dcgm import readings
from extender.webhook.app import SnapshotBinder, create_app
from extender.cluster import ClusterView
from extender.dcgm.discovery import DiscoveryError, Endpoint
from extender.dcgm.refresh import GRACE, Failure, FailureLog, Refresher, Round, ScrapeSource
from scoring.config import PolicyConfig
from scoring import utilization
from scoring.model import NEUTRAL, Plan
from tests.dcgm.conftest import Counted, gpu_view, utilization_of
from tests.dcgm.harness import ROOT, Exporter, busy_text, node_text, node_uuid

LOGGER = "gpu_extender.dcgm"


def refresher(view: ClusterView, endpoints: list[Endpoint] | None = None, timeout: float = 1.0,
              discover=None) -> tuple[Refresher, Counted]:
    counted = Counted()
    source = ScrapeSource(discover or (lambda: list(endpoints or [])), timeout, concurrency=4)
    return Refresher(view, source, interval=60, metrics=counted.metrics), counted


def endpoint(fleet, node: str) -> Endpoint:
    return Endpoint(node, fleet.exporters[node].url)


def assert_neutral(view: ClusterView, node: str) -> None:
    result = utilization_of(view, node)
    assert result.score == NEUTRAL and "neutral" in result.reason, result


def assert_scored(view: ClusterView, node: str) -> None:
    result = utilization_of(view, node)
    assert "busy" in result.reason, result


def test_every_exporter_is_read_in_both_label_spellings(fleet):
    view = gpu_view("node-a", "node-b")
    refresh, counted = refresher(view, [endpoint(fleet, "node-a"), endpoint(fleet, "node-b")])
    before = time.time()
    result = refresh.refresh()
    assert result.failures == [] and result.missing == [] and len(result.reached) == 2
    for node, lowercase in (("node-a", False), ("node-b", True)):
        expected = readings.parse(node_text(node, lowercase), default_time=0.0)
        for uuid, sample in expected.items():
            got = view.samples[uuid]
            assert (got.util, got.fb_used_mib, got.fb_free_mib) == (sample.util, sample.fb_used_mib, sample.fb_free_mib)
            assert before <= got.at <= time.time()
        assert_scored(view, node)
    assert counted.registry.get_sample_value("gpu_extender_dcgm_sources", {"state": "ok"}) == 2


@pytest.mark.parametrize("fault, reason", [("node-down", "down"), ("node-garbage", "garbage")])
def test_a_failing_exporter_leaves_its_gpus_neutral(fleet, caplog, fault, reason):
    view = gpu_view("node-a", fault)
    refresh, counted = refresher(view, [endpoint(fleet, "node-a"), endpoint(fleet, fault)])
    with caplog.at_level(logging.WARNING, LOGGER):
        result = refresh.refresh()
    assert [(f.reason, fault in f.source) for f in result.failures] == [(reason, True)]
    assert counted.failures(reason) == 1
    assert not any(node_uuid(fault, i) in view.samples for i in range(4))
    assert_neutral(view, fault)
    assert_scored(view, "node-a")
    lines = [r.getMessage() for r in caplog.records if fault in r.getMessage()]
    assert len(lines) == 1 and f": {reason}: " in lines[0]


def test_a_slow_exporter_times_out_within_the_timeout_and_others_are_unaffected(fleet, caplog):
    view = gpu_view("node-a", "node-slow")
    refresh, counted = refresher(view, [endpoint(fleet, "node-a"), endpoint(fleet, "node-slow")], timeout=1.0)
    with caplog.at_level(logging.WARNING, LOGGER):
        for _ in range(2):
            started = time.monotonic()
            result = refresh.refresh()
            elapsed = time.monotonic() - started
            assert elapsed < 1.0 + GRACE + 0.5, elapsed  # the exporter answers after 10 s
            assert [(f.reason, "node-slow" in f.source) for f in result.failures] == [("timeout", True)]
            assert_scored(view, "node-a")
            assert_neutral(view, "node-slow")
    assert counted.failures("timeout") == 2
    assert len([r for r in caplog.records if "node-slow" in r.getMessage()]) == 1  # the repeat is not logged


def test_a_trickling_answer_is_cut_off_and_a_read_still_running_is_not_waited_for_nor_doubled():
    # 100 bytes every 0.9 s: no socket read waits for the 1 s timeout, the body's deadline ends it
    # after the second piece, at 1.8 s, past the round's wait.
    trickle = Exporter(node_text("node-t"), pace=0.9)
    try:
        view = gpu_view("node-t")
        refresh, _ = refresher(view, [Endpoint("node-t", trickle.url)], timeout=1.0)
        started = time.monotonic()
        first = refresh.refresh()
        assert time.monotonic() - started < 1.0 + GRACE + 0.5
        started = time.monotonic()
        second = refresh.refresh()
        assert time.monotonic() - started < 0.5
        assert [f.reason for f in first.failures + second.failures] == ["timeout", "timeout"]
        assert second.failures[0].detail == "the previous read has not finished"
        assert trickle.requests == 1
        assert_neutral(view, "node-t")
        time.sleep(1.0)
        # The stuck read gave up at its deadline (the whole answer would take minutes): a new one starts.
        assert [f.reason for f in refresh.refresh().failures] == ["timeout"]
        assert trickle.requests == 2
        refresh.source.close()
    finally:
        trickle.stop()


def test_a_gpu_node_without_an_exporter_is_missing_and_neutral(fleet, caplog):
    view = gpu_view("node-a", "node-missing")
    refresh, counted = refresher(view, [endpoint(fleet, "node-a")])
    with caplog.at_level(logging.WARNING, LOGGER):
        result = refresh.refresh()
    assert result.missing == ["node-missing"] and result.failures == []
    assert counted.failures("missing") == 1
    assert_neutral(view, "node-missing")
    assert_scored(view, "node-a")
    assert any("no data for 1 GPU nodes" in r.getMessage() and "node-missing" in r.getMessage() for r in caplog.records)


def test_a_failed_exporter_keeps_its_last_samples_until_the_ttl_then_recovers(caplog):
    exporter = Exporter(node_text("node-x"))
    try:
        view = gpu_view("node-x", ttl=30)
        refresh, counted = refresher(view, [Endpoint("node-x", exporter.url)])
        refresh.refresh()
        last = dict(view.samples)
        exporter.stop()
        with caplog.at_level(logging.INFO, LOGGER):
            assert [f.reason for f in refresh.refresh().failures] == ["down"]
            assert view.samples == last  # kept with the time they were read
            read_at = max(s.at for s in last.values())
            assert "busy" in utilization_of(view, "node-x", now=read_at + 29).reason
            aged = utilization_of(view, "node-x", now=read_at + 31)
            assert aged.score == NEUTRAL and "old" in aged.reason
            exporter.start()
            assert refresh.refresh().failures == []
        assert min(s.at for s in view.samples.values()) > read_at
        assert any("answers again after 1 failed rounds" in r.getMessage() for r in caplog.records)
        assert counted.failures("down") == 1
    finally:
        exporter.stop()


def test_an_answer_replaces_all_of_an_exporters_samples(fleet):
    full = node_text("node-p")
    partial = full[: full.index("DCGM_FI_DEV_FB_FREE")]  # cut off before the framebuffer rows
    texts = iter([full, partial])
    exporter = Exporter(lambda _: next(texts))
    try:
        view = gpu_view("node-p")
        refresh, _ = refresher(view, [Endpoint("node-p", exporter.url)])
        refresh.refresh()
        assert view.samples[node_uuid("node-p", 0)].fb_free_mib > 0
        assert refresh.refresh().failures == []
        assert view.samples[node_uuid("node-p", 0)].fb_free_mib == 0  # no stale figure kept
        # The MIG GPU had only framebuffer and engine rows after the cut-off: it is gone.
        assert node_uuid("node-p", 2) not in view.samples
    finally:
        exporter.stop()


def test_an_exporter_leaving_discovery_loses_its_samples_and_discovery_failure_keeps_the_list(fleet, caplog):
    answers: list = [[endpoint(fleet, "node-a"), endpoint(fleet, "node-b")],
                     DiscoveryError("listing EndpointSlices: API server answered 503 Service Unavailable"),
                     [endpoint(fleet, "node-a")]]

    def discover() -> list[Endpoint]:
        answer = answers.pop(0)
        if isinstance(answer, Exception):
            raise answer
        return answer

    view = gpu_view("node-a", "node-b")
    refresh, counted = refresher(view, discover=discover)
    refresh.refresh()
    with caplog.at_level(logging.WARNING, LOGGER):
        result = refresh.refresh()
    assert [f.reason for f in result.failures] == ["discovery"] and len(result.reached) == 2
    assert counted.failures("discovery") == 1
    assert any("keeping the last list of exporters" in r.getMessage() for r in caplog.records)
    assert node_uuid("node-b", 0) in view.samples
    refresh.refresh()
    assert node_uuid("node-b", 0) not in view.samples
    assert_neutral(view, "node-b")


def test_failure_log_is_rate_limited(caplog):
    now = [0.0]
    failure_log = FailureLog(repeat=300, clock=lambda: now[0])

    def failing(*sources: str, reason: str = "down") -> Round:
        return Round({}, failures=[Failure(s, reason, "refused") for s in sources])

    with caplog.at_level(logging.INFO, LOGGER):
        failure_log.report(failing("e1"))
        for _ in range(5):
            now[0] += 15
            failure_log.report(failing("e1"))
        assert len(caplog.records) == 1
        now[0] += 300
        failure_log.report(failing("e1"))
        assert "1 sources still failing (down 1)" in caplog.records[-1].getMessage()
        failure_log.report(failing("e1", reason="timeout"))  # fails differently: said at once
        assert "e1: timeout" in caplog.records[-1].getMessage()
        caplog.clear()
        failure_log.report(failing(*(f"n{i}" for i in range(30))))
        assert len(caplog.records) == 21 and "10 more DCGM sources failing (down 10)" in caplog.records[-1].getMessage()
        caplog.clear()
        failure_log.report(Round({}, reached=["n0", "n1"]))
        assert [r.levelno for r in caplog.records] == [logging.INFO, logging.INFO]
        assert "n0 answers again after 1 failed rounds" in caplog.records[0].getMessage()


def test_the_webhook_answers_promptly_during_a_slow_scrape():
    slow = Exporter(node_text("h100-inf-01"), delay=10)
    try:
        view = ClusterView.from_snapshot(ROOT / "examples" / "cluster.yaml", [], PolicyConfig())
        counted = Counted()
        source = ScrapeSource(lambda: [Endpoint("h100-inf-01", slow.url)], timeout=5.0, concurrency=2)
        refresh = Refresher(view, source, interval=60, metrics=counted.metrics)
        client = TestClient(create_app(view, SnapshotBinder(), counted.metrics.collectors()))
        pod = yaml.safe_load((ROOT / "examples" / "pods" / "llama70b-tp4-latency-critical.yaml").read_text())
        nodes = [n.name for n in view.nodes()]
        round_done = threading.Event()
        threading.Thread(target=lambda: (refresh.refresh(), round_done.set()), daemon=True).start()
        deadline = time.monotonic() + 5
        while slow.requests == 0:
            assert time.monotonic() < deadline, "the refresh never reached the exporter"
            time.sleep(0.01)
        started = time.monotonic()
        answer = client.post("/filter", json={"Pod": pod, "Nodes": None, "NodeNames": nodes})
        assert time.monotonic() - started < 1.0
        assert answer.status_code == 200 and answer.json()["NodeNames"]
        assert not round_done.is_set()  # the scrape was still under way while the filter was answered
        assert round_done.wait(10)
        metrics = client.get("/metrics").text
        assert 'gpu_extender_dcgm_failures_total{reason="timeout"} 1.0' in metrics
        refresh.source.close()
    finally:
        slow.stop()


@pytest.mark.parametrize("named_by", ["discovery", "hostname"])
def test_a_node_without_the_agent_gets_its_utilization_at_node_level(named_by):
    """A node with GPUs but no agent inventory (only nvidia.com/gpu allocatable) cannot match
    samples by UUID; its exporter's GPUs are its own by discovery's node name or, where
    discovery does not say, by the exporter's Hostname label."""
    hot = Exporter(busy_text("plain-hot", 4, 0.97))
    cool = Exporter(busy_text("plain-cool", 4, 0.10))
    try:
        view = ClusterView(PolicyConfig())
        view.replace_all([{"kind": "Node", "metadata": {"name": name, "labels": {}},
                           "status": {"allocatable": {"nvidia.com/gpu": "4"}}}
                          for name in ("plain-hot", "plain-cool", "plain-dark")], [])
        nodes = {"plain-hot": hot, "plain-cool": cool}
        refresh, counted = refresher(view, [Endpoint(name if named_by == "discovery" else "", exporter.url)
                                            for name, exporter in nodes.items()])
        result = refresh.refresh()
        assert result.failures == []
        scores = {name: utilization.evaluate(view.node(name), Plan(), view.samples, view.now(),
                                             view.config.utilization) for name in ("plain-hot", "plain-cool", "plain-dark")}
        assert scores["plain-hot"].score == pytest.approx(0.03)
        assert scores["plain-cool"].score == pytest.approx(0.90)
        assert "97% busy" in scores["plain-hot"].reason and "by node" in scores["plain-hot"].reason
        assert scores["plain-dark"].score == NEUTRAL  # no exporter reports it: neutral
    finally:
        hot.stop()
        cool.stop()
