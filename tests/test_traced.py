"""No silent wrong answers under jit, on the optax route and in the ledger's flags.

Each test is one row of the failure table that motivated these guards: eagerly the calls raise, and
under ``jax.jit`` an invalid traced input must give NaN (and a ledger that is not ``finite``), never a
plausible number; with ``raise_under_jit`` and ``checkify`` it is an error naming the argument.
"""

from __future__ import annotations

import math

import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from hypothesis import given, settings
from jax.experimental import checkify

import unlearn_jax as uj
from unlearn_jax import accounting, certify
from unlearn_jax.accounting import conversions, costs, sgm


def softmax_loss(p, ex):
  x, y = ex
  logits = x @ p["w"] + p["b"]
  return jax.nn.logsumexp(logits) - logits[y]


def _problem(n=24, d=4, k=3, seed=0):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(np.float32)
  y = rng.integers(0, k, size=n).astype(np.int32)
  params = {"w": (0.3 * rng.normal(size=(d, k))).astype(np.float32), "b": np.zeros(k, np.float32)}
  return x, y, params


def _jitted_step(eta, tau):
  x, y, p = _problem()
  alg = uj.sgld(softmax_loss, clip_norm=1.0, accounting=accounting.accountant([2.0, 8.0]))
  state = alg.init(p, x.shape[0])
  new, info = jax.jit(alg.step)(state, (x, y), jax.random.key(0), eta, tau)
  return new, info


def test_jitted_step_at_temperature_zero_with_accounting_is_not_an_infinite_number():
  # Before: costs of +inf charged silently. Now NaN, and the ledger says it is not finite.
  new, info = _jitted_step(0.5, 0.0)
  assert np.all(np.isnan(np.asarray(info.costs)))
  assert not bool(new.ledger.finite)
  with pytest.raises(ValueError, match="accounting_temperature"):  # eagerly: a clear error
    x, y, p = _problem()
    alg = uj.sgld(softmax_loss, clip_norm=1.0, accounting=accounting.accountant([2.0, 8.0]))
    alg.step(alg.init(p, x.shape[0]), (x, y), jax.random.key(0), 0.5, 0.0)


def test_jitted_step_with_negative_step_size_charges_no_negative_costs():
  new, info = _jitted_step(-0.5, 1e-3)
  c = np.asarray(info.costs)
  assert not np.any(c < 0) and np.all(np.isnan(c))
  assert not bool(new.ledger.finite)


def test_jitted_certificate_with_negative_temperature_is_nan_not_negative_steps():
  # Before: k* = -35,773 under jit.
  kw = dict(alpha=2.0, step_size=0.1, lsi_constant=0.02)
  k = jax.jit(lambda tau: certify.steps_to_unlearn(50.0, 1.0, temperature=tau, **kw))(-1e-5)
  assert math.isnan(float(k))
  assert float(jax.jit(lambda tau: certify.steps_to_unlearn(50.0, 1.0, temperature=tau, **kw))(1e-5)) > 0


@pytest.mark.slow
def test_raise_under_jit_names_the_argument_through_checkify():
  def bound(eta):
    return certify.unlearning_bound(3.0, 10, alpha=2.0, step_size=eta, temperature=1e-3, lsi_constant=0.5)

  with uj.raise_under_jit():
    err, value = checkify.checkify(jax.jit(bound))(-0.1)
    assert "step_size must be a finite positive number" in str(err.get())
    with pytest.raises(Exception, match="step_size"):
      err.throw()
    err, value = checkify.checkify(jax.jit(bound))(0.1)
    assert err.get() is None and np.isfinite(float(value))
  assert math.isnan(float(jax.jit(bound)(-0.1)))  # outside the context: NaN again


def test_gradients_through_the_continuous_certificate_still_match_finite_differences():
  def k(tau):
    return certify.steps_to_unlearn_continuous(40.0, 0.5, alpha=2.0, step_size=0.1, temperature=tau, lsi_constant=0.3)

  with jax.enable_x64(True):
    tau = 0.02
    g = float(jax.jit(jax.grad(k))(tau))
    h = 1e-7
    fd = (float(k(tau + h)) - float(k(tau - h))) / (2 * h)
  assert g == pytest.approx(fd, rel=1e-6)


