"""Table VIII: the best autoencoder of each type after decoder retraining, and its grids.

Per encoder type, the z with the lowest test L1 after decoder retraining (mean over seeds), its
L1 before and after retraining, its L1 relative to the lowest of the types shown (lowest =
100%, others = lowest / own) beside the paper's row, and how the decoder was retrained.
"""

from __future__ import annotations

from collections import defaultdict
from dataclasses import dataclass
from typing import Any

import numpy as np

from embench.board_tables import Group, as_records
from embench.paper import ENCODER_LABELS, PAPER_ENCODERS, PAPER_RECONSTRUCTION
from embench.results import RunRecord
from embench.stats import mean_ci


@dataclass
class ReconstructionRow:
    """The best autoencoder of one encoder type: its z and the records (seeds) of that cell."""

    encoder: str
    z: int
    records: list[dict[str, Any]]
    zs: tuple[int, ...] = ()  # the z sizes with reconstruction results it was chosen from

    def values(self, key: str) -> list[float]:
        """``reconstruction[key]`` of each seed that has it."""
        return [float(r.reconstruction[key]) for r in self.records
                if r.reconstruction.get(key) is not None]

    @property
    def l1_after(self) -> float:
        """Mean test L1 after decoder retraining over the seeds."""
        return float(np.mean(self.values("test_l1_after")))


def _has_reconstruction(record: RunRecord) -> bool:
    recon = record.reconstruction
    return isinstance(recon, dict) and recon.get("test_l1_after") is not None


def decoder_mode(record: RunRecord) -> str:
    """How the record's decoder was retrained: "finetune", "reinitialize" or "not recorded".

    Newer records state ``reconstruction.decoder_init``; older ones only
    ``reconstruction.retraining.reinitialized``.
    """
    recon = as_records([record])[0].reconstruction or {}
    if recon.get("decoder_init"):
        return str(recon["decoder_init"])
    reinitialized = (recon.get("retraining") or {}).get("reinitialized")
    if reinitialized is None:
        return "not recorded"
    return "reinitialize" if reinitialized else "finetune"


def best_reconstructions(group: Group) -> list[ReconstructionRow]:
    """Per encoder type with reconstruction results, the z with the lowest mean retrained L1.

    The mean is over the seeds of each (encoder, z) cell, so one lucky seed does not pick the
    z. Ties go to the smaller z. Paper encoders first, in the paper's order, then the others.
    """
    cells: dict[tuple[str, int], list[RunRecord]] = defaultdict(list)
    for r in group.records:
        if _has_reconstruction(r):
            cells[(r.encoder, r.z_dim)].append(r)
    rows = []
    for encoder in group.encoders():
        zs = tuple(z for (e, z) in sorted(cells) if e == encoder)
        candidates = [ReconstructionRow(encoder, z, cells[(encoder, z)], zs) for z in zs]
        if candidates:
            rows.append(min(candidates, key=lambda row: (row.l1_after, row.z)))
    return rows


_MODE_TEXT = {"finetune": "fine-tuned from the trained decoder (`finetune`)",
              "reinitialize": "re-initialised and trained from scratch (`reinitialize`)",
              "not recorded": "not recorded"}


def _epochs_text(records: list[RunRecord]) -> str:
    epochs = sorted({r.reconstruction["decoder_epochs"] for r in records
                     if r.reconstruction.get("decoder_epochs") is not None})
    if not epochs:
        return "epochs not recorded"
    return f"at most {' / '.join(map(str, epochs))} epochs"


def _fmt_l1(values: list[float]) -> str:
    if not values:
        return "–"
    mean, ci = mean_ci(values)
    return f"{mean:.4f}" + (f" ± {ci:.4f}" if ci is not None else "")


def render_reconstruction_table(group: Group) -> str | None:
    """Table VIII for one group: the best autoencoder of each type after decoder retraining.

    Args:
        group: the records of one task under one protocol.

    Returns:
        The markdown block (heading, table, notes on "best" and on the decoder retraining), or
        ``None`` when no record of the group has reconstruction results.

    Example:
        >>> render_reconstruction_table(group_records(records)[0])  # doctest: +SKIP
    """
    rows = best_reconstructions(group)
    if not rows:
        return None
    lowest = min(row.l1_after for row in rows)
    paper = PAPER_RECONSTRUCTION.get(group.task)
    recon_records = [r for r in group.records if _has_reconstruction(r)]
    modes = sorted({decoder_mode(r) for r in recon_records})
    epochs = {r.reconstruction.get("decoder_epochs") for r in recon_records}
    per_row = len(modes) > 1 or len(epochs) > 1
    header = ["Encoder", "best z", "seeds", "test L1 after retraining", "test L1 before",
              "relative (ours)"]
    if paper:
        header.append("relative (paper)")
    if per_row:
        header.append("decoder retraining")
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    for row in rows:
        relative = f"{100 * lowest / row.l1_after:.0f}%" if row.l1_after > 0 else "–"
        if row.l1_after == lowest:
            relative = f"**{relative}**"
        cells = [ENCODER_LABELS.get(row.encoder, row.encoder),
                 f"{row.z} (of {', '.join(map(str, row.zs))})",
                 str(len(row.records)), _fmt_l1(row.values("test_l1_after")),
                 _fmt_l1(row.values("test_l1_before")), relative]
        if paper:
            ref = paper.get(row.encoder)
            cells.append(f"{100 * ref:.0f}%" if ref is not None else "–")
        if per_row:
            row_modes = " / ".join(sorted({decoder_mode(r) for r in row.records}))
            cells.append(f"{row_modes}, {_epochs_text(row.records)}")
        lines.append("| " + " | ".join(cells) + " |")
    notes = ["Best: for each encoder type, the z whose test L1 after decoder retraining is "
             "lowest, averaged over seeds (mean over each (encoder, z) cell's seeds; ± 95% CI "
             "when there are several). Relative: the lowest L1 of the types shown is 100%, "
             "the others lowest / own, as in the paper"]
    if paper:
        shown = {row.encoder for row in rows}
        notes[0] += ("; the paper's column is relative to the lowest of its four autoencoders"
                     + ("" if shown == set(PAPER_ENCODERS) else
                        ", ours to the types shown here, so they differ in reference"))
    notes[0] += "."
    if len(modes) > 1:
        notes.append(f"Decoder retraining mixes modes in this group ({', '.join(modes)}): the "
                     "mode of each row is in its last column.")
    elif len(epochs) > 1:
        notes.append(f"Decoder retraining: {_MODE_TEXT.get(modes[0], modes[0])}; the budget "
                     "of epochs varies, see each row's last column.")
    else:
        notes.append(f"Decoder retraining: {_MODE_TEXT.get(modes[0], modes[0])}, "
                     f"{_epochs_text(recon_records)}, pixel MSE on frozen embeddings.")
    title = ("**Table VIII: test L1 reconstruction error (lower is better) of the best "
             "autoencoder of each type after retraining its decoder**")
    return "\n".join([title, "", *lines, "", " ".join(notes)])


def _recon_links(group: Group) -> list[str]:
    links = []
    for r in sorted(group.records, key=lambda r: (r.encoder, r.z_dim, r.seed)):
        grid = (r.reconstruction or {}).get("grid")
        if grid:
            link = f"results/{r.task}/{grid}"
            links.append(f"[{r.encoder} z={r.z_dim} seed {r.seed}]({link})")
    return links
