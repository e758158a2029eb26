"""The one interface every generative model of the library shares.

Flow matching, diffusion, GAN, VAE, normalizing flow, CNF and DDPM are all
:class:`GenerativeModel` subclasses, so a user (and the CLI's ``--model``) can swap one for another:

- ``fit(data, **train_options)`` trains through the library's single loop (``flowdiff.train``);
- ``sample(n, ...)`` draws ``(n, *event_shape)``;
- ``log_prob(x)`` (or ``elbo(x)``) where the family has a likelihood;
- ``save(path)`` / ``GenerativeModel.load(path)``: one safetensors file holding the weights
  (and EMA weights) with a JSON description in its header; loading never unpickles.

The training protocol the loop relies on is three methods: :meth:`optim_groups` (which
parameters each optimizer owns), :meth:`training_phases` (which groups take a step, in order,
at a given step: ``["model"]`` for most families, ``k x "discriminator"`` then ``"generator"``
for a GAN) and :meth:`loss` (per-sample loss ``(B,)`` of one phase).
"""

from __future__ import annotations

import contextlib
import json
import os
from collections.abc import Iterator
from pathlib import Path
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowdiff.io import atomic_write
from flowdiff.utils import check_name

__all__ = ["GenerativeModel", "load_model", "model_class", "registered_models"]

_FORMAT = "flowdiff.model/1"
_REGISTRY: dict[str, type[GenerativeModel]] = {}


def registered_models() -> list[str]:
    """Names of every model family (the CLI's ``--model`` choices)."""
    import flowdiff.families  # noqa: F401  (the other families register on import)

    return sorted(_REGISTRY)


def model_class(kind: str) -> type[GenerativeModel]:
    """The class registered under ``kind``; a ``ValueError`` suggesting the closest name if none."""
    if kind not in _REGISTRY:
        import flowdiff.families  # noqa: F401  (the other families register on import)
    return _REGISTRY[check_name(kind, _REGISTRY, "model")]


