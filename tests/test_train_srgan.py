"""train_srgan.py: losses, remedies, flags, VGG weights, learning, load_model. Tiny models (VGG19 cut
at "VGG22" with random weights) on 32x32 crops of synthetic images: no shared data, seconds."""

import argparse
import contextlib
import copy
import io
import math

import pytest
import torch

import bench
import checkpoint
import create_data_lists
import datasets
import evaluation
import images
import inference
import metrics
import models
import train_srgan
import train_srresnet
import training
from conftest import cli_error, random_image, read_log

TINY_G = dict(large_kernel_size=9, small_kernel_size=3, n_channels=8, n_blocks=1, scaling_factor=4)


@pytest.fixture(scope="module")
def data(tmp_path_factory):
    """Data lists of 6 synthetic 64x64 training images and a 'Val' list of 2 images, plus a tiny
    SRResNet trained for 3 iterations on them (the generator's starting point)."""
    root = tmp_path_factory.mktemp("srgan")
    (root / "train").mkdir()
    (root / "Val").mkdir()
    for i in range(6):
        random_image((64, 64), seed=i).save(root / "train" / f"t{i}.png")
    for i in range(2):
        random_image((48, 40), seed=50 + i).save(root / "Val" / f"v{i}.png")
    lists = root / "lists"
    create_data_lists.create_data_lists([str(root / "train")], [str(root / "Val")], 32, str(lists),
                                        log=lambda *a: None)
    run_quietly(train_srresnet.main, ["--data-folder", str(lists), "--crop-size", "32", "--batch-size", "2",
                                      "--workers", "0", "--val-data", "Val", "--iterations", "3", "--n-channels", "8",
                                      "--n-blocks", "1", "--checkpoint-dir", str(root / "srresnet")])
    return {"root": root, "lists": lists, "srresnet": root / "srresnet" / "srresnet_best.pth"}


def gan_argv(data, checkpoint_dir, *extra, init=True, vgg=True):
    """Flags of a tiny, fast SRGAN run; vgg=False: without the VGG19 flags (which --content-loss mse refuses)."""
    argv = ["--data-folder", str(data["lists"]), "--crop-size", "32", "--batch-size", "2", "--workers", "0",
            "--val-data", "Val", "--d-n-channels", "8", "--fc-size", "16", "--checkpoint-dir", str(checkpoint_dir)]
    if vgg:
        argv += ["--vgg-weights", "random", "--vgg-i", "2", "--vgg-j", "2"]
    if init:
        argv += ["--srresnet-checkpoint", str(data["srresnet"])]
    return argv + [str(x) for x in extra]


