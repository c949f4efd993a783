"""The compiled programs of a run: the initialisation and a chunk of scanned steps, for any Algorithm.

Two jitted functions, the only jit sites of the drivers: :func:`init_states` builds the initial state of
every chain, :func:`run_chunk` runs ``chunk_len`` steps of an :class:`~unlearn_jax.algorithms.Algorithm`
in a ``lax.scan`` and returns the per-step history scalars. The chunk takes its first and last step as
array arguments and skips the steps past the last one with ``lax.cond``, so chunk boundaries can be
placed anywhere (recorded steps, checkpoints, the end) without recompiling, and the arithmetic of every
step is the same however a run is cut into chunks. The algorithm, the evaluation function, the seed
count, the chunk length, the history stride and the mesh are static arguments: calls with equal ones
(an algorithm built twice with the same settings and loss function is equal) share one compiled
program — across seeds, forget sets and drivers — through ``jax.jit``'s own cache.

Keys: step t of a chain uses ``fold_in(chain_key, t)``; with ``num_seeds`` = R the chains run in one
vmapped call. Parameters initialised from a key (``init_params_fn``) use ``fold_in(chain_key,
INIT_TAG)``, a tag no step index reaches.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp

from unlearn_jax import _loops
from unlearn_jax.algorithms.base import Algorithm, StepInfo
from unlearn_jax.per_example.blocks import fixed_order_sum
from unlearn_jax.runtime import distributed

__all__ = ["INIT_TAG", "init_states", "private_copy", "run_chunk", "straight_line"]

PyTree = Any
INIT_TAG = 0xFFFFFFFF  # fold_in tag of the initialisation key; no step index reaches it


def _on_mesh(state, mesh, num_seeds):
  """Keeps a state on ``mesh``: its ledger split along examples, the rest replicated."""
  if mesh is None:
    return state
  return distributed.shard_state(state, mesh, seed_axis=num_seeds is not None)


def _num_examples(data) -> int:
  return jax.tree.leaves(data)[0].shape[0]


@functools.partial(jax.jit, static_argnames=("algorithm", "init_params_fn", "num_seeds", "params_per_seed", "mesh"))
def init_states(
  params: PyTree,
  data: PyTree,
  keys: jax.Array,
  *,
  algorithm: Algorithm,
  init_params_fn: Callable | None,
  num_seeds: int | None,
  params_per_seed: bool,
  mesh: Any,
) -> Any:
  """The initial state of every chain (``algorithm.init``), parameters from ``init_params_fn`` if given."""

  def init_one(p, chain_key):
    if init_params_fn is not None:
      p = init_params_fn(jax.random.fold_in(chain_key, INIT_TAG))
    return algorithm.init(p, _num_examples(data), key=chain_key)

  if num_seeds is None:
    return _on_mesh(init_one(params, keys), mesh, num_seeds)
  p_axis = 0 if (params_per_seed and init_params_fn is None) else None
  return _on_mesh(jax.vmap(init_one, in_axes=(p_axis, 0))(params, keys), mesh, num_seeds)


def private_copy(state: Any) -> Any:
  """A copy of ``state`` that shares no buffer with any other array (safe to donate to :func:`run_chunk`)."""
  return jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else x, state)


def straight_line(algorithm: Algorithm, params: PyTree, data: PyTree, num_seeds: int | None) -> bool:
  """Whether to run ``algorithm`` one step per compiled call, with no loop in the program: on CPU, when
  its loss applies a convolution (:func:`unlearn_jax._loops.straight_line`)."""
  callables = getattr(algorithm, "callables", ()) or ()
  if not callables or not callable(callables[0]):
    return False
  one = (lambda leaf: leaf[0]) if num_seeds is not None else (lambda leaf: leaf)
  example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(x.shape[1:], x.dtype), data)
  return _loops.straight_line(callables[0], jax.tree.map(one, params), example)


def _tree_sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def _finite_tree(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree) if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _privacy_loss_mean(algorithm: Algorithm, realized: jax.Array) -> jax.Array:
  if algorithm.reduction_blocks is None:
    return jnp.mean(realized, axis=0)
  return fixed_order_sum(realized, algorithm.reduction_blocks) / realized.shape[0]


def _at_stride(recorded: jax.Array, fn: Callable, operand: Any) -> Any:
  """``fn(operand)`` at the steps the history keeps, zeros at the others (work of size n only there)."""
  shapes = jax.eval_shape(fn, operand)
  zeros = jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), shapes)
  return jax.lax.cond(recorded, fn, lambda _: zeros, operand)


def _scalars(algorithm: Algorithm, info: StepInfo, old_params: PyTree, state: Any, recorded: jax.Array):
  """The history row of one step: loss, grad / noise / update norms, mean realized loss (at kept steps)."""
  out = {"loss": info.loss}
  if info.mean_grad_norm is not None:
    out["grad_norm"] = info.mean_grad_norm
  if info.noise_norm is not None:
    out["noise_norm"] = info.noise_norm
  out["update_norm"] = jnp.sqrt(_tree_sq_norm(jax.tree.map(lambda a, b: a - b, state.params, old_params)))
  ledger = getattr(state, "ledger", None)
  if ledger is not None:
    out["privacy_loss_mean"] = _at_stride(recorded, functools.partial(_privacy_loss_mean, algorithm), ledger.realized)
  return out


@functools.partial(
  jax.jit,
  static_argnames=("algorithm", "eval_fn", "num_seeds", "chunk_len", "stride", "mesh", "loop"),
  donate_argnames=("state",),
)
def run_chunk(
  state: Any,
  data: PyTree,
  mask: jax.Array | None,
  keys: jax.Array,
  hyper: dict,
  start: jax.Array,
  end: jax.Array,
  *,
  algorithm: Algorithm,
  eval_fn: Callable | None,
  num_seeds: int | None,
  chunk_len: int,
  stride: int,
  mesh: Any,
  loop: bool = True,
) -> tuple[Any, dict]:
  """Steps ``start`` .. ``end`` − 1 (at most ``chunk_len``) of every chain; returns (state, outputs).

  ``state`` is donated: its buffers become the new state's (the ledger's rows are updated in place, so
  a minibatch step touches its B rows, not a copy of the (n, K) ledger); the caller must not use it
  after the call (:func:`private_copy` makes a state that shares no buffer with the caller's arrays).

  With ``loop=False`` the chunk is one step (``chunk_len`` = 1, ``end`` = ``start`` + 1) with no loop and
  no conditional in the program: on CPU a model with convolutions runs ~30x faster so
  (:mod:`unlearn_jax._loops`).

  ``outputs`` holds, per step of the chunk (leading axis ``chunk_len``; rows past ``end`` are zeros),
  the history scalars, ``"finite"`` (loss and parameters finite after the step) and, every ``stride``
  steps, ``"eval"`` = ``eval_fn(params)``.
  """

  def one_step(s, chain_key, t):
    new, info = algorithm.step(s, data, jax.random.fold_in(chain_key, t), data_mask=mask, **hyper)
    recorded = (t + 1) % stride == 0
    outs = _scalars(algorithm, info, s.params, new, recorded)
    outs["finite"] = jnp.isfinite(info.loss) & _finite_tree(new.params)
    if info.dropped is not None:
      outs["dropped"] = info.dropped
    if eval_fn is not None:
      outs["eval"] = _at_stride(recorded, eval_fn, new.params)
    return new, outs

  step_all = one_step if num_seeds is None else jax.vmap(one_step, in_axes=(0, 0, None))
  if not loop:
    if chunk_len != 1:
      raise ValueError(f"a chunk without a loop is one step, got chunk_len = {chunk_len}")
    new_state, outs = step_all(state, keys, start)
    return _on_mesh(new_state, mesh, num_seeds), jax.tree.map(lambda x: x[None], outs)

  def body(carry, i):
    t = start + i
    run = lambda c: step_all(c, keys, t)  # noqa: E731
    out_shape = jax.eval_shape(run, carry)[1]
    skip = lambda c: (c, jax.tree.map(lambda x: jnp.zeros(x.shape, x.dtype), out_shape))  # noqa: E731
    new_carry, outs = jax.lax.cond(t < end, run, skip, carry)
    return _on_mesh(new_carry, mesh, num_seeds), outs

  return jax.lax.scan(body, state, jnp.arange(chunk_len, dtype=jnp.int32))
