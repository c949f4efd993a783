"""Runs the multi-device checks of test_distributed.py in a process of its own.

The number of CPU "devices" is fixed when JAX starts, so tests/test_distributed.py runs this script in a
subprocess with ``XLA_FLAGS=--xla_force_host_platform_device_count=4``. In that one process every
scenario runs twice: once on one device with plain (unsharded) arrays -- the reference -- and once on a
mesh built by ``unlearn_jax.distributed``; the script writes the differences, the shardings seen and
the raw values the test needs to a JSON file (argv[1]).

Usage: XLA_FLAGS=--xla_force_host_platform_device_count=4 python tests/distributed_worker.py OUT.json
[SCENARIO ...]

Importing this file does nothing (pytest --doctest-modules imports it).
"""

from __future__ import annotations

import json
import sys
import time
import traceback


def _setup():
  import jax

  jax.config.update("jax_enable_x64", True)  # this process only; float32 scenarios ask for float32
  return jax


def _problem(n, dtype, seed=0, d=6, h=8, c=3):
  """A small MLP classification problem; loss_fn, apply_fn for ONE example."""
  import jax.numpy as jnp
  import numpy as np

  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(dtype)
  y = rng.integers(0, c, size=n).astype(np.int32)
  params = {
    "w1": (rng.normal(size=(d, h)) / np.sqrt(d)).astype(dtype),
    "b1": np.zeros(h, dtype),
    "w2": (rng.normal(size=(h, c)) / np.sqrt(h)).astype(dtype),
    "b2": np.zeros(c, dtype),
  }

  def apply_fn(p, xi):
    return jnp.tanh(xi @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]

  def loss_fn(p, ex):
    xi, yi = ex
    return -jax_nn_log_softmax(apply_fn(p, xi))[yi]

  return params, (x, y), loss_fn, apply_fn


def jax_nn_log_softmax(z):
  import jax

  return jax.nn.log_softmax(z)


def _np(tree):
  import jax
  import numpy as np

  return jax.tree.map(lambda a: np.asarray(jax.device_get(a)), tree)


def _diff(a, b):
  """(max abs difference, bitwise equal) over two pytrees of arrays."""
  import jax
  import numpy as np

  la, lb = jax.tree.leaves(_np(a)), jax.tree.leaves(_np(b))
  assert len(la) == len(lb), (len(la), len(lb))
  worst, same = 0.0, True
  for x, y in zip(la, lb):
    assert x.shape == y.shape, (x.shape, y.shape)
    if x.dtype.kind in "fc":
      with np.errstate(invalid="ignore"):
        d = np.abs(x.astype(np.float64) - y.astype(np.float64))
      worst = max(worst, float(np.nanmax(d)) if d.size else 0.0)
    else:
      worst = max(worst, float(np.max(x != y)) if x.size else 0.0)
    same = same and x.tobytes() == y.tobytes()
  return worst, bool(same)


def _scale(tree):
  import jax
  import numpy as np

  return max([float(np.max(np.abs(x))) for x in jax.tree.leaves(_np(tree)) if x.size] + [0.0])


def _spec(x):
  return [None if s is None else str(s) for s in tuple(x.sharding.spec)]


def _compare(out, name, ref, got):
  worst, same = _diff(ref, got)
  out[f"{name}_max_abs_diff"] = worst
  out[f"{name}_bitwise"] = same
  out[f"{name}_scale"] = _scale(ref)
  out[f"{name}_max_ulp"] = _max_ulp(ref, got)


def _max_ulp(a, b):
  """The largest difference in units in the last place of the larger value (floats; 0 otherwise)."""
  import jax
  import numpy as np

  worst = 0.0
  for x, y in zip(jax.tree.leaves(_np(a)), jax.tree.leaves(_np(b))):
    if x.dtype.kind == "f" and x.size:
      ulp = np.spacing(np.maximum(np.abs(x), np.abs(y)).astype(x.dtype))
      with np.errstate(invalid="ignore"):
        worst = max(worst, float(np.nanmax(np.abs(x - y) / ulp)))
  return worst


# ----------------------------------------------------------------------------------------------------
# Scenarios; each returns a JSON-able dict
# ----------------------------------------------------------------------------------------------------


