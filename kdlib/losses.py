"""Every distillation loss in the book, each a small function with its formula and paper.

- logits: `soft_targets`, `kd_loss` (Hinton et al.), `dkd_terms` / `dkd_loss` (decoupled KD);
- features: `hint_loss` / `FitNetsHint` (FitNets), `attention_map` / `attention_loss`
  (attention transfer);
- relations between examples: `distance_potentials`, `angle_potentials`, `rkd_*` (RKD).

This module knows nothing of training loops: it maps tensors to numbers. Inputs are
checked by the helpers of `kdlib.validation` (and `_check_pair` / `_temperature` below),
so that each function's body reads like its formula.
"""
from __future__ import annotations

from typing import Sequence

import torch
import torch.nn.functional as F
from torch import nn

from .guards import warn_if_probabilities, warn_if_teacher_grad
from .validation import (UNLABELLED, check_fraction, check_int, check_labels, check_list, check_logits,
                         check_model, check_number, check_positive, check_same_shape, check_tensor)

T_HINT = "the book uses T between 1 and 20"

# ----------------------------------------------------------------------------- checks shared by the losses


def check_temperature(T, dtype: torch.dtype = torch.float32) -> float:
    """T as a float; a clear error unless T > 0 and T^2 is finite in `dtype`."""
    T = check_positive(T, "temperature T", hint=T_HINT)
    if T * T > torch.finfo(dtype).max:
        raise ValueError(f"T={T:g} is so large that T^2 overflows {dtype}; {T_HINT}")
    return T


def _check_scale(name: str, logits: torch.Tensor, T: float) -> None:
    """A clear error when `logits / T` would overflow the dtype (softmax would give NaN)."""
    top = logits.detach().abs().amax()
    if not torch.isfinite(top * (2.0 / T)):
        raise ValueError(f"{name} are too large for T={T:g} in {logits.dtype}: |logit| reaches {top.item():.3g}, "
                         "so logits / T overflows and softmax gives NaN; such logits mean the model diverged "
                         "(lower the learning rate), or use float64")


def _check_pair(student_logits, teacher_logits, T) -> float:
    """Check a (student, teacher) pair of (B, K) logits and the temperature; return T."""
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    check_same_shape(student_logits, teacher_logits, "student_logits and teacher_logits",
                     hint="(batch, num_classes): do teacher and student predict the same classes?")
    T = check_temperature(T, student_logits.dtype)
    _check_scale("student_logits", student_logits, min(T, 1.0))
    _check_scale("teacher_logits", teacher_logits, T)
    return T


# ----------------------------------------------------------------------------- logits


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
    T = check_temperature(T, logits.dtype)
    _check_scale("logits", logits, T)
    return F.softmax(logits / T, dim=-1)


def _check_kd(student_logits, teacher_logits, labels, T, alpha) -> tuple[float, float]:
    T = _check_pair(student_logits, teacher_logits, T)
    alpha = check_fraction(alpha, "alpha", hint="it weights the soft term")
    warn_if_probabilities("student_logits", student_logits, stacklevel=4)  # points at kd_loss's caller
    warn_if_probabilities("teacher_logits", teacher_logits, stacklevel=4)
    warn_if_teacher_grad(teacher_logits, stacklevel=4)
    if labels is None and alpha != 1:
        raise ValueError(f"labels=None leaves only the soft term, so alpha must be 1 (got {alpha:g}); "
                         "pass labels, or alpha=1.0")
    if labels is not None:
        B, K = student_logits.shape
        check_labels(labels, n=B, num_classes=K, allow_unlabelled=True)
    return T, alpha


def kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
            T: float = 4.0, alpha: float = 0.9) -> torch.Tensor:
    """The distillation loss of Hinton, Vinyals & Dean (2015), arXiv:1503.02531.

        L = alpha * T^2 * KL(p_T || q_T) + (1 - alpha) * CE(y, softmax(z_s))

    where p_T = softmax(z_t / T) are the teacher's soft targets and q_T = softmax(z_s / T)
    the student's; the KL is summed over classes and averaged over the batch
    ("batchmean"). The T^2 factor keeps the soft term's gradient about the same size as
    T grows (exactly so only for large T; chapter 3 measures it). Computed with
    log-softmax, so it stays finite for very large logits.

    A label of -1 (`kdlib.validation.UNLABELLED`, an image of a transfer set without a
    label) counts in the soft term only: the hard term is the mean over the labelled
    examples, and 0 when the batch has none.

    Args:
        student_logits: (B, K) float.
        teacher_logits: (B, K) float, treated as constants (no gradient).
        labels: (B,) int64 class indices (or -1), or None for the soft term alone.
        T: temperature > 0.
        alpha: weight of the soft term, in [0, 1].
    Returns:
        a scalar tensor.

    Introduced in: notebooks/03_kd_loss_math.ipynb
    """
    T, alpha = _check_kd(student_logits, teacher_logits, labels, T, alpha)
    log_q = F.log_softmax(student_logits / T, dim=-1)           # student at T, (B, K)
    log_p = F.log_softmax(teacher_logits.detach() / T, dim=-1)  # teacher at T, (B, K)
    soft = T * T * F.kl_div(log_q, log_p, reduction="batchmean", log_target=True)
    if labels is None:
        return soft
    labelled = labels != UNLABELLED
    if bool(labelled.all()):
        return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits, labels.long())
    if alpha == 1 or not bool(labelled.any()):
        return alpha * soft
    return alpha * soft + (1 - alpha) * F.cross_entropy(student_logits[labelled], labels[labelled].long())


class KDLoss(nn.Module):
    """`kd_loss` as an `nn.Module`: `KDLoss(T=4.0, alpha=0.9)(student_logits, teacher_logits, labels)`."""

    def __init__(self, T: float = 4.0, alpha: float = 0.9):
        super().__init__()
        self.T, self.alpha = check_temperature(T), check_fraction(alpha, "alpha")

    def forward(self, student_logits, teacher_logits, labels=None):
        return kd_loss(student_logits, teacher_logits, labels, T=self.T, alpha=self.alpha)

    def extra_repr(self) -> str:
        return f"T={self.T}, alpha={self.alpha}"


def _binary_and_rest(logits: torch.Tensor, labels: torch.Tensor, T: float):
    """log b = (log p_target, log (1 - p_target)) (B, 2) and the log-softmax over
    the K - 1 non-target classes (B, K - 1), all at temperature T."""
    z = logits / T
    B, K = z.shape
    target = F.one_hot(labels, K).bool()
    lse_all = torch.logsumexp(z, dim=1)
    rest = z[~target].view(B, K - 1)
    lse_rest = torch.logsumexp(rest, dim=1)
    log_b = torch.stack([z[target] - lse_all, lse_rest - lse_all], dim=1)
    return log_b, F.log_softmax(rest, dim=1)


def dkd_terms(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
              T: float = 4.0) -> tuple[torch.Tensor, torch.Tensor, torch.Tensor]:
    """The two parts of the KD loss found by Zhao et al. (2022), arXiv:2203.08679, per example.

        TCKD = T^2 KL( b^T || b^S ),      b = (p_target, 1 - p_target)
        NCKD = T^2 KL( p_hat^T || p_hat^S ), p_hat = softmax over the non-target classes

    so that, example by example, T^2 KL(p^T || p^S) = TCKD + (1 - p^T_target) NCKD.

    Args:
        student_logits, teacher_logits: (B, K); labels: (B,) class indices.
        T: temperature > 0 (all probabilities are taken at T).
    Returns:
        (tckd (B,), nckd (B,), teacher_target_prob (B,)), the last without gradient.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    T = _check_pair(student_logits, teacher_logits, T)
    labels = check_labels(labels, n=student_logits.shape[0], num_classes=student_logits.shape[1])
    log_bs, log_rs = _binary_and_rest(student_logits, labels, T)
    with torch.no_grad():
        log_bt, log_rt = _binary_and_rest(teacher_logits, labels, T)
    tckd = (log_bt.exp() * (log_bt - log_bs)).sum(1) * T * T
    nckd = (log_rt.exp() * (log_rt - log_rs)).sum(1) * T * T
    return tckd, nckd, log_bt[:, 0].exp()


def dkd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor,
             alpha: float = 1.0, beta: float = 8.0, T: float = 4.0) -> torch.Tensor:
    """Decoupled knowledge distillation of Zhao et al. (2022), arXiv:2203.08679.

        L_DKD = mean over the batch of ( alpha * TCKD + beta * NCKD )

    (see `dkd_terms`). Classical KD is the special case that weights NCKD by
    (1 - p^T_target), which shrinks it exactly when the teacher is confident; DKD gives it
    a fixed weight beta instead. The paper adds the cross-entropy on the labels and uses
    alpha = 1, beta = 8 on CIFAR-100.

    Args:
        student_logits, teacher_logits: (B, K); labels: (B,) class indices.
        alpha, beta: weights >= 0 of TCKD and NCKD; T: temperature.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    alpha = check_number(alpha, "alpha", low=0.0)
    beta = check_number(beta, "beta", low=0.0)
    tckd, nckd, _ = dkd_terms(student_logits, teacher_logits, labels, T)
    return (alpha * tckd + beta * nckd).mean()


