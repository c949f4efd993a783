"""Tests of unlearn_jax.checkpoint: atomic msgpack checkpoints, validation of untrusted files, run lock."""

from __future__ import annotations

import hashlib
import os
import pickle
import struct
import subprocess
import sys
from typing import NamedTuple

import jax
import numpy as np
import pytest

from unlearn_jax.runtime import checkpoint as ck


class _State(tuple):
  pass


def _tree():
  return {
    "params": {"w": np.arange(12, dtype=np.float32).reshape(3, 4), "b": np.float32(0.5) * np.ones(4, np.float32)},
    "step": np.int32(17),
    "flag": np.array(True),
    "key": jax.random.key(42),
    "keys": jax.random.split(jax.random.key(1), 3),
    "ledger": None,
    "hist": np.linspace(0.0, 1.0, 5),
  }


def _assert_trees_bitwise_equal(a, b):
  la, ta = jax.tree.flatten(a)
  lb, tb = jax.tree.flatten(b)
  assert ta == tb
  for x, y in zip(la, lb):
    if ck.is_key(x):
      x, y = jax.random.key_data(x), jax.random.key_data(y)
    x, y = np.asarray(x), np.asarray(y)
    assert x.dtype == y.dtype and x.shape == y.shape
    assert x.tobytes() == y.tobytes()


def test_roundtrip_is_bitwise_and_keeps_metadata(tmp_path):
  tree = _tree()
  # A few non-representable-in-decimal float bits and a NaN payload must survive exactly.
  tree["hist"] = np.array([np.pi, -0.0, np.nextafter(1.0, 2.0), np.inf, 1e-310])
  path = tmp_path / "c.msgpack"
  ck.save_checkpoint(path, tree, metadata={"step": 17, "name": "x"})
  out, meta = ck.load_checkpoint(path, tree)
  _assert_trees_bitwise_equal(out, tree)
  assert meta == {"step": 17, "name": "x"}
  assert ck.read_metadata(path) == meta
  # Typed keys come back as typed keys that generate the same numbers.
  np.testing.assert_array_equal(jax.random.normal(out["key"], (3,)), jax.random.normal(tree["key"], (3,)))
  # A ShapeDtypeStruct template works too.
  template = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x), x.dtype), tree)
  out2, _ = ck.load_checkpoint(path, template)
  _assert_trees_bitwise_equal(out2, tree)


def test_namedtuple_structure_is_checked(tmp_path):

  class A(NamedTuple):
    x: np.ndarray
    y: np.ndarray

  class B(NamedTuple):
    x: np.ndarray
    z: np.ndarray

  path = tmp_path / "c.msgpack"
  ck.save_checkpoint(path, A(np.zeros(2), np.ones(2)))
  out, _ = ck.load_checkpoint(path, A(np.zeros(2), np.zeros(2)))
  assert isinstance(out, A) and out.y.tolist() == [1.0, 1.0]
  with pytest.raises(ck.CheckpointError, match="structure"):
    ck.load_checkpoint(path, B(np.zeros(2), np.zeros(2)))
  with pytest.raises(ck.CheckpointError, match="structure"):
    ck.load_checkpoint(path, (np.zeros(2), np.zeros(2)))


@pytest.mark.parametrize(
  "template_change,match",
  [
    (lambda t: {**t, "hist": np.zeros(6)}, "shape"),
    (lambda t: {**t, "hist": np.zeros(5, np.float32)}, "dtype|float32"),
    (lambda t: {**t, "step": np.int64(3)}, "int64"),
    (lambda t: {k: v for k, v in t.items() if k != "flag"}, "structure"),
    (lambda t: {**t, "ledger": np.zeros(2)}, "structure"),
  ],
)
def test_mismatched_target_is_refused(tmp_path, template_change, match):
  tree = _tree()
  path = tmp_path / "c.msgpack"
  ck.save_checkpoint(path, tree)
  with pytest.raises(ck.CheckpointError, match=match):
    ck.load_checkpoint(path, template_change(tree))


