"""Live DCGM figures for the ClusterView, read in the background.

One source, chosen at start:
- scrape: every dcgm-exporter that discovery finds (`dcgm_discovery`) is read at /metrics, at
  most `concurrency` at a time; a round waits `timeout` seconds (and a moment) for them, reads
  not done by then count as timeouts and are cut off at their own deadline (`fetch`);
- Prometheus: two instant queries at one evaluation time, the DCGM metrics and their sample times
  (`timestamp()`); a sample is dated when Prometheus scraped it, not when we asked.
A `Refresher` thread runs a round every `interval` seconds and hands the samples to
`ClusterView.set_samples`. Requests never wait for a round: they read the last samples.

What a failure means for scoring (utilization ignores samples older than utilization.ttlSeconds,
see scoring/utilization.py, and scores a GPU without a fresh sample neutral):
- An exporter that fails keeps its last good samples with the time they were read, so its GPUs
  keep their figures for at most one TTL after its last answer, then score neutral. An exporter
  that never answered has no samples: neutral at once. Failures by reason: `down` (connection
  refused or reset, HTTP status other than 200), `timeout` (no complete answer within the
  timeout, or the previous read still running), `garbage` (not Prometheus text, not UTF-8, over
  64 MiB, or no DCGM row naming a GPU).
- An exporter that answers replaces all its samples: a GPU it no longer reports has none.
- An exporter that leaves discovery loses its samples at once. A GPU node (GPU inventory or GPU
  resources) without a discovered exporter has none: counted as `missing`.
- Nodes without GPU inventory (no agent) get a node-level sample (`readings.node_samples`): the
  GPUs an exporter reports belong to the node discovery names for it, else to the node its
  Hostname label names (Prometheus: the Hostname label).
- Discovery failing (`discovery`: the API server away or refusing) keeps the last exporter list.
- Prometheus: a failed query keeps the last result (aged by the TTL as above). A GPU Prometheus no
  longer returns (its series went stale there once its exporter stopped answering) has no sample;
  a GPU node none of whose GPUs Prometheus returns (by UUID, or by Hostname for a node without
  inventory) is counted as `missing`.

Accounting: gpu_extender_dcgm_failures_total{reason} counts each failing source (or missing
node) once per round; gpu_extender_dcgm_sources{state="ok|failing"} the last round's sources;
gpu_extender_dcgm_refresh_seconds the rounds' durations. Log lines: one when a source starts
failing or fails for another reason, one when it answers again, one when the set of nodes
without data changes; while failures go on, one summary line every REPEAT_SECONDS. A round names
at most LINES_PER_ROUND sources and counts the rest in one line.
"""

from __future__ import annotations

import logging
import re
import threading
import time
from collections import Counter as Tally
from collections.abc import Callable, Collection, Mapping
from concurrent.futures import Future, ThreadPoolExecutor, wait
from dataclasses import dataclass, field
from typing import Any, Protocol
from urllib.parse import urlparse

import orjson
import requests
import urllib3
from prometheus_client import Counter, Gauge, Histogram
from prometheus_client.registry import Collector

from extender.dcgm import readings
from extender.cluster import ClusterView
from extender.dcgm.discovery import DiscoveryError, Endpoint, PodEndpoints, ServiceEndpoints
from scoring.model import GpuSample, node_sample_key

log = logging.getLogger("gpu_extender.dcgm")

DOWN, TIMEOUT, GARBAGE, MISSING, DISCOVERY = "down", "timeout", "garbage", "missing", "discovery"
REASONS = (DOWN, TIMEOUT, GARBAGE, MISSING, DISCOVERY)
MAX_BODY = 64 << 20
CHUNK = 1 << 16
GRACE = 0.25  # seconds a round waits beyond the timeout for reads that are just finishing
REPEAT_SECONDS = 300.0
LINES_PER_ROUND = 20
VALUES_QUERY = '{__name__=~"%s"}' % "|".join(readings.METRIC_NAMES)
TIMES_QUERY = " or ".join(f'label_replace(timestamp({name}), "{readings.TIME_LABEL}", "{name}", "", "")'
                          for name in readings.METRIC_NAMES)
"""Each series' sample time, its metric name in TIME_LABEL. `timestamp()` must take the selector
itself: applied to a function's result it returns the evaluation time."""


