"""Policy configuration: weights and thresholds, with defaults, validated key by key.

Parsing takes an already-loaded mapping (YAML is read by the caller) and raises `ConfigError`
naming the offending key, e.g. `weights.batch.topolgy: unknown key`.
"""

from __future__ import annotations

import math
import re
from collections.abc import Callable, Mapping
from dataclasses import dataclass, field, fields, replace
from types import MappingProxyType
from typing import Any

from scoring.fragmentation import FragmentationArgs
from scoring.groups import PREFERRED, REQUIRED, GroupArgs, Identity
from scoring.locality import LocalityArgs
from scoring.model import ANNOTATION_PREFIX, GPU_RESOURCE, WorkloadClass, mig_profile
from scoring.sharing import SharingArgs
from scoring.utilization import UtilizationArgs


class ConfigError(ValueError):
    """A configuration value or key that is not accepted; the message names the key."""


@dataclass(frozen=True)
class Weights:
    """Relative weight of each signal, and of allocation (spread for latency-critical, pack for batch)."""

    mig: float
    topology: float
    sharing: float
    locality: float
    utilization: float
    allocation: float
    fragmentation: float = 0.0


@dataclass(frozen=True)
class ClassifyArgs:
    priority_threshold: int = 100_000
    latency_critical_priority_classes: tuple[str, ...] = ("gpu-latency-critical",)


@dataclass(frozen=True)
class HeadroomArgs:
    node_selector: Mapping[str, str] = field(
        default_factory=lambda: MappingProxyType({f"{ANNOTATION_PREFIX}/pool": "inference"})
    )
    fraction: float = 0.25


@dataclass(frozen=True)
class AgentArgs:
    max_age_seconds: float = 600.0


DEFAULT_WEIGHTS = MappingProxyType({
    WorkloadClass.LATENCY_CRITICAL: Weights(
        mig=1, topology=3, sharing=1, locality=3, utilization=2, allocation=0, fragmentation=1000
    ),
    WorkloadClass.BATCH: Weights(
        mig=2, topology=2, sharing=2, locality=0.5, utilization=0, allocation=3, fragmentation=1000
    ),
})


@dataclass(frozen=True)
class PolicyConfig:
    classify: ClassifyArgs = ClassifyArgs()
    weights: Mapping[WorkloadClass, Weights] = field(default_factory=lambda: DEFAULT_WEIGHTS)
    headroom: HeadroomArgs = HeadroomArgs()
    locality: LocalityArgs = LocalityArgs()
    utilization: UtilizationArgs = UtilizationArgs()
    agent: AgentArgs = AgentArgs()
    sharing: SharingArgs = SharingArgs()
    fragmentation: FragmentationArgs = FragmentationArgs()
    groups: GroupArgs = GroupArgs()


_CLASS_KEYS = {"latencyCritical": WorkloadClass.LATENCY_CRITICAL, "batch": WorkloadClass.BATCH}


def _number(low: float, high: float | None) -> Callable[[Any, str], float]:
    def check(value: Any, path: str) -> float:
        if isinstance(value, bool) or not isinstance(value, (int, float)) or not math.isfinite(value):
            raise ConfigError(f"{path}: expected a finite number, got {value!r}")
        if value < low or (high is not None and value > high):
            bounds = f"between {low:g} and {high:g}" if high is not None else f"at least {low:g}"
            raise ConfigError(f"{path}: must be {bounds}, got {value!r}")
        return float(value)

    return check


def _int(value: Any, path: str) -> int:
    if isinstance(value, bool) or not isinstance(value, int):
        raise ConfigError(f"{path}: expected an integer, got {value!r}")
    return value


def _strings(value: Any, path: str) -> tuple[str, ...]:
    if not isinstance(value, list) or not all(isinstance(v, str) for v in value):
        raise ConfigError(f"{path}: expected a list of strings, got {value!r}")
    return tuple(value)


def _labels(value: Any, path: str) -> Mapping[str, str]:
    labels = _mapping(value, path)
    for key, item in labels.items():
        if not isinstance(item, str):
            raise ConfigError(f"{path}.{key}: expected a string, got {item!r}")
    return MappingProxyType(dict(labels))


_DNS_LABEL = r"[a-z0-9]([-a-z0-9]*[a-z0-9])?"
_RESOURCE = re.compile(
    rf"(?P<prefix>{_DNS_LABEL}(\.{_DNS_LABEL})*)/(?P<name>[A-Za-z0-9]([-A-Za-z0-9_.]*[A-Za-z0-9])?)"
)


