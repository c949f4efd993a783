"""SGLD with per-example clipping and the privacy ledger: the composition of the pieces (theory §0–§3).

One step: the per-example quantities (:mod:`unlearn_jax.per_example.blocks`), the batch selection
(:mod:`~unlearn_jax.algorithms.batches`), the per-step costs (:mod:`unlearn_jax.accounting.costs`), the
ledger with its individual Rényi filter (:mod:`unlearn_jax.accounting.ledger`) and the noisy update
(:mod:`~unlearn_jax.algorithms.update`). Noise-free SGD is the same step at τ = 0, L1-sparse
fine-tuning the same step with an L1 weight (``algorithms.methods``).

Keys: ``step`` takes a key used once for this step (derive it with ``jax.random.fold_in(key, t)``);
the noise uses ``fold_in(step_key, 0)`` and Poisson sampling ``fold_in(step_key, 1)``. Shuffled mode
draws the permutation of epoch e from ``fold_in(shuffle_key, e)``, with ``shuffle_key`` derived in
``init`` from the key it is given, so every chain of a vmapped run shuffles on its own.

Accounting (``accounting=accountant(...)``): at every ``stride``-th step the costs of theory §2 are
computed inside the step and added to ``state.ledger`` with weight ``stride``. With the individual
Rényi filter (budget B at order α*), an example whose ``P(x, α*) + ε_t(x, α*)`` would exceed B is
removed from this and every later gradient and charged nothing more. The filter needs each removal
to depend on the history and that example alone (Feldman & Zrnic 2021), so in full-batch mode it
uses a fixed denominator: ĝ = (1/b) Σ_{active} g_i with b fixed for the run (default the number of
real rows n), and example x's cost is α η ‖g_t(x)‖² / (4 τ b²) (the q = 1 case of theory §2b), a
function of θ_t and x only; no certified loss ever exceeds B. Without the filter the full-batch mode
averages over the active examples (theory §2a): an estimate.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
from jax.typing import ArrayLike

from unlearn_jax import _loops
from unlearn_jax import accounting as acc
from unlearn_jax.algorithms import batches, update
from unlearn_jax.algorithms.base import Algorithm, StepInfo
from unlearn_jax.algorithms.sgld_settings import Settings, check_step_inputs
from unlearn_jax.algorithms.sgld_settings import settings as make_settings
from unlearn_jax.per_example import api as pe
from unlearn_jax.per_example import blocks, chunking

__all__ = ["SHUFFLE_TAG", "SGLDState", "sgld"]

PyTree = Any
SHUFFLE_TAG = 0xFFFFFFFE  # fold_in tag of the shuffled-mode permutation key (no step index reaches it)


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


def _when(pred: Any, fn: Callable, zeros: Callable) -> Any:
  """``fn()`` if ``pred`` else ``zeros()``; a Python True skips the cond."""
  if pred is True:
    return fn()
  return jax.lax.cond(pred, lambda _: fn(), lambda _: zeros(), None)


def _account(ctx: _StepContext, evaluate: Callable, zeros: Callable) -> tuple:
  """``(ledger, *evaluate())`` after this step: at an accounted step ``evaluate() -> (costs, worst, ...)``
  is charged with weight ``stride``; at the others ``zeros()`` stands for it and the ledger only counts
  the step (:func:`~unlearn_jax.accounting.ledger_skip`: no pass over its n rows)."""
  ledger, config = ctx.state.ledger, ctx.config

  def charge():
    out = evaluate()
    return (acc.ledger_update(ledger, out[0], out[1], weight=ctx.stride, config=config), *out)

  return _when(ctx.accounted, charge, lambda: (acc.ledger_skip(ledger), *zeros()))


def _cast(arrays: tuple, dtype) -> tuple:
  """The float arrays of a tuple in ``dtype`` (both branches of a cond must agree)."""
  return tuple(a.astype(dtype) if jnp.issubdtype(a.dtype, jnp.floating) else a for a in arrays)


def _hyper(value: Any, default: float | None, dtype, none_as: float) -> jax.Array:
  value = default if value is None else value
  return jnp.asarray(none_as if value is None else value, dtype)


ALL_ROWS_CHUNK = chunking.ROWS_PER_PASS
"""The most rows per chunk of a Poisson step's all-n norm pass when ``chunk_size`` is not set (fewer
where the model needs it to stay within ``per_example.api.PASS_BUDGET_BYTES``: ``norm_pass_rows``)."""


class _StepContext(NamedTuple):
  """What every part of one step reads."""

  loss_fn: Callable
  s: Settings
  state: SGLDState
  data: PyTree
  key: jax.Array
  n: int
  dtype: Any
  clip: jax.Array
  eta: jax.Array
  tau_acc: jax.Array
  real: jax.Array  # (n,) 1 for the rows that count

  @property
  def config(self) -> acc.AccountingConfig | None:
    return self.s.accounting

  @property
  def active(self) -> jax.Array:
    ledger = self.state.ledger
    return self.real if ledger is None else self.real * ledger.active.astype(self.dtype)

  @property
  def stride(self) -> int:
    return resolve_stride(self.config, self.s, self.n)

  @property
  def accounted(self) -> Any:
    stride = self.stride
    if stride == 1:
      return True
    if self.s.mode == "shuffled":  # whole epochs: every example is charged once in each accounted epoch
      return (self.state.step // _steps_per_epoch(self.s, self.n)) % stride == 0
    return self.state.step % stride == 0

  def ops(self, data: PyTree, m: int, chunk_size: int | None = None) -> blocks.ExampleOps:
    return blocks.example_ops(
      self.loss_fn,
      self.state.params,
      data,
      m,
      self.s.reduction_blocks,
      self.s.norm_method,
      chunk_size or self.s.chunk_size,
    )

  def cost_kw(self) -> dict:
    return dict(clip_norm=self.clip, orders=self.config.orders, step_size=self.eta, temperature=self.tau_acc)

  def zeros(self, rows: int) -> tuple[jax.Array, jax.Array]:
    k = len(self.config.orders)
    return jnp.zeros((rows, k), self.dtype), jnp.zeros((k,), self.dtype)


class _Gradient(NamedTuple):
  """The gradient part of one step: ĝ, the updated ledger and the step's diagnostics."""

  ghat: PyTree
  ledger: acc.Ledger | None
  loss: jax.Array
  mean_grad_norm: jax.Array
  grad_norms: jax.Array  # (n,)
  batch_mask: jax.Array  # (n,)
  costs: jax.Array | None  # (n, K) charged this step (times the stride)
  worst: jax.Array | None
  recomputed: jax.Array
  dropped: jax.Array


