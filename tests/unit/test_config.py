"""Policy configuration parsing: defaults, partial sections and key-path error messages."""

from __future__ import annotations

import math
from dataclasses import fields, replace

import pytest

from scoring.config import (
    DEFAULT_WEIGHTS,
    AgentArgs,
    ClassifyArgs,
    ConfigError,
    HeadroomArgs,
    PolicyConfig,
    Weights,
    parse,
)
from scoring.locality import LocalityArgs
from scoring.model import WorkloadClass
from scoring.sharing import SharingArgs
from scoring.utilization import UtilizationArgs

LC, BATCH = WorkloadClass.LATENCY_CRITICAL, WorkloadClass.BATCH


def error_of(data) -> str:
    with pytest.raises(ConfigError) as info:
        parse(data)
    return str(info.value)


# --- defaults ----------------------------------------------------------------------------------


@pytest.mark.parametrize("data", [None, {}])
def test_nothing_given_means_the_defaults(data):
    config = parse(data)
    assert config == PolicyConfig()
    assert config.classify == ClassifyArgs()
    assert config.headroom == HeadroomArgs()
    assert config.locality == LocalityArgs()
    assert config.utilization == UtilizationArgs()
    assert config.agent == AgentArgs()
    assert config.sharing == SharingArgs()
    assert dict(config.weights) == dict(DEFAULT_WEIGHTS)


def test_defaults_are_the_documented_ones():
    config = parse({})
    assert dict(config.headroom.node_selector) == {"gpu-extender.io/pool": "inference"}
    assert config.headroom.fraction == 0.25
    assert set(config.weights) == {LC, BATCH}


@pytest.mark.parametrize("section", ["classification", "headroom", "locality", "utilization", "agent", "weights"])
def test_empty_section_keeps_the_defaults(section):
    assert parse({section: {}}) == PolicyConfig()


# --- partial sections --------------------------------------------------------------------------


def test_one_key_of_a_section_keeps_its_other_keys_and_other_sections():
    config = parse({"headroom": {"fraction": 0.5}})
    assert config.headroom.fraction == 0.5
    assert dict(config.headroom.node_selector) == dict(HeadroomArgs().node_selector)
    assert config.classify == ClassifyArgs()
    assert config.locality == LocalityArgs()
    assert config.utilization == UtilizationArgs()
    assert config.agent == AgentArgs()
    assert config.sharing == SharingArgs()
    assert dict(config.weights) == dict(DEFAULT_WEIGHTS)


def test_every_section_key_reaches_its_field():
    config = parse({
        "classification": {"priorityThreshold": 5000, "latencyCriticalPriorityClasses": ["a", "b"]},
        "headroom": {"nodeSelector": {"pool": "serving"}, "fraction": 0.1},
        "locality": {"spreadFloor": 0.3, "requiredFraction": 0.8},
        "utilization": {"ttlSeconds": 30},
        "agent": {"maxAgeSeconds": 120},
    })
    assert config.classify == ClassifyArgs(priority_threshold=5000, latency_critical_priority_classes=("a", "b"))
    assert dict(config.headroom.node_selector) == {"pool": "serving"}
    assert config.headroom.fraction == 0.1
    assert config.locality == LocalityArgs(spread_floor=0.3, required_fraction=0.8)
    assert config.utilization.ttl_seconds == 30
    assert config.agent.max_age_seconds == 120


def test_partial_locality_keeps_the_other_default():
    config = parse({"locality": {"requiredFraction": 0.7}})
    assert config.locality.required_fraction == 0.7
    assert config.locality.spread_floor == LocalityArgs().spread_floor


def test_partial_classification_keeps_the_other_default():
    config = parse({"classification": {"priorityThreshold": 7}})
    assert config.classify.priority_threshold == 7
    assert config.classify.latency_critical_priority_classes == ClassifyArgs().latency_critical_priority_classes


def test_one_weight_keeps_the_class_other_weights_and_the_other_class():
    config = parse({"weights": {"batch": {"topology": 5}}})
    batch, default = config.weights[BATCH], DEFAULT_WEIGHTS[BATCH]
    assert batch.topology == 5
    assert (batch.mig, batch.locality, batch.utilization, batch.allocation) == (
        default.mig, default.locality, default.utilization, default.allocation,
    )
    assert config.weights[LC] == DEFAULT_WEIGHTS[LC]


