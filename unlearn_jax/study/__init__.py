"""The end-to-end study: a typed config, the stages, the report and figures, and the ``unlearn-jax`` command.

- :mod:`~unlearn_jax.study.config`: the typed, strict configuration (TOML / JSON);
- :mod:`~unlearn_jax.study.stages`: setup, training with the ledger, certificates, metrics, forget sets;
- :mod:`~unlearn_jax.study.unlearning`: oracles, every unlearning method and their evaluation;
- :mod:`~unlearn_jax.study.findings`: correlations and the paper's claims with verdicts;
- :mod:`~unlearn_jax.study.report`, :mod:`~unlearn_jax.study.figures`: the outputs;
- :mod:`~unlearn_jax.study.pipeline`: :func:`run`, the stages in order;
- :mod:`~unlearn_jax.study.saved`: the saved parameter trees and :func:`load` of a finished run;
- :mod:`~unlearn_jax.study.cli`: the command line.
"""

from unlearn_jax.study.config import Config, ConfigError, demo_config
from unlearn_jax.study.pipeline import OutputDirError, run
from unlearn_jax.study.report import write_per_example_csv, write_report_json, write_report_md
from unlearn_jax.study.saved import StudyResults, load
from unlearn_jax.study.stages import DataMissingError

__all__ = [
  "Config",
  "ConfigError",
  "DataMissingError",
  "OutputDirError",
  "StudyResults",
  "demo_config",
  "load",
  "run",
  "write_per_example_csv",
  "write_report_json",
  "write_report_md",
]
