"""Tests for unlearn_jax.models: values against float64 NumPy references, vmap, training, errors."""

from __future__ import annotations

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
import pytest

from unlearn_jax import models
from unlearn_jax import per_example as pe
from unlearn_jax.per_example import ghost


def _perturb(params, seed=0, scale=0.3):
  """Random parameters (so zero-initialised leaves do not hide errors); float64 under x64."""
  leaves, tree = jax.tree.flatten(jax.tree.map(lambda leaf: leaf.astype(jnp.result_type(float)), params))
  keys = jax.random.split(jax.random.key(seed), len(leaves))
  return jax.tree.unflatten(
    tree, [leaf + scale * jax.random.normal(k, leaf.shape, leaf.dtype) for leaf, k in zip(leaves, keys)]
  )


def _np(tree):
  return jax.tree.map(lambda a: np.asarray(a, np.float64), tree)


# --------------------------------------------------------------------------------------------------
# NumPy references
# --------------------------------------------------------------------------------------------------


def _np_log_softmax(z):
  z = z - z.max()
  return z - np.log(np.exp(z).sum())


def _np_conv_same(x, kernel, bias, stride=1, padding=None):
  """Cross-correlation of one HWC image with an (kh, kw, cin, cout) kernel, explicit loops."""
  kh, kw, _, cout = kernel.shape
  if padding is None:  # flax "SAME" for stride 1
    ph, pw = (kh - 1) // 2, (kw - 1) // 2
    pads = ((ph, kh - 1 - ph), (pw, kw - 1 - pw))
  else:
    pads = ((padding, padding), (padding, padding))
  xp = np.pad(x, (pads[0], pads[1], (0, 0)))
  h_out = (xp.shape[0] - kh) // stride + 1
  w_out = (xp.shape[1] - kw) // stride + 1
  out = np.zeros((h_out, w_out, cout))
  for i in range(h_out):
    for j in range(w_out):
      patch = xp[i * stride : i * stride + kh, j * stride : j * stride + kw, :]
      out[i, j] = np.tensordot(patch, kernel, axes=([0, 1, 2], [0, 1, 2])) + bias
  return out


