"""RDP → (ε, δ)-DP: the classic bound (Mironov 2017, Prop. 3) and the improved one of Canonne, Kamath,
Steinke 2020 (arXiv 2004.00010, Prop. 12) that ``dp_accounting`` uses, minimised over the orders."""

from __future__ import annotations

from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks

__all__ = ["max_steps_for_epsilon", "rdp_to_dp"]

def _check_delta(delta: Any) -> None:
  _checks.check_probability("delta", delta, open_low=True, open_high=True)


def rdp_to_dp(
    rdp: ArrayLike,
    orders: ArrayLike | Sequence[float],
    delta: ArrayLike,
    method: str = "improved",
) -> tuple[jax.Array, jax.Array]:
  """Converts RDP curves to (ε, δ)-DP, minimising over the orders.

  - ``"classic"`` (Mironov 2017, Prop. 3): ``ε = min_α rdp(α) + log(1/δ)/(α−1)``.
  - ``"improved"`` (Canonne, Kamath, Steinke 2020, arXiv 2004.00010, Prop. 12; as
    ``dp_accounting.rdp.compute_epsilon``): ``ε = rdp + log1p(−1/α) − log(δα)/(α−1)`` for α > 1.01,
    ε = 0 when ``δ² + expm1(−rdp) > 0`` (KL bound), clipped at 0.

  Args:
    rdp: RDP values, shape (..., K); may be inf (gives ε = inf when every order is inf).
    orders: orders > 1, shape (K,).
    delta: δ ∈ (0, 1).
    method: "improved" (default) or "classic".

  Returns:
    ``(eps, best_order)``, each of shape (...).

  Raises:
    ValueError: on orders ≤ 1, δ ∉ (0, 1), a bad method or mismatched K.

  Examples:
    >>> import jax.numpy as jnp
    >>> eps, a = rdp_to_dp(jnp.array([0.5, 1.0]), [2.0, 4.0], 1e-5, method="classic")
    >>> round(float(eps), 4), float(a)
    (4.8377, 4.0)
  """
  orders_np = _checks.check_orders(orders)
  _check_delta(delta)
  _checks.check_choice("method", method, ("improved", "classic"))
  if not _checks._is_traced(rdp):
    rdp_np = np.asarray(rdp, dtype=float)
    if np.any(np.isnan(rdp_np)) or np.any(rdp_np < 0):
      raise ValueError("rdp must be non-negative Renyi losses (+inf allowed), got "
                       f"{int(np.sum(np.isnan(rdp_np)))} NaN and {int(np.sum(rdp_np < 0))} negative value(s), "
                       f"e.g. {rdp_np[np.isnan(rdp_np) | (rdp_np < 0)][:3].tolist()}")
  rdp = jnp.asarray(rdp)
  if rdp.shape[-1:] != (orders_np.shape[0],):
    raise ValueError(f"rdp must have a last axis of size K = {orders_np.shape[0]} (one per order), got {rdp.shape}")
  dtype = jnp.result_type(rdp.dtype, float)
  rdp = rdp.astype(dtype)
  a = jnp.asarray(orders_np, dtype)
  delta = jnp.asarray(delta, dtype)
  if method == "classic":
    eps = rdp - jnp.log(delta) / (a - 1.0)
    eps = jnp.where(jnp.isnan(eps), jnp.inf, eps)
  else:
    general = rdp + jnp.log1p(-1.0 / a) - jnp.log(delta * a) / (a - 1.0)
    general = jnp.where(a > 1.01, general, jnp.inf)
    kl_ok = delta**2 + jnp.expm1(-jnp.where(jnp.isfinite(rdp), rdp, 0.0)) > 0
    kl_ok = kl_ok & jnp.isfinite(rdp)
    eps = jnp.where(rdp < 0, 0.0, jnp.where(kl_ok, 0.0, general))
    eps = jnp.where(jnp.isnan(eps), jnp.inf, eps)
  idx = jnp.argmin(eps, axis=-1)
  best = jnp.take_along_axis(eps, idx[..., None], axis=-1)[..., 0]
  return jnp.maximum(best, 0.0), a[idx]


def max_steps_for_epsilon(
    step_rdp: ArrayLike,
    orders: ArrayLike | Sequence[float],
    epsilon: float,
    delta: float,
    method: str = "improved",
) -> jax.Array:
  """Largest number of identical steps T with ``rdp_to_dp(T · step_rdp) ≤ ε`` (a ``dp_to_steps`` helper).

  Uses the closed form per order (ε(T) is affine in T for each order); the KL branch of the improved
  conversion is ignored, so the answer is a valid (possibly one-off conservative) count.

  Args:
    step_rdp: one step's RDP, shape (..., K), ≥ 0.
    orders: orders > 1, shape (K,).
    epsilon: target ε > 0.
    delta: δ ∈ (0, 1).
    method: "improved" or "classic".

  Returns:
    int array of shape (...) (0 if even one step exceeds ε; a large value if a step costs nothing).

  Examples:
    >>> int(max_steps_for_epsilon([0.5], [2.0], 10.0, 1e-5, method="classic"))
    0
    >>> int(max_steps_for_epsilon([0.01], [32.0], 2.0, 1e-5, method="classic"))
    162
  """
  orders_np = _checks.check_orders(orders)
  _check_delta(delta)
  _checks.check_positive("epsilon", epsilon)
  _checks.check_choice("method", method, ("improved", "classic"))
  r = jnp.asarray(step_rdp)
  dtype = jnp.result_type(r.dtype, float)
  r = r.astype(dtype)
  a = jnp.asarray(orders_np, dtype)
  if method == "classic":
    offset = -jnp.log(delta) / (a - 1.0)
  else:
    offset = jnp.log1p(-1.0 / a) - jnp.log(delta * a) / (a - 1.0)
    offset = jnp.where(a > 1.01, offset, jnp.inf)
  room = epsilon - offset
  big = jnp.asarray(2**31 - 1, dtype)
  t = jnp.where(r > 0, jnp.floor(room / jnp.where(r > 0, r, 1.0)), jnp.where(room >= 0, big, 0.0))
  t = jnp.clip(jnp.where(room >= 0, t, 0.0), 0.0, big)
  return jnp.max(t, axis=-1).astype(jnp.int32)

