"""What every network of the library shares: a JSON description and the conditioning checks.

A network follows the contract ``net(x, t, y=None) -> tensor shaped like x`` (or like its
``out_shape``). Each subclass stores its constructor arguments in ``self._config``; the
:attr:`Net.config` property returns them with a ``"type"`` key, and :func:`build` turns such a
dict back into an identical (freshly initialised) architecture, so a model file needs only the
JSON description plus the weights.
"""

from __future__ import annotations

import copy
import inspect
from typing import Any, ClassVar

import torch
from torch import Tensor, nn

from flowdiff.nets.layers import LabelEmbedding
from flowdiff.utils import as_batch_time, closest_name_hint

__all__ = ["Net", "build", "registered_nets"]

_REGISTRY: dict[str, type[Net]] = {}


class Net(nn.Module):
    """Base class of the library's networks; subclasses set ``type_name`` and ``_config``."""

    type_name: ClassVar[str] = ""
    _config: dict[str, Any]
    label_embedding: LabelEmbedding | None

    def __init_subclass__(cls, **kwargs: Any) -> None:
        super().__init_subclass__(**kwargs)
        if cls.type_name:
            if cls.type_name in _REGISTRY and _REGISTRY[cls.type_name] is not cls:
                raise RuntimeError(f"network type {cls.type_name!r} registered twice")
            _REGISTRY[cls.type_name] = cls

    @property
    def config(self) -> dict[str, Any]:
        """JSON-able constructor arguments plus ``"type"``: ``build(net.config)`` rebuilds it."""
        return {"type": self.type_name, **copy.deepcopy(self._config)}

    @property
    def num_classes(self) -> int | None:
        """Number of classes of a conditional net, ``None`` for an unconditional one."""
        return None if self.label_embedding is None else self.label_embedding.num_classes

    @property
    def null_label(self) -> int:
        """The label index meaning "no condition" (``num_classes``), for guidance."""
        if self.label_embedding is None:
            raise ValueError(f"this {type(self).__name__} is unconditional (num_classes=None)")
        return self.label_embedding.null_label

    def _batch_time(self, t: float | Tensor, x: Tensor) -> Tensor:
        """``t`` as ``(B,)`` on ``x``'s device and dtype."""
        return as_batch_time(t, x.shape[0], device=x.device, dtype=x.dtype)

    def _embed_labels(
        self, y: int | Tensor | None, batch_size: int, device: torch.device
    ) -> Tensor:
        """Label embedding ``(B, dim)``; ``y=None`` on a conditional net means the null label.

        Raises ``ValueError`` when ``y`` is given to an unconditional net.
        """
        if self.label_embedding is None:
            raise ValueError(
                f"y given but this {type(self).__name__} is unconditional (num_classes=None)"
            )
        if y is None:
            y = self.label_embedding.null_label
        if isinstance(y, int) and not isinstance(y, bool):
            y = torch.tensor(y, device=device)
        if isinstance(y, Tensor) and y.dim() == 0:
            y = y.reshape(1).expand(batch_size)
        if isinstance(y, Tensor) and y.shape != (batch_size,):
            raise ValueError(
                f"y must have shape ({batch_size},) or be a scalar, got {tuple(y.shape)}"
            )
        return self.label_embedding(y)


def registered_nets() -> list[str]:
    """The ``"type"`` names :func:`build` understands."""
    return sorted(_REGISTRY)


def build(config: dict[str, Any]) -> Net:
    """Rebuild a network from its :attr:`Net.config` (fresh weights; load the state dict after).

    Raises:
        TypeError: ``config`` is not a dict.
        ValueError: no ``"type"``, an unknown type, or keys the constructor does not take.
    """
    if not isinstance(config, dict):
        raise TypeError(f"config must be a dict, got {type(config).__name__}")
    if "type" not in config:
        raise ValueError(
            f"config must have a 'type' key (one of {registered_nets()}), got {config}"
        )
    kind = config["type"]
    if kind not in _REGISTRY:
        hint = closest_name_hint(kind, _REGISTRY)
        raise ValueError(f"unknown network type {kind!r}{hint} (choose from {registered_nets()})")
    cls = _REGISTRY[kind]
    kwargs = {k: v for k, v in config.items() if k != "type"}
    accepted = set(inspect.signature(cls.__init__).parameters) - {"self"}
    unknown = sorted(set(kwargs) - accepted)
    if unknown:
        raise ValueError(
            f"config for {kind!r} has unknown key(s) {unknown}; accepted: {sorted(accepted)}"
        )
    return cls(**kwargs)
