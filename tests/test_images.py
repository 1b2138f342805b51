"""Image conversion and image files."""

import numpy as np
import pytest
import torch
from PIL import Image

import images
import utils
from conftest import random_image

SPACES = ["[0, 1]", "[-1, 1]", "[0, 255]", "imagenet-norm"]


@pytest.mark.parametrize("space", SPACES)
@pytest.mark.parametrize("batch", [False, True])
def test_convert_image_round_trips(space, batch):
    x = torch.rand(2, 3, 5, 7) if batch else torch.rand(3, 5, 7)
    there = images.convert_image(x, "[0, 1]", space)
    back = images.convert_image(there, space, "[0, 1]")
    assert torch.allclose(back, x, atol=1e-6)


def test_convert_image_known_values():
    x = torch.tensor([0.0, 0.5, 1.0]).view(3, 1, 1)
    assert torch.allclose(images.convert_image(x, "[0, 1]", "[-1, 1]").flatten(), torch.tensor([-1.0, 0.0, 1.0]))
    assert torch.allclose(images.convert_image(x, "[0, 1]", "[0, 255]").flatten(), torch.tensor([0.0, 127.5, 255.0]))
    norm = images.convert_image(x, "[0, 1]", "imagenet-norm").flatten()
    expected = [(0 - 0.485) / 0.229, (0.5 - 0.456) / 0.224, (1 - 0.406) / 0.225]
    assert torch.allclose(norm, torch.tensor(expected), atol=1e-6)
    white = torch.ones(3, 2, 2)
    black = torch.zeros(2, 3, 2, 2)
    assert torch.allclose(images.convert_image(white, "[0, 1]", "y-channel"), torch.full((2, 2), 235.0))
    assert images.convert_image(black, "[0, 1]", "y-channel").shape == (2, 2, 2)
    assert torch.allclose(images.convert_image(black, "[0, 1]", "y-channel"), torch.full((2, 2, 2), 16.0))


def test_convert_image_pil_round_trip():
    img = random_image((9, 7))
    t = images.convert_image(img, "pil", "[-1, 1]")
    assert t.shape == (3, 7, 9) and t.min() >= -1 and t.max() <= 1
    back = images.convert_image(t, "[-1, 1]", "pil")
    assert np.array_equal(np.asarray(back), np.asarray(img))
    # values outside the range are clamped when making a picture
    assert np.asarray(images.convert_image(torch.full((3, 2, 2), 3.0), "[0, 1]", "pil")).max() == 255
    gray = images.convert_image(img.convert("L"), "pil", "[0, 1]")
    assert gray.shape == (3, 7, 9)


def test_convert_image_bad_arguments():
    with pytest.raises(ValueError, match="source"):
        images.convert_image(torch.rand(3, 2, 2), "y-channel", "pil")
    with pytest.raises(ValueError, match="target"):
        images.convert_image(torch.rand(3, 2, 2), "[0, 1]", "hsv")


def test_open_image_modes(tmp_path):
    Image.new("RGBA", (5, 4), (10, 20, 30, 0)).save(tmp_path / "a.png")
    Image.new("L", (5, 4), 77).save(tmp_path / "g.png")
    Image.new("CMYK", (5, 4), (0, 0, 0, 0)).save(tmp_path / "c.tif")
    for name in ["a.png", "g.png", "c.tif"]:
        img = images.open_image(tmp_path / name)
        assert img.mode == "RGB" and img.size == (5, 4)
    assert images.open_image(tmp_path / "g.png").getpixel((0, 0)) == (77, 77, 77)


@pytest.mark.parametrize("content, match", [(b"", "empty file"), (b"not an image", "cannot decode"),
                                            ("half a PNG", "bad.png: "), (None, "bad.png: no such file")])
def test_open_image_errors(tmp_path, content, match):
    path = tmp_path / "bad.png"
    if content == "half a PNG":
        random_image((64, 64)).save(path)
        content = path.read_bytes()[:path.stat().st_size // 2]
    if content is not None:
        path.write_bytes(content)
    with pytest.raises(utils.UserError, match=match):
        images.open_image(path)
