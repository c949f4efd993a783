"""Reliability at the edges: one test per defect of the reliability issue — interrupts in one-chunk calls,
SIGTERM, labels, atomic and complete outputs, the worst-case baseline beyond float32, +inf bounds,
lock take-over, symbolic links, signed checkpoints. Signals go through subprocesses."""

from __future__ import annotations

import hashlib
import os
import pathlib
import signal
import struct
import subprocess
import sys
import tomllib

import jax
import jax.numpy as jnp
import numpy as np
import pytest

import unlearn_jax as uj
from unlearn_jax import _atomic, certify
from unlearn_jax.runtime import checkpoint as ck
from unlearn_jax.study import Config, findings, pipeline, stages

REPO = pathlib.Path(__file__).resolve().parents[1]

# A script run in a subprocess: the first jitted chunk sends the given signal to this process, so the
# signal arrives while the (only) chunk of the call runs.
_SIGNAL_SCRIPT = """
import os, signal, sys
import jax, jax.numpy as jnp, numpy as np
import unlearn_jax as uj
from unlearn_jax.runtime import engine
sig = getattr(signal, sys.argv[1]); which = sys.argv[2]
original = engine.run_chunk
def chunk_then_signal(*a, **k):
  os.kill(os.getpid(), sig)
  return original(*a, **k)
engine.run_chunk = chunk_then_signal
model = uj.models.logistic_regression(3)
params = model.init_fn(jax.random.key(0), jnp.ones(4))
loss = uj.models.cross_entropy_loss_fn(model.apply_fn)
rng = np.random.default_rng(0)
data = (rng.normal(size=(20, 4)).astype(np.float32), rng.integers(0, 3, 20).astype(np.int32))
kw = dict(key=jax.random.key(1), step_size=0.1, progress=False)
try:
  if which == "unlearn":
    uj.unlearn(loss, params, data, method="sgld", record_steps=(0, 5), temperature=1e-3, **kw)
  else:
    uj.retrain(loss, lambda k: model.init_fn(k, jnp.ones(4)), data, num_steps=5, temperature=1e-3, **kw)
except uj.runtime.Interrupted as e:
  print("interrupted", e.exit_code, flush=True)
  sys.exit(e.exit_code)
print("finished", flush=True)
"""


@pytest.mark.slow
@pytest.mark.parametrize("signame,which", [("SIGINT", "unlearn"), ("SIGTERM", "retrain")])
def test_signal_during_a_one_chunk_call_is_not_swallowed(signame, which):
  # item 1 (Ctrl-C during unlearning or oracle training exited 0) and item 2 (SIGTERM like SIGINT)
  res = subprocess.run(
    [sys.executable, "-c", _SIGNAL_SCRIPT, signame, which], capture_output=True, text=True, timeout=300
  )
  code = 128 + getattr(signal, signame)
  assert res.returncode == code and f"interrupted {code}" in res.stdout, (res.stdout, res.stderr)


_CLI_SIGTERM = """
import os, signal, sys
from unlearn_jax.runtime import engine
from unlearn_jax.study import cli
original = engine.run_chunk
calls = []
def chunk(*a, **k):
  calls.append(1)
  if len(calls) == 2:
    os.kill(os.getpid(), signal.SIGTERM)
  return original(*a, **k)
engine.run_chunk = chunk
sys.exit(cli.main(["run", "--quiet", "--config", sys.argv[1], "--out", sys.argv[2]]))
"""

_TINY_TOML = """
seed = 0
[data]
num_train = 60
num_test = 20
[model.kwargs]
hidden_sizes = [8]
[training]
num_steps = 40
num_seeds = 1
num_checkpoints = 2
[privacy]
lsi_constant = 0.02
[forget_sets]
size = 4
selections = ["privacy_loss:top", "random"]
[unlearning]
methods = ["sgld"]
step_grid = [0, 5]
num_seeds = 4
retrain_steps = 10
[evaluation]
min_power = 0.0  # 4 vs 4 models: the test cannot reject; this checks the plumbing
[metrics]
names = ["loss"]
"""


