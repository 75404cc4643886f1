"""Float base classifiers: the CIFAR ResNet (depth 6k+2) and ResNet-50 in torchvision's layout.

Every model takes images in [0, 1] (SPEC section 1) and normalizes them per
channel as its first layer, so that noise is added in pixel units before
normalization (Cohen's convention). The normalization constants live in the
model's config, not in its state dict, so a torchvision-format ResNet-50 state
dict loads as it is.
"""

from __future__ import annotations

import re
from dataclasses import asdict, dataclass
from pathlib import Path

import torch
from torch import nn

from .errors import CheckpointError, ConfigError


@dataclass(frozen=True)
class ModelConfig:
    """Everything needed to rebuild a model: architecture, input shape, classes, normalization."""

    arch: str
    in_channels: int
    num_classes: int
    mean: tuple[float, ...]
    std: tuple[float, ...]
    width: int = 16  # channels of the CIFAR ResNet's first stage (ResNet-50 ignores it)

    def to_dict(self) -> dict:
        return asdict(self)

    @classmethod
    def from_dict(cls, data: dict) -> "ModelConfig":
        return cls(**{**data, "mean": tuple(data["mean"]), "std": tuple(data["std"])})


class Normalize(nn.Module):
    """(x - mean) / std per channel: the first layer of every intrs model."""

    def __init__(self, mean: tuple[float, ...], std: tuple[float, ...]):
        super().__init__()
        if len(mean) != len(std) or any(s <= 0 for s in std):
            raise ConfigError(f"normalization needs one positive std per mean, got mean={mean}, std={std}")
        self.register_buffer("mean", torch.tensor(mean).view(1, -1, 1, 1), persistent=False)
        self.register_buffer("std", torch.tensor(std).view(1, -1, 1, 1), persistent=False)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        return (x - self.mean) / self.std


def _conv3x3(cin: int, cout: int, stride: int = 1) -> nn.Conv2d:
    return nn.Conv2d(cin, cout, 3, stride=stride, padding=1, bias=False)


def _downsample(cin: int, cout: int, stride: int) -> nn.Module | None:
    if stride == 1 and cin == cout:
        return None
    return nn.Sequential(nn.Conv2d(cin, cout, 1, stride=stride, bias=False), nn.BatchNorm2d(cout))


