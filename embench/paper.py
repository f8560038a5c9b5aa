"""The paper's own numbers and names, shipped as data (``embench/paper.json``).

Pihlgren, Sandin and Liwicki's Tables II-VIII, the paper's encoders in its column order, and
the names the board and ``embench compare`` give encoders. The board prints these beside its
own results; ``embench reproduce`` runs the paper's encoders by default.
"""

from __future__ import annotations

import json
from importlib import resources
from typing import Any


def _read_paper() -> dict[str, Any]:
    """The paper's numbers, shipped as data (``embench/paper.json``), keyed by task and encoder."""
    return json.loads(resources.files("embench").joinpath("paper.json").read_text("utf-8"))


_PAPER_DATA = _read_paper()
#: The paper's Tables II-VII: PAPER[task][probe][encoder][z] (LunarLander in px, others as
#: accuracy fractions).
PAPER: dict[str, dict[str, dict[str, dict[int, float]]]] = {
    task: {probe: {encoder: {int(z): float(v) for z, v in numbers[probe].items()}
                   for encoder, numbers in encoders.items() if probe in numbers}
           for probe in ("mlp", "linear")}
    for task, encoders in _PAPER_DATA["results"].items()
}
#: The paper's Table VIII: PAPER_RECONSTRUCTION[task][encoder] = test L1 of the best autoencoder
#: of that type after decoder retraining, relative to the lowest of the four (lowest / own).
PAPER_RECONSTRUCTION: dict[str, dict[str, float]] = {
    task: {encoder: float(numbers["reconstruction"]) for encoder, numbers in encoders.items()
           if "reconstruction" in numbers}
    for task, encoders in _PAPER_DATA["results"].items()
}
#: The paper's encoders, in its column order.
PAPER_ENCODERS: tuple[str, ...] = tuple(_PAPER_DATA["encoders"])
#: How the board names encoders (others keep their registered name).
ENCODER_LABELS: dict[str, str] = dict(_PAPER_DATA["encoder_labels"])


def paper_encoders() -> tuple[str, ...]:
    """The paper's encoders in its column order (what ``embench reproduce`` runs by default)."""
    return PAPER_ENCODERS


def encoder_label(encoder: str) -> str:
    """How the board and the comparison name an encoder ("P. AE" for ``p_ae``)."""
    return ENCODER_LABELS.get(encoder, encoder)
