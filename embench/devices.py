"""Where tensors live and in which precision they are computed: one leaf module for both.

Everything that picks a device or a precision (the training loop, the probes, the runner, the
sweep) asks here, so ``"auto"``, the names allowed and the errors are the same everywhere.
torch is imported inside the functions: the CLI reads :data:`DEVICES` and :data:`PRECISIONS`
for its option choices without paying for a torch import on ``embench --help``.

Example:
    >>> resolve_device("cpu")
    device(type='cpu')
    >>> check_precision("bf16")
    'bf16'
    >>> resolve_precision("auto", "cpu") in ("fp32", "bf16")
    True
"""

from __future__ import annotations

from typing import TYPE_CHECKING

from embench.errors import ConfigError

if TYPE_CHECKING:
    import torch

#: Device names a user may give (``cuda:N`` is accepted too).
DEVICES = ("auto", "cpu", "cuda")
#: Precisions of training: ``fp32``, bf16 autocast, or ``auto`` (bf16 where the device
#: computes it natively, fp32 elsewhere; see :func:`resolve_precision`).
PRECISIONS = ("fp32", "bf16", "auto")


def resolve_device(device: str | torch.device = "auto") -> torch.device:
    """Turn ``"auto"`` into ``cuda`` when a GPU is visible, else ``cpu``; check the others.

    Args:
        device: ``"auto"``, ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or a ``torch.device``
            (returned unchanged).

    Returns:
        The ``torch.device`` to use; ``str()`` of it gives the name records store.

    Raises:
        ConfigError: for an unknown device name, or ``"cuda"`` without a usable GPU.

    Example:
        >>> resolve_device("auto").type in ("cpu", "cuda")
        True
    """
    import torch

    if isinstance(device, torch.device):
        return device
    name = str(device)
    base = name.split(":", 1)[0]
    if base not in DEVICES:
        raise ConfigError(
            f"Unknown device {name!r}.", f"Choose one of {', '.join(map(repr, DEVICES))}."
        )
    if base == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    if base == "cuda" and not torch.cuda.is_available():
        raise ConfigError(
            "device='cuda' was requested but torch sees no CUDA GPU.",
            "Use device='auto' or 'cpu', or install a CUDA build of torch.",
        )
    try:
        return torch.device(name)
    except RuntimeError:  # "cuda:x", "cpu:0:1"
        raise ConfigError(f"Unknown device {name!r}.",
                          "Write cpu, cuda, or cuda:N with N a GPU index.") from None


def check_precision(precision: str) -> str:
    """Return ``precision`` if it is one of :data:`PRECISIONS`.

    Raises:
        ConfigError: for any other value.
    """
    if precision not in PRECISIONS:
        raise ConfigError(
            f"Unknown precision {precision!r}.",
            f"Choose one of {', '.join(map(repr, PRECISIONS))}.",
        )
    return precision


def resolve_precision(precision: str, device: str | torch.device) -> str:
    """The precision a run computes in: ``auto`` becomes ``bf16`` or ``fp32``.

    ``auto`` takes bf16 autocast only where ``device`` computes bf16 in hardware
    (:func:`bf16_is_native`): a CUDA GPU with bf16 units, or a CPU with AVX512-BF16 or AMX.
    Elsewhere bf16 is emulated and slower than fp32, so ``auto`` stays fp32. Records store
    the result, never ``auto``.

    Raises:
        ConfigError: for an unknown precision.

    Example:
        >>> resolve_precision("fp32", "cpu")
        'fp32'
    """
    check_precision(precision)
    if precision != "auto":
        return precision
    return "bf16" if bf16_is_native(resolve_device(device)) else "fp32"


def _cpu_flags() -> set[str]:
    """The CPU's feature flags as Linux reports them (empty where /proc/cpuinfo is absent)."""
    try:
        with open("/proc/cpuinfo", encoding="utf-8") as fh:
            for line in fh:
                if line.startswith("flags"):
                    return set(line.split(":", 1)[1].split())
    except OSError:
        pass
    return set()


def bf16_is_native(device: torch.device) -> bool:
    """Whether ``device`` computes bf16 in hardware.

    CUDA: the GPU has bf16 units (Ampere or newer; emulation does not count). CPU: the
    AVX512-BF16 or AMX-BF16 instructions (Linux flags ``avx512_bf16`` / ``amx_bf16``).
    ``torch.ops.mkldnn._is_mkldnn_bf16_supported()`` is not enough: it is true on any
    AVX512 CPU, where oneDNN emulates bf16. Other systems (no /proc/cpuinfo) count as
    emulating it, so ``auto`` picks fp32 there.
    """
    import torch

    if device.type == "cuda":
        try:
            return bool(torch.cuda.is_bf16_supported(including_emulation=False))
        except TypeError:  # older torch: no including_emulation argument
            return bool(torch.cuda.is_bf16_supported())
    if device.type != "cpu":
        return False
    return bool(_cpu_flags() & {"avx512_bf16", "amx_bf16"})


def autocast(device: torch.device, precision: str) -> torch.autocast:
    """The autocast context of ``precision`` on ``device`` (a no-op context for fp32)."""
    import torch

    return torch.autocast(device.type, dtype=torch.bfloat16, enabled=precision == "bf16")
