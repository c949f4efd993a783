"""The per-instance privacy ledger (theory §3): realized losses P(x, α), the individual Rényi filter.

:class:`Ledger` holds the realized losses P(x, α) (n, K) of a run; :func:`ledger_update` adds one step's
costs, applies the individual Rényi filter (Feldman & Zrnic 2021) — the one place where examples are
removed — and never sums a non-finite cost silently (``finite`` turns False; :func:`check_ledger`
raises). :func:`group_privacy_loss` bounds the loss of a forget set from the individual losses.
"""

from __future__ import annotations

from collections.abc import Sequence
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax.accounting.costs import DEFAULT_Z_NODES
from unlearn_jax.accounting.sgm import DEFAULT_NUM_TERMS, DEFAULT_ORDERS

__all__ = [
  "AccountingConfig",
  "Ledger",
  "accountant",
  "average_ledgers",
  "check_ledger",
  "filter_admits",
  "group_factor",
  "group_privacy_loss",
  "ledger_add_rows",
  "ledger_init",
  "ledger_update",
]


class AccountingConfig(NamedTuple):
  """Static (hashable) accounting settings; build with :func:`accountant`.

  Attributes:
    orders: Rényi orders (floats > 1).
    stride: evaluate the costs every ``stride`` steps and count them ``stride`` times (an estimate
      when > 1, flagged in the ledger); ``"epoch"``: once per epoch (round(1/q) steps of a Poisson run;
      the refresh of Yu et al., *Individual privacy accounting for DP-SGD*). A shuffled step charges only
      its batch, so a shuffled ledger strides over whole epochs (``"epoch"``: every example at its own
      batch of every epoch); resolved by the step (``algorithms.sgld.resolve_stride``).
    filter_budget: budget B of the individual Rényi filter at order ``filter_order`` (None: off).
    filter_order: the order α* of the filter; must be one of ``orders``.
    num_terms: terms of the fractional-order series of :func:`sampled_gaussian_rdp`.
    z_nodes: Poisson costs (q < 1) from a grid of this many noise levels (the default,
      :data:`~unlearn_jax.accounting.costs.DEFAULT_Z_NODES`: an upper bound of the exact RDP whose cost
      does not grow with n, :func:`~unlearn_jax.accounting.costs.poisson_costs_on_grid`), or None for
      the series of every example.
    rdp_method: the evaluation of the Poisson costs at fractional orders: ``"dp_accounting"`` (the
      |binomial| series, an upper bound) or ``"exact"`` (:mod:`~unlearn_jax.accounting.sgm_exact`).
  """

  orders: tuple[float, ...]
  stride: int | str = 1
  filter_budget: float | None = None
  filter_order: float | None = None
  num_terms: int = DEFAULT_NUM_TERMS
  z_nodes: int | None = DEFAULT_Z_NODES
  rdp_method: str = "dp_accounting"

  @property
  def filter_index(self) -> int | None:
    """Index of ``filter_order`` in ``orders`` (None when the filter is off)."""
    if self.filter_budget is None:
      return None
    return self.orders.index(self.filter_order)

  @property
  def uses_filter(self) -> bool:
    return self.filter_budget is not None


