"""Tests of the unlearn-jax command line: --help texts, exit codes and messages of bad input."""

from __future__ import annotations

import json
import os
import re
import signal
import subprocess
import sys
import time

import pytest

from unlearn_jax.runtime import checkpoint
from unlearn_jax.study import cli


def _run_main(argv, capsys):
  try:
    code = cli.main(argv)
  except SystemExit as e:
    code = e.code
  out = capsys.readouterr()
  return code, out.out, out.err


def test_top_level_help_lists_every_subcommand(capsys):
  code, out, _ = _run_main(["--help"], capsys)
  assert code == 0
  for word in ("demo", "run", "certify-testbed", "report.json", "per_example.csv"):
    assert word in out


@pytest.mark.parametrize(
  "sub,needles",
  [
    ("demo", ["digits", "5 minutes", "--out", "--quiet", "--seed", "--devices", "--data-dir"]),
    ("run", ["--config", "TOML", "JSON", "step_size", "--out", "--quiet", "--seed", "--devices"]),
    ("certify-testbed", ["exact", "worst-case", "--alpha", "--epsilon", "--n"]),
  ],
)
def test_subcommand_help(sub, needles, capsys):
  code, out, _ = _run_main([sub, "--help"], capsys)
  assert code == 0
  for needle in needles:
    assert needle in out, needle


def test_no_subcommand_is_an_error(capsys):
  code, _, err = _run_main([], capsys)
  assert code == 2 and "demo" in err


def test_run_needs_config(capsys):
  code, _, err = _run_main(["run"], capsys)
  assert code == 2 and "--config" in err


def test_config_errors_name_the_key(tmp_path, capsys):
  bad = tmp_path / "bad.toml"
  bad.write_text("[training]\nstep_size = -1.0\n")
  code, _, err = _run_main(["run", "--config", str(bad), "--quiet"], capsys)
  assert code == cli.EXIT_CONFIG
  assert "'training.step_size'" in err and "-1.0" in err and "positive" in err
  bad.write_text("[training]\ntemprature = 1.0\n")
  code, _, err = _run_main(["run", "--config", str(bad), "--quiet"], capsys)
  assert code == cli.EXIT_CONFIG and "did you mean 'temperature'" in err
  code, _, err = _run_main(["run", "--config", str(tmp_path / "missing.toml")], capsys)
  assert code == cli.EXIT_CONFIG and "does not exist" in err


def test_bad_devices_and_seed_are_config_errors(tmp_path, capsys):
  code, _, err = _run_main(["demo", "--devices", "0", "--out", str(tmp_path / "o")], capsys)
  assert code == cli.EXIT_CONFIG and "'devices'" in err
  code, _, err = _run_main(["demo", "--seed", "-3", "--out", str(tmp_path / "o")], capsys)
  assert code == cli.EXIT_CONFIG and "'seed'" in err
  code, _, err = _run_main(["demo", "--seed", "abc"], capsys)
  assert code == 2 and "--seed" in err


def test_unwritable_output_dir(tmp_path, capsys):
  blocker = tmp_path / "a_file"
  blocker.write_text("x")
  code, _, err = _run_main(["demo", "--quiet", "--out", str(blocker / "sub")], capsys)
  assert code == cli.EXIT_OUTPUT and "cannot be created or written" in err and "a_file" in err


def test_locked_output_dir_is_refused(tmp_path, capsys):
  out = tmp_path / "out"
  out.mkdir()
  # Another live process (this test's own pid is alive) holds the lock of the output directory.
  with checkpoint.RunLock(out):
    code, _, err = _run_main(["demo", "--quiet", "--out", str(out)], capsys)
  assert code == cli.EXIT_OUTPUT and str(out) in err


def test_missing_data_dir(tmp_path, capsys):
  cfg = tmp_path / "c.toml"
  cfg.write_text('[data]\nname = "cifar10"\n[model]\nname = "resnet18"\n[privacy]\nlsi_constant = 0.01\n')
  code, _, err = _run_main(["run", "--config", str(cfg), "--quiet", "--out", str(tmp_path / "o")], capsys)
  assert code == cli.EXIT_DATA and "--data-dir" in err and "data.data_dir" in err
  code, _, err = _run_main(
    ["run", "--config", str(cfg), "--quiet", "--out", str(tmp_path / "o"), "--data-dir", str(tmp_path / "nope")], capsys
  )
  assert code == cli.EXIT_DATA and "nope" in err and "does not exist" in err


def test_nonconvex_model_without_lsi_constant(tmp_path, capsys):
  cfg = tmp_path / "c.toml"
  cfg.write_text('[model]\nname = "mlp"\n')
  code, _, err = _run_main(["run", "--config", str(cfg), "--quiet", "--out", str(tmp_path / "o")], capsys)
  assert code == cli.EXIT_CONFIG and "'privacy.lsi_constant'" in err and "assumed" in err


def test_certify_testbed_prints_table(capsys):
  code, out, _ = _run_main(["certify-testbed", "--n", "8", "--d", "2", "--steps", "300"], capsys)
  assert code == 0
  assert "fraction with k* < K" in out and "sound" in out
  code, _, err = _run_main(["certify-testbed", "--alpha", "0.5"], capsys)
  assert code == cli.EXIT_CONFIG and "alpha" in err


def test_console_entry_point_module():
  res = subprocess.run([sys.executable, "-m", "unlearn_jax", "--help"], capture_output=True, text=True, timeout=120)
  assert res.returncode == 0 and "certify-testbed" in res.stdout


