"""A small character-level language model: the Tiny Shakespeare corpus, a tokenizer, a
decoder-only transformer, batches of windows, and generation with temperature and top-k.

    splits = load_splits()                          # tokenizer + train/val/test ids, by position
    model = CharTransformer(LMConfig(vocab_size=splits.tokenizer.vocab_size))
    logits = model(X)                               # X (B, T) ids -> (B, T, V) next-character scores
    ids = generate(model, splits.tokenizer.encode("ROMEO:")[None], 200, temperature=0.8, top_k=10)
    print(splits.tokenizer.decode(ids[0]))

Training, bits per character, the book's LM teacher and the distillation loops live in
`kdlib/lm_train.py`; the LM distillation losses in `kdlib/lm_losses.py`.
"""
from __future__ import annotations

import math
import os
from dataclasses import dataclass, fields
from pathlib import Path

import torch
import torch.nn.functional as F
from torch import nn

from .utils import asset_path, eval_mode, sha256_bytes
from .validation import check_int, check_model, check_number, check_positive, check_tensor

CORPUS_NAME = "tinyshakespeare.txt"
CORPUS_SHA256 = "86c4e6aa9db7c042ec79f339dcb96d42b0075e16b8fc2e86bf0ca57e2dc565ed"


# ---------------------------------------------------------------- corpus and tokenizer
def load_corpus(path: str | os.PathLike | None = None, *, sha256: str | None = CORPUS_SHA256) -> str:
    """The text of Tiny Shakespeare (shipped in `kdlib/assets/data/`), its SHA-256 checked.

    Args:
        path: another UTF-8 text file to read instead (then pass `sha256=None`, or its hash).
        sha256: the expected hex digest of the file's bytes; None skips the check.
    Returns:
        the text, 1,115,394 characters for Tiny Shakespeare.
    """
    if path is None:
        path = asset_path("data", CORPUS_NAME)
    elif not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if not path.is_file():
        raise FileNotFoundError(f"no corpus at {path}: reinstall kdlib (the file ships in kdlib/assets/data/), "
                                "or pass the path of a text file")
    data = path.read_bytes()
    if sha256 is not None and sha256_bytes(data) != sha256:
        raise ValueError(f"{path} is corrupted or is another text: its SHA-256 is {sha256_bytes(data)[:12]}..., "
                         f"expected {sha256[:12]}...; restore the file, or pass sha256=None for your own text")
    try:
        return data.decode("utf-8")
    except UnicodeDecodeError:
        raise ValueError(f"{path} is not UTF-8 text") from None


class CharTokenizer:
    """Characters <-> integer ids. The vocabulary is the sorted set of a text's characters, so id i
    is the i-th character in code-point order (65 of them in Tiny Shakespeare).
    """

    def __init__(self, text: str):
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        self.chars = sorted(set(text))  # id -> character
        if len(self.chars) < 2:
            raise ValueError("the text must hold at least 2 distinct characters to make a vocabulary")
        self.stoi = {c: i for i, c in enumerate(self.chars)}  # character -> id

    @property
    def vocab_size(self) -> int:
        return len(self.chars)

    def encode(self, text: str) -> torch.Tensor:
        """A string as a (N,) int64 tensor of ids."""
        if not isinstance(text, str):
            raise TypeError(f"text must be a str, got {type(text).__name__}")
        unknown = sorted(set(text) - self.stoi.keys())
        if unknown:
            raise ValueError(f"characters not in the vocabulary: {''.join(unknown)!r}; "
                             "use only characters of the corpus the tokenizer was built from")
        return torch.tensor([self.stoi[c] for c in text], dtype=torch.long)

    def decode(self, ids) -> str:
        """(N,) ids (a tensor or a list of ints) back to a string."""
        if isinstance(ids, torch.Tensor):
            if ids.is_floating_point() or ids.ndim != 1:
                raise ValueError(f"ids must be a 1-D integer tensor (N,), got dtype {ids.dtype}, "
                                 f"shape {tuple(ids.shape)}")
            ids = ids.tolist()
        if not isinstance(ids, (list, tuple)) or not all(isinstance(i, int) and not isinstance(i, bool) for i in ids):
            raise TypeError("ids must be a 1-D integer tensor or a list of ints")
        bad = [i for i in ids if not 0 <= i < self.vocab_size]
        if bad:
            raise ValueError(f"ids must lie in 0..{self.vocab_size - 1}, got {bad[0]}")
        return "".join(self.chars[i] for i in ids)

    def __repr__(self) -> str:
        return f"CharTokenizer(vocab_size={self.vocab_size})"


