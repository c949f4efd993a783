"""Built-in data sets and safe loaders for CIFAR-10 (binary) and SVHN (cropped digits, ``.mat``).

Everything here is host-side NumPy: a :class:`Dataset` holds float32 features and int32 labels, and the
training drivers move it onto devices. Built-in sets are generated or read locally and deterministically
from a seed; nothing is ever downloaded.

Untrusted files (issue 10): the file loaders never unpickle and never evaluate anything. CIFAR-10 is read
only from its *binary* distribution (fixed-size records of raw bytes); the python (pickle) distribution is
refused with an error. SVHN ``.mat`` files are first pre-scanned by a small MATLAB-v5 header reader of our
own, which checks every claimed size against explicit limits *before* anything large is allocated, and are
then read with :func:`scipy.io.loadmat` (whose v5 reader parses typed binary records and never unpickles).

Conventions: images are NHWC (``(n, 32, 32, 3)``), pixels scaled by ``scale`` (default 1/255, i.e. to
[0, 1]); labels are int32 in ``[0, num_classes)``.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any, NamedTuple

import numpy as np

from unlearn_jax import _checks

__all__ = [
    "Dataset",
    "validate_dataset",
    "train_test_split",
    "subsample",
    "normalize",
    "load_digits",
    "make_mnist1d",
    "mnist1d_templates",
    "make_gaussian_mixture",
    "load_cifar10",
    "load_svhn",
    "DEFAULT_MAX_FILE_BYTES",
    "DEFAULT_MAX_EXAMPLES",
]

#: Largest data file a loader reads (bytes); larger files are refused before reading.
DEFAULT_MAX_FILE_BYTES = 2**31
#: Largest number of examples a file may claim; larger claims are refused before allocating.
DEFAULT_MAX_EXAMPLES = 10_000_000


class Dataset(NamedTuple):
  """A classification data set held on the host.

  Attributes:
    x_train: (n_train, ...) float32 features.
    y_train: (n_train,) int32 labels in ``[0, num_classes)``.
    x_test: (n_test, ...) float32 features (n_test may be 0).
    y_test: (n_test,) int32 labels.
    num_classes: number of classes.
    name: a short name ("digits", "mnist1d", "cifar10", ...).
  """

  x_train: np.ndarray
  y_train: np.ndarray
  x_test: np.ndarray
  y_test: np.ndarray
  num_classes: int
  name: str


# --------------------------------------------------------------------------------------------------
# Validation and generic helpers
# --------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r} of type {type(value).__name__}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_labels(name: str, y: np.ndarray, num_classes: int) -> None:
  if y.ndim != 1:
    raise ValueError(f"{name} must be 1-D (one label per example), got shape {y.shape}")
  if y.dtype.kind not in "iu":
    if y.dtype.kind == "f" and y.size and np.all(np.isfinite(y)) and np.all(y == np.round(y)):
      pass  # integral floats are accepted
    elif y.size:
      raise TypeError(f"{name} must hold integer class labels, got dtype {y.dtype}")
  if y.size:
    lo, hi = y.min(), y.max()
    if lo < 0 or hi >= num_classes:
      bad = y[(y < 0) | (y >= num_classes)]
      raise ValueError(
          f"{name} must lie in [0, num_classes) = [0, {num_classes}), got {bad.size} label(s) outside, "
          f"e.g. {bad[:5].tolist()}")


def validate_dataset(dataset: Dataset) -> Dataset:
  """Checks a :class:`Dataset` and returns it unchanged.

  Checks: ``num_classes`` an integer >= 2; features numeric, finite (no NaN/Inf) and at least 1-D per
  example; labels 1-D integers in ``[0, num_classes)``; matching example counts; at least one training
  example; train and test features of the same per-example shape.

  Args:
    dataset: the data set.

  Returns:
    ``dataset`` itself.

  Raises:
    TypeError, ValueError: naming the field, the offending value and what is allowed.

  Examples:
    >>> import numpy as np
    >>> ds = Dataset(np.zeros((3, 2), np.float32), np.array([0, 1, 1], np.int32),
    ...              np.zeros((1, 2), np.float32), np.array([5], np.int32), 2, "toy")
    >>> try:
    ...   validate_dataset(ds)
    ... except ValueError as e:
    ...   print("y_test" in str(e))
    True
  """
  if not isinstance(dataset, Dataset):
    raise TypeError(f"dataset must be an unlearn_jax.data.Dataset, got {type(dataset).__name__}")
  num_classes = _check_int("num_classes", dataset.num_classes, minimum=2)
  shapes = {}
  for split in ("train", "test"):
    x = np.asarray(getattr(dataset, f"x_{split}"))
    y = np.asarray(getattr(dataset, f"y_{split}"))
    if x.dtype.kind not in "biuf":
      raise TypeError(f"x_{split} must be a numeric array, got dtype {x.dtype}")
    if x.ndim < 2:
      raise ValueError(f"x_{split} must have shape (n, ...) with at least one feature axis, got shape {x.shape}")
    _checks.check_finite_array(f"x_{split}", x)
    _check_labels(f"y_{split}", y, num_classes)
    if x.shape[0] != y.shape[0]:
      raise ValueError(f"x_{split} and y_{split} disagree on the number of examples: {x.shape[0]} != {y.shape[0]}")
    shapes[split] = x.shape[1:]
  if np.shape(dataset.x_train)[0] == 0:
    raise ValueError("x_train must hold at least one example, got n_train = 0")
  if np.shape(dataset.x_test)[0] and shapes["train"] != shapes["test"]:
    raise ValueError(f"x_train and x_test examples differ in shape: {shapes['train']} vs {shapes['test']}")
  return dataset


def _make(x_train, y_train, x_test, y_test, num_classes, name) -> Dataset:
  ds = Dataset(
      np.ascontiguousarray(x_train, dtype=np.float32), np.asarray(y_train).astype(np.int32),
      np.ascontiguousarray(x_test, dtype=np.float32), np.asarray(y_test).astype(np.int32),
      int(num_classes), str(name))
  return validate_dataset(ds)


def _stratified_indices(y: np.ndarray, n: int, rng: np.random.Generator) -> np.ndarray:
  """n indices whose class counts follow y's class proportions (largest remainder), sorted."""
  classes, counts = np.unique(y, return_counts=True)
  exact = n * counts / counts.sum()
  quota = np.floor(exact).astype(int)
  remainder = n - quota.sum()
  order = np.lexsort((classes, -(exact - quota)))  # largest fractional part first, ties by class
  quota[order[:remainder]] += 1
  chosen = [rng.permutation(np.flatnonzero(y == c))[:q] for c, q in zip(classes, quota)]
  return np.sort(np.concatenate(chosen))


