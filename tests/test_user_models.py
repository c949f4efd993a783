"""A researcher's own model in the study: "package.module:builder" references, the registry, flax NNX."""

from __future__ import annotations

import os
import pathlib
import shutil
import subprocess
import sys

import jax
import jax.numpy as jnp
import numpy as np
import pytest
from flax import nnx

from unlearn_jax import models, per_example
from unlearn_jax import study as study_lib
from unlearn_jax.study import Config, ConfigError, cli

REPO = pathlib.Path(__file__).resolve().parents[1]

_TOML = """
seed = 0
[data]
num_train = 100
num_test = 40
[model]
name = "{model}"
[training]
num_steps = 30
num_seeds = 1
num_checkpoints = 2
[privacy]
lsi_constant = 0.02
[forget_sets]
size = 4
selections = ["privacy_loss:top"]
[unlearning]
methods = ["sgld"]
step_grid = [0, 5]
num_seeds = 4
retrain_steps = 20
[evaluation]
min_power = 0.0  # 4 vs 4 models: the test cannot reject; this checks the plumbing
[metrics]
names = ["loss"]
"""


def _console_script() -> str:
  script = pathlib.Path(sys.executable).with_name("unlearn-jax")
  if not script.exists():
    pytest.skip(f"the console script is not installed beside {sys.executable}")
  return str(script)


@pytest.mark.slow  # a subprocess and a whole (tiny) study: 20 s
def test_cli_runs_a_user_linen_model_given_as_a_reference(tmp_path):
  # the installed console script (not python -m): the reference is found in the current directory
  cfg = tmp_path / "c.toml"
  cfg.write_text(_TOML.format(model="tests.user_models:linen_mlp"))
  out = tmp_path / "out"
  env = {k: v for k, v in os.environ.items() if k != "PYTHONPATH"}
  res = subprocess.run(
    [_console_script(), "run", "--config", str(cfg), "--out", str(out), "--quiet"],
    cwd=REPO,
    env=env,
    capture_output=True,
    text=True,
    timeout=600,
  )
  assert res.returncode == 0, res.stderr
  loaded = study_lib.load(out)
  assert loaded.report["config"]["model"]["name"] == "tests.user_models:linen_mlp"
  hidden = loaded.trained["Dense_1"]["kernel"]  # linen numbers the layers in construction order
  assert hidden.shape == (1, 64, 8)  # (seeds, in, hidden): the user's module, not a built-in one


