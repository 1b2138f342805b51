"""Adversarial fine-tuning of the SRGAN generator (the second phase of Ledig et al., CVPR 2017).

    python train_srgan.py --srresnet-checkpoint checkpoints/srresnet_best.pth     # the paper's settings
    python train_srgan.py --srresnet-checkpoint ... --vgg-weights vgg19-dcbb9e9d.pth  # offline machine
    python train_srgan.py --resume checkpoints/srgan_latest.pth                    # continue a run
    torchrun --nproc_per_node=4 train_srgan.py --srresnet-checkpoint ... --device cuda --precision bf16

The generator starts from an SRResNet trained by train_srresnet.py (its size is read from that
checkpoint), the discriminator from scratch. Every iteration makes one generator step on the
perceptual loss (section 2.2 of the paper)

    l_G = content_scale**2 * MSE(VGG(SR), VGG(HR))           content loss ("VGG54" by default)
        + beta * BCE(D(SR), real)                            adversarial loss (beta = 1e-3)
        + pixel_weight * MSE(SR, HR)                         optional pixel loss, off by default
        + texture_weight * MSE(Gram(VGG(SR)), Gram(VGG(HR)))  optional texture loss, off by default

then one discriminator step on BCE(D(HR), real) + BCE(D(SR), fake), with the SR batch of the
generator step. Both use Adam with lr 1e-4, divided by 10 half-way (the paper: 1e5 + 1e5 iterations).

Writes <checkpoint-dir>/srgan_latest.pth (generator, discriminator and everything needed to
--resume), srgan_best.pth (the generator, for test.py / eval.py) and srgan_log.csv. Both .pth files
load with checkpoint.load_model. srgan_best.pth is the best generator by validation PSNR: with the default
--val-every 0 that is the final one; with --val-every N beware that PSNR favours the least
adversarial weights (the final generator is always in srgan_latest.pth).
"""

import argparse
import contextlib
import sys

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import checkpoint
import images
import models
import training
import utils

# the paper's discriminator (figure 4); the flags default to None so that a resumed run can tell
# "not given" (take the checkpoint's value) from "given" (must agree with the checkpoint)
DISCRIMINATOR_DEFAULTS = dict(kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024)
DISCRIMINATOR_FLAGS = dict(d_kernel_size="kernel_size", d_n_channels="n_channels", d_n_blocks="n_blocks",
                           fc_size="fc_size")
GENERATOR_FLAGS = ("large_kernel_size", "small_kernel_size", "n_channels", "n_blocks")
# flags that change what is optimised: a resumed run that changes them is no longer the same run
LOSS_FLAGS = ("beta", "content_scale", "pixel_weight", "texture_weight", "vgg_i", "vgg_j", "vgg_weights",
              "lr", "lr_schedule", "iterations", "batch_size", "crop_size", "seed")
# the paper rescales the VGG feature maps by 1/12.75 "to obtain VGG losses of a scale that is
# comparable to the MSE loss"; with beta = 1e-3 this sets the balance between content and adversarial
# loss, so it is the default (the classic tutorial's 1.0 makes the adversarial term ~160x weaker)
PAPER_CONTENT_SCALE = 1 / 12.75


