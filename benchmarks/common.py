"""What every benchmark script shares: thread and seed settings, timing, result files.

Convention: ``benchmarks/bench_<name>.py`` defines ``run(quick: bool = False) -> dict`` that
returns JSON-able results with a ``"markdown"`` key holding its table(s), and ends with
``if __name__ == "__main__": main("<name>", run)``. Timings are medians over repeats, and speed
claims are ratios measured in the same run (this machine's absolute times are noisy).
"""

from __future__ import annotations

import argparse
import json
import statistics
import time
from collections.abc import Callable
from pathlib import Path
from typing import Any

import torch

from flowdiff.io import atomic_write

RESULTS_DIR = Path(__file__).resolve().parent / "results"


def setup(threads: int = 1, seed: int = 0) -> None:
    """Fix the thread count and the global seed before a benchmark."""
    torch.set_num_threads(threads)
    torch.manual_seed(seed)


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


def write_results(name: str, result: dict[str, Any], out_dir: Path = RESULTS_DIR) -> Path:
    """Write ``<name>.json`` and ``<name>.md`` under ``out_dir`` (atomically)."""
    out_dir.mkdir(parents=True, exist_ok=True)
    with atomic_write(out_dir / f"{name}.json") as tmp:
        tmp.write_text(json.dumps(result, indent=2, default=float) + "\n")
    with atomic_write(out_dir / f"{name}.md") as tmp:
        tmp.write_text(result.get("markdown", "") + "\n")
    return out_dir / f"{name}.json"


def main(name: str, run: Callable[..., dict[str, Any]]) -> None:
    """Command-line entry of one benchmark script: ``python -m benchmarks.bench_<name>``."""
    parser = argparse.ArgumentParser(description=f"flowdiff benchmark: {name}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds), for tests")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for JSON/Markdown")
    args = parser.parse_args()
    setup()
    result = run(quick=args.quick)
    write_results(name, result, args.out)
    print(result.get("markdown", ""))
