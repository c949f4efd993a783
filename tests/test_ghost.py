"""The ghost fast path equals vmap norms exactly (float64) on every covered layer type, and falls back."""

from __future__ import annotations

import chex
import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import models
from unlearn_jax import per_example as pe
from unlearn_jax.per_example import ghost, ghost_rules, pooling

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
    e = nn.Embed(7, 4)(tokens)  # (S, 4); repeated tokens share a row
    h = jnp.tanh(nn.Dense(5)(e))  # a weight applied at S positions
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


class PoolNet(nn.Module):
  """Max-pooling (tiling windows with SAME padding on odd sizes: the fast path; overlapping windows:
  the XLA primitive), a dilated convolution and a transposed (input-dilated) convolution."""

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(4, (3, 3), padding="SAME")(x))
    h = nn.max_pool(h[None], (2, 2), strides=(2, 2), padding="SAME")[0]  # 7x6 -> 4x3, padded
    h = nn.relu(nn.Conv(3, (2, 2), kernel_dilation=(2, 1), padding="SAME")(h))
    h = nn.max_pool(h[None], (2, 2), strides=(1, 1), padding="VALID")[0]  # overlapping: fallback
    h = jnp.tanh(nn.ConvTranspose(2, (2, 2), strides=(2, 2))(h))
    return nn.Dense(3)(h.reshape(-1))


def _nchw_loss(params, ex):
  """A raw NCHW/OIHW convolution with stride, asymmetric padding and a dilated kernel."""
  x, y = ex
  h = jax.lax.conv_general_dilated(
    x[None], params["k"], (2, 1), ((1, 0), (2, 1)), rhs_dilation=(1, 2), dimension_numbers=("NCHW", "OIHW", "NCHW")
  )
  z = jnp.tanh(h).reshape(-1) @ params["w"]
  return jax.nn.logsumexp(z) - z[y]


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


CASES = (
  [(MLP(), "vec", None), (Residual(), "vec", None), (PoolNet(), "img", None)]
  + [(m, k, f) for m, k in [(ConvNet(), "img"), (EmbedModel(), "tok")] for f in FORMS]
  + [pytest.param(PoolNet(), "img", f, marks=pytest.mark.slow) for f in FORMS[1:]]
)  # forms: numpy test


def _case_id(c):
  m, _, f = c.values if hasattr(c, "values") else c
  return f"{type(m).__name__}-{f}"


@pytest.mark.slow
@pytest.mark.parametrize("model,kind,form", CASES, ids=[_case_id(c) for c in CASES])
def test_ghost_equals_vmap_float64(x64, monkeypatch, model, kind, form):
  monkeypatch.setattr(ghost_rules, "FORCE_FORM", form)  # None: cheaper form; "gram"/"direct": forced
  loss_fn, params, batch = _problem(model, kind)
  plan = ghost.ghost_plan(loss_fn, params, batch)
  assert plan.fallback == ()  # every leaf is covered: the ghost path really ran
  assert len(plan.sites) == len(jax.tree.leaves(params))
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  got = pe.per_example_grad_norms(loss_fn, params, batch, method="ghost")
  assert got.dtype == jnp.float64
  np.testing.assert_allclose(got, want, rtol=RTOL)
  np.testing.assert_allclose(pe.per_example_grad_norms(loss_fn, params, batch), want, rtol=RTOL)


@pytest.mark.parametrize("form", [None] + [pytest.param(f, marks=pytest.mark.slow) for f in FORMS[1:]])
def test_nchw_strided_dilated_conv_equals_vmap(x64, monkeypatch, form):
  monkeypatch.setattr(ghost_rules, "FORCE_FORM", form)
  k = jax.random.split(jax.random.key(4), 4)
  params = {"k": jax.random.normal(k[0], (3, 2, 2, 2)), "w": jax.random.normal(k[1], (3 * 4 * 7, 3))}
  batch = (jax.random.normal(k[2], (4, 2, 7, 6)), jax.random.randint(k[3], (4,), 0, 3))
  assert jax.eval_shape(lambda: _nchw_loss(params, (batch[0][0], 0))).shape == ()
  plan = ghost.ghost_plan(_nchw_loss, params, batch)
  assert plan.fallback == () and sorted(s.kind for s in plan.sites) == ["conv", "dot"]
  want = pe.per_example_grad_norms(_nchw_loss, params, batch, method="vmap")
  np.testing.assert_allclose(pe.per_example_grad_norms(_nchw_loss, params, batch, method="ghost"), want, rtol=RTOL)


