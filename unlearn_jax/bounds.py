"""Certified per-instance unlearning by noisy fine-tuning (THEORY §4).

Everything here is pure ``jax.numpy``: it composes with ``jit``, ``vmap`` and ``grad`` and broadcasts
over examples (``privacy_loss_4alpha`` of shape (n,)) and over orders (``alpha`` of shape (K,)).

The per-instance theorem (THEORY §4): starting from θ_T ~ π_T(D) and running k noisy steps on
D' = D minus x (same η, τ), the unlearned law ρ_k satisfies

    D_α(ρ_k ‖ π_T(D')) ≤ ((α−½)/(α−1)) · exp(−τηk/(α C_LSI)) · [((4α−1)/(4α−2)) P(x, 4α) + E₁] + E₂

with E₁ = D_{4α−1}(π_T(D') ‖ ν'), E₂ = D_{2α−1}(ν' ‖ π_T(D')) and ν' the stationary law of the D'
chain. E₁ = E₂ = 0 is the "trained to stationarity" assumption; :func:`certificate_assumptions` gives
the label that output resting on it must carry.

Input checks: concrete (non-traced) inputs are validated (α > 1, positive constants, finite
non-negative losses) and raise ``ValueError`` naming the argument. Under tracing no check can run, so a
NaN privacy loss is mapped to +inf (an infinite, never a NaN, bound / number of steps).
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks, accounting

__all__ = [
  "STATIONARITY_ASSUMPTION",
  "EXACT_CONSTANTS",
  "Calibration",
  "calibrate_steps",
  "calibrate_step_size",
  "calibrate_temperature",
  "certificate_assumptions",
  "contraction_factor",
  "group_steps_to_unlearn",
  "lsi_constant_strongly_convex",
  "steps_to_unlearn",
  "steps_to_unlearn_continuous",
  "steps_to_unlearn_dp",
  "unlearning_bound",
  "weak_triangle",
  "worst_case_epsilon",
  "worst_case_steps",
]

STATIONARITY_ASSUMPTION = "assumes training reached stationarity (E1 = E2 = 0, THEORY §4)"
EXACT_CONSTANTS = "E1, E2 supplied (not assumed zero)"


# ----------------------------------------------------------------------------------------------------
# validation helpers (concrete inputs only; traced values pass through)


def _check_alpha(alpha: Any, name: str = "alpha") -> None:
  if _checks._is_traced(alpha):
    return
  arr = np.asarray(alpha, dtype=float)
  if np.any(~np.isfinite(arr) | (arr <= 1)):
    raise ValueError(f"{name} must be a finite Renyi order > 1 (every entry), got {alpha!r}")


def _check_loss(name: str, value: Any) -> None:
  """Privacy losses: non-negative, not NaN (+inf allowed: it gives +inf bounds / steps)."""
  if _checks._is_traced(value):
    return
  arr = np.asarray(value, dtype=float)
  if np.any(np.isnan(arr)):
    raise ValueError(f"{name} must not contain NaN, got {int(np.isnan(arr).sum())} NaN value(s)")
  if np.any(arr < 0):
    raise ValueError(f"{name} must be >= 0 (a Renyi divergence), got a minimum of {arr.min()!r}")


def _check_nonneg_int(name: str, value: Any) -> None:
  if _checks._is_traced(value):
    return
  arr = np.asarray(value, dtype=float)
  if np.any(np.isnan(arr) | (arr < 0)):
    raise ValueError(f"{name} must be a non-negative number of steps, got {value!r}")


def _float(x: ArrayLike) -> jax.Array:
  x = jnp.asarray(x)
  return x if jnp.issubdtype(x.dtype, jnp.floating) else x.astype(jnp.result_type(float))


def _nan_to_inf(x: jax.Array) -> jax.Array:
  return jnp.where(jnp.isnan(x), jnp.inf, x)


def _triangle_coeff(alpha: jax.Array) -> jax.Array:
  """(α − ½)/(α − 1): Mironov's weak triangle inequality with p = q = 2."""
  return (alpha - 0.5) / (alpha - 1.0)


