"""PSNR / SSIM (and NIQE) of checkpoints and bicubic up-sampling on test sets, as the papers compute them.

    python eval.py --checkpoint checkpoints/srresnet_x4.pth --bicubic --test-folders datasets/Set5 datasets/Set14
    python eval.py --checkpoint checkpoints/srgan_mse_x4.pth --niqe --test-folders datasets/Set14

Each HR image is cropped to a multiple of the scale and shrunk with PIL bicubic; the output is
quantised to uint8 and compared on the Y channel with ``--crop-border`` pixels removed (metrics.py).
``--niqe`` adds the no-reference NIQE (lower is better; metrics.niqe) and a row for the HR images
themselves; ``--artifacts`` adds the artifact measures (grid over flat regions, dark
regions and all pixels, border ratio; docs/artifacts.md) and the flat-field probe of each checkpoint. Prints Markdown
tables; ``--json`` also writes every number, per image too.
"""

import json
import os
import sys

import numpy as np
from tqdm import tqdm

import checkpoint
import datasets
import evaluation
import images
import inference
import metrics
import models
import utils


def build_parser():
    parser = utils.ArgumentParser(description="PSNR / SSIM (Y channel) of checkpoints and bicubic on test sets.")
    parser.add_argument("--checkpoint", nargs="+", action="extend", default=[], metavar="PATH",
                        help="checkpoints to evaluate (SRResNet or SRGAN generator; one table row each)")
    parser.add_argument("--test-folders", nargs="+", action="extend", required=True, metavar="DIR_OR_JSON",
                        help="test sets: folders of HR images, or JSON lists from create_data_lists.py "
                             "(e.g. data_lists/Set5_test_images.json)")
    parser.add_argument("--bicubic", action="store_true", help="add a row for bicubic up-sampling")
    parser.add_argument("--scale", type=int, choices=models.SCALES, default=None,
                        help="up-scaling factor (default: the checkpoints'; required with --bicubic alone)")
    parser.add_argument("--crop-border", type=int, default=None,
                        help="pixels removed from each border before the metrics (default: the scale)")
    parser.add_argument("--niqe", action="store_true",
                        help="add NIQE (no-reference, lower is better; Mittal et al. 2013, the MATLAB release's "
                             "model) on the same Y channel and border, and a row for the HR images")
    parser.add_argument("--artifacts", action="store_true",
                        help="add the artifact measures: grid at the scale's period over flat regions, dark "
                             "regions and all pixels, border ratio (lower is cleaner), the flat-field probe, and an "
                             "HR row (docs/artifacts.md)")
    parser.add_argument("--self-ensemble", action="store_true",
                        help="average the model's outputs over the 8 flips / 90-degree rotations (x8 slower)")
    parser.add_argument("--json", default=None, metavar="OUT",
                        help="also write all results (per image too) to this JSON file")
    parser.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda[:k] (default: auto)")
    parser.add_argument("--precision", choices=inference.PRECISIONS, default="fp32",
                        help="fp32 (reference numbers), bf16, fp16 (CUDA only) or auto (see test.py) (default: fp32)")
    parser.add_argument("--tile", type=int, default=inference.DEFAULT_TILE, metavar="N",
                        help=f"tile size in LR pixels (>= {inference.MIN_TILE}), 0 = whole images; tiles carry "
                             "their context, so tiling does not change the results "
                             f"(default: {inference.DEFAULT_TILE})")
    return parser


