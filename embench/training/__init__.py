"""Training machinery shared by every trainable component: the loop, devices, precision."""

from embench.training.loop import (
    PRECISIONS,
    TrainingDivergedError,
    TrainResult,
    TrainState,
    autocast,
    check_precision,
    copy_state,
    fit_module,
    resolve_device,
)

__all__ = [
    "PRECISIONS",
    "TrainResult",
    "TrainState",
    "TrainingDivergedError",
    "autocast",
    "check_precision",
    "copy_state",
    "fit_module",
    "resolve_device",
]
