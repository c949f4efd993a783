"""Eager calls of the library's pure functions run one compiled program per settings and shapes.

The building blocks of the library are plain ``jax.numpy`` functions: inside a user's ``jit``, ``vmap``
or ``grad`` they are traced inline. Called eagerly (every array concrete), a public function would run
op by op — slow for a per-example or evaluation kernel — so :func:`call` runs it as ``jax.jit`` with the
given static arguments instead; ``jax.jit``'s own cache keeps one executable per static settings (the
loss or apply function among them: a new function object compiles anew) and shapes.
"""

from __future__ import annotations

import functools
from collections.abc import Callable
from typing import Any

import jax

__all__ = ["call", "is_traced", "stack", "swap_leading_axes", "take"]


def is_traced(tree: Any) -> bool:
  """True when any leaf of ``tree`` is a tracer (we are inside a transformation)."""
  return any(isinstance(x, jax.core.Tracer) for x in jax.tree.leaves(tree))


@functools.cache
def _compiled(core: Callable, num_static: int) -> Callable:
  return jax.jit(core, static_argnums=tuple(range(num_static)))


def call(core: Callable, static: tuple, *arrays: Any) -> Any:
  """``core(*static, *arrays)``: inline under a trace; eagerly, compiled once per static settings and shapes.

  Unhashable static arguments (e.g. a loss function object without ``__hash__``) run op by op.
  """
  if is_traced(arrays):
    return core(*static, *arrays)
  try:
    hash(static)
  except TypeError:
    return core(*static, *arrays)
  return _compiled(core, len(static))(*static, *arrays)


def _take_core(tree: Any, index: Any) -> Any:
  return jax.tree.map(lambda leaf: leaf[index], tree)


def take(tree: Any, index: Any) -> Any:
  """``leaf[index]`` for every leaf as one compiled program per tree structure and shapes (an eager
  ``jax.tree.map`` of indexing compiles one program per leaf shape). ``index``: an int or an index array."""
  return call(_take_core, (), tree, index)


def _stack_core(*trees: Any) -> Any:
  return jax.tree.map(lambda *leaves: jax.numpy.stack(leaves), *trees)


def stack(trees: Any) -> Any:
  """The trees of a sequence stacked leaf by leaf along a new leading axis, in one compiled program."""
  return call(_stack_core, (), *trees)


def _swap_core(tree: Any) -> Any:
  return jax.tree.map(lambda leaf: jax.numpy.swapaxes(leaf, 0, 1), tree)


def swap_leading_axes(tree: Any) -> Any:
  """Every leaf with its first two axes swapped (e.g. (seeds, G, ...) -> (G, seeds, ...)), in one program."""
  return call(_swap_core, (), tree)
