"""The study's correlations and its findings: the paper's claims, each with measured values and a verdict,
computed from the typed stage results."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from unlearn_jax.evaluate import METRICS
from unlearn_jax.evaluate.statistics import spearman_where_defined
from unlearn_jax.study.stages import Certificates
from unlearn_jax.study.unlearning import MethodResult, SetResult

__all__ = ["Correlations", "claim_d", "claim_e", "correlate", "findings", "harder_groups"]


class Correlations(NamedTuple):
  """Rank correlations of the privacy loss with every metric, between all scores, certified vs empirical."""

  spearman: dict[str, float]  # metric -> Spearman(P, metric)
  oriented: dict[str, float]  # sign flipped where low means hard
  labels: list[str]
  matrix: np.ndarray  # Spearman between every pair of scores
  certified_vs_empirical: dict[str, float]  # method -> Spearman over the forget sets


def correlate(
  certs: Certificates, metric_values: dict[str, np.ndarray], sets: list[SetResult], methods: tuple[str, ...]
) -> Correlations:
  p4 = certs.privacy_loss
  spearman = {name: spearman_where_defined(p4, v) for name, v in metric_values.items()}
  oriented = {name: (c * METRICS[name].sign if math.isfinite(c) else c) for name, c in spearman.items()}
  scores = {"privacy_loss": p4, **metric_values}
  labels = ["privacy_loss", *metric_values]
  matrix = np.array([[spearman_where_defined(scores[a], scores[b]) for b in labels] for a in labels])
  cert_vs_emp = {}
  for i, method in enumerate(methods):
    certified = [math.nan if r.certified_steps is None else r.certified_steps for r in sets]
    cert_vs_emp[method] = spearman_where_defined(certified, [r.methods[i].empirical_steps for r in sets])
  return Correlations(spearman, oriented, labels, matrix, cert_vs_emp)


def _hardness(m: MethodResult) -> tuple[float, float]:
  """Sort key of a forget set's difficulty: empirical steps, then the mean median distance on the grid."""
  return (float(m.empirical_steps), float(np.mean(np.asarray(m.median_distance, dtype=float))))


def steps_text(m: MethodResult, grid_end: int) -> str:
  s = float(m.empirical_steps)
  return f"{s:.0f}" if math.isfinite(s) else f"> {grid_end}"


def _claim_a(corr: Correlations) -> dict[str, Any]:
  oriented = corr.oriented
  strong = [k for k, v in oriented.items() if math.isfinite(v) and v >= 0.3]
  weak = [k for k, v in oriented.items() if math.isfinite(v) and 0 < v < 0.3]
  against = [k for k, v in oriented.items() if not (math.isfinite(v) and v > 0)]
  verdict = (
    "holds" if oriented and len(strong) == len(oriented) else "holds for some metrics" if strong else "does not hold"
  )
  return {
    "verdict": verdict if oriented else "not measured (no metrics)",
    "spearman_oriented": oriented,
    "strong": strong,
    "weak": weak,
    "not_positive": against,
    "note": "Spearman(privacy loss, metric), sign flipped for metrics where low means hard "
    "(confidence, margin, cproxy); >= 0.3 counted as 'strong'.",
  }


def _claim_b(by: dict, method: str, grid_end: int) -> dict[str, Any] | None:
  top = by.get(("privacy_loss:top", method))
  others = {name: by.get((name, method)) for name in ("random", "privacy_loss:bottom")}
  if top is None or any(v is None for v in others.values()):
    return None
  harder = {name: _hardness(top) > _hardness(o) for name, o in others.items()}
  more = {name: float(top.empirical_steps) > float(o.empirical_steps) for name, o in others.items()}
  return {
    "steps": {"privacy_loss:top": steps_text(top, grid_end), **{k: steps_text(v, grid_end) for k, v in others.items()}},
    "mean_median_distance": {"privacy_loss:top": _hardness(top)[1], **{k: _hardness(v)[1] for k, v in others.items()}},
    "more_steps_than": more,
    "harder_than": harder,
    "verdict": (
      "holds"
      if all(more.values())
      else "holds only on the distance (steps tied)"
      if all(harder.values())
      else "does not hold"
    ),
  }


