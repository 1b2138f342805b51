"""SRDataset: crop alignment, value ranges, image modes, bad files and lists."""

import json

import numpy as np
import pytest
from PIL import Image

import images
import datasets
import utils
from conftest import random_image


def make_list(folder, paths, name="train_images.json"):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps([str(p) for p in paths]))
    return folder


def test_train_lr_is_exact_bicubic_of_hr_crop(data_lists):
    ds = datasets.SRDataset(data_lists, "train", 48, 4, "[0, 1]", "[0, 1]")
    lr, hr = ds[3]
    assert hr.shape == (3, 48, 48) and lr.shape == (3, 12, 12)
    hr_img = images.convert_image(hr, "[0, 1]", "pil")
    expected = images.convert_image(hr_img.resize((12, 12), Image.BICUBIC), "pil", "[0, 1]")
    assert torch_equal(lr, expected)


def test_train_crop_comes_from_the_image_and_is_deterministic(data_lists, image_folder):
    ds = datasets.SRDataset(data_lists, "train", 40, 4, "imagenet-norm", "[-1, 1]", seed=3)
    lr, hr = ds[1]
    assert torch_equal(ds[1][1], hr)  # same index, same crop
    n = len(ds)
    other_epoch = ds[1 + n][1]  # index k + n = same image, next epoch: another crop (almost surely)
    assert not torch_equal(other_epoch, hr)
    # the crop is a window of the source image
    full = np.asarray(images.open_image(ds.images[1])).astype(np.float32)
    crop = ((hr.numpy().transpose(1, 2, 0) + 1) / 2 * 255).round()
    found = any(np.array_equal(full[t:t + 40, l:l + 40], crop)
                for t in range(full.shape[0] - 39) for l in range(full.shape[1] - 39))
    assert found
    assert lr.mean().abs() < 3  # ImageNet-normalised range


def test_every_crop_position_is_reachable(tmp_path):
    """A 42x41 image with crop 40: 3 x 2 valid positions, all drawn (0-based, inclusive)."""
    img_path = tmp_path / "small.png"
    arr = np.arange(42 * 41 * 3, dtype=np.uint32).reshape(41, 42, 3) % 251
    Image.fromarray(arr.astype(np.uint8)).save(img_path)
    folder = make_list(tmp_path / "lists", [img_path])
    ds = datasets.SRDataset(folder, "train", 40, 4, "[0, 1]", "[0, 255]")
    positions = set()
    for k in range(200):
        hr = ds[k][1].round().numpy().transpose(1, 2, 0)
        positions.add(next((t, l) for t in range(2) for l in range(3) if np.array_equal(arr[t:t + 40, l:l + 40], hr)))
    assert positions == {(t, l) for t in range(2) for l in range(3)}


def test_test_split_whole_image_cropped_to_multiple(data_lists):
    ds = datasets.SRDataset(data_lists, "test", 0, 4, "imagenet-norm", "[-1, 1]", test_data_name="Val")
    lr, hr = ds[0]
    assert hr.shape == (3, 52, 64) and lr.shape == (3, 13, 16)
    ds3 = datasets.SRDataset(data_lists, "test", 0, 8, "imagenet-norm", "pil", test_data_name="Val")
    lr, hr = ds3[0]
    assert hr.size == (64, 48) and lr.shape == (3, 6, 8)


@pytest.mark.parametrize("mode", ["L", "RGBA", "P", "CMYK", "LA"])
def test_image_modes_become_rgb(tmp_path, mode):
    img = random_image((64, 64)).convert(mode)
    path = tmp_path / ("x.tif" if mode == "CMYK" else "x.png")
    img.save(path)
    ds = datasets.SRDataset(make_list(tmp_path / "l", [path]), "train", 32, 4, "[0, 1]", "[0, 1]")
    lr, hr = ds[0]
    assert lr.shape == (3, 8, 8) and hr.shape == (3, 32, 32)
    if mode in ("L", "LA"):
        assert torch_equal(hr[0], hr[1]) and torch_equal(hr[1], hr[2])


def test_augment_keeps_alignment(data_lists):
    ds = datasets.SRDataset(data_lists, "train", 40, 4, "[0, 1]", "[0, 1]", augment=True)
    for k in range(6):
        lr, hr = ds[k]
        hr_img = images.convert_image(hr, "[0, 1]", "pil")
        assert torch_equal(lr, images.convert_image(hr_img.resize((10, 10), Image.BICUBIC), "pil", "[0, 1]"))


def test_cache_gives_identical_samples(data_lists):
    a = datasets.SRDataset(data_lists, "train", 40, 4, "[0, 1]", "[0, 1]")
    b = datasets.SRDataset(data_lists, "train", 40, 4, "[0, 1]", "[0, 1]", cache=True)
    for k in (0, 7):
        assert torch_equal(a[k][1], b[k][1])  # first call decodes and caches
        assert torch_equal(a[k][1], b[k][1])  # second call comes from the cache
    assert len(b.cache) == 2


def test_corrupt_file_mid_training_is_replaced_with_a_warning(tmp_path):
    good = tmp_path / "good.png"
    random_image((64, 64)).save(good)
    bad = tmp_path / "bad.png"
    random_image((64, 64)).save(bad)
    ds = datasets.SRDataset(make_list(tmp_path / "l", [good, bad]), "train", 32, 4, "[0, 1]", "[0, 1]")
    bad.write_bytes(bad.read_bytes()[:100])  # corrupted after the list was checked
    with pytest.warns(UserWarning, match="bad.png"):
        lr, hr = ds[1]
    assert hr.shape == (3, 32, 32) and ds.failures >= 1


def test_small_images_are_dropped_and_all_small_is_an_error(tmp_path):
    small = tmp_path / "small.png"
    random_image((30, 30)).save(small)
    big = tmp_path / "big.png"
    random_image((60, 60)).save(big)
    ds = datasets.SRDataset(make_list(tmp_path / "l", [small, big]), "train", 48, 4, "[0, 1]", "[0, 1]")
    assert ds.images == [str(big)]
    with pytest.raises(utils.UserError, match="no image is at least 96"):
        datasets.SRDataset(tmp_path / "l", "train", 96, 4, "[0, 1]", "[0, 1]")


def test_bad_lists_and_crop(tmp_path):
    with pytest.raises(utils.UserError, match="no such data list"):
        datasets.SRDataset(tmp_path, "train", 96, 4, "[0, 1]", "[0, 1]")
    make_list(tmp_path / "e", [])
    with pytest.raises(utils.UserError, match="empty"):
        datasets.SRDataset(tmp_path / "e", "train", 96, 4, "[0, 1]", "[0, 1]")
    make_list(tmp_path / "g", [tmp_path / "gone.png"])
    with pytest.raises(utils.UserError, match="listed files are gone"):
        datasets.SRDataset(tmp_path / "g", "train", 96, 4, "[0, 1]", "[0, 1]")
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "train_images.json").write_text("{not json")
    with pytest.raises(utils.UserError, match="not a JSON list"):
        datasets.SRDataset(tmp_path / "j", "train", 96, 4, "[0, 1]", "[0, 1]")
    with pytest.raises(utils.UserError, match="not a multiple"):
        datasets.SRDataset(tmp_path, "train", 90, 4, "[0, 1]", "[0, 1]")


def torch_equal(a, b):
    import torch
    return torch.equal(a, b)
