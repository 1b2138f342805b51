"""Inference: a fast copy of a trained generator, tiled up-scaling, and images of every mode.

:func:`prepare_model` folds BatchNorm into the convolutions and moves the last PixelShuffle after
the output convolution (both exact in fp32), then sets device and channels_last.
:func:`upscale_tensor` runs it under autocast, optionally in tiles; each tile carries the model's
receptive-field radius of real context, so the tiled output equals the untiled one (up to float
rounding: convolutions may sum in another order on another input size). The wide
up-sampling layers run on each tile's centre only, in strips of rows, so their 2x / 4x feature
maps never exist whole (the same output, in a fraction of the memory).
:func:`upscale_image` super-resolves a PIL image of any mode (grayscale stays grayscale, alpha is
up-scaled with bicubic and kept, 16-bit grayscale keeps 16 bits).
"""

import copy
import math
import sys
import time
import warnings

import numpy as np
import torch
from PIL import Image
from torch import nn
from tqdm import tqdm

import checkpoint
import images
import models
import utils

PRECISIONS = ("auto", "fp32", "bf16", "fp16")
# Default tile size (LR pixels) of the scripts: images up to this size run in one piece, larger
# ones in tiles, so that memory stays bounded.
DEFAULT_TILE = 512
# the smallest tile the scripts accept and the out-of-memory retry goes down to: tinier tiles are
# slow (a 1-pixel tile: 82 s for what takes 0.05 s untiled) and gain nothing
MIN_TILE = 32
# LR pixels of mirrored image added on every side before the model runs, cut from the output after.
# The network zero-pads each convolution, so at an image edge it sees a black surround: next to a
# dark or flat edge that draws a bright frame. With the image mirrored outwards, the zeros are this
# far away and the edge looks like the interior (docs/artifacts.md has the measurements).
PRE_PAD = 10
# modes upscale_image works in after normalize_mode
# what an allocation failure on the device raises (torch.OutOfMemoryError from torch 2.5 on)
_OUT_OF_MEMORY = getattr(torch, "OutOfMemoryError", torch.cuda.OutOfMemoryError)


def _is_out_of_memory(error):
    """True for an allocation failure: CUDA's OutOfMemoryError, or the RuntimeError of the CPU
    allocator ("DefaultCPUAllocator: can't allocate memory" / "not enough memory")."""
    if isinstance(error, _OUT_OF_MEMORY):
        return True
    text = str(error)
    return isinstance(error, RuntimeError) and ("can't allocate memory" in text or "not enough memory" in text)
# ITU-R 601-2 luma weights, as PIL's convert('L'), for the 16-bit grayscale output
_GRAY_WEIGHTS = (0.299, 0.587, 0.114)


# ----------------------------------------------------------------------------------------------
# model preparation


def fold_batchnorm(model):
    """A copy of an SRResNet / Generator with every BatchNorm2d folded into the convolution before it.

    In each ConvolutionalBlock whose ``conv_block`` is Conv2d followed by BatchNorm2d, the
    convolution's weight and bias absorb the BatchNorm's eval-mode affine map
    ``y = (x - running_mean) / sqrt(running_var + eps) * weight + bias`` and the BatchNorm is
    replaced by nn.Identity (so the other layers keep their indices). The result computes the same
    function as ``model.eval()`` (exactly up to float rounding) with fewer operations.

    Args:
        model: an SRResNet or Generator (any mode; the given model is not modified).

    Returns:
        The folded copy, in eval mode.
    """
    model = copy.deepcopy(checkpoint.unwrap_model(model)).eval()
    with torch.no_grad():
        for block in model.modules():
            if not isinstance(block, models.ConvolutionalBlock):
                continue
            layers = block.conv_block
            if len(layers) < 2 or not isinstance(layers[0], nn.Conv2d) or not isinstance(layers[1], nn.BatchNorm2d):
                continue
            conv, bn = layers[0], layers[1]
            if bn.running_mean is None:  # no running statistics: eval mode uses batch statistics
                continue
            # per output channel: y = conv(x) * factor + shift, computed in float64 for accuracy
            std = torch.sqrt(bn.running_var.double() + bn.eps)
            gamma = bn.weight.double() if bn.affine else torch.ones_like(std)
            beta = bn.bias.double() if bn.affine else torch.zeros_like(std)
            factor = gamma / std
            bias = conv.bias.double() if conv.bias is not None else torch.zeros_like(std)
            new_weight = conv.weight.double() * factor.view(-1, 1, 1, 1)
            new_bias = (bias - bn.running_mean.double()) * factor + beta
            conv.weight.copy_(new_weight.to(conv.weight.dtype))
            conv.bias = nn.Parameter(new_bias.to(conv.weight.dtype), requires_grad=conv.weight.requires_grad)
            layers[1] = nn.Identity()
    return model


