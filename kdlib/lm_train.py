"""Training and evaluating the character-level language model of `kdlib.lm`: bits per character,
top-1 agreement, a training loop, and the book's LM teacher (a checksummed checkpoint, retrained
when missing).

    splits = load_splits()
    teacher = load_lm_teacher(splits)                  # kdlib/assets/checkpoints/lm_teacher_shakespeare.pt
    evaluate_lm(teacher, splits.val)["bpc"]            # bits per character on val

    student = load_lm_student(teacher, splits)         # the distilled student that bench/lm_kd.py ships

and the distillation methods of chapter 12, all at equal compute (`distill_lm`): token-level KD
from the full or the top-k teacher logits, sequence-level KD, on-policy distillation with the
reverse KL (the losses themselves are in `kdlib/lm_losses.py`).
"""
from __future__ import annotations

import math
import os
import time
from dataclasses import asdict, dataclass, field
from pathlib import Path
from typing import Callable, Iterable, Iterator

import torch
import torch.nn.functional as F
from torch import nn

from .lm import CharTransformer, CorpusSplits, LMConfig, check_ids_for, load_splits, random_windows, windows
from .utils import asset_path, eval_mode, load_or_train, seed_everything
from .validation import check_callable, check_int, check_model, check_number, check_positive

LN2 = math.log(2.0)


# ---------------------------------------------------------------- evaluation
def bits_per_char(logits: torch.Tensor, targets: torch.Tensor) -> float:
    """Mean cross-entropy of next-character predictions in bits: CE (nats) / ln 2.

    Args:
        logits: (B, T, V) or (N, V) scores.
        targets: (B, T) or (N,) the true next characters.

    Introduced in: notebooks/12_language_model.ipynb
    """
    ce = F.cross_entropy(logits.reshape(-1, logits.shape[-1]).double(), targets.reshape(-1))
    return float(ce) / LN2


@torch.no_grad()
def predict_windows(model: nn.Module, X: torch.Tensor, *, batch_size: int = 64) -> torch.Tensor:
    """The model's logits on every window of X (n, T) -> (n, T, V), in eval mode, in batches.

    Introduced in: notebooks/12_language_model.ipynb
    """
    check_model(model)
    check_ids_for(model, X, "X")
    check_int(batch_size, "batch_size", low=1)
    with eval_mode(model):
        return torch.cat([model(X[i:i + batch_size]) for i in range(0, len(X), batch_size)])


@torch.no_grad()
def evaluate_lm(model: nn.Module, ids: torch.Tensor, *, teacher: nn.Module | None = None,
                max_windows: int | None = None, batch_size: int = 64) -> dict:
    """Score `model` on a stream of ids cut into non-overlapping windows of its context.

    Returns:
        {"loss": mean cross-entropy (nats), "bpc": the same in bits per character,
         "entropy_bits": the mean entropy of the model's predictions in bits (below "bpc": the model
         is more confident than its errors justify),
         "accuracy": how often the most likely next character is the true one,
         "agreement": with `teacher`, how often it is the teacher's most likely one (top-1 agreement),
         "chars": how many predictions were scored}.

    Introduced in: notebooks/12_language_model.ipynb
    """
    check_model(model)
    X, Y = windows(ids, model.cfg.context)  # (n, T) each
    if max_windows is not None:
        X, Y = X[:check_int(max_windows, "max_windows", low=1)], Y[:max_windows]
    loss_sum, entropy_sum, correct, agree = 0.0, 0.0, 0, 0
    for i in range(0, len(X), batch_size):
        z = predict_windows(model, X[i:i + batch_size], batch_size=batch_size)  # (b, T, V)
        y = Y[i:i + batch_size]
        loss_sum += float(F.cross_entropy(z.flatten(0, 1).double(), y.flatten(), reduction="sum"))
        log_q = F.log_softmax(z.double(), dim=-1)
        entropy_sum += float(-(log_q.exp() * log_q).sum())
        correct += int((z.argmax(-1) == y).sum())
        if teacher is not None:
            zt = predict_windows(teacher, X[i:i + batch_size], batch_size=batch_size)
            agree += int((z.argmax(-1) == zt.argmax(-1)).sum())
    n = Y.numel()
    out = {"loss": loss_sum / n, "bpc": loss_sum / n / LN2, "entropy_bits": entropy_sum / n / LN2,
           "accuracy": correct / n, "chars": n}
    if teacher is not None:
        out["agreement"] = agree / n
    return out


