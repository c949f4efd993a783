"""Exact linear-Gaussian testbed for the unlearning theorem (theory §5), float64 NumPy throughout.

Ridge loss ℓ = ½(aᵀθ − y)², r = λ/2‖θ‖², full batch, no clipping or projection. With
A = (1/n) Σ a aᵀ + λI, c = (1/n) Σ y a and M = I − ηA, the noisy step θ ← Mθ + ηc + sqrt(2ητ) ξ maps
N(μ, S) to N(Mμ + ηc, M S Mᵀ + 2ητ I), so every law of theory §4 is a Gaussian known in closed form:
π_T(D) (trained on D), π_T(D') (the oracle, retrained on D' = D minus x, whose objective is the mean
over the n − 1 remaining examples), ν' (the stationary law of the D' chain) and ρ_k (k fine-tuning
steps on D' from π_T(D)). Powers of M are taken in the eigenbasis of the symmetric A, so a law after T
steps costs O(d³) whatever T is, and the stationary covariance solves S = M S M + 2ητ I exactly.

This module is the ground truth the bounds of :mod:`unlearn_jax.certify.bounds` are checked against.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks, accounting
from unlearn_jax.algorithms import sgld
from unlearn_jax.evaluate.statistics import spearman

__all__ = [
  "RidgeProblem",
  "exact_steps_to_unlearn",
  "gaussian_law_after",
  "gaussian_renyi",
  "make_outlier_problem",
  "per_instance_exact",
  "realized_vs_exact",
  "stationary_law",
  "unlearned_laws",
]


class RidgeProblem(NamedTuple):
  """The ridge objective L(θ) = (1/n) Σ ½(a_iᵀθ − y_i)² + λ/2‖θ‖² as (A, c): ∇L(θ) = Aθ − c.

  Attributes:
    X: features, shape (n, d).
    y: targets, shape (n,).
    lam: ridge λ ≥ 0.
    A: (1/n) XᵀX + λ I, shape (d, d).
    c: (1/n) Xᵀy, shape (d,).
  """

  X: np.ndarray
  y: np.ndarray
  lam: float
  A: np.ndarray
  c: np.ndarray

  @classmethod
  def from_data(cls, X: ArrayLike, y: ArrayLike, lam: float) -> RidgeProblem:
    """Builds the problem from data.

    Args:
      X: features, shape (n, d), n ≥ 1.
      y: targets, shape (n,).
      lam: ridge λ ≥ 0.

    Returns:
      The problem.

    Raises:
      ValueError: on shape mismatch, non-finite data or λ < 0.

    Examples:
      >>> p = RidgeProblem.from_data(np.eye(2), np.array([1., 2.]), 0.5)
      >>> p.A.tolist(), p.c.tolist()
      ([[1.0, 0.0], [0.0, 1.0]], [0.5, 1.0])
    """
    X = np.asarray(X, dtype=np.float64)
    y = np.asarray(y, dtype=np.float64)
    if X.ndim != 2 or y.ndim != 1 or X.shape[0] != y.shape[0] or X.shape[0] == 0:
      raise ValueError(f"X must be (n, d) and y (n,) with n >= 1, got X {X.shape} and y {y.shape}")
    _checks.check_finite_array("X", X)
    _checks.check_finite_array("y", y)
    _checks.check_nonnegative("lam", lam)
    n, d = X.shape
    return cls(X, y, float(lam), X.T @ X / n + lam * np.eye(d), X.T @ y / n)

  @property
  def num_examples(self) -> int:
    return self.X.shape[0]

  def remove(self, index: int) -> RidgeProblem:
    """The problem on D' = D minus example ``index`` (mean over the n − 1 others).

    Examples:
      >>> p = RidgeProblem.from_data(np.array([[1.], [3.]]), np.array([1., 0.]), 0.)
      >>> p.remove(0).A.tolist()
      [[9.0]]
    """
    n = self.num_examples
    if n < 2:
      raise ValueError(f"cannot remove an example from a data set of n = {n} < 2 examples")
    if not 0 <= index < n:
      raise ValueError(f"index must lie in [0, {n}), got {index!r}")
    keep = np.arange(n) != index
    return RidgeProblem.from_data(self.X[keep], self.y[keep], self.lam)

  def minimizer(self) -> np.ndarray:
    """A⁻¹c, the minimizer of L and the mean of the stationary law."""
    return np.linalg.solve(self.A, self.c)

  def per_example_grad_norms(self, theta: ArrayLike) -> np.ndarray:
    """‖∇ℓ_i(θ)‖ = ‖a_i‖ |a_iᵀθ − y_i| for every example, shape (n,)."""
    theta = np.asarray(theta, dtype=np.float64)
    return np.linalg.norm(self.X, axis=1) * np.abs(self.X @ theta - self.y)


def _check_chain(step_size, temperature):
  _checks.check_positive("step_size", step_size)
  _checks.check_nonnegative("temperature", temperature)


def _eig_m(problem: RidgeProblem, step_size: float) -> tuple[np.ndarray, np.ndarray]:
  """Eigenvalues m_i of M = I − ηA and the orthonormal eigenvectors V (M = V diag(m) Vᵀ)."""
  a, V = np.linalg.eigh(problem.A)
  return 1.0 - step_size * a, V


def _geometric(r: np.ndarray, T: np.ndarray) -> np.ndarray:
  """Σ_{j<T} r^j elementwise (r = m², may equal 1); T broadcasts on a leading axis."""
  T = np.asarray(T, dtype=np.float64)[..., None]
  close = np.abs(1.0 - r) < 1e-12
  safe = np.where(close, 0.5, r)
  with np.errstate(over="ignore", invalid="ignore"):
    g = (1.0 - safe**T) / (1.0 - safe)
  return np.where(close, T, g)


def gaussian_law_after(
  problem: RidgeProblem,
  mu0: ArrayLike,
  S0: ArrayLike,
  T: Any,
  step_size: float,
  temperature: float,
) -> tuple[np.ndarray, np.ndarray]:
  """Exact law N(μ_T, S_T) after T noisy full-batch steps from θ₀ ~ N(μ₀, S₀) (theory §5).

  μ_{t+1} = M μ_t + η c, S_{t+1} = M S_t M + 2ητ I; in closed form μ_T = M^T μ₀ + (I − M^T) A⁻¹c and
  S_T = M^T S₀ M^T + 2ητ Σ_{j<T} M^{2j}, evaluated in the eigenbasis of A.

  Args:
    problem: the ridge problem (A must be invertible, λ > 0 or XᵀX full rank).
    mu0: initial mean, shape (d,).
    S0: initial covariance, shape (d, d), symmetric PSD (zeros: a point mass).
    T: number of steps (int ≥ 0), or an integer array of shape (K,) for K laws at once.
    step_size: η > 0.
    temperature: τ ≥ 0.

  Returns:
    ``(mu_T, S_T)`` of shapes (d,), (d, d) (or (K, d), (K, d, d) for an array T).

  Examples:
    >>> p = RidgeProblem.from_data(np.array([[1.]]), np.array([2.]), 0.)
    >>> mu, S = gaussian_law_after(p, np.zeros(1), np.zeros((1, 1)), 2, 0.5, 1.0)
    >>> mu.tolist(), S.tolist()
    ([1.5], [[1.25]])
  """
  _check_chain(step_size, temperature)
  T_arr = np.asarray(T)
  if np.any(T_arr < 0) or np.any(T_arr != np.round(T_arr)):
    raise ValueError(f"T must be a non-negative integer (or array of them), got {T!r}")
  m, V = _eig_m(problem, step_size)
  mu0 = np.asarray(mu0, dtype=np.float64)
  S0 = np.asarray(S0, dtype=np.float64)
  mstar = problem.minimizer()
  mT = m ** T_arr.astype(np.float64)[..., None]  # (..., d)
  z0 = V.T @ (mu0 - mstar)  # eigen coordinates
  mu = mstar + (mT * z0) @ V.T
  S0e = V.T @ S0 @ V
  noise = 2.0 * step_size * temperature * _geometric(m**2, T_arr)  # (..., d)
  Se = mT[..., :, None] * S0e * mT[..., None, :] + noise[..., :, None] * np.eye(m.size)
  S = V @ Se @ V.T
  return mu, 0.5 * (S + np.swapaxes(S, -1, -2))


def stationary_law(problem: RidgeProblem, step_size: float, temperature: float) -> tuple[np.ndarray, np.ndarray]:
  """Stationary law N(A⁻¹c, S) of the chain: S solves the discrete Lyapunov S = M S M + 2ητ I.

  In the eigenbasis of A, S = V diag(2ητ/(1 − m_i²)) Vᵀ (exact; needs |m_i| < 1, i.e. 0 < ηa_i < 2).

  Args:
    problem: the ridge problem.
    step_size: η > 0.
    temperature: τ > 0.

  Returns:
    ``(mu, S)``.

  Raises:
    ValueError: when the chain is not stable (some |1 − ηa_i| ≥ 1).

  Examples:
    >>> p = RidgeProblem.from_data(np.array([[1.]]), np.array([2.]), 0.)
    >>> mu, S = stationary_law(p, 0.5, 1.0)
    >>> mu.tolist(), round(float(S[0, 0]), 6)
    ([2.0], 1.333333)
  """
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("temperature", temperature)
  m, V = _eig_m(problem, step_size)
  if np.any(np.abs(m) >= 1):
    raise ValueError(
      f"the chain has no stationary law: step_size={step_size!r} gives eigenvalues of "
      f"M = I - eta A of modulus >= 1 ({m.tolist()}); need 0 < eta * eig(A) < 2"
    )
  s = 2.0 * step_size * temperature / (1.0 - m**2)
  S = (V * s) @ V.T
  return problem.minimizer(), 0.5 * (S + S.T)


def gaussian_renyi(alpha: Any, mu1: ArrayLike, S1: ArrayLike, mu2: ArrayLike, S2: ArrayLike) -> Any:
  """Rényi divergence D_α(N(μ1, S1) ‖ N(μ2, S2)), exact (theory §5).

  With S_α = α S2 + (1 − α) S1 (must be positive definite, else +inf):
  D_α = (α/2) Δμᵀ S_α⁻¹ Δμ − (1/(2(α−1))) log(det S_α / (det S1^{1−α} det S2^α)).
  Leading axes of the means / covariances broadcast (batched laws).

  Args:
    alpha: order α > 1 (float).
    mu1: mean of P, (..., d).
    S1: covariance of P, (..., d, d), PD.
    mu2: mean of Q.
    S2: covariance of Q, PD.

  Returns:
    A float (or array over the leading axes), ≥ 0 or +inf.

  Raises:
    ValueError: α ≤ 1 or non-finite; S1 or S2 not a finite positive-definite (d, d) matrix.

  Examples:
    >>> round(float(gaussian_renyi(2.0, np.zeros(1), np.eye(1), np.ones(1), np.eye(1))), 6)
    1.0
  """
  a = float(alpha)
  if not (math.isfinite(a) and a > 1):
    raise ValueError(f"alpha must be a finite Renyi order > 1, got {alpha!r}")
  mu1, mu2 = np.asarray(mu1, np.float64), np.asarray(mu2, np.float64)
  S1, S2 = np.asarray(S1, np.float64), np.asarray(S2, np.float64)
  for name, S in (("S1", S1), ("S2", S2)):
    if S.ndim < 2 or S.shape[-1] != S.shape[-2] or S.shape[-1] != mu1.shape[-1]:
      raise ValueError(f"{name} must be a (..., d, d) covariance with d = {mu1.shape[-1]}, got shape {S.shape}")
    if not np.all(np.isfinite(S)):
      raise ValueError(f"{name} must be finite, got NaN/Inf entries")
    eig_min = np.linalg.eigvalsh(0.5 * (S + np.swapaxes(S, -1, -2)))[..., 0]
    if np.any(eig_min <= 0):
      raise ValueError(f"{name} must be positive definite, got smallest eigenvalue {float(np.min(eig_min))!r}")
  Sa = a * S2 + (1.0 - a) * S1
  Sa = 0.5 * (Sa + np.swapaxes(Sa, -1, -2))
  lam_min = np.linalg.eigvalsh(Sa)[..., 0]
  scale = np.max(np.abs(np.linalg.eigvalsh(S2)), axis=-1)
  pd = lam_min > 1e-13 * scale
  eye = np.eye(Sa.shape[-1])
  Sa_safe = np.where(pd[..., None, None], Sa, eye)
  dmu = np.broadcast_to(mu1 - mu2, Sa.shape[:-1])
  quad = np.einsum("...i,...i->...", dmu, np.linalg.solve(Sa_safe, dmu[..., None])[..., 0])
  _, ld_a = np.linalg.slogdet(Sa_safe)
  _, ld_1 = np.linalg.slogdet(S1)
  _, ld_2 = np.linalg.slogdet(S2)
  val = 0.5 * a * quad - (ld_a - (1.0 - a) * ld_1 - a * ld_2) / (2.0 * (a - 1.0))
  val = np.where(pd, np.maximum(val, 0.0), np.inf)
  return val[()] if np.ndim(val) == 0 else val


def unlearned_laws(
  problem: RidgeProblem,
  index: int,
  T: int,
  k: Any,
  step_size: float,
  temperature: float,
  mu0: ArrayLike,
  S0: ArrayLike,
) -> dict[str, Any]:
  """All the laws of theory §4 for removing example ``index``.

  Returns:
    dict with ``trained`` = π_T(D), ``oracle`` = π_T(D'), ``stationary`` = ν', ``unlearned`` = ρ_k
    (k fine-tuning steps on D' from π_T(D); batched when k is an array), each a ``(mu, S)`` pair, and
    ``problem_retain`` = the D' problem.

  Examples:
    >>> p = make_outlier_problem(n=6, d=2, seed=0)
    >>> laws = unlearned_laws(p, 0, 50, 10, 0.1, 0.01, np.zeros(2), np.eye(2))
    >>> sorted(laws)
    ['oracle', 'problem_retain', 'stationary', 'trained', 'unlearned']
  """
  retain = problem.remove(index)
  trained = gaussian_law_after(problem, mu0, S0, T, step_size, temperature)
  oracle = gaussian_law_after(retain, mu0, S0, T, step_size, temperature)
  stationary = stationary_law(retain, step_size, temperature)
  unlearned = gaussian_law_after(retain, trained[0], trained[1], k, step_size, temperature)
  return dict(trained=trained, oracle=oracle, stationary=stationary, unlearned=unlearned, problem_retain=retain)


def per_instance_exact(
  problem: RidgeProblem,
  index: int,
  alpha: float,
  T: int,
  k: int,
  step_size: float,
  temperature: float,
  mu0: ArrayLike,
  S0: ArrayLike,
) -> dict[str, float]:
  """Every quantity of the per-instance theorem (theory §4), exactly, for removing ``index``.

  Returns:
    dict with ``P`` = D_{4α}(π_T(D)‖π_T(D')), ``E1`` = D_{4α−1}(π_T(D')‖ν'),
    ``E2`` = D_{2α−1}(ν'‖π_T(D')), ``C_LSI`` = 2 λ_max(S of ν'), ``exact`` = D_α(ρ_k‖π_T(D')) and the
    intermediates of the proof: ``D2a_rhok_nu`` = D_{2α}(ρ_k‖ν'), ``D2a_rho0_nu`` = D_{2α}(π_T(D)‖ν'),
    ``P_alpha`` = D_α(π_T(D)‖π_T(D')), ``m`` = λ_min of the D' Hessian A'.

  Examples:
    >>> p = make_outlier_problem(n=6, d=2, seed=0)
    >>> r = per_instance_exact(p, 0, 2.0, 200, 10, 0.1, 0.05, np.zeros(2), np.eye(2))
    >>> r["exact"] <= r["P"], r["E2"] >= 0
    (True, True)
  """
  laws = unlearned_laws(problem, index, T, k, step_size, temperature, mu0, S0)
  tr, orc, st, un = laws["trained"], laws["oracle"], laws["stationary"], laws["unlearned"]
  a = float(alpha)
  return dict(
    P=float(gaussian_renyi(4 * a, *tr, *orc)),
    E1=float(gaussian_renyi(4 * a - 1, *orc, *st)),
    E2=float(gaussian_renyi(2 * a - 1, *st, *orc)),
    C_LSI=float(2.0 * np.linalg.eigvalsh(st[1])[-1]),
    exact=float(gaussian_renyi(a, *un, *orc)),
    D2a_rhok_nu=float(gaussian_renyi(2 * a, *un, *st)),
    D2a_rho0_nu=float(gaussian_renyi(2 * a, *tr, *st)),
    P_alpha=float(gaussian_renyi(a, *tr, *orc)),
    m=float(np.linalg.eigvalsh(laws["problem_retain"].A)[0]),
  )


def exact_steps_to_unlearn(
  problem: RidgeProblem,
  index: int,
  alpha: float,
  eps: float,
  T: int,
  step_size: float,
  temperature: float,
  mu0: ArrayLike,
  S0: ArrayLike,
  *,
  max_steps: int = 200_000,
  chunk: int = 2048,
) -> float:
  """The exact least k with D_α(ρ_k ‖ π_T(D')) ≤ ε (first crossing), +inf if none up to ``max_steps``.

  Examples:
    >>> p = make_outlier_problem(n=6, d=2, seed=0)
    >>> exact_steps_to_unlearn(p, 0, 2.0, 1e9, 200, 0.1, 0.05, np.zeros(2), np.eye(2))
    0.0
  """
  laws = unlearned_laws(problem, index, T, 0, step_size, temperature, mu0, S0)
  retain, (mu_t, S_t), orc = laws["problem_retain"], laws["trained"], laws["oracle"]
  start = 0
  while start <= max_steps:
    ks = np.arange(start, min(start + chunk, max_steps + 1))
    mu_k, S_k = gaussian_law_after(retain, mu_t, S_t, ks, step_size, temperature)
    d = gaussian_renyi(alpha, mu_k, S_k, orc[0], orc[1])
    hit = np.nonzero(d <= eps)[0]
    if hit.size:
      return float(ks[hit[0]])
    start += chunk
  return math.inf


def make_outlier_problem(
  n: int = 40,
  d: int = 3,
  *,
  lam: float = 0.1,
  noise: float = 0.1,
  outlier_scale: float = 4.0,
  num_outliers: int = 1,
  seed: int = 0,
) -> RidgeProblem:
  """A ridge problem with a few outliers (default: n = 40, d = 3, one outlier).

  x_i ~ N(0, I/d)·√d-ish unit scale, y = xᵀw + noise; the first ``num_outliers`` examples get features
  scaled by ``outlier_scale`` and a target of the opposite sign with magnitude ``outlier_scale``² (a
  point the model cannot fit, hence much harder to unlearn).

  Examples:
    >>> p = make_outlier_problem(n=10, d=2, seed=1)
    >>> p.X.shape, p.num_examples
    ((10, 2), 10)
  """
  rng = np.random.default_rng(seed)
  X = rng.normal(size=(n, d))
  w = rng.normal(size=d)
  y = X @ w + noise * rng.normal(size=n)
  X[:num_outliers] *= outlier_scale
  y[:num_outliers] = -np.sign(X[:num_outliers] @ w) * outlier_scale**2
  return RidgeProblem.from_data(X, y, lam)


# ----------------------------------------------------------------------------------------------------
# the project's realized ledger against the exact divergence


def ridge_loss(theta: Any, example: Any) -> Any:
  """½(aᵀθ − y)² for one example ``(a, y)`` (jax-traceable)."""
  a, y = example
  return 0.5 * (a @ theta - y) ** 2


def _exact_divergences(problem, orders, T, step_size, temperature, mu0, S0) -> np.ndarray:
  """(n, K) exact D_α(π_T(D) ‖ π_T(D minus x)) of every example at every order (may hold +inf)."""
  law = gaussian_law_after(problem, mu0, S0, T, step_size, temperature)
  rows = []
  for i in range(problem.X.shape[0]):
    law_i = gaussian_law_after(problem.remove(i), mu0, S0, T, step_size, temperature)
    rows.append([float(gaussian_renyi(a, *law, *law_i)) for a in orders])
  return np.array(rows)


def _realized_ledgers(problem, orders, T, step_size, temperature, num_seeds, mu0, S0, seed) -> np.ndarray:
  """(R, n, K) realized P of the project's full-batch SGLD on the testbed, one ledger per vmapped seed."""
  n, d = problem.X.shape
  with jax.enable_x64(True):
    cfg = accounting.accountant(orders)
    alg = sgld(ridge_loss, mode="full_batch", clip_norm=None, weight_decay=problem.lam, accounting=cfg)
    data = (jnp.asarray(problem.X), jnp.asarray(problem.y))
    w, V = np.linalg.eigh(S0)
    chol = V * np.sqrt(np.maximum(w, 0.0))  # S0 = chol chol^T

    def run(key):
      k0, kr = jax.random.split(key)
      theta0 = jnp.asarray(mu0) + jnp.asarray(chol) @ jax.random.normal(k0, (d,), jnp.float64)
      state = alg.init(theta0, n)

      def body(state, t):
        state, _ = alg.step(state, data, jax.random.fold_in(kr, t), step_size, temperature)
        return state, None

      state, _ = jax.lax.scan(body, state, jnp.arange(T))
      return state.ledger.realized

    keys = jax.random.split(jax.random.key(seed), num_seeds)
    return np.asarray(jax.jit(jax.vmap(run))(keys))


def realized_vs_exact(
  problem: RidgeProblem | None = None,
  *,
  orders: tuple[float, ...] = (2.0, 4.0, 8.0),
  T: int = 2000,
  step_size: float = 0.05,
  temperature: float = 0.01,
  num_seeds: int = 32,
  mu0: ArrayLike | None = None,
  S0: ArrayLike | None = None,
  seed: int = 0,
) -> dict[str, Any]:
  """Runs the project's SGLD with the ledger on the testbed and compares realized P with exact D_α.

  Full batch (theory §1 "full batch, mean"), no clipping, weight decay λ: exactly the §5 chain, from
  θ₀ ~ N(mu0, S0), ``num_seeds`` vmapped seeds, float64. For each order α of ``orders`` and example x:
  the seed-averaged realized P(x, α) (§3) and the exact D_α(π_T(D) ‖ π_T(D')).

  Without the individual filter the realized P is an **estimate** of the exact divergence, not a
  bound (theory §3): it measures the mean shift at a shared θ_t and cannot see that the two chains'
  covariances differ. On long runs it is far above the exact value; on short runs from a broad initial
  law the exact divergence can be several times larger, or +∞ (the covariances are too far apart for
  the order), while P stays finite. ``kind`` says so; ``fraction_realized_ge_exact`` and ``ratio``
  report how the two compare.

  Returns:
    dict with ``kind`` = ``"estimate"``, ``orders`` (K,), ``realized_mean`` / ``realized_std`` (n, K),
    ``exact`` (n, K, may hold +inf), ``ratio`` (n, K) realized / exact (0 where exact is +inf),
    ``spearman`` (K,) (+inf ranked above every finite value), ``fraction_realized_ge_exact`` (K,),
    ``ratio_median`` / ``ratio_min`` (K,) and ``num_exact_infinite`` (K,).

  Examples:
    >>> r = realized_vs_exact(make_outlier_problem(n=6, d=2), orders=(2.0,), T=50, num_seeds=2)
    >>> r["kind"], r["realized_mean"].shape, bool(r["spearman"][0] > 0)
    ('estimate', (6, 1), True)
  """
  if problem is None:
    problem = make_outlier_problem()
  d = problem.X.shape[1]
  mu0 = np.zeros(d) if mu0 is None else np.asarray(mu0, np.float64)
  S0 = np.eye(d) if S0 is None else np.asarray(S0, np.float64)
  _checks.check_positive("num_seeds", num_seeds)
  exact = _exact_divergences(problem, orders, T, step_size, temperature, mu0, S0)
  realized = _realized_ledgers(problem, orders, T, step_size, temperature, num_seeds, mu0, S0, seed)
  mean, std = realized.mean(0), realized.std(0)
  infinite = np.isinf(exact)
  ratio = np.where(infinite, 0.0, mean / np.where(infinite, 1.0, exact))
  finite_max = np.max(np.where(infinite, -np.inf, exact)) if np.any(~infinite) else 1.0
  exact_rank = np.where(infinite, 10.0 * abs(finite_max) + 1.0, exact)  # +inf above every finite value
  return dict(
    kind="estimate",
    orders=np.asarray(orders),
    realized_mean=mean,
    realized_std=std,
    exact=exact,
    ratio=ratio,
    spearman=np.array([float(spearman(mean[:, j], exact_rank[:, j])) for j in range(len(orders))]),
    fraction_realized_ge_exact=np.mean(mean >= exact, axis=0),
    ratio_median=np.median(ratio, axis=0),
    ratio_min=np.min(ratio, axis=0),
    num_exact_infinite=np.sum(infinite, axis=0),
  )