def fuse_last_upsampling(model):
    """Move the last PixelShuffle after the output convolution: the same function, about 2x faster.

    The network ends with ``PReLU(PixelShuffle_2(z))`` (z: 4C channels at h x w) followed by a
    k x k convolution to 3 channels at 2h x 2w. Such a convolution with 3 output channels runs far
    below the machine's peak, and it reads a 2h x 2w feature map. Since PReLU has one parameter it
    commutes with the shuffle, and a k x k convolution of a pixel-shuffled map equals a pixel
    shuffle of a (2q+1) x (2q+1) convolution (q = (k // 2 + 1) // 2) of the unshuffled map, from 4C
    to 12 channels, with the kernel rearranged (each output phase (A, B) and input phase (a, b)
    takes the taps dy = 2 * di + a - A, dx = 2 * dj + b - B). Zero padding maps to zero padding, so
    the result is exact up to float rounding (tested), including at the image borders.

    Args:
        model: an SRResNet or Generator (or a copy from :func:`fold_batchnorm`); not modified.

    Returns:
        A copy in eval mode whose last sub-pixel block no longer shuffles and whose ``conv_block3``
        is (conv to 12 channels, tanh, PixelShuffle(2)).
    """
    model = copy.deepcopy(checkpoint.unwrap_model(model)).eval()
    net = model.net if isinstance(model, models.Generator) else model
    last = net.subpixel_convolutional_blocks[-1]
    conv = net.conv_block3.conv_block[0]
    if last.prelu.num_parameters != 1 or len(net.conv_block3.conv_block) != 2:
        return model  # a layout this rewrite does not know: leave it as it is
    c, k = conv.in_channels, conv.kernel_size[0]
    p = k // 2
    q = (p + 1) // 2
    old = conv.weight.detach().double()  # (3, C, k, k)
    new = torch.zeros(3 * 4, c * 4, 2 * q + 1, 2 * q + 1, dtype=torch.float64)
    for big_a in range(2):  # output phase (rows)
        for big_b in range(2):  # output phase (columns)
            for a in range(2):  # input phase (rows)
                for b in range(2):  # input phase (columns)
                    for di in range(-q, q + 1):
                        for dj in range(-q, q + 1):
                            dy, dx = 2 * di + a - big_a, 2 * dj + b - big_b
                            if abs(dy) <= p and abs(dx) <= p:
                                # output channel o * 4 + A * 2 + B, input channel c * 4 + a * 2 + b
                                new[big_a * 2 + big_b::4, a * 2 + b::4, di + q, dj + q] = old[:, :, dy + p, dx + p]
    fused = nn.Conv2d(c * 4, 3 * 4, 2 * q + 1, padding=q)
    with torch.no_grad():
        fused.weight.copy_(new.to(conv.weight.dtype))
        fused.bias.copy_(conv.bias.detach().repeat_interleave(4))
    fused.to(conv.weight.device)
    last.pixel_shuffle = nn.Identity()  # (N, 4C, h, w) stays unshuffled; PReLU acts per element
    net.conv_block3.conv_block = nn.Sequential(fused, nn.Tanh(), nn.PixelShuffle(2))  # tanh commutes too
    return model


