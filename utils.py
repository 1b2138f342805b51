"""Shared helpers: image conversion, image files, metrics, checkpoint IO, devices and precision.

One implementation of each, imported by every script that needs it.

Metrics follow BasicSR and the SR papers (see DESIGN.md section 2): PSNR and SSIM on the Y channel
of ITU-R BT.601 (Y = 16 + 65.481 R + 128.553 G + 24.966 B, R, G, B in [0, 1]) computed from uint8
RGB images, with ``crop_border`` pixels removed on every side; SSIM after Wang et al., IEEE TIP 2004
(11x11 Gaussian window, sigma 1.5, valid region, C1 = (0.01 * 255)^2, C2 = (0.03 * 255)^2).

Checkpoints are plain dicts of tensors and primitives, written atomically and read with
``torch.load(weights_only=True)``. Layout (format_version 1)::

    {"format_version": 1,
     "model": {"arch": "SRResNet" | "Generator", "args": {...}, "state_dict": {...}},
     "discriminator": {...same keys...},             # SRGAN training checkpoints only
     "training": {...optimizer, scheduler, RNG...},  # training checkpoints only
     "info": {...how it was made...}}

Command line: ``python utils.py convert OLD.pth.tar NEW.pth`` imports a checkpoint of the classic
tutorial (pickled whole models) through an allow-list of its classes, without running other code;
``python utils.py export CKPT OUT --info key=value ...`` writes the small inference-only part of a
checkpoint.
"""

import argparse
import collections
import contextlib
import os
import pickle
import sys
import tempfile
import zipfile

import numpy as np
import torch
import torch.nn.functional as F
from PIL import Image, ImageOps

FORMAT_VERSION = 1
IMAGENET_MEAN = (0.485, 0.456, 0.406)
IMAGENET_STD = (0.229, 0.224, 0.225)
IMAGE_EXTENSIONS = (".bmp", ".png", ".jpg", ".jpeg", ".webp", ".tif", ".tiff")
# BT.601 luma weights for R, G, B in [0, 1], giving Y in [16, 235]
_Y_WEIGHTS = (65.481, 128.553, 24.966)
_CONVERSIONS = ("pil", "[0, 1]", "[-1, 1]", "[0, 255]", "imagenet-norm", "y-channel")


class UserError(Exception):
    """A problem with the user's input (a file, a flag): scripts print it on one line and exit 2."""


# ----------------------------------------------------------------------------------------------
# image conversion


