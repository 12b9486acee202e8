"""kdlib.losses against PyTorch's own ops, closed forms and hand-computed values."""
import math

import pytest
import torch
import torch.nn.functional as F
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays

from kdlib.losses import KDLoss, kd_loss, soft_targets


def test_soft_targets_matches_torch_softmax():
    z = torch.randn(5, 10)
    for T in (0.5, 1.0, 4.0, 20.0):
        torch.testing.assert_close(soft_targets(z, T), torch.softmax(z / T, dim=1))


def test_soft_targets_hand_computed():
    # logits (0, ln 3) at T=1: probabilities (1/4, 3/4)
    z = torch.tensor([[0.0, math.log(3.0)]])
    torch.testing.assert_close(soft_targets(z, 1.0), torch.tensor([[0.25, 0.75]]))
    # at T=2 the logits halve: (0, ln sqrt 3) -> (1/(1+sqrt3), sqrt3/(1+sqrt3))
    s3 = math.sqrt(3.0)
    torch.testing.assert_close(soft_targets(z, 2.0), torch.tensor([[1 / (1 + s3), s3 / (1 + s3)]]))


def test_kd_loss_matches_reference_formula():
    torch.manual_seed(0)
    s, t, y = torch.randn(8, 10), torch.randn(8, 10), torch.randint(0, 10, (8,))
    T, alpha = 3.0, 0.7
    p = torch.softmax(t / T, 1)
    log_q = torch.log_softmax(s / T, 1)
    kl = (p * (p.log() - log_q)).sum(1).mean()
    expected = alpha * T * T * kl + (1 - alpha) * F.cross_entropy(s, y)
    torch.testing.assert_close(kd_loss(s, t, y, T=T, alpha=alpha), expected)
    # and against torch's KLDivLoss with batchmean
    ref = F.kl_div(log_q, p, reduction="batchmean") * T * T
    torch.testing.assert_close(kd_loss(s, t, None, T=T, alpha=1.0), ref)


def test_kd_loss_hand_computed_two_classes():
    # teacher (1/4, 3/4), student uniform, T=1, soft term only:
    # KL = 1/4 ln(1/4 / 1/2) + 3/4 ln(3/4 / 1/2) = 1/4 ln(1/2) + 3/4 ln(3/2)
    t = torch.tensor([[0.0, math.log(3.0)]])
    s = torch.zeros(1, 2)
    expected = 0.25 * math.log(0.5) + 0.75 * math.log(1.5)
    assert kd_loss(s, t, T=1.0, alpha=1.0).item() == pytest.approx(expected, rel=1e-6)


def test_alpha_zero_is_cross_entropy():
    s, t, y = torch.randn(4, 3), torch.randn(4, 3), torch.tensor([0, 1, 2, 1])
    torch.testing.assert_close(kd_loss(s, t, y, T=5.0, alpha=0.0), F.cross_entropy(s, y))


def test_stable_for_huge_logits():
    s = torch.tensor([[1e4, 0.0, -1e4]])
    t = torch.tensor([[-1e4, 0.0, 1e4]])
    value = kd_loss(s, t, torch.tensor([0]), T=1.0, alpha=0.5)
    assert torch.isfinite(value)


def test_teacher_gets_no_gradient():
    s = torch.randn(4, 5, requires_grad=True)
    t = torch.randn(4, 5, requires_grad=True)
    kd_loss(s, t, T=2.0, alpha=1.0).backward()
    assert t.grad is None and s.grad is not None


def test_module_wrapper_equals_function():
    s, t, y = torch.randn(4, 5), torch.randn(4, 5), torch.tensor([0, 1, 2, 3])
    torch.testing.assert_close(KDLoss(T=2.0, alpha=0.5)(s, t, y), kd_loss(s, t, y, T=2.0, alpha=0.5))
    assert "T=2.0" in repr(KDLoss(T=2.0, alpha=0.5))


@pytest.mark.parametrize("kwargs, match", [
    (dict(T=0.0), "T must be a finite number > 0"),
    (dict(T=-1.0), "T must be a finite number > 0"),
    (dict(T=float("nan")), "T must be a finite number > 0"),
    (dict(alpha=1.5), "alpha"),
    (dict(alpha=-0.1), "alpha"),
])
def test_bad_hyperparameters(kwargs, match):
    s, t, y = torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 1])
    with pytest.raises(ValueError, match=match):
        kd_loss(s, t, y, **kwargs)


def test_bad_inputs():
    s, t = torch.randn(2, 3), torch.randn(2, 4)
    with pytest.raises(ValueError, match="same shape"):
        kd_loss(s, t, T=1.0, alpha=1.0)
    with pytest.raises(ValueError, match="NaN or inf"):
        kd_loss(torch.tensor([[float("nan"), 0.0]]), torch.zeros(1, 2), T=1.0, alpha=1.0)
    with pytest.raises(ValueError, match="labels must lie"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), torch.tensor([0, 7]))
    with pytest.raises(ValueError, match="alpha must be 1"):
        kd_loss(torch.randn(2, 3), torch.randn(2, 3), None, alpha=0.5)
    with pytest.raises(TypeError):
        kd_loss([[0.0, 1.0]], torch.randn(1, 2), T=1.0, alpha=1.0)


logit_rows = arrays("float32", st.tuples(st.integers(1, 6), st.integers(2, 8)),
                    elements=st.floats(-30, 30, width=32))


@settings(max_examples=200, deadline=None)
@given(logit_rows, st.floats(0.5, 20))
def test_kl_nonnegative_and_zero_only_for_equal(z, T):
    z = torch.from_numpy(z)
    assert kd_loss(z, z, T=T, alpha=1.0).item() == pytest.approx(0.0, abs=1e-4)
    other = z.flip(1)
    value = kd_loss(other, z, T=T, alpha=1.0).item()
    assert value >= -1e-5
    p, q = soft_targets(z, T), soft_targets(other, T)
    if (p - q).abs().max() > 1e-2:
        assert value > 0


@settings(max_examples=200, deadline=None)
@given(logit_rows, st.floats(-50, 50), st.floats(0.5, 10))
def test_invariant_to_shifting_all_logits(z, c, T):
    z = torch.from_numpy(z).double()
    s = z.flip(0)
    base = kd_loss(s, z, T=T, alpha=1.0)
    torch.testing.assert_close(kd_loss(s + c, z, T=T, alpha=1.0), base, atol=1e-6, rtol=1e-6)
    torch.testing.assert_close(kd_loss(s, z - c, T=T, alpha=1.0), base, atol=1e-6, rtol=1e-6)


@settings(max_examples=100, deadline=None)
@given(st.integers(2, 10), st.floats(1.0, 20.0), st.integers(0, 10_000))
def test_gradient_is_q_minus_p_times_T(K, T, seed):
    """d/dz_s of T^2 KL(p_T || q_T) per example is T * (q_T - p_T): its scale does not shrink with T."""
    g = torch.Generator().manual_seed(seed)
    s = torch.randn(1, K, generator=g, dtype=torch.float64, requires_grad=True)
    t = torch.randn(1, K, generator=g, dtype=torch.float64)
    kd_loss(s, t, T=T, alpha=1.0).backward()
    expected = T * (torch.softmax(s.detach() / T, 1) - torch.softmax(t / T, 1))
    torch.testing.assert_close(s.grad, expected)
