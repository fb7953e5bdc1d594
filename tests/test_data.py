"""Tests for initdiag.data: loading MNIST from each source, validation errors and the fallback chain.

References are independent: torchvision's own IDX reader, the published md5 sums and statistics of
MNIST, and small IDX files written here with ``struct``.
"""

from __future__ import annotations

import gzip
import socket
import struct
from pathlib import Path

import numpy as np
import pytest
import torch
from torchvision.datasets.mnist import read_image_file, read_label_file

from initdiag import data as data_mod
from initdiag.data import DATASETS, load_mnist, read_idx
from initdiag.errors import DataError, UsageError

SHARED_DATA = Path(__file__).resolve().parents[2] / "shared" / "data"
SHARED_RAW = SHARED_DATA / "MNIST" / "raw"
NAMES = (
    "train-images-idx3-ubyte",
    "train-labels-idx1-ubyte",
    "t10k-images-idx3-ubyte",
    "t10k-labels-idx1-ubyte",
)


def idx_bytes(array: np.ndarray, magic: int | None = None) -> bytes:
    """Encode a uint8 array as IDX: big-endian magic (0x0000 08 ndim), one int32 per dim, then the bytes."""
    magic = magic if magic is not None else 0x0800 + array.ndim
    header = struct.pack(f">I{array.ndim}I", magic, *array.shape)
    return header + array.astype(np.uint8).tobytes()


def make_arrays(n_train: int = 5, n_test: int = 3, seed: int = 0) -> dict[str, np.ndarray]:
    """Small random MNIST-shaped arrays, keyed by canonical file name."""
    rng = np.random.default_rng(seed)
    return {
        NAMES[0]: rng.integers(0, 256, (n_train, 28, 28), dtype=np.uint8),
        NAMES[1]: rng.integers(0, 10, n_train, dtype=np.uint8),
        NAMES[2]: rng.integers(0, 256, (n_test, 28, 28), dtype=np.uint8),
        NAMES[3]: rng.integers(0, 10, n_test, dtype=np.uint8),
    }


def write_set(directory: Path, arrays: dict[str, np.ndarray] | None = None, gz: bool = False) -> Path:
    """Write the four IDX files into ``directory`` (created), plain or gzip-compressed."""
    directory.mkdir(parents=True, exist_ok=True)
    for name, array in (arrays or make_arrays()).items():
        payload = idx_bytes(array)
        if gz:
            (directory / f"{name}.gz").write_bytes(gzip.compress(payload, compresslevel=1))
        else:
            (directory / name).write_bytes(payload)
    return directory


@pytest.fixture(autouse=True)
def isolated(monkeypatch: pytest.MonkeyPatch, tmp_path: Path) -> None:
    """No env data dir, a private cache, no network: downloads fail unless a test patches them."""
    monkeypatch.delenv("INITDIAG_DATA_DIR", raising=False)
    monkeypatch.delenv("INITDIAG_OFFLINE", raising=False)
    monkeypatch.setenv("XDG_CACHE_HOME", str(tmp_path / "xdg"))

    def no_network(root: Path) -> None:
        raise OSError("network disabled in tests")

    monkeypatch.setattr(data_mod, "_download_into", no_network)


@pytest.fixture(scope="module")
def full() -> data_mod.MnistData:
    """The full shared MNIST, loaded once."""
    if not all((SHARED_RAW / n).is_file() for n in NAMES):
        pytest.skip("shared MNIST not present")
    return load_mnist(data_dir=SHARED_DATA)


# --- the full data set -------------------------------------------------------------------------------


def test_full_set_sizes_mean_and_labels(full: data_mod.MnistData) -> None:
    assert full.train_x.shape == (60000, 1, 28, 28) and full.train_x.dtype == torch.float32
    assert full.test_x.shape == (10000, 1, 28, 28) and full.test_x.dtype == torch.float32
    assert full.train_y.shape == (60000,) and full.train_y.dtype == torch.int64
    assert full.test_y.shape == (10000,) and full.test_y.dtype == torch.int64
    assert float(full.train_x.mean()) == pytest.approx(0.1307, abs=5e-4)
    assert float(full.train_x.min()) >= 0.0 and float(full.train_x.max()) == 1.0
    counts = torch.bincount(full.test_y, minlength=10)
    assert int(counts[1]) == 1135 and int(counts.argmax()) == 1
    assert float(counts.max()) / len(full.test_y) == pytest.approx(0.1135)
    p = full.provenance
    assert (p.name, p.kind, p.train_size, p.test_size, p.notice) == ("mnist", "data-dir", 60000, 10000, None)
    assert str(SHARED_RAW) in p.source


