"""How much the exact fractional-order RDP changes a Poisson ledger, (ε, δ) per example and the certificates.

Not a timing benchmark: one Poisson-sampled SGLD run of L2-regularised logistic regression on the digits
(the certified regime: C_LSI = 2τ/m), accounted twice on the same trajectory (same keys) — with
dp_accounting's series (the default ``rdp_method``; |binomial| terms at fractional orders, an upper bound)
and with the exact sampled-Gaussian RDP (``rdp_method="exact"``). Prints, over the examples, the relative
reduction of P(x, α) at fractional orders, of ε(δ) per example (all orders), and of the certificate k*(x)
at an α whose 4α is fractional (at α with integer 4α, e.g. α = 2, the certificate reads an integer order,
where both methods agree).

  python benchmarks/exact_rdp_effect.py                       # q = 0.05, σ = 1, C = 5, 20 steps (3.5 min)
  python benchmarks/exact_rdp_effect.py --sampling-rate 0.01 --noise-multiplier 0.8

The exact ledger evaluates the quadrature at every node of the grid of noise levels and every fractional
order each step (~8 s a step on a 2-core CPU with the 156 default orders), hence the short default run.
"""

from __future__ import annotations

import argparse
import time

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import accounting, certify, data, models
from unlearn_jax.algorithms import sgld


def ledger(method: str, args, loss_fn, params, train, tau: float) -> np.ndarray:
  acc = accounting.accountant(rdp_method=method)
  alg = sgld(
    loss_fn, clip_norm=args.clip_norm, mode="poisson", sampling_rate=args.sampling_rate,
    weight_decay=args.weight_decay, accounting=acc,
  )  # fmt: skip
  state = alg.init(params, train[0].shape[0])

  @jax.jit
  def run(state):
    def body(s, k):
      return alg.step(s, train, k, args.step_size, tau)[0], None

    return jax.lax.scan(body, state, jax.random.split(jax.random.key(1), args.steps))[0]

  return np.asarray(run(state).ledger.realized, np.float64)


def _rel(a: np.ndarray, b: np.ndarray) -> np.ndarray:
  """Relative reduction 1 − a/b (0 where b = 0)."""
  return np.where(b > 0, 1.0 - a / np.where(b > 0, b, 1.0), 0.0)


def _summary(x: np.ndarray) -> str:
  return f"median {100 * np.median(x):.3g}%, max {100 * np.max(x):.3g}%, min {100 * np.min(x):.3g}%"


def main(argv=None) -> int:
  ap = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  ap.add_argument("--sampling-rate", type=float, default=0.05)
  ap.add_argument("--noise-multiplier", type=float, default=1.0)
  ap.add_argument("--steps", type=int, default=20)
  ap.add_argument("--step-size", type=float, default=0.5)
  ap.add_argument("--clip-norm", type=float, default=5.0)
  ap.add_argument("--weight-decay", type=float, default=0.05)
  ap.add_argument("--delta", type=float, default=1e-5)
  ap.add_argument("--alpha", type=float, default=1.3, help="certificate order (4α fractional)")
  args = ap.parse_args(argv)
  jax.config.update("jax_enable_x64", True)
  ds = data.load_digits()
  model = models.logistic_regression(ds.num_classes)
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  train = (jnp.asarray(ds.x_train, jnp.float64), jnp.asarray(ds.y_train))
  n = train[0].shape[0]
  params = jax.tree.map(lambda x: x.astype(jnp.float64), model.init_fn(jax.random.key(0), ds.x_train[0]))
  batch = args.sampling_rate * n
  tau = float(
    accounting.temperature_from_noise_multiplier(
      args.noise_multiplier, batch_size=batch, clip_norm=args.clip_norm, step_size=args.step_size
    )
  )
  t0 = time.perf_counter()
  upper = ledger("dp_accounting", args, loss_fn, params, train, tau)
  exact = ledger("exact", args, loss_fn, params, train, tau)
  orders = np.asarray(accounting.DEFAULT_ORDERS)
  print(
    f"digits, logistic regression (m = {args.weight_decay}), n = {n}, Poisson q = {args.sampling_rate}, "
    f"σ = {args.noise_multiplier} (τ = {tau:.3g}), C = {args.clip_norm}, η = {args.step_size}, "
    f"{args.steps} steps; both ledgers in {time.perf_counter() - t0:.0f} s"
  )
  ints = orders % 1 == 0
  same = np.max(np.abs(exact[:, ints] - upper[:, ints]) / np.maximum(upper[:, ints], 1e-300))
  print(f"integer orders: max relative difference {same:.2e} (the same series)")
  for a in (1.1, 1.5, 2.5, 5.2, 10.5):
    j = int(np.argmin(np.abs(orders - a)))
    print(f"P(x, {orders[j]:g}): exact below the series by {_summary(_rel(exact[:, j], upper[:, j]))}")
  eps_u = np.asarray(accounting.rdp_to_dp(upper, orders, args.delta)[0])
  eps_e = np.asarray(accounting.rdp_to_dp(exact, orders, args.delta)[0])
  print(
    f"ε(δ = {args.delta:g}) per example: series median {np.median(eps_u):.4g}, exact median {np.median(eps_e):.4g};"
    f" reduction {_summary(_rel(eps_e, eps_u))}"
  )
  j = int(np.argmin(np.abs(orders - 4 * args.alpha)))
  if abs(orders[j] - 4 * args.alpha) > 1e-9:
    print(f"4α = {4 * args.alpha:g} is not among the ledger's orders; no certificate comparison")
    return 0
  lsi = float(certify.lsi_constant_strongly_convex(tau, args.weight_decay))

  def k(p):
    return np.asarray(
      certify.steps_to_unlearn(
        jnp.asarray(p), 1.0, alpha=args.alpha, step_size=args.step_size, temperature=tau, lsi_constant=lsi
      )
    )

  ku, ke = k(upper[:, j]), k(exact[:, j])
  print(
    f"certificate k*(x) at α = {args.alpha:g}, ε = 1 (reads P(x, {orders[j]:g}); C_LSI = 2τ/m = {lsi:.3g}): "
    f"series median {np.median(ku):.0f}, exact median {np.median(ke):.0f} steps; "
    f"fewer steps by {_summary(_rel(ke, ku))}; max steps saved {np.max(ku - ke):.0f}"
  )
  return 0


if __name__ == "__main__":
  raise SystemExit(main())
