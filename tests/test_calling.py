"""embench called the ways users start Python: script, stdin, -c, -m, inside a process pool.

Each test starts a child process as a user would, in its own EMBENCH_HOME, with a timeout
that turns a hang into a failure. The hang they guard against: a worker that re-ran the
caller's main module evaluated again inside the worker and waited forever for the data lock
its caller held (issue 25). The evaluated code prints a line when the main module runs, so a
worker that runs it again shows, and it forces two generator workers (whatever this machine's
CPU count) and reports the CPU time its finished child processes used, so a test cannot pass
by generating the data in-process.
"""

import json
import os
import re
import subprocess
import sys
import textwrap
from pathlib import Path

import pytest

pytestmark = [pytest.mark.subprocess,
              pytest.mark.filterwarnings("ignore:builtin type .* has no __module__")]

README = Path(__file__).resolve().parents[1] / "README.md"
MARKER = "<!-- tested: tests/test_api.py -->"
#: Seconds a child may take; a tiny evaluation takes 3-10 s here, a hang takes forever.
TIMEOUT = 180

#: A tiny evaluation (5 rollouts of 8 frames, 2 probe epochs) with two generator workers.
EVALUATE = """\
import resource
print("main module ran", flush=True)
import embench
from embench.presets import Preset, registered

TINY = Preset("calling", autoencoder_epochs=1, probe_epochs=2, decoder_epochs=1,
              overrides={"lunarlander": {"unaltered_rollouts": 2, "altered_rollouts": 3,
                                         "frames": 8}})
with registered(TINY):
    record = embench.evaluate("pca", "lunarlander", preset="calling", z=4, progress=False,
                              task_options={"workers": 2})
children = resource.getrusage(resource.RUSAGE_CHILDREN)
print("RESULT", json.dumps({"test": record.test,
                            "children_cpu_s": children.ru_utime + children.ru_stime}))
"""

#: The caller is itself a worker of the user's own pool; ``{pool}`` runs ``evaluate_in_worker``.
NESTED = """\
import concurrent.futures
import multiprocessing


def evaluate_in_worker():
{body}


if __name__ == "__main__":
    print("daemonic workers" if {daemonic} else "non-daemonic workers", flush=True)
    {pool}
"""
POOLS = {
    "ProcessPoolExecutor (spawn)": (
        False, "with concurrent.futures.ProcessPoolExecutor(1, mp_context="
               "multiprocessing.get_context('spawn')) as pool:\n"
               "        pool.submit(evaluate_in_worker).result()"),
    "ProcessPoolExecutor (default start method)": (
        False, "with concurrent.futures.ProcessPoolExecutor(1) as pool:\n"
               "        pool.submit(evaluate_in_worker).result()"),
    "multiprocessing.Pool (daemonic)": (
        True, "with multiprocessing.Pool(1) as pool:\n"
              "        pool.apply(evaluate_in_worker)"),
}


def evaluate_code():
    return "import json\n" + EVALUATE


def run_python(args, tmp_path, stdin=None, env=None):
    """Run ``python *args`` as a user would, in ``tmp_path``, with its own EMBENCH_HOME."""
    env = {**os.environ, "EMBENCH_HOME": str(tmp_path / "home"), **(env or {})}
    try:
        return subprocess.run([sys.executable, *args], cwd=tmp_path, env=env, input=stdin,
                              capture_output=True, text=True, timeout=TIMEOUT)
    except subprocess.TimeoutExpired as exc:
        pytest.fail(f"python {' '.join(args[:2])} hung: no result in {TIMEOUT} s; "
                    f"stderr: {exc.stderr!r}")


def result_of(child):
    assert child.returncode == 0, child.stderr
    assert "Traceback" not in child.stderr, child.stderr
    (line,) = [line for line in child.stdout.splitlines() if line.startswith("RESULT ")]
    return json.loads(line.removeprefix("RESULT "))


def check_evaluated_with_workers(child, tmp_path, once="main module ran"):
    result = result_of(child)
    # the main module ran once: the generator's workers did not run the caller's code again
    assert child.stdout.count(once) == 1, child.stdout
    assert set(result["test"]) >= {"mlp", "linear", "baseline"}
    assert result["children_cpu_s"] > 0.1, "no generator worker ran (data made in-process?)"
    (record,) = (tmp_path / "home" / "results" / "lunarlander").glob("pca-z4-*.json")
    assert json.loads(record.read_text())["test"] == result["test"]


def test_script_without_main_guard(tmp_path):
    (tmp_path / "example.py").write_text(evaluate_code())
    check_evaluated_with_workers(run_python(["example.py"], tmp_path), tmp_path)


