"""SRDataset: crop alignment, value ranges, image modes, bad files and lists."""

import json
import os
import pickle
from pathlib import Path

import numpy as np
import pytest
import torch
from PIL import Image

import datasets
import images
import utils
from conftest import random_image


def make_list(folder, paths, name="train_images.json"):
    folder.mkdir(exist_ok=True)
    (folder / name).write_text(json.dumps([str(p) for p in paths]))
    return folder


@pytest.mark.parametrize("augment", [False, True])
def test_train_lr_is_exact_bicubic_of_hr_crop(data_lists, augment):
    """With flips and rotations too: the LR image is made from the augmented HR crop."""
    ds = datasets.SRDataset(data_lists, "train", 48, 4, "[0, 1]", "[0, 1]", augment=augment)
    for k in range(6):
        lr, hr = ds[k]
        assert hr.shape == (3, 48, 48) and lr.shape == (3, 12, 12)
        hr_img = images.convert_image(hr, "[0, 1]", "pil")
        assert torch.equal(lr, images.convert_image(hr_img.resize((12, 12), Image.BICUBIC), "pil", "[0, 1]"))


def test_train_crop_comes_from_the_image_and_is_deterministic(data_lists, image_folder):
    ds = datasets.SRDataset(data_lists, "train", 40, 4, "imagenet-norm", "[-1, 1]", seed=3)
    lr, hr = ds[1]
    assert torch.equal(ds[1][1], hr)  # same index, same crop
    n = len(ds)
    other_epoch = ds[1 + n][1]  # index k + n = same image, next epoch: another crop (almost surely)
    assert not torch.equal(other_epoch, hr)
    # the crop is a window of the source image
    full = np.asarray(images.open_image(ds.images[1])).astype(np.float32)
    crop = ((hr.numpy().transpose(1, 2, 0) + 1) / 2 * 255).round()
    found = any(np.array_equal(full[t:t + 40, left:left + 40], crop)
                for t in range(full.shape[0] - 39) for left in range(full.shape[1] - 39))
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
        positions.add(next((t, left) for t in range(2) for left in range(3)
                           if np.array_equal(arr[t:t + 40, left:left + 40], hr)))
    assert positions == {(t, left) for t in range(2) for left in range(3)}


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
        assert torch.equal(hr[0], hr[1]) and torch.equal(hr[1], hr[2])


def test_cache_gives_identical_samples(data_lists):
    a = datasets.SRDataset(data_lists, "train", 40, 4, "[0, 1]", "[0, 1]")
    b = datasets.SRDataset(data_lists, "train", 40, 4, "[0, 1]", "[0, 1]", cache=True)
    for k in (0, 7):
        assert torch.equal(a[k][1], b[k][1])  # first call decodes and caches
        assert torch.equal(a[k][1], b[k][1])  # second call comes from the cache
    assert len(b.cache) == 2


def test_corrupt_file_mid_training_is_replaced_with_a_warning(tmp_path):
    good, bad = tmp_path / "good.png", tmp_path / "bad.png"
    random_image((64, 64)).save(good)
    random_image((64, 64)).save(bad)
    ds = datasets.SRDataset(make_list(tmp_path / "l", [good, bad]), "train", 32, 4, "[0, 1]", "[0, 1]")
    bad.write_bytes(bad.read_bytes()[:100])  # corrupted after the list was checked
    with pytest.warns(UserWarning, match="bad.png"):
        lr, hr = ds[1]
    assert hr.shape == (3, 32, 32) and ds.failures >= 1


def test_small_images_are_dropped_and_bad_lists_are_refused(tmp_path):
    small, big = tmp_path / "small.png", tmp_path / "big.png"
    random_image((30, 30)).save(small)
    random_image((60, 60)).save(big)
    ds = datasets.SRDataset(make_list(tmp_path / "l", [small, big]), "train", 48, 4, "[0, 1]", "[0, 1]")
    assert ds.images == [str(big)]
    make_list(tmp_path / "e", [])
    make_list(tmp_path / "g", [tmp_path / "gone.png"])
    (tmp_path / "j").mkdir()
    (tmp_path / "j" / "train_images.json").write_text("{not json")
    for folder, crop, message in [(tmp_path, 96, "no such data list"), (tmp_path / "e", 96, "empty"),
                                  (tmp_path / "g", 96, "listed files are gone"),
                                  (tmp_path / "j", 96, "not a JSON list"), (tmp_path, 90, "not a multiple"),
                                  (tmp_path / "l", 96, "no image is at least 96")]:  # small and big are too small
        with pytest.raises(utils.UserError, match=message):
            datasets.SRDataset(folder, "train", crop, 4, "[0, 1]", "[0, 1]")


@pytest.fixture
def mixed_list(tmp_path):
    """A training list of images of several modes, one JPEG with an EXIF rotation."""
    folder = tmp_path / "mixed"
    folder.mkdir()
    random_image((90, 70), seed=1).save(folder / "rgb.png")
    random_image((64, 80), seed=2).convert("L").save(folder / "gray.png")
    random_image((72, 72), seed=3).convert("P").save(folder / "palette.png")
    random_image((80, 66), seed=4).convert("RGBA").save(folder / "alpha.png")
    exif = Image.Exif()
    exif[0x0112] = 6  # orientation: rotate 90 degrees clockwise to display
    random_image((100, 60), seed=5).save(folder / "rotated.jpg", exif=exif)
    return make_list(tmp_path / "lists", sorted(folder.iterdir()))


