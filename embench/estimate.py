"""What a run will do and roughly how long it will take here, said before it starts.

:func:`plan_run` looks at what is already stored (data, checkpoint, embeddings, a finished
record) to list the stages a :func:`embench.runner.run` will compute or reuse, and times a few
training steps of the encoder on random images to estimate each stage on this machine.
Nothing it does is kept: the probe trains a throwaway copy of the encoder on random images,
with random perceptual-network weights (same cost, nothing to download), and leaves the
global random number generators as it found them.

The rates that a probe cannot measure cheaply are constants measured on this project's 2-core
CPU (AMD EPYC, no other load) with the ``quick`` preset, ``p_vae`` at z=64, where one run took:
data 69 s (45,000 frames), training 663 s (15 epochs of 14,400 images, 43 s each), embedding
13 s, probe search 68 s (300 epochs on 15,555 embeddings), decoder retraining 120 s (5 epochs).
The estimate is rough by design (early stopping often ends training sooner); its point is
"two minutes" versus "a quarter of an hour" versus "overnight".

Example:
    >>> plan = plan_run(RunConfig(encoder="pca", task="lunarlander", preset="smoke"))
    >>> for line in format_plan(plan):  # doctest: +SKIP
    ...     print(line)
"""

from __future__ import annotations

import dataclasses
import json
import time
import warnings
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embench.cache import cache_path, embedding_key
from embench.devices import resolve_precision
from embench.presets import Preset, task_sizes
from embench.progress import format_seconds
from embench.registry import accepts_keyword, get_plugin, load_task
from embench.runner import (
    EncoderSetup,
    RunConfig,
    build_encoder,
    check_run_config,
    reconstruction_key,
    training_key,
)
from embench.storage import safe_name
from embench.workers import usable_cpus

#: LunarLander frames generated per second by each worker process (45,000 frames in 69 s with
#: 2 workers), plus the seconds it takes to start the worker pool.
DATA_FRAMES_PER_SECOND_PER_WORKER = 326.0
DATA_START_SECONDS = 3.0
#: Fraction of an altered rollout's frames kept (the lander on screen; the quick preset keeps
#: 89.5%).
ALTERED_KEPT = 0.895
#: Probe search seconds per (probe-train embedding x epoch): 68 s / (300 x 15,555), for the
#: linear probe and 18 MLPs together, plus a fixed start-up cost.
PROBE_SECONDS_PER_SAMPLE_EPOCH = 68.0 / (300 * 15_555)
PROBE_START_SECONDS = 1.0
#: A decoder-retraining epoch over a training epoch of the encoder (24 s / 43 s for p_vae).
DECODER_EPOCH_RATIO = 0.56
#: A validation image costs about this fraction of a training image (forward pass only).
VALIDATION_COST = 1 / 3
#: The throughput probe: this many training steps at the run's batch size (small batches
#: understate a CPU's speed up to 4x), fewer when the run's training split is smaller; an
#: encoder that does not train is fitted on this many images; this many images are encoded.
PROBE_STEPS = 2
PROBE_FIT_IMAGES = 512
PROBE_ENCODE_IMAGES = 256
#: Set this environment variable to ``0`` to skip the probe (``embench run --no-estimate``).
ESTIMATE_ENV = "EMBENCH_ESTIMATE"


@dataclass
class PlannedStage:
    """One stage of a run as planned.

    Attributes:
        name: ``data``, ``encoder``, ``embedding``, ``probe search`` or ``decoder``.
        action: what it will do, in words (``generate 10 rollouts (1,500 frames)``).
        seconds: the estimate; ``None`` when unknown; 0 for a stage whose result is reused.
        reused: its output is stored already.
    """

    name: str
    action: str
    seconds: float | None = None
    reused: bool = False


@dataclass
class Throughput:
    """What the probe measured: training (or fitting) and encoding speed on this machine."""

    train_images_per_second: float | None
    fit_seconds_per_image: float | None
    encode_images_per_second: float
    probe_seconds: float
    description: str


