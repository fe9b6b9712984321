"""The CoreV1Api calls the agent makes (read_node, patch_node, list/watch of its node's pods), on
one Node kept in memory and no pods."""

from __future__ import annotations

import time
from types import SimpleNamespace
from typing import Any

from kubernetes.client.exceptions import ApiException


class FakeCore:
    def __init__(self, name: str, annotations: dict[str, str] | None = None, labels: dict[str, str] | None = None):
        self.name = name
        self.annotations = dict(annotations or {})
        self.labels = dict(labels or {})
        self.patches: list[dict[str, Any]] = []  # the annotations of every merge patch, in order
        self.down = False  # answer every call with 503

    def read_node(self, name: str, **_: Any) -> SimpleNamespace:
        self._check(name)
        return SimpleNamespace(metadata=SimpleNamespace(name=name, annotations=dict(self.annotations) or None,
                                                        labels=dict(self.labels) or None))

    def patch_node(self, name: str, body: dict[str, Any], **kwargs: Any) -> None:
        self._check(name)
        assert kwargs.get("_content_type") == "application/merge-patch+json", kwargs
        assert set(body) == {"metadata"} and set(body["metadata"]) == {"annotations"}, body
        patch = body["metadata"]["annotations"]
        self.patches.append(dict(patch))
        for key, value in patch.items():
            if value is None:
                self.annotations.pop(key, None)
            else:
                self.annotations[key] = value

    def list_pod_for_all_namespaces(self, watch: bool = False, **_: Any) -> SimpleNamespace:
        """No pods: an empty list, or a watch that ends after a while with no event."""
        if watch:
            time.sleep(0.2)
            return SimpleNamespace(stream=lambda **_: iter(()), close=lambda: None, release_conn=lambda: None)
        return SimpleNamespace(data=b'{"items": [], "metadata": {"resourceVersion": "1"}}')

    def node(self) -> dict[str, Any]:
        """The Node as the API serves it to the extender."""
        return {"kind": "Node", "metadata": {"name": self.name, "annotations": dict(self.annotations)}}

    def _check(self, name: str) -> None:
        if self.down:
            raise ApiException(status=503, reason="Service Unavailable")
        if name != self.name:
            raise ApiException(status=404, reason="Not Found")