def receptive_radius(model_or_args):
    """Receptive-field radius of an SRResNet / Generator, in LR pixels.

    An output pixel depends only on LR pixels at most this far away (in x and in y), so tiles with
    this much context on every side give the untiled output (up to float rounding). Convolutions at the LR
    resolution add ``kernel // 2`` each; a convolution working at ``f`` times the LR resolution
    (after the sub-pixel shuffles) adds ``ceil((kernel // 2) / f)``. For the default x4 model:
    4 (9x9) + 33 (3x3: 16 blocks x 2 + conv_block2) + 1 + 1 (sub-pixel convs at x1, x2)
    + 1 (9x9 at x4) = 40.

    Args:
        model_or_args: the model (possibly compiled) or its constructor-argument dict
            (``model.args``: large_kernel_size, small_kernel_size, n_blocks, scaling_factor).
    """
    args = (model_or_args if isinstance(model_or_args, dict)
            else getattr(checkpoint.unwrap_model(model_or_args), "args", None))
    if not isinstance(args, dict):
        raise ValueError("cannot tell the receptive field of this model; give tile_pad explicitly")
    large, small = args["large_kernel_size"] // 2, args["small_kernel_size"] // 2
    scale = args["scaling_factor"]
    radius = large + (2 * args["n_blocks"] + 1) * small  # conv_block1, residual blocks, conv_block2
    radius += sum(math.ceil(small / 2**i) for i in range(int(math.log2(scale))))  # sub-pixel convs
    return radius + math.ceil(large / scale)  # conv_block3 at the HR resolution


def prepare_model(model, device, precision, channels_last=True, fold_bn=True, fuse_upsampling=True,
                  compile=False):
    """A ready-to-run inference copy of an SRResNet / Generator.

    Args:
        model: the model (not modified).
        device: torch.device or name ('cpu', 'cuda').
        precision: 'fp32', 'bf16', 'fp16' or 'auto'; checked here (fp16 on a CPU raises UserError)
            so that a bad combination fails before any work. The weights stay fp32: autocast in
            :func:`upscale_tensor` picks the precision of each operation.
        channels_last: store the weights in channels_last memory format (faster convolutions
            with oneDNN on CPUs and with tensor cores on GPUs).
        fold_bn: fold BatchNorm into the convolutions (:func:`fold_batchnorm`).
        fuse_upsampling: move the last PixelShuffle after the output convolution
            (:func:`fuse_last_upsampling`).
        compile: wrap the model in torch.compile (pays off over many inputs of the same size).

    Returns:
        The model in eval mode on ``device``, without gradients.
    """
    device = torch.device(device)
    utils.resolve_precision(precision, device)
    model = fold_batchnorm(model) if fold_bn else copy.deepcopy(checkpoint.unwrap_model(model))
    if fuse_upsampling:
        model = fuse_last_upsampling(model)
    model = model.to(device).eval().requires_grad_(False)
    if channels_last:
        model = model.to(memory_format=torch.channels_last)
    if compile:
        model = torch.compile(model)
    return model


# ----------------------------------------------------------------------------------------------
# tensors


def check_tile(tile):
    """UserError unless a --tile value is 0 (whole images) or at least MIN_TILE."""
    if tile != 0 and not tile >= MIN_TILE:
        raise utils.UserError(f"--tile {tile}: use 0 (whole images) or at least {MIN_TILE} LR pixels "
                              "(smaller tiles are very slow)")


