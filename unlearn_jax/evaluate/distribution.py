"""The output-distribution test of "unlearned" (theory §6).

For each forget example the logit-scaled confidence under R unlearned and R oracle seeds is fitted by two
Gaussians; the distance is their symmetric KL (:func:`gaussian_symmetric_kl`). The noise floor is the
same distance between two disjoint halves of the oracle seeds (:func:`noise_floor`). A forget set is
unlearned when the median distance over its examples is ≤ a percentile of the floor
(:func:`is_unlearned`); :func:`empirical_steps_to_unlearn` applies the test along a grid of recorded
steps.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax._compile import call

__all__ = [
  "DEFAULT_MIN_VARIANCE",
  "StepsToUnlearn",
  "UnlearnedTest",
  "empirical_steps_to_unlearn",
  "gaussian_symmetric_kl",
  "is_unlearned",
  "noise_floor",
]

DEFAULT_MIN_VARIANCE = 1e-6


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
  """Per-example symmetric KL between Gaussian fits of two samples (theory §6).

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
  return call(_sym_kl, (), a, b, min_variance)


def _floor_core(num_splits, oracle, key, min_variance):
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
  """Oracle-vs-oracle distances: the noise floor of the "unlearned" test (theory §6).

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
  return call(_floor_core, (int(num_splits),), oracle, key, min_variance)


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
    return call(_threshold_from_key, (int(num_splits),), oracle, key, percentile, min_variance)
  floor = jnp.asarray(floor)
  if floor.size == 0:
    raise ValueError(f"floor must hold at least one distance, got shape {floor.shape}")
  _checks.check_finite_array("floor", floor)
  return call(jnp.percentile, (), floor.ravel(), percentile)


def _threshold_from_key(num_splits, oracle, key, percentile, min_variance):
  return jnp.percentile(_floor_core(num_splits, oracle, key, min_variance).ravel(), percentile)


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
  """The empirical "unlearning done" criterion of theory §6.

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
  distances, median = call(_median_distance, (), unlearned, oracle, min_variance)
  return UnlearnedTest(median <= threshold, median, threshold, distances)


class StepsToUnlearn(NamedTuple):
  """Outcome of :func:`empirical_steps_to_unlearn`.

  Attributes:
    steps: () float, the first grid step from which every later one passes too; ``+inf`` if none.
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
  """Empirical steps to unlearn: the first recorded step from which on every recorded step passes
  :func:`is_unlearned` (a pass followed by a failure later in the grid does not count).

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
  return call(_steps_core, (), grid, scores, oracle, threshold, min_variance)


def _steps_core(grid, scores, oracle, threshold, min_variance):
  medians = jax.vmap(lambda s: _median_distance(s, oracle, min_variance)[1])(scores)
  passed = medians <= threshold
  # unlearned at k only if every later grid step passes too: a first crossing followed by a climb back
  # over the threshold (seen under L1-sparse fine-tuning) is no verdict
  stays = jnp.flip(jnp.cumprod(jnp.flip(passed).astype(jnp.int32)).astype(bool))
  any_pass = jnp.any(stays)
  index = jnp.where(any_pass, jnp.argmax(stays), -1).astype(jnp.int32)
  grid_f = grid.astype(jnp.result_type(float))
  steps = jnp.where(any_pass, grid_f[jnp.maximum(index, 0)], jnp.inf)
  return StepsToUnlearn(steps, index, grid_f[-1], passed, medians, threshold)


class TestPower(NamedTuple):
  """Operating characteristics of :func:`is_unlearned` at a sample size, by simulation.

  Attributes:
    power: fraction of trials where a set whose scores are shifted by ``shift`` standard deviations
      from the oracles' is found NOT unlearned (the test rejects, as it should).
    size: fraction of trials where a set drawn from the oracles' own law is found not unlearned (a
      false rejection).
    num_seeds, num_examples, shift, trials: the simulated setting.
  """

  power: float
  size: float
  num_seeds: int
  num_examples: int
  shift: float
  trials: int


def _power_core(num_seeds, num_examples, num_splits, trials, key, shift, percentile, min_variance):
  def one(k):
    k_oracle, k_unlearned, k_split = jax.random.split(k, 3)
    oracle = jax.random.normal(k_oracle, (num_seeds, num_examples))
    same = jax.random.normal(k_unlearned, (num_seeds, num_examples))
    threshold = _threshold_from_key(num_splits, oracle, k_split, percentile, min_variance)
    _, median_shifted = _median_distance(same + shift, oracle, min_variance)
    _, median_same = _median_distance(same, oracle, min_variance)
    return median_shifted > threshold, median_same > threshold

  rejected_shifted, rejected_same = jax.vmap(one)(jax.random.split(key, trials))
  return jnp.mean(rejected_shifted), jnp.mean(rejected_same)


def unlearned_test_power(
  num_seeds: int,
  num_examples: int,
  *,
  shift: float = 2.0,
  percentile: float = 95.0,
  num_splits: int = 8,
  trials: int = 400,
  key: jax.Array | None = None,
  min_variance: float = DEFAULT_MIN_VARIANCE,
) -> TestPower:
  """The power (and size) of the "unlearned" test of :func:`is_unlearned` with R seeds per side.

  Simulates ``trials`` forget sets of ``num_examples`` examples whose R oracle scores are N(0, 1) and
  whose R unlearned scores are N(``shift``, 1) (power) or N(0, 1) (size), with the noise floor of
  ``num_splits`` half-splits and its ``percentile`` as threshold — the study's own test. The standard
  error of each rate is at most 0.5/sqrt(trials) (0.025 at 400 trials).

  Args:
    num_seeds: R, seeds per side (>= 4).
    num_examples: examples in the forget set (>= 1).
    shift: the shift in standard deviations a useful test should detect.
    percentile: the floor percentile of the threshold.
    num_splits: half-splits of the floor.
    trials: simulated forget sets.
    key: a ``jax.random.key`` (default ``key(0)``: deterministic).
    min_variance: variance floor of the Gaussian fits.

  Returns:
    A :class:`TestPower`.

  Examples:
    >>> low, high = unlearned_test_power(4, 20), unlearned_test_power(32, 20)
    >>> low.power < 0.05 < 0.9 < high.power
    True
  """
  for name, value, minimum in (("num_seeds", num_seeds, 4), ("num_examples", num_examples, 1), ("trials", trials, 1)):
    if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < minimum:
      raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  _check_percentile(percentile)
  key = jax.random.key(0) if key is None else key
  power, size = call(
    _power_core,
    (int(num_seeds), int(num_examples), int(num_splits), int(trials)),
    key,
    float(shift),
    float(percentile),
    min_variance,
  )
  return TestPower(float(power), float(size), int(num_seeds), int(num_examples), float(shift), int(trials))
