"""Tests of unlearn_jax.accounting against dp_accounting, mpmath and closed forms (THEORY §2–§3)."""

from __future__ import annotations

import logging
import math

import jax
import jax.numpy as jnp
import mpmath as mp
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from unlearn_jax import accounting as acc
from unlearn_jax.accounting import sgm
from unlearn_jax.accounting import sgm_fractional as frac

logging.getLogger("absl").setLevel(logging.ERROR)

ORDERS = acc.DEFAULT_ORDERS
GRID_Q = (1e-4, 1e-2, 0.1, 1.0)
GRID_Z = (0.3, 1.0, 2.0, 50.0)
FULL_GRID_Q = (1e-4, 1e-3, 1e-2, 0.05, 0.1, 0.3, 0.5, 0.7, 0.9, 0.99, 1.0)
FULL_GRID_Z = (0.3, 0.5, 0.8, 1.0, 1.5, 2.0, 3.0, 5.0, 10.0, 20.0, 50.0)


def _dp_rdp(q, z, orders=ORDERS, count=1):
  accountant = rdp_lib.RdpAccountant(orders=list(orders))
  accountant.compose(dp_event.PoissonSampledDpEvent(q, dp_event.GaussianDpEvent(z)), count)
  return accountant._rdp.copy(), accountant


def _mp_abs_series(q, sigma, alpha, num_terms=1500):
  """40-digit evaluation of MTZ19's fractional-order series with |binomial| (what dp_accounting sums)."""
  mp.mp.dps = 40
  q, s, a = mp.mpf(q), mp.mpf(sigma), mp.mpf(alpha)
  z0 = s**2 * mp.log(1 / q - 1) + mp.mpf(1) / 2
  total = mp.mpf(0)
  for i in range(num_terms):
    c = abs(mp.binomial(a, i))
    j = a - i
    total += c * q**i * (1 - q) ** j * mp.exp((i * i - i) / (2 * s**2)) * mp.erfc((i - z0) / (mp.sqrt(2) * s)) / 2
    total += c * q**j * (1 - q) ** i * mp.exp((j * j - j) / (2 * s**2)) * mp.erfc((z0 - j) / (mp.sqrt(2) * s)) / 2
  return float(mp.log(total) / (a - 1))


def _mp_exact(q, sigma, alpha):
  """The exact RDP by 40-digit quadrature of E_{N(0,σ²)}[((1-q) + q e^{(2x-1)/(2σ²)})^α]."""
  mp.mp.dps = 40
  q, s, a = mp.mpf(q), mp.mpf(sigma), mp.mpf(alpha)
  f = lambda x: (
    mp.exp(-(x**2) / (2 * s**2)) / (s * mp.sqrt(2 * mp.pi)) * ((1 - q) + q * mp.exp((2 * x - 1) / (2 * s**2))) ** a
  )
  pts = sorted({-mp.inf, -20 * s, mp.mpf(0), mp.mpf(1), a, a + 20 * s, mp.inf})
  return float(mp.log(mp.quad(f, pts)) / (a - 1))


@pytest.fixture(scope="module")
def rdp_fn(x64):
  return jax.jit(lambda q, z: acc.sampled_gaussian_rdp(q, z, ORDERS))


def test_default_orders_equal_dp_accounting():
  assert list(acc.DEFAULT_ORDERS) == list(rdp_lib.DEFAULT_RDP_ORDERS)
  assert len(acc.DEFAULT_ORDERS) == 156


