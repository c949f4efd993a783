"""The study over a grid of one knob: sensitivity sweeps and the utility–unlearning trade-off (theory §4).

:func:`sweep` runs the whole study (:func:`~unlearn_jax.study.pipeline.run`) once per value of one knob —
the temperature τ, the clip norm C, the step size η or the training length T — each in its own
sub-directory (so an interrupted sweep resumes where it stopped), and reads from every report the
quantities the certificates depend on: test accuracy, the Spearman correlations of P with each metric,
the claims (b) and (c), the share of clip-saturated examples, the per-example certified steps at the
quantiles ``q`` of the examples next to the worst-case certificate (Chien et al.) and, on forget sets of
the examples around the same quantiles of P, the set's certificate, the worst case for a set of that
size and the empirical steps of the distribution test. :func:`tradeoff` is the sweep over τ with the
trade-off figure: at equal accuracy (one τ) how many steps each certificate needs, and at an equal step
budget what accuracy each allows.
"""

from __future__ import annotations

import json
import math
import pathlib
import sys
import time
from collections.abc import Callable, Sequence
from typing import Any

import numpy as np
import tqdm

from unlearn_jax.study import pipeline, saved, sweep_outputs
from unlearn_jax.study.config import Config, ConfigError
from unlearn_jax.study.stages import quantile_label

__all__ = ["KNOBS", "QUANTILES", "point_config", "summarize", "sweep", "tradeoff", "budget_accuracy"]

# knob -> the config key it sets
KNOBS: dict[str, str] = {
  "temperature": "training.temperature",
  "clip_norm": "training.clip_norm",
  "step_size": "training.step_size",
  "num_steps": "training.num_steps",
}
QUANTILES: tuple[float, ...] = (0.5, 0.9, 0.99, 1.0)


def _check_values(knob: str, values: Sequence[float]) -> list[float]:
  if knob not in KNOBS:
    raise ConfigError(f"knob must be one of {sorted(KNOBS)}, got {knob!r}")
  out = [float(v) for v in values]
  if not out:
    raise ConfigError(f"values of knob {knob!r}: give at least one value, got {list(values)!r}")
  if any(not math.isfinite(v) or v <= 0 for v in out):
    raise ConfigError(f"values of knob {knob!r} must be finite numbers > 0, got {out}")
  if len(set(out)) != len(out):
    raise ConfigError(f"values of knob {knob!r} must not repeat, got {out}")
  if knob == "num_steps" and any(v != int(v) for v in out):
    raise ConfigError(f"values of knob 'num_steps' must be whole numbers, got {out}")
  return out


def _temperature_overrides(config: Config, tau: float) -> dict[str, Any]:
  """τ of the ledger (τ_acc for noise-free training); an assumed C_LSI keeps its ratio to τ (the usual
  assumption C_LSI = 2τ/m scales with τ), a certified one (logistic regression) follows from τ anyway."""
  tr, pv, uc = config.training, config.privacy, config.unlearning
  base = tr.ledger_temperature
  out: dict[str, Any] = (
    {"training__accounting_temperature": tau} if tr.temperature == 0 else {"training__temperature": tau}
  )
  if pv.lsi_constant is not None:
    out["privacy__lsi_constant"] = pv.lsi_constant * tau / base
  if uc.temperature is not None:
    out["unlearning__temperature"] = uc.temperature * tau / base
  return out


def point_config(config: Config, knob: str, value: float, quantiles: Sequence[float] = QUANTILES) -> Config:
  """The study's config at one value of ``knob``, in ``<out_dir>/<knob>=<value>``, with forget sets
  around the ``quantiles`` of P.

  Examples:
    >>> c = point_config(Config.from_dict({"out_dir": "runs/s", "privacy": {"lsi_constant": 0.02}}),
    ...                  "temperature", 1e-4)
    >>> c.training.temperature, round(c.privacy.lsi_constant, 6), c.out_dir
    (0.0001, 0.2, 'runs/s/temperature=0.0001')
  """
  (value,) = _check_values(knob, [value])
  fc = config.forget_sets
  quantiles = tuple(dict.fromkeys((*fc.privacy_loss_quantiles, *map(float, quantiles))))
  overrides: dict[str, Any] = {
    "out_dir": str(pathlib.Path(config.out_dir) / f"{knob}={value:g}"),
    "forget_sets__privacy_loss_quantiles": list(quantiles),
  }
  if knob == "temperature":
    overrides.update(_temperature_overrides(config, value))
  elif knob == "num_steps":
    overrides["training__num_steps"] = int(value)
    overrides["training__num_checkpoints"] = min(config.training.num_checkpoints, int(value))
    if config.unlearning.retrain_steps is not None:
      overrides["unlearning__retrain_steps"] = int(value)
  else:
    overrides[KNOBS[knob].replace(".", "__")] = value
  return config.replace(**overrides)


