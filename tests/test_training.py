"""training.py's own rules, without running a training loop: the flag policy on --resume, the
schedules, log pruning on resume, which checkpoint counts as the best, and when a step saves."""

import argparse
import shutil

import pytest
import torch

import checkpoint
import datasets
import models
import train_srgan
import train_srresnet
import training
import utils
from conftest import (
    ROOT,
    TINY,
    Killed,
    assert_ema_step,
    assert_identical,
    cli_error,
    load_script,
    read_log,
    sigint_at,
)


@pytest.fixture
def run_checkpoint(tmp_path):
    """A training checkpoint of train_srresnet.py written by save_training_checkpoint, as after
    iteration 7 of a run with --lr 3e-4 --crop-size 24 --seed 5."""
    args = train_srresnet.build_parser().parse_args(["--lr", "3e-4", "--crop-size", "24", "--seed", "5",
                                                     "--checkpoint-dir", str(tmp_path)])
    training.record_sizes(args, TINY)
    model = models.SRResNet(**TINY)
    optimizer = training.make_optimizer(model.parameters(), args.lr)
    scheduler = training.make_scheduler(optimizer, "constant", args.iterations)
    path = tmp_path / "srresnet_latest.pth"
    training.save_training_checkpoint(path, "srresnet", 7, 25.5, args, {"model": model}, {"optimizer": optimizer},
                                      {"scheduler": scheduler}, torch.amp.GradScaler("cpu", enabled=False))
    return path


def parse(argv):
    return training.parse_args(train_srresnet.build_parser(), [str(a) for a in argv], "srresnet")


def test_resume_takes_the_runs_settings_and_applies_the_adjustable_ones(run_checkpoint):
    args, resume = parse(["--resume", run_checkpoint])
    assert (args.lr, args.crop_size, args.seed, args.n_channels) == (3e-4, 24, 5, TINY["n_channels"])
    assert resume["training"]["iteration"] == 7 and args.resume_notes == []
    args, _ = parse(["--resume", run_checkpoint, "--lr", "1e-5", "--val-every", "3", "--val-precision", "bf16"])
    assert (args.lr, args.val_every, args.val_precision) == (1e-5, 3, "bf16")
    assert {key for key, _, _ in args.resume_notes} == {"lr", "val_every", "val_precision"}
    args, _ = parse(["--resume", run_checkpoint, "--lr", "3e-4"])  # the run's own value: nothing to announce
    assert args.resume_notes == []


def test_resume_and_init_together_and_too_few_iterations(run_checkpoint):
    with pytest.raises(utils.UserError, match="give one of them"):
        parse(["--resume", run_checkpoint, "--init", run_checkpoint])
    with pytest.raises(utils.UserError, match="already at iteration 7"):
        parse(["--resume", run_checkpoint, "--iterations", "7"])


def test_both_parsers_agree_with_the_resume_lists_and_the_models_scales():
    """What may change on resume is a real flag of both scripts; --scaling-factor offers models.SCALES."""
    for build in (train_srresnet.build_parser, train_srgan.build_parser):
        actions = {a.dest: a for a in build()._actions}
        assert set(training.ADJUSTABLE_ON_RESUME) <= set(actions)
        assert set(training.NOT_RECORDED) - {"resume_notes"} <= set(actions)
        assert tuple(actions["scaling_factor"].choices) == models.SCALES


@pytest.mark.parametrize("schedule, factors", [
    ("constant", [1, 1, 1, 1]), ("step", [1, 1, 0.1, 0.1]), ("cosine", [1, None, 0.5, 0]),
])
def test_schedules(schedule, factors):
    optimizer = torch.optim.SGD([torch.zeros(1, requires_grad=True)], lr=1.0)
    scheduler = training.make_scheduler(optimizer, schedule, 4)
    seen = []
    for _ in range(4):
        seen.append(scheduler.get_last_lr()[0])
        optimizer.step()
        scheduler.step()
    seen[-1] = scheduler.get_last_lr()[0] if schedule == "cosine" else seen[-1]
    for got, want in zip(seen, factors):
        if want is not None:
            assert got == pytest.approx(want, abs=1e-9), (schedule, seen)
    if schedule == "cosine":
        assert seen == sorted(seen, reverse=True)


