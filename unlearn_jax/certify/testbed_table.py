"""Per-instance certificates against exact unlearning and the worst-case baseline on the testbed
(theory §5): the table printed by ``unlearn-jax certify-testbed``."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax.certify import bounds, worst_case
from unlearn_jax.certify.testbed import (
  RidgeProblem,
  exact_steps_to_unlearn,
  make_outlier_problem,
  per_instance_exact,
  stationary_law,
)

__all__ = ["TableRow", "certify_testbed_table", "format_table"]


class TableRow(NamedTuple):
  """One example of :func:`certify_testbed_table`."""

  index: int
  privacy_loss_4alpha: float  # exact P(x, 4α)
  exact_steps: float  # exact least k with D_α(ρ_k‖π_T(D')) ≤ ε
  certified_steps: float  # per-instance k* with exact P, E₁, E₂, C_LSI
  certified_steps_stationary: float  # k* with E₁ = E₂ = 0 (stationarity assumed)
  worst_case_steps: float  # Chien et al.'s K at the same (α, ε)
  m: float  # strong convexity of L_{D'}


def certify_testbed_table(
  problem: RidgeProblem | None = None,
  *,
  alpha: float = 2.0,
  eps: float = 0.05,
  T: int = 2000,
  step_size: float = 0.05,
  temperature: float = 0.01,
  mu0: ArrayLike | None = None,
  S0: ArrayLike | None = None,
  clip_norm: float | None = None,
  max_steps: int = 200_000,
) -> tuple[list[TableRow], dict[str, Any]]:
  """Per example: exact steps to unlearn, certified per-instance k*, and Chien et al.'s worst-case K.

  The worst-case baseline uses m = λ_min(A') of each D' and a gradient bound C. Ridge has no clipping,
  so C is not a clip norm; unless ``clip_norm`` is given, C = max_i ‖∇ℓ_i(θ̄)‖ at the stationary mean θ̄
  = A⁻¹c of the D chain (labelled as such in the summary) — a heuristic stand-in, not a certified bound
  over the trajectory.

  Args:
    problem: the ridge problem (default :func:`make_outlier_problem`: n = 40, d = 3, one outlier).
    alpha: order α > 1 of the target.
    eps: ε > 0 of the target.
    T: training steps (from N(mu0, S0)).
    step_size: η.
    temperature: τ.
    mu0: initial mean (default 0).
    S0: initial covariance (default I).
    clip_norm: the worst-case baseline's C (default: see above).
    max_steps: search limit for the exact steps.

  Returns:
    ``(rows, summary)``; summary holds the medians / maxima of k*/exact and K/exact (over examples with
    exact ≥ 1), the fraction with k* < K, C and how it was chosen, and the stationarity label.

  Examples:
    >>> rows, summary = certify_testbed_table(make_outlier_problem(n=8, d=2), T=500)
    >>> len(rows), summary["sound"]
    (8, True)
  """
  # Check the caller's values here, so that errors name them (not a derived order such as 4α − 1).
  a = _checks._as_float("alpha", alpha)
  if a is None or not (math.isfinite(a) and a > 1):
    raise ValueError(f"alpha must be a finite Renyi order > 1, got {alpha!r}")
  _checks.check_positive("eps", eps)
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("temperature", temperature)
  if isinstance(T, bool) or not isinstance(T, (int, np.integer)) or T < 0:
    raise ValueError(f"T must be a non-negative integer number of training steps, got {T!r}")
  if clip_norm is not None:
    _checks.check_positive("clip_norm", clip_norm)
  with jax.enable_x64(True):
    return _certify_testbed_table(problem, alpha, eps, T, step_size, temperature, mu0, S0, clip_norm, max_steps, bounds)


def _certify_testbed_table(problem, alpha, eps, T, step_size, temperature, mu0, S0, clip_norm, max_steps, bounds):
  if problem is None:
    problem = make_outlier_problem()
  d = problem.X.shape[1]
  mu0 = np.zeros(d) if mu0 is None else np.asarray(mu0, np.float64)
  S0 = np.eye(d) if S0 is None else np.asarray(S0, np.float64)
  if clip_norm is None:
    theta_bar = stationary_law(problem, step_size, temperature)[0]
    clip_norm = float(np.max(problem.per_example_grad_norms(theta_bar)))
    clip_label = "C = max_i ||grad l_i(theta)|| at the stationary mean A^-1 c of D (heuristic, no clip)"
  else:
    clip_label = "C = clip_norm given by the caller"
  n = problem.num_examples
  rows = []
  for i in range(n):
    q = per_instance_exact(problem, i, alpha, T, 0, step_size, temperature, mu0, S0)
    kw = dict(alpha=alpha, step_size=step_size, temperature=temperature, lsi_constant=q["C_LSI"])
    k_cert = float(bounds.steps_to_unlearn(q["P"], eps, e1=q["E1"], e2=q["E2"], **kw))
    k_stat = float(bounds.steps_to_unlearn(q["P"], eps, **kw))
    K = float(
      worst_case.worst_case_steps(
        eps,
        orders=[alpha],
        m=q["m"],
        step_size=step_size,
        temperature=temperature,
        num_removed=1,
        clip_norm=clip_norm,
        num_examples=n,
      )
    )
    k_exact = exact_steps_to_unlearn(problem, i, alpha, eps, T, step_size, temperature, mu0, S0, max_steps=max_steps)
    rows.append(TableRow(i, q["P"], k_exact, k_cert, k_stat, K, q["m"]))
  ex = np.array([r.exact_steps for r in rows])
  kc = np.array([r.certified_steps for r in rows])
  kw_ = np.array([r.worst_case_steps for r in rows])
  use = np.isfinite(ex) & (ex >= 1)
  with np.errstate(divide="ignore", invalid="ignore"):
    r_cert, r_wc = kc[use] / ex[use], kw_[use] / ex[use]
  summary = dict(
    alpha=alpha,
    eps=eps,
    T=T,
    step_size=step_size,
    temperature=temperature,
    n=n,
    clip_norm=clip_norm,
    clip_norm_choice=clip_label,
    num_ratio_examples=int(use.sum()),
    median_certified_over_exact=float(np.median(r_cert)) if use.any() else math.nan,
    max_certified_over_exact=float(np.max(r_cert)) if use.any() else math.nan,
    median_worst_case_over_exact=float(np.median(r_wc)) if use.any() else math.nan,
    max_worst_case_over_exact=float(np.max(r_wc)) if use.any() else math.nan,
    fraction_certified_below_worst_case=float(np.mean(kc < kw_)),
    sound=bool(np.all(kc >= ex)),
    assumptions=bounds.EXACT_CONSTANTS,
  )
  return rows, summary


def format_table(rows: list[TableRow], summary: dict[str, Any]) -> str:
  """Plain-text rendering of :func:`certify_testbed_table`'s output.

  Examples:
    >>> rows, summary = certify_testbed_table(make_outlier_problem(n=4, d=2), T=300)
    >>> print(format_table(rows, summary).splitlines()[0])
    index  P(x,4a)  exact_k  certified_k*  k*(E1=E2=0)  worst_case_K
  """
  lines = ["index  P(x,4a)  exact_k  certified_k*  k*(E1=E2=0)  worst_case_K"]
  for r in rows:
    lines.append(
      f"{r.index:5d}  {r.privacy_loss_4alpha:8.3g}  {r.exact_steps:7.0f}  "
      f"{r.certified_steps:12.0f}  {r.certified_steps_stationary:11.0f}  "
      f"{r.worst_case_steps:12.0f}"
    )
  s = summary
  lines += [
    f"alpha={s['alpha']} eps={s['eps']} T={s['T']} eta={s['step_size']} tau={s['temperature']} n={s['n']}",
    f"worst case: {s['clip_norm_choice']}; C = {s['clip_norm']:.4g}",
    f"k*/exact: median {s['median_certified_over_exact']:.3g}, max "
    f"{s['max_certified_over_exact']:.3g}  (over {s['num_ratio_examples']} examples with exact >= 1)",
    f"K/exact:  median {s['median_worst_case_over_exact']:.3g}, max {s['max_worst_case_over_exact']:.3g}",
    f"fraction with k* < K: {s['fraction_certified_below_worst_case']:.3f};  sound (k* >= exact "
    f"everywhere): {s['sound']}",
  ]
  return "\n".join(lines)
