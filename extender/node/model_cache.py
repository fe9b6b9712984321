"""The models cached on this node's SSD, as the model-cache annotation publishes them:
model id -> bytes (`scan_model_cache`)."""

from __future__ import annotations

import json
import logging
import os
from collections.abc import Iterator
from pathlib import Path

log = logging.getLogger("gpu_extender.agent")
MANIFEST = "models.json"
HF_MODEL_PREFIX = "models--"
HF_OTHER_PREFIXES = ("datasets--", "spaces--")


class CacheError(Exception):
    """The model-cache directory cannot be read as a whole (its listing or its manifest)."""


def scan_model_cache(root: Path) -> dict[str, int]:
    """Model id -> bytes cached under `root`.

    With a `models.json` in `root` (a JSON object `{"model id": bytes}`), that file alone says
    what is cached; entries whose value is not a non-negative integer are skipped with a log
    line. Otherwise every folder in `root` is read:
    - `models--ORG--NAME` (a Hugging Face hub cache) is model `ORG/NAME`;
    - `datasets--*`, `spaces--*`, hidden entries, plain files and symlinks are not models;
    - a folder with files of its own is the model the folder names (`gpt2`);
    - a folder with only folders in it is an organisation, each subfolder the model `ORG/NAME`
      (`meta-llama/Llama-3.1-8B-Instruct`, as `huggingface-cli download --local-dir` lays it out).
    A model's bytes are the sizes of the regular files under its folder, symlinks not followed
    (a hub cache's snapshots link to its blobs, which count once). Models of 0 bytes are left
    out; a model found twice counts its larger copy. A folder that cannot be read is skipped
    with a log line, never counted in part. A missing `root` is an empty cache; a `root` that
    cannot be listed, or a manifest that cannot be read, is a CacheError.
    """
    manifest = root / MANIFEST
    if manifest.exists():
        return _read_manifest(manifest)
    try:
        entries = _entries(root)
    except FileNotFoundError:
        log.warning("model cache %s does not exist: reporting no cached models", root)
        return {}
    except OSError as exc:
        raise CacheError(f"cannot list the model cache {root}: {exc}") from None
    cache: dict[str, int] = {}
    for model, path in _models(entries):
        try:
            size = _tree_bytes(path)
        except OSError as exc:
            log.warning("model cache: %s (%s) cannot be read, skipped: %s", path, model, exc)
            continue
        if size:
            cache[model] = max(size, cache.get(model, 0))
    return cache


def _read_manifest(manifest: Path) -> dict[str, int]:
    try:
        data = json.loads(manifest.read_text())
    except (OSError, ValueError) as exc:
        raise CacheError(f"cannot read the model-cache manifest {manifest}: {exc}") from None
    if not isinstance(data, dict):
        raise CacheError(f"{manifest} must be a JSON object of model id -> bytes")
    cache = {}
    for model, size in data.items():
        if not model or isinstance(size, bool) or not isinstance(size, int) or size < 0:
            log.warning("%s: entry %r: %r is not a byte count, skipped", manifest, model, size)
        elif size:
            cache[model] = size
    return cache


def _entries(path: str | Path) -> list[os.DirEntry[str]]:
    with os.scandir(path) as it:
        return sorted(it, key=lambda e: e.name)


def _is_model_dir(entry: os.DirEntry[str]) -> bool:
    return (not entry.name.startswith((".", *HF_OTHER_PREFIXES))) and entry.is_dir(follow_symlinks=False)


def _models(entries: list[os.DirEntry[str]]) -> Iterator[tuple[str, str]]:
    """(model id, folder) for each model folder among a cache's top-level entries."""
    for entry in filter(_is_model_dir, entries):
        if entry.name.startswith(HF_MODEL_PREFIX):
            yield entry.name.removeprefix(HF_MODEL_PREFIX).replace("--", "/"), entry.path
            continue
        try:
            children = _entries(entry.path)
        except OSError as exc:
            log.warning("model cache: %s cannot be read, skipped: %s", entry.path, exc)
            continue
        if any(child.is_file(follow_symlinks=False) for child in children):
            yield entry.name, entry.path
        else:
            for child in filter(_is_model_dir, children):
                yield f"{entry.name}/{child.name}", child.path


def _tree_bytes(path: str) -> int:
    total = 0
    folders = [path]
    while folders:
        for entry in _entries(folders.pop()):
            if entry.is_dir(follow_symlinks=False):
                folders.append(entry.path)
            elif entry.is_file(follow_symlinks=False):
                total += entry.stat(follow_symlinks=False).st_size
    return total
