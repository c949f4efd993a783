"""Logistic regression written for ONE example, and its per-example gradients in NumPy (the float64
reference), shared by the ledger and SGLD tests. Not a test module (pytest puts ``tests/`` on
``sys.path``)."""

from __future__ import annotations

import jax.numpy as jnp
import numpy as np


def logistic_loss(w, ex):
  """log(1 + e^z) - y z with z = <w, x>, for one ``(x, y)`` example, y in {0, 1}."""
  x, y = ex
  z = x @ w
  return jnp.logaddexp(0.0, z) - y * z


def logistic_grads_np(w, x, y):
  """Per-example gradients (σ(x_i·w) - y_i) x_i, (n, d), in NumPy."""
  p = 1.0 / (1.0 + np.exp(-(x @ w)))
  return (p - y)[:, None] * x
