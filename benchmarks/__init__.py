"""flowdiff benchmark suite: ``python -m benchmarks.run`` (or ``make bench``)."""
