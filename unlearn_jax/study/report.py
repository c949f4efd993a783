"""The study's outputs: the JSON report built once from the typed stage results, ``report.md``, and
``per_example.csv`` (one row per training example)."""

from __future__ import annotations

import datetime
import json
import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from unlearn_jax import _atomic
from unlearn_jax.evaluate import membership_resolvable_cap
from unlearn_jax.study import findings as findings_lib
from unlearn_jax.study.config import Config
from unlearn_jax.study.findings import Correlations
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


def _md_num(value: Any, digits: int = 3) -> str:
  if value is None:
    return "—"
  if isinstance(value, str):
    return value
  v = float(value)
  if math.isnan(v):
    return "nan"
  if math.isinf(v):
    return "∞" if v > 0 else "−∞"
  if v.is_integer() and abs(v) < 1e9:
    return str(int(v))
  return f"{v:.{digits}g}"


def _md_table(header: list[str], rows: list[list[Any]]) -> str:
  lines = ["| " + " | ".join(header) + " |", "|" + "|".join("---" for _ in header) + "|"]
  for row in rows:
    lines.append("| " + " | ".join(_md_num(c) if not isinstance(c, str) else c for c in row) + " |")
  return "\n".join(lines)


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


_FIGURE_CAPTIONS = {
  "privacy_loss_histogram": "Distribution of the per-example privacy loss P(x, 4α) (log x axis).",
  "certified_vs_worst_case": "Certified per-instance steps to unlearn each example (points) against the "
  "worst-case baseline of Chien et al. (orange line) and the cost of retraining from scratch (dashed: the "
  "training run's steps; a certificate above it costs more than retraining).",
  "empirical_steps_vs_privacy_loss": "Empirical steps to unlearn each forget set against its mean privacy "
  "loss, one line per method through the sets in the order of their privacy loss (above the dotted line: "
  "not unlearned within the grid); the numbers at the points are keyed to the sets' names beside the axes.",
  "correlation_heatmap": "Spearman rank correlations between privacy loss and the difficulty metrics.",
  "membership_vs_certified": "Per-example membership ε lower bounds (one-sided simultaneous Clopper–Pearson, "
  "SGLD unlearning, grid end) against the certified ε of the whole forget set "
  "(group bound); sound when on or below the diagonal. One hollow marker per forget set; crosses: the "
  "uncorrected point estimates (not bounds); dotted: the most the models can resolve.",
}


def _md_header(report: Mapping[str, Any], timings: Mapping[str, float]) -> list[str]:
  tr, ds, cfg = report["training"], report["dataset"], report["config"]
  lines = [f"# Per-instance unlearning study: {ds['name']} / {cfg['model']['name']}", ""]
  lines += [
    f"Created {report['created']}; wall time {timings.get('total', float('nan')):.0f} s "
    "(stages in timings.json). The full configuration is in report.json.",
    "",
  ]
  return lines + [
    "## Data and training",
    "",
    _md_table(
      [
        "data set",
        "n_train",
        "n_test",
        "mode",
        "steps",
        "η",
        "τ",
        "clip C",
        "weight decay",
        "seeds",
        "train acc",
        "test acc",
      ],
      [
        [
          ds["name"],
          ds["n_train"],
          ds["n_test"],
          cfg["training"]["mode"],
          tr["steps"],
          cfg["training"]["step_size"],
          cfg["training"]["temperature"],
          str(cfg["training"]["clip_norm"]),
          cfg["training"]["weight_decay"],
          tr["num_seeds"],
          f"{100 * tr['train_accuracy']:.1f}%",
          f"{100 * tr['test_accuracy']:.1f}%",
        ]
      ],
    ),
    "",
  ]


