"""Stand-ins for dcgm-exporters on loopback, and a real Prometheus (Debian's package, installed by
scripts/install-prometheus) scraping them. Used by tests/dcgm and tests/e2e."""

from __future__ import annotations

import re
import subprocess
import threading
import time
from collections.abc import Callable
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path
from typing import Any

import httpx
import yaml

from tests.waiting import wait_for
from tests.webhook.conftest import free_port

ROOT = Path(__file__).resolve().parents[2]
SAMPLE = ROOT.parent / "shared" / "reference" / "gpu" / "dcgm-sample.prom"


def _sample_text() -> str:
    """The reference dcgm-exporter output the tests parse and serve, from the shared folder beside
    the clone (not part of the project)."""
    try:
        return SAMPLE.read_text()
    except FileNotFoundError:
        raise FileNotFoundError(f"the DCGM tests read dcgm-exporter's reference sample from {SAMPLE}: put the "
                                "shared reference folder beside the clone (see the README)") from None


SAMPLE_TEXT = _sample_text()
SAMPLE_UUIDS = list(dict.fromkeys(re.findall(r'UUID="(GPU-[^"]+)"', SAMPLE_TEXT)))  # GPU 0..3, in order
SAMPLE_HOST = "gpu-node-07"
HTML_ERROR = b"<html><body><h1>502 Bad Gateway</h1></body></html>\n"
FRAMEBUFFER_MIB = 81920


def node_uuid(node: str, index: int) -> str:
    """The UUID the stand-ins give GPU `index` of `node` (as tests.e2e.conftest.nvlink_node does)."""
    return f"GPU-{node}-{index}"


def node_text(node: str, lowercase: bool = False) -> str:
    """The reference sample as `node`'s exporter would serve it: its four GPUs renamed
    GPU-<node>-<i>, Hostname the node. `lowercase`: the `uuid`/`hostname` spellings."""
    text = SAMPLE_TEXT.replace(f'Hostname="{SAMPLE_HOST}"', f'Hostname="{node}"')
    for index, uuid in enumerate(SAMPLE_UUIDS):
        text = text.replace(uuid, node_uuid(node, index))
    if lowercase:
        text = text.replace(',UUID="', ',uuid="').replace(',Hostname="', ',hostname="')
    return text


def busy_text(node: str, gpus: int, busy: float) -> str:
    """dcgm-exporter text for `gpus` whole GPUs of `node`, each `busy` (0..1) in GPU_UTIL and
    graphics-engine activity and with that share of its framebuffer used. Built from the
    sample's rows of its idle whole GPU."""
    used = round(busy * FRAMEBUFFER_MIB)
    values = {"DCGM_FI_DEV_GPU_UTIL": round(busy * 100), "DCGM_FI_PROF_GR_ENGINE_ACTIVE": busy,
              "DCGM_FI_DEV_FB_USED": used, "DCGM_FI_DEV_FB_FREE": FRAMEBUFFER_MIB - used}
    lines = []
    for line in SAMPLE_TEXT.splitlines():
        if line.startswith(("# HELP", "# TYPE")):
            lines.append(line)
        elif 'gpu="1",' in line and not line.startswith("#"):
            head, value = line.rsplit(" ", 1)
            name = head.split("{", 1)[0]
            for index in range(gpus):
                labels = (head.replace('gpu="1"', f'gpu="{index}"').replace(SAMPLE_UUIDS[1], node_uuid(node, index))
                          .replace('device="nvidia1"', f'device="nvidia{index}"')
                          .replace(f'Hostname="{SAMPLE_HOST}"', f'Hostname="{node}"'))
                lines.append(f"{labels} {values.get(name, value)}")
    return "\n".join(lines) + "\n"


def dated(text: str, timestamp: float) -> str:
    """dcgm-exporter text with every row dated `timestamp` (seconds), as a frozen exporter's."""
    stamp = int(timestamp * 1000)
    return "\n".join(line if line.startswith("#") else f"{line} {stamp}" for line in text.splitlines()) + "\n"


class _Server(ThreadingHTTPServer):
    daemon_threads = True

    def handle_error(self, request: Any, client_address: Any) -> None:
        pass  # a client that gave up on a slow answer: expected here


