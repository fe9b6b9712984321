"""Before the cluster view has both its node and its pod list, every verb answers with an error
kube-scheduler logs and retries: with the nodes listed but not yet their pods, every GPU would
look free, and a plan made then could hand out devices that running pods hold."""

from __future__ import annotations

import copy

from fastapi.testclient import TestClient

from extender import snapshot
from extender.cluster import ClusterView
from extender.webhook.app import NOT_SYNCED, create_app
from scoring.config import PolicyConfig
from tests.webhook.test_bind import POD, ROOT, Recording


def test_every_verb_waits_for_the_pod_list_then_answers():
    nodes, pods = snapshot.load_snapshot(ROOT / "examples" / "cluster.yaml")
    assert pods, "the example cluster runs pods: without them the check below proves nothing"
    view = ClusterView(PolicyConfig())
    view.replace_nodes(nodes)  # the node list is in, the pod list not yet
    binder = Recording()
    client = TestClient(create_app(view, binder))
    pod = copy.deepcopy(POD)
    pod["metadata"]["uid"] = "uid-early"
    names = [n["metadata"]["name"] for n in nodes]
    ask = {"Pod": pod, "Nodes": None, "NodeNames": names}
    bind = {"PodName": pod["metadata"]["name"], "PodNamespace": pod["metadata"]["namespace"],
            "PodUID": "uid-early", "Node": names[0]}

    assert NOT_SYNCED in client.post("/filter", json=ask).json()["Error"]
    assert client.post("/prioritize", json=ask).json() == []
    assert NOT_SYNCED in client.post("/bind", json=bind).json()["Error"]
    assert client.post("/preempt", json={"Pod": pod, "NodeNameToVictims": {}, "NodeNameToMetaVictims": {}}
                       ).json()["NodeNameToMetaVictims"] in (None, {})
    assert client.get("/readyz").status_code == 503
    told = client.get("/metrics").text
    assert all(f'gpu_extender_unsynced_answers_total{{verb="{verb}"}} 1.0' in told
               for verb in ("filter", "prioritize", "bind", "preempt")), told
    assert binder.bound == []

    view.replace_pods(pods)
    view.synced = True  # as the watcher marks it once both lists are in
    answer = client.post("/filter", json=ask).json()
    assert not answer["Error"] and answer["NodeNames"]
