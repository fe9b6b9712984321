"""The only module that talks to the Kubernetes API (the official `kubernetes` client).

`ListWatch` keeps one kind of object current: list (in pages, slimmed page by page), then watch
from the list's resourceVersion; a watch that ends is resumed from the last resourceVersion seen, a
410 Gone (history compacted, API server restarted) re-lists, other errors back off exponentially up
to 30 s. `Watcher` keeps a ClusterView current with two of them (nodes, pods); the node agent
watches the pods of its own node with one.
Objects stay plain JSON read with orjson (`_preload_content=False`): the client's model classes
are far too slow for tens of thousands of pods.

`KubeBinder` binds with one Binding that carries the plan and the score breakdown as annotations
(the API server puts them on the pod with the node name, so a restarted extender finds every plan
on the pods), then posts an Event on the pod in the background.
"""

from __future__ import annotations

import copy
import json
import logging
import queue
import threading
import time
from collections.abc import Callable
from datetime import datetime, timezone
from functools import partial
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from extender import annotations as ann
from extender import workload_api
from extender.webhook.app import BindError
from extender.cluster import ClusterView, pod_key, slim
from extender.groups import Released
from scoring.model import ScoreBreakdown

log = logging.getLogger("gpu_extender.kube")
WATCH_SECONDS = 300
LIST_PAGE = 500
EVENTS_QUEUED = 10_000
CONNECTIONS = 64
MAX_BACKOFF = 30.0
GANGS_WAIT = 10  # seconds the view waits for the Workload API's pod groups before it answers without them
CREDENTIALS_CHECK_SECONDS = 10.0


def api_client(kubeconfig: Path | None) -> client.ApiClient:
    """From a kubeconfig file, else the in-cluster service account. The connection pool holds
    CONNECTIONS: kube-scheduler binds many pods at once, and a call beyond the pool would open
    (and close) a TLS connection of its own."""
    configuration = client.Configuration()
    if kubeconfig is not None:
        config.load_kube_config(config_file=str(kubeconfig), client_configuration=configuration)
    else:
        config.load_incluster_config(client_configuration=configuration)
    configuration.connection_pool_maxsize = CONNECTIONS
    if (refresh := configuration.refresh_api_key_hook) is not None:
        configuration.refresh_api_key_hook = _at_most_every(CREDENTIALS_CHECK_SECONDS, refresh)
    return client.ApiClient(configuration)


def _at_most_every(seconds: float, refresh: Callable[[client.Configuration], None]
                   ) -> Callable[[client.Configuration], None]:
    """The client runs its credential hook before every request. The hook re-applies the whole
    kubeconfig, and setting the server address re-reads the proxy settings from every environment
    variable (in a pod, a few for each Service of the namespace): most of the client's CPU per
    bind. The loaders renew a token minutes before it expires (kubeconfig) or re-read the
    service-account token each minute (in cluster), so checking every `seconds` is as safe.

    The library's hook applies everything to the configuration it is given and installs itself
    there again. It is given a shallow copy, whose `api_key` dict (where the token goes) is the
    real one's: the real configuration keeps this hook, whichever threads call it and when."""
    lock = threading.Lock()
    due = 0.0

    def hook(configuration: client.Configuration) -> None:
        nonlocal due
        if time.monotonic() < due:
            return
        with lock:
            now = time.monotonic()
            if now >= due:
                refresh(copy.copy(configuration))
                due = now + seconds

    return hook


