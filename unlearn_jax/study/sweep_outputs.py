"""The outputs of a sweep (:mod:`unlearn_jax.study.sweep`): ``sweep_<knob>.json``, ``sweep_<knob>.md``, the
sweep's figure and, for the temperature, the trade-off figure."""

from __future__ import annotations

import json
import math
import pathlib
from typing import Any

import numpy as np

from unlearn_jax import _atomic, plots
from unlearn_jax.study.markdown import _md_num, _md_table
from unlearn_jax.study.report import jsonable

__all__ = ["write", "markdown"]

_KNOB_LABELS = {
  "temperature": "temperature τ",
  "clip_norm": "clip norm C",
  "step_size": "step size η",
  "num_steps": "training steps T",
}


def _column(rows: list[dict], get) -> np.ndarray:
  out = []
  for r in rows:
    v = get(r)
    out.append(math.nan if v is None else float(v))
  return np.asarray(out, dtype=np.float64)


def _first(d: dict[str, str]) -> str:
  return "; ".join(f"{m}: {v}" for m, v in d.items()) if d else "not measured"


def _settings_table(result: dict[str, Any]) -> str:
  rows, qs = result["rows"], [f"{q:g}" for q in result["quantiles"]]
  metrics = sorted({m for r in rows for m in r["spearman"]})
  header = [result["knob"], "test acc", *[f"ρ(P, {m})" for m in metrics], "saturated", "median k*"]
  header += [f"k* q={q}" for q in qs] + ["worst case K", "k* < K", "C_LSI"]
  body = []
  for r in rows:
    line = [f"{r['value']:g}", _md_num(r["test_accuracy"]), *[_md_num(r["spearman"].get(m)) for m in metrics]]
    line += [f"{100 * r['fraction_clip_saturated']:.1f}%", _md_num(r["median_certified_steps"], 4)]
    line += [_md_num(r["certified_quantiles"][q], 4) for q in qs]
    below = r["fraction_certified_below_worst_case"]
    line += [_md_num(r["worst_case_steps"], 4), "—" if below is None or math.isnan(below) else f"{100 * below:.1f}%"]
    line.append(f"{r['lsi_status']} {_md_num(r['lsi_constant'])}")
    body.append(line)
  return _md_table(header, body)


def _sets_table(result: dict[str, Any]) -> str:
  body = []
  for r in result["rows"]:
    for q, s in r["forget_sets"].items():
      emp = ", ".join(f"{m} {_md_num(v, 4)}" for m, v in s["empirical_steps"].items())
      # a set not unlearned within the grid needs a certificate beyond the grid's end
      cert_ok = all(
        float(s["certified_steps"]) >= (float(v) if math.isfinite(float(v)) else s["grid_end"])
        for v in s["empirical_steps"].values()
      )
      body.append(
        [
          f"{r['value']:g}",
          q,
          _md_num(s["mean_privacy_loss"]),
          _md_num(s["certified_steps"], 4),
          _md_num(s["worst_case_steps"], 4),
          emp + f" (grid end {s['grid_end']})",
          "yes" if cert_ok else "NO",
        ]
      )
  header = [result["knob"], "q", "mean P", "set certificate", "worst case (same size)", "empirical steps"]
  return _md_table(header + ["certificate ≥ empirical"], body)


def _claims_table(result: dict[str, Any]) -> str:
  body = [[f"{r['value']:g}", _first(r["claim_b"]), _first(r["claim_c"])] for r in result["rows"]]
  return _md_table([result["knob"], "claim (b)", "claim (c)"], body)


def _budget_table(result: dict[str, Any]) -> str:
  allowed = result["comparison"]["accuracy_at_budget"]
  labels = list(next(iter(allowed.values())))
  body = [[b, *[_md_num(v[label]) if v[label] is not None else "none" for label in labels]] for b, v in allowed.items()]
  return _md_table(["step budget", *labels], body)


