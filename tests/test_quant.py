"""kdlib.quant against the formulas (hand-computed grids), PyTorch's own fake-quant
ops, hypothesis properties, the straight-through gradient, the QAT wrappers and
the errors on bad input."""
import copy

import pytest
import torch
from hypothesis import given, settings, strategies as st
from hypothesis.extra.numpy import arrays
from torch import nn

from kdlib import qat as QAT
from kdlib import quant as Q
from kdlib.models import StudentCNN

# ----------------------------------------------------------------- hand-computed cases


def test_qrange():
    assert Q.qrange(8) == (0, 255)
    assert Q.qrange(8, symmetric=True) == (-127, 127)
    assert Q.qrange(4) == (0, 15)
    assert Q.qrange(2, symmetric=True) == (-1, 1)  # the ternary grid
    assert Q.qrange(16) == (0, 65535)


def test_asymmetric_hand_computed():
    # range [-1, 2] on 0..255: scale = 3/255, zero_point = round(0 - (-1)/(3/255)) = round(85) = 85
    x = torch.tensor([-1.0, 0.0, 0.61, 2.0])
    q, scale, zp = Q.quantize(x, 8)
    assert scale.item() == pytest.approx(3 / 255)
    assert zp.item() == 85
    # 0.61 / (3/255) = 51.85 -> 52, + 85 = 137
    assert q.tolist() == [0, 85, 137, 255]
    assert q.dtype == torch.int32 and zp.dtype == torch.int32 and scale.dtype == torch.float32


def test_asymmetric_two_bits_hand_computed():
    # range [0, 3] on 0..3: scale 1, zero point 0; 1.4 -> 1, 2.6 -> 3
    q, scale, zp = Q.quantize(torch.tensor([0.0, 1.4, 2.6, 3.0]), 2)
    assert (scale.item(), zp.item()) == (1.0, 0)
    assert q.tolist() == [0, 1, 3, 3]
    torch.testing.assert_close(Q.dequantize(q, scale, zp), torch.tensor([0.0, 1.0, 3.0, 3.0]))


def test_symmetric_hand_computed():
    # max|x| = 2.54 on -127..127: scale = 0.02, zero point 0
    x = torch.tensor([-2.54, -0.031, 0.0, 1.0, 2.54])
    q, scale, zp = Q.quantize(x, 8, symmetric=True)
    assert scale.item() == pytest.approx(0.02)
    assert zp.item() == 0
    assert q.tolist() == [-127, -2, 0, 50, 127]  # -0.031 / 0.02 = -1.55 -> -2


def test_range_is_widened_to_contain_zero():
    # all positive values [2, 4]: the grid starts at 0, so zero_point = 0 and scale = 4/15
    q, scale, zp = Q.quantize(torch.tensor([2.1, 3.0, 4.0]), 4)
    assert zp.item() == 0 and scale.item() == pytest.approx(4 / 15)
    assert q.tolist() == [8, 11, 15]  # 7.875 -> 8, 11.25 -> 11
    # all negative values [-4, -2]: zero_point = qmax
    _, scale, zp = Q.quantize(torch.tensor([-4.0, -2.0]), 4)
    assert zp.item() == 15 and scale.item() == pytest.approx(4 / 15)


def test_all_zero_tensor():
    q, scale, zp = Q.quantize(torch.zeros(5), 8)
    assert scale.item() > 0 and q.tolist() == [zp.item()] * 5
    assert Q.dequantize(q, scale, zp).abs().max().item() == 0


def test_per_channel_hand_computed():
    w = torch.tensor([[1.0, -0.4], [0.05, 0.2]])  # channel 0 max|w| = 1, channel 1 max|w| = 0.2
    q, scale, zp = Q.quantize(w, 8, symmetric=True, axis=0)
    torch.testing.assert_close(scale, torch.tensor([1 / 127, 0.2 / 127]))
    assert zp.tolist() == [0, 0]
    assert q.tolist() == [[127, -51], [32, 127]]  # -0.4 * 127 = -50.8 -> -51, 0.05 / 0.2 * 127 = 31.75 -> 32
    # along the last axis instead
    _, scale1, _ = Q.quantize(w, 8, symmetric=True, axis=-1)
    torch.testing.assert_close(scale1, torch.tensor([1 / 127, 0.4 / 127]))


