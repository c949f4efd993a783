"""Training, unlearning and retraining drivers that survive interruption (THEORY §1, §4; issues 5, 10).

Three drivers, one engine:

- :func:`train` runs the SGLD algorithm of ``sgld.py`` (or any optax optimizer for plain noise-free
  training, with the per-instance ledger evaluated at an *assumed* ``accounting_temperature``) for
  ``num_steps`` steps.
- :func:`unlearn` fine-tunes trained parameters on the retain set D' with ``method`` in
  ``{"sgld", "sgd", "l1_sparse"}`` (THEORY §4 "Unlearning variants") and returns the parameters after each
  requested number of steps, so "how many steps until unlearned" is measured without rerunning.
- :func:`retrain` is the oracle: the same training from a fresh initialisation on the retain set.

The engine jits two functions once per configuration -- the initialisation and a *chunk* of
``steps_per_chunk`` steps driven by ``lax.scan`` -- and calls the chunk from a host loop that advances a
tqdm progress bar, records the parameters at requested steps, checks for divergence and writes
checkpoints between chunks (no host sync inside a chunk). Every chunk call runs the SAME compiled
program: the chunk takes its first and last step as array arguments and steps past the last one are
skipped with ``lax.cond``, so chunk boundaries can be placed anywhere (at recorded steps, at checkpoint
steps, at the end) without recompiling, and the arithmetic of every step is identical however the run is
cut into chunks. The second call of a driver with the same shapes and the same ``loss_fn`` object does not
compile again (the jitted functions are cached per configuration).

Keys: per-step keys are ``jax.random.fold_in(chain_key, t)`` (t = 0-based step index). With
``num_seeds=None`` the chain key is ``key`` itself; with ``num_seeds=R`` seed r uses
``chain_key_r = jax.random.fold_in(key, r)``, all R chains run in one vmapped call, and seed r matches a
``num_seeds=None`` run with ``key=jax.random.fold_in(key, r)`` (to float rounding: a batched matmul may
round differently from R single ones, ~1e-7 relative per step). When parameters are initialised from the
key (``params`` a callable ``init_key -> params``, as in :func:`retrain`), the initialisation key is
``jax.random.fold_in(chain_key, 2**32 - 1)`` (a tag no step index reaches), so every seed gets its own
initialisation; a params pytree is shared by all seeds unless ``params_per_seed=True`` says its leaves
carry a leading seed axis (e.g. the trained chains of a ``num_seeds`` run, each unlearned separately).

Checkpoints and interruption (issue 10): with ``checkpoint_dir`` the driver holds a lock file there
(a second concurrent run on the directory is refused with :class:`~unlearn_jax.checkpoint.LockError`),
and every ``checkpoint_every`` steps writes the whole carry (parameters, SGLD / optimizer state, ledger,
step), the history and recorded parameters so far, the key data and a fingerprint of the configuration,
atomically (``checkpoint.py``). With ``resume=True`` a later call with the same configuration continues
from the newest valid checkpoint (a directory holding another run's checkpoints is refused with
:class:`~unlearn_jax.checkpoint.CheckpointError`; ``resume=False`` clears it and starts over) and
returns results bitwise identical to an uninterrupted run: the
per-step keys depend only on the step index, and the same compiled chunk runs the same steps. A run
killed at any moment loses at most the steps since its last checkpoint. SIGINT (Ctrl-C) finishes the
running chunk, writes a checkpoint and raises :class:`Interrupted` (a ``KeyboardInterrupt``; the CLI
turns it into exit code 130); a second SIGINT interrupts at once. A run whose loss or parameters turn
non-finite stops with :class:`DivergenceError` naming the first bad step; the state after it is never
written, so the last good checkpoint is kept.
"""

from __future__ import annotations

import dataclasses
import hashlib
import json
import math
import os
import signal
import threading
from typing import Any, Callable, NamedTuple, Sequence

import jax
import jax.numpy as jnp
import numpy as np
import optax
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax import checkpoint as ckpt_lib
from unlearn_jax import per_example
from unlearn_jax.per_example import blocks as _blocks

__all__ = [
    "TrainResult",
    "UnlearnResult",
    "OptimizerState",
    "GDState",
    "DivergenceError",
    "Interrupted",
    "UNLEARNING_METHODS",
    "train",
    "unlearn",
    "retrain",
    "l1_schedule",
]

PyTree = Any
LossFn = Callable[[PyTree, PyTree], ArrayLike]

UNLEARNING_METHODS = ("sgld", "sgd", "l1_sparse")
_INIT_TAG = 0xFFFFFFFF  # fold_in tag of the initialisation key; no step index reaches it
_SHUFFLE_TAG = 0xFFFFFFFE  # fold_in tag of the shuffled-mode permutation key
_KEEP_CHECKPOINTS = 2


# ----------------------------------------------------------------------------------------------------
# Public result types and errors
# ----------------------------------------------------------------------------------------------------


class TrainResult(NamedTuple):
  """What :func:`train` and :func:`retrain` return.

  Attributes:
    state: final algorithm state (``SGLDState`` or :class:`OptimizerState`); leaves carry a leading
      seed axis R with ``num_seeds``.
    ledger: the per-instance privacy ledger (``state.ledger``), None when accounting is off.
    history: dict of NumPy arrays at the history stride: ``"step"`` (S,) the number of steps done when
      the row was recorded, ``"loss"`` (mean per-example loss of that step, at the parameters before it)
      and the algorithm's diagnostics (``"grad_norm"``: mean per-example unclipped gradient norm over
      the examples used; ``"noise_norm"``; ``"update_norm"``), plus every key of ``eval_fn(params)``
      evaluated after the step; with the ledger, ``"privacy_loss_mean"`` (S, K), the mean over examples
      of the realized P(x, α) after the step. Shapes (S, ...) or (S, R, ...) with seeds.
    recorded: parameters after each of ``recorded_steps``, leaves stacked (G, [R,] ...); None if none.
    recorded_steps: (G,) int array of the recorded step counts.
    num_steps: steps done.
    resumed_from: the step of the checkpoint this call resumed from (0: started afresh).
  """

  state: Any
  ledger: Any
  history: dict
  recorded: Any
  recorded_steps: np.ndarray
  num_steps: int
  resumed_from: int = 0

  @property
  def params(self) -> PyTree:
    """The final parameters (``state.params``)."""
    return self.state.params


class UnlearnResult(NamedTuple):
  """What :func:`unlearn` returns.

  Attributes:
    params: parameters after each of ``steps`` fine-tuning steps, leaves stacked (G, [R,] ...).
    steps: (G,) int array, the requested step counts (sorted, unique).
    state: final state of the fine-tuning chain(s).
    history: as in :class:`TrainResult`.
    resumed_from: the step of the checkpoint this call resumed from (0: started afresh).
  """

  params: Any
  steps: np.ndarray
  state: Any
  history: dict
  resumed_from: int = 0


class OptimizerState(NamedTuple):
  """State of plain (noise-free) training with an optax optimizer."""

  params: PyTree
  opt_state: PyTree
  step: jax.Array
  ledger: Any


class GDState(NamedTuple):
  """State of noise-free (optionally L1-penalised) fine-tuning."""

  params: PyTree
  step: jax.Array


class DivergenceError(RuntimeError):
  """The loss or the parameters turned non-finite.

  Attributes:
    step: the 1-based step whose loss was non-finite or whose update produced non-finite parameters.
    checkpoint: path of the last good checkpoint (None without ``checkpoint_dir`` or before the first).
  """

  def __init__(self, step: int, what: str, checkpoint: str | None):
    self.step = int(step)
    self.checkpoint = checkpoint
    kept = (f"; the last good checkpoint {checkpoint} was kept" if checkpoint else "")
    super().__init__(
        f"the run diverged at step {self.step}: {what} turned non-finite (NaN/Inf){kept}. Lower "
        "step_size, clip the gradients (clip_norm) or add weight decay")


class Interrupted(KeyboardInterrupt):
  """SIGINT stopped the run between two chunks after its state was saved.

  Attributes:
    step: steps done when the run stopped.
    checkpoint: path of the checkpoint written (None without ``checkpoint_dir``).
  """

  def __init__(self, step: int, checkpoint: str | None):
    self.step = int(step)
    self.checkpoint = checkpoint
    where = f"; checkpoint saved to {checkpoint}, rerun with resume=True to continue" if checkpoint else ""
    super().__init__(f"interrupted by SIGINT after step {self.step}{where}")