def scenario_mesh():
  import jax

  from unlearn_jax.runtime import distributed

  mesh = distributed.make_mesh()
  mesh2 = distributed.make_mesh(4, seeds=2)
  try:
    distributed.shard_data(__import__("numpy").ones(6), mesh)
    indivisible_error = None
  except ValueError as e:
    indivisible_error = str(e)
  return {
    "indivisible_error": indivisible_error,
    "num_devices": jax.device_count(),
    "mesh_shape": dict(mesh.shape),
    "mesh2_shape": dict(mesh2.shape),
    "platform": jax.devices()[0].platform,
  }


def scenario_per_example():
  """Per-example norms, inner products and the clipped sum: sharded vs one device (x64)."""
  import jax
  import numpy as np

  from unlearn_jax import per_example  # noqa
  from unlearn_jax.runtime import distributed

  params, data, loss_fn, _ = _problem(16, np.float64)
  n = 16

  def f(p, d):
    s, norms = per_example.clipped_grad_sum(loss_fn, p, d, 1.0, method="ghost")
    gbar = jax.tree.map(lambda a: a / n, s)
    return {
      "sum": s,
      "norms": norms,
      "inner": per_example.per_example_inner(loss_fn, p, d, gbar),
      "vmap_norms": per_example.per_example_grad_norms(loss_fn, p, d, method="vmap"),
    }

  jf = jax.jit(f)
  ref = jf(params, data)
  inputs = distributed.place_training_inputs(params, data, distributed.make_mesh())
  got = jf(inputs.params, inputs.data)
  out = {
    "norms_spec": _spec(got["norms"]),
    "sum_replicated": all(x.sharding.is_fully_replicated for x in jax.tree.leaves(got["sum"])),
  }
  for k in ref:
    _compare(out, k, ref[k], got[k])
  return out


# P(x, 4) after 12 steps of the n = 13 problem at the fixed denominator b = 13 of the certified
# full-batch filter: 104 to 142 (ten examples saturate at the clipped worst case 142.0), so this budget
# removes some examples and keeps others.
FULL_BATCH_BUDGET = 138.0


def _accounting(filter_budget=None):
  from unlearn_jax import accounting

  if filter_budget is None:
    return accounting.accountant([2.0, 4.0, 8.0])
  return accounting.accountant([2.0, 4.0, 8.0], filter_budget=filter_budget, filter_order=4.0)


def _train(loss_fn, params, data, *, mesh=None, data_mask=None, num_steps=12, dtype_name="float64", **kwargs):
  import jax

  from unlearn_jax import runtime as loops

  kw = dict(
    num_steps=num_steps,
    key=jax.random.key(3),
    step_size=0.2,
    temperature=1e-4,
    progress=False,
    steps_per_chunk=num_steps,
    data_mask=data_mask,
  )
  if mesh is not None:
    kw["mesh"] = mesh
  kw.update(kwargs)
  return loops.train(loss_fn, params, data, **kw)


def _loops_has_mesh():
  import inspect

  from unlearn_jax import runtime as loops

  return "mesh" in inspect.signature(loops.train).parameters


def _sharded_train(loss_fn, params, data, mesh, *, data_mask=None, **kwargs):
  """Training on ``mesh``; returns (result, unpadded ledger, padded state ledger, path).

  Through ``loops.train(mesh=...)`` when it exists, else with inputs placed by
  ``distributed.place_training_inputs`` and passed to the unchanged driver.
  """
  import jax.numpy as jnp

  from unlearn_jax.runtime import distributed

  if _loops_has_mesh():
    res = _train(loss_fn, params, data, mesh=mesh, data_mask=data_mask, **kwargs)
    return res, res.ledger, res.state.ledger, "loops_mesh"
  inputs = distributed.place_training_inputs(params, data, mesh)
  mask = inputs.data_mask
  if data_mask is not None:
    user_mask, _ = distributed.pad_to_multiple(jnp.asarray(data_mask, mask.dtype), len(mask))
    mask = distributed.shard_data(mask * user_mask, mesh)
  res = _train(loss_fn, inputs.params, inputs.data, data_mask=mask, **kwargs)
  ledger = res.ledger
  unpadded = None if ledger is None else distributed.unpad(ledger, inputs.num_examples)
  return res, unpadded, ledger, "preplaced"


