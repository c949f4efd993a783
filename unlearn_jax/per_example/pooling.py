"""Max-pooling over tiling windows with a scatter-free derivative.

XLA:CPU differentiates ``reduce_window`` max-pooling through ``select_and_scatter_add``, which is slow
on CPU. For non-overlapping, tiling windows the same cotangent — routed to the first maximum of each
window, as XLA's ``select`` with ``ge`` does — is a one-hot mask. :func:`window_max` is that operation
(same values, VJP and JVP as XLA's, ties included); the ghost evaluator uses it for any user
``reduce_window_max`` with tiling windows (:func:`fast_window_max`), and ``models.small_cnn`` pools with it.
"""

from __future__ import annotations

import functools

import jax
import jax.numpy as jnp
import numpy as np

__all__ = ["window_max", "window_max_spec", "fast_window_max"]

# Test hook: False disables the max-pool fast path in the ghost evaluator.
FAST_POOL: bool = True


def window_max_spec(eqn, x):
  """(pads, window) when ``eqn`` is a max-pool with non-overlapping, tiling windows on float ``x``."""
  p = eqn.params
  win = tuple(int(w) for w in p["window_dimensions"])
  pads = tuple((int(lo), int(hi)) for lo, hi in p["padding"])
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    return None
  if (
    tuple(p["window_strides"]) != win
    or any(d != 1 for d in p["base_dilation"])
    or any(d != 1 for d in p["window_dilation"])
  ):
    return None
  if any(lo < 0 or hi < 0 for lo, hi in pads):
    return None
  if any((s + lo + hi) % w for s, (lo, hi), w in zip(np.shape(x), pads, win)):
    return None
  return pads, win


def _split_windows(x, win):
  """(..., S_d, ...) -> (..., S_d / w_d, ...) + window axes flattened last: shape (*out, prod(win))."""
  shape = np.shape(x)
  split = []
  for s, w in zip(shape, win):
    split += [s // w, w]
  x = jnp.reshape(x, split)
  nd = len(shape)
  x = jnp.transpose(x, [2 * j for j in range(nd)] + [2 * j + 1 for j in range(nd)])
  return jnp.reshape(x, tuple(s // w for s, w in zip(shape, win)) + (-1,))


def _window_max_value(x, pads, win):
  """(padded window view (*out, K), max over each window)."""
  neg = jnp.array(-jnp.inf, x.dtype)
  xw = _split_windows(jax.lax.pad(x, neg, [(lo, hi, 0) for lo, hi in pads]), win)
  return xw, jnp.max(xw, axis=-1)


@functools.partial(jax.custom_jvp, nondiff_argnums=(1, 2))
def window_max(x, pads, win):
  """Max over tiling windows (max-pooling); the derivative routes to each window's first maximum."""
  return _window_max_value(x, pads, win)[1]


@window_max.defjvp
def _window_max_jvp(pads, win, primals, tangents):
  (x,), (t,) = primals, tangents
  xw, y = _window_max_value(x, pads, win)
  first = jnp.argmax(xw, axis=-1)  # the first maximum in row-major window order, as XLA selects
  onehot = first[..., None] == jnp.arange(xw.shape[-1], dtype=first.dtype)
  tw = _split_windows(jax.lax.pad(t, jnp.zeros((), t.dtype), [(lo, hi, 0) for lo, hi in pads]), win)
  return y, jnp.sum(jnp.where(onehot, tw, jnp.zeros((), tw.dtype)), axis=-1)


def fast_window_max(eqn, invals):
  """``reduce_window_max`` with tiling windows (max-pooling) with a scatter-free backward pass.

  XLA:CPU's ``select_and_scatter_add`` (the transpose JAX emits for max-pooling) is slow; for
  non-overlapping windows the same cotangent — routed to the first maximum of each window, as XLA's
  ``select`` with ``ge`` does — is a one-hot mask. Same values and gradients; None when not applicable.
  """
  if FAST_POOL is False:
    return None
  x = invals[0]
  spec = window_max_spec(eqn, x)
  if spec is None:
    return None
  return window_max(x, *spec)
