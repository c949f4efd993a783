"""The sampled Gaussian mechanism's Rényi DP (theory §2b; Mironov, Talwar, Zhang 2019), in jax.numpy.

:func:`sampled_gaussian_rdp` is vectorised over a batch of noise multipliers (one per example) and
computed in log space. Integer orders use the exact binomial expansion; fractional orders use the series
of MTZ19 §3.3 in the form ``dp_accounting`` evaluates it (absolute values of the generalised binomial
coefficients, which makes every term positive and the result an upper bound on the exact value),
truncated after at most ``num_terms`` terms per order plus a bound or a quadrature estimate of the rest
(:mod:`unlearn_jax.accounting.sgm_fractional`), instead of ``dp_accounting``'s convergence loop (which
gives up with ``inf`` after 1,000 terms, e.g. at q = 0.5 for every noise multiplier).
:func:`monotone_in_order` is the envelope the ledger charges; :func:`gaussian_rdp` the plain Gaussian
mechanism. ``method="exact"`` replaces the fractional orders' upper bound by the exact value
(:mod:`unlearn_jax.accounting.sgm_exact`, a quadrature of A_α − 1).

Precision: under ``jax_enable_x64`` the sampled Gaussian RDP equals the |binomial| series evaluated at
40 digits to ~1e-9 relative (tests), and ``dp_accounting`` wherever ``dp_accounting``'s own float64
evaluation is accurate: at integer orders to ~1e-12; at fractional orders ``dp_accounting`` sums the
same |binomial| series but loses up to ~4e-3 relative in float64 (and answers ``inf`` where its loop
gives up), so there the 40-digit value is the reference. The |binomial| series is an upper bound on the
exact RDP and is not monotone in α; the ledger's costs are its monotone envelope, sound because RDP is
non-decreasing in α. In float32 (the default dtype) expect ~1e-5 relative, and an absolute floor of
~1e-7·(α−1)⁻¹ on the RDP value, since log A_α is computed to float32 precision. Use float64 for
accounting (``jax.enable_x64``) when the per-step costs are tiny (q ≪ 1, large noise multipliers).
"""

from __future__ import annotations

import functools
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy import special as _sp_special

from unlearn_jax import _checks
from unlearn_jax._traced import guarded
from unlearn_jax.accounting import sgm_exact
from unlearn_jax.accounting.sgm_fractional import (
  _BLOCK,
  _fast_frac_ok,
  _frac_core,
  _frac_core_fast,
  _frac_fast_layout,
  _FracPlan,
)

__all__ = [
  "DEFAULT_NUM_TERMS",
  "DEFAULT_ORDERS",
  "METHODS",
  "gaussian_rdp",
  "monotone_in_order",
  "sampled_gaussian_rdp",
]

# dp_accounting's RdpAccountant default orders (dp_accounting/rdp/rdp_privacy_accountant.py,
# DEFAULT_RDP_ORDERS, "chosen to give good coverage for Gaussian mechanism in the privacy regime of
# interest"): 1.1, 1.2, ..., 10.9, then 11, ..., 63, then 128, 256, 512, 1024 (156 orders). Written
# with the same expression so that every float is bit-for-bit the same.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
  [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(11, 64)] + [128.0, 256.0, 512.0, 1024.0]
)


# The evaluations of the fractional orders: dp_accounting's |binomial| series (an upper bound) or exact.
METHODS: tuple[str, ...] = ("dp_accounting", "exact")

# Terms of the fractional-order series summed per order (see sampled_gaussian_rdp).
DEFAULT_NUM_TERMS = 1024


# Examples processed at once by sampled_gaussian_rdp when given a large batch of noise multipliers.
_RDP_CHUNK = 512


class _IntGroup(NamedTuple):
  """Integer orders of similar size, summed as one dense (G, kmax - 1) block (terms k = 2..alpha)."""

  index: tuple[int, ...]  # positions in the orders list
  alphas: np.ndarray  # (G,)
  logc: np.ndarray  # (G, kmax - 1) log C(alpha, k), k = 2..kmax, -inf beyond alpha


class _SgmPlan(NamedTuple):
  num_orders: int
  int_groups: tuple[_IntGroup, ...]
  frac: _FracPlan | None
  max_terms: int