def _scale(text):
    """argparse type for --content-scale: a number or a fraction such as '1/12.75'."""
    try:
        if "/" in text:
            num, den = text.split("/")
            value = float(num) / float(den)
        else:
            value = float(text)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None
    if not value > 0:
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def build_parser():
    parser = argparse.ArgumentParser(
        description="Adversarial fine-tuning of an SRResNet into an SRGAN generator (Ledig et al., CVPR 2017).")
    training.add_common_arguments(parser, iterations=200_000, lr=1e-4, save_every=1000,
                                  model_from="the --srresnet-checkpoint / --resume file")
    parser.add_argument("--lr-schedule", choices=("constant", "cosine", "step"), default="step",
                        help="learning-rate schedule of both networks: step (x0.1 at half-way, the paper), "
                             "constant or cosine decay to 0 (default: step)")
    g = parser.add_argument_group("SRGAN")
    g.add_argument("--srresnet-checkpoint", metavar="PATH", default=None,
                   help="trained SRResNet (train_srresnet.py's srresnet_best.pth or _latest.pth) to start the "
                        "generator from; its size is used (required unless --resume)")
    g.add_argument("--beta", type=float, default=1e-3,
                   help="weight of the adversarial loss in the perceptual loss (default: 1e-3, the paper)")
    g.add_argument("--content-scale", type=_scale, default=PAPER_CONTENT_SCALE, metavar="S",
                   help="multiply the VGG feature maps by S before the content MSE (so the MSE by S**2); "
                        "a number or a fraction. Default 1/12.75 (MSE x ~0.00615), the paper's rescaling, "
                        "which with --beta 1e-3 gives the paper's balance of content and adversarial loss; "
                        "the classic PyTorch tutorial uses 1, a ~160x weaker adversarial term")
    g.add_argument("--pixel-weight", type=float, default=0.0,
                   help="weight of an extra pixel MSE between SR and HR in [-1, 1] (default: 0, not in the paper)")
    g.add_argument("--texture-weight", type=float, default=0.0,
                   help="weight of a texture loss: MSE between Gram matrices F F^T / (C H W) of the VGG "
                        "features of SR and HR (default: 0 = off)")
    g.add_argument("--vgg-i", type=int, default=5,
                   help="content loss on VGG19 features taken before max-pool i (default: 5)")
    g.add_argument("--vgg-j", type=int, default=4,
                   help="... at the ReLU after convolution j of that stage (default: 4; 5/4 is the paper's VGG54)")
    g.add_argument("--vgg-weights", default="imagenet", metavar="imagenet|PATH|random",
                   help="VGG19 weights: 'imagenet' (torchvision's IMAGENET1K_V1, downloaded once to torch's cache), "
                        "a local torchvision VGG19 state-dict file, or 'random' (smoke tests only: the result "
                        "is NOT an SRGAN) (default: imagenet)")
    g = parser.add_argument_group("discriminator (default: the paper's; on --resume: the checkpoint's)")
    g.add_argument("--d-kernel-size", type=int, default=None, help="convolution kernel (default: 3)")
    g.add_argument("--d-n-channels", type=int, default=None,
                   help="channels of the first block, doubled every second block (default: 64)")
    g.add_argument("--d-n-blocks", type=int, default=None,
                   help="convolutional blocks, stride 2 on every second one (default: 8)")
    g.add_argument("--fc-size", type=int, default=None, help="width of the hidden linear layer (default: 1024)")
    return parser


def gram_matrix(features):
    """Gram matrices of feature maps, normalised by their size.

    Args:
        features: (N, C, H, W) tensor.

    Returns:
        (N, C, C) tensor F F^T / (C H W), with F the (C, H * W) feature matrix of each image.
    """
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)  # (N, C, HW)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)  # (N, C, C)


@contextlib.contextmanager
def _frozen(module):
    """Parameters of ``module`` do not require gradients inside the block (inputs still get theirs)."""
    params = [p for p in module.parameters() if p.requires_grad]
    for p in params:
        p.requires_grad_(False)
    try:
        yield
    finally:
        for p in params:
            p.requires_grad_(True)


