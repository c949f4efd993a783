"""Loops over chunks and checkpoints that stay fast on XLA:CPU.

XLA:CPU runs a convolution inside a loop body or a conditional branch far slower than at the top level
of a program (jax-ml/jax#12868). Measured here (2-core box, jax 0.10.2): a ResNet-18 batch gradient
(stages 16-32-64-128, 64 images) takes 0.19 s at the top level and 6.6 s inside ``lax.scan``,
``lax.fori_loop`` or ``lax.cond`` — also for a loop of one iteration — while the same scan unrolled
(no loop left in the program) takes 0.16-0.23 s per step. :func:`map` and :func:`scan` are
``lax.map`` / ``lax.scan``, except on CPU for a body that contains a convolution and at most
:data:`UNROLL_MAX` elements, which is unrolled: traced once per element (compile time grows with the
number of elements), and — XLA:CPU does not reuse the buffers of one unrolled element for the next, an
optimization barrier between them did not change that — its memory is that of all elements together,
not of one. Beyond :data:`UNROLL_MAX` elements the loop stays (bounded memory, slow convolutions).
:func:`straight_line` tells the runtime to run such a model one step per compiled call instead of in
scanned chunks. :func:`only_if` is a conditional for a rare part of a step that stays one branch under
``vmap`` of seeds.
"""

from __future__ import annotations

import builtins
from collections.abc import Callable
from typing import Any

import jax
import jax.extend.core
import jax.numpy as jnp

from unlearn_jax._compile import stack, take

__all__ = ["UNROLL_MAX", "contains_convolution", "map", "only_if", "scan", "straight_line"]

_CONV = "conv_general_dilated"

UNROLL_MAX = 8
"""The most elements an unrolled loop may have (chunks of a CPU-sized data set, checkpoints)."""


def _sub_jaxprs(eqn) -> list:
  out = []
  for value in eqn.params.values():
    for v in value if isinstance(value, (tuple, list)) else (value,):
      if isinstance(v, jax.extend.core.ClosedJaxpr):
        out.append(v.jaxpr)
      elif isinstance(v, jax.extend.core.Jaxpr):
        out.append(v)
  return out


def contains_convolution(jaxpr) -> bool:
  """Whether a (closed) jaxpr or any jaxpr nested in it applies a convolution."""
  jaxpr = getattr(jaxpr, "jaxpr", jaxpr)
  return any(
    eqn.primitive.name == _CONV or builtins.any(contains_convolution(j) for j in _sub_jaxprs(eqn)) for eqn in jaxpr.eqns
  )


def straight_line(fn: Callable, *args: Any) -> bool:
  """True on CPU when ``fn(*args)`` applies a convolution: keep it out of loops and conditionals."""
  if jax.default_backend() != "cpu":
    return False
  try:
    return contains_convolution(jax.make_jaxpr(fn)(*args))
  except Exception:  # noqa: BLE001 - a body that cannot be traced on its own: keep the loop
    return False


def _length(xs) -> int:
  return jax.tree.leaves(xs)[0].shape[0]


def map(fn: Callable, xs: Any) -> Any:  # noqa: A001 - lax.map's name
  """``lax.map(fn, xs)``; unrolled on CPU when ``fn`` applies a convolution."""
  if _length(xs) > UNROLL_MAX or not straight_line(fn, take(xs, 0)):
    return jax.lax.map(fn, xs)
  return stack([fn(take(xs, i)) for i in range(_length(xs))])


def scan(fn: Callable, init: Any, xs: Any) -> tuple[Any, Any]:
  """``lax.scan(fn, init, xs)``; unrolled on CPU when ``fn`` applies a convolution."""
  if _length(xs) > UNROLL_MAX or not straight_line(fn, init, take(xs, 0)):
    return jax.lax.scan(fn, init, xs)
  carry, outs = init, []
  for i in range(_length(xs)):
    carry, y = fn(carry, take(xs, i))
    outs.append(y)
  return carry, stack(outs)


def only_if(pred: jax.Array, fn: Callable, operands: tuple) -> Any:
  """``fn(*operands)`` where ``pred`` holds, zeros (of its output's shapes) elsewhere; ``fn`` runs only when
  some ``pred`` holds.

  A ``lax.cond``, except under ``vmap``: a vmapped cond with a batched predicate runs both branches for
  every element, which would make a rare slow path the common cost of vmapped seeds. The batching rule
  instead runs the vmapped ``fn`` once when any element needs it (zeros for the others). ``fn`` must
  depend on traced values through ``operands`` only. Derivatives (forward and reverse mode) are those of
  the cond: ``fn``'s own where ``pred`` holds, zeros elsewhere.
  """
  out = jax.eval_shape(fn, *operands)

  def zeros(shape=()):
    return jax.tree.map(lambda o: jnp.zeros(shape + tuple(o.shape), o.dtype), out)

  @jax.custom_batching.custom_vmap
  def run(pred, operands):
    return jax.lax.cond(pred, lambda: fn(*operands), zeros)

  @run.def_vmap
  def rule(axis_size, in_batched, pred, operands):
    pred_batched, operands_batched = in_batched
    preds = pred if pred_batched else jnp.broadcast_to(pred, (axis_size,))
    axes = tuple(jax.tree.map(lambda b: 0 if b else None, operands_batched))
    values = jax.lax.cond(jnp.any(preds), lambda: jax.vmap(fn, in_axes=axes)(*operands), lambda: zeros((axis_size,)))
    kept = jax.tree.map(lambda v: jnp.where(jnp.reshape(preds, (-1,) + (1,) * (v.ndim - 1)), v, 0), values)
    return kept, jax.tree.map(lambda _: True, out)

  @jax.custom_jvp
  def call(pred, operands):
    return run(pred, operands)

  @call.defjvp
  def call_jvp(primals, tangents):  # differentiated: a plain cond (both branches per element under vmap)
    pred, operands = primals
    return jax.lax.cond(pred, lambda: jax.jvp(fn, operands, tangents[1]), lambda: (zeros(), zeros()))

  return call(pred, operands)
