"""Tests of unlearn_jax.experiment: the typed config (strict validation), the report writers, and the
whole pipeline on a shrunk config checked against independent recomputations."""

from __future__ import annotations

import csv
import json
import math
import pathlib
import shutil

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from scipy import stats

from unlearn_jax import data
from unlearn_jax import evaluate as ev
from unlearn_jax import study as experiment
from unlearn_jax.runtime import checkpoint
from unlearn_jax.study import Config, ConfigError, stages, unlearning
from unlearn_jax.study import report as report_lib

REPO = pathlib.Path(__file__).resolve().parents[1]


# ----------------------------------------------------------------------------------------------------
# Config
# ----------------------------------------------------------------------------------------------------


def test_defaults_and_round_trip():
  cfg = Config()
  assert Config.from_dict(cfg.to_dict()) == cfg
  cfg2 = Config.from_dict({"training": {"clip_norm": "inf", "projection_radius": 3}})
  assert math.isinf(cfg2.training.clip_norm) and cfg2.training.projection_radius == 3.0
  assert Config.from_dict(json.loads(json.dumps(cfg2.to_dict()))) == cfg2


def test_demo_toml_mirrors_demo_config():
  assert Config.from_file(REPO / "configs" / "demo.toml") == experiment.demo_config()


@pytest.mark.parametrize("name", sorted(p.name for p in (REPO / "configs").glob("*.toml")))
def test_shipped_configs_parse(name):
  cfg = Config.from_file(REPO / "configs" / name)
  assert isinstance(cfg, Config)


def test_json_and_toml_give_the_same_config(tmp_path):
  raw = {"seed": 4, "training": {"step_size": 0.25, "num_steps": 10}, "privacy": {"orders": [2, 8], "alpha": 2}}
  (tmp_path / "c.json").write_text(json.dumps(raw))
  (tmp_path / "c.toml").write_text(
    "seed = 4\n[training]\nstep_size = 0.25\nnum_steps = 10\n[privacy]\norders = [2, 8]\nalpha = 2\n"
  )
  a, b = Config.from_file(tmp_path / "c.json"), Config.from_file(tmp_path / "c.toml")
  assert a == b and a.privacy.orders == (2.0, 8.0) and a.privacy.alpha == 2.0


