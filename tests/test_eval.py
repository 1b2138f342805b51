"""eval.py: the bicubic baseline, model rows as metrics.py scores, JSON, NIQE, artifacts (errors: test_bad_inputs)."""

import json
import warnings

import numpy as np
import pytest
from PIL import Image

import checkpoint
import evaluation
import images
import inference
import metrics
from conftest import cli_error, load_script, need_shared, random_image

eval_script = load_script("eval")


@pytest.fixture
def test_set(tmp_path):
    """A folder 'Mini' of 3 images (one grayscale, one not a multiple of the scale) and its JSON list."""
    folder = tmp_path / "Mini"
    folder.mkdir()
    random_image((64, 48), seed=1).save(folder / "a.png")
    random_image((50, 42), seed=2).convert("L").save(folder / "b.bmp")
    random_image((40, 40), seed=3).save(folder / "c.png")
    listing = tmp_path / "Mini2_test_images.json"
    listing.write_text(json.dumps([str(p) for p in sorted(folder.iterdir())]))
    return folder, listing


def test_bicubic_matches_the_published_set5_baseline(tmp_path, capsys):
    set5 = need_shared("Set5")
    out = tmp_path / "bicubic.json"
    results = eval_script.main(["--bicubic", "--scale", "4", "--test-folders", str(set5), "--json", str(out)])
    assert results["Bicubic"]["Set5"]["psnr"] == pytest.approx(28.43, abs=0.005)
    assert results["Bicubic"]["Set5"]["count"] == 5
    table = capsys.readouterr().out
    assert "| Bicubic | 28.43 |" in table
    saved = json.loads(out.read_text())
    assert saved["crop_border"] == 4 and saved["results"]["Bicubic"]["Set5"]["psnr"] == pytest.approx(28.43, abs=0.005)
    assert len(saved["results"]["Bicubic"]["Set5"]["images"]) == 5