def test_compute_qparams_matches_formula():
    lo, hi = torch.tensor([-1.0, -0.2]), torch.tensor([3.0, 0.6])
    scale, zp = Q.compute_qparams(lo, hi, 4)
    torch.testing.assert_close(scale, (hi - lo) / 15)
    assert zp.tolist() == [4, 4]  # round(1 / (4/15)) = round(3.75) = 4; round(0.2 / (0.8/15)) = 4


# ----------------------------------------------------------------- against PyTorch's own ops


def test_fake_quantize_matches_torch_per_tensor():
    torch.manual_seed(0)
    x = torch.randn(1000) * 3
    for bits in (2, 4, 8):
        scale, zp = Q.compute_qparams(x.min(), x.max(), bits)
        qmin, qmax = Q.qrange(bits)
        ref = torch.fake_quantize_per_tensor_affine(x, scale.item(), int(zp), qmin, qmax)
        ours = Q.fake_quantize(x, bits)
        # torch multiplies by 1/scale, we divide: a rare tie may land one step apart
        assert ((ours - ref).abs() > 1e-5).float().mean() < 0.005


def test_fake_quantize_matches_torch_per_channel():
    torch.manual_seed(1)
    w = torch.randn(6, 3, 3, 3) * torch.rand(6, 1, 1, 1)
    scale, zp = Q.compute_qparams(*Q.minmax_range(w, axis=0), 4, symmetric=True)
    ref = torch.fake_quantize_per_channel_affine(w, scale, zp, 0, -7, 7)
    ours = Q.fake_quantize(w, 4, symmetric=True, axis=0)
    assert ((ours - ref).abs() > 1e-5).float().mean() < 0.005


def test_ste_gradient_matches_torch():
    x = torch.linspace(-3, 3, 101, requires_grad=True)
    y = Q.fake_quantize(x, 4, scale=torch.tensor(0.2), zero_point=torch.tensor(5))
    y.sum().backward()
    x2 = x.detach().clone().requires_grad_(True)
    torch.fake_quantize_per_tensor_affine(x2, 0.2, 5, 0, 15).sum().backward()
    torch.testing.assert_close(x.grad, x2.grad)


# ----------------------------------------------------------------- the straight-through estimator


def test_ste_identity_inside_zero_outside():
    # grid 0..15 with scale 0.1, zero point 0 covers [0, 1.5]
    x = torch.tensor([-0.5, 0.0, 0.33, 0.74, 1.5, 1.9], requires_grad=True)
    y = Q.fake_quantize(x, 4, scale=torch.tensor(0.1), zero_point=torch.tensor(0))
    torch.testing.assert_close(y.detach(), torch.tensor([0.0, 0.0, 0.3, 0.7, 1.5, 1.5]))
    g = torch.tensor([1.0, 2.0, 3.0, 4.0, 5.0, 6.0])
    y.backward(g)
    assert x.grad.tolist() == [0.0, 2.0, 3.0, 4.0, 5.0, 0.0]


def test_ste_own_range_passes_every_gradient():
    x = torch.randn(50, requires_grad=True)
    Q.fake_quantize(x, 3).sum().backward()
    assert torch.equal(x.grad, torch.ones(50))


# ----------------------------------------------------------------- hypothesis properties

finite = st.floats(-1e4, 1e4, allow_nan=False, allow_infinity=False, width=32)
vectors = arrays("float32", st.integers(1, 64), elements=finite)
bits = st.integers(2, 16)


@settings(max_examples=200, deadline=None)
@given(vectors, bits, st.booleans())
def test_round_trip_error_at_most_half_a_step(a, num_bits, symmetric):
    x = torch.from_numpy(a)
    q, scale, zp = Q.quantize(x, num_bits, symmetric=symmetric)
    err = (Q.dequantize(q, scale, zp) - x).abs().max().item()
    tol = scale.item() / 2 + 1e-5 * max(1.0, x.abs().max().item())  # float32 rounding slack
    assert err <= tol


@settings(max_examples=200, deadline=None)
@given(vectors, bits, st.booleans())
def test_q_within_range(a, num_bits, symmetric):
    q, _, zp = Q.quantize(torch.from_numpy(a), num_bits, symmetric=symmetric)
    qmin, qmax = Q.qrange(num_bits, symmetric=symmetric)
    assert qmin <= q.min().item() and q.max().item() <= qmax
    assert qmin <= zp.item() <= qmax


