"""``report.md``: the human summary of a study report — tables, the findings with their intervals, the
figures with captions — written from the report dictionary (``report.json``'s content) alone."""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping
from typing import Any

import numpy as np

from unlearn_jax import _atomic

__all__ = ["write_report_md"]


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
  return (
    lines
    + [
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
    + ([f"Non-private baseline: {tr['non_private_baseline']['note']}.", ""] if tr.get("non_private_baseline") else [])
    + ([f"Replicates: {tr['replicates']['note']}.", ""] if tr.get("replicates") else [])
  )


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
  if "retraining" in pv:
    lines += [f"Next to retraining: {pv['retraining']['note']}.", ""]
    lines += [f"Stationarity: {pv['retraining']['stationarity_note']}.", ""]
  if "saturation" in pv:
    lines += [f"Saturation: {pv['saturation']['note']}.", ""]
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
    "between unlearned and oracle seeds stays at or below the oracle-vs-oracle floor (theory §6); `> N` "
    "= not within the grid. Barrier: original vs oracle on the forget set (mean over paired seeds).",
    "",
  ]
  if report.get("unlearned_test"):
    lines += [f"Power of the test: {report['unlearned_test']['note']}.", ""]
  lines += [
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


def _md_bins_curve(f: Mapping[str, Any]) -> list[str]:
  lines = []
  for name, rows in f.get("steps_over_metric_bins", {}).items():
    for m, row in rows.items():
      if row.get("interval"):
        steps = "; ".join(f"{b.split(':')[1]}: {', '.join(v['steps_text'])}" for b, v in row["bins"].items())
        lines += [
          f"- Steps over the quantile bins of {name} [{m}] (bin 0 the easiest): {steps}; Spearman(mean P, steps) "
          f"{_md_num(row['spearman_mean_privacy_loss_vs_steps'])} [{_md_num(row['interval'][0])}, "
          f"{_md_num(row['interval'][1])}]."
        ]
  for m, row in f.get("b_over_privacy_loss_bins", {}).items():
    if not row.get("interval"):
      continue
    curve = "; ".join(
      f"{b.split(':')[1]} (mean P {_md_num(float(np.mean(v['mean_privacy_loss'])))}): {', '.join(v['steps_text'])}"
      for b, v in row["bins"].items()
    )
    lines += [
      f"- **(b) over privacy-loss bins [{m}]: {row['verdict']}.** Spearman(mean P, steps) over "
      f"{row['num_sets']} sets {_md_num(row['spearman_mean_privacy_loss_vs_steps'])} "
      f"[{_md_num(row['interval'][0])}, {_md_num(row['interval'][1])}]; steps per bin: {curve}."
    ]
  return lines


def _md_second_clip(f: Mapping[str, Any], report: Mapping[str, Any]) -> list[str]:
  lines = []
  for m, row in f.get("c_at_second_clip_norm", {}).items():
    lines += [
      f"- **(c) at the second clip norm [{m}]: {row['verdict']}.** The top set by P at the second clip norm "
      f"needs {row['privacy_loss:top_steps']} steps (mean median distance {_md_num(row['privacy_loss:top_distance'])})"
      " vs " + ", ".join(f"{k} {v['steps']}" for k, v in row["vs"].items()) + "."
    ]
  if report.get("second_clip"):
    sc = report["second_clip"]
    lines += [
      f"- Second clip norm: {sc['note']}; Spearman with the main P {_md_num(sc['spearman_with_main_privacy_loss'])}"
      f", oriented with the metrics "
      + ", ".join(f"{k} {_md_num(v)}" for k, v in sc["spearman_oriented"].items())
      + f"; top-set overlap with the main top set {sc['top_set_overlap_with_main_top']}."
    ]
  return lines


def _md_findings(report: Mapping[str, Any]) -> list[str]:
  f = report["findings"]
  lines = ["## Findings", ""]
  a = f["a_privacy_loss_correlates_with_difficulty"]
  lines += [
    f"- **(a) Privacy loss correlates with the difficulty metrics: {a['verdict']}.** Oriented Spearman "
    "[95% bootstrap interval over examples; min–max over the training chains' own P]: "
    + ", ".join(_md_correlation(k, v, a) for k, v in a["spearman_oriented"].items())
    + "."
    + (
      f" No effect (0) is inside the interval of: {', '.join(a['interval_includes_no_effect'])}."
      if a.get("interval_includes_no_effect")
      else ""
    )
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
  lines += _md_bins_curve(f)
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
        + "; distance of privacy_loss:top minus each, 95% interval over examples: "
        + ", ".join(_md_difference(k, v) for k, v in row["vs"].items())
        + "."
      ]
  lines += _md_second_clip(f, report)
  d = f["d_certified_below_worst_case"]
  return (
    lines
    + [
      f"- **(d) Certified steps below the worst case for most examples: {d['verdict']}** "
      f"({100 * d['fraction_below']:.1f}% below K = {_md_num(d['worst_case_steps'])}"
      + (f", 95% interval [{100 * d['interval'][0]:.1f}%, {100 * d['interval'][1]:.1f}%]" if d.get("interval") else "")
      + f"; median certified {_md_num(d['certified_median'])}; {'; '.join(d['assumptions'])}).",
    ]
    + [
      f"- **(e) Higher privacy loss, larger loss barrier over its floor ({method}): {e['verdict']}** "
      f"(Spearman over {e['num_sets']} forget sets of mean P vs barrier − oracle-vs-oracle barrier "
      f"{_md_num(e['spearman_privacy_loss_vs_excess_barrier'])}, 95% interval over sets "
      f"[{_md_num((e.get('interval') or [None, None])[0])}, {_md_num((e.get('interval') or [None, None])[1])}])."
      for method, e in f.get("e_barrier_grows_with_privacy_loss", {}).items()
    ]
    + _md_membership_check(f.get("membership_lower_bounds_within_certificates"))
    + [""]
  )


def _md_difference(name: str, v: Mapping[str, Any]) -> str:
  dd = v.get("distance_difference")
  if not dd:
    return f"{name} —"
  return f"{name} {_md_num(dd['difference'])} [{_md_num(dd['low'])}, {_md_num(dd['high'])}]"


def _md_membership_check(check: Mapping[str, Any] | None) -> list[str]:
  if not check or "examples_checked" not in check:
    return []
  return [
    f"- **Membership lower bounds within the certificates: {check['verdict']}** "
    f"({check['lower_bounds_above_certified_epsilon']} of {check['examples_checked']} forget examples have a "
    "membership ε lower bound above their set's certified ε)."
  ]


def _md_correlation(name: str, value: float, a: Mapping[str, Any]) -> str:
  text = f"{name} {_md_num(value)}"
  iv = a.get("intervals", {}).get(name)
  if iv is not None:
    text += f" [{_md_num(iv['low'])}, {_md_num(iv['high'])}"
    spread = a.get("spread_over_training_seeds", {}).get(name, {})
    text += f"; {_md_num(spread['min'])}–{_md_num(spread['max'])}]" if "min" in spread else "]"
  return text


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
