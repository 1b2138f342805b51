"""Plumbing shared by the scripts: one-line user errors, atomic file writes, device, precision, allocator."""

import argparse
import contextlib
import ctypes
import errno
import io
import os
import shlex
import signal
import stat
import sys
import tempfile
import threading

import torch


class UserError(Exception):
    """A problem with the user's input (a file, a flag): scripts print it on one line and exit 2."""


class ArgumentParser(argparse.ArgumentParser):
    """argparse, with errors as one 'error:' line (exit code 2) like every other failure (every script's)."""

    def error(self, message):
        raise UserError(f"{message} (see --help)")

    def convert_arg_line_to_args(self, line):
        """A line of an @file (fromfile_prefix_chars, the training scripts' recipes): flags and values
        split as a shell splits them; '#' starts a comment."""
        return shlex.split(line, comments=True)


class Terminated(KeyboardInterrupt):
    """SIGTERM, handled like Ctrl-C: temporaries are removed, the run saves; the exit code is 143."""


def _terminate(signum, frame):
    raise Terminated


def one_line(message):
    """A message on one line: newlines inside it (a file name can hold one) are shown escaped."""
    return str(message).replace("\r", "\\r").replace("\n", "\\n")


@contextlib.contextmanager
def deferred_signals():
    """Ctrl-C and SIGTERM that arrive inside the block are acted on when it ends, so that a file
    being saved is finished first (a no-op outside the main thread, where signals never land)."""
    if threading.current_thread() is not threading.main_thread():
        yield
        return
    pending = []
    previous = {s: signal.getsignal(s) for s in (signal.SIGINT, signal.SIGTERM)}
    for s in previous:
        signal.signal(s, lambda signum, frame: pending.append(signum))
    try:
        yield
    finally:
        for s, handler in previous.items():
            signal.signal(s, handler if handler is not None else signal.SIG_DFL)
        for s in pending:
            signal.raise_signal(s)  # now, to the handler that was in place before the block


def is_stream(path):
    """True for '-' (standard output) and for an existing path that is not a regular file or a
    folder (a device such as /dev/null, a named pipe, /dev/stdout): what is written to such a path
    goes through it; replacing it with a file would destroy it (as root, even /dev/null)."""
    path = os.fspath(path)
    if path == "-":
        return True
    try:
        mode = os.stat(path).st_mode  # follows links: /dev/stdout -> a pipe, a terminal, a file
    except OSError:
        return False
    return not (stat.S_ISREG(mode) or stat.S_ISDIR(mode))


@contextlib.contextmanager
def atomic_write(path):
    """Open a temporary file next to ``path`` for binary writing; on success it replaces ``path``.

    On any exception the temporary file is removed and an existing file at ``path`` is untouched,
    so readers never see a half-written file. The folder is created if needed. A failed write
    (no permission, full disk, a folder in the way...) is a UserError naming ``path``. A symbolic
    link is followed (its target is replaced, the link stays); '-', a device or a named pipe
    (is_stream) is written through once the data is complete, never replaced.
    """
    with atomic_write_all([path]) as (f,):
        yield f


@contextlib.contextmanager
def atomic_write_all(paths, defer_signals=True):
    """atomic_write for files that must appear together: yields one binary file per path, and
    only when every one is written in full do they replace their paths (else none does).
    Ctrl-C and SIGTERM wait until the files are in place (deferred_signals), unless ``defer_signals``
    is False (a long write, such as a decoded store, is then abandoned and cleaned up at once)."""
    with deferred_signals() if defer_signals else contextlib.nullcontext():
        with _atomic_write_all(paths) as files:
            yield files


