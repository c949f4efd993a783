"""Per-example gradients, norms, clipping and inner products vs float64 NumPy references."""

from __future__ import annotations

import logging

import chex
import hypothesis
import hypothesis.strategies as st
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from reference import per_example_ref as ref

from unlearn_jax import per_example as pe

RTOL = 1e-10
N, D, H, K = 7, 5, 4, 3


def logreg_loss(params, ex):
  x, y = ex
  z = x @ params["w"] + params["b"]
  return jax.nn.logsumexp(z) - z[y]


def mlp_loss(params, ex):
  x, y = ex
  h = jnp.tanh(x @ params["w1"] + params["b1"])
  z = h @ params["w2"] + params["b2"]
  return jax.nn.logsumexp(z) - z[y]


LOSSES = {"logreg": logreg_loss, "mlp": mlp_loss}


def make_problem(model, n=N, seed=0):
  rng = np.random.default_rng(seed)
  if model == "logreg":
    params = {"w": rng.normal(size=(D, K)), "b": rng.normal(size=K)}
  else:
    params = {
      "w1": rng.normal(size=(D, H)),
      "b1": rng.normal(size=H),
      "w2": rng.normal(size=(H, K)),
      "b2": rng.normal(size=K),
    }
  x = 2.0 * rng.normal(size=(n, D))
  y = rng.integers(0, K, size=n)
  return params, x, y


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _jax(params, x, y):
  return ({k: jnp.asarray(v) for k, v in params.items()}, (jnp.asarray(x), jnp.asarray(y)))


def _close(got, want, rtol=RTOL, atol=0.0):
  np.testing.assert_allclose(np.asarray(got), np.asarray(want), rtol=rtol, atol=atol)


# -------------------------------------------------------------------------- values vs the reference


@pytest.mark.parametrize("model", ["logreg", "mlp"])
@pytest.mark.parametrize("chunk_size", [None, 3, 7, 50])
def test_grads_losses_norms_match_reference(x64, model, chunk_size):
  params, x, y = make_problem(model)
  r_losses, r_grads = ref.per_example(model, params, x, y)
  p, batch = _jax(params, x, y)
  loss_fn = LOSSES[model]
  _close(pe.per_example_losses(loss_fn, p, batch), r_losses)
  grads = pe.per_example_grads(loss_fn, p, batch, chunk_size=chunk_size)
  assert set(grads) == set(r_grads)
  for k in r_grads:
    assert grads[k].dtype == jnp.float64
    _close(grads[k], r_grads[k], atol=1e-13)
  for method in pe.NORM_METHODS:
    _close(pe.per_example_grad_norms(loss_fn, p, batch, chunk_size=chunk_size, method=method), ref.norms(r_grads))


@pytest.mark.parametrize("model", ["logreg", "mlp"])
@pytest.mark.parametrize("clip_norm", [None, 0.5, 2.0, float("inf")])
def test_clip_per_example_matches_reference(x64, model, clip_norm):
  params, x, y = make_problem(model, seed=1)
  _, r_grads = ref.per_example(model, params, x, y)
  p, batch = _jax(params, x, y)
  clipped, norms = pe.clip_per_example(pe.per_example_grads(LOSSES[model], p, batch), clip_norm)
  r_clipped, r_norms = ref.clip(r_grads, None if clip_norm == float("inf") else clip_norm)
  _close(norms, r_norms)
  for k in r_clipped:
    _close(clipped[k], r_clipped[k], atol=1e-13)
  if clip_norm == 0.5:  # the reference must actually clip something here, or the test is idle
    assert np.sum(r_norms > 0.5) >= 3


@pytest.mark.parametrize("model", ["logreg", "mlp"])
def test_inner_and_weighted_sum_match_reference(x64, model):
  params, x, y = make_problem(model, seed=2)
  _, r_grads = ref.per_example(model, params, x, y)
  p, batch = _jax(params, x, y)
  rng = np.random.default_rng(5)
  direction = {k: rng.normal(size=np.shape(v)) for k, v in params.items()}
  _close(pe.per_example_inner(LOSSES[model], p, batch, direction), ref.inner(r_grads, direction), atol=1e-12)
  w = rng.uniform(0, 2, size=N)
  got = pe.weighted_grad_sum(LOSSES[model], p, batch, w)
  want = ref.weighted_sum(r_grads, w)
  for k in want:
    _close(got[k], want[k], atol=1e-12)