_TINY_TOML = """
seed = 0
[data]
num_train = 120
num_test = 40
[model.kwargs]
hidden_sizes = [16]
[training]
num_steps = {steps}
num_seeds = 1
num_checkpoints = 2
[privacy]
lsi_constant = 0.02
[forget_sets]
size = 4
selections = ["privacy_loss:top", "random"]
[unlearning]
methods = ["sgld"]
step_grid = [0, 10]
num_seeds = 4
retrain_steps = 20
[evaluation]
min_power = 0.0  # 4 vs 4 models: the test cannot reject; this checks the plumbing
[metrics]
names = ["loss"]
"""


@pytest.mark.slow
def test_sigint_saves_checkpoint_and_exits_130(tmp_path):

  cfg = tmp_path / "c.toml"
  cfg.write_text(_TINY_TOML.format(steps=200000))
  out = tmp_path / "out"
  proc = subprocess.Popen(
    [sys.executable, "-m", "unlearn_jax", "run", "--config", str(cfg), "--out", str(out), "--quiet"],
    stdout=subprocess.PIPE,
    stderr=subprocess.PIPE,
    text=True,
  )
  ckpt_dir = out / "checkpoints" / "train" / "seed_0"  # one training seed, run per seed (vmap_seeds = false)

  def steps():
    return [step for step, _ in checkpoint.list_checkpoints(ckpt_dir)] if ckpt_dir.is_dir() else []

  deadline = time.time() + 400
  while time.time() < deadline and not steps() and proc.poll() is None:
    time.sleep(0.5)
  first = steps()
  assert first, "training wrote no periodic checkpoint"
  proc.send_signal(signal.SIGINT)
  _, err = proc.communicate(timeout=300)
  assert proc.returncode == cli.EXIT_INTERRUPTED, err
  assert "interrupted" in err
  # The driver checkpointed the step it had reached when interrupted (past the first periodic one).
  assert max(steps()) > max(first)
  assert not (out / ".unlearn_jax.lock").exists()


@pytest.mark.slow
def test_devices_option_on_forced_cpu_devices(tmp_path):

  cfg = tmp_path / "c.toml"
  cfg.write_text(_TINY_TOML.format(steps=30))
  env = dict(os.environ, XLA_FLAGS="--xla_force_host_platform_device_count=2")
  outs = {}
  for devices in ("1", "2"):
    out = tmp_path / f"out{devices}"
    res = subprocess.run(
      [
        sys.executable,
        "-m",
        "unlearn_jax",
        "run",
        "--config",
        str(cfg),
        "--out",
        str(out),
        "--quiet",
        "--devices",
        devices,
      ],
      env=env,
      capture_output=True,
      text=True,
      timeout=600,
    )
    assert res.returncode == 0, res.stderr
    outs[devices] = json.loads((out / "report.json").read_text())
  # Same ledger up to float tolerance whether the examples are sharded over 1 or 2 devices (n = 120 split evenly).
  a = outs["1"]["privacy"]["privacy_loss_summary"]
  b = outs["2"]["privacy"]["privacy_loss_summary"]
  for k in ("min", "median", "max"):
    assert a[k] == pytest.approx(b[k], rel=1e-4)
  res = subprocess.run(
    [
      sys.executable,
      "-m",
      "unlearn_jax",
      "run",
      "--config",
      str(cfg),
      "--out",
      str(tmp_path / "o3"),
      "--quiet",
      "--devices",
      "3",
    ],
    env=env,
    capture_output=True,
    text=True,
    timeout=300,
  )
  assert res.returncode == cli.EXIT_CONFIG and "'devices'" in res.stderr and "2 cpu device" in res.stderr


@pytest.mark.slow
def test_progress_in_steps_resume_message_and_fresh(tmp_path, capsys):
  """A run shows progress in steps with elapsed<remaining time; a rerun says from which step it resumes;
  --fresh discards the checkpoints and starts over; another run's checkpoints are refused naming --fresh."""
  cfg = tmp_path / "c.toml"
  cfg.write_text(_TINY_TOML.format(steps=200).replace('names = ["loss"]', 'names = ["loss"]\n'))
  out = tmp_path / "out"
  argv = ["run", "--config", str(cfg), "--out", str(out)]
  code, _, err = _run_main(argv, capsys)
  assert code == 0, err
  lines = err.replace("\r", "\n").splitlines()
  bars = [
    ln
    for ln in lines
    if re.match(r"train: +\d+%\|.*\| [1-9]\d*/200 \[\d\d:\d\d<\d\d:\d\d, +[\d.]+(?:step/s|s/step)\]", ln)
  ]
  assert bars, lines  # steps done/total (across seeds), elapsed<remaining, the rate in steps
  assert any(re.match(r"oracles and unlearning: .*\| \d+/\d+ \[", ln) for ln in lines), lines
  assert not any("resuming" in ln for ln in lines)

  code, _, err = _run_main(argv, capsys)
  assert code == 0, err
  assert "train: resuming from step 200 of 200" in err

  code, _, err = _run_main(argv + ["--fresh"], capsys)
  assert code == 0, err
  assert "fresh run: removed the checkpoints of an earlier run" in err and "resuming" not in err

  cfg.write_text(_TINY_TOML.format(steps=150))  # another config, same --out: its checkpoints are foreign
  code, _, err = _run_main(argv + ["--quiet"], capsys)
  assert code == cli.EXIT_OUTPUT and "different run" in err and "pass --fresh" in err, err