def test_csv_log_drops_rows_after_the_resumed_iteration(tmp_path):
    path = tmp_path / "log.csv"
    fields = ["iteration", "loss"]
    log = training.CsvLog(str(path), fields)
    for i in range(1, 8):
        log.write({"iteration": i, "loss": 1 / i})
    log.close()
    log = training.CsvLog(str(path), fields, resume_iteration=4)  # the checkpoint was at 4; 5-7 were after it
    log.write({"iteration": 5, "loss": 0.5})
    log.close()
    assert [line.split(",")[0] for line in path.read_text().splitlines()] == ["iteration", "1", "2", "3", "4", "5"]
    training.CsvLog(str(path), fields)  # a new run in the folder starts a new log
    assert not path.exists()


def test_best_psnr_so_far_takes_the_newer_best_file(tmp_path):
    best = tmp_path / "best.pth"
    assert training.Run.best_psnr_so_far(str(best), 25.0) == 25.0  # no file yet
    training.save_best(str(best), models.SRResNet(**TINY), {"val_psnr": 26.5})
    assert training.Run.best_psnr_so_far(str(best), 25.0) == 26.5
    assert training.Run.best_psnr_so_far(str(best), 27.0) == 27.0
    best.write_bytes(b"broken")
    assert training.Run.best_psnr_so_far(str(best), 25.0) == 25.0


def test_which_iterations_check():
    args = argparse.Namespace(iterations=100, log_every=10, save_every=25, val_every=0, keep_every=40)
    due = [i for i in range(1, 101) if training.Run.checks_at(i, args, 1, False)]
    assert due == sorted(set(range(10, 101, 10)) | {25, 75}) and training.due(5, 0) is False
    assert training.Run.checks_at(3, args, 1, True)  # a Ctrl-C is acted on at the next iteration
    assert not training.Run.checks_at(3, args, 2, True)  # a torchrun job: at the next log step


def test_is_good_sees_non_finite_weights():
    model = models.SRResNet(**TINY)
    ctx = training.Context(torch.device("cpu"), "fp32", False)
    lr = torch.randn(1, 3, 8, 8)
    assert training.Run.is_good(model, lr, ctx)
    with torch.no_grad():
        model.conv_block1.conv_block[0].weight[0, 0, 0, 0] = float("nan")
    assert not training.Run.is_good(model, lr, ctx)
    assert checkpoint.unwrap_model(model) is model


@pytest.mark.parametrize("flags, expected", [([], True), (["--precision", "fp32"], True),
                                             (["--no-channels-last"], False)])
def test_a_cpu_trains_channels_last_by_default_in_any_precision(monkeypatch, flags, expected):
    monkeypatch.setattr(utils, "keep_freed_memory", lambda: False)  # it would change this process's malloc
    args, _ = parse(["--device", "cpu", *flags])
    with training.distributed(args) as ctx:
        assert ctx.channels_last is expected


def test_every_recipe_parses_and_names_the_shipped_model_it_makes():
    """recipes/<model>.txt are argparse @files of the training scripts (comments allowed): each one
    parses with its script's flags and says which shipped checkpoint it makes."""
    recipes = sorted((ROOT / "recipes").glob("*_x4.txt"))
    assert {p.stem for p in recipes} >= {"srresnet_x4", "srgan_mse_x4"}
    for path in recipes:
        script = train_srgan if path.stem.startswith("srgan") else train_srresnet
        args = script.build_parser().parse_args([f"@{path}"])
        assert args.iterations > 0 and args.checkpoint_dir.startswith("runs/"), path
        assert f"checkpoints/{path.stem}.pth" in path.read_text().splitlines()[0], path


# ----------------------------------------------------------------------------------------------
# both scripts, on the saved runs of tests/fixtures/resume (tiny models, 4 images of 64x64) or on
# whole tiny runs on conftest's data_lists (validated on its 'Val' list)

FIXTURE = ROOT / "tests" / "fixtures" / "resume"


