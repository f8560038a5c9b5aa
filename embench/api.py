"""The Python API for notebooks: :func:`evaluate` and :class:`TorchEncoder`.

:func:`evaluate` does what ``embench run`` does (it calls :func:`embench.runner.run`) and
returns the same typed :class:`~embench.results.RunRecord` that it writes under
``EMBENCH_HOME/results``. Besides registered names and ``module.path:factory`` strings it
takes encoder objects, and wraps a ``torch.nn.Module`` or any callable from an image batch to
embeddings in a :class:`TorchEncoder`.
"""

from __future__ import annotations

import contextlib
import hashlib
import inspect
import logging
import re
from collections.abc import Callable, Iterator
from pathlib import Path
from typing import Any

import numpy as np

from embench.devices import resolve_device
from embench.errors import ConfigError, EncoderContractError, PluginError
from embench.progress import make_progress
from embench.registry import load_task
from embench.results import RunRecord, load_record
from embench.runner import RunConfig, run
from embench.storage import fingerprint as content_fingerprint
from embench.storage import safe_name

__all__ = ["TorchEncoder", "evaluate"]

#: Where messages go when no progress display is shown (``progress=False``, or not a terminal).
logger = logging.getLogger("embench")

#: The members of the encoder contract (:class:`embench.protocols.Encoder`).
_CONTRACT = ("fit", "encode", "fingerprint", "embedding_dim")


def evaluate(
    encoder: Any,
    task: str,
    *,
    preset: str = "quick",
    z: int | None = None,
    seed: int = 0,
    home: str | Path | None = None,
    device: str = "auto",
    precision: str = "fp32",
    progress: bool = True,
    options: dict[str, Any] | None = None,
    task_options: dict[str, Any] | None = None,
) -> RunRecord:
    """Evaluate one encoder on one task, exactly like ``embench run``, and return its record.

    The run reuses whatever exists (data, checkpoint, embedding cache, a finished record) and
    writes the record (and its predictions sidecar) where ``embench run`` writes it:
    ``embench.results.path_of(embench.storage.resolve_home(home), record)``.

    Args:
        encoder: what to evaluate, one of

            - a registered name (``"pca"``, ``"p_vae"``, see ``embench list``) or a
              ``"module.path:factory"`` string: built from the preset, ``z``, ``seed``, ...;
            - an object following the encoder contract (``fit``, ``encode``, ``fingerprint``,
              ``embedding_dim``; see :class:`embench.protocols.Encoder`), e.g. a
              :class:`TorchEncoder`: used as constructed (the preset's epochs, ``seed`` and
              ``device`` do not reach it), filed under its ``embedding_dim`` and its ``name``
              attribute (else its class name, lowercased), fitted on every run unless
              it can be checkpointed (``save``, a classmethod ``load``, ``get_config``);
            - a ``torch.nn.Module`` or any callable from a float image batch ``(N, 3, H, W)``
              in [0, 1] to embeddings (one with only some of the members above is
              refused): wrapped as ``TorchEncoder(encoder, device=device)`` (pretrained:
              ``fit`` does nothing). Build the :class:`TorchEncoder` yourself for ImageNet
              normalisation, a training function, a name or a batch size.
        task: registered task name (``"lunarlander"``, ``"stl10"``, ``"svhn"``).
        preset: ``"smoke"``, ``"quick"`` or ``"paper"``.
        z: embedding size of a registered encoder (``None``: the preset's first z for the
            task); an object's size is its ``embedding_dim`` and a different ``z`` is refused.
        seed: seed of encoder training and of the probe search.
        home: EMBENCH_HOME for this run (default: ``$EMBENCH_HOME`` or the user cache dir).
        device: ``"auto"``, ``"cpu"`` or ``"cuda"`` (probes; a registered encoder; a module
            this function wraps).
        precision: of registered encoders that train, as ``embench run --precision``
            (``"fp32"``, ``"bf16"`` autocast, ...).
        progress: show what ``embench run`` shows on stderr (live bars in a terminal or a
            notebook, plain lines otherwise); ``False`` is silent (status lines such as
            cache hits then go to the ``"embench"`` logger).
        options: keyword config for a registered encoder's factory (the CLI's ``-o k=v``).
        task_options: keyword config for the task, e.g. ``{"data_dir": "/path/to/stl10"}``.

    Returns:
        The run's :class:`~embench.results.RunRecord`, equal to the record file on disk:
        ``record.test["mlp"]``, ``record.test["linear"]``, ``record.fingerprints``, ...

    Raises:
        EmbenchError: for anything the user can fix (unknown names, bad options, an object
            that breaks the encoder contract, missing data); the message says how.

    Example:
        >>> import embench
        >>> record = embench.evaluate("pca", "lunarlander", preset="smoke")  # doctest: +SKIP
        >>> record.test["mlp"], record.metric["name"]  # doctest: +SKIP
    """
    if not isinstance(encoder, str) and not _follows_contract(encoder):
        encoder = _as_encoder(encoder, device=device,
                              image_size=_image_size(task, task_options))
    config = RunConfig(
        encoder=encoder, task=task, preset=preset, z=z, seed=seed, device=device,
        precision=precision, home=None if home is None else Path(home).expanduser(),
        encoder_options=dict(options or {}), task_options=dict(task_options or {}))
    with _display(progress) as (bar, log):
        outcome = run(config, progress=bar, log=log)
    # read back: the record returned is the file's, field for field (JSON types), like a
    # finished run's record that run() returns without recomputing it
    return load_record(outcome.record_path)


