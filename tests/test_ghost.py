"""The ghost fast path equals vmap norms exactly (float64) on every covered layer type, and falls back."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import per_example as pe

RTOL = 1e-10


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


FORMS = [None, "gram", "direct"]


def ce_loss(apply_fn):
  def loss_fn(params, ex):
    x, y = ex
    z = apply_fn(params, x)
    return jax.nn.logsumexp(z) - z[y]
  return loss_fn


class MLP(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = jnp.tanh(nn.Dense(6)(x))
    x = nn.relu(nn.Dense(5)(x))
    return nn.Dense(3)(x)


class ConvNet(nn.Module):
  @nn.compact
  def __call__(self, x):
    x = nn.relu(nn.Conv(4, (3, 3), strides=2, padding="SAME")(x))
    x = jnp.tanh(nn.Conv(3, (2, 3), padding="VALID")(x))
    x = nn.Conv(2, (3, 3), strides=(2, 1), padding="SAME", use_bias=False)(x)
    return nn.Dense(3)(x.reshape(-1))


class EmbedModel(nn.Module):
  @nn.compact
  def __call__(self, tokens):
    e = nn.Embed(7, 4)(tokens)                 # (S, 4); repeated tokens share a row
    h = jnp.tanh(nn.Dense(5)(e))               # a weight applied at S positions
    return nn.Dense(3)(jnp.mean(h, axis=0))


class Residual(nn.Module):
  @nn.compact
  def __call__(self, x):
    h = nn.Dense(5)(x)
    r = nn.Dense(5)(jnp.tanh(nn.Dense(5)(h)))
    return nn.Dense(3)(jnp.tanh(h + r))


class Tied(nn.Module):
  """Embedding table used twice (lookup and output projection): must fall back for that leaf."""

  @nn.compact
  def __call__(self, tokens):
    emb = nn.Embed(6, 4)
    h = jnp.tanh(nn.Dense(4)(jnp.mean(emb(tokens), axis=0)))
    return emb.attend(h)


def _problem(model, kind, n=5, seed=0):
  k1, k2, k3 = jax.random.split(jax.random.key(seed), 3)
  if kind == "vec":
    x = jax.random.normal(k1, (n, 4))
  elif kind == "img":
    x = jax.random.normal(k1, (n, 7, 6, 2))
  else:
    x = jax.random.randint(k1, (n, 6), 0, 7 if model.__class__ is EmbedModel else 6)
    x = x.at[:, 1].set(x[:, 0])  # make sure every example repeats a token
  y = jax.random.randint(k2, (n,), 0, 3 if not isinstance(model, Tied) else 6)
  params = model.init(k3, x[0])
  dtype = jnp.float64 if jax.config.jax_enable_x64 else jnp.float32
  params = jax.tree.map(lambda v: (v + 0.3 * jax.random.normal(k3, v.shape, v.dtype)).astype(dtype), params)
  if kind != "tok":
    x = x.astype(dtype)
  return ce_loss(model.apply), params, (x, y)


CASES = [(MLP(), "vec", None), (Residual(), "vec", None)] + [
    (m, k, f) for m, k in [(ConvNet(), "img"), (EmbedModel(), "tok")] for f in FORMS]


@pytest.mark.parametrize("model,kind,form", CASES,
                         ids=[f"{type(m).__name__}-{f}" for m, _, f in CASES])
def test_ghost_equals_vmap_float64(x64, monkeypatch, model, kind, form):
  monkeypatch.setattr(pe, "_FORCE_FORM", form)  # None: cheaper form; "gram"/"direct": forced
  loss_fn, params, batch = _problem(model, kind)
  plan = pe._ghost_plan(loss_fn, params, batch)
  assert plan.fallback == ()  # every leaf is covered: the ghost path really ran
  assert len(plan.sites) == len(jax.tree.leaves(params))
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  got = pe.per_example_grad_norms(loss_fn, params, batch, method="ghost")
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, want, rtol=RTOL)
  np.testing.assert_allclose(pe.per_example_grad_norms(loss_fn, params, batch), want, rtol=RTOL)


def test_site_kinds_found(x64):
  kinds = lambda m, k: sorted(s.kind for s in pe._ghost_plan(*_problem(m, k)[:3]).sites)
  assert kinds(ConvNet(), "img") == ["add", "add", "add", "conv", "conv", "conv", "dot"]
  assert kinds(EmbedModel(), "tok") == ["add", "add", "dot", "dot", "gather"]


def test_tied_weight_falls_back_for_that_leaf_only(x64):
  loss_fn, params, batch = _problem(Tied(), "tok")
  plan = pe._ghost_plan(loss_fn, params, batch)
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  fallback = [names[i] for i in plan.fallback]
  assert len(fallback) == 1 and "embedding" in fallback[0]
  assert len(plan.sites) == len(names) - 1
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  np.testing.assert_allclose(pe.per_example_grad_norms(loss_fn, params, batch, method="ghost"), want,
                             rtol=RTOL)


def test_other_uses_fall_back(x64):
  # A scale applied elementwise (LayerNorm-like) and a parameter inside a custom_jvp (relu): fallback.
  def loss_fn(p, ex):
    x, y = ex
    h = jax.nn.relu(x @ p["w"] + p["b"]) * p["scale"]
    h = h + jax.nn.relu(p["shift"])
    return jnp.sum((h @ p["v"] - y) ** 2)
  k = jax.random.split(jax.random.key(1), 6)
  params = {"w": jax.random.normal(k[0], (3, 4)), "b": jax.random.normal(k[1], (4,)),
            "scale": jax.random.normal(k[2], (4,)), "shift": jax.random.normal(k[3], (4,)),
            "v": jax.random.normal(k[4], (4, 2))}
  batch = (jax.random.normal(k[5], (6, 3)), jnp.ones((6, 2)))
  plan = pe._ghost_plan(loss_fn, params, batch)
  names = sorted(params)
  assert sorted(names[i] for i in plan.fallback) == ["scale", "shift"]
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  for method in ("ghost", "auto"):
    np.testing.assert_allclose(pe.per_example_grad_norms(loss_fn, params, batch, method=method), want,
                               rtol=RTOL)


def test_unused_leaf(x64):
  loss_fn = lambda p, ex: jnp.sum(jnp.tanh(ex @ p["w"]))
  params = {"w": jnp.ones((3, 2)) * 0.5, "unused": jnp.ones((4,))}
  batch = jnp.arange(12.0).reshape(4, 3) / 10
  plan = pe._ghost_plan(loss_fn, params, batch)
  assert plan.fallback == () and len(plan.sites) == 1
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  got = pe.per_example_grad_norms(loss_fn, params, batch, method="ghost")
  np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize("model,kind", [(MLP(), "vec"), pytest.param(ConvNet(), "img", marks=pytest.mark.slow)],
                         ids=["mlp", "conv"])
def test_ghost_under_jit_vmap_chunks_and_clipped_sum(x64, model, kind):
  loss_fn, params, batch = _problem(model, kind, n=7)
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  f = jax.jit(lambda p, b: pe.per_example_grad_norms(loss_fn, p, b, method="ghost", chunk_size=3))
  np.testing.assert_allclose(f(params, batch), want, rtol=RTOL)
  # vmap over seeds: different params per seed
  seeds = jnp.arange(3)
  stacked = jax.vmap(lambda s: jax.tree.map(lambda v: v * (1.0 + 0.1 * s), params))(seeds)
  vg = jax.jit(jax.vmap(lambda p: pe.per_example_grad_norms(loss_fn, p, batch, method="ghost")))(stacked)
  for s in range(3):
    p_s = jax.tree.map(lambda v: v[s], stacked)
    np.testing.assert_allclose(vg[s], pe.per_example_grad_norms(loss_fn, p_s, batch, method="vmap"),
                               rtol=RTOL)
  g1, n1 = pe.clipped_grad_sum(loss_fn, params, batch, 0.5 * float(jnp.median(want)), method="ghost")
  g2, n2 = pe.clipped_grad_sum(loss_fn, params, batch, 0.5 * float(jnp.median(want)), method="vmap")
  np.testing.assert_allclose(n1, n2, rtol=RTOL)
  chex.assert_trees_all_close(g1, g2, rtol=1e-10, atol=1e-12)


@pytest.mark.slow  # float64 exactness (test_ghost_equals_vmap_float64) covers the identity; ~35 s
def test_ghost_float32_close_to_vmap():
  loss_fn, params, batch = _problem(ConvNet(), "img", n=8)
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  got = pe.per_example_grad_norms(loss_fn, params, batch, method="ghost")
  assert got.dtype == jnp.float32
  np.testing.assert_allclose(got, want, rtol=1e-5)


def test_ghost_no_nan_grad_at_zero_norm(x64):
  # Zero inputs with zero output gradient -> zero norm; differentiating the clipped sum stays finite.
  loss_fn = lambda p, ex: jnp.sum(ex @ p["w"])
  params = {"w": jnp.ones((3, 2))}
  batch = jnp.array([[0.0, 0.0, 0.0], [1.0, 2.0, 2.0]])
  norms = pe.per_example_grad_norms(loss_fn, params, batch, method="ghost")
  np.testing.assert_allclose(norms, [0.0, 3.0 * np.sqrt(2.0)], rtol=RTOL)
  d = jax.grad(lambda b: jnp.sum(pe.clipped_grad_sum(loss_fn, params, b, 1.0, method="ghost")[1]))(batch)
  assert np.all(np.isfinite(d))
