"""The :class:`Dataset` of host-side arrays and the transforms every loader shares.

A :class:`Dataset` holds float32 features and int32 labels on the host; the training drivers move them
onto devices. :func:`validate_dataset` checks one, :func:`train_test_split`, :func:`subsample` (fixed seed,
optionally stratified) and :func:`normalize` (statistics of the training split only) transform one.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import numpy as np

from unlearn_jax import _checks

__all__ = ["Dataset", "normalize", "subsample", "train_test_split", "validate_dataset"]


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


def check_int(name: str, value: Any, *, minimum: int) -> int:
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
        f"e.g. {bad[:5].tolist()}"
      )


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
  num_classes = check_int("num_classes", dataset.num_classes, minimum=2)
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


def make(x_train, y_train, x_test, y_test, num_classes, name) -> Dataset:
  ds = Dataset(
    np.ascontiguousarray(x_train, dtype=np.float32),
    np.asarray(y_train).astype(np.int32),
    np.ascontiguousarray(x_test, dtype=np.float32),
    np.asarray(y_test).astype(np.int32),
    int(num_classes),
    str(name),
  )
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


def train_test_split(
  x: np.ndarray, y: np.ndarray, *, test_fraction: float, seed: int, num_classes: int, name: str, stratify: bool = False
) -> Dataset:
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
  return make(x[~mask], y[~mask], x[mask], y[mask], num_classes, name)


def subsample(
  dataset: Dataset, n_train: int | None, seed: int = 0, *, n_test: int | None = None, stratify: bool = False
) -> Dataset:
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
    >>> from unlearn_jax.data import load_digits
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
    n = check_int(f"n_{split}", n, minimum=1 if split == "train" else 0)
    if n > y.shape[0]:
      raise ValueError(f"n_{split} must be at most the number of {split} examples {y.shape[0]}, got {n}")
    idx = _stratified_indices(y, n, rng) if stratify else np.sort(rng.permutation(y.shape[0])[:n])
    out[split] = (x[idx], y[idx])
  return make(*out["train"], *out["test"], dataset.num_classes, dataset.name)


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
    >>> from unlearn_jax.data import load_digits
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
  return make(
    scale(dataset.x_train), dataset.y_train, scale(dataset.x_test), dataset.y_test, dataset.num_classes, dataset.name
  )


def finish(ds: Dataset, *, n_train: int | None, n_test: int | None, normalization: str, seed: int) -> Dataset:
  if n_train is not None or n_test is not None:
    ds = subsample(ds, n_train, seed, n_test=n_test)
  return normalize(ds, normalization)
