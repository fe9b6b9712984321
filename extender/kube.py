"""The only module that talks to the Kubernetes API (the official `kubernetes` client).

`Watcher` keeps a ClusterView current: list (in pages, slimmed page by page), then watch from the
list's resourceVersion; a watch that ends is resumed from the last resourceVersion seen, a 410 Gone
(history compacted, API server restarted) re-lists, other errors back off exponentially up to 30 s.
Objects stay plain JSON read with orjson (`_preload_content=False`): the client's model classes
are far too slow for tens of thousands of pods.

`KubeBinder` binds: it writes the plan and the score breakdown onto the pod first (so a restarted
extender finds every plan on the pods), then creates the Binding, then an Event on the pod.
"""

from __future__ import annotations

import json
import logging
import threading
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
MAX_BACKOFF = 30.0


def api_client(kubeconfig: Path | None) -> client.ApiClient:
    """From a kubeconfig file, else the in-cluster service account."""
    if kubeconfig is not None:
        return config.new_client_from_config(config_file=str(kubeconfig))
    config.load_incluster_config()
    return client.ApiClient()


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
        token = None
        while True:
            page = orjson.loads(list_call(limit=self.page_size, _continue=token, _preload_content=False).data)
            kept += filter(None, (slim(singular, item) for item in page.get("items") or []))
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
    def __init__(self, api: client.ApiClient):
        self.core = client.CoreV1Api(api)

    def bind(self, pod: dict, node: str, plan: dict[str, Any], breakdown: ScoreBreakdown) -> None:
        meta = pod.get("metadata") or {}
        name, namespace, uid = meta.get("name"), meta.get("namespace") or "default", meta.get("uid")
        score = ann.score_to_dict(breakdown)
        patch = {"metadata": {"annotations": {ann.PLAN: json.dumps(plan), ann.SCORE: json.dumps(score)}}}
        try:
            self.core.patch_namespaced_pod(name, namespace, patch, _preload_content=False)
            body = client.V1Binding(
                metadata=client.V1ObjectMeta(name=name, namespace=namespace, uid=uid),
                target=client.V1ObjectReference(kind="Node", name=node, api_version="v1"),
            )
            self.core.create_namespaced_pod_binding(name, namespace, body, _preload_content=False)
        except ApiException as exc:
            raise BindError(f"API server answered {exc.status} {exc.reason}: {_message(exc)}") from None
        except Exception as exc:  # connection refused, timeouts
            raise BindError(f"API server unreachable: {exc}") from None
        self._event(name, namespace, uid, node, breakdown)

    def _event(self, name: str, namespace: str, uid: str | None, node: str, breakdown: ScoreBreakdown) -> None:
        now = datetime.now(timezone.utc)
        event = client.CoreV1Event(
            metadata=client.V1ObjectMeta(generate_name=f"{name}.", namespace=namespace),
            involved_object=client.V1ObjectReference(kind="Pod", name=name, namespace=namespace, uid=uid,
                                                     api_version="v1"),
            reason="GPUPlanned", type="Normal", count=1, first_timestamp=now, last_timestamp=now,
            message=f"gpu-extender placed the pod on {node}: {breakdown.reason}"[:1024],
            source=client.V1EventSource(component="gpu-extender"),
        )
        try:
            self.core.create_namespaced_event(namespace, event, _preload_content=False)
        except Exception as exc:  # the pod is bound; a lost event is only a lost explanation
            log.warning("event for %s/%s not recorded: %s", namespace, name, exc)


def _message(exc: ApiException) -> str:
    try:
        return json.loads(exc.body or "{}").get("message", "")
    except ValueError:
        return str(exc.body or "")[:200]