# ---------------------------------------------------------------- training
def shuffled_batches(tensors: tuple[torch.Tensor, ...], batch_size: int, *, seed: int = 0) -> Iterator[tuple]:
    """Endless shuffled passes over rows of `tensors` (all with the same first axis n), in
    batches of `batch_size` rows (the last incomplete batch of each pass is dropped).
    """
    n = len(tensors[0])
    if any(len(t) != n for t in tensors):
        raise ValueError(f"the tensors must have the same number of rows, got {[len(t) for t in tensors]}")
    check_int(batch_size, "batch_size", low=1, high=n)
    g = torch.Generator().manual_seed(seed)
    while True:
        perm = torch.randperm(n, generator=g)
        for i in range(0, n - batch_size + 1, batch_size):
            rows = perm[i:i + batch_size]
            yield tuple(t[rows] for t in tensors)


def random_batches(ids: torch.Tensor, batch_size: int, context: int, *, seed: int = 0) -> Iterator[tuple]:
    """Endless batches (X, Y) of windows at random offsets of `ids` (see `kdlib.lm.random_windows`)."""
    g = torch.Generator().manual_seed(seed)
    while True:
        yield random_windows(ids, batch_size, context, generator=g)


def lm_loss(model: nn.Module, batch: tuple) -> torch.Tensor:
    """The plain language-model loss: cross-entropy of the next character, batch = (X, Y) (B, T).
    """
    X, Y = batch[0], batch[1]
    logits = model(X)  # (B, T, V)
    return F.cross_entropy(logits.flatten(0, 1), Y.flatten())


@dataclass
class LMHistory:
    """What `train_lm` recorded."""

    train_loss: list = field(default_factory=list)  # mean loss of each block of `log_every` steps
    val_steps: list = field(default_factory=list)   # the steps after which val was scored
    val_bpc: list = field(default_factory=list)     # val bits per character at those steps
    time_s: float = 0.0                             # wall time of the whole run


def _optimizer(model: nn.Module, lr: float, weight_decay: float) -> torch.optim.Optimizer:
    """AdamW; weight decay on the matrices (weights, embeddings), none on biases and LayerNorms."""
    decay = [p for p in model.parameters() if p.requires_grad and p.ndim >= 2]
    other = [p for p in model.parameters() if p.requires_grad and p.ndim < 2]
    return torch.optim.AdamW([{"params": decay, "weight_decay": weight_decay},
                              {"params": other, "weight_decay": 0.0}], lr=lr, betas=(0.9, 0.99))


def lr_at(step: int, *, steps: int, lr: float, warmup: int) -> float:
    """Linear warm-up over `warmup` steps, then cosine decay to lr / 10 at the last step."""
    if step < warmup:
        return lr * (step + 1) / warmup
    progress = (step - warmup) / max(1, steps - warmup)
    return lr * (0.1 + 0.9 * 0.5 * (1 + math.cos(math.pi * progress)))


