"""The inference view of a replay: which latency-critical pods land where their model is cached.

openb names no models, so the view adds them (all seeded, the same for every policy):
* a catalogue of `CATALOGUE` models, popularity Zipf(s = 1) by rank (model popularity in serving
  clusters is heavy-tailed: a few base models serve most requests), sizes cycling through real
  checkpoint sizes (Stable Diffusion 1.5 and XL, 7B, 8B, 13B and 70B language models in 16 bits);
* every latency-critical GPU pod serves one model drawn from the catalogue; batch pods none;
* every node starts with `SEEDED` models drawn from the catalogue in its cache (it served them
  before), and caches a model once a pod has loaded it there (nothing is evicted: the whole
  catalogue, 3.4 TB, fits on a GPU server's NVMe drives);
* a pod whose node already holds its model saves a cold start: its load time is drawn from the
  base-model load latencies of the Alibaba GenAI trace (`basemodel_update_latency_anon.csv`,
  milliseconds; median 22.7 s).

Hit share = latency-critical GPU pods placed on a node holding their model / those placed.
"""

from __future__ import annotations

import csv
import random
from bisect import bisect
from dataclasses import dataclass, field
from itertools import accumulate
from pathlib import Path

from .openb import Pod

CATALOGUE = 100
SEEDED = 1
ZIPF_S = 1.0
SIZES = (2_100_000_000, 6_900_000_000, 13_500_000_000, 16_100_000_000, 26_000_000_000,
         141_000_000_000)


def read_latencies(path: str | Path) -> list[float]:
    """Load latencies in seconds from a GenAI trace CSV (`timestamp_anon,value,...`, value in ms)."""
    with Path(path).open(newline="") as f:
        values = [float(row["value"]) / 1000 for row in csv.DictReader(f) if row.get("value")]
    if not values:
        raise ValueError(f"{path}: no latencies")
    return values


@dataclass
class Catalogue:
    names: tuple[str, ...]
    sizes: dict[str, int]
    cumulative: list[float]

    @staticmethod
    def zipf(n: int = CATALOGUE, s: float = ZIPF_S) -> Catalogue:
        names = tuple(f"model-{i:03d}" for i in range(n))
        weights = [1 / (i + 1) ** s for i in range(n)]
        return Catalogue(names, {m: SIZES[i % len(SIZES)] for i, m in enumerate(names)},
                         list(accumulate(weights)))

    def draw(self, rng: random.Random) -> str:
        return self.names[bisect(self.cumulative, rng.random() * self.cumulative[-1])]


@dataclass
class InferenceView:
    """Models of the pods, node caches, and the tally of hits as pods are placed."""

    catalogue: Catalogue
    models: dict[str, str]  # pod name -> model id (latency-critical GPU pods)
    load_seconds: dict[str, float]  # pod name -> cold-start seconds a hit saves
    caches: list[set[str]]  # node -> models cached
    holders: dict[str, int] = field(default_factory=dict)  # model -> nodes caching it
    placed: int = 0
    hits: int = 0
    saved_seconds: float = 0.0

    @staticmethod
    def build(arrivals: list[Pod], nodes: int, latencies: list[float], seed: int,
              catalogue: Catalogue | None = None) -> InferenceView:
        catalogue = catalogue or Catalogue.zipf()
        rng = random.Random(f"inference-{seed}")
        caches = [{catalogue.draw(rng) for _ in range(SEEDED)} for _ in range(nodes)]
        models, load = {}, {}
        for pod in arrivals:
            if pod.latency_critical and pod.num_gpu:
                models[pod.name] = catalogue.draw(rng)
                load[pod.name] = rng.choice(latencies)
        view = InferenceView(catalogue, models, load, caches)
        for cache in caches:
            for m in cache:
                view.holders[m] = view.holders.get(m, 0) + 1
        return view

    def record(self, pod: Pod, node: int) -> None:
        """Tally a placement and cache the pod's model on the node."""
        model = self.models.get(pod.name)
        if model is None:
            return
        self.placed += 1
        cache = self.caches[node]
        if model in cache:
            self.hits += 1
            self.saved_seconds += self.load_seconds[pod.name]
        else:
            cache.add(model)
            self.holders[model] = self.holders.get(model, 0) + 1

    @property
    def hit_share(self) -> float:
        return self.hits / self.placed if self.placed else 0.0
