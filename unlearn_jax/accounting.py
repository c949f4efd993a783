"""Per-instance Rényi privacy accounting: per-step costs, the sampled Gaussian RDP, the ledger.

THEORY §2 (per-step per-instance costs) and §3 (the ledger). Everything here is a pure
``jax.numpy`` function: it composes under ``jit``, ``vmap`` and ``grad`` and runs inside the jitted
training step (``unlearn_jax.sgld``).

- :func:`sampled_gaussian_rdp` is the RDP of the Poisson-subsampled Gaussian mechanism (Mironov, Talwar,
  Zhang 2019), vectorised over a batch of noise multipliers (one per example), computed in log space.
  Integer orders use the exact binomial expansion; fractional orders use the series of MTZ19 §3.3 in
  the form ``dp_accounting`` evaluates it (absolute values of the generalised binomial coefficients,
  which makes every term positive and the result an upper bound on the exact value), truncated after
  at most ``num_terms`` terms per order plus a bound or a quadrature estimate of the rest, instead of
  ``dp_accounting``'s convergence loop (which gives up with ``inf`` after 1,000 terms, e.g. at
  q = 0.5 for every noise multiplier).
- :func:`full_batch_costs` / :func:`poisson_costs` are THEORY §2a / §2b; the ``*_worst_case_cost``
  functions replace the per-example quantity by its bound (2C resp. C).
- :class:`Ledger` holds the realized losses P(x, α) (n, K); :func:`ledger_update` adds one step's
  costs, applies the individual Rényi filter (Feldman & Zrnic 2021) and never sums a non-finite cost
  silently (``finite`` turns False; :func:`check_ledger` raises).
- :func:`rdp_to_dp` converts RDP to (ε, δ)-DP: the classic bound (Mironov 2017, Prop. 3) and the
  improved one of Canonne, Kamath, Steinke 2020 (arXiv 2004.00010, Prop. 12) that ``dp_accounting``
  uses.

Precision: under ``jax_enable_x64`` the sampled Gaussian RDP equals the |binomial| series evaluated at
40 digits to ~1e-9 relative (tests), and ``dp_accounting`` wherever ``dp_accounting``'s own float64
evaluation is accurate: at integer orders to ~1e-12; at fractional orders ``dp_accounting`` sums the
same |binomial| series but loses up to ~4e-3 relative in float64 (and answers ``inf`` where its loop
gives up), so there the 40-digit value is the reference. The |binomial| series is an upper bound on the
exact RDP and is not monotone in α; the ledger's costs (:func:`poisson_costs`) are its monotone envelope
(:func:`monotone_in_order`), sound because RDP is non-decreasing in α. In float32 (the default dtype)
expect ~1e-5 relative, and an absolute floor of ~1e-7·(α−1)⁻¹ on the RDP value, since log A_α is
computed to float32 precision. Use float64 for accounting (``jax.enable_x64``) when the per-step costs
are tiny (q ≪ 1, large noise multipliers).
"""

from __future__ import annotations

import functools
import math
from typing import Any, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy import special as _sp_special

from unlearn_jax import _checks

__all__ = [
    "DEFAULT_ORDERS",
    "AccountingConfig",
    "Ledger",
    "accountant",
    "average_ledgers",
    "check_ledger",
    "filter_admits",
    "full_batch_costs",
    "full_batch_worst_case_cost",
    "gaussian_rdp",
    "group_factor",
    "group_privacy_loss",
    "ledger_init",
    "ledger_update",
    "max_steps_for_epsilon",
    "monotone_in_order",
    "poisson_costs",
    "poisson_worst_case_cost",
    "rdp_to_dp",
    "sampled_gaussian_rdp",
]

# dp_accounting's RdpAccountant default orders (dp_accounting/rdp/rdp_privacy_accountant.py,
# DEFAULT_RDP_ORDERS, "chosen to give good coverage for Gaussian mechanism in the privacy regime of
# interest"): 1.1, 1.2, ..., 10.9, then 11, ..., 63, then 128, 256, 512, 1024 (156 orders). Written
# with the same expression so that every float is bit-for-bit the same.
DEFAULT_ORDERS: tuple[float, ...] = tuple(
    [1 + x / 10.0 for x in range(1, 100)] + [float(a) for a in range(11, 64)] + [128.0, 256.0, 512.0, 1024.0]
)

# Terms of the fractional-order series summed per order (see sampled_gaussian_rdp).
DEFAULT_NUM_TERMS = 1024
# Examples processed at once by sampled_gaussian_rdp when given a large batch of noise multipliers.
_RDP_CHUNK = 512


# ----------------------------------------------------------------------------------------------------
# The sampled Gaussian mechanism (MTZ19)
# ----------------------------------------------------------------------------------------------------


class _IntGroup(NamedTuple):
  """Integer orders of similar size, summed as one dense (G, kmax - 1) block (terms k = 2..alpha)."""

  index: tuple[int, ...]  # positions in the orders list
  alphas: np.ndarray  # (G,)
  logc: np.ndarray  # (G, kmax - 1) log C(alpha, k), k = 2..kmax, -inf beyond alpha


class _FracPlan(NamedTuple):
  """All fractional orders, dense. Their second series needs log Φ((α - i - z0)/σ) for every (order, i);
  orders sharing a fractional part f share the values α - i, so one table of distinct values
  ``table_shift[r] - i0`` is evaluated per block and gathered with ``gather_idx`` (K_f, B)."""

  index: tuple[int, ...]
  alphas: np.ndarray  # (K_f,)
  table_shift: np.ndarray  # (R,)
  gather_idx: np.ndarray  # (K_f, B) int32
  fast: _FracFast


class _FracFast(NamedTuple):
  """The fractional orders laid out for the matrix-product evaluation of a block (``_frac_block_fast``).

  Group g holds the orders sharing one fractional part (rows padded to Kg); its table of second-series
  values j = ``shift[g, t]`` - i0 is padded to Rg entries; ``onehot[g, r, b, t]`` is 1 where term b of
  row r reads table entry t."""

  rows: np.ndarray  # (G, Kg) int32 positions in the fractional ordering; K_f (a zero row) for padding
  onehot: np.ndarray  # (G, Kg, B, Rg)
  shift: np.ndarray  # (G, Rg)
  out_idx: np.ndarray  # (K_f,) int32: flat g * Kg + r of each fractional order
  last_idx: np.ndarray  # (K_f,) int32: flat g * Rg + t of each order's last term in a block
  group_of: np.ndarray  # (K_f,) int32
  row_spread: float  # largest spread of log|C(α, i)| over any block of _BLOCK terms within max_terms


class _SgmPlan(NamedTuple):
  num_orders: int
  int_groups: tuple[_IntGroup, ...]
  frac: _FracPlan | None
  max_terms: int


_BLOCK = 16  # fractional-series terms evaluated per loop iteration


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
      logc = _sp_special.gammaln(alphas[:, None] + 1) - _sp_special.gammaln(k + 1) - _sp_special.gammaln(
          alphas[:, None] - k + 1
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
        tuple(index), np.asarray(alphas), np.asarray(shifts), np.asarray(gather, np.int32),
        _frac_fast_layout(orders, fracs, max_terms),
    )
  return _SgmPlan(len(orders), tuple(int_groups), frac, max_terms)


