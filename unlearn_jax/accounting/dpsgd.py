"""DP-SGD users' vocabulary: noise multiplier and batch size ↔ temperature, and ε per example.

A DP-SGD step (Abadi et al. 2016; Opacus, jax-privacy, optax's ``dpsgd``) with learning rate η, clip
norm C, batch size (or expected batch size, q·n under Poisson sampling) B and noise multiplier σ is

    θ ← θ − η · (1/B) · (Σ_{i∈batch} clip_C(g_i) + σ C ξ),   ξ ~ N(0, I),

so the Gaussian noise on θ has standard deviation η σ C / B per coordinate. This library's step adds
sqrt(2 η τ) ξ at temperature τ (theory §0); equal noise means

    τ = η σ² C² / (2 B²),     σ = B · sqrt(2 τ / η) / C.

With these values the step *is* the DP-SGD step, and the ledger's cost of an example whose clipped
gradient has norm C is the sampled Gaussian mechanism's RDP at noise multiplier σ (theory §2b; in full
batch, q = 1 and a fixed denominator b = B, α/(2σ²) per step). The denominator B is the ``denominator``
of :func:`~unlearn_jax.algorithms.sgld` (Poisson default: q·n) — pass the same B here.

:func:`epsilon_report` turns a ledger into (ε, δ) per example with the one RDP → (ε, δ) conversion of
:mod:`~unlearn_jax.accounting.conversions`, and :func:`format_epsilon_report` says it the way a DP-SGD
user reads a privacy engine's output ("ε = … at δ = …"), next to the worst case — the ε a DP-SGD
accountant would report for every example.
"""

from __future__ import annotations

import textwrap  # noqa: F401 - used by the doctests
from collections.abc import Sequence
from typing import Any, NamedTuple

import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax._traced import guarded
from unlearn_jax.accounting.conversions import rdp_to_dp

__all__ = [
  "EpsilonReport",
  "epsilon_report",
  "format_epsilon_report",
  "noise_multiplier_from_temperature",
  "temperature_from_noise_multiplier",
]


def _check_common(batch_size: Any, clip_norm: Any, step_size: Any) -> None:
  _checks.check_positive("batch_size", batch_size)
  _checks.check_positive("clip_norm", clip_norm)
  _checks.check_positive("step_size", step_size)


def _floats(*values: ArrayLike) -> tuple[jnp.ndarray, ...]:
  return tuple(jnp.asarray(v, jnp.result_type(float)) for v in values)


@guarded
def temperature_from_noise_multiplier(
  noise_multiplier: ArrayLike, *, batch_size: ArrayLike, clip_norm: ArrayLike, step_size: ArrayLike
) -> jnp.ndarray:
  """The temperature τ = η σ² C² / (2 B²) whose noisy step equals DP-SGD with noise multiplier σ.

  Args:
    noise_multiplier: σ > 0 (the std of the summed noise in units of the clip norm).
    batch_size: B > 0, the batch size that divides the clipped sum (Poisson: the expected q·n).
    clip_norm: C > 0.
    step_size: η > 0 (the learning rate).

  Examples:
    >>> float(temperature_from_noise_multiplier(1.0, batch_size=100, clip_norm=1.0, step_size=0.5))
    2.5e-05
  """
  _checks.check_positive("noise_multiplier", noise_multiplier)
  _check_common(batch_size, clip_norm, step_size)
  sigma, b, c, eta = (
    jnp.asarray(v, jnp.result_type(float)) for v in (noise_multiplier, batch_size, clip_norm, step_size)
  )
  return eta * jnp.square(sigma * c / b) / 2.0


@guarded
def noise_multiplier_from_temperature(
  temperature: ArrayLike, *, batch_size: ArrayLike, clip_norm: ArrayLike, step_size: ArrayLike
) -> jnp.ndarray:
  """The DP-SGD noise multiplier σ = B · sqrt(2τ/η) / C of the noisy step at temperature τ.

  Args:
    temperature: τ > 0.
    batch_size: B > 0 (as in :func:`temperature_from_noise_multiplier`).
    clip_norm: C > 0.
    step_size: η > 0.

  Examples:
    >>> round(float(noise_multiplier_from_temperature(2.5e-5, batch_size=100, clip_norm=1.0, step_size=0.5)), 6)
    1.0
  """
  _checks.check_positive("temperature", temperature)
  _check_common(batch_size, clip_norm, step_size)
  tau, b, c, eta = _floats(temperature, batch_size, clip_norm, step_size)
  return b * jnp.sqrt(2.0 * tau / eta) / c


