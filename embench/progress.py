"""Progress that every stage shares: live bars on a terminal, plain lines in a log.

Stages receive an optional progress object; :func:`stage` adds a bar to it (or does nothing
when it is ``None``), so library code never prints on its own. :func:`make_progress` picks the
display: a live :class:`rich.progress.Progress` when a person watches a terminal, and a
:class:`LineProgress` otherwise (CI logs, ``nohup``, pipes), which writes one line when a stage
starts and ends (with its duration), one per training epoch, and one every 10% or 30 s of a long
stage, each with the elapsed time and an estimate of the time left.
"""

from __future__ import annotations

import contextlib
import importlib.util
import re
import threading
import time
from collections.abc import Iterator
from dataclasses import dataclass, field
from typing import Any

from rich import get_console
from rich.console import Console
from rich.progress import (
    BarColumn,
    MofNCompleteColumn,
    Progress,
    TaskID,
    TextColumn,
    TimeElapsedColumn,
    TimeRemainingColumn,
)

#: A long stage reports at least every this fraction of its total...
LINE_EVERY_FRACTION = 0.1
#: ...and at least every this many seconds, whichever comes first.
LINE_EVERY_SECONDS = 30.0
#: A stage of at most this many steps gets no 10% lines (only the 30 s ones).
FEW_STEPS = 10


class Stage:
    """A handle on one progress bar; ``advance`` moves it and updates its info text."""

    def __init__(self, progress: Any, task_id: TaskID | None) -> None:
        self._progress, self._task_id = progress, task_id

    def advance(self, n: float = 1, info: str | None = None) -> None:
        """Move the bar ``n`` steps; ``info`` (losses, img/s, ...) is shown beside it."""
        if self._progress is None or self._task_id is None:
            return
        fields: dict[str, Any] = {"info": info} if info is not None else {}
        self._progress.update(self._task_id, advance=n, **fields)

    def update(self, *, total: float | None = None, info: str | None = None) -> None:
        """Change the bar's total or info text without advancing.

        An ``info`` given alone marks a milestone (the training loop's end of an epoch): a
        :class:`LineProgress` writes a line for each.
        """
        if self._progress is None or self._task_id is None:
            return
        kwargs: dict[str, Any] = {}
        if total is not None:
            kwargs["total"] = total
        if info is not None:
            kwargs["info"] = info
        self._progress.update(self._task_id, **kwargs)


@contextlib.contextmanager
def stage(progress: Any, description: str, total: float | None) -> Iterator[Stage]:
    """Add a bar for one stage to ``progress`` (no-op when ``None``) and yield its handle.

    ``progress`` is a :class:`rich.progress.Progress`, a :class:`LineProgress` or ``None``.
    A stage that ends normally is shown complete; one that raises is left where it stopped.

    Example:
        >>> with stage(progress, "encode test", total=len(images)) as bar:
        ...     bar.advance(len(batch), info="1200 img/s")
    """
    if progress is None:
        yield Stage(None, None)
        return
    task_id = progress.add_task(description, total=total, info="")
    try:
        yield Stage(progress, task_id)
    except BaseException:
        progress.stop_task(task_id)
        raise
    progress.update(task_id, completed=progress.tasks[task_id].total or 0, visible=True)
    progress.stop_task(task_id)


def format_seconds(seconds: float) -> str:
    """A duration for people: ``3.2 s``, ``42 s``, ``1:15`` (m:ss), ``1:02:05`` (h:mm:ss)."""
    if seconds < 9.95:
        return f"{max(seconds, 0.0):.1f} s"
    if seconds < 59.5:
        return f"{seconds:.0f} s"
    return _clock(seconds)


def _clock(seconds: float) -> str:
    seconds = max(0, int(round(seconds)))
    hours, rest = divmod(seconds, 3600)
    minutes, secs = divmod(rest, 60)
    return f"{hours}:{minutes:02d}:{secs:02d}" if hours else f"{minutes}:{secs:02d}"


@dataclass
class LineTask:
    """One stage as :class:`LineProgress` tracks it (the attributes ``stage()`` reads)."""

    description: str
    total: float | None
    completed: float = 0.0
    fields: dict[str, Any] = field(default_factory=dict)
    started: float = field(default_factory=time.perf_counter)
    last_line: float = field(default_factory=time.perf_counter)
    last_fraction: float = 0.0
    milestones: int = 0
    finished: bool = False


_EPOCH = re.compile(r"^epoch (\d+)\b\s*")


