"""The model-cache scan: folders (plain, organisation/model, Hugging Face hub cache), the
models.json manifest, and what is skipped."""

from __future__ import annotations

import json
import logging
import os
from pathlib import Path

import pytest

from extender.node import model_cache
from extender.node.model_cache import CacheError, scan_model_cache


def write(path: Path, size: int) -> None:
    path.parent.mkdir(parents=True, exist_ok=True)
    path.write_bytes(b"\0" * size)


@pytest.fixture
def cache(tmp_path: Path) -> Path:
    root = tmp_path / "models"
    write(root / "gpt2" / "config.json", 10)
    write(root / "gpt2" / "model.safetensors", 1000)
    write(root / "gpt2" / "onnx" / "model.onnx", 5)
    write(root / "meta-llama" / "Llama-3.1-8B-Instruct" / "config.json", 7)
    write(root / "meta-llama" / "Llama-3.1-8B-Instruct" / "model-00001.safetensors", 300)
    write(root / "meta-llama" / "Llama-3.1-70B-Instruct" / "model.safetensors", 3000)
    hub = root / "models--Qwen--Qwen2.5-7B-Instruct"
    write(hub / "blobs" / "aaaa", 100)
    write(hub / "blobs" / "bbbb", 50)
    (hub / "refs").mkdir()
    (hub / "refs" / "main").write_text("0123abcd")  # 8 bytes
    (hub / "snapshots" / "0123abcd").mkdir(parents=True)
    os.symlink("../../blobs/aaaa", hub / "snapshots" / "0123abcd" / "model.safetensors")
    write(root / "datasets--squad--v2" / "blobs" / "cccc", 9)
    write(root / ".locks" / "models--Qwen--Qwen2.5-7B-Instruct" / "x.lock", 1)
    (root / "empty-model").mkdir()
    write(root / "README.md", 20)
    os.symlink(root / "gpt2", root / "gpt2-link")
    os.symlink(root / "meta-llama", root / "gpt2" / "onnx" / "elsewhere")
    return root


def test_folders_organisations_and_the_hub_cache(cache: Path):
    assert scan_model_cache(cache) == {
        "gpt2": 1015,
        "meta-llama/Llama-3.1-8B-Instruct": 307,
        "meta-llama/Llama-3.1-70B-Instruct": 3000,
        "Qwen/Qwen2.5-7B-Instruct": 158,  # blobs and refs; the snapshot's symlink is not followed
    }


def test_a_folder_that_cannot_be_read_is_skipped_whole(cache: Path, monkeypatch, caplog):
    unreadable = {str(cache / "meta-llama" / "Llama-3.1-70B-Instruct"), str(cache / "gpt2" / "onnx")}
    real_scandir = os.scandir

    def scandir(path):
        if str(path) in unreadable:
            raise PermissionError(13, "Permission denied", str(path))
        return real_scandir(path)

    monkeypatch.setattr(model_cache.os, "scandir", scandir)
    assert scan_model_cache(cache) == {"meta-llama/Llama-3.1-8B-Instruct": 307, "Qwen/Qwen2.5-7B-Instruct": 158}
    assert "Llama-3.1-70B-Instruct" in caplog.text and "gpt2" in caplog.text and "Permission denied" in caplog.text


def test_a_manifest_says_what_is_cached(cache: Path, caplog):
    manifest = {"meta-llama/Llama-3.1-70B-Instruct": 151_000_000_000, "BAAI/bge-large-en-v1.5": 1_340_000_000,
                "not-yet": 0, "negative": -1, "text": "12", "flag": True, "": 5}
    (cache / "models.json").write_text(json.dumps(manifest))
    with caplog.at_level(logging.WARNING):
        assert scan_model_cache(cache) == {"meta-llama/Llama-3.1-70B-Instruct": 151_000_000_000,
                                           "BAAI/bge-large-en-v1.5": 1_340_000_000}
    for bad in ("negative", "text", "flag"):
        assert f"'{bad}'" in caplog.text


@pytest.mark.parametrize("content", ["{not json", '["a", 1]', ""])
def test_a_manifest_that_cannot_be_read_fails_the_scan(tmp_path: Path, content: str):
    (tmp_path / "models.json").write_text(content)
    with pytest.raises(CacheError, match="models.json"):
        scan_model_cache(tmp_path)


def test_a_missing_cache_is_empty_and_an_unlistable_one_fails(tmp_path: Path, monkeypatch, caplog):
    assert scan_model_cache(tmp_path / "absent") == {}
    assert "does not exist" in caplog.text

    def scandir(path):
        raise PermissionError(13, "Permission denied", str(path))

    monkeypatch.setattr(model_cache.os, "scandir", scandir)
    with pytest.raises(CacheError, match="Permission denied"):
        scan_model_cache(tmp_path)
