"""Flax (linen) models exposed as pure ``(init_fn, apply_fn)`` pairs, and one-example loss helpers.

Every model's ``apply_fn(params, x)`` takes ONE example without a batch axis (a feature vector, or an HWC
image) and returns its logits of shape ``(num_classes,)``; batches go through ``jax.vmap``. Convolutions
add and remove a batch axis of 1 internally, so under ``vmap`` they become one plain batched
``conv_general_dilated`` whose kernel is a parameter leaf, and dense layers are one ``dot_general``
(what the per-example machinery and the ghost-norm tracer of ``per_example.py`` look for).

No model has batch normalisation: per-example gradients and per-instance privacy accounting need the
examples of a batch to be independent, and batch statistics couple them. The ResNet-18 uses no
normalisation at all; it stays trainable with a zero-initialised last convolution in every residual
branch ("zero-init residual", Goyal et al. 2017; the initialisation idea of Fixup, Zhang et al. 2019, and
SkipInit, De & Smith 2020), so every block starts as the identity map.
"""

from __future__ import annotations

import dataclasses
import math
from collections.abc import Callable, Sequence
from typing import Any, NamedTuple

import flax.linen as nn
import jax
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks
from unlearn_jax.per_example.pooling import window_max

__all__ = [
  "Model",
  "from_flax",
  "logistic_regression",
  "mlp",
  "small_cnn",
  "resnet18",
  "cross_entropy_loss_fn",
  "predict_fn",
  "accuracy",
  "num_params",
  "get_model",
  "register_model",
  "MODELS",
  "ModuleApply",
  "ModuleInit",
  "CrossEntropyLoss",
]

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


def _check_num_classes(num_classes: Any) -> int:
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


def resnet18(num_classes: int = 10) -> Model:
  """CIFAR-style ResNet-18 without normalisation layers (for per-example gradients).

  Architecture: 3x3 stem conv (64), four stages of two basic blocks (64, 128, 256, 512 channels; stride 2
  at the start of stages 2-4 with a 1x1 projection shortcut), global average pool, dense head. Every conv
  has a bias. Batch norm is left out (it couples the examples of a batch); instead the second conv of each
  residual branch is zero-initialised, so each block starts as the identity ("zero-init residual" /
  Fixup-, SkipInit-style). With 10 classes it has 11,169,162 parameters (the usual batch-norm CIFAR
  ResNet-18 has 11,173,962: ours drops the 9,600 batch-norm scales/shifts and adds 4,800 conv biases).

  Args:
    num_classes: number of classes (>= 2).

  Returns:
    A :class:`Model` for HWC images (32x32x3 for CIFAR-10 / SVHN).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = resnet18(10)
    >>> params = jax.eval_shape(model.init_fn, jax.random.key(0), jnp.ones((32, 32, 3)))
    >>> num_params(params)
    11169162
  """
  return from_flax(_ResNet18(_check_num_classes(num_classes)), "resnet18")


def num_params(params: Params) -> int:
  """Total number of scalars in a parameter pytree (works on ``jax.ShapeDtypeStruct`` leaves too).

  Examples:
    >>> import jax.numpy as jnp
    >>> num_params({"w": jnp.ones((3, 2)), "b": jnp.ones(2)})
    8
  """
  return int(sum(math.prod(leaf.shape) for leaf in jax.tree.leaves(params)))


@dataclasses.dataclass(frozen=True)
class CrossEntropyLoss:
  """``loss(params, (x, y))``: the softmax cross-entropy of ONE example (see :func:`cross_entropy_loss_fn`)."""

  apply_fn: Callable[[Params, ArrayLike], jax.Array]
  weight_decay: float = 0.0

  def __call__(self, params: Params, example: Any) -> jax.Array:
    x, y = example
    logits = self.apply_fn(params, x)
    num_classes = logits.shape[-1]
    _checks.check_labels("y", jnp.atleast_1d(y) if not _checks._is_traced(y) else y, num_classes)
    label = jnp.asarray(y)
    # under a trace a label cannot raise: a fractional or out-of-range one makes the loss NaN (the run
    # then stops as diverged) instead of training on a clamped or truncated class
    valid = (label >= 0) & (label < num_classes) & (label == jnp.round(label))
    loss = jax.nn.logsumexp(logits) - jnp.take(logits, jnp.clip(label, 0, num_classes - 1).astype(jnp.int32))
    loss = jnp.where(valid, loss, jnp.nan)
    if self.weight_decay:
      sq = sum(jnp.sum(jnp.square(p)) for p in jax.tree.leaves(params))
      loss = loss + 0.5 * self.weight_decay * sq
    return loss

  def check_data(self, params: Params, data: Any, name: str = "data") -> None:
    """Eager check of a data set ``(x, y)`` for this loss: integer labels in [0, number of classes)."""
    if not (isinstance(data, (tuple, list)) and len(data) == 2):
      raise TypeError(f"{name} must be a pair (x, y) for the cross-entropy loss, got {type(data).__name__}")
    x, y = data
    if _checks._is_traced(y) or _checks._is_traced(x):
      return
    try:
      one = jax.ShapeDtypeStruct(tuple(np.shape(x))[1:], jnp.result_type(x))  # shapes only: no copy of x
      num_classes = jax.eval_shape(self.apply_fn, params, one).shape[-1]
    except Exception:  # noqa: BLE001 - params of another layout (per seed): the range is checked per call
      num_classes = None
    _checks.check_labels(f"{name} labels y", y, num_classes)


