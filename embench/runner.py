"""The only module that wires the stages together.

data -> encoder fit (checkpoint store) -> embed every split (HDF5 cache) -> probe search ->
result record. Every stage whose output exists with the right fingerprint is skipped.
"""

from __future__ import annotations

import dataclasses
import datetime as _dt
import json
import shutil
import time
from collections.abc import Callable
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import numpy as np

from embench import show
from embench.cache import DEFAULT_BATCH as EMBED_BATCH
from embench.cache import cache_path, embed_splits, embedding_key, read_cache, write_cache
from embench.devices import check_precision, resolve_device, resolve_precision
from embench.errors import ConfigError, EmbenchError, PluginError
from embench.presets import (
    Preset,
    get_preset,
    task_sizes,
    task_z_sizes,
)
from embench.protocols import (
    AUTOENCODER_TRAIN,
    AUTOENCODER_VAL,
    PROBE_TRAIN,
    PROBE_VAL,
    SPLITS,
    TEST,
    Encoder,
    TaskData,
    missing_members,
)
from embench.records import record_on_board
from embench.registry import accepts_keyword, get_plugin, instantiate, load_task
from embench.results import (
    SCHEMA_VERSION,
    Predictions,
    RunRecord,
    environment_versions,
    load_record,
    path_of,
    protocol_fingerprint,
    record_path,
    run_fingerprint,
    sidecar_path,
    train_fingerprint,
    write_predictions,
    write_record,
)
from embench.storage import (
    ARTIFACT_VERSION,
    CODE_VERSION,
    atomic_dir,
    atomic_path,
    file_lock,
    fingerprint,
    home_dir,
    resolve_home,
    safe_name,
    write_json,
)

# re-exported: callers import prepare_task (and load_task) from the runner, where they were
from embench.taskdata import load_task_data, prepare_task  # noqa: F401

Log = Callable[[str], None]


@dataclass
class RunConfig:
    """Everything one ``embench run`` needs.

    Attributes:
        encoder: registered encoder name, ``module.path:factory``, or an encoder object (the
            contract of :class:`embench.protocols.Encoder`, e.g. ``embench.TorchEncoder``),
            used as constructed: the preset's budgets, ``seed`` and ``device`` do not reach
            it, ``encoder_options`` must be empty, and its size is its ``embedding_dim``.
        task: registered task name.
        preset: ``smoke``, ``quick`` or ``paper``.
        z: embedding size; ``None`` takes the preset's first z for the task.
        seed: seed of encoder training and probe search.
        data_seed: seed of task data generation (fixed by default so seeds share data).
        device: ``auto``, ``cpu`` or ``cuda``.
        precision: ``fp32``, ``bf16`` (autocast) or ``auto`` (bf16 only where the device
            computes it natively), for encoders that train; the record stores the resolved one.
        home: EMBENCH_HOME override.
        encoder_options: extra keyword config for the encoder (``--option k=v``).
        task_options: extra keyword config for the task (e.g. ``data_dir``).
        retrain: train the encoder even when a checkpoint exists.
    """

    encoder: str | Any
    task: str
    preset: str = "quick"
    z: int | None = None
    seed: int = 0
    data_seed: int = 0
    device: str = "auto"
    precision: str = "fp32"
    home: Path | None = None
    encoder_options: dict[str, Any] = field(default_factory=dict)
    task_options: dict[str, Any] = field(default_factory=dict)
    retrain: bool = False
    board: Path | None = None


@dataclass
class RunOutcome:
    """What a run produced and which stages were reused.

    ``record_hit`` means the whole run was already finished: its record (same run fingerprint,
    device and precision) was found and returned without repeating the probe search;
    ``on_board`` that the record came from the board (``RunConfig.board``), not the home.
    """

    record: RunRecord
    record_path: Path
    checkpoint_hit: bool
    cache_hit: bool
    record_hit: bool = False
    on_board: bool = False


