"""Training and unlearning steps (theory §0–§1, §4): one protocol, composed from small pieces.

- :mod:`~unlearn_jax.algorithms.base`: the :class:`Algorithm` protocol ``(init, step)`` and
  :class:`StepInfo`;
- :mod:`~unlearn_jax.algorithms.batches`: which examples enter a step (§1);
- :mod:`~unlearn_jax.algorithms.update`: the noisy update and the projection, and their optax form
  :func:`langevin_noise`;
- :mod:`~unlearn_jax.algorithms.sgld`: SGLD with clipping and the ledger, composed of the above;
- :mod:`~unlearn_jax.algorithms.methods`: the unlearning methods (SGLD / SGD / L1-sparse fine-tuning), a
  registry users can add to;
- :mod:`~unlearn_jax.algorithms.optimizer`: training driven by any optax optimizer.
"""

from unlearn_jax.algorithms.base import HYPERPARAMETERS, Algorithm, StepInfo
from unlearn_jax.algorithms.batches import MODES
from unlearn_jax.algorithms.methods import (
  UNLEARNING_METHODS,
  MethodSpec,
  register_unlearning_method,
  unlearning_method,
)
from unlearn_jax.algorithms.optimizer import OptimizerState, optax_training
from unlearn_jax.algorithms.sgld import SGLDState, sgld
from unlearn_jax.algorithms.update import langevin_noise, noisy_update, project

__all__ = [
  "HYPERPARAMETERS",
  "MODES",
  "UNLEARNING_METHODS",
  "Algorithm",
  "MethodSpec",
  "OptimizerState",
  "SGLDState",
  "StepInfo",
  "langevin_noise",
  "noisy_update",
  "optax_training",
  "project",
  "register_unlearning_method",
  "sgld",
  "unlearning_method",
]
