"""kdlib.lm, kdlib.lm_losses and kdlib.lm_train against trusted references: PyTorch's own
attention and losses, hand-computed values, chapter 3's kd_loss, and full forward passes."""
import math

import pytest
import torch
import torch.nn.functional as F

from kdlib import lm_train
from kdlib.lm import (CORPUS_SHA256, CharTokenizer, CharTransformer, LMConfig, generate, generate_windowed, load_corpus,
                      load_splits, onnx_logits_fn, random_windows, sample_next, to_onnx_lm, windows)
from kdlib.lm_losses import reverse_kl_loss, sequence_kd_loss, token_kd_loss, topk_cache, topk_kd_loss
from kdlib.lm_train import (LN2, bits_per_char, evaluate_lm, lm_teacher_config, lm_teacher_path, load_lm_teacher,
                            shuffled_batches)
from kdlib.losses import kd_loss
from kdlib.utils import sha256_file

TINY = LMConfig(vocab_size=11, context=12, width=16, depth=2, heads=4)


def tiny_model(seed=0, cfg=TINY):
    torch.manual_seed(seed)
    return CharTransformer(cfg).eval()


@pytest.fixture(scope="module")
def splits():
    return load_splits()


# ---------------------------------------------------------------- corpus and tokenizer
def test_corpus_is_checked_and_split_by_position(splits):
    text = load_corpus()
    assert len(text) == 1_115_394 and splits.tokenizer.vocab_size == 65
    joined = torch.cat([splits.train, splits.val, splits.test])
    assert torch.equal(joined, splits.tokenizer.encode(text))
    assert len(splits.val) == len(splits.test) == int(0.05 * len(text))


def test_corrupted_corpus_is_refused(tmp_path):
    bad = tmp_path / "tiny.txt"
    bad.write_text("To be, or not to be")
    with pytest.raises(ValueError, match="corrupted"):
        load_corpus(bad)
    assert load_corpus(bad, sha256=None) == "To be, or not to be"
    with pytest.raises(FileNotFoundError, match="no corpus"):
        load_corpus(tmp_path / "missing.txt")
    assert CORPUS_SHA256.startswith("86c4e6aa")


def test_tokenizer_round_trip(splits):
    tok = splits.tokenizer
    text = "ROMEO:\nBut, soft! what light through yonder window breaks?"
    ids = tok.encode(text)
    assert ids.dtype == torch.long and ids.shape == (len(text),)
    assert tok.decode(ids) == text and tok.decode(ids.tolist()) == text
    assert tok.chars == sorted(tok.chars) and tok.encode("\n").item() == 0  # sorted: newline first


def test_tokenizer_errors():
    tok = CharTokenizer("abc")
    with pytest.raises(ValueError, match="not in the vocabulary: 'xz'"):
        tok.encode("axz")
    with pytest.raises(ValueError, match="0..2"):
        tok.decode([0, 3])
    with pytest.raises(TypeError):
        tok.encode(3)
    with pytest.raises(ValueError, match="2 distinct"):
        CharTokenizer("aaaa")


def test_windows_and_targets():
    ids = torch.arange(23)
    X, Y = windows(ids, 5)
    assert X.shape == Y.shape == (4, 5)
    assert torch.equal(X[1], torch.arange(5, 10)) and torch.equal(Y, X + 1)
    Xr, Yr = random_windows(ids, 7, 5, generator=torch.Generator().manual_seed(0))
    assert Xr.shape == (7, 5) and torch.equal(Yr, Xr + 1)
    with pytest.raises(ValueError, match="no window"):
        windows(torch.arange(3), 5)
    with pytest.raises(TypeError, match="integer"):
        windows(torch.rand(30), 5)


def test_shuffled_batches_cover_every_row_once_per_pass():
    rows = torch.arange(10)
    it = shuffled_batches((rows, rows * 2), 3, seed=1)
    seen = torch.cat([next(it)[0] for _ in range(3)])
    assert len(set(seen.tolist())) == 9  # 3 batches of 3 distinct rows (the 10th dropped this pass)
    a, b = next(it)
    assert torch.equal(b, a * 2)


