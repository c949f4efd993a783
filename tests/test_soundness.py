"""The soundness fixes of THEORY's 2026-12-01 corrections (§2, §3, §6), one test per item.

1. the group bound carries the factor ((n−1)/(n−k))² (exact one-step testbed);
2. the certified full-batch filter uses a fixed denominator and does not cascade;
3. without the filter the realized P is an estimate (short testbed runs where it is below the exact);
4. the reported membership ε lower bound is ≈ 0 on identical laws (the point estimate is not);
5. float32 §2a costs stay within 1e-3 where g_i ≈ ḡ;
6. the ledger's costs are monotone in the order.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import accounting as acc
from unlearn_jax import algorithms as sg
from unlearn_jax import evaluate as evaluation
from unlearn_jax.certify import testbed as tb

ETA, TAU = 0.1, 0.01


def _one_step_laws(problem, forget, theta0):
  """Exact laws after ONE noisy full-batch step from the point mass θ0, on D and on D ∖ F."""
  keep = np.setdiff1d(np.arange(problem.num_examples), forget)
  retain = tb.RidgeProblem.from_data(problem.X[keep], problem.y[keep], problem.lam)
  zero = np.zeros((theta0.size, theta0.size))
  return (
    tb.gaussian_law_after(problem, theta0, zero, 1, ETA, TAU),
    tb.gaussian_law_after(retain, theta0, zero, 1, ETA, TAU),
  )


def _per_example_costs(problem, theta0, orders):
  """The library's §2a costs of one step at θ0 (the ledger after that step), float64."""
  data = (jnp.asarray(problem.X), jnp.asarray(problem.y))
  costs, _, _ = acc.step_costs(tb.ridge_loss, jnp.asarray(theta0), data, step_size=ETA, temperature=TAU, orders=orders)
  return np.asarray(costs)


def _duplicated_outliers(n, k, d=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d))
  y = rng.normal(size=n)
  x[:k] = 4.0 * x[0]
  y[:k] = -8.0
  return tb.RidgeProblem.from_data(x, y, 0.1)


@pytest.mark.parametrize("n, k", [(10, 2), (40, 4), (100, 10), (10, 5)])
def test_group_bound_factor_on_duplicated_outliers(x64, n, k):
  """Item 1: for k equal outliers Cauchy–Schwarz is tight, so the exact one-step group divergence
  equals the corrected bound k((n−1)/(n−k))² Σ P(x) and exceeds the old k Σ P(x) by ((n−1)/(n−k))²."""
  problem = _duplicated_outliers(n, k)
  theta0 = np.full(3, 0.3)
  forget = np.arange(k)
  (mu, s), (mu_r, s_r) = _one_step_laws(problem, forget, theta0)
  exact = float(tb.gaussian_renyi(2.0, mu, s, mu_r, s_r))
  p = _per_example_costs(problem, theta0, (2.0,))[:, 0]
  old = k * p[forget].sum()
  new = float(acc.group_privacy_loss(jnp.asarray(p[:, None]), jnp.asarray(forget))[0])
  assert exact > old * (1 + 1e-6)
  np.testing.assert_allclose(exact / old, ((n - 1) / (n - k)) ** 2, rtol=1e-9)
  np.testing.assert_allclose(new, exact, rtol=1e-9)


def _numpy_costs(problem, theta0, orders):
  """§2a costs of one step at θ0 re-derived in NumPy: αη‖g_i − ḡ‖²/(4τ(n−1)²), g_i = a_i(a_iᵀθ − y_i)."""
  g = problem.X * (problem.X @ theta0 - problem.y)[:, None]
  sq = ((g - g.mean(0)) ** 2).sum(1)
  n = problem.num_examples
  return np.asarray(orders)[None, :] * ETA * sq[:, None] / (4 * TAU * (n - 1) ** 2)


@pytest.mark.slow
def test_group_bound_never_below_exact_on_random_groups(x64):
  """Item 1 on random problems, points θ0 and groups: the corrected bound ≥ the exact divergence."""
  rng = np.random.default_rng(1)
  checked = 0
  for trial in range(40):
    n = int(rng.integers(4, 30))
    k = int(rng.integers(1, n))
    problem = tb.make_outlier_problem(n=n, d=int(rng.integers(1, 4)), num_outliers=int(rng.integers(0, 3)), seed=trial)
    theta0 = rng.normal(size=problem.X.shape[1])
    forget = np.sort(rng.choice(n, size=k, replace=False))
    (mu, s), (mu_r, s_r) = _one_step_laws(problem, forget, theta0)
    orders = (2.0, 8.0)
    p = _numpy_costs(problem, theta0, orders)
    bound = np.asarray(acc.group_privacy_loss(jnp.asarray(p), jnp.asarray(forget)))
    for j, a in enumerate(orders):
      exact = float(tb.gaussian_renyi(a, mu, s, mu_r, s_r))
      assert exact <= bound[j] * (1 + 1e-9) + 1e-12, (trial, n, k, a, exact, bound[j])
      checked += 1
  assert checked == 80


