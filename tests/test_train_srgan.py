"""train_srgan.py: losses, exact resume, checkpoint checks, VGG weights, learning, load_model.

Everything runs on tiny models (1-block generator with 8 channels, 8-channel discriminator with a
16-wide hidden layer, VGG19 cut at "VGG22" with random weights) and 32x32 crops of synthetic images,
so the file needs no shared data and takes seconds.
"""

import contextlib
import copy
import csv
import io
import math
import shutil

import pytest
import torch

import checkpoint
import images
import create_data_lists
import datasets
import models
import train_srgan
import train_srresnet
import training
import utils
from conftest import random_image

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
    with contextlib.redirect_stderr(io.StringIO()), contextlib.redirect_stdout(io.StringIO()):
        train_srresnet.main(["--data-folder", str(lists), "--crop-size", "32", "--batch-size", "2",
                             "--workers", "0", "--val-data", "Val", "--iterations", "3",
                             "--n-channels", "8", "--n-blocks", "1", "--checkpoint-dir", str(root / "srresnet")])
    return {"root": root, "lists": lists, "srresnet": root / "srresnet" / "srresnet_best.pth",
            "srresnet_latest": root / "srresnet" / "srresnet_latest.pth"}


def gan_argv(data, checkpoint_dir, *extra, init=True):
    """Flags of a tiny, fast SRGAN run."""
    argv = ["--data-folder", str(data["lists"]), "--crop-size", "32", "--batch-size", "2", "--workers", "0",
            "--val-data", "Val", "--vgg-weights", "random", "--vgg-i", "2", "--vgg-j", "2",
            "--d-n-channels", "8", "--fc-size", "16", "--checkpoint-dir", str(checkpoint_dir)]
    if init:
        argv += ["--srresnet-checkpoint", str(data["srresnet"])]
    return argv + [str(x) for x in extra]


def run_quietly(main, argv):
    """main(argv) with stdout and stderr captured; returns (result, stdout, stderr)."""
    out, err = io.StringIO(), io.StringIO()
    with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err):
        result = main(argv)
    return result, out.getvalue(), err.getvalue()


def cli_error(main, argv, capsys):
    """Run a script as the command line does and return its one-line error (it must exit with 2)."""
    with pytest.raises(SystemExit) as exc:
        utils.run_cli(main, argv)
    assert exc.value.code == 2
    err = capsys.readouterr().err.strip()
    last = err.splitlines()[-1]
    assert last.startswith("error: ")  # the whole message on one line
    return last


def assert_identical(a, b, where="checkpoint"):
    """Recursively: tensors torch.equal (same dtype and shape), everything else ==."""
    if isinstance(a, torch.Tensor):
        assert isinstance(b, torch.Tensor) and a.dtype == b.dtype and a.shape == b.shape, where
        assert torch.equal(a, b), where
    elif isinstance(a, dict):
        assert set(a) == set(b), f"{where}: keys {sorted(map(str, a))} vs {sorted(map(str, b))}"
        for k in a:
            assert_identical(a[k], b[k], f"{where}.{k}")
    elif isinstance(a, (list, tuple)):
        assert len(a) == len(b), where
        for i, (x, y) in enumerate(zip(a, b)):
            assert_identical(x, y, f"{where}[{i}]")
    else:
        assert a == b or (isinstance(a, float) and math.isnan(a) and math.isnan(b)), f"{where}: {a!r} != {b!r}"


# ----------------------------------------------------------------------------------------------
# the losses


def test_gram_matrix():
    torch.manual_seed(0)
    f = torch.randn(2, 3, 4, 5)
    g = train_srgan.gram_matrix(f)
    assert g.shape == (2, 3, 3)
    for n in range(2):
        flat = f[n].reshape(3, 20)
        assert torch.allclose(g[n], flat @ flat.T / (3 * 4 * 5), atol=1e-6)
    assert torch.allclose(train_srgan.gram_matrix(torch.ones(1, 2, 2, 2)), torch.full((1, 2, 2), 0.5))


def _tiny_step_setup(seed=0):
    torch.manual_seed(seed)
    g = models.Generator(**TINY_G)
    d = models.Discriminator(n_channels=8, fc_size=16)
    vgg = models.TruncatedVGG19(2, 2, weights=None)
    opt_g = torch.optim.Adam(g.parameters(), lr=1e-3)
    opt_d = torch.optim.Adam(d.parameters(), lr=1e-3)
    return g, d, vgg, opt_g, opt_d


