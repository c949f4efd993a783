"""The ``unlearn-jax`` command line.

Subcommands:

- ``demo``: the whole study on scikit-learn's bundled digits (MLP), sized for a laptop CPU;
- ``run --config FILE``: the study described by a TOML or JSON config (see ``configs/``);
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
from collections.abc import Sequence

from unlearn_jax import runtime
from unlearn_jax.certify import testbed, testbed_table
from unlearn_jax.runtime import checkpoint
from unlearn_jax.study import config as config_lib
from unlearn_jax.study import pipeline, stages

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
  sub = parser.add_subparsers(dest="command", metavar="{demo,run,certify-testbed}")
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


def _error(msg: str, code: int) -> int:
  print(f"unlearn-jax: error: {msg}", file=sys.stderr)
  return code


def _study(args: argparse.Namespace) -> int:
  try:
    if args.command == "demo":
      config = config_lib.demo_config()
    else:
      config = config_lib.Config.from_file(args.config)
    overrides = {}
    if args.seed is not None:
      overrides["seed"] = args.seed
    if args.devices is not None:
      overrides["devices"] = args.devices
    if args.out is not None:
      overrides["out_dir"] = args.out
    if args.data_dir is not None:
      overrides["data__data_dir"] = args.data_dir
    if overrides:
      config = config.replace(**overrides)
  except config_lib.ConfigError as e:
    return _error(str(e), EXIT_CONFIG)

  try:
    report = pipeline.run(config, progress=not args.quiet, fresh=args.fresh)
  except config_lib.ConfigError as e:
    return _error(str(e), EXIT_CONFIG)
  except pipeline.OutputDirError as e:
    return _error(str(e), EXIT_OUTPUT)
  except stages.DataMissingError as e:
    return _error(str(e), EXIT_DATA)
  except runtime.DivergenceError as e:
    return _error(str(e), EXIT_DIVERGED)
  except checkpoint.CheckpointError as e:
    return _error(str(e).replace("pass fresh=True (the command line's --fresh)", "pass --fresh"), EXIT_OUTPUT)
  except OSError as e:  # the outputs or checkpoints could not be written: disk full, read-only, permissions
    where = f" ({e.filename})" if e.filename else ""
    return _error(f"cannot write to the output directory {config.out_dir!r}: {e.strerror or e}{where}", EXIT_OUTPUT)
  except runtime.Interrupted as e:
    print(
      f"unlearn-jax: {e}; checkpoints are in {config.out_dir}/checkpoints and the same command resumes from them",
      file=sys.stderr,
    )
    return e.exit_code
  except KeyboardInterrupt:
    print(
      f"unlearn-jax: interrupted; checkpoints (if any) are in {config.out_dir}/checkpoints and "
      "the same command resumes from them",
      file=sys.stderr,
    )
    return EXIT_INTERRUPTED
  if not args.quiet:
    out = pathlib.Path(config.out_dir)
    print(
      f"wrote {out / 'report.md'}, {out / 'report.json'}, {out / 'per_example.csv'} "
      f"and {len(report.get('figures', {}))} figures"
    )
  return 0


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
  return _certify_testbed(args)