class ReadFailure(Exception):
    def __init__(self, reason: str, detail: str):
        super().__init__(f"{reason}: {detail}")
        self.reason, self.detail = reason, detail


@dataclass(frozen=True, slots=True)
class Failure:
    source: str
    reason: str
    detail: str


@dataclass
class Round:
    """What one refresh found: the samples to score with, the sources read, those that failed and
    the GPU nodes with no data whose failure is not already among `failures`."""

    samples: dict[str, GpuSample]
    reached: list[str] = field(default_factory=list)
    failures: list[Failure] = field(default_factory=list)
    missing: list[str] = field(default_factory=list)


class Source(Protocol):
    def collect(self, gpu_nodes: Mapping[str, Collection[str]]) -> Round:
        """A round; `gpu_nodes` maps each GPU node's name to its GPU UUIDs (empty if unknown)."""

    def close(self) -> None: ...


# --- HTTP ----------------------------------------------------------------------------------

def http_session(connections: int) -> requests.Session:
    session = requests.Session()
    adapter = requests.adapters.HTTPAdapter(pool_connections=connections, pool_maxsize=connections, max_retries=0)
    session.mount("http://", adapter)
    session.mount("https://", adapter)
    return session


def fetch(session: requests.Session, url: str, timeout: float, params: Mapping[str, str] | None = None) -> bytes:
    """The body of a 200 answer; ReadFailure otherwise. Connecting and the first byte of the answer
    may each take `timeout` seconds; the body must be complete `timeout` seconds after asking."""
    deadline = time.monotonic() + timeout
    try:
        with session.get(url, params=params, timeout=(timeout, timeout), stream=True) as response:
            # read1 returns what one socket read brings, so a trickling answer is cut off at the
            # deadline; urllib3 before 2.2 has no read1, and read waits for CHUNK bytes.
            read = getattr(response.raw, "read1", response.raw.read)
            body = bytearray()
            while chunk := read(CHUNK, decode_content=True):
                body += chunk
                if len(body) > MAX_BODY:
                    raise ReadFailure(GARBAGE, f"answer larger than {MAX_BODY >> 20} MiB")
                if time.monotonic() > deadline:
                    raise ReadFailure(TIMEOUT, f"answer not complete within {timeout:g}s")
            if response.status_code != 200:
                excerpt = " ".join(body[:200].decode("utf-8", "replace").split())
                raise ReadFailure(DOWN, f"HTTP {response.status_code}: {excerpt}")
            return bytes(body)
    except (requests.RequestException, urllib3.exceptions.HTTPError) as exc:
        if isinstance(exc, (requests.Timeout, urllib3.exceptions.TimeoutError)) or any(
                isinstance(arg, urllib3.exceptions.TimeoutError) for arg in exc.args):
            raise ReadFailure(TIMEOUT, f"no answer within {timeout:g}s") from None
        cause = re.search(r"\[Errno -?\d+\] [^'\")]+", str(exc))
        raise ReadFailure(DOWN, cause.group(0) if cause else type(exc).__name__) from None


# --- sources -------------------------------------------------------------------------------