def _np_maxpool2(x):
  h, w, c = x.shape
  xp = np.pad(x, ((0, h % 2), (0, w % 2), (0, 0)), constant_values=-np.inf)
  return xp.reshape(xp.shape[0] // 2, 2, xp.shape[1] // 2, 2, c).max(axis=(1, 3))


def _resnet18_param_count(num_classes, in_ch=3, widths=(64, 128, 256, 512)):
  """Independent count: 3x3 convs with bias, 1x1 projection shortcuts with bias, dense head."""
  conv = lambda k, cin, cout: k * k * cin * cout + cout
  total = conv(3, in_ch, widths[0])
  cin = widths[0]
  for _stage, w in enumerate(widths):
    for _block in range(2):
      total += conv(3, cin, w) + conv(3, w, w)
      if cin != w:
        total += conv(1, cin, w)
      cin = w
  return total + widths[-1] * num_classes + num_classes


# --------------------------------------------------------------------------------------------------
# Values
# --------------------------------------------------------------------------------------------------


def test_logistic_logits_equal_xw_plus_b():
  with jax.enable_x64(True):
    model = models.logistic_regression(4)
    x = np.random.default_rng(0).normal(size=(6, 5))
    params = _perturb(model.init_fn(jax.random.key(1), jnp.asarray(x[0])))
    p = _np(params)
    ref = x @ p["linear"]["kernel"] + p["linear"]["bias"]
    got = jax.vmap(model.apply_fn, in_axes=(None, 0))(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-12)
    assert got.dtype == jnp.float64


@pytest.mark.parametrize("activation, fn", [("relu", lambda h: np.maximum(h, 0)), ("tanh", np.tanh)])
def test_mlp_matches_numpy_forward(activation, fn):
  with jax.enable_x64(True):
    model = models.mlp((7, 5), 3, activation=activation)
    x = np.random.default_rng(1).normal(size=(4, 6))
    params = _perturb(model.init_fn(jax.random.key(0), jnp.asarray(x[0])), seed=2)
    p = _np(params)
    h = x
    for i in range(2):
      h = fn(h @ p[f"dense_{i}"]["kernel"] + p[f"dense_{i}"]["bias"])
    ref = h @ p["head"]["kernel"] + p["head"]["bias"]
    got = jax.vmap(model.apply_fn, in_axes=(None, 0))(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-11, atol=1e-12)


@pytest.mark.slow
def test_small_cnn_matches_numpy_forward():
  with jax.enable_x64(True):
    model = models.small_cnn(4, channels=(3, 2))
    x = np.random.default_rng(2).normal(size=(7, 6, 2))  # odd height: SAME pooling pads
    params = _perturb(model.init_fn(jax.random.key(0), jnp.asarray(x)), seed=3)
    p = _np(params)
    h = x
    for i in range(2):
      h = _np_maxpool2(np.maximum(_np_conv_same(h, p[f"conv_{i}"]["kernel"], p[f"conv_{i}"]["bias"]), 0))
    ref = h.reshape(-1) @ p["head"]["kernel"] + p["head"]["bias"]
    got = model.apply_fn(params, jnp.asarray(x))
    np.testing.assert_allclose(np.asarray(got), ref, rtol=1e-10, atol=1e-12)


@pytest.mark.slow
def test_cross_entropy_matches_numpy_log_softmax():
  with jax.enable_x64(True):
    model = models.mlp((5,), 4)
    rng = np.random.default_rng(3)
    x, y = rng.normal(size=(6, 3)), rng.integers(0, 4, 6)
    params = _perturb(model.init_fn(jax.random.key(0), jnp.asarray(x[0])), seed=4, scale=1.0)
    for wd in (0.0, 0.3):
      loss_fn = models.cross_entropy_loss_fn(model.apply_fn, weight_decay=wd)
      sq = sum(float(np.sum(leaf**2)) for leaf in jax.tree.leaves(_np(params)))
      for i in range(6):
        logits = np.asarray(model.apply_fn(params, jnp.asarray(x[i])), np.float64)
        ref = -_np_log_softmax(logits)[y[i]] + 0.5 * wd * sq
        got = float(loss_fn(params, (jnp.asarray(x[i]), jnp.asarray(y[i]))))
        np.testing.assert_allclose(got, ref, rtol=1e-12)
      batched = jax.vmap(loss_fn, in_axes=(None, 0))(params, (jnp.asarray(x), jnp.asarray(y)))
      np.testing.assert_allclose(batched[2], loss_fn(params, (jnp.asarray(x[2]), y[2])), rtol=1e-12)


def test_cross_entropy_gradient_is_softmax_minus_onehot():
  with jax.enable_x64(True):
    model = models.logistic_regression(3)
    x, y = np.array([0.5, -1.0]), 2
    params = _perturb(model.init_fn(jax.random.key(0), jnp.asarray(x)), seed=5)
    g = jax.grad(models.cross_entropy_loss_fn(model.apply_fn))(params, (jnp.asarray(x), y))
    p = _np(params)
    z = x @ p["linear"]["kernel"] + p["linear"]["bias"]
    r = np.exp(_np_log_softmax(z)) - np.eye(3)[y]
    np.testing.assert_allclose(np.asarray(g["linear"]["kernel"]), np.outer(x, r), rtol=1e-12)
    np.testing.assert_allclose(np.asarray(g["linear"]["bias"]), r, rtol=1e-12)


def test_weight_decay_rejects_negative():
  with pytest.raises(ValueError, match="weight_decay must be a finite non-negative number, got -1"):
    models.cross_entropy_loss_fn(lambda p, x: x, weight_decay=-1)


@pytest.mark.parametrize(
  "name, kwargs, shape",
  [
    ("logistic_regression", {}, (5,)),
    ("mlp", {"hidden_sizes": (6,)}, (5,)),
    ("small_cnn", {"channels": (2, 3)}, (6, 6, 1)),
  ],
)
@pytest.mark.slow
def test_vmapped_apply_equals_per_example_loop(name, kwargs, shape):
  model = models.get_model(name, 3, **kwargs)
  x = jax.random.normal(jax.random.key(0), (4,) + shape)
  params = _perturb(model.init_fn(jax.random.key(1), x[0]))
  batched = jax.jit(jax.vmap(model.apply_fn, in_axes=(None, 0)))(params, x)
  loop = jnp.stack([model.apply_fn(params, x[i]) for i in range(4)])
  assert batched.shape == (4, 3)
  np.testing.assert_allclose(batched, loop, rtol=1e-5, atol=1e-6)


@pytest.mark.parametrize(
  "name, kwargs, shape, primitive",
  [
    ("logistic_regression", {}, (5,), "dot_general"),
    ("mlp", {}, (5,), "dot_general"),
    ("small_cnn", {"channels": (2,)}, (6, 6, 1), "conv_general_dilated"),
  ],
)
def test_vmapped_apply_lowers_to_plain_ops(name, kwargs, shape, primitive):
  model = models.get_model(name, 3, **kwargs)
  x = jnp.ones((2,) + shape)
  params = model.init_fn(jax.random.key(0), x[0])
  jaxpr = str(jax.make_jaxpr(jax.vmap(model.apply_fn, in_axes=(None, 0)))(params, x))
  assert primitive in jaxpr


def test_predict_and_accuracy_against_numpy():
  model = models.logistic_regression(3)
  rng = np.random.default_rng(4)
  x = rng.normal(size=(20, 4)).astype(np.float32)
  y = rng.integers(0, 3, 20)
  params = _perturb(model.init_fn(jax.random.key(0), x[0]), scale=1.0)
  p = _np(params)
  pred_ref = np.argmax(x @ p["linear"]["kernel"] + p["linear"]["bias"], axis=1)
  np.testing.assert_array_equal(models.predict_fn(model.apply_fn)(params, x), pred_ref)
  acc_ref = np.mean(pred_ref == y)
  np.testing.assert_allclose(float(models.accuracy(model.apply_fn, params, x, y)), acc_ref, rtol=1e-6)
  np.testing.assert_allclose(float(models.accuracy(model.apply_fn, params, x, y, batch_size=6)), acc_ref, rtol=1e-6)
  jitted = jax.jit(lambda q, xx, yy: models.accuracy(model.apply_fn, q, xx, yy, batch_size=6))
  np.testing.assert_allclose(float(jitted(params, x, y)), acc_ref, rtol=1e-6)  # the chunks as a loop
  with pytest.raises(ValueError, match="share a non-empty leading example axis"):
    models.accuracy(model.apply_fn, params, x, y[:5])


# --------------------------------------------------------------------------------------------------
# ResNet-18
# --------------------------------------------------------------------------------------------------


def test_resnet18_param_count():
  params = jax.eval_shape(models.resnet18(10).init_fn, jax.random.key(1), jnp.ones((32, 32, 3)))
  assert models.num_params(params) == _resnet18_param_count(10) == 11_169_162
  # No normalisation layers anywhere: every leaf is a conv/dense kernel or bias.
  names = {path[-1].key for path, _ in jax.tree_util.tree_leaves_with_path(params)}
  assert names == {"kernel", "bias"}
  out = jax.eval_shape(models.resnet18(10).apply_fn, params, jnp.ones((32, 32, 3)))
  assert out.shape == (10,)


@pytest.mark.slow
def test_resnet18_batch_equals_single_examples():
  model = models.resnet18(10)
  x = jax.random.uniform(jax.random.key(0), (2, 32, 32, 3))
  params = _perturb(model.init_fn(jax.random.key(1), x[0]), scale=0.01)
  out = jax.jit(jax.vmap(model.apply_fn, in_axes=(None, 0)))(params, x)
  assert out.shape == (2, 10) and bool(jnp.all(jnp.isfinite(out)))
  # Examples are independent (no batch statistics): a batch of two equals the two examples alone.
  single = jax.jit(model.apply_fn)(params, x[1])
  np.testing.assert_allclose(out[1], single, rtol=1e-4, atol=1e-5)


@pytest.mark.slow
def test_resnet18_apply_and_residual_branches_start_at_zero():
  # Runs init/apply on one 32x32x3 example. Zero-initialised conv2: at init every residual branch outputs
  # only its bias, so changing every branch's first conv (conv1) leaves the logits unchanged; changing
  # one conv2 does change them.
  model = models.resnet18(10)
  x = jax.random.uniform(jax.random.key(0), (32, 32, 3))
  params = model.init_fn(jax.random.key(1), x)
  apply = jax.jit(model.apply_fn)
  base = apply(params, x)
  assert base.shape == (10,) and bool(jnp.all(jnp.isfinite(base)))
  blocks = [f"stage{s}_block{b}" for s in range(4) for b in range(2)]
  moved = dict(params)
  for i, blk in enumerate(blocks):
    moved[blk] = dict(params[blk], conv1=_perturb(params[blk]["conv1"], seed=i, scale=0.5))
  np.testing.assert_array_equal(apply(moved, x), base)
  moved = dict(params)
  moved["stage3_block1"] = dict(params["stage3_block1"], conv2=_perturb(params["stage3_block1"]["conv2"], scale=0.5))
  assert float(jnp.max(jnp.abs(apply(moved, x) - base))) > 1e-3


# --------------------------------------------------------------------------------------------------
# Training
# --------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "name, kwargs, shape, steps, lr",
  [
    ("logistic_regression", {}, (8,), 20, 0.5),
    ("mlp", {"hidden_sizes": (16,)}, (8,), 20, 0.5),
    ("mlp", {"hidden_sizes": (16,), "activation": "tanh"}, (8,), 20, 0.5),
    ("small_cnn", {"channels": (4,)}, (6, 6, 1), 20, 0.2),
    pytest.param("resnet18", {}, (32, 32, 3), 5, 0.05, marks=pytest.mark.slow),
  ],
)
def test_every_model_trains(name, kwargs, shape, steps, lr):
  n = 8 if name != "resnet18" else 4
  x = jax.random.normal(jax.random.key(0), (n,) + shape)
  y = jnp.arange(n) % 3
  model = models.get_model(name, 3, **kwargs)
  params = model.init_fn(jax.random.key(1), x[0])
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn, weight_decay=1e-4)

  def mean_loss(p):
    return jnp.mean(jax.vmap(loss_fn, in_axes=(None, 0))(p, (x, y)))

  @jax.jit
  def step(p):
    loss, g = jax.value_and_grad(mean_loss)(p)
    return jax.tree.map(lambda a, b: a - lr * b, p, g), loss

  first = None
  for _ in range(steps):
    params, loss = step(params)
    first = loss if first is None else first
  final = mean_loss(params)
  assert bool(jnp.isfinite(final))
  # Small models fit 8 random points quickly; the ResNet gets only 5 steps (it fell 1.22 -> 0.94).
  factor = 0.9 if name == "resnet18" else 0.7
  assert float(final) < factor * float(first), (float(first), float(final))


