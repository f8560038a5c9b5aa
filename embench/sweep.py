"""Sweeps: many runs as a graph of content-keyed jobs on a local process pool or a Ray cluster.

A sweep expands encoders x z sizes x seeds x tasks into jobs:

- one **data** job per task (generate or verify the task's data), then
- one **run** job per (encoder, z, seed, task), depending on its task's data job.

A run job is :func:`embench.runner.run`: train (or load the checkpoint) -> embed (or read the
cache) -> probe search -> record. Each of those stages writes the same content-keyed files a
single ``embench run`` writes and skips itself when its output exists, so a sweep resumes by
skipping finished work and shares it with single runs (and the other way round). Train, embed
and probe search of one run stay in one job because they are strictly sequential and each is
skipped on its own; splitting them across workers would only add checkpoint loads.

Executors only move :func:`execute_job` calls to workers: ``local`` is a process pool
(:func:`embench.workers.process_pool`: spawned workers that never run the caller's main module),
``ray`` submits Ray tasks with CPU/GPU resource requests (``--address`` for an existing
cluster, a local Ray instance otherwise). Every worker must see the same ``EMBENCH_HOME``:
the driver writes a token there and each job checks it first, so a worker on other storage
fails fast with one clear line instead of computing into a home nobody reads.
"""

from __future__ import annotations

import os
import secrets
import socket
import time
from collections.abc import Callable, Iterable
from dataclasses import dataclass, field
from pathlib import Path
from types import ModuleType
from typing import Any

from embench.board_html import publish
from embench.devices import resolve_device
from embench.errors import ConfigError, EmbenchError, WorkerDiedError
from embench.faults import crash_point
from embench.paper import paper_encoders
from embench.presets import get_preset, task_z_sizes
from embench.registry import accepts_keyword, get_plugin, load_task
from embench.runner import RunConfig, run
from embench.storage import atomic_path, resolve_home, safe_name
from embench.taskdata import prepare_task
from embench.workers import exit_with_parent, process_pool, usable_cpus


def toml_parser() -> ModuleType:
    """The standard library's ``tomllib`` (Python 3.11+), else its backport ``tomli`` (3.10)."""
    try:
        import tomllib
    except ModuleNotFoundError:
        import tomli as tomllib
    return tomllib


#: Keys a sweep TOML file may hold (the CLI flags of the same names override them).
TOML_KEYS = {"encoders", "tasks", "z", "seeds", "preset", "executor", "workers",
             "threads_per_job", "address", "retry", "device", "precision", "out"}
EXECUTORS = ("local", "ray")


class HomeNotSharedError(ConfigError):
    """A worker cannot see the driver's EMBENCH_HOME: the whole sweep stops."""


class _HomeBoard:
    """The type of :data:`HOME_BOARD`."""

    def __repr__(self) -> str:
        return "EMBENCH_HOME/leaderboard"


#: The default of ``SweepSpec.out``: ``leaderboard/`` under the sweep's EMBENCH_HOME, so a
#: sweep publishes to the same place whichever folder it is started from.
HOME_BOARD: Any = _HomeBoard()


@dataclass(frozen=True)
class Job:
    """One unit of a sweep: ``data`` (a task's data) or ``run`` (one encoder run)."""

    kind: str
    task: str
    encoder: str | None = None
    z: int | None = None
    seed: int = 0

    @property
    def name(self) -> str:
        """A short label, e.g. ``run ae z=16 seed=0 lunarlander``."""
        if self.kind == "data":
            return f"data {self.task}"
        size = "" if self.z is None else f" z={self.z}"  # None: the encoder's own size
        return f"run {self.encoder}{size} seed={self.seed} {self.task}"

    @property
    def depends_on(self) -> Job | None:
        """The job that must finish first (a run needs its task's data)."""
        return Job("data", self.task) if self.kind == "run" else None


