"""The study's outputs: the JSON report built once from the typed stage results, and ``per_example.csv``
(one row per training example); ``report.md`` is written from the report by :mod:`~unlearn_jax.study.markdown`."""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np
import scipy.stats

from unlearn_jax import _atomic, certify
from unlearn_jax.evaluate import membership_resolvable_cap
from unlearn_jax.study import findings as findings_lib
from unlearn_jax.study.config import Config
from unlearn_jax.study.findings import Correlations
from unlearn_jax.study.markdown import write_report_md
from unlearn_jax.study.stages import Certificates, Setup, Trained
from unlearn_jax.study.unlearning import SetResult

__all__ = ["build_report", "jsonable", "write_per_example_csv", "write_report_json", "write_report_md"]


def _fmt_float(value: Any) -> str:
  """Shortest round-trip text of a float; ``inf`` / ``-inf`` / ``nan`` spelled out."""
  v = float(value)
  if math.isnan(v):
    return "nan"
  if math.isinf(v):
    return "inf" if v > 0 else "-inf"
  if v.is_integer() and abs(v) < 1e15:
    return str(int(v))
  return repr(v)


def write_per_example_csv(
  path: str | os.PathLike,
  labels: Any,
  privacy_loss: Any,
  certified_steps: Any,
  metrics: Mapping[str, Any] | None = None,
) -> pathlib.Path:
  """Writes ``per_example.csv``: ``index,label,privacy_loss,certified_steps,`` then one column per metric.

  Floats are written in their shortest round-trip form (``inf``/``nan`` spelled out), so equal inputs
  give byte-identical files.

  Args:
    path: output file.
    labels: (n,) integer labels.
    privacy_loss: (n,) P(x, 4α).
    certified_steps: (n,) certified k*(x) (inf allowed).
    metrics: name -> (n,) values, in column order.

  Returns:
    The path written.

  Examples:
    >>> import tempfile, pathlib
    >>> p = write_per_example_csv(pathlib.Path(tempfile.mkdtemp()) / "e.csv", [0, 1], [0.5, 2.0],
    ...                           [10, float("inf")], {"el2n": [0.1, 0.25]})
    >>> print(p.read_text().strip())
    index,label,privacy_loss,certified_steps,el2n
    0,0,0.5,10,0.1
    1,1,2,inf,0.25
  """
  metrics = dict(metrics or {})
  labels = np.asarray(labels)
  columns = [np.asarray(privacy_loss, dtype=np.float64), np.asarray(certified_steps, dtype=np.float64)]
  columns += [np.asarray(v, dtype=np.float64) for v in metrics.values()]
  n = labels.shape[0]
  for name, col in zip(["privacy_loss", "certified_steps", *metrics], columns):
    if col.shape != (n,):
      raise ValueError(f"{name} must have shape ({n},) like labels, got {col.shape}")
  lines = [",".join(["index", "label", "privacy_loss", "certified_steps", *metrics])]
  for i in range(n):
    lines.append(",".join([str(i), str(int(labels[i]))] + [_fmt_float(c[i]) for c in columns]))
  return _atomic.write_text(path, "\n".join(lines) + "\n")


def jsonable(value: Any) -> Any:
  """Converts arrays / NumPy scalars / non-finite floats to JSON-ready Python values."""
  if isinstance(value, Mapping):
    return {str(k): jsonable(v) for k, v in value.items()}
  if isinstance(value, (list, tuple)):
    return [jsonable(v) for v in value]
  if hasattr(value, "shape") and hasattr(value, "dtype"):
    arr = np.asarray(value)
    if arr.ndim == 0:
      return jsonable(arr.item())
    return [jsonable(v) for v in arr.tolist()]
  if isinstance(value, (bool, np.bool_)):
    return bool(value)
  if isinstance(value, (int, np.integer)):
    return int(value)
  if isinstance(value, (float, np.floating)):
    v = float(value)
    if math.isnan(v):
      return "nan"
    if math.isinf(v):
      return "inf" if v > 0 else "-inf"
    return v
  return value