def _frac_fast_layout(orders: tuple[float, ...], fracs: dict[float, list[int]], max_terms: int) -> _FracFast:
  groups = [idxs for _, idxs in sorted(fracs.items())]
  num_groups = len(groups)
  kg = max(len(g) for g in groups)
  rg = max(_BLOCK + max(int(math.floor(orders[i])) for i in g) - min(int(math.floor(orders[i])) for i in g) for g in groups)
  kf = sum(len(g) for g in groups)
  rows = np.full((num_groups, kg), kf, np.int32)
  onehot = np.zeros((num_groups, kg, _BLOCK, rg))
  shift = np.zeros((num_groups, rg))
  out_idx, last_idx, group_of = [], [], []
  pos = 0
  for g, idxs in enumerate(groups):
    ks = [int(math.floor(orders[i])) for i in idxs]
    f = orders[idxs[0]] - ks[0]
    kmax, kmin = max(ks), min(ks)
    vals = [f + kmax - t for t in range(_BLOCK + kmax - kmin)]
    shift[g] = vals + [vals[-1]] * (rg - len(vals))  # padding repeats a real entry: finite, never read
    for r, k in enumerate(ks):
      rows[g, r] = pos
      for b in range(_BLOCK):
        onehot[g, r, b, kmax - k + b] = 1.0
      out_idx.append(g * kg + r)
      last_idx.append(g * rg + kmax - k + _BLOCK - 1)
      group_of.append(g)
      pos += 1
  # Spread of log|C(α, i)| over every block i0 .. i0 + B - 1 that the series can reach: it bounds how far
  # below the scaling the largest product in a row can fall (see _frac_block_fast).
  alphas = np.asarray([orders[i] for g in groups for i in g])[:, None]
  i = np.arange(max_terms + _BLOCK, dtype=np.float64)[None, :]
  logc = _sp_special.gammaln(alphas + 1) - _sp_special.gammaln(i + 1) - _sp_special.gammaln(alphas - i + 1)  # log|C(α, i)|
  nb = (max_terms + _BLOCK - 1) // _BLOCK
  blocks = logc[:, : nb * _BLOCK].reshape(len(alphas), nb, _BLOCK)
  spread = float(np.max(blocks.max(axis=2) - blocks.min(axis=2)))
  return _FracFast(rows, onehot, shift, np.asarray(out_idx, np.int32), np.asarray(last_idx, np.int32),
                   np.asarray(group_of, np.int32), spread)


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
    base = jnp.asarray(g.logc, dtype) + k[None, :] * log_q + (jnp.asarray(g.alphas, dtype)[:, None] - k[None, :]) * log_1mq
    vals = base[:, :, None] + log_em1[None, : kmax - 1, :]  # (G, kmax-1, m)
    log_a_minus_1 = jax.nn.logsumexp(vals, axis=1)
    out.append((g.index, jnp.logaddexp(0.0, log_a_minus_1)))
  return out


def _log_npdf(x):
  return -0.5 * x * x - 0.5 * math.log(2.0 * math.pi)


def _frac_terms(fp: _FracPlan, i0, q, log_q, log_1mq, sigma, z0, inv_2s2, dtype, with_grads):
  """Terms i0..i0+B-1 of both MTZ19 series for every fractional order: (K_f, B, m) each."""
  alphas = jnp.asarray(fp.alphas, dtype)[:, None]  # (K_f, 1)
  i_row = i0 + jnp.arange(_BLOCK, dtype=dtype)  # (B,)
  i = i_row[None, :]
  j = alphas - i
  logc = jax.lax.lgamma(alphas + 1.0) - jax.lax.lgamma(i + 1.0) - jax.lax.lgamma(j + 1.0)  # log|C(a, i)|
  base0 = logc + i * log_q + j * log_1mq
  base1 = logc + j * log_q + i * log_1mq
  u = (z0[None, :] - i_row[:, None]) / sigma[None, :]  # (B, m)
  log_e0 = jax.scipy.special.log_ndtr(u)
  v_tab = ((jnp.asarray(fp.table_shift, dtype) - i0)[:, None] - z0[None, :]) / sigma[None, :]  # (R, m)
  log_e1_tab = jax.scipy.special.log_ndtr(v_tab)
  idx = jnp.asarray(fp.gather_idx.reshape(-1))
  shape3 = fp.gather_idx.shape + (sigma.shape[0],)
  log_e1 = jnp.take(log_e1_tab, idx, axis=0).reshape(shape3)  # (K_f, B, m)
  ii = (i * i - i)[:, :, None]
  jj = (j * j - j)[:, :, None]
  w = inv_2s2[None, None, :]
  t0 = base0[:, :, None] + ii * w + log_e0[None, :, :]
  t1 = base1[:, :, None] + jj * w + log_e1
  if not with_grads:
    return t0, t1, None
  lam0 = jnp.exp(_log_npdf(u) - log_e0)[None]  # phi/Phi, (1, B, m)
  v = jnp.take(v_tab, idx, axis=0).reshape(shape3)
  lam1 = jnp.exp(_log_npdf(v) - log_e1)
  big_l = log_1mq - log_q
  dl_dq = -1.0 / (q * (1.0 - q))
  s = sigma[None, None, :]
  du_ds = (big_l - (0.5 - i_row[:, None]) / sigma[None, :] ** 2)[None]
  dv_ds = -((j - 0.5)[:, :, None]) / s**2 - big_l
  d0_ds = -ii / s**3 + lam0 * du_ds
  d1_ds = -jj / s**3 + lam1 * dv_ds
  d0_dq = (i / q - j / (1.0 - q))[:, :, None] + lam0 * (s * dl_dq)
  d1_dq = (j / q - i / (1.0 - q))[:, :, None] - lam1 * (s * dl_dq)
  return t0, t1, (d0_dq, d1_dq, d0_ds, d1_ds)


# Gauss-Laguerre nodes/weights for the analytic tail of the fractional series (see _frac_tail).
_TAIL_NODES = 10
_LAG_T, _LAG_W = np.polynomial.laguerre.laggauss(_TAIL_NODES)
# The tail is used once a rigorous bound on it is this many nats below the non-head terms (1e-4);
# the quadrature is accurate to ~1% of the tail (upwards), so its error stays below ~1e-6 of the result.
_TAIL_NATS = 9.2