def resolve_test_sets(items):
    """[(name, [image paths])] for folders and JSON lists.

    The name is the folder name, or the JSON file name without '_test_images.json' / '.json'.
    Raises UserError for a missing path, an empty folder, a bad list or two sets of the same name.
    """

    sets = []
    for item in items:
        if os.path.isdir(item):
            paths = images.find_images(item)
            if not paths:
                raise utils.UserError(f"{item}: no image files in this folder")
            name = os.path.basename(os.path.normpath(item))
        elif os.path.isfile(item):
            paths = datasets.read_image_list(item)
            name = os.path.basename(item)
            for suffix in ("_test_images.json", ".json"):
                if name.endswith(suffix):
                    name = name[:-len(suffix)]
                    break
        else:
            raise utils.UserError(f"{item}: no such folder or JSON list")
        sets.append((name, paths))
    names = [name for name, _ in sets]
    if len(set(names)) != len(names):
        raise utils.UserError(f"test sets must have distinct names: {names}")
    return sets


HR_ROW = "HR (ground truth)"


def set_means(per_image):
    """{metric: mean over the images that have a finite value, or None} of {image: {metric: value}};
    '<metric>_count' says how many images a mean is over when some have none (grid_flat: too few
    flat pixels)."""
    names = list(dict.fromkeys(m for scores in per_image.values() for m in scores))
    means = {}
    for m in names:
        values = [v[m] for v in per_image.values() if v.get(m) is not None and np.isfinite(v[m])]
        infinite = [v[m] for v in per_image.values() if v.get(m) is not None and np.isinf(v[m])]
        means[m] = float(np.mean(values + infinite)) if values or infinite else None
        if len(values) + len(infinite) < len(per_image):
            means[f"{m}_count"] = len(values) + len(infinite)
    return means


def evaluate(methods, test_sets, scale, crop_border, precision="fp32", device="cpu", tile=None, self_ensemble=False,
             sources=None, niqe_params=None, artifacts=False):
    """PSNR / SSIM (and NIQE) of each method on each test set.

    Args:
        methods: list of (name, model); model None means bicubic up-sampling.
        test_sets: list of (name, [HR image paths]), as resolve_test_sets returns.
        scale: up-scaling factor (the models' own).
        crop_border: border pixels removed before the metrics.
        precision, device, tile: how the models run (inference.upscale_tensor).
        self_ensemble: average each model's outputs over the 8 flips / rotations.
        sources: {method: checkpoint path}, to name the file when a model's output is not finite.
        niqe_params: metrics.load_niqe_params()'s model to add NIQE (and an HR row), or None.
        artifacts: add metrics.artifact_scores (grid_flat, grid, border) and an HR row.

    Returns:
        {method: {set: {"psnr": mean, "ssim": mean, "count": n, "images": {file name: {"psnr", "ssim"}}}}},
        with "niqe" and the artifact measures beside "psnr" and "ssim" when asked, and an HR row that
        has only those. A mean is over the images that have the measure (see set_means).
        Raises UserError naming the file for an unreadable or too small image.
    """
    if niqe_params is not None or artifacts:
        methods = [*methods, (HR_ROW, "hr")]
    results = {name: {} for name, _ in methods}
    for set_name, paths in test_sets:
        per_image = {name: {} for name, _ in methods}
        for path in tqdm(paths, desc=set_name, unit="img", leave=False, file=sys.stderr):
            img = images.open_image(path)
            evaluation.check_size(img, path, scale, crop_border, niqe_params is not None, artifacts)
            hr, lr = evaluation.lr_pair(img, scale)
            for name, model in methods:
                key = os.path.basename(path) if os.path.basename(path) not in per_image[name] else path
                if model == "hr":  # no reference to compare with: NIQE and the artifact measures only
                    scores = metrics.artifact_scores(hr, hr, scale, crop_border) if artifacts else {}
                    if niqe_params is not None:
                        scores = {"niqe": metrics.calc_niqe(hr, crop_border, niqe_params), **scores}
                        if not np.isfinite(scores["niqe"]):
                            tqdm.write(f"note: {path}: NIQE is undefined for the HR image (no texture to fit: "
                                       "flat or smoothly graded); left out of the set's NIQE mean", file=sys.stderr)
                    per_image[name][key] = scores
                    continue
                if model is None:
                    sr = images.bicubic_resize(lr, hr.size)
                else:
                    try:
                        sr = evaluation.super_resolve(model, lr, scale, precision, device, tile, self_ensemble)
                    except utils.UserError as e:
                        raise utils.UserError(f"{(sources or {}).get(name, name)}: {e} (on {path})") from None
                scores = evaluation.score(sr, hr, crop_border, niqe_params, scale if artifacts else None)
                if "niqe" in scores and not np.isfinite(scores["niqe"]):
                    tqdm.write(f"note: {path}: NIQE is undefined for the {name} image (no texture to fit: flat "
                               "or smoothly graded); left out of the set's NIQE mean", file=sys.stderr)
                per_image[name][key] = scores
        for name, _ in methods:
            scores = per_image[name]
            results[name][set_name] = {**set_means(scores), "count": len(scores), "images": scores}
    return results


