"""Atomic, validated checkpoints of pytrees and a lock that refuses concurrent runs.

A checkpoint is one file holding a pytree of arrays (parameters, optimizer / SGLD state, ledger, typed
PRNG keys, history so far) plus a small JSON metadata record. The file layout is::

    MAGIC (8 bytes, b"ULJXCKP1")
    metadata length (uint32, little endian) | metadata (UTF-8 JSON)
    payload length  (uint64, little endian) | digest of metadata + payload (32 bytes)
    payload: msgpack (``flax.serialization.msgpack_serialize``) of {"leaves": {"0": array, ...}}

Why ``flax.serialization`` and not orbax: the states saved here are small host-side pytrees written
between jitted chunks of a loop. One msgpack file written to a temporary file in the same directory,
flushed, fsynced and ``os.replace``-d over the target is atomic on POSIX file systems, adds no threads,
and lets the loader validate everything before it is used. orbax (installed) would bring asynchronous
writers, tensorstore directories and a much larger surface to audit for untrusted files, for no gain at
these sizes.

Loading never unpickles and never evaluates anything: msgpack decodes only primitive types and raw
array buffers (``np.frombuffer`` with a named dtype; object dtypes are refused by NumPy), the metadata is
JSON, and before anything is allocated the loader checks the magic bytes, the header sizes against the
file size and against a limit derived from the expected target, then the digest of metadata and payload,
then that the tree structure, every leaf shape and every dtype match the expected target. Any failure
raises :class:`CheckpointError` naming the file and what is wrong (never echoing the file's bytes).

The digest is a SHA-256: it detects corruption, not forgery — anyone who can write the output directory
can rewrite a ledger and recompute the hash, so certificates are as trustworthy as that directory's
permissions. For shared storage set the environment variable ``UNLEARN_JAX_CHECKPOINT_KEY`` (a secret
the user holds): checkpoints are then signed with HMAC-SHA256 under that key, and loading refuses an
unsigned checkpoint, or one signed under another key.

:class:`RunLock` is an exclusive ``flock`` on a lock file holding the owner's pid; a second run on the
same directory is refused with :class:`LockError` while the owner lives, and the lock of a dead owner
(released by the kernel) is taken over with a warning.
"""

from __future__ import annotations

import fcntl
import hashlib
import hmac
import json
import os
import re
import socket
import struct
import tempfile
import warnings
from collections.abc import Callable
from typing import Any

import flax.serialization
import jax
import jax.numpy as jnp
import numpy as np

__all__ = [
  "CheckpointError",
  "ForeignCheckpointError",
  "LockError",
  "RunLock",
  "save_checkpoint",
  "load_checkpoint",
  "read_metadata",
  "checkpoint_path",
  "list_checkpoints",
  "latest_checkpoint",
  "remove_checkpoints",
  "MAGIC",
]

PyTree = Any

MAGIC = b"ULJXCKP1"
_FORMAT_VERSION = 2  # 2: the digest covers the metadata too, and may be an HMAC
KEY_ENV = "UNLEARN_JAX_CHECKPOINT_KEY"
"""Environment variable holding the key that signs and verifies checkpoints (HMAC-SHA256); unset: SHA-256."""
_MAX_METADATA_BYTES = 1 << 20  # 1 MiB of JSON metadata at most
_PER_LEAF_OVERHEAD = 512  # msgpack framing per leaf (key, ext header, shape, dtype name), generous
_FIXED_OVERHEAD = 1 << 16
_CKPT_RE = re.compile(r"^ckpt_(\d{10})\.msgpack$")
_TMP_PREFIX = ".tmp-ckpt-"
LOCK_NAME = ".unlearn_jax.lock"


class CheckpointError(ValueError):
  """A checkpoint file is missing, truncated, corrupt, too large or does not match the expected target."""


