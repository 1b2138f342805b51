"""Train SRResNet with a pixel loss (MSE: the first phase of Ledig et al., CVPR 2017).

    python train_srresnet.py --data-folder data_lists                        # the paper's settings
    python train_srresnet.py --lr-schedule cosine --iterations 20000 --val-every 500
    python train_srresnet.py --resume runs/srresnet_latest.pth         # continue that run
    python train_srresnet.py --init checkpoints/srresnet_x4.pth --lr 1e-5     # fine-tune a model
    torchrun --nproc_per_node=4 train_srresnet.py --device cuda               # several GPUs

Writes <checkpoint-dir>/srresnet_latest.pth (everything needed to --resume), srresnet_best.pth (the
best model by validation PSNR, for test.py / eval.py / train_srgan.py) and srresnet_log.csv.
"""

import math
import time

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel
from tqdm import tqdm

import datasets
import models
import training
import utils

# --pixel-loss: MSE is the paper's; L1 is what EDSR (Lim et al., 2017) found better for PSNR
PIXEL_LOSSES = {"mse": F.mse_loss, "l1": F.l1_loss}


def build_parser():
    parser = utils.ArgumentParser(description="Train SRResNet with a pixel loss (Ledig et al., CVPR 2017).",
                                  fromfile_prefix_chars="@")
    training.add_common_arguments(parser, iterations=1_000_000, lr=1e-4, lr_schedule="constant")
    parser.add_argument("--pixel-loss", choices=sorted(PIXEL_LOSSES), default="mse",
                        help="mse (the paper) or l1 (default: mse)")
    parser.add_argument("--init", metavar="PATH", default=None,
                        help="start a new run from the weights of this checkpoint (its size is used)")
    return parser


def srresnet_step(net, optimizer, scaler, lr_imgs, hr_imgs, pixel_loss, grad_clip, ctx):
    """One optimisation step on the pixel loss between SR and HR; returns the loss (a 0-d tensor, no sync).

    ``net``: the SRResNet (DDP-wrapped under torchrun); ``lr_imgs``, ``hr_imgs``: (N, 3, c/s, c/s)
    ImageNet-normalised and (N, 3, c, c) in [-1, 1], on the device; ``grad_clip``: None or the bound
    of the gradient values.
    """
    with ctx.autocast():
        sr_imgs = net(lr_imgs)  # (N, 3, c, c) in [-1, 1]
    loss = pixel_loss(sr_imgs.float(), hr_imgs)
    optimizer.zero_grad(set_to_none=True)
    scaler.scale(loss).backward()
    if grad_clip:
        scaler.unscale_(optimizer)
        torch.nn.utils.clip_grad_value_(net.parameters(), grad_clip)
    scaler.step(optimizer)
    scaler.update()
    return loss


