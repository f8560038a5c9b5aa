"""sklearn-compatible probes: the paper's linear regressor and its MLPs (and a closed-form extra).

Both probes minimise the mean squared error between their outputs and the targets (one-hot
rows for classification, where ``predict`` returns the arg-max class). They are real sklearn
estimators: the constructor only stores keyword config, ``fit`` learns state whose names end in
``_`` and returns ``self``, and ``clone``, ``get_params``/``set_params`` and ``GridSearchCV``
work on them. ``kind`` decides whether a probe presents itself to sklearn as a regressor
(``score`` is R²) or a classifier (``score`` is accuracy). The paper's linear regressor
(:class:`LinearProbe`) is trained like its MLPs; :class:`LeastSquaresProbe` solves the same
linear map in closed form and is only ever reported as an extra.

:class:`MLPProbe` here trains one network with plain ``torch.nn`` modules; the probe search
(:mod:`embench.probes.search`) trains a whole grid of them as one batched computation and
reproduces this loop exactly (same initialisation, same batch order, same early stopping).
"""

from __future__ import annotations

import itertools
import math
import threading
from concurrent.futures import CancelledError
from dataclasses import dataclass, field
from typing import Any

import numpy as np
import torch
from sklearn.base import BaseEstimator
from sklearn.exceptions import NotFittedError as SklearnNotFittedError
from sklearn.metrics import accuracy_score, r2_score
from sklearn.utils import ClassifierTags, RegressorTags
from sklearn.utils.multiclass import check_classification_targets
from sklearn.utils.validation import check_array, validate_data
from torch import nn

from embench.devices import resolve_device  # the one device resolver
from embench.errors import ConfigError, NotFittedError
from embench.probes.metrics import check_kind, one_hot, probe_loss
from embench.protocols import patience_for

ACTIVATIONS = ("relu", "sigmoid")
OUTPUTS = ("none", "softmax")

#: Rows per forward pass when predicting or validating (bounds memory, not results).
_CHUNK_ROWS = 65536


# --------------------------------------------------------------------------------------------
# Pieces shared with the batched search: seeds, initialisation, batch order, results.
# --------------------------------------------------------------------------------------------


def seed_streams(seed: int) -> tuple[int, int, int]:
    """Independent seeds for (weight initialisation, batch shuffling, validation split)."""
    init_seed, shuffle_seed, split_seed = np.random.SeedSequence(seed).generate_state(3)
    return int(init_seed), int(shuffle_seed), int(split_seed)


def init_linear(
    fan_in: int, fan_out: int, generator: torch.Generator
) -> tuple[torch.Tensor, torch.Tensor]:
    """Draw a ``(fan_out, fan_in)`` weight and a bias as ``torch.nn.Linear`` does by default.

    ``nn.Linear`` uses Kaiming-uniform with ``a=sqrt(5)``, i.e. U(-1/sqrt(fan_in), 1/sqrt(fan_in))
    for the weight, and the same bound for the bias. Drawing from an explicit generator lets the
    batched search give every probe exactly the weights a standalone probe would get.
    """
    bound = 1.0 / math.sqrt(fan_in)
    weight = torch.rand((fan_out, fan_in), generator=generator) * (2 * bound) - bound
    bias = torch.rand((fan_out,), generator=generator) * (2 * bound) - bound
    return weight, bias


def mlp_layers(sizes: list[int], activation: str,
               generator: torch.Generator) -> list[nn.Module]:
    """``nn.Linear`` layers for ``sizes`` with hidden activations, drawn as the search draws.

    Weights come from :func:`init_linear`, layer by layer (weight then bias), from
    ``generator``; the activation (``relu`` or ``sigmoid``) follows every layer but the last.
    """
    layers: list[nn.Module] = []
    for index, (fan_in, fan_out) in enumerate(itertools.pairwise(sizes)):
        linear = nn.Linear(fan_in, fan_out)
        weight, bias = init_linear(fan_in, fan_out, generator)
        with torch.no_grad():
            linear.weight.copy_(weight)
            linear.bias.copy_(bias)
        layers.append(linear)
        if index < len(sizes) - 2:
            layers.append(nn.ReLU() if activation == "relu" else nn.Sigmoid())
    return layers


def epoch_order(n: int, generator: torch.Generator) -> torch.Tensor:
    """The shuffled sample order of one epoch (one draw from ``generator`` per epoch)."""
    return torch.randperm(n, generator=generator)