def _fixed_size(encoder: Any, name: str, requested: int | None) -> int:
    """The size of an encoder that takes no ``z_dim``; refuse a ``--z`` that differs from it."""
    try:
        size = int(encoder.embedding_dim)
    except Exception as exc:
        raise PluginError(f"Encoder {name!r} takes no z_dim, so its runs are filed under its "
                          f"embedding_dim, but reading it before fit() failed: {exc}.") from exc
    if requested is not None and requested != size:
        raise ConfigError(f"Encoder {name!r} has a fixed embedding size {size} (it takes no "
                          f"z_dim), so --z {requested} cannot apply.",
                          f"Drop --z: its runs are filed under z={size}.")
    return size


def _encoder_config(encoder: Any, given: dict[str, Any]) -> dict[str, Any]:
    for getter in ("get_config", "get_params"):
        if callable(getattr(encoder, getter, None)):
            return json.loads(json.dumps(getattr(encoder, getter)(), default=str))
    return json.loads(json.dumps(given, default=str))


def fit_or_load_encoder(
    factory: Any, name: str, encoder: Any, train_key: str, data: TaskData, home: Path,
    retrain: bool, progress: Any, log: Log, load_options: dict[str, Any] | None = None,
) -> tuple[Any, bool, dict[str, Any]]:
    """Load the checkpoint of ``train_key`` or fit and save one; return (encoder, hit, stats)."""
    checkpoint = home / "checkpoints" / safe_name(name, "encoder name") / train_key[:16]
    load_options = load_options or {}
    storable = callable(getattr(encoder, "save", None)) and callable(getattr(factory, "load", None))
    marker = checkpoint / "embench.json"
    with file_lock(checkpoint.with_name(checkpoint.name + ".lock")):
        if storable and not retrain and marker.exists():
            try:
                stored = json.loads(marker.read_text())
                if stored.get("train_key") == train_key:
                    load_kwargs = {k: v for k, v in load_options.items()
                                   if accepts_keyword(factory.load, k)}
                    loaded = factory.load(checkpoint, **load_kwargs)
                    log(f"checkpoint hit: {checkpoint}")
                    return loaded, True, stored.get("training", {})
            except Exception as exc:  # an unusable checkpoint is retrained, not trusted
                log(f"[yellow]warning:[/yellow] ignoring checkpoint {checkpoint}: {exc}")
        train = data.splits[AUTOENCODER_TRAIN].images
        val = data.splits[AUTOENCODER_VAL].images
        kwargs = {"progress": progress} if accepts_keyword(encoder.fit, "progress") else {}
        resume_dir = checkpoint.with_name(checkpoint.name + ".resume")
        if storable and accepts_keyword(encoder.fit, "resume_dir"):
            kwargs["resume_dir"] = resume_dir  # epoch-end states: a killed fit continues
        start = time.perf_counter()
        fitted = encoder.fit(train, val, **kwargs)
        encoder = fitted if fitted is not None else encoder
        stats = {"fit_seconds": time.perf_counter() - start}
        if callable(getattr(encoder, "training_stats", None)):
            stats.update(encoder.training_stats())
        if storable:
            with atomic_dir(checkpoint) as tmp:
                encoder.save(tmp)
                (tmp / "embench.json").write_text(json.dumps(
                    {"train_key": train_key, "encoder": name, "training": stats},
                    indent=2, default=str))
            shutil.rmtree(resume_dir, ignore_errors=True)
        return encoder, False, stats


def save_reconstruction_grid(rows: list[np.ndarray], path: Path, scale: int = 2) -> None:
    """Write a PNG grid: one row per array of float images ``(n, 3, H, W)`` in [0, 1]."""
    from PIL import Image

    tiles = [np.concatenate(list(np.clip(r, 0, 1).transpose(0, 2, 3, 1)), axis=1) for r in rows]
    picture = (np.concatenate(tiles, axis=0) * 255).round().astype(np.uint8)
    image = Image.fromarray(picture).resize(
        (picture.shape[1] * scale, picture.shape[0] * scale), Image.NEAREST)
    with atomic_path(path) as tmp:
        image.save(tmp, format="PNG")


