"""The privacy ledger wired into the SGLD step (issue 3): worst case = DP-SGD accountant, real norms,
full-batch costs vs a float64 NumPy reference, gradients, the Rényi filter."""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib
from logistic import logistic_grads_np, logistic_loss  # tests/ helper module

from unlearn_jax import accounting as acc
from unlearn_jax import algorithms as sg

logging.getLogger("absl").setLevel(logging.ERROR)


def linear_loss(w, ex):
  """ℓ = y ⟨w, x⟩: gradient y·x, independent of w."""
  x, y = ex
  return y * (x @ w)


@pytest.fixture(scope="module")
def data(x64):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(12, 3)) * np.array([1.0, 2.0, 0.5])
  x[0] *= 8.0  # an outlier
  y = (rng.uniform(size=12) < 0.5).astype(np.float64)
  return x, y


@pytest.mark.slow
def test_saturated_norms_reproduce_dp_sgd_accountant(x64):
  """Every per-example gradient norm ≥ C: each example's realized loss equals the worst case, which
  equals dp_accounting's RdpAccountant for PoissonSampled(q, Gaussian(z)) composed T times."""
  rng = np.random.default_rng(2)
  n, q, clip, eta, tau, steps = 20, 0.2, 1.0, 0.05, 0.01, 4
  x = rng.normal(size=(n, 3))
  x = 2.0 * clip * x / np.linalg.norm(x, axis=1, keepdims=True) * rng.uniform(1.0, 3.0, size=(n, 1))
  y = np.where(rng.uniform(size=n) < 0.5, -1.0, 1.0)
  alg = sg.sgld(linear_loss, mode="poisson", sampling_rate=q, clip_norm=clip, accounting=acc.accountant())
  step = jax.jit(alg.step)
  state = alg.init(jnp.zeros(3), n)
  for t in range(steps):
    state, info = step(state, (jnp.asarray(x), jnp.asarray(y)), jax.random.key(t), eta, tau)
  z = q * n * math.sqrt(2 * tau / eta) / clip
  accountant = rdp_lib.RdpAccountant()
  accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), steps)
  raw = accountant._rdp
  # The ledger charges the envelope min_{β ≥ α} (RDP is non-decreasing in the order; THEORY §2b): equal
  # to dp_accounting at every integer order, and at least as tight at the fractional ones, where the
  # |binomial| series overshoots (here by up to 55% at α = 1.1).
  orders = np.asarray(acc.DEFAULT_ORDERS)
  assert np.all(np.diff(orders) > 0)
  ref = np.minimum.accumulate(raw[::-1])[::-1]
  integer = orders == np.round(orders)
  np.testing.assert_array_equal(ref[integer], raw[integer])
  assert np.any(ref < 0.9 * raw)  # the envelope matters at this (q, z)
  led = acc.check_ledger(state.ledger)
  np.testing.assert_allclose(np.asarray(led.worst_case), ref, rtol=1e-6)
  np.testing.assert_allclose(np.asarray(led.realized), np.broadcast_to(ref, (n, len(ref))), rtol=1e-6)
  eps, order = acc.rdp_to_dp(led.realized[0], acc.DEFAULT_ORDERS, 1e-5)
  ref_eps, ref_order = accountant.get_epsilon_and_optimal_order(1e-5)
  np.testing.assert_allclose(float(eps), ref_eps, rtol=1e-6)
  assert float(order) == ref_order
  assert bool(led.exact) and not bool(led.certified) and int(led.num_accounted) == steps


