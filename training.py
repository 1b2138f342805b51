"""The training loop shared by train_srresnet.py and train_srgan.py.

What it does for both scripts: flags common to both, device / precision / torchrun set-up, a data
order that is a pure function of (seed, iteration) so that a resumed run continues exactly where it
stopped, learning-rate schedules, validation (Y-PSNR / SSIM as in utils), atomic checkpoints of
everything needed to resume (models, optimizers, schedulers, grad scaler, RNG states), a CSV log,
optional TensorBoard, a tqdm progress bar, Ctrl-C handling and NaN detection.

Each script supplies its models, optimizers and a ``step(lr_imgs, hr_imgs) -> {name: loss}``.
"""

import argparse
import contextlib
import csv
import math
import os
import random
import signal
import time
from dataclasses import dataclass

import numpy as np
import torch
import torch.distributed as dist
from torch.utils.data import DataLoader, Sampler
from tqdm import tqdm

import checkpoint
import images
import metrics
import datasets
import utils

DEFAULT_VAL_DATA = "Set5"


class TrainingStopped(utils.UserError):
    """Raised when a run stops early (NaN loss); the message says what happened."""


def add_common_arguments(parser, iterations, lr, save_every, model_from=None):
    """Flags shared by both training scripts (defaults are the paper's settings).

    model_from: None, or a phrase naming the checkpoint the model size comes from (train_srgan.py);
    then the model-size flags default to None (= take the checkpoint's value) and say so in --help.
    """
    g = parser.add_argument_group("data")
    g.add_argument("--data-folder", default="data_lists",
                   help="folder with the JSON lists written by create_data_lists.py (default: data_lists)")
    g.add_argument("--crop-size", type=int, default=96, help="HR crop size (default: 96, as in the paper)")
    g.add_argument("--scaling-factor", type=int, default=4, choices=(2, 4, 8), help="up-scaling factor (default: 4)")
    g.add_argument("--workers", type=int, default=2, help="data-loading worker processes (default: 2)")
    g.add_argument("--augment", action="store_true", help="random flips and 90-degree rotations (not in the paper)")
    g.add_argument("--cache-images", choices=("auto", "on", "off"), default="auto",
                   help="keep decoded training images in memory; 'auto' = on for lists of up to 2000 images")
    g = parser.add_argument_group("model")
    for flag, default, what in (("--large-kernel-size", 9, "first and last convolution kernel"),
                                ("--small-kernel-size", 3, "other convolution kernels"),
                                ("--n-channels", 64, "feature channels"), ("--n-blocks", 16, "residual blocks")):
        g.add_argument(flag, type=int, default=None if model_from else default,
                       help=f"{what} (default: {'as in ' + model_from if model_from else default})")
    g = parser.add_argument_group("optimisation")
    g.add_argument("--batch-size", type=int, default=16, help="batch size per process (default: 16)")
    g.add_argument("--lr", type=float, default=lr, help=f"Adam learning rate (default: {lr:g})")
    g.add_argument("--iterations", type=int, default=iterations, help=f"training iterations (default: {iterations})")
    g.add_argument("--grad-clip", type=float, default=None, help="clip gradient values to [-x, x] (default: off)")
    g.add_argument("--seed", type=int, default=0, help="random seed (model init, data order, crops; default: 0)")
    g = parser.add_argument_group("hardware")
    g.add_argument("--device", default="auto", help="auto (CUDA if present), cpu or cuda (default: auto)")
    g.add_argument("--precision", choices=("auto", "fp32", "bf16", "fp16"), default="auto",
                   help="auto = bf16 on CPUs with native bf16 (AVX-512 BF16 / AMX) and on GPUs that support "
                        "it, fp16 on older GPUs, fp32 on other CPUs; bf16 / fp16 are autocast (fp16 with a "
                        "grad scaler, CUDA only) (default: auto)")
    g.add_argument("--channels-last", action=argparse.BooleanOptionalAction, default=None,
                   help="channels_last memory format (default: on with bf16 / fp16, where it is faster)")
    g = parser.add_argument_group("checkpoints and logs")
    g.add_argument("--checkpoint-dir", default="checkpoints", help="where checkpoints and logs go (default: checkpoints)")
    g.add_argument("--resume", default=None, metavar="PATH", help="continue a run from its latest checkpoint")
    g.add_argument("--save-every", type=int, default=save_every,
                   help=f"save the latest checkpoint every N iterations (default: {save_every})")
    g.add_argument("--val-every", type=int, default=0,
                   help="validate every N iterations and keep the best model by PSNR (default: 0 = only at the end)")
    g.add_argument("--val-data", default=DEFAULT_VAL_DATA,
                   help=f"name of the test list used for validation (default: {DEFAULT_VAL_DATA}); '' to skip")
    g.add_argument("--log-every", type=int, default=10, help="write a CSV log line every N iterations (default: 10)")
    g.add_argument("--tensorboard", action="store_true", help="also log scalars and sample images to TensorBoard")