def run_quietly(main, argv):
    """main(argv) with stdout and stderr captured; returns (result, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = main(argv)
    return result, out.getvalue(), err.getvalue()


def test_gram_matrix():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5)
    g = train_srgan.gram_matrix(f)
    assert g.shape == (2, 3, 3)
    for n in range(2):
        flat = f[n].reshape(3, 20)
        assert torch.allclose(g[n], flat @ flat.T / (3 * 4 * 5), atol=1e-6)
    assert torch.allclose(train_srgan.gram_matrix(torch.ones(1, 2, 2, 2)), torch.full((1, 2, 2), 0.5))


def test_vgg_weights_errors_are_one_line(data, tmp_path, capsys, monkeypatch):
    """Offline without the ImageNet weights (or with a bad file): a one-line error naming --vgg-weights PATH."""
    def offline():
        raise RuntimeError("could not load the ImageNet VGG19 weights from torchvision (URLError: no network).\n"
                           "Download them elsewhere and pass the file with --vgg-weights PATH")
    monkeypatch.setattr(models, "_imagenet_vgg19_state_dict", offline)
    argv = gan_argv(data, tmp_path / "ck", "--iterations", "2")
    weights = argv.index("--vgg-weights") + 1
    argv[weights] = "imagenet"
    line = cli_error(train_srgan.main, argv, capsys)
    assert "--vgg-weights PATH" in line and "no network" in line
    argv[weights] = str(tmp_path / "vgg19.pth")
    assert "no such file" in cli_error(train_srgan.main, argv, capsys)
    torch.save({"features.0.weight": torch.zeros(1)}, tmp_path / "vgg19.pth")
    assert "not a torchvision VGG19 state dict" in cli_error(train_srgan.main, argv, capsys)
    assert not (tmp_path / "ck").exists()


@pytest.fixture(scope="module")
def trained(data):
    """A 40-iteration SRGAN run (log every iteration, keep every 16th generator): its folder and stderr."""
    ck = data["root"] / "gan40"
    _, _, err = run_quietly(train_srgan.main, gan_argv(data, ck, "--iterations", "40", "--log-every", "1",
                                                       "--keep-every", "16"))
    return {"dir": ck, "stderr": err}


def test_random_vgg_warns_the_losses_are_finite_and_the_discriminator_learns(trained, data):
    assert "WARNING: --vgg-weights random" in trained["stderr"] and "NOT an SRGAN" in trained["stderr"]
    rows = read_log(trained["dir"] / "srgan_log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(1, 41))
    assert "pixel" not in rows[0] and "texture" not in rows[0]  # terms whose weight is 0 are not computed or logged
    keys = ["perceptual", "content", "adversarial", "discriminator", "d_real", "d_fake"]
    assert all(math.isfinite(float(r[k])) for r in rows for k in keys)
    # the discriminator starts at chance (BCE real + fake ~ 2 ln 2) and learns to tell HR from SR
    first = sum(float(r["discriminator"]) for r in rows[:10]) / 10
    last = sum(float(r["discriminator"]) for r in rows[-10:]) / 10
    assert abs(first - 2 * math.log(2)) < 0.3
    assert last < first - 0.1
    assert sum(float(r["d_real"]) - float(r["d_fake"]) for r in rows[-10:]) / 10 > 0.05
    # the same on a fixed batch: the trained discriminator beats a fresh one of the same size
    ckpt = checkpoint.load_checkpoint(trained["dir"] / "srgan_latest.pth")
    generator = checkpoint.load_model(trained["dir"] / "srgan_latest.pth")
    dataset = datasets.SRDataset(str(data["lists"]), "train", 32, 4, "imagenet-norm", "[-1, 1]")
    lr_imgs, hr_imgs = (torch.stack(t) for t in zip(*[dataset[i] for i in range(6)]))
    with torch.no_grad():
        sr = images.convert_image(generator(lr_imgs), "[-1, 1]", "imagenet-norm")
        hr = images.convert_image(hr_imgs, "[-1, 1]", "imagenet-norm")

        def d_loss(d):
            d.train()  # batch statistics over single-kind batches, as in training
            bce = torch.nn.functional.binary_cross_entropy_with_logits
            return float(bce(d(hr), torch.ones(6, 1)) + bce(d(sr), torch.zeros(6, 1)))
        trained_d = models.build_model("Discriminator", ckpt["discriminator"]["args"])
        trained_d.load_state_dict(ckpt["discriminator"]["state_dict"])
        torch.manual_seed(123)
        fresh_d = models.build_model("Discriminator", ckpt["discriminator"]["args"])
        assert d_loss(trained_d) < d_loss(fresh_d) - 0.1


def test_load_model_on_srgan_checkpoints_and_the_kept_generators(trained):
    assert sorted(p.name for p in trained["dir"].glob("srgan_[0-9]*.pth")) == ["srgan_16.pth", "srgan_32.pth"]
    for name in ("srgan_best.pth", "srgan_latest.pth", "srgan_32.pth"):
        model = checkpoint.load_model(trained["dir"] / name)
        assert isinstance(model, models.Generator) and model.args == TINY_G and not model.training
        with torch.no_grad():
            out = model(torch.randn(1, 3, 10, 7))
        assert out.shape == (1, 3, 40, 28)
    for name, iteration in (("srgan_best.pth", 40), ("srgan_32.pth", 32)):
        ckpt = checkpoint.load_checkpoint(trained["dir"] / name)
        assert ckpt["info"]["script"] == "train_srgan.py" and ckpt["info"]["iteration"] == iteration
        assert "training" not in ckpt and "discriminator" not in ckpt
    latest = checkpoint.load_checkpoint(trained["dir"] / "srgan_latest.pth")
    assert latest["discriminator"]["arch"] == "Discriminator"
    assert set(latest["training"]["optimizers"]) == {"optimizer_g", "optimizer_d"}
    assert set(latest["training"]["schedulers"]) == {"scheduler_g", "scheduler_d"}


def test_the_srgan_needs_an_init_file(data, tmp_path, capsys):
    assert "--init PATH is required" in cli_error(train_srgan.main, gan_argv(data, tmp_path / "ck", init=False), capsys)
    assert not (tmp_path / "ck").exists()


def test_the_generator_loss_is_the_weighted_sum_of_its_terms(data, tmp_path):
    run_quietly(train_srgan.main, gan_argv(data, tmp_path / "a", "--iterations", "2", "--log-every", "1",
                                           "--pixel-weight", "0.5", "--texture-weight", "2", "--val-data", ""))
    rows = read_log(tmp_path / "a" / "srgan_log.csv")
    assert list(rows[0]) == ["iteration", "perceptual", "content", "adversarial", "pixel", "texture",
                             "discriminator", "d_real", "d_fake", "lr", "val_psnr", "val_ssim"]
    for r in rows:
        expected = (float(r["content"]) + 1e-3 * float(r["adversarial"]) + 0.5 * float(r["pixel"])
                    + 2 * float(r["texture"]))
        assert float(r["perceptual"]) == pytest.approx(expected, rel=1e-5)


def test_content_scale_scales_the_content_loss_by_its_square(data, tmp_path):
    """Same seed, same first batch, same weights: the first content loss scales by content_scale**2."""
    first = {}
    for cs in ("1", "1/2"):
        run_quietly(train_srgan.main, gan_argv(data, tmp_path / cs.replace("/", "_"), "--iterations", "1",
                                               "--content-scale", cs, "--val-data", "", "--precision", "fp32"))
        first[cs] = float(read_log(tmp_path / cs.replace("/", "_") / "srgan_log.csv")[0]["content"])
    assert first["1/2"] == pytest.approx(first["1"] / 4, rel=1e-5)


def test_paper_defaults():
    args = train_srgan.build_parser().parse_args(["--init", "x.pth"])
    assert args.content_scale == pytest.approx(1 / 12.75)
    assert (args.beta, args.pixel_weight, args.texture_weight) == (1e-3, 0.0, 0.0)
    train_srgan.resolve_content_loss(args)
    assert (args.content_loss, args.vgg_i, args.vgg_j, args.vgg_weights) == ("vgg54", 5, 4, "imagenet")
    assert (args.iterations, args.lr, args.lr_schedule) == (200_000, 1e-4, "step")
    assert train_srgan.build_parser().parse_args(["--srresnet-checkpoint", "y.pth"]).init == "y.pth"


@pytest.mark.parametrize("flags, layer", [
    ([], (5, 4)), (["--content-loss", "vgg54"], (5, 4)), (["--content-loss", "vgg22"], (2, 2)),
    (["--content-loss", "vgg22", "--vgg-i", "3"], (3, 2)), (["--vgg-i", "4", "--vgg-j", "1"], (4, 1)),
    (["--content-loss", "mse"], (None, None)),
])
def test_content_loss_presets_and_the_general_form(flags, layer):
    args = train_srgan.build_parser().parse_args(["--init", "x.pth", *flags])
    train_srgan.resolve_content_loss(args)
    assert (args.vgg_i, args.vgg_j) == layer
    assert args.vgg_weights == (None if layer[0] is None else "imagenet")


def test_mse_content_loss_is_the_pixel_mse_and_builds_no_vgg(data, tmp_path, monkeypatch):
    """SRGAN-MSE: no VGG19 is built (so nothing is downloaded); the content term is MSE(SR, HR), equal
    to the optional pixel term computed on the same images; the choice is recorded and kept on resume."""
    def no_vgg(*args, **kwargs):
        raise AssertionError("a VGG19 was built")
    monkeypatch.setattr(models, "TruncatedVGG19", no_vgg)
    argv = gan_argv(data, tmp_path / "ck", "--content-loss", "mse", "--pixel-weight", "1", "--iterations", "3",
                    "--log-every", "1", vgg=False)
    _, out, err = run_quietly(train_srgan.main, argv)
    assert "content loss pixel MSE" in out and "WARNING" not in err
    rows = read_log(tmp_path / "ck" / "srgan_log.csv")
    assert len(rows) == 3
    for r in rows:
        assert float(r["content"]) == float(r["pixel"]) > 0
        assert float(r["perceptual"]) == pytest.approx(2 * float(r["pixel"]) + 1e-3 * float(r["adversarial"]), rel=1e-5)
    latest = tmp_path / "ck" / "srgan_latest.pth"
    recorded = checkpoint.load_checkpoint(latest)["training"]["args"]
    assert (recorded["content_loss"], recorded["vgg_i"], recorded["vgg_weights"]) == ("mse", None, None)
    _, out, _ = run_quietly(train_srgan.main, ["--resume", str(latest), "--iterations", "4"])
    assert "content loss pixel MSE" in out and "iterations 3 -> 4" in out


@pytest.mark.parametrize("extra, message", [
    (["--vgg-i", "0"], "--vgg-i: must be a number >= 1"),
    (["--vgg-i", "6"], "error: --vgg-i 6 --vgg-j 2: VGG19 has no convolution"),  # the layer flags blamed
    (["--beta", "-1"], "--beta: must be a number >= 0.0"),
    (["--pixel-weight", "nan"], "--pixel-weight: must be a number >= 0.0"),
    (["--content-scale", "0"], "--content-scale: must be positive"),
    (["--content-scale", "1/0"], "--content-scale: not a number or fraction"),
    (["--fc-size", "0"], "--fc-size: must be a number >= 1"),
    (["--d-n-blocks", "0"], "--d-n-blocks: must be a number >= 1"),
    (["--lr=-1e-4"], "--lr: must be a positive number"),
    (["--workers", "-2"], "--workers: must be a number >= 0"),
    (["--content-loss", "vgg19"], "--content-loss: invalid choice: 'vgg19'"),
    (["--content-loss", "mse", "--vgg-weights", "random"], "--vgg-weights random: --content-loss mse builds no VGG19"),
    (["--content-loss", "mse", "--vgg-j", "2"], "--vgg-j 2: --content-loss mse builds no VGG19"),
    (["--content-loss", "mse", "--texture-weight", "1"], "--texture-weight 1: the texture loss needs VGG19 features"),
    (["--content-loss", "mse", "--gan-loss", "wgan"], "invalid choice"),
    (["--content-loss", "mse", "--artifact-weight", "-1"], "must be a number >= 0"),
    (["--content-loss", "mse", "--artifact-weight", "nan"], "must be a number >= 0"),
    (["--content-loss", "mse", "--small-kernel-size", "4"], "must be odd"),
    (["--content-loss", "mse", "--d-kernel-size", "2"], "must be odd"),
    (["--content-loss", "mse", "--n-blocks", "100000"], "must be at most 1024"),
    (["--content-loss", "mse", "--d-n-blocks", "40"], "exceeds 4096"),
    (["--content-loss", "mse", "--grid-region", "flat"], "--grid-region flat: the grid loss is off (--grid-weight 0)"),
    (["--content-loss", "mse", "--grid-region", "dark"], "--grid-region: invalid choice: 'dark'"),
])
def test_bad_flags(data, tmp_path, capsys, extra, message):
    """Bad values, content-loss combinations, remedy values and sizes that cannot build: one line, nothing written."""
    init = "--small-kernel-size" not in extra and "--n-blocks" not in extra  # else the --init model's size is wrong
    argv = gan_argv(data, tmp_path / "ck", "--iterations", "2", *extra, init=init, vgg="mse" not in extra)
    line = cli_error(train_srgan.main, argv, capsys)
    assert message in line, line
    assert not (tmp_path / "ck").exists()


# ----------------------------------------------------------------------------------------------
# the step, the remedies


def test_srgan_step_gives_the_two_pass_losses_with_one_discriminator_pass_per_batch():
    """5 steps from one seed: the same losses to 1e-6 (and the same weights) as the two-pass form
    (bench.py's reference), with two discriminator passes per iteration instead of three."""
    torch.manual_seed(0)
    gen, disc = models.Generator(**TINY_G), models.Discriminator(n_channels=8, n_blocks=4, fc_size=16)
    copies = [(gen, disc), (copy.deepcopy(gen), copy.deepcopy(disc))]
    opts = [(training.make_optimizer(g.parameters(), 1e-3), training.make_optimizer(d.parameters(), 1e-3))
            for g, d in copies]
    args = argparse.Namespace(content_scale=1.0, gan_loss="standard", grad_clip=None)
    ctx = training.Context(torch.device("cpu"), "fp32", False)
    scaler = torch.amp.GradScaler("cpu", enabled=False)
    passes = []
    copies[1][1].register_forward_hook(lambda *_: passes.append(1))
    for i in range(5):
        hr = torch.rand(2, 3, 32, 32, generator=torch.Generator().manual_seed(i)) * 2 - 1
        lr = images.convert_image(torch.nn.functional.avg_pool2d(hr, 4), "[-1, 1]", "imagenet-norm")
        old = bench.two_pass_step(*copies[0], *opts[0], lr, hr, 1e-3, ctx)
        step = train_srgan.srgan_step(*copies[1], None, None, *opts[1], scaler, lr, hr,
                                      {"content": 1.0, "adversarial": 1e-3}, args, ctx)
        new = [step["content"].item(), step["adversarial"].item(), step["discriminator"].item()]
        assert new == pytest.approx(old, abs=1e-6), i
    assert len(passes) == 2 * 5
    for a, b in zip([*gen.parameters(), *disc.parameters()], [*copies[1][0].parameters(), *copies[1][1].parameters()]):
        torch.testing.assert_close(a, b, rtol=1e-5, atol=1e-6)


def test_adversarial_losses_standard_and_relativistic():
    real, fake = torch.tensor([[2.0], [0.0]]), torch.tensor([[-1.0], [1.0]])
    sp = torch.nn.functional.softplus  # BCE with logits: -log sigmoid(x) = softplus(-x)
    g, d = train_srgan.adversarial_losses(real, fake, "standard")
    assert g.item() == pytest.approx(sp(-fake).mean().item())
    assert d.item() == pytest.approx((sp(-real).mean() + sp(fake).mean()).item())
    # relativistic: each side against the other's mean logit (real mean 1, fake mean 0)
    g, d = train_srgan.adversarial_losses(real, fake, "relativistic")
    rel_real, rel_fake = real - 0.0, fake - 1.0
    assert d.item() == pytest.approx(((sp(-rel_real).mean() + sp(rel_fake).mean()) / 2).item())
    assert g.item() == pytest.approx(((sp(rel_real).mean() + sp(-rel_fake).mean()) / 2).item())
    # the generator gets a gradient through the HR term only in the relativistic form
    fake.requires_grad_(True)
    g, _ = train_srgan.adversarial_losses(real, fake, "relativistic")
    g.backward()
    assert fake.grad.abs().sum() > 0


def test_artifact_map_loss_weighs_noisy_residuals_and_spares_what_the_average_also_misses():
    hr = torch.zeros(1, 3, 32, 32)
    blurred = hr + 0.2  # a smooth residual: no local variance, no artifact
    assert train_srgan.artifact_map_loss(blurred, hr).item() == pytest.approx(0.0, abs=1e-7)
    noisy = hr + 0.2 * torch.randn(1, 3, 32, 32, generator=torch.Generator().manual_seed(0))
    assert train_srgan.artifact_map_loss(noisy, hr).item() > 1e-4
    # where the moving average is no better, the pixel is not penalised
    assert train_srgan.artifact_map_loss(noisy, hr, sr_ema=noisy).item() == 0.0
    assert train_srgan.artifact_map_loss(noisy, hr, sr_ema=hr).item() == pytest.approx(
        train_srgan.artifact_map_loss(noisy, hr).item())


def test_freeze_bn_keeps_the_generators_statistics_and_remedies_are_recorded(data, tmp_path):
    run_quietly(train_srgan.main, gan_argv(data, tmp_path / "r", "--content-loss", "mse", "--iterations", "3",
                                           "--freeze-bn", "--gan-loss", "relativistic", "--artifact-weight", "1",
                                           "--grid-weight", "100", "--ema", "0.9", "--val-data", "", "--log-every", "1",
                                           vgg=False))
    start = checkpoint.load_checkpoint(data["srresnet"])["model"]["state_dict"]
    ckpt = checkpoint.load_checkpoint(tmp_path / "r" / "srgan_latest.pth")
    after = {k.removeprefix("net."): v for k, v in ckpt["model"]["state_dict"].items()}
    stats = [k for k in start if k.endswith(("running_mean", "running_var"))]
    assert stats and all(torch.equal(start[k], after[k]) for k in stats)
    assert any(not torch.equal(start[k], after[k]) for k in start if k.endswith("weight"))
    recorded = ckpt["training"]["args"]
    assert (recorded["freeze_bn"], recorded["gan_loss"], recorded["artifact_weight"]) == (True, "relativistic", 1.0)
    assert recorded["grid_weight"] == 100.0
    assert {"artifact", "grid"} <= set(read_log(tmp_path / "r" / "srgan_log.csv")[0])


def test_val_artifacts_logs_niqe_and_grid_as_eval_computes_them(data, tmp_path, capsys):
    # NIQE needs 96x96 after the border crop: the fixture's validation images are too small, in one line
    line = cli_error(train_srgan.main, gan_argv(data, tmp_path / "x", "--content-loss", "mse", "--val-artifacts",
                                                "--iterations", "2", vgg=False), capsys)
    assert "too small for NIQE" in line and "remove it from" in line
    big = tmp_path / "Big"
    big.mkdir()
    random_image((112, 120), seed=7).save(big / "b.png")
    lists = tmp_path / "lists"
    create_data_lists.create_data_lists([str(data["root"] / "train")], [str(big)], 32, str(lists), log=lambda *a: None)
    run_quietly(train_srgan.main, gan_argv(data, tmp_path / "r", "--data-folder", lists, "--val-data", "Big",
                                           "--content-loss", "mse", "--val-artifacts", "--iterations", "2",
                                           "--precision", "fp32", "--keep-every", "2", vgg=False))
    row = read_log(tmp_path / "r" / "srgan_log.csv")[-1]
    model = inference.prepare_model(checkpoint.load_model(tmp_path / "r" / "srgan_2.pth"), "cpu", "fp32")
    hr, lr = evaluation.lr_pair(images.open_image(big / "b.png"), 4)
    expected = evaluation.score(evaluation.super_resolve(model, lr, 4, "fp32", "cpu"), hr, 4,
                                metrics.load_niqe_params(), 4)
    assert float(row["val_niqe"]) == pytest.approx(expected["niqe"], rel=1e-6)
    assert row["val_grid"] == "" if expected["grid_flat"] is None else float(row["val_grid"]) == pytest.approx(
        expected["grid_flat"], rel=1e-6)
    assert float(row["val_psnr"]) == pytest.approx(expected["psnr"], rel=1e-6)


def test_grid_loss_sees_a_pattern_at_the_period_and_little_else():
    g = torch.Generator().manual_seed(0)
    hr = torch.rand(2, 3, 96, 96, generator=g) * 2 - 1  # a training crop's size
    assert train_srgan.grid_loss(hr, hr, 4).item() == 0.0
    grid = hr.clone()
    grid[:, :, ::4, ::4] += 0.1  # a dot every 4 pixels: the sub-pixel convolution's checkerboard
    noise = hr + 0.1 * torch.randn(hr.shape, generator=g)  # as strong, but at no period
    assert train_srgan.grid_loss(grid, hr, 4).item() > 20 * train_srgan.grid_loss(noise, hr, 4).item()
    assert train_srgan.grid_loss(grid, hr, 2).item() > 0  # a period-4 pattern shows at period 2 too


def test_grid_loss_over_flat_pixels_reads_only_where_hr_is_flat():
    g = torch.Generator().manual_seed(0)
    hr = torch.full((2, 3, 96, 96), -0.8)  # a dark, flat crop...
    hr[:, :, :, 48:] = torch.rand(2, 3, 96, 48, generator=g) * 2 - 1  # ...whose right half is texture
    dots = torch.zeros_like(hr)
    dots[:, :, ::4, ::4] = 0.05  # a faint checkerboard
    in_flat, in_texture = hr.clone(), hr.clone()
    in_flat[:, :, :, :40] += dots[:, :, :, :40]
    in_texture[:, :, :, 56:] += dots[:, :, :, 56:]
    flat = train_srgan.grid_loss(in_flat, hr, 4, "flat").item()
    assert flat > 100 * train_srgan.grid_loss(in_texture, hr, 4, "flat").item()
    # the whole-image table dilutes the flat half's grid by the texture around it
    assert flat > 3 * train_srgan.grid_loss(in_flat, hr, 4, "all").item()
    assert train_srgan.grid_loss(hr, hr, 4, "flat").item() == 0.0
