"""Which examples enter a step's gradient estimate (theory §1), once for every algorithm.

| mode | examples | ĝ | costs |
|---|---|---|---|
| ``"full_batch"`` | every active example | mean, or (1/b) Σ with b fixed | §2a (an estimate); fixed b: §2b, q = 1 |
| ``"poisson"`` | each active example independently with probability q | (1/b) Σ, b = q·n fixed | §2b |
| ``"shuffled"`` | a batch of B from the epoch's permutation | mean over the batch | §2a with N = B (an estimate) |

Minibatch modes gather their rows (:func:`gather`) into a batch of fixed shape — B for shuffled
batches, a capacity of about q·n + 6 standard deviations for Poisson draws, of which a step computes
the first q·n + 3 standard deviations and the rest only for a draw that reaches them
(:func:`poisson_first_rows`) — so that a step's per-example work is proportional to its batch;
:func:`select` gives the same choice as an (n,) mask. Neither minibatch draw touches all n rows: a
shuffled batch maps its B positions through a keyed permutation (:func:`permute`), a Poisson draw walks
the rows by geometric gaps (:func:`poisson_positions`).

A *fixed denominator* (Poisson sampling, or a full batch with ``denominator`` or the individual filter)
makes each example's cost a function of θ_t and that example alone, which the individual Rényi filter
needs; the mean over the selected examples does not.
"""

from __future__ import annotations

import math
from typing import NamedTuple

import jax
import jax.numpy as jnp
import numpy as np

from unlearn_jax import _checks

__all__ = [
  "MODES",
  "Gathered",
  "Selection",
  "fixed_denominator",
  "gather",
  "permute",
  "poisson_capacity",
  "poisson_first_rows",
  "poisson_positions",
  "select",
]

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
  """Whether ĝ divides by a fixed b (theory §1–§3): Poisson, an explicit b, or the certified filter."""
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
    rows = poisson_positions(key, n, sampling_rate, n, dtype)  # n gaps of >= 1 reach past every row
    return Selection(jnp.zeros((n,), dtype).at[rows].set(1.0, mode="drop"), sampling_rate)
  if mode == "shuffled":
    idx = _shuffled_indices(step, shuffle_key, n, batch_size)
    return Selection(jnp.zeros((n,), dtype).at[idx].set(1.0), 1.0)
  return Selection(jnp.ones((n,), dtype), 1.0)


class Gathered(NamedTuple):
  """The rows of a minibatch step, gathered into a fixed-size batch.

  Attributes:
    indices: (m,) int32 row indices (padding slots repeat row 0 and are not valid).
    valid: (m,) float, 1 for the slots that hold a selected example.
    q: the sampling rate of the §2b costs (1 for shuffled batches).
    dropped: int32, 1 when the Poisson draw selected more examples than the m slots hold, else 0 (a
      lower bound on how many did not fit: counting them would take a pass over all n rows; the
      runtime reports any overflow as an error).
  """

  indices: jax.Array
  valid: jax.Array
  q: float
  dropped: jax.Array


