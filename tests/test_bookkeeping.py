"""Book-keeping: the clipped sum and the inner products from one ghost pass equal their float64 references."""

from __future__ import annotations

import chex
import jax
import jax.numpy as jnp
import numpy as np
import pytest
from test_ghost import MLP, ConvNet, EmbedModel, PoolNet, Residual, Tied, _nchw_loss, _problem

from unlearn_jax import per_example as pe
from unlearn_jax.per_example import blocks, bookkeeping, ghost, ghost_rules

MODELS = [(MLP(), "vec"), (Residual(), "vec"), (ConvNet(), "img"), (EmbedModel(), "tok"), (Tied(), "tok")]
IDS = ["mlp", "residual", "conv", "embed", "tied"]


@pytest.fixture
def x64():
  with jax.enable_x64(True):
    yield


def _references(loss_fn, params, batch, weights, direction):
  losses = lambda p: jax.vmap(loss_fn, in_axes=(None, 0))(p, batch)
  total = jax.grad(lambda p: jnp.sum(weights * losses(p)))(params)
  inner = jax.jvp(losses, (params,), (direction,))[1]
  return total, inner


@pytest.mark.parametrize("keep", [False, True], ids=["contract", "kept"])
@pytest.mark.parametrize("model,kind", MODELS, ids=IDS)
def test_weighted_sum_and_inner_products_equal_float64_references(x64, model, kind, keep):
  loss_fn, params, batch = _problem(model, kind, n=6)
  weights = jnp.linspace(-0.5, 1.5, 6)
  direction = jax.tree.map(lambda x: jnp.cos(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)), params)
  plan = ghost.ghost_plan(loss_fn, params, batch)
  record = ghost.ghost_record(plan, loss_fn, params, batch, keep_grads=keep)
  if not keep:
    assert record.site_grads == {}
  want_sum, want_inner = _references(loss_fn, params, batch, weights, direction)
  chex.assert_trees_all_close(bookkeeping.weighted_sum(plan, params, record, weights), want_sum, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(bookkeeping.inner_products(plan, params, record, direction), want_inner, rtol=1e-11)
  np.testing.assert_allclose(record.losses, jax.vmap(loss_fn, in_axes=(None, 0))(params, batch), rtol=1e-14)


@pytest.mark.parametrize(
  "model,kept", [(ConvNet(), 1), pytest.param(PoolNet(), 2, marks=pytest.mark.slow)], ids=["conv", "pool"]
)
def test_kept_convolution_gradients_are_the_per_example_gradients(x64, model, kept):
  """Every kept (n, kernel view) array is the per-example kernel gradient, in the kernel's own layout
  (PoolNet: a dilated and a plain convolution kept, the transposed one contracted)."""
  loss_fn, params, batch = _problem(model, "img", n=4)
  plan = ghost.ghost_plan(loss_fn, params, batch)
  record = ghost.ghost_record(plan, loss_fn, params, batch, keep_grads=True)
  assert len(record.site_grads) == kept
  per_example = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, batch)
  leaves = jax.tree.leaves(per_example)
  for site in plan.sites:
    if site.path in record.site_grads:
      np.testing.assert_allclose(record.site_grads[site.path], leaves[site.leaf], rtol=1e-12, atol=1e-14)


