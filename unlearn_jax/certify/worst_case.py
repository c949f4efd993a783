"""Chien et al.'s worst-case unlearning certificate, the baseline of the per-instance one (theory §4).

For an m-strongly convex loss with gradients clipped at C, removing S of n examples is undone after K
noisy fine-tuning steps with ε(α, K) = exp(−Kmη/α) · 4αS²C²/(mτn²), the same K for every example. Both
functions are pure ``jax.numpy`` (they compose with ``jit``, ``vmap`` and ``grad``), evaluated in log
space, and share the input checks of :mod:`~unlearn_jax.certify.bounds`.
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax._traced import guarded
from unlearn_jax.certify.bounds import _check_alpha, _check_nonneg_int, _float

__all__ = ["worst_case_epsilon", "worst_case_steps"]


def _log(x: ArrayLike) -> jax.Array:
  """log x; a concrete x is taken in float64 first, so that a value outside float32's range (τ = 1e-50)
  has its true, finite logarithm rather than log(0) = −inf."""
  if _checks._is_traced(x) or isinstance(x, jax.Array):
    return jnp.log(_float(x))
  return _float(np.log(np.asarray(x, np.float64)))


def _worst_case_log_epsilon0(alpha, m, temperature, num_removed, clip_norm, num_examples, expand=lambda v: v):
  """log ε(α, 0) = log(4 α S² C² / (m τ n²)), in log space: no overflow for tiny τ or m (``expand``
  broadcasts the logs of m, τ and C against the orders)."""
  log_c, log_m, log_tau = expand(_log(clip_norm)), expand(_log(m)), expand(_log(temperature))
  return jnp.log(4.0 * alpha) + 2.0 * _log(num_removed) + 2.0 * log_c - log_m - log_tau - 2.0 * _log(num_examples)


def _check_worst_case(m, step_size, temperature, num_removed, clip_norm, num_examples):
  for name, v in (
    ("m", m),
    ("step_size", step_size),
    ("temperature", temperature),
    ("num_removed", num_removed),
    ("clip_norm", clip_norm),
    ("num_examples", num_examples),
  ):
    _checks.check_positive(name, v)
  if not (_checks._is_traced(num_removed) or _checks._is_traced(num_examples)) and np.any(
    np.asarray(num_removed) > np.asarray(num_examples)
  ):
    raise ValueError(
      f"num_removed must not exceed the training-set size num_examples = {num_examples!r}, got {num_removed!r}"
    )


@guarded
def worst_case_epsilon(
  alpha: ArrayLike,
  num_steps: ArrayLike,
  *,
  m: ArrayLike,
  step_size: ArrayLike,
  temperature: ArrayLike,
  num_removed: ArrayLike,
  clip_norm: ArrayLike,
  num_examples: ArrayLike,
) -> jax.Array:
  """Chien et al.'s worst-case Rényi unlearning ε(α, K) = exp(−Kmη/α) · 4αS²C²/(mτn²) (theory §4).

  Evaluated in log space (a value beyond the dtype's range is +inf, never a wrong finite number).

  Args:
    alpha: order α > 1.
    num_steps: fine-tuning steps K ≥ 0.
    m: strong convexity of L_{D'} > 0.
    step_size: η > 0.
    temperature: τ > 0 (their σ²).
    num_removed: S ≥ 1 removed points.
    clip_norm: gradient clip (or per-example gradient norm bound) C > 0.
    num_examples: training set size n > 0.

  Returns:
    ε(α, K), broadcast over the inputs.

  Raises:
    ValueError: α ≤ 1, K < 0, or a non-positive constant.

  Examples:
    >>> round(float(worst_case_epsilon(2., 0, m=1., step_size=0.1, temperature=1., num_removed=1,
    ...                                clip_norm=1., num_examples=10)), 6)
    0.08
  """
  _check_alpha(alpha)
  _check_nonneg_int("num_steps", num_steps)
  _check_worst_case(m, step_size, temperature, num_removed, clip_norm, num_examples)
  alpha = _float(alpha)
  log_eps0 = _worst_case_log_epsilon0(alpha, m, temperature, num_removed, clip_norm, num_examples)
  return jnp.exp(log_eps0 - _float(num_steps) * m * step_size / alpha)


@guarded
def worst_case_steps(
  epsilon: ArrayLike,
  *,
  orders: ArrayLike,
  m: ArrayLike,
  step_size: ArrayLike,
  temperature: ArrayLike,
  num_removed: ArrayLike,
  clip_norm: ArrayLike,
  num_examples: ArrayLike,
) -> jax.Array:
  """Chien et al.'s K: the least integer K ≥ 0 with min over ``orders`` of ε(α, K) ≤ ``epsilon``.

  Per order K_α = max(0, ceil((α/(mη)) (log ε(α, 0) − log ε))); K = min_α K_α, from logarithms, so a
  tiny τ or m gives a large finite K (or +inf past the dtype's range), never an overflowed ε compared
  with anything. To compare with the per-instance k* at a fixed (α, ε), pass ``orders=[alpha]``.

  Args:
    epsilon: the Rényi target ε > 0 (broadcasts with ``m`` etc.).
    orders: candidate orders, shape (K,), all > 1.
    m: strong convexity > 0.
    step_size: η > 0.
    temperature: τ > 0.
    num_removed: S ≥ 1.
    clip_norm: C > 0.
    num_examples: training set size n.

  Returns:
    K as a float whole number, shape of the broadcast of ``epsilon`` / m / ... (orders reduced).

  Raises:
    ValueError: on bad orders or a non-positive constant.

  Examples:
    >>> float(worst_case_steps(0.01, orders=[2., 4.], m=1., step_size=0.1, temperature=1.,
    ...                        num_removed=1, clip_norm=1., num_examples=10))
    42.0
  """
  orders_np = _checks.check_orders(orders)
  _checks.check_positive("epsilon", epsilon)
  _check_worst_case(m, step_size, temperature, num_removed, clip_norm, num_examples)
  a = jnp.asarray(orders_np)
  expand = lambda v: jnp.expand_dims(_float(v), -1)  # noqa: E731
  log_eps0 = _worst_case_log_epsilon0(a, m, temperature, num_removed, clip_norm, num_examples, expand=expand)
  k_alpha = jnp.maximum(0.0, jnp.ceil(a / (expand(m) * expand(step_size)) * (log_eps0 - jnp.log(expand(epsilon)))))
  return jnp.min(k_alpha, axis=-1)
