"""Statistics of the study: rank correlation with average ranks for ties (theory §6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax._compile import call

__all__ = [
  "finite_for_ranking",
  "ledger_error",
  "rankdata_average",
  "spearman",
  "spearman_bootstrap",
  "spearman_where_defined",
]


def rankdata_average(a: ArrayLike) -> jax.Array:
  """1-based ranks with ties given their average rank (``scipy.stats.rankdata(method="average")``).

  Args:
    a: ``(n,)`` finite values.

  Returns:
    ``(n,)`` float ranks.

  Raises:
    ValueError: on a non-1-D, empty or non-finite input.

  Examples:
    >>> import jax.numpy as jnp
    >>> rankdata_average(jnp.array([10.0, 20.0, 10.0, 5.0])).tolist()
    [2.5, 4.0, 2.5, 1.0]
  """
  arr = jnp.asarray(a)
  if arr.ndim != 1 or arr.shape[0] == 0:
    raise ValueError(f"a must be a non-empty 1-D array, got shape {arr.shape}")
  _checks.check_finite_array("a", arr)
  return call(_rankdata_core, (), arr)


def _rankdata_core(arr):
  sorted_a = jnp.sort(arr)
  left = jnp.searchsorted(sorted_a, arr, side="left")
  right = jnp.searchsorted(sorted_a, arr, side="right")
  # Values equal to a[i] occupy sorted positions left..right-1, i.e. 1-based ranks left+1..right.
  return (left + right + 1).astype(jnp.result_type(float)) / 2.0


def spearman(a: ArrayLike, b: ArrayLike) -> jax.Array:
  """Spearman rank correlation with average ranks for ties (Pearson correlation of the ranks).

  Args:
    a: ``(n,)`` finite values, ``n >= 2``.
    b: ``(n,)`` finite values.

  Returns:
    Scalar in ``[-1, 1]``; NaN when either input is constant (as ``scipy.stats.spearmanr``).

  Raises:
    ValueError: on shape mismatch, ``n < 2`` or non-finite values.

  Examples:
    >>> import jax.numpy as jnp
    >>> round(float(spearman(jnp.array([1.0, 2.0, 3.0, 4.0]), jnp.array([1.0, 4.0, 9.0, 16.0]))), 4)
    1.0
    >>> round(float(spearman(jnp.array([1.0, 2.0, 3.0]), jnp.array([3.0, 1.0, 1.0]))), 4)
    -0.866
  """
  a_arr, b_arr = jnp.asarray(a), jnp.asarray(b)
  if a_arr.shape != b_arr.shape or a_arr.ndim != 1 or a_arr.shape[0] < 2:
    raise ValueError(
      f"a and b must be 1-D arrays of the same length n >= 2, got shapes {a_arr.shape} and {b_arr.shape}"
    )
  _checks.check_finite_array("a", a_arr)
  _checks.check_finite_array("b", b_arr)
  return call(_spearman_core, (), a_arr, b_arr)


def _spearman_core(a, b):
  ra = _rankdata_core(a)
  rb = _rankdata_core(b)
  ra = ra - jnp.mean(ra)
  rb = rb - jnp.mean(rb)
  return jnp.sum(ra * rb) / jnp.sqrt(jnp.sum(ra**2) * jnp.sum(rb**2))


def finite_for_ranking(values: ArrayLike) -> np.ndarray:
  """±inf replaced by finite values beyond every finite one (ranks unchanged), NaN kept; float64."""
  v = np.asarray(values, dtype=np.float64)
  finite = v[np.isfinite(v)]
  top = (np.max(np.abs(finite)) if finite.size else 1.0) * 10 + 1
  return np.where(np.isposinf(v), top, np.where(np.isneginf(v), -top, v))


def spearman_where_defined(a: ArrayLike, b: ArrayLike) -> float:
  """Spearman over the entries where neither value is NaN, with ±inf ranked past every finite value.

  NaN (not a number, by definition) when fewer than 3 entries remain or either side is constant there.

  Examples:
    >>> round(spearman_where_defined([1.0, 2.0, float("inf"), float("nan")], [0.1, 0.2, 5.0, 9.0]), 4)
    1.0
    >>> spearman_where_defined([1.0, 1.0, 1.0], [1.0, 2.0, 3.0])
    nan
  """
  a, b = finite_for_ranking(a), finite_for_ranking(b)
  ok = ~(np.isnan(a) | np.isnan(b))
  if ok.sum() < 3 or np.all(a[ok] == a[ok][0]) or np.all(b[ok] == b[ok][0]):
    return float("nan")
  return float(spearman(a[ok], b[ok]))


def ledger_error(reference: ArrayLike, estimate: ArrayLike) -> dict[str, float]:
  """How far an estimated privacy-loss column (a strided or once-per-epoch ledger) is from the reference
  (the every-step ledger on the same trajectory): rank agreement and relative errors.

  Args:
    reference: ``(n,)`` P(x, α) of the every-step ledger.
    estimate: ``(n,)`` P(x, α) of the estimate (same examples, same order).

  Returns:
    ``{"spearman", "max_relative_error", "median_relative_error"}``; relative errors |est − ref| / ref over
    the examples with ref > 0.

  Examples:
    >>> e = ledger_error([1.0, 2.0, 4.0], [1.1, 1.8, 4.0])
    >>> round(e["spearman"], 3), round(e["max_relative_error"], 3), round(e["median_relative_error"], 3)
    (1.0, 0.1, 0.1)
  """
  ref, est = np.asarray(reference, np.float64), np.asarray(estimate, np.float64)
  if ref.shape != est.shape or ref.ndim != 1:
    raise ValueError(f"reference and estimate must be 1-D of the same length, got {ref.shape} and {est.shape}")
  positive = ref > 0
  rel = np.abs(est[positive] - ref[positive]) / ref[positive]
  return {
    "spearman": spearman_where_defined(ref, est),
    "max_relative_error": float(np.max(rel)) if rel.size else float("nan"),
    "median_relative_error": float(np.median(rel)) if rel.size else float("nan"),
  }


def _spearman_resamples(num_resamples, a, b, key):
  """Spearman of ``num_resamples`` bootstrap resamples (rows drawn with replacement): one program with its
  draw (an eager ``randint`` compiled a program of its own per size)."""
  idx = jax.random.randint(key, (num_resamples, a.size), 0, a.size)
  return jax.vmap(lambda i: _spearman_core(a[i], b[i]))(idx)


def spearman_bootstrap(
  a: ArrayLike,
  b: ArrayLike,
  *,
  num_resamples: int = 400,
  confidence: float = 0.95,
  key: jax.Array | None = None,
) -> dict[str, float]:
  """Spearman with a percentile bootstrap confidence interval over the entries (resampled with replacement).

  Entries where either value is NaN are dropped first (as :func:`spearman_where_defined`); ±inf rank
  past every finite value. The interval is the (1 − confidence)/2 and (1 + confidence)/2 quantiles of
  ``num_resamples`` resampled Spearman coefficients (Efron's percentile method); resamples in which one
  side is constant are left out.

  Args:
    a: ``(n,)`` values.
    b: ``(n,)`` values.
    num_resamples: bootstrap resamples.
    confidence: coverage of the interval in (0, 1).
    key: a ``jax.random.key`` (default ``key(0)``: deterministic).

  Returns:
    ``{"spearman", "low", "high", "n", "includes_zero"}`` (NaN where undefined).

  Examples:
    >>> import numpy as np
    >>> x = np.arange(200.0)
    >>> r = spearman_bootstrap(x, x + np.random.default_rng(0).normal(0, 40, 200))
    >>> 0.7 < r["low"] < r["spearman"] < r["high"] < 1.0, r["includes_zero"]
    (True, False)
  """
  if not 0.0 < float(confidence) < 1.0:
    raise ValueError(f"confidence must lie in (0, 1), got {confidence!r}")
  if isinstance(num_resamples, bool) or not isinstance(num_resamples, int) or num_resamples < 10:
    raise ValueError(f"num_resamples must be an integer >= 10, got {num_resamples!r}")
  a, b = finite_for_ranking(a), finite_for_ranking(b)
  if a.shape != b.shape or a.ndim != 1:
    raise ValueError(f"a and b must be 1-D arrays of one shape, got {a.shape} and {b.shape}")
  ok = ~(np.isnan(a) | np.isnan(b))
  rho = spearman_where_defined(a, b)
  nan = {"spearman": rho, "low": float("nan"), "high": float("nan"), "n": int(ok.sum()), "includes_zero": True}
  if not np.isfinite(rho):
    return nan
  a, b = a[ok], b[ok]
  key = jax.random.key(0) if key is None else key
  rhos = np.asarray(call(_spearman_resamples, (num_resamples,), jnp.asarray(a), jnp.asarray(b), key), np.float64)
  rhos = rhos[np.isfinite(rhos)]
  if rhos.size < 10:
    return nan
  low, high = np.quantile(rhos, [(1 - confidence) / 2, (1 + confidence) / 2])
  return {
    "spearman": rho,
    "low": float(low),
    "high": float(high),
    "n": int(a.size),
    "includes_zero": bool(low <= 0 <= high),
  }
