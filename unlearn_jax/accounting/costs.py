"""Per-step per-instance Rényi costs ε_t(x; α) (THEORY §2a, §2b) and their worst cases.

- :func:`full_batch_costs`: §2a, the mean over the data set, α η ‖g_t(x) − ḡ_t‖² / (4 τ (N−1)²), from the
  squared distances to the clipped mean (computed without per-example gradients, see
  ``per_example.centered_sq_norms``).
- :func:`poisson_costs`: §2b, RDP_SGM(q, z_t(x), α) with z_t(x) = b·sqrt(2τ/η)/‖g_t(x)‖, charged as its
  monotone envelope in the order; q = 1 is the fixed-denominator full batch of the certified filter.
- the ``*_worst_case_cost`` functions replace the per-example quantity by its bound (2C resp. C).
"""

from __future__ import annotations

import math
from typing import Any, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax.accounting.sgm import DEFAULT_NUM_TERMS, _static_orders, monotone_in_order, sampled_gaussian_rdp

__all__ = ["full_batch_costs", "full_batch_worst_case_cost", "poisson_costs", "poisson_worst_case_cost"]

def _check_step(step_size: Any, temperature: Any) -> None:
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("temperature", temperature)


def full_batch_costs(
    sq_dist: ArrayLike,
    num_active: ArrayLike,
    orders: ArrayLike | Sequence[float],
    step_size: ArrayLike,
    temperature: ArrayLike,
) -> jax.Array:
  """THEORY §2a: ``ε_t(x; α) = α η ‖g_t(x) − ḡ_t‖² / (4 τ (N−1)²)`` for every example.

  ``sq_dist[i] = ‖g_i − ḡ‖²`` with ḡ the clipped mean over the N active examples (the sgld step
  obtains it from clipped norms and one jvp, never materialising per-example gradients). Examples
  that are not active should be given ``sq_dist = 0`` (they cost nothing). N ≤ 1 gives ``inf``.

  Args:
    sq_dist: squared distances to the clipped mean, shape (n,).
    num_active: N, the number of examples in the mean (may be traced).
    orders: Rényi orders, shape (K,).
    step_size: η > 0.
    temperature: τ > 0 (the accounting temperature when training noise-free).

  Returns:
    Costs of shape (n, K).

  Raises:
    ValueError: if η ≤ 0, τ ≤ 0 or an order is ≤ 1 (concrete inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> full_batch_costs(jnp.array([4.0, 0.0]), 3, [2.0], 0.5, 0.25).tolist()
    [[1.0], [0.0]]
  """
  orders = _checks.check_orders(orders)
  _check_step(step_size, temperature)
  if not _checks._is_traced(sq_dist) and np.any(np.asarray(sq_dist, dtype=float) < 0):
    raise ValueError(f"sq_dist must be non-negative squared distances ||g_i - gbar||^2, got "
                     f"{np.asarray(sq_dist, dtype=float)[np.asarray(sq_dist, dtype=float) < 0][:3].tolist()}")
  d = jnp.asarray(sq_dist)
  dtype = jnp.result_type(d.dtype, float)
  nm1 = jnp.asarray(num_active, dtype) - 1.0
  scale = jnp.asarray(step_size, dtype) / (4.0 * jnp.asarray(temperature, dtype) * nm1**2)
  scale = jnp.where(nm1 > 0, scale, jnp.inf)
  return jnp.asarray(orders, dtype)[None, :] * (d.astype(dtype) * scale)[..., None]


def full_batch_worst_case_cost(
    clip_norm: ArrayLike,
    num_examples: ArrayLike,
    orders: ArrayLike | Sequence[float],
    step_size: ArrayLike,
    temperature: ArrayLike,
) -> jax.Array:
  """THEORY §2a with ``‖g_t(x) − ḡ_t‖`` replaced by 2C: ``α η C² / (τ (N−1)²)``.

  Args:
    clip_norm: C > 0 (inf gives inf: unclipped gradients have no worst case).
    num_examples: N, number of examples in the mean.
    orders: Rényi orders, shape (K,).
    step_size: η > 0.
    temperature: τ > 0.

  Returns:
    Array of shape (K,).

  Raises:
    ValueError: on C ≤ 0, η ≤ 0, τ ≤ 0 or an order ≤ 1.

  Examples:
    >>> full_batch_worst_case_cost(1.0, 3, [2.0], 0.5, 0.25).tolist()
    [1.0]
  """
  _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
  c = jnp.asarray(clip_norm, jnp.result_type(float))
  return full_batch_costs(jnp.reshape((2.0 * c) ** 2, (1,)), num_examples, orders, step_size, temperature)[0]