@pytest.mark.slow  # a study in a subprocess (15 s)
def test_sigterm_on_the_cli_exits_143_with_a_checkpoint_and_no_lock_left(tmp_path):
  # item 2: SIGTERM (schedulers, docker stop) checkpoints, cleans up and exits with the documented code
  cfg = tmp_path / "c.toml"
  cfg.write_text(_TINY_TOML)
  out = tmp_path / "out"
  res = subprocess.run(
    [sys.executable, "-c", _CLI_SIGTERM, str(cfg), str(out)], capture_output=True, text=True, timeout=300
  )
  assert res.returncode == 143, res.stderr
  assert "SIGTERM" in res.stderr and "Traceback" not in res.stderr and len(res.stderr.strip().splitlines()) == 1
  assert not (out / ck.LOCK_NAME).exists()
  assert list((out / "checkpoints").rglob("*.msgpack")), "no checkpoint written before exiting"
  assert not (out / "report.json").exists()


def test_labels_are_checked_where_data_enter_a_driver_or_the_loss():
  # item 3: y = 1.7 trained as class 1, y = -1 as the last class, y = 15 of 3 classes "diverged"
  model = uj.models.logistic_regression(3)
  params = model.init_fn(jax.random.key(0), jnp.ones(4))
  loss = uj.models.cross_entropy_loss_fn(model.apply_fn)
  x = np.random.default_rng(0).normal(size=(10, 4)).astype(np.float32)
  kw = dict(num_steps=2, key=jax.random.key(0), step_size=0.1, progress=False)
  with pytest.raises(TypeError, match=r"labels y must hold integer class labels, got dtype float32"):
    uj.train(loss, params, (x, np.full(10, 1.7, np.float32)), **kw)
  for bad in (-1, 15):
    with pytest.raises(ValueError, match=rf"labels y must be in \[0, num_classes\) = \[0, 3\).*\[{bad}"):
      uj.train(loss, params, (x, np.full(10, bad, np.int32)), **kw)
    with pytest.raises(ValueError, match=r"retain_data labels y"):
      uj.unlearn(loss, params, (x, np.full(10, bad, np.int32)), method="sgld", record_steps=(0, 2), **kw)
    with pytest.raises(ValueError, match=r"data labels y must be in"):  # the oracle, from an init function
      uj.retrain(loss, lambda k: model.init_fn(k, jnp.ones(4)), (x, np.full(10, bad, np.int32)), **kw)
  with pytest.raises(ValueError, match=r"y must be in \[0, num_classes\)"):
    loss(params, (x[0], 3))
  # under a trace nothing can raise: an invalid label makes the loss NaN, never a clamped class's loss
  traced = jax.jit(jax.vmap(loss, in_axes=(None, 0)))(params, (x[:4], jnp.array([0, 2, 3, -1])))
  assert np.all(np.isfinite(np.asarray(traced[:2]))) and np.all(np.isnan(np.asarray(traced[2:])))
  traced_float = jax.jit(loss)(params, (x[0], jnp.float32(1.5)))
  assert np.isnan(float(traced_float))


def test_atomic_write_keeps_the_old_file_when_the_writer_fails(tmp_path):
  # item 4: a crash mid-write left a per_example.csv with 23 of 60 rows
  path = tmp_path / "per_example.csv"
  path.write_text("index,label\n0,1\n1,2\n")

  def half_then_crash(tmp):
    pathlib.Path(tmp).write_text("index,label\n0,1\n")
    raise OSError(28, "No space left on device")

  with pytest.raises(OSError):
    _atomic.replace_into(path, half_then_crash)
  assert path.read_text() == "index,label\n0,1\n1,2\n"
  assert sorted(p.name for p in tmp_path.iterdir()) == ["per_example.csv"]


