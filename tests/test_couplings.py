"""Couplings: exact OT is optimal and recovers permutations, Sinkhorn interpolates between OT and
independence, labels stay with their data, bad input raises."""

import ot
import pytest
import torch

from flowdiff.paths import get_coupling, independent_coupling, ot_coupling


def _mean_cost(x0, x1):
    return float(((x0 - x1) ** 2).flatten(1).sum(1).mean())


def _is_row_subset(rows, of):
    """Every row of ``rows`` is (exactly) a row of ``of``."""
    distance = torch.cdist(
        rows.flatten(1), of.flatten(1), compute_mode="donot_use_mm_for_euclid_dist"
    )
    return bool((distance.min(1).values == 0).all())


@pytest.fixture
def batch(gen):
    x0 = torch.randn(128, 2, generator=gen, dtype=torch.float64)
    x1 = torch.randn(128, 2, generator=gen, dtype=torch.float64) * 0.5 + torch.tensor([3.0, 1.0])
    y = torch.randint(0, 5, (128,), generator=gen)
    return x0, x1, y


def test_exact_ot_is_the_optimal_assignment(batch):
    x0, x1, y = batch
    out = ot_coupling(x0, x1, y)
    cost = ot.dist(x0.numpy(), x1.numpy())
    # POT's exact solver, an independent implementation, gives the same optimal cost
    assert _mean_cost(out.x0, out.x1) == pytest.approx(ot.emd2([], [], cost), rel=1e-10)
    assert _mean_cost(out.x0, out.x1) < 0.9 * _mean_cost(x0, x1)
    # a permutation of x0: same rows, each used once
    torch.testing.assert_close(out.x0[out.x0[:, 0].argsort()], x0[x0[:, 0].argsort()])


def test_exact_ot_recovers_a_known_permutation(gen):
    x1 = 10 * torch.rand(200, 2, generator=gen, dtype=torch.float64)
    perm = torch.randperm(200, generator=gen)
    x0 = x1[perm] + 1e-3 * torch.randn(200, 2, generator=gen, dtype=torch.float64)
    out = ot_coupling(x0, x1)
    torch.testing.assert_close(out.x0, x0[perm.argsort()])


def test_sinkhorn_interpolates_between_ot_and_independence(gen):
    # A shuffled 6 x 6 grid of spacing 2. By symmetry the entropic plan is close to
    # pi_ij ~ exp(-C_ij / reg): with reg = 0.5 each of the (up to 4) neighbours of the right
    # partner, at cost 4, gets exp(-8) = 3e-4 of the column, so the permutation is recovered.
    grid = torch.stack(torch.meshgrid(torch.arange(6.0), torch.arange(6.0), indexing="ij"), -1)
    x1 = 2 * grid.reshape(36, 2).double()
    perm = torch.randperm(36, generator=gen)
    x0 = x1[perm] + 1e-3 * torch.randn(36, 2, generator=gen, dtype=torch.float64)
    sharp = ot_coupling(x0, x1, method="sinkhorn", reg=0.5, generator=gen)
    assert (sharp.x0 == x0[perm.argsort()]).all(1).float().mean() > 0.95
    # reg far above every cost: each x1 draws its x0 almost uniformly, cost -> mean of C
    blurred = ot_coupling(x0, x1, method="sinkhorn", reg=1e4, generator=gen)
    independent_cost = float(torch.cdist(x0, x1).pow(2).mean())
    assert _mean_cost(blurred.x0, x1) == pytest.approx(independent_cost, rel=0.2)
    middle = ot_coupling(x0, x1, method="sinkhorn", reg=4.0, generator=gen)
    assert _mean_cost(sharp.x0, x1) < _mean_cost(middle.x0, x1) < 0.5 * independent_cost
    for out in (sharp, middle, blurred):
        assert _is_row_subset(out.x0, x0)


def test_labels_stay_with_their_data(batch, gen):
    x0, x1, y = batch
    for out in (
        independent_coupling(x0, x1, y, generator=gen),
        ot_coupling(x0, x1, y),
        ot_coupling(x0, x1, y, method="sinkhorn", reg=0.5, generator=gen),
    ):
        assert out.x1 is x1 and out.y is y
        assert out.x0.shape == x0.shape and _is_row_subset(out.x0, x0)


