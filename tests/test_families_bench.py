"""``benchmarks/bench_families.py`` in quick mode: every family on every data set, with the
counted NFE of each sampler and the comparison pictures."""

from __future__ import annotations

import math

import pytest
import torch
from benchmarks.bench_families import DIGITS_BIN, FAMILIES, SETTINGS, _digits, run
from PIL import Image


@pytest.mark.slow
def test_quick_benchmark_covers_every_family(tmp_path):
    result = run(quick=True, out_dir=tmp_path)
    quick = SETTINGS[True]
    assert set(result["datasets"]) == {*quick["toys"], "digits"}
    for name, table in result["datasets"].items():
        rows = table["models"]
        assert set(rows) == {"gaussian (baseline)", *FAMILIES}
        for family, row in rows.items():
            assert math.isfinite(row["w2"]) and row["mmd"] >= 0, (name, family)
        assert rows["gan"]["nll"] is None and rows["gan"]["nll_kind"] is None
        kinds = {f: rows[f]["nll_kind"] for f in FAMILIES if f != "gan"}
        assert kinds == {
            "flow": "exact",
            "cnf": "exact",
            "realnvp": "exact",
            "diffusion": "pf_ode",  # the ODE over [t_eps, 1 - t_eps], not p_1 itself
            "vae": "bound",
            "ddpm": "bound",
            "latent_flow": "bound",
        }
        if name == "digits":
            # the dequantisation bound on the discrete NLL, in nats and in bits per pixel
            for row in rows.values():
                if row["nll"] is not None:
                    assert row["bits_per_dim"] * 64 * math.log(2) == pytest.approx(row["nll"])
            # early stopping for the one-loss families; the GAN and the latent flow have none
            stopped = {f for f in FAMILIES if "best_step" in rows[f]}
            assert stopped == set(FAMILIES) - {"gan", "latent_flow"}
            assert all(rows[f]["best_step"] == quick["steps"] for f in stopped)
        else:
            assert not any("best_step" in rows[f] for f in FAMILIES)
        # the families (and metrics) that fall short of the Gaussian are listed
        base = rows["gaussian (baseline)"]
        for family, metrics in table["shortfalls"].items():
            assert all(not rows[family][m] < base[m] for m in metrics)
        # NFE counted from the networks' calls: one pass for the one-shot samplers, K for
        # DDPM, 2 x 100 for the flow's default midpoint solver, plus the decoder for latents.
        nfe = {f: rows[f]["nfe"] for f in FAMILIES}
        assert nfe["gan"] == nfe["vae"] == nfe["realnvp"] == 1
        assert nfe["ddpm"] == quick["ddpm_steps"]
        assert nfe["flow"] == 200 and nfe["latent_flow"] == nfe["flow"] + 1
        assert table["floor"]["w2"] > 0
    for picture in ("families_2d.png", "families_digits.png"):
        with Image.open(tmp_path / picture) as image:
            assert image.width > 4 * image.height  # the families side by side
    assert "| latent_flow |" in result["markdown"]
    assert "bits/dim" in result["markdown"]


def test_digits_split_holds_out_the_floor_set_and_dequantises_it():
    """Train, test, floor and validation sets partition the 1797 digits; the held-out sets are
    dequantised (within half a grey level of the grid, off it), the training images are the grid
    values."""
    split = _digits(SETTINGS[False])
    n, n_val = SETTINGS[False]["digits_test"], SETTINGS[False]["digits_val"]
    assert len(split.test) == len(split.second) == n and len(split.val) == n_val
    assert len(split.train) == 1797 - 2 * n - n_val
    for held_out in (split.test, split.second, split.val):
        offset = held_out - torch.round(held_out / DIGITS_BIN) * DIGITS_BIN
        assert 0 < float(offset.abs().max()) <= DIGITS_BIN / 2
    grid = torch.round((split.train + 1) / DIGITS_BIN) * DIGITS_BIN - 1
    torch.testing.assert_close(split.train, grid)