# ----------------------------------------------------------------------------- features


def _feature(name: str, x, ndim: int | None = None) -> torch.Tensor:
    shape = {4: "(B, C, H, W) feature maps", 2: "(B, D) embeddings"}.get(ndim, "")
    return check_tensor(x, name, ndim=ndim, floating=True, shape_hint=shape)


def _same_batch(a: torch.Tensor, b: torch.Tensor, what: str = "student and teacher features") -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what} have different batch sizes ({a.shape[0]} and {b.shape[0]}); "
                         "they must come from the same batch of inputs")


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, regressor: nn.Module) -> torch.Tensor:
    """The FitNets hint loss of Romero et al. (2015), arXiv:1412.6550.

        L_hint = mean over (b, c, h, w) of ( r(s)_bchw - t_bchw )^2

    where s is the student's "guided" layer output, t the teacher's "hint" layer output,
    and r a learned regressor (here a 1x1 convolution from the student's channels to the
    teacher's) trained together with the student. The paper writes 1/2 ||t - r(s)||^2
    summed over elements; averaging instead only rescales the loss weight.

    Args:
        student_feat: (B, C_s, H, W).
        teacher_feat: (B, C_t, H, W), treated as a constant (no gradient).
        regressor: maps (B, C_s, H, W) to (B, C_t, H, W), e.g. `hint_regressor(C_s, C_t)`.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    _same_batch(_feature("student_feat", student_feat, 4), _feature("teacher_feat", teacher_feat, 4))
    check_model(regressor, "regressor")
    fix = f"build it with hint_regressor({student_feat.shape[1]}, {teacher_feat.shape[1]})"
    try:
        mapped = regressor(student_feat)
    except RuntimeError as err:
        raise ValueError(f"the regressor could not take student_feat of shape {tuple(student_feat.shape)} "
                         f"({str(err).splitlines()[0]}); {fix}") from None
    if mapped.shape != teacher_feat.shape:
        raise ValueError(f"the regressor maps the student's features to shape {tuple(mapped.shape)}, but the "
                         f"teacher's are {tuple(teacher_feat.shape)}: pair layers with the same height and width "
                         f"and {fix}")
    return F.mse_loss(mapped, teacher_feat.detach())


def hint_regressor(student_channels: int, teacher_channels: int) -> nn.Conv2d:
    """The FitNets regressor: a 1x1 convolution (B, C_s, H, W) -> (B, C_t, H, W)."""
    check_int(student_channels, "student_channels", low=1)
    check_int(teacher_channels, "teacher_channels", low=1)
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


class FitNetsHint(nn.Module):
    """One hint regressor per (student layer, teacher layer) pair; calling it sums
    `hint_loss` over the pairs. Its parameters are trained with the student when passed
    as `feature_loss` to `kdlib.train.distill`.

    Args:
        student_channels, teacher_channels: channel counts of each pair, in order.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        s = check_list(student_channels, "student_channels", hint="[16, 32]: one count per layer pair")
        t = check_list(teacher_channels, "teacher_channels", hint="[32, 64]: one count per layer pair")
        if len(s) != len(t):
            raise ValueError(f"need one teacher channel count per student channel count, got {s} and {t}")
        self.regressors = nn.ModuleList(hint_regressor(a, b) for a, b in zip(s, t))

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_pairs(student_feats, teacher_feats, len(self.regressors))
        return sum(hint_loss(s, t, r) for s, t, r in zip(student_feats, teacher_feats, self.regressors))