def _follows_contract(obj: Any) -> bool:
    """Whether ``obj`` has every member of the encoder contract (no property is evaluated)."""
    return all(_has_member(obj, member) for member in _CONTRACT)


def _as_encoder(obj: Any, *, device: str, image_size: int) -> Any:
    """A :class:`TorchEncoder` around a module or callable that is not itself an encoder.

    Raises:
        PluginError: ``obj`` is neither a ``torch.nn.Module`` nor callable, or it has some
            members of the encoder contract but not all of them.
    """
    import torch

    present = [m for m in _CONTRACT if _has_member(obj, m)]
    got = f"{type(obj).__module__}.{type(obj).__qualname__}"
    if present:  # meant as an encoder: guessing which method embeds would be worse
        missing = sorted(m for m in _CONTRACT if m not in present)
        raise PluginError(
            f"The encoder object {got} has {', '.join(present)} but lacks "
            f"{', '.join(missing)} of the encoder contract.",
            "Add the missing members (see embench.protocols.Encoder), or wrap it: "
            "embench.TorchEncoder(obj) embeds with its __call__ (a module's forward), "
            "embench.TorchEncoder(obj.encode) with that method.")
    if isinstance(obj, torch.nn.Module) or callable(obj):
        return TorchEncoder(obj, device=device, image_size=image_size)
    raise PluginError(
        f"Cannot evaluate a {got}: it is not an encoder.",
        "Pass a registered encoder name, 'module.path:factory', an object with fit, encode, "
        "fingerprint and embedding_dim, a torch.nn.Module or a callable mapping images to "
        "embeddings.")