class BasicBlock(nn.Module):
    """Two 3x3 convolutions and a shortcut (He et al. 2016); 1x1 projection when the shape changes."""

    expansion = 1

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = _conv3x3(cin, planes, stride), nn.BatchNorm2d(planes)
        self.relu = nn.ReLU(inplace=True)
        self.conv2, self.bn2 = _conv3x3(planes, planes), nn.BatchNorm2d(planes)
        self.downsample = _downsample(cin, planes, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.bn2(self.conv2(out))
        return self.relu(out + identity)


class Bottleneck(nn.Module):
    """torchvision's ResNet-50 bottleneck (stride on the 3x3 convolution, 'ResNet v1.5')."""

    expansion = 4

    def __init__(self, cin: int, planes: int, stride: int = 1):
        super().__init__()
        self.conv1, self.bn1 = nn.Conv2d(cin, planes, 1, bias=False), nn.BatchNorm2d(planes)
        self.conv2, self.bn2 = _conv3x3(planes, planes, stride), nn.BatchNorm2d(planes)
        self.conv3 = nn.Conv2d(planes, planes * 4, 1, bias=False)
        self.bn3 = nn.BatchNorm2d(planes * 4)
        self.relu = nn.ReLU(inplace=True)
        self.downsample = _downsample(cin, planes * 4, stride)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        identity = x if self.downsample is None else self.downsample(x)
        out = self.relu(self.bn1(self.conv1(x)))
        out = self.relu(self.bn2(self.conv2(out)))
        out = self.bn3(self.conv3(out))
        return self.relu(out + identity)


def _stage(block: type, cin: int, planes: int, blocks: int, stride: int) -> tuple[nn.Sequential, int]:
    layers = []
    for i in range(blocks):
        layers.append(block(cin, planes, stride if i == 0 else 1))
        cin = planes * block.expansion
    return nn.Sequential(*layers), cin


class CifarResNet(nn.Module):
    """The CIFAR ResNet of depth 6k+2 (ResNet-20: k = 3), as in bearpaw/pytorch-classification.

    Three stages of k basic blocks with width, 2*width, 4*width channels, global
    average pooling and a linear head. Any input size and channel count works
    (28x28x1 Fashion-MNIST as well as 32x32x3 CIFAR-10).
    """

    def __init__(self, config: ModelConfig, depth: int):
        super().__init__()
        if depth < 8 or (depth - 2) % 6:
            raise ConfigError(f"CIFAR ResNet depth must be 6k+2 with k >= 1 (8, 14, 20, 32, ...), got {depth}")
        blocks, w = (depth - 2) // 6, config.width
        self.normalize = Normalize(config.mean, config.std)
        self.conv1, self.bn1 = _conv3x3(config.in_channels, w), nn.BatchNorm2d(w)
        self.relu = nn.ReLU(inplace=True)
        self.layer1, cin = _stage(BasicBlock, w, w, blocks, 1)
        self.layer2, cin = _stage(BasicBlock, cin, 2 * w, blocks, 2)
        self.layer3, cin = _stage(BasicBlock, cin, 4 * w, blocks, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, config.num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.relu(self.bn1(self.conv1(self.normalize(x))))
        x = self.layer3(self.layer2(self.layer1(x)))
        return self.fc(torch.flatten(self.avgpool(x), 1))


class ResNet50(nn.Module):
    """ResNet-50 with torchvision's module names, so its state dicts load unchanged."""

    def __init__(self, config: ModelConfig):
        super().__init__()
        self.normalize = Normalize(config.mean, config.std)
        self.conv1 = nn.Conv2d(config.in_channels, 64, 7, stride=2, padding=3, bias=False)
        self.bn1, self.relu = nn.BatchNorm2d(64), nn.ReLU(inplace=True)
        self.maxpool = nn.MaxPool2d(3, stride=2, padding=1)
        self.layer1, cin = _stage(Bottleneck, 64, 64, 3, 1)
        self.layer2, cin = _stage(Bottleneck, cin, 128, 4, 2)
        self.layer3, cin = _stage(Bottleneck, cin, 256, 6, 2)
        self.layer4, cin = _stage(Bottleneck, cin, 512, 3, 2)
        self.avgpool = nn.AdaptiveAvgPool2d(1)
        self.fc = nn.Linear(cin, config.num_classes)
        _init_weights(self)

    def forward(self, x: torch.Tensor) -> torch.Tensor:
        x = self.maxpool(self.relu(self.bn1(self.conv1(self.normalize(x)))))
        x = self.layer4(self.layer3(self.layer2(self.layer1(x))))
        return self.fc(torch.flatten(self.avgpool(x), 1))


def _init_weights(model: nn.Module) -> None:
    for m in model.modules():
        if isinstance(m, nn.Conv2d):
            nn.init.kaiming_normal_(m.weight, mode="fan_out", nonlinearity="relu")
        elif isinstance(m, nn.BatchNorm2d):
            nn.init.ones_(m.weight)
            nn.init.zeros_(m.bias)


ARCHITECTURES = "resnet20 (or any CIFAR resnet<6k+2>: resnet8, resnet14, resnet32, ...) or resnet50"


def build_model(config: ModelConfig) -> nn.Module:
    """A freshly initialised model for ``config`` (weights from torch's global generator)."""
    if config.in_channels < 1 or config.num_classes < 2:
        raise ConfigError(f"a model needs >= 1 input channel and >= 2 classes, got {config}")
    if len(config.mean) != config.in_channels:
        raise ConfigError(f"{len(config.mean)} normalization means for {config.in_channels} input channels")
    if config.arch == "resnet50":
        return ResNet50(config)
    match = re.fullmatch(r"resnet(\d+)", config.arch)
    if match:
        return CifarResNet(config, int(match.group(1)))
    raise ConfigError(f"unknown architecture {config.arch!r}: use {ARCHITECTURES}")


def read_torch_file(path: str | Path, what: str, fix: str):
    """torch.load of a local file with weights_only=True (no code unpickled); user errors as CheckpointError."""
    path = Path(path)
    if not path.is_file():
        raise CheckpointError(f"{what} {path} not found: {fix}")
    try:
        return torch.load(path, map_location="cpu", weights_only=True)
    except Exception as exc:  # torch raises many types for corrupt or foreign files
        raise CheckpointError(f"{what} {path} is corrupt or not a PyTorch file ({type(exc).__name__}); {fix}") from None


def load_torchvision_state_dict(model: nn.Module, path: str | Path) -> None:
    """Load a torchvision-format ResNet state dict from a local file into ``model``.

    The classifier head is kept from ``model`` when its shape differs (a 1000-class
    ImageNet head on a 101-class Caltech model), as fine-tuning from a pretrained
    backbone requires.
    """
    state = read_torch_file(path, "pretrained weights", "pass a local torchvision state dict file")
    if isinstance(state, dict) and "state_dict" in state:
        state = state["state_dict"]
    own = model.state_dict()
    if not isinstance(state, dict) or not all(isinstance(v, torch.Tensor) for v in state.values()):
        raise CheckpointError(f"{path} does not hold a state dict of tensors")
    for head in ("fc.weight", "fc.bias"):
        if head in state and state[head].shape != own[head].shape:
            state[head] = own[head]
    missing = sorted(set(own) - set(state))
    unexpected = sorted(set(state) - set(own))
    bad_shapes = [k for k in own if k in state and state[k].shape != own[k].shape]
    if missing or unexpected or bad_shapes:
        raise CheckpointError(f"{path} does not match the model's layout: missing {missing[:3]}, "
                              f"unexpected {unexpected[:3]}, wrong shapes {bad_shapes[:3]}")
    model.load_state_dict(state)
