"""MNIST as tensors, from the first place that has it, with its provenance recorded.

Search order for ``dataset="mnist"``: an explicit ``data_dir``, then ``$INITDIAG_DATA_DIR``, then the
cache (``default_cache_dir()``), then a torchvision download into the cache, then the bundled sample
(``initdiag/sample``, with a notice). An explicit directory that is missing or malformed is an error,
never a silent fallback. ``dataset="mnist-sample"`` picks the bundled sample on purpose.

Each IDX file is read whole and parsed with ``numpy.frombuffer``: no per-item Dataset or DataLoader.
"""

from __future__ import annotations

import gzip
import hashlib
import os
import shutil
import socket
import tempfile
import zlib
from collections.abc import Mapping
from dataclasses import dataclass
from importlib import resources
from importlib.resources.abc import Traversable
from pathlib import Path
from typing import TYPE_CHECKING, Literal, Protocol

import numpy as np

from .errors import DataError, UsageError, did_you_mean

if TYPE_CHECKING:
    import torch

__all__ = ["DATASETS", "DataProvenance", "MnistData", "default_cache_dir", "load_mnist", "read_idx"]

DATASETS: tuple[str, ...] = ("mnist", "mnist-sample")
SourceKind = Literal["data-dir", "env", "cache", "download", "bundled"]

ENV_DATA_DIR = "INITDIAG_DATA_DIR"
ENV_OFFLINE = "INITDIAG_OFFLINE"
SAMPLE_PACKAGE = "initdiag.sample"
SAMPLE_SOURCE = "bundled sample (initdiag/sample)"

IMAGES_MAGIC = 2051
LABELS_MAGIC = 2049
IMAGE_SIDE = 28
N_CLASSES = 10
_MAGIC_NAMES = {IMAGES_MAGIC: "images (2051)", LABELS_MAGIC: "labels (2049)"}

TRAIN_IMAGES = "train-images-idx3-ubyte"
TRAIN_LABELS = "train-labels-idx1-ubyte"
TEST_IMAGES = "t10k-images-idx3-ubyte"
TEST_LABELS = "t10k-labels-idx1-ubyte"
# Canonical (uncompressed) file name -> the IDX magic number it must carry.
MNIST_FILES: dict[str, int] = {
    TRAIN_IMAGES: IMAGES_MAGIC,
    TRAIN_LABELS: LABELS_MAGIC,
    TEST_IMAGES: IMAGES_MAGIC,
    TEST_LABELS: LABELS_MAGIC,
}


@dataclass(frozen=True)
class DataProvenance:
    """Where the data came from, how much of it is used, and the md5 of every file read."""

    name: str
    source: str
    kind: SourceKind
    train_size: int
    test_size: int
    files: dict[str, str]
    notice: str | None = None


@dataclass(frozen=True)
class MnistData:
    """MNIST as tensors: images float32 ``(N, 1, 28, 28)`` in [0, 1], labels int64 ``(N,)``."""

    train_x: torch.Tensor
    train_y: torch.Tensor
    test_x: torch.Tensor
    test_y: torch.Tensor
    provenance: DataProvenance


class _Readable(Protocol):
    """A file handle that ``Path`` and importlib's ``Traversable`` both satisfy."""

    @property
    def name(self) -> str: ...

    def read_bytes(self) -> bytes: ...


@dataclass(frozen=True)
class _Raw:
    """The four parsed arrays (uint8) and the md5 of each file's decompressed bytes."""

    arrays: dict[str, np.ndarray]
    md5s: dict[str, str]


def default_cache_dir() -> Path:
    """``$XDG_CACHE_HOME/initdiag/mnist``, or ``~/.cache/initdiag/mnist`` when the variable is unset."""
    xdg = os.environ.get("XDG_CACHE_HOME")
    base = Path(xdg).expanduser() if xdg else Path.home() / ".cache"
    return base / "initdiag" / "mnist"


