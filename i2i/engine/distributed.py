"""Data-parallel training under torchrun: `torchrun --nproc_per_node N -m i2i.train ...` (any task).

Every rank holds the same networks and the same global RNG state, trains on its part of the global batch (the data
streams draw the whole batch of a step and load the rank's contiguous part, so the parts make up exactly the batch a
single process would train on, for any number of ranks), and averages its gradients with the others before each
optimiser step. Gradients are all-reduced explicitly, in flat buckets, rather than by wrapping the networks in
DistributedDataParallel: the GAN losses make several forward passes per network and step, R1 takes a double backward
(`autograd.grad(..., create_graph=True)`), and only some networks step after each loss — patterns DDP's reducer does
not support (NVIDIA's StyleGAN2-ADA synchronises gradients the same way). Rank 0 alone logs, writes samples and
checkpoints; `check_identical` verifies that all ranks hold bit-identical weights.

Backends: nccl with CUDA, gloo on CPU (the tests run two gloo processes).
"""
from __future__ import annotations

import datetime
import os
from dataclasses import dataclass

import torch
import torch.distributed as dist
from torch import nn

BUCKET_ELEMENTS = 2**22  # 16 MB of float32 per all-reduce call


def shard_slice(batch_size: int, shard: tuple[int, int]) -> slice:
    """The samples of rank `shard[0]` of `shard[1]` in a global batch (equal contiguous parts): a rank's part of the
    batch, and of any draw made for the global batch (latent codes, augmentation parameters)."""
    rank, world = shard
    if world < 1 or not 0 <= rank < world or batch_size % world:
        raise ValueError(f"a global batch of {batch_size} cannot be split over {world} ranks (rank {rank})")
    size = batch_size // world
    return slice(rank * size, (rank + 1) * size)


@dataclass(frozen=True)
class Distributed:
    rank: int = 0
    world: int = 1
    local_rank: int = 0

    @property
    def enabled(self) -> bool:
        return self.world > 1

    @property
    def is_main(self) -> bool:
        return self.rank == 0

    @property
    def shard(self) -> tuple[int, int]:
        return self.rank, self.world


def from_environment() -> Distributed:
    """The process group of a torchrun launch (WORLD_SIZE > 1), initialised once; a single process otherwise."""
    world = int(os.environ.get("WORLD_SIZE", "1"))
    if world <= 1:
        return Distributed()
    rank, local_rank = int(os.environ["RANK"]), int(os.environ.get("LOCAL_RANK", "0"))
    if not dist.is_initialized():
        backend = "nccl" if torch.cuda.is_available() else "gloo"
        if backend == "nccl":
            torch.cuda.set_device(local_rank)
        dist.init_process_group(backend, timeout=datetime.timedelta(minutes=30))
    return Distributed(rank, world, local_rank)


def average_gradients(params: list[nn.Parameter], world: int) -> None:
    """Replace each parameter's gradient by its mean over the ranks (parameters without a gradient are skipped on
    every rank alike: the same losses run everywhere)."""
    _average_in_place([p.grad for p in params if p.grad is not None], world)


def _average_in_place(tensors: list[torch.Tensor], world: int) -> None:
    for bucket in _buckets(tensors):
        flat = torch.cat([t.reshape(-1) for t in bucket])
        dist.all_reduce(flat)
        flat /= world
        offset = 0
        for t in bucket:
            t.copy_(flat[offset:offset + t.numel()].view_as(t))
            offset += t.numel()


def _buckets(tensors: list[torch.Tensor]):
    bucket: list[torch.Tensor] = []
    size = 0
    for t in tensors:
        if bucket and size + t.numel() > BUCKET_ELEMENTS:
            yield bucket
            bucket, size = [], 0
        bucket.append(t)
        size += t.numel()
    if bucket:
        yield bucket


def mean_over_ranks(value: float) -> float:
    """The mean of a Python number over the ranks (e.g. whether any rank asked to stop; one host sync)."""
    tensor = torch.tensor([float(value)], dtype=torch.float64)
    if dist.get_backend() == "nccl":
        tensor = tensor.cuda()
    dist.all_reduce(tensor)
    return float(tensor.item()) / dist.get_world_size()


def tensor_mean_over_ranks(value: torch.Tensor) -> torch.Tensor:
    """The mean of a tensor over the ranks, left on its device (ReMix's a, so every rank keeps the same a_bar without
    a host sync)."""
    total = value.detach().clone()
    dist.all_reduce(total)
    return total / dist.get_world_size()


def check_identical(nets: dict[str, nn.Module]) -> None:
    """Raise RuntimeError naming the network when the ranks' weights differ (a float64 checksum per network)."""
    for name, net in nets.items():
        checksum = torch.stack([t.detach().double().sum() for t in net.state_dict().values()
                                if t.is_floating_point()]).sum().reshape(1)
        gathered = [torch.zeros_like(checksum) for _ in range(dist.get_world_size())]
        dist.all_gather(gathered, checksum)
        if any(not torch.equal(g, gathered[0]) for g in gathered):
            raise RuntimeError(f"network '{name}' differs between ranks: checksums {[float(g) for g in gathered]}")


def sync_batchnorm(net: nn.Module, device: torch.device) -> nn.Module:
    """BatchNorm statistics over all ranks' samples (SPADE under DDP). SyncBatchNorm runs on accelerators only: on the
    CPU the network is returned unchanged, each rank normalises with its own part of the batch, and the trainer
    averages the running statistics over the ranks after every iteration (`average_buffers`)."""
    if device.type == "cpu":
        return net
    return nn.SyncBatchNorm.convert_sync_batchnorm(net).to(device)


def average_buffers(net: nn.Module, world: int) -> None:
    """Replace every floating-point buffer (BatchNorm running statistics) by its mean over the ranks."""
    _average_in_place([b for b in net.buffers() if b.is_floating_point()], world)


def barrier() -> None:
    if dist.is_initialized():
        dist.barrier()