# ----------------------------------------------------------------------------------------------------
# building blocks


def certificate_assumptions(e1: ArrayLike = 0.0, e2: ArrayLike = 0.0) -> str:
  """Label a certificate with the assumption it rests on.

  Args:
    e1: E₁ used in the bound (scalar or array).
    e2: E₂ used in the bound.

  Returns:
    :data:`STATIONARITY_ASSUMPTION` when both are identically zero (the bound then assumes training
    reached stationarity), else :data:`EXACT_CONSTANTS`.

  Examples:
    >>> certificate_assumptions()
    'assumes training reached stationarity (E1 = E2 = 0, THEORY §4)'
    >>> certificate_assumptions(0.1, 0.0)
    'E1, E2 supplied (not assumed zero)'
  """
  if np.all(np.asarray(e1) == 0) and np.all(np.asarray(e2) == 0):
    return STATIONARITY_ASSUMPTION
  return EXACT_CONSTANTS


def lsi_constant_strongly_convex(temperature: ArrayLike, m: ArrayLike) -> jax.Array:
  """LSI constant 2τ/m of the Gibbs law ∝ exp(−L/τ) of an m-strongly convex L (THEORY §0).

  Args:
    temperature: τ > 0.
    m: strong convexity of L_{D'} (the regularizer counts), > 0.

  Returns:
    2τ/m, broadcast over the inputs.

  Raises:
    ValueError: if τ or m is not a finite positive number.

  Examples:
    >>> round(float(lsi_constant_strongly_convex(0.5, 0.1)), 6)
    10.0
  """
  _checks.check_positive("temperature", temperature)
  _checks.check_positive("m", m)
  return 2.0 * _float(temperature) / _float(m)


def contraction_factor(
  k: ArrayLike, *, alpha: ArrayLike, step_size: ArrayLike, temperature: ArrayLike,
  lsi_constant: ArrayLike,
) -> jax.Array:
  """Rényi contraction exp(−2τηk/(β C_LSI)) after k noisy steps at order β = ``alpha`` (THEORY §4).

  Args:
    k: number of steps (≥ 0), may be fractional.
    alpha: the order β > 1 at which the contraction is applied.
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0 of the stationary law ν'.

  Returns:
    The factor in (0, 1], broadcast over the inputs.

  Raises:
    ValueError: on α ≤ 1, k < 0, or a non-positive constant.

  Examples:
    >>> round(float(contraction_factor(10, alpha=2., step_size=0.1, temperature=1., lsi_constant=1.)), 6)
    0.367879
  """
  _check_nonneg_int("k", k)
  _check_alpha(alpha)
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("temperature", temperature)
  _checks.check_positive("lsi_constant", lsi_constant)
  return jnp.exp(-2.0 * _float(temperature) * step_size * _float(k) / (alpha * lsi_constant))


def weak_triangle(d_2alpha_pq: ArrayLike, d_2alpham1_qr: ArrayLike, alpha: ArrayLike) -> jax.Array:
  """Weak triangle inequality (Mironov 2017, p = q = 2): a bound on D_α(P‖R).

  D_α(P‖R) ≤ ((α−½)/(α−1)) D_{2α}(P‖Q) + D_{2α−1}(Q‖R).

  Args:
    d_2alpha_pq: D_{2α}(P‖Q) (≥ 0, may be +inf).
    d_2alpham1_qr: D_{2α−1}(Q‖R).
    alpha: order α > 1.

  Returns:
    The right-hand side.

  Raises:
    ValueError: on α ≤ 1 or a NaN / negative divergence.

  Examples:
    >>> round(float(weak_triangle(1.0, 0.5, 2.0)), 6)
    2.0
  """
  _check_alpha(alpha)
  _check_loss("d_2alpha_pq", d_2alpha_pq)
  _check_loss("d_2alpham1_qr", d_2alpham1_qr)
  alpha = _float(alpha)
  return _nan_to_inf(_triangle_coeff(alpha) * d_2alpha_pq + d_2alpham1_qr)


