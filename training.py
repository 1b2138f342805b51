"""Helpers that train_srresnet.py and train_srgan.py call from their loops (the loops are in the scripts).

Flags and the resume rules, processes and devices, a data order that is a pure function of (seed,
iteration) so that a resumed run continues exactly, optimisers and schedules, checkpoints, validation,
the CSV log and Ctrl-C. Plain functions and small records; no training logic hides here.
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
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler

import checkpoint
import datasets
import evaluation
import images
import inference
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


def at_least(minimum, kind=int):
    """argparse type: a finite number >= minimum."""
    def parse(text):
        try:
            value = kind(text)
        except ValueError:
            raise argparse.ArgumentTypeError(f"not a number: {text!r}") from None
        if not (value >= minimum and math.isfinite(value)):
            raise argparse.ArgumentTypeError(f"must be a number >= {minimum}, got {text}")
        return value
    return parse


def at_most(maximum):
    """argparse type: a whole number from 1 to ``maximum``."""
    def parse(text):
        value = at_least(1)(text)
        if value > maximum:
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
    g.add_argument("--n-channels", type=at_most(models.MAX_CHANNELS), default=None, help="feature channels (paper: 64)")
    g.add_argument("--n-blocks", type=at_most(models.MAX_BLOCKS), default=None, help="residual blocks (paper: 16)")
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


def explicit_flags(parser, argv):
    """The destinations of the flags given on the command line (not left at their defaults)."""
    defaults = {action.dest: action.default for action in parser._actions}
    try:
        for action in parser._actions:
            action.default = argparse.SUPPRESS
        return set(vars(parser.parse_args(argv)))
    finally:
        for action in parser._actions:
            action.default = defaults[action.dest]


def parse_args(parser, argv, script):
    """Parse the flags of a training script; with --resume, merge in the run's recorded settings.

    Returns (args, resume checkpoint or None). With --resume, a flag not given takes the run's value;
    a flag given is applied and announced if it is in ADJUSTABLE_ON_RESUME, else refused (UserError).
    """
    args = parser.parse_args(argv)
    args.resume_notes = []
    if args.resume and args.init:
        raise UserError("--resume continues a run and --init starts a new one: give one of them")
    resume = None
    if args.resume:
        resume = load_training_checkpoint(args.resume, script)
        given = explicit_flags(parser, argv)
        notes = args.resume_notes
        stored_args = {**ADDED_LATER, **resume["training"]["args"]}
        for key, stored in stored_args.items():
            if key in NOT_RECORDED or not hasattr(args, key):
                continue
            value = getattr(args, key)
            if key not in given:
                setattr(args, key, stored)
                continue
            if stored is None and key in SIZE_FLAGS:  # "the checkpoint's size": compare with it
                entry, name = SIZE_FLAGS[key]
                stored = resume[entry]["args"].get(name) if isinstance(resume[entry].get("args"), dict) else None
            if value != stored and key in ADJUSTABLE_ON_RESUME:
                notes.append((key, stored, value))
            elif value != stored:
                raise UserError(f"--{key.replace('_', '-')} {_shown(value)}: the run in {args.resume} has "
                                f"{_shown(stored)}; changing it would make another run (start one with --init "
                                f"{args.resume}, or drop the flag)")
        # a run continues where its checkpoint is: a moved (or copied) run folder is not re-created
        here = os.path.dirname(args.resume) or "."
        if "checkpoint_dir" not in given and os.path.realpath(here) != os.path.realpath(args.checkpoint_dir):
            notes.append(("moved", args.checkpoint_dir, here))
            args.checkpoint_dir = here
        iteration = resume["training"]["iteration"]
        if args.iterations <= iteration:
            raise UserError(f"--iterations {args.iterations}: the run in {args.resume} is already at "
                            f"iteration {iteration}; give a larger --iterations to train further")
    if args.scaling_factor is not None:
        datasets.check_crop_size(args.crop_size, args.scaling_factor, "--scaling-factor")
    return args, resume


def _shown(value):
    """A setting as a message shows it: an empty one as '' (none)."""
    return "'' (none)" if value in ("", None) else value


def announce_resume(args, iteration):
    """One line per flag that changes the resumed run."""
    for key, old, new in args.resume_notes:
        flag = f"--{key.replace('_', '-')}"
        if key == "iterations":
            what = (f"the run now ends at iteration {new} instead of {old}; the {args.lr_schedule} schedule "
                    f"is recomputed for {new} iterations from iteration {iteration} on")
        elif key == "lr":
            what = f"the base learning rate changes from {old:g} to {new:g} from iteration {iteration} on"
        elif key == "moved":
            print(f"resume: the run's files go to {new}, the folder of the checkpoint given (the run was started "
                  f"in {old})", file=sys.stderr)
            continue
        elif key == "ema":
            kept = f"the weights' moving average (decay {new})" if new else "the trained weights"
            what = (f"validation and the kept models use {kept} from iteration {iteration} on"
                    + ("; the average starts from the current weights" if new and not old else ""))
        else:
            what = f"{old} -> {new}"
        print(f"resume: {flag} {new}: {what}", file=sys.stderr)


def model_args(args, init_model=None):
    """SRResNet constructor arguments: the --init model's (size flags must agree), else the flags
    with the paper's defaults."""
    flags = ("large_kernel_size", "small_kernel_size", "n_channels", "n_blocks", "scaling_factor")
    paper = dict(large_kernel_size=9, small_kernel_size=3, n_channels=64, n_blocks=16, scaling_factor=4)
    if init_model is None:
        return {k: paper[k] if getattr(args, k) is None else getattr(args, k) for k in flags}
    stored = init_model.args
    for k in flags:
        if getattr(args, k) is not None and getattr(args, k) != stored[k]:
            raise UserError(f"--{k.replace('_', '-')} {getattr(args, k)}: the --init model {args.init} has "
                            f"{k}={stored[k]}; drop the flag to use its size")
    return dict(stored)


