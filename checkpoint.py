"""Checkpoint files: atomic saving, weights-only loading, and the one ``load_model``.

A checkpoint is a plain dict of tensors and primitives, so ``torch.load(weights_only=True)`` reads
it on any machine whatever device saved it (format_version 1)::

    {"format_version": 1,
     "model": {"arch": "SRResNet" | "Generator", "args": {...}, "state_dict": {...}},
     "discriminator": {...same keys...},             # SRGAN training checkpoints only
     "training": {...optimizer, scheduler, RNG...},  # training checkpoints only
     "info": {...how it was made...}}
"""

import os
import pickle
import sys
import warnings

import torch

import models
from utils import UserError, atomic_write

FORMAT_VERSION = 1
GENERATOR_ARCHS = ("SRResNet", "Generator")


def save_checkpoint(obj, path):
    """torch.save ``obj`` atomically: a crash while saving leaves any previous file at ``path`` intact."""
    with atomic_write(path) as f:
        try:
            torch.save(obj, f)
        except RuntimeError as e:  # torch.save reports a failed write (a full disk...) as a RuntimeError
            if isinstance(e.__context__, OSError):
                raise e.__context__ from None
            raise


def load_torch_file(path, map_location="cpu"):
    """torch.load with weights_only=True; a UserError naming the file for anything unreadable."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path}: is a folder, not a checkpoint file")
    if not os.path.isfile(path):
        raise UserError(f"{path}: no such file")
    if not os.access(path, os.R_OK):
        raise UserError(f"{path}: permission denied (cannot read the file)")
    if os.path.getsize(path) == 0:
        raise UserError(f"{path}: empty file (0 bytes)")
    try:
        with warnings.catch_warnings():  # its advice to "file an issue" about a pickle protocol is noise here
            warnings.filterwarnings("ignore", message="Detected pickle protocol")
            return torch.load(path, map_location=map_location, weights_only=True)
    except PermissionError:
        raise UserError(f"{path}: permission denied (cannot read the file)") from None
    except pickle.UnpicklingError as e:
        reason = _unpickling_reason(e)
        if "GLOBAL" in reason:
            raise UserError(f"{path}: refused to load: it holds pickled Python objects, not plain tensors "
                            f"({reason}); a checkpoint of the classic tutorial is imported with: "
                            f"python convert_checkpoint.py {path} NEW.pth") from None
        raise UserError(f"{path}: not a PyTorch checkpoint, or a damaged one ({reason})") from None
    except Exception:  # noqa: BLE001 - arbitrary bytes make the unpickler fail in arbitrary ways
        raise UserError(f"{path}: not a PyTorch checkpoint, or a truncated or damaged one") from None


def _unpickling_reason(error):
    """The informative part of torch's long weights-only error message (e.g. 'GLOBAL models.SRResNet')."""
    text = str(error)
    for line in text.splitlines():
        if "GLOBAL" in line:
            start = line.index("GLOBAL")
            return line[start:].split(" was not")[0].split(" whose")[0].strip()
    return "its contents could not be unpickled"


def load_checkpoint(path, map_location="cpu"):
    """Load a checkpoint of this project onto ``map_location``; UserError if it is not one."""
    ckpt = load_torch_file(path, map_location)
    if not isinstance(ckpt, dict) or "format_version" not in ckpt:
        raise UserError(f"{path}: not a checkpoint of this project (no 'format_version' entry); a classic "
                        f"tutorial checkpoint is imported with: python convert_checkpoint.py {path} NEW.pth")
    version = ckpt["format_version"]
    if isinstance(version, float) and version.is_integer():
        version = int(version)
    if isinstance(version, bool) or not isinstance(version, int):
        raise UserError(f"{path}: malformed checkpoint: format_version is {version!r}, not a version number "
                        f"(a whole number such as {FORMAT_VERSION})")
    if version > FORMAT_VERSION:
        raise UserError(f"{path}: checkpoint format {version} is newer than this code ({FORMAT_VERSION}); "
                        "update the code")
    return ckpt


