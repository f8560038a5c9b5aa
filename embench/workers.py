"""Worker processes for every process pool (LunarLander data generation, sweeps).

:func:`process_pool` is the one way embench starts worker processes; :func:`usable_cpus`
sizes pools, :func:`exit_with_parent` keeps a worker from outliving its driver.

Why the workers never run the caller's main module
--------------------------------------------------
embench runs wherever its caller was started: a script without an
``if __name__ == "__main__":`` guard, standard input (``python - <<EOF``), ``python -c``,
``python -m pkg.mod``, a Jupyter kernel, or a worker of the caller's own pool. Workers are
*spawned* (a fresh interpreter): forking a process that has loaded torch's OpenMP pool, or that
runs the caller's threads, can deadlock the child. But multiprocessing's ``spawn`` re-creates
the caller's ``__main__`` in every worker (``multiprocessing/spawn.py``:
``get_preparation_data`` records ``init_main_from_path`` or ``init_main_from_name``, and the
child's ``prepare()`` runs that file or module again as ``__mp_main__``). For us that is
never needed, since everything a worker runs is importable from embench, and it breaks users:

- a script without a guard evaluates again in every worker, which then waits forever for the
  data lock its caller holds (a hang);
- ``python -m pkg.mod`` without a guard does the same through ``runpy.run_module``;
- on standard input the worker looks for a file named ``<stdin>`` and dies at start-up.

The ``forkserver`` start method does not help: its preload list (``__main__`` by default) only
decides what the *server* imports, while every child forked from it still receives the same
preparation data and runs the caller's main module again (``popen_forkserver.py`` calls
``spawn.get_preparation_data`` and the child ``spawn._main``; checked on CPython 3.11 with a
preload list of ``["os"]``).

So :func:`process_pool` spawns its workers from :class:`_MainFreeProcess`, whose ``start()``
marks its thread while the stdlib prepares the child; a filter around
``multiprocessing.spawn.get_preparation_data`` drops the two main-module entries for marked
starts only. Every other process (the caller's own pools, on any thread) is prepared exactly
as before, and the rest of the preparation (``sys.path``, working directory, authkey) is kept.
A worker then imports only what unpickling its function needs: embench's modules.

A daemonic process (a ``multiprocessing.Pool`` worker) may not start processes at all; there
:func:`process_pool` returns an executor that runs each call in this process instead.
"""

from __future__ import annotations

import functools
import multiprocessing
import multiprocessing.connection
import multiprocessing.context
import multiprocessing.spawn
import os
import signal
import threading
import time
from collections.abc import Callable, Iterable, Iterator
from concurrent.futures import Executor, Future, ProcessPoolExecutor
from concurrent.futures.process import BrokenProcessPool
from typing import Any

from embench.errors import WorkerDiedError


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


def can_start_processes() -> bool:
    """False in a daemonic process (a ``multiprocessing.Pool`` worker): it may have no children."""
    return not multiprocessing.current_process().daemon


def process_pool(
    workers: int,
    stage: str,
    initializer: Callable[..., object] | None = None,
    initargs: tuple[Any, ...] = (),
) -> Executor:
    """A pool of ``workers`` spawned processes that never run the caller's main module.

    Works whatever the caller's ``__main__`` is (see the module docstring for why and how).
    A worker that dies makes the pool's results raise :class:`~embench.errors.WorkerDiedError`,
    one line naming ``stage`` and the likely cause (its exit code or signal), instead of
    ``BrokenProcessPool``: from :meth:`WorkerPool.map` directly, from a future through
    :meth:`WorkerPool.died`.

    Args:
        workers: processes to start (all at once, when the pool is built).
        stage: what the workers do, for messages ("generate lunarlander").
        initializer: called with ``initargs`` in each worker before its first call.
        initargs: arguments of ``initializer``.

    Returns:
        A :class:`WorkerPool`; in a daemonic process, an :class:`InProcessPool` that runs every
        call in this process when it is submitted (``initializer`` is not run then).

    Example:
        >>> with process_pool(2, "square numbers") as pool:  # doctest: +SKIP
        ...     list(pool.map(abs, [-1, 2]))
        [1, 2]
    """
    if not can_start_processes():
        return InProcessPool()
    return WorkerPool(workers, stage, initializer, initargs)


