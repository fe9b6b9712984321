"""Waiting for a process the tests started to answer."""

from __future__ import annotations

import subprocess
import time
from collections.abc import Callable
from pathlib import Path

import httpx


def wait_for(check: Callable[[], bool], what: str, proc: subprocess.Popen, log: Path, seconds: float = 120) -> None:
    """Return once `check()` is true; raise with the end of `log` if `proc` exits or `seconds`
    pass first (`what`: the process and what it failed to do, e.g. "etcd did not start")."""
    deadline = time.monotonic() + seconds
    while True:
        try:
            if check():
                return
        except httpx.TransportError:
            pass
        if proc.poll() is not None or time.monotonic() > deadline:
            raise RuntimeError(f"{what}:\n{log.read_text()[-4000:]}")
        time.sleep(0.1)