def record_sizes(args, model_args):
    """Write the model's real size into the flags, so that the checkpoint records what was built."""
    for key, value in model_args.items():
        setattr(args, key, value)


def load_init_model(args):
    """The generator weights named by --init (any checkpoint load_model reads), or None."""
    if not args.init:
        return None
    model = checkpoint.load_model(args.init)
    datasets.check_crop_size(args.crop_size, model.scaling_factor, f"the scale of {args.init},")
    return model


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


class ResumableSampler(Sampler):
    """An endless sampler whose order depends only on (seed, position), so a run resumes exactly.

    Each epoch is a fresh permutation (seeded by seed and epoch) split between the processes of a
    torchrun job; incomplete batches are dropped. Yields ``epoch * n + index`` so that SRDataset
    draws that epoch's crop. Starts at batch ``start_batch``.
    """

    def __init__(self, n, batch_size, seed, rank=0, world_size=1, start_batch=0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = (n // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise UserError(f"the training list has {n} usable images, fewer than one batch of "
                            f"{batch_size} per process ({world_size} processes); lower --batch-size")
        self.start_batch = start_batch

    def __iter__(self):
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            order = torch.randperm(self.n, generator=g)[self.rank::self.world_size]
            order = order[: self.batches_per_epoch * self.batch_size]
            for index in order[offset * self.batch_size:].tolist():
                yield epoch * self.n + index
            epoch, offset = epoch + 1, 0


def _worker_init(_):
    torch.set_num_threads(1)  # one thread per loader process: more only fight for the cores


def train_batches(args, ctx, start_iteration, scale):
    """Endless iterator of (LR ImageNet-normalised, HR in [-1, 1]) batches from iteration ``start_iteration`` on."""
    dataset = datasets.SRDataset(args.data_folder, "train", args.crop_size, scale, "imagenet-norm", "[-1, 1]",
                                 augment=args.augment, seed=args.seed)
    # a decoded store (create_data_lists.py --store) is shared by the workers; a cache is per worker
    if dataset.store is None and (args.cache_images == "on" or (args.cache_images == "auto" and len(dataset) <= 2000)):
        dataset.cache = {}
    sampler = ResumableSampler(len(dataset), args.batch_size, args.seed, ctx.rank, ctx.world_size, start_iteration)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=ctx.device.type == "cuda", drop_last=True, worker_init_fn=_worker_init,
                        prefetch_factor=4 if args.workers > 0 else None)
    # the DataLoader draws its workers' seeds from torch's RNG: fork it, so that the RNG state that
    # --resume restores is the one the uninterrupted run has at that iteration
    with torch.random.fork_rng(devices=[]):
        return iter(loader)


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


