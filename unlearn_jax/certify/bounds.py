"""Certified per-instance unlearning by noisy fine-tuning (theory §4).

Everything here is pure ``jax.numpy``: it composes with ``jit``, ``vmap`` and ``grad`` and broadcasts
over examples (``privacy_loss_4alpha`` of shape (n,)) and over orders (``alpha`` of shape (K,)).

The per-instance theorem (theory §4): starting from θ_T ~ π_T(D) and running k noisy steps on
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

from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax._traced import guarded
from unlearn_jax.accounting import conversions, ledger

__all__ = [
  "EXACT_CONSTANTS",
  "STATIONARITY_ASSUMPTION",
  "certificate_assumptions",
  "contraction_factor",
  "group_steps_to_unlearn",
  "lsi_constant_strongly_convex",
  "steps_to_unlearn",
  "steps_to_unlearn_continuous",
  "steps_to_unlearn_dp",
  "unlearning_bound",
  "weak_triangle",
]


STATIONARITY_ASSUMPTION = "assumes training reached stationarity (E1 = E2 = 0, theory §4)"


EXACT_CONSTANTS = "E1, E2 supplied (not assumed zero)"


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
    'assumes training reached stationarity (E1 = E2 = 0, theory §4)'
    >>> certificate_assumptions(0.1, 0.0)
    'E1, E2 supplied (not assumed zero)'
  """
  if np.all(np.asarray(e1) == 0) and np.all(np.asarray(e2) == 0):
    return STATIONARITY_ASSUMPTION
  return EXACT_CONSTANTS


@guarded
def lsi_constant_strongly_convex(temperature: ArrayLike, m: ArrayLike) -> jax.Array:
  """LSI constant 2τ/m of the Gibbs law ∝ exp(−L/τ) of an m-strongly convex L (theory §0).

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


@guarded
def contraction_factor(
  num_steps: ArrayLike,
  *,
  alpha: ArrayLike,
  step_size: ArrayLike,
  temperature: ArrayLike,
  lsi_constant: ArrayLike,
) -> jax.Array:
  """Rényi contraction exp(−2τηk/(β C_LSI)) after k noisy steps at order β = ``alpha`` (theory §4).

  Args:
    num_steps: k ≥ 0, may be fractional.
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
  _check_nonneg_int("num_steps", num_steps)
  _check_alpha(alpha)
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("temperature", temperature)
  _checks.check_positive("lsi_constant", lsi_constant)
  return jnp.exp(-2.0 * _float(temperature) * step_size * _float(num_steps) / (alpha * lsi_constant))


@guarded
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
  p = jnp.where(p < 0, jnp.nan, p)  # a negative loss (possible only under a trace) is no number
  return _triangle_coeff(alpha) * (_triangle_coeff(2.0 * alpha) * p + e1)


