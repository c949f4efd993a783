"""Peak memory of the passes over a whole data set: does it stay flat as n grows (chunked all-n passes)?

For each n, a fresh process puts n CIFAR-shaped synthetic images (32x32x3) on the device and runs what a
study does over all of them with a ResNet-18: a few shuffled minibatch SGLD steps with the ledger, the
all-n ghost-norm pass in chunks of ``per_example.api.norm_pass_rows`` rows (64 rows for the ResNet-18, 256
for stages 16-32-64-128) inside ``jax.jit``, as the Poisson ledger's step runs it (``--eager``: called
eagerly, as the study runs it), and the accuracy / loss over all n (eagerly, 2,048 rows at a time). It
prints the process's peak resident memory (host) and, on an accelerator, the device's peak bytes in use;
the parent prints the ratios between the sizes.

  python benchmarks/bench_memory.py                      # n = 2048, 8192; ResNet-18 stages 16-32-64-128 (CPU)
  python benchmarks/bench_memory.py --eager              # the same, the all-n pass called eagerly
  python benchmarks/bench_memory.py --rows 128           # the all-n pass in jit a loop at both sizes (CPU)
  python benchmarks/bench_memory.py --widths 64,128,256,512 --n 8192 32768   # the real ResNet-18 (accelerator)
  python benchmarks/bench_memory.py --compiled --n 1024 4096   # XLA temporaries: ghost pass vs batch gradient

``--compiled`` prints, for the MLP 784-256-256-10 and the small CNN, the temporary buffers XLA allocates for
one batch gradient, the all-n ghost norms, the book-keeping clipped sum with its norms and vmap norms
(``memory_analysis()`` of the compiled programs: deterministic for one XLA version and device, no timing).

The data themselves grow with n (8192 x 32 x 32 x 3 float32 = 100 MB); everything else should not. An
eager pass runs one compiled program on one chunk, once per chunk (``per_example.chunking``): the memory
of one chunk at every n. Inside ``jax.jit`` on an accelerator the chunks are a loop (the memory of one
chunk); on CPU a convolutional pass of at most 8 chunks is unrolled (``unlearn_jax._loops``: XLA:CPU runs
convolutions inside loops several times slower) and its memory is then that of all its chunks; a longer
pass keeps its loop (bounded memory, slow).
"""

from __future__ import annotations

import argparse
import json
import os
import resource
import subprocess
import sys
import time


def child(n: int, widths: tuple[int, ...], steps: int, rows: int | None = None, eager: bool = False) -> dict:
  import jax
  import jax.numpy as jnp
  import numpy as np

  import unlearn_jax as uj
  from unlearn_jax import accounting, evaluate, models, per_example

  model = models.resnet18(10, widths=widths)
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  params = model.init_fn(jax.random.key(0), jnp.ones((32, 32, 3)))
  rng = np.random.default_rng(0)
  x = jax.device_put(rng.normal(size=(n, 32, 32, 3)).astype(np.float32))
  y = jax.device_put(rng.integers(0, 10, n).astype(np.int32))
  t0 = time.perf_counter()
  alg = uj.sgld(loss_fn, mode="shuffled", batch_size=64, clip_norm=1.0, accounting=accounting.accountant())
  state = alg.init(params, n, key=jax.random.key(1))
  step = jax.jit(alg.step, donate_argnums=(0,))
  for t in range(steps):
    state, _ = step(state, (x, y), jax.random.fold_in(jax.random.key(2), t), 0.05, 1e-6)
  rows = rows or per_example.api.norm_pass_rows(loss_fn, params, (x, y))
  all_n = lambda p: per_example.per_example_grad_norms(loss_fn, p, (x, y), chunk_size=rows)
  norms = (all_n if eager else jax.jit(all_n))(state.params)  # eager: one compiled call per chunk
  acc, loss = evaluate.accuracy_and_loss(model.apply_fn, state.params, x, y)
  jax.block_until_ready((norms, acc, loss))
  out = {
    "n": n,
    "host_peak_mib": resource.getrusage(resource.RUSAGE_SELF).ru_maxrss / 1024,
    "seconds": time.perf_counter() - t0,
    "device": str(jax.devices()[0].device_kind),
    "rows_per_chunk": rows,
    "eager": eager,
  }
  stats = jax.devices()[0].memory_stats() or {}
  if "peak_bytes_in_use" in stats:
    out["device_peak_mib"] = stats["peak_bytes_in_use"] / 2**20
  return out


