"""The scripts in examples/ run (at small sizes) and what they print is checked against independent
computations: a finite difference for the gradient through the bound, the budget for the calibration."""

from __future__ import annotations

import importlib.util
import pathlib

import numpy as np
import pytest

EXAMPLES = pathlib.Path(__file__).resolve().parents[1] / "examples"


def _load(name):
  spec = importlib.util.spec_from_file_location(f"example_{name}", EXAMPLES / f"{name}.py")
  module = importlib.util.module_from_spec(spec)
  spec.loader.exec_module(module)
  return module


@pytest.mark.slow
def test_own_model_ledger_example(capsys):
  out = _load("own_model_ledger").main(["--n-train", "150", "--steps", "40"])
  text = capsys.readouterr().out
  assert "test accuracy" in text and "noise multiplier" in text and "δ = 1e-05" in text
  assert out["accuracy"] > 0.5  # 10 classes: far above chance after 40 steps
  assert np.all(np.isfinite(out["p4"])) and np.all(out["p4"] > 0)
  assert np.all(out["steps"] >= 0)
  # jax.grad through the bound against a central difference of the same closed form in float64
  p, tau, k = float(np.max(out["p4"])), 1e-4, out["k"]
  alpha, eta, c_lsi, eps = 2.0, 0.5, 0.02, 1.0

  def k_np(log_tau):  # theory §4 in float64: (α C_LSI/(τη)) log(bracket/ε), E1 = E2 = 0, P scaled as 1/τ
    t = np.exp(log_tau)
    bracket = (alpha - 0.5) / (alpha - 1) * (4 * alpha - 1) / (4 * alpha - 2) * (p * tau / t)
    return max(0.0, alpha * c_lsi / (t * eta) * np.log(bracket / eps))

  assert k == pytest.approx(k_np(np.log(tau)), rel=1e-4)
  assert k > 0 and np.isfinite(out["dk_dlog_tau"]) and out["dk_dlog_tau"] < 0  # more noise, fewer steps
  h = 1e-4
  fd = (k_np(np.log(tau) + h) - k_np(np.log(tau) - h)) / (2 * h)
  np.testing.assert_allclose(out["dk_dlog_tau"], fd, rtol=1e-3)


@pytest.mark.slow
def test_calibrate_temperature_example(capsys):
  out = _load("calibrate_temperature").main(["--n-train", "150", "--steps", "60", "--budget", "100", "--rounds", "4"])
  text = capsys.readouterr().out
  assert "round 1" in text and "noise multiplier" in text
  rounds = out["rounds"]
  assert rounds and all(pred <= 100 + 1e-9 for _, pred, _, _ in rounds)  # each calibration meets its own budget
  gaps = [abs(measured - 100) for _, _, measured, _ in rounds]
  assert gaps[-1] <= gaps[0]  # re-measuring at the calibrated τ moves the certificate towards the budget
  assert gaps[-1] <= 0.2 * 100, rounds
