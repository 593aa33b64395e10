"""Data (issue 25): the digits shipped with xpnn (no scikit-learn), and `xpnn data download`
against a local HTTP server on 127.0.0.1 that the tests start, serving archives they make:
SHA-256 checks, a corrupt download refused, an interrupted one resumed."""
import gzip
import hashlib
import http.server
import io
import sys
import tarfile
import threading
import tomllib
from pathlib import Path

import numpy as np
import pytest

from xpnn import download
from xpnn.cli import main
from xpnn.data import DataError, get_data, load_idx_dir, read_digits, write_cifar_batch, write_idx

ROOT = Path(__file__).resolve().parents[1]


def test_digits_need_neither_scikit_learn_nor_scipy(monkeypatch):
    for blocked in ("sklearn", "scipy"):
        monkeypatch.setitem(sys.modules, blocked, None)      # `import sklearn` fails
    data = get_data("digits")
    assert data["X_train"].shape == (1200, 1, 8, 8) and data["X_test"].shape == (297, 1, 8, 8)
    images, labels = read_digits()
    assert images.shape == (1797, 8, 8) and np.bincount(labels).min() >= 170
    assert images.max() == 16 and images.min() == 0
    dependencies = tomllib.loads((ROOT / "pyproject.toml").read_text())["project"]["dependencies"]
    assert not [d for d in dependencies if d.startswith(("scikit-learn", "scipy"))]


def test_the_shipped_digits_say_where_they_come_from():
    notes = (ROOT / "xpnn" / "datasets" / "README.md").read_text()
    digest = hashlib.sha256((ROOT / "xpnn" / "datasets" / "digits.csv.gz").read_bytes()).hexdigest()
    assert digest in notes and "CC BY 4.0" in notes and "10.24432/C50P49" in notes


def test_a_corrupt_digits_file_is_named(tmp_path):
    bad = tmp_path / "digits.csv.gz"
    bad.write_bytes(gzip.compress(b"1,2,3\n"))
    with pytest.raises(DataError, match="digits.csv.gz: expected rows of 64 pixels"):
        read_digits(bad)


class Server:
    """A static HTTP server on 127.0.0.1 with Range support; records each request's Range."""

    def __init__(self, files):
        self.files, self.ranges = files, []
        owner = self

        class Handler(http.server.BaseHTTPRequestHandler):
            def do_GET(self):
                body = owner.files.get(self.path.lstrip("/"))
                if body is None:
                    self.send_error(404)
                    return
                wanted = self.headers.get("Range")
                owner.ranges.append(wanted)
                start = int(wanted[6:].rstrip("-")) if wanted else 0
                self.send_response(206 if wanted else 200)
                self.send_header("Content-Length", str(len(body) - start))
                self.end_headers()
                self.wfile.write(body[start:])

            def log_message(self, *args):
                pass
        self.httpd = http.server.HTTPServer(("127.0.0.1", 0), Handler)
        self.url = f"http://127.0.0.1:{self.httpd.server_address[1]}/"
        threading.Thread(target=self.httpd.serve_forever, daemon=True).start()

    def close(self):
        self.httpd.shutdown()
        self.httpd.server_close()


@pytest.fixture
def cache(tmp_path, monkeypatch):
    monkeypatch.setenv("XPNN_DATA_DIR", str(tmp_path / "cache"))
    return tmp_path / "cache"


def cifar_archive(tmp_path, rng):
    folder = tmp_path / "make" / "cifar-10-batches-py"
    folder.mkdir(parents=True)
    for name in [f"data_batch_{i}" for i in range(1, 6)] + ["test_batch"]:
        write_cifar_batch(folder / name, rng.integers(0, 256, (20, 3, 32, 32)), rng.integers(0, 10, 20))
    buffer = io.BytesIO()
    with tarfile.open(fileobj=buffer, mode="w:gz") as tar:
        tar.add(folder, arcname="cifar-10-batches-py")
    return buffer.getvalue()


def mnist_files(tmp_path, rng):
    files = {}
    for split, n in (("train", 60), ("t10k", 10)):
        for kind, array in (("images-idx3", rng.integers(0, 256, (n, 28, 28))),
                            ("labels-idx1", rng.integers(0, 10, n))):
            path = tmp_path / f"{split}-{kind}-ubyte.gz"
            write_idx(path, array)
            files[path.name] = path.read_bytes()
    return files


def pinned(monkeypatch, name, files, **kwargs):
    """SOURCES[name] with these files' SHA-256 and a mirror nobody may reach."""
    source = download.SOURCES[name]
    hashes = {f: hashlib.sha256(body).hexdigest() for f, body in files.items()}
    monkeypatch.setitem(download.SOURCES, name, download.Source(
        ("http://127.0.0.1:9/unreachable/",), hashes, source.unpack, source.ready))


