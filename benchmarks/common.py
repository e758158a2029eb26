"""What every benchmark script shares: thread and seed settings, timing, result files.

Convention: ``benchmarks/bench_<name>.py`` defines ``run(quick: bool = False) -> dict`` that
returns JSON-able results with a ``"markdown"`` key holding its table(s), and ends with
``if __name__ == "__main__": main("<name>", run)``. A benchmark that writes files of its own
(pictures) takes ``out_dir: Path | None = None`` too and resolves it with :func:`output_dir`, so
that a quick run never overwrites the committed results. Timings are medians over repeats, and
speed claims are ratios measured in the same run (this machine's absolute times are noisy).

Every results JSON records where it came from (:func:`provenance`: git commit, torch version),
so a stale table can be told from a fresh one.
"""

from __future__ import annotations

import argparse
import inspect
import json
import statistics
import subprocess
import tempfile
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flowdiff.io import atomic_write

REPO_ROOT = Path(__file__).resolve().parent.parent
RESULTS_DIR = REPO_ROOT / "benchmarks" / "results"


def setup(threads: int = 1, seed: int = 0) -> None:
    """Fix the thread count and the global seed before a benchmark."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


def output_dir(out_dir: Path | str | None, quick: bool) -> Path:
    """The folder results go to: ``out_dir`` if given, else :data:`RESULTS_DIR` for a full run
    and a new temporary folder for a quick one (its tiny-size figures must not replace the
    committed ones). Created if missing."""
    if out_dir is None:
        out_dir = tempfile.mkdtemp(prefix="flowdiff-bench-") if quick else RESULTS_DIR
    path = Path(out_dir)
    path.mkdir(parents=True, exist_ok=True)
    return path


def median_time(fn: Callable[[], Any], *, repeats: int = 5, warmup: int = 1) -> float:
    """Median wall-clock seconds of ``fn()`` over ``repeats`` calls after ``warmup`` calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        start = time.perf_counter()
        fn()
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def markdown_table(header: list[str], rows: list[list[Any]]) -> str:
    """A GitHub-flavoured Markdown table; floats printed with 4 significant digits."""

    def fmt(v: Any) -> str:
        return f"{v:.4g}" if isinstance(v, float) else str(v)

    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]
    lines += ["| " + " | ".join(fmt(v) for v in row) + " |" for row in rows]
    return "\n".join(lines)


def _git(*args: str) -> str | None:
    try:
        done = subprocess.run(
            ["git", *args], cwd=REPO_ROOT, capture_output=True, text=True, check=True, timeout=30
        )
    except (OSError, subprocess.SubprocessError):
        return None
    return done.stdout.strip()


def provenance() -> dict[str, str]:
    """``{"git_commit": "<short sha>[+dirty]", "torch": version}`` of the code being measured.

    ``+dirty``: tracked or untracked changes outside ``benchmarks/results`` (which the
    benchmarks themselves rewrite). ``"unknown"`` outside a git checkout.
    """
    commit = _git("rev-parse", "--short", "HEAD")
    if commit is None:
        commit = "unknown"
    elif _git("status", "--porcelain", "--", ".", ":(exclude)benchmarks/results"):
        commit += "+dirty"
    return {"git_commit": commit, "torch": torch.__version__}


def write_results(name: str, result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<name>.json`` (with :func:`provenance` added) and ``<name>.md`` under
    ``out_dir`` (atomically)."""
    out_dir = Path(out_dir)
    out_dir.mkdir(parents=True, exist_ok=True)
    record = {**result, **provenance()}
    with atomic_write(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(record, indent=2, default=float) + "\n")
    with atomic_write(out_dir / f"{name}.md") as tmp:
        tmp.write_text(result.get("markdown", "") + "\n")
    return out_dir / f"{name}.json"


def call_run(run: Callable[..., dict[str, Any]], *, quick: bool, out_dir: Path) -> dict[str, Any]:
    """``run(quick=quick, out_dir=out_dir)``; ``out_dir`` only goes to a ``run`` that takes it
    (a benchmark that writes no files of its own has no use for it)."""
    if "out_dir" in inspect.signature(run).parameters:
        return run(quick=quick, out_dir=out_dir)
    return run(quick=quick)


def main(name: str, run: Callable[..., dict[str, Any]]) -> None:
    """Command-line entry of one benchmark script: ``python -m benchmarks.bench_<name>``."""
    parser = argparse.ArgumentParser(description=f"flowdiff benchmark: {name}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for tests")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for JSON/Markdown/figures (default {RESULTS_DIR}; --quick: a new "
        "temporary folder)",
    )
    args = parser.parse_args()
    out_dir = output_dir(args.out, args.quick)
    setup()
    result = call_run(run, quick=args.quick, out_dir=out_dir)
    path = write_results(name, result, out_dir)
    print(result.get("markdown", ""))
    print(f"\nresults: {path}")
