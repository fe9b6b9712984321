"""Live GPU utilization from dcgm-exporter: readings.py parses its text (or Prometheus' answers),
discovery.py finds the exporters, refresh.py reads them in the background for the webhook."""
