"""What train_srresnet.py and train_srgan.py share (their loops and losses are in the scripts).

Flags and the resume rules, processes and devices, optimisers and schedules, the checkpoint format,
validation, and :class:`Run`: a run's bookkeeping around the step (files and lock, log, Ctrl-C,
moving average, snapshots, validation, saves), which the loop calls once per iteration.
"""

import argparse
import contextlib
import copy
import csv
import fcntl
import io
import math
import os
import random
import signal
import sys
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from tqdm import tqdm

import checkpoint
import datasets
import evaluation
import images
import inference
import metrics
import models
import utils
from utils import UserError

# What a flag given with --resume may change. Everything else a run records (data, crop, batch,
# model, losses, schedule, seed, precision...) would make it a different run, so it is refused.
# The one list both scripts use.
ADJUSTABLE_ON_RESUME = ("iterations", "lr", "ema", "val_every", "val_precision", "save_every", "keep_every",
                        "log_every", "workers", "device",
                        "channels_last", "cache_images", "tensorboard", "checkpoint_dir")
# settings added after runs were started, with the value that a run without them had
ADDED_LATER = {"ema": 0.0, "gan_loss": "standard", "artifact_weight": 0.0, "freeze_bn": False, "val_artifacts": False,
               "grid_weight": 0.0, "grid_region": "all"}
# flags that say how to start, not what the run is
NOT_RECORDED = ("resume", "init", "resume_notes")
# size flags that default to "the checkpoint's": on resume they are compared with the stored model
SIZE_FLAGS = {"large_kernel_size": ("model", "large_kernel_size"), "small_kernel_size": ("model", "small_kernel_size"),
              "n_channels": ("model", "n_channels"), "n_blocks": ("model", "n_blocks"),
              "scaling_factor": ("model", "scaling_factor"), "d_kernel_size": ("discriminator", "kernel_size"),
              "d_n_channels": ("discriminator", "n_channels"), "d_n_blocks": ("discriminator", "n_blocks"),
              "fc_size": ("discriminator", "fc_size")}


class TrainingStopped(UserError):
    """The run stopped early (a non-finite loss); the message names the last good checkpoint."""


# ----------------------------------------------------------------------------------------------
# flags


def at_least(minimum, kind=int, maximum=None):
    """argparse type: a finite number >= minimum (and <= maximum, if given)."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= minimum and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a number >= {minimum}, got {text}")
        if maximum is not None and value > maximum:
            raise argparse.ArgumentTypeError(f"must be at most {maximum}, got {text}")
        return value
    return parse


def kernel_size(text):
    """argparse type for a kernel size: an odd whole number from 1 to models.MAX_KERNEL."""
    value = at_least(1)(text)
    try:
        models.check_sizes(("kernel size",), **{"kernel size": value})
    except ValueError as e:
        raise argparse.ArgumentTypeError(str(e).replace("kernel size=", "")) from None
    return value


def positive_float(text):
    """argparse type: a finite number > 0."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be a positive number, got {text}")
    return value


def decay(text):
    """argparse type: a number in [0, 1)."""
    try:
        value = float(text)
    except ValueError:
        raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
    if not value < 1:  # inf and nan too
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    if value < 0:
        raise argparse.ArgumentTypeError(f"must be at least 0 and below 1, got {text}")
    return value


