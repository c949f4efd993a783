"""Tests of unlearn_jax.plots on synthetic inputs: files are valid PNGs, inputs are checked, and the
figure content that is computed (not just drawn) is checked against an independent count."""

from __future__ import annotations

import struct
import subprocess
import sys

import matplotlib.axes
import numpy as np
import pytest
from matplotlib.figure import Figure

from unlearn_jax import plots

PNG_MAGIC = b"\x89PNG\r\n\x1a\n"


def _png_size(path):
  data = path.read_bytes()
  assert data[:8] == PNG_MAGIC
  width, height = struct.unpack(">II", data[16:24])
  return width, height


def _title(monkeypatch):
  """Captures the titles set on axes while a figure is drawn."""
  titles = []
  orig = matplotlib.axes.Axes.set_title

  def spy(self, label, *a, **k):
    titles.append(label)
    return orig(self, label, *a, **k)

  monkeypatch.setattr(matplotlib.axes.Axes, "set_title", spy)
  return titles


def test_histogram_png_and_zero_count(tmp_path, monkeypatch):
  titles = _title(monkeypatch)
  p = np.concatenate([np.zeros(3), np.geomspace(0.01, 100, 97)])
  fig = plots.privacy_loss_histogram(p, tmp_path / "h.png", order=8.0)
  assert isinstance(fig, Figure)
  w, h = _png_size(tmp_path / "h.png")
  assert w > 200 and h > 200
  assert "3 zero" in titles[-1]
  assert "max/min = 1e+04" in titles[-1]


def test_certified_vs_worst_case_fraction_below(tmp_path, monkeypatch):
  titles = _title(monkeypatch)
  rng = np.random.default_rng(0)
  p = rng.lognormal(size=200)
  k = np.ceil(100 * np.log1p(p))
  k[:5] = np.inf
  worst = float(np.median(k[5:]))
  expected = np.mean(k[5:] < worst)  # fraction over the finite entries, computed independently
  plots.certified_vs_worst_case(p, k, worst, tmp_path / "c.png")
  assert f"{100 * expected:.0f}% of examples below K" in titles[-1]


def test_membership_vs_certified_counts_violations(tmp_path, monkeypatch):
  titles = _title(monkeypatch)
  cert = np.array([1.0, 1.0, 2.0, np.inf])
  emp = np.array([0.5, 1.5, 2.5, 9.0])  # two finite violations; the inf certificate is never violated
  plots.membership_vs_certified(cert, emp, tmp_path / "m.png", labels=["a", "a", "b", "b"])
  assert "(2 lower bounds above the diagonal)" in titles[-1]


@pytest.mark.parametrize(
  "fn,args",
  [
    (plots.empirical_steps_by_privacy_loss, ([0.5, 2.0, 9.0], {"sgld": [0, 100, np.inf], "sgd": [0, 50, 800]})),
    (plots.loss_barrier_curves, ([0, 10, 100], {"top": [1.0, 0.5, 0.1], "random": [0.1, 0.0, 0.0]})),
    (plots.correlation_heatmap, (np.array([[1.0, 0.5], [0.5, 1.0]]), ["a", "b"])),
  ],
)
def test_other_figures_write_png(tmp_path, fn, args):
  fig = fn(*args, tmp_path / "sub" / "f.png")
  assert isinstance(fig, Figure) and _png_size(tmp_path / "sub" / "f.png")[0] > 100


def test_same_inputs_same_bytes(tmp_path):
  plots.correlation_heatmap(np.eye(3), ["x", "y", "z"], tmp_path / "a.png")
  plots.correlation_heatmap(np.eye(3), ["x", "y", "z"], tmp_path / "b.png")
  assert (tmp_path / "a.png").read_bytes() == (tmp_path / "b.png").read_bytes()


_PANELS = [
  lambda ax: plots.privacy_loss_histogram(np.geomspace(0.1, 10, 20), ax=ax),
  lambda ax: plots.certified_vs_worst_case(np.geomspace(0.1, 10, 20), np.arange(20.0) + 1, 10.0, ax=ax),
  lambda ax: plots.empirical_steps_by_privacy_loss([0.5, 2.0], {"sgld": [0, 100]}, ax=ax, group_labels=["a", "b"]),
  lambda ax: plots.loss_barrier_curves([0, 10], {"top": [1.0, 0.5]}, ax=ax),
  lambda ax: plots.correlation_heatmap(np.eye(2), ["a", "b"], ax=ax),
  lambda ax: plots.membership_vs_certified([1.0, 2.0], [0.1, 0.5], ax=ax),
]


def test_every_figure_draws_into_a_given_axes_and_writes_nothing_without_a_path(tmp_path, monkeypatch):
  monkeypatch.chdir(tmp_path)
  fig = Figure(figsize=(12, 6))
  axes = fig.subplots(2, 3).ravel()
  for draw, ax in zip(_PANELS, axes):
    assert draw(ax) is fig
    assert ax.has_data() or ax.images, draw
  assert not list(tmp_path.iterdir())
  with pytest.raises(TypeError, match="matplotlib Axes"):
    plots.privacy_loss_histogram([1.0], ax="left")