def test_optax_route_noise_follows_the_run_key_and_the_seed():
  # Before: key= was ignored by langevin_noise in an optax chain: two keys, identical parameters.
  x, y, p = _problem()
  tx = optax.chain(optax.sgd(0.1), uj.langevin_noise(1e-2, 0.1))
  kw = dict(num_steps=5, step_size=0.1, optimizer=tx, progress=False)
  a = uj.train(softmax_loss, p, (x, y), key=jax.random.key(1), **kw).params
  b = uj.train(softmax_loss, p, (x, y), key=jax.random.key(2), **kw).params
  assert not np.allclose(np.asarray(a["w"]), np.asarray(b["w"]))
  seeds = uj.train(softmax_loss, p, (x, y), key=jax.random.key(1), num_seeds=2, **kw).params
  assert not np.allclose(np.asarray(seeds["w"][0]), np.asarray(seeds["w"][1]))
  # seed r of a vmapped run is the single run with fold_in(key, r)
  one = uj.train(softmax_loss, p, (x, y), key=jax.random.fold_in(jax.random.key(1), 1), **kw).params
  np.testing.assert_allclose(np.asarray(seeds["w"][1]), np.asarray(one["w"]), rtol=1e-5, atol=1e-6)


def test_optax_route_with_clip_norm_steps_on_the_clipped_gradient_the_ledger_accounts():
  # Before: the ledger charged clipped-gradient costs while the optimizer stepped on unclipped gradients.
  with jax.enable_x64(True):
    x, y, p = _problem()
    x, p = x.astype(np.float64), jax.tree.map(lambda v: v.astype(np.float64), p)
    C, eta, steps = 0.2, 0.3, 3
    res = uj.train(
      softmax_loss,
      p,
      (x, y),
      num_steps=steps,
      key=jax.random.key(0),
      step_size=eta,
      optimizer=optax.sgd(eta),
      clip_norm=C,
      accounting=accounting.accountant([2.0]),
      accounting_temperature=1e-3,
      progress=False,
    )
    ref = p
    for _ in range(steps):  # float64 re-derivation: mean of per-example clipped gradients, then SGD
      grads = [jax.grad(softmax_loss)(ref, (x[i], y[i])) for i in range(x.shape[0])]
      norms = [math.sqrt(sum(float(np.sum(np.square(v))) for v in jax.tree.leaves(g))) for g in grads]
      mean = jax.tree.map(lambda *gs: sum(g * min(1.0, C / nn) for g, nn in zip(gs, norms)) / len(gs), *grads)
      ref = jax.tree.map(lambda a, g: a - eta * g, ref, mean)
    for got, want in zip(jax.tree.leaves(res.params), jax.tree.leaves(ref)):
      np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=1e-10, atol=1e-12)
    assert bool(res.ledger.exact) and bool(res.ledger.finite)


def test_user_algorithm_in_shuffled_mode_gives_each_seed_its_own_permutation():
  # Before: every seed drew the permutation of key(0).
  x, y, p = _problem()
  alg = uj.sgld(softmax_loss, mode="shuffled", batch_size=6)
  res = uj.train(
    softmax_loss,
    p,
    (x, y),
    num_steps=4,
    key=jax.random.key(5),
    step_size=0.2,
    temperature=0.0,
    algorithm=alg,
    num_seeds=2,
    progress=False,
  )
  k0, k1 = (jax.random.key_data(res.state.shuffle_key[i]) for i in range(2))
  assert not np.array_equal(np.asarray(k0), np.asarray(k1))
  # and the parameters differ even though the step is noise-free: different batches
  assert not np.allclose(np.asarray(res.params["w"][0]), np.asarray(res.params["w"][1]))


