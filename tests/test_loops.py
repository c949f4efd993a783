"""Tests of unlearn_jax.loops: train / unlearn / retrain drivers (issue 5; issue 10 divergence, lock)."""

from __future__ import annotations

import math
import os
import time

import chex
import jax
import jax.numpy as jnp
import numpy as np
import optax
import pytest

from unlearn_jax import _compile, accounting, data, models
from unlearn_jax import algorithms as sgld
from unlearn_jax import runtime as loops
from unlearn_jax.runtime import checkpoint as ck

# ------------------------------------------------------------------------------------------------
# Small problems
# ------------------------------------------------------------------------------------------------


def softmax_loss(p, ex):
  x, y = ex
  logits = x @ p["w"] + p["b"]
  return jax.nn.logsumexp(logits) - logits[y]


def _problem(n=40, d=6, k=3, seed=0, dtype=np.float32):
  rng = np.random.default_rng(seed)
  x = rng.normal(size=(n, d)).astype(dtype)
  y = rng.integers(0, k, size=n).astype(np.int32)
  params = {"w": (0.3 * rng.normal(size=(d, k))).astype(dtype), "b": (0.1 * rng.normal(size=k)).astype(dtype)}
  return x, y, params


def _np_softmax_grads(p, x, y):
  """Per-example gradients of the softmax cross-entropy, float64 closed form."""
  logits = x @ p["w"] + p["b"]
  logits = logits - logits.max(axis=1, keepdims=True)
  prob = np.exp(logits) / np.exp(logits).sum(axis=1, keepdims=True)
  delta = prob.copy()
  delta[np.arange(len(y)), y] -= 1.0
  gw = x[:, :, None] * delta[:, None, :]
  gb = delta
  loss = -np.log(prob[np.arange(len(y)), y])
  return loss, gw, gb


def _np_gd_reference(p, x, y, mask, *, steps, eta, clip, wd, radius, l1, total):
  """Float64 NumPy re-derivation of the noise-free fine-tuning step (THEORY §0, §1 full batch)."""
  w, b = p["w"].astype(np.float64), p["b"].astype(np.float64)
  out = {0: (w.copy(), b.copy())}
  for t in range(steps):
    _, gw, gb = _np_softmax_grads({"w": w, "b": b}, x, y)
    norms = np.sqrt((gw**2).sum(axis=(1, 2)) + (gb**2).sum(axis=1))
    factor = np.ones_like(norms) if clip is None else np.minimum(1.0, clip / np.maximum(norms, 1e-300))
    cnt = mask.sum()
    mw = (mask * factor)[:, None, None] * gw
    mb = (mask * factor)[:, None] * gb
    dw = mw.sum(0) / cnt + wd * w
    db = mb.sum(0) / cnt + wd * b
    if l1:
      gamma = l1 * max(0.0, 1.0 - t / total)
      dw = dw + gamma * np.sign(w)
      db = db + gamma * np.sign(b)
    w, b = w - eta * dw, b - eta * db
    if radius is not None:
      nrm = math.sqrt((w**2).sum() + (b**2).sum())
      s = min(1.0, radius / nrm)
      w, b = w * s, b * s
    out[t + 1] = (w.copy(), b.copy())
  return out


# ------------------------------------------------------------------------------------------------
# Noise-free paths against float64 references
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "method,clip,radius,l1",
  [
    ("sgd", None, None, 0.0),
    ("sgd", 0.3, 1.5, 0.0),
    ("l1_sparse", 0.5, None, 0.02),
  ],
)
def test_unlearn_noise_free_methods_match_float64_reference(method, clip, radius, l1):
  with jax.enable_x64(True):
    x, y, p = _problem(dtype=np.float64)
    mask = np.ones(len(y))
    mask[:5] = 0.0
    steps = (0, 3, 11, 25)
    options = {"l1_strength": l1} if method == "l1_sparse" else {}
    res = loops.unlearn(
      softmax_loss,
      p,
      (x, y),
      method=method,
      key=jax.random.key(0),
      step_size=0.7,
      record_steps=steps,
      clip_norm=clip,
      weight_decay=0.05,
      projection_radius=radius,
      data_mask=mask,
      steps_per_chunk=7,
      progress=False,
      **options,
    )
    ref = _np_gd_reference(
      p,
      x,
      y,
      mask,
      steps=25,
      eta=0.7,
      clip=clip,
      wd=0.05,
      radius=radius,
      l1=l1 if method == "l1_sparse" else 0.0,
      total=25,
    )
    assert res.recorded_steps.tolist() == list(steps)
    for g, s in enumerate(steps):
      np.testing.assert_allclose(np.asarray(res.recorded["w"][g]), ref[s][0], rtol=1e-10, atol=1e-12)
      np.testing.assert_allclose(np.asarray(res.recorded["b"][g]), ref[s][1], rtol=1e-10, atol=1e-12)
    # The history's loss at step t is the masked mean loss at the parameters before step t.
    for t in (1, 12, 25):
      loss, _, _ = _np_softmax_grads({"w": ref[t - 1][0], "b": ref[t - 1][1]}, x, y)
      np.testing.assert_allclose(res.history["loss"][t - 1], (loss * mask).sum() / mask.sum(), rtol=1e-10)
    assert res.history["step"].tolist() == list(range(1, 26))


