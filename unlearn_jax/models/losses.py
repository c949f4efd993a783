"""One-example losses and evaluation helpers of a model's ``apply_fn``."""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax.models.architectures import logistic_regression  # noqa: F401 - used by the doctests
from unlearn_jax.per_example import chunking

__all__ = ["CrossEntropyLoss", "cross_entropy_loss_fn", "predict_fn", "accuracy"]

Params = Any


@dataclasses.dataclass(frozen=True)
class CrossEntropyLoss:
  """``loss(params, (x, y))``: the softmax cross-entropy of ONE example (see :func:`cross_entropy_loss_fn`)."""

  apply_fn: Callable[[Params, ArrayLike], jax.Array]
  weight_decay: float = 0.0

  def __call__(self, params: Params, example: Any) -> jax.Array:
    x, y = example
    logits = self.apply_fn(params, x)
    num_classes = logits.shape[-1]
    _checks.check_labels("y", jnp.atleast_1d(y) if not _checks._is_traced(y) else y, num_classes)
    label = jnp.asarray(y)
    # under a trace a label cannot raise: a fractional or out-of-range one makes the loss NaN (the run
    # then stops as diverged) instead of training on a clamped or truncated class
    valid = (label >= 0) & (label < num_classes) & (label == jnp.round(label))
    loss = jax.nn.logsumexp(logits) - jnp.take(logits, jnp.clip(label, 0, num_classes - 1).astype(jnp.int32))
    loss = jnp.where(valid, loss, jnp.nan)
    if self.weight_decay:
      sq = sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
      loss = loss + 0.5 * self.weight_decay * sq
    return loss

  def check_data(self, params: Params, data: Any, name: str = "data") -> None:
    """Eager check of a data set ``(x, y)`` for this loss: integer labels in [0, number of classes)."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
      raise TypeError(f"{name} must be a pair (x, y) for the cross-entropy loss, got {type(data).__name__}")
    x, y = data
    if _checks._is_traced(y) or _checks._is_traced(x):
      return
    try:
      one = jax.ShapeDtypeStruct(tuple(np.shape(x))[1:], jnp.result_type(x))  # shapes only: no copy of x
      num_classes = jax.eval_shape(self.apply_fn, params, one).shape[-1]
    except Exception:  # noqa: BLE001 - params of another layout (per seed): the range is checked per call
      num_classes = None
    _checks.check_labels(f"{name} labels y", y, num_classes)


def cross_entropy_loss_fn(
  apply_fn: Callable[[Params, ArrayLike], jax.Array], *, weight_decay: float = 0.0
) -> CrossEntropyLoss:
  """The softmax cross-entropy of ONE example, plus optional L2 weight decay.

  ``loss(params, (x, y)) = logsumexp(f(x)) - f(x)[y] + (weight_decay / 2) * ||params||^2``, with ``f`` =
  ``apply_fn(params, .)`` and ``y`` an integer label. The default ``weight_decay = 0`` leaves L2 to the
  SGLD step's own ``weight_decay`` (which adds ``weight_decay * theta`` to the step); use one or the
  other, not both. Two losses of equal apply functions are equal (and share compiled programs).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits`` for one example.
    weight_decay: non-negative L2 coefficient.

  Returns:
    ``loss_fn(params, example) -> scalar`` with ``example = (x, y)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = logistic_regression(4)
    >>> params = jax.tree.map(jnp.zeros_like, model.init_fn(jax.random.key(0), jnp.ones(3)))
    >>> loss_fn = cross_entropy_loss_fn(model.apply_fn)
    >>> round(float(loss_fn(params, (jnp.ones(3), 2))), 4)  # log(4) at uniform logits
    1.3863
    >>> loss_fn == cross_entropy_loss_fn(logistic_regression(4).apply_fn)
    True
  """
  _checks.check_nonnegative("weight_decay", weight_decay)
  return CrossEntropyLoss(apply_fn, float(weight_decay))


def predict_fn(apply_fn: Callable[[Params, ArrayLike], jax.Array]) -> Callable[[Params, ArrayLike], jax.Array]:
  """Returns ``predict(params, x_batch) -> (n,) int32`` predicted labels (argmax of vmapped logits).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"linear": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}}
    >>> predict_fn(logistic_regression(2).apply_fn)(params, jnp.array([[1., 0.], [0., 2.]])).tolist()
    [0, 1]
  """

  def predict(params: Params, x: ArrayLike) -> jax.Array:
    return jnp.argmax(chunking.batched_apply(apply_fn, params, jnp.asarray(x)), axis=-1).astype(jnp.int32)

  return predict


def accuracy(
  apply_fn: Callable[[Params, ArrayLike], jax.Array],
  params: Params,
  x: ArrayLike,
  y: ArrayLike,
  *,
  batch_size: int | None = None,
) -> jax.Array:
  """Fraction of examples whose argmax logit equals the label (batched with vmap).

  Args:
    apply_fn: one-example apply function.
    params: parameters.
    x: (n, ...) examples.
    y: (n,) integer labels.
    batch_size: examples evaluated at once, to bound memory (None: ``per_example.chunking.ROWS_PER_PASS``);
      called eagerly, one compiled program on one chunk runs once per chunk.

  Returns:
    A float32 scalar in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"linear": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}}
    >>> float(accuracy(logistic_regression(2).apply_fn, params, jnp.eye(2), jnp.array([0, 0])))
    0.5
  """
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
    raise ValueError(f"x and y must share a non-empty leading example axis, got shapes {x.shape} and {y.shape}")
  if batch_size is None:
    logits = chunking.batched_apply(apply_fn, params, x)
  else:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    logits = chunking.batched_apply(apply_fn, params, x, chunk_size=batch_size)
  return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))
