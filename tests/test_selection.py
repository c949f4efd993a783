"""Tests for unlearn_jax.selection: forget sets by per-example scores."""

from __future__ import annotations

import jax
import numpy as np
import pytest

from unlearn_jax.evaluate import selection as sel


@pytest.fixture(scope="module")
def scores():
  return np.random.default_rng(0).normal(size=50)


@pytest.mark.parametrize("k", [2, 10, 33.3, 100])
def test_top_and_bottom_k_percent_members(scores, k):
  n = scores.size
  size = int(round(k / 100 * n))
  top = np.asarray(sel.top_k_percent(scores, k))
  bottom = np.asarray(sel.bottom_k_percent(scores, k))
  assert top.size == size and bottom.size == size
  # Independent reference: the examples whose score is among the `size` largest / smallest.
  np.testing.assert_array_equal(top, np.sort(np.argsort(scores)[::-1][:size]))
  np.testing.assert_array_equal(bottom, np.sort(np.argsort(scores)[:size]))
  if size < n:
    assert scores[top].min() > scores[np.setdiff1d(np.arange(n), top)].max()
    assert scores[bottom].max() < scores[np.setdiff1d(np.arange(n), bottom)].min()


def test_ties_broken_by_index():
  s = np.array([1.0, 2.0, 2.0, 2.0, 0.0])
  assert sel.top_k_percent(s, 40).tolist() == [1, 2]
  assert sel.bottom_k_percent(s, 40).tolist() == [0, 4]
  # integer scores are accepted
  assert sel.top_k_percent(np.array([3, 1, 2]), 34).tolist() == [0]


def test_quantile_bins_partition_by_rank(scores):
  bins = sel.quantile_bins(scores, 4)
  allidx = np.concatenate([np.asarray(b) for b in bins])
  np.testing.assert_array_equal(np.sort(allidx), np.arange(50))
  assert [len(b) for b in bins] == [13, 13, 12, 12]
  for lo, hi in zip(bins[:-1], bins[1:]):
    assert scores[np.asarray(lo)].max() < scores[np.asarray(hi)].min()
  # constant scores still give non-empty equal-count bins
  assert [len(b) for b in sel.quantile_bins(np.zeros(9), 3)] == [3, 3, 3]


def test_random_subset_size_and_key():
  a = np.asarray(sel.random_subset(jax.random.key(0), 30, 10))
  b = np.asarray(sel.random_subset(jax.random.key(0), 30, 10))
  c = np.asarray(sel.random_subset(jax.random.key(1), 30, 10))
  np.testing.assert_array_equal(a, b)
  assert a.size == 10 and np.unique(a).size == 10 and a.min() >= 0 and a.max() < 30
  assert not np.array_equal(a, c)
  # Uniformity: over many keys every index is picked ~ size/n of the time.
  counts = np.zeros(30)
  for s in range(300):
    counts[np.asarray(sel.random_subset(jax.random.key(s), 30, 10))] += 1
  expected, sd = 300 * 10 / 30, np.sqrt(300 * (1 / 3) * (2 / 3))
  assert np.all(np.abs(counts - expected) < 5 * sd)


def test_select_forget_set_dispatch(scores):
  n = scores.size
  np.testing.assert_array_equal(sel.select_forget_set(scores, "top", size=5), sel.top_k_percent(scores, 10))
  np.testing.assert_array_equal(sel.select_forget_set(scores, "bottom", fraction=0.1), sel.bottom_k_percent(scores, 10))
  rand = sel.select_forget_set(scores, "random", size=5, key=jax.random.key(0))
  assert rand.size == 5
  np.testing.assert_array_equal(rand, sel.random_subset(jax.random.key(0), n, 5))
  np.testing.assert_array_equal(sel.select_forget_set(scores, "bin:3/4"), sel.quantile_bins(scores, 4)[3])
  sub = np.asarray(sel.select_forget_set(scores, "bin:0/2", size=7, key=jax.random.key(1)))
  assert sub.size == 7 and set(sub) <= set(np.asarray(sel.quantile_bins(scores, 2)[0]).tolist())


