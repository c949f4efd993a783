"""Tests for unlearn_jax.data: built-in sets, helpers, and the CIFAR-10 / SVHN loaders on untrusted files."""

from __future__ import annotations

import os
import pathlib
import pickle
import struct
import zlib

import numpy as np
import pytest
import scipy.interpolate
import scipy.io
from sklearn import datasets as sk_datasets
from sklearn.linear_model import LogisticRegression

from unlearn_jax import data
from unlearn_jax.study import cli, saved

# --------------------------------------------------------------------------------------------------
# Dataset / validate_dataset
# --------------------------------------------------------------------------------------------------


def _toy(**overrides):
  fields = dict(
    x_train=np.zeros((4, 3), np.float32),
    y_train=np.array([0, 1, 2, 1], np.int32),
    x_test=np.zeros((2, 3), np.float32),
    y_test=np.array([2, 0], np.int32),
    num_classes=3,
    name="toy",
  )
  fields.update(overrides)
  return data.Dataset(**fields)


def test_validate_accepts_good_dataset():
  ds = _toy()
  assert data.validate_dataset(ds) is ds


@pytest.mark.parametrize(
  "overrides, match",
  [
    (dict(y_train=np.array([0, 1, 3, 1])), r"y_train must lie in \[0, num_classes\) = \[0, 3\).*\[3\]"),
    (dict(y_test=np.array([-1, 0])), r"y_test must lie in.*\[-1\]"),
    (dict(x_train=np.array([[0, 0, np.nan]] + [[0, 0, 0]] * 3, np.float32)), "x_train must be finite.*1 NaN/Inf"),
    (dict(x_test=np.array([[np.inf, 0, 0], [0, 0, 0]], np.float32)), "x_test must be finite"),
    (dict(y_train=np.array([0, 1, 2])), "disagree on the number of examples: 4 != 3"),
    (dict(y_train=np.zeros((4, 1), np.int32)), "y_train must be 1-D"),
    (dict(num_classes=1), "num_classes must be an integer >= 2, got 1"),
    (dict(x_test=np.zeros((2, 5), np.float32)), r"differ in shape: \(3,\) vs \(5,\)"),
    (dict(x_train=np.zeros((0, 3)), y_train=np.zeros(0, np.int32)), "at least one example"),
    (dict(x_train=np.zeros(4)), "at least one feature axis"),
    (dict(y_train=np.array([0, 1, 0.5, 1])), "integer class labels"),
  ],
)
def test_validate_rejects_bad_dataset(overrides, match):
  with pytest.raises((ValueError, TypeError), match=match):
    data.validate_dataset(_toy(**overrides))


def test_validate_rejects_non_dataset():
  with pytest.raises(TypeError, match="Dataset"):
    data.validate_dataset((1, 2, 3))


# --------------------------------------------------------------------------------------------------
# Digits, split, subsample, normalise
# --------------------------------------------------------------------------------------------------


def _rows(x):
  return {r.tobytes() for r in np.asarray(x, np.float64)}


def test_load_digits_defaults_match_demo_split_and_raw_values():
  ds = data.load_digits()
  raw = sk_datasets.load_digits()
  assert (ds.x_train.shape, ds.x_test.shape) == ((1400, 64), (397, 64))
  assert ds.x_train.dtype == np.float32 and ds.y_train.dtype == np.int32 and ds.num_classes == 10
  # The two splits partition the raw data set exactly (values / 16), labels travel with their rows.
  both_x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float64)
  both_y = np.concatenate([ds.y_train, ds.y_test])
  ref = {(r.tobytes(), int(t)) for r, t in zip(raw.data / 16.0, raw.target)}
  got = {(r.tobytes(), int(t)) for r, t in zip(both_x, both_y)}
  assert got == ref
  assert np.sort(both_x, axis=0).tolist() == np.sort(raw.data / 16.0, axis=0).tolist()
  assert ds.x_train.max() == 1.0 and ds.x_train.min() == 0.0


def test_load_digits_seeded():
  a, b, c = data.load_digits(seed=3), data.load_digits(seed=3), data.load_digits(seed=4)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert not np.array_equal(a.y_train, c.y_train)


