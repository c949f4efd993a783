"""Chunking over the example axis: pad to a multiple of the chunk size, ``lax.map`` over chunks.

Padding repeats the first example, so padded rows give finite values; their outputs are dropped.

Under a trace the chunks are a loop in the traced program (:mod:`unlearn_jax._loops`: on CPU a loop of at
most ``UNROLL_MAX`` convolutional chunks is unrolled, and its memory is then that of all its chunks).
Called eagerly, a pass runs from the host instead (:func:`host_rows`, :func:`host_sum`): one compiled
program on one chunk, called once per chunk — the memory of one chunk at every n, and, on CPU, the
convolutions at the top level of their program.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import _compile, _loops
from unlearn_jax._compile import call, take

PyTree = Any

ROWS_PER_PASS = 2048
"""Rows at a time of a pass over a whole data set (evaluation, all-n norms) when nobody says otherwise:
the memory of a pass over n = 50,000 CIFAR-sized examples is then that of 2,048 of them."""


def pad_batch(batch: PyTree, n: int, chunk_size: int) -> tuple[PyTree, jax.Array, int]:
  """Pads by repeating the first example (so padded rows give finite values); returns (padded, mask, n_pad)."""
  num_chunks = -(-n // chunk_size)
  n_pad = num_chunks * chunk_size

  def pad(x):
    x = jnp.asarray(x)
    if n_pad == n:
      return x
    fill = jnp.broadcast_to(x[:1], (n_pad - n,) + x.shape[1:])
    return jnp.concatenate([x, fill], axis=0)

  mask = jnp.arange(n_pad) < n
  return jax.tree.map(pad, batch), mask, n_pad


def to_chunks(tree: PyTree, chunk_size: int) -> PyTree:
  return jax.tree.map(lambda x: jnp.reshape(x, (-1, chunk_size) + x.shape[1:]), tree)


def from_chunks(tree: PyTree, n: int) -> PyTree:
  return jax.tree.map(lambda x: jnp.reshape(x, (-1,) + x.shape[2:])[:n], tree)


def map_per_example(fn: Callable, params: PyTree, batch: PyTree, n: int, chunk_size: int | None) -> PyTree:
  """``fn(params, batch)`` for a per-example-output ``fn``, ``chunk_size`` examples at a time when asked."""
  if chunk_size is None or chunk_size >= n:
    return fn(params, batch)
  padded, _, _ = pad_batch(batch, n, chunk_size)
  return from_chunks(_loops.map(lambda c: fn(params, c), to_chunks(padded, chunk_size)), n)


def _apply_rows(apply_fn: Callable, params: PyTree, x: PyTree) -> PyTree:
  return jax.vmap(apply_fn, in_axes=(None, 0))(params, x)


def batched_apply(apply_fn: Callable, params: PyTree, x: PyTree, chunk_size: int | None = ROWS_PER_PASS) -> PyTree:
  """``vmap(apply_fn)`` over the rows of ``x``, ``chunk_size`` rows at a time when there are more: a loop
  (``lax.map``) under a trace; called eagerly, compiled, one call per chunk from the host."""
  n = jax.tree.leaves(x)[0].shape[0]
  if _compile.is_traced((params, x)):
    return map_per_example(functools.partial(_apply_rows, apply_fn), params, x, n, chunk_size)
  if chunk_size is None or chunk_size >= n:
    return call(_apply_rows, (apply_fn,), params, x)
  params = jax.tree.map(jnp.asarray, params)  # on the device once for all chunks
  return host_rows(lambda chunk: call(_apply_rows, (apply_fn,), params, chunk), x, n, chunk_size)


def host_chunks(batch: PyTree, n: int, chunk_size: int):
  """The chunks of ``chunk_size`` rows of a concrete ``batch``, one at a time; the last one is completed by
  repeating the last row (its outputs are to be dropped). Yields ``(chunk, rows)``: ``rows`` (chunk_size,)
  the row of each entry, n and above for the repeats."""
  batch = jax.tree.map(jnp.asarray, batch)  # host (NumPy) data go to the device once, not once per chunk
  for start in range(0, n, chunk_size):
    rows = np.arange(start, start + chunk_size)
    yield take(batch, np.minimum(rows, n - 1)), rows


def _concat_core(n, axis, *trees):
  return jax.tree.map(lambda *xs: jax.lax.slice_in_dim(jnp.concatenate(xs, axis=axis), 0, n, axis=axis), *trees)


def host_rows(fn: Callable, batch: PyTree, n: int, chunk_size: int, axis: int = 0) -> PyTree:
  """``fn(chunk)`` for every chunk of a concrete ``batch`` (see :func:`host_chunks`), called from the host;
  the per-example outputs (rows along ``axis``) concatenated and the repeats dropped."""
  outs = [fn(chunk) for chunk, _ in host_chunks(batch, n, chunk_size)]
  return call(_concat_core, (n, axis), *outs)


def _add_core(a, b):
  return jax.tree.map(jnp.add, a, b)


def host_sum(fn: Callable, batch: PyTree, n: int, chunk_size: int) -> PyTree:
  """The sum over the chunks of a concrete ``batch`` of ``fn(chunk, valid)``, called from the host;
  ``valid`` (chunk_size,) bool is False on the repeated rows, which ``fn`` must leave out of its sum."""
  total = None
  for chunk, rows in host_chunks(batch, n, chunk_size):
    part = fn(chunk, jnp.asarray(rows < n))
    total = part if total is None else call(_add_core, (), total, part)
  return total
