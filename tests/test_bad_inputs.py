"""Bad inputs to test.py, eval.py, create_data_lists.py and convert_checkpoint.py, each run as the real
command line (in this process; in a subprocess where another user is needed): exit code 2, one
`error:` line naming the offending file, no traceback, and no new, partial or temporary file
anywhere in the case's folder (except the outputs of the good images of a batch)."""

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

import numpy as np
import pytest
import torch
from PIL import Image

import checkpoint
import inference
import models
from conftest import ROOT, TINY, null_device, random_image, run_script

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
    path.write_bytes(b"\x89PNG\r\n\x1a\n" + chunk(b"IHDR", header) + chunk(b"IDAT", zlib.compress(b"\0" * 64))
                     + chunk(b"IEND", b""))
    return path


def truncated_png(path):
    Image.fromarray(np.random.default_rng(0).integers(0, 256, (64, 64, 3), dtype=np.uint8)).save(path)
    path.write_bytes(path.read_bytes()[:600])
    return path


def image(path, size=(24, 18), seed=0):
    path.parent.mkdir(parents=True, exist_ok=True)
    random_image(size, seed=seed).save(path)
    return path


def pickle_bytes(*body):
    """A protocol-2 pickle of {'model': <body>}; body is raw opcodes (GLOBAL 'c', REDUCE 'R'...)."""
    return b"\x80\x02}" + _text("model") + b"".join(body) + b"s."


def _text(s):
    data = s.encode()
    return b"X" + struct.pack("<I", len(data)) + data


def call(module, name, *args):
    """Opcodes that call module.name(*args) (args: str or small int)."""
    encoded = b"".join(_text(a) if isinstance(a, str) else (b"\x89" if a is False else b"K" + bytes([a])) for a in args)
    return b"c" + f"{module}\n{name}\n".encode() + b"(" + encoded + b"tR"


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


# ----------------------------------------------------------------------------------------------
# the cases: each builds its inputs in folder d and returns dict(argv, names, ...)
#   argv: the command (first item the script); names: the file each `error:` line must name, in
#   order (several for a batch, whose last line is the failure count); new: files the run may add
#   (the good images' outputs); full_disk: 'fsync' or 'write'; has / has_not: words the error line
#   must (not) contain. @as_nobody cases run as an unprivileged user, in a process of that user.

CASES = {}


NOBODY_CASES = set()


def case(fn):
    CASES[fn.__name__] = fn
    return fn


def as_nobody(fn):
    """A case run as a user without root's file privileges."""
    NOBODY_CASES.add(fn.__name__)
    return case(fn)


def run_test_py(d, img, ckpt=None, out=None, extra=()):
    images = img if isinstance(img, list) else [img]
    return ["test.py", "--checkpoint", str(ckpt or d.parent / "tiny.pth"), "--img", *map(str, images),
            "--output-dir", str(out or d / "out"), "--precision", "fp32", *extra]


# test.py: images

@case
def missing_image(d):
    return dict(argv=run_test_py(d, d / "nope.png"), names=["nope.png"], has=["no such file"])


@case
def empty_image(d):
    (d / "zero.png").write_bytes(b"")
    return dict(argv=run_test_py(d, d / "zero.png"), names=["zero.png"], has=["empty file"])


@case
def truncated_image(d):
    return dict(argv=run_test_py(d, truncated_png(d / "cut.png")), names=["cut.png"], has=["cannot decode"])


@case
def decompression_bomb(d):
    return dict(argv=run_test_py(d, bomb_png(d / "bomb.png")), names=["bomb.png"], has=["too large"])


@as_nobody
def unreadable_image(d):
    os.chmod(image(d / "secret.png"), 0o600)
    return dict(argv=run_test_py(d, d / "secret.png"), names=["secret.png"],
                has=["permission denied"], has_not=["decode", "corrupt", "damaged"])


