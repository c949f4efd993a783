"""The per-example computations of a step, plain or in R blocks with a fixed order of the sums.

:func:`example_ops` returns the three per-example computations a step needs — every gradient norm,
the weighted gradient sum Σ_i w_i ∇ℓ_i (one backward pass, with the losses) and the inner products
⟨∇ℓ_i, v⟩ (one jvp) — plus the direct distances used when the fast §2a form would lose precision.

With ``blocks`` = R (``reduction_blocks``) the n examples are split into R contiguous blocks; every
per-example computation is vmapped over the blocks with one copy of the parameters per block, so each
block is computed with the same shapes whether a device holds R, R/2 or R/4 of them, and the R block
sums are added in a fixed order (:func:`fixed_order_sum`). Results then do not depend on how the
examples are split over devices, as long as every device holds at least two blocks
(``docs/distributed.md``).
"""

from __future__ import annotations

from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax.per_example import api, bookkeeping, distances, ghost

__all__ = ["ExampleOps", "check_blocks", "example_ops", "fixed_order_sum"]

PyTree = Any


def _losses_and_weighted_grad(loss_fn, params, data, weights):
  """Per-example losses (n,) and Σ_i w_i ∇ℓ_i in one backward pass (differentiable in the weights too)."""
  losses, vjp = jax.vjp(lambda p: jax.vmap(loss_fn, in_axes=(None, 0))(p, data), params)
  (grad,) = vjp(weights.astype(losses.dtype))
  return losses, grad


def _broadcast_blocks(tree: PyTree, blocks: int) -> PyTree:
  """One copy of every leaf per block (R, ...), behind an optimization barrier.

  Every product of per-example data with parameters is then a *batched* dot with the block as batch
  dimension, whose per-block result XLA computes the same way whatever the number of blocks a device
  holds; with the parameters shared (unbatched), XLA merges the blocks into one larger dot whose
  kernel (and rounding) depends on the number of rows per device. The barrier keeps XLA from folding
  the broadcast back.
  """
  return jax.lax.optimization_barrier(jax.tree.map(lambda p: jnp.broadcast_to(p, (blocks,) + jnp.shape(p)), tree))