class Exporter:
    """A dcgm-exporter stand-in on loopback answering every GET with `text(path)` (or `text`).
    `delay`: seconds before it answers; `pace`: seconds between 100-byte pieces of the answer (a
    trickle); `garbage`: answer an HTML error page instead; `stop()`/`start()`: refuse
    connections, then come back on the same port."""

    def __init__(self, text: Callable[[str], str] | str, delay: float = 0.0, garbage: bool = False,
                 pace: float = 0.0):
        self.text = text if callable(text) else (lambda _: text)
        self.delay, self.garbage, self.pace = delay, garbage, pace
        self.requests = 0
        self.port = 0
        self.server: _Server | None = None
        self.start()

    @property
    def target(self) -> str:
        return f"127.0.0.1:{self.port}"

    @property
    def url(self) -> str:
        return f"http://{self.target}/metrics"

    def start(self) -> None:
        exporter = self

        class Handler(BaseHTTPRequestHandler):
            def do_GET(self) -> None:  # noqa: N802 (http.server's name)
                exporter.requests += 1
                time.sleep(exporter.delay)
                body = HTML_ERROR if exporter.garbage else exporter.text(self.path).encode()
                self.send_response(200)
                self.send_header("Content-Type", "text/plain; version=0.0.4")
                self.send_header("Content-Length", str(len(body)))
                self.end_headers()
                piece = 100 if exporter.pace else max(len(body), 1)
                for start in range(0, len(body), piece):
                    self.wfile.write(body[start:start + piece])
                    self.wfile.flush()
                    time.sleep(exporter.pace)

            def log_message(self, *args: Any) -> None:
                pass

        self.server = _Server(("127.0.0.1", self.port), Handler)
        self.port = self.server.server_address[1]
        threading.Thread(target=self.server.serve_forever, daemon=True).start()

    def stop(self) -> None:
        if self.server is not None:
            self.server.shutdown()
            self.server.server_close()
            self.server = None


def install_prometheus() -> Path:
    """The prometheus binary scripts/install-prometheus provides; the test fails if it cannot."""
    done = subprocess.run([str(ROOT / "scripts" / "install-prometheus")], capture_output=True, text=True)
    assert done.returncode == 0 and done.stdout.strip(), f"scripts/install-prometheus failed:\n{done.stderr}"
    return Path(done.stdout.strip().splitlines()[-1])


class Prometheus:
    """A real Prometheus on a free loopback port, scraping `targets` every second (timeout 1 s),
    its TSDB under `work`."""

    def __init__(self, work: Path, targets: list[str]):
        binary = install_prometheus()
        work.mkdir(parents=True, exist_ok=True)
        config = work / "prometheus.yml"
        config.write_text(yaml.safe_dump({
            "global": {"scrape_interval": "1s", "scrape_timeout": "1s", "evaluation_interval": "1s"},
            "scrape_configs": [{"job_name": "dcgm", "static_configs": [{"targets": targets}]}],
        }))
        self.port = free_port()
        self.url = f"http://127.0.0.1:{self.port}"
        self.log = work / "prometheus.log"
        self.proc = subprocess.Popen(
            [str(binary), f"--config.file={config}", f"--storage.tsdb.path={work / 'tsdb'}",
             f"--web.listen-address=127.0.0.1:{self.port}"],
            stdout=self.log.open("w"), stderr=subprocess.STDOUT)
        wait_for(lambda: httpx.get(f"{self.url}/-/ready", timeout=2).status_code == 200, "Prometheus did not come up",
                 self.proc, self.log, 60)

    def query(self, query: str) -> list[dict[str, Any]]:
        answer = httpx.get(f"{self.url}/api/v1/query", params={"query": query}, timeout=10).json()
        assert answer["status"] == "success", answer
        return answer["data"]["result"]

    def wait_up(self, targets: list[str], seconds: float = 30) -> None:
        """Until Prometheus has scraped each of `targets` successfully."""
        def scraped() -> bool:
            up = {r["metric"]["instance"]: r["value"][1] for r in self.query("up")}
            return all(up.get(target) == "1" for target in targets)

        wait_for(scraped, f"Prometheus did not scrape {targets}", self.proc, self.log, seconds)

    def stop(self) -> None:
        self.proc.terminate()
        try:
            self.proc.wait(timeout=30)
        except subprocess.TimeoutExpired:
            self.proc.kill()
            self.proc.wait(timeout=10)
