"""The FourLayerCVAE family: World Models' convolutional (V)AE and the paper's four encoders.

:class:`FourLayerCVAE` is the network of Ha & Schmidhuber's World Models (Fig. 4 of the paper).
Four encoders train it, differing only in the loss:

- ``ae``: z = mu; loss MSE(x, x̂).
- ``vae``: z = mu + eps * exp(logvar / 2); loss MSE(x, x̂) + γ·KLD.
- ``p_ae``: z = mu; loss MSE(p(x), p(x̂)).
- ``p_vae``: z sampled as for ``vae``; loss MSE(p(x), p(x̂)) + γ·KLD.

with p a frozen perceptual network (AlexNet ``features[:5]`` + Sigmoid by default, see
:mod:`embench.encoders.perceptual`). In eval mode every model decodes ``mu`` and every encoder
emits ``mu`` as the embedding.

This file holds the encoders (fit, encode, decoder retraining, save/load); the network is
:mod:`embench.encoders.cvae_network`, the staging of images and perceptual targets
:mod:`embench.encoders.image_staging`, the resumable training state
:mod:`embench.encoders.train_state`. Their names are re-exported here.

Example:
    >>> from embench.encoders.autoencoder import PerceptualVAE
    >>> enc = PerceptualVAE(z_dim=32, max_epochs=15).fit(train_images, val_images)
    >>> enc.encode(test_images).shape
    (N, 32)
"""

from __future__ import annotations

import contextlib
import copy
import inspect
import json
import tempfile
from collections.abc import Callable
from pathlib import Path
from typing import Any, ClassVar, Literal

import numpy as np
import torch
import torch.nn.functional as F
from torch import nn

from embench import __version__
from embench.devices import resolve_precision

# The network, the image staging and the training-state files live in their own modules;
# their names are re-exported here, where benchmarks, encoders/reference.py and the tests
# import them (and where the tests patch the ones this module's encoders call).
from embench.encoders.cvae_network import (  # noqa: F401 - re-exported
    DECODER_CHANNELS,
    DECODER_KERNELS,
    ENCODER_CHANNELS,
    FourLayerCVAE,
    _kld,
    check_image_size,
    decoder_seed_side,
    encoder_output_side,
    four_layer_cvae,
    four_layer_cvae_64,
    four_layer_cvae_96,
)
from embench.encoders.image_staging import (  # noqa: F401 - re-exported
    _LOAD_CHUNK,
    INFERENCE_BATCH,
    TARGET_RESIDENT_BYTES,
    _as_tensor,
    _batches,
    _check_images,
    _images_on_device,
    _perceptual_targets,
    _PerceptualTargets,
    _take,
    _to_unit,
    _TrainingImages,
)
from embench.encoders.train_state import (  # noqa: F401 - re-exported
    _STATE_META,
    _STATE_TENSORS,
    _load_train_state,
    _save_train_state,
)
from embench.errors import ConfigError, NotFittedError, StorageError
from embench.faults import crash_point
from embench.storage import atomic_path, fingerprint, resolve_home, sha256_arrays, write_json
from embench.training import (
    TrainState,
    check_precision,
    convergence_verdict,
    fit_module,
    resolve_device,
)

#: Training holds lazy splits (h5py datasets, task views) in memory, at their stored size and
#: training and validation together, up to this many bytes; a split beyond what is left is
#: read from its store batch by batch instead. Arrays already in memory are used where they are.
#: SVHN's extra split (1.63 GB stored at 32x32) is held; STL-10's unlabeled one (2.76 GB) is
#: streamed for training and held for validation.
RESIDENT_BYTES = 2 << 30


# --------------------------------------------------------------------------------------------
# The encoders
# --------------------------------------------------------------------------------------------

DecoderChoice = Literal["original", "retrained"]


def _training_splits(
    train_images: Any, val_images: Any, device: torch.device
) -> tuple[_TrainingImages, _TrainingImages]:
    """Both splits for training, sharing the :data:`RESIDENT_BYTES` budget (training first)."""
    train = _TrainingImages(train_images, device, RESIDENT_BYTES)
    val = _TrainingImages(val_images, device, RESIDENT_BYTES - train.resident_bytes)
    return train, val




