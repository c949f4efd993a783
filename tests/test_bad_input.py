"""Issue 10, bad input: one table of malformed inputs across the public API and the command line.

Every row must be answered by ONE clear error at the public boundary:

- the exception is a ``ValueError`` / ``TypeError`` (the project's own error classes subclass them;
  ``experiment.OutputDirError`` is an ``OSError``, listed as such on its rows);
- the message names the argument (or config key) AND shows the offending value;
- the frame that raised it lives in ``unlearn_jax`` (the check ran before any JAX tracing), never deep
  inside jax / numpy / optax.

CLI rows call ``cli.main([...])`` in-process (plus one ``python -m unlearn_jax`` subprocess row) and
assert a non-zero exit code (2 for a bad command line or config, 3 for an unusable output directory),
that stderr names the key / argument and shows the value, and that no Python traceback is printed.

A second, smaller table lists inputs that are valid but degenerate and must give +inf / a finite
value, never NaN (e.g. a target ε ≤ E₂ gives +inf certified steps).
"""

from __future__ import annotations

import json
import math
import os
import pathlib
import subprocess
import sys
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearn_jax import accounting, data, models, per_example
from unlearn_jax import algorithms as sgld
from unlearn_jax import evaluate as evaluation
from unlearn_jax import runtime as loops
from unlearn_jax import study as experiment
from unlearn_jax.certify import bounds, testbed, testbed_table, worst_case
from unlearn_jax.evaluate import metrics, selection, statistics
from unlearn_jax.runtime import checkpoint
from unlearn_jax.study import cli

_PKG_DIR = pathlib.Path(__file__).resolve().parents[1] / "unlearn_jax"

# ----------------------------------------------------------------------------------------------------
# A tiny problem shared by the rows
# ----------------------------------------------------------------------------------------------------

N, D, K = 6, 2, 3
_RNG = np.random.default_rng(0)
X = _RNG.normal(size=(N, D)).astype(np.float32)
Y = np.array([0, 1, 2, 0, 1, 2], np.int32)
PARAMS = {"w": np.zeros((D, K), np.float32), "b": np.zeros((K,), np.float32)}
ORDERS = (2.0, 8.0)


def loss_fn(p, ex):
  x, y = ex
  logits = x @ p["w"] + p["b"]
  return jax.nn.logsumexp(logits) - logits[y]


def vector_loss_fn(p, ex):  # wrong: returns the per-class vector, not a scalar
  x, _ = ex
  return x @ p["w"] + p["b"]


def apply_fn(p, x):
  return x @ p["w"] + p["b"]


def _with(array, index, value):
  out = np.array(array, copy=True)
  out[index] = value
  return out


def _ledger_step_on_other_size():
  alg = sgld.sgld(loss_fn, clip_norm=1.0, accounting=accounting.accountant(ORDERS))
  state = alg.init(PARAMS, N - 1)  # ledger built for 5 examples
  return alg.step(state, (X, Y), jax.random.key(0), 0.1, 0.01)


def _sgld_step(**kwargs):
  alg = sgld.sgld(loss_fn, clip_norm=1.0)
  state = alg.init(PARAMS, N)
  args = dict(step_size=0.1, temperature=0.01)
  args.update(kwargs)
  return alg.step(state, (X, Y), jax.random.key(0), args["step_size"], args["temperature"])


def _train(**kwargs):
  base = dict(num_steps=3, key=jax.random.key(0), step_size=0.1, optimizer=optax.sgd(0.1), progress=False)
  data_ = kwargs.pop("data", (X, Y))
  base.update(kwargs)
  return loops.train(loss_fn, PARAMS, data_, **base)


def _dataset(**overrides):
  ds = data.Dataset(X, Y, X[:2], Y[:2], K, "toy")
  return data.validate_dataset(ds._replace(**overrides))


def _ridge():
  return testbed.make_outlier_problem(n=6, d=2, seed=0)


def _write(tmp_path: pathlib.Path, name: str, text: str) -> str:
  path = tmp_path / name
  path.write_text(text)
  return str(path)


def _cli(argv):
  try:
    return cli.main(argv)
  except SystemExit as e:  # argparse errors
    return e.code


# ----------------------------------------------------------------------------------------------------
# The table
# ----------------------------------------------------------------------------------------------------


class Row(NamedTuple):
  id: str
  call: Callable[[pathlib.Path], Any]  # receives tmp_path
  exc: type | tuple[type, ...]  # expected exception class(es); for CLI rows: the exit code
  needles: tuple[str, ...]  # substrings the message must contain: the argument AND the value
  cli: bool = False


VT = (ValueError, TypeError)