@settings(max_examples=100, deadline=None)
@given(vectors, bits)
def test_symmetric_zero_point_is_zero(a, num_bits):
    _, _, zp = Q.quantize(torch.from_numpy(a), num_bits, symmetric=True)
    assert zp.item() == 0


@settings(max_examples=100, deadline=None)
@given(vectors, bits)
def test_zero_is_exact(a, num_bits):
    x = torch.from_numpy(a)
    scale, zp = Q.compute_qparams(x.min(), x.max(), num_bits)
    q0 = Q.quantize_with(torch.zeros(1), scale, zp, num_bits)
    assert Q.dequantize(q0, scale, zp).item() == 0.0


@settings(max_examples=100, deadline=None)
@given(arrays("float32", st.tuples(st.integers(1, 5), st.integers(1, 6), st.integers(1, 4)), elements=finite),
       bits, st.booleans(), st.integers(0, 2))
def test_per_channel_equals_per_tensor_channel_by_channel(a, num_bits, symmetric, axis):
    x = torch.from_numpy(a)
    q, scale, zp = Q.quantize(x, num_bits, symmetric=symmetric, axis=axis)
    for c in range(x.shape[axis]):
        qc, sc, zc = Q.quantize(x.select(axis, c), num_bits, symmetric=symmetric)
        assert torch.equal(q.select(axis, c), qc)
        assert scale[c].item() == sc.item() and zp[c].item() == zc.item()
    torch.testing.assert_close(Q.dequantize(q, scale, zp, axis=axis),
                               Q.fake_quantize(x, num_bits, symmetric=symmetric, axis=axis))


def test_each_bit_halves_the_error():
    # on a fixed Gaussian sample the RMS error halves with every extra bit (the step halves)
    torch.manual_seed(0)
    x = torch.randn(5000)
    errs = [Q.quantization_error(x, b) for b in range(2, 11)]
    ratios = [e2 / e1 for e1, e2 in zip(errs, errs[1:])]
    assert all(0.4 < r < 0.6 for r in ratios[1:]), ratios
    assert ratios[0] < 0.6


# ----------------------------------------------------------------- observers and clipping


def test_percentile_range_ignores_outlier():
    x = torch.cat([torch.linspace(-1, 1, 9999), torch.tensor([100.0])])
    lo, hi = Q.percentile_range(x, 99.9)
    assert hi.item() < 1.01 and lo.item() == pytest.approx(-1, abs=0.01)
    lo, hi = Q.percentile_range(x, 100)
    assert (lo.item(), hi.item()) == (-1.0, 100.0)


def test_mse_range_beats_minmax_with_an_outlier():
    torch.manual_seed(0)
    x = torch.cat([torch.randn(2000), torch.tensor([10.0])])
    e_minmax = Q.quantization_error(x, 4, symmetric=True)
    e_mse = Q.quantization_error(x, 4, symmetric=True, method="mse")
    assert e_mse < 0.6 * e_minmax
    lo, hi = Q.mse_range(x, 4, symmetric=True)
    assert hi.item() < 5.0


def test_mse_range_never_worse_than_minmax():
    torch.manual_seed(2)
    w = torch.randn(8, 50) * torch.rand(8, 1)
    for b in (2, 4, 8):
        assert Q.quantization_error(w, b, axis=0, method="mse") <= Q.quantization_error(w, b, axis=0) + 1e-7


def test_mse_range_matches_brute_force():
    torch.manual_seed(3)
    w = torch.randn(4, 30) * torch.tensor([[0.1], [1.0], [3.0], [0.5]])
    w[2, 0] = 20.0  # an outlier in one channel
    lo, hi = Q.mse_range(w, 3, symmetric=True, axis=0, grid=20)
    for c in range(4):
        row = w[c]
        errs = []
        for i in range(1, 21):
            s, z = Q.compute_qparams(i / 20 * row.min(), i / 20 * row.max(), 3, symmetric=True)
            errs.append((Q.fake_quantize(row, 3, symmetric=True, scale=s, zero_point=z) - row).pow(2).mean())
        best = int(torch.stack(errs).argmin()) + 1
        assert hi[c].item() == pytest.approx(best / 20 * row.max().item())
        assert lo[c].item() == pytest.approx(best / 20 * row.min().item())
    assert hi[2].item() < 20.0



