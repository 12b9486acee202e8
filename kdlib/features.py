"""Beyond logits: intermediate features, attention maps, relations, decoupled KD,
teacher assistants and born-again networks.

Reading a layer's output uses forward hooks (`capture`); each loss is a
small function with its formula and paper; `distill_features` is the
distillation loop of `kdlib.train` with a feature term added (without one,
it is `kdlib.train.distill`); the teacher chains are short compositions of
`kdlib.train.train` and that loop.

Introduced in: notebooks/07_beyond_logits.ipynb
"""
from __future__ import annotations

import contextlib
import inspect
import math
import weakref
from typing import Callable, Iterable, Iterator, Sequence

import torch
import torch.nn.functional as F
from torch import nn
from torch.utils.data import DataLoader, RandomSampler, TensorDataset

from .data import as_tensors
from .guards import preflight, probe_batch, run_model, warn_if_train_mode
from .losses import _check_scale, check_logits, check_temperature
from .train import (History, _check_common, _check_loader, _fit, _reseed, _TensorsWithLogits, _WithLogits,
                    kd_loss_partial, train)
from .utils import get_device

# ----------------------------------------------------------------------------- hooks


def _as_list(value, name: str, example: str) -> list:
    """`value` (a list, tuple or other iterable) as a list; a clear TypeError for anything else."""
    if isinstance(value, (str, bytes, dict, torch.Tensor)) or not isinstance(value, Iterable):
        raise TypeError(f"{name} must be a list, e.g. {example}; got {type(value).__name__} {value!r:.60}")
    return list(value)


def _check_names(model: nn.Module, names) -> list[str]:
    if not isinstance(model, nn.Module):
        raise TypeError(f"model must be a torch.nn.Module, got {type(model).__name__}")
    if isinstance(names, str):
        names = [names]
    names = _as_list(names, "names", "['3', '7'] (the layers' names in model.named_modules())")
    if not names:
        raise ValueError("names is empty: pass the names of the layers to read, e.g. ['3', '7'] "
                         "(see [n for n, _ in model.named_modules()])")
    for n in names:
        if not isinstance(n, str):
            raise TypeError(f"layer names must be strings, got {n!r} ({type(n).__name__})")
    if len(set(names)) != len(names):
        raise ValueError(f"layer names must be distinct, got {names}")
    known = dict(model.named_modules())
    for n in names:
        if n not in known or n == "":
            shown = [k for k in known if k][:30]
            more = ", ..." if len(known) > 31 else ""
            raise ValueError(f"{type(model).__name__} has no layer named {n!r}; its layers are: "
                             f"{', '.join(shown)}{more}")
    return names


@contextlib.contextmanager
def capture(model: nn.Module, names, *, detach: bool = False) -> Iterator[dict]:
    """Record the outputs of the named layers of `model` while the block runs.

        with capture(student, ["3", "7"]) as feats:
            logits = student(X)
        feats["3"].shape  # (B, 8, 14, 14)

    A forward hook on each named module (a name from `model.named_modules()`)
    stores its output in the dict at every forward pass, replacing the
    previous one (a module called twice in one pass keeps its last output).
    The hooks are removed when the block ends, also when it raises, so the
    model is left exactly as it was. The stored tensors keep their autograd
    graph unless `detach=True`. A layer whose output is later changed in
    place (e.g. followed by `ReLU(inplace=True)`) would be recorded after
    that change: hook the in-place layer itself instead.

    Args:
        model: any `nn.Module`.
        names: a layer name or a sequence of distinct names.
        detach: store `output.detach()` (for a teacher's features).
    Yields:
        dict name -> output of that layer in the latest forward pass.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    names = _check_names(model, names)
    modules = dict(model.named_modules())
    feats: dict = {}
    handles = []

    def make_hook(name):
        def hook(module, inputs, output):
            feats[name] = output.detach() if detach and isinstance(output, torch.Tensor) else output
        return hook

    try:
        for n in names:
            handles.append(modules[n].register_forward_hook(make_hook(n)))
        yield feats
    finally:
        for h in handles:
            h.remove()


def _collect(feats: dict, names: list[str]) -> list:
    missing = [n for n in names if n not in feats]
    if missing:
        raise ValueError(f"layers {missing} did not run in the forward pass, so their outputs could not "
                         "be read; choose layers that the model's forward actually calls")
    return [feats[n] for n in names]


@torch.no_grad()
def feature_shapes(model: nn.Module, names, input_shape) -> dict[str, tuple]:
    """The output shape (without the batch dimension) of each named layer for
    one input of `input_shape` (C, H, W); the model is run in eval mode and
    every module is left in the mode it was in.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    names = _check_names(model, names)
    if (not isinstance(input_shape, (tuple, list)) or
            not all(isinstance(s, int) and s > 0 for s in input_shape)):
        raise ValueError(f"input_shape must be a tuple of positive ints such as (1, 28, 28), got {input_shape!r}")
    modes = {m: m.training for m in model.modules()}
    model.eval()
    try:
        device = next(iter(model.parameters()), torch.zeros(())).device
        with capture(model, names) as feats:
            try:
                model(torch.zeros(1, *input_shape, device=device))
            except (RuntimeError, ValueError, IndexError) as err:
                raise ValueError(f"{type(model).__name__} cannot run on an input of input_shape "
                                 f"{tuple(input_shape)} ({str(err).splitlines()[0]}); pass the (C, H, W) "
                                 "shape the model was built for") from None
        return {n: tuple(f.shape[1:]) for n, f in zip(names, _collect(feats, names))}
    finally:
        for m, training in modes.items():
            m.training = training


