"""Tests for unlearn_jax.testbed (THEORY §5) and the soundness of unlearn_jax.bounds on it (§4)."""

from __future__ import annotations

import math

import jax
import numpy as np
import pytest
import scipy.integrate
import scipy.linalg
import scipy.stats
from hypothesis import HealthCheck, given, settings
from hypothesis import strategies as st

from unlearn_jax.certify import bounds, testbed_table
from unlearn_jax.certify import testbed as tb
from unlearn_jax.evaluate import statistics

# --- Gaussian Rényi divergence vs independent references ---------------------------------------


def renyi_1d_closed_form(alpha, m1, s1, m2, s2):
  """1-D closed form (Gil, Alajaji, Linder 2013), variances s1, s2."""
  sa = alpha * s2 + (1 - alpha) * s1
  if sa <= 0:
    return math.inf
  return (
    math.log(math.sqrt(s2) / math.sqrt(s1)) + math.log(s2 / sa) / (2 * (alpha - 1)) + alpha * (m1 - m2) ** 2 / (2 * sa)
  )


def renyi_1d_quad(alpha, m1, s1, m2, s2):
  p = scipy.stats.norm(m1, math.sqrt(s1))
  q = scipy.stats.norm(m2, math.sqrt(s2))
  lo = min(m1, m2) - 40 * math.sqrt(max(s1, s2))
  hi = max(m1, m2) + 40 * math.sqrt(max(s1, s2))
  f = lambda x: math.exp(alpha * p.logpdf(x) + (1 - alpha) * q.logpdf(x))
  mid = 0.5 * (m1 + m2)
  val = sum(scipy.integrate.quad(f, a, b, limit=400, epsabs=0, epsrel=1e-12)[0] for a, b in [(lo, mid), (mid, hi)])
  return math.log(val) / (alpha - 1)


@pytest.mark.parametrize(
  "alpha, m1, s1, m2, s2",
  [
    (2.0, 0.0, 1.0, 1.0, 1.0),
    (1.5, 0.3, 0.5, -0.2, 0.9),
    (4.0, 1.0, 0.8, 0.0, 1.3),
    (8.0, -0.5, 0.2, 0.5, 0.25),
    (3.0, 0.0, 2.0, 0.1, 1.0),  # S_alpha = 3 - 4 = -1 < 0: infinite
  ],
)
def test_gaussian_renyi_1d(alpha, m1, s1, m2, s2):
  got = tb.gaussian_renyi(alpha, [m1], [[s1]], [m2], [[s2]])
  want = renyi_1d_closed_form(alpha, m1, s1, m2, s2)
  if math.isinf(want):
    assert got == math.inf
    return
  assert got == pytest.approx(want, rel=1e-10)
  assert got == pytest.approx(renyi_1d_quad(alpha, m1, s1, m2, s2), rel=1e-8)


def test_gaussian_renyi_2d_numerical_integration():
  alpha = 2.5
  mu1, mu2 = np.array([0.3, -0.2]), np.array([0.0, 0.4])
  S1 = np.array([[0.6, 0.2], [0.2, 0.5]])
  S2 = np.array([[0.8, -0.1], [-0.1, 0.7]])
  p = scipy.stats.multivariate_normal(mu1, S1)
  q = scipy.stats.multivariate_normal(mu2, S2)
  xs = np.linspace(-9, 9, 1201)
  gx, gy = np.meshgrid(xs, xs, indexing="ij")
  pts = np.stack([gx, gy], -1)
  integrand = np.exp(alpha * p.logpdf(pts) + (1 - alpha) * q.logpdf(pts))
  h = xs[1] - xs[0]
  val = scipy.integrate.simpson(scipy.integrate.simpson(integrand, dx=h, axis=1), dx=h)
  want = math.log(val) / (alpha - 1)
  assert tb.gaussian_renyi(alpha, mu1, S1, mu2, S2) == pytest.approx(want, rel=1e-7)


def test_gaussian_renyi_batched_and_errors():
  mu = np.array([[0.0], [1.0], [2.0]])
  S = np.ones((3, 1, 1))
  got = tb.gaussian_renyi(2.0, mu, S, np.zeros(1), np.eye(1))
  np.testing.assert_allclose(got, [0.0, 1.0, 4.0], rtol=1e-13, atol=1e-15)
  with pytest.raises(ValueError, match="alpha"):
    tb.gaussian_renyi(1.0, [0.0], [[1.0]], [0.0], [[1.0]])


# --- laws ----------------------------------------------------------------------------------------