def compiled_temps(n: int) -> list[dict]:
  """XLA temporary bytes of the compiled per-example programs on n rows, per model."""
  import jax
  import jax.numpy as jnp

  from unlearn_jax import models, per_example

  rows = []
  for name, model, shape in [
    ("MLP 784-256-256-10", models.mlp((256, 256), 10), (784,)),
    ("small CNN", models.small_cnn(10, (16, 32)), (28, 28, 1)),
  ]:
    loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
    params = model.init_fn(jax.random.key(0), jnp.ones(shape))
    batch = (jnp.ones((n, *shape)), jnp.zeros((n,), jnp.int32))

    def batch_grad(p, b, loss_fn=loss_fn):
      return jax.grad(lambda p: jnp.sum(jax.vmap(lambda x, y: loss_fn(p, (x, y)))(*b)))(p)

    programs = {
      "batch grad": batch_grad,
      "ghost norms": lambda p, b, f=loss_fn: per_example.per_example_grad_norms(f, p, b, method="ghost"),
      "clipped sum + norms": lambda p, b, f=loss_fn: per_example.clipped_grad_sum(f, p, b, clip_norm=1.0),
      "vmap norms": lambda p, b, f=loss_fn: per_example.per_example_grad_norms(f, p, b, method="vmap"),
    }
    mib = {}
    for label, fn in programs.items():
      analysis = jax.jit(fn).lower(params, batch).compile().memory_analysis()
      mib[label] = float("nan") if analysis is None else analysis.temp_size_in_bytes / 2**20
    rows.append({"model": name, "n": n, **mib})
  return rows


def print_compiled(ns: list[int]) -> None:
  rows = [r for n in ns for r in compiled_temps(n)]
  labels = ["batch grad", "ghost norms", "clipped sum + norms", "vmap norms"]
  print("XLA temporary MiB of one compiled program (memory_analysis; ratios to the batch gradient)")
  print("| model | n | " + " | ".join(labels) + " | ghost / bg | clipped / bg |")
  print("|---" * (len(labels) + 4) + "|")
  for r in rows:
    cells = " | ".join(f"{r[k]:.1f}" for k in labels)
    ghost, clipped = r["ghost norms"] / r["batch grad"], r["clipped sum + norms"] / r["batch grad"]
    print(f"| {r['model']} | {r['n']:,} | {cells} | {ghost:.2f} | {clipped:.2f} |")


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, nargs="+", default=[2048, 8192])
  ap.add_argument("--widths", default="16,32,64,128", help="the four stage widths of the ResNet-18")
  ap.add_argument("--steps", type=int, default=3)
  ap.add_argument("--compiled", action="store_true", help="XLA temporaries of the per-example programs")
  ap.add_argument(
    "--rows",
    type=int,
    default=None,
    help="rows per chunk of the all-n ghost norms (default: per_example.api.norm_pass_rows); on CPU, rows "
    "giving more than 8 chunks at every n keep the pass a loop at every n, so the sizes run the same program",
  )
  ap.add_argument(
    "--eager",
    action="store_true",
    help="call the all-n ghost norms eagerly, as the study does (one compiled call per chunk from the host) "
    "instead of inside jax.jit, as the Poisson ledger's step does",
  )
  ap.add_argument("--child", type=int, default=None, help=argparse.SUPPRESS)
  args = ap.parse_args(argv)
  if args.compiled:
    print_compiled(args.n)
    return 0
  widths = tuple(int(w) for w in args.widths.split(","))
  if args.child is not None:
    print(json.dumps(child(args.child, widths, args.steps, args.rows, args.eager)))
    return 0
  rows = []
  for n in args.n:
    cmd = [sys.executable, __file__, "--child", str(n), "--widths", args.widths, "--steps", str(args.steps)]
    cmd += ([] if args.rows is None else ["--rows", str(args.rows)]) + (["--eager"] if args.eager else [])
    out = subprocess.run(cmd, capture_output=True, text=True, env=dict(os.environ), check=True)
    rows.append(json.loads(out.stdout.strip().splitlines()[-1]))
  print(f"ResNet-18 stages {list(widths)}, {args.steps} shuffled SGLD steps (B = 64, ledger) + all-n ghost norms")
  print(
    f"(chunks of {rows[0]['rows_per_chunk']} rows, {'eager' if args.eager else 'in jax.jit'}) + accuracy and loss "
    "over all n (eager); one fresh process per n; "
    f"device {rows[0]['device']}"
  )
  print("| n | host peak MiB | device peak MiB | seconds |")
  print("|---|---|---|---|")
  for r in rows:
    dev = f"{r['device_peak_mib']:.0f}" if "device_peak_mib" in r else "-"
    print(f"| {r['n']:,} | {r['host_peak_mib']:.0f} | {dev} | {r['seconds']:.1f} |")
  first, last = rows[0], rows[-1]
  key = "device_peak_mib" if "device_peak_mib" in first else "host_peak_mib"
  print(f"peak memory n = {last['n']:,} / n = {first['n']:,}: {last[key] / first[key]:.2f}x ({key})")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
