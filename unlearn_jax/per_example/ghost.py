"""The ghost-norm tracer: per-example squared gradient norms without per-example gradients.

The batched loss is traced to a jaxpr (:func:`ghost_plan`); every parameter leaf used once as one
operand of a ``dot_general``, a ``conv_general_dilated``, a ``gather`` of table rows or an ``add`` (a
bias) — through any chain of reshapes, transposes and casts — is a *site*. One backward pass to zero
"taps" added to the sites' outputs gives each example's output gradients δ_i, the site's input
activations a_i are recorded on the way (:func:`ghost_apply`), and each leaf's per-example squared norm
is computed from them by the rule of its kind (:mod:`unlearn_jax.per_example.ghost_rules`). Leaves used
in any other way fall back to ``vmap(grad)`` for those leaves alone; exact either way.
"""

from __future__ import annotations

from typing import Any, NamedTuple

import jax
import jax.extend.core
import jax.numpy as jnp
import numpy as np

from unlearn_jax.per_example import pooling
from unlearn_jax.per_example.ghost_rules import bind, conv_site_grads, site_sq_norms, size, sq_rows


class GhostUnsupported(Exception):
  """The loss function could not be traced for the ghost evaluator."""


_VIEW_PRIMS = frozenset(
  {"reshape", "transpose", "convert_element_type", "squeeze", "expand_dims", "broadcast_in_dim", "copy", "copy_p"}
)


_INLINE_PRIMS = frozenset({"jit", "pjit", "closed_call", "core_call"})


class _Tag(NamedTuple):
  leaf: int
  chain: tuple  # view equations from the leaf to this value, in order
  iso: bool  # True when the chain preserves the Euclidean norm (no real broadcast)


class _Site(NamedTuple):
  path: tuple  # equation index path (through inlined jit calls)
  kind: str  # "dot", "conv", "gather", "add"
  leaf: int
  param_arg: int  # which operand of the equation is the parameter view
  eqn_params: Any  # the equation's params (dimension numbers etc.)
  chain: tuple
  param_shape: tuple  # shape of the parameter view operand
  out_shape: tuple  # per-example output shape
  act_shape: tuple  # per-example shape of the other operand (activation / indices)
  eqn: Any = None  # the equation itself (re-applied with other parameter values by the book-keeping)


class _Plan(NamedTuple):
  closed: Any  # ClosedJaxpr of the per-example loss
  sites: tuple  # _Site per covered leaf
  covered: tuple  # leaf indices covered by a site (or unused: zero gradient)
  fallback: tuple  # leaf indices needing vmap
  site_paths: frozenset
  prefixes: frozenset  # path prefixes that lead to a site (inline those calls)


def _is_var(v) -> bool:
  return not isinstance(v, jax.extend.core.Literal)


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
      iso = t.iso and size(eqn.outvars[0].aval.shape) == size(eqn.invars[0].aval.shape)
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


def _dot_site(eqn, k, t, shapes, out_shape):
  return "dot" if t.iso and len(shapes) == 2 else None


def _conv_site(eqn, k, t, shapes, out_shape):
  grouped = eqn.params["feature_group_count"] != 1 or eqn.params["batch_group_count"] != 1
  return "conv" if t.iso and k == 1 and not grouped else None


def _gather_site(eqn, k, t, shapes, out_shape):
  if not (t.iso and k == 0 and len(shapes[0]) == 2):
    return None
  dn = eqn.params["dimension_numbers"]
  rows = (
    tuple(dn.collapsed_slice_dims) == (0,)
    and tuple(dn.start_index_map) == (0,)
    and tuple(dn.offset_dims) == (len(out_shape) - 1,)
    and not tuple(getattr(dn, "operand_batching_dims", ()))
    and tuple(eqn.params["slice_sizes"]) == (1, shapes[0][1])
    and shapes[1][-1:] == (1,)
  )
  return "gather" if rows else None


def _add_site(eqn, k, t, shapes, out_shape):
  return "add" if len(shapes) == 2 else None


# Primitive -> matcher (eqn, parameter operand index, tag, operand shapes, output shape) -> site kind or None.
# Each kind has its norm rule in ghost_rules.RULES.
_SITE_MATCHERS = {
  "dot_general": _dot_site,
  "conv_general_dilated": _conv_site,
  "gather": _gather_site,
  "add": _add_site,
}


def _site_of(eqn, tin, here):
  """Returns a _Site when ``eqn`` uses exactly one parameter view in a covered way, else None."""
  match = _SITE_MATCHERS.get(eqn.primitive.name)
  tagged = [k for k, t in enumerate(tin) if t is not None]
  if match is None or len(tagged) != 1 or len(eqn.outvars) != 1:
    return None
  if not jnp.issubdtype(eqn.outvars[0].aval.dtype, jnp.floating):
    return None
  k = tagged[0]
  t = tin[k]
  shapes = [tuple(v.aval.shape) for v in eqn.invars]
  out_shape = tuple(eqn.outvars[0].aval.shape)
  kind = match(eqn, k, t, shapes, out_shape)
  if kind is None:
    return None
  return _Site(
    here,
    kind,
    t.leaf,
    k,
    dict(eqn.params),
    t.chain,
    shapes[k],
    out_shape,
    shapes[1 - k] if len(shapes) == 2 else (),
    eqn,
  )