# ----------------------------------------------------------------------------- input checks


def _check_feature(name: str, x, ndim: int | None = None, min_ndim: int | None = None) -> torch.Tensor:
    if not isinstance(x, torch.Tensor):
        raise TypeError(f"{name} must be a torch.Tensor, got {type(x).__name__}")
    if not x.is_floating_point():
        raise TypeError(f"{name} must be a floating-point tensor, got dtype {x.dtype}")
    if ndim is not None and x.ndim != ndim:
        what = {4: "(B, C, H, W) feature maps", 2: "(B, D) embeddings"}.get(ndim, f"{ndim}-d")
        raise ValueError(f"{name} must be {what}, got shape {tuple(x.shape)}")
    if min_ndim is not None and x.ndim < min_ndim:
        raise ValueError(f"{name} must have a batch dimension and at least one feature dimension, "
                         f"got shape {tuple(x.shape)}")
    if x.shape[0] == 0:
        raise ValueError(f"{name} is an empty batch; pass at least one example")
    if not torch.isfinite(x).all():
        raise ValueError(f"{name} contains NaN or inf; check the model's inputs and learning rate")
    return x


def _check_same_batch(a: torch.Tensor, b: torch.Tensor, what: str = "student and teacher features") -> None:
    if a.shape[0] != b.shape[0]:
        raise ValueError(f"{what} have different batch sizes ({a.shape[0]} and {b.shape[0]}); "
                         "they must come from the same batch of inputs")


# ----------------------------------------------------------------------------- FitNets


def hint_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, regressor: nn.Module) -> torch.Tensor:
    """The FitNets hint loss of Romero et al. (2015), arXiv:1412.6550.

        L_hint = mean over (b, c, h, w) of ( r(s)_bchw - t_bchw )^2

    where s is the student's "guided" layer output, t the teacher's "hint"
    layer output, and r a learned regressor (here a 1x1 convolution from the
    student's channels to the teacher's) trained together with the student.
    The paper writes 1/2 ||t - r(s)||^2 summed over elements; averaging
    instead only rescales the loss weight.

    Args:
        student_feat: (B, C_s, H, W).
        teacher_feat: (B, C_t, H, W), treated as a constant (no gradient).
        regressor: maps (B, C_s, H, W) to (B, C_t, H, W), e.g. `hint_regressor(C_s, C_t)`.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    _check_feature("student_feat", student_feat, ndim=4)
    _check_feature("teacher_feat", teacher_feat, ndim=4)
    _check_same_batch(student_feat, teacher_feat)
    if not isinstance(regressor, nn.Module):
        raise TypeError("regressor must be an nn.Module (e.g. hint_regressor(C_s, C_t)), "
                        f"got {type(regressor).__name__}")
    try:
        mapped = regressor(student_feat)
    except RuntimeError as err:
        raise ValueError(f"the regressor could not take student_feat of shape {tuple(student_feat.shape)} "
                         f"({str(err).splitlines()[0]}); build it with hint_regressor({student_feat.shape[1]}, "
                         f"{teacher_feat.shape[1]})") from None
    if mapped.shape != teacher_feat.shape:
        raise ValueError(f"the regressor maps the student's features to shape {tuple(mapped.shape)}, but the "
                         f"teacher's are {tuple(teacher_feat.shape)}: pair layers with the same height and width "
                         "and build the regressor with "
                         f"hint_regressor({student_feat.shape[1]}, {teacher_feat.shape[1]})")
    return F.mse_loss(mapped, teacher_feat.detach())


def hint_regressor(student_channels: int, teacher_channels: int) -> nn.Conv2d:
    """The FitNets regressor: a 1x1 convolution (B, C_s, H, W) -> (B, C_t, H, W).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    for k, v in (("student_channels", student_channels), ("teacher_channels", teacher_channels)):
        if isinstance(v, bool) or not isinstance(v, int) or v < 1:
            raise ValueError(f"{k} must be a positive int, got {v!r}")
    return nn.Conv2d(student_channels, teacher_channels, kernel_size=1)


class FitNetsHint(nn.Module):
    """One hint regressor per (student layer, teacher layer) pair; calling it
    sums `hint_loss` over the pairs. Its parameters are trained with the
    student when passed as `feature_loss` to `distill_features`.

    Args:
        student_channels, teacher_channels: channel counts of each pair, in order.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """

    def __init__(self, student_channels: Sequence[int], teacher_channels: Sequence[int]):
        super().__init__()
        student_channels = _as_list(student_channels, "student_channels", "[16, 32]: one count per layer pair")
        teacher_channels = _as_list(teacher_channels, "teacher_channels", "[32, 64]: one count per layer pair")
        if len(student_channels) != len(teacher_channels) or len(student_channels) == 0:
            raise ValueError(f"need one teacher channel count per student channel count, got "
                             f"{list(student_channels)} and {list(teacher_channels)}")
        self.regressors = nn.ModuleList(hint_regressor(s, t) for s, t in zip(student_channels, teacher_channels))

    def forward(self, student_feats: Sequence[torch.Tensor], teacher_feats: Sequence[torch.Tensor]) -> torch.Tensor:
        _check_pairs(student_feats, teacher_feats, len(self.regressors))
        return sum(hint_loss(s, t, r) for s, t, r in zip(student_feats, teacher_feats, self.regressors))


