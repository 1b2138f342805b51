"""Download the standard test sets (Set5, Set14, BSD100, Urban100) into datasets/<set>/.

    python download_data.py all                 # or: python download_data.py Set5 Set14

The files are the x4 ground-truth images (``image_SRF_4/*_HR.png``) published by Huang, Singh and
Ahuja (CVPR 2015) in https://github.com/jbhuang0604/SelfExSR, at a fixed commit. Every file is
checked against its SHA-256 in ``download_manifest.tsv`` before it takes its final name; files
already present and correct are skipped, so an interrupted run is finished by running it again.
"""

import contextlib
import csv
import glob
import hashlib
import http.client
import os
import shlex
import tempfile
import time
import urllib.error
import urllib.request
from pathlib import Path

from tqdm import tqdm

import utils

SETS = ("Set5", "Set14", "BSD100", "Urban100")
COMMIT = "8f6dd8c1d20cb7e8792a7177b4f6fd677633f598"
DEFAULT_BASE_URL = f"https://raw.githubusercontent.com/jbhuang0604/SelfExSR/{COMMIT}/"
MANIFEST = os.path.join(os.path.dirname(os.path.abspath(__file__)), "download_manifest.tsv")
TIMEOUT = 60  # seconds without an answer before a connection is given up
# a file must arrive within START_SECONDS + bytes / MIN_SPEED (--min-speed), however the server behaves
START_SECONDS = 30
MIN_SPEED = 20 * 1024


def read_manifest(path=None):
    """{set: [(path in the repository, bytes, sha256)]} from the manifest file."""
    files = {}
    with open(path or MANIFEST, newline="") as f:
        for row in csv.DictReader(f, delimiter="\t"):
            files.setdefault(row["set"], []).append((row["path"], int(row["bytes"]), row["sha256"]))
    return files


def sha256_of(path):
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        for block in iter(lambda: f.read(1 << 20), b""):
            digest.update(block)
    return digest.hexdigest()


def is_complete(path, size, sha256):
    return os.path.isfile(path) and os.path.getsize(path) == size and sha256_of(path) == sha256


def file_url(base_url, path):
    """The address of a repository file: ``base_url`` stands for everything before 'data/'."""
    if os.path.isdir(base_url):  # a local copy of the repository
        base_url = Path(base_url).resolve().as_uri()
    return base_url.rstrip("/") + "/" + path


def download(url, dest, size, sha256, min_speed=MIN_SPEED):
    """Download ``url`` to ``dest``; it appears there only if it has the manifest's size and SHA-256
    (UserError otherwise). Bounded: more bytes than ``size`` stop it at once, and so does the deadline
    of START_SECONDS + size / ``min_speed`` (bytes per second), so no server can fill the disk or keep
    it waiting for ever; nothing is left behind."""
    for stale in glob.glob(glob.escape(dest) + ".*.partial"):  # left by a run that was killed
        os.remove(stale)
    deadline = time.monotonic() + START_SECONDS + size / min_speed
    digest, received = hashlib.sha256(), 0
    fd, partial = tempfile.mkstemp(dir=os.path.dirname(os.path.abspath(dest)),
                                   prefix=os.path.basename(dest) + ".", suffix=".partial")
    try:
        with os.fdopen(fd, "wb") as out:
            try:
                with urllib.request.urlopen(url, timeout=TIMEOUT) as response:
                    while True:
                        chunk = response.read1(1 << 16)  # whatever has arrived, up to 64 KiB
                        if not chunk:
                            break
                        received += len(chunk)
                        if received > size:
                            raise utils.UserError(f"{url}: the server sent more than the {size} bytes the manifest "
                                                  "gives; stopped, nothing kept")
                        if time.monotonic() > deadline:
                            allowed = START_SECONDS + size / min_speed
                            raise utils.UserError(
                                f"{url}: too slow ({received} of {size} bytes in {allowed:.0f} s, under --min-speed "
                                f"{min_speed / 1024:g} KB/s); stopped, nothing kept (run again, or lower --min-speed)")
                        digest.update(chunk)
                        out.write(chunk)
            except urllib.error.HTTPError as e:
                raise utils.UserError(f"{url}: HTTP error {e.code} ({' '.join(str(e.reason).split())})") from None
            except urllib.error.URLError as e:
                raise utils.UserError(f"{url}: cannot download ({' '.join(str(e.reason).split())}); check the "
                                      "address and the network, or give a mirror with --base-url") from None
            except (TimeoutError, ConnectionError, http.client.HTTPException) as e:
                raise utils.UserError(f"{url}: the connection failed ({' '.join(str(e).split()) or type(e).__name__});"
                                      " run the command again to resume") from None
            except ValueError as e:  # e.g. "unknown url type"
                raise utils.UserError(f"{url}: {' '.join(str(e).split())}") from None
        if received != size or digest.hexdigest() != sha256:
            raise utils.UserError(f"{url}: the downloaded file does not match its SHA-256 checksum (damaged, "
                                  f"truncated or a different file: {received} of {size} bytes), so it was not kept")
        os.chmod(partial, 0o644)
        os.replace(partial, dest)
    except OSError as e:
        raise utils.UserError(f"{dest}: cannot write ({e.strerror or e})") from None
    finally:
        with contextlib.suppress(OSError):
            os.remove(partial)  # gone already after a success


