"""A researcher's own models, as the study's config names them ("tests.user_models:<builder>")."""

from __future__ import annotations

import flax.linen as nn
import jax
from flax import nnx

from unlearn_jax import models


class LinenMLP(nn.Module):
  hidden: int
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes)(jax.nn.tanh(nn.Dense(self.hidden)(x.reshape(-1))))


def linen_mlp(num_classes: int, hidden: int = 8):
  """Returns the flax linen module itself: the registry wraps it with ``models.from_flax``."""
  return LinenMLP(hidden, num_classes)


class NNXMLP(nnx.Module):
  def __init__(self, din: int, hidden: int, num_classes: int, *, rngs: nnx.Rngs):
    self.hidden = nnx.Linear(din, hidden, rngs=rngs)
    self.out = nnx.Linear(hidden, num_classes, rngs=rngs)

  def __call__(self, x):
    return self.out(jax.nn.tanh(self.hidden(x.reshape(-1))))


def nnx_mlp(num_classes: int, din: int = 64, hidden: int = 8) -> models.Model:
  return models.from_nnx(lambda rngs: NNXMLP(din, hidden, num_classes, rngs=rngs), "nnx_mlp")


class NNXCNN(nnx.Module):
  def __init__(self, num_classes: int, *, rngs: nnx.Rngs):
    self.conv = nnx.Conv(1, 4, kernel_size=(3, 3), rngs=rngs)
    self.out = nnx.Linear(4 * 8 * 8, num_classes, rngs=rngs)

  def __call__(self, x):
    h = jax.nn.relu(self.conv(x[None]))[0]
    return self.out(h.reshape(-1))


def nnx_cnn(num_classes: int) -> models.Model:
  return models.from_nnx(lambda rngs: NNXCNN(num_classes, rngs=rngs), "nnx_cnn")


class _Stateful(nnx.Module):
  def __init__(self, *, rngs: nnx.Rngs):
    self.linear = nnx.Linear(64, 10, rngs=rngs)
    self.drop = nnx.Dropout(0.5, rngs=rngs)

  def __call__(self, x):
    return self.drop(self.linear(x))


def nnx_with_dropout(num_classes: int) -> models.Model:
  return models.from_nnx(lambda rngs: _Stateful(rngs=rngs), "dropout")


def returns_a_string(num_classes: int):
  return "not a model"


NOT_CALLABLE = 3
