"""Pictures (PNG) and animations (GIF) from tensors, arrays and callables.

Importing this package imports matplotlib (on the Agg canvas: no display needed); importing
``flowdiff`` alone never does. Every function writes one file atomically and returns its path.

- samples: :func:`save_samples` (picks scatter / histogram / image grid from the shape),
  :func:`plot_samples`, :func:`image_grid`;
- flows: :func:`plot_trajectories`, :func:`plot_vector_field`, :func:`plot_density`;
- training: :func:`plot_loss`;
- animations: :func:`animate_samples` (the notes' ``flow.gif``), :func:`animate_density`.

Shared figure helpers (panel size, atomic saving, GIF writing) are in
:mod:`flowdiff.viz.figures`.
"""

from flowdiff.viz.animation import animate_density, animate_samples
from flowdiff.viz.curves import plot_loss
from flowdiff.viz.fields import plot_density, plot_vector_field
from flowdiff.viz.samples import image_grid, plot_samples, save_samples
from flowdiff.viz.trajectories import plot_trajectories

__all__ = [
    "animate_density",
    "animate_samples",
    "image_grid",
    "plot_density",
    "plot_loss",
    "plot_samples",
    "plot_trajectories",
    "plot_vector_field",
    "save_samples",
]