def train_test_split(x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int, num_classes: int,
                     name: str, stratify: bool = False) -> Dataset:
  """Splits ``(x, y)`` into a :class:`Dataset` with a fixed-seed random permutation.

  Args:
    x: (n, ...) features.
    y: (n,) integer labels.
    test_fraction: fraction in [0, 1) of examples put in the test split (``round(test_fraction * n)``).
    seed: NumPy seed of the permutation.
    num_classes: number of classes.
    name: data-set name.
    stratify: keep class proportions in the test split (largest-remainder rounding).

  Returns:
    The :class:`Dataset`; both splits keep the original relative order of their examples.

  Examples:
    >>> import numpy as np
    >>> ds = train_test_split(np.arange(20.).reshape(10, 2), np.arange(10) % 2, test_fraction=0.3,
    ...                       seed=0, num_classes=2, name="toy")
    >>> ds.x_train.shape, ds.x_test.shape
    ((7, 2), (3, 2))
  """
  _checks.check_probability("test_fraction", test_fraction, open_low=False, open_high=True)
  x = np.asarray(x)
  y = np.asarray(y)
  if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0]:
    raise ValueError(f"x and y must share the leading example axis, got shapes {x.shape} and {y.shape}")
  n = y.shape[0]
  n_test = int(round(test_fraction * n))
  rng = np.random.default_rng(seed)
  if stratify:
    test_idx = _stratified_indices(y, n_test, rng)
  else:
    test_idx = np.sort(rng.permutation(n)[:n_test])
  mask = np.zeros(n, bool)
  mask[test_idx] = True
  return _make(x[~mask], y[~mask], x[mask], y[mask], num_classes, name)


def subsample(dataset: Dataset, n_train: int | None, seed: int = 0, *, n_test: int | None = None,
              stratify: bool = False) -> Dataset:
  """Keeps a fixed-seed random subset of the training (and optionally test) examples.

  Args:
    dataset: the data set.
    n_train: number of training examples to keep (None keeps all); at most ``len(y_train)``.
    seed: NumPy seed; the same seed gives the same subset.
    n_test: number of test examples to keep (None keeps all).
    stratify: keep class proportions (largest-remainder rounding).

  Returns:
    A new :class:`Dataset`; kept examples stay in their original relative order.

  Examples:
    >>> ds = subsample(load_digits(), 100, seed=0, stratify=True)
    >>> ds.x_train.shape, int((ds.y_train == 0).sum())
    ((100, 64), 10)
  """
  validate_dataset(dataset)
  rng = np.random.default_rng(seed)
  out = {}
  for split, n in (("train", n_train), ("test", n_test)):
    x, y = getattr(dataset, f"x_{split}"), getattr(dataset, f"y_{split}")
    if n is None:
      out[split] = (x, y)
      continue
    n = _check_int(f"n_{split}", n, minimum=1 if split == "train" else 0)
    if n > y.shape[0]:
      raise ValueError(f"n_{split} must be at most the number of {split} examples {y.shape[0]}, got {n}")
    idx = _stratified_indices(y, n, rng) if stratify else np.sort(rng.permutation(y.shape[0])[:n])
    out[split] = (x[idx], y[idx])
  return _make(*out["train"], *out["test"], dataset.num_classes, dataset.name)


_NORMALIZATIONS = ("none", "feature", "channel", "minmax")


