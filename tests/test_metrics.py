"""Tests for unlearn_jax.metrics: difficulty metrics and Spearman correlation (THEORY §6)."""

from __future__ import annotations

import jax
import jax.numpy as jnp
import linear_softmax  # tests/ helper module
import numpy as np
import pytest
from scipy import stats

from unlearn_jax.evaluate import metrics, statistics

NUM_FEATURES, NUM_CLASSES = 3, 4
apply_fn, loss_fn = linear_softmax.apply_fn, linear_softmax.loss_fn


def make_params(key, scale=1.0):
  return linear_softmax.make_params(key, NUM_FEATURES, NUM_CLASSES, scale)


def stack(trees):
  return jax.tree.map(lambda *v: jnp.stack(v), *trees)


def np_probs(params, x):
  logits = np.asarray(x, np.float64) @ np.asarray(params["w"], np.float64) + np.asarray(params["b"], np.float64)
  p = np.exp(logits - logits.max(1, keepdims=True))
  return logits, p / p.sum(1, keepdims=True)


@pytest.fixture(scope="module")
def toy():
  key = jax.random.key(0)
  k1, k2, k3 = jax.random.split(key, 3)
  x = jax.random.normal(k1, (9, NUM_FEATURES))
  y = jax.random.randint(k2, (9,), 0, NUM_CLASSES)
  seeds = [make_params(k, scale=1.5) for k in jax.random.split(k3, 3)]
  return x, y, seeds


def test_loss_confidence_margin_match_numpy(toy):
  x, y, seeds = toy
  params = seeds[0]
  logits, p = np_probs(params, x)
  yy = np.asarray(y)
  idx = np.arange(len(yy))
  np.testing.assert_allclose(metrics.per_example_loss(apply_fn, params, x, y), -np.log(p[idx, yy]), rtol=1e-5)
  np.testing.assert_allclose(metrics.confidence(apply_fn, params, x, y), p[idx, yy], rtol=1e-5)
  other = logits.copy()
  other[idx, yy] = -np.inf
  np.testing.assert_allclose(
    metrics.margin(apply_fn, params, x, y), logits[idx, yy] - other.max(1), rtol=1e-5, atol=1e-5
  )
  other_p = p.copy()
  other_p[idx, yy] = -np.inf
  np.testing.assert_allclose(
    metrics.margin(apply_fn, params, x, y, kind="prob"), p[idx, yy] - other_p.max(1), rtol=1e-5, atol=1e-6
  )
  # margin > 0 exactly when correct (no ties in random logits)
  np.testing.assert_array_equal(metrics.margin(apply_fn, params, x, y) > 0, metrics.correctness(apply_fn, params, x, y))
  with pytest.raises(ValueError, match="kind"):
    metrics.margin(apply_fn, params, x, y, kind="hinge")


def test_el2n_and_grand_match_numpy(toy):
  x, y, seeds = toy
  yy = np.asarray(y)
  expected_el2n = np.mean([np.linalg.norm(np_probs(p, x)[1] - np.eye(NUM_CLASSES)[yy], axis=1) for p in seeds], axis=0)
  np.testing.assert_allclose(metrics.el2n(apply_fn, stack(seeds), x, y), expected_el2n, rtol=1e-5)
  # Softmax cross-entropy of a linear model: grad_w = x (p - e_y)^T, grad_b = p - e_y, so
  # ||grad||^2 = (||x||^2 + 1) ||p - e_y||^2.
  xx = np.asarray(x, np.float64)
  expected_grand = np.mean(
    [
      np.sqrt(np.sum(xx**2, 1) + 1.0) * np.linalg.norm(np_probs(p, x)[1] - np.eye(NUM_CLASSES)[yy], axis=1)
      for p in seeds
    ],
    axis=0,
  )
  np.testing.assert_allclose(metrics.grand(loss_fn, stack(seeds), (x, y)), expected_grand, rtol=1e-4)


def test_forgetting_events_hand_built():
  # Rows are checkpoints (training order), columns examples:
  # ex0 1 0 1 0 1 -> 2 events; ex1 never learned -> 0; ex2 always correct -> 0; ex3 1 0 0 1 0 -> 2;
  # ex4 1 1 1 1 0 -> 1.
  correct = np.array([[1, 0, 1, 1, 1], [0, 0, 1, 0, 1], [1, 0, 1, 0, 1], [0, 0, 1, 1, 1], [1, 0, 1, 0, 0]])
  expected = [2, 0, 0, 2, 1]
  # independent loop reference
  ref = [sum(correct[t - 1, j] == 1 and correct[t, j] == 0 for t in range(1, 5)) for j in range(5)]
  assert ref == expected
  assert metrics.forgetting_events(correct).tolist() == expected
  assert metrics.forgetting_events(correct.astype(bool)).tolist() == expected
  got = metrics.forgetting_events(correct, never_learned=5.0).tolist()
  assert got == [2.0, 5.0, 0.0, 2.0, 1.0]
  with pytest.raises(ValueError, match="0/1"):
    metrics.forgetting_events(correct * 2)
  with pytest.raises(ValueError, match="2-D"):
    metrics.forgetting_events(correct[0])