def test_optimizer_training_matches_float64_reference_and_masks():
  with jax.enable_x64(True):
    x, y, p = _problem(dtype=np.float64)
    mask = np.ones(len(y))
    mask[::4] = 0.0
    res = loops.train(
      softmax_loss,
      p,
      (x, y),
      num_steps=30,
      key=jax.random.key(0),
      step_size=0.3,
      optimizer=optax.sgd(0.3),
      data_mask=mask,
      record_steps=(10, 30),
      steps_per_chunk=8,
      history_stride=10,
      progress=False,
    )
    ref = _np_gd_reference(p, x, y, mask, steps=30, eta=0.3, clip=None, wd=0.0, radius=None, l1=0.0, total=30)
    np.testing.assert_allclose(np.asarray(res.params["w"]), ref[30][0], rtol=1e-10)
    np.testing.assert_allclose(np.asarray(res.recorded["b"][0]), ref[10][1], rtol=1e-10)
    assert res.history["step"].tolist() == [10, 20, 30]
    assert res.ledger is None and res.num_steps == 30


# ------------------------------------------------------------------------------------------------
# Engine behaviour: recorded steps, seeds, compilation, history, eval
# ------------------------------------------------------------------------------------------------


def _leaves_equal(a, b) -> bool:
  return all(np.array_equal(np.asarray(u), np.asarray(v)) for u, v in zip(jax.tree.leaves(a), jax.tree.leaves(b)))


def test_noise_free_recorded_steps_equal_rerun_bitwise():
  x, y, p = _problem()
  full = loops.unlearn(
    softmax_loss,
    p,
    (x, y),
    method="sgd",
    key=jax.random.key(0),
    step_size=0.5,
    record_steps=(4, 13, 30),
    clip_norm=0.5,
    steps_per_chunk=8,
    progress=False,
  )
  for g, s in enumerate((4, 13, 30)):
    short = loops.unlearn(
      softmax_loss,
      p,
      (x, y),
      method="sgd",
      key=jax.random.key(0),
      step_size=0.5,
      record_steps=(s,),
      clip_norm=0.5,
      steps_per_chunk=8,
      progress=False,
    )
    assert _leaves_equal(jax.tree.map(lambda a: a[g], full.recorded), jax.tree.map(lambda a: a[0], short.recorded))


def test_second_call_with_same_shapes_does_not_trace_or_compile_again():
  x, y, p = _problem(seed=3)
  traces = []

  def counting_loss(params, ex):
    traces.append(1)  # runs only while JAX traces
    return softmax_loss(params, ex)

  kwargs = dict(method="sgd", record_steps=(5, 20), clip_norm=1.0, steps_per_chunk=8, progress=False)
  loops.unlearn(counting_loss, p, (x, y), key=jax.random.key(0), step_size=0.5, **kwargs)
  first = len(traces)
  assert first > 0
  x2, y2, p2 = _problem(seed=4)  # new values, same shapes; new step size and key
  t0 = time.perf_counter()
  loops.unlearn(counting_loss, p2, (x2, y2), key=jax.random.key(9), step_size=0.1, **kwargs)
  assert len(traces) == first
  assert time.perf_counter() - t0 < 5.0
  # The same for SGLD training with the ledger (new temperature, step size, key, data values).

  kw = dict(num_steps=6, clip_norm=1.0, accounting=accounting.accountant([2.0]), steps_per_chunk=4, progress=False)
  loops.train(counting_loss, p, (x, y), key=jax.random.key(0), step_size=0.1, temperature=1e-3, **kw)
  second = len(traces)
  assert second > first
  res = loops.train(counting_loss, p2, (x2, y2), key=jax.random.key(1), step_size=0.2, temperature=1e-2, **kw)
  assert len(traces) == second
  assert bool(res.ledger.finite)