def _check_grid(rdp_fn, grid_q, grid_z):
  """1e-6 relative wherever dp_accounting is finite; where the two differ by more, a 40-digit
  evaluation of the same series decides, and ours must be within 1e-6 of it (dp_accounting's own
  float64 log-space sums lose digits for tiny RDP values)."""
  z = np.asarray(grid_z)
  arbitrated = []
  for q in grid_q:
    ours = np.asarray(rdp_fn(q, z))
    assert np.all(np.isfinite(ours)), q
    for zi, zz in enumerate(grid_z):
      ref, _ = _dp_rdp(q, zz)
      fin = np.isfinite(ref)
      rel = np.abs(ours[zi] - ref) / np.where(fin, np.abs(ref), 1.0)
      for k in np.nonzero(fin & (rel > 1e-6))[0]:
        hp = _mp_abs_series(q, zz, ORDERS[k])
        arbitrated.append((q, zz, ORDERS[k]))
        assert abs(ours[zi, k] - hp) <= 1e-6 * abs(hp), (q, zz, ORDERS[k], ours[zi, k], ref[k], hp)
        assert abs(ours[zi, k] - hp) < abs(ref[k] - hp), "dp_accounting was closer to the 40-digit value"
  assert len(arbitrated) <= 0.01 * len(grid_q) * len(grid_z) * len(ORDERS), arbitrated  # a handful only


@pytest.mark.slow
def test_sampled_gaussian_matches_dp_accounting_on_grid(rdp_fn):
  _check_grid(rdp_fn, GRID_Q, GRID_Z)


@pytest.mark.slow
def test_sampled_gaussian_matches_dp_accounting_on_full_grid(rdp_fn):
  _check_grid(rdp_fn, FULL_GRID_Q, FULL_GRID_Z)


@pytest.mark.slow
def test_finite_where_dp_accounting_gives_up(rdp_fn):
  """dp_accounting answers inf at q = 0.5 (series not converged in 1,000 terms); ours is finite and
  an upper bound on the exact RDP (its series uses |binomial coefficients|)."""
  ref, _ = _dp_rdp(0.5, 1.0, orders=[1.5])
  assert np.isinf(ref[0])
  ours = np.asarray(rdp_fn(0.5, np.array([1.0])))[0, ORDERS.index(1.5)]
  exact = _mp_exact(0.5, 1.0, 1.5)
  assert np.isfinite(ours) and exact <= ours <= exact * 1.15  # |binomial| series: 10% above here
  series = _mp_abs_series(0.5, 1.0, 1.5, num_terms=300)
  assert ours >= series  # more terms than these 300, plus a bound on the rest


def test_q_one_and_infinite_noise(rdp_fn):
  z = np.array([0.7, 3.0, np.inf, np.inf])  # 4 = len(GRID_Z): no recompilation of rdp_fn
  r = np.asarray(rdp_fn(1.0, z))
  a = np.asarray(ORDERS)
  np.testing.assert_allclose(r[:2], a[None, :] / (2 * z[:2, None] ** 2), rtol=1e-15)
  assert np.all(r[2] == 0.0)
  r_small_q = np.asarray(rdp_fn(0.01, np.full(len(GRID_Z), np.inf)))
  assert np.all(r_small_q == 0.0)


def test_composed_over_steps_and_epsilon(rdp_fn):
  q, z, steps, delta = 0.01, 1.1, 1000, 1e-5
  ref, accountant = _dp_rdp(q, z, count=steps)
  ours = steps * np.asarray(rdp_fn(q, np.full(len(GRID_Z), z)))[0]
  np.testing.assert_allclose(ours, ref, rtol=1e-6)
  eps, order = acc.rdp_to_dp(jnp.asarray(ours), ORDERS, delta)
  ref_eps, ref_order = accountant.get_epsilon_and_optimal_order(delta)
  np.testing.assert_allclose(float(eps), ref_eps, rtol=1e-6)
  assert float(order) == ref_order


def test_rdp_to_dp_matches_compute_epsilon(x64):
  rng = np.random.default_rng(0)
  orders = np.asarray(ORDERS)
  for scale in (1e-4, 1e-2, 0.3, 5.0):
    rdp = scale * orders * rng.uniform(0.5, 1.5, size=orders.shape)
    for delta in (1e-8, 1e-5, 0.1):
      eps, order = acc.rdp_to_dp(jnp.asarray(rdp), ORDERS, delta)
      ref_eps, ref_order = rdp_lib.compute_epsilon(orders, rdp, delta)
      np.testing.assert_allclose(float(eps), ref_eps, rtol=1e-6, atol=1e-12)
      if ref_eps > 0:
        assert float(order) == ref_order
      classic, corder = acc.rdp_to_dp(jnp.asarray(rdp), ORDERS, delta, method="classic")
      cl = rdp - math.log(delta) / (orders - 1)
      np.testing.assert_allclose(float(classic), cl.min(), rtol=1e-12)
      assert float(corder) == orders[np.argmin(cl)]
  # Batched: (2, K) gives (2,).
  eps, _ = acc.rdp_to_dp(jnp.stack([jnp.asarray(orders) * 0.01, jnp.asarray(orders) * 0.1]), ORDERS, 1e-5)
  assert eps.shape == (2,) and float(eps[0]) < float(eps[1])


