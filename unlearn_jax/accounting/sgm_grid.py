"""§2b costs charged from a grid of noise levels: an upper bound whose cost does not grow with n.

An example's Poisson cost depends on one scalar, u = 1/z² = ‖clipped g‖² η / (2 τ b²), and is
non-decreasing in u. The series of :func:`~unlearn_jax.accounting.sgm.sampled_gaussian_rdp` is
evaluated at J nodes u₀ < … < u_{J−1} spanning the step's values (geometric spacing, the top node just
above the worst case u_C of an example at the clip norm, which is evaluated as one more node), and
every example is charged from the two nodes around its u:

- **integer orders: the chord.** For integer α the RDP is (1/(α−1)) log Σ_k w_k exp(k(k−1)u/2) with
  w_k ≥ 0, a log-sum-exp of affine functions of u: convex in u, so the chord between the nodes lies
  above it (and the chord from (0, 0) below u₀). Over-charge on [u_{j−1}, u_j] at most
  (s_j − s_{j−1})(u_j − u_{j−1}) / f(u_{j−1}) relative, s_j the chord slopes (convexity puts f above
  the previous chord's extension).
- **fractional orders: the node above, or the log-convex interpolation in the order**, whichever is
  smaller. The node above f(u_j) ≥ f(u) by monotonicity (over-charge at most f(u_j)/f(u_{j−1})).
  And (α−1)·RDP(α) = log E[L^α] is convex in α (Hölder), so for a < α < a+1 with a, a+1 integers
  (a = 1: log A₁ = 0), (α−1)RDP(α) ≤ (a+1−α)(a−1)RDP(a) + (α−a)·a·RDP(a+1), where the integer-order
  values are themselves bounded by their chords. Both bound the *exact* RDP; at fractional orders the
  grid can therefore charge less than the |binomial| series (itself an upper bound of the exact value).

``sgm_grid.costs`` returns those per-example costs (every entry ≥ the exact RDP at its order), the
worst case, and the rigorous bound on the relative over-charge of the intervals the step's examples
fell in. The series runs on J + 1 noise levels instead of n: the ledger update of an accounted Poisson
step costs O(J·K) series terms plus O(n·K) interpolation.
"""

from __future__ import annotations

import math
from collections.abc import Sequence
from typing import NamedTuple

import jax
import jax.numpy as jnp

from unlearn_jax.accounting.sgm import monotone_in_order, sampled_gaussian_rdp

__all__ = ["DEFAULT_NODES", "RANGE_FLOOR", "GridCosts", "costs", "eval_orders"]

DEFAULT_NODES = 512
"""Nodes of the grid (J)."""

RANGE_FLOOR = 1e-12
"""The lowest node is at least this fraction of the top one (examples below it cost ≲ RANGE_FLOOR of
the worst case; integer orders still take the chord from 0)."""

_TOP_MARGIN = 1e-6  # the top node sits this much (relative) above the worst case: a clipped norm may round up


class GridCosts(NamedTuple):
  """Per-example costs from the grid.

  Attributes:
    costs: (n, K) charged costs, each ≥ the exact RDP at its order.
    worst: (K,) the worst case (an example at the clip norm), inf without clipping.
    overcharge: (K,) bound on charged / per-example value − 1 over the intervals this step's examples
      fell in, the per-example value being the exact RDP at integer orders and the series of
      :func:`~unlearn_jax.accounting.sgm.sampled_gaussian_rdp` (its ``rdp_method``) at fractional ones
      (0 where no example was charged; the intervals below the lowest node are left out: their costs
      are at most RANGE_FLOOR of the worst case).
  """

  costs: jax.Array
  worst: jax.Array
  overcharge: jax.Array


def eval_orders(orders: Sequence[float]) -> tuple[float, ...]:
  """The orders the nodes are evaluated at: ``orders`` and the integer neighbours of every fractional one."""
  needed = set(float(a) for a in orders)
  for a in orders:
    if not float(a).is_integer():
      lo = math.floor(a)
      needed.update(float(k) for k in (lo, lo + 1) if k >= 2)
  return tuple(sorted(needed))


def _nodes(u: jax.Array, u_top: jax.Array, num_nodes: int) -> jax.Array:
  """J geometric nodes from the smallest positive u (at least RANGE_FLOOR of the top) to just above u_top."""
  positive = u > 0
  u_lo = jnp.min(jnp.where(positive, u, u_top))
  u_lo = jnp.clip(u_lo, u_top * RANGE_FLOOR, u_top)
  steps = jnp.arange(num_nodes, dtype=u.dtype) / max(num_nodes - 1, 1)
  nodes = u_lo * jnp.exp(steps * jnp.log(u_top / u_lo))
  nodes = nodes.at[0].set(u_lo)
  return nodes.at[-1].set(jnp.maximum(u_top * (1.0 + _TOP_MARGIN), nodes[-2] if num_nodes > 1 else u_top))


def _interval(nodes: jax.Array, u: jax.Array) -> jax.Array:
  """j with nodes[j−1] < u ≤ nodes[j] (exact comparisons with the stored nodes; 0 for u ≤ nodes[0])."""
  return jnp.clip(jnp.searchsorted(nodes, u, side="left"), 0, nodes.shape[0] - 1)


def _holder_table(orders, ev_orders, values):
  """(J, K): the node value at integer orders; at fractional ones the log-convex interpolation in α of
  the integer neighbours' node values (a convex function of u above the exact RDP)."""
  index = {a: i for i, a in enumerate(ev_orders)}
  cols = []
  for a in orders:
    if float(a).is_integer():
      cols.append(values[:, index[float(a)]])
      continue
    lo = math.floor(a)
    hi_part = (a - lo) * lo * values[:, index[float(lo + 1)]]
    lo_part = 0.0 if lo < 2 else (lo + 1 - a) * (lo - 1) * values[:, index[float(lo)]]
    cols.append((lo_part + hi_part) / (a - 1.0))
  return jnp.stack(cols, axis=1)


