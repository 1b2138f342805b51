"""Adversarial fine-tuning of the SRGAN generator (the second phase of Ledig et al., CVPR 2017).

    python train_srgan.py --init runs/srresnet_best.pth                      # the paper's settings
    python train_srgan.py --init runs/srresnet_best.pth --vgg-weights vgg19-dcbb9e9d.pth   # offline
    python train_srgan.py --init runs/srresnet_best.pth --content-loss mse    # SRGAN-MSE: no VGG
    python train_srgan.py --resume runs/srgan_latest.pth                     # continue that run
    torchrun --nproc_per_node=4 train_srgan.py --init runs/srresnet_best.pth --device cuda

The generator starts from a trained SRResNet (--init, also spelled --srresnet-checkpoint; its size is
used), the discriminator from scratch. Each iteration is one generator step on the perceptual loss
(section 2.2 of the paper), then one discriminator step on the same SR batch (section 2.1):

    l_G = content_scale**2 * MSE(VGG(SR), VGG(HR))           content loss ("VGG54" by default;
                                                             MSE(SR, HR) with --content-loss mse)
        + beta * BCE(D(SR), real)                            adversarial loss (beta = 1e-3)
        + pixel_weight * MSE(SR, HR)                         optional, off by default
        + texture_weight * MSE(Gram(VGG(SR)), Gram(VGG(HR)))  optional, off by default
        + artifact_weight * |M * (SR - HR)|                  optional (Liang et al. 2022), off by default
        + grid_weight * MSE(phase means of SR, of HR)         optional (grid_loss), off by default
    l_D = BCE(D(HR), real) + BCE(D(SR), fake)

(--gan-loss relativistic: ESRGAN's relativistic average form of both adversarial losses;
--freeze-bn: the generator's BatchNorm keeps its statistics. See adversarial_losses and srgan_step.)

Both use Adam at 1e-4, divided by 10 half-way (the paper: 1e5 + 1e5 iterations). Writes
<checkpoint-dir>/srgan_latest.pth (to --resume), srgan_best.pth (the best generator by validation
PSNR; PSNR favours the least adversarial weights, so the final generator is in srgan_latest.pth
too) and srgan_log.csv.
"""

import argparse
import math
import sys

import torch
import torch.nn.functional as F
from torch.nn.parallel import DistributedDataParallel

import checkpoint
import datasets
import images
import metrics
import models
import training
import utils

# the paper rescales the VGG feature maps by 1/12.75 "to obtain VGG losses of a scale that is
# comparable to the MSE loss"; with beta = 1e-3 this sets the balance between content and adversarial
# loss, so it is the default (the classic tutorial's 1.0 makes the adversarial term ~160x weaker)
PAPER_CONTENT_SCALE = 1 / 12.75
# the paper's discriminator (figure 4); its flags default to None = "these, or the resumed run's"
DISCRIMINATOR_DEFAULTS = dict(kernel_size=3, n_channels=64, n_blocks=8, fc_size=1024)
# the content losses of the paper's table 1: name -> the VGG19 layer (i, j), or None for the pixel MSE
CONTENT_LOSSES = {"vgg54": (5, 4), "vgg22": (2, 2), "mse": None}
GAN_LOSSES = ("standard", "relativistic")
DISCRIMINATOR_FLAGS = dict(d_kernel_size="kernel_size", d_n_channels="n_channels", d_n_blocks="n_blocks",
                           fc_size="fc_size")


def _scale(text):
    """argparse type for --content-scale: a positive number or a fraction such as '1/12.75'."""
    try:
        num, _, den = text.partition("/")
        value = float(num) / float(den or 1)
    except (ValueError, ZeroDivisionError):
        raise argparse.ArgumentTypeError(f"not a number or fraction: {text!r}") from None
    if not (value > 0 and math.isfinite(value)):
        raise argparse.ArgumentTypeError(f"must be positive, got {text!r}")
    return value


