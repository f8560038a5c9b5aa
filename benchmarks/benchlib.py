"""Pieces every benchmark script shares: the results table, the machine note, devices, timing.

Every figure a script reports is a ratio of two measurements taken side by side in the same
process run: :func:`interleave` runs baseline and embench rounds alternately (rotating the order
every round) so that load from other processes hits both alike. Absolute numbers depend on that
load, which :func:`machine_note` records (CPU other processes use, load average, usable cores).
"""

from __future__ import annotations

import math
import os
import platform
import statistics
import time
from collections.abc import Callable, Iterable, Sequence
from dataclasses import dataclass
from typing import TYPE_CHECKING

from embench.workers import usable_cpus

if TYPE_CHECKING:
    import torch

COLUMNS = ("figure", "baseline", "embench", "ratio", "target", "met?")


@dataclass
class Row:
    """One line of a results table.

    ``ratio`` is how many times better embench is than the baseline (for times: baseline /
    embench; for rates: embench / baseline), or ``None`` where no baseline exists. ``met`` is
    ``None`` where the issue sets no target.
    """

    figure: str
    baseline: str
    embench: str
    ratio: float | None = None
    target: str = "-"
    met: bool | None = None


def cpu_name() -> str:
    """The CPU's model name (``platform.processor()`` is empty on Linux)."""
    try:
        with open("/proc/cpuinfo") as fh:
            for line in fh:
                if line.startswith("model name"):
                    return line.split(":", 1)[1].strip()
    except OSError:
        pass
    return platform.processor() or platform.machine()


def load_average() -> float | None:
    """The 1-minute load average, or ``None`` where the platform has none."""
    try:
        return os.getloadavg()[0]
    except (AttributeError, OSError):
        return None


def _cpu_jiffies() -> tuple[int, int] | None:
    """(busy, total) jiffies of all CPUs since boot, from ``/proc/stat`` (Linux only)."""
    try:
        with open("/proc/stat") as fh:
            fields = [int(v) for v in fh.readline().split()[1:]]
    except (OSError, ValueError):
        return None
    idle = fields[3] + (fields[4] if len(fields) > 4 else 0)  # idle + iowait
    return sum(fields) - idle, sum(fields)


def busy_cores(window: float = 1.0) -> float | None:
    """Cores' worth of CPU that *other* processes use, sampled over ``window`` seconds.

    This process sleeps meanwhile, so everything counted is someone else's. Unlike the load
    average, it does not remember the benchmark that ran just before (a 2-thread script leaves
    a 1-minute load average above 1 for a minute after it ends). ``None`` off Linux.
    """
    before = _cpu_jiffies()
    if before is None:
        return None
    time.sleep(window)
    after = _cpu_jiffies()
    if after is None or after[1] == before[1]:
        return None
    return (after[0] - before[0]) / (after[1] - before[1]) * (os.cpu_count() or 1)


def machine_note(device: str = "cpu") -> str:
    """One line naming the machine, the device, the load and the library versions."""
    import torch

    cpus = usable_cpus()
    load, others = load_average(), busy_cores()
    parts = [f"cpu {cpu_name()} ({cpus} usable cores)", f"torch {torch.__version__}",
             f"threads {torch.get_num_threads()}"]
    if device.startswith("cuda") and torch.cuda.is_available():
        parts.append(f"gpu {torch.cuda.get_device_name()}")
    if load is not None:
        parts.append(f"load avg {load:.1f}")
    if others is not None:
        busy = others > 0.5
        parts.append(f"other processes busy {others:.2f} cores (sampled 1 s)" + (
            " (MEASURED UNDER LOAD: other processes share the cores; trust ratios, not "
            "absolutes)" if busy else ""))
    return "; ".join(parts)


