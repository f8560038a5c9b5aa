"""STL-10 classification (96x96, 10 classes, accuracy), from the official binary files.

Splits (Table I of the paper): autoencoder = ``unlabeled`` (100,000 images, 80/20 train/val),
probe = ``train`` (5,000, 80/20 train/val), test = ``test`` (8,000). Labels 1..10 become 0..9.

The files are torchvision's (``STL10`` class: URL, file names and md5 checksums are read from
it): ``stl10_binary/{train,test,unlabeled}_X.bin`` hold raw uint8 images, each stored as
3 x 96 x 96 in channel, column, row order (column-major planes, as MATLAB wrote them), and
``stl10_binary/{train,test}_y.bin`` one uint8 label per image. They are converted once, in chunks,
into the HDF5 store described in :mod:`embench.tasks._files`; nothing holds a whole split in
memory.
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

IMAGE_SIZE = 96
IMAGE_SHAPE = (3, IMAGE_SIZE, IMAGE_SIZE)
IMAGE_BYTES = 3 * IMAGE_SIZE * IMAGE_SIZE
#: Official split -> (images file, labels file or None, official number of images).
FILES: dict[str, tuple[str, str | None, int]] = {
    "train": ("train_X.bin", "train_y.bin", 5_000),
    "test": ("test_X.bin", "test_y.bin", 8_000),
    "unlabeled": ("unlabeled_X.bin", None, 100_000),
}


def stl10_source_files() -> tuple[SourceFile, ...]:
    """The five official files with torchvision's checksums, the archive URL and their sizes."""
    from torchvision.datasets import STL10

    md5 = dict(STL10.train_list + STL10.test_list)
    sources = []
    for images, labels, count in FILES.values():
        sources.append(SourceFile(f"{STL10.base_folder}/{images}", md5[images], STL10.url,
                                  count * IMAGE_BYTES))
        if labels is not None:
            sources.append(SourceFile(f"{STL10.base_folder}/{labels}", md5[labels], STL10.url,
                                      count))
    return tuple(sources)


def read_stl10_labels(path: Path, n_images: int) -> np.ndarray:
    """Labels of an official ``*_y.bin`` file as int64 0..9.

    Raises:
        DataError: if the file does not hold ``n_images`` labels in 1..10.
    """
    raw = np.fromfile(path, dtype=np.uint8)
    if len(raw) != n_images:
        raise DataError(
            f"STL-10 file {path} holds {len(raw)} labels for {n_images} images.",
            "It is truncated or belongs to other image files; use matching official files.",
        )
    if len(raw) and (raw.min() < 1 or raw.max() > 10):
        raise DataError(
            f"STL-10 file {path} holds labels outside 1..10 ({raw.min()}..{raw.max()}).",
            "It is not an STL-10 label file.",
        )
    return raw.astype(np.int64) - 1


def count_stl10_images(path: Path) -> int:
    """Number of images in an official ``*_X.bin`` file (from its size).

    Raises:
        DataError: if the size is not a positive multiple of one 3x96x96 image.
    """
    size = path.stat().st_size
    if size == 0 or size % IMAGE_BYTES:
        raise DataError(
            f"STL-10 file {path} has {size:,} bytes, not a whole number of 3x96x96 images "
            f"({IMAGE_BYTES:,} bytes each): it is truncated or not an STL-10 image file.",
            "Download it again.",
        )
    return size // IMAGE_BYTES


class STL10Task(OfficialFilesTask):
    """STL-10 classification (96x96, 10 classes, accuracy).

    Autoencoder split: ``unlabeled`` (100,000); probe split: ``train`` (5,000); test: ``test``
    (8,000); labels 0..9. See the module docstring for the file format and
    :mod:`embench.tasks._files` for lookup, verification, the store and the splits.

    Args:
        data_dir: a directory with ``stl10_binary/*.bin`` (or the ``.bin`` files themselves),
            searched before ``EMBENCH_HOME/datasets/stl10/``.
        verify: refuse files that fail the official md5 checksums (turn off for subsets).
        download: download the official archive (2.6 GB) when files are missing.

    Example:
        >>> task = STL10Task(data_dir="~/data")
        >>> data = task.load(home, get_preset("quick"), seed=0)
        >>> data.splits["test"].images.shape
        (8000, 3, 96, 96)
    """

    name = "stl10"
    title = "STL-10"
    image_size = IMAGE_SIZE
    native_size = IMAGE_SIZE
    tile = 1
    sources = {"autoencoder": "unlabeled", "probe": "train", "test": "test"}
    layout = "stl10_binary/{train,test,unlabeled}_X.bin and {train,test}_y.bin"
    label_mapping = "official labels 1..10 -> 0..9"
    #: STL-10's class_names.txt, in the order of the labels 1..10 (embench's 0..9).
    class_names = ("airplane", "bird", "car", "cat", "deer", "dog", "horse", "monkey", "ship",
                   "truck")

    #: Images per split at each preset, the first N rows of each official split (None: all).
    PRESET_SIZES = {
        "smoke": {"autoencoder": 64, "probe": 40, "test": 20},
        "quick": {"autoencoder": 10_000, "probe": 5_000, "test": 8_000},
        "paper": {"autoencoder": None, "probe": None, "test": None},
    }
    #: The z grid at each preset (the paper's grid last).
    Z_SIZES = {"smoke": (8,), "quick": (128,), "paper": (64, 128, 256, 512)}

    def source_files(self) -> tuple[SourceFile, ...]:
        return stl10_source_files()

    def _placement_hint(self, directory: Path) -> str:
        return (
            f"Download the archive and extract it into {directory}/ (giving "
            f"{directory}/stl10_binary/*.bin), or pass --data-dir DIR with {self.layout}."
        )

    def _download_into(self, directory: Path, missing: list[SourceFile]) -> None:
        from torchvision.datasets import STL10
        from torchvision.datasets.utils import download_and_extract_archive

        download_and_extract_archive(STL10.url, str(directory), filename=STL10.filename,
                                     md5=STL10.tgz_md5, remove_finished=True)

    def _convert(self, files: dict[str, Path], h5: h5py.File, progress: Any) -> dict[str, int]:
        by_name = {Path(relpath).name: path for relpath, path in files.items()}
        counts = {
            split: count_stl10_images(by_name[images]) for split, (images, _, _) in FILES.items()
        }
        labels = {
            split: read_stl10_labels(by_name[label_file], counts[split])
            for split, (_, label_file, _) in FILES.items() if label_file is not None
        }
        with stage(progress, "convert stl10 (once)", total=sum(counts.values())) as bar:
            for split, (images_file, _, _) in FILES.items():
                n = counts[split]
                if split in labels:
                    h5.create_dataset(f"{split}/labels", data=labels[split])
                images = h5.create_dataset(f"{split}/images", shape=(n, *IMAGE_SHAPE),
                                           dtype=np.uint8)
                path = by_name[images_file]
                with open(path, "rb") as fh:
                    for low in range(0, n, CONVERT_CHUNK_ROWS):
                        count = min(CONVERT_CHUNK_ROWS, n - low)
                        block = np.fromfile(fh, dtype=np.uint8, count=count * IMAGE_BYTES)
                        if block.size != count * IMAGE_BYTES:
                            raise DataError(f"STL-10 file {path} ended early while reading.",
                                            "It changed while being read; run again.")
                        # Planes are stored column-major: (C, W, H) -> (C, H, W).
                        images[low : low + count] = block.reshape(count, 3, IMAGE_SIZE,
                                                                  IMAGE_SIZE).transpose(0, 1, 3, 2)
                        bar.advance(count)
        return counts