@pytest.mark.parametrize("model", ["logreg", "mlp"])
@pytest.mark.parametrize("method", pe.NORM_METHODS)
@pytest.mark.parametrize("chunk_size", [None, 3])
@pytest.mark.parametrize("use_weights", [False, True])
def test_clipped_grad_sum_matches_reference(x64, model, method, chunk_size, use_weights):
  params, x, y = make_problem(model, seed=3)
  _, r_grads = ref.per_example(model, params, x, y)
  p, batch = _jax(params, x, y)
  w = np.random.default_rng(0).uniform(0, 2, size=N) if use_weights else None
  got, norms = pe.clipped_grad_sum(LOSSES[model], p, batch, 0.7, weights=w, chunk_size=chunk_size, method=method)
  r_clipped, r_norms = ref.clip(r_grads, 0.7)
  want = ref.weighted_sum(r_clipped, np.ones(N) if w is None else w)
  _close(norms, r_norms)
  for k in want:
    _close(got[k], want[k], atol=1e-12)


def test_clipped_sum_without_clipping_is_batch_gradient(x64):
  params, x, y = make_problem("mlp", seed=4)
  _, r_grads = ref.per_example("mlp", params, x, y)
  p, batch = _jax(params, x, y)
  got, _ = pe.clipped_grad_sum(mlp_loss, p, batch, None)
  want = ref.weighted_sum(r_grads, np.ones(N))
  for k in want:
    _close(got[k], want[k], atol=1e-12)


# -------------------------------------------------------------------------- chunking


@pytest.mark.parametrize("chunk_size", [1, 2, 3, 4, 6])
def test_chunked_equals_unchunked(x64, chunk_size):
  params, x, y = make_problem("mlp", seed=6)
  p, batch = _jax(params, x, y)
  full = pe.per_example_grads(mlp_loss, p, batch)
  chunked = pe.per_example_grads(mlp_loss, p, batch, chunk_size=chunk_size)
  chex.assert_trees_all_close(chunked, full, rtol=1e-12, atol=1e-14)  # equal up to XLA reassociation
  _close(
    pe.per_example_grad_norms(mlp_loss, p, batch, chunk_size=chunk_size, method="vmap"),
    pe.per_example_grad_norms(mlp_loss, p, batch, method="vmap"),
    rtol=1e-12,
  )


def test_no_recompile_for_n_padding_to_same_shape(caplog):
  params, x, y = make_problem("mlp", n=12, seed=7)
  params = {k: jnp.asarray(v, jnp.float32) for k, v in params.items()}
  x = jnp.asarray(x, jnp.float32)
  y = jnp.asarray(y)
  with jax.log_compiles(True), caplog.at_level(logging.WARNING, logger="jax"):
    caplog.clear()
    a = pe.per_example_grads(mlp_loss, params, (x[:10], y[:10]), chunk_size=4)
    first = [r for r in caplog.records if "_grads_core" in r.getMessage()]
    caplog.clear()
    b = pe.per_example_grads(mlp_loss, params, (x[:11], y[:11]), chunk_size=4)  # also 3 chunks of 4
    second = [r for r in caplog.records if "_grads_core" in r.getMessage()]
    caplog.clear()
    traced = jax.jit(lambda p, b: pe.per_example_grads(mlp_loss, p, b, chunk_size=4))
    c = traced(params, (x[:11], y[:11]))
    inline = [r for r in caplog.records if "_grads_core" in r.getMessage()]
  assert a["w1"].shape[0] == 10 and b["w1"].shape[0] == 11 and c["w1"].shape[0] == 11
  chex.assert_trees_all_close(jax.tree.map(lambda v: v[:10], b), a, rtol=1e-6)
  chex.assert_trees_all_close(c, b, rtol=1e-6)  # the traced pass (chunks in a loop) and the host's agree
  assert len(second) == 0, [r.getMessage() for r in second]
  # The first call may or may not compile (cache shared with earlier tests); the message filter works:
  assert all("_grads_core" in r.getMessage() for r in first)
  assert not inline  # under a trace the chunks are part of the caller's program