class ScrapeSource:
    """Every dcgm-exporter `discover` returns, read at most `concurrency` at a time."""

    def __init__(self, discover: Callable[[], list[Endpoint]], timeout: float, concurrency: int):
        self.discover, self.timeout = discover, timeout
        self.session = http_session(concurrency)
        self.pool = ThreadPoolExecutor(concurrency, thread_name_prefix="dcgm-scrape")
        self._endpoints: list[Endpoint] = []
        self._good: dict[str, readings.Reading] = {}  # url -> last good reading
        self._running: dict[str, Future] = {}  # url -> its latest read

    def __str__(self) -> str:
        return f"dcgm-exporters from {self.discover}"

    def collect(self, gpu_nodes: Mapping[str, Collection[str]]) -> Round:
        result = Round({})
        try:
            self._endpoints = self.discover()
        except DiscoveryError as exc:
            result.failures.append(Failure("exporter discovery", DISCOVERY, str(exc)))
        started: dict[Endpoint, Future] = {}
        for endpoint in self._endpoints:
            running = self._running.get(endpoint.url)
            if running is not None and not running.done():
                result.failures.append(Failure(_name(endpoint), TIMEOUT, "the previous read has not finished"))
                continue
            self._running[endpoint.url] = started[endpoint] = self.pool.submit(self._read, endpoint.url)
        wait(started.values(), timeout=self.timeout + GRACE)
        for endpoint, future in started.items():
            if not future.done():
                result.failures.append(Failure(_name(endpoint), TIMEOUT, f"no answer within {self.timeout:g}s"))
            elif isinstance(error := future.exception(), ReadFailure):
                result.failures.append(Failure(_name(endpoint), error.reason, error.detail))
            elif error is not None:
                result.failures.append(Failure(_name(endpoint), GARBAGE, f"{type(error).__name__}: {error}"))
            else:
                self._good[endpoint.url] = future.result()
                result.reached.append(_name(endpoint))
        listed = {endpoint.url for endpoint in self._endpoints}
        self._good = {url: reading for url, reading in self._good.items() if url in listed}
        self._running = {url: f for url, f in self._running.items() if url in listed or not f.done()}
        node_of = {endpoint.url: endpoint.node for endpoint in self._endpoints}
        owners: dict[str, str] = {}
        for url, reading in self._good.items():
            result.samples.update(reading.samples)
            owners.update((uuid, node_of.get(url) or reading.hosts.get(uuid, "")) for uuid in reading.samples)
        result.samples.update(readings.node_samples(result.samples, owners, gpu_nodes))
        with_exporter = {endpoint.node for endpoint in self._endpoints}
        result.missing = sorted(node for node in gpu_nodes if node not in with_exporter)
        return result

    def _read(self, url: str) -> readings.Reading:
        body = fetch(self.session, url, self.timeout)
        try:
            reading = readings.read_text(body.decode("utf-8"), time.time())
        except UnicodeDecodeError:
            raise ReadFailure(GARBAGE, "not UTF-8 text") from None
        except readings.MetricsError as exc:
            raise ReadFailure(GARBAGE, str(exc)) from None
        if not reading.samples:
            raise ReadFailure(GARBAGE, f"no row of {', '.join(readings.METRIC_NAMES[:4])} names a GPU UUID")
        return reading

    def close(self) -> None:
        self.pool.shutdown(wait=False, cancel_futures=True)
        self.session.close()


def _name(endpoint: Endpoint) -> str:
    return f"dcgm-exporter on {endpoint.node} ({endpoint.url})" if endpoint.node else f"dcgm-exporter {endpoint.url}"


class PrometheusSource:
    """DCGM metrics as Prometheus has them, by two instant queries (VALUES_QUERY, TIMES_QUERY)."""

    def __init__(self, url: str, timeout: float):
        self.url, self.timeout = url.rstrip("/"), timeout
        self.session = http_session(1)
        self._last: dict[str, GpuSample] = {}

    def __str__(self) -> str:
        return f"Prometheus at {self.url}"

    def collect(self, gpu_nodes: Mapping[str, Collection[str]]) -> Round:
        at = time.time()
        try:
            reading = readings.read_query_results(self._query(VALUES_QUERY, at), self._query(TIMES_QUERY, at))
        except ReadFailure as failure:
            return Round(dict(self._last), failures=[Failure(str(self), failure.reason, failure.detail)])
        except readings.MetricsError as exc:
            return Round(dict(self._last), failures=[Failure(str(self), GARBAGE, str(exc))])
        samples = dict(reading.samples)
        samples.update(readings.node_samples(reading.samples, reading.hosts, gpu_nodes))
        self._last = samples
        returned = reading.samples.keys()
        missing = sorted(node for node, uuids in gpu_nodes.items()
                         if returned.isdisjoint(uuids) and node_sample_key(node) not in samples)
        return Round(samples, reached=[str(self)], missing=missing)

    def _query(self, query: str, at: float) -> Any:
        body = fetch(self.session, f"{self.url}/api/v1/query", self.timeout, {"query": query, "time": f"{at:.3f}"})
        try:
            answer = orjson.loads(body)
        except orjson.JSONDecodeError:
            raise ReadFailure(GARBAGE, "the query answer is not JSON") from None
        if not isinstance(answer, dict) or answer.get("status") != "success":
            error = answer.get("error") if isinstance(answer, dict) else None
            raise ReadFailure(GARBAGE, f"query failed: {error or 'no success status'}")
        return answer.get("data")

    def close(self) -> None:
        self.session.close()


# --- accounting ----------------------------------------------------------------------------