def test_mse_range_on_many_values_matches_brute_force_across_chunks():
    # 300,000 values: the 100 candidate ranges are tried a few at a time, in several chunks
    torch.manual_seed(4)
    x = torch.relu(torch.randn(300_000)) ** 2
    lo, hi = Q.mse_range(x, 4)
    errs = []
    for i in range(1, 101):
        s, z = Q.compute_qparams(0.0, i / 100 * x.max(), 4)
        errs.append((Q.fake_quantize(x, 4, scale=s, zero_point=z) - x).pow(2).mean())
    best = int(torch.stack(errs).argmin()) + 1
    assert best < 100  # the long tail is clipped
    assert hi.item() == pytest.approx(best / 100 * x.max().item()) and lo.item() == 0.0

def test_observer_minmax_keeps_extremes_and_others_average():
    obs = Q.Observer(8)
    assert not obs.ready
    obs.update(torch.tensor([-1.0, 2.0]))
    obs.update(torch.tensor([-3.0, 1.0]))
    assert (obs.min_val.item(), obs.max_val.item()) == (-3.0, 2.0)
    pct = Q.Observer(8, method="percentile", percentile=100)
    pct.update(torch.tensor([-1.0, 2.0]))
    pct.update(torch.tensor([-3.0, 1.0]))
    assert (pct.min_val.item(), pct.max_val.item()) == (-2.0, 1.5)
    scale, zp = obs.qparams()
    assert scale.item() == pytest.approx(5 / 255) and zp.item() == 153  # round(3 / (5/255)) = round(153)
    obs.reset()
    assert not obs.ready


# ----------------------------------------------------------------- BatchNorm folding and the QAT wrappers


def _student(seed=0):
    torch.manual_seed(seed)
    m = StudentCNN(width=4)
    with torch.no_grad():  # non-trivial BatchNorm statistics
        for bn in (m[1], m[5]):
            bn.running_mean.uniform_(-0.5, 0.5)
            bn.running_var.uniform_(0.5, 2.0)
            bn.weight.uniform_(0.5, 1.5)
            bn.bias.uniform_(-0.2, 0.2)
    return m.eval()


def test_fold_batchnorm_same_function():
    m = _student()
    x = torch.randn(4, 1, 28, 28)
    f = QAT.fold_batchnorm(m)
    torch.testing.assert_close(f(x), m(x), atol=1e-5, rtol=1e-5)
    assert isinstance(f[1], nn.Identity) and f[0].bias is not None
    assert isinstance(m[1], nn.BatchNorm2d)  # the original is untouched


def test_prepare_qat_wraps_and_copies():
    m = _student()
    before = copy.deepcopy(m.state_dict())
    q = QAT.prepare_qat(m, 4)
    assert isinstance(q[0], QAT.QConv2d) and isinstance(q[4], QAT.QConv2d) and isinstance(q[9], QAT.QLinear)
    assert set(QAT.quant_layers(q)) == {"0", "4", "9"}
    for k, v in m.state_dict().items():
        assert torch.equal(v, before[k])
    assert "num_bits=4" in repr(q)
    with pytest.raises(ValueError, match="already prepared"):
        QAT.prepare_qat(q, 4)


def test_qat_at_16_bits_nearly_float():
    m = _student()
    x = torch.randn(16, 1, 28, 28)
    loader = [(torch.randn(32, 1, 28, 28), torch.zeros(32))]
    q = QAT.calibrate(QAT.prepare_qat(m, 16), loader + [(x, None)])
    torch.testing.assert_close(q(x), m(x), atol=2e-3, rtol=1e-3)
    q8 = QAT.calibrate(QAT.prepare_qat(m, 8), loader + [(x, None)])
    assert (q8(x) - m(x)).abs().max() > (q(x) - m(x)).abs().max()


