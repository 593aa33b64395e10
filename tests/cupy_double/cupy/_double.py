"""The fake machine behind the CuPy test double: devices, memory, counters, knobs.

Tests reach this module as `cupy._double` (conftest's `cupy_double` fixture). Everything a
test may want to set or read lives here; the rest of the double (`cupy`, `cupyx`) only
follows CuPy's public behaviour on top of it.

Environment: CUPY_DOUBLE_DEVICES (how many GPUs, default 2), CUPY_DOUBLE_VISIBLE_DEVICES (which
of them this process sees, as CUDA_VISIBLE_DEVICES), CUPY_DOUBLE_MEMORY_BYTES (each GPU's
memory, default 16 GiB). At run time: enable_peer_access, set_memory_limit; read
stats() (launches, syncs, transfers), compile_log(); reset_stats().
"""
from __future__ import annotations

import collections
import os
import threading
import weakref

PHYSICAL_DEVICES = int(os.environ.get("CUPY_DOUBLE_DEVICES", "2"))
# The physical GPUs this process sees, in order, as CUDA_VISIBLE_DEVICES would select them
# (env CUPY_DOUBLE_VISIBLE_DEVICES="1,0": device 0 is physical GPU 1); the double's own
# variable, so that a CUDA_VISIBLE_DEVICES set for real GPUs never changes the double.
VISIBLE = [int(v) for v in os.environ.get("CUPY_DOUBLE_VISIBLE_DEVICES", "").split(",") if v.strip()] \
    or list(range(PHYSICAL_DEVICES))
DEVICE_COUNT = len(VISIBLE)


def pci_bus_id(device: int) -> str:
    """The PCI bus id of visible device `device` (its physical GPU's): '0000:17:00.0', ..."""
    return f"0000:{0x17 + VISIBLE[device]:02X}:00.0"
DEFAULT_MEMORY_BYTES = int(os.environ.get("CUPY_DOUBLE_MEMORY_BYTES", str(16 << 30)))

# One record per kernel launch. kind: "elementwise", "reduction", "matmul", "copy", "fill"
# or "raw"; name: the CuPy function (or raw kernel) that launched it; nbytes: bytes the
# launch reads and writes (array arguments and results, counted once each).
Launch = collections.namedtuple("Launch", "kind name device nbytes")
# One record per module CuPy would hand to NVRTC: what the caller passed (code, options), the
# device it was loaded on, and the options CuPy itself would add (see cupy/_raw.py).
CompileRecord = collections.namedtuple("CompileRecord", "code options device cupy_options")


class DeviceSynchronized(RuntimeError):
    """cupyx.DeviceSynchronized (cupy/_core/syncdetect.py): a sync while it was disallowed."""

    def __init__(self, message=None):
        super().__init__(message or "Device synchronization was detected while disallowed.")


class _Machine:
    def __init__(self):
        self.peer_access = False                    # CUDA: cudaDeviceCanAccessPeer
        self.memory_limit = [DEFAULT_MEMORY_BYTES] * DEVICE_COUNT
        self.used = [0] * DEVICE_COUNT              # bytes held by live arrays
        self.cached = [0] * DEVICE_COUNT            # freed blocks kept by the memory pool
        self.pool_limit = [0] * DEVICE_COUNT        # MemoryPool.set_limit (0: none)
        self.compile_log: list[CompileRecord] = []
        self.reset_stats()

    def reset_stats(self):
        self.launches: list[Launch] = []
        self.function_lookups = 0                   # RawModule.get_function calls
        self.syncs = 0
        self.h2d_bytes = self.d2h_bytes = self.d2d_bytes = 0


machine = _Machine()
_thread = threading.local()


# -- knobs ------------------------------------------------------------------------------------

def enable_peer_access(enabled: bool = True) -> None:
    """Model GPUs that can (True) or cannot (False, the default) reach each other's memory."""
    machine.peer_access = bool(enabled)