def test_certified_figure_marks_the_retraining_cost(monkeypatch):
  k = np.array([5.0, 50.0, 500.0, np.inf])
  fig = plots.certified_vs_worst_case(np.array([0.1, 1.0, 10.0, 100.0]), k, 1000.0, retrain_steps=40)
  ax = fig.axes[0]
  lines = [line for line in ax.get_lines() if line.get_label().startswith("retraining")]
  assert len(lines) == 1 and list(lines[0].get_ydata()) == [40, 40]
  assert "(75% of certificates cost more)" in lines[0].get_label()  # 50, 500 and inf exceed 40
  assert ax.get_yscale() == "log"  # 5 ... 1000 on one axis


def test_empirical_steps_draws_the_lines_it_promises_and_keys_the_sets():
  labels = ["privacy_loss:top", "privacy_loss:bottom", "random"]
  fig = plots.empirical_steps_by_privacy_loss(
    [9.0, 0.5, 2.0], {"sgld": [np.inf, 0, 100], "sgd": [400, 0, 0]}, group_labels=labels, grid_end=800
  )
  ax = fig.axes[0]
  lines = {line.get_label(): line for line in ax.get_lines()}
  assert set(lines) >= {"sgld", "sgd"}
  np.testing.assert_allclose(lines["sgld"].get_ydata(), [0, 100, 800 * 1.15])  # sorted by privacy loss
  numbers = sorted(t.get_text() for t in ax.texts if t.get_text().isdigit())
  assert numbers == ["1", "2", "3"]  # short numbers at the points, not overlapping names
  key = [t.get_text() for t in ax.texts if t.get_text().startswith("forget sets")]
  assert key and all(f"{i + 1}: {name}" in key[0] for i, name in enumerate(labels))


def test_membership_figure_shows_every_set_and_labels_point_estimates():
  cert = np.array([3.0, 3.0, 3.0, 3.0])  # two sets at the same certificate and the same lower bound
  lower = np.zeros(4)
  fig = plots.membership_vs_certified(
    cert, lower, labels=["top", "top", "el2n", "el2n"], point_estimates=[1.4, 1.4, 2.0, 2.0], cap=0.5, num_models=16
  )
  ax = fig.axes[0]
  texts = [t.get_text() for t in ax.get_legend().get_texts()]
  assert "top (n = 2)" in texts and "el2n (n = 2)" in texts
  assert "x: point estimate (not a bound)" in texts
  hollow = [c for c in ax.collections if c.get_label() in ("top (n = 2)", "el2n (n = 2)")]
  sizes = [float(c.get_sizes()[0]) for c in hollow]
  markers = [c.get_paths()[0].vertices.shape for c in hollow]
  assert sizes[0] > sizes[1] and markers[0] != markers[1]  # nested sizes, different markers: both visible
  assert all(np.all(c.get_facecolor()[:, 3] == 0) for c in hollow)  # hollow
  assert "lower bound" in ax.get_ylabel()


@pytest.mark.parametrize(
  "call,match",
  [
    (lambda d: plots.privacy_loss_histogram([1.0, -1.0], d / "x.png"), "non-negative"),
    (lambda d: plots.privacy_loss_histogram(np.ones((2, 2)), d / "x.png"), "1-D"),
    (lambda d: plots.privacy_loss_histogram([1.0], d / "x.jpg"), r"\.png"),
    (lambda d: plots.certified_vs_worst_case([1.0, 2.0], [1.0], 3.0, d / "x.png"), "same shape"),
    (lambda d: plots.correlation_heatmap(np.eye(2), ["a"], d / "x.png"), "square"),
    (lambda d: plots.loss_barrier_curves([0, 1], {"a": [1.0]}, d / "x.png"), "shape"),
    (lambda d: plots.empirical_steps_by_privacy_loss([1.0], {}, d / "x.png"), "at least one"),
  ],
)
def test_bad_inputs(tmp_path, call, match):
  with pytest.raises(ValueError, match=match):
    call(tmp_path)


def test_missing_matplotlib_gives_clear_error(tmp_path):
  # A fresh interpreter where matplotlib cannot be imported: the module imports, drawing says what to do.
  script = (
    "import sys; sys.modules['matplotlib'] = None; sys.modules['matplotlib.figure'] = None\n"
    "from unlearn_jax import plots\n"
    "try:\n  plots.privacy_loss_histogram([1.0, 2.0], sys.argv[1])\n"
    "except ImportError as e:\n  print(e)\n"
  )
  proc = subprocess.run(
    [sys.executable, "-c", script, str(tmp_path / "h.png")], capture_output=True, text=True, timeout=120
  )
  assert proc.returncode == 0, proc.stderr[-2000:]
  assert "unlearn_jax[plots]" in proc.stdout and not (tmp_path / "h.png").exists()
