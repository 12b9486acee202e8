"""Teacher and student model families.

Every CNN here is a flat `nn.Sequential` (conv, BatchNorm, ReLU, pool, ...,
Flatten, Linear), so that a reader can print it and see every layer, and so
that structured pruning can walk it layer by layer. The flatten size is
computed from the input shape, never typed by hand.
"""
from __future__ import annotations

import torch
from torch import nn

from .validation import check_int, check_list, check_model, check_number


def _check_shape(input_shape) -> tuple[int, int, int]:
    shape = tuple(check_list(input_shape, "input_shape", of=int, hint="(C, H, W) of positive ints"))
    if len(shape) != 3 or min(shape) < 1:
        raise ValueError(f"input_shape must be (C, H, W) of positive ints, got {input_shape!r}")
    return shape


def _check_positive(**kwargs) -> None:
    for k, v in kwargs.items():
        check_int(v, k, low=1)


def flat_features(layers: nn.Module, input_shape) -> int:
    """Number of features after running `layers` on one input of `input_shape`."""
    check_model(layers, "layers")
    input_shape = _check_shape(input_shape)
    try:
        with torch.no_grad():
            return int(layers(torch.zeros(1, *input_shape)).numel())
    except (RuntimeError, ValueError, TypeError, IndexError) as err:
        raise ValueError(f"the layers cannot run on an input of shape {input_shape}: "
                         f"{str(err).splitlines()[0] if str(err) else type(err).__name__}") from None


def _conv_block(c_in: int, c_out: int) -> list[nn.Module]:
    return [nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU()]


class TeacherCNN(nn.Sequential):
    """A VGG-style teacher: two double-conv blocks, each halving the resolution,
    then a two-layer classifier with dropout.

    With the defaults (width=32, MNIST 1x28x28) it has about 0.87 M parameters.
    Input (B, C, H, W) -> logits (B, num_classes).

    Introduced in: notebooks/04_teacher.ipynb
    """

    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10, width: int = 32,
                 hidden: int = 256, dropout: float = 0.3):
        C, H, W = _check_shape(input_shape)
        _check_positive(num_classes=num_classes, width=width, hidden=hidden)
        check_number(dropout, "dropout", low=0.0, high=1.0, high_open=True, hint="a probability")
        w = width
        features = [*_conv_block(C, w), *_conv_block(w, w), nn.MaxPool2d(2),
                    *_conv_block(w, 2 * w), *_conv_block(2 * w, 2 * w), nn.MaxPool2d(2), nn.Flatten()]
        n = flat_features(nn.Sequential(*features), (C, H, W))
        super().__init__(*features, nn.Dropout(dropout), nn.Linear(n, hidden), nn.ReLU(),
                         nn.Dropout(dropout), nn.Linear(hidden, num_classes))
        self.input_shape, self.num_classes, self.width = (C, H, W), num_classes, width


class StudentCNN(nn.Sequential):
    """A small CNN student: `depth` conv blocks (conv, BatchNorm, ReLU, max-pool),
    each doubling the channels, then one Linear layer.

    With the defaults (width=8, depth=2, MNIST) it has about 9 k parameters.
    Input (B, C, H, W) -> logits (B, num_classes).

    Introduced in: notebooks/01_edge_budgets.ipynb
    """

    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10, width: int = 8, depth: int = 2):
        C, H, W = _check_shape(input_shape)
        _check_positive(num_classes=num_classes, width=width, depth=depth)
        if min(H, W) < 2 ** depth:
            raise ValueError(f"input {H}x{W} is too small for depth={depth} (each block halves it); "
                             f"use depth <= {max(min(H, W).bit_length() - 1, 0)}")
        layers, c = [], C
        for i in range(depth):
            layers += [*_conv_block(c, width * 2 ** i), nn.MaxPool2d(2)]
            c = width * 2 ** i
        layers.append(nn.Flatten())
        n = flat_features(nn.Sequential(*layers), (C, H, W))
        super().__init__(*layers, nn.Linear(n, num_classes))
        self.input_shape, self.num_classes, self.width, self.depth = (C, H, W), num_classes, width, depth


