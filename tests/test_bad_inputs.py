"""Bad inputs to test.py, eval.py, create_data_lists.py, convert_checkpoint.py and export_onnx.py,
each run as the real command line (in this process; in a subprocess where another user is needed):
exit code 2, one `error:` line naming the offending file, no traceback, and no new, partial or
temporary file anywhere in the case's folder (except the outputs of the good images of a batch)."""

import json
import os
import re
import shutil
import stat
import struct
import subprocess
import sys
import tempfile
import zlib
from concurrent.futures import ThreadPoolExecutor
from pathlib import Path
from typing import Callable, NamedTuple

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import inference
import models
from conftest import ROOT, TINY, cli_error, load_script, null_device, random_image, run_script

NOBODY = 65534


# ----------------------------------------------------------------------------------------------
# inputs


def save_ckpt(path, net=None, **changes):
    """An inference checkpoint of a tiny SRResNet with top-level entries or 'model' keys (arch, args,
    state_dict; no_KEY removes one) replaced."""
    torch.manual_seed(0)
    ckpt = checkpoint.inference_checkpoint(net or models.SRResNet(**TINY))
    for key, value in changes.items():
        if key in ("arch", "args", "state_dict"):
            ckpt["model"][key] = value
        elif value is None:
            ckpt["model"].pop(key[len("no_"):])
        else:
            ckpt[key] = value
    checkpoint.save_checkpoint(ckpt, path)
    os.chmod(path, 0o644)
    return path


def bomb_png(path, side=30000):
    """A PNG whose header says side x side RGB (far over PIL's decompression-bomb limit); 100 bytes."""
    def chunk(kind, data):
        return struct.pack(">I", len(data)) + kind + data + struct.pack(">I", zlib.crc32(kind + data))
    header = struct.pack(">IIBBBBB", side, side, 8, 2, 0, 0, 0)
    return write(path, b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                 + chunk(b"IEND", b""))


