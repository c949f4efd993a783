"""Flax NNX modules as the library's pure ``(init_fn, apply_fn)`` pair (``nnx.split`` / ``nnx.merge``).

An NNX module holds its parameters as attributes; the library's per-example machinery, ledger and
drivers work on a parameter pytree passed explicitly. :func:`from_nnx` splits the module once into its
graph definition (static: the code and the layout) and its ``nnx.Param`` state, and returns

- ``init_fn(key, example_x) -> params``: builds the module with ``nnx.Rngs(key)`` and returns its
  parameters as a plain nested dict (``nnx.to_pure_dict``), so that every seed draws its own start and the
  parameters save, load and vmap like those of a linen model;
- ``apply_fn(params, x) -> logits``: ``nnx.merge(graphdef, params)(x)`` for ONE example — a pure function
  whose trace holds only the module's operations (the ghost-norm tracer sees the same ``dot_general`` /
  ``conv_general_dilated`` sites as for linen).

Modules with state other than parameters (batch statistics, dropout RNG streams) are refused: per-example
privacy needs examples that do not interact, and a pure ``apply_fn`` cannot carry mutable state.
"""

from __future__ import annotations

import dataclasses
from collections.abc import Callable
from typing import Any

import jax
import jax.numpy as jnp
from flax import nnx
from jax.typing import ArrayLike

from unlearn_jax.models.base import Model

__all__ = ["NNXApply", "NNXInit", "from_nnx"]

Params = Any


@dataclasses.dataclass(frozen=True)
class NNXInit:
  """``init_fn(key, example_x) -> params``: the factory's module built with ``nnx.Rngs(key)``, its params."""

  factory: Callable[[nnx.Rngs], nnx.Module]

  def __call__(self, key: jax.Array, example_x: ArrayLike) -> Params:
    del example_x  # an NNX module knows its shapes from its constructor
    _, params, _ = nnx.split(self.factory(nnx.Rngs(key)), nnx.Param, ...)
    return nnx.to_pure_dict(params)


@dataclasses.dataclass(frozen=True)
class NNXApply:
  """``apply_fn(params, x) -> logits`` for ONE example: the module merged from its graph and ``params``."""

  graphdef: Any

  def __call__(self, params: Params, x: ArrayLike) -> jax.Array:
    return nnx.merge(self.graphdef, params)(jnp.asarray(x))


def _non_param_state(module: nnx.Module) -> list[str]:
  _, _, rest = nnx.split(module, nnx.Param, ...)
  return sorted({".".join(str(k) for k in path) for path, _ in jax.tree_util.tree_flatten_with_path(rest)[0]})


def from_nnx(factory: Callable[[nnx.Rngs], nnx.Module], name: str = "nnx") -> Model:
  """An NNX module as a :class:`~unlearn_jax.models.base.Model` (pure ``init_fn`` / ``apply_fn``).

  Args:
    factory: ``factory(rngs) -> nnx.Module``, e.g. ``lambda rngs: MyNet(64, 10, rngs=rngs)``; called
      with ``nnx.Rngs(key)`` by ``init_fn`` (a module *instance* is refused: it has one initialisation,
      and the study's chains need one per key). Its module must map ONE example (no batch axis) to its
      logits.
    name: a short name.

  Returns:
    A ``Model`` whose parameters are plain nested dicts (``nnx.to_pure_dict``).

  Raises:
    TypeError: ``factory`` is a module instance, not callable, or does not build an ``nnx.Module``.
    ValueError: the module holds state other than ``nnx.Param`` (batch statistics, RNG streams).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> from flax import nnx
    >>> model = from_nnx(lambda rngs: nnx.Linear(4, 3, rngs=rngs), "linear")
    >>> params = model.init_fn(jax.random.key(0), jnp.ones(4))
    >>> sorted(params), model.apply_fn(params, jnp.ones(4)).shape
    (['bias', 'kernel'], (3,))
  """
  if isinstance(factory, nnx.Module):
    raise TypeError(
      "from_nnx takes a factory rngs -> nnx.Module (e.g. lambda rngs: MyNet(..., rngs=rngs)), not a "
      "module instance: init_fn must draw a new initialisation for every key"
    )
  if not callable(factory):
    raise TypeError(f"factory must be callable as factory(rngs) -> nnx.Module, got {factory!r}")
  abstract = nnx.eval_shape(lambda: factory(nnx.Rngs(0)))
  if not isinstance(abstract, nnx.Module):
    raise TypeError(f"factory(rngs) must return an nnx.Module, got {type(abstract).__name__}")
  rest = _non_param_state(abstract)
  if rest:
    raise ValueError(
      f"NNX module {name!r} holds state other than nnx.Param ({', '.join(rest)}): batch statistics or "
      "RNG streams (dropout) couple or randomise examples, which per-example privacy accounting and a "
      "pure apply_fn cannot carry; build the module without them"
    )
  graphdef, _, _ = nnx.split(abstract, nnx.Param, ...)
  return Model(NNXInit(factory), NNXApply(graphdef), name)
