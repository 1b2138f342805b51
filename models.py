"""SRResNet, SRGAN generator and discriminator, and the truncated VGG19 used for the content loss.

References:
  Ledig et al., "Photo-Realistic Single Image Super-Resolution Using a Generative Adversarial
  Network", CVPR 2017 (https://arxiv.org/abs/1609.04802), figure 4 and section 2.
  Shi et al., "Real-Time Single Image and Video Super-Resolution Using an Efficient Sub-Pixel
  Convolutional Neural Network", CVPR 2016 (the sub-pixel / PixelShuffle up-sampling).

Module names follow the classic PyTorch tutorial layout (``conv_block1``, ``residual_blocks``,
``conv_block2``, ``subpixel_convolutional_blocks``, ``conv_block3``; ``Generator.net``) so that
state dicts trained with it load with ``strict=True``.

Value ranges: the generator takes ImageNet-normalised RGB and returns images in [-1, 1] (tanh).
The discriminator and the VGG19 take ImageNet-normalised RGB.

Importing this module does no work: no weights are downloaded, no device is touched.
"""

import math

import torch
from torch import nn

SCALES = (2, 4, 8)
# Bounds on the constructor arguments, far above any published network of this family (EDSR: 32
# blocks, 256 channels), so that a file or a call asking for 10**9 blocks fails at once instead of
# building layers until memory runs out.
MAX_BLOCKS, MAX_CHANNELS, MAX_KERNEL = 1024, 4096, 31


def check_sizes(kernels=(), **sizes):
    """ValueError unless every size is a whole number from 1 to its bound and every kernel size
    (named in ``kernels``) is odd: 'same' padding needs a centre tap."""
    for name, value in sizes.items():
        bound = MAX_KERNEL if name in kernels else MAX_BLOCKS if "blocks" in name else MAX_CHANNELS
        if isinstance(value, bool) or not isinstance(value, int):
            raise ValueError(f"{name}={value!r} is not a whole number")
        if not 1 <= value <= bound:
            raise ValueError(f"{name}={value} is out of range (1 to {bound})")
        if name in kernels and value % 2 == 0:
            raise ValueError(f"{name}={value} must be odd ('same' padding needs a centre pixel)")


