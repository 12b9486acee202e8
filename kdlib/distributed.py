"""Training on several processes with `torchrun` (DistributedDataParallel).

`init_distributed` joins the process group that `torchrun` set up; after that,
`kdlib.train.train` and `kdlib.train.distill` shard the data (`shard`) and average the
gradients by themselves. Nothing here is needed in an ordinary, single-process run.
"""
from __future__ import annotations

import os

import torch
from torch.utils.data import DataLoader, RandomSampler


def is_distributed() -> bool:
    """True inside a process group (e.g. a script launched with `torchrun`)."""
    return torch.distributed.is_available() and torch.distributed.is_initialized()


def is_main_process() -> bool:
    """True in the single process of an ordinary run, or in rank 0 under `torchrun`."""
    return not is_distributed() or torch.distributed.get_rank() == 0


def init_distributed(backend: str | None = None) -> torch.device:
    """Join the process group that `torchrun` set up (gloo on CPU, nccl on GPU); return this
    process's device. Call once at the top of a script run with
    `torchrun --nproc_per_node=N script.py`; `train` and `distill` then shard the data and
    average gradients by themselves.
    """
    if "RANK" not in os.environ or "WORLD_SIZE" not in os.environ:
        raise RuntimeError("init_distributed() needs the variables torchrun sets (RANK, WORLD_SIZE, ...): "
                           "launch the script with `torchrun --nproc_per_node=2 script.py`")
    use_cuda = torch.cuda.is_available() and backend != "gloo"
    if not is_distributed():
        torch.distributed.init_process_group(backend or ("nccl" if use_cuda else "gloo"))
    if use_cuda:
        local = int(os.environ.get("LOCAL_RANK", 0))
        torch.cuda.set_device(local)
        return torch.device("cuda", local)
    return torch.device("cpu")


def shard(loader: DataLoader) -> tuple[DataLoader, object]:
    """Under torchrun, the same loader over this process's shard of the data
    (`DistributedSampler`); otherwise the loader unchanged. Returns (loader, sampler or None)."""
    if not is_distributed():
        return loader, None
    from torch.utils.data.distributed import DistributedSampler

    shuffle = isinstance(loader.sampler, RandomSampler)
    seed = int(loader.generator.initial_seed()) if loader.generator is not None else 0
    sampler = DistributedSampler(loader.dataset, shuffle=shuffle, seed=seed)
    return DataLoader(loader.dataset, batch_size=loader.batch_size, sampler=sampler,
                      collate_fn=loader.collate_fn), sampler


def wrap(model: torch.nn.Module, device: torch.device) -> torch.nn.Module:
    """`model` inside DistributedDataParallel (gradients averaged across processes)."""
    from torch.nn.parallel import DistributedDataParallel

    return DistributedDataParallel(model, device_ids=[device.index] if device.type == "cuda" else None)


def all_reduce_sum(total: torch.Tensor, count: int, device) -> tuple[torch.Tensor, int]:
    """Sum a loss total and an example count over all processes."""
    buf = torch.stack([total.detach().float(), torch.tensor(float(count), device=device)])
    torch.distributed.all_reduce(buf)
    return buf[0], int(buf[1].item())