@dataclass
class MLPFit:
    """What training one MLP produced (weights as ``(in, out)`` arrays, sklearn's layout)."""

    coefs: list[np.ndarray]
    intercepts: list[np.ndarray]
    best_val_loss: float
    best_epoch: int
    epochs_run: int
    val_loss_curve: list[float] = field(default_factory=list)
    train_loss_curve: list[float] = field(default_factory=list)


def mlp_forward(
    x: torch.Tensor,
    weights: list[torch.Tensor],
    biases: list[torch.Tensor],
    activation: str,
    output: str,
) -> torch.Tensor:
    """Forward pass of a fitted MLP from ``(in, out)`` weights (used by ``predict``)."""
    act = torch.relu if activation == "relu" else torch.sigmoid
    h = x
    for weight, bias in zip(weights[:-1], biases[:-1], strict=True):
        h = act(torch.addmm(bias, h, weight))
    out = torch.addmm(biases[-1], h, weights[-1])
    return torch.softmax(out, dim=1) if output == "softmax" else out


class ProbeNotFittedError(NotFittedError, SklearnNotFittedError):
    """A probe used before ``fit``: embench's error that sklearn's handlers also recognise."""


# --------------------------------------------------------------------------------------------
# The common base: kind, sklearn tags, input checks, target encoding, score.
# --------------------------------------------------------------------------------------------


class _Probe(BaseEstimator):
    """Behaviour both probes share; subclasses define ``fit`` and ``_raw_outputs``."""

    kind: str

    def __sklearn_tags__(self):
        """Present the probe to sklearn as a classifier or a regressor, as ``kind`` says."""
        tags = super().__sklearn_tags__()
        if getattr(self, "kind", None) == "classification":
            tags.estimator_type = "classifier"
            tags.classifier_tags = ClassifierTags()
        else:
            tags.estimator_type = "regressor"
            tags.regressor_tags = RegressorTags()
            tags.target_tags.multi_output = True
        tags.target_tags.required = True
        return tags

    def __sklearn_is_fitted__(self) -> bool:
        return hasattr(self, "coefs_")

    def _check_fitted(self) -> None:
        if not self.__sklearn_is_fitted__():
            raise ProbeNotFittedError(self)

    def _validate_fit_data(self, X: Any, y: Any) -> tuple[np.ndarray, np.ndarray]:
        """Check ``X``/``y`` and set ``n_features_in_``; classification labels stay as given."""
        classification = self.kind == "classification"
        X, y = validate_data(
            self,
            X,
            y,
            dtype=np.float32,
            multi_output=not classification,
            y_numeric=not classification,
        )
        if classification:
            check_classification_targets(y)
        return X, y

    def _validate_predict_data(self, X: Any) -> np.ndarray:
        self._check_fitted()
        return validate_data(self, X, dtype=np.float32, reset=False)

    def _encode_targets(self, y: np.ndarray) -> np.ndarray:
        """Targets as the probe's outputs see them: one-hot rows, or ``(N, k)`` float32 values."""
        if self.kind == "classification":
            return one_hot(y, self.classes_)
        y = np.asarray(y, dtype=np.float32)
        return y.reshape(-1, 1) if y.ndim == 1 else y

    def _set_target_info(self, y: np.ndarray, classes: Any = None, extra: Any = None) -> None:
        """Learn ``classes_`` (classification) or the target layout (regression)."""
        if self.kind == "classification":
            labels = [np.asarray(y).reshape(-1)]
            if extra is not None:
                labels.append(np.asarray(extra).reshape(-1))
            if classes is not None:
                labels.append(np.asarray(classes).reshape(-1))
            self.classes_ = np.unique(np.concatenate(labels))
            self.n_outputs_ = len(self.classes_)
        else:
            self._target_1d = np.ndim(y) == 1
            self.n_outputs_ = 1 if np.ndim(y) == 1 else int(np.shape(y)[1])

    def _raw_outputs(self, X: np.ndarray) -> np.ndarray:
        raise NotImplementedError

    def predict_outputs(self, X: Any) -> np.ndarray:
        """The raw ``(N, k)`` outputs the probe's MSE is measured on.

        For regression these are the predictions; for classification they are the scores per
        class (softmax probabilities when ``output="softmax"``), one column per ``classes_``.

        Args:
            X: ``(N, D)`` embeddings.

        Returns:
            ``(N, k)`` float32 array.

        Raises:
            NotFittedError: before ``fit``.
        """
        return self._raw_outputs(self._validate_predict_data(X))

    def predict(self, X: Any) -> np.ndarray:
        """Predict targets (regression) or class labels (classification).

        Args:
            X: ``(N, D)`` embeddings.

        Returns:
            Regression: float32 ``(N, k)``, or ``(N,)`` when the probe was fitted on a 1-D
            ``y`` (sklearn's convention). Classification: ``(N,)`` labels from ``classes_``.

        Raises:
            NotFittedError: before ``fit``.
        """
        outputs = self.predict_outputs(X)
        if self.kind == "classification":
            return self.classes_[np.argmax(outputs, axis=1)]
        return outputs[:, 0] if self._target_1d else outputs

    def loss(self, X: Any, y: Any) -> float:
        """The selection loss: MSE between outputs and (one-hot) targets over all samples.

        Args:
            X: ``(N, D)`` embeddings.
            y: targets, as given to ``fit``.

        Returns:
            The mean squared error over all ``N * k`` output entries.

        Raises:
            NotFittedError: before ``fit``.
        """
        return probe_loss(self.predict_outputs(X), self._encode_targets(np.asarray(y)))

    def score(self, X: Any, y: Any, sample_weight: Any = None) -> float:
        """Accuracy (classification) or R² (regression), as sklearn's mixins define them.

        Args:
            X: ``(N, D)`` embeddings.
            y: true targets or labels.
            sample_weight: optional per-sample weights.

        Returns:
            The score; higher is better.

        Raises:
            NotFittedError: before ``fit``.
        """
        if self.kind == "classification":
            return float(accuracy_score(y, self.predict(X), sample_weight=sample_weight))
        return float(r2_score(y, self.predict(X), sample_weight=sample_weight))