def _md_privacy(report: Mapping[str, Any]) -> list[str]:
  pv = report["privacy"]
  s, c = pv["privacy_loss_summary"], pv["certified_steps_summary"]
  lines = [
    "## Privacy losses and certificates",
    "",
    f"- Ledger: {pv['ledger_note']}; orders {pv['orders']}; the certificate reads P(x, 4α) at "
    f"4α = {pv['privacy_loss_order']:g} (mean over the training seeds); {pv['temperature_note']}.",
    f"- Certificate target: Rényi ε = {pv['epsilon']:g} at α = {pv['alpha']:g}.",
    f"- C_LSI: {pv['lsi_note']}.",
    f"- E₁, E₂: {pv['stationarity']}.",
    f"- Worst-case baseline: {pv['worst_case_note']}.",
    "",
    _md_table(
      ["quantity", "min", "median", "99th pct", "max"],
      [
        ["P(x, 4α)", s["min"], s["median"], s["p99"], s["max"]],
        ["certified steps k*(x)", c["min"], c["median"], c["p99"], c["max"]],
      ],
    ),
    "",
    f"Worst-case steps for one example: {_md_num(pv['worst_case_steps'])}; certified per-instance steps are "
    f"below it for {100 * pv['fraction_certified_below_worst_case']:.1f}% of the examples.",
    "",
  ]
  lines += [
    "## Correlations (Spearman with privacy loss)",
    "",
    _md_table(
      ["metric", "Spearman", "oriented (+ = harder ↔ higher P)"],
      [[k, v, report["correlations_oriented"][k]] for k, v in report["correlations"].items()],
    ),
    "",
  ]
  cve = report["certified_vs_empirical_spearman"]
  return lines + [
    "Certified (group) vs empirical steps across forget sets: "
    + ", ".join(f"{m}: {_md_num(v)}" for m, v in cve.items()),
    "",
  ]


def _membership_cell(e: Mapping[str, Any]) -> str:
  if "membership_epsilon" not in e:
    return "—"
  m = e["membership_epsilon"]
  return (
    f"{_md_num(m['lower_bound']['median'])} / {_md_num(m['lower_bound']['max'])} (cap {_md_num(m['resolvable_cap'])})"
  )


def _md_forget_sets(report: Mapping[str, Any]) -> list[str]:
  lines = [
    "## Forget sets",
    "",
    "Empirical steps: first step of the grid from which on the median (over the set) symmetric KL "
    "between unlearned and oracle seeds stays at or below the oracle-vs-oracle floor (THEORY §6); `> N` "
    "= not within the grid. Barrier: original vs oracle on the forget set (mean over paired seeds).",
    "",
    _md_table(
      [
        "selection",
        "method",
        "mean P",
        "overlap with P-top",
        "certified (group)",
        "worst case",
        "empirical",
        "barrier",
        "oracle barrier",
        "forget acc (unl. / oracle)",
        "membership ε lower bound (median / max)",
      ],
      [
        [
          e["selection"],
          e["method"],
          e["mean_privacy_loss"],
          e.get("overlap_with_privacy_loss_top", "—"),
          e["certified_steps"],
          e["worst_case_steps"],
          _steps_cell(e),
          e["loss_barrier"],
          e["oracle_barrier"],
          f"{100 * e['forget_accuracy_unlearned']:.0f}% / {100 * e['forget_accuracy_oracle']:.0f}%",
          _membership_cell(e),
        ]
        for e in report["forget_sets"]
      ],
    ),
    "",
  ]
  return lines + [
    "## Harder groups (hardest first)",
    "",
    _md_table(
      ["method", "rank", "selection", "mean P", "empirical steps", "mean median distance", "barrier"],
      [
        [
          r["method"],
          r["rank"],
          r["selection"],
          r["mean_privacy_loss"],
          _md_num(r["empirical_steps"]),
          r["mean_median_distance"],
          r["loss_barrier"],
        ]
        for r in report["harder_groups"]
      ],
    ),
    "",
  ]