def build_parser():
    parser = utils.ArgumentParser(
        description="Adversarial fine-tuning of an SRResNet into an SRGAN generator (Ledig et al., CVPR 2017).",
        fromfile_prefix_chars="@")
    training.add_common_arguments(parser, iterations=200_000, lr=1e-4, lr_schedule="step")
    g = parser.add_argument_group("SRGAN")
    g.add_argument("--init", "--srresnet-checkpoint", dest="init", metavar="PATH", default=None,
                   help="trained SRResNet (or generator) to start from; its size is used (required unless --resume)")
    g.add_argument("--content-loss", choices=tuple(CONTENT_LOSSES), default="vgg54",
                   help="the paper's content losses: VGG19 features 5/4 or 2/2, or the pixel MSE that needs no VGG "
                        "(SRGAN-MSE) (default: vgg54)")
    g.add_argument("--beta", type=training.at_least(0.0, float), default=1e-3,
                   help="weight of the adversarial loss (default: 1e-3, the paper)")
    g.add_argument("--content-scale", type=_scale, default=PAPER_CONTENT_SCALE, metavar="S",
                   help="scale of the VGG feature maps before the content MSE, a number or fraction "
                        "(default: 1/12.75, the paper; the classic tutorial uses 1)")
    g.add_argument("--pixel-weight", type=training.at_least(0.0, float), default=0.0,
                   help="weight of an extra pixel MSE (default: 0, not in the paper)")
    g.add_argument("--texture-weight", type=training.at_least(0.0, float), default=0.0,
                   help="weight of a Gram-matrix texture loss on the VGG features (default: 0 = off)")
    g.add_argument("--gan-loss", choices=GAN_LOSSES, default="standard",
                   help="adversarial loss: the paper's (standard) or the relativistic average one of ESRGAN "
                        "(Wang et al. 2018), in which D judges whether HR looks more real than SR on average "
                        "(default: standard)")
    g.add_argument("--artifact-weight", type=training.at_least(0.0, float), default=0.0,
                   help="weight of an artifact-map loss (Liang et al., CVPR 2022, 'LDL'): an L1 loss on the pixels "
                        "whose residual varies locally, where the moving average (--ema) does better "
                        "(default: 0 = off)")
    g.add_argument("--grid-weight", type=training.at_least(0.0, float), default=0.0,
                   help="weight of a grid loss: the squared difference between SR's and HR's mean high-pass "
                        "residual at each phase of the up-sampling period, the grid measure of eval.py "
                        "--artifacts made a loss (default: 0 = off)")
    g.add_argument("--grid-region", choices=["all", "flat"], default="all",
                   help="pixels the grid loss reads: 'all' (one table per image) or 'flat', those where HR is "
                        "flat, as eval.py's flat-region grid (one table per batch; default: all)")
    g.add_argument("--freeze-bn", action="store_true",
                   help="keep the generator's BatchNorm statistics fixed at the --init model's (eval mode) during "
                        "the fine-tuning, so training and inference normalise alike (not in the paper)")
    g.add_argument("--val-artifacts", action="store_true",
                   help="validation also logs NIQE and the grid over flat regions (val_niqe, val_grid; eval.py "
                        "--niqe --artifacts), so the log shows the trade-off as the run goes (slower validation)")
    g.add_argument("--vgg-i", type=training.at_least(1), default=None,
                   help="VGG19 features before max-pool i (default: --content-loss's, 5 for vgg54)")
    g.add_argument("--vgg-j", type=training.at_least(1), default=None,
                   help="... after the ReLU of convolution j of that stage (default: --content-loss's, 4 for vgg54)")
    g.add_argument("--vgg-weights", default=None, metavar="imagenet|PATH|random",
                   help="VGG19 weights: torchvision's ImageNet ones (downloaded once), a local copy of that file, "
                        "or 'random' (smoke tests only: the result is NOT an SRGAN) (default: imagenet)")
    g = parser.add_argument_group("discriminator (default: the paper's)")
    g.add_argument("--d-kernel-size", type=training.kernel_size, default=None,
                   help="convolution kernel, odd (paper: 3)")
    g.add_argument("--d-n-channels", type=training.at_least(1, maximum=models.MAX_CHANNELS), default=None,
                   help="channels of the first block, doubled every second block (paper: 64)")
    g.add_argument("--d-n-blocks", type=training.at_least(1, maximum=models.MAX_BLOCKS), default=None,
                   help="convolutional blocks, stride 2 on every second one (paper: 8)")
    g.add_argument("--fc-size", type=training.at_least(1, maximum=models.MAX_CHANNELS), default=None,
                   help="hidden linear layer width (paper: 1024)")
    return parser


