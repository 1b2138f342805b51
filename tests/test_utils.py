"""Plumbing: devices, precision, atomic writes, the allocator setting."""

import os
import signal
import stat
import subprocess
import sys
import threading

import pytest
import torch

import utils
from conftest import ROOT, full_disk, null_device


def test_autocast_and_device_errors():
    with pytest.raises(utils.UserError, match="fp16 needs a CUDA"):
        utils.autocast(torch.device("cpu"), "fp16")
    if not torch.cuda.is_available():
        with pytest.raises(utils.UserError, match="no CUDA"):
            utils.resolve_device("cuda")
    assert utils.resolve_device("cpu").type == "cpu"


def test_check_writable_leaves_nothing_names_the_problem_and_takes_a_long_legal_name(tmp_path):
    utils.check_writable(tmp_path / "a" / "b" / "out.json")  # folders that can be made count
    assert os.listdir(tmp_path) == []  # ...but are not left behind
    (tmp_path / "file").write_text("x")
    with pytest.raises(utils.UserError, match=r"out.json: cannot write \(.*file is a file, not a folder\)"):
        utils.check_writable(tmp_path / "file" / "sub" / "out.json")
    with pytest.raises(utils.UserError, match="name too long"):
        utils.check_writable(tmp_path / "new" / ("n" * 256))
    with pytest.raises(utils.UserError, match="name too long"):
        utils.check_writable(tmp_path / ("d" * 256) / "out.json")
    assert sorted(os.listdir(tmp_path)) == ["file"]
    path = tmp_path / ("\u00e9" * 125 + ".png")  # 254 bytes, legal: the temporary file must not be longer
    utils.check_writable(path)
    with utils.atomic_write(path) as f:
        f.write(b"x")
    assert sorted(os.listdir(tmp_path)) == ["file", path.name]


def test_a_failed_write_removes_the_folders_it_made(tmp_path):
    with full_disk("fsync"), pytest.raises(utils.UserError, match=r"deeper/a.png: cannot write \(No space left on"):
        with utils.atomic_write_all([tmp_path / "new" / "deeper" / "a.png", tmp_path / "new" / "b.png"]) as files:
            for f in files:
                f.write(b"data")
    assert os.listdir(tmp_path) == []
    (tmp_path / "kept").mkdir()  # a folder that was there stays
    with full_disk("fsync"), pytest.raises(utils.UserError), utils.atomic_write(tmp_path / "kept" / "a.png") as f:
        f.write(b"data")
    assert os.listdir(tmp_path) == ["kept"] and os.listdir(tmp_path / "kept") == []


@pytest.mark.slow
@pytest.mark.skipif(sys.platform != "linux", reason="glibc's malloc")
def test_keep_freed_memory_stops_large_blocks_from_being_faulted_in_again():
    # a 64 MB tensor made and freed again and again, as a layer's output is for every image: with
    # glibc's defaults it is mmap-ed and unmapped each time (16k page faults each); kept, freed
    # blocks are reused (after a few rounds: torch's aligned allocations need a block a little
    # larger than the one just freed until neighbouring free blocks have merged). One process:
    # glibc's defaults first, then kept from the call on.
    probe = ("import resource, torch, utils\n"
             "def faults():\n"
             "    for _ in range(10):\n"
             "        torch.ones(16 * 2**20)\n"
             "    before = resource.getrusage(resource.RUSAGE_SELF).ru_minflt\n"
             "    for _ in range(10):\n"
             "        torch.ones(16 * 2**20)\n"
             "    return resource.getrusage(resource.RUSAGE_SELF).ru_minflt - before\n"
             "default = faults()\n"
             "kept = utils.keep_freed_memory()\n"
             "print(default, kept, faults())\n")
    out = subprocess.run([sys.executable, "-c", probe], cwd=ROOT, capture_output=True, text=True, check=True)
    default, kept, faults = out.stdout.split()
    assert int(default) > 10 * 15_000
    assert kept == "True" and int(faults) < 10_000


def test_signals_inside_deferred_signals_wait_for_the_block(tmp_path):
    """A Ctrl-C in the middle of an atomic write lets the file finish, then interrupts."""
    path = tmp_path / "out.bin"
    # Python's own Ctrl-C handler, whatever the test worker inherited (a worker may ignore SIGINT)
    previous = signal.signal(signal.SIGINT, signal.default_int_handler)
    try:
        with pytest.raises(KeyboardInterrupt):
            with utils.atomic_write(path) as f:
                f.write(b"first half ")
                os.kill(os.getpid(), signal.SIGINT)
                f.write(b"second half")
    finally:
        signal.signal(signal.SIGINT, previous)
    assert path.read_bytes() == b"first half second half"
    assert os.listdir(tmp_path) == ["out.bin"]


def test_sigterm_is_handled_like_ctrl_c_with_exit_code_143(capsys):
    def main(argv):
        os.kill(os.getpid(), signal.SIGTERM)
        raise AssertionError("not reached")
    with pytest.raises(SystemExit) as e:
        utils.run_cli(main, [])
    assert e.value.code == 143 and capsys.readouterr().err == "terminated\n"
    assert signal.getsignal(signal.SIGTERM) is signal.SIG_DFL  # restored


def test_error_lines_stay_one_line(capsys):
    def main(argv):
        raise utils.UserError("bad\nname.png: cannot read (first reason\nsecond reason)")
    with pytest.raises(SystemExit):
        utils.run_cli(main, [])
    assert capsys.readouterr().err == "error: bad\\nname.png: cannot read (first reason\\nsecond reason)\n"


def test_atomic_write_goes_through_a_device_a_pipe_stdout_and_a_link(tmp_path, capfd):
    node = null_device(tmp_path)
    with utils.atomic_write(node) as f:
        f.write(b"discarded")
    assert stat.S_ISCHR(os.stat(node).st_mode) and sorted(os.listdir(tmp_path)) == ["null"]
    fifo = tmp_path / "pipe"
    os.mkfifo(fifo)
    got = []
    reader = threading.Thread(target=lambda: got.append(open(fifo, "rb").read()))
    reader.start()
    with utils.atomic_write(fifo) as f:
        f.write(b"through the pipe")
    reader.join(10)
    assert got == [b"through the pipe"] and stat.S_ISFIFO(os.stat(fifo).st_mode)
    with utils.atomic_write("-") as f:
        f.write(b"to stdout\n")
    assert capfd.readouterr().out == "to stdout\n" and not os.path.exists("-")
    utils.check_writable(node)  # nothing made in its folder
    assert sorted(os.listdir(tmp_path)) == ["null", "pipe"]
    # a write that fails leaves the device untouched and writes nothing
    with pytest.raises(RuntimeError):
        with utils.atomic_write_all([node, tmp_path / "a.png"]) as (f, g):
            f.write(b"x")
            raise RuntimeError("failed half-way")
    assert stat.S_ISCHR(os.stat(node).st_mode) and sorted(os.listdir(tmp_path)) == ["null", "pipe"]
    # through a link: its target is replaced, the link kept
    (tmp_path / "real.json").write_text("old")
    (tmp_path / "link.json").symlink_to(tmp_path / "real.json")
    with utils.atomic_write(tmp_path / "link.json") as f:
        f.write(b"new")
    assert (tmp_path / "link.json").is_symlink() and (tmp_path / "real.json").read_text() == "new"
