"""MNIST-format (IDX) files: MNIST, Fashion-MNIST and KMNIST, from a local directory.

An IDX file is two zero bytes, a type byte (0x08 unsigned byte, 0x09 signed byte, 0x0B int16, 0x0C int32,
0x0D float32, 0x0E float64), a byte with the number of dimensions d, d big-endian uint32 sizes, then the
values in row-major order, big-endian. Images are ``idx3`` (n, rows, cols) of unsigned bytes, labels
``idx1`` (n,) of unsigned bytes. Files may be gzip-compressed (``.gz``, as published) or raw. Every size
is checked against the header before anything is allocated: a truncated file, trailing bytes, a wrong
magic number or mismatched counts raise an error naming the file. Nothing is downloaded.
"""

from __future__ import annotations

import gzip
import os
import struct
from typing import Any

import numpy as np

from unlearn_jax import _checks
from unlearn_jax.data.dataset import Dataset, make, normalize, subsample
from unlearn_jax.data.files import DEFAULT_MAX_FILE_BYTES, _check_directory

__all__ = ["IDX_FILES", "load_idx", "read_idx"]

_TYPES = {0x08: ">u1", 0x09: ">i1", 0x0B: ">i2", 0x0C: ">i4", 0x0D: ">f4", 0x0E: ">f8"}

IDX_FILES = {
  "train_images": "train-images-idx3-ubyte",
  "train_labels": "train-labels-idx1-ubyte",
  "test_images": "t10k-images-idx3-ubyte",
  "test_labels": "t10k-labels-idx1-ubyte",
}
"""The four files of an MNIST-format data set (each also accepted with ``.gz``)."""

_NAMES = {"mnist": "MNIST", "fashion_mnist": "Fashion-MNIST", "kmnist": "KMNIST"}


def _read_bytes(path: str, max_file_bytes: int) -> bytes:
  """The (decompressed) bytes of ``path``, never more than ``max_file_bytes``."""
  if path.endswith(".gz"):
    try:
      with gzip.open(path, "rb") as f:
        data = f.read(max_file_bytes + 1)
    except (OSError, EOFError) as e:
      raise ValueError(f"IDX: {path!r} is not a complete gzip file ({e})") from e
  else:
    with open(path, "rb") as f:
      data = f.read(max_file_bytes + 1)
  if len(data) > max_file_bytes:
    raise ValueError(f"IDX: {path!r} holds more than max_file_bytes = {max_file_bytes} bytes; refusing to read it")
  return data


def read_idx(path: str | os.PathLike, *, ndim: int | None = None, max_file_bytes: int = DEFAULT_MAX_FILE_BYTES):
  """Reads one IDX file (raw or ``.gz``) into a NumPy array, checking its header against its size.

  Args:
    path: the file.
    ndim: the number of dimensions the file must have (None: any).
    max_file_bytes: the largest (decompressed) size read.

  Returns:
    The array, with the header's shape and dtype (native byte order).

  Raises:
    FileNotFoundError: no such file. ValueError: a wrong magic number, a truncated file, trailing bytes,
      or another number of dimensions than ``ndim``.

  Examples:
    >>> import tempfile, os, struct
    >>> p = os.path.join(tempfile.mkdtemp(), "labels-idx1-ubyte")
    >>> _ = open(p, "wb").write(struct.pack(">BBBBI", 0, 0, 0x08, 1, 3) + bytes([7, 0, 9]))
    >>> read_idx(p, ndim=1).tolist()
    [7, 0, 9]
  """
  path = os.fspath(path)
  if not os.path.isfile(path):
    raise FileNotFoundError(f"IDX: missing file {path!r}")
  data = _read_bytes(path, max_file_bytes)
  if len(data) < 4:
    raise ValueError(f"IDX: {path!r} is truncated: {len(data)} bytes, shorter than the 4-byte magic number")
  zero0, zero1, code, dims = data[0], data[1], data[2], data[3]
  if zero0 or zero1 or code not in _TYPES or dims == 0:
    raise ValueError(
      f"IDX: {path!r} does not start with an IDX magic number (0x0000, a type byte in "
      f"{[hex(c) for c in _TYPES]}, a number of dimensions >= 1); is it an MNIST-format file?"
    )
  if ndim is not None and dims != ndim:
    raise ValueError(f"IDX: {path!r} has {dims} dimensions, expected {ndim}")
  header = 4 + 4 * dims
  if len(data) < header:
    raise ValueError(f"IDX: {path!r} is truncated inside its header ({len(data)} of {header} bytes)")
  shape = struct.unpack(f">{dims}I", data[4:header])
  dtype = np.dtype(_TYPES[code])
  want = int(np.prod(shape, dtype=np.int64)) * dtype.itemsize
  got = len(data) - header
  if got != want:
    what = "truncated" if got < want else "followed by trailing bytes"
    raise ValueError(
      f"IDX: {path!r} is {what}: its header announces shape {list(shape)} ({want} bytes of data), the file holds {got}"
    )
  return np.frombuffer(data, dtype=dtype, offset=header).reshape(shape).astype(dtype.newbyteorder("="))


