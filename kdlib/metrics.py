"""Numbers that judge a model beyond accuracy: calibration, gap closed, mean ± std, and the
paired comparison over seeds that decides whether one recipe beats another.

Pure functions of tensors and lists; no training loops here.
"""
from __future__ import annotations

import math
import statistics
from dataclasses import dataclass

import torch
from scipy import stats

from .validation import check_int, check_number


def _tensor(x, name: str) -> torch.Tensor:
    """torch.as_tensor(x), with a clear error for something that is not an array of numbers."""
    try:
        return torch.as_tensor(x)
    except (TypeError, ValueError, RuntimeError):
        raise TypeError(f"{name} must be a tensor or an array of numbers, got {type(x).__name__}") from None


def _check_probs_labels(probs, labels) -> tuple[torch.Tensor, torch.Tensor]:
    """Turn (probs, labels) into tensors and raise a clear error if they do not fit."""
    probs = _tensor(probs, "probs")
    labels = _tensor(labels, "labels")
    if not probs.is_floating_point() or probs.ndim != 2:
        raise ValueError(f"probs must be a floating (N, K) array of probabilities, got dtype {probs.dtype} "
                         f"and shape {tuple(probs.shape)}")
    if probs.shape[0] == 0:
        raise ValueError("probs is empty; pass at least one example")
    if labels.ndim != 1 or labels.shape[0] != probs.shape[0] or labels.is_floating_point():
        raise ValueError(f"labels must be (N,) integer class indices with N = {probs.shape[0]}, "
                         f"got dtype {labels.dtype} and shape {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= probs.shape[1]:
        raise ValueError(f"labels must lie in 0..{probs.shape[1] - 1}")
    probs = probs.double()
    if (probs < 0).any() or not torch.allclose(probs.sum(1), torch.ones(len(probs), dtype=probs.dtype), atol=1e-4):
        raise ValueError("each row of probs must be non-negative and sum to 1: pass "
                         "torch.softmax(logits, dim=1), not the logits themselves")
    return probs, labels.long()


def _check_bins(n_bins) -> int:
    return check_int(n_bins, "n_bins", low=1)


def reliability_diagram_data(probs, labels, n_bins: int = 15) -> dict:
    """Bin the predictions by confidence, as a reliability diagram does.

    The confidence of a prediction is its largest probability. Bin m holds
    the predictions with confidence in ((m-1)/M, m/M] (Guo et al., 2017).

    Args:
        probs: (N, K) predicted probabilities (rows sum to 1).
        labels: (N,) true class indices.
        n_bins: M, the number of equal-width bins on [0, 1].
    Returns:
        {"edges": (M+1,) bin edges, "confidence": (M,) mean confidence per bin,
         "accuracy": (M,) accuracy per bin, "count": (M,) examples per bin}
        as float64/int64 tensors; confidence and accuracy are NaN in empty bins.

    Introduced in: notebooks/04_teacher.ipynb
    """
    probs, labels = _check_probs_labels(probs, labels)
    M = _check_bins(n_bins)
    conf, pred = probs.max(1)
    correct = (pred == labels).double()
    edges = torch.linspace(0, 1, M + 1, dtype=torch.float64)
    # bucketize with right=False puts x in bin i when edges[i] < x <= edges[i+1]
    idx = torch.bucketize(conf, edges[1:-1], right=False)  # (N,) in 0..M-1
    count = torch.bincount(idx, minlength=M)
    sum_conf = torch.bincount(idx, weights=conf, minlength=M)
    sum_acc = torch.bincount(idx, weights=correct, minlength=M)
    nan = torch.full((M,), float("nan"), dtype=torch.float64)
    nonempty = count > 0
    return {"edges": edges, "count": count,
            "confidence": torch.where(nonempty, sum_conf / count.clamp(min=1), nan),
            "accuracy": torch.where(nonempty, sum_acc / count.clamp(min=1), nan)}


def expected_calibration_error(probs, labels, n_bins: int = 15) -> float:
    """Expected calibration error (Naeini et al., 2015; Guo et al., 2017):

        ECE = sum_m |B_m| / N * |acc(B_m) - conf(B_m)|

    where B_m are the predictions whose confidence falls in bin m (see
    `reliability_diagram_data`). 0 is perfectly calibrated; an over-confident
    model has conf > acc in its high bins.

    Args:
        probs: (N, K) predicted probabilities, e.g. `torch.softmax(logits, 1)`.
        labels: (N,) true class indices.
        n_bins: number of equal-width confidence bins (15 as in Guo et al.).
    Returns:
        a float in [0, 1].

    Introduced in: notebooks/04_teacher.ipynb
    """
    d = reliability_diagram_data(probs, labels, n_bins)
    nonempty = d["count"] > 0
    weights = d["count"][nonempty].double() / d["count"].sum()
    gaps = (d["accuracy"][nonempty] - d["confidence"][nonempty]).abs()
    return float((weights * gaps).sum())


def mean_confidence(probs) -> float:
    """Mean of the largest probability of each row of (N, K) `probs`.

    Introduced in: notebooks/04_teacher.ipynb
    """
    probs = _tensor(probs, "probs")
    if probs.ndim != 2 or probs.shape[0] == 0 or probs.shape[1] == 0 or not probs.is_floating_point():
        raise ValueError(f"probs must be a non-empty (N, K) array, got shape {tuple(probs.shape)}")
    if not torch.isfinite(probs).all():
        raise ValueError("probs contains NaN or inf; pass torch.softmax(logits, dim=1) of finite logits")
    return float(probs.max(1).values.double().mean())


def gap_closed(kd: float, alone: float, teacher: float) -> float:
    """The fraction of the teacher-student gap that distillation closes:

        (kd - alone) / (teacher - alone)

    with accuracies (or any score where higher is better). 1 means the
    distilled student matches the teacher, 0 that distillation did nothing,
    a negative value that it hurt. Hinton et al. (2015) on MNIST: errors
    146 (student alone), 74 (distilled), 67 (teacher) give 72/79 = 0.91.

    Raises:
        ValueError: when the teacher is not better than the student alone
            (the gap is zero or negative, so the fraction means nothing).

    Introduced in: notebooks/05_distillation.ipynb
    """
    kd, alone, teacher = (check_number(v, name) for name, v in (("kd", kd), ("alone", alone), ("teacher", teacher)))
    if not teacher > alone:
        raise ValueError(f"the teacher ({teacher}) must score higher than the student alone ({alone}) "
                         "for a gap to be closed")
    return (kd - alone) / (teacher - alone)


def mean_std(values) -> tuple[float, float]:
    """Mean and sample standard deviation (divisor n - 1) of a list of numbers.

    One value gives a standard deviation of 0.0.

    Introduced in: notebooks/04_teacher.ipynb
    """
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"values must be a list of numbers, got {values!r:.60}") from None
    if not values:
        raise ValueError("values is empty; pass the result of at least one run")
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"values must be finite numbers, got {values}")
    if len(values) == 1:
        return values[0], 0.0
    return statistics.fmean(values), statistics.stdev(values)


