"""Time grids for fixed-step solvers: ``(steps + 1,)`` from ``t0`` to ``t1``, either direction."""

from __future__ import annotations

import torch
from torch import Tensor

from flowdiff.utils import check_name, check_real, positive_int

__all__ = ["GRID_KINDS", "time_grid"]

GRID_KINDS = ("uniform", "karras")


def time_grid(
    steps: int,
    kind: str = "uniform",
    t0: float = 0.0,
    t1: float = 1.0,
    rho: float = 7.0,
    *,
    dtype: torch.dtype | None = None,
    device: torch.device | str | None = None,
) -> Tensor:
    """A grid of ``steps`` intervals from ``t0`` to ``t1`` (increasing or decreasing).

    - ``"uniform"``: ``t_i = t0 + (i / steps) (t1 - t0)``.
    - ``"karras"``: the rho-spacing of Karras et al. (2022, eq. 5) applied to the distance to
      data ``s = 1 - t`` (t=1 is data): ``s_i = (s_0^{1/rho} + (i / steps) (s_N^{1/rho} -
      s_0^{1/rho}))^rho``. Steps shrink toward t=1, where sample detail forms; larger ``rho``
      concentrates them more (the last step of ``[0, 1]`` is ``steps^-rho``, so prefer
      ``rho`` of 2-3 for few steps). Needs ``t0, t1 <= 1``; a decreasing grid is the
      increasing one reversed.

    Returns:
        ``(steps + 1,)`` with ``t_0 = t0`` and ``t_steps = t1`` exactly.
    """
    positive_int(steps, "steps")
    check_name(kind, GRID_KINDS, "grid kind")
    t0, t1, rho = check_real(t0, "t0"), check_real(t1, "t1"), check_real(rho, "rho")
    if t0 == t1:
        raise ValueError(f"t0 and t1 must differ, got t0 = t1 = {t0}")
    frac = torch.arange(steps + 1, dtype=torch.float64) / steps
    if kind == "uniform":
        grid = t0 + frac * (t1 - t0)
    else:
        if rho <= 0:
            raise ValueError(f"rho must be > 0, got {rho}")
        if max(t0, t1) > 1:
            raise ValueError(f"karras grids need t0, t1 <= 1 (t=1 is data), got t0={t0}, t1={t1}")
        s0, s1 = (1 - t0) ** (1 / rho), (1 - t1) ** (1 / rho)
        grid = 1 - (s0 + frac * (s1 - s0)) ** rho
    grid[0], grid[-1] = t0, t1  # exact endpoints despite rounding
    return grid.to(dtype=dtype or torch.get_default_dtype(), device=device)
