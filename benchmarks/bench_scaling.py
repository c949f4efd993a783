"""Scaling of one SGLD step with the per-instance ledger over 1, 2, 4 devices.

Each device count runs in its own subprocess, because the number of devices is fixed when JAX starts.
On a CPU-only machine the "devices" are host-platform devices forced with
``XLA_FLAGS=--xla_force_host_platform_device_count=D``: they share the same CPU cores, so on a 2-core
machine little or no speed-up is expected -- this benchmark then measures the overhead of the sharded
path (partitioned program, all-reduce of ḡ), not a speed-up. On a machine with several accelerators
(``--platform gpu``) the devices are real and the same script measures real scaling.

The step is ``sgld.sgld(loss_fn, mode="full_batch", clip_norm=C, accounting=...)`` on an MLP, data and
ledger sharded along the example axis by ``unlearn_jax.distributed``; ``--steps`` steps run inside one
jitted ``lax.scan`` (no host round trip between steps), the carry constrained to the mesh's shardings
every step, as ``loops.train(mesh=...)`` does. Reported: median seconds per step over ``--repeats``
timed calls after a warm-up (compile) call, with and without the ledger, and the ratio to 1 device.

``--reduction-blocks R`` times the opt-in fixed reduction order (``sgld.sgld(reduction_blocks=R)``,
bitwise identical results on every device count dividing R/2; see docs/distributed.md).

Usage:
  python benchmarks/bench_scaling.py                       # CPU host devices 1, 2, 4
  python benchmarks/bench_scaling.py --reduction-blocks 8  # the same with the fixed reduction order
  python benchmarks/bench_scaling.py --devices 1 2 4 8 --platform gpu --n 65536 --hidden 1024
"""

from __future__ import annotations

import argparse
import json
import os
import statistics
import subprocess
import sys
import time


def child(args) -> dict:
  """Runs in a subprocess with the device count already fixed; returns the timings."""
  import jax
  import jax.numpy as jnp
  import numpy as np

  from unlearn_jax import accounting
  from unlearn_jax import algorithms as sgld
  from unlearn_jax.runtime import distributed

  num_devices = args.devices[0]
  mesh = distributed.make_mesh(num_devices)
  rng = np.random.default_rng(0)
  d, c = args.features, 10
  x = rng.normal(size=(args.n, d)).astype(np.float32)
  y = rng.integers(0, c, args.n).astype(np.int32)
  params = {
    "w1": (rng.normal(size=(d, args.hidden)) / np.sqrt(d)).astype(np.float32),
    "b1": np.zeros(args.hidden, np.float32),
    "w2": (rng.normal(size=(args.hidden, c)) / np.sqrt(args.hidden)).astype(np.float32),
    "b2": np.zeros(c, np.float32),
  }

  def loss_fn(p, ex):
    xi, yi = ex
    logits = jax.nn.relu(xi @ p["w1"] + p["b1"]) @ p["w2"] + p["b2"]
    return -jax.nn.log_softmax(logits)[yi]

  inputs = distributed.place_training_inputs(params, (x, y), mesh)
  n_padded = int(inputs.data_mask.shape[0])
  result = {
    "orders": list(accounting.accountant().orders),
    "devices": num_devices,
    "platform": jax.devices()[0].platform,
    "device_kind": jax.devices()[0].device_kind,
    "n": args.n,
    "n_padded": n_padded,
    "jax": jax.__version__,
    "reduction_blocks": args.reduction_blocks,
  }

  for with_ledger in (True, False):
    config = accounting.accountant() if with_ledger else None
    algo = sgld.sgld(
      loss_fn, mode="full_batch", clip_norm=1.0, accounting=config, reduction_blocks=args.reduction_blocks
    )
    state = distributed.shard_state(algo.init(inputs.params, n_padded), mesh)

    @jax.jit
    def run(state, data, mask, key):
      def body(s, t):
        s, info = algo.step(s, data, jax.random.fold_in(key, t), jnp.float32(0.1), jnp.float32(1e-4), data_mask=mask)
        return distributed.shard_state(s, mesh), info.loss

      return jax.lax.scan(body, state, jnp.arange(args.steps))

    key = jax.random.key(0)
    t0 = time.perf_counter()
    jax.block_until_ready(run(state, inputs.data, inputs.data_mask, key))
    compile_s = time.perf_counter() - t0
    times = []
    for r in range(args.repeats):
      t0 = time.perf_counter()
      out_state, _ = run(state, inputs.data, inputs.data_mask, jax.random.key(r + 1))
      jax.block_until_ready(out_state)
      times.append((time.perf_counter() - t0) / args.steps)
    tag = "ledger" if with_ledger else "no_ledger"
    result[f"{tag}_step_s"] = statistics.median(times)
    result[f"{tag}_compile_s"] = compile_s
    if with_ledger:
      result["ledger_spec"] = [None if s is None else str(s) for s in out_state.ledger.realized.sharding.spec]
      result["ledger_num_devices"] = len(out_state.ledger.realized.sharding.device_set)
  return result


