"""The noisy (Langevin) training step with per-example clipping and the privacy ledger.

THEORY §0 (the update), §1 (gradient estimates), §2–§3 (per-step costs, ledger). One step is

    θ ← Π_R( θ − η (ĝ + wd·θ) + sqrt(2 η τ) ξ ),   ξ ~ N(0, I),

with ĝ one of the estimates of §1:

- ``"full_batch"``: ĝ = (1/N) Σ_{i active} clip_C(∇ℓ_i), N = number of active examples; costs §2a (an
  estimate). With a fixed ``denominator`` b, or with the individual Rényi filter (then b = n by
  default), ĝ = (1/b) Σ_{i active} clip_C(∇ℓ_i) and the costs are §2b at q = 1 (certified with the filter).
- ``"poisson"``: each example enters independently with probability q (a mask over all n rows, so
  shapes stay fixed); ĝ = (1/b) Σ_{i sampled} clip_C(∇ℓ_i), b = q·n fixed (n = real rows). Costs §2b,
  for every active example (sampled or not), from its own clipped norm.
- ``"shuffled"``: a batch of fixed size B from a per-epoch permutation; ĝ = batch mean. Costs use
  §2a with N = B for the in-batch examples; an estimate (the ledger's ``exact`` is False).

The step computes every per-example gradient norm (``per_example.per_example_grad_norms``, ghost or
vmap), then one backward pass of the re-weighted loss (the clipped sum, never materialising
per-example gradients), and at accounted steps in full-batch/shuffled mode one jvp for the inner
products ⟨∇ℓ_i, ḡ⟩ that give ‖g_i − ḡ‖² = ‖g_i‖² − 2 s_i⟨∇ℓ_i, ḡ⟩ + ‖ḡ‖².

Keys: ``step`` takes a key used once for this step (derive it with ``jax.random.fold_in(key, t)``).
The noise uses ``fold_in(step_key, 0)`` and Poisson sampling ``fold_in(step_key, 1)``, so
:func:`langevin_noise` can reproduce the exact noise of a step. Shuffled mode draws the permutation of
epoch e from ``fold_in(state.shuffle_key, e)`` (``shuffle_key`` is set by ``init``), so every step of an
epoch sees the same permutation.
"""

from __future__ import annotations

import math
from typing import Any, Callable, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax import accounting as acc
from unlearn_jax import per_example as pe
from unlearn_jax.per_example import distances as _distances
from unlearn_jax.per_example.blocks import check_blocks as _check_blocks
from unlearn_jax.per_example.blocks import example_ops as _example_ops
from unlearn_jax.per_example.blocks import fixed_order_sum


def _mean_costs(ops, norms, factors, mask, gbar, orders, step_size, temperature):
  sq_dist, imprecise = _distances.centered_sq_norms(ops, norms, factors, mask, gbar)
  num = jnp.sum(mask)
  return acc.full_batch_costs(sq_dist, num, orders, step_size, temperature), num, imprecise

__all__ = [
    "MODES",
    "Algorithm",
    "SGLDInfo",
    "SGLDState",
    "fixed_order_sum",
    "langevin_noise",
    "sgld",
    "step_costs",
]

PyTree = Any
MODES = ("full_batch", "poisson", "shuffled")


class SGLDState(NamedTuple):
  """State of the noisy step.

  Attributes:
    params: parameter pytree θ_t.
    step: int32 step counter t.
    ledger: the :class:`~unlearn_jax.accounting.Ledger`, or None when accounting is off.
    shuffle_key: key of the per-epoch permutations (shuffled mode), else None.
  """

  params: PyTree
  step: jax.Array
  ledger: acc.Ledger | None
  shuffle_key: jax.Array | None = None


class SGLDInfo(NamedTuple):
  """Per-step diagnostics.

  Attributes:
    loss: mean per-example loss over the examples that entered ĝ (at θ_t, before the step).
    grad_norms: (n,) unclipped per-example gradient norms (all n rows are computed in every mode).
    batch_mask: (n,) float, 1 for the examples that entered the gradient estimate this step.
    noise_norm: ‖sqrt(2ητ) ξ‖.
    costs: (n, K) this step's per-example costs (times the stride, zeros at unaccounted steps), or
      None when accounting is off.
    worst_case_cost: (K,) this step's worst-case cost (same conventions), or None.
    recomputed_costs: bool, True when the §2a distances were recomputed by direct differences because
      the fast three-term form would have lost precision (g_i ≈ ḡ).
  """

  loss: jax.Array
  grad_norms: jax.Array
  batch_mask: jax.Array
  noise_norm: jax.Array
  costs: jax.Array | None
  worst_case_cost: jax.Array | None = None
  recomputed_costs: jax.Array | None = None