def reconstruction_key(data_fingerprint: str, decoder_epochs: int,
                       evaluation: dict[str, Any] | None) -> str:
    """The key Table VIII's result is stored under beside the encoder's checkpoint."""
    return fingerprint("reconstruction", data_fingerprint, decoder_epochs,
                       *([evaluation] if evaluation else []))[:16]


def reconstruction_stage(
    encoder: Any, data: TaskData, preset: Preset, checkpoint: Path, progress: Any, log: Log,
    n_images: int = 8, evaluation: dict[str, Any] | None = None,
) -> dict[str, Any]:
    """Table VIII: test L1 before and after retraining the decoder alone with pixel MSE.

    Whether the decoder is fine-tuned or re-initialised is the encoder's own setting
    (``decoder_retraining``, part of ``evaluation``); the result says which as
    ``decoder_init``. The outcome is stored beside the encoder's checkpoint (keyed by the
    retraining budget, the evaluation settings and the test data), so a rerun reuses it.
    """
    key = reconstruction_key(data.fingerprint, preset.decoder_epochs, evaluation)
    stored = checkpoint / f"reconstruction-{key}.json"
    grid = checkpoint / f"reconstruction-{key}.png"
    if stored.exists() and grid.exists():
        try:
            result = json.loads(stored.read_text())
            log("reconstruction reused from the checkpoint")
            return {**result, "grid_file": str(grid)}
        except (OSError, json.JSONDecodeError):
            pass
    test = data.splits[TEST].images
    before = float(encoder.reconstruction_error(test, decoder="original", metric="l1"))
    stats = encoder.retrain_decoder(
        data.splits[AUTOENCODER_TRAIN].images, data.splits[AUTOENCODER_VAL].images,
        max_epochs=preset.decoder_epochs, progress=progress)
    after = float(encoder.reconstruction_error(test, decoder="retrained", metric="l1"))
    sample = np.linspace(0, len(test) - 1, min(n_images, len(test))).astype(np.int64)
    images = np.asarray(test[np.unique(sample)])
    save_reconstruction_grid(
        [images.astype(np.float32) / 255.0, encoder.reconstruct(images, decoder="original"),
         encoder.reconstruct(images, decoder="retrained")], grid)
    result = {"test_l1_before": before, "test_l1_after": after,
              "decoder_epochs": preset.decoder_epochs,
              "decoder_init": "reinitialize" if stats.get("reinitialized") else "finetune",
              "retraining": {k: v for k, v in stats.items() if k != "history"},
              "grid_rows": ["original", "before retraining", "after retraining"]}
    write_json(stored, result)
    return {**result, "grid_file": str(grid)}


def _torch_threads() -> int:
    import torch

    return int(torch.get_num_threads())


def _baseline_prediction(kind: str, y_train: np.ndarray, n: int) -> np.ndarray:
    if kind == "classification":
        values, counts = np.unique(y_train, return_counts=True)
        return np.full(n, values[np.argmax(counts)], dtype=y_train.dtype)
    return np.repeat(y_train.mean(axis=0, keepdims=True), n, axis=0)


def _finished_record(path: Path, run_key: str, device: str, precision: str,
                     log: Log) -> RunRecord | None:
    """The record at ``path`` if it is valid and belongs to this exact run, else ``None``."""
    if not path.exists():
        return None
    try:
        record = load_record(path)
    except EmbenchError as exc:  # embench wrote it, so it is recomputed, with a warning
        log(f"[yellow]warning:[/yellow] recomputing: {exc}")
        return None
    same = (record.run_key == run_key and record.device == device
            and record.precision == precision)
    return record if same else None


