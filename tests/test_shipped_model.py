"""The shipped checkpoint is the trained x4 SRResNet: it loads, records how it was made, and beats
bicubic on the shipped sample image."""


import numpy as np

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