def train_lm(model: nn.Module, batches: Iterable[tuple], *, steps: int, lr: float = 2e-3, warmup: int = 50,
             weight_decay: float = 0.1, grad_clip: float = 1.0,
             loss_fn: Callable[[nn.Module, tuple], torch.Tensor] = lm_loss, val_ids: torch.Tensor | None = None,
             eval_every: int | None = None, eval_windows: int = 100, log_every: int = 50, seed: int = 0,
             progress: bool = False) -> LMHistory:
    """Train `model` for `steps` gradient steps, one batch from `batches` per step.

    Args:
        model: the model to train (in place).
        batches: an iterator of batches, e.g. `shuffled_batches((X, Y), 32)`; `loss_fn(model, batch)`
            turns one into a scalar loss (`lm_loss`: cross-entropy; the distillation losses of
            `kdlib.lm_distill`).
        steps, lr, warmup, weight_decay, grad_clip: AdamW with warm-up and cosine decay
            (`lr_at`), gradients clipped to norm `grad_clip`.
        val_ids: a stream to score every `eval_every` steps and at the end (`eval_windows` windows).
        seed: seeds torch before the first step (dropout, sampling inside `loss_fn`).
    Returns:
        an `LMHistory`.
    """
    check_model(model)
    check_int(steps, "steps", low=1)
    lr = check_positive(lr, "lr")
    check_int(warmup, "warmup", low=1)
    check_number(weight_decay, "weight_decay", low=0.0)
    check_positive(grad_clip, "grad_clip")
    check_callable(loss_fn, "loss_fn", hint="loss_fn(model, batch) -> a scalar tensor")
    batches = iter(batches)
    seed_everything(seed)
    opt, history, running, t0 = _optimizer(model, lr, weight_decay), LMHistory(), [], time.perf_counter()
    model.train()
    for step in range(steps):
        for group in opt.param_groups:
            group["lr"] = lr_at(step, steps=steps, lr=lr, warmup=warmup)
        loss = loss_fn(model, next(batches))
        if not torch.isfinite(loss):
            raise ValueError(f"the loss became {loss.item()} at step {step}; lower the learning rate")
        opt.zero_grad(set_to_none=True)
        loss.backward()
        nn.utils.clip_grad_norm_(model.parameters(), grad_clip)
        opt.step()
        running.append(loss.item())
        if len(running) == log_every or step == steps - 1:
            history.train_loss.append(sum(running) / len(running))
            running = []
        last = step == steps - 1
        if val_ids is not None and (last or (eval_every and (step + 1) % eval_every == 0)):
            history.val_steps.append(step + 1)
            history.val_bpc.append(evaluate_lm(model, val_ids, max_windows=eval_windows)["bpc"])
            model.train()
            if progress:
                print(f"step {step + 1}/{steps}: train loss {history.train_loss[-1]:.3f}, "
                      f"val {history.val_bpc[-1]:.3f} bits/char ({time.perf_counter() - t0:.0f} s)", flush=True)
    model.eval()
    history.time_s = time.perf_counter() - t0
    return history


# ---------------------------------------------------------------- the book's LM teacher
@dataclass(frozen=True)
class LMTeacherRecipe:
    """How the book's character-level teacher is trained (about 13 minutes on one CPU core)."""

    width: int = 160         # C: 1.28 M parameters at width 160, depth 4
    depth: int = 4           # transformer blocks
    heads: int = 4           # attention heads per block (40 channels each)
    context: int = 128       # characters it reads at once
    steps: int = 1000        # gradient steps of batch_size random windows (4.1 M characters, 4 passes)
    batch_size: int = 32
    lr: float = 2e-3         # AdamW peak learning rate; 100 warm-up steps, cosine decay to lr / 10
    warmup: int = 100
    weight_decay: float = 0.1
    seed: int = 0


LM_TEACHER_RECIPE = LMTeacherRecipe()
LM_TEACHER_NAME = "lm_teacher_shakespeare.pt"


def lm_config(width: int, depth: int, heads: int, context: int, vocab_size: int = 65) -> LMConfig:
    """The `LMConfig` of a model of this width, depth, heads and context (no dropout)."""
    return LMConfig(vocab_size=vocab_size, context=context, width=width, depth=depth, heads=heads)


