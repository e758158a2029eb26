"""The ``flowdiff`` command end to end: train -> sample -> evaluate -> plot, from a subprocess,
and every kind of bad input answered by one line and exit status 2 with nothing overwritten."""

from __future__ import annotations

import json
import os
import subprocess
import sys
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

from flowdiff.cli.main import main

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
    # Samples are in data units (normalisation inverted): two moons span about [-1, 2] x [-0.5, 1].
    assert -1.6 < x[:, 0].mean() + 0 < 2.2 and x[:, 0].std() > 0.5

    flowdiff(
        "sample", str(moons_run), "--n", "300", "--sigma", "0.5", "--out", str(tmp_path / "x.pt")
    )
    assert torch.load(tmp_path / "x.pt", weights_only=True).shape == (300, 2)

    flowdiff("evaluate", str(moons_run), "--n", "500", "--steps", "20")
    metrics = json.loads((moons_run / "metrics.json").read_text())
    for key in ("wasserstein2", "wasserstein2_floor", "mmd", "energy_distance"):
        assert np.isfinite(metrics[key]), key
    # A trained flow beats noise by far: its W2 to data is within a few floors.
    assert metrics["wasserstein2"] < 4 * metrics["wasserstein2_floor"] + 0.1

    for kind, name in (
        ("field", "f.png"),
        ("trajectories", "t.png"),
        ("samples", "s.png"),
        ("loss", "l.png"),
        ("density", "d.png"),
    ):
        flowdiff(
            "plot", str(moons_run), "--kind", kind, "--out", str(tmp_path / name), "--steps", "8"
        )
        with Image.open(tmp_path / name) as im:
            assert im.format == "PNG" and min(im.size) > 100
    flowdiff(
        "plot",
        str(moons_run),
        "--kind",
        "animation",
        "--steps",
        "10",
        "--out",
        str(tmp_path / "a.gif"),
    )
    with Image.open(tmp_path / "a.gif") as im:
        assert im.format == "GIF" and im.n_frames == 11  # one frame per saved time, t = 0..1


@pytest.mark.slow
def test_train_sample_evaluate_digits(tmp_path: Path) -> None:
    out = tmp_path / "digits"
    flowdiff(
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
    flowdiff("sample", str(out), "--n", "10", "--steps", "2", "--out", str(tmp_path / "d.npy"))
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
    assert np.isfinite(metrics["classifier_frechet"])
    assert (tmp_path / "clf.safetensors").is_file()  # the classifier is cached where asked


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
    assert not (tmp_path / "r" / "model.safetensors").exists()


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
    assert_one_line_error(code, err)
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


@pytest.mark.slow
def test_demo_and_simulate_write_their_pictures(tmp_path: Path) -> None:
    flowdiff("demo", "--out", str(tmp_path / "demo"), "--steps", "200")
    for name in ("samples.png", "field.png", "trajectories.png", "density.png", "loss.png"):
        with Image.open(tmp_path / "demo" / name) as im:
            assert im.format == "PNG"
    with Image.open(tmp_path / "demo" / "flow.gif") as im:
        assert im.n_frames > 10
    flowdiff("simulate", "--out", str(tmp_path / "sim"))
    assert len(list((tmp_path / "sim").glob("*.png"))) == 5
