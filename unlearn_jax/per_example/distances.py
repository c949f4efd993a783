"""Squared distances ‖s_i ∇ℓ_i − ḡ‖² of clipped per-example gradients to their mean (theory §2a).

The fast form ‖g_i‖² − 2 s_i⟨∇ℓ_i, ḡ⟩ + ‖ḡ‖² needs only the norms and one jvp, but cancels when
g_i ≈ ḡ: each term carries a rounding error of order ε‖g‖², the difference is ‖g_i − ḡ‖² (in float32
with ‖g_i − ḡ‖ ≈ 1e-4‖g_i‖ about half the values come out 0). :func:`centered_sq_norms` bounds that
rounding error and, at steps where it could exceed ``COST_RTOL`` of a result, recomputes every distance
by direct differences (:func:`centered_sq_direct`) — under a conditional that also stays one branch
under ``vmap`` (``_loops.only_if``), so only those steps pay for it.
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from unlearn_jax import _loops
from unlearn_jax.per_example import chunking

__all__ = ["CANCELLATION_ULPS", "COST_RTOL", "centered_sq_direct", "centered_sq_norms"]

# Rounding-error allowance of the three-term form, in units of ε·(‖g_i‖² + 2|⟨g_i, ḡ⟩| + ‖ḡ‖²), and
# the relative error of a distance that is tolerated before the direct difference is used instead.
CANCELLATION_ULPS = 8.0
COST_RTOL = 1e-4


def tree_vdot(a: Any, b: Any) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def centered_sq_direct(loss_fn, params, data, factors, mask, chunk_size):
  """‖s_i ∇ℓ_i − ḡ‖² for every example by direct differences (no cancellation), ḡ the mean over ``mask``.

  The three-term form ‖g_i‖² − 2⟨g_i, ḡ⟩ + ‖ḡ‖² loses every digit when g_i ≈ ḡ (each term carries a
  rounding error of order ε‖g‖², the difference is ‖g_i − ḡ‖²). Here every clipped per-example gradient
  is taken relative to the first example of the mask, r: the differences G_i − r of nearby gradients
  are exact in floating point (Sterbenz), their mean m over the mask is computed from those small
  numbers, and ‖(G_i − r) − m‖² then only carries the rounding of G_i itself. Per-example gradients are
  materialised ``chunk_size`` at a time (two passes over the data): this is the slow path, taken only
  at steps where the fast form is imprecise.
  """
  n = mask.shape[0]
  chunk = n if chunk_size is None else min(int(chunk_size), n)
  first = jnp.argmax(mask > 0)
  example0 = jax.tree.map(lambda x: x[first], data)
  ref = jax.tree.map(lambda g: g * factors[first].astype(g.dtype), jax.grad(loss_fn)(params, example0))
  grads_fn = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))
  padded, valid, _ = chunking.pad_batch((data, factors, mask), n, chunk)
  chunks = chunking.to_chunks((padded, valid), chunk)

  def shifted(c):
    (d, f, w), ok = c
    g = grads_fn(params, d)
    return jax.tree.map(lambda gi, r: gi * f.reshape((-1,) + (1,) * (gi.ndim - 1)).astype(gi.dtype) - r, g, ref), w * ok

  def add_shift(total, c):
    diff, w = shifted(c)
    return jax.tree.map(lambda t, x: t + jnp.tensordot(w.astype(x.dtype), x, axes=1), total, diff), None

  zero = jax.tree.map(jnp.zeros_like, ref)
  total, _ = _loops.scan(add_shift, zero, chunks)
  mean = jax.tree.map(lambda t: t / jnp.maximum(jnp.sum(mask), 1.0).astype(t.dtype), total)

  def sq(c):
    diff, _ = shifted(c)
    return sum(
      jnp.sum(jnp.reshape((x - m) ** 2, (x.shape[0], -1)), axis=1)
      for x, m in zip(jax.tree.leaves(diff), jax.tree.leaves(mean))
    )

  return jnp.reshape(_loops.map(sq, chunks), (-1,))[:n]


def centered_sq_norms(
  ops, norms: jax.Array, factors: jax.Array, mask: jax.Array, gbar: Any
) -> tuple[jax.Array, jax.Array]:
  """‖s_i ∇ℓ_i − ḡ‖² for every example of ``mask`` (0 elsewhere), ḡ the clipped mean over ``mask``.

  Args:
    ops: the step's :class:`~unlearn_jax.per_example.blocks.ExampleOps`.
    norms: (n,) unclipped per-example gradient norms.
    factors: (n,) clip factors s_i.
    mask: (n,) 1 for the examples of the mean.
    gbar: the clipped mean ḡ (a params-like pytree).

  Returns:
    ``(sq_dist (n,), recomputed)``: the distances and whether the direct path ran.
  """
  inner = ops.inner(gbar)  # <grad l_i, gbar>, one jvp
  clipped_sq = (norms * factors) ** 2
  cross = 2.0 * factors * inner
  gbar_sq = tree_vdot(gbar, gbar)
  sq_dist = jnp.maximum(clipped_sq - cross + gbar_sq, 0.0)
  eps = jnp.finfo(sq_dist.dtype).eps
  error = CANCELLATION_ULPS * eps * (clipped_sq + jnp.abs(cross) + gbar_sq)
  imprecise = jnp.any((mask > 0) & (error > COST_RTOL * sq_dist))
  direct = _loops.only_if(imprecise, ops.centered_sq, ops.params_and_data + (factors, mask))
  return jnp.where(imprecise, direct, sq_dist) * mask, imprecise
