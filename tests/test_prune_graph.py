"""kdlib.prune_graph: structured pruning of the shapes users' models have, checked against
the unpruned model itself and against the book's from-scratch channel_prune."""
import sys
from pathlib import Path

import pytest
import torch
from torch import nn

from kdlib import prune, prune_graph
from kdlib.measure import count_params
from kdlib.models import StudentCNN
from kdlib.prune_graph import graph_channel_prune

sys.path.insert(0, str(Path(__file__).parent))
import pipeline_models as pm  # noqa: E402

pytest.importorskip("torch_pruning")


def _random_bn(model):
    g = torch.Generator().manual_seed(1)
    for m in model.modules():
        if isinstance(m, nn.BatchNorm2d):
            for t in (m.weight.data, m.bias.data, m.running_mean):
                t.copy_(torch.randn(t.shape, generator=g))
            m.running_var.copy_(torch.rand(m.running_var.shape, generator=g) + 0.5)
    return model


def _dead_channels(model, output_layer):
    """Make every channel c with c % 4 == 3 of every conv / hidden Linear exactly zero (filter, bias,
    BatchNorm scale and shift): the model computes the same without them, and they have the
    smallest filter norms, so pruning a quarter must remove exactly them and change nothing."""
    with torch.no_grad():
        for name, m in model.named_modules():
            if isinstance(m, (nn.Conv2d, nn.Linear, nn.BatchNorm2d)) and name != output_layer:
                dead = torch.arange(m.weight.shape[0]) % 4 == 3
                m.weight[dead] = 0
                if m.bias is not None:
                    m.bias[dead] = 0
    return model


OUTPUT_LAYER = {"nested": "4", "features_classifier": "classifier.4", "resnet_like": "head",
                "mobilenet_like": "5", "grouped": "9"}


@pytest.mark.parametrize("shape", pm.STUDENT_SHAPES)
def test_each_shape_loses_a_quarter_of_its_channels_and_computes_the_same(shape):
    torch.manual_seed(0)
    model = _dead_channels(_random_bn(getattr(pm, shape)()).eval(), OUTPUT_LAYER[shape])
    x = torch.randn(8, 3, 32, 32)
    result = graph_channel_prune(model, 0.25, x[:1])
    assert result.pruned and result.problem is None
    assert list(result.left_whole) == [OUTPUT_LAYER[shape]]
    convs = {n: m for n, m in model.named_modules() if isinstance(m, nn.Conv2d)}
    for name, new in result.model.named_modules():
        if isinstance(new, nn.Conv2d):
            assert new.out_channels == convs[name].out_channels * 3 // 4, name
    with torch.no_grad():
        torch.testing.assert_close(result.model(x), model(x), atol=1e-5, rtol=1e-5)
    assert count_params(result.model) < count_params(model)
    assert all(g["after"] == g["before"] * 3 // 4 for g in result.groups)


def test_the_residual_group_ties_the_stem_to_both_blocks():
    result = graph_channel_prune(pm.resnet_like().eval(), 0.25, torch.randn(1, 3, 32, 32))
    tied = next(g for g in result.groups if "stem.0" in g["layers"])
    assert sorted(tied["layers"]) == ["blocks.0.conv2", "blocks.2.conv2", "stem.0"]


def test_depthwise_and_grouped_convolutions_stay_valid():
    x = torch.randn(2, 3, 32, 32)
    mob = graph_channel_prune(pm.mobilenet_like().eval(), 0.25, x[:1]).model
    for m in mob.modules():
        if isinstance(m, nn.Conv2d) and m.kernel_size == (3, 3) and m.groups > 1:
            assert m.groups == m.in_channels == m.out_channels  # still depthwise
    grp = graph_channel_prune(pm.grouped().eval(), 0.25, x[:1]).model
    conv = grp[2]
    assert conv.groups == 4 and conv.in_channels % 4 == 0 and conv.out_channels % 4 == 0
    assert grp(x).shape == (2, 4)


@pytest.mark.parametrize("multiple_of, expected", [(1, [9, 18]), (8, [8, 16])])
def test_same_channels_and_outputs_as_the_books_channel_prune(multiple_of, expected):
    torch.manual_seed(0)
    student = _random_bn(StudentCNN((1, 28, 28), 10, width=12)).eval()
    x = torch.randn(16, 1, 28, 28)
    flat = prune.channel_prune(student, 0.25, x[:1], multiple_of=multiple_of)
    general = graph_channel_prune(student, 0.25, x[:1], multiple_of=multiple_of).model
    assert [m.out_channels for m in general.modules() if isinstance(m, nn.Conv2d)] == expected
    for a, b in zip(flat.state_dict().values(), general.state_dict().values()):
        assert torch.equal(a, b)  # the same channels kept, in the same order
    with torch.no_grad():
        assert torch.equal(flat(x), general(x))


def test_amount_zero_changes_nothing():
    model = pm.features_classifier().eval()
    x = torch.randn(4, 3, 32, 32)
    result = graph_channel_prune(model, 0.0, x[:1])
    assert not result.pruned and "nothing to remove" in result.problem
    with torch.no_grad():
        assert torch.equal(result.model(x), model(x))


def test_a_model_that_reads_channels_by_position_is_left_whole_with_the_reason():
    model = pm.unprunable().eval()
    result = graph_channel_prune(model, 0.25, torch.randn(1, 3, 32, 32))
    assert not result.pruned and "conv" in result.left_whole
    assert "fails to run" in result.left_whole["conv"] and "no group" in result.problem
    assert count_params(result.model) == count_params(model)
    assert result.model is not model


def test_without_torch_pruning_it_says_how_to_install_it(monkeypatch):
    monkeypatch.setattr(prune_graph, "torch_pruning_available", lambda: False)
    result = graph_channel_prune(pm.nested(), 0.25, torch.randn(1, 3, 32, 32))
    assert not result.pruned and "pip install torch-pruning" in result.problem


def test_bad_arguments():
    model, x = pm.nested(), torch.randn(1, 3, 32, 32)
    with pytest.raises(ValueError, match="amount"):
        graph_channel_prune(model, 1.0, x)
    with pytest.raises(TypeError, match="example_input"):
        graph_channel_prune(model, 0.5, [1, 2])
    with pytest.raises(ValueError, match="criterion"):
        graph_channel_prune(model, 0.5, x, criterion="l3")
    with pytest.raises(TypeError, match="model"):
        graph_channel_prune("net", 0.5, x)


def test_keep_count_hand_computed():
    assert prune.keep_count(12, 0.25) == 9 and prune.keep_count(12, 0.25, 8) == 8
    assert prune.keep_count(24, 0.25, 8) == 16 and prune.keep_count(4, 0.5, 8) == 4
    assert prune.keep_count(3, 0.99) == 1
