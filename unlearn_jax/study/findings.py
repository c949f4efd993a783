"""The study's correlations and its findings: the paper's claims, each with measured values and a verdict,
computed from the typed stage results."""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import numpy as np

from unlearn_jax.evaluate import METRICS
from unlearn_jax.evaluate.statistics import spearman_bootstrap, spearman_where_defined
from unlearn_jax.study.stages import SECOND_CLIP_TOP, Certificates
from unlearn_jax.study.unlearning import MethodResult, SetResult

__all__ = [
  "Correlations",
  "second_clip",
  "claim_b_over_bins",
  "claim_d",
  "claim_e",
  "correlate",
  "findings",
  "harder_groups",
]


class Correlations(NamedTuple):
  """Rank correlations of the privacy loss with every metric, between all scores, certified vs empirical."""

  spearman: dict[str, float]  # metric -> Spearman(P, metric)
  oriented: dict[str, float]  # sign flipped where low means hard
  labels: list[str]
  matrix: np.ndarray  # Spearman between every pair of scores
  certified_vs_empirical: dict[str, float]  # method -> Spearman over the forget sets
  intervals: dict[str, dict]  # metric -> oriented Spearman with its 95% bootstrap interval over examples
  seed_spread: dict[str, dict]  # metric -> oriented Spearman of each training chain's own P: min/median/max


def _oriented_interval(p4: np.ndarray, values: np.ndarray, sign: int) -> dict[str, Any]:
  boot = spearman_bootstrap(p4, values)
  low, high = sorted((sign * boot["low"], sign * boot["high"]))
  return {"spearman": sign * boot["spearman"], "low": low, "high": high, "includes_zero": boot["includes_zero"]}


def _seed_spread(per_seed_p4: np.ndarray | None, values: np.ndarray, sign: int) -> dict[str, Any]:
  if per_seed_p4 is None or per_seed_p4.shape[0] < 2:
    return {"num_seeds": 0 if per_seed_p4 is None else int(per_seed_p4.shape[0])}
  rhos = np.array([sign * spearman_where_defined(p, values) for p in per_seed_p4])
  return {
    "num_seeds": int(rhos.size),
    "min": float(np.nanmin(rhos)),
    "median": float(np.nanmedian(rhos)),
    "max": float(np.nanmax(rhos)),
  }


def correlate(
  certs: Certificates,
  metric_values: dict[str, np.ndarray],
  sets: list[SetResult],
  methods: tuple[str, ...],
  per_seed_p4: np.ndarray | None = None,
) -> Correlations:
  """Spearman of P with every metric (with a bootstrap interval over examples and the spread over the
  training chains), between all scores, and certified vs empirical steps over the forget sets."""
  p4 = certs.privacy_loss
  spearman = {name: spearman_where_defined(p4, v) for name, v in metric_values.items()}
  intervals = {name: _oriented_interval(p4, v, METRICS[name].sign) for name, v in metric_values.items()}
  spread = {name: _seed_spread(per_seed_p4, v, METRICS[name].sign) for name, v in metric_values.items()}
  oriented = {name: (c * METRICS[name].sign if math.isfinite(c) else c) for name, c in spearman.items()}
  scores = {"privacy_loss": p4, **metric_values}
  labels = ["privacy_loss", *metric_values]
  matrix = np.array([[spearman_where_defined(scores[a], scores[b]) for b in labels] for a in labels])
  cert_vs_emp = {}
  for i, method in enumerate(methods):
    certified = [math.nan if r.certified_steps is None else r.certified_steps for r in sets]
    cert_vs_emp[method] = spearman_where_defined(certified, [r.methods[i].empirical_steps for r in sets])
  return Correlations(spearman, oriented, labels, matrix, cert_vs_emp, intervals, spread)


def _hardness(m: MethodResult) -> tuple[float, float]:
  """Sort key of a forget set's difficulty: empirical steps, then the mean median distance on the grid."""
  return (float(m.empirical_steps), float(np.mean(np.asarray(m.median_distance, dtype=float))))