def resolve_device(name: str) -> str:
    """``auto`` -> ``cuda`` when torch sees a GPU, else ``cpu``; refuse ``cuda`` without one."""
    import torch

    if name == "auto":
        return "cuda" if torch.cuda.is_available() else "cpu"
    if name.startswith("cuda") and not torch.cuda.is_available():
        raise SystemExit(f"--device {name} was asked for, but torch sees no CUDA device.")
    return name


def synchronize(device: str) -> None:
    """Wait for queued GPU work (no-op on CPU), so wall-clock timings are complete."""
    import torch

    if device.startswith("cuda"):
        torch.cuda.synchronize()


def interleave(
    candidates: dict[str, Callable[[], float | None]],
    rounds: int,
    on_round: Callable[[int, dict[str, float]], None] | None = None,
) -> dict[str, list[float]]:
    """Run every candidate once per round, rotating the order; return seconds per candidate.

    A candidate returns the seconds it wants counted (e.g. a figure the code under test
    measured itself), or ``None`` to be timed here around the whole call.
    """
    names = list(candidates)
    spent: dict[str, list[float]] = {name: [] for name in names}
    for index in range(rounds):
        shift = index % len(names) if names else 0
        this_round = {}
        for name in names[shift:] + names[:shift]:
            start = time.perf_counter()
            measured = candidates[name]()
            seconds = time.perf_counter() - start if measured is None else measured
            spent[name].append(seconds)
            this_round[name] = seconds
        if on_round is not None:
            on_round(index, this_round)
    return spent


def median(values: Sequence[float]) -> float:
    """Median of a non-empty sequence (NaN for an empty one)."""
    return statistics.median(values) if values else math.nan


def fmt(value: float | None, unit: str = "", digits: int = 3) -> str:
    """A number with ``digits`` significant digits and a unit; ``-`` for ``None``/NaN."""
    if value is None or (isinstance(value, float) and math.isnan(value)):
        return "-"
    if value == 0:
        text = "0"
    elif abs(value) >= 10 ** digits:
        text = f"{value:,.0f}"
    else:
        text = f"{value:.{digits}g}"
    return f"{text} {unit}".rstrip()


def print_table(title: str, rows: Iterable[Row], notes: Iterable[str] = ()) -> None:
    """Print a plain-text table (figure, baseline, embench, ratio, target, met?) and notes."""
    cells = [
        (
            row.figure,
            row.baseline,
            row.embench,
            "-" if row.ratio is None else f"{row.ratio:.2f}x",
            row.target,
            "-" if row.met is None else ("yes" if row.met else "NO"),
        )
        for row in rows
    ]
    widths = [max(len(COLUMNS[i]), *(len(c[i]) for c in cells)) for i in range(len(COLUMNS))]

    def line(values: Sequence[str]) -> str:
        return "  ".join(v.ljust(w) if i == 0 else v.rjust(w)
                         for i, (v, w) in enumerate(zip(values, widths, strict=True)))

    print(f"\n== {title} ==")
    print(line(COLUMNS))
    print(line(["-" * w for w in widths]))
    for cell in cells:
        print(line(cell))
    for note in notes:
        print(f"  * {note}")
    print(flush=True)


class MatmulPeak:
    """GFLOP/s of one large square matmul: the machine's practical peak, measured per round."""

    def __init__(self, device: str, dtype: torch.dtype, n: int) -> None:
        import torch

        gen = torch.Generator().manual_seed(0)
        self.a = torch.randn(n, n, generator=gen).to(device, dtype)
        self.b = torch.randn(n, n, generator=gen).to(device, dtype)
        self.device, self.flops = device, 2 * n**3
        self.rates: list[float] = []
        self.a @ self.b  # warm-up  # noqa: B018

    def measure(self) -> None:
        synchronize(self.device)
        start = time.perf_counter()
        self.a @ self.b  # noqa: B018
        synchronize(self.device)
        self.rates.append(self.flops / (time.perf_counter() - start) / 1e9)

    @property
    def peak(self) -> float:
        return max(self.rates)
