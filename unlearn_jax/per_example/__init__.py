"""Per-example quantities without per-example loops (theory §0, §2a): the first stage of the pipeline.

- :mod:`~unlearn_jax.per_example.api`: losses, gradients, gradient norms (vmap / ghost), clipping, inner
  products, weighted and clipped gradient sums — the public functions re-exported here;
- :mod:`~unlearn_jax.per_example.ghost` and :mod:`~unlearn_jax.per_example.ghost_rules`: the ghost-norm
  tracer and its table of per-layer rules; :mod:`~unlearn_jax.per_example.pooling`: scatter-free
  max-pooling;
- :mod:`~unlearn_jax.per_example.blocks`: the per-example computations of a step, optionally in blocks
  with a fixed order of the sums (:func:`fixed_order_sum`);
- :mod:`~unlearn_jax.per_example.distances`: distances of clipped gradients to their mean (§2a), exact
  where the fast form would cancel;
- :mod:`~unlearn_jax.per_example.chunking`: padding and chunking over examples.
"""

from unlearn_jax.per_example.api import (
  NORM_METHODS,
  clip_factors,
  clip_per_example,
  clipped_grad_sum,
  per_example_grad_norms,
  per_example_grads,
  per_example_inner,
  per_example_losses,
  weighted_grad_sum,
)
from unlearn_jax.per_example.blocks import fixed_order_sum

__all__ = [
  "NORM_METHODS",
  "clip_factors",
  "clip_per_example",
  "clipped_grad_sum",
  "fixed_order_sum",
  "per_example_grad_norms",
  "per_example_grads",
  "per_example_inner",
  "per_example_losses",
  "weighted_grad_sum",
]
