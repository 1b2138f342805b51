"""Speed of this repo's fast paths against plain reference paths, each pair measured in the same run.

    python bench.py --checkpoint checkpoints/srresnet_x4.pth --json bench.json   # every row
    python bench.py --quick                                                    # tiny sizes: a smoke run

Rows: the model alone (fp32 NCHW as trained vs the default and fp32 fast paths), a training
iteration of train_srresnet.py and one of train_srgan.py (SRGAN-MSE), the data loader on 2K PNGs
(decoding vs the decoded store), and whole processes: test.py vs the classic fp32 script, page
faults per image in test.py and eval.py with and without utils.keep_freed_memory, and the memory of
a tiled 1024x1024 upscale.
Prints a Markdown table; the README's Speed table says what each row is aimed at.
"""

import argparse
import contextlib
import copy
import io
import json
import os
import shutil
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
import create_data_lists
import datasets
import images
import inference
import models
import train_srresnet
import training
import utils

HERE = os.path.dirname(os.path.abspath(__file__))
#        full size                     --quick
SIZES = {"size": (256, 16), "repeats": (3, 1), "batch": (16, 2), "crop": (96, 24), "iterations": (8, 2),
         "photos": (16, 2), "photo_size": ((2040, 1356), (204, 136)), "loader_batches": (40, 2),
         "process_repeats": (2, 1), "matmul": (4096, 128), "per_image": (5, 2), "big": (1024, 80),
         "tile": (inference.DEFAULT_TILE, inference.MIN_TILE)}
# the classic tutorial's path as a whole process: the same weights, the model as trained (fp32,
# NCHW, BatchNorm unfolded), Pillow conversions, one PNG at Pillow's default level
CLASSIC = """import sys, torch, checkpoint, images
from PIL import Image
model = checkpoint.load_model(sys.argv[1])
lr = images.convert_image(Image.open(sys.argv[2]).convert("RGB"), "pil", "imagenet-norm")
with torch.no_grad():
    sr = model(lr[None])
images.convert_image(sr[0], "[-1, 1]", "pil").save(sys.argv[3])
"""
# runs a script and prints its peak RSS at exit (the child's own figure: the one wait4 gives
# includes the RSS of this process at the fork); 'default-malloc' leaves glibc's allocator at its
# defaults (the reference of the page-fault rows)
RUN = """import atexit, runpy, sys
if sys.argv[1] == "default-malloc":  # (the scripts import utils anyway; a plain script need not)
    import utils
    utils.keep_freed_memory = lambda: False
def report():
    with open("/proc/self/status") as f:
        print("\\n" + next(line for line in f if line.startswith("VmHWM:")), file=sys.stderr)
atexit.register(report)
sys.argv = sys.argv[2:]
runpy.run_path(sys.argv[0], run_name="__main__")
"""


def log(message):
    print(f"[bench] {message}", file=sys.stderr, flush=True)


def random_model(seed=0, **model_args):
    """An SRResNet with seeded random weights and BatchNorm statistics that look trained (fresh
    ones, mean 0 and variance 1, would make BatchNorm folding an identity and prove nothing)."""
    torch.manual_seed(seed)
    model = models.SRResNet(**model_args)
    with torch.no_grad():
        for bn in model.modules():
            if isinstance(bn, nn.BatchNorm2d):
                for t, low, high in ((bn.running_mean, -0.1, 0.1), (bn.running_var, 0.5, 1.5),
                                     (bn.weight, 0.8, 1.2), (bn.bias, -0.1, 0.1)):
                    t.uniform_(low, high)
    return model.eval()


