"""The kube-scheduler extender v1 wire types (k8s.io/kube-scheduler/extender/v1) and their codec.

Go encodes these structs without JSON tags, so keys are the capitalised Go field names and nil
values are `null`. Embedded Pods and Nodes stay plain dicts: they carry hundreds of optional fields
and we read only a few (extender/convert.py).
"""

from __future__ import annotations

from typing import Any, TypeVar

import msgspec

Obj = dict[str, Any]


class ExtenderArgs(msgspec.Struct):
    """Filter and prioritize request. `Nodes` when nodeCacheCapable is false, else `NodeNames`."""

    Pod: Obj
    Nodes: Obj | None = None
    NodeNames: list[str] | None = None


class PrioritizeArgs(msgspec.Struct):
    """ExtenderArgs as prioritize reads them: `NodeNames` kept as its JSON bytes, decoded only when
    they are not the list filter answered with (extender/webhook/answers.py `passed_back`)."""

    Pod: Obj
    Nodes: Obj | None = None
    NodeNames: msgspec.Raw = msgspec.Raw(b"null")

    def args(self) -> ExtenderArgs:
        return ExtenderArgs(self.Pod, self.Nodes, decode(self.NodeNames, list[str] | None, "ExtenderArgs.NodeNames"))


class ExtenderFilterResult(msgspec.Struct, omit_defaults=False):
    Nodes: Obj | None = None
    NodeNames: list[str] | None = None
    FailedNodes: dict[str, str] = {}
    FailedAndUnresolvableNodes: dict[str, str] = {}
    Error: str = ""


class ExtenderBindingArgs(msgspec.Struct):
    PodName: str
    PodNamespace: str
    PodUID: str
    Node: str


class ExtenderBindingResult(msgspec.Struct, omit_defaults=False):
    Error: str = ""


class MetaPod(msgspec.Struct):
    UID: str


class MetaVictims(msgspec.Struct):
    Pods: list[MetaPod] | None = None
    NumPDBViolations: int = 0


class Victims(msgspec.Struct):
    Pods: list[Obj] | None = None
    NumPDBViolations: int = 0


class ExtenderPreemptionArgs(msgspec.Struct):
    Pod: Obj
    NodeNameToVictims: dict[str, Victims | None] | None = None
    NodeNameToMetaVictims: dict[str, MetaVictims | None] | None = None


class ExtenderPreemptionResult(msgspec.Struct, omit_defaults=False):
    NodeNameToMetaVictims: dict[str, MetaVictims] = {}


class WireError(ValueError):
    """A request body that is not what kube-scheduler sends; the message says what is wrong."""


T = TypeVar("T")
_decoders: dict[type, msgspec.json.Decoder] = {}
_encoder = msgspec.json.Encoder()


def decode(body: bytes | msgspec.Raw, kind: type[T], what: str = "") -> T:
    """`body` decoded as `kind`; `what` names it in errors (default: the type's name)."""
    what = what or kind.__name__
    decoder = _decoders.get(kind)
    if decoder is None:
        decoder = _decoders[kind] = msgspec.json.Decoder(kind)
    try:
        return decoder.decode(body)
    except msgspec.ValidationError as exc:
        raise WireError(f"{what}: {exc}") from None
    except msgspec.DecodeError as exc:
        raise WireError(f"{what}: body is not JSON ({exc})") from None


def encode(value: Any) -> bytes:
    return _encoder.encode(value)


# Answers assembled from pre-encoded pieces. Filter and prioritize at thousands of nodes are
# dominated by per-node work; extender/webhook/answers.py keeps each node's piece with its breakdown and
# joins them here (bytes.join over pieces runs at C speed).


def failed_entry(name: str, message: str) -> bytes:
    """One `FailedNodesMap` entry: `"name":"message"`."""
    return _encoder.encode(name) + b":" + _encoder.encode(message)


def filter_result(
    nodes: Obj | None, node_names: list[str] | None, failed: list[bytes], unresolvable: list[bytes]
) -> bytes:
    """An ExtenderFilterResult from the passing nodes (one of `nodes`, `node_names`) and
    `failed_entry` pieces."""
    return b"".join((
        b'{"Nodes":', _encoder.encode(nodes), b',"NodeNames":', _encoder.encode(node_names),
        b',"FailedNodes":{', b",".join(failed), b'},"FailedAndUnresolvableNodes":{', b",".join(unresolvable),
        b'},"Error":""}',
    ))


def host_priorities(bands: list[tuple[int, list[bytes]]]) -> bytes:
    """A HostPriorityList, `[{"Host": name, "Score": n}, ...]` (Score an int64), from (score,
    node names as JSON) bands."""
    entries = [
        b'{"Host":' + (b',"Score":%d},{"Host":' % score).join(names) + b',"Score":%d}' % score
        for score, names in bands if names
    ]
    return b"[" + b",".join(entries) + b"]"
