"""Loops that stay fast on XLA:CPU: convolutional bodies are unrolled (jax-ml/jax#12868), with the same
values as the loop, and the runtime runs a convolutional model one step per compiled call."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlearn_jax as uj
from unlearn_jax import _loops, models, runtime
from unlearn_jax.runtime import engine

pytestmark = pytest.mark.skipif(jax.default_backend() != "cpu", reason="the policy applies on CPU only")


def _conv(k, x):
  return jnp.tanh(jax.lax.conv_general_dilated(x[None], k, (1, 1), "SAME", dimension_numbers=("NHWC", "HWIO", "NHWC")))


def test_contains_convolution_sees_nested_jaxprs():
  k, x = jnp.ones((3, 3, 2, 4)), jnp.ones((5, 5, 2))
  nested = lambda k, x: jax.lax.cond(True, lambda: jnp.sum(jax.vmap(lambda xi: _conv(k, xi))(x[None])), lambda: 0.0)
  assert _loops.contains_convolution(jax.make_jaxpr(nested)(k, x))
  assert not _loops.contains_convolution(jax.make_jaxpr(lambda a, b: jnp.sum(a @ b))(jnp.ones((2, 2)), jnp.ones(2)))


def test_map_and_scan_unroll_convolutions_with_the_loops_values():
  rng = np.random.default_rng(0)
  k = jnp.asarray(rng.normal(size=(3, 3, 2, 4)), jnp.float32)
  xs = jnp.asarray(rng.normal(size=(3, 6, 6, 2)), jnp.float32)
  f = lambda x: jnp.sum(_conv(k, x))
  unrolled = jax.jit(lambda xs: _loops.map(f, xs))
  assert "while" not in unrolled.lower(xs).compile().as_text()
  np.testing.assert_allclose(unrolled(xs), jax.lax.map(f, xs), rtol=1e-6)
  body = lambda c, x: (c + f(x), f(x) * 2)
  (c1, y1), (c2, y2) = jax.jit(lambda xs: _loops.scan(body, 0.0, xs))(xs), jax.lax.scan(body, 0.0, xs)
  np.testing.assert_allclose(c1, c2, rtol=1e-6)
  np.testing.assert_allclose(y1, y2, rtol=1e-6)
  # a body without a convolution keeps its loop
  assert "while" in jax.jit(lambda xs: _loops.map(jnp.sum, xs)).lower(xs).compile().as_text()


def test_a_convolutional_model_trains_one_step_per_call_with_the_same_result(monkeypatch):
  model = models.small_cnn(3, (2, 3))
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  params = model.init_fn(jax.random.key(0), jnp.ones((8, 8, 1)))
  rng = np.random.default_rng(1)
  data = (jnp.asarray(rng.normal(size=(16, 8, 8, 1)), jnp.float32), jnp.asarray(rng.integers(0, 3, 16)))
  assert engine.straight_line(uj.sgld(loss_fn, mode="shuffled", batch_size=4), params, data, None)
  kw = dict(
    num_steps=5,
    step_size=0.1,
    temperature=1e-4,
    mode="shuffled",
    batch_size=4,
    clip_norm=1.0,
    key=jax.random.key(2),
    progress=False,
    steps_per_chunk=5,
  )
  straight = runtime.train(loss_fn, params, data, **kw)
  monkeypatch.setattr(engine, "straight_line", lambda *a: False)
  looped = runtime.train(loss_fn, params, data, **kw)
  for a, b in zip(jax.tree.leaves(straight.state.params), jax.tree.leaves(looped.state.params)):
    np.testing.assert_allclose(a, b, rtol=1e-5, atol=1e-7)
  np.testing.assert_allclose(straight.history["loss"], looped.history["loss"], rtol=1e-5)
