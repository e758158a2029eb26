"""Batches for the training loop: tensors, ``(x, y)`` pairs, Datasets and DataLoaders.

Tensors and Datasets are read through one :class:`StreamSampler`, a
:class:`~torch.utils.data.distributed.DistributedSampler` run epoch after epoch without end:
epoch ``e`` is DistributedSampler's shuffle (a permutation of ``0..N-1`` seeded by
``seed + e``) of which rank ``r`` of ``W`` takes positions ``r, r + W, r + 2W, ...``. This rank's
epochs are concatenated and cut into consecutive local batches of ``batch_size / W`` indices. The
``k``-th local batches of the ``W`` ranks together hold positions ``[k B, (k + 1) B)`` of the
concatenated (unsplit) permutations, which is the ``k``-th batch a single process draws: ``W``
ranks see exactly the global batch of one process (the DDP "global batch" semantics) when
``W`` divides ``N`` (otherwise DistributedSampler pads every epoch with its first indices).
Every sample is seen once per epoch; a batch may straddle two epochs, so any ``N`` works with
any batch size. The stream's whole state is the number of batches drawn: a resumed run
re-derives the current permutation instead of storing a generator state.

A user's own ``DataLoader`` is iterated as given, epoch after epoch (calling
``sampler.set_epoch(epoch)`` when its sampler has one, as ``DistributedSampler`` needs); its
batches are the per-rank batches, so under DDP the user shards it (e.g. with a
``DistributedSampler``; a warning says so when it has none). On resume it is fast-forwarded by
iterating, which reproduces the run only if the loader is deterministic.
"""

from __future__ import annotations

import warnings
from collections.abc import Callable, Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, DistributedSampler, IterableDataset

from flowdiff.models.base import GenerativeModel
from flowdiff.train.seeding import derive_seed

__all__ = ["BatchSource", "StreamSampler", "make_batch_source", "make_validation_batches"]

Batch = tuple[Tensor, Tensor | None]


class StreamSampler(DistributedSampler):
    """This rank's batches of an endless sequence of :class:`DistributedSampler` epochs (see the
    module docstring): :meth:`next` returns one local batch, ``iter`` yields them as lists (a
    ``DataLoader(batch_sampler=...)``).

    Args:
        n: number of samples.
        batch_size: global batch size (divisible by ``world_size``).
        seed: seed of the permutations (epoch ``e`` uses ``seed + e``, as DistributedSampler).
        rank, world_size: this process's share of every epoch.
        position: number of batches already drawn (to resume).
    """

    def __init__(
        self,
        n: int,
        batch_size: int,
        *,
        seed: int,
        rank: int = 0,
        world_size: int = 1,
        position: int = 0,
    ) -> None:
        if batch_size % world_size:
            raise ValueError(
                f"batch_size ({batch_size}) must be divisible by the number of processes "
                f"({world_size}): it is the global batch, split evenly across ranks"
            )
        # DistributedSampler reads only len() of its dataset: a range stands for any data.
        super().__init__(range(n), num_replicas=world_size, rank=rank, shuffle=True, seed=seed)
        self.local_size = batch_size // world_size
        self.position = position
        self._indices = torch.empty(0, dtype=torch.long)

    def _epoch_indices(self, epoch: int) -> Tensor:
        """This rank's ``num_samples`` indices of ``epoch`` (computed once per epoch)."""
        if epoch != self.epoch or not len(self._indices):
            self.set_epoch(epoch)
            self._indices = torch.tensor(list(super().__iter__()), dtype=torch.long)
        return self._indices

    def next(self) -> Tensor:
        """This rank's indices of the next batch, shape ``(batch_size / world_size,)``."""
        start = self.position * self.local_size
        stop = start + self.local_size
        parts = []
        while start < stop:
            epoch, within = divmod(start, self.num_samples)
            take = min(stop - start, self.num_samples - within)
            parts.append(self._epoch_indices(epoch)[within : within + take])
            start += take
        self.position += 1
        return parts[0] if len(parts) == 1 else torch.cat(parts)

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.next().tolist()