def _loop_law(problem, mu0, S0, T, eta, tau):
  """THEORY §5 recursion, step by step (independent of the eigenbasis closed form)."""
  M = np.eye(problem.A.shape[0]) - eta * problem.A
  mu, S = np.array(mu0, float), np.array(S0, float)
  for _ in range(T):
    mu = M @ mu + eta * problem.c
    S = M @ S @ M.T + 2 * eta * tau * np.eye(len(mu))
  return mu, S


def test_law_after_matches_recursion_and_remove_is_mean_over_retained():
  p = tb.make_outlier_problem(n=9, d=3, seed=2)
  rng = np.random.default_rng(0)
  mu0 = rng.normal(size=3)
  B = rng.normal(size=(3, 3))
  S0 = B @ B.T
  for T in [0, 1, 7, 150]:
    mu, S = tb.gaussian_law_after(p, mu0, S0, T, 0.07, 0.3)
    mu_r, S_r = _loop_law(p, mu0, S0, T, 0.07, 0.3)
    np.testing.assert_allclose(mu, mu_r, rtol=1e-10, atol=1e-12)
    np.testing.assert_allclose(S, S_r, rtol=1e-10, atol=1e-12)
  mus, Ss = tb.gaussian_law_after(p, mu0, S0, np.array([1, 7]), 0.07, 0.3)
  np.testing.assert_allclose(Ss[1], _loop_law(p, mu0, S0, 7, 0.07, 0.3)[1], rtol=1e-10)
  q = p.remove(4)
  X, y = np.delete(p.X, 4, 0), np.delete(p.y, 4)
  np.testing.assert_allclose(q.A, X.T @ X / 8 + p.lam * np.eye(3), rtol=1e-13)
  np.testing.assert_allclose(q.c, X.T @ y / 8, rtol=1e-13)


def test_stationary_law_solves_lyapunov():
  p = tb.make_outlier_problem(n=12, d=3, seed=3)
  eta, tau = 0.9 / np.linalg.eigvalsh(p.A)[-1], 0.2
  mu, S = tb.stationary_law(p, eta, tau)
  M = np.eye(3) - eta * p.A
  np.testing.assert_allclose(S, M @ S @ M.T + 2 * eta * tau * np.eye(3), rtol=1e-11, atol=1e-14)
  np.testing.assert_allclose(S, scipy.linalg.solve_discrete_lyapunov(M, 2 * eta * tau * np.eye(3)), rtol=1e-9)
  np.testing.assert_allclose(mu, np.linalg.solve(p.A, p.c), rtol=1e-12)
  np.testing.assert_allclose(mu, M @ mu + eta * p.c, rtol=1e-12)
  with pytest.raises(ValueError, match="stationary"):
    tb.stationary_law(p, 2.5 / np.linalg.eigvalsh(p.A)[-1], tau)


def test_exact_steps_is_first_crossing():
  p = tb.make_outlier_problem(n=10, d=2, seed=0)
  args = (2.0, 0.05, 300, 0.05, 0.01, np.zeros(2), np.eye(2))
  k = tb.exact_steps_to_unlearn(p, 0, *args)
  assert 0 < k < math.inf
  alpha, eps, T, eta, tau, mu0, S0 = args
  d = [tb.per_instance_exact(p, 0, alpha, T, kk, eta, tau, mu0, S0)["exact"] for kk in (k - 1, k)]
  assert d[0] > eps >= d[1]


# --- soundness of the per-instance theorem on random instances -------------------------------------

_COUNT = {"instances": 0, "cases": 0}
_PAD = 10  # the largest n drawn


@st.composite
def instances(draw):
  n = draw(st.integers(3, 10))
  d = draw(st.integers(1, 3))
  seed = draw(st.integers(0, 2**31 - 1))
  rng = np.random.default_rng(seed)
  X = rng.normal(size=(n, d))
  y = X @ rng.normal(size=d) + 0.3 * rng.normal(size=n)
  num_out = draw(st.integers(0, 2))
  scale = draw(st.floats(1.0, 10.0))
  X[:num_out] *= scale
  y[:num_out] = -np.sign(rng.normal(size=num_out) + 0.1) * scale**2
  lam = draw(st.floats(1e-2, 1.0))
  problem = tb.RidgeProblem.from_data(X, y, lam)
  lmax = float(np.linalg.eigvalsh(problem.A)[-1])
  eta = draw(st.floats(0.05, 1.9)) / lmax  # stable chain for D; D' checked below
  tau = draw(st.floats(1e-3, 1.0))
  T = draw(st.one_of(st.integers(0, 40), st.integers(0, 400)))  # short runs: far from stationarity
  k = draw(st.one_of(st.integers(0, 40), st.integers(0, 400)))
  alpha = draw(st.sampled_from([1.25, 1.5, 2.0, 3.0, 4.0, 8.0]))
  s0 = draw(st.floats(1e-2, 10.0))
  mu0 = rng.normal(size=d)
  return problem, eta, tau, T, k, alpha, mu0, s0 * np.eye(d)


