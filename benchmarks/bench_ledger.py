"""Benchmark: the per-instance privacy ledger (issue 3).

1. One ledger update over N examples (default 60,000) and dp_accounting's 156 default orders: our
   vectorised Poisson costs (THEORY §2b) + ``ledger_update``, against dp_accounting computing the same
   per-example RDP one example at a time (timed on a subset of ``--dp-subset`` examples and scaled to
   N; stated in the output), with an equality check on that subset.
2. Training-step time with the ledger on and off, full-batch and Poisson modes, on a small MLP
   (64-128-10) over scikit-learn's bundled digits (1,400 training rows).

Usage: ``python benchmarks/bench_ledger.py [--n 60000] [--dp-subset 20] [--repeats 5]``.
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

jax.config.update("jax_enable_x64", True)

from unlearn_jax import accounting as acc  # noqa: E402
from unlearn_jax import sgld as sg  # noqa: E402


def _median_time(fn, repeats):
  fn()  # warm up (compile)
  times = []
  for _ in range(repeats):
    t = time.perf_counter()
    fn()
    times.append(time.perf_counter() - t)
  return statistics.median(times)


def bench_ledger_update(n, dp_subset, repeats, q=0.01, clip=1.0, eta=0.1, z_worst=1.0):
  """Costs in the usual DP-SGD regime: τ is set so the worst-case noise multiplier is ``z_worst``;
  clipped norms are uniform on [0.05 C, C], so per-example noise multipliers span [1, 20]."""
  from dp_accounting.rdp import rdp_privacy_accountant as rdp_lib

  logging.getLogger("absl").setLevel(logging.ERROR)
  rng = np.random.default_rng(0)
  norms = jnp.asarray(rng.uniform(0.05, 1.0, size=n) * clip)  # clipped norms
  b = q * n
  tau = eta * (z_worst * clip / b) ** 2 / 2
  cfg = acc.accountant()
  ledger = acc.ledger_init(n, cfg)

  @jax.jit
  def update(ledger, norms):
    costs = acc.poisson_costs(norms, q, b, cfg.orders, eta, tau)
    worst = acc.poisson_worst_case_cost(clip, q, b, cfg.orders, eta, tau)
    return acc.ledger_update(ledger, costs, worst, config=cfg)

  t_ours = _median_time(lambda: jax.block_until_ready(update(ledger, norms)), repeats)
  # dp_accounting, one example at a time, on a subset.
  z = b * math.sqrt(2 * tau / eta) / np.asarray(norms[:dp_subset])
  t0 = time.perf_counter()
  ref = np.stack([rdp_lib._compute_rdp_poisson_subsampled_gaussian(q, zz, cfg.orders) for zz in z])
  t_dp_subset = time.perf_counter() - t0
  t_dp = t_dp_subset / dp_subset * n
  ours = np.asarray(update(ledger, norms).realized[:dp_subset])
  fin = np.isfinite(ref)
  max_rel = float(np.max(np.abs(ours[fin] - ref[fin]) / np.abs(ref[fin])))
  return dict(
      n=n, t_ours=t_ours, t_dp_subset=t_dp_subset, dp_subset=dp_subset, t_dp=t_dp,
      per_example_ours=t_ours / n, per_example_dp=t_dp_subset / dp_subset, max_rel=max_rel,
      dp_inf=int((~fin).sum()),
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
        alg = sg.sgld(_mlp_loss, mode=mode, clip_norm=5.0, weight_decay=1e-3,
                      accounting=acc.accountant() if ledger_on else None, **kw)
        step = jax.jit(alg.step)
        state0 = alg.init(params, 1400)

        def run():
          st = state0
          for t in range(steps_per_repeat):
            st, _ = step(st, (x, y), jax.random.key(t), 0.5, 1e-5)
          jax.block_until_ready(st)

        times[ledger_on] = _median_time(run, repeats) / steps_per_repeat
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
  print(f"\n## Ledger update, {r['n']:,} examples x {len(acc.DEFAULT_ORDERS)} orders (q=0.01, z in [1, 20], float64)")
  print("| method | time | per example | ratio |")
  print("|---|---|---|---|")
  print(f"| unlearn_jax (jit, vectorised) | {r['t_ours']:.3f} s | {r['per_example_ours'] * 1e6:.1f} us | 1 |")
  print(
      f"| dp_accounting, one example at a time (timed on {r['dp_subset']} examples, scaled x{r['n'] // r['dp_subset']:,}) "
      f"| {r['t_dp']:.1f} s | {r['per_example_dp'] * 1e3:.2f} ms | {r['t_dp'] / r['t_ours']:.0f}x |"
  )
  print(f"max relative difference on the subset: {r['max_rel']:.2e} (dp_accounting inf entries: {r['dp_inf']})")
  if not args.skip_training:
    rows = bench_training_steps(args.repeats)
    print("\n## Training step, MLP 64-128-10 on digits (n = 1,400, float32), ledger off vs on (156 orders)")
    print("| mode | ledger off | ledger on | ratio |")
    print("|---|---|---|---|")
    for mode, off, on, ratio in rows:
      print(f"| {mode} | {off * 1e3:.2f} ms | {on * 1e3:.2f} ms | {ratio:.2f}x |")


if __name__ == "__main__":
  main()
