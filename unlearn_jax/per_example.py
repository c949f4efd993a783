"""Per-example gradients, norms, inner products and clipping (THEORY §0, §2a).

Every function takes a ``loss_fn(params, example) -> scalar`` written for ONE example and a batch: the
same pytree with a leading axis of size n on every leaf. Two ways to get the per-example gradient norms:

- ``method="vmap"``: ``jax.vmap(jax.grad(loss_fn))`` materialises every per-example gradient (optionally
  ``chunk_size`` examples at a time to bound memory) and takes its norm.
- ``method="ghost"``: the "ghost norm" identity, without materialising per-example gradients. The batched
  loss is traced to a jaxpr; every parameter leaf used once as one operand of a ``dot_general`` (Dense,
  Embedding one-hots, attention projections), of a ``conv_general_dilated`` (Conv) or added as a bias is
  found; one backward pass to zero "taps" added to those outputs gives each example's output gradient
  δ_i, and each leaf's per-example squared norm is computed from δ_i and the recorded input activations
  a_i: ``‖a_i‖²‖δ_i‖²`` for a weight applied once per example, the Gram form
  ``Σ_{p,q} ⟨a_ip, a_iq⟩⟨δ_ip, δ_iq⟩`` (or the materialised per-example weight gradient, whichever is
  cheaper) for a weight applied at several positions, ``‖Σ_p δ_ip‖²`` for a bias. Any leaf used in another
  way falls back to vmap for that leaf alone. Exact, not approximate. Convolutions are handled per kernel
  offset (input slices, small batched matmuls; no identity-kernel patch convolution), and max-pooling
  with tiling windows is differentiated without XLA's slow-on-CPU ``select_and_scatter_add`` (same
  cotangent: each window's first maximum).
- ``method="auto"`` (default): ghost where the trace succeeds, vmap otherwise; exact either way.

Clipped gradient sums use the two-pass method: norms first, then one backward pass of the reweighted
loss ``Σ_i w_i min(1, C/‖∇ℓ_i‖) ℓ_i`` with the weights held constant.
"""

from __future__ import annotations

import functools
import math
from typing import Any, Callable, NamedTuple

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _checks

__all__ = [
    "per_example_losses",
    "per_example_grads",
    "per_example_grad_norms",
    "clip_per_example",
    "clip_factors",
    "per_example_inner",
    "weighted_grad_sum",
    "clipped_grad_sum",
    "NORM_METHODS",
]

PyTree = Any
LossFn = Callable[[PyTree, PyTree], ArrayLike]

NORM_METHODS = ("auto", "vmap", "ghost")


# ----------------------------------------------------------------------------------------------------
# Validation helpers
# ----------------------------------------------------------------------------------------------------


def _check_loss_fn(loss_fn: Any, params: PyTree, batch: PyTree) -> int:
  """Checks the batch and that ``loss_fn(params, one example)`` is a scalar; returns n."""
  if not callable(loss_fn):
    raise TypeError(f"loss_fn must be callable as loss_fn(params, example), got {loss_fn!r}")
  n = _checks.check_batch(batch)
  example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)), batch)
  try:
    out = jax.eval_shape(loss_fn, params, example)
  except (TypeError, ValueError) as e:
    raise TypeError(
        "loss_fn(params, example) failed on one example of the batch (an example is the batch pytree "
        f"without its leading axis): {type(e).__name__}: {e}"
    ) from e
  leaves = jax.tree.leaves(out)
  if len(leaves) != 1 or not hasattr(leaves[0], "shape") or leaves[0].shape != ():
    shapes = [getattr(l, "shape", type(l).__name__) for l in leaves]
    raise TypeError(
        "loss_fn must return a scalar loss for ONE example (shape ()), got output shape(s) "
        f"{shapes}; write loss_fn for a single example, it is vmapped over the batch"
    )
  if not jnp.issubdtype(leaves[0].dtype, jnp.floating):
    raise TypeError(f"loss_fn must return a floating-point scalar, got dtype {leaves[0].dtype}")
  return n


def _check_chunk_size(chunk_size: Any) -> int | None:
  if chunk_size is None:
    return None
  if isinstance(chunk_size, bool) or not isinstance(chunk_size, (int, np.integer)) or chunk_size < 1:
    raise ValueError(f"chunk_size must be None or a positive integer, got {chunk_size!r}")
  return int(chunk_size)


def _check_method(method: Any) -> None:
  _checks.check_choice("method", method, NORM_METHODS)


def _check_clip_norm(clip_norm: Any) -> None:
  if clip_norm is None:
    return
  _checks.check_positive("clip_norm", clip_norm, allow_inf=True)


def _check_weights(weights: Any, n: int, name: str = "weights") -> None:
  shape = np.shape(weights)
  if shape != (n,):
    raise ValueError(f"{name} must have shape (n,) = ({n},) (one weight per example), got shape {shape}")


def _check_like_params(name: str, tree: PyTree, params: PyTree) -> None:
  s1, s2 = jax.tree.structure(tree), jax.tree.structure(params)
  if s1 != s2:
    raise ValueError(f"{name} must have the pytree structure of params ({s2}), got {s1}")
  for a, b in zip(jax.tree.leaves(tree), jax.tree.leaves(params)):
    if np.shape(a) != np.shape(b):
      raise ValueError(f"{name} leaf shapes must equal params' leaf shapes: {np.shape(a)} vs {np.shape(b)}")


# ----------------------------------------------------------------------------------------------------
# Small numerics
# ----------------------------------------------------------------------------------------------------


def _safe_sqrt(sq: jax.Array) -> jax.Array:
  """sqrt with a finite (zero) gradient at 0."""
  pos = sq > 0
  return jnp.where(pos, jnp.sqrt(jnp.where(pos, sq, 1.0)), 0.0)


