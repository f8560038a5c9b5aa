"""embench.workers: worker pools that never run the caller's main module and report a death."""

import multiprocessing
import multiprocessing.spawn
import os
import signal
import threading
import time

import pytest

from embench.errors import WorkerDiedError
from embench.presets import Preset
from embench.sweep import Job, LocalExecutor, WorkerLost
from embench.tasks.lunarlander import LunarLanderTask
from embench.workers import InProcessPool, WorkerPool, can_start_processes, process_pool

pytestmark = [pytest.mark.subprocess,
              pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")]

#: In a worker: the file its ``__main__`` was run from (None: the spawn bootstrap's ``-c``).
MAIN_FILE = "getattr(__import__('sys').modules['__main__'], '__file__', None)"


def test_workers_run_in_other_processes_without_the_callers_main_module():
    with process_pool(2, "test") as pool:
        assert isinstance(pool, WorkerPool)
        pids = set(pool.map(eval, ["__import__('os').getpid()"] * 4))
        main_files = set(pool.map(eval, [MAIN_FILE] * 2))
    assert os.getpid() not in pids and pids
    assert main_files == {None}  # a spawn worker would have run pytest's main file again
    # every other process is prepared as before: the filter acts only for our pools' starts
    prepared = multiprocessing.spawn.get_preparation_data
    assert prepared("other") == prepared.__wrapped__("other")


def test_every_worker_starts_with_the_pool_so_no_submit_spawns_one():
    # A submit that spawned a worker could change the executor's process table while its
    # thread iterates it after another worker died (CPython 3.11), which printed a thread
    # traceback beside the one-line error; with all workers started up front none does.
    with process_pool(2, "test") as pool:
        started = dict(pool._processes)
        assert len(started) == 2 and all(p.is_alive() for p in started.values())
        assert sorted(pool.map(abs, range(-8, 0))) == list(range(1, 9))
        assert pool._processes == started


@pytest.mark.parametrize(("die", "cause"), [
    ((os._exit, 3), "it exited with code 3 before finishing its work"),
    ((signal.raise_signal, signal.SIGKILL), "killed by SIGKILL, most likely out of memory"),
    ((signal.raise_signal, signal.SIGSEGV), "crashed with SIGSEGV in native code"),
])
def test_a_dead_worker_is_one_line_naming_the_stage_and_the_cause(die, cause):
    fn, arg = die
    start = time.monotonic()
    with process_pool(2, "test stage") as pool:
        with pytest.raises(WorkerDiedError) as raised:
            list(pool.map(fn, [arg]))
        with pytest.raises(WorkerDiedError) as refused:  # the pool is broken: submit says so
            pool.submit(abs, -1)
    message = str(raised.value)
    assert message.startswith(f"A worker process of stage 'test stage' died: {cause}")
    assert "\n" not in message and "Run it again" in message
    assert str(refused.value) == message
    assert time.monotonic() - start < 60  # no hang


def test_a_daemonic_process_runs_each_call_in_itself():
    assert can_start_processes()
    with multiprocessing.get_context("spawn").Pool(1) as pool:  # daemonic workers
        assert pool.apply(can_start_processes) is False
        fallback = pool.apply(process_pool, (2, "test"))
    assert isinstance(fallback, InProcessPool)
    assert list(fallback.map(abs, [-1, 2])) == [1, 2]
    future = fallback.submit(int, "x")
    with pytest.raises(ValueError, match="invalid literal"):
        future.result()


def kill_the_first_worker(stop: threading.Event, killed: list[int]) -> None:
    """SIGKILL the first worker process this process starts (as the OOM killer would)."""
    before = {child.pid for child in multiprocessing.active_children()}
    while not stop.is_set() and not killed:
        for child in multiprocessing.active_children():
            if child.pid in before:
                continue
            os.kill(child.pid, signal.SIGKILL)
            killed.append(child.pid)
            break
        time.sleep(0.01)


@pytest.fixture
def killer():
    stop, killed = threading.Event(), []
    thread = threading.Thread(target=kill_the_first_worker, args=(stop, killed), daemon=True)
    thread.start()
    yield killed
    stop.set()
    thread.join()


def test_a_killed_generator_worker_stops_generation_with_one_clear_error(tmp_path, killer):
    preset = Preset("t", 1, 1, 1, overrides={
        "lunarlander": {"unaltered_rollouts": 3, "altered_rollouts": 5, "frames": 40}})
    with pytest.raises(WorkerDiedError, match=r"stage 'generate lunarlander' died: killed by "
                                              r"SIGKILL, most likely out of memory"):
        LunarLanderTask(workers=2).load(tmp_path, preset, seed=0)
    assert killer
    assert not list((tmp_path / "datasets").rglob("*.h5"))  # nothing half-written


def test_a_killed_sweep_worker_fails_its_job_with_the_cause(tmp_path, killer):
    executor = LocalExecutor(workers=1)
    try:
        handle = executor.submit(Job("data", "lunarlander"), {"home": str(tmp_path)})
        assert executor.wait([handle], timeout=60) == [handle]
        with pytest.raises(WorkerLost, match=r"stage 'sweep job' died: killed by SIGKILL"):
            executor.result(handle)
    finally:
        executor.shutdown()
    assert killer
