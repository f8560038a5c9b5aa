"""embench measures how useful an image encoder's embeddings are.

Trains (or loads) an encoder on a task's unlabeled split, embeds every image once into an HDF5
cache, searches small probes on the embeddings and writes a result record per run.

From Python: ``embench.evaluate(encoder, task, preset=...)`` runs what ``embench run`` runs and
returns its record; ``embench.TorchEncoder`` turns a torch module into an encoder. Both are
imported on first use, so ``import embench`` stays cheap (it does not import torch).
"""

from __future__ import annotations

import importlib
from typing import TYPE_CHECKING, Any

__version__ = "0.5.0"

__all__ = ["TorchEncoder", "__version__", "evaluate"]

#: Public names and the module that defines them, imported when first asked for.
_LAZY = {"evaluate": "embench.api", "TorchEncoder": "embench.api"}

if TYPE_CHECKING:
    from embench.api import TorchEncoder, evaluate


def __getattr__(name: str) -> Any:
    """Import ``evaluate`` and ``TorchEncoder`` on first access (PEP 562)."""
    if name in _LAZY:
        value = getattr(importlib.import_module(_LAZY[name]), name)
        globals()[name] = value
        return value
    raise AttributeError(f"module 'embench' has no attribute {name!r}")


def __dir__() -> list[str]:
    return sorted({*globals(), *_LAZY})