def _frac_tail(fp: _FracPlan, n0, log_1mq, sigma, z0, dtype):
  """log Σ_{i≥n0} of both MTZ19 series (|binomial|) for every fractional order, (K_f, m), by quadrature.

  For i > α the terms are the values at integer s of the smooth function
  f(s) = g(s) (1-q)^α e^{-z0²/(2σ²)} [R((s - z0)/σ) + R((s - α + z0)/σ)], with
  g(s) = Γ(α+1)|sin πα| Γ(s-α) / (π Γ(s+1)) (= |C(α, s)| at integers) and R(x) = Φ(-x) e^{x²/2}
  (the algebra of ``_frac_core``'s bound). Σ_{i≥n0} f(i) ≈ ∫_{n0-1/2}^∞ f(s) ds (midpoint rule; f is
  convex there, so this is above the sum by ~(α+2)(α+3)/(24 n0²) relative), evaluated with
  s = (n0 - 1/2) e^{v} and Gauss–Laguerre in αv (f(s)·s decays like s^{-α} to s^{-α-1}), with R
  replaced by Sampford's upper bound on the Mills ratio (≤ 0.31% above for arguments ≥ 2). Only used
  where both Mills arguments are ≥ 2 and a rigorous bound on the tail is ≤ 1e-4 of the non-head terms,
  so the estimate's error (≲ 1% of the tail, almost always upwards) is ≲ 1e-6 of the result.
  """
  a = jnp.asarray(fp.alphas, dtype)[:, None, None]  # (K_f, 1, 1)
  t = jnp.asarray(_LAG_T, dtype)[None, :, None]
  logw = jnp.asarray(np.log(_LAG_W), dtype)[None, :, None] + t - jnp.log(a)
  s = (n0 - 0.5) * jnp.exp(t / a)  # (K_f, n, 1)
  # log Γ(s-α) - log Γ(s+1): directly for moderate s, by its asymptotic series (Bernoulli polynomials,
  # error ~α⁵/s⁴) for s ≥ 50(α+1), where the two lgammas would cancel catastrophically in float32.
  big = s >= 50.0 * (a + 1.0)
  sd = jnp.where(big, 50.0 * (a + 1.0), s)
  direct = jax.lax.lgamma(sd - a) - jax.lax.lgamma(sd + 1.0)
  r = 1.0 / jnp.where(big, s, 1.0)
  asym = -(a + 1.0) * jnp.log(jnp.where(big, s, 1.0)) + r * (
      (a * a + a) / 2.0 + r * ((a**3 + 1.5 * a * a + 0.5 * a) / 6.0 + r * (a**4 + 2.0 * a**3 + a * a) / 12.0)
  )
  lg = jnp.asarray(
      _sp_special.gammaln(fp.alphas + 1.0) + np.log(np.abs(np.sin(np.pi * fp.alphas))) - math.log(math.pi), dtype
  )[:, None, None] + jnp.where(big, asym, direct)
  zz = z0[None, None, :]
  sg = sigma[None, None, :]
  common = lg + jnp.log(s) + a * log_1mq - (zz / sg) ** 2 * 0.5 - 0.5 * math.log(2.0 * math.pi)
  x1 = (s - zz) / sg
  x2 = (s - a + zz) / sg
  # Sampford's (1953) upper bound 4/(3x + sqrt(x² + 8)) on the Mills ratio Φ(-x)/φ(x): ≤ 0.31% above
  # for x ≥ 2, one sqrt, stable for any large x (log_ndtr would cost ~10x and cancel in float32).
  lr = jnp.log(4.0 / (3.0 * x1 + jnp.sqrt(x1 * x1 + 8.0)) + 4.0 / (3.0 * x2 + jnp.sqrt(x2 * x2 + 8.0)))
  return jax.nn.logsumexp(logw + common + lr, axis=1)


def _frac_setup(fp: _FracPlan, q, sigma, dtype):
  """log q, log(1-q), 1/(2σ²), z0 = σ² log((1-q)/q) + 1/2 (MTZ19's split point) and the orders (K_f, 1)."""
  log_q = jnp.log(q)
  log_1mq = jnp.log1p(-q)
  return log_q, log_1mq, 1.0 / (2.0 * sigma**2), sigma**2 * (log_1mq - log_q) + 0.5, jnp.asarray(fp.alphas, dtype)[:, None]


def _frac_stop(i0, lse_rest, bound, head, sigma, z0, alphas):
  """Stopping rules after the terms below ``i0``, (K_f, m) each: ``tail_ok`` where the quadrature tail
  may replace further terms (both Mills arguments ≥ 2 at i0 - 1/2, i0 > α + 1, and the rigorous bound
  ``_TAIL_NATS`` below the non-head terms), ``done`` where that holds or the bound is 30 nats below both
  the total and the non-head terms."""
  ref = jnp.minimum(jnp.logaddexp(head, lse_rest), lse_rest)
  s0 = i0 - 0.5
  geom = ((s0 - z0) / sigma >= 2.0)[None, :] & ((s0 - alphas + z0[None, :]) / sigma[None, :] >= 2.0) & (s0 > alphas + 1.0)
  tail_ok = geom & (bound < ref - _TAIL_NATS)
  return tail_ok, (bound < ref - 30.0) | tail_ok


def _frac_head(alphas, log_q, log_1mq, sigma, z0):
  """Terms i = 0, 1 of the first series, (K_f, 2, m), their log-sum and the log Φ values (2, m)."""
  u_h = jnp.stack([z0 / sigma, (z0 - 1.0) / sigma])  # (2, m)
  log_phi_h = jax.scipy.special.log_ndtr(u_h)
  t0h = jnp.stack(
      [alphas * log_1mq + log_phi_h[0][None, :], jnp.log(alphas) + log_q + (alphas - 1.0) * log_1mq + log_phi_h[1][None, :]],
      axis=1,
  )
  return t0h, jax.nn.logsumexp(t0h, axis=1), u_h, log_phi_h


def _frac_assemble(head, rest_total, alphas, q, log_1mq, sigma, z0):
  """log A from the head and the log-sum of every other term; (log A, the plain log-sum)."""
  log_a_plain = jnp.logaddexp(head, rest_total)
  # Precise path for A close to 1: A - 1 = rest - (1 - head), with
  # 1 - head = -expm1((a-1) log(1-q) + log1p((a-1) q)) + (1-q)^a Phi(-z0/s) + a q (1-q)^(a-1) Phi((1-z0)/s).
  ndtr = jax.scipy.special.ndtr
  one_minus_head = (
      -jnp.expm1((alphas - 1.0) * log_1mq + jnp.log1p((alphas - 1.0) * q))
      + jnp.exp(alphas * log_1mq) * ndtr(-z0 / sigma)[None, :]
      + alphas * q * jnp.exp((alphas - 1.0) * log_1mq) * ndtr((1.0 - z0) / sigma)[None, :]
  )
  small = log_a_plain < 1.0
  rest = jnp.exp(jnp.where(small, rest_total, 0.0))
  log_a = jnp.where(small, jnp.log1p(jnp.where(small, rest - one_minus_head, 0.0)), log_a_plain)
  return log_a, log_a_plain


