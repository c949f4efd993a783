"""The study's saved parameters, in a format that restores the pytree, and :func:`load` of a finished run.

Every parameter tree of a run is written to ``params/`` in the project's checkpoint format
(:mod:`unlearn_jax.runtime.checkpoint`: msgpack leaves, a JSON header, a SHA-256 digest — or an HMAC with
``UNLEARN_JAX_CHECKPOINT_KEY`` — validated before anything is used). The header also holds the tree's
structure as JSON (nested ``dict`` / ``list`` / ``tuple`` / ``None`` with each leaf's shape and dtype),
so a file restores its pytree without the code that built the model:

- ``params/trained.msgpack``: the trained chains, every leaf with a leading seed axis ``(S, ...)``;
- ``params/forget_set_<i>.msgpack``: ``{"oracles": (R, ...), "unlearned": {method: (R, ...)}}`` for the
  i-th forget set of ``report.json`` — the R retrained oracles and, for every method, its R unlearned
  chains at the end of the step grid; the header's metadata has the set's label, indices and steps.

Flax linen parameters are nested dicts; NNX models built with :func:`unlearn_jax.models.from_nnx` have
plain nested dicts too; other containers are refused when the run starts (:func:`check_savable`).
"""

from __future__ import annotations

import csv
import json
import os
import pathlib
from typing import Any, NamedTuple

import flax.core
import jax
import numpy as np

from unlearn_jax.runtime import checkpoint

__all__ = ["StudyResults", "check_savable", "load", "load_params", "save_params"]

PyTree = Any


def _spec(tree: PyTree, where: str) -> Any:
  """A JSON description of ``tree``: containers by kind, leaves by shape and dtype."""
  if isinstance(tree, flax.core.FrozenDict):
    tree = flax.core.unfreeze(tree)
  if tree is None:
    return {"none": None}
  if isinstance(tree, dict):
    bad = [k for k in tree if not isinstance(k, str)]
    if bad:
      raise TypeError(f"parameters {where} have a dict key {bad[0]!r} that is not a string")
    return {"dict": {k: _spec(v, f"{where}[{k!r}]") for k, v in tree.items()}}
  if isinstance(tree, (list, tuple)) and type(tree) in (list, tuple):
    return {type(tree).__name__: [_spec(v, f"{where}[{i}]") for i, v in enumerate(tree)]}
  if hasattr(tree, "shape") and hasattr(tree, "dtype"):
    dtype = np.dtype(tree.dtype) if not jax.dtypes.issubdtype(tree.dtype, jax.dtypes.prng_key) else None
    if dtype is None or dtype.kind not in "biuf" and dtype.name != "bfloat16":
      raise TypeError(f"parameters {where} have a leaf of dtype {tree.dtype}; only numeric arrays are saved")
    return {"leaf": [list(tree.shape), dtype.name]}
  raise TypeError(
    f"parameters {where} are a {type(tree).__name__}: the saved format restores dicts, lists, tuples, None "
    "and arrays (flax linen params and models.from_nnx params are nested dicts)"
  )


def _target(spec: Any, path: str) -> PyTree:
  """The tree of ``jax.ShapeDtypeStruct`` that ``spec`` describes."""
  if not isinstance(spec, dict) or len(spec) != 1:
    raise checkpoint.CheckpointError(f"{path}: its structure record is malformed")
  ((kind, value),) = spec.items()
  if kind == "none":
    return None
  if kind == "dict" and isinstance(value, dict):
    return {k: _target(v, path) for k, v in value.items()}
  if kind in ("list", "tuple") and isinstance(value, list):
    items = [_target(v, path) for v in value]
    return items if kind == "list" else tuple(items)
  if kind == "leaf" and isinstance(value, list) and len(value) == 2:
    shape, dtype = value
    if not (isinstance(shape, list) and all(isinstance(d, int) and d >= 0 for d in shape)):
      raise checkpoint.CheckpointError(f"{path}: a leaf has a malformed shape")
    if dtype not in ("bool", "bfloat16") and (not isinstance(dtype, str) or np.dtype(dtype).kind not in "biuf"):
      raise checkpoint.CheckpointError(f"{path}: a leaf has an unsupported dtype")
    return jax.ShapeDtypeStruct(tuple(shape), jax.numpy.dtype(dtype))
  raise checkpoint.CheckpointError(f"{path}: its structure record is malformed")


def _plain(tree: PyTree) -> PyTree:
  return flax.core.unfreeze(tree) if isinstance(tree, flax.core.FrozenDict) else tree


