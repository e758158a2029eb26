"""The ``flowdiff`` command: train, sample, evaluate, plot, demo, simulate."""
