"""Per-step per-instance Rényi costs ε_t(x; α) (theory §2a, §2b) and their worst cases.

- :func:`full_batch_costs`: §2a, the mean over the data set, α η ‖g_t(x) − ḡ_t‖² / (4 τ (N−1)²), from the
  squared distances to the clipped mean (``per_example.distances``: no per-example gradients, exact
  where the fast form would cancel).
- :func:`poisson_costs`: §2b, RDP_SGM(q, z_t(x), α) with z_t(x) = b·sqrt(2τ/η)/‖g_t(x)‖, charged as its
  monotone envelope in the order; q = 1 is the fixed-denominator full batch of the certified filter.
- the ``*_worst_case_cost`` functions replace the per-example quantity by its bound (2C resp. C).
- :func:`mean_step_costs` / :func:`fixed_step_costs`: one step's costs and worst case from the
  per-example quantities a step has computed anyway (used by every algorithm), and :func:`step_costs`
  the costs of one step at given parameters, for any optimizer's run.

Orders, step size and temperature are keyword arguments everywhere.
"""

from __future__ import annotations

from collections.abc import Callable, Sequence
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax._traced import guarded
from unlearn_jax.accounting import sgm_grid
from unlearn_jax.accounting.sgm import (
  DEFAULT_NUM_TERMS,
  DEFAULT_ORDERS,
  _static_orders,
  monotone_in_order,
  sampled_gaussian_rdp,
)
from unlearn_jax.per_example import api as pe
from unlearn_jax.per_example import blocks, distances

__all__ = [
  "fixed_step_costs",
  "full_batch_costs",
  "full_batch_worst_case_cost",
  "mean_step_costs",
  "poisson_costs",
  "poisson_costs_on_grid",
  "poisson_worst_case_cost",
  "step_costs",
]

PyTree = Any


def _check_step(step_size: Any, temperature: Any) -> None:
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("temperature", temperature)


@guarded
def full_batch_costs(
  sq_dist: ArrayLike,
  num_examples: ArrayLike,
  *,
  orders: ArrayLike | Sequence[float],
  step_size: ArrayLike,
  temperature: ArrayLike,
) -> jax.Array:
  """theory §2a: ``ε_t(x; α) = α η ‖g_t(x) − ḡ_t‖² / (4 τ (N−1)²)`` for every example.

  ``sq_dist[i] = ‖g_i − ḡ‖²`` with ḡ the clipped mean over the N examples of the mean. Examples
  outside it should be given ``sq_dist = 0`` (they cost nothing). N ≤ 1 gives ``inf``.

  Args:
    sq_dist: squared distances to the clipped mean, shape (n,).
    num_examples: N, the number of examples in the mean (may be traced).
    orders: Rényi orders, shape (K,).
    step_size: η > 0.
    temperature: τ > 0 (the accounting temperature when training noise-free).

  Returns:
    Costs of shape (n, K).

  Raises:
    ValueError: if η ≤ 0, τ ≤ 0 or an order is ≤ 1 (concrete inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> full_batch_costs(jnp.array([4.0, 0.0]), 3, orders=[2.0], step_size=0.5, temperature=0.25).tolist()
    [[1.0], [0.0]]
  """
  orders = _checks.check_orders(orders)
  _check_step(step_size, temperature)
  if not _checks._is_traced(sq_dist) and np.any(np.asarray(sq_dist, dtype=float) < 0):
    raise ValueError(
      f"sq_dist must be non-negative squared distances ||g_i - gbar||^2, got "
      f"{np.asarray(sq_dist, dtype=float)[np.asarray(sq_dist, dtype=float) < 0][:3].tolist()}"
    )
  d = jnp.asarray(sq_dist)
  dtype = jnp.result_type(d.dtype, float)
  nm1 = jnp.asarray(num_examples, dtype) - 1.0
  scale = jnp.asarray(step_size, dtype) / (4.0 * jnp.asarray(temperature, dtype) * nm1**2)
  scale = jnp.where(nm1 > 0, scale, jnp.inf)
  d = jnp.where(d < 0, jnp.nan, d.astype(dtype))  # negative squared distances exist only under a trace
  return jnp.asarray(orders, dtype)[None, :] * (d * scale)[..., None]


