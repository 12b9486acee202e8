"""kdlib: knowledge distillation for edge devices, the helper library of the book.

Flat modules, each importing only from those above it (CONTRIBUTING.md has the full map):
    validation, utils, quiet   input checks; seeding, files, checkpoints, eval_mode; runtimes' noise
    chapter                    every chapter's first and last cell, and glue
    guards                     run-time checks for common distillation mistakes
    data, models               image data, transfer sets, augmentation; teachers and students
    losses                     every loss: logit KD, DKD, FitNets, attention, RKD
    hooks, inference           inner layers' outputs; predictions, evaluation, the teacher cache
    train, distributed, chains the one training loop; torchrun; teacher assistants, born-again
    metrics, measure           calibration, gap closed, comparisons over seeds; size and latency
    prune, quant, qat, export  pruning; quantization; quantization-aware training; ONNX, ExecuTorch
    mcu, mcu_onnx, mcu_c, mcu_tflite   integer-only inference and C for a microcontroller
    lm, lm_losses, lm_train    a small character-level language model and its distillation
    viz, widgets, zoo          plots; widgets; the book's trained models
    pipeline, __main__         teacher -> distil -> prune -> quantize -> export -> report; the CLI
    exercises                  the chapters' automatic checks
"""
__version__ = "0.1.0"

from .utils import seed_everything  # noqa: F401
