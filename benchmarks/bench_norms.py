"""Benchmark 1: per-example gradient norms for all n — ghost vs vmap vs one batch gradient (vs Opacus).

Prints one table of medians (ms) and ratios measured in the same run:

  python benchmarks/bench_norms.py                       # MLP 784-256-256-10 (n=256,1024), small CNN
  python benchmarks/bench_norms.py --models resnet18 --batch-sizes 16
  python benchmarks/bench_norms.py --tiny                # seconds; checks the script runs

Opacus (PyTorch) per-sample gradients (``GradSampleModule``, hooks mode) are measured on the same MLP/CNN
when ``torch`` and ``opacus`` import (``pip install -e '.[bench]'``); otherwise a note is printed.
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


def timeit(fn, *args, repeats: int) -> float:
  """Median wall time in ms after one warm-up (compile) call."""
  jax.block_until_ready(fn(*args))
  times = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn(*args))
    times.append(1e3 * (time.perf_counter() - t0))
  return statistics.median(times)


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


def time_opacus(name: str, tiny: bool, n: int, shape, repeats: int):
  """(torch batch-gradient ms, Opacus per-sample-gradient norms ms) or None."""
  import torch
  from opacus import GradSampleModule

  torch.manual_seed(0)
  net = torch_model(name, tiny)
  if net is None:
    return None
  x = torch.randn((n,) + ((shape[2], shape[0], shape[1]) if len(shape) == 3 else shape))
  y = torch.randint(0, 10, (n,))
  loss_fn = torch.nn.CrossEntropyLoss(reduction="sum")

  def batch_grad():
    net.zero_grad(set_to_none=True)
    loss_fn(net(x), y).backward()

  def med(f):
    f()
    ts = []
    for _ in range(repeats):
      t0 = time.perf_counter()
      f()
      ts.append(1e3 * (time.perf_counter() - t0))
    return statistics.median(ts)

  t_batch = med(batch_grad)
  gsm = GradSampleModule(net)

  def norms():
    gsm.zero_grad(set_to_none=True)
    for p in gsm.parameters():
      p.grad_sample = None
    loss_fn(gsm(x), y).backward()
    sq = sum(p.grad_sample.reshape(n, -1).pow(2).sum(1) for p in gsm.parameters())
    return sq.sqrt()

  t_norms = med(norms)
  gsm._close()
  return t_batch, t_norms


# ---------------------------------------------------------------------------------------- main


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--models", default="mlp,cnn", help="comma list of mlp, cnn (28x28x1), cnn32, resnet18")
  ap.add_argument("--batch-sizes", default="256,1024", help="comma list of n")
  ap.add_argument("--resnet-batch-sizes", default="16", help="n for resnet18 (vmap is memory hungry)")
  ap.add_argument("--repeats", type=int, default=5)
  ap.add_argument("--no-vmap", action="store_true", help="skip the vmap baseline")
  ap.add_argument("--no-opacus", action="store_true")
  ap.add_argument("--tiny", action="store_true", help="tiny shapes (a smoke test of the script)")
  ap.add_argument("--out", default=None, help="also write the table to this file")
  args = ap.parse_args(argv)
  if args.tiny:
    args.batch_sizes, args.resnet_batch_sizes, args.repeats = "8", "2", 2

  lines = []

  def emit(s=""):
    print(s, flush=True)
    lines.append(s)

  emit(f"jax {jax.__version__}; devices {jax.devices()}; python {sys.version.split()[0]}")
  why = None if not args.no_opacus else "disabled by --no-opacus"
  if why is None:
    why = opacus_available()
  if why is None:
    import opacus
    import torch

    emit(f"torch {torch.__version__} (threads {torch.get_num_threads()}); opacus {opacus.__version__}")
  else:
    emit(f"Opacus peer skipped: {why}")
  emit(
    f"repeats {args.repeats} (median ms, after one warm-up call); float32; "
    f"XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r} GLIBC_TUNABLES={os.environ.get('GLIBC_TUNABLES', '')!r}"
  )
  emit("load average at start: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
  head = (
    f"{'model':<9} {'n':>5} {'batch grad':>11} {'ghost':>9} {'vmap':>10} {'ghost/bg':>9} "
    f"{'vmap/bg':>8} {'vmap/ghost':>10} {'torch bg':>9} {'opacus':>9} {'opacus/tbg':>10} {'opacus/ghost':>12}"
  )
  emit(head)
  emit("-" * len(head))
  rng = np.random.default_rng(0)
  for name in args.models.split(","):
    model, shape = make_model(name, args.tiny)
    params = model.init_fn(jax.random.key(0), jnp.ones(shape))
    loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
    sizes = args.resnet_batch_sizes if name == "resnet18" else args.batch_sizes
    for n in [int(s) for s in sizes.split(",")]:
      batch = (jnp.asarray(rng.normal(size=(n,) + shape), jnp.float32), jnp.asarray(rng.integers(0, 10, n)))
      bg = jax.jit(jax.grad(lambda p, b: jnp.sum(jax.vmap(loss_fn, (None, 0))(p, b))))
      ghost = jax.jit(lambda p, b: pe.per_example_grad_norms(loss_fn, p, b, method="ghost"))
      vmap = jax.jit(lambda p, b: pe.per_example_grad_norms(loss_fn, p, b, method="vmap"))
      g_n, v_n = ghost(params, batch), None
      t_bg = timeit(bg, params, batch, repeats=args.repeats)
      t_gh = timeit(ghost, params, batch, repeats=args.repeats)
      t_vm = float("nan")
      if not args.no_vmap:
        t_vm = timeit(vmap, params, batch, repeats=args.repeats)
        v_n = vmap(params, batch)
        rel = float(jnp.max(jnp.abs(g_n - v_n) / jnp.maximum(v_n, 1e-30)))
        if rel > 1e-4:
          emit(f"WARNING: ghost and vmap norms differ by {rel:.2e} relative on {name} n={n}")
      t_tb = t_op = float("nan")
      if why is None:
        res = time_opacus(name, args.tiny, n, shape, args.repeats)
        if res is not None:
          t_tb, t_op = res
      emit(
        f"{name:<9} {n:>5} {t_bg:>11.2f} {t_gh:>9.2f} {t_vm:>10.2f} {t_gh / t_bg:>9.2f} "
        f"{t_vm / t_bg:>8.1f} {t_vm / t_gh:>10.1f} {t_tb:>9.2f} {t_op:>9.2f} {t_op / t_tb:>10.1f} "
        f"{t_op / t_gh:>12.1f}"
      )
  emit("bg = one batch gradient (jit(grad) of the summed loss); ghost/vmap = all n per-example norms;")
  emit("torch bg = PyTorch batch gradient; opacus = GradSampleModule per-sample grads then norms.")
  emit("load average at end: " + " ".join(f"{v:.2f}" for v in os.getloadavg()))
  if args.out:
    with open(args.out, "a") as f:
      f.write("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