def read_idx(path: str | Path, *, magic: int | None = None) -> np.ndarray:
    """Parse one IDX file (plain or ``.gz``) of unsigned bytes into an array of its header's shape.

    Checks the magic number (2051 images, 2049 labels; ``magic`` demands one of them), 28x28 images,
    that the size matches the header, and labels in 0-9. Raises ``DataError`` naming ``path``.
    """
    return _read_idx(Path(path), str(path), magic)[0]


def _read_idx(file: _Readable, where: str, magic: int | None) -> tuple[np.ndarray, str]:
    """Read, decompress and parse ``file``; return the array and the md5 of the decompressed bytes."""
    try:
        data = file.read_bytes()
        if file.name.endswith(".gz"):
            data = gzip.decompress(data)
    except (OSError, EOFError, zlib.error) as exc:
        raise DataError(f"cannot read {where}: {exc}") from exc
    return _parse_idx(data, where, magic), hashlib.md5(data).hexdigest()


def _parse_idx(data: bytes, where: str, magic: int | None) -> np.ndarray:
    """Validate the IDX header of ``data`` against its size and return the uint8 payload, shaped."""
    if len(data) < 8:
        raise DataError(f"{where} is truncated or empty: {len(data)} bytes, too short for an IDX header")
    found = int.from_bytes(data[:4], "big")
    expected = (magic,) if magic is not None else tuple(_MAGIC_NAMES)
    if found not in expected:
        wanted = " or ".join(_MAGIC_NAMES[m] for m in expected)
        raise DataError(f"{where} has magic number {found}, expected MNIST {wanted}")
    ndim = found & 0xFF
    header = 4 + 4 * ndim
    if len(data) < header:
        raise DataError(f"{where} is truncated: {len(data)} bytes, the header alone needs {header}")
    shape = tuple(int.from_bytes(data[4 + 4 * i : 8 + 4 * i], "big") for i in range(ndim))
    if found == IMAGES_MAGIC and shape[1:] != (IMAGE_SIDE, IMAGE_SIDE):
        raise DataError(
            f"{where} holds {shape[1]}x{shape[2]} images, expected {IMAGE_SIDE}x{IMAGE_SIDE} (MNIST)"
        )
    size = header + int(np.prod(shape))
    if len(data) != size:
        state = "truncated" if len(data) < size else "longer than its header says"
        dims = " x ".join(f"{d:,}" for d in shape)
        raise DataError(f"{where} is {state}: header says {dims} ({size:,} bytes), file has {len(data):,}")
    array = np.frombuffer(data, dtype=np.uint8, offset=header).reshape(shape)
    if found == LABELS_MAGIC and array.size and int(array.max()) >= N_CLASSES:
        raise DataError(f"{where} has label {int(array.max())}, expected labels 0-{N_CLASSES - 1}")
    return array


def _locate(root: Path) -> tuple[Path, dict[str, Path]]:
    """Find the four files (plain preferred over ``.gz``) in ``root`` or ``root/MNIST/raw``.

    Returns the first directory that holds all four, else the one that holds the most, with what it holds.
    """
    best: tuple[Path, dict[str, Path]] = (root, {})
    for directory in (root, root / "MNIST" / "raw"):
        found: dict[str, Path] = {}
        for name in MNIST_FILES:
            for candidate in (directory / name, directory / f"{name}.gz"):
                if candidate.is_file():
                    found[name] = candidate
                    break
        if len(found) == len(MNIST_FILES):
            return directory, found
        if len(found) > len(best[1]):
            best = (directory, found)
    return best


def _missing(found: Mapping[str, Path]) -> str:
    """The canonical names absent from ``found``, comma-separated, each as ``name[.gz]``."""
    return ", ".join(f"{name}[.gz]" for name in MNIST_FILES if name not in found)


