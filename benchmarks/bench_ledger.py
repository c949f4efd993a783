"""Benchmark: the per-instance privacy ledger.

1. One ledger update over N examples (default 60,000) and dp_accounting's 156 default orders: our
   vectorised Poisson costs (THEORY §2b) + ``ledger_update``, against dp_accounting computing the same
   per-example RDP one example at a time (timed on a subset of ``--dp-subset`` examples and scaled to
   N; stated in the output), with an equality check on that subset.
2. Training-step time with the ledger on and off, full-batch and Poisson modes, on a small MLP
   (64-128-10) over scikit-learn's bundled digits (1,400 training rows).

Usage: ``python benchmarks/bench_ledger.py [--n 60000] [--dp-subset 20] [--repeats 5] [--skip-training]``.
"""

from __future__ import annotations

import argparse
import logging
import math
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import accounting as acc
from unlearn_jax import algorithms as sg


def _median_time(fn, repeats):
  """(compile + first run, median of ``repeats`` later runs), in seconds."""
  t = time.perf_counter()
  fn()  # warm up (compile)
  first = time.perf_counter() - t
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return first, statistics.median(times)


def bench_ledger_update(n, dp_subset, repeats, q=0.01, clip=1.0, eta=0.1, z_worst=1.0):
  """Costs in the usual DP-SGD regime: τ is set so the worst-case noise multiplier is ``z_worst``;
  clipped norms are uniform on [0.05 C, C], so per-example noise multipliers span [1, 20].

  Times one jitted ``poisson_costs`` + ``ledger_update`` over all n examples and the 156 default
  orders, in float64 and float32; and, as separate honest numbers, the integer orders alone (66 of
  the 156). dp_accounting computes the same per-example RDP one example at a time on the first
  ``dp_subset`` examples (scaled to n), and both results are compared there.
  """
  from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

  logging.getLogger("absl").setLevel(logging.ERROR)
  rng = np.random.default_rng(0)
  norms64 = rng.uniform(0.05, 1.0, size=n) * clip  # clipped norms
  b = q * n
  tau = eta * (z_worst * clip / b) ** 2 / 2
  rows = []
  ours = {}
  int_orders = tuple(o for o in acc.DEFAULT_ORDERS if float(o).is_integer())
  for label, x64 in (("float64", True), ("float32", False)):
    with jax.enable_x64(x64):
      dtype = jnp.float64 if x64 else jnp.float32
      norms = jnp.asarray(norms64, dtype)
      for orders_label, orders in (
        (f"{len(acc.DEFAULT_ORDERS)} default orders", acc.DEFAULT_ORDERS),
        (f"{len(int_orders)} integer orders only", int_orders),
      ):
        cfg = acc.accountant(orders)
        ledger = acc.ledger_init(n, cfg, dtype=dtype)

        @jax.jit
        def update(ledger, norms, cfg=cfg):
          costs = acc.poisson_costs(norms, q, b, orders=cfg.orders, step_size=eta, temperature=tau)
          worst = acc.poisson_worst_case_cost(clip, q, b, orders=cfg.orders, step_size=eta, temperature=tau)
          return acc.ledger_update(ledger, costs, worst, config=cfg)

        first, med = _median_time(lambda: jax.block_until_ready(update(ledger, norms)), repeats)
        rows.append((label, orders_label, first, med))
        if len(orders) == len(acc.DEFAULT_ORDERS):
          ours[label] = np.asarray(update(ledger, norms).realized[:dp_subset], np.float64)
  # dp_accounting, one example at a time, on a subset.
  z = b * math.sqrt(2 * tau / eta) / norms64[:dp_subset]
  t0 = time.perf_counter()
  ref = np.stack([rdp_lib._compute_rdp_poisson_subsampled_gaussian(q, zz, acc.DEFAULT_ORDERS) for zz in z])
  t_dp_subset = time.perf_counter() - t0
  fin = np.isfinite(ref)
  max_rel = {k: float(np.max(np.abs(v[fin] - ref[fin]) / np.abs(ref[fin]))) for k, v in ours.items()}
  return dict(
    n=n,
    rows=rows,
    t_dp_subset=t_dp_subset,
    dp_subset=dp_subset,
    per_example_dp=t_dp_subset / dp_subset,
    max_rel=max_rel,
    dp_inf=int((~fin).sum()),
    z_range=(float(z.min()), float(z.max())),
  )