def test_train_test_split_stratified_keeps_proportions():
  y = np.repeat(np.arange(3), [50, 30, 20])
  x = np.arange(100.0)[:, None]
  ds = data.train_test_split(x, y, test_fraction=0.2, seed=1, num_classes=3, name="t", stratify=True)
  assert np.bincount(ds.y_test, minlength=3).tolist() == [10, 6, 4]
  assert sorted(np.concatenate([ds.x_train, ds.x_test])[:, 0].tolist()) == list(range(100))


@pytest.mark.parametrize("test_fraction", [1.0, -0.1, float("nan")])
def test_train_test_split_rejects_bad_fraction(test_fraction):
  with pytest.raises(ValueError, match="test_fraction must lie in"):
    data.train_test_split(
      np.zeros((4, 1)), np.zeros(4, int), test_fraction=test_fraction, seed=0, num_classes=2, name="t"
    )


def test_subsample_fixed_seed_stratified_and_subset():
  ds = data.load_digits()
  a = data.subsample(ds, 200, seed=7, n_test=50, stratify=True)
  b = data.subsample(ds, 200, seed=7, n_test=50, stratify=True)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  assert a.x_train.shape == (200, 64) and a.x_test.shape == (50, 64)
  # Largest-remainder quotas computed independently from the class counts.
  counts = np.bincount(ds.y_train, minlength=10)
  exact = 200 * counts / counts.sum()
  assert np.all(np.abs(np.bincount(a.y_train, minlength=10) - exact) < 1)
  assert _rows(a.x_train) <= _rows(ds.x_train)
  c = data.subsample(ds, 200, seed=8)
  assert _rows(c.x_train) != _rows(a.x_train)


@pytest.mark.parametrize(
  "n_train, match", [(0, "n_train must be an integer >= 1"), (10**6, "at most"), (2.5, "n_train must be an integer")]
)
def test_subsample_rejects_bad_sizes(n_train, match):
  with pytest.raises((ValueError, TypeError), match=match):
    data.subsample(data.load_digits(), n_train)


def test_normalize_feature_uses_train_statistics():
  rng = np.random.default_rng(0)
  ds = _toy(
    x_train=rng.normal(3, 2, (50, 3)).astype(np.float32),
    y_train=np.zeros(50, np.int32),
    x_test=rng.normal(0, 1, (7, 3)).astype(np.float32),
    y_test=np.zeros(7, np.int32),
  )
  ds = ds._replace(x_train=ds.x_train.copy())
  ds.x_train[:, 2] = 5.0  # constant feature: divides by 1, no NaN
  out = data.normalize(ds, "feature")
  xtr = ds.x_train.astype(np.float64)
  mu, sd = xtr.mean(0), xtr.std(0)
  sd[2] = 1.0
  np.testing.assert_allclose(out.x_test, (ds.x_test - mu) / sd, rtol=1e-5, atol=1e-6)
  np.testing.assert_allclose(out.x_train, (xtr - mu) / sd, rtol=1e-5, atol=1e-6)
  assert np.all(np.isfinite(out.x_train))


def test_normalize_channel_and_minmax():
  rng = np.random.default_rng(1)
  x = rng.uniform(0, 255, (6, 4, 4, 3)).astype(np.float32)
  xt = rng.uniform(0, 255, (2, 4, 4, 3)).astype(np.float32)
  ds = data.Dataset(x, np.zeros(6, np.int32), xt, np.ones(2, np.int32), 2, "img")
  out = data.normalize(ds, "channel")
  x64 = x.astype(np.float64)
  for c in range(3):
    mu, sd = x64[..., c].mean(), x64[..., c].std()
    np.testing.assert_allclose(out.x_test[..., c], (xt[..., c] - mu) / sd, rtol=1e-5, atol=1e-5)
  mm = data.normalize(ds, "minmax")
  np.testing.assert_allclose(mm.x_test, (xt - x64.min()) / (x64.max() - x64.min()), rtol=1e-5, atol=1e-6)
  assert mm.x_train.min() == 0.0 and abs(mm.x_train.max() - 1.0) < 1e-6
  with pytest.raises(ValueError, match=r"method must be one of .*'feature'.*got 'zscore'"):
    data.normalize(ds, "zscore")


# --------------------------------------------------------------------------------------------------
# MNIST-1D and Gaussian mixtures
# --------------------------------------------------------------------------------------------------