def markdown(result: dict[str, Any]) -> str:
  """The sweep as Markdown: the settings, the quantile forget sets, the claims and the budgets."""
  knob, ds = result["knob"], result["dataset"]
  lines = [
    f"# Sweep over {_KNOB_LABELS[knob]} (`{result['config_key']}`)",
    "",
    f"{ds['name']}: {ds['n_train']} training / {ds['n_test']} test examples, model `{result['model']['name']}`; "
    f"{len(result['rows'])} settings in {result['wall_time_s'] / 60:.1f} min"
    + (
      f" (not finished, left out: {', '.join(f'{v:g}' for v in result['missing_values'])})."
      if result.get("missing_values")
      else "."
    ),
    "",
    f"What the certificates rest on (first setting): {result['rows'][0].get('lsi_note', '')}; E₁, E₂: "
    f"{result['rows'][0].get('e1_e2', 'not recorded')} (computed exactly only on the linear-Gaussian testbed, "
    "`unlearn-jax certify-testbed`).",
    "",
    "k* q=…: the per-example certificate (steps) at the q-quantile of the examples; K: the worst-case "
    "certificate (Chien et al.) for one example; saturated: examples within 2% of the largest P.",
    "",
    _settings_table(result),
    "",
    "## Forget sets around the quantiles of P",
    "",
    _sets_table(result),
    "",
    "## Claims",
    "",
    _claims_table(result),
    "",
    "## Best test accuracy each certificate allows within a step budget",
    "",
    _budget_table(result),
    "",
    "## Stationarity",
    "",
    *[f"- {r['value']:g}: {r['stationarity']}" for r in result["rows"]],
    "",
  ]
  return "\n".join(lines)


def _sweep_figure(out: pathlib.Path, result: dict[str, Any]) -> pathlib.Path:
  path = out / f"sweep_{result['knob']}.png"
  plots._save(sweep_fig(result), path)
  return path


def sweep_fig(result: dict[str, Any]) -> Any:
  """The four panels of a sweep (accuracy, ρ(P, metric), certificates, clip-saturated) against the knob."""
  fig = plots.require_matplotlib()(figsize=(12, 8))
  axes = fig.subplots(2, 2).ravel()
  rows, x, knob = result["rows"], np.asarray(result["values"]), _KNOB_LABELS[result["knob"]]
  metrics = sorted({m for r in rows for m in r["spearman"]})
  plots.against_setting(x, {"test": _column(rows, lambda r: r["test_accuracy"])}, ax=axes[0], xlabel=knob,
                        ylabel="accuracy", title="Test accuracy")  # fmt: skip
  spearman = {m: _column(rows, lambda r, m=m: r["spearman"].get(m)) for m in metrics}
  plots.against_setting(x, spearman, ax=axes[1], xlabel=knob, ylabel="Spearman (oriented)", title="ρ(P, metric)")
  steps = {f"k* q={q:g}": _column(rows, lambda r, q=q: r["certified_quantiles"][f"{q:g}"]) for q in result["quantiles"]}
  steps["worst case K"] = _column(rows, lambda r: r["worst_case_steps"])
  retrain = [r["retrain_steps"] for r in rows]
  hline = (retrain[0], f"retraining: {retrain[0]} steps") if len(set(retrain)) == 1 else None
  if hline is None:  # the training length is the swept knob: retraining costs differ per setting
    steps["retraining from scratch"] = np.asarray(retrain, float)
  plots.against_setting(x, steps, ax=axes[2], xlabel=knob, ylabel="certified steps", title="Certificates",
                        hline=hline)  # fmt: skip
  saturated = {"within 2% of max P": _column(rows, lambda r: r["fraction_clip_saturated"])}
  plots.against_setting(x, saturated, ax=axes[3], xlabel=knob, ylabel="fraction of examples", title="Clip-saturated")
  fig.suptitle(f"Sweep over {knob}: {result['dataset']['name']}, {result['model']['name']}", fontsize=10)
  return fig