def add_common_arguments(parser, iterations, lr, lr_schedule):
    """Flags of both training scripts (defaults: the paper's settings)."""
    parser.epilog = ("--resume PATH alone continues that run with all its settings. Given with it, "
                     + ", ".join(f"--{k.replace('_', '-')}" for k in ADJUSTABLE_ON_RESUME)
                     + " apply; any other flag that changes a setting is refused (use --init PATH for a new run).")
    g = parser.add_argument_group("data")
    g.add_argument("--data-folder", default="data_lists",
                   help="folder of create_data_lists.py's JSON lists (default: data_lists)")
    g.add_argument("--crop-size", type=at_least(1), default=96, help="HR crop size (default: 96, the paper)")
    g.add_argument("--scaling-factor", type=int, default=None, choices=models.SCALES,
                   help="up-scaling factor (default: the --init file's, else 4)")
    g.add_argument("--workers", type=at_least(0), default=2, help="data-loading processes (default: 2)")
    g.add_argument("--augment", action="store_true", help="random flips and 90-degree rotations (not in the paper)")
    g.add_argument("--cache-images", choices=("auto", "on", "off"), default="auto",
                   help="keep decoded training images in memory; auto = on for up to 2000 images (default: auto)")
    g = parser.add_argument_group("model (default: the --init file's size, else the paper's)")
    g.add_argument("--large-kernel-size", type=kernel_size, default=None, help="first and last kernel, odd (paper: 9)")
    g.add_argument("--small-kernel-size", type=kernel_size, default=None, help="other kernels, odd (paper: 3)")
    g.add_argument("--n-channels", type=at_least(1, maximum=models.MAX_CHANNELS), default=None,
                   help="feature channels (paper: 64)")
    g.add_argument("--n-blocks", type=at_least(1, maximum=models.MAX_BLOCKS), default=None,
                   help="residual blocks (paper: 16)")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=at_least(1), default=16, help="batch size per process (default: 16)")
    g.add_argument("--lr", type=positive_float, default=lr, help=f"Adam learning rate (default: {lr:g})")
    g.add_argument("--lr-schedule", choices=("constant", "cosine", "step"), default=lr_schedule,
                   help=f"constant, cosine decay to 0, or step (x0.1 at half-way) (default: {lr_schedule})")
    g.add_argument("--iterations", type=at_least(1), default=iterations,
                   help=f"training iterations (default: {iterations})")
    g.add_argument("--grad-clip", type=positive_float, default=None,
                   help="clip gradient values to [-x, x] (default: off)")
    g.add_argument("--ema", type=decay, default=0.0, metavar="DECAY",
                   help="validate and keep an exponential moving average of the weights, updated each "
                        "iteration with this decay, e.g. 0.999 (default: 0 = off)")
    g.add_argument("--seed", type=at_least(0), default=0,
                   help="seed of the initialisation, data order and crops (default: 0)")
    g = parser.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu, cuda or cuda:N (default: auto)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="autocast precision; auto = bf16 where the hardware is fast at it, else fp32 (fp16: CUDA only)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on with bf16 / fp16, and on a CPU)")
    g = parser.add_argument_group("start, checkpoints and logs")
    g.add_argument("--resume", default=None, metavar="PATH", help="continue the run of this training checkpoint")
    g.add_argument("--checkpoint-dir", default="runs",
                   help="where checkpoints and the log go (default: runs; checkpoints/ holds the shipped models)")
    g.add_argument("--save-every", type=at_least(1), default=1000,
                   help="save the latest checkpoint every N iterations (default: 1000)")
    g.add_argument("--keep-every", type=at_least(0), default=0,
                   help="also keep the model of every Nth iteration as <checkpoint-dir>/<script>_<iteration>.pth "
                        "(an inference file; default: 0 = none)")
    g.add_argument("--val-every", type=at_least(0), default=0,
                   help="validate every N iterations and keep the best model (default: 0 = at the end only)")
    g.add_argument("--val-precision", choices=("fp32", "bf16", "fp16"), default="fp32",
                   help="precision of validation: fp32 gives eval.py's numbers; bf16/fp16 are faster on some "
                        "hardware (default: fp32)")
    g.add_argument("--val-data", default="Set5",
                   help="name of the test list used for validation; '' for none (default: Set5)")
    g.add_argument("--log-every", type=at_least(1), default=10, help="write a log row every N iterations (default: 10)")
    g.add_argument("--tensorboard", action="store_true", help="also log to TensorBoard (<checkpoint-dir>/tensorboard)")


def parse_args(parser, argv, script):
    """Parse the flags of a training script; with --resume, the run's recorded settings are the defaults.

    Returns (args, resume checkpoint or None). With --resume, the parser's defaults become the run's
    settings and the flags are parsed again: a setting that then differs was given, and it is applied
    and announced if it is in ADJUSTABLE_ON_RESUME, else refused (UserError).
    """
    args = parser.parse_args(argv)
    if args.resume and args.init:
        raise UserError("--resume continues a run and --init starts a new one: give one of them")
    resume, notes = None, []
    if args.resume:
        resume = load_training_checkpoint(args.resume, script)
        recorded = {key: value for key, value in {**ADDED_LATER, **resume["training"]["args"]}.items()
                    if key not in NOT_RECORDED and hasattr(args, key)}
        parser.set_defaults(**recorded)
        args = parser.parse_args(argv)
        for key, stored in recorded.items():
            value = getattr(args, key)
            if stored is None and key in SIZE_FLAGS and value is not None:  # "the checkpoint's size"
                entry, name = SIZE_FLAGS[key]
                stored = resume[entry]["args"].get(name) if isinstance(resume[entry].get("args"), dict) else None
            if value == stored:
                continue
            if key not in ADJUSTABLE_ON_RESUME:
                shown = ["'' (none)" if v in ("", None) else v for v in (value, stored)]
                raise UserError(f"--{key.replace('_', '-')} {shown[0]}: the run in {args.resume} has {shown[1]}; "
                                f"changing it would make another run (start one with --init {args.resume}, or "
                                "drop the flag)")
            notes.append((key, stored, value))
        # a run continues where its checkpoint is: a moved (or copied) run folder is not re-created
        here = os.path.dirname(args.resume) or "."
        given_dir = args.checkpoint_dir != recorded.get("checkpoint_dir")
        if not given_dir and os.path.realpath(here) != os.path.realpath(args.checkpoint_dir):
            notes.append(("moved", args.checkpoint_dir, here))
            args.checkpoint_dir = here
        iteration = resume["training"]["iteration"]
        if args.iterations <= iteration:
            raise UserError(f"--iterations {args.iterations}: the run in {args.resume} is already at "
                            f"iteration {iteration}; give a larger --iterations to train further")
    args.resume_notes = notes
    return args, resume


