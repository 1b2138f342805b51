"""PSNR and SSIM as the super-resolution papers and BasicSR compute them.

Both work on the Y channel of ITU-R BT.601 (Y = 16 + 65.481 R + 128.553 G + 24.966 B, with R, G, B
in [0, 1]) of uint8 RGB images, with ``crop_border`` pixels removed on every side. SSIM follows
Wang et al., IEEE TIP 2004: 11x11 Gaussian window (sigma 1.5), valid region only,
C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2.
"""

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image

from images import Y_WEIGHTS


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

