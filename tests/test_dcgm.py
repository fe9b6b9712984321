"""dcgm-exporter text -> per-GPU samples."""

from __future__ import annotations

from pathlib import Path

import pytest

from extender.dcgm import readings
from tests.dcgm.harness import SAMPLE_TEXT


@pytest.fixture(scope="module")
def reference() -> dict:
    return readings.parse(SAMPLE_TEXT, default_time=1000.0)


def test_whole_gpu_rows_use_gpu_util_and_framebuffer(reference):
    gpu0 = reference["GPU-5f1e3a2b-8c4d-4e6f-9a0b-1c2d3e4f5a60"]
    assert gpu0.util == pytest.approx(0.87)
    assert (gpu0.fb_used_mib, gpu0.fb_free_mib) == (73842, 7188)
    assert gpu0.at == 1000.0
    assert reference["GPU-6a2f4b3c-9d5e-4f70-8b1c-2d3e4f5a6b71"].util == 0.0


def test_mig_rows_weight_engine_activity_by_compute_slices(reference):
    text = SAMPLE_TEXT
    engine = {}
    for line in text.splitlines():
        if line.startswith("DCGM_FI_PROF_GR_ENGINE_ACTIVE{") and 'gpu="2"' in line:
            profile = line.split('GPU_I_PROFILE="')[1].split('"')[0]
            engine.setdefault(profile, []).append(float(line.rsplit(" ", 1)[1]))
    expected = sum(int(p[0]) / 7 * v for p, values in engine.items() for v in values)
    gpu2 = reference["GPU-7b305c4d-ae6f-4081-9c2d-3e4f5a6b7c82"]
    assert gpu2.util == pytest.approx(expected)
    assert gpu2.fb_used_mib == 8571 + 13 + 8580 + 13  # instances' framebuffers add up


def test_lowercase_labels_and_sample_timestamps():
    text = (
        '# TYPE DCGM_FI_DEV_GPU_UTIL gauge\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="0",uuid="GPU-a",hostname="n1"} 40 1700000000000\n'
        'DCGM_FI_DEV_GPU_UTIL{gpu="1",uuid="GPU-b",hostname="n1"} 10\n'
    )
    samples = readings.parse(text, default_time=5.0)
    assert samples["GPU-a"].util == pytest.approx(0.4) and samples["GPU-a"].at == 1_700_000_000.0
    assert samples["GPU-b"].at == 5.0


def test_rows_without_uuid_are_skipped_and_garbage_is_an_error(tmp_path: Path):
    assert readings.parse('DCGM_FI_DEV_GPU_UTIL{gpu="0"} 5\n', 0.0) == {}
    with pytest.raises(readings.MetricsError, match="not Prometheus text"):
        readings.parse("DCGM_FI_DEV_GPU_UTIL{gpu=0 oops\n", 0.0)
    with pytest.raises(readings.MetricsError, match="cannot read"):
        readings.load_dump(tmp_path / "nope.prom")


def test_dump_without_timestamps_is_dated_by_file_mtime(tmp_path: Path):
    dump = tmp_path / "n.prom"
    dump.write_text('DCGM_FI_DEV_GPU_UTIL{gpu="0",UUID="GPU-z"} 50\n')
    import os

    os.utime(dump, (1234.0, 1234.0))
    assert readings.load_dump(dump)["GPU-z"].at == 1234.0