def _frac_core(plan: _SgmPlan, q, sigma, dtype, with_grads: bool):
  """Fractional orders: log A (K_f, m), and d log A/dq, d log A/dσ when asked.

  Sums both MTZ19 series block by block (``lax.while_loop``) until, for every example and order,
  either a rigorous bound on the remaining terms is 30 nats below both the total and the sum of the
  non-head terms (then the bound is added, so the result never falls below the full series), or the
  remaining terms are in the smooth power-law regime and that bound is ≤ 1e-4 of the non-head terms
  (then their sum is estimated by quadrature, :func:`_frac_tail`), or ``max_terms`` is reached (then
  the bound is added). The quadrature tail is what keeps small noise multipliers cheap: their terms
  decay only like i^{-α-2}, so the 30-nat criterion alone would need thousands of terms. The bound: with x_i = (i - z0)/σ, each first-series term equals
  |C(α,i)| (1-q)^α e^{-z0²/(2σ²)} Φ(-x_i) e^{x_i²/2} (the second series likewise with
  y_i = (i - α + z0)/σ); Φ(-x)e^{x²/2} decreases in x, and for i > α |C(α,i)| ∝ Γ(i-α)/Γ(i+1), whose
  tail Σ_{i≥M} equals |C(α,M)|·M/α. Hence Σ_{i≥M} term_i ≤ ((M-1-α)/α) · term_{M-1}.
  """
  fp = plan.frac
  log_q, log_1mq, inv_2s2, z0, alphas = _frac_setup(fp, q, sigma, dtype)
  m = sigma.shape[0]
  kf = len(fp.index)

  def block(i0, grads):
    return _frac_terms(fp, i0, q, log_q, log_1mq, sigma, z0, inv_2s2, dtype, grads)

  # Head: terms i = 0, 1 of the first series, t0_0 = α log(1-q) + log Φ(z0/σ) and
  # t0_1 = log α + log q + (α-1) log(1-q) + log Φ((z0-1)/σ) (also in closed form below, for A - 1).
  big_l = log_1mq - log_q
  t0h, head, u_h, log_phi_h = _frac_head(alphas, log_q, log_1mq, sigma, z0)

  def body(carry):
    i0, mx, acc_s, dq, ds, _ = carry
    t0, t1, der = block(i0, with_grads)
    i = i0 + jnp.arange(_BLOCK, dtype=dtype)
    t0m = jnp.where((i >= 2)[None, :, None], t0, -jnp.inf)  # the head is added separately
    bm = jnp.maximum(jnp.max(t0m, axis=1), jnp.max(t1, axis=1))
    mx2 = jnp.maximum(mx, bm)
    mx2s = jnp.where(jnp.isfinite(mx2), mx2, 0.0)
    scale = jnp.exp(jnp.where(jnp.isfinite(mx), mx - mx2s, -jnp.inf))
    e0 = jnp.exp(t0m - mx2s[:, None, :])
    e1 = jnp.exp(t1 - mx2s[:, None, :])
    acc_s = acc_s * scale + jnp.sum(e0, axis=1) + jnp.sum(e1, axis=1)
    if with_grads:
      d0_dq, d1_dq, d0_ds, d1_ds = der
      dq = dq * scale + jnp.sum(e0 * d0_dq, axis=1) + jnp.sum(e1 * d1_dq, axis=1)
      ds = ds * scale + jnp.sum(e0 * d0_ds, axis=1) + jnp.sum(e1 * d1_ds, axis=1)
    ratio = (i0 + _BLOCK - 1 - alphas) / alphas  # (M - 1 - alpha) / alpha
    log_last = jnp.logaddexp(t0[:, -1, :], t1[:, -1, :])
    bound = jnp.where(ratio > 0, jnp.log(jnp.where(ratio > 0, ratio, 1.0)) + log_last, jnp.inf)
    return (i0 + _BLOCK, mx2, acc_s, dq, ds, bound)

  def cond(carry):
    i0, mx, acc_s, _, _, bound = carry
    return (i0 < plan.max_terms) & jnp.any(~_frac_stop(i0, mx + jnp.log(acc_s), bound, head, sigma, z0, alphas)[1])

  zeros = jnp.zeros((kf, m), dtype)
  carry0 = (jnp.asarray(0.0, dtype), jnp.full((kf, m), -jnp.inf, dtype), zeros, zeros, zeros, jnp.full((kf, m), jnp.inf, dtype))
  n0, mx, acc_s, dq, ds, bound = jax.lax.while_loop(cond, body, carry0)
  lse_rest = mx + jnp.log(acc_s)
  use_tail = _frac_stop(n0, lse_rest, bound, head, sigma, z0, alphas)[0]
  tail_fn = lambda q_, s_: _frac_tail(fp, n0, jnp.log1p(-q_), s_, s_**2 * (jnp.log1p(-q_) - jnp.log(q_)) + 0.5, dtype)
  if with_grads:
    tail, tail_dq = jax.jvp(tail_fn, (q, sigma), (jnp.ones_like(q), jnp.zeros_like(sigma)))
    _, tail_ds = jax.jvp(tail_fn, (q, sigma), (jnp.zeros_like(q), jnp.ones_like(sigma)))
  else:
    tail = tail_fn(q, sigma)
  tail = jnp.where(use_tail, tail, bound)  # the rigorous bound where the quadrature is not used
  log_a, log_a_plain = _frac_assemble(head, jnp.logaddexp(lse_rest, tail), alphas, q, log_1mq, sigma, z0)
  if not with_grads:
    return log_a, None
  lam_h = jnp.exp(_log_npdf(u_h) - log_phi_h)  # (2, m)
  dl_dq = -1.0 / (q * (1.0 - q))
  hq = jnp.stack(
      [-alphas / (1.0 - q) + lam_h[0] * sigma * dl_dq, 1.0 / q - (alphas - 1.0) / (1.0 - q) + lam_h[1] * sigma * dl_dq],
      axis=1,
  )
  hs = jnp.stack(
      [jnp.broadcast_to(lam_h[0] * (big_l - 0.5 / sigma**2), (kf, m)), jnp.broadcast_to(lam_h[1] * (big_l + 0.5 / sigma**2), (kf, m))],
      axis=1,
  )
  wh = jnp.exp(t0h - log_a_plain[:, None, :])
  w_rest = jnp.exp(mx - log_a_plain)
  w_tail = jnp.where(use_tail, jnp.exp(tail - log_a_plain), 0.0)
  dlog_dq = jnp.sum(wh * hq, axis=1) + w_rest * dq + w_tail * jnp.where(use_tail, tail_dq, 0.0)
  dlog_ds = jnp.sum(wh * hs, axis=1) + w_rest * ds + w_tail * jnp.where(use_tail, tail_ds, 0.0)
  return log_a, (dlog_dq, dlog_ds)




def _log_ndtr_fast(x: jax.Array) -> jax.Array:
  """log Φ(x) with one erfc and one log (``jax.scipy.special.log_ndtr`` costs ~3x more).

  log(erfc(-x/√2)/2) above a threshold where erfc is still a normal number (-37 in float64, -10 in
  float32); below it the asymptotic series Φ(x) = φ(x)/(-x)·Σ_k (-1)^k (2k-1)!! x^{-2k} to k = 6
  (truncation error < 1e-17 resp. 2e-9 relative there). Absolute error ≲ 5e-13 in float64 (the values
  are only ever added to other logarithms, so absolute error is what matters); near 0 for large x.
  """
  thr = -37.0 if x.dtype == jnp.float64 else -10.0
  big = x > thr
  xs = jnp.where(big, thr, x)
  r = 1.0 / (xs * xs)
  ser = 1.0 + r * (-1.0 + r * (3.0 + r * (-15.0 + r * (105.0 + r * (-945.0 + r * 10395.0)))))
  inner = jnp.where(big, 0.5 * jax.scipy.special.erfc(jnp.where(big, x, 0.0) * -(0.5**0.5)), ser / -xs)
  return jnp.log(inner) + jnp.where(big, 0.0, -0.5 * xs * xs - 0.5 * math.log(2.0 * math.pi))


