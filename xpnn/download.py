"""Downloads of the data sets that xpnn does not ship, checked by SHA-256, into a per-user cache.

    xpnn data download fashion-mnist          # the command
    xpnn.download.download("cifar10")         # the same from Python; returns the directory

Each file is fetched from the first mirror that answers, into `NAME.part` beside its final
name; an interrupted download resumes from where it stopped (an HTTP Range request), and a
file is given its final name only once its SHA-256 is the published one: a corrupt or
tampered download is deleted and refused, never used. CIFAR-10's archive is then unpacked
(its batches only, nothing outside their directory).

The cache: $XPNN_DATA_DIR if set, else the user cache directory (platformdirs when
installed; else $XDG_CACHE_HOME/xpnn or ~/.cache/xpnn), one subdirectory per data set.
`xpnn.data` reads from there when no directory is given. Nothing here runs unless asked:
loading data never downloads by itself.
"""
from __future__ import annotations

import hashlib
import os
import shutil
import sys
import tarfile
import urllib.error
import urllib.request
from dataclasses import dataclass
from pathlib import Path

from .io import DataError

__all__ = ["SOURCES", "cache_dir", "dataset_dir", "download", "downloaded", "fetch"]

CHUNK = 1 << 20


@dataclass(frozen=True)
class Source:
    """Where a data set comes from: mirrors (base URLs) and each file's SHA-256."""
    mirrors: tuple
    files: dict                 # file name -> SHA-256 (hex)
    unpack: str | None = None   # a tar.gz to unpack: the directory its files are in
    ready: tuple = ()           # files whose presence means the data set is there


MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "440fcabf73cc546fa21475e81ea370265605f56be210a4024d2ca8f203523609",
    "train-labels-idx1-ubyte.gz": "3552534a0a558bbed6aed32b30c495cca23d567ec52cac8be1a0730e8010255c",
    "t10k-images-idx3-ubyte.gz": "8d422c7b0a1c1c79245a5bcf07fe86e33eeafee792b84584aec276f5a2dbc4e6",
    "t10k-labels-idx1-ubyte.gz": "f7ae60f92e00ec6debd23a6088c31dbd2371eca3ffa0defaefb259924204aec6",
}
FASHION_MNIST_FILES = {
    "train-images-idx3-ubyte.gz": "3aede38d61863908ad78613f6a32ed271626dd12800ba2636569512369268a84",
    "train-labels-idx1-ubyte.gz": "a04f17134ac03560a47e3764e11b92fc97de4d1bfaf8ba1a3aa29af54cc90845",
    "t10k-images-idx3-ubyte.gz": "346e55b948d973a97e58d2351dde16a484bd415d4595297633bb08f03db6a073",
    "t10k-labels-idx1-ubyte.gz": "67da17c76eaffca5446c3361aaab5c3cd6d1c2608764d35dfb1850b086bf8dd5",
}

SOURCES = {
    "mnist": Source(("https://ossci-datasets.s3.amazonaws.com/mnist/",
                     "https://storage.googleapis.com/cvdf-datasets/mnist/"),
                    MNIST_FILES, ready=tuple(MNIST_FILES)),
    "fashion-mnist": Source(("https://fashion-mnist.s3-website.eu-central-1.amazonaws.com/",
                             "https://raw.githubusercontent.com/zalandoresearch/fashion-mnist/master/data/fashion/"),
                            FASHION_MNIST_FILES, ready=tuple(FASHION_MNIST_FILES)),
    "cifar10": Source(("https://www.cs.toronto.edu/~kriz/",),
                      {"cifar-10-python.tar.gz": "6d958be074577803d12ecdefd02955f39262c83c16fe9348329d7fe0b5c001ce"},
                      unpack="cifar-10-batches-py",
                      ready=tuple(f"cifar-10-batches-py/{n}" for n in
                                  ("data_batch_1", "data_batch_2", "data_batch_3", "data_batch_4",
                                   "data_batch_5", "test_batch"))),
}


def cache_dir() -> Path:
    """Where downloads go: $XPNN_DATA_DIR, else the user's cache directory for xpnn."""
    if os.environ.get("XPNN_DATA_DIR"):
        return Path(os.environ["XPNN_DATA_DIR"])
    try:
        import platformdirs
        return Path(platformdirs.user_cache_dir("xpnn", appauthor=False))
    except ImportError:
        return Path(os.environ.get("XDG_CACHE_HOME") or Path.home() / ".cache") / "xpnn"


def dataset_dir(name) -> Path:
    """The directory a data set downloads into (what its loader reads: for cifar10, the
    cifar-10-batches-py inside)."""
    source = _source(name)
    base = cache_dir() / name
    return base / source.unpack if source.unpack else base


def downloaded(name) -> Path | None:
    """dataset_dir(name) when the data set has been downloaded there, else None."""
    source = _source(name)
    base = cache_dir() / name
    return dataset_dir(name) if all((base / f).is_file() for f in source.ready) else None


def _source(name):
    if name not in SOURCES:
        raise ValueError(f"xpnn downloads {', '.join(SOURCES)}, not {name!r}")
    return SOURCES[name]


