"""bench.py: FLOP counting, the reference vs fast comparison, the JSON report, targets.

Timings and speed-ups are never asserted (machines are noisy); only what must hold anywhere.
"""

import json
import math
import subprocess
import sys

import pytest
import torch

import bench
import utils
import models
from conftest import ROOT, TINY


def tiny_model(seed=0):
    return bench.make_model(seed=seed, **TINY)


def _positive_finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_conv_flops_of_a_tiny_srresnet_equal_a_hand_count():
    h, w = 10, 12
    c, k_large, k_small = TINY["n_channels"], TINY["large_kernel_size"], TINY["small_kernel_size"]
    n_blocks = TINY["n_blocks"]
    expected = 2 * 3 * c * k_large**2 * h * w  # conv_block1, 3 -> c
    expected += (2 * n_blocks + 1) * 2 * c * c * k_small**2 * h * w  # residual blocks + conv_block2
    expected += 2 * c * 4 * c * k_small**2 * h * w  # sub-pixel conv at x1, c -> 4c
    expected += 2 * c * 4 * c * k_small**2 * (2 * h) * (2 * w)  # sub-pixel conv at x2
    expected += 2 * c * 3 * k_large**2 * (4 * h) * (4 * w)  # conv_block3 at x4, c -> 3
    model = tiny_model()
    assert bench.conv_flops(model, h, w) == expected
    assert bench.conv_flops(model, h, w, batch=3) == 3 * expected
    # a Generator wraps the same network: same count; the model itself is left on the CPU
    assert bench.conv_flops(models.Generator(**TINY), h, w) == expected
    assert next(model.parameters()).device.type == "cpu"


def test_conv_flops_follow_strided_convolutions():
    # Discriminator blocks: 3->4 (stride 1), 4->4 (stride 2), 4->8 (1), 8->8 (2), 3x3 kernels
    disc = models.Discriminator(kernel_size=3, n_channels=4, n_blocks=4, fc_size=8)
    expected = 2 * 9 * (3 * 4 * 96 * 96 + 4 * 4 * 48 * 48 + 4 * 8 * 48 * 48 + 8 * 8 * 24 * 24)
    assert bench.conv_flops(disc, 96, 96) == expected


def test_default_x4_model_costs_about_4_4_mflop_per_lr_pixel():
    per_pixel = bench.flops_per_lr_pixel(models.SRResNet())
    # 2 * (3*64*81 + 33*64*64*9 + (1 + 4)*64*256*9 + 16*64*3*81) = 4,436,352
    assert per_pixel == 4_436_352
    assert per_pixel == pytest.approx(4.4e6, rel=0.03)
    # independent of the input size ('same' padding)
    assert bench.conv_flops(models.SRResNet(), 20, 30) == 600 * per_pixel


def test_fast_fp32_path_matches_the_reference():
    result = bench.bench_inference(tiny_model(), torch.device("cpu"), size=24, warmup=0, repeats=1,
                                   peaks={"fp32": 1.0, "bf16": 1.0}, log=lambda *a: None)
    rows = {r["key"]: r for r in result["rows"]}
    assert rows["reference"]["speedup"] == 1.0 and "max_abs_diff" not in rows["reference"]
    fp32 = rows.get("fp32_fast") or rows["default"]  # 'default' is fp32 on CPUs without bf16
    assert fp32["precision"] == "fp32"
    assert fp32["max_abs_diff"] < 1e-4
    assert fp32["uint8_differing_fraction"] < 1e-3
    default = rows["default"]
    assert default["precision"] == utils.resolve_precision("auto", "cpu")
    assert default["max_abs_diff"] < 0.1  # bf16 differs a little, not wildly
    assert result["flops_per_image"] == bench.conv_flops(tiny_model(), 24, 24)
    for r in result["rows"]:
        assert _positive_finite(r["seconds"]) and _positive_finite(r["gflops"])
        assert r["gflops"] == pytest.approx(result["flops_per_image"] / r["seconds"] / 1e9)
        assert r["peak_fraction"] == pytest.approx(r["gflops"])  # peaks of 1 GFLOP/s