def main(argv=None):
    """Parse flags and train; returns {'iteration', 'best_psnr', 'loss': the last step's}."""
    args, resume = training.parse_args(build_parser(), argv, "srresnet")
    latest_path, best_path, log_path = training.run_files(args, "srresnet")
    with training.distributed(args) as ctx:
        # --- the model: from the run being resumed, from --init, or new
        training.seed_everything(args.seed)
        init = training.load_init_model(args)
        model_args = resume["model"]["args"] if resume else training.model_args(args, init)
        training.record_sizes(args, model_args)
        scale = model_args["scaling_factor"]
        datasets.check_crop_size(args.crop_size, scale)
        model = models.SRResNet(**model_args)
        if init is not None:
            model.load_state_dict((init.net if isinstance(init, models.Generator) else init).state_dict())
        model = ctx.prepare(model)
        optimizer = training.make_optimizer(model.parameters(), args.lr)
        scheduler = training.make_scheduler(optimizer, args.lr_schedule, args.iterations)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.precision == "fp16")
        state = dict(models_={"model": model}, optimizers={"optimizer": optimizer},
                     schedulers={"scheduler": scheduler}, scaler=scaler)
        start, best_psnr = 0, float("-inf")
        if resume:
            start, best_psnr = training.restore(resume, args.resume, **state)
            best_psnr = training.best_psnr_so_far(best_path, best_psnr)
            if args.lr != resume["training"]["args"].get("lr"):
                training.set_base_lr(optimizer, scheduler, args.lr)
        # --ema: an averaged copy of the weights (saved to resume too); validation judges and files keep
        # that copy when there is one
        ema = training.ema_copy(model, args.ema, resume)
        if ema is not None:
            state["models_"]["ema"] = ema
        kept = ema if ema is not None else model
        net = DistributedDataParallel(model) if ctx.world_size > 1 else model
        pixel_loss = PIXEL_LOSSES[args.pixel_loss]

        # --- everything that can fail on a bad file fails now, before the first iteration
        batches = training.train_batches(args, ctx, start, scale)
        val_set = training.load_validation_set(args, scale) if ctx.is_main else []
        # the folder is this run's until it ends: a second process (new run or --resume) is refused
        run_lock = training.claim_run_folder(args, "srresnet") if ctx.is_main else None
        log = writer = stop = bar = None  # made inside the try: the finally releases what exists
        try:
            log = training.CsvLog(log_path, ["iteration", "loss", "lr", "val_psnr", "val_ssim", "seconds"],
                                  resume_iteration=start if resume else None) if ctx.is_main else None
            writer = training.tensorboard_writer(args) if ctx.is_main else None
            if ctx.is_main:
                training.announce_resume(args, start)
                print(f"SRResNet {model_args} ({sum(p.numel() for p in model.parameters()):,} parameters), "
                      f"{args.pixel_loss} loss, on {ctx.device} x{ctx.world_size}, {ctx.precision}"
                      f"{', channels_last' if ctx.channels_last else ''}; iterations {start} -> {args.iterations}"
                      + (f"; validation on {args.val_data} in {args.val_precision}" if val_set else "")
                      + (f"; EMA of the weights (decay {args.ema})" if ema is not None else ""))

            stop = training.StopSignal()
            bar = tqdm(total=args.iterations, initial=start, unit="it", desc="srresnet", disable=not ctx.is_main)
            finite = torch.ones((), dtype=torch.bool, device=ctx.device)  # every loss finite so far
            # a resumed run's checkpoint is good: it was checked before it was written
            last_good = f"{args.resume} (iteration {start})" if resume else None
            started = time.time()
            for iteration in range(start + 1, args.iterations + 1):
                lr_imgs, hr_imgs = next(batches)  # (N, 3, c/s, c/s) ImageNet-normalised, (N, 3, c, c) in [-1, 1]
                lr_imgs, hr_imgs = ctx.to_device(lr_imgs), ctx.to_device(hr_imgs)

                loss = srresnet_step(net, optimizer, scaler, lr_imgs, hr_imgs, pixel_loss, args.grad_clip, ctx)
                scheduler.step()
                if ema is not None:
                    training.update_ema(ema, model, args.ema)
                finite &= torch.isfinite(loss)  # stays on the device: no sync at every step
                bar.update(1)

                # every few iterations: NaN check, validation, log, checkpoint (rank 0 writes the files)
                if not training.check_due(iteration, args, ctx, stop):
                    continue
                last = iteration == args.iterations
                save = training.due(iteration, args.save_every) or last or stop.requested
                # never let a broken model replace the last good checkpoint (bool() is a sync point)
                good = bool(finite) and (not ctx.is_main or training.is_good(model, lr_imgs, ctx, ema))
                stopping = training.stop_if_bad(ctx, good, stop, iteration, last_good)
                if ctx.is_main:
                    training.keep_snapshot(args, "srresnet", iteration, kept,
                                           {"script": "train_srresnet.py", "ema": args.ema})
                val = None
                if ctx.is_main and val_set and (training.due(iteration, args.val_every) or last):
                    val, best_psnr = training.validate_and_keep_best(
                        kept, val_set, ctx, scale, iteration, best_psnr, best_path,
                        {"script": "train_srresnet.py", "val_data": args.val_data, "ema": args.ema,
                         "precision": ctx.precision, "val_precision": args.val_precision}, bar, args.val_precision)
                if ctx.is_main and (training.due(iteration, args.log_every) or val is not None or last):
                    training.log_row(log, writer, bar, {
                        "iteration": iteration, "loss": loss.item(), "lr": scheduler.get_last_lr()[0],
                        "val_psnr": val["psnr"] if val else "", "val_ssim": val["ssim"] if val else "",
                        "seconds": round(time.time() - started, 1)})
                # the checkpoint last: a kill before it resumes from the previous one and redoes these
                # rows; a kill after it has lost nothing (a save before the row lost the row)
                if (save or stopping) and ctx.is_main:
                    training.save_training_checkpoint(latest_path, "srresnet", iteration, best_psnr, args, **state)
                    last_good = f"{latest_path} (iteration {iteration})"
                if stopping:
                    bar.write(f"interrupted: saved {latest_path} at iteration {iteration}; "
                              f"continue with: python train_srresnet.py --resume {latest_path}")
                    raise stop.exception()  # exit code 130 (Ctrl-C) or 143 (SIGTERM)
        finally:
            if stop is not None:
                stop.restore()
            if bar is not None:
                bar.close()
            if log is not None:
                log.close()
            if writer is not None:
                writer.close()
            if run_lock is not None:
                run_lock.release()
        return {"iteration": args.iterations, "best_psnr": best_psnr if math.isfinite(best_psnr) else None,
                "loss": loss.item()}


if __name__ == "__main__":
    utils.run_cli(main)