class FourLayerCVAEEncoder:
    """FourLayerCVAE encoder (base class of ``ae``, ``vae``, ``p_ae`` and ``p_vae``).

    Subclasses only set the class flags ``variational`` and ``perceptual`` and their
    constructor's keywords; everything else (fit, encode, save/load, decoder retraining) lives
    here. The constructor only stores its keywords (sklearn style); ``fit`` does the work and
    sets the attributes ending in ``_``.

    Fitted attributes:
        model_: the trained :class:`FourLayerCVAE` (best-validation weights, eval mode).
        image_size_: side of the training images.
        history_: per-epoch ``train_loss``, ``val_loss``, ``seconds``, ``images_per_second``.
        n_epochs_, best_epoch_, best_val_loss_: epochs run, the epoch kept and its val loss.
        train_seconds_, images_per_second_: wall time of training and training throughput.
        precision_, device_: what training ran with.
        perceptual_: description of the perceptual network (``None`` for pixel-wise ones).
        retrained_decoder_: set by :meth:`retrain_decoder`.
    """

    name: ClassVar[str] = "four_layer_cvae"
    variational: ClassVar[bool] = False
    perceptual: ClassVar[bool] = False
    #: Keywords that change where or how fast it runs, never the result: not in the config.
    _RUNTIME_KEYS: ClassVar[tuple[str, ...]] = ("device", "home")
    #: Keywords that change only how the encoder is evaluated (never its weights or
    #: embeddings): not in the config or the fingerprint; see :meth:`evaluation_config`.
    _EVALUATION_KEYS: ClassVar[tuple[str, ...]] = ("decoder_retraining",)
    #: How the decoder may start when it is retrained (Table VIII).
    DECODER_RETRAINING: ClassVar[tuple[str, ...]] = ("finetune", "reinitialize")

    def __init__(
        self,
        z_dim: int = 64,
        *,
        max_epochs: int = 50,
        batch_size: int = 512,
        lr: float = 1e-3,
        kld_weight: float = 0.01,
        seed: int = 0,
        device: str = "auto",
        precision: str = "fp32",
        perceptual_network: str = "alexnet",
        perceptual_layer: int = 5,
        perceptual_weights: str = "imagenet",
        decoder_retraining: str = "finetune",
        home: str | Path | None = None,
    ) -> None:
        given = {
            "z_dim": z_dim, "max_epochs": max_epochs, "batch_size": batch_size, "lr": lr,
            "kld_weight": kld_weight, "seed": seed, "device": device, "precision": precision,
            "perceptual_network": perceptual_network, "perceptual_layer": perceptual_layer,
            "perceptual_weights": perceptual_weights, "decoder_retraining": decoder_retraining,
            "home": home,
        }
        # store only what this class's own constructor takes (AE has no kld_weight, ...)
        for name in self._param_names():
            setattr(self, name, given[name])

    # ----- configuration ---------------------------------------------------------------------

    @classmethod
    def _param_names(cls) -> list[str]:
        signature = inspect.signature(cls.__init__)
        return [p for p in signature.parameters if p != "self"]

    def get_params(self) -> dict[str, Any]:
        """Every constructor keyword and its value (sklearn's ``get_params``, shallow)."""
        return {name: getattr(self, name) for name in self._param_names()}

    def get_config(self) -> dict[str, Any]:
        """Constructor config that determines the result (JSON-ready; no ``home``/``device``)."""
        return {
            name: str(value) if isinstance(value, Path) else value
            for name, value in self.get_params().items()
            if name not in self._RUNTIME_KEYS + self._EVALUATION_KEYS
        }

    def evaluation_config(self) -> dict[str, Any]:
        """Settings that change how the encoder is evaluated, not what it embeds.

        They key the run and the reconstruction result (not the checkpoint or the embedding
        cache), so changing one reuses the trained encoder and its embeddings.

        Raises:
            ConfigError: for a value outside the allowed ones (checked before any work).
        """
        self._check_decoder_retraining()
        return {name: getattr(self, name) for name in self._EVALUATION_KEYS}

    def _validate_params(self) -> None:
        def positive_int(name: str) -> None:
            value = getattr(self, name)
            if not isinstance(value, int) or isinstance(value, bool) or value < 1:
                raise ConfigError(f"{type(self).__name__} {name} must be an integer >= 1; "
                                  f"got {value!r}.")

        for name in ("z_dim", "max_epochs", "batch_size"):
            positive_int(name)
        if not isinstance(self.seed, int):
            raise ConfigError(f"{type(self).__name__} seed must be an integer; got {self.seed!r}.")
        if not isinstance(self.lr, int | float) or not self.lr > 0:
            raise ConfigError(f"{type(self).__name__} lr must be a positive number; "
                              f"got {self.lr!r}.")
        if self.variational and (
            not isinstance(self.kld_weight, int | float) or self.kld_weight < 0
        ):
            raise ConfigError(f"{type(self).__name__} kld_weight must be a number >= 0; "
                              f"got {self.kld_weight!r}.")
        if self.perceptual:
            positive_int("perceptual_layer")
        self._check_decoder_retraining()
        check_precision(self.precision)
        resolve_device(self.device)

    def _check_decoder_retraining(self) -> None:
        if self.decoder_retraining not in self.DECODER_RETRAINING:
            raise ConfigError(
                f"{type(self).__name__} decoder_retraining must be one of "
                f"{', '.join(map(repr, self.DECODER_RETRAINING))}; "
                f"got {self.decoder_retraining!r}.",
                "Pass -o decoder_retraining=finetune (the default) or reinitialize.",
            )

    # ----- training --------------------------------------------------------------------------

    def fit(self, train_images: Any, val_images: Any, *, progress: Any = None,
            resume_dir: str | Path | None = None) -> FourLayerCVAEEncoder:
        """Train on ``train_images`` with early stopping on ``val_images``; return ``self``.

        Both splits are ``(N, 3, s, s)`` uint8 (or float in [0, 1]) numpy arrays, h5py datasets,
        task views or anything sliceable like them, batched by index and converted to float per
        batch. Memory: numpy arrays are used in place (copied only to a GPU). Lazy splits are
        read into memory on the training device in their stored dtype and size (a view that
        tiles on access, like SVHN's, is held untiled and tiled per batch: SVHN's extra split
        takes 1.63 GB, never the 6.5 GB tiled), up to :data:`RESIDENT_BYTES` for both splits
        together; a split beyond that is read from its store batch by batch. Where the data
        sits never changes the result: the same seed gives the same weights.

        Args:
            train_images: the autoencoder training split.
            val_images: the autoencoder validation split (drives early stopping).
            progress: optional ``rich`` progress; shows one bar per training run.
            resume_dir: where a resumable state (weights, optimizer, early-stopping counters,
                RNGs) is saved at every epoch end; a killed fit called again with the same
                directory, config and data continues from the last finished epoch and ends
                with the same weights as an uninterrupted fit. Removed when the fit ends.

        Returns:
            ``self``, fitted.

        Raises:
            ConfigError: for invalid config, image shapes or sizes, or an empty split.
        """
        self._validate_params()
        n_train, size = _check_images(train_images, "train_images")
        n_val, val_size = _check_images(val_images, "val_images")
        if val_size != size:
            raise ConfigError(
                f"train_images are {size}x{size} but val_images are {val_size}x{val_size}.",
                "Both splits must come from the same task.",
            )
        if n_train < 1 or n_val < 1:
            raise ConfigError(
                f"{type(self).__name__}.fit needs at least one training and one validation "
                f"image; got {n_train} and {n_val}."
            )
        device = resolve_device(self.device)
        # Build the network before anything else draws random numbers, on CPU so that the
        # initial weights depend only on the seed; fork_rng leaves the caller's RNG untouched.
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(self.seed)
            model = FourLayerCVAE(self.z_dim, size)
        model.to(device)

        perceptual_net, description = None, None
        if self.perceptual:
            perceptual_net, description = self._build_perceptual(device, progress)
        train, val = _training_splits(train_images, val_images, device)
        noise = torch.Generator(device=device)
        noise.manual_seed(self.seed + 1)  # a stream of its own, apart from the shuffling's
        loss = self._make_loss(model, perceptual_net, noise)
        optimizer = torch.optim.Adam(model.parameters(), lr=self.lr)
        run_key = fingerprint("fit-state", type(self).__name__, self.get_config(), n_train,
                              n_val, size, str(device))
        on_epoch_end, resume = None, None
        if resume_dir is not None:
            resume_dir = Path(resume_dir)
            resume = _load_train_state(resume_dir, run_key)

            def on_epoch_end(state: TrainState) -> None:
                _save_train_state(resume_dir, run_key, state)
                crash_point("train-epoch")

        with contextlib.ExitStack() as files:
            train_targets = val_targets = None
            if perceptual_net is not None:
                # Beside the resumable state when there is one (a resumed fit reuses the
                # file), else in a scratch directory removed with the fit.
                where = resume_dir or Path(files.enter_context(
                    tempfile.TemporaryDirectory(prefix="embench-targets-")))
                targets_path = where / f"perceptual-targets-{run_key[:16]}.h5"
                targets = _perceptual_targets(
                    perceptual_net, {"train": train, "val": val}, device,
                    resolve_precision(self.precision, device), targets_path, files)
                train_targets, val_targets = targets["train"], targets["val"]

            def targets_of(targets: _PerceptualTargets | None, batch: Any) -> Any:
                return None if targets is None else targets.take(batch)

            result = fit_module(
                model,
                lambda batch: loss(train.take(batch), self.variational,
                                   targets_of(train_targets, batch)),
                lambda batch: loss(val.take(batch), False, targets_of(val_targets, batch)),
                n_train=n_train,
                n_val=n_val,
                optimizer=optimizer,
                batch_size=self.batch_size,
                max_epochs=self.max_epochs,
                seed=self.seed,
                device=device,
                precision=self.precision,
                generators={"noise": noise},
                progress=progress,
                description=f"train {self.name}",
                on_epoch_end=on_epoch_end,
                resume=resume,
            )
        if resume_dir is not None:
            for name in (_STATE_TENSORS, _STATE_META):
                (resume_dir / name).unlink(missing_ok=True)
            for stale in resume_dir.glob("perceptual-targets-*.h5"):
                stale.unlink(missing_ok=True)
        self.model_ = model.eval()
        self.image_size_ = size
        self.perceptual_ = description
        self.history_ = result.history
        self.n_epochs_ = result.n_epochs
        self.best_epoch_ = result.best_epoch
        self.best_val_loss_ = result.best_val_loss
        self.train_seconds_ = result.train_seconds
        self.images_per_second_ = result.images_per_second
        self.precision_ = resolve_precision(self.precision, device)  # "auto" resolved
        self.device_ = str(device)
        self.__dict__.pop("retrained_decoder_", None)
        self.__dict__.pop("decoder_retraining_", None)
        return self

    def _build_perceptual(
        self, device: torch.device, progress: Any
    ) -> tuple[nn.Module, dict[str, Any]]:
        from embench.encoders.perceptual import build_perceptual_network, perceptual_description

        home = resolve_home(self.home)
        network = build_perceptual_network(
            self.perceptual_network,
            self.perceptual_layer,
            self.perceptual_weights,
            home=home,
            progress=progress,
        )
        # Channels-last like the autoencoder whose output it reads (faster on CPU).
        network = network.to(device, memory_format=torch.channels_last).eval()
        for parameter in network.parameters():
            parameter.requires_grad_(False)
        description = getattr(network, "description", None) or perceptual_description(
            self.perceptual_network, self.perceptual_layer, self.perceptual_weights, home=home
        )
        return network, description

    def _make_loss(
        self, model: FourLayerCVAE, perceptual_net: nn.Module | None, noise: torch.Generator
    ) -> Callable[..., torch.Tensor]:
        """``loss(images, sample, target=None)``: the objective on one batch (mean over it).

        ``target`` is p(images) when the caller has it (computed once per fit); without it a
        perceptual loss computes it here, without a graph.
        """
        kld_weight = float(getattr(self, "kld_weight", 0.0))

        def loss(images: torch.Tensor, sample: bool,
                 target: torch.Tensor | None = None) -> torch.Tensor:
            x = _to_unit(images)
            recon, mu, logvar = model(x, sample=sample, generator=noise)
            if perceptual_net is None:
                value = F.mse_loss(recon.float(), x)
            else:
                if target is None:
                    with torch.no_grad():  # the target needs no graph: p is frozen
                        target = perceptual_net(x).float()
                value = F.mse_loss(perceptual_net(recon).float(), target)
            if self.variational:
                value = value + kld_weight * _kld(mu, logvar)
            return value

        return loss

    # ----- inference -------------------------------------------------------------------------

    def _check_fitted(self) -> None:
        if not hasattr(self, "model_"):
            raise NotFittedError(self)

    def _model_device(self) -> torch.device:
        return next(self.model_.parameters()).device

    def _check_input(self, images: Any) -> int:
        n, size = _check_images(images, "images")
        if size != self.image_size_:
            raise ConfigError(
                f"This {type(self).__name__} was trained on {self.image_size_}x"
                f"{self.image_size_} images; got {size}x{size}.",
                "Embed images of the training size.",
            )
        return n

    def encode(self, images: Any) -> np.ndarray:
        """Embed images: ``mu`` of each, as ``(N, z_dim)`` float32.

        Args:
            images: ``(N, 3, s, s)`` uint8, or float in [0, 1]; numpy, h5py or torch (CPU).

        Returns:
            ``(N, z_dim)`` float32 numpy array.

        Raises:
            NotFittedError: before ``fit`` or ``load``.
            ConfigError: for images of another size or shape.
        """
        self._check_fitted()
        n = self._check_input(images)
        device = self._model_device()
        out = np.empty((n, self.z_dim), dtype=np.float32)
        self.model_.eval()
        with torch.inference_mode():
            for start, batch in _batches(images):
                mu, _ = self.model_.encode(_to_unit(batch.to(device)))
                out[start:start + len(batch)] = mu.float().cpu().numpy()
        return out

    def _decoder(self, decoder: DecoderChoice) -> nn.Module:
        if decoder == "original":
            return self.model_.decoder
        if decoder == "retrained":
            if not hasattr(self, "retrained_decoder_"):
                raise ConfigError(
                    f"This {type(self).__name__} has no retrained decoder.",
                    "Call 'retrain_decoder' first, or use decoder='original'.",
                )
            return self.retrained_decoder_
        raise ConfigError(f"Unknown decoder {decoder!r}.", "Choose 'original' or 'retrained'.")

    def _reconstructions(self, images: Any, decoder: DecoderChoice):
        """Yield ``(start, x, x_hat)`` float32 batches on the model's device."""
        self._check_fitted()
        self._check_input(images)
        net = self._decoder(decoder).eval()
        device = self._model_device()
        self.model_.eval()
        with torch.inference_mode():
            for start, batch in _batches(images):
                x = _to_unit(batch.to(device))
                mu, _ = self.model_.encode(x)
                yield start, x, net(mu).float()

    def reconstruct(self, images: Any, *, decoder: DecoderChoice = "original") -> np.ndarray:
        """Decode each image's ``mu``: float32 ``(N, 3, s, s)`` in [0, 1] (Table VIII, Fig. 6).

        Args:
            images: as for :meth:`encode`.
            decoder: ``"original"`` (trained with the encoder's own loss) or ``"retrained"``
                (from :meth:`retrain_decoder`).
        """
        self._check_fitted()
        n, s = self._check_input(images), self.image_size_
        out = np.empty((n, 3, s, s), dtype=np.float32)
        for start, _, recon in self._reconstructions(images, decoder):
            out[start:start + len(recon)] = recon.cpu().numpy()
        return out

    def reconstruction_error(
        self, images: Any, *, decoder: DecoderChoice = "original", metric: str = "l1"
    ) -> float:
        """Mean absolute (``"l1"``) or squared (``"mse"``) pixel error over all images.

        Computed batch by batch and averaged over every pixel of every image, so large test
        splits never sit in memory as float.
        """
        if metric not in ("l1", "mse"):
            raise ConfigError(f"Unknown metric {metric!r}.", "Choose 'l1' or 'mse'.")
        total, count = 0.0, 0
        for _, x, recon in self._reconstructions(images, decoder):
            diff = recon - x
            total += float((diff.abs() if metric == "l1" else diff.pow(2)).double().sum())
            count += diff.numel()
        return total / max(count, 1)

    def retrain_decoder(
        self,
        train_images: Any,
        val_images: Any,
        *,
        max_epochs: int,
        reinitialize: bool | None = None,
        progress: Any = None,
    ) -> dict[str, Any]:
        """Retrain the decoder alone with pixel MSE on the frozen embeddings (Table VIII).

        The embeddings (``mu``, eval mode) are computed once; the encoder is never touched, so
        :meth:`encode` and :attr:`fingerprint` are unchanged. Training works on a *copy* of the
        decoder (fine-tuned from the trained one, or freshly initialised with
        ``reinitialize=True``), kept as ``retrained_decoder_`` beside the original; use
        ``reconstruct(..., decoder="retrained")``. It is not saved by :meth:`save`. Adam,
        batch size, learning rate, precision, seed and early stopping are the encoder's own.
        The images are held or streamed exactly as in :meth:`fit` (never tiled as a whole).

        Args:
            train_images: images whose embeddings train the decoder.
            val_images: images for early stopping.
            max_epochs: most epochs to run.
            reinitialize: start from random weights instead of the trained decoder; ``None``
                follows the encoder's ``decoder_retraining`` setting.
            progress: optional ``rich`` progress.

        Returns:
            JSON-ready stats: ``history``, ``n_epochs``, ``best_epoch``, ``best_val_loss``
            (pixel MSE), ``stopped_early``, ``train_seconds``, ``images_per_second``,
            ``reinitialized``.
        """
        self._check_fitted()
        if reinitialize is None:
            self._validate_params()
            reinitialize = self.decoder_retraining == "reinitialize"
        n_train = self._check_input(train_images)
        n_val = self._check_input(val_images)
        device = self._model_device()
        train, val = _training_splits(train_images, val_images, device)
        train_z = self._embed_tensor(train)
        val_z = self._embed_tensor(val)
        decoder = copy.deepcopy(self.model_.decoder)
        if reinitialize:
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(self.seed)
                fresh = FourLayerCVAE(self.z_dim, self.image_size_).decoder
            decoder.load_state_dict(fresh.state_dict())

        def loss(z: torch.Tensor, images: torch.Tensor) -> torch.Tensor:
            return F.mse_loss(decoder(z).float(), _to_unit(images))

        result = fit_module(
            decoder,
            lambda batch: loss(_take(train_z, batch), train.take(batch)),
            lambda batch: loss(_take(val_z, batch), val.take(batch)),
            n_train=n_train,
            n_val=n_val,
            optimizer=torch.optim.Adam(decoder.parameters(), lr=self.lr),
            batch_size=self.batch_size,
            max_epochs=max_epochs,
            seed=self.seed,
            device=device,
            precision=self.precision,
            progress=progress,
            description=f"retrain {self.name} decoder",
        )
        self.retrained_decoder_ = decoder.eval()
        self.decoder_retraining_ = {**result.to_dict(), "reinitialized": reinitialize}
        return dict(self.decoder_retraining_)

    def _embed_tensor(self, images: _TrainingImages) -> torch.Tensor:
        """``mu`` of a training split, batched, on the device; a plain tensor (autograd-safe)."""
        self.model_.eval()
        with torch.no_grad():
            parts = [
                self.model_.encode(_to_unit(images.take(slice(i, i + INFERENCE_BATCH))))[0]
                .float()
                for i in range(0, len(images), INFERENCE_BATCH)
            ]
        return torch.cat(parts)

    # ----- identity and storage --------------------------------------------------------------

    @property
    def embedding_dim(self) -> int:
        """Size of one embedding (``z_dim``)."""
        return self.z_dim

    @property
    def fingerprint(self) -> str:
        """sha256 of encoder name, config, image size, perceptual network and every weight.

        Computed from the live weights on each access (a few tens of ms), so it can never go
        stale; the retrained decoder is not part of it.

        Raises:
            NotFittedError: before ``fit`` or ``load``.
        """
        self._check_fitted()
        state = self.model_.state_dict()
        names = sorted(state)
        digest = sha256_arrays(*(state[k].detach().cpu().numpy() for k in names))
        return fingerprint(
            self.name,
            self.get_config(),
            {"image_size": self.image_size_, "perceptual": self.perceptual_},
            names,
            digest,
        )

    def training_stats(self) -> dict[str, Any]:
        """What fitting did, JSON-ready (recorded in ``config.json`` and in result records)."""
        self._check_fitted()
        return {
            "history": self.history_,
            "n_epochs": self.n_epochs_,
            "best_epoch": self.best_epoch_,
            "best_val_loss": self.best_val_loss_,
            "train_seconds": self.train_seconds_,
            "images_per_second": self.images_per_second_,
            "precision": self.precision_,
            "device": self.device_,
            # the loss network's identity: weights source and sha256 (None: pixel-wise loss)
            "perceptual": self.perceptual_,
            # stop_reason, still_improving, final_window_improvement, generalization_gap
            **convergence_verdict(self.history_, self.max_epochs),
        }

    def save(self, directory: str | Path) -> None:
        """Write ``model.safetensors`` (the state dict) and ``config.json`` into ``directory``.

        Each file is written under a temporary name and renamed into place; ``config.json``
        comes last, so its presence means the checkpoint is complete.

        Raises:
            NotFittedError: before ``fit`` or ``load``.
            StorageError: if the directory cannot be written.
        """
        from safetensors.torch import save_file

        self._check_fitted()
        directory = Path(directory)
        tensors = {k: v.detach().cpu().contiguous() for k, v in self.model_.state_dict().items()}
        with atomic_path(directory / "model.safetensors") as tmp:
            save_file(tensors, str(tmp), metadata={"format": "pt"})
        write_json(directory / "config.json", {
            "encoder": self.name,
            "class": type(self).__name__,
            "architecture": "FourLayerCVAE",
            "config": self.get_config(),
            "image_size": self.image_size_,
            "perceptual": self.perceptual_,
            "training": self.training_stats(),
            "fingerprint": self.fingerprint,
            "embench_version": __version__,
        })

    @classmethod
    def load(
        cls, directory: str | Path, *, device: str = "auto", home: str | Path | None = None,
        decoder_retraining: str = "finetune",
    ) -> FourLayerCVAEEncoder:
        """Rebuild a fitted encoder from :meth:`save`'s directory (safetensors; no pickle).

        Called on the base class it returns whichever of ``AE``, ``VAE``, ... was saved;
        called on a subclass it refuses a checkpoint of another one.

        Args:
            directory: what :meth:`save` wrote.
            device: where to put the model (``"auto"``, ``"cpu"``, ``"cuda"``).
            home: EMBENCH_HOME for the new instance.
            decoder_retraining: the new instance's evaluation setting (not saved).

        Raises:
            StorageError: if the files are missing or unreadable.
            ConfigError: if the checkpoint belongs to another encoder class.
        """
        from safetensors.torch import load_file

        directory = Path(directory)
        config_path, weights_path = directory / "config.json", directory / "model.safetensors"
        try:
            meta = json.loads(config_path.read_text())
            state = load_file(str(weights_path))
        except (OSError, ValueError, RuntimeError) as exc:
            raise StorageError(
                f"Cannot load a FourLayerCVAE checkpoint from {directory}: {exc}.",
                "Delete the directory and train again.",
            ) from exc
        target = _ENCODER_CLASSES.get(meta.get("class", ""))
        if target is None or (cls is not FourLayerCVAEEncoder and target is not cls):
            raise ConfigError(
                f"{directory} holds a {meta.get('class')!r} checkpoint, not a {cls.__name__}.",
                f"Load it with {meta.get('class')}.load or FourLayerCVAEEncoder.load.",
            )
        encoder = target(**meta["config"], device=device, home=home,
                         decoder_retraining=decoder_retraining)
        model = FourLayerCVAE(encoder.z_dim, int(meta["image_size"]))
        model.load_state_dict(state)
        encoder.model_ = model.to(resolve_device(device)).eval()
        encoder.image_size_ = int(meta["image_size"])
        encoder.perceptual_ = meta.get("perceptual")
        stats = meta["training"]
        encoder.history_ = stats["history"]
        encoder.n_epochs_ = stats["n_epochs"]
        encoder.best_epoch_ = stats["best_epoch"]
        encoder.best_val_loss_ = stats["best_val_loss"]
        encoder.train_seconds_ = stats["train_seconds"]
        encoder.images_per_second_ = stats["images_per_second"]
        encoder.precision_ = stats["precision"]
        encoder.device_ = stats["device"]
        return encoder

    def __repr__(self) -> str:
        params = ", ".join(f"{k}={v!r}" for k, v in self.get_params().items())
        return f"{type(self).__name__}({params})"