def conv_flops(model, height, width, batch=1):
    """FLOPs of the model's convolutions for one (batch, 3, height, width) input: 2 * Cin/groups *
    Cout * kh * kw * Hout * Wout each, with shapes from a pass on the 'meta' device (no arithmetic).
    BatchNorm, activations, PixelShuffle and additions are left out (under 1%)."""
    meta = copy.deepcopy(checkpoint.unwrap_model(model)).to("meta")
    total = 0

    def count(conv, inputs, output):
        nonlocal total
        n, c_out, h, w = output.shape
        total += 2 * n * conv.in_channels // conv.groups * c_out * conv.kernel_size[0] * conv.kernel_size[1] * h * w

    hooks = [m.register_forward_hook(count) for m in meta.modules() if isinstance(m, nn.Conv2d)]
    with torch.no_grad():
        meta(torch.empty(batch, 3, height, width, device="meta"))
    for h in hooks:
        h.remove()
    return total


def paper_schedule_estimate(tflops):
    """An ESTIMATE, not a measurement: the convolution FLOPs of the paper's two schedules (batch 16,
    96x96 HR crops, x4) and their time at ``tflops`` sustained. A training step costs about 3 forward
    passes (forward, then gradients of inputs and weights); the VGG19 content target is a forward only."""
    g = conv_flops(models.SRResNet(), 24, 24)
    d = conv_flops(models.Discriminator(), 96, 96)
    vgg = conv_flops(models.TruncatedVGG19(5, 4, weights=None), 96, 96)
    # SRGAN step: G trained, VGG(HR) forward, VGG(SR) and D(SR) backpropagated into G, D trained on HR and SR
    per_sample = {"SRResNet": 3 * g, "SRGAN-VGG54": 3 * g + vgg + 3 * vgg + 3 * d + 2 * 3 * d}
    iterations = {"SRResNet": 10**6, "SRGAN-VGG54": 2 * 10**5}
    lines = [f"per 96x96 sample, forward: generator {g / 1e9:.2f} GFLOP, discriminator {d / 1e9:.2f}, "
             f"VGG19 to conv5_4 {vgg / 1e9:.2f}", "| phase | iterations | TFLOP per iteration (batch 16) | total PFLOP "
             f"| hours at {tflops:g} TFLOPS sustained |", "|---|---:|---:|---:|---:|"]
    for name, flops in per_sample.items():
        total = 16 * flops * iterations[name]
        lines.append(f"| {name} | {iterations[name]:,} | {16 * flops / 1e12:.3f} | {total / 1e15:,.0f} "
                     f"| {total / (tflops * 1e12) / 3600:.1f} |")
    return "\n".join(lines)