@guarded
def unlearning_bound(
  privacy_loss_4alpha: ArrayLike,
  num_steps: ArrayLike,
  *,
  alpha: ArrayLike,
  step_size: ArrayLike,
  temperature: ArrayLike,
  lsi_constant: ArrayLike,
  e1: ArrayLike = 0.0,
  e2: ArrayLike = 0.0,
) -> jax.Array:
  """Per-instance bound on D_α(ρ_k ‖ π_T(D')) after k fine-tuning steps on D' (theory §4).

  ((α−½)/(α−1)) · exp(−τηk/(α C_LSI)) · [((4α−1)/(4α−2)) P(x, 4α) + E₁] + E₂.

  Args:
    privacy_loss_4alpha: P(x, 4α) per example, shape (n,) or scalar (note: order **4α**).
    num_steps: fine-tuning steps k ≥ 0.
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
  _check_nonneg_int("num_steps", num_steps)
  alpha = _float(alpha)
  decay = jnp.exp(-_float(temperature) * step_size * _float(num_steps) / (alpha * lsi_constant))
  bracket = _bracket(privacy_loss_4alpha, alpha, e1)
  infinite = jnp.isposinf(bracket)  # +inf stays +inf even where the contraction underflows to 0 (inf · 0)
  return jnp.where(infinite, jnp.inf, decay * jnp.where(infinite, 0.0, bracket)) + e2


def _log_ratio(privacy_loss_4alpha, epsilon, alpha, e1, e2):
  """log(bracket / (ε − E₂)); +inf where ε ≤ E₂; -inf where the bracket is 0. Grad-safe."""
  slack = _float(epsilon) - e2
  ok = slack > 0
  safe_slack = jnp.where(ok, slack, 1.0)
  br = _bracket(privacy_loss_4alpha, alpha, e1)
  pos = br > 0
  safe_br = jnp.where(pos, br, 1.0)
  lr = jnp.where(pos, jnp.log(safe_br) - jnp.log(safe_slack), -jnp.inf)
  return jnp.where(jnp.isnan(br), jnp.nan, jnp.where(ok, lr, jnp.inf))


@guarded
def steps_to_unlearn_continuous(
  privacy_loss_4alpha: ArrayLike,
  epsilon: ArrayLike,
  *,
  alpha: ArrayLike,
  step_size: ArrayLike,
  temperature: ArrayLike,
  lsi_constant: ArrayLike,
  e1: ArrayLike = 0.0,
  e2: ArrayLike = 0.0,
) -> jax.Array:
  """Un-rounded steps to unlearn: max(0, (α C_LSI/(τη)) log(bracket/(ε − E₂))) (theory §4).

  Differentiable (``jax.grad``) in P, ε, τ, η, C_LSI, E₁, E₂ where the value is positive and finite.

  Args:
    privacy_loss_4alpha: P(x, 4α), shape (n,) or scalar.
    epsilon: ε > 0, the Rényi target at order α.
    alpha: order α > 1.
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0.
    e1: E₁ ≥ 0 (0: stationarity assumed).
    e2: E₂ ≥ 0 (0: stationarity assumed).

  Returns:
    Real steps ≥ 0; +inf where ε ≤ E₂ or P = +inf; 0 where the log is ≤ 0.

  Raises:
    ValueError: as :func:`unlearning_bound`, and on a non-positive ε.

  Examples:
    >>> k = steps_to_unlearn_continuous(10., 0.1, alpha=2., step_size=0.1, temperature=1.,
    ...                                 lsi_constant=1.)
    >>> round(float(k), 4)
    103.2957
  """
  _check_theorem_inputs(privacy_loss_4alpha, alpha, step_size, temperature, lsi_constant, e1, e2)
  _checks.check_positive("epsilon", epsilon, allow_inf=True)
  alpha = _float(alpha)
  rate = alpha * lsi_constant / (_float(temperature) * step_size)
  lr = _log_ratio(privacy_loss_4alpha, epsilon, alpha, e1, e2)
  pos = lr > 0
  safe_lr = jnp.where(pos & jnp.isfinite(lr), lr, 1.0)
  k = jnp.where(pos, rate * safe_lr, 0.0)
  return jnp.where(jnp.isnan(lr), jnp.nan, jnp.where(jnp.isposinf(lr), jnp.inf, k))


@guarded
def steps_to_unlearn(
  privacy_loss_4alpha: ArrayLike,
  epsilon: ArrayLike,
  *,
  alpha: ArrayLike,
  step_size: ArrayLike,
  temperature: ArrayLike,
  lsi_constant: ArrayLike,
  e1: ArrayLike = 0.0,
  e2: ArrayLike = 0.0,
) -> jax.Array:
  """Certified steps to unlearn x to (α, ε): k*(x) of theory §4.

  k* = ceil((α C_LSI/(τη)) · log(((α−½)/(α−1)) [((4α−1)/(4α−2)) P(x,4α) + E₁] / (ε − E₂))),
  0 when the log is ≤ 0, +inf when ε ≤ E₂. It is the least integer k with
  :func:`unlearning_bound` ≤ ε.

  Args:
    privacy_loss_4alpha: P(x, 4α), shape (n,) or scalar.
    epsilon: ε > 0.
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
  return jnp.ceil(
    steps_to_unlearn_continuous(
      privacy_loss_4alpha,
      epsilon,
      alpha=alpha,
      step_size=step_size,
      temperature=temperature,
      lsi_constant=lsi_constant,
      e1=e1,
      e2=e2,
    )
  )


def _quarter_orders(orders: np.ndarray) -> tuple[np.ndarray, np.ndarray]:
  """Orders α = o/4 for grid entries o > 4 (so that P at 4α is read exactly off the grid)."""
  idx = np.nonzero(orders > 4.0)[0]
  return idx, orders[idx] / 4.0


