"""torch.hub entry points: the shipped x4 SRResNet and the paper's SRGAN networks.

    model = torch.hub.load("path/to/clone", "srresnet", source="local", pretrained=True)  # a clone
    model = torch.hub.load("owner/name", "srresnet", pretrained=True)  # a copy published on GitHub as owner/name

The pretrained weights are ``checkpoints/srresnet_x4.pth`` (``srresnet``) and
``checkpoints/srgan_mse_x4.pth`` (``srgan``) of the repository itself, so nothing
beyond the repository is downloaded. Models take ImageNet-normalised RGB (N, 3, h, w) and return
(N, 3, h * s, w * s) in [-1, 1]; ``inference.upscale_image`` in the repository does the conversions,
and it mirrors 10 LR pixels around the input, which keeps the network's zero padding from drawing a
frame along the edges (docs/artifacts.md): ``model(x)`` alone does not.
"""

import contextlib
import importlib
import os
import sys

dependencies = ["torch", "torchvision"]

_HERE = os.path.dirname(os.path.abspath(__file__))
SHIPPED_CHECKPOINT = os.path.join(_HERE, "checkpoints", "srresnet_x4.pth")
SHIPPED_SRGAN = os.path.join(_HERE, "checkpoints", "srgan_mse_x4.pth")


def _is_ours(module):
    path = getattr(module, "__file__", None)
    return path is not None and os.path.dirname(os.path.abspath(path)) == _HERE


@contextlib.contextmanager
def _project_imports(names):
    """Import this repository's modules even where other modules of the same generic names
    ('models', 'utils') are already imported: those are set aside and put back afterwards."""
    foreign = {n: sys.modules.pop(n) for n in names if n in sys.modules and not _is_ours(sys.modules[n])}
    sys.path.insert(0, _HERE)
    try:
        yield
    finally:
        sys.path.remove(_HERE)
        for name, module in foreign.items():
            sys.modules[name] = module


with _project_imports(("utils", "models", "checkpoint")):
    _models = importlib.import_module("models")
    _checkpoint = importlib.import_module("checkpoint")


def _no_weights(name):
    return ValueError(f"no pretrained {name} weights are shipped with this repository; use pretrained=False "
                      "for a freshly initialised model, or load your own checkpoint with checkpoint.load_model(path)")


def srresnet(pretrained=False, **kwargs):
    """SRResNet of Ledig et al., CVPR 2017 (16 residual blocks, 64 channels, x4; 1,549,462 parameters).

    Args:
        pretrained: True for the shipped x4 model (``checkpoints/srresnet_x4.pth``, trained with
            MSE on T91, BSDS200 and BSDS500's test images), in eval mode on the CPU. False for a
            freshly initialised model in training mode.
        **kwargs: constructor arguments for a fresh model (large_kernel_size=9, small_kernel_size=3,
            n_channels=64, n_blocks=16, scaling_factor=4 (2, 4 or 8)); not with pretrained=True.

    Input: ImageNet-normalised RGB (N, 3, h, w). Output: (N, 3, h * s, w * s) in [-1, 1].
    """
    if pretrained:
        if kwargs:
            raise ValueError(f"the shipped model has fixed arguments; {sorted(kwargs)} only apply with "
                             "pretrained=False")
        return _checkpoint.load_model(SHIPPED_CHECKPOINT, "cpu")
    return _models.SRResNet(**kwargs)


def generator(pretrained=False, **kwargs):
    """SRGAN generator: an SRResNet under ``.net``, to be fine-tuned adversarially (train_srgan.py).

    Args:
        pretrained: must be False (a ValueError says so): the trained generator is the ``srgan`` entry.
            Initialise one from the SRResNet with
            ``g.initialize_with_srresnet(torch.hub.load(..., "srresnet", pretrained=True))``.
        **kwargs: the SRResNet's constructor arguments (defaults: the paper's x4 network).

    Input: ImageNet-normalised RGB (N, 3, h, w). Output: (N, 3, h * s, w * s) in [-1, 1].
    """
    if pretrained:
        raise ValueError("generator(pretrained=True): the trained SRGAN generator is the 'srgan' entry "
                         "(torch.hub.load(..., 'srgan', pretrained=True)); 'generator' makes a fresh one to train")
    return _models.Generator(**kwargs)


def srgan(pretrained=False, **kwargs):
    """The SRGAN generator, adversarially fine-tuned (sharper textures than the SRResNet, lower PSNR).

    Args:
        pretrained: True for the shipped x4 generator (``checkpoints/srgan_mse_x4.pth``: SRGAN-MSE,
            the paper's pixel-MSE content loss + 1e-3 adversarial loss), in eval mode on the CPU.
            False for a freshly initialised generator in training mode.
        **kwargs: the SRResNet's constructor arguments for a fresh generator; not with pretrained=True.

    Input: ImageNet-normalised RGB (N, 3, h, w). Output: (N, 3, h * s, w * s) in [-1, 1].
    """
    if pretrained:
        if kwargs:
            raise ValueError(f"the shipped model has fixed arguments; {sorted(kwargs)} only apply with "
                             "pretrained=False")
        if not os.path.isfile(SHIPPED_SRGAN):
            raise _no_weights("SRGAN generator")
        return _checkpoint.load_model(SHIPPED_SRGAN, "cpu")
    return _models.Generator(**kwargs)


def discriminator(pretrained=False, **kwargs):
    """SRGAN discriminator: 8 convolutional blocks, 1024-wide dense layer, one logit per image
    (no sigmoid; 23,565,505 parameters with the defaults).

    Args:
        pretrained: must be False: no trained discriminator is shipped (a ValueError says so).
        **kwargs: kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024.

    Input: ImageNet-normalised RGB (N, 3, H, W), H, W >= 96. Output: (N, 1) logits.
    """
    if pretrained:
        raise _no_weights("discriminator")
    return _models.Discriminator(**kwargs)
