"""The ``flowdiff`` command end to end: train -> sample -> evaluate -> plot, from a subprocess,
and every kind of bad input answered by one line and exit status 2 with nothing overwritten."""

from __future__ import annotations

import csv
import json
import math
import os
import re
import shutil
import subprocess
import sys
import warnings
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowdiff.cli import commands
from flowdiff.cli.main import SIMULATE_EXAMPLES, main
from flowdiff.data import sample_toy

ENV = {**os.environ, "OMP_NUM_THREADS": "1", "PYTHONHASHSEED": "0"}


def flowdiff(*args: str, check: bool = True) -> subprocess.CompletedProcess:
    """Run the installed console entry in a fresh interpreter, as a user would."""
    proc = subprocess.run(
        [str(Path(sys.executable).parent / "flowdiff"), *args],
        capture_output=True,
        text=True,
        env=ENV,
        timeout=300,
    )
    if check and proc.returncode != 0:
        raise AssertionError(f"flowdiff {' '.join(args)} failed:\n{proc.stderr}")
    return proc


def run_cli(capsys: pytest.CaptureFixture, *args: str) -> tuple[int, str]:
    """In-process call (fast) returning the exit status and stderr."""
    try:
        code = main(list(args))
    except SystemExit as exit_:  # argparse's own errors exit from inside parse_args
        code = exit_.code
    return code, capsys.readouterr().err


def assert_one_line_error(code: int, err: str, *fragments: str) -> None:
    assert code == 2
    lines = err.strip().splitlines()
    assert len(lines) == 1, err
    assert "Traceback" not in err
    for fragment in fragments:
        assert fragment in lines[0], lines[0]


@pytest.fixture(scope="module")
def moons_run(tmp_path_factory: pytest.TempPathFactory) -> Path:
    out = tmp_path_factory.mktemp("cli") / "moons"
    flowdiff(
        "train",
        "--data",
        "moons",
        "--model",
        "flow",
        "--steps",
        "600",
        "--out",
        str(out),
        "--hidden",
        "64",
        "--quiet",
    )
    return out


@pytest.mark.slow
def test_train_sample_evaluate_plot_2d(moons_run: Path, tmp_path: Path) -> None:
    for name in ("config.yaml", "model.safetensors", "metrics.csv", "samples.png", "loss.png"):
        assert (moons_run / name).is_file(), name

    flowdiff(
        "sample",
        str(moons_run),
        "--n",
        "500",
        "--solver",
        "rk4",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "x.npy"),
    )
    x = np.load(tmp_path / "x.npy")
    assert x.shape == (500, 2) and np.isfinite(x).all()
    # Samples are in data units (normalisation inverted): per axis, their std matches that of
    # fresh moons (about 2.2 and 1.2) within 15%, and their mean (about 0) within 0.15 std;
    # model units would have std 1 on both axes.
    data = sample_toy("moons", 5000, torch.Generator().manual_seed(1)).numpy()
    assert np.allclose(x.std(0), data.std(0), rtol=0.15), (x.std(0), data.std(0))
    assert (np.abs(x.mean(0) - data.mean(0)) < 0.15 * data.std(0)).all(), x.mean(0)

    assert (
        main(
            [
                "sample",
                str(moons_run),
                "--n",
                "300",
                "--sigma",
                "0.5",
                "--out",
                str(tmp_path / "x.pt"),
            ]
        )
        == 0
    )
    assert torch.load(tmp_path / "x.pt", weights_only=True).shape == (300, 2)

    flowdiff(
        "evaluate", str(moons_run), "--n", "500", "--steps", "20", "--out", str(tmp_path / "m.json")
    )
    metrics = json.loads((tmp_path / "m.json").read_text())
    for key in ("wasserstein2", "sliced_wasserstein", "mmd", "energy_distance"):
        assert np.isfinite(metrics[key]) and np.isfinite(metrics[f"{key}_floor"]), key
    # A trained flow beats noise by far: its W2 to data is within a few floors.
    assert metrics["wasserstein2"] < 4 * metrics["wasserstein2_floor"] + 0.1

    # One plot from a subprocess, like every command above; the other kinds in-process: the
    # same code without ~4 s of interpreter start-up and imports each.
    plot = ["plot", str(moons_run), "--steps", "8", "--kind"]
    flowdiff(*plot, "field", "--out", str(tmp_path / "f.png"))
    for kind in ("trajectories", "samples", "loss", "density"):
        assert main([*plot, kind, "--out", str(tmp_path / f"{kind}.png")]) == 0
    for name in ("f", "trajectories", "samples", "loss", "density"):
        with Image.open(tmp_path / f"{name}.png") as im:
            assert im.format == "PNG" and min(im.size) > 100
    # One frame per time: the solver's t = 0, 0.1, ..., 1 (10 steps); the density's fixed times.
    animations = (("animation", "10", 11), ("density-animation", "2", commands.DENSITY_FRAMES))
    for kind, steps, frames in animations:
        out = tmp_path / f"{kind}.gif"
        assert (
            main(["plot", str(moons_run), "--kind", kind, "--steps", steps, "--out", str(out)]) == 0
        )
        with Image.open(out) as im:
            assert im.format == "GIF" and im.n_frames == frames


