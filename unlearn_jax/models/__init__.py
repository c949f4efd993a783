"""Models as pure ``(init_fn, apply_fn)`` pairs over ONE example, their losses and their registry.

- :mod:`~unlearn_jax.models.base`: the :class:`Model` record and flax linen modules as pure functions;
- :mod:`~unlearn_jax.models.nnx`: flax NNX modules as pure functions (``nnx.split`` / ``nnx.merge``);
- :mod:`~unlearn_jax.models.architectures`: logistic regression, MLP, small CNN, ResNet-18 (no batch norm);
- :mod:`~unlearn_jax.models.losses`: the one-example cross-entropy, predictions, accuracy;
- :mod:`~unlearn_jax.models.registry`: ``MODELS``, ``register_model``, ``get_model`` and
  ``"package.module:builder"`` references.
"""

from unlearn_jax.models.architectures import logistic_regression, mlp, resnet18, small_cnn
from unlearn_jax.models.base import Model, ModuleApply, ModuleInit, from_flax, num_params
from unlearn_jax.models.losses import CrossEntropyLoss, accuracy, cross_entropy_loss_fn, predict_fn
from unlearn_jax.models.nnx import from_nnx
from unlearn_jax.models.registry import MODELS, get_model, is_reference, register_model, resolve_builder

__all__ = [
  "Model",
  "from_flax",
  "from_nnx",
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
  "resolve_builder",
  "is_reference",
  "MODELS",
  "ModuleApply",
  "ModuleInit",
  "CrossEntropyLoss",
]
