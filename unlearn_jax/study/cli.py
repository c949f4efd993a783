"""The ``unlearn-jax`` command line.

Subcommands:

- ``demo``: the whole study on scikit-learn's bundled digits (MLP), sized for a laptop CPU;
- ``run --config FILE``: the study described by a TOML or JSON config (see ``configs/``);
- ``tradeoff --config FILE --temperatures ...``: the study at a grid of temperatures and the trade-off figure;
- ``sweep --config FILE --knob K --values ...``: the study at a grid of one knob (a sensitivity sweep);
- ``certify-testbed``: the per-example table of the exact linear-Gaussian testbed (theory §5): exact
  steps needed, certified per-instance steps and the worst-case baseline's steps.

Exit status: 0 on success, 2 for a bad command line or config (the message names the key and the
allowed values), 3 when the output directory cannot be used (not writable, full, or locked by another
run), 4 when the data are missing or their files are corrupt, 5 when training diverged (the message
names the step; the last good checkpoint is kept), 130 when interrupted by Ctrl-C (SIGINT) and 143 by
SIGTERM (the drivers save a checkpoint first, and the same command resumes from it).
"""

from __future__ import annotations

import argparse
import pathlib
import sys
from collections.abc import Callable, Sequence
from typing import Any

from unlearn_jax import runtime
from unlearn_jax.certify import testbed, testbed_table
from unlearn_jax.runtime import checkpoint
from unlearn_jax.study import config as config_lib
from unlearn_jax.study import pipeline, stages
from unlearn_jax.study import sweep as sweep_lib

__all__ = ["main", "build_parser"]

EXIT_CONFIG = 2
EXIT_OUTPUT = 3
EXIT_DATA = 4
EXIT_DIVERGED = 5
EXIT_INTERRUPTED = 130

_DESCRIPTION = """\
Per-instance privacy accounting and certified machine unlearning in JAX.

Trains with a per-example privacy ledger (noisy gradient descent, theory §1-§3), turns every example's
privacy loss into certified steps to unlearn it (§4), and measures unlearning of forget sets chosen by
privacy loss and by data-difficulty metrics against retrained oracles (§6). Writes report.json,
report.md, per_example.csv and PNG figures to the output directory."""

_EPILOG = """\
examples:
  unlearn-jax demo --out runs/demo
  unlearn-jax run --config configs/mnist1d.toml --out runs/mnist1d
  unlearn-jax run --config configs/cifar10_resnet18.toml --data-dir ~/data/cifar-10-batches-bin
  unlearn-jax tradeoff --config configs/digits_logistic.toml --temperatures 1e-5,1e-4,1e-3
  unlearn-jax sweep --config configs/demo.toml --knob clip_norm --values 1,5,20
  unlearn-jax certify-testbed --n 30
"""


def _add_study_options(p: argparse.ArgumentParser, *, default_out: str | None) -> None:
  p.add_argument(
    "--out",
    metavar="DIR",
    default=default_out,
    help="output directory for report.json, report.md, per_example.csv, figures and checkpoints"
    + (f" (default: {default_out})" if default_out else " (default: the config's out_dir)"),
  )
  p.add_argument(
    "--seed",
    type=int,
    default=None,
    metavar="N",
    help="master seed; overrides the config's seed (same config + seed => identical report)",
  )
  p.add_argument(
    "--devices",
    type=int,
    default=None,
    metavar="N",
    help="shard the per-example work over N devices (default: one device; on CPU force several "
    "with XLA_FLAGS=--xla_force_host_platform_device_count=N)",
  )
  p.add_argument(
    "--data-dir",
    default=None,
    metavar="DIR",
    help="directory of CIFAR-10 binary batches / SVHN .mat files; overrides data.data_dir",
  )
  p.add_argument("--quiet", action="store_true", help="no progress bars or stage messages")
  p.add_argument(
    "--fresh",
    action="store_true",
    help="discard the checkpoints an earlier run left in the output directory and start over (default: "
    "resume from them when they belong to the same config, refuse them otherwise)",
  )


