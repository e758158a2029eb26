"""``benchmarks/bench_families.py`` in quick mode: every family on every data set, with the
counted NFE of each sampler and the comparison pictures."""

from __future__ import annotations

import math

import pytest
from benchmarks.bench_families import FAMILIES, SETTINGS, run
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
        assert rows["gan"]["nll"] is None
        assert all(rows[f]["exact"] for f in ("flow", "diffusion", "cnf", "realnvp"))
        assert not any(rows[f]["exact"] for f in ("vae", "ddpm", "latent_flow"))
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