# ----------------------------------------------------------------------------------------------------
# Programs: a per-seed (init, step) pair the engine drives
# ----------------------------------------------------------------------------------------------------


class _Program(NamedTuple):
  init: Callable  # (params, num_examples, chain_key) -> state
  step: Callable  # (state, data, key, hparams dict, data_mask | None, t) -> (state, scalars dict)


def _weights(data_mask, n, dtype):
  return jnp.ones((n,), dtype) if data_mask is None else jnp.asarray(data_mask, dtype)


def _num_examples(data) -> int:
  return jax.tree.leaves(data)[0].shape[0]


def _tree_sq_norm(tree) -> jax.Array:
  return sum(jnp.sum(jnp.square(x)) for x in jax.tree.leaves(tree))


def _example_sum(x, reduction_blocks):
  """Sum over examples (axis 0): ``jnp.sum``, or the fixed order of ``sgld.fixed_order_sum``."""
  if reduction_blocks is None:
    return jnp.sum(x, axis=0)
  from unlearn_jax import sgld as sgld_lib  # pylint: disable=import-outside-toplevel
  return sgld_lib.fixed_order_sum(x, reduction_blocks)


def _sgld_program(algorithm, *, own_shuffle_key: bool = False, reduction_blocks: int | None = None) -> _Program:
  """Adapts an ``sgld.Algorithm`` (init, step) to the engine.

  With ``own_shuffle_key`` (algorithms built here by ``sgld.sgld``), each chain's shuffled-mode
  permutations are drawn from ``fold_in(chain_key, 2**32 - 2)``, so seeds shuffle independently.
  With ``reduction_blocks`` (the algorithm's own setting) the history's sums over examples use the
  same fixed order as the step (``sgld.fixed_order_sum``).
  """

  def init(params, n, chain_key):
    if own_shuffle_key:
      return algorithm.init(params, n, shuffle_key=jax.random.fold_in(chain_key, _SHUFFLE_TAG))
    return algorithm.init(params, n)

  def step(state, data, key, hp, data_mask, t):
    del t
    kwargs = {}
    if data_mask is not None:
      kwargs["data_mask"] = data_mask
    if "accounting_temperature" in hp:
      kwargs["accounting_temperature"] = hp["accounting_temperature"]
    old = state.params
    state, info = algorithm.step(state, data, key, hp["step_size"], hp["temperature"], **kwargs)
    used = info.batch_mask
    grad_norm = _example_sum(info.grad_norms * used, reduction_blocks) / jnp.maximum(jnp.sum(used), 1)
    update = jax.tree.map(lambda a, b: a - b, state.params, old)
    scalars = {
        "loss": info.loss,
        "grad_norm": grad_norm,
        "noise_norm": info.noise_norm,
        "update_norm": jnp.sqrt(_tree_sq_norm(update)),
    }
    if getattr(state, "ledger", None) is not None:
      realized = state.ledger.realized
      if reduction_blocks is None:
        scalars["privacy_loss_mean"] = jnp.mean(realized, axis=0)
      else:
        scalars["privacy_loss_mean"] = _example_sum(realized, reduction_blocks) / realized.shape[0]
    return state, scalars

  return _Program(init, step)


def _accounting_costs(loss_fn, params, data, data_mask, clip_norm, accounting, step_size, temperature,
                      norm_method, chunk_size):
  """Full-batch per-instance costs (THEORY §2a) at ``params``, via ``sgld.step_costs``."""
  from unlearn_jax import sgld as sgld_lib  # pylint: disable=import-outside-toplevel
  return sgld_lib.step_costs(
      loss_fn, params, data, mode="full_batch", clip_norm=clip_norm, step_size=step_size,
      temperature=temperature, orders=accounting.orders, mask=data_mask, norm_method=norm_method,
      chunk_size=chunk_size, num_terms=accounting.num_terms)


def _optimizer_program(loss_fn, optimizer, accounting, clip_norm, norm_method, chunk_size) -> _Program:
  """Plain full-batch training with an optax optimizer; the ledger (optional) at an assumed temperature."""

  def init(params, n, chain_key):
    del chain_key
    ledger = None
    if accounting is not None:
      from unlearn_jax import accounting as acc_lib  # pylint: disable=import-outside-toplevel
      ledger = acc_lib.ledger_init(n, accounting)
    return OptimizerState(params, optimizer.init(params), jnp.zeros((), jnp.int32), ledger)

  def step(state, data, key, hp, data_mask, t):
    del key, t
    params = state.params
    n = _num_examples(data)
    dtype = jax.tree.leaves(params)[0].dtype
    w = _weights(data_mask, n, dtype)
    count = jnp.maximum(jnp.sum(w), 1)

    def mean_loss(p):
      return jnp.sum(w * jax.vmap(loss_fn, in_axes=(None, 0))(p, data)) / count

    loss, grads = jax.value_and_grad(mean_loss)(params)
    updates, opt_state = optimizer.update(grads, state.opt_state, params)
    new_params = optax.apply_updates(params, updates)
    ledger = state.ledger
    scalars = {"loss": loss, "update_norm": jnp.sqrt(_tree_sq_norm(updates))}
    if accounting is not None:
      from unlearn_jax import accounting as acc_lib  # pylint: disable=import-outside-toplevel
      stride = accounting.stride

      def evaluate(p):
        costs, worst, norms = _accounting_costs(loss_fn, p, data, data_mask, clip_norm, accounting,
                                                hp["step_size"], hp["accounting_temperature"], norm_method,
                                                chunk_size)
        return costs, worst, norms

      if stride == 1:
        costs, worst, norms = evaluate(params)
        accounted = jnp.array(True)
      else:
        accounted = state.step % stride == 0
        shapes = jax.eval_shape(evaluate, params)
        costs, worst, norms = jax.lax.cond(
            accounted, evaluate, lambda p: jax.tree.map(lambda z: jnp.zeros(z.shape, z.dtype), shapes), params)
      ledger = acc_lib.ledger_update(ledger, costs, worst, weight=stride, config=accounting,
                                     accounted=accounted)
      scalars["grad_norm"] = jnp.sum(norms * w) / count
    new_state = OptimizerState(new_params, opt_state, state.step + 1, ledger)
    if ledger is not None:
      scalars["privacy_loss_mean"] = jnp.mean(ledger.realized, axis=0)
    return new_state, scalars

  return _Program(init, step)


def l1_schedule(step: ArrayLike, num_steps: ArrayLike, l1_strength: ArrayLike) -> jax.Array:
  """The decaying L1 weight of L1-sparse unlearning: ``γ_t = l1_strength · (1 − t/T)``, t = 0..T−1.

  Jia et al. 2023 (*Model sparsity can simplify machine unlearning*, NeurIPS) fine-tune on the retain
  set with the objective ``L_{D'}(θ) + γ‖θ‖₁`` and report that a weight decaying linearly to 0 over
  the T fine-tuning steps works best; here ``γ_t`` starts at ``l1_strength`` at the first step and
  reaches 0 after the last (their scheduler may scale ``γ`` by a constant; ``l1_strength`` absorbs it).

  Examples:
    >>> print(float(l1_schedule(0, 10, 1e-3)), round(float(l1_schedule(5, 10, 1e-3)), 6))
    0.001 0.0005
  """
  t = jnp.asarray(step, jnp.result_type(float))
  return jnp.asarray(l1_strength) * jnp.clip(1.0 - t / jnp.asarray(num_steps), 0.0, 1.0)


def _project(params, radius):
  """Π_R: scales ``params`` onto the ball of radius R (an array; R = inf leaves them unchanged)."""
  norm = jnp.sqrt(_tree_sq_norm(params))
  scale = jnp.minimum(1.0, radius / jnp.maximum(norm, jnp.finfo(norm.dtype).tiny))
  return jax.tree.map(lambda x: x * scale.astype(x.dtype), params)