def write_report_json(path: str | os.PathLike, report: Mapping[str, Any]) -> pathlib.Path:
  """Writes ``report.json`` (indented, keys in insertion order, ``"inf"``/``"nan"`` as strings).

  Examples:
    >>> import tempfile, pathlib, json
    >>> p = write_report_json(pathlib.Path(tempfile.mkdtemp()) / "r.json", {"k": float("inf"), "a": [1.5]})
    >>> json.loads(p.read_text())
    {'k': 'inf', 'a': [1.5]}
  """
  return _atomic.write_text(path, json.dumps(jsonable(report), indent=2, allow_nan=False) + "\n")


def _summary(values: Any) -> dict[str, float]:
  v = np.asarray(values, dtype=np.float64)
  finite = v[np.isfinite(v)]
  if finite.size == 0:
    return {"min": math.inf, "median": math.inf, "p99": math.inf, "max": math.inf, "num_infinite": int(v.size)}
  return {
    "min": float(finite.min()),
    "median": float(np.median(v)),
    "p99": float(np.percentile(v, 99)),
    "max": float(v.max()),
    "num_infinite": int(np.sum(~np.isfinite(v))),
  }


def _privacy(config: Config, trained: Trained, certs: Certificates) -> dict[str, Any]:
  pv = config.privacy
  worst_single = certs.worst_case_steps(pv.epsilon, 1)
  return {
    "orders": list(pv.orders),
    "alpha": certs.alpha,
    "privacy_loss_order": 4 * certs.alpha,
    "epsilon": pv.epsilon,
    "worst_case_loss": trained.worst_case_loss,
    "certified": trained.certified,
    "exact": trained.exact,
    "ledger_note": (
      "realized P is a certified individual RDP bound (individual Rényi filter)"
      if trained.certified
      else "realized P is an estimate (no individual filter)"
    ),
    "temperature_note": (
      f"training was noise-free (τ = 0, plain SGD): the ledger ASSUMES τ_acc = {config.training.accounting_temperature}"
      ", so P is the privacy loss the noisy chain at τ_acc would have had, not a bound for this run"
      if config.training.temperature == 0
      else f"the ledger is computed at the training temperature τ = {config.training.temperature}"
    ),
    "privacy_loss_summary": _summary(certs.privacy_loss),
    "saturation": _saturation(certs.privacy_loss, config.forget_sets),
    "retraining": _retraining(config, certs),
    "privacy_loss_seed_std_median": float(np.median(trained.realized_std[:, certs.order_index])),
    "lsi_constant": certs.constants["lsi_constant"],
    "lsi_status": certs.lsi_status,
    "lsi_note": certs.lsi_note,
    "stationarity": certs.stationarity,
    "certified_steps_summary": _summary(certs.certified_steps),
    "worst_case_steps": worst_single,
    "worst_case_note": (
      f"Chien et al. baseline for one removed point at order α = {certs.alpha} with "
      f"m = 2τ/C_LSI = {certs.m_eff:.4g}, clip C = {certs.clip_norm}"
    ),
    # K = inf with a clip norm means K overflowed even float64: nothing to compare with (NaN, not 100%)
    "fraction_certified_below_worst_case": float(np.mean(certs.certified_steps < worst_single))
    if math.isfinite(worst_single) or certs.clip_norm is None
    else math.nan,
    "fraction_below_interval": _proportion_interval(certs.certified_steps < worst_single)
    if math.isfinite(worst_single) or certs.clip_norm is None
    else None,
  }


def _proportion_interval(indicator: np.ndarray) -> list[float]:
  """Exact (Clopper–Pearson) 95% interval of a proportion over the examples."""
  k, n = int(np.sum(indicator)), int(indicator.size)
  ci = scipy.stats.binomtest(k, n).proportion_ci(confidence_level=0.95, method="exact")
  return [float(ci.low), float(ci.high)]