@pytest.mark.slow
def test_real_norms_below_worst_case_and_ranked(data):
  x, y = data
  orders = (2.0, 4.5, 16.0)
  for mode, kw in (("poisson", dict(sampling_rate=0.25)), ("full_batch", {})):
    alg = sg.sgld(logistic_loss, mode=mode, clip_norm=1.0, accounting=acc.accountant(orders), **kw)
    step = jax.jit(alg.step)
    state = alg.init(jnp.zeros(3), 12)
    for t in range(5):
      state, _ = step(state, (jnp.asarray(x), jnp.asarray(y)), jax.random.key(t), 0.2, 0.01)
    realized = np.asarray(state.ledger.realized)
    worst = np.asarray(state.ledger.worst_case)
    assert np.all(realized <= worst[None, :] * (1 + 1e-12)), mode
    assert np.all(realized > 0)
    assert realized[:, 1].std() > 0.05 * realized[:, 1].mean(), mode  # the ranking differs


def test_full_batch_costs_match_numpy_reference(data):
  x, y = data
  w = np.array([0.3, -0.5, 0.2])
  clip, eta, tau = 1.5, 0.1, 0.02
  orders = (1.5, 2.0, 8.0)
  mask = np.ones(12)
  mask[[3, 7]] = 0.0
  costs, worst, norms = jax.jit(
    lambda p: acc.step_costs(
      logistic_loss,
      p,
      (jnp.asarray(x), jnp.asarray(y)),
      clip_norm=clip,
      step_size=eta,
      temperature=tau,
      orders=orders,
      mask=jnp.asarray(mask),
    )
  )(jnp.asarray(w))
  g = logistic_grads_np(w, x, y)
  nrm = np.linalg.norm(g, axis=1)
  gc = g * np.minimum(1.0, clip / nrm)[:, None]
  n_act = mask.sum()
  gbar = (mask[:, None] * gc).sum(0) / n_act
  sq = ((gc - gbar) ** 2).sum(1) * mask
  ref = np.asarray(orders)[None, :] * eta * sq[:, None] / (4 * tau * (n_act - 1) ** 2)
  np.testing.assert_allclose(np.asarray(costs), ref, rtol=1e-10, atol=1e-300)
  np.testing.assert_allclose(np.asarray(norms), nrm, rtol=1e-10)
  np.testing.assert_allclose(
    np.asarray(worst), np.asarray(orders) * eta * (2 * clip) ** 2 / (4 * tau * (n_act - 1) ** 2), rtol=1e-12
  )
  # The step charges the same costs.
  alg = sg.sgld(logistic_loss, clip_norm=clip, accounting=acc.accountant(orders))
  state, info = jax.jit(alg.step)(
    alg.init(jnp.asarray(w), 12),
    (jnp.asarray(x), jnp.asarray(y)),
    jax.random.key(0),
    eta,
    tau,
    data_mask=jnp.asarray(mask),
  )
  np.testing.assert_allclose(np.asarray(state.ledger.realized), ref, rtol=1e-10, atol=1e-300)


@pytest.mark.slow
def test_total_loss_gradients_match_finite_differences(data):
  x, y = data
  d = (jnp.asarray(x), jnp.asarray(y))
  w = jnp.array([0.3, -0.5, 0.2])
  orders = (1.5, 2.0, 8.0)

  def total(eta, tau, q, mode):
    kw = dict(sampling_rate=q) if mode == "poisson" else {}
    c, _, _ = acc.step_costs(
      logistic_loss, w, d, mode=mode, clip_norm=1.0, step_size=eta, temperature=tau, orders=orders, **kw
    )
    return jnp.sum(c)

  for mode in ("full_batch", "poisson"):
    f = jax.jit(lambda e, t, q: total(e, t, q, mode))
    grads = jax.jit(jax.grad(lambda e, t, q: total(e, t, q, mode), argnums=(0, 1, 2)))(0.1, 0.02, 0.3)
    point = np.array([0.1, 0.02, 0.3])
    for k in range(3 if mode == "poisson" else 2):
      h = 1e-6 * point[k]
      up, dn = point.copy(), point.copy()
      up[k] += h
      dn[k] -= h
      fd = (float(f(*up)) - float(f(*dn))) / (2 * h)
      np.testing.assert_allclose(float(grads[k]), fd, rtol=1e-5)