def _read_all(files: Mapping[str, _Readable], where: Mapping[str, str]) -> _Raw:
    """Parse the four files and check that image and label counts agree within each split."""
    arrays: dict[str, np.ndarray] = {}
    md5s: dict[str, str] = {}
    for name, magic in MNIST_FILES.items():
        arrays[name], md5s[name] = _read_idx(files[name], where[name], magic)
    for images, labels in ((TRAIN_IMAGES, TRAIN_LABELS), (TEST_IMAGES, TEST_LABELS)):
        n_images, n_labels = len(arrays[images]), len(arrays[labels])
        if n_images != n_labels:
            raise DataError(
                f"{where[images]} holds {n_images:,} images but {where[labels]} holds {n_labels:,} labels;"
                " expected the same count"
            )
    return _Raw(arrays, md5s)


def _read_dir(root: Path, label: str) -> tuple[_Raw, str]:
    """Load the four files under ``root``; ``label`` names the source in errors and the provenance."""
    if not root.is_dir():
        raise DataError(f"{label}: not a directory (expected the four MNIST IDX files in it)")
    directory, found = _locate(root)
    if len(found) < len(MNIST_FILES):
        where = directory if found else f"{root} and {root / 'MNIST' / 'raw'}"
        raise DataError(f"{label}: missing {_missing(found)} (looked in {where})")
    try:
        raw = _read_all(found, {name: str(path) for name, path in found.items()})
    except DataError as exc:
        raise DataError(f"{label}: {exc}") from exc
    source = label if directory == root else f"{label} ({directory})"
    return raw, source


def _read_sample() -> _Raw:
    """Load the bundled sample from the ``initdiag.sample`` package data."""
    package = resources.files(SAMPLE_PACKAGE)
    files: dict[str, Traversable] = {name: package / f"{name}.gz" for name in MNIST_FILES}
    return _read_all(files, {name: f"{SAMPLE_SOURCE}: {name}.gz" for name in MNIST_FILES})


def _download_into(root: Path) -> None:
    """Download MNIST with torchvision into ``root`` (it writes ``root/MNIST/raw``)."""
    from torchvision.datasets import MNIST

    MNIST(root=root, download=True)


def _short_reason(exc: BaseException) -> str:
    """One line for a failed download: the exception type and its last non-empty message line."""
    lines = [line.strip() for line in str(exc).splitlines() if line.strip()]
    text = lines[-1] if lines else ""
    text = text if len(text) <= 160 else text[:157] + "..."
    return f"{type(exc).__name__}: {text}" if text else type(exc).__name__


def _download_to_cache(cache_dir: Path, timeout: float) -> _Raw:
    """Download into a temporary directory next to the cache, validate, then move files in with os.replace.

    The temporary directory is removed in any case, so a failed or interrupted download leaves no partial
    file in the cache. The process-wide socket timeout is restored afterwards.
    """
    cache_dir.parent.mkdir(parents=True, exist_ok=True)
    tmp = Path(tempfile.mkdtemp(prefix=".mnist-download-", dir=cache_dir.parent))
    previous = socket.getdefaulttimeout()
    try:
        socket.setdefaulttimeout(timeout)
        try:
            _download_into(tmp)
        finally:
            socket.setdefaulttimeout(previous)
        _, found = _locate(tmp)
        if len(found) < len(MNIST_FILES):
            raise DataError(f"the download lacks {_missing(found)}")
        raw = _read_all(found, {name: f"downloaded {path.name}" for name, path in found.items()})
        cache_dir.mkdir(parents=True, exist_ok=True)
        for path in found.values():
            os.replace(path, cache_dir / path.name)
        return raw
    finally:
        shutil.rmtree(tmp, ignore_errors=True)


def _offline() -> bool:
    """Whether ``$INITDIAG_OFFLINE`` forbids downloading."""
    return os.environ.get(ENV_OFFLINE, "").strip().lower() in {"1", "true", "yes", "on"}


