"""The pre-encoded answers (extender/webhook/answers.py) say exactly what the plain per-node computation says."""

from __future__ import annotations

import json

import msgspec
from hypothesis import given, settings
from hypothesis import strategies as st

from extender.webhook.answers import UNKNOWN_NODE, Answers, filter_answer, passed_back, prioritize_answer
from scoring import policy
from scoring.model import Plan, ScoreBreakdown

# Node names include characters JSON must escape, and totals repeat so that ties occur.
NAMES = st.text(st.sampled_from('ab-."\\é'), min_size=1, max_size=4)
TOTALS = st.sampled_from([0.0, 0.1, 0.25, 0.5, 0.5000001, 0.75, 0.9, 1.0])


@st.composite
def breakdowns(draw, name: str) -> ScoreBreakdown:
    kind = draw(st.sampled_from(["feasible", "failed", "unresolvable"]))
    if kind == "feasible":
        return ScoreBreakdown(name, True, False, draw(TOTALS), {}, Plan(), "fits")
    summary = draw(st.sampled_from(["not enough free GPUs", 'no "H100" here', "ünknown"]))
    return ScoreBreakdown(name, False, kind == "unresolvable", 0.0, {}, Plan(), summary, summary=summary)


@st.composite
def histories(draw) -> tuple[Answers, dict[str, ScoreBreakdown]]:
    """Answers built by a random series of updates, and the breakdowns they should hold."""
    answers, expected = Answers.empty(), {}
    for _ in range(draw(st.integers(0, 6))):
        names = draw(st.lists(NAMES, max_size=8, unique=True))
        changes = {n: draw(st.none() | breakdowns(n)) for n in names}
        answers = answers.updated(changes)
        for name, breakdown in changes.items():
            if breakdown is None:
                expected.pop(name, None)
            else:
                expected[name] = breakdown
    return answers, expected


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_answers_match_the_per_node_computation(history, data):
    answers, expected = history
    assert {n: r.breakdown for n, r in answers.records.items()} == expected
    assert [(r.total, r.name) for r in answers.ranked] == sorted(
        (b.total, n) for n, b in expected.items() if b.feasible)
    assert all(json.loads(r.name_json) == r.name for r in answers.ranked)
    assert answers.rejected == sum(not b.feasible for b in expected.values())

    known = sorted(expected)
    names = data.draw(st.lists(st.sampled_from(known), unique=True) if known else st.just([]))
    unknown = data.draw(st.lists(NAMES.filter(lambda n: n not in expected), max_size=3, unique=True))
    names = data.draw(st.permutations(names + unknown))
    records = [answers.records.get(n) for n in names]
    best_only = data.draw(st.booleans())

    body, feasible, passed = filter_answer(answers, names, records, unknown, None, best_only)
    result = json.loads(body)
    # The integers kube-scheduler would get for every feasible candidate (0: not feasible).
    reference = policy.scheduler_scores(expected[n] for n in names if n in expected)
    fits = [n for n in names if n in expected and expected[n].feasible]
    # Best only: exactly the nodes that would have scored 10 when all were passed.
    winners = [n for n in fits if reference[n] == 10] if best_only else fits
    # kube-scheduler looks each NodeNames entry up and reads FailedNodes into a map: order does not matter.
    assert sorted(result["NodeNames"]) == sorted(winners)
    assert (feasible, passed) == (len(fits), len(winners))
    assert result["Nodes"] is None and result["Error"] == ""
    assert result["FailedNodes"] == {
        **{n: f"gpu-extender: {expected[n].summary}" for n in names
           if n in expected and not expected[n].feasible and not expected[n].unresolvable},
        **dict.fromkeys(unknown, UNKNOWN_NODE),
    }
    assert result["FailedAndUnresolvableNodes"] == {
        n: f"gpu-extender: {expected[n].summary}" for n in names if n in expected and expected[n].unresolvable}

    priorities = json.loads(prioritize_answer(answers, names, records, unknown, best_only))
    assert sorted(p["Host"] for p in priorities) == sorted(names)
    if best_only:  # sent the winners, it cannot tell them apart: 10 each, the in-tree plugins decide
        reference = {n: 10 if n in fits else 0 for n in reference}
    assert {p["Host"]: p["Score"] for p in priorities} == {**dict.fromkeys(unknown, 0), **reference}


def test_filter_answer_returns_node_objects_when_nodes_were_sent():
    answers = Answers.empty().updated({
        "a": ScoreBreakdown("a", True, False, 0.5, {}, Plan(), "fits"),
        "b": ScoreBreakdown("b", False, False, 0.0, {}, Plan(), "full", summary="full"),
    })
    sent = {"a": {"metadata": {"name": "a"}}, "b": {"metadata": {"name": "b"}}}
    body, feasible, passed = filter_answer(answers, ["a", "b"], [answers.records["a"], answers.records["b"]], [],
                                           sent, best_only=True)
    assert feasible == passed == 1
    assert json.loads(body) == {
        "Nodes": {"metadata": {}, "items": [{"metadata": {"name": "a"}}]}, "NodeNames": None,
        "FailedNodes": {"b": "gpu-extender: full"}, "FailedAndUnresolvableNodes": {}, "Error": "",
    }


@settings(max_examples=300, deadline=None)
@given(histories(), st.data())
def test_prioritize_of_the_filtered_list_is_the_whole_cluster_answer(history, data):
    """What kube-scheduler sends after a whole-cluster filter answer (that answer's NodeNames, as
    JSON) gets the answer the per-node computation gives; any other list is not recognised."""
    answers, expected = history
    known = sorted(expected)
    names = data.draw(st.lists(st.sampled_from(known), unique=True) if known else st.just([]))
    records = [answers.records.get(n) for n in names]
    best_only = data.draw(st.booleans())
    filtered = json.loads(filter_answer(answers, names, records, (), None, best_only)[0])["NodeNames"]
    answer = passed_back(answers, msgspec.json.encode(filtered), best_only)
    feasible = sorted(n for n, b in expected.items() if b.feasible)
    if sorted(names) == sorted(expected):  # a whole-cluster filter answer: recognised in its order only
        assert answer is not None
        if len(filtered) > 1:
            assert passed_back(answers, msgspec.json.encode(filtered[::-1]), best_only) is None
    if not best_only and sorted(filtered) != feasible:
        assert answer is None  # some feasible node was not a candidate
    if answer is not None:
        reference = policy.scheduler_scores(expected[n] for n in filtered)
        if best_only:
            reference = dict.fromkeys(filtered, 10)
        assert {p["Host"]: p["Score"] for p in json.loads(answer)} == reference
