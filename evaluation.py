"""How a model is scored: the one path that eval.py, training's validation and test.py --hr share.

An HR image is cropped to a multiple of the scale and shrunk with PIL bicubic (the LR input); the
model's output is quantised to uint8 and compared with the HR image on the BT.601 Y channel with
``crop_border`` pixels removed (metrics.py): PSNR, SSIM and, when asked, NIQE.
"""

import images
import inference
import metrics
from utils import UserError


def min_side(scale, crop_border, niqe=False):
    """The smallest HR side that can be scored: SSIM's 11x11 window, or NIQE's 96x96 block, must
    fit after the border crop."""
    return max(2 * crop_border + (metrics.NIQE_BLOCK if niqe else 11), scale)


def check_size(img, path, scale, crop_border, niqe=False):
    """UserError naming ``path`` and its size if the image, once cropped to a multiple of the scale,
    is too small to score."""
    need = min_side(scale, crop_border, niqe)
    side = min(img.width - img.width % scale, img.height - img.height % scale)
    if side < need:
        what = "NIQE" if niqe and side >= min_side(scale, crop_border) else f"x{scale}"
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


def score(sr, hr, crop_border, niqe_params=None):
    """{'psnr', 'ssim'} (and 'niqe' with metrics.load_niqe_params()'s model) of an 8-bit SR image."""
    scores = {"psnr": metrics.calc_psnr(sr, hr, crop_border), "ssim": metrics.calc_ssim(sr, hr, crop_border)}
    if niqe_params is not None:
        scores["niqe"] = metrics.calc_niqe(sr, crop_border, niqe_params)
    return scores
