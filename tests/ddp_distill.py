"""Distil a small MLP on the digits, as one process or as several under torchrun.

    python tests/ddp_distill.py OUT.pt 64                          # one process, batch 64
    torchrun --nproc_per_node=2 tests/ddp_distill.py OUT.pt 64      # two processes, 32 each

Used by tests/test_distributed.py: both runs must end with the same weights.
"""
import os
import sys

import torch

from kdlib import data, distributed as dist, models, train, utils


def main(out: str, global_batch: int) -> None:
    torch.set_num_threads(1)
    distributed = "RANK" in os.environ
    device = dist.init_distributed("gloo") if distributed else torch.device("cpu")
    world = torch.distributed.get_world_size() if distributed else 1
    ds = data.load_dataset("digits")
    loader = data.make_loader(ds.train, global_batch // world, shuffle=False)
    utils.seed_everything(0)
    teacher = models.StudentMLP((1, 8, 8), hidden=(32,)).eval()
    utils.seed_everything(1)
    student = models.StudentMLP((1, 8, 8), hidden=(16,))  # no BatchNorm: shards give the same gradients
    train.distill(student, teacher, loader, T=2.0, alpha=0.5, num_epochs=3, lr=1e-2, device=device,
                  progress=False, seed=0)
    if dist.is_main_process():
        torch.save(student.state_dict(), out)
    if distributed:
        torch.distributed.destroy_process_group()


if __name__ == "__main__":
    main(sys.argv[1], int(sys.argv[2]))