class TorchEncoder:
    """An encoder around a ``torch.nn.Module`` or any callable from images to embeddings.

    ``encode`` takes ``uint8 (N, 3, H, W)`` (scaled to float in [0, 1]) or float images
    already in [0, 1], applies ``preprocess`` (e.g. ImageNet normalisation, a resize), runs
    the module in batches on ``device`` in eval mode under ``torch.no_grad()`` (the module's
    train/eval modes are restored afterwards) and returns the output flattened to ``(N, D)``
    float32. The module is moved to ``device`` in place on first use.

    ``embedding_dim`` is needed before ``fit`` (runs are filed under it): unless given, it is
    the width of the output for one zero image of side ``image_size`` (64 by default;
    :func:`evaluate` passes the task's). A module whose width depends on the image size must
    be told the right ``image_size`` or ``embedding_dim``; a mismatch is an error at encode.

    ``fingerprint`` (it keys the embedding cache and the record) is a sha256 over the module's
    class, its ``state_dict`` (names, dtypes, shapes and bytes, in order), ``preprocess`` and
    ``batch_size``: the same weights give the same fingerprint in every process, changed
    weights a different one. A plain callable (not a module, not a bound method of one) is
    identified by its qualified name and source code only: state it reads from elsewhere
    (closures, globals, objects it calls) is invisible, so pass ``fingerprint="..."`` naming
    that state (e.g. the weights' version), or stale cached embeddings may be reused.

    Args:
        module: a ``torch.nn.Module``, or a callable mapping a float tensor
            ``(N, 3, H, W)`` to a tensor or array with ``N`` rows.
        fit: ``None`` for a pretrained module (``fit`` does nothing), or a function
            ``fit(module, train_images, val_images)`` that trains ``module`` in place on the
            task's unlabeled uint8 images (arrays or h5py datasets; the validation split may
            be ``None``).
        preprocess: applied to each float batch (on ``device``) before the module.
        batch_size: images per forward pass.
        device: ``"cpu"``, ``"cuda"``, ``"cuda:N"`` or ``"auto"``.
        name: name the runs are filed under (default: the module's class name, lowercased).
        embedding_dim: the output width, if known (skips the probe forward pass).
        image_size: side of the zero image that sizes ``embedding_dim``.
        fingerprint: extra identity of state the fingerprint cannot see (plain callables).

    Raises:
        ConfigError: a non-callable ``module``, ``fit`` or ``preprocess``, a bad
            ``batch_size`` or ``image_size``, or a ``name`` unsafe as a file name.

    Example:
        >>> import torchvision  # doctest: +SKIP
        >>> model = torchvision.models.resnet18(weights="IMAGENET1K_V1")  # doctest: +SKIP
        >>> model.fc = torch.nn.Identity()  # doctest: +SKIP
        >>> normalize = torchvision.transforms.Normalize(  # doctest: +SKIP
        ...     (0.485, 0.456, 0.406), (0.229, 0.224, 0.225))
        >>> embench.evaluate(TorchEncoder(model, preprocess=normalize), "lunarlander")
    """

    def __init__(
        self,
        module: Callable[..., Any],
        *,
        fit: Callable[[Any, Any, Any], Any] | None = None,
        preprocess: Callable[[Any], Any] | None = None,
        batch_size: int = 256,
        device: str = "cpu",
        name: str | None = None,
        embedding_dim: int | None = None,
        image_size: int = 64,
        fingerprint: str | None = None,
    ) -> None:
        for label, value in (("module", module), ("fit", fit), ("preprocess", preprocess)):
            if value is not None and not callable(value):
                raise ConfigError(f"TorchEncoder {label} must be callable, got "
                                  f"{type(value).__name__}.",
                                  f"Pass a function or a torch.nn.Module as {label}=.")
        for label, value in (("batch_size", batch_size), ("image_size", image_size),
                             ("embedding_dim", embedding_dim)):
            if value is not None and (isinstance(value, bool) or not isinstance(value, int)
                                      or value < 1):
                raise ConfigError(f"Invalid TorchEncoder {label}={value!r}: must be a "
                                  f"positive integer.")
        if module is None:
            raise ConfigError("TorchEncoder needs a module.",
                              "Pass a torch.nn.Module or a callable.")
        self.module = module
        self.fit_function = fit
        self.preprocess = preprocess
        self.batch_size = batch_size
        self.device = device
        self.name = safe_name(name if name is not None else _default_name(module),
                              "encoder name")
        self.image_size = image_size
        self.user_fingerprint = fingerprint
        self._embedding_dim = embedding_dim
        self._probed = embedding_dim is None

    # -- the encoder contract ---------------------------------------------------------------

    def fit(self, train_images: Any, val_images: Any = None) -> TorchEncoder:
        """Train the module with the ``fit`` function given; nothing for a pretrained one."""
        if self.fit_function is not None:
            self.fit_function(self.module, train_images, val_images)
        return self

    def encode(self, images: Any) -> np.ndarray:
        """Embed ``(N, 3, H, W)`` uint8 (or float in [0, 1]) images into ``(N, D)`` float32.

        Raises:
            ConfigError: images that are not ``(N, 3, H, W)`` uint8 or float.
            EncoderContractError: the module's output has the wrong rows or width.
        """
        array = np.asarray(images)
        if array.ndim != 4 or array.shape[1] != 3:
            raise ConfigError(f"TorchEncoder {self.name!r} got images of shape {array.shape}; "
                              f"expected (N, 3, H, W).")
        if array.dtype != np.uint8 and not np.issubdtype(array.dtype, np.floating):
            raise ConfigError(f"TorchEncoder {self.name!r} got images of dtype {array.dtype}; "
                              f"expected uint8, or float in [0, 1].")
        out = self._forward(array)
        if self._embedding_dim is None:  # called before anyone asked: the output says
            self._embedding_dim = int(out.shape[1])
        width = self._embedding_dim
        if out.shape[1] != width:
            origin = (f"probed on a zero {self.image_size}x{self.image_size} image"
                      if self._probed else "as given")
            raise EncoderContractError(
                f"TorchEncoder {self.name!r} returned {out.shape[1]} values per "
                f"{array.shape[2]}x{array.shape[3]} image, but its embedding_dim is {width} "
                f"({origin}).",
                f"Pass image_size={array.shape[2]} or embedding_dim={out.shape[1]}.")
        return out

    @property
    def embedding_dim(self) -> int:
        """The output width: as given, or measured once on a zero image of ``image_size``.

        Raises:
            PluginError: the module fails on the probe image (the message says what to pass).
        """
        if self._embedding_dim is None:
            side = self.image_size
            try:
                out = self._forward(np.zeros((1, 3, side, side), np.uint8))
            except Exception as exc:
                raise PluginError(
                    f"TorchEncoder {self.name!r} could not size its embeddings on a zero "
                    f"{side}x{side} image: {type(exc).__name__}: {exc}.",
                    "Pass embedding_dim=..., or image_size=... the task's image side.") from exc
            self._embedding_dim = int(out.shape[1])
        return self._embedding_dim

    @property
    def fingerprint(self) -> str:
        """sha256 of the module's class and weights, ``preprocess`` and ``batch_size``."""
        config = {k: v for k, v in self.get_config().items() if not k.startswith("fit")}
        return content_fingerprint("torch-encoder", config)

    def get_config(self) -> dict[str, Any]:
        """What identifies the encoder, JSON-ready; recorded as the run's encoder config.

        Each callable appears as its qualified name and a sha256 of its identity (weights,
        hyperparameters or source), so the record stays short.
        """
        config: dict[str, Any] = {}
        for label, obj in (("module", self.module), ("preprocess", self.preprocess),
                           ("fit", self.fit_function)):
            config[label] = None if obj is None else _qualname(obj)
            config[f"{label}_sha256"] = None if obj is None else content_fingerprint(
                _identity(obj))
        return {**config, "batch_size": self.batch_size, "fingerprint": self.user_fingerprint}

    def __repr__(self) -> str:
        return f"TorchEncoder({_qualname(self.module)}, name={self.name!r})"

    # -- internals --------------------------------------------------------------------------

    def _forward(self, images: np.ndarray) -> np.ndarray:
        """The module's flattened float32 output for a uint8/float array, batch by batch."""
        import torch

        device = resolve_device(self.device)
        module = _torch_module(self.module)
        rows = []
        with _eval_mode(module, device), torch.no_grad():
            for lo in range(0, len(images), self.batch_size):
                batch = torch.from_numpy(np.ascontiguousarray(images[lo:lo + self.batch_size]))
                batch = batch.to(device)
                batch = batch.float() / 255 if batch.dtype == torch.uint8 else batch.float()
                if self.preprocess is not None:
                    batch = self.preprocess(batch)
                rows.append(self._as_rows(self.module(batch), len(batch)))
        if not rows:
            return np.zeros((0, self.embedding_dim), np.float32)
        return np.concatenate(rows)

    def _as_rows(self, out: Any, n: int) -> np.ndarray:
        import torch

        if isinstance(out, torch.Tensor):
            out = out.detach().float().cpu().numpy()
        elif not isinstance(out, np.ndarray):
            raise EncoderContractError(
                f"TorchEncoder {self.name!r}: the module returned {type(out).__name__}, not a "
                f"tensor.", "Wrap it so that it returns one tensor of embeddings.")
        if out.ndim == 0 or out.shape[0] != n:
            raise EncoderContractError(
                f"TorchEncoder {self.name!r}: the module returned shape {tuple(out.shape)} "
                f"for {n} images; expected {n} rows.")
        return np.ascontiguousarray(out.reshape(n, -1), dtype=np.float32)