BAD = [
  # unknown keys: named, with the allowed keys and the closest suggestion
  ({"trainig": {}}, ["'trainig'", "did you mean 'training'", "Allowed keys"]),
  ({"training": {"stepsize": 0.1}}, ["'training.stepsize'", "did you mean 'step_size'"]),
  ({"privacy": {"order": [2.0]}}, ["'privacy.order'", "did you mean 'orders'"]),
  # wrong types: key, value and expected type
  ({"training": {"step_size": "fast"}}, ["'training.step_size'", "'fast'", "number"]),
  ({"training": {"num_steps": 1.5}}, ["'training.num_steps'", "1.5", "integer"]),
  ({"training": {"num_steps": True}}, ["'training.num_steps'", "True", "integer"]),
  ({"evaluation": {"membership": "yes"}}, ["'evaluation.membership'", "'yes'", "boolean"]),
  ({"privacy": {"orders": 2.0}}, ["'privacy.orders'", "list"]),
  ({"privacy": {"orders": [2.0, "x"]}}, ["'privacy.orders[1]'", "'x'"]),
  ({"training": 3}, ["'training'", "table"]),
  # choices, with a suggestion
  ({"training": {"mode": "ful_batch"}}, ["'training.mode'", "'ful_batch'", "full_batch", "did you mean"]),
  ({"model": {"name": "resnet"}}, ["'model.name'", "resnet18"]),
  ({"unlearning": {"methods": ["sgld", "retrain"]}}, ["'unlearning.methods'", "'retrain'", "l1_sparse"]),
  ({"forget_sets": {"selections": ["privacy:top"]}}, ["'forget_sets.selections'", "'privacy:top'"]),
  # ranges
  ({"training": {"step_size": -0.1}}, ["'training.step_size'", "-0.1", "positive"]),
  ({"training": {"temperature": -1e-5}}, ["'training.temperature'", "non-negative"]),
  ({"training": {"temperature": 0}}, ["'training.accounting_temperature'", "when temperature = 0"]),
  ({"training": {"accounting_temperature": 1e-5}}, ["'training.accounting_temperature'", "absent when"]),
  ({"training": {"clip_norm": 0.0}}, ["'training.clip_norm'"]),
  ({"training": {"mode": "poisson"}}, ["'training.sampling_rate'", "(0, 1]"]),
  ({"training": {"mode": "poisson", "sampling_rate": 1.5}}, ["'training.sampling_rate'", "1.5"]),
  ({"training": {"sampling_rate": 0.1}}, ["'training.sampling_rate'", "mode"]),
  ({"privacy": {"orders": [1.0, 8.0]}}, ["'privacy.orders'", "> 1"]),
  ({"privacy": {"alpha": 3.0}}, ["'privacy.orders'", "4 * alpha = 12.0"]),
  ({"privacy": {"epsilon": 0.1, "e2": 0.2}}, ["'privacy.epsilon'", "e2"]),
  ({"privacy": {"filter_budget": 1.0}}, ["filter_order"]),
  ({"evaluation": {"delta": 1.0}}, ["'evaluation.delta'", "(0, 1)"]),
  ({"unlearning": {"step_grid": [0, 50, 20]}}, ["'unlearning.step_grid'", "increasing"]),
  ({"unlearning": {"num_seeds": 2}}, ["'unlearning.num_seeds'", ">= 4"]),
  ({"forget_sets": {"size": 0}}, ["'forget_sets.size'"]),
  ({"metrics": {"names": ["loss"]}}, ["'forget_sets.selections'", "'el2n:top'", "metrics.names"]),
  ({"seed": -1}, ["'seed'", "-1"]),
  ({"devices": 0}, ["'devices'"]),
]


@pytest.mark.parametrize("raw,needles", BAD)
def test_bad_configs_name_the_key(raw, needles):
  with pytest.raises(ConfigError) as info:
    Config.from_dict(raw)
  for needle in needles:
    assert needle in str(info.value), (needle, str(info.value))


def test_bad_files(tmp_path):
  with pytest.raises(ConfigError, match="does not exist"):
    Config.from_file(tmp_path / "nope.toml")
  (tmp_path / "c.yaml").write_text("a: 1")
  with pytest.raises(ConfigError, match=r"\.toml or \.json"):
    Config.from_file(tmp_path / "c.yaml")
  (tmp_path / "c.toml").write_text("[training\nstep_size = 1")
  with pytest.raises(ConfigError, match="not valid TOML"):
    Config.from_file(tmp_path / "c.toml")
  (tmp_path / "c.json").write_text("[1, 2]")
  with pytest.raises(ConfigError, match="table/object"):
    Config.from_file(tmp_path / "c.json")


def test_replace_validates_again():
  cfg = Config().replace(seed=7, training__num_steps=11, data__data_dir="/x")
  assert (cfg.seed, cfg.training.num_steps, cfg.data.data_dir) == (7, 11, "/x")
  with pytest.raises(ConfigError, match="'training.step_size'"):
    Config().replace(training__step_size=-1.0)
  with pytest.raises(ConfigError, match="did you mean 'training'"):
    Config().replace(trainig__step_size=1.0)


# ----------------------------------------------------------------------------------------------------
# Report writers
# ----------------------------------------------------------------------------------------------------