def _check_theorem_inputs(privacy_loss_4alpha, alpha, step_size, temperature, lsi_constant, e1, e2):
  _check_loss("privacy_loss_4alpha", privacy_loss_4alpha)
  _check_alpha(alpha)
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("temperature", temperature)
  _checks.check_positive("lsi_constant", lsi_constant)
  _check_loss("e1", e1)
  _check_loss("e2", e2)


def _bracket(privacy_loss_4alpha, alpha, e1):
  """((α−½)/(α−1)) · [((4α−1)/(4α−2)) P(x,4α) + E₁]: the bound at k = 0 without E₂."""
  alpha = _float(alpha)
  p = _nan_to_inf(_float(privacy_loss_4alpha))
  return _triangle_coeff(alpha) * (_triangle_coeff(2.0 * alpha) * p + e1)


def unlearning_bound(
  privacy_loss_4alpha: ArrayLike, k: ArrayLike, *, alpha: ArrayLike, step_size: ArrayLike,
  temperature: ArrayLike, lsi_constant: ArrayLike, e1: ArrayLike = 0.0, e2: ArrayLike = 0.0,
) -> jax.Array:
  """Per-instance bound on D_α(ρ_k ‖ π_T(D')) after k fine-tuning steps on D' (THEORY §4).

  ((α−½)/(α−1)) · exp(−τηk/(α C_LSI)) · [((4α−1)/(4α−2)) P(x, 4α) + E₁] + E₂.

  Args:
    privacy_loss_4alpha: P(x, 4α) per example, shape (n,) or scalar (note: order **4α**).
    k: fine-tuning steps (≥ 0).
    alpha: order α > 1 of the guarantee (broadcasts with the other arguments).
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0 of the stationary law ν' of the D' chain.
    e1: E₁ = D_{4α−1}(π_T(D')‖ν') ≥ 0; 0 assumes stationarity.
    e2: E₂ = D_{2α−1}(ν'‖π_T(D')) ≥ 0; 0 assumes stationarity.

  Returns:
    The bound, broadcast over the inputs; +inf where P is +inf (or a traced NaN).

  Raises:
    ValueError: α ≤ 1, non-positive constants, negative k, NaN or negative P / E₁ / E₂.

  Examples:
    >>> b = unlearning_bound(jnp.array([0.1, 10.]), 0, alpha=2., step_size=0.1, temperature=1.,
    ...                      lsi_constant=1.)
    >>> [round(float(v), 4) for v in b]
    [0.175, 17.5]
  """
  _check_theorem_inputs(privacy_loss_4alpha, alpha, step_size, temperature, lsi_constant, e1, e2)
  _check_nonneg_int("k", k)
  alpha = _float(alpha)
  decay = jnp.exp(-_float(temperature) * step_size * _float(k) / (alpha * lsi_constant))
  return decay * _bracket(privacy_loss_4alpha, alpha, e1) + e2


def _log_ratio(privacy_loss_4alpha, target, alpha, e1, e2):
  """log(bracket / (ε − E₂)); +inf where ε ≤ E₂; -inf where the bracket is 0. Grad-safe."""
  target = _float(target)
  slack = target - e2
  ok = slack > 0
  safe_slack = jnp.where(ok, slack, 1.0)
  br = _bracket(privacy_loss_4alpha, alpha, e1)
  pos = br > 0
  safe_br = jnp.where(pos, br, 1.0)
  lr = jnp.where(pos, jnp.log(safe_br) - jnp.log(safe_slack), -jnp.inf)
  return jnp.where(ok, lr, jnp.inf)