def main_of(script):
    return {"srresnet": train_srresnet.main, "srgan": train_srgan.main}[script]


def tiny_run(script, data_lists, folder, *extra, sized=True):
    """Flags of a tiny run of either script; the SRGAN starts from the fixture's SRResNet (MSE content).
    sized=False: no size flags (the size comes from the --init file)."""
    argv = ["--data-folder", data_lists, "--checkpoint-dir", folder, "--val-data", "Val", "--crop-size", "24",
            "--batch-size", "2", "--workers", "0",
            *(["--n-channels", "8", "--n-blocks", "1", "--large-kernel-size", "3"] if sized else [])]
    if script == "srgan":
        argv += ["--init", FIXTURE / "srresnet_iteration2.pth", "--content-loss", "mse", "--d-n-channels", "8",
                 "--d-n-blocks", "2", "--fc-size", "16"]
    return [str(a) for a in [*argv, *extra]]


SCRIPTS = pytest.mark.parametrize("script", ["srresnet", "srgan"])


@SCRIPTS
def test_a_run_saved_by_an_earlier_version_resumes_as_that_version_went_on(script, tmp_path, monkeypatch):
    """tests/fixtures/resume holds iteration 2 of a tiny run of each script (with --ema, and the SRGAN
    with its optional losses), saved by the code before training.Run, and that code's log of
    iterations 1-4 (README.md there says how they were made). Today's code resumes it: in one go or
    stopped half-way, the same bits; and the losses of iterations 3-4 are the ones that code logged
    (to float noise: another CPU may round differently)."""
    monkeypatch.chdir(ROOT)  # the run's data list names its images from the repo root
    main = main_of(script)
    saved = {}
    for name, stops in (("whole", [4]), ("split", [3, 4])):
        folder = tmp_path / name
        folder.mkdir()
        shutil.copy(FIXTURE / f"{script}_iteration2.pth", folder / f"{script}_latest.pth")
        for stop in stops:
            main(["--resume", str(folder / f"{script}_latest.pth"), "--iterations", str(stop)])
        saved[name] = checkpoint.load_checkpoint(folder / f"{script}_latest.pth")
        rows, expected = read_log(folder / f"{script}_log.csv"), read_log(FIXTURE / f"{script}_log.csv")[2:]
        assert [r["iteration"] for r in rows] == ["3", "4"]
        for row, old in zip(rows, expected):
            for key, value in old.items():
                assert (float(row[key]) == pytest.approx(float(value), rel=1e-4, abs=1e-7) if value
                        else row[key] == ""), (key, row, old)
    whole, split = saved["whole"], saved["split"]
    assert whole["training"]["iteration"] == 4
    for entry in ("model", "ema", "discriminator") if script == "srgan" else ("model", "ema"):
        assert_identical(whole[entry]["state_dict"], split[entry]["state_dict"], entry)
    for entry in ("optimizers", "schedulers", "rng"):
        assert_identical(whole["training"][entry], split["training"][entry], entry)


@pytest.mark.parametrize("script, flag", [
    *[("srresnet", f) for f in (["--crop-size", "48"], ["--batch-size", "3"], ["--seed", "7"], ["--n-blocks", "2"],
                                ["--n-channels", "16"], ["--scaling-factor", "2"], ["--lr-schedule", "cosine"],
                                ["--pixel-loss", "l1"], ["--precision", "bf16"], ["--augment"], ["--val-data", "Val"],
                                ["--data-folder", "elsewhere"], ["--grad-clip", "1"])],
    *[("srgan", f) for f in (["--beta", "0.01"], ["--content-scale", "1"], ["--d-n-channels", "16"],
                             ["--content-loss", "vgg54"], ["--vgg-weights", "imagenet"], ["--texture-weight", "1"],
                             ["--freeze-bn"], ["--gan-loss", "relativistic"], ["--artifact-weight", "2"],
                             ["--grid-weight", "0"], ["--grid-region", "flat"], ["--crop-size", "64"])]])