def test_per_example_csv_round_trips_floats(tmp_path):
  rng = np.random.default_rng(0)
  p = rng.lognormal(size=7).astype(np.float32)
  k = np.ceil(rng.uniform(0, 1e4, size=7))
  k[3] = np.inf
  m = {"loss": rng.normal(size=7), "memorization": np.array([0.1, np.nan, 0, 1, 0.5, 0.25, -0.5])}
  path = experiment.write_per_example_csv(tmp_path / "e.csv", np.arange(7) % 3, p, k, m)
  rows = list(csv.DictReader(path.open()))
  assert list(rows[0]) == ["index", "label", "privacy_loss", "certified_steps", "loss", "memorization"]
  np.testing.assert_array_equal([float(r["privacy_loss"]) for r in rows], p.astype(np.float64))
  np.testing.assert_array_equal([float(r["certified_steps"]) for r in rows], k)
  np.testing.assert_array_equal([float(r["loss"]) for r in rows], m["loss"])
  assert rows[1]["memorization"] == "nan" and rows[3]["certified_steps"] == "inf"
  with pytest.raises(ValueError, match="loss must have shape"):
    experiment.write_per_example_csv(tmp_path / "f.csv", [0, 1], [1.0, 2.0], [1, 2], {"loss": [1.0]})


def test_report_json_is_strict_json(tmp_path):

  rep = {"a": jnp.array([1.0, jnp.inf]), "b": np.float32(0.5), "c": np.int64(3), "d": (np.nan, True)}
  path = experiment.write_report_json(tmp_path / "r.json", rep)
  assert json.loads(path.read_text()) == {"a": [1.0, "inf"], "b": 0.5, "c": 3, "d": ["nan", True]}


# ----------------------------------------------------------------------------------------------------
# The pipeline end to end on a shrunk config
# ----------------------------------------------------------------------------------------------------


def _tiny(out_dir, **overrides):
  raw = {
    "out_dir": str(out_dir),
    "seed": 1,
    "data": {"num_train": 150, "num_test": 60},
    "model": {"kwargs": {"hidden_sizes": [16]}},
    "training": {"num_steps": 60, "num_seeds": 2, "num_checkpoints": 3, "step_size": 0.5},
    "privacy": {"lsi_constant": 0.02},
    "forget_sets": {"size": 5, "selections": ["privacy_loss:top", "random", "el2n:top"]},
    "unlearning": {"methods": ["sgld", "sgd"], "step_grid": [0, 10, 30], "num_seeds": 4, "retrain_steps": 60},
    "metrics": {"names": ["loss", "el2n", "memorization"], "memorization_models": 4},
    "evaluation": {"min_power": 0.0},  # 4 vs 4 models: an underpowered test, enough to check the plumbing
  }
  for key, value in overrides.items():
    raw.setdefault(key, {}).update(value) if isinstance(value, dict) else raw.__setitem__(key, value)
  return Config.from_dict(raw)


IN_MEMORY = {}  # the parameter trees the tiny run held at its end, captured from its stages


@pytest.fixture(scope="module")
def tiny_run(tmp_path_factory):
  out = tmp_path_factory.mktemp("tiny")
  cfg = _tiny(out)
  train, unlearn = stages.train_with_ledger, unlearning.unlearn_forget_sets

  def capture_train(*args, **kwargs):
    trained = train(*args, **kwargs)
    IN_MEMORY["trained"] = jax.device_get(trained.params)
    return trained

  def capture_unlearn(*args, **kwargs):
    sets, start = unlearn(*args, **kwargs)
    IN_MEMORY["sets"] = [(r.oracle.params, {m.method: m.params for m in r.methods}) for r in sets]
    return sets, start

  with pytest.MonkeyPatch.context() as mp:
    mp.setattr(stages, "train_with_ledger", capture_train)
    mp.setattr(unlearning, "unlearn_forget_sets", capture_unlearn)
    report = experiment.run(cfg)
  return cfg, out, report


def _bitwise_equal(a, b):
  assert jax.tree.structure(a) == jax.tree.structure(b), (jax.tree.structure(a), jax.tree.structure(b))
  for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)):
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