def ghost_plan(loss_fn, params, batch) -> _Plan:
  leaves = jax.tree.leaves(params)
  example = jax.tree.map(lambda x: jax.ShapeDtypeStruct(np.shape(x)[1:], jnp.result_type(x)), batch)
  try:
    closed = jax.make_jaxpr(loss_fn)(params, example)
  except Exception as e:  # noqa: BLE001 - any tracing failure means "not traceable this way"
    raise GhostUnsupported(f"{type(e).__name__}: {e}") from e
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
      fast = pooling.fast_window_max(eqn, invals) if eqn.primitive.name == "reduce_window_max" else None
      outs = bind(eqn, invals) if fast is None else fast
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


def _site_by_path(plan, path):
  for s in plan.sites:
    if s.path == path:
      return s
  raise KeyError(path)  # pragma: no cover


class GhostRecord(NamedTuple):
  """What one ghost pass over a batch holds: enough for the norms, the clipped sum and the inner products.

  Attributes:
    losses: (n,) per-example losses.
    sq_norms: (n,) per-example squared gradient norms (every leaf).
    acts: site path -> (n, ...) the site's input activations (absent for biases).
    deltas: site path -> (n, ...) the per-example gradients of the site's output.
    fallback_grads: the per-example gradients (n, ...) of the leaves no site covers, in the order of
      ``plan.fallback``.
    site_grads: site path -> (n, *parameter view) per-example gradients that the norm rule computed
      anyway (small convolution kernels; ``keep_grads`` only).
  """

  losses: jax.Array
  sq_norms: jax.Array
  acts: dict
  deltas: dict
  fallback_grads: tuple
  site_grads: dict


def ghost_record(plan: _Plan, loss_fn, params, batch, *, keep_grads: bool = False) -> GhostRecord:
  """One forward pass and one backward pass to the sites' outputs; the per-example norms from them.

  With ``keep_grads`` the per-example gradients that a norm rule materialises anyway (convolution
  kernels no larger than the site's output) are kept in ``site_grads`` for the book-keeping.
  """
  leaves, treedef = jax.tree.flatten(params)
  batch_leaves = jax.tree.leaves(batch)
  n = batch_leaves[0].shape[0]
  closed = plan.closed
  num_consts = len(closed.jaxpr.invars) - len(leaves) - len(batch_leaves)
  if num_consts != 0:  # pragma: no cover - make_jaxpr puts the flattened args as invars
    raise GhostUnsupported("unexpected jaxpr signature")
  dtype = jnp.result_type(*leaves)

  def one(taps, ex_leaves):
    acts = {}
    out = _eval_with_taps(closed.jaxpr, closed.consts, list(leaves) + list(ex_leaves), (), plan, taps, acts)
    return out[0], acts

  def total(taps):
    losses, acts = jax.vmap(one)(taps, batch_leaves)
    return jnp.sum(losses), (losses, acts)

  zero_taps = {s.path: jnp.zeros((n,) + s.out_shape, dtype=dtype) for s in plan.sites}
  deltas, (losses, acts) = jax.grad(total, has_aux=True)(zero_taps)
  sq = jnp.zeros((n,), dtype=dtype)
  site_grads = {}
  for s in plan.sites:
    kept = conv_site_grads(s, acts.get(s.path), deltas[s.path]) if keep_grads else None
    if kept is None:
      sq = sq + site_sq_norms(s, leaves[s.leaf], acts.get(s.path), deltas[s.path]).astype(dtype)
    else:
      sq, site_grads[s.path] = sq + kept[0].astype(dtype), kept[1]
  fallback_grads = ()
  if plan.fallback:
    fb = plan.fallback

    def loss_fb(sub, ex):
      full = list(leaves)
      for j, v in zip(fb, sub):
        full[j] = v
      return loss_fn(jax.tree.unflatten(treedef, full), ex)

    sub = [leaves[j] for j in fb]
    fallback_grads = tuple(jax.vmap(jax.grad(loss_fb), in_axes=(None, 0))(sub, batch))
    sq = sq + sum(sq_rows(x) for x in fallback_grads).astype(dtype)
  return GhostRecord(losses, sq, acts, deltas, fallback_grads, site_grads)


def ghost_apply(plan: _Plan, loss_fn, params, batch) -> jax.Array:
  """Per-example squared norms (n,) for one batch (chunk), following ``plan``."""
  return ghost_record(plan, loss_fn, params, batch).sq_norms