def steps_to_unlearn_continuous(
  privacy_loss_4alpha: ArrayLike, target: ArrayLike, *, alpha: ArrayLike, step_size: ArrayLike,
  temperature: ArrayLike, lsi_constant: ArrayLike, e1: ArrayLike = 0.0, e2: ArrayLike = 0.0,
) -> jax.Array:
  """Un-rounded steps to unlearn: max(0, (α C_LSI/(τη)) log(bracket/(ε − E₂))) (THEORY §4).

  Differentiable (``jax.grad``) in P, ε, τ, η, C_LSI, E₁, E₂ where the value is positive and finite.

  Args:
    privacy_loss_4alpha: P(x, 4α), shape (n,) or scalar.
    target: ε > 0, the Rényi target at order α.
    alpha: order α > 1.
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0.
    e1: E₁ ≥ 0 (0: stationarity assumed).
    e2: E₂ ≥ 0 (0: stationarity assumed).

  Returns:
    Real steps ≥ 0; +inf where ε ≤ E₂ or P = +inf; 0 where the log is ≤ 0.

  Raises:
    ValueError: as :func:`unlearning_bound`, and on a non-positive target.

  Examples:
    >>> k = steps_to_unlearn_continuous(10., 0.1, alpha=2., step_size=0.1, temperature=1.,
    ...                                 lsi_constant=1.)
    >>> round(float(k), 4)
    103.2957
  """
  _check_theorem_inputs(privacy_loss_4alpha, alpha, step_size, temperature, lsi_constant, e1, e2)
  _checks.check_positive("target", target, allow_inf=True)
  alpha = _float(alpha)
  rate = alpha * lsi_constant / (_float(temperature) * step_size)
  lr = _log_ratio(privacy_loss_4alpha, target, alpha, e1, e2)
  pos = lr > 0
  safe_lr = jnp.where(pos & jnp.isfinite(lr), lr, 1.0)
  k = jnp.where(pos, rate * safe_lr, 0.0)
  return jnp.where(jnp.isposinf(lr), jnp.inf, k)


def steps_to_unlearn(
  privacy_loss_4alpha: ArrayLike, target: ArrayLike, *, alpha: ArrayLike, step_size: ArrayLike,
  temperature: ArrayLike, lsi_constant: ArrayLike, e1: ArrayLike = 0.0, e2: ArrayLike = 0.0,
) -> jax.Array:
  """Certified steps to unlearn x to (α, ε): k*(x) of THEORY §4.

  k* = ceil((α C_LSI/(τη)) · log(((α−½)/(α−1)) [((4α−1)/(4α−2)) P(x,4α) + E₁] / (ε − E₂))),
  0 when the log is ≤ 0, +inf when ε ≤ E₂. It is the least integer k with
  :func:`unlearning_bound` ≤ ε.

  Args:
    privacy_loss_4alpha: P(x, 4α), shape (n,) or scalar.
    target: ε > 0.
    alpha: order α > 1.
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0.
    e1: E₁ ≥ 0 (0: stationarity assumed, see :func:`certificate_assumptions`).
    e2: E₂ ≥ 0 (0: stationarity assumed).

  Returns:
    Float array of whole numbers (or +inf), broadcast over the inputs.

  Raises:
    ValueError: as :func:`steps_to_unlearn_continuous`.

  Examples:
    >>> k = steps_to_unlearn(jnp.array([0.01, 10., 1000.]), 0.1, alpha=2., step_size=0.1,
    ...                      temperature=1., lsi_constant=1.)
    >>> k.tolist()
    [0.0, 104.0, 196.0]
    >>> float(steps_to_unlearn(1., 0.1, alpha=2., step_size=0.1, temperature=1., lsi_constant=1.,
    ...                        e2=0.2))
    inf
  """
  return jnp.ceil(steps_to_unlearn_continuous(
    privacy_loss_4alpha, target, alpha=alpha, step_size=step_size, temperature=temperature,
    lsi_constant=lsi_constant, e1=e1, e2=e2))


# ----------------------------------------------------------------------------------------------------
# (eps, delta) form over the ledger's order grid


