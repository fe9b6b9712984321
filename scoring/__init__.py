"""Pure GPU placement scoring: no I/O, no clock, no Kubernetes client, no globals.

One module per signal (`mig`, `topology`, `sharing`, `locality`, `utilization`), each exposing
`evaluate(...) -> SignalResult`; `policy` combines them by workload class.
"""
