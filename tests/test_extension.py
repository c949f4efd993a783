"""Adding an unlearning method is one function and one registry entry: a toy method (gradient ascent on
the forget set, then fine-tuning on the retain set) registered here runs through ``runtime.unlearn`` and
the study config without any other change to the library."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import algorithms, models, runtime, study
from unlearn_jax.algorithms import Algorithm, MethodSpec


def ascent_then_descent(loss_fn, spec: MethodSpec):
  """``ascent_steps`` steps of gradient ascent on the rows ``data_mask`` leaves out, then descent."""
  ascent_steps = int(spec.options.get("ascent_steps", 2))
  base = algorithms.sgld(loss_fn, mode="full_batch")

  def step(state, data, key, step_size, temperature=0.0, *, data_mask=None, ascent_steps, **hyper):
    ascending = state.step < ascent_steps
    mask = jnp.where(ascending, 1.0 - data_mask, data_mask)
    new, info = base.step(state, data, key, step_size, 0.0, data_mask=mask, **hyper)
    sign = jnp.where(ascending, -1.0, 1.0)  # at τ = 0 the step is −η·ĝ: reflect it to climb
    params = jax.tree.map(lambda old, p: old + sign * (p - old), state.params, new.params)
    return new._replace(params=params), info

  algorithm = Algorithm(
    init=base.init,
    step=step,
    name="ascent_then_descent",
    settings=(("ascent_steps", ascent_steps),),
    callables=(loss_fn,),
  )
  return algorithm, {"step_size": spec.step_size, "ascent_steps": float(ascent_steps)}


@pytest.fixture
def registered():
  algorithms.register_unlearning_method("ascent_then_descent", ascent_then_descent)
  yield
  del algorithms.UNLEARNING_METHODS["ascent_then_descent"]


def _problem():
  x = jax.random.normal(jax.random.key(0), (24, 3))
  y = (x[:, 0] > 0).astype(jnp.int32)
  model = models.logistic_regression(2)
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  params = model.init_fn(jax.random.key(1), x[0])
  return model, loss_fn, params, (x, y)


def _forget_loss(loss_fn, params, data, forget):
  x, y = data
  return float(np.mean([loss_fn(params, (x[i], y[i])) for i in forget]))


@pytest.mark.slow
def test_toy_method_runs_through_unlearn_and_does_what_it_says(registered):
  model, loss_fn, params, data = _problem()
  forget = np.arange(4)
  mask = jnp.ones((24,)).at[forget].set(0.0)
  result = runtime.unlearn(
    loss_fn,
    params,
    data,
    method="ascent_then_descent",
    key=jax.random.key(2),
    step_size=0.5,
    record_steps=[0, 2, 6],
    data_mask=mask,
    progress=False,
    ascent_steps=2,
  )
  at = [jax.tree.map(lambda leaf, g=g: leaf[g], result.recorded) for g in range(3)]
  # the two ascent steps raise the forget-set loss; the fine-tuning steps lower the retain-set loss
  assert _forget_loss(loss_fn, at[1], data, forget) > _forget_loss(loss_fn, at[0], data, forget) + 1e-3
  retain = np.arange(4, 24)
  assert _forget_loss(loss_fn, at[2], data, retain) < _forget_loss(loss_fn, at[1], data, retain)
  # an independent re-derivation of the first ascent step: θ + η ∇ mean_forget ℓ
  grad = jax.grad(lambda p: jnp.mean(jnp.stack([loss_fn(p, (data[0][i], data[1][i])) for i in forget])))(params)
  first = runtime.unlearn(
    loss_fn,
    params,
    data,
    method="ascent_then_descent",
    key=jax.random.key(2),
    step_size=0.5,
    record_steps=[1],
    data_mask=mask,
    progress=False,
    ascent_steps=2,
  )
  want = jax.tree.map(lambda p, g: p + 0.5 * g, params, grad)
  for got, ref in zip(jax.tree.leaves(first.recorded), jax.tree.leaves(want)):
    np.testing.assert_allclose(np.asarray(got)[0], np.asarray(ref), rtol=1e-5, atol=1e-6)


@pytest.mark.slow
def test_toy_method_runs_through_the_study_config(registered, tmp_path):
  cfg = study.Config.from_dict(
    {
      "out_dir": str(tmp_path),
      "seed": 3,
      "data": {"num_train": 80, "num_test": 30},
      "model": {"kwargs": {"hidden_sizes": [8]}},
      "training": {"num_steps": 20, "num_seeds": 1, "num_checkpoints": 2},
      "privacy": {"lsi_constant": 0.02},
      "forget_sets": {"size": 4, "selections": ["privacy_loss:top", "random"]},
      "unlearning": {
        "methods": ["ascent_then_descent"],
        "step_grid": [0, 3, 6],
        "num_seeds": 4,
        "retrain_steps": 20,
        "method_options": {"ascent_then_descent": {"ascent_steps": 2}},
      },
      "evaluation": {"membership": False, "min_power": 0.0},
      "metrics": {"names": ["loss"]},
    }
  )
  report = study.run(cfg)
  rows = [e for e in report["forget_sets"] if e["method"] == "ascent_then_descent"]
  assert [e["selection"] for e in rows] == ["privacy_loss:top", "random"]
  for e in rows:
    assert len(e["median_distance"]) == 3 and all(np.isfinite(e["loss_barrier_along"]))
  assert "ascent_then_descent" in (tmp_path / "report.md").read_text()


def test_unregistered_method_is_refused_by_the_config_with_the_registered_names():
  with pytest.raises(study.ConfigError, match="ascent_then_descent.*sgld|sgld.*ascent_then_descent"):
    study.Config.from_dict({"unlearning": {"methods": ["ascent_then_descent"]}})
