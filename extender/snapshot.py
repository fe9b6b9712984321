"""Reading YAML/JSON files: single documents (a pod, a config) and cluster snapshots.

A snapshot is what `kubectl get nodes,pods -A -o yaml` (or `-o json`) prints: a `List` whose
items are Nodes and Pods. No format of our own.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import orjson
import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class FileError(ValueError):
    """A file that cannot be read or parsed; the message names it."""


def read_document(path: Path) -> Any:
    """The one YAML or JSON document in `path`."""
    try:
        raw = path.read_bytes()
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror}") from None
    if raw.lstrip()[:1] in (b"{", b"["):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FileError(f"{path} is not valid JSON: {exc}") from None
    try:
        return yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise FileError(f"{path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None


def load_snapshot(path: Path) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(nodes, pods) from a kubectl List (or NodeList/PodList, or one object)."""
    data = read_document(path)
    if not isinstance(data, dict):
        raise FileError(f"{path}: expected a Kubernetes List, got {type(data).__name__}")
    items = data.get("items") if "items" in data else [data]
    if not isinstance(items, list):
        raise FileError(f"{path}: 'items' must be a list")
    list_kind = str(data.get("kind", ""))
    nodes, pods = [], []
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("kind") or list_kind.removesuffix("List")
        if kind == "Node":
            nodes.append(item)
        elif kind == "Pod":
            pods.append(item)
    if not nodes:
        raise FileError(f"{path}: no Node objects found (expected `kubectl get nodes,pods -A -o yaml`)")
    return nodes, pods
