"""Multi-process training on PyTorch's distributed engine (``torchrun``, NCCL/gloo).

Gradients are averaged with one ``all_reduce`` of a flat buffer per optimizer step instead of by
wrapping the model in ``DistributedDataParallel``. DDP hooks the *forward* of one module and
reduces *all* its parameters, while here a step is ``model.loss`` (not a forward) and may update
only one optimizer group (a GAN's discriminator phase): reducing the phase's own parameters after
``backward`` is the same average DDP computes (mean of the per-rank gradients of the per-rank
mean losses = gradient of the global-batch mean loss), without its unused-parameter and
multi-phase caveats. The price is no overlap of communication with ``backward``.
"""

from __future__ import annotations

import atexit
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import Tensor, nn

__all__ = ["Distributed", "setup_distributed"]


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

    def average_gradients(self, params: list[nn.Parameter], loss: Tensor) -> Tensor:
        """All-reduce to the mean over ranks the gradients of ``params`` and the scalar ``loss``
        in one flat buffer; return the global mean loss.

        A parameter without a gradient contributes zeros (and gets the averaged gradient), so
        every rank reduces the same buffer even when its batch left a parameter unused.
        """
        if not self.enabled:
            return loss
        grads = [p.grad if p.grad is not None else torch.zeros_like(p) for p in params]
        flat = torch.cat([g.reshape(-1) for g in grads] + [loss.detach().reshape(1).to(grads[0])])
        dist.all_reduce(flat)
        flat /= self.world_size
        offset = 0
        for p, g in zip(params, grads):
            p.grad = flat[offset : offset + g.numel()].view_as(g)
            offset += g.numel()
        return flat[-1]

    def all_mean(self, values: Tensor) -> Tensor:
        """Mean of a tensor over ranks (metrics)."""
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