def test_full_set_md5_match_published(full: data_mod.MnistData) -> None:
    lines = (SHARED_DATA / "MNIST.md5").read_text().split("\n")
    expected = {name: md5 for md5, name in (line.split() for line in lines if line.strip())}
    assert full.provenance.files == expected


def test_full_set_equals_torchvision_reader(full: data_mod.MnistData) -> None:
    ref_x = read_image_file(str(SHARED_RAW / NAMES[2]))
    ref_y = read_label_file(str(SHARED_RAW / NAMES[3]))
    assert torch.equal(full.test_x, ref_x.float().div(255).unsqueeze(1))
    assert torch.equal(full.test_y, ref_y.long())


def test_full_set_gz_copies_load_the_same(full: data_mod.MnistData, tmp_path: Path) -> None:
    for name in NAMES:
        (tmp_path / f"{name}.gz").write_bytes(
            gzip.compress((SHARED_RAW / name).read_bytes(), compresslevel=1)
        )
    gz = load_mnist(data_dir=tmp_path)
    for attr in ("train_x", "train_y", "test_x", "test_y"):
        assert torch.equal(getattr(gz, attr), getattr(full, attr))
    assert gz.provenance.files == full.provenance.files  # md5 of the decompressed content


# --- bundled sample ----------------------------------------------------------------------------------


def test_bundled_sample_sizes() -> None:
    sample = load_mnist(dataset="mnist-sample")
    assert sample.train_x.shape == (10000, 1, 28, 28) and sample.test_x.shape == (10000, 1, 28, 28)
    p = sample.provenance
    assert (p.name, p.kind, p.notice) == ("mnist-sample", "bundled", None)
    assert (p.train_size, p.test_size) == (10000, 10000)
    assert set(p.files) == set(NAMES)


def test_bundled_sample_is_prefix_of_full_set(full: data_mod.MnistData) -> None:
    sample = load_mnist(dataset="mnist-sample")
    assert torch.equal(sample.train_x, full.train_x[:10000])
    assert torch.equal(sample.train_y, full.train_y[:10000])
    assert torch.equal(sample.test_x, full.test_x)
    assert torch.equal(sample.test_y, full.test_y)


# --- layouts, compression, limit_train ---------------------------------------------------------------


@pytest.mark.parametrize("nested", [False, True], ids=["flat", "MNIST-raw"])
@pytest.mark.parametrize("gz", [False, True], ids=["plain", "gz"])
def test_layouts_and_compression_load_the_same(tmp_path: Path, nested: bool, gz: bool) -> None:
    arrays = make_arrays()
    write_set(tmp_path / "MNIST" / "raw" if nested else tmp_path, arrays, gz=gz)
    got = load_mnist(data_dir=str(tmp_path))
    assert torch.equal(got.train_x, torch.from_numpy(arrays[NAMES[0]]).float().div(255).unsqueeze(1))
    assert torch.equal(got.train_y, torch.from_numpy(arrays[NAMES[1]]).long())
    assert torch.equal(got.test_x, torch.from_numpy(arrays[NAMES[2]]).float().div(255).unsqueeze(1))
    assert torch.equal(got.test_y, torch.from_numpy(arrays[NAMES[3]]).long())
    assert (got.provenance.train_size, got.provenance.test_size, got.provenance.kind) == (5, 3, "data-dir")


def test_read_idx_plain_and_gz(tmp_path: Path) -> None:
    labels = np.array([3, 1, 4, 1, 5], dtype=np.uint8)
    (tmp_path / "l").write_bytes(idx_bytes(labels))
    (tmp_path / "l.gz").write_bytes(gzip.compress(idx_bytes(labels)))
    np.testing.assert_array_equal(read_idx(tmp_path / "l"), labels)
    np.testing.assert_array_equal(read_idx(str(tmp_path / "l.gz")), labels)