def test_weight_only_at_16_bits_and_weights_on_grid():
    m = _student()
    x = torch.randn(8, 1, 28, 28)
    q = QAT.prepare_qat(m, 16, quantize_activations=False)
    torch.testing.assert_close(q(x), m(x), atol=1e-3, rtol=1e-3)
    q2 = QAT.prepare_qat(m, 2, quantize_activations=False)
    w = q2[4].quantized_weight().detach()
    for c in range(w.shape[0]):
        assert len(torch.unique(w[c])) <= 3  # the ternary grid -s, 0, s
    for name, (qi, scale, zp) in QAT.integer_weights(q2).items():
        assert qi.min() >= -1 and qi.max() <= 1 and (zp == 0).all()


@pytest.mark.parametrize("method", ["minmax", "mse", "percentile"])
@pytest.mark.parametrize("per_channel", [True, False])
def test_wrapper_weight_equals_public_fake_quantize(method, per_channel):
    m = _student()
    q = QAT.prepare_qat(m, 3, quantize_activations=False, weight_method=method, per_channel=per_channel)
    axis = 0 if per_channel else None
    for layer in QAT.quant_layers(q).values():
        w = layer.module.weight.detach()
        lo, hi = Q.observe_range(w, method, 3, symmetric=True, axis=axis)
        s, z = Q.compute_qparams(lo, hi, 3, symmetric=True)
        ref = Q.fake_quantize(w, 3, symmetric=True, axis=axis, scale=s, zero_point=z)
        torch.testing.assert_close(layer.quantized_weight().detach(), ref)


def test_activation_fake_quant_uses_calibrated_grid():
    m = _student()
    q = QAT.calibrate(QAT.prepare_qat(m, 4), [(torch.randn(16, 1, 28, 28),)])
    x = torch.randn(4, 1, 28, 28)
    obs = q[0].act_observer
    s, z = obs.qparams()
    torch.testing.assert_close(q[0].quantize_input(x), Q.fake_quantize(x, 4, scale=s, zero_point=z))


def test_qat_gradients_reach_weights():
    m = _student()
    q = QAT.calibrate(QAT.prepare_qat(m, 4).train(), [(torch.randn(8, 1, 28, 28),)])
    q(torch.randn(8, 1, 28, 28)).sum().backward()
    assert q[0].module.weight.grad is not None and q[0].module.weight.grad.abs().sum() > 0
    assert q[9].module.weight.grad.abs().sum() > 0


def test_calibrate_sets_ranges_then_freezes():
    m = _student()
    q = QAT.prepare_qat(m, 8)
    with pytest.raises(ValueError, match="calibrate"):
        q(torch.randn(2, 1, 28, 28))
    x = torch.randn(8, 1, 28, 28)
    QAT.calibrate(q, [(x,)])
    obs = q[0].act_observer
    assert obs.min_val.item() == x.min().item() and obs.max_val.item() == x.max().item()
    q(torch.randn(8, 1, 28, 28) * 10)  # no longer observing: the range stays
    assert obs.max_val.item() == x.max().item()
    assert q[4].act_observer.min_val.item() >= 0  # after ReLU and max-pool


def test_weight_storage_bytes():
    m = StudentCNN()  # 72 + 1152 conv weights, 7840 + 10 linear (no conv biases)
    assert QAT.weight_storage_bytes(m) == 4 * (72 + 1152 + 7840 + 10)
    q = QAT.prepare_qat(m, 4)  # folding adds conv biases (8 + 16); scales: 8 + 16 + 10 channels
    assert QAT.weight_storage_bytes(q, 4) == (72 + 1152 + 7840) // 2 + 4 * (8 + 16 + 10) + 4 * (8 + 16 + 10)


# ----------------------------------------------------------------- bad input


@pytest.mark.parametrize("b", [0, 1, 17, 32, -3])
def test_bits_out_of_range(b):
    with pytest.raises(ValueError, match="between 2 and 16"):
        Q.quantize(torch.randn(3), b)
    with pytest.raises(ValueError, match="between 2 and 16"):
        QAT.prepare_qat(StudentCNN(), b)


@pytest.mark.parametrize("b", [8.0, "8", True, None])
def test_bits_wrong_type(b):
    with pytest.raises(TypeError, match="num_bits must be an int"):
        Q.qrange(b)


def test_empty_tensor():
    with pytest.raises(ValueError, match="empty"):
        Q.quantize(torch.empty(0))
    with pytest.raises(ValueError, match="empty"):
        Q.fake_quantize(torch.empty(3, 0))
    with pytest.raises(ValueError, match="empty"):
        Q.dequantize(torch.empty(0, dtype=torch.int32), 1.0, 0)


