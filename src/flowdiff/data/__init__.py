"""Data sets by name and from files, with recorded normalisation.

- :func:`load_data` (``name_or_path`` -> :class:`Data`): the one entry point.
- :func:`dataset_names`, :func:`sample_toy` (fresh 2D toy samples, e.g. for metrics),
  :func:`toy_mixture` (the exact mixture behind ``"8gaussians"`` / ``"gmm"``).
- :class:`Normalizer`: ``forward`` / ``inverse`` / ``to_dict`` / ``from_dict``.
- Quantised data (grey levels, 8-bit pixels): :class:`Dequantized` (a dataset that adds fresh
  uniform noise at every draw, for training densities), :func:`dequantize` (one draw, for
  held-out data) and :func:`discrete_log_likelihood_bound`.
"""

from flowdiff.data.datasets import DEFAULT_TOY_SIZE, Data, dataset_names, load_data
from flowdiff.data.dequantize import Dequantized, dequantize, discrete_log_likelihood_bound
from flowdiff.data.files import RawData, read_csv_table, read_file, read_idx
from flowdiff.data.normalize import NORMALIZER_KINDS, Normalizer
from flowdiff.data.toys import sample_toy, toy_mixture, toy_names, toy_num_classes

__all__ = [
    "DEFAULT_TOY_SIZE",
    "NORMALIZER_KINDS",
    "Data",
    "Dequantized",
    "Normalizer",
    "RawData",
    "dataset_names",
    "dequantize",
    "discrete_log_likelihood_bound",
    "load_data",
    "read_csv_table",
    "read_file",
    "read_idx",
    "sample_toy",
    "toy_mixture",
    "toy_names",
    "toy_num_classes",
]