def set_memory_limit(nbytes: int, device: int | None = None) -> None:
    """The device memory of one device (or all of them, device=None)."""
    for d in range(DEVICE_COUNT) if device is None else [device]:
        machine.memory_limit[d] = int(nbytes)


def compile_log() -> list[CompileRecord]:
    """Every (code, options) CuPy was asked to compile, per device, in order (not cleared by
    reset_stats: a module compiled once stays compiled, as in CuPy's per-process cache)."""
    return machine.compile_log


def stats() -> dict:
    """Launches, syncs and transfer byte counts since the last reset_stats()."""
    m = machine
    return {"launches": list(m.launches), "syncs": m.syncs, "h2d_bytes": m.h2d_bytes,
            "d2h_bytes": m.d2h_bytes, "d2d_bytes": m.d2d_bytes,
            "function_lookups": m.function_lookups,
            "memory_used": list(m.used)}


def reset_stats() -> None:
    machine.reset_stats()


# -- the current device (CUDA keeps one per host thread: cudaSetDevice) ------------------------

def current_device() -> int:
    return getattr(_thread, "device", 0)


def set_current_device(device: int) -> None:
    _thread.device = device


def sync_allowed() -> bool:
    return getattr(_thread, "sync_allowed", True)


def set_sync_allowed(allowed: bool) -> None:
    _thread.sync_allowed = allowed


# -- work still running (NCCL collectives wait for their peers in a thread) -------------------

_pending: dict = collections.defaultdict(list)      # device -> [threading.Thread]


def start_work(device: int, thread: threading.Thread) -> None:
    """Work that runs on after its call returns, as a GPU's does: a cuda.Event recorded on
    `device` after it is done only once the thread has finished."""
    _pending[device] = [t for t in _pending[device] if t.is_alive()] + [thread]
    thread.start()


def pending_work(device: int) -> tuple:
    return tuple(t for t in _pending[device] if t.is_alive())


# -- events the rest of the double reports ----------------------------------------------------

def record_launch(kind: str, name: str, device: int, nbytes: int) -> None:
    machine.launches.append(Launch(kind, name, device, int(nbytes)))


def record_sync(d2h_bytes: int = 0, detected: bool = True) -> None:
    """A host wait for the device. `detected`: CuPy checks it (cupy/_core/syncdetect.py
    `_declare_synchronize`, called by ndarray.get, Device/Stream/Event.synchronize), so
    cupyx.allow_synchronize(False) refuses it; raw runtime calls are not checked."""
    if detected and not sync_allowed():
        raise DeviceSynchronized()
    machine.syncs += 1
    machine.d2h_bytes += int(d2h_bytes)


# -- memory: a per-device budget of live array bytes, with CuPy's pool in front --------------

ALLOCATION_UNIT = 512   # cupy/cuda/memory.pyx rounds every allocation up to 512 bytes


class Memory:
    """One device allocation; views share it. Its bytes go back to the pool cache when the
    last array using it is garbage-collected (CuPy's MemoryPool keeps freed blocks)."""

    def __init__(self, device: int, nbytes: int):
        size = -(-int(nbytes) // ALLOCATION_UNIT) * ALLOCATION_UNIT
        m = machine
        if size and m.cached[device] >= size:        # reuse a cached block
            m.cached[device] -= size
        elif size:
            limit = m.pool_limit[device]
            if m.used[device] + m.cached[device] + size > m.memory_limit[device]:
                m.cached[device] = 0                 # CuPy frees cached blocks, then retries
            if (limit and m.used[device] + size > limit) or \
                    m.used[device] + size > m.memory_limit[device]:
                from .cuda.memory import OutOfMemoryError
                raise OutOfMemoryError(size, m.used[device], limit)
        m.used[device] += size
        self.device, self.size = device, size
        weakref.finalize(self, _free, device, size)


def _free(device: int, size: int) -> None:
    machine.used[device] -= size
    machine.cached[device] += size