@contextlib.contextmanager
def _atomic_write_all(paths):
    paths = [os.fspath(p) for p in paths]
    streams = {p for p in paths if is_stream(p)}  # written through at the end, from memory
    # a link is followed: its target is what gets replaced (a dangling link's target is created)
    targets = [p if p in streams or not os.path.islink(p) else os.path.realpath(p) for p in paths]
    temporaries, replaced, created, current = [], [], [], paths[0]
    try:
        with contextlib.ExitStack() as stack:
            files = []
            for current, target in zip(paths, targets):
                if current in streams:
                    files.append(io.BytesIO())
                    temporaries.append(None)
                    continue
                if os.path.isdir(current):
                    raise IsADirectoryError(21, "a folder is in the way")
                folder = os.path.dirname(os.path.abspath(target))
                for new in _missing_folders(folder):  # a failure removes the folders it made
                    with contextlib.suppress(FileExistsError):  # (made by another process meanwhile)
                        os.mkdir(new)
                        created.append(new)
                fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temporary_prefix(target), suffix=".tmp")
                temporaries.append(tmp)
                files.append(stack.enter_context(os.fdopen(fd, "wb")))
            yield files
            for current, f in zip(paths, files):  # noqa: B007 - `current` names the file in an error below
                if current not in streams:
                    f.flush()
                    os.fsync(f.fileno())
        umask = os.umask(0)
        os.umask(umask)
        for current, target, tmp in zip(paths, targets, temporaries):  # noqa: B007 - `current` names it in an error
            if tmp is not None:
                os.chmod(tmp, 0o666 & ~umask)  # mkstemp makes 0600 files; give the usual permissions
                os.replace(tmp, target)
                replaced.append(target)
        for current, f in zip(paths, files):  # the streams last: what they got cannot be taken back
            if current == "-":
                sys.stdout.flush()
                sys.stdout.buffer.write(f.getvalue())
                sys.stdout.buffer.flush()
            elif current in streams:
                with open(current, "wb") as out:
                    out.write(f.getvalue())
    except BaseException as e:
        for tmp in temporaries:
            with contextlib.suppress(OSError, TypeError):
                os.unlink(tmp)
        for path in replaced:  # all or nothing
            with contextlib.suppress(OSError):
                os.unlink(path)
        for folder in reversed(created):  # and no empty folder left behind
            with contextlib.suppress(OSError):
                os.rmdir(folder)
        if isinstance(e, OSError):
            raise UserError(f"{current}: cannot write ({e.strerror or e})") from None
        raise


def check_writable(path):
    """UserError naming ``path`` unless a file can be written there now (a folder that does not
    exist yet counts if it can be created). Leaves nothing behind."""
    path = os.fspath(path)
    if os.path.isdir(path):
        raise UserError(f"{path}: cannot write (a folder is in the way)")
    if is_stream(path):
        if path != "-" and not os.access(path, os.W_OK):
            raise UserError(f"{path}: cannot write (permission denied)")
        return
    if os.path.islink(path):
        path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    created = []
    try:
        for new in _missing_folders(folder):  # made to try, removed below
            os.mkdir(new)
            created.append(new)
        fd, tmp = tempfile.mkstemp(dir=folder, prefix=_temporary_prefix(path), suffix=".tmp")
        os.close(fd)
        os.unlink(tmp)
        name_max = os.pathconf(folder, "PC_NAME_MAX") if hasattr(os, "pathconf") else 255
        if len(os.fsencode(os.path.basename(path))) > name_max:  # (the temporary's name is shortened)
            raise OSError(errno.ENAMETOOLONG, os.strerror(errno.ENAMETOOLONG))
    except OSError as e:
        raise UserError(f"{path}: cannot write ({e.strerror or e})") from None
    finally:
        for folder in reversed(created):
            with contextlib.suppress(OSError):
                os.rmdir(folder)


def same_file(a, b):
    """True if two paths name the same file: the same path once links are resolved, or (for files
    that exist) the same inode, so hard links count too."""
    a, b = os.fspath(a), os.fspath(b)
    if os.path.realpath(a) == os.path.realpath(b):
        return True
    try:
        return os.path.samefile(a, b)
    except OSError:  # one of them does not exist yet
        return False


def refuse_overwriting_input(output, inputs):
    """UserError if the output path is one of the inputs: writing it would replace the user's file."""
    for path in inputs:
        if same_file(output, path):
            raise UserError(f"{output}: this output is the input {path}; writing it would replace it "
                            "(give another output path)")


def _missing_folders(folder):
    """The folders of ``folder``'s path that do not exist yet, outermost first; NotADirectoryError
    if the deepest existing one is a file."""
    missing = []
    while not os.path.exists(folder):
        missing.insert(0, folder)
        folder = os.path.dirname(folder)
    if not os.path.isdir(folder):
        raise NotADirectoryError(20, f"{folder} is a file, not a folder")
    return missing


def _temporary_prefix(path):
    # at most 200 bytes of the name, so that the temporary's name is not too long where the file's is not
    name = os.fsencode(os.path.basename(path))[:200]
    return "." + name.decode(errors="ignore") + "."


def remove_stale_temporaries(path):
    """Delete temporary files that atomic_write(path) left behind when its process was killed."""
    if is_stream(path):  # written through: no temporaries (and never a scan of /dev)
        return []
    if os.path.islink(path):
        path = os.path.realpath(path)
    folder = os.path.dirname(os.path.abspath(path))
    prefix = _temporary_prefix(path)
    removed = []
    if os.path.isdir(folder):
        for name in os.listdir(folder):
            if name.startswith(prefix) and name.endswith(".tmp"):
                with contextlib.suppress(OSError):
                    os.unlink(os.path.join(folder, name))
                    removed.append(name)
    return removed