# Every public function taking a temperature, step size, rate or order: under jit, invalid values give
# NaN (never a finite number, never a signed or infinite answer that looks like one).
_ORDERS = (2.0, 8.0)
_CALLS = {
  "gaussian_rdp": (lambda v: sgm.gaussian_rdp(1.0, v, _ORDERS), "noise"),
  "sampled_gaussian_rdp": (lambda v: sgm.sampled_gaussian_rdp(v, 2.0, _ORDERS), "rate"),
  "full_batch_costs": (
    lambda v: costs.full_batch_costs(jnp.ones(3), 10, orders=_ORDERS, step_size=0.1, temperature=v),
    "scale",
  ),
  "full_batch_costs_eta": (
    lambda v: costs.full_batch_costs(jnp.ones(3), 10, orders=_ORDERS, step_size=v, temperature=0.1),
    "scale",
  ),
  "full_batch_worst_case_cost": (
    lambda v: costs.full_batch_worst_case_cost(1.0, 10, orders=_ORDERS, step_size=0.1, temperature=v),
    "scale",
  ),
  "poisson_costs": (
    lambda v: costs.poisson_costs(jnp.ones(3), 0.1, 5.0, orders=_ORDERS, step_size=0.1, temperature=v),
    "scale",
  ),
  "poisson_costs_q": (
    lambda v: costs.poisson_costs(jnp.ones(3), v, 5.0, orders=_ORDERS, step_size=0.1, temperature=0.1),
    "rate",
  ),
  "poisson_worst_case_cost": (
    lambda v: costs.poisson_worst_case_cost(1.0, 0.1, 5.0, orders=_ORDERS, step_size=v, temperature=0.1),
    "scale",
  ),
  "rdp_to_dp": (lambda v: conversions.rdp_to_dp(jnp.ones(2), _ORDERS, v)[0], "rate"),
  "renyi_target": (lambda v: conversions.renyi_target(2.0, alpha=v, delta=1e-5), "order"),
  "contraction_factor": (
    lambda v: certify.contraction_factor(10, alpha=2.0, step_size=0.1, temperature=v, lsi_constant=1.0),
    "scale",
  ),
  "unlearning_bound": (
    lambda v: certify.unlearning_bound(3.0, 10, alpha=2.0, step_size=v, temperature=0.1, lsi_constant=1.0),
    "scale",
  ),
  "unlearning_bound_alpha": (
    lambda v: certify.unlearning_bound(3.0, 10, alpha=v, step_size=0.1, temperature=0.1, lsi_constant=1.0),
    "order",
  ),
  "steps_to_unlearn": (
    lambda v: certify.steps_to_unlearn(3.0, 0.5, alpha=2.0, step_size=0.1, temperature=v, lsi_constant=1.0),
    "scale",
  ),
  "steps_to_unlearn_continuous": (
    lambda v: certify.steps_to_unlearn_continuous(3.0, 0.5, alpha=2.0, step_size=v, temperature=0.1, lsi_constant=1.0),
    "scale",
  ),
  "lsi_constant_strongly_convex": (lambda v: certify.lsi_constant_strongly_convex(v, 0.1), "scale"),
  "worst_case_epsilon": (
    lambda v: certify.worst_case_epsilon(
      2.0, 10, m=0.1, step_size=0.1, temperature=v, num_removed=1, clip_norm=1.0, num_examples=100
    ),
    "scale",
  ),
}
_INVALID = {
  "scale": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(math.nan), st.just(-math.inf)),
  "noise": st.one_of(st.floats(max_value=0.0, allow_nan=False), st.just(math.nan)),
  "rate": st.one_of(
    st.floats(max_value=0.0, allow_nan=False), st.floats(min_value=1.0001, allow_nan=False), st.just(math.nan)
  ),
  "order": st.one_of(st.floats(max_value=1.0, allow_nan=False), st.just(math.inf), st.just(math.nan)),
}
_JITTED = {name: jax.jit(fn) for name, (fn, _) in _CALLS.items()}


@pytest.mark.parametrize("name", sorted(_CALLS))
def test_jitted_public_functions_never_answer_invalid_inputs_with_a_number(name):
  kind = _CALLS[name][1]

  @settings(max_examples=12, deadline=None, derandomize=True)
  @given(_INVALID[kind])
  def check(value):
    out = np.asarray(_JITTED[name](value), dtype=float)
    assert np.all(np.isnan(out)), (name, value, out)

  check()


def test_per_example_inputs_are_judged_entry_by_entry_under_jit():
  # One invalid privacy loss or squared distance does not poison the other examples: a NaN loss
  # certifies nothing (+inf steps), a negative one is no number (NaN), the others are unchanged.
  kw = dict(alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1.0)
  k = np.asarray(jax.jit(lambda p: certify.steps_to_unlearn(p, 0.05, **kw))(jnp.array([-1.0, jnp.nan, 1.0])))
  assert math.isnan(k[0]) and k[1] == math.inf and k[2] == float(certify.steps_to_unlearn(1.0, 0.05, **kw))
  c = np.asarray(
    jax.jit(lambda d: costs.full_batch_costs(d, 10, orders=_ORDERS, step_size=0.1, temperature=0.1))(
      jnp.array([-1.0, 1.0])
    )
  )
  assert np.all(np.isnan(c[0])) and np.all(np.isfinite(c[1]))
  ledger = accounting.ledger_init(2, accounting.accountant(_ORDERS))
  after = jax.jit(lambda cc: accounting.ledger_update(ledger, cc, jnp.zeros(2), config=accounting.accountant(_ORDERS)))(
    jnp.array([[-1.0, -1.0], [0.5, 0.5]])
  )
  assert not bool(after.finite) and np.all(np.asarray(after.realized)[0] == 0)  # never a decrease