def _lerp(nodes, table, j, u):
  """The chord of ``table`` (J, K) through the interval of u, (n, K); from (0, 0) on the first interval."""
  u_hi, f_hi = nodes[j], table[j]
  first = j == 0
  u_lo = jnp.where(first, 0.0, nodes[jnp.maximum(j - 1, 0)])
  f_lo = jnp.where(first[:, None], 0.0, table[jnp.maximum(j - 1, 0)])
  width = u_hi - u_lo
  t = jnp.clip(jnp.where(width > 0, (u - u_lo) / jnp.where(width > 0, width, 1.0), 1.0), 0.0, 1.0)[:, None]
  chord = (1.0 - t) * f_lo + t * f_hi
  return jnp.where(jnp.isfinite(chord), chord, f_hi)


def _overcharge(orders, ev_orders, nodes, values, j, charged):
  """Rigorous bound on the relative over-charge over the intervals in use (see the module docstring)."""
  num = nodes.shape[0]
  idx = jnp.asarray([ev_orders.index(float(a)) for a in orders])
  f = values[:, idx]  # (J, K)
  u0 = jnp.concatenate([jnp.zeros((1,), nodes.dtype), nodes])
  f0 = jnp.concatenate([jnp.zeros((1, f.shape[1]), f.dtype), f])
  width = u0[1:] - u0[:-1]
  slopes = (f0[1:] - f0[:-1]) / jnp.where(width > 0, width, 1.0)[:, None]  # slope of the interval ending at node k
  # interval k ≥ 1 is [nodes[k-1], nodes[k]]: chord bound and node-above bound
  prev = f[:-1]
  safe_prev = jnp.where(prev > 0, prev, 1.0)
  chord_b = jnp.where(prev > 0, (slopes[1:] - slopes[:-1]) * (nodes[1:] - nodes[:-1])[:, None] / safe_prev, jnp.inf)
  above_b = jnp.where(prev > 0, f[1:] / safe_prev - 1.0, jnp.inf)
  integer = jnp.asarray([float(a).is_integer() for a in orders])
  bound = jnp.where(integer, chord_b, above_b)  # (J-1, K)
  bound = jnp.where(jnp.isnan(bound), jnp.inf, jnp.maximum(bound, 0.0))
  used = jnp.zeros((num,), jnp.int32).at[j].max(charged.astype(jnp.int32))[1:] > 0
  bound = jnp.where(used[:, None], bound, 0.0)
  return jnp.max(bound, axis=0) if num > 1 else jnp.zeros((len(orders),), f.dtype)


def costs(
  u: jax.Array,
  u_worst: jax.Array,
  q: jax.Array,
  orders: tuple[float, ...],
  *,
  num_nodes: int = DEFAULT_NODES,
  num_terms: int,
  rdp_method: str = "dp_accounting",
) -> GridCosts:
  """Costs of every example from the grid (see the module docstring).

  Args:
    u: (n,) 1/z² of every example (0: no cost; NaN propagates).
    u_worst: scalar 1/z² at the clip norm (inf: no clipping, the top node is then the largest u).
    q: the sampling rate.
    orders: the Rényi orders (concrete).
    num_nodes: J ≥ 2.
    num_terms, rdp_method: as :func:`~unlearn_jax.accounting.sgm.sampled_gaussian_rdp`.

  Returns:
    :class:`GridCosts`.
  """
  dtype = u.dtype
  finite_u = jnp.where(jnp.isfinite(u), u, 0.0)
  clipped = jnp.isfinite(u_worst)
  top = jnp.where(clipped, u_worst, jnp.max(finite_u))
  top = jnp.where(top > 0, top, 1.0)
  nodes = _nodes(finite_u, top, num_nodes)
  ev = eval_orders(orders)
  levels = jnp.concatenate([nodes, top[None]])  # the worst case is one more node
  z = 1.0 / jnp.sqrt(levels)
  values = sampled_gaussian_rdp(q, z, ev, num_terms=num_terms, method=rdp_method).astype(dtype)  # (J+1, K_ev)
  node_values, worst_values = values[:-1], values[-1]
  index = jnp.asarray([ev.index(float(a)) for a in orders])
  integer = jnp.asarray([float(a).is_integer() for a in orders])
  # Tables over the nodes (J, K), then O(n·K) per example: the chord of one table, the row of the other.
  # Both tables are non-decreasing in the order at every node (the log-convex interpolation runs from
  # RDP(a) to RDP(a+1) monotonically; the node values are enveloped), so every example's charge
  # min(chord, node above) is non-decreasing in the order too — also in floating point, as the chord is
  # (1 − t)·f_lo + t·f_hi with one t for every order.
  holder = monotone_in_order(_holder_table(orders, ev, node_values), orders)
  above = monotone_in_order(jnp.where(integer, holder, node_values[:, index]), orders)
  worst = monotone_in_order(worst_values[index], orders)
  j = _interval(nodes, finite_u)
  charged = jnp.minimum(_lerp(nodes, holder, j, finite_u), above[j])
  charged = jnp.where(clipped, jnp.minimum(charged, worst), charged)  # no clipped norm exceeds C
  positive = finite_u > 0
  charged = jnp.where(positive[:, None], charged, 0.0)
  charged = jnp.where(jnp.isnan(u)[:, None], jnp.nan, charged)
  worst = jnp.where(clipped, worst, jnp.inf)
  bound = _overcharge(orders, ev, nodes, node_values, j, positive)
  return GridCosts(charged, worst.astype(dtype), bound)