def _per_example_sq_norms_of(grads: PyTree) -> jax.Array:
  leaves = jax.tree.leaves(grads)
  return sum(jnp.sum(jnp.reshape(jnp.square(g), (g.shape[0], -1)), axis=1) for g in leaves)


def _vmapped_losses(loss_fn: LossFn, params: PyTree, batch: PyTree) -> jax.Array:
  return jax.vmap(loss_fn, in_axes=(None, 0))(params, batch)


# ----------------------------------------------------------------------------------------------------
# Chunking: pad the batch to a multiple of chunk_size and lax.map over chunks
# ----------------------------------------------------------------------------------------------------


def _pad_batch(batch: PyTree, n: int, chunk_size: int) -> tuple[PyTree, jax.Array, int]:
  """Pads by repeating the first example (so padded rows give finite values); returns (padded, mask, n_pad)."""
  num_chunks = -(-n // chunk_size)
  n_pad = num_chunks * chunk_size

  def pad(x):
    x = jnp.asarray(x)
    if n_pad == n:
      return x
    fill = jnp.broadcast_to(x[:1], (n_pad - n,) + x.shape[1:])
    return jnp.concatenate([x, fill], axis=0)

  mask = (jnp.arange(n_pad) < n)
  return jax.tree.map(pad, batch), mask, n_pad


def _to_chunks(tree: PyTree, chunk_size: int) -> PyTree:
  return jax.tree.map(lambda x: jnp.reshape(x, (-1, chunk_size) + x.shape[1:]), tree)


def _from_chunks(tree: PyTree, n: int) -> PyTree:
  return jax.tree.map(lambda x: jnp.reshape(x, (-1,) + x.shape[2:])[:n], tree)


@functools.partial(jax.jit, static_argnums=(0, 3))
def _chunked_per_example(fn: Callable, params: PyTree, padded_batch: PyTree, chunk_size: int) -> PyTree:
  """lax.map of ``fn(params, chunk)`` (per-example outputs, leading axis chunk_size) over chunks.

  Jitted with a static ``fn`` and ``chunk_size`` so that two batch sizes n that pad to the same shape
  share one compiled executable.
  """
  chunks = _to_chunks(padded_batch, chunk_size)
  out = jax.lax.map(lambda c: fn(params, c), chunks)
  return jax.tree.map(lambda x: jnp.reshape(x, (-1,) + x.shape[2:]), out)


def _map_per_example(fn: Callable, params: PyTree, batch: PyTree, n: int, chunk_size: int | None) -> PyTree:
  """Applies a per-example-output function to the whole batch, in chunks when asked."""
  if chunk_size is None or chunk_size >= n:
    return fn(params, batch)
  padded, _, _ = _pad_batch(batch, n, chunk_size)
  out = _chunked_per_example(fn, params, padded, chunk_size)
  return jax.tree.map(lambda x: x[:n], out)


# ----------------------------------------------------------------------------------------------------
# Public API: losses, gradients, norms
# ----------------------------------------------------------------------------------------------------


def per_example_losses(loss_fn: LossFn, params: PyTree, batch: PyTree) -> jax.Array:
  """Losses of every example of a batch.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.

  Returns:
    Array of shape (n,): ``loss_fn(params, batch[i])``.

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: if the batch leaves disagree on n.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([1.0, 0.0])
    >>> per_example_losses(loss_fn, jnp.array([1.0, 1.0]), (x, y)).tolist()
    [0.0, 2.0]
  """
  _check_loss_fn(loss_fn, params, batch)
  return _vmapped_losses(loss_fn, params, batch)


def _grads_fn(loss_fn: LossFn) -> Callable:
  return jax.vmap(jax.grad(loss_fn), in_axes=(None, 0))


@functools.lru_cache(maxsize=256)
def _grads_fn_cached(loss_fn: LossFn) -> Callable:
  return _grads_fn(loss_fn)


def _sq_norms_fn(loss_fn: LossFn) -> Callable:
  grads_fn = _grads_fn(loss_fn)
  return lambda params, batch: _per_example_sq_norms_of(grads_fn(params, batch))


@functools.lru_cache(maxsize=256)
def _sq_norms_fn_cached(loss_fn: LossFn) -> Callable:
  return _sq_norms_fn(loss_fn)


def _cached(factory_cached: Callable, factory: Callable, loss_fn: LossFn) -> Callable:
  """Same callable object for the same loss_fn (keeps the chunked jit cache warm)."""
  try:
    return factory_cached(loss_fn)
  except TypeError:  # unhashable callable
    return factory(loss_fn)


def per_example_grads(
    loss_fn: LossFn, params: PyTree, batch: PyTree, *, chunk_size: int | None = None
) -> PyTree:
  """Gradient of every example's loss, stacked along a leading axis.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    chunk_size: if given, at most this many examples are differentiated at once (``lax.map`` over chunks;
      the last chunk is padded and its padding dropped). Two batch sizes that pad to the same number of
      chunks share one compiled executable.

  Returns:
    Pytree like ``params`` whose leaves have a leading axis of size n.

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: if the batch leaves disagree on n or ``chunk_size`` is not a positive integer.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0.0, 0.0])
    >>> per_example_grads(loss_fn, jnp.array([1.0, 1.0]), (x, y)).tolist()
    [[1.0, 0.0], [0.0, 4.0]]
  """
  n = _check_loss_fn(loss_fn, params, batch)
  chunk_size = _check_chunk_size(chunk_size)
  fn = _cached(_grads_fn_cached, _grads_fn, loss_fn)
  return _map_per_example(fn, params, batch, n, chunk_size)


def _vmap_sq_norms(loss_fn: LossFn, params: PyTree, batch: PyTree, n: int, chunk_size: int | None) -> jax.Array:
  fn = _cached(_sq_norms_fn_cached, _sq_norms_fn, loss_fn)
  return _map_per_example(fn, params, batch, n, chunk_size)


def _per_example_sq_norms(
    loss_fn: LossFn, params: PyTree, batch: PyTree, n: int, chunk_size: int | None, method: str
) -> jax.Array:
  if method == "vmap":
    return _vmap_sq_norms(loss_fn, params, batch, n, chunk_size)
  return _ghost_sq_norms(loss_fn, params, batch, n, chunk_size, strict=(method == "ghost"))


def _ghost_sq_norms(loss_fn, params, batch, n, chunk_size, *, strict):
  """Per-example squared gradient norms by the ghost identity, vmap for uncovered leaves."""
  try:
    plan = _ghost_plan(loss_fn, params, batch)
  except _GhostUnsupported as e:
    if strict:
      raise ValueError(f'method="ghost" cannot trace loss_fn: {e}; use method="auto" or "vmap"') from e
    return _vmap_sq_norms(loss_fn, params, batch, n, chunk_size)
  if not plan.covered:  # nothing to gain: plain vmap
    return _vmap_sq_norms(loss_fn, params, batch, n, chunk_size)
  fn = functools.partial(_ghost_apply, plan, loss_fn)
  if chunk_size is None or chunk_size >= n:
    return fn(params, batch)
  padded, _, _ = _pad_batch(batch, n, chunk_size)
  chunks = _to_chunks(padded, chunk_size)
  out = jax.lax.map(lambda c: fn(params, c), chunks)
  return jnp.reshape(out, (-1,))[:n]


# ----------------------------------------------------------------------------------------------------
# The ghost fast path: trace, find parameter sites, one backward pass to taps, per-leaf norms
# ----------------------------------------------------------------------------------------------------


# Test hook: None chooses the cheaper of the Gram and direct forms; "gram" / "direct" forces one.
_FORCE_FORM: str | None = None


class _GhostUnsupported(Exception):
  pass


_VIEW_PRIMS = frozenset({"reshape", "transpose", "convert_element_type", "squeeze", "expand_dims",
                         "broadcast_in_dim", "copy", "copy_p"})
_INLINE_PRIMS = frozenset({"jit", "pjit", "closed_call", "core_call"})


class _Tag(NamedTuple):
  leaf: int
  chain: tuple  # view equations from the leaf to this value, in order
  iso: bool     # True when the chain preserves the Euclidean norm (no real broadcast)


class _Site(NamedTuple):
  path: tuple          # equation index path (through inlined jit calls)
  kind: str            # "dot", "conv", "gather", "add"
  leaf: int
  param_arg: int       # which operand of the equation is the parameter view
  eqn_params: Any      # the equation's params (dimension numbers etc.)
  chain: tuple
  param_shape: tuple   # shape of the parameter view operand
  out_shape: tuple     # per-example output shape
  act_shape: tuple     # per-example shape of the other operand (activation / indices)


class _Plan(NamedTuple):
  closed: Any          # ClosedJaxpr of the per-example loss
  sites: tuple         # _Site per covered leaf
  covered: tuple       # leaf indices covered by a site (or unused: zero gradient)
  fallback: tuple      # leaf indices needing vmap
  site_paths: frozenset
  prefixes: frozenset  # path prefixes that lead to a site (inline those calls)


def _is_var(v) -> bool:
  return not isinstance(v, jax.extend.core.Literal)


def _size(shape) -> int:
  return int(math.prod(shape))


def _analyze(jaxpr, tags_in, path, sites, uses):
  """Walks a jaxpr tracking values that are views of parameter leaves; records their uses."""
  env = {}
  for v, t in zip(jaxpr.invars, tags_in):
    if t is not None:
      env[v] = t
  for i, eqn in enumerate(jaxpr.eqns):
    tin = [env.get(v) if _is_var(v) else None for v in eqn.invars]
    if not any(t is not None for t in tin):
      continue
    name = eqn.primitive.name
    here = path + (i,)
    if name in _VIEW_PRIMS and len(eqn.invars) == 1:
      t = tin[0]
      iso = t.iso and _size(eqn.outvars[0].aval.shape) == _size(eqn.invars[0].aval.shape)
      env[eqn.outvars[0]] = _Tag(t.leaf, t.chain + (eqn,), iso)
      continue
    if name in _INLINE_PRIMS:
      inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
      inner_jaxpr = getattr(inner, "jaxpr", inner)
      out_tags = _analyze(inner_jaxpr, tin, here, sites, uses)
      for v, t in zip(eqn.outvars, out_tags):
        if t is not None:
          env[v] = t
      continue
    site = _site_of(eqn, tin, here)
    for k, t in enumerate(tin):
      if t is not None:
        uses.setdefault(t.leaf, []).append(site if (site is not None and site.param_arg == k) else None)
  return [env.get(v) if _is_var(v) else None for v in jaxpr.outvars]


def _site_of(eqn, tin, here):
  """Returns a _Site when ``eqn`` uses exactly one parameter view in a covered way, else None."""
  name = eqn.primitive.name
  tagged = [k for k, t in enumerate(tin) if t is not None]
  if len(tagged) != 1 or len(eqn.outvars) != 1:
    return None
  k = tagged[0]
  t = tin[k]
  shapes = [tuple(v.aval.shape) for v in eqn.invars]
  out_shape = tuple(eqn.outvars[0].aval.shape)
  if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
    return None
  make = lambda kind: _Site(here, kind, t.leaf, k, dict(eqn.params), t.chain, shapes[k], out_shape,
                            shapes[1 - k] if len(shapes) == 2 else ())
  if name == "dot_general" and t.iso and len(shapes) == 2:
    return make("dot")
  if (name == "conv_general_dilated" and t.iso and k == 1 and eqn.params["feature_group_count"] == 1
      and eqn.params["batch_group_count"] == 1):
    return make("conv")
  if name == "gather" and t.iso and k == 0 and len(shapes[0]) == 2:
    dn = eqn.params["dimension_numbers"]
    ok = (tuple(dn.collapsed_slice_dims) == (0,) and tuple(dn.start_index_map) == (0,)
          and tuple(dn.offset_dims) == (len(out_shape) - 1,)
          and not tuple(getattr(dn, "operand_batching_dims", ()))
          and tuple(eqn.params["slice_sizes"]) == (1, shapes[0][1]) and shapes[1][-1:] == (1,))
    return make("gather") if ok else None
  if name == "add" and len(shapes) == 2:
    return make("add")
  return None


def _ghost_plan(loss_fn, params, batch) -> _Plan:
  leaves = jax.tree.leaves(params)
  example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)), batch)
  try:
    closed = jax.make_jaxpr(loss_fn)(params, example)
  except Exception as e:  # noqa: BLE001 - any tracing failure means "not traceable this way"
    raise _GhostUnsupported(f"{type(e).__name__}: {e}") from e
  jaxpr = closed.jaxpr
  num_leaves = len(leaves)
  tags = [_Tag(i, (), True) for i in range(num_leaves)] + [None] * (len(jaxpr.invars) - num_leaves)
  sites, uses = [], {}
  out_tags = _analyze(jaxpr, tags, (), sites, uses)
  for t in out_tags:
    if t is not None:
      uses.setdefault(t.leaf, []).append(None)
  covered, fallback, chosen = [], [], []
  for i, leaf in enumerate(leaves):
    u = uses.get(i, [])
    if not jnp.issubdtype(jnp.result_type(leaf), jnp.floating):
      continue  # integer leaves have no gradient
    if not u:
      covered.append(i)  # unused leaf: zero gradient
    elif len(u) == 1 and u[0] is not None:
      covered.append(i)
      chosen.append(u[0])
    else:
      fallback.append(i)
  paths = frozenset(s.path for s in chosen)
  prefixes = frozenset(p[:j] for p in paths for j in range(1, len(p)))
  return _Plan(closed, tuple(chosen), tuple(covered), tuple(fallback), paths, prefixes)