@functools.lru_cache(maxsize=64)
def _sgm_plan(orders: tuple[float, ...], max_terms: int) -> _SgmPlan:
  ints: dict[int, list[int]] = {}
  fracs: dict[float, list[int]] = {}
  for idx, a in enumerate(orders):
    if float(a).is_integer():
      ints.setdefault(int(math.ceil(math.log2(a))), []).append(idx)  # sizes within 2x: little padding
    else:
      fracs.setdefault(round(a - math.floor(a), 9), []).append(idx)
  int_groups = []
  for _, idxs in sorted(ints.items()):
    alphas = np.asarray([orders[i] for i in idxs])
    kmax = int(alphas.max())
    k = np.arange(2, kmax + 1, dtype=np.float64)
    with np.errstate(invalid="ignore"):
      logc = (
        _sp_special.gammaln(alphas[:, None] + 1)
        - _sp_special.gammaln(k + 1)
        - _sp_special.gammaln(alphas[:, None] - k + 1)
      )
    logc = np.where(k[None, :] <= alphas[:, None], logc, -np.inf)
    int_groups.append(_IntGroup(tuple(idxs), alphas, logc))
  frac = None
  if fracs:
    index, alphas, shifts, gather = [], [], [], []
    for f, idxs in sorted(fracs.items()):
      ks = [int(math.floor(orders[i])) for i in idxs]
      kmax, kmin = max(ks), min(ks)
      base = len(shifts)
      shifts.extend(f + kmax - t for t in range(_BLOCK + kmax - kmin))  # alpha - i, minus i0
      for i, k in zip(idxs, ks):
        index.append(i)
        alphas.append(orders[i])
        gather.append(base + (kmax - k) + np.arange(_BLOCK))
    frac = _FracPlan(
      tuple(index),
      np.asarray(alphas),
      np.asarray(shifts),
      np.asarray(gather, np.int32),
      _frac_fast_layout(orders, fracs, max_terms),
    )
  return _SgmPlan(len(orders), tuple(int_groups), frac, max_terms)


def _log_expm1(x: jax.Array) -> jax.Array:
  """log(exp(x) - 1) for x > 0, stable for small and large x."""
  return x + jnp.log(-jnp.expm1(-x))


def _int_log_a(plan: _SgmPlan, log_q, log_1mq, inv_2s2, dtype) -> list[tuple[tuple[int, ...], jax.Array]]:
  """Integer orders: log A = log1p(Σ_{k≥2} C(α,k) q^k (1-q)^(α-k) expm1((k²-k)/(2σ²))), exactly.

  Σ_k C(α,k) q^k (1-q)^(α-k) = 1 and the k = 1 term has k² - k = 0, so A - 1 is a sum of positive
  terms: log A keeps full relative precision even when it is ~1e-13 (q small, σ large).
  """
  out = []
  if not plan.int_groups:
    return out
  kmax_all = max(int(g.alphas.max()) for g in plan.int_groups)
  k_all = jnp.arange(2, kmax_all + 1, dtype=dtype)
  log_em1 = _log_expm1((k_all * k_all - k_all)[:, None] * inv_2s2[None, :])  # (kmax-1, m), shared
  for g in plan.int_groups:
    kmax = int(g.alphas.max())
    k = k_all[: kmax - 1]
    base = (
      jnp.asarray(g.logc, dtype) + k[None, :] * log_q + (jnp.asarray(g.alphas, dtype)[:, None] - k[None, :]) * log_1mq
    )
    vals = base[:, :, None] + log_em1[None, : kmax - 1, :]  # (G, kmax-1, m)
    log_a_minus_1 = jax.nn.logsumexp(vals, axis=1)
    out.append((g.index, jnp.logaddexp(0.0, log_a_minus_1)))
  return out