@pytest.mark.parametrize("augment", [False, True])
def test_store_gives_exactly_the_samples_of_decoding(mixed_list, augment):
    list_file = str(mixed_list / "train_images.json")
    decoded = datasets.SRDataset(mixed_list, "train", 48, 4, "imagenet-norm", "[-1, 1]", augment=augment, seed=5)
    assert decoded.store is None
    datasets.write_store(list_file, log=lambda *a: None)
    stored = datasets.SRDataset(mixed_list, "train", 48, 4, "imagenet-norm", "[-1, 1]", augment=augment, seed=5)
    assert stored.store is not None and stored.images == decoded.images
    assert datasets.SRDataset(mixed_list, "train", 48, 4, "[0, 1]", "[0, 1]", store=False).store is None
    # every image, three epochs (k >= len: the next epochs' crops), bit for bit
    for k in range(3 * len(stored)):
        (lr_a, hr_a), (lr_b, hr_b) = decoded[k], stored[k]
        assert torch.equal(lr_a, lr_b) and torch.equal(hr_a, hr_b), k
    # the store holds what open_image decodes (EXIF rotation applied: the JPEG is 60 wide, 100 high)
    entry = stored.store[next(p for p in stored.images if p.endswith("rotated.jpg"))]
    assert entry["shape"] == [100, 60, 3]
    data_file, index_file = datasets.store_paths(list_file)
    assert os.path.getsize(data_file) == sum(3 * h * w for h, w, _ in (e["shape"] for e in stored.store.values()))
    # a pickled data set (what a spawned worker gets) carries the index, not the pixels
    stored[0]
    assert len(pickle.dumps(stored)) < 10_000 and pickle.loads(pickle.dumps(stored))[1][1].shape == (3, 48, 48)


def test_a_changed_source_list_or_store_is_refused_with_one_line(mixed_list, tmp_path):
    """Refused in one line: a listed image touched (same size, new time) or replaced by a copy with
    its old time (new inode and change time), a list naming an image the store lacks, a data file of
    the wrong size, bytes of the store zeroed in place (checksum)."""
    list_file = str(mixed_list / "train_images.json")
    paths = json.loads((mixed_list / "train_images.json").read_text())
    data_file, _ = datasets.store_paths(list_file)

    def refused(match):
        with pytest.raises(utils.UserError, match=match) as e:
            datasets.SRDataset(mixed_list, "train", 48, 4, "[0, 1]", "[0, 1]")
        assert "\n" not in str(e.value)

    datasets.write_store(list_file, log=lambda *a: None)
    st = os.stat(paths[0])
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns + 10**9))  # touched: same size, new time
    refused(r"changed after the decoded store was written; rebuild it")
    datasets.write_store(list_file, log=lambda *a: None)  # rebuilt: accepted again
    assert datasets.SRDataset(mixed_list, "train", 48, 4, "[0, 1]", "[0, 1]").store is not None
    st = os.stat(paths[0])
    other = tmp_path / "same_size"
    other.write_bytes(Path(paths[0]).read_bytes())
    os.replace(other, paths[0])  # same bytes, same size: only the identity changed
    os.utime(paths[0], ns=(st.st_atime_ns, st.st_mtime_ns))
    assert os.stat(paths[0]).st_size == st.st_size and os.stat(paths[0]).st_mtime_ns == st.st_mtime_ns
    refused("changed after the decoded store was written; rebuild it")
    datasets.write_store(list_file, log=lambda *a: None)
    extra = tmp_path / "extra.png"
    random_image((64, 64)).save(extra)
    make_list(mixed_list, paths + [str(extra)])  # the list changed, the store did not
    refused("not in the decoded store")
    make_list(mixed_list, paths)
    with open(data_file, "r+b") as f:
        f.truncate(100)
    refused("bytes, the index says")
    datasets.write_store(list_file, log=lambda *a: None)
    with open(data_file, "r+b") as f:
        f.seek(os.path.getsize(data_file) // 2)
        f.write(bytes(64))
    refused(r"the bytes of .* changed after the store was written; rebuild it")
    # the test split never uses it
    make_list(mixed_list, paths, name="Val_test_images.json")
    assert datasets.SRDataset(mixed_list, "test", 0, 4, "[0, 1]", "[0, 1]", test_data_name="Val")[0][1].dim() == 3


@pytest.mark.parametrize("key, value, message", [
    ("offset", 10**9, "not inside the"),
    ("offset", -1, "not inside the"),
    ("offset", "0", "not inside the"),
    ("shape", [10, 10, 4], "is not (height, width, 3)"),
    ("shape", [10, 10], "is not (height, width, 3)"),
    ("shape", None, "is not (height, width, 3)"),
    ("path", None, "an entry without a path"),
    ("stamp", "yesterday", "no valid stamp"),
    ("crc32", None, "no checksum"),
    ("bytes", str, "the index says '"),  # the right number of bytes, as text
    ("format", 1, "not a decoded store of this version"),
    ("images", None, "not a decoded store of this version"),
])
def test_every_store_entry_is_checked_at_start(mixed_list, key, value, message):
    """A malformed index (None: the key removed; bytes, format and images are the index's own keys,
    the others the first image's) stops the data set before training, in one 'rebuild it' line
    naming the store."""
    list_file = str(mixed_list / "train_images.json")
    datasets.write_store(list_file, log=lambda *a: None)
    _, index_file = datasets.store_paths(list_file)
    index = json.loads(Path(index_file).read_text())
    where = index if key in ("bytes", "format", "images") else index["images"][0]
    if value is None:
        del where[key]
    else:
        where[key] = value(where[key]) if callable(value) else value
    Path(index_file).write_text(json.dumps(index))
    with pytest.raises(utils.UserError) as e:
        datasets.SRDataset(mixed_list, "train", 48, 4, "[0, 1]", "[0, 1]")
    assert message in str(e.value) and "rebuild it" in str(e.value) and "\n" not in str(e.value)
    assert "_store." in str(e.value)