def _check_pairs(student_feats, teacher_feats, n: int | None = None) -> None:
    if not isinstance(student_feats, (list, tuple)) or not isinstance(teacher_feats, (list, tuple)):
        raise TypeError("student_feats and teacher_feats must be lists of tensors, one per layer pair")
    if len(student_feats) != len(teacher_feats) or (n is not None and len(student_feats) != n):
        raise ValueError(f"got {len(student_feats)} student and {len(teacher_feats)} teacher feature maps"
                         + (f" for {n} layer pairs" if n is not None else "") + "; pass one per pair")


# ----------------------------------------------------------------------------- attention transfer


def attention_map(feat: torch.Tensor, p: float = 2.0, size: tuple[int, int] | None = None) -> torch.Tensor:
    """The spatial attention map of Zagoruyko & Komodakis (2017), arXiv:1612.03928.

        Q = vec( mean_c |A_c|^p ),   attention = Q / ||Q||_2

    The mean over channels makes maps of layers with different channel
    counts comparable, and the L2 normalisation makes the map independent of
    the scale of the features. With `size`, the (H, W) map is resized
    bilinearly to `size` before normalising, so that layers of different
    resolutions can be compared.

    Args:
        feat: (B, C, H, W) activations A.
        p: the power (the paper uses p = 2).
        size: optional (H', W') output resolution.
    Returns:
        (B, H*W) (or (B, H'*W')) maps, each of unit L2 norm (zero maps stay zero).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    _check_feature("feat", feat, ndim=4)
    if 0 in feat.shape:
        raise ValueError(f"feat has an empty dimension, shape {tuple(feat.shape)}; an attention map needs "
                         "at least one channel and one position")
    if isinstance(p, bool) or not isinstance(p, (int, float)) or not p > 0:
        raise ValueError(f"p must be a positive number (the paper uses 2), got {p!r}")
    if size is not None:
        if (not isinstance(size, (tuple, list)) or len(size) != 2
                or not all(isinstance(v, int) and not isinstance(v, bool) and v > 0 for v in size)):
            raise ValueError(f"size must be None or (height, width), two positive ints; got {size!r}")
    q = feat.abs().pow(p).mean(dim=1, keepdim=True)  # (B, 1, H, W)
    if not torch.isfinite(q).all():
        raise ValueError(f"|feat|^p overflows {feat.dtype} (the largest |feat| is "
                         f"{feat.detach().abs().max().item():.3g}, p = {p:g}): use a smaller p (the paper "
                         "uses 2), or features of a smaller scale")
    if size is not None and tuple(size) != tuple(q.shape[-2:]):
        q = F.interpolate(q, size=tuple(size), mode="bilinear", align_corners=False)
    return F.normalize(q.flatten(1), p=2, dim=1)


def attention_loss(student_feat: torch.Tensor, teacher_feat: torch.Tensor, p: float = 2.0) -> torch.Tensor:
    """Attention transfer loss of Zagoruyko & Komodakis (2017), arXiv:1612.03928.

        L_AT = mean over (b, i) of ( Q_s/||Q_s||_2 - Q_t/||Q_t||_2 )_bi^2

    with Q = vec(mean_c |A_c|^p) (see `attention_map`). This is the
    squared-distance form of the authors' code (averaged over the batch and
    the H*W positions), which weights it by beta = 1000 per layer pair.
    If the two maps have different resolutions, the smaller one is resized
    bilinearly to the larger. The channel counts may differ.

    Args:
        student_feat: (B, C_s, H_s, W_s).
        teacher_feat: (B, C_t, H_t, W_t), treated as a constant.
        p: the power of the map.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    _check_feature("student_feat", student_feat, ndim=4)
    _check_feature("teacher_feat", teacher_feat, ndim=4)
    _check_same_batch(student_feat, teacher_feat)
    hs, ws = student_feat.shape[-2:]
    ht, wt = teacher_feat.shape[-2:]
    size = (max(hs, ht), max(ws, wt))
    a_s = attention_map(student_feat, p, size)
    a_t = attention_map(teacher_feat.detach(), p, size)
    return (a_s - a_t).pow(2).mean()


# ----------------------------------------------------------------------------- relational KD


def _embeddings(name: str, e: torch.Tensor) -> torch.Tensor:
    _check_feature(name, e, min_ndim=2)
    if e.shape[0] < 2:
        raise ValueError(f"{name} has a batch of {e.shape[0]}; relations need at least 2 examples "
                         "(3 for angles), so use a batch size of 3 or more")
    return e.flatten(1)