def test_mnist1d_templates_recipe():
  t = data.mnist1d_templates()
  assert t.shape == (10, 12)
  np.testing.assert_allclose(t[:, 0], 0.0, atol=1e-12)
  # Each row is an affine image of a standardised row: std 1/6 after the /6, and the last point of
  # every template also returns to the start level (all raw templates start and end at 5).
  np.testing.assert_allclose(t.std(axis=1), 1 / 6, rtol=1e-12)
  np.testing.assert_allclose(t[:, -1], 0.0, atol=1e-12)
  assert len({row.tobytes() for row in t}) == 10


def test_mnist1d_deterministic_balanced_standardised():
  a = data.make_mnist1d(1000, seed=5)
  b = data.make_mnist1d(1000, seed=5)
  c = data.make_mnist1d(1000, seed=6)
  np.testing.assert_array_equal(a.x_train, b.x_train)
  np.testing.assert_array_equal(a.y_test, b.y_test)
  assert not np.array_equal(a.x_train, c.x_train)
  assert a.x_train.shape == (800, 40) and a.x_test.shape == (200, 40)
  y = np.concatenate([a.y_train, a.y_test])
  assert np.bincount(y).tolist() == [100] * 10
  x = np.concatenate([a.x_train, a.x_test]).astype(np.float64)
  assert abs(x.mean()) < 1e-5 and abs(x.std() - 1) < 1e-5


def test_mnist1d_noise_free_equals_interpolated_templates():
  # With every random transformation switched off, each example is its template resampled to 40 points
  # (then the data set is standardised). Reference uses scipy's interp1d, independent of the code.
  ds = data.make_mnist1d(
    20,
    seed=0,
    padding=(0, 0),
    scale_coeff=0.0,
    max_translation=1,
    corr_noise_scale=0.0,
    iid_noise_scale=0.0,
    shear_scale=0.0,
    train_fraction=0.5,
  )
  t = data.mnist1d_templates() + 1e-8
  ref = scipy.interpolate.interp1d(np.linspace(0, 1, 12), t, axis=1)(np.linspace(0, 1, 40))
  x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float64)
  y = np.concatenate([ds.y_train, ds.y_test])
  all_ref = ref[y]
  all_ref = (all_ref - all_ref.mean()) / all_ref.std()
  np.testing.assert_allclose(x, all_ref, atol=1e-5)


def test_mnist1d_is_hard_for_least_squares():
  # A linear least-squares classifier (one-hot targets) is far above chance (10%) but far from solving
  # the task: the recipe's translation, shear and noise are what make MNIST-1D hard for linear models.
  ds = data.make_mnist1d(5000, seed=42)
  add_bias = lambda x: np.c_[x.astype(np.float64), np.ones(len(x))]
  w = np.linalg.lstsq(add_bias(ds.x_train), np.eye(10)[ds.y_train], rcond=None)[0]
  score = np.mean(np.argmax(add_bias(ds.x_test) @ w, axis=1) == ds.y_test)
  assert 0.15 < score < 0.40, score


@pytest.mark.slow
def test_mnist1d_is_hard_for_a_linear_model():
  # The published benchmark: logistic regression ~32% test accuracy on MNIST-1D (Greydanus 2020, Fig. 2),
  # far from trivial and far above chance (10%).

  ds = data.make_mnist1d(5000, seed=42)
  score = LogisticRegression(max_iter=2000).fit(ds.x_train, ds.y_train).score(ds.x_test, ds.y_test)
  assert 0.25 < score < 0.45, score


def test_mnist1d_rejects_bad_args():
  with pytest.raises(ValueError, match="num_samples must be an integer >= 10, got 5"):
    data.make_mnist1d(5)
  with pytest.raises(ValueError, match="padding"):
    data.make_mnist1d(100, padding=(10, 5))


def test_gaussian_mixture_statistics():
  ds = data.make_gaussian_mixture(4000, 6, 3, separation=4.0, noise_std=0.5, seed=2)
  assert ds.x_train.shape == (3200, 6) and ds.x_test.shape == (800, 6) and ds.num_classes == 3
  x = np.concatenate([ds.x_train, ds.x_test]).astype(np.float64)
  y = np.concatenate([ds.y_train, ds.y_test])
  for c in range(3):
    xc = x[y == c]
    # Sample mean norm within 5 standard errors of the separation; per-coordinate std = noise_std.
    se = 0.5 * np.sqrt(6 / len(xc))
    assert abs(np.linalg.norm(xc.mean(0)) - 4.0) < 5 * se
    np.testing.assert_allclose(xc.std(0), 0.5, rtol=5 / np.sqrt(len(xc)))
  np.testing.assert_array_equal(
    ds.x_train, data.make_gaussian_mixture(4000, 6, 3, separation=4.0, noise_std=0.5, seed=2).x_train
  )
  with pytest.raises(ValueError, match="num_classes must be an integer >= 2, got 1"):
    data.make_gaussian_mixture(10, 2, 1)
  with pytest.raises(ValueError, match="noise_std"):
    data.make_gaussian_mixture(10, 2, 2, noise_std=0.0)