class ListWatch:
    """One kind of object kept current: list it (in pages of `page_size`, each item passed through
    `keep`, None dropping it), hand the whole list to `on_list`, then watch from the list's
    resourceVersion and hand each change to `on_event(type, object)`. A watch that ends is resumed
    from the last resourceVersion seen, a 410 Gone re-lists, other errors back off exponentially up
    to MAX_BACKOFF while the last state stays in place. `selectors`: the list call's
    field_selector / label_selector."""

    def __init__(self, kind: str, list_call: Callable[..., Any], on_list: Callable[[list[dict[str, Any]]], None],
                 on_event: Callable[[str, dict[str, Any]], None], *, keep: Callable[[dict[str, Any]], Any] = lambda o: o,
                 page_size: int = LIST_PAGE, stop: threading.Event | None = None, **selectors: str):
        self.kind, self.list_call, self.on_list, self.on_event = kind, list_call, on_list, on_event
        self.keep, self.page_size, self.selectors = keep, page_size, selectors
        self.stop = stop or threading.Event()
        self.listed = threading.Event()

    def start(self) -> threading.Thread:
        thread = threading.Thread(target=self.run, name=f"watch-{self.kind}", daemon=True)
        thread.start()
        return thread

    def run(self) -> None:
        backoff = 1.0
        while not self.stop.is_set():
            try:
                items, resource_version = self.list()
                self.on_list(items)
                self.listed.set()
                log.info("listed %s: kept %d", self.kind, len(items))
                self._watch(resource_version)
                backoff = 1.0
            except Exception as exc:  # the API server may be away; keep the last state
                log.warning("%s watch failed (%s); retrying in %.0fs", self.kind, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def list(self, timeout: float | None = None) -> tuple[list[Any], str]:
        """What `keep` keeps of every object, and the list's resourceVersion. Read in pages and
        kept page by page: 50,000 full pods at once would be hundreds of MB, left fragmented."""
        kept: list[Any] = []
        token = None
        while True:
            page = orjson.loads(self.list_call(limit=self.page_size, _continue=token, _preload_content=False,
                                               _request_timeout=timeout, **self.selectors).data)
            kept += filter(None, map(self.keep, page.get("items") or []))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return kept, page["metadata"]["resourceVersion"]

    def _watch(self, resource_version: str) -> None:
        """Hand over watch events until the history is gone (410 Gone: return to re-list) or stop."""
        while not self.stop.is_set():
            try:
                response = self.list_call(
                    watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS, _request_timeout=WATCH_SECONDS + 30, _preload_content=False,
                    **self.selectors,
                )
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch from resourceVersion %s expired (410 Gone): re-listing", self.kind,
                             resource_version)
                    return
                raise
            try:
                for line in iter_resp_lines(response):
                    if not line:
                        continue
                    event = orjson.loads(line)
                    obj, kind_of_event = event.get("object") or {}, event.get("type")
                    if kind_of_event == "ERROR":
                        if obj.get("code") == 410:
                            log.info("%s watch from resourceVersion %s expired (410 Gone): re-listing",
                                     self.kind, resource_version)
                            return
                        raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                    resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
                    if kind_of_event != "BOOKMARK":
                        self.on_event(kind_of_event, obj)
            finally:
                response.close()
                response.release_conn()


class Watcher:
    """Keeps a ClusterView current from a watch of every node and every pod, and of the Workload
    API's pod groups where the API server serves them (their minCount sizes groups)."""

    def __init__(self, api: client.ApiClient, view: ClusterView, page_size: int = LIST_PAGE):
        core = client.CoreV1Api(api)
        self.view = view
        self.stop = threading.Event()
        cfg = view.config
        self.nodes, self.pods = (
            ListWatch("nodes", core.list_node, view.replace_nodes, self._node_event,
                      keep=partial(slim, "Node", config=cfg), page_size=page_size, stop=self.stop),
            ListWatch("pods", core.list_pod_for_all_namespaces, view.replace_pods, self._pod_event,
                      keep=partial(slim, "Pod", config=cfg), page_size=page_size, stop=self.stop),
        )
        found = workload_api.served(api)
        self.gangs = None if found is None else ListWatch(
            f"{found[1]}.{workload_api.GROUP}/{found[0]}", workload_api.list_call(api, *found), self._gangs_listed,
            self._gang_event, page_size=page_size, stop=self.stop)
        self._gang_keys: dict[str, set[str]] = {}  # object -> the gangs it sized

    def start(self) -> None:
        for watch in (self.nodes, self.pods, self.gangs):
            if watch is not None:
                watch.start()
        threading.Thread(target=self._mark_synced, name="watch-synced", daemon=True).start()

    def _gangs_listed(self, items: list[dict[str, Any]]) -> None:
        self._gang_keys = {pod_key(o): set(workload_api.min_counts(o)) for o in items}
        self.view.set_min_counts({k: v for o in items for k, v in workload_api.min_counts(o).items()},
                                 replace_all=True)

    def _gang_event(self, event: str, obj: dict[str, Any]) -> None:
        counts = {} if event == "DELETED" else workload_api.min_counts(obj)
        before = self._gang_keys.pop(pod_key(obj), set())
        if counts:
            self._gang_keys[pod_key(obj)] = set(counts)
        self.view.set_min_counts(counts, gone=before - set(counts))

    def _mark_synced(self) -> None:
        if self.gangs is not None and not self.gangs.listed.wait(GANGS_WAIT):
            log.warning("%s not listed within %ds (RBAC?): group sizes are counted from their pods until it is",
                        self.gangs.kind, GANGS_WAIT)
        for watch in (self.nodes, self.pods):
            watch.listed.wait()
        self.view.synced = True
        log.info("cluster view synced")

    def _node_event(self, event: str, obj: dict[str, Any]) -> None:
        if event == "DELETED":
            self.view.remove_node((obj.get("metadata") or {}).get("name", ""))
        else:
            self.view.upsert_node(obj)

    def _pod_event(self, event: str, obj: dict[str, Any]) -> None:
        if event == "DELETED":
            self.view.remove_pod(pod_key(obj))
        else:
            self.view.upsert_pod(obj)