def build_from_spec(spec, path, what="model", archs=GENERATOR_ARCHS):
    """The model of a checkpoint entry {'arch', 'args', 'state_dict'}, with its weights loaded.

    Every way the entry can be malformed (not a dict, unknown arch or argument, sizes out of
    models.check_sizes' bounds, weights that do not fit, weights that are NaN or infinite) is a
    UserError that names the file and the problem. The sizes are compared with the weights' on a
    'meta' model (no memory) before the real one is built, so arguments that ask for more than the
    file holds cannot make a reader build layers until memory runs out.
    """
    if not isinstance(spec, dict):
        raise UserError(f"{path}: malformed checkpoint: its '{what}' entry is a {type(spec).__name__}, not a dict")
    for key in ("arch", "args", "state_dict"):
        if key not in spec:
            raise UserError(f"{path}: malformed checkpoint: its '{what}' entry has no '{key}'")
    arch, args, state = spec["arch"], spec["args"], spec["state_dict"]
    if arch not in archs:
        raise UserError(f"{path}: its '{what}' is a {arch!r}, expected one of {', '.join(archs)}")
    if not isinstance(args, dict) or not isinstance(state, dict):
        raise UserError(f"{path}: malformed checkpoint: '{what}' args and state_dict must be dicts")
    try:
        with torch.device("meta"):
            skeleton = models.build_model(arch, args)
    except (TypeError, ValueError, RuntimeError) as e:  # an unknown or invalid constructor argument
        not_int = [f"{k}={v!r}" for k, v in args.items() if isinstance(v, bool) or not isinstance(v, int)]
        problem = f"{', '.join(not_int)} is not a whole number" if not_int else str(e)
        raise UserError(f"{path}: malformed checkpoint: cannot build {arch}{args}: {problem}") from None
    problem = _shape_problem(skeleton.state_dict(), state)
    if problem:
        raise UserError(f"{path}: the weights do not fit {arch}{args}: {problem}")
    model = models.build_model(arch, args)
    try:
        model.load_state_dict(state)
    except (RuntimeError, TypeError, AttributeError) as e:
        raise UserError(f"{path}: the weights do not fit {arch}{args}: {_state_dict_problem(e)}") from None
    broken = next((k for k, v in model.state_dict().items() if v.is_floating_point() and not torch.isfinite(v).all()),
                  None)
    if broken is not None:
        raise UserError(f"{path}: its '{what}' weights are not finite (NaN or inf in {broken}): the file is broken")
    return model


def _shape_problem(expected, state):
    """The first difference in keys or shapes between two state dicts, in words, or None."""
    missing = [k for k in expected if k not in state]
    unexpected = [k for k in state if k not in expected]
    if missing or unexpected:
        parts = ([f"missing {', '.join(missing[:3])}{' ...' if len(missing) > 3 else ''}"] if missing else []) + \
                ([f"unexpected {', '.join(map(str, unexpected[:3]))}{' ...' if len(unexpected) > 3 else ''}"]
                 if unexpected else [])
        return "; ".join(parts)
    for key, value in expected.items():
        shape = getattr(state[key], "shape", None)
        if shape is None:
            return f"{key} is a {type(state[key]).__name__}, not a tensor"
        if tuple(shape) != tuple(value.shape):
            return f"{key} has shape {tuple(shape)}, the arguments make {tuple(value.shape)}"
    return None


def _state_dict_problem(error):
    """The first concrete problem (a key, a shape) in load_state_dict's long message, in one line."""
    lines = [line.strip() for line in str(error).splitlines() if line.strip()]
    details = [line for line in lines if not line.startswith("Error(s) in loading")]
    text = " ".join(details or lines or [type(error).__name__])
    return text if len(text) <= 400 else text[:400].rsplit(",", 1)[0] + ", ..."


def load_model(path, device="cpu"):
    """The super-resolution model (SRResNet or Generator) of any checkpoint of this project.

    Reads inference files and training checkpoints of either script, saved on any device. Returns
    the model in eval mode on ``device``; a UserError naming the file if it holds no usable model.
    A training checkpoint of a run with --ema holds both the trained weights and their average: the
    trained weights are used, and a note on stderr says so (the average is often better).
    """
    ckpt = load_checkpoint(path)
    if "model" not in ckpt:
        raise UserError(f"{path}: holds no super-resolution model (it has {', '.join(map(str, ckpt))})")
    model = build_from_spec(ckpt["model"], path).to(device).eval()
    if "ema" in ckpt:
        print(f"note: {path} also holds a moving average of its weights (--ema); the trained weights are used "
              f"here (python convert_checkpoint.py {path} AVERAGE.pth --ema writes the average)", file=sys.stderr)
    return model


def unwrap_model(model):
    """The plain module inside DistributedDataParallel and/or torch.compile wrappers."""
    while True:
        if hasattr(model, "module") and isinstance(model.module, torch.nn.Module):
            model = model.module
        elif hasattr(model, "_orig_mod"):
            model = model._orig_mod
        else:
            return model


def model_spec(model):
    """The checkpoint entry of a model: {'arch', 'args', 'state_dict'}, tensors on the CPU."""
    model = unwrap_model(model)
    state = {k: v.detach().cpu() for k, v in model.state_dict().items()}
    return {"arch": type(model).__name__, "args": dict(model.args), "state_dict": state}


def inference_checkpoint(model, info=None):
    """A small inference-only checkpoint dict: weights, constructor arguments and an info record."""
    return {"format_version": FORMAT_VERSION, "model": model_spec(model), "info": dict(info or {})}