# --------------------------------------------------------------------------------------------
# Stages: each takes and returns plain values; run() chains them.
# --------------------------------------------------------------------------------------------


@dataclass
class EncoderSetup:
    """The encoder as constructed for a run, before any data exists."""

    name: str
    spec: str
    distribution: str | None
    factory: Any
    encoder: Any
    given: dict[str, Any]
    z: int
    evaluation: dict[str, Any]


def check_run_config(config: RunConfig) -> tuple[Preset, Path, str]:
    """Validate what needs no plugin: preset, z, seed, device, precision.

    Returns:
        The preset, the home directory and the resolved device name.
    """
    preset = get_preset(config.preset)
    home = resolve_home(config.home)
    if config.z is not None and (not isinstance(config.z, int) or config.z < 1):
        raise ConfigError(f"Invalid --z {config.z!r}: must be a positive integer.")
    if not isinstance(config.seed, int) or config.seed < 0:
        raise ConfigError(f"Invalid --seed {config.seed!r}: must be a non-negative integer.")
    device = str(resolve_device(config.device))  # records store the name
    check_precision(config.precision)  # "auto" is resolved by run() (records never say auto)
    return preset, home, device


def build_encoder(config: RunConfig, preset: Preset, home: Path, device: str,
                  task: Any) -> EncoderSetup:
    """Construct the encoder (so bad options fail before any data is generated).

    Without ``--z`` the first z of the task's grid at this preset is used. An encoder object
    is used as it is (see :func:`_object_encoder`).
    """
    if not isinstance(config.encoder, str):
        return _object_encoder(config.encoder, config)
    info = get_plugin("encoder", config.encoder)
    factory = info.load()
    z = config.z if config.z is not None else task_z_sizes(task, preset)[0]
    hints = {"z_dim": z, "seed": config.seed, "max_epochs": preset.autoencoder_epochs,
             "batch_size": preset.batch_size, "device": device, "precision": config.precision,
             "home": home}
    option_z = config.encoder_options.get("z_dim")
    if option_z is not None:  # -o z_dim=N: the run is filed under N, as with --z N
        if config.z is not None and option_z != config.z:
            raise ConfigError(f"--z {config.z} and the encoder option z_dim={option_z} "
                              "disagree.", "Give the size once, with --z.")
        if isinstance(option_z, bool) or not isinstance(option_z, int) or option_z < 1:
            raise ConfigError(f"Invalid encoder option z_dim={option_z!r}: must be a positive "
                              "integer.", "Give the size with --z N.")
        z = option_z
    encoder, given = instantiate(factory, info.name, "encoder", hints, config.encoder_options)
    if "z_dim" not in given:  # a fixed-size encoder: its runs are filed under its real size
        z = _fixed_size(encoder, info.name, config.z)
    # settings that key the evaluation, not the encoder (e.g. how Table VIII's decoder starts)
    evaluation = (encoder.evaluation_config()
                  if callable(getattr(encoder, "evaluation_config", None)) else {})
    return EncoderSetup(info.name, info.value, info.distribution, factory, encoder, given,
                        int(z), evaluation)


