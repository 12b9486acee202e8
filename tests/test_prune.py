"""kdlib.prune against torch.nn.utils.prune, hand-built smaller models and hand-computed values."""
import copy
import math

import pytest
import torch
import torch.nn.utils.prune as tprune
from hypothesis import given, settings, strategies as st
from torch import nn
from torch.utils.data import TensorDataset

from kdlib.measure import count_macs, count_params
from kdlib.data import make_loader
from kdlib.models import StudentCNN, TeacherCNN, resnet18_small
from kdlib.prune import (channel_prune, channels_to_keep, check_amount, filter_norms, gradual_schedule,
                         is_pruned, magnitude_masks, magnitude_prune, make_permanent, prunable_layers,
                         prune_and_finetune, sparsity)

X1 = torch.zeros(1, 1, 28, 28)


def _student(seed=0, **kw):
    torch.manual_seed(seed)
    return _randomise_bn(StudentCNN(**kw)).eval()


def _randomise_bn(model):
    """Give every BatchNorm non-trivial statistics and affine parameters."""
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            n = m.num_features
            m.running_mean.copy_(torch.randn(n, generator=g))
            m.running_var.copy_(torch.rand(n, generator=g) + 0.5)
            m.weight.data.copy_(torch.randn(n, generator=g))
            m.bias.data.copy_(torch.randn(n, generator=g))
            m.num_batches_tracked.fill_(7)
    return model


def _n_weights(model):
    return sum(m.weight.numel() for m in prunable_layers(model).values())


def _n_zeros(model):
    return sum(int((m.weight == 0).sum()) for m in prunable_layers(model).values())


# ---------------------------------------------------------------- unstructured


@pytest.mark.parametrize("amount", [0.0, 0.3, 0.5, 0.9, 0.99])
def test_global_prune_exact_count_and_matches_torch(amount):
    ours, ref = _student(), _student()
    magnitude_prune(ours, amount, scope="global")
    params = [(m, "weight") for m in prunable_layers(ref).values()]
    tprune.global_unstructured(params, pruning_method=tprune.L1Unstructured, amount=amount)
    assert _n_zeros(ours) == round(amount * _n_weights(ours))
    for (name, a), b in zip(prunable_layers(ours).items(), prunable_layers(ref).values()):
        assert torch.equal(a.weight_mask, b.weight_mask), name
    assert sparsity(ours)["global"] == pytest.approx(round(amount * _n_weights(ours)) / _n_weights(ours))


@pytest.mark.parametrize("amount", [0.25, 0.7])
def test_layer_prune_exact_per_layer_and_matches_torch(amount):
    ours, ref = _student(), _student()
    magnitude_prune(ours, amount, scope="layer")
    sp = sparsity(ours)
    for name, m in prunable_layers(ref).items():
        tprune.l1_unstructured(m, "weight", amount=amount)
        n = m.weight.numel()
        assert sp["layers"][name] == round(amount * n) / n
        assert torch.equal(prunable_layers(ours)[name].weight_mask, m.weight_mask)


def test_global_and_layer_scopes_differ():
    a, b = _student(), _student()
    magnitude_prune(a, 0.8, scope="global")
    magnitude_prune(b, 0.8, scope="layer")
    la, lb = sparsity(a)["layers"], sparsity(b)["layers"]
    assert max(la.values()) - min(la.values()) > 0.2  # global: uneven across layers
    assert max(lb.values()) - min(lb.values()) < 0.01  # layer: even


@settings(max_examples=25, deadline=None)
@given(amount=st.floats(0, 0.999), scope=st.sampled_from(["global", "layer"]))
def test_sparsity_exact_for_any_amount(amount, scope):
    model = _student()
    magnitude_prune(model, amount, scope=scope)
    layers = prunable_layers(model)
    if scope == "global":
        assert _n_zeros(model) == round(amount * _n_weights(model))
    else:
        assert all(int((m.weight == 0).sum()) == round(amount * m.weight.numel()) for m in layers.values())
    before = sparsity(model)
    make_permanent(model)
    assert sparsity(model) == before


def test_make_permanent_bakes_masks_in():
    model = _student()
    magnitude_prune(model, 0.6)
    X = torch.randn(3, 1, 28, 28)
    expected = model(X)
    keys = set(model.state_dict())
    assert any(k.endswith("weight_orig") for k in keys) and any(k.endswith("weight_mask") for k in keys)
    assert is_pruned(model)
    make_permanent(model)
    assert not is_pruned(model)
    assert set(model.state_dict()) == set(_student().state_dict())
    torch.testing.assert_close(model(X), expected, rtol=0, atol=0)
    assert sparsity(model)["global"] == pytest.approx(round(0.6 * _n_weights(model)) / _n_weights(model))
    assert make_permanent(model) is model  # a second call changes nothing