def sha256_of(path) -> str:
    digest = hashlib.sha256()
    with open(path, "rb") as f:
        while chunk := f.read(CHUNK):
            digest.update(chunk)
    return digest.hexdigest()


def download(name, mirror=None, say=None, timeout=60) -> Path:
    """Download data set `name` (mnist, fashion-mnist, cifar10) into the cache, unless it is
    there; returns the directory its loader reads (`get_data(name, data_dir=...)`).
    `mirror`: a base URL to fetch the files from instead of the published ones (a local
    copy; default: $XPNN_DATA_MIRROR when set); `say`: a function given progress lines
    (default: stderr)."""
    source = _source(name)
    say = say or _stderr
    mirror = mirror or os.environ.get("XPNN_DATA_MIRROR") or None
    base = cache_dir() / name
    if downloaded(name) is not None:
        say(f"{name} is already in {base}")
        return dataset_dir(name)
    base.mkdir(parents=True, exist_ok=True)
    mirrors = (mirror,) if mirror else source.mirrors
    for file, expected in source.files.items():
        target = base / file
        if target.is_file() and sha256_of(target) == expected:
            continue
        _fetch(file, expected, target, mirrors, say, timeout)
    if source.unpack:
        _unpack(base / next(iter(source.files)), base, source.unpack)
    say(f"{name}: ready in {dataset_dir(name)}")
    return dataset_dir(name)


def _stderr(text):
    print(text, file=sys.stderr, flush=True)


def fetch(url, sha256, path, say=None, timeout=60) -> Path:
    """Download one file from url to path, unless path already holds it, and check it: its
    SHA-256 must be `sha256` (hex), else it is deleted and DataError raised. An interrupted
    download resumes (from path + ".part"). Returns the path."""
    path = Path(path)
    if path.is_file() and sha256_of(path) == sha256.lower():
        return path
    path.parent.mkdir(parents=True, exist_ok=True)
    base, _, name = url.rpartition("/")
    _fetch(name, sha256.lower(), path, (base + "/",), say or _stderr, timeout)
    return path


def _fetch(file, expected, target, mirrors, say, timeout):
    """One file, from the first mirror that serves it, resumed from its .part, checked."""
    partial = target.with_name(target.name + ".part")
    failures = []
    for mirror in mirrors:
        url = mirror.rstrip("/") + "/" + file
        try:
            _get(url, partial, say, timeout)
        except (urllib.error.URLError, OSError, TimeoutError) as e:
            failures.append(f"{url}: {getattr(e, 'reason', None) or e}")
            continue
        actual = sha256_of(partial)
        if actual != expected:
            partial.unlink(missing_ok=True)
            raise DataError(f"{url}: the download's SHA-256 is {actual}, not the published "
                            f"{expected}: a corrupt or altered file, deleted and not used")
        os.replace(partial, target)
        return
    raise DataError(f"could not download {file}: " + "; ".join(failures)
                    + f". What was fetched is kept in {partial} and the next try resumes it")


def _get(url, partial, say, timeout):
    """Fetch url into partial, continuing an earlier partial download when the server can."""
    have = partial.stat().st_size if partial.is_file() else 0
    request = urllib.request.Request(url, headers={"User-Agent": "xpnn"})
    if have:
        request.add_header("Range", f"bytes={have}-")
    try:
        response = urllib.request.urlopen(request, timeout=timeout)
    except urllib.error.HTTPError as e:
        if e.code == 416 and have:          # nothing left to fetch: the partial file is whole
            return
        raise
    with response:
        resumed = have and response.status == 206
        mode = "ab" if resumed else "wb"    # a server that ignores Range sends it all again
        total = response.headers.get("Content-Length")
        say(f"downloading {url}" + (f" (resuming at {have:,} bytes)" if resumed else "")
            + (f", {int(total) + (have if resumed else 0):,} bytes" if total else ""))
        with open(partial, mode) as out:
            shutil.copyfileobj(response, out, CHUNK)


def _unpack(archive, base, directory):
    """Extract the members of a .tar.gz under `directory`/ into base; nothing else (no links,
    no absolute paths, no '..'), so an archive cannot write outside the cache."""
    try:
        with tarfile.open(archive, "r:gz") as tar:
            members = [m for m in tar.getmembers()
                       if m.isfile() and Path(m.name).parts[:1] == (directory,)
                       and ".." not in Path(m.name).parts and not Path(m.name).is_absolute()]
            if not members:
                raise DataError(f"{archive} holds no files under {directory}/")
            for m in members:
                # Each file under a temporary name, renamed once whole: an interrupted unpack
                # leaves no truncated file that `downloaded()` would take for a finished one.
                destination = base / m.name
                destination.parent.mkdir(parents=True, exist_ok=True)
                partial = destination.with_name(destination.name + ".part")
                with tar.extractfile(m) as src, open(partial, "wb") as dst:
                    shutil.copyfileobj(src, dst, CHUNK)
                os.replace(partial, destination)
    except (tarfile.TarError, EOFError, OSError) as e:
        raise DataError(f"{archive} is not a readable .tar.gz ({e})") from None
