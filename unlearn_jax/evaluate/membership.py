"""Membership-inference ε per forget example (theory §6; as scored in the NeurIPS 2023 unlearning
challenge): the uncorrected point estimate (:func:`membership_epsilon`, *not* a lower bound — about log 4
for two identical laws at N = 16–32 models) and the lower bound the study reports
(:func:`membership_lower_bound`: one-sided Clopper–Pearson, simultaneous over thresholds, 0 on identical
laws), with the most that N models can resolve (:func:`membership_resolvable_cap`).
"""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike
from scipy import stats

from unlearn_jax import _checks
from unlearn_jax._compile import call

__all__ = ["membership_epsilon", "membership_lower_bound", "membership_resolvable_cap"]


def _clopper_pearson_upper(num_samples: int, confidence: float) -> np.ndarray:
  """Upper ends of the two-sided Clopper–Pearson intervals for k = 0..N errors out of N."""
  k = np.arange(num_samples + 1, dtype=float)
  alpha = 1.0 - confidence
  with np.errstate(all="ignore"):
    upper = stats.beta.ppf(1.0 - alpha / 2.0, k + 1.0, num_samples - k)
  upper[-1] = 1.0
  return upper


def _epsilon_from_rates(fpr, fnr, delta, one_sided):
  """max of log((1-δ-FPR)/FNR) and log((1-δ-FNR)/FPR) (only the latter when one_sided); terms with a
  zero denominator or a non-positive numerator are dropped (-inf)."""

  def term(num_rate, den_rate):
    num = 1.0 - delta - num_rate
    ok = (num > 0) & (den_rate > 0)
    return jnp.where(ok, jnp.log(jnp.where(ok, num, 1.0)) - jnp.log(jnp.where(ok, den_rate, 1.0)), -jnp.inf)

  if one_sided:
    return term(fnr, fpr)
  return jnp.maximum(term(fpr, fnr), term(fnr, fpr))


