"""Reading YAML/JSON files: single documents (a pod, a config) and cluster snapshots.

A snapshot is what `kubectl get nodes,pods -A -o yaml` (or `-o json`) prints: a `List` whose
items are Nodes and Pods. No format of our own.
"""

from __future__ import annotations

from collections.abc import Callable, Iterable, Iterator
from pathlib import Path
from typing import Any

import msgspec
import orjson
import yaml

_Loader = getattr(yaml, "CSafeLoader", yaml.SafeLoader)


class FileError(ValueError):
    """A file that cannot be read or parsed; the message names it."""


def read_document(path: Path) -> Any:
    """The one YAML or JSON document in `path`."""
    raw = _read(path)
    if _is_json(raw):
        try:
            return orjson.loads(raw)
        except orjson.JSONDecodeError as exc:
            raise FileError(f"{path} is not valid JSON: {exc}") from None
    return _parse_yaml(path, raw)


def _read(path: Path) -> bytes:
    try:
        return path.read_bytes()
    except OSError as exc:
        raise FileError(f"cannot read {path}: {exc.strerror}") from None


def _is_json(raw: bytes) -> bool:
    return raw.lstrip()[:1] in (b"{", b"[")


def _parse_yaml(path: Path, raw: bytes) -> Any:
    try:
        return yaml.load(raw, Loader=_Loader)
    except yaml.YAMLError as exc:
        where = getattr(exc, "problem_mark", None)
        line = f" at line {where.line + 1}" if where else ""
        raise FileError(f"{path} is not valid YAML{line}: {getattr(exc, 'problem', exc)}") from None


Keep = Callable[[str, dict[str, Any]], "dict[str, Any] | None"]


class _List(msgspec.Struct):
    """A JSON List with its items left undecoded."""

    kind: str = ""
    items: list[msgspec.Raw] | None = None


def load_snapshot(path: Path, keep: Keep | None = None) -> tuple[list[dict[str, Any]], list[dict[str, Any]]]:
    """(nodes, pods) from a kubectl List (or NodeList/PodList, or one object).

    `keep(kind, object)` returns what to keep of each Node and Pod (None: nothing). JSON items are
    decoded one at a time and handed to it, so that a snapshot of 50,000 pods is never in memory
    as a whole: its memory is reused item after item instead of left in fragments.
    """
    nodes, pods = [], []
    for kind, item in _items(path):
        kept = keep(kind, item) if keep else item
        if kept is not None:
            (nodes if kind == "Node" else pods).append(kept)
    if not nodes:
        raise FileError(f"{path}: no Node objects found (expected `kubectl get nodes,pods -A -o yaml`)")
    return nodes, pods


def _items(path: Path) -> Iterator[tuple[str, dict[str, Any]]]:
    raw = _read(path)
    if _is_json(raw):
        try:
            document = msgspec.json.decode(raw, type=_List)
            items = document.items if document.items is not None else [msgspec.Raw(raw)]
            list_kind = document.kind
            objects = (msgspec.json.decode(item) for item in items)
            yield from _nodes_and_pods(objects, list_kind)
        except (msgspec.DecodeError, msgspec.ValidationError) as exc:
            raise FileError(f"{path} is not a valid JSON List: {exc}") from None
        return
    data = _parse_yaml(path, raw)
    if not isinstance(data, dict):
        raise FileError(f"{path}: expected a Kubernetes List, got {type(data).__name__}")
    items = data.get("items") if "items" in data else [data]
    if not isinstance(items, list):
        raise FileError(f"{path}: 'items' must be a list")
    yield from _nodes_and_pods(items, str(data.get("kind", "")))


def _nodes_and_pods(items: Iterable[Any], list_kind: str) -> Iterator[tuple[str, dict[str, Any]]]:
    for item in items:
        if not isinstance(item, dict):
            continue
        kind = item.get("kind") or list_kind.removesuffix("List")
        if kind in ("Node", "Pod"):
            yield kind, item
