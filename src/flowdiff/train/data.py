"""Batches for the training loop: tensors, ``(x, y)`` pairs, Datasets and DataLoaders.

Tensors and Datasets are read through one :class:`IndexStream`: the concatenation of random
permutations of ``0..N-1``, permutation ``e`` drawn by a generator seeded from ``(seed, e)``,
cut into consecutive global batches. Each global batch is split into ``world_size`` equal
contiguous slices, one per rank, so ``W`` ranks see together exactly the batch a single process
sees (the DDP "global batch" semantics), and the stream's whole state is the number of batches
drawn: a resumed run re-derives the current permutation instead of storing a generator state.
Every sample is seen once per epoch; a batch may straddle two epochs, so any ``N`` works with any
batch size.

A user's own ``DataLoader`` is iterated as given, epoch after epoch (calling
``sampler.set_epoch(epoch)`` when its sampler has one, as ``DistributedSampler`` needs); its
batches are the per-rank batches, so under DDP the user shards it (e.g. with a
``DistributedSampler``). On resume it is fast-forwarded by iterating, which reproduces the run
only if the loader is deterministic.
"""

from __future__ import annotations

from collections.abc import Iterator
from typing import Any

import torch
from torch import Tensor
from torch.utils.data import DataLoader, Dataset, IterableDataset, Sampler

from flowdiff.models.base import GenerativeModel
from flowdiff.train.seeding import derive_seed

__all__ = ["BatchSource", "IndexStream", "make_batch_source"]

Batch = tuple[Tensor, Tensor | None]


class IndexStream:
    """Global batches of indices into ``n`` samples, this rank's slice of each.

    Args:
        n: number of samples.
        batch_size: global batch size (divisible by ``world_size``).
        seed: seed of the permutations.
        rank, world_size: this process's slice of every global batch.
        position: number of global batches already drawn (to resume).
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
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.local_size = batch_size // world_size
        self.offset = rank * self.local_size
        self.position = position
        self._epoch = -1
        self._perm = torch.empty(0, dtype=torch.long)

    def _permutation(self, epoch: int) -> Tensor:
        if epoch != self._epoch:
            gen = torch.Generator().manual_seed(derive_seed(self.seed, "epoch", epoch))
            self._perm, self._epoch = torch.randperm(self.n, generator=gen), epoch
        return self._perm

    def next(self) -> Tensor:
        """This rank's indices of the next global batch, shape ``(batch_size / world_size,)``."""
        # Only this rank's slice [start, stop) of the global batch is materialised.
        start = self.position * self.batch_size + self.offset
        stop = start + self.local_size
        parts = []
        while start < stop:
            epoch, within = divmod(start, self.n)
            take = min(stop - start, self.n - within)
            parts.append(self._permutation(epoch)[within : within + take])
            start += take
        self.position += 1
        return parts[0] if len(parts) == 1 else torch.cat(parts)


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
    def __init__(self, model, device, x: Tensor, y: Tensor | None, stream: IndexStream) -> None:
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


class _StreamSampler(Sampler):
    """Endless batches of an :class:`IndexStream`, for ``DataLoader(batch_sampler=...)``."""

    def __init__(self, stream: IndexStream) -> None:
        self.stream = stream

    def __iter__(self) -> Iterator[list[int]]:
        while True:
            yield self.stream.next().tolist()


def _split_batch(batch: Any, where: str) -> tuple[Tensor, Tensor | None]:
    if isinstance(batch, Tensor):
        return batch, None
    # (x,) is what a one-tensor TensorDataset yields.
    if isinstance(batch, (tuple, list)) and len(batch) in (1, 2):
        return batch[0], batch[1] if len(batch) == 2 else None
    raise TypeError(f"{where} must yield x, (x,) or (x, y), got {type(batch).__name__}")


class _LoaderSource(BatchSource):
    """Batches of a DataLoader. A user's loader is re-iterated, ``epoch`` counting passes; ours
    over a Dataset is one endless pass of ``stream`` (its batch sampler), which defines epochs.
    """

    def __init__(
        self, model, device, loader: DataLoader, *, name: str, stream: IndexStream | None = None
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
        x, y = _split_batch(self._draw(), self.name)
        self.in_epoch += 1
        self.consumed += 1
        where = f"(batch {self.consumed} of {self.name})"
        self.model.check_data(x, f"x {where}")
        y = self.model.check_labels(y, x.shape[0], f"y {where}")
        return self._to_device(x, y)

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

    def stream(n: int) -> IndexStream:
        return IndexStream(n, batch_size, seed=seed, rank=rank, world_size=world_size)

    if isinstance(data, (tuple, list)) and not isinstance(data, Tensor):
        if len(data) != 2:
            raise ValueError(f"data as a sequence must be a pair (x, y), got length {len(data)}")
        x, y = data
        model.check_data(x, "data[0] (x)")
        y = model.check_labels(y, x.shape[0], "data[1] (y)")
        return _TensorSource(model, device, x, y, stream(x.shape[0]))
    if isinstance(data, Tensor):
        model.check_data(data, "data")
        return _TensorSource(model, device, data, None, stream(data.shape[0]))
    if isinstance(data, DataLoader):
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
            batch_sampler=_StreamSampler(indices),
            num_workers=num_workers,
            pin_memory=device.type == "cuda",
        )
        return _LoaderSource(model, device, loader, name="data (Dataset)", stream=indices)
    raise TypeError(
        "data must be a tensor (N, *event_shape), a pair (x, y), a Dataset or a DataLoader, "
        f"got {type(data).__name__}"
    )
