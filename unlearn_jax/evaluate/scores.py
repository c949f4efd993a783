"""Scores of trained models on a set of examples: logit-scaled confidence, accuracy and loss (theory §6).

``s = log(p_y / (1 − p_y))`` under each seed is the statistic of the output-distribution test and of
the membership test. Layouts: several seeds — a leading seed axis ``R`` on every params leaf;
recorded unlearning parameters — ``(G, R, ...)``; scores ``(R, n)`` / ``(G, R, n)``.
``apply_fn(params, x_single) -> logits`` is written for ONE example.
"""

from __future__ import annotations

from collections.abc import Callable, Mapping
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks, _loops
from unlearn_jax._compile import call, is_traced
from unlearn_jax.per_example import chunking

__all__ = [
  "SplitMetrics",
  "accuracy_and_loss",
  "logit_confidence",
  "logit_confidence_from_logits",
  "scores_along",
  "split_report",
]


def logit_confidence_from_logits(logits: ArrayLike, labels: ArrayLike) -> jax.Array:
  """Logit-scaled confidence ``s = log(p_y / (1 - p_y))`` from logits, computed stably.

  ``s = logit_y - logsumexp_{j != y} logit_j`` (the softmax normaliser cancels), so no ``log(0)`` or
  ``1 - p_y`` cancellation occurs even when ``p_y`` rounds to 1.

  Args:
    logits: ``(..., num_classes)`` with ``num_classes >= 2``.
    labels: integer labels broadcastable to ``logits.shape[:-1]``.

  Returns:
    ``(...)`` scores.

  Examples:
    >>> import jax.numpy as jnp
    >>> s = logit_confidence_from_logits(jnp.array([[0.0, 0.0], [50.0, -50.0]]), jnp.array([0, 0]))
    >>> [round(v, 3) for v in s.tolist()]
    [0.0, 100.0]
  """
  logits = jnp.asarray(logits)
  if logits.ndim < 1 or logits.shape[-1] < 2:
    raise ValueError(f"logits must have a last axis of num_classes >= 2, got shape {logits.shape}")
  labels = jnp.asarray(labels)
  num_classes = logits.shape[-1]
  is_label = jax.nn.one_hot(labels, num_classes, dtype=bool)
  logit_y = jnp.sum(jnp.where(is_label, logits, 0.0), axis=-1)
  others = jax.nn.logsumexp(jnp.where(is_label, -jnp.inf, logits), axis=-1)
  return logit_y - others


def _batched_logits(apply_fn, params, x):
  return chunking.batched_apply(apply_fn, params, x)  # whole data sets in chunks: bounded memory


def logit_confidence(
  apply_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  x: ArrayLike,
  y: ArrayLike,
  *,
  seed_axis: bool = True,
) -> jax.Array:
  """Logit-scaled confidence ``s = log(p_y / (1 - p_y))`` of each example under each seed (theory §6).

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits (num_classes,)``.
    params: params pytree; with ``seed_axis=True`` every leaf has a leading seed axis ``R``.
    x: inputs with a leading example axis ``n``.
    y: integer labels ``(n,)``.
    seed_axis: whether ``params`` carries a leading seed axis.

  Returns:
    Scores ``(R, n)`` (``(n,)`` without a seed axis).

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, -w * x])
    >>> s = logit_confidence(apply_fn, jnp.array([1.0, 2.0]), jnp.array([0.5, 1.0]), jnp.array([0, 1]))
    >>> s.tolist()
    [[1.0, -2.0], [2.0, -4.0]]
  """
  _checks.check_batch((x, y), "(x, y)")
  if seed_axis:
    _checks.leading_size("params", params)
  return _over_rows(_logit_confidence_core, (apply_fn, bool(seed_axis)), params, x, y)


def _over_rows(core, static, params, x, y):
  """``core(*static, params, x, y)`` (per-example outputs, rows last); called eagerly on more rows than one
  chunk, one compiled call per chunk from the host (the memory of one chunk; see ``chunking``)."""
  n = np.shape(y)[0]
  rows = chunking.ROWS_PER_PASS
  if n <= rows or is_traced((params, x, y)):
    return call(core, static, params, x, y)
  params = jax.tree.map(jnp.asarray, params)  # on the device once for all chunks
  return chunking.host_rows(lambda c: call(core, static, params, *c), (x, y), n, rows, axis=-1)


def _logit_confidence_core(apply_fn, seed_axis, params, x, y):
  def one(p):
    return logit_confidence_from_logits(_batched_logits(apply_fn, p, x), y)

  return jax.vmap(one)(params) if seed_axis else one(params)


