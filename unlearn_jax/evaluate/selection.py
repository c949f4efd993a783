"""Forget-set selection by any per-example score (theory §6, "harder groups").

A score is any ``(n,)`` array: the per-instance privacy loss ``P(x, α)`` at a chosen order (a column of a
ledger's ``realized``), or a metric of :mod:`unlearn_jax.evaluate.metrics`. Selections return sorted int32 index
arrays into the training set; sizes are static (host-side), so these are plain NumPy-backed helpers
meant to run outside jit.

* :func:`top_k_percent` / :func:`bottom_k_percent` -- the k% highest / lowest scores;
* :func:`quantile_bins` -- equal-count bins by rank;
* :func:`around_quantile` -- the examples nearest in rank to a quantile (the q = 1 set is the top set);
* :func:`random_subset` -- a uniform random set of a given size (the baseline of equal size);
* :func:`select_forget_set` -- one dispatcher over the above, for configs and the CLI;
* :func:`check_forget_indices` -- validation of any forget set.

Ties are broken by example index (stable sort), so selections are deterministic.
"""

from __future__ import annotations

import math
import re
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks

__all__ = [
  "around_quantile",
  "bottom_k_percent",
  "check_forget_indices",
  "quantile_bins",
  "random_subset",
  "select_forget_set",
  "top_k_percent",
]


def _check_scores(scores: Any) -> np.ndarray:
  if isinstance(scores, jax.core.Tracer):
    raise TypeError("scores must be a concrete array (selection runs outside jit), got a traced value")
  arr = np.asarray(scores)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"scores must be a non-empty 1-D array of per-example values, got shape {arr.shape}")
  if arr.dtype.kind not in "biuf":
    raise TypeError(f"scores must be real numbers, got dtype {arr.dtype}")
  if arr.dtype.kind == "f" and np.any(np.isnan(arr)):
    raise ValueError(f"scores must not contain NaN, got {int(np.sum(np.isnan(arr)))} NaN value(s) of {arr.size}")
  return arr


def _size_from(n: int, size: Any, fraction: Any, *, name_fraction: str = "fraction") -> int:
  if (size is None) == (fraction is None):
    raise ValueError(f"give exactly one of size or {name_fraction}, got size={size!r}, {name_fraction}={fraction!r}")
  if size is not None:
    if isinstance(size, bool) or not isinstance(size, (int, np.integer)):
      raise TypeError(f"size must be an int, got {size!r}")
    if not 1 <= size <= n:
      raise ValueError(f"size must lie in [1, n = {n}], got {size}")
    return int(size)
  f = float(fraction)
  if not 0.0 < f <= 1.0 or math.isnan(f):
    raise ValueError(f"{name_fraction} must lie in (0, 1], got {fraction!r}")
  k = int(round(f * n))
  if k < 1:
    raise ValueError(f"{name_fraction}={fraction!r} of n = {n} examples selects an empty set; use a larger fraction")
  return k


def _percent_to_size(n: int, k: Any) -> int:
  if isinstance(k, bool):
    raise TypeError(f"k must be a percentage in (0, 100], got the bool {k!r}")
  kf = float(k)
  if math.isnan(kf) or not 0.0 < kf <= 100.0:
    raise ValueError(f"k must be a percentage in (0, 100], got {k!r}")
  size = int(round(kf / 100.0 * n))
  if size < 1:
    raise ValueError(f"k={k!r}% of n = {n} examples selects an empty set; use a larger k")
  return size


def _as_indices(idx: np.ndarray) -> jax.Array:
  return jnp.asarray(np.sort(idx).astype(np.int32))


def _ranked(
  scores: np.ndarray, descending: bool, tie_break: np.ndarray | None = None, ties_within: float = 0.0
) -> np.ndarray:
  """Indices by score; scores in one cell of a grid of relative width ``ties_within`` count as tied and
  are ordered by ``tie_break`` (same direction), then by index. The grid is geometric (cells [c, c·(1 +
  ties_within))) for non-negative scores — 0 is a cell of its own — and linear with cells of width
  ``ties_within`` × max|score| otherwise."""
  primary = scores.astype(float)
  if ties_within > 0 and np.all(primary >= 0):
    logs = np.log(np.where(primary > 0, primary, 1.0)) / np.log1p(ties_within)
    primary = np.where(primary > 0, np.floor(logs), -np.inf)
  elif ties_within > 0 and np.max(np.abs(primary)) > 0:
    primary = np.floor(primary / (ties_within * float(np.max(np.abs(primary)))))
  sign = -1.0 if descending else 1.0
  if tie_break is None:
    return np.argsort(sign * primary, kind="stable")
  return np.lexsort((sign * tie_break.astype(float), sign * primary))  # the last key sorts first