class ForeignCheckpointError(CheckpointError):
  """A checkpoint directory holds the checkpoints of a different run (another configuration, data, key or
  initial parameters): resuming from them would mix two runs."""


class LockError(RuntimeError):
  """Another live process holds the lock of a checkpoint / output directory."""


# ----------------------------------------------------------------------------------------------------
# Leaves <-> arrays
# ----------------------------------------------------------------------------------------------------


def is_key(leaf: Any) -> bool:
  dtype = getattr(leaf, "dtype", None)
  return dtype is not None and jax.dtypes.issubdtype(dtype, jax.dtypes.prng_key)


def _leaf_signature(leaf: Any) -> tuple[tuple[int, ...], str]:
  """(shape, dtype name) of a leaf; a typed key is described by its key data's shape and ``key<impl>``."""
  if is_key(leaf):
    data = jax.eval_shape(jax.random.key_data, jax.ShapeDtypeStruct(leaf.shape, leaf.dtype))
    return tuple(data.shape), str(leaf.dtype)
  if hasattr(leaf, "shape") and hasattr(leaf, "dtype"):
    return tuple(int(s) for s in leaf.shape), np.dtype(leaf.dtype).name
  return (), np.asarray(leaf).dtype.name


def _to_numpy(leaf: Any) -> np.ndarray:
  if is_key(leaf):
    return np.asarray(jax.random.key_data(leaf))
  return np.asarray(leaf)


def _nbytes(signature: tuple[tuple[int, ...], str]) -> int:
  shape, name = signature
  if name.startswith("key<"):
    itemsize = 4
  elif name == "bfloat16":
    itemsize = 2
  else:
    itemsize = np.dtype(name).itemsize
  return int(np.prod(shape, dtype=np.int64)) * itemsize


# ----------------------------------------------------------------------------------------------------
# File paths
# ----------------------------------------------------------------------------------------------------


def checkpoint_path(directory: str | os.PathLike, step: int) -> str:
  """The file name of the checkpoint taken after ``step`` steps in ``directory``.

  Examples:
    >>> checkpoint_path("runs/a", 120)
    'runs/a/ckpt_0000000120.msgpack'
  """
  step = int(step)
  if step < 0:
    raise ValueError(f"step must be a non-negative integer, got {step}")
  return os.path.join(os.fspath(directory), f"ckpt_{step:010d}.msgpack")


def list_checkpoints(directory: str | os.PathLike) -> list[tuple[int, str]]:
  """``(step, path)`` of every checkpoint file in ``directory``, sorted by step (empty if none).

  Examples:
    >>> list_checkpoints("/nonexistent-dir")
    []
  """
  directory = os.fspath(directory)
  if not os.path.isdir(directory):
    return []
  found = []
  for name in os.listdir(directory):
    m = _CKPT_RE.match(name)
    if m:
      found.append((int(m.group(1)), os.path.join(directory, name)))
  return sorted(found)


def latest_checkpoint(directory: str | os.PathLike) -> str | None:
  """Path of the checkpoint with the most steps in ``directory``, or None.

  Examples:
    >>> latest_checkpoint("/nonexistent-dir") is None
    True
  """
  found = list_checkpoints(directory)
  return found[-1][1] if found else None


def remove_checkpoints(directory: str | os.PathLike, *, keep: int = 0) -> None:
  """Deletes all but the ``keep`` most recent checkpoints of ``directory`` and stale temporary files.

  Examples:
    >>> remove_checkpoints("/nonexistent-dir")
  """
  if keep < 0:
    raise ValueError(f"keep must be a non-negative integer, got {keep}")
  directory = os.fspath(directory)
  found = list_checkpoints(directory)
  for _, path in found[: max(len(found) - keep, 0)]:
    try:
      os.remove(path)
    except FileNotFoundError:
      pass
  if os.path.isdir(directory):
    for name in os.listdir(directory):
      if name.startswith(_TMP_PREFIX):
        try:
          os.remove(os.path.join(directory, name))
        except FileNotFoundError:
          pass


