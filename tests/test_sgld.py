"""Tests of the noisy step (THEORY §0–§1, §5) against float64 NumPy references and closed forms."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest
from logistic import logistic_grads_np, logistic_loss  # tests/ helper module
from scipy import stats

from unlearn_jax import accounting as acc
from unlearn_jax import algorithms as sg
from unlearn_jax.algorithms.update import gaussian_like


def ridge_loss(w, ex):
  a, y = ex
  return 0.5 * (a @ w - y) ** 2


@pytest.fixture(scope="module")
def logistic_data(x64):
  rng = np.random.default_rng(0)
  x = rng.normal(size=(10, 3)) * np.array([1.0, 3.0, 0.5])
  y = (rng.uniform(size=10) < 0.5).astype(np.float64)
  return x, y


def test_temperature_zero_is_clipped_gd(logistic_data):
  x, y = logistic_data
  clip, wd, eta, radius = 0.7, 0.05, 0.3, 0.9
  alg = sg.sgld(logistic_loss, clip_norm=clip, weight_decay=wd, projection_radius=radius)
  step = jax.jit(alg.step)
  state = alg.init(jnp.zeros(3), 10)
  w = np.zeros(3)
  for t in range(4):
    state, info = step(state, (jnp.asarray(x), jnp.asarray(y)), jax.random.key(t), eta, 0.0)
    g = logistic_grads_np(w, x, y)
    norms = np.linalg.norm(g, axis=1)
    np.testing.assert_allclose(np.asarray(info.grad_norms), norms, rtol=1e-10)
    gc = g * np.minimum(1.0, clip / norms)[:, None]
    w = w - eta * (gc.mean(0) + wd * w)
    w = w * min(1.0, radius / np.linalg.norm(w))
    np.testing.assert_allclose(np.asarray(state.params), w, rtol=1e-10, atol=1e-14)
    assert float(info.noise_norm) == 0.0


def test_no_clip_full_batch_equals_batch_gradient(logistic_data):
  x, y = logistic_data
  data = (jnp.asarray(x), jnp.asarray(y))
  alg = sg.sgld(logistic_loss)
  w0 = jnp.array([0.3, -0.2, 0.1])
  state, _ = jax.jit(alg.step)(alg.init(w0, 10), data, jax.random.key(0), 0.1, 0.0)
  batch_grad = jax.grad(lambda w: jnp.mean(jax.vmap(logistic_loss, (None, 0))(w, data)))(w0)
  np.testing.assert_allclose(np.asarray(state.params), np.asarray(w0 - 0.1 * batch_grad), rtol=1e-12)


def test_ridge_distribution_matches_closed_form(x64):
  """THEORY §5: θ_{t+1} = M θ_t + η c + sqrt(2ητ) ξ, M = I - ηA. Many chains in one vmapped jitted call."""
  rng = np.random.default_rng(1)
  n, d, lam, eta, tau, steps, chains = 12, 2, 0.1, 0.2, 0.05, 15, 4000
  a = rng.normal(size=(n, d))
  yv = rng.normal(size=n)
  big_a = a.T @ a / n + lam * np.eye(d)
  c = a.T @ yv / n
  m = np.eye(d) - eta * big_a
  mu, cov = np.zeros(d), np.zeros((d, d))
  for _ in range(steps):
    mu = m @ mu + eta * c
    cov = m @ cov @ m.T + 2 * eta * tau * np.eye(d)
  alg = sg.sgld(ridge_loss, weight_decay=lam)
  data = (jnp.asarray(a), jnp.asarray(yv))

  def chain(key):
    def body(state, t):
      state, _ = alg.step(state, data, jax.random.fold_in(key, t), eta, tau)
      return state, None

    state, _ = jax.lax.scan(body, alg.init(jnp.zeros(d), n), jnp.arange(steps))
    return state.params

  samples = np.asarray(jax.jit(jax.vmap(chain))(jax.random.split(jax.random.key(0), chains)))
  mean_tol = 5 * np.sqrt(np.diag(cov) / chains)
  assert np.all(np.abs(samples.mean(0) - mu) <= mean_tol), (samples.mean(0), mu, mean_tol)
  emp = np.cov(samples.T)
  cov_tol = 5 * np.sqrt((np.outer(np.diag(cov), np.diag(cov)) + cov**2) / chains)
  assert np.all(np.abs(emp - cov) <= cov_tol), (emp, cov, cov_tol)


def test_poisson_inclusion_rate_and_estimate(logistic_data):
  x, y = logistic_data
  n, q, steps, clip = 10, 0.3, 400, 0.5
  data = (jnp.asarray(x), jnp.asarray(y))
  alg = sg.sgld(logistic_loss, mode="poisson", sampling_rate=q, clip_norm=clip)
  step = jax.jit(alg.step)
  w0 = jnp.array([0.2, 0.1, -0.3])
  state0 = alg.init(w0, n)

  def run(key):
    _, info = step(state0, data, key, 0.1, 0.0)
    return info.batch_mask

  masks = np.asarray(jax.vmap(run)(jax.random.split(jax.random.key(3), steps)))
  total = masks.size
  assert abs(masks.mean() - q) <= 5 * np.sqrt(q * (1 - q) / total)
  # The estimate is (1/b) sum over the batch of clipped gradients, b = q n.
  state, info = step(state0, data, jax.random.key(7), 0.1, 0.0)
  g = logistic_grads_np(np.asarray(w0), x, y)
  gc = g * np.minimum(1.0, clip / np.linalg.norm(g, axis=1))[:, None]
  mask = np.asarray(info.batch_mask)
  expected = np.asarray(w0) - 0.1 * (mask[:, None] * gc).sum(0) / (q * n)
  np.testing.assert_allclose(np.asarray(state.params), expected, rtol=1e-10)


def test_shuffled_epochs_cover_every_example_once(logistic_data):
  x, y = logistic_data
  data = (jnp.asarray(x), jnp.asarray(y))
  alg = sg.sgld(logistic_loss, mode="shuffled", batch_size=5)
  step = jax.jit(alg.step)
  state = alg.init(jnp.zeros(3), 10, key=jax.random.key(5))
  masks = []
  for t in range(4):
    state, info = step(state, data, jax.random.key(100 + t), 0.1, 0.01)
    masks.append(np.asarray(info.batch_mask))
  np.testing.assert_array_equal(masks[0] + masks[1], np.ones(10))
  np.testing.assert_array_equal(masks[2] + masks[3], np.ones(10))
  assert all(m.sum() == 5 for m in masks)


def test_same_key_identical_and_no_recompile(logistic_data):
  x, y = logistic_data
  data = (jnp.asarray(x), jnp.asarray(y))
  alg = sg.sgld(logistic_loss, clip_norm=1.0, accounting=acc.accountant([2.0, 4.5]))
  step = jax.jit(alg.step)
  state = alg.init(jnp.zeros(3), 10)
  s1, i1 = step(state, data, jax.random.key(1), jnp.asarray(0.1), jnp.asarray(0.01))
  s2, i2 = step(state, data, jax.random.key(1), jnp.asarray(0.1), jnp.asarray(0.01))
  chex_equal = lambda a, b: np.testing.assert_array_equal(np.asarray(a), np.asarray(b))
  jax.tree.map(chex_equal, (s1, i1), (s2, i2))
  s3, _ = step(state, data, jax.random.key(2), jnp.asarray(0.1), jnp.asarray(0.01))
  assert not np.array_equal(np.asarray(s1.params), np.asarray(s3.params))
  step(s1, data, jax.random.key(3), jnp.asarray(0.2), jnp.asarray(0.03))
  assert step._cache_size() == 1


def test_langevin_noise_chain_equals_sgld_step(logistic_data):
  x, y = logistic_data
  data = (jnp.asarray(x), jnp.asarray(y))
  eta, tau, wd = 0.1, 0.02, 0.01
  key = jax.random.key(11)
  alg = sg.sgld(logistic_loss, weight_decay=wd)
  state = alg.init(jnp.array([0.1, 0.2, 0.3]), 10)
  tx = optax.chain(optax.add_decayed_weights(wd), optax.sgd(eta), sg.langevin_noise(tau, eta, key))
  params = state.params
  opt_state = tx.init(params)
  loss = lambda w: jnp.mean(jax.vmap(logistic_loss, (None, 0))(w, data))
  step = jax.jit(alg.step)
  tx_update = jax.jit(lambda g, s, p: tx.update(g, s, p))
  for t in range(3):
    state, _ = step(state, data, jax.random.fold_in(key, t), eta, tau)
    updates, opt_state = tx_update(jax.grad(loss)(params), opt_state, params)
    params = optax.apply_updates(params, updates)
    np.testing.assert_allclose(np.asarray(params), np.asarray(state.params), rtol=1e-12)


@pytest.mark.parametrize(
  "mode, settings, tau",
  [
    ("full_batch", {}, 0.0),
    ("full_batch", {}, 0.02),
    ("poisson", dict(sampling_rate=0.5), 0.02),
    ("shuffled", dict(batch_size=4), 0.02),
  ],
)
def test_gradient_through_a_step_equals_finite_differences(logistic_data, mode, settings, tau):
  """jax.grad through one clipped (C between the per-example norms), projected, accounted step in θ and η
  against central differences in float64 (same key: same batch and noise). It was NaN (the untaken R / ‖θ‖
  of the projection at R = inf; at τ = 0 the derivative of sqrt(2ητ) in η) and, with those mended, wrong:
  the clip factors were held constant."""
  x, y = logistic_data
  data = (jnp.asarray(x), jnp.asarray(y))
  weights = jnp.array([1.0, -2.0, 0.5])
  for radius in (None, 0.5):
    alg = sg.sgld(
      logistic_loss, mode=mode, clip_norm=0.8, projection_radius=radius, accounting=acc.accountant(), **settings
    )
    state = alg.init(jnp.zeros(3), 10, key=jax.random.key(3))

    @jax.jit
    def f(w, eta, alg=alg, state=state):
      new, _ = alg.step(state._replace(params=w), data, jax.random.key(5), eta, tau, accounting_temperature=0.02)
      return jnp.sum(new.params * weights)

    w0, eta0, h = jnp.array([0.4, -0.3, 0.2]), 0.3, 1e-6
    dw, deta = jax.jit(jax.grad(f, argnums=(0, 1)))(w0, eta0)
    shifts = h * jnp.concatenate([jnp.eye(3), -jnp.eye(3)])
    values = jax.vmap(f, in_axes=(0, None))(w0 + shifts, eta0)
    fd_w = (values[:3] - values[3:]) / (2 * h)
    fd_eta = (f(w0, eta0 + h) - f(w0, eta0 - h)) / (2 * h)
    np.testing.assert_allclose(np.asarray(dw), np.asarray(fd_w), rtol=1e-6, atol=1e-8)
    np.testing.assert_allclose(float(deta), float(fd_eta), rtol=1e-6, atol=1e-8)
    assert np.all(np.asarray(dw) != np.asarray(weights))  # the step's gradient moved with θ


def test_bad_inputs(logistic_data):
  x, y = logistic_data
  data = (jnp.asarray(x), jnp.asarray(y))
  alg = sg.sgld(logistic_loss, clip_norm=1.0)
  state = alg.init(jnp.zeros(3), 10)
  key = jax.random.key(0)
  with pytest.raises(ValueError, match="step_size"):
    alg.step(state, data, key, 0.0, 0.1)
  with pytest.raises(ValueError, match="temperature"):
    alg.step(state, data, key, 0.1, -0.1)
  with pytest.raises(ValueError, match="clip_norm"):
    sg.sgld(logistic_loss, clip_norm=0.0)
  with pytest.raises(ValueError, match="clip_norm"):
    sg.sgld(logistic_loss, clip_norm=-1.0)
  for q in (0.0, 1.5, -0.1):
    with pytest.raises(ValueError, match="sampling_rate"):
      sg.sgld(logistic_loss, mode="poisson", sampling_rate=q)
  with pytest.raises(ValueError, match="disagree"):
    alg.step(state, (jnp.asarray(x), jnp.asarray(y[:5])), key, 0.1, 0.1)
  with pytest.raises(TypeError, match="scalar"):
    bad = sg.sgld(lambda w, ex: ex[0] * w)
    bad.step(bad.init(jnp.zeros(3), 10), data, key, 0.1, 0.1)
  with pytest.raises(ValueError, match="mode"):
    sg.sgld(logistic_loss, mode="minibatch")
  with pytest.raises(ValueError, match="batch_size"):
    sg.sgld(logistic_loss, mode="shuffled")
  accounted = sg.sgld(logistic_loss, clip_norm=1.0, accounting=acc.accountant([2.0]))
  with pytest.raises(ValueError, match="accounting_temperature"):
    accounted.step(accounted.init(jnp.zeros(3), 10), data, key, 0.1, 0.0)


def test_gaussian_like_is_standard_normal_per_leaf_and_independent_across_leaves():
  """One draw per dtype cut into the leaves: every leaf keeps its shape and dtype, its values pass a
  Kolmogorov-Smirnov test against N(0, 1) at level 1e-3 (at 20,000 draws it rejected a scale off by 8% or
  a mean off by 0.05 in 200 of 200 simulated samples, and passed 200 of 200 standard normal ones), and
  no two leaves (nor the two dtype groups) repeat each other's values."""
  with jax.enable_x64(True):
    tree = {"a": jnp.zeros((100, 200), jnp.float32), "b": jnp.zeros((20000,), jnp.float64),
            "c": jnp.zeros((3, 5, 7), jnp.float32), "d": jnp.zeros((20000,), jnp.float32)}  # fmt: skip
    z = gaussian_like(tree, jax.random.key(3))
    for name, leaf in tree.items():
      assert z[name].shape == leaf.shape and z[name].dtype == leaf.dtype, name
    for name in ("a", "b", "d"):
      assert stats.kstest(np.asarray(z[name], np.float64).ravel(), "norm").pvalue > 1e-3, name
    flat = {k: np.asarray(v, np.float64).ravel() for k, v in z.items()}
    assert abs(np.corrcoef(flat["b"], flat["d"])[0, 1]) < 0.05  # the float64 and float32 groups differ
    assert not np.allclose(flat["a"][:105], flat["c"]) and not np.allclose(flat["a"][:20000], flat["d"])
    again = gaussian_like(tree, jax.random.key(3))
    assert all(np.array_equal(np.asarray(z[k]), np.asarray(again[k])) for k in tree)  # deterministic in the key
