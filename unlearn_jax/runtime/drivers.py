"""The training, retraining and unlearning drivers (theory §1, §4): validate, build the step, run.

- :func:`train` runs SGLD (``algorithms.sgld``), a ready :class:`~unlearn_jax.algorithms.Algorithm`, or
  any optax optimizer (``algorithms.optax_training``) for ``num_steps`` steps;
- :func:`retrain` is the oracle: the same training from a fresh initialisation on the retain set;
- :func:`unlearn` fine-tunes trained parameters on the retain set with a registered method
  (``algorithms.methods``) and returns the parameters after each requested number of steps.

Every driver jits its whole loop once (``runtime.engine``) and runs it in chunks from a host loop
(``runtime.loop``: progress, recorded parameters, divergence, checkpoints, signals). Keys: step t of a
chain uses ``jax.random.fold_in(chain_key, t)``; with ``num_seeds=None`` the chain key is ``key``, with
``num_seeds=R`` chain r uses ``fold_in(key, r)`` and all R chains run in one vmapped call (chain r
matches a single-chain run with ``key=fold_in(key, r)`` to float rounding: a batched matmul may round
differently from R single ones). Parameters initialised from a key (``params`` a callable
``init_key -> params``) use ``fold_in(chain_key, 2**32 - 1)``, so every seed gets its own
initialisation; a params pytree is shared by all seeds unless ``params_per_seed=True`` says its leaves
carry a leading seed axis.

Checkpoints: with ``checkpoint_dir`` the driver holds a lock there and writes the whole carry every
``checkpoint_every`` steps; with ``resume=True`` a later call with the same configuration continues
from the newest valid checkpoint and returns results bitwise identical to an uninterrupted run
(``runtime.resume``).
"""

from __future__ import annotations

import math
import os
from collections.abc import Callable, Sequence
from typing import Any

import jax
import numpy as np
import optax
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax.algorithms import methods
from unlearn_jax.algorithms.base import Algorithm, describe_callable
from unlearn_jax.algorithms.optimizer import optax_training
from unlearn_jax.algorithms.sgld import sgld
from unlearn_jax.runtime import inputs, loop
from unlearn_jax.runtime.progress import Progress
from unlearn_jax.runtime.results import RunResult

__all__ = ["retrain", "train", "unlearn"]

PyTree = Any
LossFn = Callable[[PyTree, PyTree], ArrayLike]


def _step_hyper(step_size, temperature, accounting_temperature, clip_norm, weight_decay, projection_radius) -> dict:
  """The per-call hyperparameters of an SGLD step, validated (inf: no clip / no projection)."""
  hyper = {
    "step_size": inputs.hyperparameter("step_size", step_size),
    "temperature": inputs.hyperparameter("temperature", temperature, allow_zero=True),
    "clip_norm": inputs.hyperparameter("clip_norm", math.inf if clip_norm is None else clip_norm, allow_inf=True),
    "weight_decay": inputs.hyperparameter("weight_decay", weight_decay, allow_zero=True),
    "projection_radius": inputs.hyperparameter(
      "projection_radius", math.inf if projection_radius is None else projection_radius, allow_inf=True
    ),
    "l1_strength": inputs.hyperparameter("l1_strength", 0.0, allow_zero=True),
    "l1_horizon": inputs.hyperparameter("l1_horizon", math.inf, allow_inf=True),
  }
  if accounting_temperature is not None:
    hyper["accounting_temperature"] = inputs.hyperparameter("accounting_temperature", accounting_temperature)
  return hyper


