"""Model factories for the pipeline and pruning tests, shaped like the models users have.

The pipeline imports them as `pipeline_models:NAME` (the tests folder is on sys.path under
pytest) or as `path/to/pipeline_models.py:NAME`. Every factory takes `input_shape` and
`num_classes`, as the pipeline passes them.
"""
import torch
from torch import nn

from kdlib.models import TeacherCNN


def small_teacher(input_shape=(1, 8, 8), num_classes=10):
    return TeacherCNN(input_shape, num_classes, width=8, hidden=32)


def _block(c_in, c_out):
    return nn.Sequential(nn.Conv2d(c_in, c_out, 3, padding=1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU())


class FeaturesClassifier(nn.Module):
    """torchvision's VGG / AlexNet shape: a `features` Sequential, a pool, a `classifier` Sequential."""

    def __init__(self, input_shape=(3, 32, 32), num_classes=4, width=8):
        super().__init__()
        C = input_shape[0]
        self.features = nn.Sequential(_block(C, width), nn.MaxPool2d(2), _block(width, 2 * width), nn.MaxPool2d(2))
        self.pool = nn.AdaptiveAvgPool2d(2)
        self.classifier = nn.Sequential(nn.Flatten(), nn.Linear(8 * width, 32), nn.ReLU(), nn.Dropout(0.1),
                                        nn.Linear(32, num_classes))

    def forward(self, x):
        return self.classifier(self.pool(self.features(x)))


def nested(input_shape=(3, 32, 32), num_classes=4):
    """Sequentials inside a Sequential (blocks of blocks)."""
    C = input_shape[0]
    return nn.Sequential(nn.Sequential(_block(C, 8), nn.MaxPool2d(2)), nn.Sequential(_block(8, 16), _block(16, 16)),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(16, num_classes))


def features_classifier(input_shape=(3, 32, 32), num_classes=4):
    return FeaturesClassifier(input_shape, num_classes)


class Residual(nn.Module):
    def __init__(self, c):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)
        self.conv2, self.bn2 = nn.Conv2d(c, c, 3, padding=1, bias=False), nn.BatchNorm2d(c)

    def forward(self, x):
        return torch.relu(x + self.bn2(self.conv2(torch.relu(self.bn1(self.conv1(x))))))


class ResNetLike(nn.Module):
    """A stem, two residual blocks (the skip connection ties their channels together), a head."""

    def __init__(self, input_shape=(3, 32, 32), num_classes=4, width=16):
        super().__init__()
        self.stem = _block(input_shape[0], width)
        self.blocks = nn.Sequential(Residual(width), nn.MaxPool2d(2), Residual(width))
        self.head = nn.Linear(width, num_classes)

    def forward(self, x):
        return self.head(self.blocks(self.stem(x)).mean((2, 3)))


def resnet_like(input_shape=(3, 32, 32), num_classes=4):
    return ResNetLike(input_shape, num_classes)


def _separable(c_in, c_out, stride=1):
    """MobileNet's block: a depthwise 3x3 (groups = channels), then a pointwise 1x1."""
    return nn.Sequential(nn.Conv2d(c_in, c_in, 3, stride, 1, groups=c_in, bias=False), nn.BatchNorm2d(c_in),
                         nn.ReLU6(), nn.Conv2d(c_in, c_out, 1, bias=False), nn.BatchNorm2d(c_out), nn.ReLU6())


def mobilenet_like(input_shape=(3, 32, 32), num_classes=4):
    """Depthwise separable convolutions, as in MobileNet."""
    C = input_shape[0]
    return nn.Sequential(_block(C, 16), _separable(16, 32, 2), _separable(32, 32, 2),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


def grouped(input_shape=(3, 32, 32), num_classes=4):
    """A grouped convolution (groups=4, as in ResNeXt or ShuffleNet) between two plain ones."""
    C = input_shape[0]
    return nn.Sequential(_block(C, 16), nn.MaxPool2d(2), nn.Conv2d(16, 32, 3, padding=1, groups=4, bias=False),
                         nn.BatchNorm2d(32), nn.ReLU(), nn.Conv2d(32, 32, 1), nn.ReLU(),
                         nn.AdaptiveAvgPool2d(1), nn.Flatten(), nn.Linear(32, num_classes))


class Unprunable(nn.Module):
    """A student whose forward() reorders its channels with a fixed index list: no graph shows
    that those 8 positions must stay, so pruning cannot be checked to be safe and is refused."""

    def __init__(self, input_shape=(3, 32, 32), num_classes=4):
        super().__init__()
        self.conv = nn.Conv2d(input_shape[0], 8, 3, padding=1)
        self.head = nn.Linear(8, num_classes)
        self.register_buffer("order", torch.arange(7, -1, -1))

    def forward(self, x):
        h = torch.relu(self.conv(x))[:, self.order]  # (B, 8, H, W), channels in reverse order
        return self.head(h.mean((2, 3)))


def unprunable(input_shape=(3, 32, 32), num_classes=4):
    return Unprunable(input_shape, num_classes)


STUDENT_SHAPES = ("nested", "features_classifier", "resnet_like", "mobilenet_like", "grouped")


def four_classes(input_shape=(3, 32, 32)):
    """A student that always predicts 4 classes, whatever the data has (it takes no num_classes)."""
    return grouped(input_shape, 4)