def test_latency_critical_weights_use_the_camel_case_key():
    config = parse({"weights": {"latencyCritical": {"utilization": 0}}})
    assert config.weights[LC].utilization == 0
    assert config.weights[LC].topology == DEFAULT_WEIGHTS[LC].topology
    assert config.weights[BATCH] == DEFAULT_WEIGHTS[BATCH]


def test_parsing_weights_does_not_change_the_defaults():
    before = {cls: DEFAULT_WEIGHTS[cls] for cls in DEFAULT_WEIGHTS}
    parse({"weights": {"batch": {"mig": 9}, "latencyCritical": {"mig": 9}}})
    assert dict(DEFAULT_WEIGHTS) == before
    assert dict(PolicyConfig().weights) == before


def test_integer_values_are_accepted_for_numbers():
    config = parse({"headroom": {"fraction": 0}, "weights": {"batch": {"allocation": 1}}})
    assert config.headroom.fraction == 0
    assert config.weights[BATCH].allocation == 1


def test_fraction_bounds_are_inclusive():
    assert parse({"headroom": {"fraction": 1}}).headroom.fraction == 1
    assert parse({"locality": {"spreadFloor": 0.0}}).locality.spread_floor == 0


def test_some_zero_weights_are_allowed():
    config = parse({"weights": {"batch": {"mig": 0, "topology": 0, "sharing": 0, "locality": 0, "utilization": 0}}})
    assert config.weights[BATCH] == replace(
        DEFAULT_WEIGHTS[BATCH], mig=0, topology=0, sharing=0, locality=0, utilization=0
    )


# --- errors name the full key path -------------------------------------------------------------


def test_config_error_is_a_value_error():
    assert issubclass(ConfigError, ValueError)
    with pytest.raises(ValueError):
        parse({"nonsense": 1})


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"bogus": 1}, "bogus"),
        ({"weights": {"batch": {"topolgy": 1}}}, "weights.batch.topolgy"),
        ({"weights": {"latencyCritical": {"alloc": 1}}}, "weights.latencyCritical.alloc"),
        ({"weights": {"batchy": {}}}, "weights.batchy"),
        ({"headroom": {"fractoin": 0.2}}, "headroom.fractoin"),
        ({"classification": {"threshold": 1}}, "classification.threshold"),
        ({"locality": {"spread_floor": 0.2}}, "locality.spread_floor"),
        ({"utilization": {"ttl": 10}}, "utilization.ttl"),
        ({"agent": {"maxAge": 10}}, "agent.maxAge"),
    ],
)
def test_unknown_keys_are_named_by_their_full_path(data, path):
    message = error_of(data)
    assert message.startswith(f"{path}:")
    assert "unknown key" in message


def test_unknown_key_lists_the_accepted_keys():
    message = error_of({"weights": {"batch": {"topolgy": 1}}})
    for key in ("mig", "topology", "sharing", "locality", "utilization", "allocation"):
        assert key in message


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"headroom": {"fraction": "0.5"}}, "headroom.fraction"),
        ({"headroom": {"fraction": None}}, "headroom.fraction"),
        ({"headroom": {"fraction": True}}, "headroom.fraction"),
        ({"headroom": {"nodeSelector": "pool=inference"}}, "headroom.nodeSelector"),
        ({"headroom": {"nodeSelector": {"pool": 1}}}, "headroom.nodeSelector.pool"),
        ({"headroom": []}, "headroom"),
        ({"classification": {"priorityThreshold": 1.5}}, "classification.priorityThreshold"),
        ({"classification": {"priorityThreshold": "100"}}, "classification.priorityThreshold"),
        ({"classification": {"priorityThreshold": True}}, "classification.priorityThreshold"),
        ({"classification": {"latencyCriticalPriorityClasses": "gpu-latency-critical"}},
         "classification.latencyCriticalPriorityClasses"),
        ({"classification": {"latencyCriticalPriorityClasses": ["ok", 3]}},
         "classification.latencyCriticalPriorityClasses"),
        ({"locality": {"spreadFloor": "half"}}, "locality.spreadFloor"),
        ({"utilization": {"ttlSeconds": [90]}}, "utilization.ttlSeconds"),
        ({"agent": {"maxAgeSeconds": "600"}}, "agent.maxAgeSeconds"),
        ({"weights": []}, "weights"),
        ({"weights": {"batch": "heavy"}}, "weights.batch"),
        ({"weights": {"batch": {"mig": "2"}}}, "weights.batch.mig"),
        ({"weights": {"latencyCritical": {"topology": False}}}, "weights.latencyCritical.topology"),
    ],
)
def test_wrong_types_are_named_by_their_full_path(data, path):
    assert error_of(data).startswith(f"{path}:")