def test_truncated_file_at_every_region_gives_clear_error(tmp_path):
  tree = _tree()
  path = tmp_path / "c.msgpack"
  ck.save_checkpoint(path, tree, metadata={"step": 1})
  blob = path.read_bytes()
  bad = tmp_path / "bad.msgpack"
  for cut in [0, 3, 8, 10, 40, len(blob) // 2, len(blob) - 1]:
    bad.write_bytes(blob[:cut])
    with pytest.raises(ck.CheckpointError, match="truncated|not an unlearn_jax checkpoint|corrupt"):
      ck.load_checkpoint(bad, tree)
  bad.write_bytes(blob + b"\x00")
  with pytest.raises(ck.CheckpointError, match="trailing"):
    ck.load_checkpoint(bad, tree)


def test_flipped_payload_byte_fails_checksum(tmp_path):
  tree = _tree()
  path = tmp_path / "c.msgpack"
  ck.save_checkpoint(path, tree)
  blob = bytearray(path.read_bytes())
  blob[-5] ^= 0x01  # inside the last array's bytes: still decodes, but the digest differs
  path.write_bytes(bytes(blob))
  with pytest.raises(ck.CheckpointError, match="SHA-256"):
    ck.load_checkpoint(path, tree)


def test_corrupt_metadata_and_payload_with_valid_digest(tmp_path):

  tree = {"w": np.zeros(3)}
  path = tmp_path / "c.msgpack"
  # Garbage JSON metadata.
  meta = b"{not json"
  path.write_bytes(ck.MAGIC + struct.pack("<I", len(meta)) + meta + struct.pack("<Q", 0) + b"\0" * 32)
  with pytest.raises(ck.CheckpointError, match="JSON"):
    ck.load_checkpoint(path, tree)
  # Valid header and digest over a payload that is not msgpack of the expected layout.
  ck.save_checkpoint(path, tree)
  blob = path.read_bytes()
  (meta_len,) = struct.unpack("<I", blob[8:12])
  head = blob[: 12 + meta_len]
  payload = b"\xc1\xc1\xc1"  # 0xc1 is "never used" in msgpack
  digest = hashlib.sha256(head[12:] + payload).digest()  # the digest covers metadata and payload
  path.write_bytes(head + struct.pack("<Q", len(payload)) + digest + payload)
  with pytest.raises(ck.CheckpointError, match="does not decode|corrupt"):
    ck.load_checkpoint(path, tree)


def test_header_claiming_huge_payload_is_refused_before_reading(tmp_path):
  tree = {"w": np.zeros(3)}
  path = tmp_path / "c.msgpack"
  ck.save_checkpoint(path, tree)
  blob = path.read_bytes()
  (meta_len,) = struct.unpack("<I", blob[8:12])
  off = 12 + meta_len
  huge = blob[:off] + struct.pack("<Q", 10**12) + blob[off + 8 :]
  path.write_bytes(huge)
  with pytest.raises(ck.CheckpointError, match="exceeds the limit"):
    ck.load_checkpoint(path, tree)
  # A metadata length over the limit is refused too.
  path.write_bytes(ck.MAGIC + struct.pack("<I", 2**31) + b"{}")
  with pytest.raises(ck.CheckpointError, match="metadata length"):
    ck.load_checkpoint(path, tree)


class _Evil:
  def __reduce__(self):
    return (os.system, ("touch PWNED_BY_PICKLE",))


def test_pickle_file_is_rejected_without_executing(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  path = tmp_path / "c.msgpack"
  path.write_bytes(pickle.dumps({"w": _Evil()}))
  with pytest.raises(ck.CheckpointError, match="not an unlearn_jax checkpoint"):
    ck.load_checkpoint(path, {"w": np.zeros(3)})
  with pytest.raises(ck.CheckpointError, match="not an unlearn_jax checkpoint"):
    ck.read_metadata(path)
  assert not (tmp_path / "PWNED_BY_PICKLE").exists()


def test_object_dtype_is_refused_on_save(tmp_path):
  with pytest.raises(TypeError, match="dtype"):
    ck.save_checkpoint(tmp_path / "c.msgpack", {"w": np.array([object()], dtype=object)})


def test_missing_file(tmp_path):
  with pytest.raises(ck.CheckpointError, match="does not exist"):
    ck.load_checkpoint(tmp_path / "nope.msgpack", {"w": np.zeros(1)})


def test_atomic_write_leaves_old_file_when_serialisation_fails(tmp_path):
  path = tmp_path / "c.msgpack"
  ck.save_checkpoint(path, {"w": np.ones(2)}, metadata={"step": 1})
  with pytest.raises(TypeError):
    ck.save_checkpoint(path, {"w": np.ones(2)}, metadata={"bad": object()})
  assert ck.read_metadata(path) == {"step": 1}
  assert [p.name for p in tmp_path.iterdir()] == ["c.msgpack"]  # no temporary file left behind


def test_listing_latest_and_pruning(tmp_path):
  for s in (5, 10, 100):
    ck.save_checkpoint(ck.checkpoint_path(tmp_path, s), {"w": np.full(2, float(s))}, metadata={"step": s})
  (tmp_path / ".tmp-ckpt-stale").write_bytes(b"partial")
  assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [5, 10, 100]
  assert ck.latest_checkpoint(tmp_path).endswith("ckpt_0000000100.msgpack")
  ck.remove_checkpoints(tmp_path, keep=2)
  assert [s for s, _ in ck.list_checkpoints(tmp_path)] == [10, 100]
  assert not (tmp_path / ".tmp-ckpt-stale").exists()


# ------------------------------------------------------------------------------------------------
# Lock
# ------------------------------------------------------------------------------------------------


def test_lock_refuses_second_holder_in_process(tmp_path):
  with ck.RunLock(tmp_path) as lock:
    assert os.path.exists(lock.path)
    assert open(lock.path).read().split()[0] == str(os.getpid())
    with pytest.raises(ck.LockError, match=f"pid {os.getpid()}"):
      ck.RunLock(tmp_path).acquire()
  assert not os.path.exists(os.path.join(tmp_path, ck.LOCK_NAME))
  with ck.RunLock(tmp_path):  # free again
    pass


def test_lock_held_by_live_subprocess_is_refused_then_stale_is_taken_over(tmp_path):
  code = (
    "import sys, time; from unlearn_jax.runtime.checkpoint import RunLock; l = RunLock(sys.argv[1]).acquire(); "
    "print('locked', flush=True); time.sleep(60)"
  )
  proc = subprocess.Popen([sys.executable, "-c", code, str(tmp_path)], stdout=subprocess.PIPE, text=True)
  try:
    assert proc.stdout.readline().strip() == "locked"
    with pytest.raises(ck.LockError, match=f"pid {proc.pid}"):
      ck.RunLock(tmp_path).acquire()
  finally:
    proc.kill()
    proc.wait()
  # The owner died without releasing: its lock file remains and is stale now.
  assert os.path.exists(os.path.join(tmp_path, ck.LOCK_NAME))
  with pytest.warns(RuntimeWarning, match="stale lock"):
    lock = ck.RunLock(tmp_path).acquire()
  assert open(lock.path).read().split()[0] == str(os.getpid())
  lock.release()


def test_garbage_lock_file_is_stale(tmp_path):
  with open(os.path.join(tmp_path, ck.LOCK_NAME), "w") as f:
    f.write("not-a-pid")
  with pytest.warns(RuntimeWarning, match="stale"):
    with ck.RunLock(tmp_path):
      pass