def normalize(dataset: Dataset, method: str = "feature", *, eps: float = 1e-8) -> Dataset:
  """Normalises features with statistics computed on the training split only.

  Methods:
    * ``"feature"``: per-feature standardisation ``(x - mean) / std`` (mean/std over training examples,
      separately for every feature position).
    * ``"channel"``: per-channel standardisation, statistics over every axis but the last (NHWC images).
    * ``"minmax"``: ``(x - min) / (max - min)`` with the global training min and max, i.e. [0, 1] scaling.
    * ``"none"``: unchanged.

  A statistic with spread <= ``eps`` (a constant feature, e.g. the always-blank corner pixels of digits)
  divides by 1 instead, so no NaN/Inf is produced.

  Args:
    dataset: the data set.
    method: one of "none", "feature", "channel", "minmax".
    eps: spread below which no division happens.

  Returns:
    A new :class:`Dataset` with float32 features.

  Examples:
    >>> ds = normalize(load_digits(), "feature")
    >>> bool(abs(ds.x_train.mean(0)).max() < 1e-5)
    True
  """
  _checks.check_choice("method", method, _NORMALIZATIONS)
  validate_dataset(dataset)
  if method == "none":
    return dataset
  xtr = dataset.x_train.astype(np.float64)
  if method == "feature":
    shift, spread = xtr.mean(axis=0), xtr.std(axis=0)
  elif method == "channel":
    axes = tuple(range(xtr.ndim - 1))
    shift, spread = xtr.mean(axis=axes), xtr.std(axis=axes)
  else:
    shift, spread = xtr.min(), xtr.max() - xtr.min()
  spread = np.where(spread > eps, spread, 1.0)
  scale = lambda x: ((x.astype(np.float64) - shift) / spread).astype(np.float32)
  return _make(scale(dataset.x_train), dataset.y_train, scale(dataset.x_test), dataset.y_test,
               dataset.num_classes, dataset.name)


def _finish(ds: Dataset, *, n_train: int | None, n_test: int | None, normalization: str, seed: int) -> Dataset:
  if n_train is not None or n_test is not None:
    ds = subsample(ds, n_train, seed, n_test=n_test)
  return normalize(ds, normalization)


# --------------------------------------------------------------------------------------------------
# Built-in data sets
# --------------------------------------------------------------------------------------------------


def load_digits(*, test_fraction: float = 397 / 1797, seed: int = 0, scale: float = 1 / 16,
                normalization: str = "none", n_train: int | None = None,
                n_test: int | None = None) -> Dataset:
  """scikit-learn's bundled 8x8 digits (1,797 images, 64 features, 10 classes; read locally).

  The defaults give the demo's split of FINDINGS.md: 1,400 train / 397 test, features divided by 16
  (pixel counts 0..16 -> [0, 1]).

  Args:
    test_fraction: fraction of the 1,797 examples in the test split.
    seed: seed of the split (and of the optional subsample).
    scale: factor applied to the raw 0..16 pixel values.
    normalization: see :func:`normalize` (applied after ``scale``).
    n_train, n_test: optional fixed-seed subsample sizes.

  Returns:
    A :class:`Dataset` named "digits" with x of shape (n, 64).

  Examples:
    >>> ds = load_digits()
    >>> ds.x_train.shape, ds.x_test.shape, float(ds.x_train.max())
    ((1400, 64), (397, 64), 1.0)
  """
  from sklearn import datasets as sk_datasets  # local import: sklearn is slow to import

  _checks.check_positive("scale", scale)
  raw = sk_datasets.load_digits()
  ds = train_test_split(raw.data * scale, raw.target, test_fraction=test_fraction, seed=seed,
                        num_classes=10, name="digits")
  return _finish(ds, n_train=n_train, n_test=n_test, normalization=normalization, seed=seed)


# MNIST-1D digit templates: the 12-point shapes published with the data set (Greydanus 2020, Table/
# repository greydanus/mnist1d). These numbers are the recipe's data; the code around them is ours.
_MNIST1D_TEMPLATES = np.array([
    [5, 6, 6.5, 6.75, 7, 7, 7, 7, 6.75, 6.5, 6, 5],
    [5, 3, 3, 3.4, 3.8, 4.2, 4.6, 5, 5.4, 5.8, 5, 5],
    [5, 6, 6.5, 6.5, 6, 5.25, 4.75, 4, 3.5, 3.5, 4, 5],
    [5, 6, 6.5, 6.5, 6, 5, 5, 6, 6.5, 6.5, 6, 5],
    [5, 4.4, 3.8, 3.2, 2.6, 2.6, 5, 5, 5, 5, 5, 5],
    [5, 3, 3, 3, 3, 5, 6, 6.5, 6.5, 6, 4.5, 5],
    [5, 4, 3.5, 3.25, 3, 3, 3, 3, 3.25, 3.5, 4, 5],
    [5, 7, 7, 6.6, 6.2, 5.8, 5.4, 5, 4.6, 4.2, 5, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 4, 3.5, 3.5, 4, 5],
    [5, 4, 3.5, 3.5, 4, 5, 5, 5, 5, 4.7, 4.3, 5],
])