class AE(FourLayerCVAEEncoder):
    """Autoencoder (World Models CVAE, z = mu) trained with pixel-wise MSE.

    Args:
        z_dim: embedding size.
        max_epochs: most training epochs (early stopping, patience ``max(10, ceil(e / 20))``).
        batch_size: training batch size.
        lr: Adam learning rate.
        seed: seeds weight init, shuffling and (VAE) sampling noise.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, ``"bf16"`` (autocast) or ``"auto"`` (bf16 where native).
        decoder_retraining: how :meth:`retrain_decoder` starts for Table VIII: ``"finetune"``
            (from the trained decoder, the default) or ``"reinitialize"`` (fresh weights).
            Not part of the encoder's identity: it changes no weight of the encoder.
        home: EMBENCH_HOME (perceptual weights); not part of the fingerprint.
    """

    name = "ae"

    def __init__(self, z_dim: int = 64, *, max_epochs: int = 50, batch_size: int = 512,
                 lr: float = 1e-3, seed: int = 0, device: str = "auto", precision: str = "fp32",
                 decoder_retraining: str = "finetune",
                 home: str | Path | None = None) -> None:
        super().__init__(z_dim, max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed,
                         device=device, precision=precision,
                         decoder_retraining=decoder_retraining, home=home)


class VAE(FourLayerCVAEEncoder):
    """Variational autoencoder (World Models CVAE) trained with pixel-wise MSE + γ·KLD.

    Args:
        z_dim: embedding size (``mu`` is the embedding).
        max_epochs: most training epochs.
        batch_size: training batch size.
        lr: Adam learning rate.
        kld_weight: γ, the weight of the KL divergence term.
        seed: seeds weight init, shuffling and sampling noise.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where native).
        decoder_retraining: how :meth:`retrain_decoder` starts for Table VIII: ``"finetune"``
            (from the trained decoder, the default) or ``"reinitialize"`` (fresh weights).
            Not part of the encoder's identity: it changes no weight of the encoder.
        home: EMBENCH_HOME; not part of the fingerprint.
    """

    name = "vae"
    variational = True

    def __init__(self, z_dim: int = 64, *, max_epochs: int = 50, batch_size: int = 512,
                 lr: float = 1e-3, kld_weight: float = 0.01, seed: int = 0, device: str = "auto",
                 precision: str = "fp32", decoder_retraining: str = "finetune",
                 home: str | Path | None = None) -> None:
        super().__init__(z_dim, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
                         kld_weight=kld_weight, seed=seed, device=device, precision=precision,
                         decoder_retraining=decoder_retraining, home=home)