def lm_teacher_config(recipe: LMTeacherRecipe = LM_TEACHER_RECIPE, vocab_size: int = 65) -> LMConfig:
    """The architecture of the teacher that `recipe` trains."""
    return lm_config(recipe.width, recipe.depth, recipe.heads, recipe.context, vocab_size)


def lm_teacher_path() -> Path:
    """Where the LM teacher's checkpoint ships: `kdlib/assets/checkpoints/lm_teacher_shakespeare.pt`."""
    return asset_path("checkpoints", LM_TEACHER_NAME)


def train_lm_teacher(model: nn.Module, splits: CorpusSplits, recipe: LMTeacherRecipe = LM_TEACHER_RECIPE, *,
                     progress: bool = True) -> LMHistory:
    """Train `model` on random windows of `splits.train` with `recipe`.
    """
    if not isinstance(recipe, LMTeacherRecipe):
        raise TypeError(f"recipe must be an LMTeacherRecipe, got {type(recipe).__name__}")
    batches = random_batches(splits.train, recipe.batch_size, recipe.context, seed=recipe.seed)
    return train_lm(model, batches, steps=recipe.steps, lr=recipe.lr, warmup=recipe.warmup,
                    weight_decay=recipe.weight_decay, val_ids=splits.val, eval_every=100 if progress else None,
                    seed=recipe.seed, progress=progress)


def load_lm_teacher(splits: CorpusSplits | None = None, *, path: str | os.PathLike | None = None,
                    progress: bool = True, verbose: bool = True) -> CharTransformer:
    """The book's character-level teacher, in eval mode: loaded from its checkpoint (SHA-256
    checked, `weights_only=True`), or trained with `LM_TEACHER_RECIPE` and saved when missing.

    Introduced in: notebooks/12_language_model.ipynb
    """
    if splits is not None and not isinstance(splits, CorpusSplits):
        raise TypeError(f"splits must be the CorpusSplits of kdlib.lm.load_splits, got {type(splits).__name__}")
    recipe = LM_TEACHER_RECIPE

    def make():
        vocab = splits.tokenizer.vocab_size if splits is not None else 65
        return CharTransformer(lm_teacher_config(recipe, vocab))

    def fit(model):
        train_lm_teacher(model, splits if splits is not None else load_splits(), recipe, progress=progress)

    return load_or_train(lm_teacher_path() if path is None else path, make, fit, verbose=verbose)


def describe(recipe) -> dict:
    """A recipe as a plain dict (for a bench result's record of how it was made)."""
    return asdict(recipe)


# ---------------------------------------------------------------- distillation at equal compute
METHODS = ("alone", "kd_full", "kd_topk", "seq_kd", "on_policy")


@dataclass(frozen=True)
class LMDistillRecipe:
    """Chapter 12's comparison (bench/lm_kd.py): each method trains the same student, from the
    same initial weights, for the same number of gradient steps on the same number of characters
    (`steps` batches of `batch_size` windows of `context`); only the targets differ."""

    width: int = 64                 # the student: 117 k parameters at width 64, depth 2 (11x fewer than the teacher)
    depth: int = 2
    heads: int = 4
    context: int = 128
    steps: int = 600                # gradient steps (600 x 32 x 128 = 2.5 M characters, 2.4 passes over train)
    batch_size: int = 32
    lr: float = 2e-2                # AdamW peak learning rate (the student alone's best on val), 50 warm-up steps
    warmup: int = 50
    weight_decay: float = 0.1
    T: float = 1.0                  # token-level KD temperature (chosen on val: bench/lm_kd.py --sweep)
    top_k: int = 8                  # teacher log-probabilities kept per position in the top-k cache
    tail: str = "bucket"            # how the top-k loss treats the teacher's tail mass (see topk_kd_loss)
    gen_prompt: int = 8             # sequence-level KD: real characters that start each teacher window
    gen_temperature: float = 1.0    # the teacher samples its text at this temperature
    policy_prompt: int = 64         # on-policy: real characters before the student's own continuation
    policy_temperature: float = 1.0  # the student samples its continuation at this temperature
    policy_warmup: float = 0.5      # on-policy: the first half of the steps are token-level KD (a trained start)
    data_seed: int = 0              # seed of the teacher's generated text (shared by every student seed)


