"""Two-dimensional toy distributions: infinite samplers driven by a ``torch.Generator``.

Every set is scaled to lie roughly in ``[-4, 4]^2`` (the FFJORD convention), so the same plot
limits and the same ``N(0, I)`` source suit all of them; ``load_data`` standardises them anyway.

Name: what it is; where it lies; what its labels are.

- ``8gaussians``: 8 isotropic Gaussians, std 0.5, centres on the circle of radius 4; ``|x| ~ 4``;
  mode 0..7 (counter-clockwise from angle 0).
- ``gmm``: 3 anisotropic Gaussians, weights 0.5 / 0.3 / 0.2; about ``[-5, 4.5]^2``; mode 0..2.
- ``moons``: scikit-learn's two moons, noise 0.05, centred then scaled by 2.5 (half circles of
  radius 2.5); ``[-4, 4] x [-2, 2]``; moon 0..1.
- ``circles``: scikit-learn's circles scaled to radii 3.5 (label 0) and 1.75 (label 1), noise
  0.07; ``|x| <= 3.7``.
- ``checkerboard``: uniform on the 8 squares with even column + row of a 4 x 4 board of side-2
  squares covering ``[-4, 4]^2``; unlabelled.
- ``spirals``: two interleaved Archimedean spirals ``r = 4 theta / (3 pi)``, ``theta`` in
  ``[0, 3 pi]``, the second rotated by pi, noise 0.1; ``|x| <= 4.3``; spiral 0..1.
- ``swissroll``: scikit-learn's swiss roll, its (x, z) coordinates / 3.5, noise 0.14; about
  ``[-3.5, 4.5]^2``; unlabelled.
- ``pinwheel``: 5 arms at radius ~ 2 (std 0.6, width std 0.1) that bend further the further out
  they go; ``|x| <= 4.3``; arm 0..4.
- ``rings``: 4 rings of radii 1, 2, 3, 4, noise 0.08, mass proportional to radius (the same
  density along every ring); ``|x| <= 4.3``; ring 0..3.
- ``scurve``: scikit-learn's S-curve, its (x, z) coordinates x 2, noise 0.1;
  ``[-2, 2] x [-4, 4]``; unlabelled.

Scikit-learn's generators (moons, circles, swiss roll, S-curve) take an integer seed drawn from the
torch generator, so one ``torch.Generator`` seed reproduces every set bit for bit.
"""

from __future__ import annotations

import math
from collections.abc import Callable
from dataclasses import dataclass

import numpy as np
import torch
from torch import Tensor

from flowdiff.distributions import GaussianMixture
from flowdiff.utils import check_name, randn

__all__ = ["sample_toy", "toy_mixture", "toy_names", "toy_num_classes"]

Sampler = Callable[[int, torch.Generator | None], tuple[Tensor, Tensor | None]]


@dataclass(frozen=True)
class _Toy:
    sampler: Sampler
    num_classes: int | None


# ---------------------------------------------------------------------- randomness helpers
def _sklearn_seed(generator: torch.Generator | None) -> int:
    """An integer seed for scikit-learn's ``random_state``, drawn from the torch generator."""
    return int(torch.randint(0, 2**31 - 1, (), generator=generator))


def _from_numpy(x: np.ndarray, y: np.ndarray | None = None) -> tuple[Tensor, Tensor | None]:
    xt = torch.from_numpy(np.ascontiguousarray(x, dtype=np.float32))
    return xt, None if y is None else torch.from_numpy(np.asarray(y, dtype=np.int64))


def _rotate(angle: Tensor, v: Tensor) -> Tensor:
    """Rotate each row of ``v: (n, 2)`` by its own ``angle: (n,)``."""
    c, s = angle.cos(), angle.sin()
    return torch.stack([c * v[:, 0] - s * v[:, 1], s * v[:, 0] + c * v[:, 1]], dim=1)


