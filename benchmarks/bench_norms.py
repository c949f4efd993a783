"""Benchmark 1: per-example gradient norms and clipped gradient sums for all n, against a batch gradient
and against Opacus (per-sample gradients and ghost clipping).

Every contender of one (model, n) is timed once per round, in a rotating order, over ``--repeats`` rounds;
the table gives the median time of each and the median of its per-round ratio to the JAX batch gradient
measured in the same round (PyTorch contenders: to the PyTorch batch gradient). Contenders:

- ``bg``: one batch gradient (``jit(grad)`` of the summed loss);
- ``ghost`` / ``vmap``: the n per-example norms (ghost norms; ``vmap(grad)``);
- ``clipped``: Σ_i clip_C(∇ℓ_i) with the norms — the training quantity — from one ghost pass
  (book-keeping, ``per_example.clipped_grad_sum``); ``two-pass``: the same by norms then a re-weighted
  backward pass (the method before book-keeping);
- ``torch bg``, ``opacus``: PyTorch batch gradient, Opacus ``GradSampleModule`` per-sample gradients then
  norms; ``opacus ghost``: Opacus ghost clipping (``GradSampleModuleFastGradientClipping``: a backward pass
  for the norms, then a second one of the re-weighted loss), the same clipped sum as ``clipped``.

PyTorch runs with ``OMP_WAIT_POLICY=PASSIVE`` (set before it is imported: its default spin-wait made a
2-thread batch gradient 6-8x slower under load) and ``--torch-threads`` threads (default 2), both printed.

  python benchmarks/bench_norms.py                       # MLP 784-256-256-10 (n=256,1024), small CNN
  python benchmarks/bench_norms.py --models resnet18 --batch-sizes 16
  python benchmarks/bench_norms.py --tiny                # seconds; checks the script runs

The PyTorch peers are measured when ``torch`` and ``opacus`` import (``pip install -e '.[bench]'``);
otherwise a note is printed.
"""

from __future__ import annotations

import argparse
import math
import os
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import models
from unlearn_jax import per_example as pe
from unlearn_jax.per_example import api


def rounds(contenders: dict, repeats: int) -> dict:
  """Median seconds of each contender, timed once per round in a rotating order (after one warm-up call)."""
  for fn in contenders.values():
    fn()
  names = list(contenders)
  times = {k: [] for k in names}
  for r in range(repeats):
    for k in names[r % len(names) :] + names[: r % len(names)]:
      t0 = time.perf_counter()
      contenders[k]()
      times[k].append(time.perf_counter() - t0)
  return times


def make_model(name: str, tiny: bool):
  if name == "mlp":
    width = 16 if tiny else 256
    model = models.mlp((width, width), 10)
    shape = (12,) if tiny else (784,)
  elif name == "cnn":
    model = models.small_cnn(10, (4, 8) if tiny else (16, 32))
    shape = (8, 8, 1) if tiny else (28, 28, 1)
  elif name == "cnn32":
    model = models.small_cnn(10, (4, 8) if tiny else (16, 32))
    shape = (8, 8, 3) if tiny else (32, 32, 3)
  elif name == "resnet18":
    model = models.resnet18(10)
    shape = (8, 8, 3) if tiny else (32, 32, 3)
  else:
    raise ValueError(f"--models entries must be mlp, cnn, cnn32 or resnet18, got {name!r}")
  return model, shape


# ---------------------------------------------------------------------------------------- Opacus peer


def opacus_available() -> str | None:
  try:
    import opacus  # noqa: F401
    import torch  # noqa: F401
  except Exception as e:  # noqa: BLE001
    return f"{type(e).__name__}: {e}"
  return None