@dataclass(frozen=True)
class CorpusSplits:
    """A corpus cut by position into train, val and test (no window crosses a boundary)."""

    tokenizer: CharTokenizer
    train: torch.Tensor  # (N_train,) int64 ids: the first 90 % of the text
    val: torch.Tensor    # (N_val,) the next 5 %: every choice is made on it
    test: torch.Tensor   # (N_test,) the last 5 %: reported once


def load_splits(text: str | None = None, *, val_fraction: float = 0.05, test_fraction: float = 0.05) -> CorpusSplits:
    """Tokenize a corpus (Tiny Shakespeare by default) and cut it by position: the first
    1 - val_fraction - test_fraction of the characters for training, then val, then test.

    Introduced in: notebooks/12_language_model.ipynb
    """
    text = load_corpus() if text is None else text
    val_fraction = check_number(val_fraction, "val_fraction", low=0, high=0.5, low_open=True)
    test_fraction = check_number(test_fraction, "test_fraction", low=0, high=0.5, low_open=True)
    tok = CharTokenizer(text)
    ids = tok.encode(text)  # (N,)
    n_val, n_test = int(len(ids) * val_fraction), int(len(ids) * test_fraction)
    n_train = len(ids) - n_val - n_test
    if min(n_train, n_val, n_test) < 2:
        raise ValueError(f"a text of {len(ids)} characters is too short to split into train, val and test")
    return CorpusSplits(tok, ids[:n_train], ids[n_train:n_train + n_val], ids[n_train + n_val:])


# ---------------------------------------------------------------- batches
def _check_ids(ids, name: str = "ids") -> torch.Tensor:
    check_tensor(ids, name, ndim=1, floating=False, shape_hint="(N,) a 1-D tensor of character ids")
    return ids


def windows(ids: torch.Tensor, context: int) -> tuple[torch.Tensor, torch.Tensor]:
    """Cut a stream of ids into non-overlapping windows and their next-character targets.

    Args:
        ids: (N,) int64 character ids.
        context: T, the window length.
    Returns:
        (X, Y), each (n, T) with n = (N - 1) // T: X[i] = ids[iT : iT + T], Y[i] = ids[iT + 1 : iT + T + 1].

    Introduced in: notebooks/12_language_model.ipynb
    """
    _check_ids(ids)
    check_int(context, "context", low=1)
    n = (len(ids) - 1) // context
    if n < 1:
        raise ValueError(f"{len(ids)} ids hold no window of context {context} plus its target")
    X = ids[:n * context].view(n, context)
    Y = ids[1:n * context + 1].view(n, context)
    return X, Y


def random_windows(ids: torch.Tensor, batch_size: int, context: int, *,
                   generator: torch.Generator | None = None) -> tuple[torch.Tensor, torch.Tensor]:
    """A batch of windows at random offsets: (X, Y), each (B, T), Y shifted one character on.
    """
    _check_ids(ids)
    check_int(batch_size, "batch_size", low=1)
    check_int(context, "context", low=1)
    if len(ids) <= context:
        raise ValueError(f"{len(ids)} ids are too few for windows of context {context}")
    start = torch.randint(0, len(ids) - context, (batch_size,), generator=generator)  # (B,)
    offsets = start[:, None] + torch.arange(context)  # (B, T)
    return ids[offsets], ids[offsets + 1]


# ---------------------------------------------------------------- the model
@dataclass(frozen=True)
class LMConfig:
    """The shape of a `CharTransformer`: a decoder-only transformer over characters."""

    vocab_size: int = 65     # V: distinct characters (65 in Tiny Shakespeare)
    context: int = 128       # T_max: the most characters the model reads at once (its block size)
    width: int = 128         # C: the size of each position's vector (embeddings, residual stream)
    depth: int = 4           # transformer blocks applied one after the other
    heads: int = 4           # attention heads per block; each works on width / heads channels
    mlp_ratio: int = 4       # the MLP's hidden layer has mlp_ratio * width units
    dropout: float = 0.0     # dropout probability inside the blocks (0: none)

    def __post_init__(self):
        for f in fields(self):
            if f.name != "dropout":
                check_int(getattr(self, f.name), f"LMConfig.{f.name}", low=2 if f.name == "vocab_size" else 1)
        check_number(self.dropout, "LMConfig.dropout", low=0.0, high=1.0, high_open=True)
        if self.width % self.heads:
            raise ValueError(f"LMConfig.width ({self.width}) must be a multiple of heads ({self.heads})")