def truncated_png(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    return write(path, path.read_bytes()[:600])


def pickle_calling(module, name, *args, protocol=2):
    """Pickle bytes of {'model': module.name(*args)} (args: str, small int or False), written opcode
    by opcode (GLOBAL 'c', REDUCE 'R')."""
    def text(s):
        return b"X" + struct.pack("<I", len(s.encode())) + s.encode()
    encoded = b"".join(text(a) if isinstance(a, str) else (b"\x89" if a is False else b"K" + bytes([a])) for a in args)
    return (bytes([0x80, protocol]) + b"}" + text("model") + f"c{module}\n{name}\n".encode() + b"(" + encoded
            + b"tRs.")


def zip_checkpoint(path, data_pkl):
    """A torch.save zip container whose data.pkl is ``data_pkl``."""
    import zipfile

    base = path.with_suffix(".base")
    torch.save({"a": 1}, base)
    with zipfile.ZipFile(base) as zin, zipfile.ZipFile(path, "w", zipfile.ZIP_STORED) as zout:
        for item in zin.infolist():
            zout.writestr(item, data_pkl if item.filename.endswith("data.pkl") else zin.read(item.filename))
    base.unlink()
    return path


# each returns its path, so that a case's set-up is one expression


def image(path, size=(24, 18), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(size, seed=seed).save(path)
    return path


def write(path, data):
    """Bytes or text, in a file whose folders are made."""
    path.parent.mkdir(parents=True, exist_ok=True)
    (path.write_bytes if isinstance(data, bytes) else path.write_text)(data)
    return path


def folder(path):
    path.mkdir(parents=True)
    return path


def chmod(path, mode):
    os.chmod(path, mode)
    return path


# ----------------------------------------------------------------------------------------------
# the commands: the script first, then its arguments; d is the case's folder, d.parent holds the
# good checkpoint tiny.pth and nan.pth (NaN weights)


def run_test(d, img=None, ckpt=None, out=None, extra=()):
    """test.py on ``img`` (one or a list; by default a good image a.png)."""
    images = img if isinstance(img, list) else [img or image(d / "a.png")]
    return ["test.py", "--checkpoint", ckpt or d.parent / "tiny.pth", "--img", *images,
            "--output-dir", out or d / "out", "--precision", "fp32", *extra]


def two_images(d, first="a.png"):
    return [image(d / "in" / first), image(d / "in" / "b.png", seed=1)]


def with_checkpoint(**changes):
    """A test.py set-up: a good image, and save_ckpt(c.pth, **changes) as the checkpoint."""
    return lambda d: run_test(d, ckpt=save_ckpt(d / "c.pth", **changes))


def run_eval(d, *sets, ckpt=None, extra=()):
    """eval.py on ``sets`` with the checkpoints ``ckpt`` (by default tiny.pth; [] for none)."""
    ckpt = [d.parent / "tiny.pth"] if ckpt is None else ckpt
    return ["eval.py", *(["--checkpoint", *ckpt] if ckpt else []), "--test-folders", *sets, "--device", "cpu", *extra]


def run_bicubic(d, *sets, extra=()):
    return run_eval(d, *sets, ckpt=[], extra=["--bicubic", "--scale", "4", *extra])


def make_test_set(d, name="Set", n=2):
    for i in range(n):
        image(d / name / f"{i}.png", (48, 40), seed=i)
    return d / name


def run_lists(d, *args, out=None):
    return ["create_data_lists.py", *args, "--output-folder", out or d / "lists", "--min-size", "16"]


def run_convert(d, source, out=None):
    return ["convert_checkpoint.py", source, out or d / "new.pth"]


# set-ups of more than one expression


def batch_with_a_corrupt_image(d):
    image(d / "in" / "a.png")
    write(d / "in" / "b.png", b"\x89PNG\r\n\x1a\n garbage")
    image(d / "in" / "c.bmp", seed=2)
    write(d / "in" / "readme.txt", "not an image extension: not counted")
    return run_test(d, d / "in")


def discriminator_only_checkpoint(d):
    spec = checkpoint.model_spec(models.Discriminator(n_channels=4, n_blocks=2, fc_size=8))
    checkpoint.save_checkpoint({"format_version": checkpoint.FORMAT_VERSION, "discriminator": spec}, d / "d.pth")
    return run_test(d, ckpt=d / "d.pth")


def state_dict_mismatch(d):
    state = models.SRResNet(**TINY).state_dict()
    state["conv_block3.conv_block.0.bias"] = torch.zeros(7)
    return with_checkpoint(state_dict=state)(d)


def foreign_checkpoint(d):
    torch.save({"weights": torch.zeros(3)}, d / "x.pth")
    return run_test(d, ckpt=d / "x.pth")


def eval_list_names_a_missing_file(d):
    listed = [str(make_test_set(d) / "0.png"), str(d / "Set" / "gone.png")]
    return run_eval(d, write(d / "Mini_test_images.json", json.dumps(listed)))


def lists_only_undecodable_files(d):
    write(d / "Bad" / "a.jpg", b"\xff\xd8\xff garbage")
    return run_lists(d, "--test-folders", bomb_png(d / "Bad" / "b.png").parent)


# ----------------------------------------------------------------------------------------------
# the cases


class Case(NamedTuple):
    """A bad input: ``setup(d)`` builds it in the case's folder d and returns the command.
    names: what each `error:` line must name, in order ("{d}": the case's folder; a batch has one
    line per failed image, then the failure count); has / has_not: words the error lines must (not)
    contain; new: files the run may add (the good images' outputs); disk: full_disk's mode ('fsync'
    or 'write'); nobody: run as an unprivileged user, in a process of that user; no_stdout: refused
    before any work (no table printed)."""
    setup: Callable
    names: list
    has: tuple = ()
    has_not: tuple = ()
    new: tuple = ()
    disk: str = None
    nobody: bool = False
    no_stdout: bool = False


NOT_FINITE = "nan.pth: its 'model' weights are not finite (NaN or inf in conv_block1.conv_block.0.weight)"
TILE = "use 0 (whole images) or at least 32 LR pixels (smaller tiles are very slow)"

CASES = {
    # test.py: flags
    "fp16_on_a_cpu": Case(lambda d: run_test(d, extra=["--device", "cpu", "--precision", "fp16"]),
                          ["--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32"]),
    "tile_1": Case(lambda d: run_test(d, extra=["--tile", "1"]), [f"--tile 1: {TILE}"]),
    "tile_31": Case(lambda d: run_test(d, extra=["--tile", "31"]), [f"--tile 31: {TILE}"]),
    "tile_negative": Case(lambda d: run_test(d, extra=["--tile", "-2"]), [f"--tile -2: {TILE}"]),
    # test.py: images (a name with a newline stays one error line, the newline escaped)
    "missing_image": Case(lambda d: run_test(d, d / "new\nline.png"), ["{d}/new\\nline.png: no such file or folder"]),
    "empty_image": Case(lambda d: run_test(d, write(d / "zero.png", b"")), ["zero.png"], has=["empty file"]),
    "truncated_image": Case(lambda d: run_test(d, truncated_png(d / "cut.png")), ["cut.png"], has=["cannot decode"]),
    "decompression_bomb": Case(lambda d: run_test(d, bomb_png(d / "bomb.png")), ["bomb.png"], has=["too large"]),
    "non_image_file": Case(lambda d: run_test(d, write(d / "notes.txt", "hello")), ["notes.txt"]),
    "folder_without_images": Case(lambda d: run_test(d, write(d / "empty" / "notes.txt", "hello").parent),
                                  ["empty"], has=["no image files"]),
    "unreadable_image": Case(lambda d: run_test(d, chmod(image(d / "secret.png"), 0o600)), ["secret.png"],
                             has=["permission denied"], has_not=["decode", "corrupt", "damaged"], nobody=True),
    "unlistable_folder": Case(lambda d: run_test(d, chmod(image(d / "private" / "a.png").parent, 0o700)),
                              ["private"], has=["permission denied"], nobody=True),
    "too_small_for_hr": Case(lambda d: run_test(d, image(d / "dot.png", (1, 1)), extra=["--hr"]), ["dot.png"],
                             has=["1x1"]),
    # test.py: checkpoints
    "missing_checkpoint": Case(lambda d: run_test(d, ckpt=d / "none.pth"), ["none.pth"]),
    "truncated_checkpoint": Case(
        lambda d: run_test(d, ckpt=write(d / "cut.pth", (d.parent / "tiny.pth").read_bytes()[:3000])), ["cut.pth"]),
    # 0x80 0x02 then opcode 222: torch's own message would be "Unsupported operand 222"
    "random_bytes_checkpoint": Case(
        lambda d: run_test(d, ckpt=write(d / "noise.pth", b"\x80\x02\xde" + np.random.default_rng(0).bytes(3000))),
        ["noise.pth"], has=["not a pytorch checkpoint"], has_not=["unsupported operand", "222"]),
    "unreadable_checkpoint": Case(
        lambda d: run_test(d, ckpt=chmod(save_ckpt(d / "locked.pth"), 0o600)), ["locked.pth"],
        has=["permission denied"], has_not=["corrupt", "damaged", "not a pytorch"], nobody=True),
    "discriminator_only_checkpoint": Case(discriminator_only_checkpoint, ["d.pth"]),
    "not_a_checkpoint": Case(foreign_checkpoint, ["x.pth"]),
    "model_entry_not_a_dict": Case(with_checkpoint(model=[1, 2, 3]), ["c.pth"], has=["'model' entry is a list"]),
    "model_without_args": Case(with_checkpoint(no_args=None), ["c.pth"], has=["no 'args'"]),
    "unknown_constructor_argument": Case(with_checkpoint(args=dict(TINY, wings=3)), ["c.pth"], has=["wings"]),
    "format_version_not_a_number": Case(with_checkpoint(format_version="one"), ["c.pth"],
                                        has=["format_version is 'one'"]),
    "state_dict_mismatch_names_the_key": Case(state_dict_mismatch, ["c.pth"], has=["conv_block3.conv_block.0.bias"]),
    "nan_weights": Case(lambda d: run_test(d, ckpt=d.parent / "nan.pth"), [NOT_FINITE]),
    # test.py: outputs
    "output_dir_is_a_file": Case(lambda d: run_test(d, out=write(d / "out", "a file")), ["{d}/out:"],
                                 has=["is a file"]),
    "output_dir_inside_a_file": Case(lambda d: run_test(d, out=write(d / "file", "a file") / "out"),
                                     ["{d}/file/out:"], has=["is a file, not a folder"]),
    "a_folder_where_an_output_goes": Case(
        lambda d: run_test(d, two_images(d), out=folder(d / "out" / "a_bicubic.png").parent),
        ["a_bicubic.png", "1 of 2 images failed"], new=["out/b_sr.png", "out/b_bicubic.png"],
        has=["folder is in the way"]),
    "output_dir_without_permission": Case(lambda d: run_test(d, out=chmod(folder(d / "out"), 0o555)), ["{d}/out:"],
                                          has=["permission denied"], nobody=True),
    "output_name_too_long": Case(lambda d: run_test(d, two_images(d, "n" * 250 + ".png")),
                                 ["n" * 250 + "_sr.png", "1 of 2 images failed"],
                                 new=["out/b_sr.png", "out/b_bicubic.png"], has=["name too long"]),
    "full_disk_at_fsync": Case(lambda d: run_test(d), ["a_sr.png"], disk="fsync", has=["no space left"]),
    "full_disk_during_a_batch": Case(lambda d: run_test(d, two_images(d)), ["out/a_", "out/b_", "2 of 2 images failed"],
                                     disk="write", has=["no space left"]),
    "batch_with_a_corrupt_image": Case(batch_with_a_corrupt_image, ["b.png", "1 of 3 images failed"],
                                       new=["out/a_sr.png", "out/a_bicubic.png", "out/c_sr.png", "out/c_bicubic.png"],
                                       has=["cannot decode"]),
    # eval.py
    "eval_nothing_to_evaluate": Case(lambda d: run_eval(d, make_test_set(d), ckpt=[]), ["nothing to evaluate"]),
    "eval_bicubic_without_scale": Case(lambda d: run_eval(d, make_test_set(d), ckpt=[], extra=["--bicubic"]),
                                       ["--bicubic without a checkpoint needs --scale"]),
    "eval_scale_of_another_model": Case(lambda d: run_eval(d, make_test_set(d), extra=["--scale", "2"]),
                                        ["tiny.pth: its model up-scales x4, but the evaluation is x2"]),
    "eval_missing_folder": Case(lambda d: run_bicubic(d, d / "gone"), ["gone"], has=["no such folder"]),
    "eval_two_sets_of_one_name": Case(lambda d: run_bicubic(d, make_test_set(d), d / "Set"), ["distinct names"]),
    "eval_missing_checkpoint": Case(lambda d: run_eval(d, make_test_set(d), ckpt=[d / "none.pth"]), ["none.pth"],
                                    has=["no such file"]),
    "eval_tile_31": Case(lambda d: run_eval(d, make_test_set(d), extra=["--tile", "31"]), [f"--tile 31: {TILE}"]),
    "eval_tile_negative": Case(lambda d: run_eval(d, make_test_set(d), extra=["--tile", "-1"]), [f"--tile -1: {TILE}"]),
    "eval_corrupt_image": Case(lambda d: run_bicubic(d, write(d / "Broken" / "d.png", b"broken").parent), ["d.png"]),
    # 24x40: enough for SSIM, not for two 8-pixel bands
    "eval_artifacts_of_a_too_small_image": Case(
        lambda d: run_bicubic(d, image(d / "Small" / "s.png", (24, 40), seed=1).parent, extra=["--artifacts"]),
        ["s.png: 24x40 is too small for the artifact measures"]),
    "eval_list_names_a_missing_file": Case(eval_list_names_a_missing_file, ["Mini_test_images.json"], has=["gone.png"]),
    "eval_one_pixel_image": Case(lambda d: run_eval(d, image(d / "Tiny" / "dot.png", (1, 1)).parent), ["dot.png"],
                                 has=["1x1"], has_not=["0x0"]),
    "eval_unreadable_test_image": Case(
        lambda d: run_eval(d, chmod(image(make_test_set(d) / "secret.png", (48, 40)), 0o600).parent), ["secret.png"],
        has=["permission denied"], nobody=True),
    "eval_json_is_a_folder": Case(lambda d: run_eval(d, make_test_set(d), extra=["--json", folder(d / "results.json")]),
                                  ["results.json"], has=["folder is in the way"], no_stdout=True),
    "eval_json_without_permission": Case(
        lambda d: run_eval(d, make_test_set(d), extra=["--json", chmod(folder(d / "locked"), 0o555) / "r.json"]),
        ["r.json"], has=["permission denied"], no_stdout=True, nobody=True),
    "eval_json_on_a_full_disk": Case(lambda d: run_eval(d, make_test_set(d), extra=["--json", d / "r.json"]),
                                     ["r.json"], disk="write", has=["no space left"]),
    "eval_same_checkpoint_twice": Case(
        lambda d: run_eval(d, make_test_set(d), ckpt=[d.parent / "tiny.pth", f"{d.parent}/./tiny.pth"]),
        ["tiny.pth"], has=["given twice"]),
    "eval_nan_weights": Case(lambda d: run_eval(d, make_test_set(d), ckpt=[d.parent / "nan.pth"]), [NOT_FINITE]),
    # create_data_lists.py
    "lists_only_undecodable_files": Case(lists_only_undecodable_files, ["Bad_test_images.json"],
                                         has=["no image qualifies", "2 unreadable"]),
    "lists_one_empty_list_writes_none": Case(
        lambda d: run_lists(d, "--train-folders", make_test_set(d),
                            "--test-folders", image(d / "Small" / "dot.png", (4, 4)).parent),
        ["Small_test_images.json"], has=["no image qualifies"]),
    "lists_output_folder_is_a_file": Case(
        lambda d: run_lists(d, "--test-folders", make_test_set(d), out=write(d / "lists", "a file")), ["{d}/lists:"],
        has=["is a file"]),
    "lists_a_folder_where_a_list_goes": Case(
        lambda d: run_lists(d, "--train-folders", make_test_set(d), "--test-folders", d / "Set",
                            out=folder(d / "lists" / "Set_test_images.json").parent),
        ["Set_test_images.json"], has=["folder is in the way"]),
    "lists_output_without_permission": Case(
        lambda d: run_lists(d, "--test-folders", make_test_set(d), out=chmod(folder(d / "lists"), 0o555)),
        ["{d}/lists:"], has=["permission denied"], nobody=True),
    "lists_full_disk": Case(lambda d: run_lists(d, "--train-folders", make_test_set(d), "--test-folders", d / "Set"),
                            ["_images.json"], disk="write", has=["no space left"]),
    "lists_unlistable_folder": Case(lambda d: run_lists(d, "--test-folders", chmod(make_test_set(d), 0o700)),
                                    ["{d}/Set:"], has=["permission denied"], nobody=True),
    # convert_checkpoint.py
    "convert_random_bytes": Case(
        lambda d: run_convert(d, write(d / "noise.pth.tar", np.random.default_rng(1).bytes(2000))), ["noise.pth.tar"],
        has_not=["unsupported operand"]),
    "convert_pickle_calling_os_system": Case(
        lambda d: run_convert(d, write(d / "evil.pth.tar", pickle_calling("posix", "system", f"touch {d}/pwned"))),
        ["evil.pth.tar"], has=["refused", "posix.system"]),
    # protocol 4 resolves dotted names: unrestricted, this reads /etc/passwd into a storage
    "convert_pickle_mapping_a_file": Case(
        lambda d: run_convert(d, zip_checkpoint(d / "map.pth.tar", pickle_calling(
            "torch.storage", "UntypedStorage.from_file", "/etc/passwd", False, 100, protocol=4))),
        ["map.pth.tar"], has=["refused", "from_file"]),
    "convert_output_is_a_folder": Case(lambda d: run_convert(d, d.parent / "tiny.pth", folder(d / "new.pth")),
                                       ["new.pth"], has=["folder"]),
    "convert_output_inside_a_file": Case(
        lambda d: run_convert(d, d.parent / "tiny.pth", write(d / "file", "a file") / "new.pth"),
        ["{d}/file/new.pth:"], has=["is a file, not a folder"]),
    "convert_output_without_permission": Case(
        lambda d: run_convert(d, d.parent / "tiny.pth", chmod(folder(d / "locked"), 0o555) / "new.pth"), ["new.pth"],
        has=["permission denied"], nobody=True),
    "convert_full_disk": Case(lambda d: run_convert(d, d.parent / "tiny.pth"), ["new.pth"], disk="write",
                              has=["no space left"]),
    "convert_nan_weights": Case(lambda d: run_convert(d, d.parent / "nan.pth"), [NOT_FINITE]),
    # export_onnx.py said 'differs from PyTorch by nan'
    "export_nan_weights": Case(lambda d: ["export_onnx.py", d.parent / "nan.pth", d / "x.onnx"], [NOT_FINITE]),
}


# ----------------------------------------------------------------------------------------------
# the runner


@pytest.fixture(scope="module")
def base():
    """A folder every user may read (the nobody cases too), with the tiny checkpoints."""
    folder = Path(tempfile.mkdtemp(prefix="sr-bad-inputs-"))
    os.chmod(folder, 0o755)
    save_ckpt(folder / "tiny.pth")
    broken = models.SRResNet(**TINY)
    with torch.no_grad():
        broken.conv_block1.conv_block[0].weight.fill_(float("nan"))
    save_ckpt(folder / "nan.pth", net=broken)
    yield folder
    for path in folder.rglob("*"):  # folders the cases locked
        if path.is_dir():
            os.chmod(path, 0o755)
    shutil.rmtree(folder)


def _drop_root():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def snapshot(folder):
    """Every file and folder under ``folder`` (relative paths)."""
    return {str(path.relative_to(folder)) for path in folder.rglob("*")}


# The cases that need another user, run one after another in one process of that user. It first
# checks that file permissions apply to it (root's would not), and says so before any case runs.
NOBODY_RUNNER = """
import json, sys
locked, argvs = sys.argv[1], json.loads(sys.argv[2])
if locked:
    try:
        open(locked).close()
        sys.exit("file permissions do not apply: " + locked + " could be read")
    except PermissionError:
        pass
sys.path.insert(0, "tests")
from conftest import run_script
print("permissions apply", flush=True)
print(json.dumps([run_script(argv).__dict__ for argv in argvs]))
"""


def run_as_nobody(argvs, folders, base):
    """CompletedProcess-likes of the commands ``argvs`` (built in ``folders``) run as a user without
    root's file privileges; or, where there is no way to be such a user here, the reason (a string)
    for each."""
    if os.geteuid() != 0:  # permissions already apply
        ways, locked = [("this user", [], None, False)], ""
    else:  # (description, command prefix, preexec_fn, chown the case's files to NOBODY): as user NOBODY
        # (setpriv also runs an interpreter that lives under root's home folder); else as root without
        # capabilities, which is an 'other' user to files owned by NOBODY
        to_nobody = ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"]
        ways = [(f"user {NOBODY}", to_nobody, None, False), (f"user {NOBODY}", [], _drop_root, False),
                ("root without capabilities", ["setpriv", "--inh-caps=-all", "--bounding-set=-all"], None, True)]
        ways = [way for way in ways if not way[1] or shutil.which("setpriv")]  # (setpriv's ways need setpriv)
        locked = base / "locked.txt"
        locked.write_text("secret")
        os.chown(locked, NOBODY, NOBODY)
        os.chmod(locked, 0o600)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("SR_DEBUG", None)
    command = [sys.executable, "-c", NOBODY_RUNNER, str(locked), json.dumps(argvs)]
    reasons = []
    for description, prefix, preexec, chown in ways:
        if chown:  # root without capabilities is 'other' to files of NOBODY, as NOBODY is to root's
            for d in folders:
                for path in [d, *d.rglob("*")]:
                    os.lchown(path, NOBODY, NOBODY)
        try:
            done = subprocess.run([*prefix, *command], cwd=ROOT, env=env, capture_output=True, text=True,
                                  timeout=600, preexec_fn=preexec)
        except OSError as e:
            reasons.append(f"{description}: {e}")
            continue
        if done.stdout.startswith("permissions apply\n"):  # from here on, a failure is a real one
            assert done.returncode == 0, done.stderr
            return [subprocess.CompletedProcess(**r) for r in json.loads(done.stdout.splitlines()[1])]
        reasons.append(f"{description}: {(done.stderr.strip().splitlines() or ['no output'])[-1]}")
    reason = "cannot run the scripts without root's file privileges here (" + "; ".join(reasons) + ")"
    return [reason] * len(argvs)


@pytest.fixture(scope="module")
def launched(request, base):
    """The selected cases built, those that need another user started in the background:
    {name: (command, case folder, its listing before the run)}, and a future of {name: result} of the latter."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.path == request.path and item.originalname == "test_bad_input"]
    cases = {}
    for name in selected:
        d = base / name
        d.mkdir()
        argv = [str(a) for a in CASES[name].setup(d)]
        os.chmod(d, 0o777)  # the unprivileged user may write in d (inputs are world-readable, umask 022)
        cases[name] = (argv, d, snapshot(d))
    nobody = [name for name in selected if CASES[name].nobody]  # (the quick lane leaves them out)

    def run_nobody():
        if not nobody:
            return {}
        return dict(zip(nobody, run_as_nobody([cases[n][0] for n in nobody], [cases[n][1] for n in nobody], base)))
    pool = ThreadPoolExecutor(max_workers=1)
    yield cases, pool.submit(run_nobody)
    pool.shutdown(wait=True)


# (the cases run as another user need a process of their own: slow)
@pytest.mark.parametrize("name", [pytest.param(name, marks=pytest.mark.slow if CASES[name].nobody else ())
                                  for name in CASES])
def test_bad_input(name, launched):
    case, (cases, nobody) = CASES[name], launched
    argv, d, before = cases[name]
    done = nobody.result()[name] if case.nobody else run_script(argv, disk=case.disk)
    if isinstance(done, str):
        pytest.skip(done)

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # progress bars redraw with carriage returns: split on them as a terminal shows the text
    lines = [line for line in re.split(r"[\r\n]+", done.stderr) if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == len(case.names), done.stderr
    assert [line for line in lines if "%|" not in line] == errors, done.stderr  # else only progress bars
    for line, wanted in zip(errors, case.names):
        assert wanted.format(d=d) in line, (wanted, line)
    text = " ".join(errors).lower()
    for words in case.has:
        assert words.lower() in text, (words, errors)
    for words in case.has_not:
        assert words.lower() not in text, (words, errors)
    if case.no_stdout:  # refused before any work
        assert "PSNR" not in done.stdout
    # nothing new in the case folder (no temporary, no half output), except the good images' outputs
    allowed = set(case.new)
    allowed |= {os.path.dirname(p) for p in allowed if os.path.dirname(p)}
    assert snapshot(d) - before == allowed - before
    assert not (d / "pwned").exists()


def test_the_matrix_is_large_enough():
    assert len(CASES) >= 40


# ----------------------------------------------------------------------------------------------
# odd inputs that are not errors


def test_an_animated_gif_in_a_folder_is_found_and_its_first_frame_used_with_a_note(base, tmp_path):
    folder = base / "gif_case"
    frames = [random_image((20, 16), seed=i) for i in range(3)]
    folder.mkdir()
    frames[0].save(folder / "anim.gif", save_all=True, append_images=frames[1:])
    out = folder / "out"
    done = run_script(["test.py", "--checkpoint", base / "tiny.pth", "--img", folder, "--output-dir", out])
    assert done.returncode == 0, done.stderr
    notes = [line for line in done.stderr.splitlines() if line.startswith("note:")]
    assert len(notes) == 1 and "anim.gif" in notes[0] and "3 frames" in notes[0] and "first" in notes[0]
    assert sorted(p.name for p in out.iterdir()) == ["anim_bicubic.png", "anim_sr.png"]
    with Image.open(folder / "anim.gif") as gif:  # the first frame as PIL decodes it
        first = gif.convert("RGB")
    with Image.open(out / "anim_bicubic.png") as bicubic:
        assert np.array_equal(np.asarray(bicubic), np.asarray(inference.bicubic_upscale(first, 4)))


def test_data_lists_skip_undecodable_files_and_bombs(base):
    folder = base / "lists_case"
    for i in range(2):
        image(folder / "Train" / f"{i}.png", (40, 30), seed=i)
    bomb_png(folder / "Train" / "bomb.png")
    (folder / "Train" / "text.jpg").write_text("hello")
    (folder / "Train" / "zero.bmp").write_bytes(b"")
    done = run_script(["create_data_lists.py", "--train-folders", folder / "Train", "--min-size", "16",
                       "--output-folder", folder / "lists"])
    assert done.returncode == 0, done.stderr
    assert "Traceback" not in done.stderr and "error" not in done.stderr.lower()
    assert "3 unreadable skipped" in done.stdout and "bomb.png, text.jpg, zero.bmp" in done.stdout
    listed = json.loads((folder / "lists" / "train_images.json").read_text())
    assert [os.path.basename(p) for p in listed] == ["0.png", "1.png"]
    assert sorted(os.listdir(folder / "lists")) == ["train_images.json"]


# ----------------------------------------------------------------------------------------------
# outputs that are device nodes, pipes or '-': written through, never replaced


def test_script_outputs_never_replace_a_device_node(tmp_path, tiny_checkpoint, capsys):
    eval_script, convert, plot_log = load_script("eval"), load_script("convert_checkpoint"), load_script("plot_log")
    images_dir = image(tmp_path / "imgs" / "a.png", (40, 36)).parent
    log = tmp_path / "srgan_log.csv"
    log.write_text("iteration,loss,lr,val_psnr,val_ssim,seconds\n1,0.05,1e-4,,,1\n2,0.04,1e-4,25.1,0.7,2\n")
    node, png_node = null_device(tmp_path), null_device(tmp_path, "null.png")
    eval_script.main(["--bicubic", "--scale", "4", "--test-folders", str(images_dir), "--json", str(node)])
    convert.main([str(tiny_checkpoint), str(node)])
    plot_log.main([str(log), str(png_node)])
    for path in (node, png_node):
        assert stat.S_ISCHR(os.stat(path).st_mode), path
    assert sorted(os.listdir(tmp_path)) == ["imgs", "null", "null.png", "srgan_log.csv"]
    # '-' is standard output, for --json: the JSON is printed (strict JSON, after the table)
    capsys.readouterr()
    eval_script.main(["--bicubic", "--scale", "4", "--test-folders", str(images_dir), "--json", "-"])
    out = capsys.readouterr().out
    assert json.loads(out[out.index("{"):out.rindex("}") + 1])["scale"] == 4 and not os.path.exists("-")
    assert out.rstrip().endswith("}")  # no 'wrote -' after the JSON


@pytest.mark.parametrize("script, argv", [("eval", ["--tile", "x"]), ("test", ["--nope"]),
                                          ("plot_log", []), ("convert_checkpoint", ["a.pth"]),
                                          ("create_data_lists", ["--min-size", "0"]), ("export_onnx", ["--opset"])])
def test_every_scripts_argparse_error_is_one_line(script, argv, capsys):
    line = cli_error(load_script(script).main, argv, capsys)
    assert "(see --help)" in line or "must be at least 1" in line