def torch_model(name: str, tiny: bool):
  import torch.nn as tnn

  if name == "mlp":
    width = 16 if tiny else 256
    d = 12 if tiny else 784
    return tnn.Sequential(tnn.Linear(d, width), tnn.ReLU(), tnn.Linear(width, width), tnn.ReLU(), tnn.Linear(width, 10))
  if name in ("cnn", "cnn32"):
    c1, c2 = (4, 8) if tiny else (16, 32)
    cin = 1 if name == "cnn" else 3
    side = 8 if tiny else (28 if name == "cnn" else 32)
    out_side = math.ceil(math.ceil(side / 2) / 2)
    return tnn.Sequential(
      tnn.Conv2d(cin, c1, 3, padding=1),
      tnn.ReLU(),
      tnn.MaxPool2d(2, ceil_mode=True),
      tnn.Conv2d(c1, c2, 3, padding=1),
      tnn.ReLU(),
      tnn.MaxPool2d(2, ceil_mode=True),
      tnn.Flatten(),
      tnn.Linear(c2 * out_side * out_side, 10),
    )
  return None


def torch_contenders(name: str, tiny: bool, n: int, shape, clip: float) -> dict:
  """PyTorch batch gradient, Opacus per-sample norms and Opacus ghost clipping, as callables (or {})."""
  import torch
  from opacus import GradSampleModule
  from opacus.grad_sample import GradSampleModuleFastGradientClipping

  torch.manual_seed(0)
  net = torch_model(name, tiny)
  if net is None:
    return {}
  x = torch.randn((n,) + ((shape[2], shape[0], shape[1]) if len(shape) == 3 else shape))
  y = torch.randint(0, 10, (n,))
  per_sample = torch.nn.CrossEntropyLoss(reduction="none")

  def batch_grad():
    net.zero_grad(set_to_none=True)
    per_sample(net(x), y).sum().backward()

  gsm = GradSampleModule(torch_model(name, tiny))

  def norms():
    gsm.zero_grad(set_to_none=True)
    for p in gsm.parameters():
      p.grad_sample = None
    per_sample(gsm(x), y).sum().backward()
    return sum(p.grad_sample.reshape(n, -1).pow(2).sum(1) for p in gsm.parameters()).sqrt()

  ghost = GradSampleModuleFastGradientClipping(
    torch_model(name, tiny), max_grad_norm=clip, loss_reduction="sum", use_ghost_clipping=True
  )

  def ghost_clipped():  # what DPTensorFastGradientClipping.backward does, without the optimizer
    ghost.zero_grad(set_to_none=True)
    losses = per_sample(ghost(x), y)
    losses.sum().backward(retain_graph=True)
    coeff = ghost.get_clipping_coef()
    ghost.zero_grad(set_to_none=True)
    ghost.disable_hooks()
    (coeff * losses).sum().backward()
    ghost.enable_hooks()

  return {"torch bg": batch_grad, "opacus": norms, "opacus ghost": ghost_clipped}


# ---------------------------------------------------------------------------------------- main