@pytest.mark.slow
def test_load_restores_every_parameter_tree_bitwise(tiny_run):
  cfg, out, report = tiny_run
  loaded = experiment.load(out)
  assert loaded.report == report
  _bitwise_equal(loaded.trained, IN_MEMORY["trained"])
  assert jax.tree.leaves(loaded.trained)[0].shape[0] == cfg.training.num_seeds
  rows = {entry["selection"]: entry for entry in report["forget_sets"]}  # one row per set and method
  assert len(loaded.forget_sets) == len(rows) == len(IN_MEMORY["sets"])
  for fs, rep, (oracles, unlearned) in zip(loaded.forget_sets, rows.values(), IN_MEMORY["sets"]):
    assert fs["label"] == rep["selection"]
    np.testing.assert_array_equal(fs["indices"], rep["indices"])
    _bitwise_equal(fs["oracles"], oracles)
    _bitwise_equal(fs["unlearned"], unlearned)
    assert sorted(fs["unlearned"]) == sorted(cfg.unlearning.methods)
    assert jax.tree.leaves(fs["oracles"])[0].shape[0] == cfg.unlearning.num_seeds
  cols = _csv_columns(out / "per_example.csv")
  assert sorted(loaded.per_example) == sorted(cols)
  for name, col in cols.items():
    np.testing.assert_array_equal(loaded.per_example[name], col)
  assert loaded.per_example["label"].dtype == np.int64


@pytest.mark.slow
def test_load_refuses_an_unfinished_run_and_a_tampered_file(tiny_run, tmp_path):
  _, out, _ = tiny_run
  with pytest.raises(FileNotFoundError, match="report.json"):
    experiment.load(tmp_path)
  copy = tmp_path / "copy"
  shutil.copytree(out, copy, ignore=shutil.ignore_patterns("checkpoints"))
  blob = bytearray((copy / "params" / "forget_set_0.msgpack").read_bytes())
  blob[-3] ^= 0xFF
  (copy / "params" / "forget_set_0.msgpack").write_bytes(bytes(blob))
  with pytest.raises(checkpoint.CheckpointError, match="forget_set_0"):
    experiment.load(copy)


def _csv_columns(path):
  rows = list(csv.DictReader(path.open()))
  return {k: np.array([float(r[k]) for r in rows]) for k in rows[0]}


@pytest.mark.slow
def test_report_has_the_issue_keys(tiny_run):
  cfg, out, report = tiny_run
  on_disk = json.loads((out / "report.json").read_text())
  assert on_disk == report
  for key in ("config", "dataset", "training", "privacy", "forget_sets", "correlations"):
    assert key in report
  assert report["dataset"]["n_train"] == 150 and report["dataset"]["n_test"] == 60
  assert report["training"]["steps"] == 60
  assert 0.0 <= report["training"]["test_accuracy"] <= 1.0
  for key in ("orders", "alpha", "worst_case_loss", "certified"):
    assert key in report["privacy"]
  assert report["privacy"]["certified"] is False  # no individual filter: the realized P is an estimate
  assert "assumed C_LSI" in report["privacy"]["lsi_note"]
  assert "stationarity" in report["privacy"]["stationarity"]
  assert len(report["forget_sets"]) == 3 * 2
  for fs in report["forget_sets"]:
    for key in (
      "selection",
      "size",
      "method",
      "certified_steps",
      "worst_case_steps",
      "empirical_steps",
      "loss_barrier",
      "membership_epsilon",
    ):
      assert key in fs, key
  assert set(report["correlations"]) == {"loss", "el2n", "memorization"}
  for name in (
    "report.md",
    "per_example.csv",
    "privacy_loss_histogram.png",
    "certified_vs_worst_case.png",
    "correlation_heatmap.png",
    "membership_vs_certified.png",
    "loss_barrier_sgld.png",
  ):
    assert (out / name).exists(), name
  md = (out / "report.md").read_text()
  assert "![privacy_loss_histogram](privacy_loss_histogram.png)" in md and "(a)" in md and "(d)" in md


