"""The host loop of a run: jitted chunks, progress, recorded parameters, divergence, checkpoints, signals.

:func:`run` initialises every chain (``engine.init_states``), optionally resumes from the newest
checkpoint of the same run, then calls the compiled chunk (``engine.run_chunk``) from a host loop that
advances the progress bar, records the parameters at requested steps, stops with
:class:`~unlearn_jax.runtime.results.DivergenceError` at the first non-finite loss or parameter (the
state after it is never written) and writes checkpoints between chunks (no host sync inside a chunk).
SIGINT and SIGTERM finish the running chunk, write a checkpoint and raise
:class:`~unlearn_jax.runtime.signals.Interrupted`. With a ``checkpoint_dir`` the run holds its lock.
"""

from __future__ import annotations

import os
from typing import Any, NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.algorithms.base import Algorithm
from unlearn_jax.runtime import checkpoint as ckpt_lib
from unlearn_jax.runtime import engine, resume
from unlearn_jax.runtime.progress import Progress
from unlearn_jax.runtime.results import BatchOverflowError, DivergenceError
from unlearn_jax.runtime.signals import Interrupted, InterruptGuard

__all__ = ["run"]

PyTree = Any


def _chain_keys(key: jax.Array, num_seeds: int | None) -> jax.Array:
  if num_seeds is None:
    return key
  return jax.vmap(lambda r: jax.random.fold_in(key, r))(jnp.arange(num_seeds, dtype=jnp.uint32))


def _flatten_outs(outs) -> dict:
  flat = {k: v for k, v in outs.items() if k not in ("eval", "finite", "dropped")}
  for k, v in outs.get("eval", {}).items():
    flat[str(k)] = v
  return flat


def _check_finite(outs, s: int, count: int, last_ckpt: str | None) -> None:
  if "dropped" in outs:
    dropped = outs["dropped"][:count].reshape(count, -1).max(axis=1)
    if dropped.any():
      first = int(np.argmax(dropped > 0))
      raise BatchOverflowError(s + first + 1, int(dropped[first]), last_ckpt)
  finite = outs["finite"][:count].reshape(count, -1).all(axis=1)
  if not finite.all():
    bad = s + int(np.argmin(finite)) + 1
    loss_bad = not np.all(np.isfinite(outs["loss"][bad - s - 1]))
    raise DivergenceError(bad, "the loss" if loss_bad else "the parameters", last_ckpt)


def _history_part(outs, s: int, e: int, stride: int) -> dict | None:
  t = np.arange(s, e)
  keep = (t + 1) % stride == 0
  if not keep.any():
    return None
  part = {k: v[: e - s][keep] for k, v in _flatten_outs(outs).items()}
  return {"step": (t[keep] + 1).astype(np.int64), **part}


def _resume_or_clear(checkpoint_dir, resume_ok, state, fingerprint, record_steps):
  """(start, state, history parts, recorded, last checkpoint) after resuming or clearing the directory."""
  start, history_parts, recorded, last = 0, [], {}, None
  if resume_ok:
    restored = resume.restore(checkpoint_dir, state, fingerprint, record_steps)
    if restored is not None:
      start, state, history_parts, recorded = restored
      last = ckpt_lib.checkpoint_path(checkpoint_dir, start)
  else:
    ckpt_lib.remove_checkpoints(checkpoint_dir, keep=0)
  ckpt_lib.remove_checkpoints(checkpoint_dir, keep=resume.KEEP_CHECKPOINTS)  # stale temporary files
  return start, state, history_parts, recorded, last


