"""Figures of the unlearning study; matplotlib is an optional extra (``pip install .[plots]``).

Every function takes plain arrays (NumPy or JAX), draws one panel with matplotlib's object API (no global
backend is set, no pyplot state is kept) and returns the matplotlib ``Figure``, to adapt or save as you
like. Given a ``path`` it also writes the figure there as PNG (atomically, with fixed metadata: equal
inputs give equal bytes); given ``ax=`` it draws into that axes of your own figure instead of a new one.
Without matplotlib the module still imports, and drawing raises an ``ImportError`` that says how to
install it.
"""

from __future__ import annotations

import math
import os
import pathlib
from collections.abc import Mapping, Sequence
from typing import Any

import numpy as np
from jax.typing import ArrayLike

from unlearn_jax import _atomic

try:  # the optional extra; figures are drawn on Figure objects, so no global backend is touched
  from matplotlib.figure import Figure
except ImportError:  # pragma: no cover - exercised by monkeypatching in the tests
  Figure = None

__all__ = [
  "require_matplotlib",
  "privacy_loss_histogram",
  "certified_vs_worst_case",
  "empirical_steps_by_privacy_loss",
  "loss_barrier_curves",
  "correlation_heatmap",
  "membership_vs_certified",
  "against_setting",
  "accuracy_against_steps",
]


def require_matplotlib() -> type:
  """Returns matplotlib's ``Figure`` class, or raises ImportError saying how to install matplotlib."""
  if Figure is None:
    raise ImportError(
      "unlearn_jax.plots needs matplotlib, an optional extra: "
      "pip install 'unlearn_jax[plots]' (or pip install matplotlib)"
    )
  return Figure


def _vector(name: str, value: ArrayLike) -> np.ndarray:
  arr = np.asarray(value, dtype=float)
  if arr.ndim != 1 or arr.size == 0:
    raise ValueError(f"{name} must be a non-empty 1-D array, got shape {arr.shape}")
  return arr


def _log_x(ax: Any, values: np.ndarray, label: str) -> None:
  """A log x axis when some value is positive; otherwise (every privacy loss 0, e.g. a clip norm of
  1e-30) a linear one, said in the label: a log axis with nothing on it cannot be drawn."""
  if np.any(np.asarray(values, float) > 0):
    ax.set_xscale("log")
    ax.set_xlabel(label + " (log scale)")
  else:
    ax.set_xlabel(label + " (all 0: linear scale)")


def _panel(ax: Any, figsize: tuple[float, float]) -> tuple[Any, Any]:
  """(figure, axes): a new figure with one axes, or the figure of the caller's ``ax``."""
  if ax is None:
    fig = require_matplotlib()(figsize=figsize)
    return fig, fig.subplots()
  require_matplotlib()
  if not hasattr(ax, "figure") or not hasattr(ax, "scatter"):
    raise TypeError(f"ax must be a matplotlib Axes, got {type(ax).__name__}")
  return ax.figure, ax


def _finish(fig: Any, path: str | os.PathLike | None) -> Any:
  if path is not None:
    _save(fig, path)
  return fig


def _save(fig: Any, path: str | os.PathLike) -> pathlib.Path:
  path = pathlib.Path(path)
  if path.suffix.lower() != ".png":
    raise ValueError(f"path must end in .png, got {str(path)!r}")
  path.parent.mkdir(parents=True, exist_ok=True)
  fig.tight_layout()
  # Fixed metadata: the same inputs give the same bytes (no creation date, no version string).
  return _atomic.replace_into(path, lambda tmp: fig.savefig(tmp, format="png", dpi=110, metadata={"Software": None}))


