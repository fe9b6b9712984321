"""Where the dcgm-exporters are: their scrape URLs, read from the Kubernetes API.

A second module that talks to the API server (besides `kube`): it only lists, with the official
client, one Service's EndpointSlices or the pods matching a label selector in one namespace, and
is called from the DCGM refresh thread, never from a request. Rules:
- EndpointSlices are those labelled `kubernetes.io/service-name=<service>`; an endpoint whose
  `ready` condition is false is left out (unset counts as ready, as the API says). Its first
  address is scraped.
- Pods must be Running, not being deleted, and have a pod IP.
- Every exporter is scraped at `http://<address>:<port>/metrics`, `port` as configured (9400 is
  dcgm-exporter's default); the node is the endpoint's `nodeName` / the pod's `spec.nodeName`.
- A URL listed twice (while a slice is being replaced) is scraped once. Dual-stack Services list
  each exporter once per address family: it is then read twice, harmlessly (same GPUs).
"""

from __future__ import annotations

from collections.abc import Iterable
from dataclasses import dataclass
from typing import Any

import orjson
from kubernetes import client
from kubernetes.client.exceptions import ApiException

SERVICE_NAME_LABEL = "kubernetes.io/service-name"
LIST_TIMEOUT = 10.0


class DiscoveryError(RuntimeError):
    """The API server could not be asked, or refused."""


@dataclass(frozen=True, slots=True)
class Endpoint:
    """One dcgm-exporter: the node it reports on ('' when the API does not say) and its URL."""

    node: str
    url: str


def metrics_url(address: str, port: int) -> str:
    host = f"[{address}]" if ":" in address else address  # IPv6
    return f"http://{host}:{port}/metrics"


class ServiceEndpoints:
    """The ready endpoints of a Service, from its EndpointSlices."""

    def __init__(self, api: client.ApiClient, namespace: str, service: str, port: int):
        self.discovery = client.DiscoveryV1Api(api)
        self.namespace, self.service, self.port = namespace, service, port

    def __str__(self) -> str:
        return f"EndpointSlices of Service {self.namespace}/{self.service}"

    def __call__(self) -> list[Endpoint]:
        slices = _items(lambda: self.discovery.list_namespaced_endpoint_slice(
            self.namespace, label_selector=f"{SERVICE_NAME_LABEL}={self.service}",
            _preload_content=False, _request_timeout=LIST_TIMEOUT), str(self))
        found = []
        for endpoint_slice in slices:
            for endpoint in endpoint_slice.get("endpoints") or []:
                addresses = endpoint.get("addresses") or []
                if addresses and (endpoint.get("conditions") or {}).get("ready") is not False:
                    found.append(Endpoint(endpoint.get("nodeName") or "", metrics_url(addresses[0], self.port)))
        return _unique(found)


class PodEndpoints:
    """The running pods matching a label selector in a namespace."""

    def __init__(self, api: client.ApiClient, namespace: str, selector: str, port: int):
        self.core = client.CoreV1Api(api)
        self.namespace, self.selector, self.port = namespace, selector, port

    def __str__(self) -> str:
        return f"pods {self.selector!r} in namespace {self.namespace}"

    def __call__(self) -> list[Endpoint]:
        pods = _items(lambda: self.core.list_namespaced_pod(
            self.namespace, label_selector=self.selector, _preload_content=False,
            _request_timeout=LIST_TIMEOUT), str(self))
        found = []
        for pod in pods:
            status, spec = pod.get("status") or {}, pod.get("spec") or {}
            deleting = (pod.get("metadata") or {}).get("deletionTimestamp")
            if status.get("phase") == "Running" and status.get("podIP") and not deleting:
                found.append(Endpoint(spec.get("nodeName") or "", metrics_url(status["podIP"], self.port)))
        return _unique(found)


def _items(call: Any, what: str) -> list[dict[str, Any]]:
    try:
        return orjson.loads(call().data).get("items") or []
    except ApiException as exc:
        raise DiscoveryError(f"listing {what}: API server answered {exc.status} {exc.reason}") from None
    except Exception as exc:  # connection refused, timeouts, a body that is not JSON
        raise DiscoveryError(f"listing {what}: {type(exc).__name__}: {exc}") from None


def _unique(endpoints: Iterable[Endpoint]) -> list[Endpoint]:
    return list({e.url: e for e in endpoints}.values())
