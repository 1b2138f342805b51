"""create_data_lists: image filtering, unreadable files, errors, the command line."""

import json
import os

import pytest

import create_data_lists
from conftest import cli_error, load_script, random_image


@pytest.fixture
def mixed_folder(tmp_path):
    """Good images of several formats, a tiny one, a corrupt one and non-image files."""
    folder = tmp_path / "mixed"
    (folder / "sub").mkdir(parents=True)
    random_image((150, 120)).save(folder / "good.png")
    random_image((130, 110)).save(folder / "GOOD2.JPG")
    random_image((110, 200)).convert("L").save(folder / "gray.bmp")
    random_image((120, 120)).save(folder / "web.webp")
    random_image((120, 120)).save(folder / "sub" / "nested.tiff")
    random_image((50, 300)).save(folder / "tiny.png")  # one side below min_size
    (folder / "corrupt.jpg").write_bytes(b"\xff\xd8\xff garbage")
    (folder / "notes.txt").write_text("not an image")
    (folder / "empty.png").write_bytes(b"")
    return folder


def test_lists_keep_only_good_images_and_recursive_adds_sub_folders(tmp_path, mixed_folder):
    out = tmp_path / "lists"
    messages = []
    counts = create_data_lists.create_data_lists([str(mixed_folder)], [str(mixed_folder)], 100, str(out),
                                                 log=messages.append)
    train = json.loads((out / "train_images.json").read_text())
    names = sorted(p.rsplit("/", 1)[1] for p in train)
    assert names == ["GOOD2.JPG", "good.png", "gray.bmp", "web.webp"]
    assert json.loads((out / "mixed_test_images.json").read_text()) == train
    assert counts[str(out / "train_images.json")] == 4
    text = "\n".join(messages)
    assert "2 unreadable" in text and "corrupt.jpg" in text and "empty.png" in text
    assert "1 smaller than 100" in text
    # with recursive, sub/nested.tiff too
    create_data_lists.create_data_lists([str(mixed_folder)], [], 100, str(out), recursive=True, log=lambda m: None)
    train = json.loads((out / "train_images.json").read_text())
    assert any(p.endswith("sub/nested.tiff") for p in train) and len(train) == 5


def test_cli_and_a_missing_folder_that_writes_nothing(tmp_path, mixed_folder, capsys):
    out = tmp_path / "cli"
    argv = ["--train-folders", mixed_folder, "--test-folders", tmp_path / "nope", "--output-folder", out]
    assert "nope: no such folder" in cli_error(create_data_lists.main, argv, capsys)
    assert not out.exists()  # not even the train list of the good folder
    create_data_lists.main(["--train-folders", str(mixed_folder), "--min-size", "40", "--output-folder", str(out)])
    assert len(json.loads((out / "train_images.json").read_text())) == 5  # tiny.png now kept


def test_many_files_are_fast(tmp_path):
    """Only headers are read (and, for the duplicate check, files of equal size): 2,000 files scan in
    well under a minute on 2 cores."""
    import time

    folder = tmp_path / "many"
    folder.mkdir()
    img = random_image((120, 110))
    img.save(folder / "0.png")
    data = (folder / "0.png").read_bytes()
    for i in range(1, 2000):  # distinct files of one size: trailing bytes after the PNG's end
        (folder / f"{i}.png").write_bytes(data + i.to_bytes(4, "little"))
    start = time.time()
    create_data_lists.create_data_lists([str(folder)], [], 100, str(tmp_path / "l"), log=lambda m: None)
    assert time.time() - start < 60
    assert len(json.loads((tmp_path / "l" / "train_images.json").read_text())) == 2000


def test_store_flag_writes_the_decoded_store_and_removes_a_killed_runs_temporaries(tmp_path, mixed_folder):
    import datasets

    out = tmp_path / "lists"
    out.mkdir()
    for name in (".train_images.json.x1.tmp", ".train_images_store.bin.x2.tmp", ".train_images_store.json.x3.tmp"):
        (out / name).write_bytes(b"")
    create_data_lists.main(["--train-folders", str(mixed_folder), "--output-folder", str(out), "--store"])
    assert sorted(p.name for p in out.iterdir()) == ["train_images.json", "train_images_store.bin",
                                                     "train_images_store.json"]
    data_file, index_file = datasets.store_paths(str(out / "train_images.json"))
    index = json.loads(open(index_file).read())
    assert [e["path"] for e in index["images"]] == json.loads((out / "train_images.json").read_text())
    assert index["bytes"] == sum(3 * e["shape"][0] * e["shape"][1] for e in index["images"])
    assert datasets.SRDataset(str(out), "train", 96, 4, "[0, 1]", "[0, 1]").store is not None


def test_test_py_outputs_and_duplicates_are_not_listed_twice_or_as_ground_truth(tmp_path, tiny_checkpoint):
    """test.py's own outputs (marked PNGs, whatever their names) are skipped with a note; the same image
    under a second name or through a link is listed once, with a note; a test image that is also a
    training image is warned about."""
    folder = tmp_path / "train"
    folder.mkdir()
    random_image((120, 110), seed=1).save(folder / "a.png")
    random_image((120, 110), seed=2).save(folder / "b.png")
    (folder / "copy.png").write_bytes((folder / "a.png").read_bytes())
    (folder / "link.png").symlink_to(folder / "b.png")
    load_script("test").main(["--checkpoint", str(tiny_checkpoint), "--img", str(folder / "b.png"),
                              "--output-dir", str(folder)])  # b_sr.png, b_bicubic.png: marked outputs
    (folder / "b_sr.png").rename(folder / "renamed.png")  # a marked output under any name
    lines = []
    create_data_lists.create_data_lists([str(folder)], [str(folder)], 100, str(tmp_path / "l"), log=lines.append)
    listed = [os.path.basename(p) for p in json.loads((tmp_path / "l" / "train_images.json").read_text())]
    assert listed == ["a.png", "b.png"], listed
    text = "\n".join(lines)
    assert "skipped 2 image(s) that test.py wrote" in text
    assert "copy.png is the same image as" in text and "link.png is the same image as" in text
    assert "are also training images" in text