class GenerativeModel(nn.Module):
    """Base class: subclasses set ``kind``, store their constructor arguments, and implement
    :meth:`loss` and :meth:`sample` (and :meth:`log_prob` where they have one).

    Args:
        event_shape: shape of one sample, e.g. ``(2,)`` or ``(1, 8, 8)``.
        num_classes: number of labels for conditional models, ``None`` for unconditional.
    """

    kind: ClassVar[str] = ""

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.kind:
            if cls.kind in _REGISTRY and _REGISTRY[cls.kind] is not cls:
                raise RuntimeError(f"model kind {cls.kind!r} registered twice")
            _REGISTRY[cls.kind] = cls

    def __init__(self, event_shape: int | tuple[int, ...], num_classes: int | None = None) -> None:
        super().__init__()
        shape = (event_shape,) if isinstance(event_shape, int) else tuple(event_shape)
        if not shape or any(not isinstance(s, int) or s <= 0 for s in shape):
            raise ValueError(f"event_shape must be positive ints, got {event_shape!r}")
        if num_classes is not None and num_classes < 1:
            raise ValueError(f"num_classes must be a positive int or None, got {num_classes!r}")
        self.event_shape: tuple[int, ...] = shape
        self.num_classes = num_classes
        # Exponential moving average of the parameters, filled by the training loop.
        # ``sample``/``log_prob`` run under ``self.averaged()`` so they use it by default.
        self.ema_state: dict[str, Tensor] | None = None
        # Data normalisation recorded at fit time (``flowdiff.data``), inverted on sampling.
        self.normalization: dict[str, Any] | None = None

    # ------------------------------------------------------------------ description
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments: ``type(self)(**self.config())`` rebuilds the model."""
        return {"event_shape": list(self.event_shape), "num_classes": self.num_classes}

    @property
    def device(self) -> torch.device:
        return next(self.parameters()).device

    # ------------------------------------------------------------------ training protocol
    def optim_groups(self) -> dict[str, list[nn.Parameter]]:
        """Parameters owned by each optimizer. One group, ``"model"``, unless overridden."""
        return {"model": [p for p in self.parameters() if p.requires_grad]}

    def training_phases(self, step: int) -> list[str]:
        """Groups that take an optimizer step at training ``step``, in order."""
        return ["model"]

    def loss(
        self,
        x: Tensor,
        y: Tensor | None = None,
        *,
        phase: str = "model",
        generator: torch.Generator | None = None,
    ) -> Tensor:
        """Per-sample training loss ``(B,)`` of ``phase`` on the batch ``x`` (labels ``y``)."""
        raise NotImplementedError

    def fit(
        self, data: Any, *, val_data: Any = None, dequantize: bool = False, **options: Any
    ) -> Any:
        """Train on ``data``: a tensor, ``(x, y)``, a ``Dataset``, a ``DataLoader`` or a
        ``flowdiff.data.Data`` (its normaliser is recorded in :attr:`normalization` and inverted
        by :meth:`denormalize`; its labels are used when the model is conditional).

        ``val_data``: held-out data of the same kind (a ``Data`` must share ``data``'s
        normaliser, as :meth:`flowdiff.data.Data.split` gives), whose loss is logged as
        ``val_loss`` (``val_every``, ``keep_best``). ``dequantize``: ``data`` is a ``Data`` on a
        grid (``data.bin_width``, e.g. images): train on ``x + U(-w/2, w/2)`` drawn afresh at
        every draw (:class:`flowdiff.data.Dequantized`), so that a density model cannot peak on
        the grid points; a ``Data`` ``val_data`` is dequantised once (seeded). ``options`` are
        the fields of :class:`flowdiff.train.TrainConfig`. Returns the loop's result (loss
        history, the best held-out loss and where checkpoints went).
        """
        from flowdiff.data import Data
        from flowdiff.train import TrainConfig, fit

        seed = options.get("seed", 0)
        if dequantize and not isinstance(data, Data):
            raise ValueError(
                "dequantize=True needs data as a flowdiff.data.Data, whose bin_width is the grid "
                f"step; got {type(data).__name__} (wrap it in flowdiff.data.Dequantized instead)"
            )
        if isinstance(val_data, Data):
            if not isinstance(data, Data) or data.normalizer.to_dict() != (
                val_data.normalizer.to_dict()
            ):
                raise ValueError(
                    "val_data is a Data with its own normalisation: the held-out data must be "
                    "in the training data's units (use train, val = data.split(fraction))"
                )
            val_data = self._as_training_data(val_data, dequantize, seed, fresh_noise=False)
        if isinstance(data, Data):
            # Already normalised: record the map so that sampling can invert it.
            self.normalization = data.normalizer.to_dict()
            data = self._as_training_data(data, dequantize, seed, fresh_noise=True)
        return fit(self, data, TrainConfig(**options), val_data=val_data)

    def _as_training_data(
        self, data: Any, dequantize: bool, seed: int, *, fresh_noise: bool
    ) -> Any:
        """What the loop trains on from a ``flowdiff.data.Data``: ``x``, or ``(x, y)`` for a
        conditional model; dequantised with fresh noise at every draw (a ``Dequantized``
        dataset) or once, each noise from its own stream of the run's ``seed`` (not the
        stream that, seeded with ``seed`` itself, may have drawn the initial weights)."""
        from flowdiff.data import Dequantized
        from flowdiff.data.dequantize import dequantize as add_noise
        from flowdiff.train.seeding import derive_seed

        y = data.y if self.num_classes is not None and data.y is not None else None
        x = data.x
        if dequantize:
            if data.bin_width is None:
                raise ValueError(
                    f"dequantize=True needs data on a grid, but {data.name} has bin_width=None "
                    "(not integer-valued, or normalised per feature)"
                )
            stream = derive_seed(seed, "dequantize", "train" if fresh_noise else "val")
            if fresh_noise:
                return Dequantized(x, data.bin_width, y=y, seed=stream)
            x = add_noise(x, data.bin_width, generator=torch.Generator().manual_seed(stream))
        return x if y is None else (x, y)

    # ------------------------------------------------------------------ data units
    def denormalize(self, x: Tensor) -> Tensor:
        """Map ``x: (B, *event_shape)`` from model units back to data units (identity if the
        model was not fitted on normalised ``flowdiff.data``)."""
        if self.normalization is None:
            return x
        from flowdiff.data import Normalizer

        return Normalizer.from_dict(self.normalization).inverse(x)

    def normalize_with_log_det(self, x: Tensor) -> tuple[Tensor, Tensor]:
        """``(z, log |det dz/dx|)`` of the recorded affine normalisation ``z = (x - m) / s``:
        ``log p_data(x) = log p_model(z) + log_det`` (change of variables)."""
        if self.normalization is None:
            return x, x.new_zeros(())
        from flowdiff.data import Normalizer

        normalizer = Normalizer.from_dict(self.normalization)
        z = normalizer.forward(x)
        # The map is affine and diagonal: the log-determinant is the same for every x.
        unit = torch.ones((1, *self.event_shape), dtype=x.dtype, device=x.device)
        scale = normalizer.forward(unit) - normalizer.forward(torch.zeros_like(unit))
        return z, scale.abs().log().sum()

    # ------------------------------------------------------------------ generation
    def sample(self, n: int, **kwargs: Any) -> Any:
        """Draw ``n`` samples, shape ``(n, *event_shape)``."""
        raise NotImplementedError

    def log_prob(self, x: Tensor, **kwargs: Any) -> Tensor:
        """Exact log-likelihood ``(B,)`` in nats, where the family has one."""
        raise NotImplementedError(f"{type(self).__name__} has no exact log-likelihood")

    # ------------------------------------------------------------------ input checks
    def check_data(self, x: Tensor, name: str = "x") -> Tensor:
        """Raise unless ``x`` is a finite float batch of this model's event shape."""
        from flowdiff.utils import check_finite, check_tensor

        check_tensor(x, name)
        if tuple(x.shape[1:]) != self.event_shape:
            raise ValueError(
                f"{name} must have shape (B, {', '.join(map(str, self.event_shape))}) for this "
                f"model, got {tuple(x.shape)}"
            )
        return check_finite(x, name)

    def check_labels(self, y: Tensor | None, batch_size: int, name: str = "y") -> Tensor | None:
        """Validate class labels: ``None`` or integers in ``[0, num_classes)`` of shape ``(B,)``."""
        if y is None:
            return None
        if self.num_classes is None:
            raise ValueError(f"{name} given but this model is unconditional (num_classes=None)")
        y = torch.as_tensor(y)
        if y.dim() == 0:
            y = y.expand(batch_size)
        if y.is_floating_point() or y.is_complex() or y.dtype == torch.bool:
            raise ValueError(f"{name} must hold integer class labels, got dtype {y.dtype}")
        if y.shape != (batch_size,):
            raise ValueError(
                f"{name} must be integer labels of shape ({batch_size},), got {tuple(y.shape)}"
            )
        if bool(((y < 0) | (y >= self.num_classes)).any()):
            raise ValueError(
                f"{name} must lie in [0, {self.num_classes}), got values "
                f"{int(y.min())}..{int(y.max())}"
            )
        return y.long()

    # ------------------------------------------------------------------ EMA weights
    @contextlib.contextmanager
    def averaged(self, enabled: bool = True) -> Iterator[GenerativeModel]:
        """Temporarily load the EMA weights (if any) into the model; restore on exit."""
        if not enabled or self.ema_state is None:
            yield self
            return
        params = dict(self.named_parameters())
        saved = {name: params[name].detach().clone() for name in self.ema_state}
        with torch.no_grad():
            for name, value in self.ema_state.items():
                params[name].copy_(value)
        try:
            yield self
        finally:
            with torch.no_grad():
                for name, value in saved.items():
                    params[name].copy_(value)

    # ------------------------------------------------------------------ save / load
    def description(self) -> dict[str, Any]:
        """The JSON header stored with the weights."""
        return {
            "format": _FORMAT,
            "kind": self.kind,
            "config": self.config(),
            "normalization": self.normalization,
            "has_ema": self.ema_state is not None,
        }

    def save(self, path: str | os.PathLike) -> Path:
        """Write weights (and EMA weights) plus the JSON description to one safetensors file.

        The write is atomic: an existing file at ``path`` is replaced only once the new one is
        complete.
        """
        from safetensors.torch import save_file

        tensors = {
            f"model.{k}": v.detach().cpu().contiguous() for k, v in self.state_dict().items()
        }
        if self.ema_state is not None:
            tensors.update(
                {f"ema.{k}": v.detach().cpu().contiguous() for k, v in self.ema_state.items()}
            )
        path = Path(path)
        with atomic_write(path) as tmp:
            save_file(tensors, str(tmp), metadata={"flowdiff": json.dumps(self.description())})
        return path

    @staticmethod
    def read_description(path: str | os.PathLike) -> dict[str, Any]:
        """The JSON description in a saved model's header, without loading the weights."""
        from safetensors import safe_open

        p = Path(path)
        if not p.is_file():
            raise FileNotFoundError(f"no saved model at {p}")
        try:
            with safe_open(str(p), framework="pt") as fh:
                meta = fh.metadata() or {}
        except Exception as err:  # safetensors raises its own error types for corrupt headers
            raise ValueError(
                f"{p} is not a flowdiff model file (unreadable safetensors: {err})"
            ) from err
        if "flowdiff" not in meta:
            raise ValueError(f"{p} is a safetensors file but not a flowdiff model (no description)")
        desc = json.loads(meta["flowdiff"])
        if desc.get("format") != _FORMAT:
            raise ValueError(
                f"{p} has unsupported format {desc.get('format')!r}, expected {_FORMAT!r}"
            )
        return desc

    @classmethod
    def load(cls, path: str | os.PathLike, *, map_location: str | torch.device = "cpu") -> Any:
        """Rebuild a saved model. ``GenerativeModel.load`` accepts any family; a subclass's
        ``load`` refuses a file of another family."""
        from safetensors.torch import load_file

        desc = cls.read_description(path)
        klass = model_class(desc["kind"])
        if cls is not GenerativeModel and not issubclass(klass, cls):
            raise ValueError(
                f"{path} holds a {desc['kind']!r} model, not a {cls.kind or cls.__name__!r} model"
            )
        model = klass(**desc["config"])
        try:
            tensors = load_file(str(path), device=str(map_location))
        except Exception as err:
            raise ValueError(f"{path} is truncated or corrupt: {err}") from err
        state = {k[len("model.") :]: v for k, v in tensors.items() if k.startswith("model.")}
        missing, unexpected = model.load_state_dict(state, strict=False)
        if missing or unexpected:
            raise ValueError(
                f"{path} does not match its description: missing {missing}, unexpected {unexpected}"
            )
        if desc.get("has_ema"):
            model.ema_state = {
                k[len("ema.") :]: v for k, v in tensors.items() if k.startswith("ema.")
            }
        model.normalization = desc.get("normalization")
        return model.to(map_location)


load_model = GenerativeModel.load