def top_k_percent(scores: ArrayLike, k: float) -> jax.Array:
  """Indices of the ``k``% highest scores (``round(k/100 · n)`` of them).

  Args:
    scores: ``(n,)`` per-example scores (no NaN).
    k: percentage in (0, 100].

  Returns:
    Sorted int32 indices.

  Raises:
    ValueError: on NaN scores, k outside (0, 100] or an empty selection.

  Examples:
    >>> top_k_percent([0.1, 0.9, 0.5, 0.7], 50).tolist()
    [1, 3]
  """
  arr = _check_scores(scores)
  return _as_indices(_ranked(arr, True)[: _percent_to_size(arr.size, k)])


def bottom_k_percent(scores: ArrayLike, k: float) -> jax.Array:
  """Indices of the ``k``% lowest scores (``round(k/100 · n)`` of them).

  Args:
    scores: ``(n,)`` per-example scores (no NaN).
    k: percentage in (0, 100].

  Returns:
    Sorted int32 indices.

  Raises:
    ValueError: on NaN scores, k outside (0, 100] or an empty selection.

  Examples:
    >>> bottom_k_percent([0.1, 0.9, 0.5, 0.7], 50).tolist()
    [0, 2]
  """
  arr = _check_scores(scores)
  return _as_indices(_ranked(arr, False)[: _percent_to_size(arr.size, k)])


def quantile_bins(scores: ArrayLike, num_bins: int) -> list[jax.Array]:
  """Splits the examples into ``num_bins`` equal-count bins by score rank (bin 0 = lowest scores).

  Bins are cut on ranks, not values, so ties never leave a bin empty; sizes differ by at most one.

  Args:
    scores: ``(n,)`` per-example scores (no NaN).
    num_bins: number of bins, ``1 <= num_bins <= n``.

  Returns:
    A list of ``num_bins`` sorted int32 index arrays partitioning ``range(n)``.

  Raises:
    ValueError: on NaN scores or a bad ``num_bins``.

  Examples:
    >>> [b.tolist() for b in quantile_bins([5.0, 1.0, 4.0, 2.0, 3.0, 0.0], 3)]
    [[1, 5], [3, 4], [0, 2]]
  """
  arr = _check_scores(scores)
  if isinstance(num_bins, bool) or not isinstance(num_bins, (int, np.integer)) or not 1 <= num_bins <= arr.size:
    raise ValueError(f"num_bins must be an int in [1, n = {arr.size}], got {num_bins!r}")
  return [_as_indices(part) for part in np.array_split(_ranked(arr, False), int(num_bins))]


def around_quantile(scores: ArrayLike, q: float, size: int) -> jax.Array:
  """The ``size`` examples whose score ranks are nearest the q-quantile's rank ``q · (n − 1)``.

  A window of ``size`` consecutive ranks centred on the quantile's rank and shifted inside ``[0, n)``: q = 1
  gives the ``size`` highest scores, q = 0 the lowest, q = 0.5 the examples around the median. Ties are
  ordered by index.

  Args:
    scores: ``(n,)`` per-example scores (no NaN).
    q: the quantile, in [0, 1].
    size: number of examples, ``1 <= size <= n``.

  Returns:
    Sorted int32 indices.

  Raises:
    ValueError: on NaN scores, q outside [0, 1] or a bad size.

  Examples:
    >>> around_quantile([5.0, 1.0, 4.0, 2.0, 3.0, 0.0], 0.5, 2).tolist()
    [3, 4]
    >>> around_quantile([5.0, 1.0, 4.0, 2.0, 3.0, 0.0], 1.0, 2).tolist()
    [0, 2]
  """
  arr = _check_scores(scores)
  if isinstance(q, bool) or not isinstance(q, (int, float, np.floating)) or not 0.0 <= float(q) <= 1.0:
    raise ValueError(f"q must be a quantile in [0, 1], got {q!r}")
  k = _size_from(arr.size, size, None)
  centre = float(q) * (arr.size - 1)
  start = min(max(int(math.floor(centre - (k - 1) / 2 + 0.5)), 0), arr.size - k)
  return _as_indices(_ranked(arr, False)[start : start + k])


def random_subset(key: jax.Array, num_examples: int, size: int) -> jax.Array:
  """A uniform random subset of ``size`` distinct indices out of ``num_examples``.

  Args:
    key: a ``jax.random.key`` (the same key gives the same set).
    num_examples: n >= 1.
    size: subset size in [1, n].

  Returns:
    Sorted int32 indices.

  Raises:
    ValueError: on a size outside [1, n].

  Examples:
    >>> import jax
    >>> idx = random_subset(jax.random.key(0), 10, 3)
    >>> len(set(idx.tolist())), bool((idx >= 0).all() & (idx < 10).all())
    (3, True)
  """
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
    raise ValueError(f"num_examples must be an int >= 1, got {num_examples!r}")
  size = _size_from(int(num_examples), size, None)
  perm = np.asarray(jax.random.permutation(key, int(num_examples)))
  return _as_indices(perm[:size])


_BIN_RE = re.compile(r"^bin:(\d+)/(\d+)$")


