"""Sweeps and the utility–unlearning trade-off: forget sets around quantiles of P, the config of each point,
the certified regime (logistic regression: certificate never below the empirical steps), the outputs."""

from __future__ import annotations

import csv
import json
import math

import numpy as np
import pytest

from unlearn_jax import plots
from unlearn_jax.evaluate import selection
from unlearn_jax.study import Config, ConfigError, cli, sweep, sweep_outputs
from unlearn_jax.study.stages import quantile_label


@pytest.mark.parametrize("n,size", [(50, 5), (51, 6), (7, 7), (200, 1)])
@pytest.mark.parametrize("q", [0.0, 0.01, 0.5, 0.9, 0.99, 1.0])
def test_around_quantile_is_the_window_of_ranks_nearest_the_quantile(n, size, q):
  scores = np.random.default_rng(n + size).permutation(n).astype(float) * 0.37  # distinct scores
  idx = np.asarray(selection.around_quantile(scores, q, size))
  ranks = np.sort(np.argsort(np.argsort(scores))[idx])  # rank of each chosen example (0 = lowest)
  assert idx.size == size and np.all(np.diff(ranks) == 1)  # consecutive ranks
  centre = q * (n - 1)
  # no other window of `size` consecutive ranks has its middle nearer the quantile's rank
  best = min(range(n - size + 1), key=lambda s: (abs(s + (size - 1) / 2 - centre), s))
  assert abs(ranks[0] + (size - 1) / 2 - centre) <= abs(best + (size - 1) / 2 - centre) + 0.5
  if q == 1.0:
    assert set(idx.tolist()) == set(np.asarray(selection.select_forget_set(scores, "top", size=size)).tolist())
  if q == 0.0:
    assert set(idx.tolist()) == set(np.asarray(selection.select_forget_set(scores, "bottom", size=size)).tolist())


@pytest.mark.parametrize("q,size,needle", [(1.5, 2, "q must be a quantile"), (0.5, 0, "size"), (0.5, 11, "size")])
def test_around_quantile_bad_input(q, size, needle):
  with pytest.raises(ValueError, match=needle):
    selection.around_quantile(np.arange(10.0), q, size)


def test_point_config_sets_the_knob_and_keeps_an_assumed_lsi_ratio(tmp_path):
  base = Config.from_dict(
    {"out_dir": str(tmp_path), "privacy": {"lsi_constant": 0.02}, "training": {"temperature": 1e-5}}
  )
  c = sweep.point_config(base, "temperature", 1e-3)
  assert c.training.temperature == 1e-3 and math.isclose(c.privacy.lsi_constant, 2.0)  # 0.02 * 1e-3 / 1e-5
  assert c.out_dir == str(tmp_path / "temperature=0.001")
  assert c.forget_sets.privacy_loss_quantiles == (0.5, 0.9, 0.99, 1.0)
  noise_free = base.replace(training__temperature=0.0, training__accounting_temperature=1e-5)
  c0 = sweep.point_config(noise_free, "temperature", 1e-4)
  assert c0.training.temperature == 0.0 and c0.training.accounting_temperature == 1e-4
  ct = sweep.point_config(base.replace(unlearning__retrain_steps=50), "num_steps", 20)
  assert ct.training.num_steps == 20 and ct.unlearning.retrain_steps == 20 and ct.training.num_checkpoints <= 20
  assert sweep.point_config(base, "clip_norm", 7.0).training.clip_norm == 7.0


@pytest.mark.parametrize(
  "knob,values,needle",
  [("seed", [1], "knob must be one of"), ("clip_norm", [], "at least one"), ("step_size", [0.1, -1], "> 0"),
   ("step_size", [0.1, 0.1], "repeat"), ("num_steps", [10.5], "whole numbers")],
)  # fmt: skip
def test_sweep_refuses_bad_values_naming_them(knob, values, needle, tmp_path):
  with pytest.raises(ConfigError, match=needle):
    sweep.sweep(Config.from_dict({"out_dir": str(tmp_path)}), knob, values)