def test_make_step_losses_and_updates():
    """One iteration updates both networks (not the VGG), and every loss term is what its flag says."""
    ctx = training.Context(torch.device("cpu"), "fp32", False)
    torch.manual_seed(1)
    lr_imgs = torch.randn(2, 3, 8, 8)
    hr_imgs = torch.rand(2, 3, 32, 32) * 2 - 1
    results = {}
    for cs in (1.0, 0.5):
        g, d, vgg, opt_g, opt_d = _tiny_step_setup()
        before = [copy.deepcopy(m.state_dict()) for m in (g, d, vgg)]
        scaler = torch.amp.GradScaler("cpu", enabled=False)
        step = train_srgan.make_step(g, d, vgg, opt_g, opt_d, scaler, ctx, beta=1e-3, content_scale=cs,
                                     pixel_weight=0.5, texture_weight=2.0)
        losses = step(lr_imgs, hr_imgs)
        results[cs] = losses
        assert list(losses) == ["perceptual", "content", "adversarial", "pixel", "texture",
                                "discriminator", "d_real", "d_fake"]
        assert all(torch.isfinite(v) and not v.requires_grad for v in losses.values())
        expected = losses["content"] + 1e-3 * losses["adversarial"] + 0.5 * losses["pixel"] + 2.0 * losses["texture"]
        assert torch.allclose(losses["perceptual"], expected)
        for model, old, changed in zip((g, d, vgg), before, (True, True, False)):
            new = model.state_dict()
            assert any(not torch.equal(old[k], new[k]) for k in old) == changed
        assert all(p.grad is None for p in vgg.parameters())
    # the content loss is the MSE of the feature maps multiplied by content_scale (same models, same data)
    assert torch.allclose(results[0.5]["content"], 0.25 * results[1.0]["content"])
    assert torch.equal(results[0.5]["adversarial"], results[1.0]["adversarial"])


def test_optional_terms_off_by_default_and_paper_content_scale():
    args = train_srgan.build_parser().parse_args(["--srresnet-checkpoint", "x.pth"])
    assert args.content_scale == pytest.approx(1 / 12.75)
    assert (args.beta, args.pixel_weight, args.texture_weight) == (1e-3, 0.0, 0.0)
    assert (args.vgg_i, args.vgg_j, args.vgg_weights) == (5, 4, "imagenet")
    assert (args.iterations, args.lr, args.lr_schedule) == (200_000, 1e-4, "step")
    assert train_srgan.build_parser().parse_args(["--content-scale", "1/12.75"]).content_scale == 1 / 12.75
    g, d, vgg, opt_g, opt_d = _tiny_step_setup()
    step = train_srgan.make_step(g, d, vgg, opt_g, opt_d, torch.amp.GradScaler("cpu", enabled=False),
                                 training.Context(torch.device("cpu"), "fp32", False))
    losses = step(torch.randn(2, 3, 8, 8), torch.rand(2, 3, 32, 32) * 2 - 1)
    assert "pixel" not in losses and "texture" not in losses


# ----------------------------------------------------------------------------------------------
# set-up


def test_generator_starts_from_the_srresnet_with_its_size(data, monkeypatch):
    """The generator gets the SRResNet's size (no size flags needed) and weights; D the flags' size."""
    captured = {}

    def fake_train(run, args, ctx, start, best):
        captured.update(run=run, start=start)
        return {}
    monkeypatch.setattr(training, "train", fake_train)
    run_quietly(train_srgan.main, gan_argv(data, data["root"] / "unused", "--d-n-blocks", "4"))
    run = captured["run"]
    srresnet = checkpoint.load_model(data["srresnet"])
    assert isinstance(run.models["model"], models.Generator)
    assert run.models["model"].args == srresnet.args == TINY_G
    assert_identical(run.models["model"].net.state_dict(), srresnet.state_dict())
    assert run.models["discriminator"].args == dict(kernel_size=3, n_channels=8, n_blocks=4, fc_size=16)
    assert captured["start"] == 0
    assert not (data["root"] / "unused").exists()


@pytest.mark.parametrize("extra, match", [
    (["--n-blocks", "2"], "n_blocks=1, but --n-blocks is 2"),
    (["--n-channels", "16"], "n_channels=8, but --n-channels is 16"),
    (["--scaling-factor", "2"], "trained for x4, but --scaling-factor is 2"),
])
def test_srresnet_checkpoint_of_another_size_or_scale(data, tmp_path, capsys, extra, match):
    """A one-line error before any training: nothing is written."""
    line = cli_error(train_srgan.main, gan_argv(data, tmp_path / "ck", *extra, "--iterations", "2"), capsys)
    assert match in line and str(data["srresnet"]) in line
    assert not (tmp_path / "ck").exists()