def _training_step(
  loss_fn,
  *,
  algorithm,
  optimizer,
  optimizer_description,
  accounting,
  accounting_temperature,
  step_size,
  temperature,
  mode,
  clip_norm,
  weight_decay,
  projection_radius,
  sampling_rate,
  batch_size,
  denominator,
  norm_method,
  chunk_size,
  reduction_blocks,
):
  """(algorithm, hyperparameters) of :func:`train`'s three routes."""
  if algorithm is not None and optimizer is not None:
    raise ValueError("pass at most one of algorithm and optimizer")
  if optimizer is not None:
    if accounting is not None and accounting_temperature is None:
      raise ValueError("accounting with an optimizer needs accounting_temperature (the assumed τ > 0)")
    alg = optax_training(
      loss_fn,
      optimizer,
      accounting=accounting,
      description=optimizer_description,
      norm_method=norm_method,
      chunk_size=chunk_size,
    )
    hyper = {
      "step_size": inputs.hyperparameter("step_size", step_size),
      "clip_norm": inputs.hyperparameter("clip_norm", math.inf if clip_norm is None else clip_norm, allow_inf=True),
    }
    if accounting_temperature is not None:
      hyper["accounting_temperature"] = inputs.hyperparameter("accounting_temperature", accounting_temperature)
    return alg, hyper
  if temperature is None:
    raise ValueError("SGLD training needs a temperature τ > 0 (or pass optimizer=... for plain training)")
  if algorithm is not None:
    if not isinstance(algorithm, Algorithm):
      raise TypeError(f"algorithm must be an unlearn_jax.algorithms.Algorithm (init, step), got {algorithm!r}")
    if clip_norm is not None or weight_decay or projection_radius is not None or mode != "full_batch":
      raise ValueError(
        "clip_norm, weight_decay, projection_radius and mode are settings of the algorithm; "
        "build it with them (unlearn_jax.sgld(...)) instead of passing them to train"
      )
    hyper = {
      "step_size": inputs.hyperparameter("step_size", step_size),
      "temperature": inputs.hyperparameter("temperature", temperature, allow_zero=True),
    }
    if accounting_temperature is not None:
      hyper["accounting_temperature"] = inputs.hyperparameter("accounting_temperature", accounting_temperature)
    return algorithm, hyper
  alg = sgld(
    loss_fn,
    mode=mode,
    sampling_rate=sampling_rate,
    batch_size=batch_size,
    denominator=denominator,
    accounting=accounting,
    norm_method=norm_method,
    chunk_size=chunk_size,
    reduction_blocks=reduction_blocks,
  )
  return alg, _step_hyper(step_size, temperature, accounting_temperature, clip_norm, weight_decay, projection_radius)


def _describe(algorithm: Algorithm, eval_fn, mesh) -> dict:
  description = {"algorithm": algorithm.describe()}
  if eval_fn is not None:
    description["eval_fn"] = describe_callable(eval_fn)
  if mesh is not None:
    description["mesh"] = {str(k): int(v) for k, v in dict(mesh.shape).items()}
  return description


def _recorded_stack(recorded: dict, record_steps: tuple[int, ...]):
  if not record_steps:
    return None
  return jax.tree.map(lambda *xs: jax.numpy.asarray(np.stack(xs)), *[recorded[s] for s in record_steps])


def _one_seed(params: PyTree, params_per_seed: bool) -> PyTree:
  return jax.tree.map(lambda leaf: leaf[0], params) if params_per_seed and not callable(params) else params


def _check_callable(name: str, fn: Any, how: str) -> None:
  if not callable(fn):
    raise TypeError(f"{name} must be callable as {how}, got {fn!r}")