@dataclass(frozen=True)
class SweepSpec:
    """What a sweep runs and how.

    Attributes:
        encoders: encoder names (registered, or ``module.path:factory``).
        tasks: task names.
        z_sizes: embedding sizes; empty means each task's grid in the preset.
        seeds: number of seeds (``0 .. seeds-1``).
        preset: ``smoke``, ``quick`` or ``paper``.
        executor: ``local`` or ``ray``.
        workers: jobs run at once (``None``: usable CPUs // ``threads_per_job``; 1 on CUDA
            with the local executor).
        threads_per_job: torch threads of each job (and the CPUs a Ray task requests).
        address: Ray cluster address (``None``: start a local Ray instance).
        retry: times a failed job is tried again.
        device: ``auto``, ``cpu`` or ``cuda`` for every run.
        precision: ``fp32``, ``bf16`` or ``auto`` (resolved by each job on its device).
        home: EMBENCH_HOME (must be visible to every worker).
        out: where the leaderboard is published (default :data:`HOME_BOARD`:
            ``home/leaderboard``; ``None``: not published).
    """

    encoders: tuple[str, ...]
    tasks: tuple[str, ...]
    z_sizes: tuple[int, ...] = ()
    seeds: int = 1
    preset: str = "quick"
    executor: str = "local"
    workers: int | None = None
    threads_per_job: int = 1
    address: str | None = None
    retry: int = 0
    device: str = "auto"
    precision: str = "fp32"
    home: Path | None = None
    out: Path | None = HOME_BOARD

    def __post_init__(self) -> None:
        if not self.encoders:
            raise ConfigError("The sweep names no encoder.", "Pass --encoders NAME[,NAME...] "
                              "(or `encoders = [...]` in the TOML file); `embench list` shows "
                              "the installed ones.")
        if not self.tasks:
            raise ConfigError("The sweep names no task.", "Pass --tasks NAME[,NAME...] (or "
                              "`tasks = [...]` in the TOML file); `embench list` shows the "
                              "installed ones.")
        for name in (*self.encoders, *self.tasks):
            if ":" not in name:
                safe_name(name, "plugin name")
        if any(not isinstance(z, int) or isinstance(z, bool) or z < 1 for z in self.z_sizes):
            raise ConfigError(f"Invalid z sizes {list(self.z_sizes)}: each must be a positive "
                              "integer.")
        for label, value, low in (("seeds", self.seeds, 1), ("retry", self.retry, 0),
                                  ("threads_per_job", self.threads_per_job, 1)):
            if not isinstance(value, int) or isinstance(value, bool) or value < low:
                raise ConfigError(f"Invalid {label} {value!r}: must be an integer >= {low}.")
        if self.workers is not None and (not isinstance(self.workers, int) or self.workers < 1):
            raise ConfigError(f"Invalid workers {self.workers!r}: must be a positive integer.")
        if self.executor not in EXECUTORS:
            raise ConfigError(f"Unknown executor {self.executor!r}.",
                              f"Choose one of: {', '.join(EXECUTORS)}.")
        get_preset(self.preset)  # unknown presets fail here, before anything starts

    @classmethod
    def from_toml(cls, path: str | Path, **overrides: Any) -> SweepSpec:
        """Read a sweep file; ``overrides`` (the CLI flags that were given) win over it.

        Example file::

            encoders = ["ae", "p_ae"]
            tasks = ["lunarlander"]
            z = [32, 64]
            seeds = 2
            preset = "quick"
            executor = "local"
        """
        path = Path(path)
        tomllib = toml_parser()
        try:
            data = tomllib.loads(path.read_text())
        except FileNotFoundError:
            raise ConfigError(f"Sweep file {path} does not exist.") from None
        except (OSError, UnicodeDecodeError, tomllib.TOMLDecodeError) as exc:
            raise ConfigError(f"Sweep file {path} is not valid TOML: {exc}.") from None
        unknown = sorted(set(data) - TOML_KEYS)
        if unknown:
            raise ConfigError(f"Sweep file {path} has unknown key(s): {', '.join(unknown)}.",
                              f"Known keys: {', '.join(sorted(TOML_KEYS))}.")
        values = {**data, **{k: v for k, v in overrides.items() if v is not None}}
        return cls.from_values(values, where=str(path))

    @classmethod
    def from_values(cls, values: dict[str, Any], where: str = "the command line") -> SweepSpec:
        """Build a spec from flag-style values (lists or comma-separated strings)."""
        def names(key: str) -> tuple[str, ...]:
            value = values.get(key) or ()
            if isinstance(value, str):
                value = value.split(",")
            if not isinstance(value, list | tuple) or not all(isinstance(v, str) for v in value):
                raise ConfigError(f"{key} in {where} must be a list of names.")
            return tuple(v.strip() for v in value if v.strip())

        z = values.get("z") or ()
        z = (z,) if isinstance(z, int) else tuple(z)
        kwargs: dict[str, Any] = {"encoders": names("encoders"), "tasks": names("tasks"),
                                  "z_sizes": z}
        for key in ("seeds", "preset", "executor", "workers", "threads_per_job", "address",
                    "retry", "device", "precision"):
            if values.get(key) is not None:
                kwargs[key] = values[key]
        for key in ("home", "out"):
            if values.get(key) is not None:
                kwargs[key] = Path(values[key])
        return cls(**kwargs)

    def board_dir(self, home: Path) -> Path | None:
        """The folder the board is published to, for a sweep whose EMBENCH_HOME is ``home``."""
        return home / "leaderboard" if self.out is HOME_BOARD else self.out

    def jobs(self) -> list[Job]:
        """Every job of the sweep, data jobs first, runs in a stable order."""
        preset = get_preset(self.preset)
        jobs = [Job("data", task) for task in self.tasks]
        for task in self.tasks:
            zs = self.z_sizes or task_z_sizes(load_task(task), preset)
            jobs += [Job("run", task, encoder, z, seed)
                     for seed in range(self.seeds) for z in zs for encoder in self.encoders
                     if self.z_sizes or takes_z(encoder)]
            # an encoder of fixed size (no z_dim) runs once per seed at its own size when the
            # z grid is the preset's; sizes asked for by name still apply to it (and fail)
            jobs += [Job("run", task, encoder, None, seed)
                     for seed in range(self.seeds) for encoder in self.encoders
                     if not (self.z_sizes or takes_z(encoder))]
        return jobs


