"""The `gpu-extender` command."""

from __future__ import annotations

import ctypes
import gc
import logging
import ssl
import sys
from enum import Enum
from pathlib import Path
from typing import Annotated, Optional

import typer

from extender import snapshot
from extender.cluster import ClusterView
from extender.dcgm import readings
from scoring import config as policy_config

app = typer.Typer(add_completion=False, no_args_is_help=True, help="GPU placement for kube-scheduler.")


class Output(str, Enum):
    table = "table"
    json = "json"


def fail(message: str) -> typer.Exit:
    print(f"gpu-extender: error: {message}", file=sys.stderr)
    return typer.Exit(2)


@app.callback()
def main() -> None:
    """GPU placement for kube-scheduler: MIG, NVLink, model cache and live utilization."""


LOOPBACK = ("127.0.0.1", "::1", "localhost")


@app.command()
def serve(
    cluster: Annotated[
        Optional[Path], typer.Option(help="Serve this snapshot instead of a live cluster (no binding).")
    ] = None,
    kubeconfig: Annotated[
        Optional[Path], typer.Option(help="Live cluster credentials; default: the in-cluster service account.")
    ] = None,
    metrics: Annotated[Optional[list[Path]], typer.Option(help="dcgm-exporter text dump; repeatable.")] = None,
    config: Annotated[Optional[Path], typer.Option(help="Policy config (YAML).")] = None,
    host: Annotated[str, typer.Option(help="Address to listen on; other than loopback needs TLS.")] = "127.0.0.1",
    port: Annotated[int, typer.Option(help="Port to listen on.")] = 8888,
    tls_cert: Annotated[Optional[Path], typer.Option(help="Server certificate (PEM).")] = None,
    tls_key: Annotated[Optional[Path], typer.Option(help="Server key (PEM).")] = None,
    client_ca: Annotated[Optional[Path], typer.Option(help="CA that signs kube-scheduler's client certificate.")] = None,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
    best_only: Annotated[bool, typer.Option(
        "--best-only/--all-feasible",
        help="filter passes only the feasible nodes of the top score (with the shipped extender weight the "
             "pod lands among the same nodes; far less work for kube-scheduler) or every feasible node.",
    )] = True,
    dcgm_service: Annotated[Optional[str], typer.Option(
        help="Live DCGM: scrape the dcgm-exporters of this Service (NAMESPACE/NAME), from its EndpointSlices.")] = None,
    dcgm_pod_selector: Annotated[Optional[str], typer.Option(
        help="Live DCGM: scrape the dcgm-exporter pods matching this label selector in --dcgm-namespace.")] = None,
    dcgm_namespace: Annotated[str, typer.Option(
        help="Namespace of the pods --dcgm-pod-selector picks.")] = "gpu-operator",
    dcgm_port: Annotated[int, typer.Option(help="Port the dcgm-exporters serve /metrics on.")] = 9400,
    prometheus_url: Annotated[Optional[str], typer.Option(
        help="Live DCGM: query this Prometheus for dcgm-exporter metrics instead of scraping (large clusters).")
    ] = None,
    dcgm_interval: Annotated[float, typer.Option(help="Seconds between live DCGM refreshes.")] = 15.0,
    dcgm_timeout: Annotated[float, typer.Option(
        help="Seconds one exporter scrape or Prometheus query may take.")] = 2.0,
    dcgm_concurrency: Annotated[int, typer.Option(help="Exporters scraped at once.")] = 32,
) -> None:
    """Run the extender webhook (filter, prioritize, bind, preempt) for kube-scheduler."""
    import uvicorn

    from extender.dcgm import refresh as dcgm_refresh
    from extender.webhook.app import Binder, SnapshotBinder, create_app

    if host not in LOOPBACK and not (tls_cert and tls_key and client_ca):
        raise fail(f"listening on {host} needs --tls-cert, --tls-key and --client-ca (kube-scheduler's client CA)")
    if cluster and kubeconfig:
        raise fail("--cluster and --kubeconfig exclude each other")
    live_dcgm = dcgm_refresh.DcgmOptions(dcgm_service, dcgm_pod_selector, dcgm_namespace, dcgm_port, prometheus_url,
                                         dcgm_interval, dcgm_timeout, dcgm_concurrency)
    if problem := live_dcgm.problem():
        raise fail(problem)
    if live_dcgm.live and cluster:
        raise fail("--cluster serves a snapshot as of its own time: live DCGM sources need a live cluster")
    if live_dcgm.live and metrics:
        raise fail("--metrics dumps and a live DCGM source exclude each other")
    collectors = []
    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    try:
        cfg = policy_config.parse(snapshot.read_document(config)) if config else policy_config.PolicyConfig()
        binder: Binder
        if cluster:
            view = ClusterView.from_snapshot(cluster, metrics or [], cfg)
            binder = SnapshotBinder()
        else:
            from extender import kube

            api = kube.api_client(kubeconfig)
            view = ClusterView(cfg)
            for dump in metrics or []:
                view.set_samples({**view.samples, **readings.load_dump(dump)})
            binder = kube.KubeBinder(api)
            view.mismatch_listeners.append(binder.report_mismatch)
            view.hold_listeners.append(binder.report_hold_released)
            kube.Watcher(api, view).start()
            if live_dcgm.live:
                collectors = dcgm_refresh.start(view, live_dcgm.source(api), live_dcgm.interval)
    except policy_config.ConfigError as exc:
        raise fail(f"{config}: {exc}") from None
    except (snapshot.FileError, readings.MetricsError) as exc:
        raise fail(str(exc)) from None
    except Exception as exc:  # kubeconfig missing or unreadable, not in a cluster
        raise fail(f"cannot reach the cluster: {exc}") from None
    gc.collect()
    gc.freeze()  # what is loaded now is long-lived: keep it out of every later collection
    _release_free_memory()
    tls = {}
    if tls_cert and tls_key:
        tls = {"ssl_certfile": str(tls_cert), "ssl_keyfile": str(tls_key)}
        if client_ca:
            tls |= {"ssl_ca_certs": str(client_ca), "ssl_cert_reqs": ssl.CERT_REQUIRED}
    uvicorn.run(create_app(view, binder, collectors, best_only), host=host, port=port, log_level=log_level,
                access_log=False, **tls)