def _object_encoder(encoder: Any, config: RunConfig) -> EncoderSetup:
    """Set up an encoder object: named by its ``name`` (else its class), sized by its dim.

    Its spec is ``python:<module>.<qualname>`` of its class and it has no distribution. Its
    class is the factory (so fitted objects are checkpointed) only when the object has
    ``save``, the class ``load`` and the object a config (``get_config``/``get_params``) to
    key the checkpoint; otherwise it is fitted on every run.
    """
    kind = type(encoder)
    label = f"{kind.__module__}.{kind.__qualname__}"
    missing = missing_members(encoder, Encoder)
    if missing:
        raise PluginError(f"The encoder object {label} lacks {', '.join(missing)} of the "
                          f"encoder contract.",
                          "Add them (see embench.protocols.Encoder), or wrap a torch module "
                          "or a callable in embench.TorchEncoder.")
    own = getattr(encoder, "name", None)
    name = safe_name(own if isinstance(own, str) else kind.__name__.lower(), "encoder name")
    if config.encoder_options:
        raise ConfigError(f"Encoder options ({', '.join(config.encoder_options)}) configure "
                          f"a factory, but {name!r} is an object, already constructed.",
                          "Pass that config to its constructor instead.")
    configured = any(callable(getattr(encoder, g, None)) for g in ("get_config", "get_params"))
    storable = (callable(getattr(encoder, "save", None))
                and callable(getattr(kind, "load", None)) and configured)
    z = _fixed_size(encoder, name, config.z)
    evaluation = (encoder.evaluation_config()
                  if callable(getattr(encoder, "evaluation_config", None)) else {})
    return EncoderSetup(name, f"python:{label}", None, kind if storable else None, encoder, {},
                        z, evaluation)


def training_key(setup: EncoderSetup, data_fingerprint: str) -> tuple[dict[str, Any], str]:
    """The encoder's recorded config and the training fingerprint that keys its checkpoint."""
    encoder_config = _encoder_config(setup.encoder,
                                     {k: v for k, v in setup.given.items() if k != "home"})
    return encoder_config, train_fingerprint(setup.spec, encoder_config, data_fingerprint,
                                             version=ARTIFACT_VERSION)


def embed_stage(
    encoder: Any, encoder_name: str, task_name: str, encoder_fp: str, data: TaskData,
    key: str, home: Path, progress: Any, log: Log,
) -> tuple[dict[str, dict[str, np.ndarray]], bool]:
    """Every split's embeddings and labels, from the cache or computed and cached.

    Returns:
        ``{split: {"embeddings", "labels"}}`` and whether the cache was hit.
    """
    path = cache_path(home, encoder_name, task_name, key)
    with file_lock(path.with_suffix(".lock")):
        cached = read_cache(path, key, data.sizes())
        if cached is not None:
            log(f"embedding cache hit: {path}")
            return cached, True
        embeddings, _ = embed_splits(encoder, encoder_name, data, progress=progress)
        labels = {name: data.splits[name].labels for name in data.splits}
        write_cache(path, key, embeddings, labels,
                    {"encoder": encoder_name, "task": task_name,
                     "encoder_fingerprint": encoder_fp, "data_fingerprint": data.fingerprint})
    return {name: {"embeddings": embeddings[name], "labels": labels[name]}
            for name in embeddings}, False


@dataclass
class ProbeScores:
    """The selected probes' test metrics and their predictions, item by item."""

    test: dict[str, float]
    predicted: dict[str, np.ndarray]


def score_probes(task: Any, search: Any, X_test: np.ndarray, y_test: np.ndarray,
                 y_train: np.ndarray) -> ProbeScores:
    """Score the best MLP, the linear probe, the baseline (and the least-squares extra).

    The one place test scores are computed: :func:`run` and :func:`verify_record` both call
    it, so ``verify`` can never report a mismatch that is only a difference of formulas.
    """
    predicted = {
        "mlp": search.best_mlp.predict(X_test),
        "linear": search.best_linear.predict(X_test),
        "baseline": _baseline_prediction(task.kind, y_train, len(y_test)),
    }
    if getattr(search, "least_squares", None) is not None:
        # an extra, not a paper row: the closed-form fit of the linear map
        predicted["least_squares"] = search.least_squares.predict(X_test)
    test = {name: float(task.score(y_test, values)) for name, values in predicted.items()}
    return ProbeScores(test, predicted)


