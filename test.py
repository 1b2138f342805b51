"""Super-resolve your images with a trained SRResNet / SRGAN generator and save the results.

    python test.py                                     # the sample images in data/
    python test.py --img photo.jpg --img holiday/      # files and folders
    python test.py --img photo.jpg --model srgan       # the shipped SRGAN generator instead of the SRResNet
    python test.py --img photo.jpg --hr                # demo: shrink, super-resolve, compare, PSNR

For each input <name>.<ext> it writes <output-dir>/<name>_sr.png and <name>_bicubic.png (both or
neither), marked as its own with a PNG text chunk (images.OUTPUT_MARK) and carrying the input's ICC
colour profile. It replaces only files it wrote itself (never an input, never a file of yours that
happens to have such a name), and in a folder it skips the images it wrote (name one with --img to
upscale it). With --hr
the input is taken as the original: it is shrunk by the scale with bicubic, super-resolved, and
<name>_comparison.png (bicubic | model | original) is written with PSNR / SSIM.
"""

import os
import sys

import numpy as np
from PIL import Image, ImageDraw, ImageFont
from tqdm import tqdm

import checkpoint
import evaluation
import images
import inference
import models
import utils
from utils import UserError

HERE = os.path.dirname(os.path.abspath(__file__))
# the shipped models, by the short names of --model
SHIPPED = {"srresnet": os.path.join("checkpoints", "srresnet_x4.pth"),
           "srgan": os.path.join("checkpoints", "srgan_mse_x4.pth")}
DEFAULT_CHECKPOINT = SHIPPED["srresnet"]
SAMPLE_FOLDER = "data"


def build_parser():
    parser = utils.ArgumentParser(
        description="Super-resolve images with a trained SRResNet / SRGAN generator.",
        epilog="A failed image is one 'error:' line; the other images are still processed, and the exit "
               "code is 2 at the end.")
    parser.add_argument("--img", nargs="+", action="extend", metavar="PATH",
                        help=f"image files and/or folders of images (default: the samples in {SAMPLE_FOLDER}/)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help=f"model checkpoint; the scale comes from it (default: {DEFAULT_CHECKPOINT})")
    parser.add_argument("--model", choices=tuple(SHIPPED), default=None,
                        help="a shipped model instead of --checkpoint: srresnet (MSE, best PSNR) or srgan "
                             "(adversarial, sharper textures)")
    parser.add_argument("--recursive", action="store_true",
                        help="also upscale the images in the sub-folders of a folder given with --img (the outputs "
                             "all go to --output-dir)")
    parser.add_argument("--output-dir", default="results", help="where to write the images (default: results)")
    parser.add_argument("--hr", action="store_true",
                        help="treat each input as the original: shrink, super-resolve, compare, print PSNR / SSIM")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:k] (default: auto)")
    parser.add_argument("--precision", choices=inference.PRECISIONS, default="auto",
                        help="auto = bf16 where the hardware is fast at it, else fp32; fp16 needs CUDA (default: auto)")
    parser.add_argument("--tile", type=int, default=inference.DEFAULT_TILE, metavar="N",
                        help=f"process in N x N tiles of LR pixels, N >= {inference.MIN_TILE}; 0 = whole image "
                             f"(default: {inference.DEFAULT_TILE})")
    parser.add_argument("--tile-pad", type=int, default=None, metavar="P",
                        help="context around each tile (default: the receptive-field radius, seamless)")
    parser.add_argument("--compile", action="store_true",
                        help="torch.compile the model (helps for many same-size images)")
    return parser


# ----------------------------------------------------------------------------------------------
# inputs and outputs


def collect_images(inputs, recursive=False):
    """The image files named by ``inputs``: files (any extension), and the image files of folders
    (and of their sub-folders with ``recursive``; without it, a note says that sub-folders with
    images are not searched) except this program's own outputs (images.is_marked_output; a note
    says how many were skipped)."""
    paths = []
    for item in inputs:
        item = os.fspath(item)
        if os.path.isdir(item):
            found = images.find_images(item, recursive)
            if not recursive:
                deeper = len(images.find_images(item, recursive=True)) - len(found)
                if deeper:
                    tqdm.write(f"note: {item}: {deeper} image(s) in sub-folders not searched; add --recursive "
                               "to upscale them too", file=sys.stderr)
            outputs = [p for p in found if images.is_marked_output(p)]
            found = [p for p in found if p not in outputs]
            if outputs:
                tqdm.write(f"note: {item}: skipped {len(outputs)} image(s) this program wrote; name one with "
                           "--img to upscale it", file=sys.stderr)
            if not found:
                raise UserError(f"{item}: no image files in this folder "
                                f"(looked for {', '.join(images.IMAGE_EXTENSIONS)}"
                                f"{'; outputs of this program are skipped' if outputs else ''})")
            paths.extend(found)
        elif os.path.isfile(item):
            paths.append(item)
        else:
            raise UserError(f"{item}: no such file or folder")
    unique = {}  # a file named twice (in a folder and by name, or through a link) is done once
    for path in paths:
        unique.setdefault(os.path.realpath(path), path)
    return list(unique.values())