class CausalSelfAttention(nn.Module):
    """Multi-head self-attention in which position t attends to positions <= t only."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.heads = cfg.heads
        self.qkv = nn.Linear(cfg.width, 3 * cfg.width)  # queries, keys and values in one matmul
        self.proj = nn.Linear(cfg.width, cfg.width)
        self.dropout = nn.Dropout(cfg.dropout)

    def forward(self, x: torch.Tensor, past: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        """x (B, T, C), and the keys and values of `past` positions (each (B, H, P, D)) when
        generating, -> (y (B, T, C), (keys, values) of all P + T positions)."""
        B, T, C = x.shape
        H, D = self.heads, C // self.heads
        q, k, v = self.qkv(x).split(C, dim=2)             # each (B, T, C)
        q, k, v = (a.view(B, T, H, D).transpose(1, 2) for a in (q, k, v))  # each (B, H, T, D)
        if past is not None:
            k, v = torch.cat([past[0], k], dim=2), torch.cat([past[1], v], dim=2)  # (B, H, P + T, D)
        P = k.shape[2] - T
        att = (q @ k.transpose(-2, -1)) / math.sqrt(D)    # (B, H, T, P + T): query t against key s
        allowed = torch.ones(T, P + T, dtype=torch.bool, device=x.device).tril(diagonal=P)  # (T, P + T): s <= P + t
        att = att.masked_fill(~allowed, float("-inf")).softmax(dim=-1)
        y = self.dropout(att) @ v                          # (B, H, T, D)
        y = y.transpose(1, 2).reshape(B, T, C)             # heads side by side again
        return self.dropout(self.proj(y)), (k, v)


class Block(nn.Module):
    """A pre-norm transformer block: x + attention(LN(x)), then x + MLP(LN(x))."""

    def __init__(self, cfg: LMConfig):
        super().__init__()
        self.ln1 = nn.LayerNorm(cfg.width)
        self.attn = CausalSelfAttention(cfg)
        self.ln2 = nn.LayerNorm(cfg.width)
        self.mlp = nn.Sequential(nn.Linear(cfg.width, cfg.mlp_ratio * cfg.width), nn.GELU(),
                                 nn.Linear(cfg.mlp_ratio * cfg.width, cfg.width), nn.Dropout(cfg.dropout))

    def forward(self, x: torch.Tensor, past: tuple | None = None) -> tuple[torch.Tensor, tuple]:
        a, present = self.attn(self.ln1(x), past)  # (B, T, C)
        x = x + a
        return x + self.mlp(self.ln2(x)), present


class CharTransformer(nn.Module):
    """A decoder-only transformer over characters (GPT-style): token and position embeddings,
    `depth` pre-norm blocks of causal self-attention and MLP, a final LayerNorm and a linear
    head giving the next character's logits at every position.
    """

    def __init__(self, cfg: LMConfig = LMConfig()):
        super().__init__()
        if not isinstance(cfg, LMConfig):
            raise TypeError(f"cfg must be an LMConfig, got {type(cfg).__name__}")
        self.cfg = cfg
        self.tok_emb = nn.Embedding(cfg.vocab_size, cfg.width)  # (V, C)
        self.pos_emb = nn.Embedding(cfg.context, cfg.width)     # (T_max, C)
        self.blocks = nn.ModuleList(Block(cfg) for _ in range(cfg.depth))
        self.ln_f = nn.LayerNorm(cfg.width)
        self.head = nn.Linear(cfg.width, cfg.vocab_size)
        self.apply(self._init_weights)
        for block in self.blocks:  # GPT-2: residual branches scaled down with depth
            for proj in (block.attn.proj, block.mlp[2]):
                nn.init.normal_(proj.weight, std=0.02 / math.sqrt(2 * cfg.depth))

    @staticmethod
    def _init_weights(m: nn.Module) -> None:
        if isinstance(m, (nn.Linear, nn.Embedding)):
            nn.init.normal_(m.weight, std=0.02)
        if isinstance(m, nn.Linear):
            nn.init.zeros_(m.bias)

    def forward(self, idx: torch.Tensor) -> torch.Tensor:
        """idx (B, T) int64 ids, T <= context -> logits (B, T, V): position t predicts character t + 1."""
        return self.step(idx)[0]

    def step(self, idx: torch.Tensor, cache: list | None = None) -> tuple[torch.Tensor, list]:
        """Like `forward`, after the positions held in `cache` (one (keys, values) pair per
        block, from an earlier call): the KV cache of generation. Returns (logits (B, T, V),
        the cache extended by these T positions)."""
        B, T = idx.shape
        P = 0 if cache is None else cache[0][0].shape[2]  # positions already seen
        if P + T > self.cfg.context:
            raise ValueError(f"{P + T} positions exceed the model's context of {self.cfg.context} characters; "
                             f"pass at most the last {self.cfg.context}")
        x = self.tok_emb(idx) + self.pos_emb(torch.arange(P, P + T, device=idx.device))  # (B, T, C)
        present = []
        for i, block in enumerate(self.blocks):
            x, kv = block(x, None if cache is None else cache[i])
            present.append(kv)
        return self.head(self.ln_f(x)), present  # (B, T, V)


def check_ids_for(model: nn.Module, idx, name: str = "idx") -> torch.Tensor:
    """Raise a clear error unless `idx` is a (B, T) integer tensor of ids the model knows."""
    check_tensor(idx, name, ndim=2, floating=False, shape_hint="(B, T) character ids")
    V = model.cfg.vocab_size
    if int(idx.min()) < 0 or int(idx.max()) >= V:
        raise ValueError(f"{name} must hold ids in 0..{V - 1}, got values from {int(idx.min())} to {int(idx.max())}")
    return idx


# ---------------------------------------------------------------- generation
def sample_next(logits: torch.Tensor, *, temperature: float = 1.0, top_k: int | None = None,
                generator: torch.Generator | None = None) -> torch.Tensor:
    """Draw the next character from `logits` (B, V): softmax(logits / temperature), keeping only
    the `top_k` most likely characters (renormalized) when top_k is given. top_k=1 is greedy.

    Returns:
        (B,) int64 ids.
    """
    check_tensor(logits, "logits", ndim=2, floating=True, shape_hint="(B, V)")
    temperature = check_positive(temperature, "temperature", hint="use top_k=1 for greedy decoding")
    logits = logits / temperature
    if top_k is not None:
        check_int(top_k, "top_k", low=1)
        if top_k < logits.shape[-1]:
            kth = logits.topk(top_k, dim=-1).values[:, -1:]           # (B, 1): the k-th largest
            logits = logits.masked_fill(logits < kth, float("-inf"))  # drop everything below it
    probs = logits.softmax(dim=-1)                                    # (B, V)
    return torch.multinomial(probs, 1, generator=generator).squeeze(1)


@torch.no_grad()
def generate(model: nn.Module, prompt: torch.Tensor, num_chars: int, *, temperature: float = 1.0,
             top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Continue each prompt by `num_chars` characters, one at a time.

    While the text fits in the model's context, each new character costs one position through
    the model (the keys and values of the earlier ones are kept: a KV cache). Beyond the
    context, the last `context` characters are read again at every step.

    Args:
        model: a `CharTransformer` (run in eval mode, then restored).
        prompt: (B, P) int64 ids, P >= 1.
        num_chars: how many characters to add.
        temperature, top_k, generator: as in `sample_next`.
    Returns:
        (B, P + num_chars) ids: the prompts and their continuations.

    Introduced in: notebooks/12_language_model.ipynb
    """
    check_model(model)
    check_ids_for(model, prompt, "prompt")
    check_int(num_chars, "num_chars", low=0)
    context = model.cfg.context
    ids = prompt
    with eval_mode(model):
        logits, cache = model.step(ids[:, -context:])
        for i in range(num_chars):
            nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, generator=generator)  # (B,)
            ids = torch.cat([ids, nxt[:, None]], dim=1)
            if i == num_chars - 1:
                break
            if cache[0][0].shape[2] < context:
                logits, cache = model.step(nxt[:, None], cache)  # one new position
            else:
                logits, cache = model.step(ids[:, -context:])     # window full: read it again
    return ids