class Algorithm(NamedTuple):
  """An ``(init, step)`` pair of pure functions."""

  init: Callable
  step: Callable


# ----------------------------------------------------------------------------------------------------
# Helpers
# ----------------------------------------------------------------------------------------------------


def _noise_key(step_key: jax.Array) -> jax.Array:
  return jax.random.fold_in(step_key, 0)


def _sample_key(step_key: jax.Array) -> jax.Array:
  return jax.random.fold_in(step_key, 1)


def _gaussian_like(tree: PyTree, key: jax.Array) -> PyTree:
  leaves, treedef = jax.tree.flatten(tree)
  keys = jax.random.split(key, max(len(leaves), 1))
  noise = [jax.random.normal(k, jnp.shape(x), jnp.result_type(x)) for k, x in zip(keys, leaves)]
  return jax.tree.unflatten(treedef, noise)


def _tree_vdot(a: PyTree, b: PyTree) -> jax.Array:
  return sum(jnp.vdot(x, y) for x, y in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def _tree_norm(a: PyTree) -> jax.Array:
  sq = _tree_vdot(a, a)
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)






















def _check_static_float(name: str, value: Any, *, positive: bool, allow_none: bool = True) -> None:
  if value is None:
    if not allow_none:
      raise ValueError(f"{name} is required, got None")
    return
  if positive:
    _checks.check_positive(name, value, allow_inf=True)
  else:
    _checks.check_nonnegative(name, value)


def _when(pred: Any, fn: Callable, zeros: Callable) -> Any:
  """``fn()`` if ``pred`` else ``zeros()``; a Python True skips the cond."""
  if pred is True:
    return fn()
  return jax.lax.cond(pred, lambda _: fn(), lambda _: zeros(), None)




def _orders_of(accounting: acc.AccountingConfig | None, orders: Any) -> tuple[float, ...]:
  if orders is not None:
    return tuple(float(a) for a in _checks.check_orders(orders))
  if accounting is None:
    raise ValueError("step_costs needs orders (or an AccountingConfig)")
  return accounting.orders


# ----------------------------------------------------------------------------------------------------
# Costs (THEORY §2a/§2b) at fixed parameters
# ----------------------------------------------------------------------------------------------------