def run_files(args, script):
    """(latest training checkpoint, best model, CSV log) of a run."""
    d = args.checkpoint_dir
    return (os.path.join(d, f"{script}_latest.pth"), os.path.join(d, f"{script}_best.pth"),
            os.path.join(d, f"{script}_log.csv"))


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


def claim_run_folder(args, script):
    """Lock the run's folder (RunLock), then check that a new run does not overwrite another run's
    checkpoint; leftovers of killed saves are removed. Returns the RunLock (release it at the end)."""
    latest, best, log = run_files(args, script)
    utils.check_writable(latest)
    lock = RunLock(args.checkpoint_dir, script)
    try:
        if os.path.exists(latest) and not (args.resume and os.path.samefile(latest, args.resume)):
            raise UserError(f"{latest}: another run is already there; continue it with --resume {latest}, "
                            "or give another --checkpoint-dir")
    except UserError:
        lock.release()
        raise
    for path in (latest, best):
        utils.remove_stale_temporaries(path)
    return lock


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


def restore(ckpt, path, models_, optimizers, schedulers, scaler):
    """Load weights, optimizer, scheduler, scaler and RNG states from a training checkpoint.

    ``models_`` etc. are {name: object} with the names used when saving. Returns (iteration, best_psnr).
    """
    training = ckpt["training"]
    for name, model in models_.items():
        built = checkpoint.build_from_spec(ckpt[name], path, name, archs=(type(model).__name__,))
        model.load_state_dict(built.state_dict())
    try:
        for name, opt in optimizers.items():
            opt.load_state_dict(training["optimizers"][name])
        for name, sched in schedulers.items():
            sched.load_state_dict(training["schedulers"][name])
        scaler.load_state_dict(training["scaler"])
        set_rng_state(training["rng"])
    except (KeyError, TypeError, ValueError, RuntimeError, IndexError) as e:
        raise UserError(f"{path}: malformed training checkpoint: cannot restore its state "
                        f"({type(e).__name__}: {str(e).splitlines()[0] if str(e) else ''})") from None
    best = training.get("best_psnr", float("-inf"))
    return training["iteration"], float(best) if isinstance(best, (int, float)) else float("-inf")


def ema_copy(model, decay, resume=None):
    """--ema: a frozen copy of ``model`` that update_ema moves towards the trained weights after each
    step (None when ``decay`` is 0). A resumed run's 'ema' entry is loaded; a run that turns --ema on
    at a resume starts the average from its current weights."""
    if not decay:
        return None
    ema = copy.deepcopy(checkpoint.unwrap_model(model)).requires_grad_(False)
    if resume is not None and "ema" in resume:  # checked by load_training_checkpoint
        ema.load_state_dict(resume["ema"]["state_dict"])
    return ema


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


def keep_snapshot(args, script, iteration, model, info):
    """With --keep-every N, the inference file of every Nth iteration (GAN generators are chosen
    after the run: the last one is not always the best)."""
    if due(iteration, args.keep_every):
        path = os.path.join(args.checkpoint_dir, f"{script}_{iteration}.pth")
        save_best(path, model, {**info, "iteration": iteration})