@torch.no_grad()
def generate_windowed(logits_fn, prompt: torch.Tensor, num_chars: int, *, context: int, temperature: float = 1.0,
                      top_k: int | None = None, generator: torch.Generator | None = None) -> torch.Tensor:
    """Generation for any runtime, without a KV cache: at every step `logits_fn` reads the last
    `context` characters (B, <= context) and returns logits (B, T, V); the next character is
    drawn from the last position. This is how an exported model without cache inputs (an ONNX
    file) generates, and the reference `generate` is checked against.

    Returns:
        (B, P + num_chars) ids.

    Introduced in: notebooks/12_language_model.ipynb
    """
    if not callable(logits_fn):
        raise TypeError("logits_fn must be a function ids (B, T) -> logits (B, T, V), e.g. a model or onnx_logits_fn(s)")
    check_tensor(prompt, "prompt", ndim=2, floating=False, shape_hint="(B, P) character ids")
    check_int(num_chars, "num_chars", low=0)
    check_int(context, "context", low=1)
    ids = prompt
    for _ in range(num_chars):
        logits = logits_fn(ids[:, -context:])  # (B, T, V)
        nxt = sample_next(logits[:, -1], temperature=temperature, top_k=top_k, generator=generator)
        ids = torch.cat([ids, nxt[:, None]], dim=1)
    return ids