@functools.lru_cache(maxsize=64)
def _log_a_fn(orders: tuple[float, ...], max_terms: int):
  """log A_α(q, σ) for all orders, 0 < q < 1, finite σ > 0 (flat (m,)) -> (K, m); custom jvp."""
  plan = _sgm_plan(orders, max_terms)

  def assemble(parts, dtype, m):
    out = [None] * plan.num_orders
    for index, vals in parts:
      for r, o in enumerate(index):
        out[o] = vals[r]
    return jnp.stack(out) if out else jnp.zeros((0, m), dtype)

  def int_parts(q, sigma):
    dtype = sigma.dtype
    return _int_log_a(plan, jnp.log(q), jnp.log1p(-q), 1.0 / (2.0 * sigma**2), dtype)

  @jax.custom_jvp
  def frac_log_a(q, sigma):
    if _fast_frac_ok(plan):
      return _frac_core_fast(plan, q, sigma, sigma.dtype)
    return _frac_core(plan, q, sigma, sigma.dtype, with_grads=False)[0]

  @frac_log_a.defjvp
  def frac_log_a_jvp(primals, tangents):
    q, sigma = primals
    q_dot, sigma_dot = tangents
    log_a, (dq, ds) = _frac_core(plan, q, sigma, sigma.dtype, with_grads=True)
    return log_a, dq * q_dot + ds * sigma_dot[None, :]

  def log_a(q, sigma):
    parts = list(int_parts(q, sigma))
    if plan.frac is not None:
      parts.append((plan.frac.index, frac_log_a(q, sigma)))
    return assemble(parts, sigma.dtype, sigma.shape[0])

  return log_a


def _static_orders(orders: Any, fn: str) -> tuple[float, ...]:
  if isinstance(orders, jax.core.Tracer):
    raise TypeError(f"{fn}: orders must be concrete (a tuple or NumPy array), got a traced array")
  return tuple(float(a) for a in _checks.check_orders(orders))


def _check_rdp_arguments(q, noise_multiplier, orders, num_terms, method) -> tuple[float, ...]:
  """The checks of :func:`sampled_gaussian_rdp` (concrete inputs); returns the orders as a tuple."""
  _checks.check_probability("q", q, open_low=True, open_high=False)
  _checks.check_positive("noise_multiplier", noise_multiplier, allow_inf=True)
  orders_t = _static_orders(orders, "sampled_gaussian_rdp")
  if not isinstance(num_terms, (int, np.integer)) or isinstance(num_terms, bool) or num_terms < 1:
    raise ValueError(f"num_terms must be a positive int, got {num_terms!r}")
  if method not in METHODS:
    raise ValueError(f"method must be one of {METHODS}, got {method!r}")
  return orders_t


def _log_a_in_sorted_chunks(log_a_fn: Callable, q: jax.Array, z: jax.Array) -> jax.Array:
  """(K, m) log A of many examples in chunks of similar noise multipliers: the fractional series then
  stops (and skips its quadrature tail) per chunk as early as its own examples allow, instead of
  waiting for the slowest of a mix."""
  m = z.shape[0]
  perm = jnp.argsort(z)
  pad = (-m) % _RDP_CHUNK
  zc = jnp.concatenate([z[perm], jnp.ones((pad,), z.dtype)]).reshape(-1, _RDP_CHUNK)
  log_a = jax.lax.map(lambda zz: log_a_fn(q, zz), zc)  # (C, K, chunk)
  log_a = jnp.moveaxis(log_a, 1, 0).reshape(log_a.shape[1], -1)[:, :m]
  return jnp.take(log_a, jnp.argsort(perm), axis=1)  # back to the caller's order