def accountant(
  orders: ArrayLike | Sequence[float] = DEFAULT_ORDERS,
  *,
  stride: int | str = 1,
  filter_budget: float | None = None,
  filter_order: float | None = None,
  num_terms: int = DEFAULT_NUM_TERMS,
  z_nodes: int | None = DEFAULT_Z_NODES,
  rdp_method: str = "dp_accounting",
) -> AccountingConfig:
  """Builds the accounting settings: every step (exact), strided (estimate) or with a Rényi filter.

  Args:
    orders: Rényi orders > 1 (default :data:`DEFAULT_ORDERS`).
    stride: evaluate costs every ``stride`` ≥ 1 steps and count each evaluation ``stride`` times, or
      ``"epoch"`` (once per epoch of a shuffled or Poisson run).
    filter_budget: B > 0 for the individual Rényi filter (Feldman & Zrnic 2021), or None.
    filter_order: α* (one of ``orders``), required with ``filter_budget``.
    num_terms: terms per fractional order in :func:`sampled_gaussian_rdp`.
    z_nodes: nodes (≥ 2) of the grid of noise levels the Poisson costs are charged from (default
      :data:`~unlearn_jax.accounting.costs.DEFAULT_Z_NODES`; an upper bound of the exact RDP, see
      :func:`~unlearn_jax.accounting.costs.poisson_costs_on_grid`), or None: every example's own series
      (its cost grows with n).
    rdp_method: ``"dp_accounting"`` (default) or ``"exact"``: the Poisson costs at fractional orders,
      see :func:`sampled_gaussian_rdp`'s ``method``.

  Returns:
    An :class:`AccountingConfig`. The ledger it produces is certified iff the filter is on and
    ``stride == 1``.

  Raises:
    ValueError: on bad orders, stride < 1, B ≤ 0, or a filter order missing from ``orders``.

  Examples:
    >>> cfg = accountant([2.0, 8.0], filter_budget=1.0, filter_order=8.0)
    >>> cfg.filter_index, cfg.stride
    (1, 1)
  """
  orders_t = tuple(float(a) for a in _checks.check_orders(orders))
  if stride != "epoch" and (isinstance(stride, bool) or not isinstance(stride, (int, np.integer)) or stride < 1):
    raise ValueError(f"stride must be an int >= 1 or 'epoch', got {stride!r}")
  if isinstance(num_terms, bool) or not isinstance(num_terms, (int, np.integer)) or num_terms < 1:
    raise ValueError(f"num_terms must be an int >= 1, got {num_terms!r}")
  if filter_budget is None:
    if filter_order is not None:
      raise ValueError(f"filter_order={filter_order!r} given without filter_budget; pass both or neither")
  else:
    _checks.check_positive("filter_budget", filter_budget)
    if filter_order is None:
      raise ValueError("filter_order is required with filter_budget (the order alpha* of the filter)")
    if float(filter_order) not in orders_t:
      raise ValueError(f"filter_order must be one of orders {list(orders_t)}, got {filter_order!r}")
    filter_budget = float(filter_budget)
    filter_order = float(filter_order)
  stride = stride if stride == "epoch" else int(stride)
  if rdp_method not in ("dp_accounting", "exact"):
    raise ValueError(f"rdp_method must be 'dp_accounting' or 'exact', got {rdp_method!r}")
  if z_nodes is not None and (isinstance(z_nodes, bool) or not isinstance(z_nodes, (int, np.integer)) or z_nodes < 2):
    raise ValueError(f"z_nodes must be None or an int >= 2, got {z_nodes!r}")
  return AccountingConfig(
    orders_t,
    stride,
    filter_budget,
    filter_order,
    int(num_terms),
    None if z_nodes is None else int(z_nodes),
    rdp_method,
  )


class Ledger(NamedTuple):
  """Per-instance privacy losses along a run (theory §3). All leaves are arrays.

  Attributes:
    orders: (K,) Rényi orders.
    realized: (n, K) realized losses P(x, α), summed along the run.
    worst_case: (K,) worst-case loss of the same run (every example charged the bound).
    num_steps: int32, steps seen.
    num_accounted: int32, steps whose cost was evaluated.
    active: (n,) bool, False once the individual filter removed the example.
    finite: bool, False once a non-finite cost was met (such a cost is never summed).
    certified: bool, True iff every step was accounted and the filter was on (then ``realized`` is a
      certified individual RDP bound; otherwise it is an estimate).
    exact: bool, False for strided accounting or shuffled-minibatch mode (estimates).
  """

  orders: jax.Array
  realized: jax.Array
  worst_case: jax.Array
  num_steps: jax.Array
  num_accounted: jax.Array
  active: jax.Array
  finite: jax.Array
  certified: jax.Array
  exact: jax.Array