def gram_matrix(features):
    """Gram matrices F F^T / (C H W) of (N, C, H, W) feature maps, F the (C, H * W) matrix of an image."""
    n, c, h, w = features.shape
    flat = features.reshape(n, c, h * w)  # (N, C, HW)
    return torch.bmm(flat, flat.transpose(1, 2)) / (c * h * w)  # (N, C, C)


def adversarial_losses(real_logits, fake_logits, kind="standard"):
    """(the generator's adversarial loss, the discriminator's loss) from D's logits of an HR and an SR batch.

    standard (the paper): l_adv = BCE(D(SR), real) and l_D = BCE(D(HR), real) + BCE(D(SR), fake).
    relativistic (ESRGAN, Wang et al. 2018): D judges x against the other batch's mean logit,
    D_Ra(x, y) = sigmoid(C(x) - mean C(y)); l_D = (BCE(D_Ra(HR, SR), real) + BCE(D_Ra(SR, HR), fake)) / 2 and
    l_adv is the same with the labels swapped, so the generator gets gradients from the HR term too.
    """
    bce = F.binary_cross_entropy_with_logits
    ones, zeros = torch.ones_like(real_logits), torch.zeros_like(real_logits)
    if kind == "relativistic":
        real, fake = real_logits - fake_logits.mean(), fake_logits - real_logits.mean()
        return (bce(real, zeros) + bce(fake, ones)) / 2, (bce(real, ones) + bce(fake, zeros)) / 2
    return bce(fake_logits, ones), bce(real_logits, ones) + bce(fake_logits, zeros)


