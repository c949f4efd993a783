"""Per-instance privacy accounting (theory §2, §3): RDP numerics, per-step costs, the ledger, conversions.

- :mod:`~unlearn_jax.accounting.sgm`: the sampled Gaussian mechanism's RDP (and its fractional-order
  kernels in :mod:`~unlearn_jax.accounting.sgm_fractional`);
- :mod:`~unlearn_jax.accounting.costs`: the per-step costs ε_t(x; α) of §2a / §2b and their worst cases;
- :mod:`~unlearn_jax.accounting.ledger`: the ledger P(x, α), the individual Rényi filter, the group bound;
- :mod:`~unlearn_jax.accounting.conversions`: RDP → (ε, δ);
- :mod:`~unlearn_jax.accounting.dpsgd`: DP-SGD's noise multiplier and batch size ↔ temperature, and
  (ε, δ) per example as DP-SGD users read it.

Everything is a pure ``jax.numpy`` function: it composes under ``jit``, ``vmap`` and ``grad`` and runs
inside the jitted training step.
"""

from unlearn_jax.accounting.conversions import max_steps_for_epsilon, rdp_to_dp
from unlearn_jax.accounting.costs import (
  fixed_step_costs,
  full_batch_costs,
  full_batch_worst_case_cost,
  mean_step_costs,
  poisson_costs,
  poisson_worst_case_cost,
  step_costs,
)
from unlearn_jax.accounting.dpsgd import (
  EpsilonReport,
  epsilon_report,
  format_epsilon_report,
  noise_multiplier_from_temperature,
  temperature_from_noise_multiplier,
)
from unlearn_jax.accounting.ledger import (
  AccountingConfig,
  Ledger,
  accountant,
  average_ledgers,
  check_ledger,
  filter_admits,
  group_factor,
  group_privacy_loss,
  ledger_add_rows,
  ledger_init,
  ledger_skip,
  ledger_update,
)
from unlearn_jax.accounting.sgm import (
  DEFAULT_NUM_TERMS,
  DEFAULT_ORDERS,
  gaussian_rdp,
  monotone_in_order,
  sampled_gaussian_rdp,
)

__all__ = [
  "DEFAULT_NUM_TERMS",
  "DEFAULT_ORDERS",
  "AccountingConfig",
  "EpsilonReport",
  "epsilon_report",
  "format_epsilon_report",
  "noise_multiplier_from_temperature",
  "temperature_from_noise_multiplier",
  "Ledger",
  "accountant",
  "average_ledgers",
  "check_ledger",
  "filter_admits",
  "fixed_step_costs",
  "full_batch_costs",
  "full_batch_worst_case_cost",
  "gaussian_rdp",
  "group_factor",
  "group_privacy_loss",
  "ledger_init",
  "ledger_add_rows",
  "ledger_skip",
  "ledger_update",
  "max_steps_for_epsilon",
  "mean_step_costs",
  "monotone_in_order",
  "poisson_costs",
  "poisson_worst_case_cost",
  "rdp_to_dp",
  "sampled_gaussian_rdp",
  "step_costs",
]