def _check_eps(eps) -> float:
    if isinstance(eps, bool) or not isinstance(eps, (int, float)) or not 0 < eps <= 1:
        raise ValueError(f"eps must be a small positive number (the default is 1e-12), got {eps!r}")
    return float(eps)


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
    """Pairwise distances (B, B) of the rows of `e` (B, D), with a zero diagonal, and
    a (B, B) mask of the pairs that are distinct points (i != j and distance > eps).

    Computed from the Gram matrix of the centred rows, ||e_i - e_j||^2 =
    G_ii + G_jj - 2 G_ij, so it costs O(B^2 D); a pair at distance 0 gets a
    zero (not an infinite) gradient."""
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

    Dividing by the mean distance makes them independent of the scale of
    the embedding space; distances do not change under rotations and shifts.

    Args:
        e: (B, D) embeddings (extra dimensions are flattened).
    Returns:
        (B*(B-1)/2,) potentials of the pairs i < j, row by row (the order of
        `torch.triu_indices(B, B, 1)`).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    e = _embeddings("e", e)
    eps = _check_eps(eps)
    D, _ = _distances(e, eps)
    upper = torch.ones_like(D, dtype=torch.bool).triu(1)
    d = D[upper]
    return d / d.mean().clamp_min(eps)


def _angle_cube(e: torch.Tensor, eps: float = 1e-12) -> tuple[torch.Tensor, torch.Tensor]:
    """cos[j, i, k] of the angle at e_j between e_i and e_k, (B, B, B), and the mask
    of the triplets where it is defined (i, j, k distinct and e_i, e_k != e_j)."""
    B = e.shape[0]
    e, G = _gram(e)                                                                       # (B, B)
    dots = G.unsqueeze(0) - G.unsqueeze(2) - G.unsqueeze(1) + G.diagonal().view(B, 1, 1)  # dots[j, i, k]
    D, ok = _distances(e, eps)
    inv = torch.where(ok, 1 / torch.where(ok, D, torch.ones_like(D)), torch.zeros_like(D))  # 0 where undefined
    cos = dots * inv.unsqueeze(2) * inv.unsqueeze(1)                                      # (B, B, B)
    valid = ok.unsqueeze(2) & ok.unsqueeze(1)                                             # e_i != e_j, e_k != e_j
    valid &= ~torch.eye(B, dtype=torch.bool, device=e.device).unsqueeze(0)                # i != k
    return cos, valid


def angle_potentials(e: torch.Tensor, eps: float = 1e-12) -> torch.Tensor:
    """RKD angle potentials of Park et al. (2019), arXiv:1904.05068.

        psi_A(e_i, e_j, e_k) = < (e_i - e_j)/||e_i - e_j||, (e_k - e_j)/||e_k - e_j|| >

    the cosine of the angle at e_j in the triangle (e_i, e_j, e_k), for all
    triplets of distinct examples. Angles do not change under rotations,
    shifts or scaling of the embedding space.

    The B^3 dot products come from the Gram matrix G = e e^T of the centred
    embeddings, <e_i - e_j, e_k - e_j> = G_ik - G_ij - G_jk + G_jj, which
    costs O(B^2 D + B^3) instead of the O(B^3 D) of forming every difference.
    A triplet in which e_i or e_k equals e_j has no angle: its cosine is 0.

    Args:
        e: (B, D) embeddings, B >= 3 (extra dimensions are flattened).
    Returns:
        (B*(B-1)*(B-2),) cosines, ordered by (j, i, k).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    e = _embeddings("e", e)
    eps = _check_eps(eps)
    B = e.shape[0]
    if B < 3:
        raise ValueError(f"angles need triplets: the batch has {B} examples, use at least 3")
    cos, _ = _angle_cube(e, eps)
    eye = torch.eye(B, dtype=torch.bool, device=e.device)
    distinct = ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))  # j != i, j != k, i != k
    return cos[distinct]


def _check_pair_of_embeddings(student_emb, teacher_emb) -> None:
    _check_feature("student_emb", student_emb, min_ndim=2)
    _check_feature("teacher_emb", teacher_emb, min_ndim=2)
    _check_same_batch(student_emb, teacher_emb, "student_emb and teacher_emb")


def rkd_distance_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """RKD-D: Huber loss between the student's and the teacher's distance potentials.

        L_D = mean over pairs of huber( psi_D(s_i, s_j), psi_D(t_i, t_j) )   (Huber with delta = 1)

    Park et al. (2019), arXiv:1904.05068. The embeddings may have different
    widths: only relations between examples are compared.

    Args:
        student_emb: (B, D_s); teacher_emb: (B, D_t), treated as a constant.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    _check_pair_of_embeddings(student_emb, teacher_emb)
    with torch.no_grad():
        t = distance_potentials(teacher_emb)
    return F.smooth_l1_loss(distance_potentials(student_emb), t)