def steps_text(m: MethodResult, grid_end: int) -> str:
  s = float(m.empirical_steps)
  return f"{s:.0f}" if math.isfinite(s) else f"> {grid_end}"


def _claim_a(corr: Correlations) -> dict[str, Any]:
  oriented = corr.oriented
  strong = [k for k, v in oriented.items() if math.isfinite(v) and v >= 0.3 and corr.intervals[k]["low"] > 0]
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
    "interval_includes_no_effect": [k for k, v in corr.intervals.items() if v["includes_zero"]],
    "intervals": corr.intervals,
    "spread_over_training_seeds": corr.seed_spread,
    "note": "Spearman(privacy loss, metric), sign flipped for metrics where low means hard "
    "(confidence, margin, cproxy); 'strong': >= 0.3 with the 95% bootstrap interval (over examples) above 0; "
    "the spread is that of each training chain's own P.",
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


def _hardness_samples(m: MethodResult, rng: np.random.Generator, num_resamples: int = 400) -> np.ndarray:
  """Bootstrap over the set's examples of its hardness by distance: the mean over the grid of the median
  (over the resampled examples) unlearned-vs-oracle distance."""
  d = np.asarray(m.distances, dtype=np.float64)  # (G, m)
  idx = rng.integers(0, d.shape[1], size=(num_resamples, d.shape[1]))
  return np.mean(np.median(d[:, idx], axis=-1), axis=0)


def _distance_difference(top: MethodResult, other: MethodResult, seed: int) -> dict[str, Any]:
  """95% bootstrap interval (over each set's examples) of hardness(top) − hardness(other)."""
  rng = np.random.default_rng(seed)
  diff = _hardness_samples(top, rng) - _hardness_samples(other, rng)
  low, high = (float(v) for v in np.quantile(diff, [0.025, 0.975]))
  return {
    "difference": _hardness(top)[1] - _hardness(other)[1],
    "low": low,
    "high": high,
    "includes_zero": low <= 0 <= high,
  }


def _claim_c(by: dict, method: str, grid_end: int, top_label: str = "privacy_loss:top") -> dict[str, Any] | None:
  top = by.get((top_label, method))
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
      "distance_difference": _distance_difference(top, m, seed=len(comp)),
    }
  if not comp:
    return None
  fewer = [k for k, v in comp.items() if not v["at_least_as_many_steps"]]
  closer = [k for k, v in comp.items() if v["at_least_as_many_steps"] and not v["at_least_as_hard"]]
  harder_by_distance = [k for k, v in comp.items() if v["distance_difference"]["high"] < 0]
  tied = [k for k, v in comp.items() if v["distance_difference"]["includes_zero"]]
  if fewer:
    verdict = "does not hold: fewer steps than " + ", ".join(fewer)
  elif closer:
    verdict = "holds on steps (tied), but by the mean distance to the oracle " + ", ".join(closer) + " is harder"
  else:
    verdict = "holds"
  if harder_by_distance:
    verdict += "; by distance (95% interval over examples) harder: " + ", ".join(harder_by_distance)
  if tied:
    verdict += "; by distance no difference can be told from: " + ", ".join(tied)
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
  c2_rows = {m: row for m in methods if (row := _claim_c(by, m, grid_end, SECOND_CLIP_TOP)) is not None}
  return {
    "a_privacy_loss_correlates_with_difficulty": _claim_a(corr),
    "b_high_privacy_loss_needs_more_steps": b_rows
    or {"verdict": "not measured (needs privacy_loss:top, privacy_loss:bottom and random)"},
    "b_over_privacy_loss_bins": {m: claim_b_over_bins(sets, i, grid_end) for i, m in enumerate(methods)},
    "steps_over_metric_bins": {
      name: {m: claim_b_over_bins(sets, i, grid_end, name) for i, m in enumerate(methods)}
      for name in sorted({r.forget_set.label.split(":bin")[0] for r in sets if ":bin" in r.forget_set.label})
      if name != "privacy_loss"
    },
    "c_privacy_loss_sets_at_least_as_hard_as_metric_sets": c_rows
    or {"verdict": "not measured (needs privacy_loss:top and <metric>:top selections)"},
    **({"c_at_second_clip_norm": c2_rows} if c2_rows else {}),
    "d_certified_below_worst_case": claim_d(privacy),
    "e_barrier_grows_with_privacy_loss": {m: claim_e(sets, i) for i, m in enumerate(methods)},
    "membership_lower_bounds_within_certificates": membership_within_certificates(sets, methods),
  }