def check_savable(params: PyTree) -> None:
  """Raises TypeError (naming the container) if ``params`` cannot be saved in the restoring format."""
  _spec(_plain(params), "params")


def save_params(path: str | os.PathLike, tree: PyTree, metadata: dict | None = None) -> pathlib.Path:
  """Writes ``tree`` (with its structure and ``metadata``) to ``path`` atomically; returns the path.

  Examples:
    >>> import tempfile, pathlib, numpy as np
    >>> tree = {"w": np.ones((2, 3)), "b": (None, np.zeros(1))}
    >>> p = save_params(pathlib.Path(tempfile.mkdtemp()) / "p.msgpack", tree)
    >>> tree, meta = load_params(p)
    >>> jax.tree.map(np.shape, tree)
    {'b': (None, (1,)), 'w': (2, 3)}
  """
  tree = jax.device_get(_plain(tree))
  meta = {"structure": _spec(tree, "tree"), "metadata": metadata or {}}
  checkpoint.save_checkpoint(path, tree, metadata=meta)
  return pathlib.Path(path)


def load_params(path: str | os.PathLike) -> tuple[PyTree, dict]:
  """Reads a file written by :func:`save_params`: ``(tree of NumPy arrays, metadata)``.

  Raises:
    CheckpointError: a missing, corrupt or tampered file (see :mod:`unlearn_jax.runtime.checkpoint`).
  """
  path = os.fspath(path)
  tree, meta = checkpoint.load_checkpoint(path, lambda header: _target(header.get("structure"), path))
  return tree, meta.get("metadata", {})


class StudyResults(NamedTuple):
  """A finished study read back by :func:`load`.

  Attributes:
    report: the content of ``report.json``.
    per_example: ``per_example.csv`` as columns: name -> (n,) array (``index`` and ``label`` int64,
      the rest float64).
    trained: the trained chains' parameters, leaves ``(S, ...)``.
    forget_sets: one dict per forget set of the report (in its order; the report has a row per set and
      method): ``label``, ``indices``, ``oracles`` (leaves
      ``(R, ...)``) and ``unlearned`` (method -> leaves ``(R, ...)``, at the end of the step grid).
  """

  report: dict
  per_example: dict[str, np.ndarray]
  trained: PyTree
  forget_sets: list[dict]


def _read_per_example(path: pathlib.Path) -> dict[str, np.ndarray]:
  with open(path, newline="", encoding="utf-8") as f:
    rows = list(csv.reader(f))
  if not rows:
    raise ValueError(f"{path} is empty")
  header, body = rows[0], rows[1:]
  columns = {}
  for j, name in enumerate(header):
    dtype = np.int64 if name in ("index", "label") else np.float64
    columns[name] = np.array([row[j] for row in body], dtype=dtype)
  return columns


def load(out_dir: str | os.PathLike) -> StudyResults:
  """Reads the results of a finished study from its output directory.

  Args:
    out_dir: the directory :func:`unlearn_jax.study.run` (or ``unlearn-jax run``) wrote.

  Returns:
    A :class:`StudyResults`: the report, the per-example table and every saved parameter tree.

  Raises:
    FileNotFoundError: ``out_dir`` holds no complete run (``report.json`` is written last) or lacks
      one of its files.
    CheckpointError: a parameter file is corrupt or was altered.
  """
  out = pathlib.Path(out_dir)
  report_path = out / "report.json"
  if not report_path.is_file():
    raise FileNotFoundError(
      f"{str(out)!r} holds no complete study run: report.json (written last) is missing — the run did "
      "not finish, or this is not a study output directory"
    )
  report = json.loads(report_path.read_text(encoding="utf-8"))
  trained, _ = load_params(out / "params" / "trained.msgpack")
  labels = list(dict.fromkeys(entry["selection"] for entry in report.get("forget_sets", [])))  # a row per method
  sets = []
  for i, label in enumerate(labels):
    tree, meta = load_params(out / "params" / f"forget_set_{i}.msgpack")
    if meta.get("label") != label:
      raise checkpoint.CheckpointError(
        f"{out / 'params' / f'forget_set_{i}.msgpack'} holds forget set {meta.get('label')!r}, but the "
        f"report's set {i} is {label!r}"
      )
    sets.append(
      {
        "label": meta["label"],
        "indices": np.asarray(meta["indices"], dtype=np.int64),
        "oracles": tree["oracles"],
        "unlearned": tree["unlearned"],
      }
    )
  return StudyResults(report, _read_per_example(out / "per_example.csv"), trained, sets)
