"""Run every benchmark (or a chosen subset) and collect the tables the README quotes.

    python -m benchmarks.run                 # everything, full sizes
    python -m benchmarks.run --quick         # tiny sizes: seconds, used by the test suite
    python -m benchmarks.run solvers train   # a subset

Each ``benchmarks/bench_<name>.py`` follows the convention of ``benchmarks/common.py``; results
land in ``benchmarks/results/<name>.json`` and ``.md``, and ``summary.md`` concatenates the tables.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, setup, write_results
from flowdiff.io import atomic_write

BENCHMARKS = ("solvers", "sampling", "train", "likelihood", "families")


def run(names: list[str], *, quick: bool, out_dir: Path = RESULTS_DIR) -> dict[str, dict]:
    """Run the named benchmarks in order, each with threads=1 and seed 0; return their results."""
    results: dict[str, dict] = {}
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        setup()
        start = time.perf_counter()
        result = module.run(quick=quick)
        result["seconds"] = time.perf_counter() - start
        write_results(name, result, out_dir)
        results[name] = result
        print(
            f"## {name} ({result['seconds']:.0f} s)\n\n{result.get('markdown', '')}\n", flush=True
        )
    with atomic_write(out_dir / "summary.md") as tmp:
        tmp.write_text(
            "\n\n".join(f"## {n}\n\n{r.get('markdown', '')}" for n, r in results.items()) + "\n"
        )
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument("--out", type=Path, default=RESULTS_DIR, help="folder for results")
    args = parser.parse_args(argv)
    unknown = sorted(set(args.names) - set(BENCHMARKS))
    if unknown:
        parser.error(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )
    run(list(args.names) or list(BENCHMARKS), quick=args.quick, out_dir=args.out)


if __name__ == "__main__":
    main()
