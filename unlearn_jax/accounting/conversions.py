"""RDP → (ε, δ)-DP, and back: one conversion for the ledger, the certificates and the reports.

- ``"improved"`` (the default everywhere; Canonne, Kamath, Steinke 2020, arXiv 2004.00010, Prop. 12, as
  ``dp_accounting.rdp.compute_epsilon``): ``ε = rdp + log1p(−1/α) − log(δα)/(α−1)`` for α > 1.01, and
  ε = 0 where the KL bound ``δ² + expm1(−rdp) > 0`` already gives it;
- ``"classic"`` (Mironov 2017, Prop. 3): ``ε = rdp + log(1/δ)/(α−1)``.

:func:`dp_offset` is the term added to the RDP at one order; :func:`rdp_to_dp` minimises over the
orders, :func:`renyi_target` inverts the conversion at one order (the Rényi ε a certificate must reach for
an (ε, δ) target) and :func:`max_steps_for_epsilon` solves it for a number of identical steps.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax._compile import call
from unlearn_jax._traced import guarded

__all__ = ["DEFAULT_METHOD", "METHODS", "dp_offset", "max_steps_for_epsilon", "rdp_to_dp", "renyi_target"]

METHODS = ("improved", "classic")
DEFAULT_METHOD = "improved"


def _check_delta(delta: Any) -> None:
  _checks.check_probability("delta", delta, open_low=True, open_high=True)


@guarded
def dp_offset(orders: ArrayLike, delta: ArrayLike, method: str = DEFAULT_METHOD) -> jax.Array:
  """The term the conversion adds to the RDP at each order: ε(α) = rdp(α) + offset(α).

  Args:
    orders: orders α > 1, any shape (traced allowed).
    delta: δ ∈ (0, 1).
    method: "improved" (+inf for α ≤ 1.01, as ``dp_accounting``) or "classic".

  Returns:
    The offsets, shaped like ``orders``.

  Examples:
    >>> round(float(dp_offset(2.0, 1e-5, "classic")), 4)   # log(1e5)
    11.5129
    >>> round(float(dp_offset(2.0, 1e-5)), 4)               # log(1/2) - log(2e-5)
    10.1266
  """
  _checks.check_choice("method", method, METHODS)
  a = jnp.asarray(orders, jnp.result_type(jnp.asarray(orders).dtype, float))
  delta = jnp.asarray(delta, a.dtype)
  if method == "classic":
    return -jnp.log(delta) / (a - 1.0)
  return jnp.where(a > 1.01, jnp.log1p(-1.0 / a) - jnp.log(delta * a) / (a - 1.0), jnp.inf)


@guarded
def rdp_to_dp(
  rdp: ArrayLike,
  orders: ArrayLike | Sequence[float],
  delta: ArrayLike,
  method: str = DEFAULT_METHOD,
) -> tuple[jax.Array, jax.Array]:
  """Converts RDP curves to (ε, δ)-DP, minimising over the orders (module docstring).

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
  _checks.check_choice("method", method, METHODS)
  if not _checks._is_traced(rdp):
    rdp_np = np.asarray(rdp, dtype=float)
    if np.any(np.isnan(rdp_np)) or np.any(rdp_np < 0):
      raise ValueError(
        "rdp must be non-negative Renyi losses (+inf allowed), got "
        f"{int(np.sum(np.isnan(rdp_np)))} NaN and {int(np.sum(rdp_np < 0))} negative value(s), "
        f"e.g. {rdp_np[np.isnan(rdp_np) | (rdp_np < 0)][:3].tolist()}"
      )
  rdp = jnp.asarray(rdp)
  if rdp.shape[-1:] != (orders_np.shape[0],):
    raise ValueError(f"rdp must have a last axis of size K = {orders_np.shape[0]} (one per order), got {rdp.shape}")
  dtype = jnp.result_type(rdp.dtype, float)
  return call(_rdp_to_dp_core, (method,), rdp.astype(dtype), jnp.asarray(orders_np, dtype), delta)


def _rdp_to_dp_core(method: str, rdp: jax.Array, a: jax.Array, delta: ArrayLike) -> tuple[jax.Array, jax.Array]:
  dtype = rdp.dtype
  eps = rdp + dp_offset(a, delta, method)
  if method == "improved":
    kl_ok = (jnp.asarray(delta, dtype) ** 2 + jnp.expm1(-jnp.where(jnp.isfinite(rdp), rdp, 0.0)) > 0) & jnp.isfinite(
      rdp
    )
    eps = jnp.where(rdp < 0, 0.0, jnp.where(kl_ok, 0.0, eps))
  eps = jnp.where(jnp.isnan(eps), jnp.inf, eps)
  idx = jnp.argmin(eps, axis=-1)
  best = jnp.take_along_axis(eps, idx[..., None], axis=-1)[..., 0]
  return jnp.maximum(best, 0.0), a[idx]


@guarded
def renyi_target(epsilon: ArrayLike, alpha: ArrayLike, delta: ArrayLike, method: str = DEFAULT_METHOD) -> jax.Array:
  """The Rényi ε at order α whose conversion gives (``epsilon``, δ)-DP: ``epsilon − dp_offset(α, δ)``.

  A value ≤ 0 (or −inf) means the (ε, δ) target cannot be reached at that order. The KL branch of the
  improved conversion is not inverted (the target is then conservative).

  Examples:
    >>> round(float(renyi_target(2.0, 8.0, 1e-5, "classic")), 4)   # 2 - log(1e5)/7
    0.3553
  """
  _check_delta(delta)
  return jnp.asarray(epsilon, jnp.result_type(float)) - dp_offset(alpha, delta, method)


@guarded
def max_steps_for_epsilon(
  step_rdp: ArrayLike,
  orders: ArrayLike | Sequence[float],
  epsilon: float,
  delta: float,
  method: str = DEFAULT_METHOD,
) -> jax.Array:
  """Largest number of identical steps T with ``rdp_to_dp(T · step_rdp) ≤ ε``.

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
  r = jnp.asarray(step_rdp)
  dtype = jnp.result_type(r.dtype, float)
  r = r.astype(dtype)
  room = renyi_target(epsilon, jnp.asarray(orders_np, dtype), delta, method).astype(dtype)
  big = jnp.asarray(2**31 - 1, dtype)
  t = jnp.where(r > 0, jnp.floor(room / jnp.where(r > 0, r, 1.0)), jnp.where(room >= 0, big, 0.0))
  t = jnp.clip(jnp.where(room >= 0, t, 0.0), 0.0, big)
  return jnp.max(t, axis=-1).astype(jnp.int32)
