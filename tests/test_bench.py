"""bench.py: FLOP counting, the reference vs fast comparison, process measurements, the report.

Timings and speed-ups are never asserted (machines are noisy); only what must hold anywhere.
"""

import json
import math
import sys

import pytest
import torch

import bench
import models
import utils
from conftest import ROOT, TINY


def tiny_model(seed=0):
    return bench.random_model(seed=seed, **TINY)


def _positive_finite(x):
    return isinstance(x, (int, float)) and not isinstance(x, bool) and math.isfinite(x) and x > 0


def test_conv_flops_equal_a_hand_count():
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
    # strided convolutions: Discriminator blocks: 3->4 (stride 1), 4->4 (stride 2), 4->8 (1), 8->8 (2), 3x3 kernels
    disc = models.Discriminator(kernel_size=3, n_channels=4, n_blocks=4, fc_size=8)
    expected = 2 * 9 * (3 * 4 * 96 * 96 + 4 * 4 * 48 * 48 + 4 * 8 * 48 * 48 + 8 * 8 * 24 * 24)
    assert bench.conv_flops(disc, 96, 96) == expected


def test_default_x4_model_costs_about_4_4_mflop_per_lr_pixel():
    per_pixel = bench.conv_flops(models.SRResNet(), 16, 16) / 256
    # 2 * (3*64*81 + 33*64*64*9 + (1 + 4)*64*256*9 + 16*64*3*81) = 4,436,352
    assert per_pixel == 4_436_352
    # independent of the input size ('same' padding)
    assert bench.conv_flops(models.SRResNet(), 20, 30) == 600 * per_pixel


def test_random_model_has_trained_looking_batchnorm_statistics():
    model = tiny_model()
    bns = [m for m in model.modules() if isinstance(m, torch.nn.BatchNorm2d)]
    assert bns and not model.training
    for bn in bns:
        # not the fresh 0 / 1, which would make folding BatchNorm an identity the comparison cannot check
        assert bn.running_mean.abs().max() > 0 and not torch.allclose(bn.running_var, torch.ones_like(bn.running_var))
    assert torch.equal(tiny_model().conv_block1.conv_block[0].weight, model.conv_block1.conv_block[0].weight)


def test_model_rows_compare_every_fast_path_with_the_reference():
    result = bench.bench_model(tiny_model(), torch.device("cpu"), size=24, repeats=1, matmul_size=64)
    rows = {r["path"]: r for r in result["rows"]}
    assert list(rows)[0] == "reference" and rows["reference"]["speedup"] == 1.0
    assert rows["reference"]["max_abs_diff"] == 0 and rows["reference"]["psnr_db"] is None
    assert rows["fp32"]["max_abs_diff"] < 1e-4  # the same function, rewritten
    default = utils.resolve_precision("auto", "cpu")
    assert default in rows and rows[default]["max_abs_diff"] < 0.1
    assert result["flops"] == bench.conv_flops(tiny_model(), 24, 24)
    for r in rows.values():
        assert _positive_finite(r["seconds"]) and _positive_finite(r["peak_gflops"])
        assert r["gflops"] == pytest.approx(result["flops"] / r["seconds"] / 1e9)
        assert r["speedup"] == pytest.approx(rows["reference"]["seconds"] / r["seconds"])


@pytest.mark.slow
def test_run_process_reports_time_memory_and_page_faults_of_the_child(tmp_path):
    (tmp_path / "small.py").write_text("pass\n")
    (tmp_path / "big.py").write_text("b = bytearray(300 * 2**20)\nb[::4096] = bytes(len(b[::4096]))\n")
    (tmp_path / "fails.py").write_text("raise SystemExit('boom')\n")
    small, big = (bench.run_process([str(tmp_path / name)]) for name in ("small.py", "big.py"))
    for r in (small, big):
        assert _positive_finite(r["seconds"]) and _positive_finite(r["peak_rss_bytes"])
    # the child's own peak: touching 300 MB adds 300 MB and about 77k 4 KB pages, and a small
    # script's peak is well under this test process's (which a fork would have passed on)
    assert big["peak_rss_bytes"] - small["peak_rss_bytes"] > 250 * 2**20
    assert big["minor_faults"] - small["minor_faults"] > 50_000
    with pytest.raises(RuntimeError, match="boom"):
        bench.run_process([str(tmp_path / "fails.py")])
    # more than a pipe holds on stderr (progress bars) does not block the child
    (tmp_path / "chatty.py").write_text("import sys\nsys.stderr.write('x' * 300_000)\n")
    assert bench.run_process([str(tmp_path / "chatty.py")])["peak_rss_bytes"] > 0