class LineProgress:
    """Progress as plain lines, for logs nobody watches live.

    Implements the part of :class:`rich.progress.Progress` that :func:`stage` and the CLI use
    (``add_task``, ``update``, ``stop_task``, ``tasks``, ``console``, a context manager), so
    library code is the same whichever display it is handed. It writes:

    * a line when a stage starts, and one when it ends with its duration;
    * a line for every milestone (an ``info`` update that does not advance: the end of a
      training epoch), as ``epoch k/N`` with its losses and speed;
    * for other stages of more than 10 steps, a line each time another 10% is done; for any
      stage, a line after 30 s without one.

    Each line starts with the time since the display was created and, where it can be known,
    ends with the elapsed time of the stage and an estimate of the time left.

    Args:
        console: where the lines go (default: standard error).
        every_fraction: report each time this fraction of a stage's total is done.
        every_seconds: report after this long without a line, whatever the progress.

    Example:
        >>> with LineProgress(Console(stderr=True)) as progress:
        ...     with stage(progress, "embed pca", total=1500) as bar:
        ...         bar.advance(1500)
    """

    def __init__(self, console: Console | None = None, *,
                 every_fraction: float = LINE_EVERY_FRACTION,
                 every_seconds: float = LINE_EVERY_SECONDS) -> None:
        self.console = console or Console(stderr=True, highlight=False)
        self.every_fraction = every_fraction
        self.every_seconds = every_seconds
        self.tasks: list[LineTask] = []
        self._created = time.perf_counter()
        self._lock = threading.Lock()

    def __enter__(self) -> LineProgress:
        return self

    def __exit__(self, *exc: Any) -> None:
        return None

    def add_task(self, description: str, total: float | None = 100.0, **fields: Any) -> TaskID:
        """Start tracking a stage and write its start line; returns its id."""
        with self._lock:
            task = LineTask(description, total, fields=dict(fields))
            self.tasks.append(task)
            size = f" ({_number(total)} to do)" if total else ""
            self._write(f"{description}: started{size}")
            return TaskID(len(self.tasks) - 1)

    def update(self, task_id: TaskID, *, total: float | None = None,
               completed: float | None = None, advance: float | None = None,
               description: str | None = None, visible: bool | None = None,
               refresh: bool = False, **fields: Any) -> None:
        """Change a stage like :meth:`rich.progress.Progress.update`; write a line when due."""
        with self._lock:
            task = self.tasks[task_id]
            if description is not None:
                task.description = description
            if total is not None:
                task.total = total
            if completed is not None:
                task.completed = completed
            if advance is not None:
                task.completed += advance
            new_info = fields.get("info")
            milestone = (new_info and advance is None and completed is None
                         and new_info != task.fields.get("info"))
            task.fields.update(fields)
            if task.finished:
                return
            if milestone:
                task.milestones += 1
                self._report(task, milestone=True)
            elif advance and self._due(task, whole_steps=float(advance).is_integer()):
                self._report(task, milestone=False)

    def stop_task(self, task_id: TaskID) -> None:
        """Write the stage's end line: its duration, and where it stopped if unfinished."""
        with self._lock:
            task = self.tasks[task_id]
            if task.finished:
                return
            task.finished = True
            took = format_seconds(time.perf_counter() - task.started)
            if task.total and task.completed < task.total - 1e-6:
                self._write(f"{task.description}: stopped after {took} at "
                            f"{_number(task.completed)}/{_number(task.total)}")
            else:
                self._write(f"{task.description}: done in {took}")

    # -- helpers --------------------------------------------------------------------------

    def _due(self, task: LineTask, whole_steps: bool) -> bool:
        now = time.perf_counter()
        if now - task.last_line >= self.every_seconds:
            return True
        # Fractional steps are parts of an epoch, and epochs report themselves (milestones):
        # no 10% lines for them; nor for stages of a few steps (their end line says enough).
        if (not task.total or task.total <= FEW_STEPS or task.milestones
                or not whole_steps):
            return False
        fraction = task.completed / task.total
        # the last step is reported by the end line, not by a 100% progress line
        return (fraction - task.last_fraction >= self.every_fraction - 1e-9
                and fraction < 1 - 1e-9)

    def _report(self, task: LineTask, milestone: bool) -> None:
        now = time.perf_counter()
        elapsed = now - task.started
        info = str(task.fields.get("info") or "")
        parts = [f"{task.description}:"]
        match = _EPOCH.match(info) if milestone else None
        if match and task.total:  # the training loop's "epoch k ...": say k of how many
            parts.append(f"epoch {match.group(1)}/{_number(task.total)}")
            info = info[match.end():]
        elif task.total:
            parts.append(f"{_number(task.completed)}/{_number(task.total)} "
                         f"({100 * task.completed / task.total:.0f}%)")
        else:
            parts.append(_number(task.completed))
        if info:
            parts.append(info)
        timing = f"{format_seconds(elapsed)} elapsed"
        if task.total and 0 < task.completed < task.total - 1e-6:
            left = elapsed / task.completed * (task.total - task.completed)
            timing += f", ETA {format_seconds(left)}"
        parts.append(f"({timing})")
        self._write(" ".join(parts))
        task.last_line = now
        if task.total:
            task.last_fraction = task.completed / task.total

    def _write(self, text: str) -> None:
        clock = _clock(time.perf_counter() - self._created)
        self.console.print(f"[{clock}] {text}", markup=False, highlight=False, soft_wrap=True)


def _number(value: float | None) -> str:
    """Counts print as integers when they are (``15``), else with two decimals (``3.25``)."""
    if value is None:
        return "?"
    rounded = round(value)
    return str(int(rounded)) if abs(value - rounded) < 1e-6 else f"{value:.2f}"


def make_progress(console: Console | None = None, disable: bool = False,
                  live: bool | None = None) -> Progress | LineProgress:
    """The CLI's progress display: live bars on a terminal, plain lines otherwise.

    Args:
        console: where it draws (default: rich's global console, standard output).
        disable: show nothing at all.
        live: force live bars (``True``) or lines (``False``); ``None`` asks the console
            whether a person watches it (an interactive terminal, or a notebook with
            ipywidgets: without it, lines).

    Returns:
        A :class:`rich.progress.Progress` (description, bar, count, elapsed, time left, info)
        or a :class:`LineProgress`; both are context managers that :func:`stage` accepts.
    """
    console = console or get_console()
    if live is None:
        # rich draws live bars in a notebook only with ipywidgets (else it warns at each bar)
        live = console.is_interactive or (console.is_jupyter
                                          and importlib.util.find_spec("ipywidgets") is not None)
    if not live and not disable:
        return LineProgress(console)
    return Progress(
        TextColumn("[bold blue]{task.description}"),
        BarColumn(),
        MofNCompleteColumn(),
        TimeElapsedColumn(),
        TimeRemainingColumn(),
        TextColumn("{task.fields[info]}"),
        console=console,
        disable=disable,
        transient=False,
    )