def test_missing_or_bad_srresnet_checkpoint(data, tmp_path, capsys):
    with pytest.raises(SystemExit) as exc:  # argparse error: exit 2 with the usage line
        train_srgan.main(gan_argv(data, tmp_path / "ck", init=False))
    assert exc.value.code == 2
    assert "--srresnet-checkpoint PATH is required" in capsys.readouterr().err
    line = cli_error(train_srgan.main, gan_argv(data, tmp_path / "ck", init=False) +
                     ["--srresnet-checkpoint", str(tmp_path / "nope.pth")], capsys)
    assert "no such file" in line
    assert not (tmp_path / "ck").exists()


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


# ----------------------------------------------------------------------------------------------
# training, checkpoints, resume


@pytest.fixture(scope="module")
def trained(data):
    """A 40-iteration SRGAN run (log every iteration); returns its folder and what it printed."""
    ck = data["root"] / "gan40"
    result, out, err = run_quietly(train_srgan.main, gan_argv(data, ck, "--iterations", "40", "--log-every", "1"))
    return {"dir": ck, "result": result, "stdout": out, "stderr": err}


def test_random_vgg_prints_a_loud_warning(trained):
    assert "WARNING: --vgg-weights random" in trained["stderr"]
    assert "NOT an SRGAN" in trained["stderr"]


def test_losses_finite_and_discriminator_learns(trained, data):
    rows = list(csv.DictReader(open(trained["dir"] / "srgan_log.csv")))
    assert [int(r["iteration"]) for r in rows] == list(range(1, 41))
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


def test_load_model_on_srgan_checkpoints(trained):
    for name in ("srgan_best.pth", "srgan_latest.pth"):
        model = checkpoint.load_model(trained["dir"] / name)
        assert isinstance(model, models.Generator) and model.args == TINY_G and not model.training
        with torch.no_grad():
            out = model(torch.randn(1, 3, 10, 7))
        assert out.shape == (1, 3, 40, 28)
    best = checkpoint.load_checkpoint(trained["dir"] / "srgan_best.pth")
    assert best["info"]["script"] == "train_srgan.py" and best["info"]["iteration"] == 40
    assert "training" not in best and "discriminator" not in best
    latest = checkpoint.load_checkpoint(trained["dir"] / "srgan_latest.pth")
    assert latest["discriminator"]["arch"] == "Discriminator"
    assert set(latest["training"]["optimizers"]) == {"optimizer_g", "optimizer_d"}
    assert set(latest["training"]["schedulers"]) == {"scheduler_g", "scheduler_d"}


def test_exact_resume(data, tmp_path, monkeypatch):
    """6 iterations straight == 3, then --resume for 3 more: bit-identical G, D, optimizers, schedulers,
    scaler and RNG. The lr step (x0.1) falls at iteration 3, exactly at the resume point."""
    saved = {}
    save = checkpoint.save_checkpoint

    def keep_copies(obj, path):  # keep the training checkpoint of every save, by iteration
        save(obj, path)
        if "training" in obj:
            copy_path = tmp_path / f"iteration{obj['training']['iteration']}.pth"
            shutil.copyfile(path, copy_path)
            saved[obj["training"]["iteration"]] = copy_path
    monkeypatch.setattr(checkpoint, "save_checkpoint", keep_copies)
    extra = ["--iterations", "6", "--save-every", "3", "--pixel-weight", "0.1", "--texture-weight", "1"]
    run_quietly(train_srgan.main, gan_argv(data, tmp_path / "straight", *extra))
    assert sorted(saved) == [3, 6]
    straight = checkpoint.load_checkpoint(tmp_path / "straight" / "srgan_latest.pth")
    _, out, _ = run_quietly(train_srgan.main, gan_argv(data, tmp_path / "resumed", *extra, "--resume", saved[3],
                                                       init=False))
    assert "iterations 3 -> 6" in out
    resumed = checkpoint.load_checkpoint(tmp_path / "resumed" / "srgan_latest.pth")
    assert resumed["training"]["iteration"] == straight["training"]["iteration"] == 6
    for ckpt in (straight, resumed):
        del ckpt["training"]["args"]  # differs by design (--checkpoint-dir, --resume)
    assert straight["training"]["schedulers"]["scheduler_g"]["_last_lr"] == [pytest.approx(1e-5)]
    assert_identical(straight, resumed)
    # and the resumed run did train: its weights differ from those it resumed from
    start = checkpoint.load_checkpoint(saved[3])
    assert not torch.equal(start["model"]["state_dict"]["net.conv_block1.conv_block.0.weight"],
                           resumed["model"]["state_dict"]["net.conv_block1.conv_block.0.weight"])