def _gd_program(loss_fn, *, clipped: bool, norm_method, chunk_size, reduction_blocks=None) -> _Program:
  """Noise-free full-batch fine-tuning on the (masked) data: the gradient part of the SGLD step.

  ``θ ← Π_R(θ − η (ĝ + weight_decay·θ + γ_t·sign θ))`` with ĝ the mean of the per-example gradients
  clipped at C (THEORY §0, §1 "full batch, mean") and ``γ_t = l1_schedule(t, T, l1_strength)`` (the
  subgradient of ``γ_t‖θ‖₁``, sign 0 at 0; γ = 0 for plain "sgd"). C, weight decay, R (inf: no
  projection), γ and T are array arguments (``hp``), so one compiled program serves every setting.
  With ``reduction_blocks`` = R the sums over examples are taken per block of n/R examples (vmapped, the
  same shapes on any device count) and the block sums added in a fixed order (``sgld.fixed_order_sum``).
  """

  def init(params, n, chain_key):
    del n, chain_key
    return GDState(params, jnp.zeros((), jnp.int32))

  def step(state, data, key, hp, data_mask, t):
    del key
    params = state.params
    n = _num_examples(data)
    dtype = jax.tree.leaves(params)[0].dtype
    w = _weights(data_mask, n, dtype)
    count = jnp.maximum(jnp.sum(w), 1)

    def grad_sum(p, d, ww):
      losses = per_example.per_example_losses(loss_fn, p, d)
      if clipped:
        g, norms = per_example.clipped_grad_sum(loss_fn, p, d, hp["clip_norm"], weights=ww,
                                                method=norm_method, chunk_size=chunk_size)
        return losses, g, norms
      return losses, per_example.weighted_grad_sum(loss_fn, p, d, ww), None

    if reduction_blocks is None:
      losses, g_sum, norms = grad_sum(params, data, w)
    else:  # per block of n/R with its own copy of the parameters: see sgld._example_ops
      from unlearn_jax import sgld as sgld_lib  # pylint: disable=import-outside-toplevel
      r = reduction_blocks
      losses, g_blocks, norms = jax.vmap(grad_sum)(
          _blocks._broadcast_blocks(params, r), _blocks._split_blocks(data, r), jnp.reshape(w, (r, n // r)))
      g_sum = jax.tree.map(lambda b: _example_sum(b, r), g_blocks)  # blocks of one block sum each
      losses = jnp.reshape(losses, (n,))
      norms = None if norms is None else jnp.reshape(norms, (n,))
    loss = _example_sum(w * losses, reduction_blocks) / count
    scalars = {"loss": loss}
    if clipped:
      scalars["grad_norm"] = _example_sum(norms * w, reduction_blocks) / count
    gamma = l1_schedule(t, hp["num_steps"], hp["l1_strength"])

    def update(p, g):
      d = g / count + hp["weight_decay"].astype(p.dtype) * p + gamma.astype(p.dtype) * jnp.sign(p)
      return p - hp["step_size"].astype(p.dtype) * d

    new_params = _project(jax.tree.map(update, params, g_sum), hp["projection_radius"])
    diff = jax.tree.map(lambda a, b: a - b, new_params, params)
    scalars["update_norm"] = jnp.sqrt(_tree_sq_norm(diff))
    return GDState(new_params, state.step + 1), scalars

  return _Program(init, step)


# ----------------------------------------------------------------------------------------------------
# Compiled engine (cached per configuration)
# ----------------------------------------------------------------------------------------------------


@dataclasses.dataclass(frozen=True)
class _Engine:
  init: Callable  # jitted (params, data, keys) -> state
  chunk: Callable  # jitted (state, data, mask, keys, hp, start, end) -> (state, outs)


_ENGINE_CACHE: dict = {}
_ENGINE_CACHE_SIZE = 96


def _finite_tree(tree) -> jax.Array:
  leaves = [jnp.all(jnp.isfinite(x)) for x in jax.tree.leaves(tree)
            if jnp.issubdtype(x.dtype, jnp.inexact)]
  return jnp.all(jnp.stack(leaves)) if leaves else jnp.array(True)


def _on_mesh(state, mesh, num_seeds):
  """Keeps a state on ``mesh`` (issue 9): its ledger split along examples, the rest replicated.

  Inside the jitted init and chunk this is a sharding constraint (``distributed.shard_state``); with
  ``num_seeds`` every leaf carries the seed axis, which goes along the mesh's ``"seeds"`` axis.
  """
  if mesh is None:
    return state
  from unlearn_jax import distributed  # pylint: disable=import-outside-toplevel
  return distributed.shard_state(state, mesh, seed_axis=num_seeds is not None)


def _check_reduction_blocks(value: Any, mesh: Any) -> int | None:
  if value is None:
    return None
  from unlearn_jax import sgld as sgld_lib  # pylint: disable=import-outside-toplevel
  value = _blocks.check_blocks(value)  # one validation, shared with sgld.sgld
  if mesh is not None and isinstance(mesh, jax.sharding.Mesh):
    from unlearn_jax import distributed  # pylint: disable=import-outside-toplevel
    size = distributed.data_axis_size(mesh)
    if value % size:
      raise ValueError(
          f"reduction_blocks must be a multiple of the mesh's 'data' axis size {size}, got {value}; "
          "choose R = 2 x the largest device count you compare (e.g. 8 for 1, 2 and 4 devices)")
  return int(value)


def _place_on_mesh(mesh, data, mask, params, params_seed_axis, reduction_blocks=None):
  """Pads (copies of example 0, masked out), shards data and mask along "data", replicates params.

  The padded size is a multiple of ``reduction_blocks`` when it is set (also without a mesh: then the
  same n_padded, hence the same blocks, on every device count), else of the "data" axis size.
  Returns ``(data, mask, params, num_real)``; ``num_real`` is the unpadded n (None when nothing was
  done).
  """
  if mesh is None and reduction_blocks is None:
    return data, mask, params, None
  from unlearn_jax import distributed  # pylint: disable=import-outside-toplevel
  if mesh is not None and not isinstance(mesh, jax.sharding.Mesh):
    raise TypeError(f"mesh must be None or a jax.sharding.Mesh from distributed.make_mesh, got {mesh!r}")
  num_real = _num_examples(data)
  size = reduction_blocks if reduction_blocks is not None else distributed.data_axis_size(mesh)
  data, pad_mask = distributed.pad_to_multiple(data, size)
  if mask is not None:
    mask = distributed.pad_to_multiple(mask, size)[0] * pad_mask.astype(mask.dtype)
  elif _num_examples(data) != num_real:
    mask = pad_mask.astype(jnp.result_type(float))
  if mesh is None:
    return data, mask, params, num_real
  data = distributed.shard_data(data, mesh)
  mask = None if mask is None else distributed.shard_data(mask, mesh)
  if not callable(params):
    params = distributed.replicate(params, mesh, seed_axis=params_seed_axis)
  return data, mask, params, num_real


def _unpad_results(ledger, history, num_real, num_padded, num_seeds):
  """Drops the ledger's padding rows; rescales the history's mean over examples to the real ones."""
  if num_real is None or num_real == num_padded:
    return ledger, history
  from unlearn_jax import distributed  # pylint: disable=import-outside-toplevel
  if ledger is not None:
    ledger = distributed.unpad(ledger, num_real, seed_axis=num_seeds is not None)
  if "privacy_loss_mean" in history:  # padding rows hold 0: mean over real rows = mean * n_pad / n
    history = dict(history, privacy_loss_mean=history["privacy_loss_mean"] * (num_padded / num_real))
  return ledger, history


def _build_init(program: _Program, init_params_fn, num_seeds, params_per_seed, mesh=None) -> Callable:
  """Jits the initialisation ``(params, data, keys) -> state`` (per seed with ``num_seeds``)."""

  def init_one(params, data, chain_key):
    if init_params_fn is not None:
      params = init_params_fn(jax.random.fold_in(chain_key, _INIT_TAG))
    return program.init(params, _num_examples(data), chain_key)

  def init(params, data, keys):
    if num_seeds is None:
      return _on_mesh(init_one(params, data, keys), mesh, num_seeds)
    p_axis = 0 if (params_per_seed and init_params_fn is None) else None
    return _on_mesh(jax.vmap(init_one, in_axes=(p_axis, None, 0))(params, data, keys), mesh, num_seeds)

  return jax.jit(init)


def _build_chunk(program: _Program, eval_fn, num_seeds, chunk_len, stride, mesh=None) -> Callable:
  """Jits one chunk ``(state, data, mask, keys, hp, start, end) -> (state, outs)`` of scanned steps."""

  def one_step(state, data, mask, chain_key, hp, t):
    new_state, scalars = program.step(state, data, jax.random.fold_in(chain_key, t), hp, mask, t)
    finite = jnp.isfinite(scalars["loss"]) & _finite_tree(new_state.params)
    outs = dict(scalars)
    outs["finite"] = finite
    if eval_fn is not None:
      example = jax.eval_shape(eval_fn, new_state.params)
      zeros = jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), example)
      outs["eval"] = jax.lax.cond((t + 1) % stride == 0, eval_fn, lambda p: zeros, new_state.params)
    return new_state, outs

  def chunk(state, data, mask, keys, hp, start, end):
    if num_seeds is not None:
      step_all = jax.vmap(one_step, in_axes=(0, None, None, 0, None, None))
    else:
      step_all = one_step

    def body(carry, i):
      t = start + i

      def run(c):
        return step_all(c, data, mask, keys, hp, t)

      out_shape = jax.eval_shape(run, carry)[1]

      def skip(c):
        return c, jax.tree.map(lambda s: jnp.zeros(s.shape, s.dtype), out_shape)

      new_carry, outs = jax.lax.cond(t < end, run, skip, carry)
      return _on_mesh(new_carry, mesh, num_seeds), outs

    return jax.lax.scan(body, state, jnp.arange(chunk_len, dtype=jnp.int32))

  return jax.jit(chunk)


def _cached(key: tuple, build: Callable[[], Any]) -> Any:
  """``build()`` memoised on a hashable configuration ``key`` (bounded; unhashable keys: no caching)."""
  try:
    hash(key)
  except TypeError:
    return build()
  value = _ENGINE_CACHE.get(key)
  if value is None:
    if len(_ENGINE_CACHE) >= _ENGINE_CACHE_SIZE:
      _ENGINE_CACHE.pop(next(iter(_ENGINE_CACHE)))
    value = _ENGINE_CACHE[key] = build()
  return value


def _get_engine(spec_prog: tuple, make_program: Callable[[], _Program], *, init_params_fn, eval_fn, num_seeds,
                params_per_seed, chunk_len, stride, mesh=None) -> _Engine:
  """The jitted init and chunk of a configuration, shared by every call with the same static settings.

  The chunk does not depend on how parameters are initialised, so runs that differ only there (a params
  pytree, an init callable, per-seed params) share one compiled chunk.
  """
  program = _cached(("program", spec_prog), make_program)
  init = _cached(("init", spec_prog, init_params_fn, num_seeds, params_per_seed, mesh),
                 lambda: _build_init(program, init_params_fn, num_seeds, params_per_seed, mesh))
  chunk = _cached(("chunk", spec_prog, eval_fn, num_seeds, chunk_len, stride, mesh),
                  lambda: _build_chunk(program, eval_fn, num_seeds, chunk_len, stride, mesh))
  return _Engine(init, chunk)


# ----------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------


def _check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> int | None:
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def _check_key(key: Any) -> jax.Array:
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key must be a single key (shape ()), got a key array of shape {key.shape}")
    return key
  arr = np.asarray(key) if isinstance(key, (jax.Array, np.ndarray)) else None
  if arr is not None and arr.dtype == np.uint32 and arr.shape == (2,):
    return jax.random.wrap_key_data(jnp.asarray(arr))  # legacy raw key
  raise TypeError(f"key must be a JAX PRNG key from jax.random.key(seed), got {key!r}")


def _check_data(data: Any, data_mask: Any, name: str) -> tuple[int, jax.Array | None]:
  n = _checks.check_batch(data, name)
  for i, leaf in enumerate(jax.tree.leaves(data)):
    _checks.check_finite_array(f"{name} leaf {i}", leaf)
  if data_mask is None:  # an explicit all-ones mask: masked and unmasked runs share one compiled chunk
    return n, jnp.ones((n,), jnp.result_type(float))
  mask = np.asarray(data_mask)
  if mask.shape != (n,):
    raise ValueError(f"data_mask must have shape ({n},) (one entry per example of {name}), got {mask.shape}")
  if mask.dtype.kind not in "biuf" or not np.all((mask == 0) | (mask == 1)):
    raise ValueError("data_mask must hold only 0/1 (or False/True) entries")
  if not np.any(mask):
    raise ValueError(f"data_mask selects no example of {name}: at least one entry must be 1")
  return n, jnp.asarray(mask, jnp.result_type(float))


def _check_steps(name: str, steps: Any, num_steps: int) -> tuple[int, ...]:
  try:
    values = [int(s) for s in steps]
  except TypeError as e:
    raise TypeError(f"{name} must be a sequence of integers in [0, {num_steps}], got {steps!r}") from e
  for s, raw in zip(values, steps):
    if isinstance(raw, bool) or s != raw or not 0 <= s <= num_steps:
      raise ValueError(f"{name} must hold integers in [0, num_steps={num_steps}], got {raw!r}")
  return tuple(sorted(set(values)))


def _hparam(name: str, value: Any, *, allow_zero: bool = False) -> jax.Array:
  if allow_zero:
    _checks.check_nonnegative(name, value)
  else:
    _checks.check_positive(name, value)
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
  return jnp.asarray(value, jnp.result_type(float))


def _check_params(params: Any, num_seeds: int | None, params_per_seed: bool) -> None:
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError("params must be a pytree with at least one array leaf")
  for i, leaf in enumerate(leaves):
    if not hasattr(leaf, "shape") or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(f"params leaf {i} must be a floating-point array, got {type(leaf).__name__} "
                      f"{getattr(leaf, 'dtype', '')}")
    _checks.check_finite_array(f"params leaf {i}", leaf)
  if params_per_seed:
    if num_seeds is None:
      raise ValueError("params_per_seed=True needs num_seeds (the size of the leading seed axis)")
    bad = [np.shape(l) for l in leaves if np.ndim(l) == 0 or np.shape(l)[0] != num_seeds]
    if bad:
      raise ValueError(f"params_per_seed=True needs every params leaf to have leading axis "
                       f"num_seeds={num_seeds}, got shapes {bad}")


# ----------------------------------------------------------------------------------------------------
# Fingerprint, SIGINT
# ----------------------------------------------------------------------------------------------------


def _array_digest(tree) -> str:
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    arr = np.asarray(jax.random.key_data(leaf) if ckpt_lib._is_key(leaf) else leaf)  # pylint: disable=protected-access
    h.update(f"{arr.shape}{arr.dtype}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def _fingerprint(description: dict) -> str:
  return hashlib.sha256(json.dumps(description, sort_keys=True, default=repr).encode()).hexdigest()


class _SigintGuard:
  """Turns SIGINT into a flag checked between chunks; a second SIGINT interrupts at once."""

  def __init__(self):
    self.flag = False
    self._old = None
    self._installed = False

  def _handler(self, signum, frame):
    del signum, frame
    if self.flag:
      raise KeyboardInterrupt
    self.flag = True

  def __enter__(self):
    if threading.current_thread() is threading.main_thread():
      self._old = signal.signal(signal.SIGINT, self._handler)
      self._installed = True
    return self

  def __exit__(self, *exc):
    if self._installed:
      signal.signal(signal.SIGINT, self._old)


# ----------------------------------------------------------------------------------------------------
# The host loop
# ----------------------------------------------------------------------------------------------------


def _host(tree):
  return jax.tree.map(lambda x: x if ckpt_lib._is_key(x) else np.asarray(jax.device_get(x)), tree)  # pylint: disable=protected-access


def _stack(trees):
  return jax.tree.map(lambda *xs: np.stack(xs), *trees)


def _run(*, driver: str, engine: _Engine, params, data, data_mask, key, num_seeds, hparams: dict,
         num_steps: int, chunk_len: int, stride: int, record_steps: tuple[int, ...], checkpoint_dir,
         checkpoint_every, resume: bool, progress: bool, description: dict):
  """Runs the engine from step 0 (or a checkpoint) to ``num_steps``; returns (state, history, recorded)."""
  if num_seeds is None:
    keys = key
  else:
    keys = jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(num_seeds, dtype=jnp.uint32))

  fingerprint = None
  lock = None
  if checkpoint_dir is not None:
    checkpoint_dir = os.fspath(checkpoint_dir)
    description = dict(description, driver=driver, num_steps=num_steps, num_seeds=num_seeds,
                       chunk_len=chunk_len, stride=stride, record_steps=list(record_steps),
                       checkpoint_every=checkpoint_every,
                       hparams={k: float(v) for k, v in hparams.items()},
                       key=_array_digest(key), data=_array_digest(data),
                       data_mask=None if data_mask is None else _array_digest(data_mask),
                       params=None if callable(params) else _array_digest(params))
    fingerprint = _fingerprint(description)
    lock = ckpt_lib.RunLock(checkpoint_dir).acquire()
  try:
    init_params = None if callable(params) else params
    state = _strong(engine.init(init_params, data, keys))
    return _loop(engine=engine, state=state, data=data, data_mask=data_mask, keys=keys, hparams=hparams,
                 num_steps=num_steps, chunk_len=chunk_len, stride=stride, record_steps=record_steps,
                 checkpoint_dir=checkpoint_dir, checkpoint_every=checkpoint_every, resume=resume,
                 progress=progress, fingerprint=fingerprint, driver=driver)
  finally:
    if lock is not None:
      lock.release()


def _strong(tree):
  """Drops weak types so that a restored carry has exactly the avals of a fresh one (same compiled chunk)."""
  return jax.tree.map(lambda x: x if ckpt_lib._is_key(x) else jnp.asarray(x, dtype=x.dtype), tree)  # pylint: disable=protected-access


def _restore(checkpoint_dir, state, fingerprint, record_steps):
  """Loads the newest valid checkpoint of this run; returns (step, state, history, recorded) or None."""
  state_host = _host(state)
  params_host = state_host.params
  errors = []
  for step, path in reversed(ckpt_lib.list_checkpoints(checkpoint_dir)):
    try:
      meta = ckpt_lib.read_metadata(path)
    except ckpt_lib.CheckpointError as e:
      errors.append(str(e))
      continue
    if meta.get("fingerprint") != fingerprint:
      raise ckpt_lib.CheckpointError(
          f"checkpoint_dir {checkpoint_dir!r} holds checkpoints of a different run (configuration, data, "
          "key or initial parameters differ); pass resume=False to start over there, or use another "
          "checkpoint_dir")

    def target(meta):
      hist_spec = meta.get("history_spec", {})
      hist_len = int(meta.get("history_len", 0))
      rec = [int(s) for s in meta.get("recorded_steps", [])]
      if not set(rec) <= set(record_steps):
        raise ckpt_lib.CheckpointError(f"{path}: recorded steps {rec} are not among {list(record_steps)}")
      if not 0 <= hist_len <= int(meta["step"]) or not isinstance(hist_spec, dict):
        raise ckpt_lib.CheckpointError(f"{path}: history length {hist_len} is inconsistent with its step")
      history = {}
      for k, (s, d) in hist_spec.items():
        if np.dtype(d).kind not in "biuf":
          raise ckpt_lib.CheckpointError(f"{path}: history entry {k!r} has unsupported dtype {d!r}")
        history[k] = jax.ShapeDtypeStruct((hist_len,) + tuple(int(v) for v in s), np.dtype(d))
      return {"state": state_host, "history": history,
              "recorded": {str(s): params_host for s in rec}}

    try:
      tree, meta = ckpt_lib.load_checkpoint(path, target)
    except ckpt_lib.CheckpointError as e:
      errors.append(str(e))
      continue
    if meta.get("step") != step:
      errors.append(f"{path}: metadata step {meta['step']} != file name step {step}")
      continue
    restored_state = _strong(tree["state"])
    recorded = {int(s): p for s, p in tree["recorded"].items()}
    history = [tree["history"]] if int(meta.get("history_len", 0)) else []
    return step, restored_state, history, recorded
  if errors:
    raise ckpt_lib.CheckpointError(
        f"no valid checkpoint in {checkpoint_dir!r} to resume from: " + " | ".join(errors))
  return None


def _save(checkpoint_dir, step, state, history_parts, recorded, fingerprint, driver) -> str:
  history = _concat_history(history_parts)
  tree = {"state": _host(state), "history": history,
          "recorded": {str(s): p for s, p in recorded.items()}}
  meta = {
      "step": int(step),
      "driver": driver,
      "fingerprint": fingerprint,
      "history_len": int(len(history["step"])) if history else 0,
      "history_spec": {k: [list(v.shape[1:]), v.dtype.name] for k, v in history.items()},
      "recorded_steps": sorted(int(s) for s in recorded),
  }
  path = ckpt_lib.checkpoint_path(checkpoint_dir, step)
  ckpt_lib.save_checkpoint(path, tree, metadata=meta)
  ckpt_lib.remove_checkpoints(checkpoint_dir, keep=_KEEP_CHECKPOINTS)
  return path


def _concat_history(parts):
  if not parts:
    return {}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def _flatten_outs(outs) -> dict:
  flat = {k: v for k, v in outs.items() if k not in ("eval", "finite")}
  for k, v in outs.get("eval", {}).items():
    flat[str(k)] = v
  return flat


def _loop(*, engine, state, data, data_mask, keys, hparams, num_steps, chunk_len, stride, record_steps,
          checkpoint_dir, checkpoint_every, resume, progress, fingerprint, driver):
  import tqdm  # pylint: disable=import-outside-toplevel

  start = 0
  history_parts: list[dict] = []
  recorded: dict[int, PyTree] = {}
  last_ckpt = None
  if checkpoint_dir is not None:
    if resume:
      restored = _restore(checkpoint_dir, state, fingerprint, record_steps)
      if restored is not None:
        start, state, history_parts, recorded = restored
        last_ckpt = ckpt_lib.checkpoint_path(checkpoint_dir, start)
    else:
      ckpt_lib.remove_checkpoints(checkpoint_dir, keep=0)
    ckpt_lib.remove_checkpoints(checkpoint_dir, keep=_KEEP_CHECKPOINTS)  # stale temporary files
  if start == 0 and 0 in record_steps:
    recorded[0] = _host(state.params)

  every = checkpoint_every if checkpoint_every is not None else chunk_len
  boundaries = set(record_steps) | {num_steps}
  s = start
  with _SigintGuard() as guard, tqdm.tqdm(total=num_steps, initial=start, desc=driver,
                                          disable=not progress, leave=False) as bar:
    while s < num_steps:
      e = min([b for b in boundaries if b > s] + [(s // chunk_len + 1) * chunk_len])
      if checkpoint_dir is not None:
        e = min(e, (s // every + 1) * every)
      new_state, outs = engine.chunk(state, data, data_mask, keys, hparams, jnp.int32(s), jnp.int32(e))
      outs = _host(outs)
      count = e - s
      finite = outs["finite"][:count].reshape(count, -1).all(axis=1)
      if not finite.all():
        bad = s + int(np.argmin(finite)) + 1
        loss_bad = not np.all(np.isfinite(outs["loss"][bad - s - 1]))
        raise DivergenceError(bad, "the loss" if loss_bad else "the parameters", last_ckpt)
      t = np.arange(s, e)
      keep = (t + 1) % stride == 0
      if keep.any():
        part = {k: v[:count][keep] for k, v in _flatten_outs(outs).items()}
        part = {"step": (t[keep] + 1).astype(np.int64), **part}
        history_parts.append(part)
      state = new_state
      bar.update(e - s)
      s = e
      if s in record_steps:
        recorded[s] = _host(state.params)
      if checkpoint_dir is not None and (s % every == 0 or s == num_steps or guard.flag):
        last_ckpt = _save(checkpoint_dir, s, state, history_parts, recorded, fingerprint, driver)
      if guard.flag and s < num_steps:
        raise Interrupted(s, last_ckpt if checkpoint_dir is not None else None)
  history = _concat_history(history_parts)
  if not history:
    history = {"step": np.zeros((0,), np.int64)}
  return state, history, recorded, start


def _recorded_stack(recorded: dict, record_steps: tuple[int, ...]):
  if not record_steps:
    return None
  return jax.tree.map(jnp.asarray, _stack([recorded[s] for s in record_steps]))


# ----------------------------------------------------------------------------------------------------
# Public drivers
# ----------------------------------------------------------------------------------------------------


def _common_checks(num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every, checkpoint_dir,
                   eval_fn, progress, resume, min_steps=1):
  num_steps = _check_int("num_steps", num_steps, minimum=min_steps)
  num_seeds = _check_int("num_seeds", num_seeds, minimum=1, allow_none=True)
  steps_per_chunk = _check_int("steps_per_chunk", steps_per_chunk, minimum=1)
  history_stride = _check_int("history_stride", history_stride, minimum=1)
  checkpoint_every = _check_int("checkpoint_every", checkpoint_every, minimum=1, allow_none=True)
  if checkpoint_every is not None and checkpoint_dir is None:
    raise ValueError(f"checkpoint_every={checkpoint_every} needs a checkpoint_dir")
  if checkpoint_dir is not None and not isinstance(checkpoint_dir, (str, os.PathLike)):
    raise TypeError(f"checkpoint_dir must be a path (str or os.PathLike) or None, got {checkpoint_dir!r}")
  if checkpoint_dir is not None:
    try:
      os.makedirs(checkpoint_dir, exist_ok=True)
    except OSError as e:
      raise ValueError(f"checkpoint_dir {os.fspath(checkpoint_dir)!r} cannot be created: {e}") from e
    if not os.access(checkpoint_dir, os.W_OK):
      raise ValueError(f"checkpoint_dir {os.fspath(checkpoint_dir)!r} is not writable")
  if eval_fn is not None and not callable(eval_fn):
    raise TypeError(f"eval_fn must be callable as eval_fn(params) -> dict of scalars, got {eval_fn!r}")
  for name, value in (("progress", progress), ("resume", resume)):
    if not isinstance(value, bool):
      raise TypeError(f"{name} must be a bool, got {value!r}")
  return num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every


def _sgld_spec(loss_fn, accounting, kwargs: dict):
  """(cache key, program builder, full kwargs) of ``sgld.sgld(loss_fn, accounting=..., **kwargs)``.

  The keyword arguments are completed with ``sgld.sgld``'s defaults, so that training without a ledger
  and "sgld" unlearning with the same settings share one compiled chunk.
  """
  import inspect  # pylint: disable=import-outside-toplevel

  from unlearn_jax import sgld as sgld_lib  # pylint: disable=import-outside-toplevel

  full = {}
  for name, param in inspect.signature(sgld_lib.sgld).parameters.items():
    if param.kind is inspect.Parameter.KEYWORD_ONLY and name != "accounting":
      full[name] = param.default
  unknown = sorted(set(kwargs) - set(full))
  if unknown:
    raise TypeError(f"unknown keyword argument(s) {unknown} for sgld.sgld; allowed: {sorted(full)}")
  full.update(kwargs)
  for name in ("clip_norm", "weight_decay", "projection_radius", "sampling_rate"):
    if full.get(name) is not None and not isinstance(full[name], bool):
      try:
        full[name] = float(full[name])
      except (TypeError, ValueError):
        pass  # sgld.sgld reports the bad value
  algorithm = sgld_lib.sgld(loss_fn, accounting=accounting, **full)  # validates the settings now

  def make_program():
    return _sgld_program(algorithm, own_shuffle_key=True, reduction_blocks=full.get("reduction_blocks"))

  return ("sgld", loss_fn, accounting, _freeze(full)), make_program, full


def _freeze(value):
  """A hashable stand-in for configuration values (dicts and lists become tuples)."""
  if isinstance(value, dict):
    return tuple(sorted((k, _freeze(v)) for k, v in value.items()))
  if isinstance(value, (list, tuple)):
    return tuple(_freeze(v) for v in value)
  return value


def train(
    loss_fn: LossFn,
    params: PyTree | Callable[[jax.Array], PyTree],
    data: PyTree,
    *,
    num_steps: int,
    key: jax.Array,
    step_size: ArrayLike,
    temperature: ArrayLike | None = None,
    algorithm: Any = None,
    optimizer: optax.GradientTransformation | None = None,
    accounting: Any = None,
    accounting_temperature: ArrayLike | None = None,
    num_seeds: int | None = None,
    params_per_seed: bool = False,
    steps_per_chunk: int = 100,
    history_stride: int = 1,
    eval_fn: Callable[[PyTree], dict] | None = None,
    checkpoint_steps: Sequence[int] = (),
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    data_mask: ArrayLike | None = None,
    clip_norm: float | None = None,
    mesh: Any = None,
    **sgld_kwargs: Any,
) -> TrainResult:
  """Trains for ``num_steps`` steps in jitted ``lax.scan`` chunks, with the ledger, history and checkpoints.

  Three ways to say what a step is:

  - default: ``sgld.sgld(loss_fn, clip_norm=clip_norm, accounting=accounting, **sgld_kwargs)`` (mode,
    weight decay, projection radius, sampling rate, ... of THEORY §1) at ``step_size`` η and
    ``temperature`` τ;
  - ``algorithm``: a ready ``sgld.Algorithm`` (its own accounting settings apply);
  - ``optimizer``: any optax ``GradientTransformation``, plain full-batch training (noise-free) on the
    mean loss over the (masked) data; with ``accounting`` the per-instance costs of THEORY §2a are
    accumulated with the *assumed* temperature ``accounting_temperature`` and step size ``step_size``
    (clipped at ``clip_norm``; the ranking of points by the full-batch loss does not depend on τ).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for ONE example.
    params: initial parameters, or a callable ``init_key -> params`` (each seed initialised from its
      own key, see the module docstring).
    data: the training set, a pytree with leading axis n on every leaf (e.g. ``(x, y)``).
    num_steps: number of steps (>= 1).
    key: ``jax.random.key(seed)``; step t uses ``jax.random.fold_in(chain_key, t)``.
    step_size: η > 0 (array argument: changing it does not recompile).
    temperature: τ > 0 for SGLD (ignored with ``optimizer``).
    algorithm: an ``sgld.Algorithm``; exclusive with ``optimizer`` and ``sgld_kwargs``.
    optimizer: an optax ``GradientTransformation`` for plain training.
    accounting: ``accounting.AccountingConfig`` (from ``accounting.accountant(...)``) or None.
    accounting_temperature: assumed τ of the ledger with ``optimizer``; with SGLD, overrides the
      temperature used by the ledger (passed to the SGLD step).
    num_seeds: None for one chain, or R >= 1 independent chains in one vmapped call.
    params_per_seed: True if ``params`` leaves carry a leading seed axis of size ``num_seeds``.
    steps_per_chunk: steps per jitted chunk (the progress bar advances between chunks).
    history_stride: record the history every this many steps.
    eval_fn: ``eval_fn(params) -> dict of scalars`` (e.g. train / test accuracy), evaluated after every
      ``history_stride``-th step inside the jitted loop.
    checkpoint_steps: step counts (0..num_steps) whose parameters are recorded and returned stacked.
    checkpoint_dir: directory for resumable checkpoints (locked while the run is going), or None.
    checkpoint_every: checkpoint period in steps (default: ``steps_per_chunk``).
    resume: continue from the newest checkpoint of the same run in ``checkpoint_dir`` if there is
      one; False deletes existing checkpoints there and starts over.
    progress: show a tqdm progress bar.
    data_mask: (n,) 0/1 marks the examples that count (retain set / padding); None: all.
    clip_norm: per-example clip C for SGLD (forwarded to ``sgld.sgld``) and for the ledger with
      ``optimizer``.
    mesh: a ``jax.sharding.Mesh`` from ``distributed.make_mesh`` to run on several devices (None: as
      usual). The data set is padded to a multiple of the mesh's "data" axis (padding rows masked out)
      and split along it with the ledger; parameters are replicated (seeds split along "seeds"). The
      returned ``ledger`` has the real n rows; ``state.ledger`` keeps the padded, sharded carry.
    **sgld_kwargs: further keyword arguments of ``sgld.sgld`` (``mode``, ``weight_decay``,
      ``projection_radius``, ``sampling_rate``, ``batch_size``, ``norm_method``, ``chunk_size``,
      ``reduction_blocks``). ``reduction_blocks=R`` (R a multiple of the mesh's "data" axis size;
      R = 8 for 1, 2 and 4 devices) pads the data to a multiple of R, with or without a mesh, and
      fixes the order of every sum over examples: the runs on 1, 2 and 4 devices were then bitwise
      identical (``docs/distributed.md``).

  Returns:
    A :class:`TrainResult`.

  Raises:
    ValueError, TypeError: invalid arguments (named in the message).
    DivergenceError: the loss or the parameters turned non-finite (the step is named).
    Interrupted: SIGINT; the state was checkpointed first when ``checkpoint_dir`` is set.
    unlearn_jax.checkpoint.LockError: another live run holds ``checkpoint_dir``.
    unlearn_jax.checkpoint.CheckpointError: ``checkpoint_dir`` holds a different run or no valid file.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> res = train(loss_fn, jnp.zeros(1), (x, y), num_steps=200, key=jax.random.key(0),
    ...             step_size=0.5, optimizer=optax.sgd(0.5), checkpoint_steps=(0, 200),
    ...             progress=False)
    >>> print(round(float(res.params[0]), 3), res.recorded_steps.tolist(), res.history["loss"].shape)
    2.0 [0, 200] (200,)
  """
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable as loss_fn(params, example), got {loss_fn!r}")
  num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every = _common_checks(
      num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every, checkpoint_dir, eval_fn,
      progress, resume)
  key = _check_key(key)
  _, mask = _check_data(data, data_mask, "data")
  init_params_fn = params if callable(params) else None
  if init_params_fn is None:
    _check_params(params, num_seeds, params_per_seed)
  elif params_per_seed:
    raise ValueError("params_per_seed=True needs a params pytree, got an initialisation callable")
  reduction_blocks = _check_reduction_blocks(sgld_kwargs.get("reduction_blocks"), mesh)
  data, mask, params, num_real = _place_on_mesh(mesh, data, mask, params,
                                                num_seeds is not None and params_per_seed, reduction_blocks)
  record_steps = _check_steps("checkpoint_steps", checkpoint_steps, num_steps)
  if algorithm is not None and optimizer is not None:
    raise ValueError("pass at most one of algorithm and optimizer")
  if (algorithm is not None or optimizer is not None) and sgld_kwargs:
    raise ValueError(f"sgld keyword arguments {sorted(sgld_kwargs)} apply only without algorithm/optimizer")
  hparams = {"step_size": _hparam("step_size", step_size)}
  if optimizer is not None:
    if not isinstance(optimizer, optax.GradientTransformation):
      raise TypeError(f"optimizer must be an optax.GradientTransformation, got {optimizer!r}")
    if accounting is not None:
      if getattr(accounting, "filter_budget", None) is not None:
        raise ValueError("the individual Renyi filter (filter_budget) needs the SGLD algorithm; it is not "
                         "supported with optimizer=...")
      if accounting_temperature is None:
        raise ValueError("accounting with an optimizer needs accounting_temperature (the assumed τ > 0)")
      hparams["accounting_temperature"] = _hparam("accounting_temperature", accounting_temperature)
    if clip_norm is not None:
      _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
    norm_method = sgld_kwargs.pop("norm_method", "auto")
    chunk_size = sgld_kwargs.pop("chunk_size", None)
    spec_prog = ("optimizer", loss_fn, optimizer, accounting, clip_norm, norm_method, chunk_size)

    def make_program():
      return _optimizer_program(loss_fn, optimizer, accounting, clip_norm, norm_method, chunk_size)

    description = {"kind": "optimizer", "accounting": repr(accounting), "clip_norm": clip_norm,
                   "optimizer": repr(optimizer)}
  else:
    if temperature is None:
      raise ValueError("SGLD training needs a temperature τ > 0 (or pass optimizer=... for plain training)")
    hparams["temperature"] = _hparam("temperature", temperature)
    if accounting_temperature is not None:
      hparams["accounting_temperature"] = _hparam("accounting_temperature", accounting_temperature)
    if algorithm is None:
      kwargs = dict(sgld_kwargs)
      if clip_norm is not None:
        kwargs["clip_norm"] = clip_norm
      spec_prog, make_program, kwargs = _sgld_spec(loss_fn, accounting, kwargs)
      description = {"kind": "sgld", "accounting": repr(accounting), "sgld": repr(sorted(
          (k, v) for k, v in kwargs.items() if not (k == "reduction_blocks" and v is None)))}
    else:
      if not (hasattr(algorithm, "init") and hasattr(algorithm, "step")):
        raise TypeError(f"algorithm must be an sgld.Algorithm (init, step), got {algorithm!r}")
      if clip_norm is not None:
        raise ValueError("clip_norm is a setting of the algorithm; pass it to sgld.sgld(...)")
      spec_prog = ("algorithm", algorithm)

      def make_program():
        return _sgld_program(algorithm)

      description = {"kind": "algorithm"}
  if eval_fn is not None:
    description["eval_fn"] = getattr(eval_fn, "__qualname__", repr(type(eval_fn)))
  description["loss_fn"] = getattr(loss_fn, "__qualname__", repr(type(loss_fn)))
  if mesh is not None:
    description["mesh"] = repr(dict(mesh.shape))
  engine = _get_engine(spec_prog, make_program, init_params_fn=init_params_fn, eval_fn=eval_fn,
                       num_seeds=num_seeds, params_per_seed=params_per_seed, chunk_len=steps_per_chunk,
                       stride=history_stride, mesh=mesh)
  state, history, recorded, start = _run(
      driver="train", engine=engine, params=params, data=data, data_mask=mask, key=key,
      num_seeds=num_seeds, hparams=hparams, num_steps=num_steps, chunk_len=steps_per_chunk,
      stride=history_stride, record_steps=record_steps, checkpoint_dir=checkpoint_dir,
      checkpoint_every=checkpoint_every, resume=resume, progress=progress, description=description)
  ledger, history = _unpad_results(getattr(state, "ledger", None), history, num_real, _num_examples(data),
                                   num_seeds)
  return TrainResult(state=state, ledger=ledger, history=history,
                     recorded=_recorded_stack(recorded, record_steps),
                     recorded_steps=np.asarray(record_steps, np.int64), num_steps=num_steps,
                     resumed_from=start)


def retrain(
    loss_fn: LossFn,
    init_fn: Callable[[jax.Array], PyTree],
    retain_data: PyTree,
    *,
    num_steps: int,
    key: jax.Array,
    step_size: ArrayLike,
    **kwargs: Any,
) -> TrainResult:
  """The oracle: the same training as :func:`train` from a fresh initialisation, on the retain set D'.

  ``retain_data`` is either D' itself or the full data set with ``data_mask`` marking D' (same
  shapes for every forget set: no recompilation). Each seed's parameters are ``init_fn(init_key)`` with
  the initialisation key of the module docstring, so with the key of the original training the oracle
  starts where training started and sees the same noise at equal steps (coupled); pass another key for
  an independent oracle.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``.
    init_fn: ``init_key -> params`` (e.g. ``lambda k: model.init_fn(k, x[0])``).
    retain_data: the retain set (or full data with ``data_mask``).
    num_steps: number of steps.
    key: ``jax.random.key(seed)``.
    step_size: η > 0.
    **kwargs: every other keyword argument of :func:`train` (temperature, accounting, num_seeds, ...).

  Returns:
    A :class:`TrainResult`.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> init_fn = lambda k: jax.random.normal(k, (1,))
    >>> mask = jnp.ones(8).at[0].set(0.0)
    >>> res = retrain(loss_fn, init_fn, (x, y), num_steps=300, key=jax.random.key(1), step_size=0.5,
    ...               optimizer=optax.sgd(0.5), data_mask=mask, num_seeds=2, progress=False)
    >>> print(res.params.shape, [round(float(v), 3) for v in res.params[:, 0]])
    (2, 1) [2.0, 2.0]
  """
  if not callable(init_fn):
    raise TypeError(f"init_fn must be callable as init_fn(key) -> params, got {init_fn!r}")
  if kwargs.get("params_per_seed"):
    raise ValueError("retrain initialises each seed from its key; params_per_seed does not apply")
  return train(loss_fn, init_fn, retain_data, num_steps=num_steps, key=key, step_size=step_size, **kwargs)


def unlearn(
    loss_fn: LossFn,
    params: PyTree,
    retain_data: PyTree,
    *,
    method: str,
    key: jax.Array,
    step_size: ArrayLike,
    record_steps: Sequence[int],
    num_steps: int | None = None,
    temperature: ArrayLike | None = None,
    clip_norm: float | None = None,
    weight_decay: float = 0.0,
    projection_radius: float | None = None,
    l1_strength: ArrayLike = 0.0,
    num_seeds: int | None = None,
    params_per_seed: bool = False,
    data_mask: ArrayLike | None = None,
    steps_per_chunk: int = 100,
    history_stride: int = 1,
    eval_fn: Callable[[PyTree], dict] | None = None,
    checkpoint_dir: str | os.PathLike | None = None,
    checkpoint_every: int | None = None,
    resume: bool = True,
    progress: bool = True,
    norm_method: str = "auto",
    chunk_size: int | None = None,
    mesh: Any = None,
    reduction_blocks: int | None = None,
) -> UnlearnResult:
  """Fine-tunes trained ``params`` on the retain set and returns the parameters at ``record_steps``.

  Methods (THEORY §4 "Unlearning variants"; every one is full batch over the retain set):

  - ``"sgld"``: noisy fine-tuning, the SGLD step of training (``sgld.sgld(mode="full_batch")``) with
    the same η, τ, clip C, weight decay and projection radius R: the unlearning of the per-instance
    theorem (THEORY §4).
  - ``"sgd"``: the same step without noise, ``θ ← Π_R(θ − η (ĝ + weight_decay·θ))``.
  - ``"l1_sparse"``: ``"sgd"`` on ``L_{D'}(θ) + γ_t‖θ‖₁`` with ``γ_t = l1_schedule(t, num_steps,
    l1_strength)`` decaying linearly to 0 (Jia et al. 2023); the schedule depends on ``num_steps``, so
    its recorded parameters equal a rerun with the same ``num_steps`` stopped at that step.

  The recorded parameters after k steps equal those of a run of k steps (the same compiled chunk runs
  every step, see the module docstring), so "how many steps until unlearned" is read off the grid
  without rerunning.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``.
    params: trained parameters; with ``num_seeds`` shared by all seeds, or per seed with
      ``params_per_seed=True`` (leading axis R, e.g. ``train(..., num_seeds=R).params``).
    retain_data: D' (or the full data with ``data_mask`` marking D').
    method: ``"sgld"``, ``"sgd"`` or ``"l1_sparse"``.
    key: ``jax.random.key(seed)`` of the fine-tuning chain (noise of ``"sgld"``).
    step_size: η > 0.
    record_steps: step counts (0..num_steps) at which to return the parameters.
    num_steps: steps to run (default: ``max(record_steps)``).
    temperature: τ > 0 (``"sgld"`` only).
    clip_norm: per-example clip C (None: no clipping).
    weight_decay: λ >= 0 of the gradient of λ/2‖θ‖².
    projection_radius: R of the projection Π_R (None: none).
    l1_strength: γ >= 0 at the first step (``"l1_sparse"``).
    num_seeds, params_per_seed, data_mask, steps_per_chunk, history_stride, eval_fn, checkpoint_dir,
      checkpoint_every, resume, progress: as in :func:`train`.
    norm_method, chunk_size: per-example gradient norm settings (``per_example.py``).
    mesh: a ``jax.sharding.Mesh`` to run on several devices (see :func:`train`); None: as usual.
    reduction_blocks: None, or R for a fixed order of the sums over examples (R = 8 for 1, 2 and 4
      devices; see :func:`train` and ``sgld.sgld``).

  Returns:
    An :class:`UnlearnResult`; ``params`` leaves (G, [R,] ...).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> res = unlearn(loss_fn, jnp.zeros(1), (x, y), method="sgd", key=jax.random.key(0),
    ...               step_size=0.5, record_steps=(0, 10, 300), progress=False)
    >>> print(res.steps.tolist(), [round(float(v), 3) for v in res.params[:, 0]])
    [0, 10, 300] [0.0, 1.821, 2.0]
  """
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable as loss_fn(params, example), got {loss_fn!r}")
  _checks.check_choice("method", method, UNLEARNING_METHODS)
  try:
    steps_list = list(record_steps)
  except TypeError as e:
    raise TypeError(f"record_steps must be a sequence of non-negative integers, got {record_steps!r}") from e
  if not steps_list:
    raise ValueError("record_steps must name at least one step count")
  if num_steps is None:
    num_steps = max(int(s) for s in steps_list)
  num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every = _common_checks(
      num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every, checkpoint_dir, eval_fn,
      progress, resume, min_steps=0)
  rec = _check_steps("record_steps", steps_list, num_steps)
  key = _check_key(key)
  _, mask = _check_data(retain_data, data_mask, "retain_data")
  _check_params(params, num_seeds, params_per_seed)
  reduction_blocks = _check_reduction_blocks(reduction_blocks, mesh)
  retain_data, mask, params, _ = _place_on_mesh(mesh, retain_data, mask, params,
                                                num_seeds is not None and params_per_seed, reduction_blocks)
  hparams = {"step_size": _hparam("step_size", step_size)}
  if clip_norm is not None:
    _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
    if math.isinf(float(clip_norm)):
      clip_norm = None
  _checks.check_nonnegative("weight_decay", weight_decay)
  if projection_radius is not None:
    _checks.check_positive("projection_radius", projection_radius, allow_inf=True)
  _checks.check_choice("norm_method", norm_method, per_example.NORM_METHODS)
  weight_decay = float(weight_decay)
  if method == "sgld":
    if temperature is None:
      raise ValueError("method='sgld' needs a temperature τ > 0 (the training temperature)")
    hparams["temperature"] = _hparam("temperature", temperature)
    kwargs = {"mode": "full_batch", "clip_norm": clip_norm, "weight_decay": weight_decay,
              "projection_radius": projection_radius, "norm_method": norm_method, "chunk_size": chunk_size,
              "reduction_blocks": reduction_blocks}
    spec_prog, make_program, kwargs = _sgld_spec(loss_fn, None, kwargs)
  else:
    hparams["weight_decay"] = jnp.asarray(weight_decay, jnp.result_type(float))
    hparams["projection_radius"] = jnp.asarray(
        math.inf if projection_radius is None else float(projection_radius), jnp.result_type(float))
    hparams["l1_strength"] = (_hparam("l1_strength", l1_strength, allow_zero=True) if method == "l1_sparse"
                              else jnp.zeros((), jnp.result_type(float)))
    hparams["num_steps"] = jnp.asarray(max(num_steps, 1), jnp.result_type(float))
    if clip_norm is not None:
      hparams["clip_norm"] = jnp.asarray(float(clip_norm), jnp.result_type(float))
    kwargs = {"clipped": clip_norm is not None, "norm_method": norm_method, "chunk_size": chunk_size}
    if reduction_blocks is not None:  # (absent by default: the fingerprints of earlier runs stay valid)
      kwargs["reduction_blocks"] = reduction_blocks
    spec_prog = ("gd", loss_fn, _freeze(kwargs))

    def make_program():
      return _gd_program(loss_fn, **kwargs)
  description = {"kind": f"unlearn-{method}", "settings": repr(sorted(
                     (k, v) for k, v in kwargs.items() if not (k == "reduction_blocks" and v is None))),
                 "loss_fn": getattr(loss_fn, "__qualname__", repr(type(loss_fn)))}
  if eval_fn is not None:
    description["eval_fn"] = getattr(eval_fn, "__qualname__", repr(type(eval_fn)))
  if mesh is not None:
    description["mesh"] = repr(dict(mesh.shape))
  engine = _get_engine(spec_prog, make_program, init_params_fn=None, eval_fn=eval_fn, num_seeds=num_seeds,
                       params_per_seed=params_per_seed, chunk_len=steps_per_chunk, stride=history_stride,
                       mesh=mesh)
  state, history, recorded, start = _run(
      driver=f"unlearn-{method}", engine=engine, params=params, data=retain_data, data_mask=mask,
      key=key, num_seeds=num_seeds, hparams=hparams, num_steps=num_steps, chunk_len=steps_per_chunk,
      stride=history_stride, record_steps=rec, checkpoint_dir=checkpoint_dir,
      checkpoint_every=checkpoint_every, resume=resume, progress=progress, description=description)
  return UnlearnResult(params=_recorded_stack(recorded, rec), steps=np.asarray(rec, np.int64), state=state,
                       history=history, resumed_from=start)