def mnist1d_templates() -> np.ndarray:
  """The 10 MNIST-1D templates, (10, 12): standardised per row, shifted to start at 0, divided by 6.

  Examples:
    >>> t = mnist1d_templates()
    >>> t.shape, bool(np.allclose(t[:, 0], 0.0))
    ((10, 12), True)
  """
  t = _MNIST1D_TEMPLATES.astype(np.float64)
  t = (t - t.mean(axis=1, keepdims=True)) / t.std(axis=1, keepdims=True)
  return (t - t[:, :1]) / 6.0


def _resample(signal: np.ndarray, length: int) -> np.ndarray:
  """Linear interpolation of a 1-D signal onto ``length`` equally spaced points of the same interval."""
  old = np.linspace(0.0, 1.0, signal.shape[-1])
  new = np.linspace(0.0, 1.0, length)
  return np.interp(new, old, signal)


def make_mnist1d(num_samples: int = 5000, *, seed: int = 42, train_fraction: float = 0.8,
                 template_len: int = 12, padding: tuple[int, int] = (36, 60), scale_coeff: float = 0.4,
                 max_translation: int = 48, corr_noise_scale: float = 0.25, iid_noise_scale: float = 2e-2,
                 shear_scale: float = 0.75, final_seq_length: int = 40, normalization: str = "none",
                 n_train: int | None = None, n_test: int | None = None) -> Dataset:
  """An MNIST-1D-style data set generated locally and deterministically from ``seed``.

  Follows the published recipe of Greydanus (2020), "Scaling down deep learning" (repository
  greydanus/mnist1d): the same 10 hand-designed 12-point templates (:func:`mnist1d_templates`) and the same
  default parameters. Per example, in the recipe's order: (1) append a random number of zeros in
  ``[padding[0], padding[1]]`` (a tiny 1e-8 offset keeps the template non-zero); (2) resample to
  ``template_len + padding[1]`` points; (3) multiply by ``1 + scale_coeff * (u - 1/2)``; (4) circularly
  shift right by a random integer in ``[0, max_translation)``; (5) replace the exactly-zero (padding)
  positions by correlated noise: iid N(0, corr_noise_scale^2) smoothed by a Gaussian filter of width 2;
  (6) add iid N(0, iid_noise_scale^2) noise; (7) subtract a linear ramp ``c * linspace(-1/2, 1/2)`` with
  ``c = shear_scale * (u - 1/2)``; (8) resample to ``final_seq_length`` points. Classes are balanced
  (``num_samples // 10`` each), examples are shuffled, the whole set is centred and scaled to unit
  standard deviation (dataset-wide, as the recipe does), and the first ``train_fraction`` become training
  examples.

  Differences from the reference implementation: the random numbers come from a NumPy ``Generator``
  seeded with ``seed`` (so values differ from the reference pickle, while the distribution is the same),
  interpolation is ``np.interp``, and the sequence-shuffle option is not offered.

  Args:
    num_samples: total examples (train + test); at least 10.
    seed: generator seed.
    train_fraction: fraction in (0, 1) used for training.
    template_len, padding, scale_coeff, max_translation, corr_noise_scale, iid_noise_scale, shear_scale,
      final_seq_length: recipe parameters (defaults are the published ones).
    normalization: see :func:`normalize`.
    n_train, n_test: optional fixed-seed subsample sizes.

  Returns:
    A :class:`Dataset` named "mnist1d", x of shape (n, final_seq_length).

  Examples:
    >>> ds = make_mnist1d(200, seed=0)
    >>> ds.x_train.shape, ds.x_test.shape
    ((160, 40), (40, 40))
    >>> bool(np.array_equal(ds.x_train, make_mnist1d(200, seed=0).x_train))
    True
  """
  from scipy import ndimage

  num_samples = _check_int("num_samples", num_samples, minimum=10)
  _checks.check_probability("train_fraction", train_fraction)
  lo, hi = padding
  if not (0 <= lo <= hi):
    raise ValueError(f"padding must be (low, high) with 0 <= low <= high, got {padding!r}")
  _check_int("max_translation", max_translation, minimum=1)
  _check_int("final_seq_length", final_seq_length, minimum=2)
  rng = np.random.default_rng(seed)
  templates = mnist1d_templates()
  per_class = num_samples // 10
  length = template_len + hi
  xs, ys = [], []
  for label in range(10):
    for _ in range(per_class):
      pad = lo + int(rng.random() * (hi - lo + 1))
      x = np.concatenate([templates[label] + 1e-8, np.zeros(pad)])
      x = _resample(x, length)
      x = x * (1.0 + scale_coeff * (rng.random() - 0.5))
      x = np.roll(x, int(rng.integers(max_translation)))
      corr = ndimage.gaussian_filter(corr_noise_scale * rng.standard_normal(length), 2)
      x = np.where(x != 0, x, corr)
      x = x + iid_noise_scale * rng.standard_normal(length)
      x = x - shear_scale * (rng.random() - 0.5) * np.linspace(-0.5, 0.5, length)
      xs.append(_resample(x, final_seq_length))
      ys.append(label)
  perm = rng.permutation(len(ys))
  x = np.stack(xs)[perm]
  y = np.asarray(ys)[perm]
  x = (x - x.mean()) / x.std()
  split = int(len(y) * train_fraction)
  ds = _make(x[:split], y[:split], x[split:], y[split:], 10, "mnist1d")
  return _finish(ds, n_train=n_train, n_test=n_test, normalization=normalization, seed=seed)