# --------------------------------------------------------------------------------------------------
# CIFAR-10 binary
# --------------------------------------------------------------------------------------------------

_CIFAR_FILES = [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]


def _write_cifar(directory, counts=(3, 2, 2, 1, 2, 4), seed=0):
  rng = np.random.default_rng(seed)
  records = {}
  os.makedirs(directory, exist_ok=True)
  for name, count in zip(_CIFAR_FILES, counts):
    labels = rng.integers(0, 10, count, dtype=np.uint8)
    pixels = rng.integers(0, 256, (count, 3072), dtype=np.uint8)
    rec = np.concatenate([labels[:, None], pixels], axis=1)
    (directory / name).write_bytes(rec.tobytes())
    records[name] = rec
  return records


def _expected_image(record):
  """Reference decode: pixel (h, w, c) sits at byte 1 + c*1024 + h*32 + w of the record."""
  img = np.empty((32, 32, 3))
  for c in range(3):
    for h in range(32):
      img[h, :, c] = record[1 + c * 1024 + h * 32 : 1 + c * 1024 + h * 32 + 32]
  return img


def test_cifar10_reads_binary_records(tmp_path):
  records = _write_cifar(tmp_path)
  ds = data.load_cifar10(tmp_path)
  train = np.concatenate([records[n] for n in _CIFAR_FILES[:5]])
  test = records["test_batch.bin"]
  assert ds.x_train.shape == (10, 32, 32, 3) and ds.x_test.shape == (4, 32, 32, 3)
  assert ds.name == "cifar10" and ds.num_classes == 10
  np.testing.assert_array_equal(ds.y_train, train[:, 0])
  np.testing.assert_array_equal(ds.y_test, test[:, 0])
  for i in range(10):
    np.testing.assert_allclose(ds.x_train[i], _expected_image(train[i]) / 255, rtol=1e-6)
  np.testing.assert_allclose(ds.x_test[3], _expected_image(test[3]) / 255, rtol=1e-6)


def test_cifar10_subdirectory_subsample_and_normalisation(tmp_path):
  records = _write_cifar(tmp_path / "cifar-10-batches-bin")
  ds = data.load_cifar10(tmp_path, n_train=4, n_test=2, seed=3, normalization="channel")
  assert ds.x_train.shape == (4, 32, 32, 3) and ds.x_test.shape == (2, 32, 32, 3)
  np.testing.assert_allclose(ds.x_train.reshape(-1, 3).mean(0), 0, atol=1e-5)
  full = data.load_cifar10(tmp_path / "cifar-10-batches-bin")
  again = data.load_cifar10(tmp_path, n_train=4, n_test=2, seed=3)
  assert _rows(again.x_train.reshape(4, -1)) <= _rows(full.x_train.reshape(10, -1))
  assert set(again.y_test.tolist()) <= set(records["test_batch.bin"][:, 0].tolist())


def test_cifar10_missing_directory_and_file(tmp_path):
  with pytest.raises(FileNotFoundError, match="CIFAR-10 directory .*nope.* does not exist"):
    data.load_cifar10(tmp_path / "nope")
  _write_cifar(tmp_path)
  (tmp_path / "test_batch.bin").unlink()
  with pytest.raises(FileNotFoundError, match="missing file .*test_batch.bin"):
    data.load_cifar10(tmp_path)
  with pytest.raises(NotADirectoryError):
    data.load_cifar10(tmp_path / "data_batch_1.bin")


def test_cifar10_truncated_file(tmp_path):
  _write_cifar(tmp_path)
  path = tmp_path / "data_batch_2.bin"
  path.write_bytes(path.read_bytes()[:-1])
  with pytest.raises(ValueError, match=r"data_batch_2.bin.*truncated or corrupt.*6145 bytes.*3073"):
    data.load_cifar10(tmp_path)


