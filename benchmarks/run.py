"""Run every benchmark (or a chosen subset) and collect the tables the README quotes.

    python -m benchmarks.run                 # everything, full sizes
    python -m benchmarks.run --quick         # tiny sizes: seconds, used by the test suite
    python -m benchmarks.run solvers train   # a subset

Each ``benchmarks/bench_<name>.py`` follows the convention of ``benchmarks/common.py``; results
land in ``benchmarks/results/<name>.json`` and ``.md`` (``--quick``: in a new temporary folder,
unless ``--out`` says otherwise), with the benchmark's own figures, and ``summary.md``
concatenates the tables.
"""

from __future__ import annotations

import argparse
import importlib
import time
from pathlib import Path

from benchmarks.common import RESULTS_DIR, call_run, output_dir, setup, write_results
from flowdiff.io import atomic_write

BENCHMARKS = ("solvers", "sampling", "train", "likelihood", "families")


def check_names(names: list[str]) -> None:
    """Raise a ``ValueError`` listing the valid names if one of ``names`` is not a benchmark."""
    unknown = sorted(set(names) - set(BENCHMARKS))
    if unknown:
        raise ValueError(
            f"unknown benchmark(s) {', '.join(unknown)}; choose from {', '.join(BENCHMARKS)}"
        )


def run(names: list[str], *, quick: bool, out_dir: Path | None = None) -> dict[str, dict]:
    """Run the named benchmarks in order, each with threads=1 and seed 0; return their results.

    Everything (JSON, Markdown, figures, ``summary.md``) goes to ``out_dir``; ``None`` is
    ``benchmarks/results`` for a full run and a new temporary folder for a quick one
    (``benchmarks.common.output_dir``).
    """
    check_names(names)
    out_dir = output_dir(out_dir, quick)
    results: dict[str, dict] = {}
    for name in names:
        module = importlib.import_module(f"benchmarks.bench_{name}")
        setup()
        start = time.perf_counter()
        result = call_run(module.run, quick=quick, out_dir=out_dir)
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
    print(f"results: {out_dir}", flush=True)
    return results


def main(argv: list[str] | None = None) -> None:
    parser = argparse.ArgumentParser(description=__doc__.splitlines()[0])
    parser.add_argument("names", nargs="*", help=f"subset of {', '.join(BENCHMARKS)}")
    parser.add_argument("--quick", action="store_true", help="tiny sizes (seconds)")
    parser.add_argument(
        "--out",
        type=Path,
        default=None,
        help=f"folder for results (default {RESULTS_DIR}; --quick: a new temporary folder)",
    )
    args = parser.parse_args(argv)
    try:
        check_names(args.names)
    except ValueError as err:
        parser.error(str(err))
    run(list(args.names) or list(BENCHMARKS), quick=args.quick, out_dir=args.out)


if __name__ == "__main__":
    main()