# ----------------------------------------------------------------------------------------------------
# Save
# ----------------------------------------------------------------------------------------------------


def _fsync_dir(directory: str) -> None:
  try:
    fd = os.open(directory, os.O_RDONLY)
  except OSError:  # pragma: no cover - platforms without directory fds
    return
  try:
    os.fsync(fd)
  except OSError:  # pragma: no cover
    pass
  finally:
    os.close(fd)


def save_checkpoint(path: str | os.PathLike, tree: PyTree, *, metadata: dict | None = None) -> None:
  """Writes ``tree`` (and JSON ``metadata``) to ``path`` atomically.

  The bytes go to a temporary file in the same directory, which is flushed and fsynced, then renamed
  over ``path`` with ``os.replace`` (and the directory fsynced): a reader, or a run killed at any
  moment, sees either the old file or the complete new one, never a partial file.

  Args:
    path: destination file; its directory must exist.
    tree: pytree whose leaves are arrays (NumPy, JAX, Python scalars, typed PRNG keys).
    metadata: JSON-serialisable dict stored in the header (e.g. step, config fingerprint).

  Raises:
    TypeError: a leaf is not an array, or ``metadata`` is not JSON-serialisable.

  Examples:
    >>> import tempfile, os, numpy as np
    >>> d = tempfile.mkdtemp()
    >>> save_checkpoint(os.path.join(d, "c.msgpack"), {"w": np.ones(3)}, metadata={"step": 3})
    >>> tree, meta = load_checkpoint(os.path.join(d, "c.msgpack"), {"w": np.zeros(3)})
    >>> print(tree["w"].tolist(), meta["step"])
    [1.0, 1.0, 1.0] 3
  """
  path = os.fspath(path)
  leaves, treedef = jax.tree.flatten(tree)
  arrays = {}
  signatures = []
  for i, leaf in enumerate(leaves):
    if not (hasattr(leaf, "shape") or isinstance(leaf, (int, float, bool, np.number, np.bool_))):
      raise TypeError(f"tree leaf {i} must be an array or a number, got {type(leaf).__name__}")
    arr = _to_numpy(leaf)
    if arr.dtype.kind not in "biufc" and arr.dtype.name != "bfloat16":
      raise TypeError(f"tree leaf {i} has unsupported dtype {arr.dtype}; only numeric and bool arrays")
    arrays[str(i)] = np.array(arr, order="C", copy=True)
    signatures.append(_leaf_signature(leaf))
  payload = flax.serialization.msgpack_serialize({"leaves": arrays})
  key = _signing_key()
  header = {
    "format_version": _FORMAT_VERSION,
    "digest": "sha256" if key is None else "hmac-sha256",
    "treedef": str(treedef),
    "signatures": [[list(s), d] for s, d in signatures],
    "metadata": metadata if metadata is not None else {},
  }
  try:
    meta_bytes = json.dumps(header, sort_keys=True, allow_nan=False).encode("utf-8")
  except (TypeError, ValueError) as e:
    raise TypeError(f"metadata must be JSON-serialisable (finite numbers, strings, lists, dicts): {e}") from e
  if len(meta_bytes) > _MAX_METADATA_BYTES:
    raise ValueError(f"metadata too large: {len(meta_bytes)} bytes > {_MAX_METADATA_BYTES}")
  blob = b"".join(
    [
      MAGIC,
      struct.pack("<I", len(meta_bytes)),
      meta_bytes,
      struct.pack("<Q", len(payload)),
      _digest(meta_bytes, payload, key),
      payload,
    ]
  )
  directory = os.path.dirname(os.path.abspath(path))
  fd, tmp = tempfile.mkstemp(prefix=_TMP_PREFIX, dir=directory)
  try:
    with os.fdopen(fd, "wb") as f:
      f.write(blob)
      f.flush()
      os.fsync(f.fileno())
    os.replace(tmp, path)
  except BaseException:
    try:
      os.remove(tmp)
    except FileNotFoundError:
      pass
    raise
  _fsync_dir(directory)


