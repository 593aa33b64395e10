"""cupy.cuda: devices, streams, runtime and memory of the fake machine."""
from .. import _double
from . import compiler, driver, memory, nccl, runtime  # noqa: F401
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
        for thread in _double.pending_work(self.device_id):
            thread.join()
        _double.record_sync(detected=False)

    def record(self, event=None):
        event = Event() if event is None else event
        event.record(self)
        return event


class Event:
    """cupy.cuda.Event (cupy/cuda/stream.pyx): `done` once the work issued on the device
    before `record` has finished. In the double that is at once, except NCCL collectives
    (cupy.cuda.nccl), which wait for their peers in a thread as a GPU kernel would."""

    def __init__(self, block=False, disable_timing=False, interprocess=False):
        if interprocess and not disable_timing:
            raise ValueError("Timing must be disabled for interprocess events")
        self.block, self.disable_timing, self.interprocess = block, disable_timing, interprocess
        self.ptr = id(self)
        self._work = ()

    def record(self, stream=None):
        self._work = _double.pending_work(runtime.getDevice())

    @property
    def done(self) -> bool:
        return not any(t.is_alive() for t in self._work)

    def synchronize(self):
        for thread in self._work:
            thread.join()
        _double.record_sync(detected=False)      # stream.pyx: not seen by syncdetect either


Stream.null = Stream(null=True)
ExternalStream = Stream


def get_current_stream(device_id=None):
    return Stream.null


def get_cuda_path():
    return None
