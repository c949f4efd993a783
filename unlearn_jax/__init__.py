"""unlearn_jax: per-instance privacy accounting and certified machine unlearning in JAX.

Re-exports only; importing does no work. "theory §N" in the docstrings is section N of the project's
``docs/theory.md``, where every formula is written out. The folders follow the pipeline:

- ``per_example``: per-example gradients, norms (vmap / ghost), clipping, inner products.
- ``algorithms``: the step protocol, batch selection, the noisy update, SGLD, the unlearning methods,
  optax-driven training.
- ``accounting``: sampled-Gaussian RDP, per-step per-instance costs, the ledger, RDP -> (ε, δ).
- ``certify``: the per-instance unlearning theorem, steps to unlearn, calibration, the exact testbed.
- ``evaluate``: loss barriers, the output-distribution test, membership ε, difficulty metrics,
  forget-set selection, statistics.
- ``runtime``: the ``train`` / ``retrain`` / ``unlearn`` drivers, checkpoints, devices.
- ``data`` / ``models``: data sets and models, with registries.
- ``study``: the end-to-end study, its report and figures, and the ``unlearn-jax`` command.
"""

from unlearn_jax import accounting, algorithms, certify, data, evaluate, models, per_example, runtime
from unlearn_jax._traced import raise_under_jit
from unlearn_jax.accounting import (
  DEFAULT_ORDERS,
  AccountingConfig,
  Ledger,
  accountant,
  average_ledgers,
  gaussian_rdp,
  group_privacy_loss,
  ledger_init,
  ledger_update,
  rdp_to_dp,
  sampled_gaussian_rdp,
  step_costs,
)
from unlearn_jax.algorithms import Algorithm, SGLDState, StepInfo, langevin_noise, sgld
from unlearn_jax.certify import (
  lsi_constant_strongly_convex,
  steps_to_unlearn,
  steps_to_unlearn_continuous,
  steps_to_unlearn_dp,
  unlearning_bound,
  worst_case_steps,
)
from unlearn_jax.evaluate import (
  empirical_steps_to_unlearn,
  is_unlearned,
  loss_barrier,
  membership_epsilon,
  membership_lower_bound,
  select_forget_set,
  spearman,
)
from unlearn_jax.per_example import (
  clip_per_example,
  clipped_grad_sum,
  per_example_grad_norms,
  per_example_grads,
  per_example_inner,
)
from unlearn_jax.runtime import retrain, train, unlearn

__version__ = "0.1.0"

__all__ = [
  "DEFAULT_ORDERS",
  "AccountingConfig",
  "Algorithm",
  "Ledger",
  "SGLDState",
  "StepInfo",
  "__version__",
  "accountant",
  "accounting",
  "algorithms",
  "average_ledgers",
  "certify",
  "clip_per_example",
  "clipped_grad_sum",
  "data",
  "empirical_steps_to_unlearn",
  "evaluate",
  "gaussian_rdp",
  "group_privacy_loss",
  "is_unlearned",
  "langevin_noise",
  "ledger_init",
  "ledger_update",
  "loss_barrier",
  "lsi_constant_strongly_convex",
  "membership_epsilon",
  "membership_lower_bound",
  "models",
  "per_example",
  "per_example_grad_norms",
  "per_example_grads",
  "per_example_inner",
  "raise_under_jit",
  "rdp_to_dp",
  "retrain",
  "runtime",
  "sampled_gaussian_rdp",
  "select_forget_set",
  "sgld",
  "spearman",
  "step_costs",
  "steps_to_unlearn",
  "steps_to_unlearn_continuous",
  "steps_to_unlearn_dp",
  "train",
  "unlearn",
  "unlearning_bound",
  "worst_case_steps",
]
