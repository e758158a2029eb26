"""Likelihood layer: divergence estimators, change of variables along the ODE, bits per dim.

Ground truths: the trace of a known matrix, the Jacobian from ``torch.func``, the exact law of
Hutchinson's estimator (mean ``tr A``, variance ``2 sum_{i!=j} S_ij^2`` for Rademacher probes and
``2 ||S||_F^2`` for Gaussian ones, ``S = (A + A^T)/2``), affine flows whose log-determinant is
``t tr A``, and the Gaussian-mixture oracle field whose ``p_1`` is the mixture itself.
"""

from __future__ import annotations

import math

import pytest
import torch

from flowdiff.distributions import GaussianMixture, IsotropicGaussian
from flowdiff.models import likelihood
from flowdiff.models.likelihood import divergence, hutchinson_probes
from flowdiff.paths import GaussianMixtureOracle, GaussianPath

D64 = torch.float64


def linear_field(matrix: torch.Tensor, bias: torch.Tensor):
    """``u_t(x) = A vec(x) + b`` on any event shape (``A`` acts on the flattened event)."""

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        flat = x.flatten(1) @ matrix.T + bias
        return flat.reshape(x.shape)

    return field


def tanh_field(gen: torch.Generator, dim: int, hidden: int = 16):
    """A nonlinear, time-dependent field ``W2 tanh(W1 x + t c)`` on vectors ``(B, dim)``."""
    w1 = torch.randn(hidden, dim, generator=gen, dtype=D64) / math.sqrt(dim)
    w2 = torch.randn(dim, hidden, generator=gen, dtype=D64) / math.sqrt(hidden)
    c = torch.randn(hidden, generator=gen, dtype=D64)

    def field(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ w1.T + t[:, None] * c) @ w2.T

    return field