def test_quick_run_writes_json_with_every_section(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--quick", "--device", "cpu", "--n-channels", "8", "--n-blocks", "2", "--size", "16",
                          "--tile-size", "48", "--tile", "24", "--matmul-size", "128", "--crop-size", "24",
                          "--loader-batches", "2", "--json", str(out)])
    table = capsys.readouterr().out
    assert table.startswith("| section | configuration |")
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results))
    assert {"config", "machine", "model", "peak", "inference", "tiled", "training", "loader", "targets",
            "notes"} <= set(data)
    assert data["model"]["args"] == TINY and data["model"]["checkpoint"] is None
    assert data["model"]["flops_per_lr_pixel"] == bench.flops_per_lr_pixel(tiny_model())
    assert all(_positive_finite(v) for v in data["peak"].values()) and "fp32" in data["peak"]

    keys = [r["key"] for r in data["inference"]["rows"]]
    assert keys[0] == "reference" and "default" in keys
    for r in data["inference"]["rows"]:
        for k in ("seconds", "lr_mpix_per_s", "gflops", "peak_fraction", "speedup"):
            assert _positive_finite(r[k]), (r["key"], k)
        assert r["label"] in table

    tiled = {r["tile"]: r for r in data["tiled"]["rows"]}
    assert set(tiled) == {0, 24}  # whole image and tiles of 24 (DEFAULT_TILE > 48 is not measured)
    for r in tiled.values():
        assert _positive_finite(r["seconds"]) and _positive_finite(r["peak_rss_bytes"])
        assert r["peak_rss_bytes"] >= r["rss_before_bytes"] > 0
        assert r["max_uint8_diff_vs_whole"] <= 1  # tiles with the receptive-field pad join seamlessly

    rows = {r["key"]: r for r in data["training"]["rows"]}
    assert {"reference", "default"} <= set(rows)
    for r in rows.values():
        for k in ("seconds", "its_per_s", "samples_per_s", "gflops", "speedup"):
            assert _positive_finite(r[k]), (r["key"], k)
        assert r["samples_per_s"] == pytest.approx(r["its_per_s"] * 2)
    loader = data["loader"]
    assert loader["workers"] == 2 and loader["batch_size"] == 2 and loader["crop_size"] == 24
    assert _positive_finite(loader["samples_per_s"]) and _positive_finite(loader["consumption_ratio"])
    assert loader["consumption_ratio"] == pytest.approx(loader["samples_per_s"] / rows["default"]["samples_per_s"])

    store = data["store_loader"]
    assert store["image_size"] == list(bench.PHOTO_SIZE[True]) and store["images"] == 2 and store["workers"] == 2
    assert store["store_bytes"] == 2 * 3 * store["image_size"][0] * store["image_size"][1]
    assert _positive_finite(store["samples_per_s"]) and _positive_finite(store["decode_samples_per_s"])
    assert "decoded store" in table

    targets = {t["key"]: t for t in data["targets"]}
    assert {"inference_speedup", "inference_peak_fraction", "inference_psnr", "fp32_max_abs_diff",
            "training_speedup", "loader_ratio", "tiled_peak_rss"} <= set(targets)
    assert targets["fp32_max_abs_diff"]["met"]
    for t in data["targets"]:
        assert f"{t['what']}: {'met' if t['met'] else 'NOT met'}" in table
    # every table line has the header's 9 cells (no stray '|' inside a cell)
    lines = [line for line in table.splitlines() if line.startswith("|")]
    assert len(lines) >= 10 and all(line.replace("\\|", "").count("|") == 10 for line in lines)


def test_targets_are_judged_against_their_thresholds():
    results = {
        "config": {"tile": 256},
        "inference": {"rows": [
            {"key": "reference", "precision": "fp32", "speedup": 1.0},
            {"key": "default", "precision": "bf16", "speedup": 2.6, "peak_fraction": 0.5, "psnr_rgb_db": 45.0,
             "max_abs_diff": 0.01},
            {"key": "fp32_fast", "precision": "fp32", "speedup": 1.5, "max_abs_diff": 2e-4}]},
        "training": {"rows": [{"key": "reference", "speedup": 1.0}, {"key": "default", "speedup": 1.9}]},
        "loader": {"consumption_ratio": 3.5},
        "tiled": {"rows": [{"tile": 0, "peak_rss_bytes": 9e9}, {"tile": 256, "peak_rss_bytes": 1.2e9}]},
    }
    met = {t["key"]: t["met"] for t in bench.evaluate_targets(results)}
    assert met == {"inference_speedup": True, "inference_peak_fraction": False, "inference_psnr": True,
                   "fp32_max_abs_diff": False, "training_speedup": False, "loader_ratio": True,
                   "tiled_peak_rss": True}


def test_help_lists_the_flags_and_import_does_no_work():
    # importing prints nothing and runs nothing (no benchmark, no argument parsing)
    proc = subprocess.run([sys.executable, "-c", "import bench; print('imported')"], cwd=ROOT,
                          capture_output=True, text=True, check=True)
    assert proc.stdout == "imported\n" and "[bench]" not in proc.stderr
    help_text = bench.build_parser().format_help()
    for flag in ("--quick", "--json", "--skip-train", "--skip-tiled", "--device", "--threads", "--size",
                 "--tile-size", "--tile ", "--compile", "--checkpoint", "--repeats", "--workers"):
        assert flag in help_text
    assert "--tiled-child" not in help_text  # internal


def test_whole_process_row_times_both_commands_and_checks_the_pixels(tmp_path, tiny_checkpoint):
    from conftest import random_image

    random_image((20, 16), seed=3).save(tmp_path / "photo.png")
    r = bench.bench_whole_process(str(tiny_checkpoint), str(tmp_path / "photo.png"), 1, log=lambda *a: None)
    assert r["size"] == [20, 16] and r["same_pixels"] is True
    assert r["classic_seconds"] > 0 and r["test_seconds"] > 0
    assert r["speedup"] == pytest.approx(r["classic_seconds"] / r["test_seconds"])