def _retraining(config: Config, certs: Certificates) -> dict[str, Any]:
  """The certificate next to the cost of retraining from scratch, in the same units (noisy steps)."""
  steps = config.unlearning.retrain_steps or config.training.num_steps
  k = certs.certified_steps
  above = float(np.mean(~np.isfinite(k) | (k > steps)))
  median = float(np.median(k))
  c = certs.constants
  factor = float(
    certify.contraction_factor(
      config.training.num_steps,
      alpha=2 * c["alpha"],
      step_size=c["step_size"],
      temperature=c["temperature"],
      lsi_constant=c["lsi_constant"],
    )
  )
  removed = 1.0 - factor
  stationarity = (
    f"by the certificate's own contraction (order 2α = {2 * c['alpha']:g}, C_LSI = {c['lsi_constant']:.3g}), the "
    f"{config.training.num_steps} training steps shrink a divergence from stationarity by a factor {factor:.3g}, "
    f"removing {100 * removed:.1f}% of it"
    + (": the run does not support the E₁ = E₂ = 0 ('trained to stationarity') assumption" if removed < 0.5 else "")
  )
  return {
    "retrain_steps": steps,
    "fraction_of_certificates_costlier_than_retraining": above,
    "certified_median_over_retraining": median / steps,
    "training_contraction_factor": factor,
    "stationarity_note": stationarity,
    "note": (
      f"retraining from scratch costs {steps} steps; the median certificate is {median:.4g} steps "
      f"({median / steps:.3g}× retraining) and {100 * above:.1f}% of the per-example certificates cost more than "
      "retraining" + (" — for those examples, retraining is the cheaper way to a guarantee" if above > 0 else "")
    ),
  }


def _saturation(p4: np.ndarray, fc) -> dict[str, Any]:
  """How many examples sit at the (clip-saturated) maximum of P, where P cannot rank them."""
  top = float(np.max(p4))
  at_max = int(np.sum(p4 >= top * (1 - 1e-6)))
  near = int(np.sum(p4 >= top * 0.98))
  return {
    "max": top,
    "at_max": at_max,
    "within_2_percent_of_max": near,
    "fraction_within_2_percent": near / p4.size,
    "ties_within": fc.ties_within,
    "tie_break": "unclipped per-example gradient norm at the end of training (mean over chains), then index",
    "note": (
      f"{near} of {p4.size} examples ({100 * near / p4.size:.1f}%) lie within 2% of the maximum P ({at_max} at it); "
      f"privacy-loss selections treat values within {100 * fc.ties_within:g}% of each other (one cell of a "
      "geometric grid) as tied and order them by the unclipped gradient norm"
    ),
  }


def _membership_entry(config: Config, m) -> dict[str, Any]:
  R, delta = config.unlearning.num_seeds, config.evaluation.delta
  cap = membership_resolvable_cap(R, delta=delta)
  lower, point = m.membership_lower_bound, m.membership_point_estimate
  above = None if m.certified_epsilon is None else int(np.sum(lower > m.certified_epsilon))
  return {
    "above_certified_epsilon": above,
    "lower_bound": {"median": float(np.median(lower)), "max": float(np.max(lower)), "per_example": lower},
    "point_estimate": {"median": float(np.median(point)), "max": float(np.max(point)), "per_example": point},
    "num_models": R,
    "resolvable_cap": cap,
    "confidence": 0.95,
    "note": (
      f"lower bound: one-sided Clopper-Pearson, simultaneous over thresholds (95%); {R} vs {R} "
      f"models resolve at most {cap:.3g}. The point estimate is not a bound."
    ),
  }


def _forget_set_entries(config: Config, sets: list[SetResult]) -> list[dict[str, Any]]:
  grid = list(config.unlearning.step_grid)
  has_top = any(r.forget_set.label == "privacy_loss:top" for r in sets)
  entries = []
  for r in sets:
    common = {
      "selection": r.forget_set.label,
      "size": int(r.forget_set.indices.size),
      "indices": r.forget_set.indices,
      "mean_privacy_loss": r.mean_privacy_loss,
      "group_privacy_loss_bound": r.group_privacy_loss,
      "group_factor": r.group_factor,
      "certified_steps": r.certified_steps,
      "certified_steps_per_example_median": r.certified_steps_median,
      "worst_case_steps": r.worst_case_steps,
      "oracle_barrier": r.oracle.barrier,
    }
    if has_top:
      common["overlap_with_privacy_loss_top"] = r.overlap_with_top
    for m in r.methods:
      entry = dict(common)
      entry.update(
        {
          "method": m.method,
          "empirical_steps": m.empirical_steps,
          "unlearned_within_grid": bool(np.isfinite(m.empirical_steps)),
          "grid_end": int(grid[-1]),
          "step_grid": grid,
          "median_distance": m.median_distance,
          "floor_threshold": m.floor_threshold,
          "loss_barrier": m.loss_barrier,
          "loss_barrier_along": m.barriers,
          "forget_accuracy_unlearned": m.forget_accuracy,
          "forget_accuracy_oracle": r.oracle.accuracy,
        }
      )
      if m.membership_lower_bound is not None:
        entry["membership_epsilon"] = _membership_entry(config, m)
      if m.certified_epsilon is not None:
        entry["certified_epsilon"] = m.certified_epsilon
      entries.append(entry)
  return entries