def test_a_flag_that_would_make_another_run_is_refused_on_resume(script, flag, tmp_path, capsys):
    """One line naming the flag, the run's own value ('' shown as none) and what to do; nothing written."""
    latest = tmp_path / f"{script}_latest.pth"
    latest.write_bytes((FIXTURE / f"{script}_iteration2.pth").read_bytes())
    line = cli_error(main_of(script), ["--resume", latest, "--iterations", "9", *flag], capsys)
    recorded = checkpoint.load_checkpoint(latest)["training"]["args"][flag[0][2:].replace("-", "_")]
    shown = "'' (none)" if recorded in ("", None) else recorded
    assert line.startswith(f"error: {flag[0]} ") and f"the run in {latest} has {shown}; changing it would make " \
        f"another run (start one with --init {latest}, or drop the flag)" in line, line
    assert latest.read_bytes() == (FIXTURE / f"{script}_iteration2.pth").read_bytes()
    assert sorted(p.name for p in tmp_path.iterdir()) == [latest.name]


@SCRIPTS
def test_nan_stops_the_run_and_the_named_checkpoint_is_good(script, tmp_path, data_lists, capsys):
    """NaN injected through the trained model (a forward hook, training mode, from its 4th call): the
    run stops with one line naming the checkpoint of iteration 3, whose model gives finite outputs; so
    does a resume of it, which has written no checkpoint yet."""
    calls, trained = {"n": 0}, {"srresnet": models.SRResNet, "srgan": models.Generator}[script]

    def poison(module, inputs, output):
        if type(module) is trained and module.training:  # (the Generator holds an SRResNet)
            calls["n"] += 1
            if calls["n"] >= 4:
                return output * float("nan")
    argv = tiny_run(script, data_lists, tmp_path / "ck", "--iterations", "10", "--save-every", "1", "--val-data", "")
    latest = tmp_path / "ck" / f"{script}_latest.pth"
    handle = torch.nn.modules.module.register_module_forward_hook(poison)
    try:
        line = cli_error(main_of(script), argv, capsys)
        resumed = cli_error(main_of(script), ["--resume", latest], capsys)
    finally:
        handle.remove()
    for text in (line, resumed):
        assert f"NaN or infinite by iteration 4; stopped. The last good checkpoint is {latest} (iteration 3)" in text
    assert checkpoint.load_checkpoint(latest)["training"]["iteration"] == 3
    with torch.no_grad():
        assert torch.isfinite(checkpoint.load_model(latest)(torch.randn(1, 3, 12, 12))).all()


@pytest.mark.parametrize("script, extra, store", [
    ("srresnet", [], False),
    ("srresnet", ["--ema", "0.9"], False),
    ("srresnet", ["--augment"], True),
    ("srresnet", ["--workers", "2"], True),
    ("srgan", ["--ema", "0.9", "--content-loss", "vgg22", "--vgg-weights", "random", "--pixel-weight", "0.1",
               "--texture-weight", "1"], False),
])
def test_the_readme_resume_command_continues_an_interrupted_run_exactly(script, extra, store, tmp_path, data_lists,
                                                                         monkeypatch, capsys):
    """A run with non-default settings, SIGINT at iteration 5, then `--resume PATH` alone (the README's
    command): the weights (the discriminator's, the --ema average), optimizers, schedules, scaler, RNG
    and log equal the uninterrupted run's, bit for bit. (The SRGAN's random VGG19 is rebuilt the same.)
    store: the interrupted run reads the decoded store (create_data_lists.py --store), in this process
    or in loader workers; the uninterrupted run decoded each image: the same batches."""
    run = ["--iterations", "9", "--lr-schedule", "cosine", "--lr", "3e-4", "--log-every", "1", "--save-every", "4",
           "--val-every", "3", "--seed", "3", "--precision", "bf16", *extra]
    main = main_of(script)
    main(tiny_run(script, data_lists, tmp_path / "straight", *run))
    if store:
        datasets.write_store(datasets.list_path(str(data_lists), "train"), log=lambda *a: None)
    with monkeypatch.context() as m:
        sigint_at(m, 5)
        with pytest.raises(KeyboardInterrupt):
            main(tiny_run(script, data_lists, tmp_path / "split", *run))
    latest = tmp_path / "split" / f"{script}_latest.pth"
    assert checkpoint.load_checkpoint(latest)["training"]["iteration"] == 5
    capsys.readouterr()
    main(["--resume", str(latest)])
    assert "iterations 5 -> 9" in capsys.readouterr().out
    a = checkpoint.load_checkpoint(tmp_path / "straight" / f"{script}_latest.pth")
    b = checkpoint.load_checkpoint(latest)
    assert b["training"]["iteration"] == 9 and ("ema" in b) == ("--ema" in extra)
    assert b["training"]["args"]["lr_schedule"] == "cosine" and b["training"]["args"]["crop_size"] == 24
    for ckpt in (a, b):
        assert ckpt["training"]["args"].pop("checkpoint_dir")  # the one setting that differs
    assert_identical(a, b)
    log = read_log(tmp_path / "split" / f"{script}_log.csv")
    assert log == read_log(tmp_path / "straight" / f"{script}_log.csv") and len(log) == 9