def privacy_loss_histogram(
  privacy_loss: ArrayLike,
  path: str | os.PathLike | None = None,
  *,
  ax: Any = None,
  order: float | None = None,
  num_bins: int = 40,
) -> Any:
  """Histogram of the per-example privacy losses on log-spaced bins (log x axis).

  Zero losses cannot sit on a log axis: they are counted in the title.

  Args:
    privacy_loss: (n,) non-negative per-example P(x, α).
    path: output ``.png`` (optional: the figure is returned either way).
    ax: a matplotlib Axes to draw into (default: a new figure).
    order: the order α of the losses (for the axis label).
    num_bins: number of log-spaced bins.

  Returns:
    The matplotlib ``Figure``.

  Examples:
    >>> import tempfile, numpy as np
    >>> path = tempfile.mkdtemp() + "/h.png"
    >>> fig = privacy_loss_histogram(np.geomspace(0.1, 10, 50), path, order=8.0)
    >>> type(fig).__name__, os.path.exists(path)
    ('Figure', True)
  """
  p = _vector("privacy_loss", privacy_loss)
  if np.any(~np.isfinite(p)) or np.any(p < 0):
    raise ValueError("privacy_loss must be finite and non-negative")
  positive = p[p > 0]
  fig, ax = _panel(ax, (6, 4))
  if positive.size:
    lo, hi = positive.min(), positive.max()
    if hi <= lo:
      hi = lo * 1.01
    bins = np.geomspace(lo, hi, num_bins + 1)
    ax.hist(positive, bins=bins, color="tab:blue", edgecolor="white", linewidth=0.4)
    ax.axvline(np.median(positive), color="k", linestyle="--", linewidth=1, label=f"median {np.median(positive):.3g}")
    ax.legend()
  _log_x(ax, positive, f"privacy loss P(x, {order:g})" if order is not None else "privacy loss P(x, α)")
  ax.set_ylabel("number of training examples")
  zeros = int(np.sum(p == 0))
  title = f"Per-example privacy loss, n = {p.size}"
  if zeros:
    title += f" ({zeros} zero, not shown)"
  if positive.size:
    title += f"\nmax/min = {positive.max() / positive.min():.3g}"
  ax.set_title(title)
  return _finish(fig, path)


def certified_vs_worst_case(
  privacy_loss: ArrayLike,
  certified_steps: ArrayLike,
  worst_case_steps: float,
  path: str | os.PathLike | None = None,
  *,
  ax: Any = None,
  label: str = "",
  retrain_steps: float | None = None,
) -> Any:
  """Per-example certified steps to unlearn against privacy loss, with the worst-case K as a line.

  Args:
    privacy_loss: (n,) P(x, 4α) per example (x axis, log scale).
    certified_steps: (n,) certified k*(x) (inf where no k certifies; drawn at the top edge).
    worst_case_steps: the worst-case baseline's K for removing one example (one number for all).
    path: output ``.png`` (optional: the figure is returned either way).
    ax: a matplotlib Axes to draw into (default: a new figure).
    label: a note on the constants (e.g. "assumed C_LSI = 0.02"), shown in the title.
    retrain_steps: the steps of retraining from scratch (the training run's length), a dashed line: a
      certificate above it costs more than retraining.

  Returns:
    The matplotlib ``Figure``.

  Examples:
    >>> import numpy as np
    >>> p = np.geomspace(0.1, 10, 30)
    >>> fig = certified_vs_worst_case(p, np.ceil(10 * np.log1p(p)), 80.0, retrain_steps=20)
    >>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()][-1]
    'retraining from scratch: 20 steps (10% of certificates cost more)'
  """
  p = _vector("privacy_loss", privacy_loss)
  k = _vector("certified_steps", certified_steps)
  if p.shape != k.shape:
    raise ValueError(f"privacy_loss and certified_steps must have the same shape, got {p.shape} and {k.shape}")
  fig, ax = _panel(ax, (6, 4))
  finite = np.isfinite(k)
  below = float(np.mean(k[finite] < worst_case_steps)) if finite.any() else 0.0
  xs = np.where(p > 0, p, np.nan) if np.any(p > 0) else p
  ax.scatter(xs[finite], k[finite], s=6, alpha=0.6, label="per-instance certified k*(x)")
  top = np.nanmax(np.where(finite, k, np.nan)) if finite.any() else 1.0
  if (~finite).any():
    ax.scatter(
      xs[~finite],
      np.full((~finite).sum(), top * 1.05),
      marker="^",
      color="tab:red",
      s=10,
      label="no finite certificate",
    )
  if math.isfinite(worst_case_steps):
    ax.axhline(
      worst_case_steps, color="tab:orange", linewidth=2, label=f"worst case (Chien et al.) K = {worst_case_steps:.0f}"
    )
  if retrain_steps is not None:
    above = float(np.mean(~finite | (k > retrain_steps)))
    ax.axhline(
      retrain_steps,
      color="k",
      linestyle="--",
      linewidth=1.2,
      label=f"retraining from scratch: {retrain_steps:g} steps ({100 * above:.0f}% of certificates cost more)",
    )
  shown = [v for v in (*k[finite], worst_case_steps, retrain_steps or 0) if v is not None and 0 < v < math.inf]
  if shown and max(shown) > 10 * min(shown):  # certificates, K and the training length differ by orders
    ax.set_yscale("log")
  _log_x(ax, p, "privacy loss P(x, 4α)")
  ax.set_ylabel("steps to unlearn one example" + (" (log scale)" if ax.get_yscale() == "log" else ""))
  title = f"Certified per-instance vs worst-case steps: {100 * below:.0f}% of examples below K"
  if label:
    title += "\n" + label
  ax.set_title(title, fontsize=9)
  ax.legend(fontsize=7)
  return _finish(fig, path)