def _set_rows(report: dict[str, Any], quantiles: Sequence[float]) -> dict[str, dict[str, Any]]:
  """label q -> the quantile set's certificate, worst case and empirical steps per method."""
  rows: dict[str, dict[str, Any]] = {}
  for q in quantiles:
    entries = [e for e in report["forget_sets"] if e["selection"] == quantile_label(q)]
    if not entries:
      continue
    e0 = entries[0]
    rows[f"{q:g}"] = {
      "label": quantile_label(q),
      "mean_privacy_loss": e0["mean_privacy_loss"],
      "size": e0["size"],
      "certified_steps": e0["certified_steps"],
      "worst_case_steps": e0["worst_case_steps"],
      "empirical_steps": {e["method"]: e["empirical_steps"] for e in entries},
      "grid_end": e0["grid_end"],
    }
  return rows


def _verdicts(findings: dict[str, Any], key: str) -> dict[str, str]:
  rows = findings.get(key, {})
  return {m: v["verdict"] for m, v in rows.items() if isinstance(v, dict) and "verdict" in v}


def summarize(report: dict[str, Any], certified_steps: np.ndarray, quantiles: Sequence[float] = QUANTILES) -> dict:
  """One row of a sweep: what the certificates and the claims come to at one setting."""
  pv, fnd = report["privacy"], report["findings"]
  k = np.asarray(certified_steps, dtype=np.float64)
  return {
    "test_accuracy": report["training"]["test_accuracy"],
    "train_accuracy": report["training"]["train_accuracy"],
    "spearman": dict(report["correlations_oriented"]),
    "claim_b": _verdicts(fnd, "b_high_privacy_loss_needs_more_steps"),
    "claim_c": _verdicts(fnd, "c_privacy_loss_sets_at_least_as_hard_as_metric_sets"),
    "fraction_clip_saturated": pv["saturation"]["fraction_within_2_percent"],
    "median_certified_steps": float(np.median(k)),
    "certified_quantiles": {f"{q:g}": float(np.quantile(k, q, method="higher")) for q in quantiles},
    "worst_case_steps": pv["worst_case_steps"],
    "fraction_certified_below_worst_case": pv["fraction_certified_below_worst_case"],
    "retrain_steps": pv["retraining"]["retrain_steps"],
    "lsi_status": pv["lsi_status"],
    "lsi_note": pv["lsi_note"],
    "e1_e2": pv["stationarity"],
    "lsi_constant": pv["lsi_constant"],
    "stationarity": pv["retraining"]["stationarity_note"],
    "training_contraction_factor": pv["retraining"]["training_contraction_factor"],
    "forget_sets": _set_rows(report, quantiles),
  }


def budget_accuracy(rows: Sequence[dict[str, Any]], key: Callable[[dict], float], budget: float) -> float | None:
  """The best test accuracy over the sweep's settings whose certificate (``key(row)``) fits ``budget``
  steps; None when none does.

  Examples:
    >>> rows = [{"test_accuracy": 0.9, "k": 500.0}, {"test_accuracy": 0.8, "k": 50.0}]
    >>> budget_accuracy(rows, lambda r: r["k"], 100), budget_accuracy(rows, lambda r: r["k"], 10)
    (0.8, None)
  """
  fits = [r["test_accuracy"] for r in rows if math.isfinite(key(r)) and key(r) <= budget]
  return max(fits) if fits else None


def _comparison(rows: Sequence[dict[str, Any]], quantiles: Sequence[float]) -> dict[str, Any]:
  """Per setting, the worst case over each per-instance quantile; per budget, the accuracy each allows."""
  ratios = []
  for r in rows:
    wc = r["worst_case_steps"]
    ratios.append({f"{q:g}": wc / max(r["certified_quantiles"][f"{q:g}"], 1.0) for q in quantiles})
  retrain = max(r["retrain_steps"] for r in rows)
  budgets = sorted({retrain, 10 * retrain, 100 * retrain})
  allowed = {
    f"{b:g}": {
      "worst_case": budget_accuracy(rows, lambda r: r["worst_case_steps"], b),
      **{f"q{q:g}": budget_accuracy(rows, lambda r, q=q: r["certified_quantiles"][f"{q:g}"], b) for q in quantiles},
    }
    for b in budgets
  }
  return {"worst_case_over_per_instance": ratios, "accuracy_at_budget": allowed}