# Largest gap (nats) between a block's scaling and the largest product it contains for which the
# matrix-product evaluation keeps every term that matters (within ~37 nats of the largest in float64,
# ~17 in float32) above the dtype's smallest normal number (e^-708 resp. e^-87).
_FAST_GAP = {np.dtype(np.float32): 50.0, np.dtype(np.float64): 550.0}


def _frac_block_fast(fp: _FracPlan, i0, log_q, log_1mq, sigma, z0, inv_2s2, dtype):
  """Terms i0..i0+B-1 of both MTZ19 series, summed per (order, example), as matrix products.

  A term is |C(α,i)|·(1-q)^α times a factor that depends on (i, example) only — first series
  ``H0[i] = (i²-i)/(2σ²) + log Φ((z0-i)/σ) - s·i``, second series ``H1[j] = (j²-j)/(2σ²) +
  log Φ((j-z0)/σ) - s·j`` with j = α - i and s = log((1-q)/q) (the q-powers rewritten:
  q^i (1-q)^(α-i) = (1-q)^α e^{-s i}). So a block's sums are products of the (orders × terms) matrix
  exp(log|C| - row max) with the (terms × examples) matrix exp(H - column max): one exp per
  (term, example) instead of one per (order, term, example). Orders sharing a fractional part share the
  values j; each order reads a window of B of them (``fp.fast.onehot``).

  Scaling: in the first series every order reads every column, so the largest product in a row is at
  most ``row_spread`` (static, ~17 nats for the default orders) below the row's scale. In the second
  series an order reads only its window of the table, so the gap can also include the spread of H1 over
  the table; where that exceeds :data:`_FAST_GAP` (small noise multipliers) the second series is summed
  term by term instead (``lax.cond``, exact either way).

  Returns (log of the block's sum over both series, without the first series' i < 2 terms (the head),
  log of the block's last term (for the tail bound)), each (K_f, m).
  """
  ff = fp.fast
  alphas = jnp.asarray(fp.alphas, dtype)[:, None]  # (K_f, 1)
  i_row = i0 + jnp.arange(_BLOCK, dtype=dtype)  # (B,)
  s = log_1mq - log_q
  rowlog = jax.lax.lgamma(alphas + 1.0) - jax.lax.lgamma(i_row[None, :] + 1.0) - jax.lax.lgamma(alphas - i_row[None, :] + 1.0)
  rmax = jnp.max(rowlog, axis=1, keepdims=True)
  rmat = jnp.exp(rowlog - rmax)  # (K_f, B), entries in (0, 1]
  const = rmax + alphas * log_1mq  # (K_f, 1)
  # First series: (K_f, B) @ (B, m).
  u = (z0[None, :] - i_row[:, None]) / sigma[None, :]
  h0 = (i_row * i_row - i_row)[:, None] * inv_2s2[None, :] + _log_ndtr_fast(u) - s * i_row[:, None]
  h0 = jnp.where((i_row >= 2.0)[:, None], h0, -jnp.inf)  # the head (i = 0, 1) is added separately
  c0max = jnp.max(h0, axis=0)  # (m,)
  sum0 = jnp.dot(jnp.where((i_row >= 2.0)[None, :], rmat, 0.0), jnp.exp(h0 - c0max[None, :]), precision="highest")
  log0 = jnp.log(sum0) + const + c0max[None, :]
  # Second series: per fractional part g, (Kg, Rg) @ (Rg, m).
  j = jnp.asarray(ff.shift, dtype) - i0  # (G, Rg)
  h1 = ((j * j - j)[:, :, None] * inv_2s2 + _log_ndtr_fast((j[:, :, None] - z0) / sigma) - s * j[:, :, None])
  c1max = jnp.max(h1, axis=1)  # (G, m)
  c1min = jnp.min(h1, axis=1)
  rows = jnp.concatenate([rmat, jnp.zeros((1, _BLOCK), dtype)])[jnp.asarray(ff.rows)]  # (G, Kg, B)
  gap_ok = jnp.max(c1max - c1min) + ff.row_spread <= _FAST_GAP[np.dtype(dtype)]

  def fast1(_):
    window = jnp.einsum("gkb,gkbt->gkt", rows, jnp.asarray(ff.onehot, dtype))
    sum1 = jnp.einsum("gkt,gtm->gkm", window, jnp.exp(h1 - c1max[:, None, :]), precision="highest")
    sum1 = sum1.reshape(-1, sum1.shape[-1])[jnp.asarray(ff.out_idx)]  # (K_f, m)
    return jnp.log(sum1) + c1max[jnp.asarray(ff.group_of)]

  def direct1(_):
    h1_flat = h1.reshape(-1, h1.shape[-1])
    t1 = rowlog[:, :, None] + jnp.take(h1_flat, jnp.asarray(ff.last_idx)[:, None] - (_BLOCK - 1) + jnp.arange(_BLOCK), axis=0)
    return jax.nn.logsumexp(t1, axis=1) - rmax

  log1 = jax.lax.cond(gap_ok, fast1, direct1, None) + const
  h1_last = jnp.take(h1.reshape(-1, h1.shape[-1]), jnp.asarray(ff.last_idx), axis=0)  # (K_f, m)
  last = rowlog[:, -1:] + alphas * log_1mq + jnp.logaddexp(h0[-1][None, :], h1_last)
  return jnp.logaddexp(log0, log1), last


def _frac_core_fast(plan: _SgmPlan, q, sigma, dtype):
  """Fractional orders: log A (K_f, m) — the value of :func:`_frac_core`, with each block of terms
  summed as matrix products (:func:`_frac_block_fast`) and the quadrature tail evaluated only when some
  example of the batch uses it. Same stopping rules, bound and tail as ``_frac_core``."""
  fp = plan.frac
  log_q, log_1mq, inv_2s2, z0, alphas = _frac_setup(fp, q, sigma, dtype)
  m = sigma.shape[0]
  kf = len(fp.index)
  _, head, _, _ = _frac_head(alphas, log_q, log_1mq, sigma, z0)

  def step(i0, lse):
    blk, last = _frac_block_fast(fp, i0, log_q, log_1mq, sigma, z0, inv_2s2, dtype)
    lse = jnp.logaddexp(lse, blk)
    ratio = (i0 + _BLOCK - 1 - alphas) / alphas  # (M - 1 - alpha) / alpha, as in _frac_core
    bound = jnp.where(ratio > 0, jnp.log(jnp.where(ratio > 0, ratio, 1.0)) + last, jnp.inf)
    tail_ok, done = _frac_stop(i0 + _BLOCK, lse, bound, head, sigma, z0, alphas)
    return i0 + _BLOCK, lse, bound, tail_ok, jnp.any(~done)

  # The first block always runs (nothing is known before it); the loop carries whether to go on.
  carry0 = step(jnp.asarray(0.0, dtype), jnp.full((kf, m), -jnp.inf, dtype))
  n0, lse_rest, bound, use_tail, _ = jax.lax.while_loop(
      lambda c: (c[0] < plan.max_terms) & c[4], lambda c: step(c[0], c[1]), carry0
  )
  tail = jax.lax.cond(
      jnp.any(use_tail), lambda: _frac_tail(fp, n0, log_1mq, sigma, z0, dtype), lambda: bound
  )
  tail = jnp.where(use_tail, tail, bound)
  return _frac_assemble(head, jnp.logaddexp(lse_rest, tail), alphas, q, log_1mq, sigma, z0)[0]