def _replicates(config: Config) -> dict[str, Any]:
  S, R = config.training.num_seeds, config.unlearning.num_seeds
  independent = S >= R
  return {
    "unlearned_chains": R,
    "distinct_trained_models": min(S, R),
    "independent": independent,
    "note": (
      f"each of the {R} unlearned chains fine-tunes its own trained chain: independent replicates"
      if independent
      else f"the {R} unlearned chains start from only {S} distinct trained models (chain r fine-tunes trained "
      f"chain r mod {S}): they are NOT {R} independent replicates; set training.num_seeds >= {R} for that"
    ),
  }


def _baseline_entry(trained: Trained, baseline) -> dict[str, Any]:
  gap = baseline.test_accuracy - trained.test_accuracy
  return {
    "test_accuracy": baseline.test_accuracy,
    "train_accuracy": baseline.train_accuracy,
    "steps": baseline.steps,
    "private_minus_baseline": -gap,
    "within_3_points": bool(gap <= 0.03),
    "note": (
      f"the private models' mean test accuracy {100 * trained.test_accuracy:.1f}% vs "
      f"{100 * baseline.test_accuracy:.1f}% "
      f"for one plain model of the same training without noise or clipping ({baseline.steps} steps): "
      + (f"{100 * gap:.1f} points lower" if gap > 0 else f"{-100 * gap:.1f} points higher")
      + (", within 3 points" if gap <= 0.03 else ", MORE than 3 points lower")
    ),
  }


def _test_power_entry(power) -> dict[str, Any]:
  return {
    "power_at_2_sd": power.power,
    "false_rejection_rate": power.size,
    "num_seeds_per_side": power.num_seeds,
    "forget_set_size": power.num_examples,
    "trials": power.trials,
    "note": (
      f"the 'unlearned' test ({power.num_seeds} vs {power.num_seeds} models, sets of {power.num_examples}) "
      f"rejects a set shifted by {power.shift:g} standard deviations in {100 * power.power:.1f}% of "
      f"{power.trials} simulated sets, and a set from the oracles' own law in {100 * power.size:.1f}% "
      "(standard error <= 2.5 points)"
    ),
  }


def build_report(
  config: Config,
  s: Setup,
  trained: Trained,
  certs: Certificates,
  sets: list[SetResult],
  corr: Correlations,
  power=None,
  baseline=None,
) -> dict[str, Any]:
  """The report (the content of ``report.json``, without its figures), built once from the results."""
  tr = config.training
  privacy = _privacy(config, trained, certs)
  report: dict[str, Any] = {
    "created": datetime.datetime.now(datetime.UTC).isoformat(timespec="seconds"),
    "config": {k: v for k, v in config.to_dict().items() if k != "out_dir"},
    "dataset": {
      "name": s.dataset.name,
      "n_train": int(s.num_examples),
      "n_test": int(s.x_test.shape[0]),
      "num_classes": int(s.dataset.num_classes),
    },
    "training": {
      "steps": tr.num_steps,
      "num_seeds": tr.num_seeds,
      "train_accuracy": trained.train_accuracy,
      "test_accuracy": trained.test_accuracy,
      "test_loss": trained.test_loss,
      "checkpoint_steps": trained.checkpoint_steps,
      "non_private_baseline": None if baseline is None else _baseline_entry(trained, baseline),
      "replicates": _replicates(config),
    },
    "privacy": privacy,
    "unlearned_test": None if power is None else _test_power_entry(power),
    "forget_sets": _forget_set_entries(config, sets),
    "correlations": corr.spearman,
    "correlations_oriented": corr.oriented,
    "correlation_matrix": {"labels": corr.labels, "values": corr.matrix},
    "certified_vs_empirical_spearman": corr.certified_vs_empirical,
  }
  methods = tuple(config.unlearning.methods)
  grid_end = int(config.unlearning.step_grid[-1])
  report["findings"] = findings_lib.findings(corr, sets, methods, privacy, grid_end)
  report["harder_groups"] = findings_lib.harder_groups(sets, methods)
  return report
