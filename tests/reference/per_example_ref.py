"""Float64 NumPy references for per-example gradients (loops over examples, analytic gradients).

Two models, both with softmax cross-entropy on integer labels:

- multinomial logistic regression: params {"w": (d, k), "b": (k,)}, logits = x @ w + b;
- a 1-hidden-layer tanh MLP: params {"w1": (d, h), "b1": (h,), "w2": (h, k), "b2": (k,)},
  logits = tanh(x @ w1 + b1) @ w2 + b2.

Gradients are written out by hand (chain rule), independent of JAX autodiff.
"""

from __future__ import annotations

import numpy as np


def _softmax(z):
  z = z - np.max(z)
  e = np.exp(z)
  return e / np.sum(e)


def logreg_loss(params, x, y):
  z = x @ params["w"] + params["b"]
  zmax = np.max(z)
  return float(zmax + np.log(np.sum(np.exp(z - zmax))) - z[y])


def logreg_grad(params, x, y):
  z = x @ params["w"] + params["b"]
  d = _softmax(z)
  d[y] -= 1.0
  return {"w": np.outer(x, d), "b": d}


def mlp_loss(params, x, y):
  h = np.tanh(x @ params["w1"] + params["b1"])
  z = h @ params["w2"] + params["b2"]
  zmax = np.max(z)
  return float(zmax + np.log(np.sum(np.exp(z - zmax))) - z[y])


def mlp_grad(params, x, y):
  h = np.tanh(x @ params["w1"] + params["b1"])
  z = h @ params["w2"] + params["b2"]
  d = _softmax(z)
  d[y] -= 1.0
  dh = params["w2"] @ d
  dpre = dh * (1.0 - h**2)
  return {"w1": np.outer(x, dpre), "b1": dpre, "w2": np.outer(h, d), "b2": d}


MODELS = {"logreg": (logreg_loss, logreg_grad), "mlp": (mlp_loss, mlp_grad)}


def per_example(model, params, xs, ys):
  """Returns (losses (n,), grads: dict of (n, ...) arrays) by a loop over examples."""
  loss, grad = MODELS[model]
  params = {k: np.asarray(v, dtype=np.float64) for k, v in params.items()}
  xs = np.asarray(xs, dtype=np.float64)
  losses, grads = [], []
  for x, y in zip(xs, np.asarray(ys)):
    losses.append(loss(params, x, int(y)))
    grads.append(grad(params, x, int(y)))
  stacked = {k: np.stack([g[k] for g in grads]) for k in params}
  return np.array(losses), stacked


def flat(grads):
  """(n, P) matrix of flattened per-example gradients (keys in sorted order)."""
  return np.concatenate([grads[k].reshape(grads[k].shape[0], -1) for k in sorted(grads)], axis=1)


def norms(grads):
  return np.sqrt(np.sum(flat(grads) ** 2, axis=1))


def clip(grads, clip_norm):
  """(clipped grads, unclipped norms) with clip_C(v) = v * min(1, C / ||v||), factor 1 at ||v|| = 0."""
  nrm = norms(grads)
  fac = np.ones_like(nrm)
  for i, v in enumerate(nrm):
    if clip_norm is not None and v > clip_norm:
      fac[i] = clip_norm / v
  return {k: g * fac.reshape((-1,) + (1,) * (g.ndim - 1)) for k, g in grads.items()}, nrm


def inner(grads, direction):
  d = np.concatenate([np.asarray(direction[k], np.float64).ravel() for k in sorted(direction)])
  return flat(grads) @ d


def weighted_sum(grads, weights):
  w = np.asarray(weights, np.float64)
  return {k: np.tensordot(w, g, axes=(0, 0)) for k, g in grads.items()}