def _logistic_config(out_dir) -> Config:
  """A small certified study: L2-regularised logistic regression on 200 digits, C_LSI = 2τ/m a theorem."""
  return Config.from_dict(
    {
      "out_dir": str(out_dir),
      "data": {"num_train": 200, "num_test": 100},
      "model": {"name": "logistic_regression"},
      "training": {"num_steps": 300, "num_seeds": 4, "num_checkpoints": 2, "step_size": 0.5, "weight_decay": 0.05},
      "forget_sets": {"size": 5, "selections": ["privacy_loss:top", "privacy_loss:bottom", "random", "el2n:top"]},
      "unlearning": {"methods": ["sgld", "sgd"], "step_grid": [0, 5, 20, 80, 300], "num_seeds": 4},
      "evaluation": {"min_power": 0},
      "metrics": {"names": ["loss", "el2n"]},
    }
  )


@pytest.fixture(scope="module")
def logistic_tradeoff(tmp_path_factory):
  out = tmp_path_factory.mktemp("tradeoff")
  code = cli.main(
    ["tradeoff", "--config", _write_config(out), "--temperatures", "1e-4,1e-2", "--quiet", "--out", str(out)]
  )
  assert code == 0
  return out, json.loads((out / "sweep_temperature.json").read_text())


def _write_config(out) -> str:
  path = out / "config.json"
  path.write_text(json.dumps(_logistic_config(out).to_dict()))
  return str(path)


@pytest.mark.slow
def test_certified_regime_never_below_the_empirical_steps(logistic_tradeoff):
  """On the strongly convex model the certificate is a theorem: a forget set that the distribution test
  still tells from its oracles after more steps than its certificate would be a bug. Every set of every
  temperature, both methods; a set not unlearned within the grid needs a certificate beyond the grid."""
  out, result = logistic_tradeoff
  checked = 0
  for row in result["rows"]:
    assert row["lsi_status"] == "certified"
    report = json.loads((out / f"temperature={row['value']:g}" / "report.json").read_text())
    for e in report["forget_sets"]:
      emp = float(e["empirical_steps"])
      bound = e["grid_end"] if not math.isfinite(emp) else emp
      assert float(e["certified_steps"]) >= bound, (row["value"], e["selection"], e["method"])
      checked += 1
  assert checked == 2 * 2 * (4 + 4)  # temperatures x methods x (selections + quantile sets)


@pytest.mark.slow
def test_tradeoff_rows_re_derived_from_the_outputs(logistic_tradeoff):
  out, result = logistic_tradeoff
  assert result["knob"] == "temperature" and result["values"] == [1e-4, 1e-2]
  assert set(result["files"]) == {
    "sweep_temperature.json",
    "sweep_temperature.md",
    "sweep_temperature.png",
    "tradeoff.png",
  }
  for row in result["rows"]:
    point = out / f"temperature={row['value']:g}"
    with open(point / "per_example.csv", newline="") as f:
      k = np.array([float(r["certified_steps"]) for r in csv.DictReader(f)])
    for q, value in row["certified_quantiles"].items():  # the order statistic of rank ceil(q (n - 1))
      assert value == np.sort(k)[math.ceil(float(q) * (k.size - 1))]
    report = json.loads((point / "report.json").read_text())
    assert row["test_accuracy"] == report["training"]["test_accuracy"]
    assert row["worst_case_steps"] == report["privacy"]["worst_case_steps"]
    for q, s in row["forget_sets"].items():
      entries = [e for e in report["forget_sets"] if e["selection"] == quantile_label(float(q))]
      assert {e["method"]: e["empirical_steps"] for e in entries} == s["empirical_steps"]
  md = (out / "sweep_temperature.md").read_text()
  assert (
    "| 0.0001 |" in md and "| 0.01 |" in md and "certificate ≥ empirical" in md and "NO" not in md.split("## Claims")[0]
  )