@as_nobody
def unlistable_folder(d):
    image(d / "private" / "a.png")
    os.chmod(d / "private", 0o700)
    return dict(argv=run_test_py(d, d / "private"), names=["private"], has=["permission denied"])


@case
def too_small_for_hr(d):
    return dict(argv=run_test_py(d, image(d / "dot.png", (1, 1)), extra=["--hr"]), names=["dot.png"], has=["1x1"])


# test.py: checkpoints

@case
def random_bytes_checkpoint(d):
    # 0x80 0x02 then opcode 222: torch's own message would be "Unsupported operand 222"
    (d / "noise.pth").write_bytes(b"\x80\x02\xde" + np.random.default_rng(0).bytes(3000))
    return dict(argv=run_test_py(d, image(d / "a.png"), ckpt=d / "noise.pth"), names=["noise.pth"],
                has=["not a pytorch checkpoint"], has_not=["unsupported operand", "222"])


@as_nobody
def unreadable_checkpoint(d):
    os.chmod(save_ckpt(d / "locked.pth"), 0o600)
    return dict(argv=run_test_py(d, image(d / "a.png"), ckpt=d / "locked.pth"), names=["locked.pth"],
                has=["permission denied"], has_not=["corrupt", "damaged", "not a pytorch"])


@case
def model_entry_not_a_dict(d):
    save_ckpt(d / "c.pth", model=[1, 2, 3])
    return dict(argv=run_test_py(d, image(d / "a.png"), ckpt=d / "c.pth"), names=["c.pth"],
                has=["'model' entry is a list"])


@case
def model_without_args(d):
    save_ckpt(d / "c.pth", no_args=None)
    return dict(argv=run_test_py(d, image(d / "a.png"), ckpt=d / "c.pth"), names=["c.pth"], has=["no 'args'"])


@case
def unknown_constructor_argument(d):
    save_ckpt(d / "c.pth", args=dict(TINY, wings=3))
    return dict(argv=run_test_py(d, image(d / "a.png"), ckpt=d / "c.pth"), names=["c.pth"], has=["wings"])


@case
def format_version_not_a_number(d):
    save_ckpt(d / "c.pth", format_version="one")
    return dict(argv=run_test_py(d, image(d / "a.png"), ckpt=d / "c.pth"), names=["c.pth"],
                has=["format_version is 'one'"])


@case
def state_dict_mismatch_names_the_key(d):
    state = models.SRResNet(**TINY).state_dict()
    state["conv_block3.conv_block.0.bias"] = torch.zeros(7)
    save_ckpt(d / "c.pth", state_dict=state)
    return dict(argv=run_test_py(d, image(d / "a.png"), ckpt=d / "c.pth"), names=["c.pth"],
                has=["conv_block3.conv_block.0.bias"])


# test.py: outputs

@case
def output_dir_is_a_file(d):
    (d / "out").write_text("a file")
    return dict(argv=run_test_py(d, image(d / "a.png")), names=[f"{d / 'out'}:"], has=["is a file"])


@case
def output_dir_inside_a_file(d):
    (d / "file").write_text("a file")
    return dict(argv=run_test_py(d, image(d / "a.png"), out=d / "file" / "out"), names=[f"{d / 'file' / 'out'}:"],
                has=["is a file, not a folder"])


@case
def a_folder_where_an_output_goes(d):
    (d / "out" / "a_bicubic.png").mkdir(parents=True)
    img = [image(d / "in" / "a.png"), image(d / "in" / "b.png", seed=1)]
    return dict(argv=run_test_py(d, img), names=["a_bicubic.png", "1 of 2 images failed"],
                new=["out/b_sr.png", "out/b_bicubic.png"], has=["folder is in the way"])


@as_nobody
def output_dir_without_permission(d):
    (d / "out").mkdir()
    os.chmod(d / "out", 0o555)
    return dict(argv=run_test_py(d, image(d / "a.png")), names=[f"{d / 'out'}:"],
                has=["permission denied"])