def test_a_top_level_that_is_not_a_mapping_is_rejected():
    with pytest.raises(ConfigError):
        parse(["weights"])


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"headroom": {"fraction": 1.5}}, "headroom.fraction"),
        ({"headroom": {"fraction": -0.1}}, "headroom.fraction"),
        ({"locality": {"spreadFloor": 2}}, "locality.spreadFloor"),
        ({"locality": {"requiredFraction": -1}}, "locality.requiredFraction"),
        ({"locality": {"requiredFraction": 1.01}}, "locality.requiredFraction"),
        ({"utilization": {"ttlSeconds": 0}}, "utilization.ttlSeconds"),
        ({"agent": {"maxAgeSeconds": -5}}, "agent.maxAgeSeconds"),
        ({"weights": {"latencyCritical": {"topology": -1}}}, "weights.latencyCritical.topology"),
    ],
)
def test_out_of_range_values_are_named_by_their_full_path(data, path):
    message = error_of(data)
    assert message.startswith(f"{path}:")
    assert "must be" in message


@pytest.mark.parametrize(
    ("data", "path"),
    [
        ({"headroom": {"fraction": math.nan}}, "headroom.fraction"),
        ({"locality": {"spreadFloor": math.nan}}, "locality.spreadFloor"),
        ({"locality": {"requiredFraction": math.nan}}, "locality.requiredFraction"),
    ],
)
def test_nan_is_not_a_fraction(data, path):
    # YAML reads `.nan` as a float; NaN is not between 0 and 1.
    assert error_of(data).startswith(f"{path}:")


@pytest.mark.parametrize("cls", ["batch", "latencyCritical"])
def test_all_zero_weights_are_rejected(cls):
    zero = {f.name: 0 for f in fields(Weights)}
    message = error_of({"weights": {cls: zero}})
    assert message.startswith(f"weights.{cls}:")


def test_zeroing_the_only_nonzero_weights_left_is_rejected():
    # Defaults fill in keys not given: zeroing only some weights is fine, zeroing all is not.
    given = {f.name: 0 for f in fields(Weights) if f.name != "allocation"}
    parse({"weights": {"batch": given}})
    with pytest.raises(ConfigError, match=r"^weights\.batch:"):
        parse({"weights": {"batch": {**given, "allocation": 0}}})


@pytest.mark.parametrize("cls", ["batch", "latencyCritical"])
def test_infinite_weight_is_rejected(cls):
    # YAML reads `.inf` as a float. An infinite weight makes every total inf/inf = NaN, and
    # `policy.rank` then fails converting NaN to an integer: the config must not accept it.
    assert error_of({"weights": {cls: {"topology": math.inf}}}).startswith(f"weights.{cls}.topology:")


# --- sharing -----------------------------------------------------------------------------------


def test_the_share_resource_defaults_to_ours_and_can_be_renamed():
    assert parse({}).sharing.resource == "gpu-extender.io/gpu-milli"
    assert parse({"sharing": {"resource": "example.com/vgpu-milli"}}).sharing.resource == "example.com/vgpu-milli"


@pytest.mark.parametrize(
    ("value", "says"),
    [
        ("gpu-milli", "extended resource name"),  # no domain
        ("example.com/", "extended resource name"),
        ("Example.com/gpu", "extended resource name"),  # domains are lower case
        ("example.com/gpu milli", "extended resource name"),
        ("example.com/" + "m" * 64, "extended resource name"),
        (1000, "extended resource name"),
        (None, "extended resource name"),
        ("kubernetes.io/gpu-milli", "kubernetes.io"),
        ("node.kubernetes.io/gpu-milli", "kubernetes.io"),
        ("nvidia.com/gpu", "not a GPU share"),
        ("nvidia.com/mig-1g.10gb", "not a GPU share"),
    ],
)
def test_a_bad_share_resource_is_a_named_error(value, says):
    message = error_of({"sharing": {"resource": value}})
    assert message.startswith("sharing.resource:")
    assert says in message


def test_unknown_sharing_keys_are_rejected():
    assert error_of({"sharing": {"resouce": "example.com/x"}}).startswith("sharing.resouce: unknown key")
    assert error_of({"sharing": "example.com/x"}).startswith("sharing:")
