"""Data sets: the :class:`Dataset` type, built-in sets, file loaders, and a registry of them all.

:data:`DATASETS` maps a name to a :class:`DatasetSpec` (how to load it, and for file-based sets what its
directory must hold); :func:`load_dataset` loads by name (what the study's ``[data]`` section does) and
:func:`register_dataset` adds a new one. Nothing is ever downloaded: built-in sets are generated or read
locally from a seed, file-based sets are read from a directory the user gives.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

from unlearn_jax.data.builtin import load_digits, make_gaussian_mixture, make_mnist1d, mnist1d_templates
from unlearn_jax.data.dataset import Dataset, normalize, subsample, train_test_split, validate_dataset
from unlearn_jax.data.files import DEFAULT_MAX_EXAMPLES, DEFAULT_MAX_FILE_BYTES, load_cifar10, load_svhn
from unlearn_jax.data.idx import IDX_FILES, load_idx, read_idx

__all__ = [
  "DATASETS",
  "DEFAULT_MAX_EXAMPLES",
  "DEFAULT_MAX_FILE_BYTES",
  "IDX_FILES",
  "Dataset",
  "DatasetSpec",
  "load_cifar10",
  "load_dataset",
  "load_digits",
  "load_idx",
  "load_svhn",
  "make_gaussian_mixture",
  "make_mnist1d",
  "mnist1d_templates",
  "normalize",
  "read_idx",
  "register_dataset",
  "subsample",
  "train_test_split",
  "validate_dataset",
]


class DatasetSpec(NamedTuple):
  """How to load a data set.

  Attributes:
    load: ``load(*, seed, n_train, n_test, data_dir, **kwargs) -> Dataset``.
    files: for a data set read from files, what its directory must hold (for error messages); None for
      a built-in one.
  """

  load: Callable[..., Dataset]
  files: str | None = None


def _digits(*, seed, n_train, n_test, data_dir=None, **kwargs):
  del data_dir
  return load_digits(seed=seed, n_train=n_train, n_test=n_test, **kwargs)


def _mnist1d(*, seed, n_train, n_test, data_dir=None, **kwargs):
  del data_dir
  return make_mnist1d(seed=42 + seed, n_train=n_train, n_test=n_test, **kwargs)  # 42: the recipe's seed


def _gaussian_mixture(*, seed, n_train, n_test, data_dir=None, d=16, num_classes=4, **kwargs):
  del data_dir
  n = (n_train or 800) + (n_test or 200)
  return make_gaussian_mixture(n, d, num_classes, seed=seed, test_fraction=(n_test or 200) / n, **kwargs)


def _cifar10(*, seed, n_train, n_test, data_dir, **kwargs):
  return load_cifar10(data_dir, seed=seed, n_train=n_train, n_test=n_test, **kwargs)


def _svhn(*, seed, n_train, n_test, data_dir, **kwargs):
  return load_svhn(data_dir, seed=seed, n_train=n_train, n_test=n_test, **kwargs)


def _idx(name):
  def load(*, seed, n_train, n_test, data_dir, **kwargs):
    return load_idx(data_dir, name=name, seed=seed, n_train=n_train, n_test=n_test, **kwargs)

  return load


_IDX_DESCRIPTION = "the four IDX files " + ", ".join(f"{stem}[.gz]" for stem in IDX_FILES.values())

DATASETS: dict[str, DatasetSpec] = {
  "digits": DatasetSpec(_digits),
  "mnist1d": DatasetSpec(_mnist1d),
  "gaussian_mixture": DatasetSpec(_gaussian_mixture),
  "cifar10": DatasetSpec(
    _cifar10, "the CIFAR-10 binary batches (data_batch_1.bin .. data_batch_5.bin, test_batch.bin)"
  ),
  "svhn": DatasetSpec(_svhn, "the SVHN cropped-digits files train_32x32.mat and test_32x32.mat"),
  "mnist": DatasetSpec(_idx("mnist"), _IDX_DESCRIPTION + " of MNIST"),
  "fashion_mnist": DatasetSpec(_idx("fashion_mnist"), _IDX_DESCRIPTION + " of Fashion-MNIST"),
  "kmnist": DatasetSpec(_idx("kmnist"), _IDX_DESCRIPTION + " of KMNIST"),
}
"""Data-set name -> :class:`DatasetSpec`."""


def register_dataset(name: str, load: Callable[..., Dataset], *, files: str | None = None) -> None:
  """Adds (or replaces) a data set under ``name``.

  Args:
    name: the name the study's ``data.name`` uses.
    load: ``load(*, seed, n_train, n_test, data_dir, **kwargs) -> Dataset``.
    files: for a file-based set, what ``data_dir`` must hold (None: built in).

  Examples:
    >>> register_dataset("tiny_digits", lambda *, seed, n_train, n_test, data_dir=None: load_digits(
    ...     seed=seed, n_train=n_train or 50, n_test=n_test or 20))
    >>> load_dataset("tiny_digits").x_train.shape
    (50, 64)
    >>> del DATASETS["tiny_digits"]
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"name must be a non-empty string, got {name!r}")
  if not callable(load):
    raise TypeError(f"load must be callable as load(*, seed, n_train, n_test, data_dir), got {load!r}")
  DATASETS[name] = DatasetSpec(load, files)


def load_dataset(
  name: str,
  *,
  seed: int = 0,
  n_train: int | None = None,
  n_test: int | None = None,
  data_dir: Any = None,
  **kwargs: Any,
) -> Dataset:
  """Loads the registered data set ``name`` (ValueError listing the names otherwise).

  Examples:
    >>> load_dataset("digits", n_train=100, n_test=10).x_train.shape
    (100, 64)
  """
  if name not in DATASETS:
    raise ValueError(f"data set must be one of {sorted(DATASETS)}, got {name!r}")
  spec = DATASETS[name]
  return spec.load(seed=seed, n_train=n_train, n_test=n_test, data_dir=data_dir, **kwargs)
