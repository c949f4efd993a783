"""The ghost-norm rules: per-example squared gradient norms of one parameter site, one rule per kind.

A *site* (found by :mod:`unlearn_jax.per_example.ghost`) is one use of a parameter leaf whose gradient
factors through the site's input activations ``a_i`` and output gradients ``δ_i``:

| kind | layer | per-example squared norm |
|---|---|---|
| ``"dot"`` | Dense, attention, one-hot embeddings (``dot_general``) | one position: ``‖a_i‖²‖δ_i‖²``; several: \
Gram ``Σ_{p,q}⟨a_ip, a_iq⟩⟨δ_ip, δ_iq⟩`` or the materialised gradient, the cheaper |
| ``"conv"`` | Conv (``conv_general_dilated``) | per kernel offset: input slices times output gradients |
| ``"gather"`` | Embedding lookups (``gather`` of table rows) | ``Σ_{p,q: idx_p = idx_q} ⟨δ_p, δ_q⟩`` |
| ``"add"`` | biases | ``‖Σ_p δ_ip‖²`` (through the view chain from the leaf) |

:data:`RULES` maps each kind to its rule ``rule(site, leaf, activation, delta) -> (n,)``.
"""

from __future__ import annotations

import math

import jax
import jax.numpy as jnp
import numpy as np

# Test hook: None chooses the cheaper of the Gram and direct forms; "gram" / "direct": forced.
FORCE_FORM: str | None = None


def size(shape) -> int:
  return int(math.prod(shape))


def bind(eqn, invals):
  params = eqn.primitive.get_bind_params(eqn.params)
  subfuns = ()
  if isinstance(params, tuple):  # older JAX: (subfuns, params)
    subfuns, params = params
  ctx = getattr(getattr(eqn, "ctx", None), "manager", None)
  if ctx is None:
    return eqn.primitive.bind(*subfuns, *invals, **params)
  with ctx:
    return eqn.primitive.bind(*subfuns, *invals, **params)


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
      x = bind(eqn, [x])
    return x

  return f


def sq_rows(x: jax.Array) -> jax.Array:
  return jnp.sum(jnp.reshape(jnp.square(x), (x.shape[0], -1)), axis=1)


def _gram_or_direct(a: jax.Array, d: jax.Array, form: str | None = None) -> jax.Array:
  """Σ_b ‖Σ_l a[n,b,l,:] ⊗ d[n,b,l,:]‖² per n; a (n,B,L,C), d (n,B,L,R): Gram form or direct."""
  _, _, L, C = a.shape
  R = d.shape[-1]
  if L == 1:
    return jnp.sum(jnp.sum(a[:, :, 0] ** 2, -1) * jnp.sum(d[:, :, 0] ** 2, -1), axis=1)
  form = form or FORCE_FORM
  if (form == "gram") or (form is None and L * L * (C + R) <= L * C * R):
    ga = jnp.einsum("nblc,nbmc->nblm", a, a)
    gd = jnp.einsum("nblr,nbmr->nblm", d, d)
    return jnp.sum(ga * gd, axis=(1, 2, 3))
  g = jnp.einsum("nblc,nblr->nbcr", a, d)
  return sq_rows(g)


def _conv_offset_starts(filt, p) -> np.ndarray:
  """(K, nd) where each kernel offset k (row-major over ``filt``) starts reading the padded input: k·r."""
  rdil = np.asarray([int(v) for v in p["rhs_dilation"]], np.int32)
  return np.reshape(np.asarray(list(np.ndindex(*filt)), np.int32), (-1, len(filt))) * rdil


def _offset_reads(x, out_spatial, p):
  """The zero-padded input (n, N, C, *padded), the window an offset reads in it and the strides."""
  strides = tuple(int(v) for v in p["window_strides"])
  zero = jnp.zeros((), x.dtype)
  xp = jax.lax.pad(x, zero, [(0, 0, 0)] * 3 + [(int(lo), int(hi), 0) for lo, hi in p["padding"]])
  window = [(int(m) - 1) * s + 1 for m, s in zip(out_spatial, strides)]
  return xp, window, strides


