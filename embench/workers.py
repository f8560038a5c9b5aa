"""Helpers for every process pool (LunarLander data generation, sweeps).

How many CPUs this process may use, and a watchdog so workers never outlive a driver killed
with SIGKILL.
"""

from __future__ import annotations

import os
import threading
import time


def usable_cpus() -> int:
    """CPUs this process may run on (a container's or affinity limit, not the host's count)."""
    if hasattr(os, "process_cpu_count"):  # Python 3.13+
        return os.process_cpu_count() or 1
    if hasattr(os, "sched_getaffinity"):
        return len(os.sched_getaffinity(0)) or 1
    return os.cpu_count() or 1


def exit_with_parent(parent: int) -> None:
    """Worker initializer: exit as soon as the parent dies (even by SIGKILL), not linger."""

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
