"""gpu-extender: everything with I/O around the pure `scoring` package."""