@pytest.mark.slow
def test_csv_and_certificates_match_independent_formulas(tiny_run):
  cfg, out, report = tiny_run
  cols = _csv_columns(out / "per_example.csv")
  assert list(cols)[:4] == ["index", "label", "privacy_loss", "certified_steps"]
  assert list(cols)[4:] == ["loss", "el2n", "memorization"]
  np.testing.assert_array_equal(cols["index"], np.arange(150))
  # THEORY §4 k*(x) in float64 from the CSV's P(x, 4α) (ties at the ceiling may differ by one step).
  a, eps, lsi = cfg.privacy.alpha, cfg.privacy.epsilon, cfg.privacy.lsi_constant
  eta, tau = cfg.training.step_size, cfg.training.temperature
  p = cols["privacy_loss"]
  inner = (a - 0.5) / (a - 1) * ((4 * a - 1) / (4 * a - 2)) * p / eps
  k_ref = np.where(inner > 1, np.ceil(a * lsi / (tau * eta) * np.log(np.maximum(inner, 1))), 0.0)
  assert np.max(np.abs(k_ref - cols["certified_steps"])) <= 1
  # Chien et al.'s K for one point at order α, m = 2τ/C_LSI, S = 1, clip C, n.
  m = 2 * tau / lsi
  eps0 = 4 * a * cfg.training.clip_norm**2 / (m * tau * 150**2)
  k_worst = max(0.0, np.ceil(a / (m * eta) * np.log(eps0 / eps)))
  assert report["privacy"]["worst_case_steps"] == pytest.approx(k_worst, abs=1)
  assert report["privacy"]["fraction_certified_below_worst_case"] == pytest.approx(
    np.mean(cols["certified_steps"] < report["privacy"]["worst_case_steps"])
  )


@pytest.mark.slow
def test_correlations_match_scipy(tiny_run):

  _, out, report = tiny_run
  cols = _csv_columns(out / "per_example.csv")
  for name in ("loss", "el2n", "memorization"):
    ok = ~np.isnan(cols[name])
    ref = stats.spearmanr(cols["privacy_loss"][ok], cols[name][ok]).statistic
    assert report["correlations"][name] == pytest.approx(ref, abs=1e-5), name


@pytest.mark.slow
def test_forget_sets_are_the_selected_examples(tiny_run):
  _, out, report = tiny_run
  cols = _csv_columns(out / "per_example.csv")
  top = [fs for fs in report["forget_sets"] if fs["selection"] == "privacy_loss:top"][0]
  expected = np.sort(np.argsort(-cols["privacy_loss"], kind="stable")[:5])
  np.testing.assert_array_equal(np.sort(top["indices"]), expected)
  el2n = [fs for fs in report["forget_sets"] if fs["selection"] == "el2n:top"][0]
  np.testing.assert_array_equal(np.sort(el2n["indices"]), np.sort(np.argsort(-cols["el2n"], kind="stable")[:5]))
  assert top["mean_privacy_loss"] == pytest.approx(np.mean(cols["privacy_loss"][expected]), rel=1e-6)


