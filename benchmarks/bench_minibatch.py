"""Minibatch steps at scale: a step with the ledger against a plain optax SGD step on the same batch.

Contenders, each a jitted ``lax.scan`` of ``--steps`` steps on synthetic data held on the device:

- ``optax``: plain minibatch SGD (a random batch of B rows gathered inside the jit, one batch gradient,
  ``optax.sgd``) — the peer;
- ``shuffled+ledger``: ``uj.sgld(mode="shuffled", batch_size=B, clip_norm=1, accounting=...)`` — the
  per-example norms, clipped gradient and §2a costs of the B rows, the ledger rows updated;
- ``poisson (between accounted steps)``: ``uj.sgld(mode="poisson", q=B/n)`` without the ledger (what a
  step costs when ``stride`` skips it);
- ``poisson+ledger (accounted)``: the same with the ledger at every step (an all-n norm pass plus the
  §2b series for every row), next to ``all-n ghost norms`` alone.

Timing: rounds in a rotating order (every contender once per round), medians of the per-round ratios
to the peer; each contender is compiled and run once before timing. Printed for each n so that the
growth with n can be read off. Example (about 3 minutes on 2 CPU cores)::

  python benchmarks/bench_minibatch.py --n 10000 100000 --rounds 5
"""

from __future__ import annotations

import argparse
import os
import statistics
import time

import jax
import jax.numpy as jnp
import numpy as np
import optax

import unlearn_jax as uj
from unlearn_jax import accounting, per_example


def mlp(sizes, seed=0):
  rng = np.random.default_rng(seed)
  params = {}
  for i, (a, b) in enumerate(zip(sizes[:-1], sizes[1:])):
    params[f"w{i}"] = (rng.normal(size=(a, b)) / np.sqrt(a)).astype(np.float32)
    params[f"b{i}"] = np.zeros(b, np.float32)
  depth = len(sizes) - 1

  def loss_fn(p, ex):
    h, y = ex
    for i in range(depth):
      h = h @ p[f"w{i}"] + p[f"b{i}"]
      if i < depth - 1:
        h = jax.nn.relu(h)
    return jax.nn.logsumexp(h) - h[y]

  return params, loss_fn


def cnn(seed=0):
  model = uj.models.small_cnn(num_classes=10)
  params = model.init_fn(jax.random.key(seed), jnp.zeros((28, 28, 1)))
  return params, uj.models.cross_entropy_loss_fn(model.apply_fn)


def scan_of(step, carry, data, steps):
  """``steps`` steps in one jitted scan; the data set is an argument (not a constant of the program)."""

  def run(c, d):
    return jax.lax.scan(lambda cc, t: (step(cc, t, d), None), c, jnp.arange(steps))[0]

  fn = jax.jit(run)
  return lambda: fn(carry, data)


def contenders(loss_fn, params, data, n, B, steps):
  key = jax.random.key(0)
  opt = optax.sgd(0.05)

  def optax_step(c, t, d):
    p, s = c
    idx = jax.random.randint(jax.random.fold_in(key, t), (B,), 0, n)
    batch = jax.tree.map(lambda a: a[idx], d)
    g = jax.grad(lambda q: jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(q, batch)))(p)
    u, s = opt.update(g, s, p)
    return optax.apply_updates(p, u), s

  out = {"optax": scan_of(optax_step, (params, opt.init(params)), data, steps)}
  acct = accounting.accountant()
  algs = {
    "shuffled+ledger": uj.sgld(loss_fn, mode="shuffled", batch_size=B, clip_norm=1.0, accounting=acct),
    "poisson (between accounted steps)": uj.sgld(loss_fn, mode="poisson", sampling_rate=B / n, clip_norm=1.0),
    "poisson+ledger (accounted)": uj.sgld(loss_fn, mode="poisson", sampling_rate=B / n, clip_norm=1.0, accounting=acct),
  }
  for name, alg in algs.items():
    state = alg.init(params, n, key=key)
    out[name] = scan_of(
      lambda s, t, d, alg=alg: alg.step(s, d, jax.random.fold_in(key, t), 0.05, 1e-4)[0], state, data, steps
    )

  def norms_step(c, t, d):
    return c + jnp.sum(per_example.per_example_grad_norms(loss_fn, params, d, chunk_size=4096))

  out["all-n ghost norms"] = scan_of(norms_step, jnp.zeros(()), data, steps)
  return out


def measure(runs, rounds):
  for fn in runs.values():
    jax.block_until_ready(fn())
  names = list(runs)
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      t0 = time.perf_counter()
      jax.block_until_ready(runs[name]())
      times[name].append(time.perf_counter() - t0)
  ratios = {name: statistics.median(t / p for t, p in zip(times[name], times["optax"])) for name in names}
  return {name: statistics.median(v) for name, v in times.items()}, ratios


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
  ap.add_argument("--batch-size", type=int, default=256)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--models", default="mlp,cnn")
  args = ap.parse_args()
  print(
    f"jax {jax.__version__}, {jax.devices()[0].device_kind}, B = {args.batch_size}, {args.steps} steps per call, "
    f"median of {args.rounds} interleaved rounds; OMP/XLA threads as the process starts "
    f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})"
  )
  print("| model | n | contender | ms per step | ratio to optax (median of rounds) |")
  print("|---|---|---|---|---|")
  for name in args.models.split(","):
    for n in args.n:
      rng = np.random.default_rng(1)
      if name == "mlp":
        params, loss_fn = mlp((784, 256, 256, 10))
        x = rng.normal(size=(n, 784)).astype(np.float32)
      else:
        params, loss_fn = cnn()
        x = rng.normal(size=(n, 28, 28, 1)).astype(np.float32)
      data = (jax.device_put(x), jax.device_put(rng.integers(0, 10, n).astype(np.int32)))
      med, ratios = measure(contenders(loss_fn, params, data, n, args.batch_size, args.steps), args.rounds)
      for contender, t in med.items():
        print(f"| {name} | {n:,} | {contender} | {1e3 * t / args.steps:.2f} | {ratios[contender]:.2f}x |")


if __name__ == "__main__":
  main()