def _find(directory: str, stem: str) -> str:
  for name in (stem + ".gz", stem):
    path = os.path.join(directory, name)
    if os.path.isfile(path):
      return path
  raise FileNotFoundError(f"IDX: missing file {os.path.join(directory, stem)!r} (or its .gz) in {directory!r}")


def _split(directory: str, split: str, what: str, max_file_bytes: int) -> tuple[np.ndarray, np.ndarray]:
  images_path = _find(directory, IDX_FILES[f"{split}_images"])
  labels_path = _find(directory, IDX_FILES[f"{split}_labels"])
  images = read_idx(images_path, ndim=3, max_file_bytes=max_file_bytes)
  labels = read_idx(labels_path, ndim=1, max_file_bytes=max_file_bytes)
  if images.dtype != np.uint8 or labels.dtype != np.uint8:
    raise ValueError(f"{what}: {images_path!r} and {labels_path!r} must hold unsigned bytes (type 0x08)")
  if images.shape[0] != labels.shape[0]:
    raise ValueError(
      f"{what}: {images_path!r} holds {images.shape[0]} images but {labels_path!r} {labels.shape[0]} labels"
    )
  if labels.size and labels.max() > 9:
    bad = int(np.flatnonzero(labels > 9)[0])
    raise ValueError(f"{what}: {labels_path!r} is corrupt: label {int(labels[bad])} at {bad}; labels lie in [0, 10)")
  return images, labels


def load_idx(
  directory: str | os.PathLike,
  *,
  name: str = "fashion_mnist",
  scale: float = 1 / 255,
  normalization: str = "feature",
  n_train: int | None = None,
  n_test: int | None = None,
  seed: int = 0,
  max_file_bytes: int = DEFAULT_MAX_FILE_BYTES,
) -> Dataset:
  """MNIST, Fashion-MNIST or KMNIST from the four IDX files in ``directory``.

  Reads ``train-images-idx3-ubyte``, ``train-labels-idx1-ubyte``, ``t10k-images-idx3-ubyte`` and
  ``t10k-labels-idx1-ubyte`` (each raw or ``.gz``; on Debian-based systems ``apt-get install
  dataset-fashion-mnist`` puts Fashion-MNIST's in ``/usr/share/datasets/fashion-mnist``). Images become
  float32 (n, rows, cols, 1) times ``scale``, then ``normalization`` (per pixel by default, from the
  training split, as for the other loaders).

  Args:
    directory: folder holding the four files.
    name: ``"mnist"``, ``"fashion_mnist"`` or ``"kmnist"`` (the data set's name; the format is the same).
    scale: factor applied to the 0..255 pixels.
    normalization: see :func:`~unlearn_jax.data.normalize`.
    n_train, n_test: stratified subsets of these sizes (class proportions kept), the same for the same
      ``seed``; None keeps every example.
    seed: seed of the subsets.
    max_file_bytes: largest decompressed file read.

  Returns:
    A :class:`~unlearn_jax.data.Dataset` with 10 classes.

  Raises:
    FileNotFoundError: a missing directory or file. ValueError: a truncated, corrupt or mismatched file.

  Examples:
    >>> import tempfile, os, struct
    >>> d = tempfile.mkdtemp()
    >>> for split, n in (("train", 20), ("t10k", 10)):
    ...   _ = open(os.path.join(d, f"{split}-images-idx3-ubyte"), "wb").write(
    ...       struct.pack(">BBBBIII", 0, 0, 8, 3, n, 2, 2) + bytes(range(4 * n)))
    ...   _ = open(os.path.join(d, f"{split}-labels-idx1-ubyte"), "wb").write(
    ...       struct.pack(">BBBBI", 0, 0, 8, 1, n) + bytes(i % 10 for i in range(n)))
    >>> ds = load_idx(d, n_train=10)
    >>> ds.x_train.shape, sorted(ds.y_train.tolist())
    ((10, 2, 2, 1), [0, 1, 2, 3, 4, 5, 6, 7, 8, 9])
  """
  _checks.check_choice("name", name, tuple(_NAMES))
  what = _NAMES[name]
  directory = _check_directory(directory, what)
  _checks.check_positive("scale", scale)
  x_train, y_train = _split(directory, "train", what, max_file_bytes)
  x_test, y_test = _split(directory, "test", what, max_file_bytes)
  ds = make(
    _images(x_train, scale), y_train.astype(np.int32), _images(x_test, scale), y_test.astype(np.int32), 10, name
  )
  if n_train is not None or n_test is not None:
    ds = subsample(ds, n_train, seed, n_test=n_test, stratify=True)
  return normalize(ds, normalization)


def _images(raw: np.ndarray, scale: Any) -> np.ndarray:
  return raw[..., None].astype(np.float32) * np.float32(scale)
