"""A small linear softmax classifier written for ONE example, shared by the evaluation and metrics tests.

Not a test module: ``test_evaluation.py`` and ``test_metrics.py`` import it (pytest puts ``tests/`` on
``sys.path``).
"""

from __future__ import annotations

import jax


def apply_fn(params, x):
  """Logits of one example."""
  return x @ params["w"] + params["b"]


def loss_fn(params, example):
  """Cross-entropy of one ``(x, y)`` example."""
  x, y = example
  return -jax.nn.log_softmax(apply_fn(params, x))[y]


def make_params(key, num_features, num_classes, scale=1.0):
  """Gaussian weights and biases with standard deviation ``scale``."""
  k1, k2 = jax.random.split(key)
  return {
    "w": scale * jax.random.normal(k1, (num_features, num_classes)),
    "b": scale * jax.random.normal(k2, (num_classes,)),
  }