@pytest.mark.parametrize("bad", [float("nan"), float("inf"), -float("inf")])
def test_non_finite(bad):
    with pytest.raises(ValueError, match="NaN or inf"):
        Q.quantize(torch.tensor([0.0, bad]))
    with pytest.raises(ValueError, match="finite"):
        Q.compute_qparams(0.0, bad)


def test_axis_out_of_range_and_wrong_type():
    with pytest.raises(ValueError, match="axis=2 is out of range"):
        Q.quantize(torch.randn(3, 4), axis=2)
    with pytest.raises(ValueError, match="out of range"):
        Q.minmax_range(torch.randn(3), axis=-2)
    with pytest.raises(TypeError, match="axis must be None"):
        Q.quantize(torch.randn(3, 4), axis=0.0)


def test_not_a_float_tensor():
    with pytest.raises(TypeError, match="torch.Tensor"):
        Q.quantize([1.0, 2.0])
    with pytest.raises(TypeError, match="floating-point"):
        Q.quantize(torch.arange(4))
    with pytest.raises(TypeError, match="integers"):
        Q.dequantize(torch.randn(3), 1.0, 0)


def test_bad_qparams():
    with pytest.raises(ValueError, match="min_val must be <= max_val"):
        Q.compute_qparams(1.0, -1.0)
    with pytest.raises(ValueError, match="scale must be finite and > 0"):
        Q.quantize_with(torch.randn(3), torch.tensor(0.0), torch.tensor(0))
    with pytest.raises(ValueError, match="3 scales for 4 channels"):
        Q.dequantize(torch.zeros(4, 2, dtype=torch.int32), torch.ones(3), torch.zeros(3), axis=0)
    with pytest.raises(ValueError, match="per-tensor quantization needs one scale"):
        Q.dequantize(torch.zeros(4, dtype=torch.int32), torch.ones(4), torch.zeros(4))
    with pytest.raises(ValueError, match="both scale and zero_point"):
        Q.fake_quantize(torch.randn(3), scale=torch.tensor(1.0))


def test_bad_methods_and_models():
    with pytest.raises(ValueError, match="method must be one of"):
        Q.observe_range(torch.randn(3), "histogram")
    with pytest.raises(ValueError, match="percentile"):
        Q.percentile_range(torch.randn(3), 30)
    with pytest.raises(TypeError, match="nn.Module"):
        QAT.prepare_qat("model")
    with pytest.raises(TypeError, match="wraps an nn.Conv2d"):
        QAT.QConv2d(nn.Linear(2, 2))
    with pytest.raises(ValueError, match="no fake-quantized layers"):
        QAT.calibrate(StudentCNN(), [(torch.randn(1, 1, 28, 28),)])
    with pytest.raises(ValueError, match="no batches"):
        QAT.calibrate(QAT.prepare_qat(StudentCNN(), 8), [])
    with pytest.raises(ValueError, match="num_batches"):
        QAT.calibrate(QAT.prepare_qat(StudentCNN(), 8), [], num_batches=0)


# ----------------------------------------------------------------- the bit-width widget and its static twin


def test_quant_grid_frames_and_slider():
    pytest.importorskip("ipywidgets")
    from kdlib import widgets

    torch.manual_seed(0)
    w = torch.randn(200) * 0.3
    page = widgets.quant_grid_frames(w, bits=(2, 4, 8))
    assert page.count("data:image/png;base64") >= 3 and "font-awesome" not in page
    box = widgets.quant_grid_slider(w, num_bits=3)
    assert "3 bits -&gt; 7 levels" in box.caption.value
    box.slider.value = 2  # moving the slider redraws the figure and the caption
    assert "2 bits -&gt; 3 levels" in box.caption.value and len(box.image.value) > 1000
    with pytest.raises(ValueError, match="between 2 and 16"):
        widgets.quant_grid_frames(w, bits=(1, 4))
    with pytest.raises(ValueError, match="min_bits <= num_bits <= max_bits"):
        widgets.quant_grid_slider(w, num_bits=9)
    with pytest.raises(ValueError, match="NaN or inf"):
        widgets.quant_grid_frames(torch.tensor([0.0, float("nan")]))
