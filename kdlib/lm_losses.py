"""Distillation losses for language models.

A language model makes one classification per position: the next token, out of a vocabulary of
V. So chapter 3's loss applies position by position, and the shapes gain a time axis:

    student_logits, teacher_logits   (B, T, V)  scores of the next token at every position
    labels, tokens                   (B, T)     the true (or the teacher's) next tokens
    teacher_values, teacher_indices  (B, T, k)  a cache of the teacher's k largest logits per position

Every loss returns a scalar averaged over the B * T positions. Teacher tensors are treated as
constants (no gradient flows into the teacher).
"""
from __future__ import annotations

import torch
import torch.nn.functional as F

from .losses import check_temperature, kd_loss
from .validation import check_tensor


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


def topk_kd_loss(student_logits: torch.Tensor, teacher_values: torch.Tensor, teacher_indices: torch.Tensor,
                 T: float = 1.0) -> torch.Tensor:
    """Token-level distillation from a cache of the teacher's top-k logits per position.

    Large-model distillation stores the teacher's outputs once, but V logits per token are too
    many to keep (V is 32k to 256k for LLMs), so only the k largest are stored, with their token
    ids. The tail mass (the teacher's probability of the V - k tokens outside its top k) is
    **dropped and the top k are renormalized**: the target is

        p~_j = exp(z_j / T) / sum_{i in top-k} exp(z_i / T)     for j in top-k, 0 elsewhere,

    computed from the stored logits alone (so any T works with one cache). The student's
    log-probabilities log q_T stay normalized over the whole vocabulary, so whatever mass the
    student puts outside the teacher's top k lowers log q_T on the top k and is penalized:

        L = T^2 * (1 / BT) sum_{b,t} sum_{j in top-k} p~_j (log p~_j - log q_T,j)  = KL(p~ || q_T).

    With k = V this is `token_kd_loss` (alpha = 1) exactly; with k < V it is the KL to the
    truncated teacher, which differs from the full loss by how much mass the tail held.

    Args:
        student_logits: (B, T, V).
        teacher_values: (B, T, k) the teacher's k largest logits (any float dtype, e.g. float16).
        teacher_indices: (B, T, k) their token ids (any integer dtype, e.g. uint8 when V <= 256).
        T: temperature > 0.
    Returns:
        a scalar tensor.

    Introduced in: notebooks/12_language_model.ipynb
    """
    _check_seq_logits("student_logits", student_logits)
    check_tensor(teacher_values, "teacher_values", ndim=3, floating=True, shape_hint="(B, T, k)")
    check_tensor(teacher_indices, "teacher_indices", ndim=3, floating=False, shape_hint="(B, T, k)")
    B, L, V = student_logits.shape
    if teacher_values.shape != teacher_indices.shape or teacher_values.shape[:2] != (B, L):
        raise ValueError(f"teacher_values {tuple(teacher_values.shape)} and teacher_indices "
                         f"{tuple(teacher_indices.shape)} must both be (B, T, k) with (B, T) = {(B, L)}")
    if not 1 <= teacher_values.shape[-1] <= V:
        raise ValueError(f"k = {teacher_values.shape[-1]} logits per position; it must lie in 1..V = {V}")
    idx = teacher_indices.long()
    if int(idx.min()) < 0 or int(idx.max()) >= V:
        raise ValueError(f"teacher_indices must lie in 0..{V - 1}, got values up to {int(idx.max())}")
    T = check_temperature(T)
    log_p = F.log_softmax(teacher_values.detach().float() / T, dim=-1)         # (B, T, k) renormalized top k
    log_q = F.log_softmax(student_logits / T, dim=-1).gather(-1, idx)           # (B, T, k) over all V
    kl = (log_p.exp() * (log_p - log_q)).sum(-1)                                # (B, T)
    return kl.mean() * T * T


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

    Introduced in: notebooks/12_language_model.ipynb
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

    Introduced in: notebooks/12_language_model.ipynb
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