def format_mean_std(values, fmt: str = ".1%") -> str:
    """`mean ± std` of `values` as text, e.g. `format_mean_std([0.97, 0.98])` -> '97.5% ± 0.7%'.

    Introduced in: notebooks/04_teacher.ipynb
    """
    m, s = mean_std(values)
    try:
        return f"{m:{fmt}} ± {s:{fmt}}"
    except (TypeError, ValueError):
        raise ValueError(f"fmt must be a format spec for numbers such as '.1%' or '.3f', got {fmt!r}") from None


def per_class_accuracy(logits, labels, num_classes: int | None = None) -> torch.Tensor:
    """Accuracy of the argmax prediction within each true class.

    Args:
        logits: (N, K) scores (or probabilities).
        labels: (N,) true class indices.
    Returns:
        (K,) float64; NaN for a class with no examples.

    Introduced in: notebooks/05_distillation.ipynb
    """
    logits, labels = _tensor(logits, "logits"), _tensor(labels, "labels")
    if logits.ndim != 2 or labels.ndim != 1 or len(labels) != len(logits) or logits.shape[1] == 0:
        raise ValueError(f"need logits (N, K) and labels (N,), got {tuple(logits.shape)} and {tuple(labels.shape)}")
    if labels.is_floating_point() or labels.dtype == torch.bool:
        raise TypeError(f"labels must be integer class indices, got dtype {labels.dtype}")
    if logits.dtype == torch.bool or logits.is_complex():
        raise TypeError(f"logits must be real scores (or probabilities), got dtype {logits.dtype}")
    if num_classes is not None:
        check_int(num_classes, "num_classes", low=1, hint="or None for the logits' number of classes")
    K = num_classes or logits.shape[1]
    if len(labels) and (int(labels.min()) < 0 or int(labels.max()) >= K):
        raise ValueError(f"labels must lie in 0..{K - 1}")
    correct = (logits.argmax(1) == labels).double()
    count = torch.bincount(labels.long(), minlength=K).double()
    hits = torch.bincount(labels.long(), weights=correct, minlength=K)
    return torch.where(count > 0, hits / count.clamp(min=1), torch.full_like(count, float("nan")))