@case
def output_name_too_long(d):
    img = [image(d / "in" / ("n" * 250 + ".png")), image(d / "in" / "b.png", seed=1)]
    return dict(argv=run_test_py(d, img), names=["n" * 250 + "_sr.png", "1 of 2 images failed"],
                new=["out/b_sr.png", "out/b_bicubic.png"], has=["name too long"])


@case
def full_disk_at_fsync(d):
    return dict(argv=run_test_py(d, image(d / "a.png")), names=["a_sr.png"], full_disk="fsync",
                has=["no space left"])


@case
def full_disk_during_a_batch(d):
    img = [image(d / "in" / "a.png"), image(d / "in" / "b.png", seed=1)]
    return dict(argv=run_test_py(d, img), names=["out/a_", "out/b_", "2 of 2 images failed"], full_disk="write",
                has=["no space left"])


@case
def batch_with_a_corrupt_image(d):
    image(d / "in" / "a.png")
    (d / "in" / "b.png").write_bytes(b"\x89PNG\r\n\x1a\n garbage")
    image(d / "in" / "c.bmp", seed=2)
    (d / "in" / "readme.txt").write_text("not an image extension: not counted")
    return dict(argv=run_test_py(d, d / "in"), names=["b.png", "1 of 3 images failed"],
                new=["out/a_sr.png", "out/a_bicubic.png", "out/c_sr.png", "out/c_bicubic.png"], has=["cannot decode"])


# eval.py

def run_eval(d, *sets, ckpt=None, extra=()):
    checkpoints = ckpt if isinstance(ckpt, list) else [ckpt or d.parent / "tiny.pth"]
    return ["eval.py", "--checkpoint", *map(str, checkpoints),
            "--test-folders", *map(str, sets), "--device", "cpu", *extra]


def make_test_set(d, name="Set", n=2):
    for i in range(n):
        image(d / name / f"{i}.png", (48, 40), seed=i)
    return d / name


@case
def eval_list_names_a_missing_file(d):
    folder = make_test_set(d)
    (d / "Mini_test_images.json").write_text(f'["{folder / "0.png"}", "{folder / "gone.png"}"]')
    return dict(argv=run_eval(d, d / "Mini_test_images.json"), names=["Mini_test_images.json"], has=["gone.png"])


@case
def eval_one_pixel_image(d):
    image(d / "Tiny" / "dot.png", (1, 1))
    return dict(argv=run_eval(d, d / "Tiny"), names=["dot.png"], has=["1x1"], has_not=["0x0"])


@as_nobody
def eval_unreadable_test_image(d):
    folder = make_test_set(d)
    os.chmod(image(folder / "secret.png", (48, 40)), 0o600)
    return dict(argv=run_eval(d, folder), names=["secret.png"], has=["permission denied"])


@case
def eval_json_is_a_folder(d):
    (d / "results.json").mkdir()
    return dict(argv=run_eval(d, make_test_set(d), extra=["--json", str(d / "results.json")]), names=["results.json"],
                has=["folder is in the way"], no_stdout=True)


@as_nobody
def eval_json_without_permission(d):
    (d / "locked").mkdir()
    os.chmod(d / "locked", 0o555)
    return dict(argv=run_eval(d, make_test_set(d), extra=["--json", str(d / "locked" / "r.json")]), names=["r.json"],
                has=["permission denied"], no_stdout=True)


@case
def eval_json_on_a_full_disk(d):
    return dict(argv=run_eval(d, make_test_set(d), extra=["--json", str(d / "r.json")]), names=["r.json"],
                full_disk="write", has=["no space left"])


@case
def eval_same_checkpoint_twice(d):
    ckpt = d.parent / "tiny.pth"
    return dict(argv=run_eval(d, make_test_set(d), ckpt=[ckpt, f"{d.parent}/./tiny.pth"]), names=["tiny.pth"],
                has=["given twice"])


# create_data_lists.py