def step_costs(
    loss_fn: Callable,
    params: PyTree,
    data: PyTree,
    *,
    mode: str = "full_batch",
    clip_norm: ArrayLike | None = None,
    step_size: ArrayLike,
    temperature: ArrayLike,
    orders: Any = acc.DEFAULT_ORDERS,
    sampling_rate: ArrayLike | None = None,
    denominator: ArrayLike | None = None,
    mask: ArrayLike | None = None,
    norm_method: str = "auto",
    chunk_size: int | None = None,
    num_terms: int = acc.DEFAULT_NUM_TERMS,
    reduction_blocks: int | None = None,
) -> tuple[jax.Array, jax.Array, jax.Array]:
  """Per-example costs of one step at fixed ``params`` (THEORY §2a/§2b), for any optimizer's run.

  A pure function, so ``loops.py`` can account a run driven by any optax optimizer: call it with the
  parameters before each step and feed the result to :func:`~unlearn_jax.accounting.ledger_update`.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``.
    params: θ_t.
    data: the examples, leading axis n.
    mode: "full_batch" / "shuffled" (§2a, mean over ``mask``) or "poisson" (§2b).
    clip_norm: C > 0 or None (no clipping; the worst case is then inf).
    step_size: η > 0.
    temperature: τ > 0 (the assumed temperature for noise-free training).
    orders: Rényi orders (concrete), shape (K,).
    sampling_rate: q ∈ (0, 1], required for "poisson".
    denominator: b for "poisson" (default q · Σ mask... q·n with n the real rows in ``mask``).
    mask: (n,) 1 for the examples in the data set (full batch: in the mean; shuffled: the batch;
      poisson: the active examples whose costs are wanted). Default all ones.
    norm_method: per-example norm method ("auto", "vmap", "ghost").
    chunk_size: examples per chunk for the norms.
    num_terms: see :func:`~unlearn_jax.accounting.sampled_gaussian_rdp`.
    reduction_blocks: None, or R (dividing n) for the fixed reduction order of ḡ (see :func:`sgld`).

  Returns:
    ``(costs (n, K), worst_case (K,), norms (n,))`` — norms are the unclipped gradient norms.

  Raises:
    ValueError / TypeError: on bad inputs (see :func:`sgld`).

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> data = (jnp.array([[1.0], [2.0], [0.0]]), jnp.array([0.0, 0.0, 0.0]))
    >>> costs, worst, norms = step_costs(loss_fn, jnp.array([1.0]), data, clip_norm=10.0,
    ...                                  step_size=0.1, temperature=0.1, orders=[2.0])
    >>> norms.tolist(), costs[:, 0].round(4).tolist()   # gbar = 5/3; 2*0.1*d^2/(4*0.1*4)
    ([1.0, 4.0, 0.0], [0.0556, 0.6806, 0.3472])
  """
  _checks.check_choice("mode", mode, MODES)
  n = _checks.check_batch(data, name="data")
  orders_t = _orders_of(None, orders)
  _check_static_float("clip_norm", clip_norm, positive=True)
  _checks.check_positive("step_size", step_size)
  _checks.check_positive("temperature", temperature)
  m = jnp.ones((n,)) if mask is None else jnp.asarray(mask)
  if m.shape != (n,):
    raise ValueError(f"mask must have shape (n,) = ({n},), got {m.shape}")
  blocks = None if reduction_blocks is None else _check_blocks(reduction_blocks)
  if blocks is not None and n % blocks:
    raise ValueError(f"data has n = {n} examples, which must be a multiple of reduction_blocks = {blocks}")
  ops = _example_ops(loss_fn, params, data, n, blocks, norm_method, chunk_size)
  norms = ops.norms()
  m = m.astype(norms.dtype)
  factors = pe.clip_factors(norms, clip_norm)
  c_inf = math.inf if clip_norm is None else clip_norm
  if denominator is not None and mode == "shuffled":
    raise ValueError("denominator is used with mode='poisson' or 'full_batch', got mode='shuffled'")
  if mode == "poisson" or denominator is not None:
    if mode == "poisson":
      if sampling_rate is None:
        raise ValueError("sampling_rate q is required for mode='poisson'")
      _checks.check_probability("sampling_rate", sampling_rate, open_low=True, open_high=False)
    q = sampling_rate if mode == "poisson" else 1.0
    b = q * jnp.sum(m) if denominator is None else denominator
    clipped = norms * factors * m
    costs = acc.poisson_costs(clipped, q, b, orders_t, step_size, temperature, num_terms=num_terms)
    if clip_norm is None:
      worst = jnp.full((len(orders_t),), jnp.inf, costs.dtype)
    else:
      worst = acc.poisson_worst_case_cost(c_inf, q, b, orders_t, step_size, temperature, num_terms=num_terms)
    return costs, worst, norms
  num = jnp.sum(m)
  _, gsum = ops.grads(m * factors / jnp.maximum(num, 1.0))
  costs, num, _ = _mean_costs(ops, norms, factors, m, gsum, orders_t, step_size, temperature)
  worst = acc.full_batch_worst_case_cost(c_inf, num, orders_t, step_size, temperature)
  return costs, worst, norms


# ----------------------------------------------------------------------------------------------------
# The SGLD builder
# ----------------------------------------------------------------------------------------------------