@dataclass
class RunPlan:
    """The stages of one run, what is reused, and the estimate.

    Attributes:
        title: the run in one line (encoder, task, preset, z, seed, device, precision).
        stages: every stage in order.
        finished: the run's record exists: nothing will be computed.
        record: that record's path, when ``finished``.
        throughput: the probe's measurements (``None`` when skipped or impossible).
        note: why there is no estimate, when there is none.
    """

    title: str
    stages: list[PlannedStage] = field(default_factory=list)
    finished: bool = False
    record: Path | None = None
    throughput: Throughput | None = None
    note: str | None = None

    @property
    def total_seconds(self) -> float | None:
        """The sum of the stages' estimates; ``None`` if any stage to compute has none."""
        todo = [s.seconds for s in self.stages if not s.reused]
        if any(s is None for s in todo):
            return None
        return float(sum(todo))  # type: ignore[arg-type]


@dataclass
class _Sizes:
    """How many images each stage handles (estimated from the preset before any data exists)."""

    autoencoder_train: int
    autoencoder_val: int
    probe_train: int
    embedded: int
    frames: int | None = None
    rollouts: int | None = None


def _expected_sizes(task: Any, preset: Preset) -> _Sizes | None:
    """Split sizes from the task's sizes at ``preset`` (rollout tasks and fixed-count tasks)."""
    sizes = task_sizes(task, preset)
    if all(isinstance(sizes.get(k), int) for k in ("unaltered_rollouts", "altered_rollouts",
                                                   "frames")):
        frames = int(sizes["frames"])
        unaltered = int(sizes["unaltered_rollouts"]) * frames
        kept = int(int(sizes["altered_rollouts"]) * frames * ALTERED_KEPT)
        rollouts = int(sizes["unaltered_rollouts"]) + int(sizes["altered_rollouts"])
        return _Sizes(int(0.8 * unaltered), unaltered - int(0.8 * unaltered),
                      int(0.64 * kept), unaltered + kept, rollouts * frames, rollouts)
    if all(isinstance(sizes.get(k), int) for k in ("autoencoder", "probe", "test")):
        n_ae, n_probe = int(sizes["autoencoder"]), int(sizes["probe"])
        return _Sizes(int(0.8 * n_ae), n_ae - int(0.8 * n_ae), int(0.8 * n_probe),
                      n_ae + n_probe + int(sizes["test"]))
    return None  # the full official splits, or sizes this module cannot read


def _stored_data(home: Path, task: Any, preset: Preset, seed: int) -> str | None:
    """The fingerprint of a complete data store made with these sizes and seed, if any."""
    import h5py

    sizes = task_sizes(task, preset)
    name = str(getattr(task, "name", ""))
    if not sizes or not name:
        return None
    for path in sorted((home / "datasets" / safe_name(name, "task name")).glob("*.h5")):
        try:
            with h5py.File(path, "r") as h5:
                if not h5.attrs.get("complete") or "params" not in h5.attrs:
                    continue
                params = json.loads(h5.attrs["params"])
                if params.get("seed") == seed and all(params.get(k) == v
                                                      for k, v in sizes.items()):
                    return str(h5.attrs["fingerprint"])
        except (OSError, KeyError, ValueError):
            continue
    return None


def _finished_record(home: Path, task_name: str, setup: EncoderSetup, config: RunConfig,
                     preset: Preset, train_key: str, device: str) -> Path | None:
    """A stored record of this very run (same trained encoder, budgets, seed, evaluation)."""
    pattern = f"{safe_name(setup.name, 'encoder name')}-z{setup.z}-seed{config.seed}-" \
              f"{preset.name}-*.json"
    for path in sorted((home / "results" / safe_name(task_name, "task name")).glob(pattern)):
        try:
            record = json.loads(path.read_text())
        except (OSError, ValueError):
            continue
        if (record.get("fingerprints", {}).get("train") == train_key
                and record.get("preset_config") == preset.to_dict()
                and record.get("evaluation_config", {}) == setup.evaluation
                and record.get("device") == device
                and record.get("precision") == config.precision):
            return path
    return None