@settings(
  max_examples=210,
  deadline=None,
  derandomize=True,
  suppress_health_check=[HealthCheck.too_slow, HealthCheck.data_too_large],
)
@given(instances())
def _bound_sound_on_instance(inst):
  problem, eta, tau, T, k, alpha, mu0, S0 = inst
  qs, idx = [], []
  for i in range(problem.num_examples):
    try:
      qs.append(tb.per_instance_exact(problem, i, alpha, T, k, eta, tau, mu0, S0))
      idx.append(i)
    except ValueError:  # D' chain unstable (no stationary law): the theorem does not apply
      continue
  if not qs:
    return
  # pad to a fixed length so that jax's eager ops see one shape for every instance (no recompiles)
  pad = lambda v, fill: np.concatenate([v, np.full(_PAD - len(v), fill)])
  get = lambda key, fill=0.0: pad(np.array([q[key] for q in qs]), fill)  # padding: D = 0, C = 1
  P, E1, E2, C, exact = get("P"), get("E1"), get("E2"), get("C_LSI", 1.0), get("exact")
  with jax.enable_x64(True):
    kw = dict(alpha=alpha, step_size=eta, temperature=tau, lsi_constant=C)
    bound = np.asarray(bounds.unlearning_bound(P, k, e1=E1, e2=E2, **kw))
    contraction = np.asarray(
      bounds.contraction_factor(k, alpha=2 * alpha, step_size=eta, temperature=tau, lsi_constant=C)
    )
    tri1 = np.asarray(bounds.weak_triangle(get("D2a_rhok_nu"), E2, alpha))
    tri2 = np.asarray(bounds.weak_triangle(P, E1, 2 * alpha))
  tol = lambda x: x * (1 + 1e-9) + 1e-12
  # the theorem: bound with exact inputs >= exact divergence, every example
  assert np.all(bound >= exact / (1 + 1e-9) - 1e-12), (bound, exact)
  # its three steps: triangle through nu', contraction at order 2 alpha, triangle through pi_T(D')
  assert np.all(exact <= tol(tri1))
  assert np.all(get("D2a_rhok_nu") <= tol(contraction * get("D2a_rho0_nu")))
  assert np.all(get("D2a_rho0_nu") <= tol(tri2))
  assert np.all(np.isfinite(bound) | np.isinf(P) | np.isinf(E1) | np.isinf(E2))
  assert not np.any(np.isnan(bound))
  # the certified steps drive the bound (hence the exact divergence) below any reachable target
  eps = float(np.max(E2)) + 0.05
  with jax.enable_x64(True):
    kstar = np.asarray(bounds.steps_to_unlearn(P, eps, e1=E1, e2=E2, **kw))
  i = int(np.argmax(P[: len(qs)]))  # the hardest example: exact divergence after k* steps meets the target
  if math.isfinite(kstar[i]):
    laws = tb.unlearned_laws(problem, idx[i], T, int(kstar[i]), eta, tau, mu0, S0)
    assert tb.gaussian_renyi(alpha, *laws["unlearned"], *laws["oracle"]) <= eps * (1 + 1e-9)
  _COUNT["instances"] += 1
  _COUNT["cases"] += len(qs)
  real = exact[: len(qs)]
  _COUNT["nontrivial"] = _COUNT.get("nontrivial", 0) + int(np.sum(np.isfinite(real) & (real > 1e-6)))


@pytest.mark.slow
def test_bound_sound_on_random_instances():
  """THEORY §4 on >= 200 hypothesis-drawn testbed instances: bound >= exact divergence, every step."""
  _COUNT["instances"] = _COUNT["cases"] = _COUNT["nontrivial"] = 0
  _bound_sound_on_instance()  # hypothesis runs every drawn instance (derandomized)
  # guard against hypothesis silently running few cases, or a vacuous test
  assert _COUNT["instances"] >= 200, _COUNT
  # a large share of the cases test a positive divergence (41% of the 1,181 cases of the current
  # derandomized draw; the draw changes with the test's source text)
  assert _COUNT["nontrivial"] >= 0.3 * _COUNT["cases"], _COUNT


# --- per-instance vs worst case -------------------------------------------------------------------