def _find_mnist(
    data_dir: str | Path | None, cache_dir: Path, allow_download: bool, download_timeout: float
) -> tuple[_Raw, str, SourceKind, str | None]:
    """Walk the search order; return the data, its source text, kind and fallback notice (or None)."""
    if data_dir is not None:
        root = Path(data_dir).expanduser()
        return (*_read_dir(root, f"--data-dir {root}"), "data-dir", None)
    env_dir = os.environ.get(ENV_DATA_DIR, "").strip()
    if env_dir:
        root = Path(env_dir).expanduser()
        return (*_read_dir(root, f"${ENV_DATA_DIR}={root}"), "env", None)
    if cache_dir.is_dir():
        try:
            raw, _ = _read_dir(cache_dir, f"cache {cache_dir}")
            return raw, f"cache {cache_dir}", "cache", None
        except DataError:
            pass  # an incomplete or damaged cache is refilled by the download below
    if not allow_download:
        reason = "downloading is disabled"
    elif _offline():
        reason = f"{ENV_OFFLINE} is set"
    else:
        try:
            raw = _download_to_cache(cache_dir, download_timeout)
            return raw, f"downloaded by torchvision into {cache_dir}", "download", None
        except Exception as exc:  # any failure of the network or of torchvision means: use the sample
            reason = f"download failed: {_short_reason(exc)}"
    raw = _read_sample()
    n_train, n_test = len(raw.arrays[TRAIN_LABELS]), len(raw.arrays[TEST_LABELS])
    notice = (
        f"MNIST not found locally and could not be downloaded ({reason}); using the bundled sample: "
        f"{n_train:,} training and {n_test:,} test images. Pass --data-dir DIR for the full set."
    )
    return raw, SAMPLE_SOURCE, "bundled", notice


def _images(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(N, 28, 28)`` -> float32 ``(N, 1, 28, 28)`` holding pixels/255."""
    import torch

    return torch.from_numpy(array.astype(np.float32)).div_(255.0).unsqueeze(1)


def _labels(array: np.ndarray) -> torch.Tensor:
    """uint8 ``(N,)`` -> int64 ``(N,)``."""
    import torch

    return torch.from_numpy(array.astype(np.int64))


def load_mnist(
    data_dir: str | Path | None = None,
    dataset: str = "mnist",
    limit_train: int | None = None,
    cache_dir: Path | None = None,
    allow_download: bool = True,
    download_timeout: float = 10.0,
) -> MnistData:
    """Load MNIST (or the bundled sample) into tensors, with provenance; see the module docstring.

    ``limit_train`` keeps the first N training images. Raises ``DataError`` for a missing or malformed
    ``data_dir``/``$INITDIAG_DATA_DIR`` and ``UsageError`` for an unknown dataset or a bad ``limit_train``.
    """
    if dataset not in DATASETS:
        raise UsageError(
            f"unknown dataset '{dataset}'{did_you_mean(dataset, DATASETS)}; choose from {', '.join(DATASETS)}"
        )
    if limit_train is not None and limit_train < 1:
        raise UsageError(f"--limit-train {limit_train} must be at least 1")
    found: tuple[_Raw, str, SourceKind, str | None]
    if dataset == "mnist-sample":
        found = (_read_sample(), SAMPLE_SOURCE, "bundled", None)
    else:
        cache = cache_dir if cache_dir is not None else default_cache_dir()
        found = _find_mnist(data_dir, cache, allow_download, download_timeout)
    raw, source, kind, notice = found

    train_images, train_labels = raw.arrays[TRAIN_IMAGES], raw.arrays[TRAIN_LABELS]
    if limit_train is not None:
        if limit_train > len(train_labels):
            raise UsageError(
                f"--limit-train {limit_train:,} is larger than the {len(train_labels):,} training images"
                f" of {source}"
            )
        train_images, train_labels = train_images[:limit_train], train_labels[:limit_train]
    provenance = DataProvenance(
        name="mnist-sample" if kind == "bundled" else dataset,  # the sample is named so wherever it is used
        source=source,
        kind=kind,
        train_size=len(train_labels),
        test_size=len(raw.arrays[TEST_LABELS]),
        files=dict(raw.md5s),
        notice=notice,
    )
    return MnistData(
        train_x=_images(train_images),
        train_y=_labels(train_labels),
        test_x=_images(raw.arrays[TEST_IMAGES]),
        test_y=_labels(raw.arrays[TEST_LABELS]),
        provenance=provenance,
    )