def membership_within_certificates(sets: list[SetResult], methods: tuple[str, ...]) -> dict[str, Any]:
  """Soundness check: no example's membership ε lower bound lies above its set's certified ε."""
  if "sgld" not in methods:
    return {"verdict": "not measured (no sgld unlearning)"}
  i = methods.index("sgld")
  checked = above = 0
  for r in sets:
    m = r.methods[i]
    if m.membership_lower_bound is None or m.certified_epsilon is None:
      continue
    checked += int(m.membership_lower_bound.size)
    above += int(np.sum(m.membership_lower_bound > m.certified_epsilon))
  if not checked:
    return {"verdict": "not measured (no membership test or no certified ε)"}
  return {
    "verdict": "holds" if above == 0 else f"VIOLATED for {above} examples",
    "examples_checked": checked,
    "lower_bounds_above_certified_epsilon": above,
  }


def claim_e(sets: list[SetResult], method_index: int) -> dict[str, Any]:
  """Claim (e): higher privacy loss, larger loss barrier — judged on each set's barrier minus its floor
  (the oracle-vs-oracle barrier of the same set), as a Spearman correlation over the forget sets."""
  p = [r.mean_privacy_loss for r in sets]
  excess = [r.methods[method_index].loss_barrier - r.oracle.barrier for r in sets]
  boot = spearman_bootstrap(p, excess) if len(sets) >= 3 else {"spearman": math.nan, "includes_zero": True}
  rho = boot["spearman"]
  verdict = "not measured (fewer than 3 forget sets)" if math.isnan(rho) else _verdict(boot)
  return {
    "verdict": verdict,
    "spearman_privacy_loss_vs_excess_barrier": rho,
    "interval": _interval(boot),
    "num_sets": len(sets),
    "excess_barrier": {r.forget_set.label: e for r, e in zip(sets, excess)},
    "note": "excess barrier = loss barrier (trained vs oracles) − oracle-vs-oracle barrier of the same set",
  }


def _interval(boot: dict[str, Any]) -> list[float] | None:
  """[low, high] of a bootstrap result, or None where it is undefined (too few or constant values)."""
  low, high = boot.get("low", math.nan), boot.get("high", math.nan)
  return [low, high] if math.isfinite(low) and math.isfinite(high) else None


def _verdict(boot: dict[str, Any]) -> str:
  """A correlation claim's verdict from its value and 95% bootstrap interval."""
  rho = boot["spearman"]
  if not math.isfinite(rho):
    return "not measured (constant values)"
  if rho <= 0:
    return "does not hold"
  if boot["includes_zero"]:
    return f"not established: Spearman {rho:.2f}, but its 95% interval includes no effect (0)"
  return "holds"


