"""Training machinery shared by every trainable component: the loop, devices, precision."""

from embench.training.loop import (
    PRECISIONS,
    TrainingDivergedError,
    TrainResult,
    TrainState,
    autocast,
    bf16_is_native,
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
    "bf16_is_native",
    "check_precision",
    "copy_state",
    "fit_module",
    "resolve_device",
]
