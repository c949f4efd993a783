"""Minibatch steps at scale: a step with the ledger against a plain optax SGD step on the same batch.

Contenders, each a jitted ``lax.scan`` of ``--steps`` steps on synthetic data held on the device, the
carry donated and fed back as the runtime's chunks do:

- ``optax``: plain minibatch SGD (a random batch of B rows gathered inside the jit, one batch gradient,
  ``optax.sgd``) — the peer; ``optax + Gaussian noise``: the same plus SGLD's noise (the draw every
  SGLD step makes at τ > 0; ``--temperature 0`` runs the project's steps noise-free, where they draw none);
- ``shuffled+ledger``: ``uj.sgld(mode="shuffled", batch_size=B, clip_norm=1, accounting=...)`` — the
  per-example norms, clipped gradient and §2a costs of the B rows from one ghost pass, the ledger rows
  updated;
- ``poisson (between accounted steps)``: ``uj.sgld(mode="poisson", q=B/n)`` without the ledger (what a
  step costs when ``stride`` skips it);
- ``poisson+ledger (accounted)``: the same with the ledger at every step (an all-n norm pass in chunks
  plus the §2b costs of every row from the grid), next to ``all-n ghost norms (chunked)`` alone and
  ``grid costs + ledger update (all n)`` alone (its share of an accounted step).

``--draws``: the batch draws alone (a Poisson draw as an (n,) Bernoulli mask compacted by ``nonzero``,
as the step drew before; the geometric gaps of ``batches.gather``; a shuffled batch).

``--epoch``: one epoch (n // B steps per call) of ``optax``, ``optax + Gaussian noise``, ``shuffled+ledger``
(every step charges its batch: each example once per epoch) and ``poisson, ledger once per epoch``
(``accountant(stride="epoch")``: one all-n norm pass and the §2b costs every round(1/q) steps, the
steps between cost their batch), the once-per-epoch refresh of Yu et al.

Timing: rounds in a rotating order (every contender once per round), medians of the per-round ratios
to the peer; each contender is compiled and run once before timing. Printed for each n so that the
growth with n can be read off. Example (about 5 minutes on 2 CPU cores)::

  python benchmarks/bench_minibatch.py --n 10000 100000 --rounds 5
  python benchmarks/bench_minibatch.py --n 10000 100000 --rounds 5 --temperature 0
  python benchmarks/bench_minibatch.py --epoch --n 20000 --rounds 3 --models mlp,cnn
  python benchmarks/bench_minibatch.py --draws --n 10000 100000 --steps 50 --rounds 5
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
from unlearn_jax.algorithms import batches
from unlearn_jax.algorithms.sgld import ALL_ROWS_CHUNK


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


def resnet18(seed=0):
  model = uj.models.resnet18(num_classes=10)
  params = model.init_fn(jax.random.key(seed), jnp.zeros((32, 32, 3)))
  return params, uj.models.cross_entropy_loss_fn(model.apply_fn)


UNROLL = False  # set by main for convolutional models on CPU (unlearn_jax._loops: convs in loops are slow there)


def scan_of(step, carry, data, steps):
  """``steps`` steps in one jitted scan; the data set is an argument (not a constant of the program).

  The carry is donated and fed back, as the runtime's chunks do (``runtime.engine.run_chunk``): the
  ledger's rows are then updated in place instead of the (n, K) ledger being copied at every call. For
  a convolutional model on CPU the scan is unrolled (no loop in the program), for every contender alike:
  XLA:CPU runs convolutions inside loops ~10-30x slower (``unlearn_jax._loops``; the runtime runs such
  models one step per call).
  """

  def run(c, d):
    return jax.lax.scan(lambda cc, t: (step(cc, t, d), None), c, jnp.arange(steps), unroll=UNROLL)[0]

  fn = jax.jit(run, donate_argnums=(0,))
  state = [jax.tree.map(lambda x: x.copy() if isinstance(x, jax.Array) else jnp.array(x), carry)]

  def call():
    state[0] = fn(state[0], data)
    return state[0]

  return call


def contenders(loss_fn, params, data, n, B, steps, tau, epoch=False):
  key = jax.random.key(0)
  opt = optax.sgd(0.05)

  def optax_grad(p, t, d):
    idx = jax.random.randint(jax.random.fold_in(key, t), (B,), 0, n)
    batch = jax.tree.map(lambda a: a[idx], d)
    return jax.grad(lambda q: jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(q, batch)))(p)

  def optax_step(c, t, d):
    p, s = c
    u, s = opt.update(optax_grad(p, t, d), s, p)
    return optax.apply_updates(p, u), s

  def optax_noise_step(c, t, d):  # the same step plus SGLD's Gaussian noise sqrt(2 eta tau) xi (blackjax's draw)
    p, s = optax_step(c, t, d)
    leaves, tree = jax.tree.flatten(p)
    keys = jax.random.split(jax.random.fold_in(key, t), len(leaves))
    scale = np.sqrt(2 * 0.05 * max(tau, 1e-4))
    return jax.tree.unflatten(tree, [x + scale * jax.random.normal(k, x.shape) for x, k in zip(leaves, keys)]), s

  out = {
    "optax": scan_of(optax_step, (params, opt.init(params)), data, steps),
    "optax + Gaussian noise": scan_of(optax_noise_step, (params, opt.init(params)), data, steps),
  }
  acct = accounting.accountant()
  hyper = dict(accounting_temperature=1e-4) if tau == 0 else {}
  if epoch:
    algs = {
      "shuffled+ledger": uj.sgld(loss_fn, mode="shuffled", batch_size=B, clip_norm=1.0, accounting=acct),
      "poisson, ledger once per epoch": uj.sgld(
        loss_fn, mode="poisson", sampling_rate=B / n, clip_norm=1.0, accounting=accounting.accountant(stride="epoch")
      ),
    }
    for name, alg in algs.items():
      state = alg.init(params, n, key=key)
      out[name] = scan_of(
        lambda s, t, d, alg=alg: alg.step(s, d, jax.random.fold_in(key, t), 0.05, tau, **hyper)[0], state, data, steps
      )
    return out
  algs = {
    "shuffled+ledger": uj.sgld(loss_fn, mode="shuffled", batch_size=B, clip_norm=1.0, accounting=acct),
    "poisson (between accounted steps)": uj.sgld(loss_fn, mode="poisson", sampling_rate=B / n, clip_norm=1.0),
    "poisson+ledger (accounted)": uj.sgld(loss_fn, mode="poisson", sampling_rate=B / n, clip_norm=1.0, accounting=acct),
  }
  for name, alg in algs.items():
    state = alg.init(params, n, key=key)
    out[name] = scan_of(
      lambda s, t, d, alg=alg: alg.step(s, d, jax.random.fold_in(key, t), 0.05, tau, **hyper)[0], state, data, steps
    )

  def norms(p, d):
    return per_example.per_example_grad_norms(loss_fn, p, d, chunk_size=ALL_ROWS_CHUNK)

  def norms_step(c, t, d):  # the parameters move a little every step: the pass cannot be hoisted out of the scan
    p, total = c
    return jax.tree.map(lambda x: x * (1.0 - 1e-6), p), total + jnp.sum(norms(p, d))

  out["all-n ghost norms (chunked)"] = scan_of(norms_step, (params, jnp.zeros(())), data, steps)
  clipped = jnp.minimum(jax.jit(norms)(params, data), 1.0)
  ledger = accounting.ledger_init(n, acct)

  def ledger_step(c, t, d):  # the grid costs of every row and the ledger update, the norms given
    del d
    costs, worst = accounting.fixed_step_costs(
      clipped * (1.0 - 1e-6 * t),
      B / n,
      float(B),
      clip_norm=1.0,
      orders=acct.orders,
      step_size=0.05,
      temperature=max(tau, 1e-4),
      z_nodes=acct.z_nodes,
    )
    return accounting.ledger_update(c, costs, worst, config=acct)

  out["grid costs + ledger update (all n)"] = scan_of(ledger_step, ledger, data, steps)
  return out


def draws(n, B, steps):
  """The batch draws alone, ``steps`` per call: a Poisson draw as an (n,) Bernoulli mask compacted by
  ``nonzero`` (how the step drew before, the peer here) against the geometric gaps of
  ``batches.gather``, and a shuffled batch of B (``batches.permute``)."""
  q, cap = B / n, batches.poisson_capacity(n, B / n)

  def bernoulli(key):
    mask = jax.random.bernoulli(key, q, (n,))
    return jnp.nonzero(mask, size=cap, fill_value=0)[0], jnp.sum(mask)

  def gaps(key):
    g = batches.gather("poisson", key, 0, None, n, jnp.float32, sampling_rate=q, capacity=cap)
    return g.indices, g.dropped

  def shuffled(key):
    return batches.gather("shuffled", None, jax.random.randint(key, (), 0, n // B), key, n, jnp.float32, batch_size=B)

  def loop(draw):
    run = jax.jit(lambda k: jax.lax.scan(lambda c, t: (c, draw(jax.random.fold_in(k, t))), 0, jnp.arange(steps))[1])
    return lambda: run(jax.random.key(0))

  return {"bernoulli + nonzero": loop(bernoulli), "geometric gaps": loop(gaps), "shuffled (permute)": loop(shuffled)}


def measure(runs, rounds, peer="optax"):
  for fn in runs.values():
    jax.block_until_ready(fn())
  names = list(runs)
  times = {name: [] for name in names}
  for r in range(rounds):
    for name in names[r % len(names) :] + names[: r % len(names)]:
      t0 = time.perf_counter()
      jax.block_until_ready(runs[name]())
      times[name].append(time.perf_counter() - t0)
  ratios = {name: statistics.median(t / p for t, p in zip(times[name], times[peer])) for name in names}
  return {name: statistics.median(v) for name, v in times.items()}, ratios


def main():
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--n", type=int, nargs="+", default=[10_000, 100_000])
  ap.add_argument("--batch-size", type=int, default=256)
  ap.add_argument("--steps", type=int, default=10)
  ap.add_argument("--rounds", type=int, default=5)
  ap.add_argument("--models", default="mlp,cnn", help="comma list of mlp, cnn, resnet18 (32x32x3)")
  ap.add_argument("--temperature", type=float, default=1e-4, help="0: noise-free steps (accounting at 1e-4)")
  ap.add_argument("--epoch", action="store_true", help="time one epoch (n // B steps) with the once-per-epoch ledger")
  ap.add_argument("--draws", action="store_true", help="time the batch draws alone (Bernoulli mask vs geometric gaps)")
  args = ap.parse_args()
  if args.draws:
    print(f"jax {jax.__version__}, {jax.devices()[0].device_kind}, B = {args.batch_size}, {args.steps} draws per call")
    print("| n | draw | ms per draw | ratio to bernoulli + nonzero |")
    print("|---|---|---|---|")
    for n in args.n:
      med, ratios = measure(draws(n, args.batch_size, args.steps), args.rounds, peer="bernoulli + nonzero")
      for name, t in med.items():
        print(f"| {n:,} | {name} | {1e3 * t / args.steps:.3f} | {ratios[name]:.2f}x |")
    return
  print(
    f"jax {jax.__version__}, {jax.devices()[0].device_kind}, B = {args.batch_size}, "
    f"{'one epoch (n // B steps)' if args.epoch else args.steps} steps per call, "
    f"median of {args.rounds} interleaved rounds; OMP/XLA threads as the process starts "
    f"(XLA_FLAGS={os.environ.get('XLA_FLAGS', '')!r})"
  )
  print("| model | n | contender | ms per step | ratio to optax (median of rounds) |")
  print("|---|---|---|---|---|")
  global UNROLL
  for name in args.models.split(","):
    UNROLL = name != "mlp" and jax.default_backend() == "cpu"
    for n in args.n:
      rng = np.random.default_rng(1)
      if name == "mlp":
        params, loss_fn = mlp((784, 256, 256, 10))
        x = rng.normal(size=(n, 784)).astype(np.float32)
      elif name == "resnet18":  # the paper's model on CIFAR-shaped data (accelerator sizes)
        params, loss_fn = resnet18()
        x = rng.normal(size=(n, 32, 32, 3)).astype(np.float32)
      else:
        params, loss_fn = cnn()
        x = rng.normal(size=(n, 28, 28, 1)).astype(np.float32)
      data = (jax.device_put(x), jax.device_put(rng.integers(0, 10, n).astype(np.int32)))
      steps = n // args.batch_size if args.epoch else args.steps
      med, ratios = measure(
        contenders(loss_fn, params, data, n, args.batch_size, steps, args.temperature, epoch=args.epoch), args.rounds
      )
      for contender, t in med.items():
        what = f"epoch of {steps} steps: {1e3 * t:.1f} ms, " if args.epoch else ""
        print(f"| {name} | {n:,} | {contender} | {what}{1e3 * t / steps:.2f} | {ratios[contender]:.2f}x |")


if __name__ == "__main__":
  main()
