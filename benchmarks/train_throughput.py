"""Training throughput (img/s) of ae, vae, p_ae and p_vae: embench against the textbook loop.

For each encoder and image size, two ways to take one optimizer step on a batch of 512:

* **embench**: what ``FourLayerCVAEEncoder.fit`` runs (the encoder's own loss, uint8 data held
  on the device, batched by index and converted to float per batch, the network and the
  perceptual one channels-last, the 1x1 decoder seed's transposed convolution as one matrix
  product, perceptual targets p(x) computed once before training and read per batch
  (0.5.0), fp32 or bf16 autocast, ``fit_module``), one ``fit_module`` epoch of exactly one
  batch per call with the model and optimizer kept across calls; the img/s is the figure
  ``fit_module`` records (training pass only).
* **0.4.0** (perceptual encoders): the same step with p(x) recomputed from the batch at every
  step, as embench 0.4.0 did; the difference is the per-image cost of the target.
* **compiled** (``--compiled``, fp32): the embench step with its loss function (network,
  p(reconstruction) and the loss) under ``torch.compile``, and the loss's relative difference
  from the eager one on the same batch and weights. Not what ``fit`` runs: compiling changes
  the rounding, so adopting it needs a new ``ARTIFACT_VERSION`` (and a board run again).
  Compiling takes about a minute per model before the warm-up; use ``--rounds`` 3 or more so
  that the median skips a round that recompiled.
* **baseline**: the straightforward PyTorch loop for the same model and loss: the network
  built the plain way (``FourLayerCVAE(textbook=True)``: NCHW, ``nn.ConvTranspose2d``; same
  initial weights and function), float32 ``TensorDataset`` + ``DataLoader(shuffle=True)``,
  eager fp32, ``loss.item()`` every step.

One warm-up step per configuration, then ``--rounds`` rounds each time one step of every
configuration, rotating the order every round (load from other processes hits all alike).
FLOPs of one step (forward + backward) are counted with ``torch.utils.flop_counter`` and turned
into GFLOP/s against a matmul peak measured in the same rounds. Perceptual networks use random
AlexNet weights (same cost as ImageNet weights, no download).

bf16: on CPUs without AVX512-BF16/AMX torch *emulates* bf16 convolutions, about 10-25x slower
than fp32. There it is measured with ``--bf16-steps`` (default 1) steps at ``--bf16-batch``
(default 32) without warm-up, and the table says so.

Usage:
    python benchmarks/train_throughput.py --quick            # ae, p_ae at 64 px (make bench)
    python benchmarks/train_throughput.py                    # the issue's full matrix
    python benchmarks/train_throughput.py --device cuda --models ae,p_ae,vae,p_vae
    python benchmarks/train_throughput.py --models ae,p_vae --sizes 64 --precisions fp32 \
        --compiled --rounds 5                                # the compiled-graph lever
"""

from __future__ import annotations

import argparse
import contextlib
import sys
import tempfile
import warnings
from pathlib import Path

import numpy as np
import torch
import torch.nn.functional as F
import torchvision
from benchlib import (
    MatmulPeak,
    Row,
    fmt,
    interleave,
    machine_note,
    median,
    print_table,
    resolve_device,
)
from benchlib import synchronize as sync
from torch import nn
from torch.utils.data import DataLoader, TensorDataset
from torch.utils.flop_counter import FlopCounterMode

from embench.encoders.autoencoder import (
    AE,
    RESIDENT_BYTES,
    VAE,
    FourLayerCVAE,
    PerceptualAE,
    PerceptualVAE,
    _images_on_device,
    _perceptual_targets,
    _take,
    _TrainingImages,
)
from embench.training import bf16_is_native, fit_module

ENCODERS = {"ae": AE, "vae": VAE, "p_ae": PerceptualAE, "p_vae": PerceptualVAE}
Z_DIM = 64
KLD_WEIGHT = 0.01
TARGET_SPEEDUP = 2.0
TARGET_OVERHEAD = 1.4


