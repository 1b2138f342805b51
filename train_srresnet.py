"""Train SRResNet with a pixel loss (MSE: the first phase of Ledig et al., CVPR 2017).

    python train_srresnet.py --data-folder data_lists                        # the paper's settings
    python train_srresnet.py --lr-schedule cosine --iterations 20000 --val-every 500
    python train_srresnet.py --resume runs/srresnet_latest.pth         # continue that run
    python train_srresnet.py --init checkpoints/srresnet_x4.pth --lr 1e-5     # fine-tune a model
    torchrun --nproc_per_node=4 train_srresnet.py --device cuda               # several GPUs

Writes <checkpoint-dir>/srresnet_latest.pth (everything needed to --resume), srresnet_best.pth (the
best model by validation PSNR, for test.py / eval.py / train_srgan.py) and srresnet_log.csv.
"""

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

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
    with training.distributed(args) as ctx:
        # --- the model: from the run being resumed, from --init, or new
        training.seed_everything(args.seed)
        init = training.load_init_model(args)
        model_args = resume["model"]["args"] if resume else training.model_args(args, init)
        training.record_sizes(args, model_args)
        scale = model_args["scaling_factor"]
        model = models.SRResNet(**model_args)
        if init is not None:
            model.load_state_dict((init.net if isinstance(init, models.Generator) else init).state_dict())
        model = ctx.prepare(model)
        optimizer = training.make_optimizer(model.parameters(), args.lr)
        scheduler = training.make_scheduler(optimizer, args.lr_schedule, args.iterations)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.precision == "fp16")
        net = DistributedDataParallel(model) if ctx.world_size > 1 else model
        pixel_loss = PIXEL_LOSSES[args.pixel_loss]
        banner = (f"SRResNet {model_args} ({sum(p.numel() for p in model.parameters()):,} parameters), "
                  f"{args.pixel_loss} loss,")

        with training.Run(args, "srresnet", ctx, resume, {"model": model}, {"optimizer": optimizer},
                          {"scheduler": scheduler}, scaler, scale, ["loss"], banner) as run:
            batches = datasets.train_batches(args, scale, run.start, ctx.rank, ctx.world_size,
                                             pin_memory=ctx.device.type == "cuda")
            for iteration in run.iterations():
                lr_imgs, hr_imgs = next(batches)  # (N, 3, c/s, c/s) ImageNet-normalised, (N, 3, c, c) in [-1, 1]
                lr_imgs, hr_imgs = ctx.to_device(lr_imgs), ctx.to_device(hr_imgs)
                loss = srresnet_step(net, optimizer, scaler, lr_imgs, hr_imgs, pixel_loss, args.grad_clip, ctx)
                scheduler.step()
                run.step(iteration, {"loss": loss}, lr_imgs)  # average, checks, log, validation, checkpoint
        return run.result(loss=loss.item())


if __name__ == "__main__":
    utils.run_cli(main)
