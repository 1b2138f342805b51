"""Architecture, parameter counts, state-dict layout, VGG truncation and load_model."""

import subprocess
import sys

import pytest
import torch

import models
import utils
from conftest import ROOT, TINY


def n_params(model):
    return sum(p.numel() for p in model.parameters())


def test_default_parameter_counts():
    assert n_params(models.SRResNet()) == 1_549_462
    assert n_params(models.Generator()) == 1_549_462
    assert n_params(models.Discriminator()) == 23_565_505


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("size", [(7, 7), (13, 10), (24, 31)])
def test_srresnet_shapes_and_range(scale, size):
    model = models.SRResNet(**{**TINY, "scaling_factor": scale}).eval()
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, 3, h * scale, w * scale)
    assert out.min() >= -1 and out.max() <= 1  # tanh output


@pytest.mark.parametrize("scale", [1, 3, 16])
def test_invalid_scale_rejected(scale):
    with pytest.raises(ValueError, match="scaling_factor"):
        models.SRResNet(scaling_factor=scale)


def test_state_dict_layout_matches_classic_names():
    keys = set(models.SRResNet().state_dict())
    for key in ["conv_block1.conv_block.0.weight", "conv_block1.conv_block.1.weight",  # PReLU
                "residual_blocks.15.conv_block1.conv_block.1.running_mean",
                "residual_blocks.0.conv_block2.conv_block.0.bias",
                "conv_block2.conv_block.1.weight", "subpixel_convolutional_blocks.1.conv.weight",
                "subpixel_convolutional_blocks.0.prelu.weight", "conv_block3.conv_block.0.weight"]:
        assert key in keys, key
    assert not any(k.startswith("residual_blocks.16.") for k in keys)
    gen_keys = set(models.Generator().state_dict())
    assert gen_keys == {"net." + k for k in keys}
    d_keys = set(models.Discriminator().state_dict())
    assert {"conv_blocks.0.conv_block.0.weight", "conv_blocks.7.conv_block.1.running_var",
            "fc1.weight", "fc2.bias"} <= d_keys
    assert "conv_blocks.0.conv_block.1.running_mean" not in d_keys  # no BN on the first block


def test_discriminator_fc_size_and_input_sizes():
    d = models.Discriminator(n_channels=8, fc_size=32).eval()
    assert d.fc1.out_features == 32 and d.fc2.in_features == 32
    for size in [(96, 96), (128, 100), (200, 150)]:
        assert d(torch.randn(2, 3, *size)).shape == (2, 1)


@pytest.mark.parametrize("i,j,end", [(5, 4, 36), (2, 2, 9), (1, 1, 2), (3, 4, 18)])
def test_truncated_vgg19_end(i, j, end):
    vgg = models.TruncatedVGG19(i, j, weights=None)
    assert len(vgg.truncated_vgg19) == end
    assert isinstance(vgg.truncated_vgg19[-1], torch.nn.ReLU)
    assert not any(p.requires_grad for p in vgg.parameters())
    vgg.train()
    assert not vgg.training


@pytest.mark.parametrize("i,j", [(1, 3), (6, 1), (2, 3), (0, 1)])
def test_truncated_vgg19_invalid(i, j):
    with pytest.raises(ValueError, match="VGG19 has no convolution"):
        models.TruncatedVGG19(i, j, weights=None)


def test_truncated_vgg19_local_weights_file(tmp_path):
    import torchvision

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)  # torchvision's key names
    vgg = models.TruncatedVGG19(2, 2, weights=str(path))
    assert torch.equal(vgg.truncated_vgg19[0].weight, features[0].weight)
    assert torch.equal(vgg.truncated_vgg19[7].bias, features[7].bias)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "bad.pth")
    with pytest.raises(ValueError, match="bad.pth"):
        models.TruncatedVGG19(2, 2, weights=str(tmp_path / "bad.pth"))


def test_imagenet_weights_offline_error_says_how(monkeypatch):
    from torchvision.models import VGG19_Weights

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(type(VGG19_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="--vgg-weights PATH"):
        models.TruncatedVGG19(weights="imagenet")


@pytest.mark.parametrize("cls", [models.SRResNet, models.Generator])
def test_load_model_round_trip(tmp_path, cls):
    torch.manual_seed(0)
    model = cls(**TINY)
    with torch.no_grad():  # non-trivial BN statistics so that eval mode matters
        for m in model.modules():
            if isinstance(m, torch.nn.BatchNorm2d):
                m.running_mean.uniform_(-0.5, 0.5)
                m.running_var.uniform_(0.5, 2)
    model.eval()
    path = tmp_path / "m.pth"
    utils.save_checkpoint(utils.inference_checkpoint(model), path)
    loaded = models.load_model(path)
    assert type(loaded) is cls and not loaded.training
    x = torch.randn(1, 3, 11, 9)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_model_from_a_cuda_saved_file_on_cpu(tmp_path, monkeypatch):
    """A file whose tensors are tagged 'cuda:0' (as when saved on a GPU) loads on a CPU-only machine."""
    model = models.SRResNet(**TINY).eval()
    path = tmp_path / "cuda.pth"
    if torch.cuda.is_available():
        utils.save_checkpoint(utils.inference_checkpoint(model.cuda()), path)
        model.cpu()
    else:
        # without a GPU, write the same file by tagging every storage with the CUDA location
        monkeypatch.setattr(torch.serialization, "location_tag", lambda storage: "cuda:0")
        ckpt = utils.inference_checkpoint(model)
        torch.save(ckpt, path)
        monkeypatch.undo()
        with pytest.raises(RuntimeError, match="CUDA"):
            torch.load(path, weights_only=True)  # what a plain load does on this machine
    loaded = models.load_model(path, device="cpu")
    x = torch.randn(1, 3, 8, 8)
    with torch.no_grad():
        assert torch.equal(loaded(x), model(x))


def test_load_model_refuses_discriminator_only(tmp_path):
    path = tmp_path / "d.pth"
    d = models.Discriminator(n_channels=8, fc_size=16)
    utils.save_checkpoint({"format_version": 1, "discriminator": utils.model_spec(d)}, path)
    with pytest.raises(ValueError, match="holds no super-resolution model"):
        models.load_model(path)


def test_generator_initialised_from_srresnet(tmp_path):
    srresnet = models.SRResNet(**TINY)
    path = tmp_path / "s.pth"
    utils.save_checkpoint(utils.inference_checkpoint(srresnet), path)
    gen = models.Generator(**TINY)
    gen.initialize_with_srresnet(path)
    for k, v in srresnet.state_dict().items():
        assert torch.equal(gen.net.state_dict()[k], v)
    with pytest.raises(ValueError, match="arguments"):
        models.Generator(**{**TINY, "scaling_factor": 2}).initialize_with_srresnet(path)


def test_import_starts_no_work():
    code = ("import sys, models, utils, datasets, training, create_data_lists, train_srresnet; "
            "import torch; assert not torch.cuda.is_initialized(); "
            "assert 'torchvision' not in sys.modules, 'torchvision imported at import time'")
    subprocess.run([sys.executable, "-c", code], cwd=ROOT, check=True, timeout=120)