def rkd_angle_loss(student_emb: torch.Tensor, teacher_emb: torch.Tensor) -> torch.Tensor:
    """RKD-A: Huber loss between the student's and the teacher's angle potentials.

        L_A = mean over triplets of distinct examples of huber( psi_A(s_i, s_j, s_k), psi_A(t_i, t_j, t_k) )

    Park et al. (2019), arXiv:1904.05068. Computed on the (B, B, B) cube of
    cosines with a mask, which is faster than gathering the triplets.

    Args:
        student_emb: (B, D_s); teacher_emb: (B, D_t), treated as a constant; B >= 3.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    _check_pair_of_embeddings(student_emb, teacher_emb)
    s, t = _embeddings("student_emb", student_emb), _embeddings("teacher_emb", teacher_emb)
    B = s.shape[0]
    if B < 3:
        raise ValueError(f"angles need triplets: the batch has {B} examples, use at least 3")
    with torch.no_grad():
        cos_t, _ = _angle_cube(t.detach())
    cos_s, _ = _angle_cube(s)
    eye = torch.eye(B, dtype=torch.bool, device=s.device)
    distinct = ~(eye.unsqueeze(2) | eye.unsqueeze(1) | eye.unsqueeze(0))
    huber = F.smooth_l1_loss(cos_s, cos_t, reduction="none")
    return (huber * distinct).sum() / (B * (B - 1) * (B - 2))


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
    for k, v in (("w_distance", w_distance), ("w_angle", w_angle)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or v < 0:
            raise ValueError(f"{k} must be a number >= 0, got {v!r}")
    return w_distance * rkd_distance_loss(student_emb, teacher_emb) + w_angle * rkd_angle_loss(student_emb, teacher_emb)


# ----------------------------------------------------------------------------- decoupled KD


def _check_labels(labels, B: int, K: int) -> torch.Tensor:
    if not isinstance(labels, torch.Tensor) or labels.dtype not in (torch.int64, torch.int32):
        raise TypeError("labels must be an integer tensor of class indices (B,)")
    if labels.shape != (B,):
        raise ValueError(f"labels must have shape ({B},), got {tuple(labels.shape)}")
    if labels.min() < 0 or labels.max() >= K:
        raise ValueError(f"labels must lie in 0..{K - 1}, got values from {int(labels.min())} to {int(labels.max())}")
    return labels.long()


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
    check_logits("student_logits", student_logits)
    check_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (batch, num_classes)")
    T = check_temperature(T)
    if T * T > torch.finfo(student_logits.dtype).max:
        raise ValueError(f"T={T:g} is so large that T^2 overflows {student_logits.dtype}; "
                         "the book uses T between 1 and 20")
    _check_scale("student_logits", student_logits, T)
    _check_scale("teacher_logits", teacher_logits, T)
    labels = _check_labels(labels, *student_logits.shape)
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
    (1 - p^T_target), which shrinks it exactly when the teacher is
    confident; DKD gives it a fixed weight beta instead. The paper adds the
    cross-entropy on the labels and uses alpha = 1, beta = 8 on CIFAR-100.

    Args:
        student_logits, teacher_logits: (B, K); labels: (B,) class indices.
        alpha, beta: weights >= 0 of TCKD and NCKD; T: temperature.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    for k, v in (("alpha", alpha), ("beta", beta)):
        if isinstance(v, bool) or not isinstance(v, (int, float)) or not 0 <= v < math.inf:
            raise ValueError(f"{k} must be a finite number >= 0, got {v!r}")
    tckd, nckd, _ = dkd_terms(student_logits, teacher_logits, labels, T)
    return (alpha * tckd + beta * nckd).mean()


# ----------------------------------------------------------------------------- training with a feature term


class _StudentAndLoss(nn.Module):
    """The student plus the feature loss's own parameters (e.g. FitNets
    regressors), so that one optimiser trains both; forward is the student's."""

    def __init__(self, student: nn.Module, feature_loss):
        super().__init__()
        self.student = student
        self.feature_loss = feature_loss if isinstance(feature_loss, nn.Module) else None

    def forward(self, X):
        return self.student(X)


class _Replay(nn.Module):
    """Stands in for a cached teacher in `kdlib.guards.preflight`: returns the
    teacher's cached logits of the probe batch instead of running the teacher again."""

    def __init__(self, logits: torch.Tensor):
        super().__init__()
        self.logits = logits

    def forward(self, X):
        return self.logits


class TeacherOutputs(TensorDataset):
    """A training set with a teacher's outputs cached beside each example:
    items are (X, y, teacher_logits, *features), one feature per name in
    `.layers`. Made by `cache_teacher_outputs`; `.teacher` is the teacher it
    came from (held weakly, None once that teacher is gone).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """

    def __init__(self, X, y, teacher_logits, features, layers, teacher: nn.Module):
        if not isinstance(teacher, nn.Module):
            raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
        features = _as_list(features, "features", "[feats_of_layer_3]: one tensor per cached layer")
        layers = _as_list(layers, "layers", "['3']: one name per cached feature tensor")
        if len(features) != len(layers) or not all(isinstance(n, str) for n in layers):
            raise ValueError(f"need one layer name (a string) per feature tensor, got {len(layers)} names "
                             f"for {len(features)} tensors")
        tensors = {"X": X, "y": y, "teacher_logits": teacher_logits,
                   **{f"features[{i}]": f for i, f in enumerate(features)}}
        for name, t in tensors.items():
            if not isinstance(t, torch.Tensor) or t.ndim == 0:
                got = "a 0-d tensor" if isinstance(t, torch.Tensor) else type(t).__name__
                raise TypeError(f"{name} must be a tensor with one row per example, got {got}")
        if teacher_logits.ndim != 2:
            raise ValueError(f"teacher_logits must be (N, num_classes), got shape {tuple(teacher_logits.shape)}")
        sizes = {name: t.shape[0] for name, t in tensors.items()}
        if len(set(sizes.values())) != 1 or X.shape[0] == 0:
            raise ValueError(f"every tensor needs the same number of rows (examples), at least one; got {sizes}")
        super().__init__(X, y, teacher_logits, *features)
        self.layers = tuple(layers)
        self._teacher = weakref.ref(teacher)

    @property
    def teacher(self) -> nn.Module | None:
        return self._teacher()

    def __getitems__(self, indices: list) -> list[torch.Tensor]:
        """A whole batch in one indexing per tensor (the DataLoader's fast path);
        `_stacked` then passes it through instead of collating item by item."""
        index = torch.as_tensor(indices, dtype=torch.long)
        return [t[index] for t in self.tensors]

    def __repr__(self) -> str:
        return f"TeacherOutputs(n={len(self)}, layers={list(self.layers)})"


