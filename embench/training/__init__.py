"""Training machinery shared by every trainable component: the loop and its checkpoints.

Devices and precision live in :mod:`embench.devices`; their names are re-exported here for the
encoders that train.
"""

from embench.devices import (
    PRECISIONS,
    autocast,
    bf16_is_native,
    check_precision,
    resolve_device,
)
from embench.protocols import convergence_verdict
from embench.training.loop import (
    TrainingDivergedError,
    TrainResult,
    TrainState,
    copy_state,
    fit_module,
)

__all__ = [
    "PRECISIONS",
    "TrainResult",
    "TrainState",
    "TrainingDivergedError",
    "autocast",
    "bf16_is_native",
    "check_precision",
    "convergence_verdict",
    "copy_state",
    "fit_module",
    "resolve_device",
]