def _md_findings(report: Mapping[str, Any]) -> list[str]:
  f = report["findings"]
  lines = ["## Findings", ""]
  a = f["a_privacy_loss_correlates_with_difficulty"]
  lines += [
    f"- **(a) Privacy loss correlates with the difficulty metrics: {a['verdict']}.** Oriented Spearman: "
    + ", ".join(f"{k} {_md_num(v)}" for k, v in a["spearman_oriented"].items())
    + "."
  ]
  b = f["b_high_privacy_loss_needs_more_steps"]
  if "verdict" in b:
    lines += [f"- **(b)** {b['verdict']}."]
  else:
    for m, row in b.items():
      lines += [
        f"- **(b) [{m}] High-privacy-loss sets need more steps than random and low ones: {row['verdict']}.** "
        "Steps "
        + ", ".join(f"{k} {v}" for k, v in row["steps"].items())
        + "; mean median distance "
        + ", ".join(f"{k} {_md_num(v)}" for k, v in row["mean_median_distance"].items())
        + "."
      ]
  cc = f["c_privacy_loss_sets_at_least_as_hard_as_metric_sets"]
  if "verdict" in cc:
    lines += [f"- **(c)** {cc['verdict']}."]
  else:
    for m, row in cc.items():
      lines += [
        f"- **(c) [{m}] Privacy-loss-selected sets at least as hard as metric-selected ones: "
        f"{row['verdict']}.** privacy_loss:top {row['privacy_loss:top_steps']} steps (mean median distance "
        f"{_md_num(row['privacy_loss:top_distance'])}) vs "
        + ", ".join(f"{k} {v['steps']} ({_md_num(row['vs_distance'][k])})" for k, v in row["vs"].items())
        + "."
      ]
  d = f["d_certified_below_worst_case"]
  return (
    lines
    + [
      f"- **(d) Certified steps below the worst case for most examples: {d['verdict']}** "
      f"({100 * d['fraction_below']:.1f}% below K = {_md_num(d['worst_case_steps'])}; median certified "
      f"{_md_num(d['certified_median'])}; {'; '.join(d['assumptions'])}).",
    ]
    + [
      f"- **(e) Higher privacy loss, larger loss barrier over its floor ({method}): {e['verdict']}** "
      f"(Spearman over {e['num_sets']} forget sets of mean P vs barrier − oracle-vs-oracle barrier "
      f"{_md_num(e['spearman_privacy_loss_vs_excess_barrier'])})."
      for method, e in f.get("e_barrier_grows_with_privacy_loss", {}).items()
    ]
    + [""]
  )


def _figure_caption(name: str) -> str:
  caption = _FIGURE_CAPTIONS.get(name)
  if caption is None and name.startswith("loss_barrier_"):
    caption = (
      f"Loss barrier between unlearned ({name[13:]}) and oracle models on each forget set along "
      "the unlearning steps; dashed: oracle vs oracle."
    )
  if caption is None and name.startswith("unlearning_distance_"):
    caption = (
      f"Median symmetric KL between unlearned ({name[20:]}) and oracle output distributions along "
      "the unlearning steps; dashed: the noise-floor threshold of each set."
    )
  return caption or name


def write_report_md(
  path: str | os.PathLike, report: Mapping[str, Any], timings: Mapping[str, float] | None = None
) -> pathlib.Path:
  """Writes the human summary ``report.md`` (tables, the four findings, figures embedded) of a report.

  Args:
    path: output file.
    report: the report returned by :func:`run` (or read back from ``report.json``).
    timings: stage -> seconds (``timings.json``), for the wall time line.

  Returns:
    The path written.
  """
  lines = _md_header(report, timings or {}) + _md_privacy(report) + _md_forget_sets(report) + _md_findings(report)
  if report.get("figures"):
    lines += ["## Figures", ""]
    for name, file in report["figures"].items():
      lines += [f"![{name}]({file})", "", f"*{_figure_caption(name)}*", ""]
  return _atomic.write_text(path, "\n".join(lines) + "\n")


def _steps_cell(entry: Mapping[str, Any]) -> str:
  s = float(entry["empirical_steps"])
  return f"{s:.0f}" if math.isfinite(s) else f"> {entry['grid_end']}"


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
  }


def _membership_entry(config: Config, m) -> dict[str, Any]:
  R, delta = config.unlearning.num_seeds, config.evaluation.delta
  cap = membership_resolvable_cap(R, delta=delta)
  lower, point = m.membership_lower_bound, m.membership_point_estimate
  return {
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


def build_report(
  config: Config, s: Setup, trained: Trained, certs: Certificates, sets: list[SetResult], corr: Correlations
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
    },
    "privacy": privacy,
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
