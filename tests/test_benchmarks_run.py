"""The benchmark entry point (``python -m benchmarks.run``) in quick mode on three of its
benchmarks, so that it cannot rot: every result lands in the folder asked for (never in the
committed ``benchmarks/results`` unless asked), with its provenance, and the summary collects
the tables. (The families and sampling benchmarks have their own quick tests.)"""

from __future__ import annotations

import json

import pytest
import torch
from benchmarks import run as bench_run
from benchmarks.common import RESULTS_DIR, output_dir

NAMES = ["solvers", "train", "likelihood"]


@pytest.mark.slow
def test_quick_run_writes_every_result_with_its_provenance(tmp_path):
    results = bench_run.run(NAMES, quick=True, out_dir=tmp_path)
    assert list(results) == NAMES
    summary = (tmp_path / "summary.md").read_text()
    for name in NAMES:
        record = json.loads((tmp_path / f"{name}.json").read_text())
        markdown = (tmp_path / f"{name}.md").read_text()
        assert record["torch"] == torch.__version__
        commit = record["git_commit"]
        assert commit == "unknown" or len(commit.removesuffix("+dirty")) >= 7
        assert record["seconds"] > 0 and markdown.strip() == record["markdown"].strip()
        assert markdown.count("|---") >= 1 and f"## {name}\n\n{record['markdown']}" in summary
    assert json.loads((tmp_path / "likelihood.json").read_text())["quick"] is True
    # the committed results are not the quick ones
    committed = RESULTS_DIR / "likelihood.json"
    assert not committed.exists() or json.loads(committed.read_text())["quick"] is False


def test_quick_output_goes_to_a_fresh_folder_and_names_are_checked(tmp_path):
    quick = output_dir(None, quick=True)
    assert quick.is_dir() and quick != RESULTS_DIR and not any(quick.iterdir())
    quick.rmdir()
    assert output_dir(None, quick=False) == RESULTS_DIR
    assert output_dir(tmp_path / "new", quick=True) == tmp_path / "new"
    with pytest.raises(ValueError, match="unknown benchmark"):
        bench_run.run(["families", "solver"], quick=True, out_dir=tmp_path)
    with pytest.raises(SystemExit):
        bench_run.main(["solver", "--quick"])