def probe_stage(task: Any, cached: dict[str, dict[str, np.ndarray]], preset_settings:
                dict[str, Any], seed: int, device: str,
                progress: Any) -> tuple[Any, ProbeScores]:
    """The paper's probe search on the cached embeddings, then the test scores."""
    # deferred: embench.probes imports torch (~2 s); importers of the runner that never search
    # probes (a sweep's driver, `embench run --estimate`) do without it
    from embench.probes import search_probes

    X = {name: cached[name]["embeddings"] for name in (PROBE_TRAIN, PROBE_VAL, TEST)}
    y = {name: cached[name]["labels"] for name in (PROBE_TRAIN, PROBE_VAL, TEST)}
    search = search_probes(
        X[PROBE_TRAIN], y[PROBE_TRAIN], X[PROBE_VAL], y[PROBE_VAL], kind=task.kind,
        max_epochs=preset_settings["max_epochs"], batch_size=preset_settings["batch_size"],
        seed=seed, device=device, progress=progress)
    return search, score_probes(task, search, X[TEST], y[TEST], y[PROBE_TRAIN])


def record_probe_settings(record: RunRecord) -> tuple[dict[str, Any], list[str]]:
    """The probe budgets a record's protocol fixes, and each one the record claims otherwise.

    What reruns a record's probe search (``embench verify``, a submission's check) reads its
    settings here: the protocol's preset decides (``probe_epochs``, ``batch_size``); a record
    too old to carry a budget in its protocol falls back on what its probes say they used.
    A record whose probes claim other budgets than its protocol's is not a run of that
    protocol: the second item names each such setting.
    """
    preset = record.protocol.get("preset") or record.preset_config
    wanted = {"max_epochs": preset.get("probe_epochs"), "batch_size": preset.get("batch_size")}
    used = (record.probes or {}).get("settings", {})
    problems = []
    for name, value in wanted.items():
        if value is None:
            wanted[name] = used.get(name)
        elif name in used and used[name] != value:
            problems.append(f"probes.settings.{name}: claimed {used[name]} against {value} in "
                            "the record's protocol")
    return wanted, problems


def metric_problems(claimed: dict[str, Any], recomputed: dict[str, Any],
                    tolerance: float) -> list[str]:
    """One line per test metric whose recomputed value differs from the claim by > tolerance.

    Metrics missing from ``recomputed`` are not compared (an older record's extras).
    """
    problems = []
    for name, value in claimed.items():
        if name not in recomputed:
            continue
        again = float(recomputed[name])
        if not abs(float(value) - again) <= tolerance:
            problems.append(f"test.{name}: claimed {_number(float(value))} against recomputed "
                            f"{_number(again)} (tolerance {tolerance:g})")
    return problems


def _number(value: float) -> str:
    return f"{value:.8g}"


def protocol_fields(task_name: str, task: Any, data: TaskData, preset: Preset) -> dict[str, Any]:
    """What makes two records comparable, with its fingerprint (known before any training)."""
    # deferred: embench.probes imports torch (~2 s), as in probe_stage
    from embench.probes.search import candidate_names

    sizes = data.sizes()
    protocol = {
        "task": task_name,
        "data": data.fingerprint,
        "split_sizes": {name: sizes[name] for name in SPLITS if name in sizes},
        # the budgets, not the name; the task's own sizes at this preset (records before
        # 0.3.0 carried them, and the z grids, inside "preset")
        "preset": {k: v for k, v in preset.to_dict().items()
                   if k not in ("z_sizes", "name", "overrides")},
        "task_sizes": task_sizes(task, preset),
        "probe_grid": sorted(candidate_names(task.kind)),
        "selection": "lowest validation MSE; best MLP and the linear probe (one layer trained "
                     "like the MLPs) scored on test; closed-form least squares reported as an "
                     "extra",
        "metric": {"name": task.metric_name, "direction": task.metric_direction},
    }
    protocol["fingerprint"] = protocol_fingerprint(protocol, version=CODE_VERSION)
    return protocol