def ledger_init(num_examples: int, config: AccountingConfig, *, dtype: Any = None) -> Ledger:
  """An empty ledger for ``num_examples`` examples.

  Args:
    num_examples: n ≥ 1.
    config: from :func:`accountant`.
    dtype: float dtype of the losses (default: JAX's default float, float64 under x64).

  Returns:
    A :class:`Ledger` with zero losses and every example active.

  Raises:
    ValueError: if ``num_examples`` < 1.
    TypeError: if ``config`` is not an :class:`AccountingConfig`.

  Examples:
    >>> led = ledger_init(3, accountant([2.0, 4.0]))
    >>> led.realized.shape, bool(led.certified), bool(led.exact)
    ((3, 2), False, True)
  """
  if isinstance(num_examples, bool) or not isinstance(num_examples, (int, np.integer)) or num_examples < 1:
    raise ValueError(f"num_examples must be an int >= 1, got {num_examples!r}")
  if not isinstance(config, AccountingConfig):
    raise TypeError(f"config must be an AccountingConfig from accountant(...), got {type(config).__name__}")
  dtype = jnp.result_type(float) if dtype is None else dtype
  k = len(config.orders)
  return Ledger(
    orders=jnp.asarray(config.orders, dtype),
    realized=jnp.zeros((num_examples, k), dtype),
    worst_case=jnp.zeros((k,), dtype),
    num_steps=jnp.zeros((), jnp.int32),
    num_accounted=jnp.zeros((), jnp.int32),
    active=jnp.ones((num_examples,), bool),
    finite=jnp.ones((), bool),
    certified=jnp.asarray(config.uses_filter and config.stride == 1),
    exact=jnp.asarray(config.stride == 1),
  )


def _check_ledger_costs(ledger: Ledger, costs: Any, config: AccountingConfig) -> None:
  if not isinstance(config, AccountingConfig):
    raise TypeError(f"config must be an AccountingConfig from accountant(...), got {type(config).__name__}")
  n, k = ledger.realized.shape
  if np.shape(costs) != (n, k):
    raise ValueError(
      f"costs must have shape (n, K) = ({n}, {k}) to match the ledger, got {np.shape(costs)}; "
      "a ledger must be used with the data set (and orders) it was created for"
    )
  if len(config.orders) != k:
    raise ValueError(f"config has {len(config.orders)} orders but the ledger has {k}")


def filter_admits(ledger: Ledger, costs: ArrayLike, config: AccountingConfig) -> jax.Array:
  """Which examples the individual Rényi filter keeps this step: ``P(x, α*) + ε_t(x, α*) ≤ B``.

  Already removed examples stay removed. With the filter off, returns ``ledger.active``.

  Args:
    ledger: the current :class:`Ledger`.
    costs: this step's costs (n, K) (times the stride when strided).
    config: the :class:`AccountingConfig`.

  Returns:
    (n,) bool.

  Examples:
    >>> import jax.numpy as jnp
    >>> cfg = accountant([2.0], filter_budget=1.0, filter_order=2.0)
    >>> filter_admits(ledger_init(2, cfg), jnp.array([[0.5], [1.5]]), cfg).tolist()
    [True, False]
  """
  _check_ledger_costs(ledger, costs, config)
  if not config.uses_filter:
    return ledger.active
  a = config.filter_index
  costs = jnp.asarray(costs)
  total = ledger.realized[:, a] + costs[:, a]
  return ledger.active & (total <= config.filter_budget)


