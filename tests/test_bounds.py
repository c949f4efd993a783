"""Tests for unlearn_jax.bounds (THEORY §4) against float64 NumPy re-derivations and brute force."""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax.certify import bounds, calibration, worst_case


@pytest.fixture(autouse=True)
def x64():
  with jax.enable_x64(True):
    yield


# --- independent float64 references (written from THEORY §4, not from the module) -------------------


def ref_bound(p, k, alpha, eta, tau, c, e1=0.0, e2=0.0):
  return ((alpha - 0.5) / (alpha - 1)) * math.exp(-tau * eta * k / (alpha * c)) * (
    ((4 * alpha - 1) / (4 * alpha - 2)) * p + e1
  ) + e2


def brute_force_steps(p, target, alpha, eta, tau, c, e1=0.0, e2=0.0, kmax=200_000):
  if target <= e2:
    return math.inf
  # the bound decreases in k: the least k with bound <= target by exponential + binary search
  if ref_bound(p, 0, alpha, eta, tau, c, e1, e2) <= target:
    return 0
  hi = 1
  while ref_bound(p, hi, alpha, eta, tau, c, e1, e2) > target:
    hi *= 2
    assert hi < 1e12
  lo = hi // 2  # bound(lo) > target >= bound(hi)
  while hi - lo > 1:
    mid = (lo + hi) // 2
    if ref_bound(p, mid, alpha, eta, tau, c, e1, e2) <= target:
      hi = mid
    else:
      lo = mid
  return hi


def ref_worst_case_eps(alpha, K, m, eta, tau, S, C, n):
  return math.exp(-K * m * eta / alpha) * 4 * alpha * S**2 * C**2 / (m * tau * n**2)


# --- values ---------------------------------------------------------------------------------------


def test_bound_matches_reference_vectorised_over_examples_and_orders():
  rng = np.random.default_rng(0)
  p = rng.exponential(size=(5, 1)) * 10
  alphas = np.array([1.5, 2.0, 8.0])
  got = np.asarray(
    bounds.unlearning_bound(p, 37, alpha=alphas, step_size=0.03, temperature=0.2, lsi_constant=0.7, e1=0.01, e2=0.002)
  )
  want = np.array([[ref_bound(pi, 37, a, 0.03, 0.2, 0.7, 0.01, 0.002) for a in alphas] for pi in p[:, 0]])
  assert got.shape == (5, 3)
  np.testing.assert_allclose(got, want, rtol=1e-12)


def test_contraction_and_triangle_values():
  got = bounds.contraction_factor(np.array([0, 5, 50]), alpha=3.0, step_size=0.1, temperature=0.5, lsi_constant=2.0)
  np.testing.assert_allclose(got, np.exp(-2 * 0.5 * 0.1 * np.array([0, 5, 50]) / (3.0 * 2.0)), rtol=1e-13)
  assert float(bounds.weak_triangle(2.0, 0.3, 3.0)) == pytest.approx(2.5 / 2.0 * 2.0 + 0.3, rel=1e-14)


def test_lsi_constant_strongly_convex():
  assert float(bounds.lsi_constant_strongly_convex(0.3, 0.2)) == pytest.approx(3.0, rel=1e-14)


def test_steps_equal_brute_force_least_integer():
  rng = np.random.default_rng(1)
  for _ in range(300):
    p = float(10 ** rng.uniform(-4, 4))
    alpha = float(rng.uniform(1.05, 20))
    eta, tau, c = (float(10 ** rng.uniform(-3, 0)) for _ in range(3))
    e1 = float(rng.choice([0.0, 10 ** rng.uniform(-4, 0)]))
    e2 = float(rng.choice([0.0, 10 ** rng.uniform(-4, -1)]))
    target = float(10 ** rng.uniform(-3, 1))
    k = float(
      bounds.steps_to_unlearn(p, target, alpha=alpha, step_size=eta, temperature=tau, lsi_constant=c, e1=e1, e2=e2)
    )
    want = brute_force_steps(p, target, alpha, eta, tau, c, e1, e2)
    assert k == want, (p, target, alpha, eta, tau, c, e1, e2)
    if math.isfinite(k):  # and the bound at k* meets the target (float64 reference)
      assert ref_bound(p, k, alpha, eta, tau, c, e1, e2) <= target