LM_DISTILL_RECIPE = LMDistillRecipe()


def lm_student_config(recipe: LMDistillRecipe = LM_DISTILL_RECIPE, vocab_size: int = 65) -> LMConfig:
    """The architecture of the student of `recipe`."""
    return lm_config(recipe.width, recipe.depth, recipe.heads, recipe.context, vocab_size)


def _check_method(method) -> str:
    from .validation import check_choice
    return check_choice(method, "method", METHODS)


@torch.no_grad()
def teacher_text(teacher: nn.Module, X: torch.Tensor, recipe: LMDistillRecipe = LM_DISTILL_RECIPE, *,
                 batch_size: int = 512) -> tuple[torch.Tensor, torch.Tensor]:
    """Sequence-level KD's training text: for every window of X (n, T), the teacher continues its
    first `recipe.gen_prompt` characters to T + 1 (sampled at `recipe.gen_temperature`).

    Returns:
        (X_gen, Y_gen), each (n, T): the teacher's windows and their next characters.
    """
    from .lm import generate

    n, T = X.shape
    g = torch.Generator().manual_seed(recipe.data_seed)
    out = torch.cat([generate(teacher, X[i:i + batch_size, :recipe.gen_prompt], T + 1 - recipe.gen_prompt,
                              temperature=recipe.gen_temperature, generator=g)
                     for i in range(0, n, batch_size)])  # (n, T + 1)
    return out[:, :-1], out[:, 1:]


def method_data(method: str, teacher: nn.Module, X: torch.Tensor, Y: torch.Tensor,
                recipe: LMDistillRecipe = LM_DISTILL_RECIPE, *, cache: dict | None = None) -> tuple:
    """The rows a method trains on, built from the training windows (X, Y) (n, T) and the teacher:
    (X, Y) for "alone" and "on_policy" (the teacher runs during training), (X, Y, teacher logits)
    for "kd_full", (X, Y, top-k values, top-k ids) for "kd_topk", the teacher's text for "seq_kd".
    Teacher outputs are computed once and kept in `cache` (a dict, shared between seeds), with the
    seconds they took under "<name>_s".
    """
    _check_method(method)
    cache = {} if cache is None else cache

    def once(name, fn):
        if name not in cache:
            t0 = time.perf_counter()
            cache[name] = fn()
            cache[f"{name}_s"] = time.perf_counter() - t0
        return cache[name]

    if method == "alone" or (method == "on_policy" and recipe.policy_warmup == 0):
        return X, Y
    if method == "seq_kd":
        return once("teacher_text", lambda: teacher_text(teacher, X, recipe))
    logits = once("logits", lambda: predict_windows(teacher, X, batch_size=256))  # (n, T, V)
    if method in ("kd_full", "on_policy"):  # on-policy: its warm-up steps are token-level KD
        return X, Y, logits
    from .lm_losses import topk_cache

    return (X, Y) + once(f"top{recipe.top_k}_T{recipe.T:g}", lambda: topk_cache(logits, recipe.top_k, recipe.T))


