"""test.py: outputs, the --hr demo, errors in a real process (bad flags, images and checkpoints:
test_bad_inputs.py)."""

import functools
import os
import signal
import subprocess
import sys
import time

import numpy as np
import pytest
import torch
from PIL import Image

import images
import inference
import metrics
import models
import utils
from conftest import ROOT, TINY, cli, load_script, random_image

test_script = load_script("test")


run = functools.partial(cli, test_script.main)  # the exit code of the command line with these flags


def picture(path, seed=1, size=(20, 16)):
    """A random image saved at ``path`` (its folder made); the path."""
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(size, seed=seed).save(path)
    return path


def files_in(folder):
    return sorted(p.name for p in folder.iterdir()) if folder.exists() else []


def test_writes_sr_and_bicubic_with_the_inputs_icc_profile_and_prints_the_time(tiny_checkpoint, tmp_path, capsys):
    """(and removes a hidden temporary that a killed run left)"""
    from PIL import ImageCms
    profile = ImageCms.ImageCmsProfile(ImageCms.createProfile("sRGB")).tobytes()
    random_image((24, 18), seed=1).save(tmp_path / "photo.png", icc_profile=profile)
    out = tmp_path / "results"
    out.mkdir()
    (out / ".photo_sr.png.abc123.tmp").write_bytes(b"")
    assert run(["--checkpoint", tiny_checkpoint, "--img", tmp_path / "photo.png", "--output-dir", out,
                "--precision", "fp32"]) == 0
    assert files_in(out) == ["photo_bicubic.png", "photo_sr.png"]
    for name in files_in(out):
        with Image.open(out / name) as img:
            assert img.size == (96, 72) and img.mode == "RGB" and img.info.get("icc_profile") == profile, name
    stdout = capsys.readouterr().out
    assert "photo.png: 24x18 -> 96x72" in stdout and " s (model)" in stdout


def test_tiles_do_not_change_the_output_and_show_a_bar(tiny_checkpoint, tmp_path, capsys):
    image = tmp_path / "wide.png"
    random_image((80, 40), seed=1).save(image)
    common = ["--checkpoint", tiny_checkpoint, "--img", image, "--precision", "fp32"]
    assert run(common + ["--output-dir", tmp_path / "a", "--tile", "0"]) == 0
    assert run(common + ["--output-dir", tmp_path / "b", "--tile", "32"]) == 0
    assert "tiles:   0%|          | 0/6" in capsys.readouterr().err  # 80x40 in 32-pixel tiles: 3 x 2
    a, b = (np.asarray(Image.open(tmp_path / d / "wide_sr.png")).astype(int) for d in "ab")
    assert np.abs(a - b).max() <= 1 and np.count_nonzero(a - b) <= 2  # float rounding only