def test_steps_special_cases():
  kw = dict(alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  assert float(bounds.steps_to_unlearn(0.0, 0.1, **kw)) == 0.0  # log(0) -> 0 steps
  assert float(bounds.steps_to_unlearn(1e-6, 0.1, **kw)) == 0.0  # log <= 0 -> 0
  assert float(bounds.steps_to_unlearn(1.0, 0.1, e2=0.1, **kw)) == math.inf  # eps == E2
  assert float(bounds.steps_to_unlearn(1.0, 0.1, e2=0.5, **kw)) == math.inf  # eps < E2
  assert float(bounds.steps_to_unlearn(math.inf, 0.1, **kw)) == math.inf  # infinite loss
  # monotone: harder points (larger P) never need fewer steps
  ks = np.asarray(bounds.steps_to_unlearn(np.logspace(-3, 5, 50), 0.01, **kw))
  assert np.all(np.diff(ks) >= 0) and ks[-1] > ks[0]


def test_jit_matches_eager():
  p = jnp.array([0.1, 3.0, 400.0])
  f = jax.jit(lambda p, t: bounds.steps_to_unlearn(p, 0.05, alpha=2.0, step_size=0.1, temperature=t, lsi_constant=1.0))
  eager = bounds.steps_to_unlearn(p, 0.05, alpha=2.0, step_size=0.1, temperature=0.5, lsi_constant=1.0)
  np.testing.assert_array_equal(f(p, 0.5), eager)


def test_traced_nan_gives_inf_not_nan():
  f = jax.jit(
    lambda p: (
      bounds.steps_to_unlearn(p, 0.05, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0),
      bounds.unlearning_bound(p, 10, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0),
    )
  )
  k, b = f(jnp.array([jnp.nan, 1.0]))
  assert float(k[0]) == math.inf and float(b[0]) == math.inf
  assert np.isfinite(k[1]) and np.isfinite(b[1])


# --- gradients vs finite differences ---------------------------------------------------------------


def _fd(f, x, h=1e-6):
  return (f(x * (1 + h)) - f(x * (1 - h))) / (2 * x * h)


@pytest.mark.parametrize("which", ["temperature", "step_size", "loss", "lsi_constant", "e1", "e2"])
def test_grad_continuous_steps_and_bound_match_finite_differences(which):
  base = dict(loss=7.3, temperature=0.4, step_size=0.05, lsi_constant=1.7, e1=0.02, e2=0.01)

  def steps(v):
    a = dict(base, **{which: v})
    return bounds.steps_to_unlearn_continuous(
      a["loss"],
      0.08,
      alpha=2.5,
      step_size=a["step_size"],
      temperature=a["temperature"],
      lsi_constant=a["lsi_constant"],
      e1=a["e1"],
      e2=a["e2"],
    )

  def bound(v):
    a = dict(base, **{which: v})
    return bounds.unlearning_bound(
      a["loss"],
      123.0,
      alpha=2.5,
      step_size=a["step_size"],
      temperature=a["temperature"],
      lsi_constant=a["lsi_constant"],
      e1=a["e1"],
      e2=a["e2"],
    )

  x = base[which]
  for f in (steps, bound):
    g = float(jax.grad(f)(x))
    fd = float(_fd(lambda v: float(f(v)), x))
    assert g == pytest.approx(fd, rel=1e-6, abs=1e-10), (f.__name__, g, fd)
    assert g != 0.0
  # analytic sign checks: more loss -> more steps; higher temperature -> fewer steps (fixed C_LSI)
  if which == "loss":
    assert float(jax.grad(steps)(x)) > 0
  if which == "temperature":
    assert float(jax.grad(steps)(x)) < 0


def test_grad_is_finite_in_the_clamped_and_infinite_regions():
  g0 = jax.grad(
    lambda p: bounds.steps_to_unlearn_continuous(p, 100.0, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  )(0.01)
  ginf = jax.grad(
    lambda t: bounds.steps_to_unlearn_continuous(
      1.0, 0.1, alpha=2.0, step_size=0.1, temperature=t, lsi_constant=1.0, e2=0.5
    )
  )(1.0)
  assert float(g0) == 0.0 and not math.isnan(float(ginf))


# --- bad inputs -----------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(alpha=1.0), "alpha"),
    (dict(alpha=0.5), "alpha"),
    (dict(alpha=np.array([2.0, 1.0])), "alpha"),
    (dict(step_size=0.0), "step_size"),
    (dict(temperature=-1.0), "temperature"),
    (dict(lsi_constant=0.0), "lsi_constant"),
    (dict(lsi_constant=math.nan), "lsi_constant"),
    (dict(e1=-0.1), "e1"),
    (dict(e2=math.nan), "e2"),
  ],
)
def test_bad_inputs_raise(kwargs, match):
  kw = dict(alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  kw.update(kwargs)
  with pytest.raises(ValueError, match=match):
    bounds.unlearning_bound(1.0, 3, **kw)
  with pytest.raises(ValueError, match=match):
    bounds.steps_to_unlearn(1.0, 0.1, **kw)


def test_bad_losses_and_targets_raise():
  kw = dict(alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  with pytest.raises(ValueError, match="privacy_loss_4alpha.*NaN"):
    bounds.steps_to_unlearn(np.array([1.0, math.nan]), 0.1, **kw)
  with pytest.raises(ValueError, match="privacy_loss_4alpha"):
    bounds.steps_to_unlearn(-1.0, 0.1, **kw)
  with pytest.raises(ValueError, match="epsilon"):
    bounds.steps_to_unlearn(1.0, 0.0, **kw)
  with pytest.raises(ValueError, match="num_steps"):
    bounds.unlearning_bound(1.0, -1, **kw)
  with pytest.raises(ValueError, match="m"):
    bounds.lsi_constant_strongly_convex(1.0, 0.0)


# --- (eps, delta) form ------------------------------------------------------------------------------


def test_steps_dp_is_best_exact_grid_order():
  rng = np.random.default_rng(3)
  orders = np.array([1.5, 2.0, 3.0, 5.0, 6.0, 8.0, 12.0, 16.0, 32.0, 64.0])
  realized = np.sort(rng.exponential(size=(6, 1)) * np.array([orders]) * 0.05, axis=1)
  eps, delta, eta, tau, c = 3.0, 1e-5, 0.1, 1.0, 2.0
  k, best = bounds.steps_to_unlearn_dp(realized, orders, eps, delta, step_size=eta, temperature=tau, lsi_constant=c)
  for i in range(6):
    cands = []
    for j, o in enumerate(orders):
      alpha = o / 4
      if alpha <= 1:
        continue
      target = eps - _improved_offset(alpha, delta)
      cands.append((brute_force_steps(realized[i, j], target, alpha, eta, tau, c) if target > 0 else math.inf, alpha))
    want = min(c_[0] for c_ in cands)
    assert float(k[i]) == want
    assert math.isfinite(want)
    assert (
      brute_force_steps(
        realized[i, list(orders).index(4 * float(best[i]))],
        eps - _improved_offset(float(best[i]), delta),
        float(best[i]),
        eta,
        tau,
        c,
      )
      == want
    )
  # The classic conversion (Mironov 2017, Prop. 3) is offered too: never fewer steps than the improved one.
  k_classic, _ = bounds.steps_to_unlearn_dp(
    realized, orders, eps, delta, step_size=eta, temperature=tau, lsi_constant=c, method="classic"
  )
  assert np.all(np.asarray(k_classic) >= np.asarray(k)) and np.any(np.asarray(k_classic) > np.asarray(k))


def _improved_offset(alpha, delta):
  """ε_dp − ε_rdp of Canonne, Kamath, Steinke 2020 (Prop. 12), as dp_accounting: log(1−1/α) − log(δα)/(α−1)."""
  return math.log1p(-1 / alpha) - math.log(delta * alpha) / (alpha - 1) if alpha > 1.01 else math.inf


def test_steps_dp_errors():
  with pytest.raises(ValueError, match="order > 4"):
    bounds.steps_to_unlearn_dp(np.ones((2, 2)), [2.0, 4.0], 1.0, 1e-5, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  with pytest.raises(ValueError, match="delta"):
    bounds.steps_to_unlearn_dp(np.ones((2, 1)), [8.0], 1.0, 0.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  with pytest.raises(ValueError, match="shape"):
    bounds.steps_to_unlearn_dp(np.ones((2, 3)), [8.0], 1.0, 1e-5, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  # an unreachable target (eps too small for every order) is +inf, not NaN
  k, _ = bounds.steps_to_unlearn_dp(np.ones((2, 1)), [8.0], 0.1, 1e-5, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  assert np.all(np.isposinf(k))


# --- worst case and groups --------------------------------------------------------------------------


def test_worst_case_epsilon_and_steps_brute_force():
  kw = dict(m=0.3, step_size=0.05, temperature=0.01, num_removed=2, clip_norm=3.0, num_examples=50)
  for alpha, K in [(2.0, 0), (4.0, 17), (1.5, 300)]:
    assert float(worst_case.worst_case_epsilon(alpha, K, **kw)) == pytest.approx(
      ref_worst_case_eps(alpha, K, 0.3, 0.05, 0.01, 2, 3.0, 50), rel=1e-12
    )
  orders = [1.5, 2.0, 4.0, 8.0]
  for target in [1e-3, 0.05, 1.0, 1e4]:
    K = float(worst_case.worst_case_steps(target, orders=orders, **kw))
    brute = next(
      k for k in range(100_000) if min(ref_worst_case_eps(a, k, 0.3, 0.05, 0.01, 2, 3.0, 50) for a in orders) <= target
    )
    assert K == brute, target


def test_group_steps():
  p = np.array([0.3, 2.0, 5.0, 0.01])
  forget = np.array([1, 2])
  k = float(bounds.group_steps_to_unlearn(p, forget, 0.1, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0))
  # k ((n-1)/(n-k))^2 with n = 4, k = 2: 2 (3/2)^2 = 4.5 (THEORY §3, mean over the data set)
  assert k == brute_force_steps(4.5 * (2.0 + 5.0), 0.1, 2.0, 0.1, 1.0, 1.0)
  k_fixed = float(
    bounds.group_steps_to_unlearn(
      p, forget, 0.1, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0, fixed_denominator=True
    )
  )
  assert k_fixed == brute_force_steps(2 * (2.0 + 5.0), 0.1, 2.0, 0.1, 1.0, 1.0) < k
  # a group is never cheaper than its hardest member
  k1 = float(bounds.steps_to_unlearn(5.0, 0.1, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0))
  assert k >= k1


def test_certificate_label():
  assert bounds.certificate_assumptions(0.0, 0.0) == bounds.STATIONARITY_ASSUMPTION
  assert bounds.certificate_assumptions(np.zeros(3), 0.0) == bounds.STATIONARITY_ASSUMPTION
  assert bounds.certificate_assumptions(0.0, 1e-9) == bounds.EXACT_CONSTANTS


# --- calibration vs brute-force grid search --------------------------------------------------------


def _quantile_int_steps(p, target, q, alpha, eta, tau, c):
  ks = [brute_force_steps(pi, target, alpha, eta, tau, c) for pi in p]
  return float(np.quantile(ks, q, method="higher"))


@pytest.mark.parametrize("quantile", [0.5, 1.0])
def test_calibrate_temperature_matches_grid_search(quantile):
  rng = np.random.default_rng(4)
  p0 = rng.exponential(size=30) * 5.0
  alpha, eta, tau0, m, target, budget = 2.0, 0.05, 1.0, 0.5, 0.05, 200
  cal = calibration.calibrate_temperature(
    p0, target, budget, quantile=quantile, alpha=alpha, step_size=eta, accounting_temperature=tau0, strong_convexity=m
  )
  assert cal.converged and cal.quantile_steps <= budget
  assert cal.assumptions == bounds.STATIONARITY_ASSUMPTION
  # brute force on a fine log grid: the least tau whose (integer) quantile of k* meets the budget
  grid = np.exp(np.linspace(math.log(1e-2), math.log(1e4), 501))
  ok = [(_quantile_int_steps(p0 * tau0 / t, target, quantile, alpha, eta, t, 2 * t / m) <= budget) for t in grid]
  assert any(ok) and not ok[0]
  first = grid[int(np.argmax(ok))]
  step = grid[1] / grid[0]
  # the continuous crossing is at or above the integer one, within the continuous/integer gap
  assert cal.value <= first * step
  # and at the calibrated value the reference quantile meets the budget
  assert (
    _quantile_int_steps(p0 * tau0 / cal.value, target, quantile, alpha, eta, cal.value, 2 * cal.value / m) <= budget
  )
  # just below it (1%) the continuous quantile exceeds the budget: calibrated tau is the least
  t = cal.value * 0.99
  kc = np.quantile(
    [brute_force_steps(pi * tau0 / t, target, alpha, eta, t, 2 * t / m) for pi in p0], quantile, method="higher"
  )
  assert kc >= budget


def test_calibrate_step_size_matches_grid_search():
  p = np.array([0.5, 3.0, 10.0, 80.0])
  target, budget, alpha, tau, c = 0.05, 120, 3.0, 0.2, 1.0
  cal = calibration.calibrate_step_size(p, target, budget, quantile=0.75, alpha=alpha, temperature=tau, lsi_constant=c)
  assert cal.converged
  grid = np.exp(np.linspace(math.log(1e-2), math.log(10.0), 401))
  ok = np.array([_quantile_int_steps(p, target, 0.75, alpha, e, tau, c) <= budget for e in grid])
  assert ok.any() and not ok[0]
  first = grid[int(np.argmax(ok))]
  assert first / (grid[1] / grid[0]) ** 2 <= cal.value <= first * grid[1] / grid[0]


def test_calibrate_step_size_with_rescaled_losses():
  p0 = np.array([0.5, 3.0, 10.0, 80.0])  # measured at eta0 = 0.1; P scales as eta / eta0
  target, budget, alpha, tau, c, eta0 = 0.05, 120, 3.0, 0.2, 1.0, 0.1
  cal = calibration.calibrate_step_size(
    p0,
    target,
    budget,
    quantile=0.75,
    alpha=alpha,
    temperature=tau,
    lsi_constant=c,
    accounting_step_size=eta0,
    bounds=(1e-2, 10.0),
  )
  assert cal.converged
  assert _quantile_int_steps(p0 * cal.value / eta0, target, 0.75, alpha, cal.value, tau, c) <= budget
  e = cal.value * 0.99
  assert (
    np.quantile([brute_force_steps(pi * e / eta0, target, alpha, e, tau, c) for pi in p0], 0.75, method="higher")
    >= budget
  )


def test_calibrate_steps():
  p = np.array([0.5, 3.0, 10.0, 80.0])
  cal = calibration.calibrate_steps(p, 0.05, quantile=1.0, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  assert cal.value == brute_force_steps(80.0, 0.05, 2.0, 0.1, 1.0, 1.0)


def test_calibrate_errors():
  with pytest.raises(ValueError, match="exactly one"):
    calibration.calibrate_temperature([1.0], 0.1, 10, alpha=2.0, step_size=0.1, accounting_temperature=1.0)
  with pytest.raises(ValueError, match="quantile"):
    calibration.calibrate_steps([1.0], 0.1, quantile=1.5, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