def make_step(generator, discriminator, vgg, optimizer_g, optimizer_d, scaler, ctx, beta=1e-3,
              content_scale=PAPER_CONTENT_SCALE, pixel_weight=0.0, texture_weight=0.0, grad_clip=None):
    """One SRGAN iteration: returns a function (lr_imgs, hr_imgs) -> {loss name: tensor}.

    lr_imgs are ImageNet-normalised, hr_imgs in [-1, 1] (the generator's output range); the VGG and
    the discriminator see ImageNet-normalised images. generator / discriminator may be wrapped in
    DistributedDataParallel. One grad scaler serves both optimizers (scale both losses, step both,
    update once), as PyTorch's AMP notes prescribe for several optimizers.

    Returned entries: 'perceptual' (the generator's whole loss), its terms 'content', 'adversarial'
    (and 'pixel', 'texture' when their weights are not 0), 'discriminator' (BCE on real + BCE on
    fake), and 'd_real' / 'd_fake', the discriminator's mean probability of "real" on HR and SR.
    """
    d_module = checkpoint.unwrap_model(discriminator)
    bce = torch.nn.BCEWithLogitsLoss()

    def clip_and_step(optimizer, model):
        if grad_clip is not None:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_value_(model.parameters(), grad_clip)
        scaler.step(optimizer)

    def step(lr_imgs, hr_imgs):
        hr_norm = images.convert_image(hr_imgs, "[-1, 1]", "imagenet-norm")  # (N, 3, H, W)
        with torch.no_grad(), ctx.autocast():
            hr_features = vgg(hr_norm).float()  # (N, C, H', W'), the content target

        # generator step
        with ctx.autocast():
            sr_imgs = generator(lr_imgs).float()  # (N, 3, H, W) in [-1, 1]
            sr_norm = images.convert_image(sr_imgs, "[-1, 1]", "imagenet-norm")
            sr_features = vgg(sr_norm).float()  # (N, C, H', W')
            # the plain module (not the DDP wrapper) with frozen weights: only the gradient with
            # respect to SR is wanted here, and no all-reduce of discriminator gradients
            with _frozen(d_module):
                sr_logits = d_module(sr_norm).float()  # (N, 1)
        # MSE of the feature maps scaled by content_scale = content_scale**2 * MSE of the raw ones
        content = content_scale**2 * F.mse_loss(sr_features, hr_features)
        adversarial = bce(sr_logits, torch.ones_like(sr_logits))
        losses = {"perceptual": None, "content": content, "adversarial": adversarial}
        loss_g = content + beta * adversarial
        if pixel_weight:
            losses["pixel"] = F.mse_loss(sr_imgs, hr_imgs)
            loss_g = loss_g + pixel_weight * losses["pixel"]
        if texture_weight:
            losses["texture"] = F.mse_loss(gram_matrix(sr_features), gram_matrix(hr_features))
            loss_g = loss_g + texture_weight * losses["texture"]
        losses["perceptual"] = loss_g
        optimizer_g.zero_grad(set_to_none=True)
        scaler.scale(loss_g).backward()
        clip_and_step(optimizer_g, generator)

        # discriminator step, on the SR images of the generator step (before its update). Real and
        # fake go through separate forward passes, so BatchNorm sees single-kind batches as in the
        # generator step; one backward for both, which is what DistributedDataParallel needs.
        sr_norm = sr_norm.detach()
        with ctx.autocast():
            real_logits = discriminator(hr_norm).float()  # (N, 1)
            fake_logits = discriminator(sr_norm).float()  # (N, 1)
        loss_real = bce(real_logits, torch.ones_like(real_logits))
        loss_fake = bce(fake_logits, torch.zeros_like(fake_logits))
        loss_d = loss_real + loss_fake
        optimizer_d.zero_grad(set_to_none=True)
        scaler.scale(loss_d).backward()
        clip_and_step(optimizer_d, discriminator)
        scaler.update()

        losses["discriminator"] = loss_d
        losses["d_real"] = torch.sigmoid(real_logits).mean()
        losses["d_fake"] = torch.sigmoid(fake_logits).mean()
        return {k: v.detach() for k, v in losses.items()}
    return step


def _check_size_flags(args, flags, stored, path, what):
    """Size flags given on the command line must agree with the checkpoint the model comes from."""
    for flag, key in flags.items():
        given = getattr(args, flag)
        if given is not None and given != stored[key]:
            raise utils.UserError(f"{path}: its {what} has {key}={stored[key]}, but --{flag.replace('_', '-')} "
                                  f"is {given}; drop the flag to use the checkpoint's size")


def _check_scale(args, stored, path):
    if stored["scaling_factor"] != args.scaling_factor:
        raise utils.UserError(f"{path}: its model is trained for x{stored['scaling_factor']}, but --scaling-factor "
                              f"is {args.scaling_factor}; pass --scaling-factor {stored['scaling_factor']}")


def build_generator(args, resume):
    """The generator (on the CPU): from the resume file, or initialised from --srresnet-checkpoint."""
    if resume:
        gen_args = resume["model"]["args"]
        _check_scale(args, gen_args, args.resume)
        _check_size_flags(args, {f: f for f in GENERATOR_FLAGS}, gen_args, args.resume, "generator")
        return models.Generator(**gen_args)
    path = args.srresnet_checkpoint
    srresnet = checkpoint.load_model(path)
    gen_args = srresnet.args
    _check_scale(args, gen_args, path)
    _check_size_flags(args, {f: f for f in GENERATOR_FLAGS}, gen_args, path, "SRResNet")
    generator = models.Generator(**gen_args)
    generator.initialize_with_srresnet(srresnet)
    return generator


def discriminator_args(args, resume):
    """Discriminator constructor arguments: the flags (paper defaults), or the resume file's."""
    if resume:
        stored = resume["discriminator"]["args"]
        _check_size_flags(args, DISCRIMINATOR_FLAGS, stored, args.resume, "discriminator")
        return dict(stored)
    return {key: DISCRIMINATOR_DEFAULTS[key] if getattr(args, flag) is None else getattr(args, flag)
            for flag, key in DISCRIMINATOR_FLAGS.items()}


def build_vgg(args):
    """The frozen TruncatedVGG19 of the content loss; UserError (one line) when the weights cannot be had."""
    if args.vgg_weights == "random":
        # seeded on its own, so that a resumed run rebuilds exactly the same random network
        with torch.random.fork_rng(devices=[]):
            torch.manual_seed(args.seed)
            return _truncated_vgg(args, None)
    return _truncated_vgg(args, args.vgg_weights)