def scores_along(
  apply_fn: Callable[[Any, Any], jax.Array],
  checkpoints: Any,
  x: ArrayLike,
  y: ArrayLike,
) -> jax.Array:
  """Logit-scaled confidences for recorded unlearning parameters of layout ``(G, R, ...)``.

  Checkpoints are processed one after another (``lax.map``), seeds vmapped.

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits``.
    checkpoints: params pytree with leading axes ``(G, R)``.
    x: inputs ``(n, ...)``.
    y: labels ``(n,)``.

  Returns:
    Scores ``(G, R, n)``, ready for :func:`empirical_steps_to_unlearn`.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, -w * x])
    >>> scores_along(apply_fn, jnp.ones((3, 2)), jnp.array([0.5]), jnp.array([0])).shape
    (3, 2, 1)
  """
  _checks.leading_size("checkpoints", checkpoints)
  return _loops.map(lambda p: logit_confidence(apply_fn, p, x, y, seed_axis=True), checkpoints)


def accuracy_and_loss(
  apply_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  x: ArrayLike,
  y: ArrayLike,
  *,
  seed_axis: bool = False,
) -> tuple[jax.Array, jax.Array]:
  """Top-1 accuracy and mean cross-entropy (softmax) of a classifier on a set.

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits``.
    params: params pytree (leading seed axis ``R`` when ``seed_axis``).
    x: inputs ``(n, ...)``.
    y: integer labels ``(n,)``.
    seed_axis: whether ``params`` carries a leading seed axis.

  Returns:
    ``(accuracy, loss)``, scalars (``(R,)`` each with a seed axis).

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, -w * x])
    >>> acc, loss = accuracy_and_loss(apply_fn, 0.0, jnp.array([1.0, -1.0]), jnp.array([0, 0]))
    >>> float(acc), round(float(loss), 4)  # ties go to class 0; loss = log 2
    (1.0, 0.6931)
  """
  _checks.check_batch((x, y), "(x, y)")
  if seed_axis:
    _checks.leading_size("params", params)
  if not _checks._is_traced(x):
    one_params = (
      jax.tree.map(lambda v: jax.ShapeDtypeStruct(np.shape(v)[1:], jnp.result_type(v)), params) if seed_axis else params
    )
    logits = jax.eval_shape(apply_fn, one_params, jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)))
    _checks.check_labels("y", y, logits.shape[-1])  # an out-of-range label would give a NaN / clamped loss
  correct, nll = _over_rows(_correct_and_nll_core, (apply_fn, bool(seed_axis)), params, x, y)
  return call(_means_core, (), correct, nll)


def _correct_and_nll_core(apply_fn, seed_axis, params, x, y):
  """Per example: 1.0 where the top logit is the label's, and the cross-entropy."""

  def one(p):
    logits = _batched_logits(apply_fn, p, x)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    labels = jnp.asarray(y)
    nll = -jnp.take_along_axis(log_probs, labels[:, None], axis=-1)[:, 0]
    return (jnp.argmax(logits, axis=-1) == labels).astype(log_probs.dtype), nll

  return jax.vmap(one)(params) if seed_axis else one(params)


def _means_core(correct, nll):
  return jnp.mean(correct, axis=-1), jnp.mean(nll, axis=-1)


class SplitMetrics(NamedTuple):
  """Accuracy and mean loss on one split (scalars, or ``(R,)`` with a seed axis)."""

  accuracy: jax.Array
  loss: jax.Array


def split_report(
  apply_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  splits: Mapping[str, tuple[ArrayLike, ArrayLike]],
  *,
  seed_axis: bool = False,
) -> dict[str, SplitMetrics]:
  """Accuracy and loss on several named splits, e.g. forget / retain / test.

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits``.
    params: params pytree (leading seed axis when ``seed_axis``).
    splits: mapping from split name to ``(x, y)``; empty splits are skipped.
    seed_axis: whether ``params`` carries a leading seed axis.

  Returns:
    ``{name: SplitMetrics(accuracy, loss)}`` in the order of ``splits``.

  Raises:
    ValueError: if ``splits`` is empty.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, -w * x])
    >>> rep = split_report(apply_fn, 5.0, {"forget": (jnp.array([1.0]), jnp.array([0])),
    ...                                    "test": (jnp.array([1.0]), jnp.array([1]))})
    >>> {k: float(v.accuracy) for k, v in rep.items()}
    {'forget': 1.0, 'test': 0.0}
  """
  if not splits:
    raise ValueError("splits must name at least one (x, y) set, got an empty mapping")
  report = {}
  for name, (x, y) in splits.items():
    if np.shape(y)[0] == 0:
      continue
    acc, loss = accuracy_and_loss(apply_fn, params, x, y, seed_axis=seed_axis)
    report[name] = SplitMetrics(acc, loss)
  return report