# --------------------------------------------------------------------------------------------
# LinearProbe
# --------------------------------------------------------------------------------------------


class LeastSquaresProbe(_Probe):
    """A linear map fitted in closed form by least squares: an extra, not the paper's probe.

    The paper trains its linear regressor like the MLPs (:class:`LinearProbe`: Adam, early
    stopping), which can stop short of the least-squares minimum, or, with early stopping on
    validation loss, stop before over-fitting it. This probe computes that minimum directly
    (``numpy.linalg.lstsq`` in float64 on centred data, so the bias is not penalised; the
    minimum-norm solution when ``X`` is rank deficient). The probe search records it as the
    candidate ``least_squares`` beside the paper's probes; it is never selected as "linear".

    Args:
        kind: ``"regression"`` or ``"classification"`` (one-hot targets, arg-max prediction).

    Attributes:
        coefs_: ``[(D, k) float64 weights]``.
        intercepts_: ``[(k,) float64 bias]``.
        classes_: class labels (classification only).
        n_features_in_: ``D``.
        n_outputs_: ``k``.

    Example:
        >>> probe = LeastSquaresProbe(kind="regression").fit(X_train, y_train)  # doctest: +SKIP
        >>> probe.loss(X_val, y_val)  # doctest: +SKIP
    """

    def __init__(self, kind: str = "regression") -> None:
        self.kind = kind

    def fit(self, X: Any, y: Any, *, classes: Any = None) -> LeastSquaresProbe:
        """Solve the least-squares problem.

        Args:
            X: ``(N, D)`` embeddings.
            y: ``(N,)`` or ``(N, k)`` targets (regression) or ``(N,)`` labels (classification).
            classes: all class labels, when some may be missing from ``y`` (their outputs are
                then always 0); defaults to the labels in ``y``.

        Returns:
            self.

        Raises:
            ConfigError: for an unknown ``kind``.
            ValueError: for malformed or non-finite data.
        """
        check_kind(self.kind, type(self).__name__)
        X, y = self._validate_fit_data(X, y)
        self._set_target_info(y, classes=classes)
        targets = self._encode_targets(y).astype(np.float64)
        X64 = X.astype(np.float64)
        x_mean, y_mean = X64.mean(axis=0), targets.mean(axis=0)
        coef, *_ = np.linalg.lstsq(X64 - x_mean, targets - y_mean, rcond=None)
        self.coefs_ = [coef]
        self.intercepts_ = [y_mean - x_mean @ coef]
        return self

    def _raw_outputs(self, X: np.ndarray) -> np.ndarray:
        outputs = X.astype(np.float64) @ self.coefs_[0] + self.intercepts_[0]
        return outputs.astype(np.float32)


