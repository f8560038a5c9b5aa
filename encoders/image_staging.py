"""Images and perceptual targets staged for the FourLayerCVAE encoders' training and inference.

Training reads a split by index tensor or slice on the training device, whether the split is a
numpy array, an h5py dataset or a task's lazy view (held in memory or streamed from its store,
see :class:`_TrainingImages`); inference reads any of them in chunks (:func:`_batches`). The
frozen perceptual network's outputs p(x) are computed once per fit and staged the same way
(:func:`_perceptual_targets`).
"""

from __future__ import annotations

import contextlib
import warnings
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embench.encoders.cvae_network import check_image_size
from embench.errors import ConfigError
from embench.storage import atomic_path
from embench.training import autocast

#: Images per forward pass in :meth:`FourLayerCVAEEncoder.encode` and friends.
INFERENCE_BATCH = 1024
#: The perceptual targets p(x) of both splits (computed once per fit, see
#: :func:`_perceptual_targets`) are held in memory up to this many bytes together, apart from
#: the images' budget; a split beyond what is left is read from its file batch by batch.
#: AlexNet's conv2 map is 7x7x192 floats a 64 px image (37.6 kB in fp32, three times the
#: image): the paper's 84,000 LunarLander frames take 3.2 GB.
TARGET_RESIDENT_BYTES = 4 << 30
_LOAD_CHUNK = 4096


def _to_unit(batch: torch.Tensor) -> torch.Tensor:
    """uint8 -> float32 in [0, 1], image batches channels-last (what the network runs in).

    Floats are taken as they are (never modified in place).
    """
    if batch.dim() == 4:
        # Converted while still uint8 (a quarter of the bytes); the division keeps the layout.
        batch = batch.contiguous(memory_format=torch.channels_last)
    if batch.dtype == torch.uint8:
        return batch.div(255).float()  # one pass: true division yields float32 directly
    return batch.float()


def _take(data: torch.Tensor, batch: torch.Tensor | slice) -> torch.Tensor:
    """Rows ``batch`` of ``data``: a view for a slice, ``index_select`` for an index tensor."""
    # index_select is about 2x faster than advanced indexing for uint8 rows on CPU
    return data[batch] if isinstance(batch, slice) else data.index_select(0, batch)


def _check_images(images: Any, what: str) -> tuple[int, int]:
    """Check an ``(N, 3, s, s)`` image array; return ``(N, s)``."""
    shape = tuple(getattr(images, "shape", ()))
    if len(shape) != 4 or shape[1] != 3:
        raise ConfigError(
            f"{what} must be an (N, 3, H, W) image array; got shape {shape}.",
            "Pass channels-first RGB images, uint8 or float in [0, 1].",
        )
    dtype = np.dtype(str(images.dtype).replace("torch.", ""))
    if dtype != np.uint8 and dtype.kind != "f":
        raise ConfigError(f"{what} must be uint8 or float in [0, 1]; got dtype {dtype}.")
    return int(shape[0]), check_image_size(int(shape[2]), int(shape[3]))


def _as_tensor(array: Any) -> torch.Tensor:
    """A CPU tensor sharing memory with a numpy array where possible (read-only use)."""
    if isinstance(array, torch.Tensor):
        return array
    array = np.ascontiguousarray(array)
    with warnings.catch_warnings():  # a read-only array is fine: nothing writes to it
        warnings.simplefilter("ignore", UserWarning)
        return torch.from_numpy(array)


def _images_on_device(images: Any, device: torch.device) -> torch.Tensor:
    """The whole array on ``device`` in its own dtype (uint8 stays uint8: 4x less memory).

    numpy arrays are wrapped without a copy on CPU; anything else that slices (an h5py dataset,
    a lazy view) is read in chunks of ``_LOAD_CHUNK`` rows straight into the result, so the
    result is the only full-size copy (none on the host when ``device`` is a GPU).
    """
    if isinstance(images, np.ndarray | torch.Tensor):
        return _as_tensor(images).to(device)
    shape = tuple(int(s) for s in images.shape)
    dtype = torch.from_numpy(np.empty(0, dtype=np.dtype(images.dtype))).dtype
    out = torch.empty(shape, dtype=dtype, device=device)
    for start in range(0, shape[0], _LOAD_CHUNK):
        out[start:start + _LOAD_CHUNK] = _as_tensor(images[start:start + _LOAD_CHUNK])
    return out