def test_the_default_sample_image_and_checkpoint_and_model_flag(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    monkeypatch.setattr(test_script, "HERE", str(tmp_path))
    with pytest.raises(utils.UserError, match="no --img given"):
        test_script.main(["--checkpoint", str(tiny_checkpoint)])
    image = picture(tmp_path / "data" / "astronaut.png", seed=0, size=(16, 12))
    out = tmp_path / "results"
    assert run(["--checkpoint", tiny_checkpoint, "--output-dir", out]) == 0
    assert files_in(out) == ["astronaut_bicubic.png", "astronaut_sr.png"]
    # the default checkpoint is looked for next to the script, and its absence said plainly
    with pytest.raises(utils.UserError, match=r"checkpoints/srresnet_x4\.pth: no such file"):
        test_script.main(["--output-dir", str(out)])
    # --model names a shipped file
    monkeypatch.setattr(test_script, "SHIPPED", {"srresnet": str(tiny_checkpoint), "srgan": str(tmp_path / "gan.pth")})
    capsys.readouterr()
    assert run(["--model", "srresnet", "--img", image, "--output-dir", tmp_path / "a"]) == 0
    assert str(tiny_checkpoint) in capsys.readouterr().out
    assert run(["--model", "srgan", "--img", image, "--output-dir", tmp_path / "b"]) == 2
    assert "--model srgan: " + str(tmp_path / "gan.pth") + " is missing" in capsys.readouterr().err
    assert run(["--model", "srgan", "--checkpoint", tiny_checkpoint, "--img", image]) == 2
    assert "not both" in capsys.readouterr().err
    assert run(["--model", "esrgan", "--img", image]) == 2


@pytest.mark.slow
def test_command_line_in_a_subprocess(tiny_checkpoint, tmp_path):
    """The real command: an error is one line without a traceback (that importing test.py does no
    work: test_models.test_import_starts_no_work)."""
    (tmp_path / "zero.png").write_bytes(b"")
    env = dict(os.environ, OMP_NUM_THREADS="1")
    env.pop("SR_DEBUG", None)
    done = subprocess.run([sys.executable, "test.py", "--checkpoint", str(tiny_checkpoint),
                           "--img", str(tmp_path / "zero.png"), "--output-dir", str(tmp_path / "out")],
                          cwd=ROOT, env=env, capture_output=True, text=True, timeout=120)
    assert done.returncode == 2
    assert done.stderr.strip().splitlines() == [f"error: {tmp_path / 'zero.png'}: empty file (0 bytes)"]
    assert not (tmp_path / "out").exists()


@pytest.fixture(scope="module")
def fast_model():
    torch.manual_seed(0)
    return inference.prepare_model(models.SRResNet(**TINY), "cpu", "fp32")


def test_exif_rotation_is_applied(fast_model, tmp_path):
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    random_image((30, 20)).save(tmp_path / "rotated.jpg", exif=exif)
    result = test_script.super_resolve_file(fast_model, tmp_path / "rotated.jpg", tmp_path / "out", 4, "fp32", "cpu")
    assert result["in_size"] == (20, 30) and result["out_size"] == (80, 120)
    with Image.open(result["bicubic_path"]) as bicubic:
        assert bicubic.size == (80, 120)


def test_hr_demo_metrics_and_comparison(fast_model):
    hr = random_image((66, 50), seed=5)
    result = test_script.hr_demo(fast_model, hr, 4, "fp32", "cpu", label="SRResNet")
    assert result["hr"].size == (64, 48) and result["sr"].size == (64, 48)
    # the metrics are utils' on the images shown
    assert result["psnr_bicubic"] == pytest.approx(metrics.calc_psnr(result["bicubic"], result["hr"], 4))
    assert result["ssim_sr"] == pytest.approx(metrics.calc_ssim(result["sr"], result["hr"], 4))
    comparison = result["comparison"]
    assert comparison.mode == "RGB" and comparison.width == 3 * 64 + 2 * 4 and comparison.height > 48
    with pytest.raises(utils.UserError, match="at least"):
        test_script.hr_demo(fast_model, random_image((16, 40)), 4, "fp32", "cpu")


def test_save_image_is_atomic(tmp_path, monkeypatch):
    img = random_image((8, 8))
    test_script.save_images([(img, tmp_path / "a.png")])

    def broken_save(self, fp, format=None, **kwargs):
        fp.write(b"partial")
        raise OSError("disk full")

    monkeypatch.setattr(Image.Image, "save", broken_save)
    with pytest.raises(utils.UserError, match="a.png: cannot write .disk full"):
        test_script.save_images([(img, tmp_path / "a.png")])
    with pytest.raises(utils.UserError):
        test_script.save_images([(img, tmp_path / "b.png")])
    assert sorted(p.name for p in tmp_path.iterdir()) == ["a.png"]  # old file kept, no temporary left
    monkeypatch.undo()
    with Image.open(tmp_path / "a.png") as back:
        assert np.array_equal(np.asarray(back), np.asarray(img))


def test_collect_images_and_output_stems(tmp_path):
    folder = tmp_path / "imgs"
    folder.mkdir()
    for name in ("b.png", "a.JPG", "notes.txt"):
        (folder / name).write_bytes(b"x")
    (tmp_path / "c.dat").write_bytes(b"x")
    paths = test_script.collect_images([folder, tmp_path / "c.dat"])
    assert [p.split("/")[-1] for p in paths] == ["a.JPG", "b.png", "c.dat"]
    # (a missing file, a folder without images: test_bad_inputs.py)
    assert test_script.output_stems(["x/photo.png", "y/photo.jpg", "z/photo.png", "v/photo.png", "w/other.bmp"]) == \
        ["photo", "photo_jpg", "photo_png", "photo_2", "other"]


def test_check_outputs_refuses_shared_outputs(tmp_path):
    paths = [str(tmp_path / "x" / "a.png"), str(tmp_path / "y" / "a.png")]
    refused = test_script.check_outputs(paths, ["a", "a"], str(tmp_path / "out"), hr=False)
    assert list(refused) == [paths[1]] and "also the output of" in refused[paths[1]]


def test_sigterm_ends_a_run_like_ctrl_c(tiny_checkpoint, tmp_path, monkeypatch, capsys):
    """Exit 143, one line, nothing half-written."""
    image = picture(tmp_path / "in" / "photo.png", size=(24, 18))
    monkeypatch.setattr(test_script.inference, "upscale_image",
                        lambda *a, **k: os.kill(os.getpid(), signal.SIGTERM) or time.sleep(5))
    assert run(["--checkpoint", tiny_checkpoint, "--img", image, "--output-dir", tmp_path / "b"]) == 143
    assert capsys.readouterr().err.rstrip().splitlines()[-1] == "terminated"
    assert not (tmp_path / "b").exists()


def test_a_users_own_file_named_like_an_output_is_an_input_and_never_replaced(tiny_checkpoint, tmp_path, capsys):
    """a.jpg beside the user's own, unrelated a_sr.png: the name proves nothing. The PNG is upscaled
    like any image; a.jpg's output would replace it: refused for that image in one line (the others
    go on, exit 2), the same folder reached through a link too. In another output folder, an unmarked
    a_sr.png is not replaced either; our own outputs are."""
    folder, elsewhere = tmp_path / "d", tmp_path / "out"
    picture(folder / "a.jpg")
    mine = picture(folder / "a_sr.png", seed=2).read_bytes()
    picture(folder / "b.png", seed=3)
    (tmp_path / "link").symlink_to(folder)
    for output_dir in (folder, tmp_path / "link"):  # (a_sr.png is also given by name: upscaled once)
        assert run(["--checkpoint", tiny_checkpoint, "--img", folder, folder / "a_sr.png",
                    "--output-dir", output_dir]) == 2
        errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
        assert len(errors) == 2 and "a.jpg: its output" in errors[0] and "is the input" in errors[0]
        assert (folder / "a_sr.png").read_bytes() == mine
        assert files_in(folder) == ["a.jpg", "a_sr.png", "a_sr_bicubic.png", "a_sr_sr.png", "b.png",
                                    "b_bicubic.png", "b_sr.png"]
    assert images.is_marked_output(folder / "a_sr_sr.png")
    assert not images.is_marked_output(folder / "a_sr.png")
    elsewhere.mkdir()
    (elsewhere / "a_sr.png").write_bytes(mine)
    assert run(["--checkpoint", tiny_checkpoint, "--img", folder / "a.jpg", "--output-dir", elsewhere]) == 2
    line = capsys.readouterr().err.strip().splitlines()[-1]
    assert "exists and was not written by this program; not replaced" in line
    assert (elsewhere / "a_sr.png").read_bytes() == mine and files_in(elsewhere) == ["a_sr.png"]
    (elsewhere / "a_sr.png").unlink()
    for _ in range(2):  # our own outputs are replaced by a rerun
        assert run(["--checkpoint", tiny_checkpoint, "--img", folder / "a.jpg", "--output-dir", elsewhere]) == 0
    assert files_in(elsewhere) == ["a_bicubic.png", "a_sr.png"]


def test_memory_errors_are_one_line_per_image(tiny_checkpoint, tmp_path, capsys, monkeypatch):
    random_image((160, 130), seed=1).save(tmp_path / "big.png")
    random_image((20, 16), seed=2).save(tmp_path / "small.png")
    real = inference.bicubic_upscale

    def fails_on_big(img, scale):
        if img.width > 100:
            raise MemoryError
        return real(img, scale)
    monkeypatch.setattr(inference, "bicubic_upscale", fails_on_big)
    assert run(["--checkpoint", tiny_checkpoint, "--img", tmp_path / "big.png", tmp_path / "small.png",
                "--output-dir", tmp_path / "p"]) == 2
    errors = [line for line in capsys.readouterr().err.splitlines() if line.startswith("error: ")]
    assert "big.png: out of memory" in errors[0] and files_in(tmp_path / "p") == ["small_bicubic.png", "small_sr.png"]


def test_folder_inputs_note_sub_folders_and_a_rerun_skips_its_own_outputs(tiny_checkpoint, tmp_path, capsys):
    folder = picture(tmp_path / "d" / "a.png").parent
    picture(folder / "sub" / "b.png", seed=2)
    assert run(["--checkpoint", tiny_checkpoint, "--img", folder, "--output-dir", tmp_path / "o"]) == 0
    assert "1 image(s) in sub-folders not searched; add --recursive" in capsys.readouterr().err
    assert files_in(tmp_path / "o") == ["a_bicubic.png", "a_sr.png"]
    assert run(["--checkpoint", tiny_checkpoint, "--img", folder, "--recursive", "--output-dir", tmp_path / "r"]) == 0
    assert files_in(tmp_path / "r") == ["a_bicubic.png", "a_sr.png", "b_bicubic.png", "b_sr.png"]
    for _ in range(2):
        assert run(["--checkpoint", tiny_checkpoint, "--img", folder, "--output-dir", folder]) == 0
    assert files_in(folder) == ["a.png", "a_bicubic.png", "a_sr.png", "sub"]
    assert "skipped 2 image(s) this program wrote" in capsys.readouterr().err
    (folder / "a.png").unlink()
    assert run(["--checkpoint", tiny_checkpoint, "--img", folder]) == 2
    assert "outputs of this program are skipped" in capsys.readouterr().err


@pytest.mark.parametrize("mode", ["RGB", "L", "I;16", "RGBA"])
def test_hr_mode_writes_the_comparison_and_scores_what_eval_scores(tiny_checkpoint, tmp_path, capsys, mode):
    """test.py --hr writes the 3-panel comparison and prints the PSNR / SSIM that eval.py gives, for
    a colour, grayscale, 16-bit or RGBA image."""
    rgb = random_image((70, 50), seed=4)
    if mode == "I;16":
        img = Image.fromarray(np.asarray(rgb.convert("L"), dtype=np.uint16) * 257 + 100)
    else:
        img = rgb.convert(mode)
    folder, out = tmp_path / "set", tmp_path / "o"
    folder.mkdir()
    img.save(folder / "x.png")
    assert run(["--checkpoint", tiny_checkpoint, "--img", folder / "x.png", "--hr", "--precision", "fp32",
                "--output-dir", out]) == 0
    assert files_in(out) == ["x_comparison.png"]
    with Image.open(out / "x_comparison.png") as comparison:
        assert comparison.width == 3 * 68 + 2 * 4 and comparison.height > 48  # cropped to 68x48, 3 panels
    stdout = capsys.readouterr().out
    line = stdout.strip().splitlines()[-1]
    assert "bicubic" in stdout and "SRResNet" in stdout and "fp32)" in line
    scores = load_script("eval").main(["--checkpoint", str(tiny_checkpoint), "--test-folders", str(folder),
                                       "--precision", "fp32"])["tiny.pth"]["set"]
    assert f"{scores['psnr']:.2f} dB / {scores['ssim']:.4f}" in line, (line, scores)