def model_args(args, init_model=None):
    """SRResNet constructor arguments of a new run: the --init model's (size flags must agree), else
    the flags with the paper's defaults. The crop size is checked against the scale here."""
    flags = ("large_kernel_size", "small_kernel_size", "n_channels", "n_blocks", "scaling_factor")
    paper = dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4)
    if init_model is None:
        sizes = {k: paper[k] if getattr(args, k) is None else getattr(args, k) for k in flags}
        of = "--scaling-factor" if args.scaling_factor is not None else "the scale"
    else:
        sizes, of = dict(init_model.args), f"the scale of {args.init},"
        for k in flags:
            if getattr(args, k) is not None and getattr(args, k) != sizes[k]:
                raise UserError(f"--{k.replace('_', '-')} {getattr(args, k)}: the --init model {args.init} has "
                                f"{k}={sizes[k]}; drop the flag to use its size")
    datasets.check_crop_size(args.crop_size, sizes["scaling_factor"], of)
    return sizes


def record_sizes(args, model_args):
    """Write the model's real size into the flags, so that the checkpoint records what was built."""
    for key, value in model_args.items():
        setattr(args, key, value)


def load_init_model(args):
    """The generator weights named by --init (any checkpoint load_model reads), or None."""
    if not args.init:
        return None
    return checkpoint.load_model(args.init)


# ----------------------------------------------------------------------------------------------
# processes and devices


@dataclass
class Context:
    """Where this process runs: device, precision, and its place in a torchrun job."""
    device: torch.device
    precision: str
    channels_last: bool
    rank: int = 0
    world_size: int = 1

    @property
    def is_main(self):
        return self.rank == 0

    def autocast(self):
        return utils.autocast(self.device, self.precision)

    def to_device(self, x):
        """A batch on the device (non-blocking from pinned memory; channels_last if asked)."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x

    def prepare(self, model):
        """A model on the device, in channels_last if asked."""
        model = model.to(self.device)
        return model.to(memory_format=torch.channels_last) if self.channels_last else model


@contextlib.contextmanager
def distributed(args):
    """Set up the device and, under torchrun, the process group; yields a Context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = utils.resolve_device(args.device)
    precision = utils.resolve_precision(args.precision, device)  # fp16 on a CPU fails here
    # fp32 on a CPU too: SRResNet steps 1.1-1.2x faster than NCHW on a 2-core AVX2 CPU (docs/training.md)
    default_layout = precision != "fp32" or device.type == "cpu"
    channels_last = default_layout if args.channels_last is None else args.channels_last
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    else:
        utils.keep_freed_memory()  # fp32 steps 1.15x faster on a CPU, bf16 ones 1.03x (README, Speed)
    try:
        yield Context(device, precision, channels_last, rank, world_size)
    finally:
        if world_size > 1 and dist.is_initialized():
            dist.destroy_process_group()