@pytest.mark.slow
def test_gradients_match_finite_differences(x64):
  orders = (1.5, 2.5, 3.0, 16.0)
  f = jax.jit(lambda q, z: acc.sampled_gaussian_rdp(q, z, orders).sum())
  g = jax.jit(jax.grad(lambda q, z: acc.sampled_gaussian_rdp(q, z, orders).sum(), argnums=(0, 1)))
  for q, z in ((0.01, 1.0), (0.3, 2.0)):
    zz = jnp.array([z, 2 * z])
    gq, gz = g(q, zz)
    h = 1e-6
    fq = (f(q + h, zz) - f(q - h, zz)) / (2 * h)
    np.testing.assert_allclose(float(gq), float(fq), rtol=1e-5)
    for k in range(2):
      e = jnp.zeros(2).at[k].set(h)
      fz = (f(q, zz + e) - f(q, zz - e)) / (2 * h)
      np.testing.assert_allclose(float(gz[k]), float(fz), rtol=1e-5)


@pytest.mark.slow
def test_float32_accuracy(rdp_fn):
  """float32 (the default dtype) agrees with float64 to ~1e-4 relative for costs that are not tiny."""
  z = np.array([0.8, 2.0, 10.0])
  ref = np.asarray(rdp_fn(0.01, z))
  with jax.enable_x64(False):
    r32 = np.asarray(jax.jit(lambda zz: acc.sampled_gaussian_rdp(0.01, zz, ORDERS))(jnp.asarray(z, jnp.float32)))
  assert r32.dtype == np.float32
  mask = ref > 1e-4
  np.testing.assert_allclose(r32[mask], ref[mask], rtol=2e-4)
  mask = ref > 1e-7
  np.testing.assert_allclose(r32[mask], ref[mask], rtol=2e-3)


@pytest.mark.slow
def test_cost_formulas(x64):
  orders = np.array([1.5, 2.0, 8.0])
  sq = np.array([0.0, 1.0, 4.0])
  eta, tau, n = 0.3, 0.02, 11
  c = np.asarray(acc.full_batch_costs(jnp.asarray(sq), n, orders=orders, step_size=eta, temperature=tau))
  np.testing.assert_allclose(c, orders[None, :] * eta * sq[:, None] / (4 * tau * (n - 1) ** 2), rtol=1e-14)
  w = np.asarray(acc.full_batch_worst_case_cost(2.0, n, orders=orders, step_size=eta, temperature=tau))
  np.testing.assert_allclose(w, orders * eta * 16.0 / (4 * tau * (n - 1) ** 2), rtol=1e-14)
  np.testing.assert_allclose(np.asarray(acc.gaussian_rdp(3.0, 2.0, orders)), orders * 9 / 8, rtol=1e-14)
  # Poisson: z = b sqrt(2 tau / eta) / norm; norm 0 -> 0; worst case = norm C.
  q, b, clip = 0.05, 4.0, 1.5
  norms = np.array([0.0, 0.5, clip])
  pc = np.asarray(
    jax.jit(lambda nr: acc.poisson_costs(nr, q, b, orders=list(orders), step_size=eta, temperature=tau))(
      jnp.asarray(norms)
    )
  )
  z = b * math.sqrt(2 * tau / eta) / norms[1:]
  for k, zz in enumerate(z):
    np.testing.assert_allclose(pc[k + 1], rdp_lib._compute_rdp_poisson_subsampled_gaussian(q, zz, orders), rtol=1e-6)
  assert np.all(pc[0] == 0)
  pw = np.asarray(
    jax.jit(lambda: acc.poisson_worst_case_cost(clip, q, b, orders=list(orders), step_size=eta, temperature=tau))()
  )
  np.testing.assert_allclose(pw, pc[2], rtol=1e-12)