class StudentMLP(nn.Sequential):
    """A multilayer perceptron student: Flatten, then Linear + ReLU per hidden size.

    Input (B, C, H, W) -> logits (B, num_classes).

    Introduced in: notebooks/04_teacher.ipynb
    """

    def __init__(self, input_shape=(1, 28, 28), num_classes: int = 10, hidden=(64,)):
        C, H, W = _check_shape(input_shape)
        if not isinstance(hidden, (tuple, list)):
            raise TypeError(f"hidden must be a tuple of layer sizes, e.g. (64,), got {hidden!r}")
        _check_positive(num_classes=num_classes, **{f"hidden[{i}]": h for i, h in enumerate(hidden)})
        layers, n = [nn.Flatten()], C * H * W
        for h in hidden:
            layers += [nn.Linear(n, h), nn.ReLU()]
            n = h
        super().__init__(*layers, nn.Linear(n, num_classes))
        self.input_shape, self.num_classes, self.hidden = (C, H, W), num_classes, tuple(hidden)


def resnet18_small(input_shape=(3, 32, 32), num_classes: int = 10) -> nn.Module:
    """torchvision's resnet18 adapted to small images: a 3x3 stride-1 stem and no
    max-pool, so a 32x32 input keeps enough resolution. Randomly initialised.
    """
    from torchvision.models import resnet18

    C, _, _ = _check_shape(input_shape)
    _check_positive(num_classes=num_classes)
    m = resnet18(weights=None, num_classes=num_classes)
    m.conv1 = nn.Conv2d(C, 64, 3, stride=1, padding=1, bias=False)
    m.maxpool = nn.Identity()
    return m


def mobilenet_v3_small_small(input_shape=(3, 32, 32), num_classes: int = 10) -> nn.Module:
    """torchvision's mobilenet_v3_small with a stride-1 first convolution for
    small images. Randomly initialised.
    """
    from torchvision.models import mobilenet_v3_small

    C, _, _ = _check_shape(input_shape)
    _check_positive(num_classes=num_classes)
    m = mobilenet_v3_small(weights=None, num_classes=num_classes)
    first = m.features[0][0]
    m.features[0][0] = nn.Conv2d(C, first.out_channels, 3, stride=1, padding=1, bias=False)
    return m


class Standardise(nn.Module):
    """The first layer of an exported model: raw pixels in [0, 1] -> (x - mean) / std per channel.

    With it, a file exported for a device takes the pixels as a camera or an image file gives
    them (8-bit values divided by 255), and the statistics of the training split travel inside
    the model instead of in a note beside it. Input and output (B, C, H, W).
    """

    def __init__(self, mean, std):
        super().__init__()
        mean = check_list(mean, "mean", of=(int, float), hint="one value per channel")
        std = check_list(std, "std", of=(int, float), hint="one value per channel")
        if len(mean) != len(std) or min(std) <= 0:
            raise ValueError(f"mean and std need one value per channel and std > 0, got {mean} and {std}")
        self.register_buffer("mean", torch.tensor(mean, dtype=torch.float32).view(1, -1, 1, 1))
        self.register_buffer("std", torch.tensor(std, dtype=torch.float32).view(1, -1, 1, 1))

    def forward(self, x):
        return (x - self.mean) / self.std


def with_standardise(model: nn.Module, normalisation) -> nn.Module:
    """`model` behind a `Standardise` layer (a new Sequential sharing its weights), or `model`
    itself when `normalisation` is None."""
    check_model(model)
    if normalisation is None:
        return model
    if not isinstance(normalisation, (tuple, list)) or len(normalisation) != 2:
        raise TypeError(f"normalisation must be (mean, std) with one value per channel in each, or None, "
                        f"got {normalisation!r}")
    return nn.Sequential(Standardise(*normalisation), model)


MODELS = {
    "teacher_cnn": TeacherCNN,
    "student_cnn": StudentCNN,
    "student_mlp": StudentMLP,
    "resnet18": resnet18_small,
    "mobilenet_v3_small": mobilenet_v3_small_small,
}


def build_model(name: str, input_shape=(1, 28, 28), num_classes: int = 10, **kwargs) -> nn.Module:
    """Build a model by name (a key of `MODELS`) for the given input shape."""
    if not isinstance(name, str) or name not in MODELS:
        raise ValueError(f"unknown model {name!r}; choose one of {', '.join(MODELS)}")
    return MODELS[name](input_shape=input_shape, num_classes=num_classes, **kwargs)