def model_args_from_flags(args):
    """Generator / SRResNet constructor arguments from the common flags."""
    return dict(large_kernel_size=args.large_kernel_size, small_kernel_size=args.small_kernel_size,
                n_channels=args.n_channels, n_blocks=args.n_blocks, scaling_factor=args.scaling_factor)


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
        """Move a batch tensor to the device (non-blocking from pinned memory; channels_last if asked)."""
        x = x.to(self.device, non_blocking=True)
        return x.contiguous(memory_format=torch.channels_last) if self.channels_last else x


def setup(args):
    """Set up devices and, under torchrun, the process group. Returns a Context."""
    world_size = int(os.environ.get("WORLD_SIZE", "1"))
    rank = int(os.environ.get("RANK", "0"))
    device = utils.resolve_device(args.device)
    precision = utils.resolve_precision(args.precision, device)  # fp16 on a CPU fails here, before any work
    channels_last = precision != "fp32" if args.channels_last is None else args.channels_last
    if world_size > 1:
        if device.type == "cuda":
            device = torch.device("cuda", int(os.environ.get("LOCAL_RANK", "0")))
            torch.cuda.set_device(device)
        dist.init_process_group("nccl" if device.type == "cuda" else "gloo")
    if device.type == "cuda":
        torch.backends.cudnn.benchmark = True
    return Context(device, precision, channels_last, rank, world_size)


def cleanup(ctx):
    """Tear down the process group, if any."""
    if ctx.world_size > 1 and dist.is_initialized():
        dist.destroy_process_group()