def test_ledger_update_filter_and_flags(x64):
  cfg = acc.accountant([2.0, 4.0], filter_budget=1.0, filter_order=2.0)
  led = acc.ledger_init(3, cfg)
  assert bool(led.certified) and bool(led.exact)
  costs = jnp.array([[0.4, 0.8], [0.6, 1.2], [0.0, 0.0]])
  led = acc.ledger_update(led, costs, jnp.array([0.7, 1.4]), config=cfg)
  led = acc.ledger_update(led, costs, jnp.array([0.7, 1.4]), config=cfg)
  # Example 1 would reach 1.2 > B at its second step: removed then, charged nothing more.
  np.testing.assert_allclose(np.asarray(led.realized), [[0.8, 1.6], [0.6, 1.2], [0.0, 0.0]])
  assert np.asarray(led.active).tolist() == [True, False, True]
  assert np.all(np.asarray(led.realized[:, 0]) <= 1.0)
  np.testing.assert_allclose(np.asarray(led.worst_case), [1.4, 2.8])
  assert int(led.num_steps) == 2 and int(led.num_accounted) == 2
  # Non-finite costs are flagged, not summed.
  led2 = acc.ledger_update(led, costs.at[0, 0].set(jnp.nan), jnp.array([0.7, 1.4]), config=cfg)
  assert not bool(led2.finite)
  assert float(led2.realized[0, 0]) == pytest.approx(0.8)
  with pytest.raises(FloatingPointError, match="non-finite"):
    acc.check_ledger(led2)
  acc.check_ledger(led)
  # A data set of another size.
  with pytest.raises(ValueError, match="shape"):
    acc.ledger_update(led, jnp.zeros((4, 2)), jnp.zeros(2), config=cfg)
  # Strided accounting is an estimate.
  assert not bool(acc.ledger_init(2, acc.accountant([2.0], stride=5)).exact)


def test_average_and_group(x64):
  cfg = acc.accountant([2.0, 3.0])
  leds = jax.vmap(lambda c: acc.ledger_update(acc.ledger_init(2, cfg), c, jnp.zeros(2), config=cfg))(
    jnp.arange(12.0).reshape(3, 2, 2)
  )
  mean, std = acc.average_ledgers(leds)
  r = np.arange(12.0).reshape(3, 2, 2)
  np.testing.assert_allclose(np.asarray(mean), r.mean(0))
  np.testing.assert_allclose(np.asarray(std), r.std(0))
  realized = jnp.asarray(np.random.default_rng(1).uniform(size=(5, 2)))
  g = acc.group_privacy_loss(realized, jnp.array([1, 3, 4]))
  # k ((n-1)/(n-k))^2 = 3 (4/2)^2 = 12 with the mean over the data set (THEORY §3); k with a fixed one.
  np.testing.assert_allclose(np.asarray(g), 12 * np.asarray(realized)[[1, 3, 4]].sum(0))
  g_fixed = acc.group_privacy_loss(realized, jnp.array([1, 3, 4]), fixed_denominator=True)
  np.testing.assert_allclose(np.asarray(g_fixed), 3 * np.asarray(realized)[[1, 3, 4]].sum(0))
  g_n = acc.group_privacy_loss(realized, jnp.array([1, 3]), num_examples=11)
  np.testing.assert_allclose(np.asarray(g_n), 2 * (10 / 9) ** 2 * np.asarray(realized)[[1, 3]].sum(0))
  with pytest.raises(ValueError, match="group_size"):
    acc.group_factor(3, 3)


def test_max_steps_for_epsilon(rdp_fn):
  step = np.asarray(rdp_fn(0.01, np.full(len(GRID_Z), 1.0)))[0]
  for method in ("classic", "improved"):
    t = int(acc.max_steps_for_epsilon(jnp.asarray(step), ORDERS, 3.0, 1e-5, method=method))
    eps = jax.jit(lambda r: acc.rdp_to_dp(r, ORDERS, 1e-5, method=method)[0])
    assert float(eps(jnp.asarray(t * step))) <= 3.0 < float(eps(jnp.asarray((t + 1) * step)))


