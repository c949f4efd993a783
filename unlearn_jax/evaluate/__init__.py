"""Empirical evaluation (theory §6): is a model unlearned, how hard is an example, which ones to forget.

- :mod:`~unlearn_jax.evaluate.scores`: logit-scaled confidence, accuracy and loss of trained models;
- :mod:`~unlearn_jax.evaluate.barrier`: loss barriers along the straight line between two models;
- :mod:`~unlearn_jax.evaluate.distribution`: the output-distribution test of "unlearned" and the
  empirical steps to unlearn;
- :mod:`~unlearn_jax.evaluate.membership`: membership-inference ε, point estimate and lower bound;
- :mod:`~unlearn_jax.evaluate.metrics`: difficulty metrics, a registry with each one's direction;
- :mod:`~unlearn_jax.evaluate.selection`: forget sets by any per-example score;
- :mod:`~unlearn_jax.evaluate.statistics`: rank correlation.
"""

from unlearn_jax.evaluate import barrier, distribution, membership, metrics, scores, selection, statistics
from unlearn_jax.evaluate.barrier import barriers_along, loss_barrier
from unlearn_jax.evaluate.distribution import (
  DEFAULT_MIN_VARIANCE,
  StepsToUnlearn,
  TestPower,
  UnlearnedTest,
  empirical_steps_to_unlearn,
  gaussian_symmetric_kl,
  is_unlearned,
  noise_floor,
  unlearned_test_power,
)
from unlearn_jax.evaluate.membership import membership_epsilon, membership_lower_bound, membership_resolvable_cap
from unlearn_jax.evaluate.metrics import METRICS, Metric, MetricInputs, register_metric
from unlearn_jax.evaluate.scores import (
  SplitMetrics,
  accuracy_and_loss,
  logit_confidence,
  logit_confidence_from_logits,
  scores_along,
  split_report,
)
from unlearn_jax.evaluate.selection import select_forget_set
from unlearn_jax.evaluate.statistics import rankdata_average, spearman

__all__ = [
  "DEFAULT_MIN_VARIANCE",
  "METRICS",
  "Metric",
  "MetricInputs",
  "SplitMetrics",
  "StepsToUnlearn",
  "TestPower",
  "UnlearnedTest",
  "accuracy_and_loss",
  "barrier",
  "barriers_along",
  "distribution",
  "empirical_steps_to_unlearn",
  "gaussian_symmetric_kl",
  "is_unlearned",
  "logit_confidence",
  "logit_confidence_from_logits",
  "loss_barrier",
  "membership",
  "membership_epsilon",
  "membership_lower_bound",
  "membership_resolvable_cap",
  "metrics",
  "noise_floor",
  "unlearned_test_power",
  "rankdata_average",
  "register_metric",
  "scores",
  "scores_along",
  "select_forget_set",
  "selection",
  "spearman",
  "split_report",
  "statistics",
]