def build_parser():
    parser = utils.ArgumentParser(description="Download the x4 HR test sets (Set5, Set14, BSD100, Urban100), "
                                                 "checked against their SHA-256.")
    parser.add_argument("sets", nargs="+", metavar="SET", help=f"{', '.join(SETS)} or all")
    parser.add_argument("--output-dir", default="datasets", metavar="DIR",
                        help="where the <set>/ folders are written (default: datasets)")
    parser.add_argument("--base-url", default=DEFAULT_BASE_URL, metavar="URL",
                        help="replaces everything before 'data/' in the files' addresses: a mirror of the "
                             "repository, or the folder of a local copy (default: %(default)s)")
    parser.add_argument("--min-speed", type=float, default=MIN_SPEED / 1024, metavar="KB/S",
                        help=f"give a file up if it arrives slower than this on average (after {START_SECONDS} s "
                             "of grace) (default: %(default)g)")
    return parser


def resolve_sets(names):
    """Set names in canonical spelling (case-insensitive; 'all' for every set), in the given order."""
    canonical = {name.lower(): name for name in SETS}
    chosen = []
    for name in names:
        if name.lower() == "all":
            chosen.extend(SETS)
        elif name.lower() in canonical:
            chosen.append(canonical[name.lower()])
        else:
            raise utils.UserError(f"unknown test set {name!r}; choose from {', '.join(SETS)} or all")
    return list(dict.fromkeys(chosen))


def main(argv=None):
    args = build_parser().parse_args(argv)
    sets = resolve_sets(args.sets)
    if not args.min_speed > 0:
        raise utils.UserError(f"--min-speed {args.min_speed:g}: must be a positive number of KB/s")
    if not os.path.isdir(args.base_url) and "://" not in args.base_url:
        raise utils.UserError(f"--base-url {args.base_url}: neither an address (https://..., file://...) "
                              "nor an existing folder")
    manifest = read_manifest()
    jobs, present = [], 0  # (url, destination, bytes, sha256) of the files still to fetch
    for name in sets:
        folder = os.path.join(args.output_dir, name)
        if os.path.exists(folder) and not os.path.isdir(folder):
            raise utils.UserError(f"{folder}: cannot write: it is a file, not a folder")
        for path, size, sha256 in manifest[name]:
            dest = os.path.join(folder, os.path.basename(path))
            if os.path.isdir(dest):
                raise utils.UserError(f"{dest}: cannot write: a folder is in the way")
            if is_complete(dest, size, sha256):
                present += 1
            else:
                jobs.append((file_url(args.base_url, path), dest, size, sha256))
    if present:
        print(f"{present} file(s) already present and correct: skipped")
    created = []  # folders this run made: removed again if a failure leaves them empty
    try:
        with tqdm(total=sum(job[2] for job in jobs), unit="B", unit_scale=True, unit_divisor=1024,
                  desc="downloading", disable=not jobs) as bar:
            for url, dest, size, sha256 in jobs:
                folder = os.path.dirname(dest)
                missing = []
                parent = os.path.abspath(folder)
                while not os.path.exists(parent):
                    missing.append(parent)  # deepest first
                    parent = os.path.dirname(parent)
                try:
                    os.makedirs(folder, exist_ok=True)
                except OSError as e:
                    raise utils.UserError(f"{folder}: cannot create the folder ({e.strerror or e})") from None
                created.extend(missing)
                download(url, dest, size, sha256, args.min_speed * 1024)
                bar.update(size)
    except BaseException:
        for folder in created:  # deepest first; rmdir refuses folders that are not empty
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        raise
    folders = [os.path.join(args.output_dir, name) for name in sets]
    print(f"{sum(len(manifest[name]) for name in sets)} images in {', '.join(folders)}. Next, evaluate with:")
    print("python eval.py --checkpoint checkpoints/srresnet_x4.pth --bicubic --test-folders "
          + " ".join(map(shlex.quote, folders)))


if __name__ == "__main__":
    utils.run_cli(main)
