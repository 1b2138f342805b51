"""Super-resolution data sets read from the JSON lists that create_data_lists.py writes.

Training samples are random HR crops with their LR input made by PIL bicubic down-sampling (as
MATLAB's imresize, antialiased); test samples are whole images cropped to a multiple of the scale.
A training list may have a decoded store next to it (:func:`write_store`): the images as raw
uint8 RGB in one file that every loader process memory-maps, so that a crop costs no decoding.
:func:`train_batches` serves a training run's batches in an order that depends only on (seed,
iteration), so that a resumed run continues exactly.
"""

import json
import os
import random
import warnings
import zlib

import numpy as np
import torch
from PIL import Image
from torch.utils.data import DataLoader, Dataset, Sampler
from tqdm import tqdm

import images
import utils


def list_path(data_folder, split, test_data_name=None):
    """Path of the JSON list for a split: train_images.json or <test_data_name>_test_images.json."""
    if split == "train":
        return os.path.join(data_folder, "train_images.json")
    if not test_data_name:
        raise ValueError("split 'test' needs test_data_name (e.g. 'Set5')")
    return os.path.join(data_folder, f"{test_data_name}_test_images.json")


def read_image_list(path):
    """The image paths of a JSON list; UserError if the list is missing, malformed or empty."""
    if not os.path.isfile(path):
        raise utils.UserError(f"{path}: no such data list (make it with create_data_lists.py)")
    try:
        with open(path) as f:
            paths = json.load(f)
    except OSError as e:
        raise utils.UserError(f"{path}: cannot read the data list ({e.strerror or e})") from None
    except (json.JSONDecodeError, UnicodeDecodeError) as e:
        raise utils.UserError(f"{path}: not a JSON list of image paths ({e})") from None
    if not isinstance(paths, list) or not all(isinstance(p, str) for p in paths):
        raise utils.UserError(f"{path}: not a JSON list of image paths")
    if not paths:
        raise utils.UserError(f"{path}: the data list is empty")
    missing = [p for p in paths if not os.path.isfile(p)]
    if missing:
        raise utils.UserError(f"{path}: {len(missing)} of {len(paths)} listed files are gone "
                              f"(e.g. {missing[0]}); recreate the list with create_data_lists.py")
    return paths


def store_paths(list_file):
    """(data file, index file) of the decoded store of a JSON list: <list>_store.bin and <list>_store.json."""
    stem = os.path.splitext(list_file)[0]
    return stem + "_store.bin", stem + "_store.json"


STORE_FORMAT = 2


def _stamp(path):
    """What identifies a file's contents without reading it: size, modification time, and inode and
    change time, which a copy, a move or a reset modification time does not preserve."""
    st = os.stat(path)
    return [st.st_size, st.st_mtime_ns, st.st_ino, st.st_ctime_ns]


def write_store(list_file, log=print):
    """Decode every image of a JSON list into its store (see :func:`store_paths`); returns the data file.

    Each image is decoded as training decodes it (images.open_image: EXIF rotation applied, RGB)
    and written as height x width x 3 bytes, one after the other; the index records, per image,
    its path, stamp (the store is refused once a source changes), offset, shape and the CRC-32 of its
    bytes (checked when training starts). Both files are written to temporary files first and
    appear together.
    """
    paths = read_image_list(list_file)
    data_file, index_file = store_paths(list_file)
    entries, offset = [], 0
    for path in (data_file, index_file):
        utils.remove_stale_temporaries(path)
    with utils.atomic_write_all([data_file, index_file], defer_signals=False) as (data, index):
        for path in tqdm(paths, desc=f"decoding into {os.path.basename(data_file)}", unit="img", leave=False,
                         disable=len(paths) < 50):
            stamp = _stamp(path)
            arr = np.asarray(images.open_image(path))  # (h, w, 3) uint8
            data.write(arr.tobytes())
            entries.append({"path": path, "stamp": stamp, "offset": offset, "shape": list(arr.shape),
                            "crc32": zlib.crc32(arr)})
            offset += arr.nbytes
        index.write(json.dumps({"format": STORE_FORMAT, "bytes": offset, "images": entries}).encode())
    log(f"{data_file}: {len(entries)} decoded images, {offset / 1e9:.2f} GB")
    return data_file


