"""Tests for unlearn_jax.evaluation (THEORY §6): barriers, the output-distribution test, membership ε."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import linear_softmax  # tests/ helper module
import numpy as np
import pytest
from scipy import stats
from scipy import stats as sstats

from unlearn_jax import evaluate as ev
from unlearn_jax.evaluate import membership as ev_membership
from unlearn_jax.evaluate import scores as scores_mod

# ----------------------------------------------------------------------------------------------------
# Small stand-in classifier (a linear softmax model written for one example)
# ----------------------------------------------------------------------------------------------------

NUM_FEATURES, NUM_CLASSES = 4, 3
apply_fn, loss_fn = linear_softmax.apply_fn, linear_softmax.loss_fn


def make_params(key, scale=1.0):
  return linear_softmax.make_params(key, NUM_FEATURES, NUM_CLASSES, scale)


def make_data(key, n=12):
  k1, k2 = jax.random.split(key)
  return jax.random.normal(k1, (n, NUM_FEATURES)), jax.random.randint(k2, (n,), 0, NUM_CLASSES)


def np_set_loss(params, data):
  """Float64 NumPy mean cross-entropy (independent of the code under test)."""
  x, y = (np.asarray(a) for a in data)
  logits = x.astype(np.float64) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)
  logits = logits - logits.max(axis=1, keepdims=True)
  log_probs = logits - np.log(np.exp(logits).sum(axis=1, keepdims=True))
  return -np.mean(log_probs[np.arange(len(y)), y])


def np_barrier(params_a, params_b, data, num_points):
  lams = np.linspace(0.0, 1.0, num_points)
  la, lb = np_set_loss(params_a, data), np_set_loss(params_b, data)
  values = []
  for lam in lams:
    p = {
      k: (1 - lam) * np.asarray(params_a[k], np.float64) + lam * np.asarray(params_b[k], np.float64) for k in params_a
    }
    values.append(np_set_loss(p, data) - ((1 - lam) * la + lam * lb))
  return max(values)


# ----------------------------------------------------------------------------------------------------
# Loss barrier
# ----------------------------------------------------------------------------------------------------


def test_barrier_zero_between_identical_models():
  params = make_params(jax.random.key(0))
  data = make_data(jax.random.key(1))
  barrier, (lams, curve) = ev.loss_barrier(loss_fn, params, params, data, num_points=7)
  assert abs(float(barrier)) < 1e-6
  np.testing.assert_allclose(curve, np.full(7, np_set_loss(params, data)), rtol=1e-5)
  np.testing.assert_allclose(lams, np.linspace(0, 1, 7), atol=1e-7)


def double_well(w, x):
  # x scales the well; L_S(w) = mean(x) * (w^2 - 1)^2.
  return x * (w**2 - 1.0) ** 2


@pytest.mark.parametrize("num_points", [3, 11, 101])
def test_barrier_double_well_symmetric_minima_hand_value(num_points):
  # Between the two minima w = -1 and w = +1 the path passes w = 0 at lambda = 1/2 (on every odd grid):
  # L(0) = mean(x) * 1 and both endpoint losses are 0, so the barrier is exactly mean(x) = 2.
  data = jnp.array([1.0, 2.0, 3.0])
  with jax.enable_x64(True):
    barrier, _ = ev.loss_barrier(
      double_well, jnp.array(-1.0), jnp.array(1.0), jnp.asarray(data, jnp.float64), num_points=num_points
    )
    assert float(barrier) == pytest.approx(2.0, rel=1e-12)


def test_barrier_double_well_asymmetric_hand_value():
  # a = -1 (minimum), b = 2: w(lam) = -1 + 3 lam, L(w) = (w^2 - 1)^2, L(a) = 0, L(b) = 9, so the
  # barrier terms are g(lam) = L(w(lam)) - 9 lam; on the grid lam = k/6 (w = -1, -0.5, 0, ..., 2):
  lams = np.arange(7) / 6.0
  hand = [((-1 + 3 * lam) ** 2 - 1) ** 2 - 9 * lam for lam in lams]
  # 0, 0.5625 - 1.5, 1 - 3, 0.5625 - 4.5, 0 - 6, 1.5625 - 7.5, 9 - 9: the max is 0 at the endpoints.
  np.testing.assert_allclose(hand, [0, -0.9375, -2, -3.9375, -6, -5.9375, 0], atol=1e-12)
  with jax.enable_x64(True):
    barrier, (_, curve) = ev.loss_barrier(
      double_well, jnp.array(-1.0), jnp.array(2.0), jnp.ones(1, jnp.float64), num_points=7
    )
    assert float(barrier) == pytest.approx(0.0, abs=1e-12)
    np.testing.assert_allclose(np.asarray(curve) - 9 * lams, hand, atol=1e-12)
  # From a = -1.2 to b = 1.1 the path crosses the hump: grid lam = k/23, hand-computed max.
  a, b, num = -1.2, 1.1, 24
  lams = np.linspace(0, 1, num)
  w = (1 - lams) * a + lams * b
  lw = lambda v: (v**2 - 1) ** 2
  expected = np.max(lw(w) - ((1 - lams) * lw(a) + lams * lw(b)))
  with jax.enable_x64(True):
    barrier, _ = ev.loss_barrier(double_well, jnp.array(a), jnp.array(b), jnp.ones(2, jnp.float64), num_points=num)
    assert float(barrier) == pytest.approx(expected, rel=1e-12)
  assert expected > 0.8  # it really crosses the hump near w = 0


def test_barrier_matches_numpy_reference_and_is_symmetric():
  pa = make_params(jax.random.key(2), scale=2.0)
  pb = make_params(jax.random.key(3), scale=2.0)
  data = make_data(jax.random.key(4), n=20)
  with jax.enable_x64(True):
    pa64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), pa)
    pb64 = jax.tree.map(lambda v: jnp.asarray(v, jnp.float64), pb)
    data64 = (jnp.asarray(data[0], jnp.float64), data[1])
    ab, (_, curve_ab) = ev.loss_barrier(loss_fn, pa64, pb64, data64, num_points=21)
    ba, (_, curve_ba) = ev.loss_barrier(loss_fn, pb64, pa64, data64, num_points=21)
    assert float(ab) == pytest.approx(np_barrier(pa, pb, data, 21), rel=1e-10)
    assert float(ab) == pytest.approx(float(ba), rel=1e-10)
    np.testing.assert_allclose(curve_ab, curve_ba[::-1], rtol=1e-10)


def test_barrier_jitted_path_matches():
  pa, pb = make_params(jax.random.key(5)), make_params(jax.random.key(6))
  data = make_data(jax.random.key(7))
  jitted = jax.jit(ev.loss_barrier, static_argnums=0, static_argnames="num_points")
  b1, _ = jitted(loss_fn, pa, pb, data, num_points=9)
  b2, _ = ev.loss_barrier(loss_fn, pa, pb, data, num_points=9)
  assert float(b1) == pytest.approx(float(b2), rel=1e-5)
  assert float(b1) >= 0.0


def test_barriers_along_matches_loop_and_paired_seeds():
  keys = jax.random.split(jax.random.key(8), 6)
  ckpts = jax.tree.map(lambda *v: jnp.stack(v), *[make_params(k) for k in keys[:3]])
  ref = make_params(keys[3])
  data = make_data(keys[4])
  barriers, (_, curves) = ev.barriers_along(loss_fn, ckpts, ref, data, num_points=5)
  assert barriers.shape == (3,) and curves.shape == (3, 5)
  for g in range(3):
    one = jax.tree.map(lambda v: v[g], ckpts)
    np.testing.assert_allclose(barriers[g], np_barrier(one, ref, data, 5), rtol=1e-4, atol=1e-6)
  # Paired: (G=2, R=3) checkpoints against R=3 reference seeds.
  seeds = [make_params(k) for k in jax.random.split(keys[5], 6)]
  grid = jax.tree.map(lambda *v: jnp.stack(v).reshape((2, 3) + v[0].shape), *seeds)
  refs = jax.tree.map(lambda *v: jnp.stack(v), *[make_params(k) for k in jax.random.split(keys[0], 3)])
  paired, (_, pc) = ev.barriers_along(loss_fn, grid, refs, data, num_points=5, paired_seeds=True)
  assert paired.shape == (2, 3) and pc.shape == (2, 3, 5)
  for g in range(2):
    for r in range(3):
      a = jax.tree.map(lambda v: v[g, r], grid)
      b = jax.tree.map(lambda v: v[r], refs)
      np.testing.assert_allclose(paired[g, r], np_barrier(a, b, data, 5), rtol=1e-4, atol=1e-6)


def test_barrier_input_errors():
  pa = make_params(jax.random.key(0))
  data = make_data(jax.random.key(1))
  with pytest.raises(ValueError, match="num_points"):
    ev.loss_barrier(loss_fn, pa, pa, data, num_points=1)
  with pytest.raises(ValueError, match="params_a and params_b"):
    ev.loss_barrier(loss_fn, pa, {"w": pa["w"]}, data)
  with pytest.raises(ValueError, match="equal shapes"):
    ev.loss_barrier(loss_fn, pa, {"w": pa["w"][:2], "b": pa["b"]}, data)
  with pytest.raises(ValueError, match="n = 0"):
    ev.loss_barrier(loss_fn, pa, pa, (data[0][:0], data[1][:0]))


# ----------------------------------------------------------------------------------------------------
# Logit-scaled confidence
# ----------------------------------------------------------------------------------------------------


def test_logit_confidence_matches_numpy_and_is_stable():
  seeds = jax.tree.map(lambda *v: jnp.stack(v), *[make_params(k) for k in jax.random.split(jax.random.key(9), 5)])
  x, y = make_data(jax.random.key(10), n=7)
  s = ev.logit_confidence(apply_fn, seeds, x, y)
  assert s.shape == (5, 7)
  for r in range(5):
    logits = np.asarray(x, np.float64) @ np.asarray(seeds["w"][r], np.float64) + np.asarray(seeds["b"][r], np.float64)
    p = np.exp(logits - logits.max(1, keepdims=True))
    p /= p.sum(1, keepdims=True)
    py = p[np.arange(7), np.asarray(y)]
    np.testing.assert_allclose(s[r], np.log(py / (1 - py)), rtol=1e-4, atol=1e-4)
  # Extreme logits: p_y rounds to 1 (resp. 0) in float32, the stable form stays exact and finite.
  extreme = ev.logit_confidence_from_logits(jnp.array([[200.0, 0.0, -1.0], [-300.0, 0.0, 0.0]]), jnp.array([0, 0]))
  np.testing.assert_allclose(extreme, [200.0 - np.logaddexp(0.0, -1.0), -300.0 - np.log(2.0)], rtol=1e-6)
  single = ev.logit_confidence(apply_fn, jax.tree.map(lambda v: v[0], seeds), x, y, seed_axis=False)
  np.testing.assert_allclose(single, s[0], rtol=1e-6)


def test_scores_along_layout():
  grid = jax.tree.map(
    lambda *v: jnp.stack(v).reshape((2, 3) + v[0].shape),
    *[make_params(k) for k in jax.random.split(jax.random.key(11), 6)],
  )
  x, y = make_data(jax.random.key(12), n=4)
  s = ev.scores_along(apply_fn, grid, x, y)
  assert s.shape == (2, 3, 4)
  np.testing.assert_allclose(s[1], ev.logit_confidence(apply_fn, jax.tree.map(lambda v: v[1], grid), x, y), rtol=1e-6)


# ----------------------------------------------------------------------------------------------------
# Gaussian symmetric KL, floor, criterion
# ----------------------------------------------------------------------------------------------------


def np_kl(m1, v1, m2, v2):
  return 0.5 * (np.log(v2 / v1) + (v1 + (m1 - m2) ** 2) / v2 - 1.0)


def test_gaussian_symmetric_kl_matches_closed_form():
  rng = np.random.default_rng(0)
  a = rng.normal(0.3, 1.5, size=(9, 6))
  b = rng.normal(-0.2, 0.7, size=(13, 6))
  with jax.enable_x64(True):
    got = ev.gaussian_symmetric_kl(jnp.asarray(a), jnp.asarray(b))
  m1, v1 = a.mean(0), a.var(0, ddof=1)
  m2, v2 = b.mean(0), b.var(0, ddof=1)
  np.testing.assert_allclose(got, np_kl(m1, v1, m2, v2) + np_kl(m2, v2, m1, v1), rtol=1e-10)
  # Symmetric in its arguments and zero on identical samples.
  np.testing.assert_allclose(ev.gaussian_symmetric_kl(b, a), ev.gaussian_symmetric_kl(a, b), rtol=1e-5)
  np.testing.assert_allclose(ev.gaussian_symmetric_kl(a, a), 0.0, atol=1e-6)


def test_gaussian_symmetric_kl_zero_variance_floor():
  const = jnp.zeros((4, 2))
  shifted = const.at[:, 1].set(0.1)
  d = ev.gaussian_symmetric_kl(const, shifted, min_variance=1e-4)
  # Equal constant samples: 0; different constants: delta^2 / floor = 0.01 / 1e-4 = 100.
  np.testing.assert_allclose(d, [0.0, 100.0], rtol=1e-5)
  assert np.all(np.isfinite(ev.gaussian_symmetric_kl(const, shifted)))
  with pytest.raises(ValueError, match="min_variance"):
    ev.gaussian_symmetric_kl(const, shifted, min_variance=0.0)
  with pytest.raises(ValueError, match="at least 2 seeds"):
    ev.gaussian_symmetric_kl(const[:1], shifted)
  with pytest.raises(ValueError, match="finite"):
    ev.gaussian_symmetric_kl(const.at[0, 0].set(jnp.nan), shifted)
  with pytest.raises(ValueError, match="same n"):
    ev.gaussian_symmetric_kl(const, jnp.zeros((4, 3)))


def test_noise_floor_splits_disjoint_halves():
  # Seeds 0..R-1 hold distinct constants per seed; a half-split's means reveal which seeds it used.
  num_seeds = 8
  oracle = jnp.tile(jnp.arange(num_seeds, dtype=jnp.float32)[:, None], (1, 3)) + jnp.array([0.0, 0.5, 1.0])
  floor = ev.noise_floor(oracle, jax.random.key(0), num_splits=4)
  assert floor.shape == (4, 3)
  # Recompute with the same permutations in NumPy float64.
  keys = jax.random.split(jax.random.key(0), 4)
  for s in range(4):
    perm = np.asarray(jax.random.permutation(keys[s], num_seeds))
    a, b = np.asarray(oracle, np.float64)[perm[:4]], np.asarray(oracle, np.float64)[perm[4:]]
    assert set(perm[:4]).isdisjoint(perm[4:])
    m1, v1, m2, v2 = a.mean(0), a.var(0, ddof=1), b.mean(0), b.var(0, ddof=1)
    np.testing.assert_allclose(floor[s], np_kl(m1, v1, m2, v2) + np_kl(m2, v2, m1, v1), rtol=1e-5)
  with pytest.raises(ValueError, match="at least 4 seeds"):
    ev.noise_floor(oracle[:3], jax.random.key(0))
  with pytest.raises(ValueError, match="num_splits"):
    ev.noise_floor(oracle, jax.random.key(0), num_splits=0)


@pytest.mark.parametrize("seed", range(3))
def test_same_distribution_is_below_floor(seed):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  n = 20  # shapes shared with the other criterion tests: one compilation
  loc = jnp.linspace(-3, 3, n)
  scale = jnp.linspace(0.5, 2.0, n)
  oracle = loc + scale * jax.random.normal(k1, (32, n))
  unlearned = loc + scale * jax.random.normal(k2, (32, n))
  out = ev.is_unlearned(unlearned, oracle, key=k3, num_splits=4)
  assert bool(out.unlearned)
  assert float(out.median_distance) <= float(out.threshold)
  # ~0: a sample of 32 vs 32 from one law has an expected Jeffreys distance of O(1/R).
  assert float(out.median_distance) < 0.2


def test_criterion_flips_along_sequence_moving_onto_oracle():
  k1, k2, k3 = jax.random.split(jax.random.key(42), 3)
  n, num_seeds = 20, 32
  oracle = jax.random.normal(k1, (num_seeds, n))
  offsets = jnp.array([4.0, 2.0, 1.0, 0.5, 0.1, 0.0])
  noise = jax.random.normal(k2, (num_seeds, n))
  scores = offsets[:, None, None] + noise[None]
  grid = jnp.array([0, 50, 100, 150, 200, 250])
  out = ev.empirical_steps_to_unlearn(grid, scores, oracle, key=k3, num_splits=4)
  passed = np.asarray(out.passed)
  # Distances ~ offset^2 (unit variances): far above any floor for offsets >= 1, ~floor-level at 0.
  assert passed.tolist()[:3] == [False, False, False]
  assert passed[-1]
  first = int(np.argmax(passed))
  assert np.all(passed[first:])  # monotone: once the mean is on the oracle's it stays unlearned
  assert float(out.steps) == float(grid[first]) and int(out.index) == first
  assert float(out.grid_end) == 250.0
  # Medians decrease along the sequence and track offset^2 for the far steps.
  med = np.asarray(out.median_distances)
  assert np.all(np.diff(med[:5]) < 0)
  np.testing.assert_allclose(med[:2], np.asarray(offsets[:2]) ** 2, rtol=0.35)
  # is_unlearned on the endpoints agrees with the sequence and with a precomputed floor.
  floor = ev.noise_floor(oracle, k3, num_splits=4)
  assert not bool(ev.is_unlearned(scores[0], oracle, floor=floor).unlearned)
  assert bool(ev.is_unlearned(scores[-1], oracle, floor=floor).unlearned)
  assert float(ev.is_unlearned(scores[-1], oracle, floor=floor).threshold) == pytest.approx(
    float(np.percentile(np.asarray(floor), 95)), rel=1e-5
  )


def test_steps_to_unlearn_inf_when_never_passing_and_errors():
  k1, k2, k3 = jax.random.split(jax.random.key(3), 3)
  oracle = jax.random.normal(k1, (32, 20))
  scores = 5.0 + jax.random.normal(k2, (6, 32, 20))
  grid = jnp.arange(10, 70, 10)
  out = ev.empirical_steps_to_unlearn(grid, scores, oracle, key=k3, num_splits=4)
  assert float(out.steps) == np.inf and int(out.index) == -1 and float(out.grid_end) == 60.0
  assert not np.any(np.asarray(out.passed))
  with pytest.raises(ValueError, match="step_grid"):
    ev.empirical_steps_to_unlearn(grid[:2], scores, oracle, key=k3)
  with pytest.raises(ValueError, match="increasing"):
    ev.empirical_steps_to_unlearn(grid[::-1], scores, oracle, key=k3)
  with pytest.raises(ValueError, match="key"):
    ev.empirical_steps_to_unlearn(grid, scores, oracle)
  with pytest.raises(ValueError, match="percentile"):
    ev.is_unlearned(scores[0], oracle, key=k3, percentile=101)


# ----------------------------------------------------------------------------------------------------
# Membership epsilon
# ----------------------------------------------------------------------------------------------------


def analytic_epsilon(mu, delta):
  """ε of the optimal (threshold, both directions) test between N(mu, 1) and N(0, 1) at δ.

  For equal-variance Gaussians the likelihood ratio is monotone in s, so by Neyman–Pearson the threshold
  tests are optimal; sup over a fine grid of thresholds of the two (ε, δ) inequalities.
  Returns (ε, FNR at the maximising threshold).
  """
  t = np.linspace(-12.0, 12.0 + mu, 120001)
  best, best_rate = -np.inf, None
  for fpr, fnr in ((stats.norm.sf(t), stats.norm.cdf(t - mu)), (stats.norm.cdf(t), stats.norm.sf(t - mu))):
    for num_rate, den_rate in ((fpr, fnr), (fnr, fpr)):
      ok = (1 - delta - num_rate > 0) & (den_rate > 0)
      vals = np.full(t.shape, -np.inf)
      vals[ok] = np.log(1 - delta - num_rate[ok]) - np.log(den_rate[ok])
      i = int(np.argmax(vals))
      if vals[i] > best:
        best, best_rate = vals[i], den_rate[i]
  return best, best_rate


def np_membership_epsilon(u, r, delta):
  """Brute-force NumPy loop over thresholds (both directions), zero-denominator terms dropped."""
  out = []
  n = u.shape[0]
  for j in range(u.shape[1]):
    best = 0.0
    for t in np.concatenate([u[:, j], r[:, j], [-np.inf, np.inf]]):
      for fp, fn in ((np.sum(r[:, j] >= t), np.sum(u[:, j] < t)), (np.sum(r[:, j] <= t), np.sum(u[:, j] > t))):
        fpr, fnr = fp / n, fn / n
        if fnr > 0 and 1 - delta - fpr > 0:
          best = max(best, np.log((1 - delta - fpr) / fnr))
        if fpr > 0 and 1 - delta - fnr > 0:
          best = max(best, np.log((1 - delta - fnr) / fpr))
    out.append(best)
  return np.array(out)


def test_membership_epsilon_matches_bruteforce_with_ties():
  rng = np.random.default_rng(1)
  u = rng.integers(0, 6, size=(15, 8)).astype(np.float64) + 1.0
  r = rng.integers(0, 6, size=(15, 8)).astype(np.float64)
  with jax.enable_x64(True):
    got = ev.membership_epsilon(jnp.asarray(u), jnp.asarray(r), delta=0.01)
  np.testing.assert_allclose(got, np_membership_epsilon(u, r, 0.01), rtol=1e-12)


def test_clopper_pearson_ends_match_scipy_binomtest():
  n = 40
  upper = ev_membership._clopper_pearson_upper(n, 0.9)
  for k in (0, 1, 7, 39, 40):
    ci = stats.binomtest(k, n).proportion_ci(confidence_level=0.9, method="exact")
    assert upper[k] == pytest.approx(ci.high, rel=1e-9)


def test_membership_epsilon_approaches_analytic_value():
  mu, delta, m = 1.0, 0.1, 32
  eps_star, fnr_star = analytic_epsilon(mu, delta)
  assert eps_star == pytest.approx(1.1603, abs=1e-3)
  errors = []
  for num_models in (250, 1000, 4000):
    k1, k2 = jax.random.split(jax.random.key(num_models))
    u = mu + jax.random.normal(k1, (num_models, m))
    r = jax.random.normal(k2, (num_models, m))
    est = np.asarray(ev.membership_epsilon(u, r, delta=delta))
    errors.append(abs(est.mean() - eps_star))
    # Tolerance from the sample size: the delta-method sd of log(FNR_hat) at the optimal threshold,
    # sqrt((1-f)/(f N)); the max over thresholds biases the plug-in upwards by the same order.
    sd = np.sqrt((1 - fnr_star) / (fnr_star * num_models))
    if num_models >= 1000:
      assert abs(est.mean() - eps_star) < 2 * sd + 3 * est.std() / np.sqrt(m)
  assert errors[0] > errors[1] > errors[2]
  # Clopper–Pearson lower bounds sit below the truth (up to the uncorrected max over thresholds) and
  # below the point estimate; the simultaneous (Bonferroni) version always below the truth here.
  lower = np.asarray(ev.membership_epsilon(u, r, delta=delta, confidence=0.95))
  assert np.mean(lower <= eps_star) >= 0.9
  assert np.all(lower <= est + 1e-6)
  assert lower.mean() > 0.75 * eps_star  # and not vacuous at N = 4000


def test_membership_epsilon_identical_distributions_is_zero_within_cp():
  m, num_models = 32, 1000  # shapes shared with the other membership tests
  k1, k2 = jax.random.split(jax.random.key(7))
  a = jax.random.normal(k1, (num_models, m))
  b = jax.random.normal(k2, (num_models, m))
  lower = np.asarray(ev.membership_epsilon(a, b, delta=0.05, confidence=0.95))
  est = np.asarray(ev.membership_epsilon(a, b, delta=0.05))
  assert np.all(np.isfinite(est)) and np.all(est >= 0)
  # The CP lower bound is 0 for (almost) all examples: ε = 0 is inside the confidence statement.
  assert np.mean(lower == 0.0) >= 0.9
  assert lower.mean() < 0.05
  # The point estimate is sampling noise only: its size is set by the rate noise ~ 1/sqrt(N).
  assert est.mean() < 0.1


def test_membership_epsilon_zero_rates_and_errors():
  u = jnp.arange(1.0, 11.0)[:, None]
  r = -u
  est = ev.membership_epsilon(u, r, delta=0.0)
  # Perfect separation: FNR = 0 terms are dropped, the estimate is capped at log(N).
  assert float(est[0]) == pytest.approx(np.log(10.0), rel=1e-6)
  lower = ev.membership_epsilon(u, r, delta=0.0, confidence=0.95)
  # With CP the best threshold has FP = FN = 0: log((1 - U(0)) / U(0)), U(0) = 1 - 0.025^(1/10).
  u0 = 1 - 0.025 ** (1 / 10)
  assert float(lower[0]) == pytest.approx(np.log((1 - u0) / u0), rel=1e-5)
  with pytest.raises(ValueError, match="delta"):
    ev.membership_epsilon(u, r, delta=1.0)
  with pytest.raises(ValueError, match="confidence"):
    ev.membership_epsilon(u, r, delta=0.1, confidence=1.0)
  with pytest.raises(ValueError, match="shape"):
    ev.membership_epsilon(u, r[:5], delta=0.1)
  with pytest.raises(ValueError, match="finite"):
    ev.membership_epsilon(u.at[0, 0].set(jnp.inf), r, delta=0.1)


# ----------------------------------------------------------------------------------------------------
# Accuracy and loss
# ----------------------------------------------------------------------------------------------------


def test_accuracy_and_loss_and_split_report():
  params = make_params(jax.random.key(20), scale=2.0)
  x, y = make_data(jax.random.key(21), n=30)
  acc, loss = ev.accuracy_and_loss(apply_fn, params, x, y)
  logits = np.asarray(x, np.float64) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)
  assert float(acc) == pytest.approx(np.mean(logits.argmax(1) == np.asarray(y)))
  assert float(loss) == pytest.approx(np_set_loss(params, (x, y)), rel=1e-5)
  seeds = jax.tree.map(lambda *v: jnp.stack(v), params, make_params(jax.random.key(22)))
  accs, losses = ev.accuracy_and_loss(apply_fn, seeds, x, y, seed_axis=True)
  assert accs.shape == (2,) and float(accs[0]) == pytest.approx(float(acc))
  report = ev.split_report(
    apply_fn, params, {"forget": (x[:5], y[:5]), "retain": (x[5:], y[5:]), "test": (x[:0], y[:0])}
  )
  assert list(report) == ["forget", "retain"]
  assert float(report["forget"].loss) == pytest.approx(np_set_loss(params, (x[:5], y[:5])), rel=1e-5)
  with pytest.raises(ValueError, match="splits"):
    ev.split_report(apply_fn, params, {})


def test_membership_epsilon_never_exceeds_certified_bound_in_testbed():
  """THEORY §6: a certified upper bound (§4 converted to (ε, δ)) is never below the membership ε.

  Exact linear-Gaussian testbed (ridge, full-batch Langevin): for forget example i, the laws of the
  unlearned model ρ_k and the oracle π_T(D') are Gaussians; N samples of each are pushed through the
  score s(θ) = a_iᵀθ (a post-processing, so it cannot raise ε). The certificate is the per-instance bound
  on D_α(ρ_k‖π_T(D')) with the exact constants (P, E₁, E₂, C_LSI), converted to (ε, δ) and minimised
  over α. The certificate speaks about the direction ρ_k vs π_T(D') only, so the one-sided membership
  ε is compared, with Clopper–Pearson bounds Bonferroni-corrected over thresholds (``simultaneous``):
  a lower bound on ε that holds for all thresholds at once with probability >= 95%.
  """
  testbed = pytest.importorskip("unlearn_jax.testbed")
  bounds = pytest.importorskip("unlearn_jax.bounds")
  accounting = pytest.importorskip("unlearn_jax.accounting")
  problem = testbed.make_outlier_problem(n=10, d=2, seed=0)
  eta, tau, T, delta, num_models = 0.05, 0.05, 400, 1e-2, 1000
  alphas = (1.5, 2.0, 4.0)
  mu0, S0 = np.zeros(2), np.eye(2)
  rng = np.random.default_rng(0)
  cert, exact_eps, u_cols, r_cols = [], [], [], []
  for i in range(4):
    for k in (0, 10, 20, 50, 100, 200, 400, 800):  # 32 columns, N = 1000: shapes shared
      laws = testbed.unlearned_laws(problem, i, T, k, eta, tau, mu0, S0)
      (mu_u, S_u), (mu_r, S_r) = laws["unlearned"], laws["oracle"]
      a = problem.X[i]
      u_cols.append(rng.normal(a @ mu_u, np.sqrt(a @ S_u @ a), size=num_models))
      r_cols.append(rng.normal(a @ mu_r, np.sqrt(a @ S_r @ a), size=num_models))
      rdp_cert, rdp_exact = [], []
      for alpha in alphas:
        q = testbed.per_instance_exact(problem, i, alpha, T, k, eta, tau, mu0, S0)
        with jax.enable_x64(True):
          rdp_cert.append(
            float(
              bounds.unlearning_bound(
                q["P"], k, alpha=alpha, step_size=eta, temperature=tau, lsi_constant=q["C_LSI"], e1=q["E1"], e2=q["E2"]
              )
            )
          )
        rdp_exact.append(q["exact"])
      with jax.enable_x64(True):
        cert.append(float(accounting.rdp_to_dp(jnp.array(rdp_cert), list(alphas), delta)[0]))
        exact_eps.append(float(accounting.rdp_to_dp(jnp.array(rdp_exact), list(alphas), delta)[0]))
  u, r = np.stack(u_cols, axis=1), np.stack(r_cols, axis=1)
  lower = np.asarray(ev.membership_epsilon(u, r, delta=delta, confidence=0.95, one_sided=True, simultaneous=True))
  cert, exact_eps = np.array(cert), np.array(exact_eps)
  assert np.all(exact_eps <= cert + 1e-9)  # sanity of the certificate itself
  assert np.all(lower <= exact_eps), (lower, exact_eps)
  assert np.all(lower <= cert)
  # The test is not vacuous: before unlearning (k = 0) the outlier (i = 0) is clearly detected.
  assert lower[0] > 3.0


@pytest.mark.slow
def test_fits_the_models_contract():
  """The library's flax MLP and cross-entropy loss plug in as apply_fn / loss_fn."""
  models = pytest.importorskip("unlearn_jax.models")
  model = models.mlp((8,), num_classes=3)
  x, y = make_data(jax.random.key(30), n=10)
  x = x[:, :NUM_FEATURES]
  seeds = jax.vmap(lambda k: model.init_fn(k, x[0]))(jax.random.split(jax.random.key(31), 2))
  loss = models.cross_entropy_loss_fn(model.apply_fn)
  pa, pb = jax.tree.map(lambda v: v[0], seeds), jax.tree.map(lambda v: v[1], seeds)
  barrier, (_, curve) = ev.loss_barrier(loss, pa, pb, (x, y), num_points=5)
  assert float(barrier) >= 0.0
  logits_a = jax.vmap(model.apply_fn, in_axes=(None, 0))(pa, x)
  ce_a = -np.mean(np.asarray(jax.nn.log_softmax(logits_a))[np.arange(10), np.asarray(y)])
  assert float(curve[0]) == pytest.approx(ce_a, rel=1e-5)
  acc, mean_loss = ev.accuracy_and_loss(model.apply_fn, seeds, x, y, seed_axis=True)
  assert float(mean_loss[0]) == pytest.approx(ce_a, rel=1e-5)
  s = np.asarray(ev.logit_confidence(model.apply_fn, seeds, x, y))
  p = np.asarray(jax.nn.softmax(logits_a))[np.arange(10), np.asarray(y)]
  np.testing.assert_allclose(s[0], np.log(p / (1 - p)), rtol=1e-4, atol=1e-5)


def test_unlearned_only_when_the_rest_of_the_grid_stays_under_the_threshold():
  # a pass at step 100 followed by a climb back over the threshold (as L1-sparse fine-tuning did:
  # distance 0.78 -> 24.2) is no verdict; the set is unlearned from the step after which all pass
  k1, k2 = jax.random.split(jax.random.key(0))
  oracle = jax.random.normal(k1, (32, 20))
  noise = jax.random.normal(k2, (32, 20))
  grid = jnp.array([0, 100, 200, 300])
  shifts = (4.0, 0.0, 4.0, 0.0)
  out = ev.empirical_steps_to_unlearn(grid, jnp.stack([noise + m for m in shifts]), oracle, key=k1)
  assert out.passed.tolist() == [False, True, False, True]
  assert float(out.steps) == 300.0 and int(out.index) == 3
  late = jnp.stack([noise + m for m in (0.0, 0.0, 0.0, 4.0)])
  never = ev.empirical_steps_to_unlearn(grid, late, oracle, key=k1)
  assert np.isposinf(float(never.steps)) and int(never.index) == -1


def _np_test_rejects(rng, num_seeds, m, shift, num_splits=8, percentile=95.0):
  """The "unlearned" test re-derived in float64 NumPy: Gaussian fits (ddof 1), symmetric KL, the floor
  from random half-splits of the oracles, reject when the median distance exceeds its percentile."""

  def sym_kl(a, b):
    ma, va = a.mean(0), np.maximum(a.var(0, ddof=1), 1e-6)
    mb, vb = b.mean(0), np.maximum(b.var(0, ddof=1), 1e-6)
    sq = (ma - mb) ** 2
    return 0.5 * ((va + sq) / vb + (vb + sq) / va) - 1.0

  oracle = rng.standard_normal((num_seeds, m))
  unlearned = rng.standard_normal((num_seeds, m)) + shift
  half = num_seeds // 2
  floor = []
  for _ in range(num_splits):
    perm = rng.permutation(num_seeds)
    floor.append(sym_kl(oracle[perm[:half]], oracle[perm[half : 2 * half]]))
  return np.median(sym_kl(unlearned, oracle)) > np.percentile(np.concatenate(floor), percentile)


@pytest.mark.slow
@pytest.mark.parametrize("num_seeds,shift", [(16, 1.5), (12, 2.0), (10, 2.5), (32, 0.0)])  # powers 0.6, 0.72, 0.8, 0
def test_unlearned_test_power_matches_a_numpy_simulation(num_seeds, shift):
  ours = ev.unlearned_test_power(num_seeds, 20, shift=shift, trials=400)
  rng = np.random.default_rng(0)
  ref = np.mean([_np_test_rejects(rng, num_seeds, 20, shift) for _ in range(400)])
  se = np.sqrt(max(ref * (1 - ref), 0.01) / 400) * np.sqrt(2)  # two independent 400-trial estimates
  assert abs(ours.power - ref) <= 3.5 * se + 1e-9, (ours.power, ref)


def test_unlearned_test_power_is_zero_at_four_seeds_and_high_at_thirty_two():
  # R = 4: the halves of the floor hold 2 seeds, whose KL estimates are so noisy that nothing exceeds them
  assert ev.unlearned_test_power(4, 20).power == 0.0
  strong = ev.unlearned_test_power(32, 20)
  assert strong.power > 0.95 and strong.size < 0.05
  with pytest.raises(ValueError, match="num_seeds"):
    ev.unlearned_test_power(3, 20)


@pytest.mark.slow
def test_spearman_bootstrap_interval_matches_scipy():

  rng = np.random.default_rng(1)
  x = rng.normal(size=300)
  y = 0.4 * x + rng.normal(size=300)
  ours = ev.statistics.spearman_bootstrap(x, y, num_resamples=2000)
  ref = sstats.bootstrap(
    (x, y),
    lambda a, b: sstats.spearmanr(a, b)[0],
    paired=True,
    vectorized=False,
    n_resamples=2000,
    method="percentile",
    random_state=0,
  ).confidence_interval
  assert ours["spearman"] == pytest.approx(sstats.spearmanr(x, y)[0], rel=1e-5)
  assert ours["low"] == pytest.approx(ref.low, abs=0.02) and ours["high"] == pytest.approx(ref.high, abs=0.02)
  assert not ours["includes_zero"]
  # coverage under no effect: of 100 independent null data sets, about 95% of the intervals hold 0
  # (binomial sd 2.2 points; the percentile bootstrap undercovers a little at n = 100)
  covered = [
    ev.statistics.spearman_bootstrap(rng.normal(size=100), rng.normal(size=100), key=jax.random.key(i))["includes_zero"]
    for i in range(100)
  ]
  assert 0.87 <= np.mean(covered) <= 1.0, np.mean(covered)


@pytest.mark.parametrize("seed_axis", [False, True])
def test_eager_scores_over_many_chunks_run_one_chunk_at_a_time(x64, monkeypatch, seed_axis):
  """Eager scores, accuracy and loss over more rows than a chunk: each compiled call sees one chunk (the
  memory of one chunk at any n; on CPU convolutions stay outside loops), values as over all rows at once."""
  rng = np.random.default_rng(5)
  x, y = jnp.asarray(rng.normal(size=(11, 3))), jnp.asarray(rng.integers(0, 2, 11))
  w = jnp.asarray(rng.normal(size=(2, 3)) if seed_axis else rng.normal(size=3))
  apply_fn = lambda v, xx: jnp.stack([v @ xx, -(v @ xx)])  # a new function: traced here, not cached
  want_s = ev.logit_confidence(apply_fn, w, x, y, seed_axis=seed_axis)
  want_acc, want_loss = ev.accuracy_and_loss(apply_fn, w, x, y, seed_axis=seed_axis)
  seen = []
  batched = scores_mod._batched_logits

  def recording(fn, p, xx):
    seen.append(xx.shape[0])
    return batched(fn, p, xx)

  monkeypatch.setattr(scores_mod, "_batched_logits", recording)
  monkeypatch.setattr(scores_mod.chunking, "ROWS_PER_PASS", 4)
  s = ev.logit_confidence(apply_fn, w, x, y, seed_axis=seed_axis)
  acc, loss = ev.accuracy_and_loss(apply_fn, w, x, y, seed_axis=seed_axis)
  assert seen and set(seen) == {4}
  assert s.shape == want_s.shape == ((2, 11) if seed_axis else (11,))
  np.testing.assert_allclose(s, want_s, rtol=1e-12)
  np.testing.assert_allclose(acc, want_acc, rtol=1e-12)
  np.testing.assert_allclose(loss, want_loss, rtol=1e-12)
  # direct check of the means: the repeated rows of the last chunk are dropped
  logits = np.einsum("...d,nd->...n", np.asarray(w), np.asarray(x))
  nll = np.logaddexp(logits, -logits) - np.where(np.asarray(y) == 0, logits, -logits)
  np.testing.assert_allclose(loss, nll.mean(axis=-1), rtol=1e-12)


def test_eager_batched_apply_is_compiled_per_chunk(x64, monkeypatch):
  """``chunking.batched_apply`` (behind predict_fn and evaluate's per-example metrics) called eagerly: one
  compiled program on chunk_size rows, called per chunk; the same logits as one vmap over all rows."""
  rng = np.random.default_rng(6)
  x, w = jnp.asarray(rng.normal(size=(10, 3))), jnp.asarray(rng.normal(size=(3, 2)))
  apply_fn = lambda v, xx: jnp.tanh(xx @ v)  # a new function: traced here, not cached
  seen = []
  rows_core = scores_mod.chunking._apply_rows

  def recording(fn, p, xx):
    seen.append(xx.shape[0])
    return rows_core(fn, p, xx)

  monkeypatch.setattr(scores_mod.chunking, "_apply_rows", recording)
  got = scores_mod.chunking.batched_apply(apply_fn, w, x, chunk_size=4)
  assert seen == [4]  # one trace, three calls
  np.testing.assert_allclose(got, np.tanh(np.asarray(x) @ np.asarray(w)), rtol=1e-12)
  seen.clear()
  jitted = jax.jit(lambda v, xx: scores_mod.chunking.batched_apply(apply_fn, v, xx, chunk_size=4))(w, x)
  assert seen and set(seen) == {4}
  np.testing.assert_allclose(jitted, got, rtol=1e-12)
