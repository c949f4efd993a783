"""Per-example data-difficulty metrics (theory §6), and their registry.

The heuristics people use today to find "hard" examples, to compare with the per-instance privacy
loss P(x, α) of theory §3:

* from one model: :func:`per_example_loss` (cross-entropy), :func:`confidence` (``p_y``),
  :func:`margin`;
* early in training, averaged over seeds: :func:`el2n` (``‖softmax − onehot‖₂``, Paul et al. 2021) and
  :func:`grand` (``E‖∇ℓ‖``, same paper);
* over an ordered sequence of checkpoints: :func:`forgetting_events` (Toneva et al. 2019) and
  :func:`learning_speed` / :func:`c_proxy` (mean ``p_y`` over checkpoints, Jiang et al. 2021);
* from R models trained on random halves: :func:`memorization` (Feldman & Zhang 2020) with
  :func:`random_half_masks`.

:data:`METRICS` maps each name to a :class:`Metric`: how to compute it for every training example from a
study's :class:`MetricInputs`, and whether a higher or a lower value marks a harder example. A new
metric is one function and one :func:`register_metric` call.

Layouts: params with a leading seed axis ``R`` (``el2n``, ``grand``) or checkpoint axis ``C``
(``correctness_along``, ``confidence_along``); per-example outputs have a trailing axis ``n``.
``apply_fn(params, x_single) -> logits`` and ``loss_fn(params, example) -> scalar`` are for ONE example.
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks, _loops
from unlearn_jax._compile import call
from unlearn_jax.per_example import api as pe
from unlearn_jax.per_example import chunking

__all__ = [
  "METRICS",
  "Metric",
  "MetricInputs",
  "c_proxy",
  "confidence",
  "confidence_along",
  "correctness",
  "correctness_along",
  "el2n",
  "forgetting_events",
  "grand",
  "learning_speed",
  "margin",
  "memorization",
  "per_example_loss",
  "random_half_masks",
  "register_metric",
]


def _logits(apply_fn, params, x):
  return chunking.batched_apply(apply_fn, params, x)  # whole data sets in chunks: bounded memory


def _check_label_range(y, logits):
  """Labels must index the logits' class axis (an out-of-range label would be clamped silently)."""
  _checks.check_labels("y", y, logits.shape[-1])


def _label_log_probs(logits, y):
  _check_label_range(y, logits)
  log_probs = jax.nn.log_softmax(logits, axis=-1)
  return jnp.take_along_axis(log_probs, jnp.asarray(y)[:, None], axis=-1)[:, 0]


def _check_xy(x, y):
  n = _checks.check_batch((x, y), "(x, y)")
  if np.ndim(y) != 1:
    raise ValueError(f"y must be a 1-D array of integer labels, got shape {np.shape(y)}")
  _checks.check_labels("y", y)
  return n


def per_example_loss(apply_fn: Callable[[Any, Any], jax.Array], params: Any, x: ArrayLike, y: ArrayLike) -> jax.Array:
  """Softmax cross-entropy ``-log p_y`` of each example.

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits``.
    params: params pytree (one model).
    x: inputs ``(n, ...)``.
    y: integer labels ``(n,)``.

  Returns:
    ``(n,)`` losses.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, -w * x])
    >>> [round(v, 4) for v in per_example_loss(apply_fn, 0.0, jnp.ones(2), jnp.array([0, 1])).tolist()]
    [0.6931, 0.6931]
  """
  _check_xy(x, y)
  return -_label_log_probs(_logits(apply_fn, params, x), y)


def confidence(apply_fn: Callable[[Any, Any], jax.Array], params: Any, x: ArrayLike, y: ArrayLike) -> jax.Array:
  """Softmax probability of the true label ``p_y`` of each example.

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits``.
    params: params pytree (one model).
    x: inputs ``(n, ...)``.
    y: integer labels ``(n,)``.

  Returns:
    ``(n,)`` probabilities.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, 0.0 * x])
    >>> [round(v, 4) for v in confidence(apply_fn, jnp.log(3.0), jnp.ones(2), jnp.array([0, 1])).tolist()]
    [0.75, 0.25]
  """
  _check_xy(x, y)
  return jnp.exp(_label_log_probs(_logits(apply_fn, params, x), y))