def test_certify_table_small():
  p = tb.make_outlier_problem(n=12, d=2, seed=0)
  rows, summary = testbed_table.certify_testbed_table(p, alpha=2.0, eps=0.05, T=800, step_size=0.05, temperature=0.01)
  assert len(rows) == 12 and summary["sound"]
  # soundness row by row, and k* matches bounds.steps_to_unlearn with the exact inputs
  for r in rows:
    assert r.certified_steps >= r.exact_steps
    q = tb.per_instance_exact(p, r.index, 2.0, 800, 0, 0.05, 0.01, np.zeros(2), np.eye(2))
    assert r.privacy_loss_4alpha == pytest.approx(q["P"], rel=1e-12)
  # the outlier (index 0) is the hardest example
  assert rows[0].privacy_loss_4alpha == max(r.privacy_loss_4alpha for r in rows)
  assert rows[0].exact_steps == max(r.exact_steps for r in rows)
  # worst-case K uses C = max per-example gradient norm at the stationary mean
  theta = np.linalg.solve(p.A, p.c)
  C = max(np.linalg.norm(p.X[i]) * abs(p.X[i] @ theta - p.y[i]) for i in range(12))
  assert summary["clip_norm"] == pytest.approx(C, rel=1e-12)
  text = testbed_table.format_table(rows, summary)
  assert "k* < K" in text and len(text.splitlines()) == 12 + 6


# --- the realized ledger against the exact divergence (THEORY §3 check) ---------------------------


def numpy_realized(problem, orders, T, eta, tau, num_seeds, seed, mu0, S0):
  """Float64 NumPy stand-in for SGLD + ledger: full batch, no clip, §2a costs summed every step."""
  rng = np.random.default_rng(seed)
  X, y = problem.X, problem.y
  n, d = X.shape
  w, V = np.linalg.eigh(S0)
  theta = mu0 + rng.normal(size=(num_seeds, d)) @ (V * np.sqrt(w)).T
  acc = np.zeros((num_seeds, n))
  for _ in range(T):
    g = (theta @ X.T - y)[:, :, None] * X[None]  # (R, n, d) per-example grads
    gbar = g.mean(1)
    acc += ((g - gbar[:, None]) ** 2).sum(-1)
    theta = theta - eta * (gbar + problem.lam * theta) + math.sqrt(2 * eta * tau) * rng.normal(size=(num_seeds, d))
  return (acc[:, :, None] * np.asarray(orders) * eta / (4 * tau * (n - 1) ** 2)).mean(0)


def _exact_grid(problem, orders, T, eta, tau, mu0, S0):
  trained = tb.gaussian_law_after(problem, mu0, S0, T, eta, tau)
  return np.array(
    [
      [tb.gaussian_renyi(a, *trained, *tb.gaussian_law_after(problem.remove(i), mu0, S0, T, eta, tau)) for a in orders]
      for i in range(problem.num_examples)
    ]
  )


def test_realized_sum_standin_ranks_like_exact():
  p = tb.make_outlier_problem(n=20, d=3, seed=0)
  orders, T, eta, tau = (2.0, 4.0), 1000, 0.05, 0.01
  realized = numpy_realized(p, orders, T, eta, tau, 32, 0, np.zeros(3), np.eye(3))
  exact = _exact_grid(p, orders, T, eta, tau, np.zeros(3), np.eye(3))
  for j in range(len(orders)):
    assert statistics.spearman(realized[:, j], exact[:, j]) >= 0.8
    assert np.mean(realized[:, j] >= exact[:, j]) >= 0.8


def test_project_sgld_ledger_against_exact():
  p = tb.make_outlier_problem(n=20, d=3, seed=0)
  orders, T, eta, tau = (2.0, 4.0), 1000, 0.05, 0.01
  r = tb.realized_vs_exact(p, orders=orders, T=T, step_size=eta, temperature=tau, num_seeds=32)
  np.testing.assert_allclose(r["exact"], _exact_grid(p, orders, T, eta, tau, np.zeros(3), np.eye(3)), rtol=1e-12)
  assert np.all(r["spearman"] >= 0.8), r["spearman"]
  assert np.all(r["fraction_realized_ge_exact"] >= 0.8), r["fraction_realized_ge_exact"]
  # the project's ledger agrees with the NumPy stand-in's seed average (different noise draws):
  # per example within 5 standard errors of the 32-seed mean, plus a small relative slack
  standin = numpy_realized(p, orders, T, eta, tau, 32, 1, np.zeros(3), np.eye(3))
  se = r["realized_std"] / math.sqrt(32)
  assert np.all(np.abs(r["realized_mean"] - standin) <= 5 * np.sqrt(2) * se + 0.02 * standin)
