"""PSNR / SSIM on the Y channel; NIQE against the MATLAB release."""

import math

import numpy as np
import pytest
from PIL import Image, ImageFilter

import evaluation
import images
import metrics
import utils
from conftest import need_shared, random_image


def test_y_channel_formula():
    arr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    y = metrics.y_channel(arr)
    expected = [16 + 65.481, 16 + 128.553, 16 + 24.966, 16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255]
    assert np.allclose(y[0], expected)


def test_psnr_known_value_border_and_sizes():
    # gray images whose Y differ by a known constant: Y = 16 + 219 * v / 255 for R = G = B = v
    a = np.full((20, 20, 3), 100, dtype=np.uint8)
    b = np.full((20, 20, 3), 110, dtype=np.uint8)
    diff = 10 * (65.481 + 128.553 + 24.966) / 255
    assert metrics.calc_psnr(a, b, 0) == pytest.approx(10 * math.log10(255**2 / diff**2), abs=1e-9)
    assert metrics.calc_psnr(a, a, 0) == float("inf")
    b = a.copy()
    b[:4] = 0  # only the top 4 rows differ: cropped away by a border of 4, not of 3
    assert metrics.calc_psnr(a, b, 4) == float("inf")
    assert metrics.calc_psnr(a, b, 3) < 30
    with pytest.raises(ValueError, match="sizes differ"):
        metrics.calc_psnr(a, b[:, :19], 0)


def test_ssim_identical_and_known_values():
    img = random_image((40, 30))
    assert metrics.calc_ssim(img, img, 4) == pytest.approx(1.0, abs=1e-12)
    # two constant images: sigma = 0 everywhere, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    a = np.full((30, 30, 3), 100, dtype=np.uint8)
    b = np.full((30, 30, 3), 150, dtype=np.uint8)
    ya, yb = metrics.y_channel(a)[0, 0], metrics.y_channel(b)[0, 0]
    c1 = (0.01 * 255) ** 2
    expected = (2 * ya * yb + c1) / (ya**2 + yb**2 + c1)
    assert metrics.calc_ssim(a, b, 0) == pytest.approx(expected, abs=1e-9)
    noisy = np.clip(np.asarray(img).astype(int) + np.random.default_rng(0).integers(-40, 41, (30, 40, 3)), 0, 255)
    assert 0 < metrics.calc_ssim(noisy.astype(np.uint8), img, 4) < 0.95


def test_ssim_gaussian_window_matches_independent_computation():
    """SSIM at one window position computed by hand with numpy equals the map's value there."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (11, 11, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (11, 11, 3), dtype=np.uint8)
    x, y = metrics.y_channel(a), metrics.y_channel(b)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cov = (w * x * y).sum() - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert metrics.calc_ssim(a, b, 0) == pytest.approx(expected, abs=1e-10)


def test_niqe_matches_the_matlab_release_on_baboon():
    """The official MATLAB NIQE of Set14's baboon (rounded Y of rgb2ycbcr, no border) is 5.72957338."""
    baboon = Image.open(need_shared("Set14") / "baboon.bmp")
    assert metrics.calc_niqe(baboon, 0) == pytest.approx(5.72957338, abs=1e-3)


def test_niqe_window_is_the_release_s():
    x = np.arange(7) - 3
    g = np.exp(-(x**2) / (2 * (7 / 6) ** 2))
    with np.load(metrics.NIQE_PARAMS) as f:
        window = f["gaussian_window"]
    # the separable filter equals a 2-D correlation with the stored window (replicate padding)
    img = np.random.default_rng(0).uniform(0, 255, (20, 17))
    padded = np.pad(img, 3, mode="edge")
    direct = np.array([[np.sum(padded[i:i + 7, j:j + 7] * window) for j in range(17)] for i in range(20)])
    assert np.allclose(metrics._gaussian_filter_replicate(img), direct, atol=1e-9)
    assert np.allclose(np.outer(g, g) / np.outer(g, g).sum(), window, atol=1e-15)


def test_matlab_half_reproduces_ramps_and_constants():
    """Bicubic reproduces linear functions: output pixel i of a 0-based ramp is at input 2i + 0.5
    (MATLAB's pixel-centre convention); a constant stays constant up to the mirrored edges."""
    ramp = np.tile(np.arange(40, dtype=np.float64), (30, 1))  # (30, 40), value = column
    half = metrics.matlab_half(ramp)
    assert half.shape == (15, 20)
    assert np.allclose(half[:, 2:-2], 2 * np.arange(2, 18) + 0.5)
    assert np.allclose(metrics.matlab_half(np.full((9, 11), 7.0)), 7.0)
    assert metrics.matlab_half(np.zeros((9, 11))).shape == (5, 6)  # ceil, as MATLAB


def test_niqe_is_worse_for_a_blurred_photo():
    photo = Image.open("data/astronaut.png").convert("RGB")
    blurred = photo.filter(ImageFilter.GaussianBlur(2))
    assert metrics.calc_niqe(blurred, 4) > metrics.calc_niqe(photo, 4) + 1


def test_niqe_needs_one_block_and_one_is_enough():
    with pytest.raises(ValueError, match="at least 96x96"):
        metrics.niqe(np.zeros((95, 200)))
    with pytest.raises(ValueError, match="at least 96x96"):
        metrics.calc_niqe(random_image((100, 200)), 4)  # 92 rows after the border crop
    assert math.isfinite(metrics.calc_niqe(random_image((104, 110)), 4))


