"""Resumable runs: a fingerprint of the configuration, and saving / restoring a run's state.

A run with a ``checkpoint_dir`` writes, every ``checkpoint_every`` steps, the whole carry (parameters,
algorithm / optimizer state, ledger, step), the history and recorded parameters so far, the key data and
a fingerprint of the configuration (``checkpoint.py``: atomic, validated files). A later call with the
same configuration continues from the newest valid checkpoint; a directory holding another run's
checkpoints is refused. The fingerprint is built from an explicit description — the algorithm's
``describe()``, the run settings, hyperparameters and digests of the data, key and initial parameters —
never from ``repr`` of objects, so it is the same in every process.
"""

from __future__ import annotations

import hashlib
import json
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax.runtime import checkpoint as ckpt_lib

__all__ = ["array_digest", "fingerprint", "restore", "save", "to_host", "strong"]

PyTree = Any
KEEP_CHECKPOINTS = 2


def array_digest(tree) -> str:
  """SHA-256 of the shapes, dtypes and bytes of every leaf (keys by their key data)."""
  h = hashlib.sha256()
  for leaf in jax.tree.leaves(tree):
    arr = np.asarray(jax.random.key_data(leaf) if ckpt_lib.is_key(leaf) else leaf)
    h.update(f"{arr.shape}{arr.dtype}".encode())
    h.update(np.ascontiguousarray(arr).tobytes())
  return h.hexdigest()


def fingerprint(description: dict) -> str:
  """SHA-256 of a JSON description (sorted keys)."""
  return hashlib.sha256(json.dumps(description, sort_keys=True, default=str).encode()).hexdigest()


def to_host(tree):
  """Every array leaf as a NumPy array on the host (typed keys stay keys)."""
  return jax.tree.map(lambda x: x if ckpt_lib.is_key(x) else np.asarray(jax.device_get(x)), tree)


def strong(tree):
  """Drops weak types so that a restored carry has exactly the avals of a fresh one (same compiled chunk)."""
  return jax.tree.map(lambda x: x if ckpt_lib.is_key(x) else jnp.asarray(x, dtype=x.dtype), tree)


def concat_history(parts):
  if not parts:
    return {}
  return {k: np.concatenate([p[k] for p in parts]) for k in parts[0]}


def restore(checkpoint_dir, state, fingerprint, record_steps):
  """Loads the newest valid checkpoint of this run; returns (step, state, history, recorded) or None."""
  state_host = to_host(state)
  params_host = state_host.params
  errors = []
  for step, path in reversed(ckpt_lib.list_checkpoints(checkpoint_dir)):
    try:
      meta = ckpt_lib.read_metadata(path)
    except ckpt_lib.CheckpointError as e:
      errors.append(str(e))
      continue
    if meta.get("fingerprint") != fingerprint:
      raise ckpt_lib.ForeignCheckpointError(
        f"checkpoint_dir {checkpoint_dir!r} holds checkpoints of a different run (configuration, data, "
        "key or initial parameters differ); pass resume=False to start over there, or use another "
        "checkpoint_dir"
      )

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
      return {"state": state_host, "history": history, "recorded": {str(s): params_host for s in rec}}

    try:
      tree, meta = ckpt_lib.load_checkpoint(path, target)
    except ckpt_lib.CheckpointError as e:
      errors.append(str(e))
      continue
    if meta.get("step") != step:
      errors.append(f"{path}: metadata step {meta['step']} != file name step {step}")
      continue
    restored_state = strong(tree["state"])
    recorded = {int(s): p for s, p in tree["recorded"].items()}
    history = [tree["history"]] if int(meta.get("history_len", 0)) else []
    return step, restored_state, history, recorded
  if errors:
    raise ckpt_lib.CheckpointError(f"no valid checkpoint in {checkpoint_dir!r} to resume from: " + " | ".join(errors))
  return None


def save(checkpoint_dir, step, state, history_parts, recorded, fingerprint, driver) -> str:
  history = concat_history(history_parts)
  tree = {"state": to_host(state), "history": history, "recorded": {str(s): p for s, p in recorded.items()}}
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
  ckpt_lib.remove_checkpoints(checkpoint_dir, keep=KEEP_CHECKPOINTS)
  return path