def test_cifar10_empty_file(tmp_path):
  _write_cifar(tmp_path)
  (tmp_path / "data_batch_3.bin").write_bytes(b"")
  with pytest.raises(ValueError, match="data_batch_3.bin.*empty"):
    data.load_cifar10(tmp_path)


def test_cifar10_bad_label_byte(tmp_path):
  records = _write_cifar(tmp_path)
  rec = records["test_batch.bin"].copy()
  rec[2, 0] = 10
  (tmp_path / "test_batch.bin").write_bytes(rec.tobytes())
  with pytest.raises(ValueError, match=r"test_batch.bin.*label byte 10 > 9 in record 2"):
    data.load_cifar10(tmp_path)


def test_cifar10_size_limits_checked_before_reading(tmp_path):
  _write_cifar(tmp_path)
  with pytest.raises(ValueError, match="more than max_file_bytes = 5000"):
    data.load_cifar10(tmp_path, max_file_bytes=5000)
  with pytest.raises(ValueError, match="holds 3 records, more than max_examples = 2"):
    data.load_cifar10(tmp_path, max_examples=2)
  # A (sparse) file claiming a million images, ~3 GB: refused by size alone, nothing is read.
  big = tmp_path / "data_batch_1.bin"
  with open(big, "r+b") as f:
    try:
      f.truncate(3073 * 10**6)
    except OSError:
      pytest.skip("file system refuses a sparse 3 GB file")
  with pytest.raises(ValueError, match="3073000000 bytes, more than max_file_bytes"):
    data.load_cifar10(tmp_path)


class _Payload:
  """Unpickling this object would create ``self.marker`` (stands in for arbitrary code)."""

  def __init__(self, marker):
    self.marker = str(marker)

  def __reduce__(self):
    return (open, (self.marker, "w"))


def _malicious_pickle(marker):
  return pickle.dumps({b"data": _Payload(marker), b"labels": [0]}, protocol=2)


def test_cifar10_python_pickle_version_is_refused_and_never_run(tmp_path):
  marker = tmp_path / "PWNED"
  payload = _malicious_pickle(marker)
  # Sanity: the payload really does run when unpickled (in a scratch location).
  probe = tmp_path / "probe"
  pickle.loads(_malicious_pickle(probe))
  assert probe.exists()
  probe.unlink()
  (tmp_path / "data_batch_1").write_bytes(payload)
  with pytest.raises(ValueError, match="python \\(pickle\\) distribution, which is never unpickled"):
    data.load_cifar10(tmp_path)
  assert not marker.exists()


def test_cifar10_pickle_disguised_as_binary_is_rejected(tmp_path):
  marker = tmp_path / "PWNED"
  _write_cifar(tmp_path)
  payload = _malicious_pickle(marker)
  (tmp_path / "data_batch_1.bin").write_bytes(payload)
  with pytest.raises(ValueError, match="data_batch_1.bin.*(not a multiple|label byte)"):
    data.load_cifar10(tmp_path)
  # Even padded to a whole record, the pickle's first byte (0x80 = 128) is no valid label.
  (tmp_path / "data_batch_1.bin").write_bytes(payload + bytes(3073 - len(payload) % 3073))
  with pytest.raises(ValueError, match="label byte 128 > 9"):
    data.load_cifar10(tmp_path)
  assert not marker.exists()


# --------------------------------------------------------------------------------------------------
# SVHN .mat
# --------------------------------------------------------------------------------------------------


def _svhn_arrays(n, seed):
  rng = np.random.default_rng(seed)
  x = rng.integers(0, 256, (32, 32, 3, n), dtype=np.uint8)
  y = rng.integers(1, 11, (n, 1)).astype(np.uint8)
  return x, y


def _write_svhn(directory, n_train=5, n_test=3, compress=True):
  arrays = {}
  for name, n, seed in (("train_32x32.mat", n_train, 0), ("test_32x32.mat", n_test, 1)):
    x, y = _svhn_arrays(n, seed)
    y[0, 0] = 10
    scipy.io.savemat(directory / name, {"X": x, "y": y}, do_compression=compress)
    arrays[name] = (x, y)
  return arrays


def _mat_element(mtype, payload):
  """A MAT v5 data element: 8-byte tag then payload padded to 8 bytes (little endian)."""
  return struct.pack("<II", mtype, len(payload)) + payload + bytes(-len(payload) % 8)