# --------------------------------------------------------------------------------------------
# Helpers
# --------------------------------------------------------------------------------------------


def _has_member(obj: Any, name: str) -> bool:
    """Whether ``obj`` has ``name`` without evaluating a property (it may raise before fit)."""
    return any(name in vars(klass) for klass in type(obj).__mro__) or \
        name in getattr(obj, "__dict__", {})


def _image_size(task: str, options: dict[str, Any] | None) -> int:
    """The task's image side (for sizing a wrapped module), 64 where it does not say."""
    size = getattr(load_task(task, options), "image_size", None)
    return size if isinstance(size, int) and size > 0 else 64


def _torch_module(obj: Any) -> Any:
    """The ``nn.Module`` behind ``obj`` (itself, or the owner of a bound method), or None."""
    import torch

    for candidate in (obj, getattr(obj, "__self__", None)):
        if isinstance(candidate, torch.nn.Module):
            return candidate
    return None


@contextlib.contextmanager
def _eval_mode(module: Any, device: Any) -> Iterator[None]:
    """Put ``module`` on ``device`` in eval mode; restore every submodule's mode afterwards."""
    if module is None:
        yield
        return
    module.to(device)
    modes = [(m, m.training) for m in module.modules()]
    module.eval()
    try:
        yield
    finally:
        for m, training in modes:
            m.training = training