def test_eager_chunked_pass_traces_one_chunk_at_a_time(x64, monkeypatch):
  """Called eagerly, a chunked pass runs one compiled program on chunk_size rows per chunk (its memory is
  that of one chunk at any n), and gives the unchunked pass's values; under a trace it is one program."""
  params, x, y = make_problem("mlp", n=11, seed=3)
  p, batch = _jax(params, x, y)
  seen = []
  core = pe.api._ghost_sq_norms_core

  def recording(loss_fn, params, batch):
    seen.append(jax.tree.leaves(batch)[0].shape[0])
    return core(loss_fn, params, batch)

  monkeypatch.setattr(pe.api, "_ghost_sq_norms_core", recording)
  loss = lambda q, ex: mlp_loss(q, ex)  # a new function: its programs are traced here, not cached
  norms = pe.per_example_grad_norms(loss, p, batch, chunk_size=4, method="ghost")
  assert seen == [4]  # traced once, on a chunk; the three calls share it
  _close(norms, ref.norms(ref.per_example("mlp", params, x, y)[1]))
  seen.clear()
  jax.jit(lambda q, b: pe.per_example_grad_norms(loss, q, b, chunk_size=4, method="ghost"))(p, batch)
  assert seen and set(seen) == {4}  # traced as the body of the loop over chunks
  total, norms = pe.clipped_grad_sum(loss, p, batch, 0.7, chunk_size=4, method="ghost")
  r_clipped, r_norms = ref.clip(ref.per_example("mlp", params, x, y)[1], 0.7)
  _close(norms, r_norms)
  for k, v in ref.weighted_sum(r_clipped, np.ones(11)).items():
    _close(total[k], v, atol=1e-12)  # the repeated rows of the last chunk add nothing


# -------------------------------------------------------------------------- properties


@hypothesis.settings(deadline=None, derandomize=True, max_examples=6)
@hypothesis.given(seed=st.integers(0, 2**16), chunk=st.sampled_from([None, 4]))
def test_permuting_batch_permutes_outputs(seed, chunk):
  n = 6  # fixed shapes: one compilation per chunk setting
  with jax.enable_x64(True):
    params, x, y = make_problem("mlp", n=n, seed=seed)
    p, batch = _jax(params, x, y)
    perm = np.random.default_rng(seed).permutation(n)
    pbatch = jax.tree.map(lambda v: v[perm], batch)
    norms = pe.per_example_grad_norms(mlp_loss, p, batch, chunk_size=chunk)
    _close(pe.per_example_grad_norms(mlp_loss, p, pbatch, chunk_size=chunk), norms[perm], rtol=1e-12)
    direction = jax.tree.map(jnp.ones_like, p)
    inner = pe.per_example_inner(mlp_loss, p, batch, direction)
    _close(pe.per_example_inner(mlp_loss, p, pbatch, direction), inner[perm], rtol=1e-10, atol=1e-12)
    g = pe.per_example_grads(mlp_loss, p, batch, chunk_size=chunk)
    gp = pe.per_example_grads(mlp_loss, p, pbatch, chunk_size=chunk)
    chex.assert_trees_all_close(gp, jax.tree.map(lambda v: v[perm], g), rtol=1e-12, atol=1e-14)


@hypothesis.settings(deadline=None, derandomize=True, max_examples=20)
@hypothesis.given(seed=st.integers(0, 2**16), clip_norm=st.floats(1e-3, 10.0))
def test_clip_bound_holds(seed, clip_norm):
  with jax.enable_x64(True):
    params, x, y = make_problem("mlp", seed=seed)
    p, batch = _jax(params, x, y)
    grads = pe.per_example_grads(mlp_loss, p, batch)
    clipped, norms = pe.clip_per_example(grads, clip_norm)
    new_norms = np.sqrt(np.asarray(pe.api._per_example_sq_norms_of(clipped)))
    assert np.all(new_norms <= clip_norm * (1 + 1e-12))
    small = np.asarray(norms) <= clip_norm
    _close(new_norms[small], np.asarray(norms)[small], rtol=1e-14)  # untouched below C
    _close(new_norms[~small], clip_norm, rtol=1e-12)  # exactly C above it


# -------------------------------------------------------------------------- zero norms, jit, grad