@pytest.mark.slow
def test_budget_accuracy_is_the_best_accuracy_whose_certificate_fits(logistic_tradeoff):
  _, result = logistic_tradeoff
  rows = result["rows"]
  for budget, allowed in result["comparison"]["accuracy_at_budget"].items():
    fits = [r["test_accuracy"] for r in rows if r["worst_case_steps"] <= float(budget)]
    assert allowed["worst_case"] == (max(fits) if fits else None)
    fits = [r["test_accuracy"] for r in rows if r["certified_quantiles"]["0.5"] <= float(budget)]
    assert allowed["q0.5"] == (max(fits) if fits else None)


def test_sweep_figure_panels_draw_zero_steps_and_refuse_bad_shapes():
  fig = plots.against_setting([1e-5, 1e-4], {"empirical": [0.0, 10.0], "certificate": [900.0, 3000.0]})
  assert fig.axes[0].get_yscale() == "symlog" and fig.axes[0].get_ylim()[0] == 0  # 0 steps stays visible
  with pytest.raises(ValueError, match=r"series\['a'\] must have shape \(2,\)"):
    plots.against_setting([1.0, 2.0], {"a": [1.0, 2.0, 3.0]})
  with pytest.raises(ValueError, match="steps must map at least one"):
    plots.accuracy_against_steps([0.9], {})


def test_cli_sweep_bad_values_is_exit_2(tmp_path, capsys):
  code = cli.main(["sweep", "--config", _write_config(tmp_path), "--knob", "clip_norm", "--values", "1,x", "--quiet"])
  assert code == 2 and "--values must be comma-separated numbers" in capsys.readouterr().err


@pytest.mark.slow
def test_collect_tabulates_the_finished_points_only(logistic_tradeoff, tmp_path):
  out, result = logistic_tradeoff
  again = sweep.tradeoff(_logistic_config(out), [1e-4, 3e-3, 1e-2], collect=True)  # 3e-3 never ran
  assert again["values"] == [1e-4, 1e-2] and again["missing_values"] == [3e-3]
  for a, b in zip(again["rows"], result["rows"]):
    assert a["certified_quantiles"] == b["certified_quantiles"] and a["test_accuracy"] == b["test_accuracy"]
  assert "not finished, left out: 0.003" in (out / "sweep_temperature.md").read_text()
  with pytest.raises(ConfigError, match="no finished study"):
    sweep.sweep(_logistic_config(tmp_path), "clip_norm", [1.0], collect=True)


def test_sweep_figure_draws_retraining_per_setting_when_the_training_length_is_swept():
  """Sweeping T changes what retraining costs: one retraining point per setting, not a line at the largest T."""
  pytest.importorskip("matplotlib")

  def result(knob, retrain):
    rows = [
      {"value": v, "test_accuracy": 0.9, "spearman": {"loss": 0.9}, "certified_quantiles": {"0.5": 800.0 + v},
       "worst_case_steps": 426.0, "retrain_steps": r, "fraction_clip_saturated": 0.0}
      for v, r in zip((250, 1000, 2000), retrain)
    ]  # fmt: skip
    return {"knob": knob, "values": [250, 1000, 2000], "rows": rows, "quantiles": [0.5],
            "dataset": {"name": "digits"}, "model": {"name": "logistic_regression"}}  # fmt: skip

  ax = sweep_outputs.sweep_fig(result("num_steps", (250, 1000, 2000))).axes[2]
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert list(lines["retraining from scratch"].get_ydata()) == [250, 1000, 2000]
  assert not any(label.startswith("retraining:") for label in lines)
  ax = sweep_outputs.sweep_fig(result("clip_norm", (1000, 1000, 1000))).axes[2]
  labels = {line.get_label() for line in ax.get_lines()}
  assert "retraining: 1000 steps" in labels and "retraining from scratch" not in labels