def empirical_steps_by_privacy_loss(
  group_privacy_loss: ArrayLike,
  steps: Mapping[str, ArrayLike],
  path: str | os.PathLike | None = None,
  *,
  ax: Any = None,
  group_labels: Sequence[str] | None = None,
  grid_end: float | None = None,
) -> Any:
  """Empirical steps to unlearn of forget sets against their privacy loss, one line per method.

  Each method's sets are joined in the order of their privacy loss; a set not unlearned within the grid
  is drawn above ``grid_end`` with an open triangle. Sets are numbered at their points (1, 2, ... in the
  order given) and named in a key beside the axes, so long names never overlap.

  Args:
    group_privacy_loss: (G,) mean privacy loss of each forget set (x axis, log scale).
    steps: method -> (G,) empirical steps to unlearn of each set (inf: not unlearned within the grid).
    path: output ``.png`` (optional: the figure is returned either way).
    ax: a matplotlib Axes to draw into (default: a new figure).
    group_labels: (G,) names of the forget sets, for the key.
    grid_end: last step of the recorded grid (a dotted line).

  Returns:
    The matplotlib ``Figure``.

  Examples:
    >>> import numpy as np
    >>> fig = empirical_steps_by_privacy_loss([0.5, 2.0, 9.0], {"sgld": [0, 100, np.inf]}, grid_end=800,
    ...                                       group_labels=["bottom", "random", "top"])
    >>> [len(line.get_xdata()) for line in fig.axes[0].get_lines() if line.get_label() == "sgld"]
    [3]
  """
  x = _vector("group_privacy_loss", group_privacy_loss)
  if not steps:
    raise ValueError("steps must map at least one method to its steps")
  if group_labels is not None and len(group_labels) != x.size:
    raise ValueError(f"group_labels must have {x.size} entries, got {len(group_labels)}")
  fig, ax = _panel(ax, (8, 4.2) if group_labels is not None else (6.5, 4.2))
  order = np.argsort(x)
  finite_all = [v for s in steps.values() for v in np.asarray(s, float) if np.isfinite(v)]
  cap = grid_end if grid_end is not None else (max(finite_all) if finite_all else 1.0)
  cap_draw = cap * 1.15 if cap > 0 else 1.0
  for j, (method, s) in enumerate(steps.items()):
    s = _vector(f"steps[{method!r}]", s)
    if s.shape != x.shape:
      raise ValueError(f"steps[{method!r}] must have shape {x.shape}, got {s.shape}")
    drawn = np.where(np.isfinite(s), s, cap_draw)[order]
    xj = x[order] * (1.0 + 0.06 * (j - (len(steps) - 1) / 2))  # small jitter so methods don't overlap
    line = ax.plot(xj, drawn, marker="o", markersize=5, linewidth=1.2, label=method, zorder=3)[0]
    fin = np.isfinite(s[order])
    if (~fin).any():
      ax.scatter(xj[~fin], drawn[~fin], s=70, marker="^", facecolors="none", edgecolors=line.get_color(), zorder=4)
    if j == 0 and group_labels is not None:
      for rank, i in enumerate(order):
        ax.annotate(str(i + 1), (xj[rank], drawn[rank]), fontsize=7, xytext=(4, 4), textcoords="offset points")
  if grid_end is not None:
    ax.axhline(
      grid_end, color="gray", linestyle=":", linewidth=1, label=f"grid end ({grid_end:g}); above: not unlearned"
    )
  if group_labels is not None:
    key = "\n".join(f"{i + 1}: {name}" for i, name in enumerate(group_labels))
    ax.text(1.02, 1.0, "forget sets\n" + key, transform=ax.transAxes, va="top", ha="left", fontsize=7)
  _log_x(ax, x, "mean privacy loss of the forget set")
  ax.set_ylabel("empirical steps to unlearn")
  ax.set_title("Empirical steps to unlearn vs privacy loss of the forget set", fontsize=10)
  ax.legend(fontsize=7)
  return _finish(fig, path)