class PerceptualAE(FourLayerCVAEEncoder):
    """Autoencoder (World Models CVAE, z = mu) trained with perceptual loss (AlexNet features).

    Args:
        z_dim: embedding size.
        max_epochs: most training epochs.
        batch_size: training batch size.
        lr: Adam learning rate.
        seed: seeds weight init and shuffling.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where native).
        perceptual_network: torchvision network whose ``features`` give p (``"alexnet"``).
        perceptual_layer: p = ``features[:perceptual_layer]`` + Sigmoid.
        perceptual_weights: ``"imagenet"``, ``"random"`` or a path to a weights file.
        decoder_retraining: how :meth:`retrain_decoder` starts for Table VIII: ``"finetune"``
            (from the trained decoder, the default) or ``"reinitialize"`` (fresh weights).
            Not part of the encoder's identity: it changes no weight of the encoder.
        home: EMBENCH_HOME, where the perceptual weights are cached.
    """

    name = "p_ae"
    perceptual = True

    def __init__(self, z_dim: int = 64, *, max_epochs: int = 50, batch_size: int = 512,
                 lr: float = 1e-3, seed: int = 0, device: str = "auto", precision: str = "fp32",
                 perceptual_network: str = "alexnet", perceptual_layer: int = 5,
                 perceptual_weights: str = "imagenet", decoder_retraining: str = "finetune",
                 home: str | Path | None = None) -> None:
        super().__init__(z_dim, max_epochs=max_epochs, batch_size=batch_size, lr=lr, seed=seed,
                         device=device, precision=precision, perceptual_network=perceptual_network,
                         perceptual_layer=perceptual_layer, perceptual_weights=perceptual_weights,
                         decoder_retraining=decoder_retraining, home=home)


