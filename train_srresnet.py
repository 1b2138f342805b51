"""Train SRResNet with the MSE loss (the first phase of Ledig et al., CVPR 2017).

    python train_srresnet.py --data-folder data_lists                       # the paper's settings
    python train_srresnet.py --precision bf16 --channels-last --lr-schedule cosine --iterations 20000
    torchrun --nproc_per_node=4 train_srresnet.py --device cuda --precision bf16   # several GPUs

Writes <checkpoint-dir>/srresnet_latest.pth (everything needed to --resume), srresnet_best.pth
(the best model by validation PSNR, for test.py / eval.py / train_srgan.py) and srresnet_log.csv.
See `python train_srresnet.py --help` for every flag.
"""

import argparse

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import models
import training
import utils


def build_parser():
    parser = argparse.ArgumentParser(description="Train SRResNet with the MSE loss (Ledig et al., CVPR 2017).")
    training.add_common_arguments(parser, iterations=1_000_000, lr=1e-4, save_every=1000)
    parser.add_argument("--lr-schedule", choices=("constant", "cosine", "step"), default="constant",
                        help="constant (the paper), cosine decay to 0 (better for short runs) or step "
                             "(x0.1 at half-way) (default: constant)")
    return parser


def make_step(model, optimizer, scaler, ctx, grad_clip=None):
    """One MSE training step: returns a function (lr_imgs, hr_imgs) -> {'loss': tensor}.

    lr_imgs are ImageNet-normalised, hr_imgs in [-1, 1] (the generator's output range).
    """
    def step(lr_imgs, hr_imgs):
        with ctx.autocast():
            sr_imgs = model(lr_imgs)  # (N, 3, H, W) in [-1, 1]
        loss = F.mse_loss(sr_imgs.float(), hr_imgs)
        optimizer.zero_grad(set_to_none=True)
        scaler.scale(loss).backward()
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
        scaler.step(optimizer)
        scaler.update()
        return {"loss": loss.detach()}
    return step


def main(argv=None):
    """Parse flags and train; returns the result dict of training.train."""
    args = training.parse_or_exit(build_parser(), argv)
    with training.distributed_context(args) as ctx:
        resume = training.load_resume(args.resume, "srresnet") if args.resume else None
        training.seed_everything(args.seed)
        model_args = resume["model"]["args"] if resume else training.model_args_from_flags(args)
        if resume and model_args["scaling_factor"] != args.scaling_factor:
            raise utils.UserError(f"{args.resume}: trained for x{model_args['scaling_factor']}, "
                                  f"but --scaling-factor is {args.scaling_factor}")
        model = models.SRResNet(**model_args).to(ctx.device)
        if ctx.channels_last:
            model = model.to(memory_format=torch.channels_last)
        optimizer = training.make_optimizer(model.parameters(), args.lr)
        scheduler = training.make_scheduler(optimizer, args.lr_schedule, args.iterations)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.precision == "fp16")
        net = DistributedDataParallel(model) if ctx.world_size > 1 else model
        run = training.Run("srresnet", {"model": model}, {"optimizer": optimizer}, {"scheduler": scheduler},
                           make_step(net, optimizer, scaler, ctx, args.grad_clip), scaler)
        start, best = training.restore(run, resume) if resume else (0, float("-inf"))
        if ctx.is_main:
            n_params = sum(p.numel() for p in model.parameters())
            print(f"SRResNet {model_args} ({n_params:,} parameters) on {ctx.device} x{ctx.world_size}, "
                  f"{ctx.precision}{', channels_last' if ctx.channels_last else ''}; "
                  f"iterations {start} -> {args.iterations}")
        return training.train(run, args, ctx, start, best)


if __name__ == "__main__":
    utils.run_cli(main)