class StraightforwardLoop:
    """The textbook training loop for one encoder's model and loss (fp32, eager)."""

    def __init__(self, name: str, images: np.ndarray, batch_size: int, device: str) -> None:
        cls = ENCODERS[name]
        self.variational, self.device = cls.variational, device
        torch.manual_seed(0)
        # The same network written the plain way (NCHW, nn.ConvTranspose2d throughout).
        self.model = FourLayerCVAE(Z_DIM, images.shape[-1], textbook=True).to(device).train()
        self.pnet = None
        if cls.perceptual:
            features = torchvision.models.alexnet(weights=None).features[:5]
            self.pnet = nn.Sequential(features, nn.Sigmoid()).to(device).eval()
            for p in self.pnet.parameters():
                p.requires_grad_(False)
        dataset = TensorDataset(torch.from_numpy(images).float() / 255.0)
        self.loader = DataLoader(dataset, batch_size=batch_size, shuffle=True)
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.batches = iter(())

    def loss(self, x: torch.Tensor) -> torch.Tensor:
        recon, mu, logvar = self.model(x, sample=self.variational)
        if self.pnet is None:
            loss = F.mse_loss(recon, x)
        else:
            loss = F.mse_loss(self.pnet(recon), self.pnet(x))
        if self.variational:
            loss = loss - KLD_WEIGHT * torch.mean(1 + logvar - mu.pow(2) - logvar.exp())
        return loss

    def step(self) -> None:
        batch = next(self.batches, None)
        if batch is None:
            self.batches = iter(self.loader)
            batch = next(self.batches)
        x = batch[0].to(self.device)
        loss = self.loss(x)
        self.optimizer.zero_grad()
        loss.backward()
        self.optimizer.step()
        loss.item()  # the textbook loop logs every step's loss (and so syncs the GPU)
        sync(self.device)

    def count_flops(self) -> int:
        """FLOPs of one forward + backward (the same for embench's path: same model and loss)."""
        x = next(iter(self.loader))[0].to(self.device)
        with FlopCounterMode(display=False) as counter:
            self.loss(x).backward()
        self.optimizer.zero_grad()
        return counter.get_total_flops()


def _loss_drift(eager: EmbenchStep, compiled: EmbenchStep) -> float:
    """|compiled − eager| / |eager| of the loss on the same batch and the same initial weights.

    Both steps build their network from the same seed; the deterministic (validation) form of
    the loss is compared, before either has trained. Compiling fuses and reorders operations,
    so the rounding differs: a compiled fit would need a new ``ARTIFACT_VERSION``.
    """
    batch = slice(0, min(64, len(eager.train)))
    with torch.no_grad():
        a, b = (float(step.loss(_take(step.train, batch), False, step._target(batch)))
                for step in (eager, compiled))
    return abs(b - a) / abs(a)