class DcgmMetrics:
    """The refresh's Prometheus metrics, unregistered: the webhook's registry takes `collectors()`."""

    def __init__(self) -> None:
        self.failures = Counter(
            "gpu_extender_dcgm_failures_total",
            "Failed DCGM reads per source and round (missing: per GPU node without data), by reason.",
            ["reason"], registry=None)
        for reason in REASONS:
            self.failures.labels(reason)
        self.sources = Gauge("gpu_extender_dcgm_sources", "DCGM sources in the last round, by state.",
                             ["state"], registry=None)
        self.duration = Histogram("gpu_extender_dcgm_refresh_seconds", "Duration of DCGM refresh rounds.",
                                  buckets=(0.01, 0.05, 0.1, 0.25, 0.5, 1, 2.5, 5, 10, 30), registry=None)

    def collectors(self) -> list[Collector]:
        return [self.failures, self.sources, self.duration]

    def record(self, result: Round, seconds: float) -> None:
        for failure in result.failures:
            self.failures.labels(failure.reason).inc()
        if result.missing:
            self.failures.labels(MISSING).inc(len(result.missing))
        self.sources.labels("ok").set(len(result.reached))
        self.sources.labels("failing").set(len({f.source for f in result.failures if f.reason != DISCOVERY}))
        self.duration.observe(seconds)


_CONSEQUENCE = {DISCOVERY: "keeping the last list of exporters"}
_KEPT = "its last samples count until older than utilization.ttlSeconds, then its GPUs score neutral"


class FailureLog:
    """Rate-limited log lines about DCGM sources (rules in the module docstring)."""

    def __init__(self, repeat: float = REPEAT_SECONDS, clock: Callable[[], float] = time.monotonic):
        self.repeat, self.clock = repeat, clock
        self._failing: dict[str, tuple[str, int]] = {}  # source -> (reason, failed rounds in a row)
        self._missing: set[str] = set()
        self._last_line = clock()

    def report(self, result: Round) -> None:
        previous = self._failing
        self._failing = {}
        for failure in result.failures:
            _, count = previous.get(failure.source, ("", 0))
            self._failing[failure.source] = (failure.reason, count + 1)
        changed = [f for f in result.failures if previous.get(f.source, ("",))[0] != f.reason]
        self._lines(logging.WARNING, [
            f"DCGM {f.source}: {f.reason}: {f.detail}; {_CONSEQUENCE.get(f.reason, _KEPT)}" for f in changed
        ], "more DCGM sources failing", Tally(f.reason for f in changed[LINES_PER_ROUND:]))
        back = [source for source in result.reached if source in previous]
        self._lines(logging.INFO, [
            f"DCGM {source} answers again after {previous[source][1]} failed rounds" for source in back
        ], "more DCGM sources answer again")
        self._report_missing(set(result.missing))
        if (self._failing or self._missing) and self.clock() - self._last_line >= self.repeat:
            reasons = Tally(reason for reason, _ in self._failing.values())
            log.warning("DCGM: %d sources still failing (%s), %d GPU nodes without data",
                        len(self._failing), _counts(reasons), len(self._missing))
            self._last_line = self.clock()

    def _report_missing(self, missing: set[str]) -> None:
        gone, back = sorted(missing - self._missing), sorted(self._missing - missing)
        self._missing = missing
        if gone:
            self._lines(logging.WARNING, [f"DCGM: no data for {len(gone)} GPU nodes, their GPUs score neutral: "
                                          f"{_names(gone)}"], "")
        if back:
            self._lines(logging.INFO, [f"DCGM: data again for {len(back)} GPU nodes: {_names(back)}"], "")

    def _lines(self, level: int, lines: list[str], rest: str, reasons: Tally | None = None) -> None:
        for line in lines[:LINES_PER_ROUND]:
            log.log(level, "%s", line)
        if len(lines) > LINES_PER_ROUND:
            detail = f" ({_counts(reasons)})" if reasons else ""
            log.log(level, "%d %s%s", len(lines) - LINES_PER_ROUND, rest, detail)
        if lines:
            self._last_line = self.clock()


def _counts(tally: Tally) -> str:
    return ", ".join(f"{reason} {n}" for reason, n in sorted(tally.items()))