@SCRIPTS
@pytest.mark.parametrize("where", ["before the row", "after the checkpoint"])
def test_a_kill_around_a_save_loses_no_log_row(script, where, tmp_path, data_lists, monkeypatch):
    """Iteration 6 validates, logs and saves; a run killed just before its log row, or just after its
    checkpoint, still ends with one row per iteration once resumed. (The checkpoint used to be saved
    before the row: a kill in between lost row 6 for good.)"""
    ck = tmp_path / "ck"
    real_log_row, real_save = training.Run.log_row, training.save_training_checkpoint

    def log_row(run, row):
        if where == "before the row" and row["iteration"] == 6:
            raise Killed
        real_log_row(run, row)

    def save(path, kind, iteration, *args, **kwargs):
        real_save(path, kind, iteration, *args, **kwargs)
        if where == "after the checkpoint" and iteration == 6:
            raise Killed

    with monkeypatch.context() as m:
        m.setattr(training.Run, "log_row", log_row)
        m.setattr(training, "save_training_checkpoint", save)
        with pytest.raises(Killed):
            main_of(script)(tiny_run(script, data_lists, ck, "--iterations", "8", "--val-every", "3",
                                     "--save-every", "3", "--log-every", "1"))
    saved = checkpoint.load_checkpoint(ck / f"{script}_latest.pth")["training"]["iteration"]
    assert saved == (3 if where == "before the row" else 6)
    main_of(script)(["--resume", str(ck / f"{script}_latest.pth")])
    rows = read_log(ck / f"{script}_log.csv")
    assert [int(r["iteration"]) for r in rows] == list(range(1, 9))
    assert [int(r["iteration"]) for r in rows if r["val_psnr"]] == [3, 6, 8]