def _train_scenario(n, dtype_name, **kwargs):
  import numpy as np

  from unlearn_jax.runtime import distributed

  dtype = np.dtype(dtype_name)
  params, data, loss_fn, _ = _problem(n, dtype)
  ref = _train(loss_fn, params, data, **kwargs)
  mesh = distributed.make_mesh()
  got, got_ledger, state_ledger, path = _sharded_train(loss_fn, params, data, mesh, **kwargs)
  out = {"path": path, "n": n, "dtype": dtype_name}
  _compare(out, "params", ref.params, got.params)
  _compare(out, "loss_history", ref.history["loss"], got.history["loss"])
  if "privacy_loss_mean" in ref.history:  # a mean over examples: padding rows must not dilute it
    _compare(out, "privacy_loss_mean", ref.history["privacy_loss_mean"], got.history["privacy_loss_mean"])
  if ref.ledger is not None:
    _compare(out, "realized", ref.ledger.realized, got_ledger.realized)
    _compare(out, "worst_case", ref.ledger.worst_case, got_ledger.worst_case)
    _compare(out, "active", ref.ledger.active, got_ledger.active)
    out["realized_shape"] = list(np.shape(got_ledger.realized))
    out["ref_realized_shape"] = list(np.shape(ref.ledger.realized))
    out["num_inactive"] = int(np.sum(~np.asarray(ref.ledger.active)))
    out["num_active"] = int(np.sum(np.asarray(ref.ledger.active)))
    out["ref_realized_min"] = float(np.min(np.asarray(ref.ledger.realized)))
    out["flags_equal"] = all(
      bool(np.asarray(getattr(ref.ledger, f)) == np.asarray(getattr(got_ledger, f)))
      for f in ("num_steps", "num_accounted", "finite", "certified", "exact")
    )
    out["state_realized_spec"] = _spec(state_ledger.realized)
    out["state_active_spec"] = _spec(state_ledger.active)
    out["state_realized_num_devices"] = len(state_ledger.realized.sharding.device_set)
    out["state_realized_rows"] = int(np.shape(state_ledger.realized)[0])
    padded_rows = np.asarray(state_ledger.realized)[n:]
    out["padding_rows_zero"] = bool(np.all(padded_rows == 0)) if padded_rows.size else None
  out["params_replicated"] = all(
    x.sharding.is_fully_replicated for x in __import__("jax").tree.leaves(got.state.params)
  )
  return out


def scenario_train_x64():
  return _train_scenario(16, "float64", accounting=_accounting(), clip_norm=1.0)


def scenario_train_f32():
  return _train_scenario(16, "float32", accounting=_accounting(), clip_norm=1.0)


def scenario_train_padded():
  return _train_scenario(14, "float64", accounting=_accounting(), clip_norm=1.0)


def scenario_train_filter_padded():
  return _train_scenario(13, "float64", accounting=_accounting(filter_budget=FULL_BATCH_BUDGET), clip_norm=1.0)


def scenario_train_poisson_padded():
  return _train_scenario(14, "float64", accounting=_accounting(), clip_norm=1.0, mode="poisson", sampling_rate=0.5)


