"""Presets scale epochs and batches, never the protocol; tasks say their own sizes.

``paper`` is the paper's protocol; ``quick`` finishes one encoder on a 2-core CPU in minutes
while still separating perceptual from pixel-wise encoders on LunarLander; ``demo`` is
``embench demo``'s small set (LunarLander only; about two minutes for four encoders);
``smoke`` takes seconds and exists for tests. ``third`` and ``half`` are the scale study's
steps between ``quick`` and ``paper`` (a third and a half of the paper's LunarLander rollouts
with the paper's epoch caps; see the README's scale study).

A preset holds only generic budgets. Each task declares, per preset name, its own sizes
(``PRESET_SIZES``: rollouts, images per split, ...) and z grid (``Z_SIZES``), so a third-party
task defines its own ``quick`` and ``paper`` sizes; :func:`task_sizes` and :func:`task_z_sizes`
read them.
"""

from __future__ import annotations

import contextlib
from collections.abc import Iterator, Mapping
from dataclasses import asdict, dataclass, field
from typing import Any

from embench.errors import ConfigError, UnknownNameError

#: The z grid of a task that declares none for a preset.
DEFAULT_Z_SIZES: tuple[int, ...] = (64,)


@dataclass(frozen=True)
class Preset:
    """Epoch and batch budgets of one preset.

    Attributes:
        name: preset name; tasks key their sizes and z grids on it.
        autoencoder_epochs: most epochs an autoencoder trains (early stopping may stop sooner).
        probe_epochs: most epochs a probe trains.
        decoder_epochs: most epochs of the decoder retraining (Table VIII).
        batch_size: batch size of autoencoder and probe training (512 in the paper).
        overrides: per task name, sizes used instead of the task's own for this preset (tests
            and benchmarks build small presets this way); empty for the built-in presets.
    """

    name: str
    autoencoder_epochs: int
    probe_epochs: int
    decoder_epochs: int
    batch_size: int = 512
    overrides: dict[str, dict[str, Any]] = field(default_factory=dict)

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in every result)."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(name="smoke", autoencoder_epochs=2, probe_epochs=15, decoder_epochs=2),
    # embench demo's: quick's probe budget, few autoencoder epochs, one decoder epoch
    "demo": Preset(name="demo", autoencoder_epochs=6, probe_epochs=300, decoder_epochs=1),
    "quick": Preset(name="quick", autoencoder_epochs=15, probe_epochs=300, decoder_epochs=5),
    # The scale study's steps towards the paper's data (a third and a half of its rollouts,
    # LunarLander only): the paper's epoch caps for the autoencoder and the probes; the
    # decoder retraining of Table VIII keeps a smaller cap, as it answers another question.
    "third": Preset(name="third", autoencoder_epochs=50, probe_epochs=500, decoder_epochs=15),
    "half": Preset(name="half", autoencoder_epochs=50, probe_epochs=500, decoder_epochs=15),
    "paper": Preset(name="paper", autoencoder_epochs=50, probe_epochs=500, decoder_epochs=50),
}


def get_preset(name: str) -> Preset:
    """Look a preset up by name.

    Raises:
        UnknownNameError: with the available names.
    """
    try:
        return PRESETS[name]
    except KeyError:
        raise UnknownNameError("preset", name, PRESETS) from None


@contextlib.contextmanager
def registered(preset: Preset) -> Iterator[Preset]:
    """Make ``preset`` the one its name stands for while the block runs.

    Runs look presets up by name; ``embench demo`` with its own sizes and ``verify --full`` of
    such a record register theirs this way.

    Example:
        >>> with registered(Preset("tiny", 1, 1, 1, overrides={"lunarlander": {...}})):
        ...     run(RunConfig(encoder="pca", task="lunarlander", preset="tiny"))  # doctest: +SKIP
    """
    before = PRESETS.get(preset.name)
    PRESETS[preset.name] = preset
    try:
        yield preset
    finally:
        if before is None:
            PRESETS.pop(preset.name, None)
        else:
            PRESETS[preset.name] = before


def preset_from_record(config: Mapping[str, Any]) -> Preset | None:
    """The :class:`Preset` a record's ``preset_config`` describes.

    Returns ``None`` when it cannot be rebuilt (records before 0.3.0 carried other keys).
    """
    try:
        return Preset(**{**dict(config), "overrides": dict(config.get("overrides") or {})})
    except TypeError:
        return None


def _preset_name(preset: Preset | str) -> str:
    return preset.name if isinstance(preset, Preset) else str(preset)


def task_sizes(task: Any, preset: Preset | str) -> dict[str, Any]:
    """The task's own sizes at ``preset`` (rollouts, images per split, ...).

    A preset's ``overrides`` for the task win; otherwise the task's ``PRESET_SIZES`` entry
    for the preset's name; a task that declares no ``PRESET_SIZES`` at all has none (``{}``).

    Args:
        task: a task object or class (its ``name`` and ``PRESET_SIZES`` are read).
        preset: a :class:`Preset` or a preset name.

    Returns:
        A fresh dict (the caller may change it).

    Raises:
        ConfigError: when the task declares sizes, but none for the preset; it names the
            presets it has.

    Example:
        >>> class Tiny:
        ...     name = "tiny"
        ...     PRESET_SIZES = {"quick": {"images": 100}}
        >>> task_sizes(Tiny, "quick")
        {'images': 100}
    """
    name = str(getattr(task, "name", type(task).__name__))
    if isinstance(preset, Preset) and name in preset.overrides:
        return dict(preset.overrides[name])
    preset_name = _preset_name(preset)
    declared = getattr(task, "PRESET_SIZES", None)
    if declared is None:  # a task whose data has no sizes to scale (e.g. fixed files)
        return {}
    if not isinstance(declared, Mapping) or preset_name not in declared:
        has = ", ".join(sorted(declared)) if isinstance(declared, Mapping) else ""
        raise ConfigError(
            f"Task {name!r} has no sizes for preset {preset_name!r} "
            f"(it has sizes for: {has or 'no preset'}).",
            f"Add a {preset_name!r} entry to the task's PRESET_SIZES, or use one of its presets.")
    return dict(declared[preset_name])


def task_z_sizes(task: Any, preset: Preset | str) -> tuple[int, ...]:
    """The task's z grid at ``preset`` (its ``Z_SIZES`` entry; ``(64,)`` when it has none).

    Example:
        >>> class Tiny:
        ...     name = "tiny"
        ...     Z_SIZES = {"paper": (16, 32)}
        >>> task_z_sizes(Tiny, "paper"), task_z_sizes(Tiny, "quick")
        ((16, 32), (64,))
    """
    declared = getattr(task, "Z_SIZES", None) or {}
    grid = declared.get(_preset_name(preset)) if isinstance(declared, Mapping) else None
    return tuple(int(z) for z in grid) if grid else DEFAULT_Z_SIZES