def run_lists(d, *args):
    return ["create_data_lists.py", *map(str, args), "--output-folder", str(d / "lists"), "--min-size", "16"]


@case
def lists_only_undecodable_files(d):
    (d / "Bad").mkdir()
    (d / "Bad" / "a.jpg").write_bytes(b"\xff\xd8\xff garbage")
    bomb_png(d / "Bad" / "b.png")
    return dict(argv=run_lists(d, "--test-folders", d / "Bad"), names=["Bad_test_images.json"],
                has=["no image qualifies", "2 unreadable"])


@case
def lists_one_empty_list_writes_none(d):
    image(d / "Small" / "dot.png", (4, 4))
    return dict(argv=run_lists(d, "--train-folders", make_test_set(d), "--test-folders", d / "Small"),
                names=["Small_test_images.json"], has=["no image qualifies"])


@case
def lists_output_folder_is_a_file(d):
    (d / "lists").write_text("a file")
    return dict(argv=run_lists(d, "--test-folders", make_test_set(d)), names=[f"{d / 'lists'}:"], has=["is a file"])


@case
def lists_a_folder_where_a_list_goes(d):
    (d / "lists" / "Set_test_images.json").mkdir(parents=True)
    return dict(argv=run_lists(d, "--train-folders", make_test_set(d), "--test-folders", d / "Set"),
                names=["Set_test_images.json"], has=["folder is in the way"])


@as_nobody
def lists_output_without_permission(d):
    (d / "lists").mkdir()
    os.chmod(d / "lists", 0o555)
    return dict(argv=run_lists(d, "--test-folders", make_test_set(d)), names=[f"{d / 'lists'}:"],
                has=["permission denied"])


@case
def lists_full_disk(d):
    return dict(argv=run_lists(d, "--train-folders", make_test_set(d), "--test-folders", d / "Set"),
                names=["_images.json"], full_disk="write", has=["no space left"])


@as_nobody
def lists_unlistable_folder(d):
    folder = make_test_set(d)
    os.chmod(folder, 0o700)
    return dict(argv=run_lists(d, "--test-folders", folder), names=[f"{folder}:"],
                has=["permission denied"])


# convert_checkpoint.py

def run_convert(d, source, out=None):
    return ["convert_checkpoint.py", str(source), str(out or d / "new.pth")]


@case
def convert_random_bytes(d):
    (d / "noise.pth.tar").write_bytes(np.random.default_rng(1).bytes(2000))
    return dict(argv=run_convert(d, d / "noise.pth.tar"), names=["noise.pth.tar"], has_not=["unsupported operand"])


@case
def convert_pickle_calling_os_system(d):
    (d / "evil.pth.tar").write_bytes(pickle_bytes(call("posix", "system", f"touch {d / 'pwned'}")))
    return dict(argv=run_convert(d, d / "evil.pth.tar"), names=["evil.pth.tar"], has=["refused", "posix.system"])


@case
def convert_pickle_mapping_a_file(d):
    # protocol 4 resolves dotted names: unrestricted, this reads /etc/passwd into a storage
    data = pickle_bytes(call("torch.storage", "UntypedStorage.from_file", "/etc/passwd", False, 100)).replace(
        b"\x80\x02", b"\x80\x04", 1)
    zip_checkpoint(d / "map.pth.tar", data)
    return dict(argv=run_convert(d, d / "map.pth.tar"), names=["map.pth.tar"], has=["refused", "from_file"])


@case
def convert_output_is_a_folder(d):
    (d / "new.pth").mkdir()
    return dict(argv=run_convert(d, d.parent / "tiny.pth"), names=["new.pth"], has=["folder"])


@case
def convert_output_inside_a_file(d):
    (d / "file").write_text("a file")
    return dict(argv=run_convert(d, d.parent / "tiny.pth", d / "file" / "new.pth"),
                names=[f"{d / 'file' / 'new.pth'}:"],
                has=["is a file, not a folder"])