def scenario_unlearn_padded():
  """loops.unlearn on a retain set (forget rows masked out), n = 14 on 4 devices, x64."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from unlearn_jax import runtime as loops  # noqa
  from unlearn_jax.runtime import distributed

  n = 14
  params, data, loss_fn, _ = _problem(n, np.float64)
  retain = np.ones(n)
  retain[[1, 5, 9]] = 0.0
  kw = dict(
    method="sgld",
    key=jax.random.key(7),
    step_size=0.2,
    temperature=1e-4,
    record_steps=(0, 4, 10),
    clip_norm=1.0,
    progress=False,
    steps_per_chunk=10,
  )
  ref = loops.unlearn(loss_fn, params, data, data_mask=retain, **kw)
  mesh = distributed.make_mesh()
  if "mesh" in __import__("inspect").signature(loops.unlearn).parameters:
    got = loops.unlearn(loss_fn, params, data, data_mask=retain, mesh=mesh, **kw)
    path = "loops_mesh"
  else:
    inputs = distributed.place_training_inputs(params, data, mesh)
    mask, _ = distributed.pad_to_multiple(jnp.asarray(retain), 4)
    got = loops.unlearn(
      loss_fn, inputs.params, inputs.data, data_mask=distributed.shard_data(mask * inputs.data_mask, mesh), **kw
    )
    path = "preplaced"
  out = {"path": path}
  _compare(out, "recorded_params", ref.params, got.params)
  return out


def scenario_seeds():
  """4 vmapped chains on a (seeds=2, data=2) mesh vs one device (x64)."""
  import numpy as np

  from unlearn_jax.runtime import distributed

  if not _loops_has_mesh():
    return {"skipped": "loops.train has no mesh argument yet"}
  n = 10
  params, data, loss_fn, _ = _problem(n, np.float64)
  kw = dict(accounting=_accounting(), clip_norm=1.0, num_seeds=4)
  ref = _train(loss_fn, params, data, **kw)
  mesh = distributed.make_mesh(4, seeds=2)
  got = _train(loss_fn, params, data, mesh=mesh, **kw)
  out = {"path": "loops_mesh"}
  _compare(out, "params", ref.params, got.params)
  _compare(out, "realized", ref.ledger.realized, got.ledger.realized)
  out["realized_shape"] = list(np.shape(got.ledger.realized))
  out["state_realized_spec"] = _spec(got.state.ledger.realized)
  out["state_params_spec"] = _spec(__import__("jax").tree.leaves(got.state.params)[0])
  return out


def scenario_metrics():
  """Difficulty metrics, Spearman and the loss barrier on sharded inputs vs one device (x64)."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from unlearn_jax import evaluate as evaluation  # noqa
  from unlearn_jax.evaluate import metrics, statistics  # noqa
  from unlearn_jax.runtime import distributed

  n = 16
  params, data, loss_fn, apply_fn = _problem(n, np.float64)
  params = jax.tree.map(lambda a: 3.0 * a, params)
  x, _ = data
  # Labels the model gets right, and the same function with every weight's sign flipped (tanh is odd):
  # equal endpoint losses and zero weights half-way, so the loss barrier is clearly positive.
  y = np.asarray(jnp.argmax(jax.vmap(apply_fn, in_axes=(None, 0))(params, x), axis=-1)).astype(np.int32)
  y[:3] = (y[:3] + 1) % 3  # a few wrong ones, so that losses and confidences spread
  other = jax.tree.map(lambda a: -a, params)
  seeds = jax.tree.map(lambda a: np.stack([a, 0.9 * a, 1.1 * a]), params)  # 3 "seeds"
  score = np.random.default_rng(1).normal(size=n)

  def f(p, ps, q, x, y, s):
    losses = metrics.per_example_loss(apply_fn, p, x, y)
    return {
      "loss": losses,
      "confidence": metrics.confidence(apply_fn, p, x, y),
      "el2n": metrics.el2n(apply_fn, ps, x, y),
      "grand": metrics.grand(loss_fn, ps, (x, y)),
      "spearman": statistics.spearman(losses, s),
      "barrier": evaluation.loss_barrier(loss_fn, p, q, (x, y), num_points=5)[0],
    }

  jf = jax.jit(f)
  ref = jf(params, seeds, other, x, y, score)
  mesh = distributed.make_mesh()
  (sx, sy, ss) = distributed.shard_data((x, y, score), mesh)
  got = jf(
    distributed.replicate(params, mesh),
    distributed.replicate(seeds, mesh),
    distributed.replicate(other, mesh),
    sx,
    sy,
    ss,
  )
  out = {"loss_spec": _spec(got["loss"]), "ref_spearman": float(ref["spearman"]), "ref_barrier": float(ref["barrier"])}
  for k in ref:
    _compare(out, k, ref[k], got[k])
  return out


BLOCKS = 8  # reduction_blocks of the bitwise checks: 2 x the largest device count (see docs/distributed.md)