def _release_free_memory() -> None:
    """Hand the memory freed after parsing a large snapshot back to the OS (glibc keeps it)."""
    try:
        ctypes.CDLL("libc.so.6").malloc_trim(0)
    except (OSError, AttributeError):
        pass  # not glibc: nothing to do


@app.command()
def score(
    pod: Annotated[list[Path], typer.Option(
        help="Pod manifest (YAML or JSON); repeat it for the pods of one group (LeaderWorkerSet, JobSet, ...).")],
    cluster: Annotated[
        Optional[Path], typer.Option(help="`kubectl get nodes,pods -A -o yaml` output; default: the bundled example.")
    ] = None,
    metrics: Annotated[
        Optional[list[Path]], typer.Option(help="dcgm-exporter text dump; repeatable.")
    ] = None,
    config: Annotated[Optional[Path], typer.Option(help="Policy config (YAML).")] = None,
    output: Annotated[Output, typer.Option(help="table or json.")] = Output.table,
    group_size: Annotated[Optional[int], typer.Option(
        min=1, help="Score POD as the first member of a pod group of this many pods: the domains and their room.")
    ] = None,
) -> None:
    """Dry run: how every node scores for POD, and why (for a pod group: which domain, and its room)."""
    from extender import dryrun

    try:
        dryrun.run(pod, cluster, metrics or [], config, output.value, group_size)
    except dryrun.InputError as exc:
        raise fail(str(exc)) from None


class PluginMode(str, Enum):
    auto = "auto"
    on = "on"
    off = "off"