# ---------------------------------------------------------------- the model
def test_shapes_and_parameter_count():
    m = tiny_model()
    X = torch.randint(0, 11, (3, 12))
    assert m(X).shape == (3, 12, 11)
    C, V, L, depth = 16, 11, 12, 2
    per_block = 4 * C + (3 * C * C + 3 * C) + (C * C + C) + (4 * C * C + 4 * C) + (4 * C * C + C)
    assert sum(p.numel() for p in m.parameters()) == V * C + L * C + depth * per_block + 2 * C + C * V + V
    with pytest.raises(ValueError, match="context"):
        m(torch.zeros(1, 13, dtype=torch.long))


def test_output_at_t_ignores_inputs_after_t():
    m = tiny_model()
    X = torch.randint(0, 11, (2, 12))
    for t in (0, 5, 10):
        X2 = X.clone()
        X2[:, t + 1:] = (X2[:, t + 1:] + 3) % 11
        with torch.no_grad():
            a, b = m(X), m(X2)
        torch.testing.assert_close(a[:, :t + 1], b[:, :t + 1], rtol=0, atol=0)
        assert (a[:, t + 1:] - b[:, t + 1:]).abs().max() > 1e-4  # the later positions do see the change


def test_attention_equals_pytorch_causal_sdpa():
    m = tiny_model()
    attn = m.blocks[0].attn
    x = torch.randn(2, 12, 16)
    with torch.no_grad():
        y, _ = attn(x)
        q, k, v = attn.qkv(x).split(16, dim=2)
        q, k, v = (a.view(2, 12, 4, 4).transpose(1, 2) for a in (q, k, v))
        ref = F.scaled_dot_product_attention(q, k, v, is_causal=True).transpose(1, 2).reshape(2, 12, 16)
        ref = attn.proj(ref)
    torch.testing.assert_close(y, ref, rtol=1e-5, atol=1e-6)


def test_kv_cache_equals_full_forward():
    m = tiny_model()
    X = torch.randint(0, 11, (2, 12))
    with torch.no_grad():
        logits, cache = m.step(X[:, :4])
        parts = [logits]
        for t in range(4, 12):
            logits, cache = m.step(X[:, t:t + 1], cache)
            parts.append(logits)
        torch.testing.assert_close(torch.cat(parts, 1), m(X), rtol=1e-5, atol=1e-6)


def test_config_errors():
    with pytest.raises(ValueError, match="multiple of heads"):
        LMConfig(width=10, heads=4)
    with pytest.raises(TypeError):
        LMConfig(depth=2.0)
    with pytest.raises(TypeError, match="LMConfig"):
        CharTransformer({"width": 16})


# ---------------------------------------------------------------- bits per character
def test_bits_per_char_is_cross_entropy_over_ln2():
    assert bits_per_char(torch.zeros(2, 3, 65), torch.zeros(2, 3, dtype=torch.long)) == pytest.approx(math.log2(65))
    # two positions: p(true) = 1/2 and 1/4 -> (1 + 2) / 2 bits
    logits = torch.log(torch.tensor([[[0.5, 0.5, 1e-30], [0.25, 0.25, 0.5]]]))
    assert bits_per_char(logits, torch.tensor([[0, 1]])) == pytest.approx(1.5, rel=1e-6)
    z, y = torch.randn(4, 5, 7), torch.randint(0, 7, (4, 5))
    assert bits_per_char(z, y) == pytest.approx(F.cross_entropy(z.flatten(0, 1), y.flatten()).item() / math.log(2))


def test_evaluate_lm_matches_a_hand_loop():
    m = tiny_model()
    ids = torch.randint(0, 11, (12 * 5 + 1,))
    got = evaluate_lm(m, ids, teacher=tiny_model(1), batch_size=2)
    X, Y = windows(ids, 12)
    with torch.no_grad():
        z, zt = m(X), tiny_model(1)(X)
    ce = F.cross_entropy(z.flatten(0, 1), Y.flatten()).item()
    assert got["chars"] == 60 and got["loss"] == pytest.approx(ce, rel=1e-5)
    assert got["bpc"] == pytest.approx(ce / LN2, rel=1e-5)
    assert got["agreement"] == pytest.approx((z.argmax(-1) == zt.argmax(-1)).double().mean().item())


