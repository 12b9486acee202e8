"""Soft targets and the distillation loss.

This module knows nothing of training loops: it maps logits to numbers.
"""
from __future__ import annotations

import math

import torch
import torch.nn.functional as F
from torch import nn

from .guards import warn_if_probabilities, warn_if_teacher_grad


def check_logits(name: str, logits, *, ndim: int = 2) -> torch.Tensor:
    """Raise a clear error unless `logits` is a finite floating (B, K) tensor."""
    if not isinstance(logits, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(logits).__name__}")
    if not logits.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {logits.dtype}")
    if logits.ndim != ndim:
        raise ValueError(f"{name} must have shape (batch, num_classes), got {tuple(logits.shape)}")
    if logits.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; pass at least one example")
    if logits.shape[-1] < 2:
        raise ValueError(f"{name} needs at least 2 classes, got {logits.shape[-1]}")
    if not torch.isfinite(logits).all():
        raise ValueError(f"{name} contains NaN or inf; check the model's inputs and learning rate")
    return logits


def check_temperature(T) -> float:
    """Raise a clear error unless T is a finite number > 0."""
    if isinstance(T, bool) or not isinstance(T, (int, float)):
        raise TypeError(f"temperature T must be a number, got {type(T).__name__}")
    if not math.isfinite(T) or T <= 0:
        raise ValueError(f"temperature T must be > 0, got {T}; the book uses T between 1 and 20")
    return float(T)


def _check_scale(name: str, logits: torch.Tensor, T: float) -> None:
    """Raise a clear error when `logits / T` would overflow the dtype (softmax would give NaN)."""
    if not torch.isfinite(logits.detach().abs().amax() * (2.0 / T)):
        raise ValueError(f"{name} are too large for T={T:g} in {logits.dtype}: |logit| reaches "
                         f"{logits.detach().abs().amax().item():.3g}, so logits / T overflows and softmax gives NaN; "
                         "such logits mean the model diverged (lower the learning rate), or use float64")


def soft_targets(logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """Softmax at temperature T: p_i = exp(z_i / T) / sum_j exp(z_j / T).

    Args:
        logits: (B, K) raw scores z.
        T: temperature > 0; T = 1 is the ordinary softmax, larger T is softer.
    Returns:
        (B, K) probabilities; each row sums to 1.

    Introduced in: notebooks/02_soft_labels.ipynb
    """
    check_logits("logits", logits)
    T = check_temperature(T)
    _check_scale("logits", logits, T)
    return F.softmax(logits / T, dim=-1)


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
            T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """The distillation loss of Hinton, Vinyals & Dean (2015), arXiv:1503.02531.

        L = alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(y, softmax(z_s))

    where p_T = softmax(z_t / T) are the teacher's soft targets and
    q_T = softmax(z_s / T) the student's; the KL is summed over classes and
    averaged over the batch ("batchmean"). The T^2 factor keeps the soft
    term's gradient the same size as T changes. Computed with log-softmax,
    so it stays finite for very large logits.

    Args:
        student_logits: (B, K) float.
        teacher_logits: (B, K) float, treated as constants (no gradient).
        labels: (B,) int64 class indices, or None for the soft term alone.
        T: temperature > 0.
        alpha: weight of the soft term, in [0, 1].
    Returns:
        a scalar tensor.

    Introduced in: notebooks/03_kd_loss_math.ipynb
    """
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (batch, num_classes); "
                         "do teacher and student predict the same classes?")
    warn_if_probabilities("student_logits", student_logits)
    warn_if_probabilities("teacher_logits", teacher_logits)
    warn_if_teacher_grad(teacher_logits)
    T = check_temperature(T)
    if T * T > torch.finfo(student_logits.dtype).max:
        raise ValueError(f"T={T:g} is so large that T^2 overflows {student_logits.dtype}; "
                         "the book uses T between 1 and 20")
    if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
        raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")
    _check_scale("student_logits", student_logits, min(T, 1.0))
    _check_scale("teacher_logits", teacher_logits, T)
    log_q = F.log_softmax(student_logits / T, dim=-1)
    log_p = F.log_softmax(teacher_logits.detach() / T, dim=-1)
    soft = F.kl_div(log_q, log_p, reduction="batchmean", log_target=True) * T * T
    if labels is None:
        if alpha != 1:
            raise ValueError(f"labels=None leaves only the soft term, so alpha must be 1 (got {alpha}); "
                             "pass labels, or alpha=1.0")
        return soft
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError("labels must be an integer tensor of class indices (B,)")
    if labels.shape != student_logits.shape[:1]:
        raise ValueError(f"labels must have shape ({student_logits.shape[0]},), got {tuple(labels.shape)}")
    K = student_logits.shape[1]
    if labels.numel() and (labels.min() < 0 or labels.max() >= K):
        raise ValueError(f"labels must lie in 0..{K - 1}, got values from {int(labels.min())} to {int(labels.max())}")
    hard = F.cross_entropy(student_logits, labels.long())
    return alpha * soft + (1 - alpha) * hard


class KDLoss(nn.Module):
    """`kd_loss` as an `nn.Module`: `KDLoss(T=4.0, alpha=0.9)(student_logits, teacher_logits, labels)`.

    Introduced in: notebooks/03_kd_loss_math.ipynb
    """

    def __init__(self, T: float = 4.0, alpha: float = 0.9):
        super().__init__()
        self.T, self.alpha = check_temperature(T), alpha
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")

    def forward(self, student_logits, teacher_logits, labels=None):
        return kd_loss(student_logits, teacher_logits, labels, T=self.T, alpha=self.alpha)

    def extra_repr(self) -> str:
        return f"T={self.T}, alpha={self.alpha}"