def test_conv_direct_form_against_numpy_loop(x64):
  # Independent reference: the per-example kernel gradient summed position by position in NumPy.
  rng = np.random.default_rng(5)
  x = rng.normal(size=(3, 6, 5, 2))  # (n, H, W, C)
  kern = rng.normal(size=(3, 2, 2, 4))  # HWIO
  d = rng.normal(size=(3, 3, 4, 4))  # output grads for stride 2, SAME padding
  dn = jax.lax.conv_dimension_numbers((1, 6, 5, 2), kern.shape, ("NHWC", "HWIO", "NHWC"))
  pads = jax.lax.padtype_to_pads((6, 5), (3, 2), (2, 1), "SAME")
  p = {"window_strides": (2, 1), "padding": pads, "lhs_dilation": (1, 1), "rhs_dilation": (1, 1)}
  xt = jnp.transpose(jnp.asarray(x)[:, None], (0, 1, 4, 2, 3))  # (n, N, C, H, W)
  dt = jnp.asarray(d)[:, None]  # (n, N, H, W, O): output gradients channels last
  want = []
  for i in range(3):
    xp = np.pad(x[i], (pads[0], pads[1], (0, 0)))
    g = np.zeros(kern.shape)
    for a in range(3):
      for b in range(4):
        g += np.einsum("hwc,o->hwco", xp[2 * a : 2 * a + 3, b : b + 2], d[i, a, b])
    want.append(np.sum(g**2))
  assert dn.lhs_spec == (0, 3, 1, 2)
  for gram in (False, True):
    got = ghost_rules._conv_sq_norms_by_offsets(xt, dt, (3, 2), p, gram)
    np.testing.assert_allclose(got, want, rtol=RTOL)


def test_fast_window_max_matches_xla_values_and_gradients(x64):
  # Ties (ReLU zeros, repeated values) must route the cotangent like XLA's select_and_scatter.
  rng = np.random.default_rng(6)
  x = jnp.asarray(np.maximum(rng.normal(size=(2, 7, 6, 3)), 0.0))
  x = x.at[0, 0, 0, 0].set(1.5).at[0, 0, 1, 0].set(1.5).at[0, 1, 0, 0].set(1.5)
  for win, pad in [((1, 2, 2, 1), "SAME"), ((1, 3, 2, 1), "SAME"), ((1, 1, 3, 1), "VALID")]:
    ref = lambda v: jax.lax.reduce_window(v, -jnp.inf, jax.lax.max, win, win, pad)
    pads = tuple(jax.lax.padtype_to_pads(x.shape, win, win, pad))
    fast = lambda v: pooling.window_max(v, pads, win)
    np.testing.assert_array_equal(fast(x), ref(x))
    g = jnp.asarray(rng.normal(size=ref(x).shape))
    np.testing.assert_array_equal(jax.vjp(fast, x)[1](g)[0], jax.vjp(ref, x)[1](g)[0])
    t = jnp.asarray(rng.normal(size=x.shape))
    np.testing.assert_array_equal(jax.jvp(fast, (x,), (t,))[1], jax.jvp(ref, (x,), (t,))[1])


def test_fast_pool_used_only_for_tiling_windows(x64, monkeypatch):
  loss_fn, params, batch = _problem(PoolNet(), "img")
  plan = ghost.ghost_plan(loss_fn, params, batch)
  pools = [e for e in plan.closed.jaxpr.eqns if e.primitive.name == "reduce_window_max"]
  x = jnp.zeros(pools[0].invars[0].aval.shape)
  assert len(pools) == 2
  assert pooling.window_max_spec(pools[0], x) is not None  # 2x2 stride 2: fast path
  assert pooling.window_max_spec(pools[1], jnp.zeros(pools[1].invars[0].aval.shape)) is None  # overlapping
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="ghost")
  monkeypatch.setattr(pooling, "FAST_POOL", False)
  np.testing.assert_allclose(pe.per_example_grad_norms(loss_fn, params, batch, method="ghost"), want, rtol=RTOL)


def test_site_kinds_found(x64):
  kinds = lambda m, k: sorted(s.kind for s in ghost.ghost_plan(*_problem(m, k)[:3]).sites)
  assert kinds(ConvNet(), "img") == ["add", "add", "add", "conv", "conv", "conv", "dot"]
  assert kinds(EmbedModel(), "tok") == ["add", "add", "dot", "dot", "gather"]