def make_gaussian_mixture(n: int, d: int, num_classes: int, *, separation: float = 3.0,
                          noise_std: float = 1.0, test_fraction: float = 0.2, seed: int = 0) -> Dataset:
  """Isotropic Gaussian classes: ``x = mu_y + noise_std * z``, y uniform over classes.

  Class means are ``separation`` times independent random unit vectors in R^d, so two means are about
  ``separation * sqrt(2)`` apart in high dimension.

  Args:
    n: total number of examples (train + test), at least 2.
    d: feature dimension.
    num_classes: number of classes (>= 2).
    separation: norm of every class mean.
    noise_std: standard deviation of the isotropic noise.
    test_fraction: fraction of examples in the test split, in [0, 1).
    seed: NumPy seed.

  Returns:
    A :class:`Dataset` named "gaussian_mixture", x of shape (n, d).

  Examples:
    >>> ds = make_gaussian_mixture(100, 5, 3, seed=1)
    >>> ds.x_train.shape, ds.x_test.shape, ds.num_classes
    ((80, 5), (20, 5), 3)
  """
  n = _check_int("n", n, minimum=2)
  d = _check_int("d", d, minimum=1)
  num_classes = _check_int("num_classes", num_classes, minimum=2)
  _checks.check_nonnegative("separation", separation)
  _checks.check_positive("noise_std", noise_std)
  _checks.check_probability("test_fraction", test_fraction, open_low=False, open_high=True)
  rng = np.random.default_rng(seed)
  means = rng.standard_normal((num_classes, d))
  means = separation * means / np.linalg.norm(means, axis=1, keepdims=True)
  y = rng.integers(num_classes, size=n)
  x = means[y] + noise_std * rng.standard_normal((n, d))
  n_test = int(round(test_fraction * n))
  return _make(x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes, "gaussian_mixture")


# --------------------------------------------------------------------------------------------------
# File loaders (untrusted input)
# --------------------------------------------------------------------------------------------------

_CIFAR_RECORD = 1 + 3 * 32 * 32
_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))
_CIFAR_TEST = "test_batch.bin"


def _check_directory(directory: Any, what: str) -> str:
  if not isinstance(directory, (str, os.PathLike)):
    raise TypeError(f"directory must be a path (str or os.PathLike), got {type(directory).__name__}")
  directory = os.fspath(directory)
  if not os.path.exists(directory):
    raise FileNotFoundError(f"{what} directory {directory!r} does not exist")
  if not os.path.isdir(directory):
    raise NotADirectoryError(f"{what} directory {directory!r} is not a directory")
  return directory


def _check_file(path: str, what: str, max_file_bytes: int) -> int:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}: missing file {path!r}")
  if not os.path.isfile(path):
    raise ValueError(f"{what}: {path!r} is not a regular file")
  size = os.path.getsize(path)
  if size == 0:
    raise ValueError(f"{what}: file {path!r} is empty")
  if size > max_file_bytes:
    raise ValueError(f"{what}: file {path!r} has {size} bytes, more than max_file_bytes = {max_file_bytes}; "
                     "refusing to read it (raise max_file_bytes if the file is genuine)")
  return size