@torch.no_grad()
def cache_teacher_outputs(teacher: nn.Module, train_loader: DataLoader, layers: Sequence[str] = (),
                          *, device=None) -> DataLoader:
    """Run the teacher once over the training set and return a loader that yields
    (X, y, teacher_logits, *teacher_features) with the same batch size and shuffle.

    Pass that loader to `distill_features` (for any subset of `layers`) to
    skip the teacher's forward pass in every epoch of every run. Valid only
    without data augmentation (the cached outputs belong to the original
    images). Memory: N times the size of each cached feature map.

    Args:
        teacher: the teacher (put in eval mode).
        train_loader: yields (X, y) batches.
        layers: names of the teacher layers whose outputs to cache.
    Returns:
        a DataLoader over a `TeacherOutputs` data set: X (B, C, H, W), y (B,),
        teacher_logits (B, K), then one tensor per layer.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    _check_loader(train_loader)
    if isinstance(train_loader.dataset, TeacherOutputs):
        raise ValueError("train_loader already holds cached teacher outputs; pass the original (X, y) loader")
    device = get_device(device)
    layers = _as_list(layers, "layers", "['3', '7'] (names in teacher.named_modules())")
    if layers:
        _check_names(teacher, layers)
    X, y = as_tensors(train_loader.dataset)
    teacher.eval().to(device)
    outs: list[list[torch.Tensor]] = [[] for _ in range(1 + len(layers))]
    hooks = capture(teacher, layers, detach=True) if layers else contextlib.nullcontext({})
    with hooks as feats:
        for start in range(0, len(X), 256):
            logits = run_model(teacher, X[start:start + 256].to(device), "teacher")
            for lst, t in zip(outs, [logits, *_collect(feats, layers)]):
                lst.append(t.float().cpu())
    outs = [torch.cat(o) for o in outs]
    cached = TeacherOutputs(X, y, outs[0], outs[1:], layers, teacher)
    shuffle = isinstance(train_loader.sampler, RandomSampler)
    return DataLoader(cached, batch_size=train_loader.batch_size, shuffle=shuffle, collate_fn=_stacked,
                      generator=train_loader.generator if shuffle else None)


def _stacked(batch: list) -> list:
    """The collate function of a `TeacherOutputs` loader: its batches come already stacked."""
    return batch


def _check_cache(cache: TeacherOutputs, teacher: nn.Module, layers: list[str]) -> None:
    if cache.teacher is not teacher:
        raise ValueError("train_loader holds the cached outputs of a different teacher; cache this teacher's "
                         "with cache_teacher_outputs(teacher, loader, layers), or pass the plain (X, y) loader")
    missing = [n for n in layers if n not in cache.layers]
    if missing:
        raise ValueError(f"train_loader caches the teacher layers {list(cache.layers)}, not {missing}; "
                         f"cache them with cache_teacher_outputs(teacher, loader, {layers})")


def distill_features(student: nn.Module, teacher: nn.Module, train_loader: DataLoader,
                     feature_loss: Callable | None = None, *, student_layers: Sequence[str] = (),
                     teacher_layers: Sequence[str] = (), beta: float = 1.0, T: float = 4.0, alpha: float = 0.9,
                     logit_loss: Callable | None = None, num_epochs: int = 10, lr: float = 1e-3,
                     weight_decay: float = 0.0, schedule: str = "cosine", cache_teacher: bool = True,
                     val_loader: DataLoader | None = None, device=None, progress: bool = True,
                     seed: int | None = None) -> History:
    """Distil with a logit term and a feature term:

        L = logit_loss(z_s, z_t, y) + beta * feature_loss([s_1, ..., s_n], [t_1, ..., t_n])

    where s_i is the output of `student_layers[i]` and t_i of
    `teacher_layers[i]`, read with `capture`. `logit_loss` defaults to
    `kdlib.losses.kd_loss(z_s, z_t, y, T=T, alpha=alpha)` (alpha=0 gives
    plain cross-entropy; a label of -1 means "soft targets only", as in
    `kdlib.train.distill`). If `feature_loss` is an `nn.Module` (e.g. `FitNetsHint`),
    its parameters are trained together with the student. It is the loop of
    `kdlib.train.distill` (AdamW, cosine schedule, same seeding), so with no
    feature term it gives the same student as `distill`.

    Args:
        student, teacher: map (B, C, H, W) to (B, K) logits; the teacher is never changed.
        train_loader: yields (X, y) batches, no augmentation.
        feature_loss: (list of student features, list of teacher features) -> scalar, or None.
        student_layers, teacher_layers: the layer names paired with each other, same length.
        beta: weight of the feature term.
        T, alpha: passed to the default `kd_loss`.
        logit_loss: (student_logits, teacher_logits, y) -> scalar, replacing `kd_loss`
            (e.g. cross-entropy plus `dkd_loss`).
        cache_teacher: compute the teacher's logits and features once for the whole
            training set (`cache_teacher_outputs`); False runs the teacher on every batch.
            A loader made by `cache_teacher_outputs` is used as it is (its cache is
            shared by every run that gets it).
        the rest: as in `kdlib.train.distill`.
    Returns:
        a `History`; the student is left in eval mode.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    _check_common(student, num_epochs, lr, "student")
    if not isinstance(teacher, nn.Module):
        raise TypeError(f"teacher must be a torch.nn.Module, got {type(teacher).__name__}")
    if teacher is student:
        raise ValueError("teacher and student are the same object; distil from a separate, trained teacher")
    _check_loader(train_loader)
    s_layers = _as_list(student_layers, "student_layers", "['3'] (names in student.named_modules())")
    t_layers = _as_list(teacher_layers, "teacher_layers", "['7'] (names in teacher.named_modules())")
    if len(s_layers) != len(t_layers):
        raise ValueError(f"student_layers {s_layers} and teacher_layers {t_layers} must pair up one to one")
    if feature_loss is not None and not callable(feature_loss):
        raise TypeError(f"feature_loss must be callable (student_feats, teacher_feats) -> loss, "
                        f"got {type(feature_loss).__name__}")
    if (feature_loss is None) != (not s_layers):
        raise ValueError("feature_loss and the layer names go together: give both (a loss and the layers "
                         "it reads) or neither")
    if s_layers:
        _check_names(student, s_layers)
        _check_names(teacher, t_layers)
    if isinstance(beta, bool) or not isinstance(beta, (int, float)) or beta < 0:
        raise ValueError(f"beta must be a number >= 0, got {beta!r}")
    if logit_loss is None:
        check_temperature(T)
        if isinstance(alpha, bool) or not isinstance(alpha, (int, float)) or not 0 <= alpha <= 1:
            raise ValueError(f"alpha must be a number in [0, 1], got {alpha!r}")

        def logit_loss(z_s, z_t, y):
            return kd_loss_partial(z_s, z_t, y, T=T, alpha=alpha)
    elif not callable(logit_loss):
        raise TypeError(f"logit_loss must be callable (student_logits, teacher_logits, y) -> loss, "
                        f"got {type(logit_loss).__name__}")
    warn_if_train_mode(teacher)
    device = get_device(device)
    teacher.eval().to(device)
    model = _StudentAndLoss(student, feature_loss).to(device)
    probe = [t.to(device) for t in probe_batch(train_loader.dataset)]
    loader, cached = train_loader, isinstance(train_loader.dataset, TeacherOutputs)
    if cached:
        _check_cache(train_loader.dataset, teacher, t_layers)
    preflight(student, _Replay(probe[2]) if cached else teacher, probe)
    _reseed(train_loader, seed)
    if not cached and cache_teacher:
        loader, cached = cache_teacher_outputs(teacher, train_loader, t_layers, device=device), True
        _reseed(loader, seed)
    where = [3 + loader.dataset.layers.index(n) for n in t_layers] if cached else []

    with contextlib.ExitStack() as stack:
        s_feats = stack.enter_context(capture(student, s_layers)) if s_layers else {}
        live = t_layers and not cached  # the teacher runs on every batch only without a cache
        t_feats = stack.enter_context(capture(teacher, t_layers, detach=True)) if live else {}

        def batch_loss(m, batch):
            X, y = batch[0], batch[1]
            s_feats.clear()  # a layer that did not run in this pass must not leave a stale output
            t_feats.clear()
            if cached:
                z_t, t_list = batch[2], [batch[k] for k in where]
            else:
                with torch.no_grad():
                    z_t = teacher(X)
                t_list = _collect(t_feats, t_layers)
            z_s = m(X)
            loss = logit_loss(z_s, z_t, y)
            if feature_loss is not None:
                loss = loss + beta * feature_loss(_collect(s_feats, s_layers), t_list)
            return loss

        return _fit(model, loader, batch_loss, num_epochs=num_epochs, lr=lr, weight_decay=weight_decay,
                    schedule=schedule, val_loader=val_loader, device=device, progress=progress,
                    desc="distill_features")