@dataclass
class JobResult:
    """What a job sent back: ``status`` is ``done``, ``failed`` or ``fatal``."""

    status: str
    seconds: float = 0.0
    reused: bool = False
    record_path: str | None = None
    summary: str = ""
    error: str | None = None
    host: str = ""


def takes_z(encoder: str) -> bool:
    """Whether the registered encoder's factory takes ``z_dim`` (unknown names: assume so)."""
    try:
        return accepts_keyword(get_plugin("encoder", encoder).load(), "z_dim")
    except EmbenchError:
        return True  # the run itself reports the unknown or broken plugin


# --------------------------------------------------------------------------------------------
# The job function (runs in a worker)
# --------------------------------------------------------------------------------------------

def _token_path(home: Path, token: str) -> Path:
    return home / "sweeps" / f"home-check-{token}.txt"


def _check_home(home: Path, token: str) -> None:
    try:
        seen = _token_path(home, token).read_text().strip()
    except OSError:
        seen = None
    if seen != token:
        raise HomeNotSharedError(
            f"Worker {socket.gethostname()} cannot see EMBENCH_HOME {home} (the driver's check "
            f"file {_token_path(home, token).name} is not there).",
            "Put EMBENCH_HOME on storage every worker mounts at the same path (NFS, a shared "
            "volume) and pass it with --home.")