def _config(out, **training):
  raw = tomllib.loads(_TINY_TOML)
  raw["out_dir"] = str(out)
  raw["training"].update(training)
  return Config.from_dict(raw)


@pytest.mark.slow  # a whole study (20 s)
def test_rerun_removes_stale_outputs_and_report_json_is_written_last(tmp_path, monkeypatch):
  # item 4: a rerun into a finished run's directory left its figures and params/*.npz; report.json is
  # the completion marker (absent while a run is under way or after it failed)
  out = tmp_path / "out"
  (out / "params").mkdir(parents=True)
  stale = [out / "old_figure.png", out / "params" / "oracle_7.npz"]
  for p in stale:
    p.write_bytes(b"from an earlier run")
  (out / "report.json").write_text("{}")
  victim = tmp_path / "victim.txt"
  victim.write_text("keep me")
  os.symlink(victim, out / "per_example.csv")  # item 10: a planted link is replaced, never written through

  def fail(*a, **k):
    raise RuntimeError("crash in the training stage")

  monkeypatch.setattr(stages, "train_with_ledger", fail)
  with pytest.raises(RuntimeError, match="crash"):
    pipeline.run(_config(out))
  assert not (out / "report.json").exists(), "a failed run left a report.json behind"
  monkeypatch.undo()
  report = pipeline.run(_config(out))
  assert (out / "report.json").is_file() and report["forget_sets"]
  assert not any(p.exists() for p in stale)
  assert victim.read_text() == "keep me" and not (out / "per_example.csv").is_symlink()
  assert (out / "params" / "trained.msgpack").is_file() and (out / "params" / "forget_set_0.msgpack").is_file()
  assert not list(out.glob(".*.tmp*")), "temporary files left"
  # report.json is written after every other output
  mtimes = {p.name: p.stat().st_mtime_ns for p in out.iterdir() if p.is_file()}
  assert max(mtimes, key=mtimes.get) == "report.json"


def test_worst_case_baseline_beyond_float32_is_finite_and_never_compared_when_overflowed():
  # item 7: at τ = 1e-30 the worst-case K was inf in float32 and "100% below K = inf" reversed a finding
  kw = dict(orders=[2.0], m=1e-3, step_size=0.1, num_removed=1, clip_norm=1.0, num_examples=1000)
  k32 = float(certify.worst_case_steps(1.0, temperature=1e-50, **kw))
  with jax.enable_x64(True):
    k64 = float(certify.worst_case_steps(1.0, temperature=1e-50, **kw))
  # closed form: K = ceil(α/(mη) · log(4α S² C² / (m τ n²) / ε))
  want = np.ceil(2.0 / (1e-3 * 0.1) * np.log(4 * 2.0 / (1e-3 * 1e-50 * 1000**2)))
  assert k64 == want and abs(k32 - want) / want < 1e-6
  # a K that overflows even float64 gives no verdict instead of "100% below K = inf"
  privacy = {
    "fraction_certified_below_worst_case": float("nan"),
    "worst_case_steps": float("inf"),
    "certified_steps_summary": {"median": 5e30},
    "lsi_note": "",
    "stationarity": "",
  }
  assert findings.claim_d(privacy)["verdict"].startswith("undetermined")
  assert findings.claim_d(dict(privacy, fraction_certified_below_worst_case=0.9))["verdict"] == "holds"
  # with an interval, a share whose interval straddles one half is not established
  near = dict(privacy, fraction_certified_below_worst_case=0.52, fraction_below_interval=[0.47, 0.57])
  assert findings.claim_d(near)["verdict"].startswith("not established")
  above = dict(near, fraction_below_interval=[0.505, 0.535])
  assert findings.claim_d(above)["verdict"] == "holds"


