"""cupy.cuda.nccl of the double (cupy_backends/cuda/libs/nccl.pyx over NCCL's own rules).

  - `get_unique_id()` is a tuple of NCCL_UNIQUE_ID_BYTES (128) C `char`s, -128..127, as CuPy
    builds it; `NcclCommunicator(ndev, commId, rank)` takes exactly a tuple (Cython's typed
    argument: bytes or a list raise TypeError) of that length (AssertionError otherwise);
  - like ncclCommInitRank, a communicator waits until all `ndev` ranks have joined (in this
    process on threads, or in other processes: they meet in a directory named by the id), then
    refuses two ranks on one GPU, compared by PCI bus id on the same host: NcclError
    NCCL_ERROR_INVALID_USAGE ("Duplicate GPU detected" is what NCCL_DEBUG=WARN prints);
  - `allReduce(send, recv, count, datatype, op, stream)` reads `count` elements at the device
    address `send` and, once every rank has issued its call, writes the reduction over the
    ranks, in rank order, at `recv`. It returns at once, as NCCL does, and completes in a
    thread: a cuda.Event recorded after it is `done` when the sum is written;
    `abort()` releases a call still waiting for its peers (ncclCommAbort).
Not modelled: the other collectives, groups, streams' order (only Events and synchronize wait).
"""
from __future__ import annotations

import atexit
import ctypes
import os
import pickle
import socket
import sys
import tempfile
import threading
import time
import uuid
from pathlib import Path

import numpy as np

from .. import _double
from . import runtime

available = True
NCCL_UNIQUE_ID_BYTES = 128
# nccl.h: ncclDataType_t and ncclRedOp_t
NCCL_INT8 = NCCL_CHAR = 0
NCCL_UINT8 = 1
NCCL_INT32 = NCCL_INT = 2
NCCL_UINT32 = 3
NCCL_INT64 = 4
NCCL_UINT64 = 5
NCCL_FLOAT16 = NCCL_HALF = 6
NCCL_FLOAT32 = NCCL_FLOAT = 7
NCCL_FLOAT64 = NCCL_DOUBLE = 8
NCCL_SUM, NCCL_PROD, NCCL_MAX, NCCL_MIN = 0, 1, 2, 3
_DTYPES = {0: np.int8, 1: np.uint8, 2: np.int32, 3: np.uint32, 4: np.int64, 5: np.uint64,
           6: np.float16, 7: np.float32, 8: np.float64}
_OPS = {NCCL_SUM: np.add, NCCL_PROD: np.multiply, NCCL_MAX: np.maximum, NCCL_MIN: np.minimum}
# How long a communicator waits for its peers to join (real NCCL waits for ever).
JOIN_TIMEOUT = float(os.environ.get("CUPY_DOUBLE_NCCL_TIMEOUT", "120"))

_ERRORS = {1: ("NCCL_ERROR_UNHANDLED_CUDA_ERROR", "unhandled cuda error"),
           2: ("NCCL_ERROR_SYSTEM_ERROR", "unhandled system error"),
           4: ("NCCL_ERROR_INVALID_ARGUMENT", "invalid argument"),
           5: ("NCCL_ERROR_INVALID_USAGE", "invalid usage (run with NCCL_DEBUG=WARN for details)")}


class NcclError(RuntimeError):
    def __init__(self, status):
        self.status = status
        name, text = _ERRORS.get(status, ("NCCL_ERROR_UNKNOWN", "unknown error"))
        super().__init__(f"{name}: {text}")

    def __reduce__(self):
        return type(self), (self.status,)


def get_version() -> int:
    return 22703


def get_unique_id() -> tuple:
    """128 signed chars; the first 16 name the rendezvous (a random UUID), as NCCL's id holds
    the address where rank 0 waits for the others."""
    raw = uuid.uuid4().bytes + bytes(NCCL_UNIQUE_ID_BYTES - 16)
    return tuple(np.frombuffer(raw, dtype=np.int8).tolist())