def _probe_options(config: RunConfig, setup: EncoderSetup) -> dict[str, Any]:
    """Encoder options for the probe: one short epoch, and no perceptual weights to fetch."""
    options = dict(config.encoder_options)
    if "max_epochs" in setup.given:
        options["max_epochs"] = 1
    if getattr(setup.encoder, "perceptual_weights", None) == "imagenet":
        options["perceptual_weights"] = "random"  # the same network and cost, no download
    return options


def measure_throughput(config: RunConfig, setup: EncoderSetup, preset: Preset, home: Path,
                       device: str, task: Any, train_images: int | None = None) -> Throughput:
    """Time a few training steps and one encoding batch of a throwaway encoder.

    The encoder is built like the run's (same factory, z, batch size, options) and fed random
    images of the task's size. A trainable encoder (one that takes ``max_epochs``) trains for
    ``PROBE_STEPS`` batches (no more than ``train_images``, the run's training split); any
    other is fitted once on ``PROBE_FIT_IMAGES`` images (or ``train_images``).

    Raises:
        Exception: whatever the encoder raises (the caller turns it into "no estimate").
    """
    import torch

    probe_config = dataclasses.replace(config, encoder_options=_probe_options(config, setup))
    start = time.perf_counter()
    size = int(getattr(task, "image_size", 64) or 64)
    trainable = "max_epochs" in setup.given
    batch = int(setup.given.get("batch_size") or preset.batch_size)
    n_train = PROBE_STEPS * batch if trainable else PROBE_FIT_IMAGES
    if train_images:
        n_train = min(n_train, train_images)
    n_train = max(n_train, 2 * setup.z)  # PCA-like encoders need more images than components
    images = np.random.default_rng(0).integers(0, 256, (n_train, 3, size, size), np.uint8)
    val = images[: max(batch // 2, 1)]
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings():
        warnings.simplefilter("ignore")
        encoder = build_encoder(probe_config, preset, home, device, task).encoder
        fit_start = time.perf_counter()
        fitted = encoder.fit(images, val)
        encoder = fitted if fitted is not None else encoder
        fit_seconds = time.perf_counter() - fit_start
        n_encode = min(PROBE_ENCODE_IMAGES, n_train)
        encode_start = time.perf_counter()
        encoder.encode(images[:n_encode])
        encode_seconds = max(time.perf_counter() - encode_start, 1e-6)
    stats = encoder.training_stats() if callable(getattr(encoder, "training_stats",
                                                         None)) else {}
    train_ips = None
    if trainable:
        train_ips = float(stats.get("images_per_second") or 0) or n_train / fit_seconds
    steps = -(-n_train // batch)
    described = (f"training {train_ips:.0f} img/s over {steps} step(s) of batch "
                 f"{min(batch, n_train)} on random images" if trainable
                 else f"fit on {n_train} random images in {format_seconds(fit_seconds)}")
    probe_seconds = time.perf_counter() - start
    return Throughput(
        train_images_per_second=train_ips,
        fit_seconds_per_image=None if trainable else fit_seconds / n_train,
        encode_images_per_second=n_encode / encode_seconds,
        probe_seconds=probe_seconds,
        description=f"{described}, encoding {n_encode / encode_seconds:.0f} img/s; probe took "
                    f"{format_seconds(probe_seconds)}",
    )


def plan_run(config: RunConfig, *, measure: bool = True) -> RunPlan:
    """List the stages ``run(config)`` will compute or reuse, and estimate their time here.

    Args:
        config: the run, as :func:`embench.runner.run` will receive it.
        measure: time a few training steps (under ~5 s); ``False`` lists the stages only.

    Returns:
        The plan. A finished run (its record is stored) has ``finished`` set and nothing to
        compute.

    Raises:
        EmbenchError: for the same bad configuration :func:`~embench.runner.run` refuses.
    """
    preset, home, device = check_run_config(config)
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
    task_name = get_plugin("task", config.task).name
    task = load_task(config.task, config.task_options)
    setup = build_encoder(config, preset, home, device, task)
    plan = RunPlan(f"{setup.name} on {task_name}, preset {preset.name}, z={setup.z}, seed "
                   f"{config.seed}, {device} {config.precision}")
    sizes = _expected_sizes(task, preset)

    # what is stored already
    data_fp = _stored_data(home, task, preset, config.data_seed)
    train_key = checkpoint = None
    checkpoint_hit = cache_hit = False
    storable = (callable(getattr(setup.encoder, "save", None))
                and callable(getattr(setup.factory, "load", None)))
    if data_fp is not None:
        _, train_key = training_key(setup, data_fp)
        if not config.retrain:
            plan.record = _finished_record(home, task_name, setup, config, preset, train_key,
                                           device)
            if plan.record is not None:
                plan.finished = True
                return plan
        checkpoint = (home / "checkpoints" / safe_name(setup.name, "encoder name")
                      / train_key[:16])
        marker = checkpoint / "embench.json"
        if storable and not config.retrain and marker.exists():
            try:
                checkpoint_hit = json.loads(marker.read_text()).get("train_key") == train_key
            except (OSError, ValueError):
                checkpoint_hit = False
        if checkpoint_hit:  # load it (cheap) to see whether its embeddings are cached
            try:
                kwargs = {k: v for k, v in {**setup.evaluation, "device": device,
                                            "home": home}.items()
                          if accepts_keyword(setup.factory.load, k)}
                loaded = setup.factory.load(checkpoint, **kwargs)
                key = embedding_key(str(loaded.fingerprint), data_fp)
                cache_hit = cache_path(home, setup.name, task_name, key).exists()
            except Exception:  # the run decides; here it only changes the estimate
                cache_hit = False

    throughput, note = None, None
    if measure and not (checkpoint_hit and cache_hit):
        try:
            throughput = measure_throughput(config, setup, preset, home, device, task,
                                            sizes.autoencoder_train if sizes else None)
        except Exception as exc:  # an estimate must never stop a run
            note = f"no estimate: the throughput probe failed ({type(exc).__name__}: {exc})"
    elif not measure:
        note = f"no time estimate (skipped: --no-estimate or {ESTIMATE_ENV}=0)"
    plan.throughput, plan.note = throughput, note
    if sizes is None and note is None and not (checkpoint_hit and cache_hit):
        plan.note = f"no time estimate: the sizes of {task_name} at this preset are unknown here"

    plan.stages.append(_data_stage(task, sizes, data_fp is not None, task_name))
    epoch_seconds = None
    trainable = "max_epochs" in setup.given
    epochs = int(setup.given.get("max_epochs") or 0)
    if checkpoint_hit:
        plan.stages.append(PlannedStage("encoder", f"reuse the checkpoint {checkpoint}", 0.0,
                                        True))
    else:
        seconds = None
        if sizes is not None and throughput is not None:
            if trainable and throughput.train_images_per_second:
                epoch_seconds = ((sizes.autoencoder_train + VALIDATION_COST
                                  * sizes.autoencoder_val)
                                 / throughput.train_images_per_second)
                seconds = epochs * epoch_seconds
            elif throughput.fit_seconds_per_image is not None:
                seconds = throughput.fit_seconds_per_image * sizes.autoencoder_train
        images = f" of ~{sizes.autoencoder_train:,} images" if sizes else ""
        action = (f"train {setup.name}: up to {epochs} epochs{images}, batch "
                  f"{setup.given.get('batch_size', preset.batch_size)} (early stopping may end "
                  "it sooner)" if trainable else f"fit {setup.name}{images.replace(' of', ' on')}")
        plan.stages.append(PlannedStage("encoder", action, seconds))
    if cache_hit:
        plan.stages.append(PlannedStage("embedding", "reuse the cached embeddings", 0.0, True))
    else:
        seconds = (sizes.embedded / throughput.encode_images_per_second
                   if sizes is not None and throughput is not None else None)
        count = f"~{sizes.embedded:,} images" if sizes else "every image"
        plan.stages.append(PlannedStage("embedding", f"embed {count} once (all splits)",
                                        seconds))
    probe_seconds = (PROBE_START_SECONDS + PROBE_SECONDS_PER_SAMPLE_EPOCH * preset.probe_epochs
                     * sizes.probe_train if sizes is not None and plan.note is None else None)
    on = f" on ~{sizes.probe_train:,} embeddings" if sizes else ""
    plan.stages.append(PlannedStage(
        "probe search", f"linear + 18 MLP probes, up to {preset.probe_epochs} epochs{on}",
        probe_seconds))
    if callable(getattr(setup.encoder, "retrain_decoder", None)):
        stored = checkpoint_hit and checkpoint is not None and data_fp is not None and (
            checkpoint / f"reconstruction-"
            f"{reconstruction_key(data_fp, preset.decoder_epochs, setup.evaluation)}.json"
        ).exists()
        if stored:
            plan.stages.append(PlannedStage("decoder", "reuse the stored decoder retraining",
                                            0.0, True))
        else:
            if epoch_seconds is None and throughput is not None and sizes is not None \
                    and throughput.train_images_per_second:
                epoch_seconds = ((sizes.autoencoder_train + VALIDATION_COST
                                  * sizes.autoencoder_val)
                                 / throughput.train_images_per_second)
            seconds = (preset.decoder_epochs * epoch_seconds * DECODER_EPOCH_RATIO
                       if epoch_seconds is not None else None)
            plan.stages.append(PlannedStage(
                "decoder", f"retrain the decoder alone, up to {preset.decoder_epochs} epochs "
                "(Table VIII)", seconds))
    return plan


def _data_stage(task: Any, sizes: _Sizes | None, stored: bool, task_name: str) -> PlannedStage:
    if stored:
        return PlannedStage("data", f"reuse the stored {task_name} data", 0.0, True)
    if sizes is not None and sizes.frames is not None:
        workers = getattr(task, "workers", None) or usable_cpus()
        workers = min(workers, sizes.rollouts or 1)
        seconds = DATA_START_SECONDS + sizes.frames / (DATA_FRAMES_PER_SECOND_PER_WORKER
                                                       * workers)
        return PlannedStage("data", f"generate {sizes.rollouts:,} {task_name} rollouts "
                            f"({sizes.frames:,} frames, {workers} worker(s))", seconds)
    return PlannedStage("data", f"prepare the {task_name} files (checked; downloaded when "
                        "missing)", None)


def format_plan(plan: RunPlan) -> list[str]:
    """The plan as lines for a terminal or a log: one per stage, then the total."""
    lines = [f"plan: {plan.title}"]
    if plan.finished:
        lines.append(f"  already finished, nothing to compute: record {plan.record}")
        return lines
    for s in plan.stages:
        when = ("stored" if s.reused else
                f"~{format_seconds(s.seconds)}" if s.seconds is not None else "")
        lines.append(f"  {s.name:<13} {when:>9}  {s.action}")
    total = plan.total_seconds
    if all(s.reused for s in plan.stages):
        lines.append("  already finished, nothing to compute")
    elif total is not None and plan.note is None:
        measured = f" ({plan.throughput.description})" if plan.throughput else ""
        lines.append(f"  {'total':<13} {'~' + format_seconds(total):>9}  roughly, on this "
                     f"machine{measured}")
    if plan.note:
        lines.append(f"  {plan.note}")
    return lines


def estimate_wanted(flag: bool | None = None) -> bool:
    """Whether to run the probe: the flag if given, else ``EMBENCH_ESTIMATE`` (default on)."""
    import os

    if flag is not None:
        return flag
    return os.environ.get(ESTIMATE_ENV, "1").strip().lower() not in ("0", "false", "no", "off")