def _read_cifar_file(path: str, max_file_bytes: int, max_examples: int) -> tuple[np.ndarray, np.ndarray]:
  size = _check_file(path, "CIFAR-10", max_file_bytes)
  if size % _CIFAR_RECORD:
    raise ValueError(
        f"CIFAR-10: file {path!r} is truncated or corrupt: its size {size} bytes is not a multiple of the "
        f"record size {_CIFAR_RECORD} (1 label byte + 3072 pixel bytes); is this the binary distribution?")
  count = size // _CIFAR_RECORD
  if count > max_examples:
    raise ValueError(f"CIFAR-10: file {path!r} holds {count} records, more than max_examples = {max_examples}")
  with open(path, "rb") as f:
    raw = np.frombuffer(f.read(size), dtype=np.uint8)
  if raw.size != size:
    raise ValueError(f"CIFAR-10: file {path!r} shrank while reading ({raw.size} of {size} bytes)")
  records = raw.reshape(count, _CIFAR_RECORD)
  labels = records[:, 0]
  if labels.max() > 9:
    bad = np.flatnonzero(labels > 9)
    raise ValueError(
        f"CIFAR-10: file {path!r} is corrupt: label byte {int(labels[bad[0]])} > 9 in record {int(bad[0])} "
        f"({bad.size} bad record(s)); labels must lie in [0, 10)")
  images = records[:, 1:].reshape(count, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-major -> NHWC
  return images, labels


def load_cifar10(directory: str | os.PathLike, *, scale: float = 1 / 255, normalization: str = "none",
                 n_train: int | None = None, n_test: int | None = None, seed: int = 0,
                 max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
                 max_examples: int = DEFAULT_MAX_EXAMPLES) -> Dataset:
  """CIFAR-10 from its **binary** distribution in ``directory``.

  Reads ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin`` (each record: 1 label byte
  then 3,072 pixel bytes, channel-major 3x32x32), from ``directory`` or its ``cifar-10-batches-bin/``
  subdirectory. Nothing is unpickled: the python distribution (``data_batch_1`` without ``.bin``) is
  refused. Sizes are checked before reading; every label byte must be in [0, 9].

  Args:
    directory: folder holding the ``.bin`` files.
    scale: factor applied to the 0..255 pixels (default: to [0, 1]).
    normalization: see :func:`normalize` ("channel" is usual for images).
    n_train, n_test: optional fixed-seed subsample sizes (taken before conversion to float32).
    seed: seed of the subsample.
    max_file_bytes: largest file read.
    max_examples: largest number of records per file.

  Returns:
    A :class:`Dataset` named "cifar10", x of shape (n, 32, 32, 3).

  Raises:
    FileNotFoundError: missing directory or file. ValueError: truncated/corrupt/oversized file.

  Examples:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    ...   _ = open(os.path.join(d, name), "wb").write(bytes([3]) + bytes(3072))
    >>> ds = load_cifar10(d)
    >>> ds.x_train.shape, ds.y_test.tolist()
    ((5, 32, 32, 3), [3])
  """
  directory = _check_directory(directory, "CIFAR-10")
  _checks.check_positive("scale", scale)
  sub = os.path.join(directory, "cifar-10-batches-bin")
  if not os.path.exists(os.path.join(directory, _CIFAR_TRAIN[0])) and os.path.isdir(sub):
    directory = sub
  if not os.path.exists(os.path.join(directory, _CIFAR_TRAIN[0])):
    for python_version in (os.path.join(directory, "data_batch_1"),
                           os.path.join(directory, "cifar-10-batches-py")):
      if os.path.exists(python_version):
        raise ValueError(
            f"CIFAR-10: found {python_version!r}, the python (pickle) distribution, which is never unpickled "
            f"(unpickling can run arbitrary code); use the binary distribution (cifar-10-binary.tar.gz, "
            f"files data_batch_1.bin ... test_batch.bin)")
  parts = [_read_cifar_file(os.path.join(directory, f), max_file_bytes, max_examples)
           for f in _CIFAR_TRAIN + (_CIFAR_TEST,)]
  return _images_dataset(np.concatenate([p[0] for p in parts[:-1]]), np.concatenate([p[1] for p in parts[:-1]]),
                         parts[-1][0], parts[-1][1], "cifar10", scale=scale, normalization=normalization,
                         n_train=n_train, n_test=n_test, seed=seed)


def _images_dataset(x_train, y_train, x_test, y_test, name, *, scale, normalization, n_train, n_test, seed):
  rng = np.random.default_rng(seed)
  for split, n in (("train", n_train), ("test", n_test)):
    if n is None:
      continue
    size = (y_train if split == "train" else y_test).shape[0]
    n = _check_int(f"n_{split}", n, minimum=1 if split == "train" else 0)
    if n > size:
      raise ValueError(f"n_{split} must be at most the number of {split} examples {size}, got {n}")
    idx = np.sort(rng.permutation(size)[:n])
    if split == "train":
      x_train, y_train = x_train[idx], y_train[idx]
    else:
      x_test, y_test = x_test[idx], y_test[idx]
  ds = _make(x_train.astype(np.float32) * np.float32(scale), y_train,
             x_test.astype(np.float32) * np.float32(scale), y_test, 10, name)
  return normalize(ds, normalization)


# MATLAB v5 constants (MAT-File Format, The MathWorks, "Data Element Format").
_MI_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}  # numeric data types -> bytes
_MI_MATRIX, _MI_COMPRESSED = 14, 15
_MX_NUMERIC = {6: 8, 7: 4, 8: 1, 9: 1, 10: 2, 11: 2, 12: 4, 13: 4, 14: 8, 15: 8}  # array class -> bytes


class _MatVar(NamedTuple):
  name: str
  array_class: int
  dims: tuple[int, ...]
  data_type: int
  data_bytes: int


def _mat_subelement(buf: bytes, pos: int, endian: str, path: str) -> tuple[int, bytes, int]:
  """Parses one data element of a miMATRIX header; returns (type, payload, next position)."""
  if pos + 8 > len(buf):
    raise ValueError(f"SVHN: {path!r} is truncated or corrupt (incomplete MAT element header)")
  first, second = struct.unpack(endian + "II", buf[pos:pos + 8])
  if first >> 16:  # small data element: type and size share the first word, payload in 4 bytes
    nbytes, mtype = first >> 16, first & 0xFFFF
    if nbytes > 4:
      raise ValueError(f"SVHN: {path!r} is corrupt (small MAT element claims {nbytes} bytes)")
    return mtype, buf[pos + 4:pos + 4 + nbytes], pos + 8
  mtype, nbytes = first, second
  end = pos + 8 + nbytes
  return mtype, buf[pos + 8:end], end + (-nbytes % 8)