@guarded
def sampled_gaussian_rdp(
  q: ArrayLike,
  noise_multiplier: ArrayLike,
  orders: ArrayLike | Sequence[float] = DEFAULT_ORDERS,
  *,
  num_terms: int = DEFAULT_NUM_TERMS,
  method: str = "dp_accounting",
) -> jax.Array:
  """RDP of the Poisson-subsampled Gaussian mechanism (theory §2b; Mironov, Talwar, Zhang 2019).

  For sampling rate q and noise multiplier z (noise std / sensitivity), order α:
  integer α: ``(1/(α−1)) log Σ_{k=0..α} C(α,k) (1−q)^{α−k} q^k exp((k²−k)/(2z²))``;
  fractional α: ``(1/(α−1)) log(A₀ + A₁)`` with the two series of MTZ19 §3.3 (as ``dp_accounting``
  evaluates them: absolute binomial coefficients), summed in blocks of 16 terms until the rest is
  negligible (a rigorous bound on it is added) or smooth enough to be integrated (a quadrature
  estimate, ≲ 1e-6 of the result, is added), at most ``num_terms`` terms. Each block is evaluated as
  matrix products — a term factors into (order, term) × (term, example) parts, so one exponential per
  (term, example) serves all orders — and large batches are processed in chunks sorted by z.
  q = 1 gives exactly ``α/(2z²)``; z = ∞ (zero sensitivity) gives 0. All in log space.

  Differentiable in ``q`` and ``noise_multiplier`` (both may be traced). ``orders`` must be concrete.

  Args:
    q: sampling rate in (0, 1], a scalar (shared by every example).
    noise_multiplier: z > 0 (inf allowed), any shape (...) — e.g. one per example.
    orders: Rényi orders > 1, shape (K,); default :data:`DEFAULT_ORDERS`.
    num_terms: most terms summed per fractional order (static); usually 16–32 suffice (the rest is
      bounded or integrated). ``dp_accounting`` sums until the terms drop 30 nats below the total
      (up to 1,000 terms); the default reaches that or the quadrature regime on q ∈ [1e-4, 1],
      z ∈ [0.3, 50]. Ignored for integer orders (exact).
    method: at fractional orders, ``"dp_accounting"`` (default: the |binomial| series, an upper bound
      equal to ``dp_accounting``'s value) or ``"exact"``: the exact RDP by quadrature of A_α − 1
      (:mod:`unlearn_jax.accounting.sgm_exact`; within 1e-10 relative above the exact value for
      z ≥ 0.3, never below it; costlier: ~1,000–25,000 nodes per order and example). Integer orders
      are exact either way.

  Returns:
    Array of shape (..., K), in the dtype of ``noise_multiplier`` (float64 under x64).

  Raises:
    ValueError: if q ∉ (0, 1], a noise multiplier is ≤ 0 or an order is ≤ 1 (concrete inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> float(sampled_gaussian_rdp(1.0, 2.0, [4.0])[0])  # q = 1: alpha / (2 z^2)
    0.5
    >>> r = sampled_gaussian_rdp(0.01, jnp.array([1.0, jnp.inf]), [2.0, 3.0])
    >>> r.shape, bool(r[1].max() == 0.0), bool(r[0, 1] > r[0, 0] > 0)
    ((2, 2), True, True)
  """
  orders_t = _check_rdp_arguments(q, noise_multiplier, orders, num_terms, method)
  if method == "exact" and any(not float(a).is_integer() for a in orders_t):
    return _with_exact_fractional(q, noise_multiplier, orders_t, num_terms)
  z = jnp.asarray(noise_multiplier)
  if not jnp.issubdtype(z.dtype, jnp.floating):
    z = z.astype(jnp.result_type(float))
  dtype = z.dtype
  if np.ndim(q) != 0:
    raise ValueError(f"q must be a scalar sampling rate, got shape {np.shape(q)}")
  batch_shape = z.shape
  zf = z.reshape(-1)
  m = zf.shape[0]
  alphas = jnp.asarray(orders_t, dtype)

  is_inf = jnp.isinf(zf)
  z_safe = jnp.where(is_inf, 1.0, zf)  # double-where: no NaN gradients through the unused branch
  if not _checks._is_traced(q) and float(q) == 1.0:  # the Gaussian mechanism: no series to evaluate
    rdp = jnp.where(is_inf[:, None], 0.0, alphas[None, :] / (2.0 * z_safe[:, None] ** 2))
    return rdp.reshape(batch_shape + (len(orders_t),))
  log_a_fn = _log_a_fn(orders_t, int(num_terms))
  q = jnp.asarray(q, dtype)
  q_full = q >= 1.0
  q_safe = jnp.where(q_full, 1e-3, q)  # any q < 1 whose series converges fast

  log_a = log_a_fn(q_safe, z_safe) if m <= _RDP_CHUNK else _log_a_in_sorted_chunks(log_a_fn, q_safe, z_safe)
  rdp_general = (log_a / (alphas - 1.0)[:, None]).T  # (m, K)
  rdp_full = alphas[None, :] / (2.0 * z_safe[:, None] ** 2)
  rdp = jnp.where(q_full, rdp_full, rdp_general)
  rdp = jnp.where(is_inf[:, None], 0.0, rdp)
  return rdp.reshape(batch_shape + (len(orders_t),))