def _blocks_scenario(filter_budget, extra_runs=(), dtype="float64", **kwargs):
  """``reduction_blocks=8``: one device (no mesh) vs meshes of 1, 2 and 4 devices; n = 13 (padded to 16).

  ``extra_runs``: names of further runs compared with the same reference: "r4_on_4" (reduction_blocks=4
  on 4 devices: one block per device), "off_4" (the default reduction order on 4 devices); neither is
  expected to be bitwise.
  """
  import numpy as np

  from unlearn_jax.runtime import distributed

  n = 13
  params, data, loss_fn, _ = _problem(n, np.dtype(dtype))
  kw = dict(accounting=_accounting(filter_budget=filter_budget), clip_norm=1.0, **kwargs)

  def values(res):
    return {
      "params": res.params,
      "loss_history": res.history["loss"],
      "grad_norm": res.history["grad_norm"],
      "privacy_loss_mean": res.history["privacy_loss_mean"],
      "realized": res.ledger.realized,
      "worst_case": res.ledger.worst_case,
      "active": res.ledger.active,
    }

  ref = _train(loss_fn, params, data, reduction_blocks=BLOCKS, **kw)
  ref_v = values(ref)
  out = {
    "n": n,
    "num_inactive": int(np.sum(~np.asarray(ref.ledger.active))),
    "num_active": int(np.sum(np.asarray(ref.ledger.active))),
    "realized_scale": _scale(ref.ledger.realized),
  }
  runs = {
    f"on_{d}": _train(loss_fn, params, data, mesh=distributed.make_mesh(d), reduction_blocks=BLOCKS, **kw)
    for d in (1, 2, 4)
  }
  if "r4_on_4" in extra_runs:
    runs["r4_on_4"] = _train(loss_fn, params, data, mesh=distributed.make_mesh(4), reduction_blocks=4, **kw)
  if "off_4" in extra_runs:
    runs["off_4"] = _train(loss_fn, params, data, mesh=distributed.make_mesh(4), **kw)
  for name, res in runs.items():
    got = values(res)
    for k in ref_v:
      _compare(out, f"{name}_{k}", ref_v[k], got[k])
    out[f"{name}_flags_equal"] = all(
      bool(np.asarray(getattr(ref.ledger, f)) == np.asarray(getattr(res.ledger, f)))
      for f in ("num_steps", "num_accounted", "finite", "certified", "exact")
    )
  out["on_4_state_rows"] = int(np.shape(runs["on_4"].state.ledger.realized)[0])
  out["on_4_state_realized_spec"] = _spec(runs["on_4"].state.ledger.realized)
  out["on_4_state_realized_num_devices"] = len(runs["on_4"].state.ledger.realized.sharding.device_set)
  return out


def scenario_blocks_full_batch():
  return _blocks_scenario(FULL_BATCH_BUDGET)


def scenario_blocks_poisson():
  return _blocks_scenario(500.0, mode="poisson", sampling_rate=0.5)


def scenario_blocks_f32():
  return _blocks_scenario(FULL_BATCH_BUDGET, dtype="float32")


# The default (fast) set run by tests/test_distributed.py; the others are its slow tests.
FAST = ("mesh", "train_filter_padded", "unlearn_padded", "metrics", "blocks_full_batch")
SLOW = (
  "per_example",
  "train_x64",
  "train_f32",
  "train_padded",
  "train_poisson_padded",
  "seeds",
  "blocks_poisson",
  "blocks_f32",
)

SCENARIOS = {
  "blocks_f32": scenario_blocks_f32,
  "blocks_full_batch": scenario_blocks_full_batch,
  "blocks_poisson": scenario_blocks_poisson,
  "mesh": scenario_mesh,
  "per_example": scenario_per_example,
  "train_x64": scenario_train_x64,
  "train_f32": scenario_train_f32,
  "train_padded": scenario_train_padded,
  "train_filter_padded": scenario_train_filter_padded,
  "train_poisson_padded": scenario_train_poisson_padded,
  "unlearn_padded": scenario_unlearn_padded,
  "seeds": scenario_seeds,
  "metrics": scenario_metrics,
}


def main(argv):
  _setup()
  out_path = argv[1]
  names = argv[2:] or list(SCENARIOS)
  results = {}
  for name in names:
    t0 = time.perf_counter()
    try:
      results[name] = SCENARIOS[name]()
    except Exception as e:  # reported to the test, which fails on it
      results[name] = {"error": f"{type(e).__name__}: {e}", "traceback": traceback.format_exc()}
    results[name]["seconds"] = round(time.perf_counter() - t0, 2)
  with open(out_path, "w") as f:
    json.dump(results, f, indent=1)


if __name__ == "__main__":
  main(sys.argv)
