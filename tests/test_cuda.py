"""The CUDA paths: training steps under fp16 (GradScaler), bf16 and fp32 with channels_last, for both
scripts; inference in every precision, tiled and not; DDP over NCCL where there are two GPUs.

Skipped, with the reason, on a machine without a CUDA GPU (CI has none): run `pytest tests/test_cuda.py`
on a GPU machine to check them.
"""

import math
import os
import subprocess
import sys

import numpy as np
import pytest
import torch

import checkpoint
import inference
import models
import train_srgan
import train_srresnet
from conftest import ROOT, TINY, random_image, read_log

pytestmark = pytest.mark.skipif(not torch.cuda.is_available(), reason="no CUDA GPU on this machine")

TINY_FLAGS = ["--n-blocks", "1", "--n-channels", "8", "--crop-size", "24", "--batch-size", "2", "--workers", "0"]


def srresnet_argv(data_lists, ckpt_dir, iterations, *extra):
    return ["--data-folder", str(data_lists), "--checkpoint-dir", str(ckpt_dir), "--iterations", str(iterations),
            "--val-data", "Val", "--device", "cuda", "--log-every", "1", *TINY_FLAGS, *map(str, extra)]


@pytest.mark.parametrize("precision, channels_last", [("fp16", True), ("bf16", True), ("fp32", True), ("fp32", False)])
def test_srresnet_training_step_on_cuda(tmp_path, data_lists, precision, channels_last):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    ck = tmp_path / "ck"
    layout = "--channels-last" if channels_last else "--no-channels-last"
    result = train_srresnet.main(srresnet_argv(data_lists, ck, 6, "--precision", precision, layout, "--val-every", "3"))
    assert math.isfinite(result["loss"]) and math.isfinite(result["best_psnr"])
    assert all(math.isfinite(float(r["loss"])) for r in read_log(ck / "srresnet_log.csv"))
    saved = checkpoint.load_checkpoint(ck / "srresnet_latest.pth")
    scaler = saved["training"]["scaler"]
    # the grad scaler runs (and is saved with its scale) exactly for fp16
    assert ("scale" in scaler and scaler["scale"] > 0) == (precision == "fp16")
    # the checkpoint written on the GPU loads on the CPU
    model = checkpoint.load_model(ck / "srresnet_latest.pth", "cpu")
    assert next(model.parameters()).device.type == "cpu"
    # and the run resumes on the GPU
    train_srresnet.main(["--resume", str(ck / "srresnet_latest.pth"), "--iterations", "8"])
    assert checkpoint.load_checkpoint(ck / "srresnet_latest.pth")["training"]["iteration"] == 8


@pytest.mark.parametrize("precision", ["fp16", "bf16"])
@pytest.mark.parametrize("content", [["--content-loss", "mse"],
                                     ["--vgg-weights", "random", "--vgg-i", "2", "--vgg-j", "2"]])
def test_srgan_training_step_on_cuda(tmp_path, data_lists, precision, content):
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    train_srresnet.main(srresnet_argv(data_lists, tmp_path / "pre", 2, "--precision", "fp32"))
    ck = tmp_path / "gan"
    argv = ["--init", str(tmp_path / "pre" / "srresnet_latest.pth"), "--data-folder", str(data_lists),
            "--checkpoint-dir", str(ck), "--iterations", "4", "--val-data", "Val", "--device", "cuda",
            "--precision", precision, "--crop-size", "24", "--batch-size", "2", "--workers", "0",
            "--d-n-channels", "8", "--fc-size", "16", "--log-every", "1", *content]
    result = train_srgan.main(argv)
    assert all(math.isfinite(v) for v in result["losses"].values())
    rows = read_log(ck / "srgan_log.csv")
    assert len(rows) == 4 and all(0 <= float(r["d_real"]) <= 1 for r in rows)
    train_srgan.main(["--resume", str(ck / "srgan_latest.pth"), "--iterations", "6"])
    assert isinstance(checkpoint.load_model(ck / "srgan_latest.pth"), models.Generator)


@pytest.mark.parametrize("precision, tolerance", [("fp32", 1), ("bf16", 6), ("fp16", 3)])
def test_inference_on_cuda_matches_the_cpu(precision, tolerance):
    """The GPU output in each precision is the CPU fp32 output within a few grey levels; tiles
    (with their context) change at most float rounding."""
    if precision == "bf16" and not torch.cuda.is_bf16_supported():
        pytest.skip("this GPU has no bf16")
    torch.manual_seed(0)
    model = models.SRResNet(**TINY).eval()
    img = random_image((70, 50), seed=2)
    reference, _ = inference.upscale_image(inference.prepare_model(model, "cpu", "fp32"), img, 4, "fp32", "cpu")
    fast = inference.prepare_model(model, "cuda", precision)
    whole, _ = inference.upscale_image(fast, img, 4, precision, "cuda", tile=0)
    tiled, _ = inference.upscale_image(fast, img, 4, precision, "cuda", tile=32)
    reference, whole, tiled = (np.asarray(x).astype(int) for x in (reference, whole, tiled))
    assert np.abs(whole - reference).max() <= tolerance
    assert np.abs(tiled - whole).max() <= 1


@pytest.mark.skipif(torch.cuda.device_count() < 2, reason="DDP over NCCL needs two GPUs")
def test_ddp_with_nccl_trains_two_processes(tmp_path, data_lists):
    ck = tmp_path / "ddp"
    cmd = [sys.executable, "-m", "torch.distributed.run", "--standalone", "--nproc_per_node=2",
           os.path.join(ROOT, "train_srresnet.py"), *srresnet_argv(data_lists, ck, 4, "--precision", "fp32")]
    proc = subprocess.run(cmd, cwd=ROOT, capture_output=True, text=True, timeout=600)
    assert proc.returncode == 0, proc.stderr[-2000:]
    assert checkpoint.load_checkpoint(ck / "srresnet_latest.pth")["training"]["iteration"] == 4