def ledger_update(
  ledger: Ledger,
  costs: ArrayLike,
  worst_case_cost: ArrayLike,
  *,
  weight: ArrayLike = 1,
  config: AccountingConfig,
  accounted: ArrayLike = True,
) -> Ledger:
  """Adds one step's costs to the ledger (theory §3).

  ``realized += weight · costs`` for the examples that stay active (with the filter on, those
  :func:`filter_admits` keeps; the others are removed for good and charged nothing, since their
  gradient leaves this and every later step). Non-finite costs are never summed: they are dropped and
  ``finite`` turns False (see :func:`check_ledger`). ``num_steps`` always advances.

  Args:
    ledger: the current :class:`Ledger`.
    costs: this step's per-example costs, shape (n, K); zero for examples not in the data set.
    worst_case_cost: this step's worst-case cost, shape (K,).
    weight: multiplicity of the costs (the stride for strided accounting).
    config: the :class:`AccountingConfig`.
    accounted: whether the costs were evaluated this step (False: only ``num_steps`` advances).

  Returns:
    The updated :class:`Ledger`.

  Raises:
    ValueError: if ``costs`` does not have the ledger's shape (n, K) (e.g. a data set of another size).

  Examples:
    >>> import jax.numpy as jnp
    >>> cfg = accountant([2.0])
    >>> led = ledger_update(ledger_init(2, cfg), jnp.array([[0.1], [0.2]]), jnp.array([0.4]), config=cfg)
    >>> led.realized.round(3).tolist(), int(led.num_steps), bool(led.finite)
    ([[0.1], [0.2]], 1, True)
  """
  _check_ledger_costs(ledger, costs, config)
  _checks.check_nonnegative("weight", weight)
  if not _checks._is_traced(costs):
    negative = np.asarray(costs, dtype=float) < 0  # NaN/inf are handled below (finite flag)
    if np.any(negative):
      raise ValueError(
        f"costs must be non-negative (a privacy loss never decreases), got "
        f"{np.asarray(costs, dtype=float)[negative][:3].tolist()}"
      )
  if np.shape(worst_case_cost) != ledger.worst_case.shape:
    raise ValueError(f"worst_case_cost must have shape {ledger.worst_case.shape}, got {np.shape(worst_case_cost)}")
  dtype = ledger.realized.dtype
  costs = jnp.asarray(costs, dtype)
  worst = jnp.asarray(worst_case_cost, dtype)
  w = jnp.asarray(weight, dtype)
  accounted = jnp.asarray(accounted, bool)
  keep = filter_admits(ledger, costs * w, config)
  valid = jnp.isfinite(costs) & (costs >= 0)  # a negative cost (possible only under a trace) is never summed
  ok = valid & keep[:, None]
  finite_now = jnp.all(jnp.where(ledger.active[:, None], valid, True)) & ~jnp.any(jnp.isnan(worst))
  add = jnp.where(ok & accounted, w * costs, 0.0)
  worst_add = jnp.where(~jnp.isnan(worst) & accounted, w * worst, 0.0)  # inf (no clip) is kept
  return ledger._replace(
    realized=ledger.realized + add,
    worst_case=ledger.worst_case + worst_add,
    num_steps=ledger.num_steps + 1,
    num_accounted=ledger.num_accounted + accounted.astype(jnp.int32),
    active=jnp.where(accounted, keep, ledger.active),
    finite=ledger.finite & (finite_now | ~accounted),
  )


def ledger_skip(ledger: Ledger) -> Ledger:
  """The ledger after a step that was not accounted: only ``num_steps`` advances.

  The same ledger as :func:`ledger_update` with ``accounted=False``, without a pass over its (n, K)
  rows: a strided ledger's steps in between cost nothing of size n.

  Examples:
    >>> led = ledger_skip(ledger_init(2, accountant([2.0])))
    >>> int(led.num_steps), int(led.num_accounted)
    (1, 0)
  """
  return ledger._replace(num_steps=ledger.num_steps + 1)


