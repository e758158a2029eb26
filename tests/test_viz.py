"""Pictures: every function writes a file Pillow decodes with the stated size, mode and frame
count; image grids hold exactly the pixels the layout rule says; callables are evaluated on the
stated lattice and times; bad shapes, values and paths raise errors naming the argument."""

import csv
import math
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowdiff.viz import (
    animate_density,
    animate_samples,
    image_grid,
    plot_density,
    plot_loss,
    plot_samples,
    plot_trajectories,
    plot_vector_field,
    save_samples,
)
from flowdiff.viz.figures import PANEL_PX, WIDE_PX
from flowdiff.viz.samples import MIN_TILE_PX, PAD_PX


def opened(path: Path) -> Image.Image:
    assert path.is_file()
    # Atomic writes leave no temporary file next to the result.
    assert not [p for p in path.parent.iterdir() if p.name.endswith(".tmp")]
    image = Image.open(path)
    image.load()
    return image


def rgb(path: Path) -> np.ndarray:
    """The pixels ``(H, W, 3)`` as ints."""
    return np.asarray(opened(path).convert("RGB")).astype(int)


def png(path: Path, size: tuple[int, int]) -> None:
    image = opened(path)
    assert image.format == "PNG" and image.size == size and image.mode == "RGBA"


# ---------------------------------------------------------------------- samples and grids
def test_save_samples_picks_the_picture_from_the_shape(tmp_path: Path, gen) -> None:
    out = save_samples(torch.randn(300, 2, generator=gen), tmp_path / "pts.png", title="2D")
    assert out == tmp_path / "pts.png"
    png(out, (PANEL_PX, PANEL_PX))
    png(save_samples(torch.randn(300, 1, generator=gen), tmp_path / "h.png"), (PANEL_PX, PANEL_PX))
    grey = save_samples(torch.rand(10, 1, 8, 8, generator=gen), tmp_path / "g.png", nrow=5)
    tile = 8 * math.ceil(MIN_TILE_PX / 8)  # 8x8 digits are upscaled x4
    size = (5 * (tile + PAD_PX) + PAD_PX, 2 * (tile + PAD_PX) + PAD_PX)
    assert opened(grey).mode == "L" and opened(grey).size == size
    titled = save_samples(torch.rand(10, 3, 8, 8, generator=gen), tmp_path / "c.png", title="x")
    assert opened(titled).mode == "RGB" and opened(titled).size[1] > size[1]


@pytest.mark.parametrize("shape", [(5, 3), (5, 2, 4, 4), (5,), (2, 3, 1, 4, 4), (0, 2)], ids=str)
def test_save_samples_rejects_other_shapes(tmp_path: Path, shape: tuple[int, ...]) -> None:
    with pytest.raises(ValueError, match=r"x must be points \(N, 2\).* got shape"):
        save_samples(torch.zeros(shape), tmp_path / "x.png")
    assert not any(tmp_path.iterdir())


def test_image_grid_pixels_follow_the_layout_and_value_range(tmp_path: Path) -> None:
    # Image i is constant (-1 + 2 i / 4) in model space [-1, 1]: black, ..., white.
    levels = torch.linspace(-1, 1, 5)
    x = levels.reshape(5, 1, 1, 1).expand(5, 1, 16, 16)  # 16 px: upscaled x2 to 32
    pixels = np.asarray(opened(image_grid(x, tmp_path / "g.png", nrow=3)))
    tile = 32
    assert pixels.shape == (2 * (tile + PAD_PX) + PAD_PX, 3 * (tile + PAD_PX) + PAD_PX)
    for i, level in enumerate(levels):
        top, left = PAD_PX + (i // 3) * (tile + PAD_PX), PAD_PX + (i % 3) * (tile + PAD_PX)
        block = pixels[top : top + tile, left : left + tile]
        assert (block == round((float(level) + 1) / 2 * 255)).all()
    assert (pixels[:PAD_PX] == 255).all() and (pixels[:, :PAD_PX] == 255).all()  # white frame
    assert (pixels[-tile - PAD_PX :, -tile - PAD_PX :] == 255).all()  # the 6th cell is empty
    # Raw data above 1 (digits' 0..16) is read as [0, max]; an explicit range is clipped.
    raw = torch.tensor([0.0, 8.0, 16.0]).reshape(3, 1, 1, 1).expand(3, 1, 8, 8)
    got = np.asarray(opened(image_grid(raw, tmp_path / "raw.png", nrow=3)))
    assert [got[PAD_PX, PAD_PX + i * (32 + PAD_PX)] for i in range(3)] == [0, 128, 255]
    clipped = image_grid(raw, tmp_path / "clip.png", nrow=3, value_range=(0.0, 8.0))
    assert np.asarray(opened(clipped))[PAD_PX, PAD_PX + 2 * (32 + PAD_PX)] == 255


def test_image_grid_rgb_channels(tmp_path: Path) -> None:
    x = torch.zeros(1, 3, 32, 32)
    x[0, 0] = 1.0  # pure red in [0, 1]
    pixels = np.asarray(
        opened(
            image_grid(x, tmp_path / "r.jpg"),
        ).convert("RGB")
    )
    centre = pixels[PAD_PX + 16, PAD_PX + 16]
    assert centre[0] > 240 and centre[1] < 15 and centre[2] < 15  # JPEG: approximately


def test_image_grid_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"path must end in \.png, \.jpg or \.jpeg"):
        image_grid(torch.zeros(1, 1, 4, 4), tmp_path / "g.gif")
    with pytest.raises(ValueError, match=r"nrow \(images per row\) must be an integer >= 1"):
        image_grid(torch.zeros(1, 1, 4, 4), tmp_path / "g.png", nrow=0)
    with pytest.raises(ValueError, match="value_range must be"):
        image_grid(torch.zeros(1, 1, 4, 4), tmp_path / "g.png", value_range=(1.0, 1.0))
    with pytest.raises(ValueError, match=r"x has 1 non-finite"):
        image_grid(torch.tensor([[[[float("nan")]]]]), tmp_path / "g.png")
    with pytest.raises(TypeError, match="x must be a tensor or an array of numbers"):
        image_grid("pictures", tmp_path / "g.png")