def output_stems(paths):
    """Output name stems for input paths, unique within the run ('photo', then 'photo_jpg', ...)."""
    stems, used = [], set()
    for path in paths:
        base, ext = os.path.splitext(os.path.basename(path))
        stem, k = base, 1
        if stem in used:
            stem = f"{base}_{ext.lstrip('.')}" if ext else f"{base}_1"
        while stem in used:
            k += 1
            stem = f"{base}_{k}"
        used.add(stem)
        stems.append(stem)
    return stems


def output_paths(stem, output_dir, hr):
    """The files written for one input: <stem>_sr.png and <stem>_bicubic.png, or <stem>_comparison.png."""
    names = ["comparison"] if hr else ["sr", "bicubic"]
    return [os.path.join(output_dir, f"{stem}_{name}.png") for name in names]


def check_outputs(paths, stems, output_dir, hr):
    """{input path: error message} for the inputs whose outputs would replace an input of this run,
    a file another input of this run writes, or an existing file this program did not write (only a
    file with images.OUTPUT_MARK may be replaced). Decided before anything is written."""
    refused, claimed = {}, {}
    for path, stem in zip(paths, stems):
        for out in output_paths(stem, output_dir, hr):
            clash = next((p for p in paths if utils.same_file(out, p)), None)
            key = os.path.realpath(out)
            if clash is not None:
                refused[path] = (f"{path}: its output {out} is the input {clash} of this run; not written "
                                 "(give another --output-dir)")
            elif key in claimed:
                refused[path] = f"{path}: its output {out} is also the output of {claimed[key]}; not written"
            elif os.path.lexists(out) and not os.path.isdir(out) and not images.is_marked_output(out):
                refused[path] = (f"{path}: {out} exists and was not written by this program; not replaced "
                                 "(move it, or give another --output-dir)")
            else:
                continue
            break
        else:
            for out in output_paths(stem, output_dir, hr):
                claimed[os.path.realpath(out)] = path
    return refused


def save_images(pairs, icc_profile=None):
    """Save [(PIL image, path)] as PNGs, all or none (utils.atomic_write_all), each marked as this
    program's output (images.OUTPUT_MARK) and carrying ``icc_profile`` (the input's), if any.

    zlib level 1: PNG is lossless at every level, and level 1 writes a 2048x2048 image about 4x
    faster than Pillow's default 6, for files about 15% larger.
    """
    with utils.atomic_write_all([path for _, path in pairs]) as files:
        for (img, _), f in zip(pairs, files):
            img.save(f, format="PNG", compress_level=1, pnginfo=images.output_pnginfo(), icc_profile=icc_profile)


def read_image(path):
    """The image of a file (EXIF rotation applied, mode kept); a note if only its first frame is used."""
    img = images.open_image_any_mode(path)
    try:  # the decoded image (a copy, after the EXIF rotation) no longer knows its frame count
        with Image.open(path) as original:
            frames = getattr(original, "n_frames", 1)
    except Exception:  # noqa: BLE001 - a damaged later frame does not matter: only the first is used
        frames = 1
    if frames > 1:
        tqdm.write(f"note: {path}: {frames} frames; only the first is super-resolved", file=sys.stderr)
    return img


# ----------------------------------------------------------------------------------------------
# the two jobs


def super_resolve_file(model, path, output_dir, scale, precision, device, tile=None, tile_pad=None, stem=None):
    """Write <stem>_sr.png and <stem>_bicubic.png for one image file (both or neither).

    Returns a dict: sr_path, bicubic_path, seconds (model time), in_size, out_size, mode.
    """
    img = read_image(path)
    stem = stem or os.path.splitext(os.path.basename(path))[0]
    sr, seconds = inference.upscale_image(model, img, scale, precision, device, tile, tile_pad, progress=True)
    bicubic = inference.bicubic_upscale(img, scale)
    sr_path = os.path.join(output_dir, f"{stem}_sr.png")
    bicubic_path = os.path.join(output_dir, f"{stem}_bicubic.png")
    save_images([(sr, sr_path), (bicubic, bicubic_path)], img.info.get("icc_profile"))
    return dict(sr_path=sr_path, bicubic_path=bicubic_path, seconds=seconds, in_size=img.size,
                out_size=sr.size, mode=sr.mode)