def _names(nodes: list[str]) -> str:
    shown = ", ".join(nodes[:LINES_PER_ROUND])
    return shown + (f" and {len(nodes) - LINES_PER_ROUND} more" if len(nodes) > LINES_PER_ROUND else "")


# --- the background thread -----------------------------------------------------------------

class Refresher:
    """Runs a round at once, then every `interval` seconds, in a daemon thread."""

    def __init__(self, view: ClusterView, source: Source, interval: float, metrics: DcgmMetrics):
        self.view, self.source, self.interval, self.metrics = view, source, interval, metrics
        self.failure_log = FailureLog()

    def refresh(self) -> Round:
        """One round: read the source, hand the samples to the view, count and log failures."""
        started = time.monotonic()
        gpu_nodes = {node.name: frozenset(gpu.uuid for gpu in node.gpus)
                     for node in self.view.nodes() if node.gpus or node.allocatable}
        result = self.source.collect(gpu_nodes)
        self.view.set_samples(result.samples)
        self.metrics.record(result, time.monotonic() - started)
        self.failure_log.report(result)
        return result

    def start(self) -> None:
        log.info("DCGM: reading %s every %gs", self.source, self.interval)
        threading.Thread(target=self._run, name="dcgm-refresh", daemon=True).start()

    def _run(self) -> None:
        while True:
            started = time.monotonic()
            try:
                self.refresh()
            except Exception:  # a bug here must not end live utilization for good
                log.exception("DCGM refresh round failed; the last samples stay")
            time.sleep(max(0.0, self.interval - (time.monotonic() - started)))


# --- options -------------------------------------------------------------------------------

_DNS_LABEL = "[a-z0-9]([-a-z0-9]*[a-z0-9])?"


@dataclass(frozen=True)
class DcgmOptions:
    """`gpu-extender serve`'s DCGM options: at most one source, and how to read it."""

    service: str | None = None  # NAMESPACE/NAME of the dcgm-exporter Service
    pod_selector: str | None = None  # label selector of dcgm-exporter pods in `namespace`
    namespace: str = "gpu-operator"
    port: int = 9400
    prometheus_url: str | None = None
    interval: float = 15.0
    timeout: float = 2.0
    concurrency: int = 32

    @property
    def live(self) -> bool:
        return bool(self.service or self.pod_selector or self.prometheus_url)

    def problem(self) -> str | None:
        """What is wrong with the options, in one line; None when nothing is."""
        chosen = [flag for flag, value in (("--dcgm-service", self.service), ("--dcgm-pod-selector", self.pod_selector),
                                           ("--prometheus-url", self.prometheus_url)) if value]
        if len(chosen) > 1:
            return f"{', '.join(chosen[:-1])} and {chosen[-1]} exclude each other: choose one DCGM source"
        if self.service is not None and not re.fullmatch(f"{_DNS_LABEL}/{_DNS_LABEL}", self.service):
            return f"--dcgm-service {self.service!r}: expected NAMESPACE/NAME"
        url = urlparse(self.prometheus_url or "")
        if self.prometheus_url is not None and (url.scheme not in ("http", "https") or not url.netloc):
            return f"--prometheus-url {self.prometheus_url!r}: expected an http:// or https:// URL"
        if not 0 < self.port < 65536:
            return f"--dcgm-port {self.port}: expected 1..65535"
        if not (self.interval > 0 and self.timeout > 0):
            return "--dcgm-interval and --dcgm-timeout must be more than 0 seconds"
        if self.concurrency < 1:
            return "--dcgm-concurrency must be at least 1"
        return None

    def source(self, api: Any) -> Source:
        """The source the options name (`live` must be true); `api`: a kubernetes ApiClient."""
        if self.prometheus_url:
            return PrometheusSource(self.prometheus_url, self.timeout)
        if self.service:
            namespace, name = self.service.split("/", 1)
            discover: Callable[[], list[Endpoint]] = ServiceEndpoints(api, namespace, name, self.port)
        else:
            discover = PodEndpoints(api, self.namespace, self.pod_selector or "", self.port)
        return ScrapeSource(discover, self.timeout, self.concurrency)


def start(view: ClusterView, source: Source, interval: float) -> list[Collector]:
    """Start refreshing `view` from `source` for the life of the process; the metrics to register
    with the webhook's."""
    metrics = DcgmMetrics()
    Refresher(view, source, interval, metrics).start()
    return metrics.collectors()
