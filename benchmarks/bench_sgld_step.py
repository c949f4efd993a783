"""Benchmark 3: one project SGLD step vs blackjax's ``sgld`` step; training with the ledger on vs off.

Same model (MLP 784-256-256-10), same data, full batch. Conventions matched as THEORY §0 says: blackjax
gets the log-density −n·mean loss, step size η/n and temperature τ·n, which takes exactly the project's
step θ ← θ − η ∇L + sqrt(2ητ) ξ (checked below at τ = 0, where both are deterministic).

  python benchmarks/bench_sgld_step.py                 # n = 1024
  python benchmarks/bench_sgld_step.py --tiny
"""

from __future__ import annotations

import argparse
import statistics
import sys
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import models
from unlearn_jax import sgld as sgld_lib
from unlearn_jax.accounting import accountant


def median_ms(fn, repeats):
  jax.block_until_ready(fn())
  ts = []
  for _ in range(repeats):
    t0 = time.perf_counter()
    jax.block_until_ready(fn())
    ts.append(1e3 * (time.perf_counter() - t0))
  return statistics.median(ts)


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch-size", type=int, default=1024, help="n (full batch)")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--steps", type=int, default=20, help="steps per timed training run (lax.scan)")
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--out", default=None)
  args = ap.parse_args(argv)
  width, d = (16, 12) if args.tiny else (256, 784)
  n = 16 if args.tiny else args.batch_size
  reps = 2 if args.tiny else args.repeats
  lines = []

  def emit(s=""):
    print(s, flush=True)
    lines.append(s)

  emit(f"jax {jax.__version__}; devices {jax.devices()}; python {sys.version.split()[0]}")
  model = models.mlp((width, width), 10)
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  params = model.init_fn(jax.random.key(0), jnp.ones(d))
  rng = np.random.default_rng(0)
  data = (jnp.asarray(rng.normal(size=(n, d)), jnp.float32), jnp.asarray(rng.integers(0, 10, n)))
  eta, tau = 0.1, 1e-4
  key = jax.random.key(1)

  plain = sgld_lib.sgld(loss_fn)
  st0 = plain.init(params, n)
  step_plain = jax.jit(plain.step)
  t_proj = median_ms(lambda: step_plain(st0, data, key, eta, tau)[0].params, reps)

  rows = [("project sgld step (no clip, no ledger)", t_proj)]
  try:
    import blackjax
    emit(f"blackjax {blackjax.__version__}")

    def logprior_fn(p):
      return 0.0

    def loglik_fn(p, ex):
      return -loss_fn(p, ex)

    grad_est = blackjax.sgmcmc.gradients.grad_estimator(logprior_fn, loglik_fn, n)
    bj = blackjax.sgld(grad_est)
    bj_step = jax.jit(lambda p, k, s, t: bj.step(k, p, data, s, t))
    t_bj = median_ms(lambda: bj_step(params, key, eta / n, tau * n), reps)
    rows.append(("blackjax sgld step (eta/n, tau*n)", t_bj))
    # Convention check at temperature 0: the two steps coincide.
    a = step_plain(st0, data, key, eta, 0.0)[0].params
    b = bj_step(params, key, eta / n, 0.0)
    diff = max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    emit(f"tau=0 check: max |project - blackjax| = {diff:.2e}")
  except Exception as e:  # noqa: BLE001
    emit(f"blackjax peer skipped: {type(e).__name__}: {e}")
    t_bj = float("nan")

  # Training with the full-batch ledger on vs off (clipped, lax.scan over steps).
  def trainer(alg):
    def run(state):
      def body(s, t):
        s, _ = alg.step(s, data, jax.random.fold_in(key, t), eta, tau)
        return s, None
      s, _ = jax.lax.scan(body, state, jnp.arange(args.steps))
      return s.params
    return jax.jit(run)

  off = sgld_lib.sgld(loss_fn, clip_norm=1.0)
  on = sgld_lib.sgld(loss_fn, clip_norm=1.0, accounting=accountant())
  run_on = trainer(on)
  s_on = on.init(params, n)
  t_on = median_ms(lambda: run_on(s_on), reps) / args.steps
  run_off = trainer(off)
  s_off = off.init(params, n)
  t_off = median_ms(lambda: run_off(s_off), reps) / args.steps
  rows += [("train step, clip, ledger off (per step)", t_off), ("train step, clip, ledger on (per step)", t_on)]
  emit(f"MLP {d}-{width}-{width}-10, n = {n}, full batch, float32, median of {reps}")
  for name, t in rows:
    emit(f"{name:<42} {t:>9.2f} ms")
  emit(f"project / blackjax step: {t_proj / t_bj:.2f}x;  ledger on / off: {t_on / t_off:.2f}x")
  if args.out:
    with open(args.out, "a") as f:
      f.write("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