def test_iterative_prune_grows_masks_and_hits_target():
    model = _student()
    magnitude_prune(model, 0.5)
    first = {n: m.weight_mask.clone() for n, m in prunable_layers(model).items()}
    # move the surviving weights, as fine-tuning would
    with torch.no_grad():
        for m in prunable_layers(model).values():
            m.weight_orig.mul_(torch.rand_like(m.weight_orig) + 0.5)
    magnitude_prune(model, 0.8)
    assert _n_zeros(model) == round(0.8 * _n_weights(model))
    for n, m in prunable_layers(model).items():
        assert bool((m.weight_mask <= first[n]).all()), f"layer {n} regrew a pruned weight"


def test_cannot_prune_back_to_lower_sparsity():
    model = _student()
    magnitude_prune(model, 0.8)
    with pytest.raises(ValueError, match="cannot regrow"):
        magnitude_prune(model, 0.5)


def test_masks_survive_training():
    torch.manual_seed(0)
    X, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    model = StudentCNN((1, 8, 8))
    magnitude_prune(model, 0.7)
    zeros = {n: m.weight == 0 for n, m in prunable_layers(model).items()}
    from kdlib.train import train

    train(model, make_loader(TensorDataset(X, y), 16, shuffle=True), num_epochs=2, lr=1e-2, progress=False)
    for n, m in prunable_layers(model).items():
        assert bool((m.weight[zeros[n]] == 0).all())
    assert sparsity(model)["global"] == pytest.approx(round(0.7 * _n_weights(model)) / _n_weights(model))


def test_sparsity_of_unpruned_model_counts_natural_zeros():
    model = nn.Sequential(nn.Linear(4, 2, bias=False), nn.Linear(2, 3))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.0, 1, 2, 0], [3, 0, 4, 5]]))
        model[1].weight.fill_(1.0)
    sp = sparsity(model)
    assert sp["layers"] == {"0": 3 / 8, "1": 0.0}
    assert sp["global"] == 3 / 14