def test_limit_train_takes_the_first_images(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_set(tmp_path, arrays)
    got = load_mnist(data_dir=tmp_path, limit_train=2)
    assert got.train_x.shape == (2, 1, 28, 28) and got.provenance.train_size == 2
    assert torch.equal(got.train_y, torch.from_numpy(arrays[NAMES[1]][:2]).long())
    assert got.test_x.shape[0] == 3


@pytest.mark.parametrize("limit", [0, -1, 6])
def test_limit_train_out_of_range(tmp_path: Path, limit: int) -> None:
    write_set(tmp_path)
    with pytest.raises(UsageError, match=f"--limit-train {limit}"):
        load_mnist(data_dir=tmp_path, limit_train=limit)


def test_limit_train_larger_than_sample_names_source() -> None:
    with pytest.raises(UsageError, match=r"larger than the 10,000 training images of bundled sample"):
        load_mnist(dataset="mnist-sample", limit_train=10001)


def test_unknown_dataset_suggests() -> None:
    with pytest.raises(UsageError, match=r"unknown dataset 'minst'.*did you mean 'mnist'"):
        load_mnist(dataset="minst")
    assert DATASETS == ("mnist", "mnist-sample")


# --- errors ------------------------------------------------------------------------------------------


def test_missing_file_is_named(tmp_path: Path) -> None:
    write_set(tmp_path)
    (tmp_path / NAMES[3]).unlink()
    with pytest.raises(DataError, match=r"--data-dir .*missing t10k-labels-idx1-ubyte") as info:
        load_mnist(data_dir=tmp_path)
    assert "train-images" not in str(info.value)


def test_missing_dir_is_an_error_not_a_fallback(tmp_path: Path) -> None:
    with pytest.raises(DataError, match="not a directory"):
        load_mnist(data_dir=tmp_path / "nope")


def test_truncated_file(tmp_path: Path) -> None:
    write_set(tmp_path)
    path = tmp_path / NAMES[0]
    path.write_bytes(path.read_bytes()[:-100])
    with pytest.raises(DataError, match=rf"{NAMES[0]} is truncated"):
        load_mnist(data_dir=tmp_path)


def test_truncated_gzip(tmp_path: Path) -> None:
    write_set(tmp_path, gz=True)
    path = tmp_path / f"{NAMES[2]}.gz"
    path.write_bytes(path.read_bytes()[:-20])
    with pytest.raises(DataError, match=rf"{NAMES[2]}\.gz"):
        load_mnist(data_dir=tmp_path)


def test_wrong_magic(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_set(tmp_path, arrays)
    (tmp_path / NAMES[1]).write_bytes(idx_bytes(arrays[NAMES[1]], magic=2051))
    with pytest.raises(DataError, match=rf"{NAMES[1]} has magic number 2051, expected MNIST labels \(2049\)"):
        load_mnist(data_dir=tmp_path)


def test_wrong_image_dims(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays[NAMES[2]] = np.zeros((3, 27, 28), dtype=np.uint8)
    write_set(tmp_path, arrays)
    with pytest.raises(DataError, match=rf"{NAMES[2]} holds 27x28 images, expected 28x28"):
        load_mnist(data_dir=tmp_path)


def test_label_out_of_range(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays[NAMES[3]] = np.array([1, 2, 12], dtype=np.uint8)
    write_set(tmp_path, arrays)
    with pytest.raises(DataError, match="label 12"):
        load_mnist(data_dir=tmp_path)


def test_mismatched_counts(tmp_path: Path) -> None:
    arrays = make_arrays()
    arrays[NAMES[1]] = arrays[NAMES[1]][:4]
    write_set(tmp_path, arrays)
    with pytest.raises(DataError, match=r"5 images but .*train-labels-idx1-ubyte holds 4 labels"):
        load_mnist(data_dir=tmp_path)


def test_read_idx_names_path(tmp_path: Path) -> None:
    path = tmp_path / "short"
    path.write_bytes(b"\x00\x00")
    with pytest.raises(DataError, match=str(path)):
        read_idx(path)


def test_env_dir_empty_is_an_error(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    empty = tmp_path / "empty"
    empty.mkdir()
    write_set(tmp_path / "xdg" / "initdiag" / "mnist")  # a valid cache must not hide the error
    monkeypatch.setenv("INITDIAG_DATA_DIR", str(empty))
    with pytest.raises(DataError, match=r"\$INITDIAG_DATA_DIR=.*missing train-images-idx3-ubyte"):
        load_mnist()


def test_env_dir_is_used(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    write_set(tmp_path / "env" / "MNIST" / "raw")
    monkeypatch.setenv("INITDIAG_DATA_DIR", str(tmp_path / "env"))
    got = load_mnist()
    assert got.provenance.kind == "env" and "INITDIAG_DATA_DIR" in got.provenance.source


# --- cache, download, fallback -----------------------------------------------------------------------


def test_default_cache_dir(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    assert data_mod.default_cache_dir() == tmp_path / "xdg" / "initdiag" / "mnist"
    monkeypatch.delenv("XDG_CACHE_HOME")
    monkeypatch.setenv("HOME", str(tmp_path / "home"))
    assert data_mod.default_cache_dir() == tmp_path / "home" / ".cache" / "initdiag" / "mnist"


def test_cache_hit(tmp_path: Path) -> None:
    arrays = make_arrays()
    write_set(tmp_path / "xdg" / "initdiag" / "mnist", arrays)
    got = load_mnist()
    assert got.provenance.kind == "cache" and got.provenance.notice is None
    assert torch.equal(got.train_y, torch.from_numpy(arrays[NAMES[1]]).long())


def test_no_download_falls_back_to_sample_with_notice(tmp_path: Path) -> None:
    got = load_mnist(cache_dir=tmp_path / "cache" / "mnist", allow_download=False)
    p = got.provenance
    assert (p.name, p.kind, p.train_size, p.test_size) == ("mnist-sample", "bundled", 10000, 10000)
    assert p.notice is not None
    assert "bundled sample" in p.notice and "10,000 training" in p.notice and "--data-dir" in p.notice


def test_offline_env_skips_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    calls: list[Path] = []
    monkeypatch.setattr(data_mod, "_download_into", calls.append)
    monkeypatch.setenv("INITDIAG_OFFLINE", "1")
    got = load_mnist(cache_dir=tmp_path / "cache" / "mnist")
    assert calls == [] and got.provenance.kind == "bundled"
    assert got.provenance.notice is not None and "INITDIAG_OFFLINE" in got.provenance.notice


def test_failed_download_leaves_nothing(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "mnist"
    before = socket.getdefaulttimeout()

    def partial_then_fail(root: Path) -> None:
        assert socket.getdefaulttimeout() == 3.0
        raw = root / "MNIST" / "raw"
        raw.mkdir(parents=True)
        (raw / f"{NAMES[0]}.gz").write_bytes(b"\x1f\x8b partial")
        raise RuntimeError("Error downloading train-images-idx3-ubyte.gz:\nconnection reset by peer")

    monkeypatch.setattr(data_mod, "_download_into", partial_then_fail)
    got = load_mnist(cache_dir=cache, download_timeout=3.0)
    assert socket.getdefaulttimeout() == before
    assert got.provenance.kind == "bundled"
    assert got.provenance.notice is not None and "connection reset by peer" in got.provenance.notice
    assert [f for f in cache.parent.rglob("*") if f.is_file()] == []  # no partial file, no temp dir content


def test_invalid_download_is_not_cached(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "mnist"

    def truncated(root: Path) -> None:
        raw = write_set(root / "MNIST" / "raw")
        (raw / NAMES[0]).write_bytes((raw / NAMES[0]).read_bytes()[:100])

    monkeypatch.setattr(data_mod, "_download_into", truncated)
    got = load_mnist(cache_dir=cache)
    assert got.provenance.kind == "bundled" and "truncated" in (got.provenance.notice or "")
    assert not cache.exists() and list(cache.parent.iterdir()) == []


def test_successful_download_moves_files_into_cache(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = tmp_path / "cache" / "mnist"
    arrays = make_arrays()
    monkeypatch.setattr(data_mod, "_download_into", lambda root: write_set(root / "MNIST" / "raw", arrays))
    got = load_mnist(cache_dir=cache)
    assert got.provenance.kind == "download" and got.provenance.notice is None
    assert sorted(p.name for p in cache.iterdir()) == sorted(NAMES)
    assert list(cache.parent.iterdir()) == [cache]  # temporary directory removed
    assert torch.equal(got.test_y, torch.from_numpy(arrays[NAMES[3]]).long())

    monkeypatch.setattr(data_mod, "_download_into", lambda root: pytest.fail("downloaded twice"))
    assert load_mnist(cache_dir=cache).provenance.kind == "cache"


def test_damaged_cache_is_refilled_by_download(tmp_path: Path, monkeypatch: pytest.MonkeyPatch) -> None:
    cache = write_set(tmp_path / "cache" / "mnist")
    (cache / NAMES[0]).write_bytes(b"junk")
    monkeypatch.setattr(data_mod, "_download_into", lambda root: write_set(root))
    got = load_mnist(cache_dir=cache)
    assert got.provenance.kind == "download"
    assert load_mnist(cache_dir=cache).provenance.kind == "cache"