def ledger_add_rows(
  ledger: Ledger,
  indices: jax.Array,
  costs: jax.Array,
  worst_case_cost: jax.Array,
  *,
  weight: ArrayLike = 1,
  accounted: ArrayLike = True,
) -> Ledger:
  """:func:`ledger_update` for a step whose costs are non-zero on a few rows only (a minibatch).

  Adds ``costs[j]`` to row ``indices[j]`` (a scatter-add of m rows; nothing of size n is computed).
  Without the individual filter (minibatch ledgers are estimates) this equals :func:`ledger_update`
  with the costs scattered into an (n, K) array of zeros.

  Args:
    ledger: the ledger.
    indices: (m,) distinct row indices.
    costs: (m, K) this step's costs of those rows.
    worst_case_cost: (K,) this step's worst-case cost.
    weight: multiplicity of the evaluation (the stride).
    accounted: whether this step's costs were evaluated.

  Returns:
    The updated ledger.
  """
  dtype = ledger.realized.dtype
  costs = jnp.asarray(costs, dtype)
  worst = jnp.asarray(worst_case_cost, dtype)
  w = jnp.asarray(weight, dtype)
  accounted = jnp.asarray(accounted, bool)
  valid = jnp.isfinite(costs) & (costs >= 0)
  finite_now = jnp.all(jnp.where(ledger.active[indices][:, None], valid, True)) & ~jnp.any(jnp.isnan(worst))
  add = jnp.where(valid & accounted, w * costs, 0.0)
  return ledger._replace(
    realized=ledger.realized.at[indices].add(add),
    worst_case=ledger.worst_case + jnp.where(~jnp.isnan(worst) & accounted, w * worst, 0.0),
    num_steps=ledger.num_steps + 1,
    num_accounted=ledger.num_accounted + accounted.astype(jnp.int32),
    finite=ledger.finite & (finite_now | ~accounted),
  )


def check_ledger(ledger: Ledger) -> Ledger:
  """Host-side check: raises if the ledger met a non-finite cost; returns the ledger otherwise.

  Args:
    ledger: a concrete :class:`Ledger` (not inside jit).

  Returns:
    ``ledger`` unchanged.

  Raises:
    FloatingPointError: if ``ledger.finite`` is False (a non-finite cost was met and left out).

  Examples:
    >>> led = check_ledger(ledger_init(2, accountant([2.0])))
    >>> bool(led.finite)
    True
  """
  finite = np.asarray(ledger.finite)
  if not np.all(finite):
    raise FloatingPointError(
      "the privacy ledger met a non-finite per-step cost (NaN/inf: e.g. temperature 0 without "
      "accounting_temperature, a single active example in full-batch mode, or a NaN gradient); "
      f"those costs were not summed, so ledger.realized is not a valid bound (finite={finite.tolist()})"
    )
  return ledger


def average_ledgers(ledgers: Ledger | ArrayLike) -> tuple[jax.Array, jax.Array]:
  """Mean and standard deviation of realized losses over runs (theory §3 "averaged over R runs").

  Args:
    ledgers: a :class:`Ledger` whose leaves carry a leading seed axis R (as returned by a vmapped
      run), or an array of realized losses of shape (R, n, K).

  Returns:
    ``(mean, std)``, each (n, K) (population std over the R runs).

  Raises:
    ValueError: if the realized losses are not (R, n, K).

  Examples:
    >>> import jax.numpy as jnp
    >>> mean, std = average_ledgers(jnp.array([[[1.0]], [[3.0]]]))
    >>> mean.tolist(), std.tolist()
    ([[2.0]], [[1.0]])
  """
  realized = ledgers.realized if isinstance(ledgers, Ledger) else jnp.asarray(ledgers)
  if realized.ndim != 3:
    raise ValueError(f"ledgers must carry a leading seed axis: realized of shape (R, n, K), got {realized.shape}")
  return jnp.mean(realized, axis=0), jnp.std(realized, axis=0)