# ----------------------------------------------------------------------------------------------------
# Load
# ----------------------------------------------------------------------------------------------------


def _check_regular_file(path: str) -> None:
  if os.path.islink(path):
    raise CheckpointError(f"checkpoint file {path!r} is a symbolic link; checkpoints are regular files the run wrote")
  if not os.path.isfile(path):
    raise CheckpointError(f"checkpoint file {path!r} does not exist")


def _signing_key() -> bytes | None:
  key = os.environ.get(KEY_ENV)
  return key.encode("utf-8") if key else None


def _digest(meta_bytes: bytes, payload: bytes, key: bytes | None) -> bytes:
  """SHA-256 (corruption) or, with a key, HMAC-SHA256 (forgery) of the metadata and the payload."""
  if key is None:
    return hashlib.sha256(meta_bytes + payload).digest()
  return hmac.new(key, meta_bytes + payload, hashlib.sha256).digest()


def _check_digest(path: str, header: dict, meta_bytes: bytes, payload: bytes, digest: bytes) -> None:
  key = _signing_key()
  kind = header.get("digest")
  if kind == "hmac-sha256" and key is None:
    raise CheckpointError(f"{path} is signed (HMAC-SHA256): set {KEY_ENV} to the key it was written with")
  if kind == "sha256" and key is not None:
    raise CheckpointError(f"{path} is not signed, but {KEY_ENV} is set: refusing an unsigned checkpoint")
  if kind not in ("sha256", "hmac-sha256"):
    raise CheckpointError(f"{path} is corrupt: header field 'digest' is not 'sha256' or 'hmac-sha256'")
  if not hmac.compare_digest(_digest(meta_bytes, payload, key), digest):
    what = "SHA-256 of its metadata and payload" if key is None else f"HMAC under {KEY_ENV} (forged, or another key)"
    raise CheckpointError(f"{path} is corrupt: the {what} does not match its header")


def _read_header(f, path: str, file_size: int) -> tuple[dict, int, bytes, int, bytes]:
  """Returns (header dict, payload length, digest, payload offset, the metadata's bytes)."""
  magic = f.read(len(MAGIC))
  if magic != MAGIC:
    raise CheckpointError(
      f"{path} is not an unlearn_jax checkpoint (it does not start with the magic bytes {MAGIC!r}); "
      "checkpoints are never unpickled or evaluated"
    )
  raw = f.read(4)
  if len(raw) != 4:
    raise CheckpointError(f"{path} is truncated: the header ends after {file_size} bytes")
  (meta_len,) = struct.unpack("<I", raw)
  if meta_len > _MAX_METADATA_BYTES:
    raise CheckpointError(f"{path}: metadata length {meta_len} exceeds the limit {_MAX_METADATA_BYTES}")
  if len(MAGIC) + 4 + meta_len + 8 + 32 > file_size:
    raise CheckpointError(
      f"{path} is truncated: the header claims {meta_len} bytes of metadata but the file has {file_size} bytes"
    )
  meta_bytes = f.read(meta_len)
  try:
    header = json.loads(meta_bytes.decode("utf-8"))
  except (UnicodeDecodeError, json.JSONDecodeError) as e:
    raise CheckpointError(f"{path} is corrupt: its metadata is not valid JSON ({e})") from e
  if not isinstance(header, dict) or header.get("format_version") != _FORMAT_VERSION:
    version = header.get("format_version") if isinstance(header, dict) else None
    shown = version if isinstance(version, int) else f"(a {type(version).__name__})"
    raise CheckpointError(f"{path}: unsupported checkpoint format version {shown}, expected {_FORMAT_VERSION}")
  for field, kind in (("treedef", str), ("signatures", list), ("metadata", dict)):
    if not isinstance(header.get(field), kind):
      raise CheckpointError(f"{path} is corrupt: header field {field!r} missing or not a {kind.__name__}")
  (payload_len,) = struct.unpack("<Q", f.read(8))
  digest = f.read(32)
  offset = len(MAGIC) + 4 + meta_len + 8 + 32
  return header, payload_len, digest, offset, meta_bytes


