"""Crash points for testing resumability: a run can be killed (SIGKILL) at a named point.

Set ``EMBENCH_CRASH_AT=<point>[:<n>]`` and the process kills itself, without any cleanup, the
``n``-th time (default 1st) it reaches ``<point>``. The test suite uses this to prove that
every stage survives a hard kill and that the rerun's result equals an uninterrupted run's.
Points: ``generate`` (a rollout collected), ``train-epoch`` (an epoch's resumable state
saved), ``embed-batch`` (a batch embedded), ``probe-epoch`` (a probe-search epoch done).
"""

from __future__ import annotations

import os
import signal
from collections import Counter

CRASH_ENV = "EMBENCH_CRASH_AT"
_seen: Counter[str] = Counter()


def crash_point(point: str) -> None:
    """Kill this process with SIGKILL if ``EMBENCH_CRASH_AT`` names ``point`` (and count)."""
    wanted = os.environ.get(CRASH_ENV)
    if not wanted:
        return
    name, _, nth = wanted.partition(":")
    if name != point:
        return
    _seen[point] += 1
    if _seen[point] >= int(nth or 1):
        os.kill(os.getpid(), signal.SIGKILL)