COLUMNS = [("psnr", "PSNR", ".2f"), ("ssim", "SSIM", ".4f"), ("niqe", "NIQE", ".2f"),
           ("grid_flat", "grid flat", ".2f"), ("grid_dark", "grid dark", ".2f"), ("grid", "grid", ".2f"),
           ("border", "border", ".2f")]


def format_table(results):
    """Markdown table: one row per method, PSNR (dB), SSIM (and NIQE, the artifact measures) columns
    per test set; '-' where a method has no value."""
    set_names = list(next(iter(results.values())))
    columns = [c for c in COLUMNS if any(c[0] in sets[s] for sets in results.values() for s in set_names)]
    header = "| Method | " + " | ".join(f"{s} {title}" for s in set_names for _, title, _ in columns) + " |"
    rule = "|---|" + "---:|" * len(columns) * len(set_names)
    rows = [f"| {name} | " + " | ".join(format(sets[s][key], fmt) if sets[s].get(key) is not None else "-"
                                        for s in set_names for key, _, fmt in columns) + " |"
            for name, sets in results.items()]
    return "\n".join([header, rule] + rows)


def format_notes(results):
    """One line per set whose flat-region grid or NIQE is a mean over fewer than all its images."""
    notes = []
    for set_name, sets in next(iter(results.values())).items():
        for key, kind in (("grid_flat", "flat"), ("grid_dark", "dark")):
            if f"{key}_count" in sets or (key in sets and sets[key] is None):
                n = sets.get(f"{key}_count", 0)
                notes.append(f"{set_name} grid {kind}: over the {n} of {sets['count']} images with at least "
                             f"{metrics.GRID_FLAT_MIN_PIXELS} {kind} pixels" + (" (none: '-')" if not n else ""))
        counts = {name: s[set_name]["niqe_count"] for name, s in results.items() if "niqe_count" in s[set_name]}
        for name, n in counts.items():
            notes.append(f"{set_name} NIQE of {name}: over the {n} of {sets['count']} images where it is defined")
    return notes


def format_probe_table(probes):
    """Markdown table of {method: {value: largest deviation}} from evaluation.flat_field_probe."""
    header = "| Method | " + " | ".join(f"flat {v}: max dev" for v in evaluation.PROBE_VALUES) + " |"
    rule = "|---|" + "---:|" * len(evaluation.PROBE_VALUES)
    rows = [f"| {name} | " + " | ".join(str(dev[v]) for v in evaluation.PROBE_VALUES) + " |"
            for name, dev in probes.items()]
    return "\n".join([header, rule] + rows)


def method_names(checkpoints):
    """Row names for checkpoint paths: the file names, or the paths where file names repeat."""
    for i, path in enumerate(checkpoints):
        for other in checkpoints[:i]:
            if os.path.realpath(path) == os.path.realpath(other):
                raise utils.UserError(f"{path}: given twice to --checkpoint")
    names = [os.path.basename(p) for p in checkpoints]
    return names if len(set(names)) == len(names) else list(checkpoints)


