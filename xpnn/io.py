"""Safe files: atomic .npz writes and checked .npz reads (never pickle), and the errors that
name a bad file: CheckpointError (a model or checkpoint), DataError (a data set file).

A checkpoint is written to a temporary file in the same directory, flushed to disk, then
renamed over the target: a crash or a full disk leaves the previous file intact, never a
half-written one. The file gets the permissions any new file would (0666 less the umask),
and errors name the file asked for, never the temporary one.
"""
from __future__ import annotations

import contextlib
import json
import os
import tempfile
import zipfile
from pathlib import Path

import numpy as np


class CheckpointError(ValueError):
    """A checkpoint file is missing, corrupt, or does not match the model."""


class DataError(ValueError):
    """A data file is missing, truncated or corrupt."""


@contextlib.contextmanager
def atomic_open(path, mode="wb"):
    """Open a temporary file beside `path`; on success flush it to disk and rename it over
    `path`, on any failure remove it. Readers see the old file or the new one, never half."""
    path = Path(path)
    path.parent.mkdir(parents=True, exist_ok=True)
    tmp = None
    try:
        fd, tmp = tempfile.mkstemp(prefix=f".{path.name}.", suffix=".tmp", dir=path.parent)
        os.chmod(tmp, 0o666 & ~_umask())     # mkstemp makes 0600; open() would have made this
        with os.fdopen(fd, mode) as f:
            yield f
            f.flush()
            os.fsync(f.fileno())
        os.replace(tmp, path)
    except BaseException as e:
        if tmp is not None:
            Path(tmp).unlink(missing_ok=True)
        if isinstance(e, OSError) and e.errno is not None:   # disk full, permissions...
            raise type(e)(e.errno, e.strerror, str(path)) from None   # name path, never tmp
        raise


def _umask():
    """The process's umask (reading it means setting it: set it straight back)."""
    mask = os.umask(0o077)
    os.umask(mask)
    return mask


def atomic_savez(path, arrays: dict, meta: dict | None = None) -> Path:
    """Write `arrays` (name -> host array) and JSON `meta` to `path` atomically."""
    path = Path(path)
    if path.suffix != ".npz":
        path = path.with_name(path.name + ".npz")
    payload = {name: np.asarray(a) for name, a in arrays.items()}
    if meta is not None:
        payload["__meta__"] = np.asarray(json.dumps(meta))
    with atomic_open(path, "wb") as f:
        np.savez(f, **payload)
    return path


def atomic_write_text(path, text: str) -> Path:
    """Write a small text file (JSON, CSV) atomically."""
    with atomic_open(path, "w") as f:
        f.write(text)
    return Path(path)


def load_npz(path) -> tuple[dict, dict]:
    """Read an .npz written by `atomic_savez` -> (arrays, meta); clear errors when it is not one."""
    path = Path(path)
    if path.is_dir():
        found = sorted(p.name for p in path.glob("*.npz"))
        hint = f"; pass one of its files, e.g. {path / found[-1]}" if found else "; it holds no .npz file"
        if (path / "model.npz").is_file():
            hint = f"; pass {path / 'model.npz'}"
        raise CheckpointError(f"checkpoint {path} is a directory{hint}")
    if not path.is_file():
        raise CheckpointError(f"checkpoint {path} does not exist")
    if not zipfile.is_zipfile(path):     # before np.load, which would offer to unpickle it
        raise CheckpointError(f"checkpoint {path} is not an .npz archive: corrupt, truncated, "
                              "or another kind of file")
    try:
        with np.load(path, allow_pickle=False) as f:
            arrays = {name: f[name] for name in f.files}
    except (zipfile.BadZipFile, OSError, ValueError, EOFError, KeyError) as e:
        raise CheckpointError(f"checkpoint {path} is corrupt or truncated and cannot be read ({e})") from None
    except Exception as e:  # zlib errors and other decoding failures of a damaged archive
        raise CheckpointError(f"checkpoint {path} is corrupt and cannot be read "
                              f"({type(e).__name__}: {e})") from None
    meta = {}
    if "__meta__" in arrays:
        try:
            meta = json.loads(str(arrays.pop("__meta__")))
        except json.JSONDecodeError as e:
            raise CheckpointError(f"checkpoint {path} has corrupt metadata ({e})") from None
    return arrays, meta