def cross_entropy_loss_fn(
  apply_fn: Callable[[Params, ArrayLike], jax.Array], *, weight_decay: float = 0.0
) -> CrossEntropyLoss:
  """The softmax cross-entropy of ONE example, plus optional L2 weight decay.

  ``loss(params, (x, y)) = logsumexp(f(x)) - f(x)[y] + (weight_decay / 2) * ||params||^2``, with ``f`` =
  ``apply_fn(params, .)`` and ``y`` an integer label. The default ``weight_decay = 0`` leaves L2 to the
  SGLD step's own ``weight_decay`` (which adds ``weight_decay * theta`` to the step); use one or the
  other, not both. Two losses of equal apply functions are equal (and share compiled programs).

  Args:
    apply_fn: ``apply_fn(params, x) -> logits`` for one example.
    weight_decay: non-negative L2 coefficient.

  Returns:
    ``loss_fn(params, example) -> scalar`` with ``example = (x, y)``.

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> model = logistic_regression(4)
    >>> params = jax.tree.map(jnp.zeros_like, model.init_fn(jax.random.key(0), jnp.ones(3)))
    >>> loss_fn = cross_entropy_loss_fn(model.apply_fn)
    >>> round(float(loss_fn(params, (jnp.ones(3), 2))), 4)  # log(4) at uniform logits
    1.3863
    >>> loss_fn == cross_entropy_loss_fn(logistic_regression(4).apply_fn)
    True
  """
  _checks.check_nonnegative("weight_decay", weight_decay)
  return CrossEntropyLoss(apply_fn, float(weight_decay))


def predict_fn(apply_fn: Callable[[Params, ArrayLike], jax.Array]) -> Callable[[Params, ArrayLike], jax.Array]:
  """Returns ``predict(params, x_batch) -> (n,) int32`` predicted labels (argmax of vmapped logits).

  Examples:
    >>> import jax, jax.numpy as jnp
    >>> params = {"linear": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}}
    >>> predict_fn(logistic_regression(2).apply_fn)(params, jnp.array([[1., 0.], [0., 2.]])).tolist()
    [0, 1]
  """

  def predict(params: Params, x: ArrayLike) -> jax.Array:
    return jnp.argmax(jax.vmap(apply_fn, in_axes=(None, 0))(params, jnp.asarray(x)), axis=-1).astype(jnp.int32)

  return predict


def accuracy(
  apply_fn: Callable[[Params, ArrayLike], jax.Array],
  params: Params,
  x: ArrayLike,
  y: ArrayLike,
  *,
  batch_size: int | None = None,
) -> jax.Array:
  """Fraction of examples whose argmax logit equals the label (batched with vmap).

  Args:
    apply_fn: one-example apply function.
    params: parameters.
    x: (n, ...) examples.
    y: (n,) integer labels.
    batch_size: if given, evaluate in chunks of this many examples (``jax.lax.map``) to bound memory.

  Returns:
    A float32 scalar in [0, 1].

  Examples:
    >>> import jax.numpy as jnp
    >>> params = {"linear": {"kernel": jnp.eye(2), "bias": jnp.zeros(2)}}
    >>> float(accuracy(logistic_regression(2).apply_fn, params, jnp.eye(2), jnp.array([0, 0])))
    0.5
  """
  x = jnp.asarray(x)
  y = jnp.asarray(y)
  if x.ndim < 1 or y.ndim != 1 or x.shape[0] != y.shape[0] or y.shape[0] == 0:
    raise ValueError(f"x and y must share a non-empty leading example axis, got shapes {x.shape} and {y.shape}")
  if batch_size is None:
    logits = jax.vmap(apply_fn, in_axes=(None, 0))(params, x)
  else:
    if isinstance(batch_size, bool) or not isinstance(batch_size, int) or batch_size < 1:
      raise ValueError(f"batch_size must be a positive integer or None, got {batch_size!r}")
    logits = jax.lax.map(lambda xi: apply_fn(params, xi), x, batch_size=batch_size)
  return jnp.mean((jnp.argmax(logits, axis=-1) == y).astype(jnp.float32))


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


def get_model(name: str, num_classes: int, **kwargs: Any) -> Model:
  """Builds a registered model by name.

  Args:
    name: a name of :data:`MODELS` ("logistic_regression", "mlp", "small_cnn", "resnet18", or one added
      with :func:`register_model`).
    num_classes: number of classes.
    **kwargs: passed to the builder (e.g. ``hidden_sizes``, ``activation`` for "mlp"; ``channels`` for
      "small_cnn").

  Returns:
    A :class:`Model`.

  Raises:
    ValueError: unknown name (the message lists the registered names).
    TypeError: keyword arguments the builder does not take.

  Examples:
    >>> get_model("mlp", 10, hidden_sizes=(32,)).name
    'mlp'
  """
  _checks.check_choice("name", name, tuple(MODELS))
  try:
    return MODELS[name](num_classes=num_classes, **kwargs)
  except TypeError as e:
    raise TypeError(f"model {name!r}: bad keyword arguments {sorted(kwargs)}: {e}") from e