@pytest.mark.parametrize(
  "call, match",
  [
    (lambda: acc.sampled_gaussian_rdp(0.1, 1.0, [0.5, 2.0]), "orders"),
    (lambda: acc.sampled_gaussian_rdp(0.1, 1.0, [1.0]), "orders"),
    (lambda: acc.sampled_gaussian_rdp(0.1, 0.0, [2.0]), "noise_multiplier"),
    (lambda: acc.sampled_gaussian_rdp(0.1, -1.0, [2.0]), "noise_multiplier"),
    (lambda: acc.sampled_gaussian_rdp(0.0, 1.0, [2.0]), "q"),
    (lambda: acc.sampled_gaussian_rdp(1.5, 1.0, [2.0]), "q"),
    (lambda: acc.rdp_to_dp(jnp.ones(2), [2.0, 3.0], -1e-5), "delta"),
    (lambda: acc.rdp_to_dp(jnp.ones(2), [2.0, 3.0], 1.0), "delta"),
    (lambda: acc.rdp_to_dp(jnp.ones(2), [2.0, 3.0], 1e-5, method="x"), "method"),
    (lambda: acc.full_batch_costs(jnp.ones(2), 3, orders=[2.0], step_size=0.0, temperature=1.0), "step_size"),
    (lambda: acc.full_batch_costs(jnp.ones(2), 3, orders=[2.0], step_size=0.1, temperature=-1.0), "temperature"),
    (lambda: acc.accountant([2.0], filter_budget=1.0, filter_order=3.0), "filter_order"),
    (lambda: acc.accountant([2.0], stride=0), "stride"),
    (lambda: acc.ledger_init(0, acc.accountant([2.0])), "num_examples"),
  ],
)
def test_bad_inputs(call, match):
  with pytest.raises(ValueError, match=match):
    call()


# ----------------------------------------------------------------------------------------------------
# The matrix-product evaluation of the fractional series (accounting.sgm_fractional)
# ----------------------------------------------------------------------------------------------------

_FRAC = tuple(o for o in ORDERS if not float(o).is_integer())


def test_log_ndtr_fast_matches_mpmath(x64):
  """Absolute error (what matters: the values are added to other logarithms) against 30 digits, across
  both branches and the float64 / float32 thresholds."""
  mp.mp.dps = 30
  x = np.concatenate([np.linspace(-80.0, 10.0, 901), [-37.0001, -36.9999, -10.0001, -9.9999, 0.0, 40.0]])
  ref = np.array([float(mp.log(mp.ncdf(v))) for v in x])
  got = np.asarray(frac._log_ndtr_fast(jnp.asarray(x)))
  assert np.max(np.abs(got - ref)) < 1e-11
  with jax.enable_x64(False):
    got32 = np.asarray(frac._log_ndtr_fast(jnp.asarray(x, jnp.float32)), np.float64)
  # float32: the value's own rounding (|log Φ| up to 3,200 here) plus 1e-6.
  assert np.all(np.abs(got32 - ref) <= 1e-6 + 2e-7 * np.abs(ref))


