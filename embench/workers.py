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


def exit_with_parent(parent: int, blas_threads: int | None = 1) -> None:
    """Worker initializer: exit as soon as the parent dies (even by SIGKILL), not linger.

    ``blas_threads`` caps the worker's BLAS/OpenMP pools (``None``: leave them). A pool of
    worker processes already fills the cores; a BLAS pool of as many threads in each one
    oversubscribes them, and OpenBLAS's spinning threads then make a small product ten times
    slower (LunarLander's frame resize: 244 ms a frame with 2 threads per worker against
    21 ms with 1, measured on this project's 2-core machine under load).
    """
    if blas_threads is not None:
        # pools loaded later read the environment; numpy's is loaded now so that the cap
        # reaches it (a spawned worker may not have imported numpy yet: threadpoolctl only
        # sees libraries already loaded, and the CLI's workers measured 8x slower without it)
        for name in ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS"):
            os.environ[name] = str(blas_threads)
        import numpy  # noqa: F401
        from threadpoolctl import threadpool_limits  # scikit-learn's dependency

        threadpool_limits(blas_threads)

    def watch() -> None:
        while os.getppid() == parent:
            time.sleep(0.5)
        os._exit(1)

    threading.Thread(target=watch, daemon=True).start()
