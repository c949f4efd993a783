"""A model as pure functions: the :class:`Model` record, flax linen modules as ``(init_fn, apply_fn)``.

Every model's ``apply_fn(params, x)`` takes ONE example without a batch axis (a feature vector, or an HWC
image) and returns its logits of shape ``(num_classes,)``; batches go through ``jax.vmap``.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

__all__ = ["Model", "ModuleApply", "ModuleInit", "from_flax", "num_params", "check_num_classes"]

Params = Any


class Model(NamedTuple):
  """A model as pure functions.

  Attributes:
    init_fn: ``init_fn(key, example_x) -> params`` (``example_x`` is one example, no batch axis).
    apply_fn: ``apply_fn(params, x) -> logits`` of shape (num_classes,) for one example.
    name: a short name.
  """

  init_fn: Callable[[jax.Array, ArrayLike], Params]
  apply_fn: Callable[[Params, ArrayLike], jax.Array]
  name: str


def check_num_classes(num_classes: Any) -> int:
  if isinstance(num_classes, bool) or not isinstance(num_classes, int) or num_classes < 2:
    raise ValueError(f"num_classes must be an integer >= 2, got {num_classes!r}")
  return num_classes


@dataclasses.dataclass(frozen=True)
class ModuleInit:
  """``init_fn(key, example_x) -> params`` of a flax module (equal modules: equal functions)."""

  module: nn.Module

  def __call__(self, key: jax.Array, example_x: ArrayLike) -> Params:
    if np.size(example_x) == 0:
      raise ValueError(f"example_x must be one example with at least one feature, got shape {np.shape(example_x)}")
    return self.module.init(key, jnp.asarray(example_x))["params"]


@dataclasses.dataclass(frozen=True)
class ModuleApply:
  """``apply_fn(params, x) -> logits`` of a flax module for ONE example (equal modules: equal functions).

  Value equality lets two models built with the same settings share compiled programs (the drivers'
  ``jax.jit`` keys on the loss function, and the loss function on this).
  """

  module: nn.Module

  def __call__(self, params: Params, x: ArrayLike) -> jax.Array:
    return self.module.apply({"params": params}, jnp.asarray(x))


def from_flax(module: nn.Module, name: str = "custom") -> Model:
  """A flax linen module that maps ONE example to its logits as a :class:`Model` (pure ``init_fn`` /
  ``apply_fn``; two models of equal modules are equal).

  Examples:
    >>> import jax, jax.numpy as jnp, flax.linen as nn
    >>> model = from_flax(nn.Dense(3), "dense")
    >>> params = model.init_fn(jax.random.key(0), jnp.ones(4))
    >>> model.apply_fn(params, jnp.ones(4)).shape
    (3,)
  """
  if not isinstance(module, nn.Module):
    raise TypeError(f"module must be a flax.linen.Module, got {type(module).__name__}")
  return Model(ModuleInit(module), ModuleApply(module), name)


def num_params(params: Params) -> int:
  """Total number of scalars in a parameter pytree (works on ``jax.ShapeDtypeStruct`` leaves too).

  Examples:
    >>> import jax.numpy as jnp
    >>> num_params({"w": jnp.ones((3, 2)), "b": jnp.ones(2)})
    8
  """
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))