# ---------------------------------------------------------------------- mixtures
def _gmm() -> GaussianMixture:
    # Unequal weights and rotated, elongated covariances: a mixture that is neither symmetric nor
    # isotropic, unlike 8gaussians, so it exercises the full-covariance code paths.
    means = torch.tensor([[-2.0, -1.5], [2.5, -1.0], [0.0, 2.5]])
    covs = torch.tensor(
        [
            [[1.0, 0.6], [0.6, 0.8]],
            [[0.3, -0.2], [-0.2, 0.6]],
            [[1.2, 0.0], [0.0, 0.15]],
        ]
    )
    return GaussianMixture(means, covs, torch.tensor([0.5, 0.3, 0.2]))


_MIXTURES: dict[str, Callable[[], GaussianMixture]] = {
    "8gaussians": lambda: GaussianMixture.symmetric_2d(8, radius=4.0, std=0.5),
    "gmm": _gmm,
}


def toy_mixture(name: str) -> GaussianMixture:
    """The exact :class:`GaussianMixture` behind ``"8gaussians"`` or ``"gmm"``.

    Its ``log_prob`` / ``score`` are the ground truth for density plots and, through
    ``paths.GaussianMixtureOracle``, for the exact marginal vector field.
    """
    if name not in _MIXTURES:
        raise ValueError(
            f"toy set {name!r} is not a Gaussian mixture; choose from {list(_MIXTURES)}"
        )
    return _MIXTURES[name]()


