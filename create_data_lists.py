"""Scan image folders and write the JSON data lists that datasets.SRDataset reads.

    python create_data_lists.py --train-folders datasets/T91 datasets/BSDS200 \\
        --test-folders datasets/Set5 datasets/Set14 --output-folder data_lists

Writes <output-folder>/train_images.json (all training folders) and one <folder name>_test_images.json
per test folder: absolute paths of the images whose sides are both >= --min-size. Only headers are
read, so ~120k COCO files take a minute or two; undecodable files are skipped and listed.
"""

import hashlib
import json
import os

from PIL import Image
from tqdm import tqdm

import datasets
import images
import utils


def scan_images(paths, min_size, desc="scanning"):
    """Split paths into (kept, too_small, unreadable, outputs) by reading each image's header;
    ``outputs`` are the images test.py wrote (images.OUTPUT_MARK): up-scaled blur, not ground truth."""
    kept, too_small, unreadable, outputs = [], [], [], []
    for path in tqdm(paths, desc=desc, unit="img", leave=False, disable=len(paths) < 500):
        try:
            with Image.open(path) as img:
                w, h = img.size
                ours = img.format == "PNG" and img.info.get(images.OUTPUT_MARK[0]) == images.OUTPUT_MARK[1]
        except Exception:  # noqa: BLE001 - one odd file (a decompression bomb...) must not end a 120k-file scan
            unreadable.append(path)
            continue
        if ours:
            outputs.append(path)
        else:
            (kept if min(w, h) >= min_size else too_small).append(path)
    return kept, too_small, unreadable, outputs


def drop_duplicates(paths):
    """(unique paths, [(duplicate, the path it repeats)]): the same file through a link, or the same
    bytes under another name (only files of equal size are read and compared)."""
    by_size = {}
    for path in paths:
        by_size.setdefault(os.path.getsize(path), []).append(path)
    first, duplicates = {}, []
    for path in paths:
        key = os.path.realpath(path)
        if len(by_size[os.path.getsize(path)]) > 1 and key not in first:
            with open(path, "rb") as f:
                key = hashlib.sha256(f.read()).hexdigest()
        if key in first:
            duplicates.append((path, first[key]))
        else:
            first[key] = path
            first.setdefault(os.path.realpath(path), path)
    return [p for p in paths if p not in dict(duplicates)], duplicates


def create_data_lists(train_folders, test_folders, min_size, output_folder, recursive=False, log=print):
    """Write train_images.json and <name>_test_images.json files; returns {list file: image count}.

    Raises UserError for a missing folder, two test folders with the same name, or a list with no
    image; then nothing is written (all lists or none).
    """
    names = [os.path.basename(os.path.normpath(f)) for f in test_folders]
    if len(set(names)) != len(names):
        raise utils.UserError(f"test folders must have distinct names (the list files are named after them): {names}")
    # check every folder first so that a typo in the last one does not leave half the lists written
    train_paths = [p for folder in train_folders for p in images.find_images(folder, recursive)]
    test_paths = {name: images.find_images(folder, recursive) for name, folder in zip(names, test_folders)}

    jobs = ([("train_images.json", train_paths)] if train_folders else []) + \
           [(f"{name}_test_images.json", paths) for name, paths in test_paths.items()]
    lists, counts = [], {}
    for filename, _ in jobs:  # hidden temporaries of a run that was killed while writing
        utils.remove_stale_temporaries(os.path.join(output_folder, filename))
    for filename, paths in jobs:
        kept, too_small, unreadable, outputs = scan_images(paths, min_size, desc=filename)
        kept, duplicates = drop_duplicates(kept)
        out = os.path.join(output_folder, filename)
        log(f"{out}: {len(kept)} images ({len(too_small)} smaller than {min_size} px skipped, "
            f"{len(unreadable)} unreadable skipped)")
        if outputs:
            log(f"  note: skipped {len(outputs)} image(s) that test.py wrote (up-scaled, not ground truth), "
                f"e.g. {os.path.basename(outputs[0])}")
        for duplicate, original in duplicates[:10]:
            log(f"  note: {duplicate} is the same image as {original}; listed once")
        if len(duplicates) > 10:
            log(f"  note: and {len(duplicates) - 10} more duplicates, listed once")
        if unreadable:
            shown = ", ".join(os.path.basename(p) for p in unreadable[:10])
            log(f"  unreadable: {shown}" + (f" and {len(unreadable) - 10} more" if len(unreadable) > 10 else ""))
        if not kept:
            raise utils.UserError(f"{out}: no image qualifies (of {len(paths)} found, {len(too_small)} are smaller "
                                  f"than --min-size {min_size}, {len(unreadable)} unreadable); nothing written")
        lists.append((out, kept))
        counts[out] = len(kept)
    train = {os.path.realpath(p) for out, kept in lists if out.endswith("train_images.json") for p in kept}
    for out, kept in lists:
        shared = [p for p in kept if os.path.realpath(p) in train] if not out.endswith("train_images.json") else []
        if shared:
            log(f"  warning: {len(shared)} of the {len(kept)} images of {out} are also training images "
                f"(e.g. {shared[0]}): validation on them measures memory, not generalisation")
    # all lists or none
    with utils.atomic_write_all([out for out, _ in lists]) as files:
        for (_, kept), f in zip(lists, files):
            f.write(json.dumps(kept, indent=0).encode())
    return counts


def main(argv=None):
    parser = utils.ArgumentParser(description="Write JSON lists of training and test images for SRDataset.")
    parser.add_argument("--train-folders", nargs="*", default=[],
                        help="folders of training images (e.g. COCO train2014 val2014, or T91 BSDS200)")
    parser.add_argument("--test-folders", nargs="*", default=[],
                        help="folders of test images (e.g. Set5 Set14 BSD100); one list per folder")
    parser.add_argument("--min-size", type=int, default=100,
                        help="keep images whose width and height are both at least this (default: 100)")
    parser.add_argument("--output-folder", default="data_lists", help="where to write the lists (default: data_lists)")
    parser.add_argument("--recursive", action="store_true", help="also look in sub-folders")
    parser.add_argument("--store", action="store_true",
                        help="also decode the training images into a store that training memory-maps "
                             "(3 x width x height bytes per image; no decoding per sample)")
    args = parser.parse_args(argv)
    if not args.train_folders and not args.test_folders:
        parser.error("give --train-folders and/or --test-folders")
    if args.min_size < 1:
        parser.error("--min-size must be at least 1")
    probe = os.path.join(args.output_folder, "train_images.json")
    try:  # before the scan
        utils.check_writable(probe)
    except utils.UserError as e:
        raise utils.UserError(f"{args.output_folder}: --output-folder: {str(e)[len(probe) + 2:]}") from None
    create_data_lists(args.train_folders, args.test_folders, args.min_size, args.output_folder, args.recursive)
    if args.store and args.train_folders:
        datasets.write_store(datasets.list_path(args.output_folder, "train"))


if __name__ == "__main__":
    utils.run_cli(main)
