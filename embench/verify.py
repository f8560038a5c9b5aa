"""Verify a record: rerun its probe search from the cached embeddings, or the whole run.

``embench verify`` and :func:`verify_record` answer "does this record's number come out of
its run again?": by default the probe stage on the run's cached embeddings (deterministic on
CPU for a seed, so the tolerance is tight); with ``full`` the whole run in a fresh temporary
home, encoder training included. A submission bundle is checked the same way
(:mod:`embench.submission`), with the same tolerance.
"""

from __future__ import annotations

import contextlib
import inspect
import tempfile
from dataclasses import dataclass
from pathlib import Path
from typing import Any

from embench.cache import cache_path, read_cache
from embench.errors import ConfigError, DataError
from embench.presets import PRESETS, preset_from_record, registered
from embench.registry import get_plugin, load_task
from embench.results import RunRecord
from embench.runner import (
    Log,
    RunConfig,
    metric_problems,
    probe_stage,
    record_probe_settings,
    run,
)
from embench.storage import resolve_home


@dataclass
class Verification:
    """The outcome of :func:`verify_record`: stored vs recomputed test metrics."""

    stored: dict[str, float]
    recomputed: dict[str, float]
    tolerance: float
    mode: str

    @property
    def matches(self) -> bool:
        """True when every metric agrees within the tolerance."""
        return not metric_problems(self.stored, self.recomputed, self.tolerance)


def verify_record(
    record: RunRecord, *, home: Path | None = None, full: bool = False,
    tolerance: float = 1e-6, progress: Any = None, log: Log = lambda message: None,
) -> Verification:
    """Rerun a record's probe search from the cached embeddings (or, ``full``, the whole run).

    The probe search is deterministic on CPU for a given seed, so the default tolerance is
    tight; a full rerun in a fresh temporary home retrains the encoder too.

    Raises:
        DataError: the record's embedding cache is gone (rerun with ``full``).
    """
    stored = {k: float(v) for k, v in record.test.items()}
    if full and str(record.encoder_spec).startswith("python:"):
        raise ConfigError(
            f"This record's encoder was a Python object ({record.encoder_spec}, e.g. from "
            "embench.evaluate), which a full rerun cannot rebuild from the record.",
            "Verify without --full (the probe search on its cached embeddings), or evaluate "
            "the same object again: the same weights give the same record.")
    if full:
        packaged = record.encoder_distribution != "(not packaged)"
        encoder = record.encoder if packaged else record.encoder_spec
        factory = get_plugin("encoder", encoder).load()
        # z, seed, device and precision come from the record's own fields; the training
        # budget is passed as recorded, since a run may have set it apart from its preset
        # (embench demo trains its autoencoders at batch 64)
        hint_keys = {"z_dim", "seed", "device", "precision", "home"}
        options = {k: v for k, v in {**record.encoder_config, **record.evaluation_config}.items()
                   if k not in hint_keys and k in inspect.signature(factory).parameters}
        # a preset with its own sizes (embench demo --rollouts) is rebuilt from the record
        preset = preset_from_record(record.preset_config)
        known = PRESETS.get(record.preset)
        own = preset is not None and preset.name == record.preset and preset != known
        with (registered(preset) if own else contextlib.nullcontext(),
              tempfile.TemporaryDirectory(prefix="embench-verify-") as tmp):
            outcome = run(RunConfig(
                encoder=encoder, encoder_options=options, task=record.task,
                preset=record.preset, z=record.z_dim, seed=record.seed,
                data_seed=record.data_seed, device=record.device, precision=record.precision,
                home=Path(tmp)), progress=progress, log=log)
        return Verification(stored, {k: float(outcome.record.test[k]) for k in stored},
                            tolerance, "full")
    home = resolve_home(home)
    key = record.fingerprints["embeddings"]
    path = cache_path(home, record.encoder, record.task, key)
    cached = read_cache(path, key, record.split_sizes)
    if cached is None:
        raise DataError(f"The embedding cache of this record ({path}) is not in {home}.",
                        "Use --home with the run's home, or --full to rerun everything.")
    settings, problems = record_probe_settings(record)
    if problems:
        raise DataError(f"This record's probes did not use its protocol's budgets "
                        f"({'; '.join(problems)}), so its numbers are not that protocol's.",
                        "Rerun it (embench run --retrain) to get a record of its protocol.")
    _, scores = probe_stage(load_task(record.task), cached, settings, record.seed,
                            record.device, progress)
    recomputed = {k: scores.test[k] for k in stored if k in scores.test}
    return Verification({k: stored[k] for k in recomputed}, recomputed, tolerance, "probes")