def membership_epsilon(
  unlearned_scores: ArrayLike,
  retrained_scores: ArrayLike,
  *,
  delta: float,
  confidence: float | None = None,
  one_sided: bool = False,
  simultaneous: bool = False,
) -> jax.Array:
  """Per-example membership-inference lower bound on ε (theory §6; NeurIPS 2023 unlearning challenge).

  For forget example j, the N unlearned scores ``u = unlearned_scores[:, j]`` and the N retrained scores
  ``r = retrained_scores[:, j]`` (logit-scaled confidences from N independent models each) are separated
  by threshold tests. For every threshold t among the pooled sample values (and ±inf) and both
  directions ("unlearned if s >= t" and "unlearned if s <= t"), with FPR = fraction of retrained models
  called unlearned and FNR = fraction of unlearned models called retrained, an (ε, δ)-indistinguishable
  pair of laws must satisfy ``FPR + e^ε FNR >= 1 - δ`` and ``FNR + e^ε FPR >= 1 - δ``, so

  ``ε̂ = max_t max( log((1-δ-FPR)/FNR), log((1-δ-FNR)/FPR) )``, clipped below at 0.

  Zero rates: a term whose denominator rate is 0 (or whose numerator ``1-δ-rate`` is ``<= 0``) is dropped
  instead of giving ``+inf``; the point estimate therefore never exceeds about ``log(N (1-δ))``, the
  largest ε N samples can resolve (perfectly separated samples give this cap). The result is always
  finite and ``>= 0``.

  With ``confidence`` (e.g. 0.95), FPR and FNR are replaced by the upper ends of their two-sided
  Clopper–Pearson intervals at that level (computed with ``scipy.stats.beta``; jax has no inverse
  incomplete beta), which are > 0, so the result is a high-confidence *lower bound* on ε for each
  threshold. By default (as in the challenge) the maximum over thresholds is not corrected for multiple
  comparisons, so the maximum can exceed the true ε with more than ``1 - confidence`` probability;
  ``simultaneous=True`` applies a Bonferroni correction over all the rate bounds used, so that with
  probability ``>= confidence`` every threshold's bound holds at once and the result is a valid lower
  bound on the ε of the two laws.

  ``one_sided=True`` keeps only ``log((1-δ-FNR)/FPR)``, the inequality implied by
  ``P_unlearned(S) <= e^ε P_retrained(S) + δ`` alone -- the direction a certificate on
  ``D_α(ρ_k ‖ π_T(D'))`` (theory §4) speaks about -- so it can be compared with such a certificate.

  Args:
    unlearned_scores: ``(N, m)`` scores from N unlearned models on m forget examples.
    retrained_scores: ``(N, m)`` scores from N retrained (oracle) models, same m examples.
    delta: δ in [0, 1).
    confidence: ``None`` for the point estimate, else a level in (0, 1) for Clopper–Pearson bounds.
    one_sided: keep only the unlearned-vs-retrained direction (see above).
    simultaneous: Bonferroni-correct the Clopper–Pearson level over thresholds (needs ``confidence``).

  Returns:
    ``(m,)`` ε estimates (or lower bounds), finite and non-negative.

  Raises:
    ValueError: on shape mismatch, fewer than 1 model, non-finite scores, δ outside [0, 1) or a
      confidence outside (0, 1).

  Examples:
    >>> import jax.numpy as jnp
    >>> u = jnp.array([[2.0], [3.0], [4.0], [5.0]])   # perfectly separated from r
    >>> r = jnp.array([[-2.0], [-3.0], [-4.0], [-5.0]])
    >>> round(float(membership_epsilon(u, r, delta=0.0)[0]), 4)  # the cap log(N) = log(4)
    1.3863
    >>> float(membership_epsilon(r, r, delta=0.0)[0])
    0.0
  """
  u = jnp.asarray(unlearned_scores)
  r = jnp.asarray(retrained_scores)
  if u.ndim != 2 or u.shape != r.shape:
    raise ValueError(
      "unlearned_scores and retrained_scores must both have shape (N, m) (models by forget examples), "
      f"got {u.shape} and {r.shape}"
    )
  if u.shape[0] < 1 or u.shape[1] < 1:
    raise ValueError(f"need at least one model and one example, got shape {u.shape}")
  _checks.check_finite_array("unlearned_scores", u)
  _checks.check_finite_array("retrained_scores", r)
  d = _checks._as_float("delta", delta)
  if d is not None and not 0.0 <= d < 1.0:
    raise ValueError(f"delta must lie in [0, 1), got {delta!r}")
  num_models = u.shape[0]
  upper = None
  if simultaneous and confidence is None:
    raise ValueError("simultaneous=True corrects Clopper-Pearson bounds and needs a confidence, got confidence=None")
  if confidence is not None:
    _checks.check_probability("confidence", confidence)
    level = float(confidence)
    if simultaneous:
      # Bonferroni over every rate bound used: 2 rates x 2 directions x (2N + 2) thresholds, each an
      # upper end failing with probability (1 - confidence) / num_bounds.
      num_bounds = 4 * (2 * num_models + 2)
      level = 1.0 - 2.0 * (1.0 - level) / num_bounds
    upper = jnp.asarray(_clopper_pearson_upper(num_models, level), dtype=u.dtype)
  return call(_membership_core, (bool(one_sided),), u, r, jnp.asarray(delta, u.dtype), upper)


