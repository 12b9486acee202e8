"""Distillation losses for language models.

A language model makes one classification per position: the next token, out of a vocabulary of
V. So chapter 3's loss applies position by position, and the shapes gain a time axis:

    student_logits, teacher_logits   (B, T, V)  scores of the next token at every position
    labels, tokens                   (B, T)     the true (or the teacher's) next tokens
    teacher_log_probs, ..._indices   (B, T, k)  a cache of the teacher's k largest log-probabilities

Every loss returns a scalar averaged over the B * T positions. Teacher tensors are treated as
constants (no gradient flows into the teacher).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import check_temperature, kd_loss
from .validation import check_int, check_tensor


def _check_seq_logits(name: str, logits) -> torch.Tensor:
    """`logits` if it is a finite floating (B, T, V) tensor with V >= 2."""
    check_tensor(logits, name, ndim=3, floating=True, shape_hint="(B, T, V): batch, positions, vocabulary")
    if logits.shape[-1] < 2:
        raise ValueError(f"{name} needs a vocabulary of at least 2 tokens, got {logits.shape[-1]}")
    return logits


def _check_pair(student_logits, teacher_logits) -> None:
    _check_seq_logits("student_logits", student_logits)
    _check_seq_logits("teacher_logits", teacher_logits)
    if student_logits.shape != teacher_logits.shape:
        raise ValueError(f"student_logits {tuple(student_logits.shape)} and teacher_logits "
                         f"{tuple(teacher_logits.shape)} must have the same shape (B, T, V): the same windows "
                         "and the same vocabulary (the same tokenizer)")


def token_kd_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, labels: torch.Tensor | None = None,
                  T: float = 1.0, alpha: float = 1.0) -> torch.Tensor:
    """Token-level distillation: chapter 3's loss at every position of every sequence.

        L = alpha * T^2 * (1 / BT) sum_{b,t} KL(p_T(. | x_<=t) || q_T(. | x_<=t))
            + (1 - alpha) * (1 / BT) sum_{b,t} CE(y_{t+1}, q_1(. | x_<=t))

    with p_T = softmax(z_t / T) the teacher's next-token distribution at temperature T and q_T the
    student's. This is the forward KL: it is large wherever the teacher puts mass and the student
    does not, so the student learns to cover every continuation the teacher considers (mode
    covering). Hinton, Vinyals & Dean (2015) applied per token; Kim & Rush (2016) call it
    word-level KD. Equal to `kdlib.losses.kd_loss` on the B * T positions as one batch.

    Args:
        student_logits: (B, T, V).
        teacher_logits: (B, T, V), the teacher on the same windows.
        labels: (B, T) the true next tokens, or None for the soft term alone (then alpha = 1).
        T: temperature > 0 (1 is the usual choice for language models).
        alpha: weight of the soft term, in [0, 1].
    Returns:
        a scalar tensor.

    Introduced in: notebooks/12_language_model.ipynb
    """
    _check_pair(student_logits, teacher_logits)
    V = student_logits.shape[-1]
    if labels is not None:
        check_tensor(labels, "labels", ndim=2, floating=False, shape_hint="(B, T) the next tokens")
        if labels.shape != student_logits.shape[:2]:
            raise ValueError(f"labels must have shape {tuple(student_logits.shape[:2])}, got {tuple(labels.shape)}")
        labels = labels.reshape(-1)
    return kd_loss(student_logits.reshape(-1, V), teacher_logits.reshape(-1, V), labels, T=T, alpha=alpha)


def topk_kd_loss(student_logits: torch.Tensor, teacher_log_probs: torch.Tensor, teacher_indices: torch.Tensor,
                 T: float = 1.0, *, tail: str = "bucket") -> torch.Tensor:
    """Token-level distillation from a cache of the teacher's top-k log-probabilities per position.

    Large-model distillation stores the teacher's outputs once, but V numbers per token are too
    many to keep (V is 32 k to 256 k for LLMs), so only the k largest are stored, with their token
    ids: here log p_T,j = log_softmax(z_t / T)_j for the teacher's k most likely tokens j (see
    `topk_cache` below). What is lost is how the teacher spreads its **tail mass**
    m = 1 - sum_{j in top-k} p_T,j over the other V - k tokens. Two ways to handle it:

    - tail="bucket" (the default): the tail is kept as one outcome. With q_T the student's
      distribution over all V tokens and r = 1 - sum_{j in top-k} q_T,j its mass outside the
      teacher's top k,

          L = T^2 * mean_{b,t} [ sum_{j in top-k} p_T,j log(p_T,j / q_T,j) + m log(m / r) ],

      the exact KL between the two distributions coarsened to k + 1 outcomes (the top k and
      "anything else"): the student learns how much mass the tail holds, not how it is shared.
    - tail="renormalize": the tail is dropped and the top k renormalized,
      p~_j = p_T,j / sum_{i in top-k} p_T,i, and L = T^2 * mean_{b,t} KL(p~ || q_T). The student
      is then taught that the tail has probability 0, so it learns to be over-confident; chapter
      12 measures what that costs.

    With k = V both equal `token_kd_loss` (alpha = 1) exactly.

    Args:
        student_logits: (B, T, V).
        teacher_log_probs: (B, T, k) the teacher's k largest log-probabilities at temperature T
            (any float dtype, e.g. float16).
        teacher_indices: (B, T, k) their token ids (any integer dtype, e.g. uint8 when V <= 256).
        T: the temperature the cache was made at, > 0.
        tail: "bucket" or "renormalize".
    Returns:
        a scalar tensor.

    Introduced in: notebooks/12_language_model.ipynb
    """
    from .validation import check_choice

    _check_seq_logits("student_logits", student_logits)
    check_tensor(teacher_log_probs, "teacher_log_probs", ndim=3, floating=True, shape_hint="(B, T, k)")
    check_tensor(teacher_indices, "teacher_indices", ndim=3, floating=False, shape_hint="(B, T, k)")
    check_choice(tail, "tail", ("bucket", "renormalize"))
    B, L, V = student_logits.shape
    if teacher_log_probs.shape != teacher_indices.shape or teacher_log_probs.shape[:2] != (B, L):
        raise ValueError(f"teacher_log_probs {tuple(teacher_log_probs.shape)} and teacher_indices "
                         f"{tuple(teacher_indices.shape)} must both be (B, T, k) with (B, T) = {(B, L)}")
    if not 1 <= teacher_log_probs.shape[-1] <= V:
        raise ValueError(f"k = {teacher_log_probs.shape[-1]} values per position; it must lie in 1..V = {V}")
    idx = teacher_indices.long()
    if int(idx.min()) < 0 or int(idx.max()) >= V:
        raise ValueError(f"teacher_indices must lie in 0..{V - 1}, got values up to {int(idx.max())}")
    if float(teacher_log_probs.detach().max()) > 1e-3:
        raise ValueError("teacher_log_probs must be log-probabilities (<= 0), e.g. from topk_cache, "
                         "not raw logits")
    T = check_temperature(T)
    log_p = teacher_log_probs.detach().float()                                  # (B, T, k)
    log_q_all = F.log_softmax(student_logits / T, dim=-1)                       # (B, T, V)
    log_q = log_q_all.gather(-1, idx)                                           # (B, T, k)
    if tail == "renormalize":
        log_p = log_p.log_softmax(dim=-1)                                       # top k sum to 1
        return (log_p.exp() * (log_p - log_q)).sum(-1).mean() * T * T
    kl_top = (log_p.exp() * (log_p - log_q)).sum(-1)                            # (B, T)
    if idx.shape[-1] == V:
        return kl_top.mean() * T * T                                            # no tail at all
    m = (1 - log_p.exp().sum(-1)).clamp(min=0)                                  # (B, T) teacher's tail mass
    outside = torch.ones_like(log_q_all, dtype=torch.bool).scatter(-1, idx, False)
    log_r = log_q_all.masked_fill(~outside, float("-inf")).logsumexp(-1)        # (B, T) student's tail, log
    kl_tail = torch.xlogy(m, m) - torch.where(m > 0, m * log_r, torch.zeros_like(m))
    return (kl_top + kl_tail).mean() * T * T


def reverse_kl_loss(student_logits: torch.Tensor, teacher_logits: torch.Tensor, T: float = 1.0) -> torch.Tensor:
    """The reverse KL from the student to the teacher at every position:

        L = T^2 * (1 / BT) sum_{b,t} KL(q_T(. | x_<=t) || p_T(. | x_<=t))
          = T^2 * (1 / BT) sum_{b,t} sum_v q_T,v (log q_T,v - log p_T,v).

    The reverse KL is large where the *student* puts mass and the teacher does not, and costs
    little for continuations the student ignores: it is mode seeking (the student concentrates
    on what the teacher finds most likely, at the price of diversity). Applied on sequences the
    student sampled itself, with the teacher scoring them, it is on-policy distillation: the
    token-level form of generalized KD (Agarwal et al., 2024, GKD, with the reverse KL as the
    divergence); MiniLLM (Gu et al., 2024) minimises the same divergence at the sequence level
    with policy gradients. The samples are data: no gradient flows through the sampling, only
    through q_T at every position.

    Args:
        student_logits: (B, T, V), on the student's own samples for on-policy distillation.
        teacher_logits: (B, T, V), the teacher scoring the same sequences.
        T: temperature > 0.
    Returns:
        a scalar tensor.
    """
    _check_pair(student_logits, teacher_logits)
    T = check_temperature(T)
    log_q = F.log_softmax(student_logits / T, dim=-1)                 # (B, T, V)
    log_p = F.log_softmax(teacher_logits.detach() / T, dim=-1)        # (B, T, V)
    kl = (log_q.exp() * (log_q - log_p)).sum(-1)                      # (B, T)
    return kl.mean() * T * T


def sequence_kd_loss(student_logits: torch.Tensor, teacher_tokens: torch.Tensor) -> torch.Tensor:
    """Sequence-level distillation (Kim & Rush, 2016): the student is trained with the ordinary
    language-model loss on text the *teacher* generated,

        L = -(1 / BT) sum_{b,t} log q(y^_{t+1} | y^_<=t),    y^ ~ p (the teacher's samples).

    Kim & Rush approximate the teacher's most likely sequence with beam search; sampling at
    temperature 1, as here, makes L a Monte-Carlo estimate of the sequence-level forward KL
    from teacher to student (up to the teacher's entropy, a constant). Its cost lies in the
    generation, done once: the training step is as cheap as the student alone's.

    Args:
        student_logits: (B, T, V), the student on the teacher's text y^_1..y^_T.
        teacher_tokens: (B, T), y^_2..y^_{T+1}: the teacher's next tokens.
    Returns:
        a scalar tensor.
    """
    _check_seq_logits("student_logits", student_logits)
    check_tensor(teacher_tokens, "teacher_tokens", ndim=2, floating=False, shape_hint="(B, T) token ids")
    if teacher_tokens.shape != student_logits.shape[:2]:
        raise ValueError(f"teacher_tokens must have shape {tuple(student_logits.shape[:2])}, "
                         f"got {tuple(teacher_tokens.shape)}")
    V = student_logits.shape[-1]
    if int(teacher_tokens.min()) < 0 or int(teacher_tokens.max()) >= V:
        raise ValueError(f"teacher_tokens must lie in 0..{V - 1}")
    return F.cross_entropy(student_logits.reshape(-1, V), teacher_tokens.reshape(-1).long())


@torch.no_grad()
def topk_cache(logits: torch.Tensor, k: int, T: float = 1.0) -> tuple[torch.Tensor, torch.Tensor]:
    """What a top-k cache of the teacher's outputs stores: at every position its k largest
    log-probabilities at temperature T, log_softmax(logits / T), in float16, and their token ids
    in uint8: 3 bytes per kept value instead of 4 per vocabulary entry (what `topk_kd_loss` reads).

    Args:
        logits: (n, T, V) the teacher's logits, V <= 256.
    Returns:
        (log_probs (n, T, k) float16, indices (n, T, k) uint8), most likely first.

    Introduced in: notebooks/12_language_model.ipynb
    """
    check_tensor(logits, "logits", ndim=3, floating=True, shape_hint="(n, T, V)")
    V = logits.shape[-1]
    check_int(k, "k", low=1, high=V)
    if V > 256:
        raise ValueError(f"uint8 token ids hold a vocabulary of at most 256, got V = {V}")
    log_probs, indices = F.log_softmax(logits.float() / check_temperature(T), dim=-1).topk(k, dim=-1)  # (n, T, k)
    return log_probs.half(), indices.to(torch.uint8)
