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

from unlearn_jax import algorithms as sgld_lib
from unlearn_jax import models
from unlearn_jax.accounting import accountant


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__, formatter_class=argparse.RawDescriptionHelpFormatter)
  ap.add_argument("--batch-size", type=int, default=1024, help="n (full batch)")
  ap.add_argument("--repeats", type=int, default=10)
  ap.add_argument("--steps", type=int, default=20, help="steps per timed training run (lax.scan)")
  ap.add_argument("--tiny", action="store_true")
  ap.add_argument("--compile-rounds", type=int, default=5, help="compiles of each step, interleaved (median)")
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

  def scan_steps(step_fn, init):
    """jit(lax.scan of ``args.steps`` steps): per-call dispatch is then amortised, the same for both."""

    def run(carry):
      def body(c, t):
        return step_fn(c, jax.random.fold_in(key, t)), None

      return jax.lax.scan(body, carry, jnp.arange(args.steps))[0]

    fn = jax.jit(run)
    return lambda: fn(init)

  plain = sgld_lib.sgld(loss_fn)
  st0 = plain.init(params, n)
  # The new state only, as blackjax's step returns (the per-example norms SGLDInfo reports are then dead
  # code for an unclipped step without a ledger, and XLA drops them).
  runs = {"project sgld step (no clip, no ledger)": scan_steps(lambda c, k: plain.step(c, data, k, eta, tau)[0], st0)}
  t_bj = float("nan")
  bj = None
  try:
    import blackjax

    emit(f"blackjax {blackjax.__version__}")

    def logprior_fn(p):
      return 0.0

    def loglik_fn(p, ex):
      return -loss_fn(p, ex)

    grad_est = blackjax.sgmcmc.gradients.grad_estimator(logprior_fn, loglik_fn, n)
    bj = blackjax.sgld(grad_est)
    runs["blackjax sgld step (eta/n, tau*n)"] = scan_steps(lambda p, k: bj.step(k, p, data, eta / n, tau * n), params)
    # Convention check at temperature 0: the two steps coincide.
    a = jax.jit(lambda st: plain.step(st, data, key, eta, 0.0)[0])(st0).params
    b = jax.jit(lambda p: bj.step(key, p, data, eta / n, 0.0))(params)
    diff = max(float(jnp.max(jnp.abs(u - v))) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))
    emit(f"tau=0 check: max |project - blackjax| = {diff:.2e}")
  except Exception as e:  # noqa: BLE001
    emit(f"blackjax peer skipped: {type(e).__name__}: {e}")

  # Training with the full-batch ledger on vs off (clipped).
  off = sgld_lib.sgld(loss_fn, clip_norm=1.0)
  on = sgld_lib.sgld(loss_fn, clip_norm=1.0, accounting=accountant())
  runs["train step, clip, ledger off (per step)"] = scan_steps(
    lambda c, k: off.step(c, data, k, eta, tau)[0], off.init(params, n)
  )
  runs["train step, clip, ledger on (per step)"] = scan_steps(
    lambda c, k: on.step(c, data, k, eta, tau)[0], on.init(params, n)
  )
  # Interleaved rounds (each round times every variant once, in a rotating order): machine noise then
  # hits all variants alike; medians over rounds, per step.
  for fn in runs.values():
    jax.block_until_ready(fn())
  times = {name: [] for name in runs}
  names = list(runs)
  for r in range(reps):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      t0 = time.perf_counter()
      jax.block_until_ready(runs[name]())
      times[name].append(1e3 * (time.perf_counter() - t0) / args.steps)
  rows = [(name, statistics.median(ts)) for name, ts in times.items()]
  med = dict(rows)
  t_proj = med["project sgld step (no clip, no ledger)"]
  t_bj = med.get("blackjax sgld step (eta/n, tau*n)", float("nan"))
  t_off, t_on = med["train step, clip, ledger off (per step)"], med["train step, clip, ledger on (per step)"]
  emit(
    f"MLP {d}-{width}-{width}-10, n = {n}, full batch, float32, {args.steps} steps per call, "
    f"median of {reps} interleaved rounds"
  )
  for name, t in rows:
    emit(f"{name:<42} {t:>9.2f} ms")
  emit(f"project / blackjax step: {t_proj / t_bj:.2f}x;  ledger on / off: {t_on / t_off:.2f}x")
  emit("compile time of ONE jitted step (trace + lower + XLA compile, a fresh function object each time):")
  singles = {"project sgld step (no clip, no ledger)": lambda: (lambda c: plain.step(c, data, key, eta, tau)[0], st0)}
  if bj is not None:
    singles["blackjax sgld step"] = lambda: (lambda p: bj.step(key, p, data, eta / n, tau * n), params)
  singles["train step, clip, ledger on"] = lambda: (lambda c: on.step(c, data, key, eta, tau)[0], on.init(params, n))
  compile_times = {name: [] for name in singles}
  for r in range(args.compile_rounds):  # interleaved rounds, a fresh function object each time (no cache hit)
    for name in list(singles)[r % len(singles) :] + list(singles)[: r % len(singles)]:
      fn, arg = singles[name]()
      fresh = (lambda f: lambda a: f(a))(fn)
      t0 = time.perf_counter()
      jax.jit(fresh).lower(arg).compile()
      compile_times[name].append(time.perf_counter() - t0)
  compile_s = {name: statistics.median(ts) for name, ts in compile_times.items()}
  for name, t in compile_s.items():
    lo, hi = min(compile_times[name]), max(compile_times[name])
    emit(f"  {name:<40} {t:>6.2f} s (median of {args.compile_rounds}: {lo:.2f}-{hi:.2f})")
  if bj is not None:
    ratio = compile_s["project sgld step (no clip, no ledger)"] / compile_s["blackjax sgld step"]
    emit(f"  project / blackjax compile: {ratio:.2f}x")
  if args.out:
    with open(args.out, "a") as f:
      f.write("\n".join(lines) + "\n")
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