@as_nobody
def convert_output_without_permission(d):
    (d / "locked").mkdir()
    os.chmod(d / "locked", 0o555)
    return dict(argv=run_convert(d, d.parent / "tiny.pth", d / "locked" / "new.pth"), names=["new.pth"],
                has=["permission denied"])


@case
def convert_full_disk(d):
    return dict(argv=run_convert(d, d.parent / "tiny.pth"), names=["new.pth"], full_disk="write", has=["no space left"])


@case
def convert_nan_weights(d):
    return dict(argv=run_convert(d, d.parent / "nan.pth"), names=["nan.pth"], has=["not finite"])


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
    for root, dirs, _ in os.walk(folder):  # folders the cases locked
        for name in dirs:
            os.chmod(os.path.join(root, name), 0o755)
    shutil.rmtree(folder)


def _drop_root():
    os.setgroups([])
    os.setgid(NOBODY)
    os.setuid(NOBODY)


def _ways_to_drop_privileges():
    """[(description, command prefix, preexec_fn, chown the case's files to NOBODY)] to try as root.

    As user NOBODY (setpriv also runs an interpreter that lives under root's home folder); else as
    root without capabilities, which is an 'other' user to files owned by NOBODY."""
    ways = []
    if shutil.which("setpriv"):
        ways.append((f"user {NOBODY}", ["setpriv", f"--reuid={NOBODY}", f"--regid={NOBODY}", "--clear-groups"],
                     None, False))
    ways.append((f"user {NOBODY}", [], _drop_root, False))
    if shutil.which("setpriv"):
        ways.append(("root without capabilities", ["setpriv", "--inh-caps=-all", "--bounding-set=-all"], None, True))
    return ways


def snapshot(folder):
    """Every file and folder under ``folder`` (relative paths)."""
    found = set()
    for root, dirs, files in os.walk(folder):
        for name in dirs + files:
            found.add(os.path.relpath(os.path.join(root, name), folder))
    return found


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


def run_as_nobody(specs, folders, base):
    """CompletedProcess-likes of the cases ``specs`` (built in ``folders``) run as a user without
    root's file privileges; or, where there is no way to be such a user here, the reason (a string)
    for each."""
    if os.geteuid() != 0:  # permissions already apply
        ways, locked = [("this user", [], None, False)], ""
    else:
        ways, locked = _ways_to_drop_privileges(), base / "locked.txt"
        locked.write_text("secret")
        os.chown(locked, NOBODY, NOBODY)
        os.chmod(locked, 0o600)
    env = dict(os.environ, OMP_NUM_THREADS="1", PYTHONDONTWRITEBYTECODE="1")
    env.pop("SR_DEBUG", None)
    command = [sys.executable, "-c", NOBODY_RUNNER, str(locked), json.dumps([s["argv"] for s in specs])]
    reasons = []
    for description, prefix, preexec, chown in ways:
        if chown:  # root without capabilities is 'other' to files of NOBODY, as NOBODY is to root's
            for d in folders:
                for root, dirs, files in os.walk(d):
                    for name in [root] + [os.path.join(root, n) for n in dirs + files]:
                        os.lchown(name, NOBODY, NOBODY)
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
    return [reason] * len(specs)


@pytest.fixture(scope="module")
def launched(request, base):
    """The selected cases built, those that need another user started in the background:
    {name: (spec, case folder, its listing before the run)}, and a future of {name: result} of the latter."""
    selected = [item.callspec.params["name"] for item in request.session.items
                if item.path == request.path and item.originalname == "test_bad_input"]
    cases = {}
    for name in selected:
        build = CASES[name]
        d = base / name
        d.mkdir()
        spec = build(d)
        os.chmod(d, 0o777)  # the unprivileged user may write in d (inputs are world-readable, umask 022)
        cases[name] = (spec, d, snapshot(d))
    nobody = [name for name in selected if name in NOBODY_CASES]  # (the quick lane leaves them out)

    def run_nobody():
        if not nobody:
            return {}
        return dict(zip(nobody, run_as_nobody([cases[n][0] for n in nobody], [cases[n][1] for n in nobody], base)))
    pool = ThreadPoolExecutor(max_workers=1)
    yield cases, pool.submit(run_nobody)
    pool.shutdown(wait=True)


