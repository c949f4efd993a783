"""Input validation helpers shared by the public API.

Every public function checks its Python-level inputs here, so that a bad value is answered by one
``ValueError``/``TypeError`` naming the argument, the value and what is allowed, instead of a traceback
from deep inside JAX or a silent NaN.
"""

from __future__ import annotations

import math
from typing import Any

import jax
import numpy as np


def _is_traced(value: Any) -> bool:
  return isinstance(value, jax.core.Tracer)


def _as_float(name: str, value: Any) -> float | None:
  """Returns ``value`` as a Python float, or None when it is traced (not checkable)."""
  if _is_traced(value):
    return None
  if isinstance(value, bool):
    raise TypeError(f"{name} must be a real number, got the bool {value!r}")
  try:
    arr = np.asarray(value)
  except Exception as e:  # pragma: no cover - exotic inputs
    raise TypeError(f"{name} must be a real number, got {value!r}") from e
  if arr.dtype.kind not in "biuf":
    raise TypeError(f"{name} must be a real number, got {value!r} of type {type(value).__name__}")
  if arr.ndim != 0:
    return None  # array-valued: checked elementwise by the callers that allow arrays
  return float(arr)


def check_positive(name: str, value: Any, *, allow_inf: bool = False) -> None:
  """Raises ValueError unless ``value`` > 0 (and finite unless ``allow_inf``); arrays elementwise."""
  if _is_traced(value):
    return
  arr = np.asarray(value, dtype=float) if not isinstance(value, bool) else None
  if arr is None:
    raise TypeError(f"{name} must be a positive number, got the bool {value!r}")
  _as_float(name, value)
  bad = np.isnan(arr) | (arr <= 0) | (~np.isfinite(arr) if not allow_inf else np.zeros_like(arr, bool))
  if np.any(bad):
    allowed = "a positive number (inf allowed)" if allow_inf else "a finite positive number"
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_nonnegative(name: str, value: Any, *, allow_inf: bool = False) -> None:
  """Raises ValueError unless ``value`` >= 0 (and finite unless ``allow_inf``)."""
  if _is_traced(value):
    return
  _as_float(name, value)
  arr = np.asarray(value, dtype=float)
  bad = np.isnan(arr) | (arr < 0) | (~np.isfinite(arr) if not allow_inf else np.zeros_like(arr, bool))
  if np.any(bad):
    allowed = "a non-negative number (inf allowed)" if allow_inf else "a finite non-negative number"
    raise ValueError(f"{name} must be {allowed}, got {value!r}")


def check_probability(name: str, value: Any, *, open_low: bool = True, open_high: bool = True) -> None:
  """Raises ValueError unless ``value`` lies in the interval (0, 1) with the chosen open/closed ends."""
  if _is_traced(value):
    return
  _as_float(name, value)
  arr = np.asarray(value, dtype=float)
  lo_bad = (arr <= 0) if open_low else (arr < 0)
  hi_bad = (arr >= 1) if open_high else (arr > 1)
  if np.any(np.isnan(arr) | lo_bad | hi_bad):
    interval = ("(" if open_low else "[") + "0, 1" + (")" if open_high else "]")
    raise ValueError(f"{name} must lie in {interval}, got {value!r}")


def check_orders(orders: Any, name: str = "orders") -> np.ndarray:
  """Returns ``orders`` as a 1-D float array after checking every order is finite and > 1."""
  if _is_traced(orders):
    return orders
  try:
    arr = np.atleast_1d(np.asarray(orders, dtype=float))
  except (TypeError, ValueError) as e:
    raise TypeError(f"{name} must be a sequence of numbers > 1, got {orders!r}") from e
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D sequence of numbers > 1, got shape {arr.shape}")
  if not np.all(np.isfinite(arr)) or np.any(arr <= 1):
    bad = arr[~(np.isfinite(arr) & (arr > 1))]
    raise ValueError(f"{name} must all be finite and > 1 (Renyi orders), got {bad.tolist()}")
  return arr


def check_choice(name: str, value: Any, allowed: tuple[Any, ...]) -> None:
  """Raises ValueError unless ``value`` is one of ``allowed``."""
  if value not in allowed:
    raise ValueError(f"{name} must be one of {list(allowed)}, got {value!r}")


