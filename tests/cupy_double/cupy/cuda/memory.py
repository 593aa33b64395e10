"""cupy.cuda.memory: OutOfMemoryError (message as cupy/cuda/memory.pyx), MemoryPointer, and a
MemoryPool that reports the double's per-device accounting (see cupy/_double.py)."""
from .. import _double
from . import runtime


class OutOfMemoryError(MemoryError):
    def __init__(self, size, total, limit=0):
        self._size, self._total, self._limit = size, total, limit
        if limit == 0:
            msg = f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes)."
        else:
            msg = (f"Out of memory allocating {size:,} bytes (allocated so far: {total:,} bytes, "
                   f"limit set to: {limit:,} bytes).")
        super().__init__(msg)

    def __reduce__(self):
        return type(self), (self._size, self._total, self._limit)


class MemoryPointer:
    """`ndarray.data`: the address (the host buffer standing in for device memory) and device."""

    def __init__(self, ptr: int, device_id: int):
        self.ptr, self.device_id = ptr, device_id

    @property
    def device(self):
        from .device import Device
        return Device(self.device_id)


class MemoryPool:
    """cupy.get_default_memory_pool(): used/total bytes of the current device."""

    def used_bytes(self) -> int:
        return _double.machine.used[runtime.getDevice()]

    def total_bytes(self) -> int:
        d = runtime.getDevice()
        return _double.machine.used[d] + _double.machine.cached[d]

    def free_bytes(self) -> int:
        return _double.machine.cached[runtime.getDevice()]

    def free_all_blocks(self) -> None:
        _double.machine.cached[runtime.getDevice()] = 0

    def set_limit(self, size=None, fraction=None) -> None:
        d = runtime.getDevice()
        if fraction is not None:
            size = int(fraction * _double.machine.memory_limit[d])
        _double.machine.pool_limit[d] = int(size or 0)

    def get_limit(self) -> int:
        return _double.machine.pool_limit[runtime.getDevice()]


class PinnedMemoryPool:
    def free_all_blocks(self) -> None:
        pass

    def n_free_blocks(self) -> int:
        return 0