def _eval_with_taps(jaxpr, consts, args, path, plan, taps, acts):
  """Evaluates a jaxpr, adding ``taps[path]`` to each site's output and recording its activation."""
  env = {}

  def read(v):
    return v.val if not _is_var(v) else env[v]

  for v, c in zip(jaxpr.constvars, consts):
    env[v] = c
  for v, a in zip(jaxpr.invars, args):
    env[v] = a
  for i, eqn in enumerate(jaxpr.eqns):
    here = path + (i,)
    invals = [read(v) for v in eqn.invars]
    if here in plan.prefixes:
      inner = eqn.params.get("jaxpr", eqn.params.get("call_jaxpr"))
      inner_jaxpr = getattr(inner, "jaxpr", inner)
      inner_consts = getattr(inner, "consts", ())
      outs = _eval_with_taps(inner_jaxpr, inner_consts, invals, here, plan, taps, acts)
    else:
      fast = _fast_window_max(eqn, invals) if eqn.primitive.name == "reduce_window_max" else None
      outs = _bind(eqn, invals) if fast is None else fast
      if not eqn.primitive.multiple_results:
        outs = [outs]
      if here in plan.site_paths:
        site = _site_by_path(plan, here)
        if site.kind != "add":
          acts[here] = invals[1 - site.param_arg]
        outs = [outs[0] + taps[here].astype(outs[0].dtype)]
    for v, o in zip(eqn.outvars, outs):
      env[v] = o
  return [read(v) for v in jaxpr.outvars]