def artifact_map_loss(sr, hr, sr_ema=None, window=7):
    """The artifact-map loss of Liang et al. (CVPR 2022, "Details or Artifacts"): mean |M * (SR - HR)|.

    The residual |HR - SR| (summed over channels) is noise-like where the generator invents wrong
    texture and smooth where it is merely blurred, so M, a pixel's weight, is the residual's local
    variance (window x window) times the image's residual variance to the power 1/5. Given the moving
    average's output ``sr_ema``, M is 0 wherever the average's residual is not smaller: only what the
    current weights do worse than the stable average is penalised. M itself carries no gradient.
    """
    with torch.no_grad():
        residual = (hr - sr).abs().sum(1, keepdim=True)  # (N, 1, H, W)
        padded = F.pad(residual, [window // 2] * 4, mode="reflect")
        local_mean = F.avg_pool2d(padded, window, stride=1)
        local_var = (F.avg_pool2d(padded**2, window, stride=1) - local_mean**2).clamp_(min=0)  # (N, 1, H, W)
        weight = local_var * residual.var(dim=(1, 2, 3), keepdim=True) ** 0.2
        if sr_ema is not None:
            weight *= (hr - sr_ema).abs().sum(1, keepdim=True) < residual
    return (weight * (sr - hr)).abs().mean()


def grid_loss(sr, hr, period, region="all"):
    """The grid measure (metrics.grid_strength, docs/artifacts.md) as a loss: the MSE between SR's and
    HR's s x s tables of the mean high-pass residual (the grey level minus its 3x3 mean) at each phase
    (y mod s, x mod s) of the up-sampling period s. A checkerboard of the sub-pixel convolution moves
    these tables and nothing else moves them much, so the term leaves texture alone.

    region "all": one table per image, over all its pixels. region "flat": one table for the batch,
    over the pixels where HR is flat (7x7 standard deviation under metrics.GRID_FLAT_STD grey levels,
    the mask of eval.py's flat-region grid), where a grid shows most and texture cannot hide it.
    """
    def grey(x):
        return x.mean(1, keepdim=True)  # (N, 1, H, W): the grey level, where a grid shows

    def phase_sums(x):  # (N, s, s): sums over the pixels of each phase
        n, _, h, w = x.shape
        return x.reshape(n, h // period, period, w // period, period).sum((1, 3))

    def residual(x):
        return x - F.avg_pool2d(F.pad(x, [1, 1, 1, 1], mode="reflect"), 3, stride=1)

    y_sr, y_hr = grey(sr), grey(hr)
    if region == "all":
        count = (sr.shape[2] // period) * (sr.shape[3] // period)
        return F.mse_loss(phase_sums(residual(y_sr)) / count, phase_sums(residual(y_hr)) / count)
    with torch.no_grad():  # HR is [-1, 1]: one grey level is 2/255
        mean = F.avg_pool2d(F.pad(y_hr, [3, 3, 3, 3], mode="reflect"), 7, stride=1)
        var = F.avg_pool2d(F.pad(y_hr * y_hr, [3, 3, 3, 3], mode="reflect"), 7, stride=1) - mean * mean
        flat = (var < (metrics.GRID_FLAT_STD * 2 / 255) ** 2).to(y_sr.dtype)
        count = phase_sums(flat).sum(0).clamp(min=1)  # (s, s)
    table_sr = phase_sums(residual(y_sr) * flat).sum(0) / count
    return F.mse_loss(table_sr, phase_sums(residual(y_hr) * flat).sum(0) / count)


def freeze_batchnorm(model):
    """--freeze-bn: the model's BatchNorm layers normalise with their stored statistics and keep them."""
    for module in model.modules():
        if isinstance(module, torch.nn.modules.batchnorm._BatchNorm):
            module.eval()


def srgan_step(net_g, net_d, vgg, ema, optimizer_g, optimizer_d, scaler, lr_imgs, hr_imgs, weights, args, ctx):
    """One iteration: a generator step on the perceptual loss and a discriminator step, on one SR batch.

    The discriminator runs once on the HR batch and once on the SR batch, and both steps use those
    logits: the generator's backward takes gradients for the generator's weights only, the
    discriminator's for its own only. Both gradients are taken before either network moves, so each
    step sees the other network as it was (the paper's alternating updates, without a second pass).

    Args:
        net_g, net_d: the generator and the discriminator (DDP-wrapped under torchrun).
        vgg: the frozen TruncatedVGG19 of the content loss, or None for the pixel MSE.
        ema: the moving average of the generator (for --artifact-weight), or None.
        lr_imgs, hr_imgs: (N, 3, c/s, c/s) ImageNet-normalised and (N, 3, c, c) in [-1, 1], on the device.
        weights: {term: weight} of the generator's loss; a term of weight 0 is not computed.
        args: the run's flags (content_scale, gan_loss, grad_clip).

    Returns:
        {"perceptual", each term, "discriminator", "d_real", "d_fake"}: 0-d tensors (no device sync).
    """
    hr_norm = images.convert_image(hr_imgs, "[-1, 1]", "imagenet-norm")  # what VGG and D see
    with ctx.autocast():
        sr_imgs = net_g(lr_imgs).float()  # (N, 3, c, c) in [-1, 1]
        sr_norm = images.convert_image(sr_imgs, "[-1, 1]", "imagenet-norm")
        if vgg is not None:
            with torch.no_grad():
                hr_features = vgg(hr_norm).float()  # (N, C, c', c'), the content target
            sr_features = vgg(sr_norm).float()
        real_logits = net_d(hr_norm).float()  # (N, 1)
        fake_logits = net_d(sr_norm).float()  # (N, 1)
        sr_ema = None
        if weights.get("artifact") and ema is not None:
            with torch.no_grad():
                sr_ema = ema(lr_imgs).float()
    adversarial, loss_d = adversarial_losses(real_logits, fake_logits, args.gan_loss)
    terms = {  # each a function, so that a term whose weight is 0 costs nothing
        # MSE of the feature maps scaled by content_scale = content_scale**2 * MSE of the raw ones
        "content": lambda: (args.content_scale**2 * F.mse_loss(sr_features, hr_features) if vgg is not None
                            else F.mse_loss(sr_imgs, hr_imgs)),
        "adversarial": lambda: adversarial,
        "pixel": lambda: F.mse_loss(sr_imgs, hr_imgs),
        "texture": lambda: F.mse_loss(gram_matrix(sr_features), gram_matrix(hr_features)),
        "artifact": lambda: artifact_map_loss(sr_imgs, hr_imgs, sr_ema),
        "grid": lambda: grid_loss(sr_imgs, hr_imgs, args.scaling_factor, args.grid_region),
    }
    losses = {name: terms[name]() for name, w in weights.items() if w}
    loss_g = sum(weights[name] * value for name, value in losses.items())

    g_params = [p for p in net_g.parameters() if p.requires_grad]
    d_params = [p for p in net_d.parameters() if p.requires_grad]
    optimizer_g.zero_grad(set_to_none=True)
    optimizer_d.zero_grad(set_to_none=True)
    # the discriminator's part of the graph serves both backwards: keep it for the second
    scaler.scale(loss_g).backward(inputs=g_params, retain_graph=True)
    scaler.scale(loss_d).backward(inputs=d_params)
    for optimizer, params in ((optimizer_g, g_params), (optimizer_d, d_params)):
        if args.grad_clip:
            scaler.unscale_(optimizer)
            torch.nn.utils.clip_grad_value_(params, args.grad_clip)
        scaler.step(optimizer)
    scaler.update()
    return {"perceptual": loss_g, **losses, "discriminator": loss_d,
            "d_real": torch.sigmoid(real_logits).mean(), "d_fake": torch.sigmoid(fake_logits).mean()}


def resolve_content_loss(args):
    """Fill in --vgg-i/--vgg-j/--vgg-weights from --content-loss (so the checkpoint records what was
    built); refuse VGG flags with the pixel-MSE content loss, which builds no VGG."""
    layer = CONTENT_LOSSES[args.content_loss]
    if layer is None:
        for flag, value in (("--vgg-i", args.vgg_i), ("--vgg-j", args.vgg_j), ("--vgg-weights", args.vgg_weights)):
            if value is not None:
                raise utils.UserError(f"{flag} {value}: --content-loss mse builds no VGG19; drop {flag}")
        if args.texture_weight:
            raise utils.UserError(f"--texture-weight {args.texture_weight:g}: the texture loss needs VGG19 features, "
                                  "and --content-loss mse builds none; drop it or use --content-loss vgg54/vgg22")
        return
    args.vgg_i = layer[0] if args.vgg_i is None else args.vgg_i
    args.vgg_j = layer[1] if args.vgg_j is None else args.vgg_j
    try:
        models.check_vgg_layer(args.vgg_i, args.vgg_j)
    except ValueError as e:
        raise utils.UserError(f"--vgg-i {args.vgg_i} --vgg-j {args.vgg_j}: {e}") from None
    args.vgg_weights = "imagenet" if args.vgg_weights is None else args.vgg_weights


def build_vgg(args):
    """The frozen TruncatedVGG19 of the content loss (None for --content-loss mse); a UserError when
    its weights cannot be had."""
    weights = args.vgg_weights
    if CONTENT_LOSSES[args.content_loss] is None:
        return None
    try:
        if weights == "random":
            # seeded on its own, so that a resumed run rebuilds exactly the same random network
            with torch.random.fork_rng(devices=[]):
                torch.manual_seed(args.seed)
                return models.TruncatedVGG19(args.vgg_i, args.vgg_j, weights=None)
        if weights != "imagenet":
            weights = checkpoint.load_torch_file(weights)
        return models.TruncatedVGG19(args.vgg_i, args.vgg_j, weights=weights)
    except (RuntimeError, ValueError) as e:  # offline without the weights; a wrong file; a wrong (i, j)
        message = " ".join(str(e).split())
        raise utils.UserError(f"--vgg-weights {args.vgg_weights}: {message}") from None


def main(argv=None):
    """Parse flags and train; returns {'iteration', 'best_psnr', 'losses'}."""
    args, resume = training.parse_args(build_parser(), argv, "srgan")
    if not args.resume and not args.init:
        raise utils.UserError("--init PATH is required: the generator starts from a trained SRResNet "
                              "(train_srresnet.py's srresnet_best.pth, or checkpoints/srresnet_x4.pth); "
                              "or --resume a run")
    resolve_content_loss(args)
    if args.grid_region != "all" and not args.grid_weight:
        raise utils.UserError(f"--grid-region {args.grid_region}: the grid loss is off (--grid-weight 0); give "
                              "--grid-weight W too")
    with training.distributed(args) as ctx:
        # --- models: from the run being resumed, or the generator from --init and a new discriminator
        training.seed_everything(args.seed)
        init = training.load_init_model(args)
        gen_args = resume["model"]["args"] if resume else training.model_args(args, init)
        d_args = resume["discriminator"]["args"] if resume else {
            key: DISCRIMINATOR_DEFAULTS[key] if getattr(args, flag) is None else getattr(args, flag)
            for flag, key in DISCRIMINATOR_FLAGS.items()}
        training.record_sizes(args, gen_args)
        training.record_sizes(args, {flag: d_args[key] for flag, key in DISCRIMINATOR_FLAGS.items()})
        scale = gen_args["scaling_factor"]
        generator = models.Generator(**gen_args)
        if init is not None:
            generator.initialize_with_srresnet(init)
        try:
            discriminator = models.Discriminator(**d_args)
        except ValueError as e:  # channels doubled every second block past models.MAX_CHANNELS
            raise utils.UserError(f"discriminator {d_args}: {e}") from None
        vgg = build_vgg(args)  # frozen: not wrapped in DDP (nothing to synchronise)
        if args.vgg_weights == "random" and ctx.is_main:
            print("WARNING: --vgg-weights random: the content loss uses an UNTRAINED VGG19. The result is NOT an "
                  "SRGAN; use this for smoke tests only.", file=sys.stderr)
        if args.freeze_bn:
            freeze_batchnorm(generator)
        generator, discriminator = ctx.prepare(generator), ctx.prepare(discriminator)
        vgg = ctx.prepare(vgg) if vgg is not None else None
        optimizer_g = training.make_optimizer(generator.parameters(), args.lr)
        optimizer_d = training.make_optimizer(discriminator.parameters(), args.lr)
        scheduler_g = training.make_scheduler(optimizer_g, args.lr_schedule, args.iterations)
        scheduler_d = training.make_scheduler(optimizer_d, args.lr_schedule, args.iterations)
        # one grad scaler for both optimizers (scale both losses, step both, update once), as
        # PyTorch's AMP notes prescribe for several optimizers; disabled unless fp16
        scaler = torch.amp.GradScaler(ctx.device.type, enabled=ctx.precision == "fp16")
        net_g = DistributedDataParallel(generator) if ctx.world_size > 1 else generator
        net_d = DistributedDataParallel(discriminator) if ctx.world_size > 1 else discriminator
        # the generator's loss: weight * term, summed over this table (a weight of 0 leaves a term out)
        loss_weights = {"content": 1.0, "adversarial": args.beta, "pixel": args.pixel_weight,
                        "texture": args.texture_weight, "artifact": args.artifact_weight, "grid": args.grid_weight}
        columns = ["perceptual", *[name for name, w in loss_weights.items() if w], "discriminator", "d_real", "d_fake"]
        content = f"VGG19 i={args.vgg_i} j={args.vgg_j} ({args.vgg_weights})" if vgg is not None else "pixel MSE"
        banner = f"SRGAN: generator {gen_args}, discriminator {d_args}, content loss {content};"

        with training.Run(args, "srgan", ctx, resume, {"model": generator, "discriminator": discriminator},
                          {"optimizer_g": optimizer_g, "optimizer_d": optimizer_d},
                          {"scheduler_g": scheduler_g, "scheduler_d": scheduler_d}, scaler, scale, columns,
                          banner) as run:
            batches = datasets.train_batches(args, scale, run.start, ctx.rank, ctx.world_size,
                                             pin_memory=ctx.device.type == "cuda")
            for iteration in run.iterations():
                lr_imgs, hr_imgs = next(batches)  # (N, 3, c/s, c/s) ImageNet-normalised, (N, 3, c, c) in [-1, 1]
                lr_imgs, hr_imgs = ctx.to_device(lr_imgs), ctx.to_device(hr_imgs)
                step = srgan_step(net_g, net_d, vgg, run.ema, optimizer_g, optimizer_d, scaler, lr_imgs, hr_imgs,
                                  loss_weights, args, ctx)
                scheduler_g.step()
                scheduler_d.step()
                run.step(iteration, step, lr_imgs)  # average, checks, log, validation, checkpoint
        return run.result(losses={k: v.item() for k, v in step.items() if k not in ("d_real", "d_fake")})


if __name__ == "__main__":
    utils.run_cli(main)