def execute_job(job: Job, settings: dict[str, Any]) -> JobResult:
    """Run one job in this process; never raises for problems a user can fix.

    ``settings`` holds the sweep's shared values: ``home``, ``token``, ``preset``,
    ``device``, ``precision``, ``threads``. The job runs with ``threads`` torch and BLAS
    threads whatever the executor, so local and Ray workers compute the same bits.
    """
    import scipy.linalg  # noqa: F401  (BLAS libraries load now, so the limits below reach them)
    import sklearn.decomposition  # noqa: F401
    import torch
    from threadpoolctl import threadpool_limits

    start = time.perf_counter()
    host = socket.gethostname()
    threads = torch.get_num_threads()
    torch.set_num_threads(int(settings["threads"]))
    try:
        with threadpool_limits(limits=int(settings["threads"])):
            status, reused, record_path, summary = _execute(job, settings)
        return JobResult(status, time.perf_counter() - start, reused=reused,
                         record_path=record_path, summary=summary, host=host)
    except HomeNotSharedError as exc:
        return JobResult("fatal", time.perf_counter() - start, error=str(exc), host=host)
    except EmbenchError as exc:
        return JobResult("failed", time.perf_counter() - start, error=str(exc), host=host)
    except Exception as exc:  # a bug or a plugin's own error: reported, the sweep goes on
        return JobResult("failed", time.perf_counter() - start,
                         error=f"{type(exc).__name__}: {exc}", host=host)
    finally:
        torch.set_num_threads(threads)


def _execute(job: Job, settings: dict[str, Any]) -> tuple[str, bool, str | None, str]:
    home = Path(settings["home"])
    _check_home(home, settings["token"])
    if job.kind == "data":
        _, data = prepare_task(job.task, get_preset(settings["preset"]), home)
        sizes = data.sizes()
        return "done", False, None, f"{sum(sizes.values())} images in {len(sizes)} splits"
    board = Path(settings["board"]) if settings.get("board") else None
    outcome = run(RunConfig(encoder=job.encoder or "", task=job.task, preset=settings["preset"],
                            z=job.z, seed=job.seed, device=settings["device"],
                            precision=settings["precision"], home=home, board=board))
    record = outcome.record
    summary = (f"{record.metric['name']} MLP {record.test['mlp']:.4g}, "
               f"linear {record.test['linear']:.4g}")
    if outcome.on_board:
        summary = f"on the board already ({outcome.record_path.name}); {summary}"
    return "done", outcome.record_hit, str(outcome.record_path), summary


# --------------------------------------------------------------------------------------------
# Executors
# --------------------------------------------------------------------------------------------

def thread_env(threads: int) -> dict[str, str]:
    """Environment that sizes every OpenMP/BLAS pool a worker loads to ``threads``."""
    return {name: str(threads) for name in
            ("OMP_NUM_THREADS", "OPENBLAS_NUM_THREADS", "MKL_NUM_THREADS")}


def _worker_init(parent: int, threads: int) -> None:
    """Pool initializer: size the thread pools; exit when the driver dies (even by SIGKILL)."""
    os.environ.update(thread_env(threads))
    exit_with_parent(parent, blas_threads=None)  # sized by the environment above


class WorkerLost(Exception):
    """The worker running a job died (killed, out of memory)."""


class LocalExecutor:
    """A process pool of ``workers`` processes on this machine.

    Its workers never run the caller's main module, so a sweep runs from any script, standard
    input or notebook; in a daemonic process (a ``multiprocessing.Pool`` worker), which may
    start none, each job runs in this process when it is submitted
    (:func:`embench.workers.process_pool`).
    """

    name = "local"

    def __init__(self, workers: int, threads: int = 1) -> None:
        self.workers, self.threads = workers, threads
        self._pool: Any = None
        self._pool_of: dict[Any, Any] = {}  # handle -> the pool running it

    def _ensure_pool(self) -> Any:
        if self._pool is None:
            self._pool = process_pool(self.workers, "sweep job", initializer=_worker_init,
                                      initargs=(os.getpid(), self.threads))
        return self._pool

    def submit(self, job: Job, settings: dict[str, Any]) -> Any:
        """Start ``execute_job(job, settings)``; return a handle."""
        try:
            handle = self._ensure_pool().submit(execute_job, job, settings)
        except WorkerDiedError:  # since the last results; the jobs it ran report it
            self._pool = None
            handle = self._ensure_pool().submit(execute_job, job, settings)
        self._pool_of[handle] = self._pool
        return handle

    def wait(self, handles: Iterable[Any], timeout: float) -> list[Any]:
        """The handles that finished within ``timeout`` seconds."""
        from concurrent.futures import FIRST_COMPLETED, wait

        done, _ = wait(list(handles), timeout=timeout, return_when=FIRST_COMPLETED)
        return list(done)

    def result(self, handle: Any) -> JobResult:
        """The finished job's result (raises :class:`WorkerLost` if its process died)."""
        from concurrent.futures.process import BrokenProcessPool

        pool = self._pool_of.pop(handle, self._pool)
        try:
            return handle.result()
        except BrokenProcessPool:
            if self._pool is pool:
                self._pool = None  # a fresh pool for what is resubmitted
            raise WorkerLost(pool.died().message) from None  # which worker died, and why

    def shutdown(self, abort: bool = False) -> None:
        """Stop the workers; pending work is cancelled, running work too when ``abort``.

        An aborted job leaves nothing half-written (every file is renamed into place), and
        the next sweep resumes it from its last finished stage or epoch.
        """
        if self._pool is None:
            return
        if abort:  # Ctrl-C or an error in the driver: do not wait hours for running jobs
            processes = list(getattr(self._pool, "_processes", {}).values())
            self._pool.shutdown(wait=False, cancel_futures=True)
            for process in processes:
                process.terminate()
        else:
            self._pool.shutdown(wait=True, cancel_futures=True)
        self._pool = None