def build_parser() -> argparse.ArgumentParser:
  """The argparse parser of ``unlearn-jax`` (exposed for tests and documentation)."""
  parser = argparse.ArgumentParser(
    prog="unlearn-jax", description=_DESCRIPTION, epilog=_EPILOG, formatter_class=argparse.RawDescriptionHelpFormatter
  )
  sub = parser.add_subparsers(dest="command", metavar="{demo,run,tradeoff,sweep,certify-testbed}")
  sub.required = True

  demo = sub.add_parser(
    "demo",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    help="run the whole study on built-in digits (a few minutes on 2 CPU cores)",
    description="Run the whole study on scikit-learn's bundled digits (1,400 train / 397 test, MLP "
    "64-64-10, full-batch noisy GD with the ledger), sized to finish in under 5 minutes on "
    "2 CPU cores. The same settings are in configs/demo.toml.",
  )
  _add_study_options(demo, default_out="runs/demo")

  run = sub.add_parser(
    "run",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    help="run the study described by a TOML/JSON config file",
    description="Run the study described by a config file (TOML or JSON). Its keys are the library's "
    "keyword names (step_size, temperature, clip_norm, sampling_rate, mode, num_steps, "
    "orders, alpha, ...) in the sections [data] [model] [training] [privacy] [forget_sets] "
    "[unlearning] [evaluation] [metrics]; see configs/*.toml. Unknown keys, wrong types "
    "and out-of-range values are refused with a message naming the key.",
  )
  run.add_argument("--config", required=True, metavar="FILE", help="config file (.toml or .json)")
  _add_study_options(run, default_out=None)

  _add_sweep_parsers(sub)
  tb = sub.add_parser(
    "certify-testbed",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    help="print per-example exact / certified / worst-case steps on the exact testbed",
    description="On the exact linear-Gaussian ridge testbed (theory §5) print, per example, the exact "
    "number of unlearning steps needed for (alpha, epsilon), the certified per-instance "
    "k* (§4, exact P, E1, E2, C_LSI) and the worst-case baseline's K (Chien et al.), then "
    "the summary ratios.",
  )
  tb.add_argument(
    "--n",
    type=int,
    default=None,
    metavar="N",
    help="number of training examples of the ridge problem (default 40, one outlier)",
  )
  tb.add_argument("--d", type=int, default=None, metavar="D", help="feature dimension (default 3)")
  tb.add_argument("--seed", type=int, default=None, metavar="N", help="seed of the random problem (default 0)")
  tb.add_argument("--alpha", type=float, default=None, help="Rényi order alpha > 1 of the target (default 2)")
  tb.add_argument("--epsilon", type=float, default=None, help="target Rényi epsilon (default 0.05)")
  tb.add_argument("--steps", type=int, default=None, metavar="T", help="training steps T (default 2000)")
  tb.add_argument("--step-size", type=float, default=None, help="step size eta (default 0.05)")
  tb.add_argument("--temperature", type=float, default=None, help="temperature tau (default 0.01)")
  return parser


def _add_sweep_parsers(sub: Any) -> None:
  to = sub.add_parser(
    "tradeoff",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    help="the utility-unlearning trade-off: the study at a grid of temperatures",
    description="Run the study of a config at each temperature of a grid and write sweep_temperature.md/.json, "
    "sweep_temperature.png and tradeoff.png to the output directory: per temperature the test accuracy, the "
    "per-example certified steps at the quantiles q of the examples, the worst-case certificate, and the "
    "certificates and empirical steps of forget sets around the same quantiles of privacy loss.",
  )
  to.add_argument("--config", required=True, metavar="FILE", help="config file (.toml or .json)")
  to.add_argument("--temperatures", dest="values", required=True, metavar="T1,T2,...", help="temperatures τ > 0")
  sw = sub.add_parser(
    "sweep",
    formatter_class=argparse.RawDescriptionHelpFormatter,
    help="the study at a grid of one knob (temperature, clip_norm, step_size, num_steps)",
    description="Run the study of a config at each value of one knob and write sweep_<knob>.md/.json and "
    "sweep_<knob>.png: Spearman of P with each metric, claims (b) and (c), the clip-saturated share and the "
    "certified steps at each value.",
  )
  sw.add_argument("--config", required=True, metavar="FILE", help="config file (.toml or .json)")
  sw.add_argument("--knob", required=True, choices=sorted(sweep_lib.KNOBS), help="the knob to sweep")
  sw.add_argument("--values", required=True, metavar="V1,V2,...", help="the knob's values (> 0)")
  for p in (to, sw):
    p.add_argument(
      "--quantiles", default="0.5,0.9,0.99,1", metavar="Q1,...", help="example quantiles (default: %(default)s)"
    )
    p.add_argument("--collect", action="store_true", help="run nothing: tabulate the values whose study has finished")
    _add_study_options(p, default_out=None)


def _error(msg: str, code: int) -> int:
  print(f"unlearn-jax: error: {msg}", file=sys.stderr)
  return code


def _config(args: argparse.Namespace) -> config_lib.Config:
  """The config of the command line: the demo's or the file's, with the command line's overrides."""
  config = config_lib.demo_config() if args.command == "demo" else config_lib.Config.from_file(args.config)
  overrides = {}
  if args.seed is not None:
    overrides["seed"] = args.seed
  if args.devices is not None:
    overrides["devices"] = args.devices
  if args.out is not None:
    overrides["out_dir"] = args.out
  if args.data_dir is not None:
    overrides["data__data_dir"] = args.data_dir
  return config.replace(**overrides) if overrides else config