def _mlp_loss(params, ex):
  x, y = ex
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  logits = h @ params["w2"] + params["b2"]
  return jax.nn.logsumexp(logits) - logits[y]


def bench_training_steps(repeats, steps_per_repeat=10):
  from sklearn.datasets import load_digits

  x, y = load_digits(return_X_y=True)
  x = jnp.asarray(x[:1400] / 16.0, jnp.float32)
  y = jnp.asarray(y[:1400])
  key = jax.random.key(0)
  k1, k2 = jax.random.split(key)
  params = {
    "w1": jax.random.normal(k1, (64, 128), jnp.float32) / 8.0,
    "b1": jnp.zeros(128, jnp.float32),
    "w2": jax.random.normal(k2, (128, 10), jnp.float32) / math.sqrt(128.0),
    "b2": jnp.zeros(10, jnp.float32),
  }
  rows = []
  for mode, kw in (("full_batch", {}), ("poisson", dict(sampling_rate=0.05))):
    times = {}
    for ledger_on in (False, True):
      with jax.enable_x64(False):
        alg = sg.sgld(
          _mlp_loss,
          mode=mode,
          clip_norm=5.0,
          weight_decay=1e-3,
          accounting=acc.accountant() if ledger_on else None,
          **kw,
        )
        step = jax.jit(alg.step)
        state0 = alg.init(params, 1400)

        def run():
          st = state0
          for t in range(steps_per_repeat):
            st, _ = step(st, (x, y), jax.random.key(t), 0.5, 1e-5)
          jax.block_until_ready(st)

        times[ledger_on] = _median_time(run, repeats)[1] / steps_per_repeat
    rows.append((mode, times[False], times[True], times[True] / times[False]))
  return rows


def main():
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n", type=int, default=60_000)
  parser.add_argument("--dp-subset", type=int, default=20)
  parser.add_argument("--repeats", type=int, default=5)
  parser.add_argument("--skip-training", action="store_true")
  args = parser.parse_args()
  print(f"jax {jax.__version__}, devices {jax.devices()}")
  r = bench_ledger_update(args.n, args.dp_subset, args.repeats)
  dp_per = r["per_example_dp"]
  print(f"\n## Ledger update (poisson_costs + ledger_update), {r['n']:,} examples, q=0.01, per-example z in [1, 20]")
  print("| ours | orders | compile+first | median update | per example | dp_accounting per example / ours |")
  print("|---|---|---|---|---|---|")
  for label, orders_label, first, med in r["rows"]:
    print(
      f"| {label} | {orders_label} | {first:.1f} s | {med:.3f} s | {med / r['n'] * 1e6:.1f} us "
      f"| {dp_per / (med / r['n']):,.0f}x |"
    )
  print(
    f"dp_accounting (_compute_rdp_poisson_subsampled_gaussian, 156 orders), one example at a time: "
    f"{dp_per * 1e3:.2f} ms per example (timed on {r['dp_subset']} examples, z in "
    f"[{r['z_range'][0]:.2f}, {r['z_range'][1]:.2f}]; "
    f"x{r['n'] / r['dp_subset']:,.0f} = {dp_per * r['n']:.0f} s for all n)"
  )
  for k, v in r["max_rel"].items():
    print(
      f"max relative difference to dp_accounting on the subset, {k}: {v:.2e} (dp_accounting inf entries: {r['dp_inf']})"
    )
  if not args.skip_training:
    rows = bench_training_steps(args.repeats)
    print("\n## Training step, MLP 64-128-10 on digits (n = 1,400, float32), ledger off vs on (156 orders)")
    print("| mode | ledger off | ledger on | ratio |")
    print("|---|---|---|---|")
    for mode, off, on, ratio in rows:
      print(f"| {mode} | {off * 1e3:.2f} ms | {on * 1e3:.2f} ms | {ratio:.2f}x |")


if __name__ == "__main__":
  main()
