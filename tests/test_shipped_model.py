"""The shipped checkpoints, the x4 SRResNet and the SRGAN-MSE generator: they load, record how they
were made, and do on the shipped sample images what each is for."""

import numpy as np
import pytest
from PIL import Image

import checkpoint
import images
import inference
import metrics
import models
from conftest import ROOT

CHECKPOINT = ROOT / "checkpoints" / "srresnet_x4.pth"
SAMPLE = ROOT / "data" / "astronaut.png"


def test_shipped_checkpoint_is_small_and_documented():
    assert CHECKPOINT.stat().st_size < 10 * 2**20
    ckpt = checkpoint.load_checkpoint(CHECKPOINT)
    assert "training" not in ckpt  # inference-only
    assert ckpt["model"]["arch"] == "SRResNet"
    assert ckpt["model"]["args"] == dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16,
                                         scaling_factor=4)
    info = ckpt["info"]
    for key in ("script", "data", "iterations", "precision", "train_seconds", "commit", "val_psnr"):
        assert key in info, key


@pytest.mark.slow  # full-size models on real photos
def test_shipped_model_beats_bicubic_on_the_sample():
    model = checkpoint.load_model(CHECKPOINT)
    hr = images.open_image(SAMPLE).crop((160, 80, 352, 272))  # 192 x 192: the face and suit
    lr = images.bicubic_resize(hr, (48, 48))
    bicubic = images.bicubic_resize(lr, hr.size)
    sr, _ = inference.upscale_image(inference.prepare_model(model, "cpu", "fp32"), lr, 4, "fp32", "cpu")
    psnr_bicubic, psnr_model = metrics.calc_psnr(bicubic, hr, 4), metrics.calc_psnr(sr, hr, 4)
    assert psnr_model > psnr_bicubic + 0.5, (psnr_model, psnr_bicubic)
    # and a random model of the same architecture does not (the check can tell them apart)
    random_sr, _ = inference.upscale_image(inference.prepare_model(models.SRResNet().eval(), "cpu", "fp32"),
                                           lr, 4, "fp32", "cpu")
    assert metrics.calc_psnr(random_sr, hr, 4) < psnr_bicubic
    assert np.asarray(sr).shape == (192, 192, 3)


def test_shipped_model_keeps_flat_regions_flat():
    """A flat patch stays flat, black included. A BatchNorm SRResNet can fail exactly there while its
    training loss looks normal: a snapshot of the long run (iteration 5,000, Set5 25.5 dB) painted a
    colour grid over black hair and feathers, max deviation 249 and std 60 on a black input."""
    model = inference.prepare_model(checkpoint.load_model(CHECKPOINT), "cpu", "fp32")
    for value in ((0, 0, 0), (8, 8, 8), (20, 10, 5), (128, 128, 128), (250, 250, 250)):
        sr, _ = inference.upscale_image(model, Image.new("RGB", (32, 32), value), 4, "fp32", "cpu")
        inner = np.asarray(sr).astype(np.float64)[16:-16, 16:-16]  # away from the zero padding
        assert np.abs(inner - value).max() < 20 and inner.std(axis=(0, 1)).max() < 5, value


SRGAN = ROOT / "checkpoints" / "srgan_mse_x4.pth"


def test_shipped_srgan_is_a_documented_generator():
    ckpt = checkpoint.load_checkpoint(SRGAN)
    assert "training" not in ckpt and ckpt["model"]["arch"] == "Generator"
    assert SRGAN.stat().st_size < 10 * 2**20
    info = ckpt["info"]
    for key in ("method", "init", "content_loss", "beta", "iterations", "train_seconds", "data", "holdout",
                "selection", "commit"):
        assert key in info, key
    assert info["content_loss"] == "mse" and info["iteration"] == info["iterations"]


@pytest.mark.slow
def test_shipped_srgan_trades_psnr_for_a_lower_niqe_on_the_sample():
    """What the adversarial phase is for, on the shipped photo (x4 down, then up): the SRGAN output
    scores a clearly lower (better) NIQE than the SRResNet's, at a lower PSNR that still beats bicubic."""
    hr = images.crop_to_multiple(images.open_image(ROOT / "data" / "coffee.png"), 4)
    lr = images.bicubic_resize(hr, (hr.width // 4, hr.height // 4))
    scores = {}
    for name, path in (("srresnet", CHECKPOINT), ("srgan", SRGAN)):
        sr, _ = inference.upscale_image(inference.prepare_model(checkpoint.load_model(path), "cpu", "fp32"),
                                        lr, 4, "fp32", "cpu")
        scores[name] = (metrics.calc_psnr(sr, hr, 4), metrics.calc_niqe(sr, 4))
    bicubic_psnr = metrics.calc_psnr(images.bicubic_resize(lr, hr.size), hr, 4)
    assert scores["srgan"][1] < scores["srresnet"][1] - 0.5, scores  # measured: 4.85 vs 6.32
    assert bicubic_psnr < scores["srgan"][0] < scores["srresnet"][0], (bicubic_psnr, scores)