def _with_exact_fractional(q: ArrayLike, noise_multiplier: ArrayLike, orders: tuple[float, ...], num_terms: int):
  """The RDP at every order: the integer orders by the binomial expansion, the fractional ones exactly."""
  z = jnp.asarray(noise_multiplier)
  if not jnp.issubdtype(z.dtype, jnp.floating):
    z = z.astype(jnp.result_type(float))
  ints = tuple(a for a in orders if float(a).is_integer())
  cols: dict[float, jax.Array] = {}
  if ints:
    out = sampled_gaussian_rdp(q, z, ints, num_terms=num_terms)
    cols.update({a: out[..., i] for i, a in enumerate(ints)})
  zf = z.reshape(-1)
  is_inf = jnp.isinf(zf)
  z_safe = jnp.where(is_inf, 1.0, zf)
  q = jnp.asarray(q, z.dtype)
  q_full = q >= 1.0
  q_safe = jnp.where(q_full, 0.5, q)
  for a in orders:
    if a not in cols:
      rdp = jnp.where(q_full, a / (2.0 * z_safe**2), sgm_exact.exact_rdp(q_safe, z_safe, a))
      cols[a] = jnp.where(is_inf, 0.0, rdp).reshape(z.shape)
  return jnp.stack([cols[a] for a in orders], axis=-1)


@guarded
def gaussian_rdp(sensitivity: ArrayLike, noise_std: ArrayLike, orders: ArrayLike | Sequence[float]) -> jax.Array:
  """RDP of the Gaussian mechanism: ``α · s² / (2 σ²)`` (Mironov 2017, Prop. 7).

  Args:
    sensitivity: L2 sensitivity s ≥ 0, any shape (...).
    noise_std: noise standard deviation σ > 0, broadcastable with ``sensitivity``.
    orders: Rényi orders > 1, shape (K,).

  Returns:
    Array of shape (..., K).

  Raises:
    ValueError: if an order is ≤ 1, s < 0 or σ ≤ 0 (concrete inputs).

  Examples:
    >>> gaussian_rdp(1.0, 2.0, [2.0, 4.0]).tolist()
    [0.25, 0.5]
  """
  orders = _checks.check_orders(orders)
  _checks.check_nonnegative("sensitivity", sensitivity, allow_inf=True)
  _checks.check_positive("noise_std", noise_std, allow_inf=True)
  s = jnp.asarray(sensitivity)
  dtype = jnp.result_type(s.dtype, jnp.asarray(noise_std).dtype, float)
  ratio2 = (jnp.asarray(sensitivity, dtype) / jnp.asarray(noise_std, dtype)) ** 2
  return jnp.asarray(orders, dtype) * ratio2[..., None] / 2.0


def monotone_in_order(values: ArrayLike, orders: ArrayLike | Sequence[float]) -> jax.Array:
  """Each value at order α replaced by the minimum of the values at orders ≥ α (theory §2b).

  RDP is non-decreasing in α, so if every entry upper-bounds the RDP at its order, so does the
  minimum over the higher orders: the result is a sound, tighter cost that is monotone in α. The
  |binomial| series of fractional orders is not monotone in α (it overshoots the exact RDP by a
  varying margin); integer orders are exact, so the envelope mostly moves fractional entries down to
  the next order's value.

  Args:
    values: (..., K) upper bounds on RDP at ``orders``.
    orders: (K,) Rényi orders (any order; concrete).

  Returns:
    (..., K), non-decreasing in the order, ≤ ``values``.

  Examples:
    >>> monotone_in_order(jnp.array([1.0, 3.0, 2.0]), [2.0, 3.0, 4.0]).tolist()
    [1.0, 2.0, 2.0]
  """
  orders_np = np.asarray(_checks.check_orders(orders), dtype=float)
  perm = np.argsort(orders_np, kind="stable")
  inverse = np.argsort(perm)
  v = jnp.asarray(values)
  ascending = jnp.take(v, jnp.asarray(perm), axis=-1)
  suffix_min = jnp.flip(jax.lax.cummin(jnp.flip(ascending, axis=-1), axis=v.ndim - 1), axis=-1)
  return jnp.take(suffix_min, jnp.asarray(inverse), axis=-1)
