"""Shared fixtures: the repo root on sys.path, the shared data folder, tiny models, image folders,
and a way to run a script's command line in this process."""

import collections
import contextlib
import errno
import importlib.util
import io
import os
import runpy
import subprocess
import sys
import traceback
from pathlib import Path

import numpy as np
import pytest
from PIL import Image

ROOT = Path(__file__).resolve().parents[1]
sys.path.insert(0, str(ROOT))
# ../shared/data next to the project (read in place, never copied); tests that need it skip without it
SHARED_DATA = ROOT.parent / "shared" / "data"

# Under pytest-xdist (`-n 2`), each worker gets its share of the cores: with more threads than cores,
# OpenMP threads spin against each other (a convolution test ran 20x slower beside a training run).
_WORKERS = int(os.environ.get("PYTEST_XDIST_WORKER_COUNT", "1"))
if _WORKERS > 1:
    import torch

    _THREADS = max(1, (os.cpu_count() or 1) // _WORKERS)
    os.environ["OMP_NUM_THREADS"] = str(_THREADS)  # and the scripts the tests start
    torch.set_num_threads(_THREADS)


@pytest.hookimpl(optionalhook=True)
def pytest_xdist_make_scheduler(config, log):
    """With -n, a file's tests go to one worker (xdist's loadfile): module fixtures are built once.
    The files go out in the order of pytest_collection_modifyitems below, not by their test count."""
    from xdist.scheduler import LoadFileScheduling

    config.option.loadscopereorder = False
    return LoadFileScheduling(config, log)


def pytest_collection_modifyitems(config, items):
    """Files with the most slow tests (real processes, the notebook) first, then the files with the
    most tests: the long ones start early and the short ones fill the workers' last minutes."""
    slow = collections.Counter(item.path for item in items if item.get_closest_marker("slow"))
    count = collections.Counter(item.path for item in items)
    items.sort(key=lambda item: (-slow[item.path], -count[item.path], str(item.path)))  # stable within a file


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


class Killed(BaseException):
    """A stand-in for kill -9 at one exact point of a training loop (no handler catches a BaseException)."""


def sigint_at(monkeypatch, iteration):
    """Make training send itself a real SIGINT while it loads the batch of ``iteration`` (1-based)."""
    import signal

    import datasets

    real = datasets.train_batches

    def batches(args, scale, start, *more, **options):
        source = real(args, scale, start, *more, **options)

        def gen():
            for k, batch in enumerate(source, start=start + 1):
                if k == iteration:
                    os.kill(os.getpid(), signal.SIGINT)
                yield batch
        return gen()
    monkeypatch.setattr(datasets, "train_batches", batches)


def cli(main, argv):
    """Run a script's main as its command line does (utils.run_cli), in this process; the exit code."""
    import utils

    try:
        utils.run_cli(main, [str(a) for a in argv])
    except SystemExit as e:
        return e.code
    return 0


def cli_error(main, argv, capsys):
    """Run a script's main as the command line does; return its one 'error:' line (exit code 2)."""
    code = cli(main, argv)
    err = capsys.readouterr().err.strip().splitlines()
    assert code == 2, err
    assert err and err[-1].startswith("error: ") and sum(line.startswith("error:") for line in err) == 1, err
    assert not any(line.startswith("Traceback") for line in err), err
    return err[-1]


# ----------------------------------------------------------------------------------------------
# a script's command line, in this process


class _FillingFile:
    """A file that takes 100 bytes and then fails for lack of space (a disk that fills up mid-write)."""

    def __init__(self, f):
        self._f, self._written = f, 0

    def write(self, data):
        self._written += len(data)
        if self._written > 100:
            raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))
        return self._f.write(data)

    def __getattr__(self, name):
        return getattr(self._f, name)

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        self._f.close()


def _no_space(*args, **kwargs):
    raise OSError(errno.ENOSPC, os.strerror(errno.ENOSPC))


@contextlib.contextmanager
def full_disk(mode):
    """Writes fail for lack of space: 'fsync' at os.fsync, 'write' after a file's first 100 bytes
    (every write of the project goes through os.fdopen or os.fsync in utils.atomic_write_all)."""
    real_fsync, real_fdopen = os.fsync, os.fdopen
    if mode == "fsync":
        os.fsync = _no_space
    elif mode == "write":
        os.fdopen = lambda *a, **k: _FillingFile(real_fdopen(*a, **k))
    try:
        yield
    finally:
        os.fsync, os.fdopen = real_fsync, real_fdopen


def run_script(argv, disk=None):
    """``python SCRIPT ARGS`` from the repo root, run in this process (no interpreter start-up; the
    script's own ``__main__`` block runs): the exit code, stdout and stderr as a CompletedProcess. As a
    process would, an uncaught exception gives its traceback on stderr and exit code 1. For cases that
    need no process of their own (not another user, a signal, a memory measurement). ``disk``: None,
    or full_disk's mode. utils.keep_freed_memory is left out (it would change malloc for the rest of
    the test session; it changes no output)."""
    import utils

    argv = [str(a) for a in argv]
    out, err = io.StringIO(), io.StringIO()
    saved = sys.argv, os.getcwd(), os.environ.pop("SR_DEBUG", None), utils.keep_freed_memory
    sys.argv, code = argv, 0
    os.chdir(ROOT)
    utils.keep_freed_memory = lambda: False
    try:
        with contextlib.redirect_stdout(out), contextlib.redirect_stderr(err), full_disk(disk):
            runpy.run_path(str(ROOT / argv[0]), run_name="__main__")
    except SystemExit as e:
        if isinstance(e.code, str):
            err.write(e.code + "\n")
        code = e.code if isinstance(e.code, int) else (0 if e.code is None else 1)
    except Exception:
        err.write(traceback.format_exc())
        code = 1
    finally:
        sys.argv, cwd, debug, utils.keep_freed_memory = saved
        os.chdir(cwd)
        if debug is not None:
            os.environ["SR_DEBUG"] = debug
    return subprocess.CompletedProcess(argv, code, out.getvalue(), err.getvalue())


def null_device(folder, name="null"):
    """A character device node like /dev/null, made in a temporary folder (never aim at /dev itself)."""
    import stat

    path = folder / name
    os.mknod(path, 0o666 | stat.S_IFCHR, os.makedev(1, 3))
    return path


def assert_ema_step(ema, previous, current, decay):
    """State dicts: ema == decay * previous + (1 - decay) * current for floating tensors (weights and
    BatchNorm statistics); integer buffers (batches seen) equal current's."""
    import torch

    assert set(ema) == set(previous) == set(current)
    for k in ema:
        if ema[k].is_floating_point():
            torch.testing.assert_close(ema[k], decay * previous[k] + (1 - decay) * current[k], msg=k)
        else:
            assert torch.equal(ema[k], current[k]), k