def read_metadata(path: str | os.PathLike) -> dict:
  """Returns the JSON metadata of a checkpoint after checking its header (the payload is not read).

  Raises:
    CheckpointError: the file is missing, not a checkpoint, or its header is truncated / corrupt.

  Examples:
    >>> import tempfile, os, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "c.msgpack")
    >>> save_checkpoint(p, [np.zeros(2)], metadata={"step": 7})
    >>> read_metadata(p)["step"]
    7
  """
  path = os.fspath(path)
  _check_regular_file(path)
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    header = _read_header(f, path, size)[0]
  return header["metadata"]


def _template_signatures(target: PyTree) -> tuple[Any, list[tuple[tuple[int, ...], str]], list[Any]]:
  leaves, treedef = jax.tree.flatten(target)
  return treedef, [_leaf_signature(leaf) for leaf in leaves], leaves


def load_checkpoint(
  path: str | os.PathLike,
  target: PyTree | Callable[[dict], PyTree],
  *,
  max_bytes: int | None = None,
) -> tuple[PyTree, dict]:
  """Reads a checkpoint written by :func:`save_checkpoint`, validating it against ``target``.

  Args:
    path: checkpoint file.
    target: a pytree with the expected structure, leaf shapes and dtypes (arrays or
      ``jax.ShapeDtypeStruct``; typed PRNG keys are restored as typed keys), or a callable
      ``metadata -> target`` when the expected structure depends on the stored metadata.
    max_bytes: refuse payloads larger than this; default: the target's size plus framing overhead.

  Returns:
    ``(tree, metadata)``: the restored pytree (NumPy arrays; typed keys as JAX keys) with the structure
    of ``target``, and the metadata dict.

  Raises:
    CheckpointError: missing file, bad magic bytes (e.g. a pickle), truncated file, checksum mismatch,
      size over the limit, or structure / shape / dtype mismatch with ``target``.

  Examples:
    >>> import tempfile, os, numpy as np
    >>> p = os.path.join(tempfile.mkdtemp(), "c.msgpack")
    >>> save_checkpoint(p, {"w": np.arange(3.0)})
    >>> try:
    ...   load_checkpoint(p, {"w": np.zeros(4)})
    ... except CheckpointError as e:
    ...   print("shape" in str(e))
    True
  """
  path = os.fspath(path)
  _check_regular_file(path)
  size = os.path.getsize(path)
  with open(path, "rb") as f:
    header, payload_len, digest, offset, meta_bytes = _read_header(f, path, size)
    target = _resolve_target(path, target, header["metadata"])
    treedef, signatures, target_leaves = _template_signatures(target)
    _check_signatures(path, header, treedef, signatures)
    _check_payload_length(path, payload_len, signatures, max_bytes, offset, size)
    payload = f.read(payload_len)
  _check_digest(path, header, meta_bytes, payload, digest)
  leaves = _decode_leaves(path, payload, signatures, target_leaves)
  return jax.tree.unflatten(treedef, leaves), header["metadata"]


def _resolve_target(path: str, target, metadata: dict) -> PyTree:
  """``target`` itself, or ``target(metadata)`` when it is a callable (any failure: a bad file)."""
  if not callable(target) or isinstance(target, (list, tuple, dict)):
    return target
  try:
    return target(metadata)
  except CheckpointError:
    raise
  except Exception as e:  # the metadata came from the file: any failure means a bad file
    raise CheckpointError(f"{path}: its metadata does not describe a valid checkpoint ({type(e).__name__}: {e})") from e