def _conv_offset_scan(x, d, filt, p, body, init):
  """Folds ``body(carry, slice, δ)`` over the kernel offsets, one input slice alive at a time.

  ``x`` (n, N, C, *spatial), ``d`` (n, N, *out_spatial, O); the slice is the (n, N, C, P) input that an
  offset reads and δ the matching (n, N, P, O) — the operand layouts of a batched matmul, so that XLA
  copies neither (a NHWC δ is used as it is; the input is transposed once, outside the loop). A
  ``lax.scan`` (its body has no convolution, so XLA:CPU runs it at full speed) rather than a Python
  loop, which XLA schedules with every slice alive.
  """
  n, nb, c = x.shape[:3]
  xp, window, strides = _offset_reads(x, d.shape[2:-1], p)
  dl = jnp.reshape(d, (n, nb, -1, d.shape[-1]))  # (n, N, P, O)

  def step(carry, start):
    zero_i = jnp.zeros((), start.dtype)
    sl = jax.lax.dynamic_slice(xp, [zero_i] * 3 + list(start), [n, nb, c, *window])
    sl = sl[(slice(None),) * 3 + tuple(slice(None, None, s) for s in strides)]
    return body(carry, jnp.reshape(sl, (n, nb, c, -1)), dl)

  return jax.lax.scan(step, init, jnp.asarray(_conv_offset_starts(filt, p)))


def _conv_kernel_grads(x, d, filt, p) -> jax.Array:
  """Per-example kernel gradients of a convolution with lhs_dilation 1: (n, K, C, O), K kernel offsets.

  ``x`` (n, N, C, *spatial), ``d`` (n, N, *out_spatial, O): the gradient at offset k is S_k δ, one
  small batched matmul per offset (S_k the input slice that offset reads).
  """
  _, grads = _conv_offset_scan(x, d, filt, p, lambda c, s, dl: (c, jnp.einsum("nbcp,nbpo->nco", s, dl)), None)
  return jnp.moveaxis(grads, 0, 1)


def _conv_sq_norms_by_offsets(x, d, filt, p, gram: bool) -> jax.Array:
  """Per-example squared kernel-gradient norms of a convolution with lhs_dilation 1.

  ``x`` (n, N, C, *spatial), ``d`` (n, N, *out_spatial, O). Direct form: the squared norms of
  :func:`_conv_kernel_grads`, summed offset by offset; Gram form: ``Σ_{p,q} ⟨a_p, a_q⟩⟨δ_p, δ_q⟩`` with
  the patches a = [S_k]_k.
  """
  n, nb, o = d.shape[0], d.shape[1], d.shape[-1]
  if gram:
    _, slices = _conv_offset_scan(x, d, filt, p, lambda c, sl, _: (c, sl), None)  # (K, n, N, C, P)
    a = jnp.reshape(jnp.moveaxis(slices, 0, 2), (n, nb, -1, slices.shape[-1]))  # (n, N, K·C, P), offset-major
    a = jnp.moveaxis(a, 2, 3)  # (n, N, P, F)
    return _gram_or_direct(jnp.reshape(a, (n, 1, -1, a.shape[-1])), jnp.reshape(d, (n, 1, -1, o)), form="gram")

  def add(acc, s, dl):
    return acc + sq_rows(jnp.einsum("nbcp,nbpo->nco", s, dl)), None

  sq, _ = _conv_offset_scan(x, d, filt, p, add, jnp.zeros((n,), d.dtype))
  return sq


def _add_rule(site, leaf, act, delta) -> jax.Array:
  """A bias: the per-example gradient is δ summed over the broadcast axes (through the view chain)."""
  del act
  g = _unbroadcast(delta, site.param_shape)
  if site.chain:
    f = _chain_fn(site.chain)
    zero = jnp.zeros(np.shape(leaf), jnp.result_type(leaf))
    _, vjp = jax.vjp(f, zero)
    g = jax.vmap(lambda c: vjp(c.astype(_vjp_dtype(f, zero)))[0])(g)
  return sq_rows(g)


def _dot_rule(site, leaf, act, delta) -> jax.Array:
  """``dot_general``: activations and output gradients laid out as (n, batch, positions, features)."""
  del leaf
  n = delta.shape[0]
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
  B = size([site.act_shape[j] for j in xb])
  L = size([site.act_shape[j] for j in xf])
  a = jnp.reshape(a, (n, B, L, -1))
  perm_d = [0] + [1 + j for j in range(nb)] + [1 + j for j in out_xf] + [1 + j for j in out_pf]
  d = jnp.reshape(jnp.transpose(delta, perm_d), (n, B, L, -1))
  return _gram_or_direct(a.astype(d.dtype), d)


