"""The dry run (`gpu-extender score`): how every node of a snapshot scores for one pod, the
devices it would get there and why, as a table or as JSON (`extender.report`)."""

from __future__ import annotations

import sys
from pathlib import Path

import orjson
from rich import box
from rich.console import Console
from rich.markup import escape
from rich.table import Table

from extender import convert, snapshot
from extender.cluster import ClusterView
from extender.dcgm import readings
from extender.report import report
from scoring import config as policy_config
from scoring import policy
from scoring.model import MILLI_PER_GPU, SIGNALS, Plan, PodRequest, ScoreBreakdown

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


def run(pod: Path, cluster: Path | None, metrics: list[Path], config: Path | None, output: str) -> None:
    """Score every node of `cluster` (default: the bundled example and its DCGM dumps) for the pod
    in `pod` and print it as `output` ("table" or "json"); raises InputError on bad input."""
    try:
        cfg = policy_config.parse(snapshot.read_document(config)) if config else policy_config.PolicyConfig()
        try:
            request = convert.pod_request(snapshot.read_document(pod), cfg)
        except convert.BadObject as exc:
            raise convert.BadObject(f"{pod}: {exc}") from None
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
    decisions = policy.evaluate(list(nodes.values()), request, view.samples, view.now(), cfg, view.target.workload)
    if output == "json":
        sys.stdout.write(orjson.dumps(report(request, decisions, nodes), option=orjson.OPT_INDENT_2).decode())
        sys.stdout.write("\n")
    else:
        console = Console()
        if not console.is_terminal:  # piped: wide enough for every column, not rich's 80
            console.width = max(console.width, TABLE_WIDTH)
        _render(console, request, decisions)


def _render(console: Console, request: PodRequest, decisions: list[ScoreBreakdown]) -> None:
    table = Table(title=f"{request.key} ({request.workload_class.value})", title_justify="left",
                  box=box.SIMPLE_HEAD)
    for column in ("node", "fit", "score", *SIGNALS, "plan"):
        table.add_column(HEADERS.get(column, column), justify="right" if column == "score" else "left",
                         no_wrap=column != "plan")
    for d in decisions:
        cells = []
        for name in SIGNALS:
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