def _is_int(x, minimum=0):
    return isinstance(x, int) and not isinstance(x, bool) and x >= minimum


def _check_entry(e, size):
    """What is wrong with one index entry of a store of ``size`` bytes, or None."""
    if not isinstance(e, dict) or not isinstance(e.get("path"), str):
        return "an entry without a path"
    stamp, offset, shape = e.get("stamp"), e.get("offset"), e.get("shape")
    if not (isinstance(stamp, list) and len(stamp) == 4 and all(_is_int(x) for x in stamp)):
        return f"{e['path']}: no valid stamp"
    if not (isinstance(shape, list) and len(shape) == 3 and all(_is_int(x, 1) for x in shape) and shape[2] == 3):
        return f"{e['path']}: shape {shape!r} is not (height, width, 3)"
    if not (_is_int(offset) and offset + shape[0] * shape[1] * 3 <= size):
        return f"{e['path']}: its bytes (offset {offset!r}) are not inside the {size}-byte data file"
    if not _is_int(e.get("crc32")):
        return f"{e['path']}: no checksum"
    return None


def read_store_index(list_file, paths):
    """{path: index entry} of the list's store if it exists (None if not), every entry checked now.

    UserError (one line, "rebuild it") if the index is malformed, an entry points outside the data
    file, a listed file is missing from the store or changed since it was written (stamp), or the
    stored bytes of a listed image no longer match their checksum.
    """
    data_file, index_file = store_paths(list_file)
    if not os.path.isfile(index_file):
        return None
    rebuild = f"rebuild it (create_data_lists.py ... --store) or delete {data_file} and {index_file}"
    try:
        with open(index_file) as f:
            index = json.load(f)
        size = os.path.getsize(data_file)
    except (OSError, ValueError) as e:
        reason = " ".join(str(e).split())
        raise utils.UserError(f"{index_file}: unreadable decoded store ({reason}); {rebuild}") from None
    if not isinstance(index, dict) or index.get("format") != STORE_FORMAT or not isinstance(index.get("images"), list):
        raise utils.UserError(f"{index_file}: not a decoded store of this version; {rebuild}")
    if not _is_int(index.get("bytes")) or index["bytes"] != size:
        raise utils.UserError(f"{data_file}: {size} bytes, the index says {index.get('bytes')!r}; {rebuild}")
    entries = {}
    for e in index["images"]:
        problem = _check_entry(e, size)
        if problem:
            raise utils.UserError(f"{index_file}: {problem}; {rebuild}")
        entries[e["path"]] = e
    for path in paths:
        if path not in entries:
            raise utils.UserError(f"{data_file}: {path} is in the list but not in the decoded store; {rebuild}")
        if _stamp(path) != entries[path]["stamp"]:
            raise utils.UserError(f"{data_file}: {path} changed after the decoded store was written; {rebuild}")
    data = np.memmap(data_file, dtype=np.uint8, mode="r") if size else np.zeros(0, np.uint8)
    for path in tqdm(paths, desc="checking the decoded store", unit="img", leave=False, disable=len(paths) < 2000):
        e = entries[path]
        h, w, c = e["shape"]
        if zlib.crc32(data[e["offset"]:e["offset"] + h * w * c]) != e["crc32"]:
            raise utils.UserError(f"{data_file}: the bytes of {path} changed after the store was written; {rebuild}")
    del data
    return entries


def check_crop_size(crop_size, scale, of="the scale"):
    """UserError unless an HR crop of ``crop_size`` is a whole number of LR pixels at ``scale``."""
    if crop_size % scale:
        raise utils.UserError(f"--crop-size {crop_size} is not a multiple of {of} x{scale}")