def _poisson_noise_multiplier(norms, q, denominator, step_size, temperature, dtype):
  norms = jnp.asarray(norms, dtype)
  noise_std = jnp.asarray(denominator, dtype) * jnp.sqrt(
      2.0 * jnp.asarray(temperature, dtype) / jnp.asarray(step_size, dtype)
  )
  pos = norms > 0
  return jnp.where(pos, noise_std / jnp.where(pos, norms, 1.0), jnp.inf)


def poisson_costs(
    norms: ArrayLike,
    q: ArrayLike,
    denominator: ArrayLike,
    orders: ArrayLike | Sequence[float],
    step_size: ArrayLike,
    temperature: ArrayLike,
    *,
    num_terms: int = DEFAULT_NUM_TERMS,
) -> jax.Array:
  """THEORY §2b: ``ε_t(x; α) = RDP_SGM(q, z_t(x), α)``, ``z_t(x) = b·sqrt(2τ/η) / ‖g_t(x)‖``.

  ``norms`` are the CLIPPED per-example gradient norms ``min(‖∇ℓ_i‖, C)``; a norm of 0 costs 0.

  Args:
    norms: clipped norms, shape (n,).
    q: sampling rate in (0, 1].
    denominator: b, the fixed denominator of the gradient estimate (q·n).
    orders: Rényi orders (concrete), shape (K,).
    step_size: η > 0.
    temperature: τ > 0.
    num_terms: see :func:`sampled_gaussian_rdp`.

  Returns:
    Costs of shape (n, K).

  Raises:
    ValueError: on bad q, b ≤ 0, η ≤ 0, τ ≤ 0, orders ≤ 1 or negative norms (concrete inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> c = poisson_costs(jnp.array([0.0, 1.0]), 1.0, 2.0, [2.0], 2.0, 1.0)  # z = 2
    >>> c.round(6).tolist()
    [[0.0], [0.25]]
  """
  _checks.check_positive("denominator", denominator)
  _check_step(step_size, temperature)
  _checks.check_nonnegative("norms", norms, allow_inf=True)
  dtype = jnp.result_type(jnp.asarray(norms).dtype, float)
  z = _poisson_noise_multiplier(norms, q, denominator, step_size, temperature, dtype)
  orders_t = _static_orders(orders, "poisson_costs")
  return monotone_in_order(sampled_gaussian_rdp(q, z, orders_t, num_terms=num_terms), orders_t)


def poisson_worst_case_cost(
    clip_norm: ArrayLike,
    q: ArrayLike,
    denominator: ArrayLike,
    orders: ArrayLike | Sequence[float],
    step_size: ArrayLike,
    temperature: ArrayLike,
    *,
    num_terms: int = DEFAULT_NUM_TERMS,
) -> jax.Array:
  """THEORY §2b with ‖g_t(x)‖ replaced by C: the DP-SGD cost ``RDP_SGM(q, b·sqrt(2τ/η)/C, α)``.

  Args:
    clip_norm: C > 0.
    q: sampling rate in (0, 1].
    denominator: b > 0.
    orders: Rényi orders (concrete), shape (K,).
    step_size: η > 0.
    temperature: τ > 0.
    num_terms: see :func:`sampled_gaussian_rdp`.

  Returns:
    Array of shape (K,).

  Raises:
    ValueError: on C ≤ 0 or any bad input of :func:`poisson_costs`.

  Examples:
    >>> poisson_worst_case_cost(1.0, 1.0, 2.0, [2.0], 2.0, 1.0).round(6).tolist()
    [0.25]
    >>> poisson_worst_case_cost(float("inf"), 0.5, 2.0, [2.0], 2.0, 1.0).tolist()  # unclipped: no worst case
    [inf]
  """
  _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
  c = jnp.reshape(jnp.asarray(clip_norm, jnp.result_type(float)), (1,))
  if not _checks._is_traced(clip_norm) and math.isinf(float(np.asarray(clip_norm))):
    # Unclipped gradients have no worst case (as in full_batch_worst_case_cost): +inf, never NaN.
    cost = poisson_costs(jnp.ones_like(c), q, denominator, orders, step_size, temperature, num_terms=num_terms)[0]
    return jnp.full_like(cost, jnp.inf)
  return poisson_costs(c, q, denominator, orders, step_size, temperature, num_terms=num_terms)[0]