class EmbenchStep:
    """One call = one ``fit_module`` epoch over exactly one batch = one embench training step.

    Built from the same pieces, in the same order, as ``FourLayerCVAEEncoder.fit`` (its
    ``_make_loss``, the uint8 split held on the device and batched with ``_take``, ``Adam``,
    ``fit_module``), but the model and optimizer persist across calls, so each call times a
    steady-state step as in a long training run (a fresh ``fit`` pays first-step costs). Returns
    the training-pass seconds ``fit_module`` itself measured (the figure ``fit`` records).
    """

    def __init__(self, name: str, images: np.ndarray, precision: str, device: str,
                 home: Path, cached_targets: bool = True, compiled: bool = False) -> None:
        cls = ENCODERS[name]
        extra = {"perceptual_weights": "random"} if cls.perceptual else {}
        encoder = cls(z_dim=Z_DIM, batch_size=len(images), device=device, precision=precision,
                      home=home, **extra)
        encoder._validate_params()
        self.device, self.precision = torch.device(device), precision
        self.variational = cls.variational
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(0)
            self.model = FourLayerCVAE(Z_DIM, images.shape[-1]).to(self.device)
        pnet = encoder._build_perceptual(self.device, None)[0] if cls.perceptual else None
        noise = torch.Generator(device=self.device).manual_seed(1)
        self.loss = encoder._make_loss(self.model, pnet, noise)
        if compiled:  # the whole loss (network, p(recon), the loss) as one compiled graph
            self.loss = torch.compile(self.loss)
        self.train = _images_on_device(images, self.device)
        self.val = self.train[:8]
        self.optimizer = torch.optim.Adam(self.model.parameters(), lr=1e-3)
        self.calls = 0
        self.targets = None
        if pnet is not None and cached_targets:  # what fit does: p(x) once, before epoch 1
            self._files = contextlib.ExitStack()
            split = _TrainingImages(images, self.device, RESIDENT_BYTES)
            path = home / f"targets-{name}-{precision}-{len(images)}.h5"
            self.targets = _perceptual_targets(pnet, {"train": split}, self.device, precision,
                                               path, self._files)["train"]

    def _target(self, batch: torch.Tensor | slice) -> torch.Tensor | None:
        return None if self.targets is None else self.targets.take(batch)

    def step(self) -> float:
        self.calls += 1
        with warnings.catch_warnings():  # fit_module warns that emulated bf16 is slow: we know
            warnings.simplefilter("ignore", RuntimeWarning)
            result = fit_module(
                self.model,
                lambda batch: self.loss(_take(self.train, batch), self.variational,
                                        self._target(batch)),
                lambda batch: self.loss(_take(self.val, batch), False, self._target(batch)),
                n_train=len(self.train), n_val=len(self.val), optimizer=self.optimizer,
                batch_size=len(self.train), max_epochs=1, seed=self.calls, device=self.device,
                precision=self.precision,
            )
        return len(self.train) / result.images_per_second