def test_forgetting_events_from_checkpoints(toy):
  x, y, seeds = toy
  ckpts = stack(seeds)
  correct = metrics.correctness_along(apply_fn, ckpts, x, y)
  ref = np.stack([np.argmax(np_probs(p, x)[1], 1) == np.asarray(y) for p in seeds])
  np.testing.assert_array_equal(correct, ref)
  np.testing.assert_array_equal(metrics.forgetting_events(correct), np.sum(ref[:-1] & ~ref[1:], axis=0))


def test_learning_speed_is_mean_confidence(toy):
  x, y, seeds = toy
  conf = metrics.confidence_along(apply_fn, stack(seeds), x, y)
  yy = np.asarray(y)
  ref = np.stack([np_probs(p, x)[1][np.arange(len(yy)), yy] for p in seeds])
  np.testing.assert_allclose(conf, ref, rtol=1e-5)
  np.testing.assert_allclose(metrics.learning_speed(conf), ref.mean(0), rtol=1e-5)
  assert metrics.c_proxy is metrics.learning_speed


def test_memorization_toy_models():
  # 4 models, 3 examples.  Example 0: a "memorized" point -- correct exactly when trained on.
  # Example 1: an easy point, always correct.  Example 2: correct by 1 of 2 in-models and 2 of 2 out.
  in_mask = np.array([[1, 0, 1], [1, 1, 0], [0, 1, 1], [0, 0, 0]], bool)
  correct = np.array([[1, 1, 0], [1, 1, 1], [0, 1, 1], [0, 1, 1]], bool)
  mem = metrics.memorization(correct, in_mask)
  np.testing.assert_allclose(mem, [1.0, 0.0, 0.5 - 1.0])
  # never-out example -> NaN (no estimate)
  mem2 = metrics.memorization(correct, np.column_stack([in_mask[:, 0], np.ones(4, bool), in_mask[:, 2]]))
  assert np.isnan(mem2[1]) and mem2[0] == 1.0
  with pytest.raises(ValueError, match="same shape"):
    metrics.memorization(correct, in_mask[:, :2])


def test_memorization_with_lookup_table_models_and_random_halves():
  # "Models" that memorise: a model predicts example i correctly iff i was in its half, or i is easy.
  n, num_models = 20, 64
  masks = np.asarray(metrics.random_half_masks(jax.random.key(3), num_models, n))
  assert masks.shape == (num_models, n) and np.all(masks.sum(1) == n // 2)
  # rows differ (independent draws), and each example is in about half of the models
  assert len({m.tobytes() for m in masks}) == num_models
  frac_in = masks.mean(0)
  assert np.all(np.abs(frac_in - 0.5) < 4 * np.sqrt(0.25 / num_models))
  easy = np.arange(n) % 2 == 0
  correct = masks | easy[None, :]
  mem = np.asarray(metrics.memorization(correct, masks))
  np.testing.assert_allclose(mem[easy], 0.0)
  np.testing.assert_allclose(mem[~easy], 1.0)
  with pytest.raises(ValueError, match="num_examples"):
    metrics.random_half_masks(jax.random.key(0), 2, 1)


def test_rankdata_and_spearman_match_scipy_with_ties():
  rng = np.random.default_rng(0)
  for trial in range(5):
    n = 40  # one shape: one compilation
    a = rng.integers(0, 6, size=n).astype(np.float64)  # many ties
    b = a + rng.integers(-3, 4, size=n)
    if trial == 0:
      b = rng.normal(size=n)
    with jax.enable_x64(True):
      np.testing.assert_allclose(
        statistics.rankdata_average(jnp.asarray(a)), stats.rankdata(a, method="average"), rtol=1e-12
      )
      got = float(statistics.spearman(jnp.asarray(a), jnp.asarray(b)))
    assert got == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-10, abs=1e-12)
  # float32 path
  a, b = rng.normal(size=40), rng.normal(size=40)
  a[::3] = 0.5
  assert float(statistics.spearman(a.astype(np.float32), b.astype(np.float32))) == pytest.approx(
    stats.spearmanr(a, b).statistic, abs=1e-5
  )
  assert np.isnan(float(statistics.spearman(np.ones(4), np.arange(4.0))))
  with pytest.raises(ValueError, match="finite"):
    statistics.spearman(np.array([1.0, np.nan, 2.0]), np.arange(3.0))
  with pytest.raises(ValueError, match="same length"):
    statistics.spearman(np.arange(3.0), np.arange(4.0))


def test_spearman_jitted():
  a = jnp.array([3.0, 1.0, 2.0, 2.0, 5.0])
  b = jnp.array([1.0, 0.0, 4.0, 4.0, 9.0])
  assert float(jax.jit(statistics.spearman)(a, b)) == pytest.approx(stats.spearmanr(a, b).statistic, rel=1e-6)
