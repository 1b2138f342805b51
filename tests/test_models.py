"""Architecture, state-dict layout, VGG truncation and load_model (the default models' parameter
counts: test_hubconf.py)."""

import os
import subprocess
import sys

import pytest
import torch

import checkpoint
import models
from conftest import ROOT, TINY


@pytest.mark.parametrize("scale", [2, 4, 8])
@pytest.mark.parametrize("size", [(7, 7), (13, 10), (24, 31)])
def test_srresnet_shapes_and_range(scale, size):
    model = models.SRResNet(**{**TINY, "scaling_factor": scale}).eval()
    h, w = size
    with torch.no_grad():
        out = model(torch.randn(2, 3, h, w))
    assert out.shape == (2, 3, h * scale, w * scale)
    assert out.min() >= -1 and out.max() <= 1  # tanh output


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


def test_truncated_vgg19_weights_from_a_local_file_or_a_clear_error_offline(tmp_path, monkeypatch):
    import torchvision

    features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
    path = tmp_path / "vgg19.pth"
    torch.save({f"features.{k}": v for k, v in features.state_dict().items()}, path)  # torchvision's key names
    vgg = models.TruncatedVGG19(2, 2, weights=torch.load(path, weights_only=True))
    assert torch.equal(vgg.truncated_vgg19[0].weight, features[0].weight)
    assert torch.equal(vgg.truncated_vgg19[7].bias, features[7].bias)

    def offline(*args, **kwargs):
        raise OSError("network is unreachable")
    monkeypatch.setattr(type(torchvision.models.VGG19_Weights.IMAGENET1K_V1), "get_state_dict", offline)
    with pytest.raises(RuntimeError, match="--vgg-weights PATH"):
        models.TruncatedVGG19(weights="imagenet")


def test_generator_initialised_from_srresnet(tmp_path):
    srresnet = models.SRResNet(**TINY)
    path = tmp_path / "s.pth"
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(srresnet), path)
    gen = models.Generator(**TINY)
    gen.initialize_with_srresnet(checkpoint.load_model(path))
    for k, v in srresnet.state_dict().items():
        assert torch.equal(gen.net.state_dict()[k], v)
    with pytest.raises(ValueError, match="arguments"):
        models.Generator(**{**TINY, "scaling_factor": 2}).initialize_with_srresnet(srresnet)


@pytest.mark.slow
def test_import_starts_no_work():
    """Importing any module or script (test.py and eval.py by path: their names clash with Python's)
    prints nothing, touches no GPU and does not import torchvision (slow to import; only the VGG loss
    needs it). One process for all of them."""
    code = ("import importlib.util, sys, models, utils, images, metrics, checkpoint, inference, datasets, training, "
            "evaluation, create_data_lists, train_srresnet, train_srgan, convert_checkpoint, bench, plot_log\n"
            "for name in ('test', 'eval'):\n"
            "    spec = importlib.util.spec_from_file_location('sr_' + name, name + '.py')\n"
            "    module = importlib.util.module_from_spec(spec)\n"
            "    spec.loader.exec_module(module)\n"
            "    assert callable(module.main)\n"
            "import torch; assert not torch.cuda.is_initialized(); "
            "assert 'torchvision' not in sys.modules, 'torchvision imported at import time'\n"
            "print('imported')")
    env = {k: v for k, v in os.environ.items() if k != "SR_DEBUG"}
    done = subprocess.run([sys.executable, "-c", code], cwd=ROOT, capture_output=True, text=True, timeout=120, env=env)
    assert done.returncode == 0 and done.stdout == "imported\n" and done.stderr == "", done.stderr


def test_models_imports_only_torch():
    import ast

    tree = ast.parse((ROOT / "models.py").read_text())
    imported = {alias.name.split(".")[0] for node in ast.walk(tree) if isinstance(node, (ast.Import, ast.ImportFrom))
                for alias in (node.names if isinstance(node, ast.Import) else [ast.alias(node.module or "")])}
    assert imported <= {"math", "torch", "torchvision"}, imported


@pytest.mark.parametrize("build, message", [
    (lambda: models.SRResNet(scaling_factor=1), "scaling_factor"),
    (lambda: models.SRResNet(scaling_factor=3), "scaling_factor"),
    (lambda: models.SRResNet(scaling_factor=16), "scaling_factor"),
    (lambda: models.SRResNet(n_blocks=10**9), "out of range"),
    (lambda: models.SRResNet(n_blocks=0), "out of range"),
    (lambda: models.SRResNet(small_kernel_size=4), "must be odd"),
    (lambda: models.SRResNet(large_kernel_size=2), "must be odd"),
    (lambda: models.Discriminator(n_blocks=0), "out of range"),
    (lambda: models.Discriminator(n_channels=0), "out of range"),
    (lambda: models.Discriminator(kernel_size=4), "must be odd"),
    (lambda: models.Discriminator(n_blocks=40), "exceeds"),
    (lambda: models.TruncatedVGG19(1, 3, weights=None), "VGG19 has no convolution"),
    (lambda: models.TruncatedVGG19(6, 1, weights=None), "VGG19 has no convolution"),
    (lambda: models.TruncatedVGG19(2, 3, weights=None), "VGG19 has no convolution"),
    (lambda: models.TruncatedVGG19(0, 1, weights=None), "VGG19 has no convolution")])
def test_sizes_are_checked_before_any_layer_is_built(build, message):
    with pytest.raises(ValueError, match=message):
        build()