@guarded
def full_batch_worst_case_cost(
  clip_norm: ArrayLike,
  num_examples: ArrayLike,
  *,
  orders: ArrayLike | Sequence[float],
  step_size: ArrayLike,
  temperature: ArrayLike,
) -> jax.Array:
  """theory §2a with ``‖g_t(x) − ḡ_t‖`` replaced by 2C: ``α η C² / (τ (N−1)²)``.

  Args:
    clip_norm: C > 0 (inf gives inf: unclipped gradients have no worst case).
    num_examples: N, number of examples in the mean.
    orders: Rényi orders, shape (K,).
    step_size: η > 0.
    temperature: τ > 0.

  Returns:
    Array of shape (K,).

  Raises:
    ValueError: on C ≤ 0, η ≤ 0, τ ≤ 0 or an order ≤ 1.

  Examples:
    >>> full_batch_worst_case_cost(1.0, 3, orders=[2.0], step_size=0.5, temperature=0.25).tolist()
    [1.0]
  """
  _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
  c = jnp.asarray(clip_norm, jnp.result_type(float))
  return full_batch_costs(
    jnp.reshape((2.0 * c) ** 2, (1,)), num_examples, orders=orders, step_size=step_size, temperature=temperature
  )[0]


def _poisson_noise_multiplier(norms, denominator, step_size, temperature, dtype):
  norms = jnp.asarray(norms, dtype)
  noise_std = jnp.asarray(denominator, dtype) * jnp.sqrt(
    2.0 * jnp.asarray(temperature, dtype) / jnp.asarray(step_size, dtype)
  )
  pos = norms > 0
  z = jnp.where(pos, noise_std / jnp.where(pos, norms, 1.0), jnp.inf)
  return jnp.where((norms < 0) | jnp.isnan(norms), jnp.nan, z)  # a negative or NaN norm (under a trace) is no number


@guarded
def poisson_costs(
  norms: ArrayLike,
  q: ArrayLike,
  denominator: ArrayLike,
  *,
  orders: ArrayLike | Sequence[float],
  step_size: ArrayLike,
  temperature: ArrayLike,
  num_terms: int = DEFAULT_NUM_TERMS,
  rdp_method: str = "dp_accounting",
) -> jax.Array:
  """theory §2b: ``ε_t(x; α) = RDP_SGM(q, z_t(x), α)``, ``z_t(x) = b·sqrt(2τ/η) / ‖g_t(x)‖``.

  ``norms`` are the CLIPPED per-example gradient norms ``min(‖∇ℓ_i‖, C)``; a norm of 0 costs 0. The
  result is the envelope ``monotone_in_order`` of the series (RDP is non-decreasing in α).

  Args:
    norms: clipped norms, shape (n,).
    q: sampling rate in (0, 1].
    denominator: b, the fixed denominator of the gradient estimate (q·n).
    orders: Rényi orders (concrete), shape (K,).
    step_size: η > 0.
    temperature: τ > 0.
    num_terms: see :func:`~unlearn_jax.accounting.sampled_gaussian_rdp`.
    rdp_method: its ``method`` at fractional orders: ``"dp_accounting"`` (default) or ``"exact"``.

  Returns:
    Costs of shape (n, K).

  Raises:
    ValueError: on bad q, b ≤ 0, η ≤ 0, τ ≤ 0, orders ≤ 1 or negative norms (concrete inputs).

  Examples:
    >>> import jax.numpy as jnp
    >>> c = poisson_costs(jnp.array([0.0, 1.0]), 1.0, 2.0, orders=[2.0], step_size=2.0, temperature=1.0)
    >>> c.round(6).tolist()  # z = 2
    [[0.0], [0.25]]
  """
  _checks.check_positive("denominator", denominator)
  _check_step(step_size, temperature)
  _checks.check_nonnegative("norms", norms, allow_inf=True)
  dtype = jnp.result_type(jnp.asarray(norms).dtype, float)
  z = _poisson_noise_multiplier(norms, denominator, step_size, temperature, dtype)
  orders_t = _static_orders(orders, "poisson_costs")
  bad = jnp.isnan(z)  # its row is NaN; the series of the others must not see it (chunks share convergence tests)
  rdp = sampled_gaussian_rdp(q, jnp.where(bad, 1.0, z), orders_t, num_terms=num_terms, method=rdp_method)
  return jnp.where(bad[..., None], jnp.nan, monotone_in_order(rdp, orders_t))


