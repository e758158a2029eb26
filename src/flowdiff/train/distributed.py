"""Multi-process training on PyTorch's distributed engine (``torchrun``, DDP, NCCL/gloo).

Gradients are averaged over ranks by :class:`~torch.nn.parallel.DistributedDataParallel`. DDP
reduces the gradients of the parameters of the module it wraps, and its ``forward`` announces
the backward to come. The loop's unit of work is not a forward, though, but
``model.loss(x, y, phase=...)``, which may call several sub-networks, some many times (a CNF's
ODE solve), some only forward (a GAN's generator under ``no_grad`` in the discriminator phase,
its frozen discriminator in the generator phase). So what is wrapped is the loss of one phase:
:class:`PhaseLoss` is a module whose ``forward`` is ``model.loss(..., phase=group)`` and whose only
registered parameters are that optim group's (the model's own tensors, not copies). One DDP per
group, hence one reducer per group:

- a phase's backward all-reduces exactly that phase's gradients, in DDP's buckets, overlapped
  with the backward pass (the reducer hooks the parameters' gradient accumulators, which fire once
  per backward however many times the loss called the network);
- a parameter of another group is not in the phase's reducer. If the phase's loss gives it a
  gradient anyway, that group's reducer ignores it (its hooks act only after its own forward)
  and the loop zeroes it before the next phase. So no ``no_sync`` and no
  ``find_unused_parameters`` (a graph traversal at every forward that would also all-reduce the
  other player's absent gradients); the one requirement is that every parameter of a phase's
  group gets a gradient from that phase's loss, which the loop checks with a clear error (else
  the reducer would wait for it and leave the others un-averaged);
- the model itself is never wrapped nor changed: state-dict keys, checkpoints, EMA names and the
  families' own calls (``self.generator(z)``) are those of a single process.

The mean over ranks of the per-rank gradients of the per-rank mean losses is the gradient of the
global-batch mean loss (equal local batches). :meth:`Distributed.broadcast_module` gives every
rank rank 0's parameters *and* buffers, also those no optimizer trains, before the DDPs are built
(so with ``init_sync=False``). Buffers are not synchronised afterwards (a :class:`PhaseLoss` owns
none): the library's only buffers that training changes, spectral norm's power-iteration vectors,
evolve identically on every rank from identical weights. The loss is averaged by
:meth:`Distributed.all_mean` (DDP averages gradients, not outputs), so the logged loss is the
global-batch mean and every rank takes the same divergence decision.
"""

from __future__ import annotations

import atexit
import os
from collections.abc import Callable
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn
from torch.nn.parallel import DistributedDataParallel

__all__ = ["Distributed", "PhaseLoss", "setup_distributed"]


class PhaseLoss(nn.Module):
    """``forward(x, y, generator) = loss(x, y, phase=phase, generator=generator)``: per-sample
    losses ``(B,)``, as a module owning exactly the parameters ``params`` of optim group ``phase``
    (the model's own tensors), which is what DDP wraps (see the module docstring).

    Args:
        loss: the model's ``loss`` (or its ``torch.compile``-d version).
        phase: the optim group.
        params: the group's parameters.
    """

    def __init__(self, loss: Callable[..., Tensor], phase: str, params: list[nn.Parameter]) -> None:
        super().__init__()
        self.params = nn.ParameterList(params)
        self.loss, self.phase = loss, phase

    def forward(self, x: Tensor, y: Tensor | None, generator: torch.Generator) -> Tensor:
        return self.loss(x, y, phase=self.phase, generator=generator)


@dataclass
class Distributed:
    """This process's place in the run; ``world_size == 1`` makes every method a no-op."""

    rank: int = 0
    world_size: int = 1
    local_rank: int = 0

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def enabled(self) -> bool:
        return self.world_size > 1

    def barrier(self) -> None:
        if self.enabled:
            dist.barrier()

    def broadcast_module(self, module: nn.Module) -> None:
        """Copy rank 0's parameters and buffers to every rank (as DDP does at construction)."""
        if self.enabled:
            with torch.no_grad():
                for tensor in [*module.parameters(), *module.buffers()]:
                    dist.broadcast(tensor.data, src=0)

    def phase_losses(
        self, loss: Callable[..., Tensor], groups: dict[str, list[nn.Parameter]]
    ) -> dict[str, nn.Module]:
        """One :class:`PhaseLoss` per optim group, each in its own ``DistributedDataParallel``
        when ``world_size > 1`` (call :meth:`broadcast_module` first: no init sync here)."""
        losses = {group: PhaseLoss(loss, group, params) for group, params in groups.items()}
        if not self.enabled:
            return losses
        return {
            group: DistributedDataParallel(module, init_sync=False)
            for group, module in losses.items()
        }

    def all_mean(self, values: Tensor) -> Tensor:
        """Mean of a tensor over ranks (the logged loss)."""
        if not self.enabled:
            return values
        values = values.clone()
        dist.all_reduce(values)
        return values / self.world_size

    def gather(self, tensor: Tensor) -> list[Tensor]:
        """Every rank's copy of ``tensor`` (same shape on all ranks), in rank order."""
        if not self.enabled:
            return [tensor]
        if dist.get_backend() == "nccl":  # NCCL only moves CUDA tensors
            tensor = tensor.to(torch.device("cuda", self.local_rank))
        out = [torch.empty_like(tensor) for _ in range(self.world_size)]
        dist.all_gather(out, tensor)
        return out


def setup_distributed(use_cuda: bool) -> Distributed:
    """Join the run's process group: an initialised one, or one ``torchrun`` describes in the
    environment (``RANK``, ``WORLD_SIZE``, ``LOCAL_RANK``, ``MASTER_ADDR``/``PORT``); else a
    single process. The backend is NCCL on CUDA and gloo on CPU."""
    if dist.is_available() and dist.is_initialized():
        rank, world = dist.get_rank(), dist.get_world_size()
        local = int(os.environ.get("LOCAL_RANK", rank))
        return Distributed(rank, world, local)
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    if not dist.is_available():
        raise RuntimeError(f"WORLD_SIZE={world} but this PyTorch has no torch.distributed")
    rank, local = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if use_cuda:
        torch.cuda.set_device(local)
    dist.init_process_group(backend="nccl" if use_cuda else "gloo")
    # The group lives as long as the process (a second fit() reuses it; re-creating one from
    # torchrun's store after destroying it is not supported), torn down at exit.
    atexit.register(dist.destroy_process_group)
    return Distributed(rank, world, local)