class BatchSource:
    """Yields local batches ``(x, y)`` on the training device; :meth:`state` is its position,
    :meth:`restore` goes back to one (before the first :meth:`next`)."""

    def __init__(self, model: GenerativeModel, device: torch.device) -> None:
        self.model, self.device = model, device
        self.consumed = 0

    def next(self) -> Batch:
        raise NotImplementedError

    def state(self) -> dict[str, Any]:
        return {"batches": self.consumed}

    def restore(self, state: dict[str, Any]) -> None:
        raise NotImplementedError

    def _to_device(self, x: Tensor, y: Tensor | None) -> Batch:
        x = x.to(self.device, non_blocking=True)
        return x, None if y is None else y.to(self.device, non_blocking=True)


class _TensorSource(BatchSource):
    def __init__(self, model, device, x: Tensor, y: Tensor | None, stream: StreamSampler) -> None:
        super().__init__(model, device)
        self.x, self.y, self.stream = x, y, stream

    def next(self) -> Batch:
        index = self.stream.next()
        self.consumed += 1
        if self.x.device != index.device:
            index = index.to(self.x.device)
        return self._to_device(self.x[index], None if self.y is None else self.y[index])

    def restore(self, state: dict[str, Any]) -> None:
        self.stream.position = self.consumed = int(state["batches"])


def _split_batch(batch: Any, where: str) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    # (x,) is what a one-tensor TensorDataset yields.
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0], batch[1] if len(batch) == 2 else None
    raise TypeError(f"{where} must yield x, (x,) or (x, y), got {type(batch).__name__}")


def _checked_batch(batch: Any, model: GenerativeModel, name: str, number: int) -> Batch:
    """``(x, y)`` of batch ``number`` (1-based) drawn from ``name``, checked against ``model``."""
    x, y = _split_batch(batch, name)
    where = f"(batch {number} of {name})"
    model.check_data(x, f"x {where}")
    return x, model.check_labels(y, x.shape[0], f"y {where}")


def _checked_tensors(
    data: Any, model: GenerativeModel, name: str
) -> tuple[Tensor, Tensor | None] | None:
    """``(x, y)`` of ``data`` given as a tensor or an ``(x, y)`` pair, checked against ``model``
    (``name`` names it in errors); ``None`` for any other form."""
    if isinstance(data, (tuple, list)) and not isinstance(data, Tensor):
        if len(data) != 2:
            raise ValueError(f"{name} as a sequence must be a pair (x, y), got length {len(data)}")
        x, y = data
        model.check_data(x, f"{name}[0] (x)")
        return x, model.check_labels(y, x.shape[0], f"{name}[1] (y)")
    if isinstance(data, Tensor):
        return model.check_data(data, name), None
    return None


class _LoaderSource(BatchSource):
    """Batches of a DataLoader. A user's loader is re-iterated, ``epoch`` counting passes; ours
    over a Dataset is one endless pass of ``stream`` (its batch sampler), which defines epochs.
    """

    def __init__(
        self, model, device, loader: DataLoader, *, name: str, stream: StreamSampler | None = None
    ) -> None:
        super().__init__(model, device)
        self.loader, self.name, self.stream = loader, name, stream
        self.epoch, self.in_epoch = 0, 0
        self._iterator: Iterator | None = None

    def _start_epoch(self) -> None:
        set_epoch = getattr(self.loader.sampler, "set_epoch", None)
        if callable(set_epoch):
            set_epoch(self.epoch)
        self._iterator = iter(self.loader)

    def _draw(self) -> Any:
        if self._iterator is None:
            self._start_epoch()
        try:
            return next(self._iterator)
        except StopIteration:
            if self.stream is not None or self.in_epoch == 0:
                raise ValueError(f"{self.name} yielded no batch") from None
            self.epoch, self.in_epoch = self.epoch + 1, 0
            self._start_epoch()
            return next(self._iterator)

    def next(self) -> Batch:
        batch = self._draw()
        self.in_epoch += 1
        self.consumed += 1
        return self._to_device(*_checked_batch(batch, self.model, self.name, self.consumed))

    def state(self) -> dict[str, Any]:
        return {"batches": self.consumed, "epoch": self.epoch, "in_epoch": self.in_epoch}

    def restore(self, state: dict[str, Any]) -> None:
        self.epoch, self.in_epoch = int(state["epoch"]), int(state["in_epoch"])
        self.consumed = int(state["batches"])
        if self.stream is not None:
            self.stream.position = self.consumed
            return
        # A user's loader cannot save its state: skip to the position by iterating.
        self._start_epoch()
        for _ in range(self.in_epoch):
            next(self._iterator)