# ----------------------------------------------------------------------------- teacher chains


def _xy_loader(train_loader: DataLoader) -> DataLoader:
    """The plain (X, y) loader behind a loader of cached teacher outputs (same
    batches, same shuffle); any other loader is returned as it is. A chain has a
    different teacher at each step, so one teacher's cache must not reach the others."""
    _check_loader(train_loader)
    ds = train_loader.dataset
    if isinstance(ds, (TeacherOutputs, _TensorsWithLogits)):
        base = TensorDataset(*ds.tensors[:2])
    elif isinstance(ds, _WithLogits):
        base = ds.dataset
    else:
        return train_loader
    shuffle = isinstance(train_loader.sampler, RandomSampler)
    return DataLoader(base, batch_size=train_loader.batch_size, shuffle=shuffle,
                      generator=train_loader.generator if shuffle else None)


def teacher_assistant_chain(teacher: nn.Module, assistants: Sequence[nn.Module], student: nn.Module,
                            train_loader: DataLoader, **distill_kwargs) -> list[History]:
    """Teacher-assistant KD of Mirzadeh et al. (2020), arXiv:1902.03393.

        teacher -> assistant_1 -> ... -> assistant_n -> student

    Each model is distilled from the one before it with the KD loss, so that
    no step crosses too large a gap in size; every step is
    `distill_features(small, big, ...)` without a feature term, which is
    `kdlib.train.distill`. The assistants and the student are trained in place.

    Args:
        teacher: the trained teacher.
        assistants: intermediate models, largest first (at least one).
        student: the final student.
        train_loader: yields (X, y) batches; it may be a loader from
            `cache_teacher_outputs(teacher, ...)`, whose cache then serves the first
            step only (the later steps cache their own teacher's logits).
        distill_kwargs: passed to every step (T, alpha, num_epochs, lr, seed, ...).
    Returns:
        one `History` per step (len(assistants) + 1).

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    plain = _xy_loader(train_loader)
    if isinstance(assistants, nn.Module) and not isinstance(assistants, nn.ModuleList):
        raise TypeError("assistants must be a list of models; put a single assistant in a list: [assistant]")
    assistants = _as_list(assistants, "assistants", "[assistant]: intermediate models, largest first")
    if not assistants:
        raise ValueError("assistants is empty: pass at least one intermediate model (or call distill directly)")
    chain = [teacher, *assistants, student]
    if len({id(m) for m in chain}) != len(chain):
        raise ValueError("the teacher, assistants and student must be different model objects")
    histories = []
    for big, small in zip(chain, chain[1:]):
        own_cache = isinstance(train_loader.dataset, TeacherOutputs) and train_loader.dataset.teacher is big
        histories.append(distill_features(small, big, train_loader if own_cache else plain, **distill_kwargs))
    return histories


def born_again(make_model: Callable[[], nn.Module], train_loader: DataLoader, *, generations: int = 1,
               first: nn.Module | None = None, train_kwargs: dict | None = None,
               **distill_kwargs) -> tuple[list[nn.Module], list[History]]:
    """Born-again networks of Furlanello et al. (2018), arXiv:1805.04770.

    Generation 0 is trained on the labels; generation g + 1, a fresh model of
    the *same* architecture, is distilled from generation g. No bigger
    teacher is needed.

    Args:
        make_model: builds a fresh model (called once per generation).
        train_loader: yields (X, y) batches (cached teacher outputs in it are ignored).
        generations: how many distilled generations after generation 0 (>= 1).
        first: an already trained generation 0 to start from (then it is not retrained).
        train_kwargs: passed to `kdlib.train.train` for generation 0.
        distill_kwargs: passed to `distill_features` (without a feature term, that is
            `kdlib.train.distill`) for the later generations: T, alpha, num_epochs, lr, seed, ...
    Returns:
        (models, histories): generations + 1 models (generation 0 first) and the
        histories of the runs that happened.

    Introduced in: notebooks/07_beyond_logits.ipynb
    """
    if isinstance(make_model, nn.Module) or not callable(make_model):
        raise TypeError("make_model must be a function that builds a fresh model, e.g. lambda: StudentCNN(width=8)")
    if isinstance(generations, bool) or not isinstance(generations, int) or generations < 1:
        raise ValueError(f"generations must be a positive int, got {generations!r}")
    if train_kwargs is not None and not isinstance(train_kwargs, dict):
        raise TypeError(f"train_kwargs must be a dict of arguments for kdlib.train.train, e.g. "
                        f"dict(num_epochs=5), got {type(train_kwargs).__name__}")
    for fn, kwargs, what in ((train, train_kwargs or {}, "train_kwargs"),
                             (distill_features, distill_kwargs, "the keyword arguments for the distilled generations")):
        known = set(inspect.signature(fn).parameters) - {"model", "student", "teacher", "train_loader"}
        unknown = sorted(k for k in kwargs if k not in known)
        if unknown:
            raise TypeError(f"{what} hold {unknown}, which kdlib.{fn.__module__.split('.')[-1]}.{fn.__name__} "
                            f"does not take; it takes {sorted(known)}")
    train_loader = _xy_loader(train_loader)  # each generation has its own teacher
    histories = []
    if first is None:
        first = make_model()
        histories.append(train(first, train_loader, **(train_kwargs or {})))
    models = [first]
    for _ in range(generations):
        nxt = make_model()
        if nxt is models[-1]:
            raise ValueError("make_model returned the same object twice; it must build a new model each call")
        histories.append(distill_features(nxt, models[-1], train_loader, **distill_kwargs))
        models.append(nxt)
    return models, histories