def loss_barrier_curves(
  step_grid: ArrayLike,
  barriers: Mapping[str, ArrayLike],
  path: str | os.PathLike | None = None,
  *,
  ax: Any = None,
  reference: Mapping[str, float] | None = None,
  title: str | None = None,
  ylabel: str = "loss barrier on the forget set",
  log_y: bool = False,
) -> Any:
  """Curves along the unlearning steps, one per forget set (loss barriers, or any per-step quantity).

  Args:
    step_grid: (G,) recorded unlearning steps (x axis; symlog so that step 0 is shown).
    barriers: label -> (G,) value at each recorded step (e.g. the unlearned-vs-oracle barrier).
    path: output ``.png`` (optional: the figure is returned either way).
    ax: a matplotlib Axes to draw into (default: a new figure).
    reference: label -> a reference level drawn dashed in the curve's colour (e.g. the oracle-vs-oracle
      barrier, or the noise-floor threshold).
    title: figure title.
    ylabel: y axis label.
    log_y: log-scale y axis (non-positive values are clipped to the smallest positive one).

  Returns:
    The matplotlib ``Figure``.

  Examples:
    >>> import tempfile, numpy as np
    >>> from matplotlib.figure import Figure
    >>> fig = Figure(figsize=(8, 3))
    >>> left, right = fig.subplots(1, 2)  # draw into panels of your own figure
    >>> _ = loss_barrier_curves([0, 10, 100], {"top": [1.0, 0.5, 0.1]}, ax=left)
    >>> _ = loss_barrier_curves([0, 10, 100], {"top": [0.3, 0.2, 0.1]}, ax=right, title="another method")
    >>> fig.savefig(tempfile.mkdtemp() + "/two_panels.png")
  """
  g = _vector("step_grid", step_grid)
  if not barriers:
    raise ValueError("barriers must map at least one label to a curve")
  fig, ax = _panel(ax, (6.5, 4.2))
  colors = {}
  positive = [v for b in barriers.values() for v in np.asarray(b, float).ravel() if v > 0]
  positive += [v for v in (reference or {}).values() if v > 0]
  tiny = min(positive) if positive else 1e-6
  for label, b in barriers.items():
    b = _vector(f"barriers[{label!r}]", b)
    if b.shape != g.shape:
      raise ValueError(f"barriers[{label!r}] must have shape {g.shape}, got {b.shape}")
    if log_y:
      b = np.maximum(b, tiny)
    colors[label] = ax.plot(g, b, marker="o", markersize=3, label=label)[0].get_color()
  for label, value in (reference or {}).items():
    ax.axhline(max(value, tiny) if log_y else value, linestyle="--", linewidth=0.8, color=colors.get(label, "gray"))
  ax.set_xscale("symlog", linthresh=max(1.0, float(np.min(g[g > 0])) if np.any(g > 0) else 1.0))
  if log_y:
    ax.set_yscale("log")
  ax.set_xlabel("unlearning steps k")
  ax.set_ylabel(ylabel)
  ax.set_title(title or "Loss barrier, unlearned vs oracle, along unlearning", fontsize=10)
  ax.legend(fontsize=7, ncol=2)
  return _finish(fig, path)