def any_rank(ctx, *flags):
    """Each flag OR-ed over all processes, so that every rank takes the same decision (a sync point)."""
    if ctx.world_size == 1:
        return flags
    t = torch.tensor([float(f) for f in flags], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return tuple(bool(x) for x in t.tolist())


def seed_everything(seed):
    random.seed(seed)
    np.random.seed(seed % 2**32)
    torch.manual_seed(seed)


def rng_state():
    """RNG states of torch (CPU and CUDA), numpy and random, as plain tensors and primitives."""
    np_state = np.random.get_state()
    return {"torch": torch.get_rng_state(),
            "cuda": torch.cuda.get_rng_state_all() if torch.cuda.is_available() else [],
            "numpy": {"keys": torch.from_numpy(np_state[1].astype(np.int64)), "pos": int(np_state[2]),
                      "has_gauss": int(np_state[3]), "gauss": float(np_state[4])},
            "random": [list(x) if isinstance(x, tuple) else x for x in random.getstate()]}


def set_rng_state(state):
    """Restore what rng_state() returned."""
    torch.set_rng_state(state["torch"])
    if state["cuda"] and torch.cuda.is_available():
        torch.cuda.set_rng_state_all(state["cuda"])
    n = state["numpy"]
    np.random.set_state(("MT19937", n["keys"].numpy().astype(np.uint32), n["pos"], n["has_gauss"], n["gauss"]))
    version, internal, gauss = state["random"]
    random.setstate((version, tuple(internal), gauss))


# ----------------------------------------------------------------------------------------------
# data


def load_validation_set(args, scale, niqe=False):
    """The validation images as [(path, HR, LR)] (evaluation.lr_pair), all decoded and checked now,
    so that a bad file stops the run before training rather than after it. [] without --val-data."""
    if not args.val_data:
        return []
    list_file = datasets.list_path(args.data_folder, "test", args.val_data)
    if not os.path.isfile(list_file):
        raise UserError(f"{list_file}: no such validation list (make it with create_data_lists.py --test-folders "
                        f"datasets/{args.val_data}, or train without validation: --val-data '')")
    pairs = []
    for path in datasets.read_image_list(list_file):
        img = images.open_image(path)
        try:
            evaluation.check_size(img, path, scale, scale, niqe, niqe)
        except UserError as e:
            raise UserError(f"{e}; remove it from {list_file}") from None
        hr, lr = evaluation.lr_pair(img, scale)
        pairs.append((path, hr, lr))
    return pairs


# ----------------------------------------------------------------------------------------------
# optimisation


def make_optimizer(params, lr):
    """Adam, fused where this PyTorch supports it on the device (fewer kernel launches), else foreach."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def make_scheduler(optimizer, schedule, iterations):
    """LambdaLR: 'constant', 'cosine' (to 0 at the end) or 'step' (x0.1 at half-way, the SRGAN schedule)."""
    def factor(it):
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(it, iterations) / iterations))
        if schedule == "step":
            return 0.1 if it >= iterations // 2 else 1.0
        return 1.0
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


def set_base_lr(optimizer, scheduler, lr):
    """Change the base learning rate of a resumed run: the schedule goes on from the new base."""
    scheduler.base_lrs = [lr] * len(optimizer.param_groups)
    for group in optimizer.param_groups:
        group["initial_lr"] = lr
        group["lr"] = lr * scheduler.lr_lambdas[0](scheduler.last_epoch)


# ----------------------------------------------------------------------------------------------
# checkpoints


class RunLock:
    """An exclusive lock on <checkpoint-dir>/<script>.lock, held for the life of a run.

    flock belongs to the open file: the OS drops it when the process ends, however it ends (kill -9
    included), so a lock is never stale. The file holds the owner's PID, for the message.
    """

    def __init__(self, folder, script):
        self.path = os.path.join(folder, f"{script}.lock")
        # the folders this run makes (outermost first), removed again if it leaves nothing in them
        self.created = []
        parent = os.path.abspath(folder)
        while not os.path.exists(parent):
            self.created.insert(0, parent)
            parent = os.path.dirname(parent)
        self.file = None
        try:
            self._claim(folder, script)
        except OSError as e:  # a full disk, a read-only folder: one line, and nothing left behind
            self.release()
            raise UserError(f"{self.path}: cannot write the run's lock file ({e.strerror or e})") from None

    def _claim(self, folder, script):
        os.makedirs(folder, exist_ok=True)
        while True:
            self.file = open(self.path, "a+")
            try:
                fcntl.flock(self.file, fcntl.LOCK_EX | fcntl.LOCK_NB)
            except OSError:
                self.file.seek(0)
                pid = self.file.read().strip()
                self.file.close()
                raise UserError(f"{folder}: a train_{script}.py run is in progress there"
                                f"{f' (PID {pid})' if pid.isdigit() else ''}; wait for it to end or stop it "
                                "(Ctrl-C saves), or give another --checkpoint-dir") from None
            # a releasing owner may have removed the file between our open and our lock: lock the file
            # that is there now
            try:
                if os.stat(self.path).st_ino == os.fstat(self.file.fileno()).st_ino:
                    break
            except FileNotFoundError:
                pass
            self.file.close()
        self.file.seek(0)
        self.file.truncate()
        self.file.write(f"{os.getpid()}\n")
        self.file.flush()
        os.fsync(self.file.fileno())  # a full disk fails here, not later

    def release(self):
        """Remove the lock file (and the folders this run made, if it left nothing else there)."""
        if self.file is None or self.file.closed:
            if self.file is None:  # never opened (a failed start): only the folders
                self._remove_created_folders()
            return
        with contextlib.suppress(OSError):
            os.unlink(self.path)  # while still holding the lock: see __init__
        self.file.close()
        self._remove_created_folders()

    def _remove_created_folders(self):
        for folder in reversed(self.created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)  # fails, as it should, unless empty


def load_training_checkpoint(path, script):
    """A training checkpoint of ``script`` ('srresnet' or 'srgan'), checked for every entry resume needs."""
    ckpt = checkpoint.load_checkpoint(path)
    training = ckpt.get("training")
    if training is None:
        raise UserError(f"{path}: an inference-only checkpoint, not a training checkpoint to --resume "
                        f"(to start a new run from its weights, use --init {path})")
    if not isinstance(training, dict) or training.get("script") not in ("srresnet", "srgan"):
        raise UserError(f"{path}: malformed training checkpoint ('training' entry)")
    if training["script"] != script:
        raise UserError(f"{path}: a checkpoint of train_{training['script']}.py; it cannot resume train_{script}.py")
    needed = {"iteration": int, "optimizers": dict, "schedulers": dict, "scaler": dict, "rng": dict, "args": dict}
    for key, kind in needed.items():
        if not isinstance(training.get(key), kind) or isinstance(training.get(key), bool):
            raise UserError(f"{path}: malformed training checkpoint: '{key}' is missing or not a {kind.__name__}")
    entries = {"model": "Generator", "discriminator": "Discriminator"} if script == "srgan" else {"model": "SRResNet"}
    if "ema" in ckpt:  # --ema: the moving average of the model's weights
        entries["ema"] = entries["model"]
    for name, arch in entries.items():
        if name not in ckpt:
            raise UserError(f"{path}: malformed training checkpoint: no '{name}' entry")
        checkpoint.build_from_spec(ckpt[name], path, name, archs=(arch,))  # every way it can be broken
    if "ema" in ckpt and ckpt["ema"]["args"] != ckpt["model"]["args"]:
        raise UserError(f"{path}: malformed training checkpoint: its 'ema' and 'model' differ in size")
    return ckpt


@torch.no_grad()
def update_ema(ema, model, decay):
    """ema <- decay * ema + (1 - decay) * model, for the weights and the BatchNorm statistics alike;
    integer buffers (batches seen) are copied."""
    for averaged, current in zip(ema.state_dict().values(), checkpoint.unwrap_model(model).state_dict().values()):
        if averaged.is_floating_point():
            averaged.lerp_(current, 1 - decay)
        else:
            averaged.copy_(current)


def save_training_checkpoint(path, script, iteration, best_psnr, args, models_, optimizers, schedulers, scaler):
    """Write everything needed to resume (atomically: a crash never destroys the previous file)."""
    ckpt = {"format_version": checkpoint.FORMAT_VERSION}
    for name, model in models_.items():
        ckpt[name] = checkpoint.model_spec(model)
    ckpt["training"] = {
        "script": script, "iteration": iteration, "best_psnr": best_psnr,
        "optimizers": {k: v.state_dict() for k, v in optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in schedulers.items()},
        "scaler": scaler.state_dict(), "rng": rng_state(),
        "args": {k: v for k, v in vars(args).items()
                 if k not in NOT_RECORDED and isinstance(v, (int, float, str, bool, type(None)))},
    }
    checkpoint.save_checkpoint(ckpt, path)


def save_best(path, model, info):
    """The small inference checkpoint of the best model so far."""
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(model, info), path)


# ----------------------------------------------------------------------------------------------
# validation and logs


def validate(model, val_set, ctx, scale, precision="fp32", niqe_params=None):
    """{'psnr', 'ssim'}: mean Y-PSNR and SSIM (border = scale) of the model on the validation set,
    computed as eval.py computes them (evaluation.py, on an inference copy of the model), so that the
    best checkpoint's recorded PSNR is the one eval.py then prints for it. With NIQE's model as
    ``niqe_params``, also 'niqe' and 'grid_flat' (eval.py --niqe --artifacts; grid_flat None when no
    image has enough flat pixels)."""
    fast = inference.prepare_model(checkpoint.unwrap_model(model), ctx.device, precision)  # a copy, eval mode
    scores = [evaluation.score(evaluation.super_resolve(fast, lr, scale, precision, ctx.device), hr, scale,
                               niqe_params, scale if niqe_params is not None else None)
              for _path, hr, lr in val_set]
    means = {m: float(np.mean([s[m] for s in scores])) for m in ("psnr", "ssim")}
    if niqe_params is not None:
        flat = [s["grid_flat"] for s in scores if s["grid_flat"] is not None]
        niqe = [s["niqe"] for s in scores if np.isfinite(s["niqe"])]  # NaN: an image NIQE cannot score
        means.update(niqe=float(np.mean(niqe)) if niqe else None, grid_flat=float(np.mean(flat)) if flat else None)
    return means


class CsvLog:
    """The run's CSV log: created at the first row (no empty logs); on resume, rows past the resumed
    iteration (written after its checkpoint) are dropped first."""

    def __init__(self, path, fields, resume_iteration=None):
        self.path, self.fields, self.file = path, fields, None
        if resume_iteration is not None and os.path.isfile(path):
            with open(path, newline="") as f:
                reader = csv.DictReader(f)
                if reader.fieldnames != fields:  # edited by hand, or another script's log
                    raise UserError(f"{path}: its columns are not this run's ({','.join(fields)}); move the file "
                                    "aside and resume again to start a new log")
                rows = [r for r in reader if self._iteration(r) <= resume_iteration]
            text = io.StringIO()
            writer = csv.DictWriter(text, fieldnames=fields, extrasaction="ignore", lineterminator="\n")
            writer.writeheader()
            writer.writerows(rows)
            with utils.atomic_write(path) as f:
                f.write(text.getvalue().encode())
            self.file = open(path, "a", newline="")
        elif os.path.exists(path):
            os.unlink(path)  # a new run in this folder (claim_run_folder allowed it)

    def write(self, row):
        if self.file is None:
            try:
                os.makedirs(os.path.dirname(os.path.abspath(self.path)), exist_ok=True)
                self.file = open(self.path, "w", newline="")
            except OSError as e:
                raise UserError(f"{self.path}: cannot write the log ({e.strerror or e})") from None
            csv.DictWriter(self.file, fieldnames=self.fields, lineterminator="\n").writeheader()
        csv.DictWriter(self.file, fieldnames=self.fields, extrasaction="ignore", lineterminator="\n").writerow(row)
        self.file.flush()

    def close(self):
        if self.file is not None:
            self.file.close()

    @staticmethod
    def _iteration(row):
        try:
            return int(row.get("iteration") or 0)
        except ValueError:
            return 0


class StopSignal:
    """SIGINT / SIGTERM set ``requested``; the loop then saves and exits between iterations.
    A second one stops at once (a save in progress is finished first: utils.deferred_signals)."""

    def __init__(self):
        self.requested, self.signum = False, None
        self.previous = {s: signal.signal(s, self) for s in (signal.SIGINT, signal.SIGTERM)}

    def __call__(self, signum, frame):
        if self.requested:
            raise self.exception()
        self.requested, self.signum = True, signum

    def exception(self):
        """What ends the run after the save: exit code 130 after Ctrl-C, 143 after SIGTERM (utils.run_cli)."""
        return utils.Terminated() if self.signum == signal.SIGTERM else KeyboardInterrupt()

    def restore(self):
        for s, handler in self.previous.items():
            signal.signal(s, handler)


def due(iteration, every):
    """True every ``every`` iterations (never for 0)."""
    return every > 0 and iteration % every == 0


# ----------------------------------------------------------------------------------------------
# the run


class Run:
    """Everything a training script does around its optimisation step, written once for both.

    ``with Run(...) as run:`` restores a resumed run (weights, optimizers, schedules, RNG), makes the
    moving average of the weights (--ema), loads the validation images, locks the run's folder, opens
    the CSV log (and TensorBoard), catches Ctrl-C / SIGTERM and shows the progress bar. The loop calls
    ``run.step(iteration, losses, lr_imgs)`` once after each optimisation step: it moves the average
    and, when due, checks that losses and weights are finite, keeps a snapshot, validates and keeps
    the best model, writes a log row and saves the checkpoint, in that order. It never computes a
    loss or steps an optimizer: the script calls it, never the reverse.

    Its files, in --checkpoint-dir: <script>_latest.pth (everything to --resume), <script>_best.pth
    (the best validation PSNR), <script>_log.csv and, with --keep-every, <script>_<iteration>.pth.
    The moving average, when there is one, is the model that is validated and kept.
    """

    def __init__(self, args, script, ctx, resume, models_, optimizers, schedulers, scaler, scale, loss_columns,
                 banner):
        """``models_`` etc.: {name: object}, saved under those names ('model' is the one trained and
        averaged); ``loss_columns``: the keys of the losses given to step(), as logged; ``banner``:
        the first words of the start-up line (the models and losses)."""
        self.args, self.script, self.ctx, self.scale, self.banner = args, script, ctx, scale, banner
        self.latest_path, self.best_path, self.log_path = (os.path.join(args.checkpoint_dir, f"{script}_{name}")
                                                           for name in ("latest.pth", "best.pth", "log.csv"))
        self.state = dict(models_=dict(models_), optimizers=optimizers, schedulers=schedulers, scaler=scaler)
        self.model, self.resumed = models_["model"], resume is not None
        self.start, self.best_psnr = 0, float("-inf")
        if resume:
            self.start, self.best_psnr = self._restore(resume)
            if args.lr != resume["training"]["args"].get("lr"):
                for optimizer, scheduler in zip(optimizers.values(), schedulers.values()):
                    set_base_lr(optimizer, scheduler, args.lr)
        # --ema: a frozen copy that update_ema moves towards the trained weights after each step; a run
        # that turns it on at a resume starts it from the current weights
        self.ema = None
        if args.ema:
            self.ema = copy.deepcopy(checkpoint.unwrap_model(self.model)).requires_grad_(False)
            if resume is not None and "ema" in resume:  # checked by load_training_checkpoint
                self.ema.load_state_dict(resume["ema"]["state_dict"])
            self.state["models_"]["ema"] = self.ema
        self.kept = self.ema if self.ema is not None else self.model  # validated and kept
        val_artifacts = getattr(args, "val_artifacts", False)
        # everything that can fail on a bad file fails now, before the first iteration
        self.val_set = load_validation_set(args, scale, val_artifacts) if ctx.is_main else []
        self.niqe_params = metrics.load_niqe_params() if val_artifacts and self.val_set else None
        self.fields = ["iteration", *loss_columns, "lr", "val_psnr", "val_ssim",
                       *(["val_niqe", "val_grid"] if val_artifacts else []), "seconds"]
        self.lock = self.log = self.writer = self.stop = self.bar = None

    def _restore(self, ckpt):
        """Load weights, optimizer, scheduler, scaler and RNG states; (iteration, best PSNR)."""
        path, training = self.args.resume, ckpt["training"]
        for name, model in self.state["models_"].items():
            built = checkpoint.build_from_spec(ckpt[name], path, name, archs=(type(model).__name__,))
            model.load_state_dict(built.state_dict())
        try:
            for name, opt in self.state["optimizers"].items():
                opt.load_state_dict(training["optimizers"][name])
            for name, sched in self.state["schedulers"].items():
                sched.load_state_dict(training["schedulers"][name])
            self.state["scaler"].load_state_dict(training["scaler"])
            set_rng_state(training["rng"])
        except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
            raise UserError(f"{path}: malformed training checkpoint: cannot restore its state "
                            f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
        best = training.get("best_psnr", float("-inf"))
        best = float(best) if isinstance(best, (int, float)) else float("-inf")
        return training["iteration"], self.best_psnr_so_far(self.best_path, best)

    @staticmethod
    def best_psnr_so_far(best_path, stored):
        """The best validation PSNR of a resumed run: its checkpoint's, or its best file's if higher
        (that file can be newer: a run stopped between its validation and its checkpoint)."""
        try:
            info = checkpoint.load_checkpoint(best_path).get("info", {})
            return max(stored, float(info.get("val_psnr", float("-inf"))))
        except (UserError, TypeError, ValueError, AttributeError):
            return stored

    def __enter__(self):
        args, ctx = self.args, self.ctx
        try:
            if ctx.is_main:
                self.lock = self._claim_folder()
                self.log = CsvLog(self.log_path, self.fields, resume_iteration=self.start if self.resumed else None)
                if args.tensorboard:
                    self.writer = self._tensorboard_writer()
                self._announce_resume()
                print(f"{self.banner} on {ctx.device} x{ctx.world_size}, {ctx.precision}"
                      f"{', channels_last' if ctx.channels_last else ''}; iterations {self.start} -> {args.iterations}"
                      + (f"; validation on {args.val_data} in {args.val_precision}" if self.val_set else "")
                      + (f"; EMA of the weights (decay {args.ema})" if self.ema is not None else ""))
            self.stop = StopSignal()
            self.bar = tqdm(total=args.iterations, initial=self.start, unit="it", desc=self.script,
                            disable=not ctx.is_main)
        except BaseException:
            self.__exit__(None, None, None)
            raise
        self.finite = torch.ones((), dtype=torch.bool, device=ctx.device)  # every loss finite so far
        # a resumed run's checkpoint is good: it was checked before it was written
        self.last_good = f"{args.resume} (iteration {self.start})" if self.resumed else None
        self.started = time.time()
        return self

    def __exit__(self, *exc):
        if self.stop is not None:
            self.stop.restore()
        for thing in (self.bar, self.log, self.writer):
            if thing is not None:
                thing.close()
        if self.lock is not None:
            self.lock.release()
        return False

    def _tensorboard_writer(self):
        try:
            from torch.utils.tensorboard import SummaryWriter
        except ImportError:
            raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
        return SummaryWriter(os.path.join(self.args.checkpoint_dir, "tensorboard"))

    def _claim_folder(self):
        """Lock the run's folder (RunLock: a second process, new run or --resume, is refused), then
        check that a new run does not overwrite another run's checkpoint; remove leftovers of killed saves."""
        args = self.args
        utils.check_writable(self.latest_path)
        lock = RunLock(args.checkpoint_dir, self.script)
        try:
            if os.path.exists(self.latest_path) and not (args.resume and os.path.samefile(self.latest_path,
                                                                                          args.resume)):
                raise UserError(f"{self.latest_path}: another run is already there; continue it with --resume "
                                f"{self.latest_path}, or give another --checkpoint-dir")
        except UserError:
            lock.release()
            raise
        for path in (self.latest_path, self.best_path):
            utils.remove_stale_temporaries(path)
        return lock

    def _announce_resume(self):
        """One line per flag that changes the resumed run."""
        args, iteration = self.args, self.start
        for key, old, new in args.resume_notes:
            if key == "iterations":
                what = (f"the run now ends at iteration {new} instead of {old}; the {args.lr_schedule} schedule "
                        f"is recomputed for {new} iterations from iteration {iteration} on")
            elif key == "lr":
                what = f"the base learning rate changes from {old:g} to {new:g} from iteration {iteration} on"
            elif key == "moved":
                print(f"resume: the run's files go to {new}, the folder of the checkpoint given (the run was "
                      f"started in {old})", file=sys.stderr)
                continue
            elif key == "ema":
                kept = f"the weights' moving average (decay {new})" if new else "the trained weights"
                what = (f"validation and the kept models use {kept} from iteration {iteration} on"
                        + ("; the average starts from the current weights" if new and not old else ""))
            else:
                what = f"{old} -> {new}"
            print(f"resume: --{key.replace('_', '-')} {new}: {what}", file=sys.stderr)

    def iterations(self):
        """The iterations left: start + 1 to --iterations."""
        return range(self.start + 1, self.args.iterations + 1)

    @staticmethod
    def checks_at(iteration, args, world_size, stop_requested):
        """Whether this iteration checks, saves, validates or logs. The same on every rank (a Ctrl-C is
        acted on at once by a single process, at the next log step by a torchrun job)."""
        return (iteration == args.iterations or stop_requested and world_size == 1
                or any(due(iteration, every) for every in (args.log_every, args.save_every, args.val_every,
                                                           args.keep_every)))

    def step(self, iteration, losses, lr_imgs):
        """After each optimisation step: ``losses`` is {column: 0-d tensor} (no device sync unless
        due); ``lr_imgs`` the step's input batch (the finiteness check runs the model on one)."""
        args, ctx = self.args, self.ctx
        if self.ema is not None:
            update_ema(self.ema, self.model, args.ema)
        for value in losses.values():
            self.finite &= torch.isfinite(value)  # stays on the device: no sync at every step
        self.bar.update(1)
        if not self.checks_at(iteration, args, ctx.world_size, self.stop.requested):
            return
        last = iteration == args.iterations
        save = due(iteration, args.save_every) or last or self.stop.requested
        # never let a broken model replace the last good checkpoint (bool() is a sync point); every
        # rank takes the same decision
        good = bool(self.finite) and (not ctx.is_main or all(self.is_good(m, lr_imgs, ctx) for m in
                                                             (self.model, self.ema) if m is not None))
        bad, stopping = any_rank(ctx, not good, self.stop.requested)
        if bad:
            raise TrainingStopped(f"the loss or the weights became NaN or infinite by iteration {iteration}; "
                                  f"stopped. The last good checkpoint is {self.last_good or 'not written yet'}; "
                                  "try a lower --lr, --grad-clip or --precision fp32")
        if ctx.is_main:
            info = {"script": f"train_{self.script}.py", "ema": args.ema}
            if due(iteration, args.keep_every):  # GAN generators are chosen after the run
                path = os.path.join(args.checkpoint_dir, f"{self.script}_{iteration}.pth")
                save_best(path, self.kept, {**info, "iteration": iteration})
            val = None
            if self.val_set and (due(iteration, args.val_every) or last):
                val = self.validate_and_keep_best(iteration, {"script": info["script"], "val_data": args.val_data,
                                                              "ema": args.ema, "precision": ctx.precision,
                                                              "val_precision": args.val_precision})
            if due(iteration, args.log_every) or val is not None or last:
                val = val or {}
                lr = next(iter(self.state["schedulers"].values())).get_last_lr()[0]
                self.log_row({"iteration": iteration, **{k: v.item() for k, v in losses.items()}, "lr": lr,
                              **{f"val_{k}": "" if val.get(key) is None else val[key]
                                 for k, key in (("psnr", "psnr"), ("ssim", "ssim"), ("niqe", "niqe"),
                                                ("grid", "grid_flat"))},
                              "seconds": round(time.time() - self.started, 1)})
            # the checkpoint last: a kill before it resumes from the previous one and redoes these
            # rows; a kill after it has lost nothing (a save before the row lost the row)
            if save or stopping:
                save_training_checkpoint(self.latest_path, self.script, iteration, self.best_psnr, args,
                                         **self.state)
                self.last_good = f"{self.latest_path} (iteration {iteration})"
        if stopping:
            self.bar.write(f"interrupted: saved {self.latest_path} at iteration {iteration}; "
                           f"continue with: python train_{self.script}.py --resume {self.latest_path}")
            raise self.stop.exception()  # exit code 130 (Ctrl-C) or 143 (SIGTERM)

    @staticmethod
    @torch.no_grad()
    def is_good(model, lr_imgs, ctx):
        """True if every weight and buffer is finite and the model (eval mode) gives a finite output on
        one training input: what a checkpoint must satisfy before it replaces a good one."""
        model = checkpoint.unwrap_model(model)
        if not all(torch.isfinite(v).all() for v in model.state_dict().values() if v.is_floating_point()):
            return False
        modes = {m: m.training for m in model.modules()}  # per module: --freeze-bn keeps BatchNorm in eval mode
        model.eval()
        with ctx.autocast():
            out = model(lr_imgs[:1])
        for m, training in modes.items():
            m.training = training
        return bool(torch.isfinite(out).all())

    def validate_and_keep_best(self, iteration, info):
        """Validate (in --val-precision; see validate); save the model as the best if it is; report. A
        failure is a warning, not the end of the run. Returns validate's dict or None."""
        try:
            val = validate(self.kept, self.val_set, self.ctx, self.scale, self.args.val_precision, self.niqe_params)
        except Exception as e:  # noqa: BLE001 - a failed validation must not end a long run
            self.bar.write(f"warning: validation at iteration {iteration} failed ({type(e).__name__}: {e}); "
                           "training goes on")
            return None
        if val["psnr"] > self.best_psnr:
            self.best_psnr = val["psnr"]
            save_best(self.best_path, self.kept, {**info, "iteration": iteration, "val_psnr": val["psnr"],
                                                  "val_ssim": val["ssim"]})
        extra = ""
        if "niqe" in val:
            niqe, grid = (("-" if v is None else f"{v:.2f}") for v in (val["niqe"], val["grid_flat"]))
            extra = f", NIQE {niqe}, grid flat {grid}"
        self.bar.write(f"iteration {iteration}: validation PSNR {val['psnr']:.3f} dB, SSIM {val['ssim']:.4f}{extra} "
                       f"(best PSNR {self.best_psnr:.3f})")
        return val

    def log_row(self, row):
        """One row to the CSV log, TensorBoard and the progress bar."""
        self.log.write(row)
        self.bar.set_postfix({k: f"{v:.4g}" for k, v in list(row.items())[1:3] if isinstance(v, float)})
        if self.writer is not None:
            for key, value in row.items():
                if key != "iteration" and isinstance(value, float):
                    self.writer.add_scalar(key, value, row["iteration"])

    def result(self, **extra):
        """What main() returns: {'iteration', 'best_psnr' (None without validation), **extra}."""
        return {"iteration": self.args.iterations,
                "best_psnr": self.best_psnr if math.isfinite(self.best_psnr) else None, **extra}