@pytest.mark.slow
def test_study_runs_an_nnx_model(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  cfg = tmp_path / "c.toml"
  cfg.write_text(_TOML.format(model="tests.user_models:nnx_mlp"))
  out = tmp_path / "out"
  code = cli.main(["run", "--config", str(cfg), "--out", str(out), "--quiet"])
  assert code == 0, capsys.readouterr().err
  loaded = study_lib.load(out)
  assert sorted(loaded.trained) == ["hidden", "out"]
  assert loaded.trained["hidden"]["kernel"].shape == (1, 64, 8)
  assert np.isfinite(loaded.per_example["privacy_loss"]).all()
  unlearned = loaded.forget_sets[0]["unlearned"]["sgld"]
  assert unlearned["out"]["bias"].shape == (4, 10)


def test_a_registered_model_runs_through_the_study_config(tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  monkeypatch.setitem(models.MODELS, "my_net", models.resolve_builder("tests.user_models:nnx_mlp"))
  raw = {"out_dir": str(tmp_path), "model": {"name": "my_net", "kwargs": {"hidden": 4}}}
  cfg = Config.from_dict(raw)
  assert models.get_model(cfg.model.name, 10, **cfg.model.kwargs).name == "nnx_mlp"


@pytest.mark.parametrize(
  "name,needle",
  [
    ("tests.no_such_module:net", "not importable"),
    ("tests.user_models:no_such_builder", "has no attribute 'no_such_builder'"),
    ("tests.user_models:NOT_CALLABLE", "not a builder"),
    ("tests.user_models", "is not registered"),
    ("not a module:net", "must have the form"),
  ],
)
def test_unusable_references_are_config_errors_naming_the_key(name, needle, tmp_path, monkeypatch):
  monkeypatch.chdir(REPO)
  with pytest.raises(ConfigError, match="model.name") as e:
    Config.from_dict({"out_dir": str(tmp_path), "model": {"name": name}})
  assert needle in str(e.value)


def test_cli_exit_2_on_a_reference_that_does_not_import(tmp_path, capsys, monkeypatch):
  monkeypatch.chdir(REPO)
  cfg = tmp_path / "c.toml"
  cfg.write_text(_TOML.format(model="tests.no_such_module:net"))
  code = cli.main(["run", "--config", str(cfg), "--out", str(tmp_path / "out"), "--quiet"])
  err = capsys.readouterr().err
  assert code == cli.EXIT_CONFIG and "model.name" in err and "not importable" in err
  assert "Traceback" not in err


def test_builders_that_do_not_give_a_model_are_refused():
  with pytest.raises(TypeError, match="returned a str"):
    models.get_model("tests.user_models:returns_a_string", 10)
  with pytest.raises(ValueError, match="state other than nnx.Param"):
    models.get_model("tests.user_models:nnx_with_dropout", 10)
  with pytest.raises(TypeError, match="not a module instance"):
    models.from_nnx(nnx.Linear(2, 2, rngs=nnx.Rngs(0)))


def test_nnx_init_draws_per_key_and_apply_is_pure():
  model = models.get_model("tests.user_models:nnx_mlp", 10)
  x = jnp.ones(64)
  a, b = model.init_fn(jax.random.key(0), x), model.init_fn(jax.random.key(1), x)
  assert not np.allclose(a["hidden"]["kernel"], b["hidden"]["kernel"])
  np.testing.assert_array_equal(a["hidden"]["kernel"], model.init_fn(jax.random.key(0), x)["hidden"]["kernel"])
  assert jax.jit(model.apply_fn)(a, x).shape == (10,)
  # the same factory and module layout give equal functions: one compiled program serves both
  assert model.apply_fn == models.get_model("tests.user_models:nnx_mlp", 10).apply_fn


@pytest.mark.parametrize("builder,shape", [("nnx_mlp", (64,)), ("nnx_cnn", (8, 8, 1))])
def test_ghost_norms_equal_vmap_on_nnx_models(builder, shape):
  with jax.enable_x64(True):
    model = models.get_model(f"tests.user_models:{builder}", 10)
    loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
    x = jax.random.normal(jax.random.key(2), (12, *shape), jnp.float64)
    y = jnp.arange(12) % 10
    params = jax.tree.map(lambda p: p.astype(jnp.float64), model.init_fn(jax.random.key(3), x[0]))
    ghost = per_example.per_example_grad_norms(loss_fn, params, (x, y), method="ghost")
    vmapped = per_example.per_example_grad_norms(loss_fn, params, (x, y), method="vmap")
    np.testing.assert_allclose(np.asarray(ghost), np.asarray(vmapped), rtol=1e-10)


def test_params_that_cannot_be_saved_are_refused_before_training(tmp_path, monkeypatch):
  class Opaque:  # not a pytree container the saved format restores
    pass

  def builder(num_classes):
    base = models.mlp((4,), num_classes)
    return models.Model(lambda k, x: [base.init_fn(k, x), Opaque()], lambda p, x: base.apply_fn(p[0], x), "odd")

  monkeypatch.setitem(models.MODELS, "odd", builder)
  cfg = Config.from_dict(
    {
      "out_dir": str(tmp_path),
      "data": {"num_train": 60, "num_test": 20},
      "model": {"name": "odd"},
      "privacy": {"lsi_constant": 0.02},
    }
  )
  with pytest.raises(ConfigError, match="Opaque"):
    study_lib.run(cfg)
  shutil.rmtree(tmp_path, ignore_errors=True)