def check_batch(batch: Any, name: str = "batch") -> int:
  """Returns the shared leading size n of every leaf of ``batch``; raises if they disagree or n == 0."""
  leaves = jax.tree.leaves(batch)
  if not leaves:
    raise ValueError(f"{name} must be a pytree of arrays with a leading example axis, got no arrays")
  sizes = []
  for leaf in leaves:
    shape = np.shape(leaf)
    if len(shape) == 0:
      raise ValueError(f"{name} leaves need a leading example axis, got a scalar leaf {leaf!r}")
    sizes.append(shape[0])
  if len(set(sizes)) != 1:
    raise ValueError(f"{name} leaves disagree on the number of examples n: leading sizes {sizes}")
  if sizes[0] == 0:
    raise ValueError(f"{name} must hold at least one example, got n = 0")
  return int(sizes[0])


def check_finite_array(name: str, value: Any) -> None:
  """Raises ValueError if a concrete array holds NaN or Inf."""
  if _is_traced(value):
    return
  arr = np.asarray(value)
  if arr.dtype.kind in "fc" and not np.all(np.isfinite(arr)):
    count = int(np.sum(~np.isfinite(arr)))
    raise ValueError(f"{name} must be finite, got {count} NaN/Inf value(s) of {arr.size}")


def optional_inf(value: Any) -> float:
  """None -> inf (no clipping / no projection); otherwise float(value)."""
  return math.inf if value is None else float(value)


def check_index_set(name: str, indices: Any, num_examples: int) -> np.ndarray | Any:
  """Checks a set of example indices: non-empty, 1-D, integer, distinct, in [0, num_examples).

  Returns the indices as a NumPy array (a traced value is returned unchecked).
  """
  if _is_traced(indices):
    return indices
  arr = np.asarray(indices)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array of example indices, got shape {arr.shape}")
  if arr.dtype.kind not in "iu":
    raise TypeError(f"{name} must hold integer example indices, got dtype {arr.dtype}")
  bad = arr[(arr < 0) | (arr >= num_examples)]
  if bad.size:
    raise ValueError(f"{name} must lie in [0, {num_examples}), got out-of-range {bad[:10].tolist()}")
  uniq, counts = np.unique(arr, return_counts=True)
  if np.any(counts > 1):
    raise ValueError(f"{name} must be distinct, got duplicated {uniq[counts > 1][:10].tolist()}")
  return arr


def check_labels(name: str, labels: Any, num_classes: int | None = None) -> None:
  """Checks class labels: 1-D, integer (or integral floats), in [0, num_classes) (>= 0 if None)."""
  if _is_traced(labels):
    return
  arr = np.asarray(labels)
  if arr.ndim != 1:
    raise ValueError(f"{name} must be a 1-D array of integer class labels, got shape {arr.shape}")
  if arr.dtype.kind not in "iu":
    integral = arr.dtype.kind == "f" and bool(np.all(np.isfinite(arr))) and bool(np.all(arr == np.round(arr)))
    if not integral:
      raise TypeError(f"{name} must hold integer class labels, got dtype {arr.dtype}")
  if arr.size == 0:
    return
  hi = math.inf if num_classes is None else num_classes
  bad = arr[(arr < 0) | (arr >= hi)]
  if bad.size:
    allowed = ">= 0" if num_classes is None else f"in [0, num_classes) = [0, {num_classes})"
    raise ValueError(f"{name} must be {allowed}, got {bad.size} label(s) outside, e.g. {bad[:5].tolist()}")


def leading_size(name: str, tree: Any) -> int:
  """The leading axis size shared by every leaf of ``tree`` (seeds, checkpoints); raises if none or 0."""
  leaves = jax.tree.leaves(tree)
  if not leaves:
    raise ValueError(f"{name} must be a pytree holding at least one array, got {tree!r}")
  sizes = {np.shape(leaf)[0] if np.ndim(leaf) else None for leaf in leaves}
  if None in sizes or len(sizes) != 1:
    raise ValueError(f"{name} leaves must share one leading axis, got leading sizes {sorted(map(str, sizes))}")
  size = sizes.pop()
  if size == 0:
    raise ValueError(f"{name} must have a leading axis of size >= 1, got 0")
  return int(size)