def convert_image(img, source, target):
    """Convert an image between value conventions.

    Args:
        img: a PIL image (source 'pil') or a float tensor (3, H, W) or (N, 3, H, W).
        source: 'pil', '[0, 1]', '[-1, 1]', '[0, 255]' or 'imagenet-norm'.
        target: 'pil', '[0, 1]', '[-1, 1]', '[0, 255]', 'imagenet-norm' or 'y-channel'
            (BT.601 luma in [16, 235], shape (H, W) or (N, H, W)).

    Returns:
        A PIL RGB image (target 'pil', from a single image; values clamped to [0, 1] and rounded to
        uint8) or a float tensor.
    """
    if source not in _CONVERSIONS[:-1]:
        raise ValueError(f"source must be one of {_CONVERSIONS[:-1]}, got {source!r}")
    if target not in _CONVERSIONS:
        raise ValueError(f"target must be one of {_CONVERSIONS}, got {target!r}")

    # to [0, 1]
    if source == "pil":
        x = torch.from_numpy(np.array(img.convert("RGB"), dtype=np.uint8)).permute(2, 0, 1).float() / 255.0
    elif source == "[0, 1]":
        x = img
    elif source == "[-1, 1]":
        x = (img + 1.0) / 2.0
    elif source == "[0, 255]":
        x = img / 255.0
    else:  # imagenet-norm
        mean, std = _imagenet_stats(img)
        x = img * std + mean

    # from [0, 1]
    if target == "pil":
        if x.dim() != 3:
            raise ValueError(f"target 'pil' needs a single (3, H, W) image, got shape {tuple(x.shape)}")
        arr = (x.detach().float().clamp(0, 1) * 255.0).round().to(torch.uint8).permute(1, 2, 0).cpu().numpy()
        return Image.fromarray(arr, "RGB")
    if target == "[0, 1]":
        return x
    if target == "[-1, 1]":
        return x * 2.0 - 1.0
    if target == "[0, 255]":
        return x * 255.0
    if target == "imagenet-norm":
        mean, std = _imagenet_stats(x)
        return (x - mean) / std
    # y-channel
    weights = torch.tensor(_Y_WEIGHTS, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return (x * weights).sum(dim=-3) + 16.0


def _imagenet_stats(x):
    """ImageNet mean and std shaped (3, 1, 1), on x's device and dtype."""
    mean = torch.tensor(IMAGENET_MEAN, dtype=x.dtype, device=x.device).view(3, 1, 1)
    std = torch.tensor(IMAGENET_STD, dtype=x.dtype, device=x.device).view(3, 1, 1)
    return mean, std


# ----------------------------------------------------------------------------------------------
# image files


def open_image(path):
    """Open an image file as a decoded RGB PIL image (EXIF rotation applied).

    Grayscale, palette, CMYK, 16-bit and RGBA images become 8-bit RGB (alpha dropped; for images
    with alpha, test.py keeps it separately). Raises UserError naming the file if it is missing or
    cannot be decoded.
    """
    img = open_image_any_mode(path)
    if img.mode in ("I;16", "I;16B", "I;16L", "I"):
        img = Image.fromarray((np.asarray(img, dtype=np.float64) / 257.0).round().clip(0, 255).astype(np.uint8))
    return img.convert("RGB")


def open_image_any_mode(path):
    """Open and fully decode an image file, EXIF rotation applied, keeping its mode.

    Raises UserError naming the file if it is missing, empty, truncated, not an image, or so large
    that PIL refuses it as a possible decompression bomb.
    """
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    try:
        with Image.open(path) as img:
            img.load()  # decode now, so that a truncated file fails here
            img = ImageOps.exif_transpose(img)
            img.load()
            return img
    except Image.DecompressionBombError as e:
        raise UserError(f"{path}: image too large to decode safely ({e})") from None
    except (OSError, SyntaxError, ValueError, Image.UnidentifiedImageError) as e:
        raise UserError(f"{path}: cannot decode image ({e})") from None


def is_image_file(path):
    """True if the file name has one of the supported image extensions (case-insensitive)."""
    return os.path.splitext(str(path))[1].lower() in IMAGE_EXTENSIONS


def find_images(folder, recursive=False):
    """Sorted paths of the image files (by extension, case-insensitive) in a folder."""
    if not os.path.isdir(folder):
        raise UserError(f"{folder}: no such folder")
    if recursive:
        paths = [os.path.join(root, name) for root, _, names in os.walk(folder) for name in names]
    else:
        paths = [os.path.join(folder, name) for name in os.listdir(folder)]
    return sorted(os.path.abspath(p) for p in paths if is_image_file(p) and os.path.isfile(p))


def bicubic_resize(img, size):
    """Resize a PIL image to ``size`` (w, h) with PIL's antialiased bicubic filter (the LR convention)."""
    return img.resize(size, Image.BICUBIC)


def crop_to_multiple(img, scale):
    """Crop a PIL image (from the top left) so that both sides are multiples of ``scale``."""
    w, h = img.size
    return img.crop((0, 0, w - w % scale, h - h % scale))


# ----------------------------------------------------------------------------------------------
# metrics


def y_channel(img):
    """BT.601 luma (float64, values in [16, 235]) of an RGB PIL image or uint8 (H, W, 3) array."""
    arr = np.asarray(img.convert("RGB") if isinstance(img, Image.Image) else img)
    if arr.dtype != np.uint8 or arr.ndim != 3 or arr.shape[2] != 3:
        raise ValueError(f"expected an RGB PIL image or a uint8 (H, W, 3) array, got {arr.dtype} {arr.shape}")
    return arr.astype(np.float64) @ (np.array(_Y_WEIGHTS) / 255.0) + 16.0


def _y_pair(sr, hr, crop_border):
    """Y channels of the two images, with ``crop_border`` pixels removed on every side."""
    y_sr, y_hr = y_channel(sr), y_channel(hr)
    if y_sr.shape != y_hr.shape:
        raise ValueError(f"image sizes differ: {y_sr.shape} vs {y_hr.shape}")
    if crop_border > 0:
        y_sr = y_sr[crop_border:-crop_border, crop_border:-crop_border]
        y_hr = y_hr[crop_border:-crop_border, crop_border:-crop_border]
    return y_sr, y_hr


def calc_psnr(sr, hr, crop_border):
    """PSNR in dB between two uint8 RGB images (PIL or arrays) on the Y channel, border cropped."""
    y_sr, y_hr = _y_pair(sr, hr, crop_border)
    mse = np.mean((y_sr - y_hr) ** 2)
    return float("inf") if mse == 0 else float(10.0 * np.log10(255.0**2 / mse))


def _gaussian_window(size=11, sigma=1.5):
    """Normalised 2-D Gaussian window (float64 tensor of shape (1, 1, size, size))."""
    coords = torch.arange(size, dtype=torch.float64) - (size - 1) / 2.0
    g = torch.exp(-(coords**2) / (2.0 * sigma**2))
    g = g / g.sum()
    return torch.outer(g, g).view(1, 1, size, size)


def calc_ssim(sr, hr, crop_border):
    """SSIM between two uint8 RGB images (PIL or arrays) on the Y channel, border cropped."""
    y_sr, y_hr = _y_pair(sr, hr, crop_border)
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    window = _gaussian_window()
    x = torch.from_numpy(np.ascontiguousarray(y_sr))[None, None]
    y = torch.from_numpy(np.ascontiguousarray(y_hr))[None, None]
    mu_x, mu_y = F.conv2d(x, window), F.conv2d(y, window)  # 'valid' region only
    var_x = F.conv2d(x * x, window) - mu_x**2
    var_y = F.conv2d(y * y, window) - mu_y**2
    cov = F.conv2d(x * y, window) - mu_x * mu_y
    ssim_map = ((2 * mu_x * mu_y + c1) * (2 * cov + c2)) / ((mu_x**2 + mu_y**2 + c1) * (var_x + var_y + c2))
    return float(ssim_map.mean())


# ----------------------------------------------------------------------------------------------
# checkpoints


@contextlib.contextmanager
def atomic_write(path):
    """Open a temporary file next to ``path`` for binary writing; on success it replaces ``path``.

    On any exception the temporary file is removed and an existing file at ``path`` is untouched,
    so readers never see a half-written file. The folder is created if needed.
    """
    path = os.fspath(path)
    folder = os.path.dirname(os.path.abspath(path))
    os.makedirs(folder, exist_ok=True)
    fd, tmp = tempfile.mkstemp(dir=folder, prefix="." + os.path.basename(path) + ".", suffix=".tmp")
    try:
        with os.fdopen(fd, "wb") as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
        os.replace(tmp, path)
    except BaseException:
        with contextlib.suppress(OSError):
            os.unlink(tmp)
        raise


def save_checkpoint(obj, path):
    """Write ``obj`` with torch.save atomically (see atomic_write): a crash or an exception while
    saving leaves any previous file at ``path`` untouched."""
    with atomic_write(path) as f:
        torch.save(obj, f)


def load_torch_file(path, map_location="cpu"):
    """torch.load with weights_only=True and a clear UserError for missing or unreadable files."""
    path = os.fspath(path)
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    try:
        return torch.load(path, map_location=map_location, weights_only=True)
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(e)
        if "GLOBAL" in reason:
            raise UserError(f"{path}: refused to load: it holds pickled objects, not plain tensors ({reason}); "
                            f"if it is a checkpoint of the classic tutorial, import it with: "
                            f"python utils.py convert {path} NEW.pth") from None
        raise UserError(f"{path}: not a readable PyTorch file (corrupt or truncated?): {reason}") from None
    except Exception as e:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        raise UserError(f"{path}: not a readable PyTorch file (corrupt or truncated?): "
                        f"{str(e).splitlines()[0] if str(e) else type(e).__name__}") from None


def _unpickling_reason(error):
    """The informative part of torch's long weights-only error message (e.g. 'GLOBAL models.SRResNet')."""
    text = str(error)
    for line in text.splitlines():
        if "GLOBAL" in line:
            start = line.index("GLOBAL")
            return line[start:].split(" was not")[0].split(" whose")[0].strip()
    lines = [line.strip() for line in text.splitlines() if line.strip()]
    useful = [line for line in lines if not line.startswith(("Weights only", "Please file", "Check the doc", "(1)", "(2)"))]
    return (useful or lines or [type(error).__name__])[0].replace("WeightsUnpickler error: ", "")


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint of this project (see the module docstring) onto ``map_location``."""
    ckpt = load_torch_file(path, map_location)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project (no 'format_version' key); "
                        "a classic tutorial checkpoint can be imported with: python utils.py convert OLD NEW")
    if ckpt["format_version"] > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {ckpt['format_version']} is newer than this code "
                        f"({FORMAT_VERSION}); update the code")
    return ckpt


def model_spec(model):
    """The checkpoint entry of a model: {'arch', 'args', 'state_dict'} (tensors moved to the CPU).

    Unwraps DistributedDataParallel and torch.compile wrappers.
    """
    model = unwrap_model(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"arch": type(model).__name__, "args": dict(model.args), "state_dict": state}


def unwrap_model(model):
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def inference_checkpoint(model, info=None):
    """A small inference-only checkpoint dict (weights, constructor arguments, info)."""
    return {"format_version": FORMAT_VERSION, "model": model_spec(model), "info": dict(info or {})}


def _legacy_allowed_globals():
    """{(module, name): object} of what a classic tutorial checkpoint may reference; nothing else loads."""
    import models  # imported here: models imports utils

    nn = torch.nn
    allowed = [models.SRResNet, models.Generator, models.Discriminator, models.ConvolutionalBlock,
               models.ResidualBlock, models.SubPixelConvolutionalBlock, models.TruncatedVGG19,
               nn.Conv2d, nn.BatchNorm2d, nn.PReLU, nn.LeakyReLU, nn.Tanh, nn.ReLU, nn.MaxPool2d,
               nn.Sequential, nn.PixelShuffle, nn.Linear, nn.AdaptiveAvgPool2d, nn.Parameter, torch.optim.Adam,
               collections.OrderedDict, collections.defaultdict, dict, set, list, tuple,
               torch._utils._rebuild_tensor_v2, torch._utils._rebuild_parameter, torch.Size, torch.device,
               torch.storage.UntypedStorage]
    table = {(obj.__module__, obj.__qualname__): obj for obj in allowed}
    # typed storages as pickled by torch.save (torch.FloatStorage...), and dtypes (torch.float32...)
    for name in dir(torch):
        obj = getattr(torch, name)
        if name.endswith("Storage") or isinstance(obj, torch.dtype):
            table[("torch", name)] = obj
    table[("torch._utils", "_rebuild_parameter_with_state")] = torch._utils._rebuild_parameter_with_state
    return table


class _LegacyUnpickler(pickle.Unpickler):
    """An unpickler that only resolves the allow-listed globals (Python's 'restricting globals' recipe)."""

    allowed = {}

    def find_class(self, module, name):
        if module == "__builtin__":  # protocol-2 pickles use Python 2's name for builtins
            module = "builtins"
        obj = self.allowed.get((module, name))
        if obj is None:
            raise pickle.UnpicklingError(f"refused GLOBAL {module}.{name}: not one of the tutorial's classes")
        return obj


def _legacy_pickle_module():
    """A pickle-module stand-in for torch.load that uses _LegacyUnpickler."""
    _LegacyUnpickler.allowed = _legacy_allowed_globals()

    class Module:
        Unpickler = _LegacyUnpickler
        __name__ = "restricted_pickle"

        @staticmethod
        def load(f, **kwargs):
            return _LegacyUnpickler(f, **kwargs).load()
    return Module


def _infer_srresnet_args(sd):
    """SRResNet constructor arguments from the shapes in its state dict."""
    first = sd["conv_block1.conv_block.0.weight"]
    blocks = {k.split(".")[1] for k in sd if k.startswith("residual_blocks.")}
    subpixel = {k.split(".")[1] for k in sd if k.startswith("subpixel_convolutional_blocks.")}
    return dict(large_kernel_size=first.shape[-1], small_kernel_size=sd["conv_block2.conv_block.0.weight"].shape[-1],
                n_channels=first.shape[0], n_blocks=len(blocks), scaling_factor=2 ** len(subpixel))


def _infer_discriminator_args(sd):
    """Discriminator constructor arguments from the shapes in its state dict."""
    first = sd["conv_blocks.0.conv_block.0.weight"]
    blocks = {k.split(".")[1] for k in sd if k.startswith("conv_blocks.")}
    return dict(kernel_size=first.shape[-1], n_channels=first.shape[0], n_blocks=len(blocks),
                fc_size=sd["fc1.weight"].shape[0])


def import_legacy_checkpoint(old_path, new_path):
    """Convert a classic tutorial checkpoint (whole pickled models) into this project's format.

    The pickle is read with torch's weights-only unpickler, allowing only the known model and layer
    classes: a file that references anything else (``os.system``...) is refused with a UserError
    before any of it runs. The model ('model' = SRResNet, or 'generator' (+ 'discriminator')) is
    rebuilt from its state dict and saved to ``new_path``. Returns the new checkpoint dict.
    """
    import models

    if not os.path.isfile(old_path):
        raise UserError(f"{old_path}: no such file")
    try:
        # weights_only=False because the tutorial pickled whole modules and optimizers (with
        # defaultdicts that torch's weights-only unpickler cannot rebuild); safety comes from the
        # restricted unpickler, which refuses every global outside the allow-list before it runs
        old = torch.load(old_path, map_location="cpu", weights_only=False, pickle_module=_legacy_pickle_module())
    except pickle.UnpicklingError as e:
        raise UserError(f"{old_path}: refused: the pickle references something outside the allow-list of "
                        f"the tutorial's classes ({_unpickling_reason(e)})") from None
    except (RuntimeError, EOFError, zipfile.BadZipFile, OSError, ValueError) as e:
        raise UserError(f"{old_path}: not a readable PyTorch file: {str(e).splitlines()[0]}") from None
    if not isinstance(old, dict):
        raise UserError(f"{old_path}: expected a dict with 'model' or 'generator', got {type(old).__name__}")

    gen = old.get("generator", old.get("model"))
    if not isinstance(gen, (models.SRResNet, models.Generator)):
        raise UserError(f"{old_path}: holds no SRResNet under 'model' nor Generator under 'generator'")
    sd = gen.state_dict()
    net_sd = {k[len("net."):]: v for k, v in sd.items()} if isinstance(gen, models.Generator) else sd
    new_model = models.build_model(type(gen).__name__, _infer_srresnet_args(net_sd))
    new_model.load_state_dict(sd)
    ckpt = inference_checkpoint(new_model, {"imported_from": os.path.basename(old_path),
                                            "epoch": int(old["epoch"]) if "epoch" in old else None})
    disc = old.get("discriminator")
    if isinstance(disc, models.Discriminator):
        new_disc = models.Discriminator(**_infer_discriminator_args(disc.state_dict()))
        new_disc.load_state_dict(disc.state_dict())
        ckpt["discriminator"] = model_spec(new_disc)
    save_checkpoint(ckpt, new_path)
    return ckpt


# ----------------------------------------------------------------------------------------------
# devices, precision, command lines


def resolve_device(name):
    """torch.device for 'auto' (CUDA if available, else CPU), 'cpu' or 'cuda[:k]'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    device = torch.device(name)
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError("--device cuda was asked for, but PyTorch sees no CUDA GPU here; use --device cpu")
    if device.type not in ("cpu", "cuda"):
        raise UserError(f"unsupported device {name!r}; use auto, cpu or cuda")
    return device


def cpu_supports_bf16():
    """True if this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast is fast."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision, device):
    """The concrete precision ('fp32', 'bf16' or 'fp16') for a --precision flag on a device.

    'auto' is bf16 on CPUs with native bf16 arithmetic, fp32 on other CPUs, bf16 on CUDA GPUs that
    support it and fp16 on older ones. Raises UserError for fp16 on a CPU or an unknown name.
    """
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    autocast(device, precision)  # raises the UserError for fp16 on a CPU or an unknown name
    return precision


def autocast(device, precision):
    """Autocast context for 'fp32' (none), 'bf16' (CPU or CUDA) or 'fp16' (CUDA only).

    fp16 on a CPU is refused with a UserError (CPU fp16 kernels are slow or missing).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
        return torch.autocast("cuda", dtype=torch.float16)
    raise UserError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")


def run_cli(main, argv=None):
    """Run a script's ``main(argv)``; print user errors as one line on stderr and exit with code 2.

    Set SR_DEBUG=1 to see the full traceback instead.
    """
    try:
        return main(argv)
    except (UserError, FileNotFoundError) as e:
        if os.environ.get("SR_DEBUG"):
            raise
        print(f"error: {e}", file=sys.stderr)
        sys.exit(2)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)


def _main(argv=None):
    parser = argparse.ArgumentParser(description="Checkpoint tools.")
    sub = parser.add_subparsers(dest="command", required=True)
    convert = sub.add_parser("convert", help="import a classic tutorial checkpoint (pickled models, *.pth.tar) "
                                             "into this project's format, refusing any unknown pickled code")
    convert.add_argument("old", help="the classic checkpoint (e.g. checkpoint_srresnet.pth.tar)")
    convert.add_argument("new", help="where to write the converted checkpoint (e.g. checkpoints/imported.pth)")
    export = sub.add_parser("export", help="write the small inference-only file of a checkpoint (generator "
                                           "weights, constructor arguments, info), adding info entries")
    export.add_argument("checkpoint", help="a training or inference checkpoint of this project")
    export.add_argument("out", help="where to write the inference-only checkpoint")
    export.add_argument("--info", nargs="*", default=[], metavar="KEY=VALUE",
                        help="entries to add to the file's 'info' record (numbers are stored as numbers)")
    args = parser.parse_args(argv)
    if args.command == "convert":
        ckpt = import_legacy_checkpoint(args.old, args.new)
        out = args.new
    else:
        ckpt = export_inference_checkpoint(args.checkpoint, args.out, dict(_parse_info(x) for x in args.info))
        out = args.out
    spec = ckpt["model"]
    print(f"wrote {out}: {spec['arch']} {spec['args']}" + (" + Discriminator" if "discriminator" in ckpt else ""))


def _parse_info(item):
    """'key=value' -> (key, value), with value an int or float where it reads as one."""
    if "=" not in item:
        raise UserError(f"--info entries are KEY=VALUE, got {item!r}")
    key, value = item.split("=", 1)
    for kind in (int, float):
        try:
            return key, kind(value)
        except ValueError:
            pass
    return key, value


def export_inference_checkpoint(path, out, info=None):
    """Write the inference-only part of a checkpoint (model spec + info, updated with ``info``)."""
    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise UserError(f"{path}: holds no generator to export")
    new = {"format_version": FORMAT_VERSION, "model": ckpt["model"], "info": {**ckpt.get("info", {}), **(info or {})}}
    save_checkpoint(new, out)
    return new


if __name__ == "__main__":
    run_cli(_main)