@SCRIPTS
def test_ema_averages_the_trained_weights_and_is_the_model_validated_and_kept(script, tmp_path, data_lists):
    """--ema 0.75 from the --init weights W0: after each step E = 0.75 E + 0.25 W (E starts at W0, and
    goes on at a resume); the trained weights are those of a run without --ema; the snapshots and the
    best file hold E. Validation is eval.py's path (fp32 by default, whatever the training precision):
    the best file's record and the logged best are eval.py's PSNR of that file."""
    def weights(path, entry="model"):
        return checkpoint.load_checkpoint(path)[entry]["state_dict"]

    start = FIXTURE / "srresnet_iteration2.pth"
    run = ["--init", start, "--lr", "1e-3", "--lr-schedule", "constant", "--keep-every", "1", "--log-every", "1",
           "--precision", "bf16"]
    main, ck = main_of(script), tmp_path / "ck"
    main(tiny_run(script, data_lists, tmp_path / "plain", "--iterations", "2", *run))
    main(tiny_run(script, data_lists, ck, "--iterations", "1", *run, "--ema", "0.75"))
    latest = ck / f"{script}_latest.pth"
    prefix = "net." if script == "srgan" else ""  # the Generator holds an SRResNet
    ema1, w1 = weights(latest, "ema"), weights(latest)
    assert_ema_step(ema1, {prefix + k: v for k, v in weights(start).items()}, w1, 0.75)
    assert any(not torch.equal(ema1[k], w1[k]) for k in w1)
    assert checkpoint.load_checkpoint(latest)["ema"]["arch"] == checkpoint.load_checkpoint(latest)["model"]["arch"]
    main(["--resume", str(latest), "--iterations", "2"])
    ema2, w2 = weights(latest, "ema"), weights(latest)
    assert_ema_step(ema2, ema1, w2, 0.75)
    assert_identical(w2, weights(tmp_path / "plain" / f"{script}_latest.pth"))  # training is not changed
    for iteration, ema in ((1, ema1), (2, ema2)):
        snapshot = checkpoint.load_checkpoint(ck / f"{script}_{iteration}.pth")
        assert snapshot["info"]["ema"] == 0.75
        assert_identical(snapshot["model"]["state_dict"], ema)
    best = checkpoint.load_checkpoint(ck / f"{script}_best.pth")  # validated at iterations 1 and 2
    assert (best["info"]["ema"], best["info"]["precision"], best["info"]["val_precision"]) == (0.75, "bf16", "fp32")
    logged = max(float(r["val_psnr"]) for r in read_log(ck / f"{script}_log.csv") if r["val_psnr"])
    assert abs(best["info"]["val_psnr"] - logged) < 1e-6
    assert_identical(best["model"]["state_dict"], {1: ema1, 2: ema2}[best["info"]["iteration"]])
    results = load_script("eval").main(["--checkpoint", str(ck / f"{script}_best.pth"),
                                        "--test-folders", str(data_lists / "Val_test_images.json")])
    assert abs(results[f"{script}_best.pth"]["Val"]["psnr"] - best["info"]["val_psnr"]) < 1e-6  # E was judged


@SCRIPTS
def test_flags_given_with_resume_apply_and_are_announced(script, tmp_path, data_lists, capsys):
    """--lr (to every optimizer, from the next iteration), --iterations, --save-every; the run's own
    values of fixed settings pass."""
    ck = tmp_path / "ck"
    main_of(script)(tiny_run(script, data_lists, ck, "--iterations", "6", "--lr", "2e-4", "--lr-schedule", "constant",
                             "--log-every", "1", "--val-data", ""))
    before, latest = read_log(ck / f"{script}_log.csv"), ck / f"{script}_latest.pth"
    capsys.readouterr()
    main_of(script)(["--resume", str(latest), "--iterations", "9", "--lr", "5e-5", "--save-every", "2",
                     "--n-blocks", "1", "--crop-size", "24"])
    err = capsys.readouterr().err
    assert "resume: --lr 5e-05: the base learning rate changes from 0.0002 to 5e-05" in err
    assert "resume: --iterations 9: the run now ends at iteration 9 instead of 6" in err
    assert "resume: --save-every 2" in err
    rows = read_log(ck / f"{script}_log.csv")
    assert rows[:6] == before
    assert [float(r["lr"]) for r in rows] == [2e-4] * 6 + [5e-5] * 3  # really applied to the optimizers
    ckpt = checkpoint.load_checkpoint(latest)
    assert ckpt["training"]["iteration"] == 9 and ckpt["training"]["args"]["lr"] == 5e-5
    optimizers = ckpt["training"]["optimizers"].values()
    assert len(optimizers) == (2 if script == "srgan" else 1)
    assert all(o["param_groups"][0]["lr"] == 5e-5 for o in optimizers)


