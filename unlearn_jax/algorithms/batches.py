"""Which examples enter a step's gradient estimate (THEORY §1), once for every algorithm.

| mode | examples | ĝ | costs |
|---|---|---|---|
| ``"full_batch"`` | every active example | mean, or (1/b) Σ with b fixed | §2a (an estimate); fixed b: §2b, q = 1 |
| ``"poisson"`` | each active example independently with probability q | (1/b) Σ, b = q·n fixed | §2b |
| ``"shuffled"`` | a batch of B from the epoch's permutation | mean over the batch | §2a with N = B (an estimate) |

A *fixed denominator* (Poisson sampling, or a full batch with ``denominator`` or the individual filter)
makes each example's cost a function of θ_t and that example alone, which the individual Rényi filter
needs; the mean over the selected examples does not.
"""

from __future__ import annotations

from typing import NamedTuple

import jax
import jax.numpy as jnp

__all__ = ["MODES", "Selection", "fixed_denominator", "select"]

MODES = ("full_batch", "poisson", "shuffled")


class Selection(NamedTuple):
  """The examples a step may use before the filter, and how ĝ is normalised.

  Attributes:
    mask: (n,) float, 1 for the selected examples (Poisson draw, shuffled batch, or all rows).
    q: the sampling rate of the §2b costs (1 for a full batch with a fixed denominator).
  """

  mask: jax.Array
  q: float


def fixed_denominator(mode: str, denominator: float | None, uses_filter: bool) -> bool:
  """Whether ĝ divides by a fixed b (THEORY §1–§3): Poisson, an explicit b, or the certified filter."""
  return mode == "poisson" or denominator is not None or (mode == "full_batch" and uses_filter)


def select(
  mode: str,
  key: jax.Array,
  step: jax.Array,
  shuffle_key: jax.Array | None,
  n: int,
  dtype,
  *,
  sampling_rate: float | None = None,
  batch_size: int | None = None,
) -> Selection:
  """The selection of one step over the n rows (padding and removed examples are masked by the caller).

  Args:
    mode: one of :data:`MODES`.
    key: the step's Poisson-sampling key (``update.sample_key`` of the step key).
    step: the step counter t (shuffled mode: epoch t // (n // B), position t % (n // B)).
    shuffle_key: the run's permutation key (shuffled mode; epoch e uses ``fold_in(shuffle_key, e)``).
    n: the number of rows.
    dtype: float dtype of the mask.
    sampling_rate: q (poisson mode).
    batch_size: B (shuffled mode).

  Returns:
    A :class:`Selection`.
  """
  if mode == "poisson":
    return Selection(jax.random.bernoulli(key, sampling_rate, (n,)).astype(dtype), sampling_rate)
  if mode == "shuffled":
    steps_per_epoch = max(n // batch_size, 1)
    epoch = step // steps_per_epoch
    pos = step % steps_per_epoch
    perm = jax.random.permutation(jax.random.fold_in(shuffle_key, epoch), n)
    idx = jax.lax.dynamic_slice(perm, (pos * batch_size,), (batch_size,))
    return Selection(jnp.zeros((n,), dtype).at[idx].set(1.0), 1.0)
  return Selection(jnp.ones((n,), dtype), 1.0)