def correlation_heatmap(
  matrix: ArrayLike,
  labels: Sequence[str],
  path: str | os.PathLike | None = None,
  *,
  ax: Any = None,
  title: str = "Spearman rank correlation",
) -> Any:
  """Heatmap of a square correlation matrix with the values written in the cells.

  Args:
    matrix: (m, m) correlations in [-1, 1].
    labels: (m,) row/column names.
    path: output ``.png`` (optional: the figure is returned either way).
    ax: a matplotlib Axes to draw into (default: a new figure).
    title: figure title.

  Returns:
    The matplotlib ``Figure``.

  Examples:
    >>> import tempfile, numpy as np
    >>> fig = correlation_heatmap(np.eye(2), ["a", "b"])
    >>> fig.axes[0].get_title()
    'Spearman rank correlation'
  """
  m = np.asarray(matrix, dtype=float)
  if m.ndim != 2 or m.shape[0] != m.shape[1] or m.shape[0] != len(labels):
    raise ValueError(f"matrix must be square with one row per label ({len(labels)}), got shape {m.shape}")
  size = 1.0 + 0.6 * len(labels)
  fig, ax = _panel(ax, (size + 1.2, size))
  im = ax.imshow(m, cmap="RdBu_r", vmin=-1, vmax=1)
  ax.set_xticks(range(len(labels)), labels, rotation=45, ha="right")
  ax.set_yticks(range(len(labels)), labels)
  for i in range(m.shape[0]):
    for j in range(m.shape[1]):
      text = "nan" if not np.isfinite(m[i, j]) else f"{m[i, j]:.2f}"
      ax.text(
        j,
        i,
        text,
        ha="center",
        va="center",
        fontsize=7,
        color="white" if np.isfinite(m[i, j]) and abs(m[i, j]) > 0.6 else "black",
      )
  fig.colorbar(im, ax=ax, fraction=0.046)
  ax.set_title(title, fontsize=10)
  return _finish(fig, path)


_MARKERS = ("o", "s", "D", "^", "v", "P", "*", "X", "<", ">")
_COLORS = tuple(
  f"tab:{c}" for c in ("blue", "orange", "green", "red", "purple", "brown", "pink", "gray", "olive", "cyan")
)


def _finite_max(values: np.ndarray) -> float:
  """The largest finite entry (1 when there is none)."""
  finite = values[np.isfinite(values)]
  return float(finite.max()) if finite.size else 1.0


def _scatter_groups(ax, x: np.ndarray, lower: np.ndarray, point: np.ndarray | None, labels: list) -> None:
  """One hollow marker style per label, of nested sizes (a group drawn over another still shows), with
  the point estimates as faint crosses of the group's colour."""
  groups = list(dict.fromkeys(labels))
  for g, lab in enumerate(groups):
    sel = np.array([name == lab for name in labels])
    size = 40 - 25 * g / max(1, len(groups) - 1)
    color = _COLORS[g % len(_COLORS)]
    marker = _MARKERS[g % len(_MARKERS)]
    ax.scatter(
      x[sel],
      lower[sel],
      s=size,
      marker=marker,
      facecolors="none",
      edgecolors=color,
      linewidths=1.2,
      label=f"{lab} (n = {sel.sum()})",
    )
    if point is not None:
      ax.scatter(x[sel], point[sel], s=12, marker="x", color=color, alpha=0.45)