def _quarter_orders(orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Orders α = o/4 for grid entries o > 4 (so that P at 4α is read exactly off the grid)."""
  idx = np.nonzero(orders > 4.0)[0]
  return idx, orders[idx] / 4.0


def steps_to_unlearn_dp(
  ledger_realized: ArrayLike, orders: ArrayLike, eps: float, delta: float, *, step_size: ArrayLike,
  temperature: ArrayLike, lsi_constant: ArrayLike, e1: ArrayLike = 0.0, e2: ArrayLike = 0.0,
) -> tuple[jax.Array, jax.Array]:
  """Certified steps to reach (ε_dp, δ)-unlearning, best order from the ledger's grid (THEORY §4).

  The theorem at order α needs P(x, 4α). To stay exact (no interpolation between orders) the candidate
  orders are α = o/4 for every grid order o > 4, so P(x, 4α) = ``ledger_realized[:, j]`` exactly. At
  each candidate the Rényi target is ε = ε_dp − log(1/δ)/(α − 1) (the classic RDP → DP conversion);
  k*(x) is the minimum over candidates of :func:`steps_to_unlearn` (+inf where no candidate has
  ε > E₂).

  Args:
    ledger_realized: P(x, o) on the grid, shape (n, K) (a ``Ledger.realized``).
    orders: the grid, shape (K,), all > 1; needs at least one order > 4.
    eps: ε_dp > 0.
    delta: δ in (0, 1).
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0 (scalar, or shape (K,) giving C_LSI per candidate in grid position).
    e1: E₁ ≥ 0, scalar or shape (K,): entry j is E₁ at α = orders[j]/4.
    e2: E₂ ≥ 0, scalar or shape (K,), indexed like ``e1``.

  Returns:
    ``(steps, best_alpha)``, both shape (n,); best_alpha is the α achieving the minimum (the first
    candidate where all are +inf).

  Raises:
    ValueError: no grid order > 4, bad ε / δ / constants, NaN or negative losses, shape mismatch.

  Examples:
    >>> orders = jnp.array([2., 8., 16., 32.])
    >>> realized = jnp.array([[0.1, 0.4, 0.8, 1.6], [1., 4., 8., 16.]])
    >>> k, a = steps_to_unlearn_dp(realized, orders, 2.0, 1e-5, step_size=0.1, temperature=1.,
    ...                            lsi_constant=1.)
    >>> k.tolist(), a.tolist()
    ([129.0, 313.0], [8.0, 8.0])
  """
  orders_np = _checks.check_orders(orders)
  _checks.check_positive("eps", eps)
  _checks.check_probability("delta", delta)
  realized = _float(ledger_realized)
  if realized.ndim != 2 or realized.shape[1] != orders_np.shape[0]:
    raise ValueError(f"ledger_realized must have shape (n, {orders_np.shape[0]}) to match orders, "
                     f"got {realized.shape}")
  idx, alphas = _quarter_orders(orders_np)
  if idx.size == 0:
    raise ValueError(f"orders must contain an order > 4 (P is needed at 4*alpha with alpha > 1), "
                     f"got {orders_np.tolist()}")

  def per_grid(v):
    v = _float(v)
    return v[idx] if v.ndim == 1 and v.shape[0] == orders_np.shape[0] else v

  p = realized[:, idx]                                                  # (n, J)
  alphas_j = jnp.asarray(alphas, dtype=realized.dtype)
  targets = eps - math.log(1.0 / delta) / (alphas_j - 1.0)              # (J,)
  e2j = per_grid(e2)
  slack_ok = targets > e2j
  safe_targets = jnp.where(slack_ok, targets, jnp.inf)  # inf target -> 0 steps; masked below
  k = steps_to_unlearn(p, safe_targets, alpha=alphas_j, step_size=step_size, temperature=temperature,
                       lsi_constant=per_grid(lsi_constant), e1=per_grid(e1), e2=e2j)
  k = jnp.where(slack_ok, k, jnp.inf)
  best = jnp.argmin(k, axis=1)
  return jnp.min(k, axis=1), alphas_j[best]


# ----------------------------------------------------------------------------------------------------
# worst-case baseline (Chien et al. 2024) and forget sets


def worst_case_epsilon(
  alpha: ArrayLike, K: ArrayLike, *, m: ArrayLike, step_size: ArrayLike, temperature: ArrayLike,
  num_removed: ArrayLike, clip_norm: ArrayLike, n: ArrayLike,
) -> jax.Array:
  """Chien et al.'s worst-case Rényi unlearning ε(α, K) = exp(−Kmη/α) · 4αS²C²/(mτn²) (THEORY §4).

  Args:
    alpha: order α > 1.
    K: fine-tuning steps ≥ 0.
    m: strong convexity of L_{D'} > 0.
    step_size: η > 0.
    temperature: τ > 0 (their σ²).
    num_removed: S ≥ 1 removed points.
    clip_norm: gradient clip (or per-example gradient norm bound) C > 0.
    n: training set size > 0.

  Returns:
    ε(α, K), broadcast over the inputs.

  Raises:
    ValueError: α ≤ 1, K < 0, or a non-positive constant.

  Examples:
    >>> round(float(worst_case_epsilon(2., 0, m=1., step_size=0.1, temperature=1., num_removed=1,
    ...                                clip_norm=1., n=10)), 6)
    0.08
  """
  _check_alpha(alpha)
  _check_nonneg_int("K", K)
  for name, v in (("m", m), ("step_size", step_size), ("temperature", temperature),
                  ("num_removed", num_removed), ("clip_norm", clip_norm), ("n", n)):
    _checks.check_positive(name, v)
  if not (_checks._is_traced(num_removed) or _checks._is_traced(n)) and np.any(np.asarray(num_removed) > np.asarray(n)):
    raise ValueError(f"num_removed must not exceed the training-set size n = {n!r}, got {num_removed!r}")
  alpha = _float(alpha)
  s, c, nn = _float(num_removed), _float(clip_norm), _float(n)
  return jnp.exp(-_float(K) * m * step_size / alpha) * 4.0 * alpha * s**2 * c**2 / (
    m * temperature * nn**2)


def worst_case_steps(
  target: ArrayLike, *, orders: ArrayLike, m: ArrayLike, step_size: ArrayLike,
  temperature: ArrayLike, num_removed: ArrayLike, clip_norm: ArrayLike, n: ArrayLike,
) -> jax.Array:
  """Chien et al.'s K: the least integer K ≥ 0 with min over ``orders`` of ε(α, K) ≤ target.

  Per order K_α = max(0, ceil((α/(mη)) log(ε(α, 0)/target))); K = min_α K_α. To compare with the
  per-instance k* at a fixed (α, ε), pass ``orders=[alpha]``.

  Args:
    target: ε > 0 (broadcasts with ``m`` etc.).
    orders: candidate orders, shape (K,), all > 1.
    m: strong convexity > 0.
    step_size: η > 0.
    temperature: τ > 0.
    num_removed: S ≥ 1.
    clip_norm: C > 0.
    n: training set size.

  Returns:
    K as a float whole number, shape of the broadcast of target / m / ... (orders reduced).

  Raises:
    ValueError: on bad orders or a non-positive constant.

  Examples:
    >>> float(worst_case_steps(0.01, orders=[2., 4.], m=1., step_size=0.1, temperature=1.,
    ...                        num_removed=1, clip_norm=1., n=10))
    42.0
  """
  orders_np = _checks.check_orders(orders)
  _checks.check_positive("target", target)
  a = jnp.asarray(orders_np)
  eps0 = worst_case_epsilon(a, 0, m=jnp.expand_dims(_float(m), -1),
                            step_size=jnp.expand_dims(_float(step_size), -1),
                            temperature=jnp.expand_dims(_float(temperature), -1),
                            num_removed=num_removed,
                            clip_norm=jnp.expand_dims(_float(clip_norm), -1),
                            n=n)
  tgt = jnp.expand_dims(_float(target), -1)
  mm = jnp.expand_dims(_float(m), -1)
  eta = jnp.expand_dims(_float(step_size), -1)
  k_alpha = jnp.maximum(0.0, jnp.ceil(a / (mm * eta) * jnp.log(eps0 / tgt)))
  return jnp.min(k_alpha, axis=-1)


def group_steps_to_unlearn(
  privacy_loss_4alpha: ArrayLike, forget_indices: ArrayLike, target: ArrayLike, *,
  alpha: ArrayLike, step_size: ArrayLike, temperature: ArrayLike, lsi_constant: ArrayLike,
  e1: ArrayLike = 0.0, e2: ArrayLike = 0.0, fixed_denominator: bool = False,
) -> jax.Array:
  """Certified steps to unlearn a whole forget set F: :func:`steps_to_unlearn` at P(F, 4α).

  D' = D minus F; P(F, 4α) ≤ k((n−1)/(n−k))² Σ_{x∈F} P(x, 4α) with the mean over the data set, or
  k Σ_{x∈F} P(x, 4α) with a fixed denominator (THEORY §3, full batch; ``accounting.group_privacy_loss``);
  E₁, E₂, C_LSI must be those of the D' chain.

  Args:
    privacy_loss_4alpha: P(x, 4α) for all n examples, shape (n,).
    forget_indices: indices of F.
    target: ε > 0.
    alpha: order α > 1.
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0 of the D' stationary law.
    e1: E₁ ≥ 0.
    e2: E₂ ≥ 0.
    fixed_denominator: True when training used a fixed denominator (the certified filter).

  Returns:
    k* for the set (scalar).

  Examples:
    >>> float(group_steps_to_unlearn(jnp.array([1., 2., 3.]), jnp.array([0, 2]), 0.1, alpha=2.,
    ...                              step_size=0.1, temperature=1., lsi_constant=1.))  # P(F) <= 8 * 4
    127.0
  """
  _check_loss("privacy_loss_4alpha", privacy_loss_4alpha)
  p = _float(privacy_loss_4alpha)
  if p.ndim != 1:
    raise ValueError(f"privacy_loss_4alpha must have shape (n,), got {p.shape}")
  p_group = accounting.group_privacy_loss(p[:, None], forget_indices, fixed_denominator=fixed_denominator)[0]
  return steps_to_unlearn(p_group, target, alpha=alpha, step_size=step_size, temperature=temperature,
                          lsi_constant=lsi_constant, e1=e1, e2=e2)


# ----------------------------------------------------------------------------------------------------
# calibration by differentiation


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


def _quantile_steps_fn(privacy_loss_4alpha, target, quantile, alpha, e1, e2, ctx_fn):
  """Returns log_param -> quantile of continuous k over examples (differentiable in log_param)."""
  p = _float(privacy_loss_4alpha)

  def fn(log_param):
    kw = ctx_fn(jnp.exp(log_param))
    k = steps_to_unlearn_continuous(p * kw["loss_scale"], target, alpha=alpha,
                                    step_size=kw["step_size"], temperature=kw["temperature"],
                                    lsi_constant=kw["lsi_constant"], e1=e1, e2=e2)
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
  privacy_loss_4alpha: ArrayLike, target: float, max_steps: float, *, quantile: float = 0.5,
  alpha: float, step_size: float, accounting_temperature: float, strong_convexity: float | None = None,
  lsi_constant: float | None = None, e1: float = 0.0, e2: float = 0.0,
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
    target: Rényi target ε at order α.
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
    raise ValueError("give exactly one of strong_convexity (C_LSI = 2 tau / m) and lsi_constant, got "
                     f"strong_convexity={strong_convexity!r}, lsi_constant={lsi_constant!r}")
  if strong_convexity is not None:
    _checks.check_positive("strong_convexity", strong_convexity)
  else:
    _checks.check_positive("lsi_constant", lsi_constant)
  _check_alpha(alpha)
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("target", target)
  if not 0.0 <= quantile <= 1.0:
    raise ValueError(f"quantile must lie in [0, 1], got {quantile!r}")

  def ctx(tau):
    c = 2.0 * tau / strong_convexity if strong_convexity is not None else lsi_constant
    return dict(loss_scale=accounting_temperature / tau, step_size=step_size, temperature=tau,
                lsi_constant=c)

  fn = _quantile_steps_fn(privacy_loss_4alpha, target, quantile, alpha, e1, e2, ctx)
  x, ok = _solve_decreasing(fn, float(max_steps), math.log(bounds[0]), math.log(bounds[1]))
  tau = math.exp(x)
  p = _float(privacy_loss_4alpha)
  kw = ctx(tau)
  k = steps_to_unlearn(p * kw["loss_scale"], target, alpha=alpha, step_size=step_size, temperature=tau,
                       lsi_constant=kw["lsi_constant"], e1=e1, e2=e2)
  qk = float(jnp.quantile(k, quantile, method="higher"))
  return Calibration(tau, qk, bool(ok and qk <= max_steps), certificate_assumptions(e1, e2))


def calibrate_step_size(
  privacy_loss_4alpha: ArrayLike, target: float, max_steps: float, *, quantile: float = 0.5,
  alpha: float, temperature: float, lsi_constant: float, accounting_step_size: float | None = None,
  e1: float = 0.0, e2: float = 0.0, bounds: tuple[float, float] = (1e-8, 1e2),
) -> Calibration:
  """Smallest step size η whose certified steps at a quantile of examples meet a budget.

  With ``accounting_step_size`` η₀ given, the losses are rescaled as P · η/η₀ (§2 costs are linear in
  η for a fixed number of training steps); k(η) is then non-increasing only where
  log(bracket/(ε−E₂)) ≥ 1, which bisection assumes (``converged=False`` when the top of ``bounds``
  misses the budget; the returned ``quantile_steps`` is always recomputed at the returned η).
  Without it P is held fixed and k ∝ 1/η. Bisection in log η, then ``jax.grad`` Newton steps.

  Args:
    privacy_loss_4alpha: P(x, 4α), shape (n,).
    target: ε > 0.
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
  _checks.check_positive("target", target)
  if accounting_step_size is not None:
    _checks.check_positive("accounting_step_size", accounting_step_size)
  if not 0.0 <= quantile <= 1.0:
    raise ValueError(f"quantile must lie in [0, 1], got {quantile!r}")

  def ctx(eta):
    scale = 1.0 if accounting_step_size is None else eta / accounting_step_size
    return dict(loss_scale=scale, step_size=eta, temperature=temperature, lsi_constant=lsi_constant)

  fn = _quantile_steps_fn(privacy_loss_4alpha, target, quantile, alpha, e1, e2, ctx)
  x, ok = _solve_decreasing(fn, float(max_steps), math.log(bounds[0]), math.log(bounds[1]))
  eta = math.exp(x)
  kw = ctx(eta)
  k = steps_to_unlearn(_float(privacy_loss_4alpha) * kw["loss_scale"], target, alpha=alpha,
                       step_size=eta, temperature=temperature, lsi_constant=lsi_constant, e1=e1, e2=e2)
  qk = float(jnp.quantile(k, quantile, method="higher"))
  return Calibration(eta, qk, bool(ok and qk <= max_steps), certificate_assumptions(e1, e2))


def calibrate_steps(
  privacy_loss_4alpha: ArrayLike, target: float, *, quantile: float = 0.5, alpha: float,
  step_size: float, temperature: float, lsi_constant: float, e1: float = 0.0, e2: float = 0.0,
) -> Calibration:
  """The number of steps that certifiably unlearns a quantile of examples: quantile of k*(x).

  Args:
    privacy_loss_4alpha: P(x, 4α), shape (n,).
    target: ε > 0.
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
  k = steps_to_unlearn(privacy_loss_4alpha, target, alpha=alpha, step_size=step_size,
                       temperature=temperature, lsi_constant=lsi_constant, e1=e1, e2=e2)
  qk = float(jnp.quantile(k, quantile, method="higher"))
  return Calibration(qk, qk, math.isfinite(qk), certificate_assumptions(e1, e2))