def synthetic_photo(width, height, seed=0):
    """A seeded RGB PIL image that compresses like a photo: smooth colour fields plus some noise."""
    g = torch.Generator().manual_seed(seed)
    x = F.interpolate(torch.rand(1, 3, max(height // 16, 2), max(width // 16, 2), generator=g), size=(height, width),
                      mode="bicubic")[0]
    return images.convert_image((x + (torch.rand(3, height, width, generator=g) - 0.5) * 0.15).clamp(0, 1),
                                "[0, 1]", "pil")


def sync(device):
    if device.type == "cuda":
        torch.cuda.synchronize(device)  # CUDA runs asynchronously: wait for the work before reading the clock


def median_seconds(fn, device, repeats):
    """Median seconds of ``repeats`` calls of fn() after one untimed call (thread pools, caches)."""
    fn()
    times = []
    for _ in range(repeats):
        sync(device)
        start = time.perf_counter()
        fn()
        sync(device)
        times.append(time.perf_counter() - start)
    return statistics.median(times)


def matmul_peak(device, precision, n, repeats=3):
    """GFLOP/s of an n x n matmul in ``precision``: the practical peak of the same kernels."""
    a = torch.randn(n, n, device=device, dtype={"fp32": torch.float32, "bf16": torch.bfloat16,
                                                  "fp16": torch.float16}[precision])
    return 2 * n**3 / median_seconds(lambda: a @ a, device, repeats) / 1e9


def bench_model(model, device, size, repeats, matmul_size, compile=False):
    """The model on a size x size LR image: the reference (as trained: fp32, NCHW, BatchNorm
    unfolded, no_grad) against inference.prepare_model + upscale_tensor in each precision."""
    scale = model.scaling_factor
    lr = images.convert_image(synthetic_photo(size, size), "pil", "imagenet-norm")[None].to(device)
    flops = conv_flops(model, size, size)
    reference = copy.deepcopy(model).to(device)
    with torch.no_grad():
        ref_out = reference(lr).float()
    precisions = ["fp32", utils.resolve_precision("auto", device)]
    if device.type == "cuda":
        precisions += ["fp16"] + (["bf16"] if torch.cuda.is_bf16_supported() else [])
    peaks, rows = {}, []
    for precision in ["reference"] + list(dict.fromkeys(precisions)):
        log(f"model {size}x{size}: {precision}")
        if precision == "reference":
            run, peak_precision = torch.no_grad()(lambda: reference(lr)), "fp32"
        else:
            fast = inference.prepare_model(model, device, precision, compile=compile)
            # pre_pad=0: the model alone, comparable with the reference (the scripts add a 10-pixel margin)
            run = lambda: inference.upscale_tensor(fast, lr, scale, precision, device, pre_pad=0)  # noqa: E731
            peak_precision = precision
        seconds = median_seconds(run, device, repeats)
        if peak_precision not in peaks:
            peaks[peak_precision] = matmul_peak(device, peak_precision, matmul_size)
        out = run().float()
        ref8, out8 = (np.asarray(images.convert_image(t[0].cpu(), "[-1, 1]", "pil")) for t in (ref_out, out))
        mse = np.mean((ref8.astype(np.float64) - out8) ** 2)
        rows.append({"path": precision, "seconds": seconds, "gflops": flops / seconds / 1e9,
                     "peak_gflops": peaks[peak_precision],
                     "max_abs_diff": float((out - ref_out).abs().max()),
                     "psnr_db": float(10 * np.log10(255**2 / mse)) if mse else None})
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
    return {"size": size, "flops": flops, "rows": rows}


def two_pass_step(gen, disc, opt_g, opt_d, lr_imgs, hr_imgs, beta, ctx):
    """The SRGAN-MSE iteration as written before train_srgan.srgan_step (and as tutorials write it):
    a generator step through a frozen discriminator pass on SR, then a discriminator step with passes
    of its own on HR and SR: three discriminator passes per iteration. Returns [content, adversarial,
    discriminator] losses (floats)."""
    bce = nn.BCEWithLogitsLoss()
    hr_norm = images.convert_image(hr_imgs, "[-1, 1]", "imagenet-norm")
    with ctx.autocast():
        sr = gen(lr_imgs).float()
        sr_norm = images.convert_image(sr, "[-1, 1]", "imagenet-norm")
        disc.requires_grad_(False)
        logits = disc(sr_norm).float()
        disc.requires_grad_(True)
    content, adversarial = F.mse_loss(sr, hr_imgs), bce(logits, torch.ones_like(logits))
    opt_g.zero_grad()
    (content + beta * adversarial).backward()
    opt_g.step()
    with ctx.autocast():
        real, fake = disc(hr_norm).float(), disc(sr_norm.detach()).float()
    loss_d = bce(real, torch.ones_like(real)) + bce(fake, torch.zeros_like(fake))
    opt_d.zero_grad()
    loss_d.backward()
    opt_d.step()
    return [content.item(), adversarial.item(), loss_d.item()]


def bench_gan_training(model, device, batch_size, crop_size, iterations, d_args=None):
    """Seconds per SRGAN-MSE iteration (compute only, one ready batch): the two-pass step in fp32 NCHW
    (the reference), the two-pass step in the scripts' precision and layout (what train_srgan.py ran
    before one discriminator pass per batch), and train_srgan.srgan_step; the last row's ratio
    against the second is what sharing the discriminator's passes saves."""
    import train_srgan  # here: bench.py's other rows do not need it
    precision = utils.resolve_precision("auto", device)
    scale = model.scaling_factor
    lr = images.convert_image(synthetic_photo(crop_size // scale, crop_size // scale), "pil", "imagenet-norm")
    lr = lr.expand(batch_size, -1, -1, -1).contiguous()
    hr = torch.rand(batch_size, 3, crop_size, crop_size) * 2 - 1
    rows = []
    for key, step_precision, channels_last in (("reference: two passes, fp32 NCHW", "fp32", False),
                                                (f"two passes, {precision}", precision, True),
                                                (f"srgan_step, {precision}", precision, True)):
        log(f"SRGAN training, batch {batch_size} crop {crop_size}: {key}")
        ctx = training.Context(device, step_precision, channels_last)
        torch.manual_seed(0)
        gen = ctx.prepare(models.Generator(**model.args))
        gen.net.load_state_dict(model.state_dict())
        disc = ctx.prepare(models.Discriminator(**(d_args or {})))
        opt_g, opt_d = training.make_optimizer(gen.parameters(), 1e-4), training.make_optimizer(disc.parameters(), 1e-4)
        x, y = ctx.to_device(lr), ctx.to_device(hr)
        scaler = torch.amp.GradScaler(device.type, enabled=False)
        args = argparse.Namespace(content_scale=1.0, gan_loss="standard", grad_clip=None)
        times = []
        for _ in range(iterations + 1):  # the first one warms up
            sync(device)
            start = time.perf_counter()
            if key.startswith("srgan_step"):
                train_srgan.srgan_step(gen, disc, None, None, opt_g, opt_d, scaler, x, y,
                                       {"content": 1.0, "adversarial": 1e-3}, args, ctx)["discriminator"].item()
            else:
                two_pass_step(gen, disc, opt_g, opt_d, x, y, 1e-3, ctx)
            sync(device)
            times.append(time.perf_counter() - start)
        seconds = statistics.median(times[1:])
        rows.append({"path": key, "seconds": seconds, "its_per_s": 1 / seconds})
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
    rows[2]["speedup_over_two_passes"] = rows[1]["seconds"] / rows[2]["seconds"]
    return {"batch_size": batch_size, "crop_size": crop_size, "precision": precision, "rows": rows}


def bench_training(model, device, batch_size, crop_size, iterations):
    """Iterations/s of train_srresnet.py's own loop on one ready batch (compute only): the reference
    (fp32, NCHW, Adam(foreach=False), glibc's allocator defaults) against the script's defaults.
    The reference runs first: keep_freed_memory cannot be undone in a process once it has run."""
    lr = images.convert_image(synthetic_photo(crop_size // model.scaling_factor, crop_size // model.scaling_factor),
                              "pil", "imagenet-norm").expand(batch_size, -1, -1, -1).contiguous()
    hr = torch.rand(batch_size, 3, crop_size, crop_size) * 2 - 1
    rows = []
    with tempfile.TemporaryDirectory(prefix="bench_train_") as tmp:
        init = os.path.join(tmp, "init.pth")
        checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model), init)
        for key in ("reference", "default"):
            log(f"training, batch {batch_size} crop {crop_size}: {key}")
            stamps = []

            def batches(*args, **kwargs):
                while True:
                    sync(device)
                    stamps.append(time.perf_counter())
                    yield lr, hr
            argv = ["--init", init, "--data-folder", tmp, "--val-data", "", "--checkpoint-dir", os.path.join(tmp, key),
                    "--iterations", str(iterations + 2), "--log-every", str(iterations + 2), "--batch-size",
                    str(batch_size), "--crop-size", str(crop_size), "--workers", "0", "--device", str(device)]
            real = datasets.train_batches, training.make_optimizer, utils.keep_freed_memory
            datasets.train_batches = batches
            if key == "reference":
                argv += ["--precision", "fp32", "--no-channels-last"]
                training.make_optimizer = lambda params, lr: torch.optim.Adam(params, lr=lr, foreach=False)
                utils.keep_freed_memory = lambda: False
            try:
                with contextlib.redirect_stdout(io.StringIO()), contextlib.redirect_stderr(io.StringIO()):
                    train_srresnet.main(argv)
            finally:
                datasets.train_batches, training.make_optimizer, utils.keep_freed_memory = real
            seconds = statistics.median(b - a for a, b in zip(stamps[1:], stamps[2:]))  # the first one warms up
            rows.append({"path": key, "seconds": seconds, "its_per_s": 1 / seconds,
                         "samples_per_s": batch_size / seconds})
    for r in rows:
        r["speedup"] = rows[0]["seconds"] / r["seconds"]
    return {"batch_size": batch_size, "crop_size": crop_size, "rows": rows}


def bench_loader(device, scale, batch_size, crop_size, batches, photos, photo_size, tmp):
    """Samples/s on large PNGs: decoding each sample (SRDataset in this process) against the decoded
    store of create_data_lists.py --store read by datasets.train_batches with the default --workers."""
    log(f"data loader: writing {photos} {photo_size[0]}x{photo_size[1]} PNGs")
    folder, lists = os.path.join(tmp, "photos"), os.path.join(tmp, "lists")
    os.makedirs(folder)
    for i in range(photos):
        synthetic_photo(*photo_size, seed=100 + i).save(os.path.join(folder, f"{i:03d}.png"))
    create_data_lists.create_data_lists([folder], [], crop_size, lists, log=lambda *a: None)
    dataset = datasets.SRDataset(lists, "train", crop_size, scale, "imagenet-norm", "[-1, 1]")
    log("data loader: decoding each sample")
    start = time.perf_counter()
    for i in range(8):
        dataset[i % len(dataset)]
    decode = 8 / (time.perf_counter() - start)
    store = datasets.write_store(os.path.join(lists, "train_images.json"), log=lambda *a: None)
    args = train_srresnet.build_parser().parse_args(["--data-folder", lists, "--batch-size", str(batch_size),
                                                     "--crop-size", str(crop_size), "--scaling-factor", str(scale)])
    log(f"data loader: decoded store, {args.workers} workers")
    loader = datasets.train_batches(args, scale, 0)
    for _ in range(4 * max(args.workers, 1) + 2):  # start the workers, use up what they prefetched meanwhile
        next(loader)
    start = time.perf_counter()
    for _ in range(batches):
        next(loader)
    seconds = time.perf_counter() - start
    del loader  # stops the workers
    return {"images": photos, "image_size": list(photo_size), "store_bytes": os.path.getsize(store),
            "decode_samples_per_s": decode, "workers": args.workers,
            "store_samples_per_s": batches * batch_size / seconds}


def run_process(argv, allocator="keep"):
    """Run a Python script in a fresh process in this folder, with utils.keep_freed_memory as the
    script does ('keep') or disabled ('default-malloc'): wall seconds, peak RSS, minor page faults."""
    with tempfile.TemporaryFile() as stderr:  # a file, not a pipe: a chatty child cannot fill it and block
        start = time.perf_counter()
        proc = subprocess.Popen([sys.executable, "-c", RUN, allocator] + argv, cwd=HERE, stdout=subprocess.DEVNULL,
                                stderr=stderr)
        try:
            _, status, usage = os.wait4(proc.pid, 0)
        except BaseException:  # Ctrl-C or an error here: do not leave the child running
            proc.kill()
            proc.wait()
            raise
        seconds = time.perf_counter() - start
        stderr.seek(0)
        errors = stderr.read().decode(errors="replace")
    if status:
        raise RuntimeError(f"{' '.join(argv[:2])} failed: {errors.strip()[-500:]}")
    peak = [int(line.split()[1]) * 1024 for line in errors.splitlines() if line.startswith("VmHWM:")]
    return {"seconds": seconds, "peak_rss_bytes": peak[-1], "minor_faults": usage.ru_minflt}


def bench_processes(ckpt, photo, big, tile, per_image, repeats, tmp):
    """Whole processes on the CPU: test.py against the classic script on ``photo``; page faults and
    seconds per image of test.py and eval.py (a run on ``per_image`` copies of ``photo`` minus a run
    on one) with and without utils.keep_freed_memory; test.py on ``big`` in tiles and whole."""
    out, classic = os.path.join(tmp, "out"), os.path.join(tmp, "classic.py")
    with open(classic, "w") as f:
        f.write(CLASSIC)
    test = ["test.py", "--checkpoint", ckpt, "--device", "cpu", "--output-dir", out, "--img"]
    result = {"photo": photo, "classic": [], "test": []}
    for i in range(repeats):  # alternately, so that a slower spell of the machine hits both
        log(f"whole process {i + 1}/{repeats}: classic, test.py")
        result["classic"].append(run_process([classic, ckpt, photo, os.path.join(tmp, "classic.png")]))
        result["test"].append(run_process(test + [photo]))
    classic, ours = (min(r["seconds"] for r in result[k]) for k in ("classic", "test"))
    result["speedup"] = classic / ours
    with Image.open(os.path.join(out, os.path.splitext(os.path.basename(photo))[0] + "_sr.png")) as written:
        fast = inference.prepare_model(checkpoint.load_model(ckpt), "cpu", "auto")
        expected, _ = inference.upscale_image(fast, images.open_image_any_mode(photo), fast.scaling_factor,
                                              utils.resolve_precision("auto", torch.device("cpu")), "cpu")
        result["same_pixels"] = bool(np.array_equal(np.asarray(written), np.asarray(expected)))

    for n in (1, per_image):
        os.makedirs(os.path.join(tmp, f"copies_{n}"))
        for i in range(n):
            shutil.copy(photo, os.path.join(tmp, f"copies_{n}", f"{i}.png"))
    for script in ("test.py", "eval.py"):
        for allocator in ("default-malloc", "keep"):
            runs = []
            for n in (1, per_image):
                if (script, allocator, n) == ("test.py", "keep", 1):
                    runs.append(result["test"][-1])  # test.py on the one photo: just measured above
                    continue
                log(f"{script} on {n} image(s), allocator: {allocator}")
                folder = os.path.join(tmp, f"copies_{n}")
                argv = (test + [photo if n == 1 else folder] if script == "test.py" else
                        ["eval.py", "--checkpoint", ckpt, "--device", "cpu", "--test-folders", folder])
                runs.append(run_process(argv, allocator))
            result[f"{script}_{allocator}"] = {
                "runs": runs, "peak_rss_bytes": runs[1]["peak_rss_bytes"],
                "faults_per_image": (runs[1]["minor_faults"] - runs[0]["minor_faults"]) / (per_image - 1),
                "seconds_per_image": (runs[1]["seconds"] - runs[0]["seconds"]) / (per_image - 1)}

    outputs = []
    for t in (tile, 0):
        log(f"test.py on a {Image.open(big).size} image: --tile {t}")
        out = os.path.join(tmp, f"tile_{t}")
        result[f"big_tile_{t}"] = run_process(test[:-2] + [out, "--img", big, "--tile", str(t)])
        with Image.open(os.path.join(out, "big_sr.png")) as written:
            outputs.append(np.asarray(written))
    # tiles equal the whole up to float rounding: count the 8-bit values that differ, and by how much
    diff = np.abs(outputs[0].astype(int) - outputs[1].astype(int))
    result["tiled_diff"] = {"max": int(diff.max()), "count": int(np.count_nonzero(diff)), "of": int(diff.size)}
    return result


def table(results):
    """The Markdown table of the run: what, reference, ours, ratio."""
    rows = []
    if "model" in results:
        m = results["model"]
        ref = m["rows"][0]
        for r in m["rows"][1:]:
            psnr = f"{r['psnr_db']:.1f} dB" if r["psnr_db"] else "identical"
            rows.append((f"model, {m['size']}x{m['size']} LR, {r['path']}",
                         f"{ref['seconds']:.3g} s ({ref['gflops']:.0f} GFLOP/s)",
                         f"{r['seconds']:.3g} s ({r['gflops']:.0f} GFLOP/s, "
                         f"{r['gflops'] / r['peak_gflops']:.0%} of the {r['path']} matmul peak; "
                         f"max abs diff {r['max_abs_diff']:.2g}, PSNR {psnr})",
                         f"{r['speedup']:.2f}x"))
    if "training" in results:
        t = results["training"]
        ref, ours = t["rows"]
        rows.append((f"training iteration, batch {t['batch_size']}, crop {t['crop_size']}",
                     f"{ref['its_per_s']:.2f} it/s", f"{ours['its_per_s']:.2f} it/s", f"{ours['speedup']:.2f}x"))
    if "gan_training" in results:
        t = results["gan_training"]
        ref, before, ours = t["rows"]
        rows.append((f"SRGAN-MSE iteration, batch {t['batch_size']}, crop {t['crop_size']}",
                     f"{ref['path']}: {ref['seconds']:.2f} s; {before['path']}: {before['seconds']:.2f} s",
                     f"{ours['path']}: {ours['seconds']:.2f} s", f"{ours['speedup']:.2f}x "
                     f"({ours['speedup_over_two_passes']:.2f}x over two passes in {t['precision']})"))
    if "loader" in results:
        d = results["loader"]
        rows.append((f"data loader, {d['image_size'][0]}x{d['image_size'][1]} PNGs",
                     f"decoding: {d['decode_samples_per_s']:.1f} samples/s per process",
                     f"decoded store ({d['store_bytes'] / 1e9:.2f} GB), {d['workers']} workers: "
                     f"{d['store_samples_per_s']:,.0f} samples/s", ""))
    if "process" in results:
        p = results["process"]
        classic, ours = (min(r["seconds"] for r in p[k]) for k in ("classic", "test"))
        rows.append((f"whole process on {os.path.basename(p['photo'])}", f"classic script: {classic:.2f} s",
                     f"test.py: {ours:.2f} s (SR pixels {'identical to' if p['same_pixels'] else 'DIFFERENT from'} "
                     "upscale_image's)", f"{p['speedup']:.2f}x"))
        for script in ("test.py", "eval.py"):
            a, b = p[f"{script}_default-malloc"], p[f"{script}_keep"]
            rows.append((f"{script}, per image after the first: page faults, seconds (peak RSS)",
                         f"glibc defaults: {a['faults_per_image']:,.0f}, {a['seconds_per_image']:.2f} s "
                         f"({a['peak_rss_bytes'] / 1e9:.2f} GB)", f"keep_freed_memory: {b['faults_per_image']:,.0f}, "
                         f"{b['seconds_per_image']:.2f} s ({b['peak_rss_bytes'] / 1e9:.2f} GB)",
                         f"{a['faults_per_image'] / max(b['faults_per_image'], 1):.1f}x fewer faults, "
                         f"{a['seconds_per_image'] / b['seconds_per_image']:.2f}x speed"))
        whole = p["big_tile_0"]
        tiled = next(v for k, v in p.items() if k.startswith("big_tile_") and k != "big_tile_0")
        d = p["tiled_diff"]
        same = "identical" if d["max"] == 0 else f"{d['count']} of {d['of']:,} values off by <= {d['max']}"
        rows.append(("test.py on a large image, tiles vs whole",
                     f"whole: {whole['seconds']:.1f} s, {whole['peak_rss_bytes'] / 1e9:.2f} GB",
                     f"tiled: {tiled['seconds']:.1f} s, {tiled['peak_rss_bytes'] / 1e9:.2f} GB, output {same}",
                     f"{whole['seconds'] / tiled['seconds']:.2f}x speed"))
    lines = ["| what | reference | ours | ratio |", "|---|---|---|---|"]
    return "\n".join(lines + ["| " + " | ".join(r) + " |" for r in rows])


def build_parser():
    parser = utils.ArgumentParser(description="Time the fast paths against plain references in one run; "
                                                 "prints a Markdown table (progress on stderr).")
    parser.add_argument("--checkpoint", metavar="PATH", help="the model (default: an SRResNet x4 with random weights)")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:k] (default: auto)")
    parser.add_argument("--quick", action="store_true",
                        help="tiny model and sizes: a smoke run (under a minute, mostly the process rows' 11 "
                             "Python starts; the numbers mean nothing)")
    parser.add_argument("--skip", nargs="+", default=[], choices=["model", "training", "gan", "loader", "process"],
                        help="leave these rows out")
    parser.add_argument("--compile", action="store_true", help="torch.compile the fast model paths")
    parser.add_argument("--json", metavar="OUT", help="also write every number to this JSON file")
    parser.add_argument("--paper-estimate", type=float, metavar="TFLOPS", default=None,
                        help="only print the paper schedules' FLOPs and their hours at this sustained speed "
                             "(an estimate)")
    return parser


def main(argv=None):
    args = build_parser().parse_args(argv)
    if args.paper_estimate is not None:
        if not args.paper_estimate > 0:
            raise utils.UserError("--paper-estimate: give a positive number of TFLOPS")
        print(paper_schedule_estimate(args.paper_estimate))
        return None
    if args.json:
        utils.check_writable(args.json)
    size = {k: v[args.quick] for k, v in SIZES.items()}
    device = utils.resolve_device(args.device)
    torch.backends.cudnn.allow_tf32 = torch.backends.cuda.matmul.allow_tf32 = False  # fp32 means fp32 on a GPU too
    model = checkpoint.unwrap_model(checkpoint.load_model(args.checkpoint)) if args.checkpoint else \
        random_model(**({"n_blocks": 2, "n_channels": 8} if args.quick else {}))
    results = {"torch": torch.__version__, "device": torch.cuda.get_device_name(device) if device.type == "cuda"
               else f"CPU, {torch.get_num_threads()} threads", "model_args": dict(model.args),
               "checkpoint": args.checkpoint}
    if os.getloadavg()[0] > 0.5:
        log(f"warning: load average {os.getloadavg()[0]:.1f}: something else is using the CPU, timings will be off")
    with tempfile.TemporaryDirectory(prefix="bench_") as tmp:
        if "model" not in args.skip:
            results["model"] = bench_model(model, device, size["size"], size["repeats"], size["matmul"], args.compile)
        if "training" not in args.skip:
            results["training"] = bench_training(model, device, size["batch"], size["crop"], size["iterations"])
        if "gan" not in args.skip:
            results["gan_training"] = bench_gan_training(
                model, device, size["batch"], size["crop"], size["iterations"],
                {"n_channels": 8, "n_blocks": 2, "fc_size": 16} if args.quick else None)
        if "loader" not in args.skip:
            results["loader"] = bench_loader(device, model.scaling_factor, size["batch"], size["crop"],
                                             size["loader_batches"], size["photos"], size["photo_size"], tmp)
        if "process" not in args.skip and not sys.platform.startswith("linux"):
            log("skipping the whole-process rows: they read peak memory from Linux's /proc")
        elif "process" not in args.skip:
            ckpt = args.checkpoint or os.path.join(tmp, "model.pth")
            if not args.checkpoint:
                checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model), ckpt)
            photo, big = os.path.join(HERE, "data", "astronaut.png"), os.path.join(tmp, "big.png")
            if args.quick:
                photo = os.path.join(tmp, "photo.png")
                synthetic_photo(32, 32).save(photo)
            synthetic_photo(size["big"], size["big"], seed=1).save(big)
            results["process"] = bench_processes(os.path.abspath(ckpt), photo, big, size["tile"], size["per_image"],
                                                 size["process_repeats"], tmp)
    print(f"{results['device']}, torch {results['torch']}, model {results['model_args']}\n" + table(results))
    if args.json:
        with utils.atomic_write(args.json) as f:
            f.write(json.dumps(results, indent=2).encode())
    return results


if __name__ == "__main__":
    utils.run_cli(main)