@pytest.mark.parametrize("content", [None, b"not a zip", "wrong shape"])
def test_bad_niqe_parameter_file_is_one_line_naming_it(tmp_path, content):
    path = tmp_path / "params.npz"
    if content == "wrong shape":
        np.savez(path, mu_pris_param=np.zeros((1, 35)), cov_pris_param=np.eye(36))
    elif content is not None:
        path.write_bytes(content)
    with pytest.raises(utils.UserError) as e:
        metrics.load_niqe_params(str(path))
    assert str(e.value).startswith(str(path)) and "\n" not in str(e.value)


# ----------------------------------------------------------------------------------------------
# artifact measures


def _smooth_image(h=96, w=128, seed=0):
    """A smooth natural-ish luma: a few low-frequency waves plus a little noise (0-255 floats)."""
    rng = np.random.default_rng(seed)
    yy, xx = np.mgrid[0:h, 0:w].astype(np.float64)
    img = 120 + 40 * np.sin(xx / 17 + 1) * np.cos(yy / 23) + 20 * np.sin((xx + yy) / 31)
    return img + rng.normal(0, 0.3, img.shape)


@pytest.mark.parametrize("period", [2, 3, 4])
def test_grid_finds_a_planted_period_pattern_and_not_a_clean_image(period):
    clean = _smooth_image()
    assert metrics.grid_strength(clean, period) < 0.05
    pattern = np.zeros((period, period))
    pattern[0, 0], pattern[-1, -1] = 3.0, -3.0  # a checkerboard-like stamp of amplitude 3 grey levels
    planted = clean + np.tile(pattern, (96 // period + 1, 128 // period + 1))[:96, :128]
    assert metrics.grid_strength(planted, period) > 1.0
    # a pattern of another period is not counted as this one's
    other = clean + 3.0 * (np.indices((96, 128)).sum(0) % 2)  # period 2
    if period == 3:
        assert metrics.grid_strength(other, period) < 0.1


def test_grid_counts_only_the_masked_pixels_and_none_when_a_phase_is_empty():
    img = _smooth_image()
    img[:, 64:] += 4.0 * (np.indices((96, 64)).sum(0) % 2)  # a grid in the right half only
    left = np.zeros(img.shape, bool)
    left[:, :60] = True
    assert metrics.grid_strength(img, 4, left) < 0.1 < 1.0 < metrics.grid_strength(img, 4, ~left)
    assert metrics.grid_strength(img[:3, :3], 4) is None
    assert metrics.grid_strength(img, 4, np.zeros(img.shape, bool)) is None


def test_flat_mask_is_where_the_7x7_std_is_below_2():
    img = np.full((40, 40), 100.0)
    img[:, 20:] += np.random.default_rng(0).normal(0, 10, (40, 20))
    mask = metrics.flat_mask(img)
    assert mask[:, :15].all() and not mask[:, 24:].any()


def test_border_ratio_sees_a_frame():
    img = _smooth_image(seed=1) + np.random.default_rng(1).normal(0, 2, (96, 128))
    assert metrics.border_ratio(img) == pytest.approx(1.0, abs=0.15)
    framed = img.copy()
    framed[:3] += 20 * (np.arange(128) % 2)  # a bright, busy line along the top edge
    assert metrics.border_ratio(framed) > 1.5
    assert metrics.border_ratio(img[:16, :40]) is None  # nothing inside the 8-pixel bands
    assert metrics.border_ratio(np.zeros((40, 40))) is None  # no detail anywhere


def test_artifact_scores_on_rgb_images_the_flat_threshold_and_dark_regions():
    hr = np.full((64, 64, 3), 90, np.uint8)  # all flat: 56x56 = 3136 flat pixels after a 4-pixel crop
    sr = hr.copy()
    sr[::4, ::4] = 110  # a dot every 4 pixels
    scores = metrics.artifact_scores(sr, hr, 4, 4)
    assert scores["grid_flat"] > 3 and scores["grid"] == pytest.approx(scores["grid_flat"])
    assert metrics.artifact_scores(hr, hr, 4, 4)["grid_flat"] < 1e-9
    small = hr[:48, :48]  # 40x40 = 1600 flat pixels after the crop: fewer than 2000
    assert metrics.artifact_scores(small, small, 4, 4)["grid_flat"] is None
    assert scores["grid_dark"] is None  # grey 90 is not dark
    # the grid over dark regions reads only where HR is dark
    hr = np.full((96, 96, 3), 200, np.uint8)
    hr[:, :48] = 20  # a black left half, a bright right half
    sr = hr.copy()
    sr[::4, 52::4] = 230  # a grid on the bright half only...
    assert metrics.artifact_scores(sr, hr, 4, 4)["grid_dark"] < 1e-9
    sr = hr.copy()
    sr[::4, :44:4] = 26  # ...or on the dark half only: a faint one, 6 grey levels
    assert metrics.artifact_scores(sr, hr, 4, 4)["grid_dark"] > 1


def test_artifact_measures_of_hr_and_bicubic_on_set14():
    """The HR and bicubic rows measured when these measures were defined (Set14, x4, border 4)."""
    rows = {"hr": [], "bicubic": []}
    for path in sorted(need_shared("Set14").iterdir()):
        hr, lr = evaluation.lr_pair(images.open_image(path), 4)
        rows["hr"].append(metrics.artifact_scores(hr, hr, 4, 4))
        rows["bicubic"].append(metrics.artifact_scores(images.bicubic_resize(lr, hr.size), hr, 4, 4))
    for name, flat, grid, border in (("hr", 0.03, 0.12, 0.88), ("bicubic", 0.03, 0.03, 1.30)):
        s = rows[name]
        assert np.mean([x["grid_flat"] for x in s if x["grid_flat"] is not None]) == pytest.approx(flat, abs=0.005)
        assert np.mean([x["grid"] for x in s]) == pytest.approx(grid, abs=0.005)
        assert np.mean([x["border"] for x in s]) == pytest.approx(border, abs=0.005)