def _split_blocks(tree: PyTree, blocks: int) -> PyTree:
  return jax.tree.map(lambda x: jnp.reshape(x, (blocks, jnp.shape(x)[0] // blocks) + jnp.shape(x)[1:]), tree)


def _halving_sum(x: jax.Array, axis: int, *, barrier: bool = False) -> jax.Array:
  """Sum along ``axis`` by repeated halving (x[:m/2] + x[m/2:]): an order fixed by the shape alone.

  Only elementwise additions of slices: XLA does not reassociate them (unlike a ``reduce``, whose
  order the compiler and the SPMD partitioner choose).
  """
  m = x.shape[axis]
  if m == 0:
    return jnp.sum(x, axis=axis)
  while m > 1:
    half = m // 2
    lo, hi = jax.lax.slice_in_dim(x, 0, half, axis=axis), jax.lax.slice_in_dim(x, half, 2 * half, axis=axis)
    if barrier:  # the addition then sees two arrays, not two slices of one it could turn into a reduce
      lo, hi = jax.lax.optimization_barrier((lo, hi))
    s = lo + hi
    if m % 2:
      s = jnp.concatenate([s, jax.lax.slice_in_dim(x, 2 * half, m, axis=axis)], axis=axis)
    x, m = s, s.shape[axis]
  return jnp.squeeze(x, axis=axis)


def _fixed_order_block_sum(block_sums: jax.Array) -> jax.Array:
  """Adds R block sums (R, ...) in a fixed order (pairwise), after an optimization barrier.

  The barrier keeps XLA from fusing the additions into the computation of the block sums (e.g. a
  ``reduce`` of a batched ``dot`` rewritten as one ``dot`` contracting over every example).
  """
  block_sums = jax.lax.optimization_barrier(block_sums)
  return _halving_sum(block_sums, 0, barrier=True)


def fixed_order_sum(x: ArrayLike, num_blocks: int | None) -> jax.Array:
  """Sum over the leading (example) axis in an order that does not depend on the device count.

  ``num_blocks`` = None is ``jnp.sum(x, axis=0)``. With R blocks, the n rows (n a multiple of R) are
  split into R contiguous blocks; each block is summed by repeated halving and the R block sums are
  then added pairwise in a fixed order. Only elementwise additions of slices are used (no ``reduce``
  whose order the compiler or the SPMD partitioner would choose), so on a mesh whose ``"data"`` axis
  size divides R the result does not depend on the device count (see ``sgld(..., reduction_blocks=R)``
  and ``docs/distributed.md``).

  Args:
    x: array (n, ...).
    num_blocks: R >= 1 dividing n, or None.

  Returns:
    The sum over axis 0, shape ``x.shape[1:]``.

  Raises:
    ValueError: ``num_blocks`` is not a positive integer dividing n.

  Examples:
    >>> import jax.numpy as jnp
    >>> float(fixed_order_sum(jnp.arange(8.0), 4)), float(fixed_order_sum(jnp.arange(8.0), None))
    (28.0, 28.0)
  """
  x = jnp.asarray(x)
  if num_blocks is None:
    return jnp.sum(x, axis=0)
  num_blocks = check_blocks(num_blocks)
  if x.ndim == 0 or x.shape[0] % num_blocks:
    raise ValueError(
      f"x must have a leading axis whose size is a multiple of num_blocks = {num_blocks}, got shape "
      f"{x.shape}; pad it (distributed.pad_to_multiple) and mask the padding rows"
    )
  n = x.shape[0]
  blocks = jnp.reshape(x, (num_blocks, n // num_blocks) + x.shape[1:])
  return _fixed_order_block_sum(_halving_sum(blocks, 1))


def check_blocks(value: Any) -> int:
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or value < 1:
    raise ValueError(f"reduction_blocks must be None or a positive integer, got {value!r}")
  return int(value)


class ExampleOps(NamedTuple):
  norms: Callable  # () -> (n,) unclipped per-example gradient norms
  grads: Callable  # (weights (n,)) -> (losses (n,), Σ_i w_i ∇ℓ_i)
  inner: Callable  # (direction) -> (n,) <∇ℓ_i, direction>
  centered_sq: Callable  # pure (params, data, factors, mask) -> (n,) ‖s_i ∇ℓ_i − ḡ‖², ḡ the mean over mask
  params_and_data: tuple  # the (params, data) that ``centered_sq`` is called with


def _bookkeeping_ops(loss_fn, params, data, n, norm_method, chunk_size) -> ExampleOps | None:
  """The three computations from ONE ghost pass (:mod:`~unlearn_jax.per_example.bookkeeping`), or None
  where it does not apply (vmap norms, a chunked pass, a loss the ghost tracer cannot follow).

  The pass runs at the first call of any of them and is shared by the others, so a step that needs the
  norms, the clipped sum and the inner products runs one forward and one backward pass through the
  network; the rest is one contraction per parameter site. Use the returned ops within one trace
  (every call at the level of the step, or every call inside one branch of a conditional).
  """
  if norm_method == "vmap" or (chunk_size is not None and chunk_size < n):
    return None
  api._check_loss_fn(loss_fn, params, data)
  if not all(jnp.issubdtype(jnp.result_type(x), jnp.floating) for x in jax.tree.leaves(params)):
    return None
  plan = api.usable_plan(loss_fn, params, data)
  if plan is None:
    return None
  memo = []

  def record() -> ghost.GhostRecord:
    if not memo:
      memo.append(ghost.ghost_record(plan, loss_fn, params, data, keep_grads=True))
    return memo[0]

  def grads(weights):
    rec = record()
    return rec.losses, bookkeeping.weighted_sum(plan, params, rec, weights)

  return ExampleOps(
    norms=lambda: api._safe_sqrt(record().sq_norms),
    grads=grads,
    inner=lambda direction: bookkeeping.inner_products(plan, params, record(), direction),
    centered_sq=lambda p, d, f, m: distances.centered_sq_direct(loss_fn, p, d, f, m, chunk_size or 256),
    params_and_data=(params, data),
  )


def example_ops(loss_fn, params, data, n, blocks, norm_method, chunk_size) -> ExampleOps:
  """The per-example computations of a step, plain or in R blocks with a fixed reduction order.

  With ``blocks`` = R the n examples are split into R contiguous blocks of n/R; every per-example
  computation is vmapped over the blocks with one copy of the parameters per block
  (:func:`_broadcast_blocks`), so each block is computed with the same shapes whether a device holds
  R, R/2 or R/4 of them, and each block's weighted gradient sum is its own backward pass; the R block
  sums are then added in a fixed order (:func:`_fixed_order_block_sum`). The results then do not
  depend on how the examples are split over devices, as long as every device holds at least two
  blocks (with one, XLA drops the size-1 block axis and compiles other kernels; docs/distributed.md).
  """
  if blocks is None:
    ops = _bookkeeping_ops(loss_fn, params, data, n, norm_method, chunk_size)
    if ops is not None:
      return ops
    return ExampleOps(
      norms=lambda: api.per_example_grad_norms(loss_fn, params, data, chunk_size=chunk_size, method=norm_method),
      grads=lambda w: _losses_and_weighted_grad(loss_fn, params, data, w),
      inner=lambda g: api.per_example_inner(loss_fn, params, data, g),
      centered_sq=lambda p, d, f, m: distances.centered_sq_direct(loss_fn, p, d, f, m, chunk_size or 256),
      params_and_data=(params, data),
    )
  bparams = _broadcast_blocks(params, blocks)
  bdata = _split_blocks(data, blocks)

  def norms():
    out = jax.vmap(lambda p, d: api.per_example_grad_norms(loss_fn, p, d, chunk_size=chunk_size, method=norm_method))(
      bparams, bdata
    )
    return jnp.reshape(out, (n,))

  def grads(weights):
    losses, block_grads = jax.vmap(lambda p, d, w: _losses_and_weighted_grad(loss_fn, p, d, w))(
      bparams, bdata, jnp.reshape(weights, (blocks, n // blocks))
    )
    return jnp.reshape(losses, (n,)), jax.tree.map(_fixed_order_block_sum, block_grads)

  def inner(direction):
    out = jax.vmap(lambda p, d, g: api.per_example_inner(loss_fn, p, d, g))(
      bparams, bdata, _broadcast_blocks(direction, blocks)
    )
    return jnp.reshape(out, (n,))

  def centered_sq(p, d, factors, mask):  # the slow exact path, rare: no fixed block order (see _mean_costs)
    return distances.centered_sq_direct(loss_fn, p, d, factors, mask, chunk_size or 256)

  return ExampleOps(norms=norms, grads=grads, inner=inner, centered_sq=centered_sq, params_and_data=(params, data))