def group_factor(num_examples: int, group_size: int, *, fixed_denominator: bool = False) -> float:
  """The factor of the group bound (theory §3): ``P(F, α) ≤ factor · Σ_{x∈F} P(x, α)``.

  - Mean over the data set (§2a, no filter): removing F moves the reference mean to ḡ_{D∖F}, and
    Σ_{x∈F}(g_x − ḡ_{D∖F}) = (n/(n−k)) Σ_{x∈F}(g_x − ḡ_D), so the group's per-step cost is
    αη‖Σ_F(g_x − ḡ_D)‖²/(4τ(n−k)²); with Cauchy–Schwarz ‖Σ_F d_x‖² ≤ k Σ_F ‖d_x‖² the factor is
    ``k · ((n−1)/(n−k))²``.
  - Fixed denominator b (the certified full-batch filter, Poisson sampling at q = 1): the group's cost is
    αη‖Σ_F g_x‖²/(4τb²), so the factor is ``k``.

  Args:
    num_examples: n, the examples in the mean (k < n).
    group_size: k = |F| ≥ 1.
    fixed_denominator: True for the fixed-denominator estimate.

  Returns:
    The factor (a Python float).

  Raises:
    ValueError: unless 1 ≤ k < n.

  Examples:
    >>> group_factor(10, 2)  # 2 * (9/8)**2
    2.53125
    >>> group_factor(10, 2, fixed_denominator=True)
    2.0
  """
  for name, v in (("num_examples", num_examples), ("group_size", group_size)):
    if isinstance(v, bool) or not isinstance(v, (int, np.integer)):
      raise TypeError(f"{name} must be an integer, got {v!r}")
  if not 1 <= group_size < num_examples:
    raise ValueError(f"group_size must satisfy 1 <= k < n = {num_examples}, got k = {group_size}")
  k, n = float(group_size), float(num_examples)
  return k if fixed_denominator else k * ((n - 1.0) / (n - k)) ** 2


def group_privacy_loss(
  realized: ArrayLike,
  forget_indices: ArrayLike,
  *,
  num_examples: int | None = None,
  fixed_denominator: bool = False,
) -> jax.Array:
  """Group bound for full-batch accounting (theory §3): ``P(F, α) ≤ group_factor · Σ_{x∈F} P(x, α)``.

  With the mean over the data set (§2a) the factor is ``k((n−1)/(n−k))²``; with a fixed denominator
  (the certified filter) it is ``k`` (:func:`group_factor`). The bound holds step by step, so it holds
  for the realized sums; like them it is a certified group RDP bound only with the individual filter.
  It is a full-batch result: Poisson-sampled and shuffled runs have no group bound here.

  Args:
    realized: (n, K) realized losses.
    forget_indices: (k,) distinct integer indices of the group.
    num_examples: n of the mean (default: the rows of ``realized``).
    fixed_denominator: True when the run used a fixed denominator (the certified full-batch filter).

  Returns:
    (K,) bound on the group's loss.

  Examples:
    >>> import jax.numpy as jnp
    >>> group_privacy_loss(jnp.array([[1.0], [2.0], [4.0]]), jnp.array([0, 2])).tolist()  # 2*(2/1)^2*5
    [40.0]
  """
  realized = jnp.asarray(realized)
  idx = jnp.asarray(forget_indices)
  if realized.ndim != 2:
    raise ValueError(f"realized must have shape (n, K), got {realized.shape}")
  if idx.ndim != 1 or not jnp.issubdtype(idx.dtype, jnp.integer):
    raise ValueError(f"forget_indices must be a 1-D integer array, got shape {idx.shape} dtype {idx.dtype}")
  # Empty, duplicated or out-of-range indices would give a silently wrong bound (jax clamps indices).
  _checks.check_index_set("forget_indices", idx, realized.shape[0])
  n = realized.shape[0] if num_examples is None else num_examples
  factor = group_factor(n, int(idx.shape[0]), fixed_denominator=fixed_denominator)
  return factor * jnp.sum(realized[idx], axis=0)