@pytest.mark.parametrize(
  "kwargs, match",
  [
    (dict(selection="top"), "exactly one"),
    (dict(selection="top", size=3, fraction=0.1), "exactly one"),
    (dict(selection="top", size=0), "size"),
    (dict(selection="top", size=51), "size"),
    (dict(selection="top", fraction=0.001), "empty"),
    (dict(selection="random", size=3), "key"),
    (dict(selection="bin:4/4"), "0 <= i < q"),
    (dict(selection="bin:1/60"), "num_bins"),
    (dict(selection="bin:0/10", size=6, key=jax.random.key(0)), "fewer"),
    (dict(selection="middle", size=3), "selection"),
  ],
)
def test_select_forget_set_errors(scores, kwargs, match):
  with pytest.raises(ValueError, match=match):
    sel.select_forget_set(scores, **kwargs)


def test_nan_and_empty_scores_rejected():
  with pytest.raises(ValueError, match="NaN"):
    sel.top_k_percent(np.array([1.0, np.nan]), 50)
  with pytest.raises(ValueError, match="non-empty"):
    sel.top_k_percent(np.array([]), 50)
  with pytest.raises(ValueError, match="percentage"):
    sel.top_k_percent(np.arange(4.0), 0)
  with pytest.raises(ValueError, match="empty set"):
    sel.bottom_k_percent(np.arange(4.0), 5)


def test_check_forget_indices():
  assert sel.check_forget_indices(np.array([3, 0, 2]), 4).tolist() == [0, 2, 3]
  with pytest.raises(ValueError, match="distinct"):
    sel.check_forget_indices([1, 2, 1], 4)
  with pytest.raises(ValueError, match="out-of-range"):
    sel.check_forget_indices([1, 4], 4)
  with pytest.raises(ValueError, match="out-of-range"):
    sel.check_forget_indices([-1], 4)
  with pytest.raises(ValueError, match="non-empty"):
    sel.check_forget_indices([], 4)
  with pytest.raises(ValueError, match="larger"):
    sel.check_forget_indices(np.arange(5), 4)
  with pytest.raises(TypeError, match="integer"):
    sel.check_forget_indices([0.5], 4)


def test_ties_are_broken_by_the_secondary_key_not_the_index():
  rng = np.random.default_rng(0)
  scores = np.concatenate([np.full(30, 5.0), rng.uniform(0, 4, 70)])  # a saturated spike of 30 at the maximum
  secondary = rng.uniform(size=100)
  rng.shuffle(perm := np.arange(100))
  scores, secondary = scores[perm], secondary[perm]
  top = np.asarray(sel.select_forget_set(scores, "top", size=10, tie_break=secondary))
  spike = np.flatnonzero(scores == 5.0)
  expected = np.sort(spike[np.argsort(-secondary[spike])[:10]])  # the 10 of the spike with the largest key
  np.testing.assert_array_equal(top, expected)
  bottom = np.asarray(sel.select_forget_set(-scores, "bottom", size=10, tie_break=-secondary))
  np.testing.assert_array_equal(bottom, expected)
  # scores within 2% of the maximum count as tied: the key decides among them, not the tiny differences
  near = scores - 0.01 * rng.uniform(size=100) * (scores == 5.0)
  top_near = np.asarray(sel.select_forget_set(near, "top", size=10, tie_break=secondary, ties_within=0.02))
  assert set(top_near) <= set(spike) and len(set(top_near) & set(expected)) >= 8
  with pytest.raises(ValueError, match="tie_break must have the shape"):
    sel.select_forget_set(scores, "top", size=3, tie_break=secondary[:5])
  with pytest.raises(ValueError, match="ties_within"):
    sel.select_forget_set(scores, "top", size=3, ties_within=1.5)


def test_ties_are_relative_to_the_values_themselves():
  # a geometric grid: 10.0 and 10.05 tie (within 1%) at the bottom, 12 does not, however large the maximum
  scores = np.array([10.05, 10.0, 12.0, 1000.0, 990.0, 0.0])
  key = np.array([0.1, 0.9, 0.0, 0.5, 0.7, 0.3])
  assert sel.select_forget_set(scores, "bottom", size=2, tie_break=key, ties_within=0.01).tolist() == [0, 5]
  assert sel.select_forget_set(scores, "bottom", size=3, tie_break=key, ties_within=0.01).tolist() == [0, 1, 5]
  # 1000 and 990 lie within 1.1%: with 2% they tie and the key (0.7 > 0.5) picks 990 first
  assert sel.select_forget_set(scores, "top", size=1, tie_break=key, ties_within=0.02).tolist() == [4]
  assert sel.select_forget_set(scores, "top", size=1, tie_break=key, ties_within=0.0).tolist() == [3]