def upscale_tensor(model, lr, scale, precision, device, tile=None, tile_pad=None, pre_pad=PRE_PAD):
    """Super-resolve a batch of LR images, optionally in tiles.

    Args:
        model: a model from :func:`prepare_model` (or any module mapping (N, 3, h, w) to
            (N, 3, h * scale, w * scale)).
        lr: ImageNet-normalised LR images, (N, 3, h, w) or (3, h, w), on any device.
        scale: the model's up-scaling factor.
        precision: 'fp32', 'bf16' or 'fp16' (see utils.resolve_precision for 'auto').
        device: where the model runs; tiles are moved there one at a time.
        tile: tile size in LR pixels (None or 0: the whole image at once).
        tile_pad: LR pixels of real image context around each tile; the default (None) is the
            model's receptive-field radius, with which tiling does not change the output. Tiles at
            the image border are not padded beyond it: they see the border as the whole image does.
        pre_pad: LR pixels of mirrored image around the whole input (see PRE_PAD), cut from the
            output; 0 runs the model on the image as it is.

    Returns:
        Float32 tensor in [-1, 1], (N, 3, h * scale, w * scale) (or without N, as ``lr``), on the
        same device as ``lr``. On out-of-memory the tiles are halved and the image redone (with
        a warning), down to MIN_TILE pixels; after that a UserError is raised.
    """
    single = lr.dim() == 3
    out = _upscale(model, lr[None] if single else lr, scale, precision, device, tile, tile_pad, uint8=False,
                   pre_pad=pre_pad)
    return out[0] if single else out


def mirror_pad(x, top_bottom, left_right):
    """``x`` (..., h, w) mirrored outwards by that many pixels on each side, the edge pixel repeated
    (MATLAB's 'symmetric'; each at most the side's length). 'reflect', which does not repeat the
    edge, makes it a ridge that the models sharpen: a brighter border band in docs/artifacts.md."""
    h, w = x.shape[-2:]
    p, q = top_bottom, left_right
    x = torch.cat([x[..., :p, :].flip(-2), x, x[..., h - p:, :].flip(-2)], dim=-2)
    return torch.cat([x[..., :q].flip(-1), x, x[..., w - q:].flip(-1)], dim=-1)


