"""The `gpu-extender score` dry run, through its real entry point."""

from __future__ import annotations

import json
import subprocess
from pathlib import Path

import pytest
import yaml
from typer.testing import CliRunner

from extender.cli import app

ROOT = Path(__file__).resolve().parent.parent
EXAMPLES = ROOT / "examples"
TP4 = str(EXAMPLES / "pods" / "llama70b-tp4-latency-critical.yaml")
runner = CliRunner()


def score(*args: str):
    return runner.invoke(app, ["score", *args])


def test_json_output_shape_and_order():
    result = score("--pod", TP4, "--output", "json")
    assert result.exit_code == 0, result.output
    doc = json.loads(result.stdout)
    assert set(doc) == {"pod", "class", "nodes"}
    assert doc["pod"] == "inference/llama70b-chat-0" and doc["class"] == "latency-critical"
    for node in doc["nodes"]:
        assert set(node) == {"node", "feasible", "score", "signals", "plan", "reason"}
        assert isinstance(node["score"], int) and 0 <= node["score"] <= 10
        assert set(node["signals"]) == {"mig", "topology", "sharing", "locality", "utilization", "fragmentation"}
        assert all(isinstance(v, float) for v in node["signals"].values())
        assert isinstance(node["reason"], str) and node["reason"]
    keys = [(not n["feasible"], -n["score"]) for n in doc["nodes"]]
    assert keys == sorted(keys)
    best = doc["nodes"][0]
    assert best["plan"]["gpus"] == [4, 5, 6, 7] and len(best["plan"]["uuids"]) == 4


def test_table_output_lists_every_node_with_reasons():
    result = score("--pod", TP4)
    assert result.exit_code == 0, result.output
    nodes = yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())["items"]
    for item in nodes:
        if item["kind"] == "Node":
            assert item["metadata"]["name"] in result.stdout
    assert "why:" in result.stdout and "NVLink" in result.stdout


def test_explicit_cluster_json_snapshot_and_metrics(tmp_path: Path):
    snapshot = tmp_path / "cluster.json"
    snapshot.write_text(json.dumps(yaml.safe_load((EXAMPLES / "cluster.yaml").read_text())))
    hot = EXAMPLES / "metrics" / "h100-inf-03.prom"
    cool = EXAMPLES / "metrics" / "h100-inf-02.prom"
    result = score("--pod", TP4, "--cluster", str(snapshot), "--metrics", str(hot), "--metrics", str(cool),
                   "--output", "json")
    assert result.exit_code == 0, result.output
    nodes = {n["node"]: n for n in json.loads(result.stdout)["nodes"]}
    assert nodes["h100-inf-03"]["signals"]["utilization"] < nodes["h100-inf-02"]["signals"]["utilization"]
    assert nodes["h100-train-01"]["signals"]["utilization"] == 0.5  # no dump given for it


def test_config_changes_weights(tmp_path: Path):
    config = tmp_path / "config.yaml"
    config.write_text("weights:\n  latencyCritical: {locality: 0, utilization: 0, allocation: 0}\n")
    result = score("--pod", TP4, "--config", str(config), "--output", "json")
    assert result.exit_code == 0, result.output
    nodes = {n["node"]: n for n in json.loads(result.stdout)["nodes"]}
    # Only topology and MIG count now: the cached node no longer beats the uncached twin.
    assert nodes["h100-inf-01"]["score"] == nodes["h100-inf-02"]["score"]


@pytest.mark.parametrize(
    ("make", "message"),
    [
        (lambda d: ["--pod", str(d / "missing.yaml")], "cannot read"),
        (lambda d: ["--pod", str(_write(d / "bad.yaml", "kind: Pod\nmetadata: [\n"))], "not valid YAML"),
        (lambda d: ["--pod", str(_write(d / "cpu.yaml", _pod({"cpu": "1"})))], "requests no nvidia.com/gpu"),
        (lambda d: ["--pod", str(_write(d / "dep.yaml", "kind: Deployment\nmetadata: {name: x}\n"))],
         "expected a Pod"),
        (lambda d: ["--pod", TP4, "--config", str(_write(d / "c.yaml", "weights: {batch: {topolgy: 1}}\n"))],
         "weights.batch.topolgy"),
        (lambda d: ["--pod", TP4, "--cluster", str(_write(d / "empty.yaml", "kind: List\nitems: []\n"))],
         "no Node objects"),
        (lambda d: ["--pod", TP4, "--metrics", str(_write(d / "m.prom", "this is {not prometheus\n"))],
         "not Prometheus text"),
        (lambda d: ["--pod", str(_write(d / "cls.yaml", _pod({"nvidia.com/gpu": "1"}, "urgent")))],
         "latency-critical, batch"),
    ],
)
def test_bad_input_exits_2_with_one_line(tmp_path: Path, make, message: str):
    result = score(*make(tmp_path))
    assert result.exit_code == 2
    lines = result.stderr.strip().splitlines()
    assert len(lines) == 1 and lines[0].startswith("gpu-extender: error:") and message in lines[0]
    assert "Traceback" not in result.output