def test_zero_gradient_example_has_factor_one_and_no_nan_under_grad():
  # Linear loss <w, x>: the example x = 0 has a zero gradient.
  loss_fn = lambda w, ex: jnp.dot(w, ex)
  w = jnp.array([1.0, -2.0])
  batch = jnp.array([[0.0, 0.0], [3.0, 4.0]])
  norms = pe.per_example_grad_norms(loss_fn, w, batch)
  assert norms.tolist() == [0.0, 5.0]
  _close(pe.clip_factors(norms, 1.0), [1.0, 0.2], rtol=1e-7)
  dn = jax.grad(lambda n: jnp.sum(pe.clip_factors(n, 1.0)))(jnp.array([0.0, 5.0]))
  assert np.all(np.isfinite(dn)) and dn[0] == 0.0
  _close(dn[1], -1.0 / 25.0, rtol=1e-6)

  # Differentiate through the norms and the clipped sum w.r.t. the data (second-order through grad).
  def total(b):
    g, nrm = pe.clipped_grad_sum(loss_fn, w, b, 1.0, method="vmap")
    return jnp.sum(g) + jnp.sum(nrm)

  dbatch = jax.grad(total)(batch)
  assert np.all(np.isfinite(dbatch))
  clipped, _ = pe.clip_per_example(jnp.zeros((2, 3)), 1.0)
  assert np.all(clipped == 0)
  dz = jax.grad(lambda g: jnp.sum(pe.clip_per_example(g, 1.0)[0]) + jnp.sum(pe.clip_per_example(g, 1.0)[1]))(
    jnp.zeros((2, 3))
  )
  assert np.all(np.isfinite(dz))


def test_clip_factors_traced_inf_and_values():
  norms = jnp.array([0.0, 1.0, 3.0, 4.0])
  f = jax.jit(pe.clip_factors)
  assert f(norms, jnp.inf).tolist() == [1.0, 1.0, 1.0, 1.0]
  _close(f(norms, 2.0), [1.0, 1.0, 2 / 3, 0.5], rtol=1e-6)
  assert pe.clip_factors(norms, float("inf")).tolist() == [1.0] * 4


@pytest.mark.slow
def test_under_jit_and_vmap_over_params(x64):
  params, x, y = make_problem("mlp", seed=8)
  p, batch = _jax(params, x, y)
  _, r_grads = ref.per_example("mlp", params, x, y)
  f = jax.jit(lambda p, b: pe.clipped_grad_sum(mlp_loss, p, b, 0.7, chunk_size=3))
  got, norms = f(p, batch)
  r_clipped, r_norms = ref.clip(r_grads, 0.7)
  _close(norms, r_norms)
  for k, v in ref.weighted_sum(r_clipped, np.ones(N)).items():
    _close(got[k], v, atol=1e-12)
  stacked = jax.tree.map(lambda v: jnp.stack([v, 2 * v]), p)
  vnorms = jax.vmap(lambda q: pe.per_example_grad_norms(mlp_loss, q, batch))(stacked)
  _close(vnorms[0], r_norms)
  params2 = {k: 2 * v for k, v in params.items()}
  _close(vnorms[1], ref.norms(ref.per_example("mlp", params2, x, y)[1]))


# -------------------------------------------------------------------------- errors


def test_errors_name_the_argument():
  params, x, y = make_problem("logreg")
  p, batch = _jax(params, x, y)
  bad_loss = lambda params, ex: ex[0] @ params["w"]  # returns (K,)
  with pytest.raises(TypeError, match=r"loss_fn.*scalar.*\(3,\)"):
    pe.per_example_grads(bad_loss, p, batch)
  with pytest.raises(TypeError, match="loss_fn"):
    pe.per_example_grad_norms(bad_loss, p, batch)
  with pytest.raises(TypeError, match="loss_fn"):
    pe.clipped_grad_sum(bad_loss, p, batch, 1.0)
  with pytest.raises(TypeError, match="loss_fn"):
    pe.per_example_inner(bad_loss, p, batch, p)
  with pytest.raises(ValueError, match=r"disagree on the number of examples.*\[7, 6\]"):
    pe.per_example_grads(logreg_loss, p, (batch[0], batch[1][:6]))
  for c in (0.0, -1.0, float("nan")):
    with pytest.raises(ValueError, match="clip_norm"):
      pe.clipped_grad_sum(logreg_loss, p, batch, c)
    with pytest.raises(ValueError, match="clip_norm"):
      pe.clip_factors(jnp.ones(3), c)
  with pytest.raises(ValueError, match="method"):
    pe.per_example_grad_norms(logreg_loss, p, batch, method="fast")
  with pytest.raises(ValueError, match="chunk_size"):
    pe.per_example_grads(logreg_loss, p, batch, chunk_size=0)
  with pytest.raises(ValueError, match=r"weights.*\(7,\)"):
    pe.weighted_grad_sum(logreg_loss, p, batch, jnp.ones(6))
  with pytest.raises(ValueError, match="direction"):
    pe.per_example_inner(logreg_loss, p, batch, {"w": p["w"]})
  with pytest.raises(TypeError, match="loss_fn must be callable"):
    pe.per_example_losses(3, p, batch)
