"""Rich progress bars that every stage shares, and that vanish when no one is watching.

Stages receive an optional :class:`rich.progress.Progress`; :func:`stage` adds a bar to it (or
does nothing when it is ``None``), so library code never prints on its own.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator
from typing import Any

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


class Stage:
    """A handle on one progress bar; ``advance`` moves it and updates its info text."""

    def __init__(self, progress: Progress | None, task_id: TaskID | None) -> None:
        self._progress, self._task_id = progress, task_id

    def advance(self, n: float = 1, info: str | None = None) -> None:
        """Move the bar ``n`` steps; ``info`` (losses, img/s, ...) is shown beside it."""
        if self._progress is None or self._task_id is None:
            return
        fields: dict[str, Any] = {"info": info} if info is not None else {}
        self._progress.update(self._task_id, advance=n, **fields)

    def update(self, *, total: float | None = None, info: str | None = None) -> None:
        """Change the bar's total or info text without advancing."""
        if self._progress is None or self._task_id is None:
            return
        kwargs: dict[str, Any] = {}
        if total is not None:
            kwargs["total"] = total
        if info is not None:
            kwargs["info"] = info
        self._progress.update(self._task_id, **kwargs)


@contextlib.contextmanager
def stage(progress: Progress | None, description: str, total: float | None) -> Iterator[Stage]:
    """Add a bar for one stage to ``progress`` (no-op when ``None``) and yield its handle.

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
    finally:
        progress.update(task_id, completed=progress.tasks[task_id].total or 0, visible=True)
        progress.stop_task(task_id)


def make_progress(console: Console | None = None, disable: bool = False) -> Progress:
    """The CLI's progress display: description, bar, count, elapsed, remaining, info text."""
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
