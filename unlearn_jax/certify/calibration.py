"""Calibration of the certificate's knobs by differentiation (theory §4): the temperature, step size or
number of steps that certifiably unlearns a quantile of examples within a budget.

The continuous steps to unlearn (``bounds.steps_to_unlearn_continuous``) are differentiable, so the
crossing of a budget is bracketed by bisection in log space and refined with ``jax.grad`` Newton steps.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax.certify.bounds import (
  _check_alpha,
  _check_loss,
  _float,
  certificate_assumptions,
  steps_to_unlearn,
  steps_to_unlearn_continuous,
)

__all__ = ["Calibration", "calibrate_step_size", "calibrate_steps", "calibrate_temperature"]


class Calibration(NamedTuple):
  """Result of a calibration.

  Attributes:
    value: the calibrated hyperparameter (temperature, step size or steps).
    quantile_steps: the certified (integer) steps at the requested quantile with that value.
    converged: whether the solver met its tolerance with the budget satisfied.
    assumptions: :func:`certificate_assumptions` label.
  """

  value: float
  quantile_steps: float
  converged: bool
  assumptions: str


def _quantile_steps_fn(privacy_loss_4alpha, epsilon, quantile, alpha, e1, e2, ctx_fn):
  """Returns log_param -> quantile of continuous k over examples (differentiable in log_param)."""
  p = _float(privacy_loss_4alpha)

  def fn(log_param):
    kw = ctx_fn(jnp.exp(log_param))
    k = steps_to_unlearn_continuous(
      p * kw["loss_scale"],
      epsilon,
      alpha=alpha,
      step_size=kw["step_size"],
      temperature=kw["temperature"],
      lsi_constant=kw["lsi_constant"],
      e1=e1,
      e2=e2,
    )
    return jnp.quantile(k, quantile, method="higher")  # an order statistic, as the integer check

  return fn


def _solve_decreasing(fn, budget, lo, hi, *, iters_bisect=60, iters_newton=8):
  """Smallest x in [lo, hi] (log space) with fn(x) ≤ budget, fn non-increasing; bisection then Newton.

  Bisection brackets the crossing; Newton steps with ``jax.grad`` refine it and are kept only while they
  stay inside the bracket on the feasible side. Host-side loop (calibration is a one-off, not traced).
  """
  grad_fn = jax.jit(jax.grad(fn))
  fn = jax.jit(fn)  # one compilation for the whole search
  # aim a hair below the budget: Newton lands on the root itself, where rounding could tip ceil() up
  budget = budget - 1e-7 * max(1.0, abs(budget))
  f_lo, f_hi = float(fn(lo)), float(fn(hi))
  if f_lo <= budget:
    return lo, True
  if not f_hi <= budget:
    return hi, False
  a, b = lo, hi  # fn(a) > budget >= fn(b)
  for _ in range(iters_bisect):
    mid = 0.5 * (a + b)
    if float(fn(mid)) <= budget:
      b = mid
    else:
      a = mid
    if b - a < 1e-3:
      break
  x = b
  for _ in range(iters_newton):  # Newton on g(x) = fn(x) - budget, from the feasible side
    fx, gx = float(fn(x)), float(grad_fn(x))
    if gx == 0 or not math.isfinite(gx):
      break
    nx = x - (fx - budget) / gx
    if not (a <= nx <= b) or float(fn(nx)) > budget:
      break
    if abs(nx - x) < 1e-12:
      x = nx
      break
    x, b = nx, nx
  return x, True


def calibrate_temperature(
  privacy_loss_4alpha: ArrayLike,
  epsilon: float,
  max_steps: float,
  *,
  quantile: float = 0.5,
  alpha: float,
  step_size: float,
  accounting_temperature: float,
  strong_convexity: float | None = None,
  lsi_constant: float | None = None,
  e1: float = 0.0,
  e2: float = 0.0,
  bounds: tuple[float, float] = (1e-8, 1e8),
) -> Calibration:
  """Smallest temperature τ whose certified steps at a quantile of examples meet a budget.

  The losses were measured at ``accounting_temperature`` τ₀; §2 costs scale as 1/τ along a fixed
  trajectory, so P(x, 4α; τ) = P(x, 4α; τ₀) · τ₀/τ. C_LSI is 2τ/m when ``strong_convexity`` m is given,
  else the fixed ``lsi_constant``. k(τ) is non-increasing in τ; the crossing of
  quantile_x k_cont(x; τ) = ``max_steps`` is bracketed by bisection in log τ and refined with
  ``jax.grad``-based Newton steps. Since k_cont ≤ B implies ceil(k_cont) ≤ B for an integer B, the
  integer k* at the quantile meets the budget.

  Args:
    privacy_loss_4alpha: P(x, 4α) at τ₀, shape (n,).
    epsilon: the Rényi target ε at order α.
    max_steps: the budget of fine-tuning steps.
    quantile: quantile of examples in [0, 1] (1: every example).
    alpha: order α > 1.
    step_size: η > 0.
    accounting_temperature: τ₀ at which the losses were measured.
    strong_convexity: m (C_LSI = 2τ/m), or None to use ``lsi_constant``.
    lsi_constant: a fixed C_LSI when ``strong_convexity`` is None.
    e1: E₁ ≥ 0.
    e2: E₂ ≥ 0.
    bounds: search interval for τ.

  Returns:
    A :class:`Calibration`; ``converged`` is False when even the top of ``bounds`` misses the budget.

  Raises:
    ValueError: on bad inputs or when neither or both of ``strong_convexity``/``lsi_constant`` are given.

  Examples:
    >>> cal = calibrate_temperature(jnp.array([1., 10., 100.]), 0.1, 50., alpha=2., step_size=0.1,
    ...                             accounting_temperature=1., lsi_constant=1.)
    >>> cal.quantile_steps <= 50, cal.converged
    (True, True)
  """
  _check_loss("privacy_loss_4alpha", privacy_loss_4alpha)
  _checks.check_positive("accounting_temperature", accounting_temperature)
  _checks.check_positive("max_steps", max_steps)
  if (strong_convexity is None) == (lsi_constant is None):
    raise ValueError(
      "give exactly one of strong_convexity (C_LSI = 2 tau / m) and lsi_constant, got "
      f"strong_convexity={strong_convexity!r}, lsi_constant={lsi_constant!r}"
    )
  if strong_convexity is not None:
    _checks.check_positive("strong_convexity", strong_convexity)
  else:
    _checks.check_positive("lsi_constant", lsi_constant)
  _check_alpha(alpha)
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("epsilon", epsilon)
  if not 0.0 <= quantile <= 1.0:
    raise ValueError(f"quantile must lie in [0, 1], got {quantile!r}")

  def ctx(tau):
    c = 2.0 * tau / strong_convexity if strong_convexity is not None else lsi_constant
    return dict(loss_scale=accounting_temperature / tau, step_size=step_size, temperature=tau, lsi_constant=c)

  fn = _quantile_steps_fn(privacy_loss_4alpha, epsilon, quantile, alpha, e1, e2, ctx)
  x, ok = _solve_decreasing(fn, float(max_steps), math.log(bounds[0]), math.log(bounds[1]))
  tau = math.exp(x)
  p = _float(privacy_loss_4alpha)
  kw = ctx(tau)
  k = steps_to_unlearn(
    p * kw["loss_scale"],
    epsilon,
    alpha=alpha,
    step_size=step_size,
    temperature=tau,
    lsi_constant=kw["lsi_constant"],
    e1=e1,
    e2=e2,
  )
  qk = float(jnp.quantile(k, quantile, method="higher"))
  return Calibration(tau, qk, bool(ok and qk <= max_steps), certificate_assumptions(e1, e2))


def calibrate_step_size(
  privacy_loss_4alpha: ArrayLike,
  epsilon: float,
  max_steps: float,
  *,
  quantile: float = 0.5,
  alpha: float,
  temperature: float,
  lsi_constant: float,
  accounting_step_size: float | None = None,
  e1: float = 0.0,
  e2: float = 0.0,
  bounds: tuple[float, float] = (1e-8, 1e2),
) -> Calibration:
  """Smallest step size η whose certified steps at a quantile of examples meet a budget.

  With ``accounting_step_size`` η₀ given, the losses are rescaled as P · η/η₀ (§2 costs are linear in
  η for a fixed number of training steps); k(η) is then non-increasing only where
  log(bracket/(ε−E₂)) ≥ 1, which bisection assumes (``converged=False`` when the top of ``bounds``
  misses the budget; the returned ``quantile_steps`` is always recomputed at the returned η).
  Without it P is held fixed and k ∝ 1/η. Bisection in log η, then ``jax.grad`` Newton steps.

  Args:
    privacy_loss_4alpha: P(x, 4α), shape (n,).
    epsilon: ε > 0.
    max_steps: step budget.
    quantile: quantile of examples in [0, 1].
    alpha: order α > 1.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0.
    accounting_step_size: η₀ at which the losses were measured, or None (P fixed).
    e1: E₁ ≥ 0.
    e2: E₂ ≥ 0.
    bounds: search interval for η.

  Returns:
    A :class:`Calibration`.

  Examples:
    >>> cal = calibrate_step_size(jnp.array([1., 10., 100.]), 0.1, 50., alpha=2., temperature=1.,
    ...                           lsi_constant=1.)
    >>> round(cal.value, 3), cal.quantile_steps
    (0.207, 50.0)
  """
  _check_loss("privacy_loss_4alpha", privacy_loss_4alpha)
  _checks.check_positive("max_steps", max_steps)
  _check_alpha(alpha)
  _checks.check_positive("temperature", temperature)
  _checks.check_positive("lsi_constant", lsi_constant)
  _checks.check_positive("epsilon", epsilon)
  if accounting_step_size is not None:
    _checks.check_positive("accounting_step_size", accounting_step_size)
  if not 0.0 <= quantile <= 1.0:
    raise ValueError(f"quantile must lie in [0, 1], got {quantile!r}")

  def ctx(eta):
    scale = 1.0 if accounting_step_size is None else eta / accounting_step_size
    return dict(loss_scale=scale, step_size=eta, temperature=temperature, lsi_constant=lsi_constant)

  fn = _quantile_steps_fn(privacy_loss_4alpha, epsilon, quantile, alpha, e1, e2, ctx)
  x, ok = _solve_decreasing(fn, float(max_steps), math.log(bounds[0]), math.log(bounds[1]))
  eta = math.exp(x)
  kw = ctx(eta)
  k = steps_to_unlearn(
    _float(privacy_loss_4alpha) * kw["loss_scale"],
    epsilon,
    alpha=alpha,
    step_size=eta,
    temperature=temperature,
    lsi_constant=lsi_constant,
    e1=e1,
    e2=e2,
  )
  qk = float(jnp.quantile(k, quantile, method="higher"))
  return Calibration(eta, qk, bool(ok and qk <= max_steps), certificate_assumptions(e1, e2))


def calibrate_steps(
  privacy_loss_4alpha: ArrayLike,
  epsilon: float,
  *,
  quantile: float = 0.5,
  alpha: float,
  step_size: float,
  temperature: float,
  lsi_constant: float,
  e1: float = 0.0,
  e2: float = 0.0,
) -> Calibration:
  """The number of steps that certifiably unlearns a quantile of examples: quantile of k*(x).

  Args:
    privacy_loss_4alpha: P(x, 4α), shape (n,).
    epsilon: ε > 0.
    quantile: in [0, 1]; uses the "higher" quantile so that at least that fraction is covered.
    alpha: order α > 1.
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0.
    e1: E₁ ≥ 0.
    e2: E₂ ≥ 0.

  Returns:
    A :class:`Calibration` whose ``value`` = ``quantile_steps``.

  Examples:
    >>> calibrate_steps(jnp.array([0.01, 10., 1000.]), 0.1, quantile=1.0, alpha=2., step_size=0.1,
    ...                 temperature=1., lsi_constant=1.).value
    196.0
  """
  if not 0.0 <= quantile <= 1.0:
    raise ValueError(f"quantile must lie in [0, 1], got {quantile!r}")
  k = steps_to_unlearn(
    privacy_loss_4alpha,
    epsilon,
    alpha=alpha,
    step_size=step_size,
    temperature=temperature,
    lsi_constant=lsi_constant,
    e1=e1,
    e2=e2,
  )
  qk = float(jnp.quantile(k, quantile, method="higher"))
  return Calibration(qk, qk, math.isfinite(qk), certificate_assumptions(e1, e2))
