"""The webhook (`gpu-extender serve`): kube-scheduler's extender verbs over HTTP, answered from
the cluster view. app.py holds the routes; decisions.py caches each node's score per pod shape,
answers.py turns them into filter/prioritize bodies, preemption.py picks victims, wire.py is the
extender v1 wire format."""