def _conv_layout(site, act, delta):
  """The kernel's spatial shape, the input (n, N, C, *spatial) and output gradients (n, N, *out, O) of a
  convolution site (δ channels last: for a NHWC convolution no copy), and whether the Gram form over
  positions is the cheaper."""
  p = site.eqn_params
  dn = p["dimension_numbers"]
  filt = tuple(site.param_shape[j] for j in dn.rhs_spec[2:])
  x = jnp.transpose(act, [0] + [1 + j for j in dn.lhs_spec])  # (n, N, C, *spatial)
  out = dn.out_spec
  d = jnp.transpose(delta, [0, 1 + out[0]] + [1 + j for j in out[2:]] + [1 + out[1]])  # (n, N, *out_sp, O)
  num_pos = size(d.shape[2:-1]) * d.shape[1]
  F = x.shape[2] * size(filt)
  gram = num_pos * (F + d.shape[-1]) + size(filt) * F <= F * d.shape[-1]  # Gram over positions is cheaper
  if FORCE_FORM is not None:
    gram = FORCE_FORM == "gram"
  return filt, x.astype(d.dtype), d, gram


def _conv_rule(site, leaf, act, delta) -> jax.Array:
  """``conv_general_dilated`` with the kernel as the parameter: per kernel offset (or, for transposed
  convolutions, patches / per-example kernel gradients)."""
  del leaf
  n = delta.shape[0]
  p = site.eqn_params
  filt, x, d, gram = _conv_layout(site, act, delta)
  if all(int(v) == 1 for v in p["lhs_dilation"]):
    return _conv_sq_norms_by_offsets(x, d, filt, p, gram)
  # Transposed (input-dilated) convolutions: patches / per-example kernel gradients.
  if gram:
    c_out = d.shape[-1]
    F = x.shape[2] * size(filt)
    patches = jax.vmap(
      lambda xi: jax.lax.conv_general_dilated_patches(
        xi, filt, p["window_strides"], p["padding"], p["lhs_dilation"], p["rhs_dilation"]
      )
    )(x)
    a = jnp.moveaxis(jnp.reshape(patches, patches.shape[:3] + (-1,)), 2, 3)  # (n, N, P, F)
    a = jnp.reshape(a, (n, 1, -1, F))
    dd = jnp.reshape(d, (n, 1, -1, c_out))
    return _gram_or_direct(a.astype(dd.dtype), dd)
  kernel = jnp.zeros(site.param_shape, delta.dtype)
  bind_params = dict(p)

  def kgrad(xi, di):
    f = lambda k: jax.lax.conv_general_dilated_p.bind(xi.astype(k.dtype), k, **bind_params)
    _, vjp = jax.vjp(f, kernel)
    return vjp(di)[0]

  return sq_rows(jax.vmap(kgrad)(act, delta))


def conv_site_grads(site, act, delta) -> tuple[jax.Array, jax.Array] | None:
  """Per-example squared norms and per-example kernel gradients (n, *kernel view shape) of a convolution
  site, where the direct form computes those gradients anyway and they are no larger than the site's
  output gradients (so keeping them for the book-keeping costs no more memory than the ghost pass holds);
  None elsewhere."""
  p = site.eqn_params
  if site.kind != "conv" or any(int(v) != 1 for v in p["lhs_dilation"]):
    return None
  if size(site.param_shape) > max(size(site.out_shape), size(site.act_shape)):
    return None
  filt, x, d, gram = _conv_layout(site, act, delta)
  if gram:
    return None
  n = d.shape[0]
  grads = _conv_kernel_grads(x, d, filt, p)  # (n, offsets, C, O)
  sq = sq_rows(grads)
  grads = jnp.reshape(grads, (n,) + filt + grads.shape[2:])  # (n, *filt, C, O)
  spec = p["dimension_numbers"].rhs_spec  # view axis of (O, I, *spatial)
  nd = len(filt)
  source = {spec[0]: nd + 1, spec[1]: nd}
  source.update({spec[2 + j]: j for j in range(nd)})
  return sq, jnp.transpose(grads, [0] + [1 + source[axis] for axis in range(nd + 2)])


def _gather_rule(site, leaf, act, delta) -> jax.Array:
  """``gather`` of table rows: examples that read one row several times add those δ's."""
  del leaf
  n = delta.shape[0]
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
  same = idx[:, :, None] == idx[:, None, :]
  gd = jnp.einsum("npr,nqr->npq", d, d)
  return jnp.sum(jnp.where(same, gd, 0), axis=(1, 2))


RULES = {"add": _add_rule, "dot": _dot_rule, "conv": _conv_rule, "gather": _gather_rule}
"""Site kind -> ``rule(site, leaf, activation, delta) -> (n,)`` per-example squared norms of that leaf."""


def site_sq_norms(site, leaf, act, delta) -> jax.Array:
  """Per-example squared norms of ``leaf``'s gradient at ``site`` (the rule of its kind)."""
  return RULES[site.kind](site, leaf, act, delta)


def _vjp_dtype(f, x):
  return jax.eval_shape(f, x).dtype
