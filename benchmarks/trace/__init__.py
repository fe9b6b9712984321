"""Trace replay of GPU placement policies on the Alibaba openb trace (FGD methodology).

Modules: `openb` reads node and pod CSVs; `cluster` holds the replay's cluster state and enforces
every constraint; `workload` orders and inflates the pods; `baselines` holds the peers' policies
(Random, BestFit, GpuPacking, DotProd, FGD); `replay` drives one run and aggregates seeds; `cli`
writes the CSV, the plot and the results JSON. Run with `python -m benchmarks.trace --help`.
"""
