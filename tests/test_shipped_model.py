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
SRGAN = ROOT / "checkpoints" / "srgan_mse_x4.pth"


@pytest.mark.parametrize("path, arch, args, keys", [
    (CHECKPOINT, "SRResNet", dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16,
                                  scaling_factor=4),
     ("script", "data", "iterations", "precision", "train_seconds", "commit", "val_psnr")),
    (SRGAN, "Generator", None, ("method", "init", "content_loss", "beta", "iterations", "train_seconds",
                                "data", "holdout", "selection", "commit"))], ids=["srresnet", "srgan"])
def test_shipped_checkpoints_are_small_inference_files_that_record_how_they_were_made(path, arch, args, keys):
    assert path.stat().st_size < 10 * 2**20
    ckpt = checkpoint.load_checkpoint(path)
    assert "training" not in ckpt and ckpt["model"]["arch"] == arch  # inference-only
    assert args is None or ckpt["model"]["args"] == args
    assert all(key in ckpt["info"] for key in keys), sorted(ckpt["info"])
    if arch == "Generator":
        assert ckpt["info"]["content_loss"] == "mse" and ckpt["info"]["iteration"] == ckpt["info"]["iterations"]


@pytest.mark.slow  # full-size models on real photos
def test_shipped_model_beats_bicubic_on_the_sample():
    model = checkpoint.load_model(CHECKPOINT)
    hr = images.open_image(ROOT / "data" / "astronaut.png").crop((160, 80, 352, 272))  # 192 x 192: the face and suit
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


@pytest.mark.slow
def test_shipped_srgan_keeps_the_artifact_bounds_on_the_sample():
    """On the shipped photo (x4 down, then up), the SRGAN-MSE generator stays clean: a grid over flat
    regions and a border ratio within the bounds it was chosen by (0.20 and 1.15) and a PSNR above
    bicubic. (The first shipped SRGAN-MSE had a grid of 0.68 here, at NIQE 5.69 against the
    SRResNet's 6.49: its lower NIQE was partly its grid. This one scores 6.60 on this photo.)"""
    hr = images.crop_to_multiple(images.open_image(ROOT / "data" / "coffee.png"), 4)
    lr = images.bicubic_resize(hr, (hr.width // 4, hr.height // 4))
    sr, _ = inference.upscale_image(inference.prepare_model(checkpoint.load_model(SRGAN), "cpu", "fp32"),
                                    lr, 4, "fp32", "cpu")
    scores = metrics.artifact_scores(sr, hr, 4, 4)
    assert scores["grid_flat"] <= 0.20 and scores["border"] <= 1.15, scores  # measured: 0.12, 0.70
    assert metrics.calc_psnr(sr, hr, 4) > metrics.calc_psnr(images.bicubic_resize(lr, hr.size), hr, 4), scores


@pytest.mark.parametrize("path", [CHECKPOINT, SRGAN], ids=["srresnet", "srgan"])
def test_flat_field_probe_of_every_shipped_model(path):
    """Constant 128x96 images at 0, 128 and 255, up-scaled as every script does: no pixel strays more
    than 12 grey levels (docs/artifacts.md). The first SRGAN-MSE strayed 200 on black."""
    import evaluation
    model = inference.prepare_model(checkpoint.load_model(path), "cpu", "fp32")
    deviations = evaluation.flat_field_probe(model, 4)
    assert max(deviations.values()) <= 12, deviations