def poisson_capacity(n: int, q: float, multiple: int = 1) -> int:
  """Slots for a Poisson batch: the mean q·n plus six standard deviations plus 10, at most n.

  Overflow then needs a draw beyond the six-sigma quantile (and at least 10 more than expected): about
  1e-9 per step for large q·n and below 1e-15 for q·n of order 1.

  Examples:
    >>> poisson_capacity(50_000, 256 / 50_000), poisson_capacity(100, 1.0)
    (362, 100)
  """
  mean = q * n
  cap = int(math.ceil(mean + 6.0 * math.sqrt(mean * (1.0 - q)) + 10.0))
  return int(min(n, -(-cap // multiple) * multiple))


def poisson_first_rows(n: int, q: float, capacity: int, multiple: int = 1) -> int:
  """Slots of a Poisson batch that every step computes: the mean q·n plus three standard deviations,
  rounded up to a multiple of ``multiple``, at most ``capacity``.

  A draw with more rows (about 1.3e-3 of the steps for large q·n) computes its other slots in a second,
  conditional part; with the six-sigma capacity that saves ~16% of the rows of the expected batch of 256
  (304 computed instead of 362).

  Examples:
    >>> poisson_first_rows(50_000, 256 / 50_000, poisson_capacity(50_000, 256 / 50_000))
    304
  """
  mean = q * n
  rows = int(math.ceil(mean + 3.0 * math.sqrt(mean * (1.0 - q))))
  return int(min(capacity, -(-rows // multiple) * multiple))


def gather(
  mode: str,
  key: jax.Array,
  step: jax.Array,
  shuffle_key: jax.Array | None,
  n: int,
  dtype,
  *,
  sampling_rate: float | None = None,
  batch_size: int | None = None,
  capacity: int | None = None,
) -> Gathered:
  """The rows of one minibatch step: a shuffled batch of B, or a Poisson draw in ``capacity`` slots.

  The Poisson draw is :func:`poisson_positions` (capacity + 1 gaps, the last only to detect overflow),
  the same rows as :func:`select` with the same key, so a gathered step and a masked all-rows step use
  the same examples. A shuffled batch of B = n keeps the rows in order.
  """
  if mode == "shuffled":
    if batch_size >= n:
      return Gathered(jnp.arange(n, dtype=jnp.int32), jnp.ones((n,), dtype), 1.0, jnp.zeros((), jnp.int32))
    idx = _shuffled_indices(step, shuffle_key, n, batch_size)
    return Gathered(idx.astype(jnp.int32), jnp.ones((batch_size,), dtype), 1.0, jnp.zeros((), jnp.int32))
  rows = poisson_positions(key, n, sampling_rate, capacity + 1, dtype)
  inside = rows[:capacity] < n
  overflow = (rows[capacity] < n).astype(jnp.int32)
  return Gathered(jnp.where(inside, rows[:capacity], 0), inside.astype(dtype), sampling_rate, overflow)


def poisson_positions(key: jax.Array, n: int, q: float, m: int, dtype=jnp.float32) -> jax.Array:
  """The first m rows of a Poisson draw over range(n) (each row independently with probability q), in
  increasing order; slots past the last selected row hold n. O(m) work, whatever n.

  The gaps between consecutive selected rows of i.i.d. Bernoulli(q) trials are i.i.d. geometric on
  {1, 2, …} (P(G = k) = (1 − q)^(k−1) q), so row r_j = G_1 + … + G_j − 1. A gap is drawn by inversion,
  G = 1 + ⌊log(1 − U) / log(1 − q)⌋ with U uniform on [0, 1) in ``dtype`` (at least float32: a
  bfloat16 or float16 model draws in float32): the distribution is exact up to U's resolution (2⁻²³ in
  float32, 2⁻⁵² in float64, as for the comparison U < q of a Bernoulli draw). The sums saturate at n,
  so no integer overflows. Slot j uses the j-th uniform of ``key``, so draws with a different m agree
  on their common slots (JAX's default partitionable threefry).

  Examples:
    >>> import jax
    >>> rows = poisson_positions(jax.random.key(0), 10, 1.0, 12)
    >>> rows.tolist()
    [0, 1, 2, 3, 4, 5, 6, 7, 8, 9, 10, 10]
  """
  _check_static_count("n", n)
  _check_static_count("m", m)
  _checks.check_probability("q", q, open_low=False, open_high=False)
  dtype = jnp.promote_types(dtype, jnp.float32)
  u = jax.random.uniform(key, (m,), dtype)
  log_keep = np.asarray(math.log1p(-q) if q < 1.0 else -math.inf, dtype)
  if log_keep == 0.0:  # q below the dtype's resolution: no row is ever selected
    return jnp.full((m,), n, jnp.int32)
  skips = jnp.floor(jnp.log1p(-u) / log_keep)
  gaps = jnp.minimum(skips, n).astype(jnp.int32) + 1  # clipped before the cast: a gap > n leaves range(n)
  end = n + 1  # a, b <= end: compare before adding, so the sum never leaves int32
  return jax.lax.associative_scan(lambda a, b: jnp.where(a > end - b, end, a + b), gaps) - 1


def _check_static_count(name: str, value) -> None:
  """A shape: a Python int >= 1, not a traced value (int32 sums: at most 2**31 - 2)."""
  if isinstance(value, bool) or not isinstance(value, (int, np.integer)) or not 1 <= value < 2**31 - 1:
    raise ValueError(f"{name} must be a Python int in [1, 2**31 - 2] (a static size), got {value!r}")


def _shuffled_indices(step, shuffle_key, n: int, batch_size: int) -> jax.Array:
  """Rows of batch ``pos`` of epoch ``e``: positions pos·B … pos·B + B − 1 of the epoch's permutation."""
  steps_per_epoch = max(n // batch_size, 1)
  epoch = step // steps_per_epoch
  pos = step % steps_per_epoch
  positions = (pos * batch_size + jnp.arange(batch_size)).astype(jnp.uint32)
  return permute(jax.random.fold_in(shuffle_key, epoch), positions, n)


_ROUNDS = 6


def _mix32(x: jax.Array) -> jax.Array:
  """A 32-bit integer hash (an avalanche finaliser; uint32 arithmetic wraps)."""
  x = x ^ (x >> 16)
  x = x * jnp.uint32(0x7FEB352D)
  x = x ^ (x >> 15)
  x = x * jnp.uint32(0x846CA68B)
  return x ^ (x >> 16)


def permute(key: jax.Array, positions: jax.Array, n: int) -> jax.Array:
  """The images of ``positions`` under a keyed pseudo-random permutation of range(n), in O(len(positions)).

  A balanced Feistel network on the smallest power of 4 ≥ n (a bijection of that domain), with cycle
  walking back into [0, n) — so a minibatch step never sorts or materialises a permutation of all n
  rows, and every epoch (one key) still visits each row exactly once.

  Examples:
    >>> import jax
    >>> perm = permute(jax.random.key(0), jnp.arange(10, dtype=jnp.uint32), 10)
    >>> sorted(perm.tolist()) == list(range(10))
    True
  """
  half = max(1, (max(n - 1, 1).bit_length() + 1) // 2)
  mask = jnp.uint32((1 << half) - 1)
  round_keys = jax.random.bits(key, (_ROUNDS,), jnp.uint32)

  def feistel(x):
    left, right = x >> half, x & mask
    for r in range(_ROUNDS):
      left, right = right, left ^ (_mix32(right ^ round_keys[r]) & mask)
    return (left << half) | right

  def walk(carry):
    x, _ = carry
    y = jnp.where(x >= n, feistel(x), x)
    return y, jnp.any(y >= n)

  x = feistel(positions.astype(jnp.uint32))
  x, _ = jax.lax.while_loop(lambda c: c[1], walk, (x, jnp.any(x >= n)))
  return x.astype(jnp.int32)
