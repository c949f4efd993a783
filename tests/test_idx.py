"""The IDX (MNIST-format) reader and the MNIST / Fashion-MNIST / KMNIST loader, on small files written
here in the published format: raw and gzip, truncated, wrong magic, trailing bytes, mismatched counts."""

from __future__ import annotations

import gzip
import os
import pathlib
import struct

import numpy as np
import pytest

from unlearn_jax import data
from unlearn_jax.study import Config, pipeline

FASHION = pathlib.Path("/usr/share/datasets/fashion-mnist")


def _idx_bytes(array: np.ndarray) -> bytes:
  """The published layout, written independently of the reader: 0, 0, type 0x08, ndim, sizes, data."""
  assert array.dtype == np.uint8
  return struct.pack(">BBBB", 0, 0, 0x08, array.ndim) + struct.pack(f">{array.ndim}I", *array.shape) + array.tobytes()


def _write_set(directory: pathlib.Path, n_train=40, n_test=20, rows=4, cols=3, compress=True, seed=0):
  rng = np.random.default_rng(seed)
  arrays = {
    "train-images-idx3-ubyte": rng.integers(0, 256, (n_train, rows, cols), dtype=np.uint8),
    "train-labels-idx1-ubyte": (np.arange(n_train) % 10).astype(np.uint8),
    "t10k-images-idx3-ubyte": rng.integers(0, 256, (n_test, rows, cols), dtype=np.uint8),
    "t10k-labels-idx1-ubyte": (np.arange(n_test) % 10).astype(np.uint8),
  }
  directory.mkdir(parents=True, exist_ok=True)
  for stem, array in arrays.items():
    raw = _idx_bytes(array)
    if compress:
      (directory / (stem + ".gz")).write_bytes(gzip.compress(raw))
    else:
      (directory / stem).write_bytes(raw)
  return arrays


@pytest.mark.parametrize("compress", [True, False])
def test_loader_reads_raw_and_gzip_files_exactly(tmp_path, compress):
  arrays = _write_set(tmp_path, compress=compress)
  ds = data.load_idx(tmp_path, normalization="none")
  np.testing.assert_allclose(ds.x_train[..., 0], arrays["train-images-idx3-ubyte"] / 255.0, rtol=1e-6)
  np.testing.assert_array_equal(ds.y_test, arrays["t10k-labels-idx1-ubyte"])
  assert ds.x_train.shape == (40, 4, 3, 1) and ds.x_train.dtype == np.float32 and ds.num_classes == 10
  # standardised per pixel from the training split by default, like the other loaders
  std = data.load_idx(tmp_path)
  assert np.all(np.abs(std.x_train.mean(0)) < 1e-5)


def test_subset_is_stratified_and_deterministic(tmp_path):
  _write_set(tmp_path, n_train=200, n_test=50)
  a = data.load_idx(tmp_path, n_train=50, n_test=20, seed=3)
  b = data.load_idx(tmp_path, n_train=50, n_test=20, seed=3)
  c = data.load_idx(tmp_path, n_train=50, n_test=20, seed=4)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert not np.array_equal(a.x_train, c.x_train)
  assert np.bincount(a.y_train).tolist() == [5] * 10 and np.bincount(a.y_test).tolist() == [2] * 10
  with pytest.raises(ValueError, match="n_train must be at most"):
    data.load_idx(tmp_path, n_train=201)


def _corrupt(tmp_path, stem, blob):
  _write_set(tmp_path, compress=False)
  (tmp_path / stem).write_bytes(blob)
  return tmp_path / stem


def test_truncated_file_is_refused_naming_the_file(tmp_path):
  raw = _idx_bytes(np.zeros((40, 4, 3), np.uint8))
  path = _corrupt(tmp_path, "train-images-idx3-ubyte", raw[:-7])
  with pytest.raises(ValueError, match=rf"{path.name}.*truncated.*shape \[40, 4, 3\]"):
    data.load_idx(tmp_path)
  path = _corrupt(tmp_path, "train-images-idx3-ubyte", raw[:10])
  with pytest.raises(ValueError, match="truncated inside its header"):
    data.load_idx(tmp_path)