ROWS = [
  # ---- per_example: loss_fn contract, batch shapes, clip, method ---------------------------------
  Row(
    "loss_fn_not_scalar",
    lambda t: per_example.per_example_losses(vector_loss_fn, PARAMS, (X, Y)),
    TypeError,
    ("loss_fn", "(3,)"),
  ),
  Row(
    "loss_fn_not_callable",
    lambda t: per_example.per_example_grads("loss", PARAMS, (X, Y)),
    TypeError,
    ("loss_fn", "'loss'"),
  ),
  Row(
    "batch_leaves_disagree_on_n",
    lambda t: per_example.per_example_grads(loss_fn, PARAMS, (X, Y[:5])),
    ValueError,
    ("batch", "[6, 5]"),
  ),
  Row(
    "empty_batch",
    lambda t: per_example.per_example_losses(loss_fn, PARAMS, (X[:0], Y[:0])),
    ValueError,
    ("batch", "n = 0"),
  ),
  Row(
    "scalar_batch_leaf",
    lambda t: per_example.per_example_losses(loss_fn, PARAMS, (X, np.int32(1))),
    ValueError,
    ("batch", "scalar"),
  ),
  Row(
    "norm_method_unknown",
    lambda t: per_example.per_example_grad_norms(loss_fn, PARAMS, (X, Y), method="magic"),
    ValueError,
    ("method", "'magic'"),
  ),
  Row(
    "chunk_size_zero",
    lambda t: per_example.per_example_grad_norms(loss_fn, PARAMS, (X, Y), chunk_size=0),
    ValueError,
    ("chunk_size", "0"),
  ),
  Row("clip_norm_negative", lambda t: per_example.clip_factors(jnp.ones(3), -1.0), ValueError, ("clip_norm", "-1.0")),
  Row(
    "clip_norm_nan",
    lambda t: per_example.clipped_grad_sum(loss_fn, PARAMS, (X, Y), float("nan")),
    ValueError,
    ("clip_norm", "nan"),
  ),
  Row(
    "weights_wrong_shape",
    lambda t: per_example.weighted_grad_sum(loss_fn, PARAMS, (X, Y), np.ones(4)),
    ValueError,
    ("weights", "(4,)"),
  ),
  # ---- accounting --------------------------------------------------------------------------------
  Row("orders_contain_one", lambda t: accounting.accountant([1.0, 2.0]), ValueError, ("orders", "1.0")),
  Row("orders_below_one", lambda t: accounting.gaussian_rdp(1.0, 1.0, [0.5, 2.0]), ValueError, ("orders", "0.5")),
  Row("orders_nan", lambda t: accounting.accountant([2.0, float("nan")]), ValueError, ("orders", "nan")),
  Row("stride_zero", lambda t: accounting.accountant(ORDERS, stride=0), ValueError, ("stride", "0")),
  Row(
    "filter_budget_negative",
    lambda t: accounting.accountant(ORDERS, filter_budget=-1.0, filter_order=2.0),
    ValueError,
    ("filter_budget", "-1.0"),
  ),
  Row("q_zero", lambda t: accounting.sampled_gaussian_rdp(0.0, 1.0, ORDERS), ValueError, ("q", "0.0")),
  Row("q_above_one", lambda t: accounting.sampled_gaussian_rdp(1.5, 1.0, ORDERS), ValueError, ("q", "1.5")),
  Row("noise_std_zero", lambda t: accounting.gaussian_rdp(1.0, 0.0, ORDERS), ValueError, ("noise_std", "0.0")),
  Row(
    "costs_step_size_zero",
    lambda t: accounting.full_batch_costs(jnp.ones(N), N, orders=ORDERS, step_size=0.0, temperature=1.0),
    ValueError,
    ("step_size", "0.0"),
  ),
  Row(
    "costs_temperature_negative",
    lambda t: accounting.poisson_costs(jnp.ones(N), 0.5, 3.0, orders=ORDERS, step_size=0.1, temperature=-1.0),
    ValueError,
    ("temperature", "-1.0"),
  ),
  Row(
    "ledger_init_zero_examples",
    lambda t: accounting.ledger_init(0, accounting.accountant(ORDERS)),
    ValueError,
    ("num_examples", "0"),
  ),
  Row(
    "ledger_update_costs_wrong_shape",
    lambda t: accounting.ledger_update(
      accounting.ledger_init(N, accounting.accountant(ORDERS)),
      jnp.zeros((N, 3)),
      jnp.zeros(2),
      config=accounting.accountant(ORDERS),
    ),
    ValueError,
    ("costs", "(6, 3)"),
  ),
  Row(
    "ledger_update_negative_weight",
    lambda t: accounting.ledger_update(
      accounting.ledger_init(N, accounting.accountant(ORDERS)),
      jnp.zeros((N, 2)),
      jnp.zeros(2),
      weight=-1,
      config=accounting.accountant(ORDERS),
    ),
    ValueError,
    ("weight", "-1"),
  ),
  Row(
    "ledger_update_negative_costs",
    lambda t: accounting.ledger_update(
      accounting.ledger_init(N, accounting.accountant(ORDERS)),
      -jnp.ones((N, 2)),
      jnp.zeros(2),
      config=accounting.accountant(ORDERS),
    ),
    ValueError,
    ("costs", "-1.0"),
  ),
  Row(
    "costs_sq_dist_negative",
    lambda t: accounting.full_batch_costs(-jnp.ones(N), N, orders=ORDERS, step_size=0.1, temperature=1.0),
    ValueError,
    ("sq_dist", "-1.0"),
  ),
  Row(
    "rdp_nan_into_conversion",
    lambda t: accounting.rdp_to_dp(jnp.array([jnp.nan, 1.0]), ORDERS, 1e-5),
    ValueError,
    ("rdp", "NaN"),
  ),
  Row(
    "rdp_negative_into_conversion",
    lambda t: accounting.rdp_to_dp(jnp.array([-1.0, 1.0]), ORDERS, 1e-5),
    ValueError,
    ("rdp", "-1.0"),
  ),
  Row("delta_zero", lambda t: accounting.rdp_to_dp(jnp.ones(2), ORDERS, 0.0), ValueError, ("delta", "0.0")),
  Row("delta_one", lambda t: accounting.rdp_to_dp(jnp.ones(2), ORDERS, 1.0), ValueError, ("delta", "1.0")),
  Row(
    "group_indices_out_of_range",
    lambda t: accounting.group_privacy_loss(jnp.ones((N, 2)), [0, 9]),
    ValueError,
    ("forget_indices", "9"),
  ),
  Row(
    "group_indices_duplicated",
    lambda t: accounting.group_privacy_loss(jnp.ones((N, 2)), [1, 1]),
    ValueError,
    ("forget_indices", "[1]"),
  ),
  Row(
    "group_indices_empty",
    lambda t: accounting.group_privacy_loss(jnp.ones((N, 2)), np.array([], int)),
    ValueError,
    ("forget_indices", "(0,)"),
  ),
  # ---- bounds (THEORY §4) ------------------------------------------------------------------------
  Row(
    "bound_alpha_one",
    lambda t: bounds.unlearning_bound(1.0, 0, alpha=1.0, step_size=0.1, temperature=1.0, lsi_constant=1.0),
    ValueError,
    ("alpha", "1.0"),
  ),
  Row(
    "steps_alpha_half",
    lambda t: bounds.steps_to_unlearn(1.0, 0.1, alpha=0.5, step_size=0.1, temperature=1.0, lsi_constant=1.0),
    ValueError,
    ("alpha", "0.5"),
  ),
  Row(
    "steps_privacy_loss_nan",
    lambda t: bounds.steps_to_unlearn(
      jnp.array([1.0, jnp.nan]), 0.1, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0
    ),
    ValueError,
    ("privacy_loss_4alpha", "NaN"),
  ),
  Row(
    "steps_privacy_loss_negative",
    lambda t: bounds.steps_to_unlearn(-0.5, 0.1, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0),
    ValueError,
    ("privacy_loss_4alpha", "-0.5"),
  ),
  Row(
    "steps_step_size_zero",
    lambda t: bounds.steps_to_unlearn(1.0, 0.1, alpha=2.0, step_size=0.0, temperature=1.0, lsi_constant=1.0),
    ValueError,
    ("step_size", "0.0"),
  ),
  Row(
    "steps_temperature_negative",
    lambda t: bounds.steps_to_unlearn(1.0, 0.1, alpha=2.0, step_size=0.1, temperature=-1.0, lsi_constant=1.0),
    ValueError,
    ("temperature", "-1.0"),
  ),
  Row(
    "steps_lsi_constant_zero",
    lambda t: bounds.steps_to_unlearn(1.0, 0.1, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=0.0),
    ValueError,
    ("lsi_constant", "0.0"),
  ),
  Row(
    "steps_target_zero",
    lambda t: bounds.steps_to_unlearn(1.0, 0.0, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0),
    ValueError,
    ("epsilon", "0.0"),
  ),
  Row(
    "steps_e1_negative",
    lambda t: bounds.steps_to_unlearn(1.0, 0.1, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0, e1=-0.1),
    ValueError,
    ("e1", "-0.1"),
  ),
  Row(
    "bound_k_negative",
    lambda t: bounds.contraction_factor(-3, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0),
    ValueError,
    ("num_steps", "-3"),
  ),
  Row(
    "steps_dp_delta_above_one",
    lambda t: bounds.steps_to_unlearn_dp(
      jnp.ones((N, 2)), (2.0, 8.0), 1.0, 1.5, step_size=0.1, temperature=1.0, lsi_constant=1.0
    ),
    ValueError,
    ("delta", "1.5"),
  ),
  Row(
    "steps_dp_ledger_wrong_shape",
    lambda t: bounds.steps_to_unlearn_dp(
      jnp.ones((N, 3)), (2.0, 8.0), 1.0, 1e-5, step_size=0.1, temperature=1.0, lsi_constant=1.0
    ),
    ValueError,
    ("ledger_realized", "(6, 3)"),
  ),
  Row(
    "worst_case_n_zero",
    lambda t: worst_case.worst_case_epsilon(
      2.0, 10, m=1.0, step_size=0.1, temperature=1.0, num_removed=1, clip_norm=1.0, num_examples=0
    ),
    ValueError,
    ("num_examples", "0"),
  ),
  Row(
    "worst_case_removes_more_than_n",
    lambda t: worst_case.worst_case_epsilon(
      2.0, 10, m=1.0, step_size=0.1, temperature=1.0, num_removed=20, clip_norm=1.0, num_examples=10
    ),
    ValueError,
    ("num_removed", "20", "num_examples = 10"),
  ),
  # ---- sgld --------------------------------------------------------------------------------------
  Row("sgld_mode_unknown", lambda t: sgld.sgld(loss_fn, mode="full"), ValueError, ("mode", "'full'")),
  Row("sgld_clip_norm_zero", lambda t: sgld.sgld(loss_fn, clip_norm=0.0), ValueError, ("clip_norm", "0.0")),
  Row(
    "sgld_sampling_rate_zero",
    lambda t: sgld.sgld(loss_fn, mode="poisson", sampling_rate=0.0),
    ValueError,
    ("sampling_rate", "0.0"),
  ),
  Row(
    "sgld_sampling_rate_above_one",
    lambda t: sgld.sgld(loss_fn, mode="poisson", sampling_rate=1.5),
    ValueError,
    ("sampling_rate", "1.5"),
  ),
  Row(
    "sgld_weight_decay_negative", lambda t: sgld.sgld(loss_fn, weight_decay=-0.1), ValueError, ("weight_decay", "-0.1")
  ),
  Row("sgld_step_size_zero", lambda t: _sgld_step(step_size=0.0), ValueError, ("step_size", "0.0")),
  Row("sgld_temperature_negative", lambda t: _sgld_step(temperature=-0.5), ValueError, ("temperature", "-0.5")),
  Row("ledger_of_another_data_set_size", lambda t: _ledger_step_on_other_size(), ValueError, ("ledger", "5", "n = 6")),
  Row(
    "langevin_temperature_negative",
    lambda t: sgld.langevin_noise(-1.0, 0.1, jax.random.key(0)),
    ValueError,
    ("temperature", "-1.0"),
  ),
  # ---- testbed -----------------------------------------------------------------------------------
  Row(
    "ridge_X_nan",
    lambda t: testbed.RidgeProblem.from_data(_with(X, (0, 0), np.nan), Y.astype(float), 0.1),
    ValueError,
    ("X", "NaN"),
  ),
  Row(
    "ridge_lam_negative",
    lambda t: testbed.RidgeProblem.from_data(X, Y.astype(float), -0.1),
    ValueError,
    ("lam", "-0.1"),
  ),
  Row("ridge_y_wrong_length", lambda t: testbed.RidgeProblem.from_data(X, np.ones(5), 0.1), ValueError, ("y", "(5,)")),
  Row(
    "renyi_alpha_one",
    lambda t: testbed.gaussian_renyi(1.0, np.zeros(1), np.eye(1), np.zeros(1), np.eye(1)),
    ValueError,
    ("alpha", "1.0"),
  ),
  Row(
    "renyi_covariance_not_pd",
    lambda t: testbed.gaussian_renyi(2.0, np.zeros(1), -np.eye(1), np.zeros(1), np.eye(1)),
    ValueError,
    ("S1", "-1.0"),
  ),
  Row(
    "testbed_table_T_float", lambda t: testbed_table.certify_testbed_table(_ridge(), T=2.5), ValueError, ("T", "2.5")
  ),
  Row(
    "exact_index_out_of_range",
    lambda t: testbed.per_instance_exact(_ridge(), 9, 2.0, 10, 0, 0.1, 0.01, np.zeros(2), np.eye(2)),
    ValueError,
    ("index", "9"),
  ),
  Row(
    "exact_temperature_zero", lambda t: testbed.stationary_law(_ridge(), 0.1, 0.0), ValueError, ("temperature", "0.0")
  ),
  # ---- selection: forget sets --------------------------------------------------------------------
  Row(
    "forget_indices_empty",
    lambda t: selection.check_forget_indices(np.array([], np.int64), N),
    ValueError,
    ("forget indices", "(0,)"),
  ),
  Row(
    "forget_indices_duplicated",
    lambda t: selection.check_forget_indices([1, 3, 1], N),
    ValueError,
    ("forget indices", "[1]"),
  ),
  Row(
    "forget_indices_out_of_range",
    lambda t: selection.check_forget_indices([0, 6], N),
    ValueError,
    ("forget indices", "[6]"),
  ),
  Row(
    "forget_indices_negative",
    lambda t: selection.check_forget_indices([-1, 2], N),
    ValueError,
    ("forget indices", "[-1]"),
  ),
  Row(
    "forget_indices_float",
    lambda t: selection.check_forget_indices([0.5, 2.0], N),
    TypeError,
    ("forget indices", "float64"),
  ),
  Row(
    "selection_scores_nan",
    lambda t: selection.select_forget_set(jnp.array([1.0, jnp.nan, 0.0]), "top", size=1),
    ValueError,
    ("scores", "NaN"),
  ),
  Row(
    "selection_unknown",
    lambda t: selection.select_forget_set(jnp.arange(4.0), "middle", size=1),
    ValueError,
    ("selection", "'middle'"),
  ),
  # ---- metrics / evaluation ----------------------------------------------------------------------
  Row(
    "labels_out_of_range",
    lambda t: metrics.per_example_loss(apply_fn, PARAMS, X, _with(Y, 2, 7)),
    ValueError,
    ("y", "7"),
  ),
  Row("labels_negative", lambda t: metrics.confidence(apply_fn, PARAMS, X, _with(Y, 0, -1)), ValueError, ("y", "-1")),
  Row("labels_2d", lambda t: metrics.per_example_loss(apply_fn, PARAMS, X, Y[:, None]), ValueError, ("y", "(6, 1)")),
  Row(
    "accuracy_labels_out_of_range",
    lambda t: evaluation.accuracy_and_loss(apply_fn, PARAMS, X, _with(Y, 5, 9)),
    ValueError,
    ("y", "9"),
  ),
  Row(
    "spearman_lengths", lambda t: statistics.spearman(jnp.arange(4.0), jnp.arange(5.0)), ValueError, ("(4,)", "(5,)")
  ),
  Row(
    "membership_delta_one",
    lambda t: evaluation.membership_epsilon(jnp.ones((4, 2)), jnp.zeros((4, 2)), delta=1.0),
    ValueError,
    ("delta", "1.0"),
  ),
  Row(
    "barrier_num_points_one",
    lambda t: evaluation.loss_barrier(loss_fn, PARAMS, PARAMS, (X, Y), num_points=1),
    ValueError,
    ("num_points", "1"),
  ),
  # ---- models ------------------------------------------------------------------------------------
  Row("mlp_num_classes_one", lambda t: models.mlp((4,), num_classes=1), ValueError, ("num_classes", "1")),
  Row("mlp_hidden_zero", lambda t: models.mlp((0,), num_classes=3), ValueError, ("hidden_sizes", "0")),
  Row(
    "model_init_empty_example",
    lambda t: models.mlp((4,), num_classes=3).init_fn(jax.random.key(0), np.zeros(0)),
    ValueError,
    ("example_x", "(0,)"),
  ),
  Row("model_name_unknown", lambda t: models.get_model("resnet", 10), ValueError, ("name", "'resnet'")),
  Row(
    "loss_weight_decay_negative",
    lambda t: models.cross_entropy_loss_fn(apply_fn, weight_decay=-1.0),
    ValueError,
    ("weight_decay", "-1.0"),
  ),
  # ---- data --------------------------------------------------------------------------------------
  Row("features_nan", lambda t: _dataset(x_train=_with(X, (1, 1), np.nan)), ValueError, ("x_train", "NaN")),
  Row("features_inf", lambda t: _dataset(x_test=_with(X[:2], (0, 0), np.inf)), ValueError, ("x_test", "Inf")),
  Row("features_strings", lambda t: _dataset(x_train=np.array([["a", "b"]] * N)), TypeError, ("x_train", "<U1")),
  Row("dataset_labels_out_of_range", lambda t: _dataset(y_train=_with(Y, 0, 3)), ValueError, ("y_train", "3")),
  Row(
    "dataset_labels_float", lambda t: _dataset(y_train=Y.astype(np.float32) + 0.5), TypeError, ("y_train", "float32")
  ),
  Row("mixture_n_one", lambda t: data.make_gaussian_mixture(1, 2, 2), ValueError, ("n", "1")),
  # ---- batch draws -------------------------------------------------------------------------------
  Row(
    "poisson_positions_q_above_one",
    lambda t: sgld.batches.poisson_positions(jax.random.key(0), 10, 1.5, 4),
    ValueError,
    ("q", "1.5"),
  ),
  Row(
    "poisson_positions_n_zero",
    lambda t: sgld.batches.poisson_positions(jax.random.key(0), 0, 0.5, 4),
    ValueError,
    ("n", "0"),
  ),
  Row(
    "poisson_positions_m_float",
    lambda t: sgld.batches.poisson_positions(jax.random.key(0), 10, 0.5, 4.0),
    ValueError,
    ("m", "4.0"),
  ),
  # ---- loops -------------------------------------------------------------------------------------
  Row("train_num_steps_zero", lambda t: _train(num_steps=0), ValueError, ("num_steps", "0")),
  Row("train_step_size_negative", lambda t: _train(step_size=-0.1), ValueError, ("step_size", "-0.1")),
  Row(
    "optax_stride_epoch",
    lambda t: sgld.optax_training(loss_fn, optax.sgd(0.1), accounting=accounting.accountant([2.0], stride="epoch")),
    ValueError,
    ("stride='epoch'", "minibatch"),
  ),
  Row("train_features_inf", lambda t: _train(data=(_with(X, (2, 0), np.inf), Y)), ValueError, ("data", "finite")),
  Row(
    "train_checkpoint_dir_under_a_file",
    lambda t: _train(checkpoint_dir=os.path.join(_write(t, "file.txt", "x"), "out")),
    (ValueError, OSError),
    ("checkpoint_dir", "file.txt"),
  ),
  Row(
    "unlearn_method_unknown",
    lambda t: loops.unlearn(
      loss_fn,
      PARAMS,
      (X, Y),
      method="newton",
      key=jax.random.key(0),
      step_size=0.1,
      record_steps=(0, 1),
      progress=False,
    ),
    ValueError,
    ("method", "'newton'"),
  ),
  # ---- experiment config (typed, strict) ---------------------------------------------------------
  Row(
    "config_unknown_key",
    lambda t: experiment.Config.from_dict({"training": {"stepsize": 0.1}}),
    experiment.ConfigError,
    ("training.stepsize", "step_size"),
  ),
  Row(
    "config_wrong_type",
    lambda t: experiment.Config.from_dict({"training": {"num_steps": "ten"}}),
    experiment.ConfigError,
    ("training.num_steps", "'ten'"),
  ),
  Row(
    "config_q_above_one",
    lambda t: experiment.Config.from_dict({"training": {"mode": "poisson", "sampling_rate": 1.5}}),
    experiment.ConfigError,
    ("training.sampling_rate", "1.5"),
  ),
  Row(
    "config_orders_le_one",
    lambda t: experiment.Config.from_dict({"privacy": {"orders": [1.0, 8.0]}}),
    experiment.ConfigError,
    ("privacy.orders", "1.0"),
  ),
  Row(
    "config_lsi_constant_negative",
    lambda t: experiment.Config.from_dict({"privacy": {"lsi_constant": -1}}),
    experiment.ConfigError,
    ("privacy.lsi_constant", "-1"),
  ),
  Row(
    "config_file_json_wrong_type",
    lambda t: experiment.Config.from_file(_write(t, "c.json", json.dumps({"training": {"temperature": [1.0]}}))),
    experiment.ConfigError,
    ("training.temperature", "[1.0]"),
  ),
  Row(
    "run_out_dir_under_a_file",
    lambda t: experiment.run(experiment.demo_config().replace(out_dir=os.path.join(_write(t, "file.txt", "x"), "out"))),
    experiment.OutputDirError,
    ("file.txt", "cannot be created or written"),
  ),
  # ---- command line ------------------------------------------------------------------------------
  Row(
    "cli_unknown_config_key",
    lambda t: _cli(["run", "--quiet", "--config", _write(t, "c.toml", "[training]\ntemprature = 1.0\n")]),
    cli.EXIT_CONFIG,
    ("training.temprature", "temperature"),
    cli=True,
  ),
  Row(
    "cli_config_wrong_type",
    lambda t: _cli(["run", "--quiet", "--config", _write(t, "c.toml", '[training]\nstep_size = "fast"\n')]),
    cli.EXIT_CONFIG,
    ("training.step_size", "'fast'"),
    cli=True,
  ),
  Row(
    "cli_config_delta_outside",
    lambda t: _cli(["run", "--quiet", "--config", _write(t, "c.toml", "[evaluation]\ndelta = 1.5\n")]),
    cli.EXIT_CONFIG,
    ("evaluation.delta", "1.5"),
    cli=True,
  ),
  Row(
    "cli_config_clip_negative",
    lambda t: _cli(["run", "--quiet", "--config", _write(t, "c.json", json.dumps({"training": {"clip_norm": -2.0}}))]),
    cli.EXIT_CONFIG,
    ("training.clip_norm", "-2.0"),
    cli=True,
  ),
  Row(
    "cli_config_not_toml",
    lambda t: _cli(["run", "--quiet", "--config", _write(t, "c.toml", "[training\nstep_size = 1\n")]),
    cli.EXIT_CONFIG,
    ("c.toml", "TOML"),
    cli=True,
  ),
  Row(
    "cli_config_missing",
    lambda t: _cli(["run", "--quiet", "--config", str(t / "nope.toml")]),
    cli.EXIT_CONFIG,
    ("nope.toml", "does not exist"),
    cli=True,
  ),
  Row(
    "cli_out_dir_under_a_file",
    lambda t: _cli(["demo", "--quiet", "--out", os.path.join(_write(t, "file.txt", "x"), "out")]),
    cli.EXIT_OUTPUT,
    ("file.txt", "cannot be created or written"),
    cli=True,
  ),
  Row(
    "cli_out_dir_in_proc",
    lambda t: _cli(["demo", "--quiet", "--out", "/proc/unlearn_jax_out"]),
    cli.EXIT_OUTPUT,
    ("/proc/unlearn_jax_out",),
    cli=True,
  ),
  Row(
    "cli_seed_negative",
    lambda t: _cli(["demo", "--quiet", "--seed", "-3", "--out", str(t / "o")]),
    cli.EXIT_CONFIG,
    ("seed", "-3"),
    cli=True,
  ),
  Row("cli_seed_not_int", lambda t: _cli(["demo", "--quiet", "--seed", "abc"]), 2, ("--seed", "'abc'"), cli=True),
  Row(
    "cli_testbed_alpha_le_one",
    lambda t: _cli(["certify-testbed", "--alpha", "0.5"]),
    cli.EXIT_CONFIG,
    ("alpha", "0.5"),
    cli=True,
  ),
  Row(
    "cli_testbed_epsilon_negative",
    lambda t: _cli(["certify-testbed", "--epsilon", "-1"]),
    cli.EXIT_CONFIG,
    ("eps", "-1"),
    cli=True,
  ),
  Row(
    "cli_testbed_step_size_zero",
    lambda t: _cli(["certify-testbed", "--step-size", "0"]),
    cli.EXIT_CONFIG,
    ("step_size", "0"),
    cli=True,
  ),
  Row(
    "cli_testbed_temperature_negative",
    lambda t: _cli(["certify-testbed", "--temperature", "-0.1"]),
    cli.EXIT_CONFIG,
    ("temperature", "-0.1"),
    cli=True,
  ),
  Row("cli_testbed_n_zero", lambda t: _cli(["certify-testbed", "--n", "0"]), cli.EXIT_CONFIG, ("n", "0"), cli=True),
  Row(
    "cli_testbed_steps_negative",
    lambda t: _cli(["certify-testbed", "--steps", "-3"]),
    cli.EXIT_CONFIG,
    ("T", "-3"),
    cli=True,
  ),
]


