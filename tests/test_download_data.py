"""download_data.py against a local HTTP server serving files the tests make (no machine of ours
reaches the internet): checksums, skipping, resuming, and one error line for every failure."""

import contextlib
import functools
import hashlib
import http.server
import threading
import time

import pytest

import download_data
from conftest import ROOT, cli

COMMIT = "8f6dd8c1d20cb7e8792a7177b4f6fd677633f598"


class Handler(http.server.BaseHTTPRequestHandler):
    """Serves the server's ``files`` ({url path: bytes}); its ``mode`` ({url path: how}) spoils a file:
    'truncate' sends its full Content-Length but only half its bytes, then closes; 'endless' sends
    zeros without end; 'trickle' sends one byte every 0.2 s. Every request goes into ``requests``."""

    def do_GET(self):
        self.server.requests.append(self.path)
        body, mode = self.server.files.get(self.path), self.server.mode.get(self.path)
        if body is None:
            self.send_error(404)
            return
        self.send_response(200)
        if mode != "endless":
            self.send_header("Content-Length", str(len(body)))
        self.end_headers()
        if mode == "endless":
            with contextlib.suppress(OSError):
                for _ in range(10_000):  # 640 MB if nobody stops reading
                    self.wfile.write(bytes(1 << 16))
            self.close_connection = True
        elif mode == "trickle":
            with contextlib.suppress(OSError):
                for byte in body:
                    self.wfile.write(bytes([byte]))
                    self.wfile.flush()
                    time.sleep(0.2)
        elif mode == "truncate":
            self.wfile.write(body[:len(body) // 2])
            self.close_connection = True
        else:
            self.wfile.write(body)

    def log_message(self, *args):
        pass


def stop(server):
    server.shutdown()
    server.server_close()


@pytest.fixture
def server(tmp_path, monkeypatch):
    """A server on 127.0.0.1 with Set5 (3 files), Set14 (2 files) and a manifest of their checksums."""
    srv = http.server.ThreadingHTTPServer(("127.0.0.1", 0), Handler)
    srv.files, srv.mode, srv.requests = {}, {}, []
    srv.url = f"http://127.0.0.1:{srv.server_address[1]}/mirror/"
    threading.Thread(target=srv.serve_forever, args=(0.01,), daemon=True).start()
    rows = ["set\tpath\tbytes\tsha256"]
    for name, count in (("Set5", 3), ("Set14", 2)):
        for i in range(count):
            path = f"data/{name}/image_SRF_4/img_{i + 1:03d}_SRF_4_HR.png"
            body = bytes((7 * i + 70 * len(name) + 13 * k) % 256 for k in range(3000))
            srv.files["/mirror/" + path] = body
            rows.append(f"{name}\t{path}\t{len(body)}\t{hashlib.sha256(body).hexdigest()}")
    manifest = tmp_path / "manifest.tsv"
    manifest.write_text("\n".join(rows) + "\n")
    monkeypatch.setattr(download_data, "MANIFEST", str(manifest))
    monkeypatch.setattr(download_data, "SETS", ("Set5", "Set14"))
    yield srv
    stop(srv)


run = functools.partial(cli, download_data.main)  # the exit code of the command line with these flags


def error_line(argv, capsys):
    """Run the command line: exit code 2 and one error line, returned (the progress bar comes before it)."""
    assert run(argv) == 2
    err = capsys.readouterr().err
    assert "Traceback" not in err
    lines = [line for line in err.replace("\r", "\n").splitlines() if line.strip()]
    assert lines[-1].startswith("error: ") and sum("error" in line for line in lines) == 1, err
    return lines[-1]


def leftovers(folder):
    return sorted(p.name for p in folder.rglob("*") if p.is_file() and not p.name.endswith("_HR.png"))


def assert_fetched(server, out, name):
    """out/name holds exactly the set's files of the server, byte for byte."""
    wanted = {path.rsplit("/", 1)[1]: body for path, body in server.files.items() if f"/{name}/" in path}
    assert {p.name: p.read_bytes() for p in (out / name).iterdir()} == wanted


def test_downloads_checked_files_and_prints_the_next_command(server, tmp_path, capsys):
    out = tmp_path / "datasets"
    assert run(["Set5", "--output-dir", out, "--base-url", server.url]) == 0
    assert_fetched(server, out, "Set5")
    assert not (out / "Set14").exists()
    stdout = capsys.readouterr().out
    assert f"python eval.py --checkpoint checkpoints/srresnet_x4.pth --bicubic --test-folders {out / 'Set5'}" in stdout
    # a second run downloads nothing
    server.requests.clear()
    assert run(["set5", "--output-dir", out, "--base-url", server.url]) == 0
    assert server.requests == []
    assert "3 file(s) already present and correct" in capsys.readouterr().out


@pytest.mark.parametrize("failure, message", [("corrupted", "SHA-256"), ("missing", "404"),
                                              ("endless", "sent more than the 3000 bytes the manifest gives"),
                                              ("trickle", "too slow")])
def test_a_bad_file_is_an_error_and_not_kept(server, tmp_path, capsys, monkeypatch, failure, message):
    """A file with the manifest's size but other bytes, one the server lacks, one whose body never
    ends (stopped at the manifest size), and one sent a byte every 0.2 s (which never trips the socket
    timeout; the per-file deadline, grace + size / speed, ends it): one line naming it; the files
    before it are kept."""
    path = "/mirror/data/Set5/image_SRF_4/img_002_SRF_4_HR.png"
    out = tmp_path / "datasets"
    argv = ["Set5", "--output-dir", out, "--base-url", server.url]
    if failure == "corrupted":
        server.files[path] = b"X" + server.files[path][1:]
    elif failure == "missing":
        del server.files[path]
    elif failure == "trickle":
        monkeypatch.setattr(download_data, "START_SECONDS", 1)
        argv += ["--min-speed", "10"]
        server.mode[path] = "trickle"
    else:
        server.mode[path] = "endless"
    started = time.monotonic()
    line = error_line(argv, capsys)
    assert time.monotonic() - started < 10  # the trickle: 1 s + 3000 B / 10 KB/s = 1.3 s, plus one last byte
    assert message in line and "img_002" in line, line
    assert not (out / "Set5" / "img_002_SRF_4_HR.png").exists()
    assert (out / "Set5" / "img_001_SRF_4_HR.png").exists() and leftovers(out) == []


def test_an_interrupted_download_is_finished_by_running_again(server, tmp_path, capsys):
    broken = "/mirror/data/Set5/image_SRF_4/img_002_SRF_4_HR.png"
    server.mode[broken] = "truncate"
    out = tmp_path / "datasets"
    assert "img_002" in error_line(["Set5", "--output-dir", out, "--base-url", server.url], capsys)
    assert sorted(p.name for p in (out / "Set5").iterdir()) == ["img_001_SRF_4_HR.png"]  # no partial file
    # a partial file left by a run that was killed is cleaned up too
    (out / "Set5" / "img_002_SRF_4_HR.png.0123abcd.partial").write_bytes(b"half")
    server.mode.clear()
    server.requests.clear()
    assert run(["Set5", "--output-dir", out, "--base-url", server.url]) == 0
    assert sorted(server.requests) == [broken, broken.replace("002", "003")]  # the first file is not fetched again
    assert leftovers(out) == []
    assert_fetched(server, out, "Set5")


def test_all_sets_from_a_local_copy_of_the_repository_replace_a_wrong_file(server, tmp_path):
    """'all' fetches every set; a folder works as --base-url; a wrong file already present is replaced."""
    mirror = tmp_path / "SelfExSR"
    for path, body in server.files.items():
        target = mirror / path[len("/mirror/"):]
        target.parent.mkdir(parents=True, exist_ok=True)
        target.write_bytes(body)
    out = tmp_path / "datasets"
    (out / "Set14").mkdir(parents=True)
    (out / "Set14" / "img_001_SRF_4_HR.png").write_bytes(b"not the image")
    assert run(["all", "--output-dir", out, "--base-url", mirror]) == 0
    assert_fetched(server, out, "Set5")
    assert_fetched(server, out, "Set14")


@pytest.mark.parametrize("problem, message", [
    ("unknown set", "Set6"), ("unreachable", "Connection refused"), ("bad url", "unknown url type: nowhere"),
    ("no such folder", "neither an address (https://..., file://...) nor an existing folder"),
    ("file in the way", "Set5: cannot write: it is a file, not a folder"),
    ("zero speed", "--min-speed 0: must be a positive")])
def test_user_errors_are_one_line(server, tmp_path, capsys, problem, message):
    out = tmp_path / "datasets"
    argv = ["Set5", "--output-dir", out, "--base-url", server.url]
    if problem == "unknown set":
        argv[0] = "Set6"
    elif problem == "unreachable":
        stop(server)  # nothing listens on that port any more
    elif problem == "bad url":
        argv[-1] = "nowhere://example/"
    elif problem == "no such folder":
        argv[-1] = str(tmp_path / "no-such-mirror")
    elif problem == "zero speed":
        argv += ["--min-speed", "0"]
    else:
        out.mkdir()
        (out / "Set5").write_text("a file")
    line = error_line(argv, capsys)
    assert message in line, line
    if problem == "file in the way":
        assert sorted(p.name for p in out.iterdir()) == ["Set5"]
    else:
        assert not out.exists()  # no empty folders left behind either


def test_default_source_is_the_pinned_repository():
    assert download_data.DEFAULT_BASE_URL == f"https://raw.githubusercontent.com/jbhuang0604/SelfExSR/{COMMIT}/"
    url = download_data.file_url(download_data.DEFAULT_BASE_URL, "data/Set5/a.png")
    assert url.endswith(f"{COMMIT}/data/Set5/a.png")


def test_the_manifest_lists_the_four_sets():
    manifest = download_data.read_manifest()
    assert {name: len(files) for name, files in manifest.items()} == {"Set5": 5, "Set14": 14, "BSD100": 100,
                                                                      "Urban100": 100}
    for files in manifest.values():
        names = [path.rsplit("/", 1)[1] for path, _, _ in files]
        assert len(set(names)) == len(names)
        for path, size, sha256 in files:
            assert path.startswith("data/") and "/image_SRF_4/" in path and path.endswith("_HR.png")
            assert size > 0 and len(sha256) == 64 and int(sha256, 16) >= 0


def test_the_manifest_matches_the_published_facts():
    shared = ROOT.parent / "shared" / "benchmarks" / "manifest.tsv"
    if not shared.is_file():
        pytest.skip(f"{shared} is absent")
    assert download_data.read_manifest() == download_data.read_manifest(str(shared))

