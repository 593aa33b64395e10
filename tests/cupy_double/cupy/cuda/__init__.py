"""cupy.cuda: devices, streams, runtime and memory of the fake machine."""
from .. import _double
from . import compiler, driver, memory, runtime  # noqa: F401
from .device import Device, get_device_id  # noqa: F401
from .memory import MemoryPointer  # noqa: F401


def is_available() -> bool:
    return runtime.getDeviceCount() > 0


class Stream:
    """Minimal cupy.cuda.Stream: work in the double is done when it is issued, so a stream is
    only a synchronisation point. Counted; but cupy/cuda/stream.pyx calls
    runtime.streamSynchronize without syncdetect, so allow_synchronize(False) lets it pass."""

    null = None

    def __init__(self, null=False, non_blocking=False, ptr=0):
        self.ptr, self.device_id = ptr, runtime.getDevice()

    def __enter__(self):
        return self

    def __exit__(self, *exc):
        pass

    def use(self):
        return self

    def synchronize(self):
        _double.record_sync(detected=False)

    def record(self, event=None):
        return Event()


class Event:
    def synchronize(self):
        _double.record_sync(detected=False)      # stream.pyx: not seen by syncdetect either

    def record(self, stream=None):
        pass


Stream.null = Stream(null=True)
ExternalStream = Stream


def get_current_stream(device_id=None):
    return Stream.null


def get_cuda_path():
    return None
