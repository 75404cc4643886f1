import pytest
import torch

from intrs.errors import CheckpointError, ConfigError
from intrs.models import ModelConfig, build_model, load_torchvision_state_dict

GRAY = ModelConfig("resnet20", 1, 10, (0.2860,), (0.3530,))
RGB = ModelConfig("resnet20", 3, 10, (0.4914, 0.4822, 0.4465), (0.2023, 0.1994, 0.2010))


@pytest.mark.parametrize("config,size", [(GRAY, 28), (RGB, 32), (GRAY, 8)])
def test_cifar_resnet_takes_any_channels_and_size(config, size):
    model = build_model(config).eval()
    assert model(torch.rand(2, config.in_channels, size, size)).shape == (2, 10)


def test_resnet20_has_the_cifar_layout():
    model = build_model(RGB)
    convs = [m for m in model.modules() if isinstance(m, torch.nn.Conv2d) and m.kernel_size == (3, 3)]
    assert len(convs) + 1 == 20  # 19 3x3 convolutions and the linear head
    assert [model.layer1[0].conv1.out_channels, model.layer2[0].conv1.out_channels,
            model.layer3[0].conv1.out_channels] == [16, 32, 64]


@pytest.mark.parametrize("depth", [7, 10, 2, 21])
def test_cifar_resnet_depth_must_be_6k_plus_2(depth):
    with pytest.raises(ConfigError, match="6k\\+2"):
        build_model(ModelConfig(f"resnet{depth}", 1, 10, (0.5,), (0.5,)))


def test_normalization_is_the_first_layer():
    model = build_model(RGB).eval()
    x = torch.rand(1, 3, 32, 32)
    mean, std = torch.tensor(RGB.mean).view(1, 3, 1, 1), torch.tensor(RGB.std).view(1, 3, 1, 1)
    model.normalize = torch.nn.Identity()
    expected = model((x - mean) / std)
    fresh = build_model(RGB).eval()
    fresh.load_state_dict(model.state_dict())
    assert torch.allclose(fresh(x), expected, atol=1e-5)
    assert not any("normalize" in key for key in fresh.state_dict())


def test_resnet50_matches_torchvision_parameter_count_and_names():
    model = build_model(ModelConfig("resnet50", 3, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    assert sum(p.numel() for p in model.parameters()) == 25_557_032  # torchvision's resnet50
    keys = model.state_dict().keys()
    assert {"conv1.weight", "bn1.running_mean", "layer1.0.downsample.0.weight", "layer4.2.conv3.weight",
            "fc.weight"} <= set(keys)
    assert len(keys) == 320


def test_torchvision_state_dict_loads_with_a_new_head(tmp_path):
    imagenet = build_model(ModelConfig("resnet50", 3, 1000, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    torch.save(imagenet.state_dict(), tmp_path / "resnet50.pth")
    caltech = build_model(ModelConfig("resnet50", 3, 101, (0.485, 0.456, 0.406), (0.229, 0.224, 0.225)))
    load_torchvision_state_dict(caltech, tmp_path / "resnet50.pth")
    assert torch.equal(caltech.layer3[1].conv2.weight, imagenet.layer3[1].conv2.weight)
    assert caltech.fc.weight.shape == (101, 2048)


def test_foreign_state_dict_is_rejected(tmp_path):
    torch.save({"something.weight": torch.zeros(3)}, tmp_path / "other.pth")
    with pytest.raises(CheckpointError, match="does not match the model's layout"):
        load_torchvision_state_dict(build_model(RGB), tmp_path / "other.pth")
    (tmp_path / "junk.pth").write_bytes(b"junk")
    with pytest.raises(CheckpointError, match="junk.pth is corrupt or not a PyTorch file"):
        load_torchvision_state_dict(build_model(RGB), tmp_path / "junk.pth")


def test_unknown_architecture_is_rejected():
    with pytest.raises(ConfigError, match="unknown architecture 'vgg16'"):
        build_model(ModelConfig("vgg16", 3, 10, (0.5,) * 3, (0.5,) * 3))