# --------------------------------------------------------------------------------------------
# MLPProbe
# --------------------------------------------------------------------------------------------


class MLPProbe(_Probe):
    """An MLP probe trained as in the paper: MSE on the (one-hot) targets, Adam, early stopping.

    Training shuffles the training set every epoch into mini-batches of ``batch_size`` (the last
    one may be smaller), takes one Adam step per batch on that batch's mean squared error,
    then measures the validation MSE over all validation samples under ``torch.no_grad()``.
    Training stops after ``patience`` epochs without a strictly lower validation loss, or at
    ``max_epochs``; the weights of the best validation epoch are kept. Weights start as
    ``torch.nn.Linear``'s default initialisation, drawn from ``seed``.

    Args:
        hidden: hidden layer widths, e.g. ``(128, 64)``.
        activation: hidden activation, ``"relu"`` or ``"sigmoid"``.
        output: ``"none"`` (linear outputs) or ``"softmax"`` (classification only).
        kind: ``"regression"`` or ``"classification"``.
        max_epochs: most epochs to train.
        batch_size: mini-batch size.
        lr: Adam learning rate.
        patience: epochs without improvement before stopping; ``None`` means the paper's
            ``max(10, ceil(max_epochs / 20))``.
        validation_fraction: share of ``X`` held out for early stopping when ``fit`` gets no
            ``X_val``.
        seed: seeds initialisation, batch order and the validation split.
        device: torch device to train on (``"cpu"``, ``"cuda"``, ...).

    Attributes:
        coefs_: per layer, ``(in, out)`` float32 weights.
        intercepts_: per layer, ``(out,)`` float32 biases.
        classes_: class labels (classification only).
        n_features_in_: input dimension.
        n_outputs_: output dimension ``k``.
        n_epochs_: epochs actually run.
        best_epoch_: the epoch (1-based) whose weights were kept.
        best_val_loss_: validation MSE of the kept weights.
        val_loss_curve_: validation MSE after every epoch.
        train_loss_curve_: training MSE of every epoch (over all samples, during training).

    Example:
        >>> probe = MLPProbe(hidden=(64,), kind="classification", max_epochs=50)
        >>> probe.fit(X_train, y_train, X_val, y_val).predict(X_test)  # doctest: +SKIP
    """

    def __init__(
        self,
        hidden: tuple[int, ...] = (64,),
        activation: str = "relu",
        output: str = "none",
        kind: str = "regression",
        max_epochs: int = 500,
        batch_size: int = 512,
        lr: float = 1e-3,
        patience: int | None = None,
        validation_fraction: float = 0.2,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.hidden = hidden
        self.activation = activation
        self.output = output
        self.kind = kind
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.device = device

    def _check_params(self) -> None:
        """Refuse configurations outside the probe's space, naming what is allowed."""
        name = type(self).__name__
        check_kind(self.kind, name)
        check_mlp_config(self.hidden, self.activation, self.output, self.kind, owner=name,
                         allow_linear=isinstance(self, LinearProbe))
        for key in ("max_epochs", "batch_size"):
            value = getattr(self, key)
            if not isinstance(value, (int, np.integer)) or value < 1:
                raise ConfigError(f"{name} got {key}={value!r}.", "Use a positive integer.")
        if self.patience is not None and (
            not isinstance(self.patience, (int, np.integer)) or self.patience < 1
        ):
            raise ConfigError(
                f"{name} got patience={self.patience!r}.",
                "Use a positive integer, or None for the paper's rule.",
            )
        if not self.lr > 0:
            raise ConfigError(f"{name} got lr={self.lr!r}.", "Use a positive learning rate.")
        if not 0 < self.validation_fraction < 1:
            raise ConfigError(
                f"{name} got validation_fraction={self.validation_fraction!r}.",
                "Use a number strictly between 0 and 1.",
            )

    def fit(
        self,
        X: Any,
        y: Any,
        X_val: Any = None,
        y_val: Any = None,
        *,
        classes: Any = None,
    ) -> MLPProbe:
        """Train the network with early stopping on validation MSE.

        Args:
            X: ``(N, D)`` training embeddings.
            y: ``(N,)`` or ``(N, k)`` targets (regression) or ``(N,)`` labels (classification).
            X_val: validation embeddings; when omitted, ``validation_fraction`` of ``X`` is
                held out (chosen with ``seed``).
            y_val: validation targets, given together with ``X_val``.
            classes: all class labels (defaults to those in ``y`` and ``y_val``).

        Returns:
            self.

        Raises:
            ConfigError: for a configuration outside the probe's space (e.g. softmax output
                for regression) or an unavailable device.
            ValueError: for malformed or non-finite data, or too few samples to hold some out.
        """
        self._check_params()
        device = resolve_device(self.device)
        X, y = self._validate_fit_data(X, y)
        if (X_val is None) != (y_val is None):
            raise ValueError("Pass X_val and y_val together, or neither.")
        if X_val is None:
            X, y, X_val, y_val = _hold_out(
                X, y, self.validation_fraction, seed_streams(self.seed)[2]
            )
        else:
            X_val = check_array(X_val, dtype=np.float32)
            if X_val.shape[1] != X.shape[1]:
                raise ValueError(f"X_val has {X_val.shape[1]} features, but X has {X.shape[1]}.")
            if self.kind == "classification":
                y_val = np.asarray(y_val).reshape(-1)
            else:
                y_val = check_array(y_val, ensure_2d=False, dtype=np.float32)
                if y_val.ndim != np.ndim(y) or y_val.shape[1:] != np.shape(y)[1:]:
                    raise ValueError(
                        f"y_val has shape {y_val.shape} but y has shape {np.shape(y)}; "
                        "give them the same number of target columns."
                    )
            if len(y_val) != len(X_val):
                raise ValueError(f"X_val has {len(X_val)} rows but y_val has {len(y_val)}.")
        self._set_target_info(y, classes=classes, extra=y_val)
        fitted = train_mlp(
            X,
            self._encode_targets(y),
            X_val,
            self._encode_targets(y_val),
            hidden=tuple(int(h) for h in self.hidden),
            activation=self.activation,
            output=self.output,
            max_epochs=int(self.max_epochs),
            batch_size=int(self.batch_size),
            lr=float(self.lr),
            patience=self._patience(),
            seed=int(self.seed),
            device=device,
        )
        self._set_fitted(fitted)
        return self

    def _patience(self) -> int:
        return patience_for(self.max_epochs) if self.patience is None else int(self.patience)

    def _set_fitted(self, fitted: MLPFit) -> None:
        """Adopt trained weights and history (also used by the batched search)."""
        self.coefs_ = [np.asarray(w, dtype=np.float32) for w in fitted.coefs]
        self.intercepts_ = [np.asarray(b, dtype=np.float32) for b in fitted.intercepts]
        self.n_epochs_ = int(fitted.epochs_run)
        self.best_epoch_ = int(fitted.best_epoch)
        self.best_val_loss_ = float(fitted.best_val_loss)
        self.val_loss_curve_ = list(fitted.val_loss_curve)
        self.train_loss_curve_ = list(fitted.train_loss_curve)

    def _raw_outputs(self, X: np.ndarray) -> np.ndarray:
        device = resolve_device(self.device)
        weights = [torch.from_numpy(w).to(device) for w in self.coefs_]
        biases = [torch.from_numpy(b).to(device) for b in self.intercepts_]
        chunks = []
        with torch.no_grad():
            for start in range(0, len(X), _CHUNK_ROWS):
                x = torch.from_numpy(X[start : start + _CHUNK_ROWS]).to(device)
                chunks.append(mlp_forward(x, weights, biases, self.activation, self.output).cpu())
        if not chunks:
            return np.zeros((0, self.n_outputs_), dtype=np.float32)
        return torch.cat(chunks).numpy()


# --------------------------------------------------------------------------------------------
# LinearProbe
# --------------------------------------------------------------------------------------------


class LinearProbe(MLPProbe):
    """The paper's linear regressor: one linear layer trained exactly like the MLPs.

    As in the paper (Tables V-VII) and the authors' code (a predictor with no hidden layer):
    MSE on the (one-hot) targets, Adam, mini-batches, early stopping on validation MSE with
    the probe patience, best-validation weights kept. Everything but the architecture is
    :class:`MLPProbe`'s; a probe trained here with ``seed`` sees the same initialisation
    stream and batch order as an MLP with that seed. The closed-form fit of the same map is
    :class:`LeastSquaresProbe`.

    Args:
        kind: ``"regression"`` or ``"classification"``.
        max_epochs: most epochs to train.
        batch_size: mini-batch size.
        lr: Adam learning rate.
        patience: epochs without improvement before stopping; ``None`` means the paper's
            ``max(10, ceil(max_epochs / 20))``.
        validation_fraction: share of ``X`` held out when ``fit`` gets no ``X_val``.
        seed: seeds initialisation, batch order and the validation split.
        device: torch device to train on.

    Attributes:
        coefs_: ``[(D, k) float32 weights]``.
        intercepts_: ``[(k,) float32 bias]``.
        n_epochs_, best_epoch_, best_val_loss_, val_loss_curve_, train_loss_curve_: as for
            :class:`MLPProbe`.

    Example:
        >>> probe = LinearProbe(kind="regression", max_epochs=100)
        >>> probe.fit(X_train, y_train, X_val, y_val).predict(X_test)  # doctest: +SKIP
    """

    #: No hidden layer; the activation is never applied.
    hidden = ()
    activation = "relu"
    output = "none"

    def __init__(
        self,
        kind: str = "regression",
        max_epochs: int = 500,
        batch_size: int = 512,
        lr: float = 1e-3,
        patience: int | None = None,
        validation_fraction: float = 0.2,
        seed: int = 0,
        device: str = "cpu",
    ) -> None:
        self.kind = kind
        self.max_epochs = max_epochs
        self.batch_size = batch_size
        self.lr = lr
        self.patience = patience
        self.validation_fraction = validation_fraction
        self.seed = seed
        self.device = device


def check_mlp_config(
    hidden: Any, activation: str, output: str, kind: str, owner: str = "MLPProbe",
    allow_linear: bool = False,
) -> None:
    """Refuse an MLP configuration outside the probe space, saying what is allowed.

    Args:
        allow_linear: accept ``hidden=()`` (no hidden layer: the linear probe).

    Raises:
        ConfigError: for empty (unless ``allow_linear``) or non-positive ``hidden``, an
            unknown activation or output, or a softmax output on a regression task.
    """
    if (
        not isinstance(hidden, (tuple, list))
        or (not hidden and not allow_linear)
        or not all(isinstance(h, (int, np.integer)) and h > 0 for h in hidden)
    ):
        raise ConfigError(
            f"{owner} got hidden={hidden!r}.",
            "Use a non-empty tuple of positive layer widths, e.g. (128, 64).",
        )
    if activation not in ACTIVATIONS:
        raise ConfigError(
            f"{owner} got activation={activation!r}.",
            f"Allowed: {', '.join(map(repr, ACTIVATIONS))}.",
        )
    if output not in OUTPUTS:
        raise ConfigError(
            f"{owner} got output={output!r}.", f"Allowed: {', '.join(map(repr, OUTPUTS))}."
        )
    if output == "softmax" and kind != "classification":
        raise ConfigError(
            f"{owner} got output='softmax' with kind={kind!r}.",
            "A softmax output is only for classification; use output='none'.",
        )


def _hold_out(
    X: np.ndarray, y: np.ndarray, fraction: float, seed: int
) -> tuple[np.ndarray, np.ndarray, np.ndarray, np.ndarray]:
    """Split off a random ``fraction`` of the rows for validation."""
    n = len(X)
    if n < 2:
        raise ValueError(
            f"MLPProbe got n_samples={n}; it needs at least 2 to hold some out for early "
            "stopping. Pass more samples, or X_val and y_val explicitly."
        )
    n_val = min(max(int(round(fraction * n)), 1), n - 1)
    order = np.random.default_rng(seed).permutation(n)
    train, val = order[n_val:], order[:n_val]
    return X[train], y[train], X[val], y[val]


def squared_error_sum(outputs: torch.Tensor, targets: torch.Tensor) -> torch.Tensor:
    """Sum of squared errors over the last two dims, in float64 (see ``probe_loss``)."""
    diff = outputs.double() - targets.double()
    return (diff * diff).sum(dim=(-2, -1))


def _adam_step(params: list[torch.Tensor], lr: float, device: torch.device) -> Any:
    """An Adam step for ``params`` (default betas and eps), as a function of no arguments.

    On CPU it is ``torch.optim.Adam``'s own single-tensor arithmetic, op for op (so the same
    numbers), without its per-step Python bookkeeping (half a millisecond, more than a small
    probe's whole step); elsewhere it is ``torch.optim.Adam`` itself.
    """
    if device.type != "cpu":
        optimizer = torch.optim.Adam(params, lr=lr)
        return optimizer.step
    beta1, beta2 = 0.9, 0.999
    moments = [(torch.zeros_like(p), torch.zeros_like(p)) for p in params]
    count = [0]

    def step() -> None:
        count[0] += 1
        step_size = lr / (1 - beta1 ** float(count[0]))
        bias_correction2_sqrt = (1 - beta2 ** float(count[0])) ** 0.5
        with torch.no_grad():
            for param, (exp_avg, exp_avg_sq) in zip(params, moments, strict=True):
                grad = param.grad
                exp_avg.lerp_(grad, 1 - beta1)
                exp_avg_sq.mul_(beta2).addcmul_(grad, grad, value=1 - beta2)
                denom = (exp_avg_sq.sqrt() / bias_correction2_sqrt).add_(1e-8)
                param.addcdiv_(exp_avg, denom, value=-step_size)

    return step


def train_mlp(
    X: np.ndarray,
    Y: np.ndarray,
    X_val: np.ndarray,
    Y_val: np.ndarray,
    *,
    hidden: tuple[int, ...],
    activation: str,
    output: str,
    max_epochs: int,
    batch_size: int,
    lr: float,
    patience: int,
    seed: int,
    device: torch.device,
    cancel: threading.Event | None = None,
) -> MLPFit:
    """Train one MLP with plain ``torch.nn`` modules; targets ``Y`` are ``(N, k)`` float32.

    This is the reference the batched search reproduces: the same ``seed_streams`` draws, the
    same ``init_linear`` order (layer by layer, weight then bias), one ``epoch_order`` per
    epoch, the same early-stopping rule.

    Raises:
        CancelledError: when ``cancel`` is set (checked before every epoch), so that a search
            that trains this on a thread beside others can stop it.
    """
    init_seed, shuffle_seed, _ = seed_streams(seed)
    init_gen = torch.Generator().manual_seed(init_seed)
    shuffle_gen = torch.Generator().manual_seed(shuffle_seed)
    layers = mlp_layers([X.shape[1], *hidden, Y.shape[1]], activation, init_gen)
    if output == "softmax":
        layers.append(nn.Softmax(dim=1))
    model = nn.Sequential(*layers).to(device)
    step = _adam_step(list(model.parameters()), lr, device)

    x_train, y_train = torch.from_numpy(X).to(device), torch.from_numpy(Y).to(device)
    x_val, y_val = torch.from_numpy(X_val).to(device), torch.from_numpy(Y_val).to(device)
    n, n_val_entries = len(x_train), Y_val.size
    best_val, best_epoch, best_state, waited = math.inf, 0, None, 0
    val_curve: list[float] = []
    train_curve: list[float] = []
    epoch = 0
    for epoch in range(1, max_epochs + 1):
        if cancel is not None and cancel.is_set():
            raise CancelledError("train_mlp was cancelled")
        model.train()
        order = epoch_order(n, shuffle_gen).to(device)
        train_sum = torch.zeros((), dtype=torch.float64, device=device)
        for start in range(0, n, batch_size):
            batch = order[start : start + batch_size]
            x, y = torch.index_select(x_train, 0, batch), torch.index_select(y_train, 0, batch)
            loss = nn.functional.mse_loss(model(x), y)
            for param in model.parameters():
                param.grad = None
            loss.backward()
            step()
            train_sum += loss.detach().double() * len(batch)
        model.eval()
        with torch.no_grad():
            sse = sum(
                squared_error_sum(model(x_val[s : s + _CHUNK_ROWS]), y_val[s : s + _CHUNK_ROWS])
                for s in range(0, len(x_val), _CHUNK_ROWS)
            )
        val_loss = float(sse) / n_val_entries
        val_curve.append(val_loss)
        train_curve.append(float(train_sum) / n)
        if val_loss < best_val:
            best_val, best_epoch, waited = val_loss, epoch, 0
            best_state = {k: v.detach().clone() for k, v in model.state_dict().items()}
        else:
            waited += 1
            if waited >= patience:
                break
    if best_state is not None:
        model.load_state_dict(best_state)
    linears = [m for m in model if isinstance(m, nn.Linear)]
    return MLPFit(
        coefs=[m.weight.detach().T.contiguous().cpu().numpy() for m in linears],
        intercepts=[m.bias.detach().cpu().numpy() for m in linears],
        best_val_loss=best_val,
        best_epoch=best_epoch,
        epochs_run=epoch,
        val_loss_curve=val_curve,
        train_loss_curve=train_curve,
    )