def claim_b_over_bins(
  sets: list[SetResult], method_index: int, grid_end: int, score: str = "privacy_loss"
) -> dict[str, Any]:
  """Claim (b) as a curve: empirical steps of the forget sets drawn from each quantile bin of ``score``
  (the privacy loss, or a metric), with the spread over the sets of a bin, and Spearman(mean P, steps)
  over those sets with a bootstrap interval (over sets)."""
  rows: dict[str, dict] = {}
  points = []
  for r in sets:
    label = r.forget_set.label
    if not label.startswith(f"{score}:bin"):
      continue
    b = label.split("#")[0]
    steps = float(r.methods[method_index].empirical_steps)
    row = rows.setdefault(b, {"mean_privacy_loss": [], "steps": []})
    row["mean_privacy_loss"].append(r.mean_privacy_loss)
    row["steps"].append(steps)
    points.append((r.mean_privacy_loss, steps))
  if len(points) < 3:
    return {"verdict": "not measured (fewer than 3 bin sets)", "bins": rows}
  boot = spearman_bootstrap([p for p, _ in points], [s for _, s in points])
  for row in rows.values():
    finite = [s for s in row["steps"] if math.isfinite(s)]
    row["steps_text"] = [f"{s:.0f}" if math.isfinite(s) else f"> {grid_end}" for s in row["steps"]]
    row["steps_min_max"] = [min(row["steps"]), max(row["steps"])]
    row["not_unlearned"] = len(row["steps"]) - len(finite)
  return {
    "verdict": _verdict(boot),
    "spearman_mean_privacy_loss_vs_steps": boot["spearman"],
    "interval": _interval(boot),
    "num_sets": len(points),
    "bins": rows,
    "note": "sets not unlearned within the grid rank above every finite step count",
  }


def claim_d(privacy: dict[str, Any]) -> dict[str, Any]:
  """Claim (d): certified steps below the worst case for most examples; no verdict when K overflowed."""
  frac = privacy["fraction_certified_below_worst_case"]
  low, high = privacy.get("fraction_below_interval") or [frac, frac]  # no interval: judged on the value
  if math.isnan(frac):
    verdict = "undetermined (the worst-case K is beyond float64's range)"
  elif low > 0.5:
    verdict = "holds"
  elif high <= 0.5:
    verdict = "does not hold"
  else:
    verdict = f"not established: {100 * frac:.1f}% below, but its 95% interval includes one half"
  return {
    "fraction_below": frac,
    "interval": privacy.get("fraction_below_interval"),
    "worst_case_steps": privacy["worst_case_steps"],
    "certified_median": privacy["certified_steps_summary"]["median"],
    "verdict": verdict,
    "assumptions": [privacy["lsi_note"], privacy["stationarity"]],
  }


def harder_groups(sets: list[SetResult], methods: tuple[str, ...]) -> list[dict[str, Any]]:
  """Forget sets ranked from hardest to easiest, per method (the harder-groups table of theory §6)."""
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


def second_clip(
  config, certs: Certificates, second_p4: np.ndarray, metric_values: dict[str, np.ndarray], sets: list[SetResult]
) -> dict[str, Any]:
  """What the ledger at the second clip norm says: its saturation, its ranking against the metrics and
  against the main P, and how much its top set shares with the main top set."""
  p4 = certs.privacy_loss
  top = float(np.max(second_p4))
  near = int(np.sum(second_p4 >= 0.98 * top))
  labels = {r.forget_set.label: r.forget_set.indices for r in sets}
  overlap = None
  if SECOND_CLIP_TOP in labels and "privacy_loss:top" in labels:
    overlap = int(np.intersect1d(labels[SECOND_CLIP_TOP], labels["privacy_loss:top"]).size)
  return {
    "clip_norm": config.privacy.second_clip_norm,
    "main_clip_norm": config.training.clip_norm,
    "within_2_percent_of_max": near,
    "main_within_2_percent_of_max": int(np.sum(p4 >= 0.98 * float(np.max(p4)))),
    "spearman_with_main_privacy_loss": spearman_where_defined(p4, second_p4),
    "spearman_oriented": {
      name: METRICS[name].sign * spearman_where_defined(second_p4, v) for name, v in metric_values.items()
    },
    "top_set_overlap_with_main_top": overlap,
    "note": (
      f"the ledger at clip {config.privacy.second_clip_norm:g} (main {config.training.clip_norm:g}) has {near} "
      "examples within 2% of its maximum; its top set is unlearned from the main models as "
      f"{SECOND_CLIP_TOP!r} (claim (c) at the second clip norm)"
    ),
  }