class EventPoster:
    """Posts Events on pods from a background thread, so that no decision waits for one (best
    effort: a lost Event is a lost explanation, not a lost decision; at most EVENTS_QUEUED wait)."""

    def __init__(self, core: client.CoreV1Api, component: str, host: str | None = None):
        self.core, self.component, self.host = core, component, host
        self._events: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=EVENTS_QUEUED)
        threading.Thread(target=self._post_events, name="events", daemon=True).start()

    def post(self, namespace: str, name: str, uid: str | None, reason: str, message: str,
             kind: str = "Normal") -> None:
        now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
        source = {"component": self.component} | ({"host": self.host} if self.host else {})
        event = {
            "apiVersion": "v1", "kind": "Event",
            "metadata": {"generateName": f"{name}.", "namespace": namespace},
            "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": uid},
            "reason": reason, "type": kind, "count": 1, "firstTimestamp": now, "lastTimestamp": now,
            "message": message[:1024], "source": source,
        }
        try:
            self._events.put_nowait(event)
        except queue.Full:
            log.warning("event for %s/%s dropped: %d events waiting to be posted", namespace, name, EVENTS_QUEUED)

    def _post_events(self) -> None:
        while True:
            event = self._events.get()
            meta = event["metadata"]
            try:
                _release(self.core.create_namespaced_event(meta["namespace"], event, _preload_content=False))
            except Exception as exc:
                log.warning("event for %s/%s not recorded: %s", meta["namespace"],
                            event["involvedObject"]["name"], exc)


class KubeBinder:
    """Binds with one API call: the Binding carries the plan and score annotations, which the API
    server copies onto the pod as it sets spec.nodeName, so a pod is never bound without its plan.
    The GPUPlanned Event is posted afterwards (`EventPoster`)."""

    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)
        self.events = EventPoster(self.core, "gpu-extender")

    def bind(self, pod: dict, node: str, plan: dict[str, Any], breakdown: ScoreBreakdown, why: str) -> None:
        meta = pod.get("metadata") or {}
        name, namespace, uid = meta.get("name"), meta.get("namespace") or "default", meta.get("uid")
        notes = {ann.PLAN: json.dumps(plan), ann.SCORE: json.dumps(ann.score_to_dict(breakdown))}
        binding = {"apiVersion": "v1", "kind": "Binding",
                   "metadata": {"name": name, "namespace": namespace, "uid": uid, "annotations": notes},
                   "target": {"apiVersion": "v1", "kind": "Node", "name": node}}
        try:
            _release(self.core.create_namespaced_pod_binding(name, namespace, binding, _preload_content=False))
        except ApiException as exc:
            raise BindError(f"API server answered {exc.status} {exc.reason}: {_message(exc)}") from None
        except Exception as exc:  # connection refused, timeouts
            raise BindError(f"API server unreachable: {exc}") from None
        self.events.post(namespace, name, uid, "GPUPlanned", f"gpu-extender placed the pod on {node} with {why}")

    def report_hold_released(self, hold: Released, pod: dict[str, Any] | None) -> None:
        """The room held for a pod group ran out before the group was whole (Event on one of its pods)."""
        message = (f"released the room held for pod group {hold.name} in {hold.domain}: {hold.missing} of "
                   f"{hold.size} members still unplaced after groups.holdSeconds")
        log.warning("%s", message)
        if pod is not None:
            meta = pod.get("metadata") or {}
            self.events.post(meta.get("namespace") or "default", str(meta.get("name")), meta.get("uid"),
                             "GroupHoldReleased", message, kind="Warning")

    def report_mismatch(self, pod: dict[str, Any], node: str, what: str) -> None:
        """A pod holds other devices than its plan named (the node's read-back says so)."""
        meta = pod.get("metadata") or {}
        name, namespace = meta.get("name"), meta.get("namespace") or "default"
        log.warning("pod %s/%s on %s: %s; counting what the kubelet allocated", namespace, name, node, what)
        self.events.post(namespace, str(name), meta.get("uid"), "GPUAllocationMismatch",
                         f"on {node}: {what}; gpu-extender counts what the kubelet allocated", kind="Warning")


def _release(response: Any) -> None:
    """Give an unread response's connection back to the pool. Unread (`_preload_content=False`),
    it would be dropped, and every call would pay for a new TLS handshake."""
    response.drain_conn()
    response.release_conn()


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message", "")
    except ValueError:
        return str(exc.body or "")[:200]