def test_table_is_large_enough():
  ids = [r.id for r in ROWS]
  assert len(ids) == len(set(ids)), "duplicate row ids"
  assert len(ROWS) >= 40
  assert sum(r.cli for r in ROWS) >= 10


def _raising_frame(excinfo) -> pathlib.Path:
  return pathlib.Path(str(excinfo.traceback[-1].path)).resolve()


@pytest.mark.parametrize("row", [r for r in ROWS if not r.cli], ids=lambda r: r.id)
def test_api_bad_input_is_refused_at_the_boundary(row, tmp_path):
  with pytest.raises(Exception) as excinfo:
    row.call(tmp_path)
  err = excinfo.value
  assert isinstance(err, row.exc), f"{row.id}: expected {row.exc}, got {type(err).__name__}: {err}"
  assert isinstance(err, (ValueError, TypeError, OSError))
  message = str(err)
  for needle in row.needles:
    assert needle in message, f"{row.id}: {needle!r} not in message {message!r}"
  frame = _raising_frame(excinfo)
  assert _PKG_DIR in frame.parents, f"{row.id}: raised in {frame}, not at the unlearn_jax boundary"


def test_boundary_check_is_not_vacuous(tmp_path):
  # An error raised deep inside jax (no boundary check) must fail the row assertions above.
  row = Row("deep", lambda t: jnp.reshape(jnp.ones(3), (2,)), VT, ("3",))
  with pytest.raises(AssertionError, match="not at the unlearn_jax boundary"):
    test_api_bad_input_is_refused_at_the_boundary(row, tmp_path)
  row = Row(
    "wrong_message",
    lambda t: bounds.steps_to_unlearn(1.0, 0.1, alpha=0.5, step_size=0.1, temperature=1.0, lsi_constant=1.0),
    ValueError,
    ("alpha", "0.25"),
  )
  with pytest.raises(AssertionError, match="not in message"):
    test_api_bad_input_is_refused_at_the_boundary(row, tmp_path)