def _window_max_spec(eqn, x):
  """(pads, window) when ``eqn`` is a max-pool with non-overlapping, tiling windows on float ``x``."""
  p = eqn.params
  win = tuple(int(w) for w in p["window_dimensions"])
  pads = tuple((int(lo), int(hi)) for lo, hi in p["padding"])
  if not jnp.issubdtype(jnp.result_type(x), jnp.floating):
    return None
  if (tuple(p["window_strides"]) != win or any(d != 1 for d in p["base_dilation"])
      or any(d != 1 for d in p["window_dilation"])):
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
def _window_max(x, pads, win):
  """Max over tiling windows (max-pooling); the derivative routes to each window's first maximum."""
  return _window_max_value(x, pads, win)[1]


@_window_max.defjvp
def _window_max_jvp(pads, win, primals, tangents):
  (x,), (t,) = primals, tangents
  xw, y = _window_max_value(x, pads, win)
  first = jnp.argmax(xw, axis=-1)  # the first maximum in row-major window order, as XLA selects
  onehot = first[..., None] == jnp.arange(xw.shape[-1], dtype=first.dtype)
  tw = _split_windows(jax.lax.pad(t, jnp.zeros((), t.dtype), [(lo, hi, 0) for lo, hi in pads]), win)
  return y, jnp.sum(jnp.where(onehot, tw, jnp.zeros((), tw.dtype)), axis=-1)