def keep_freed_memory():
    """Make glibc's malloc keep freed memory for reuse instead of handing it back to the OS.

    By default every block of 32 MB or more (a feature map of a large image) is unmapped when
    freed, so each layer's output is page-faulted and zeroed by the kernel again. With mmap off, no
    trimming and one arena for all threads, freed tensors are reused: faster, but the peak memory
    is higher, since freed blocks stay until the process ends (README, Speed). A plain call, no
    environment variable, so it also works in a notebook; a no-op off glibc. True if it took effect.
    """
    try:
        libc = ctypes.CDLL(None)
    except (OSError, TypeError):  # Windows
        return False
    if not hasattr(libc, "gnu_get_libc_version"):  # not glibc: macOS, Windows, musl
        return False
    m_trim_threshold, m_mmap_max, m_arena_max = -1, -4, -8  # from glibc's malloc.h
    settings = ((m_mmap_max, 0), (m_trim_threshold, 2**31 - 1), (m_arena_max, 1))
    return all([libc.mallopt(param, value) for param, value in settings])


def resolve_device(name):
    """torch.device for 'auto' (CUDA if available, else CPU), 'cpu' or 'cuda[:k]'."""
    if name == "auto":
        return torch.device("cuda" if torch.cuda.is_available() else "cpu")
    try:
        device = torch.device(name)
    except (RuntimeError, TypeError):
        device = None
    if device is None or device.type not in ("cpu", "cuda"):
        raise UserError(f"--device {name}: unknown device; use auto, cpu, cuda or cuda:N")
    if device.type == "cuda" and not torch.cuda.is_available():
        raise UserError(f"--device {name}: PyTorch sees no CUDA GPU here; use --device cpu")
    if device.type == "cuda" and device.index is not None and device.index >= torch.cuda.device_count():
        raise UserError(f"--device {name}: this machine has {torch.cuda.device_count()} CUDA GPU(s)")
    return device


def cpu_supports_bf16():
    """True if this CPU has native bf16 arithmetic (AVX-512 BF16 or AMX), where bf16 autocast is fast."""
    try:
        with open("/proc/cpuinfo") as f:
            flags = f.read()
    except OSError:
        return False
    return "avx512_bf16" in flags or "amx_bf16" in flags


def resolve_precision(precision, device):
    """The concrete precision ('fp32', 'bf16' or 'fp16') for a --precision flag on a device.

    'auto' is bf16 on CPUs with native bf16 arithmetic, fp32 on other CPUs, bf16 on CUDA GPUs that
    support it and fp16 on older ones. Raises UserError for fp16 on a CPU or an unknown name.
    """
    device = torch.device(device)
    if precision == "auto":
        if device.type == "cuda":
            return "bf16" if torch.cuda.is_bf16_supported() else "fp16"
        return "bf16" if cpu_supports_bf16() else "fp32"
    autocast(device, precision)  # raises the UserError for fp16 on a CPU or an unknown name
    return precision


def autocast(device, precision):
    """Autocast context for 'fp32' (none), 'bf16' (CPU or CUDA) or 'fp16' (CUDA only).

    fp16 on a CPU is refused with a UserError (CPU fp16 kernels are slow or missing).
    """
    if precision == "fp32":
        return contextlib.nullcontext()
    if precision == "bf16":
        return torch.autocast(device.type, dtype=torch.bfloat16)
    if precision == "fp16":
        if device.type != "cuda":
            raise UserError("--precision fp16 needs a CUDA GPU; on a CPU use bf16 or fp32")
        return torch.autocast("cuda", dtype=torch.float16)
    raise UserError(f"unknown precision {precision!r}; use fp32, bf16 or fp16")


def run_cli(main, argv=None):
    """Run a script's ``main(argv)``; print user errors as one line on stderr and exit with code 2;
    Ctrl-C exits with 130 and SIGTERM with 143, after the same clean-up.

    Set SR_DEBUG=1 to see the full traceback instead.
    """
    main_thread = threading.current_thread() is threading.main_thread()
    previous = signal.signal(signal.SIGTERM, _terminate) if main_thread else None  # SIGTERM as Ctrl-C
    try:
        return main(argv)
    except (UserError, FileNotFoundError) as e:
        if os.environ.get("SR_DEBUG"):
            raise
        print(f"error: {one_line(e)}", file=sys.stderr)
        sys.exit(2)
    except Terminated:
        print("terminated", file=sys.stderr)
        sys.exit(143)
    except KeyboardInterrupt:
        print("interrupted", file=sys.stderr)
        sys.exit(130)
    finally:
        if main_thread:
            signal.signal(signal.SIGTERM, previous if previous is not None else signal.SIG_DFL)