def hr_demo(model, img, scale, precision, device, tile=None, tile_pad=None, label="model"):
    """Shrink ``img`` (the original) by ``scale`` with bicubic, super-resolve it, compare with bicubic.

    Scored as eval.py scores (evaluation.py): the original as 8-bit RGB (alpha dropped, 16 bits
    rounded to 8), cropped to a multiple of the scale and shrunk with PIL bicubic; PSNR / SSIM on the
    Y channel with ``scale`` border pixels removed. So the same image gives eval.py's numbers.

    Returns:
        dict: comparison (bicubic | model | original), sr, bicubic, hr (PIL images), psnr_bicubic,
        ssim_bicubic, psnr_sr, ssim_sr, seconds (model time).
    """
    hr, lr = evaluation.lr_pair(to_rgb8(inference.normalize_mode(img)), scale)
    min_side = evaluation.min_side(scale, scale)
    if min(hr.size) < min_side:
        raise UserError(f"image is {img.width}x{img.height}; --hr needs at least {min_side} pixels on each side")
    sr, seconds = inference.upscale_image(model, lr, scale, precision, device, tile, tile_pad)
    bicubic = images.bicubic_resize(lr, hr.size)
    hr8, sr8, bicubic8 = hr, sr, bicubic
    comparison = make_comparison([("bicubic", bicubic8), (label, sr8), ("original", hr8)])
    on_bicubic, on_sr = evaluation.score(bicubic8, hr8, scale), evaluation.score(sr8, hr8, scale)
    return dict(comparison=comparison, sr=sr, bicubic=bicubic, hr=hr, seconds=seconds,
                psnr_bicubic=on_bicubic["psnr"], ssim_bicubic=on_bicubic["ssim"],
                psnr_sr=on_sr["psnr"], ssim_sr=on_sr["ssim"])


def hr_demo_file(model, path, output_dir, scale, precision, device, tile=None, tile_pad=None, stem=None,
                 label="model"):
    """:func:`hr_demo` on an image file; writes <stem>_comparison.png. Returns the numbers and its path."""
    img = read_image(path)
    stem = stem or os.path.splitext(os.path.basename(path))[0]
    result = hr_demo(model, img, scale, precision, device, tile, tile_pad, label)
    comparison_path = os.path.join(output_dir, f"{stem}_comparison.png")
    save_images([(result.pop("comparison"), comparison_path)], img.info.get("icc_profile"))
    for key in ("sr", "bicubic", "hr"):
        result.pop(key)
    result["comparison_path"] = comparison_path
    return result


def to_rgb8(img):
    """An 8-bit RGB copy of an image of any mode (alpha dropped, 16 bits rounded to 8)."""
    if img.mode in images.HIGH_BIT_MODES:
        img = inference.normalize_mode(img)
        img = Image.fromarray(np.round(np.asarray(img, dtype=np.float64) / 257.0).astype(np.uint8))
    return img.convert("RGB")