def test_readme_dry_run_command():
    """The README's first command, as written there (plus JSON output to check it)."""
    readme = (ROOT / "README.md").read_text()
    command = next(line.split("#")[0].split() for line in readme.splitlines() if line.startswith("scripts/gpu-extender"))
    done = subprocess.run([*command, "--output", "json"], capture_output=True, text=True, cwd=ROOT, timeout=600)
    assert done.returncode == 0, done.stderr
    assert json.loads(done.stdout)["nodes"][0]["node"] == "h100-inf-01"


def _write(path: Path, text: str) -> Path:
    path.write_text(text)
    return path


def _pod(limits: dict[str, str], workload_class: str | None = None) -> str:
    meta = {"name": "p", "namespace": "default"}
    if workload_class:
        meta["annotations"] = {"gpu-extender.io/class": workload_class}
    return yaml.safe_dump({"apiVersion": "v1", "kind": "Pod", "metadata": meta,
                           "spec": {"containers": [{"name": "c", "image": "x", "resources": {"limits": limits}}]}})


def test_a_share_pod_shows_its_gpu_and_thousandths(tmp_path: Path):
    notebook = str(EXAMPLES / "pods" / "notebook-share-batch.yaml")
    result = score("--pod", notebook, "--output", "json")
    assert result.exit_code == 0, result.output
    nodes = {n["node"]: n for n in json.loads(result.stdout)["nodes"]}
    # Only the two nodes that advertise gpu-extender.io/gpu-milli can take it.
    assert {name for name, n in nodes.items() if n["feasible"]} == {"t4-legacy-01", "l40s-pcie-01"}
    assert nodes["t4-legacy-01"]["plan"]["share"] == {"gpu": 0, "milli": 250}  # no agent: no UUID
    l40s = nodes["l40s-pcie-01"]
    assert l40s["plan"]["share"]["gpu"] == 1 and l40s["plan"]["share"]["gpuUuid"].startswith("GPU-")  # 0 is held
    assert l40s["signals"]["sharing"] == 0.25 and l40s["plan"]["gpus"] == []
    assert "no GPU shares" in nodes["h100-inf-01"]["reason"]
    table = score("--pod", notebook)
    assert table.exit_code == 0 and "250/1000 of GPU 1" in " ".join(table.stdout.split())  # rich wraps lines
    whole = yaml.safe_load(Path(notebook).read_text())
    whole["spec"]["containers"][0]["resources"]["limits"]["gpu-extender.io/gpu-milli"] = 1000
    bad = tmp_path / "bad.yaml"
    bad.write_text(yaml.safe_dump(whole))
    failed = score("--pod", str(bad))
    assert failed.exit_code == 2 and "is not a share of one GPU" in failed.output


def test_the_dry_run_of_a_group_shows_each_domain_s_room_and_the_domain_chosen(tmp_path: Path):
    from tests.groups_cluster import CLIQUE, domains, lws_group, pod

    cluster = tmp_path / "cluster.yaml"
    items = domains({"a": 4, "b": 4}) + [pod("filler", 4, node_name="b-0")]
    cluster.write_text(yaml.safe_dump({"apiVersion": "v1", "kind": "List", "items": items}))
    files = []
    for member in lws_group("llm", 0, 3, 4):
        files += ["--pod", str(tmp_path / f"{member['metadata']['name']}.yaml")]
        Path(files[-1]).write_text(yaml.safe_dump(member))
    result = score("--cluster", str(cluster), *files, "--output", "json")
    assert result.exit_code == 0, result.output
    group = json.loads(result.stdout)["group"]
    rooms = {d["domain"]: d["room"] for d in group["domains"]}
    assert rooms == {f"{CLIQUE}=a": 4, f"{CLIQUE}=b": 3}
    assert group["domain"] == f"{CLIQUE}=b" and group["missing"] == 3  # both fit; b is fuller
    assert sum(len(g) for g in group["held"].values()) == 12
    table = score("--cluster", str(cluster), *files[:2], "--group-size", "4")
    assert table.exit_code == 0, table.output
    assert f"chosen: {CLIQUE}=a" in table.stdout  # four members fit a only
    table = score("--cluster", str(cluster), *files[:2], "--group-size", "5")
    assert f"no domain: group infer/llm/llm-key-0 needs 5 pods × 4 GPUs in one {CLIQUE} domain; the best " \
           f"({CLIQUE}=a) has room for 4" in " ".join(table.stdout.split())  # rich wraps long lines
