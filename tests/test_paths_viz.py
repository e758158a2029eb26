"""Smoke tests of the path pictures: each writes a PNG that decodes, of the documented size."""

import pytest
import torch
from PIL import Image

from flowdiff.distributions import GaussianMixture
from flowdiff.paths import GaussianMixtureOracle, GaussianPath
from flowdiff.viz.figures import PANEL_PX
from flowdiff.viz.paths import (
    plot_conditional_path,
    plot_conditional_vs_marginal,
    plot_marginal_field,
)


@pytest.fixture
def oracle():
    return GaussianMixtureOracle(GaussianMixture.symmetric_2d(4, radius=3.0, std=0.4), "linear")


def _decoded_size(path):
    with Image.open(path) as image:
        image.load()  # decodes every pixel: a truncated file raises here
        return image.size


def test_conditional_path_figure(tmp_path, gen):
    out = plot_conditional_path(
        GaussianPath("cosine"),
        torch.tensor([2.0, 1.0]),
        [0.0, 0.5, 0.9, 1.0],
        tmp_path / "conditional.png",
        n=200,
        generator=gen,
    )
    assert out == tmp_path / "conditional.png"
    assert _decoded_size(out) == (4 * PANEL_PX, PANEL_PX)


def test_marginal_field_figure(tmp_path, oracle):
    out = plot_marginal_field(
        oracle, [0.0, 0.5, 1.0], tmp_path / "field.png", grid=12, density_grid=60
    )
    assert _decoded_size(out) == (3 * PANEL_PX, PANEL_PX)


def test_conditional_vs_marginal_figure(tmp_path, oracle, gen):
    out = plot_conditional_vs_marginal(
        oracle, tmp_path / "trajectories.png", n=16, steps=20, generator=gen
    )
    assert _decoded_size(out) == (2 * PANEL_PX, PANEL_PX)


def test_bad_input_raises(tmp_path, oracle):
    with pytest.raises(ValueError, match=r"x1 must be one 2D point of shape \(2,\)"):
        plot_conditional_path(GaussianPath(), torch.zeros(3), [0.5], tmp_path / "a.png")
    with pytest.raises(ValueError, match=r"ts must lie in \[0, 1\]"):
        plot_marginal_field(oracle, [0.5, 1.5], tmp_path / "b.png")
    with pytest.raises(TypeError, match="oracle must be a GaussianMixtureOracle"):
        plot_conditional_vs_marginal(GaussianPath(), tmp_path / "c.png")
    with pytest.raises(ValueError, match="n must be an integer >= 1"):
        plot_conditional_vs_marginal(oracle, tmp_path / "c.png", n=0)
    with pytest.raises(ValueError, match="path must end in one of"):
        plot_marginal_field(oracle, [0.5], tmp_path / "b.txt")
    assert not list(tmp_path.iterdir())  # nothing half-written
