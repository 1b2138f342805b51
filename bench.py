"""Benchmark the inference and training fast paths against plain reference paths, in one run.

    python bench.py                          # default SRResNet x4, random weights, full sizes
    python bench.py --checkpoint checkpoints/srresnet_x4.pth --json bench.json
    python bench.py --quick                  # tiny sizes: a smoke test that takes seconds

Every comparison is made in the same run, on the same weights and the same inputs:

- Inference on a 256x256 LR image (``--size``): the reference path (the model exactly as trained:
  fp32, NCHW, BatchNorm not folded, eval mode, ``torch.no_grad``) against the default inference path
  of test.py (inference.prepare_model + inference.upscale_tensor, precision 'auto' resolved as test.py
  does: BatchNorm folded, channels_last, autocast, ``torch.inference_mode``) and an fp32 fast path.
  Seconds per image (median of ``--repeats`` runs after ``--warmup`` runs), LR megapixels/s, GFLOP/s
  from the model's analytic FLOP count (convolutions only, 2 * Cin * Cout * k * k * Hout * Wout each)
  and as % of the peak of a large matmul timed in the same dtype in the same run, the speed-up, and
  how far the fast outputs are from the reference output.
- Tiled inference of a 1024x1024 LR image (``--tile-size``) whole and in tiles: time and peak memory,
  each configuration in a fresh subprocess (peak RSS read from /proc/self/status VmHWM in the child,
  and torch.cuda.max_memory_allocated on CUDA) so that one configuration's peak cannot hide another's.
- Training: iterations/s of train_srresnet.py's loop at batch 16, crop 96, reference (fp32, NCHW,
  Adam(foreach=False)) against the fast configuration (autocast in the 'auto' precision, channels_last,
  training.make_optimizer); and the training data loader alone (training.train_batches with the
  scripts' default --workers) against the samples/s the model consumes.
- The data loader on large PNGs (``--photos`` of 2040x1356, DIV2K's size, written by this script):
  decoding each sample against the decoded store of ``create_data_lists.py --store``.

Prints a Markdown table on stdout (progress goes to stderr) and, with ``--json OUT``, every number.
Importing this module does no work.
"""

import argparse
import contextlib
import copy
import io
import json
import math
import os
import platform
import statistics
import subprocess
import sys
import tempfile
import time

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image
from torch import nn

import checkpoint
import datasets
import images
import inference
import metrics
import models
import training
import train_srresnet
import utils

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_LOADER_IMAGES = os.path.join("datasets", "T91")

# settings that --quick changes: (flag attribute, full-size default, --quick default)
SIZES = {
    "size": (256, 32),
    "repeats": (5, 2),
    "warmup": (1, 1),
    "matmul_size": (4096, 512),
    "tile_size": (1024, 64),
    "tile": (256, 32),
    "batch_size": (16, 2),
    "crop_size": (96, 32),
    "train_iters": (8, 2),
    "loader_batches": (40, 3),
    "photos": (16, 2),  # at least one batch
}
# the large PNGs of the decoded-store loader benchmark: DIV2K's typical size (--quick: a tenth)
PHOTO_SIZE = {False: (2040, 1356), True: (204, 136)}

# targets of the issue (ratios measured in one run)
TARGET_INFERENCE_SPEEDUP = 2.5
TARGET_PEAK_FRACTION = 0.60
TARGET_PSNR_DB = 40.0  # "high": our threshold for the default (reduced-precision) path vs the reference
TARGET_FP32_MAX_DIFF = 1e-4
TARGET_TRAINING_SPEEDUP = 2.0
TARGET_LOADER_RATIO = 3.0
TARGET_TILED_RSS_BYTES = 1.5e9


def _log(message):
    """Progress line on stderr (stdout carries only the table)."""
    print(f"[bench] {message}", file=sys.stderr, flush=True)


# ----------------------------------------------------------------------------------------------
# model, inputs, FLOPs


def randomize_batchnorm(model, seed=0):
    """Give every BatchNorm2d non-trivial running statistics and affine parameters (in place).

    A freshly initialised model has mean 0 / variance 1 statistics, which makes BatchNorm folding
    nearly an identity; these values look more like a trained model's, so the comparison of the
    folded fast path with the unfolded reference means something.
    """
    g = torch.Generator().manual_seed(seed)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                n = bn.num_features
                bn.running_mean.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)
                bn.running_var.copy_(torch.rand(n, generator=g) + 0.5)
                bn.weight.copy_(torch.rand(n, generator=g) * 0.4 + 0.8)
                bn.bias.copy_((torch.rand(n, generator=g) - 0.5) * 0.2)
    return model


def make_model(path=None, seed=0, **model_args):
    """The benchmarked model: loaded from ``path``, or an SRResNet with random weights
    (seeded) and randomised BatchNorm statistics. Returned on the CPU, in eval mode."""
    if path:
        return checkpoint.load_model(path)
    with torch.random.fork_rng(devices=[]):
        torch.manual_seed(seed)
        model = models.SRResNet(**model_args)
    return randomize_batchnorm(model, seed).eval()