class ConvolutionalBlock(nn.Module):
    """A convolution, optionally followed by BatchNorm and an activation.

    Args:
        in_channels: input channels.
        out_channels: output channels.
        kernel_size: square kernel size (odd; 'same' padding is used).
        stride: convolution stride.
        batch_norm: add a BatchNorm2d after the convolution.
        activation: None, 'prelu', 'leakyrelu' (slope 0.2) or 'tanh'.
    """

    def __init__(self, in_channels, out_channels, kernel_size, stride=1, batch_norm=False, activation=None):
        super().__init__()
        if activation is not None:
            activation = activation.lower()
            if activation not in ("prelu", "leakyrelu", "tanh"):
                raise ValueError(f"activation must be None, 'prelu', 'leakyrelu' or 'tanh', got {activation!r}")
        layers = [nn.Conv2d(in_channels, out_channels, kernel_size, stride=stride, padding=kernel_size // 2)]
        if batch_norm:
            layers.append(nn.BatchNorm2d(out_channels))
        if activation == "prelu":
            layers.append(nn.PReLU())
        elif activation == "leakyrelu":
            layers.append(nn.LeakyReLU(0.2))
        elif activation == "tanh":
            layers.append(nn.Tanh())
        # keys are conv_block.0 (conv), conv_block.1 (BN, if any), ... as in the classic layout
        self.conv_block = nn.Sequential(*layers)

    def forward(self, x):
        """(N, in_channels, h, w) -> (N, out_channels, h / stride, w / stride)."""
        return self.conv_block(x)


class SubPixelConvolutionalBlock(nn.Module):
    """Convolution to ``n_channels * factor**2`` channels, PixelShuffle(factor), PReLU.

    Args:
        kernel_size: kernel size of the convolution.
        n_channels: channels in and out.
        scaling_factor: spatial up-sampling factor of this block.
    """

    def __init__(self, kernel_size=3, n_channels=64, scaling_factor=2):
        super().__init__()
        self.conv = nn.Conv2d(n_channels, n_channels * scaling_factor**2, kernel_size, padding=kernel_size // 2)
        self.pixel_shuffle = nn.PixelShuffle(scaling_factor)
        self.prelu = nn.PReLU()

    def forward(self, x):
        """(N, n_channels, h, w) -> (N, n_channels, h * s, w * s)."""
        x = self.conv(x)  # (N, n_channels * s * s, h, w)
        x = self.pixel_shuffle(x)  # (N, n_channels, h * s, w * s)
        return self.prelu(x)


class ResidualBlock(nn.Module):
    """conv-BN-PReLU-conv-BN with an identity skip connection.

    Args:
        kernel_size: kernel size of both convolutions.
        n_channels: channels in and out.
    """

    def __init__(self, kernel_size=3, n_channels=64):
        super().__init__()
        self.conv_block1 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation="prelu")
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, kernel_size, batch_norm=True, activation=None)

    def forward(self, x):
        """(N, n_channels, h, w) -> (N, n_channels, h, w)."""
        residual = x
        x = self.conv_block1(x)  # (N, n_channels, h, w)
        x = self.conv_block2(x)  # (N, n_channels, h, w)
        return x + residual


class SRResNet(nn.Module):
    """The SRResNet of Ledig et al. (figure 4, generator).

    Args:
        large_kernel_size: kernel of the first and last convolutions (9 in the paper).
        small_kernel_size: kernel of all other convolutions (3).
        n_channels: feature channels (64).
        n_blocks: residual blocks (16).
        scaling_factor: 2, 4 or 8.

    Input: ImageNet-normalised LR images (N, 3, h, w). Output: (N, 3, h * s, w * s) in [-1, 1].
    """

    def __init__(self, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4):
        super().__init__()
        if isinstance(scaling_factor, bool) or scaling_factor not in SCALES:
            raise ValueError(f"scaling_factor must be one of {SCALES}, got {scaling_factor!r}")
        scaling_factor = int(scaling_factor)
        check_sizes(("large_kernel_size", "small_kernel_size"), large_kernel_size=large_kernel_size,
                    small_kernel_size=small_kernel_size, n_channels=n_channels, n_blocks=n_blocks)
        # kept so that a checkpoint can rebuild the model (checkpoint.model_spec)
        self.args = dict(large_kernel_size=large_kernel_size, small_kernel_size=small_kernel_size,
                         n_channels=n_channels, n_blocks=n_blocks, scaling_factor=scaling_factor)
        self.scaling_factor = scaling_factor

        self.conv_block1 = ConvolutionalBlock(3, n_channels, large_kernel_size, activation="prelu")
        self.residual_blocks = nn.Sequential(*[ResidualBlock(small_kernel_size, n_channels) for _ in range(n_blocks)])
        self.conv_block2 = ConvolutionalBlock(n_channels, n_channels, small_kernel_size, batch_norm=True)
        # each sub-pixel block up-samples by 2
        n_subpixel = int(math.log2(scaling_factor))
        self.subpixel_convolutional_blocks = nn.Sequential(
            *[SubPixelConvolutionalBlock(small_kernel_size, n_channels, 2) for _ in range(n_subpixel)])
        self.conv_block3 = ConvolutionalBlock(n_channels, 3, large_kernel_size, activation="tanh")

    def forward(self, lr_imgs):
        """(N, 3, h, w) ImageNet-normalised -> (N, 3, h * s, w * s) in [-1, 1]."""
        x = self.features(lr_imgs)  # (N, n_channels, h, w)
        x = self.subpixel_convolutional_blocks(x)  # (N, n_channels, h * s, w * s)
        return self.conv_block3(x)  # (N, 3, h * s, w * s)

    def features(self, lr_imgs):
        """The LR feature map that the up-sampling blocks take: (N, 3, h, w) -> (N, n_channels, h, w)."""
        x = self.conv_block1(lr_imgs)  # (N, n_channels, h, w)
        residual = x
        x = self.residual_blocks(x)  # (N, n_channels, h, w)
        x = self.conv_block2(x)  # (N, n_channels, h, w)
        return x + residual  # long skip connection


class Generator(nn.Module):
    """The SRGAN generator: an SRResNet kept under ``self.net`` (state-dict keys start with 'net.').

    Takes the same arguments as :class:`SRResNet`.
    """

    def __init__(self, large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4):
        super().__init__()
        self.net = SRResNet(large_kernel_size, small_kernel_size, n_channels, n_blocks, scaling_factor)
        self.args = dict(self.net.args)
        self.scaling_factor = self.net.scaling_factor

    def initialize_with_srresnet(self, srresnet):
        """Copy the weights of a trained SRResNet (or of another Generator) into ``self.net``.

        Raises ValueError if that model has other constructor arguments (scale, size).
        """
        if srresnet.args != self.args:
            raise ValueError(f"the SRResNet has arguments {srresnet.args}, but this generator has {self.args}")
        self.net.load_state_dict(srresnet.net.state_dict() if isinstance(srresnet, Generator)
                                 else srresnet.state_dict())

    def forward(self, lr_imgs):
        """(N, 3, h, w) ImageNet-normalised -> (N, 3, h * s, w * s) in [-1, 1]."""
        return self.net(lr_imgs)


class Discriminator(nn.Module):
    """The SRGAN discriminator (figure 4, bottom), returning one logit per image (no sigmoid).

    Args:
        kernel_size: kernel of every convolution (3).
        n_channels: channels of the first block; doubled every second block (64).
        n_blocks: convolutional blocks (8); stride 2 on every second block.
        fc_size: width of the hidden fully connected layer (1024).

    Input: ImageNet-normalised images (N, 3, H, W), any H, W >= 96 (an adaptive pool makes 6x6).
    """

    def __init__(self, kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024):
        super().__init__()
        check_sizes(("kernel_size",), kernel_size=kernel_size, n_channels=n_channels, n_blocks=n_blocks,
                    fc_size=fc_size)
        if n_channels * 2 ** ((n_blocks - 1) // 2) > MAX_CHANNELS:  # doubled every second block
            raise ValueError(f"n_channels={n_channels} doubled over n_blocks={n_blocks} exceeds {MAX_CHANNELS}")
        self.args = dict(kernel_size=kernel_size, n_channels=n_channels, n_blocks=n_blocks, fc_size=fc_size)
        blocks = []
        in_channels = 3
        for i in range(n_blocks):
            out_channels = (n_channels if i == 0 else in_channels * 2) if i % 2 == 0 else in_channels
            blocks.append(ConvolutionalBlock(in_channels, out_channels, kernel_size, stride=1 if i % 2 == 0 else 2,
                                             batch_norm=i != 0, activation="leakyrelu"))
            in_channels = out_channels
        self.conv_blocks = nn.Sequential(*blocks)
        self.adaptive_pool = nn.AdaptiveAvgPool2d((6, 6))
        self.fc1 = nn.Linear(out_channels * 6 * 6, fc_size)
        self.leaky_relu = nn.LeakyReLU(0.2)
        self.fc2 = nn.Linear(fc_size, 1)

    def forward(self, imgs):
        """(N, 3, H, W) ImageNet-normalised -> (N, 1) logits."""
        x = self.conv_blocks(imgs)  # (N, 512, H / 16, W / 16) with the defaults
        x = self.adaptive_pool(x)  # (N, 512, 6, 6)
        x = self.fc1(x.flatten(1))  # (N, fc_size)
        x = self.leaky_relu(x)
        return self.fc2(x)  # (N, 1)


VGG19_STAGE_CONVS = (2, 2, 4, 4, 4)  # convolutions before each of VGG19's 5 max-pools


def check_vgg_layer(i, j):
    """ValueError unless VGG19 has a convolution j before max-pool i (the paper's notation)."""
    if not (1 <= i <= len(VGG19_STAGE_CONVS) and 1 <= j <= VGG19_STAGE_CONVS[i - 1]):
        raise ValueError(f"VGG19 has no convolution j={j} before max-pool i={i} "
                         "(valid: i=1..2 with j=1..2, i=3..5 with j=1..4)")


class TruncatedVGG19(nn.Module):
    """VGG19 features up to the ReLU after the j-th convolution before the i-th max-pool, frozen.

    (i, j) = (5, 4) is the paper's "VGG54" (``features[:36]``); (2, 2) is "VGG22".

    Args:
        i: index of the max-pool (1-5) the features are taken before.
        j: index of the convolution (within that stage) whose ReLU output is used.
        weights: 'imagenet' (torchvision's VGG19_Weights.IMAGENET1K_V1, downloaded to torch's
            cache on first use), a torchvision VGG19 state dict (e.g. read from a local copy of that
            file), or None for random weights (tests and smoke runs only).

    Input: ImageNet-normalised images (N, 3, H, W). Output: (N, C, H / 2**(i-1), W / 2**(i-1)).
    """

    def __init__(self, i=5, j=4, weights="imagenet"):
        super().__init__()
        check_vgg_layer(i, j)  # before any weights are fetched
        import torchvision  # imported here so that `import models` stays light

        # only the convolutional part of torchvision's VGG19 ("features"): building the whole
        # network would also allocate the 120M-parameter classifier that the loss never uses
        features = torchvision.models.vgg.make_layers(torchvision.models.vgg.cfgs["E"])
        if weights == "imagenet":
            _load_vgg19_features(features, _imagenet_vgg19_state_dict(), "torchvision's VGG19_Weights.IMAGENET1K_V1")
        elif weights is not None:
            _load_vgg19_features(features, weights, "the VGG19 weights")

        # find the ReLU after conv j of stage i (stages are separated by max-pools)
        pools, convs, end = 0, 0, None
        for index, layer in enumerate(features):
            if isinstance(layer, nn.MaxPool2d):
                pools += 1
                convs = 0
            elif isinstance(layer, nn.Conv2d):
                convs += 1
            elif isinstance(layer, nn.ReLU) and pools == i - 1 and convs == j:
                end = index + 1
                break
        if end is None:
            raise ValueError(f"VGG19 has no convolution j={j} before max-pool i={i} "
                             "(valid: i=1..2 with j=1..2, i=3..5 with j=1..4)")
        self.truncated_vgg19 = nn.Sequential(*list(features.children())[:end])
        self.truncated_vgg19.eval()
        for p in self.parameters():
            p.requires_grad_(False)

    def train(self, mode=True):
        """Always stays in eval mode (the network is a fixed feature extractor)."""
        return super().train(False)

    def forward(self, x):
        """(N, 3, H, W) ImageNet-normalised -> (N, C, H', W') feature maps."""
        return self.truncated_vgg19(x)


def _imagenet_vgg19_state_dict():
    """torchvision's IMAGENET1K_V1 VGG19 weights (download or cache), or a clear error offline."""
    from torchvision.models import VGG19_Weights

    try:
        return VGG19_Weights.IMAGENET1K_V1.get_state_dict(progress=True)
    except Exception as e:  # URLError, SSL errors, hash mismatches...: all mean "could not get them"
        raise RuntimeError(
            "could not load the ImageNet VGG19 weights from torchvision "
            f"({type(e).__name__}: {e}). On a machine with internet access they are downloaded once to "
            f"torch's cache ({torch.hub.get_dir()}/checkpoints); otherwise download "
            f"{VGG19_Weights.IMAGENET1K_V1.url} elsewhere and pass the file with --vgg-weights PATH"
        ) from None


def _load_vgg19_features(features, state, source):
    """Copy a torchvision VGG19 state dict (the whole model or its features only) into ``features``,
    checking names and shapes."""
    if not isinstance(state, dict):
        raise ValueError(f"{source}: not a VGG19 state dict")
    # keep the convolutional part: 'features.N.weight' keys, or bare 'N.weight' keys
    state = {k[len("features."):]: v for k, v in state.items() if k.startswith("features.")} or state
    expected = {k: v.shape for k, v in features.state_dict().items()}
    if set(state) != set(expected):
        missing, unexpected = sorted(set(expected) - set(state))[:3], sorted(set(state) - set(expected))[:3]
        raise ValueError(f"{source}: not a torchvision VGG19 state dict (missing {missing}, unexpected {unexpected})")
    for k, shape in expected.items():
        if state[k].shape != shape:
            raise ValueError(f"{source}: features.{k} has shape {tuple(state[k].shape)}, expected {tuple(shape)}")
    features.load_state_dict(state)


MODEL_CLASSES = {"SRResNet": SRResNet, "Generator": Generator, "Discriminator": Discriminator}


def build_model(arch, args):
    """Build the model named ``arch`` ('SRResNet', 'Generator' or 'Discriminator') from its arguments."""
    if arch not in MODEL_CLASSES:
        raise ValueError(f"unknown model architecture {arch!r}; expected one of {sorted(MODEL_CLASSES)}")
    return MODEL_CLASSES[arch](**args)
