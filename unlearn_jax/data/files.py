"""Safe loaders of data sets in their published file formats: CIFAR-10 (binary batches) and SVHN
(cropped digits, MATLAB ``.mat``).

Untrusted files: the loaders never unpickle and never evaluate anything. CIFAR-10 is read only from its
*binary* distribution (fixed-size records of raw bytes); the python (pickle) distribution is refused
with an error. SVHN ``.mat`` files are first pre-scanned by a small MATLAB-v5 header reader of our own,
which checks every claimed size against explicit limits *before* anything large is allocated, and are
then read with :func:`scipy.io.loadmat` (whose v5 reader parses typed binary records and never
unpickles). Images are NHWC, pixels scaled by ``scale`` (default 1/255); labels int32.
"""

from __future__ import annotations

import os
import struct
import zlib
from typing import Any, NamedTuple

import numpy as np
from scipy import io as sio

from unlearn_jax import _checks
from unlearn_jax.data.dataset import Dataset, check_int, make, normalize

__all__ = ["DEFAULT_MAX_EXAMPLES", "DEFAULT_MAX_FILE_BYTES", "load_cifar10", "load_svhn"]

#: Largest data file a loader reads (bytes); larger files are refused before reading.
DEFAULT_MAX_FILE_BYTES = 2**31


#: Largest number of examples a file may claim; larger claims are refused before allocating.
DEFAULT_MAX_EXAMPLES = 10_000_000


_CIFAR_RECORD = 1 + 3 * 32 * 32


_CIFAR_TRAIN = tuple(f"data_batch_{i}.bin" for i in range(1, 6))


_CIFAR_TEST = "test_batch.bin"


def _check_directory(directory: Any, what: str) -> str:
  if not isinstance(directory, (str, os.PathLike)):
    raise TypeError(f"directory must be a path (str or os.PathLike), got {type(directory).__name__}")
  directory = os.fspath(directory)
  if not os.path.exists(directory):
    raise FileNotFoundError(f"{what} directory {directory!r} does not exist")
  if not os.path.isdir(directory):
    raise NotADirectoryError(f"{what} directory {directory!r} is not a directory")
  return directory


def _check_file(path: str, what: str, max_file_bytes: int) -> int:
  if not os.path.exists(path):
    raise FileNotFoundError(f"{what}: missing file {path!r}")
  if not os.path.isfile(path):
    raise ValueError(f"{what}: {path!r} is not a regular file")
  size = os.path.getsize(path)
  if size == 0:
    raise ValueError(f"{what}: file {path!r} is empty")
  if size > max_file_bytes:
    raise ValueError(
      f"{what}: file {path!r} has {size} bytes, more than max_file_bytes = {max_file_bytes}; "
      "refusing to read it (raise max_file_bytes if the file is genuine)"
    )
  return size


def _read_cifar_file(path: str, max_file_bytes: int, max_examples: int) -> tuple[np.ndarray, np.ndarray]:
  size = _check_file(path, "CIFAR-10", max_file_bytes)
  if size % _CIFAR_RECORD:
    raise ValueError(
      f"CIFAR-10: file {path!r} is truncated or corrupt: its size {size} bytes is not a multiple of the "
      f"record size {_CIFAR_RECORD} (1 label byte + 3072 pixel bytes); is this the binary distribution?"
    )
  count = size // _CIFAR_RECORD
  if count > max_examples:
    raise ValueError(f"CIFAR-10: file {path!r} holds {count} records, more than max_examples = {max_examples}")
  with open(path, "rb") as f:
    raw = np.frombuffer(f.read(size), dtype=np.uint8)
  if raw.size != size:
    raise ValueError(f"CIFAR-10: file {path!r} shrank while reading ({raw.size} of {size} bytes)")
  records = raw.reshape(count, _CIFAR_RECORD)
  labels = records[:, 0]
  if labels.max() > 9:
    bad = np.flatnonzero(labels > 9)
    raise ValueError(
      f"CIFAR-10: file {path!r} is corrupt: label byte {int(labels[bad[0]])} > 9 in record {int(bad[0])} "
      f"({bad.size} bad record(s)); labels must lie in [0, 10)"
    )
  images = records[:, 1:].reshape(count, 3, 32, 32).transpose(0, 2, 3, 1)  # channel-major -> NHWC
  return images, labels