def _warn(text: str) -> None:
    if os.environ.get("NCCL_DEBUG", "").upper() in ("WARN", "INFO", "TRACE"):
        print(f"{socket.gethostname()}:{os.getpid()} NCCL WARN {text}", file=sys.stderr)


def _write(path: Path, obj) -> None:
    tmp = path.with_name(f".{path.name}.{os.getpid()}.{threading.get_ident()}")
    tmp.write_bytes(pickle.dumps(obj))
    os.replace(tmp, path)           # atomic: a peer never reads half a file


def _wait_for(paths, abort: threading.Event, timeout: float):
    deadline = time.monotonic() + timeout
    while not all(p.exists() for p in paths):
        if abort.is_set():
            return None
        if time.monotonic() > deadline:
            raise NcclError(2)
        time.sleep(1e-3)
    return [pickle.loads(p.read_bytes()) for p in paths]


class NcclCommunicator:
    def __init__(self, ndev, commId, rank):
        if not isinstance(commId, tuple):
            raise TypeError(f"Argument 'commId' has incorrect type (expected tuple, got "
                            f"{type(commId).__name__})")
        ndev, rank = int(ndev), int(rank)
        assert len(commId) == NCCL_UNIQUE_ID_BYTES
        if not 0 <= rank < ndev:
            raise NcclError(4)
        token = np.array(commId[:16], dtype=np.int8).tobytes().hex()
        self._dir = Path(tempfile.gettempdir()) / f"cupy-double-nccl-{token}"
        self._dir.mkdir(exist_ok=True)
        self._ndev, self._rank, self._seq = ndev, rank, 0
        self._device = runtime.getDevice()
        self._aborted = threading.Event()
        here = (socket.gethostname(), runtime.deviceGetPCIBusId(self._device))
        _write(self._dir / f"join.{rank}", here)
        atexit.register(self.destroy)          # at exit: every peer has read what it needs
        joined = _wait_for([self._dir / f"join.{r}" for r in range(ndev)], self._aborted, JOIN_TIMEOUT)
        for r, where in enumerate(joined):
            if r != rank and where == here:
                _warn(f"Duplicate GPU detected : rank {rank} and rank {r} both on CUDA device "
                      f"{here[1]}")
                raise NcclError(5)
        self.comm = id(self)

    def destroy(self):
        """Remove this rank's files from the meeting directory; the last rank out removes it."""
        for path in self._dir.glob(f"*.{self._rank}"):
            path.unlink(missing_ok=True)
        try:
            self._dir.rmdir()
        except OSError:
            pass

    def device_id(self) -> int:
        return self._device

    def rank_id(self) -> int:
        return self._rank

    def size(self) -> int:
        return self._ndev

    def allReduce(self, sendbuf, recvbuf, count, datatype, op, stream):   # noqa: N802
        if self._aborted.is_set():
            raise NcclError(4)
        dtype, reduce = np.dtype(_DTYPES[int(datatype)]), _OPS[int(op)]
        nbytes = int(count) * dtype.itemsize
        mine = np.frombuffer(ctypes.string_at(int(sendbuf), nbytes), dtype=dtype).copy()
        seq, self._seq = self._seq, self._seq + 1
        _write(self._dir / f"op{seq}.{self._rank}", mine)
        # Every rank has read call seq - 2 (its own calls wait for the previous one's event):
        (self._dir / f"op{seq - 2}.{self._rank}").unlink(missing_ok=True)
        paths = [self._dir / f"op{seq}.{r}" for r in range(self._ndev)]

        def complete():
            parts = _wait_for(paths, self._aborted, float("inf"))
            if parts is None:          # aborted: the buffer is left as it was
                return
            total = parts[0]
            for part in parts[1:]:
                total = reduce(total, part)
            ctypes.memmove(int(recvbuf), np.ascontiguousarray(total, dtype=dtype).ctypes.data, nbytes)
        _double.start_work(self._device, threading.Thread(target=complete, daemon=True))

    def abort(self):
        self._aborted.set()
