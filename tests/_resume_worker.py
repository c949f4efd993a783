"""A fixed SGLD training run with the ledger, used by tests/test_resume.py in subprocesses.

Usage: ``python tests/_resume_worker.py OUT_NPZ [CHECKPOINT_DIR|-] [NUM_STEPS]``. Trains, writes the final
parameters, ledger and history to ``OUT_NPZ`` (plain arrays, no pickle) and exits 0; on SIGINT the driver
saves a checkpoint and raises ``loops.Interrupted``, which this script turns into exit code 130 (as the
CLI does). Importing this file does nothing (pytest's doctest collection imports it).
"""

from __future__ import annotations

import sys

import jax
import jax.numpy as jnp
import numpy as np

NUM_STEPS = 3000
EVERY = 50


def make_problem():
  """A small MLP classification problem: (loss_fn, params0, data)."""
  rng = np.random.default_rng(0)
  n, d, h, k = 96, 12, 24, 3
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = (np.argmax(x[:, :k], axis=1)).astype(np.int32)
  params = {
    "w1": (rng.normal(size=(d, h)) / np.sqrt(d)).astype(np.float32),
    "b1": np.zeros(h, np.float32),
    "w2": (rng.normal(size=(h, k)) / np.sqrt(h)).astype(np.float32),
    "b2": np.zeros(k, np.float32),
  }

  def loss_fn(p, ex):
    xi, yi = ex
    hid = jnp.tanh(xi @ p["w1"] + p["b1"])
    logits = hid @ p["w2"] + p["b2"]
    return jax.nn.logsumexp(logits) - logits[yi]

  return loss_fn, params, (x, y)


def run(checkpoint_dir, num_steps=NUM_STEPS):
  from unlearn_jax import accounting
  from unlearn_jax import runtime as loops

  loss_fn, params, data = make_problem()
  return loops.train(
    loss_fn,
    params,
    data,
    num_steps=num_steps,
    key=jax.random.key(7),
    step_size=0.3,
    temperature=1e-4,
    clip_norm=1.0,
    weight_decay=1e-3,
    accounting=accounting.accountant([2.0, 4.0, 16.0]),
    record_steps=(0, 100, num_steps),
    checkpoint_dir=checkpoint_dir,
    checkpoint_every=EVERY if checkpoint_dir else None,
    steps_per_chunk=EVERY,
    history_stride=10,
    progress=False,
  )


def to_arrays(result) -> dict:
  out = {}
  for i, leaf in enumerate(jax.tree.leaves(result.params)):
    out[f"params_{i}"] = np.asarray(leaf)
  for name in result.ledger._fields:
    out[f"ledger_{name}"] = np.asarray(getattr(result.ledger, name))
  for i, leaf in enumerate(jax.tree.leaves(result.recorded)):
    out[f"recorded_{i}"] = np.asarray(leaf)
  for name, value in result.history.items():
    out[f"history_{name}"] = np.asarray(value)
  out["resumed_from"] = np.asarray(result.resumed_from)
  return out


def main(argv) -> int:
  from unlearn_jax import runtime as loops

  out = argv[1]
  checkpoint_dir = None if len(argv) < 3 or argv[2] == "-" else argv[2]
  num_steps = int(argv[3]) if len(argv) > 3 else NUM_STEPS
  try:
    result = run(checkpoint_dir, num_steps)
  except loops.Interrupted as e:
    print(f"interrupted at step {e.step} checkpoint {e.checkpoint}", flush=True)
    return 130
  np.savez(out, **to_arrays(result))
  print("done", flush=True)
  return 0


if __name__ == "__main__":
  sys.exit(main(sys.argv))