DEFAULT_Z_NODES = sgm_grid.DEFAULT_NODES


@guarded
def poisson_costs_on_grid(
  norms: ArrayLike,
  q: ArrayLike,
  denominator: ArrayLike,
  *,
  clip_norm: ArrayLike,
  orders: ArrayLike | Sequence[float],
  step_size: ArrayLike,
  temperature: ArrayLike,
  num_terms: int = DEFAULT_NUM_TERMS,
  rdp_method: str = "dp_accounting",
  num_nodes: int = DEFAULT_Z_NODES,
) -> tuple[jax.Array, jax.Array]:
  """§2b costs charged from a grid of noise levels: an upper bound at a cost independent of n.

  An example's cost depends on u = 1/z² = ‖g‖²η/(2τb²) alone and is non-decreasing in u. The series is
  evaluated at ``num_nodes`` geometric nodes spanning the step's values of u (the top one at the clip
  norm, whose cost is the worst case) and each example is charged the chord between the nodes around it
  at integer orders (RDP is convex in u there) and, at fractional orders, the smaller of the node above
  and the log-convex interpolation in the order of its integer neighbours' chords
  (:mod:`~unlearn_jax.accounting.sgm_grid`). Every entry is ≥ the exact RDP at its order; at integer
  orders it is ≥ the per-example series, at fractional orders it may be below the |binomial| series
  (which over-charges the exact value). ``sgm_grid.costs`` also returns a rigorous bound on the relative
  over-charge of the step.

  Args:
    norms: clipped norms, shape (n,) (0: no cost).
    q, denominator, clip_norm, orders, step_size, temperature, num_terms, rdp_method: as
      :func:`poisson_costs` and :func:`poisson_worst_case_cost`.
    num_nodes: J ≥ 2, the number of nodes.

  Returns:
    ``(costs (n, K), worst_case (K,))``.

  Examples:
    >>> import jax.numpy as jnp
    >>> kw = dict(orders=[2.0, 2.5, 8.0], step_size=0.5, temperature=0.1)
    >>> exact = poisson_costs(jnp.array([0.3, 1.0]), 0.1, 2.0, **kw)
    >>> grid, worst = poisson_costs_on_grid(jnp.array([0.3, 1.0]), 0.1, 2.0, clip_norm=1.0, num_nodes=64, **kw)
    >>> bool(jnp.all(grid[:, [0, 2]] >= exact[:, [0, 2]] * (1 - 1e-6))), bool(jnp.allclose(grid[1], worst))
    (True, True)
  """
  if isinstance(num_nodes, bool) or not isinstance(num_nodes, (int, np.integer)) or num_nodes < 2:
    raise ValueError(f"num_nodes must be an int >= 2, got {num_nodes!r}")
  _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
  dtype = jnp.result_type(jnp.asarray(norms).dtype, float)
  z = _poisson_noise_multiplier(norms, denominator, step_size, temperature, dtype)
  u = jnp.where(jnp.isnan(z), jnp.nan, 1.0 / jnp.where(jnp.isnan(z), 1.0, z) ** 2)
  c = jnp.asarray(clip_norm, dtype)
  z_clip = _poisson_noise_multiplier(jnp.where(jnp.isinf(c), 1.0, c), denominator, step_size, temperature, dtype)
  u_worst = jnp.where(jnp.isinf(c), jnp.inf, 1.0 / z_clip**2)
  orders_t = _static_orders(orders, "poisson_costs_on_grid")
  out = sgm_grid.costs(
    u, u_worst, jnp.asarray(q, dtype), orders_t, num_nodes=int(num_nodes), num_terms=num_terms, rdp_method=rdp_method
  )
  return out.costs, out.worst