def test_model_rows_use_utils_metrics(tiny_checkpoint, test_set, tmp_path, capsys):
    folder, listing = test_set
    out = tmp_path / "r.json"
    results = eval_script.main(["--checkpoint", str(tiny_checkpoint), "--bicubic", "--test-folders", str(folder),
                                str(listing), "--json", str(out), "--device", "cpu"])
    assert list(results) == ["Bicubic", "tiny.pth"]
    assert list(results["tiny.pth"]) == ["Mini", "Mini2"]  # folder name, list name
    # the same numbers computed by hand with the shared functions
    model = inference.prepare_model(checkpoint.load_model(tiny_checkpoint), "cpu", "fp32")
    hr = images.crop_to_multiple(images.open_image(folder / "b.bmp"), 4)  # grayscale -> RGB, 48x40
    lr = images.bicubic_resize(hr, (hr.width // 4, hr.height // 4))
    sr = images.convert_image(inference.upscale_tensor(model, images.convert_image(lr, "pil", "imagenet-norm"), 4,
                                                      "fp32", "cpu"), "[-1, 1]", "pil")
    got = results["tiny.pth"]["Mini"]["images"]["b.bmp"]
    assert got["psnr"] == pytest.approx(metrics.calc_psnr(sr, hr, 4))
    assert got["ssim"] == pytest.approx(metrics.calc_ssim(sr, hr, 4))
    assert results["tiny.pth"]["Mini"] == results["tiny.pth"]["Mini2"]
    lines = capsys.readouterr().out.splitlines()
    assert "| Method | Mini PSNR | Mini SSIM | Mini2 PSNR | Mini2 SSIM |" in lines
    assert any(line.startswith("| tiny.pth | ") for line in lines)
    saved = json.loads(out.read_text())
    assert saved["scale"] == 4 and saved["results"]["tiny.pth"]["Mini"]["count"] == 3


def test_tiles_crop_border_and_self_ensemble(tiny_checkpoint, test_set):
    folder, _ = test_set
    base = ["--checkpoint", str(tiny_checkpoint), "--test-folders", str(folder)]
    whole = eval_script.main(base + ["--tile", "0"])["tiny.pth"]["Mini"]
    tiled = eval_script.main(base + ["--tile", "32"])["tiny.pth"]["Mini"]
    assert tiled["psnr"] == whole["psnr"]
    border = eval_script.main(base + ["--crop-border", "0"])["tiny.pth"]["Mini"]
    assert border["psnr"] != pytest.approx(whole["psnr"], abs=1e-6)
    ensemble = eval_script.main(base + ["--self-ensemble"])["tiny.pth"]["Mini"]
    assert ensemble["count"] == 3 and ensemble["psnr"] != pytest.approx(whole["psnr"], abs=1e-6)


def test_niqe_on_an_image_too_small_names_it(test_set, capsys, monkeypatch, tmp_path):
    folder, _ = test_set  # 64x48 and smaller: not one 96x96 block after the border crop
    argv = ["--bicubic", "--scale", "4", "--niqe", "--test-folders", folder]
    assert "a.png: 64x48 is too small for NIQE" in cli_error(eval_script.main, argv, capsys)
    monkeypatch.setattr(metrics, "NIQE_PARAMS", str(tmp_path / "gone.npz"))
    monkeypatch.setattr(metrics.load_niqe_params, "__defaults__", (str(tmp_path / "gone.npz"),))
    assert "gone.npz: cannot read NIQE's model parameters" in cli_error(eval_script.main, argv, capsys)


def test_json_never_replaces_an_input_and_leftovers_go(tiny_checkpoint, test_set, tmp_path, capsys):
    folder, listing = test_set
    before = listing.read_bytes()
    argv = ["--bicubic", "--scale", "4", "--test-folders", listing, "--json", listing]
    assert "this output is the input" in cli_error(eval_script.main, argv, capsys) and listing.read_bytes() == before
    (tmp_path / ".r.json.abc.tmp").write_bytes(b"")
    eval_script.main(["--bicubic", "--scale", "4", "--test-folders", str(folder), "--json", str(tmp_path / "r.json")])
    assert not (tmp_path / ".r.json.abc.tmp").exists() and (tmp_path / "r.json").is_file()


def test_artifacts_columns_hr_row_probe_and_strict_json(tiny_checkpoint, test_set, tmp_path, capsys):
    """--artifacts: grid flat / grid / border columns from metrics.artifact_scores, an HR row, the
    flat-field probe table, per-image values in --json (null where an image, or a whole set, has too
    few flat pixels). (An image too small for them: test_bad_inputs.py.)"""
    folder = tmp_path / "Art"
    folder.mkdir()
    Image.new("RGB", (120, 100), (40, 60, 80)).save(folder / "flat.png")  # all flat
    random_image((64, 64), seed=6).save(folder / "busy.png")  # no flat pixels
    busy, _ = test_set  # no flat pixels either; one of them grayscale, add a 16-bit one
    Image.fromarray(np.asarray(random_image((48, 44), seed=9).convert("L"), np.uint16) * 257).save(busy / "d.png")
    out = tmp_path / "a.json"
    results = eval_script.main(["--checkpoint", str(tiny_checkpoint), "--bicubic", "--artifacts", "--test-folders",
                                str(folder), str(busy), "--json", str(out), "--device", "cpu"])
    assert list(results) == ["Bicubic", "tiny.pth", "HR (ground truth)"]
    hr = images.crop_to_multiple(images.open_image(folder / "busy.png"), 4)
    assert results["HR (ground truth)"]["Art"]["images"]["busy.png"] == metrics.artifact_scores(hr, hr, 4, 4)
    tiny = results["tiny.pth"]["Art"]
    assert set(tiny["images"]["busy.png"]) == {"psnr", "ssim", "grid_flat", "grid_dark", "grid", "border"}
    assert tiny["images"]["busy.png"]["grid_flat"] is None and tiny["images"]["flat.png"]["grid_flat"] is not None
    assert tiny["grid_flat"] == tiny["images"]["flat.png"]["grid_flat"] and tiny["grid_flat_count"] == 1
    assert results["Bicubic"]["Mini"]["grid_flat"] is None
    scores = results["Bicubic"]["Mini"]["images"].values()
    assert len(scores) == 4 and all(np.isfinite(v["grid"]) and np.isfinite(v["border"]) for v in scores)
    printed = capsys.readouterr().out
    assert "| Method | Art PSNR | Art SSIM | Art grid flat | Art grid dark | Art grid | Art border |" in printed
    assert "Art grid flat: over the 1 of 2 images" in printed
    assert "Art grid dark: over the 0 of 2 images with at least 2000 dark pixels (none: '-')" in printed
    assert "Mini grid flat: over the 0 of 4 images with at least 2000 flat pixels (none: '-')" in printed
    assert "| Bicubic | 0 | 0 | 0 |" in printed  # the probe table
    saved = json.loads(out.read_text())  # strict JSON: the PSNR of the flat image is inf for bicubic
    assert saved["results"]["Bicubic"]["Art"]["images"]["flat.png"]["psnr"] is None
    probe = saved["flat_field_probe"]["tiny.pth"]
    model = inference.prepare_model(checkpoint.load_model(tiny_checkpoint), "cpu", "fp32")
    assert {int(k): v for k, v in probe.items()} == evaluation.flat_field_probe(model, 4)
    assert "Infinity" not in out.read_text() and "NaN" not in out.read_text()


def test_niqe_column_hr_row_and_flat_images(tiny_checkpoint, tmp_path, capsys):
    """--niqe: a NIQE column for every row, an HR row with NIQE only, the same numbers as metrics.calc_niqe.
    A constant and a smoothly graded image have no NIQE: one note each, no warning, a set mean over
    the images that have a score (and how many), strict JSON (null)."""
    folder = tmp_path / "Flat"
    folder.mkdir()
    Image.new("RGB", (120, 112), (90, 90, 90)).save(folder / "const.png")
    ramp = np.tile(np.linspace(0, 255, 120, dtype=np.uint8)[None, :, None], (112, 1, 3))
    Image.fromarray(ramp).save(folder / "ramp.png")
    random_image((105, 130), seed=5).save(folder / "photo.png")  # cropped to 104x128
    out = tmp_path / "n.json"
    with warnings.catch_warnings():
        warnings.simplefilter("error")  # not one RuntimeWarning
        results = eval_script.main(["--checkpoint", str(tiny_checkpoint), "--bicubic", "--niqe", "--test-folders",
                                    str(folder), "--json", str(out), "--device", "cpu"])
    assert list(results) == ["Bicubic", "tiny.pth", "HR (ground truth)"]
    hr_row = results["HR (ground truth)"]["Flat"]
    hr = images.crop_to_multiple(images.open_image(folder / "photo.png"), 4)
    assert hr_row["images"]["photo.png"] == {"niqe": metrics.calc_niqe(hr, 4)}
    assert hr_row["niqe_count"] == 1 and hr_row["niqe"] == pytest.approx(hr_row["images"]["photo.png"]["niqe"])
    assert set(results["tiny.pth"]["Flat"]["images"]["photo.png"]) == {"psnr", "ssim", "niqe"}
    captured = capsys.readouterr()
    assert "| Method | Flat PSNR | Flat SSIM | Flat NIQE |" in captured.out
    assert f"| HR (ground truth) | - | - | {hr_row['niqe']:.2f} |" in captured.out
    assert captured.err.count("NIQE is undefined") >= 4  # both flat images, HR and bicubic rows
    assert "Flat NIQE of HR (ground truth): over the 1 of 3 images" in captured.out
    saved = json.loads(out.read_text())["results"]  # strict: NaN became null
    assert saved["Bicubic"]["Flat"]["images"]["photo.png"]["niqe"] > 0
    assert saved["HR (ground truth)"]["Flat"]["images"]["const.png"]["niqe"] is None