# --------------------------------------------------------------------------------------------------
# Errors
# --------------------------------------------------------------------------------------------------


def test_get_model_unknown_name_lists_allowed():
  with pytest.raises(
    ValueError,
    match=r"'vgg' is not registered: expected one of \[.*'logistic_regression', 'mlp', 'resnet18', 'small_cnn'",
  ):
    models.get_model("vgg", 10)
  with pytest.raises(TypeError, match="bad keyword arguments"):
    models.get_model("logistic_regression", 10, hidden_sizes=(3,))


@pytest.mark.parametrize(
  "build, match",
  [
    (lambda: models.logistic_regression(1), "num_classes must be an integer >= 2, got 1"),
    (lambda: models.mlp((8,), 10, activation="sigmoidal"), "activation must be one of"),
    (lambda: models.mlp((0,), 10), "hidden_sizes must be positive integers"),
    (lambda: models.small_cnn(10, channels=()), "channels must be a non-empty sequence"),
    (lambda: models.resnet18(2.5), "num_classes must be an integer >= 2, got 2.5"),
  ],
)
def test_builders_reject_bad_args(build, match):
  with pytest.raises(ValueError, match=match):
    build()


def test_cnn_rejects_non_image_example():
  model = models.small_cnn(3)
  with pytest.raises(ValueError, match=r"one HWC image \(3 axes\), got shape \(64,\)"):
    model.init_fn(jax.random.key(0), jnp.ones(64))