def test_download_cifar10_then_get_data_reads_the_cache(tmp_path, cache, monkeypatch):
    archive = cifar_archive(tmp_path, np.random.default_rng(0))
    pinned(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    server = Server({"cifar-10-python.tar.gz": archive})
    try:
        assert download.downloaded("cifar10") is None
        where = download.download("cifar10", mirror=server.url, say=lambda _: None)
    finally:
        server.close()
    assert where == cache / "cifar10" / "cifar-10-batches-py" == download.downloaded("cifar10")
    data = get_data("cifar10")                       # no data_dir: the cache
    assert data["X_test"].shape == (20, 3, 32, 32) and len(data["X_train"]) + len(data["X_val"]) == 100


def test_a_wrong_checksum_is_refused_and_nothing_kept(tmp_path, cache, monkeypatch):
    files = mnist_files(tmp_path, np.random.default_rng(1))
    pinned(monkeypatch, "mnist", files)
    served = dict(files)
    body = bytearray(files["t10k-labels-idx1-ubyte.gz"])
    body[len(body) // 2] ^= 0xFF                                           # one byte altered
    served["t10k-labels-idx1-ubyte.gz"] = bytes(body)
    server = Server(served)
    try:
        with pytest.raises(DataError, match="SHA-256 is .*not the published"):
            download.download("mnist", mirror=server.url, say=lambda _: None)
    finally:
        server.close()
    folder = cache / "mnist"
    assert not (folder / "t10k-labels-idx1-ubyte.gz").exists()
    assert not list(folder.glob("*.part")) and download.downloaded("mnist") is None


def test_an_interrupted_download_resumes(tmp_path, cache, monkeypatch):
    files = mnist_files(tmp_path, np.random.default_rng(2))
    pinned(monkeypatch, "mnist", files)
    folder = cache / "mnist"
    folder.mkdir(parents=True)
    name = "train-images-idx3-ubyte.gz"
    (folder / (name + ".part")).write_bytes(files[name][:1000])       # what a first try got
    server = Server(files)
    try:
        where = download.download("mnist", mirror=server.url, say=lambda _: None)
    finally:
        server.close()
    assert "bytes=1000-" in server.ranges
    X_train, y_train, X_test, y_test = load_idx_dir(where)
    assert X_train.shape == (60, 28, 28) and y_test.shape == (10,)


def test_an_unreachable_mirror_keeps_the_partial_file_and_says_so(tmp_path, cache, monkeypatch):
    files = mnist_files(tmp_path, np.random.default_rng(3))
    pinned(monkeypatch, "mnist", files)
    with pytest.raises(DataError, match="could not download .*next try resumes"):
        download.download("mnist", say=lambda _: None, timeout=5)


def test_data_command(tmp_path, cache, monkeypatch, capsys):
    archive = cifar_archive(tmp_path, np.random.default_rng(4))
    pinned(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    server = Server({"cifar-10-python.tar.gz": archive})
    try:
        assert main(["data", "download", "cifar10", "--mirror", server.url]) == 0
        assert main(["data", "download", "cifar10", "--mirror", server.url]) == 0      # already there
    finally:
        server.close()
    captured = capsys.readouterr()
    assert "already in" in captured.err and str(cache / "cifar10") in captured.out
    assert main(["data", "where"]) == 0 and capsys.readouterr().out.strip() == str(cache)
    assert main(["train", "--dataset", "cifar10", "--model", "softmax", "--epochs", "1", "--quiet",
                 "--out", str(tmp_path / "run")]) == 0


def test_fetch_one_file_checked(tmp_path):
    body = b"some bytes " * 1000
    server = Server({"dir/file.bin": body})
    try:
        from xpnn.data import fetch
        good = hashlib.sha256(body).hexdigest()
        path = fetch(server.url + "dir/file.bin", good, tmp_path / "a" / "file.bin")
        assert path.read_bytes() == body
        assert fetch(server.url + "dir/file.bin", good.upper(), path) == path       # already there
        with pytest.raises(DataError, match="SHA-256"):
            fetch(server.url + "dir/file.bin", "0" * 64, tmp_path / "b.bin")
        assert not (tmp_path / "b.bin").exists() and not (tmp_path / "b.bin.part").exists()
    finally:
        server.close()


def test_the_mirror_may_come_from_the_environment(tmp_path, cache, monkeypatch):
    files = mnist_files(tmp_path, np.random.default_rng(5))
    pinned(monkeypatch, "mnist", files)
    server = Server(files)
    monkeypatch.setenv("XPNN_DATA_MIRROR", server.url)
    try:
        assert download.download("mnist", say=lambda _: None) == cache / "mnist"
    finally:
        server.close()


def test_a_missing_data_set_is_offered_for_download_at_a_terminal(tmp_path, cache, monkeypatch):
    import argparse
    from xpnn.cli import training
    archive = cifar_archive(tmp_path, np.random.default_rng(6))
    pinned(monkeypatch, "cifar10", {"cifar-10-python.tar.gz": archive})
    server = Server({"cifar-10-python.tar.gz": archive})
    monkeypatch.setenv("XPNN_DATA_MIRROR", server.url)
    args = argparse.Namespace(dataset="cifar10", data_dir=None, num_train=None)
    asked = []
    try:
        monkeypatch.setattr(sys.stdin, "isatty", lambda: False, raising=False)
        assert not training.offer_download(args, ask=asked.append)           # no one to ask
        monkeypatch.setattr(sys.stdin, "isatty", lambda: True, raising=False)
        assert not training.offer_download(args, ask=lambda q: asked.append(q) or "n")
        assert download.downloaded("cifar10") is None
        monkeypatch.setattr("builtins.input", lambda q: asked.append(q) or "y")
        data = training.training_data(args)
    finally:
        server.close()
    assert len(asked) == 2 and "Download it now" in asked[1]
    assert data["X_test"].shape == (20, 3, 32, 32)
