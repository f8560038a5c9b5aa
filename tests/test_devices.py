"""embench.devices: device resolution, precision names and autocast, in one leaf module."""

import ast
import subprocess
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

import embench.training
from embench import devices
from embench.devices import (
    DEVICES,
    PRECISIONS,
    autocast,
    bf16_is_native,
    check_precision,
    resolve_device,
    resolve_precision,
)
from embench.errors import ConfigError

PACKAGE = Path(devices.__file__).parent
HAS_CUDA = torch.cuda.is_available()


def imported_modules(path):
    """Every module a source file imports, at any depth (lazy imports included)."""
    names = set()
    for node in ast.walk(ast.parse(path.read_text())):
        if isinstance(node, ast.Import):
            names.update(alias.name for alias in node.names)
        elif isinstance(node, ast.ImportFrom):
            names.add(node.module)
    return names


def test_cpu_auto_and_devices_pass_through():
    assert resolve_device("cpu") == torch.device("cpu")
    assert resolve_device("auto").type == ("cuda" if HAS_CUDA else "cpu")
    assert resolve_device() == resolve_device("auto")
    given = torch.device("cpu")
    assert resolve_device(given) is given
    assert str(resolve_device("cpu")) == "cpu"  # the name records store


@pytest.mark.skipif(HAS_CUDA, reason="checks the error of a machine without a GPU")
@pytest.mark.parametrize("name", ["cuda", "cuda:0"])
def test_cuda_without_a_gpu_is_one_clear_error(name):
    with pytest.raises(ConfigError, match="torch sees no CUDA GPU.*device='auto' or 'cpu'"):
        resolve_device(name)


@pytest.mark.skipif(not HAS_CUDA, reason="needs a CUDA GPU")
def test_cuda_with_a_gpu():
    assert resolve_device("cuda") == torch.device("cuda")
    assert resolve_device("cuda:0") == torch.device("cuda:0")


@pytest.mark.parametrize(("name", "hint"), [
    ("tpu", "Choose one of 'auto', 'cpu', 'cuda'"),
    ("mps", "Choose one of 'auto', 'cpu', 'cuda'"),
    ("cpu:x", "Write cpu, cuda, or cuda:N"),
])
def test_unknown_devices_are_refused(name, hint):
    with pytest.raises(ConfigError, match=f"Unknown device '{name}'") as info:
        resolve_device(name)
    assert hint in str(info.value)


def test_precisions():
    assert PRECISIONS == ("fp32", "bf16", "auto") and DEVICES == ("auto", "cpu", "cuda")
    assert [check_precision(p) for p in PRECISIONS] == list(PRECISIONS)
    with pytest.raises(ConfigError, match="Unknown precision 'fp16'. Choose one of 'fp32', "
                       "'bf16', 'auto'"):
        check_precision("fp16")
    with pytest.raises(ConfigError, match="Unknown precision 'half'"):
        resolve_precision("half", "cpu")


@pytest.mark.parametrize(("flags", "native"), [
    ({"avx2", "fma"}, False),  # this project's machines: bf16 emulated
    ({"avx512f", "avx512bw", "avx512vl"}, False),  # AVX512 without BF16: oneDNN emulates it
    ({"avx512f", "avx512_bf16"}, True),
    ({"amx_tile", "amx_bf16"}, True),
    (set(), False),  # no /proc/cpuinfo: counted as emulated
])
def test_cpu_bf16_is_native_only_with_bf16_instructions(monkeypatch, flags, native):
    monkeypatch.setattr(devices, "_cpu_flags", lambda: flags)
    cpu = torch.device("cpu")
    assert bf16_is_native(cpu) is native
    assert resolve_precision("auto", cpu) == ("bf16" if native else "fp32")
    assert resolve_precision("auto", "cpu") == ("bf16" if native else "fp32")  # names too
    # an explicit choice is never changed
    assert resolve_precision("fp32", cpu) == "fp32" and resolve_precision("bf16", cpu) == "bf16"


def test_this_machines_cpu_flags_are_read():
    flags = devices._cpu_flags()
    if Path("/proc/cpuinfo").exists():
        assert flags, "/proc/cpuinfo has a flags line on Linux"
    assert resolve_precision("auto", "cpu") == (
        "bf16" if flags & {"avx512_bf16", "amx_bf16"} else "fp32")


@pytest.mark.parametrize("native", [False, True])
def test_auto_precision_in_the_training_loop(monkeypatch, native):
    """``auto`` trains in fp32 where bf16 is not native (faked), in bf16 where it is."""
    from embench.training import fit_module, loop

    monkeypatch.setattr(loop, "bf16_is_native", lambda device: native)
    monkeypatch.setattr(devices, "bf16_is_native", lambda device: native)
    torch.manual_seed(0)
    model = nn.Linear(4, 1)
    x = torch.randn(16, 4)
    seen = []

    def loss(batch):
        out = model(x[batch])
        seen.append(out.dtype)
        return out.float().pow(2).mean()

    import warnings
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # fp32 path: no "bf16 is emulated" warning either
        fit_module(model, loss, lambda rows: loss(torch.arange(16)[rows]), n_train=16, n_val=16,
                   optimizer=torch.optim.SGD(model.parameters(), lr=0.01), batch_size=8,
                   max_epochs=1, device="cpu", precision="auto")
    assert set(seen) == {torch.bfloat16 if native else torch.float32}


def test_autocast_is_bf16_or_a_no_op():
    model = nn.Linear(4, 4)
    cpu = torch.device("cpu")
    with autocast(cpu, "fp32"):
        assert model(torch.ones(1, 4)).dtype == torch.float32
    with autocast(cpu, "bf16"):
        assert model(torch.ones(1, 4)).dtype == torch.bfloat16
    assert isinstance(bf16_is_native(cpu), bool)


def test_training_reexports_the_same_objects():
    for name in ("PRECISIONS", "autocast", "bf16_is_native", "check_precision", "resolve_device"):
        assert getattr(embench.training, name) is getattr(devices, name), name


def test_devices_is_a_leaf_and_the_probes_do_not_reach_into_training():
    assert imported_modules(PACKAGE / "devices.py") <= {
        "__future__", "typing", "torch", "embench.errors"}
    for path in sorted((PACKAGE / "probes").glob("*.py")):
        assert not {m for m in imported_modules(path) if m.startswith("embench.training")}, path


@pytest.mark.subprocess
def test_the_cli_reads_the_choices_without_importing_torch():
    code = "import sys, embench.cli; print('torch' in sys.modules)"
    result = subprocess.run([sys.executable, "-c", code], capture_output=True, text=True,
                            timeout=120, check=True)
    assert result.stdout.strip() == "False"


def test_a_run_records_the_precision_auto_resolved_to(monkeypatch, tmp_path, smoke_lunarlander):
    from embench.runner import RunConfig, run

    smoke_lunarlander(tmp_path)

    def run_with(precision, native):
        monkeypatch.setattr(devices, "bf16_is_native", lambda device: native)
        return run(RunConfig(encoder="pca", task="lunarlander", preset="smoke", device="cpu",
                             precision=precision, home=tmp_path))

    emulated = run_with("auto", native=False)
    assert emulated.record.precision == "fp32"  # never "auto"
    explicit = run_with("fp32", native=False)  # the same run: its record is reused
    assert explicit.record_hit and explicit.record_path == emulated.record_path
    native = run_with("auto", native=True)
    assert native.record.precision == "bf16" and not native.record_hit
