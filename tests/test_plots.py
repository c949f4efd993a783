"""Tests of unlearn_jax.plots on synthetic inputs: files are valid PNGs, inputs are checked, and the
figure content that is computed (not just drawn) is checked against an independent count."""

from __future__ import annotations

import struct
import subprocess
import sys

import matplotlib.axes
import numpy as np
import pytest

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
  out = plots.privacy_loss_histogram(p, tmp_path / "h.png", order=8.0)
  w, h = _png_size(out)
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
  out = fn(*args, tmp_path / "sub" / "f.png")
  assert _png_size(out)[0] > 100


def test_same_inputs_same_bytes(tmp_path):
  a = plots.correlation_heatmap(np.eye(3), ["x", "y", "z"], tmp_path / "a.png")
  b = plots.correlation_heatmap(np.eye(3), ["x", "y", "z"], tmp_path / "b.png")
  assert a.read_bytes() == b.read_bytes()


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
