"""The built-in architectures: logistic regression, an MLP, a small CNN and a normalisation-free ResNet-18.

Convolutions add and remove a batch axis of 1 internally, so under ``vmap`` they become one plain batched
``conv_general_dilated`` whose kernel is a parameter leaf, and dense layers are one ``dot_general``
(what the per-example machinery and the ghost-norm tracer of :mod:`unlearn_jax.per_example` look for).

No model has batch normalisation: per-example gradients and per-instance privacy accounting need the
examples of a batch to be independent, and batch statistics couple them. The ResNet-18 uses no
normalisation at all; it stays trainable with a zero-initialised last convolution in every residual
branch ("zero-init residual", Goyal et al. 2017; the initialisation idea of Fixup, Zhang et al. 2019, and
SkipInit, De & Smith 2020), so every block starts as the identity map.
"""

from __future__ import annotations

from collections.abc import Sequence

import flax.linen as nn
import jax
import jax.numpy as jnp

from unlearn_jax import _checks
from unlearn_jax.models.base import Model, from_flax, num_params  # noqa: F401 - num_params: doctests
from unlearn_jax.models.base import check_num_classes as _check_num_classes
from unlearn_jax.per_example.pooling import window_max

__all__ = ["logistic_regression", "mlp", "small_cnn", "resnet18"]


class _Linear(nn.Module):
  num_classes: int

  @nn.compact
  def __call__(self, x):
    return nn.Dense(self.num_classes, name="linear")(x.reshape(-1))


def logistic_regression(num_classes: int) -> Model:
  """Multinomial logistic regression: ``logits = W^T x + b`` on the flattened example.

  Params: ``{"linear": {"kernel": (d, num_classes), "bias": (num_classes,)}}``.

  Args:
    num_classes: number of classes (>= 2).

  Returns:
    A :class:`Model`.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = logistic_regression(3)
    >>> params = model.init_fn(jax.random.key(0), jnp.ones(4))
    >>> model.apply_fn(params, jnp.ones(4)).shape
    (3,)
  """
  return from_flax(_Linear(_check_num_classes(num_classes)), "logistic_regression")


_ACTIVATIONS = {"relu": nn.relu, "tanh": jnp.tanh, "gelu": nn.gelu, "softplus": nn.softplus}


class _MLP(nn.Module):
  hidden_sizes: tuple[int, ...]
  num_classes: int
  activation: str

  @nn.compact
  def __call__(self, x):
    act = _ACTIVATIONS[self.activation]
    h = x.reshape(-1)
    for i, width in enumerate(self.hidden_sizes):
      h = act(nn.Dense(width, name=f"dense_{i}")(h))
    return nn.Dense(self.num_classes, name="head")(h)


def mlp(hidden_sizes: Sequence[int] = (128,), num_classes: int = 10, activation: str = "relu") -> Model:
  """A fully connected network on the flattened example.

  Args:
    hidden_sizes: widths of the hidden layers.
    num_classes: number of classes (>= 2).
    activation: one of "relu", "tanh", "gelu", "softplus".

  Returns:
    A :class:`Model`; params ``dense_0 ... dense_{L-1}``, ``head``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = mlp((8,), 10)
    >>> params = model.init_fn(jax.random.key(0), jnp.ones(64))
    >>> num_params(params)
    610
  """
  _check_num_classes(num_classes)
  _checks.check_choice("activation", activation, tuple(_ACTIVATIONS))
  hidden = tuple(hidden_sizes)
  if any(isinstance(h, bool) or not isinstance(h, int) or h < 1 for h in hidden):
    raise ValueError(f"hidden_sizes must be positive integers, got {hidden_sizes!r}")
  return from_flax(_MLP(hidden, num_classes, activation), "mlp")


class _SmallCNN(nn.Module):
  num_classes: int
  channels: tuple[int, ...]

  @nn.compact
  def __call__(self, x):
    if x.ndim != 3:
      raise ValueError(f"small_cnn expects one HWC image (3 axes), got shape {x.shape}")
    h = x[None]
    for i, c in enumerate(self.channels):
      h = nn.relu(nn.Conv(c, (3, 3), padding="SAME", name=f"conv_{i}")(h))
      h = _max_pool_2x2(h)
    return nn.Dense(self.num_classes, name="head")(h.reshape(-1))