def train(
  loss_fn: LossFn,
  params: PyTree | Callable[[jax.Array], PyTree],
  data: PyTree,
  *,
  num_steps: int,
  key: jax.Array,
  step_size: ArrayLike,
  temperature: ArrayLike | None = None,
  algorithm: Algorithm | None = None,
  optimizer: optax.GradientTransformation | None = None,
  optimizer_description: str | None = None,
  accounting: Any = None,
  accounting_temperature: ArrayLike | None = None,
  mode: str = "full_batch",
  clip_norm: float | None = None,
  weight_decay: float = 0.0,
  projection_radius: float | None = None,
  sampling_rate: float | None = None,
  batch_size: int | None = None,
  denominator: float | None = None,
  norm_method: str = "auto",
  chunk_size: int | None = None,
  reduction_blocks: int | None = None,
  num_seeds: int | None = None,
  params_per_seed: bool = False,
  steps_per_chunk: int = 100,
  history_stride: int = 1,
  eval_fn: Callable[[PyTree], dict] | None = None,
  record_steps: Sequence[int] = (),
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int | None = None,
  resume: bool = True,
  progress: bool | Progress = True,
  data_mask: ArrayLike | None = None,
  mesh: Any = None,
) -> RunResult:
  """Trains for ``num_steps`` steps in jitted ``lax.scan`` chunks, with the ledger, history and checkpoints.

  Three ways to say what a step is:

  - default: ``unlearn_jax.sgld(loss_fn, mode=..., accounting=...)`` at ``step_size`` η,
    ``temperature`` τ, ``clip_norm`` C, ``weight_decay`` and ``projection_radius`` R (all of them
    per-call hyperparameters: other values do not recompile);
  - ``algorithm``: a ready :class:`~unlearn_jax.algorithms.Algorithm` (its own settings apply);
  - ``optimizer``: any optax ``GradientTransformation``, noise-free full-batch training on the mean loss
    over the (masked) data, clipped at ``clip_norm``; with ``accounting`` the §2a costs are accumulated
    at the *assumed* ``accounting_temperature`` and ``step_size``.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for ONE example.
    params: initial parameters, or a callable ``init_key -> params`` (each seed initialised from its own
      key, see the module docstring).
    data: the training set, a pytree with leading axis n on every leaf (e.g. ``(x, y)``).
    num_steps: number of steps (>= 1).
    key: ``jax.random.key(seed)``; step t uses ``jax.random.fold_in(chain_key, t)``.
    step_size: η > 0.
    temperature: τ ≥ 0 for SGLD (ignored with ``optimizer``).
    algorithm: an Algorithm; exclusive with ``optimizer`` and the SGLD settings.
    optimizer: an optax ``GradientTransformation`` for plain training.
    optimizer_description: the optimizer's name and settings for the checkpoint fingerprint (see
      ``algorithms.optax_training``).
    accounting: ``accounting.AccountingConfig`` (from ``accounting.accountant(...)``) or None.
    accounting_temperature: assumed τ of the ledger with ``optimizer``; with SGLD, overrides the
      temperature used by the ledger.
    mode: "full_batch", "poisson" or "shuffled" (theory §1).
    clip_norm: per-example clip C (None: no clipping).
    weight_decay: wd ≥ 0 (the gradient of wd/2 ‖θ‖²).
    projection_radius: R of the projection Π_R (None: none).
    sampling_rate: q (poisson mode).
    batch_size: B (shuffled mode).
    denominator: a fixed b of ĝ (see ``unlearn_jax.sgld``).
    norm_method: "auto", "vmap" or "ghost" per-example gradient norms.
    chunk_size: examples per chunk of the per-example computations.
    reduction_blocks: R for a fixed order of the sums over examples (R a multiple of the mesh's "data"
      axis; R = 8 for 1, 2 and 4 devices): the data are padded to a multiple of R, with or without a
      mesh, and the runs on 1, 2 and 4 devices were bitwise identical (``docs/distributed.md``).
    num_seeds: None for one chain, or R >= 1 independent chains in one vmapped call.
    params_per_seed: True if ``params`` leaves carry a leading seed axis of size ``num_seeds``.
    steps_per_chunk: steps per jitted chunk (the progress bar advances between chunks).
    history_stride: record the history every this many steps.
    eval_fn: ``eval_fn(params) -> dict of scalars`` (e.g. train / test accuracy), evaluated after every
      ``history_stride``-th step inside the jitted loop.
    record_steps: step counts (0..num_steps) whose parameters are recorded and returned stacked.
    checkpoint_dir: directory for resumable checkpoints (locked while the run is going), or None.
    checkpoint_every: checkpoint period in steps (default: ``steps_per_chunk``).
    resume: continue from the newest checkpoint of the same run in ``checkpoint_dir`` if there is one;
      False deletes existing checkpoints there and starts over.
    progress: show a progress bar (True), none (False), or advance a shared ``runtime.Progress``.
    data_mask: (n,) 0/1 marks the examples that count (retain set / padding); None: all.
    mesh: a ``jax.sharding.Mesh`` from ``runtime.distributed.make_mesh`` to run on several devices: the
      data are padded to a multiple of the mesh's "data" axis (padding rows masked out) and split along
      it with the ledger; parameters are replicated (seeds split along "seeds"). The returned ``ledger``
      has the real n rows; ``state.ledger`` keeps the padded, sharded carry.

  Returns:
    A :class:`~unlearn_jax.runtime.RunResult`.

  Raises:
    ValueError, TypeError: invalid arguments (named in the message).
    DivergenceError: the loss or the parameters turned non-finite (the step is named).
    Interrupted: SIGINT or SIGTERM; the state was checkpointed first when ``checkpoint_dir`` is set.
    unlearn_jax.runtime.checkpoint.LockError: another live run holds ``checkpoint_dir``.
    unlearn_jax.runtime.checkpoint.CheckpointError: ``checkpoint_dir`` holds a different run or no valid
      file.

  Examples:
    >>> import jax, jax.numpy as jnp, optax
    >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> res = train(loss_fn, jnp.zeros(1), (x, y), num_steps=200, key=jax.random.key(0),
    ...             step_size=0.5, optimizer=optax.sgd(0.5), record_steps=(0, 200), progress=False)
    >>> print(round(float(res.params[0]), 3), res.recorded_steps.tolist(), res.history["loss"].shape)
    2.0 [0, 200] (200,)
  """
  _check_callable("loss_fn", loss_fn, "loss_fn(params, example)")
  num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every = inputs.check_common(
    num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every, checkpoint_dir, eval_fn, progress, resume
  )
  key = inputs.check_key(key)
  _, mask = inputs.check_data(data, data_mask, "data")
  init_params_fn = params if callable(params) else None
  if init_params_fn is None:
    inputs.check_params(params, num_seeds, params_per_seed)
  elif params_per_seed:
    raise ValueError("params_per_seed=True needs a params pytree, got an initialisation callable")
  inputs.check_data_for_loss(loss_fn, _one_seed(params, params_per_seed), data, "data")
  reduction_blocks = inputs.check_reduction_blocks(reduction_blocks, mesh)
  if algorithm is not None or optimizer is not None:
    reduction_blocks_for_data = None if algorithm is None else algorithm.reduction_blocks
  else:
    reduction_blocks_for_data = reduction_blocks
  algorithm, hyper = _training_step(
    loss_fn,
    algorithm=algorithm,
    optimizer=optimizer,
    optimizer_description=optimizer_description,
    accounting=accounting,
    accounting_temperature=accounting_temperature,
    step_size=step_size,
    temperature=temperature,
    mode=mode,
    clip_norm=clip_norm,
    weight_decay=weight_decay,
    projection_radius=projection_radius,
    sampling_rate=sampling_rate,
    batch_size=batch_size,
    denominator=denominator,
    norm_method=norm_method,
    chunk_size=chunk_size,
    reduction_blocks=reduction_blocks,
  )
  data, mask, params, num_real = inputs.place_on_mesh(
    mesh, data, mask, params, num_seeds is not None and params_per_seed, reduction_blocks_for_data
  )
  record = inputs.check_steps("record_steps", record_steps, num_steps)
  state, history, recorded, start = loop.run(
    driver="train",
    algorithm=algorithm,
    params=None if init_params_fn is not None else params,
    init_params_fn=init_params_fn,
    data=data,
    data_mask=mask,
    key=key,
    num_seeds=num_seeds,
    params_per_seed=params_per_seed,
    hyper=hyper,
    num_steps=num_steps,
    chunk_len=steps_per_chunk,
    stride=history_stride,
    record_steps=record,
    checkpoint_dir=checkpoint_dir,
    checkpoint_every=checkpoint_every,
    resume_ok=resume,
    progress=progress,
    description=_describe(algorithm, eval_fn, mesh),
    mesh=mesh,
    eval_fn=eval_fn,
  )
  ledger, history = inputs.unpad_results(
    getattr(state, "ledger", None), history, num_real, jax.tree.leaves(data)[0].shape[0], num_seeds
  )
  return RunResult(
    state=state,
    ledger=ledger,
    history=history,
    recorded=_recorded_stack(recorded, record),
    recorded_steps=np.asarray(record, np.int64),
    num_steps=num_steps,
    resumed_from=start,
  )