def test_plot_samples_beside_reference(tmp_path: Path, gen) -> None:
    x, ref = torch.randn(200, 2, generator=gen), torch.randn(300, 2, generator=gen)
    png(plot_samples(x, tmp_path / "two.png", ref, lims=(-3, 3)), (2 * PANEL_PX, PANEL_PX))
    png(plot_samples(x[:, :1], tmp_path / "one.png", ref[:, :1]), (PANEL_PX, PANEL_PX))
    with pytest.raises(ValueError, match=r"reference must have 2 column\(s\) like x"):
        plot_samples(x, tmp_path / "bad.png", ref[:, :1])
    with pytest.raises(ValueError, match="lims must be"):
        plot_samples(x, tmp_path / "bad.png", lims=(3, -3))
    with pytest.raises(ValueError, match="path must end in one of"):
        plot_samples(x, tmp_path / "bad.bmp")


# ---------------------------------------------------------------------- flows
def test_plot_trajectories(tmp_path: Path, gen) -> None:
    ts = torch.linspace(0, 1, 11)
    x0 = torch.randn(30, 2, generator=gen)
    exact = x0 * torch.exp(-ts)[:, None, None]  # the linear ODE x' = -x
    noisy = exact + 0.01 * torch.randn(exact.shape, generator=gen)
    lims = (-3, 3)  # one view for both pictures, so that they differ only by the overlay
    with_exact = plot_trajectories(noisy, ts, tmp_path / "2d.png", exact=exact, lims=lims)
    png(with_exact, (PANEL_PX, PANEL_PX))
    alone = plot_trajectories(noisy, ts, tmp_path / "alone.png", lims=lims)
    # The dashed black exact paths darken pixels along 30 curves (measured: ~1700 pixels; the
    # legend entry alone is a few hundred).
    darker = rgb(with_exact).sum(-1) < rgb(alone).sum(-1) - 60
    assert darker.sum() > 1000
    png(plot_trajectories(noisy[..., :1], ts, tmp_path / "1d.png"), (WIDE_PX, PANEL_PX))
    one_d = plot_trajectories(noisy[..., :1], ts, tmp_path / "1e.png", exact=exact[..., :1])
    assert (rgb(one_d).sum(-1) < rgb(tmp_path / "1d.png").sum(-1) - 60).sum() > 1000
    with pytest.raises(ValueError, match=r"exact must have the shape of xs \(11, 30, 2\)"):
        plot_trajectories(noisy, ts, tmp_path / "x.png", exact=exact[:, :5])
    with pytest.raises(ValueError, match=r"xs must have shape \(T, B, D\) with D in \{1, 2\}"):
        plot_trajectories(torch.zeros(11, 4, 3), ts, tmp_path / "x.png")
    with pytest.raises(ValueError, match="xs has 10 time steps but ts has 11"):
        plot_trajectories(noisy[:10], ts, tmp_path / "x.png")
    with pytest.raises(ValueError, match="max_paths must be an integer >= 1"):
        plot_trajectories(noisy, ts, tmp_path / "x.png", max_paths=0)


