"""The committed kubelet API stubs are exactly what scripts/generate-kubelet-api makes from the
upstream .proto files of k8s.io/kubelet at the pinned release (needs Go's module download)."""

from __future__ import annotations

import os
import subprocess
import sys
from pathlib import Path

ROOT = Path(__file__).resolve().parents[2]
STUBS = ROOT / "extender" / "node" / "kubeletapi"


def test_the_committed_stubs_are_generated_from_the_pinned_proto_files(tmp_path):
    made = subprocess.run([str(ROOT / "scripts" / "generate-kubelet-api"), str(tmp_path)], capture_output=True,
                          text=True, env={**os.environ, "PYTHON": sys.executable})
    assert made.returncode == 0, made.stderr
    generated = sorted(p.relative_to(tmp_path) for p in tmp_path.rglob("*.py"))
    assert [str(p) for p in generated] == ["deviceplugin/v1beta1/api_pb2.py", "deviceplugin/v1beta1/api_pb2_grpc.py",
                                           "podresources/v1/api_pb2.py", "podresources/v1/api_pb2_grpc.py"]
    for path in generated:
        assert (STUBS / path).read_bytes() == (tmp_path / path).read_bytes(), f"{path}: run scripts/generate-kubelet-api"
