"""Every supported Kubernetes minor: the scheduler tests (placement, the recorded-request
contract, the manifests' server-side dry run, preemption, restart, pod groups) and the chart's
dry runs, run again against kube-apiserver and kube-scheduler of 1.35 and 1.37 (the rest of the
suite runs on go.mod's 1.36). Each release is built from its pinned modules
(tests/e2e/versions/VERSION.mod, scripts/build-control-plane VERSION) and cached by version."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

import pytest

ROOT = Path(__file__).resolve().parents[2]
RELEASES = ("v1.35.4", "v1.37.2")
SUITE = ("test_scheduler.py", "test_preemption_restart.py", "test_groups.py", "test_chart_apply.py")


@pytest.mark.parametrize("release", RELEASES)
def test_the_scheduler_suite_passes_on(release):
    tests = [str(ROOT / "tests" / "e2e" / name) for name in SUITE]
    done = subprocess.run([sys.executable, "-m", "pytest", "-q", "-p", "no:cacheprovider", *tests],
                          env={**os.environ, "GPU_EXTENDER_KUBERNETES": release}, cwd=ROOT,
                          capture_output=True, text=True, timeout=3000)
    assert done.returncode == 0, f"on Kubernetes {release}:\n{_failures(done.stdout)}\n{done.stderr[-2000:]}"
    assert " passed" in done.stdout.splitlines()[-1] and "skipped" not in done.stdout.splitlines()[-1]


def _failures(out: str) -> str:
    """The inner run's errors and tracebacks, then its end: the log tails it prints after them
    are long enough to push an assertion out of a plain tail."""
    found = [i for i in (out.find("= ERRORS ="), out.find("= FAILURES =")) if i >= 0]
    head = out[min(found):min(found) + 8000] + "\n[...]\n" if found else ""
    return head + out[-3000:]
