"""unlearn_jax: per-instance privacy accounting and certified machine unlearning in JAX.

Re-exports only; importing does no work. The modules, one idea each:

- ``per_example``: per-example gradients, norms (vmap / ghost), clipping, inner products.
- ``sgld``: the module; ``sgld.sgld(...)`` builds the noisy step as an ``(init, step)`` pair and an optax Langevin-noise transform.
- ``accounting``: per-step per-instance Rényi costs, sampled-Gaussian RDP, the ledger, RDP -> DP.
- ``bounds``: the per-instance unlearning theorem, steps to unlearn, worst-case baseline, calibration.
- ``testbed``: the exact linear-Gaussian testbed (float64).
- ``loops`` / ``checkpoint``: train / unlearn / retrain drivers with resumable checkpoints.
- ``metrics`` / ``evaluation`` / ``selection``: difficulty metrics, barriers, membership ε, forget sets.
- ``data`` / ``models``: built-in data sets, CIFAR-10 / SVHN loaders, flax models.
- ``distributed``: device meshes and shardings.
- ``experiment`` / ``plots`` / ``cli``: the end-to-end study and the ``unlearn-jax`` command.
"""

from unlearn_jax import accounting
from unlearn_jax import bounds
from unlearn_jax import checkpoint
from unlearn_jax import data
from unlearn_jax import distributed
from unlearn_jax import evaluation
from unlearn_jax import loops
from unlearn_jax import metrics
from unlearn_jax import models
from unlearn_jax import per_example
from unlearn_jax import selection
from unlearn_jax import sgld
from unlearn_jax import testbed
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
)
from unlearn_jax.bounds import (
    lsi_constant_strongly_convex,
    steps_to_unlearn,
    steps_to_unlearn_continuous,
    steps_to_unlearn_dp,
    unlearning_bound,
    worst_case_steps,
)
from unlearn_jax.evaluation import (
    empirical_steps_to_unlearn,
    is_unlearned,
    loss_barrier,
    membership_epsilon,
)
from unlearn_jax.loops import retrain, train, unlearn
from unlearn_jax.metrics import spearman
from unlearn_jax.per_example import (
    clip_per_example,
    clipped_grad_sum,
    per_example_grad_norms,
    per_example_grads,
    per_example_inner,
)
from unlearn_jax.selection import select_forget_set
from unlearn_jax.sgld import SGLDInfo, SGLDState, langevin_noise, step_costs

__version__ = "0.1.0"

__all__ = [
    "AccountingConfig",
    "DEFAULT_ORDERS",
    "Ledger",
    "SGLDInfo",
    "SGLDState",
    "__version__",
    "accountant",
    "accounting",
    "average_ledgers",
    "bounds",
    "checkpoint",
    "clip_per_example",
    "clipped_grad_sum",
    "data",
    "distributed",
    "empirical_steps_to_unlearn",
    "evaluation",
    "gaussian_rdp",
    "group_privacy_loss",
    "is_unlearned",
    "langevin_noise",
    "ledger_init",
    "ledger_update",
    "loops",
    "loss_barrier",
    "lsi_constant_strongly_convex",
    "membership_epsilon",
    "metrics",
    "models",
    "per_example",
    "per_example_grad_norms",
    "per_example_grads",
    "per_example_inner",
    "rdp_to_dp",
    "retrain",
    "sampled_gaussian_rdp",
    "select_forget_set",
    "selection",
    "sgld",
    "spearman",
    "step_costs",
    "steps_to_unlearn",
    "steps_to_unlearn_continuous",
    "steps_to_unlearn_dp",
    "testbed",
    "train",
    "unlearn",
    "unlearning_bound",
    "worst_case_steps",
]