def _fast_frac_ok(plan: _SgmPlan) -> bool:
  return plan.frac is not None and plan.frac.fast.row_spread <= 40.0


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


def sampled_gaussian_rdp(
    q: ArrayLike,
    noise_multiplier: ArrayLike,
    orders: ArrayLike | Sequence[float] = DEFAULT_ORDERS,
    *,
    num_terms: int = DEFAULT_NUM_TERMS,
) -> jax.Array:
  """RDP of the Poisson-subsampled Gaussian mechanism (THEORY §2b; Mironov, Talwar, Zhang 2019).

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
  _checks.check_probability("q", q, open_low=True, open_high=False)
  _checks.check_positive("noise_multiplier", noise_multiplier, allow_inf=True)
  orders_t = _static_orders(orders, "sampled_gaussian_rdp")
  if not isinstance(num_terms, (int, np.integer)) or isinstance(num_terms, bool) or num_terms < 1:
    raise ValueError(f"num_terms must be a positive int, got {num_terms!r}")
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

  if m > _RDP_CHUNK:
    # Chunks of similar noise multipliers: the fractional series then stops (and skips its quadrature
    # tail) per chunk as early as its own examples allow, instead of waiting for the slowest of a mix.
    perm = jnp.argsort(z_safe)
    pad = (-m) % _RDP_CHUNK
    zc = jnp.concatenate([z_safe[perm], jnp.ones((pad,), dtype)]).reshape(-1, _RDP_CHUNK)
    log_a = jax.lax.map(lambda zz: log_a_fn(q_safe, zz), zc)  # (C, K, chunk)
    log_a = jnp.moveaxis(log_a, 1, 0).reshape(len(orders_t), -1)[:, :m]
    log_a = jnp.take(log_a, jnp.argsort(perm), axis=1)  # back to the caller's order
  else:
    log_a = log_a_fn(q_safe, z_safe)
  rdp_general = (log_a / (alphas - 1.0)[:, None]).T  # (m, K)
  rdp_full = alphas[None, :] / (2.0 * z_safe[:, None] ** 2)
  rdp = jnp.where(q_full, rdp_full, rdp_general)
  rdp = jnp.where(is_inf[:, None], 0.0, rdp)
  return rdp.reshape(batch_shape + (len(orders_t),))


def gaussian_rdp(orders: ArrayLike | Sequence[float], sensitivity: ArrayLike, noise_std: ArrayLike) -> jax.Array:
  """RDP of the Gaussian mechanism: ``α · s² / (2 σ²)`` (Mironov 2017, Prop. 7).

  Args:
    orders: Rényi orders > 1, shape (K,).
    sensitivity: L2 sensitivity s ≥ 0, any shape (...).
    noise_std: noise standard deviation σ > 0, broadcastable with ``sensitivity``.

  Returns:
    Array of shape (..., K).

  Raises:
    ValueError: if an order is ≤ 1, s < 0 or σ ≤ 0 (concrete inputs).

  Examples:
    >>> gaussian_rdp([2.0, 4.0], 1.0, 2.0).tolist()
    [0.25, 0.5]
  """
  orders = _checks.check_orders(orders)
  _checks.check_nonnegative("sensitivity", sensitivity, allow_inf=True)
  _checks.check_positive("noise_std", noise_std, allow_inf=True)
  s = jnp.asarray(sensitivity)
  dtype = jnp.result_type(s.dtype, jnp.asarray(noise_std).dtype, float)
  ratio2 = (jnp.asarray(sensitivity, dtype) / jnp.asarray(noise_std, dtype)) ** 2
  return jnp.asarray(orders, dtype) * ratio2[..., None] / 2.0


# ----------------------------------------------------------------------------------------------------
# Per-step per-instance costs (THEORY §2a, §2b)
# ----------------------------------------------------------------------------------------------------


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


def monotone_in_order(values: ArrayLike, orders: ArrayLike | Sequence[float]) -> jax.Array:
  """Each value at order α replaced by the minimum of the values at orders ≥ α (THEORY §2b).

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


# ----------------------------------------------------------------------------------------------------
# The ledger (THEORY §3)
# ----------------------------------------------------------------------------------------------------


class AccountingConfig(NamedTuple):
  """Static (hashable) accounting settings; build with :func:`accountant`.

  Attributes:
    orders: Rényi orders (floats > 1).
    stride: evaluate the costs every ``stride`` steps and count them ``stride`` times (an estimate
      when > 1, flagged in the ledger).
    filter_budget: budget B of the individual Rényi filter at order ``filter_order`` (None: off).
    filter_order: the order α* of the filter; must be one of ``orders``.
    num_terms: terms of the fractional-order series of :func:`sampled_gaussian_rdp`.
  """

  orders: tuple[float, ...]
  stride: int = 1
  filter_budget: float | None = None
  filter_order: float | None = None
  num_terms: int = DEFAULT_NUM_TERMS

  @property
  def filter_index(self) -> int | None:
    """Index of ``filter_order`` in ``orders`` (None when the filter is off)."""
    if self.filter_budget is None:
      return None
    return self.orders.index(self.filter_order)

  @property
  def uses_filter(self) -> bool:
    return self.filter_budget is not None


def accountant(
    orders: ArrayLike | Sequence[float] = DEFAULT_ORDERS,
    *,
    stride: int = 1,
    filter_budget: float | None = None,
    filter_order: float | None = None,
    num_terms: int = DEFAULT_NUM_TERMS,
) -> AccountingConfig:
  """Builds the accounting settings: every step (exact), strided (estimate) or with a Rényi filter.

  Args:
    orders: Rényi orders > 1 (default :data:`DEFAULT_ORDERS`).
    stride: evaluate costs every ``stride`` ≥ 1 steps and count each evaluation ``stride`` times.
    filter_budget: B > 0 for the individual Rényi filter (Feldman & Zrnic 2021), or None.
    filter_order: α* (one of ``orders``), required with ``filter_budget``.
    num_terms: terms per fractional order in :func:`sampled_gaussian_rdp`.

  Returns:
    An :class:`AccountingConfig`. The ledger it produces is certified iff the filter is on and
    ``stride == 1``.

  Raises:
    ValueError: on bad orders, stride < 1, B ≤ 0, or a filter order missing from ``orders``.

  Examples:
    >>> cfg = accountant([2.0, 8.0], filter_budget=1.0, filter_order=8.0)
    >>> cfg.filter_index, cfg.stride
    (1, 1)
  """
  orders_t = tuple(float(a) for a in _checks.check_orders(orders))
  if isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1:
    raise ValueError(f"stride must be an int >= 1, got {stride!r}")
  if isinstance(num_terms, bool) or not isinstance(num_terms, (int, np.integer)) or num_terms < 1:
    raise ValueError(f"num_terms must be an int >= 1, got {num_terms!r}")
  if filter_budget is None:
    if filter_order is not None:
      raise ValueError(f"filter_order={filter_order!r} given without filter_budget; pass both or neither")
  else:
    _checks.check_positive("filter_budget", filter_budget)
    if filter_order is None:
      raise ValueError("filter_order is required with filter_budget (the order alpha* of the filter)")
    if float(filter_order) not in orders_t:
      raise ValueError(f"filter_order must be one of orders {list(orders_t)}, got {filter_order!r}")
    filter_budget = float(filter_budget)
    filter_order = float(filter_order)
  return AccountingConfig(orders_t, int(stride), filter_budget, filter_order, int(num_terms))


