"""The bundled example and the documented defaults stay true to the code."""

from __future__ import annotations

import re
import subprocess
import sys
from pathlib import Path

from extender import snapshot
from scoring import config

ROOT = Path(__file__).resolve().parent.parent


def test_example_files_are_what_the_generator_writes(tmp_path: Path):
    copy = tmp_path / "examples"
    copy.mkdir()
    (copy / "make_cluster.py").write_text((ROOT / "examples" / "make_cluster.py").read_text())
    subprocess.run([sys.executable, str(copy / "make_cluster.py")], check=True)
    assert (copy / "cluster.yaml").read_text() == (ROOT / "examples" / "cluster.yaml").read_text()
    for dump in (copy / "metrics").glob("*.prom"):
        assert dump.read_text() == (ROOT / "examples" / "metrics" / dump.name).read_text()
    assert {p.name for p in (copy / "metrics").glob("*.prom")} == {
        p.name for p in (ROOT / "examples" / "metrics").glob("*.prom")
    }


def test_example_config_is_the_default_config():
    assert config.parse(snapshot.read_document(ROOT / "examples" / "config.yaml")) == config.PolicyConfig()


def test_docs_config_block_is_the_default_config():
    reference = (ROOT / "docs" / "configuration.md").read_text()
    block = re.search(r"<!-- default-config -->\n```yaml\n(.*?)```", reference, re.S)
    assert block, "docs/configuration.md lacks the default-config block"
    assert block.group(1) == (ROOT / "examples" / "config.yaml").read_text()
