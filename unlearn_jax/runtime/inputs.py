"""Validation of the drivers' inputs at the public boundary, and their placement on a device mesh."""

from __future__ import annotations

import os
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import _checks
from unlearn_jax.per_example import blocks
from unlearn_jax.runtime import distributed
from unlearn_jax.runtime.progress import Progress

__all__ = [
  "check_common",
  "check_data",
  "check_data_for_loss",
  "check_key",
  "check_params",
  "check_reduction_blocks",
  "check_steps",
  "hyperparameter",
  "place_on_mesh",
  "unpad_results",
]


def _num_examples(data) -> int:
  return jax.tree.leaves(data)[0].shape[0]


def _check_int(name: str, value: Any, *, minimum: int, allow_none: bool = False) -> int | None:
  if value is None and allow_none:
    return None
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)):
    raise TypeError(f"{name} must be an integer >= {minimum}, got {value!r}")
  if value < minimum:
    raise ValueError(f"{name} must be an integer >= {minimum}, got {value!r}")
  return int(value)


def check_key(key: Any) -> jax.Array:
  if isinstance(key, jax.Array) and jax.dtypes.issubdtype(key.dtype, jax.dtypes.prng_key):
    if key.shape != ():
      raise ValueError(f"key must be a single key (shape ()), got a key array of shape {key.shape}")
    return key
  arr = np.asarray(key) if isinstance(key, (jax.Array, np.ndarray)) else None
  if arr is not None and arr.dtype == np.uint32 and arr.shape == (2,):
    return jax.random.wrap_key_data(jnp.asarray(arr))  # legacy raw key
  raise TypeError(f"key must be a JAX PRNG key from jax.random.key(seed), got {key!r}")


def check_data(data: Any, data_mask: Any, name: str) -> tuple[int, jax.Array | None]:
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


def check_data_for_loss(loss_fn: Any, params: Any, data: Any, name: str) -> None:
  """The loss's own check of the data (the library's cross-entropy: integer labels in range), if it has one."""
  check = getattr(loss_fn, "check_data", None)
  if callable(check):  # an initialisation function: its shapes are enough to count the classes
    check(jax.eval_shape(params, jax.random.key(0)) if callable(params) else params, data, name)


def check_steps(name: str, steps: Any, num_steps: int) -> tuple[int, ...]:
  try:
    values = [int(s) for s in steps]
  except TypeError as e:
    raise TypeError(f"{name} must be a sequence of integers in [0, {num_steps}], got {steps!r}") from e
  for s, raw in zip(values, steps):
    if isinstance(raw, bool) or s != raw or not 0 <= s <= num_steps:
      raise ValueError(f"{name} must hold integers in [0, num_steps={num_steps}], got {raw!r}")
  return tuple(sorted(set(values)))


def hyperparameter(name: str, value: Any, *, allow_zero: bool = False, allow_inf: bool = False) -> jax.Array:
  """A per-call hyperparameter as a scalar array, after the range check that names it."""
  if allow_zero:
    _checks.check_nonnegative(name, value, allow_inf=allow_inf)
  else:
    _checks.check_positive(name, value, allow_inf=allow_inf)
  if np.ndim(value) != 0:
    raise ValueError(f"{name} must be a scalar, got shape {np.shape(value)}")
  return jnp.asarray(value, jnp.result_type(float))


def check_params(params: Any, num_seeds: int | None, params_per_seed: bool) -> None:
  leaves = jax.tree.leaves(params)
  if not leaves:
    raise ValueError("params must be a pytree with at least one array leaf")
  for i, leaf in enumerate(leaves):
    if not hasattr(leaf, "shape") or not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      raise TypeError(
        f"params leaf {i} must be a floating-point array, got {type(leaf).__name__} {getattr(leaf, 'dtype', '')}"
      )
    _checks.check_finite_array(f"params leaf {i}", leaf)
  if params_per_seed:
    if num_seeds is None:
      raise ValueError("params_per_seed=True needs num_seeds (the size of the leading seed axis)")
    bad = [np.shape(leaf) for leaf in leaves if np.ndim(leaf) == 0 or np.shape(leaf)[0] != num_seeds]
    if bad:
      raise ValueError(
        f"params_per_seed=True needs every params leaf to have leading axis num_seeds={num_seeds}, got shapes {bad}"
      )


def check_common(
  num_steps,
  num_seeds,
  steps_per_chunk,
  history_stride,
  checkpoint_every,
  checkpoint_dir,
  eval_fn,
  progress,
  resume,
  min_steps=1,
):
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
  if not isinstance(progress, (bool, Progress)):  # a Progress: a bar shared by several calls (the study's)
    raise TypeError(f"progress must be a bool or a runtime.Progress, got {progress!r}")
  if not isinstance(resume, bool):
    raise TypeError(f"resume must be a bool, got {resume!r}")
  return num_steps, num_seeds, steps_per_chunk, history_stride, checkpoint_every


def check_reduction_blocks(value: Any, mesh: Any) -> int | None:
  if value is None:
    return None
  value = blocks.check_blocks(value)  # one validation, shared with the sgld builder
  if mesh is not None and isinstance(mesh, jax.sharding.Mesh):
    size = distributed.data_axis_size(mesh)
    if value % size:
      raise ValueError(
        f"reduction_blocks must be a multiple of the mesh's 'data' axis size {size}, got {value}; "
        "choose R = 2 x the largest device count you compare (e.g. 8 for 1, 2 and 4 devices)"
      )
  return int(value)


def place_on_mesh(mesh, data, mask, params, params_seed_axis, reduction_blocks=None):
  """Pads (copies of example 0, masked out), shards data and mask along "data", replicates params.

  The padded size is a multiple of ``reduction_blocks`` when it is set (also without a mesh: then the
  same n_padded, hence the same blocks, on every device count), else of the "data" axis size.
  Returns ``(data, mask, params, num_real)``; ``num_real`` is the unpadded n (None when nothing was
  done).
  """
  if mesh is None and reduction_blocks is None:
    return data, mask, params, None
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


def unpad_results(ledger, history, num_real, num_padded, num_seeds):
  """Drops the ledger's padding rows; rescales the history's mean over examples to the real ones."""
  if num_real is None or num_real == num_padded:
    return ledger, history
  if ledger is not None:
    ledger = distributed.unpad(ledger, num_real, seed_axis=num_seeds is not None)
  if "privacy_loss_mean" in history:  # padding rows hold 0: mean over real rows = mean * n_pad / n
    history = dict(history, privacy_loss_mean=history["privacy_loss_mean"] * (num_padded / num_real))
  return ledger, history