def test_unlearning_bound_of_infinite_loss_is_inf_when_the_contraction_underflows():
  # item 8: inf · 0 = NaN at k = 1e6
  b = certify.unlearning_bound(
    jnp.array([jnp.inf, 1.0]), 10**6, alpha=2.0, step_size=0.1, temperature=1.0, lsi_constant=1e-3
  )
  assert np.isposinf(float(b[0])) and float(b[1]) == 0.0
  g = jax.grad(lambda t: certify.unlearning_bound(1.0, 10, alpha=2.0, step_size=0.1, temperature=t, lsi_constant=1.0))(
    1.0
  )
  assert np.isfinite(float(g)) and float(g) < 0


_TAKER = """
import os, sys, time
from unlearn_jax.runtime.checkpoint import RunLock, LockError
directory, go = sys.argv[1], sys.argv[2]
while not os.path.exists(go):
  time.sleep(0.001)
try:
  lock = RunLock(directory).acquire()
except LockError:
  print("refused", flush=True)
  sys.exit(0)
print("acquired", flush=True)
time.sleep(1.5)
lock.release()
"""


@pytest.mark.slow
def test_two_restarts_never_both_take_over_a_dead_runs_lock(tmp_path):
  # item 9: two takers of a dead pid's lock both acquired it; with flock exactly one of four does
  for trial in range(1):
    directory = tmp_path / f"d{trial}"
    directory.mkdir()
    (directory / ck.LOCK_NAME).write_text("999999 somehost\n")  # left by a run that died
    go = tmp_path / f"go{trial}"
    procs = [
      subprocess.Popen(
        [sys.executable, "-W", "ignore", "-c", _TAKER, str(directory), str(go)], stdout=subprocess.PIPE, text=True
      )
      for _ in range(4)
    ]
    go.write_text("")
    outs = [p.communicate(timeout=120)[0].strip() for p in procs]
    assert sorted(outs) == ["acquired", "refused", "refused", "refused"], outs


def test_symlinked_lock_and_checkpoint_are_refused_without_echoing_their_target(tmp_path):
  # item 10: error messages printed the target's bytes
  secret = tmp_path / "secret.txt"
  secret.write_text("12345 TOPSECRETTOKEN\n")
  d = tmp_path / "run"
  d.mkdir()
  os.symlink(secret, d / ck.LOCK_NAME)
  with pytest.raises(ck.LockError, match="symbolic link") as e:
    ck.RunLock(d).acquire()
  assert "TOPSECRET" not in str(e.value) and secret.read_text() == "12345 TOPSECRETTOKEN\n"
  link = tmp_path / "ckpt_000010.msgpack"
  os.symlink(secret, link)
  with pytest.raises(ck.CheckpointError, match="symbolic link") as e:
    ck.load_checkpoint(link, {"w": np.zeros(2)})
  assert "TOPSECRET" not in str(e.value)
  garbage = tmp_path / "garbage.msgpack"
  garbage.write_bytes(b"TOPSECRETTOKEN" * 4)
  with pytest.raises(ck.CheckpointError, match="magic") as e:
    ck.load_checkpoint(garbage, {"w": np.zeros(2)})
  assert "TOPSECRET" not in str(e.value)


def _forge(path):
  """Zeroes the payload's bytes after its first 40 and recomputes the SHA-256 over metadata + payload."""
  blob = bytearray(path.read_bytes())
  (meta_len,) = struct.unpack("<I", blob[8:12])
  off = 12 + meta_len + 8 + 32
  meta, payload = bytes(blob[12 : 12 + meta_len]), bytearray(blob[off:])
  payload[-8:] = b"\0" * 8  # the last leaf's last bytes: a rewritten ledger entry
  blob[12 + meta_len + 8 : off] = hashlib.sha256(meta + bytes(payload)).digest()
  blob[off:] = payload
  path.write_bytes(bytes(blob))