def make_batch_source(
    data: Any,
    model: GenerativeModel,
    *,
    batch_size: int,
    seed: int,
    device: torch.device,
    rank: int = 0,
    world_size: int = 1,
    num_workers: int = 0,
) -> BatchSource:
    """Validate ``data`` against ``model`` and return a batch source at its start.

    Args:
        data: a tensor ``(N, *event_shape)``, a pair ``(x, y)`` with labels ``y`` ``(N,)``, a
            map-style ``Dataset`` yielding ``x``, ``(x,)`` or ``(x, y)``, or a ``DataLoader``.
        batch_size: global batch size (ignored for a user's ``DataLoader``).
    """

    def stream(n: int) -> StreamSampler:
        # A hashed seed: DistributedSampler's ``seed + epoch`` would give seeds s and s + 1
        # the same permutations one epoch apart.
        batches_seed = derive_seed(seed, "batches")
        return StreamSampler(n, batch_size, seed=batches_seed, rank=rank, world_size=world_size)

    tensors = _checked_tensors(data, model, "data")
    if tensors is not None:
        x, y = tensors
        return _TensorSource(model, device, x, y, stream(x.shape[0]))
    if isinstance(data, DataLoader):
        samplers = (data.sampler, data.batch_sampler, getattr(data.batch_sampler, "sampler", None))
        if world_size > 1 and not any(isinstance(s, DistributedSampler) for s in samplers):
            warnings.warn(
                f"data is a DataLoader without a DistributedSampler: unless its sampler shards "
                f"the data itself, each of the {world_size} processes iterates all of it; use "
                "DataLoader(..., sampler=DistributedSampler(dataset)) or pass the Dataset itself",
                stacklevel=4,
            )
        return _LoaderSource(model, device, data, name="data (DataLoader)")
    if isinstance(data, IterableDataset):
        raise TypeError("data is an IterableDataset: wrap it in a DataLoader to train on it")
    if isinstance(data, Dataset):
        if not hasattr(data, "__len__") or len(data) == 0:
            raise ValueError("data (Dataset) must have a length >= 1")
        first, _ = _split_batch(data[0], "data (Dataset)")
        if not isinstance(first, Tensor):
            raise TypeError(f"data (Dataset) must yield tensors, got {type(first).__name__}")
        model.check_data(first.unsqueeze(0), "data[0] (first Dataset item, batched)")
        indices = stream(len(data))
        loader = DataLoader(
            data,
            batch_sampler=indices,
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        return _LoaderSource(model, device, loader, name="data (Dataset)", stream=indices)
    raise TypeError(
        "data must be a tensor (N, *event_shape), a pair (x, y), a Dataset or a DataLoader, "
        f"got {type(data).__name__}"
    )


def make_validation_batches(
    data: Any, model: GenerativeModel, *, batch_size: int, device: torch.device
) -> Callable[[], Iterator[Batch]]:
    """Validate held-out ``data`` against ``model``; return a function that yields all of it,
    in order and in batches of ``batch_size`` on ``device``, each time it is called.

    Args:
        data: a tensor ``(N, *event_shape)``, a pair ``(x, y)``, a map-style ``Dataset`` or a
            ``DataLoader`` (iterated as given), as for :func:`make_batch_source`.
    """
    where = "val_data"
    tensors = _checked_tensors(data, model, where)
    if tensors is None:
        if isinstance(data, IterableDataset) or not isinstance(data, (Dataset, DataLoader)):
            raise TypeError(
                f"{where} must be a tensor (N, *event_shape), a pair (x, y), a map-style "
                f"Dataset or a DataLoader, got {type(data).__name__}"
            )
        loader = data if isinstance(data, DataLoader) else DataLoader(data, batch_size=batch_size)

        def from_loader() -> Iterator[Batch]:
            count = 0
            for count, batch in enumerate(loader, 1):
                bx, by = _checked_batch(batch, model, where, count)
                yield bx.to(device), None if by is None else by.to(device)
            if count == 0:
                raise ValueError(f"{where} yielded no batch")

        return from_loader

    x, y = tensors
    if x.shape[0] == 0:
        raise ValueError(f"{where} is empty: it needs at least one sample")

    def from_tensors() -> Iterator[Batch]:
        for start in range(0, x.shape[0], batch_size):
            stop = start + batch_size
            yield x[start:stop].to(device), None if y is None else y[start:stop].to(device)

    return from_tensors