def margin(
  apply_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  x: ArrayLike,
  y: ArrayLike,
  *,
  kind: str = "logit",
) -> jax.Array:
  """Classification margin of each example; negative when misclassified.

  ``kind="logit"``: ``logit_y - max_{j != y} logit_j``; ``kind="prob"``: ``p_y - max_{j != y} p_j``.

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits`` with ``num_classes >= 2``.
    params: params pytree (one model).
    x: inputs ``(n, ...)``.
    y: integer labels ``(n,)``.
    kind: ``"logit"`` or ``"prob"``.

  Returns:
    ``(n,)`` margins.

  Raises:
    ValueError: on an unknown ``kind`` or fewer than 2 classes.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.array([3.0, 1.0, 0.0]) * x
    >>> margin(apply_fn, None, jnp.ones(2), jnp.array([0, 2])).tolist()
    [2.0, -3.0]
  """
  _checks.check_choice("kind", kind, ("logit", "prob"))
  _check_xy(x, y)
  logits = _logits(apply_fn, params, x)
  if logits.shape[-1] < 2:
    raise ValueError(f"margin needs num_classes >= 2, got logits of shape {logits.shape}")
  values = jax.nn.softmax(logits, axis=-1) if kind == "prob" else logits
  _check_label_range(y, logits)
  is_label = jax.nn.one_hot(jnp.asarray(y), logits.shape[-1], dtype=bool)
  own = jnp.sum(jnp.where(is_label, values, 0.0), axis=-1)
  best_other = jnp.max(jnp.where(is_label, -jnp.inf, values), axis=-1)
  return own - best_other


def el2n(apply_fn: Callable[[Any, Any], jax.Array], params: Any, x: ArrayLike, y: ArrayLike) -> jax.Array:
  """EL2N score ``E_seeds ‖softmax(f(x)) − onehot(y)‖₂`` (Paul, Ganguli, Dziugaite 2021).

  Pass the parameters of R seeds taken early in training (e.g. at 10% of the run).

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits``.
    params: params pytree with a leading seed axis ``R``.
    x: inputs ``(n, ...)``.
    y: integer labels ``(n,)``.

  Returns:
    ``(n,)`` scores in ``[0, sqrt(2)]``.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, 0.0 * x])
    >>> [round(v, 4) for v in el2n(apply_fn, jnp.zeros(3), jnp.ones(1), jnp.array([0])).tolist()]
    [0.7071]
  """
  _check_xy(x, y)
  _checks.leading_size("params", params)

  def one(p):
    logits = _logits(apply_fn, p, x)
    _check_label_range(y, logits)
    onehot = jax.nn.one_hot(jnp.asarray(y), logits.shape[-1], dtype=logits.dtype)
    return jnp.linalg.norm(jax.nn.softmax(logits, axis=-1) - onehot, axis=-1)

  return jnp.mean(jax.vmap(one)(params), axis=0)


def grand(
  loss_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  data: Any,
  *,
  chunk_size: int | None = None,
) -> jax.Array:
  """GraNd score ``E_seeds ‖∇_θ ℓ(θ; z)‖₂`` (Paul, Ganguli, Dziugaite 2021).

  Pass the parameters of R seeds taken early in training. The per-example gradient norms come from
  :func:`unlearn_jax.per_example.per_example_grad_norms` (seeds are processed one after another).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: params pytree with a leading seed axis ``R``.
    data: pytree with a leading example axis ``n``.
    chunk_size: optional example chunking passed to ``per_example_grad_norms``.

  Returns:
    ``(n,)`` mean gradient norms.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, z: 0.5 * (w * z[0] - z[1]) ** 2   # grad = (w x - y) x
    >>> data = (jnp.array([1.0, 2.0]), jnp.array([0.0, 0.0]))
    >>> grand(loss_fn, jnp.array([1.0, 3.0]), data).tolist()
    [2.0, 8.0]
  """
  _checks.check_batch(data, "data")
  num_seeds = _checks.leading_size("params", params)
  norms = [
    pe.per_example_grad_norms(loss_fn, jax.tree.map(lambda leaf, r=r: leaf[r], params), data, chunk_size=chunk_size)
    for r in range(num_seeds)
  ]
  return jnp.mean(jnp.stack(norms), axis=0)