@pytest.mark.slow
def test_small_cnn_gradients_equal_flax_max_pool_reference():
  # small_cnn pools with a scatter-free max-pool; values, gradients (reverse and forward mode) must equal
  # the same network built on flax's nn.max_pool (XLA reduce_window / select_and_scatter), ties included.

  class Ref(nn.Module):
    @nn.compact
    def __call__(self, x):
      h = x[None]
      for i, c in enumerate((3, 2)):
        h = nn.relu(nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{i}")(h))
        h = nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")
      return nn.Dense(4, name="head")(h.reshape(-1))

  with jax.enable_x64(True):
    model = models.small_cnn(4, channels=(3, 2))
    x = jnp.asarray(np.random.default_rng(7).normal(size=(3, 7, 6, 2)))  # odd sizes: padded windows
    params = _perturb(model.init_fn(jax.random.key(0), x[0]), seed=8)
    ref_apply = lambda p, v: Ref().apply({"params": p}, v)
    loss = lambda apply: lambda p: jnp.sum(jax.vmap(apply, (None, 0))(p, x) ** 2)
    np.testing.assert_array_equal(
      jax.vmap(model.apply_fn, (None, 0))(params, x), jax.vmap(ref_apply, (None, 0))(params, x)
    )
    g, g_ref = jax.grad(loss(model.apply_fn))(params), jax.grad(loss(ref_apply))(params)
    for a, b in zip(jax.tree.leaves(g), jax.tree.leaves(g_ref)):
      np.testing.assert_allclose(a, b, rtol=1e-12, atol=1e-12)
    t = jax.tree.map(jnp.ones_like, params)
    np.testing.assert_allclose(
      jax.jvp(loss(model.apply_fn), (params,), (t,))[1], jax.jvp(loss(ref_apply), (params,), (t,))[1], rtol=1e-12
    )


@pytest.mark.slow  # 29 s; the pool and conv paths are also covered by test_ghost.py's PoolNet / ConvNet
def test_small_cnn_ghost_norms_equal_vmap_float64():

  with jax.enable_x64(True):
    model = models.small_cnn(3, channels=(2, 3))
    x = jnp.asarray(np.random.default_rng(9).normal(size=(4, 9, 8, 1)))
    params = _perturb(model.init_fn(jax.random.key(0), x[0]), seed=10)
    loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
    batch = (x, jnp.array([0, 1, 2, 1]))
    assert ghost.ghost_plan(loss_fn, params, batch).fallback == ()
    np.testing.assert_allclose(
      pe.per_example_grad_norms(loss_fn, params, batch, method="ghost"),
      pe.per_example_grad_norms(loss_fn, params, batch, method="vmap"),
      rtol=1e-10,
    )