class SRDataset(Dataset):
    """Pairs of (LR, HR) image tensors.

    Args:
        data_folder: folder with the JSON lists.
        split: 'train' (random crops) or 'test' (whole images).
        crop_size: HR crop size for training (a multiple of scaling_factor).
        scaling_factor: 2, 4 or 8.
        lr_img_type, hr_img_type: value conventions of the outputs (see images.convert_image), e.g.
            'imagenet-norm' for the generator's input and '[-1, 1]' for its target.
        test_data_name: which test list to read for split 'test' (e.g. 'Set5').
        augment: random horizontal flips and 90-degree rotations (training only; off in the paper).
        cache: keep decoded images in memory (for small data sets; each worker keeps its own copy).
            Not used with a store.
        store: 'auto' crops training images from the list's decoded store (:func:`write_store`)
            if there is one (a UserError if it is stale), False never. Same samples either way.
        seed: crops and augmentations are a function of (seed, epoch, index), so a run can be
            resumed exactly. Training index ``k >= len(self)`` means image ``k % len`` in epoch
            ``k // len`` (what ResumableSampler yields): each epoch has new crops.

    Training images whose sides are smaller than crop_size are dropped when the data set is built
    (a UserError if none remain). A file that fails to decode during training is replaced by
    another image, with a warning, rather than stopping a long run.
    """

    def __init__(self, data_folder, split, crop_size, scaling_factor, lr_img_type, hr_img_type,
                 test_data_name=None, augment=False, cache=False, seed=0, store="auto"):
        split = split.lower()
        if split not in ("train", "test"):
            raise ValueError(f"split must be 'train' or 'test', got {split!r}")
        if split == "train":
            check_crop_size(crop_size, scaling_factor)
        self.split = split
        self.crop_size = crop_size
        self.scaling_factor = scaling_factor
        self.lr_img_type = lr_img_type
        self.hr_img_type = hr_img_type
        self.augment = augment
        self.cache = {} if cache else None
        self.seed = seed
        self.failures = 0

        path = list_path(data_folder, split, test_data_name)
        paths = read_image_list(path)
        self.store = None  # {path: store entry} when cropping from the decoded store
        self.store_file = None
        self._store_data = None  # the memory map, opened in each process on first use
        if split == "train" and store:
            self.store = read_store_index(path, paths)
            self.store_file = store_paths(path)[0] if self.store is not None else None
        if split == "train":
            sizes = ([self.store[p]["shape"][:2] for p in paths] if self.store is not None
                     else [_header_size(p) for p in paths])
            paths = [p for p, size in zip(paths, sizes) if min(size) >= crop_size]
            if not paths:
                raise utils.UserError(f"{path}: no image is at least {crop_size} pixels on each side; "
                                      "use a smaller --crop-size")
        self.images = paths

    def __len__(self):
        return len(self.images)

    def __getstate__(self):
        state = dict(self.__dict__)
        state["_store_data"] = None  # worker processes map the file themselves; never pickle the data
        return state

    def __getitem__(self, k):
        """Returns (lr, hr) tensors of shapes (3, h, w) and (3, h * s, w * s)."""
        if self.split == "test":
            return self._make_pair(images.crop_to_multiple(self._load(self.images[k]), self.scaling_factor))
        epoch, i = divmod(k, len(self.images))
        rng = random.Random(f"{self.seed}-{epoch}-{i}")
        for attempt in range(10):
            index = i if attempt == 0 else rng.randrange(len(self.images))
            try:
                img = self._load(self.images[index])
            except utils.UserError as e:
                self.failures += 1
                warnings.warn(f"skipping an unreadable training image ({self.failures} so far in this process): {e}",
                              stacklevel=2)
                continue
            return self._make_pair(self._random_crop(img, rng))
        raise utils.UserError("10 training images in a row could not be decoded; check the data list")

    def _load(self, path):
        """The decoded RGB image of a file: from the store (an (h, w, 3) uint8 array view), else
        a PIL image (from the cache if enabled)."""
        if self.store is not None:
            if self._store_data is None:
                self._store_data = np.memmap(self.store_file, dtype=np.uint8, mode="r")
            entry = self.store[path]
            h, w, c = entry["shape"]
            return self._store_data[entry["offset"]:entry["offset"] + h * w * c].reshape(h, w, c)
        if self.cache is None:
            return images.open_image(path)
        if path not in self.cache:
            self.cache[path] = images.open_image(path)
        return self.cache[path]

    def _random_crop(self, img, rng):
        """A uniformly random crop_size x crop_size crop (every valid position), optionally augmented.

        img: a PIL image, or an (h, w, 3) uint8 array from the store (the same pixels, the same crop).
        """
        if isinstance(img, np.ndarray):
            h, w = img.shape[:2]  # at least crop_size (the store is checked when the data set is built)
        else:
            w, h = img.size
            if min(w, h) < self.crop_size:  # a file replaced since the list was checked
                img = img.resize((max(w, self.crop_size), max(h, self.crop_size)), Image.BICUBIC)
                w, h = img.size
        left = rng.randint(0, w - self.crop_size)
        top = rng.randint(0, h - self.crop_size)
        if isinstance(img, np.ndarray):
            hr = Image.fromarray(np.ascontiguousarray(img[top:top + self.crop_size, left:left + self.crop_size]), "RGB")
        else:
            hr = img.crop((left, top, left + self.crop_size, top + self.crop_size))
        if self.augment:
            if rng.random() < 0.5:
                hr = hr.transpose(Image.FLIP_LEFT_RIGHT)
            rotation = rng.randrange(4)
            if rotation:
                hr = hr.transpose((None, Image.ROTATE_90, Image.ROTATE_180, Image.ROTATE_270)[rotation])
        return hr

    def _make_pair(self, hr):
        """(LR, HR) tensors from an HR PIL image whose sides are multiples of the scale."""
        lr = images.bicubic_resize(hr, (hr.width // self.scaling_factor, hr.height // self.scaling_factor))
        lr = images.convert_image(lr, "pil", self.lr_img_type)
        hr = images.convert_image(hr, "pil", self.hr_img_type)
        return lr, hr


def _header_size(path):
    """(width, height) of an image read from its header only; (0, 0) if the header is unreadable."""
    try:
        with Image.open(path) as img:
            return img.size
    except (OSError, SyntaxError, ValueError):
        return (0, 0)


# ----------------------------------------------------------------------------------------------
# the training batches


class ResumableSampler(Sampler):
    """An endless sampler whose order depends only on (seed, position), so a run resumes exactly.

    Each epoch is a fresh permutation (seeded by seed and epoch) split between the processes of a
    torchrun job; incomplete batches are dropped. Yields ``epoch * n + index`` so that SRDataset
    draws that epoch's crop. Starts at batch ``start_batch``.
    """

    def __init__(self, n, batch_size, seed, rank=0, world_size=1, start_batch=0):
        self.n, self.batch_size, self.seed = n, batch_size, seed
        self.rank, self.world_size = rank, world_size
        self.batches_per_epoch = (n // world_size) // batch_size
        if self.batches_per_epoch == 0:
            raise utils.UserError(f"the training list has {n} usable images, fewer than one batch of "
                                  f"{batch_size} per process ({world_size} processes); lower --batch-size")
        self.start_batch = start_batch

    def __iter__(self):
        epoch, offset = divmod(self.start_batch, self.batches_per_epoch)
        while True:
            g = torch.Generator().manual_seed(self.seed * 100003 + epoch)
            order = torch.randperm(self.n, generator=g)[self.rank::self.world_size]
            order = order[: self.batches_per_epoch * self.batch_size]
            for index in order[offset * self.batch_size:].tolist():
                yield epoch * self.n + index
            epoch, offset = epoch + 1, 0


def _worker_init(_):
    torch.set_num_threads(1)  # one thread per loader process: more only fight for the cores


def train_batches(args, scale, start_iteration, rank=0, world_size=1, pin_memory=False):
    """Endless iterator of a training run's (LR ImageNet-normalised, HR in [-1, 1]) batches from
    iteration ``start_iteration`` on, for this process of ``world_size`` (``args``: the run's flags)."""
    dataset = SRDataset(args.data_folder, "train", args.crop_size, scale, "imagenet-norm", "[-1, 1]",
                        augment=args.augment, seed=args.seed)
    # a decoded store (create_data_lists.py --store) is shared by the workers; a cache is per worker
    if dataset.store is None and (args.cache_images == "on" or (args.cache_images == "auto" and len(dataset) <= 2000)):
        dataset.cache = {}
    sampler = ResumableSampler(len(dataset), args.batch_size, args.seed, rank, world_size, start_iteration)
    loader = DataLoader(dataset, batch_size=args.batch_size, sampler=sampler, num_workers=args.workers,
                        pin_memory=pin_memory, drop_last=True, worker_init_fn=_worker_init,
                        prefetch_factor=4 if args.workers > 0 else None)
    # the DataLoader draws its workers' seeds from torch's RNG: fork it, so that the RNG state that
    # --resume restores is the one the uninterrupted run has at that iteration
    with torch.random.fork_rng(devices=[]):
        return iter(loader)