def _check_reachable(address: str) -> None:
    """Fail in one line, within seconds, when a ``host:port`` Ray address does not answer."""
    host, sep, port = address.removeprefix("ray://").rpartition(":")
    if not sep or not port.isdigit():
        return  # "auto" and other forms are Ray's to resolve
    try:
        socket.create_connection((host, int(port)), timeout=5).close()
    except OSError as exc:
        raise ConfigError(f"Cannot start or reach Ray at {address}: {exc.strerror or exc}.",
                          "Check --address (`ray status` on the head node shows it).") from None


class RayExecutor:
    """Ray tasks, one per job, each requesting ``cpus`` CPUs (and a GPU for CUDA runs)."""

    name = "ray"

    def __init__(self, address: str | None, workers: int, cpus: int, gpus: float,
                 home: Path) -> None:
        try:
            import ray
        except ImportError:
            raise ConfigError("--executor ray needs Ray, which is not installed.",
                              "Install it with: pip install 'embench[ray]'.") from None
        self._ray = ray
        self._started = False
        self._submitted: list[Any] = []
        if not ray.is_initialized():
            kwargs: dict[str, Any] = {"log_to_driver": False, "include_dashboard": False,
                                      "configure_logging": False}
            if address:
                _check_reachable(address)
                kwargs["address"] = address
            else:
                kwargs["num_cpus"] = workers * cpus
                # Ray starts its workers at nice 15; on a machine shared with anything else
                # that starves them (torch took 95 s to import instead of 5 s under load).
                # The local instance is the user's own: its jobs run at normal priority.
                os.environ.setdefault("RAY_worker_niceness", "0")
                kwargs["object_store_memory"] = 256 << 20  # results are small JSON-ish objects
            # workers import embench from this environment and write to the same home
            kwargs["runtime_env"] = {"env_vars": {"EMBENCH_HOME": str(home),
                                                  **thread_env(cpus)}}
            try:
                ray.init(**kwargs)
            except Exception as exc:
                raise ConfigError(f"Cannot start or reach Ray"
                                  f"{f' at {address}' if address else ''}: {exc}.",
                                  "Check --address (ray status shows it).") from None
            self._started = True
        self._remote = ray.remote(num_cpus=cpus, num_gpus=gpus, max_retries=0)(execute_job)

    def submit(self, job: Job, settings: dict[str, Any]) -> Any:
        """Submit ``execute_job(job, settings)`` as a Ray task."""
        ref = self._remote.remote(job, settings)
        self._submitted.append(ref)
        return ref

    def wait(self, handles: Iterable[Any], timeout: float) -> list[Any]:
        """The handles that finished within ``timeout`` seconds."""
        refs = list(handles)
        done, _ = self._ray.wait(refs, num_returns=1, timeout=timeout)
        return done

    def result(self, handle: Any) -> JobResult:
        """The finished task's result (raises :class:`WorkerLost` if its worker died)."""
        from ray.exceptions import RayError

        try:
            return self._ray.get(handle)
        except RayError as exc:
            raise WorkerLost(f"its Ray worker failed: {type(exc).__name__}") from None

    def shutdown(self, abort: bool = False) -> None:
        """Disconnect (and stop the local instance this executor started).

        With ``abort``, running tasks are cancelled first (``ray.cancel(force=True)``).
        """
        if abort:
            for ref in self._submitted:
                try:
                    self._ray.cancel(ref, force=True)
                except Exception:  # already finished, or the cluster is gone
                    pass
        if self._started:
            self._ray.shutdown()


