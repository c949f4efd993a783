"""The study's figures, drawn from its typed results with :mod:`unlearn_jax.plots` (matplotlib optional)."""

from __future__ import annotations

import pathlib
from collections.abc import Callable
from typing import Any

import numpy as np

from unlearn_jax import plots
from unlearn_jax.study.findings import Correlations
from unlearn_jax.study.stages import Certificates
from unlearn_jax.study.unlearning import SetResult

__all__ = ["draw_figures"]


def _certificate_label(privacy: dict[str, Any]) -> str:
  alpha = privacy["alpha"]
  label = (
    f"{privacy['lsi_status']} C_LSI = {privacy['lsi_constant']:.3g}, target ε = {privacy['epsilon']:g} at α = {alpha:g}"
  )
  return label + (", E1 = E2 = 0 assumed" if "stationarity" in privacy["stationarity"] else "")


def _method_curves(out: pathlib.Path, sets: list[SetResult], methods: tuple[str, ...], grid: list[int]) -> dict:
  figs = {}
  for i, method in enumerate(methods):
    labels = [r.forget_set.label for r in sets]
    name = f"loss_barrier_{method}"
    plots.loss_barrier_curves(
      grid,
      {lab: r.methods[i].barriers for lab, r in zip(labels, sets)},
      out / f"{name}.png",
      reference={lab: r.oracle.barrier for lab, r in zip(labels, sets)},
      title=f"Loss barrier on the forget set, unlearned ({method}) vs oracle",
    )
    figs[name] = f"{name}.png"
    name = f"unlearning_distance_{method}"
    plots.loss_barrier_curves(
      grid,
      {lab: r.methods[i].median_distance for lab, r in zip(labels, sets)},
      out / f"{name}.png",
      reference={lab: r.methods[i].floor_threshold for lab, r in zip(labels, sets)},
      log_y=True,
      ylabel="median symmetric KL, unlearned vs oracle",
      title=f"Output-distribution distance along unlearning ({method})\ndashed: the oracle-vs-oracle floor threshold",
    )
    figs[name] = f"{name}.png"
  return figs


def _membership(
  out: pathlib.Path, sets: list[SetResult], methods: tuple[str, ...], num_models: int, cap: float
) -> dict:
  if "sgld" not in methods:
    return {}
  i = methods.index("sgld")
  rows = [(r.forget_set.label, r.methods[i]) for r in sets if r.methods[i].certified_epsilon is not None]
  if not rows:
    return {}
  cert = np.concatenate([np.full(m.membership_lower_bound.size, m.certified_epsilon) for _, m in rows])
  lower = np.concatenate([m.membership_lower_bound for _, m in rows])
  point = np.concatenate([m.membership_point_estimate for _, m in rows])
  labels = [lab for lab, m in rows for _ in range(m.membership_lower_bound.size)]
  plots.membership_vs_certified(
    cert,
    lower,
    out / "membership_vs_certified.png",
    labels=labels,
    point_estimates=point,
    cap=cap,
    num_models=num_models,
  )
  return {"membership_vs_certified": "membership_vs_certified.png"}


def draw_figures(
  out: pathlib.Path,
  privacy: dict[str, Any],
  certs: Certificates,
  sets: list[SetResult],
  corr: Correlations,
  methods: tuple[str, ...],
  grid: list[int],
  num_models: int,
  membership_cap: float | None,
  retrain_steps: int,
  say: Callable[[str], None],
) -> dict[str, str]:
  """Draws every figure into ``out``; returns name -> file name (empty when matplotlib is missing)."""
  try:
    plots.require_matplotlib()
  except ImportError as e:
    say(f"figures skipped: {e}")
    return {}
  plots.privacy_loss_histogram(certs.privacy_loss, out / "privacy_loss_histogram.png", order=4 * certs.alpha)
  plots.certified_vs_worst_case(
    certs.privacy_loss,
    certs.certified_steps,
    privacy["worst_case_steps"],
    out / "certified_vs_worst_case.png",
    label=_certificate_label(privacy),
    retrain_steps=retrain_steps,
  )
  figs = {
    "privacy_loss_histogram": "privacy_loss_histogram.png",
    "certified_vs_worst_case": "certified_vs_worst_case.png",
  }
  steps = {m: [r.methods[i].empirical_steps for r in sets] for i, m in enumerate(methods)}
  plots.empirical_steps_by_privacy_loss(
    [r.mean_privacy_loss for r in sets],
    steps,
    out / "empirical_steps_vs_privacy_loss.png",
    group_labels=[r.forget_set.label for r in sets],
    grid_end=grid[-1],
  )
  figs["empirical_steps_vs_privacy_loss"] = "empirical_steps_vs_privacy_loss.png"
  figs.update(_method_curves(out, sets, methods, grid))
  plots.correlation_heatmap(
    corr.matrix, corr.labels, out / "correlation_heatmap.png", title="Spearman correlation between per-example scores"
  )
  figs["correlation_heatmap"] = "correlation_heatmap.png"
  if membership_cap is not None:
    figs.update(_membership(out, sets, methods, num_models, membership_cap))
  return figs
