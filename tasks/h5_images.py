"""A lazy, read-only view of uint8 images stored in an HDF5 dataset (:class:`H5Images`).

Generic: it knows nothing of the datasets' official files. The tasks built on official files
(:mod:`embench.tasks._files`) serve their splits as such views over their HDF5 store.
"""

from __future__ import annotations

import os
from pathlib import Path
from typing import Any

import h5py
import numpy as np

#: Largest contiguous read of one :class:`H5Images` access, in bytes.
READ_BLOCK_BYTES = 32 << 20


class H5Images:
    """A read-only, lazy view of uint8 images ``(N, 3, H, W)`` stored in an HDF5 dataset.

    The view selects some rows of the dataset (``rows``, increasing) and optionally tiles every
    image ``tile x tile`` times on access (SVHN's 32x32 images become 64x64 with ``tile=2``).
    Only what is indexed is read; the file stays open as long as the view lives. Views pickle
    by path (they reopen the file in the receiving process, and after a fork).

    Indexing supports what encoders and trainers use: an int (one ``(3, H, W)`` image), slices,
    integer arrays in any order (duplicates and negative indices too), boolean masks, ``...``,
    and a tuple whose first element selects rows and whose rest indexes the result. Every access
    returns a fresh uint8 numpy array.

    Args:
        path: the HDF5 file.
        name: the dataset inside it, shaped ``(rows, 3, h, w)`` with dtype uint8.
        rows: the dataset rows this view shows, increasing; ``None`` for all of them.
        tile: repeat each image ``tile`` times along height and width.
        file: an already open ``h5py.File`` of ``path`` to share (opened here when ``None``).

    Example:
        >>> view = H5Images(store, "train/images", rows=np.array([0, 5, 9]), tile=2)
        >>> view.shape, view[1:].shape
        ((3, 3, 64, 64), (2, 3, 64, 64))
    """

    def __init__(
        self,
        path: str | os.PathLike,
        name: str,
        rows: np.ndarray | slice | None = None,
        tile: int = 1,
        file: h5py.File | None = None,
    ) -> None:
        self.path = Path(path)
        self.name = name
        if not isinstance(tile, (int, np.integer)) or tile < 1:
            raise ValueError(f"tile must be a positive integer, got {tile!r}.")
        self.tile = int(tile)
        self._file = file
        self._pid = os.getpid()
        dataset = self._dataset()
        if dataset.ndim != 4 or dataset.shape[1] != 3 or dataset.dtype != np.uint8:
            raise ValueError(
                f"{self.path}:{name} must be uint8 (N, 3, H, W), got {dataset.dtype} "
                f"{dataset.shape}."
            )
        total = dataset.shape[0]
        if rows is None:
            rows = np.arange(total, dtype=np.int64)
        elif isinstance(rows, slice):
            rows = np.arange(total, dtype=np.int64)[rows]
        rows = np.asarray(rows, dtype=np.int64).reshape(-1)
        if len(rows) and (rows[0] < 0 or rows[-1] >= total or np.any(np.diff(rows) <= 0)):
            raise ValueError(f"rows must be increasing indices in [0, {total}).")
        self._rows = rows
        self._native = tuple(int(s) for s in dataset.shape[1:])
        self._block_rows = max(1, READ_BLOCK_BYTES // int(np.prod(self._native)))

    # -- array-like surface ---------------------------------------------------------------

    @property
    def shape(self) -> tuple[int, int, int, int]:
        """``(N, 3, H * tile, W * tile)``."""
        channels, height, width = self._native
        return (len(self._rows), channels, height * self.tile, width * self.tile)

    @property
    def dtype(self) -> np.dtype:
        """Always uint8."""
        return np.dtype(np.uint8)

    @property
    def ndim(self) -> int:
        """Always 4."""
        return 4

    @property
    def rows(self) -> np.ndarray:
        """The dataset rows this view shows (a copy), in view order."""
        return self._rows.copy()

    def untiled(self) -> H5Images:
        """The same rows at the native size (``tile=1``), e.g. to tile on an accelerator."""
        return H5Images(self.path, self.name, rows=self._rows, tile=1, file=self._file)

    def __len__(self) -> int:
        return len(self._rows)

    def __repr__(self) -> str:
        tiled = f", tile={self.tile}" if self.tile > 1 else ""
        return f"H5Images({self.path.name}:{self.name}, shape={self.shape}{tiled})"

    def __array__(self, dtype: Any = None, copy: bool | None = None) -> np.ndarray:
        images = self[:]
        return images if dtype is None else images.astype(dtype, copy=False)

    def __getitem__(self, key: Any) -> np.ndarray:
        if isinstance(key, tuple):
            if not key:
                return self[:]
            first, rest = key[0], key[1:]
            if first is Ellipsis:
                return self[:][key]
            selected = self[first]
            if isinstance(first, (int, np.integer)):
                return selected[rest]
            return selected[(slice(None), *rest)]
        if key is Ellipsis:
            return self[:]
        n = len(self._rows)
        if isinstance(key, (int, np.integer)) and not isinstance(key, bool):
            position = int(key) + n if key < 0 else int(key)
            if not 0 <= position < n:
                raise IndexError(f"index {int(key)} is out of range for {n} images.")
            return self._read(self._rows[position : position + 1])[0]
        if isinstance(key, slice):
            if key.step not in (None, 1):
                return self[np.arange(n)[key]]
            return self._read(self._rows[key])
        positions = np.asarray(key)
        if positions.dtype == bool:
            if positions.shape != (n,):
                raise IndexError(f"boolean index of shape {positions.shape} for {n} images.")
            return self._read(self._rows[positions])
        if positions.dtype.kind not in "iu":
            raise IndexError(f"cannot index images with {type(key).__name__} {key!r}.")
        positions = positions.astype(np.int64).reshape(-1)
        if len(positions) and (positions.min() < -n or positions.max() >= n):
            raise IndexError(f"an index is out of range for {n} images.")
        wanted = self._rows[positions]
        unique, inverse = np.unique(wanted, return_inverse=True)
        images = self._read(unique)
        if len(unique) == len(wanted) and np.array_equal(unique, wanted):
            return images
        return images[inverse.reshape(-1)]

    # -- reading --------------------------------------------------------------------------

    def _read(self, rows: np.ndarray) -> np.ndarray:
        """Read increasing dataset ``rows`` and tile them."""
        native = self._read_native(rows)
        if self.tile == 1:
            return native
        return np.tile(native, (1, 1, self.tile, self.tile))

    def _read_native(self, rows: np.ndarray) -> np.ndarray:
        """Read increasing rows: dense runs as one contiguous read, sparse ones by selection."""
        dataset = self._dataset()
        out = np.empty((len(rows), *self._native), dtype=np.uint8)
        start = 0
        while start < len(rows):
            low = int(rows[start])
            stop = int(np.searchsorted(rows, low + self._block_rows, side="left"))
            high = int(rows[stop - 1]) + 1
            count = stop - start
            if count == high - low:
                dataset.read_direct(out, np.s_[low:high], np.s_[start:stop])
            elif 2 * count >= high - low:
                # Reading the gaps too is cheaper than a point selection at this density.
                out[start:stop] = dataset[low:high][rows[start:stop] - low]
            else:
                out[start:stop] = dataset[rows[start:stop]]
            start = stop
        return out

    def _dataset(self) -> h5py.Dataset:
        if self._file is None or self._pid != os.getpid() or not self._file.id.valid:
            # HDF5 handles must not cross a fork: every process opens its own.
            self._file = h5py.File(self.path, "r")
            self._pid = os.getpid()
        return self._file[self.name]

    def __getstate__(self) -> dict[str, Any]:
        state = dict(self.__dict__)
        state["_file"] = None
        return state

    def __setstate__(self, state: dict[str, Any]) -> None:
        self.__dict__.update(state)
