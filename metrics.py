"""PSNR and SSIM as the super-resolution papers and BasicSR compute them.

Both work on the Y channel of ITU-R BT.601 (Y = 16 + 65.481 R + 128.553 G + 24.966 B, with R, G, B
in [0, 1]) of uint8 RGB images, with ``crop_border`` pixels removed on every side. SSIM follows
Wang et al., IEEE TIP 2004: 11x11 Gaussian window (sigma 1.5), valid region only,
C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2.
"""

import math
import os
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from images import Y_WEIGHTS
from utils import UserError


def y_channel(img):
    """BT.601 luma (float64, values in [16, 235]) of an RGB PIL image or uint8 (H, W, 3) array."""
    arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB PIL image or a uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.float64) @ (np.array(Y_WEIGHTS) / 255.0) + 16.0


def _y_pair(sr, hr, crop_border):
    """Y channels of the two images, with ``crop_border`` pixels removed on every side."""
    y_sr, y_hr = y_channel(sr), y_channel(hr)
    if y_sr.shape != y_hr.shape:
        raise ValueError(f"image sizes differ: {y_sr.shape} vs {y_hr.shape}")
    if crop_border > 0:
        y_sr = y_sr[crop_border:-crop_border, crop_border:-crop_border]
        y_hr = y_hr[crop_border:-crop_border, crop_border:-crop_border]
    return y_sr, y_hr