def correctness(apply_fn: Callable[[Any, Any], jax.Array], params: Any, x: ArrayLike, y: ArrayLike) -> jax.Array:
  """Whether each example is classified correctly (top-1) by one model.

  Args:
    apply_fn: ``apply_fn(params, x_single) -> logits``.
    params: params pytree (one model).
    x: inputs ``(n, ...)``.
    y: integer labels ``(n,)``.

  Returns:
    ``(n,)`` bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, -w * x])
    >>> correctness(apply_fn, 1.0, jnp.array([1.0, 1.0]), jnp.array([0, 1])).tolist()
    [True, False]
  """
  _check_xy(x, y)
  logits = _logits(apply_fn, params, x)
  _check_label_range(y, logits)
  return jnp.argmax(logits, axis=-1) == jnp.asarray(y)


def correctness_along(
  apply_fn: Callable[[Any, Any], jax.Array], checkpoints: Any, x: ArrayLike, y: ArrayLike
) -> jax.Array:
  """:func:`correctness` for each of C checkpoints (or seeds): ``(C, n)`` bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, -w * x])
    >>> correctness_along(apply_fn, jnp.array([1.0, -1.0]), jnp.ones(1), jnp.array([0])).tolist()
    [[True], [False]]
  """
  _check_xy(x, y)
  _checks.leading_size("checkpoints", checkpoints)
  return _loops.map(lambda p: correctness(apply_fn, p, x, y), checkpoints)


def confidence_along(
  apply_fn: Callable[[Any, Any], jax.Array], checkpoints: Any, x: ArrayLike, y: ArrayLike
) -> jax.Array:
  """:func:`confidence` ``p_y`` for each of C checkpoints: ``(C, n)``.

  Examples:
    >>> import jax.numpy as jnp
    >>> apply_fn = lambda w, x: jnp.stack([w * x, 0.0 * x])
    >>> [[round(v, 2) for v in row] for row in confidence_along(
    ...     apply_fn, jnp.log(jnp.array([1.0, 3.0])), jnp.ones(1), jnp.array([0])).tolist()]
    [[0.5], [0.75]]
  """
  _check_xy(x, y)
  _checks.leading_size("checkpoints", checkpoints)
  return _loops.map(lambda p: confidence(apply_fn, p, x, y), checkpoints)


def _check_bool_matrix(name: str, value: Any) -> jax.Array:
  arr = jnp.asarray(value)
  if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"{name} must be a non-empty 2-D array, got shape {arr.shape}")
  if arr.dtype != jnp.bool_:
    if not _checks._is_traced(value) and not np.all(np.isin(np.asarray(value), (0, 1))):
      raise ValueError(f"{name} must be boolean (or 0/1), got values outside {{0, 1}}")
    arr = arr.astype(bool)
  return arr


def forgetting_events(correct: ArrayLike, *, never_learned: float | None = None) -> jax.Array:
  """Number of forgetting events per example (Toneva et al. 2019).

  A forgetting event is a transition from correct at checkpoint ``c - 1`` to incorrect at checkpoint
  ``c`` in an ordered sequence of checkpoints.

  Args:
    correct: ``(C, n)`` correctness (bool or 0/1), checkpoints in training order.
    never_learned: value given to examples that are never correct (Toneva et al. rank them as the most
      forgettable, e.g. ``C`` or ``inf``); ``None`` leaves their count (0).

  Returns:
    ``(n,)`` int32 counts; float with ``never_learned`` set.

  Raises:
    ValueError: if ``correct`` is not a non-empty 2-D 0/1 array.

  Examples:
    >>> import jax.numpy as jnp
    >>> correct = jnp.array([[1, 0, 0], [0, 0, 1], [1, 0, 0], [0, 0, 1]])
    >>> forgetting_events(correct).tolist()
    [2, 0, 1]
    >>> forgetting_events(correct, never_learned=float("inf")).tolist()
    [2.0, inf, 1.0]
  """
  c = _check_bool_matrix("correct", correct)
  events = jnp.sum(c[:-1] & ~c[1:], axis=0).astype(jnp.int32)
  if never_learned is None:
    return events
  return jnp.where(jnp.any(c, axis=0), events.astype(jnp.result_type(float)), never_learned)