def _chunk_end(s: int, num_steps: int, chunk_len: int, boundaries: set, every: int | None) -> int:
  e = min([b for b in boundaries if b > s] + [(s // chunk_len + 1) * chunk_len])
  return e if every is None else min(e, (s // every + 1) * every)


class _Run(NamedTuple):
  """The settings of one run that the host loop reads."""

  driver: str
  algorithm: Algorithm
  data: PyTree
  data_mask: Any
  hyper: dict
  num_steps: int
  chunk_len: int
  stride: int
  record_steps: tuple[int, ...]
  checkpoint_dir: str | None
  checkpoint_every: int | None
  resume_ok: bool
  num_seeds: int | None
  mesh: Any
  eval_fn: Any


def _fingerprint(run_: _Run, description: dict, key, params, init_params_fn) -> str:
  """The fingerprint of a run: the algorithm's description and every input that changes its result."""
  return resume.fingerprint(
    dict(
      description,
      driver=run_.driver,
      num_steps=run_.num_steps,
      num_seeds=run_.num_seeds,
      chunk_len=run_.chunk_len,
      stride=run_.stride,
      record_steps=list(run_.record_steps),
      checkpoint_every=run_.checkpoint_every,
      hyper={k: float(v) for k, v in run_.hyper.items()},
      key=resume.array_digest(key),
      data=resume.array_digest(run_.data),
      data_mask=None if run_.data_mask is None else resume.array_digest(run_.data_mask),
      params=None if init_params_fn is not None else resume.array_digest(params),
    )
  )


def run(
  *,
  driver: str,
  algorithm: Algorithm,
  params: PyTree,
  init_params_fn,
  data: PyTree,
  data_mask,
  key,
  num_seeds: int | None,
  params_per_seed: bool,
  hyper: dict,
  num_steps: int,
  chunk_len: int,
  stride: int,
  record_steps: tuple[int, ...],
  checkpoint_dir,
  checkpoint_every: int | None,
  resume_ok: bool,
  progress: bool | Progress,
  description: dict,
  mesh: Any,
  eval_fn,
) -> tuple[Any, dict, dict, int]:
  """Runs ``algorithm`` from step 0 (or a checkpoint) to ``num_steps``.

  Returns ``(state, history, recorded, start)``: the final state, the history (arrays at the stride),
  ``{step: params}`` at the recorded steps, and the step this call resumed from.
  """
  run_ = _Run(
    driver,
    algorithm,
    data,
    data_mask,
    hyper,
    num_steps,
    chunk_len,
    stride,
    record_steps,
    None if checkpoint_dir is None else os.fspath(checkpoint_dir),
    checkpoint_every,
    resume_ok,
    num_seeds,
    mesh,
    eval_fn,
  )
  keys = _chain_keys(key, num_seeds)
  fingerprint, lock = None, None
  if run_.checkpoint_dir is not None:
    fingerprint = _fingerprint(run_, description, key, params, init_params_fn)
    lock = ckpt_lib.RunLock(run_.checkpoint_dir).acquire()
  try:
    state = engine.init_states(
      params,
      data,
      keys,
      algorithm=algorithm,
      init_params_fn=init_params_fn,
      num_seeds=num_seeds,
      params_per_seed=params_per_seed,
      mesh=mesh,
    )
    return _loop(run_, resume.strong(state), keys, fingerprint, progress)
  finally:
    if lock is not None:
      lock.release()


def _loop(run_: _Run, state, keys, fingerprint: str | None, progress) -> tuple[Any, dict, dict, int]:
  start, history_parts, recorded, last_ckpt = 0, [], {}, None
  ckpt_dir, num_steps, stride = run_.checkpoint_dir, run_.num_steps, run_.stride
  if ckpt_dir is not None:
    start, state, history_parts, recorded, last_ckpt = _resume_or_clear(
      ckpt_dir, run_.resume_ok, state, fingerprint, run_.record_steps
    )
  if start == 0 and 0 in run_.record_steps:
    recorded[0] = resume.to_host(state.params)
  every = None if ckpt_dir is None else (run_.checkpoint_every or run_.chunk_len)
  boundaries = set(run_.record_steps) | {num_steps}
  own_bar = not isinstance(progress, Progress)
  bar = Progress(num_steps, run_.driver, enabled=bool(progress)) if own_bar else progress
  if start:
    bar.note(f"[unlearn-jax] {run_.driver}: resuming from step {start} of {num_steps} ({ckpt_dir})")
    bar.update(start)
  s = start
  state = engine.private_copy(state)  # run_chunk donates it: no buffer of the caller's (params, a restore) is lost
  loop = not engine.straight_line(run_.algorithm, state.params, run_.data, run_.num_seeds)
  chunk_len = run_.chunk_len if loop else 1
  static = dict(
    algorithm=run_.algorithm,
    eval_fn=run_.eval_fn,
    num_seeds=run_.num_seeds,
    chunk_len=chunk_len,
    stride=stride,
    mesh=run_.mesh,
    loop=loop,
  )
  try:
    with InterruptGuard() as guard:
      while s < num_steps:
        e = _chunk_end(s, num_steps, chunk_len, boundaries, every)
        new_state, outs = engine.run_chunk(
          state, run_.data, run_.data_mask, keys, run_.hyper, jnp.int32(s), jnp.int32(e), **static
        )
        outs = resume.to_host(outs)
        _check_finite(outs, s, e - s, last_ckpt)
        part = _history_part(outs, s, e, stride)
        if part is not None:
          history_parts.append(part)
        bar.update(e - s)
        state, s = new_state, e
        if s in run_.record_steps:
          recorded[s] = resume.to_host(state.params)
        if ckpt_dir is not None and (s % every == 0 or s == num_steps or guard.flag):
          last_ckpt = resume.save(ckpt_dir, s, state, history_parts, recorded, fingerprint, run_.driver)
        if guard.flag:
          raise Interrupted(s, last_ckpt, guard.signum)
  finally:
    if own_bar:
      bar.close()
  history = resume.concat_history(history_parts) or {"step": np.zeros((0,), np.int64)}
  return state, history, recorded, start
