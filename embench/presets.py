"""Presets scale sizes and epochs, never the protocol.

``paper`` is the paper's protocol; ``quick`` finishes one encoder on a 2-core CPU in minutes
while still separating perceptual from pixel-wise encoders on LunarLander; ``smoke`` takes
seconds and exists for tests.
"""

from __future__ import annotations

from dataclasses import asdict, dataclass, field
from typing import Any

from embench.errors import UnknownNameError


@dataclass(frozen=True)
class Preset:
    """Sizes and epoch budgets of one preset.

    Attributes:
        name: preset name.
        autoencoder_epochs: most epochs an autoencoder trains (early stopping may stop sooner).
        probe_epochs: most epochs a probe trains.
        decoder_epochs: most epochs of the decoder retraining (Table VIII).
        batch_size: batch size of autoencoder and probe training (512 in the paper).
        z_sizes: per task, the embedding sizes the paper grid uses at this preset.
        sizes: per task, the task-specific sizes (rollouts, images per split, ...).
    """

    name: str
    autoencoder_epochs: int
    probe_epochs: int
    decoder_epochs: int
    batch_size: int = 512
    z_sizes: dict[str, tuple[int, ...]] = field(default_factory=dict)
    sizes: dict[str, dict[str, int | None]] = field(default_factory=dict)

    def sizes_for(self, task: str) -> dict[str, int | None]:
        """Task-specific sizes (an empty dict for tasks the preset does not name)."""
        return dict(self.sizes.get(task, {}))

    def default_z(self, task: str) -> int:
        """The first z of the task's grid (64 for tasks the preset does not name)."""
        return self.z_sizes.get(task, (64,))[0]

    def to_dict(self) -> dict[str, Any]:
        """JSON-ready description (recorded in every result)."""
        return asdict(self)


PRESETS: dict[str, Preset] = {
    "smoke": Preset(
        name="smoke",
        autoencoder_epochs=2,
        probe_epochs=15,
        decoder_epochs=2,
        z_sizes={"lunarlander": (8,), "stl10": (8,), "svhn": (8,)},
        sizes={
            "lunarlander": {"unaltered_rollouts": 4, "altered_rollouts": 6, "frames": 150},
            "stl10": {"autoencoder": 64, "probe": 40, "test": 20},
            "svhn": {"autoencoder": 64, "probe": 40, "test": 20},
        },
    ),
    "quick": Preset(
        name="quick",
        autoencoder_epochs=15,
        probe_epochs=300,
        decoder_epochs=5,
        z_sizes={"lunarlander": (64,), "stl10": (128,), "svhn": (64,)},
        sizes={
            "lunarlander": {"unaltered_rollouts": 120, "altered_rollouts": 180, "frames": 150},
            "stl10": {"autoencoder": 10_000, "probe": 5_000, "test": 8_000},
            "svhn": {"autoencoder": 20_000, "probe": 10_000, "test": 5_000},
        },
    ),
    "paper": Preset(
        name="paper",
        autoencoder_epochs=50,
        probe_epochs=500,
        decoder_epochs=50,
        z_sizes={
            "lunarlander": (32, 64, 128, 256),
            "stl10": (64, 128, 256, 512),
            "svhn": (32, 64, 128),
        },
        sizes={
            "lunarlander": {"unaltered_rollouts": 700, "altered_rollouts": 700, "frames": 150},
            "stl10": {"autoencoder": None, "probe": None, "test": None},
            "svhn": {"autoencoder": None, "probe": None, "test": None},
        },
    ),
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