def test_kept_gradients_of_an_nchw_oihw_convolution(x64):
  """The kept per-example kernel gradients of a NCHW / OIHW convolution with stride, asymmetric padding
  and a dilated kernel are the per-example gradients in OIHW layout, and the weighted sum and inner
  products built from them equal the float64 references (the rules move δ channels last and the input
  channels first; this checks they move them back for a layout other than NHWC / HWIO)."""
  k = jax.random.split(jax.random.key(4), 4)
  params = {"k": jax.random.normal(k[0], (3, 2, 2, 2)), "w": jax.random.normal(k[1], (3 * 4 * 7, 3))}
  batch = (jax.random.normal(k[2], (4, 2, 7, 6)), jax.random.randint(k[3], (4,), 0, 3))
  plan = ghost.ghost_plan(_nchw_loss, params, batch)
  record = ghost.ghost_record(plan, _nchw_loss, params, batch, keep_grads=True)
  (conv,) = [s for s in plan.sites if s.kind == "conv"]
  assert conv.path in record.site_grads
  per_example = jax.vmap(jax.grad(_nchw_loss), in_axes=(None, 0))(params, batch)
  np.testing.assert_allclose(record.site_grads[conv.path], per_example["k"], rtol=1e-12, atol=1e-14)
  weights = jnp.linspace(-0.5, 1.5, 4)
  direction = jax.tree.map(lambda x: jnp.sin(jnp.arange(x.size, dtype=x.dtype).reshape(x.shape)), params)
  want_sum, want_inner = _references(_nchw_loss, params, batch, weights, direction)
  got_sum = bookkeeping.weighted_sum(plan, params, record, weights)
  chex.assert_trees_all_close(got_sum, want_sum, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(bookkeeping.inner_products(plan, params, record, direction), want_inner, rtol=1e-11)


def test_large_kernels_are_contracted_not_kept(x64):
  """A kernel larger than the site's output per example is never materialised per example."""

  def loss_fn(p, ex):
    x, y = ex
    h = jax.lax.conv_general_dilated(x[None], p["k"], (1, 1), "VALID", dimension_numbers=("NHWC", "HWIO", "NHWC"))
    return jnp.sum(jnp.tanh(h)) * y

  params = {"k": jnp.ones((3, 3, 8, 64)) * 0.01}  # 4,608 weights; output per example 2*2*64 = 256
  batch = (jnp.ones((3, 4, 4, 8)), jnp.arange(3.0))
  plan = ghost.ghost_plan(loss_fn, params, batch)
  record = ghost.ghost_record(plan, loss_fn, params, batch, keep_grads=True)
  assert record.site_grads == {}
  want, _ = _references(loss_fn, params, batch, jnp.ones(3), params)
  chex.assert_trees_all_close(bookkeeping.weighted_sum(plan, params, record, jnp.ones(3)), want, rtol=1e-12)


@pytest.mark.parametrize("model,kind", MODELS[:3], ids=IDS[:3])
def test_step_ops_share_one_ghost_pass_and_equal_the_two_pass_ops(x64, model, kind):
  """The step's ExampleOps from the book-keeping equal the separate passes (norms, backward, jvp)."""
  loss_fn, params, batch = _problem(model, kind, n=6)
  ops = blocks.example_ops(loss_fn, params, batch, 6, None, "auto", None)
  plain = blocks.example_ops(loss_fn, params, batch, 6, None, "vmap", None)
  weights = jnp.linspace(0.1, 1.0, 6)
  np.testing.assert_allclose(ops.norms(), plain.norms(), rtol=1e-11)
  (l1, g1), (l2, g2) = ops.grads(weights), plain.grads(weights)
  np.testing.assert_allclose(l1, l2, rtol=1e-14)
  chex.assert_trees_all_close(g1, g2, rtol=1e-12, atol=1e-13)
  np.testing.assert_allclose(ops.inner(g2), plain.inner(g2), rtol=1e-11)


@pytest.mark.parametrize(
  "form", [None, pytest.param("gram", marks=pytest.mark.slow), pytest.param("direct", marks=pytest.mark.slow)]
)
def test_clipped_grad_sum_book_keeping_equals_vmap_and_differentiates(x64, monkeypatch, form):
  monkeypatch.setattr(ghost_rules, "FORCE_FORM", form)
  loss_fn, params, batch = _problem(ConvNet(), "img", n=5)
  norms = pe.per_example_grad_norms(loss_fn, params, batch, method="vmap")
  clip = 0.5 * float(jnp.median(norms))
  w = jnp.array([1.0, 0.0, 2.0, 1.0, 0.5])
  g1, n1 = pe.clipped_grad_sum(loss_fn, params, batch, clip, weights=w)
  g2, n2 = pe.clipped_grad_sum(loss_fn, params, batch, clip, weights=w, method="vmap")
  np.testing.assert_allclose(n1, n2, rtol=1e-10)
  chex.assert_trees_all_close(g1, g2, rtol=1e-11, atol=1e-13)
  # differentiable in the data, clip factors included: the derivative of a plain vmap-of-grad clipped sum
  f = lambda m: (
    lambda x: sum(
      jnp.sum(v) for v in jax.tree.leaves(pe.clipped_grad_sum(loss_fn, params, (x, batch[1]), clip, method=m)[0])
    )
  )

  def reference(x):
    grads = jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))(params, (x, batch[1]))
    norms = jnp.sqrt(sum(jnp.sum(jnp.reshape(g, (5, -1)) ** 2, axis=1) for g in jax.tree.leaves(grads)))
    factors = jnp.minimum(1.0, clip / norms)
    return sum(jnp.sum(factors * jnp.sum(jnp.reshape(g, (5, -1)), axis=1)) for g in jax.tree.leaves(grads))

  expected = jax.grad(reference)(batch[0])
  for m in ("auto", "vmap"):
    np.testing.assert_allclose(jax.grad(f(m))(batch[0]), expected, rtol=1e-9, atol=1e-12)


@pytest.mark.slow
def test_pool_and_transposed_convolutions(x64):
  loss_fn, params, batch = _problem(PoolNet(), "img", n=4)
  w = jnp.array([0.3, 1.0, 0.0, 2.0])
  g1, _ = pe.clipped_grad_sum(loss_fn, params, batch, 0.7, weights=w)
  g2, _ = pe.clipped_grad_sum(loss_fn, params, batch, 0.7, weights=w, method="vmap")
  chex.assert_trees_all_close(g1, g2, rtol=1e-11, atol=1e-13)