def jax_contenders(loss_fn, params, batch, clip: float, with_vmap: bool) -> dict:
  bg = jax.jit(jax.grad(lambda p, b: jnp.sum(jax.vmap(loss_fn, (None, 0))(p, b))))
  ghost = jax.jit(lambda p, b: pe.per_example_grad_norms(loss_fn, p, b, method="ghost"))
  clipped = jax.jit(lambda p, b: pe.clipped_grad_sum(loss_fn, p, b, clip))

  def two_pass(p, b):
    norms = api._safe_sqrt(api._ghost_sq_norms_core(loss_fn, p, b))
    return api._weighted_sum_core(loss_fn, p, b, jax.lax.stop_gradient(api.clip_factors(norms, clip))), norms

  two = jax.jit(two_pass)
  out = {
    "bg": lambda: jax.block_until_ready(bg(params, batch)),
    "ghost": lambda: jax.block_until_ready(ghost(params, batch)),
    "clipped": lambda: jax.block_until_ready(clipped(params, batch)),
    "two-pass": lambda: jax.block_until_ready(two(params, batch)),
  }
  if with_vmap:
    vmap = jax.jit(lambda p, b: pe.per_example_grad_norms(loss_fn, p, b, method="vmap"))
    out["vmap"] = lambda: jax.block_until_ready(vmap(params, batch))
  return out


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--models", default="mlp,cnn", help="comma list of mlp, cnn (28x28x1), cnn32, resnet18")
  ap.add_argument("--batch-sizes", default="256,1024", help="comma list of n")
  ap.add_argument("--resnet-batch-sizes", default="16", help="n for resnet18 (vmap is memory hungry)")
  ap.add_argument("--repeats", type=int, default=7, help="rounds")
  ap.add_argument("--clip", type=float, default=1.0)
  ap.add_argument("--torch-threads", type=int, default=2)
  ap.add_argument("--no-vmap", action="store_true", help="skip the vmap baseline")
  ap.add_argument("--no-opacus", action="store_true")
  ap.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test of the script)")
  ap.add_argument("--out", default=None, help="also write the table to this file")
  args = ap.parse_args(argv)
  if args.tiny:
    args.batch_sizes, args.resnet_batch_sizes, args.repeats = "8", "2", 2
  os.environ.setdefault("OMP_WAIT_POLICY", "PASSIVE")  # before torch is imported
  lines = []

  def emit(s=""):
    print(s, flush=True)
    lines.append(s)

  emit(f"jax {jax.__version__}; devices {jax.devices()}; python {sys.version.split()[0]}")
  why = "disabled by --no-opacus" if args.no_opacus else opacus_available()
  if why is None:
    import opacus
    import torch

    torch.set_num_threads(args.torch_threads)
    emit(
      f"torch {torch.__version__} (threads {torch.get_num_threads()}, OMP_WAIT_POLICY="
      f"{os.environ.get('OMP_WAIT_POLICY')}); opacus {opacus.__version__}"
    )
  else:
    emit(f"PyTorch peers skipped: {why}")
  emit(
    f"{args.repeats} rounds, rotating order (median ms; ratios: median of per-round ratios); float32; "
    f"clip {args.clip}; XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} "
    f"GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
  )
  emit("load average at start: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
  cols = ["bg", "ghost", "vmap", "clipped", "two-pass", "torch bg", "opacus", "opacus ghost"]
  emit(
    "| model | n | " + " | ".join(f"{c} ms" for c in cols) + " | ghost/bg | clipped/bg | two-pass/bg | vmap/ghost "
    "| opacus/ghost | opacus ghost/clipped |"
  )
  emit("|---" * (len(cols) + 8) + "|")
  rng = np.random.default_rng(0)
  for name in args.models.split(","):
    model, shape = make_model(name, args.tiny)
    params = model.init_fn(jax.random.key(0), jnp.ones(shape))
    loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
    sizes = args.resnet_batch_sizes if name == "resnet18" else args.batch_sizes
    for n in [int(s) for s in sizes.split(",")]:
      batch = (jnp.asarray(rng.normal(size=(n,) + shape), jnp.float32), jnp.asarray(rng.integers(0, 10, n)))
      runs = jax_contenders(loss_fn, params, batch, args.clip, not args.no_vmap)
      if why is None:
        runs.update(torch_contenders(name, args.tiny, n, shape, args.clip))
      if "vmap" in runs:
        g = pe.per_example_grad_norms(loss_fn, params, batch, method="ghost")
        v = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
        rel = float(jnp.max(jnp.abs(g - v) / jnp.maximum(v, 1e-30)))
        if rel > 1e-4:
          emit(f"WARNING: ghost and vmap norms differ by {rel:.2e} relative on {name} n={n}")
      times = rounds(runs, args.repeats)
      med = {k: 1e3 * statistics.median(times[k]) if k in times else math.nan for k in cols}

      def ratio(a, b):
        if a not in times or b not in times:
          return math.nan
        return statistics.median(x / y for x, y in zip(times[a], times[b]))

      rs = [
        ratio("ghost", "bg"),
        ratio("clipped", "bg"),
        ratio("two-pass", "bg"),
        ratio("vmap", "ghost"),
        ratio("opacus", "ghost"),
        ratio("opacus ghost", "clipped"),
      ]
      emit(
        f"| {name} | {n} | "
        + " | ".join(f"{med[c]:.2f}" for c in cols)
        + " | "
        + " | ".join(f"{r:.2f}" for r in rs)
        + " |"
      )
  emit("bg = one batch gradient; ghost / vmap = all n per-example norms; clipped = clipped sum with the norms from")
  emit("one ghost pass; two-pass = norms, then a re-weighted backward; opacus ghost = Opacus ghost clipping.")
  emit("load average at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
  if args.out:
    with open(args.out, "a") as f:
      f.write("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
