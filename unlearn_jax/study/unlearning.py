"""The unlearning stage of the study: for each forget set, the retrained oracles, every unlearning method,
and their evaluation against the oracles (theory §4, §6), as typed results.
"""

from __future__ import annotations

import math
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import _compile, accounting, certify, evaluate, runtime
from unlearn_jax._compile import call
from unlearn_jax.study.stages import Certificates, Context, ForgetSet, Setup, Trained, progress_bar, seeded

__all__ = ["MethodResult", "SetResult", "unlearn_forget_sets"]

PyTree = Any


class OracleEval(NamedTuple):
  """The oracles of one forget set, evaluated on it."""

  params: PyTree  # (R, ...)
  scores: jax.Array  # (R, m) logit-scaled confidences
  floor: jax.Array  # noise-floor distances
  barrier: float  # mean oracle-vs-oracle loss barrier
  accuracy: float  # mean forget-set accuracy


class MethodResult(NamedTuple):
  """One unlearning method on one forget set."""

  method: str
  empirical_steps: float
  median_distance: np.ndarray  # (G,) along the grid
  floor_threshold: float
  barriers: np.ndarray  # (G,) unlearned vs oracle, along the grid
  loss_barrier: float  # original vs oracle
  forget_accuracy: float  # of the unlearned models at the grid's end
  membership_lower_bound: np.ndarray | None
  membership_point_estimate: np.ndarray | None
  certified_epsilon: float | None
  params: PyTree  # (R, ...) the unlearned chains at the grid's end (host arrays)
  distances: np.ndarray  # (G, m) per-example unlearned-vs-oracle distance along the grid


class SetResult(NamedTuple):
  """Everything measured on one forget set."""

  forget_set: ForgetSet
  mean_privacy_loss: float
  group_privacy_loss: float | None  # the group bound P(F, 4α) (full batch only)
  group_factor: float | None
  certified_steps: float | None  # k* of the set from the group bound
  certified_steps_median: float  # median of its examples' k*(x)
  worst_case_steps: float
  oracle: OracleEval
  overlap_with_top: int | None
  methods: tuple[MethodResult, ...]


def _evaluate_oracle_core(apply_fn, loss_fn, num_points, oracle, xf, yf, key):
  scores = evaluate.logit_confidence(apply_fn, oracle, xf, yf)
  floor = evaluate.noise_floor(scores, key, num_splits=8)
  pair = jax.tree.map(lambda leaf: jnp.roll(leaf, 1, axis=0), oracle)
  barrier, _ = evaluate.barriers_along(
    loss_fn, jax.tree.map(lambda leaf: leaf[None], oracle), pair, (xf, yf), num_points=num_points, paired_seeds=True
  )
  accuracy = evaluate.accuracy_and_loss(apply_fn, oracle, xf, yf, seed_axis=True)[0]
  return scores, floor, jnp.mean(barrier), jnp.mean(accuracy)


def _evaluate_method_core(
  apply_fn, loss_fn, num_points, grid, percentile, membership, delta, recorded, oracle, oracle_scores, floor, xf, yf
):
  scores_g = evaluate.scores_along(apply_fn, recorded, xf, yf)  # (G, R, m)
  steps = evaluate.empirical_steps_to_unlearn(
    np.asarray(grid), scores_g, oracle_scores, floor=floor, percentile=percentile
  )
  barriers, _ = evaluate.barriers_along(loss_fn, recorded, oracle, (xf, yf), num_points=num_points, paired_seeds=True)
  last = jax.tree.map(lambda leaf: leaf[-1], recorded)
  acc = evaluate.accuracy_and_loss(apply_fn, last, xf, yf, seed_axis=True)[0]
  out = {
    "steps": steps.steps,
    "distances": jax.vmap(lambda s: evaluate.gaussian_symmetric_kl(s, oracle_scores))(scores_g),  # (G, m)
    "median": steps.median_distances,
    "threshold": steps.threshold,
    "barriers": jnp.mean(barriers, axis=1),
    "acc_f": jnp.mean(acc),
  }
  if membership:
    out["membership_lower_bound"] = evaluate.membership_lower_bound(scores_g[-1], oracle_scores, delta=delta)
    out["membership_point_estimate"] = evaluate.membership_epsilon(scores_g[-1], oracle_scores, delta=delta)
  return out