def _truncated_vgg(args, weights):
    try:
        if weights not in (None, "imagenet"):
            weights = checkpoint.load_torch_file(weights)
        return models.TruncatedVGG19(args.vgg_i, args.vgg_j, weights=weights)
    except (RuntimeError, ValueError) as e:  # offline without the weights; a wrong file; a wrong (i, j)
        message = " ".join(str(e).split())
        if weights == "imagenet" and isinstance(e, RuntimeError):
            message += " (--vgg-weights PATH uses a local file)"
        raise utils.UserError(f"--vgg-weights {args.vgg_weights}: {message}") from None


def _warn_changed_flags(args, resume):
    """Print the loss-relevant flags whose values differ from the run being resumed."""
    stored = resume["training"].get("args", {})
    changed = [f"--{k.replace('_', '-')} {stored[k]} -> {getattr(args, k)}" for k in LOSS_FLAGS
               if k in stored and stored[k] != getattr(args, k)]
    if changed:
        print(f"note: resuming with other settings than the run had: {', '.join(changed)}", file=sys.stderr)


def main(argv=None):
    """Parse flags and train; returns the result dict of training.train."""
    parser = build_parser()
    args = training.parse_or_exit(parser, argv)
    if not args.resume and not args.srresnet_checkpoint:
        parser.error("--srresnet-checkpoint PATH is required (the generator starts from a trained SRResNet), "
                     "unless --resume")
    for flag in ("vgg_i", "vgg_j", *DISCRIMINATOR_FLAGS):
        if getattr(args, flag) is not None and getattr(args, flag) < 1:
            parser.error(f"--{flag.replace('_', '-')} must be at least 1")
    with training.distributed_context(args) as ctx:
        resume = training.load_resume(args.resume, "srgan") if args.resume else None
        training.seed_everything(args.seed)
        # every check that can fail comes before the (slow) VGG and the first iteration
        generator = build_generator(args, resume)
        discriminator = models.Discriminator(**discriminator_args(args, resume))
        if ctx.is_main:
            if resume and args.srresnet_checkpoint:
                print(f"note: --resume given: --srresnet-checkpoint {args.srresnet_checkpoint} is not used",
                      file=sys.stderr)
            if resume:
                _warn_changed_flags(args, resume)
            if args.vgg_weights == "random":
                print("WARNING: --vgg-weights random: the content loss uses an UNTRAINED VGG19. The result is "
                      "NOT an SRGAN; use this for smoke tests only.", file=sys.stderr)
        vgg = build_vgg(args)

        generator, discriminator, vgg = (m.to(ctx.device) for m in (generator, discriminator, vgg))
        if ctx.channels_last:
            generator, discriminator, vgg = (m.to(memory_format=torch.channels_last)
                                             for m in (generator, discriminator, vgg))
        optimizer_g = training.make_optimizer(generator.parameters(), args.lr)
        optimizer_d = training.make_optimizer(discriminator.parameters(), args.lr)
        scheduler_g = training.make_scheduler(optimizer_g, args.lr_schedule, args.iterations)
        scheduler_d = training.make_scheduler(optimizer_d, args.lr_schedule, args.iterations)
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.precision == "fp16")
        # the VGG is frozen: it is not wrapped (nothing to synchronise)
        net_g = DistributedDataParallel(generator) if ctx.world_size > 1 else generator
        net_d = DistributedDataParallel(discriminator) if ctx.world_size > 1 else discriminator
        step = make_step(net_g, net_d, vgg, optimizer_g, optimizer_d, scaler, ctx, beta=args.beta,
                         content_scale=args.content_scale, pixel_weight=args.pixel_weight,
                         texture_weight=args.texture_weight, grad_clip=args.grad_clip)
        run = training.Run("srgan", {"model": generator, "discriminator": discriminator},
                           {"optimizer_g": optimizer_g, "optimizer_d": optimizer_d},
                           {"scheduler_g": scheduler_g, "scheduler_d": scheduler_d}, step, scaler)
        start, best = training.restore(run, resume) if resume else (0, float("-inf"))
        if ctx.is_main:
            n_g = sum(p.numel() for p in generator.parameters())
            n_d = sum(p.numel() for p in discriminator.parameters())
            print(f"SRGAN: generator {generator.args} ({n_g:,} parameters), discriminator {discriminator.args} "
                  f"({n_d:,}), VGG19 i={args.vgg_i} j={args.vgg_j} ({args.vgg_weights}); on {ctx.device} "
                  f"x{ctx.world_size}, {ctx.precision}{', channels_last' if ctx.channels_last else ''}; "
                  f"iterations {start} -> {args.iterations}")
        return training.train(run, args, ctx, start, best)


if __name__ == "__main__":
    utils.run_cli(main)