def parent(args) -> None:
  # Rounds interleave the device counts (1, 2, 4, 1, 2, 4, ...) so that a change in the machine's load
  # during the run does not favour one device count; each count's figure is the median over rounds.
  by_devices: dict[int, list[dict]] = {}
  for _ in range(args.rounds):
    for num_devices in args.devices:
      env = dict(os.environ)
      if args.platform == "cpu":
        env["XLA_FLAGS"] = (env.get("XLA_FLAGS", "") + f" --xla_force_host_platform_device_count={num_devices}").strip()
        env["JAX_PLATFORMS"] = "cpu"
      cmd = [
        sys.executable,
        os.path.abspath(__file__),
        "--child",
        "--devices",
        str(num_devices),
        "--n",
        str(args.n),
        "--features",
        str(args.features),
        "--hidden",
        str(args.hidden),
        "--steps",
        str(args.steps),
        "--repeats",
        str(args.repeats),
      ]
      if args.reduction_blocks is not None:
        cmd += ["--reduction-blocks", str(args.reduction_blocks)]
      proc = subprocess.run(cmd, env=env, capture_output=True, text=True, check=False)
      if proc.returncode != 0:
        print(f"devices={num_devices}: FAILED\n{proc.stderr[-3000:]}")
        continue
      by_devices.setdefault(num_devices, []).append(json.loads(proc.stdout.strip().splitlines()[-1]))
  rows = []
  for num_devices in args.devices:
    runs = by_devices.get(num_devices)
    if not runs:
      continue
    row = dict(runs[0])
    for tag in ("ledger_step_s", "no_ledger_step_s"):
      row[tag] = statistics.median(r[tag] for r in runs)
      row[tag + "_rounds"] = [r[tag] for r in runs]
    rows.append(row)
  if not rows:
    return
  first = rows[0]
  kind = (
    "CPU host-platform devices (XLA_FLAGS=--xla_force_host_platform_device_count=D), sharing "
    f"{os.cpu_count()} CPU core(s) -- not separate processors"
    if first["platform"] == "cpu"
    else f"{first['device_kind']} accelerators"
  )
  print(f"jax {first['jax']}; {kind}")
  print(
    f"MLP {args.features}-{args.hidden}-10, n = {args.n}, full-batch SGLD step, clip 1, "
    f"{len(first.get('orders', [])) or 'default'} orders; {args.steps} steps per jitted scan, median "
    f"of {args.repeats} calls per round, median over {args.rounds} interleaved round(s); "
    f"reduction_blocks={args.reduction_blocks}"
  )
  if first["platform"] == "cpu":
    try:
      print(f"load average at the end: {os.getloadavg()[0]:.1f} (1 min) on {os.cpu_count()} cores")
    except OSError:  # pragma: no cover - not on every OS
      pass
  print(
    "| devices | n padded | step with ledger (ms) | x 1 device | step without ledger (ms) | "
    "x 1 device | ledger/no-ledger | ledger sharding |"
  )
  print("|---|---|---|---|---|---|---|---|")
  base_l, base_n = first["ledger_step_s"], first["no_ledger_step_s"]
  for r in rows:
    print(
      f"| {r['devices']} | {r['n_padded']} | {1e3 * r['ledger_step_s']:.2f} | "
      f"{base_l / r['ledger_step_s']:.2f}x speed | {1e3 * r['no_ledger_step_s']:.2f} | "
      f"{base_n / r['no_ledger_step_s']:.2f}x speed | {r['ledger_step_s'] / r['no_ledger_step_s']:.2f} | "
      f"P{tuple(r['ledger_spec'])} on {r['ledger_num_devices']} |"
    )
  if args.rounds > 1:
    print(
      "per-round seconds per step with ledger: "
      + "; ".join(
        f"{r['devices']} dev: " + ", ".join(f"{1e3 * t:.1f} ms" for t in r["ledger_step_s_rounds"]) for r in rows
      )
    )


def main(argv=None) -> None:
  p = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  p.add_argument("--devices", type=int, nargs="+", default=[1, 2, 4])
  p.add_argument(
    "--platform",
    choices=["cpu", "gpu", "tpu"],
    default="cpu",
    help="cpu forces host-platform devices; gpu/tpu use the real devices present",
  )
  p.add_argument("--n", type=int, default=4096, help="number of training examples")
  p.add_argument("--features", type=int, default=64)
  p.add_argument("--hidden", type=int, default=256)
  p.add_argument("--steps", type=int, default=10, help="steps per timed jitted call")
  p.add_argument("--repeats", type=int, default=7)
  p.add_argument("--rounds", type=int, default=2, help="interleaved rounds over the device counts")
  p.add_argument(
    "--reduction-blocks",
    type=int,
    default=None,
    help="sgld reduction_blocks R (fixed reduction order); n and every device count must "
    "divide it suitably (n a multiple of R, R a multiple of the device count)",
  )
  p.add_argument("--child", action="store_true", help=argparse.SUPPRESS)
  args = p.parse_args(argv)
  if args.reduction_blocks is not None:
    bad = [d for d in args.devices if args.reduction_blocks % d] + (
      [] if args.n % args.reduction_blocks == 0 else ["n"]
    )
    if args.reduction_blocks < 1 or bad:
      p.error(
        f"--reduction-blocks {args.reduction_blocks} must be a positive multiple of every device count "
        f"and divide --n {args.n}"
      )
  if args.child:
    print(json.dumps(child(args)))
  else:
    parent(args)


if __name__ == "__main__":
  main()