def _max_pool_2x2(h: jax.Array) -> jax.Array:
  """``nn.max_pool(h, (2, 2), strides=(2, 2), padding="SAME")`` on an NHWC batch, same values and gradient.

  XLA:CPU differentiates ``reduce_window`` max-pooling through ``select_and_scatter_add``, which is slow
  on CPU (it dominated the small CNN's batch gradient). Non-overlapping windows need no scatter: the
  cotangent goes to each window's first maximum (XLA's choice too) through a one-hot mask.
  """
  win = (1, 2, 2, 1)
  pads = tuple(jax.lax.padtype_to_pads(h.shape, win, win, "SAME"))
  return window_max(h, pads, win)


def small_cnn(num_classes: int = 10, channels: Sequence[int] = (16, 32)) -> Model:
  """Conv(3x3)+ReLU+MaxPool(2x2) blocks then a dense head, for one HWC image.

  Args:
    num_classes: number of classes (>= 2).
    channels: output channels of the convolution blocks.

  Returns:
    A :class:`Model`; params ``conv_0 ...``, ``head``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = small_cnn(10)
    >>> params = model.init_fn(jax.random.key(0), jnp.ones((8, 8, 1)))
    >>> model.apply_fn(params, jnp.ones((8, 8, 1))).shape
    (10,)
  """
  _check_num_classes(num_classes)
  chans = tuple(channels)
  if not chans or any(isinstance(c, bool) or not isinstance(c, int) or c < 1 for c in chans):
    raise ValueError(f"channels must be a non-empty sequence of positive integers, got {channels!r}")
  return from_flax(_SmallCNN(num_classes, chans), "small_cnn")


class _BasicBlock(nn.Module):
  channels: int
  stride: int

  @nn.compact
  def __call__(self, x):
    h = nn.relu(nn.Conv(self.channels, (3, 3), strides=self.stride, padding=1, name="conv1")(x))
    h = nn.Conv(self.channels, (3, 3), padding=1, kernel_init=nn.initializers.zeros, name="conv2")(h)
    shortcut = x
    if self.stride != 1 or x.shape[-1] != self.channels:
      shortcut = nn.Conv(self.channels, (1, 1), strides=self.stride, name="shortcut")(x)
    return nn.relu(h + shortcut)


class _ResNet18(nn.Module):
  num_classes: int
  widths: tuple[int, ...] = (64, 128, 256, 512)

  @nn.compact
  def __call__(self, x):
    if x.ndim != 3:
      raise ValueError(f"resnet18 expects one HWC image (3 axes), got shape {x.shape}")
    h = nn.relu(nn.Conv(self.widths[0], (3, 3), padding=1, name="stem")(x[None]))
    for stage, width in enumerate(self.widths):
      for block in range(2):
        stride = 2 if (stage > 0 and block == 0) else 1
        h = _BasicBlock(width, stride, name=f"stage{stage}_block{block}")(h)
    h = jnp.mean(h, axis=(1, 2))  # global average pool
    return nn.Dense(self.num_classes, name="head")(h)[0]


def resnet18(num_classes: int = 10, widths: tuple[int, ...] = (64, 128, 256, 512)) -> Model:
  """CIFAR-style ResNet-18 without normalisation layers (for per-example gradients).

  Architecture: 3x3 stem conv (64), four stages of two basic blocks (64, 128, 256, 512 channels; stride 2
  at the start of stages 2-4 with a 1x1 projection shortcut), global average pool, dense head. Every conv
  has a bias. Batch norm is left out (it couples the examples of a batch); instead the second conv of each
  residual branch is zero-initialised, so each block starts as the identity ("zero-init residual" /
  Fixup-, SkipInit-style). With 10 classes it has 11,169,162 parameters (the usual batch-norm CIFAR
  ResNet-18 has 11,173,962: ours drops the 9,600 batch-norm scales/shifts and adds 4,800 conv biases).

  Args:
    num_classes: number of classes (>= 2).
    widths: the channels of the four stages (default the ResNet-18 ones; narrower stages keep the
      architecture and its code path for CPU-sized runs).

  Returns:
    A :class:`Model` for HWC images (32x32x3 for CIFAR-10 / SVHN).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = resnet18(10)
    >>> params = jax.eval_shape(model.init_fn, jax.random.key(0), jnp.ones((32, 32, 3)))
    >>> num_params(params)
    11169162
  """
  widths = tuple(int(w) for w in widths)
  if len(widths) != 4 or any(w < 1 for w in widths):
    raise ValueError(f"widths must be four positive channel counts (one per stage), got {widths!r}")
  name = "resnet18" if widths == (64, 128, 256, 512) else f"resnet18{list(widths)}"
  return from_flax(_ResNet18(_check_num_classes(num_classes), widths), name)