def write_run_outputs(home: Path, record: RunRecord, scores: ProbeScores, data: TaskData,
                      grid_file: str | None, task: Any = None) -> Path:
    """Write the grid, the predictions sidecar and the show picture, then the record.

    All lie beside the record, which is written last: its presence means the run finished,
    sidecar included. The show picture (:mod:`embench.show`: the selected MLP's predictions
    over test frames) is a convenience: when it cannot be drawn, a warning says why and the
    run is kept without it. ``task`` is the run's task object (its labels' geometry and class
    names); without it the picture loads the registered task the record names.
    """
    import warnings

    out = path_of(home, record)
    home_dir(home, "results")
    if grid_file is not None:  # Fig. 6-style grid next to the record
        grid = out.with_suffix(".png")
        with atomic_path(grid) as tmp:
            tmp.write_bytes(Path(grid_file).read_bytes())
        record.reconstruction = {**(record.reconstruction or {}), "grid": grid.name}
    test = data.splits[TEST]
    predictions = Predictions(
        items=np.arange(len(test), dtype=np.int64), y_true=np.asarray(test.labels),
        predicted={k: np.asarray(v) for k, v in scores.predicted.items()},
        data_fingerprint=data.fingerprint,
        groups=None if test.groups is None else np.asarray(test.groups))
    sidecar = write_predictions(sidecar_path(out), predictions)
    record.predictions = sidecar.name
    try:
        picture = show.draw_show(record, test.images, predictions, show.show_path(out),
                                 task=task)
        record.pictures = {**(record.pictures or {}), "show": picture.path.name}
    except Exception as exc:  # a picture never costs a finished run
        warnings.warn(f"The show picture {show.show_path(out).name} was not drawn "
                      f"({type(exc).__name__}: {exc}); the run is kept without it.",
                      stacklevel=2)
    return write_record(home, record)