def test_resume_refuses_the_other_scripts_checkpoint(data, trained, tmp_path, capsys):
    line = cli_error(train_srgan.main, gan_argv(data, tmp_path / "a", "--iterations", "50", "--resume",
                                                data["srresnet_latest"], init=False), capsys)
    assert "train_srresnet.py" in line and "cannot resume train_srgan.py" in line
    line = cli_error(train_srresnet.main, ["--data-folder", str(data["lists"]), "--crop-size", "32",
                                           "--workers", "0", "--checkpoint-dir", str(tmp_path / "b"),
                                           "--resume", str(trained["dir"] / "srgan_latest.pth")], capsys)
    assert "train_srgan.py" in line and "cannot resume train_srresnet.py" in line
    assert not (tmp_path / "a").exists() and not (tmp_path / "b").exists()


def test_resume_keeps_the_checkpoint_sizes(data, trained, tmp_path, capsys):
    """On --resume the sizes come from the file; a size flag that disagrees is a one-line error."""
    resume = ["--resume", trained["dir"] / "srgan_latest.pth", "--iterations", "50"]
    line = cli_error(train_srgan.main, gan_argv(data, tmp_path / "a", *resume, "--d-n-channels", "16",
                                                init=False), capsys)
    assert "n_channels=8, but --d-n-channels is 16" in line
    line = cli_error(train_srgan.main, gan_argv(data, tmp_path / "a", *resume, "--scaling-factor", "2",
                                                init=False), capsys)
    assert "trained for x4" in line
    assert not (tmp_path / "a").exists()


def test_one_grad_scaler_serves_both_optimizers():
    """With an enabled scaler (fp16's set-up) and gradient clipping, each step scales both losses,
    unscales and steps each optimizer once, and updates the scaler once."""
    g, d, vgg, opt_g, opt_d = _tiny_step_setup()
    scaler = torch.amp.GradScaler("cpu", init_scale=2.0**10, growth_interval=2)
    ctx = training.Context(torch.device("cpu"), "fp32", False)
    step = train_srgan.make_step(g, d, vgg, opt_g, opt_d, scaler, ctx, grad_clip=1e-3)
    before = [copy.deepcopy(m.state_dict()) for m in (g, d)]
    for _ in range(2):
        losses = step(torch.randn(2, 3, 8, 8), torch.rand(2, 3, 32, 32) * 2 - 1)
        assert all(torch.isfinite(v) for v in losses.values())
    assert scaler.get_scale() == 2.0**11  # 2 finite steps with growth_interval 2: one update per iteration
    for model, old in zip((g, d), before):
        assert any(not torch.equal(old[k], v) for k, v in model.state_dict().items())
        # the gradients were unscaled before clipping: every one lies within [-1e-3, 1e-3]
        assert all(p.grad.abs().max() <= 1e-3 for p in model.parameters() if p.grad is not None)


def test_resume_takes_sizes_from_the_file_and_notes_changed_settings(data, trained, monkeypatch):
    captured = {}
    monkeypatch.setattr(training, "train", lambda run, args, ctx, start, best: captured.update(run=run, start=start))
    argv = ["--data-folder", str(data["lists"]), "--crop-size", "32", "--batch-size", "2", "--workers", "0",
            "--vgg-weights", "random", "--vgg-i", "2", "--vgg-j", "2", "--checkpoint-dir", str(trained["dir"]),
            "--resume", str(trained["dir"] / "srgan_latest.pth"), "--iterations", "60", "--beta", "0.01"]
    _, _, err = run_quietly(train_srgan.main, argv)  # no size flags at all
    run = captured["run"]
    assert captured["start"] == 40
    assert run.models["model"].args == TINY_G
    assert run.models["discriminator"].args == dict(kernel_size=3, n_channels=8, n_blocks=8, fc_size=16)
    assert "--beta 0.001 -> 0.01" in err and "--iterations 40 -> 60" in err