def learning_speed(confidences: ArrayLike) -> jax.Array:
  """Learning speed / C-proxy: mean ``p_y`` over an ordered sequence of checkpoints (Jiang et al. 2021).

  Args:
    confidences: ``(C, n)`` ``p_y`` per checkpoint (see :func:`confidence_along`).

  Returns:
    ``(n,)`` means; high = learned early and kept (easy).

  Examples:
    >>> import jax.numpy as jnp
    >>> learning_speed(jnp.array([[0.5, 0.1], [1.0, 0.3]])).tolist()
    [0.75, 0.2]
  """
  arr = jnp.asarray(confidences)
  if arr.ndim != 2 or arr.shape[0] == 0 or arr.shape[1] == 0:
    raise ValueError(f"confidences must be a non-empty 2-D array (C, n), got shape {arr.shape}")
  _checks.check_finite_array("confidences", arr)
  return jnp.mean(arr, axis=0)


c_proxy = learning_speed


def random_half_masks(key: jax.Array, num_models: int, num_examples: int) -> jax.Array:
  """Inclusion masks for Feldman–Zhang memorization: each model trains on a uniform random half.

  Row r holds exactly ``num_examples // 2`` True entries, drawn independently per row from
  ``jax.random.fold_in(key, r)``.

  Args:
    key: a ``jax.random.key``.
    num_models: R >= 1.
    num_examples: n >= 2.

  Returns:
    ``(R, n)`` bool masks.

  Examples:
    >>> import jax
    >>> masks = random_half_masks(jax.random.key(0), 4, 10)
    >>> masks.shape, masks.sum(axis=1).tolist()
    ((4, 10), [5, 5, 5, 5])
  """
  for name, value, low in (("num_models", num_models, 1), ("num_examples", num_examples, 2)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < low:
      raise ValueError(f"{name} must be an int >= {low}, got {value!r}")
  return call(_half_masks_core, (int(num_models), int(num_examples)), key)


def _half_masks_core(num_models: int, num_examples: int, key: jax.Array) -> jax.Array:
  half = num_examples // 2

  def row(r):
    perm = jax.random.permutation(jax.random.fold_in(key, r), num_examples)
    return jnp.zeros(num_examples, bool).at[perm[:half]].set(True)

  return jax.vmap(row)(jnp.arange(num_models))


def memorization(correct: ArrayLike, in_mask: ArrayLike) -> jax.Array:
  """Feldman–Zhang memorization ``P[correct | x in training set] − P[correct | x out]``.

  From R models trained on random subsets (see :func:`random_half_masks`), estimated per example by the
  fraction of "in" models that classify it correctly minus the fraction of "out" models that do.

  Args:
    correct: ``(R, n)`` correctness of each model on each example (bool or 0/1).
    in_mask: ``(R, n)`` whether the example was in that model's training set.

  Returns:
    ``(n,)`` scores in ``[-1, 1]``. An example that is in every model's set (or in none) has no estimate
    and gets NaN; use enough models (the chance is ``2 · 2^-R`` per example for halves).

  Raises:
    ValueError: on shape mismatch or non-0/1 inputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> in_mask = jnp.array([[1, 0], [1, 1], [0, 1], [0, 0]])
    >>> correct = jnp.array([[1, 1], [1, 1], [0, 1], [0, 1]])
    >>> memorization(correct, in_mask).tolist()
    [1.0, 0.0]
  """
  c = _check_bool_matrix("correct", correct)
  m = _check_bool_matrix("in_mask", in_mask)
  if c.shape != m.shape:
    raise ValueError(f"correct and in_mask must have the same shape (R, n), got {c.shape} and {m.shape}")
  dtype = jnp.result_type(float)
  c, m = c.astype(dtype), m.astype(dtype)
  num_in = jnp.sum(m, axis=0)
  num_out = jnp.sum(1.0 - m, axis=0)
  p_in = jnp.sum(c * m, axis=0) / num_in
  p_out = jnp.sum(c * (1.0 - m), axis=0) / num_out
  return jnp.where((num_in > 0) & (num_out > 0), p_in - p_out, jnp.nan)


# ----------------------------------------------------------------------------------------------------
# The registry
# ----------------------------------------------------------------------------------------------------


class MetricInputs(NamedTuple):
  """What a study hands to a metric.

  Attributes:
    apply_fn: ``apply_fn(params, x_single) -> logits``.
    loss_fn: ``loss_fn(params, example) -> scalar``.
    x: training inputs (n, ...).
    y: training labels (n,).
    final_params: the trained chains, leaves (S, ...).
    early_params: the chains early in training (the early fraction of the run), leaves (S, ...).
    checkpoints: the chains along training, leaves (G, S, ...).
    train_on_halves: ``() -> (correct (R, n), in_mask (R, n))``: trains R models on random halves and
      returns their correctness on every example (memorization); None when the study does not offer it.
  """

  apply_fn: Callable
  loss_fn: Callable
  x: Any
  y: Any
  final_params: Any
  early_params: Any
  checkpoints: Any
  train_on_halves: Callable | None = None


class Metric(NamedTuple):
  """A difficulty metric: ``compute(inputs) -> (n,)`` and which way is harder (``"higher"``/``"lower"``)."""

  compute: Callable[[MetricInputs], jax.Array]
  harder_if: str

  @property
  def sign(self) -> int:
    """+1 when a higher value is harder, −1 when a lower one is."""
    return 1 if self.harder_if == "higher" else -1


def _seed_mean_core(fn, apply_fn, params, x, y):
  return jnp.mean(_loops.map(lambda p: fn(apply_fn, p, x, y), params), axis=0)


def _final(fn: Callable) -> Callable[[MetricInputs], jax.Array]:
  """A one-model metric averaged over the trained chains."""
  return lambda inp: call(_seed_mean_core, (fn, inp.apply_fn), inp.final_params, inp.x, inp.y)


def _along_core(which, apply_fn, checkpoints, x, y):
  num_ckpts = jax.tree.leaves(checkpoints)[0].shape[0]

  def one(seq):
    if which == "forgetting":
      correct = correctness_along(apply_fn, seq, x, y)
      return forgetting_events(correct, never_learned=float(num_ckpts)).astype(jnp.float32)
    return c_proxy(confidence_along(apply_fn, seq, x, y))

  return jnp.mean(_loops.map(one, jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), checkpoints)), axis=0)