def _oracles(ctx: Context, s: Setup, mask: jax.Array, f_idx: int, xf, yf, bar) -> OracleEval:
  uc, tr, ec = ctx.config.unlearning, ctx.config.training, ctx.config.evaluation
  steps = uc.retrain_steps or tr.num_steps
  oracle = seeded(
    runtime.retrain,
    num_seeds=uc.num_seeds,
    key=ctx.keys["oracle"],
    vmap_seeds=ctx.config.vmap_seeds,
    bar=bar,
    pick=lambda res: res.state.params,
    loss_fn=s.loss_fn,
    init_fn=s.init_fn,
    retain_data=s.train_data,
    num_steps=steps,
    step_size=tr.step_size,
    temperature=tr.temperature,
    data_mask=mask,
    steps_per_chunk=max(1, min(100, steps)),
    history_stride=max(1, steps // 10),
    **s.step,
  )
  ctx.tick("oracles")
  scores, floor, barrier, acc = call(
    _evaluate_oracle_core,
    (s.apply_fn, s.loss_fn, ec.barrier_points),
    oracle,
    xf,
    yf,
    jax.random.fold_in(ctx.keys["floor"], f_idx),
  )
  return OracleEval(oracle, scores, floor, float(barrier), float(acc))


def _certified_epsilon(ctx: Context, certs: Certificates, group_all: np.ndarray) -> float:
  """The (ε, δ) certificate of a forget set after the grid's steps of SGLD (group bound, theory §3, §4)."""
  pv, ec, grid_end = ctx.config.privacy, ctx.config.evaluation, ctx.config.unlearning.step_grid[-1]
  half = [a / 4 for a in pv.orders if any(math.isclose(a / 4, b) for b in pv.orders) and a / 4 > 1]
  c = dict(certs.constants)
  del c["alpha"]
  rdp = np.array(
    [float(certify.unlearning_bound(group_all[_index(pv.orders, 4 * a)], grid_end, alpha=a, **c)) for a in half]
  )
  return float(accounting.rdp_to_dp(jnp.asarray(rdp), half, ec.delta)[0])


def _index(orders, value) -> int:
  return next(i for i, a in enumerate(orders) if math.isclose(a, value))


def _has_certified_epsilon(ctx: Context) -> bool:
  orders = ctx.config.privacy.orders
  return any(any(math.isclose(a / 4, b) for b in orders) and a / 4 > 1 for a in orders)


def _unlearn_kwargs(ctx: Context, s: Setup, certs: Certificates, mask, method: str) -> dict:
  """The arguments of ``runtime.unlearn`` for one method: the training's step settings, the step grid."""
  uc, tr = ctx.config.unlearning, ctx.config.training
  grid = list(uc.step_grid)
  kwargs = dict(
    loss_fn=s.loss_fn,
    retain_data=s.train_data,
    method=method,
    step_size=certs.constants["step_size"],
    record_steps=grid,
    clip_norm=s.step["clip_norm"],
    weight_decay=tr.weight_decay,
    projection_radius=s.step["projection_radius"],
    data_mask=mask,
    steps_per_chunk=max(1, min(100, grid[-1] or 1)),
    history_stride=max(1, (grid[-1] or 1) // 10),
    batch_size=tr.batch_size if tr.mode == "shuffled" else None,  # fine-tune as the model was trained
    **uc.options(method),
  )
  if method == "sgld":
    kwargs["temperature"] = certs.constants["temperature"]
  return kwargs


def _original_barrier(s: Setup, ec, start_params, oracle: OracleEval, xf, yf) -> float:
  """The loss barrier between the trained models (before unlearning) and the oracles, seed-paired."""
  orig_b, _ = evaluate.barriers_along(
    s.loss_fn,
    jax.tree.map(lambda leaf: leaf[None], start_params),
    oracle.params,
    (xf, yf),
    num_points=ec.barrier_points,
    paired_seeds=True,
  )
  return float(np.mean(np.asarray(orig_b)))


def _method(
  ctx: Context,
  s: Setup,
  certs: Certificates,
  start_params,
  oracle: OracleEval,
  mask,
  xf,
  yf,
  m_idx: int,
  method: str,
  group_all,
  bar,
) -> MethodResult:
  uc, ec = ctx.config.unlearning, ctx.config.evaluation
  grid = list(uc.step_grid)
  kwargs = _unlearn_kwargs(ctx, s, certs, mask, method)
  recorded = seeded(
    runtime.unlearn,
    num_seeds=uc.num_seeds,
    key=jax.random.fold_in(ctx.keys["unlearn"], m_idx),
    vmap_seeds=ctx.config.vmap_seeds,
    bar=bar,
    per_seed_params=start_params,
    params_arg="params",
    pick=lambda res: res.recorded,
    **kwargs,
  )
  if not ctx.config.vmap_seeds:  # (R, G, ...) -> (G, R, ...)
    recorded = _compile.swap_leading_axes(recorded)
  ctx.tick("unlearn")
  ev = jax.device_get(
    call(
      _evaluate_method_core,
      (s.apply_fn, s.loss_fn, ec.barrier_points, tuple(grid), 100 * ec.floor_quantile, ec.membership, ec.delta),
      recorded,
      oracle.params,
      oracle.scores,
      oracle.floor,
      xf,
      yf,
    )
  )
  barriers = np.asarray(ev["barriers"], dtype=np.float64)
  original = float(barriers[0]) if grid[0] == 0 else _original_barrier(s, ec, start_params, oracle, xf, yf)
  lower = point = cert_eps = None
  if ec.membership:
    lower = np.asarray(ev["membership_lower_bound"], dtype=np.float64)
    point = np.asarray(ev["membership_point_estimate"], dtype=np.float64)
    if method == "sgld" and group_all is not None and _has_certified_epsilon(ctx):
      cert_eps = _certified_epsilon(ctx, certs, group_all)
  result = MethodResult(
    method,
    float(ev["steps"]),
    np.asarray(ev["median"], dtype=np.float64),
    float(ev["threshold"]),
    barriers,
    original,
    float(ev["acc_f"]),
    lower,
    point,
    cert_eps,
    jax.device_get(_compile.take(recorded, -1)),
    np.asarray(ev["distances"], dtype=np.float64),
  )
  ctx.tick("evaluate")
  return result


def _group(ctx: Context, certs: Certificates, trained: Trained, idx: np.ndarray):
  """(group P at every order, P(F, 4α), factor, certified steps) — theory §3's bound is full batch only."""
  if ctx.config.training.mode != "full_batch":
    return None, None, None, None
  fixed = ctx.config.privacy.filter_budget is not None  # the certified full-batch filter divides by a fixed b = n
  group_all = np.asarray(accounting.group_privacy_loss(trained.realized_mean, idx, fixed_denominator=fixed))
  group_p4 = float(group_all[certs.order_index])
  steps = float(certify.steps_to_unlearn(jnp.asarray(group_p4), ctx.config.privacy.epsilon, **certs.constants))
  return group_all, group_p4, accounting.group_factor(certs.num_examples, int(idx.size), fixed_denominator=fixed), steps


def unlearn_forget_sets(
  ctx: Context, s: Setup, trained: Trained, certs: Certificates, forget_sets: list[ForgetSet]
) -> tuple[list[SetResult], PyTree]:
  """Stage 5: oracles, unlearning by every method and their evaluation, forget set by forget set."""
  uc, tr = ctx.config.unlearning, ctx.config.training
  R = uc.num_seeds
  start_params = _compile.take(trained.params, np.arange(R) % tr.num_seeds)  # (R, ...)
  top = {fs.label: fs.indices for fs in forget_sets}.get("privacy_loss:top")
  retrain_steps = uc.retrain_steps or tr.num_steps
  grid_end = uc.step_grid[-1]
  per_set = retrain_steps + len(uc.methods) * grid_end
  bar = progress_bar(ctx, R, len(forget_sets) * per_set, "oracles and unlearning")
  results = []
  for f_idx, fs in enumerate(forget_sets):
    idx = fs.indices
    ctx.stage(
      f"forget set {f_idx + 1}/{len(forget_sets)} ({fs.label}, {idx.size} examples): {R} oracle(s) x "
      f"{retrain_steps} steps, methods {', '.join(uc.methods)} x {grid_end} steps"
    )
    mask = s.as_mask(jnp.ones((s.num_examples,), jnp.float32).at[jnp.asarray(idx)].set(0.0))
    xf, yf = s.x[idx], s.y[idx]
    oracle = _oracles(ctx, s, mask, f_idx, xf, yf, bar)
    group_all, group_p4, factor, cert_steps = _group(ctx, certs, trained, idx)
    methods = tuple(
      _method(ctx, s, certs, start_params, oracle, mask, xf, yf, m_idx, method, group_all, bar)
      for m_idx, method in enumerate(uc.methods)
    )
    results.append(
      SetResult(
        fs,
        float(np.mean(certs.privacy_loss[idx])),
        group_p4,
        factor,
        cert_steps,
        float(np.median(certs.certified_steps[idx])),
        certs.worst_case_steps(ctx.config.privacy.epsilon, int(idx.size)),
        oracle,
        None if top is None else int(np.intersect1d(idx, top).size),
        methods,
      )
    )
  if bar:
    bar.close()
  return results, start_params