def run(config: RunConfig, progress: Any = None, log: Log = lambda message: None) -> RunOutcome:
    """Run one encoder on one task end to end and write its result record.

    Stages: check the config, build the encoder, prepare the data, fit (or load) the encoder,
    embed every split (or read the cache), search the probes and score them, retrain the
    decoder (autoencoders), write the record with its predictions sidecar. A run whose record
    exists (same run fingerprint, device, precision) is returned without repeating anything.

    Args:
        config: what to run.
        progress: a rich Progress for the stages' bars (``None``: silent).
        log: receives one-line status messages (cache hits, warnings).

    Returns:
        The record, its path, and whether the checkpoint and the embedding cache were reused.

    Raises:
        EmbenchError: for any problem the user can fix; the message says how.
    """
    timings: dict[str, float] = {}
    preset, home, device = check_run_config(config)
    # the precision actually computed in (``auto``: bf16 only where the device is native)
    config = dataclasses.replace(config, precision=resolve_precision(config.precision, device))
    task_name = get_plugin("task", config.task).name
    # constructing the task is cheap (its data comes later); the encoder needs its z grid
    task = load_task(config.task, config.task_options)
    setup = build_encoder(config, preset, home, device, task)

    start = time.perf_counter()
    data = load_task_data(task, preset, home, config.data_seed, progress)
    timings["data_seconds"] = time.perf_counter() - start
    protocol = protocol_fields(task_name, task, data, preset)
    if config.board is not None and not config.retrain:
        on_board = record_on_board(config.board, task_name, setup.name, setup.z, config.seed,
                                   protocol["fingerprint"], device, config.precision)
        if on_board is not None:  # this cell of this protocol is published: nothing to do
            log(f"on the board already: {on_board}")
            return RunOutcome(load_record(on_board), on_board, False, False, record_hit=True,
                              on_board=True)

    encoder_config, train_key = training_key(setup, data.fingerprint)
    start = time.perf_counter()
    encoder, checkpoint_hit, training = fit_or_load_encoder(
        setup.factory, setup.name, setup.encoder, train_key, data, home, config.retrain,
        progress, log, load_options={**setup.evaluation, "device": device, "home": home})
    timings["train_seconds"] = time.perf_counter() - start
    try:
        encoder_fp = str(encoder.fingerprint)
    except Exception as exc:
        raise PluginError(f"Encoder {setup.name!r} has no usable fingerprint: {exc}.") from exc

    key = embedding_key(encoder_fp, data.fingerprint)
    # the package version: a release that changes only probes reruns on the stored embeddings
    run_key = run_fingerprint(train_key, key, preset.to_dict(), config.seed, setup.evaluation,
                              version=CODE_VERSION)
    out = record_path(home, task=task_name, encoder=setup.name, z_dim=setup.z,
                      seed=config.seed, preset=preset.name, run_key=run_key)
    finished = None if config.retrain else _finished_record(
        out, run_key, device, config.precision, log)
    if finished is not None:  # every stage of this run is done: nothing to repeat
        log(f"result hit: {out}")
        return RunOutcome(finished, out, checkpoint_hit, True, record_hit=True)

    start = time.perf_counter()
    cached, cache_hit = embed_stage(encoder, setup.name, task_name, encoder_fp, data, key, home,
                                    progress, log)
    timings["embed_seconds"] = time.perf_counter() - start

    start = time.perf_counter()
    search, scores = probe_stage(
        task, cached, {"max_epochs": preset.probe_epochs, "batch_size": preset.batch_size},
        config.seed, device, progress)
    timings["probe_seconds"] = time.perf_counter() - start

    reconstruction, grid_file = None, None
    if callable(getattr(encoder, "retrain_decoder", None)):
        start = time.perf_counter()
        reconstruction = reconstruction_stage(
            encoder, data, preset, home / "checkpoints" / safe_name(setup.name, "encoder name")
            / train_key[:16], progress, log, evaluation=setup.evaluation)
        grid_file = reconstruction.pop("grid_file")
        timings["reconstruction_seconds"] = time.perf_counter() - start

    sizes = data.sizes()
    record = RunRecord(
        schema_version=SCHEMA_VERSION,
        embench_version=CODE_VERSION,
        artifact_version=ARTIFACT_VERSION,
        encoder=setup.name,
        encoder_spec=setup.spec,
        encoder_distribution=setup.distribution,
        task=task_name,
        task_kind=task.kind,
        preset=preset.name,
        preset_config=preset.to_dict(),
        z_dim=setup.z,
        seed=config.seed,
        data_seed=config.data_seed,
        device=device,
        precision=config.precision,
        # CPU runs repeat bit for bit for a seed (tests check it); CUDA kernels may not
        deterministic=device == "cpu",
        threads=_torch_threads(),  # CPU results repeat for the same thread counts
        batch_sizes={"autoencoder": preset.batch_size, "probe": preset.batch_size,
                     "embedding": EMBED_BATCH},
        encoder_config=encoder_config,
        evaluation_config=setup.evaluation,
        # the loss network the encoder was trained with (source, sha256), if any
        perceptual_weights=training.get("perceptual"),
        embedding_dim=int(cached[TEST]["embeddings"].shape[1]),
        fingerprints={"run": run_key, "train": train_key, "encoder": encoder_fp,
                      "data": data.fingerprint, "embeddings": key},
        data_info=data.info,
        split_sizes={name: sizes[name] for name in SPLITS if name in sizes},
        metric={"name": task.metric_name, "direction": task.metric_direction},
        protocol=protocol,
        training=training,
        probes=search.to_dict(),
        test=scores.test,
        cache={"checkpoint_hit": checkpoint_hit, "embedding_cache_hit": cache_hit},
        timings=timings,
        versions=environment_versions(),
        created=_dt.datetime.now(_dt.timezone.utc).isoformat(timespec="seconds"),
        reconstruction=reconstruction,
    )
    out = write_run_outputs(home, record, scores, data, grid_file, task=task)
    return RunOutcome(record, out, checkpoint_hit, cache_hit)