def _upscale(model, lr, scale, precision, device, tile, tile_pad, uint8, pre_pad=PRE_PAD, progress=False):
    """:func:`upscale_tensor` of (N, 3, h, w) images; with ``uint8`` (N = 1 only) the output is the
    (h * s, w * s, 3) uint8 array that convert_image(..., '[-1, 1]', 'pil') makes of the float output,
    filled tile by tile (a quarter of the float output's memory). ``progress``: a bar of tiles on
    stderr when there are several (a large photo takes minutes on a CPU)."""
    device = torch.device(device)
    h, w = lr.shape[-2:]
    py, px = min(pre_pad, h), min(pre_pad, w)  # a tiny image is mirrored as far as it reaches
    padded = mirror_pad(lr, py, px)
    region = (py, py + h, px, px + w)  # the image inside the padded input
    tile_size = int(tile) if tile else max(h, w)
    pad = None if tile_pad is None else int(tile_pad)
    while True:
        if pad is None and tile_size < max(h, w):  # (only tiles need it: a stand-in model may have no args)
            pad = receptive_radius(model)
        try:
            # one tile: its context is all the padding; several: the receptive field, within the padded input
            context = max(py, px) if tile_size >= max(h, w) else pad or 0
            return _upscale_tiles(model, padded, scale, precision, device, tile_size, context, uint8, region,
                                  progress)
        except (_OUT_OF_MEMORY, RuntimeError) as e:
            if not _is_out_of_memory(e):
                raise
            if tile_size <= MIN_TILE:
                raise utils.UserError(f"out of memory on {device} even with {tile_size}-pixel tiles; "
                                      "try --precision bf16 (or fp16), a smaller --tile-pad, or --device cpu") from None
        # the failed attempt's tensors are released once the except block has ended
        if device.type == "cuda":
            torch.cuda.empty_cache()
        tile_size = max(MIN_TILE, tile_size // 2)
        warnings.warn(f"out of memory on {device}: retrying with {tile_size}-pixel tiles", RuntimeWarning, stacklevel=3)


def _upscale_tiles(model, lr, scale, precision, device, tile, pad, uint8, region, progress=False):
    """Run the model on tiles of the box ``region`` (top, bottom, left, right) of ``lr`` (N, 3, H, W),
    each with ``pad`` pixels of context from all of ``lr``, and paste their centres into the output."""
    n = lr.shape[0]
    H, W = lr.shape[-2:]
    r_top, r_bottom, r_left, r_right = region
    h, w = r_bottom - r_top, r_right - r_left
    if uint8:
        out = torch.empty(h * scale, w * scale, 3, dtype=torch.uint8)
    else:
        out = torch.empty(n, 3, h * scale, w * scale, dtype=torch.float32, device=lr.device)
    channels_last = _is_channels_last(model)
    n_tiles = math.ceil(h / tile) * math.ceil(w / tile)
    bar = tqdm(total=n_tiles, unit="tile", desc="tiles", leave=False, file=sys.stderr,
               disable=not progress or n_tiles < 2)
    with bar, torch.inference_mode(), utils.autocast(device, precision):
        for top in range(r_top, r_bottom, tile):
            bottom = min(top + tile, r_bottom)
            for left in range(r_left, r_right, tile):
                right = min(left + tile, r_right)
                # the tile plus its context, clipped to the (pre-padded) input, never zero-padded inside it
                ptop, pbottom = max(top - pad, 0), min(bottom + pad, H)
                pleft, pright = max(left - pad, 0), min(right + pad, W)
                x = lr[:, :, ptop:pbottom, pleft:pright].to(device, non_blocking=True)  # (N, 3, ph, pw)
                if channels_last:
                    x = x.contiguous(memory_format=torch.channels_last)
                # only the centre, the part of the output that belongs to this tile, in strips of rows
                for row, y in _forward_pieces(model, x, (top - ptop, bottom - ptop, left - pleft, right - pleft)):
                    if not torch.isfinite(y).all():  # a broken model would otherwise give a black image
                        raise utils.UserError("the model's output is not finite (NaN or inf): the weights are broken")
                    y = y.float().clamp_(-1, 1)  # (N, 3, rows, (right - left) * s)
                    r0, c0 = (top - r_top) * scale + row, (left - r_left) * scale
                    r1, c1 = r0 + y.shape[-2], c0 + y.shape[-1]
                    if uint8:  # the arithmetic of images.convert_image(y, '[-1, 1]', 'pil')
                        y = ((y + 1.0) / 2.0).clamp(0, 1) * 255.0
                        out[r0:r1, c0:c1] = y.round().to(torch.uint8)[0].permute(1, 2, 0).cpu()
                    else:
                        out[:, :, r0:r1, c0:c1] = y.to(lr.device)
                del x, y
                bar.update(1)
    return out


# bytes of the largest feature map that one strip of the up-sampling layers makes (see _forward_pieces);
# 32 MB rather than 64 MB: 0.07 GB less peak memory for a 1024x1024 input at the same speed
STRIP_BYTES = 32 * 2**20
# ... unless the whole map is at most this large: then one strip (the fastest)
WHOLE_BYTES = 512 * 2**20


def _forward_pieces(model, x, box):
    """The model's output for the LR box (top, bottom, left, right) of ``x`` (N, 3, h, w), in pieces.

    Yields (row, y): y is the output for the box's columns and a band of its rows starting ``row``
    output pixels below the box's top; together the pieces equal ``model(x)`` cropped to the box.
    For an SRResNet / Generator only the layers before the up-sampling run on the whole of ``x``;
    each up-sampling stage runs on just the region the box needs (plus the context its
    convolutions read), in strips of rows, so that the wide feature maps at 2x and 4x the LR size
    never exist whole. Any other model runs on the whole of ``x``.
    """
    top, bottom, left, right = box
    stages = _upsampling_stages(model)
    if stages is None:
        y = model(x)  # (N, 3, h * s, w * s)
        s = y.shape[-2] // x.shape[-2]
        yield 0, y[:, :, top * s:bottom * s, left * s:right * s]
        return
    h, w = x.shape[-2:]
    src = _srresnet(model).features(x)  # (N, n_channels, h, w)
    src_box, f = (0, h, 0, w), 1  # the LR box that src covers, and its resolution in LR pixels
    # the LR box each stage must fill: the next stage's grown by that stage's context, within x
    boxes = [box]
    for _, _, halo, _ in reversed(stages[1:]):
        t, b, lf, r = boxes[0]
        boxes.insert(0, (max(t - halo, 0), min(b + halo, h), max(lf - halo, 0), min(r + halo, w)))
    for i, (layers, factor, halo, width) in enumerate(stages):
        t, b, lf, r = boxes[i]
        g = f * factor
        # input columns: all that src covers (slicing columns would cost a copy; rows are free in
        # channels_last) - at most the previous stage's halo more than the output needs
        cl, cr = src_box[2], src_box[3]
        row_bytes = width * f * f * (cr - cl) * src.element_size()  # of one LR row of the stage's widest map
        # small images run in one strip: strips re-run their context rows and cost a few % of time
        rows = b - t if row_bytes * (b - t) <= WHOLE_BYTES else max(1, STRIP_BYTES // row_bytes)
        fmt = torch.channels_last if _is_channels_last_tensor(src) else torch.contiguous_format
        out = None
        for st in range(t, b, rows):
            sb = min(st + rows, b)
            it, ib = max(st - halo, src_box[0]), min(sb + halo, src_box[1])
            y = src[:, :, (it - src_box[0]) * f:(ib - src_box[0]) * f, (cl - src_box[2]) * f:(cr - src_box[2]) * f]
            y = y.contiguous(memory_format=fmt)  # a sliced input would make the convolution slower
            for layer in layers:
                y = layer(y)
            y = y[:, :, (st - it) * g:(sb - it) * g, (lf - cl) * g:(r - cl) * g]  # (N, C, (sb - st) * g, (r - lf) * g)
            if i == len(stages) - 1:
                yield (st - top) * g, y
                continue
            if out is None:  # the stage's whole (thin) output map, in the input's layout
                out = torch.empty(y.shape[0], y.shape[1], (b - t) * g, (r - lf) * g, dtype=y.dtype, device=y.device,
                                  memory_format=fmt)
            out[:, :, (st - t) * g:(sb - t) * g] = y
        src, src_box, f = out, boxes[i], g
        del out, y


def _srresnet(model):
    """The SRResNet inside a Generator (or the SRResNet itself), or None for other modules and
    compiled ones (a compiled model runs whole, as compiled)."""
    if hasattr(model, "_orig_mod"):
        return None
    net = model.net if isinstance(model, models.Generator) else model
    return net if isinstance(net, models.SRResNet) else None


def _upsampling_stages(model):
    """The layers after SRResNet.features, in stages: [(layers, factor, halo, width)], or None.

    Every sub-pixel block but the last is a stage whose output (n_channels wide) is kept whole;
    the last block and conv_block3 are the final stage, run in strips straight to the output.
    ``factor``: its up-scaling; ``halo``: how far (LR pixels) an output pixel's inputs reach;
    ``width``: channels of its widest feature map per input pixel (sizes the strips).
    None if the model is not a (prepared) SRResNet / Generator of the known layers.
    """
    net = _srresnet(model)
    if net is None:
        return None
    blocks = list(net.subpixel_convolutional_blocks)
    groups = [[b] for b in blocks[:-1]] + [blocks[-1:] + [net.conv_block3]]
    stages, before = [], 1  # before: the stage input's resolution in LR pixels
    for layers in groups:
        factor, reach, width = 1, 0.0, 1
        for m in (m for layer in layers for m in layer.modules() if not list(m.children())):
            if isinstance(m, nn.Conv2d):
                if m.stride != (1, 1) or m.dilation != (1, 1) or m.groups != 1 or m.padding_mode != "zeros" \
                        or not isinstance(m.padding, tuple) or m.padding[0] != m.padding[1]:
                    return None
                reach += m.padding[0] / factor
                width = max(width, m.out_channels * factor * factor)
            elif isinstance(m, nn.PixelShuffle):
                factor *= m.upscale_factor
            elif not isinstance(m, (nn.PReLU, nn.Tanh, nn.Identity)):
                return None
        stages.append((layers, factor, math.ceil(reach / before), width))
        before *= factor
    return stages


def _is_channels_last(model):
    """True if the model's first 4-D weight is stored channels_last."""
    for p in model.parameters():
        if p.dim() == 4:
            return _is_channels_last_tensor(p)
    return False


def _is_channels_last_tensor(t):
    return t.is_contiguous(memory_format=torch.channels_last) and not t.is_contiguous()


def upscale_tensor_x8(model, lr, scale, precision, device, tile=None, tile_pad=None):
    """Self-ensemble ("x8"): :func:`upscale_tensor` on the 8 flips / 90-degree rotations of ``lr``,
    each output transformed back, averaged (Lim et al., EDSR, CVPR 2017 workshops).

    Same arguments and result as :func:`upscale_tensor`; takes 8 times as long.
    """
    total = None
    for flip in (False, True):
        for k in range(4):
            x = lr.flip(-1) if flip else lr
            x = torch.rot90(x, k, dims=(-2, -1)).contiguous()  # (..., 3, h, w) or (..., 3, w, h)
            y = upscale_tensor(model, x, scale, precision, device, tile, tile_pad)
            y = torch.rot90(y, -k, dims=(-2, -1))
            y = y.flip(-1) if flip else y
            total = y if total is None else total + y
    return total / 8


# ----------------------------------------------------------------------------------------------
# PIL images of every kind


def normalize_mode(img):
    """Bring a PIL image to one of the modes the model path handles: RGB, RGBA, L, LA or I;16.

    Palette images become RGBA if they have transparency, else RGB; 1-bit images L; 32-bit
    integer images (16-bit PNG in older Pillow) I;16 (values clipped to 0..65535); float images L;
    CMYK, YCbCr, HSV and the like RGB. An L or RGB image with a transparent colour gains alpha.
    Raises UserError for a mode that cannot be converted.
    """
    mode = img.mode
    if mode in ("RGB", "L") and "transparency" in img.info:
        return img.convert(mode + "A")
    if mode in ("RGB", "RGBA", "L", "LA"):
        return img
    if mode in images.HIGH_BIT_MODES:
        arr = np.asarray(img).astype(np.int64)
        return Image.fromarray(np.clip(arr, 0, 65535).astype(np.uint16))  # mode I;16
    if mode == "P":
        return img.convert("RGBA" if "transparency" in img.info else "RGB")
    conversions = {"PA": "RGBA", "La": "LA", "RGBa": "RGBA", "1": "L", "F": "L"}
    try:
        return img.convert(conversions.get(mode, "RGB"))
    except ValueError as e:
        raise utils.UserError(f"unsupported image mode {mode!r} ({e})") from None


def resize_image(img, size):
    """Bicubic resize (PIL's antialiased filter, as images.bicubic_resize) of an image of any mode
    normalize_mode returns, keeping the mode: alpha is resized on its own (as upscale_image does);
    16-bit images are resized in float and rounded back to 16 bits."""
    if img.mode in images.HIGH_BIT_MODES:
        resized = np.asarray(images.bicubic_resize(img.convert("F"), size))
        return Image.fromarray(np.clip(np.round(resized), 0, 65535).astype(np.uint16))
    if img.mode in ("RGBA", "LA"):
        colour = images.bicubic_resize(img.convert(img.mode[:-1]), size)
        colour.putalpha(images.bicubic_resize(img.getchannel("A"), size))
        return colour
    return images.bicubic_resize(img, size)


def bicubic_upscale(img, scale):
    """The bicubic up-scaling of an image, of the same size and mode as :func:`upscale_image` gives."""
    img = normalize_mode(img)
    return resize_image(img, (img.width * scale, img.height * scale))


def image_to_input(img):
    """The model input for an image from :func:`normalize_mode`.

    Returns:
        (x, alpha): x is the ImageNet-normalised (1, 3, h, w) float tensor (a 16-bit image is read
        at full precision, gray replicated to 3 channels; 8-bit grayscale likewise); alpha is the
        image's alpha channel as an L image, or None.
    """
    if img.mode in images.HIGH_BIT_MODES:
        gray = torch.from_numpy(np.asarray(img, dtype=np.float32) / 65535.0)  # (h, w) in [0, 1]
        x = gray.expand(3, -1, -1)  # (3, h, w)
        return images.convert_image(x, "[0, 1]", "imagenet-norm")[None], None
    alpha = img.getchannel("A") if img.mode in ("RGBA", "LA") else None
    return images.convert_image(img, "pil", "imagenet-norm")[None], alpha  # (1, 3, h, w)


def output_to_image(sr, mode):
    """A PIL image of mode ``mode`` (from normalize_mode, without alpha) from a model output.

    Args:
        sr: (3, H, W) tensor in [-1, 1].
        mode: 'RGB'/'RGBA' give RGB, 'L'/'LA' give L (via PIL's RGB to L conversion), 'I;16' gives
            a 16-bit grayscale image (ITU-R 601-2 luma of the float output, not rounded to 8 bits).
    """
    if mode in images.HIGH_BIT_MODES:
        x = ((sr.float().cpu() + 1.0) / 2.0).clamp(0, 1)  # (3, H, W) in [0, 1]
        weights = torch.tensor(_GRAY_WEIGHTS).view(3, 1, 1)
        gray = (x * weights).sum(0)  # (H, W)
        return Image.fromarray((gray * 65535.0).round().numpy().astype(np.uint16))  # mode I;16
    rgb = images.convert_image(sr, "[-1, 1]", "pil")
    return rgb.convert("L") if mode in ("L", "LA") else rgb


def upscale_image(model, img, scale, precision, device, tile=None, tile_pad=None, progress=False):
    """Super-resolve a PIL image of any kind (see the module docstring).

    Args:
        model, scale, precision, device, tile, tile_pad: as for :func:`upscale_tensor`.
        img: the PIL image (EXIF rotation already applied, as images.open_image_any_mode does).
        progress: show a bar of the tiles done (and the time left) on stderr when there are several.

    Returns:
        (sr, seconds): the super-resolved image, ``scale`` times larger, of mode RGB, RGBA, L, LA
        or I;16 (see :func:`normalize_mode`); and the time the model took (including the
        transfers to and from the device), in seconds.
    """
    img = normalize_mode(img)
    x, alpha = image_to_input(img)  # (1, 3, h, w), alpha or None
    if torch.device(device).type == "cuda":
        torch.cuda.synchronize(device)
    start = time.perf_counter()
    if img.mode in images.HIGH_BIT_MODES:  # needs the float output
        sr = _upscale(model, x, scale, precision, device, tile, tile_pad, False, progress=progress)  # (1, 3, H, W)
    else:  # 8 bits: quantised tile by tile, the float output never exists whole
        sr = _upscale(model, x, scale, precision, device, tile, tile_pad, True, progress=progress)  # (H, W, 3) uint8
    seconds = time.perf_counter() - start
    if img.mode in images.HIGH_BIT_MODES:
        out = output_to_image(sr[0], img.mode)
    else:
        out = Image.fromarray(sr.numpy(), "RGB")
        out = out.convert("L") if img.mode in ("L", "LA") else out
    del sr
    if alpha is not None:
        out.putalpha(images.bicubic_resize(alpha, out.size))  # RGB -> RGBA, L -> LA
    return out, seconds