def _parse_matrix_header(buf: bytes, endian: str, path: str) -> _MatVar:
  """Parses flags, dimensions, name and the real-part tag of a miMATRIX element (``buf`` past its tag)."""
  _, flags, pos = _mat_subelement(buf, 0, endian, path)
  if len(flags) < 4:
    raise ValueError(f"SVHN: {path!r} is corrupt (MAT array flags missing)")
  array_class = struct.unpack(endian + "I", flags[:4])[0] & 0xFF
  dtype, dims_raw, pos = _mat_subelement(buf, pos, endian, path)
  if dtype != 5 or len(dims_raw) % 4 or not dims_raw:
    raise ValueError(f"SVHN: {path!r} is corrupt (MAT dimensions element of type {dtype}, {len(dims_raw)} bytes)")
  dims = struct.unpack(endian + f"{len(dims_raw) // 4}i", dims_raw)
  _, name_raw, pos = _mat_subelement(buf, pos, endian, path)
  name = name_raw.decode("latin-1")
  data_type, data_bytes = -1, 0
  if array_class in _MX_NUMERIC:
    if pos + 8 > len(buf):
      raise ValueError(f"SVHN: {path!r} is truncated (MAT data tag of {name!r} missing)")
    first, second = struct.unpack(endian + "II", buf[pos:pos + 8])
    data_type, data_bytes = (first & 0xFFFF, first >> 16) if first >> 16 else (first, second)
  return _MatVar(name, array_class, tuple(dims), data_type, data_bytes)


def _scan_mat_file(path: str, max_file_bytes: int) -> dict[str, _MatVar]:
  """Reads only the headers of a MATLAB v5 file's top-level variables; never allocates claimed sizes."""
  size = _check_file(path, "SVHN", max_file_bytes)
  variables = {}
  with open(path, "rb") as f:
    header = f.read(128)
    if len(header) < 128:
      raise ValueError(f"SVHN: {path!r} is truncated or not a MATLAB file ({len(header)} bytes)")
    if header.startswith(b"\x89HDF") or header[:19] == b"MATLAB 7.3 MAT-file":
      raise ValueError(f"SVHN: {path!r} is a MATLAB v7.3 (HDF5) file; only MATLAB v5/v7 .mat files are read")
    if not header.startswith(b"MATLAB 5.0 MAT-file") or header[126:128] not in (b"IM", b"MI"):
      raise ValueError(f"SVHN: {path!r} is not a MATLAB v5 .mat file (bad header {header[:20]!r}); "
                       "files are never unpickled")
    endian = "<" if header[126:128] == b"IM" else ">"
    pos = 128
    while pos + 8 <= size:
      f.seek(pos)
      mtype, nbytes = struct.unpack(endian + "II", f.read(8))
      if pos + 8 + nbytes > size:
        raise ValueError(f"SVHN: {path!r} is truncated or corrupt: an element at byte {pos} claims "
                         f"{nbytes} bytes but only {size - pos - 8} remain")
      if mtype == _MI_COMPRESSED:
        inflater = zlib.decompressobj()
        head, remaining = b"", nbytes
        try:
          while len(head) < 512 and remaining > 0:
            chunk = f.read(min(4096, remaining))
            remaining -= len(chunk)
            head += inflater.decompress(chunk, 512 - len(head))
            if inflater.eof or not chunk:
              break
        except zlib.error as e:
          raise ValueError(f"SVHN: {path!r} is corrupt (bad compressed element at byte {pos}: {e})") from e
        if len(head) < 8:
          raise ValueError(f"SVHN: {path!r} is corrupt (compressed element at byte {pos} too short)")
        inner_type, _ = struct.unpack(endian + "II", head[:8])
        if inner_type == _MI_MATRIX:
          var = _parse_matrix_header(head[8:], endian, path)
          variables[var.name] = var
      elif mtype == _MI_MATRIX:
        var = _parse_matrix_header(f.read(min(nbytes, 512)), endian, path)
        variables[var.name] = var
      pos += 8 + nbytes  # miMATRIX sizes include their padding; compressed elements are not padded
  return variables


