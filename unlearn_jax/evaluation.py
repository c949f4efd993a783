"""Empirical evaluation of unlearning (THEORY §6).

Everything here works on trained parameters and the scores they give; nothing trains.

* **Loss barrier** along the straight line between two parameter vectors (:func:`loss_barrier`,
  :func:`barriers_along`).
* **Output-distribution test of "unlearned"**: the logit-scaled confidence
  ``s = log(p_y / (1 - p_y))`` (:func:`logit_confidence`) under R unlearned and R oracle seeds, the
  symmetric KL between Gaussian fits (:func:`gaussian_symmetric_kl`), the oracle-vs-oracle noise floor
  (:func:`noise_floor`), the decision (:func:`is_unlearned`) and the empirical steps to unlearn
  (:func:`empirical_steps_to_unlearn`).
* **Membership epsilon** per forget example, as scored in the NeurIPS 2023 unlearning challenge
  (:func:`membership_epsilon`: the uncorrected point estimate, which is *not* a lower bound — about
  log 4 for two identical laws at N = 16–32), and the lower bound the study reports
  (:func:`membership_lower_bound`: one-sided simultaneous Clopper–Pearson, 0 on identical laws) with
  the most that N models can resolve (:func:`membership_resolvable_cap`).
* **Accuracy and loss** on the forget, retain and test sets (:func:`accuracy_and_loss`,
  :func:`split_report`).

Array layouts (leading axes):

* several seeds: every leaf of a params pytree has a leading seed axis ``R``;
* parameters recorded during unlearning: leading axes ``(G, R, ...)`` -- ``G`` recorded checkpoints
  (the step grid), then ``R`` seeds;
* scores: ``(R, n)`` -- seeds by examples; recorded scores ``(G, R, n)``.

``apply_fn(params, x_single) -> logits (num_classes,)`` and ``loss_fn(params, example) -> scalar`` are
written for ONE example and batched here with ``jax.vmap``.
"""

from __future__ import annotations

import functools
from typing import Any, Callable, Mapping, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks

__all__ = [
  "DEFAULT_MIN_VARIANCE",
  "SplitMetrics",
  "StepsToUnlearn",
  "UnlearnedTest",
  "accuracy_and_loss",
  "barriers_along",
  "empirical_steps_to_unlearn",
  "gaussian_symmetric_kl",
  "is_unlearned",
  "logit_confidence",
  "logit_confidence_from_logits",
  "loss_barrier",
  "membership_epsilon",
  "membership_lower_bound",
  "membership_resolvable_cap",
  "noise_floor",
  "scores_along",
  "split_report",
]

DEFAULT_MIN_VARIANCE = 1e-6
"""Floor on the fitted variances in :func:`gaussian_symmetric_kl` (scores are O(1) logits)."""


# ----------------------------------------------------------------------------------------------------
# Loss barrier
# ----------------------------------------------------------------------------------------------------


def _check_same_structure(name_a: str, a: Any, name_b: str, b: Any) -> None:
  sa, sb = jax.tree.structure(a), jax.tree.structure(b)
  if sa != sb:
    raise ValueError(f"{name_a} and {name_b} must have the same pytree structure, got {sa} and {sb}")
  for la, lb in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    if np.shape(la) != np.shape(lb):
      raise ValueError(
        f"{name_a} and {name_b} leaves must have equal shapes, got {np.shape(la)} and {np.shape(lb)}"
      )


def _check_num_points(num_points: Any) -> int:
  if isinstance(num_points, bool) or not isinstance(num_points, (int, np.integer)) or num_points < 2:
    raise ValueError(f"num_points must be an int >= 2 (the grid includes both endpoints), got {num_points!r}")
  return int(num_points)


def _leading_size(name: str, tree: Any) -> int:
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


@functools.partial(jax.jit, static_argnums=0)
def _barrier_core(loss_fn, params_a, params_b, data, lambdas):
  """Barrier and curve on a fixed lambda grid; pure and traceable."""

  def set_loss(params):
    return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(params, data))

  def interpolate(lam):
    return jax.tree.map(lambda a, b: (1.0 - lam) * a + lam * b, params_a, params_b)

  curve = jax.vmap(lambda lam: set_loss(interpolate(lam)))(lambdas)
  linear = (1.0 - lambdas) * curve[0] + lambdas * curve[-1]
  return jnp.max(curve - linear), curve


