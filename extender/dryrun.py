"""The dry run (`gpu-extender score`): how every node of a snapshot scores for one pod, the
devices it would get there and why, as a table or as JSON (`extender.report`)."""

from __future__ import annotations

import sys
from dataclasses import replace
from pathlib import Path
from typing import Any

import orjson
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from extender import convert, snapshot
from extender.cluster import ClusterView
from extender.dcgm import readings
from extender.report import report
from extender.webhook.decisions import Decider, Decision
from scoring import config as policy_config
from scoring import groups, policy
from scoring.model import MILLI_PER_GPU, SIGNALS, GroupRef, Plan, PodRequest, ScoreBreakdown

HEADERS = {"topology": "nvlink", "sharing": "share", "locality": "cache", "utilization": "util",
           "fragmentation": "frag"}  # the table's short names for the signals
TABLE_WIDTH = 120


class InputError(Exception):
    """A file the dry run cannot use; the message names it and says why."""


def bundled_examples() -> Path:
    """The example cluster shipped with the package (or beside it in a source checkout)."""
    here = Path(__file__).resolve().parent
    for candidate in (here / "examples", here.parent / "examples"):
        if (candidate / "cluster.yaml").is_file():
            return candidate
    raise snapshot.FileError("the bundled example cluster is missing from this installation")


def run(pods: list[Path], cluster: Path | None, metrics: list[Path], config: Path | None, output: str,
        group_size: int | None = None) -> None:
    """Score every node of `cluster` (default: the bundled example and its DCGM dumps) for the pod
    in `pods` and print it as `output` ("table" or "json"); raises InputError on bad input. Several
    pods (one group), or `group_size`: the first pod as the first member of its group."""
    try:
        cfg = policy_config.parse(snapshot.read_document(config)) if config else policy_config.PolicyConfig()
        requests = []
        for pod in pods:
            try:
                requests.append(convert.pod_request(snapshot.read_document(pod), cfg))
            except convert.BadObject as exc:
                raise convert.BadObject(f"{pod}: {exc}") from None
        request = _as_group(requests, pods, group_size)
        if cluster is None:
            examples = bundled_examples()
            cluster = examples / "cluster.yaml"
            metrics = metrics or sorted((examples / "metrics").glob("*.prom"))
        view = ClusterView.from_snapshot(cluster, metrics, cfg)
    except policy_config.ConfigError as exc:
        raise InputError(f"{config}: {exc}") from None
    except (snapshot.FileError, convert.BadObject, readings.MetricsError) as exc:
        raise InputError(str(exc)) from None
    nodes = {node.name: node for node in view.nodes()}
    if request.group is None:
        decisions = policy.evaluate(list(nodes.values()), request, view.samples, view.now(), cfg, view.target.workload)
        group = None
    else:  # as the webhook decides for a member: its own decisions, then its group's (extender/webhook/members.py)
        decision = Decider(view).decide_request(request, list(nodes))
        decisions = policy.rank(decision.breakdowns.values())
        group = group_report(view, request, decision)
    if output == "json":
        doc = report(request, decisions, nodes) | ({"group": group} if group else {})
        sys.stdout.write(orjson.dumps(doc, option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        console = Console()
        if not console.is_terminal:  # piped: wide enough for every column, not rich's 80
            console.width = max(console.width, TABLE_WIDTH)
        if group:
            _render_group(console, group)
        _render(console, request, decisions)


def _as_group(requests: list[PodRequest], pods: list[Path], size: int | None) -> PodRequest:
    """The first pod's request, as a group member when several pods or a size are given."""
    first = requests[0]
    if len(requests) == 1 and size is None:
        return first
    names = {r.group.name if r.group else None for r in requests}
    if len(names) > 1:
        raise InputError(f"{', '.join(map(str, pods))}: the pods belong to different groups ({names})")
    ref = first.group or GroupRef(f"{first.namespace}/{first.name}", 0)
    return replace(first, group=GroupRef(ref.name, max(size or 0, ref.size, len(requests))))


def group_report(view: ClusterView, request: PodRequest, decision: Decision) -> dict[str, Any]:
    """The group, its domain (or why none), and every domain's room for it at each level."""
    assert request.group is not None
    name = request.group.name
    seen = [n for r in decision.records if r is not None and (n := view.node_for_group(r.breakdown.node, name))]
    status = view.group_status(name)
    doc: dict[str, Any] = {"name": name, "size": request.group.size, "gpusPerMember": request.gpus}
    if status is None:
        doc["shortfall"] = next((r.breakdown.reason for r in decision.records if r is not None), "")
    else:
        doc |= status
    free = {n.name: len(groups.free_gpus(n)) for n in seen}  # as the group sees them: its held room is free
    doc["domains"] = [
        {"level": key or "(cluster)", "domain": str(domain), "nodes": len(members),
         "freeGpus": sum(free[n.name] for n in members),
         "room": sum(groups.room(free[n.name], request) for n in members if free[n.name] >= max(request.gpus, 1))}
        for key in groups.present_levels(seen, view.config.groups.levels)
        for domain, members in sorted(groups.by_domain(seen, key).items(), key=lambda kv: (kv[0].key, kv[0].value))
    ]
    return doc


def _render_group(console: Console, group: dict[str, Any]) -> None:
    table = Table(title=f"group {group['name']}: {group['size']} pods × {group['gpusPerMember']} GPUs",
                  title_justify="left", box=box.SIMPLE_HEAD)
    for column in ("level", "domain", "nodes", "free GPUs", "room (pods)"):
        table.add_column(column, justify="left" if column in ("level", "domain") else "right")
    for d in group["domains"]:
        table.add_row(d["level"], d["domain"], str(d["nodes"]), str(d["freeGpus"]), str(d["room"]))
    console.print(table)
    if "shortfall" in group:
        console.print(f"no domain: {escape(group['shortfall'])}", highlight=False)
    else:
        held = ", ".join(f"{n} GPU {','.join(map(str, g))}" for n, g in group["held"].items()) or "nothing"
        console.print(f"chosen: {escape(group['domain'])}; held for the rest: {escape(held)}", highlight=False)


def _render(console: Console, request: PodRequest, decisions: list[ScoreBreakdown]) -> None:
    table = Table(title=f"{request.key} ({request.workload_class.value})", title_justify="left",
                  box=box.SIMPLE_HEAD)
    signals = (*SIGNALS, "group") if request.group is not None else SIGNALS
    for column in ("node", "fit", "score", *signals, "plan"):
        table.add_column(HEADERS.get(column, column), justify="right" if column == "score" else "left",
                         no_wrap=column != "plan")
    for d in decisions:
        cells = []
        for name in signals:
            result = d.signals.get(name)
            cells.append("-" if result is None or not result.applicable else f"{result.score:.2f}")
        plan = _plan_text(d.plan) if d.feasible else ""
        table.add_row(d.node, "yes" if d.feasible else "no", str(d.score), *cells, plan)
    console.print(table)
    console.print("why:")
    for d in decisions:
        console.print(f"  [bold]{escape(d.node)}[/bold]: {escape(d.reason)}", highlight=False)


def _plan_text(plan: Plan) -> str:
    parts = [f"GPU {','.join(map(str, plan.gpus))}"] if plan.gpus else []
    parts += [f"{s.profile} GPU {s.gpu}/{s.start}" for s in plan.mig]
    if plan.share is not None:
        parts.append(f"GPU {plan.share.gpu} ({plan.share.milli}/{MILLI_PER_GPU})")
    return " ".join(parts) or "any"