def _guarded(config: config_lib.Config, work: Callable[[], Any]) -> tuple[int, Any]:
  """(exit status, result) of ``work()``, a study or a sweep: every failure a message and its status."""
  try:
    return 0, work()
  except config_lib.ConfigError as e:
    return _error(str(e), EXIT_CONFIG), None
  except pipeline.OutputDirError as e:
    return _error(str(e), EXIT_OUTPUT), None
  except stages.DataMissingError as e:
    return _error(str(e), EXIT_DATA), None
  except runtime.DivergenceError as e:
    return _error(str(e), EXIT_DIVERGED), None
  except checkpoint.CheckpointError as e:
    return _error(str(e).replace("pass fresh=True (the command line's --fresh)", "pass --fresh"), EXIT_OUTPUT), None
  except OSError as e:  # the outputs or checkpoints could not be written: disk full, read-only, permissions
    where = f" ({e.filename})" if e.filename else ""
    msg = f"cannot write to the output directory {config.out_dir!r}: {e.strerror or e}{where}"
    return _error(msg, EXIT_OUTPUT), None
  except runtime.Interrupted as e:
    print(
      f"unlearn-jax: {e}; checkpoints are in {config.out_dir}/checkpoints and the same command resumes from them",
      file=sys.stderr,
    )
    return e.exit_code, None
  except KeyboardInterrupt:
    print(
      f"unlearn-jax: interrupted; checkpoints (if any) are in {config.out_dir}/checkpoints and "
      "the same command resumes from them",
      file=sys.stderr,
    )
    return EXIT_INTERRUPTED, None


def _study(args: argparse.Namespace) -> int:
  try:
    config = _config(args)
  except config_lib.ConfigError as e:
    return _error(str(e), EXIT_CONFIG)
  code, report = _guarded(config, lambda: pipeline.run(config, progress=not args.quiet, fresh=args.fresh))
  if code == 0 and not args.quiet:
    out = pathlib.Path(config.out_dir)
    print(
      f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'per_example.csv'} "
      f"and {len(report.get('figures', {}))} figures"
    )
  return code


def _numbers(option: str, text: str) -> list[float]:
  try:
    return [float(v) for v in text.split(",") if v.strip()]
  except ValueError:
    raise config_lib.ConfigError(f"{option} must be comma-separated numbers, got {text!r}") from None


def _sweep(args: argparse.Namespace) -> int:
  try:
    config = _config(args)
    knob = "temperature" if args.command == "tradeoff" else args.knob
    values = _numbers("--temperatures" if args.command == "tradeoff" else "--values", args.values)
    quantiles = _numbers("--quantiles", args.quantiles)
  except config_lib.ConfigError as e:
    return _error(str(e), EXIT_CONFIG)
  kw = dict(quantiles=quantiles, progress=not args.quiet, fresh=args.fresh, collect=args.collect)
  run = lambda: sweep_lib.sweep(config, knob, values, **kw)
  code, result = _guarded(config, run)
  if code == 0 and not args.quiet:
    print(f"wrote {', '.join(str(pathlib.Path(config.out_dir) / f) for f in result['files'])}")
  return code


def _certify_testbed(args: argparse.Namespace) -> int:
  problem_kwargs = {k: v for k, v in (("n", args.n), ("d", args.d), ("seed", args.seed)) if v is not None}
  table_kwargs = {
    k: v
    for k, v in (
      ("alpha", args.alpha),
      ("eps", args.epsilon),
      ("T", args.steps),
      ("step_size", args.step_size),
      ("temperature", args.temperature),
    )
    if v is not None
  }
  try:
    problem = testbed.make_outlier_problem(**problem_kwargs)
    rows, summary = testbed_table.certify_testbed_table(problem, **table_kwargs)
  except (ValueError, TypeError) as e:
    return _error(str(e), EXIT_CONFIG)
  print(testbed_table.format_table(rows, summary))
  return 0


def main(argv: Sequence[str] | None = None) -> int:
  """Entry point of the ``unlearn-jax`` console script; returns the exit status.

  Args:
    argv: the arguments (default: ``sys.argv[1:]``).

  Returns:
    The exit status (see the module docstring).

  Examples:
    >>> args = build_parser().parse_args(["demo", "--quiet", "--seed", "3"])
    >>> args.command, args.quiet, args.seed, args.out
    ('demo', True, 3, 'runs/demo')
  """
  parser = build_parser()
  args = parser.parse_args(argv)
  if args.command in ("demo", "run"):
    return _study(args)
  if args.command in ("sweep", "tradeoff"):
    return _sweep(args)
  return _certify_testbed(args)