def loss_barrier(
  loss_fn: Callable[[Any, Any], jax.Array],
  params_a: Any,
  params_b: Any,
  data: Any,
  *,
  num_points: int = 11,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Linear-path loss barrier between two models on a data set (THEORY §6).

  ``B_S = max_λ [ L_S((1-λ) θ_a + λ θ_b) - ((1-λ) L_S(θ_a) + λ L_S(θ_b)) ]`` over the grid
  ``λ = linspace(0, 1, num_points)``, with ``L_S`` the mean of ``loss_fn`` over ``data``. All grid points
  are evaluated in one call vmapped over λ. ``B_S >= 0`` always (λ = 0 is on the grid). Un-jitted; wrap
  in ``jax.jit`` with ``loss_fn`` and ``num_points`` static.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params_a: first endpoint (pytree).
    params_b: second endpoint, same structure and shapes.
    data: pytree of arrays with a leading example axis ``n`` (e.g. ``(x, y)``).
    num_points: number of grid points including both endpoints (>= 2).

  Returns:
    ``(barrier, (lambdas, curve))``: the scalar barrier, the grid ``(num_points,)`` and the losses
    ``L_S`` along it ``(num_points,)``.

  Raises:
    ValueError: if the endpoints differ in structure/shapes, ``data`` is empty or ``num_points < 2``.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, x: (w ** 2 - 1.0) ** 2  # double well, minima at w = -1 and w = +1
    >>> barrier, (lams, curve) = loss_barrier(loss_fn, jnp.array(-1.0), jnp.array(1.0), jnp.zeros(3),
    ...                                       num_points=5)
    >>> round(float(barrier), 4)
    1.0
  """
  num_points = _check_num_points(num_points)
  _check_same_structure("params_a", params_a, "params_b", params_b)
  _checks.check_batch(data, "data")
  lambdas = jnp.linspace(0.0, 1.0, num_points)
  barrier, curve = _barrier_core(loss_fn, params_a, params_b, data, lambdas)
  return barrier, (lambdas, curve)


def barriers_along(
  loss_fn: Callable[[Any, Any], jax.Array],
  checkpoints: Any,
  reference: Any,
  data: Any,
  *,
  num_points: int = 11,
  paired_seeds: bool = False,
) -> tuple[jax.Array, tuple[jax.Array, jax.Array]]:
  """Loss barriers between each of a sequence of checkpoints and a reference (THEORY §6).

  Used for "original vs oracle" (``checkpoints`` = the R oracle seeds stacked, ``reference`` = the
  original model: R barriers) and "unlearned vs oracle along the unlearning steps" (``checkpoints`` =
  the recorded ``(G, R, ...)`` parameters, ``reference`` = the R oracle seeds, ``paired_seeds=True``).
  Checkpoints are processed one after another (``lax.map``), each with all λ points
  vmapped, so memory is that of one :func:`loss_barrier` call.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    checkpoints: params pytree whose leaves have a leading axis ``G`` (checkpoints); with
      ``paired_seeds=True`` leading axes ``(G, R)``.
    reference: params pytree without the ``G`` axis; with ``paired_seeds=True`` leading axis ``R``
      (checkpoint seed r is paired with reference seed r).
    data: pytree with a leading example axis.
    num_points: λ grid size (>= 2).
    paired_seeds: whether both sides carry a seed axis to pair.

  Returns:
    ``(barriers, (lambdas, curves))`` with barriers ``(G,)`` (``(G, R)`` paired) and curves
    ``(G, num_points)`` (``(G, R, num_points)`` paired).

  Raises:
    ValueError: on mismatched structures/shapes, an empty ``data`` or ``num_points < 2``.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, x: (w ** 2 - 1.0) ** 2
    >>> b, _ = barriers_along(loss_fn, jnp.array([-1.0, 0.0, 1.0]), jnp.array(1.0), jnp.zeros(2),
    ...                       num_points=5)
    >>> [round(v, 3) for v in b.tolist()]
    [1.0, 0.129, 0.0]
  """
  num_points = _check_num_points(num_points)
  _checks.check_batch(data, "data")
  _leading_size("checkpoints", checkpoints)
  one = jax.tree.map(lambda leaf: leaf[0], checkpoints)
  _check_same_structure("checkpoints[0]", one, "reference", reference)
  if paired_seeds:
    _leading_size("reference", reference)
  lambdas = jnp.linspace(0.0, 1.0, num_points)

  def single(pair):
    params, ref = pair
    return _barrier_core(loss_fn, params, ref, data, lambdas)

  if paired_seeds:
    barriers, curves = jax.lax.map(lambda p: jax.lax.map(single, (p, reference)), checkpoints)
  else:
    barriers, curves = jax.lax.map(lambda p: single((p, reference)), checkpoints)
  return barriers, (lambdas, curves)


# ----------------------------------------------------------------------------------------------------
# Scores and the output-distribution test
# ----------------------------------------------------------------------------------------------------


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
  return jax.vmap(apply_fn, in_axes=(None, 0))(params, x)


def logit_confidence(
  apply_fn: Callable[[Any, Any], jax.Array],
  params: Any,
  x: ArrayLike,
  y: ArrayLike,
  *,
  seed_axis: bool = True,
) -> jax.Array:
  """Logit-scaled confidence ``s = log(p_y / (1 - p_y))`` of each example under each seed (THEORY §6).

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
    _leading_size("params", params)
  return _logit_confidence_core(apply_fn, params, x, y, bool(seed_axis))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _logit_confidence_core(apply_fn, params, x, y, seed_axis):
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
  _leading_size("checkpoints", checkpoints)
  return jax.lax.map(lambda p: logit_confidence(apply_fn, p, x, y, seed_axis=True), checkpoints)


def _check_scores(name: str, scores: Any, *, ndim: int = 2, min_seeds: int = 2) -> jax.Array:
  arr = jnp.asarray(scores)
  if arr.ndim != ndim:
    raise ValueError(f"{name} must have {ndim} axes ({'(G, R, n)' if ndim == 3 else '(R, n)'}), got shape {arr.shape}")
  if arr.shape[-2] < min_seeds:
    raise ValueError(f"{name} needs at least {min_seeds} seeds on axis -2, got shape {arr.shape}")
  if arr.shape[-1] == 0:
    raise ValueError(f"{name} must hold at least one example, got shape {arr.shape}")
  _checks.check_finite_array(name, arr)
  return arr


def _gaussian_fit(samples, min_variance):
  mean = jnp.mean(samples, axis=-2)
  var = jnp.var(samples, axis=-2, ddof=1)
  return mean, jnp.maximum(var, min_variance)


@jax.jit
def _sym_kl(a, b, min_variance):
  mean_a, var_a = _gaussian_fit(a, min_variance)
  mean_b, var_b = _gaussian_fit(b, min_variance)
  sq = (mean_a - mean_b) ** 2
  return 0.5 * ((var_a + sq) / var_b + (var_b + sq) / var_a) - 1.0


def gaussian_symmetric_kl(
  samples_a: ArrayLike,
  samples_b: ArrayLike,
  *,
  min_variance: float = DEFAULT_MIN_VARIANCE,
) -> jax.Array:
  """Per-example symmetric KL between Gaussian fits of two samples (THEORY §6).

  Each column (example) of ``samples_a`` and ``samples_b`` is fitted by ``N(mean, var)`` (sample mean,
  unbiased variance ``ddof=1``); the result is the Jeffreys divergence
  ``KL(a‖b) + KL(b‖a) = ((v_a + Δ²)/v_b + (v_b + Δ²)/v_a)/2 - 1`` with ``Δ`` the mean difference (the
  log terms cancel). Variances below ``min_variance`` are raised to it, so two constant samples give 0 when
  equal and a large finite distance ``Δ²/min_variance`` when not.

  Args:
    samples_a: ``(R_a, n)`` scores (seeds by examples), ``R_a >= 2``.
    samples_b: ``(R_b, n)`` scores, ``R_b >= 2``.
    min_variance: positive variance floor.

  Returns:
    ``(n,)`` non-negative distances.

  Raises:
    ValueError: on wrong shapes, fewer than 2 seeds, non-finite scores or a non-positive floor.

  Examples:
    >>> import jax.numpy as jnp
    >>> a = jnp.array([[0.0, 0.0], [2.0, 2.0]])  # mean 1, var 2
    >>> b = jnp.array([[1.0, 3.0], [3.0, 5.0]])  # means 2 and 4, var 2
    >>> [round(v, 3) for v in gaussian_symmetric_kl(a, b).tolist()]
    [0.5, 4.5]
  """
  _checks.check_positive("min_variance", min_variance)
  a = _check_scores("samples_a", samples_a)
  b = _check_scores("samples_b", samples_b)
  if a.shape[1] != b.shape[1]:
    raise ValueError(f"samples_a and samples_b must score the same n examples, got shapes {a.shape} and {b.shape}")
  return _sym_kl(a, b, min_variance)


@functools.partial(jax.jit, static_argnums=2)
def _floor_core(oracle, key, num_splits, min_variance):
  num_seeds = oracle.shape[0]
  half = num_seeds // 2

  def one(k):
    perm = jax.random.permutation(k, num_seeds)
    return _sym_kl(oracle[perm[:half]], oracle[perm[half : 2 * half]], min_variance)

  return jax.vmap(one)(jax.random.split(key, num_splits))


def noise_floor(
  oracle_scores: ArrayLike,
  key: jax.Array,
  *,
  num_splits: int = 1,
  min_variance: float = DEFAULT_MIN_VARIANCE,
) -> jax.Array:
  """Oracle-vs-oracle distances: the noise floor of the "unlearned" test (THEORY §6).

  The R oracle seeds are shuffled with ``key`` and split into two disjoint halves of ``R // 2`` seeds
  (one seed is left out when R is odd); the per-example :func:`gaussian_symmetric_kl` between the halves
  is the distance two samples of the *same* law show by chance. ``num_splits`` independent shuffles give
  more floor values.

  Note the halves hold ``R/2`` seeds, fewer than the ``R`` vs ``R`` comparison they calibrate, so the
  floor is on the generous side (estimated distances shrink as the sample grows).

  Args:
    oracle_scores: ``(R, n)`` scores of R oracle (retrained) seeds, ``R >= 4``.
    key: a ``jax.random.key``.
    num_splits: number of random half-splits (>= 1).
    min_variance: variance floor of :func:`gaussian_symmetric_kl`.

  Returns:
    ``(num_splits, n)`` floor distances.

  Raises:
    ValueError: on fewer than 4 seeds, wrong shapes, non-finite scores or ``num_splits < 1``.

  Examples:
    >>> import jax
    >>> oracle = jax.random.normal(jax.random.key(0), (32, 5))
    >>> floor = noise_floor(oracle, jax.random.key(1), num_splits=3)
    >>> floor.shape, bool((floor >= 0).all()), bool((floor < 1.0).all())
    ((3, 5), True, True)
  """
  _checks.check_positive("min_variance", min_variance)
  oracle = _check_scores("oracle_scores", oracle_scores, min_seeds=4)
  if isinstance(num_splits, bool) or not isinstance(num_splits, (int, np.integer)) or num_splits < 1:
    raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")
  return _floor_core(oracle, key, int(num_splits), min_variance)


class UnlearnedTest(NamedTuple):
  """Outcome of :func:`is_unlearned`.

  Attributes:
    unlearned: () bool, ``median_distance <= threshold``.
    median_distance: () median over the forget examples of the unlearned-vs-oracle distance.
    threshold: () the ``percentile``-th percentile of the noise floor.
    distances: (n,) per-example unlearned-vs-oracle distances.
  """

  unlearned: jax.Array
  median_distance: jax.Array
  threshold: jax.Array
  distances: jax.Array


def _floor_threshold(oracle, key, floor, percentile, num_splits, min_variance):
  if floor is None:
    if key is None:
      raise ValueError("pass either key (to compute the noise floor) or floor (precomputed), got neither")
    if isinstance(num_splits, bool) or not isinstance(num_splits, (int, np.integer)) or num_splits < 1:
      raise ValueError(f"num_splits must be an int >= 1, got {num_splits!r}")
    if oracle.shape[0] < 4:
      raise ValueError(f"oracle_scores needs at least 4 seeds for the noise floor, got shape {oracle.shape}")
    return _threshold_from_key(oracle, key, int(num_splits), percentile, min_variance)
  floor = jnp.asarray(floor)
  if floor.size == 0:
    raise ValueError(f"floor must hold at least one distance, got shape {floor.shape}")
  _checks.check_finite_array("floor", floor)
  return _percentile(floor.ravel(), percentile)


@functools.partial(jax.jit, static_argnums=2)
def _threshold_from_key(oracle, key, num_splits, percentile, min_variance):
  return jnp.percentile(_floor_core(oracle, key, num_splits, min_variance).ravel(), percentile)


@jax.jit
def _percentile(values, q):
  return jnp.percentile(values, q)


@jax.jit
def _median_distance(unlearned, oracle, min_variance):
  distances = _sym_kl(unlearned, oracle, min_variance)
  return distances, jnp.median(distances)


def _check_percentile(percentile):
  p = _checks._as_float("percentile", percentile)
  if p is not None and not 0.0 <= p <= 100.0:
    raise ValueError(f"percentile must lie in [0, 100], got {percentile!r}")


def is_unlearned(
  unlearned_scores: ArrayLike,
  oracle_scores: ArrayLike,
  *,
  key: jax.Array | None = None,
  floor: ArrayLike | None = None,
  percentile: float = 95.0,
  num_splits: int = 1,
  min_variance: float = DEFAULT_MIN_VARIANCE,
) -> UnlearnedTest:
  """The empirical "unlearning done" criterion of THEORY §6.

  A forget set is unlearned when the median over its examples of the per-example
  :func:`gaussian_symmetric_kl` between unlearned and oracle seeds is ``<=`` the ``percentile``-th
  percentile of the oracle-vs-oracle :func:`noise_floor`.

  Args:
    unlearned_scores: ``(R_u, n)`` scores of the unlearned seeds on the forget examples.
    oracle_scores: ``(R_o, n)`` scores of the oracle seeds on the same examples.
    key: key for the floor's random half-split (needed unless ``floor`` is given).
    floor: precomputed floor distances (any shape), e.g. from :func:`noise_floor`.
    percentile: percentile of the floor used as threshold (default 95).
    num_splits: half-splits when the floor is computed here.
    min_variance: variance floor of the Gaussian fits.

  Returns:
    An :class:`UnlearnedTest`.

  Raises:
    ValueError: on bad shapes/values, or when neither ``key`` nor ``floor`` is given.

  Examples:
    >>> import jax
    >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    >>> oracle = jax.random.normal(k1, (32, 20))
    >>> same = jax.random.normal(k2, (32, 20))
    >>> bool(is_unlearned(same, oracle, key=k3).unlearned)
    True
    >>> bool(is_unlearned(same + 3.0, oracle, key=k3).unlearned)
    False
  """
  _checks.check_positive("min_variance", min_variance)
  _check_percentile(percentile)
  unlearned = _check_scores("unlearned_scores", unlearned_scores)
  oracle = _check_scores("oracle_scores", oracle_scores)
  if unlearned.shape[1] != oracle.shape[1]:
    raise ValueError(
      f"unlearned_scores and oracle_scores must score the same n examples, got {unlearned.shape} and {oracle.shape}"
    )
  threshold = _floor_threshold(oracle, key, floor, percentile, num_splits, min_variance)
  distances, median = _median_distance(unlearned, oracle, min_variance)
  return UnlearnedTest(_leq(median, threshold), median, threshold, distances)


@jax.jit
def _leq(a, b):
  return a <= b


class StepsToUnlearn(NamedTuple):
  """Outcome of :func:`empirical_steps_to_unlearn`.

  Attributes:
    steps: () float, the first grid step that passes the test; ``+inf`` if none does.
    index: () int32, its index in the grid; ``-1`` if none.
    grid_end: () float, the last step of the grid (a lower bound on the steps when ``steps`` is inf).
    passed: (G,) bool, the test outcome at each grid step.
    median_distances: (G,) median unlearned-vs-oracle distance at each grid step.
    threshold: () the floor percentile.
  """

  steps: jax.Array
  index: jax.Array
  grid_end: jax.Array
  passed: jax.Array
  median_distances: jax.Array
  threshold: jax.Array


def empirical_steps_to_unlearn(
  step_grid: ArrayLike,
  scores_per_step: ArrayLike,
  oracle_scores: ArrayLike,
  *,
  key: jax.Array | None = None,
  floor: ArrayLike | None = None,
  percentile: float = 95.0,
  num_splits: int = 1,
  min_variance: float = DEFAULT_MIN_VARIANCE,
) -> StepsToUnlearn:
  """Empirical steps to unlearn: the first recorded step whose scores pass :func:`is_unlearned`.

  The noise floor is computed once (from ``oracle_scores`` with ``key``, or passed as ``floor``) and
  every grid step is tested against the same threshold (vmapped over the grid).

  Args:
    step_grid: ``(G,)`` increasing step counts at which the unlearning parameters were recorded.
    scores_per_step: ``(G, R, n)`` scores of the R unlearned seeds at each recorded step (see
      :func:`scores_along`).
    oracle_scores: ``(R_o, n)`` oracle scores on the same forget examples.
    key: key for the floor's half-split (unless ``floor`` is given).
    floor: precomputed floor distances.
    percentile: floor percentile used as threshold.
    num_splits: half-splits when the floor is computed here.
    min_variance: variance floor of the Gaussian fits.

  Returns:
    A :class:`StepsToUnlearn`; ``steps`` is ``+inf`` (and ``index`` ``-1``) when no grid step passes, in
    which case report ``grid_end`` as "more than".

  Raises:
    ValueError: on bad shapes/values or a grid that does not match ``scores_per_step``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> k1, k2, k3 = jax.random.split(jax.random.key(0), 3)
    >>> oracle = jax.random.normal(k1, (32, 20))
    >>> noise = jax.random.normal(k2, (32, 20))
    >>> scores = jnp.stack([noise + m for m in (4.0, 2.0, 0.0)])
    >>> out = empirical_steps_to_unlearn(jnp.array([0, 100, 200]), scores, oracle, key=k3)
    >>> float(out.steps), out.passed.tolist()
    (200.0, [False, False, True])
  """
  _checks.check_positive("min_variance", min_variance)
  _check_percentile(percentile)
  grid = jnp.asarray(step_grid)
  scores = _check_scores("scores_per_step", scores_per_step, ndim=3)
  oracle = _check_scores("oracle_scores", oracle_scores)
  if grid.ndim != 1 or grid.shape[0] != scores.shape[0]:
    raise ValueError(
      f"step_grid must be 1-D with one entry per recorded step, got shape {grid.shape} for scores {scores.shape}"
    )
  if not _checks._is_traced(grid) and np.any(np.diff(np.asarray(grid)) <= 0):
    raise ValueError(f"step_grid must be strictly increasing, got {np.asarray(grid).tolist()}")
  if scores.shape[2] != oracle.shape[1]:
    raise ValueError(
      f"scores_per_step and oracle_scores must score the same n examples, got {scores.shape} and {oracle.shape}"
    )
  threshold = _floor_threshold(oracle, key, floor, percentile, num_splits, min_variance)
  return _steps_core(grid, scores, oracle, threshold, min_variance)


@jax.jit
def _steps_core(grid, scores, oracle, threshold, min_variance):
  medians = jax.vmap(lambda s: _median_distance(s, oracle, min_variance)[1])(scores)
  passed = medians <= threshold
  any_pass = jnp.any(passed)
  index = jnp.where(any_pass, jnp.argmax(passed), -1).astype(jnp.int32)
  grid_f = grid.astype(jnp.result_type(float))
  steps = jnp.where(any_pass, grid_f[jnp.maximum(index, 0)], jnp.inf)
  return StepsToUnlearn(steps, index, grid_f[-1], passed, medians, threshold)


# ----------------------------------------------------------------------------------------------------
# Membership epsilon lower bound
# ----------------------------------------------------------------------------------------------------


def _clopper_pearson_upper(num_samples: int, confidence: float) -> np.ndarray:
  """Upper ends of the two-sided Clopper–Pearson intervals for k = 0..N errors out of N."""
  from scipy import stats  # pylint: disable=g-import-not-at-top

  k = np.arange(num_samples + 1, dtype=float)
  alpha = 1.0 - confidence
  with np.errstate(all="ignore"):
    upper = stats.beta.ppf(1.0 - alpha / 2.0, k + 1.0, num_samples - k)
  upper[-1] = 1.0
  return upper


def _epsilon_from_rates(fpr, fnr, delta, one_sided):
  """max of log((1-δ-FPR)/FNR) and log((1-δ-FNR)/FPR) (only the latter when one_sided); terms with a
  zero denominator or a non-positive numerator are dropped (-inf)."""

  def term(num_rate, den_rate):
    num = 1.0 - delta - num_rate
    ok = (num > 0) & (den_rate > 0)
    return jnp.where(ok, jnp.log(jnp.where(ok, num, 1.0)) - jnp.log(jnp.where(ok, den_rate, 1.0)), -jnp.inf)

  if one_sided:
    return term(fnr, fpr)
  return jnp.maximum(term(fpr, fnr), term(fnr, fpr))


def membership_epsilon(
  unlearned_scores: ArrayLike,
  retrained_scores: ArrayLike,
  *,
  delta: float,
  confidence: float | None = None,
  one_sided: bool = False,
  simultaneous: bool = False,
) -> jax.Array:
  """Per-example membership-inference lower bound on ε (THEORY §6; NeurIPS 2023 unlearning challenge).

  For forget example j, the N unlearned scores ``u = unlearned_scores[:, j]`` and the N retrained scores
  ``r = retrained_scores[:, j]`` (logit-scaled confidences from N independent models each) are separated
  by threshold tests. For every threshold t among the pooled sample values (and ±inf) and both
  directions ("unlearned if s >= t" and "unlearned if s <= t"), with FPR = fraction of retrained models
  called unlearned and FNR = fraction of unlearned models called retrained, an (ε, δ)-indistinguishable
  pair of laws must satisfy ``FPR + e^ε FNR >= 1 - δ`` and ``FNR + e^ε FPR >= 1 - δ``, so

  ``ε̂ = max_t max( log((1-δ-FPR)/FNR), log((1-δ-FNR)/FPR) )``, clipped below at 0.

  Zero rates: a term whose denominator rate is 0 (or whose numerator ``1-δ-rate`` is ``<= 0``) is dropped
  instead of giving ``+inf``; the point estimate therefore never exceeds about ``log(N (1-δ))``, the
  largest ε N samples can resolve (perfectly separated samples give this cap). The result is always
  finite and ``>= 0``.

  With ``confidence`` (e.g. 0.95), FPR and FNR are replaced by the upper ends of their two-sided
  Clopper–Pearson intervals at that level (computed with ``scipy.stats.beta``; jax has no inverse
  incomplete beta), which are > 0, so the result is a high-confidence *lower bound* on ε for each
  threshold. By default (as in the challenge) the maximum over thresholds is not corrected for multiple
  comparisons, so the maximum can exceed the true ε with more than ``1 - confidence`` probability;
  ``simultaneous=True`` applies a Bonferroni correction over all the rate bounds used, so that with
  probability ``>= confidence`` every threshold's bound holds at once and the result is a valid lower
  bound on the ε of the two laws.

  ``one_sided=True`` keeps only ``log((1-δ-FNR)/FPR)``, the inequality implied by
  ``P_unlearned(S) <= e^ε P_retrained(S) + δ`` alone -- the direction a certificate on
  ``D_α(ρ_k ‖ π_T(D'))`` (THEORY §4) speaks about -- so it can be compared with such a certificate.

  Args:
    unlearned_scores: ``(N, m)`` scores from N unlearned models on m forget examples.
    retrained_scores: ``(N, m)`` scores from N retrained (oracle) models, same m examples.
    delta: δ in [0, 1).
    confidence: ``None`` for the point estimate, else a level in (0, 1) for Clopper–Pearson bounds.
    one_sided: keep only the unlearned-vs-retrained direction (see above).
    simultaneous: Bonferroni-correct the Clopper–Pearson level over thresholds (needs ``confidence``).

  Returns:
    ``(m,)`` ε estimates (or lower bounds), finite and non-negative.

  Raises:
    ValueError: on shape mismatch, fewer than 1 model, non-finite scores, δ outside [0, 1) or a
      confidence outside (0, 1).

  Examples:
    >>> import jax.numpy as jnp
    >>> u = jnp.array([[2.0], [3.0], [4.0], [5.0]])   # perfectly separated from r
    >>> r = jnp.array([[-2.0], [-3.0], [-4.0], [-5.0]])
    >>> round(float(membership_epsilon(u, r, delta=0.0)[0]), 4)  # the cap log(N) = log(4)
    1.3863
    >>> float(membership_epsilon(r, r, delta=0.0)[0])
    0.0
  """
  u = jnp.asarray(unlearned_scores)
  r = jnp.asarray(retrained_scores)
  if u.ndim != 2 or u.shape != r.shape:
    raise ValueError(
      "unlearned_scores and retrained_scores must both have shape (N, m) (models by forget examples), "
      f"got {u.shape} and {r.shape}"
    )
  if u.shape[0] < 1 or u.shape[1] < 1:
    raise ValueError(f"need at least one model and one example, got shape {u.shape}")
  _checks.check_finite_array("unlearned_scores", u)
  _checks.check_finite_array("retrained_scores", r)
  d = _checks._as_float("delta", delta)
  if d is not None and not 0.0 <= d < 1.0:
    raise ValueError(f"delta must lie in [0, 1), got {delta!r}")
  num_models = u.shape[0]
  upper = None
  if simultaneous and confidence is None:
    raise ValueError("simultaneous=True corrects Clopper-Pearson bounds and needs a confidence, got confidence=None")
  if confidence is not None:
    _checks.check_probability("confidence", confidence)
    level = float(confidence)
    if simultaneous:
      # Bonferroni over every rate bound used: 2 rates x 2 directions x (2N + 2) thresholds, each an
      # upper end failing with probability (1 - confidence) / num_bounds.
      num_bounds = 4 * (2 * num_models + 2)
      level = 1.0 - 2.0 * (1.0 - level) / num_bounds
    upper = jnp.asarray(_clopper_pearson_upper(num_models, level), dtype=u.dtype)
  return _membership_core(u, r, jnp.asarray(delta, u.dtype), upper, bool(one_sided))


def membership_lower_bound(
  unlearned_scores: ArrayLike,
  retrained_scores: ArrayLike,
  *,
  delta: float,
  confidence: float = 0.95,
) -> jax.Array:
  """The membership ε *lower bound* reported by the study (THEORY §6).

  :func:`membership_epsilon` with one-sided Clopper–Pearson upper ends of FPR and FNR, Bonferroni-
  corrected over every threshold and direction (``confidence``, ``one_sided=True``,
  ``simultaneous=True``): with probability ≥ ``confidence`` the two laws are not (ε, δ)-close for any
  smaller ε in the direction a certificate on D_α(ρ_k ‖ π_T(D')) speaks about. It is 0 on two
  identical laws (up to the ``1 − confidence`` chance), unlike the point estimate, whose median for
  identical laws is about log 4 at N = 16–32 models and 1.4–1.5 at N = 64–1,000. It cannot exceed
  :func:`membership_resolvable_cap` of the number of models.

  Args:
    unlearned_scores: ``(N, m)`` scores from N unlearned models.
    retrained_scores: ``(N, m)`` scores from N retrained models.
    delta: δ in [0, 1).
    confidence: level in (0, 1) of the simultaneous bound.

  Returns:
    ``(m,)`` lower bounds, finite and ≥ 0.

  Examples:
    >>> import jax
    >>> a, b = jax.random.normal(jax.random.key(0), (2, 64, 3))
    >>> membership_lower_bound(a, b, delta=1e-5).tolist()  # two identical laws
    [0.0, 0.0, 0.0]
  """
  return membership_epsilon(unlearned_scores, retrained_scores, delta=delta, confidence=confidence,
                            one_sided=True, simultaneous=True)


def membership_resolvable_cap(num_models: int, *, delta: float, confidence: float = 0.95) -> float:
  """The largest value :func:`membership_lower_bound` can take with ``num_models`` models per side.

  It is reached by perfectly separated samples (no error at the best threshold); below it N models
  cannot tell an ε apart. For δ = 1e-5 and 95%: 0 for N ≤ 10 (no leakage can be shown at all), about
  0.45 for N = 16, 1.2 for N = 32, 1.9 for N = 64.

  Args:
    num_models: N ≥ 1 models per side.
    delta: δ in [0, 1).
    confidence: level of the bound.

  Returns:
    The cap (a Python float, ≥ 0).

  Examples:
    >>> membership_resolvable_cap(8, delta=1e-5)
    0.0
    >>> round(membership_resolvable_cap(32, delta=1e-5), 2)
    1.18
  """
  if isinstance(num_models, bool) or not isinstance(num_models, (int, np.integer)) or num_models < 1:
    raise ValueError(f"num_models must be an integer >= 1, got {num_models!r}")
  separated = jnp.arange(num_models, dtype=jnp.float32)[:, None]
  return float(membership_lower_bound(separated + num_models, separated - num_models, delta=delta,
                                      confidence=confidence)[0])


@functools.partial(jax.jit, static_argnums=4)
def _membership_core(u, r, delta, upper, one_sided):
  num_models = u.shape[0]
  if upper is not None:
    to_rate = lambda count: upper[count]
  else:
    to_rate = lambda count: count.astype(u.dtype) / num_models

  def per_example(u_j, r_j):
    u_sorted, r_sorted = jnp.sort(u_j), jnp.sort(r_j)
    thresholds = jnp.concatenate([u_j, r_j, jnp.array([-jnp.inf, jnp.inf], u_j.dtype)])
    # "unlearned if s >= t": FP = #(r >= t), FN = #(u < t).
    fp_hi = num_models - jnp.searchsorted(r_sorted, thresholds, side="left")
    fn_hi = jnp.searchsorted(u_sorted, thresholds, side="left")
    # "unlearned if s <= t": FP = #(r <= t), FN = #(u > t).
    fp_lo = jnp.searchsorted(r_sorted, thresholds, side="right")
    fn_lo = num_models - jnp.searchsorted(u_sorted, thresholds, side="right")
    eps_hi = _epsilon_from_rates(to_rate(fp_hi), to_rate(fn_hi), delta, one_sided)
    eps_lo = _epsilon_from_rates(to_rate(fp_lo), to_rate(fn_lo), delta, one_sided)
    return jnp.maximum(jnp.max(jnp.maximum(eps_hi, eps_lo)), 0.0)

  return jax.vmap(per_example, in_axes=(1, 1))(u, r)


# ----------------------------------------------------------------------------------------------------
# Accuracy and loss on the splits
# ----------------------------------------------------------------------------------------------------


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
    _leading_size("params", params)
  if not _checks._is_traced(x):
    one_params = jax.tree.map(lambda leaf: leaf[0], params) if seed_axis else params
    logits = jax.eval_shape(apply_fn, one_params, jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)))
    _checks.check_labels("y", y, logits.shape[-1])  # an out-of-range label would give a NaN / clamped loss
  return _accuracy_and_loss_core(apply_fn, params, x, y, bool(seed_axis))


@functools.partial(jax.jit, static_argnums=(0, 4))
def _accuracy_and_loss_core(apply_fn, params, x, y, seed_axis):
  def one(p):
    logits = _batched_logits(apply_fn, p, x)
    log_probs = jax.nn.log_softmax(logits, axis=-1)
    labels = jnp.asarray(y)
    loss = -jnp.mean(jnp.take_along_axis(log_probs, labels[:, None], axis=-1))
    acc = jnp.mean((jnp.argmax(logits, axis=-1) == labels).astype(log_probs.dtype))
    return acc, loss

  return jax.vmap(one)(params) if seed_axis else one(params)


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