@pytest.mark.parametrize("i0", [0.0, 16.0, 64.0])
def test_fast_block_equals_term_by_term(x64, i0):
  """One block's log-sum (both series, the head excluded) and last term, as matrix products, equal the
  term-by-term block of the reference path; small σ takes the term-by-term branch of the second series.
  Tolerance 1e-8 absolute in the log: the reference uses ``jax.scipy.special.log_ndtr``, whose own
  asymptotic branch is off by up to 4e-9 (test_log_ndtr_fast_matches_mpmath holds ours to 1e-11)."""
  plan = sgm._sgm_plan(_FRAC, 1024)
  fp = plan.frac
  terms = jax.jit(
    lambda q, lq, l1q, s, z, w: frac._frac_terms(fp, jnp.asarray(i0), q, lq, l1q, s, z, w, jnp.float64, False)[:2]
  )
  fast = jax.jit(lambda lq, l1q, s, z, w: frac._frac_block_fast(fp, jnp.asarray(i0), lq, l1q, s, z, w, jnp.float64))
  for q in (1e-4, 0.01, 0.5, 0.95):
    sigma = jnp.asarray(np.geomspace(0.05, 80.0, 41))
    qq = jnp.asarray(q)
    log_q, log_1mq = jnp.log(qq), jnp.log1p(-qq)
    inv = 1.0 / (2.0 * sigma**2)
    z0 = sigma**2 * (log_1mq - log_q) + 0.5
    t0, t1 = terms(qq, log_q, log_1mq, sigma, z0, inv)
    i = i0 + np.arange(frac._BLOCK)
    t0 = np.where((i >= 2)[None, :, None], np.asarray(t0), -np.inf)
    ref = np.logaddexp(np.logaddexp.reduce(t0, axis=1), np.logaddexp.reduce(np.asarray(t1), axis=1))
    ref_last = np.logaddexp(np.asarray(t0)[:, -1], np.asarray(t1)[:, -1]) if i0 > 0 else None
    got, last = fast(log_q, log_1mq, sigma, z0, inv)
    fin = np.isfinite(ref)
    assert np.array_equal(fin, np.isfinite(np.asarray(got)))
    np.testing.assert_allclose(np.asarray(got)[fin], ref[fin], rtol=1e-12, atol=1e-8)
    if ref_last is not None:
      np.testing.assert_allclose(np.asarray(last), ref_last, rtol=1e-12, atol=1e-8)


def test_fast_core_equals_reference_core(x64):
  """log A of every fractional order: the fast value path equals the term-by-term path (the one the
  custom JVP differentiates) to 1e-9 relative (1e-14 absolute: log A ~ 1e-5 is A - 1 in float64), over q
  and σ from tiny to large."""
  plan = sgm._sgm_plan(_FRAC, 1024)
  sigma = jnp.asarray(np.geomspace(0.1, 80.0, 60))
  ref_fn = jax.jit(lambda q, s: frac._frac_core(plan, q, s, jnp.float64, False)[0])
  fast_fn = jax.jit(lambda q, s: frac._frac_core_fast(plan, q, s, jnp.float64))
  for q in (1e-5, 1e-2, 0.3, 0.5, 0.9, 0.99):
    ref = np.asarray(ref_fn(jnp.asarray(q), sigma))
    got = np.asarray(fast_fn(jnp.asarray(q), sigma))
    assert np.all(np.isfinite(got))
    np.testing.assert_allclose(got, ref, rtol=1e-9, atol=1e-14)


@pytest.mark.slow
def test_large_batches_sorted_chunks_keep_order_and_vmap(x64):
  """More noise multipliers than one chunk: evaluated sorted by z in chunks, returned in the caller's
  order (each equals its evaluation in a batch of 300 to the series' 1e-6 accuracy: a batch stops when
  its slowest example has converged, so the bound/tail added to the others differs); and the same under
  vmap (where the per-chunk ``lax.cond`` becomes a select)."""
  rng = np.random.default_rng(3)
  z = rng.permutation(np.concatenate([rng.uniform(0.5, 30.0, 598), [np.inf, 1.0]]))
  orders = (1.5, 2.5, 4.0, 8.0)
  rdp = jax.jit(lambda zz: acc.sampled_gaussian_rdp(0.02, zz, orders))
  big = np.asarray(rdp(jnp.asarray(z)))
  assert np.all(big[z == np.inf] == 0.0) and np.all(big[z < np.inf] > 0.0)
  small = np.stack([np.asarray(rdp(jnp.asarray(z[i : i + 300]))) for i in (0, 300)])
  np.testing.assert_allclose(big.reshape(2, 300, -1), small, rtol=1e-6)
  batched = np.asarray(
    jax.jit(jax.vmap(lambda zz: acc.sampled_gaussian_rdp(0.02, zz, orders)))(jnp.asarray(z).reshape(2, 300))
  )
  np.testing.assert_allclose(batched, small, rtol=1e-12)
