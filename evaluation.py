"""How a model is scored: the one path that eval.py, training's validation and test.py --hr share.

An HR image is cropped to a multiple of the scale and shrunk with PIL bicubic (the LR input); the
model's output is quantised to uint8 and compared with the HR image on the BT.601 Y channel with
``crop_border`` pixels removed (metrics.py): PSNR, SSIM and, when asked, NIQE and the artifact
measures; :func:`flat_field_probe` runs a model on constant images.
"""

import numpy as np
import torch

import images
import inference
import metrics
from utils import UserError


def min_side(scale, crop_border, niqe=False, artifacts=False):
    """The smallest HR side that can be scored: SSIM's 11x11 window, NIQE's 96x96 block, or the
    border ratio's two bands and something inside them must fit after the border crop."""
    inner = max(11, metrics.NIQE_BLOCK if niqe else 0, 2 * metrics.BORDER_BAND + 1 if artifacts else 0)
    return max(2 * crop_border + inner, scale)


def check_size(img, path, scale, crop_border, niqe=False, artifacts=False):
    """UserError naming ``path`` and its size if the image, once cropped to a multiple of the scale,
    is too small to score."""
    need = min_side(scale, crop_border, niqe, artifacts)
    side = min(img.width - img.width % scale, img.height - img.height % scale)
    if side < need:
        what = f"x{scale}"
        if side >= min_side(scale, crop_border):  # big enough for PSNR / SSIM: name what needs more
            what = "NIQE" if niqe and side < min_side(scale, crop_border, niqe=True) else "the artifact measures"
        raise UserError(f"{path}: {img.width}x{img.height} is too small for {what} with a {crop_border}-pixel "
                        f"border (needs {need} pixels on each side)")


def lr_pair(img, scale):
    """(HR cropped to a multiple of the scale, its PIL-bicubic LR image), both RGB PIL images."""
    hr = images.crop_to_multiple(img, scale)
    return hr, images.bicubic_resize(hr, (hr.width // scale, hr.height // scale))


def super_resolve(model, lr, scale, precision, device, tile=inference.DEFAULT_TILE, self_ensemble=False):
    """The model's output for an RGB PIL image, quantised to an 8-bit PIL image (what is scored).

    ``model`` is an inference.prepare_model copy; UserError if its output is not finite."""
    upscale = inference.upscale_tensor_x8 if self_ensemble else inference.upscale_tensor
    out = upscale(model, images.convert_image(lr, "pil", "imagenet-norm"), scale, precision, device, tile)
    return images.convert_image(out, "[-1, 1]", "pil")  # (3, H, W) in [-1, 1] -> uint8


def score(sr, hr, crop_border, niqe_params=None, artifacts_scale=None):
    """{'psnr', 'ssim'} (and 'niqe' with metrics.load_niqe_params()'s model; 'grid_flat', 'grid_dark',
    'grid' and 'border' with the scale as ``artifacts_scale``) of an 8-bit SR image."""
    scores = {"psnr": metrics.calc_psnr(sr, hr, crop_border), "ssim": metrics.calc_ssim(sr, hr, crop_border)}
    if niqe_params is not None:
        scores["niqe"] = metrics.calc_niqe(sr, crop_border, niqe_params)
    if artifacts_scale:
        scores.update(metrics.artifact_scores(sr, hr, artifacts_scale, crop_border))
    return scores


PROBE_VALUES = (0, 128, 255)
PROBE_SIZE = (128, 96)  # (w, h) of the LR probe images


def flat_field_probe(model, scale, precision="fp32", device="cpu"):
    """{value: largest |SR - value| in grey levels, over every pixel and channel} for constant RGB LR
    images of PROBE_SIZE at each of PROBE_VALUES, up-scaled by ``model`` (an inference.prepare_model
    copy) as every script does. A faithful model keeps a flat field flat; strays show what it paints
    into skies, walls and shadows. Bicubic scores 0."""
    deviations = {}
    for value in PROBE_VALUES:
        lr = torch.full((3, PROBE_SIZE[1], PROBE_SIZE[0]), value / 255.0)  # (3, h, w) in [0, 1]
        out = inference.upscale_tensor(model, images.convert_image(lr, "[0, 1]", "imagenet-norm"), scale,
                                       precision, device)
        sr = np.asarray(images.convert_image(out, "[-1, 1]", "pil"), dtype=np.int64)  # (h * s, w * s, 3)
        deviations[value] = int(np.abs(sr - value).max())
    return deviations
