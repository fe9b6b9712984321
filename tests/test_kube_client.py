"""The API client the extender builds: credentials checked every few seconds, not on every call."""

from __future__ import annotations

import json
import threading
from http.server import BaseHTTPRequestHandler, ThreadingHTTPServer
from pathlib import Path

import pytest
import yaml
from kubernetes import client
from kubernetes.client import configuration as client_configuration

from extender import kube


def test_the_credential_hook_runs_at_most_once_per_period(monkeypatch):
    clock = [100.0]
    monkeypatch.setattr(kube.time, "monotonic", lambda: clock[0])
    runs = []
    configuration = client.Configuration()
    configuration.refresh_api_key_hook = kube._at_most_every(10.0, runs.append)
    for t in (100.0, 105.0, 109.9, 110.0, 119.0, 125.0):
        clock[0] = t
        configuration.refresh_api_key_hook(configuration)
    assert len(runs) == 3  # at 100, 110 and 125


def test_a_renewed_token_reaches_the_configuration_which_keeps_the_throttle(monkeypatch):
    """Like the library's loaders, the hook writes the token into `api_key` and installs itself
    again on the configuration it is given; the real one must get the token and keep our hook all
    along (another thread may read the hook while one refreshes)."""
    clock = [0.0]
    monkeypatch.setattr(kube.time, "monotonic", lambda: clock[0])
    configuration = client.Configuration()
    hook_seen_during_refresh = []

    def library_hook(given: client.Configuration) -> None:
        given.refresh_api_key_hook = library_hook
        given.api_key["BearerToken"] = f"token-at-{clock[0]:g}"
        hook_seen_during_refresh.append(configuration.refresh_api_key_hook)

    ours = configuration.refresh_api_key_hook = kube._at_most_every(10.0, library_hook)
    for t in (0.0, 5.0, 12.0):
        clock[0] = t
        assert configuration.get_api_key_with_prefix("BearerToken") == f"token-at-{0 if t < 10 else t:g}"
        assert configuration.refresh_api_key_hook is ours
    assert hook_seen_during_refresh == [ours, ours]


@pytest.fixture()
def api_server():
    """A loopback HTTP server answering every GET with an empty pod list; records the headers."""
    seen: list[str | None] = []

    class Handler(BaseHTTPRequestHandler):
        def do_GET(self):  # noqa: N802 (http.server's name)
            seen.append(self.headers.get("Authorization"))
            body = json.dumps({"kind": "PodList", "apiVersion": "v1", "metadata": {}, "items": []}).encode()
            self.send_response(200)
            self.send_header("Content-Type", "application/json")
            self.send_header("Content-Length", str(len(body)))
            self.end_headers()
            self.wfile.write(body)

        def log_message(self, *args):
            pass

    server = ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    threading.Thread(target=server.serve_forever, daemon=True).start()
    yield f"http://127.0.0.1:{server.server_address[1]}", seen
    server.shutdown()


def test_calls_carry_the_token_without_rereading_the_proxy_environment(api_server, tmp_path: Path, monkeypatch):
    url, seen = api_server
    kubeconfig = tmp_path / "kubeconfig"
    kubeconfig.write_text(yaml.safe_dump({
        "apiVersion": "v1", "kind": "Config", "current-context": "t",
        "clusters": [{"name": "t", "cluster": {"server": url}}],
        "users": [{"name": "u", "user": {"token": "secret-token"}}],
        "contexts": [{"name": "t", "context": {"cluster": "t", "user": "u"}}],
    }))
    core = client.CoreV1Api(kube.api_client(kubeconfig))
    lookups = []
    real = client_configuration.getproxies
    monkeypatch.setattr(client_configuration, "getproxies", lambda: lookups.append(1) or real())
    for _ in range(20):
        core.list_namespaced_pod("default", _preload_content=False).release_conn()
    assert seen == ["Bearer secret-token"] * 20
    assert len(lookups) <= 1  # the client's own hook would set the host, and read them, on every call
