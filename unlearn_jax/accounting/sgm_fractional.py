"""The fractional-order series of the sampled Gaussian mechanism's RDP (MTZ19 §3.3), as kernels.

Numeric kernels of :mod:`unlearn_jax.accounting.sgm` (their length is the math): both series of
Mironov, Talwar, Zhang 2019 in the form ``dp_accounting`` sums them (absolute values of the generalised
binomial coefficients), summed in blocks of ``_BLOCK`` terms, a rigorous bound or a quadrature estimate
of the tail, the matrix-product evaluation of a block (one exponential per (term, example) for all
orders) and a custom-JVP-friendly term-by-term path for derivatives.
"""

from __future__ import annotations

import math
from typing import TYPE_CHECKING, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from scipy import special as _sp_special

if TYPE_CHECKING:  # the plan is built in sgm.py, which imports this module
  from unlearn_jax.accounting.sgm import _SgmPlan

_BLOCK = 16  # fractional-series terms evaluated per loop iteration


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


def _frac_fast_layout(orders: tuple[float, ...], fracs: dict[float, list[int]], max_terms: int) -> _FracFast:
  groups = [idxs for _, idxs in sorted(fracs.items())]
  num_groups = len(groups)
  kg = max(len(g) for g in groups)
  rg = max(
    _BLOCK + max(int(math.floor(orders[i])) for i in g) - min(int(math.floor(orders[i])) for i in g) for g in groups
  )
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
  logc = (
    _sp_special.gammaln(alphas + 1) - _sp_special.gammaln(i + 1) - _sp_special.gammaln(alphas - i + 1)
  )  # log|C(α, i)|
  nb = (max_terms + _BLOCK - 1) // _BLOCK
  blocks = logc[:, : nb * _BLOCK].reshape(len(alphas), nb, _BLOCK)
  spread = float(np.max(blocks.max(axis=2) - blocks.min(axis=2)))
  return _FracFast(
    rows,
    onehot,
    shift,
    np.asarray(out_idx, np.int32),
    np.asarray(last_idx, np.int32),
    np.asarray(group_of, np.int32),
    spread,
  )


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
  return (
    log_q,
    log_1mq,
    1.0 / (2.0 * sigma**2),
    sigma**2 * (log_1mq - log_q) + 0.5,
    jnp.asarray(fp.alphas, dtype)[:, None],
  )


def _frac_stop(i0, lse_rest, bound, head, sigma, z0, alphas):
  """Stopping rules after the terms below ``i0``, (K_f, m) each: ``tail_ok`` where the quadrature tail
  may replace further terms (both Mills arguments ≥ 2 at i0 - 1/2, i0 > α + 1, and the rigorous bound
  ``_TAIL_NATS`` below the non-head terms), ``done`` where that holds or the bound is 30 nats below both
  the total and the non-head terms."""
  ref = jnp.minimum(jnp.logaddexp(head, lse_rest), lse_rest)
  s0 = i0 - 0.5
  geom = (
    ((s0 - z0) / sigma >= 2.0)[None, :] & ((s0 - alphas + z0[None, :]) / sigma[None, :] >= 2.0) & (s0 > alphas + 1.0)
  )
  tail_ok = geom & (bound < ref - _TAIL_NATS)
  return tail_ok, (bound < ref - 30.0) | tail_ok


def _frac_head(alphas, log_q, log_1mq, sigma, z0):
  """Terms i = 0, 1 of the first series, (K_f, 2, m), their log-sum and the log Φ values (2, m)."""
  u_h = jnp.stack([z0 / sigma, (z0 - 1.0) / sigma])  # (2, m)
  log_phi_h = jax.scipy.special.log_ndtr(u_h)
  t0h = jnp.stack(
    [
      alphas * log_1mq + log_phi_h[0][None, :],
      jnp.log(alphas) + log_q + (alphas - 1.0) * log_1mq + log_phi_h[1][None, :],
    ],
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
  decay only like i^{-α-2}, so the 30-nat criterion alone would need thousands of terms. The bound:
  with x_i = (i - z0)/σ, each first-series term equals |C(α,i)| (1-q)^α e^{-z0²/(2σ²)} Φ(-x_i) e^{x_i²/2}
  (the second series likewise with
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
  carry0 = (
    jnp.asarray(0.0, dtype),
    jnp.full((kf, m), -jnp.inf, dtype),
    zeros,
    zeros,
    zeros,
    jnp.full((kf, m), jnp.inf, dtype),
  )
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
  weights = (jnp.exp(t0h - log_a_plain[:, None, :]), jnp.exp(mx - log_a_plain), jnp.exp(tail - log_a_plain))
  head_grads = _frac_head_grads(alphas, q, sigma, big_l, u_h, log_phi_h)
  dlog_dq, dlog_ds = (
    jnp.sum(weights[0] * h, axis=1) + weights[1] * rest + jnp.where(use_tail, weights[2] * t, 0.0)
    for h, rest, t in zip(head_grads, (dq, ds), (tail_dq, tail_ds))
  )
  return log_a, (dlog_dq, dlog_ds)


def _frac_head_grads(alphas, q, sigma, big_l, u_h, log_phi_h):
  """d/dq and d/dσ of the two head terms t0_0, t0_1 of :func:`_frac_core`, each (K_f, 2, m)."""
  kf, m = alphas.shape[0], sigma.shape[0]
  lam_h = jnp.exp(_log_npdf(u_h) - log_phi_h)  # (2, m)
  dl_dq = -1.0 / (q * (1.0 - q))
  hq = jnp.stack(
    [-alphas / (1.0 - q) + lam_h[0] * sigma * dl_dq, 1.0 / q - (alphas - 1.0) / (1.0 - q) + lam_h[1] * sigma * dl_dq],
    axis=1,
  )
  hs = jnp.stack(
    [
      jnp.broadcast_to(lam_h[0] * (big_l - 0.5 / sigma**2), (kf, m)),
      jnp.broadcast_to(lam_h[1] * (big_l + 0.5 / sigma**2), (kf, m)),
    ],
    axis=1,
  )
  return hq, hs


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
  rowlog = (
    jax.lax.lgamma(alphas + 1.0) - jax.lax.lgamma(i_row[None, :] + 1.0) - jax.lax.lgamma(alphas - i_row[None, :] + 1.0)
  )
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
  h1 = (j * j - j)[:, :, None] * inv_2s2 + _log_ndtr_fast((j[:, :, None] - z0) / sigma) - s * j[:, :, None]
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
    t1 = rowlog[:, :, None] + jnp.take(
      h1_flat, jnp.asarray(ff.last_idx)[:, None] - (_BLOCK - 1) + jnp.arange(_BLOCK), axis=0
    )
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
  tail = jax.lax.cond(jnp.any(use_tail), lambda: _frac_tail(fp, n0, log_1mq, sigma, z0, dtype), lambda: bound)
  tail = jnp.where(use_tail, tail, bound)
  return _frac_assemble(head, jnp.logaddexp(lse_rest, tail), alphas, q, log_1mq, sigma, z0)[0]


def _fast_frac_ok(plan: _SgmPlan) -> bool:
  return plan.frac is not None and plan.frac.fast.row_spread <= 40.0