def test_progress_bar_does_not_change_results(capsys):
  x, y, p = _problem(seed=6)
  kw = dict(method="sgd", key=jax.random.key(0), step_size=0.5, record_steps=(9,), steps_per_chunk=4)
  quiet = loops.unlearn(softmax_loss, p, (x, y), progress=False, **kw)
  shown = loops.unlearn(softmax_loss, p, (x, y), progress=True, **kw)
  assert _leaves_equal(quiet.params, shown.params)
  assert "unlearn-sgd" in capsys.readouterr().err


def test_history_stride_rows_equal_stride_one_rows_and_eval_matches_recorded():
  x, y, p = _problem(seed=5)

  def eval_fn(params):
    return {"acc": jnp.mean(jnp.argmax(x @ params["w"] + params["b"], -1) == y)}

  kw = dict(method="sgd", key=jax.random.key(0), step_size=0.5, clip_norm=0.8, steps_per_chunk=6, progress=False)
  dense = loops.unlearn(softmax_loss, p, (x, y), record_steps=(24,), eval_fn=eval_fn, **kw)
  strided = loops.unlearn(softmax_loss, p, (x, y), record_steps=(8, 16, 24), eval_fn=eval_fn, history_stride=8, **kw)
  assert strided.history["step"].tolist() == [8, 16, 24]
  np.testing.assert_array_equal(strided.history["loss"], dense.history["loss"][[7, 15, 23]])
  np.testing.assert_array_equal(strided.history["grad_norm"], dense.history["grad_norm"][[7, 15, 23]])
  for g in range(3):
    pg = jax.tree.map(lambda a: a[g], strided.recorded)
    acc = np.mean(np.argmax(x @ np.asarray(pg["w"]) + np.asarray(pg["b"]), -1) == y)
    np.testing.assert_allclose(strided.history["acc"][g], acc, rtol=1e-6)


# ------------------------------------------------------------------------------------------------
# Divergence, lock, in-process resume
# ------------------------------------------------------------------------------------------------


def _quadratic_loss(w, ex):
  a, c = ex
  return 0.5 * a * (w[0] - c) ** 2