def conv_flops(model, height, width, batch=1):
    """FLOPs of the model's convolutions for one forward pass of a (batch, 3, height, width) input.

    Counted analytically: each Conv2d costs 2 * (Cin / groups) * Cout * kh * kw * Hout * Wout per
    image (a multiply and an add per weight and output pixel), with Hout, Wout from a forward pass
    on the 'meta' device (shapes only, no arithmetic, no memory). Bias additions, BatchNorm,
    activations, PixelShuffle and the skip additions are not counted (under 1% of the total).
    """
    meta = copy.deepcopy(checkpoint.unwrap_model(model)).to("meta")
    total = 0

    def count(conv, inputs, output):
        nonlocal total
        n, c_out, h_out, w_out = output.shape
        kh, kw = conv.kernel_size
        total += 2 * n * (conv.in_channels // conv.groups) * c_out * kh * kw * h_out * w_out

    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    try:
        with torch.no_grad():
            meta(torch.empty(batch, 3, height, width, device="meta"))
    finally:
        for h in hooks:
            h.remove()
    return total


def flops_per_lr_pixel(model):
    """Convolution FLOPs per LR input pixel ('same' padding makes it independent of the size)."""
    return conv_flops(model, 16, 16) / 256


def synthetic_lr(size, seed=0, batch=1):
    """ImageNet-normalised LR images (batch, 3, size, size) with image-like structure: smooth
    random colour fields plus a little noise, seeded."""
    g = torch.Generator().manual_seed(seed)
    coarse = torch.rand(batch, 3, max(size // 8, 2), max(size // 8, 2), generator=g)
    x = F.interpolate(coarse, size=(size, size), mode="bicubic", align_corners=False)
    x = (x + (torch.rand(batch, 3, size, size, generator=g) - 0.5) * 0.15).clamp_(0, 1)
    return images.convert_image(x, "[0, 1]", "imagenet-norm")


# ----------------------------------------------------------------------------------------------
# timing


def _sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)


def time_runs(fn, device, warmup, repeats):
    """Seconds of each of ``repeats`` calls of ``fn()`` after ``warmup`` untimed calls."""
    for _ in range(warmup):
        fn()
    times = []
    for _ in range(repeats):
        _sync(device)
        start = time.perf_counter()
        fn()
        _sync(device)
        times.append(time.perf_counter() - start)
    return times


DTYPES = {"fp32": torch.float32, "bf16": torch.bfloat16, "fp16": torch.float16}


def matmul_peak(device, precision, n=4096, repeats=5, warmup=1):
    """Achieved GFLOP/s of an n x n by n x n matmul in the dtype of ``precision`` (median of repeats).

    This is the practical peak the convolutions are compared with (a large GEMM is the best case
    for the same BLAS / oneDNN / cuBLAS kernels).
    """
    dtype = DTYPES[precision]
    g = torch.Generator().manual_seed(0)
    a = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    b = torch.randn(n, n, generator=g).to(device=device, dtype=dtype)
    seconds = statistics.median(time_runs(lambda: torch.mm(a, b), device, warmup, repeats))
    return 2 * n**3 / seconds / 1e9


# ----------------------------------------------------------------------------------------------
# inference


def _to_uint8(out):
    """(3, H, W) [-1, 1] output quantised to a uint8 (H, W, 3) array, as saved images are."""
    return np.asarray(images.convert_image(out.float().cpu(), "[-1, 1]", "pil"))


def rgb_psnr(a, b):
    """Plain PSNR in dB over all pixels and the 3 channels of two uint8 arrays (inf if identical)."""
    mse = np.mean((a.astype(np.float64) - b.astype(np.float64)) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def compare_outputs(out, ref):
    """How far an output is from the reference output: max |diff| on the [-1, 1] floats, and
    after uint8 quantisation the RGB PSNR, the Y-channel PSNR (metrics.calc_psnr, no border crop)
    and the fraction of differing uint8 values. PSNRs are None where the uint8 images are identical."""
    out8, ref8 = _to_uint8(out[0]), _to_uint8(ref[0])
    psnr = rgb_psnr(out8, ref8)
    psnr_y = metrics.calc_psnr(out8, ref8, 0)
    return {"max_abs_diff": float((out.float().cpu() - ref.float().cpu()).abs().max()),
            "psnr_rgb_db": psnr if math.isfinite(psnr) else None,
            "psnr_y_db": psnr_y if math.isfinite(psnr_y) else None,
            "uint8_differing_fraction": float(np.mean(out8 != ref8))}


def inference_configs(device, compile=False):
    """[(key, label, precision, compile)] of the fast inference rows for a device."""
    default = utils.resolve_precision("auto", device)
    rows = [("default", f"default: auto -> {default}, channels_last, BN folded, upsampling fused, inference_mode",
             default, False)]
    if device.type == "cuda":
        for p in ("bf16", "fp16"):
            if p != default and (p != "bf16" or torch.cuda.is_bf16_supported()):
                rows.append((p, f"{p} autocast, channels_last, BN folded, upsampling fused", p, False))
    if default != "fp32":
        rows.append(("fp32_fast", "fp32 fast: channels_last, BN folded, upsampling fused, inference_mode", "fp32", False))
    if compile:
        rows.append(("default_compiled", f"default ({default}) + torch.compile", default, True))
    return rows


def bench_inference(model, device, size, warmup, repeats, compile=False, seed=0, peaks=None, log=_log):
    """Time the reference and fast inference paths on one (1, 3, size, size) input.

    Args:
        model: the SRResNet / Generator (not modified).
        device: torch.device.
        size: LR side in pixels.
        warmup, repeats: untimed and timed runs per configuration.
        compile: add a torch.compile row (skipped with a note if compiling fails).
        peaks: {precision: matmul GFLOP/s} to express each row as a fraction of (optional).

    Returns:
        dict: size, flops_per_image, flops_per_lr_pixel, rows (list of dicts: key, label, precision,
        seconds (median), times, lr_mpix_per_s, gflops, peak_fraction, speedup, and for the fast
        rows the output differences of :func:`compare_outputs`), notes.
    """
    scale = checkpoint.unwrap_model(model).scaling_factor
    flops = conv_flops(model, size, size)
    lr = synthetic_lr(size, seed).to(device)
    notes, rows = [], []

    def row(key, label, precision, times, out=None, ref=None):
        seconds = statistics.median(times)
        r = {"key": key, "label": label, "precision": precision, "seconds": seconds, "times": times,
             "lr_mpix_per_s": size * size / seconds / 1e6, "gflops": flops / seconds / 1e9}
        if peaks and precision in peaks:
            r["peak_fraction"] = r["gflops"] / peaks[precision]
        if out is not None:
            r.update(compare_outputs(out, ref))
        return r

    # the reference: the model exactly as trained, fp32, NCHW, no folding
    log(f"inference {size}x{size}: reference (fp32, NCHW, BN unfolded, no_grad)")
    reference = copy.deepcopy(checkpoint.unwrap_model(model)).to(device).eval()
    reference = reference.to(memory_format=torch.contiguous_format)

    def run_reference():
        with torch.no_grad():
            return reference(lr)

    times = time_runs(run_reference, device, warmup, repeats)
    ref_out = run_reference().float().cpu()
    rows.append(row("reference", "reference: fp32, NCHW, BN unfolded, no_grad", "fp32", times))

    for key, label, precision, use_compile in inference_configs(device, compile):
        log(f"inference {size}x{size}: {label}")
        try:
            fast = inference.prepare_model(model, device, precision, compile=use_compile)

            def run_fast():
                return inference.upscale_tensor(fast, lr, scale, precision, device)

            times = time_runs(run_fast, device, warmup, repeats)
            out = run_fast()
        except Exception as e:  # only torch.compile is allowed to fail (no compiler, unsupported op...)
            if not use_compile:
                raise
            notes.append(f"torch.compile row skipped: {type(e).__name__}: {str(e).splitlines()[0][:200] if str(e) else ''}")
            log(notes[-1])
            continue
        rows.append(row(key, label, precision, times, out, ref_out))

    ref_seconds = rows[0]["seconds"]
    for r in rows:
        r["speedup"] = ref_seconds / r["seconds"]
    return {"size": size, "scale": scale, "flops_per_image": flops, "flops_per_lr_pixel": flops / (size * size),
            "rows": rows, "notes": notes}


# ----------------------------------------------------------------------------------------------
# tiled inference, one subprocess per configuration


def _proc_status_bytes(field):
    """A memory field of /proc/self/status (e.g. 'VmHWM', 'VmRSS') in bytes, or None off Linux."""
    try:
        with open("/proc/self/status") as f:
            for line in f:
                if line.startswith(field + ":"):
                    return int(line.split()[1]) * 1024
    except OSError:
        pass
    return None


def _peak_rss_bytes():
    """Peak resident set size of this process, in bytes."""
    peak = _proc_status_bytes("VmHWM")
    if peak is None:
        import resource
        peak = resource.getrusage(resource.RUSAGE_SELF).ru_maxrss
        peak *= 1 if sys.platform == "darwin" else 1024  # bytes on macOS, KiB on Linux
    return peak


def tiled_child(cfg):
    """Run one tiled-inference configuration in this (fresh) process and return its measurements.

    cfg: checkpoint, device, precision, size, tile (0 = whole image), seed, threads, output (a
    .npy path for the uint8 output, or None).
    """
    if cfg.get("threads"):
        torch.set_num_threads(cfg["threads"])
    device = torch.device(cfg["device"])
    precision = cfg["precision"]
    fast = inference.prepare_model(checkpoint.load_model(cfg["checkpoint"]), device, precision)
    scale = checkpoint.unwrap_model(fast).scaling_factor
    lr = synthetic_lr(cfg["size"], cfg["seed"])
    # one small untimed run so that one-off set-up (thread pools, oneDNN / cuDNN) is not timed
    inference.upscale_tensor(fast, lr[:, :, :48, :48], scale, precision, device)
    if device.type == "cuda":
        torch.cuda.synchronize(device)
        torch.cuda.reset_peak_memory_stats(device)
    rss_before = _proc_status_bytes("VmRSS")
    start = time.perf_counter()
    out = inference.upscale_tensor(fast, lr, scale, precision, device, tile=cfg["tile"] or None)
    _sync(device)
    seconds = time.perf_counter() - start
    result = {"tile": cfg["tile"], "seconds": seconds, "peak_rss_bytes": _peak_rss_bytes(),
              "rss_before_bytes": rss_before,
              "cuda_peak_bytes": torch.cuda.max_memory_allocated(device) if device.type == "cuda" else None}
    if cfg.get("output"):
        np.save(cfg["output"], _to_uint8(out[0]))
    return result


def tile_configs(size, tile):
    """Tile sizes to compare for a size x size image: whole (0), ``tile`` and inference.DEFAULT_TILE
    (the scripts' default) where it differs and is smaller than the image."""
    tiles = [0]
    for t in (tile, inference.DEFAULT_TILE):
        if t and t < size and t not in tiles:
            tiles.append(t)
    return tiles


def bench_tiled(model, device, size, tiles, precision, threads=None, seed=0, log=_log):
    """Time and peak memory of whole / tiled inference of one size x size LR image, each tile size
    in a fresh subprocess (see :func:`tiled_child`).

    Returns:
        dict: size, precision, rows (per tile size: tile, seconds, peak_rss_bytes, rss_before_bytes,
        cuda_peak_bytes, max_uint8_diff_vs_whole (the tiled output against the whole-image one)).
    """
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_tiled_") as tmp:
        path = os.path.join(tmp, "model.pth")
        checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model), path)
        for tile in tiles:
            log(f"tiled {size}x{size}: {'whole image' if not tile else f'tiles of {tile}'} ({precision}, fresh process)")
            cfg = {"checkpoint": path, "device": str(device), "precision": precision, "size": size,
                   "tile": tile, "seed": seed, "threads": threads, "output": os.path.join(tmp, f"out_{tile}.npy")}
            proc = subprocess.run([sys.executable, os.path.abspath(__file__), "--tiled-child", json.dumps(cfg)],
                                  stdout=subprocess.PIPE, text=True, cwd=HERE)
            if proc.returncode != 0:
                raise RuntimeError(f"the tiled-inference subprocess (tile {tile}) failed with exit code "
                                   f"{proc.returncode}; see its messages above")
            rows.append(json.loads(proc.stdout.strip().splitlines()[-1]))
        whole = np.load(os.path.join(tmp, "out_0.npy"))
        for r in rows:
            other = np.load(os.path.join(tmp, f"out_{r['tile']}.npy"))
            r["max_uint8_diff_vs_whole"] = int(np.abs(other.astype(np.int16) - whole.astype(np.int16)).max())
    return {"size": size, "precision": precision, "rows": rows}


# ----------------------------------------------------------------------------------------------
# training


def bench_training(model, device, batch_size, crop_size, warmup, iterations, seed=0, log=_log):
    """Iterations/s of train_srresnet.py's own loop: reference vs default training configuration.

    The script's main() runs from ``model`` (--init) on one synthetic batch that is already made
    (so this is compute only; see :func:`bench_loader`), and the time between batch requests is
    taken. Reference: --precision fp32 --no-channels-last with torch.optim.Adam(foreach=False).
    Default: the script's defaults ('auto' precision, channels_last, training.make_optimizer).

    Returns:
        dict: batch_size, crop_size, flops_per_iteration (about 3x the forward convolutions),
        rows (key, label, precision, seconds (median per iteration), its_per_s, samples_per_s,
        gflops, speedup).
    """
    scale = checkpoint.unwrap_model(model).scaling_factor
    if crop_size % scale:
        raise utils.UserError(f"--crop-size {crop_size} is not a multiple of the scale {scale}")
    lr_imgs = synthetic_lr(crop_size // scale, seed, batch_size)  # (N, 3, c/s, c/s)
    hr_imgs = torch.rand(batch_size, 3, crop_size, crop_size, generator=torch.Generator().manual_seed(seed)) * 2 - 1
    # forward + backward (gradients of inputs and of weights) is about 3 forward passes
    flops = 3 * conv_flops(model, crop_size // scale, crop_size // scale, batch_size)
    fast_precision = utils.resolve_precision("auto", device)
    configs = [("reference", "reference: fp32, NCHW, Adam(foreach=False)", "fp32", False),
               ("default", f"train_srresnet.py defaults: {fast_precision} autocast, channels_last, "
                           "training.make_optimizer", fast_precision, True)]
    if device.type == "cuda" and fast_precision != "fp16":
        configs.append(("fp16", "fp16 autocast + GradScaler, channels_last, training.make_optimizer", "fp16", True))
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        init = os.path.join(tmp, "init.pth")
        checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model), init)
        for key, label, precision, fast in configs:
            log(f"training batch {batch_size} crop {crop_size}: {label}")
            stamps = []

            def batches(args, ctx, start, scale):
                while True:
                    _sync(device)
                    stamps.append(time.perf_counter())
                    yield lr_imgs, hr_imgs
            argv = ["--init", init, "--data-folder", tmp, "--val-data", "", "--checkpoint-dir", os.path.join(tmp, key),
                    "--iterations", str(warmup + iterations + 1), "--batch-size", str(batch_size),
                    "--crop-size", str(crop_size), "--workers", "0", "--device", str(device),
                    "--log-every", str(warmup + iterations + 1), "--precision", precision,
                    "--channels-last" if fast else "--no-channels-last"]
            real_batches, real_optimizer = training.train_batches, training.make_optimizer
            training.train_batches = batches
            if not fast:
                training.make_optimizer = lambda params, lr: torch.optim.Adam(params, lr=lr, foreach=False)
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    train_srresnet.main(argv)
            finally:
                training.train_batches, training.make_optimizer = real_batches, real_optimizer
            times = [b - a for a, b in zip(stamps, stamps[1:])][warmup:]  # iteration k: request k -> k + 1
            seconds = statistics.median(times)
            rows.append({"key": key, "label": label, "precision": precision, "seconds": seconds, "times": times,
                         "its_per_s": 1 / seconds, "samples_per_s": batch_size / seconds,
                         "gflops": flops / seconds / 1e9})
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
    return {"batch_size": batch_size, "crop_size": crop_size, "flops_per_iteration": flops, "rows": rows}


def _synthetic_image_folder(folder, count=40, size=160):
    """Write ``count`` seeded RGB PNG images of size x size pixels into ``folder``."""

    os.makedirs(folder, exist_ok=True)
    for i in range(count):
        x = synthetic_lr(size, seed=1000 + i)[0]
        images.convert_image(x, "imagenet-norm", "pil").save(os.path.join(folder, f"img{i:03d}.png"))
    return folder


def _synthetic_photos(folder, count, size, seed=0):
    """Write ``count`` seeded RGB PNGs of size = (width, height) pixels (smooth colour fields plus
    noise, saved at PIL's default compression) into ``folder``."""
    os.makedirs(folder, exist_ok=True)
    w, h = size
    g = torch.Generator().manual_seed(seed)
    for i in range(count):
        x = F.interpolate(torch.rand(1, 3, h // 16, w // 16, generator=g), size=(h, w), mode="bicubic")
        x = (x[0] + (torch.rand(3, h, w, generator=g) - 0.5) * 0.15).clamp_(0, 1)
        images.convert_image(x, "[0, 1]", "pil").save(os.path.join(folder, f"photo{i:03d}.png"))
    return folder


def bench_store_loader(device, batch_size, crop_size, scaling_factor, batches, count, size, workers=None,
                       decode_samples=8, log=_log):
    """The data loader on large PNGs (DIV2K size by default): decoding each sample (SRDataset without
    a store, in this process: samples/s per worker) against the decoded store that
    create_data_lists.py --store writes (training.train_batches with the scripts' --workers).

    Returns:
        dict: image_size, images, store_bytes, decode_samples_per_s (one process) and what
        :func:`bench_loader` returns for the store (workers, samples_per_s...).
    """
    with tempfile.TemporaryDirectory(prefix="bench_store_") as tmp:
        log(f"data loader: writing {count} {size[0]}x{size[1]} PNGs")
        folder = _synthetic_photos(os.path.join(tmp, "photos"), count, size)
        lists = os.path.join(tmp, "lists")
        import create_data_lists
        create_data_lists.create_data_lists([folder], [], crop_size, lists, log=lambda *a: None)
        dataset = datasets.SRDataset(lists, "train", crop_size, scaling_factor, "imagenet-norm", "[-1, 1]")
        log(f"data loader: decoding each sample, {decode_samples} samples in this process")
        start = time.perf_counter()
        for k in range(decode_samples):
            dataset[k]
        decode = decode_samples / (time.perf_counter() - start)
        data_file = datasets.write_store(os.path.join(lists, "train_images.json"), log=lambda *a: None)
        result = bench_loader(device, batch_size, crop_size, scaling_factor, batches, lists=lists, workers=workers,
                              log=log)
        result.update(source=f"{count} synthetic {size[0]}x{size[1]} PNGs", image_size=list(size),
                      store_bytes=os.path.getsize(data_file), decode_samples_per_s=decode)
    return result


def bench_loader(device, batch_size, crop_size, scaling_factor, batches, warmup_batches=None, images=None,
                 workers=None, log=_log, lists=None):
    """Samples/s of the training data loader alone (training.train_batches with the training
    scripts' defaults, e.g. --workers), on a list made by create_data_lists.

    Args:
        images: folder of training images (None or missing: a synthetic folder in a temp dir).
        lists: a folder of lists (and perhaps a decoded store) to use instead of ``images``.
        workers: override the scripts' --workers default.
        batches: timed batches, after ``warmup_batches`` untimed ones (default: the batches the
            workers prefetch, plus 2) that include starting the workers.

    Returns:
        dict: source, images, workers, batch_size, crop_size, seconds, samples_per_s.
    """
    import create_data_lists

    with tempfile.TemporaryDirectory(prefix="bench_loader_") as tmp:
        if lists:
            source = lists
        elif images and os.path.isdir(images):
            source = os.path.abspath(images)
        else:
            source = _synthetic_image_folder(os.path.join(tmp, "images"))
        if not lists:
            lists = os.path.join(tmp, "lists")
            create_data_lists.create_data_lists([source], [], crop_size, lists, log=lambda *a: None)
        flags = ["--data-folder", lists, "--batch-size", str(batch_size), "--crop-size", str(crop_size),
                 "--scaling-factor", str(scaling_factor), "--device", str(device)]
        if workers is not None:
            flags += ["--workers", str(workers)]
        args = train_srresnet.build_parser().parse_args(flags)
        ctx = training.Context(device, "fp32", False)
        batch_iter = training.train_batches(args, ctx, 0, scaling_factor)
        n_images = len(datasets.read_image_list(os.path.join(lists, "train_images.json")))
        if warmup_batches is None:
            # enough for every worker to start and for the batches prefetched meanwhile (4 per
            # worker) to be used up, so that the timed batches come at the loader's steady rate
            warmup_batches = 4 * max(args.workers, 1) + 2
        log(f"data loader: {n_images} images from {source}, {args.workers} workers, batch {batch_size}, "
            f"crop {crop_size}: {warmup_batches} warm-up + {batches} timed batches")
        try:
            for _ in range(warmup_batches):
                next(batch_iter)
            start = time.perf_counter()
            for _ in range(batches):
                next(batch_iter)
            seconds = time.perf_counter() - start
        finally:
            del batch_iter  # shuts the workers down
    return {"source": source if lists or (images and os.path.isdir(images)) else "synthetic (temp dir)",
            "images": n_images, "workers": args.workers, "batch_size": batch_size, "crop_size": crop_size,
            "batches": batches, "seconds": seconds, "samples_per_s": batches * batch_size / seconds}


# ----------------------------------------------------------------------------------------------
# whole processes

# the classic tutorial's path, as a whole process: the same weights, the model as trained (fp32,
# NCHW, BatchNorm unfolded), Pillow conversions, one PNG at Pillow's default level
CLASSIC_SCRIPT = """
import sys
sys.path.insert(0, sys.argv[1])
import torch
from PIL import Image
import checkpoint, images
model = checkpoint.load_model(sys.argv[2])
lr = images.convert_image(Image.open(sys.argv[3]).convert("RGB"), "pil", "imagenet-norm")
with torch.no_grad():
    sr = model(lr[None])
images.convert_image(sr[0], "[-1, 1]", "pil").save(sys.argv[4])
"""


def bench_whole_process(checkpoint_path, image, repeats, log=_log):
    """Wall time of whole processes on one image: test.py with its defaults (the SR and bicubic
    PNGs written) against the classic fp32 path (one PNG), alternately, best of ``repeats``.

    Returns:
        dict: image, size, classic_seconds, test_seconds, speedup, same_pixels (test.py's SR output
        against inference.upscale_image in this process with the same defaults).
    """
    with tempfile.TemporaryDirectory(prefix="bench_process_") as tmp:
        times = {"classic": [], "test": []}
        commands = {"classic": [sys.executable, "-c", CLASSIC_SCRIPT, HERE, checkpoint_path, image,
                                os.path.join(tmp, "classic.png")],
                    "test": [sys.executable, os.path.join(HERE, "test.py"), "--img", image, "--checkpoint",
                             checkpoint_path, "--output-dir", os.path.join(tmp, "out")]}
        for i in range(repeats):
            for key, cmd in commands.items():
                log(f"whole process {i + 1}/{repeats}: {key}")
                start = time.perf_counter()
                subprocess.run(cmd, check=True, capture_output=True)
                times[key].append(time.perf_counter() - start)
        stem = os.path.splitext(os.path.basename(image))[0]
        with Image.open(os.path.join(tmp, "out", f"{stem}_sr.png")) as written:
            written = np.asarray(written)
    img = images.open_image_any_mode(image)
    fast = inference.prepare_model(checkpoint.load_model(checkpoint_path), "cpu", "auto")
    precision = utils.resolve_precision("auto", torch.device("cpu"))
    expected, _ = inference.upscale_image(fast, img, fast.scaling_factor, precision, "cpu", inference.DEFAULT_TILE)
    classic, ours = min(times["classic"]), min(times["test"])
    return {"image": image, "size": list(img.size), "classic_seconds": classic, "test_seconds": ours,
            "times": times, "speedup": classic / ours, "same_pixels": bool(np.array_equal(written, np.asarray(expected)))}


# ----------------------------------------------------------------------------------------------
# targets, table


def evaluate_targets(results):
    """[{key, row, what, value, threshold, met}] for the issue's targets that this run measured."""
    targets = []

    def add(key, row, what, value, threshold, met):
        section = key.split("_")[0].replace("fp32", "inference")  # the table section the row is in
        targets.append({"key": key, "section": section, "row": row, "what": what, "value": value,
                        "threshold": threshold, "met": bool(met)})

    inf = results.get("inference")
    if inf:
        rows = {r["key"]: r for r in inf["rows"]}
        d = rows.get("default")
        if d:
            add("inference_speedup", "default", f">= {TARGET_INFERENCE_SPEEDUP}x reference",
                d["speedup"], TARGET_INFERENCE_SPEEDUP, d["speedup"] >= TARGET_INFERENCE_SPEEDUP)
            if "peak_fraction" in d:
                add("inference_peak_fraction", "default", f">= {TARGET_PEAK_FRACTION:.0%} of {d['precision']} matmul peak",
                    d["peak_fraction"], TARGET_PEAK_FRACTION, d["peak_fraction"] >= TARGET_PEAK_FRACTION)
            psnr = d["psnr_rgb_db"]
            add("inference_psnr", "default", f"RGB PSNR vs reference >= {TARGET_PSNR_DB:g} dB",
                psnr, TARGET_PSNR_DB, psnr is None or psnr >= TARGET_PSNR_DB)
        f32 = rows.get("fp32_fast") or (d if d and d["precision"] == "fp32" else None)
        if f32:
            add("fp32_max_abs_diff", f32["key"], f"max abs diff < {TARGET_FP32_MAX_DIFF:g}",
                f32["max_abs_diff"], TARGET_FP32_MAX_DIFF, f32["max_abs_diff"] < TARGET_FP32_MAX_DIFF)
    tr = results.get("training")
    if tr:
        d = next(r for r in tr["rows"] if r["key"] == "default")
        add("training_speedup", "default", f">= {TARGET_TRAINING_SPEEDUP:g}x reference it/s",
            d["speedup"], TARGET_TRAINING_SPEEDUP, d["speedup"] >= TARGET_TRAINING_SPEEDUP)
    loader = results.get("loader")
    if loader and "consumption_ratio" in loader:
        add("loader_ratio", "loader", f">= {TARGET_LOADER_RATIO:g}x the samples/s training consumes",
            loader["consumption_ratio"], TARGET_LOADER_RATIO, loader["consumption_ratio"] >= TARGET_LOADER_RATIO)
    tiled = results.get("tiled")
    if tiled:
        tile = results["config"]["tile"]
        for r in tiled["rows"]:
            if r["tile"] == tile:
                add("tiled_peak_rss", f"tile {tile}", f"peak RSS < {TARGET_TILED_RSS_BYTES / 1e9:g} GB",
                    r["peak_rss_bytes"], TARGET_TILED_RSS_BYTES, r["peak_rss_bytes"] < TARGET_TILED_RSS_BYTES)
    return targets


def _fmt(x, digits=3):
    """A number with ``digits`` significant digits (no exponent for ordinary magnitudes)."""
    if x is None:
        return "-"
    if x == 0:
        return "0"
    if abs(x) < 1e-3 or abs(x) >= 1e6:
        return f"{x:.{digits - 1}e}"
    return f"{x:.{max(0, digits - 1 - int(math.floor(math.log10(abs(x)))))}f}"


def _gb(n):
    return "-" if n is None else f"{n / 1e9:.2f} GB"


def format_table(results):
    """The Markdown table (and notes) of a results dict from :func:`run`."""
    targets = {}
    for t in results["targets"]:
        targets.setdefault((t["section"], t["row"]), []).append(f"{t['what']}: {'met' if t['met'] else 'NOT met'}")
    header = ["section", "configuration", "time", "throughput", "GFLOP/s", "% of peak", "vs reference",
              "output / memory", "target"]
    lines = ["| " + " | ".join(header) + " |", "|" + "---|" * len(header)]

    def add(*cells):
        lines.append("| " + " | ".join((c or "").replace("|", "\\|") for c in cells) + " |")

    peaks = results.get("peak", {})
    for p, g in peaks.items():
        add("peak", f"{p} matmul {results['config']['matmul_size']}^2", "", "", _fmt(g), "100%", "", "", "")
    inf = results.get("inference")
    if inf:
        section = f"inference {inf['size']}x{inf['size']}"
        for r in inf["rows"]:
            quality = ""
            if "max_abs_diff" in r:
                psnr = "identical uint8" if r["psnr_rgb_db"] is None else f"RGB PSNR {r['psnr_rgb_db']:.1f} dB"
                quality = f"max abs diff {_fmt(r['max_abs_diff'], 2)}, {psnr}"
            pct = f"{r['peak_fraction']:.0%} of {r['precision']}" if "peak_fraction" in r else ""
            add(section, r["label"], f"{_fmt(r['seconds'])} s/img", f"{_fmt(r['lr_mpix_per_s'])} LR MP/s",
                _fmt(r["gflops"]), pct, f"{r['speedup']:.2f}x", quality,
                "; ".join(targets.get(("inference", r["key"]), [])))
    tiled = results.get("tiled")
    if tiled:
        section = f"tiled {tiled['size']}x{tiled['size']} ({tiled['precision']})"
        for r in tiled["rows"]:
            name = "whole image" if not r["tile"] else f"tile {r['tile']}"
            memory = f"peak RSS {_gb(r['peak_rss_bytes'])}"
            if r.get("cuda_peak_bytes") is not None:
                memory += f", GPU peak {_gb(r['cuda_peak_bytes'])}"
            if r["tile"]:
                memory += f", max uint8 diff vs whole {r['max_uint8_diff_vs_whole']}"
            mp = tiled["size"] ** 2 / r["seconds"] / 1e6
            add(section, name, f"{_fmt(r['seconds'])} s/img", f"{_fmt(mp)} LR MP/s", "", "", "", memory,
                "; ".join(targets.get(("tiled", name), [])))
    tr = results.get("training")
    if tr:
        section = f"training batch {tr['batch_size']} crop {tr['crop_size']}"
        for r in tr["rows"]:
            add(section, r["label"], f"{_fmt(r['seconds'])} s/it",
                f"{_fmt(r['its_per_s'])} it/s = {_fmt(r['samples_per_s'])} samples/s", f"~{_fmt(r['gflops'])}",
                "", f"{r['speedup']:.2f}x", "", "; ".join(targets.get(("training", r["key"]), [])))
    loader = results.get("loader")
    if loader:
        ratio = loader.get("consumption_ratio")
        add(f"data loader crop {loader['crop_size']}", f"training.train_batches, {loader['workers']} workers, "
            f"{loader['images']} images", "", f"{_fmt(loader['samples_per_s'])} samples/s", "", "",
            f"{ratio:.2f}x consumption" if ratio else "", "", "; ".join(targets.get(("loader", "loader"), [])))
    store = results.get("store_loader")
    if store:
        section = f"data loader crop {store['crop_size']}, {store['images']} {store['image_size'][0]}x{store['image_size'][1]} PNGs"
        add(section, "decoding each sample (SRDataset without a store), 1 process", "",
            f"{_fmt(store['decode_samples_per_s'])} samples/s per process", "", "", "", "", "")
        add(section, f"decoded store (create_data_lists.py --store, memory-mapped), {store['workers']} workers", "",
            f"{_fmt(store['samples_per_s'])} samples/s", "", "", "", f"store {_gb(store['store_bytes'])} on disk", "")
    process = results.get("process")
    if process:
        section = f"whole process, {process['size'][0]}x{process['size'][1]} image"
        add(section, "classic: fp32 NCHW model as trained, Pillow, one PNG at the default level", "",
            f"{process['classic_seconds']:.2f} s", "", "", "1.00x", "", "")
        add(section, "python test.py (defaults: SR and bicubic PNGs written)", "", f"{process['test_seconds']:.2f} s",
            "", "", f"{process['speedup']:.2f}x",
            "SR pixels = upscale_image's" if process["same_pixels"] else "SR pixels DIFFER from upscale_image's", "")
    notes = results.get("notes", [])
    return "\n".join(lines + ([""] + [f"- {n}" for n in notes] if notes else []))


# ----------------------------------------------------------------------------------------------
# command line


def build_parser():
    parser = argparse.ArgumentParser(
        description="Benchmark the fast inference and training paths against plain reference paths "
                    "(same run, same weights). Markdown table on stdout, progress on stderr.")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help="benchmark this checkpoint's generator (default: an SRResNet with random weights "
                             "and randomised BatchNorm statistics, built from --n-blocks etc.)")
    parser.add_argument("--n-blocks", type=int, default=16, help="residual blocks of the random model (default: 16)")
    parser.add_argument("--n-channels", type=int, default=64, help="channels of the random model (default: 64)")
    parser.add_argument("--scaling-factor", type=int, default=4, choices=models.SCALES,
                        help="scale of the random model (default: 4)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:k] (default: auto)")
    parser.add_argument("--threads", type=int, default=None,
                        help="torch intra-op threads (default: PyTorch's choice, usually the core count)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny sizes (a smoke test of a few seconds; the numbers mean little)")

    def sized(group, flag, key, what):
        full, quick = SIZES[key]
        group.add_argument(flag, type=int, default=None, dest=key, metavar="N",
                           help=f"{what} (default: {full}; with --quick: {quick})")

    g = parser.add_argument_group("inference")
    sized(g, "--size", "size", "side of the LR input image in pixels")
    sized(g, "--repeats", "repeats", "timed runs per configuration (the median is reported)")
    sized(g, "--warmup", "warmup", "untimed runs before timing")
    sized(g, "--matmul-size", "matmul_size", "side of the square matmul that measures the peak")
    g.add_argument("--compile", action="store_true",
                   help="add a torch.compile row (skipped with a note if compiling fails)")
    g = parser.add_argument_group("tiled inference")
    sized(g, "--tile-size", "tile_size", "side of the LR image for the tiled comparison")
    sized(g, "--tile", "tile", "tile size in LR pixels for the tiled row (inference.DEFAULT_TILE "
                            f"= {inference.DEFAULT_TILE} is also measured when smaller than the image)")
    g.add_argument("--skip-tiled", action="store_true", help="skip the tiled-inference comparison")
    g = parser.add_argument_group("training")
    sized(g, "--batch-size", "batch_size", "training batch size")
    sized(g, "--crop-size", "crop_size", "HR crop size of the training batches")
    sized(g, "--train-iters", "train_iters", "timed training iterations per configuration (after --warmup + 1)")
    sized(g, "--loader-batches", "loader_batches", "timed data-loader batches (after the prefetched ones)")
    sized(g, "--photos", "photos", f"{PHOTO_SIZE[False][0]}x{PHOTO_SIZE[False][1]} PNGs made for the decoded-store "
                                   "loader benchmark")
    g.add_argument("--loader-images", default=DEFAULT_LOADER_IMAGES, metavar="DIR",
                   help="folder of training images for the data-loader benchmark (default: datasets/T91; "
                        "a synthetic folder in a temp dir if it is absent)")
    g.add_argument("--workers", type=int, default=None,
                   help="data-loader workers (default: the training scripts' --workers default)")
    g.add_argument("--skip-train", action="store_true", help="skip the training-step and data-loader benchmarks")
    g = parser.add_argument_group("whole process (with --checkpoint, on the CPU)")
    g.add_argument("--process-image", default=os.path.join(HERE, "data", "astronaut.png"), metavar="PATH",
                   help="image for the whole-process row (default: data/astronaut.png, 512x512)")
    g.add_argument("--skip-process", action="store_true", help="skip the whole-process row")
    parser.add_argument("--seed", type=int, default=0, help="seed of the random weights and inputs (default: 0)")
    parser.add_argument("--json", default=None, metavar="OUT", help="also write every number to this JSON file")
    parser.add_argument("--tiled-child", default=None, help=argparse.SUPPRESS)  # internal: one tiled run
    return parser


def resolve_sizes(args):
    """Fill the size flags left unset with their full-size or --quick defaults (in place)."""
    for key, (full, quick) in SIZES.items():
        if getattr(args, key) is None:
            setattr(args, key, quick if args.quick else full)
    return args


def _machine(device):
    info = {"device": str(device), "torch": torch.__version__, "python": platform.python_version(),
            "threads": torch.get_num_threads(), "cpu": platform.processor() or platform.machine(),
            "cpu_bf16": utils.cpu_supports_bf16()}
    try:
        with open("/proc/cpuinfo") as f:
            for line in f:
                if line.startswith("model name"):
                    info["cpu"] = line.split(":", 1)[1].strip()
                    break
    except OSError:
        pass
    if device.type == "cuda":
        info["gpu"] = torch.cuda.get_device_name(device)
    return info


def _finite(obj):
    """obj with non-finite floats replaced by None (strict JSON)."""
    if isinstance(obj, float):
        return obj if math.isfinite(obj) else None
    if isinstance(obj, dict):
        return {k: _finite(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [_finite(v) for v in obj]
    return obj


def run(args, log=_log):
    """Run the benchmarks selected by the parsed flags; returns the results dict."""
    resolve_sizes(args)
    if args.threads:
        torch.set_num_threads(args.threads)
    device = utils.resolve_device(args.device)
    load = os.getloadavg()[0] if hasattr(os, "getloadavg") else 0.0  # before any work of ours
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
        # 'fp32' means IEEE fp32 here (reference, fp32 fast path, matmul peak): no TF32 shortcuts,
        # so that the fp32 paths can be compared with each other to 1e-4
        torch.backends.cudnn.allow_tf32 = False
        torch.backends.cuda.matmul.allow_tf32 = False
    model = make_model(args.checkpoint, args.seed, n_blocks=args.n_blocks, n_channels=args.n_channels,
                       scaling_factor=args.scaling_factor)
    net = checkpoint.unwrap_model(model)
    default_precision = utils.resolve_precision("auto", device)
    per_pixel = flops_per_lr_pixel(model)
    config = {k: v for k, v in vars(args).items() if k not in ("tiled_child",)}
    results = {"config": config, "machine": _machine(device),
               "model": {"arch": type(net).__name__, "args": dict(net.args), "checkpoint": args.checkpoint,
                         "parameters": sum(p.numel() for p in net.parameters()),
                         "flops_per_lr_pixel": per_pixel},
               "default_precision": default_precision, "notes": []}
    notes = results["notes"]
    results["machine"]["load_average_before"] = load
    if device.type == "cpu" and load >= 0.5:
        notes.append(f"WARNING: the 1-minute load average was {load:.1f} before this run: other processes were "
                     "using the CPU, so these timings are not representative")
    notes.append(f"model: {results['model']['arch']} {net.args}, {results['model']['parameters']:,} parameters, "
                 + (f"weights from {args.checkpoint}" if args.checkpoint else
                    f"random weights (seed {args.seed}) with randomised BatchNorm statistics"))
    notes.append(f"FLOPs: convolutions only, 2*Cin*Cout*k*k*Hout*Wout each: {per_pixel / 1e6:.3f} MFLOP per LR pixel; "
                 "training counts ~3x the forward pass")
    notes.append(f"machine: {results['machine']['cpu']}, {results['machine']['threads']} threads, torch "
                 f"{torch.__version__}, device {device}" + (f" ({results['machine']['gpu']}; fp32 rows without TF32)"
                                                             if device.type == "cuda" else ""))

    # the peaks, in every dtype a row runs in
    precisions = ["fp32"] + ([default_precision] if default_precision != "fp32" else [])
    if device.type == "cuda":
        precisions += [p for p in ("bf16", "fp16") if p not in precisions
                       and (p != "bf16" or torch.cuda.is_bf16_supported())]
    results["peak"] = {}
    for p in precisions:
        log(f"peak: {p} matmul {args.matmul_size}x{args.matmul_size}")
        results["peak"][p] = matmul_peak(device, p, args.matmul_size, max(args.repeats, 3), 1)

    results["inference"] = bench_inference(model, device, args.size, args.warmup, args.repeats, args.compile,
                                           args.seed, results["peak"], log)
    notes.extend(results["inference"]["notes"])
    notes.append("output difference: max abs diff of the [-1, 1] outputs; PSNR = plain RGB PSNR "
                 "(all pixels, 3 channels, no border crop) of the uint8-quantised fast output against the "
                 "uint8-quantised reference output (the JSON also has the Y-channel PSNR of metrics.calc_psnr)")

    if not args.skip_tiled:
        tiles = tile_configs(args.tile_size, args.tile)
        results["tiled"] = bench_tiled(model, device, args.tile_size, tiles, default_precision, args.threads,
                                       args.seed, log)
        notes.append("tiled: each configuration in a fresh subprocess; peak RSS = VmHWM of that process "
                     "(includes Python, torch and the model)" + ("; GPU peak = torch.cuda.max_memory_allocated"
                                                                   if device.type == "cuda" else ""))

    if not args.skip_train:
        results["training"] = bench_training(model, device, args.batch_size, args.crop_size, args.warmup + 1,
                                             args.train_iters, args.seed, log)
        loader = bench_loader(device, args.batch_size, args.crop_size, net.scaling_factor, args.loader_batches,
                              images=args.loader_images, workers=args.workers, log=log)
        consumed = next(r for r in results["training"]["rows"] if r["key"] == "default")["samples_per_s"]
        loader["consumed_samples_per_s"] = consumed
        loader["consumption_ratio"] = loader["samples_per_s"] / consumed
        results["loader"] = loader
        notes.append(f"data loader: {loader['source']}; its samples/s alone vs the {consumed:.1f} samples/s the fast "
                     f"training step consumes: {'loading' if loader['consumption_ratio'] < 1 else 'compute'} "
                     "is the bottleneck (in training, the workers share the CPU with the model)")
        results["store_loader"] = bench_store_loader(device, args.batch_size, args.crop_size, net.scaling_factor,
                                                     args.loader_batches, args.photos, PHOTO_SIZE[args.quick],
                                                     workers=args.workers, log=log)

    if args.checkpoint and not (args.skip_process or args.quick) and device.type == "cpu":
        results["process"] = bench_whole_process(args.checkpoint, args.process_image, max(2, args.repeats // 2), log)

    results["targets"] = evaluate_targets(results)
    return _finite(results)


def main(argv=None):
    """Parse flags, run, print the table; returns the results dict."""
    args = build_parser().parse_args(argv)
    if args.tiled_child is not None:
        print(json.dumps(tiled_child(json.loads(args.tiled_child))))
        return None
    for name in SIZES:
        value = getattr(args, name)
        if value is not None and value < (0 if name == "warmup" else 1):
            raise utils.UserError(f"--{name.replace('_', '-')} must be positive")
    results = run(args)
    print(format_table(results))
    if args.json:
        with open(args.json, "w") as f:
            json.dump(results, f, indent=2, allow_nan=False)
        _log(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    utils.run_cli(main)