def method_loss(method: str, teacher: nn.Module, recipe: LMDistillRecipe = LM_DISTILL_RECIPE) -> Callable:
    """`loss_fn(student, batch)` of a method, for `train_lm` (batches from `method_data`).
    """
    from .lm import generate
    from .lm_losses import reverse_kl_loss, sequence_kd_loss, token_kd_loss, topk_kd_loss

    _check_method(method)
    if method == "alone":
        return lm_loss
    if method == "kd_full":
        return lambda m, b: token_kd_loss(m(b[0]), b[2].float(), T=recipe.T)
    if method == "kd_topk":
        return lambda m, b: topk_kd_loss(m(b[0]), b[2], b[3], T=recipe.T, tail=recipe.tail)
    if method == "seq_kd":
        return lambda m, b: sequence_kd_loss(m(b[0]), b[1])

    kd_steps, step = int(recipe.policy_warmup * recipe.steps), [0]

    def on_policy(m, b):
        X = b[0]                                       # (B, T) real windows
        step[0] += 1
        if step[0] <= kd_steps:                        # warm-up: token-level KD on the real text
            return token_kd_loss(m(X), b[2].float(), T=recipe.T)
        P = recipe.policy_prompt
        sample = generate(m, X[:, :P], X.shape[1] - P, temperature=recipe.policy_temperature)  # (B, T)
        with torch.no_grad(), eval_mode(teacher):
            teacher_logits = teacher(sample)           # (B, T, V): the teacher scores the student's text
        return reverse_kl_loss(m(sample), teacher_logits, T=recipe.T)

    return on_policy


def distill_lm(method: str, teacher: nn.Module, X: torch.Tensor, Y: torch.Tensor,
               recipe: LMDistillRecipe = LM_DISTILL_RECIPE, *, seed: int = 0, cache: dict | None = None,
               val_ids: torch.Tensor | None = None, eval_every: int | None = None,
               progress: bool = False) -> tuple[CharTransformer, LMHistory]:
    """Train a fresh student of `recipe` with `method` on the training windows (X, Y) (n, T).

    The student's initial weights and the order of the batches depend on `seed` only, so every
    method starts from the same weights and sees its rows in the same order.

    Returns:
        (student in eval mode, its `LMHistory`).
    """
    _check_method(method)
    check_model(teacher, "teacher")
    seed_everything(seed)
    student = CharTransformer(lm_student_config(recipe, teacher.cfg.vocab_size))
    rows = method_data(method, teacher, X, Y, recipe, cache=cache)
    history = train_lm(student, shuffled_batches(rows, recipe.batch_size, seed=seed), steps=recipe.steps,
                       lr=recipe.lr, warmup=recipe.warmup, weight_decay=recipe.weight_decay,
                       loss_fn=method_loss(method, teacher, recipe), val_ids=val_ids, eval_every=eval_every,
                       seed=seed, progress=progress)
    return student, history


LM_STUDENT_NAME = "lm_student_shakespeare.pt"
LM_STUDENT_METHOD = "kd_full"  # the method of the shipped student (chapter 12 checks it is the bench's best)


def lm_student_path() -> Path:
    """Where the distilled LM student ships: `kdlib/assets/checkpoints/lm_student_shakespeare.pt`."""
    return asset_path("checkpoints", LM_STUDENT_NAME)


def load_lm_student(teacher: nn.Module | None = None, splits: CorpusSplits | None = None, *,
                    path: str | os.PathLike | None = None, verbose: bool = True) -> CharTransformer:
    """The book's distilled character-level student (seed 0 of `LM_STUDENT_METHOD` with
    `LM_DISTILL_RECIPE`, saved by bench/lm_kd.py), in eval mode: loaded from its checkpoint
    (SHA-256 checked), or distilled from the teacher and saved when missing (a few minutes).

    Introduced in: notebooks/12_language_model.ipynb
    """
    recipe = LM_DISTILL_RECIPE

    def fit(model):
        data = splits if splits is not None else load_splits()
        t = teacher if teacher is not None else load_lm_teacher(data, verbose=verbose)
        X, Y = windows(data.train, recipe.context)
        model.load_state_dict(distill_lm(LM_STUDENT_METHOD, t, X, Y, recipe, seed=0)[0].state_dict())

    vocab = splits.tokenizer.vocab_size if splits is not None else 65
    return load_or_train(lm_student_path() if path is None else path,
                         lambda: CharTransformer(lm_student_config(recipe, vocab)), fit, verbose=verbose)