def test_divergence_names_first_bad_step_and_keeps_last_good_checkpoint(tmp_path):
  a = np.array([1.0, 1.0], np.float32)
  c = np.array([1.0, 1.0], np.float32)
  eta = np.float32(101.0)
  # Independent float32 reference: first step whose loss (at the parameters before it) or whose
  # updated parameter is non-finite.
  w = np.float32(0.0)
  bad = None
  with np.errstate(over="ignore", invalid="ignore"):
    for t in range(1, 100):
      loss = np.float32(0.5) * (w - np.float32(1.0)) ** 2
      w = np.float32(w - eta * (w - np.float32(1.0)))
      if not (np.isfinite(loss) and np.isfinite(w)):
        bad = t
        break
  assert bad is not None and bad > 8
  every = 4
  with pytest.raises(loops.DivergenceError, match=f"step {bad}") as info:
    loops.train(
      _quadratic_loss,
      np.zeros(1, np.float32),
      (a, c),
      num_steps=60,
      key=jax.random.key(0),
      step_size=eta,
      optimizer=optax.sgd(float(eta)),
      checkpoint_dir=tmp_path,
      checkpoint_every=every,
      steps_per_chunk=5,
      progress=False,
    )
  assert info.value.step == bad
  last = ((bad - 1) // every) * every
  assert [s for s, _ in ck.list_checkpoints(tmp_path)][-1] == last
  assert info.value.checkpoint == ck.checkpoint_path(tmp_path, last)
  meta = ck.read_metadata(info.value.checkpoint)
  assert meta["step"] == last
  assert not os.path.exists(os.path.join(tmp_path, ck.LOCK_NAME))  # the lock was released


def test_locked_checkpoint_dir_is_refused(tmp_path):
  x, y, p = _problem()
  with ck.RunLock(tmp_path):
    with pytest.raises(ck.LockError, match="locked"):
      loops.unlearn(
        softmax_loss,
        p,
        (x, y),
        method="sgd",
        key=jax.random.key(0),
        step_size=0.5,
        record_steps=(3,),
        checkpoint_dir=tmp_path,
        progress=False,
      )


def test_in_process_resume_and_mismatched_run(tmp_path):
  x, y, p = _problem(seed=7)
  kw = dict(
    method="l1_sparse",
    key=jax.random.key(0),
    step_size=0.5,
    record_steps=(0, 10, 17),
    l1_strength=0.01,
    clip_norm=0.7,
    checkpoint_dir=tmp_path,
    checkpoint_every=5,
    steps_per_chunk=4,
    progress=False,
  )
  ref = loops.unlearn(softmax_loss, p, (x, y), **dict(kw, checkpoint_dir=None, checkpoint_every=None))
  full = loops.unlearn(softmax_loss, p, (x, y), **kw)
  assert _leaves_equal(ref.recorded, full.recorded)
  # Keep only the step-10 checkpoint, as if killed after it; resuming gives the same bits.
  for s, path in ck.list_checkpoints(tmp_path):
    if s != 10:
      os.remove(path)
  resumed = loops.unlearn(softmax_loss, p, (x, y), **kw)
  assert _leaves_equal(ref.recorded, resumed.recorded)
  np.testing.assert_array_equal(ref.history["loss"], resumed.history["loss"])
  np.testing.assert_array_equal(ref.history["step"], resumed.history["step"])
  # A different configuration in the same directory is refused unless resume=False.
  with pytest.raises(ck.CheckpointError, match="different run"):
    loops.unlearn(softmax_loss, p, (x, y), **dict(kw, step_size=0.25))
  other = loops.unlearn(softmax_loss, p, (x, y), **dict(kw, step_size=0.25, resume=False))
  assert not _leaves_equal(other.params, ref.params)


def test_corrupt_newest_checkpoint_falls_back_to_previous(tmp_path):
  x, y, p = _problem(seed=8)
  kw = dict(
    method="sgd",
    key=jax.random.key(0),
    step_size=0.5,
    record_steps=(20,),
    checkpoint_dir=tmp_path,
    checkpoint_every=5,
    steps_per_chunk=5,
    progress=False,
  )
  ref = loops.unlearn(softmax_loss, p, (x, y), **kw)
  paths = dict(ck.list_checkpoints(tmp_path))
  assert sorted(paths) == [15, 20]
  with open(paths[20], "r+b") as f:
    f.truncate(100)
  resumed = loops.unlearn(softmax_loss, p, (x, y), **kw)
  assert _leaves_equal(ref.recorded, resumed.recorded)


# ------------------------------------------------------------------------------------------------
# Unlearning closes the gap to the oracle
# ------------------------------------------------------------------------------------------------


def _flipped_label_problem():
  """High-dimensional two-class data where a logistic model memorises a forget set of flipped labels."""
  rng = np.random.default_rng(0)
  n, d, nf = 80, 40, 8
  mu = rng.normal(size=d)
  mu /= np.linalg.norm(mu)
  y = rng.integers(0, 2, n)
  x = (0.5 * rng.normal(size=(n, d)) + np.outer(2 * y - 1, mu)).astype(np.float32)
  y[:nf] = 1 - y[:nf]
  mask = np.ones(n, np.float32)
  mask[:nf] = 0.0
  return x, y.astype(np.int32), mask, np.arange(nf)


def _zeros_init(d, k):
  def init_fn(key):
    del key
    return {"w": jnp.zeros((d, k)), "b": jnp.zeros(k)}

  return init_fn


def test_each_unlearning_method_closes_the_forget_set_gap_to_the_oracle():
  x, y, mask, forget = _flipped_label_problem()
  init_fn = _zeros_init(x.shape[1], 2)
  kw = dict(num_steps=300, step_size=0.5, temperature=1e-5, weight_decay=0.01, progress=False, steps_per_chunk=100)
  original = loops.train(softmax_loss, init_fn, (x, y), key=jax.random.key(0), **kw)
  oracle = loops.retrain(softmax_loss, init_fn, (x, y), key=jax.random.key(1), data_mask=mask, **kw)

  def forget_loss(p):
    return float(np.mean([softmax_loss(p, (x[i], y[i])) for i in forget]))

  def forget_acc(p):
    return float(np.mean(np.argmax(x[forget] @ np.asarray(p["w"]) + np.asarray(p["b"]), -1) == y[forget]))

  gap0 = abs(forget_loss(original.params) - forget_loss(oracle.params))
  assert gap0 > 2.0  # the flipped labels were memorised by the original, not by the oracle
  assert forget_acc(original.params) >= 0.5 and forget_acc(oracle.params) == 0.0
  for method in ("sgld", "sgd", "l1_sparse"):
    options = {"l1_strength": 1e-3} if method == "l1_sparse" else {}
    temperature = {"temperature": 1e-5} if method == "sgld" else {}
    res = loops.unlearn(
      softmax_loss,
      original.params,
      (x, y),
      method=method,
      key=jax.random.key(2),
      step_size=0.5,
      weight_decay=0.01,
      record_steps=(0, 100, 400),
      data_mask=mask,
      progress=False,
      **options,
      **temperature,
    )
    gaps = [abs(forget_loss(jax.tree.map(lambda a: a[g], res.recorded)) - forget_loss(oracle.params)) for g in range(3)]
    np.testing.assert_allclose(gaps[0], gap0, rtol=1e-6)
    assert gaps[1] < gaps[0] and gaps[2] < 0.25 * gap0, (method, gaps)
    assert forget_acc(jax.tree.map(lambda a: a[2], res.recorded)) <= 0.125, method


# ------------------------------------------------------------------------------------------------
# SGLD paths (sgld.py)
# ------------------------------------------------------------------------------------------------


def _sgld_setup(seed=0):

  x, y, p = _problem(n=32, seed=seed)
  cfg = accounting.accountant([2.0, 8.0])
  kw = dict(
    step_size=0.3, temperature=1e-3, clip_norm=1.0, weight_decay=1e-3, accounting=cfg, progress=False, steps_per_chunk=8
  )
  return x, y, p, kw


def test_sgld_recorded_steps_equal_rerun_stopped_there_bitwise():
  x, y, p, kw = _sgld_setup()
  full = loops.train(softmax_loss, p, (x, y), num_steps=30, key=jax.random.key(3), record_steps=(7, 19, 30), **kw)
  for g, s in enumerate((7, 19)):
    short = loops.train(softmax_loss, p, (x, y), num_steps=s, key=jax.random.key(3), **kw)
    assert _leaves_equal(jax.tree.map(lambda a: a[g], full.recorded), short.params)
    np.testing.assert_array_equal(full.history["loss"][:s], short.history["loss"])
  assert _leaves_equal(jax.tree.map(lambda a: a[2], full.recorded), full.params)
  # Unlearning: the params recorded at k steps equal a k-step run.
  res = loops.unlearn(
    softmax_loss,
    full.params,
    (x, y),
    method="sgld",
    key=jax.random.key(4),
    step_size=0.3,
    temperature=1e-3,
    clip_norm=1.0,
    record_steps=(5, 12),
    steps_per_chunk=8,
    progress=False,
  )
  short = loops.unlearn(
    softmax_loss,
    full.params,
    (x, y),
    method="sgld",
    key=jax.random.key(4),
    step_size=0.3,
    temperature=1e-3,
    clip_norm=1.0,
    record_steps=(5,),
    steps_per_chunk=8,
    progress=False,
  )
  assert _leaves_equal(jax.tree.map(lambda a: a[0], res.recorded), jax.tree.map(lambda a: a[0], short.recorded))


def test_sgld_train_equals_python_loop_over_sgld_step_with_fold_in_keys():

  x, y, p, kw = _sgld_setup(seed=1)
  res = loops.train(softmax_loss, p, (x, y), num_steps=12, key=jax.random.key(5), **kw)
  alg = sgld.sgld(softmax_loss, clip_norm=1.0, weight_decay=1e-3, accounting=kw["accounting"])
  step = jax.jit(alg.step)
  state = alg.init(p, len(y))
  for t in range(12):
    state, _ = step(state, (x, y), jax.random.fold_in(jax.random.key(5), t), 0.3, 1e-3)
  chex.assert_trees_all_close(res.params, state.params, rtol=2e-5, atol=1e-6)
  chex.assert_trees_all_close(res.ledger.realized, state.ledger.realized, rtol=2e-5, atol=1e-9)
  assert int(res.ledger.num_steps) == 12


@pytest.mark.slow
def test_vmapped_seeds_equal_seeds_run_one_by_one():
  x, y, p, kw = _sgld_setup(seed=2)
  init_fn = lambda key: jax.tree.map(lambda a: a + 0.1 * jax.random.normal(key, a.shape), p)

  def eval_fn(params):
    return {"acc": jnp.mean(jnp.argmax(x @ params["w"] + params["b"], -1) == y)}

  kw = dict(kw, eval_fn=eval_fn, history_stride=5)
  many = loops.train(
    softmax_loss, init_fn, (x, y), num_seeds=3, num_steps=15, key=jax.random.key(6), record_steps=(5,), **kw
  )
  assert many.params["w"].shape == (3,) + p["w"].shape
  assert many.recorded["w"].shape == (1, 3) + p["w"].shape
  assert many.history["loss"].shape == (3, 3) and many.history["acc"].shape == (3, 3)
  assert many.history["privacy_loss_mean"].shape == (3, 3, 2)
  for r in range(3):
    one = loops.train(
      softmax_loss, init_fn, (x, y), num_steps=15, key=jax.random.fold_in(jax.random.key(6), r), record_steps=(5,), **kw
    )
    np.testing.assert_allclose(many.history["acc"][:, r], one.history["acc"], atol=1.5 / len(y))
    chex.assert_trees_all_close(jax.tree.map(lambda a: a[r], many.params), one.params, rtol=1e-5, atol=1e-6)
    chex.assert_trees_all_close(many.ledger.realized[r], one.ledger.realized, rtol=1e-4, atol=1e-9)
    chex.assert_trees_all_close(
      jax.tree.map(lambda a: a[0, r], many.recorded), jax.tree.map(lambda a: a[0], one.recorded), rtol=1e-5, atol=1e-6
    )
  # Seeds differ from each other (independent chains and initialisations).
  assert not np.allclose(many.params["w"][0], many.params["w"][1])
  # Per-seed trained params are unlearned chain by chain with params_per_seed=True.
  un = loops.unlearn(
    softmax_loss,
    many.params,
    (x, y),
    method="sgd",
    key=jax.random.key(0),
    step_size=0.3,
    record_steps=(0, 3),
    num_seeds=3,
    params_per_seed=True,
    progress=False,
  )
  chex.assert_trees_all_close(jax.tree.map(lambda a: a[0], un.recorded), many.params, rtol=0, atol=0)


@pytest.mark.slow
def test_sgld_divergence_with_huge_step_size_keeps_finite_checkpoint(tmp_path):
  x, y, p, kw = _sgld_setup(seed=3)
  kw = dict(kw, clip_norm=None, weight_decay=0.0)
  with pytest.raises(loops.DivergenceError, match="diverged at step") as info:
    loops.train(
      lambda q, ex: 1e3 * softmax_loss(q, ex) ** 2,
      p,
      (x, y),
      num_steps=400,
      key=jax.random.key(0),
      checkpoint_dir=tmp_path,
      checkpoint_every=2,
      **dict(kw, step_size=1e3),
    )
  assert info.value.step >= 1
  if info.value.checkpoint is not None:
    meta = ck.read_metadata(info.value.checkpoint)
    assert meta["step"] < info.value.step


@pytest.mark.slow
def test_digits_sgld_with_ledger_reaches_90_percent():
  """FINDINGS.md configuration: 1,400 train, MLP 64-128-10, full batch, η=0.5, τ=1e-5, C=5, wd 1e-3."""

  ds = data.load_digits()
  model = models.mlp((128,), 10)
  loss_fn = models.cross_entropy_loss_fn(model.apply_fn)
  xt, yt = jnp.asarray(ds.x_test), jnp.asarray(ds.y_test)

  def eval_fn(params):
    logits = jax.vmap(model.apply_fn, in_axes=(None, 0))(params, xt)
    return {"test_accuracy": jnp.mean(jnp.argmax(logits, -1) == yt)}

  params = model.init_fn(jax.random.key(0), ds.x_train[0])
  t0 = time.perf_counter()
  res = loops.train(
    loss_fn,
    params,
    (ds.x_train, ds.y_train),
    num_steps=1500,
    key=jax.random.key(1),
    step_size=0.5,
    temperature=1e-5,
    clip_norm=5.0,
    weight_decay=1e-3,
    accounting=accounting.accountant([2.0, 8.0, 32.0]),
    eval_fn=eval_fn,
    history_stride=250,
    steps_per_chunk=250,
    progress=False,
  )
  elapsed = time.perf_counter() - t0
  acc = float(res.history["test_accuracy"][-1])
  print(f"digits SGLD: {elapsed:.1f} s, test accuracy {acc:.4f}")
  assert acc >= 0.90
  realized = np.asarray(res.ledger.realized)
  assert bool(res.ledger.finite) and np.all(np.isfinite(realized)) and np.all(realized > 0)
  mean_p = res.history["privacy_loss_mean"]
  assert np.all(np.diff(mean_p, axis=0) > 0)


# ------------------------------------------------------------------------------------------------
# Input validation
# ------------------------------------------------------------------------------------------------


@pytest.mark.parametrize(
  "kwargs,exc,match",
  [
    ({"num_steps": 0}, ValueError, "num_steps"),
    ({"num_steps": 2.5}, TypeError, "num_steps"),
    ({"step_size": -1.0}, ValueError, "step_size"),
    ({"step_size": float("nan")}, ValueError, "step_size"),
    ({"key": 3}, TypeError, "key"),
    ({"num_seeds": 0}, ValueError, "num_seeds"),
    ({"steps_per_chunk": 0}, ValueError, "steps_per_chunk"),
    ({"history_stride": 0}, ValueError, "history_stride"),
    ({"record_steps": (5, 99)}, ValueError, "record_steps"),
    ({"checkpoint_every": 5}, ValueError, "checkpoint_dir"),
    ({"data_mask": np.ones(3)}, ValueError, "data_mask"),
    ({"data_mask": np.zeros(40)}, ValueError, "data_mask"),
    ({"data_mask": np.full(40, 0.5)}, ValueError, "data_mask"),
    ({"eval_fn": 3}, TypeError, "eval_fn"),
    ({"progress": "yes"}, TypeError, "progress"),
    ({"params_per_seed": True}, ValueError, "params_per_seed"),
    ({"optimizer": "sgd"}, TypeError, "optimizer"),
  ],
)
def test_train_rejects_bad_arguments(kwargs, exc, match):
  x, y, p = _problem()
  base = dict(num_steps=10, key=jax.random.key(0), step_size=0.1, optimizer=optax.sgd(0.1), progress=False)
  base.update(kwargs)
  with pytest.raises(exc, match=match):
    loops.train(softmax_loss, p, (x, y), **base)


def test_bad_data_and_params_are_refused():
  x, y, p = _problem()
  base = dict(num_steps=3, key=jax.random.key(0), step_size=0.1, optimizer=optax.sgd(0.1), progress=False)
  xn = x.copy()
  xn[0, 0] = np.nan
  with pytest.raises(ValueError, match="finite"):
    loops.train(softmax_loss, p, (xn, y), **base)
  with pytest.raises(ValueError, match="disagree"):
    loops.train(softmax_loss, p, (x, y[:-1]), **base)
  with pytest.raises(ValueError, match="finite"):
    loops.train(softmax_loss, {"w": p["w"] * np.inf, "b": p["b"]}, (x, y), **base)
  with pytest.raises(ValueError, match="temperature"):
    loops.train(softmax_loss, p, (x, y), num_steps=3, key=jax.random.key(0), step_size=0.1, progress=False)


@pytest.mark.parametrize(
  "kwargs,exc,match",
  [
    ({"method": "newton"}, ValueError, "method"),
    ({"method": "sgld"}, ValueError, "temperature"),
    ({"record_steps": ()}, ValueError, "record_steps"),
    ({"record_steps": (-1, 3)}, ValueError, "record_steps"),
    ({"record_steps": (3,), "num_steps": 2}, ValueError, "record_steps"),
    ({"clip_norm": 0.0}, ValueError, "clip_norm"),
    ({"weight_decay": -1.0}, ValueError, "weight_decay"),
    ({"l1_strength": -0.1, "method": "l1_sparse"}, ValueError, "l1_strength"),
    ({"projection_radius": -2.0}, ValueError, "projection_radius"),
    ({"norm_method": "magic"}, ValueError, "norm_method"),
  ],
)
def test_unlearn_rejects_bad_arguments(kwargs, exc, match):
  x, y, p = _problem()
  base = dict(method="sgd", key=jax.random.key(0), step_size=0.1, record_steps=(0, 3), progress=False)
  base.update(kwargs)
  with pytest.raises(exc, match=match):
    loops.unlearn(softmax_loss, p, (x, y), **base)


def test_checkpoint_dir_not_writable_is_refused(tmp_path):
  if os.geteuid() == 0:
    target = "/proc/unlearn_jax_cannot_write_here"
  else:
    ro = tmp_path / "ro"
    ro.mkdir()
    os.chmod(ro, 0o500)
    target = str(ro / "sub")
  x, y, p = _problem()
  with pytest.raises(ValueError, match="checkpoint_dir"):
    loops.unlearn(
      softmax_loss,
      p,
      (x, y),
      method="sgd",
      key=jax.random.key(0),
      step_size=0.1,
      record_steps=(3,),
      checkpoint_dir=target,
      progress=False,
    )


def test_shuffled_mode_state_with_typed_key_checkpoints_and_resumes_bitwise(tmp_path):
  # SGLDState carries a typed PRNG key in shuffled mode; it must survive the checkpoint exactly, and
  # seeds must draw different permutations.
  x, y, p = _problem(n=24, seed=9)
  kw = dict(
    num_steps=12,
    key=jax.random.key(3),
    step_size=0.2,
    temperature=1e-4,
    mode="shuffled",
    batch_size=8,
    clip_norm=1.0,
    steps_per_chunk=4,
    progress=False,
  )
  ref = loops.train(softmax_loss, p, (x, y), **kw)
  full = loops.train(softmax_loss, p, (x, y), checkpoint_dir=tmp_path, checkpoint_every=4, **kw)
  assert _leaves_equal(ref.recorded, full.recorded)
  for s, path in ck.list_checkpoints(tmp_path):
    if s != 8:
      os.remove(path)
  resumed = loops.train(softmax_loss, p, (x, y), checkpoint_dir=tmp_path, checkpoint_every=4, **kw)
  assert resumed.resumed_from == 8
  assert _leaves_equal(ref.recorded, resumed.recorded)
  np.testing.assert_array_equal(
    jax.random.key_data(ref.state.shuffle_key), jax.random.key_data(resumed.state.shuffle_key)
  )


def test_tree_take_stack_and_swap_equal_the_leafwise_maps_in_one_program_per_structure():
  """The study's tree indexing, stacking and axis swaps (unlearn_jax._compile): equal to the eager maps
  leaf by leaf, and compiled once per tree structure and shapes (another index value, a negative one or
  other values reuse the program; the eager maps compiled one program per leaf shape)."""
  rng = np.random.default_rng(0)
  tree = {"w": jnp.asarray(rng.normal(size=(4, 3, 7))), "b": (jnp.asarray(rng.normal(size=(4, 11))),)}
  before = _compile._compiled(_compile._take_core, 0)._cache_size()
  for index in (0, 2, -1, np.array([3, 1, 1])):
    chex.assert_trees_all_equal(_compile.take(tree, index), jax.tree.map(lambda leaf, i=index: leaf[i], tree))
  programs = _compile._compiled(_compile._take_core, 0)._cache_size() - before
  assert 1 <= programs <= 2  # one for the scalar indices, one for the index array (not one per leaf and index)
  trees = [jax.tree.map(lambda leaf, k=k: leaf + k, tree) for k in range(3)]
  chex.assert_trees_all_equal(_compile.stack(trees), jax.tree.map(lambda *ls: jnp.stack(ls), *trees))
  chex.assert_trees_all_equal(
    _compile.swap_leading_axes(tree), jax.tree.map(lambda leaf: jnp.swapaxes(leaf, 0, 1), tree)
  )
