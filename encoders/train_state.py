"""The resumable training state of a FourLayerCVAE encoder's fit: written and read back.

Written at every epoch end into the run's resume directory (safetensors tensors, then the
JSON that vouches for them by sha256), so a killed fit continues from its last epoch.
"""

from __future__ import annotations

import json
import warnings
from pathlib import Path

from embench.storage import atomic_path, sha256_file, write_json
from embench.training import TrainState

_STATE_TENSORS, _STATE_META = "train-state.safetensors", "train-state.json"


def _save_train_state(directory: Path, run_key: str, state: TrainState) -> None:
    """Write the resumable state atomically: tensors first, then the JSON that vouches for them."""
    from safetensors.torch import save_file

    tensors, meta = state.to_parts()
    directory.mkdir(parents=True, exist_ok=True)
    with atomic_path(directory / _STATE_TENSORS) as tmp:
        save_file(tensors, str(tmp))
    meta = {"run_key": run_key, "tensors_sha256": sha256_file(directory / _STATE_TENSORS),
            "state": meta}
    write_json(directory / _STATE_META, meta)


def _load_train_state(directory: Path, run_key: str) -> TrainState | None:
    """The state saved by :func:`_save_train_state` for ``run_key``, or ``None``."""
    from safetensors.torch import load_file

    meta_path, tensors_path = directory / _STATE_META, directory / _STATE_TENSORS
    if not (meta_path.exists() and tensors_path.exists()):
        return None
    try:
        meta = json.loads(meta_path.read_text())
        if meta.get("run_key") != run_key or sha256_file(tensors_path) != meta["tensors_sha256"]:
            warnings.warn(f"Ignoring the resumable state in {directory}: it belongs to another "
                          "run or is incomplete; training from the start.", stacklevel=3)
            return None
        return TrainState.from_parts(load_file(str(tensors_path)), meta["state"])
    except (OSError, ValueError, KeyError, RuntimeError) as exc:
        warnings.warn(f"Ignoring the unreadable resumable state in {directory} ({exc}); "
                      "training from the start.", stacklevel=3)
        return None