def _check_pairs(student_feats, teacher_feats, n: int) -> None:
    s = check_list(student_feats, "student_feats", nonempty=False, hint="one tensor per layer pair")
    t = check_list(teacher_feats, "teacher_feats", nonempty=False, hint="one tensor per layer pair")
    if len(s) != len(t) or len(s) != n:
        raise ValueError(f"got {len(s)} student and {len(t)} teacher feature maps for {n} layer pairs; "
                         "pass one per pair")


def attention_map(feat: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The spatial attention map of Zagoruyko & Komodakis (2017), arXiv:1612.03928.

        Q = vec( mean_c |A_c|^p ),   attention = Q / ||Q||_2

    The mean over channels makes maps of layers with different channel counts comparable,
    and the L2 normalisation makes the map independent of the scale of the features. With
    `size`, the (H, W) map is resized bilinearly to `size` before normalising, so that
    layers of different resolutions can be compared.

    Args:
        feat: (B, C, H, W) activations A.
        p: the power (the paper uses p = 2).
        size: optional (H', W') output resolution.
    Returns:
        (B, H*W) (or (B, H'*W')) maps, each of unit L2 norm (zero maps stay zero).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    check_tensor(feat, "feat", ndim=4, floating=True, nonempty=False, shape_hint="(B, C, H, W) feature maps")
    if 0 in feat.shape:
        raise ValueError(f"feat has an empty dimension, shape {tuple(feat.shape)}; an attention map needs "
                         "at least one channel and one position")
    p = check_positive(p, "p", hint="the paper uses 2")
    if size is not None:
        size = tuple(check_list(size, "size", of=int, hint="None or (height, width), two positive ints"))
        if len(size) != 2 or min(size) < 1:
            raise ValueError(f"size must be None or (height, width), two positive ints; got {size!r}")
    q = feat.abs().pow(p).mean(dim=1, keepdim=True)  # (B, 1, H, W)
    if not torch.isfinite(q).all():
        raise ValueError(f"|feat|^p overflows {feat.dtype} (the largest |feat| is "
                         f"{feat.detach().abs().max().item():.3g}, p = {p:g}): use a smaller p (the paper "
                         "uses 2), or features of a smaller scale")
    if size is not None and size != tuple(q.shape[-2:]):
        q = F.interpolate(q, size=size, mode="bilinear", align_corners=False)
    return F.normalize(q.flatten(1), p=2, dim=1)


def attention_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer loss of Zagoruyko & Komodakis (2017), arXiv:1612.03928.

        L_AT = mean over (b, i) of ( Q_s/||Q_s||_2 - Q_t/||Q_t||_2 )_bi^2

    with Q = vec(mean_c |A_c|^p) (see `attention_map`). This is the squared-distance form
    of the authors' code (averaged over the batch and the H*W positions), which weights it
    by beta = 1000 per layer pair. If the two maps have different resolutions, the smaller
    one is resized bilinearly to the larger. The channel counts may differ.

    Args:
        student_feat: (B, C_s, H_s, W_s).
        teacher_feat: (B, C_t, H_t, W_t), treated as a constant.
        p: the power of the map.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    _same_batch(_feature("student_feat", student_feat, 4), _feature("teacher_feat", teacher_feat, 4))
    size = tuple(max(a, b) for a, b in zip(student_feat.shape[-2:], teacher_feat.shape[-2:]))
    a_s = attention_map(student_feat, p, size)
    a_t = attention_map(teacher_feat.detach(), p, size)
    return (a_s - a_t).pow(2).mean()


# ----------------------------------------------------------------------------- relations between examples


def _embeddings(name: str, e: torch.Tensor, at_least: int = 2) -> torch.Tensor:
    check_tensor(e, name, floating=True)
    if e.ndim < 2:
        raise ValueError(f"{name} must have a batch dimension and at least one feature dimension, "
                         f"got shape {tuple(e.shape)}")
    if e.shape[0] < at_least:
        raise ValueError(f"{name} has a batch of {e.shape[0]}; relations need at least {at_least} examples "
                         "(3 for angles), so use a batch size of 3 or more")
    return e.flatten(1)


def _check_eps(eps) -> float:
    return check_number(eps, "eps", low=0.0, high=1.0, low_open=True, hint="the default is 1e-12")


def _gram(e: torch.Tensor) -> tuple[torch.Tensor, torch.Tensor]:
    """The centred rows of `e` and their Gram matrix, with a clear error if it overflows."""
    e = e - e.mean(dim=0, keepdim=True)  # distances ignore shifts; centring keeps the Gram form accurate
    G = e @ e.T
    if not torch.isfinite(G).all():
        raise ValueError(f"the embeddings are too large for {e.dtype}: |e| reaches "
                         f"{e.detach().abs().max().item():.3g}, so their squared distances overflow; "
                         "normalise the embeddings (or use float64)")
    return e, G


def _distances(e: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """Pairwise distances (B, B) of the rows of `e` (B, D), with a zero diagonal, and a (B, B)
    mask of the pairs that are distinct points (i != j and distance > eps).

    Computed from the Gram matrix of the centred rows, ||e_i - e_j||^2 = G_ii + G_jj - 2 G_ij,
    so it costs O(B^2 D); a pair at distance 0 gets a zero (not an infinite) gradient."""
    e, G = _gram(e)
    sq = G.diagonal()
    d2 = (sq.unsqueeze(0) + sq.unsqueeze(1) - 2 * G).clamp_min(0)
    eye = torch.eye(e.shape[0], dtype=torch.bool, device=e.device)
    ok = (d2 > eps * eps) & ~eye
    D = torch.where(ok, torch.where(ok, d2, torch.ones_like(d2)).sqrt(), torch.zeros_like(d2))
    return D, ok


def distance_potentials(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RKD distance potentials of Park et al. (2019), arXiv:1904.05068.

        psi_D(e_i, e_j) = ||e_i - e_j||_2 / mu,   mu = mean over pairs i < j of ||e_i - e_j||_2

    Dividing by the mean distance makes them independent of the scale of the embedding
    space; distances do not change under rotations and shifts.

    Args:
        e: (B, D) embeddings (extra dimensions are flattened).
    Returns:
        (B*(B-1)/2,) potentials of the pairs i < j, row by row (the order of
        `torch.triu_indices(B, B, 1)`).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    e, eps = _embeddings("e", e), _check_eps(eps)
    D, _ = _distances(e, eps)
    d = D[torch.ones_like(D, dtype=torch.bool).triu(1)]
    return d / d.mean().clamp_min(eps)


def _angle_cube(e: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """cos[j, i, k] of the angle at e_j between e_i and e_k, (B, B, B), and the mask of the
    triplets where it is defined (i, j, k distinct and e_i, e_k != e_j)."""
    B = e.shape[0]
    e, G = _gram(e)                                                                       # (B, B)
    dots = G.unsqueeze(0) - G.unsqueeze(2) - G.unsqueeze(1) + G.diagonal().view(B, 1, 1)  # dots[j, i, k]
    D, ok = _distances(e, eps)
    inv = torch.where(ok, 1 / torch.where(ok, D, torch.ones_like(D)), torch.zeros_like(D))  # 0 where undefined
    cos = dots * inv.unsqueeze(2) * inv.unsqueeze(1)                                      # (B, B, B)
    valid = ok.unsqueeze(2) & ok.unsqueeze(1)                                             # e_i != e_j, e_k != e_j
    valid &= ~torch.eye(B, dtype=torch.bool, device=e.device).unsqueeze(0)                # i != k
    return cos, valid


def _distinct_triplets(B: int, device) -> torch.Tensor:
    """(B, B, B) mask of the triplets (j, i, k) of three distinct examples."""
    eye = torch.eye(B, dtype=torch.bool, device=device)
    return ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))


def angle_potentials(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RKD angle potentials of Park et al. (2019), arXiv:1904.05068.

        psi_A(e_i, e_j, e_k) = < (e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j|| >

    the cosine of the angle at e_j in the triangle (e_i, e_j, e_k), for all triplets of
    distinct examples. Angles do not change under rotations, shifts or scaling.

    The B^3 dot products come from the Gram matrix G = e e^T of the centred embeddings,
    <e_i - e_j, e_k - e_j> = G_ik - G_ij - G_jk + G_jj, which costs O(B^2 D + B^3) instead
    of the O(B^3 D) of forming every difference. A triplet in which e_i or e_k equals e_j
    has no angle: its cosine is 0.

    Args:
        e: (B, D) embeddings, B >= 3 (extra dimensions are flattened).
    Returns:
        (B*(B-1)*(B-2),) cosines, ordered by (j, i, k).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    e, eps = _embeddings("e", e, at_least=3), _check_eps(eps)
    cos, _ = _angle_cube(e, eps)
    return cos[_distinct_triplets(e.shape[0], e.device)]


def _embedding_pair(student_emb, teacher_emb, at_least: int = 2) -> tuple[torch.Tensor, torch.Tensor]:
    s = _embeddings("student_emb", student_emb, at_least)
    t = _embeddings("teacher_emb", teacher_emb, at_least)
    _same_batch(s, t, "student_emb and teacher_emb")
    return s, t


def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """RKD-D: Huber loss between the student's and the teacher's distance potentials.

        L_D = mean over pairs of huber( psi_D(s_i, s_j), psi_D(t_i, t_j) )   (Huber with delta = 1)

    Park et al. (2019), arXiv:1904.05068. The embeddings may have different widths: only
    relations between examples are compared.

    Args:
        student_emb: (B, D_s); teacher_emb: (B, D_t), treated as a constant.
    Returns:
        a scalar tensor.
    """
    s, t = _embedding_pair(student_emb, teacher_emb)
    with torch.no_grad():
        psi_t = distance_potentials(t)
    return F.smooth_l1_loss(distance_potentials(s), psi_t)


def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """RKD-A: Huber loss between the student's and the teacher's angle potentials.

        L_A = mean over triplets of distinct examples of huber( psi_A(s_i, s_j, s_k), psi_A(t_i, t_j, t_k) )

    Park et al. (2019), arXiv:1904.05068. Computed on the (B, B, B) cube of cosines with a
    mask, which is faster than gathering the triplets.

    Args:
        student_emb: (B, D_s); teacher_emb: (B, D_t), treated as a constant; B >= 3.
    Returns:
        a scalar tensor.
    """
    s, t = _embedding_pair(student_emb, teacher_emb, at_least=3)
    B = s.shape[0]
    with torch.no_grad():
        cos_t, _ = _angle_cube(t.detach())
    cos_s, _ = _angle_cube(s)
    huber = F.smooth_l1_loss(cos_s, cos_t, reduction="none")
    return (huber * _distinct_triplets(B, s.device)).sum() / (B * (B - 1) * (B - 2))


def rkd_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor, w_distance: float = 25.0,
             w_angle: float = 50.0) -> torch.Tensor:
    """Relational KD of Park et al. (2019), arXiv:1904.05068:

        L_RKD = w_distance * L_D + w_angle * L_A

    with the weights the paper uses for classification (25 and 50).

    Args:
        student_emb: (B, D_s); teacher_emb: (B, D_t); B >= 3.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    w_distance = check_number(w_distance, "w_distance", low=0.0)
    w_angle = check_number(w_angle, "w_angle", low=0.0)
    return w_distance * rkd_distance_loss(student_emb, teacher_emb) + w_angle * rkd_angle_loss(student_emb, teacher_emb)