class EpsilonReport(NamedTuple):
  """(ε, δ) per example from a ledger, and the worst case.

  Attributes:
    epsilon: (n,) ε of each example at ``delta`` (minimised over the orders).
    best_order: (n,) the order that gave it.
    delta: δ.
    worst_case_epsilon: ε of the ledger's worst case (what a DP-SGD accountant reports for every
      example), or None when no worst case was given.
    certified: whether the ledger's losses are certified (individual filter) or estimates.
  """

  epsilon: np.ndarray
  best_order: np.ndarray
  delta: float
  worst_case_epsilon: float | None
  certified: bool

  def quantile(self, q: float) -> float:
    """The q-quantile of ε over the examples."""
    return float(np.quantile(self.epsilon, q))

  @property
  def fraction_below_worst_case(self) -> float | None:
    """The share of examples whose ε is below the worst case's."""
    if self.worst_case_epsilon is None:
      return None
    return float(np.mean(self.epsilon < self.worst_case_epsilon))


def epsilon_report(
  realized: ArrayLike,
  orders: Sequence[float] | ArrayLike,
  delta: float,
  *,
  worst_case: ArrayLike | None = None,
  certified: bool = False,
) -> EpsilonReport:
  """(ε, δ) per example from the ledger's P(x, α), with the one RDP → (ε, δ) conversion.

  Args:
    realized: (n, K) per-example privacy losses P(x, α) (``ledger.realized``, or averaged over seeds).
    orders: (K,) the orders of the ledger.
    delta: δ ∈ (0, 1).
    worst_case: (K,) the worst-case loss (``ledger.worst_case``), or None.
    certified: whether ``realized`` is certified (``ledger.certified``); said by the formatter.

  Returns:
    An :class:`EpsilonReport`.

  Examples:
    >>> import numpy as np
    >>> from unlearn_jax.accounting import gaussian_rdp
    >>> orders = [2.0, 4.0, 8.0, 16.0, 32.0]
    >>> one_step = np.asarray(gaussian_rdp(1.0, 1.0, orders))  # σ = 1: α/2
    >>> rep = epsilon_report(np.stack([100 * one_step, 10 * one_step]), orders, 1e-5, worst_case=100 * one_step)
    >>> rep.epsilon.round(2).tolist(), round(rep.worst_case_epsilon, 2), rep.fraction_below_worst_case
    ([110.13, 20.13], 110.13, 0.5)
  """
  p = np.asarray(realized, np.float64)
  if p.ndim != 2:
    raise ValueError(f"realized must be (n, K) per-example losses, got shape {p.shape}")
  eps, best = rdp_to_dp(p, list(np.asarray(orders, np.float64)), delta)
  worst = None
  if worst_case is not None:
    worst = float(rdp_to_dp(np.asarray(worst_case, np.float64), list(np.asarray(orders, np.float64)), delta)[0])
  return EpsilonReport(np.asarray(eps, np.float64), np.asarray(best, np.float64), float(delta), worst, bool(certified))


def format_epsilon_report(report: EpsilonReport) -> str:
  """One paragraph as a DP-SGD user reads a privacy engine's output.

  Examples:
    >>> import numpy as np
    >>> rep = EpsilonReport(np.array([0.5, 1.0, 2.0, 4.0]), np.full(4, 8.0), 1e-5, 4.0, False)
    >>> print(textwrap.fill(format_epsilon_report(rep), 100))
    (ε, δ = 1e-05) per example over 4 examples: median ε = 1.5, 90% ε = 3.4, max ε = 4; worst case
    (what DP-SGD accounting reports for every example) ε = 4, 75% of examples below it. These are
    estimates (no individual filter), not certified bounds.
  """
  parts = (
    f"(ε, δ = {report.delta:g}) per example over {report.epsilon.size} examples: "
    f"median ε = {report.quantile(0.5):.3g}, 90% ε = {report.quantile(0.9):.3g}, max ε = {report.quantile(1.0):.3g}"
  )
  if report.worst_case_epsilon is not None:
    parts += (
      f"; worst case (what DP-SGD accounting reports for every example) ε = {report.worst_case_epsilon:.3g}, "
      f"{100 * report.fraction_below_worst_case:.0f}% of examples below it"
    )
  parts += ". " + (
    "Certified: the individual filter bounds every example's loss."
    if report.certified
    else "These are estimates (no individual filter), not certified bounds."
  )
  return parts