def strict(obj):
    """``obj`` with every non-finite float as None: strict JSON has no NaN or Infinity."""
    if isinstance(obj, dict):
        return {k: strict(v) for k, v in obj.items()}
    if isinstance(obj, (list, tuple)):
        return [strict(v) for v in obj]
    if isinstance(obj, float) and not np.isfinite(obj):
        return None
    return obj


def write_json(obj, path):
    """Write ``obj`` as indented, strict JSON (non-finite numbers as null) atomically (utils.atomic_write)."""
    with utils.atomic_write(path) as f:
        f.write(json.dumps(strict(obj), indent=1, allow_nan=False).encode())


def main(argv=None):
    """Parse flags, evaluate, print the table; returns the results dict."""
    args = build_parser().parse_args(argv)
    if not args.checkpoint and not args.bicubic:
        raise utils.UserError("nothing to evaluate: give --checkpoint PATH and/or --bicubic")
    inference.check_tile(args.tile)
    test_sets = resolve_test_sets(args.test_folders)
    names = method_names(args.checkpoint)
    if args.json:
        utils.refuse_overwriting_input(args.json, args.checkpoint + [p for _, paths in test_sets for p in paths]
                                       + [p for p in args.test_folders if os.path.isfile(p)])
        utils.check_writable(args.json)
        utils.remove_stale_temporaries(args.json)  # before the evaluation, so that its results are not lost

    niqe_params = metrics.load_niqe_params() if args.niqe else None
    device = utils.resolve_device(args.device)
    precision = utils.resolve_precision(args.precision, device)
    utils.keep_freed_memory()  # reuse freed feature maps instead of page-faulting new ones (README, Speed)
    methods = [("Bicubic", None)] if args.bicubic else []
    scale = args.scale
    for name, path in zip(names, args.checkpoint):
        model = checkpoint.load_model(path)
        model_scale = model.scaling_factor
        model = inference.prepare_model(model, device, precision)
        if scale is None:
            scale = model_scale
        elif model_scale != scale:
            raise utils.UserError(f"{path}: its model up-scales x{model_scale}, but the evaluation is x{scale} "
                                  "(evaluate checkpoints of different scales separately)")
        methods.append((name, model))
    if scale is None:
        raise utils.UserError("--bicubic without a checkpoint needs --scale")
    crop_border = scale if args.crop_border is None else args.crop_border
    if crop_border < 0:
        raise utils.UserError("--crop-border must be >= 0")

    results = evaluate(methods, test_sets, scale, crop_border, precision, device, args.tile, args.self_ensemble,
                       sources=dict(zip(names, args.checkpoint)), niqe_params=niqe_params, artifacts=args.artifacts)
    probes = None
    if args.artifacts:
        probes = {name: ({v: 0 for v in evaluation.PROBE_VALUES} if model is None
                         else evaluation.flat_field_probe(model, scale, precision, device)) for name, model in methods}
    print(f"x{scale}, Y-channel PSNR (dB) / SSIM{' / NIQE' if args.niqe else ''}"
          f"{' / grid (grey levels) / border ratio' if args.artifacts else ''}, border {crop_border}"
          f"{', self-ensemble x8' if args.self_ensemble else ''}, {precision} on {device}")
    print(format_table(results))
    for note in format_notes(results):
        print(note)
    if probes:
        print(f"\nflat-field probe: constant {evaluation.PROBE_SIZE[0]}x{evaluation.PROBE_SIZE[1]} LR images, "
              "largest |SR - value| in grey levels")
        print(format_probe_table(probes))
    if args.json:
        write_json({"scale": scale, "crop_border": crop_border, "self_ensemble": args.self_ensemble,
                    "precision": precision, "niqe": args.niqe, "artifacts": args.artifacts,
                    "checkpoints": dict(zip(names, args.checkpoint)), "results": results,
                    **({"flat_field_probe": probes} if probes else {})}, args.json)
        if args.json != "-":  # the JSON itself went to standard output
            print(f"wrote {args.json}")
    return results


if __name__ == "__main__":
    utils.run_cli(main)