def test_standard_input(tmp_path):
    child = run_python(["-"], tmp_path, stdin=evaluate_code())
    check_evaluated_with_workers(child, tmp_path)


def test_dash_c(tmp_path):
    check_evaluated_with_workers(run_python(["-c", evaluate_code()], tmp_path), tmp_path)


def test_dash_m_module_of_a_package(tmp_path):
    package = tmp_path / "pkgs" / "userpkg"
    package.mkdir(parents=True)
    (package / "__init__.py").write_text("")
    (package / "evaluation.py").write_text(evaluate_code())
    child = run_python(["-m", "userpkg.evaluation"], tmp_path,
                       env={"PYTHONPATH": str(tmp_path / "pkgs")})
    check_evaluated_with_workers(child, tmp_path)


@pytest.mark.parametrize("pool", list(POOLS))
def test_caller_is_a_worker_of_a_process_pool(tmp_path, pool):
    daemonic, start = POOLS[pool]
    body = textwrap.indent(evaluate_code(), "    ")
    (tmp_path / "nested.py").write_text(NESTED.format(body=body, daemonic=daemonic, pool=start))
    child = run_python(["nested.py"], tmp_path)
    if daemonic:
        # a daemonic process may not start processes: the data is generated in the worker
        result = result_of(child)
        assert set(result["test"]) >= {"mlp", "linear", "baseline"}
        assert child.stdout.count("main module ran") == 1, child.stdout
        assert result["children_cpu_s"] < 0.1  # no generator worker: none can start there
    else:
        check_evaluated_with_workers(child, tmp_path)
    assert ("daemonic workers" if daemonic else "non-daemonic workers") in child.stdout


SWEEP = """\
print("main module ran", flush=True)
import json

from embench.sweep import SweepSpec, run_sweep

spec = SweepSpec(encoders=("pca",), tasks=("lunarlander",), z_sizes=(4,), preset="smoke",
                 device="cpu", workers=2, out=None)
outcome = run_sweep(spec)
print("RESULT", json.dumps([[s.job.name, s.status, s.errors] for s in outcome.states]))
"""


def test_sweep_from_a_script_without_main_guard(tmp_path):
    # the sweep's own pool: each job runs in a worker (the data job starts a generator pool
    # inside it); before, each worker ran the script again and died bootstrapping
    (tmp_path / "sweep.py").write_text(SWEEP)
    child = run_python(["sweep.py"], tmp_path)
    assert child.returncode == 0, child.stderr
    assert child.stdout.count("main module ran") == 1, child.stdout
    states = result_of(child)
    assert [state[:2] for state in states] == [["data lunarlander", "done"],
                                               ["run pca z=4 seed=0 lunarlander", "done"]]


#: The README's example embeds 1,500 frames with a ResNet-18 (~30 s here): the file, which the
#: issue found hanging, runs by default; standard input, covered above, with the slow tests.
@pytest.mark.parametrize("how", ["file", pytest.param("stdin", marks=pytest.mark.slow)])
def test_readme_example_as_a_file_and_on_standard_input(tmp_path, how):
    text = README.read_text()
    (code,) = re.findall(re.escape(MARKER) + r"\s*```python\n(.*?)```", text, flags=re.S)
    if how == "file":
        (tmp_path / "example.py").write_text(code)
        child = run_python(["example.py"], tmp_path)
    else:
        child = run_python(["-"], tmp_path, stdin=code)
    assert child.returncode == 0, child.stderr
    assert "'mlp'" in child.stdout and "'baseline'" in child.stdout, child.stdout


#: The caller is a Ray task (the API inside a user's Ray job): real generator workers start in
#: the task's process, whose main module is Ray's worker script. (That script guards its main,
#: so it was harmless even before the main-module filter; checked by removing the filter.)
RAY_TASK = """\
print("driver ran", flush=True)
import json

import ray


@ray.remote
def evaluate_in_task():
{body}
    return {{"test": record.test, "children_cpu_s": children.ru_utime + children.ru_stime}}


ray.init(num_cpus=1, include_dashboard=False, log_to_driver=False)
try:
    result = ray.get(evaluate_in_task.remote(), timeout={timeout})
finally:
    ray.shutdown()
print("RESULT", json.dumps(result))
"""


@pytest.mark.ray
def test_caller_is_a_ray_task(tmp_path):
    body = textwrap.indent(EVALUATE.replace('print("main module ran", flush=True)\n', "")
                           .split('print("RESULT"')[0], "    ")
    (tmp_path / "raytask.py").write_text(RAY_TASK.format(body=body, timeout=TIMEOUT - 30))
    check_evaluated_with_workers(run_python(["raytask.py"], tmp_path), tmp_path,
                                 once="driver ran")