# --------------------------------------------------------------------------------------------
# The driver
# --------------------------------------------------------------------------------------------

@dataclass
class JobState:
    """A job's place in the sweep, as the live table shows it."""

    job: Job
    status: str = "pending"  # pending | running | done | failed | blocked
    attempts: int = 0
    started: float | None = None
    result: JobResult | None = None
    errors: list[str] = field(default_factory=list)


@dataclass
class SweepOutcome:
    """The end of a sweep: each job's final state and the published board (if any)."""

    states: list[JobState]
    board: Path | None
    seconds: float

    def count(self, status: str) -> int:
        """How many jobs ended with ``status``."""
        return sum(s.status == status for s in self.states)

    @property
    def computed(self) -> list[JobState]:
        """Run jobs that did work (their record was not already there)."""
        return [s for s in self.states if s.job.kind == "run" and s.status == "done"
                and s.result is not None and not s.result.reused]

    @property
    def reused(self) -> list[JobState]:
        """Run jobs whose record already existed (finished by an earlier run or sweep)."""
        return [s for s in self.states if s.job.kind == "run" and s.status == "done"
                and s.result is not None and s.result.reused]


def _make_executor(spec: SweepSpec, workers: int, home: Path, device: str) -> Any:
    if spec.executor == "ray":
        return RayExecutor(spec.address, workers, spec.threads_per_job,
                           1.0 if device == "cuda" else 0.0, home)
    return LocalExecutor(workers, spec.threads_per_job)