@guarded
def steps_to_unlearn_dp(
  ledger_realized: ArrayLike,
  orders: ArrayLike,
  epsilon: float,
  delta: float,
  *,
  step_size: ArrayLike,
  temperature: ArrayLike,
  lsi_constant: ArrayLike,
  e1: ArrayLike = 0.0,
  e2: ArrayLike = 0.0,
  method: str = conversions.DEFAULT_METHOD,
) -> tuple[jax.Array, jax.Array]:
  """Certified steps to reach (ε_dp, δ)-unlearning, best order from the ledger's grid (theory §4).

  The theorem at order α needs P(x, 4α). To stay exact (no interpolation between orders) the candidate
  orders are α = o/4 for every grid order o > 4, so P(x, 4α) = ``ledger_realized[:, j]`` exactly. At
  each candidate the Rényi target is the ε at which the RDP → DP conversion of
  ``accounting.conversions`` gives (ε_dp, δ) (``renyi_target``; the improved conversion by default, the
  one ``rdp_to_dp`` uses); k*(x) is the minimum over candidates of :func:`steps_to_unlearn` (+inf where
  no candidate has ε > E₂).

  Args:
    ledger_realized: P(x, o) on the grid, shape (n, K) (a ``Ledger.realized``).
    orders: the grid, shape (K,), all > 1; needs at least one order > 4.
    epsilon: ε_dp > 0.
    delta: δ in (0, 1).
    step_size: η > 0.
    temperature: τ > 0.
    lsi_constant: C_LSI > 0 (scalar, or shape (K,) giving C_LSI per candidate in grid position).
    e1: E₁ ≥ 0, scalar or shape (K,): entry j is E₁ at α = orders[j]/4.
    e2: E₂ ≥ 0, scalar or shape (K,), indexed like ``e1``.
    method: the RDP → (ε, δ) conversion ("improved" or "classic").

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
    ([66.0, 250.0], [8.0, 8.0])
  """
  orders_np = _checks.check_orders(orders)
  _checks.check_positive("epsilon", epsilon)
  _checks.check_probability("delta", delta)
  realized = _float(ledger_realized)
  if realized.ndim != 2 or realized.shape[1] != orders_np.shape[0]:
    raise ValueError(f"ledger_realized must have shape (n, {orders_np.shape[0]}) to match orders, got {realized.shape}")
  idx, alphas = _quarter_orders(orders_np)
  if idx.size == 0:
    raise ValueError(
      f"orders must contain an order > 4 (P is needed at 4*alpha with alpha > 1), got {orders_np.tolist()}"
    )

  def per_grid(v):
    v = _float(v)
    return v[idx] if v.ndim == 1 and v.shape[0] == orders_np.shape[0] else v

  p = realized[:, idx]  # (n, J)
  alphas_j = jnp.asarray(alphas, dtype=realized.dtype)
  targets = conversions.renyi_target(epsilon, alphas_j, delta, method).astype(realized.dtype)  # (J,)
  e2j = per_grid(e2)
  slack_ok = targets > e2j
  safe_targets = jnp.where(slack_ok, targets, jnp.inf)  # inf target -> 0 steps; masked below
  k = steps_to_unlearn(
    p,
    safe_targets,
    alpha=alphas_j,
    step_size=step_size,
    temperature=temperature,
    lsi_constant=per_grid(lsi_constant),
    e1=per_grid(e1),
    e2=e2j,
  )
  k = jnp.where(slack_ok, k, jnp.inf)
  best = jnp.argmin(k, axis=1)
  return jnp.min(k, axis=1), alphas_j[best]


@guarded
def group_steps_to_unlearn(
  privacy_loss_4alpha: ArrayLike,
  forget_indices: ArrayLike,
  epsilon: ArrayLike,
  *,
  alpha: ArrayLike,
  step_size: ArrayLike,
  temperature: ArrayLike,
  lsi_constant: ArrayLike,
  e1: ArrayLike = 0.0,
  e2: ArrayLike = 0.0,
  fixed_denominator: bool = False,
) -> jax.Array:
  """Certified steps to unlearn a whole forget set F: :func:`steps_to_unlearn` at P(F, 4α).

  D' = D minus F; P(F, 4α) ≤ k((n−1)/(n−k))² Σ_{x∈F} P(x, 4α) with the mean over the data set, or
  k Σ_{x∈F} P(x, 4α) with a fixed denominator (theory §3, full batch; ``accounting.group_privacy_loss``);
  E₁, E₂, C_LSI must be those of the D' chain.

  Args:
    privacy_loss_4alpha: P(x, 4α) for all n examples, shape (n,).
    forget_indices: indices of F.
    epsilon: ε > 0.
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
  p_group = ledger.group_privacy_loss(p[:, None], forget_indices, fixed_denominator=fixed_denominator)[0]
  return steps_to_unlearn(
    p_group, epsilon, alpha=alpha, step_size=step_size, temperature=temperature, lsi_constant=lsi_constant, e1=e1, e2=e2
  )