# ---------------------------------------------------------------- losses
def test_token_kd_is_chapter_3_loss_at_every_position():
    torch.manual_seed(0)
    s, t, y = torch.randn(3, 6, 9), torch.randn(3, 6, 9), torch.randint(0, 9, (3, 6))
    for T, alpha, labels in ((1.0, 1.0, None), (2.0, 1.0, None), (4.0, 0.7, y)):
        per_position = [kd_loss(s[:, i], t[:, i], None if labels is None else labels[:, i], T=T, alpha=alpha)
                        for i in range(6)]
        torch.testing.assert_close(token_kd_loss(s, t, labels, T=T, alpha=alpha), torch.stack(per_position).mean())


def test_topk_loss_equals_full_loss_when_k_is_the_vocabulary():
    torch.manual_seed(0)
    s, t = torch.randn(2, 5, 9), torch.randn(2, 5, 9)
    for T in (1.0, 3.0):
        log_p, idx = F.log_softmax(t / T, -1).topk(9, dim=-1)
        for tail in ("bucket", "renormalize"):
            torch.testing.assert_close(topk_kd_loss(s, log_p, idx, T=T, tail=tail), token_kd_loss(s, t, T=T))
    v16, i8 = topk_cache(t, 9)
    assert v16.dtype == torch.float16 and i8.dtype == torch.uint8
    torch.testing.assert_close(topk_kd_loss(s, v16, i8), token_kd_loss(s, t), rtol=2e-3, atol=2e-3)


def test_topk_loss_tail_by_hand():
    # teacher (0.4, 0.3, 0.2, 0.1), student uniform over 4, k = 2
    p = torch.tensor([0.4, 0.3, 0.2, 0.1])
    s = torch.zeros(1, 1, 4)
    log_p, idx = p.log().view(1, 1, 4).topk(2, dim=-1)
    bucket = 0.4 * math.log(0.4 / 0.25) + 0.3 * math.log(0.3 / 0.25) + 0.3 * math.log(0.3 / 0.5)
    assert topk_kd_loss(s, log_p, idx).item() == pytest.approx(bucket, rel=1e-6)
    renorm = (4 / 7) * math.log((4 / 7) / 0.25) + (3 / 7) * math.log((3 / 7) / 0.25)
    assert topk_kd_loss(s, log_p, idx, tail="renormalize").item() == pytest.approx(renorm, rel=1e-6)
    # a tail of one token is that token: the bucket is then the full loss
    log_p3, idx3 = p.log().view(1, 1, 4).topk(3, dim=-1)
    torch.testing.assert_close(topk_kd_loss(s, log_p3, idx3), token_kd_loss(s, p.log().view(1, 1, 4)))


def test_topk_cache_holds_the_largest_log_probabilities():
    torch.manual_seed(0)
    t = torch.randn(2, 3, 10) * 3
    log_p, idx = topk_cache(t, 4, T=2.0)
    ref_v, ref_i = F.log_softmax(t / 2.0, -1).topk(4, -1)
    assert torch.equal(idx.long(), ref_i)
    torch.testing.assert_close(log_p.float(), ref_v, rtol=1e-3, atol=1e-3)


def test_reverse_kl_by_hand_and_against_torch():
    # student (1/2, 1/2), teacher (1/4, 3/4): KL(q || p) = 1/2 ln 2 + 1/2 ln(2/3)
    s, t = torch.zeros(1, 1, 2), torch.log(torch.tensor([[[0.25, 0.75]]]))
    assert reverse_kl_loss(s, t).item() == pytest.approx(0.5 * math.log(2) + 0.5 * math.log(2 / 3), rel=1e-6)
    assert token_kd_loss(s, t).item() == pytest.approx(0.25 * math.log(0.5) + 0.75 * math.log(1.5), rel=1e-6)
    torch.manual_seed(0)
    s, t = torch.randn(2, 4, 6), torch.randn(2, 4, 6)
    T = 2.0
    ref = F.kl_div(F.log_softmax(t / T, -1).flatten(0, 1), F.log_softmax(s / T, -1).flatten(0, 1),
                   reduction="batchmean", log_target=True) * T * T
    torch.testing.assert_close(reverse_kl_loss(s, t, T=T), ref)


