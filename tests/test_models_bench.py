"""``benchmarks/bench_sampling.py`` in quick mode: every library and sampler gets its row, a cell
for exactly the NFEs its solver can use, and the digits part its accuracies and picture."""

import math

import pytest
from benchmarks.bench_sampling import GUIDANCE, NFES, REFERENCES, SETTINGS, STAGES, run
from PIL import Image


@pytest.mark.slow
def test_quick_benchmark_tables(tmp_path):
    result = run(quick=True, out_dir=tmp_path)
    seeds = len(SETTINGS[True]["seeds"])
    for name in SETTINGS[True]["toys"]:
        table = result["toys"][name]
        assert table["floor"] > 0
        assert {row[0] for row in table["rows"]} >= {"flowdiff flow", *REFERENCES}
        assert len(table["per_seed"]) == seeds
        for library, solver, *cells, adaptive in table["rows"]:
            # one cell per NFE the solver can use exactly, each "mean ± sd" over the seeds
            if solver == "dopri5":
                assert not any(cells) and adaptive.count("±") == 1, (library, adaptive)
                continue
            for nfe, cell in zip(NFES, cells):
                assert bool(cell) == (nfe % STAGES[solver] == 0), (library, solver, nfe)
            for run_cells in table["per_seed"]:
                values = run_cells[f"{library} | {solver}"]
                assert all(math.isfinite(v) and v > 0 for v in values.values())
        versus = table["versus_references"]
        # every ODE solver's cells: 6 NFEs for euler, 5 for midpoint and heun, 4 for rk4
        assert versus["cells"] == 20
        assert 0 <= versus["worse_beyond_2se"] <= versus["cells"] - versus["lower_or_equal"]
    accuracy = result["digits"]["accuracy"]
    assert set(accuracy) == set(GUIDANCE) and all(0 <= a <= 1 for a in accuracy.values())
    with Image.open(tmp_path / "sampling_digits.png") as grid:
        assert grid.width > 0 and grid.height > grid.width / 4
    assert "### digits" in result["markdown"]