def _steps_per_epoch(s: Settings, n: int) -> int:
  return max(n // s.batch_size, 1)


def resolve_stride(config: acc.AccountingConfig | None, s: Settings, n: int) -> int:
  """The weight of an accounted step: its stride in steps, or in epochs in shuffled mode.

  A shuffled step charges only its own batch, so the shuffled ledger accounts whole epochs: a stride of
  s steps becomes E = max(1, round(s / (n // B))) epochs, every E-th epoch is accounted with weight E,
  and ``"epoch"`` (E = 1) charges every example at its own batch of every epoch. Poisson and full-batch
  steps charge every row: ``"epoch"`` is round(1/q) steps (Poisson), 1 (full batch).
  """
  if config is None:
    return 1
  if s.mode == "shuffled":
    per_epoch = _steps_per_epoch(s, n)
    return 1 if config.stride == "epoch" else max(1, int(round(int(config.stride) / per_epoch)))
  if config.stride != "epoch":
    return int(config.stride)
  if s.mode == "poisson":
    return max(int(round(1.0 / s.sampling_rate)), 1)
  return 1


def _summary(ctx: _StepContext, losses, norms, weights):
  used = jnp.maximum(jnp.sum(weights), 1.0)
  rb = ctx.s.reduction_blocks
  return blocks.fixed_order_sum(losses * weights, rb) / used, blocks.fixed_order_sum(norms * weights, rb) / used


def _charged(ctx: _StepContext, costs, ledger):
  """This step's costs as charged: times the stride, zero for removed examples."""
  if costs is None:
    return None
  return costs * ctx.stride * ledger.active[:, None].astype(ctx.dtype)


def _full_batch_gradient(ctx: _StepContext, fixed: bool) -> _Gradient:
  """Every row: the mean over the active rows (§2a), or (1/b) Σ with a fixed b (§2b at q = 1)."""
  s, config, ledger, active, dtype = ctx.s, ctx.config, ctx.state.ledger, ctx.active, ctx.dtype
  ops = ctx.ops(ctx.data, ctx.n)
  norms = ops.norms().astype(dtype)
  factors = pe.clip_factors(norms, ctx.clip)
  costs = worst = None
  recomputed = jnp.zeros((), bool)
  if fixed:  # each example's cost is its own: the filter decides first
    b = jnp.sum(ctx.real) if s.denominator is None else jnp.asarray(s.denominator, dtype)
    if config is not None:
      ledger, costs, worst = _account(
        ctx,
        lambda: _cast(
          acc.fixed_step_costs(
            norms * factors * active, 1.0, b, num_terms=config.num_terms, rdp_method=config.rdp_method, **ctx.cost_kw()
          ),
          dtype,
        ),
        lambda: ctx.zeros(ctx.n),
      )
      active = active * ledger.active.astype(dtype)
    losses, ghat = ops.grads(active * factors / b)
  else:  # the mean (§2a, an estimate): the costs need ĝ, so they come after
    losses, ghat = ops.grads(active * factors / jnp.maximum(jnp.sum(active), 1.0))
    if config is not None:
      ledger, costs, worst, recomputed = _account(
        ctx,
        lambda: _cast(acc.mean_step_costs(ops, norms, factors, active, ghat, **ctx.cost_kw()), dtype),
        lambda: ctx.zeros(ctx.n) + (jnp.zeros((), bool),),
      )
  loss, mean_norm = _summary(ctx, losses, norms, active)
  return _Gradient(
    ghat,
    ledger,
    loss,
    mean_norm,
    norms,
    active,
    _charged(ctx, costs, ledger),
    None if worst is None else worst * ctx.stride,
    recomputed,
    jnp.zeros((), jnp.int32),
  )


def _gather_rows(data: PyTree, indices: jax.Array) -> PyTree:
  return jax.tree.map(lambda leaf: jnp.take(leaf, indices, axis=0, mode="clip"), data)


def _scatter(n: int, indices: jax.Array, values: jax.Array) -> jax.Array:
  return jnp.zeros((n,) + values.shape[1:], values.dtype).at[indices].add(values)


def _poisson_gradient(ctx: _StepContext, fixed: bool) -> _Gradient:
  """(1/b) Σ over the Poisson draw, gathered into ``capacity`` rows; the §2b costs of every active row
  (at accounted steps: they need every clipped norm at θ_t, an all-n norm pass)."""
  del fixed
  s, config, ledger, active, dtype, n = ctx.s, ctx.config, ctx.state.ledger, ctx.active, ctx.dtype, ctx.n
  q = s.sampling_rate
  g = batches.gather(
    "poisson", update.sample_key(ctx.key), ctx.state.step, None, n, dtype, sampling_rate=q, capacity=_capacity(s, n)
  )
  b = q * jnp.sum(ctx.real) if s.denominator is None else jnp.asarray(s.denominator, dtype)
  costs = worst = None
  if config is not None:

    def all_costs():
      # the pass over all n rows runs in chunks by default: unchunked, a CNN at n = 100,000 asked for 33 GB
      chunk = None
      if s.chunk_size is None and s.reduction_blocks is None:
        chunk = pe.norm_pass_rows(ctx.loss_fn, ctx.state.params, ctx.data)
      norms_all = ctx.ops(ctx.data, n, chunk_size=chunk).norms().astype(dtype)
      clipped = norms_all * pe.clip_factors(norms_all, ctx.clip) * active
      grid = dict(z_nodes=config.z_nodes)
      return _cast(
        acc.fixed_step_costs(
          clipped, q, b, num_terms=config.num_terms, rdp_method=config.rdp_method, **grid, **ctx.cost_kw()
        ),
        dtype,
      )

    ledger, costs, worst = _account(ctx, all_costs, lambda: ctx.zeros(n))
    active = active * ledger.active.astype(dtype)
  weights = g.valid * active[g.indices]
  norms, losses, ghat = _poisson_rows(ctx, g, weights, b)
  loss, mean_norm = _summary(ctx, losses, norms, weights)
  return _Gradient(
    ghat,
    ledger,
    loss,
    mean_norm,
    _scatter(n, g.indices, norms * g.valid),
    _scatter(n, g.indices, weights),
    _charged(ctx, costs, ledger),
    None if worst is None else worst * ctx.stride,
    jnp.zeros((), bool),
    g.dropped,
  )


def _clipped_rows(loss_fn, s: Settings, dtype, params, data, indices, weights, clip, b) -> tuple:
  """Norms, losses and (1/b) Σ_i w_i clip_C(∇ℓ_i) of the rows ``indices`` (a pure function of its arrays)."""
  rows = _gather_rows(data, indices)
  ops = blocks.example_ops(loss_fn, params, rows, weights.shape[0], s.reduction_blocks, s.norm_method, s.chunk_size)
  norms = ops.norms().astype(dtype)
  losses, ghat = ops.grads(weights * pe.clip_factors(norms, clip) / b)
  return norms, losses, ghat


def _poisson_rows(ctx: _StepContext, g: batches.Gathered, weights: jax.Array, b) -> tuple:
  """:func:`_clipped_rows` of a Poisson draw's slots: the first ``batches.poisson_first_rows`` at every
  step, the others only at a step whose draw reaches them (under ``vmap``: any seed's draw)."""
  capacity = g.indices.shape[0]
  first = batches.poisson_first_rows(ctx.n, ctx.s.sampling_rate, capacity, ctx.s.reduction_blocks or 1)
  part = functools.partial(_clipped_rows, ctx.loss_fn, ctx.s, ctx.dtype)
  head = part(ctx.state.params, ctx.data, g.indices[:first], weights[:first], ctx.clip, b)
  if first == capacity:
    return head
  operands = (ctx.state.params, ctx.data, g.indices[first:], weights[first:], ctx.clip, b)
  tail = _loops.only_if(g.valid[first] > 0, part, operands)
  return (
    jnp.concatenate([head[0], tail[0]]),
    jnp.concatenate([head[1], tail[1]]),
    jax.tree.map(jnp.add, head[2], tail[2]),
  )


def _shuffled_gradient(ctx: _StepContext, fixed: bool) -> _Gradient:
  """The mean over a batch of B rows of the epoch's permutation, gathered; the §2a costs of those rows
  (relative to the batch mean, an estimate) added to their ledger rows."""
  del fixed
  s, config, ledger, dtype, n = ctx.s, ctx.config, ctx.state.ledger, ctx.dtype, ctx.n
  g = batches.gather("shuffled", None, ctx.state.step, ctx.state.shuffle_key, n, dtype, batch_size=s.batch_size)
  m = g.indices.shape[0]
  rows = ctx.data if m == n else _gather_rows(ctx.data, g.indices)
  weights = ctx.active if m == n else ctx.active[g.indices]
  ops = ctx.ops(rows, m)
  norms = ops.norms().astype(dtype)
  factors = pe.clip_factors(norms, ctx.clip)
  losses, ghat = ops.grads(weights * factors / jnp.maximum(jnp.sum(weights), 1.0))
  costs = worst = None
  recomputed = jnp.zeros((), bool)
  if config is not None:
    rows_costs, worst, recomputed = _when(
      ctx.accounted,
      lambda: _cast(acc.mean_step_costs(ops, norms, factors, weights, ghat, **ctx.cost_kw()), dtype),
      lambda: ctx.zeros(m) + (jnp.zeros((), bool),),
    )
    # an example sits in one batch per epoch: the worst case grows by one step's worst per epoch (it grew
    # by one per step, n // B times too much: 186,000 against a saturated maximum of ~1,000 on Fashion-MNIST)
    worst = worst / _steps_per_epoch(s, n)
    ledger = acc.ledger_add_rows(ledger, g.indices, rows_costs, worst, weight=ctx.stride, accounted=ctx.accounted)
    costs = _scatter(n, g.indices, rows_costs)
  loss, mean_norm = _summary(ctx, losses, norms, weights)
  return _Gradient(
    ghat,
    ledger,
    loss,
    mean_norm,
    _scatter(n, g.indices, norms),
    _scatter(n, g.indices, weights),
    _charged(ctx, costs, ledger),
    None if worst is None else worst * ctx.stride,
    recomputed,
    jnp.zeros((), jnp.int32),
  )


def _capacity(s: Settings, n: int) -> int:
  if s.batch_capacity is not None:
    return min(s.batch_capacity, n)
  return batches.poisson_capacity(n, s.sampling_rate, s.reduction_blocks or 1)


def _make_init(s: Settings) -> Callable:
  """``init(params, num_examples, *, key=None)`` of :func:`sgld`."""

  def init(params: PyTree, num_examples: int, *, key: jax.Array | None = None) -> SGLDState:
    """Initial state: step 0, an empty ledger when accounting is on, the run's shuffle key."""
    ledger = None if s.accounting is None else acc.ledger_init(num_examples, s.accounting)
    if ledger is not None and s.mode == "shuffled":
      ledger = ledger._replace(exact=jnp.asarray(False), certified=jnp.asarray(False))
    shuffle_key = None
    if s.mode == "shuffled":
      shuffle_key = jax.random.fold_in(jax.random.key(0) if key is None else key, SHUFFLE_TAG)
    return SGLDState(params=params, step=jnp.zeros((), jnp.int32), ledger=ledger, shuffle_key=shuffle_key)

  return init


def _make_step(loss_fn: Callable, s: Settings, fixed: bool) -> Callable:
  """``step(state, data, key, step_size, temperature=0.0, *, ...)`` of :func:`sgld`."""

  def step(
    state: SGLDState,
    data: PyTree,
    key: jax.Array,
    step_size: ArrayLike,
    temperature: ArrayLike = 0.0,
    *,
    data_mask: ArrayLike | None = None,
    accounting_temperature: ArrayLike | None = None,
    clip_norm: ArrayLike | None = None,
    weight_decay: ArrayLike | None = None,
    projection_radius: ArrayLike | None = None,
    l1_strength: ArrayLike = 0.0,
    l1_horizon: ArrayLike = jnp.inf,
  ) -> tuple[SGLDState, StepInfo]:
    """One noisy step on the data set ``data`` (see :func:`sgld`)."""
    n = check_step_inputs(s, state, data, step_size, temperature, accounting_temperature, data_mask)
    dtype = jnp.result_type(*[jnp.result_type(x) for x in jax.tree.leaves(state.params)], float)
    eta, tau = jnp.asarray(step_size, dtype), jnp.asarray(temperature, dtype)
    tau_acc = tau if accounting_temperature is None else jnp.asarray(accounting_temperature, dtype)
    ctx = _StepContext(
      loss_fn,
      s,
      state,
      data,
      key,
      n,
      dtype,
      _hyper(clip_norm, s.clip_norm, dtype, jnp.inf),
      eta,
      tau_acc,
      jnp.ones((n,), dtype) if data_mask is None else jnp.asarray(data_mask, dtype),
    )
    grad = {"full_batch": _full_batch_gradient, "poisson": _poisson_gradient, "shuffled": _shuffled_gradient}[s.mode](
      ctx, fixed
    )
    gamma = jnp.asarray(l1_strength, dtype) * jnp.clip(1.0 - state.step / jnp.asarray(l1_horizon, dtype), 0.0, 1.0)
    new_params, noise_norm = update.noisy_update(
      state.params,
      grad.ghat,
      key,
      step_size=eta,
      temperature=tau,
      weight_decay=_hyper(weight_decay, s.weight_decay, dtype, 0.0),
      l1_strength=gamma,
      projection_radius=_hyper(projection_radius, s.projection_radius, dtype, jnp.inf),
    )
    info = StepInfo(
      loss=grad.loss,
      mean_grad_norm=grad.mean_grad_norm,
      grad_norms=grad.grad_norms,
      batch_mask=grad.batch_mask,
      noise_norm=noise_norm,
      costs=grad.costs,
      worst_case_cost=grad.worst,
      recomputed_costs=grad.recomputed,
      dropped=grad.dropped,
    )
    return state._replace(params=new_params, step=state.step + 1, ledger=grad.ledger), info

  return step


def sgld(
  loss_fn: Callable,
  *,
  mode: str = "full_batch",
  clip_norm: float | None = None,
  weight_decay: float = 0.0,
  projection_radius: float | None = None,
  sampling_rate: float | None = None,
  batch_size: int | None = None,
  denominator: float | None = None,
  accounting: acc.AccountingConfig | None = None,
  norm_method: str = "auto",
  chunk_size: int | None = None,
  reduction_blocks: int | None = None,
  batch_capacity: int | None = None,
) -> Algorithm:
  """Builds the noisy step (theory §0–§1) with the per-instance ledger (§2–§3) wired in.

  ``init(params, num_examples, *, key=None) -> SGLDState`` and ``step(state, data, key, step_size,
  temperature=0.0, *, data_mask=None, accounting_temperature=None, clip_norm=None, weight_decay=None,
  projection_radius=None, l1_strength=0.0, l1_horizon=inf) -> (SGLDState, StepInfo)``. ``data`` is the
  WHOLE training set (leading axis n); the mode picks the examples; ``data_mask`` (n,) marks rows (0)
  that never count and cost nothing (padding, the forget set). Minibatch modes gather their rows: a
  shuffled step computes norms, the clipped gradient and the §2a costs on its B rows only and adds the
  costs to those B ledger rows; a Poisson step computes the gradient on its draw, gathered into
  ``batch_capacity`` rows (default about q·n + 6 standard deviations; a draw that does not fit is
  counted in ``StepInfo.dropped`` and the runtime stops with an error rather than drop examples) of
  which the first q·n + 3 standard deviations are computed at every step and the others only when the
  draw reaches them (``batches.poisson_first_rows``), and at accounted steps the norms of all n rows for
  the §2b costs. Every step argument after ``key`` is an array: new values never recompile a jitted
  step. ``clip_norm``, ``weight_decay`` and ``projection_radius`` given here are the defaults of the
  step's arguments of the same names.
  ``temperature = 0`` is noise-free (clipped) gradient descent; with accounting on, pass the assumed
  ``accounting_temperature`` > 0 for its costs (the ranking of §2a costs does not depend on it).
  ``l1_strength`` γ adds γ_t sign(θ) to the gradient with γ_t = γ · max(0, 1 − t/``l1_horizon``).
  Accounting and the individual Rényi filter: see this module's docstring.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for ONE example.
    mode: "full_batch", "poisson" or "shuffled" (:mod:`~unlearn_jax.algorithms.batches`).
    clip_norm: default per-example clip norm C > 0, or None (no clipping).
    weight_decay: default wd ≥ 0; the step adds ``wd · θ`` to ĝ (the regularizer r = wd/2 ‖θ‖²).
    projection_radius: default R > 0 of the projection Π_R, or None.
    sampling_rate: q ∈ (0, 1] (poisson mode).
    batch_size: B (shuffled mode).
    denominator: a fixed b of ĝ = (1/b) Σ (poisson mode: default q · number of real rows; full-batch
      mode: switches to the fixed-denominator estimate, the default with the filter being b = n).
    accounting: an :class:`~unlearn_jax.accounting.AccountingConfig`, or None (no ledger).
    norm_method: "auto", "vmap" or "ghost" (see ``per_example.per_example_grad_norms``).
    chunk_size: examples per chunk for the per-example computations (bounds memory).
    reduction_blocks: None (sums over examples as XLA chooses, fastest), or R for a fixed order of the
      sums (:mod:`unlearn_jax.per_example.blocks`; n must be a multiple of R: pad with
      ``runtime.distributed.pad_to_multiple``). With R ≥ 2 × the mesh's ``"data"`` axis and a multiple
      of it (R = 8 for 1, 2 and 4 devices) results were bitwise identical on 1, 2 and 4 devices and on
      two processes (XLA CPU, ``docs/distributed.md``).
    batch_capacity: rows of a gathered Poisson batch (default
      :func:`~unlearn_jax.algorithms.batches.poisson_capacity`).

  Returns:
    An :class:`~unlearn_jax.algorithms.base.Algorithm`.

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
  s = make_settings(**locals())  # every argument, by name (nothing else is bound yet)
  fixed = batches.fixed_denominator(s.mode, s.denominator, s.accounting is not None and s.accounting.uses_filter)
  settings = dict(s._asdict(), accounting=None if s.accounting is None else tuple(s.accounting))
  return Algorithm(
    init=_make_init(s),
    step=_make_step(loss_fn, s, fixed),
    name="sgld",
    settings=tuple(sorted(settings.items())),
    callables=(loss_fn,),
    reduction_blocks=s.reduction_blocks,
  )