@pytest.mark.parametrize("mode", ["full_batch", "poisson"])
def test_filter_certifies_and_removes_gradients(data, mode):
  x, y = data
  d = (jnp.asarray(x), jnp.asarray(y))
  eta, tau, steps, q = 0.2, 0.01, 6, 0.5
  kw = dict(sampling_rate=q) if mode == "poisson" else {}
  keys = [jax.random.key(t) for t in range(steps)]
  # Budget: the median loss of an unfiltered run, so that some examples hit it and some do not.
  free = sg.sgld(logistic_loss, mode=mode, clip_norm=1.0, accounting=acc.accountant((2.0, 4.0)), **kw)
  free_step = jax.jit(free.step)
  st = free.init(jnp.zeros(3), 12)
  for key in keys:
    st, _ = free_step(st, d, key, eta, tau)
  budget = float(np.median(np.asarray(st.ledger.realized[:, 0])))
  cfg = acc.accountant((2.0, 4.0), filter_budget=budget, filter_order=2.0)
  alg = sg.sgld(logistic_loss, mode=mode, clip_norm=1.0, accounting=cfg, **kw)
  # The reference trains on the data set without the removed examples (data_mask), same fixed b
  # (the certified full-batch filter divides by the fixed b = n, not by the number still active).
  ref_kw = dict(sampling_rate=q, denominator=q * 12) if mode == "poisson" else dict(denominator=12.0)
  plain = sg.sgld(logistic_loss, mode=mode, clip_norm=1.0, **ref_kw)
  step, plain_step = jax.jit(alg.step), jax.jit(plain.step)
  state = alg.init(jnp.zeros(3), 12)
  ref_state = plain.init(jnp.zeros(3), 12)
  for key in keys:
    state, info = step(state, d, key, eta, tau)
    mask = state.ledger.active.astype(jnp.float64)
    ref_state, _ = plain_step(ref_state, d, key, eta, tau, data_mask=mask)
    np.testing.assert_allclose(np.asarray(state.params), np.asarray(ref_state.params), rtol=1e-10, atol=1e-14)
  led = state.ledger
  assert bool(led.certified)
  assert np.all(np.asarray(led.realized[:, 0]) <= budget)
  removed = ~np.asarray(led.active)
  assert 0 < removed.sum() < 12, removed


@pytest.mark.slow
def test_strided_and_seed_average(x64):
  rng = np.random.default_rng(3)
  x = rng.normal(size=(6, 2))
  y = np.ones(6)
  d = (jnp.asarray(x), jnp.asarray(y))
  orders = (2.0, 3.0)
  every = sg.sgld(linear_loss, clip_norm=1.0, accounting=acc.accountant(orders))
  strided = sg.sgld(linear_loss, clip_norm=1.0, accounting=acc.accountant(orders, stride=2))
  s1, s2 = every.init(jnp.zeros(2), 6), strided.init(jnp.zeros(2), 6)
  for t in range(4):  # gradients do not depend on w: every step costs the same
    s1, _ = every.step(s1, d, jax.random.key(t), 0.1, 0.01)
    s2, _ = strided.step(s2, d, jax.random.key(t), 0.1, 0.01)
  np.testing.assert_allclose(np.asarray(s2.ledger.realized), np.asarray(s1.ledger.realized), rtol=1e-12)
  assert int(s2.ledger.num_accounted) == 2 and not bool(s2.ledger.exact) and bool(s1.ledger.exact)

  def run(key):
    st, _ = every.step(every.init(jnp.zeros(2), 6), d, key, 0.1, 0.01)
    return st.ledger

  leds = jax.vmap(run)(jax.random.split(jax.random.key(0), 3))
  mean, std = acc.average_ledgers(leds)
  np.testing.assert_allclose(np.asarray(mean), np.asarray(leds.realized).mean(0))
  assert mean.shape == (6, 2) and std.shape == (6, 2)


