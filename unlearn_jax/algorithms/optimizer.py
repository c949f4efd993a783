"""Training driven by any optax optimizer, with the per-instance ledger at an assumed temperature.

The step computes the full-batch mean gradient over the (masked) data — clipped per example at
``clip_norm`` when one is given, so that the optimizer sees the gradient the ledger accounts for — and
hands it to the optimizer together with the step's key (``optimizer.update(g, state, params,
key=step_key)``): stochastic transforms such as :func:`~unlearn_jax.algorithms.update.langevin_noise`
then draw their noise from the run's key and seed. With ``accounting`` the §2a costs are evaluated at
θ_t with the *assumed* ``accounting_temperature`` and ``step_size`` (theory §1: noise-free training; the
ranking of examples by the full-batch loss does not depend on τ). They describe an SGD step of that
size; for any other optimizer the ledger says so (``accounting.ledger_notes``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import optax
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax import accounting as acc
from unlearn_jax.algorithms.base import Algorithm, StepInfo, check_static_positive
from unlearn_jax.per_example import api as pe
from unlearn_jax.per_example import blocks

__all__ = ["OptimizerState", "optax_training"]

PyTree = Any


class OptimizerState(NamedTuple):
  """State of optax-driven training."""

  params: PyTree
  opt_state: PyTree
  step: jax.Array
  ledger: Any


def _structure(optimizer: optax.GradientTransformation) -> str:
  """A process-independent description of an optimizer: the tree structure of its state."""
  state = jax.eval_shape(optimizer.init, jnp.zeros((1,)))
  return str(jax.tree.structure(state))


def _check_arguments(optimizer, accounting, norm_method) -> None:
  if not isinstance(optimizer, optax.GradientTransformation):
    raise TypeError(f"optimizer must be an optax.GradientTransformation, got {optimizer!r}")
  if accounting is not None:
    if not isinstance(accounting, acc.AccountingConfig):
      raise TypeError(f"accounting must be an AccountingConfig or None, got {type(accounting).__name__}")
    if accounting.uses_filter:
      raise ValueError(
        "the individual Renyi filter (filter_budget) needs the SGLD algorithm; it is not supported with optimizer=..."
      )
    if accounting.stride == "epoch":
      raise ValueError("accounting stride='epoch' needs a minibatch mode of sgld; give the optax route a number")
  _checks.check_choice("norm_method", norm_method, pe.NORM_METHODS)


def _gradient(loss_fn, params, data, w, count, clip, plain: bool, norm_method, chunk_size):
  """(1/count) Σ_i w_i clip(∇ℓ_i) with the per-example quantities it needs (a plain vjp without clipping
  or accounting): ``(losses, ghat, ops, norms, factors)``, the last three None when plain."""
  if plain:
    losses, vjp = jax.vjp(lambda p: jax.vmap(loss_fn, in_axes=(None, 0))(p, data), params)
    return losses, vjp(w / count)[0], None, None, None
  ops = blocks.example_ops(loss_fn, params, data, w.shape[0], None, norm_method, chunk_size)
  norms = ops.norms().astype(w.dtype)
  factors = pe.clip_factors(norms, clip)
  losses, ghat = ops.grads(w * factors / count)
  return losses, ghat, ops, norms, factors


def _or(value, default):
  return default if value is None else value


def _account(accounting: acc.AccountingConfig, state: OptimizerState, evaluate: Callable, shape, dtype):
  """``(ledger, costs, worst)`` after this step: ``evaluate() -> (costs (n, K), worst (K,))`` charged at
  every ``stride``-th step with weight ``stride``; the other steps only count (``ledger_skip``)."""
  stride = accounting.stride

  def charge():
    costs, worst = evaluate()
    return acc.ledger_update(state.ledger, costs, worst, weight=stride, config=accounting), costs, worst

  if stride == 1:
    return charge()
  zeros = (jnp.zeros(shape, dtype), jnp.zeros(shape[-1:], dtype))
  return jax.lax.cond(state.step % stride == 0, charge, lambda: (acc.ledger_skip(state.ledger), *zeros))


def _make_init(opt, accounting) -> Callable:
  def init(params: PyTree, num_examples: int, *, key: jax.Array | None = None) -> OptimizerState:
    del key
    ledger = None if accounting is None else acc.ledger_init(num_examples, accounting)
    return OptimizerState(params, opt.init(params), jnp.zeros((), jnp.int32), ledger)

  return init


def _make_step(loss_fn, opt, accounting, default_clip, norm_method, chunk_size) -> Callable:
  def step(
    state: OptimizerState,
    data: PyTree,
    key: jax.Array,
    step_size: ArrayLike,
    temperature: ArrayLike = 0.0,
    *,
    data_mask: ArrayLike | None = None,
    accounting_temperature: ArrayLike | None = None,
    clip_norm: ArrayLike | None = None,
  ) -> tuple[OptimizerState, StepInfo]:
    del temperature
    n = _checks.check_batch(data, name="data")
    if accounting is not None and accounting_temperature is None:
      raise ValueError("accounting with an optimizer needs accounting_temperature (the assumed τ > 0)")
    params = state.params
    dtype = jnp.result_type(*[jnp.result_type(x) for x in jax.tree.leaves(params)], float)
    w = jnp.ones((n,), dtype) if data_mask is None else jnp.asarray(data_mask, dtype)
    count = jnp.maximum(jnp.sum(w), 1.0)
    clip = _or(clip_norm, default_clip)
    clip = jnp.asarray(jnp.inf if clip is None else clip, dtype)
    plain = accounting is None and clip_norm is None and default_clip is None
    grad = _gradient(loss_fn, params, data, w, count, clip, plain, norm_method, chunk_size)
    losses, ghat, ops, norms, factors = grad
    mean_norm = None if norms is None else jnp.sum(norms * w) / count
    ledger, costs, worst = state.ledger, None, None
    if accounting is not None:
      kw = dict(
        clip_norm=clip,
        orders=accounting.orders,
        step_size=jnp.asarray(step_size, dtype),
        temperature=jnp.asarray(accounting_temperature, dtype),
      )
      evaluate = lambda: acc.mean_step_costs(ops, norms, factors, w, ghat, **kw)[:2]  # noqa: E731
      ledger, costs, worst = _account(accounting, state, evaluate, (n, len(accounting.orders)), dtype)
    updates, opt_state = opt.update(ghat, state.opt_state, params, key=key)
    new_params = optax.apply_updates(params, updates)
    info = StepInfo(
      loss=jnp.sum(w * losses) / count,
      mean_grad_norm=mean_norm,
      grad_norms=norms,
      batch_mask=w,
      noise_norm=None,
      costs=costs,
      worst_case_cost=worst,
    )
    return OptimizerState(new_params, opt_state, state.step + 1, ledger), info

  return step


def optax_training(
  loss_fn: Callable,
  optimizer: optax.GradientTransformation,
  *,
  accounting: acc.AccountingConfig | None = None,
  clip_norm: float | None = None,
  description: str | None = None,
  norm_method: str = "auto",
  chunk_size: int | None = None,
) -> Algorithm:
  """Full-batch training with an optax optimizer as an :class:`~unlearn_jax.algorithms.base.Algorithm`.

  ``step(state, data, key, step_size, temperature=0.0, *, data_mask=None, accounting_temperature=None,
  clip_norm=None)``: ``step_size`` and ``accounting_temperature`` are the η and τ the ledger assumes
  (the optimizer has its own learning rate); ``temperature`` is ignored (the optimizer adds whatever
  noise it adds).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for ONE example.
    optimizer: an optax ``GradientTransformation``.
    accounting: an ``accounting.AccountingConfig`` (no filter), or None.
    clip_norm: default per-example clip norm of the gradient the optimizer sees (None: unclipped).
    description: a name of the optimizer and its settings for checkpoint fingerprints (e.g.
      ``"adam(1e-3)"``); default: the structure of its state, which does not see hyperparameters —
      give one when two runs differ only in those.
    norm_method: per-example norm method of the clipping and the ledger.
    chunk_size: examples per chunk of the per-example computations.

  Returns:
    An Algorithm named ``"optax"``.

  Raises:
    TypeError: ``optimizer`` is not an optax transformation, or ``accounting`` not a config.
    ValueError: an accounting config with the individual filter or ``stride="epoch"`` (both need the
      SGLD step).

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> alg = optax_training(loss_fn, optax.sgd(0.5), description="sgd(0.5)")
    >>> data = (jnp.array([[1.0], [2.0]]), jnp.array([2.0, 4.0]))
    >>> state, info = alg.step(alg.init(jnp.zeros(1), 2), data, jax.random.key(0), 0.5)
    >>> state.params.tolist(), float(info.loss)   # w = 0.5 * mean(x y) = 0.5 * 5
    ([2.5], 5.0)
  """
  _check_arguments(optimizer, accounting, norm_method)
  default_clip = check_static_positive("clip_norm", clip_norm)
  opt = optax.with_extra_args_support(optimizer)

  init = _make_init(opt, accounting)
  step = _make_step(loss_fn, opt, accounting, default_clip, norm_method, chunk_size)

  settings = {
    "accounting": None if accounting is None else tuple(accounting),
    "clip_norm": default_clip,
    "optimizer": description or _structure(optimizer),
    "norm_method": norm_method,
    "chunk_size": chunk_size,
  }
  return Algorithm(
    init=init, step=step, name="optax", settings=tuple(sorted(settings.items())), callables=(loss_fn, optimizer)
  )
