"""The one step protocol every training and unlearning algorithm follows.

An :class:`Algorithm` is a pair of pure functions (blackjax's ``SamplingAlgorithm``, optax's
``GradientTransformation``):

- ``init(params, num_examples, *, key=None) -> state``: the state has ``params``, ``step`` and ``ledger``
  (None without accounting) fields; ``key`` seeds whatever the algorithm draws once per run (the
  per-epoch permutations of shuffled batches), so that every chain of a vmapped run gets its own.
- ``step(state, data, key, step_size, temperature=0.0, *, data_mask=None, **hyperparameters)
  -> (state, StepInfo)``: one step on the whole data set ``data`` (leading axis n); ``data_mask`` (n,)
  marks the rows that count. Every hyperparameter is an array argument: a new value never recompiles.

The runtime (``unlearn_jax.runtime``) drives any Algorithm. An Algorithm built by this package carries
an explicit description — ``name``, the static ``settings`` and the functions it closes over — which
makes two equally built algorithms equal (one compiled program serves both) and gives checkpoints a
fingerprint that is the same in every process.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import numpy as np

from unlearn_jax import _checks

__all__ = ["HYPERPARAMETERS", "Algorithm", "StepInfo", "check_static_positive", "describe_callable"]

PyTree = Any

HYPERPARAMETERS = (
  "step_size",
  "temperature",
  "accounting_temperature",
  "clip_norm",
  "weight_decay",
  "projection_radius",
  "l1_strength",
  "l1_horizon",
)
"""Per-call hyperparameters a step may take (each an array; ``inf`` means "none" for the clip norm, the
projection radius and the L1 horizon)."""


class StepInfo(NamedTuple):
  """Per-step diagnostics, the same fields for every algorithm.

  Attributes:
    loss: mean per-example loss over the examples that entered the gradient (at θ_t, before the step).
    mean_grad_norm: mean unclipped per-example gradient norm over those examples.
    grad_norms: (n,) unclipped per-example gradient norms (0 where not computed).
    batch_mask: (n,) float, 1 for the examples that entered the gradient estimate this step.
    noise_norm: ‖sqrt(2ητ) ξ‖ (0 for noise-free steps).
    costs: (n, K) this step's per-example costs (times the stride, zeros at unaccounted steps), or None
      when accounting is off.
    worst_case_cost: (K,) this step's worst-case cost (same conventions), or None.
    recomputed_costs: bool, True when the §2a distances were recomputed by direct differences because
      the fast three-term form would have lost precision (g_i ≈ ḡ).
    dropped: int, 1 when a Poisson draw selected more examples than its gathered batch holds, else 0
      (the runtime stops with an error when it is not 0).
  """

  loss: jax.Array
  mean_grad_norm: jax.Array
  grad_norms: jax.Array
  batch_mask: jax.Array
  noise_norm: jax.Array
  costs: jax.Array | None = None
  worst_case_cost: jax.Array | None = None
  recomputed_costs: jax.Array | None = None
  dropped: jax.Array | None = None


def _describe_value(value: Any, depth: int) -> str:
  """A process-independent text of a closure value: numbers and strings by value, functions by name
  and closure, arrays by shape, dtype and content hash; anything else by its type."""
  if value is None or isinstance(value, (bool, int, float, str, np.number)):
    return repr(value)
  if isinstance(value, (tuple, list)):
    return "(" + ", ".join(_describe_value(v, depth) for v in value) + ")"
  if isinstance(value, (np.ndarray, jax.Array)) and not _checks._is_traced(value):
    arr = np.asarray(value)
    return f"array{arr.shape}:{arr.dtype}:{hashlib.sha256(arr.tobytes()).hexdigest()[:16]}"
  if callable(value) or dataclasses.is_dataclass(value):
    return describe_callable(value, depth=depth - 1)
  return type(value).__qualname__


def describe_callable(fn: Any, *, depth: int = 6) -> str:
  """A process-independent description of a function: module, qualified name and, recursively, the
  values its closure holds (so ``optax.adam(0.1)`` and ``optax.adam(0.2)`` differ); never a memory address.

  Examples:
    >>> import optax
    >>> describe_callable(optax.sgd(0.1)) == describe_callable(optax.sgd(0.1))
    True
    >>> describe_callable(optax.sgd(0.1)) == describe_callable(optax.sgd(0.2))
    False
  """
  module = getattr(fn, "__module__", None) or type(fn).__module__
  name = getattr(fn, "__qualname__", None) or type(fn).__qualname__
  text = f"{module}:{name}"
  if depth <= 0:
    return text
  if isinstance(fn, tuple) and hasattr(fn, "_fields"):  # a NamedTuple of functions (optax transformations)
    return text + "(" + ", ".join(f"{k}={_describe_value(v, depth)}" for k, v in zip(fn._fields, fn)) + ")"
  if dataclasses.is_dataclass(fn) and not isinstance(fn, type):  # value objects (the library's losses, modules)
    fields = [(f.name, getattr(fn, f.name, None)) for f in dataclasses.fields(fn)]
    return text + "(" + ", ".join(f"{k}={_describe_value(v, depth)}" for k, v in fields) + ")"
  cells = getattr(fn, "__closure__", None) or ()
  values = []
  for cell in cells:
    try:
      values.append(_describe_value(cell.cell_contents, depth))
    except ValueError:  # an empty cell
      values.append("<empty>")
  return text + ("[" + ", ".join(values) + "]" if values else "")


@dataclasses.dataclass(frozen=True, eq=False)
class Algorithm:
  """An ``(init, step)`` pair of pure functions (see the module docstring).

  Attributes:
    init: ``init(params, num_examples, *, key=None) -> state``.
    step: ``step(state, data, key, step_size, temperature=0.0, *, data_mask=None, **hyperparameters)``.
    name: what builds it (``"sgld"``, ``"optax"``, ...); ``""`` for a hand-made pair.
    settings: the static settings, a tuple of ``(key, value)`` pairs of JSON-able values.
    callables: the functions the step closes over (the loss function, an optax optimizer), compared
      with ``==`` (identity for plain functions; the library's model and loss objects compare by value).
    reduction_blocks: R of a fixed order of the sums over examples (None: as XLA chooses); the runtime
      sums its history over examples in the same order.

  Two algorithms with a ``name`` are equal when their name, settings and callables are (their compiled
  programs are then the same); a hand-made one (no name) is equal only to itself.
  """

  init: Callable
  step: Callable
  name: str = ""
  settings: tuple = ()
  callables: tuple = ()
  reduction_blocks: int | None = None

  def _key(self) -> tuple:
    try:
      hash(self.callables)
      callables = self.callables
    except TypeError:  # an unhashable callable is compared by identity
      callables = tuple(id(c) for c in self.callables)
    return (self.name, self.settings, callables, self.reduction_blocks)

  def __eq__(self, other: object) -> bool:
    if not isinstance(other, Algorithm):
      return NotImplemented
    if not self.name or not other.name:
      return self is other
    return self._key() == other._key()

  def __hash__(self) -> int:
    return hash(self._key()) if self.name else id(self)

  def describe(self) -> dict[str, Any]:
    """A JSON-able description that is the same in every process (for checkpoint fingerprints)."""
    if not self.name:
      return {"name": "", "init": describe_callable(self.init), "step": describe_callable(self.step)}
    return {
      "name": self.name,
      "settings": json.loads(json.dumps(dict(self.settings), default=repr)),
      "callables": [describe_callable(c) for c in self.callables],
      "reduction_blocks": self.reduction_blocks,
    }


def check_static_positive(name: str, value: Any, *, allow_none: bool = True) -> float | None:
  """A build-time positive number (inf allowed); None stays None when allowed."""
  if value is None:
    if not allow_none:
      raise ValueError(f"{name} is required, got None")
    return None
  _checks.check_positive(name, value, allow_inf=True)
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
  return float(value)