def _fast_window_max(eqn, invals):
  """``reduce_window_max`` with tiling windows (max-pooling) with a scatter-free backward pass.

  XLA:CPU's ``select_and_scatter_add`` (the transpose JAX emits for max-pooling) is slow; for
  non-overlapping windows the same cotangent — routed to the first maximum of each window, as XLA's
  ``select`` with ``ge`` does — is a one-hot mask. Same values and gradients; None when not applicable.
  """
  if _FAST_POOL is False:
    return None
  x = invals[0]
  spec = _window_max_spec(eqn, x)
  if spec is None:
    return None
  return _window_max(x, *spec)


# Test hook: False disables the max-pool fast path in the ghost evaluator.
_FAST_POOL: bool = True


def _bind(eqn, invals):
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # older JAX: (subfuns, params)
    subfuns, params = params
  ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
  if ctx is None:
    return eqn.primitive.bind(*subfuns, *invals, **params)
  with ctx:
    return eqn.primitive.bind(*subfuns, *invals, **params)


def _site_by_path(plan, path):
  for s in plan.sites:
    if s.path == path:
      return s
  raise KeyError(path)  # pragma: no cover


def _ghost_apply(plan: _Plan, loss_fn, params, batch) -> jax.Array:
  """Per-example squared norms (n,) for one batch (chunk), following ``plan``."""
  leaves, treedef = jax.tree.flatten(params)
  batch_leaves = jax.tree.leaves(batch)
  n = batch_leaves[0].shape[0]
  closed = plan.closed
  num_consts = len(closed.jaxpr.invars) - len(leaves) - len(batch_leaves)
  if num_consts != 0:  # pragma: no cover - make_jaxpr puts the flattened args as invars
    raise _GhostUnsupported("unexpected jaxpr signature")
  dtype = jnp.result_type(*leaves)

  def one(taps, ex_leaves):
    acts = {}
    out = _eval_with_taps(closed.jaxpr, closed.consts, list(leaves) + list(ex_leaves), (), plan, taps, acts)
    return out[0], acts

  def total(taps):
    losses, acts = jax.vmap(one)(taps, batch_leaves)
    return jnp.sum(losses), acts

  zero_taps = {s.path: jnp.zeros((n,) + s.out_shape, dtype=dtype) for s in plan.sites}
  deltas, acts = jax.grad(total, has_aux=True)(zero_taps)
  sq = jnp.zeros((n,), dtype=dtype)
  for s in plan.sites:
    sq = sq + _site_sq_norms(s, leaves[s.leaf], acts.get(s.path), deltas[s.path]).astype(dtype)
  if plan.fallback:
    fb = plan.fallback

    def loss_fb(sub, ex):
      full = list(leaves)
      for j, v in zip(fb, sub):
        full[j] = v
      return loss_fn(jax.tree.unflatten(treedef, full), ex)

    sub = [leaves[j] for j in fb]
    g = jax.vmap(jax.grad(loss_fb), in_axes=(None, 0))(sub, batch)
    sq = sq + _per_example_sq_norms_of(g).astype(dtype)
  return sq


def _unbroadcast(d: jax.Array, shape: tuple) -> jax.Array:
  """Sums a per-example cotangent d (n, *out) down to (n, *shape) (reverse of implicit broadcasting)."""
  out = d.shape[1:]
  lead = len(out) - len(shape)
  axes = tuple(1 + j for j in range(lead))
  axes += tuple(1 + lead + j for j, s in enumerate(shape) if s == 1 and out[lead + j] != 1)
  d = jnp.sum(d, axis=axes, keepdims=True) if axes else d
  return jnp.reshape(d, (d.shape[0],) + tuple(shape))


def _chain_fn(chain):
  def f(x):
    for eqn in chain:
      x = _bind(eqn, [x])
    return x
  return f


def _sq_rows(x: jax.Array) -> jax.Array:
  return jnp.sum(jnp.reshape(jnp.square(x), (x.shape[0], -1)), axis=1)


def _gram_or_direct(a: jax.Array, d: jax.Array, form: str | None = None) -> jax.Array:
  """Σ_b ‖Σ_l a[n,b,l,:] ⊗ d[n,b,l,:]‖² per n; a (n,B,L,C), d (n,B,L,R): Gram form or direct."""
  _, _, L, C = a.shape
  R = d.shape[-1]
  if L == 1:
    return jnp.sum(jnp.sum(a[:, :, 0] ** 2, -1) * jnp.sum(d[:, :, 0] ** 2, -1), axis=1)
  form = form or _FORCE_FORM
  if (form == "gram") or (form is None and L * L * (C + R) <= L * C * R):
    ga = jnp.einsum("nblc,nbmc->nblm", a, a)
    gd = jnp.einsum("nblr,nbmr->nblm", d, d)
    return jnp.sum(ga * gd, axis=(1, 2, 3))
  g = jnp.einsum("nblc,nblr->nbcr", a, d)
  return _sq_rows(g)


def _conv_offset_slices(x, filt, p, out_spatial):
  """The input seen by each kernel offset of a convolution (lhs_dilation 1), channels first.

  ``x`` is (n, N, C, *spatial). Returns one array (n, N, C, P) per kernel offset k (row-major over
  ``filt``), P = prod(out_spatial): output position y reads ``x_pad[y·s + k·r]`` at offset k. Pure
  slicing (no identity-kernel convolution as in ``conv_general_dilated_patches``).
  """
  n, nb, c = x.shape[:3]
  nd = len(filt)
  zero = jnp.zeros((), x.dtype)
  xp = jax.lax.pad(x, zero, [(0, 0, 0)] * 3 + [(int(lo), int(hi), 0) for lo, hi in p["padding"]])
  strides = tuple(int(v) for v in p["window_strides"])
  rdil = tuple(int(v) for v in p["rhs_dilation"])
  out = []
  for k in np.ndindex(*filt):
    start = [0, 0, 0] + [k[j] * rdil[j] for j in range(nd)]
    limit = [n, nb, c] + [k[j] * rdil[j] + (out_spatial[j] - 1) * strides[j] + 1 for j in range(nd)]
    sl = jax.lax.slice(xp, start, limit, [1, 1, 1] + list(strides))
    out.append(jnp.reshape(sl, (n, nb, c, -1)))
  return out