def make_comparison(panels, gap=4):
    """Side-by-side RGB picture of same-size images [(caption, PIL image)], captions above."""
    w, h = panels[0][1].size
    font_size = max(12, min(48, w // 20))
    try:
        font = ImageFont.load_default(size=font_size)
    except TypeError:  # Pillow < 10.1 has only the bitmap font
        font = ImageFont.load_default()
    strip = font_size + 10
    canvas = Image.new("RGB", (len(panels) * w + (len(panels) - 1) * gap, h + strip), "white")
    draw = ImageDraw.Draw(canvas)
    for i, (caption, img) in enumerate(panels):
        x = i * (w + gap)
        canvas.paste(to_rgb8(img), (x, strip))
        text_w = draw.textlength(caption, font=font)
        draw.text((x + max(0, (w - text_w) / 2), 4), caption, fill="black", font=font)
    return canvas


def main(argv=None):
    """Parse flags, load the model and process every input; returns the list of per-image results."""
    args = build_parser().parse_args(argv)
    inference.check_tile(args.tile)
    if args.tile_pad is not None and args.tile_pad < 0:
        raise UserError("--tile-pad must be >= 0")
    if args.img:
        paths = collect_images(args.img, args.recursive)
    else:
        sample = os.path.join(HERE, SAMPLE_FOLDER)
        if not os.path.isdir(sample):
            raise UserError(f"no --img given and no sample folder {sample}; pass --img PATH")
        paths = collect_images([sample])
    if args.model and args.checkpoint:
        raise UserError("give --model or --checkpoint, not both")
    ckpt_path = args.checkpoint or os.path.join(HERE, SHIPPED[args.model or "srresnet"])
    if args.model and not os.path.isfile(ckpt_path):
        raise UserError(f"--model {args.model}: {ckpt_path} is missing from this copy of the repository")

    device = utils.resolve_device(args.device)
    precision = utils.resolve_precision(args.precision, device)
    utils.keep_freed_memory()  # reuse freed feature maps instead of page-faulting new ones (README, Speed)
    model = checkpoint.load_model(ckpt_path)
    scale = model.scaling_factor
    label = "SRGAN" if isinstance(model, models.Generator) else "SRResNet"
    model = inference.prepare_model(model, device, precision, compile=args.compile)
    if os.path.isfile(args.output_dir):
        raise UserError(f"{args.output_dir}: --output-dir is a file, not a folder")
    probe = os.path.join(args.output_dir, "probe.png")
    try:  # fail before any work
        utils.check_writable(probe)
    except UserError as e:
        raise UserError(f"{args.output_dir}: --output-dir: {str(e)[len(probe) + 2:]}") from None
    print(f"{label} x{scale} from {ckpt_path} on {device}, {precision}; "
          f"tiles {args.tile or 'off'}, {len(paths)} image(s) -> {args.output_dir}")

    results, failures = [], 0
    stems = output_stems(paths)
    refused = check_outputs(paths, stems, args.output_dir, args.hr)
    for stem in stems:  # hidden temporaries of a run that was killed while writing
        for out in output_paths(stem, args.output_dir, args.hr):
            utils.remove_stale_temporaries(out)
    bar = tqdm(list(zip(paths, stems)), unit="img", disable=len(paths) < 2, file=sys.stderr)
    for path, stem in bar:
        try:
            if path in refused:
                raise UserError(refused[path])
            if args.hr:
                r = hr_demo_file(model, path, args.output_dir, scale, precision, device, args.tile,
                                 args.tile_pad, stem=stem, label=label)
                tqdm.write(f"{path}: bicubic {r['psnr_bicubic']:.2f} dB / {r['ssim_bicubic']:.4f}, "
                           f"{label} {r['psnr_sr']:.2f} dB / {r['ssim_sr']:.4f} (PSNR / SSIM, Y, border {scale}, "
                           f"{precision}); "
                           f"model {r['seconds']:.2f} s -> {r['comparison_path']}", file=sys.stdout)
            else:
                r = super_resolve_file(model, path, args.output_dir, scale, precision, device, args.tile,
                                       args.tile_pad, stem=stem)
                (w, h), (sw, sh) = r["in_size"], r["out_size"]
                tqdm.write(f"{path}: {w}x{h} -> {sw}x{sh} {r['mode']} in {r['seconds']:.2f} s (model) "
                           f"-> {r['sr_path']}", file=sys.stdout)
        except (UserError, MemoryError) as e:  # MemoryError: numpy or Pillow out of memory on a huge image
            message = str(e) if isinstance(e, UserError) else "out of memory; try a smaller --tile"
            if "output is not finite" in message:
                message = f"{ckpt_path}: {message} (on {path})"
            elif not message.startswith(path) and not message.startswith(args.output_dir):
                message = f"{path}: {message}"
            if len(paths) == 1:
                raise UserError(message) from None
            tqdm.write(f"error: {utils.one_line(message)}", file=sys.stderr)
            failures += 1
            continue
        results.append(dict(r, path=path))
    bar.close()

    if args.hr and len(results) > 1:
        keys = ("psnr_bicubic", "ssim_bicubic", "psnr_sr", "ssim_sr")
        mean = {k: sum(r[k] for r in results) / len(results) for k in keys}
        print(f"mean of {len(results)}: bicubic {mean['psnr_bicubic']:.2f} dB / {mean['ssim_bicubic']:.4f}, "
              f"{label} {mean['psnr_sr']:.2f} dB / {mean['ssim_sr']:.4f}")
    if failures:
        raise UserError(f"{failures} of {len(paths)} images failed (see above)")
    return results


if __name__ == "__main__":
    utils.run_cli(main)