def test_the_reference_allocator_really_is_glibcs_default(tmp_path, monkeypatch, capsys):
    # 'default-malloc' disables utils.keep_freed_memory for the script it runs; the scripts must call
    # it through the module (utils.keep_freed_memory()), or the reference would be the same as ours.
    # bench.RUN runs here as `python -c RUN ...` would run it (a real process of it: the test above);
    # the probe names the function it would call instead of calling it (that would change this
    # process's malloc)
    probe = tmp_path / "probe.py"
    probe.write_text("import sys, utils\nprint(utils.keep_freed_memory.__name__, sys.argv[1:])\n")
    real = utils.keep_freed_memory
    for allocator, expected in (("default-malloc", "<lambda> ['x']"), ("keep", "keep_freed_memory ['x']")):
        monkeypatch.setattr(utils, "keep_freed_memory", real)  # and restored at the end
        at_exit = []
        monkeypatch.setattr("atexit.register", at_exit.append)
        monkeypatch.setattr(sys, "argv", ["-c", allocator, str(probe), "x"])
        exec(bench.RUN, {"__name__": "__main__"})
        (report,) = at_exit
        report()
        out, err = capsys.readouterr()
        assert out.strip() == expected and err.strip().startswith("VmHWM:")
    for name in ("test.py", "eval.py"):
        source = (ROOT / name).read_text()
        assert "utils.keep_freed_memory()" in source and "import keep_freed_memory" not in source


@pytest.mark.slow
def test_quick_run_measures_every_row_and_writes_the_json(tmp_path, capsys):
    out = tmp_path / "bench.json"
    results = bench.main(["--quick", "--device", "cpu", "--json", str(out)])
    table = capsys.readouterr().out
    data = json.loads(out.read_text())
    assert data == json.loads(json.dumps(results))
    assert {"model", "training", "gan_training", "loader", "process"} <= set(data)
    assert data["model_args"]["n_channels"] == 8

    ours = {r["path"]: r for r in data["training"]["rows"]}
    assert set(ours) == {"reference", "default"}
    assert ours["default"]["samples_per_s"] == pytest.approx(2 * ours["default"]["its_per_s"])

    gan = data["gan_training"]["rows"]
    assert [r["path"].split(",")[0] for r in gan] == ["reference: two passes", "two passes", "srgan_step"]
    assert all(_positive_finite(r["seconds"]) for r in gan)
    assert gan[2]["speedup_over_two_passes"] == pytest.approx(gan[1]["seconds"] / gan[2]["seconds"])
    assert "SRGAN-MSE iteration" in table

    loader = data["loader"]
    w, h = loader["image_size"]
    assert loader["store_bytes"] == loader["images"] * 3 * w * h  # raw uint8 RGB
    assert _positive_finite(loader["decode_samples_per_s"]) and _positive_finite(loader["store_samples_per_s"])

    p = data["process"]
    # test.py's written output is upscale_image's, pixel for pixel
    assert p["same_pixels"] is True
    assert p["tiled_diff"]["max"] <= 1 and p["tiled_diff"]["count"] <= 1e-3 * p["tiled_diff"]["of"]
    per_image = [p[f"{s}_{k}"] for s in ("test.py", "eval.py") for k in ("default-malloc", "keep")]
    runs = [p["classic"][0], p["test"][0], p["big_tile_0"], p["big_tile_32"]]
    runs += [r for x in per_image for r in x["runs"]]
    for r in runs:
        assert _positive_finite(r["seconds"]) and _positive_finite(r["peak_rss_bytes"]) and r["minor_faults"] > 0
    for x in per_image:  # the second image's cost: a run on two copies minus a run on one
        assert x["faults_per_image"] == x["runs"][1]["minor_faults"] - x["runs"][0]["minor_faults"]

    lines = [line for line in table.splitlines() if line.startswith("| ")]
    # a row per fast model path (fp32, plus bf16 where the CPU has it), then the two training rows,
    # loader, 4 process rows
    model_rows = len(data["model"]["rows"]) - 1
    assert model_rows == len({"fp32", utils.resolve_precision("auto", "cpu")})
    assert lines[0] == "| what | reference | ours | ratio |" and len(lines) == 1 + model_rows + 7
    assert all(line.count(" | ") == 3 for line in lines)  # no stray '|' inside a cell
    assert "SR pixels identical" in table and "page faults" in table


def test_help_names_every_option():  # (that importing bench does no work: test_models.test_import_starts_no_work)
    help_text = bench.build_parser().format_help()
    for flag in ("--quick", "--json", "--skip", "--device", "--checkpoint", "--compile"):
        assert flag in help_text


def test_paper_estimate_counts_the_schedules(capsys):
    bench.main(["--paper-estimate", "50"])
    out = capsys.readouterr().out
    rows = {line.split("|")[1].strip(): [c.strip() for c in line.split("|")[2:-1]] for line in out.splitlines()
            if line.startswith("| SR")}
    assert set(rows) == {"SRResNet", "SRGAN-VGG54"}
    for iterations, tflop, pflop, hours in rows.values():
        total = float(tflop) * int(iterations.replace(",", "")) / 1000  # PFLOP
        assert float(pflop.replace(",", "")) == pytest.approx(total, rel=0.01)
        assert float(hours) == pytest.approx(total * 1e15 / 50e12 / 3600, abs=0.06)
    assert float(rows["SRGAN-VGG54"][1]) > 5 * float(rows["SRResNet"][1])  # VGG and D dominate a GAN step