@pytest.mark.filterwarnings("ignore:teacher_logits require grad")
def test_losses_give_the_teacher_no_gradient():
    s = torch.randn(2, 3, 5, requires_grad=True)
    t = torch.randn(2, 3, 5, requires_grad=True)
    (reverse_kl_loss(s, t) + token_kd_loss(s, t) + topk_kd_loss(s, *t.log_softmax(-1).topk(2, -1))).backward()
    assert t.grad is None and s.grad is not None


def test_sequence_kd_is_cross_entropy_on_the_teachers_tokens():
    s, y = torch.randn(2, 3, 5), torch.randint(0, 5, (2, 3))
    torch.testing.assert_close(sequence_kd_loss(s, y), F.cross_entropy(s.flatten(0, 1), y.flatten()))


def test_loss_errors():
    s = torch.randn(2, 3, 5)
    with pytest.raises(ValueError, match="same shape"):
        token_kd_loss(s, torch.randn(2, 3, 6))
    with pytest.raises(ValueError, match=r"\(B, T, V\)"):
        reverse_kl_loss(s[0], s[0])
    with pytest.raises(ValueError, match="teacher_indices must lie"):
        topk_kd_loss(s, -torch.rand(2, 3, 2), torch.full((2, 3, 2), 7))
    with pytest.raises(ValueError, match="not raw logits"):
        topk_kd_loss(s, torch.rand(2, 3, 2) + 1, torch.zeros(2, 3, 2, dtype=torch.long))
    with pytest.raises(ValueError, match="tail"):
        topk_kd_loss(s, -torch.rand(2, 3, 2), torch.zeros(2, 3, 2, dtype=torch.long), tail="uniform")
    with pytest.raises(ValueError, match="temperature T"):
        reverse_kl_loss(s, s, T=0.0)
    with pytest.raises(ValueError, match="labels must have shape"):
        token_kd_loss(s, s, torch.zeros(2, 4, dtype=torch.long), alpha=0.5)
    with pytest.raises(TypeError, match="integer"):
        sequence_kd_loss(s, torch.zeros(2, 3))


# ---------------------------------------------------------------- generation
def greedy_reference(model, prompt, n):
    ids = prompt
    for _ in range(n):
        with torch.no_grad():
            nxt = model(ids[:, -model.cfg.context:])[:, -1].argmax(-1)
        ids = torch.cat([ids, nxt[:, None]], 1)
    return ids


def test_top_k_one_is_greedy_within_and_beyond_the_context():
    m = tiny_model()
    prompt = torch.randint(0, 11, (3, 4))
    expected = greedy_reference(m, prompt, 20)  # 24 > context 12: the window slides
    assert torch.equal(generate(m, prompt, 20, top_k=1), expected)
    assert torch.equal(generate_windowed(m, prompt, 20, context=12, top_k=1), expected)


def test_temperature_and_top_k():
    logits = torch.tensor([[2.0, 1.0, 0.0, -1.0]]).expand(4000, 4)
    g = torch.Generator().manual_seed(0)
    cold = sample_next(logits, temperature=0.05, generator=g)
    assert (cold == 0).all()  # very low temperature: the most likely character
    hot = torch.bincount(sample_next(logits, temperature=100.0, generator=g), minlength=4) / 4000
    assert (hot - 0.25).abs().max() < 0.04  # very high temperature: close to uniform
    at1 = torch.bincount(sample_next(logits, generator=g), minlength=4) / 4000
    assert (at1 - logits[0].softmax(0)).abs().max() < 0.03  # temperature 1: the softmax itself
    top2 = sample_next(logits, top_k=2, generator=g)
    assert set(top2.tolist()) == {0, 1}
    with pytest.raises(ValueError, match="top_k=1 for greedy"):
        sample_next(logits, temperature=0.0)
    with pytest.raises(ValueError, match="top_k"):
        sample_next(logits, top_k=0)


