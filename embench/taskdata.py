"""A task's data, made ready: the one path from a task (or its name) to its :class:`TaskData`.

The runner, ``embench data``, ``embench show`` and a sweep's data jobs all prepare data here,
so they create the same ``EMBENCH_HOME/datasets`` folder and call the task the same way. The
task itself decides how its data is generated, downloaded or verified (``task.load``).
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

from embench.presets import Preset
from embench.protocols import TaskData
from embench.registry import load_task
from embench.storage import home_dir


def load_task_data(task: Any, preset: Preset, home: Path, seed: int = 0,
                   progress: Any = None) -> TaskData:
    """Make sure a constructed task's data exists (generate or verify it) and load it."""
    home_dir(home, "datasets")
    return task.load(home, preset, seed, progress)


def prepare_task(
    name: str, preset: Preset, home: Path, seed: int = 0,
    options: dict[str, Any] | None = None, progress: Any = None,
) -> tuple[Any, TaskData]:
    """Construct a registered task and make sure its data exists (generate or verify it).

    Args:
        name: the task's registered name.
        preset: the sizes to prepare (the task reads its own sizes for the preset's name).
        home: EMBENCH_HOME; the data lives under ``home/datasets``.
        seed: seed of data generation.
        options: the task's keyword config (e.g. ``data_dir``).
        progress: a rich Progress for generation or checksums.

    Returns:
        The task and its data.
    """
    task = load_task(name, options)
    return task, load_task_data(task, preset, home, seed, progress)