def test_wrong_magic_trailing_bytes_and_dimensions_are_refused(tmp_path):
  raw = _idx_bytes(np.zeros((40, 4, 3), np.uint8))
  _corrupt(tmp_path, "train-images-idx3-ubyte", b"\x1f\x8b" + raw[2:])  # not 0x0000
  with pytest.raises(ValueError, match="magic number"):
    data.load_idx(tmp_path)
  _corrupt(tmp_path, "train-images-idx3-ubyte", raw + b"\0")
  with pytest.raises(ValueError, match="trailing bytes"):
    data.load_idx(tmp_path)
  _corrupt(tmp_path, "train-images-idx3-ubyte", _idx_bytes(np.zeros((40, 12), np.uint8)))
  with pytest.raises(ValueError, match="2 dimensions, expected 3"):
    data.load_idx(tmp_path)


def test_mismatched_counts_bad_labels_bad_gzip_and_missing_files(tmp_path):
  _corrupt(tmp_path, "train-labels-idx1-ubyte", _idx_bytes(np.zeros(39, np.uint8)))
  with pytest.raises(ValueError, match="40 images but .* 39 labels"):
    data.load_idx(tmp_path)
  _corrupt(tmp_path, "train-labels-idx1-ubyte", _idx_bytes(np.full(40, 12, np.uint8)))
  with pytest.raises(ValueError, match="label 12"):
    data.load_idx(tmp_path)
  d = tmp_path / "gz"
  _write_set(d)
  blob = (d / "t10k-images-idx3-ubyte.gz").read_bytes()
  (d / "t10k-images-idx3-ubyte.gz").write_bytes(blob[: len(blob) // 2])
  with pytest.raises(ValueError, match="not a complete gzip file"):
    data.load_idx(d)
  os.remove(d / "t10k-labels-idx1-ubyte.gz")
  with pytest.raises(FileNotFoundError, match="t10k-labels-idx1-ubyte"):
    data.load_idx(d)
  with pytest.raises(FileNotFoundError, match="does not exist"):
    data.load_idx(tmp_path / "nowhere")
  with pytest.raises(ValueError, match="name"):
    data.load_idx(tmp_path, name="emnist")


def test_registry_names_and_the_study_reads_them(tmp_path):
  _write_set(tmp_path)
  for name in ("mnist", "fashion_mnist", "kmnist"):
    ds = data.load_dataset(name, data_dir=tmp_path, n_train=20)
    assert ds.name == name and ds.x_train.shape == (20, 4, 3, 1)
    assert "t10k-images-idx3-ubyte" in data.DATASETS[name].files


@pytest.mark.skipif(not FASHION.is_dir(), reason="Debian's dataset-fashion-mnist is not installed")
def test_the_installed_fashion_mnist_files():
  ds = data.load_idx(FASHION, normalization="none")
  assert ds.x_train.shape == (60000, 28, 28, 1) and ds.x_test.shape == (10000, 28, 28, 1)
  assert np.bincount(ds.y_train).tolist() == [6000] * 10 and np.bincount(ds.y_test).tolist() == [1000] * 10
  assert 0.0 <= float(ds.x_train.min()) and float(ds.x_train.max()) == 1.0


@pytest.mark.slow  # the shipped Fashion-MNIST config, shrunk, end to end on an IDX fixture (~30 s)
def test_fashion_mnist_config_runs_end_to_end_on_an_idx_fixture(tmp_path):
  _write_set(tmp_path / "idx", n_train=300, n_test=60, rows=28, cols=28)
  cfg = Config.from_file(pathlib.Path(__file__).resolve().parents[1] / "configs" / "fashion_mnist.toml").replace(
    out_dir=str(tmp_path / "out"),
    data__data_dir=str(tmp_path / "idx"),
    data__num_train=200,
    training__num_steps=40,
    training__num_seeds=4,
    forget_sets__size=8,
    forget_sets__privacy_loss_bins=2,
    unlearning__num_seeds=4,
    unlearning__step_grid=[0, 10],
    unlearning__retrain_steps=40,
    evaluation__min_power=0.0,  # 4 vs 4 models: underpowered, enough for an end-to-end check
  )
  report = pipeline.run(cfg)
  assert report["config"]["data"]["name"] == "fashion_mnist" and report["training"]["num_seeds"] == 4
  assert (tmp_path / "out" / "report.json").is_file() and len(report["forget_sets"]) == 2 * (
    5 + 1 + 2 * 2
  )  # 5 selections, the clip-20 top set, 2 bins x 2 sets
  assert "e_barrier_grows_with_privacy_loss" in report["findings"]