@SCRIPTS
def test_bad_resume_checkpoints_are_named_in_one_line(script, tmp_path, capsys):
    good = FIXTURE / f"{script}_iteration2.pth"
    other = FIXTURE / ("srgan_iteration2.pth" if script == "srresnet" else "srresnet_iteration2.pth")
    inference = tmp_path / "inference.pth"
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(models.SRResNet(**TINY)), inference)
    (tmp_path / "truncated.pth").write_bytes(good.read_bytes()[:5000])
    paths = {"inference-only": inference, "truncated": tmp_path / "truncated.pth", "the other script's": other}
    for name, change in {
            "no optimizers": lambda c: c["training"].pop("optimizers"),
            "format_version text": lambda c: c.update(format_version="one"),
            "training not a dict": lambda c: c.update(training=[1, 2]),
            "model not a dict": lambda c: c.update(model=3),
            "args missing": lambda c: c["training"].pop("args"),
            "optimizers of another model": lambda c: c["training"]["optimizers"].update(
                {k: {"state": {}, "param_groups": []} for k in c["training"]["optimizers"]}),
            "ema not a model": lambda c: c.update(ema={"arch": "SRResNet"}),
            "ema of another size": lambda c: c.update(ema=checkpoint.model_spec(
                models.SRResNet(**{**TINY, "n_blocks": 1, "n_channels": 4})))}.items():
        ckpt = checkpoint.load_checkpoint(good)
        change(ckpt)
        paths[name] = tmp_path / f"{name.replace(' ', '_')}.pth"
        torch.save(ckpt, paths[name])
    for name, path in paths.items():
        line = cli_error(main_of(script), ["--resume", path, "--iterations", "5", "--checkpoint-dir", tmp_path / "out"],
                         capsys)
        assert str(path) in line, (name, line)
        if name == "the other script's":
            other = "srgan" if script == "srresnet" else "srresnet"
            assert f"train_{other}.py" in line and f"cannot resume train_{script}.py" in line, line
        assert not (tmp_path / "out").exists(), name


@SCRIPTS
def test_init_starts_a_new_run_from_the_files_weights_and_size(script, tmp_path, data_lists):
    """No size flags: the model takes the --init file's size and weights (the SRGAN's discriminator the
    flags' size); the iteration and the optimizers start afresh."""
    torch.manual_seed(5)
    source = models.SRResNet(**{**TINY, "n_blocks": 2, "n_channels": 12})
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(source, {"note": "shipped-like"}), tmp_path / "m.pth")
    main_of(script)(tiny_run(script, data_lists, tmp_path / "ck", "--iterations", "2", "--val-data", "", "--init",
                             tmp_path / "m.pth", "--lr", "1e-12", "--precision", "fp32",
                             *(["--d-n-blocks", "4"] if script == "srgan" else []), sized=False))
    ckpt = checkpoint.load_checkpoint(tmp_path / "ck" / f"{script}_latest.pth")
    assert ckpt["model"]["args"] == source.args and ckpt["training"]["args"]["n_blocks"] == 2
    assert ckpt["training"]["iteration"] == 2
    assert all(int(o["state"][0]["step"]) == 2 for o in ckpt["training"]["optimizers"].values())
    prefix = "net." if script == "srgan" else ""
    for k, v in source.named_parameters():  # (BatchNorm statistics move with any lr)
        assert torch.allclose(ckpt["model"]["state_dict"][prefix + k], v, atol=1e-6), k
    if script == "srgan":
        assert ckpt["discriminator"]["args"] == dict(kernel_size=3, n_channels=8, n_blocks=4, fc_size=16)


@SCRIPTS
@pytest.mark.parametrize("init, extra, message", [
    ("discriminator.pth", [], "holds no super-resolution model"),
    ("none.pth", [], "none.pth: no such file"),
    ("srresnet_iteration2.pth", ["--n-blocks", "2"], "--n-blocks 2: the --init model"),
    ("srresnet_iteration2.pth", ["--n-channels", "16"], "--n-channels 16: the --init model"),
    ("srresnet_iteration2.pth", ["--scaling-factor", "2"], "--scaling-factor 2: the --init model"),
])
def test_a_bad_init_file_is_named_in_one_line(script, init, extra, message, tmp_path, data_lists, capsys):
    checkpoint.save_checkpoint({"format_version": 1, "discriminator": checkpoint.model_spec(
        models.Discriminator(n_channels=8, fc_size=16))}, tmp_path / "discriminator.pth")
    path = (FIXTURE if init.startswith("srresnet") else tmp_path) / init
    line = cli_error(main_of(script), tiny_run(script, data_lists, tmp_path / "ck", "--init", path, *extra), capsys)
    assert message in line and str(path) in line, line
    assert not (tmp_path / "ck").exists()