def test_independent_coupling_is_a_seeded_permutation(batch):
    x0, x1, _ = batch
    a = independent_coupling(x0, x1, generator=torch.Generator().manual_seed(5))
    b = independent_coupling(x0, x1, generator=torch.Generator().manual_seed(5))
    assert torch.equal(a.x0, b.x0) and a.y is None
    assert not torch.equal(a.x0, x0)
    torch.testing.assert_close(a.x0[a.x0[:, 0].argsort()], x0[x0[:, 0].argsort()])


def test_sinkhorn_is_reproducible_with_a_generator(batch):
    x0, x1, _ = batch

    def run(seed):
        return ot_coupling(
            x0, x1, method="sinkhorn", reg=0.5, generator=torch.Generator().manual_seed(seed)
        ).x0

    assert torch.equal(run(1), run(1))


def test_events_of_any_shape_are_flattened(gen):
    x1 = torch.randn(16, 3, 2, 2, generator=gen)
    perm = torch.randperm(16, generator=gen)
    out = ot_coupling(x1[perm] + 1e-3, x1)
    torch.testing.assert_close(out.x0, x1 + 1e-3)


def test_get_coupling_by_name(batch, gen):
    x0, x1, y = batch
    assert get_coupling("independent") is independent_coupling
    exact = get_coupling("ot")(x0, x1, y)
    torch.testing.assert_close(exact.x0, ot_coupling(x0, x1).x0)
    sinkhorn = get_coupling("sinkhorn", reg=0.5)
    a = sinkhorn(x0, x1, y, generator=torch.Generator().manual_seed(2))
    b = ot_coupling(x0, x1, method="sinkhorn", reg=0.5, generator=torch.Generator().manual_seed(2))
    assert torch.equal(a.x0, b.x0)


def test_bad_input_raises(batch):
    x0, x1, y = batch
    with pytest.raises(ValueError, match=r"same shape, got x0 \(128, 2\) and x1 \(64, 2\)"):
        ot_coupling(x0, x1[:64])
    with pytest.raises(ValueError, match=r"y must be a tensor with 128 rows"):
        ot_coupling(x0, x1, y[:5])
    nan = x0.clone()
    nan[3, 1] = float("nan")
    with pytest.raises(ValueError, match="x0 has 1 non-finite"):
        ot_coupling(nan, x1)
    with pytest.raises(ValueError, match="did you mean 'sinkhorn'"):
        ot_coupling(x0, x1, method="sinkhorm")
    with pytest.raises(ValueError, match="reg must be"):
        ot_coupling(x0, x1, method="sinkhorn", reg=0.0)
    with pytest.raises(ValueError, match="did you mean 'ot'"):
        get_coupling("otx")
    with pytest.raises(TypeError, match=r"coupling 'ot' takes no options, got \['reg'\]"):
        get_coupling("ot", reg=0.1)
    with pytest.raises(TypeError, match=r"x1 must be a torch\.Tensor"):
        independent_coupling(x0, x1.numpy())


def test_sinkhorn_with_too_small_a_reg_names_reg_and_the_cost_scale(batch, gen):
    """max cost / reg = 62.7 / 0.01 underflows the kernel exp(-C / reg): a ValueError naming both,
    not torch.multinomial's "probability tensor contains either inf, nan or element < 0"."""
    x0, x1, _ = batch
    scale = float(ot.dist(x0.numpy(), x1.numpy()).max())
    with pytest.raises(ValueError, match=rf"reg=0.01 .* = {scale:.3g} .*reg >= {scale / 1e3:.3g}"):
        ot_coupling(x0, x1, method="sinkhorn", reg=0.01, generator=gen)
    # the advised reg works: a pairing of x1 with rows of x0
    out = ot_coupling(x0, x1, method="sinkhorn", reg=scale / 1e3, generator=gen)
    assert _is_row_subset(out.x0, x0)