def _along(which: str) -> Callable[[MetricInputs], jax.Array]:
  """A metric of the checkpoint sequence of each chain, averaged over the chains."""
  return lambda inp: call(_along_core, (which, inp.apply_fn), inp.checkpoints, inp.x, inp.y)


def _early_el2n(inp: MetricInputs) -> jax.Array:
  return call(el2n, (inp.apply_fn,), inp.early_params, inp.x, inp.y)


def _grand_core(loss_fn, params, data):
  return grand(loss_fn, params, data)


def _early_grand(inp: MetricInputs) -> jax.Array:
  return call(_grand_core, (inp.loss_fn,), inp.early_params, (inp.x, inp.y))


def _memorization(inp: MetricInputs) -> jax.Array:
  if inp.train_on_halves is None:
    raise ValueError("metric 'memorization' needs models trained on random halves (MetricInputs.train_on_halves)")
  correct, in_mask = inp.train_on_halves()
  return memorization(correct, in_mask)


METRICS: dict[str, Metric] = {
  "loss": Metric(_final(per_example_loss), "higher"),
  "confidence": Metric(_final(confidence), "lower"),
  "margin": Metric(_final(margin), "lower"),
  "el2n": Metric(_early_el2n, "higher"),
  "grand": Metric(_early_grand, "higher"),
  "forgetting": Metric(_along("forgetting"), "higher"),
  "cproxy": Metric(_along("cproxy"), "lower"),
  "memorization": Metric(_memorization, "higher"),
}
"""Metric name -> :class:`Metric` (the study's ``metrics.names`` choose among them)."""


def register_metric(name: str, compute: Callable[[MetricInputs], jax.Array], *, harder_if: str) -> None:
  """Adds (or replaces) a difficulty metric.

  Args:
    name: the name the study config uses.
    compute: ``compute(inputs: MetricInputs) -> (n,)`` values for every training example.
    harder_if: ``"higher"`` or ``"lower"``: which values mark a harder example.

  Examples:
    >>> register_metric("negative_loss", lambda inp: -METRICS["loss"].compute(inp), harder_if="lower")
    >>> METRICS["negative_loss"].sign
    -1
    >>> del METRICS["negative_loss"]
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"name must be a non-empty string, got {name!r}")
  if not callable(compute):
    raise TypeError(f"compute must be callable as compute(inputs), got {compute!r}")
  _checks.check_choice("harder_if", harder_if, ("higher", "lower"))
  METRICS[name] = Metric(compute, harder_if)