def retrain(
  loss_fn: LossFn,
  init_fn: Callable[[jax.Array], PyTree],
  retain_data: PyTree,
  *,
  num_steps: int,
  key: jax.Array,
  step_size: ArrayLike,
  **kwargs: Any,
) -> RunResult:
  """The oracle: the same training as :func:`train` from a fresh initialisation, on the retain set D'.

  ``retain_data`` is either D' itself or the full data set with ``data_mask`` marking D' (same shapes for
  every forget set: no recompilation). Each seed's parameters are ``init_fn(init_key)`` with the
  initialisation key of the module docstring, so with the key of the original training the oracle starts
  where training started and sees the same noise at equal steps (coupled); pass another key for an
  independent oracle.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``.
    init_fn: ``init_key -> params`` (e.g. ``lambda k: model.init_fn(k, x[0])``).
    retain_data: the retain set (or full data with ``data_mask``).
    num_steps: number of steps.
    key: ``jax.random.key(seed)``.
    step_size: η > 0.
    **kwargs: every other keyword argument of :func:`train` (temperature, accounting, num_seeds, ...).

  Returns:
    A :class:`~unlearn_jax.runtime.RunResult`.

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
  _check_callable("init_fn", init_fn, "init_fn(key) -> params")
  if kwargs.get("params_per_seed"):
    raise ValueError("retrain initialises each seed from its key; params_per_seed does not apply")
  return train(loss_fn, init_fn, retain_data, num_steps=num_steps, key=key, step_size=step_size, **kwargs)


def _step_list(record_steps) -> list:
  try:
    steps_list = list(record_steps)
  except TypeError as e:
    raise TypeError(f"record_steps must be a sequence of non-negative integers, got {record_steps!r}") from e
  if not steps_list:
    raise ValueError("record_steps must name at least one step count")
  return steps_list


def _check_fine_tuning(step_size, clip_norm, weight_decay, projection_radius) -> None:
  _checks.check_positive("step_size", step_size)
  if clip_norm is not None:
    _checks.check_positive("clip_norm", clip_norm, allow_inf=True)
  _checks.check_nonnegative("weight_decay", weight_decay)
  if projection_radius is not None:
    _checks.check_positive("projection_radius", projection_radius, allow_inf=True)


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
  batch_size: int | None = None,
  num_seeds: int | None = None,
  params_per_seed: bool = False,
  data_mask: ArrayLike | None = None,
  steps_per_chunk: int = 100,
  history_stride: int = 1,
  eval_fn: Callable[[PyTree], dict] | None = None,
  checkpoint_dir: str | os.PathLike | None = None,
  checkpoint_every: int | None = None,
  resume: bool = True,
  progress: bool | Progress = True,
  norm_method: str = "auto",
  chunk_size: int | None = None,
  mesh: Any = None,
  reduction_blocks: int | None = None,
  **options: Any,
) -> RunResult:
  """Fine-tunes trained ``params`` on the retain set and returns the parameters at ``record_steps``.

  ``method`` is a name of ``algorithms.UNLEARNING_METHODS``: ``"sgld"`` (noisy fine-tuning at τ, the
  unlearning of the per-instance theorem), ``"sgd"`` (the same step at τ = 0), ``"l1_sparse"`` (``"sgd"``
  on L_{D'} + γ_t‖θ‖₁, γ_t = ``l1_strength``·(1 − t/T)) or one added with
  ``algorithms.register_unlearning_method``; ``**options`` are the method's own keyword arguments. The
  recorded parameters after k steps equal those of a run of k steps (the same compiled chunk runs every
  step), so "how many steps until unlearned" is read off the grid without rerunning.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar``.
    params: trained parameters; with ``num_seeds`` shared by all seeds, or per seed with
      ``params_per_seed=True`` (leading axis R, e.g. ``train(..., num_seeds=R).params``).
    retain_data: D' (or the full data with ``data_mask`` marking D').
    method: a registered unlearning method.
    key: ``jax.random.key(seed)`` of the fine-tuning chain.
    step_size: η > 0.
    record_steps: step counts (0..num_steps) at which to return the parameters.
    num_steps: steps to run (default: ``max(record_steps)``).
    temperature: τ > 0 (``"sgld"``).
    clip_norm: per-example clip C (None: no clipping).
    weight_decay: wd ≥ 0.
    projection_radius: R of the projection Π_R (None: none).
    batch_size: B for shuffled-minibatch fine-tuning (rows of ``data_mask`` = 0 never count; a batch
      holds the retain rows among its B), as minibatch training; None: full-batch fine-tuning.
    num_seeds, params_per_seed, data_mask, steps_per_chunk, history_stride, eval_fn, checkpoint_dir,
      checkpoint_every, resume, progress, norm_method, chunk_size, mesh, reduction_blocks: as in
      :func:`train`.
    **options: the method's options (``l1_strength`` for ``"l1_sparse"``).

  Returns:
    A :class:`~unlearn_jax.runtime.RunResult`; ``recorded`` leaves (G, [R,] ...).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> x = jnp.linspace(-1.0, 1.0, 8)[:, None]; y = 2.0 * x[:, 0]
    >>> loss_fn = lambda w, ex: 0.5 * (ex[0] @ w - ex[1]) ** 2
    >>> res = unlearn(loss_fn, jnp.zeros(1), (x, y), method="sgd", key=jax.random.key(0),
    ...               step_size=0.5, record_steps=(0, 10, 300), progress=False)
    >>> print(res.recorded_steps.tolist(), [round(float(v), 3) for v in res.recorded[:, 0]])
    [0, 10, 300] [0.0, 1.821, 2.0]
  """
  _check_callable("loss_fn", loss_fn, "loss_fn(params, example)")
  method_fn = methods.unlearning_method(method)
  steps_list = _step_list(record_steps)
  if num_steps is None:
    num_steps = max(int(s) for s in steps_list)
  num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every = inputs.check_common(
    num_steps,
    num_seeds,
    steps_per_chunk,
    history_stride,
    checkpoint_every,
    checkpoint_dir,
    eval_fn,
    progress,
    resume,
    min_steps=0,
  )
  record = inputs.check_steps("record_steps", steps_list, num_steps)
  key = inputs.check_key(key)
  _, mask = inputs.check_data(retain_data, data_mask, "retain_data")
  inputs.check_params(params, num_seeds, params_per_seed)
  inputs.check_data_for_loss(loss_fn, _one_seed(params, params_per_seed), retain_data, "retain_data")
  reduction_blocks = inputs.check_reduction_blocks(reduction_blocks, mesh)
  _check_fine_tuning(step_size, clip_norm, weight_decay, projection_radius)
  spec = methods.MethodSpec(
    num_steps=num_steps,
    step_size=step_size,
    temperature=temperature,
    clip_norm=clip_norm,
    weight_decay=weight_decay,
    projection_radius=projection_radius,
    norm_method=norm_method,
    chunk_size=chunk_size,
    reduction_blocks=reduction_blocks,
    options=dict(options),
    batch_size=batch_size,
  )
  algorithm, raw_hyper = method_fn(loss_fn, spec)
  hyper = {k: inputs.hyperparameter(k, v, allow_zero=True, allow_inf=True) for k, v in raw_hyper.items()}
  retain_data, mask, params, _ = inputs.place_on_mesh(
    mesh, retain_data, mask, params, num_seeds is not None and params_per_seed, reduction_blocks
  )
  state, history, recorded, start = loop.run(
    driver=f"unlearn-{method}",
    algorithm=algorithm,
    params=params,
    init_params_fn=None,
    data=retain_data,
    data_mask=mask,
    key=key,
    num_seeds=num_seeds,
    params_per_seed=params_per_seed,
    hyper=hyper,
    num_steps=num_steps,
    chunk_len=steps_per_chunk,
    stride=history_stride,
    record_steps=record,
    checkpoint_dir=checkpoint_dir,
    checkpoint_every=checkpoint_every,
    resume_ok=resume,
    progress=progress,
    description=_describe(algorithm, eval_fn, mesh),
    mesh=mesh,
    eval_fn=eval_fn,
  )
  return RunResult(
    state=state,
    ledger=getattr(state, "ledger", None),
    history=history,
    recorded=_recorded_stack(recorded, record),
    recorded_steps=np.asarray(record, np.int64),
    num_steps=num_steps,
    resumed_from=start,
  )