def test_strided_optax_ledger_charges_every_stride_th_step_with_its_weight(x64):
  rng = np.random.default_rng(4)
  d = (jnp.asarray(rng.normal(size=(6, 2))), jnp.ones(6))
  orders = (2.0, 3.0)
  kw = dict(clip_norm=1.0)
  every = sg.optax_training(linear_loss, optax.sgd(0.1), accounting=acc.accountant(orders), **kw)
  strided = sg.optax_training(linear_loss, optax.sgd(0.1), accounting=acc.accountant(orders, stride=2), **kw)
  s1, s2 = every.init(jnp.zeros(2), 6), strided.init(jnp.zeros(2), 6)
  step1, step2 = jax.jit(every.step), jax.jit(strided.step)
  for t in range(4):  # gradients do not depend on w: every step costs the same
    s1, _ = step1(s1, d, jax.random.key(t), 0.1, accounting_temperature=0.01)
    s2, info = step2(s2, d, jax.random.key(t), 0.1, accounting_temperature=0.01)
    assert np.all(np.asarray(info.costs) == 0) == (t % 2 == 1)  # the skipped steps charge nothing
  np.testing.assert_allclose(np.asarray(s2.ledger.realized), np.asarray(s1.ledger.realized), rtol=1e-12)
  assert int(s2.ledger.num_accounted) == 2 and int(s2.ledger.num_steps) == 4 and float(s1.ledger.realized.min()) > 0


def test_skipped_step_leaves_the_ledger_as_an_unaccounted_update_does():
  cfg = acc.accountant((2.0, 8.0), filter_budget=1.0, filter_order=2.0)
  led = acc.ledger_init(4, cfg)
  led = acc.ledger_update(led, jnp.array([[0.3, 0.9], [2.0, 4.0], [0.0, 0.0], [0.1, 0.2]]), jnp.ones(2), config=cfg)
  assert not bool(led.active[1])  # the filter removed row 1: a state the skip must carry over
  costs = jnp.array([[5.0, 5.0], [1.0, 1.0], [jnp.nan, 0.0], [0.5, 0.5]])  # ignored when not accounted
  want = acc.ledger_update(led, costs, jnp.full(2, 7.0), weight=3, config=cfg, accounted=False)
  got = acc.ledger_skip(led)
  for name, a, b in zip(led._fields, got, want):
    assert np.array_equal(np.asarray(a), np.asarray(b)), name
  assert int(got.num_steps) == 2 and int(got.num_accounted) == 1


def test_ledger_errors_and_nonfinite(data):
  x, y = data
  d = (jnp.asarray(x), jnp.asarray(y))
  alg = sg.sgld(logistic_loss, clip_norm=1.0, accounting=acc.accountant((2.0,)))
  state = alg.init(jnp.zeros(3), 11)
  with pytest.raises(ValueError, match="created for 11 examples"):
    alg.step(state, d, jax.random.key(0), 0.1, 0.01)
  # Temperature 0 reaching the costs under jit (unchecked): the cost is inf, flagged, never summed.
  state = alg.init(jnp.zeros(3), 12)
  state, info = jax.jit(alg.step)(state, d, jax.random.key(0), 0.1, jnp.asarray(0.0))
  assert not bool(state.ledger.finite)
  assert np.all(np.isfinite(np.asarray(state.ledger.realized)))
  with pytest.raises(FloatingPointError):
    acc.check_ledger(state.ledger)
  # With an assumed accounting temperature, noise-free training is accounted.
  state = alg.init(jnp.zeros(3), 12)
  state, info = alg.step(state, d, jax.random.key(0), 0.1, 0.0, accounting_temperature=0.01)
  assert bool(state.ledger.finite) and float(info.noise_norm) == 0.0
  assert np.all(np.asarray(state.ledger.realized) > 0)
