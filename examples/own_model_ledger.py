"""Your own flax model, the per-instance ledger inside your own jax.jit / lax.scan loop, certificates,
and jax.grad through a bound.

    python examples/own_model_ledger.py [--n-train 600] [--steps 300]

1. a flax NNX module becomes a pure (init_fn, apply_fn) pair with models.from_nnx;
2. algorithms.sgld builds a pure (init, step) pair with the ledger wired in; the training loop is yours:
   one jax.jit around a lax.scan over the steps;
3. the ledger's P(x, 4α) becomes certified steps to unlearn each example (assumed C_LSI: the MLP is
   not convex), and their (ε, δ) reads as DP-SGD accounting would report it;
4. jax.grad of the continuous certificate says how the steps move with the temperature (d k / d log τ).
"""

from __future__ import annotations

import argparse

import jax
import jax.numpy as jnp
import numpy as np
from flax import nnx

from unlearn_jax import accounting, certify, data, models
from unlearn_jax.algorithms import sgld


class MLP(nnx.Module):
  """A researcher's own model: ONE example in, its logits out."""

  def __init__(self, din: int, hidden: int, num_classes: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(din, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.relu(self.hidden(x)))


def main(argv=None) -> dict:
  parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
  parser.add_argument("--n-train", type=int, default=600)
  parser.add_argument("--steps", type=int, default=300)
  args = parser.parse_args(argv)

  ds = data.load_digits(n_train=args.n_train, n_test=200)
  model = models.from_nnx(lambda rngs: MLP(64, 32, ds.num_classes, rngs=rngs), "my_mlp")
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  train_set = (jnp.asarray(ds.x_train), jnp.asarray(ds.y_train))
  n = ds.x_train.shape[0]

  alpha, orders = 2.0, (2.0, 4.0, 8.0, 16.0, 32.0)
  step_size, temperature, clip_norm = 0.5, 1e-4, 5.0
  alg = sgld(loss_fn, clip_norm=clip_norm, weight_decay=1e-3, accounting=accounting.accountant(orders))
  state = alg.init(model.init_fn(jax.random.key(0), ds.x_train[0]), n)

  @jax.jit
  def run(state, key):  # your own loop: the library gives the pure step
    def body(state, k):
      state, info = alg.step(state, train_set, k, step_size, temperature)
      return state, info.loss

    return jax.lax.scan(body, state, jax.random.split(key, args.steps))

  state, losses = run(state, jax.random.key(1))
  accuracy = float(models.accuracy(model.apply_fn, state.params, ds.x_test, ds.y_test))
  print(
    f"trained {args.steps} steps: loss {float(losses[0]):.3f} -> {float(losses[-1]):.3f}, test accuracy {accuracy:.3f}"
  )

  ledger = state.ledger
  p4 = ledger.realized[:, orders.index(4 * alpha)]  # the certificate reads P(x, 4α)
  constants = dict(alpha=alpha, step_size=step_size, temperature=temperature, lsi_constant=0.02)  # assumed C_LSI
  steps = certify.steps_to_unlearn(p4, 1.0, **constants)
  print(f"P(x, {4 * alpha:g}): median {float(jnp.median(p4)):.3g}, max {float(p4.max()):.3g} (an estimate: no filter)")
  print(
    f"certified steps to unlearn (ε = 1 at α = {alpha:g}, assumed C_LSI = 0.02): median {float(jnp.median(steps)):.0f}"
  )

  report = accounting.epsilon_report(np.asarray(ledger.realized), orders, 1e-5, worst_case=ledger.worst_case)
  print(accounting.format_epsilon_report(report))
  sigma = accounting.noise_multiplier_from_temperature(
    temperature, batch_size=n, clip_norm=clip_norm, step_size=step_size
  )
  print(f"as DP-SGD: noise multiplier σ = {float(sigma):.3g} with batch size {n}, clip {clip_norm:g}, lr {step_size:g}")

  hardest = int(jnp.argmax(p4))

  def k_of_log_tau(log_tau):  # un-rounded certified steps of the hardest example, as a function of log τ
    tau = jnp.exp(log_tau)
    p_at_tau = p4[hardest] * temperature / tau  # §2 costs scale as 1/τ along a fixed trajectory
    return certify.steps_to_unlearn_continuous(p_at_tau, 1.0, **{**constants, "temperature": tau})

  log_tau = jnp.log(temperature)
  dk = jax.grad(k_of_log_tau)(log_tau)
  k = float(k_of_log_tau(log_tau))
  print(f"hardest example {hardest}: k = {k:.0f} steps; doubling τ changes it by about {float(dk) * np.log(2):.0f}")
  return {"accuracy": accuracy, "p4": np.asarray(p4), "steps": np.asarray(steps), "k": k, "dk_dlog_tau": float(dk)}


if __name__ == "__main__":
  main()