@guarded
def poisson_worst_case_cost(
  clip_norm: ArrayLike,
  q: ArrayLike,
  denominator: ArrayLike,
  *,
  orders: ArrayLike | Sequence[float],
  step_size: ArrayLike,
  temperature: ArrayLike,
  num_terms: int = DEFAULT_NUM_TERMS,
  rdp_method: str = "dp_accounting",
) -> jax.Array:
  """theory §2b with ‖g_t(x)‖ replaced by C: the DP-SGD cost ``RDP_SGM(q, b·sqrt(2τ/η)/C, α)``.

  Args:
    clip_norm: C > 0; inf (no clipping) gives inf — never NaN — also when traced.
    q: sampling rate in (0, 1].
    denominator: b > 0.
    orders: Rényi orders (concrete), shape (K,).
    step_size: η > 0.
    temperature: τ > 0.
    num_terms: see :func:`~unlearn_jax.accounting.sampled_gaussian_rdp`.
    rdp_method: its ``method`` at fractional orders: ``"dp_accounting"`` (default) or ``"exact"``.

  Returns:
    Array of shape (K,).

  Raises:
    ValueError: on C ≤ 0 or any bad input of :func:`poisson_costs`.

  Examples:
    >>> poisson_worst_case_cost(1.0, 1.0, 2.0, orders=[2.0], step_size=2.0, temperature=1.0).round(6).tolist()
    [0.25]
    >>> poisson_worst_case_cost(float("inf"), 0.5, 2.0, orders=[2.0], step_size=2.0, temperature=1.0).tolist()
    [inf]
  """
  _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
  c = jnp.reshape(jnp.asarray(clip_norm, jnp.result_type(float)), (1,))
  unclipped = jnp.isinf(c)
  cost = poisson_costs(
    jnp.where(unclipped, 1.0, c),
    q,
    denominator,
    orders=orders,
    step_size=step_size,
    temperature=temperature,
    num_terms=num_terms,
    rdp_method=rdp_method,
  )[0]
  return jnp.where(unclipped, jnp.inf, cost)  # unclipped gradients have no worst case


