"""Run settings for ``flowdiff train``: one flat table, from flags and/or a TOML/YAML file.

The settings a run used are written to ``DIR/config.yaml`` so ``flowdiff train --config
DIR/config.yaml`` repeats it exactly. Flags given on the command line override the file.
"""

from __future__ import annotations

import dataclasses
import os
from dataclasses import dataclass, field
from pathlib import Path
from typing import Any

import yaml

from flowdiff.io import atomic_write
from flowdiff.utils import closest_name_hint

__all__ = ["RunConfig", "read_config_file"]


@dataclass
class RunConfig:
    """Everything ``flowdiff train`` needs. Field comments say what each setting is for."""

    data: str = "moons"  # built-in data set name or a path to a file / image folder
    model: str = "flow"  # a family: flow, diffusion, cnf, realnvp, vae, gan, ddpm, ...
    n_data: int | None = None  # points drawn from a toy set, or a random subset of a file
    # Train on the data's labels (enables --label/--guidance). None: yes for labelled images,
    # no for labelled toys, whose unconditional samples are what the demo and metrics look at.
    conditional: bool | None = None
    # Train on x + U(-w/2, w/2), fresh at every draw, for data on a grid of step w (grey levels,
    # pixels): a density then cannot peak on the grid points. None: yes when the data is on one.
    dequantize: bool | None = None
    seed: int = 0  # seeds data draws, initialisation and training: a run repeats bit for bit
    device: str = "auto"  # cpu, cuda or auto
    # model
    path: str | None = None  # schedule of flow/diffusion models (linear, cosine, vp, ...)
    hidden: int | None = None  # width of the network's hidden layers
    depth: int | None = None  # number of hidden layers (MLPs)
    model_options: dict[str, Any] = field(default_factory=dict)  # other constructor arguments
    # training (fields of flowdiff.train.TrainConfig)
    steps: int = 3000  # optimizer steps
    batch_size: int = 256  # samples per step
    lr: float = 2e-3  # AdamW learning rate
    # Hold out this fraction of the data (seeded); its loss is logged as val_loss. None: all train.
    val_fraction: float | None = None
    keep_best: bool = False  # end with the weights of the lowest val_loss (needs val_fraction)
    train_options: dict[str, Any] = field(default_factory=dict)  # other TrainConfig fields

    def __post_init__(self) -> None:
        for name in ("steps", "batch_size"):
            value = getattr(self, name)
            if isinstance(value, bool) or not isinstance(value, int) or value < 1:
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        for name in ("n_data", "hidden", "depth"):
            value = getattr(self, name)
            if value is not None and (
                isinstance(value, bool) or not isinstance(value, int) or value < 1
            ):
                raise ValueError(f"{name} must be a positive integer, got {value!r}")
        if not isinstance(self.lr, (int, float)) or isinstance(self.lr, bool) or not self.lr > 0:
            raise ValueError(f"lr must be a positive number, got {self.lr!r}")
        if self.val_fraction is not None and not (
            isinstance(self.val_fraction, (int, float))
            and not isinstance(self.val_fraction, bool)
            and 0 < self.val_fraction < 1
        ):
            raise ValueError(f"val_fraction must be a number in (0, 1), got {self.val_fraction!r}")
        if self.dequantize is not None and not isinstance(self.dequantize, bool):
            raise ValueError(f"dequantize must be true, false or null, got {self.dequantize!r}")
        if not isinstance(self.keep_best, bool):
            raise ValueError(f"keep_best must be true or false, got {self.keep_best!r}")
        if self.keep_best and self.val_fraction is None:
            raise ValueError("keep_best needs held-out data: set val_fraction (--val-fraction)")
        for name in ("model_options", "train_options"):
            if not isinstance(getattr(self, name), dict):
                raise ValueError(
                    f"{name} must be a table of key = value, got {getattr(self, name)!r}"
                )

    @classmethod
    def from_dict(cls, values: dict[str, Any], source: str) -> RunConfig:
        """Build from a mapping, naming ``source`` and the closest key for an unknown key."""
        known = [f.name for f in dataclasses.fields(cls)]
        for key in values:
            if key not in known:
                hint = closest_name_hint(key, known)
                raise ValueError(f"unknown setting {key!r} in {source}{hint}")
        return cls(**values)

    def to_dict(self) -> dict[str, Any]:
        return dataclasses.asdict(self)

    def write(self, path: str | os.PathLike) -> Path:
        """Write as YAML, atomically."""
        with atomic_write(path) as tmp:
            tmp.write_text(
                "# flowdiff run settings: `flowdiff train --config THIS_FILE` repeats the run\n"
                + yaml.safe_dump(self.to_dict(), sort_keys=False)
            )
        return Path(path)


def read_config_file(path: str | os.PathLike) -> dict[str, Any]:
    """Read a ``.toml`` or ``.yaml``/``.yml`` settings file into a mapping."""
    p = Path(path)
    if not p.is_file():
        raise FileNotFoundError(f"config file not found: {p}")
    text = p.read_text()
    try:
        if p.suffix == ".toml":
            import tomllib

            values = tomllib.loads(text)
        elif p.suffix in (".yaml", ".yml"):
            values = yaml.safe_load(text) or {}
        else:
            raise ValueError(f"config file {p} must end in .toml, .yaml or .yml")
    except (yaml.YAMLError, ValueError) as err:
        if isinstance(err, ValueError) and "must end in" in str(err):
            raise
        raise ValueError(f"config file {p} is not valid {p.suffix[1:].upper()}: {err}") from err
    if not isinstance(values, dict):
        raise ValueError(
            f"config file {p} must hold a table of settings, got {type(values).__name__}"
        )
    return values