def _check_signatures(path: str, header: dict, treedef, signatures) -> None:
  """The stored tree structure and every leaf's shape and dtype are the target's."""
  if header["treedef"] != str(treedef):
    raise CheckpointError(
      f"{path} does not match the expected structure: stored tree {header['treedef']} but expected {treedef}"
    )
  stored = header["signatures"]
  if len(stored) != len(signatures):
    raise CheckpointError(f"{path}: stored {len(stored)} leaves, expected {len(signatures)}")
  for i, ((shape, name), item) in enumerate(zip(signatures, stored)):
    if not isinstance(item, list) or len(item) != 2 or tuple(item[0]) != shape or item[1] != name:
      raise CheckpointError(
        f"{path}: leaf {i} has shape/dtype {item!r} in the file but the target expects shape {list(shape)} dtype {name}"
      )


def _check_payload_length(path: str, payload_len: int, signatures, max_bytes, offset: int, size: int) -> None:
  """The announced payload fits the limit (default: the target's size plus framing) and ends the file."""
  if max_bytes is None:
    max_bytes = sum(_nbytes(s) for s in signatures) + _PER_LEAF_OVERHEAD * (len(signatures) + 1) + _FIXED_OVERHEAD
  if payload_len > max_bytes:
    raise CheckpointError(
      f"{path}: payload of {payload_len} bytes exceeds the limit of {max_bytes} bytes for the expected "
      "target; refusing to read it"
    )
  if offset + payload_len != size:
    raise CheckpointError(
      f"{path} is truncated or has trailing bytes: the header announces {payload_len} payload bytes "
      f"after offset {offset}, the file has {size} bytes in all"
    )


def _decode_leaves(path: str, payload: bytes, signatures, target_leaves) -> list:
  """The payload's leaves as writable NumPy arrays (typed PRNG keys as JAX keys), each checked."""
  try:
    restored = flax.serialization.msgpack_restore(payload)
  except Exception as e:  # msgpack raises several exception types on malformed input
    raise CheckpointError(f"{path} is corrupt: its payload does not decode ({type(e).__name__}: {e})") from e
  if not isinstance(restored, dict) or not isinstance(restored.get("leaves"), dict):
    raise CheckpointError(f"{path} is corrupt: payload is not a dict with a 'leaves' dict")
  stored_leaves = restored["leaves"]
  if sorted(stored_leaves) != sorted(str(i) for i in range(len(signatures))):
    raise CheckpointError(f"{path} is corrupt: payload leaves do not match its header")
  out = []
  for i, ((shape, name), tleaf) in enumerate(zip(signatures, target_leaves)):
    arr = stored_leaves[str(i)]
    if not isinstance(arr, np.ndarray):
      arr = np.asarray(arr)
    if name.startswith("key<"):
      if arr.shape != shape or arr.dtype != np.uint32:
        raise CheckpointError(f"{path}: key leaf {i} has data {arr.shape} {arr.dtype}, expected {shape} uint32")
      impl = (
        jax.random.key_impl(tleaf)
        if not isinstance(tleaf, jax.ShapeDtypeStruct)
        else getattr(tleaf.dtype, "_impl", None)
      )
      out.append(jax.random.wrap_key_data(jnp.asarray(arr), impl=impl))
      continue
    if arr.shape != shape or arr.dtype.name != name:
      raise CheckpointError(
        f"{path}: leaf {i} decodes to shape {list(arr.shape)} dtype {arr.dtype.name}, expected {list(shape)} {name}"
      )
    out.append(np.array(arr))  # writable copy
  return out


# ----------------------------------------------------------------------------------------------------
# Lock
# ----------------------------------------------------------------------------------------------------


