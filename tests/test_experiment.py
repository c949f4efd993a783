"""Tests of unlearn_jax.experiment: the typed config (strict validation), the report writers, and the
whole pipeline on a shrunk config checked against independent recomputations."""

from __future__ import annotations

import csv
import json
import math
import pathlib

import numpy as np
import pytest

from unlearn_jax import experiment
from unlearn_jax.experiment import Config, ConfigError

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


@pytest.mark.parametrize("name", ["demo.toml", "mnist1d.toml", "cifar10_resnet18.toml", "svhn_resnet18.toml"])
def test_shipped_configs_parse(name):
  cfg = Config.from_file(REPO / "configs" / name)
  assert isinstance(cfg, Config)


def test_json_and_toml_give_the_same_config(tmp_path):
  raw = {"seed": 4, "training": {"step_size": 0.25, "num_steps": 10}, "privacy": {"orders": [2, 8], "alpha": 2}}
  (tmp_path / "c.json").write_text(json.dumps(raw))
  (tmp_path / "c.toml").write_text("seed = 4\n[training]\nstep_size = 0.25\nnum_steps = 10\n"
                                   "[privacy]\norders = [2, 8]\nalpha = 2\n")
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
    ({"training": {"temperature": 0}}, ["'training.temperature'", "positive"]),
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
  import jax.numpy as jnp
  rep = {"a": jnp.array([1.0, jnp.inf]), "b": np.float32(0.5), "c": np.int64(3), "d": (np.nan, True)}
  path = experiment.write_report_json(tmp_path / "r.json", rep)
  assert json.loads(path.read_text()) == {"a": [1.0, "inf"], "b": 0.5, "c": 3, "d": ["nan", True]}