def _read_svhn_file(path: str, max_file_bytes: int, max_examples: int) -> tuple[np.ndarray, np.ndarray]:
  variables = _scan_mat_file(path, max_file_bytes)
  for name in ("X", "y"):
    if name not in variables:
      raise ValueError(f"SVHN: {path!r} has no variable {name!r} (found {sorted(variables)})")
  xv, yv = variables["X"], variables["y"]
  if xv.array_class not in _MX_NUMERIC or yv.array_class not in _MX_NUMERIC:
    raise ValueError(f"SVHN: {path!r}: X and y must be numeric arrays (MAT classes {xv.array_class}, "
                     f"{yv.array_class})")
  if len(xv.dims) != 4 or xv.dims[:3] != (32, 32, 3):
    raise ValueError(f"SVHN: {path!r}: X must have shape (32, 32, 3, N), got {xv.dims}")
  count = xv.dims[3]
  if not 0 < count <= max_examples:
    raise ValueError(f"SVHN: {path!r}: X claims {count} images; allowed 1 to max_examples = {max_examples}")
  if sorted(yv.dims) != [1, count]:
    raise ValueError(f"SVHN: {path!r}: y must have shape ({count}, 1) to match X, got {yv.dims}")
  for var, n_elems in ((xv, 32 * 32 * 3 * count), (yv, count)):
    expected = n_elems * _MI_SIZES.get(var.data_type, 0)
    if var.data_type not in _MI_SIZES or var.data_bytes != expected or expected > max_file_bytes:
      raise ValueError(f"SVHN: {path!r} is corrupt: variable {var.name!r} of shape {var.dims} claims "
                       f"{var.data_bytes} data bytes of MAT type {var.data_type} (expected {expected})")
  from scipy import io as sio

  try:
    # scipy's v5 reader parses typed binary records (no pickle); only X and y are read.
    mat = sio.loadmat(path, variable_names=["X", "y"], squeeze_me=False, struct_as_record=True,
                      chars_as_strings=False, verify_compressed_data_integrity=True)
  except Exception as e:  # any parse failure is a corrupt file
    raise ValueError(f"SVHN: {path!r} is corrupt or truncated: {type(e).__name__}: {e}") from e
  x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
  if x.shape != (32, 32, 3, count) or y.shape != (count,):
    raise ValueError(f"SVHN: {path!r}: read shapes X {x.shape}, y {y.shape}; expected (32, 32, 3, {count}), "
                     f"({count},)")
  if not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or np.any((y < 0) | (y > 10)):
    bad = y[~(np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y <= 10))]
    raise ValueError(f"SVHN: {path!r}: labels must be integers in [0, 10] (10 means digit 0), got e.g. "
                     f"{bad[:5].tolist()}")
  if x.dtype != np.uint8 and (np.any(x < 0) | np.any(x > 255)):
    raise ValueError(f"SVHN: {path!r}: pixels must lie in [0, 255]")
  y = np.where(y == 10, 0, y).astype(np.int32)
  return np.transpose(x, (3, 0, 1, 2)), y


def load_svhn(directory: str | os.PathLike, *, scale: float = 1 / 255, normalization: str = "none",
              n_train: int | None = None, n_test: int | None = None, seed: int = 0,
              max_file_bytes: int = DEFAULT_MAX_FILE_BYTES, max_examples: int = DEFAULT_MAX_EXAMPLES) -> Dataset:
  """SVHN cropped digits from ``train_32x32.mat`` and ``test_32x32.mat`` in ``directory``.

  Each file is MATLAB v5 with ``X`` (32x32x3xN uint8) and ``y`` (Nx1, label 10 meaning digit 0; mapped to
  0). The file headers are pre-scanned by our own reader and every claimed size is checked against
  ``max_examples`` / ``max_file_bytes`` before :func:`scipy.io.loadmat` reads the two variables.

  Args:
    directory: folder holding the two ``.mat`` files.
    scale: factor applied to the 0..255 pixels (default: to [0, 1]).
    normalization: see :func:`normalize`.
    n_train, n_test: optional fixed-seed subsample sizes.
    seed: seed of the subsample.
    max_file_bytes: largest file read and largest claimed variable size.
    max_examples: largest number of images a file may claim.

  Returns:
    A :class:`Dataset` named "svhn", x of shape (n, 32, 32, 3).

  Raises:
    FileNotFoundError: missing directory or file. ValueError: truncated/corrupt/oversized file.

  Examples:
    >>> import tempfile, os, numpy as np, scipy.io
    >>> d = tempfile.mkdtemp()
    >>> for name in ("train_32x32.mat", "test_32x32.mat"):
    ...   scipy.io.savemat(os.path.join(d, name), {"X": np.zeros((32, 32, 3, 2), np.uint8),
    ...                                            "y": np.array([[10], [3]], np.uint8)})
    >>> ds = load_svhn(d)
    >>> ds.x_train.shape, ds.y_train.tolist()
    ((2, 32, 32, 3), [0, 3])
  """
  directory = _check_directory(directory, "SVHN")
  _checks.check_positive("scale", scale)
  x_train, y_train = _read_svhn_file(os.path.join(directory, "train_32x32.mat"), max_file_bytes, max_examples)
  x_test, y_test = _read_svhn_file(os.path.join(directory, "test_32x32.mat"), max_file_bytes, max_examples)
  return _images_dataset(x_train, y_train, x_test, y_test, "svhn", scale=scale, normalization=normalization,
                         n_train=n_train, n_test=n_test, seed=seed)