def membership_vs_certified(
  certified_epsilon: ArrayLike,
  membership_epsilon: ArrayLike,
  path: str | os.PathLike | None = None,
  *,
  ax: Any = None,
  labels: Sequence[str] | None = None,
  point_estimates: ArrayLike | None = None,
  cap: float | None = None,
  num_models: int | None = None,
) -> Any:
  """Membership ε lower bounds against certified (ε, δ) upper bounds, with the line y = x.

  A sound certificate keeps every lower bound on or below the diagonal.

  Args:
    certified_epsilon: (m,) certified upper bound of each point (inf drawn at the right edge).
    membership_epsilon: (m,) lower bound of each point (``evaluation.membership_lower_bound``).
    path: output ``.png`` (optional: the figure is returned either way).
    ax: a matplotlib Axes to draw into (default: a new figure).
    labels: (m,) group of each point (one colour and marker per distinct label, hollow and of nested
      sizes so that a group drawn over another still shows).
    point_estimates: (m,) the uncorrected point estimates, drawn as faint crosses in the group's colour and
      labelled as not bounds.
    cap: the most the models can resolve (``evaluation.membership_resolvable_cap``), a dotted line.
    num_models: models per side, for the legend.

  Returns:
    The matplotlib ``Figure``.

  Examples:
    >>> import tempfile, numpy as np
    >>> fig = membership_vs_certified([1.0, 2.0], [0.1, 0.5], tempfile.mkdtemp() + "/m.png", labels=["a", "b"])
    >>> [text.get_text() for text in fig.axes[0].get_legend().get_texts()][:2]
    ['a (n = 1)', 'b (n = 1)']
  """
  c = _vector("certified_epsilon", certified_epsilon)
  e = _vector("membership_epsilon", membership_epsilon)
  if c.shape != e.shape:
    raise ValueError(f"certified_epsilon and membership_epsilon must have the same shape, got {c.shape}, {e.shape}")
  p = None if point_estimates is None else _vector("point_estimates", point_estimates)
  if p is not None and p.shape != e.shape:
    raise ValueError(f"point_estimates must have the shape of membership_epsilon {e.shape}, got {p.shape}")
  fig, ax = _panel(ax, (6.5, 4.5))
  hi = 1.1 * max(_finite_max(e if p is None else np.concatenate([e, p])), _finite_max(c), 1e-3)
  c_draw = np.where(np.isfinite(c), c, hi)
  labels = ["lower bound"] * c.size if labels is None else list(labels)
  if len(labels) != c.size:
    raise ValueError(f"labels must have {c.size} entries, got {len(labels)}")
  _scatter_groups(ax, c_draw, e, p, labels)
  if p is not None:
    ax.scatter([], [], s=12, marker="x", color="0.5", label="x: point estimate (not a bound)")
  if cap is not None:
    who = f" ({num_models} vs {num_models} models)" if num_models else ""
    ax.axhline(cap, color="k", linestyle=":", linewidth=1, label=f"resolvable cap {cap:.2f}{who}")
  ax.plot([1e-3, hi], [1e-3, hi], color="k", linewidth=1, linestyle="--", label="y = x")
  ax.legend(fontsize=7, loc="upper left", bbox_to_anchor=(1.02, 1.0))
  # Certified bounds and empirical lower bounds differ by orders of magnitude: log x, symlog y.
  lo_x = max(1e-3, float(np.min(c_draw[c_draw > 0])) / 2) if np.any(c_draw > 0) else 1e-3
  ax.set_xscale("log")
  ax.set_yscale("symlog", linthresh=0.1)
  ax.set_xlim(lo_x, hi * 1.5)
  ax.set_ylim(-0.02, hi * 1.5)  # lower bounds at 0 sit inside the axes, not on its edge
  ax.set_xlabel("certified ε (upper bound, §4 as (ε, δ); log scale)")
  ax.set_ylabel("membership ε: lower bound (hollow; Clopper–Pearson)")
  violations = int(np.sum(np.isfinite(c) & (e > c)))
  ax.set_title(f"Membership ε vs certified ε ({violations} lower bounds above the diagonal)", fontsize=10)
  return _finish(fig, path)


def _series(x: np.ndarray, series: Mapping[str, ArrayLike], name: str) -> dict[str, np.ndarray]:
  if not series:
    raise ValueError(f"{name} must map at least one label to its values")
  out = {label: _vector(f"{name}[{label!r}]", v) for label, v in series.items()}
  for label, v in out.items():
    if v.shape != x.shape:
      raise ValueError(f"{name}[{label!r}] must have shape {x.shape} like the settings, got {v.shape}")
  return out