@pytest.mark.slow
def test_loss_barrier_recomputed_from_saved_params(tiny_run):
  """Recompute the original-vs-oracle barrier of forget set 0 in float64 NumPy from the saved params."""

  cfg, out, report = tiny_run
  ds = data.load_digits(seed=cfg.seed, n_train=150, n_test=60)
  fs = report["forget_sets"][0]
  idx = np.asarray(fs["indices"])
  xf, yf = np.asarray(ds.x_train, np.float64)[idx], np.asarray(ds.y_train)[idx]
  loaded = experiment.load(out)  # the restored pytrees: trained chains (S, ...) and oracles (R, ...)
  R = cfg.unlearning.num_seeds

  def seed_params(tree, r):
    return jax.tree.map(lambda leaf: np.asarray(leaf[r], np.float64), tree)

  def mean_loss(params):
    # The MLP forward pass written out in NumPy: Dense -> ReLU -> Dense (flax Dense kernels are (in, out)).
    # hidden layers "dense_0", "dense_1", ... then the output layer "head" (models.mlp's names)
    hidden = sorted((k for k in params if k != "head"), key=lambda name: int(name.rsplit("_", 1)[-1]))
    layers = [params[k] for k in hidden] + [params["head"]]
    h = xf
    for j, layer in enumerate(layers):
      h = h @ layer["kernel"] + layer["bias"]
      if j < len(layers) - 1:
        h = np.maximum(h, 0)
    logz = np.log(np.sum(np.exp(h - h.max(1, keepdims=True)), 1)) + h.max(1)
    return float(np.mean(logz - h[np.arange(len(yf)), yf]))

  lambdas = np.linspace(0, 1, cfg.evaluation.barrier_points)
  barriers = []
  for r in range(R):
    # unlearning chain r starts from trained chain r mod S
    pa = seed_params(loaded.trained, r % cfg.training.num_seeds)
    pb = seed_params(loaded.forget_sets[0]["oracles"], r)
    la, lb = mean_loss(pa), mean_loss(pb)
    curve = [
      mean_loss(jax.tree.map(lambda u, v: (1 - t) * u + t * v, pa, pb)) - ((1 - t) * la + t * lb) for t in lambdas
    ]
    barriers.append(max(curve))
  assert fs["loss_barrier"] == pytest.approx(np.mean(barriers), rel=1e-3, abs=1e-5)


@pytest.mark.slow
def test_empirical_steps_consistent_with_distances(tiny_run):
  _, _, report = tiny_run
  for fs in report["forget_sets"]:
    d = np.array(fs["median_distance"], dtype=float)
    passed = d <= fs["floor_threshold"]
    grid = np.array(fs["step_grid"])
    # the first grid step from which every later one passes (a pass followed by a failure does not count)
    stays = [i for i in range(grid.size) if passed[i:].all()]
    expected = grid[stays[0]] if stays else "inf"
    assert fs["empirical_steps"] == expected
    mem = fs["membership_epsilon"]
    # The point estimate is capped by log(N (1 - delta)) with N = 4 models; the reported lower bound
    # (simultaneous Clopper-Pearson) by the resolvable cap, which is 0 for 4 models.
    point, lower = mem["point_estimate"], mem["lower_bound"]
    assert 0 <= point["median"] <= point["max"] <= math.log(4) + 1e-6
    assert mem["num_models"] == 4 and mem["resolvable_cap"] == 0.0
    assert lower["median"] == lower["max"] == 0.0


@pytest.mark.slow
def test_same_config_same_bytes(tiny_run, tmp_path):
  cfg, out, report = tiny_run
  again = experiment.run(cfg.replace(out_dir=str(tmp_path / "again")))
  assert (tmp_path / "again" / "per_example.csv").read_bytes() == (out / "per_example.csv").read_bytes()
  strip = lambda text: "\n".join(line for line in text.splitlines() if '"created"' not in line)  # noqa: E731
  assert strip((tmp_path / "again" / "report.json").read_text()) == strip((out / "report.json").read_text())
  del again


def test_run_refuses_locked_or_unwritable_dir(tmp_path):

  with checkpoint.RunLock(tmp_path):
    with pytest.raises(experiment.OutputDirError, match=str(tmp_path)):
      experiment.run(_tiny(tmp_path))
  (tmp_path / "f").write_text("x")
  with pytest.raises(experiment.OutputDirError, match="cannot be created or written"):
    experiment.run(_tiny(tmp_path / "f" / "sub"))