def _claim_c(by: dict, method: str, grid_end: int) -> dict[str, Any] | None:
  top = by.get(("privacy_loss:top", method))
  if top is None:
    return None
  comp = {}
  for (sel, meth), m in by.items():
    if meth != method or sel.startswith("privacy_loss") or sel == "random" or not sel.endswith(":top"):
      continue
    comp[sel] = {
      "steps": steps_text(m, grid_end),
      "at_least_as_hard": _hardness(top) >= _hardness(m),
      "at_least_as_many_steps": float(top.empirical_steps) >= float(m.empirical_steps),
    }
  if not comp:
    return None
  fewer = [k for k, v in comp.items() if not v["at_least_as_many_steps"]]
  closer = [k for k, v in comp.items() if v["at_least_as_many_steps"] and not v["at_least_as_hard"]]
  if fewer:
    verdict = "does not hold: fewer steps than " + ", ".join(fewer)
  elif closer:
    verdict = "holds on steps (tied), but by the mean distance to the oracle " + ", ".join(closer) + " is harder"
  else:
    verdict = "holds"
  return {
    "privacy_loss:top_steps": steps_text(top, grid_end),
    "privacy_loss:top_distance": _hardness(top)[1],
    "vs": comp,
    "vs_distance": {k: _hardness(by[(k, method)])[1] for k in comp},
    "verdict": verdict,
  }


def findings(
  corr: Correlations, sets: list[SetResult], methods: tuple[str, ...], privacy: dict[str, Any], grid_end: int
) -> dict[str, Any]:
  """The claims (a)–(e), each with its measured values and a verdict (holds / does not)."""
  by = {(r.forget_set.label, m.method): m for r in sets for m in r.methods}
  b_rows = {m: row for m in methods if (row := _claim_b(by, m, grid_end)) is not None}
  c_rows = {m: row for m in methods if (row := _claim_c(by, m, grid_end)) is not None}
  return {
    "a_privacy_loss_correlates_with_difficulty": _claim_a(corr),
    "b_high_privacy_loss_needs_more_steps": b_rows
    or {"verdict": "not measured (needs privacy_loss:top, privacy_loss:bottom and random)"},
    "c_privacy_loss_sets_at_least_as_hard_as_metric_sets": c_rows
    or {"verdict": "not measured (needs privacy_loss:top and <metric>:top selections)"},
    "d_certified_below_worst_case": claim_d(privacy),
    "e_barrier_grows_with_privacy_loss": {m: claim_e(sets, i) for i, m in enumerate(methods)},
  }


def claim_e(sets: list[SetResult], method_index: int) -> dict[str, Any]:
  """Claim (e): higher privacy loss, larger loss barrier — judged on each set's barrier minus its floor
  (the oracle-vs-oracle barrier of the same set), as a Spearman correlation over the forget sets."""
  p = [r.mean_privacy_loss for r in sets]
  excess = [r.methods[method_index].loss_barrier - r.oracle.barrier for r in sets]
  rho = spearman_where_defined(p, excess) if len(sets) >= 3 else math.nan
  verdict = "not measured (fewer than 3 forget sets)" if math.isnan(rho) else "holds" if rho > 0 else "does not hold"
  return {
    "verdict": verdict,
    "spearman_privacy_loss_vs_excess_barrier": rho,
    "num_sets": len(sets),
    "excess_barrier": {r.forget_set.label: e for r, e in zip(sets, excess)},
    "note": "excess barrier = loss barrier (trained vs oracles) − oracle-vs-oracle barrier of the same set",
  }


def claim_d(privacy: dict[str, Any]) -> dict[str, Any]:
  """Claim (d): certified steps below the worst case for most examples; no verdict when K overflowed."""
  frac = privacy["fraction_certified_below_worst_case"]
  return {
    "fraction_below": frac,
    "worst_case_steps": privacy["worst_case_steps"],
    "certified_median": privacy["certified_steps_summary"]["median"],
    "verdict": "undetermined (the worst-case K is beyond float64's range)"
    if math.isnan(frac)
    else ("holds" if frac > 0.5 else "does not hold"),
    "assumptions": [privacy["lsi_note"], privacy["stationarity"]],
  }


def harder_groups(sets: list[SetResult], methods: tuple[str, ...]) -> list[dict[str, Any]]:
  """Forget sets ranked from hardest to easiest, per method (the harder-groups table of THEORY §6)."""
  rows = []
  for i, method in enumerate(methods):
    ranked = sorted(sets, key=lambda r: _hardness(r.methods[i]), reverse=True)
    for rank, r in enumerate(ranked, 1):
      m = r.methods[i]
      rows.append(
        {
          "method": method,
          "rank": rank,
          "selection": r.forget_set.label,
          "mean_privacy_loss": r.mean_privacy_loss,
          "empirical_steps": m.empirical_steps,
          "mean_median_distance": _hardness(m)[1],
          "loss_barrier": m.loss_barrier,
          "certified_steps": r.certified_steps,
        }
      )
  return rows
