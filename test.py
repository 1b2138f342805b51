"""Super-resolve images with a trained SRResNet or SRGAN generator and save the results.

    python test.py                                     # the sample images in data/
    python test.py --img photo.jpg --img holiday/      # files and folders
    python test.py --img photo.jpg --hr                # demo: shrink, super-resolve, compare, PSNR

For each input <name>.<ext> it writes <output-dir>/<name>_sr.png (the model's output) and
<name>_bicubic.png (bicubic up-scaling, to compare), and prints the model time. With --hr the input
is taken as the high-resolution original: it is bicubic-down-sampled by the scale, super-resolved,
and <name>_comparison.png (bicubic | model | original) is written, with the PSNR / SSIM of both
(Y channel, border = scale). RGB, grayscale, RGBA / LA (transparency kept), palette, CMYK and
16-bit PNG images are handled (see inference.py). Large images are processed in tiles that join
without seams. The work itself is done by inference.py.
"""

import argparse
import os
import sys

from tqdm import tqdm

import inference
import utils

HERE = os.path.dirname(os.path.abspath(__file__))
DEFAULT_CHECKPOINT = os.path.join("checkpoints", "srresnet_x4.pth")
SAMPLE_FOLDER = "data"


def build_parser():
    parser = argparse.ArgumentParser(
        description="Super-resolve images with a trained SRResNet / SRGAN generator.",
        epilog="Errors (unreadable image, bad checkpoint...) are printed as one 'error:' line; with several "
               "inputs the others are still processed and the exit code is 2 at the end.")
    parser.add_argument("--img", nargs="+", action="extend", metavar="PATH",
                        help="image files and/or folders of images (repeatable; default: the sample images in "
                             f"{SAMPLE_FOLDER}/ next to this script)")
    parser.add_argument("--checkpoint", default=None, metavar="PATH",
                        help=f"model checkpoint (default: {DEFAULT_CHECKPOINT} next to this script); "
                             "the scale comes from it")
    parser.add_argument("--output-dir", default="results", help="where to write the images (default: results)")
    parser.add_argument("--hr", action="store_true",
                        help="treat each input as the HR original: down-sample it by the scale (bicubic), "
                             "super-resolve, write <name>_comparison.png and print PSNR / SSIM")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:k] (default: auto)")
    parser.add_argument("--precision", choices=inference.PRECISIONS, default="auto",
                        help="auto = bf16 on CPUs with native bf16 (AVX-512 BF16 / AMX) and on recent GPUs, "
                             "fp16 on older GPUs, fp32 on other CPUs; fp16 on a CPU is refused with an error "
                             "(use bf16 or fp32 there) (default: auto)")
    parser.add_argument("--tile", type=int, default=inference.DEFAULT_TILE, metavar="N",
                        help="process images in N x N tiles of LR pixels, bounding memory; 0 = whole image "
                             f"at once (default: {inference.DEFAULT_TILE})")
    parser.add_argument("--tile-pad", type=int, default=None, metavar="P",
                        help="LR pixels of context around each tile (default: the model's receptive-field "
                             "radius, 40 for the default model, which makes tiled output identical to untiled; "
                             "less is faster but may show seams)")
    parser.add_argument("--compile", action="store_true", help="torch.compile the model (helps for many same-size images)")
    return parser


def main(argv=None):
    """Parse flags, load the model and process every input; returns the list of per-image results."""
    args = build_parser().parse_args(argv)
    if args.tile < 0 or (args.tile_pad is not None and args.tile_pad < 0):
        raise utils.UserError("--tile and --tile-pad must be >= 0")
    if args.img:
        paths = inference.collect_images(args.img)
    else:
        sample = os.path.join(HERE, SAMPLE_FOLDER)
        if not os.path.isdir(sample):
            raise utils.UserError(f"no --img given and no sample folder {sample}; pass --img PATH")
        paths = inference.collect_images([sample])
    checkpoint = args.checkpoint or os.path.join(HERE, DEFAULT_CHECKPOINT)

    device = utils.resolve_device(args.device)
    precision = utils.resolve_precision(args.precision, device)
    model = inference.load_model(checkpoint, device, precision, compile=args.compile)
    scale = utils.unwrap_model(model).scaling_factor
    label = inference.model_label(model)
    print(f"{label} x{scale} from {checkpoint} on {device}, {precision}; "
          f"tiles {args.tile or 'off'}, {len(paths)} image(s) -> {args.output_dir}")

    results, failures = [], 0
    stems = inference.output_stems(paths)
    bar = tqdm(list(zip(paths, stems)), unit="img", disable=len(paths) < 2, file=sys.stderr)
    for path, stem in bar:
        try:
            if args.hr:
                r = inference.hr_demo_file(model, path, args.output_dir, scale, precision, device, args.tile,
                                           args.tile_pad, stem=stem, label=label)
                tqdm.write(f"{path}: bicubic {r['psnr_bicubic']:.2f} dB / {r['ssim_bicubic']:.4f}, "
                           f"{label} {r['psnr_sr']:.2f} dB / {r['ssim_sr']:.4f} (PSNR / SSIM, Y, border {scale}); "
                           f"model {r['seconds']:.2f} s -> {r['comparison_path']}", file=sys.stdout)
            else:
                r = inference.super_resolve_file(model, path, args.output_dir, scale, precision, device, args.tile,
                                                 args.tile_pad, stem=stem)
                (w, h), (sw, sh) = r["in_size"], r["out_size"]
                tqdm.write(f"{path}: {w}x{h} -> {sw}x{sh} {r['mode']} in {r['seconds']:.2f} s (model) "
                           f"-> {r['sr_path']}", file=sys.stdout)
        except utils.UserError as e:
            message = str(e) if path in str(e) else f"{path}: {e}"
            if len(paths) == 1:
                raise utils.UserError(message) from None
            tqdm.write(f"error: {message}", file=sys.stderr)
            failures += 1
            continue
        results.append(dict(r, path=path))
    bar.close()

    if args.hr and len(results) > 1:
        mean = {k: sum(r[k] for r in results) / len(results) for k in ("psnr_bicubic", "ssim_bicubic", "psnr_sr", "ssim_sr")}
        print(f"mean of {len(results)}: bicubic {mean['psnr_bicubic']:.2f} dB / {mean['ssim_bicubic']:.4f}, "
              f"{label} {mean['psnr_sr']:.2f} dB / {mean['ssim_sr']:.4f}")
    if failures:
        raise utils.UserError(f"{failures} of {len(paths)} images failed (see above)")
    return results


if __name__ == "__main__":
    utils.run_cli(main)