def test_tied_weight_falls_back_for_that_leaf_only(x64):
  loss_fn, params, batch = _problem(Tied(), "tok")
  plan = ghost.ghost_plan(loss_fn, params, batch)
  names = [jax.tree_util.keystr(p) for p, _ in jax.tree_util.tree_leaves_with_path(params)]
  fallback = [names[i] for i in plan.fallback]
  assert len(fallback) == 1 and "embedding" in fallback[0]
  assert len(plan.sites) == len(names) - 1
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  np.testing.assert_allclose(pe.per_example_grad_norms(loss_fn, params, batch, method="ghost"), want, rtol=RTOL)


def test_other_uses_fall_back(x64):
  # A scale applied elementwise (LayerNorm-like) and a parameter inside a custom_jvp (relu): fallback.
  def loss_fn(p, ex):
    x, y = ex
    h = jax.nn.relu(x @ p["w"] + p["b"]) * p["scale"]
    h = h + jax.nn.relu(p["shift"])
    return jnp.sum((h @ p["v"] - y) ** 2)

  k = jax.random.split(jax.random.key(1), 6)
  params = {
    "w": jax.random.normal(k[0], (3, 4)),
    "b": jax.random.normal(k[1], (4,)),
    "scale": jax.random.normal(k[2], (4,)),
    "shift": jax.random.normal(k[3], (4,)),
    "v": jax.random.normal(k[4], (4, 2)),
  }
  batch = (jax.random.normal(k[5], (6, 3)), jnp.ones((6, 2)))
  plan = ghost.ghost_plan(loss_fn, params, batch)
  names = sorted(params)
  assert sorted(names[i] for i in plan.fallback) == ["scale", "shift"]
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  for method in ("ghost", "auto"):
    np.testing.assert_allclose(pe.per_example_grad_norms(loss_fn, params, batch, method=method), want, rtol=RTOL)


def test_unused_leaf(x64):
  loss_fn = lambda p, ex: jnp.sum(jnp.tanh(ex @ p["w"]))
  params = {"w": jnp.ones((3, 2)) * 0.5, "unused": jnp.ones((4,))}
  batch = jnp.arange(12.0).reshape(4, 3) / 10
  plan = ghost.ghost_plan(loss_fn, params, batch)
  assert plan.fallback == () and len(plan.sites) == 1
  want = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  got = pe.per_example_grad_norms(loss_fn, params, batch, method="ghost")
  np.testing.assert_allclose(got, want, rtol=RTOL)


@pytest.mark.parametrize(
  "model,kind", [(MLP(), "vec"), pytest.param(ConvNet(), "img", marks=pytest.mark.slow)], ids=["mlp", "conv"]
)
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
    np.testing.assert_allclose(vg[s], pe.per_example_grad_norms(loss_fn, p_s, batch, method="vmap"), rtol=RTOL)
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


def _temp_mib(fn, *args) -> float | None:
  analysis = jax.jit(fn).lower(*args).compile().memory_analysis()
  return None if analysis is None else analysis.temp_size_in_bytes / 2**20


def test_cnn_ghost_pass_memory_stays_near_a_batch_gradient():
  """XLA's temporary buffers of the compiled programs (deterministic for one XLA version; not a timing):
  the convolution norms fold over kernel offsets with one input slice alive at a time, so the all-n ghost
  pass of the small CNN needs at most 1.5x a batch gradient's temporaries (1.21x measured at n = 1,024;
  a Python loop over the offsets, which XLA scheduled with every slice alive, needed 1.89x)."""
  model = models.small_cnn(10, (16, 32))
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  params = model.init_fn(jax.random.key(0), jnp.ones((28, 28, 1)))
  batch = (jnp.ones((1024, 28, 28, 1)), jnp.zeros((1024,), jnp.int32))

  def batch_grad(p, b):
    return jax.grad(lambda p: jnp.sum(jax.vmap(lambda x, y: loss_fn(p, (x, y)))(*b)))(p)

  bg = _temp_mib(batch_grad, params, batch)
  if bg is None:
    pytest.skip("this backend reports no memory analysis")
  ghost_mib = _temp_mib(lambda p, b: pe.per_example_grad_norms(loss_fn, p, b, method="ghost"), params, batch)
  vmap_mib = _temp_mib(lambda p, b: pe.per_example_grad_norms(loss_fn, p, b, method="vmap"), params, batch)
  assert ghost_mib <= 1.5 * bg, (ghost_mib, bg)
  assert ghost_mib <= vmap_mib, (ghost_mib, vmap_mib)