def load_cifar10(
  directory: str | os.PathLike,
  *,
  scale: float = 1 / 255,
  normalization: str = "none",
  n_train: int | None = None,
  n_test: int | None = None,
  seed: int = 0,
  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
  max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> Dataset:
  """CIFAR-10 from its **binary** distribution in ``directory``.

  Reads ``data_batch_1.bin`` ... ``data_batch_5.bin`` and ``test_batch.bin`` (each record: 1 label byte
  then 3,072 pixel bytes, channel-major 3x32x32), from ``directory`` or its ``cifar-10-batches-bin/``
  subdirectory. Nothing is unpickled: the python distribution (``data_batch_1`` without ``.bin``) is
  refused. Sizes are checked before reading; every label byte must be in [0, 9].

  Args:
    directory: folder holding the ``.bin`` files.
    scale: factor applied to the 0..255 pixels (default: to [0, 1]).
    normalization: see :func:`normalize` ("channel" is usual for images).
    n_train, n_test: optional fixed-seed subsample sizes (taken before conversion to float32).
    seed: seed of the subsample.
    max_file_bytes: largest file read.
    max_examples: largest number of records per file.

  Returns:
    A :class:`Dataset` named "cifar10", x of shape (n, 32, 32, 3).

  Raises:
    FileNotFoundError: missing directory or file. ValueError: truncated/corrupt/oversized file.

  Examples:
    >>> import tempfile, os
    >>> d = tempfile.mkdtemp()
    >>> for name in [f"data_batch_{i}.bin" for i in range(1, 6)] + ["test_batch.bin"]:
    ...   _ = open(os.path.join(d, name), "wb").write(bytes([3]) + bytes(3072))
    >>> ds = load_cifar10(d)
    >>> ds.x_train.shape, ds.y_test.tolist()
    ((5, 32, 32, 3), [3])
  """
  directory = _check_directory(directory, "CIFAR-10")
  _checks.check_positive("scale", scale)
  sub = os.path.join(directory, "cifar-10-batches-bin")
  if not os.path.exists(os.path.join(directory, _CIFAR_TRAIN[0])) and os.path.isdir(sub):
    directory = sub
  if not os.path.exists(os.path.join(directory, _CIFAR_TRAIN[0])):
    for python_version in (os.path.join(directory, "data_batch_1"), os.path.join(directory, "cifar-10-batches-py")):
      if os.path.exists(python_version):
        raise ValueError(
          f"CIFAR-10: found {python_version!r}, the python (pickle) distribution, which is never unpickled "
          f"(unpickling can run arbitrary code); use the binary distribution (cifar-10-binary.tar.gz, "
          f"files data_batch_1.bin ... test_batch.bin)"
        )
  parts = [
    _read_cifar_file(os.path.join(directory, f), max_file_bytes, max_examples) for f in _CIFAR_TRAIN + (_CIFAR_TEST,)
  ]
  return _images_dataset(
    np.concatenate([p[0] for p in parts[:-1]]),
    np.concatenate([p[1] for p in parts[:-1]]),
    parts[-1][0],
    parts[-1][1],
    "cifar10",
    scale=scale,
    normalization=normalization,
    n_train=n_train,
    n_test=n_test,
    seed=seed,
  )


def _images_dataset(x_train, y_train, x_test, y_test, name, *, scale, normalization, n_train, n_test, seed):
  rng = np.random.default_rng(seed)
  for split, n in (("train", n_train), ("test", n_test)):
    if n is None:
      continue
    size = (y_train if split == "train" else y_test).shape[0]
    n = check_int(f"n_{split}", n, minimum=1 if split == "train" else 0)
    if n > size:
      raise ValueError(f"n_{split} must be at most the number of {split} examples {size}, got {n}")
    idx = np.sort(rng.permutation(size)[:n])
    if split == "train":
      x_train, y_train = x_train[idx], y_train[idx]
    else:
      x_test, y_test = x_test[idx], y_test[idx]
  ds = make(
    x_train.astype(np.float32) * np.float32(scale),
    y_train,
    x_test.astype(np.float32) * np.float32(scale),
    y_test,
    10,
    name,
  )
  return normalize(ds, normalization)


# MATLAB v5 constants (MAT-File Format, The MathWorks, "Data Element Format").
_MI_SIZES = {1: 1, 2: 1, 3: 2, 4: 2, 5: 4, 6: 4, 7: 4, 9: 8, 12: 8, 13: 8}  # numeric data types -> bytes


_MI_MATRIX, _MI_COMPRESSED = 14, 15


_MX_NUMERIC = {6: 8, 7: 4, 8: 1, 9: 1, 10: 2, 11: 2, 12: 4, 13: 4, 14: 8, 15: 8}  # array class -> bytes


class _MatVar(NamedTuple):
  name: str
  array_class: int
  dims: tuple[int, ...]
  data_type: int
  data_bytes: int


def _mat_subelement(buf: bytes, pos: int, endian: str, path: str) -> tuple[int, bytes, int]:
  """Parses one data element of a miMATRIX header; returns (type, payload, next position)."""
  if pos + 8 > len(buf):
    raise ValueError(f"SVHN: {path!r} is truncated or corrupt (incomplete MAT element header)")
  first, second = struct.unpack(endian + "II", buf[pos : pos + 8])
  if first >> 16:  # small data element: type and size share the first word, payload in 4 bytes
    nbytes, mtype = first >> 16, first & 0xFFFF
    if nbytes > 4:
      raise ValueError(f"SVHN: {path!r} is corrupt (small MAT element claims {nbytes} bytes)")
    return mtype, buf[pos + 4 : pos + 4 + nbytes], pos + 8
  mtype, nbytes = first, second
  end = pos + 8 + nbytes
  return mtype, buf[pos + 8 : end], end + (-nbytes % 8)


def _parse_matrix_header(buf: bytes, endian: str, path: str) -> _MatVar:
  """Parses flags, dimensions, name and the real-part tag of a miMATRIX element (``buf`` past its tag)."""
  _, flags, pos = _mat_subelement(buf, 0, endian, path)
  if len(flags) < 4:
    raise ValueError(f"SVHN: {path!r} is corrupt (MAT array flags missing)")
  array_class = struct.unpack(endian + "I", flags[:4])[0] & 0xFF
  dtype, dims_raw, pos = _mat_subelement(buf, pos, endian, path)
  if dtype != 5 or len(dims_raw) % 4 or not dims_raw:
    raise ValueError(f"SVHN: {path!r} is corrupt (MAT dimensions element of type {dtype}, {len(dims_raw)} bytes)")
  dims = struct.unpack(endian + f"{len(dims_raw) // 4}i", dims_raw)
  _, name_raw, pos = _mat_subelement(buf, pos, endian, path)
  name = name_raw.decode("latin-1")
  data_type, data_bytes = -1, 0
  if array_class in _MX_NUMERIC:
    if pos + 8 > len(buf):
      raise ValueError(f"SVHN: {path!r} is truncated (MAT data tag of {name!r} missing)")
    first, second = struct.unpack(endian + "II", buf[pos : pos + 8])
    data_type, data_bytes = (first & 0xFFFF, first >> 16) if first >> 16 else (first, second)
  return _MatVar(name, array_class, tuple(dims), data_type, data_bytes)


def _scan_mat_file(path: str, max_file_bytes: int) -> dict[str, _MatVar]:
  """Reads only the headers of a MATLAB v5 file's top-level variables; never allocates claimed sizes."""
  size = _check_file(path, "SVHN", max_file_bytes)
  variables = {}
  with open(path, "rb") as f:
    header = f.read(128)
    if len(header) < 128:
      raise ValueError(f"SVHN: {path!r} is truncated or not a MATLAB file ({len(header)} bytes)")
    if header.startswith(b"\x89HDF") or header[:19] == b"MATLAB 7.3 MAT-file":
      raise ValueError(f"SVHN: {path!r} is a MATLAB v7.3 (HDF5) file; only MATLAB v5/v7 .mat files are read")
    if not header.startswith(b"MATLAB 5.0 MAT-file") or header[126:128] not in (b"IM", b"MI"):
      raise ValueError(
        f"SVHN: {path!r} is not a MATLAB v5 .mat file (bad header {header[:20]!r}); files are never unpickled"
      )
    endian = "<" if header[126:128] == b"IM" else ">"
    pos = 128
    while pos + 8 <= size:
      f.seek(pos)
      mtype, nbytes = struct.unpack(endian + "II", f.read(8))
      if pos + 8 + nbytes > size:
        raise ValueError(
          f"SVHN: {path!r} is truncated or corrupt: an element at byte {pos} claims "
          f"{nbytes} bytes but only {size - pos - 8} remain"
        )
      if mtype == _MI_COMPRESSED:
        inflater = zlib.decompressobj()
        head, remaining = b"", nbytes
        try:
          while len(head) < 512 and remaining > 0:
            chunk = f.read(min(4096, remaining))
            remaining -= len(chunk)
            head += inflater.decompress(chunk, 512 - len(head))
            if inflater.eof or not chunk:
              break
        except zlib.error as e:
          raise ValueError(f"SVHN: {path!r} is corrupt (bad compressed element at byte {pos}: {e})") from e
        if len(head) < 8:
          raise ValueError(f"SVHN: {path!r} is corrupt (compressed element at byte {pos} too short)")
        inner_type, _ = struct.unpack(endian + "II", head[:8])
        if inner_type == _MI_MATRIX:
          var = _parse_matrix_header(head[8:], endian, path)
          variables[var.name] = var
      elif mtype == _MI_MATRIX:
        var = _parse_matrix_header(f.read(min(nbytes, 512)), endian, path)
        variables[var.name] = var
      pos += 8 + nbytes  # miMATRIX sizes include their padding; compressed elements are not padded
  return variables


def _read_svhn_file(path: str, max_file_bytes: int, max_examples: int) -> tuple[np.ndarray, np.ndarray]:
  variables = _scan_mat_file(path, max_file_bytes)
  for name in ("X", "y"):
    if name not in variables:
      raise ValueError(f"SVHN: {path!r} has no variable {name!r} (found {sorted(variables)})")
  xv, yv = variables["X"], variables["y"]
  if xv.array_class not in _MX_NUMERIC or yv.array_class not in _MX_NUMERIC:
    raise ValueError(f"SVHN: {path!r}: X and y must be numeric arrays (MAT classes {xv.array_class}, {yv.array_class})")
  if len(xv.dims) != 4 or xv.dims[:3] != (32, 32, 3):
    raise ValueError(f"SVHN: {path!r}: X must have shape (32, 32, 3, N), got {xv.dims}")
  count = xv.dims[3]
  if not 0 < count <= max_examples:
    raise ValueError(f"SVHN: {path!r}: X claims {count} images; allowed 1 to max_examples = {max_examples}")
  if sorted(yv.dims) != [1, count]:
    raise ValueError(f"SVHN: {path!r}: y must have shape ({count}, 1) to match X, got {yv.dims}")
  for var, n_elems in ((xv, 32 * 32 * 3 * count), (yv, count)):
    expected = n_elems * _MI_SIZES.get(var.data_type, 0)
    if var.data_type not in _MI_SIZES or var.data_bytes != expected or expected > max_file_bytes:
      raise ValueError(
        f"SVHN: {path!r} is corrupt: variable {var.name!r} of shape {var.dims} claims "
        f"{var.data_bytes} data bytes of MAT type {var.data_type} (expected {expected})"
      )
  try:
    # scipy's v5 reader parses typed binary records (no pickle); only X and y are read.
    mat = sio.loadmat(
      path,
      variable_names=["X", "y"],
      squeeze_me=False,
      struct_as_record=True,
      chars_as_strings=False,
      verify_compressed_data_integrity=True,
    )
  except Exception as e:  # any parse failure is a corrupt file
    raise ValueError(f"SVHN: {path!r} is corrupt or truncated: {type(e).__name__}: {e}") from e
  x, y = np.asarray(mat["X"]), np.asarray(mat["y"]).reshape(-1)
  if x.shape != (32, 32, 3, count) or y.shape != (count,):
    raise ValueError(f"SVHN: {path!r}: read shapes X {x.shape}, y {y.shape}; expected (32, 32, 3, {count}), ({count},)")
  if not np.all(np.isfinite(y)) or np.any(y != np.round(y)) or np.any((y < 0) | (y > 10)):
    bad = y[~(np.isfinite(y) & (y == np.round(y)) & (y >= 0) & (y <= 10))]
    raise ValueError(
      f"SVHN: {path!r}: labels must be integers in [0, 10] (10 means digit 0), got e.g. {bad[:5].tolist()}"
    )
  if x.dtype != np.uint8 and (np.any(x < 0) | np.any(x > 255)):
    raise ValueError(f"SVHN: {path!r}: pixels must lie in [0, 255]")
  y = np.where(y == 10, 0, y).astype(np.int32)
  return np.transpose(x, (3, 0, 1, 2)), y


def load_svhn(
  directory: str | os.PathLike,
  *,
  scale: float = 1 / 255,
  normalization: str = "none",
  n_train: int | None = None,
  n_test: int | None = None,
  seed: int = 0,
  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
  max_examples: int = DEFAULT_MAX_EXAMPLES,
) -> Dataset:
  """SVHN cropped digits from ``train_32x32.mat`` and ``test_32x32.mat`` in ``directory``.

  Each file is MATLAB v5 with ``X`` (32x32x3xN uint8) and ``y`` (Nx1, label 10 meaning digit 0; mapped to
  0). The file headers are pre-scanned by our own reader and every claimed size is checked against
  ``max_examples`` / ``max_file_bytes`` before :func:`scipy.io.loadmat` reads the two variables.

  Args:
    directory: folder holding the two ``.mat`` files.
    scale: factor applied to the 0..255 pixels (default: to [0, 1]).
    normalization: see :func:`normalize`.
    n_train, n_test: optional fixed-seed subsample sizes.
    seed: seed of the subsample.
    max_file_bytes: largest file read and largest claimed variable size.
    max_examples: largest number of images a file may claim.

  Returns:
    A :class:`Dataset` named "svhn", x of shape (n, 32, 32, 3).

  Raises:
    FileNotFoundError: missing directory or file. ValueError: truncated/corrupt/oversized file.

  Examples:
    >>> import tempfile, os, numpy as np, scipy.io
    >>> d = tempfile.mkdtemp()
    >>> for name in ("train_32x32.mat", "test_32x32.mat"):
    ...   scipy.io.savemat(os.path.join(d, name), {"X": np.zeros((32, 32, 3, 2), np.uint8),
    ...                                            "y": np.array([[10], [3]], np.uint8)})
    >>> ds = load_svhn(d)
    >>> ds.x_train.shape, ds.y_train.tolist()
    ((2, 32, 32, 3), [0, 3])
  """
  directory = _check_directory(directory, "SVHN")
  _checks.check_positive("scale", scale)
  x_train, y_train = _read_svhn_file(os.path.join(directory, "train_32x32.mat"), max_file_bytes, max_examples)
  x_test, y_test = _read_svhn_file(os.path.join(directory, "test_32x32.mat"), max_file_bytes, max_examples)
  return _images_dataset(
    x_train,
    y_train,
    x_test,
    y_test,
    "svhn",
    scale=scale,
    normalization=normalization,
    n_train=n_train,
    n_test=n_test,
    seed=seed,
  )
