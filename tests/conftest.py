"""Shared fixtures: the repo root on sys.path, the shared data folder, tiny models, image folders."""

import importlib.util
import sys
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# ../shared/data next to the project (read in place, never copied); tests that need it skip without it
SHARED_DATA = ROOT.parent / "shared" / "data"

TINY = dict(large_kernel_size=9, small_kernel_size=3, n_channels=8, n_blocks=2, scaling_factor=4)


def need_shared(name):
    """Path of a shared data folder, or skip the test with a reason."""
    path = SHARED_DATA / name
    if not path.is_dir():
        pytest.skip(f"shared data folder {path} is absent")
    return path


def random_image(size, seed=0, mode="RGB"):
    """A smooth-ish random image (so bicubic and the metrics see structure, not just noise)."""
    rng = np.random.default_rng(seed)
    w, h = size
    small = rng.integers(0, 256, (max(h // 8, 2), max(w // 8, 2), 3), dtype=np.uint8)
    img = Image.fromarray(small).resize((w, h), Image.BICUBIC)
    noise = rng.integers(-20, 21, (h, w, 3))
    img = Image.fromarray(np.clip(np.asarray(img).astype(int) + noise, 0, 255).astype(np.uint8))
    return img.convert(mode)


@pytest.fixture
def image_folder(tmp_path):
    """A folder of 6 RGB PNG training images of 120x100 pixels."""
    folder = tmp_path / "images"
    folder.mkdir()
    for i in range(6):
        random_image((120, 100), seed=i).save(folder / f"img{i}.png")
    return folder


@pytest.fixture
def data_lists(tmp_path, image_folder):
    """JSON lists for image_folder (train) and a 'Val' test folder of 2 images."""
    import create_data_lists

    val = tmp_path / "Val"
    val.mkdir()
    for i in range(2):
        random_image((64, 52), seed=100 + i).save(val / f"v{i}.png")
    out = tmp_path / "lists"
    create_data_lists.create_data_lists([str(image_folder)], [str(val)], 40, str(out), log=lambda *a: None)
    return out


def load_script(name):
    """Import a top-level script by path ('test' and 'eval' would clash with Python's own names)."""
    spec = importlib.util.spec_from_file_location(f"sr_script_{name}", ROOT / f"{name}.py")
    module = importlib.util.module_from_spec(spec)
    spec.loader.exec_module(module)
    return module


@pytest.fixture(scope="module")
def tiny_checkpoint(tmp_path_factory):
    """An inference checkpoint of a tiny random SRResNet (x4)."""
    import torch

    import checkpoint
    import models

    torch.manual_seed(0)
    path = tmp_path_factory.mktemp("ckpt") / "tiny.pth"
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(models.SRResNet(**TINY)), path)
    return path


# ----------------------------------------------------------------------------------------------
# training scripts


def read_log(path):
    """Rows of a training CSV log, without the wall-clock column (the one thing a resume changes)."""
    import csv

    with open(path, newline="") as f:
        return [{k: v for k, v in row.items() if k != "seconds"} for row in csv.DictReader(f)]


def assert_identical(a, b, where="checkpoint"):
    """Recursively: tensors torch.equal (same dtype and shape), everything else ==."""
    import math

    import torch

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


def sigint_at(monkeypatch, iteration):
    """Make training send itself a real SIGINT while it loads the batch of ``iteration`` (1-based)."""
    import os
    import signal

    import training

    real = training.train_batches

    def batches(args, ctx, start, scale):
        source = real(args, ctx, start, scale)

        def gen():
            for k, batch in enumerate(source, start=start + 1):
                if k == iteration:
                    os.kill(os.getpid(), signal.SIGINT)
                yield batch
        return gen()
    monkeypatch.setattr(training, "train_batches", batches)


def cli_error(main, argv, capsys):
    """Run a script's main as the command line does; return its one 'error:' line (exit code 2)."""
    import utils

    with pytest.raises(SystemExit) as exc:
        utils.run_cli(main, [str(a) for a in argv])
    err = capsys.readouterr().err.strip().splitlines()
    assert exc.value.code == 2, err
    assert err and err[-1].startswith("error: ") and sum(line.startswith("error:") for line in err) == 1, err
    assert not any(line.startswith("Traceback") for line in err), err
    return err[-1]