@app.command()
def agent(
    node_name: Annotated[
        Optional[str], typer.Option(envvar="NODE_NAME", help="Node to annotate (the DaemonSet sets NODE_NAME).")
    ] = None,
    kubeconfig: Annotated[
        Optional[Path], typer.Option(help="Cluster credentials; default: the in-cluster service account.")
    ] = None,
    model_cache_dir: Annotated[
        Optional[Path], typer.Option(help="Model cache: one folder per model, or a models.json manifest.")
    ] = None,
    interval: Annotated[float, typer.Option(min=1, help="Seconds between scans.")] = 60,
    heartbeat_seconds: Annotated[
        float, typer.Option(min=1, help="Renew the heartbeat at least this often, changes or not.")
    ] = 120,
    once: Annotated[bool, typer.Option("--once", help="Scan and publish once, then exit.")] = False,
    print_only: Annotated[
        bool, typer.Option("--print", help="Print the inventory as JSON and exit; never contacts the API server.")
    ] = False,
    print_devices: Annotated[bool, typer.Option(
        "--print-devices", help="Print what the device plugin would advertise and answer, as JSON, and exit; "
                                "never contacts the API server or the kubelet.")] = False,
    device_plugin: Annotated[PluginMode, typer.Option(
        help="Serve the device plugin: on, off, or auto (while the Node has the label gpu-extender.io/device-plugin=true).")
    ] = PluginMode.auto,
    device_plugin_dir: Annotated[Path, typer.Option(
        help="The kubelet's device-plugin directory (its kubelet.sock and our sockets).")
    ] = Path("/var/lib/kubelet/device-plugins"),
    pod_resources_socket: Annotated[Path, typer.Option(
        help="The kubelet's PodResources socket.")] = Path("/var/lib/kubelet/pod-resources/kubelet.sock"),
    read_back: Annotated[bool, typer.Option(
        "--read-back/--no-read-back",
        help="Publish what the kubelet really allocated (PodResources) as the Node's allocations annotation.")] = True,
    read_back_interval: Annotated[float, typer.Option(min=0.1, help="Seconds between PodResources reads.")] = 2.0,
    share_resource: Annotated[str, typer.Option(
        help="The GPU-share resource the plugin advertises (1000 per GPU not in MIG mode); '' shares no GPU.")
    ] = "gpu-extender.io/gpu-milli",
    cdi: Annotated[bool, typer.Option(
        "--cdi/--no-cdi", help="Also name each container's GPUs as CDI devices (nvidia.com/gpu=<UUID>).")] = False,
    mps_pipe_directory: Annotated[Optional[str], typer.Option(
        help="The node's CUDA MPS pipe directory: mounted into share containers, so MPS caps hold.")] = None,
    health_interval: Annotated[float, typer.Option(min=0.1, help="Seconds between GPU health checks.")] = 5.0,
    log_level: Annotated[str, typer.Option(help="debug, info, warning or error.")] = "info",
) -> None:
    """Node agent: publish this node's GPUs, NVLink topology, MIG layout and model cache as annotations;
    serve the device plugin where the node opts in; publish what the kubelet really allocated.

    Exit status: 0 done; 2 bad arguments or no credentials; 3 no NVIDIA driver; 4 --once/--print failed.
    """
    from extender.node import agent as node_agent
    from extender.node.deviceplugin import Options
    from extender.node.kubelet import KubeletOptions

    logging.basicConfig(level=log_level.upper(), format="%(asctime)s %(levelname)s %(name)s: %(message)s")
    if not read_back and device_plugin is not PluginMode.off:
        raise fail("--no-read-back needs --device-plugin off: the device plugin learns what the kubelet holds "
                   "from the read-back")
    kubelet = KubeletOptions(device_plugin.value, device_plugin_dir, pod_resources_socket, share_resource or None,
                             Options(cdi, mps_pipe_directory), health_interval, read_back_interval)
    if print_devices:
        raise typer.Exit(node_agent.print_devices(kubelet))
    raise typer.Exit(node_agent.main(
        node=node_name, kubeconfig=kubeconfig, cache_dir=model_cache_dir, interval=interval,
        heartbeat_seconds=heartbeat_seconds, once=once, print_only=print_only,
        kubelet=kubelet if read_back else None,
    ))