def _qualname(obj: Any) -> str:
    target = obj if inspect.isfunction(obj) or inspect.ismethod(obj) or isinstance(obj, type) \
        else type(obj)
    if inspect.ismethod(target):
        return f"{_qualname(target.__self__)}.{target.__name__}"
    return f"{getattr(target, '__module__', '?')}.{getattr(target, '__qualname__', '?')}"


def _default_name(module: Any) -> str:
    """The module's class name (a function's name), lowercased, made safe as a file name."""
    if inspect.ismethod(module):
        module = module.__self__
    named = module if inspect.isfunction(module) else type(module)
    name = re.sub(r"[^a-z0-9_.-]", "", getattr(named, "__name__", "").lower()).lstrip(".")
    return name or "encoder"


def _state_sha256(module: Any) -> str:
    """sha256 over a module's state_dict: names, dtypes, shapes and bytes, in order."""
    import torch

    digest = hashlib.sha256()
    for key, value in module.state_dict().items():
        digest.update(key.encode() + b"\0")
        if isinstance(value, torch.Tensor):
            tensor = value.detach().cpu().contiguous()
            digest.update(f"{tensor.dtype}{tuple(tensor.shape)}\0".encode())
            digest.update(tensor.reshape(-1).view(torch.uint8).numpy().tobytes())
        else:  # extra state some modules keep
            digest.update(repr(value).encode())
    return digest.hexdigest()


def _identity(obj: Any) -> dict[str, Any]:
    """What identifies a module, a function or a callable object across processes."""
    import torch

    identity: dict[str, Any] = {"class": _qualname(obj)}
    module = _torch_module(obj)
    if module is not None:
        identity["state_sha256"] = _state_sha256(module)
    if isinstance(obj, torch.nn.Module):
        identity["repr"] = repr(obj)  # hyperparameters that hold no tensors
    elif inspect.isfunction(obj) or inspect.ismethod(obj):
        try:
            identity["source"] = inspect.getsource(obj)
        except (OSError, TypeError):  # no source on disk: the bytecode still tells edits
            code = getattr(obj, "__code__", None)
            identity["code"] = None if code is None else hashlib.sha256(code.co_code).hexdigest()
    elif type(obj).__repr__ is not object.__repr__:  # e.g. torchvision's Compose lists steps
        identity["repr"] = repr(obj)
    return identity


@contextlib.contextmanager
def _display(show: bool) -> Iterator[tuple[Any, Callable[[str], None]]]:
    """The CLI's progress display on stderr (``show``), or nothing but the logger."""
    if not show:
        yield None, _to_logger
        return
    from rich.console import Console

    # live bars in a terminal or a notebook, plain lines otherwise: what `embench run` shows
    with make_progress(Console(stderr=True, highlight=False)) as progress:
        yield progress, progress.console.print


def _to_logger(message: str) -> None:
    """Send a status line (rich markup) to the ``"embench"`` logger as plain text."""
    from rich.text import Text

    try:
        message = Text.from_markup(message).plain
    except Exception:  # not markup after all: log it as it is
        pass
    logger.info(message)