def membership_lower_bound(
  unlearned_scores: ArrayLike,
  retrained_scores: ArrayLike,
  *,
  delta: float,
  confidence: float = 0.95,
) -> jax.Array:
  """The membership ε *lower bound* reported by the study (theory §6).

  :func:`membership_epsilon` with one-sided Clopper–Pearson upper ends of FPR and FNR, Bonferroni-
  corrected over every threshold and direction (``confidence``, ``one_sided=True``,
  ``simultaneous=True``): with probability ≥ ``confidence`` the two laws are not (ε, δ)-close for any
  smaller ε in the direction a certificate on D_α(ρ_k ‖ π_T(D')) speaks about. It is 0 on two
  identical laws (up to the ``1 − confidence`` chance), unlike the point estimate, whose median for
  identical laws is about log 4 at N = 16–32 models and 1.4–1.5 at N = 64–1,000. It cannot exceed
  :func:`membership_resolvable_cap` of the number of models.

  Args:
    unlearned_scores: ``(N, m)`` scores from N unlearned models.
    retrained_scores: ``(N, m)`` scores from N retrained models.
    delta: δ in [0, 1).
    confidence: level in (0, 1) of the simultaneous bound.

  Returns:
    ``(m,)`` lower bounds, finite and ≥ 0.

  Examples:
    >>> import jax
    >>> a, b = jax.random.normal(jax.random.key(0), (2, 64, 3))
    >>> membership_lower_bound(a, b, delta=1e-5).tolist()  # two identical laws
    [0.0, 0.0, 0.0]
  """
  return membership_epsilon(
    unlearned_scores, retrained_scores, delta=delta, confidence=confidence, one_sided=True, simultaneous=True
  )


def membership_resolvable_cap(num_models: int, *, delta: float, confidence: float = 0.95) -> float:
  """The largest value :func:`membership_lower_bound` can take with ``num_models`` models per side.

  It is reached by perfectly separated samples (no error at the best threshold); below it N models
  cannot tell an ε apart. For δ = 1e-5 and 95%: 0 for N ≤ 10 (no leakage can be shown at all), about
  0.45 for N = 16, 1.2 for N = 32, 1.9 for N = 64.

  Args:
    num_models: N ≥ 1 models per side.
    delta: δ in [0, 1).
    confidence: level of the bound.

  Returns:
    The cap (a Python float, ≥ 0).

  Examples:
    >>> membership_resolvable_cap(8, delta=1e-5)
    0.0
    >>> round(membership_resolvable_cap(32, delta=1e-5), 2)
    1.18
  """
  if isinstance(num_models, bool) or not isinstance(num_models, (int, np.integer)) or num_models < 1:
    raise ValueError(f"num_models must be an integer >= 1, got {num_models!r}")
  separated = jnp.arange(num_models, dtype=jnp.float32)[:, None]
  return float(
    membership_lower_bound(separated + num_models, separated - num_models, delta=delta, confidence=confidence)[0]
  )


def _membership_core(one_sided, u, r, delta, upper):
  num_models = u.shape[0]
  if upper is not None:
    to_rate = lambda count: upper[count]
  else:
    to_rate = lambda count: count.astype(u.dtype) / num_models

  def per_example(u_j, r_j):
    u_sorted, r_sorted = jnp.sort(u_j), jnp.sort(r_j)
    thresholds = jnp.concatenate([u_j, r_j, jnp.array([-jnp.inf, jnp.inf], u_j.dtype)])
    # "unlearned if s >= t": FP = #(r >= t), FN = #(u < t).
    fp_hi = num_models - jnp.searchsorted(r_sorted, thresholds, side="left")
    fn_hi = jnp.searchsorted(u_sorted, thresholds, side="left")
    # "unlearned if s <= t": FP = #(r <= t), FN = #(u > t).
    fp_lo = jnp.searchsorted(r_sorted, thresholds, side="right")
    fn_lo = num_models - jnp.searchsorted(u_sorted, thresholds, side="right")
    eps_hi = _epsilon_from_rates(to_rate(fp_hi), to_rate(fn_hi), delta, one_sided)
    eps_lo = _epsilon_from_rates(to_rate(fp_lo), to_rate(fn_lo), delta, one_sided)
    return jnp.maximum(jnp.max(jnp.maximum(eps_hi, eps_lo)), 0.0)

  return jax.vmap(per_example, in_axes=(1, 1))(u, r)