def _logistic_data(n=24, d=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)) * np.array([1.0, 2.0, 0.5])
  x[:3] *= 6.0  # outliers: they hit the budget first
  y = (rng.uniform(size=n) < 0.5).astype(np.float64)
  return jnp.asarray(x), jnp.asarray(y)


def _logistic_loss(w, ex):
  x, y = ex
  z = x @ w
  return jnp.logaddexp(0.0, z) - y * z


def test_full_batch_filter_does_not_cascade(x64):
  """Item 2: a removal changes nobody else's cost, so the examples under budget keep training and the
  filtered P stays ≤ B (the mean-over-active filter removed every example within a few steps)."""
  data = _logistic_data()
  n, steps = 24, 40
  free = sg.sgld(_logistic_loss, clip_norm=1.0, accounting=acc.accountant((2.0, 4.0)), denominator=float(n))
  state = free.init(jnp.zeros(3), n)
  step = jax.jit(free.step)
  for t in range(steps):
    state, _ = step(state, data, jax.random.key(t), 0.5, TAU)
  unfiltered = np.asarray(state.ledger.realized[:, 1])
  budget = float(np.quantile(unfiltered, 0.6))  # 40% of the examples would pass it by the end
  alg = sg.sgld(
    _logistic_loss, clip_norm=1.0, accounting=acc.accountant((2.0, 4.0), filter_budget=budget, filter_order=4.0)
  )
  state = alg.init(jnp.zeros(3), n)
  step = jax.jit(alg.step)
  counts, moved = [], []
  for t in range(steps):
    old = state.params
    state, info = step(state, data, jax.random.key(t), 0.5, TAU)
    counts.append(int(np.sum(np.asarray(state.ledger.active))))
    moved.append(float(jnp.linalg.norm(state.params - old)))
  led = state.ledger
  assert bool(led.certified)
  assert np.all(np.asarray(led.realized[:, 1]) <= budget * (1 + 1e-12))
  assert counts[-1] >= int(0.3 * n), counts  # no cascade to an empty active set
  assert counts[-1] < n  # the filter did act
  # At a fixed denominator each example's cost is its own: the first removals are the examples whose
  # unfiltered P crosses the budget first, and nobody under budget is dropped with them.
  removed = ~np.asarray(led.active)
  assert np.all(unfiltered[removed] > budget * 0.5)
  assert min(moved) > 0  # ĝ never collapses to 0: the remaining examples still train


@pytest.mark.slow
def test_realized_is_an_estimate_on_short_runs(x64):
  """Item 3: from a broad initial law, after 20 steps the exact divergence at α = 4 exceeds the
  seed-averaged realized P for some examples (+inf for one, finite for others): an estimate."""
  p = tb.make_outlier_problem(n=10, d=2, seed=0)
  r = tb.realized_vs_exact(
    p, orders=(2.0, 4.0), T=20, step_size=0.05, temperature=0.01, num_seeds=64, S0=3.0 * np.eye(2)
  )
  assert r["kind"] == "estimate"
  below = (r["realized_mean"][:, 1] < r["exact"][:, 1]) & np.isfinite(r["exact"][:, 1])
  assert below.any(), r["ratio"][:, 1]
  assert r["ratio_min"][1] < 0.7  # far below 1, not seed noise (64 seeds)
  assert r["fraction_realized_ge_exact"][1] < 1.0
  # On the long run of docs/testbed.md it is far above the exact value, and ranks like it.
  long = tb.realized_vs_exact(p, orders=(2.0,), T=600, step_size=0.05, temperature=0.01, num_seeds=8)
  assert long["ratio_min"][0] > 1.0 and long["spearman"][0] > 0.9


@pytest.mark.parametrize("num_models", [16, 32, 64])
def test_membership_lower_bound_zero_on_identical_laws(num_models):
  """Item 4: for two identical laws the reported lower bound is 0 (the point estimate is ≈ log 4 at
  N = 16–32 and ≈ 1.4 at N = 64); on well-separated laws it reaches the resolvable cap."""
  a, b = jax.random.normal(jax.random.key(num_models), (2, num_models, 400))
  lower = np.asarray(evaluation.membership_lower_bound(a, b, delta=1e-5))
  point = np.asarray(evaluation.membership_epsilon(a, b, delta=1e-5))
  # The simultaneous bound fails with probability ≤ 5% per example: at most a few of 400 are > 0.
  assert np.mean(lower > 0) <= 0.05 and np.median(lower) == 0.0
  assert np.median(point) > 1.0
  cap = evaluation.membership_resolvable_cap(num_models, delta=1e-5)
  far = np.asarray(evaluation.membership_lower_bound(a + 100.0, b, delta=1e-5))
  np.testing.assert_allclose(far, cap, rtol=1e-6)
  assert cap > 0


