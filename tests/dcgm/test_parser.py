"""The parser: dcgm-exporter text and Prometheus query results -> per-GPU samples.

Expectations are read from the reference sample's lines with regular expressions here, not with
the parser under test."""

from __future__ import annotations

import math
import re

import pytest

from extender.dcgm import readings
from tests.dcgm.harness import SAMPLE_HOST, SAMPLE_TEXT, SAMPLE_UUIDS

ROW = re.compile(r"^(\w+)\{(.*)\} (\S+)$")
LABEL = re.compile(r'(\w+)="([^"]*)"')


def rows(text: str, metric: str) -> list[tuple[dict[str, str], float]]:
    found = []
    for line in text.splitlines():
        match = ROW.match(line)
        if match and match.group(1) == metric:
            found.append((dict(LABEL.findall(match.group(2))), float(match.group(3))))
    return found


def value(metric: str, uuid: str) -> float:
    (only,) = [v for labels, v in rows(SAMPLE_TEXT, metric) if labels["UUID"] == uuid]
    return only


@pytest.fixture(scope="module")
def reading() -> readings.Reading:
    return readings.read_text(SAMPLE_TEXT, default_time=1000.0)


def test_whole_gpus_read_gpu_util_and_framebuffer(reading):
    assert set(reading.samples) == set(SAMPLE_UUIDS)
    for uuid in (SAMPLE_UUIDS[0], SAMPLE_UUIDS[1], SAMPLE_UUIDS[3]):
        sample = reading.samples[uuid]
        assert sample.util == pytest.approx(value(readings.GPU_UTIL, uuid) / 100)
        assert sample.fb_used_mib == value(readings.FB_USED, uuid)
        assert sample.fb_free_mib == value(readings.FB_FREE, uuid)
        assert sample.at == 1000.0
    assert reading.hosts == {uuid: SAMPLE_HOST for uuid in SAMPLE_UUIDS}


def test_mig_gpu_uses_engine_activity_weighted_by_compute_slices(reading):
    mig = SAMPLE_UUIDS[2]
    assert not [1 for labels, _ in rows(SAMPLE_TEXT, readings.GPU_UTIL) if labels["UUID"] == mig]  # as on real MIG GPUs
    engine = [(labels["GPU_I_PROFILE"], v) for labels, v in rows(SAMPLE_TEXT, readings.GR_ENGINE_ACTIVE)
              if labels["UUID"] == mig]
    assert len(engine) == 4
    expected = sum(int(profile.split("g.")[0]) / 7 * v for profile, v in engine)
    assert reading.samples[mig].util == pytest.approx(expected)
    used = [v for labels, v in rows(SAMPLE_TEXT, readings.FB_USED) if labels["UUID"] == mig]
    assert reading.samples[mig].fb_used_mib == sum(used)


def test_lowercase_uuid_and_hostname_read_the_same(reading):
    lowercase = SAMPLE_TEXT.replace(',UUID="', ',uuid="').replace(',Hostname="', ',hostname="')
    assert 'UUID="' not in lowercase and 'Hostname="' not in lowercase
    assert readings.read_text(lowercase, default_time=1000.0) == reading


def test_dcgm_exporter_1x_names_and_old_pod_labels():
    text = (
        "# TYPE dcgm_gpu_utilization gauge\n"
        'dcgm_gpu_utilization{gpu="0",uuid="GPU-old",pod_name="p",pod_namespace="ns",container_name="c"} 30\n'
        "# TYPE dcgm_fb_used gauge\n"
        'dcgm_fb_used{gpu="0",uuid="GPU-old",pod_name="p",pod_namespace="ns",container_name="c"} 100\n'
        "# TYPE dcgm_fb_free gauge\n"
        'dcgm_fb_free{gpu="0",uuid="GPU-old",pod_name="p",pod_namespace="ns",container_name="c"} 300\n'
    )
    sample = readings.parse(text, default_time=7.0)["GPU-old"]
    assert (sample.util, sample.fb_used_mib, sample.fb_free_mib, sample.at) == (pytest.approx(0.3), 100, 300, 7.0)


def test_the_same_series_twice_counts_once_and_the_newer_wins():
    text = (
        'DCGM_FI_DEV_FB_USED{UUID="GPU-x",job="a"} 100 1000000\n'
        'DCGM_FI_DEV_FB_USED{UUID="GPU-x",job="b"} 200 2000000\n'
        'DCGM_FI_DEV_GPU_UTIL{UUID="GPU-x",job="a"} NaN\n'
    )
    sample = readings.parse(text, default_time=0.0)["GPU-x"]
    assert sample.fb_used_mib == 200 and sample.at == 2000.0
    assert sample.util == 0.0 and not math.isnan(sample.util)  # the NaN row is skipped


def _query_results(text: str, extra: dict[str, str], at: float) -> tuple[dict, dict]:
    """What Prometheus' /api/v1/query returns for VALUES_QUERY and TIMES_QUERY after scraping
    `text` at time `at` (adding `extra` target labels), built by hand from the text."""
    values, times = [], []
    for metric in readings.METRIC_NAMES:
        for labels, v in rows(text, metric):
            series = {**labels, **extra}
            values.append({"metric": {"__name__": metric, **series}, "value": [at + 5, repr(v)]})
            times.append({"metric": {readings.TIME_LABEL: metric, **series}, "value": [at + 5, repr(at)]})
    return {"resultType": "vector", "result": values}, {"resultType": "vector", "result": times}


def test_query_results_read_like_the_scraped_text(reading):
    values, times = _query_results(SAMPLE_TEXT, {"instance": "10.0.0.7:9400", "job": "dcgm"}, at=1000.0)
    assert readings.read_query_results(values, times) == reading


def test_query_results_are_dated_by_their_sample_times_not_the_query_time():
    values, times = _query_results(SAMPLE_TEXT, {"job": "dcgm"}, at=1234.5)
    assert {s.at for s in readings.read_query_results(values, times).samples.values()} == {1234.5}
    # A series whose time did not come back is left out rather than dated by the query.
    times["result"] = [t for t in times["result"] if t["metric"]["UUID"] != SAMPLE_UUIDS[0]]
    assert SAMPLE_UUIDS[0] not in readings.read_query_results(values, times).samples


@pytest.mark.parametrize("data, message", [
    ({"resultType": "matrix", "result": []}, "not an instant vector"),
    ({"resultType": "vector", "result": [{"metric": {}, "value": "7"}]}, "malformed series"),
    ({"resultType": "vector", "result": [{"value": [1, "2"]}]}, "malformed series"),
    (None, "not an instant vector"),
])
def test_malformed_query_results_are_an_error(data, message):
    ok = {"resultType": "vector", "result": []}
    with pytest.raises(readings.MetricsError, match=message):
        readings.read_query_results(data, ok)