def against_setting(
  settings: ArrayLike,
  series: Mapping[str, ArrayLike],
  path: str | os.PathLike | None = None,
  *,
  ax: Any = None,
  xlabel: str = "setting",
  ylabel: str = "",
  title: str = "",
  styles: Mapping[str, Mapping[str, Any]] | None = None,
  hline: tuple[float, str] | None = None,
) -> Any:
  """Quantities measured at each setting of a swept knob, one line per quantity (log x axis).

  Non-finite values (a certificate that overflowed, a set not unlearned within the grid) are left out of
  the line; the y axis is logarithmic when the positive values span more than two decades (linear below
  1, so that 0 — e.g. a set unlearned at step 0 — is drawn).

  Args:
    settings: (V,) the knob's values (x axis, log scale).
    series: label -> (V,) values.
    path: output ``.png`` (optional: the figure is returned either way).
    ax: a matplotlib Axes to draw into (default: a new figure).
    xlabel, ylabel, title: the axis labels and the title.
    styles: label -> matplotlib line keywords (e.g. ``{"linestyle": "none", "marker": "x"}`` for
      measurements drawn as markers only); default: a line with round markers.
    hline: ``(y, label)`` of a horizontal reference line (e.g. the cost of retraining).

  Returns:
    The matplotlib ``Figure``.

  Examples:
    >>> fig = against_setting([1e-5, 1e-4], {"median": [900.0, 90.0], "worst case": [5e3, 5e2]},
    ...                       xlabel="temperature", hline=(600.0, "retraining"))
    >>> [line.get_label() for line in fig.axes[0].get_lines()]
    ['median', 'worst case', 'retraining']
  """
  x = _vector("settings", settings)
  values = _series(x, series, "series")
  fig, ax = _panel(ax, (6, 4))
  for label, v in values.items():
    ok = np.isfinite(v)
    ax.plot(x[ok], v[ok], label=label, **dict((styles or {}).get(label, {"marker": "o"})))
  if hline is not None:
    ax.axhline(hline[0], color="k", linestyle="--", linewidth=1, label=hline[1])
  finite = [float(u) for v in values.values() for u in v if np.isfinite(u)]
  positive = [u for u in finite if u > 0]
  if positive and max(positive) > 100 * min(positive) and min(finite) >= 0:
    if min(finite) == 0:
      ax.set_yscale("symlog", linthresh=1.0)
      ax.set_ylim(bottom=0)
    else:
      ax.set_yscale("log")
  ax.set_xscale("log")
  ax.set_xlabel(xlabel + " (log scale)")
  ax.set_ylabel(ylabel + {"log": " (log scale)", "symlog": " (log scale above 1)"}.get(ax.get_yscale(), ""))
  ax.set_title(title, fontsize=9)
  if len(values) > 6:  # a long key goes beside the axes
    ax.legend(fontsize=6, loc="upper left", bbox_to_anchor=(1.01, 1.0))
  else:
    ax.legend(fontsize=7)
  return _finish(fig, path)


def accuracy_against_steps(
  accuracy: ArrayLike,
  steps: Mapping[str, ArrayLike],
  path: str | os.PathLike | None = None,
  *,
  ax: Any = None,
  settings: ArrayLike | None = None,
  budget: float | None = None,
) -> Any:
  """The trade-off: test accuracy against the steps each certificate needs, one curve per certificate.

  Each point is one setting (e.g. one temperature τ): reading across at one accuracy gives the steps
  each certificate needs there; reading up at one step budget gives the best accuracy each allows.

  Args:
    accuracy: (V,) test accuracy at each setting (y axis).
    steps: certificate -> (V,) steps it needs at each setting (x axis, log scale; non-finite left out).
    path: output ``.png`` (optional: the figure is returned either way).
    ax: a matplotlib Axes to draw into (default: a new figure).
    settings: (V,) the settings, written next to the points of the first curve.
    budget: a step budget (e.g. retraining from scratch), a dashed vertical line.

  Returns:
    The matplotlib ``Figure``.

  Examples:
    >>> fig = accuracy_against_steps([0.9, 0.8], {"per-instance": [40.0, 4.0], "worst case": [900.0, 90.0]},
    ...                              settings=[1e-5, 1e-4], budget=100.0)
    >>> [line.get_label() for line in fig.axes[0].get_lines()][:2]
    ['per-instance', 'worst case']
  """
  acc = _vector("accuracy", accuracy)
  values = _series(acc, steps, "steps")
  fig, ax = _panel(ax, (6, 4))
  for j, (label, k) in enumerate(values.items()):
    ok = np.isfinite(k) & (k > 0)
    ax.plot(k[ok], acc[ok], marker="o", label=label)
    if j == 0 and settings is not None:
      for kk, a, s in zip(k[ok], acc[ok], _vector("settings", settings)[ok]):
        ax.annotate(f"{s:g}", (kk, a), fontsize=6, xytext=(3, 3), textcoords="offset points")
  if budget is not None:
    ax.axvline(budget, color="k", linestyle="--", linewidth=1, label=f"budget: {budget:g} steps")
  ax.set_xscale("log")
  ax.set_xlabel("steps to certify (α, ε)-unlearning (log scale)")
  ax.set_ylabel("test accuracy")
  ax.set_title("Trade-off: accuracy against the steps each certificate needs", fontsize=9)
  ax.legend(fontsize=7)
  return _finish(fig, path)