def test_forged_checkpoints_pass_a_hash_but_not_a_keyed_mac(tmp_path, monkeypatch):
  # item 11: a checkpoint whose ledger was rewritten and whose SHA-256 was recomputed was accepted
  tree = {"ledger": np.arange(1.0, 5.0)}
  plain = tmp_path / "plain.msgpack"
  ck.save_checkpoint(plain, tree)
  _forge(plain)
  forged, _ = ck.load_checkpoint(plain, tree)  # without a key a hash detects corruption, not forgery
  assert not np.array_equal(forged["ledger"], tree["ledger"])
  monkeypatch.setenv(ck.KEY_ENV, "a key the user holds")
  signed = tmp_path / "signed.msgpack"
  ck.save_checkpoint(signed, tree)
  restored, _ = ck.load_checkpoint(signed, tree)
  np.testing.assert_array_equal(restored["ledger"], tree["ledger"])
  _forge(signed)
  with pytest.raises(ck.CheckpointError, match="HMAC"):
    ck.load_checkpoint(signed, tree)
  with pytest.raises(ck.CheckpointError, match="not signed"):
    ck.load_checkpoint(plain, tree)
  ck.save_checkpoint(signed, tree)
  monkeypatch.setenv(ck.KEY_ENV, "another key")
  with pytest.raises(ck.CheckpointError, match="HMAC"):
    ck.load_checkpoint(signed, tree)
  monkeypatch.delenv(ck.KEY_ENV)
  with pytest.raises(ck.CheckpointError, match="is signed"):
    ck.load_checkpoint(signed, tree)


def test_checkpoint_metadata_is_inside_the_digest(tmp_path):
  # item 12: the header was outside the SHA-256
  tree = {"w": np.zeros(3)}
  path = tmp_path / "c.msgpack"
  ck.save_checkpoint(path, tree, metadata={"step": 5})
  blob = path.read_bytes()
  path.write_bytes(blob.replace(b'"step": 5', b'"step": 9'))
  with pytest.raises(ck.CheckpointError, match="does not match"):
    ck.load_checkpoint(path, tree)


def test_docs_say_vmapped_seeds_agree_to_rounding_not_identically():
  # item 12: vmap_seeds was documented as giving identical results (they differ at float rounding)
  text = (REPO / "configs" / "demo.toml").read_text() + (REPO / "docs" / "demo.md").read_text()
  assert "same results" not in text and "identical results" not in text
  assert "float rounding" in text


@pytest.mark.slow  # a whole study (20 s)
def test_noise_free_training_accounts_at_the_assumed_temperature_and_says_so(tmp_path):
  report = pipeline.run(_config(tmp_path / "out", temperature=0.0, accounting_temperature=1e-5))
  note = report["privacy"]["temperature_note"]
  assert "noise-free" in note and "ASSUMES" in note and "1e-05" in note
  assert "ASSUMES" in (tmp_path / "out" / "report.md").read_text()
  assert float(report["privacy"]["privacy_loss_summary"]["max"]) > 0


def test_drivers_accept_a_shared_progress_bar():
  # without --quiet the study hands one Progress to every driver call of a stage; the drivers refused
  # anything but a bool, so every run with progress shown (README's demo command) stopped at once
  model = uj.models.logistic_regression(3)
  params = model.init_fn(jax.random.key(0), jnp.ones(4))
  loss = uj.models.cross_entropy_loss_fn(model.apply_fn)
  rng = np.random.default_rng(0)
  data = (rng.normal(size=(12, 4)).astype(np.float32), rng.integers(0, 3, 12).astype(np.int32))
  bar = uj.runtime.Progress(10, "train", enabled=False)
  for _ in range(2):
    uj.train(loss, params, data, num_steps=5, key=jax.random.key(0), step_size=0.1, temperature=1e-3, progress=bar)
  bar.close()
  with pytest.raises(TypeError, match="progress must be a bool or a runtime.Progress"):
    uj.train(loss, params, data, num_steps=5, key=jax.random.key(0), step_size=0.1, temperature=1e-3, progress="yes")