class RunLock:
  """A lock of ``directory`` that refuses a second concurrent run.

  The lock is an exclusive ``fcntl.flock`` on ``directory/.unlearn_jax.lock`` (opened with
  ``O_NOFOLLOW``: a symbolic link there is refused, never followed), which holds ``"<pid> <hostname>"``
  for the messages. The kernel releases the lock when its process dies, however it dies, so taking
  over after a crash is atomic: of two restarts exactly one gets it. A lock file left by a dead run is
  taken over with a ``RuntimeWarning``. After the lock is taken, the file is checked to still be the one
  at the path (a holder that released meanwhile unlinks it), so two runs never hold two different files.
  Use as a context manager; the lock file is removed on exit.

  Examples:
    >>> import tempfile
    >>> d = tempfile.mkdtemp()
    >>> with RunLock(d):
    ...   try:
    ...     RunLock(d).acquire()
    ...   except LockError:
    ...     print("refused")
    refused
  """

  def __init__(self, directory: str | os.PathLike):
    self.directory = os.fspath(directory)
    self.path = os.path.join(self.directory, LOCK_NAME)
    self._fd: int | None = None

  def _open(self) -> int:
    try:
      return os.open(self.path, os.O_RDWR | os.O_CREAT | os.O_NOFOLLOW, 0o644)
    except OSError as e:
      if os.path.islink(self.path):
        raise LockError(f"the lock file {self.path} is a symbolic link; refusing to follow it") from e
      raise LockError(f"cannot open the lock file {self.path}: {e.strerror}") from e

  def _owner(self, fd: int) -> tuple[int, str | None]:
    """(pid, host) recorded in the lock file; only digits and host-name characters are ever shown."""
    os.lseek(fd, 0, os.SEEK_SET)
    parts = os.read(fd, 256).decode("ascii", "replace").split()
    pid = int(parts[0]) if parts and parts[0].isdigit() else -1
    host = parts[1] if len(parts) > 1 and re.fullmatch(r"[A-Za-z0-9.\-]{1,64}", parts[1]) else None
    return pid, host

  def acquire(self) -> RunLock:
    """Takes the lock or raises :class:`LockError`."""
    os.makedirs(self.directory, exist_ok=True)
    for _ in range(10):
      fd = self._open()
      try:
        fcntl.flock(fd, fcntl.LOCK_EX | fcntl.LOCK_NB)
      except BlockingIOError:
        pid, host = self._owner(fd)
        os.close(fd)
        who = f"pid {pid} on {host or 'this host'}" if pid > 0 else "another process"
        raise LockError(
          f"directory {self.directory!r} is locked by another run ({who}; lock file {self.path}); wait for "
          "it to finish or use another directory"
        ) from None
      try:
        same = os.path.samestat(os.fstat(fd), os.stat(self.path, follow_symlinks=False))
      except FileNotFoundError:
        same = False
      if not same:  # the file was released (unlinked) between our open and our lock: try the new one
        os.close(fd)
        continue
      pid, _ = self._owner(fd)
      if pid != -1 or os.fstat(fd).st_size:
        warnings.warn(
          f"taking over the stale lock {self.path} (owner pid {pid if pid > 0 else '?'} is not running)",
          RuntimeWarning,
          stacklevel=2,
        )
      os.ftruncate(fd, 0)
      os.lseek(fd, 0, os.SEEK_SET)
      os.write(fd, f"{os.getpid()} {socket.gethostname()}\n".encode())
      os.fsync(fd)
      self._fd = fd
      return self
    raise LockError(f"could not acquire the lock {self.path}: it keeps being re-created by another run")

  def release(self) -> None:
    """Removes the lock file and releases the lock if this object holds it."""
    if self._fd is not None:
      fd, self._fd = self._fd, None
      try:
        os.remove(self.path)  # while still holding it: a waiter then sees a different (new) file
      except FileNotFoundError:
        pass
      os.close(fd)

  def __enter__(self) -> RunLock:
    return self.acquire()

  def __exit__(self, *exc) -> None:
    self.release()
