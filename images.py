"""Images: value conventions, reading files, and the bicubic resizing that makes LR inputs.

The generator takes ImageNet-normalised RGB and returns [-1, 1]; :func:`convert_image` is the one
place that converts between those and the other conventions.
"""

import os

import numpy as np
import torch
from PIL import Image, ImageOps, PngImagePlugin

from utils import UserError

IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff", ".gif")
# BT.601 luma weights for R, G, B in [0, 1], giving Y in [16, 235]
Y_WEIGHTS = (65.481, 128.553, 24.966)
_CONVERSIONS = ("pil", "[0, 1]", "[-1, 1]", "[0, 255]", "imagenet-norm", "y-channel")
# PIL modes of images with more than 8 bits per sample (16-bit PNG and TIFF grayscale)
HIGH_BIT_MODES = ("I;16", "I;16L", "I;16B", "I;16N", "I")


def convert_image(img, source, target):
    """Convert an image between value conventions.

    Args:
        img: a PIL image (source 'pil') or a float tensor (3, H, W) or (N, 3, H, W).
        source: 'pil', '[0, 1]', '[-1, 1]', '[0, 255]' or 'imagenet-norm'.
        target: 'pil', '[0, 1]', '[-1, 1]', '[0, 255]', 'imagenet-norm' or 'y-channel'
            (BT.601 luma in [16, 235], shape (H, W) or (N, H, W)).

    Returns:
        A PIL RGB image (target 'pil', from a single image; values clamped to [0, 1] and rounded to
        uint8) or a float tensor.
    """
    if source not in _CONVERSIONS[:-1]:
        raise ValueError(f"source must be one of {_CONVERSIONS[:-1]}, got {source!r}")
    if target not in _CONVERSIONS:
        raise ValueError(f"target must be one of {_CONVERSIONS}, got {target!r}")

    # to [0, 1]
    if source == "pil":
        x = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    elif source == "[0, 1]":
        x = img
    elif source == "[-1, 1]":
        x = (img + 1.0) / 2.0
    elif source == "[0, 255]":
        x = img / 255.0
    else:  # imagenet-norm
        mean, std = _imagenet_stats(img)
        x = img * std + mean

    # from [0, 1]
    if target == "pil":
        if x.dim() != 3:
            raise ValueError(f"target 'pil' needs a single (3, H, W) image, got shape {tuple(x.shape)}")
        arr = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr, "RGB")
    if target == "[0, 1]":
        return x
    if target == "[-1, 1]":
        return x * 2.0 - 1.0
    if target == "[0, 255]":
        return x * 255.0
    if target == "imagenet-norm":
        mean, std = _imagenet_stats(x)
        return (x - mean) / std
    # y-channel
    weights = torch.tensor(Y_WEIGHTS, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * weights).sum(dim=-3) + 16.0


def _imagenet_stats(x):
    """ImageNet mean and std shaped (3, 1, 1), on x's device and dtype."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return mean, std


def open_image(path):
    """Open an image file as a decoded RGB PIL image (EXIF rotation applied).

    Grayscale, palette, CMYK, 16-bit and RGBA images become 8-bit RGB (alpha dropped; for images
    with alpha, test.py keeps it separately). Raises UserError naming the file if it is missing or
    cannot be decoded.
    """
    img = open_image_any_mode(path)
    if img.mode in HIGH_BIT_MODES:
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    return img.convert("RGB")


def open_image_any_mode(path):
    """Open and fully decode an image file, EXIF rotation applied, keeping its mode.

    Raises UserError naming the file if it is missing, empty, truncated, not an image, or so large
    that PIL refuses it as a possible decompression bomb.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    try:
        with open(path, "rb"):
            pass
    except OSError as e:  # e.g. no read permission: say so, not "cannot decode"
        raise UserError(f"{path}: cannot read the file ({e.strerror or e})") from None
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that a truncated file fails here
            img = ImageOps.exif_transpose(img)
            img.load()
            return img
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        raise UserError(f"{path}: cannot decode image ({e})") from None


def is_image_file(path):
    """True if the file name has one of the supported image extensions (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def find_images(folder, recursive=False):
    """Sorted paths of the image files (by extension, case-insensitive) in a folder."""
    if os.path.isfile(folder):
        raise UserError(f"{folder}: a file, not a folder")
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such folder")
    try:
        if recursive:
            paths = [os.path.join(root, name) for root, _, names in os.walk(folder, onerror=_raise) for name in names]
        else:
            paths = [os.path.join(folder, name) for name in os.listdir(folder)]
    except OSError as e:  # e.g. a folder without read permission
        raise UserError(f"{e.filename or folder}: cannot list the folder ({e.strerror or e})") from None
    return sorted(os.path.abspath(p) for p in paths if is_image_file(p) and os.path.isfile(p))


def _raise(error):
    raise error


def bicubic_resize(img, size):
    """Resize a PIL image to ``size`` (w, h) with PIL's antialiased bicubic filter (the LR convention)."""
    return img.resize(size, Image.BICUBIC)


def crop_to_multiple(img, scale):
    """Crop a PIL image (from the top left) so that both sides are multiples of ``scale``."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))



# test.py marks every image it writes with this PNG text chunk, so that it knows its own outputs: a
# name such as holiday_sr.png proves nothing (the user may have made that file). Folders skip marked
# images, create_data_lists.py does not train on them, and only a marked file may be replaced.
OUTPUT_MARK = ("Software", "SRResNet/SRGAN test.py")


def output_pnginfo():
    """PngInfo carrying OUTPUT_MARK, for Image.save(..., pnginfo=...)."""
    info = PngImagePlugin.PngInfo()
    info.add_text(*OUTPUT_MARK)
    return info


def is_marked_output(path):
    """True if ``path`` is a regular PNG file that carries OUTPUT_MARK (reads the header only)."""
    try:
        if os.path.islink(path) or not os.path.isfile(path):
            return False
        with Image.open(path) as img:
            return img.format == "PNG" and img.info.get(OUTPUT_MARK[0]) == OUTPUT_MARK[1]
    except Exception:  # noqa: BLE001 - unreadable or not an image: not ours
        return False