def default_workers(spec: SweepSpec, device: str) -> int:
    """Jobs at once: one per ``threads_per_job`` usable CPUs; one per GPU for local CUDA."""
    if spec.workers is not None:
        return spec.workers
    if device == "cuda" and spec.executor == "local":
        return 1
    return max(1, usable_cpus() // spec.threads_per_job)


def run_sweep(spec: SweepSpec, *, on_change: Callable[[list[JobState]], None] | None = None,
              log: Callable[[str], None] = lambda message: None,
              executor: Any = None) -> SweepOutcome:
    """Run every job of ``spec`` on its executor; publish the leaderboard for what it ran.

    Failed jobs are tried again up to ``spec.retry`` times and never stop the others; runs of
    a task whose data job failed are marked ``blocked``. A worker that cannot see the home
    stops the sweep with :class:`HomeNotSharedError`.

    Args:
        spec: what to run.
        on_change: called with every job's state whenever one changes (the live table).
        log: receives one line per finished or failed job.
        executor: an object with the executors' ``submit``/``wait``/``result``/``shutdown``
            methods to use instead of the one ``spec.executor`` names.

    Returns:
        Each job's final state and the path of the published board (``None`` if nothing
        finished or ``spec.out`` is ``None``); the board's folder is
        :meth:`SweepSpec.board_dir`.
    """
    start = time.perf_counter()
    home = resolve_home(spec.home)
    device = str(resolve_device(spec.device))  # workers get the name, e.g. "cuda"
    token = secrets.token_hex(8)
    check = _token_path(home, token)
    with atomic_path(check) as tmp:  # an unwritable home fails here, in one line
        tmp.write_text(token)
    settings = {"home": str(home), "token": token, "preset": spec.preset, "device": device,
                "precision": spec.precision, "threads": spec.threads_per_job}
    states = [JobState(job) for job in spec.jobs()]
    by_job = {s.job: s for s in states}
    out = spec.board_dir(home)
    if out is not None:  # runs whose record of the same protocol is published are skipped
        settings["board"] = str(out)
    workers = default_workers(spec, device)
    notify = on_change or (lambda states: None)
    if executor is None:
        executor = _make_executor(spec, workers, home, device)
    running: dict[Any, JobState] = {}
    try:
        notify(states)
        while True:
            for state in states:  # start what is ready, at most `workers` at a time
                if len(running) >= workers:
                    break
                if state.status != "pending":
                    continue
                parent = state.job.depends_on
                parent_state = by_job.get(parent) if parent else None
                if parent_state is not None and parent_state.status in ("failed", "blocked"):
                    state.status = "blocked"
                    state.errors.append(f"{parent_state.job.name} failed")
                    continue
                if parent_state is not None and parent_state.status != "done":
                    continue
                state.status, state.started = "running", time.perf_counter()
                state.attempts += 1
                running[executor.submit(state.job, settings)] = state
            notify(states)
            if not running:
                break
            for handle in executor.wait(running, timeout=0.5):
                state = running.pop(handle)
                try:
                    result = executor.result(handle)
                except WorkerLost as exc:
                    result = JobResult("failed", time.perf_counter() - (state.started or 0),
                                       error=str(exc))
                if result.status == "fatal":
                    raise HomeNotSharedError(result.error or "a worker cannot see the home")
                state.result = result
                if result.status == "done":
                    state.status = "done"
                    log(f"[green]done[/green] {state.job.name}: "
                        f"{'reused' if result.reused else f'{result.seconds:.0f} s'}"
                        f"{f'; {result.summary}' if result.summary else ''}")
                else:
                    state.errors.append(result.error or "unknown error")
                    again = state.attempts <= spec.retry
                    state.status = "pending" if again else "failed"
                    log(f"[red]failed[/red] {state.job.name} (attempt {state.attempts}): "
                        f"{result.error}{'; retrying' if again else ''}")
                crash_point("sweep-job")
                notify(states)
    except BaseException:  # Ctrl-C, a worker that cannot see the home, a bug
        executor.shutdown(abort=True)
        raise
    else:
        executor.shutdown()
    finally:
        check.unlink(missing_ok=True)
    board = publish_sweep(states, out) if out is not None else None
    return SweepOutcome(states, board, time.perf_counter() - start)


def publish_sweep(states: list[JobState], out: Path) -> Path | None:
    """Publish the finished runs' records (with sidecars and pictures) on the board in ``out``."""
    paths = [Path(s.result.record_path) for s in states
             if s.status == "done" and s.result is not None and s.result.record_path]
    if not paths:
        return None
    return publish(paths, out)


# --------------------------------------------------------------------------------------------
# The paper's grid on one task (`embench reproduce`)
# --------------------------------------------------------------------------------------------

def reproduce(
    task: str, preset_name: str, *, encoders: tuple[str, ...] | None = None,
    z_sizes: tuple[int, ...] | None = None, seeds: int = 1, home: Path | None = None,
    device: str = "auto", precision: str = "fp32", out_dir: Path = Path("leaderboard"),
    on_change: Callable[[list[Any]], None] | None = None,
    log: Callable[[str], None] = lambda message: None,
) -> SweepOutcome:
    """Run the paper's grid (encoders x z x seeds) on one task and publish the leaderboard.

    ``encoders`` defaults to the paper's (listed in ``embench/paper.json``); ``z_sizes`` to the
    task's grid at the preset.

    A fixed sweep (:func:`run_sweep`): one job at a time, each with all usable CPUs,
    publishing to ``out_dir``. Finished runs are reused (checkpoints, embeddings, records), and
    a cell whose record of the same protocol is already on the board is not run again, so a
    reproduction resumes where it stopped, even on a new machine.

    Returns:
        The sweep's outcome (each job's state, the board's path).
    """
    spec = SweepSpec(encoders=paper_encoders() if encoders is None else tuple(encoders),
                     tasks=(task,), z_sizes=tuple(z_sizes or ()), seeds=seeds,
                     preset=preset_name, executor="local", workers=1,
                     threads_per_job=usable_cpus(), device=device, precision=precision,
                     home=home, out=out_dir)
    return run_sweep(spec, on_change=on_change, log=log)