def _finished_row(cfg: Config, value: float, quantiles: Sequence[float]) -> dict[str, Any] | None:
  """The row of one point from its finished study (None when it has not finished)."""
  out = pathlib.Path(cfg.out_dir)
  if not (out / "report.json").exists():
    return None
  results = saved.load(out)
  timings = json.loads((out / "timings.json").read_text(encoding="utf-8"))
  row = summarize(results.report, results.per_example["certified_steps"], quantiles)
  return {"value": value, "out_dir": cfg.out_dir, "wall_time_s": float(timings.get("total", math.nan)), **row}


def _say(progress: bool) -> Callable[[str], None]:
  """Stage messages on stderr, as the study's (when progress is on)."""
  return (lambda msg: tqdm.tqdm.write(f"[unlearn-jax] {msg}", file=sys.stderr)) if progress else (lambda msg: None)


def sweep(
  config: Config,
  knob: str,
  values: Sequence[float],
  *,
  quantiles: Sequence[float] = QUANTILES,
  progress: bool = False,
  fresh: bool = False,
  collect: bool = False,
) -> dict[str, Any]:
  """Runs the study at each value of ``knob`` and writes ``sweep_<knob>.json`` / ``.md`` / ``.png`` to
  ``config.out_dir``.

  Args:
    config: the study's config (``out_dir`` holds one sub-directory per value).
    knob: one of :data:`KNOBS`.
    values: the knob's values (> 0, distinct).
    quantiles: the example quantiles q of the certificates and of the forget sets around them.
    progress: stage messages and progress bars on stderr / stdout.
    fresh: discard each point's checkpoints first (else an interrupted sweep resumes).
    collect: run nothing; tabulate the points whose study has finished (the others are listed in
      ``missing_values``).

  Returns:
    ``{"knob", "config_key", "values", "missing_values", "rows", "comparison", "wall_time_s", "files"}``.

  Raises:
    ConfigError: a bad knob or values, or (``collect``) no finished point.
  """
  values = _check_values(knob, values)
  quantiles = [float(q) for q in quantiles]
  say, start, rows, missing = _say(progress), time.perf_counter(), [], []
  for i, value in enumerate(values):
    cfg = point_config(config, knob, value, quantiles)
    if not collect:
      say(f"sweep {knob}: {i + 1}/{len(values)} at {value:g} -> {cfg.out_dir}")
      pipeline.run(cfg, progress=progress, fresh=fresh)
    row = _finished_row(cfg, value, quantiles)
    if row is None:
      missing.append(value)
    else:
      rows.append(row)
  if not rows:
    raise ConfigError(f"sweep over {knob!r}: no finished study among {values} in {config.out_dir!r} (run it first)")
  report = json.loads((pathlib.Path(rows[0]["out_dir"]) / "report.json").read_text(encoding="utf-8"))
  result = {
    "knob": knob,
    "config_key": KNOBS[knob],
    "values": [r["value"] for r in rows],
    "missing_values": missing,
    "quantiles": quantiles,
    "dataset": report["dataset"],
    "model": report["config"]["model"],
    "rows": rows,
    "comparison": _comparison(rows, quantiles),
    "wall_time_s": sum(r["wall_time_s"] for r in rows) if collect else time.perf_counter() - start,
  }
  result["files"] = sweep_outputs.write(pathlib.Path(config.out_dir), result)
  return result


def tradeoff(
  config: Config,
  temperatures: Sequence[float],
  *,
  quantiles: Sequence[float] = QUANTILES,
  progress: bool = False,
  fresh: bool = False,
  collect: bool = False,
) -> dict[str, Any]:
  """The utility–unlearning trade-off: :func:`sweep` over the temperature τ, with the trade-off figure
  (``tradeoff.png``: steps against τ, and test accuracy against the steps each certificate needs).

  Examples:
    >>> tradeoff(Config(), [])  # doctest: +ELLIPSIS
    Traceback (most recent call last):
    ...
    unlearn_jax.study.sections.ConfigError: values of knob 'temperature': give at least one value, got []
  """
  return sweep(
    config, "temperature", temperatures, quantiles=quantiles, progress=progress, fresh=fresh, collect=collect
  )