def sgld(
    loss_fn: Callable,
    *,
    mode: str = "full_batch",
    clip_norm: float | None = None,
    weight_decay: float = 0.0,
    projection_radius: float | None = None,
    sampling_rate: float | None = None,
    batch_size: int | None = None,
    accounting: acc.AccountingConfig | None = None,
    norm_method: str = "auto",
    chunk_size: int | None = None,
    denominator: float | None = None,
    reduction_blocks: int | None = None,
) -> Algorithm:
  """Builds the noisy step (THEORY §0–§1) with the per-instance ledger (§2–§3) wired in.

  ``init(params, num_examples, *, shuffle_key=None) -> SGLDState`` and
  ``step(state, data, key, step_size, temperature, *, accounting_temperature=None, data_mask=None)
  -> (SGLDState, SGLDInfo)``. ``data`` is the WHOLE training set (leading axis n); the mode picks the
  examples. ``data_mask`` (n,) marks padding rows (0) that never count (and cost nothing).
  ``step_size`` and ``temperature`` are array arguments: new values do not recompile a jitted step.
  ``temperature = 0`` is noise-free (clipped) gradient descent; with accounting on, pass the assumed
  ``accounting_temperature`` > 0 for its costs (the ranking of §2a costs does not depend on it).

  Accounting (``accounting=accountant(...)``): at every ``stride``-th step the costs of THEORY §2 are
  computed inside the step and added to ``state.ledger`` with weight ``stride``. With the individual
  Rényi filter (budget B at order α*), an example whose ``P(x, α*) + ε_t(x, α*)`` would exceed B is
  removed from this and every later gradient and charged nothing more. The filter needs each removal
  to depend on the history and that example alone (Feldman & Zrnic 2021), so in full-batch mode it
  uses a fixed denominator: ĝ = (1/b) Σ_{active} g_i with b fixed for the run (default the number of
  real rows n), and example x's cost is α η ‖g_t(x)‖² / (4 τ b²) (the q = 1 case of THEORY §2b), a
  function of θ_t and x only; no certified loss ever exceeds B. Without the filter the full-batch mode
  averages over the active examples (THEORY §2a): an estimate.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for ONE example.
    mode: "full_batch", "poisson" or "shuffled".
    clip_norm: per-example clip norm C > 0, or None (no clipping).
    weight_decay: wd ≥ 0; the step adds ``wd · θ`` to ĝ (the regularizer r = wd/2 ‖θ‖²).
    projection_radius: R > 0 of the projection Π_R, or None.
    sampling_rate: q ∈ (0, 1] (poisson mode).
    batch_size: B (shuffled mode).
    accounting: an :class:`~unlearn_jax.accounting.AccountingConfig`, or None (no ledger).
    norm_method: "auto", "vmap" or "ghost" (see ``per_example.per_example_grad_norms``).
    chunk_size: examples per chunk for the per-example norms (bounds memory).
    denominator: a fixed b of ĝ = (1/b) Σ (poisson mode: default q · number of real rows; full-batch
      mode: switches to the fixed-denominator estimate, the default with the filter being b = n); e.g.
      to compare a filtered run with one on a data set without the removed examples at the same b.
    reduction_blocks: None (default: sums over examples as XLA chooses, fastest), or R >= 1 for a
      fixed reduction order: the n rows (n must be a multiple of R; pad with
      ``distributed.pad_to_multiple`` and pass the mask as ``data_mask``) are split into R contiguous
      blocks, each block's clipped gradient sum and loss sum is computed separately with the same
      shapes, and the R block sums are added in a fixed order (:func:`fixed_order_sum`). With R at
      least twice the mesh's ``"data"`` axis size and a multiple of it (R = 8 for 1, 2 and 4 devices),
      results were bitwise identical on 1, 2 and 4 devices and on two processes (measured on XLA CPU,
      ``docs/distributed.md``); on one device they equal the default to rounding. Costs R/D copies
      of the parameters per device.

  Returns:
    An :class:`Algorithm` ``(init, step)``.

  Raises:
    ValueError: on a bad mode, C ≤ 0, wd < 0, R ≤ 0, q ∉ (0, 1], a missing q / batch size.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from unlearn_jax.accounting import accountant
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> data = (jnp.array([[1.0], [2.0], [3.0]]), jnp.array([1.0, 2.0, 2.0]))
    >>> alg = sgld(loss_fn, clip_norm=1.0, accounting=accountant([2.0, 8.0]))
    >>> state = alg.init(jnp.zeros(1), 3)
    >>> state, info = jax.jit(alg.step)(state, data, jax.random.key(0), 0.1, 1e-3)
    >>> state.ledger.realized.shape, info.grad_norms.round(3).tolist()
    ((3, 2), [1.0, 4.0, 6.0])
  """
  _checks.check_choice("mode", mode, MODES)
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable as loss_fn(params, example), got {loss_fn!r}")
  _check_static_float("clip_norm", clip_norm, positive=True)
  _checks.check_nonnegative("weight_decay", weight_decay)
  _check_static_float("projection_radius", projection_radius, positive=True)
  _checks.check_choice("norm_method", norm_method, pe.NORM_METHODS)
  if chunk_size is not None and (isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1):
    raise ValueError(f"chunk_size must be None or a positive integer, got {chunk_size!r}")
  if mode == "poisson":
    if sampling_rate is None:
      raise ValueError("sampling_rate q is required for mode='poisson'")
    _checks.check_probability("sampling_rate", sampling_rate, open_low=True, open_high=False)
    sampling_rate = float(sampling_rate)
  elif sampling_rate is not None:
    raise ValueError(f"sampling_rate is only used with mode='poisson', got {sampling_rate!r} with mode={mode!r}")
  if mode == "shuffled":
    if isinstance(batch_size, bool) or not isinstance(batch_size, (int, np.integer)) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive int for mode='shuffled', got {batch_size!r}")
    batch_size = int(batch_size)
  if accounting is not None and not isinstance(accounting, acc.AccountingConfig):
    raise TypeError(f"accounting must be an AccountingConfig from accountant(...) or None, got {type(accounting).__name__}")
  if denominator is not None:
    if mode == "shuffled":
      raise ValueError(f"denominator is used with mode='poisson' or 'full_batch', got {denominator!r} with "
                       "mode='shuffled'")
    _checks.check_positive("denominator", denominator)
  if mode == "shuffled" and accounting is not None and accounting.uses_filter:
    raise ValueError("the individual Renyi filter (filter_budget) certifies full-batch and Poisson runs only; "
                     "shuffled-minibatch costs are estimates (THEORY §2a), so there is nothing to certify")
  clip_c = math.inf if clip_norm is None else float(clip_norm)
  wd = float(weight_decay)
  blocks = None if reduction_blocks is None else _check_blocks(reduction_blocks)

  def init(params: PyTree, num_examples: int, *, shuffle_key: jax.Array | None = None) -> SGLDState:
    """Initial state: step 0, an empty ledger when accounting is on."""
    ledger = None if accounting is None else acc.ledger_init(num_examples, accounting)
    if ledger is not None and mode == "shuffled":
      ledger = ledger._replace(exact=jnp.asarray(False), certified=jnp.asarray(False))
    if mode == "shuffled" and shuffle_key is None:
      shuffle_key = jax.random.key(0)
    if mode != "shuffled":
      shuffle_key = None
    return SGLDState(params=params, step=jnp.zeros((), jnp.int32), ledger=ledger, shuffle_key=shuffle_key)

  def step(
      state: SGLDState,
      data: PyTree,
      key: jax.Array,
      step_size: ArrayLike,
      temperature: ArrayLike,
      *,
      accounting_temperature: ArrayLike | None = None,
      data_mask: ArrayLike | None = None,
  ) -> tuple[SGLDState, SGLDInfo]:
    """One noisy step on the whole data set ``data`` (see :func:`sgld`)."""
    n = _checks.check_batch(data, name="data")
    _checks.check_positive("step_size", step_size)
    _checks.check_nonnegative("temperature", temperature)
    if accounting_temperature is not None:
      _checks.check_positive("accounting_temperature", accounting_temperature)
    elif accounting is not None and not _checks._is_traced(temperature) and np.any(np.asarray(temperature) == 0):
      raise ValueError(
          "temperature is 0 (noise-free training) with accounting on: pass accounting_temperature > 0, "
          "the temperature assumed for the privacy costs"
      )
    ledger = state.ledger
    if accounting is not None:
      if ledger is None:
        raise ValueError("accounting is on but state.ledger is None; build the state with this algorithm's init")
      if ledger.realized.shape[0] != n:
        raise ValueError(
            f"the ledger was created for {ledger.realized.shape[0]} examples but data has n = {n}; "
            "a ledger must be used with the data set it was created for"
        )
    if mode == "shuffled" and batch_size > n:
      raise ValueError(f"batch_size = {batch_size} exceeds the number of examples n = {n}")
    if blocks is not None and n % blocks:
      raise ValueError(
          f"data has n = {n} examples, which must be a multiple of reduction_blocks = {blocks}; pad it "
          f"with distributed.pad_to_multiple(data, {blocks}) and pass the returned mask as data_mask"
      )
    params = state.params
    dtype = jnp.result_type(*[jnp.result_type(x) for x in jax.tree.leaves(params)], float)
    eta = jnp.asarray(step_size, dtype)
    tau = jnp.asarray(temperature, dtype)
    tau_acc = tau if accounting_temperature is None else jnp.asarray(accounting_temperature, dtype)
    real = jnp.ones((n,), dtype) if data_mask is None else jnp.asarray(data_mask, dtype)
    if real.shape != (n,):
      raise ValueError(f"data_mask must have shape (n,) = ({n},), got {real.shape}")
    active = real if ledger is None else real * ledger.active.astype(dtype)

    ops = _example_ops(loss_fn, params, data, n, blocks, norm_method, chunk_size)
    norms = ops.norms().astype(dtype)
    factors = pe.clip_factors(norms, clip_norm)
    orders = None if accounting is None else accounting.orders
    stride = 1 if accounting is None else accounting.stride
    do_account = True if stride == 1 else (state.step % stride == 0)
    k_orders = 0 if accounting is None else len(orders)

    def zeros():
      return jnp.zeros((n, k_orders), dtype), jnp.zeros((k_orders,), dtype)

    # ---- which examples enter the estimate, and with what weight ----
    fixed_b = mode == "poisson" or denominator is not None or (accounting is not None and accounting.uses_filter)
    recomputed = jnp.zeros((), bool)
    if fixed_b:
      # Poisson sampling (q < 1) or a fixed denominator over the full batch (q = 1): ĝ = (1/b) Σ_{used}
      # g_i and example i's cost (THEORY §2b) depends on θ_t and its own clipped norm alone, so the
      # individual filter decides for each example by itself (Feldman & Zrnic 2021).
      q = sampling_rate if mode == "poisson" else 1.0
      if mode == "poisson":
        sampled = jax.random.bernoulli(_sample_key(key), sampling_rate, (n,)).astype(dtype)
      else:
        sampled = jnp.ones((n,), dtype)
      b = q * jnp.sum(real) if denominator is None else jnp.asarray(denominator, dtype)
      keep = None if ledger is None else ledger.active
      if accounting is not None:
        clipped = norms * factors * active

        def fixed_b_costs():
          c = acc.poisson_costs(clipped, q, b, orders, eta, tau_acc, num_terms=accounting.num_terms)
          if clip_norm is None:
            w = jnp.full((k_orders,), jnp.inf, dtype)
          else:
            w = acc.poisson_worst_case_cost(clip_c, q, b, orders, eta, tau_acc, num_terms=accounting.num_terms)
          return c.astype(dtype), w.astype(dtype)

        costs, worst = _when(do_account, fixed_b_costs, zeros)
        costs, worst = costs * stride, worst * stride
        keep = jnp.where(do_account, acc.filter_admits(ledger, costs, accounting), ledger.active)
        active = active * keep.astype(dtype)
      batch_mask = sampled * active
      losses, ghat = ops.grads(batch_mask * factors / b)
    else:
      # The mean over the active examples (full batch) or over a shuffled minibatch: THEORY §2a, an
      # estimate (no filter: a removal would change the others' costs through N and ḡ).
      if mode == "shuffled":
        steps_per_epoch = max(n // batch_size, 1)
        epoch = state.step // steps_per_epoch
        pos = state.step % steps_per_epoch
        perm = jax.random.permutation(jax.random.fold_in(state.shuffle_key, epoch), n)
        idx = jax.lax.dynamic_slice(perm, (pos * batch_size,), (batch_size,))
        batch_mask = jnp.zeros((n,), dtype).at[idx].set(1.0) * active
      else:
        batch_mask = active
      losses, ghat = ops.grads(batch_mask * factors / jnp.maximum(jnp.sum(batch_mask), 1.0))
      keep = None if ledger is None else ledger.active
      if accounting is not None:

        def mean_costs():
          c, num, slow = _mean_costs(ops, norms, factors, batch_mask, ghat, orders, eta, tau_acc)
          w = acc.full_batch_worst_case_cost(clip_c, num, orders, eta, tau_acc)
          return c.astype(dtype) * stride, w.astype(dtype) * stride, slow

        costs, worst, recomputed = _when(do_account, mean_costs, lambda: zeros() + (jnp.zeros((), bool),))
    num_used = jnp.sum(batch_mask)

    # ---- the update ----
    noise = _gaussian_like(params, _noise_key(key))
    scale = jnp.sqrt(2.0 * eta * tau)
    noise = jax.tree.map(lambda z: (scale * z).astype(z.dtype), noise)
    new_params = jax.tree.map(
        lambda p, g, z: (p - eta * (g + wd * p) + z).astype(jnp.result_type(p)), params, ghat, noise
    )
    if projection_radius is not None:
      norm = _tree_norm(new_params)
      shrink = jnp.where(norm > projection_radius, projection_radius / jnp.where(norm > 0, norm, 1.0), 1.0)
      new_params = jax.tree.map(lambda p: (p * shrink).astype(p.dtype), new_params)

    # ---- the ledger ----
    info_costs = info_worst = None
    if accounting is not None:
      # The filter decision was taken above (the gradient already excludes removed examples); charge
      # exactly the examples that stay active, and only at accounted steps.
      charged = costs * keep[:, None].astype(dtype)
      ledger = acc.ledger_update(
          ledger._replace(active=keep),
          charged,
          worst,
          config=acc.AccountingConfig(accounting.orders, 1, None, None, accounting.num_terms),
          accounted=do_account,
      )
      info_costs, info_worst = charged, worst
    info = SGLDInfo(
        loss=fixed_order_sum(losses * batch_mask, blocks) / jnp.maximum(num_used, 1.0),
        grad_norms=norms,
        batch_mask=batch_mask,
        noise_norm=_tree_norm(noise),
        costs=info_costs,
        worst_case_cost=info_worst,
        recomputed_costs=recomputed,
    )
    return state._replace(params=new_params, step=state.step + 1, ledger=ledger), info

  return Algorithm(init=init, step=step)


# ----------------------------------------------------------------------------------------------------
# optax form
# ----------------------------------------------------------------------------------------------------


class LangevinNoiseState(NamedTuple):
  count: jax.Array
  key: jax.Array


def langevin_noise(temperature: ArrayLike | Callable, step_size: ArrayLike | Callable, key: jax.Array) -> optax.GradientTransformation:
  """An optax transformation adding Langevin noise ``sqrt(2 η τ) ξ`` to the updates.

  Place it AFTER the optimizer's scaling, so that updates are parameter increments:
  ``optax.chain(optax.add_decayed_weights(wd), optax.sgd(η), langevin_noise(τ, η, key))`` takes the
  unclipped full-batch step of :func:`sgld`. At update number t it draws ξ with the same key as
  ``sgld``'s step given ``jax.random.fold_in(key, t)``, so the two are equal draw for draw.

  Args:
    temperature: τ ≥ 0, or a schedule ``count -> τ``.
    step_size: η > 0, or a schedule ``count -> η``.
    key: base key; update t uses ``fold_in(key, t)``.

  Returns:
    An ``optax.GradientTransformation``.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> tx = optax.chain(optax.sgd(0.1), langevin_noise(0.0, 0.1, jax.random.key(0)))
    >>> params = jnp.ones(2)
    >>> updates, _ = tx.update(jnp.ones(2), tx.init(params), params)
    >>> updates.tolist()   # tau = 0: plain SGD
    [-0.1, -0.1]
  """
  if not callable(temperature):
    _checks.check_nonnegative("temperature", temperature)
  if not callable(step_size):
    _checks.check_positive("step_size", step_size)

  def init_fn(params):
    del params
    return LangevinNoiseState(count=jnp.zeros((), jnp.int32), key=key)

  def update_fn(updates, state, params=None):
    del params
    tau = temperature(state.count) if callable(temperature) else temperature
    eta = step_size(state.count) if callable(step_size) else step_size
    step_key = jax.random.fold_in(state.key, state.count)
    noise = _gaussian_like(updates, _noise_key(step_key))
    scale = jnp.sqrt(2.0 * jnp.asarray(eta) * jnp.asarray(tau))
    new_updates = jax.tree.map(lambda u, z: (u + scale * z).astype(jnp.result_type(u)), updates, noise)
    return new_updates, LangevinNoiseState(count=state.count + 1, key=state.key)

  return optax.GradientTransformation(init_fn, update_fn)
