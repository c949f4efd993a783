"""Calibrating a temperature for a step budget: the smallest noise whose certificate lets 90% of the
examples be unlearned within a given number of fine-tuning steps.

    python examples/calibrate_temperature.py [--n-train 600] [--steps 400] [--budget 200] [--rounds 4]

L2-regularised logistic regression is m-strongly convex, so C_LSI = 2τ/m is a theorem here, not an
assumption. The ledger is measured at a temperature τ; along a *fixed* trajectory the costs scale as
1/τ, and certify.calibrate_temperature solves for the τ that meets the budget (bisection, then Newton
steps with jax.grad). A hotter chain takes another trajectory, so the answer is checked: retrain at the
calibrated τ, measure the ledger again, certify again — and repeat from that measurement until the
measured certificate meets the budget.
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import accounting, certify, data, models, runtime


def train(ds, temperature, steps, weight_decay, clip_norm, orders):
  model = models.logistic_regression(ds.num_classes)
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  result = runtime.train(
    loss_fn,
    lambda k: model.init_fn(k, ds.x_train[0]),
    (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train)),
    num_steps=steps,
    key=jax.random.key(0),
    step_size=0.5,
    temperature=temperature,
    clip_norm=clip_norm,
    weight_decay=weight_decay,
    accounting=accounting.accountant(orders),
    progress=False,
  )
  accuracy = float(models.accuracy(model.apply_fn, result.state.params, ds.x_test, ds.y_test))
  return np.asarray(result.ledger.realized), accuracy


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n-train", type=int, default=600)
  parser.add_argument("--steps", type=int, default=400)
  parser.add_argument("--budget", type=float, default=200.0)
  parser.add_argument("--rounds", type=int, default=4, help="calibrate, retrain, measure: at most this often")
  args = parser.parse_args(argv)

  ds = data.load_digits(n_train=args.n_train, n_test=200)
  n = ds.x_train.shape[0]
  alpha, orders, eps, quantile = 2.0, (2.0, 4.0, 8.0, 16.0), 1.0, 0.9
  wd, clip, eta = 1e-2, 5.0, 0.5
  common = dict(alpha=alpha, step_size=eta, e1=0.0, e2=0.0)

  def quantile_steps(realized, tau):  # certified steps at the quantile, C_LSI = 2τ/m (a theorem here)
    p4 = realized[:, orders.index(4 * alpha)]
    return float(
      np.quantile(certify.steps_to_unlearn(p4, eps, temperature=tau, lsi_constant=2 * tau / wd, **common), quantile)
    )

  tau = 1e-4
  realized, accuracy = train(ds, tau, args.steps, wd, clip, orders)
  measured = quantile_steps(realized, tau)
  print(f"τ = {tau:g}: test accuracy {accuracy:.3f}, certified steps at the {quantile:.0%} quantile {measured:.0f}")
  rounds = []
  for r in range(1, args.rounds + 1):
    cal = certify.calibrate_temperature(
      realized[:, orders.index(4 * alpha)],
      eps,
      args.budget,
      quantile=quantile,
      accounting_temperature=tau,
      strong_convexity=wd,
      **common,
    )
    tau = cal.value
    realized, accuracy = train(ds, tau, args.steps, wd, clip, orders)  # the trajectory changes with τ
    measured = quantile_steps(realized, tau)
    rounds.append((tau, cal.quantile_steps, measured, accuracy))
    print(
      f"round {r}: calibrated τ = {tau:.4g} predicts {cal.quantile_steps:.0f} steps; retrained there: "
      f"measured {measured:.0f} steps, test accuracy {accuracy:.3f}"
    )
    if measured <= args.budget:
      break
  verdict = "meets" if measured <= args.budget else "does NOT meet"
  print(
    f"τ = {tau:.4g} {verdict} the budget of {args.budget:g} steps at the {quantile:.0%} quantile ({cal.assumptions})"
  )
  sigma = accounting.noise_multiplier_from_temperature(tau, batch_size=n, clip_norm=clip, step_size=eta)
  print(f"as DP-SGD (full batch of {n}, clip {clip:g}, lr {eta:g}): noise multiplier σ = {float(sigma):.3g}")
  return {"rounds": rounds, "temperature": tau, "measured_steps": measured, "budget": args.budget}


if __name__ == "__main__":
  main()
