"""The fragmentation signal's target workload, from the shapes of the GPU pods the view holds.

ClusterView counts one `fragmentation.Shape` per GPU pod it holds, bound or pending
(`convert.shape`), as pods come and go. After each change the target workload
W = fragmentation.target_workload(counts, coverage) is worked out again (a few dozen shapes at
most), but published, with the next revision, only when it differs from the published W0 enough
to be worth scoring every node again:

    publish W  iff  shapes(W) != shapes(W0)  or  max_m |p_m(W) - p_m(W0)| > TOLERANCE
                    or the cluster's supply (its kinds of nodes) changed

W0 is the workload last published, not the last one worked out, so a slow drift adds up until it
crosses the tolerance. The supply (`fragmentation.Supply`, kept by the view from its nodes)
weighs the shapes, adds the prior for large pods and leaves out shapes no node could hold.
Each publication is a new `Workload` object: the fragmentation measures are memoised on its
identity.
"""

from __future__ import annotations

import logging
from collections import Counter
from dataclasses import dataclass

from scoring.fragmentation import Shape, Supply, Workload, target_workload
from scoring.model import MILLI_PER_GPU

log = logging.getLogger("gpu_extender.shapes")
TOLERANCE = 0.02
"""How far (absolute popularity) a shape may move before the workload is published again."""


@dataclass(frozen=True, slots=True)
class Target:
    """A published target workload and its revision (0: none published yet)."""

    revision: int
    workload: Workload


class ShapeCounts:
    """Pod shapes by pod key, their counts, and the published target workload. Not thread-safe:
    the view calls it under its lock; `target` is replaced whole, so it may be read without it."""

    def __init__(self, coverage: float):
        self.coverage = coverage
        self.target = Target(0, Workload(()))
        self.supply: Supply | None = None
        self._supply_moved = False
        self._of: dict[str, Shape] = {}
        self._counts: Counter[Shape] = Counter()

    def set_supply(self, supply: Supply) -> None:
        """The cluster's supply for the next publication (published then even if no shape moved)."""
        if supply != self.supply:
            self.supply = supply
            self._supply_moved = True

    def add(self, key: str, shape: Shape | None) -> None:
        """Count the pod `key` as `shape` (None: in no shape); it must not be counted already."""
        if shape is not None:
            self._of[key] = shape
            self._counts[shape] += 1

    def remove(self, key: str) -> None:
        shape = self._of.pop(key, None)
        if shape is not None:
            self._counts[shape] -= 1
            if not self._counts[shape]:
                del self._counts[shape]

    def clear(self) -> None:
        self._of.clear()
        self._counts.clear()

    def publish(self) -> bool:
        """Publish the workload of the current counts if it moved (see the module docstring);
        whether it did."""
        workload = target_workload(self._counts, self.coverage, self.supply)
        if not self._supply_moved and not moved(self.target.workload, workload):
            return False
        self._supply_moved = False
        self.target = Target(self.target.revision + 1, workload)
        log.info("target workload %d: %s", self.target.revision,
                 ", ".join(f"{_name(s)} {p:.2f}" for s, p in workload.shapes) or "no GPU pods")
        return True


def moved(published: Workload, workload: Workload, tolerance: float = TOLERANCE) -> bool:
    """Whether `workload` differs from `published` in its shapes or by more than `tolerance` in
    some shape's popularity."""
    before, after = dict(published.shapes), dict(workload.shapes)
    return before.keys() != after.keys() or any(abs(p - before[s]) > tolerance for s, p in after.items())


def _name(shape: Shape) -> str:
    size = f"{shape.gpus} GPU" if shape.milli >= MILLI_PER_GPU else f"{shape.milli}/{MILLI_PER_GPU} GPU"
    return size + (f" ({', '.join(sorted(shape.models))})" if shape.models else "")