class Ledger(NamedTuple):
  """Per-instance privacy losses along a run (THEORY §3). All leaves are arrays.

  Attributes:
    orders: (K,) Rényi orders.
    realized: (n, K) realized losses P(x, α), summed along the run.
    worst_case: (K,) worst-case loss of the same run (every example charged the bound).
    num_steps: int32, steps seen.
    num_accounted: int32, steps whose cost was evaluated.
    active: (n,) bool, False once the individual filter removed the example.
    finite: bool, False once a non-finite cost was met (such a cost is never summed).
    certified: bool, True iff every step was accounted and the filter was on (then ``realized`` is a
      certified individual RDP bound; otherwise it is an estimate).
    exact: bool, False for strided accounting or shuffled-minibatch mode (estimates).
  """

  orders: jax.Array
  realized: jax.Array
  worst_case: jax.Array
  num_steps: jax.Array
  num_accounted: jax.Array
  active: jax.Array
  finite: jax.Array
  certified: jax.Array
  exact: jax.Array


def ledger_init(num_examples: int, config: AccountingConfig, *, dtype: Any = None) -> Ledger:
  """An empty ledger for ``num_examples`` examples.

  Args:
    num_examples: n ≥ 1.
    config: from :func:`accountant`.
    dtype: float dtype of the losses (default: JAX's default float, float64 under x64).

  Returns:
    A :class:`Ledger` with zero losses and every example active.

  Raises:
    ValueError: if ``num_examples`` < 1.
    TypeError: if ``config`` is not an :class:`AccountingConfig`.

  Examples:
    >>> led = ledger_init(3, accountant([2.0, 4.0]))
    >>> led.realized.shape, bool(led.certified), bool(led.exact)
    ((3, 2), False, True)
  """
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
    raise ValueError(f"num_examples must be an int >= 1, got {num_examples!r}")
  if not isinstance(config, AccountingConfig):
    raise TypeError(f"config must be an AccountingConfig from accountant(...), got {type(config).__name__}")
  dtype = jnp.result_type(float) if dtype is None else dtype
  k = len(config.orders)
  return Ledger(
      orders=jnp.asarray(config.orders, dtype),
      realized=jnp.zeros((num_examples, k), dtype),
      worst_case=jnp.zeros((k,), dtype),
      num_steps=jnp.zeros((), jnp.int32),
      num_accounted=jnp.zeros((), jnp.int32),
      active=jnp.ones((num_examples,), bool),
      finite=jnp.ones((), bool),
      certified=jnp.asarray(config.uses_filter and config.stride == 1),
      exact=jnp.asarray(config.stride == 1),
  )


def _check_ledger_costs(ledger: Ledger, costs: Any, config: AccountingConfig) -> None:
  if not isinstance(config, AccountingConfig):
    raise TypeError(f"config must be an AccountingConfig from accountant(...), got {type(config).__name__}")
  n, k = ledger.realized.shape
  if np.shape(costs) != (n, k):
    raise ValueError(
        f"costs must have shape (n, K) = ({n}, {k}) to match the ledger, got {np.shape(costs)}; "
        "a ledger must be used with the data set (and orders) it was created for"
    )
  if len(config.orders) != k:
    raise ValueError(f"config has {len(config.orders)} orders but the ledger has {k}")


def filter_admits(ledger: Ledger, costs: ArrayLike, config: AccountingConfig) -> jax.Array:
  """Which examples the individual Rényi filter keeps this step: ``P(x, α*) + ε_t(x, α*) ≤ B``.

  Already removed examples stay removed. With the filter off, returns ``ledger.active``.

  Args:
    ledger: the current :class:`Ledger`.
    costs: this step's costs (n, K) (times the stride when strided).
    config: the :class:`AccountingConfig`.

  Returns:
    (n,) bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> cfg = accountant([2.0], filter_budget=1.0, filter_order=2.0)
    >>> filter_admits(ledger_init(2, cfg), jnp.array([[0.5], [1.5]]), cfg).tolist()
    [True, False]
  """
  _check_ledger_costs(ledger, costs, config)
  if not config.uses_filter:
    return ledger.active
  a = config.filter_index
  costs = jnp.asarray(costs)
  total = ledger.realized[:, a] + costs[:, a]
  return ledger.active & (total <= config.filter_budget)


def ledger_update(
    ledger: Ledger,
    costs: ArrayLike,
    worst_case_cost: ArrayLike,
    *,
    weight: ArrayLike = 1,
    config: AccountingConfig,
    accounted: ArrayLike = True,
) -> Ledger:
  """Adds one step's costs to the ledger (THEORY §3).

  ``realized += weight · costs`` for the examples that stay active (with the filter on, those
  :func:`filter_admits` keeps; the others are removed for good and charged nothing, since their
  gradient leaves this and every later step). Non-finite costs are never summed: they are dropped and
  ``finite`` turns False (see :func:`check_ledger`). ``num_steps`` always advances.

  Args:
    ledger: the current :class:`Ledger`.
    costs: this step's per-example costs, shape (n, K); zero for examples not in the data set.
    worst_case_cost: this step's worst-case cost, shape (K,).
    weight: multiplicity of the costs (the stride for strided accounting).
    config: the :class:`AccountingConfig`.
    accounted: whether the costs were evaluated this step (False: only ``num_steps`` advances).

  Returns:
    The updated :class:`Ledger`.

  Raises:
    ValueError: if ``costs`` does not have the ledger's shape (n, K) (e.g. a data set of another size).

  Examples:
    >>> import jax.numpy as jnp
    >>> cfg = accountant([2.0])
    >>> led = ledger_update(ledger_init(2, cfg), jnp.array([[0.1], [0.2]]), jnp.array([0.4]), config=cfg)
    >>> led.realized.round(3).tolist(), int(led.num_steps), bool(led.finite)
    ([[0.1], [0.2]], 1, True)
  """
  _check_ledger_costs(ledger, costs, config)
  _checks.check_nonnegative("weight", weight)
  if not _checks._is_traced(costs):
    negative = np.asarray(costs, dtype=float) < 0  # NaN/inf are handled below (finite flag)
    if np.any(negative):
      raise ValueError(f"costs must be non-negative (a privacy loss never decreases), got "
                       f"{np.asarray(costs, dtype=float)[negative][:3].tolist()}")
  if np.shape(worst_case_cost) != ledger.worst_case.shape:
    raise ValueError(f"worst_case_cost must have shape {ledger.worst_case.shape}, got {np.shape(worst_case_cost)}")
  dtype = ledger.realized.dtype
  costs = jnp.asarray(costs, dtype)
  worst = jnp.asarray(worst_case_cost, dtype)
  w = jnp.asarray(weight, dtype)
  accounted = jnp.asarray(accounted, bool)
  keep = filter_admits(ledger, costs * w, config)
  ok = jnp.isfinite(costs) & keep[:, None]
  finite_now = jnp.all(jnp.where(ledger.active[:, None], jnp.isfinite(costs), True)) & ~jnp.any(jnp.isnan(worst))
  add = jnp.where(ok & accounted, w * costs, 0.0)
  worst_add = jnp.where(~jnp.isnan(worst) & accounted, w * worst, 0.0)  # inf (no clip) is kept
  return ledger._replace(
      realized=ledger.realized + add,
      worst_case=ledger.worst_case + worst_add,
      num_steps=ledger.num_steps + 1,
      num_accounted=ledger.num_accounted + accounted.astype(jnp.int32),
      active=jnp.where(accounted, keep, ledger.active),
      finite=ledger.finite & (finite_now | ~accounted),
  )