def select_forget_set(
  scores: ArrayLike,
  selection: str,
  *,
  size: int | None = None,
  fraction: float | None = None,
  key: jax.Array | None = None,
  tie_break: ArrayLike | None = None,
  ties_within: float = 0.0,
) -> jax.Array:
  """Selects a forget set by a per-example score.

  ``selection``:

  * ``"top"`` / ``"bottom"``: the ``size`` (or ``round(fraction · n)``) highest / lowest scores;
  * ``"random"``: a uniform random set of that size (needs ``key``; ``scores`` only gives n);
  * ``"bin:i/q"``: the i-th (0-based, 0 = lowest scores) of q equal-count rank bins; with ``size`` or
    ``fraction`` (of n), a random subset of the bin of that size drawn with ``key``.

  Args:
    scores: ``(n,)`` per-example scores (no NaN).
    selection: one of the forms above.
    size: number of examples.
    fraction: fraction of n in (0, 1].
    key: random key for ``"random"`` and sub-sampled bins.
    tie_break: ``(n,)`` a second score, in the same direction, that orders tied examples for ``"top"`` /
      ``"bottom"`` (default: the index). A privacy loss saturated at its clip-norm maximum ties many
      examples; a key that carries information (e.g. the unclipped gradient norm) then decides.
    ties_within: scores within this relative distance of each other — one cell of a geometric grid of
      ratio 1 + ``ties_within`` for non-negative scores, of width ``ties_within`` × max|score| otherwise —
      count as tied (default 0: only equal scores).

  Returns:
    Sorted int32 indices, checked by :func:`check_forget_indices`.

  Raises:
    ValueError: on a bad selection string, sizes, NaN scores or a missing key.

  Examples:
    >>> scores = [0.1, 0.9, 0.5, 0.7, 0.3, 0.2]
    >>> select_forget_set(scores, "top", size=2).tolist()
    [1, 3]
    >>> select_forget_set(scores, "bottom", fraction=0.5).tolist()
    [0, 4, 5]
    >>> select_forget_set(scores, "bin:1/3").tolist()
    [2, 4]
    >>> select_forget_set([1.0, 1.0, 1.0, 0.2], "top", size=1, tie_break=[0.1, 0.7, 0.3, 0.0]).tolist()
    [1]
  """
  arr = _check_scores(scores)
  n = arr.size
  if not isinstance(selection, str):
    raise TypeError(f"selection must be a string ('top', 'bottom', 'random' or 'bin:i/q'), got {selection!r}")
  if selection in ("top", "bottom", "random"):
    k = _size_from(n, size, fraction)
    if selection == "random":
      if key is None:
        raise ValueError("selection='random' needs key (a jax.random.key), got None")
      idx = random_subset(key, n, k)
    else:
      secondary = None if tie_break is None else _check_scores(tie_break)
      if secondary is not None and secondary.shape != arr.shape:
        raise ValueError(f"tie_break must have the shape of scores {arr.shape}, got {secondary.shape}")
      if not 0.0 <= float(ties_within) < 1.0:
        raise ValueError(f"ties_within must lie in [0, 1), got {ties_within!r}")
      idx = _as_indices(_ranked(arr, selection == "top", secondary, float(ties_within))[:k])
  else:
    match = _BIN_RE.match(selection)
    if match is None:
      raise ValueError(f"selection must be 'top', 'bottom', 'random' or 'bin:i/q' (0 <= i < q), got {selection!r}")
    i, q = int(match.group(1)), int(match.group(2))
    if not 0 <= i < q:
      raise ValueError(f"selection {selection!r}: bin index i must satisfy 0 <= i < q, got i={i}, q={q}")
    members = np.asarray(quantile_bins(arr, q)[i])
    if size is None and fraction is None:
      idx = _as_indices(members)
    else:
      k = _size_from(n, size, fraction)
      if k > members.size:
        raise ValueError(f"selection {selection!r} holds {members.size} examples, fewer than the requested {k}")
      if key is None:
        raise ValueError(f"sub-sampling bin {selection!r} to {k} examples needs key, got None")
      idx = _as_indices(members[np.asarray(random_subset(key, members.size, k))])
  return check_forget_indices(idx, n)


def check_forget_indices(indices: ArrayLike, num_examples: int) -> jax.Array:
  """Validates a forget set given as indices into a training set of ``num_examples`` examples.

  Args:
    indices: 1-D integer indices.
    num_examples: n, the training-set size.

  Returns:
    The indices as a sorted int32 array.

  Raises:
    ValueError: if the set is empty, not 1-D, has duplicates or indices outside [0, n).
    TypeError: if the indices are not integers.

  Examples:
    >>> check_forget_indices([4, 1], 5).tolist()
    [1, 4]
    >>> check_forget_indices([1, 1], 5)
    Traceback (most recent call last):
    ...
    ValueError: forget indices must be distinct, got duplicated [1]
  """
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
    raise ValueError(f"num_examples must be an int >= 1, got {num_examples!r}")
  size = np.size(indices)
  if size > num_examples:
    raise ValueError(f"forget set of {size} indices is larger than the n = {num_examples} examples")
  arr = _checks.check_index_set("forget indices", indices, num_examples)
  return _as_indices(arr)