def _extended_resource(value: Any, path: str) -> str:
    """An extended resource name as Kubernetes accepts one (`domain/name`, outside kubernetes.io)
    that is none of the NVIDIA device plugin's own."""
    match = _RESOURCE.fullmatch(value) if isinstance(value, str) else None
    if match is None or len(match["prefix"]) > 244 or len(match["name"]) > 63:
        raise ConfigError(f"{path}: expected an extended resource name like example.com/gpu-milli, got {value!r}")
    domain = match["prefix"]
    if domain == "kubernetes.io" or domain.endswith(".kubernetes.io"):
        raise ConfigError(f"{path}: {value!r} is in the kubernetes.io domain, which extended resources may not use")
    if value == GPU_RESOURCE or mig_profile(value) is not None:
        raise ConfigError(f"{path}: {value!r} is a whole-GPU or MIG resource, not a GPU share")
    return value


def _mode(value: Any, path: str) -> str:
    if value not in (REQUIRED, PREFERRED):
        raise ConfigError(f"{path}: expected {REQUIRED} or {PREFERRED}, got {value!r}")
    return value


def _identities(value: Any, path: str) -> tuple[Identity, ...]:
    """A list of {source, keys, sizeKey}: how pods name their group, tried in order."""
    if not isinstance(value, list):
        raise ConfigError(f"{path}: expected a list of {{source, keys, sizeKey}}, got {value!r}")
    out = []
    for i, item in enumerate(value):
        where = f"{path}[{i}]"
        entry = _mapping(item, where)
        _only(entry, where, ("source", "keys", "sizeKey"))
        keys = _strings(entry.get("keys"), f"{where}.keys")
        if not keys or not all(keys):
            raise ConfigError(f"{where}.keys: expected at least one label or annotation key")
        size_key = entry.get("sizeKey", "")
        source = entry.get("source", keys[0])
        if not isinstance(size_key, str) or not isinstance(source, str):
            raise ConfigError(f"{where}: source and sizeKey must be strings")
        out.append(Identity(source, keys, size_key))
    return tuple(out)


_fraction = _number(0.0, 1.0)
_positive = _number(1.0, None)
_weight = _number(0.0, None)

# YAML section -> (PolicyConfig field, {YAML key -> (dataclass field, parser)})
_SECTIONS: dict[str, tuple[str, dict[str, tuple[str, Callable[[Any, str], Any]]]]] = {
    "classification": ("classify", {
        "priorityThreshold": ("priority_threshold", _int),
        "latencyCriticalPriorityClasses": ("latency_critical_priority_classes", _strings),
    }),
    "headroom": ("headroom", {"nodeSelector": ("node_selector", _labels), "fraction": ("fraction", _fraction)}),
    "locality": ("locality", {
        "spreadFloor": ("spread_floor", _fraction),
        "requiredFraction": ("required_fraction", _fraction),
    }),
    "utilization": ("utilization", {"ttlSeconds": ("ttl_seconds", _positive)}),
    "agent": ("agent", {"maxAgeSeconds": ("max_age_seconds", _positive)}),
    "sharing": ("sharing", {"resource": ("resource", _extended_resource)}),
    "fragmentation": ("fragmentation", {"coverage": ("coverage", _fraction)}),
    "groups": ("groups", {
        "mode": ("mode", _mode),
        "holdSeconds": ("hold_seconds", _positive),
        "topologyLevels": ("levels", _strings),
        "identities": ("identities", _identities),
    }),
}


def parse(data: Any) -> PolicyConfig:
    """Build a `PolicyConfig` from a mapping; keys left out keep their defaults."""
    if data is None:
        return PolicyConfig()
    top = _mapping(data, "config")
    _only(top, "", (*_SECTIONS, "weights"))
    config = PolicyConfig()
    for name, (attr, keys) in _SECTIONS.items():
        if name not in top:
            continue
        section = _mapping(top[name], name)
        _only(section, name, tuple(keys))
        values = {keys[k][0]: keys[k][1](v, f"{name}.{k}") for k, v in section.items()}
        config = replace(config, **{attr: replace(getattr(config, attr), **values)})
    if "weights" in top:
        section = _mapping(top["weights"], "weights")
        _only(section, "weights", tuple(_CLASS_KEYS))
        weights = dict(config.weights)
        for key, cls in _CLASS_KEYS.items():
            if key in section:
                weights[cls] = _weights(section[key], f"weights.{key}", weights[cls])
        config = replace(config, weights=MappingProxyType(weights))
    return config


def _weights(data: Any, path: str, base: Weights) -> Weights:
    section = _mapping(data, path)
    names = tuple(f.name for f in fields(Weights))
    _only(section, path, names)
    weights = replace(base, **{k: _weight(v, f"{path}.{k}") for k, v in section.items()})
    if not any(getattr(weights, name) for name in names):
        raise ConfigError(f"{path}: at least one weight must be above 0")
    return weights


def _mapping(value: Any, path: str) -> Mapping[str, Any]:
    if not isinstance(value, Mapping):
        raise ConfigError(f"{path}: expected a mapping, got {type(value).__name__}")
    return value


def _only(section: Mapping[str, Any], path: str, allowed: tuple[str, ...]) -> None:
    for key in section:
        if key not in allowed:
            where = f"{path}.{key}" if path else str(key)
            raise ConfigError(f"{where}: unknown key (expected one of: {', '.join(allowed)})")