def jacobian_trace(field, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
    """Reference trace from the full per-sample Jacobian (``torch.func``)."""

    def one(xi: torch.Tensor, ti: torch.Tensor) -> torch.Tensor:
        return field(xi[None], ti[None])[0]

    jac = torch.func.vmap(torch.func.jacrev(one))(x, t)
    return jac.diagonal(dim1=-2, dim2=-1).sum(-1)


# ---------------------------------------------------------------- exact divergence
def test_exact_divergence_of_linear_field_is_trace_for_any_event_shape(gen):
    matrix = torch.randn(6, 6, generator=gen, dtype=D64)
    bias = torch.randn(6, generator=gen, dtype=D64)
    x = torch.randn(5, 2, 3, generator=gen, dtype=D64)
    field = linear_field(matrix, bias)
    div, value = divergence(field, x, torch.rand(5, generator=gen, dtype=D64))
    torch.testing.assert_close(div, torch.full((5,), float(matrix.trace()), dtype=D64))
    torch.testing.assert_close(value, field(x, None))
    assert not div.requires_grad and not value.requires_grad


@pytest.mark.parametrize("max_elements", [likelihood._MAX_COTANGENT_ELEMENTS, 7 * 10])
def test_exact_divergence_matches_full_jacobian_trace_also_in_chunks(
    gen, monkeypatch, max_elements
):
    # 7 * 10 cotangent entries with B=7, D=10 forces one basis vector per chunk (offset diagonals)
    monkeypatch.setattr(likelihood, "_MAX_COTANGENT_ELEMENTS", max_elements)
    field = tanh_field(gen, dim=10)
    x = torch.randn(7, 10, generator=gen, dtype=D64)
    t = torch.rand(7, generator=gen, dtype=D64)
    div, _ = divergence(field, x, t)
    torch.testing.assert_close(div, jacobian_trace(field, x, t))


def test_divergence_keeps_graph_with_create_graph(gen):
    # d/dA tr(A) = I: the gradient of the divergence w.r.t. the field's parameters flows back
    matrix = torch.randn(3, 3, generator=gen, dtype=D64, requires_grad=True)
    x = torch.randn(4, 3, generator=gen, dtype=D64)
    for method in ("exact", "hutchinson"):
        div, _ = divergence(
            linear_field(matrix, torch.zeros(3, dtype=D64)),
            x,
            torch.zeros(4, dtype=D64),
            method=method,
            probes=3,
            generator=gen,
            create_graph=True,
        )
        if method == "exact":
            (grad,) = torch.autograd.grad(div.sum(), matrix)
            torch.testing.assert_close(grad, 4 * torch.eye(3, dtype=D64))
        else:
            assert div.requires_grad


# ---------------------------------------------------------------- Hutchinson
@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_on_known_matrix_has_exact_mean_and_variance(gen, noise):
    dim, probes = 5, 40_000
    matrix = torch.randn(dim, dim, generator=gen, dtype=D64)
    sym = (matrix + matrix.T) / 2
    # law of eps^T A eps: Var = 2 ||S||_F^2 (Gaussian) or 2 sum_{i != j} S_ij^2 (Rademacher)
    off_diagonal = (sym**2).sum() - (sym.diagonal() ** 2).sum()
    variance = 2 * (sym**2).sum() if noise == "gaussian" else 2 * off_diagonal
    x = torch.zeros(probes, dim, dtype=D64)  # one probe per row: independent estimates
    est, _ = divergence(
        linear_field(matrix, torch.zeros(dim, dtype=D64)),
        x,
        torch.zeros(probes, dtype=D64),
        method="hutchinson",
        noise=noise,
        generator=gen,
    )
    std_err = math.sqrt(variance / probes)
    assert abs(float(est.mean() - matrix.trace())) < 4 * std_err
    # relative s.e. of a sample variance ~ sqrt((kurtosis - 1) / n) < 2% here: 10% is a wide margin
    assert float(est.var()) == pytest.approx(float(variance), rel=0.1)


@pytest.mark.parametrize("noise", ["rademacher", "gaussian"])
def test_hutchinson_agrees_with_exact_within_standard_errors(gen, noise):
    field = tanh_field(gen, dim=4)
    x = torch.randn(6, 4, generator=gen, dtype=D64)
    t = torch.rand(6, generator=gen, dtype=D64)
    exact, _ = divergence(field, x, t, method="exact")
    probes = 4000
    eps = hutchinson_probes(x, probes, noise, generator=gen)  # (K, B, D)
    mean, _ = divergence(field, x, t, method="hutchinson", eps=eps)
    # the K single-probe estimates per sample in one call (rows replicated K times), to
    # measure the standard error empirically
    singles, _ = divergence(
        field, x.repeat(probes, 1), t.repeat(probes), method="hutchinson", eps=eps.flatten(0, 1)
    )
    singles = singles.reshape(probes, len(x))
    torch.testing.assert_close(mean, singles.mean(0))
    std_err = singles.std(0) / math.sqrt(probes)
    assert bool(((mean - exact).abs() < 4 * std_err).all()), (mean - exact) / std_err


def test_fixed_probes_give_the_same_estimate_and_accept_one_probe_without_k_axis(gen):
    field = tanh_field(gen, dim=3)
    x = torch.randn(5, 3, generator=gen, dtype=D64)
    t = torch.rand(5, generator=gen, dtype=D64)
    eps = hutchinson_probes(x, 1, "gaussian", generator=gen)
    a, _ = divergence(field, x, t, method="hutchinson", eps=eps)
    b, _ = divergence(field, x, t, method="hutchinson", eps=eps[0])
    torch.testing.assert_close(a, b)
    # and the estimate is exactly eps^T J eps for the reference Jacobian
    jac = torch.func.vmap(torch.func.jacrev(lambda xi, ti: field(xi[None], ti[None])[0]))(x, t)
    torch.testing.assert_close(a, torch.einsum("bi,bij,bj->b", eps[0], jac, eps[0]))


def test_probes_have_identity_second_moment(gen):
    x = torch.zeros(20_000, 3)
    for noise in ("rademacher", "gaussian"):
        eps = hutchinson_probes(x, 1, noise, generator=gen)[0]
        torch.testing.assert_close(eps.T @ eps / len(eps), torch.eye(3), atol=0.05, rtol=0)
    assert set(hutchinson_probes(x, 2, generator=gen).unique().tolist()) == {-1.0, 1.0}


# ---------------------------------------------------------------- errors
def test_divergence_rejects_bad_input(gen):
    field = tanh_field(gen, dim=3)
    x = torch.randn(4, 3, dtype=D64)
    t = torch.zeros(4, dtype=D64)
    with pytest.raises(ValueError, match="method"):
        divergence(field, x, t, method="trace")
    with pytest.raises(ValueError, match="noise"):
        divergence(field, x, t, method="hutchinson", noise="uniform")
    with pytest.raises(ValueError, match="noise"):
        divergence(field, x, t, noise="uniform")  # even when unused
    with pytest.raises(ValueError, match="probes"):
        divergence(field, x, t, method="hutchinson", probes=0)
    with pytest.raises(ValueError, match=r"eps must have shape \(K, 4, 3\)"):
        divergence(field, x, t, method="hutchinson", eps=torch.ones(2, 4, 2, dtype=D64))
    with pytest.raises(ValueError, match="only used by method='hutchinson'"):
        divergence(field, x, t, eps=torch.ones(4, 3, dtype=D64))
    with pytest.raises(ValueError, match=r"shaped like x \(4, 3\), got \(4, 2\)"):
        divergence(lambda x, t: x[:, :2], x, t)
    with pytest.raises(ValueError, match="x must have at least 2"):
        divergence(field, torch.zeros(4), t)
    with pytest.raises(TypeError, match=r"x must be a torch\.Tensor"):
        divergence(field, [[0.0]], t)


# ---------------------------------------------------------------- log_prob along the flow
def affine_flow(matrix: torch.Tensor, bias: torch.Tensor) -> torch.Tensor:
    """``phi_1`` of ``dx/dt = A x + b`` in homogeneous coordinates: ``expm([[A, b], [0, 0]])``."""
    dim = matrix.shape[0]
    gen = torch.zeros(dim + 1, dim + 1, dtype=matrix.dtype)
    gen[:dim, :dim], gen[:dim, dim] = matrix, bias
    return torch.linalg.matrix_exp(gen)


def test_log_prob_of_affine_flow_matches_change_of_variables(gen):
    # log p_1(x) = log p_0(phi_1^{-1}(x)) - tr(A), on a (B, 2, 3) event shape
    matrix = 0.5 * torch.randn(6, 6, generator=gen, dtype=D64)
    bias = torch.randn(6, generator=gen, dtype=D64)
    flow = affine_flow(matrix, bias)
    x = torch.randn(16, 2, 3, generator=gen, dtype=D64)
    x_init = torch.linalg.solve(flow[:6, :6], (x.flatten(1) - flow[:6, 6]).T).T.reshape(x.shape)
    p_init = IsotropicGaussian((2, 3))
    expected = p_init.log_prob(x_init) - matrix.trace()
    got = likelihood.log_prob(linear_field(matrix, bias), x, p_init=p_init, rtol=1e-9, atol=1e-9)
    torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
    # fixed-step RK4 on the augmented state converges at order 4 (error ratio 2^4 = 16)
    errors = [
        (
            likelihood.log_prob(linear_field(matrix, bias), x, p_init=p_init, solver="rk4", steps=n)
            - expected
        )
        .abs()
        .max()
        for n in (8, 16)
    ]
    assert 12 < float(errors[0] / errors[1]) < 20


def test_fixed_probes_give_the_closed_form_estimate_in_both_directions(gen):
    """Affine field u = A x + b: with fixed probes eps_k the Hutchinson divergence is the
    constant (1/K) sum_k eps_k^T A eps_k, so log p_1(x) = log p_0(phi_1^{-1}(x)) minus it, in
    closed form; the same probes give the same value in every call and in the forward solve."""
    matrix = 0.5 * torch.randn(3, 3, generator=gen, dtype=D64)
    bias = torch.randn(3, generator=gen, dtype=D64)
    flow = affine_flow(matrix, bias)
    x = torch.randn(5, 3, generator=gen, dtype=D64)
    x_init = torch.linalg.solve(flow[:3, :3], (x - flow[:3, 3]).T).T
    p_init = IsotropicGaussian(3)
    tight = {"p_init": p_init, "rtol": 1e-9, "atol": 1e-9, "method": "hutchinson"}
    field = linear_field(matrix, bias)
    for k in (1, 4):
        eps = hutchinson_probes(x, k, "gaussian", generator=gen)
        estimate = torch.einsum("kbi,ij,kbj->b", eps, matrix, eps) / k
        expected = p_init.log_prob(x_init) - estimate
        assert float((expected - (p_init.log_prob(x_init) - matrix.trace())).abs().min()) > 1e-3
        got = likelihood.log_prob(field, x, eps=eps, **tight)
        torch.testing.assert_close(got, expected, atol=1e-6, rtol=0)
        torch.testing.assert_close(likelihood.log_prob(field, x, eps=eps, **tight), got)
        x1, forward = likelihood.sample_with_log_prob(field, x_init, eps=eps, **tight)
        torch.testing.assert_close(x1, x, atol=1e-6, rtol=0)
        torch.testing.assert_close(forward, expected, atol=1e-6, rtol=0)
    # a single probe may come without its K axis; exact divergence takes no probes
    torch.testing.assert_close(
        likelihood.log_prob(field, x, eps=eps[0], **tight),
        likelihood.log_prob(field, x, eps=eps[:1], **tight),
    )
    with pytest.raises(ValueError, match="only used by method='hutchinson'"):
        likelihood.log_prob(field, x, p_init=p_init, eps=eps)
    with pytest.raises(ValueError, match=r"eps must have shape \(K, 5, 3\)"):
        likelihood.log_prob(field, x, eps=eps[:, :2], **tight)


def test_log_prob_of_mixture_oracle_field_is_the_mixture_density(gen):
    # the exact marginal field of a Gaussian path carries N(0, I) onto the mixture: its
    # change-of-variables density at t=1 is the mixture's, and at t=1/2 the path marginal p_t
    means = torch.tensor([[-2.0, 0.0], [2.0, 1.0], [0.0, -2.5]])
    covs = torch.stack([torch.eye(2) * 0.3, torch.tensor([[0.5, 0.2], [0.2, 0.4]]), torch.eye(2)])
    mixture = GaussianMixture(means, covs, weights=torch.tensor([0.5, 0.3, 0.2]))
    oracle = GaussianMixtureOracle(mixture, GaussianPath("linear"))
    x = mixture.sample(64, generator=gen, dtype=D64)
    p_init = IsotropicGaussian(2)
    got = likelihood.log_prob(oracle.vector_field, x, p_init=p_init)
    assert float((got - mixture.log_prob(x)).abs().max()) < 1e-3
    half = likelihood.log_prob(oracle.vector_field, x, p_init=p_init, t1=0.5)
    assert float((half - oracle.log_prob(x, 0.5)).abs().max()) < 1e-3


def test_sample_with_log_prob_agrees_with_log_prob_and_the_mixture(gen):
    mixture = GaussianMixture.symmetric_2d(n_modes=4, radius=2.0, std=0.5)
    oracle = GaussianMixtureOracle(mixture, GaussianPath("linear"))
    p_init = IsotropicGaussian(2)
    x0 = p_init.sample(48, generator=gen, dtype=D64)
    x1, lp = likelihood.sample_with_log_prob(oracle.vector_field, x0, p_init=p_init)
    assert float((lp - mixture.log_prob(x1)).abs().max()) < 1e-3
    back = likelihood.log_prob(oracle.vector_field, x1, p_init=p_init)
    assert float((back - lp).abs().max()) < 1e-4
    # given a count, it draws x0 from p_init with the generator: same seed, same samples
    x_a, lp_a = likelihood.sample_with_log_prob(
        oracle.vector_field, 8, p_init=p_init, generator=torch.Generator().manual_seed(3)
    )
    x_b, lp_b = likelihood.sample_with_log_prob(
        oracle.vector_field, 8, p_init=p_init, generator=torch.Generator().manual_seed(3)
    )
    assert x_a.shape == (8, 2) and torch.equal(x_a, x_b) and torch.equal(lp_a, lp_b)
    assert float((lp_a - mixture.log_prob(x_a)).abs().max()) < 1e-3


class TanhNet(torch.nn.Module):
    """``W2 tanh(W1 x + t c)``: a small parametric field for gradient checks."""

    def __init__(self, gen: torch.Generator, dim: int = 2, hidden: int = 8) -> None:
        super().__init__()
        self.w1 = torch.nn.Parameter(torch.randn(hidden, dim, generator=gen, dtype=D64))
        self.w2 = torch.nn.Parameter(torch.randn(dim, hidden, generator=gen, dtype=D64) / 3)
        self.c = torch.nn.Parameter(torch.randn(hidden, generator=gen, dtype=D64))

    def forward(self, x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        return torch.tanh(x @ self.w1.T + t[:, None] * self.c) @ self.w2.T


@pytest.mark.parametrize("method", ["exact", "hutchinson"])
def test_log_prob_gradient_matches_finite_differences(gen, method):
    net = TanhNet(gen)
    x = torch.randn(5, 2, generator=gen, dtype=D64)
    direction = [torch.randn(p.shape, generator=gen, dtype=D64) for p in net.parameters()]
    p_init = IsotropicGaussian(2)

    def objective(grad: bool) -> torch.Tensor:
        # the same probes in every evaluation, so the finite difference sees one smooth map
        return likelihood.log_prob(
            net,
            x,
            p_init=p_init,
            solver="rk4",
            steps=6,
            method=method,
            probes=2,
            generator=torch.Generator().manual_seed(1),
            grad=grad,
        ).sum()

    grads = torch.autograd.grad(objective(True), list(net.parameters()))
    analytic = sum(float((g * d).sum()) for g, d in zip(grads, direction))
    step = 1e-5
    values = []
    for sign in (1, -1):
        with torch.no_grad():
            for p, d in zip(net.parameters(), direction):
                p.add_(sign * step * d)
        values.append(float(objective(False)))
        with torch.no_grad():
            for p, d in zip(net.parameters(), direction):
                p.sub_(sign * step * d)
    numeric = (values[0] - values[1]) / (2 * step)
    assert analytic == pytest.approx(numeric, rel=1e-6, abs=1e-8)


def test_hutchinson_log_prob_is_unbiased(gen):
    # one point replicated: each row gets its own probe, so the rows are independent estimates
    net = TanhNet(gen)
    p_init = IsotropicGaussian(2)
    x = torch.randn(1, 2, generator=gen, dtype=D64).expand(2000, 2)
    exact = likelihood.log_prob(net, x[:1], p_init=p_init, solver="rk4", steps=8)
    for noise in ("rademacher", "gaussian"):
        est = likelihood.log_prob(
            net,
            x,
            p_init=p_init,
            solver="rk4",
            steps=8,
            method="hutchinson",
            noise=noise,
            generator=gen,
        )
        std_err = float(est.std()) / math.sqrt(len(est))
        assert std_err > 0 and abs(float(est.mean() - exact)) < 4 * std_err


def test_log_prob_rejects_bad_input(gen):
    field = tanh_field(gen, dim=2)
    p_init = IsotropicGaussian(2)
    x = torch.randn(4, 2, dtype=D64)
    bad = x.clone()
    bad[1, 0] = float("nan")
    with pytest.raises(ValueError, match="x has 1 non-finite"):
        likelihood.log_prob(field, bad, p_init=p_init)
    with pytest.raises(ValueError, match=r"does not match p_init's event_shape \(3,\)"):
        likelihood.log_prob(field, x, p_init=IsotropicGaussian(3))
    with pytest.raises(TypeError, match="p_init must be a distribution"):
        likelihood.log_prob(field, x, p_init="normal")
    with pytest.raises(ValueError, match="need t0 < t1"):
        likelihood.log_prob(field, x, p_init=p_init, t0=1.0, t1=0.0)
    with pytest.raises(ValueError, match="unknown solver 'rk5'"):
        likelihood.log_prob(field, x, p_init=p_init, solver="rk5")
    with pytest.raises(ValueError, match="method"):
        likelihood.log_prob(field, x, p_init=p_init, method="hutch")
    with pytest.raises(ValueError, match="noise"):
        likelihood.sample_with_log_prob(field, 3, p_init=p_init, noise="normal")
    with pytest.raises(ValueError, match="x0 as a number of samples must be positive"):
        likelihood.sample_with_log_prob(field, 0, p_init=p_init)
