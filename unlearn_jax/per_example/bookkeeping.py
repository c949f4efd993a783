"""Book-keeping: the clipped gradient sum and the inner products from one ghost pass (Bu et al., fastDP).

A ghost pass (:func:`~unlearn_jax.per_example.ghost.ghost_record`) holds, for every parameter site, the
input activations a_i and the output gradients δ_i of every example. A covered leaf's per-example
gradient is the site's linear map transposed, ∇_θ ℓ_i = J_iᵀ δ_i (J_i: how the site's output for
example i moves with the leaf), so

- the weighted sum Σ_i w_i ∇ℓ_i is one transposed application of the site with the cotangents w_i δ_i
  (a dense layer: ``Aᵀ diag(w) Δ``, one matrix product) — no second backward pass through the network;
- the inner products ⟨∇ℓ_i, v⟩ = ⟨δ_i, J_i v⟩ are one application of the site to the direction v
  (a dense layer: ``rowsum((A V) ⊙ Δ)``) — no jvp through the network.

Where the norm rule materialised the per-example gradients anyway (small convolution kernels, kept by
``ghost_record(..., keep_grads=True)``) and for the leaves no site covers, both come from those
gradients directly (``Σ_i w_i G_i`` and ``⟨G_i, v⟩``: no convolution at all). Exact (the same sums as
the two-pass method, in another order).
"""

from __future__ import annotations

from typing import Any

import jax
import jax.numpy as jnp

from unlearn_jax.per_example.ghost import GhostRecord, _Plan
from unlearn_jax.per_example.ghost_rules import _chain_fn, bind

__all__ = ["inner_products", "weighted_sum"]

PyTree = Any


def _site_map(site, record: GhostRecord, n: int):
  """leaf -> (n, *out): the site's output for every example as a function of the parameter leaf."""
  act = record.acts.get(site.path)
  if act is None:  # a bias: the other operand does not enter the derivative
    other = site.eqn.invars[1 - site.param_arg].aval
    act = jnp.zeros((n,) + tuple(site.act_shape), other.dtype)

  def per_example(view, a):
    return bind(site.eqn, [a, view] if site.param_arg == 1 else [view, a])

  chain = _chain_fn(site.chain)

  def fn(leaf):
    return jax.vmap(per_example, in_axes=(None, 0))(chain(leaf), act)

  return fn


def _rows(w: jax.Array, like: jax.Array) -> jax.Array:
  return jnp.reshape(w, (-1,) + (1,) * (like.ndim - 1)).astype(like.dtype)


def weighted_sum(plan: _Plan, params: PyTree, record: GhostRecord, weights: jax.Array) -> PyTree:
  """Σ_i w_i ∇ℓ_i from a ghost record (linear in the weights; their derivative flows through)."""
  leaves, treedef = jax.tree.flatten(params)
  n = weights.shape[0]
  out = [jnp.zeros_like(leaf) for leaf in leaves]
  for site in plan.sites:
    kept = record.site_grads.get(site.path)
    if kept is not None:  # Σ_i w_i G_i in the view's layout, then back through the (linear) view chain
      _, transpose = jax.vjp(_chain_fn(site.chain), leaves[site.leaf])
      out[site.leaf] = transpose(jnp.tensordot(weights.astype(kept.dtype), kept, axes=1))[0]
      continue
    delta = record.deltas[site.path]
    _, transpose = jax.vjp(_site_map(site, record, n), leaves[site.leaf])
    out[site.leaf] = transpose(_rows(weights, delta) * delta)[0].astype(out[site.leaf].dtype)
  for j, g in zip(plan.fallback, record.fallback_grads):
    out[j] = jnp.tensordot(weights.astype(g.dtype), g, axes=1)
  return jax.tree.unflatten(treedef, out)


def inner_products(plan: _Plan, params: PyTree, record: GhostRecord, direction: PyTree) -> jax.Array:
  """⟨∇ℓ_i, v⟩ for every example from a ghost record."""
  leaves = jax.tree.leaves(params)
  dirs = jax.tree.leaves(direction)
  n = record.losses.shape[0]
  total = jnp.zeros((n,), record.sq_norms.dtype)
  for site in plan.sites:
    leaf = leaves[site.leaf]
    kept = record.site_grads.get(site.path)
    if kept is not None:
      view = _chain_fn(site.chain)(dirs[site.leaf].astype(leaf.dtype))
      total = total + (jnp.reshape(kept, (n, -1)) @ jnp.reshape(view, (-1,)).astype(kept.dtype)).astype(total.dtype)
      continue
    delta = record.deltas[site.path]
    _, moved = jax.jvp(_site_map(site, record, n), (leaf,), (dirs[site.leaf].astype(leaf.dtype),))
    total = total + jnp.sum(jnp.reshape(moved.astype(delta.dtype) * delta, (n, -1)), axis=1).astype(total.dtype)
  for j, g in zip(plan.fallback, record.fallback_grads):
    d = dirs[j].astype(g.dtype)
    total = total + (jnp.reshape(g, (n, -1)) @ jnp.reshape(d, (-1,))).astype(total.dtype)
  return total