@pytest.mark.slow
def test_claim_e_is_the_rank_correlation_of_privacy_loss_and_excess_barrier(tiny_run):
  _, out, report = tiny_run
  e = report["findings"]["e_barrier_grows_with_privacy_loss"]
  assert set(e) == {"sgld", "sgd"}
  for method, claim in e.items():
    rows = [fs for fs in report["forget_sets"] if fs["method"] == method]
    p = [fs["mean_privacy_loss"] for fs in rows]
    excess = [fs["loss_barrier"] - fs["oracle_barrier"] for fs in rows]
    want = stats.spearmanr(p, excess).statistic  # scipy, independent of the library's ranks
    assert claim["num_sets"] == len(rows) == 3
    assert abs(claim["spearman_privacy_loss_vs_excess_barrier"] - want) < 1e-9
    assert claim["verdict"] == ("holds" if want > 0 else "does not hold")
  assert "(e) Higher privacy loss" in (out / "report.md").read_text()


def test_a_config_whose_test_cannot_reject_is_refused_before_training(tmp_path, monkeypatch):
  def never(*a, **k):
    raise AssertionError("training started")

  monkeypatch.setattr(stages, "train_with_ledger", never)
  with pytest.raises(ConfigError, match=r"'unlearning.num_seeds' = 4: .* only 0.0% .*evaluation.min_power = 0.5"):
    experiment.run(_tiny(tmp_path, evaluation={"min_power": 0.5}))


def test_membership_of_identical_laws_is_zero_in_the_reported_form(tmp_path):
  # The report's membership entry for 32 vs 32 models (the Fashion-MNIST config's R) whose scores come
  # from one law: the reported number (the lower bound) is 0 for the set, and no example lies above a
  # certificate; the point estimate alone would have said ≈ log 4.
  cfg = _tiny(tmp_path, unlearning={"num_seeds": 32})
  a, b = jax.random.normal(jax.random.key(7), (2, 32, 50))
  lower = np.asarray(ev.membership_lower_bound(a, b, delta=cfg.evaluation.delta), np.float64)
  point = np.asarray(ev.membership_epsilon(a, b, delta=cfg.evaluation.delta), np.float64)
  m = unlearning.MethodResult("sgld", 0.0, np.zeros(2), 0.0, np.zeros(2), 0.0, 1.0, lower, point, 0.5, None, None)
  entry = report_lib._membership_entry(cfg, m)
  assert entry["lower_bound"]["median"] == 0.0 and entry["lower_bound"]["max"] <= entry["resolvable_cap"]
  assert np.mean(lower > 0) <= 0.05  # the simultaneous bound is wrong for at most 5% of examples
  assert entry["above_certified_epsilon"] == int(np.sum(lower > 0.5))
  assert entry["point_estimate"]["median"] > 1.0 and "not a bound" in entry["note"]