def test_generate_errors():
    m = tiny_model()
    with pytest.raises(TypeError, match="integer"):
        generate(m, torch.zeros(1, 3), 5)
    with pytest.raises(ValueError, match="0..10"):
        generate(m, torch.tensor([[3, 11]]), 5)
    with pytest.raises(TypeError, match="Module"):
        generate("model", torch.tensor([[3]]), 5)


# ---------------------------------------------------------------- checkpoint and ONNX
def test_shipped_teacher_loads_with_its_hash(tmp_path):
    path = lm_teacher_path()
    if not path.exists():
        pytest.skip("the LM teacher checkpoint is not built yet (bench/lm_kd.py --train-teacher)")
    teacher = load_lm_teacher(verbose=False)
    assert sum(p.numel() for p in teacher.parameters()) > 1_000_000 and not teacher.training
    assert sha256_file(path) == path.with_name(path.name + ".sha256").read_text().split()[0]
    bad = tmp_path / "lm_teacher.pt"
    data = bytearray(path.read_bytes())
    data[-100] ^= 0xFF
    bad.write_bytes(bytes(data))
    bad.with_name(bad.name + ".sha256").write_text(path.with_name(path.name + ".sha256").read_text())
    with pytest.raises(ValueError, match="corrupted"):
        load_lm_teacher(path=bad, verbose=False)


def test_shipped_student_is_ten_times_smaller_than_the_teacher():
    from kdlib.lm_train import lm_student_path, load_lm_student

    if not lm_student_path().exists() or not lm_teacher_path().exists():
        pytest.skip("the LM checkpoints are not built yet (bench/lm_kd.py)")
    student, teacher = load_lm_student(verbose=False), load_lm_teacher(verbose=False)
    n_student, n_teacher = (sum(p.numel() for p in m.parameters()) for m in (student, teacher))
    assert n_teacher >= 10 * n_student and not student.training


def test_missing_teacher_is_trained_and_saved(tmp_path, monkeypatch):
    tiny = lm_train.LMTeacherRecipe(width=8, depth=1, heads=2, context=16, steps=2, batch_size=2, warmup=1)
    monkeypatch.setattr(lm_train, "LM_TEACHER_RECIPE", tiny)
    path = tmp_path / "t.pt"
    text = "to be or not to be, that is the question " * 20
    model = load_lm_teacher(load_splits(text), path=path, progress=False, verbose=False)
    assert path.exists() and path.with_name("t.pt.sha256").exists()
    assert model.cfg == lm_teacher_config(tiny, load_splits(text).tokenizer.vocab_size)
    again = load_lm_teacher(load_splits(text), path=path, verbose=False)
    for a, b in zip(model.state_dict().values(), again.state_dict().values()):
        assert torch.equal(a, b)


def test_onnx_parity_fp32_and_int8(tmp_path):
    from kdlib.export import onnx_session, quantize_onnx

    m = tiny_model()
    path = to_onnx_lm(m, tmp_path / "lm.onnx")
    with pytest.raises(FileExistsError):
        to_onnx_lm(m, path)
    run = onnx_logits_fn(onnx_session(path))
    X = torch.randint(0, 11, (3, 12))
    for ids in (X, X[:1, :5]):  # dynamic batch and time axes
        torch.testing.assert_close(run(ids), m(ids).detach(), rtol=1e-4, atol=1e-5)
    prompt = X[:, :3]
    assert torch.equal(generate_windowed(run, prompt, 15, context=12, top_k=1), generate(m, prompt, 15, top_k=1))
    int8 = quantize_onnx(path, tmp_path / "lm_int8.onnx", mode="dynamic", op_types=("MatMul",))
    diff = (onnx_logits_fn(onnx_session(int8))(X) - m(X).detach()).abs().max().item()
    assert 0 < diff < 0.1 * m(X).detach().abs().max().item()  # int8 weights: close, not equal
