"""Certificates (theory §4, §5): the per-instance unlearning theorem, calibration, the exact testbed.

- :mod:`~unlearn_jax.certify.bounds`: the bound on D_α(ρ_k ‖ π_T(D')), certified steps to unlearn an
  example or a forget set, their (ε, δ) form;
- :mod:`~unlearn_jax.certify.worst_case`: Chien et al.'s worst-case baseline;
- :mod:`~unlearn_jax.certify.calibration`: the temperature, step size or steps that meet a step budget;
- :mod:`~unlearn_jax.certify.testbed`: the exact linear-Gaussian testbed (float64), where every quantity
  of §4 is known, and :mod:`~unlearn_jax.certify.testbed_table` its per-example table (exact vs
  certified vs worst-case steps).
"""

from unlearn_jax.certify import bounds, calibration, testbed, testbed_table, worst_case
from unlearn_jax.certify.bounds import (
  EXACT_CONSTANTS,
  STATIONARITY_ASSUMPTION,
  certificate_assumptions,
  contraction_factor,
  group_steps_to_unlearn,
  lsi_constant_strongly_convex,
  steps_to_unlearn,
  steps_to_unlearn_continuous,
  steps_to_unlearn_dp,
  unlearning_bound,
  weak_triangle,
)
from unlearn_jax.certify.calibration import (
  Calibration,
  calibrate_step_size,
  calibrate_steps,
  calibrate_temperature,
)
from unlearn_jax.certify.worst_case import worst_case_epsilon, worst_case_steps

__all__ = [
  "EXACT_CONSTANTS",
  "STATIONARITY_ASSUMPTION",
  "Calibration",
  "bounds",
  "calibrate_step_size",
  "calibrate_steps",
  "calibrate_temperature",
  "calibration",
  "certificate_assumptions",
  "contraction_factor",
  "group_steps_to_unlearn",
  "lsi_constant_strongly_convex",
  "steps_to_unlearn",
  "steps_to_unlearn_continuous",
  "steps_to_unlearn_dp",
  "testbed",
  "testbed_table",
  "unlearning_bound",
  "weak_triangle",
  "worst_case",
  "worst_case_epsilon",
  "worst_case_steps",
]