def main() -> int:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("--quick", action="store_true",
                        help="ae and p_ae at 64 px, 2 rounds (what make bench runs)")
    parser.add_argument("--device", default="auto", help="cpu, cuda or auto (default)")
    parser.add_argument("--models", default=None, help="comma-separated (default: all four)")
    parser.add_argument("--sizes", default=None, help="comma-separated pixels (default: 64,96)")
    parser.add_argument("--precisions", default="fp32,bf16")
    parser.add_argument("--batch-size", type=int, default=512)
    parser.add_argument("--rounds", type=int, default=None, help="timed rounds (default 3)")
    parser.add_argument("--bf16-batch", type=int, default=None,
                        help="bf16 batch (default: --batch-size where bf16 is native, else 32)")
    parser.add_argument("--bf16-steps", type=int, default=None,
                        help="timed bf16 steps (default: --rounds where native, else 1)")
    parser.add_argument("--threads", type=int, default=None, help="torch.set_num_threads")
    parser.add_argument("--compiled", action="store_true",
                        help="also time the fp32 step with its loss under torch.compile "
                             "(minutes of compiling first; not what fit runs)")
    args = parser.parse_args()
    if args.threads:
        torch.set_num_threads(args.threads)
    device = resolve_device(args.device)
    models = (args.models or ("ae,p_ae" if args.quick else "ae,vae,p_ae,p_vae")).split(",")
    sizes = [int(s) for s in (args.sizes or ("64" if args.quick else "64,96")).split(",")]
    precisions = args.precisions.split(",")
    rounds = args.rounds or (2 if args.quick else 3)
    native = bf16_is_native(torch.device(device))
    bf16_batch = args.bf16_batch or (args.batch_size if native else 32)
    bf16_steps = args.bf16_steps or (rounds if native else 1)
    unknown = [m for m in models if m not in ENCODERS]
    if unknown:
        parser.error(f"unknown models {unknown}; choose from {list(ENCODERS)}")

    print(f"train_throughput: {machine_note(device)}", flush=True)
    print(f"models {models}, sizes {sizes}, batch {args.batch_size}, rounds {rounds}, "
          f"precisions {precisions} (bf16 {'native' if native else 'EMULATED'}: batch "
          f"{bf16_batch}, {bf16_steps} step(s))", flush=True)
    rng = np.random.default_rng(0)
    scratch = tempfile.TemporaryDirectory(prefix="embench-bench-")
    home = Path(scratch.name)
    big = 8192 if device.startswith("cuda") else 2048
    peaks = {"fp32": MatmulPeak(device, torch.float32, big)}
    if "bf16" in precisions:
        peaks["bf16"] = MatmulPeak(device, torch.bfloat16, big if native else 512)

    fp32_steps: dict[str, object] = {}
    flops: dict[tuple[str, int], int] = {}
    drift: dict[tuple[str, int], float] = {}
    for size in sizes:
        images = rng.integers(0, 256, (args.batch_size, 3, size, size), dtype=np.uint8)
        for name in models:
            baseline = StraightforwardLoop(name, images, args.batch_size, device)
            flops[name, size] = baseline.count_flops()
            fp32_steps[f"{name} {size} baseline"] = baseline.step
            if "fp32" in precisions:
                fp32_steps[f"{name} {size} fp32"] = EmbenchStep(name, images, "fp32", device,
                                                               home).step
                if ENCODERS[name].perceptual:  # 0.4.0's step: p(x) recomputed every step
                    fp32_steps[f"{name} {size} 0.4.0"] = EmbenchStep(
                        name, images, "fp32", device, home, cached_targets=False).step
                if args.compiled:
                    eager = EmbenchStep(name, images, "fp32", device, home)
                    compiled = EmbenchStep(name, images, "fp32", device, home, compiled=True)
                    print(f"compiling {name} {size}px ...", flush=True)
                    drift[name, size] = _loss_drift(eager, compiled)
                    fp32_steps[f"{name} {size} compiled"] = compiled.step
    print(f"warm-up: one step of each of {len(fp32_steps)} configurations ...", flush=True)
    for step in fp32_steps.values():
        step()

    def report(index: int, seconds: dict[str, float]) -> None:
        for peak in peaks.values():
            peak.measure()
        print(f"round {index + 1}/{rounds}: " + ", ".join(
            f"{k} {v:.2f}s" for k, v in seconds.items()), flush=True)

    times = interleave(fp32_steps, rounds, on_round=report)

    if "bf16" in precisions:
        for size in sizes:
            images = rng.integers(0, 256, (bf16_batch, 3, size, size), dtype=np.uint8)
            bf16 = {f"{name} {size} bf16": EmbenchStep(name, images, "bf16", device, home).step
                    for name in models}
            if native:
                for step in bf16.values():
                    step()
            print(f"bf16 at {size} px: {bf16_steps} step(s) of batch {bf16_batch} each ...",
                  flush=True)
            times.update(interleave(bf16, bf16_steps))
            peaks["bf16"].measure()

    def rate(key: str, batch: int) -> float:
        return batch / median(times[key]) if key in times else float("nan")

    rows: list[Row] = []
    fp32_peak = peaks["fp32"].peak
    rows.append(Row(f"matmul peak fp32 ({big}x{big})", "-", fmt(fp32_peak, "GFLOP/s")))
    if "bf16" in peaks:
        rows.append(Row(f"matmul peak bf16 ({'native' if native else 'emulated'})", "-",
                        fmt(peaks["bf16"].peak, "GFLOP/s")))
    for size in sizes:
        for name in models:
            base = rate(f"{name} {size} baseline", args.batch_size)
            best = float("nan")
            for precision in precisions:
                batch = args.batch_size if precision == "fp32" else bf16_batch
                got = rate(f"{name} {size} {precision}", batch)
                best = got if np.isnan(best) else max(best, got)
                label = f"{name} {size}px {precision} img/s"
                if precision == "bf16" and not native:
                    label += f" (EMULATED, batch {bf16_batch})"
                rows.append(Row(label, fmt(base, "img/s"), fmt(got, "img/s"), got / base))
            if size == 64 and name in ("ae", "p_ae"):
                rows.append(Row(f"{name} {size}px best recorded precision vs textbook",
                                fmt(base, "img/s"), fmt(best, "img/s"), best / base,
                                f">= {TARGET_SPEEDUP:g}x", best / base >= TARGET_SPEEDUP))
            if f"{name} {size} compiled" in times:
                eager, fast = (rate(f"{name} {size} {path}", args.batch_size)
                               for path in ("fp32", "compiled"))
                rows.append(Row(f"{name} {size}px fp32 img/s: torch.compile vs eager (loss "
                                f"rel. diff {drift[name, size]:.1e})",
                                fmt(eager, "img/s"), fmt(fast, "img/s"), fast / eager))
            old = f"{name} {size} 0.4.0"
            if old in times:
                before, now = rate(old, args.batch_size), rate(f"{name} {size} fp32",
                                                              args.batch_size)
                rows.append(Row(f"{name} {size}px fp32 img/s: 0.5.0 (p(x) cached) vs 0.4.0",
                                fmt(before, "img/s"), fmt(now, "img/s"), now / before))
            # The textbook step's FLOPs: the same network and loss, p(x) recomputed each step.
            step_flops = flops[name, size]
            achieved = {
                path: step_flops / median(times[f"{name} {size} {path}"]) / 1e9
                for path in ("baseline", "0.4.0", "fp32") if f"{name} {size} {path}" in times
            }
            for path in ("0.4.0", "fp32"):
                if path in achieved:
                    rows.append(Row(
                        f"{name} {size}px {'0.4.0 step' if path == '0.4.0' else 'fp32'} "
                        f"effective GFLOP/s ({step_flops / 1e9:.0f} GFLOP/step; % of peak)",
                        f"{fmt(achieved['baseline'])} "
                        f"({100 * achieved['baseline'] / fp32_peak:.0f}%)",
                        f"{fmt(achieved[path])} ({100 * achieved[path] / fp32_peak:.0f}%)",
                        achieved[path] / achieved["baseline"]))
        for plain, perceptual in (("ae", "p_ae"), ("vae", "p_vae")):
            if plain in models and perceptual in models:
                ratios = {
                    path: median(times[f"{perceptual} {size} {path}"])
                    / median(times[f"{plain} {size} {path}"])
                    for path in ("baseline", "fp32") if f"{plain} {size} {path}" in times
                }
                if f"{perceptual} {size} 0.4.0" in times and f"{plain} {size} fp32" in times:
                    base_ms = median(times[f"{plain} {size} fp32"]) / args.batch_size * 1e3
                    cost = {path: median(times[f"{perceptual} {size} {path}"])
                            / args.batch_size * 1e3 - base_ms for path in ("0.4.0", "fp32")}
                    rows.append(Row(
                        f"perceptual cost per image {size}px ({perceptual} - {plain}, ms; "
                        "without vs with the p(x) cache)",
                        f"{cost['0.4.0']:.3f} ms", f"{cost['fp32']:.3f} ms",
                        cost["0.4.0"] / cost["fp32"] if cost["fp32"] > 0 else None))
                target = size == 64 and plain == "ae"
                overhead = ratios.get("fp32", float("nan"))
                rows.append(Row(
                    f"{perceptual}/{plain} time per step {size}px (fp32; lower is better)",
                    fmt(ratios.get("baseline")), fmt(overhead), None,
                    f"<= {TARGET_OVERHEAD:g}" if target else "-",
                    overhead <= TARGET_OVERHEAD if target else None))
    notes = [
        "ratio = embench img/s / textbook img/s (both fp32 batch "
        f"{args.batch_size} unless the row says otherwise); medians of {rounds} interleaved "
        "rounds after one warm-up step",
        "embench img/s is what fit_module records for its training pass; the textbook "
        "loop is timed around its step, DataLoader collate included",
        "perceptual overhead is per training step; an epoch adds a forward-only validation "
        "pass over 20% as many images (its p(x) cached too since 0.5.0)",
        "0.4.0 rows: today's step with p(x) recomputed every step, as 0.4.0 did; effective "
        "GFLOP/s divides the textbook step's FLOPs (p(x) included) by each path's time",
    ]
    if "bf16" in precisions and not native:
        notes.append(f"bf16 is EMULATED on this {device.upper()} (no AVX512-BF16/AMX): "
                     f"{bf16_steps} step(s) of batch {bf16_batch}, no warm-up; fp32 is the "
                     "precision to record here")
    print_table(f"training throughput on {device}", rows, notes)
    scratch.cleanup()
    return 0


if __name__ == "__main__":
    sys.exit(main())