def _mat_matrix(name, array_class, dims, data_type, data, claimed_bytes=None):
  """Hand-written miMATRIX element, independent of scipy's writer."""
  body = _mat_element(6, struct.pack("<II", array_class, 0))
  body += _mat_element(5, struct.pack(f"<{len(dims)}i", *dims))
  body += _mat_element(1, name.encode())
  tag = struct.pack("<II", data_type, len(data) if claimed_bytes is None else claimed_bytes)
  body += tag + data + bytes(-len(data) % 8)
  return _mat_element(14, body)


def _mat_file(*elements, compress=False):
  header = b"MATLAB 5.0 MAT-file, hand written".ljust(116, b" ") + bytes(8) + struct.pack("<H", 0x0100) + b"IM"
  out = header
  for el in elements:
    if compress:  # compressed elements are not padded (as MATLAB and scipy write them)
      packed = zlib.compress(el)
      out += struct.pack("<II", 15, len(packed)) + packed
    else:
      out += el
  return out


@pytest.mark.parametrize("compress", [True, False])
def test_svhn_reads_mat_files(tmp_path, compress):
  arrays = _write_svhn(tmp_path, compress=compress)
  ds = data.load_svhn(tmp_path)
  x, y = arrays["train_32x32.mat"]
  assert ds.x_train.shape == (5, 32, 32, 3) and ds.name == "svhn"
  for i in range(5):
    np.testing.assert_allclose(ds.x_train[i], x[:, :, :, i] / 255, rtol=1e-6)
  np.testing.assert_array_equal(ds.y_train, np.where(y[:, 0] == 10, 0, y[:, 0]))
  assert ds.y_train[0] == 0
  xt, yt = arrays["test_32x32.mat"]
  np.testing.assert_allclose(ds.x_test[2], xt[:, :, :, 2] / 255, rtol=1e-6)
  np.testing.assert_array_equal(ds.y_test, np.where(yt[:, 0] == 10, 0, yt[:, 0]))


@pytest.mark.parametrize("compress", [True, False])
def test_svhn_hand_written_matlab_layout(tmp_path, compress):
  # MATLAB stores the double-class y compactly as miUINT8 bytes; X is uint8 class with miUINT8 data.
  n = 2
  x, y = _svhn_arrays(n, 3)
  xel = _mat_matrix("X", 9, (32, 32, 3, n), 2, np.asfortranarray(x).tobytes(order="F"))
  yel = _mat_matrix("y", 6, (n, 1), 2, np.array([10, 7], np.uint8).tobytes())
  for name in ("train_32x32.mat", "test_32x32.mat"):
    (tmp_path / name).write_bytes(_mat_file(xel, yel, compress=compress))
  ds = data.load_svhn(tmp_path)
  assert ds.y_train.tolist() == [0, 7]
  np.testing.assert_allclose(ds.x_train[1], x[:, :, :, 1] / 255, rtol=1e-6)


def test_svhn_claim_of_huge_image_count_refused_before_allocation(tmp_path):
  _write_svhn(tmp_path)
  n = 2**31 - 1  # the largest count a MAT int32 dimension can claim: 6.6 TB of pixels
  xel = _mat_matrix("X", 9, (32, 32, 3, n), 2, bytes(64), claimed_bytes=64)
  yel = _mat_matrix("y", 6, (n, 1), 2, bytes(8))
  for compress in (False, True):
    (tmp_path / "train_32x32.mat").write_bytes(_mat_file(xel, yel, compress=compress))
    with pytest.raises(ValueError, match=f"X claims {n} images; allowed 1 to max_examples"):
      data.load_svhn(tmp_path)
  # Within the count limit but the data tag lies about its size.
  xel = _mat_matrix("X", 9, (32, 32, 3, 2), 2, bytes(64), claimed_bytes=32 * 32 * 3 * 10**6)
  for compress in (False, True):
    (tmp_path / "train_32x32.mat").write_bytes(
      _mat_file(xel, _mat_matrix("y", 6, (2, 1), 2, bytes(2)), compress=compress)
    )
    with pytest.raises(ValueError, match="variable 'X' of shape .* claims 3072000000 data bytes"):
      data.load_svhn(tmp_path)
  # An outer element claiming more bytes than the file holds.
  (tmp_path / "train_32x32.mat").write_bytes(_mat_file()[:128] + struct.pack("<II", 14, 10**9) + bytes(64))
  with pytest.raises(ValueError, match="truncated or corrupt: an element at byte 128 claims 1000000000 bytes"):
    data.load_svhn(tmp_path)