@torch.no_grad()
def is_good(model, lr_imgs, ctx, ema=None):
    """True if every weight and buffer is finite and the model (eval mode) gives a finite output on
    one training input, and the same of its moving average ``ema`` if there is one: what a
    checkpoint must satisfy before it replaces a good one."""
    if ema is not None and not is_good(ema, lr_imgs, ctx):
        return False
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
                rows = [r for r in reader if _row_iteration(r) <= resume_iteration]
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


def _row_iteration(row):
    try:
        return int(row.get("iteration") or 0)
    except ValueError:
        return 0


def tensorboard_writer(args):
    """A SummaryWriter under <checkpoint-dir>/tensorboard, or None."""
    if not args.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(args.checkpoint_dir, "tensorboard"))


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


def check_due(iteration, args, ctx, stop):
    """Whether this iteration checks, saves, validates or logs. The same on every rank (a Ctrl-C is
    acted on at once by a single process, at the next log step by a torchrun job)."""
    return (iteration == args.iterations or due(iteration, args.log_every) or due(iteration, args.save_every)
            or due(iteration, args.val_every) or due(iteration, args.keep_every)
            or (ctx.world_size == 1 and stop.requested))


def stop_if_bad(ctx, good, stop, iteration, last_good):
    """Agree over all ranks; raise TrainingStopped if any saw a non-finite loss or model.
    Returns True if a rank was asked to stop (Ctrl-C / SIGTERM)."""
    bad, stopping = any_rank(ctx, not good, stop.requested)
    if bad:
        raise TrainingStopped(f"the loss or the weights became NaN or infinite by iteration {iteration}; stopped. "
                              f"The last good checkpoint is {last_good or 'not written yet'}; try a lower --lr, "
                              "--grad-clip or --precision fp32")
    return stopping


def best_psnr_so_far(best_path, stored):
    """The best validation PSNR of a resumed run: its checkpoint's, or its best file's if higher (that
    file can be newer: a run stopped between its validation and its checkpoint)."""
    try:
        info = checkpoint.load_checkpoint(best_path).get("info", {})
        return max(stored, float(info.get("val_psnr", float("-inf"))))
    except (UserError, TypeError, ValueError, AttributeError):
        return stored


def validate_and_keep_best(model, val_set, ctx, scale, iteration, best_psnr, best_path, info, bar, precision,
                           niqe_params=None):
    """Validate (in ``precision``; see validate); save the model as the best if it is; report. A
    failure is a warning, not the end of the run. Returns (validate's dict or None, best_psnr)."""
    try:
        val = validate(model, val_set, ctx, scale, precision, niqe_params)
    except Exception as e:  # noqa: BLE001 - a failed validation must not end a long run
        bar.write(f"warning: validation at iteration {iteration} failed ({type(e).__name__}: {e}); training goes on")
        return None, best_psnr
    if val["psnr"] > best_psnr:
        best_psnr = val["psnr"]
        save_best(best_path, model, {**info, "iteration": iteration, "val_psnr": val["psnr"], "val_ssim": val["ssim"]})
    extra = ""
    if "niqe" in val:
        niqe, grid = (("-" if v is None else f"{v:.2f}") for v in (val["niqe"], val["grid_flat"]))
        extra = f", NIQE {niqe}, grid flat {grid}"
    bar.write(f"iteration {iteration}: validation PSNR {val['psnr']:.3f} dB, SSIM {val['ssim']:.4f}{extra} "
              f"(best PSNR {best_psnr:.3f})")
    return val, best_psnr


def log_row(log, writer, bar, row):
    """One row to the CSV log, TensorBoard and the progress bar."""
    log.write(row)
    bar.set_postfix({k: f"{v:.4g}" for k, v in list(row.items())[1:3] if isinstance(v, float)})
    if writer is not None:
        for key, value in row.items():
            if key != "iteration" and isinstance(value, float):
                writer.add_scalar(key, value, row["iteration"])
