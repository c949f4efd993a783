"""The model registry: the names the study's ``model.name`` takes, and ``"package.module:builder"`` references.

A builder is ``builder(num_classes=..., **kwargs) -> Model`` (a flax linen module is accepted too and
wrapped with :func:`~unlearn_jax.models.base.from_flax`). ``model.name`` is either a registered name
(:data:`MODELS`, extended from Python with :func:`register_model`) or a reference ``"package.module:attr"``
to a builder importable from the installed packages or the current directory (as ``python -m`` would
find it), so a config can name a researcher's own model without any registration code.
"""

from __future__ import annotations

import importlib
import os
import re
import sys
from collections.abc import Callable
from typing import Any

import flax.linen as nn

from unlearn_jax.models.architectures import logistic_regression, mlp, resnet18, small_cnn
from unlearn_jax.models.base import Model, from_flax

__all__ = ["MODELS", "register_model", "get_model", "resolve_builder", "is_reference"]

_DOTTED = r"[A-Za-z_][A-Za-z0-9_]*(\.[A-Za-z_][A-Za-z0-9_]*)*"
_REFERENCE = re.compile(rf"^{_DOTTED}:{_DOTTED}$")


MODELS: dict[str, Callable[..., Model]] = {
  "logistic_regression": logistic_regression,
  "mlp": mlp,
  "small_cnn": small_cnn,
  "resnet18": resnet18,
}
"""Model name -> builder ``builder(num_classes=..., **kwargs) -> Model`` (the study's ``[model]`` names)."""


def register_model(name: str, builder: Callable[..., Model]) -> None:
  """Adds (or replaces) a model builder under ``name``.

  Args:
    name: the name the study's ``model.name`` uses.
    builder: ``builder(num_classes=..., **kwargs) -> Model`` (e.g. ``functools.partial(mlp, (32, 32))``
      or a function wrapping your own flax module with :func:`from_flax`).

  Examples:
    >>> register_model("wide_mlp", lambda num_classes: mlp((512,), num_classes))
    >>> get_model("wide_mlp", 10).name
    'mlp'
    >>> del MODELS["wide_mlp"]
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"name must be a non-empty string, got {name!r}")
  if not callable(builder):
    raise TypeError(f"builder must be callable as builder(num_classes=..., **kwargs), got {builder!r}")
  MODELS[name] = builder


def is_reference(name: Any) -> bool:
  """Whether ``name`` has the form of a ``"package.module:attr"`` reference (nothing is imported)."""
  return isinstance(name, str) and ":" in name


def _import_module(module_name: str, reference: str):
  cwd = os.getcwd()
  added = cwd not in sys.path
  if added:
    sys.path.insert(0, cwd)  # as ``python -m`` does: modules of the current directory too
  try:
    return importlib.import_module(module_name)
  except ImportError as e:
    raise ValueError(
      f"model reference {reference!r}: module {module_name!r} is not importable from the installed "
      f"packages or the current directory {cwd!r}: {e}"
    ) from e
  except Exception as e:  # noqa: BLE001 - the user's module raised while importing
    raise ValueError(f"model reference {reference!r}: importing {module_name!r} raised {type(e).__name__}: {e}") from e
  finally:
    if added:
      sys.path.remove(cwd)


def resolve_builder(name: str) -> Callable[..., Any]:
  """The builder a ``model.name`` stands for: a registered name, or a ``"package.module:attr"`` reference.

  Raises:
    ValueError: an unknown name (the message lists the registered names and the reference form), a
      malformed reference, a module that cannot be imported, or an attribute it lacks.
    TypeError: the reference names something that is not callable.

  Examples:
    >>> resolve_builder("mlp") is mlp
    True
    >>> resolve_builder("unlearn_jax.models.architectures:small_cnn") is small_cnn
    True
    >>> try:
    ...   resolve_builder("no_such_package.models:net")
    ... except ValueError as e:
    ...   print(str(e)[:105])
    model reference 'no_such_package.models:net': module 'no_such_package.models' is not importable from the
  """
  if not isinstance(name, str) or not name:
    raise TypeError(f"model name must be a non-empty string, got {name!r}")
  if name in MODELS:
    return MODELS[name]
  if not is_reference(name):
    raise ValueError(
      f"model name {name!r} is not registered: expected one of {sorted(MODELS)}, a name added with "
      "models.register_model, or a reference 'package.module:builder'"
    )
  if not _REFERENCE.match(name):
    raise ValueError(f"model reference {name!r} must have the form 'package.module:attr' (dotted identifiers)")
  module_name, attr = name.split(":")
  obj = _import_module(module_name, name)
  for part in attr.split("."):
    if not hasattr(obj, part):
      raise ValueError(f"model reference {name!r}: module {module_name!r} has no attribute {attr!r}")
    obj = getattr(obj, part)
  if not callable(obj):
    raise TypeError(f"model reference {name!r} names a {type(obj).__name__}, not a builder function")
  return obj


def get_model(name: str, num_classes: int, **kwargs: Any) -> Model:
  """Builds a model by registered name or ``"package.module:builder"`` reference.

  Args:
    name: a name of :data:`MODELS` ("logistic_regression", "mlp", "small_cnn", "resnet18", or one added
      with :func:`register_model`), or a reference (see :func:`resolve_builder`).
    num_classes: number of classes.
    **kwargs: passed to the builder (e.g. ``hidden_sizes``, ``activation`` for "mlp"; ``channels`` for
      "small_cnn").

  Returns:
    A :class:`~unlearn_jax.models.base.Model` (a builder's flax linen module is wrapped with ``from_flax``).

  Raises:
    ValueError: unknown name or unusable reference (see :func:`resolve_builder`).
    TypeError: keyword arguments the builder does not take, or a builder that returns no model.

  Examples:
    >>> get_model("mlp", 10, hidden_sizes=(32,)).name
    'mlp'
  """
  builder = resolve_builder(name)
  try:
    model = builder(num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise TypeError(f"model {name!r}: bad keyword arguments {sorted(kwargs)}: {e}") from e
  if isinstance(model, nn.Module):
    return from_flax(model, name)
  if not isinstance(model, Model):
    raise TypeError(
      f"model {name!r}: the builder returned a {type(model).__name__}; it must return a models.Model "
      "(models.from_flax(module) for a linen module, models.from_nnx(factory) for an NNX one)"
    )
  return model