def test_svhn_missing_and_corrupt_files(tmp_path):
  with pytest.raises(FileNotFoundError, match="SVHN directory"):
    data.load_svhn(tmp_path / "absent")
  _write_svhn(tmp_path)
  path = tmp_path / "test_32x32.mat"
  full = path.read_bytes()
  path.write_bytes(full[: len(full) // 2])
  with pytest.raises(ValueError, match="test_32x32.mat.*(truncated|corrupt)"):
    data.load_svhn(tmp_path)
  path.write_bytes(b"not a mat file at all" * 10)
  with pytest.raises(ValueError, match="not a MATLAB v5 .mat file"):
    data.load_svhn(tmp_path)
  path.write_bytes(b"\x89HDF\r\n\x1a\n" + bytes(200))
  with pytest.raises(ValueError, match="v7.3 \\(HDF5\\)"):
    data.load_svhn(tmp_path)
  path.unlink()
  with pytest.raises(FileNotFoundError, match="missing file .*test_32x32.mat"):
    data.load_svhn(tmp_path)


def test_svhn_wrong_shapes_and_labels(tmp_path):
  _write_svhn(tmp_path)
  path = tmp_path / "train_32x32.mat"
  scipy.io.savemat(path, {"X": np.zeros((32, 32, 4), np.uint8), "y": np.ones((4, 1), np.uint8)})
  with pytest.raises(ValueError, match=r"X must have shape \(32, 32, 3, N\), got \(32, 32, 4\)"):
    data.load_svhn(tmp_path)
  scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 4), np.uint8), "y": np.ones((3, 1), np.uint8)})
  with pytest.raises(ValueError, match=r"y must have shape \(4, 1\)"):
    data.load_svhn(tmp_path)
  scipy.io.savemat(path, {"X": np.zeros((32, 32, 3, 2), np.uint8), "y": np.array([[1], [11]], np.uint8)})
  with pytest.raises(ValueError, match=r"labels must be integers in \[0, 10\].*\[11"):
    data.load_svhn(tmp_path)
  scipy.io.savemat(path, {"images": np.zeros((32, 32, 3, 2), np.uint8)})
  with pytest.raises(ValueError, match="has no variable 'X'"):
    data.load_svhn(tmp_path)


def test_svhn_pickle_is_rejected_and_never_run(tmp_path):
  _write_svhn(tmp_path)
  marker = tmp_path / "PWNED"
  (tmp_path / "train_32x32.mat").write_bytes(_malicious_pickle(marker))
  with pytest.raises(ValueError, match="train_32x32.mat.*(not a MATLAB|truncated)"):
    data.load_svhn(tmp_path)
  assert not marker.exists()


@pytest.mark.slow  # the shipped CPU variant of the ResNet-18 config, end to end through `unlearn-jax run` (~6 min)
def test_cifar10_resnet18_cpu_config_runs_end_to_end_through_the_cli(tmp_path):
  """configs/cifar10_resnet18_cpu.toml (the accelerator config's code path: CIFAR-10 binary files, the
  ResNet-18 architecture, shuffled minibatch SGLD with the ledger, chunked all-n passes) on CIFAR-shaped
  synthetic files with 2,100 training images (2,048 used) through the console script's entry point."""
  _write_cifar(tmp_path / "cifar", counts=(420, 420, 420, 420, 420, 300))
  config = pathlib.Path(__file__).resolve().parents[1] / "configs" / "cifar10_resnet18_cpu.toml"
  out = tmp_path / "out"
  code = cli.main(["run", "--quiet", "--config", str(config), "--data-dir", str(tmp_path / "cifar"), "--out", str(out)])
  assert code == 0
  results = saved.load(out)
  assert results.report["config"]["model"]["name"] == "resnet18" and results.report["training"]["num_seeds"] == 4
  privacy_loss = results.per_example["privacy_loss"]
  assert privacy_loss.shape == (2048,)
  # P is the mean over 4 chains of a half epoch each (1,024 rows charged per chain, shuffled apart), so
  # at least 1,024 examples carry a positive loss; the certificate never needs fewer steps for a larger P
  assert np.all(np.isfinite(privacy_loss)) and np.all(privacy_loss >= 0) and (privacy_loss > 0).sum() >= 1024
  order = np.argsort(privacy_loss, kind="stable")
  assert np.all(np.diff(results.per_example["certified_steps"][order]) >= 0)