def calc_psnr(sr, hr, crop_border):
    """PSNR in dB between two uint8 RGB images (PIL or arrays) on the Y channel, border cropped."""
    y_sr, y_hr = _y_pair(sr, hr, crop_border)
    mse = np.mean((y_sr - y_hr) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_window(size=11, sigma=1.5):
    """Normalised 2-D Gaussian window (float64 tensor of shape (1, 1, size, size))."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).view(1, 1, size, size)


def calc_ssim(sr, hr, crop_border):
    """SSIM between two uint8 RGB images (PIL or arrays) on the Y channel, border cropped."""
    y_sr, y_hr = _y_pair(sr, hr, crop_border)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    window = _gaussian_window()
    x = torch.from_numpy(np.ascontiguousarray(y_sr))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(y_hr))[None, None]
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)  # 'valid' region only
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())



# ----------------------------------------------------------------------------------------------
# NIQE (Mittal, Soundararajan and Bovik, IEEE Signal Processing Letters 2013), as the official MATLAB
# release computes it: lower is better; natural photographs score about 3-5 on its pristine model.

NIQE_PARAMS = os.path.join(os.path.dirname(os.path.abspath(__file__)), "assets", "niqe_pris_params.npz")
NIQE_BLOCK = 96  # the release's block size; an image needs one whole block after the border crop
_AGGD_SHAPES = np.arange(0.2, 10.0005, 0.001)  # the release's grid of shape parameters, 0.2:0.001:10
_lgamma = np.vectorize(math.lgamma)
# rho(alpha) = Gamma(2/a)^2 / (Gamma(1/a) Gamma(3/a)), looked up to invert the moment ratio
_AGGD_RATIOS = np.exp(2 * _lgamma(2 / _AGGD_SHAPES) - _lgamma(1 / _AGGD_SHAPES) - _lgamma(3 / _AGGD_SHAPES))


def load_niqe_params(path=NIQE_PARAMS):
    """(mu (36,), cov (36, 36)) of the pristine model; UserError naming the file if it is missing or bad."""
    try:
        with np.load(path, allow_pickle=False) as f:
            mu = np.asarray(f["mu_pris_param"], np.float64).reshape(-1)
            cov = np.asarray(f["cov_pris_param"], np.float64)
    except (OSError, KeyError, ValueError, zipfile.BadZipFile, EOFError) as e:
        raise UserError(f"{path}: cannot read NIQE's model parameters ({type(e).__name__}: "
                        f"{' '.join(str(e).split())})") from None
    if mu.shape != (36,) or cov.shape != (36, 36) or not (np.isfinite(mu).all() and np.isfinite(cov).all()):
        raise UserError(f"{path}: not NIQE's model parameters (expected a finite (1, 36) mean and (36, 36) covariance)")
    return mu, cov


def _gaussian_filter_replicate(img, sigma=7 / 6, size=7):
    """MATLAB's imfilter(img, fspecial('gaussian', size, sigma), 'replicate'), as two 1-D passes."""
    x = np.arange(size) - (size - 1) / 2
    g = np.exp(-(x**2) / (2 * sigma**2))
    g /= g.sum()
    r = size // 2
    p = np.pad(img, r, mode="edge")
    rows = sum(w * p[i:i + img.shape[0], :] for i, w in enumerate(g))  # (H, W + 2r)
    return sum(w * rows[:, i:i + img.shape[1]] for i, w in enumerate(g))  # (H, W)


def _cubic(x):
    ax = np.abs(x)
    return ((1.5 * ax**3 - 2.5 * ax**2 + 1) * (ax <= 1)
            + (-0.5 * ax**3 + 2.5 * ax**2 - 4 * ax + 2) * ((ax > 1) & (ax <= 2)))


def matlab_half(img):
    """MATLAB's imresize(img, 0.5) of a float64 image: bicubic (a = -0.5), antialiased, mirrored edges."""
    for axis in (0, 1):
        n = img.shape[axis]
        out = math.ceil(n / 2)
        u = np.arange(1, out + 1) * 2 - 0.5  # centre of each output pixel in input coordinates (1-based)
        index = np.floor(u - 4)[:, None] + np.arange(10)[None, :]  # (out, 10) 1-based input pixels
        weights = 0.5 * _cubic(0.5 * (u[:, None] - index))  # the kernel stretched by 2: antialiasing
        weights /= weights.sum(axis=1, keepdims=True)
        mirror = np.concatenate([np.arange(n), np.arange(n)[::-1]])  # MATLAB's 'symmetric' padding
        index = mirror[np.mod(index - 1, 2 * n).astype(np.int64)]
        moved = np.moveaxis(img, axis, 0)  # (n, ...)
        img = np.moveaxis(np.einsum("ok,ok...->o...", weights, moved[index]), 0, axis)
    return img


def _aggd(v):
    """Asymmetric generalised Gaussian fit of each row of v (N, M): (alpha, beta_left, beta_right), each (N,)."""
    neg, pos = v < 0, v > 0
    with np.errstate(divide="ignore", invalid="ignore"):
        left = np.sqrt((v**2 * neg).sum(1) / neg.sum(1))
        right = np.sqrt((v**2 * pos).sum(1) / pos.sum(1))
        g = left / right
        r = np.abs(v).mean(1) ** 2 / (v**2).mean(1)
        r_norm = r * (g**3 + 1) * (g + 1) / (g**2 + 1) ** 2
    # MATLAB's min ignores NaN; the first grid point wins ties and an all-NaN row
    dist = np.nan_to_num((_AGGD_RATIOS[None, :] - r_norm[:, None]) ** 2, nan=np.inf)
    alpha = _AGGD_SHAPES[np.argmin(dist, axis=1)]
    k = np.exp(0.5 * (_lgamma(1 / alpha) - _lgamma(3 / alpha)))
    return alpha, left * k, right * k


def _niqe_features(structdis, block):
    """The release's 18 features of every (block x block) tile of the normalised image: (tiles, 18)."""
    h, w = structdis.shape[0] // block, structdis.shape[1] // block
    tiles = structdis[:h * block, :w * block].reshape(h, block, w, block).transpose(0, 2, 1, 3)
    tiles = tiles.reshape(-1, block, block)  # (tiles, block, block)
    alpha, bl, br = _aggd(tiles.reshape(len(tiles), -1))
    feats = [alpha, (bl + br) / 2]
    for shift in ((0, 1), (1, 0), (1, 1), (1, -1)):  # MATLAB circshift within the tile
        pair = tiles * np.roll(tiles, shift, axis=(1, 2))
        alpha, bl, br = _aggd(pair.reshape(len(tiles), -1))
        mean = (br - bl) * np.exp(_lgamma(2 / alpha) - _lgamma(1 / alpha))
        feats += [alpha, mean, bl, br]
    return np.stack(feats, axis=1)


def niqe(y, params=None):
    """NIQE of a luma image (2-D array, values 0-255, e.g. the rounded Y channel); lower is better.

    Follows the official MATLAB release: 96x96 blocks (the image is cut to whole blocks), features at
    full and half size, distance to the pristine model. ValueError if the image is smaller than a block.
    NaN (without a warning) where NIQE is undefined: an image with no texture to fit (constant,
    two-level or smoothly graded), where every block's statistics are degenerate.
    """
    mu_pris, cov_pris = params if params is not None else load_niqe_params()
    img = np.asarray(y, dtype=np.float64)
    if img.ndim != 2 or min(img.shape) < NIQE_BLOCK:
        raise ValueError(f"NIQE needs an image of at least {NIQE_BLOCK}x{NIQE_BLOCK} pixels, got {img.shape[::-1]}")
    img = img[:img.shape[0] // NIQE_BLOCK * NIQE_BLOCK, :img.shape[1] // NIQE_BLOCK * NIQE_BLOCK]
    feats = []
    for scale in (1, 2):
        mu = _gaussian_filter_replicate(img)
        sigma = np.sqrt(np.abs(_gaussian_filter_replicate(img * img) - mu * mu))
        feats.append(_niqe_features((img - mu) / (sigma + 1), NIQE_BLOCK // scale))
        img = matlab_half(img)
    feats = np.concatenate(feats, axis=1)  # (blocks, 36)
    if np.isnan(feats).all(axis=0).any():  # a feature no block could measure: no distance to compute
        return float("nan")
    mu_dist = np.nanmean(feats, axis=0)
    complete = feats[~np.isnan(feats).any(axis=1)]  # MATLAB's nancov drops incomplete rows
    # one block has no spread to measure: its covariance is taken as zero
    cov_dist = np.cov(complete, rowvar=False) if len(complete) > 1 else np.zeros((36, 36))
    diff = mu_pris - mu_dist
    with np.errstate(invalid="ignore"):
        return float(np.sqrt(diff @ np.linalg.pinv((cov_pris + cov_dist) / 2) @ diff))


def calc_niqe(img, crop_border, params=None):
    """NIQE of a uint8 RGB image (PIL or array) on its rounded Y channel (as MATLAB's rgb2ycbcr),
    border cropped as for PSNR."""
    y = np.round(y_channel(img))
    if crop_border > 0:
        y = y[crop_border:-crop_border, crop_border:-crop_border]
    return niqe(y, params)


# ----------------------------------------------------------------------------------------------
# Artifact measures (docs/artifacts.md). A GAN generator can score a NIQE below the HR images' own
# while it paints a grid at the up-sampling period, a frame along the edges or strays on flat
# areas: NIQE fits natural-scene statistics of 96x96 blocks and counts such patterns as detail.
# These measures look for each pattern directly, on the Y channel (0-255) after the border crop.

GRID_FLAT_STD = 2.0  # a pixel is "flat" where the HR image's 7x7 standard deviation is below this
GRID_FLAT_MIN_PIXELS = 2000  # fewer flat (or dark) pixels than this: no flat (dark) grid for the image
GRID_DARK_LUMA = 40.0  # a pixel is "dark" where the HR luma's 7x7 mean is below this (black is 16)
BORDER_BAND = 8  # the outer band of the border ratio, in pixels


def _box_mean(img, size):
    """Mean over size x size windows (size odd) of a 2-D array, with reflect padding: same shape."""
    r = size // 2
    p = np.pad(img, r, mode="reflect") if min(img.shape) > r else np.pad(img, r, mode="edge")
    c = np.cumsum(np.pad(p, ((1, 0), (1, 0))), axis=0)
    c = np.cumsum(c, axis=1)
    h, w = img.shape
    total = c[size:size + h, size:size + w] - c[:h, size:size + w] - c[size:size + h, :w] + c[:h, :w]
    return total / (size * size)


def high_pass(y):
    """r = y - (3x3 box mean of y, reflect padding): the residual the grid and border measures read."""
    return y - _box_mean(y, 3)


def flat_mask(y_hr):
    """True where the HR luma's 7x7 standard deviation is below GRID_FLAT_STD grey levels."""
    mean = _box_mean(y_hr, 7)
    var = np.maximum(_box_mean(y_hr * y_hr, 7) - mean * mean, 0.0)
    return var < GRID_FLAT_STD**2


def dark_mask(y_hr):
    """True where the HR luma's 7x7 mean is below GRID_DARK_LUMA: shadows and black, where a faint
    grid shows most to the eye."""
    return _box_mean(y_hr, 7) < GRID_DARK_LUMA


def grid_strength(y, period, mask=None):
    """Strength of a pattern repeating every ``period`` pixels, in grey levels.

    M[a, b] is the mean high-pass residual (:func:`high_pass`) over the pixels (i, j) with
    i mod period = a and j mod period = b (those in ``mask`` only, if given); the result is the
    standard deviation of that period x period table: the energy at the DFT bins (k/period, l/period),
    where a sub-pixel convolution's checkerboard lives and natural images have almost none.
    The phase is counted from the array's top-left pixel: crop borders in multiples of the period.
    None if a phase has no pixel (an image smaller than period x period, or an empty mask).
    """
    r = high_pass(np.asarray(y, dtype=np.float64))
    h, w = r.shape
    phase = (np.arange(h)[:, None] % period) * period + np.arange(w)[None, :] % period  # (h, w)
    keep = np.ones_like(r, dtype=bool) if mask is None else mask
    counts = np.bincount(phase[keep], minlength=period * period)
    if counts.min() == 0:
        return None
    table = np.bincount(phase[keep], weights=r[keep], minlength=period * period) / counts
    return float(table.std())


def border_ratio(y, band=BORDER_BAND):
    """Mean |high-pass residual| in the outer ``band`` pixels over that inside it: about 1 for an
    image whose edges look like its interior, above 1 for a frame. None if nothing is inside, or the
    inside has no detail at all."""
    a = np.abs(high_pass(np.asarray(y, dtype=np.float64)))
    if min(a.shape) <= 2 * band:
        return None
    inner = a[band:-band, band:-band]
    outer_sum = a.sum() - inner.sum()
    inner_mean = inner.mean()
    if inner_mean == 0:
        return None
    return float(outer_sum / (a.size - inner.size) / inner_mean)


def artifact_scores(sr, hr, scale, crop_border):
    """{'grid_flat', 'grid_dark', 'grid', 'border'} of an 8-bit RGB image (PIL or array) against its HR image.

    On the Y channel with ``crop_border`` pixels cut; the grid's period is ``scale``, and the flat and
    dark masks come from the HR image, so every method is measured on the same pixels. 'grid_flat'
    ('grid_dark') is None when the HR image has fewer than GRID_FLAT_MIN_PIXELS flat (dark) pixels:
    its mean would be noise.
    """
    y_sr, y_hr = _y_pair(sr, hr, crop_border)
    scores = {}
    for name, mask in (("grid_flat", flat_mask(y_hr)), ("grid_dark", dark_mask(y_hr))):
        scores[name] = grid_strength(y_sr, scale, mask) if mask.sum() >= GRID_FLAT_MIN_PIXELS else None
    return {**scores, "grid": grid_strength(y_sr, scale), "border": border_ratio(y_sr)}