def test_magnitude_masks_hand_computed():
    model = nn.Sequential(nn.Linear(3, 2, bias=False), nn.Linear(2, 1, bias=False))
    with torch.no_grad():
        model[0].weight.copy_(torch.tensor([[0.1, -5.0, 0.3], [2.0, -0.2, 0.05]]))
        model[1].weight.copy_(torch.tensor([[-0.15, 1.0]]))
    masks = magnitude_masks(model, 0.5)  # 8 weights: the 4 smallest are 0.05, 0.1, 0.15, 0.2
    assert masks["0"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert masks["1"].tolist() == [[0, 1]]
    layer = magnitude_masks(model, 0.5, scope="layer")  # 3 of 6, then 1 of 2
    assert layer["0"].tolist() == [[0, 1, 1], [1, 0, 0]]
    assert layer["1"].tolist() == [[0, 1]]


@pytest.mark.parametrize("bad", [-0.1, 1.0, 1.5, float("nan"), float("inf")])
def test_amount_out_of_range(bad):
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        magnitude_prune(_student(), bad)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        channel_prune(_student(), bad, X1)


@pytest.mark.parametrize("bad", ["0.5", None, True, [0.5]])
def test_amount_wrong_type(bad):
    with pytest.raises(TypeError, match="amount must be a number"):
        check_amount(bad)


def test_bad_scope_and_model():
    with pytest.raises(ValueError, match="scope must be"):
        magnitude_prune(_student(), 0.5, scope="model")
    with pytest.raises(TypeError, match="torch.nn.Module"):
        sparsity("not a model")
    with pytest.raises(ValueError, match="no Conv2d or Linear"):
        magnitude_prune(nn.Sequential(nn.ReLU()), 0.5)


# ---------------------------------------------------------------- structured


@pytest.mark.parametrize("make", [lambda: _student(), lambda: _randomise_bn(TeacherCNN()).eval()])
def test_channel_prune_zero_is_identity(make):
    model = make()
    X = torch.randn(4, 1, 28, 28)
    pruned = channel_prune(model, 0.0, X1)
    assert torch.equal(pruned(X), model(X))
    assert count_params(pruned) == count_params(model)


def test_channel_prune_smaller_and_runs_and_leaves_input_alone():
    model = _randomise_bn(TeacherCNN()).eval()
    before = copy.deepcopy(model.state_dict())
    pruned = channel_prune(model, 0.5, X1)
    assert pruned is not model
    assert count_params(pruned) < count_params(model)
    assert count_macs(pruned, X1) < count_macs(model, X1)
    assert pruned(torch.randn(5, 1, 28, 28)).shape == (5, 10)
    assert [m.out_channels for m in pruned if isinstance(m, nn.Conv2d)] == [16, 16, 32, 32]
    after = model.state_dict()
    assert before.keys() == after.keys() and all(torch.equal(before[k], after[k]) for k in before)
    assert [m.out_channels for m in model if isinstance(m, nn.Conv2d)] == [32, 32, 64, 64]
    assert not pruned.training


def test_channel_prune_matches_hand_built_smaller_model():
    """Pruning half the channels of StudentCNN(width=8) gives StudentCNN(width=4) with sliced weights."""
    big = _student()
    pruned = channel_prune(big, 0.5, X1)
    c1, bn1, c2, bn2, fc = big[0], big[1], big[4], big[5], big[9]
    k1 = torch.topk(c1.weight.abs().sum((1, 2, 3)), 4).indices.sort().values  # L1 norm of each filter
    k2 = torch.topk(c2.weight[:, k1].abs().sum((1, 2, 3)), 8).indices.sort().values
    small = StudentCNN(width=4).eval()
    with torch.no_grad():
        small[0].weight.copy_(c1.weight[k1])
        small[4].weight.copy_(c2.weight[k2][:, k1])
        for s_bn, b_bn, k in ((small[1], bn1, k1), (small[5], bn2, k2)):
            s_bn.weight.copy_(b_bn.weight[k])
            s_bn.bias.copy_(b_bn.bias[k])
            s_bn.running_mean.copy_(b_bn.running_mean[k])
            s_bn.running_var.copy_(b_bn.running_var[k])
            s_bn.num_batches_tracked.copy_(b_bn.num_batches_tracked)
        cols = torch.cat([torch.arange(c * 49, (c + 1) * 49) for c in k2.tolist()])  # 7x7 per channel
        small[9].weight.copy_(fc.weight[:, cols])
        small[9].bias.copy_(fc.bias)
    ps, ss = pruned.state_dict(), small.state_dict()
    assert ps.keys() == ss.keys()
    for k in ss:
        assert torch.equal(ps[k], ss[k]), k
    X = torch.randn(6, 1, 28, 28)
    assert torch.equal(pruned(X), small(X))


def test_channel_prune_drops_smallest_filters_l1_vs_l2():
    conv = nn.Conv2d(1, 3, (1, 2), bias=False)
    with torch.no_grad():  # filter norms: L1 = 2.0, 1.5, 1.8 ; L2 = 1.414, 1.5, 1.273
        conv.weight.copy_(torch.tensor([[1.0, 1.0], [1.5, 0.0], [0.9, 0.9]]).view(3, 1, 1, 2))
    torch.testing.assert_close(filter_norms(conv, "l1"), torch.tensor([2.0, 1.5, 1.8]))
    torch.testing.assert_close(filter_norms(conv, "l2"), torch.tensor([2 ** 0.5, 1.5, 0.9 * 2 ** 0.5]))
    assert channels_to_keep(conv, 1 / 3, "l1").tolist() == [0, 2]
    assert channels_to_keep(conv, 1 / 3, "l2").tolist() == [0, 1]
    assert channels_to_keep(conv, 0.99).tolist() == [0]  # at least one channel stays


def test_channel_prune_with_bias_pool_and_global_average():
    torch.manual_seed(0)
    model = nn.Sequential(nn.Conv2d(3, 6, 3, bias=True), nn.ReLU(), nn.Conv2d(6, 10, 3, stride=2, bias=True),
                          nn.BatchNorm2d(10), nn.ReLU(), nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(10, 4))
    _randomise_bn(model).eval()
    X = torch.randn(2, 3, 16, 16)
    assert torch.equal(channel_prune(model, 0.0, X[:1])(X), model(X))
    pruned = channel_prune(model, 0.5, X[:1], criterion="l2")
    assert [m.out_channels for m in pruned if isinstance(m, nn.Conv2d)] == [3, 5]
    assert pruned[-1].in_features == 5 and pruned(X).shape == (2, 4)


def test_conv_whose_output_is_the_output_is_left_whole():
    model = nn.Sequential(nn.Conv2d(1, 4, 3), nn.ReLU(), nn.Conv2d(4, 2, 1)).eval()
    pruned = channel_prune(model, 0.5, torch.zeros(1, 1, 8, 8))
    assert pruned[0].out_channels == 2 and pruned[2].out_channels == 2


@pytest.mark.parametrize("model, x, match", [
    (resnet18_small((3, 32, 32)), torch.zeros(1, 3, 32, 32), "ResNet is not a flat nn.Sequential.*residual"),
    (nn.Sequential(nn.Conv2d(4, 4, 3, groups=2), nn.ReLU(), nn.Conv2d(4, 2, 1)), torch.zeros(1, 4, 8, 8),
     "grouped convolution"),
    (nn.Sequential(nn.Sequential(nn.Conv2d(1, 2, 3)), nn.Conv2d(2, 2, 1)), torch.zeros(1, 1, 8, 8),
     "block with sub-layers"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Upsample(scale_factor=2), nn.Conv2d(2, 2, 1)), torch.zeros(1, 1, 8, 8),
     "Upsample"),
    (nn.Sequential(nn.Conv2d(1, 2, 3), nn.Linear(6, 3)), torch.zeros(1, 1, 8, 8), "without a Flatten"),
])
def test_channel_prune_refuses_what_it_cannot_follow(model, x, match):
    with pytest.raises(ValueError, match=match):
        channel_prune(model, 0.5, x)