def _tradeoff_steps(result: dict[str, Any]) -> tuple[dict[str, np.ndarray], dict[str, dict]]:
  """The curves of the trade-off: one colour per quantile q — the per-example certificate (solid), the
  certificate of the set around q (dashed) and its empirical steps (crosses); the worst cases in black."""
  rows, qs = result["rows"], [f"{q:g}" for q in result["quantiles"]]
  steps, styles = {}, {}
  methods = sorted({m for r in rows for s in r["forget_sets"].values() for m in s["empirical_steps"]})
  for i, q in enumerate(qs):
    colour = f"C{i}"
    steps[f"per-instance q={q}"] = _column(rows, lambda r, q=q: r["certified_quantiles"][q])
    styles[f"per-instance q={q}"] = {"color": colour, "marker": "o"}
    steps[f"set q={q}: certificate"] = _column(rows, lambda r, q=q: r["forget_sets"].get(q, {}).get("certified_steps"))
    styles[f"set q={q}: certificate"] = {"color": colour, "linestyle": "--", "marker": "s", "markersize": 4}
    if methods:
      key = f"set q={q}: empirical ({methods[0]})"
      steps[key] = _column(rows, lambda r, q=q: _empirical_drawn(r["forget_sets"].get(q), methods[0]))
      styles[key] = {"color": colour, "linestyle": "none", "marker": "x", "markersize": 8}
  steps["worst case (one example)"] = _column(rows, lambda r: r["worst_case_steps"])
  styles["worst case (one example)"] = {"color": "k", "marker": "D"}
  size = next((s["size"] for r in rows for s in r["forget_sets"].values()), None)
  steps[f"worst case (set of {size})"] = _column(rows, lambda r: _set_worst_case(r))
  styles[f"worst case (set of {size})"] = {"color": "k", "linestyle": "--", "marker": "D", "markersize": 4}
  return steps, styles


def _empirical_drawn(entry: dict[str, Any] | None, method: str) -> float | None:
  """The empirical steps of a set, a set not unlearned within the grid at 1.3× the grid's end."""
  if entry is None or method not in entry["empirical_steps"]:
    return None
  v = float(entry["empirical_steps"][method])
  return v if math.isfinite(v) else 1.3 * entry["grid_end"]


def _set_worst_case(row: dict[str, Any]) -> float | None:
  return next((s["worst_case_steps"] for s in row["forget_sets"].values()), None)


def _tradeoff_figure(out: pathlib.Path, result: dict[str, Any]) -> pathlib.Path:
  fig = plots.require_matplotlib()(figsize=(16, 5.5))
  left, right = fig.subplots(1, 2)
  rows, x = result["rows"], np.asarray(result["values"])
  steps, styles = _tradeoff_steps(result)
  retrain = max(r["retrain_steps"] for r in rows)
  title = "Steps to certify (α, ε)-unlearning, and empirical steps\n(× at 1.3× the grid's end: not unlearned within it)"
  hline = (retrain, f"retraining: {retrain} steps")
  plots.against_setting(
    x, steps, ax=left, xlabel="temperature τ", ylabel="steps", styles=styles, title=title, hline=hline
  )
  acc = _column(rows, lambda r: r["test_accuracy"])
  curves = {k: v for k, v in steps.items() if k.startswith(("per-instance", "worst case (one"))}
  plots.accuracy_against_steps(acc, curves, ax=right, settings=x, budget=float(retrain))
  fig.suptitle(f"Utility–unlearning trade-off: {result['dataset']['name']}, {result['model']['name']}", fontsize=10)
  path = out / "tradeoff.png"
  plots._save(fig, path)
  return path


def write(out: pathlib.Path, result: dict[str, Any]) -> list[str]:
  """Writes the sweep's JSON, Markdown and figures (figures only with matplotlib) into ``out``."""
  out.mkdir(parents=True, exist_ok=True)
  knob = result["knob"]
  files = [f"sweep_{knob}.json", f"sweep_{knob}.md"]
  if plots.Figure is not None:
    files.append(_sweep_figure(out, result).name)
    if knob == "temperature":
      files.append(_tradeoff_figure(out, result).name)
  result = {**result, "files": files}
  _atomic.write_text(out / files[1], markdown(result))
  _atomic.write_text(out / files[0], json.dumps(jsonable(result), indent=2) + "\n")
  return files