def _mixture_sampler(name: str) -> Sampler:
    def sample(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
        x, y = toy_mixture(name).sample(n, generator=generator, return_labels=True)
        return x.float(), y

    return sample


# ---------------------------------------------------------------------- scikit-learn sets
def _moons(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    from sklearn.datasets import make_moons

    # sklearn's moons are half circles of radius 1 centred at (0, 0) and (1, 0.5): shift the
    # bounding box [-1, 2] x [-0.5, 1] to be centred at 0, then widen to about [-4, 4].
    x, y = make_moons(n, noise=0.05, random_state=_sklearn_seed(generator))
    return _from_numpy((x - [0.5, 0.25]) * 2.5, y)


def _circles(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    from sklearn.datasets import make_circles

    x, y = make_circles(n, noise=0.02, factor=0.5, random_state=_sklearn_seed(generator))
    return _from_numpy(x * 3.5, y)


def _swissroll(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    from sklearn.datasets import make_swiss_roll

    # The roll (t cos t, t sin t), t in [1.5 pi, 4.5 pi], lives in the x-z plane of sklearn's 3D
    # output; y is the roll's (uniform) width and is dropped.
    x, _ = make_swiss_roll(n, noise=0.5, random_state=_sklearn_seed(generator))
    return _from_numpy(x[:, [0, 2]] / 3.5)


def _scurve(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    from sklearn.datasets import make_s_curve

    # (sin t, sign(t) (cos t - 1)), t in [-3 pi / 2, 3 pi / 2], is the S in the x-z plane.
    x, _ = make_s_curve(n, noise=0.05, random_state=_sklearn_seed(generator))
    return _from_numpy(x[:, [0, 2]] * 2.0)


# ---------------------------------------------------------------------- hand-written sets
CHECKER_SIDE = 2.0  # side of one square; the board is 4 x 4 squares on [-4, 4]^2


def _checkerboard(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    # Pick one of the 8 squares whose (column + row) is even, then a uniform point inside it.
    square = torch.randint(0, 8, (n,), generator=generator)
    row = square // 2
    col = 2 * (square % 2) + row % 2
    offset = torch.rand((n, 2), generator=generator) * CHECKER_SIDE
    corner = torch.stack([col, row], dim=1).float() * CHECKER_SIDE - 4.0
    return corner + offset, None


def _spirals(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    # Archimedean spiral r = 4 theta / theta_max, theta in [0, theta_max = 3 pi] (1.5 turns).
    # Its arc length grows like theta^2, so theta = sqrt(u) theta_max spreads the points evenly
    # along the curve instead of piling them up at the centre.
    theta_max = 3 * math.pi
    theta = torch.rand((n,), generator=generator).sqrt() * theta_max
    r = 4.0 * theta / theta_max
    label = torch.randint(0, 2, (n,), generator=generator)
    sign = 1.0 - 2.0 * label.float()  # the second spiral is the first rotated by pi
    curve = torch.stack([r * theta.cos(), r * theta.sin()], dim=1) * sign[:, None]
    return curve + 0.1 * randn((n, 2), generator=generator), label


PINWHEEL_ARMS = 5
PINWHEEL_TWIST = 0.25


def _pinwheel(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    # A point (rho, tau) ~ N((1, 0), diag(0.3^2, 0.05^2)) on arm k is rotated by
    # 2 pi k / 5 + twist * exp(rho): the further out, the more the arm bends. Scaled by 2.
    label = torch.randint(0, PINWHEEL_ARMS, (n,), generator=generator)
    z = randn((n, 2), generator=generator) * torch.tensor([0.3, 0.05])
    rho = z[:, 0] + 1.0
    angle = 2 * math.pi * label.float() / PINWHEEL_ARMS + PINWHEEL_TWIST * rho.exp()
    return 2.0 * _rotate(angle, torch.stack([rho, z[:, 1]], dim=1)), label


RING_RADII = (1.0, 2.0, 3.0, 4.0)


def _rings(n: int, generator: torch.Generator | None) -> tuple[Tensor, Tensor | None]:
    # Ring k gets mass proportional to its circumference, so the density along every ring is
    # the same (points per unit length).
    radii = torch.tensor(RING_RADII)
    label = torch.multinomial(radii / radii.sum(), n, replacement=True, generator=generator)
    angle = torch.rand((n,), generator=generator) * (2 * math.pi)
    circle = torch.stack([angle.cos(), angle.sin()], dim=1)
    x = radii[label][:, None] * circle + 0.08 * randn((n, 2), generator=generator)
    return x, label


_TOYS: dict[str, _Toy] = {
    "8gaussians": _Toy(_mixture_sampler("8gaussians"), 8),
    "gmm": _Toy(_mixture_sampler("gmm"), 3),
    "moons": _Toy(_moons, 2),
    "circles": _Toy(_circles, 2),
    "checkerboard": _Toy(_checkerboard, None),
    "spirals": _Toy(_spirals, 2),
    "swissroll": _Toy(_swissroll, None),
    "pinwheel": _Toy(_pinwheel, PINWHEEL_ARMS),
    "rings": _Toy(_rings, len(RING_RADII)),
    "scurve": _Toy(_scurve, None),
}


# ---------------------------------------------------------------------- public entry points
def toy_names() -> list[str]:
    """Names of the 2D toy samplers (each has fresh samples on demand)."""
    return sorted(_TOYS)


def _toy(name: str) -> _Toy:
    return _TOYS[check_name(name, _TOYS, "toy set")]


def toy_num_classes(name: str) -> int | None:
    """Number of labels the toy set ``name`` carries (mode, arm, ring...), ``None`` if none."""
    return _toy(name).num_classes


def sample_toy(
    name: str,
    n: int,
    generator: torch.Generator | None = None,
    *,
    return_labels: bool = False,
) -> Tensor | tuple[Tensor, Tensor | None]:
    """Draw ``n`` fresh points ``(n, 2)`` float32 from the toy set ``name``.

    Args:
        name: one of :func:`toy_names`.
        n: number of points, ``>= 1``.
        generator: a CPU ``torch.Generator``; the same seed gives the same points.
        return_labels: also return the labels ``(n,)`` long (``None`` for unlabelled sets).
    """
    toy = _toy(name)
    if isinstance(n, bool) or not isinstance(n, int) or n < 1:
        raise ValueError(f"n must be a positive int, got {n!r}")
    if generator is not None and generator.device.type != "cpu":
        raise ValueError(f"generator must be a CPU generator, got one on {generator.device}")
    x, y = toy.sampler(n, generator)
    return (x, y) if return_labels else x
