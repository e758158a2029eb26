"""``benchmarks/bench_sampling.py`` in quick mode: every library and sampler gets its row, a cell
for exactly the NFEs its solver can use, and the digits part its accuracies and picture."""

import math

import pytest
from benchmarks.bench_sampling import GUIDANCE, NFES, SETTINGS, SOLVERS, run
from PIL import Image


@pytest.mark.slow
def test_quick_benchmark_tables(tmp_path):
    result = run(quick=True, out_dir=tmp_path)
    stages = {"euler_maruyama": 1, "stochastic_heun": 2} | {k: v[1] for k, v in SOLVERS.items()}
    for name in SETTINGS[True]["toys"]:
        table = result["toys"][name]
        assert table["floor"] > 0
        libraries = {row[0] for row in table["rows"]}
        assert {"flowdiff flow", "flow_matching", "torchcfm"} <= libraries
        for library, solver, *cells, adaptive in table["rows"]:
            if solver == "dopri5":
                assert not any(cells)
                ratio, nfe = adaptive.split()
                assert float(ratio) > 0 and int(nfe.strip("()")) > 0, (library, adaptive)
                continue
            for nfe, cell in zip(NFES, cells):
                assert bool(cell) == (nfe % stages[solver] == 0), (library, solver, nfe)
                if cell:
                    assert math.isfinite(float(cell)) and float(cell) > 0
    accuracy = result["digits"]["accuracy"]
    assert set(accuracy) == set(GUIDANCE) and all(0 <= a <= 1 for a in accuracy.values())
    with Image.open(tmp_path / "sampling_digits.png") as grid:
        assert grid.width > 0 and grid.height > grid.width / 4
    assert "### digits" in result["markdown"]