class _TrainingImages:
    """One split as training reads it: rows by index tensor or slice, on ``device``.

    A lazy view that tiles on access (it has ``tile > 1`` and ``untiled()``, like the task
    views of :mod:`embench.tasks._files`) is read at its stored size and tiled per batch on
    ``device``, so the tiled split never exists. numpy arrays and tensors are used as they are
    (no copy on CPU). Other splits are read into memory once when their stored size is at most
    ``limit`` bytes, else read from their store batch by batch (sorted index reads; such a
    split must accept a sorted integer array as an index, as h5py datasets and task views do).
    Every mode returns the same bytes for the same rows.

    Attributes:
        tile: how often each image is repeated along height and width per batch.
        resident_bytes: bytes this holder read into memory (0 for in-memory or streamed ones).
        streamed: whether batches are read from the store.
    """

    def __init__(self, images: Any, device: torch.device, limit: int) -> None:
        self.device, self.tile = device, 1
        source = images
        in_memory = isinstance(images, np.ndarray | torch.Tensor)
        tile = getattr(images, "tile", 1)
        if (not in_memory and isinstance(tile, int | np.integer) and tile > 1
                and callable(getattr(images, "untiled", None))):
            source, self.tile = images.untiled(), int(tile)
        self._n = int(source.shape[0])
        stored = 0 if in_memory else (
            int(np.prod(source.shape, dtype=np.int64)) * np.dtype(source.dtype).itemsize
        )
        self.streamed = stored > limit
        self.resident_bytes = 0 if self.streamed else stored
        self._source = source if self.streamed else None
        self._data = None if self.streamed else _images_on_device(source, device)

    def __len__(self) -> int:
        return self._n

    def take(self, batch: torch.Tensor | slice) -> torch.Tensor:
        """Rows ``batch`` (an index tensor, sorted, or a slice), tiled, on the device."""
        if self._data is not None:
            images = _take(self._data, batch)
        else:
            key = batch if isinstance(batch, slice) else batch.cpu().numpy()
            images = _as_tensor(self._source[key]).to(self.device)
        if self.tile > 1:
            images = images.repeat(1, 1, self.tile, self.tile)  # == np.tile of the view
        return images


def _batches(images: Any, batch_size: int = INFERENCE_BATCH):
    """Yield ``(start, cpu_tensor)`` chunks of an array-like, reading one chunk at a time."""
    for start in range(0, int(images.shape[0]), batch_size):
        yield start, _as_tensor(images[start:start + batch_size])


class _PerceptualTargets:
    """The frozen perceptual network's output p(x) for every image of one split.

    p is frozen and the images never change, so a perceptual loss's target is the same in
    every epoch: it is computed once per fit (by :func:`_perceptual_targets`) instead of once
    per batch per epoch, for training and validation alike. Rows are stored channels-last
    (``N, h, w, c``), as the network produces them, in the training precision (bf16 kept as
    its 16-bit pattern: HDF5 has no bf16 type), and held or streamed like the images
    (:class:`_TrainingImages`).
    """

    def __init__(self, rows: Any, bf16: bool, device: torch.device, limit: int) -> None:
        self._rows = _TrainingImages(rows, device, limit)
        self._bf16 = bf16
        self.resident_bytes = self._rows.resident_bytes

    def take(self, batch: torch.Tensor | slice) -> torch.Tensor:
        """Targets of rows ``batch`` as float32 ``(n, c, h, w)`` (a channels-last view)."""
        rows = self._rows.take(batch)
        if self._bf16:
            rows = rows.view(torch.bfloat16)
        return rows.float().permute(0, 3, 1, 2)


def _perceptual_targets(
    network: nn.Module,
    splits: dict[str, _TrainingImages],
    device: torch.device,
    precision: str,
    path: Path,
    files: contextlib.ExitStack,
) -> dict[str, _PerceptualTargets]:
    """p(x) of every image of each split, from ``path`` or computed and written there first.

    Computed in eval mode under ``torch.inference_mode`` and the training precision's
    autocast, :data:`INFERENCE_BATCH` images at a time, so a target has the bits a per-batch
    recomputation in the same precision has up to convolution rounding (a batch of another
    size may take another kernel). The file is written under a temporary name and renamed, so
    an existing ``path`` is complete; the caller names it by the run's key and removes it when
    the fit ends. It stays open (in ``files``) while a split too large to hold is streamed.
    """
    import h5py

    bf16 = precision == "bf16"
    if not path.exists():
        with atomic_path(path) as tmp, h5py.File(tmp, "w") as out:
            for name, images in splits.items():
                dataset = None
                for start in range(0, len(images), INFERENCE_BATCH):
                    x = _to_unit(images.take(slice(start, start + INFERENCE_BATCH)))
                    with torch.inference_mode(), autocast(device, precision):
                        features = network(x)
                    features = features.to(torch.bfloat16 if bf16 else torch.float32)
                    rows = features.permute(0, 2, 3, 1).contiguous().cpu()
                    rows = (rows.view(torch.int16) if bf16 else rows).numpy()
                    if dataset is None:
                        dataset = out.create_dataset(
                            name, shape=(len(images), *rows.shape[1:]), dtype=rows.dtype,
                            chunks=(min(len(images), 64), *rows.shape[1:]))
                    dataset[start:start + len(rows)] = rows
            out.attrs["precision"] = precision
    stored = files.enter_context(h5py.File(path, "r"))
    targets, budget = {}, TARGET_RESIDENT_BYTES
    for name in splits:
        targets[name] = _PerceptualTargets(stored[name], bf16, device, budget)
        budget -= targets[name].resident_bytes
    return targets