@pytest.mark.parametrize("row", [r for r in ROWS if r.cli], ids=lambda r: r.id)
def test_cli_bad_input_exits_non_zero_naming_the_key(row, tmp_path, capsys):
  code = row.call(tmp_path)
  captured = capsys.readouterr()
  assert code == row.exc, f"{row.id}: exit code {code}, stderr {captured.err!r}"
  assert code != 0
  for needle in row.needles:
    assert needle in captured.err, f"{row.id}: {needle!r} not in stderr {captured.err!r}"
  assert "Traceback" not in captured.err and "Traceback" not in captured.out


def test_cli_subprocess_bad_config_has_no_traceback(tmp_path):
  cfg = _write(tmp_path, "c.toml", "[privacy]\norders = [0.5, 8.0]\n")
  res = subprocess.run(
    [sys.executable, "-m", "unlearn_jax", "run", "--quiet", "--config", cfg],
    capture_output=True,
    text=True,
    timeout=120,
    env=dict(os.environ, JAX_PLATFORMS="cpu"),
  )
  assert res.returncode == cli.EXIT_CONFIG, res.stderr
  assert "privacy.orders" in res.stderr and "0.5" in res.stderr
  assert "Traceback" not in res.stderr


# ----------------------------------------------------------------------------------------------------
# Valid but degenerate inputs: +inf or a finite number, never NaN
# ----------------------------------------------------------------------------------------------------