class PerceptualVAE(FourLayerCVAEEncoder):
    """Variational autoencoder (World Models CVAE) trained with perceptual loss + γ·KLD.

    Args:
        z_dim: embedding size (``mu`` is the embedding).
        max_epochs: most training epochs.
        batch_size: training batch size.
        lr: Adam learning rate.
        kld_weight: γ, the weight of the KL divergence term.
        seed: seeds weight init, shuffling and sampling noise.
        device: ``"auto"``, ``"cpu"`` or ``"cuda"``.
        precision: ``"fp32"``, ``"bf16"`` or ``"auto"`` (bf16 where native).
        perceptual_network: torchvision network whose ``features`` give p (``"alexnet"``).
        perceptual_layer: p = ``features[:perceptual_layer]`` + Sigmoid.
        perceptual_weights: ``"imagenet"``, ``"random"`` or a path to a weights file.
        decoder_retraining: how :meth:`retrain_decoder` starts for Table VIII: ``"finetune"``
            (from the trained decoder, the default) or ``"reinitialize"`` (fresh weights).
            Not part of the encoder's identity: it changes no weight of the encoder.
        home: EMBENCH_HOME, where the perceptual weights are cached.
    """

    name = "p_vae"
    variational = True
    perceptual = True

    def __init__(self, z_dim: int = 64, *, max_epochs: int = 50, batch_size: int = 512,
                 lr: float = 1e-3, kld_weight: float = 0.01, seed: int = 0, device: str = "auto",
                 precision: str = "fp32", perceptual_network: str = "alexnet",
                 perceptual_layer: int = 5, perceptual_weights: str = "imagenet",
                 decoder_retraining: str = "finetune",
                 home: str | Path | None = None) -> None:
        super().__init__(z_dim, max_epochs=max_epochs, batch_size=batch_size, lr=lr,
                         kld_weight=kld_weight, seed=seed, device=device, precision=precision,
                         perceptual_network=perceptual_network, perceptual_layer=perceptual_layer,
                         perceptual_weights=perceptual_weights,
                         decoder_retraining=decoder_retraining, home=home)


_ENCODER_CLASSES: dict[str, type[FourLayerCVAEEncoder]] = {
    cls.__name__: cls for cls in (AE, VAE, PerceptualAE, PerceptualVAE)
}
