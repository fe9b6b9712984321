"""A namespace's pod events for the benchmarks, from a watch (polling lists of thousands of pods
would load the API server the runs are measuring)."""

from __future__ import annotations

import threading
from collections.abc import Callable

import orjson
from kubernetes import client
from kubernetes.watch.watch import iter_resp_lines


def watch_pods(core: client.CoreV1Api, namespace: str, on_event: Callable[[str, dict], None],
               stop: threading.Event) -> None:
    """Call `on_event(type, pod)` for every pod event of `namespace` until `stop` is set, in a
    daemon thread; the watch is resumed from the last resource version it saw."""

    def run() -> None:
        version = core.list_namespaced_pod(namespace, limit=1).metadata.resource_version
        while not stop.is_set():
            response = core.list_namespaced_pod(namespace, watch=True, resource_version=version,
                                                allow_watch_bookmarks=True, timeout_seconds=30,
                                                _preload_content=False)
            for line in iter_resp_lines(response):
                event = orjson.loads(line)
                version = event["object"]["metadata"]["resourceVersion"]
                if event["type"] != "BOOKMARK":
                    on_event(event["type"], event["object"])

    threading.Thread(target=run, daemon=True).start()