def test_channel_prune_refuses_masked_model_and_bad_input():
    model = magnitude_prune(_student(), 0.5)
    with pytest.raises(ValueError, match="make_permanent"):
        channel_prune(model, 0.5, X1)
    with pytest.raises(TypeError, match="example_input must be a tensor"):
        channel_prune(_student(), 0.5, [1, 28, 28])
    with pytest.raises(ValueError, match="could not run on an input of shape"):
        channel_prune(_student(), 0.5, torch.zeros(1, 3, 28, 28))
    with pytest.raises(ValueError, match="criterion"):
        channel_prune(_student(), 0.5, X1, criterion="l0")


# ---------------------------------------------------------------- schedules


def test_gradual_schedule_closed_form():
    s = gradual_schedule(0.8, 4)
    expected = [0.8 - 0.8 * (1 - t / 4) ** 3 for t in (1, 2, 3, 4)]
    assert s == pytest.approx(expected)
    assert s[0] == pytest.approx(0.8 * (1 - 27 / 64)) and s[-1] == pytest.approx(0.8)
    assert all(a < b for a, b in zip(s, s[1:]))
    assert gradual_schedule(0.9, 2, initial=0.5) == pytest.approx([0.9 - 0.4 / 8, 0.9])
    with pytest.raises(ValueError, match="num_steps"):
        gradual_schedule(0.5, 0)
    with pytest.raises(ValueError, match="must not exceed"):
        gradual_schedule(0.5, 3, initial=0.6)


def _tiny_loader():
    torch.manual_seed(0)
    X, y = torch.randn(64, 1, 8, 8), torch.randint(0, 10, (64,))
    return make_loader(TensorDataset(X, y), 32, shuffle=True), make_loader(TensorDataset(X, y), 64)


# the teacher here is an untrained copy: the test checks the plumbing, not what is learnt
@pytest.mark.filterwarnings("ignore::kdlib.guards.WeakTeacherWarning")
@pytest.mark.parametrize("use_teacher", [False, True])
def test_prune_and_finetune_unstructured(use_teacher):
    loader, val = _tiny_loader()
    torch.manual_seed(0)
    model = StudentCNN((1, 8, 8)).eval()
    before = copy.deepcopy(model.state_dict())
    teacher = copy.deepcopy(model) if use_teacher else None
    pruned, log = prune_and_finetune(model, [0.5, 0.75], loader, teacher=teacher, val_loader=val, lr=1e-2)
    assert [r["target"] for r in log] == [0.5, 0.75]
    assert sparsity(pruned)["global"] == pytest.approx(round(0.75 * _n_weights(model)) / _n_weights(model))
    assert not is_pruned(pruned)
    assert all(0 <= r["acc_pruned"] <= 1 and 0 <= r["acc_tuned"] <= 1 for r in log)
    assert all(torch.equal(before[k], v) for k, v in model.state_dict().items())


def test_prune_and_finetune_structured():
    loader, _ = _tiny_loader()
    torch.manual_seed(0)
    model = StudentCNN((1, 8, 8)).eval()
    x = torch.zeros(1, 1, 8, 8)
    pruned, log = prune_and_finetune(model, [0.25, 0.5], loader, structured=True, example_input=x)
    assert [m.out_channels for m in pruned if isinstance(m, nn.Conv2d)] == [4, 8]
    assert log[0]["params"] > log[1]["params"] == count_params(pruned)
    with pytest.raises(ValueError, match="example_input"):
        prune_and_finetune(model, [0.5], loader, structured=True)
    with pytest.raises(ValueError, match="increasing"):
        prune_and_finetune(model, [0.5, 0.3], loader)
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        prune_and_finetune(model, [0.5, 1.0], loader)


