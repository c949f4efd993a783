"""Built-in data sets, generated or read locally and deterministically from a seed (nothing is ever
downloaded): scikit-learn's bundled digits, an MNIST-1D-style set, Gaussian mixtures."""

from __future__ import annotations

import numpy as np
from scipy import ndimage
from sklearn import datasets as sk_datasets

from unlearn_jax import _checks
from unlearn_jax.data.dataset import Dataset, check_int, finish, make, train_test_split

__all__ = ["load_digits", "make_gaussian_mixture", "make_mnist1d", "mnist1d_templates"]


def load_digits(
  *,
  test_fraction: float = 397 / 1797,
  seed: int = 0,
  scale: float = 1 / 16,
  normalization: str = "none",
  n_train: int | None = None,
  n_test: int | None = None,
) -> Dataset:
  """scikit-learn's bundled 8x8 digits (1,797 images, 64 features, 10 classes; read locally).

  The defaults give the demo's split: 1,400 train / 397 test, features divided by 16
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
  _checks.check_positive("scale", scale)
  raw = sk_datasets.load_digits()
  ds = train_test_split(
    raw.data * scale, raw.target, test_fraction=test_fraction, seed=seed, num_classes=10, name="digits"
  )
  return finish(ds, n_train=n_train, n_test=n_test, normalization=normalization, seed=seed)


# MNIST-1D digit templates: the 12-point shapes published with the data set (Greydanus 2020, Table/
# repository greydanus/mnist1d). These numbers are the recipe's data; the code around them is ours.
_MNIST1D_TEMPLATES = np.array(
  [
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
  ]
)


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


def make_mnist1d(
  num_samples: int = 5000,
  *,
  seed: int = 42,
  train_fraction: float = 0.8,
  template_len: int = 12,
  padding: tuple[int, int] = (36, 60),
  scale_coeff: float = 0.4,
  max_translation: int = 48,
  corr_noise_scale: float = 0.25,
  iid_noise_scale: float = 2e-2,
  shear_scale: float = 0.75,
  final_seq_length: int = 40,
  normalization: str = "none",
  n_train: int | None = None,
  n_test: int | None = None,
) -> Dataset:
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
  num_samples = check_int("num_samples", num_samples, minimum=10)
  _checks.check_probability("train_fraction", train_fraction)
  lo, hi = padding
  if not (0 <= lo <= hi):
    raise ValueError(f"padding must be (low, high) with 0 <= low <= high, got {padding!r}")
  check_int("max_translation", max_translation, minimum=1)
  check_int("final_seq_length", final_seq_length, minimum=2)
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
  ds = make(x[:split], y[:split], x[split:], y[split:], 10, "mnist1d")
  return finish(ds, n_train=n_train, n_test=n_test, normalization=normalization, seed=seed)


def make_gaussian_mixture(
  n: int,
  d: int,
  num_classes: int,
  *,
  separation: float = 3.0,
  noise_std: float = 1.0,
  test_fraction: float = 0.2,
  seed: int = 0,
) -> Dataset:
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
  n = check_int("n", n, minimum=2)
  d = check_int("d", d, minimum=1)
  num_classes = check_int("num_classes", num_classes, minimum=2)
  _checks.check_nonnegative("separation", separation)
  _checks.check_positive("noise_std", noise_std)
  _checks.check_probability("test_fraction", test_fraction, open_low=False, open_high=True)
  rng = np.random.default_rng(seed)
  means = rng.standard_normal((num_classes, d))
  means = separation * means / np.linalg.norm(means, axis=1, keepdims=True)
  y = rng.integers(num_classes, size=n)
  x = means[y] + noise_std * rng.standard_normal((n, d))
  n_test = int(round(test_fraction * n))
  return make(x[n_test:], y[n_test:], x[:n_test], y[:n_test], num_classes, "gaussian_mixture")
