"""The recipe's few collectives: start/stop the process group under torchrun, gather rewards, average gradients.

One process (`tune run recipe.py`) needs no process group: every helper is then the identity. Under torchrun
(`tune run --nproc_per_node N`) the group uses gloo on CPU and nccl on CUDA (torchtune's choice). Gradients are
summed then divided (gloo has no AVG reduction), which is plain data parallelism: each rank keeps a full copy
of the small models this recipe targets.
"""

from __future__ import annotations

import os

import torch
import torch.distributed as dist
from torch import nn
from torchtune import training, utils


def start(device: torch.device) -> tuple[int, int]:
    """(world size, rank); joins the process group when torchrun started this process."""
    if "WORLD_SIZE" in os.environ and not dist.is_initialized():
        dist.init_process_group(training.get_distributed_backend(device.type))
    return utils.get_world_size_and_rank()


def active() -> bool:
    return dist.is_available() and dist.is_initialized()


def gather(values: torch.Tensor) -> torch.Tensor:
    """The concatenation over ranks (rank order) of equally shaped tensors; `values` itself in one process."""
    if not active():
        return values
    parts = [torch.empty_like(values) for _ in range(dist.get_world_size())]
    dist.all_gather(parts, values.contiguous())
    return torch.cat(parts)


def mean_values(values: dict[str, float | torch.Tensor], device: torch.device) -> dict[str, float]:
    """Each scalar's mean over ranks, in one all-reduce on `device` (nccl reduces only CUDA tensors); every rank
    must pass the same keys."""
    names = sorted(values)
    stacked = torch.stack([torch.as_tensor(values[name], dtype=torch.float64, device=device).detach().reshape(())
                           for name in names]) if names else torch.zeros(0, dtype=torch.float64, device=device)
    if active() and names:
        dist.all_reduce(stacked, op=dist.ReduceOp.SUM)
        stacked /= dist.get_world_size()
    return dict(zip(names, stacked.tolist(), strict=True))


def average_gradients(model: nn.Module) -> None:
    """Every parameter's gradient replaced by its mean over ranks (None counts as zero)."""
    if not active():
        return
    for parameter in model.parameters():
        if parameter.requires_grad:
            if parameter.grad is None:
                parameter.grad = torch.zeros_like(parameter)
            dist.all_reduce(parameter.grad, op=dist.ReduceOp.SUM)
            parameter.grad /= dist.get_world_size()


def barrier() -> None:
    if active():
        dist.barrier()


def stop() -> None:
    if active():
        dist.destroy_process_group()