def seed_everything(seed):
    """Seed torch, numpy and random."""
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
    """An endless sampler whose order depends only on (seed, position), so a run can resume exactly.

    Each epoch is a fresh permutation (seeded by seed and epoch) split between the processes of a
    torchrun job; incomplete batches are dropped. Yields ``epoch * n + index`` so that SRDataset
    draws the crop of that epoch (see SRDataset.__getitem__). Starts at ``start_batch``.
    """

    def __init__(self, n, batch_size, seed, rank=0, world_size=1, start_batch=0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = (n // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise utils.UserError(f"the training list has {n} usable images, fewer than one batch of "
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
    # each worker decodes and crops on one thread: several threads per worker only fight for cores
    torch.set_num_threads(1)


def make_train_loader(args, ctx, start_iteration, lr_img_type="imagenet-norm", hr_img_type="[-1, 1]"):
    """An endless DataLoader of (LR, HR) training batches starting at iteration ``start_iteration``."""
    cache = args.cache_images == "on"
    dataset = datasets.SRDataset(args.data_folder, "train", args.crop_size, args.scaling_factor,
                                 lr_img_type, hr_img_type, augment=args.augment, seed=args.seed)
    if args.cache_images == "auto":
        cache = len(dataset) <= 2000
    if cache:
        dataset.cache = {}
    sampler = ResumableSampler(len(dataset), args.batch_size, args.seed, ctx.rank, ctx.world_size, start_iteration)
    return DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                      pin_memory=ctx.device.type == "cuda", drop_last=True, worker_init_fn=_worker_init,
                      persistent_workers=False, prefetch_factor=4 if args.workers > 0 else None)


# ----------------------------------------------------------------------------------------------
# schedules, validation


def make_scheduler(optimizer, schedule, iterations):
    """LambdaLR for 'constant', 'cosine' (to 0 at the end) or 'step' (x0.1 at half-way, the SRGAN schedule)."""
    def factor(it):
        if schedule == "cosine":
            return 0.5 * (1.0 + math.cos(math.pi * min(it, iterations) / iterations))
        if schedule == "step":
            return 0.1 if it >= iterations // 2 else 1.0
        return 1.0
    if schedule not in ("constant", "cosine", "step"):
        raise utils.UserError(f"unknown --lr-schedule {schedule!r}")
    return torch.optim.lr_scheduler.LambdaLR(optimizer, factor)


@torch.no_grad()
def validate(model, dataset, ctx, crop_border):
    """Mean Y-PSNR and SSIM of the model on a test SRDataset (LR 'imagenet-norm', HR 'pil')."""
    model = checkpoint.unwrap_model(model)
    was_training = model.training
    model.eval()
    psnrs, ssims = [], []
    for i in range(len(dataset)):
        lr, hr = dataset[i]
        with ctx.autocast():
            sr = model(ctx.to_device(lr[None]))
        sr = images.convert_image(sr[0].float(), "[-1, 1]", "pil")
        psnrs.append(metrics.calc_psnr(sr, hr, crop_border))
        ssims.append(metrics.calc_ssim(sr, hr, crop_border))
    model.train(was_training)
    return float(np.mean(psnrs)), float(np.mean(ssims))


def make_val_dataset(args):
    """The validation data set (None when --val-data is empty)."""
    if not args.val_data:
        return None
    return datasets.SRDataset(args.data_folder, "test", args.crop_size, args.scaling_factor,
                              "imagenet-norm", "pil", test_data_name=args.val_data)


# ----------------------------------------------------------------------------------------------
# the loop


@dataclass
class Run:
    """Everything one training run needs.

    script: 'srresnet' or 'srgan' (stored in checkpoints; a resume file of the other script is refused).
    models: {'model': generator, 'discriminator': ...} as checkpoint entries.
    optimizers, schedulers: {name: object}, saved under those names.
    step: function (lr_imgs, hr_imgs) -> {loss name: tensor}; the first entry is shown in the bar.
    scaler: a torch.amp.GradScaler (disabled unless fp16).
    """
    script: str
    models: dict
    optimizers: dict
    schedulers: dict
    step: callable
    scaler: torch.amp.GradScaler


def checkpoint_paths(args, script):
    """(latest training checkpoint, best inference checkpoint, CSV log) paths."""
    d = args.checkpoint_dir
    return (os.path.join(d, f"{script}_latest.pth"), os.path.join(d, f"{script}_best.pth"),
            os.path.join(d, f"{script}_log.csv"))


def training_state(run, args, iteration, best_psnr):
    """The checkpoint dict of a run at ``iteration``."""
    ckpt = {"format_version": checkpoint.FORMAT_VERSION}
    for name, model in run.models.items():
        ckpt[name] = checkpoint.model_spec(model)
    ckpt["training"] = {
        "script": run.script, "iteration": iteration, "best_psnr": best_psnr,
        "optimizers": {k: v.state_dict() for k, v in run.optimizers.items()},
        "schedulers": {k: v.state_dict() for k, v in run.schedulers.items()},
        "scaler": run.scaler.state_dict(), "rng": rng_state(),
        "args": {k: v for k, v in vars(args).items() if isinstance(v, (int, float, str, bool, type(None)))},
    }
    return ckpt


def load_resume(path, script):
    """Read a training checkpoint to resume, checking that it comes from the same script."""
    ckpt = checkpoint.load_checkpoint(path)
    training = ckpt.get("training")
    if training is None:
        raise utils.UserError(f"{path}: an inference-only checkpoint, not a training checkpoint to resume")
    if training["script"] != script:
        raise utils.UserError(f"{path}: a checkpoint of train_{training['script']}.py; "
                              f"it cannot resume train_{script}.py")
    return ckpt


def restore(run, ckpt):
    """Load models, optimizers, schedulers, scaler and RNG states from a training checkpoint.
    Returns (iteration, best_psnr)."""
    training = ckpt["training"]
    for name, model in run.models.items():
        checkpoint.unwrap_model(model).load_state_dict(ckpt[name]["state_dict"])
    for name, opt in run.optimizers.items():
        opt.load_state_dict(training["optimizers"][name])
    for name, sched in run.schedulers.items():
        sched.load_state_dict(training["schedulers"][name])
    run.scaler.load_state_dict(training["scaler"])
    set_rng_state(training["rng"])
    return training["iteration"], training["best_psnr"]


class _StopFlag:
    """Set by SIGINT/SIGTERM so that the loop saves a checkpoint and exits between iterations."""

    def __init__(self):
        self.signal = None

    def __call__(self, signum, frame):
        if self.signal is not None:  # second Ctrl-C: stop now (the latest checkpoint is intact)
            raise KeyboardInterrupt
        self.signal = signum


def train(run, args, ctx, start_iteration=0, best_psnr=float("-inf")):
    """Run the loop from ``start_iteration`` to ``args.iterations``.

    Saves the latest training checkpoint every ``args.save_every`` iterations, at the end and on
    Ctrl-C; validates every ``args.val_every`` iterations and at the end, writing the best model by
    PSNR. Stops with TrainingStopped on a NaN/inf loss, leaving the last good checkpoint in place,
    and with KeyboardInterrupt after saving on SIGINT/SIGTERM.
    Returns a dict with the final iteration, best PSNR and last losses.
    """
    latest_path, best_path, log_path = checkpoint_paths(args, run.script)
    generator = run.models["model"]
    val_dataset = make_val_dataset(args) if ctx.is_main else None
    loader = make_train_loader(args, ctx, start_iteration)
    writer = _tensorboard_writer(args) if ctx.is_main else None
    log_file, log = _open_log(log_path, start_iteration > 0) if ctx.is_main else (None, None)

    stop = _StopFlag()
    old_handlers = {s: signal.signal(s, stop) for s in (signal.SIGINT, signal.SIGTERM)}
    bar = tqdm(total=args.iterations, initial=start_iteration, desc=run.script, unit="it",
               disable=not ctx.is_main, dynamic_ncols=True)
    iteration, losses, started = start_iteration, {}, time.time()
    last_good = None
    try:
        # the DataLoader draws its workers' base seed from torch's RNG; fork it so that the RNG state
        # restored by --resume is the one the uninterrupted run has at that iteration
        with torch.random.fork_rng(devices=[]):
            batches = iter(loader)
        while iteration < args.iterations:
            lr_imgs, hr_imgs = next(batches)
            losses = run.step(ctx.to_device(lr_imgs), ctx.to_device(hr_imgs))
            for sched in run.schedulers.values():
                sched.step()
            iteration += 1
            losses = {k: float(v) for k, v in losses.items()}
            status = _agree(ctx, 2 if not all(map(math.isfinite, losses.values())) else (1 if stop.signal else 0))
            if status == 2:
                raise TrainingStopped(f"loss became {losses} at iteration {iteration}; stopped. "
                                      f"The last good checkpoint is {last_good or 'not written yet'}; "
                                      "try a lower --lr, --grad-clip or --precision fp32")
            bar.update(1)
            first = next(iter(losses))
            bar.set_postfix({first: f"{losses[first]:.4g}"})

            is_last = iteration == args.iterations
            val = None
            if args.val_every and iteration % args.val_every == 0 or is_last:
                if ctx.is_main and val_dataset is not None:
                    val = validate(generator, val_dataset, ctx, args.scaling_factor)
                    if val[0] > best_psnr:
                        best_psnr = val[0]
                        checkpoint.save_checkpoint(_best_checkpoint(run, args, ctx, iteration, val), best_path)
                    bar.write(f"iteration {iteration}: {args.val_data} PSNR {val[0]:.3f} dB, SSIM {val[1]:.4f} "
                              f"(best {best_psnr:.3f})")
            if ctx.is_main and (iteration % args.log_every == 0 or val is not None or is_last):
                lr_now = next(iter(run.optimizers.values())).param_groups[0]["lr"]
                row = {"iteration": iteration, **losses, "lr": lr_now,
                       "val_psnr": val[0] if val else "", "val_ssim": val[1] if val else "",
                       "time": round(time.time() - started, 2)}
                log(row)
                if writer is not None:
                    _tensorboard_log(writer, row, generator, val_dataset, ctx)
            if iteration % args.save_every == 0 or is_last or status == 1:
                if ctx.is_main:
                    checkpoint.save_checkpoint(training_state(run, args, iteration, best_psnr), latest_path)
                last_good = latest_path
            if status == 1:
                bar.write(f"interrupted: saved {latest_path} at iteration {iteration}; "
                          f"continue with --resume {latest_path}")
                raise KeyboardInterrupt  # scripts exit with code 130, as after any Ctrl-C
    finally:
        bar.close()
        for s, h in old_handlers.items():
            signal.signal(s, h)
        if log_file is not None:
            log_file.close()
        if writer is not None:
            writer.close()
    return {"iteration": iteration, "best_psnr": best_psnr, "losses": losses, "seconds": time.time() - started}


def _agree(ctx, status):
    """The largest status over all processes (so that every rank stops at the same iteration)."""
    if ctx.world_size == 1:
        return status
    t = torch.tensor([status], device=ctx.device if ctx.device.type == "cuda" else "cpu")
    dist.all_reduce(t, op=dist.ReduceOp.MAX)
    return int(t.item())


def _best_checkpoint(run, args, ctx, iteration, val):
    """Inference checkpoint of the generator with a record of how it was trained."""
    info = {"script": f"train_{run.script}.py", "iteration": iteration, "val_data": args.val_data,
            "val_psnr": val[0], "val_ssim": val[1], "precision": ctx.precision,
            "data_folder": args.data_folder, "batch_size": args.batch_size, "lr": args.lr}
    return checkpoint.inference_checkpoint(run.models["model"], info)


def _open_log(path, append):
    """A CSV logger writing one row per call; the header comes from the first row."""
    os.makedirs(os.path.dirname(os.path.abspath(path)), exist_ok=True)
    exists = append and os.path.isfile(path) and os.path.getsize(path) > 0
    f = open(path, "a" if exists else "w", newline="")
    state = {"writer": None}

    def log(row):
        if state["writer"] is None:
            state["writer"] = csv.DictWriter(f, fieldnames=list(row), extrasaction="ignore")
            if not exists:
                state["writer"].writeheader()
        state["writer"].writerow(row)
        f.flush()
    return f, log


def _tensorboard_writer(args):
    """A SummaryWriter under <checkpoint-dir>/tensorboard, or None; UserError if not installed."""
    if not args.tensorboard:
        return None
    try:
        from torch.utils.tensorboard import SummaryWriter
    except ImportError:
        raise utils.UserError("--tensorboard needs the tensorboard package: pip install tensorboard") from None
    return SummaryWriter(os.path.join(args.checkpoint_dir, "tensorboard"))


def _tensorboard_log(writer, row, generator, val_dataset, ctx):
    """Scalars of a log row, plus a sample super-resolved image when the row has validation results."""
    it = row["iteration"]
    for k, v in row.items():
        if k != "iteration" and isinstance(v, float):
            writer.add_scalar(k, v, it)
    if row["val_psnr"] != "" and val_dataset is not None:
        lr, _ = val_dataset[0]
        model = checkpoint.unwrap_model(generator)
        was_training = model.training
        model.eval()
        with torch.no_grad(), ctx.autocast():
            sr = model(ctx.to_device(lr[None]))
        model.train(was_training)
        writer.add_image("sample", images.convert_image(sr[0].float().cpu(), "[-1, 1]", "[0, 1]").clamp(0, 1), it)


def make_optimizer(params, lr):
    """Adam, fused where this PyTorch supports it on the device (fewer kernel launches), else foreach."""
    try:
        return torch.optim.Adam(params, lr=lr, fused=True)
    except (RuntimeError, TypeError, ValueError):
        return torch.optim.Adam(params, lr=lr, foreach=True)


def parse_or_exit(parser, argv):
    """parse_args plus the checks both scripts share (errors exit 2 with the usage line)."""
    args = parser.parse_args(argv)
    if args.crop_size % args.scaling_factor:
        parser.error(f"--crop-size {args.crop_size} is not a multiple of --scaling-factor {args.scaling_factor}")
    for name in ("iterations", "batch_size", "save_every", "log_every"):
        if getattr(args, name) < 1:
            parser.error(f"--{name.replace('_', '-')} must be at least 1")
    return args


@contextlib.contextmanager
def distributed_context(args):
    """setup() ... cleanup() as a context manager."""
    ctx = setup(args)
    try:
        yield ctx
    finally:
        cleanup(ctx)