def test_channel_prune_fraction_rounding():
    model = _student()
    for amount in (0.1, 0.3, 0.6, 0.9):
        pruned = channel_prune(model, amount, X1)
        outs = [m.out_channels for m in pruned if isinstance(m, nn.Conv2d)]
        assert outs == [max(1, c - round(amount * c)) for c in (8, 16)]
        assert math.isclose(pruned[-1].in_features, outs[-1] * 49)


def test_channel_prune_multiple_of_rounds_kept_channels():
    model = _student(width=12)  # convs of 12 and 24 channels
    counts = lambda m: [c.out_channels for c in m if isinstance(c, nn.Conv2d)]
    assert counts(channel_prune(model, 0.25, X1)) == [9, 18]
    assert counts(channel_prune(model, 0.25, X1, multiple_of=8)) == [8, 16]   # nearest multiples of 8
    assert counts(channel_prune(model, 0.1, X1, multiple_of=8)) == [8, 24]    # 11 -> 8, 22 -> 24
    assert counts(channel_prune(model, 0.9, X1, multiple_of=8)) == [8, 8]     # never below one block
    assert counts(channel_prune(model, 0.25, X1, multiple_of=16)) == [12, 16]  # 12 < 16: left whole
    # the same filters win: the kept ones are the largest-norm ones, whatever the count
    conv = model[0]
    keep = channels_to_keep(conv, 0.25, multiple_of=8)
    assert torch.equal(keep, torch.topk(filter_norms(conv), 8).indices.sort().values)
    pruned = channel_prune(model, 0.25, X1, multiple_of=8)
    assert pruned(torch.randn(2, 1, 28, 28)).shape == (2, 10)
    assert math.isclose(pruned[-1].in_features, 16 * 49)


@pytest.mark.parametrize("bad, error", [(0, ValueError), (-8, ValueError), (2.5, TypeError), (True, TypeError),
                                        ("8", TypeError)])
def test_channel_prune_multiple_of_refuses_bad_values(bad, error):
    with pytest.raises(error, match="multiple_of must be a positive int"):
        channel_prune(_student(), 0.25, X1, multiple_of=bad)
    with pytest.raises(error, match="multiple_of"):
        channels_to_keep(_student()[0], 0.25, multiple_of=bad)


# ---------------------------------------------------------------- the chapter's widget


def test_weight_tiles_places_each_kernel():
    from kdlib.widgets import weight_tiles

    w = torch.arange(2 * 3 * 2 * 2, dtype=torch.float32).view(2, 3, 2, 2)  # (C_out, C_in, kH, kW)
    grid = weight_tiles(w)
    assert grid.shape == (3 * 3 - 1, 2 * 3 - 1)  # one tile row per input channel, one column per output
    for o in range(2):
        for i in range(3):
            assert (grid[i * 3:i * 3 + 2, o * 3:o * 3 + 2] == w[o, i].numpy()).all()
    assert math.isnan(grid[2, 0]) and math.isnan(grid[0, 2])  # gaps between tiles
    assert (weight_tiles(torch.ones(3, 4)) == 1).all()
    with pytest.raises(ValueError, match="conv"):
        weight_tiles(torch.ones(2, 2, 2))


def test_sparsity_widget_blanks_exactly_the_pruned_weights():
    import matplotlib

    matplotlib.use("Agg")
    import re

    from kdlib import widgets

    torch.manual_seed(0)
    w = torch.randn(4, 2, 3, 3)
    kept = widgets._survivors(w, 0.75)
    with torch.no_grad():
        layer = nn.Conv2d(2, 4, 3)
        layer.weight.copy_(w)
    tprune.l1_unstructured(layer, "weight", amount=0.75)  # torch's reference mask
    assert torch.equal(torch.isnan(kept), layer.weight_mask == 0)
    box = widgets.sparsity_slider(w, name="conv", sparsity=0.5)
    assert "the 36 weights" in box.caption.value
    box.slider.value = 0.9
    assert "the 65 weights" in box.caption.value and bytes(box.image.value).startswith(b"\x89PNG")
    html = widgets.sparsity_frames(w, name="conv", sparsities=(0, 0.5, 0.9))
    assert len(re.findall(r'frames\[\d+\] = "data:image/png;base64,', html)) == 3
    with pytest.raises(ValueError, match=r"\[0, 1\)"):
        widgets.sparsity_frames(w, sparsities=(0, 1.0))
    with pytest.raises(ValueError, match="Linear"):
        widgets.sparsity_frames(torch.ones(5), sparsities=(0, 0.5))