class WorkerPool(ProcessPoolExecutor):
    """A ``ProcessPoolExecutor`` of main-free spawned workers that reports a dead worker.

    Build it with :func:`process_pool`.
    """

    def __init__(self, workers: int, stage: str,
                 initializer: Callable[..., object] | None = None,
                 initargs: tuple[Any, ...] = ()) -> None:
        self.stage = stage
        self._context = _MainFreeContext()
        super().__init__(max_workers=workers, mp_context=self._context,
                         initializer=initializer, initargs=initargs)
        # Start every worker now, not one per submit as CPython does for spawned workers. A
        # submit that spawns adds to the executor's process table, and on CPython 3.11 it can
        # do so while the executor's thread iterates that table after another worker died
        # (terminate_broken marks the pool broken without the lock submit holds): the thread
        # then dies of "dictionary changed size during iteration" and prints a traceback beside
        # the one-line error. Seen once in the suite. Private API, hence the fallback.
        launch = getattr(self, "_launch_processes", None)
        if callable(launch):
            launch()

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """``Executor.submit``, raising :class:`WorkerDiedError` if a worker has died."""
        try:
            return super().submit(fn, *args, **kwargs)
        except BrokenProcessPool:
            raise self.died() from None
        except OSError:
            # A worker died while this submit woke the executor's thread: CPython may already
            # have closed its wake-up pipe ("handle is closed") after marking the pool broken.
            if getattr(self, "_broken", False):
                raise self.died() from None
            raise

    def map(self, fn: Callable[..., Any], *iterables: Iterable[Any],
            timeout: float | None = None, chunksize: int = 1) -> Iterator[Any]:
        """``Executor.map``, raising :class:`WorkerDiedError` if a worker dies."""
        return self._reporting_deaths(
            super().map(fn, *iterables, timeout=timeout, chunksize=chunksize))

    def _reporting_deaths(self, results: Iterator[Any]) -> Iterator[Any]:
        try:
            yield from results
        except BrokenProcessPool:
            raise self.died() from None

    def died(self) -> WorkerDiedError:
        """The error that says which worker died and why (for a ``BrokenProcessPool``)."""
        codes = self._exit_codes()
        # The executor's own thread may still be reaping the dead worker while the others'
        # SIGTERM codes are in: wait a moment for a code other than that.
        deadline = time.monotonic() + 2.0
        while (not any(c != -signal.SIGTERM for c in codes)
               and time.monotonic() < deadline):
            time.sleep(0.1)
            codes = self._exit_codes()
        # the executor terminates (SIGTERM) the others once one died: that one is the news
        code = next((c for c in codes if c != -signal.SIGTERM), codes[0] if codes else None)
        self._stop_survivors()
        return WorkerDiedError(
            f"A worker process of stage {self.stage!r} died: {_likely_cause(code)}.",
            "Run it again (finished work is kept); if it dies again, use fewer workers or "
            "free memory.")


    def _stop_survivors(self) -> None:
        """Kill the workers still alive in a broken pool: their results will not be read.

        On Python 3.11 a worker blocked writing a large result (a rollout's frames) into a
        pipe nobody reads any more is not terminated when another worker dies; the executor's
        thread and the interpreter's exit then wait for it forever.
        """
        for process in self._context.started:
            try:
                if process.is_alive():
                    process.kill()
            except (ValueError, AssertionError):  # closed, or not a child of this process
                continue

    def _exit_codes(self) -> list[int]:
        """Exit codes of the workers that ended (waiting a moment for those ending now)."""
        ended = {}
        for process in self._context.started:
            try:
                ended[process.sentinel] = process
            except ValueError:  # never started, or closed
                continue
        # a worker's pipe closes moments before its exit status can be read
        for sentinel in multiprocessing.connection.wait(list(ended), timeout=1.0):
            ended[sentinel].join(timeout=5)
        return [p.exitcode for p in ended.values() if p.exitcode is not None]


class InProcessPool(Executor):
    """An executor that runs each call in this process as it is submitted (no workers)."""

    def submit(self, fn: Callable[..., Any], /, *args: Any, **kwargs: Any) -> Future:
        """Run ``fn(*args, **kwargs)`` now; return a finished future with its result."""
        future: Future = Future()
        try:
            future.set_result(fn(*args, **kwargs))
        except BaseException as exc:  # as a worker's exception: raised by future.result()
            future.set_exception(exc)
        return future


def _likely_cause(code: int | None) -> str:
    """What a worker's exit code most likely means, for a user."""
    if code is None:
        return "it ended abruptly (no exit code known)"
    if code < 0:
        try:
            name = signal.Signals(-code).name
        except ValueError:
            name = f"signal {-code}"
        if -code == signal.SIGKILL:
            return f"killed by {name}, most likely out of memory (the kernel's OOM killer)"
        if -code in (signal.SIGTERM, signal.SIGINT):
            return f"stopped by {name} from outside"
        return f"crashed with {name} in native code"
    return (f"it exited with code {code} before finishing its work (its own error, if any, "
            f"is printed above)")


# -- main-free spawning (see the module docstring) ---------------------------------------------

_starting = threading.local()  # .main_free: this thread is starting a _MainFreeProcess
_install_lock = threading.Lock()
_MAIN_ENTRIES = ("init_main_from_path", "init_main_from_name")


def _without_main(get_preparation_data: Callable[[str], dict[str, Any]],
                  ) -> Callable[[str], dict[str, Any]]:
    @functools.wraps(get_preparation_data)
    def preparation_data(name: str) -> dict[str, Any]:
        data = get_preparation_data(name)
        if getattr(_starting, "main_free", False):
            for key in _MAIN_ENTRIES:
                data.pop(key, None)
        return data

    preparation_data.embench_main_free = True  # type: ignore[attr-defined]
    return preparation_data


def _install_preparation_filter() -> None:
    """Wrap the stdlib's ``get_preparation_data`` once (it only acts for marked starts)."""
    with _install_lock:
        current = multiprocessing.spawn.get_preparation_data
        if not getattr(current, "embench_main_free", False):
            multiprocessing.spawn.get_preparation_data = _without_main(current)


class _MainFreeProcess(multiprocessing.context.SpawnProcess):
    """A spawned process whose child does not re-create the caller's ``__main__``."""

    def start(self) -> None:
        _install_preparation_filter()
        _starting.main_free = True
        try:
            super().start()
        finally:
            _starting.main_free = False


class _MainFreeContext(multiprocessing.context.SpawnContext):
    """The spawn context with :class:`_MainFreeProcess`; remembers what it started."""

    def __init__(self) -> None:
        super().__init__()
        self.started: list[_MainFreeProcess] = []

    def Process(self, *args: Any, **kwargs: Any) -> _MainFreeProcess:
        """A new :class:`_MainFreeProcess` (``ProcessPoolExecutor`` builds its workers here)."""
        process = _MainFreeProcess(*args, **kwargs)
        self.started.append(process)
        return process