def _conv_sq_norms_by_offsets(x, d, filt, p, gram: bool) -> jax.Array:
  """Per-example squared kernel-gradient norms of a convolution with lhs_dilation 1.

  ``x`` (n, N, C, *spatial), ``d`` (n, N, O, *out_spatial). Direct form: the per-example kernel gradient
  at offset k is S_k δ (C×O, one small batched matmul per offset) and the squared norm sums over k;
  Gram form: ``Σ_{p,q} ⟨a_p, a_q⟩⟨δ_p, δ_q⟩`` with the patches a = [S_k]_k.
  """
  n, nb, o = d.shape[:3]
  out_spatial = d.shape[3:]
  dl = jnp.moveaxis(jnp.reshape(d, (n, nb, o, -1)), 2, 3)         # (n, N, P, O)
  slices = _conv_offset_slices(x, filt, p, out_spatial)
  if gram:
    a = jnp.moveaxis(jnp.concatenate(slices, axis=2), 2, 3)        # (n, N, P, F)
    return _gram_or_direct(jnp.reshape(a, (n, 1, -1, a.shape[-1])), jnp.reshape(dl, (n, 1, -1, o)),
                           form="gram")
  sq = jnp.zeros((n,), d.dtype)
  for s in slices:
    sq = sq + _sq_rows(jnp.einsum("nbcp,nbpo->nco", s, dl))
  return sq


