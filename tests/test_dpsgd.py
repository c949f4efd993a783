"""DP-SGD vocabulary: noise multiplier <-> temperature, and a ledger that reads as DP-SGD accounting.

The references are independent: the DP-SGD noise scale written out (η σ C / B), and dp_accounting's
RDP accountant composing the DP-SGD mechanism (Gaussian, or Poisson-sampled Gaussian) T times.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from dp_accounting import dp_event
from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

from unlearn_jax import accounting
from unlearn_jax.accounting import dpsgd
from unlearn_jax.algorithms import sgld

ORDERS = [2.0, 3.0, 4.0, 8.0, 16.0, 32.0]


@pytest.mark.parametrize("sigma,b,c,eta", [(1.0, 256, 1.0, 0.1), (0.6, 64, 3.0, 2.0), (4.0, 1, 0.01, 1e-3)])
def test_temperature_gives_the_dp_sgd_noise_and_back(sigma, b, c, eta):
  with jax.enable_x64(True):
    tau = dpsgd.temperature_from_noise_multiplier(sigma, batch_size=b, clip_norm=c, step_size=eta)
    # the library's step adds sqrt(2 η τ) ξ; DP-SGD adds η · σ C / B · ξ
    np.testing.assert_allclose(float(jnp.sqrt(2 * eta * tau)), eta * sigma * c / b, rtol=1e-14)
    back = dpsgd.noise_multiplier_from_temperature(tau, batch_size=b, clip_norm=c, step_size=eta)
    np.testing.assert_allclose(float(back), sigma, rtol=1e-14)


def _saturated_problem(n=12, d=3):
  """Least squares with gradients far above the clip norm: every clipped gradient has norm C."""
  x = jax.random.normal(jax.random.key(0), (n, d)) * 10
  y = jnp.full((n,), 50.0)
  return (lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2), (x, y), jnp.zeros(d)


def _dp_accounting_rdp(event, steps):
  accountant = rdp_lib.RdpAccountant(orders=ORDERS)
  accountant.compose(event, steps)
  return accountant


@pytest.mark.parametrize("mode", ["full_batch", "poisson"])
def test_ledger_of_a_dp_sgd_run_equals_dp_accounting(mode):
  loss_fn, data, w0 = _saturated_problem()
  n, sigma, clip, eta, steps, q = 12, 1.3, 0.01, 0.05, 25, 0.5
  b = n if mode == "full_batch" else q * n
  tau = float(dpsgd.temperature_from_noise_multiplier(sigma, batch_size=b, clip_norm=clip, step_size=eta))
  kw = dict(denominator=n) if mode == "full_batch" else dict(sampling_rate=q)
  alg = sgld(loss_fn, mode=mode, clip_norm=clip, accounting=accounting.accountant(ORDERS), **kw)
  state = alg.init(w0, n)
  step = jax.jit(alg.step)
  for t in range(steps):
    state, info = step(state, data, jax.random.key(t + 1), eta, tau)
    norms = np.asarray(info.grad_norms)
    assert np.all(norms[norms > 0] > 10 * clip)  # saturated: every clipped norm is C (Poisson: the drawn rows)
  event = dp_event.GaussianDpEvent(sigma)
  if mode == "poisson":
    event = dp_event.PoissonSampledDpEvent(q, event)
  ref = _dp_accounting_rdp(event, steps)
  realized = np.asarray(state.ledger.realized, np.float64)
  np.testing.assert_allclose(realized, np.broadcast_to(ref._rdp, realized.shape), rtol=2e-5)
  # and ε per example reads as the DP-SGD accountant's ε
  rep = dpsgd.epsilon_report(realized, ORDERS, 1e-5, worst_case=state.ledger.worst_case)
  np.testing.assert_allclose(rep.epsilon, ref.get_epsilon(1e-5), rtol=2e-5)
  np.testing.assert_allclose(rep.worst_case_epsilon, ref.get_epsilon(1e-5), rtol=2e-5)


def test_epsilon_report_per_example_and_its_text():
  orders = [2.0, 4.0, 8.0]
  rdp = np.array([[0.1, 0.2, 0.4], [1.0, 2.0, 4.0], [0.0, 0.0, 0.0]])
  rep = dpsgd.epsilon_report(rdp, orders, 1e-5, worst_case=[1.0, 2.0, 4.0], certified=True)
  for i in range(3):
    accountant = rdp_lib.RdpAccountant(orders=orders)
    accountant._rdp = rdp[i].copy()  # dp_accounting's own conversion of the same RDP curve
    assert rep.epsilon[i] == pytest.approx(accountant.get_epsilon(1e-5), rel=1e-6)  # float32 conversion
  assert rep.fraction_below_worst_case == pytest.approx(2 / 3)
  text = dpsgd.format_epsilon_report(rep)
  assert "δ = 1e-05" in text and "67% of examples below it" in text and "Certified" in text


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda: dpsgd.temperature_from_noise_multiplier(0.0, batch_size=8, clip_norm=1.0, step_size=0.1), "noise_mult"),
    (lambda: dpsgd.temperature_from_noise_multiplier(1.0, batch_size=0, clip_norm=1.0, step_size=0.1), "batch_size"),
    (lambda: dpsgd.noise_multiplier_from_temperature(-1.0, batch_size=8, clip_norm=1.0, step_size=0.1), "temperat"),
    (lambda: dpsgd.noise_multiplier_from_temperature(1.0, batch_size=8, clip_norm=0.0, step_size=0.1), "clip_norm"),
    (lambda: dpsgd.epsilon_report(np.ones(3), [2.0], 1e-5), r"\(n, K\)"),
  ],
)
def test_bad_inputs_name_the_argument(call, match):
  with pytest.raises(ValueError, match=match):
    call()


def test_invalid_traced_settings_give_nan_not_a_number():
  f = jax.jit(lambda s, b: dpsgd.temperature_from_noise_multiplier(s, batch_size=b, clip_norm=1.0, step_size=0.1))
  assert np.isnan(float(f(1.0, -4.0))) and np.isnan(float(f(-1.0, 4.0)))
  assert np.isfinite(float(f(1.0, 4.0)))