@torch.no_grad()
def sample_diversity(model: nn.Module, prompts: torch.Tensor, num_chars: int, *, teacher: nn.Module | None = None,
                     n: int = 4, temperature: float = 1.0, seed: int = 0) -> dict:
    """How varied a model's samples are: it continues each prompt (B, P) by `num_chars` characters
    (P + num_chars <= its context), and we measure

    - "distinct": the share of distinct character n-grams among all n-grams of the continuations
      (pooled over the B samples; 1 = no n-gram repeats);
    - "entropy_bits": the mean entropy, in bits, of the distribution each character was drawn from;
    - "teacher_bpc": with `teacher`, its bits per character on the continuations (how likely the
      teacher finds them: lower = more typical text);

    and return them with "ids", the (B, P + num_chars) samples.

    Introduced in: notebooks/12_language_model.ipynb
    """
    check_model(model)
    check_int(n, "n", low=1)
    P = prompts.shape[1]
    if P + num_chars > model.cfg.context or num_chars < n:
        raise ValueError(f"need n <= num_chars and prompt + num_chars <= context ({model.cfg.context}), "
                         f"got {P} + {num_chars}")
    ids = generate(model, prompts, num_chars, temperature=temperature, generator=torch.Generator().manual_seed(seed))
    new = ids[:, P:]  # (B, N)
    grams = [tuple(row[i:i + n]) for row in new.tolist() for i in range(len(row) - n + 1)]
    with eval_mode(model):
        log_q = F.log_softmax(model(ids[:, :-1])[:, P - 1:] / temperature, dim=-1)  # (B, N, V) each draw
    out = {"distinct": len(set(grams)) / len(grams),
           "entropy_bits": float(-(log_q.exp() * log_q).sum(-1).mean()) / math.log(2), "ids": ids}
    if teacher is not None:
        with eval_mode(teacher):
            log_p = F.log_softmax(teacher(ids[:, :-1])[:, P - 1:], dim=-1)  # (B, N, V) the teacher's view
            out["teacher_bpc"] = float(-log_p.gather(-1, new[..., None]).mean()) / math.log(2)
    return out

# ---------------------------------------------------------------- ONNX
def to_onnx_lm(model: nn.Module, path: str | os.PathLike, *, overwrite: bool = False) -> Path:
    """Export a `CharTransformer` to one ONNX file: input "ids" (B, T) int64 with dynamic batch and
    time axes (1 <= T <= context), output "logits" (B, T, V). No KV cache: generating one
    character runs the whole window (see `generate_windowed`).

    Introduced in: notebooks/12_language_model.ipynb
    """
    from .utils import atomic_write_bytes

    check_model(model)
    if not isinstance(getattr(model, "cfg", None), LMConfig):
        raise TypeError(f"model must be a kdlib.lm.CharTransformer, got {type(model).__name__}")
    if not isinstance(path, (str, os.PathLike)):
        raise TypeError(f"path must be a str or a pathlib.Path, got {type(path).__name__}")
    path = Path(path)
    if path.suffix != ".onnx" or not path.parent.is_dir():
        raise ValueError(f"path must be a .onnx file in an existing folder, got {path}")
    if path.exists() and not overwrite:
        raise FileExistsError(f"{path} already exists; pass overwrite=True to replace it, or choose another path")
    example = torch.zeros(2, model.cfg.context, dtype=torch.long)
    dims = ({0: torch.export.Dim("batch", min=1, max=4096), 1: torch.export.Dim("time", min=1, max=model.cfg.context)},)
    with eval_mode(model):
        program = torch.export.export(model, (example,), dynamic_shapes=dims, strict=False)
    onnx_program = torch.onnx.export(program, input_names=["ids"], output_names=["logits"], dynamo=True,
                                     external_data=False, verbose=False, optimize=True)
    return atomic_write_bytes(path, onnx_program.model_proto.SerializeToString())


def onnx_logits_fn(session):
    """A function ids (B, T) int64 tensor -> logits (B, T, V) tensor that runs an ONNX Runtime
    session of a file written by `to_onnx_lm` (see `kdlib.export.onnx_session`).

    Introduced in: notebooks/12_language_model.ipynb
    """
    if not callable(getattr(session, "run", None)):
        raise TypeError(f"session must be an onnxruntime.InferenceSession, got {type(session).__name__}")
    return lambda ids: torch.from_numpy(session.run(None, {"ids": ids.numpy()})[0])
