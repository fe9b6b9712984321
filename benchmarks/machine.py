"""The machine a benchmark ran on, written beside its figures: these machines are noisy, so
figures compare only within one machine (and best within one run)."""

from __future__ import annotations

import os
import platform
from pathlib import Path

CPUINFO = Path("/proc/cpuinfo")


def machine() -> dict[str, str | int | None]:
    """CPU model, CPU count, Python, OS and host name."""
    lines = CPUINFO.read_text().splitlines() if CPUINFO.exists() else []
    cpu = next((line.split(":", 1)[1].strip() for line in lines if line.startswith("model name")),
               platform.processor())
    return {"cpu": cpu, "cpus": os.cpu_count(), "python": platform.python_version(),
            "platform": platform.platform(), "host": platform.node()}