def mean_step_costs(
  ops: blocks.ExampleOps,
  norms: jax.Array,
  factors: jax.Array,
  mask: jax.Array,
  gbar: PyTree,
  *,
  clip_norm: ArrayLike,
  orders: Sequence[float],
  step_size: ArrayLike,
  temperature: ArrayLike,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """§2a costs of one step whose ĝ is the clipped mean ``gbar`` over ``mask``, and its worst case.

  Returns ``(costs (n, K), worst (K,), recomputed)``; ``recomputed`` says that the distances were
  recomputed by direct differences (``per_example.distances.centered_sq_norms``).
  """
  sq_dist, recomputed = distances.centered_sq_norms(ops, norms, factors, mask, gbar)
  num = jnp.sum(mask)
  kw = dict(orders=orders, step_size=step_size, temperature=temperature)
  return full_batch_costs(sq_dist, num, **kw), full_batch_worst_case_cost(clip_norm, num, **kw), recomputed


def fixed_step_costs(
  clipped_norms: jax.Array,
  q: ArrayLike,
  denominator: ArrayLike,
  *,
  clip_norm: ArrayLike,
  orders: Sequence[float],
  step_size: ArrayLike,
  temperature: ArrayLike,
  num_terms: int = DEFAULT_NUM_TERMS,
  rdp_method: str = "dp_accounting",
  z_nodes: int | None = None,
) -> tuple[jax.Array, jax.Array]:
  """§2b costs of one step with the fixed denominator b (q = 1: full batch), and its worst case; with
  ``z_nodes`` (and q < 1, where the series is costly) charged from the grid of :func:`poisson_costs_on_grid`."""
  kw = dict(orders=orders, step_size=step_size, temperature=temperature, num_terms=num_terms, rdp_method=rdp_method)
  if z_nodes is not None and not (not _checks._is_traced(q) and float(q) == 1.0):
    costs, worst = poisson_costs_on_grid(clipped_norms, q, denominator, clip_norm=clip_norm, num_nodes=z_nodes, **kw)
    return costs, worst.astype(costs.dtype)
  costs = poisson_costs(clipped_norms, q, denominator, **kw)
  return costs, poisson_worst_case_cost(clip_norm, q, denominator, **kw).astype(costs.dtype)


def step_costs(
  loss_fn: Callable,
  params: PyTree,
  data: PyTree,
  *,
  mode: str = "full_batch",
  clip_norm: ArrayLike | None = None,
  step_size: ArrayLike,
  temperature: ArrayLike,
  orders: Any = DEFAULT_ORDERS,
  sampling_rate: ArrayLike | None = None,
  denominator: ArrayLike | None = None,
  mask: ArrayLike | None = None,
  norm_method: str = "auto",
  chunk_size: int | None = None,
  num_terms: int = DEFAULT_NUM_TERMS,
  reduction_blocks: int | None = None,
  rdp_method: str = "dp_accounting",
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example costs of one step at fixed ``params`` (theory §2a/§2b), for any optimizer's run.

  A pure function: call it with the parameters before each step and feed the result to
  :func:`~unlearn_jax.accounting.ledger_update` (the optax-driven training does exactly that).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``.
    params: θ_t.
    data: the examples, leading axis n.
    mode: "full_batch" / "shuffled" (§2a, mean over ``mask``; "full_batch" with a ``denominator``: §2b
      at q = 1) or "poisson" (§2b).
    clip_norm: C > 0 or None (no clipping; the worst case is then inf).
    step_size: η > 0.
    temperature: τ > 0 (the assumed temperature for noise-free training).
    orders: Rényi orders (concrete), shape (K,).
    sampling_rate: q ∈ (0, 1], required for "poisson".
    denominator: the fixed b ("poisson": default q · Σ mask; "full_batch": switches to §2b at q = 1).
    mask: (n,) 1 for the examples in the data set (full batch: in the mean; shuffled: the batch;
      poisson: the active examples whose costs are wanted). Default all ones.
    norm_method: per-example norm method ("auto", "vmap", "ghost").
    chunk_size: examples per chunk for the norms.
    num_terms: see :func:`~unlearn_jax.accounting.sampled_gaussian_rdp`.
    rdp_method: its ``method`` at fractional orders: ``"dp_accounting"`` (default) or ``"exact"``.
    reduction_blocks: None, or R (dividing n) for the fixed reduction order of ḡ.

  Returns:
    ``(costs (n, K), worst_case (K,), norms (n,))`` — norms are the unclipped gradient norms.

  Raises:
    ValueError / TypeError: on bad inputs.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> data = (jnp.array([[1.0], [2.0], [0.0]]), jnp.array([0.0, 0.0, 0.0]))
    >>> costs, worst, norms = step_costs(loss_fn, jnp.array([1.0]), data, clip_norm=10.0,
    ...                                  step_size=0.1, temperature=0.1, orders=[2.0])
    >>> norms.tolist(), costs[:, 0].round(4).tolist()   # gbar = 5/3; 2*0.1*d^2/(4*0.1*4)
    ([1.0, 4.0, 0.0], [0.0556, 0.6806, 0.3472])
  """
  _checks.check_choice("mode", mode, ("full_batch", "poisson", "shuffled"))
  n = _checks.check_batch(data, name="data")
  orders_t = tuple(float(a) for a in _checks.check_orders(orders))
  if clip_norm is not None:
    _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
  _check_step(step_size, temperature)
  m = jnp.ones((n,)) if mask is None else jnp.asarray(mask)
  if m.shape != (n,):
    raise ValueError(f"mask must have shape (n,) = ({n},), got {m.shape}")
  num_blocks = None if reduction_blocks is None else blocks.check_blocks(reduction_blocks)
  if num_blocks is not None and n % num_blocks:
    raise ValueError(f"data has n = {n} examples, which must be a multiple of reduction_blocks = {num_blocks}")
  if denominator is not None and mode == "shuffled":
    raise ValueError("denominator is used with mode='poisson' or 'full_batch', got mode='shuffled'")
  if mode == "poisson":
    if sampling_rate is None:
      raise ValueError("sampling_rate q is required for mode='poisson'")
    _checks.check_probability("sampling_rate", sampling_rate, open_low=True, open_high=False)
  ops = blocks.example_ops(loss_fn, params, data, n, num_blocks, norm_method, chunk_size)
  norms = ops.norms()
  m = m.astype(norms.dtype)
  clip = jnp.inf if clip_norm is None else clip_norm
  factors = pe.clip_factors(norms, clip_norm)
  kw = dict(clip_norm=clip, orders=orders_t, step_size=step_size, temperature=temperature)
  if mode == "poisson" or denominator is not None:
    q = sampling_rate if mode == "poisson" else 1.0
    b = q * jnp.sum(m) if denominator is None else denominator
    costs, worst = fixed_step_costs(norms * factors * m, q, b, num_terms=num_terms, rdp_method=rdp_method, **kw)
    return costs, worst, norms
  _, gbar = ops.grads(m * factors / jnp.maximum(jnp.sum(m), 1.0))
  costs, worst, _ = mean_step_costs(ops, norms, factors, m, gbar, **kw)
  return costs, worst, norms
