"""kdlib: knowledge distillation for edge devices, the helper library of the book.

Modules, each importing only from those above it:
    utils    seeding, devices, atomic writes, checksummed checkpoints
    guards   run-time checks for common distillation mistakes (KDWarning classes)
    data     offline and torchvision data sets with fixed splits
    models   teacher and student families
    losses   soft targets and the distillation loss
    train    train / distill / evaluate
    features forward hooks; FitNets, attention, relational and decoupled KD; teacher chains
    bench    params, MACs, bytes, latency
"""
__version__ = "0.1.0"

from .utils import seed_everything  # noqa: F401