def _site_sq_norms(site: _Site, leaf, act, delta) -> jax.Array:
  n = delta.shape[0]
  if site.kind == "add":
    g = _unbroadcast(delta, site.param_shape)
    if site.chain:
      f = _chain_fn(site.chain)
      zero = jnp.zeros(np.shape(leaf), jnp.result_type(leaf))
      _, vjp = jax.vjp(f, zero)
      g = jax.vmap(lambda c: vjp(c.astype(_vjp_dtype(f, zero)))[0])(g)
    return _sq_rows(g)
  if site.kind == "dot":
    (lc, rc), (lb, rb) = site.eqn_params["dimension_numbers"]
    x_is_lhs = site.param_arg == 1
    xc, xb = (lc, lb) if x_is_lhs else (rc, rb)
    x_ndim = len(site.act_shape)
    xf = [j for j in range(x_ndim) if j not in xc and j not in xb]
    nb = len(xb)
    out_ndim = len(site.out_shape)
    npf = out_ndim - nb - len(xf)
    if x_is_lhs:
      out_xf = list(range(nb, nb + len(xf)))
      out_pf = list(range(nb + len(xf), out_ndim))
    else:
      out_pf = list(range(nb, nb + npf))
      out_xf = list(range(nb + npf, out_ndim))
    perm_a = [0] + [1 + j for j in xb] + [1 + j for j in xf] + [1 + j for j in xc]
    a = jnp.transpose(act, perm_a)
    B = _size([site.act_shape[j] for j in xb])
    L = _size([site.act_shape[j] for j in xf])
    a = jnp.reshape(a, (n, B, L, -1))
    perm_d = [0] + [1 + j for j in range(nb)] + [1 + j for j in out_xf] + [1 + j for j in out_pf]
    d = jnp.reshape(jnp.transpose(delta, perm_d), (n, B, L, -1))
    return _gram_or_direct(a.astype(d.dtype), d)
  if site.kind == "conv":
    p = site.eqn_params
    dn = p["dimension_numbers"]
    lhs_spec, rhs_spec, out_spec = dn.lhs_spec, dn.rhs_spec, dn.out_spec
    filt = tuple(site.param_shape[j] for j in rhs_spec[2:])
    x = jnp.transpose(act, [0] + [1 + j for j in lhs_spec])      # (n, N, C, *spatial)
    d = jnp.transpose(delta, [0] + [1 + j for j in out_spec])    # (n, N, O, *out_spatial)
    num_pos = _size(d.shape[3:]) * d.shape[1]
    c_in = x.shape[2]
    F = c_in * _size(filt)
    O = d.shape[2]
    gram = num_pos * (F + O) + _size(filt) * F <= F * O  # Gram over positions is cheaper
    if _FORCE_FORM is not None:
      gram = _FORCE_FORM == "gram"
    if all(int(v) == 1 for v in p["lhs_dilation"]):
      return _conv_sq_norms_by_offsets(x.astype(d.dtype), d, filt, p, gram)
    # Transposed (input-dilated) convolutions: patches / per-example kernel gradients.
    if gram:
      patches = jax.vmap(lambda xi: jax.lax.conv_general_dilated_patches(
          xi, filt, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"]))(x)
      a = jnp.moveaxis(jnp.reshape(patches, patches.shape[:3] + (-1,)), 2, 3)  # (n, N, P, F)
      a = jnp.reshape(a, (n, 1, -1, F))
      dd = jnp.reshape(jnp.moveaxis(jnp.reshape(d, d.shape[:3] + (-1,)), 2, 3), (n, 1, -1, O))
      return _gram_or_direct(a.astype(dd.dtype), dd)
    kernel = jnp.zeros(site.param_shape, delta.dtype)
    bind = dict(p)

    def kgrad(xi, di):
      f = lambda k: jax.lax.conv_general_dilated_p.bind(xi.astype(k.dtype), k, **bind)
      _, vjp = jax.vjp(f, kernel)
      return vjp(di)[0]

    return _sq_rows(jax.vmap(kgrad)(act, delta))
  if site.kind == "gather":
    table_rows = site.param_shape[0]
    idx = jnp.reshape(act, (n, -1))
    d = jnp.reshape(delta, (n, idx.shape[1], -1))
    mode = str(site.eqn_params.get("mode", "")).upper()
    if "FILL" in mode:
      valid = (idx >= 0) & (idx < table_rows)
    else:
      idx = jnp.clip(idx, 0, table_rows - 1)
      valid = jnp.ones(idx.shape, bool)
    d = jnp.where(valid[..., None], d, 0)
    same = (idx[:, :, None] == idx[:, None, :])
    gd = jnp.einsum("npr,nqr->npq", d, d)
    return jnp.sum(jnp.where(same, gd, 0), axis=(1, 2))
  raise AssertionError(site.kind)  # pragma: no cover


def _vjp_dtype(f, x):
  return jax.eval_shape(f, x).dtype


def per_example_grad_norms(
    loss_fn: LossFn,
    params: PyTree,
    batch: PyTree,
    *,
    chunk_size: int | None = None,
    method: str = "auto",
) -> jax.Array:
  """Euclidean norm ‖∇ℓ(θ; z_i)‖ of every example's gradient (over all parameter leaves).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    chunk_size: examples processed at once (None: all).
    method: ``"vmap"`` (materialise per-example gradients), ``"ghost"`` (norms from activations and
      output gradients, without per-example gradients; leaves it cannot cover fall back to vmap) or
      ``"auto"`` (ghost when the model can be traced, else vmap). All are exact.

  Returns:
    Array of shape (n,).

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: on a bad ``method``, ``chunk_size`` or batch.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[3.0, 0.0], [0.0, 2.0]]), jnp.array([0.0, 0.0])
    >>> per_example_grad_norms(loss_fn, jnp.array([1.0, 1.0]), (x, y)).round(4).tolist()
    [9.0, 4.0]
  """
  n = _check_loss_fn(loss_fn, params, batch)
  chunk_size = _check_chunk_size(chunk_size)
  _check_method(method)
  return _safe_sqrt(_per_example_sq_norms(loss_fn, params, batch, n, chunk_size, method))


# ----------------------------------------------------------------------------------------------------
# Clipping
# ----------------------------------------------------------------------------------------------------


def clip_factors(norms: ArrayLike, clip_norm: ArrayLike | None) -> jax.Array:
  """Clipping factors ``min(1, C / ‖v_i‖)`` (THEORY §0), 1 where the norm is 0 or C is None/inf.

  Differentiable everywhere without NaN (the division only happens where ``norm > C``).

  Args:
    norms: per-example norms, shape (n,) (any shape works elementwise).
    clip_norm: C > 0, or None / inf for no clipping. May be a traced array.

  Returns:
    Array like ``norms`` with values in (0, 1].

  Raises:
    ValueError: if ``clip_norm`` is not positive.

  Examples:
    >>> import jax.numpy as jnp
    >>> clip_factors(jnp.array([0.0, 0.5, 4.0]), 2.0).tolist()
    [1.0, 1.0, 0.5]
    >>> clip_factors(jnp.array([0.0, 4.0]), None).tolist()
    [1.0, 1.0]
  """
  _check_clip_norm(clip_norm)
  norms = jnp.asarray(norms)
  if clip_norm is None:
    return jnp.ones_like(norms)
  c = jnp.asarray(clip_norm, dtype=norms.dtype)
  over = norms > c
  return jnp.where(over, c / jnp.where(over, norms, 1.0), 1.0)


def clip_per_example(grads: PyTree, clip_norm: ArrayLike | None) -> tuple[PyTree, jax.Array]:
  """Clips every per-example gradient to norm at most C: ``v · min(1, C/‖v‖)``.

  Args:
    grads: pytree whose leaves have a leading axis n (as from :func:`per_example_grads`).
    clip_norm: C > 0, or None / inf for no clipping.

  Returns:
    ``(clipped_grads, norms)``: clipped pytree like ``grads`` and the (n,) unclipped norms.

  Raises:
    ValueError: if ``clip_norm`` is not positive or the leaves disagree on n.

  Examples:
    >>> import jax.numpy as jnp
    >>> clipped, norms = clip_per_example({"w": jnp.array([[3.0, 4.0], [0.3, 0.4]])}, 1.0)
    >>> clipped["w"].round(4).tolist(), norms.round(4).tolist()
    ([[0.6, 0.8], [0.3, 0.4]], [5.0, 0.5])
  """
  _check_clip_norm(clip_norm)
  _checks.check_batch(grads, name="grads")
  norms = _safe_sqrt(_per_example_sq_norms_of(grads))
  factors = clip_factors(norms, clip_norm)
  clipped = jax.tree.map(
      lambda g: g * jnp.reshape(factors, (-1,) + (1,) * (g.ndim - 1)).astype(g.dtype), grads
  )
  return clipped, norms


# ----------------------------------------------------------------------------------------------------
# Inner products and weighted sums (one forward-mode / one backward pass)
# ----------------------------------------------------------------------------------------------------


def per_example_inner(loss_fn: LossFn, params: PyTree, batch: PyTree, direction: PyTree) -> jax.Array:
  """``⟨∇ℓ(θ; z_i), direction⟩`` for every example by one jvp of the vector of per-example losses.

  Per-example gradients are never materialised (THEORY §2a).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    direction: pytree with the structure and leaf shapes of ``params``.

  Returns:
    Array of shape (n,).

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: if ``direction`` does not match ``params`` or the batch leaves disagree on n.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0.0, 0.0])
    >>> per_example_inner(loss_fn, jnp.array([1.0, 1.0]), (x, y), jnp.array([1.0, 2.0])).tolist()
    [1.0, 8.0]
  """
  _check_loss_fn(loss_fn, params, batch)
  _check_like_params("direction", direction, params)
  direction = jax.tree.map(lambda d, p: jnp.asarray(d, dtype=jnp.result_type(p)), direction, params)
  _, tangent = jax.jvp(lambda p: _vmapped_losses(loss_fn, p, batch), (params,), (direction,))
  return tangent


def _weighted_sum_impl(loss_fn: LossFn, params: PyTree, batch: PyTree, weights: jax.Array) -> PyTree:
  weights = jax.lax.stop_gradient(weights)
  return jax.grad(lambda p: jnp.sum(weights * _vmapped_losses(loss_fn, p, batch)))(params)


@functools.partial(jax.jit, static_argnums=(0, 4))
def _chunked_weighted_sum(loss_fn, params, padded_batch, padded_weights, chunk_size):
  chunks = _to_chunks((padded_batch, padded_weights), chunk_size)

  def body(acc, chunk):
    b, w = chunk
    g = _weighted_sum_impl(loss_fn, params, b, w)
    return jax.tree.map(jnp.add, acc, g), None

  zero = jax.tree.map(jnp.zeros_like, params)
  out, _ = jax.lax.scan(body, zero, chunks)
  return out


def _weighted_sum(loss_fn, params, batch, weights, n, chunk_size):
  if chunk_size is None or chunk_size >= n:
    return _weighted_sum_impl(loss_fn, params, batch, weights)
  padded, mask, _ = _pad_batch(batch, n, chunk_size)
  w = jnp.where(mask, jnp.concatenate([weights, jnp.zeros(mask.shape[0] - n, weights.dtype)]), 0)
  return _chunked_weighted_sum(loss_fn, params, padded, w, chunk_size)


def weighted_grad_sum(loss_fn: LossFn, params: PyTree, batch: PyTree, weights: ArrayLike) -> PyTree:
  """``Σ_i w_i ∇ℓ(θ; z_i)`` by one backward pass of the weighted loss sum (weights held constant).

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    weights: shape (n,); no gradient flows through them.

  Returns:
    Pytree like ``params``.

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: if ``weights`` is not of shape (n,).

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[1.0, 0.0], [0.0, 2.0]]), jnp.array([0.0, 0.0])
    >>> weighted_grad_sum(loss_fn, jnp.array([1.0, 1.0]), (x, y), jnp.array([2.0, 0.5])).tolist()
    [2.0, 2.0]
  """
  n = _check_loss_fn(loss_fn, params, batch)
  _check_weights(weights, n)
  dtype = jnp.result_type(*jax.tree.leaves(params)) if jax.tree.leaves(params) else jnp.float32
  return _weighted_sum_impl(loss_fn, params, batch, jnp.asarray(weights, dtype=dtype))


def clipped_grad_sum(
    loss_fn: LossFn,
    params: PyTree,
    batch: PyTree,
    clip_norm: ArrayLike | None,
    *,
    weights: ArrayLike | None = None,
    chunk_size: int | None = None,
    method: str = "auto",
) -> tuple[PyTree, jax.Array]:
  """``Σ_i w_i clip_C(∇ℓ(θ; z_i))`` by the two-pass method, and the unclipped norms.

  Pass 1 computes every per-example gradient norm (``method``); pass 2 is one backward pass of
  ``Σ_i w_i min(1, C/‖∇ℓ_i‖) ℓ_i`` with the factors held constant, which equals the clipped sum exactly.

  Args:
    loss_fn: ``loss_fn(params, example) -> scalar`` for one example.
    params: parameter pytree.
    batch: pytree of arrays with a leading axis of size n.
    clip_norm: C > 0, or None / inf for no clipping.
    weights: optional (n,) example weights (e.g. a batch mask); default all ones.
    chunk_size: examples processed at once (None: all).
    method: how to compute the norms, see :func:`per_example_grad_norms`.

  Returns:
    ``(grad_sum, norms)``: pytree like ``params`` and the (n,) unclipped per-example gradient norms.

  Raises:
    TypeError: if ``loss_fn`` does not return a scalar.
    ValueError: on a non-positive ``clip_norm``, bad ``weights`` shape, ``method`` or ``chunk_size``.

  Examples:
    >>> import jax.numpy as jnp
    >>> loss_fn = lambda w, ex: 0.5 * jnp.sum((ex[0] @ w - ex[1]) ** 2)
    >>> x, y = jnp.array([[3.0, 0.0], [0.0, 0.5]]), jnp.array([0.0, 0.0])
    >>> g, norms = clipped_grad_sum(loss_fn, jnp.array([1.0, 1.0]), (x, y), 1.0)
    >>> g.round(4).tolist(), norms.round(4).tolist()
    ([1.0, 0.25], [9.0, 0.25])
  """
  n = _check_loss_fn(loss_fn, params, batch)
  _check_clip_norm(clip_norm)
  chunk_size = _check_chunk_size(chunk_size)
  _check_method(method)
  if weights is not None:
    _check_weights(weights, n)
  norms = _safe_sqrt(_per_example_sq_norms(loss_fn, params, batch, n, chunk_size, method))
  factors = clip_factors(norms, clip_norm)
  w = factors if weights is None else factors * jnp.asarray(weights, dtype=factors.dtype)
  total = _weighted_sum(loss_fn, params, batch, jax.lax.stop_gradient(w), n, chunk_size)
  return total, norms
