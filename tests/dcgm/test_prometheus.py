"""Prometheus mode against a real Prometheus (Debian's package) scraping the stand-in exporters:
the same numbers as scraping them directly, and the faults as Prometheus shows them."""

from __future__ import annotations

import logging
import time

import httpx
import pytest

from extender.dcgm.refresh import PrometheusSource, Refresher, ScrapeSource
from extender.dcgm.discovery import Endpoint
from scoring.model import NEUTRAL
from tests.dcgm.conftest import STALE_BY, Counted, gpu_view, utilization_of
from tests.dcgm.harness import Exporter, node_uuid
from tests.webhook.conftest import free_port

LOGGER = "gpu_extender.dcgm"
FAULTY = ("node-down", "node-garbage", "node-missing", "node-slow")


def prometheus_refresher(view, url: str, timeout: float = 2.0) -> tuple[Refresher, Counted]:
    counted = Counted()
    return Refresher(view, PrometheusSource(url, timeout), interval=60, metrics=counted.metrics), counted


def test_scrape_and_prometheus_modes_read_the_same_numbers(fleet):
    nodes = ("node-a", "node-b")
    scraped_view, queried_view = gpu_view(*nodes), gpu_view(*nodes)
    endpoints = [Endpoint(node, fleet.exporters[node].url) for node in nodes]
    scrape = Refresher(scraped_view, ScrapeSource(lambda: endpoints, 2.0, 2), 60, Counted().metrics)
    assert scrape.refresh().failures == []
    query, _ = prometheus_refresher(queried_view, fleet.prometheus.url)
    result = query.refresh()
    assert result.failures == [] and result.missing == []
    uuids = {node_uuid(node, i) for node in nodes for i in range(4)}
    by_node = {f"node/{node}" for node in nodes}  # node-level samples: by discovery, by Hostname
    assert set(scraped_view.samples) == uuids | by_node
    assert set(queried_view.samples) & {node_uuid(n, i) for n in nodes + FAULTY for i in range(4)} == uuids
    assert set(queried_view.samples) & {f"node/{n}" for n in nodes + FAULTY} == by_node
    for key in by_node:
        assert queried_view.samples[key].util == pytest.approx(scraped_view.samples[key].util)
    now = time.time()
    for uuid in uuids:
        scraped, queried = scraped_view.samples[uuid], queried_view.samples[uuid]
        assert (queried.util, queried.fb_used_mib, queried.fb_free_mib) == pytest.approx(
            (scraped.util, scraped.fb_used_mib, scraped.fb_free_mib)), uuid
        assert now - 5 < queried.at <= now and now - 5 < scraped.at <= now  # Prometheus scrapes every second
    # The numbers are the sample's own, not some default both modes share.
    assert scraped_view.samples[node_uuid("node-a", 0)].util == pytest.approx(0.87)
    assert queried_view.samples[node_uuid("node-b", 3)].fb_used_mib == 78620
    for node in nodes:
        assert "busy" in utilization_of(queried_view, node).reason


def test_nodes_whose_exporter_fails_are_missing_from_prometheus_and_neutral(fleet, caplog):
    view = gpu_view("node-a", "node-b", *FAULTY)
    refresh, counted = prometheus_refresher(view, fleet.prometheus.url)
    with caplog.at_level(logging.WARNING, LOGGER):
        result = refresh.refresh()
    assert result.failures == [] and result.missing == list(FAULTY)
    assert counted.failures("missing") == len(FAULTY)
    for node in FAULTY:
        assert utilization_of(view, node).score == NEUTRAL
    assert "busy" in utilization_of(view, "node-a").reason
    (line,) = [r.getMessage() for r in caplog.records]
    assert f"no data for {len(FAULTY)} GPU nodes" in line and all(node in line for node in FAULTY)


def test_an_exporter_that_stops_answering_drops_out_of_prometheus(fleet, caplog):
    view = gpu_view("node-a", "node-gone")
    refresh, counted = prometheus_refresher(view, fleet.prometheus.url)
    assert refresh.refresh().missing == [] and "busy" in utilization_of(view, "node-gone").reason
    fleet.exporters["node-gone"].stop()
    deadline = time.monotonic() + 15
    with caplog.at_level(logging.WARNING, LOGGER):
        while refresh.refresh().missing != ["node-gone"]:
            assert time.monotonic() < deadline, "Prometheus never marked node-gone's series stale"
            time.sleep(0.5)
    assert not any(node_uuid("node-gone", i) in view.samples for i in range(4))
    assert utilization_of(view, "node-gone").score == NEUTRAL
    assert "busy" in utilization_of(view, "node-a").reason
    assert counted.failures("missing") >= 1
    assert any("no data for 1 GPU nodes" in r.getMessage() and "node-gone" in r.getMessage() for r in caplog.records)


def test_samples_are_dated_when_prometheus_scraped_them_not_when_asked(fleet):
    view = gpu_view("node-a", "node-stale", ttl=STALE_BY / 2)
    refresh, _ = prometheus_refresher(view, fleet.prometheus.url)
    refresh.refresh()
    frozen = [view.samples[node_uuid("node-stale", i)].at for i in range(4)]
    assert frozen == pytest.approx([fleet.started - STALE_BY] * 4, abs=0.001)
    stale = utilization_of(view, "node-stale")
    assert stale.score == NEUTRAL and "old" in stale.reason
    assert "busy" in utilization_of(view, "node-a").reason


def test_a_failing_prometheus_keeps_the_last_result_until_the_ttl(fleet, caplog):
    """Between us and Prometheus, a stand-in that forwards, then answers garbage, slowly, not at all."""
    front = Exporter(lambda path: httpx.get(f"{fleet.prometheus.url}{path}", timeout=5).text)
    try:
        view = gpu_view("node-a", ttl=30)
        refresh, counted = prometheus_refresher(view, f"http://{front.target}", timeout=1.0)
        assert refresh.refresh().failures == []
        last = dict(view.samples)
        assert last
        front.garbage = True
        front.delay = 0.0
        with caplog.at_level(logging.WARNING, LOGGER):
            assert [f.reason for f in refresh.refresh().failures] == ["garbage"]
            front.garbage, front.delay = False, 10
            started = time.monotonic()
            assert [f.reason for f in refresh.refresh().failures] == ["timeout"]
            assert time.monotonic() - started < 1.5
            front.stop()
            assert [f.reason for f in refresh.refresh().failures] == ["down"]
        assert view.samples == last
        assert [counted.failures(r) for r in ("garbage", "timeout", "down")] == [1, 1, 1]
        assert len(caplog.records) == 3 and all("Prometheus at" in r.getMessage() for r in caplog.records)
        read_at = max(s.at for s in last.values())
        assert utilization_of(view, "node-a", now=read_at + 31).score == NEUTRAL
    finally:
        front.stop()


def test_prometheus_that_is_not_there_is_down_and_nothing_is_scored():
    view = gpu_view("node-a")
    refresh, counted = prometheus_refresher(view, f"http://127.0.0.1:{free_port()}")
    result = refresh.refresh()
    assert [f.reason for f in result.failures] == ["down"] and "Connection refused" in result.failures[0].detail
    assert counted.failures("down") == 1 and view.samples == {}
    assert utilization_of(view, "node-a").score == NEUTRAL
