"""SVHN digit classification (32x32 tiled 2x2 into 64x64, 10 classes, accuracy).

Splits (Table I of the paper): autoencoder = ``extra`` (531,131 images, 80/20 train/val), probe =
``train`` (73,257, 80/20 train/val), test = ``test`` (26,032). Labels are the digits 0..9 (the
official label 10 stands for the digit 0). Each 32x32 image is tiled 2x2 into a 64x64 image,
on access: the store keeps the native 32x32 images and the tiled extra split (about 6.5 GB as
uint8) never exists anywhere.

The files are torchvision's (``SVHN`` class: URLs, file names and md5 checksums are read from it):
``{train,test,extra}_32x32.mat``, MATLAB v5 files holding ``X`` (uint8 ``32 x 32 x 3 x N``,
height, width, channel, image) and ``y`` (``N x 1``, 1..10). Each is read once with
:func:`scipy.io.loadmat` (one variable at a time; the largest, extra's ``X``, is 1.6 GB of uint8
while it is converted), transposed to ``(N, 3, 32, 32)`` chunk by chunk and written to the HDF5
store described in :mod:`embench.tasks._files`.
"""

from __future__ import annotations

from pathlib import Path
from typing import Any

import h5py
import numpy as np

from embench.errors import DataError
from embench.progress import stage

# isort: split
# (isort cannot map embench.tasks to tasks/, the package-dir; keep it with embench.)
from embench.tasks._files import CONVERT_CHUNK_ROWS, OfficialFilesTask, SourceFile

NATIVE_SIZE = 32
TILE = 2
IMAGE_SIZE = NATIVE_SIZE * TILE
SPLITS = ("train", "test", "extra")


def svhn_source_files() -> tuple[SourceFile, ...]:
    """The three official files with torchvision's URLs and checksums."""
    from torchvision.datasets import SVHN

    return tuple(
        SourceFile(filename, md5, url)
        for url, filename, md5 in (SVHN.split_list[split] for split in SPLITS)
    )


def _read_variable(path: Path, name: str) -> np.ndarray:
    """One variable of a MATLAB v5 file; one clear DataError when that is impossible."""
    from scipy.io import loadmat

    try:
        variables = loadmat(path, variable_names=[name])
    except Exception as exc:  # scipy raises many types for damaged files
        reason = " ".join(str(exc).split()) or type(exc).__name__
        raise DataError(
            f"SVHN file {path} cannot be read as a MATLAB v5 file ({reason}): it is truncated "
            "or not an SVHN file.",
            "Download it again.",
        ) from exc
    if name not in variables:
        raise DataError(
            f"SVHN file {path} holds no variable {name!r}: it is truncated or not an SVHN "
            "*_32x32.mat file.",
            "Download it again.",
        )
    return variables[name]


def read_svhn_labels(path: Path) -> np.ndarray:
    """The ``y`` variable of an official ``*_32x32.mat`` file as int64 digits 0..9 (10 -> 0).

    Raises:
        DataError: if ``y`` is missing or holds values other than the integers 1..10.
    """
    y = np.asarray(_read_variable(path, "y")).reshape(-1)
    if not np.issubdtype(y.dtype, np.number) or (
        len(y) and (not np.all(np.isin(y, np.arange(1, 11))))
    ):
        raise DataError(f"SVHN file {path}: y must hold the labels 1..10.",
                        "It is not an SVHN *_32x32.mat file.")
    labels = y.astype(np.int64)
    labels[labels == 10] = 0
    return labels


class SVHNTask(OfficialFilesTask):
    """SVHN digit classification (32x32 tiled 2x2 into 64x64, 10 classes, accuracy).

    Autoencoder split: ``extra`` (531,131); probe split: ``train`` (73,257); test: ``test``
    (26,032); labels 0..9 (the official 10 is the digit 0). See the module docstring for the
    file format and :mod:`embench.tasks._files` for lookup, verification, the store and the
    splits.

    Args:
        data_dir: a directory with ``{train,test,extra}_32x32.mat``, searched before
            ``EMBENCH_HOME/datasets/svhn/``.
        verify: refuse files that fail the official md5 checksums (turn off for subsets).
        download: download missing files (about 1.6 GB in all).

    Example:
        >>> task = SVHNTask(data_dir="~/data/svhn")
        >>> data = task.load(home, get_preset("paper"), seed=0)
        >>> data.splits["autoencoder_train"].images[:8].shape
        (8, 3, 64, 64)
    """

    name = "svhn"
    title = "SVHN"
    image_size = IMAGE_SIZE
    native_size = NATIVE_SIZE
    tile = TILE
    sources = {"autoencoder": "extra", "probe": "train", "test": "test"}
    layout = "{train,test,extra}_32x32.mat"
    label_mapping = "official labels 1..10 -> digits 0..9 (10 is the digit 0)"
    #: Label d is the digit d.
    class_names = tuple(str(digit) for digit in range(10))

    #: Images per split at each preset, the first N rows of each official split (None: all).
    PRESET_SIZES = {
        "smoke": {"autoencoder": 64, "probe": 40, "test": 20},
        "quick": {"autoencoder": 20_000, "probe": 10_000, "test": 5_000},
        "paper": {"autoencoder": None, "probe": None, "test": None},
    }
    #: The z grid at each preset (the paper's grid last).
    Z_SIZES = {"smoke": (8,), "quick": (64,), "paper": (32, 64, 128)}

    def source_files(self) -> tuple[SourceFile, ...]:
        return svhn_source_files()

    def _download_into(self, directory: Path, missing: list[SourceFile]) -> None:
        from torchvision.datasets.utils import download_url

        for source in missing:
            download_url(source.url, str(directory), source.relpath, source.md5)

    def _convert(self, files: dict[str, Path], h5: h5py.File, progress: Any) -> dict[str, int]:
        paths = {split: files[f"{split}_32x32.mat"] for split in SPLITS}
        # Labels first: small, and a damaged file is refused before the large reads.
        labels = {split: read_svhn_labels(path) for split, path in paths.items()}
        rows = {split: len(labels[split]) for split in SPLITS}
        with stage(progress, "convert svhn (once)", total=sum(rows.values())) as bar:
            for split, path in paths.items():
                n = rows[split]
                x = _read_variable(path, "X")
                if x.dtype != np.uint8 or x.shape != (NATIVE_SIZE, NATIVE_SIZE, 3, n):
                    raise DataError(
                        f"SVHN file {path}: X is {x.dtype} {x.shape}, expected uint8 "
                        f"{(NATIVE_SIZE, NATIVE_SIZE, 3, n)} for its {n} labels.",
                        "It is not an SVHN *_32x32.mat file.",
                    )
                h5.create_dataset(f"{split}/labels", data=labels[split])
                images = h5.create_dataset(f"{split}/images", shape=(n, 3, NATIVE_SIZE,
                                           NATIVE_SIZE), dtype=np.uint8)
                for low in range(0, n, CONVERT_CHUNK_ROWS):
                    high = min(low + CONVERT_CHUNK_ROWS, n)
                    # (H, W, C, N) -> (N, C, H, W), one chunk at a time (no full-size copy).
                    images[low:high] = np.ascontiguousarray(x[..., low:high].transpose(3, 2, 0, 1))
                    bar.advance(high - low)
                del x
        return rows