def _linear_loss(w, ex):
  x, y = ex
  return y * (x @ w)


def _sq_loss(w, ex):
  x, y = ex
  return 0.5 * (x @ w - y) ** 2


@pytest.mark.parametrize("loss_fn", [_linear_loss, _sq_loss])
@pytest.mark.parametrize("rel", [1e-3, 1e-4])
def test_float32_costs_precise_where_gradients_are_close(loss_fn, rel):
  """Item 5: in float32, with ‖g_i − ḡ‖ ≈ rel·‖g_i‖, the §2a costs are within 1e-3 of the costs of the
  run's own gradients computed in float64 (the three-term form gave 0.47–1.40× at 1e-3 and zeros at
  1e-4); the step reports that it recomputed them."""
  with jax.enable_x64(False):
    rng = np.random.default_rng(int(rel * 1e5))
    n, d = 50, 64
    base = rng.normal(size=d)
    x = (base[None, :] + rel * np.linalg.norm(base) / np.sqrt(d) * rng.normal(size=(n, d))).astype(np.float32)
    y = np.ones(n, np.float32)
    w = (0.1 * rng.normal(size=d)).astype(np.float32)
    data = (jnp.asarray(x), jnp.asarray(y))
    g = np.asarray(jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(jnp.asarray(w), data), np.float64)
    dist = np.linalg.norm(g - g.mean(0), axis=1) / np.linalg.norm(g, axis=1)
    assert 0.3 * rel < np.median(dist) < 30 * rel
    ref = 2.0 * ETA * ((g - g.mean(0)) ** 2).sum(1) / (4 * TAU * (n - 1) ** 2)
    costs, _, _ = jax.jit(lambda p: acc.step_costs(loss_fn, p, data, step_size=ETA, temperature=TAU, orders=[2.0]))(
      jnp.asarray(w)
    )
    assert costs.dtype == jnp.float32
    np.testing.assert_allclose(np.asarray(costs)[:, 0], ref, rtol=1e-3)
    alg = sg.sgld(loss_fn, accounting=acc.accountant([2.0]))
    state, info = jax.jit(alg.step)(alg.init(jnp.asarray(w), n), data, jax.random.key(0), ETA, TAU)
    np.testing.assert_allclose(np.asarray(state.ledger.realized)[:, 0], ref, rtol=1e-3)
    assert bool(info.recomputed_costs)


def test_float32_fast_path_kept_on_ordinary_data():
  """Item 5's recomputation is the exception: on ordinary data the fast form is precise enough."""
  with jax.enable_x64(False):
    x, y = _logistic_data(n=64)
    data = (x.astype(jnp.float32), y.astype(jnp.float32))
    alg = sg.sgld(_logistic_loss, clip_norm=1.0, accounting=acc.accountant([2.0]))
    state = alg.init(jnp.zeros(3), 64)
    _, info = jax.jit(alg.step)(state, data, jax.random.key(0), ETA, TAU)
    assert not bool(info.recomputed_costs)


@pytest.mark.slow
def test_costs_monotone_in_the_order(x64):
  """Item 6: the |binomial| series is not monotone in α on the default grid; the ledger's costs are."""
  orders = np.asarray(acc.DEFAULT_ORDERS)
  norms = jnp.array([0.2, 1.0, 3.0])
  z = 0.2 * 20 * np.sqrt(2 * TAU / 0.05) / np.asarray(norms)
  raw = np.asarray(jax.jit(lambda zz: acc.sampled_gaussian_rdp(0.2, zz, acc.DEFAULT_ORDERS))(z))
  costs = np.asarray(
    jax.jit(
      lambda nn: acc.poisson_costs(nn, 0.2, 0.2 * 20, orders=acc.DEFAULT_ORDERS, step_size=0.05, temperature=TAU)
    )(norms)
  )
  assert np.any(np.diff(raw, axis=1) < 0)  # the series violates monotonicity ...
  assert np.all(np.diff(costs, axis=1) >= 0)  # ... the charged costs do not
  assert np.all(costs <= raw)
  integer = orders == np.round(orders)
  np.testing.assert_array_equal(costs[:, integer], raw[:, integer])  # exact orders are untouched