def _finite_list(values, name: str) -> list[float]:
    try:
        values = [float(v) for v in values]
    except (TypeError, ValueError):
        raise TypeError(f"{name} must be a list of numbers, got {values!r:.60}") from None
    if not all(math.isfinite(v) for v in values):
        raise ValueError(f"{name} must be finite numbers, got {values}")
    return values


def _check_confidence(confidence) -> float:
    return check_number(confidence, "confidence", low=0.0, high=1.0, low_open=True, high_open=True, hint="e.g. 0.95")


def mean_ci(values, confidence: float = 0.95) -> tuple[float, float, float]:
    """Mean of `values` and its confidence interval from the t-distribution.

        mean ± t_{n-1} * s / sqrt(n)

    with s the sample standard deviation and t_{n-1} the two-sided quantile of
    Student's t-distribution with n - 1 degrees of freedom (2.78 for n = 5 at 95 %).

    Returns:
        (mean, low, high).
    """
    values = _finite_list(values, "values")
    confidence = _check_confidence(confidence)
    if len(values) < 2:
        raise ValueError(f"a confidence interval needs at least 2 values (seeds), got {len(values)}")
    n, m, s = len(values), statistics.fmean(values), statistics.stdev(values)
    half = float(stats.t.ppf((1 + confidence) / 2, n - 1)) * s / math.sqrt(n)
    return m, m - half, m + half


@dataclass(frozen=True)
class PairedComparison:
    """Recipe A against recipe B over the same seeds: the differences A - B, their mean, its
    confidence interval, and the verdict that follows from the interval."""

    diffs: tuple[float, ...]  # A - B, one per seed
    mean: float               # mean difference
    low: float                # confidence interval of the mean difference
    high: float
    confidence: float         # 0.95 for a 95 % interval

    @property
    def n(self) -> int:
        return len(self.diffs)

    @property
    def verdict(self) -> str:
        """'better' (the whole interval above 0), 'worse' (below 0) or 'no clear difference'."""
        if self.low > 0:
            return "better"
        if self.high < 0:
            return "worse"
        return "no clear difference"

    @property
    def wins(self) -> int:
        """On how many seeds A scored higher than B."""
        return sum(d > 0 for d in self.diffs)

    def format(self, fmt: str = "+.2%") -> str:
        """e.g. '+1.38% (95% CI +1.10% to +1.66%, 5 seeds): better'."""
        try:
            return (f"{self.mean:{fmt}} ({self.confidence:.0%} CI {self.low:{fmt}} to {self.high:{fmt}}, "
                    f"{self.n} seeds): {self.verdict}")
        except (TypeError, ValueError):
            raise ValueError(f"fmt must be a format spec for numbers such as '+.2%', got {fmt!r}") from None

    def __str__(self) -> str:
        return self.format("+.4g")


def compare_paired(a, b, confidence: float = 0.95) -> PairedComparison:
    """Compare two recipes run on the same seeds, from their scores a[i] and b[i] on seed i.

    The paired differences d_i = a_i - b_i remove what a seed does to both recipes alike
    (the same initial weights, the same batches); their mean gets a t-interval
    (`mean_ci`). The verdict reads only the interval: 'better' when it lies above 0,
    'worse' below, 'no clear difference' when it contains 0, which is what a book must
    say, and assert, when a difference is inside the noise. A 95 % interval that excludes
    0 is the same decision as a paired t-test at p < 0.05.

    Args:
        a, b: scores (higher is better, e.g. test accuracy) of recipes A and B, one per seed,
            in the same seed order; at least 2 seeds.
        confidence: the interval's level.
    Returns:
        a `PairedComparison` (`.mean`, `.low`, `.high`, `.verdict`, `.wins`, `.format()`).
    """
    a, b = _finite_list(a, "a"), _finite_list(b, "b")
    if len(a) != len(b):
        raise ValueError(f"a and b must hold one score per seed, for the same seeds: got {len(a)} and {len(b)}")
    diffs = [x - y for x, y in zip(a, b)]
    if len(diffs) < 2:
        raise ValueError(f"a comparison over seeds needs at least 2 seeds, got {len(diffs)}; "
                         "one seed cannot tell a difference from noise")
    m, low, high = mean_ci(diffs, confidence)
    return PairedComparison(tuple(diffs), m, low, high, float(confidence))
