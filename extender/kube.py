"""The only module that talks to the Kubernetes API (the official `kubernetes` client).

`Watcher` keeps a ClusterView current: list (in pages, slimmed page by page), then watch from the
list's resourceVersion; a watch that ends is resumed from the last resourceVersion seen, a 410 Gone
(history compacted, API server restarted) re-lists, other errors back off exponentially up to 30 s.
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
from pathlib import Path
from typing import Any

import orjson
from kubernetes import client, config
from kubernetes.client.exceptions import ApiException
from kubernetes.watch.watch import iter_resp_lines

from extender import annotations as ann
from extender.app import BindError
from extender.cluster import ClusterView, pod_key, slim
from scoring.model import ScoreBreakdown

log = logging.getLogger("gpu_extender.kube")
WATCH_SECONDS = 300
LIST_PAGE = 500
EVENTS_QUEUED = 10_000
CONNECTIONS = 64
MAX_BACKOFF = 30.0
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


class Watcher:
    def __init__(self, api: client.ApiClient, view: ClusterView, page_size: int = LIST_PAGE):
        self.core = client.CoreV1Api(api)
        self.view = view
        self.page_size = page_size
        self.stop = threading.Event()
        self._listed = {"nodes": threading.Event(), "pods": threading.Event()}

    def start(self) -> None:
        for kind in self._listed:
            threading.Thread(target=self._run, args=(kind,), name=f"watch-{kind}", daemon=True).start()
        threading.Thread(target=self._mark_synced, name="watch-synced", daemon=True).start()

    def _mark_synced(self) -> None:
        for listed in self._listed.values():
            listed.wait()
        self.view.synced = True
        log.info("cluster view synced")

    def _run(self, kind: str) -> None:
        backoff = 1.0
        list_call: Callable[..., Any] = self.core.list_node if kind == "nodes" else self.core.list_pod_for_all_namespaces
        while not self.stop.is_set():
            try:
                items, resource_version = self._list(kind, list_call)
                (self.view.replace_nodes if kind == "nodes" else self.view.replace_pods)(items)
                self._listed[kind].set()
                log.info("listed %s: kept %d", kind, len(items))
                self._watch(kind, list_call, resource_version)
                backoff = 1.0
            except Exception as exc:  # the API server may be away; keep serving the last view
                log.warning("%s watch failed (%s); retrying in %.0fs", kind, exc, backoff)
                self.stop.wait(backoff)
                backoff = min(backoff * 2, MAX_BACKOFF)

    def _list(self, kind: str, list_call: Callable[..., Any]) -> tuple[list[dict[str, Any]], str]:
        """What the view keeps of every object, and the list's resourceVersion. Read in pages and
        slimmed page by page: 50,000 full pods at once would be hundreds of MB, left fragmented."""
        singular = "Node" if kind == "nodes" else "Pod"
        kept: list[dict[str, Any]] = []
        share = self.view.config.sharing.resource
        token = None
        while True:
            page = orjson.loads(list_call(limit=self.page_size, _continue=token, _preload_content=False).data)
            kept += filter(None, (slim(singular, item, share) for item in page.get("items") or []))
            token = (page.get("metadata") or {}).get("continue")
            if not token:
                return kept, page["metadata"]["resourceVersion"]

    def _watch(self, kind: str, list_call: Callable[..., Any], resource_version: str) -> None:
        """Apply watch events until the history is gone (410 Gone: return to re-list) or stop."""
        while not self.stop.is_set():
            try:
                response = list_call(
                    watch=True, resource_version=resource_version, allow_watch_bookmarks=True,
                    timeout_seconds=WATCH_SECONDS, _request_timeout=WATCH_SECONDS + 30, _preload_content=False,
                )
            except ApiException as exc:
                if exc.status == 410:
                    log.info("%s watch from resourceVersion %s expired (410 Gone): re-listing", kind, resource_version)
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
                                     kind, resource_version)
                            return
                        raise RuntimeError(f"watch error {obj.get('code')}: {obj.get('message')}")
                    resource_version = (obj.get("metadata") or {}).get("resourceVersion", resource_version)
                    if kind_of_event != "BOOKMARK":
                        self._apply(kind, kind_of_event, obj)
            finally:
                response.close()
                response.release_conn()

    def _apply(self, kind: str, event: str | None, obj: dict[str, Any]) -> None:
        if kind == "nodes":
            if event == "DELETED":
                self.view.remove_node((obj.get("metadata") or {}).get("name", ""))
            else:
                self.view.upsert_node(obj)
        elif event == "DELETED":
            self.view.remove_pod(pod_key(obj))
        else:
            self.view.upsert_pod(obj)


class KubeBinder:
    """Binds with one API call: the Binding carries the plan and score annotations, which the API
    server copies onto the pod as it sets spec.nodeName, so a pod is never bound without its plan.
    The GPUPlanned Event is posted afterwards by a background thread (best effort: a lost Event is
    a lost explanation, not a lost decision)."""

    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)
        self._events: queue.Queue[dict[str, Any]] = queue.Queue(maxsize=EVENTS_QUEUED)
        threading.Thread(target=self._post_events, name="events", daemon=True).start()

    def bind(self, pod: dict, node: str, plan: dict[str, Any], breakdown: ScoreBreakdown) -> None:
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
        try:
            self._events.put_nowait(_event(name, namespace, uid, node, breakdown))
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


def _event(name: str, namespace: str, uid: str | None, node: str, breakdown: ScoreBreakdown) -> dict[str, Any]:
    now = datetime.now(timezone.utc).strftime("%Y-%m-%dT%H:%M:%SZ")
    return {
        "apiVersion": "v1", "kind": "Event",
        "metadata": {"generateName": f"{name}.", "namespace": namespace},
        "involvedObject": {"apiVersion": "v1", "kind": "Pod", "name": name, "namespace": namespace, "uid": uid},
        "reason": "GPUPlanned", "type": "Normal", "count": 1, "firstTimestamp": now, "lastTimestamp": now,
        "message": f"gpu-extender placed the pod on {node}: {breakdown.reason}"[:1024],
        "source": {"component": "gpu-extender"},
    }


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