@pytest.mark.slow
def test_report_states_power_baseline_saturation_and_intervals(tiny_run):
  cfg, out, report = tiny_run
  power = report["unlearned_test"]
  assert power["num_seeds_per_side"] == 4 and power["power_at_2_sd"] == 0.0  # R = 4: the test cannot reject
  base = report["training"]["non_private_baseline"]
  assert 0.0 <= base["test_accuracy"] <= 1.0 and base["steps"] == cfg.training.num_steps
  assert base["private_minus_baseline"] == pytest.approx(report["training"]["test_accuracy"] - base["test_accuracy"])
  sat = report["privacy"]["saturation"]
  cols = _csv_columns(out / "per_example.csv")
  p = cols["privacy_loss"]
  assert sat["within_2_percent_of_max"] == int(np.sum(p >= 0.98 * p.max()))  # counted independently
  a = report["findings"]["a_privacy_loss_correlates_with_difficulty"]
  for name, iv in a["intervals"].items():
    assert iv["low"] <= a["spearman_oriented"][name] <= iv["high"]
    spread = a["spread_over_training_seeds"][name]
    assert spread["num_seeds"] == cfg.training.num_seeds and spread["min"] <= spread["max"]
  ret = report["privacy"]["retraining"]
  k = cols["certified_steps"]
  assert ret["fraction_of_certificates_costlier_than_retraining"] == pytest.approx(
    np.mean(k > cfg.unlearning.retrain_steps)
  )
  tau, eta, lsi, alpha = cfg.training.temperature, cfg.training.step_size, cfg.privacy.lsi_constant, cfg.privacy.alpha
  closed = math.exp(-2 * tau * eta * cfg.training.num_steps / (2 * alpha * lsi))  # theory §4 at order 2α
  assert ret["training_contraction_factor"] == pytest.approx(closed, rel=1e-5)
  assert "does not support the E₁ = E₂ = 0" in ret["stationarity_note"]  # 60 steps remove < 1% of it
  d = report["findings"]["d_certified_below_worst_case"]
  frac, (low, high) = d["fraction_below"], d["interval"]
  assert low <= frac <= high
  half = 1.96 * math.sqrt(max(frac * (1 - frac), 1 / len(k)) / len(k))  # normal approximation, independent
  assert high - low == pytest.approx(2 * half, rel=0.5)
  for row in report["findings"]["c_privacy_loss_sets_at_least_as_hard_as_metric_sets"].values():
    for v in row["vs"].values():
      dd = v["distance_difference"]
      assert dd["low"] <= dd["high"] and dd["includes_zero"] == (dd["low"] <= 0 <= dd["high"])
  md = (out / "report.md").read_text()
  assert "Power of the test" in md and "Non-private baseline" in md and "Saturation" in md and "retraining" in md


@pytest.mark.slow  # a whole (tiny) study with a second clip norm and several sets per bin: ~40 s
def test_second_clip_norm_and_sets_per_bin(tmp_path):
  cfg = _tiny(
    tmp_path,
    privacy={"second_clip_norm": 50.0},
    forget_sets={
      "selections": ["privacy_loss:top", "el2n:top"],
      "privacy_loss_bins": 2,
      "sets_per_bin": 2,
      "metric_bins": ["el2n"],
    },
  )
  report = experiment.run(cfg)
  labels = list(dict.fromkeys(e["selection"] for e in report["forget_sets"]))
  assert labels == [
    "privacy_loss:top",
    "el2n:top",
    "privacy_loss@clip2:top",
    "privacy_loss:bin0/2#0",
    "privacy_loss:bin0/2#1",
    "privacy_loss:bin1/2#0",
    "privacy_loss:bin1/2#1",
    "el2n:bin0/2#0",
    "el2n:bin0/2#1",
    "el2n:bin1/2#0",
    "el2n:bin1/2#1",
  ]
  sc = report["second_clip"]
  assert sc["clip_norm"] == 50.0 and -1.0 <= sc["spearman_with_main_privacy_loss"] <= 1.0
  f = report["findings"]
  assert set(f["c_at_second_clip_norm"]) == {"sgld", "sgd"}
  curve = f["b_over_privacy_loss_bins"]["sgld"]
  assert curve["num_sets"] == 4 and all(len(b["steps"]) == 2 for b in curve["bins"].values())
  el2n_curve = f["steps_over_metric_bins"]["el2n"]["sgd"]
  assert el2n_curve["num_sets"] == 4 and sorted(el2n_curve["bins"]) == ["el2n:bin0/2", "el2n:bin1/2"]
  # the el2n bins hold the examples of each half by EL2N (bin 1: the higher half)
  cols = _csv_columns(tmp_path / "per_example.csv")
  median = np.median(cols["el2n"])
  for e in report["forget_sets"]:
    if e["selection"].startswith("el2n:bin1"):
      assert np.all(cols["el2n"][e["indices"]] >= median)
  # the loaded parameters hold every set, the second-clip one included
  assert [fs["label"] for fs in experiment.load(tmp_path).forget_sets] == labels