def test_target_at_or_below_e2_gives_inf_not_nan():
  kw = dict(alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  k = bounds.steps_to_unlearn(jnp.array([0.0, 1.0, 1e6]), 0.2, e2=0.2, **kw)
  assert np.all(np.isposinf(np.asarray(k)))
  k = bounds.steps_to_unlearn(1.0, 0.1, e2=0.5, **kw)
  assert np.isposinf(float(k))
  kc = bounds.steps_to_unlearn_continuous(1.0, 0.1, e2=0.5, **kw)
  assert np.isposinf(float(kc))


def test_infinite_privacy_loss_gives_inf_steps_and_zero_loss_gives_zero():
  kw = dict(alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  k = bounds.steps_to_unlearn(jnp.array([jnp.inf, 0.0]), 0.1, **kw)
  assert np.isposinf(float(k[0])) and float(k[1]) == 0.0
  b = bounds.unlearning_bound(jnp.array([jnp.inf, 0.0]), 10, **kw)
  assert np.isposinf(float(b[0])) and float(b[1]) == 0.0


def test_unclipped_worst_case_is_inf_not_nan():
  # No clip norm: the worst-case sensitivity is unbounded, the worst-case loss is +inf (never NaN).
  w = accounting.full_batch_worst_case_cost(math.inf, N, orders=ORDERS, step_size=0.1, temperature=1.0)
  assert np.all(np.isposinf(np.asarray(w)))
  w = accounting.poisson_worst_case_cost(math.inf, 0.5, 3.0, orders=ORDERS, step_size=0.1, temperature=1.0)
  assert np.all(np.isposinf(np.asarray(w)))


def test_nan_costs_are_never_silently_summed():
  cfg = accounting.accountant(ORDERS)
  led = accounting.ledger_init(N, cfg)
  costs = jnp.zeros((N, 2)).at[3, 1].set(jnp.nan)
  new = accounting.ledger_update(led, costs, jnp.zeros(2), config=cfg)
  assert not bool(new.finite)


_DIVERGING_TOML = """
seed = 0
[data]
num_train = 30
num_test = 10
[model]
name = "logistic_regression"
[training]
num_steps = 12
num_seeds = 1
num_checkpoints = 2
step_size = 1e6
weight_decay = 0.01
[privacy]
lsi_constant = 0.02
orders = [2.0, 8.0]
[forget_sets]
size = 2
selections = ["privacy_loss:top"]
[unlearning]
methods = ["sgld"]
step_grid = [0, 3]
num_seeds = 4
retrain_steps = 6
[evaluation]
min_power = 0.0  # 4 vs 4 models: the test cannot reject; this checks the plumbing
[metrics]
names = ["loss"]
"""


@pytest.mark.slow
def test_cli_diverging_run_is_a_clean_error_naming_the_step(tmp_path, capsys):
  # η·wd = 1e4 > 2: the parameters blow up within a few steps. The run must stop with one line naming
  # the step (issue 10, divergence), a non-zero exit status and no Python traceback.
  code = _cli(
    ["run", "--quiet", "--config", _write(tmp_path, "c.toml", _DIVERGING_TOML), "--out", str(tmp_path / "out")]
  )
  err = capsys.readouterr().err
  assert code not in (0, None), err
  assert "diverged at step" in err and "step_size" in err, err
  assert "add weight decay" not in err, err  # the hint must not blame a missing weight decay (this run has one)
  assert "Traceback" not in err, err


def test_cli_output_dir_holding_another_run_is_a_clean_error(tmp_path, capsys):
  # The output directory keeps the checkpoints of an earlier run with another config (a user re-running
  # with a changed config and the same --out): refused with one line naming the directory and a
  # non-zero exit status (3: the output directory cannot be used), never a Python traceback.

  out = tmp_path / "out"
  for sub in ("train", os.path.join("train", "seed_0")):
    path = checkpoint.checkpoint_path(out / "checkpoints" / sub, 5)
    os.makedirs(os.path.dirname(path), exist_ok=True)
    checkpoint.save_checkpoint(path, {"a": np.zeros(1)}, metadata={"fingerprint": "another run"})
  toml = _DIVERGING_TOML.replace("step_size = 1e6\nweight_decay = 0.01\n", "")
  code = _cli(["run", "--quiet", "--config", _write(tmp_path, "c.toml", toml), "--out", str(out)])
  err = capsys.readouterr().err
  assert code == cli.EXIT_OUTPUT, err
  assert str(out) in err and "different run" in err, err
  assert "pass --fresh" in err and "resume=False" not in err and "fresh=True" not in err, err  # the CLI's words
  assert "Traceback" not in err, err


# ----------------------------------------------------------------------------------------------------
# CLI rows: each error a config or data file can cause maps to its exit status with one line, no traceback
# ----------------------------------------------------------------------------------------------------

_SMALL_TOML = _DIVERGING_TOML.replace("step_size = 1e6\nweight_decay = 0.01\n", "")


def _corrupt_cifar(tmp_path):
  d = tmp_path / "cifar"
  d.mkdir()
  for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    (d / name).write_bytes(b"\0" * 100)  # not a multiple of the 3,073-byte record
  return _SMALL_TOML.replace('[model]\nname = "logistic_regression"', f'name = "cifar10"\ndata_dir = "{d}"\n[model]')


def _corrupt_svhn(tmp_path):
  d = tmp_path / "svhn"
  d.mkdir()
  for name in ("train_32x32.mat", "test_32x32.mat"):
    (d / name).write_bytes(b"garbage" * 10)
  return _SMALL_TOML.replace('[model]\nname = "logistic_regression"', f'name = "svhn"\ndata_dir = "{d}"\n[model]')


def _file_as_data_dir(tmp_path):
  (tmp_path / "afile").write_text("x")
  return _SMALL_TOML.replace(
    '[model]\nname = "logistic_regression"', f'name = "cifar10"\ndata_dir = "{tmp_path / "afile"}"\n[model]'
  )


_CLI_ROWS = [
  # (id, config text from tmp_path, extra CLI arguments, exit status, fragment of the one-line message)
  ("corrupt_cifar10_file", _corrupt_cifar, [], cli.EXIT_DATA, "truncated or corrupt"),
  ("corrupt_svhn_file", _corrupt_svhn, [], cli.EXIT_DATA, "not a MATLAB file"),
  ("data_dir_is_a_file", _file_as_data_dir, [], cli.EXIT_DATA, "is a file, not a directory"),
  ("orders_beyond_float32", lambda _: _SMALL_TOML.replace("[2.0, 8.0]", "[2.0, 8.0, 1e300]"), [], 2, "orders[2]"),
  (
    "temperature_zero_in_float32",
    lambda _: _SMALL_TOML.replace("num_steps = 12", "num_steps = 12\ntemperature = 1e-50"),
    [],
    2,
    "training.temperature",
  ),  # noqa: E501
  (
    "num_steps_beyond_int64",
    lambda _: _SMALL_TOML.replace("num_steps = 12", f"num_steps = {2**70}"),
    [],
    2,
    "training.num_steps",
  ),  # noqa: E501
  ("seed_beyond_int64", lambda _: _SMALL_TOML, ["--seed", str(2**70)], 2, "seed"),
  (
    "num_train_above_the_data_set",
    lambda _: _SMALL_TOML.replace("num_train = 30", "num_train = 100000"),
    [],
    2,
    "data.num_train",
  ),  # noqa: E501
  (
    "resnet18_on_flat_inputs",
    lambda _: _SMALL_TOML.replace('name = "logistic_regression"', 'name = "resnet18"'),
    [],
    2,
    "model.name",
  ),  # noqa: E501
  ("toml_with_a_bom", lambda _: "\ufeff" + _SMALL_TOML, [], 2, "byte-order mark"),
  ("empty_out_dir", lambda _: _SMALL_TOML, ["--out", ""], 2, "out_dir"),
]


@pytest.mark.parametrize("row", _CLI_ROWS, ids=[r[0] for r in _CLI_ROWS])
def test_cli_error_rows_exit_with_their_code_and_one_line(row, tmp_path, capsys):
  _, make, extra, code, fragment = row
  cfg = tmp_path / "c.toml"
  cfg.write_text(make(tmp_path), encoding="utf-8")
  out = [] if "--out" in extra else ["--out", str(tmp_path / "out")]
  got = _cli(["run", "--quiet", "--config", str(cfg), *out, *extra])
  err = capsys.readouterr().err
  assert got == code, err
  assert len(err.strip().splitlines()) == 1 and fragment in err and "Traceback" not in err, err


def test_cli_json_nested_too_deep_is_a_config_error(tmp_path, capsys):
  cfg = tmp_path / "deep.json"
  cfg.write_text('{"a":' * 100_000 + "1" + "}" * 100_000)
  assert _cli(["run", "--quiet", "--config", str(cfg), "--out", str(tmp_path / "o")]) == cli.EXIT_CONFIG
  err = capsys.readouterr().err
  assert "nested too deeply" in err and len(err.strip().splitlines()) == 1


def test_cli_json_duplicate_keys_are_refused_naming_the_key(tmp_path, capsys):
  cfg = tmp_path / "dup.json"
  cfg.write_text('{"training": {"step_size": 0.5, "step_size": 1e6}}')
  assert _cli(["run", "--quiet", "--config", str(cfg), "--out", str(tmp_path / "o")]) == cli.EXIT_CONFIG
  err = capsys.readouterr().err
  assert "step_size" in err and "given twice" in err, err


@pytest.mark.slow  # a whole study (20 s)
def test_cli_tiny_clip_norm_finishes_with_every_figure(tmp_path, capsys):
  # clip_norm = 1e-30: every privacy loss and every k* is 0; the log-scale figures used to raise.
  pytest.importorskip("matplotlib")
  toml = _SMALL_TOML.replace("num_steps = 12", "num_steps = 12\nclip_norm = 1e-30")
  out = tmp_path / "out"
  assert _cli(["run", "--quiet", "--config", _write(tmp_path, "c.toml", toml), "--out", str(out)]) == 0
  assert (out / "certified_vs_worst_case.png").stat().st_size > 0 and (out / "report.json").is_file()


@pytest.mark.slow  # a study until the disk is full (15 s)
@pytest.mark.skipif(not hasattr(os, "geteuid") or os.geteuid() != 0, reason="mounting a small tmpfs needs root")
def test_cli_disk_full_is_exit_3_with_one_line(tmp_path, capsys):
  mount = tmp_path / "small"
  mount.mkdir()
  if subprocess.run(["mount", "-t", "tmpfs", "-o", "size=24k", "tmpfs", str(mount)], capture_output=True).returncode:
    pytest.skip("cannot mount a tmpfs here (no privilege in this container)")
  try:
    code = _cli(["run", "--quiet", "--config", _write(tmp_path, "c.toml", _SMALL_TOML), "--out", str(mount / "o")])
    err = capsys.readouterr().err
  finally:
    subprocess.run(["umount", str(mount)], check=False)
  assert code == cli.EXIT_OUTPUT, err
  assert "No space left on device" in err and len(err.strip().splitlines()) == 1 and "Traceback" not in err, err
