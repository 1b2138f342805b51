"""Image conversion, metrics, checkpoint IO and the classic-checkpoint import."""

import math
import os
import pickle

import numpy as np
import pytest
import torch
from PIL import Image

import models
import utils
from conftest import TINY, random_image

SPACES = ["[0, 1]", "[-1, 1]", "[0, 255]", "imagenet-norm"]


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("batch", [False, True])
def test_convert_image_round_trips(space, batch):
    x = torch.rand(2, 3, 5, 7) if batch else torch.rand(3, 5, 7)
    there = utils.convert_image(x, "[0, 1]", space)
    back = utils.convert_image(there, space, "[0, 1]")
    assert torch.allclose(back, x, atol=1e-6)


def test_convert_image_known_values():
    x = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1)
    assert torch.allclose(utils.convert_image(x, "[0, 1]", "[-1, 1]").flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(utils.convert_image(x, "[0, 1]", "[0, 255]").flatten(), torch.tensor([0.0, 127.5, 255.0]))
    norm = utils.convert_image(x, "[0, 1]", "imagenet-norm").flatten()
    expected = [(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(norm, torch.tensor(expected), atol=1e-6)
    white = torch.ones(3, 2, 2)
    black = torch.zeros(2, 3, 2, 2)
    assert torch.allclose(utils.convert_image(white, "[0, 1]", "y-channel"), torch.full((2, 2), 235.0))
    assert utils.convert_image(black, "[0, 1]", "y-channel").shape == (2, 2, 2)
    assert torch.allclose(utils.convert_image(black, "[0, 1]", "y-channel"), torch.full((2, 2, 2), 16.0))


def test_convert_image_pil_round_trip():
    img = random_image((9, 7))
    t = utils.convert_image(img, "pil", "[-1, 1]")
    assert t.shape == (3, 7, 9) and t.min() >= -1 and t.max() <= 1
    back = utils.convert_image(t, "[-1, 1]", "pil")
    assert np.array_equal(np.asarray(back), np.asarray(img))
    # values outside the range are clamped when making a picture
    assert np.asarray(utils.convert_image(torch.full((3, 2, 2), 3.0), "[0, 1]", "pil")).max() == 255
    gray = utils.convert_image(img.convert("L"), "pil", "[0, 1]")
    assert gray.shape == (3, 7, 9)


def test_convert_image_bad_arguments():
    with pytest.raises(ValueError, match="source"):
        utils.convert_image(torch.rand(3, 2, 2), "y-channel", "pil")
    with pytest.raises(ValueError, match="target"):
        utils.convert_image(torch.rand(3, 2, 2), "[0, 1]", "hsv")


def test_y_channel_formula():
    arr = np.array([[[255, 0, 0], [0, 255, 0], [0, 0, 255], [10, 20, 30]]], dtype=np.uint8)
    y = utils.y_channel(arr)
    expected = [16 + 65.481, 16 + 128.553, 16 + 24.966, 16 + (65.481 * 10 + 128.553 * 20 + 24.966 * 30) / 255]
    assert np.allclose(y[0], expected)


def test_psnr_known_value():
    # gray images whose Y differ by a known constant: Y = 16 + 219 * v / 255 for R = G = B = v
    a = np.full((20, 20, 3), 100, dtype=np.uint8)
    b = np.full((20, 20, 3), 110, dtype=np.uint8)
    diff = 10 * (65.481 + 128.553 + 24.966) / 255
    assert utils.calc_psnr(a, b, 0) == pytest.approx(10 * math.log10(255**2 / diff**2), abs=1e-9)
    assert utils.calc_psnr(a, a, 0) == float("inf")


def test_psnr_crops_the_border():
    a = np.full((20, 20, 3), 100, dtype=np.uint8)
    b = a.copy()
    b[:4] = 0  # only the top 4 rows differ
    assert utils.calc_psnr(a, b, 4) == float("inf")
    assert utils.calc_psnr(a, b, 3) < 30


def test_ssim_identical_and_known_values():
    img = random_image((40, 30))
    assert utils.calc_ssim(img, img, 4) == pytest.approx(1.0, abs=1e-12)
    # two constant images: sigma = 0 everywhere, so SSIM = (2 mu_x mu_y + C1) / (mu_x^2 + mu_y^2 + C1)
    a = np.full((30, 30, 3), 100, dtype=np.uint8)
    b = np.full((30, 30, 3), 150, dtype=np.uint8)
    ya, yb = utils.y_channel(a)[0, 0], utils.y_channel(b)[0, 0]
    c1 = (0.01 * 255) ** 2
    expected = (2 * ya * yb + c1) / (ya**2 + yb**2 + c1)
    assert utils.calc_ssim(a, b, 0) == pytest.approx(expected, abs=1e-9)
    noisy = np.clip(np.asarray(img).astype(int) + np.random.default_rng(0).integers(-40, 41, (30, 40, 3)), 0, 255)
    assert 0 < utils.calc_ssim(noisy.astype(np.uint8), img, 4) < 0.95


def test_ssim_gaussian_window_matches_independent_computation():
    """SSIM at one window position computed by hand with numpy equals the map's value there."""
    rng = np.random.default_rng(1)
    a = rng.integers(0, 256, (11, 11, 3), dtype=np.uint8)
    b = rng.integers(0, 256, (11, 11, 3), dtype=np.uint8)
    x, y = utils.y_channel(a), utils.y_channel(b)
    g = np.exp(-((np.arange(11) - 5) ** 2) / (2 * 1.5**2))
    w = np.outer(g, g) / np.outer(g, g).sum()
    mx, my = (w * x).sum(), (w * y).sum()
    vx, vy = (w * x * x).sum() - mx**2, (w * y * y).sum() - my**2
    cov = (w * x * y).sum() - mx * my
    c1, c2 = (0.01 * 255) ** 2, (0.03 * 255) ** 2
    expected = (2 * mx * my + c1) * (2 * cov + c2) / ((mx**2 + my**2 + c1) * (vx + vy + c2))
    assert utils.calc_ssim(a, b, 0) == pytest.approx(expected, abs=1e-10)


def test_metrics_reject_size_mismatch():
    with pytest.raises(ValueError, match="sizes differ"):
        utils.calc_psnr(np.zeros((4, 4, 3), np.uint8), np.zeros((4, 5, 3), np.uint8), 0)


def test_open_image_modes(tmp_path):
    rgba = Image.new("RGBA", (5, 4), (10, 20, 30, 0))
    rgba.save(tmp_path / "a.png")
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    Image.new("CMYK", (5, 4), (0, 0, 0, 0)).save(tmp_path / "c.tif")
    for name in ["a.png", "g.png", "c.tif"]:
        img = utils.open_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (5, 4)
    assert utils.open_image(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize("content,match", [(b"", "empty file"), (b"not an image", "cannot decode")])
def test_open_image_errors(tmp_path, content, match):
    path = tmp_path / "bad.png"
    path.write_bytes(content)
    with pytest.raises(utils.UserError, match=match):
        utils.open_image(path)
    with pytest.raises(utils.UserError, match="no such file"):
        utils.open_image(tmp_path / "missing.png")


def test_open_image_truncated(tmp_path):
    path = tmp_path / "t.png"
    random_image((64, 64)).save(path)
    data = path.read_bytes()
    path.write_bytes(data[: len(data) // 2])
    with pytest.raises(utils.UserError, match="t.png"):
        utils.open_image(path)


def test_save_checkpoint_is_atomic(tmp_path, monkeypatch):
    path = tmp_path / "ck.pth"
    utils.save_checkpoint({"format_version": 1, "x": torch.arange(3)}, path)
    before = path.read_bytes()

    def failing_save(obj, f, *args, **kwargs):
        f.write(b"half a checkpoint")
        raise RuntimeError("disk full")
    monkeypatch.setattr(torch, "save", failing_save)
    with pytest.raises(RuntimeError, match="disk full"):
        utils.save_checkpoint({"format_version": 1, "x": torch.arange(5)}, path)
    assert path.read_bytes() == before
    assert os.listdir(tmp_path) == ["ck.pth"]  # no temporary file left behind
    monkeypatch.undo()
    assert torch.equal(utils.load_checkpoint(path)["x"], torch.arange(3))


def test_load_checkpoint_errors(tmp_path):
    with pytest.raises(utils.UserError, match="no such file"):
        utils.load_checkpoint(tmp_path / "none.pth")
    (tmp_path / "junk.pth").write_bytes(b"\x00garbage" * 10)
    with pytest.raises(utils.UserError, match="junk.pth: not a readable PyTorch file"):
        utils.load_checkpoint(tmp_path / "junk.pth")
    torch.save({"a": torch.zeros(1)}, tmp_path / "foreign.pth")
    with pytest.raises(utils.UserError, match="not a checkpoint of this project"):
        utils.load_checkpoint(tmp_path / "foreign.pth")
    good = tmp_path / "good.pth"
    utils.save_checkpoint(utils.inference_checkpoint(models.SRResNet(**TINY)), good)
    data = good.read_bytes()
    (tmp_path / "cut.pth").write_bytes(data[: len(data) // 2])
    with pytest.raises(utils.UserError, match="cut.pth"):
        utils.load_checkpoint(tmp_path / "cut.pth")


def _classic_checkpoint(tmp_path, legacy_format):
    """A checkpoint as the classic tutorial saved it: whole pickled model (and optimizer) objects."""
    torch.manual_seed(0)
    model = models.SRResNet(**TINY)
    optimizer = torch.optim.Adam(model.parameters(), lr=1e-4)
    model(torch.randn(1, 3, 8, 8)).mean().backward()
    optimizer.step()
    gen = models.Generator(**TINY)
    disc = models.Discriminator(n_channels=8, fc_size=16)
    for m in (model, gen, disc):  # the classic classes had no `args` attribute
        del m.args
    path = tmp_path / ("legacy.pth.tar" if legacy_format else "zip.pth.tar")
    torch.save({"epoch": 7, "model": model, "optimizer": optimizer}, path,
               _use_new_zipfile_serialization=not legacy_format)
    gan_path = tmp_path / "gan.pth.tar"
    torch.save({"epoch": 3, "generator": gen, "discriminator": disc}, gan_path)
    return model, path, gen, disc, gan_path


@pytest.mark.parametrize("legacy_format", [False, True])
def test_import_classic_checkpoint(tmp_path, legacy_format):
    model, path, gen, disc, gan_path = _classic_checkpoint(tmp_path, legacy_format)
    with pytest.raises(utils.UserError, match="python utils.py convert"):
        models.load_model(path)  # plain loading refuses pickled objects and says what to do
    utils._main(["convert", str(path), str(tmp_path / "new.pth")])
    loaded = models.load_model(tmp_path / "new.pth")
    assert loaded.args == TINY
    x = torch.randn(1, 3, 6, 6)
    with torch.no_grad():
        assert torch.equal(loaded(x), model.eval()(x))
    ckpt = utils.import_legacy_checkpoint(gan_path, tmp_path / "gan.pth")
    assert ckpt["model"]["arch"] == "Generator" and ckpt["discriminator"]["args"]["fc_size"] == 16
    assert isinstance(models.load_model(tmp_path / "gan.pth"), models.Generator)


class _Evil:
    def __init__(self, marker):
        self.marker = marker

    def __reduce__(self):
        return (os.system, (f"touch {self.marker}",))


def test_import_refuses_malicious_pickle(tmp_path):
    marker = tmp_path / "pwned"
    path = tmp_path / "evil.pth.tar"
    torch.save({"epoch": 1, "model": _Evil(marker)}, path)
    with pytest.raises(utils.UserError, match="refused"):
        utils.import_legacy_checkpoint(path, tmp_path / "out.pth")
    with pytest.raises(utils.UserError, match="refused"):
        models.load_model(path)
    assert not marker.exists()
    assert not (tmp_path / "out.pth").exists()
    # the same with a plain pickle file (no zip container)
    raw = tmp_path / "evil.pkl"
    raw.write_bytes(pickle.dumps({"model": _Evil(marker)}))
    with pytest.raises(utils.UserError):
        utils.import_legacy_checkpoint(raw, tmp_path / "out.pth")
    assert not marker.exists()


def test_autocast_and_device_errors():
    with pytest.raises(utils.UserError, match="fp16 needs a CUDA"):
        utils.autocast(torch.device("cpu"), "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(utils.UserError, match="no CUDA"):
            utils.resolve_device("cuda")
    assert utils.resolve_device("cpu").type == "cpu"


def test_random_bytes_always_give_a_user_error(tmp_path):
    """Whatever a corrupt file holds, loading it is a one-line UserError, never another exception."""
    import random

    for seed in range(40):
        path = tmp_path / f"r{seed}.pth"
        rng = random.Random(seed)
        data = rng.randbytes(rng.randrange(1, 3000))
        if seed % 2:  # start like a pickle so that the unpickler gets further
            data = b"\x80\x02" + data
        path.write_bytes(data)
        with pytest.raises(utils.UserError, match=f"r{seed}.pth"):
            utils.load_checkpoint(path)