def _param(name):
    """A case; those run as another user need a process of their own: slow."""
    return pytest.param(name, marks=pytest.mark.slow) if name in NOBODY_CASES else name


@pytest.mark.parametrize("name", [_param(name) for name in CASES])
def test_bad_input(name, launched):
    cases, nobody = launched
    spec, d, before = cases[name]
    done = nobody.result()[name] if name in NOBODY_CASES else run_script(spec["argv"], disk=spec.get("full_disk"))
    if isinstance(done, str):
        pytest.skip(done)

    assert done.returncode == 2, done.stderr
    assert "Traceback" not in done.stderr, done.stderr
    # progress bars redraw with carriage returns: split on them as a terminal shows the text
    lines = [line for line in re.split(r"[\r\n]+", done.stderr) if line.strip()]
    errors = [line for line in lines if line.startswith("error:")]
    assert len(errors) == len(spec["names"]), done.stderr
    for line, wanted in zip(errors, spec["names"]):
        assert wanted in line, (wanted, line)
    text = " ".join(errors).lower()
    for words in spec.get("has", []):
        assert words.lower() in text, (words, errors)
    for words in spec.get("has_not", []):
        assert words.lower() not in text, (words, errors)
    if spec.get("no_stdout"):  # refused before any work
        assert "PSNR" not in done.stdout
    # nothing new in the case folder (no temporary, no half output), except the good images' outputs
    allowed = set(spec.get("new", []))
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
    from conftest import load_script
    eval_script, convert, plot_log = load_script("eval"), load_script("convert_checkpoint"), load_script("plot_log")
    images_dir = tmp_path / "imgs"
    images_dir.mkdir()
    random_image((40, 36)).save(images_dir / "a.png")
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


def test_every_reader_names_non_finite_weights_at_load(tmp_path, capsys):
    """export_onnx.py, test.py and eval.py refuse a file with NaN weights in one line naming the file
    and the entry (export_onnx.py said 'differs from PyTorch by nan')."""
    from conftest import cli_error, load_script
    net = models.SRResNet(**TINY)
    with torch.no_grad():
        net.conv_block1.conv_block[0].weight[0, 0, 0, 0] = float("nan")
    bad = tmp_path / "nan.pth"
    checkpoint.save_checkpoint(checkpoint.inference_checkpoint(net), bad)
    random_image((32, 32)).save(tmp_path / "a.png")
    for script, argv in (("export_onnx", [bad, tmp_path / "x.onnx"]),
                         ("test", ["--checkpoint", bad, "--img", tmp_path / "a.png", "--output-dir", tmp_path / "o"]),
                         ("eval", ["--checkpoint", bad, "--test-folders", tmp_path])):
        line = cli_error(load_script(script).main, argv, capsys)
        assert "nan.pth: its 'model' weights are not finite (NaN or inf in conv_block1.conv_block.0.weight)" in line
    assert sorted(os.listdir(tmp_path)) == ["a.png", "nan.pth"]


@pytest.mark.parametrize("script, argv", [("eval", ["--tile", "x"]), ("test", ["--nope"]),
                                          ("plot_log", []), ("convert_checkpoint", ["a.pth"]),
                                          ("create_data_lists", ["--min-size", "0"]), ("export_onnx", ["--opset"])])
def test_every_scripts_argparse_error_is_one_line(script, argv, capsys):
    from conftest import cli_error, load_script
    line = cli_error(load_script(script).main, argv, capsys)
    assert "(see --help)" in line or "must be at least 1" in line