@pytest.mark.slow
def test_train_sample_evaluate_digits(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    done = flowdiff(
        "train",
        "--data",
        "digits",
        "--model",
        "flow",
        "--steps",
        "60",
        "--batch-size",
        "64",
        "--hidden",
        "16",
        "--out",
        str(out),
        "--quiet",
    )
    # The grey levels are on a grid: trained on them plus fresh uniform noise by default.
    assert "trained flow on digits (dequantised) for 60 steps" in done.stdout
    flowdiff(
        "sample",
        str(out),
        "--n",
        "16",
        "--label",
        "3",
        "--guidance",
        "2",
        "--steps",
        "4",
        "--out",
        str(tmp_path / "threes.png"),
    )
    with Image.open(tmp_path / "threes.png") as im:
        assert im.format == "PNG"
    assert (
        main(["sample", str(out), "--n", "10", "--steps", "2", "--out", str(tmp_path / "d.npy")])
        == 0
    )
    assert np.load(tmp_path / "d.npy").shape == (10, 1, 8, 8)
    flowdiff(
        "evaluate",
        str(out),
        "--n",
        "200",
        "--steps",
        "4",
        "--classifier",
        str(tmp_path / "clf.safetensors"),
    )
    metrics = json.loads((out / "metrics.json").read_text())
    assert 0.0 <= metrics["class_accuracy"] <= 1.0
    # The classifier's held-out accuracy on real digits: ~97% after its 500 steps.
    assert metrics["class_accuracy_real"] > 0.9
    for key in ("wasserstein2", "sliced_wasserstein", "mmd", "energy_distance"):
        assert np.isfinite(metrics[key]) and np.isfinite(metrics[f"{key}_floor"]), key
    # 60 training steps are far from the data: the model's Frechet distance is above its floor.
    assert 0 < metrics["classifier_frechet_floor"] < metrics["classifier_frechet"]
    assert (tmp_path / "clf.safetensors").is_file()  # the classifier is cached where asked
    flowdiff(
        "plot", str(out), "--kind", "samples", "--steps", "2", "--out", str(tmp_path / "s.png")
    )
    with Image.open(tmp_path / "s.png") as im:
        assert im.format == "PNG" and min(im.size) > 32
    # In-process from here: the same code without another ~4 s of start-up.
    plot = ["plot", str(out), "--kind", "animation", "--steps", "4", "--out"]
    assert main([*plot, str(tmp_path / "a.gif")]) == 0
    with Image.open(tmp_path / "a.gif") as im:
        assert im.format == "GIF" and im.n_frames == 5  # t = 0, 1/4, ..., 1


def test_config_file_repeats_the_run(tmp_path: Path) -> None:
    """The written config.yaml repeats a run bit for bit; a TOML file is read the same way."""
    toml = tmp_path / "run.toml"
    toml.write_text(
        'data = "8gaussians"\nmodel = "flow"\nsteps = 30\nbatch_size = 64\n'
        "hidden = 32\nn_data = 500\n[train_options]\nema_decay = 0.9\n"
    )
    assert main(["train", "--config", str(toml), "--out", str(tmp_path / "a"), "--quiet"]) == 0
    again = str(tmp_path / "a" / "config.yaml")
    assert main(["train", "--config", again, "--out", str(tmp_path / "b"), "--quiet"]) == 0
    from safetensors.torch import load_file

    a = load_file(tmp_path / "a" / "model.safetensors")
    b = load_file(tmp_path / "b" / "model.safetensors")
    assert a.keys() == b.keys() and all(torch.equal(a[k], b[k]) for k in a)


def test_held_out_fraction_logs_val_loss_and_keeps_the_best(
    tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    out = tmp_path / "run"
    args = ["train", "--data", "moons", "--n-data", "500", "--steps", "40", "--hidden", "16"]
    extra = ["--val-fraction", "0.2", "--keep-best", "--train-set", "log_every=10", "--quiet"]
    assert main([*args, *extra, "--out", str(out)]) == 0
    assert re.search(r"kept: val_loss [0-9.]+ at step [1-4]0\)", capsys.readouterr().out)
    with open(out / "metrics.csv") as fh:
        rows = list(csv.DictReader(fh))
    assert [int(r["step"]) for r in rows] == [10, 20, 30, 40]
    assert all(math.isfinite(float(r["val_loss"])) for r in rows)
    settings = (out / "config.yaml").read_text()
    assert "val_fraction: 0.2" in settings and "keep_best: true" in settings


def test_bad_names_get_suggestions(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = run_cli(capsys, "train", "--data", "moon", "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "moon", "moons")
    code, err = run_cli(
        capsys, "train", "--data", "moons", "--model", "flwo", "--out", str(tmp_path / "r")
    )
    assert_one_line_error(code, err, "flwo", "flow")
    code, err = run_cli(
        capsys, "train", "--data", "moons", "--out", str(tmp_path / "r"), "--steps", "0"
    )
    assert_one_line_error(code, err, "positive integer")
    code, err = run_cli(capsys, "demo", "--data", "moonz", "--out", str(tmp_path / "d"))
    assert_one_line_error(code, err, "moonz", "did you mean 'moons'")
    assert not (tmp_path / "r").exists() and not (tmp_path / "d").exists()


def test_failed_train_leaves_nothing(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """Every bad setting is caught before the run folder exists: no stray config.yaml that would
    refuse the next, corrected command."""
    out = tmp_path / "r1"
    base = ["train", "--data", "moons", "--n-data", "300", "--steps", "5", "--out", str(out)]
    for extra, fragments in (
        (["--train-set", "foo=1"], ("'foo'", "ema_decay")),  # lists the valid options
        (["--train-set", "ema_decya=0.9"], ("did you mean 'ema_decay'",)),
        (["--train-set", "ema_decay=2"], ("ema_decay",)),  # a bad value of a real option
        (["--train-set", "steps=9"], ("--steps",)),  # has its own flag
        (["--set", "foo=1"], ("'foo'", "'flow' model", "label_dropout")),
        (["--set", "label_dropot=0.2"], ("did you mean 'label_dropout'",)),
        (["--model", "realnvp", "--conditional"], ("takes no labels", "flow")),
        (["--data", "checkerboard", "--conditional"], ("no labels",)),
        (["--keep-best"], ("keep_best needs held-out data", "--val-fraction")),
        (["--dequantize"], ("--dequantize needs data on a grid", "moons")),
        (["--val-fraction", "1.5"], ("val_fraction must be a number in (0, 1)",)),
        (["--train-set", "keep_best=true"], ("--keep-best",)),
        (["--model", "gan", "--val-fraction", "0.2"], ("--val-fraction", "2 optim groups")),
    ):
        code, err = run_cli(capsys, *base, *extra)
        assert_one_line_error(code, err, *fragments)
        assert not out.exists(), extra
    assert main([*base, "--hidden", "16", "--quiet"]) == 0  # the corrected command runs
    assert (out / "model.safetensors").is_file()


def test_bad_files(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    code, err = run_cli(
        capsys, "train", "--data", str(tmp_path / "missing.npy"), "--out", str(tmp_path / "r")
    )
    assert_one_line_error(code, err, "missing.npy")
    csv = tmp_path / "bad.csv"
    csv.write_text("a,b\n1,2\n3,oops\n")
    code, err = run_cli(capsys, "train", "--data", str(csv), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "bad.csv")
    folder = tmp_path / "images"
    folder.mkdir()
    Image.new("L", (8, 8)).save(folder / "a.png")
    Image.new("L", (9, 8)).save(folder / "b.png")
    code, err = run_cli(capsys, "train", "--data", str(folder), "--out", str(tmp_path / "r"))
    assert_one_line_error(code, err, "different sizes", "a.png", "b.png")
    (tmp_path / "bad.npy").write_bytes(b"\x93NUMPY garbage")
    code, err = run_cli(
        capsys, "train", "--data", str(tmp_path / "bad.npy"), "--out", str(tmp_path / "r")
    )
    assert_one_line_error(code, err, "bad.npy", "not a readable .npy")
    assert not (tmp_path / "r").exists()
    corrupt = tmp_path / "run"
    corrupt.mkdir()
    (corrupt / "config.yaml").write_text("data: moons\n")
    (corrupt / "model.safetensors").write_bytes(b"not a model")
    code, err = run_cli(capsys, "sample", str(corrupt), "--out", str(tmp_path / "x.npy"))
    assert_one_line_error(code, err)
    code, err = run_cli(
        capsys, "sample", str(tmp_path / "nowhere"), "--out", str(tmp_path / "x.npy")
    )
    assert_one_line_error(code, err, "nowhere")


def test_existing_run_is_never_overwritten(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    out = tmp_path / "run"
    args = [
        "train",
        "--data",
        "moons",
        "--n-data",
        "300",
        "--steps",
        "5",
        "--hidden",
        "16",
        "--out",
        str(out),
        "--quiet",
    ]
    assert main(args) == 0
    before = (out / "model.safetensors").read_bytes()
    code, err = run_cli(capsys, *args, "--lr", "0.1")
    assert_one_line_error(code, err, "--force")
    code, err = run_cli(capsys, *args)  # same settings, already trained
    assert_one_line_error(code, err, "--force")
    assert (out / "model.safetensors").read_bytes() == before
    # Conflicting options and an existing output file.
    code, err = run_cli(
        capsys, "sample", str(out), "--guidance", "2", "--out", str(tmp_path / "x.npy")
    )
    assert_one_line_error(code, err, "--label")
    (tmp_path / "x.npy").write_bytes(b"keep me")
    code, err = run_cli(capsys, "sample", str(out), "--out", str(tmp_path / "x.npy"))
    assert_one_line_error(code, err, "--force")
    assert (tmp_path / "x.npy").read_bytes() == b"keep me"
    code, err = run_cli(
        capsys, "sample", str(out), "--label", "1", "--out", str(tmp_path / "y.npy")
    )
    assert_one_line_error(code, err, "unconditional")
    assert main([*args, "--force"]) == 0  # --force retrains


def test_help_lists_every_command(capsys: pytest.CaptureFixture) -> None:
    with pytest.raises(SystemExit) as info:
        main(["--help"])
    assert info.value.code == 0
    text = capsys.readouterr().out
    for command in ("train", "sample", "evaluate", "plot", "demo", "simulate"):
        assert command in text
        with pytest.raises(SystemExit) as info:
            main([command, "--help"])
        assert info.value.code == 0
        assert f"examples:\n  flowdiff {command}" in capsys.readouterr().out, command


@pytest.mark.slow
def test_demo_and_simulate_write_their_pictures(tmp_path: Path) -> None:
    flowdiff("demo", "--out", str(tmp_path / "demo"), "--steps", "200")
    for name in ("samples.png", "field.png", "trajectories.png", "density.png", "loss.png"):
        with Image.open(tmp_path / "demo" / name) as im:
            assert im.format == "PNG"
    with Image.open(tmp_path / "demo" / "flow.gif") as im:
        assert im.n_frames > 10
    with Image.open(tmp_path / "demo" / "density.gif") as im:
        assert im.n_frames == commands.DENSITY_FRAMES
    flowdiff("simulate", "--out", str(tmp_path / "sim"))
    pictures = sorted(p.stem for p in (tmp_path / "sim").glob("*.png"))
    assert pictures == sorted(SIMULATE_EXAMPLES)  # every --example choice, one PNG each


def test_plot_evaluate_demo_never_overwrite(
    moons_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    run = tmp_path / "run"
    shutil.copytree(moons_run, run, ignore=shutil.ignore_patterns("metrics.json"))
    keep = b"keep me"
    kept = (tmp_path / "p.png", tmp_path / "m.json", run / "metrics.json")
    for path in kept:
        path.write_bytes(keep)
    code, err = run_cli(
        capsys, "plot", str(run), "--kind", "samples", "--out", str(tmp_path / "p.png")
    )
    assert_one_line_error(code, err, "p.png", "--force")
    code, err = run_cli(capsys, "evaluate", str(run), "--out", str(tmp_path / "m.json"))
    assert_one_line_error(code, err, "m.json", "--force")
    code, err = run_cli(capsys, "evaluate", str(run))  # the default RUN/metrics.json
    assert_one_line_error(code, err, "metrics.json", "--force")
    assert all(path.read_bytes() == keep for path in kept)
    # The demo's own settings (2000 steps, default width) differ from this run's.
    before = (run / "model.safetensors").read_bytes()
    code, err = run_cli(capsys, "demo", "--out", str(run))
    assert_one_line_error(code, err, "other settings", "steps", "--force")
    assert (run / "model.safetensors").read_bytes() == before
    assert not (run / "field.png").exists()
    # An animation kind into a .png is refused before any sampling.
    code, err = run_cli(
        capsys, "plot", str(run), "--kind", "density-animation", "--out", str(tmp_path / "d.png")
    )
    assert_one_line_error(code, err, "writes a .gif")
    assert (
        main(["plot", str(run), "--kind", "samples", "--out", str(tmp_path / "p.png"), "--force"])
        == 0
    )
    with Image.open(tmp_path / "p.png") as im:
        assert im.format == "PNG"


def test_evaluate_is_reproducible_and_reports_floors(
    moons_run: Path, tmp_path: Path, capsys: pytest.CaptureFixture
) -> None:
    args = ["evaluate", str(moons_run), "--n", "300", "--steps", "4", "--seed", "3"]
    assert main([*args, "--out", str(tmp_path / "a.json")]) == 0
    assert main([*args, "--out", str(tmp_path / "b.json")]) == 0
    a = json.loads((tmp_path / "a.json").read_text())
    b = json.loads((tmp_path / "b.json").read_text())
    assert a == b  # the same seed: the same samples, split, projections and bandwidths
    assert a["units"] == "normalised" and len(a["mmd_bandwidths"]) == 5
    # Bandwidths are multiples of the median distance of standardised 2-D data (~1.5-2).
    assert 1.0 < a["mmd_bandwidths"][2] < 2.5
    assert main([*args, "--seed", "4", "--out", str(tmp_path / "c.json")]) == 0
    c = json.loads((tmp_path / "c.json").read_text())
    assert c["sliced_wasserstein"] != a["sliced_wasserstein"]
    code, err = run_cli(
        capsys,
        *args,
        "--inception-weights",
        str(tmp_path / "w.pth"),
        "--out",
        str(tmp_path / "d.json"),
    )
    assert_one_line_error(code, err, "needs images")


def test_density_in_time_is_a_normalised_density_in_data_units(moons_run: Path) -> None:
    """The density animation's log p_t: p_init pushed to data units at t = 0, the model's own
    log_prob at t = 1 (same solver and steps), and a unit mass at t = 1/2 (a wrong sign of the
    divergence or a missing log-determinant would change it)."""
    model, _, _ = commands._load_run(str(moons_run))
    log_p, t0, t1 = commands.log_density_in_time(model, steps=6)
    assert (t0, t1) == (0.0, 1.0)  # a flow's ODE spans [0, 1]
    std = torch.tensor(model.normalization["std"])
    mean = torch.tensor(model.normalization["mean"])
    x = mean + std * torch.randn(50, 2, generator=torch.Generator().manual_seed(0))
    z = (x - mean) / std
    gauss = -0.5 * z.square().sum(1) - math.log(2 * math.pi) - std.log().sum()
    assert torch.allclose(log_p(x, torch.zeros(50)), gauss, atol=1e-5)
    exact = model.log_prob(x, solver="rk4", steps=6)
    assert torch.allclose(log_p(x, torch.ones(50)), exact, atol=1e-4)
    # Riemann sum of p_{1/2} over mean +- 6 std on an 80 x 80 grid.
    axes = [torch.linspace(float(m - 6 * s), float(m + 6 * s), 80) for m, s in zip(mean, std)]
    grid = torch.cartesian_prod(*axes)
    cell = float((axes[0][1] - axes[0][0]) * (axes[1][1] - axes[1][0]))
    mass = float(log_p(grid, torch.full((len(grid),), 0.5)).exp().sum()) * cell
    assert mass == pytest.approx(1.0, abs=0.01)  # measured: 1 + 1e-5 on the demo run
    # The field figure's velocity in data units: the model-unit velocity scaled by std.
    field = commands._data_units_field(model)
    with model.averaged():
        u = model.field()(z, torch.full((50,), 0.3))
    assert torch.allclose(field(x, torch.full((50,), 0.3)), u * std, atol=1e-5)


def test_nll_and_bits_per_dim(tmp_path: Path, capsys: pytest.CaptureFixture) -> None:
    """--nll prints no warning; integer images are dequantised and get bits per dim."""
    points = tmp_path / "moons"
    train = ["train", "--model", "realnvp", "--steps", "3", "--batch-size", "64", "--quiet"]
    assert main([*train, "--data", "moons", "--n-data", "300", "--out", str(points)]) == 0
    capsys.readouterr()
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # RealNVP's log_prob carries a graph: no UserWarning
        assert main(["evaluate", str(points), "--n", "100", "--nll"]) == 0
    assert capsys.readouterr().err == ""
    metrics = json.loads((points / "metrics.json").read_text())
    assert metrics["nll_dequantized"] is False
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (2 * math.log(2)))

    # Unlabelled 8x8 digits (grey levels 0..16) from a file: no classifier, dequantised NLL.
    from sklearn.datasets import load_digits

    digits = tmp_path / "digits.npy"
    np.save(digits, load_digits().images[:400, None].astype(np.float32))
    images = tmp_path / "images"
    assert main([*train, "--data", str(digits), "--out", str(images)]) == 0
    args = ["evaluate", str(images), "--data", str(digits), "--n", "50", "--nll"]
    assert main(args) == 0
    metrics = json.loads((images / "metrics.json").read_text())
    assert metrics["nll_dequantized"] is True
    # A bound on -log2 P(k) of a discrete law: positive (a density at the grid points could
    # score anything), here far above a 3-step model's best.
    assert metrics["bits_per_dim"] == pytest.approx(metrics["nll"] / (64 * math.log(2)))
    assert metrics["bits_per_dim"] > 0
    # Inception FID: a missing weights file, then (without torchmetrics) the missing package,
    # both before any sampling.
    force = [*args, "--force"]
    code, err = run_cli(capsys, *force, "--inception-weights", str(tmp_path / "none.pth"))
    assert_one_line_error(code, err, "none.pth", "nothing is downloaded")
    (tmp_path / "w.pth").write_bytes(b"")
    try:
        import torchmetrics  # noqa: F401
    except ImportError:
        code, err = run_cli(capsys, *force, "--inception-weights", str(tmp_path / "w.pth"))
        assert_one_line_error(code, err, "pip install torchmetrics")