def check_ledger(ledger: Ledger) -> Ledger:
  """Host-side check: raises if the ledger met a non-finite cost; returns the ledger otherwise.

  Args:
    ledger: a concrete :class:`Ledger` (not inside jit).

  Returns:
    ``ledger`` unchanged.

  Raises:
    FloatingPointError: if ``ledger.finite`` is False (a non-finite cost was met and left out).

  Examples:
    >>> led = check_ledger(ledger_init(2, accountant([2.0])))
    >>> bool(led.finite)
    True
  """
  finite = np.asarray(ledger.finite)
  if not np.all(finite):
    raise FloatingPointError(
        "the privacy ledger met a non-finite per-step cost (NaN/inf: e.g. temperature 0 without "
        "accounting_temperature, a single active example in full-batch mode, or a NaN gradient); "
        f"those costs were not summed, so ledger.realized is not a valid bound (finite={finite.tolist()})"
    )
  return ledger


def average_ledgers(ledgers: Ledger | ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Mean and standard deviation of realized losses over runs (THEORY §3 "averaged over R runs").

  Args:
    ledgers: a :class:`Ledger` whose leaves carry a leading seed axis R (as returned by a vmapped
      run), or an array of realized losses of shape (R, n, K).

  Returns:
    ``(mean, std)``, each (n, K) (population std over the R runs).

  Raises:
    ValueError: if the realized losses are not (R, n, K).

  Examples:
    >>> import jax.numpy as jnp
    >>> mean, std = average_ledgers(jnp.array([[[1.0]], [[3.0]]]))
    >>> mean.tolist(), std.tolist()
    ([[2.0]], [[1.0]])
  """
  realized = ledgers.realized if isinstance(ledgers, Ledger) else jnp.asarray(ledgers)
  if realized.ndim != 3:
    raise ValueError(f"ledgers must carry a leading seed axis: realized of shape (R, n, K), got {realized.shape}")
  return jnp.mean(realized, axis=0), jnp.std(realized, axis=0)


def group_factor(num_examples: int, group_size: int, *, fixed_denominator: bool = False) -> float:
  """The factor of the group bound (THEORY §3): ``P(F, α) ≤ factor · Σ_{x∈F} P(x, α)``.

  - Mean over the data set (§2a, no filter): removing F moves the reference mean to ḡ_{D∖F}, and
    Σ_{x∈F}(g_x − ḡ_{D∖F}) = (n/(n−k)) Σ_{x∈F}(g_x − ḡ_D), so the group's per-step cost is
    αη‖Σ_F(g_x − ḡ_D)‖²/(4τ(n−k)²); with Cauchy–Schwarz ‖Σ_F d_x‖² ≤ k Σ_F ‖d_x‖² the factor is
    ``k · ((n−1)/(n−k))²``.
  - Fixed denominator b (the certified full-batch filter, Poisson sampling at q = 1): the group's cost is
    αη‖Σ_F g_x‖²/(4τb²), so the factor is ``k``.

  Args:
    num_examples: n, the examples in the mean (k < n).
    group_size: k = |F| ≥ 1.
    fixed_denominator: True for the fixed-denominator estimate.

  Returns:
    The factor (a Python float).

  Raises:
    ValueError: unless 1 ≤ k < n.

  Examples:
    >>> group_factor(10, 2)  # 2 * (9/8)**2
    2.53125
    >>> group_factor(10, 2, fixed_denominator=True)
    2.0
  """
  for name, v in (("num_examples", num_examples), ("group_size", group_size)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise TypeError(f"{name} must be an integer, got {v!r}")
  if not 1 <= group_size < num_examples:
    raise ValueError(f"group_size must satisfy 1 <= k < n = {num_examples}, got k = {group_size}")
  k, n = float(group_size), float(num_examples)
  return k if fixed_denominator else k * ((n - 1.0) / (n - k)) ** 2


def group_privacy_loss(
    realized: ArrayLike,
    forget_indices: ArrayLike,
    *,
    num_examples: int | None = None,
    fixed_denominator: bool = False,
) -> jax.Array:
  """Group bound for full-batch accounting (THEORY §3): ``P(F, α) ≤ group_factor · Σ_{x∈F} P(x, α)``.

  With the mean over the data set (§2a) the factor is ``k((n−1)/(n−k))²``; with a fixed denominator
  (the certified filter) it is ``k`` (:func:`group_factor`). The bound holds step by step, so it holds
  for the realized sums; like them it is a certified group RDP bound only with the individual filter.
  It is a full-batch result: Poisson-sampled and shuffled runs have no group bound here.

  Args:
    realized: (n, K) realized losses.
    forget_indices: (k,) distinct integer indices of the group.
    num_examples: n of the mean (default: the rows of ``realized``).
    fixed_denominator: True when the run used a fixed denominator (the certified full-batch filter).

  Returns:
    (K,) bound on the group's loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> group_privacy_loss(jnp.array([[1.0], [2.0], [4.0]]), jnp.array([0, 2])).tolist()  # 2*(2/1)^2*5
    [40.0]
  """
  realized = jnp.asarray(realized)
  idx = jnp.asarray(forget_indices)
  if realized.ndim != 2:
    raise ValueError(f"realized must have shape (n, K), got {realized.shape}")
  if idx.ndim != 1 or not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"forget_indices must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
  # Empty, duplicated or out-of-range indices would give a silently wrong bound (jax clamps indices).
  _checks.check_index_set("forget_indices", idx, realized.shape[0])
  n = realized.shape[0] if num_examples is None else num_examples
  factor = group_factor(n, int(idx.shape[0]), fixed_denominator=fixed_denominator)
  return factor * jnp.sum(realized[idx], axis=0)


# ----------------------------------------------------------------------------------------------------
# RDP -> (epsilon, delta)
# ----------------------------------------------------------------------------------------------------


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