def test_plot_vector_field_evaluates_the_lattice_at_each_time(tmp_path: Path) -> None:
    calls = []

    def rotation(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        calls.append((x.clone(), t.clone()))
        return torch.stack([-x[:, 1], x[:, 0]], dim=1) * (1 + t[:, None])

    ts = [0.0, 0.25, 0.5, 0.75, 1.0]
    out = plot_vector_field(rotation, ts, tmp_path / "f.png", lims=((-2, 2), (-1, 3)), grid=7)
    # Five panels, four per row, and a shared colour bar inside the panels' width.
    png(out, (4 * PANEL_PX, 2 * PANEL_PX))
    assert [float(t[0]) for _, t in calls] == ts
    x, t = calls[0]
    assert x.shape == (49, 2) and t.shape == (49,) and (t == 0).all()
    assert x[:, 0].min() == -2 and x[:, 0].max() == 2 and len(torch.unique(x[:, 0])) == 7
    assert x[:, 1].min() == -1 and x[:, 1].max() == 3 and len(torch.unique(x[:, 1])) == 7


def test_plot_vector_field_bad_field(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"field must return shape \(400, 2\), got \(400,\)"):
        plot_vector_field(lambda x, t: t, [0.5], tmp_path / "f.png", lims=(-1, 1))
    with pytest.raises(ValueError, match="output of field has 800 non-finite"):
        plot_vector_field(lambda x, t: x / 0 * 0, [0.5], tmp_path / "f.png", lims=(-1, 1))
    with pytest.raises(TypeError, match="field must be callable"):
        plot_vector_field("u", [0.5], tmp_path / "f.png", lims=(-1, 1))
    with pytest.raises(ValueError, match="grid must be an int >= 2"):
        plot_vector_field(lambda x, t: x, [0.5], tmp_path / "f.png", lims=(-1, 1), grid=1)
    assert not any(tmp_path.iterdir())


def test_plot_density_with_zero_density_and_data(tmp_path: Path, gen) -> None:
    seen = []

    def uniform_square(x: torch.Tensor) -> torch.Tensor:
        seen.append(x)
        inside = (x.abs() <= 1).all(dim=1)
        return torch.where(inside, torch.tensor(-math.log(4.0)), torch.tensor(-math.inf))

    data = torch.rand(100, 2, generator=gen) * 2 - 1
    out = plot_density(uniform_square, tmp_path / "d.png", lims=(-2, 2), grid=50, data=data)
    png(out, (2 * PANEL_PX, PANEL_PX))
    assert seen[0].shape == (2500, 2)
    with pytest.raises(ValueError, match="output of log_prob has 1 non-finite"):
        plot_density(
            lambda x: torch.where((x == x[0]).all(dim=1), torch.nan, 0.0),
            tmp_path / "d.png",
            lims=(-2, 2),
        )
    with pytest.raises(ValueError, match=r"log_prob must return shape \(40000,\)"):
        plot_density(lambda x: x, tmp_path / "d.png", lims=(-2, 2))
    with pytest.raises(ValueError, match=r"data must be points \(N, 2\)"):
        plot_density(uniform_square, tmp_path / "d.png", lims=(-2, 2), data=torch.zeros(3, 3))


# ---------------------------------------------------------------------- loss curves
def test_plot_loss_every_input_form(tmp_path: Path) -> None:
    losses = [2.0 * math.exp(-i / 40) + 0.1 for i in range(200)]
    png(plot_loss(losses, tmp_path / "list.png"), (WIDE_PX, PANEL_PX))
    rows = [{"step": 10 * i, "loss": v, "lr": 1e-3} for i, v in enumerate(losses)]
    png(plot_loss(rows, tmp_path / "rows.png"), (WIDE_PX, PANEL_PX))
    # metrics.csv as the training loop writes it: a GAN's two losses, negative values, and a
    # column only some rows have (empty cells).
    with open(tmp_path / "metrics.csv", "w", newline="") as fh:
        writer = csv.DictWriter(fh, fieldnames=["step", "loss_generator", "loss_critic", "fid"])
        writer.writeheader()
        for i in range(100):
            row = {"step": i, "loss_generator": 1 - i / 50, "loss_critic": -0.5 + i / 200}
            writer.writerow(row | ({"fid": 30 - i / 10} if i % 10 == 0 else {}))
    png(plot_loss(tmp_path / "metrics.csv", tmp_path / "csv.png"), (WIDE_PX, PANEL_PX))
    png(plot_loss({"loss": np.array(losses)}, tmp_path / "dict.png"), (WIDE_PX, PANEL_PX))


def test_plot_loss_bad_input(tmp_path: Path) -> None:
    with pytest.raises(ValueError, match=r"no loss column to plot: columns are \['lr', 'step'\]"):
        plot_loss([{"step": 1, "lr": 0.1}], tmp_path / "l.png")
    with pytest.raises(ValueError, match="history must be a CSV path, a non-empty list"):
        plot_loss([], tmp_path / "l.png")
    (tmp_path / "noheader.csv").write_text("1,2\n3,4\n")
    with pytest.raises(ValueError, match="needs a header row"):
        plot_loss(tmp_path / "noheader.csv", tmp_path / "l.png")
    with pytest.raises(ValueError, match="column 'loss' has no finite values"):
        plot_loss([{"step": 1, "loss": math.nan}], tmp_path / "l.png")
    with pytest.raises(FileNotFoundError, match=r"missing\.csv"):
        plot_loss(tmp_path / "missing.csv", tmp_path / "l.png")


# ---------------------------------------------------------------------- animations
def frames_of(path: Path) -> list[np.ndarray]:
    image = opened(path)
    assert image.format == "GIF"
    frames = []
    for i in range(image.n_frames):
        image.seek(i)
        frames.append(np.asarray(image.convert("RGB")))
    return frames


def test_animate_samples_one_frame_per_time(tmp_path: Path, gen) -> None:
    ts = torch.linspace(0, 1, 5)
    x0 = torch.randn(100, 2, generator=gen)
    xs = torch.stack([x0 * (1 + t) for t in ts])
    frames = frames_of(animate_samples(xs, ts, tmp_path / "flow.gif", fps=5))
    assert len(frames) == 5 and frames[0].shape == (PANEL_PX, PANEL_PX, 3)
    assert not np.array_equal(frames[0], frames[-1])
    # Points that do not move still give one frame per time (the frame label differs).
    still = animate_samples(x0.expand(3, 100, 2), [0, 0.5, 1], tmp_path / "still.gif")
    assert len(frames_of(still)) == 3
    assert len(frames_of(animate_samples(xs[..., :1], ts, tmp_path / "1d.gif"))) == 5
    images = torch.rand(3, 4, 1, 8, 8, generator=gen) * 2 - 1
    grid_frames = frames_of(animate_samples(images, [0, 0.5, 1], tmp_path / "img.gif", nrow=2))
    assert len(grid_frames) == 3


def test_animate_samples_bad_input(tmp_path: Path) -> None:
    xs = torch.zeros(3, 5, 2)
    with pytest.raises(ValueError, match=r"T = len\(ts\) = 4 .* got shape \(3, 5, 2\)"):
        animate_samples(xs, [0, 0.2, 0.5, 1], tmp_path / "a.gif")
    with pytest.raises(ValueError, match=r"xs must be \(T, B, 2\) points"):
        animate_samples(torch.zeros(3, 5, 3), [0, 0.5, 1], tmp_path / "a.gif")
    with pytest.raises(ValueError, match=r"path must end in \.gif"):
        animate_samples(xs, [0, 0.5, 1], tmp_path / "a.png")
    with pytest.raises(ValueError, match="fps must be a number in"):
        animate_samples(xs, [0, 0.5, 1], tmp_path / "a.gif", fps=0)
    with pytest.raises(ValueError, match="ts must be a non-empty 1-D"):
        animate_samples(xs, torch.zeros(3, 1), tmp_path / "a.gif")
    assert not any(tmp_path.iterdir())


def test_animate_density_frames_and_times(tmp_path: Path) -> None:
    seen = []

    def gaussian_spreading(x: torch.Tensor, t: torch.Tensor) -> torch.Tensor:
        seen.append(float(t[0]))
        var = 0.1 + t**2
        return -0.5 * (x**2).sum(1) / var - torch.log(2 * math.pi * var)

    ts = [0.0, 0.25, 0.5, 1.0]
    frames = frames_of(animate_density(gaussian_spreading, ts, tmp_path / "d.gif", lims=(-3, 3)))
    assert len(frames) == 4 and frames[0].shape == (PANEL_PX, PANEL_PX, 3) and seen == ts
    with pytest.raises(ValueError, match=r"log_prob_t must return shape \(400,\)"):
        animate_density(lambda x, t: x, ts, tmp_path / "e.gif", lims=(-3, 3), grid=20)


def test_importing_flowdiff_does_not_import_matplotlib() -> None:
    code = (
        "import sys, flowdiff, flowdiff.data; "
        "assert 'matplotlib' not in sys.modules, 'matplotlib imported'; "
        "import flowdiff.viz; assert 'matplotlib' in sys.modules"
    )
    subprocess.run([sys.executable, "-c", code], check=True)
